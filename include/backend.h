/*
 * backend: where a listener's sessions go.  The candidates are every
 * address of every backend line (numeric ones at once, DNS names once
 * looked up), with their health; a session picks one, reports how the
 * attempt went, and picks again after a failure, each candidate at most
 * once.
 *
 * A pool is shared by every worker (a mutex guards it; a pick copies the
 * address out).  Names are looked up by one resolver on the main loop with
 * uv_getaddrinfo, so no loop ever blocks on DNS: every backend_resolve, and
 * at once (at most once a second) after a failed connection or when a
 * session finds no address.  The resolver keeps at most
 * BACKEND_MAX_LOOKUPS lookups in flight, and backend_threadpool_setup()
 * sizes the libuv threadpool so that slow lookups never hold every thread
 * that file work (the certificate reloader) needs.
 */
#ifndef MAILTLSD_BACKEND_H
#define MAILTLSD_BACKEND_H

#include <sys/socket.h>

#include <stdint.h>
#include <stdio.h>

#include <uv.h>

#include "config.h"

/* Candidates per listener (addresses over all its backend lines). */
#define BACKEND_SLOTS		64
/* How long a failed candidate is skipped while others are up. */
#define BACKEND_DOWN_MS		10000
/* Lookups in flight at once, over the whole process. */
#define BACKEND_MAX_LOOKUPS	4
/* "[v6]:port" or "unix:/path". */
#define BACKEND_ADDR_MAX	128

struct backend_pool;

/*
 * A session's attempts: kept by the session, zeroed at its start.  Once an
 * attempt has worked, the next pick starts a new round (the fresh backend
 * connection after STARTTLS may go to any candidate).
 */
struct backend_try {
	uint64_t	 tried;		/* slots tried (bit per slot) */
	int		 slot;		/* last pick, or -1 once reported */
	uint32_t	 serial;	/* that slot's candidate (slots are
					   reused when addresses change) */
	int		 ok;		/* the last attempt worked */
	const char	*host;		/* its backend line's host: the TLS
					   name unless backend_name is set */
	char		 addr[64];	/* its address, for logs */
};

/* What a pick says to connect to. */
struct backend_target {
	struct sockaddr_storage	 ss;
	socklen_t		 sslen;
};

/**
 * backend_pool_new(conf):
 * Make the candidate pool of listener ${conf} (borrowed for the pool's
 * lifetime): numeric backends are candidates at once, names once the
 * resolver has looked them up.  Return the pool, or NULL.
 */
struct backend_pool *backend_pool_new(const struct config_listener *);

/**
 * backend_pool_free(p):
 * Free ${p} (any thread); a lookup still in flight frees it when it ends.
 * NULL is a no-op.
 */
void backend_pool_free(struct backend_pool *);

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
int backend_pick(struct backend_pool *, struct backend_try *,
    struct backend_target *, char *, size_t);

/**
 * backend_report(p, t, ok):
 * The attempt last picked for ${t} worked (${ok}: connected and, where
 * backend_tls wants it, TLS is up) or failed (refused, timed out, TLS).  A
 * failure marks the candidate down for BACKEND_DOWN_MS and has its name
 * looked up again at once.  Reporting twice is a no-op.
 */
void backend_report(struct backend_pool *, struct backend_try *, int);

/**
 * backend_pool_update(p, e, res):
 * Make the addresses in ${res} (a getaddrinfo answer; NULL: none) the
 * candidates of backend line ${e} of ${p}.  Addresses that stay keep their
 * health.  Return 1 if the set of addresses changed, else 0.  For the
 * resolver and the unit tests.
 */
struct addrinfo;
int backend_pool_update(struct backend_pool *, size_t,
    const struct addrinfo *);

/**
 * backend_clock_advance(ms):
 * For the unit tests: move the clock the down marks are judged by ${ms}
 * milliseconds ahead.
 */
void backend_clock_advance(uint64_t);

/**
 * backend_threadpool_setup():
 * Size libuv's threadpool (UV_THREADPOOL_SIZE) for the file work it does
 * plus BACKEND_MAX_LOOKUPS lookups.  Call before anything uses the pool.
 */
void backend_threadpool_setup(void);

/**
 * backend_resolver_start(loop, probe):
 * Run the resolver on ${loop} (the main loop) for every pool, now and made
 * later.  With ${probe}, each listener's candidates are also tried once
 * with a TCP (or unix) connect when its names have been looked up, and one
 * warning per listener names those that do not answer.  Return 0 or -1.
 */
int backend_resolver_start(uv_loop_t *, int);

/**
 * backend_resolver_wait(ms):
 * Run the resolver's loop until every name has been looked up once, or for
 * at most ${ms} milliseconds: called at start-up before the workers accept,
 * so that the first clients do not find their backend's name unresolved.
 */
void backend_resolver_wait(uint64_t);

/**
 * backend_resolver_stop():
 * Stop the resolver: cancel lookups and probes and close its handles (the
 * loop must run on for their callbacks).
 */
void backend_resolver_stop(void);

/**
 * backend_check(cfg, errf):
 * For mailtlsd -t: look up every backend name of ${cfg} (blocking; there is
 * no loop to block) and write one "FILE:LINE: warning: ..." line to ${errf}
 * for each that does not resolve.  Return the number of warnings.
 */
int backend_check(const struct config *, FILE *);

/**
 * backend_metrics_render(len):
 * The backend families of /metrics (mailtlsd_backend_up, _attempts_total,
 * _failures_total) as text of ${*len} bytes owned by the caller, or NULL
 * when there is nothing to say (no pool) or no memory.
 */
char *backend_metrics_render(size_t *);

#endif
