/*
 * conn_backend: the backend side of a session: connect with failover,
 * the backend's STARTTLS dialogue and TLS, and the protocol's reply to the
 * client when no backend is there.  Only the conn modules use it.
 */
#ifndef MAILTLSD_CONN_BACKEND_H
#define MAILTLSD_CONN_BACKEND_H

#include <stddef.h>

struct conn;
struct side;

/* Connect to the next backend candidate (or tell the client none is). */
void	conn_backend_connect(struct conn *);

/* Drop the backend connection that the session no longer uses. */
void	conn_backend_drop(struct conn *);

/* A backend attempt failed (${why}): try the next candidate, or give up. */
void	conn_backend_unavailable(struct conn *, const char *);

/* The backend is being set up: connect, its STARTTLS dialogue, its TLS. */
int	conn_backend_setting_up(const struct conn *);

/* The backend's handshake advanced; 0 when it is done and all is well. */
int	conn_backend_handshake(struct conn *, struct side *);

/* Bytes from the backend during our STARTTLS dialogue with it. */
void	conn_backend_dialogue(struct conn *, struct side *, const char *,
	    size_t);

#endif
