#include <sys/socket.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "worker.h"

/* How often a paused listener (descriptors or max_connections) retries. */
#define RETRY_MS	100
/* Connections accepted per readiness event, so one listener cannot starve
 * the others or the connections already open. */
#define ACCEPT_BURST	64

/* One listening descriptor watched by a worker. */
struct worker_accept {
	struct worker_accept	*next;
	struct worker		*w;
	struct listener		*l;
	int			 fd;
	uv_poll_t		 poll;
	int			 polling;
	int			 open;
	int			 starved;	/* paused: out of descriptors */
};

/* A new set of listeners for the worker, from worker_rebind. */
struct rebind {
	struct rebind		*next;
	struct listener_set	*set;
	struct worker_bind	*binds;
	size_t			 n;
};

/* A backend TLS session to resume, per listener. */
struct bsess {
	uint64_t		 gen;		/* of the listener's set */
	gnutls_datum_t		 d;
};

struct worker {
	uv_loop_t		 loop;
	int			 id;
	struct listener_set	*set;		/* what it accepts for now */
	struct worker_link	*conns;		/* open connections */
	size_t			 nconns;
	int			 stopping;
	uint64_t		 next_id;
	char			 rbuf[WORKER_READ_CHUNK];
	char			 pbuf[WORKER_READ_CHUNK];
	struct proto_out	 out;
	struct metrics		*metrics;	/* shared; NULL: none */
	struct bsess		*bsess;		/* by listener index */
	size_t			 nbsess;
	struct worker_accept	*acc;
	uv_async_t		 stop_async;
	uv_async_t		 rebind_async;
	uv_mutex_t		 lock;		/* guards rebinds */
	struct rebind		*rebinds;
	uv_timer_t		 retry_timer;
	uv_timer_t		 shutdown_timer;
	uv_thread_t		 thread;
	int			 retry_armed;
	void			 (*done_cb)(void *);
	void			*done_arg;
};

static void	accept_cb(uv_poll_t *, int, int);
static void	retry_cb(uv_timer_t *);

static void
acc_pause(struct worker_accept *a)
{
	struct worker *w = a->w;

	if (a->polling) {
		uv_poll_stop(&a->poll);
		a->polling = 0;
	}
	if (!w->retry_armed && !w->stopping) {
		uv_timer_start(&w->retry_timer, retry_cb, RETRY_MS, 0);
		w->retry_armed = 1;
	}
}

static void
acc_resume(struct worker_accept *a)
{

	if (!a->polling && a->open && !a->w->stopping &&
	    uv_poll_start(&a->poll, UV_READABLE, accept_cb) == 0)
		a->polling = 1;
}

static void
retry_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	struct worker_accept *a;

	w->retry_armed = 0;
	for (a = w->acc; a != NULL; a = a->next)
		acc_resume(a);
}

/*
 * We accept by ourselves rather than with uv_listen so that a listener can
 * be paused: at max_connections, or out of descriptors, new connections wait
 * in the kernel's backlog instead of being accepted and dropped, and the
 * loop does not spin on a socket that stays readable.
 */
static void
accept_cb(uv_poll_t *p, int status, int events)
{
	struct worker_accept *a = p->data;
	struct sockaddr_storage ss;
	socklen_t sslen;
	unsigned max = a->l->conf->max_connections;
	struct listener *l = a->l;
	int fd, i;

	(void)events;
	if (status < 0) {
		log_warn("accept", "listener %s: %s", a->l->conf->name,
		    uv_strerror(status));
		acc_pause(a);
		return;
	}
	for (i = 0; i < ACCEPT_BURST; i++) {
		if (atomic_load(l->nconns) >= max) {
			acc_pause(a);
			return;
		}
		sslen = sizeof(ss);
		fd = accept4(a->fd, (struct sockaddr *)&ss, &sslen,
		    SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			switch (errno) {
			case EAGAIN:
			case EINTR:
				return;
			case ECONNABORTED:
			case EPROTO:
				continue;
			case EMFILE:
			case ENFILE:
			case ENOBUFS:
			case ENOMEM:
				/* Once, not at every retry. */
				if (!a->starved)
					log_warn("accept", "listener %s: %s; "
					    "not accepting until descriptors "
					    "free up", a->l->conf->name,
					    strerror(errno));
				a->starved = 1;
				acc_pause(a);
				return;
			default:
				log_warn("accept", "listener %s: %s",
				    a->l->conf->name, strerror(errno));
				acc_pause(a);
				return;
			}
		}
		if (a->starved) {
			log_info("accept", "listener %s: accepting again",
			    a->l->conf->name);
			a->starved = 0;
		}
		if (conn_start(a->w, l, fd, (struct sockaddr *)&ss,
		    sslen) < 0)
			log_warn("accept", "listener %s: cannot set up a "
			    "connection", l->conf->name);
		/* A rebind cannot run inside this loop: a is still ours. */
	}
}

