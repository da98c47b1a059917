/*
 * conn: one proxied connection: the client side, the backend side, the
 * relay between them, the protocol handler's plaintext phase, STARTTLS, the
 * timers, and the one way out (close).
 */
#ifndef MAILTLSD_CONN_H
#define MAILTLSD_CONN_H

#include <sys/socket.h>

#include "listener.h"
#include "worker.h"

struct conn;

/**
 * conn_start(w, l, fd, peer, peerlen):
 * Take over the accepted socket ${fd} from ${peer} and start serving it on
 * worker ${w}.  On failure the descriptor is closed.  Return 0 or -1.
 */
int conn_start(struct worker *, struct listener *, int,
    const struct sockaddr *, socklen_t);

/**
 * conn_abort(c, reason):
 * Close ${c} now (shutdown timeout): close_notify where TLS is up, no wait.
 */
void conn_abort(struct conn *, const char *);

/* The next connection on the worker's list (for walking it). */
struct conn *conn_next(const struct conn *);

#endif
