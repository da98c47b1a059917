/*
 * backend: candidate pools, their health, and the resolver that keeps the
 * names fresh.  See backend.h for what it promises.
 *
 * Decisions worth knowing:
 * - candidates live in fixed slots; a slot keeps its health and counters as
 *   long as its address stays in the name's answer, and is freed when the
 *   address goes.  Sessions remember tried slots as a bitmap; a slot freed
 *   and reused during one session's retries is taken as tried (harmless).
 * - a lookup that fails with "no such name" drops the name's addresses (in
 *   Docker an address is soon reused by another container); a temporary
 *   failure (no DNS server answering) keeps the last good ones.
 * - every pool is on one registry, which the resolver (main loop) walks and
 *   /metrics renders.  Lock order: the registry, then a pool.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "backend.h"
#include "log.h"

/* Lookups wanted at once (after a failure) are at most this frequent. */
#define WANT_MIN_MS		1000
/* A name that keeps failing to resolve is logged this often. */
#define RESOLVE_LOG_MS		60000
/* A session that finds no address at all is logged this often. */
#define NOADDR_LOG_MS		10000
/* libuv's own default threadpool size, for its file work. */
#define THREADPOOL_BASE		4

struct cand {
	int			 used;
	uint32_t		 serial;
	unsigned		 entry;		/* backend line */
	unsigned		 pos;		/* place in that line's answer */
	struct sockaddr_storage	 ss;
	socklen_t		 sslen;
	char			 text[BACKEND_ADDR_MAX];
	uint64_t		 down_until;	/* ms; 0 or past: up */
	uint64_t		 attempts;
	uint64_t		 failures;
};

struct entry {
	struct backend_pool	*pool;
	char			 host[128];
	char			 text[128];	/* as written */
	char			 port[8];
	int			 is_name;
	int			 line;
	int			 inflight;
	int			 want;
	int			 nlookups;	/* completed */
	int			 failing;	/* the last lookup failed */
	uint64_t		 due;		/* next periodic lookup */
	uint64_t		 last_start;
	uint64_t		 last_log;
	char			 err[96];
	uv_getaddrinfo_t	 req;
};

struct backend_pool {
	struct backend_pool	*next;		/* on the registry */
	uv_mutex_t		 mu;
	char			 listener[80];
	uint64_t		 serial;	/* newest wins in /metrics */
	uint64_t		 resolve_ms;
	uint64_t		 connect_ms;
	int			 roundrobin;
	int			 dead;		/* freed by its owner */
	int			 inflight;
	int			 probed;
	struct entry		*entries;
	size_t			 nentries;
	struct cand		 cand[BACKEND_SLOTS];
	unsigned char		 order[BACKEND_SLOTS];
	unsigned		 norder;
	unsigned		 rr;
	uint32_t		 next_serial;
	uint64_t		 noaddr_log;	/* last "no address" warning */
	int			 full_logged;
};

/* The start-up check: one connect per candidate of one listener. */
struct probe_group;

struct probe {
	union {
		uv_handle_t	h;
		uv_tcp_t	tcp;
		uv_pipe_t	pipe;
	}			 u;
	uv_connect_t		 creq;
	struct probe_group	*g;
	char			 text[BACKEND_ADDR_MAX];
	int			 status;	/* 1: pending */
};

struct probe_group {
	struct probe_group	*next;
	char			 listener[80];
	uv_timer_t		 timer;
	size_t			 n;
	size_t			 pending;	/* connects not answered */
	size_t			 open;		/* handles not closed */
	int			 reported;
	struct probe		 p[];
};

static struct {
	uv_once_t		 once;
	uv_mutex_t		 mu;
	struct backend_pool	*pools;
	uint64_t		 serial;
	uv_loop_t		*loop;		/* NULL: not running */
	uv_timer_t		 timer;
	uv_async_t		 async;
	unsigned		 inflight;
	int			 probe;
	uint64_t		 probe_upto;	/* pools made by start-up */
	struct probe_group	*groups;
} R = { .once = UV_ONCE_INIT };

static void	tick(void);

static void
registry_init(void)
{

	if (uv_mutex_init(&R.mu) != 0)
		abort();
}

static _Atomic uint64_t clock_skew;

static uint64_t
now_ms(void)
{

	return (uv_hrtime() / 1000000 + clock_skew);
}

/**
 * backend_clock_advance(ms):
 * For the unit tests: move the clock the down marks are judged by ${ms}
 * milliseconds ahead.
 */
void
backend_clock_advance(uint64_t ms)
{

	clock_skew += ms;
}