static void
acc_close_cb(uv_handle_t *h)
{

	free(h->data);
}

/* Watch ${fd} for listener ${l}.  Return 0, or -1 (${fd} stays open). */
static int
acc_add(struct worker *w, struct listener *l, int fd)
{
	struct worker_accept *a;
	int one = 1;

	if ((a = calloc(1, sizeof(*a))) == NULL)
		return (-1);
	a->w = w;
	a->l = l;
	a->fd = fd;
	/*
	 * Accepted sockets inherit TCP_NODELAY from the listening one: one
	 * setsockopt here rather than one per connection.
	 */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (uv_poll_init(&w->loop, &a->poll, fd) < 0) {
		log_err("worker", "cannot watch listener %s", l->conf->name);
		free(a);
		return (-1);
	}
	a->poll.data = a;
	a->open = 1;
	a->next = w->acc;
	w->acc = a;
	return (0);
}

/* Stop watching ${a} and close its descriptor; it is freed once closed. */
static void
acc_close(struct worker_accept *a)
{

	if (a->polling)
		uv_poll_stop(&a->poll);
	a->polling = 0;
	if (!uv_is_closing((uv_handle_t *)&a->poll))
		uv_close((uv_handle_t *)&a->poll, acc_close_cb);
	if (a->open)
		close(a->fd);
	a->open = 0;
}

/**
 * worker_new(id, set, binds, nbinds, metrics, done_cb, arg):
 * Make worker ${id} serving the listeners of ${set} (a reference is taken)
 * on the ${nbinds} descriptors ${binds} (taken over).  ${metrics} (may be
 * NULL) is shared and outlives the worker.  ${done_cb}(${arg}) is called
 * from the worker's thread when it has finished after worker_stop.  Return
 * the worker, or NULL.
 */
struct worker *
worker_new(int id, struct listener_set *set, const struct worker_bind *binds,
    size_t nbinds, struct metrics *metrics, void (*done_cb)(void *),
    void *arg)
{
	struct worker *w;
	size_t i;

	if ((w = calloc(1, sizeof(*w))) == NULL)
		return (NULL);
	if (uv_loop_init(&w->loop) < 0 || uv_mutex_init(&w->lock) < 0) {
		free(w);
		return (NULL);
	}
	w->id = id;
	w->set = listener_set_ref(set);
	w->metrics = metrics;
	w->done_cb = done_cb;
	w->done_arg = arg;
	uv_timer_init(&w->loop, &w->retry_timer);
	w->retry_timer.data = w;
	uv_timer_init(&w->loop, &w->shutdown_timer);
	w->shutdown_timer.data = w;
	/* A loop with handles cannot be closed; this is start-up: exit. */
	for (i = 0; i < nbinds; i++)
		if (acc_add(w, binds[i].l, binds[i].fd) < 0)
			return (NULL);
	return (w);
}

static void
handle_close_cb(uv_handle_t *h)
{

	(void)h;
}

static void
walk_close_cb(uv_handle_t *h, void *arg)
{

	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, handle_close_cb);
}

/* All connections are gone after worker_stop: close what is left. */
static void
worker_end(struct worker *w)
{
	struct worker_accept *a;

	while ((a = w->acc) != NULL) {
		w->acc = a->next;
		acc_close(a);
	}
	uv_walk(&w->loop, walk_close_cb, NULL);
}

static void
shutdown_timeout_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	struct worker_link *lk, *next;

	log_info("shutdown", "worker %d: shutdown_timeout reached, closing "
	    "%zu connection(s)", w->id, w->nconns);
	for (lk = w->conns; lk != NULL; lk = next) {
		next = lk->next;
		conn_abort(lk->conn, "shutdown");
	}
}

