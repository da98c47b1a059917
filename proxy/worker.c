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
#include "worker.h"

/* How often a paused listener (descriptors or max_connections) retries. */
#define RETRY_MS	100
/* Connections accepted per readiness event, so one listener cannot starve
 * the others or the connections already open. */
#define ACCEPT_BURST	64

struct worker_accept {
	struct worker	*w;
	struct listener	*l;
	int		 fd;
	uv_poll_t	 poll;
	int		 polling;
	int		 open;
	int		 starved;	/* paused for lack of descriptors */
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
	size_t i;

	w->retry_armed = 0;
	for (i = 0; i < w->nacc; i++)
		acc_resume(&w->acc[i]);
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
	int fd, i;

	(void)events;
	if (status < 0) {
		log_warn("accept", "listener %s: %s", a->l->conf->name,
		    uv_strerror(status));
		acc_pause(a);
		return;
	}
	for (i = 0; i < ACCEPT_BURST; i++) {
		if (atomic_load(&a->l->nconns) >= max) {
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
		if (conn_start(a->w, a->l, fd, (struct sockaddr *)&ss,
		    sslen) < 0)
			log_warn("accept", "listener %s: cannot set up a "
			    "connection", a->l->conf->name);
	}
}

/**
 * worker_new(id, cfg, ls, nls, fds, done_cb, arg):
 * Make worker ${id} serving the ${nls} listeners ${ls} on the listening
 * descriptors ${fds} (one per listener; taken over).  ${done_cb}(${arg}) is
 * called from the worker's thread when it has finished after worker_stop.
 * Return the worker, or NULL.
 */
struct worker *
worker_new(int id, const struct config *cfg, struct listener *ls, size_t nls,
    const int *fds, void (*done_cb)(void *), void *arg)
{
	struct worker *w;
	size_t i;
	int one = 1;

	if ((w = calloc(1, sizeof(*w))) == NULL)
		return (NULL);
	if ((w->acc = calloc(nls, sizeof(*w->acc))) == NULL)
		goto err1;
	if ((w->bsess = calloc(nls, sizeof(*w->bsess))) == NULL)
		goto err2;
	if (uv_loop_init(&w->loop) < 0)
		goto err2;
	w->id = id;
	w->cfg = cfg;
	w->nacc = nls;
	w->done_cb = done_cb;
	w->done_arg = arg;
	uv_timer_init(&w->loop, &w->retry_timer);
	w->retry_timer.data = w;
	uv_timer_init(&w->loop, &w->shutdown_timer);
	w->shutdown_timer.data = w;
	for (i = 0; i < nls; i++) {
		struct worker_accept *a = &w->acc[i];

		a->w = w;
		a->l = &ls[i];
		a->fd = fds[i];
		/*
		 * Accepted sockets inherit TCP_NODELAY from the listening one:
		 * one setsockopt here rather than one per connection.
		 */
		(void)setsockopt(a->fd, IPPROTO_TCP, TCP_NODELAY, &one,
		    sizeof(one));
		if (uv_poll_init(&w->loop, &a->poll, a->fd) < 0) {
			log_err("worker", "cannot watch listener %s",
			    ls[i].conf->name);
			goto err3;
		}
		a->poll.data = a;
		a->open = 1;
	}
	return (w);

err3:
	/* A loop with handles cannot be closed; this is start-up: exit. */
	return (NULL);
err2:
	free(w->bsess);
	free(w->acc);
err1:
	free(w);
	return (NULL);
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
	size_t i;

	for (i = 0; i < w->nacc; i++)
		if (w->acc[i].open) {
			w->acc[i].open = 0;
			close(w->acc[i].fd);
		}
	uv_walk(&w->loop, walk_close_cb, NULL);
}

static void
shutdown_timeout_cb(uv_timer_t *t)
{
	struct worker *w = t->data;
	struct conn *c, *next;

	log_info("shutdown", "worker %d: shutdown_timeout reached, closing "
	    "%zu connection(s)", w->id, w->nconns);
	for (c = w->conns; c != NULL; c = next) {
		next = conn_next(c);
		conn_abort(c, "shutdown");
	}
}

static void
stop_cb(uv_async_t *as)
{
	struct worker *w = as->data;
	size_t i;

	if (w->stopping)
		return;
	w->stopping = 1;
	/* Stop accepting at once: the kernel refuses new connections once
	 * the listening sockets are closed. */
	uv_timer_stop(&w->retry_timer);
	for (i = 0; i < w->nacc; i++) {
		struct worker_accept *a = &w->acc[i];

		if (a->polling)
			uv_poll_stop(&a->poll);
		a->polling = 0;
		uv_close((uv_handle_t *)&a->poll, handle_close_cb);
		close(a->fd);
		a->open = 0;
	}
	if (w->nconns == 0) {
		worker_end(w);
		return;
	}
	uv_timer_start(&w->shutdown_timer, shutdown_timeout_cb,
	    w->cfg->shutdown_timeout_ms, 0);
}

/**
 * worker_session(w, l):
 * The backend TLS session last saved for listener ${l} on ${w}, or NULL.
 */
const gnutls_datum_t *
worker_session(struct worker *w, const struct listener *l)
{

	return (w->bsess[l->index].size > 0 ? &w->bsess[l->index] : NULL);
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
	gnutls_datum_t d;

	if (tlsio_session_data(t, &d) < 0)
		return;
	gnutls_free(w->bsess[l->index].data);
	w->bsess[l->index] = d;
}

/**
 * worker_conn_gone(w, l):
 * Called by conn.c when a connection of listener ${l} is freed.
 */
void
worker_conn_gone(struct worker *w, struct listener *l)
{

	w->nconns--;
	atomic_fetch_sub(&l->nconns, 1);
	if (w->stopping && w->nconns == 0)
		worker_end(w);
}

static void
worker_main(void *arg)
{
	struct worker *w = arg;
	size_t i;

	for (i = 0; i < w->nacc; i++)
		acc_resume(&w->acc[i]);
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

	if (uv_async_init(&w->loop, &w->stop_async, stop_cb) < 0)
		return (-1);
	w->stop_async.data = w;
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
	size_t i;

	uv_thread_join(&w->thread);
	(void)uv_loop_close(&w->loop);
	for (i = 0; i < w->nacc; i++)
		gnutls_free(w->bsess[i].data);
	free(w->bsess);
	free(w->acc);
	free(w);
}