/* Failover order: by backend line, then by place in the line's answer. */
static void
rebuild_order(struct backend_pool *p)
{
	unsigned i, j, n = 0;
	unsigned char s;

	for (i = 0; i < BACKEND_SLOTS; i++)
		if (p->cand[i].used)
			p->order[n++] = (unsigned char)i;
	for (i = 1; i < n; i++) {
		s = p->order[i];
		for (j = i; j > 0; j--) {
			const struct cand *a = &p->cand[p->order[j - 1]];
			const struct cand *b = &p->cand[s];

			if (a->entry < b->entry || (a->entry == b->entry &&
			    a->pos <= b->pos))
				break;
			p->order[j] = p->order[j - 1];
		}
		p->order[j] = s;
	}
	p->norder = n;
}

static int
same_addr(const struct cand *c, const struct sockaddr *sa, socklen_t len)
{

	return (c->sslen == len && memcmp(&c->ss, sa, len) == 0);
}

/*
 * Add ${sa} as candidate number ${pos} of line ${e}, or keep it if known;
 * mark its slot in ${seen}.  Return 1 if a slot was taken for it, else 0.
 */
static int
add_cand(struct backend_pool *p, unsigned e, unsigned pos,
    const struct sockaddr *sa, socklen_t len, int *seen)
{
	struct cand *c;
	unsigned i, fr = BACKEND_SLOTS;

	if (len > sizeof(c->ss))
		return (0);
	for (i = 0; i < BACKEND_SLOTS; i++) {
		c = &p->cand[i];
		if (!c->used) {
			if (fr == BACKEND_SLOTS)
				fr = i;
			continue;
		}
		if (c->entry == e && same_addr(c, sa, len)) {
			if (!seen[i])
				c->pos = pos;
			seen[i] = 1;
			return (0);
		}
	}
	if (fr == BACKEND_SLOTS) {
		if (!p->full_logged)
			log_warn("backend", "listener %s: more than %d backend "
			    "addresses; the rest are not used", p->listener,
			    BACKEND_SLOTS);
		p->full_logged = 1;
		return (0);
	}
	c = &p->cand[fr];
	memset(c, 0, sizeof(*c));
	c->used = 1;
	c->serial = ++p->next_serial;
	c->entry = e;
	c->pos = pos;
	memcpy(&c->ss, sa, len);
	c->sslen = len;
	config_sockaddr_text(sa, c->text, sizeof(c->text));
	seen[fr] = 1;
	return (1);
}

/**
 * backend_pool_update(p, e, res):
 * Make the addresses in ${res} (a getaddrinfo answer; NULL: none) the
 * candidates of backend line ${e} of ${p}.  Addresses that stay keep their
 * health.  Return 1 if the set of addresses changed, else 0.  For the
 * resolver and the unit tests.
 */
int
backend_pool_update(struct backend_pool *p, size_t e,
    const struct addrinfo *res)
{
	int seen[BACKEND_SLOTS] = { 0 };
	const struct addrinfo *ai;
	unsigned i, pos = 0;
	int changed = 0;

	uv_mutex_lock(&p->mu);
	for (ai = res; ai != NULL; ai = ai->ai_next)
		if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6)
			changed |= add_cand(p, (unsigned)e, pos++,
			    ai->ai_addr, ai->ai_addrlen, seen);
	for (i = 0; i < BACKEND_SLOTS; i++)
		if (p->cand[i].used && p->cand[i].entry == e && !seen[i]) {
			/* Gone from the answer, and its health with it. */
			p->cand[i].used = 0;
			changed = 1;
		}
	rebuild_order(p);
	uv_mutex_unlock(&p->mu);
	return (changed);
}

/**
 * backend_pool_new(conf):
 * Make the candidate pool of listener ${conf} (borrowed for the pool's
 * lifetime): numeric backends are candidates at once, names once the
 * resolver has looked them up.  Return the pool, or NULL.
 */
