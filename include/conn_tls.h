/*
 * conn_tls: the client's TLS handshake as a connection sees it: start
 * (after STARTTLS), progress, failure classes, the session's names.  Only
 * the conn modules use it.
 */
#ifndef MAILTLSD_CONN_TLS_H
#define MAILTLSD_CONN_TLS_H

#include <stddef.h>

struct conn;

/* Start the TLS handshake with the client once our STARTTLS reply is out. */
void	conn_client_start_tls(struct conn *);

/* Ciphertext ${data} was fed: advance the handshake; 0 when it is done. */
int	conn_client_handshake(struct conn *, const char *, size_t);

/* The client's handshake has begun and not finished. */
int	conn_client_in_handshake(const struct conn *);

/* The client went away (${why}) mid-handshake: log and count it. */
void	conn_client_hs_gone(struct conn *, const char *);

#endif
