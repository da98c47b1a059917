/*
 * conn_proxy: who the client is: a trusted peer's PROXY header in (and the
 * client limits checked once it is read), the PROXY header out to the
 * backend, the peer's printable address.  Only the conn modules use it.
 */
#ifndef MAILTLSD_CONN_PROXY_H
#define MAILTLSD_CONN_PROXY_H

#include <sys/socket.h>

#include <stddef.h>

#include "config.h"

struct conn;
struct side;

/* Whether ${peer} may send a PROXY header on listener ${lc}. */
int	conn_trusted_proxy(const struct config_listener *,
	    const struct sockaddr *);

/* Bytes from a trusted peer that must start with a PROXY header. */
void	conn_proxy_header_in(struct conn *, const char *, size_t);

/* Tell backend ${b} who the client is; 0 or -1. */
int	conn_proxy_header_out(struct conn *, struct side *);

#endif