struct backend_pool *
backend_pool_new(const struct config_listener *conf)
{
	struct backend_pool *p;
	const struct config_backend *cb;
	struct entry *e;
	int seen[BACKEND_SLOTS] = { 0 };
	size_t i;

	uv_once(&R.once, registry_init);
	if ((p = calloc(1, sizeof(*p))) == NULL)
		goto err0;
	if (conf->nbackends > 0 &&
	    (p->entries = calloc(conf->nbackends, sizeof(*e))) == NULL)
		goto err1;
	if (uv_mutex_init(&p->mu) != 0)
		goto err2;
	snprintf(p->listener, sizeof(p->listener), "%s", conf->name);
	p->resolve_ms = conf->backend_resolve_ms;
	p->connect_ms = conf->connect_timeout_ms;
	p->roundrobin = conf->backend_balance == CONFIG_BALANCE_ROUNDROBIN;
	p->nentries = conf->nbackends;
	for (i = 0; i < conf->nbackends; i++) {
		cb = &conf->backends[i];
		e = &p->entries[i];
		e->pool = p;
		e->req.data = e;
		/* The TLS name by default: the name, or the address. */
		snprintf(e->host, sizeof(e->host), "%s", cb->addr.host);
		snprintf(e->text, sizeof(e->text), "%s", cb->addr.text);
		snprintf(e->port, sizeof(e->port), "%u", cb->port);
		e->line = cb->line;
		if ((e->is_name = cb->is_name))
			continue;
		add_cand(p, (unsigned)i, 0, (const void *)&cb->addr.ss,
		    cb->addr.sslen, seen);
	}
	rebuild_order(p);

	uv_mutex_lock(&R.mu);
	p->serial = ++R.serial;
	p->next = R.pools;
	R.pools = p;
	if (R.loop != NULL)
		uv_async_send(&R.async);
	uv_mutex_unlock(&R.mu);
	return (p);

err2:
	free(p->entries);
err1:
	free(p);
err0:
	return (NULL);
}

static void
pool_destroy(struct backend_pool *p)
{

	uv_mutex_destroy(&p->mu);
	free(p->entries);
	free(p);
}

