/*
 * worker: one event-loop thread.  Each worker has its own libuv loop and its
 * own listening socket per listener (SO_REUSEPORT spreads new connections
 * over them), accepts by itself, and owns the connections it accepted.
 */
#ifndef MAILTLSD_WORKER_H
#define MAILTLSD_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "listener.h"
#include "tlsio.h"

struct conn;
struct metrics;

/* Bytes read from a socket in one go; also the per-worker scratch size. */
#define WORKER_READ_CHUNK	(256 * 1024)

struct worker_accept;

/* What conn.c may use of its worker. */
struct worker {
	uv_loop_t		 loop;
	int			 id;
	const struct config	*cfg;
	struct conn		*conns;		/* list of open connections */
	size_t			 nconns;
	int			 stopping;
	uint64_t		 next_id;
	/* Scratch buffers: safe to share because a read is fully handled
	 * before the next one starts. */
	char			 rbuf[WORKER_READ_CHUNK];
	char			 pbuf[WORKER_READ_CHUNK];
	struct proto_out	 out;		/* a handler's verdict text */
	struct metrics		*metrics;	/* shared; NULL: none */
	gnutls_datum_t		*bsess;		/* per listener: a backend TLS
						   session to resume */
	/* private to worker.c */
	struct worker_accept	*acc;
	size_t			 nacc;
	uv_async_t		 stop_async;
	uv_timer_t		 retry_timer;
	uv_timer_t		 shutdown_timer;
	uv_thread_t		 thread;
	int			 retry_armed;
	void			 (*done_cb)(void *);
	void			*done_arg;
};

/**
 * worker_new(id, cfg, ls, nls, fds, done_cb, arg):
 * Make worker ${id} serving the ${nls} listeners ${ls} on the listening
 * descriptors ${fds} (one per listener; taken over).  ${done_cb}(${arg}) is
 * called from the worker's thread when it has finished after worker_stop.
 * Return the worker, or NULL.
 */
struct worker *worker_new(int, const struct config *, struct listener *,
    size_t, const int *, void (*)(void *), void *);

/**
 * worker_start(w):
 * Run ${w}'s loop in a thread of its own.  Return 0 or -1.
 */
int worker_start(struct worker *);

/**
 * worker_stop(w):
 * Ask ${w} (from any thread) to stop accepting, let its connections finish
 * for up to shutdown_timeout, then end.
 */
void worker_stop(struct worker *);

/**
 * worker_join(w):
 * Wait for ${w}'s thread to end, then free ${w}.
 */
void worker_join(struct worker *);

/**
 * worker_session(w, l):
 * The backend TLS session last saved for listener ${l} on ${w}, or NULL.
 */
const gnutls_datum_t *worker_session(struct worker *, const struct listener *);

/**
 * worker_save_session(w, l, t):
 * Keep ${t}'s session data so that the next backend connection of ${l} on
 * ${w} can resume it.
 */
void worker_save_session(struct worker *, const struct listener *,
    const struct tlsio *);

/**
 * worker_conn_gone(w, l):
 * Called by conn.c when a connection of listener ${l} is freed.
 */
void worker_conn_gone(struct worker *, struct listener *);

#endif
