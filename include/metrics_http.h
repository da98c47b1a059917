/*
 * metrics_http: the /metrics endpoint ([global] metrics = HOST:PORT), a tiny
 * HTTP/1.0 and 1.1 server on the main thread's loop that answers
 * "GET /metrics" in the Prometheus text exposition format 0.0.4.
 *
 * It never blocks: requests are read into a fixed buffer, each connection
 * has a deadline, and the number of connections is capped (a new one
 * closes the oldest, so that slow clients cannot keep a scrape out);
 * anything odd is answered with an error status or closed.  Every response carries
 * "Connection: close".
 */
#ifndef MAILTLSD_METRICS_HTTP_H
#define MAILTLSD_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "metrics.h"

struct reloader;

/* Limits of the endpoint. */
#define METRICS_HTTP_MAX_REQUEST	(8 * 1024)	/* bytes of headers */
#define METRICS_HTTP_DEADLINE_MS	5000	/* accept to response sent */
#define METRICS_HTTP_LINGER_MS		1000	/* draining after it */
#define METRICS_HTTP_MAX_CONNS		16	/* then the oldest goes */

/* What the endpoint reports, all borrowed until metrics_http_stop. */
struct metrics_src {
	const struct metrics	 *metrics;	/* NULL: no per-listener
						   counters */
	const char * const	 *names;	/* listener names, by index */
	size_t			  nlisteners;
	const struct reloader	 *reloader;	/* NULL: no reload counts nor
						   certificates */
	const char		 *version;	/* for mailtlsd_build_info */
	const char		 *gnutls;
	const char		 *libuv;
	const uint64_t		 *config_reloads;	/* [0] ok, [1] error;
							   NULL: not shown */
};

struct metrics_http;

/**
 * metrics_http_start(loop, addr, src, err, errlen):
 * Listen on ${addr} from ${loop} (the main loop, which must be running or
 * about to run) and serve what ${src} describes; ${src} and what it points
 * to are borrowed until metrics_http_stop.  Return the endpoint, or NULL
 * with a message in ${err} (the address cannot be bound, say).
 */
struct metrics_http *metrics_http_start(uv_loop_t *,
    const struct config_addr *, const struct metrics_src *, char *, size_t);

/**
 * metrics_http_stop(h):
 * Stop listening, close every connection and free ${h}.  Its handles are
 * closed, so the memory goes once the loop has run their close callbacks;
 * the loop must run on.  After the call ${h}'s source is no longer used.
 * NULL is a no-op.
 */
void metrics_http_stop(struct metrics_http *);

/**
 * metrics_http_render(src, len):
 * The exposition text of ${src} as it is now: a NUL-terminated string of
 * ${*len} bytes owned by the caller (free it), or NULL.
 */
char *metrics_http_render(const struct metrics_src *, size_t *);

#endif