/* Take ${p} off the registry; with R.mu held. */
static void
unlink_pool(struct backend_pool *p)
{
	struct backend_pool **pp;

	for (pp = &R.pools; *pp != NULL; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
}

/**
 * backend_pool_free(p):
 * Free ${p} (any thread); a lookup still in flight frees it when it ends.
 * NULL is a no-op.
 */
void
backend_pool_free(struct backend_pool *p)
{
	int later;

	if (p == NULL)
		return;
	uv_mutex_lock(&R.mu);
	uv_mutex_lock(&p->mu);
	p->dead = 1;
	later = p->inflight > 0;
	uv_mutex_unlock(&p->mu);
	if (!later)
		unlink_pool(p);
	uv_mutex_unlock(&R.mu);
	if (!later)
		pool_destroy(p);
}

/* Ask the resolver to run now (any thread). */
static void
wake_resolver(void)
{

	uv_mutex_lock(&R.mu);
	if (R.loop != NULL)
		uv_async_send(&R.async);
	uv_mutex_unlock(&R.mu);
}

/* The first candidate from ${start} in turn, not tried, up if ${up}. */
static int
scan(struct backend_pool *p, const struct backend_try *t, unsigned start,
    int up, uint64_t now)
{
	unsigned k, s;

	for (k = 0; k < p->norder; k++) {
		s = p->order[(start + k) % p->norder];
		if (t->tried & ((uint64_t)1 << s))
			continue;
		if (up && p->cand[s].down_until > now)
			continue;
		return ((int)s);
	}
	return (-1);
}

/**
 * backend_pick(p, t, out, why, whylen):
 * Choose the candidate for the next attempt of the session whose attempts
 * are ${t}: the first healthy one not yet tried (failover: in file order;
 * roundrobin: in turn), else one marked down but not yet tried.  Return 0
 * with the address in ${out} (and in ${t}->addr); or -1 when there is none
 * left, with the reason in ${why}, and 1 instead of -1 when that reason is
 * worth a warning now (a name that does not resolve is reported at most
 * once every 10 s per listener, not once per client).
 */
int
backend_pick(struct backend_pool *p, struct backend_try *t,
    struct backend_target *out, char *why, size_t whylen)
{
	uint64_t now = now_ms();
	unsigned start = 0;
	struct cand *c;
	size_t i, n;
	int s, rc = -1, want = 0;

	uv_mutex_lock(&p->mu);
	/* After a connection that worked, a new round (after STARTTLS). */
	if (t->ok) {
		t->ok = 0;
		t->tried = 0;
	}
	if (p->norder == 0) {
		/* Names not (yet) resolved: look again, not too often. */
		for (i = 0; i < p->nentries; i++) {
			struct entry *e = &p->entries[i];

			if (e->is_name && !e->inflight &&
			    now >= e->last_start + WANT_MIN_MS) {
				e->want = 1;
				want = 1;
			}
		}
		snprintf(why, whylen, "no backend address: %s%s%s",
		    p->nentries > 0 ? p->entries[0].text : "",
		    p->nentries > 0 && p->entries[0].err[0] != '\0' ? ": " :
		    " (not looked up yet)",
		    p->nentries > 0 ? p->entries[0].err : "");
		if (now >= p->noaddr_log + NOADDR_LOG_MS || p->noaddr_log == 0) {
			p->noaddr_log = now;
			rc = 1;
		}
		goto out;
	}
	if (p->roundrobin)
		start = p->rr++ % p->norder;
	if ((s = scan(p, t, start, 1, now)) < 0 &&
	    (s = scan(p, t, start, 0, now)) < 0) {
		/* Each failure was logged by the session as it happened. */
		snprintf(why, whylen, "every backend failed");
		goto out;
	}
	c = &p->cand[s];
	t->tried |= (uint64_t)1 << s;
	t->slot = s;
	t->serial = c->serial;
	/* Only for logs: a long unix path may be cut short. */
	n = strnlen(c->text, sizeof(t->addr) - 1);
	memcpy(t->addr, c->text, n);
	t->addr[n] = '\0';
	memset(&out->ss, 0, sizeof(out->ss));
	memcpy(&out->ss, &c->ss, c->sslen);
	out->sslen = c->sslen;
	t->host = p->entries[c->entry].host;
	c->attempts++;
	rc = 0;
out:
	uv_mutex_unlock(&p->mu);
	if (want)
		wake_resolver();
	return (rc);
}

/**
 * backend_report(p, t, ok):
 * The attempt last picked for ${t} worked (${ok}: connected and, where
 * backend_tls wants it, TLS is up) or failed (refused, timed out, TLS).  A
 * failure marks the candidate down for BACKEND_DOWN_MS and has its name
 * looked up again at once.  Reporting twice is a no-op.
 */
void
backend_report(struct backend_pool *p, struct backend_try *t, int ok)
{
	struct cand *c;
	int want = 0;

	/* Serials start at 1: 0 is "nothing picked, or reported". */
	if (t->serial == 0 || t->slot < 0 || t->slot >= BACKEND_SLOTS)
		return;
	uv_mutex_lock(&p->mu);
	c = &p->cand[t->slot];
	t->ok = ok;
	if (c->used && c->serial == t->serial) {
		if (ok)
			c->down_until = 0;
		else {
			c->failures++;
			c->down_until = now_ms() + BACKEND_DOWN_MS;
			if (c->entry < p->nentries &&
			    p->entries[c->entry].is_name) {
				p->entries[c->entry].want = 1;
				want = 1;
			}
		}
	}
	t->slot = -1;
	t->serial = 0;
	uv_mutex_unlock(&p->mu);
	if (want)
		wake_resolver();
}

/**
 * backend_threadpool_setup():
 * Size libuv's threadpool (UV_THREADPOOL_SIZE) for the file work it does
 * plus BACKEND_MAX_LOOKUPS lookups.  Call before anything uses the pool.
 */
void
backend_threadpool_setup(void)
{
	const char *v = getenv("UV_THREADPOOL_SIZE");
	char buf[16];
	long n = v != NULL ? strtol(v, NULL, 10) : 0;

	/* A user's bigger size stands; a smaller one could starve files. */
	if (n >= THREADPOOL_BASE + BACKEND_MAX_LOOKUPS)
		return;
	snprintf(buf, sizeof(buf), "%d", THREADPOOL_BASE + BACKEND_MAX_LOOKUPS);
	(void)setenv("UV_THREADPOOL_SIZE", buf, 1);
}

/* Resolver. */

static void
log_resolve(struct backend_pool *p, struct entry *e, enum config_loglevel lv,
    const char *msg)
{
	char addrs[512];
	size_t i, n = 0;

	addrs[0] = '\0';
	for (i = 0; i < p->norder && n < sizeof(addrs) - 1; i++) {
		const struct cand *c = &p->cand[p->order[i]];

		if (&p->entries[c->entry] != e)
			continue;
		n += (size_t)snprintf(addrs + n, sizeof(addrs) - n, "%s%s",
		    n > 0 ? " " : "", c->text);
		if (n >= sizeof(addrs))
			n = sizeof(addrs) - 1;
	}
	log_fields(lv, "backend_resolve", (struct log_field[]){
	    LOG_STR("listener", p->listener), LOG_STR("backend", e->text),
	    LOG_STR("addresses", addrs), LOG_STR("error", e->err),
	    LOG_STR("msg", msg) }, 5);
}

/* Take the answer to ${e}'s lookup; with R.mu held, ${p} unlocked. */
static void
lookup_done(struct backend_pool *p, struct entry *e, int status,
    const struct addrinfo *res)
{
	uint64_t now = now_ms();
	int changed, was_failing, first;

	uv_mutex_lock(&p->mu);
	was_failing = e->failing;
	first = e->nlookups == 0;
	e->nlookups++;
	e->due = now + p->resolve_ms;
	if (status == 0) {
		e->failing = 0;
		e->err[0] = '\0';
	} else {
		e->failing = 1;
		snprintf(e->err, sizeof(e->err), "%s", uv_strerror(status));
	}
	uv_mutex_unlock(&p->mu);

	if (status == 0 || status == UV_EAI_NONAME || status == UV_EAI_NODATA)
		changed = backend_pool_update(p, (size_t)(e - p->entries),
		    status == 0 ? res : NULL);
	else
		changed = 0;	/* temporary: keep the last good answer */

	uv_mutex_lock(&p->mu);
	if (status != 0) {
		if (first || !was_failing || now >= e->last_log +
		    RESOLVE_LOG_MS) {
			e->last_log = now;
			log_resolve(p, e, CONFIG_LOG_WARN, first ?
			    "the backend name does not resolve (yet); its "
			    "sessions get the unavailable reply until it does" :
			    "the backend name does not resolve");
		}
	} else if (first || changed || was_failing)
		log_resolve(p, e, CONFIG_LOG_INFO, was_failing ?
		    "the backend name resolves again" : changed && !first ?
		    "the backend name resolves to new addresses" :
		    "the backend name resolves");
	uv_mutex_unlock(&p->mu);
}

static void
lookup_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct entry *e = req->data;
	struct backend_pool *p = e->pool;
	int gone;

	uv_mutex_lock(&R.mu);
	R.inflight--;
	if (!p->dead && status != UV_ECANCELED)
		lookup_done(p, e, status, res);
	uv_mutex_lock(&p->mu);
	e->inflight = 0;
	p->inflight--;
	gone = p->dead && p->inflight == 0;
	uv_mutex_unlock(&p->mu);
	if (gone)
		unlink_pool(p);
	uv_mutex_unlock(&R.mu);
	uv_freeaddrinfo(res);
	if (gone)
		pool_destroy(p);
	tick();
}