static void
stop_cb(uv_async_t *as)
{
	struct worker *w = as->data;
	struct worker_accept *a;

	if (w->stopping)
		return;
	w->stopping = 1;
	/*
	 * Stop accepting at once: the kernel refuses new connections once
	 * every copy of a listening socket is closed (the main thread closes
	 * its own; after an upgrade the new process keeps them open).
	 */
	uv_timer_stop(&w->retry_timer);
	while ((a = w->acc) != NULL) {
		w->acc = a->next;
		acc_close(a);
	}
	if (w->nconns == 0) {
		worker_end(w);
		return;
	}
	uv_timer_start(&w->shutdown_timer, shutdown_timeout_cb,
	    w->set->cfg->shutdown_timeout_ms, 0);
}

/**
 * worker_session(w, l):
 * The backend TLS session last saved for listener ${l} on ${w}, or NULL.
 */
const gnutls_datum_t *
worker_session(struct worker *w, const struct listener *l)
{
	struct bsess *b;

	if (l->index >= w->nbsess)
		return (NULL);
	b = &w->bsess[l->index];
	/* One saved under an older configuration may be for another backend. */
	return (b->d.size > 0 && b->gen == l->set->gen ? &b->d : NULL);
}

/**
 * worker_save_session(w, l, t):
 * Keep ${t}'s session data so that the next backend connection of ${l} on
 * ${w} can resume it.
 */
void
worker_save_session(struct worker *w, const struct listener *l,
    const struct tlsio *t)
{
	struct bsess *b;
	gnutls_datum_t d;
	size_t n;

	if (l->index >= w->nbsess) {
		n = l->index + 1;
		if ((b = realloc(w->bsess, n * sizeof(*b))) == NULL)
			return;
		memset(b + w->nbsess, 0, (n - w->nbsess) * sizeof(*b));
		w->bsess = b;
		w->nbsess = n;
	}
	if (tlsio_session_data(t, &d) < 0)
		return;
	b = &w->bsess[l->index];
	gnutls_free(b->d.data);
	b->d = d;
	b->gen = l->set->gen;
}

/**
 * worker_conn_add(w, l, lk, c):
 * Put the new connection ${c} of listener ${l} on ${w}'s list through its
 * link ${lk}, count it, and take a reference to ${l}'s set for it.  Return
 * the connection's id (unique in the process).
 */
uint64_t
worker_conn_add(struct worker *w, struct listener *l, struct worker_link *lk,
    struct conn *c)
{

	lk->conn = c;
	lk->l = l;
	lk->prev = NULL;
	lk->next = w->conns;
	if (w->conns != NULL)
		w->conns->prev = lk;
	w->conns = lk;
	w->nconns++;
	atomic_fetch_add(l->nconns, 1);
	listener_set_ref(l->set);
	return (++w->next_id * 256 + (uint64_t)w->id);
}

/**
 * worker_conn_remove(w, lk):
 * Take the connection linked by ${lk} off ${w}'s list (it is being freed),
 * and drop what worker_conn_add took.  Once a stopping worker has no
 * connection left, it ends.
 */
void
worker_conn_remove(struct worker *w, struct worker_link *lk)
{

	if (lk->prev != NULL)
		lk->prev->next = lk->next;
	else
		w->conns = lk->next;
	if (lk->next != NULL)
		lk->next->prev = lk->prev;
	w->nconns--;
	atomic_fetch_sub(lk->l->nconns, 1);
	/* The settings it started with go when its last session does. */
	listener_set_unref(lk->l->set);
	lk->l = NULL;
	if (w->stopping && w->nconns == 0)
		worker_end(w);
}

uv_loop_t *
worker_loop(struct worker *w)
{

	return (&w->loop);
}

int
worker_id(const struct worker *w)
{

	return (w->id);
}

struct metrics *
worker_metrics(const struct worker *w)
{

	return (w->metrics);
}

char *
worker_rbuf(struct worker *w)
{

	return (w->rbuf);
}

char *
worker_pbuf(struct worker *w)
{

	return (w->pbuf);
}

struct proto_out *
worker_out(struct worker *w)
{

	return (&w->out);
}

static void
free_rebind(struct rebind *rb)
{
	size_t i;

	for (i = 0; i < rb->n; i++)
		if (rb->binds[i].fd >= 0)
			close(rb->binds[i].fd);
	free(rb->binds);
	listener_set_unref(rb->set);
	free(rb);
}

