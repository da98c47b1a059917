/*
 * metrics: counters kept per worker and per listener, without locks on the
 * hot path (each worker writes only its own cells), summed when /metrics is
 * scraped.  The HTTP endpoint that serves them is metrics_http.h.
 */
#ifndef MAILTLSD_METRICS_H
#define MAILTLSD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

/* Per-listener counters (and the one gauge, METRIC_CONN_ACTIVE). */
enum metric {
	METRIC_CONN_TOTAL,		/* connections accepted */
	METRIC_CONN_ACTIVE,		/* gauge: +1 at accept, -1 at close */
	METRIC_HANDSHAKES,		/* client TLS handshakes completed */
	METRIC_HS_FAIL_TIMEOUT,		/* client handshake failures, by reason */
	METRIC_HS_FAIL_ALERT,
	METRIC_HS_FAIL_ALPN,
	METRIC_HS_FAIL_CLIENT_CERT,
	METRIC_HS_FAIL_OTHER,
	METRIC_STARTTLS,		/* STARTTLS upgrades completed */
	METRIC_BACKEND_CONNECT_ERR,	/* backend unreachable, refused, timeout */
	METRIC_BACKEND_TLS_ERR,		/* backend STARTTLS/TLS/verification */
	METRIC_BYTES_IN,		/* plaintext bytes client -> backend */
	METRIC_BYTES_OUT,		/* plaintext bytes backend -> client */
	METRIC_CLIMIT_MAX,		/* refused: max_per_client */
	METRIC_CLIMIT_RATE,		/* refused: rate_per_client */
	METRIC_NMETRICS
};

struct metrics;

/**
 * metrics_new(nworkers, nlisteners):
 * Make the counters, all zero.  Return them, or NULL.
 */
struct metrics *metrics_new(size_t, size_t);

/**
 * metrics_free(m):
 * Free ${m}; NULL is a no-op.
 */
void metrics_free(struct metrics *);

/**
 * metrics_add(m, worker, listener, metric, n):
 * Add ${n} (may be negative for the gauge) to a counter.  Only worker
 * ${worker}'s thread may call this for that worker; no lock is taken.
 * ${m} may be NULL (no metrics): a no-op.
 */
void metrics_add(struct metrics *, size_t, size_t, enum metric, int64_t);

/**
 * metrics_get(m, listener, metric):
 * The sum over all workers (for the endpoint and tests).
 */
int64_t metrics_get(const struct metrics *, size_t, enum metric);

/**
 * metrics_nworkers(m), metrics_nlisteners(m):
 * The sizes ${m} was made with.
 */
size_t metrics_nworkers(const struct metrics *);
size_t metrics_nlisteners(const struct metrics *);

#endif