/* Start ${e}'s lookup; with R.mu and ${p}'s lock held. */
static void
lookup_start(struct backend_pool *p, struct entry *e, uint64_t now)
{
	struct addrinfo hints;
	int rc;

	memset(&hints, 0, sizeof(hints));
	/* Every A and AAAA address is a candidate: no AI_ADDRCONFIG. */
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	e->want = 0;
	e->last_start = now;
	rc = uv_getaddrinfo(R.loop, &e->req, lookup_cb, e->host, e->port,
	    &hints);
	if (rc < 0) {
		/* Cannot even queue it: try again at the next period. */
		e->due = now + p->resolve_ms;
		snprintf(e->err, sizeof(e->err), "%s", uv_strerror(rc));
		return;
	}
	e->inflight = 1;
	p->inflight++;
	R.inflight++;
}

static void	probe_start(struct backend_pool *);
static void	timer_cb(uv_timer_t *);

/* Start the lookups that are due; arm the timer for the next. */
static void
tick(void)
{
	struct backend_pool *p;
	struct entry *e;
	uint64_t now = now_ms(), next = UINT64_MAX, when;
	size_t i;
	int pending;

	uv_mutex_lock(&R.mu);
	if (R.loop == NULL) {
		uv_mutex_unlock(&R.mu);
		return;
	}
	for (p = R.pools; p != NULL; p = p->next) {
		if (p->dead)
			continue;
		uv_mutex_lock(&p->mu);
		pending = 0;
		for (i = 0; i < p->nentries; i++) {
			e = &p->entries[i];
			if (!e->is_name)
				continue;
			if (e->nlookups == 0)
				pending = 1;
			if (e->inflight)
				continue;
			when = e->due;
			if (e->want && e->last_start + WANT_MIN_MS < when)
				when = e->last_start + WANT_MIN_MS;
			if (when <= now && R.inflight < BACKEND_MAX_LOOKUPS) {
				lookup_start(p, e, now);
				continue;
			}
			/* Due but over the limit: a lookup that ends ticks again. */
			if (when <= now)
				continue;
			if (when < next)
				next = when;
		}
		uv_mutex_unlock(&p->mu);
		if (!pending && !p->probed) {
			p->probed = 1;
			/* At start-up only: not for listeners a reload adds. */
			if (R.probe && p->serial <= R.probe_upto)
				probe_start(p);
		}
	}
	if (next != UINT64_MAX)
		uv_timer_start(&R.timer, timer_cb, next > now ? next - now : 0,
		    0);
	uv_mutex_unlock(&R.mu);
}

static void
timer_cb(uv_timer_t *t)
{

	(void)t;
	tick();
}

static void
async_cb(uv_async_t *a)
{

	(void)a;
	tick();
}

/* The start-up check. */

static void
group_maybe_free(struct probe_group *g)
{
	struct probe_group **gp;

	if (g->open > 0)
		return;
	for (gp = &R.groups; *gp != NULL; gp = &(*gp)->next)
		if (*gp == g) {
			*gp = g->next;
			break;
		}
	free(g);
}

