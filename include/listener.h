/*
 * listener: what every worker shares about one [listener] section (its
 * configuration, TLS contexts, protocol handler and connection count), and
 * the making of listening sockets.
 *
 * The listeners made from one configuration form a set, which owns that
 * configuration and is reference counted: the main thread holds the current
 * set, each worker the set it accepts for, and each connection the set it
 * was accepted under.  A reload makes a new set; the old one, and with it
 * the settings its sessions started with, is freed when the last of them
 * ends (the same pattern as the credentials in certs.h).
 */
#ifndef MAILTLSD_LISTENER_H
#define MAILTLSD_LISTENER_H

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "climit.h"
#include "backend.h"
#include "config.h"
#include "proto.h"
#include "tlsio.h"

struct listener_set;

struct listener {
	struct listener_set		*set;		/* the set it is in */
	const struct config_listener	*conf;		/* the set's config */
	const struct proto_ops		*proto;		/* NULL: opaque bytes */
	int				 client_tls;	/* tls below is set up */
	struct tlsio_server_ctx		 tls;
	size_t				 index;		/* metrics slot: one
							   per listener name,
							   kept over reloads */
	int				 backend_tls;	/* btls is set up */
	struct tlsio_client_ctx		 btls;
	atomic_uint			*nconns;	/* over all workers and
							   all sets (points to
							   own_nconns unless
							   shared) */
	atomic_uint			 own_nconns;
	struct climit			*climit;	/* NULL: no limits
							   per client */
	struct backend_pool		*pool;		/* where sessions go */
};

struct listener_set {
	atomic_uint		 refs;
	uint64_t		 gen;		/* unique in the process */
	struct config		*cfg;		/* owned */
	struct listener		*ls;		/* cfg->nlisteners of them */
	size_t			 n;
};

/**
 * listener_set_new(cfg, ticket, errf):
 * Set up a listener for every section of ${cfg} (listener_setup: every
 * certificate, key and CA is read and checked).  Problems are written to
 * ${errf} as "FILE:LINE: message".  Return the set, holding one reference
 * for the caller and owning ${cfg}, or NULL (then ${cfg} is still the
 * caller's).  ${ticket} is borrowed for the set's lifetime.
 */
struct listener_set *listener_set_new(struct config *, struct ticket *,
    FILE *);

/**
 * listener_set_ref(s):
 * Take one more reference to ${s} (any thread); return ${s}.
 */
struct listener_set *listener_set_ref(struct listener_set *);

/**
 * listener_set_unref(s):
 * Drop a reference (any thread); the last one tears every listener down and
 * frees the configuration.  NULL is a no-op.
 */
void listener_set_unref(struct listener_set *);

/**
 * listener_find(s, a):
 * The listener of ${s} listening on ${a}, or NULL.
 */
struct listener *listener_find(struct listener_set *,
    const struct config_addr *);

/**
 * listener_addr_equal(a, b):
 * Return 1 if ${a} and ${b} are the same socket address, else 0.
 */
int listener_addr_equal(const struct config_addr *,
    const struct config_addr *);

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
