/*
 * session: the plaintext dialogue of one mail connection, without I/O.
 *
 * The engine owns what lies between the bytes and the protocol handler: the
 * line buffers of both sides, the handler's state, the held client line and
 * its re-offer, the STARTTLS boundary (nothing after the STARTTLS line is
 * ever passed on), the opaque runs (literals, BDAT chunks, lines longer than
 * the buffer once the client is on TLS) and passthrough.  It is driven by
 * calls (bytes from the client, bytes from the backend, the client's TLS is
 * up) and answers each with a list of actions for the caller to carry out
 * afterwards, in order.  It never calls back into its caller, so nothing
 * changes under the caller's feet while it runs.
 */
#ifndef MAILTLSD_SESSION_H
#define MAILTLSD_SESSION_H

#include <stddef.h>

#include "config.h"
#include "proto.h"

enum session_act {
	SESSION_TO_CLIENT,	/* write data to the client */
	SESSION_TO_BACKEND,	/* write data to the backend (it may not be
				   ready yet: the caller queues) */
	SESSION_START_TLS,	/* STARTTLS was answered (the data before it):
				   drop the backend connection, discard what
				   the client sends until its handshake, and
				   start TLS once the client's queue is out */
	SESSION_CLOSE,		/* close the connection: reason, detail */
};

struct session_action {
	enum session_act	 kind;
	const char		*data;	/* TO_*: valid until the next call */
	size_t			 len;
	const char		*reason;	/* CLOSE: for the close log */
	const char		*detail;	/* CLOSE: "" or more to say */
};

struct session_conf {
	const struct proto_ops	*ops;
	struct proto_opts	 opts;
	enum config_proto	 proto;		/* for the unavailable reply */
	struct proto_out	*out;		/* scratch for the handler's
						   verdicts (may be shared by
						   sessions of one thread) */
};

struct session;

/**
 * session_new(conf):
 * Make the engine for one connection; ${conf} is copied.  Return it, or NULL.
 */
struct session *session_new(const struct session_conf *);

/**
 * session_free(s):
 * Free ${s}; NULL is a no-op.
 */
void session_free(struct session *);

/**
 * session_client(s, data, len), session_backend(s, data, len):
 * Plaintext bytes from the client (the backend).  Return the number of
 * actions now waiting in session_actions().  ${data} is borrowed: actions
 * may point into it, so it must stay valid until they are carried out.
 */
size_t session_client(struct session *, const char *, size_t);
size_t session_backend(struct session *, const char *, size_t);

/**
 * session_client_tls(s):
 * The client's TLS handshake after STARTTLS finished (a fresh backend will
 * be opened): forget everything from before.  Return the number of actions.
 */
size_t session_client_tls(struct session *);

/**
 * session_actions(s, n):
 * The actions of the last call, *${n} of them, in the order to carry them
 * out.
 */
const struct session_action *session_actions(const struct session *,
    size_t *);

/**
 * session_client_readable(s):
 * 1 if more client bytes may be taken now, 0 while a held client line and
 * what followed it fill the buffer (the caller stops reading the client).
 */
int session_client_readable(const struct session *);

/**
 * session_parsing(s):
 * 0 once the session is passed through untouched (or closed).
 */
int session_parsing(const struct session *);

/**
 * session_footprint(s):
 * The bytes ${s} holds on the heap (for the fuzzers' memory bound).
 */
size_t session_footprint(const struct session *);

/**
 * session_made(s, p):
 * 1 if the action bytes at ${p} were written by the engine or the handler
 * (a reply, a rewrite) rather than passed on from a side (for the fuzzers'
 * order checks).
 */
int session_made(const struct session *, const char *);

/**
 * session_proto_state(s):
 * The handler's state (for its unit tests).
 */
void *session_proto_state(const struct session *);

/**
 * session_state(s):
 * The handler's phase, for logs.
 */
const char *session_state(const struct session *);

#endif