static void
probe_close_cb(uv_handle_t *h)
{
	struct probe_group *g = h->data;

	g->open--;
	group_maybe_free(g);
}

/* Every candidate answered or timed out: one line for the listener. */
static void
group_report(struct probe_group *g)
{
	char bad[1024];
	size_t i, n = 0, nbad = 0;

	if (g->reported)
		return;
	g->reported = 1;
	bad[0] = '\0';
	for (i = 0; i < g->n; i++) {
		struct probe *pr = &g->p[i];

		if (pr->status == 0)
			continue;
		nbad++;
		if (n < sizeof(bad) - 1) {
			n += (size_t)snprintf(bad + n, sizeof(bad) - n,
			    "%s%s (%s)", n > 0 ? ", " : "", pr->text,
			    pr->status == 1 ? "no answer within "
			    "connect_timeout" : uv_strerror(pr->status));
			if (n >= sizeof(bad))
				n = sizeof(bad) - 1;
		}
	}
	if (nbad == 0) {
		log_fields(CONFIG_LOG_DEBUG, "backend_check",
		    (struct log_field[]){ LOG_STR("listener", g->listener),
		    LOG_STR("result", "ok") }, 2);
		return;
	}
	log_fields(CONFIG_LOG_WARN, "backend_check", (struct log_field[]){
	    LOG_STR("listener", g->listener), LOG_STR("failed", bad),
	    LOG_STR("msg", nbad == g->n ? "no backend answers a connection: "
	    "clients get the unavailable reply until one does" :
	    "some backends do not answer a connection") }, 3);
}

static void
group_close(struct probe_group *g)
{
	size_t i;

	for (i = 0; i < g->n; i++)
		if (!uv_is_closing(&g->p[i].u.h))
			uv_close(&g->p[i].u.h, probe_close_cb);
	if (!uv_is_closing((uv_handle_t *)&g->timer))
		uv_close((uv_handle_t *)&g->timer, probe_close_cb);
}

static void
probe_connect_cb(uv_connect_t *req, int status)
{
	struct probe *pr = req->data;
	struct probe_group *g = pr->g;

	if (status == UV_ECANCELED || pr->status != 1)
		return;
	pr->status = status;
	if (!uv_is_closing(&pr->u.h))
		uv_close(&pr->u.h, probe_close_cb);
	if (--g->pending == 0) {
		uv_timer_stop(&g->timer);
		group_report(g);
		group_close(g);
	}
}

static void
probe_timer_cb(uv_timer_t *t)
{
	struct probe_group *g = t->data;

	group_report(g);
	group_close(g);
}

/* Try each candidate of ${p} once; with R.mu held, on the main loop. */
static void
probe_start(struct backend_pool *p)
{
	struct probe_group *g;
	struct probe *pr;
	struct cand *c;
	size_t i, n;

	uv_mutex_lock(&p->mu);
	n = p->norder;
	if (n == 0 || (g = calloc(1, sizeof(*g) + n * sizeof(*pr))) == NULL) {
		uv_mutex_unlock(&p->mu);
		return;
	}
	snprintf(g->listener, sizeof(g->listener), "%s", p->listener);
	uv_timer_init(R.loop, &g->timer);
	g->timer.data = g;
	g->open = 1;
	for (i = 0; i < n; i++) {
		c = &p->cand[p->order[i]];
		pr = &g->p[i];
		pr->g = g;
		pr->creq.data = pr;
		pr->status = 1;
		snprintf(pr->text, sizeof(pr->text), "%s", c->text);
		if (c->ss.ss_family == AF_UNIX)
			uv_pipe_init(R.loop, &pr->u.pipe, 0);
		else
			uv_tcp_init(R.loop, &pr->u.tcp);
		pr->u.h.data = g;
		g->open++;
		g->n++;
		g->pending++;
		if (c->ss.ss_family == AF_UNIX) {
			const struct sockaddr_un *un = (const void *)&c->ss;

			uv_pipe_connect(&pr->creq, &pr->u.pipe, un->sun_path,
			    probe_connect_cb);
		} else if ((pr->status = uv_tcp_connect(&pr->creq,
		    &pr->u.tcp, (const void *)&c->ss, probe_connect_cb)) < 0) {
			g->pending--;
			uv_close(&pr->u.h, probe_close_cb);
		} else
			pr->status = 1;
	}
	uv_timer_start(&g->timer, probe_timer_cb, p->connect_ms, 0);
	uv_mutex_unlock(&p->mu);
	g->next = R.groups;
	R.groups = g;
	if (g->pending == 0) {
		uv_timer_stop(&g->timer);
		group_report(g);
		group_close(g);
	}
}

