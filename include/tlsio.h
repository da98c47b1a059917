/*
 * tlsio: one GnuTLS session over one side of a connection, driven by the
 * caller's event loop.  Nothing blocks: ciphertext read from the socket is
 * handed in with tlsio_feed(), and ciphertext to send goes out through the
 * owner's push function, which must accept all of it (it queues).
 */
#ifndef MAILTLSD_TLSIO_H
#define MAILTLSD_TLSIO_H

#include <stddef.h>
#include <sys/types.h>

#include <gnutls/gnutls.h>

#include "certs.h"
#include "config.h"
#include "ticket.h"

/* Results of tlsio_handshake() and tlsio_recv(). */
#define TLSIO_AGAIN	(-1)	/* needs more ciphertext */
#define TLSIO_FAIL	(-2)	/* the session failed; see tlsio_strerror */

/* What every server session of one listener shares; immutable once made. */
struct tlsio_server_ctx {
	gnutls_priority_t	 prio;
	struct certs_slot	*slot;		/* current credentials */
	gnutls_datum_t		 alpn;		/* the listener's ALPN id */
	int			 alpn_strict;
	struct ticket		*ticket;	/* NULL: no session tickets */
	enum config_verify	 verify;
};

/* Toward a backend: the credentials hold the CA to verify against. */
struct tlsio_client_ctx {
	gnutls_priority_t	 prio;
	struct certs_slot	*slot;		/* current trust (reloadable) */
	const char		*name;		/* SNI and check */
	int			 verify;
};

/**
 * tlsio_priority_init(prio, str, errpos):
 * Make ${prio} from the priority string ${str} exactly as written (GnuTLS's
 * default is not appended: it would add back what ${str} leaves out).
 * Return 0, or a GnuTLS error with ${errpos} pointing into ${str}.
 */
int tlsio_priority_init(gnutls_priority_t *, const char *, const char **);

/**
 * tlsio_priority_log(prio, listener, side, str):
 * Log (info) what ${prio}, made from ${str}, allows on ${side} ("client" or
 * "backend") of ${listener}: protocol versions, ciphers, groups and
 * signature algorithms.
 */
void tlsio_priority_log(gnutls_priority_t, const char *, const char *,
    const char *);

/* The owner's push function: queue ${len} bytes of ciphertext; 0 or -1. */
typedef int tlsio_push_fn(void *, const void *, size_t);

struct tlsio;

/**
 * tlsio_server_new(ctx, push, arg):
 * Make a server session using ${ctx}'s current credentials (a reference is
 * held until tlsio_free).  ${push}(${arg}, ...) sends ciphertext.
 * Return the session, or NULL.
 */
struct tlsio *tlsio_server_new(const struct tlsio_server_ctx *, tlsio_push_fn *,
    void *);

/**
 * tlsio_client_new(ctx, resume, push, arg):
 * Make a client session toward a backend; ${resume} (may be NULL) is session
 * data from an earlier connection to try to resume.  Return it, or NULL.
 */
struct tlsio *tlsio_client_new(const struct tlsio_client_ctx *,
    const gnutls_datum_t *, tlsio_push_fn *, void *);

/**
 * tlsio_free(t):
 * Free ${t} and drop its reference to the credentials; NULL is a no-op.
 */
void tlsio_free(struct tlsio *);

/**
 * tlsio_feed(t, data, len):
 * Make ${len} bytes of ciphertext available to ${t}.  They are borrowed: the
 * caller must call tlsio_handshake() or tlsio_recv() until TLSIO_AGAIN before
 * ${data} goes away (anything still unread is then dropped).
 */
void tlsio_feed(struct tlsio *, const void *, size_t);

/**
 * tlsio_handshake(t):
 * Advance the handshake.  Return 0 when it is complete, TLSIO_AGAIN, or
 * TLSIO_FAIL (an alert has been sent where one applies).
 */
int tlsio_handshake(struct tlsio *);

/**
 * tlsio_recv(t, buf, len):
 * Decrypt into ${buf}.  Return the number of bytes (> 0), 0 when the peer
 * sent close_notify, TLSIO_AGAIN, or TLSIO_FAIL.
 */
ssize_t tlsio_recv(struct tlsio *, void *, size_t);

/**
 * tlsio_send(t, data, len):
 * Encrypt ${len} bytes and push them.  Return 0 or -1.
 */
int tlsio_send(struct tlsio *, const void *, size_t);

/**
 * tlsio_bye(t):
 * Send close_notify (once).
 */
void tlsio_bye(struct tlsio *);

/**
 * tlsio_strerror(t):
 * Why the session failed, for logs; the text is valid until the next call
 * in the same thread.
 */
const char *tlsio_strerror(const struct tlsio *);

/**
 * tlsio_fail_reason(t):
 * The class of the failure, for metrics: "alpn", "alert", "client_cert",
 * "verify" or "other".
 */
const char *tlsio_fail_reason(const struct tlsio *);

/* Facts about an established session, for logs and the PROXY header. */
const char *tlsio_sni(const struct tlsio *);	/* "" if none; valid until
							   the next call */
const char *tlsio_version(const struct tlsio *);
const char *tlsio_cipher(const struct tlsio *);
const char *tlsio_alpn(const struct tlsio *);		/* "" if none */
int tlsio_resumed(const struct tlsio *);

/**
 * tlsio_peer_subject(t, buf, len):
 * Write the verified peer certificate's subject DN into ${buf}: "" if and
 * only if there is none (judged by the peer's certificate list, never by the
 * DN).  A certificate with an empty subject is named by its first subject
 * alternative name ("DNS:name", "email:addr", ...) or its SHA-256.
 */
void tlsio_peer_subject(const struct tlsio *, char *, size_t);

/**
 * tlsio_peer_verified(t):
 * Return 1 if the peer presented a certificate and it was verified.
 */
int tlsio_peer_verified(const struct tlsio *);

/**
 * tlsio_peer_cn(t, buf, len):
 * Write the peer certificate's common name into ${buf} ("" if none).
 */
void tlsio_peer_cn(const struct tlsio *, char *, size_t);

/**
 * tlsio_session_data(t, out):
 * Export the session for resumption into ${out} (free with gnutls_free).
 * Return 0 or -1.
 */
int tlsio_session_data(const struct tlsio *, gnutls_datum_t *);

#endif