/* Apply one rebind on the worker's thread. */
static void
apply_rebind(struct worker *w, struct rebind *rb)
{
	struct worker_accept *a, **ap;
	size_t i;

	/* Descriptors kept: the new listener; the others: closed. */
	for (ap = &w->acc; (a = *ap) != NULL;) {
		for (i = 0; i < rb->n; i++)
			if (rb->binds[i].fd == a->fd)
				break;
		if (i < rb->n) {
			a->l = rb->binds[i].l;
			a->starved = 0;
			rb->binds[i].fd = -1;
			ap = &a->next;
			continue;
		}
		*ap = a->next;
		acc_close(a);
	}
	for (i = 0; i < rb->n; i++) {
		if (rb->binds[i].fd < 0)
			continue;
		if (acc_add(w, rb->binds[i].l, rb->binds[i].fd) == 0) {
			rb->binds[i].fd = -1;
			acc_resume(w->acc);
		}
	}
	listener_set_unref(w->set);
	w->set = rb->set;
	rb->set = NULL;
	free_rebind(rb);
}

static void
rebind_cb(uv_async_t *as)
{
	struct worker *w = as->data;
	struct rebind *rb, *next;

	uv_mutex_lock(&w->lock);
	rb = w->rebinds;
	w->rebinds = NULL;
	uv_mutex_unlock(&w->lock);
	for (; rb != NULL; rb = next) {
		next = rb->next;
		rb->next = NULL;
		if (w->stopping)
			free_rebind(rb);
		else
			apply_rebind(w, rb);
	}
}

/**
 * worker_rebind(w, set, binds, nbinds):
 * Ask ${w} (from any thread) to serve the listeners of ${set} (a reference
 * is taken) on ${binds}: a descriptor ${w} already has keeps its watch and
 * now accepts for the listener given with it, a new one is taken over, and
 * one that is not listed any more is closed.  Connections already open are
 * left alone.  Return 0, or -1 (out of memory: nothing changes, and the
 * new descriptors stay the caller's).
 */
int
worker_rebind(struct worker *w, struct listener_set *set,
    const struct worker_bind *binds, size_t n)
{
	struct rebind *rb, **tail;

	if ((rb = calloc(1, sizeof(*rb))) == NULL)
		return (-1);
	if ((rb->binds = calloc(n > 0 ? n : 1, sizeof(*binds))) == NULL) {
		free(rb);
		return (-1);
	}
	memcpy(rb->binds, binds, n * sizeof(*binds));
	rb->n = n;
	rb->set = listener_set_ref(set);
	/* In order: a later configuration must not be overtaken. */
	uv_mutex_lock(&w->lock);
	for (tail = &w->rebinds; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = rb;
	uv_mutex_unlock(&w->lock);
	uv_async_send(&w->rebind_async);
	return (0);
}

static void
worker_main(void *arg)
{
	struct worker *w = arg;
	struct worker_accept *a;

	for (a = w->acc; a != NULL; a = a->next)
		acc_resume(a);
	uv_run(&w->loop, UV_RUN_DEFAULT);
	if (w->done_cb != NULL)
		w->done_cb(w->done_arg);
}

/**
 * worker_start(w):
 * Run ${w}'s loop in a thread of its own.  Return 0 or -1.
 */
int
worker_start(struct worker *w)
{

	if (uv_async_init(&w->loop, &w->stop_async, stop_cb) < 0 ||
	    uv_async_init(&w->loop, &w->rebind_async, rebind_cb) < 0)
		return (-1);
	w->stop_async.data = w->rebind_async.data = w;
	return (uv_thread_create(&w->thread, worker_main, w) < 0 ? -1 : 0);
}

/**
 * worker_stop(w):
 * Ask ${w} (from any thread) to stop accepting, let its connections finish
 * for up to shutdown_timeout, then end.
 */
void
worker_stop(struct worker *w)
{

	uv_async_send(&w->stop_async);
}

/**
 * worker_join(w):
 * Wait for ${w}'s thread to end, then free ${w}.
 */
void
worker_join(struct worker *w)
{
	struct worker_accept *a;
	struct rebind *rb;
	size_t i;

	uv_thread_join(&w->thread);
	(void)uv_loop_close(&w->loop);
	/* Closed by worker_end's walk, but not freed by it. */
	while ((a = w->acc) != NULL) {
		w->acc = a->next;
		free(a);
	}
	while ((rb = w->rebinds) != NULL) {
		w->rebinds = rb->next;
		free_rebind(rb);
	}
	uv_mutex_destroy(&w->lock);
	for (i = 0; i < w->nbsess; i++)
		gnutls_free(w->bsess[i].d.data);
	free(w->bsess);
	listener_set_unref(w->set);
	free(w);
}