/**
 * backend_resolver_start(loop, probe):
 * Run the resolver on ${loop} (the main loop) for every pool, now and made
 * later.  With ${probe}, each listener's candidates are also tried once
 * with a TCP (or unix) connect when its names have been looked up, and one
 * warning per listener names those that do not answer.  Return 0 or -1.
 */
int
backend_resolver_start(uv_loop_t *loop, int probe)
{

	uv_once(&R.once, registry_init);
	if (uv_timer_init(loop, &R.timer) < 0)
		return (-1);
	if (uv_async_init(loop, &R.async, async_cb) < 0) {
		uv_close((uv_handle_t *)&R.timer, NULL);
		return (-1);
	}
	/* The resolver never keeps the loop alive by itself. */
	uv_unref((uv_handle_t *)&R.timer);
	uv_mutex_lock(&R.mu);
	R.loop = loop;
	R.probe = probe;
	R.probe_upto = R.serial;
	uv_mutex_unlock(&R.mu);
	tick();
	return (0);
}

/* 1 once every name of every pool has had its first answer. */
static int
first_round_done(void)
{
	struct backend_pool *p;
	size_t i;
	int done = 1;

	uv_mutex_lock(&R.mu);
	for (p = R.pools; p != NULL && done; p = p->next) {
		uv_mutex_lock(&p->mu);
		for (i = 0; i < p->nentries; i++)
			if (p->entries[i].is_name &&
			    p->entries[i].nlookups == 0)
				done = 0;
		uv_mutex_unlock(&p->mu);
	}
	uv_mutex_unlock(&R.mu);
	return (done);
}

static void
wait_timer_cb(uv_timer_t *t)
{

	(void)t;
}

static void
wait_close_cb(uv_handle_t *h)
{

	*(int *)h->data = 1;
}

/**
 * backend_resolver_wait(ms):
 * Run the resolver's loop until every name has been looked up once, or for
 * at most ${ms} milliseconds: called at start-up before the workers accept,
 * so that the first clients do not find their backend's name unresolved.
 */
void
backend_resolver_wait(uint64_t ms)
{
	uv_loop_t *loop = R.loop;
	uv_timer_t t;
	uint64_t end = uv_hrtime() / 1000000 + ms;
	int closed = 0;

	if (loop == NULL || uv_timer_init(loop, &t) < 0)
		return;
	t.data = &closed;
	uv_timer_start(&t, wait_timer_cb, ms, 0);
	while (!first_round_done() && uv_hrtime() / 1000000 < end &&
	    R.loop != NULL)
		(void)uv_run(loop, UV_RUN_ONCE);
	/* The timer lives on this stack: see it closed before returning. */
	uv_close((uv_handle_t *)&t, wait_close_cb);
	while (!closed)
		(void)uv_run(loop, UV_RUN_NOWAIT);
}

/**
 * backend_resolver_stop():
 * Stop the resolver: cancel lookups and probes and close its handles (the
 * loop must run on for their callbacks).
 */
void
backend_resolver_stop(void)
{
	struct backend_pool *p;
	struct probe_group *g, *ng;
	size_t i;

	uv_mutex_lock(&R.mu);
	if (R.loop == NULL) {
		uv_mutex_unlock(&R.mu);
		return;
	}
	R.loop = NULL;
	for (p = R.pools; p != NULL; p = p->next) {
		uv_mutex_lock(&p->mu);
		for (i = 0; i < p->nentries; i++)
			if (p->entries[i].inflight)
				(void)uv_cancel((uv_req_t *)&p->entries[i].req);
		uv_mutex_unlock(&p->mu);
	}
	for (g = R.groups; g != NULL; g = ng) {
		ng = g->next;
		uv_timer_stop(&g->timer);
		group_close(g);
	}
	uv_mutex_unlock(&R.mu);
	uv_close((uv_handle_t *)&R.timer, NULL);
	uv_close((uv_handle_t *)&R.async, NULL);
}

/**
 * backend_check(cfg, errf):
 * For mailtlsd -t: look up every backend name of ${cfg} (blocking; there is
 * no loop to block) and write one "FILE:LINE: warning: ..." line to ${errf}
 * for each that does not resolve.  Return the number of warnings.
 */
