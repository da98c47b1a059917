/*
 * listener: what every worker shares about one [listener] section (its
 * configuration, TLS contexts, protocol handler and connection count), and
 * the making of listening sockets.
 */
#ifndef MAILTLSD_LISTENER_H
#define MAILTLSD_LISTENER_H

#include <stdatomic.h>
#include <stdio.h>

#include "backend.h"
#include "config.h"
#include "proto.h"
#include "tlsio.h"

struct listener {
	const struct config_listener	*conf;		/* borrowed */
	const struct proto_ops		*proto;		/* NULL: opaque bytes */
	int				 client_tls;	/* tls below is set up */
	struct tlsio_server_ctx		 tls;
	size_t				 index;		/* in the config */
	int				 backend_tls;	/* btls is set up */
	struct tlsio_client_ctx		 btls;
	atomic_uint			 nconns;	/* over all workers */
	struct backend_pool		*pool;		/* where sessions go */
};

/**
 * listener_setup(l, conf, cfgpath, ticket, errf):
 * Prepare ${l} for ${conf}: credentials, priority, ALPN, and the TLS
 * context toward the backend.  Problems are written
 * to ${errf} as "CFGPATH:LINE: message".  Return 0 or -1.
 */
int listener_setup(struct listener *, const struct config_listener *,
    const char *, struct ticket *, FILE *);

/**
 * listener_teardown(l):
 * Free what listener_setup made.
 */
void listener_teardown(struct listener *);

/**
 * listener_socket(addr, reuseport, err, errlen):
 * Make a non-blocking socket listening on ${addr}, with SO_REUSEPORT if
 * ${reuseport}.  Return the descriptor, or -1 with a message in ${err}.
 */
int listener_socket(const struct config_addr *, int, char *, size_t);

/**
 * listener_probe(addr, err, errlen):
 * Check that no other socket (another process's included) holds ${addr}.
 * Return 0, or -1 with a message in ${err}.
 */
int listener_probe(const struct config_addr *, char *, size_t);

#endif
