/*
 * worker: one event-loop thread.  Each worker has its own libuv loop and its
 * own listening descriptors (SO_REUSEPORT sockets of its own, or duplicates
 * of a socket it shares with the other workers), accepts by itself, and owns
 * the connections it accepted: their list and their counts live here, and
 * conn.c reaches them only through the calls below.
 *
 * The listeners a worker serves can be replaced while it runs (a
 * configuration reload): worker_rebind() hands it the new set, and the
 * connections already open keep the listener they were accepted on, which
 * stays alive (reference counted, see listener.h) until the last of them
 * ends.
 */
#ifndef MAILTLSD_WORKER_H
#define MAILTLSD_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "listener.h"
#include "proto.h"
#include "tlsio.h"

struct conn;
struct metrics;
struct worker;

/* Bytes read from a socket in one go; also the per-worker scratch size. */
#define WORKER_READ_CHUNK	(256 * 1024)

/*
 * A connection's place on its worker's list, kept inside struct conn so
 * that adding and removing cost no allocation.  Private to worker.c.
 */
struct worker_link {
	struct worker_link	*prev, *next;
	struct conn		*conn;
	struct listener		*l;
};

/* One listening descriptor and the listener it accepts for. */
struct worker_bind {
	struct listener	*l;
	int		 fd;
};

/**
 * worker_new(id, set, binds, nbinds, metrics, done_cb, arg):
 * Make worker ${id} serving the listeners of ${set} (a reference is taken)
 * on the ${nbinds} descriptors ${binds} (taken over).  ${metrics} (may be
 * NULL) is shared and outlives the worker.  ${done_cb}(${arg}) is called
 * from the worker's thread when it has finished after worker_stop.  Return
 * the worker, or NULL.
 */
struct worker *worker_new(int, struct listener_set *,
    const struct worker_bind *, size_t, struct metrics *, void (*)(void *),
    void *);

/**
 * worker_start(w):
 * Run ${w}'s loop in a thread of its own.  Return 0 or -1.
 */
int worker_start(struct worker *);

/**
 * worker_rebind(w, set, binds, nbinds):
 * Ask ${w} (from any thread) to serve the listeners of ${set} (a reference
 * is taken) on ${binds}: a descriptor ${w} already has keeps its watch and
 * now accepts for the listener given with it, a new one is taken over, and
 * one that is not listed any more is closed.  Connections already open are
 * left alone.  Return 0, or -1 (out of memory: nothing changes, and the
 * new descriptors stay the caller's).
 */
int worker_rebind(struct worker *, struct listener_set *,
    const struct worker_bind *, size_t);

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

/*
 * What conn.c uses of its worker, from the worker's thread only.
 */

/* The worker's loop, its number, and the shared counters (may be NULL). */
uv_loop_t *worker_loop(struct worker *);
int worker_id(const struct worker *);
struct metrics *worker_metrics(const struct worker *);

/*
 * Scratch buffers of WORKER_READ_CHUNK bytes, and the handler's verdict
 * text: safe to share because a read is fully handled before the next one
 * starts.
 */
char *worker_rbuf(struct worker *);
char *worker_pbuf(struct worker *);
struct proto_out *worker_out(struct worker *);

/**
 * worker_conn_add(w, l, lk, c):
 * Put the new connection ${c} of listener ${l} on ${w}'s list through its
 * link ${lk}, count it, and take a reference to ${l}'s set for it.  Return
 * the connection's id (unique in the process).
 */
uint64_t worker_conn_add(struct worker *, struct listener *,
    struct worker_link *, struct conn *);

/**
 * worker_conn_remove(w, lk):
 * Take the connection linked by ${lk} off ${w}'s list (it is being freed),
 * and drop what worker_conn_add took.  Once a stopping worker has no
 * connection left, it ends.
 */
void worker_conn_remove(struct worker *, struct worker_link *);

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

#endif