int
backend_check(const struct config *cfg, FILE *errf)
{
	const struct config_backend *cb;
	struct addrinfo hints;
	uv_getaddrinfo_t req;
	uv_loop_t loop;
	char port[8];
	size_t i, j;
	int rc, n = 0;

	if (uv_loop_init(&loop) < 0)
		return (0);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	for (i = 0; i < cfg->nlisteners; i++)
		for (j = 0; j < cfg->listeners[i].nbackends; j++) {
			cb = &cfg->listeners[i].backends[j];
			if (!cb->is_name)
				continue;
			snprintf(port, sizeof(port), "%u", cb->port);
			/* Without a callback, uv_getaddrinfo runs here. */
			rc = uv_getaddrinfo(&loop, &req, NULL, cb->addr.host,
			    port, &hints);
			if (rc == 0) {
				uv_freeaddrinfo(req.addrinfo);
				continue;
			}
			fprintf(errf, "%s:%d: warning: backend %s does not "
			    "resolve (yet): %s; its sessions get the "
			    "unavailable reply until it does\n", cfg->path,
			    cb->line, cb->addr.text, uv_strerror(rc));
			n++;
		}
	(void)uv_loop_close(&loop);
	return (n);
}

/* /metrics. */

struct sbuf {
	char	*p;
	size_t	 len, cap;
	int	 failed;
};

static void __attribute__((format(printf, 2, 3)))
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;
	char *np;

	if (b->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p != NULL ? b->p + b->len : NULL,
		    b->p != NULL ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = 1;
			return;
		}
		if (b->p != NULL && (size_t)n < b->cap - b->len) {
			b->len += (size_t)n;
			return;
		}
		if ((np = realloc(b->p, b->cap * 2 + (size_t)n + 256)) ==
		    NULL) {
			b->failed = 1;
			return;
		}
		b->p = np;
		b->cap = b->cap * 2 + (size_t)n + 256;
	}
}

/* A label value: backslash, quote and newline escaped. */
static const char *
esc(const char *s, char *buf, size_t len)
{
	size_t n = 0;

	for (; *s != '\0' && n + 3 < len; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n') {
			buf[n++] = '\\';
			buf[n++] = *s == '\n' ? 'n' : *s;
		} else
			buf[n++] = *s;
	}
	buf[n] = '\0';
	return (buf);
}

/* Whether a newer pool of the same listener name exists (reloads). */
static int
superseded(const struct backend_pool *p)
{
	const struct backend_pool *q;

	for (q = R.pools; q != NULL; q = q->next)
		if (q != p && !q->dead && q->serial > p->serial &&
		    strcmp(q->listener, p->listener) == 0)
			return (1);
	return (0);
}

/**
 * backend_metrics_render(len):
 * The backend families of /metrics (mailtlsd_backend_up, _attempts_total,
 * _failures_total) as text of ${*len} bytes owned by the caller, or NULL
 * when there is nothing to say (no pool) or no memory.
 */
char *
backend_metrics_render(size_t *len)
{
	static const struct {
		const char	*name, *type, *help;
	} fam[] = {
		{ "mailtlsd_backend_up", "gauge", "1 while a backend address "
		  "is taken as healthy, 0 while it is marked down (after a "
		  "refused, timed out or failed TLS connection, for 10 s)." },
		{ "mailtlsd_backend_attempts_total", "counter",
		  "Connections tried to each backend address." },
		{ "mailtlsd_backend_failures_total", "counter",
		  "Connections to each backend address that were refused, "
		  "timed out or failed their TLS check." },
	};
	struct sbuf b = { NULL, 0, 0, 0 };
	struct backend_pool *p;
	char l1[200], l2[300], l3[300];
	uint64_t now = now_ms();
	size_t f, k;

	uv_once(&R.once, registry_init);
	uv_mutex_lock(&R.mu);
	if (R.pools == NULL) {
		uv_mutex_unlock(&R.mu);
		return (NULL);
	}
	for (f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
		sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", fam[f].name,
		    fam[f].help, fam[f].name, fam[f].type);
		for (p = R.pools; p != NULL; p = p->next) {
			if (p->dead || superseded(p))
				continue;
			uv_mutex_lock(&p->mu);
			for (k = 0; k < p->norder; k++) {
				const struct cand *c = &p->cand[p->order[k]];
				uint64_t v = f == 0 ? c->down_until <= now :
				    f == 1 ? c->attempts : c->failures;

				sb_printf(&b, "%s{listener=\"%s\",backend="
				    "\"%s\",name=\"%s\"} %llu\n", fam[f].name,
				    esc(p->listener, l1, sizeof(l1)),
				    esc(c->text, l2, sizeof(l2)),
				    esc(p->entries[c->entry].text, l3,
				    sizeof(l3)), (unsigned long long)v);
			}
			uv_mutex_unlock(&p->mu);
		}
	}
	uv_mutex_unlock(&R.mu);
	if (b.failed) {
		free(b.p);
		return (NULL);
	}
	*len = b.len;
	return (b.p);
}
