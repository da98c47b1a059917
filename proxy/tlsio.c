#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "log.h"
#include "tlsio.h"

struct tlsio {
	gnutls_session_t	 s;
	struct certs		*certs;		/* ref held until freed */
	tlsio_push_fn		*push;
	void			*arg;
	const unsigned char	*in;		/* fed ciphertext, borrowed */
	size_t			 inlen;
	int			 err;		/* last GnuTLS error */
	unsigned int		 vstatus;	/* optional: why the client's
						   certificate failed */
	enum config_verify	 verify;	/* server: client certificates */
	int			 bye_sent;
	int			 push_failed;	/* the owner refused bytes */
};

/*
 * Texts handed out by tlsio_strerror() and tlsio_sni(): per thread rather
 * than per session, since every open session would carry them otherwise
 * and callers copy them at once.
 */
static __thread char msgbuf[256];
static __thread char snibuf[256];

static ssize_t
pull_fn(gnutls_transport_ptr_t p, void *buf, size_t len)
{
	struct tlsio *t = p;

	if (t->inlen == 0) {
		gnutls_transport_set_errno(t->s, EAGAIN);
		return (-1);
	}
	if (len > t->inlen)
		len = t->inlen;
	memcpy(buf, t->in, len);
	t->in += len;
	t->inlen -= len;
	return ((ssize_t)len);
}

/*
 * Ciphertext that one call into a session produces (a handshake flight, the
 * records of one tlsio_send) is gathered here and handed to the owner in a
 * single push at the end of the call: one write(2), one TCP segment train
 * and one wake-up of the peer, rather than one per record.  Per thread: a
 * session is only driven by its worker's thread, and every call flushes
 * before it returns.  Allocated on first use, freed when the thread ends.
 */
#define STAGE_SIZE	(256 * 1024)

static __thread unsigned char *stage;
static __thread size_t stagelen;
static __thread struct tlsio *stage_owner;
static pthread_key_t stage_key;
static pthread_once_t stage_once = PTHREAD_ONCE_INIT;

static void
stage_key_make(void)
{

	(void)pthread_key_create(&stage_key, free);
}

static int
stage_alloc(void)
{

	(void)pthread_once(&stage_once, stage_key_make);
	if ((stage = malloc(STAGE_SIZE)) == NULL)
		return (-1);
	(void)pthread_setspecific(stage_key, stage);
	return (0);
}

/* Hand what ${t} has staged to its owner.  Return 0 or -1. */
static int
stage_flush(struct tlsio *t)
{
	size_t n = stagelen;

	if (n == 0 || stage_owner != t)
		return (t->push_failed ? -1 : 0);
	stagelen = 0;
	if (t->push(t->arg, stage, n) != 0) {
		t->push_failed = 1;
		return (-1);
	}
	return (0);
}

static ssize_t
vec_push_fn(gnutls_transport_ptr_t p, const giovec_t *iov, int iovcnt)
{
	struct tlsio *t = p;
	size_t total = 0;
	int i;

	if (t->push_failed) {
		gnutls_transport_set_errno(t->s, EPIPE);
		return (-1);
	}
	for (i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	if (stage == NULL && stage_alloc() < 0)
		goto direct;
	/* Every call flushes before it returns, so this is only a guard. */
	if (stage_owner != t && stagelen > 0)
		(void)stage_flush(stage_owner);
	stage_owner = t;
	if (stagelen + total > STAGE_SIZE && stage_flush(t) != 0)
		goto fail;
	if (total > STAGE_SIZE)
		goto direct;
	for (i = 0; i < iovcnt; i++) {
		memcpy(stage + stagelen, iov[i].iov_base, iov[i].iov_len);
		stagelen += iov[i].iov_len;
	}
	return ((ssize_t)total);

direct:
	for (i = 0; i < iovcnt; i++)
		if (t->push(t->arg, iov[i].iov_base, iov[i].iov_len) != 0)
			goto fail;
	return ((ssize_t)total);
fail:
	t->push_failed = 1;
	gnutls_transport_set_errno(t->s, EPIPE);
	return (-1);
}

static ssize_t
push_fn(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
	giovec_t iov;

	iov.iov_base = (void *)(uintptr_t)buf;
	iov.iov_len = len;
	return (vec_push_fn(p, &iov, 1));
}

static int
is_ip_literal(const char *name)
{
	unsigned char buf[16];

	return (inet_pton(AF_INET, name, buf) == 1 ||
	    inet_pton(AF_INET6, name, buf) == 1);
}

static struct tlsio *
tlsio_new(unsigned int flags, tlsio_push_fn *push, void *arg)
{
	struct tlsio *t;

	if ((t = calloc(1, sizeof(*t))) == NULL)
		return (NULL);
	/* No GNUTLS_ENABLE_EARLY_DATA: 0-RTT data could be replayed. */
	if (gnutls_init(&t->s, flags | GNUTLS_NONBLOCK |
	    GNUTLS_NO_SIGNAL) < 0) {
		free(t);
		return (NULL);
	}
	t->push = push;
	t->arg = arg;
	gnutls_transport_set_ptr(t->s, t);
	gnutls_transport_set_pull_function(t->s, pull_fn);
	gnutls_transport_set_push_function(t->s, push_fn);
	gnutls_transport_set_vec_push_function(t->s, vec_push_fn);
	return (t);
}

/*
 * A client certificate must be meant for TLS client authentication: one
 * with an extended key usage that leaves it out (serverAuth only, say) is
 * refused, as RFC 5280 4.2.1.12 asks.  One without the extension may be
 * used for anything.
 */
static gnutls_typed_vdata_st client_purpose = {
	GNUTLS_DT_KEY_PURPOSE_OID,
	(unsigned char *)(uintptr_t)GNUTLS_KP_TLS_WWW_CLIENT, 0
};

/* client_verify = optional: no certificate is fine, a bad one is not. */
static int
verify_if_presented(gnutls_session_t s)
{
	struct tlsio *t = gnutls_transport_get_ptr(s);
	unsigned int n = 0, status = 0;

	if (gnutls_certificate_get_peers(s, &n) == NULL || n == 0)
		return (0);
	if (gnutls_certificate_verify_peers(s, &client_purpose, 1,
	    &status) < 0)
		status = GNUTLS_CERT_INVALID;
	if (status != 0) {
		t->vstatus = status;
		return (GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR);
	}
	return (0);
}

/**
 * tlsio_server_new(ctx, push, arg):
 * Make a server session using ${ctx}'s current credentials (a reference is
 * held until tlsio_free).  ${push}(${arg}, ...) sends ciphertext.
 * Return the session, or NULL.
 */
struct tlsio *
tlsio_server_new(const struct tlsio_server_ctx *ctx, tlsio_push_fn *push,
    void *arg)
{
	struct tlsio *t;
	unsigned int aflags;

	if ((t = tlsio_new(GNUTLS_SERVER, push, arg)) == NULL)
		goto err0;
	t->certs = certs_slot_get(ctx->slot);
	if (gnutls_priority_set(t->s, ctx->prio) < 0 ||
	    gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE,
	    certs_cred(t->certs)) < 0)
		goto err1;
	if (ctx->alpn.size > 0) {
		aflags = GNUTLS_ALPN_SERVER_PRECEDENCE;
		if (ctx->alpn_strict)
			aflags |= GNUTLS_ALPN_MANDATORY;
		if (gnutls_alpn_set_protocols(t->s, &ctx->alpn, 1, aflags) < 0)
			goto err1;
	}
	/*
	 * The ticket key is scoped to the listener's client-certificate
	 * policy as loaded with these credentials: a session resumes only
	 * where a full handshake would have admitted it.  There is no
	 * server-side session cache (no gnutls_db_*): tickets are the only
	 * way to resume.
	 */
	if (ctx->ticket != NULL && ticket_enable(ctx->ticket, t->s,
	    certs_policy(t->certs), CERTS_POLICY_LEN) < 0)
		goto err1;
	t->verify = ctx->verify;
	if (ctx->verify == CONFIG_VERIFY_REQUIRED) {
		gnutls_certificate_server_set_request(t->s,
		    GNUTLS_CERT_REQUIRE);
		gnutls_session_set_verify_cert2(t->s, &client_purpose, 1, 0);
	} else if (ctx->verify == CONFIG_VERIFY_OPTIONAL) {
		/* set_verify_cert would also fail a client that sends none. */
		gnutls_certificate_server_set_request(t->s,
		    GNUTLS_CERT_REQUEST);
		gnutls_session_set_verify_function(t->s, verify_if_presented);
	}
	return (t);

err1:
	tlsio_free(t);
err0:
	return (NULL);
}

/**
 * tlsio_client_new(ctx, resume, push, arg):
 * Make a client session toward a backend; ${resume} (may be NULL) is session
 * data from an earlier connection to try to resume.  Return it, or NULL.
 */
struct tlsio *
tlsio_client_new(const struct tlsio_client_ctx *ctx,
    const gnutls_datum_t *resume, tlsio_push_fn *push, void *arg)
{
	struct tlsio *t;

	if ((t = tlsio_new(GNUTLS_CLIENT, push, arg)) == NULL)
		goto err0;
	t->certs = certs_slot_get(ctx->slot);
	if (gnutls_priority_set(t->s, ctx->prio) < 0 ||
	    gnutls_credentials_set(t->s, GNUTLS_CRD_CERTIFICATE,
	    certs_cred(t->certs)) < 0)
		goto err1;
	/* RFC 6066 3: no IP literals in SNI; the name check still applies. */
	if (ctx->name != NULL && ctx->name[0] != '\0' &&
	    !is_ip_literal(ctx->name) && gnutls_server_name_set(t->s,
	    GNUTLS_NAME_DNS, ctx->name, strlen(ctx->name)) < 0)
		goto err1;
	if (ctx->verify)
		gnutls_session_set_verify_cert(t->s, ctx->name, 0);
	if (resume != NULL && resume->size > 0)
		(void)gnutls_session_set_data(t->s, resume->data, resume->size);
	return (t);

err1:
	tlsio_free(t);
err0:
	return (NULL);
}

/**
 * tlsio_free(t):
 * Free ${t} and drop its reference to the credentials; NULL is a no-op.
 */
void
tlsio_free(struct tlsio *t)
{

	if (t == NULL)
		return;
	if (stage_owner == t) {
		stagelen = 0;
		stage_owner = NULL;
	}
	gnutls_deinit(t->s);
	/* Only now may the credentials go: the session pointed at them. */
	certs_unref(t->certs);
	free(t);
}

/**
 * tlsio_feed(t, data, len):
 * Make ${len} bytes of ciphertext available to ${t}.  They are borrowed: the
 * caller must call tlsio_handshake() or tlsio_recv() until TLSIO_AGAIN before
 * ${data} goes away (anything still unread is then dropped).
 */
void
tlsio_feed(struct tlsio *t, const void *data, size_t len)
{

	t->in = data;
	t->inlen = len;
}

/**
 * tlsio_handshake(t):
 * Advance the handshake.  Return 0 when it is complete, TLSIO_AGAIN, or
 * TLSIO_FAIL (an alert has been sent where one applies).
 */
int
tlsio_handshake(struct tlsio *t)
{
	int rc;

	do
		rc = gnutls_handshake(t->s);
	while (rc < 0 && !gnutls_error_is_fatal(rc) &&
	    (rc != GNUTLS_E_AGAIN || t->inlen > 0));
	if (rc != GNUTLS_E_SUCCESS && rc != GNUTLS_E_AGAIN) {
		t->err = rc;
		/* A proper alert (protocol_version, handshake_failure, ...)
		 * tells the client why, rather than a bare reset. */
		if (rc != GNUTLS_E_PUSH_ERROR &&
		    rc != GNUTLS_E_PREMATURE_TERMINATION &&
		    rc != GNUTLS_E_WARNING_ALERT_RECEIVED &&
		    rc != GNUTLS_E_FATAL_ALERT_RECEIVED)
			(void)gnutls_alert_send_appropriate(t->s, rc);
		(void)stage_flush(t);
		return (TLSIO_FAIL);
	}
	/* The whole flight goes out in one write. */
	if (stage_flush(t) < 0) {
		t->err = GNUTLS_E_PUSH_ERROR;
		return (TLSIO_FAIL);
	}
	return (rc == GNUTLS_E_SUCCESS ? 0 : TLSIO_AGAIN);
}

static ssize_t
recv_records(struct tlsio *t, void *buf, size_t len)
{
	ssize_t n;

	for (;;) {
		n = gnutls_record_recv(t->s, buf, len);
		if (n >= 0)
			return (n);
		/*
		 * GnuTLS says "again" also after a post-handshake message
		 * (a TLS 1.3 NewSessionTicket) with fed bytes still unread:
		 * only an empty feed means there is nothing more.
		 */
		if (n == GNUTLS_E_AGAIN && t->inlen == 0)
			return (TLSIO_AGAIN);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n == GNUTLS_E_REHANDSHAKE) {
			/* Client-initiated renegotiation is refused. */
			(void)gnutls_alert_send(t->s, GNUTLS_AL_WARNING,
			    GNUTLS_A_NO_RENEGOTIATION);
			continue;
		}
		if (!gnutls_error_is_fatal((int)n))
			continue;
		t->err = (int)n;
		return (TLSIO_FAIL);
	}
}

/**
 * tlsio_recv(t, buf, len):
 * Decrypt into ${buf}.  Return the number of bytes (> 0), 0 when the peer
 * sent close_notify, TLSIO_AGAIN, or TLSIO_FAIL.
 */
ssize_t
tlsio_recv(struct tlsio *t, void *buf, size_t len)
{
	ssize_t n;

	n = recv_records(t, buf, len);
	/* An alert or a key update answered meanwhile goes out now; a write
	 * that fails marks the owner's side, which the owner checks. */
	(void)stage_flush(t);
	return (n);
}

/**
 * tlsio_send(t, data, len):
 * Encrypt ${len} bytes and push them.  Return 0 or -1.
 */
int
tlsio_send(struct tlsio *t, const void *data, size_t len)
{
	const unsigned char *p = data;
	ssize_t n;

	while (len > 0) {
		n = gnutls_record_send(t->s, p, len);
		if (n == GNUTLS_E_INTERRUPTED || n == GNUTLS_E_AGAIN)
			continue;
		if (n < 0) {
			t->err = (int)n;
			(void)stage_flush(t);
			return (-1);
		}
		p += n;
		len -= (size_t)n;
	}
	/* All the records of this call go out in one write. */
	if (stage_flush(t) < 0) {
		t->err = GNUTLS_E_PUSH_ERROR;
		return (-1);
	}
	return (0);
}

/**
 * tlsio_bye(t):
 * Send close_notify (once).
 */
void
tlsio_bye(struct tlsio *t)
{

	if (t->bye_sent)
		return;
	t->bye_sent = 1;
	(void)gnutls_bye(t->s, GNUTLS_SHUT_WR);
	(void)stage_flush(t);
}

/**
 * tlsio_strerror(t):
 * Why the session failed, for logs; the text is valid until the next call
 * in the same thread.
 */
const char *
tlsio_strerror(const struct tlsio *t)
{
	gnutls_datum_t why;
	unsigned int status;

	if (t->err == GNUTLS_E_FATAL_ALERT_RECEIVED ||
	    t->err == GNUTLS_E_WARNING_ALERT_RECEIVED) {
		snprintf(msgbuf, sizeof(msgbuf), "alert received: %s",
		    gnutls_alert_get_name(gnutls_alert_get(t->s)));
		return (msgbuf);
	}
	if (t->err == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
		status = t->vstatus != 0 ? t->vstatus :
		    gnutls_session_get_verify_cert_status(t->s);
		if (gnutls_certificate_verification_status_print(status,
		    GNUTLS_CRT_X509, &why, 0) >= 0) {
			snprintf(msgbuf, sizeof(msgbuf), "certificate "
			    "verification failed: %.*s", (int)why.size,
			    (const char *)why.data);
			gnutls_free(why.data);
			return (msgbuf);
		}
	}
	return (t->err != 0 ? gnutls_strerror(t->err) : "");
}

/**
 * tlsio_fail_reason(t):
 * The class of the failure, for metrics: "alpn", "alert", "client_cert",
 * "verify" or "other".
 */
const char *
tlsio_fail_reason(const struct tlsio *t)
{

	switch (t->err) {
	case GNUTLS_E_NO_APPLICATION_PROTOCOL:
		return ("alpn");
	case GNUTLS_E_FATAL_ALERT_RECEIVED:
	case GNUTLS_E_WARNING_ALERT_RECEIVED:
		return ("alert");
	case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
	case GNUTLS_E_CERTIFICATE_ERROR:
	case GNUTLS_E_NO_CERTIFICATE_FOUND:
		return ("client_cert");
	default:
		return ("other");
	}
}

const char *
tlsio_sni(const struct tlsio *t)
{
	size_t len = sizeof(snibuf) - 1;
	unsigned int type;

	if (gnutls_server_name_get(t->s, snibuf, &len, &type, 0) < 0 ||
	    type != GNUTLS_NAME_DNS)
		snibuf[0] = '\0';
	return (snibuf);
}

const char *
tlsio_version(const struct tlsio *t)
{
	const char *v;

	v = gnutls_protocol_get_name(gnutls_protocol_get_version(t->s));
	return (v != NULL ? v : "");
}

const char *
tlsio_cipher(const struct tlsio *t)
{
	const char *c;

	c = gnutls_cipher_get_name(gnutls_cipher_get(t->s));
	return (c != NULL ? c : "");
}

const char *
tlsio_alpn(const struct tlsio *t)
{
	static __thread char buf[32];
	gnutls_datum_t p;

	if (gnutls_alpn_get_selected_protocol(t->s, &p) < 0 ||
	    p.size >= sizeof(buf))
		return ("");
	memcpy(buf, p.data, p.size);
	buf[p.size] = '\0';
	return (buf);
}

int
tlsio_resumed(const struct tlsio *t)
{

	return (gnutls_session_is_resumed(t->s) != 0);
}

/* The peer's leaf certificate if it presented one that was verified. */
static int
verified_leaf(const struct tlsio *t, gnutls_x509_crt_t *crt)
{
	const gnutls_datum_t *certs;
	unsigned int n = 0;

	/*
	 * Only client_verify = optional/required ask for one, and either
	 * fails the handshake over a certificate that does not verify; a
	 * resumed session carries the list from the handshake that issued
	 * its ticket, under the same policy (ticket_enable).
	 */
	if (t->verify == CONFIG_VERIFY_NONE)
		return (-1);
	if ((certs = gnutls_certificate_get_peers(t->s, &n)) == NULL || n == 0)
		return (-1);
	if (gnutls_x509_crt_init(crt) < 0)
		return (-1);
	if (gnutls_x509_crt_import(*crt, &certs[0], GNUTLS_X509_FMT_DER) < 0) {
		gnutls_x509_crt_deinit(*crt);
		return (-1);
	}
	return (0);
}

/*
 * A certificate with an empty subject (its names are only in the subject
 * alternative names) is still a certificate: name it by its first SAN,
 * "DNS:name", "email:addr", "URI:uri" or "IP:addr", which cannot be taken
 * for a DN (those are "attr=value"), or failing that by its SHA-256.
 */
static void
describe_nameless(gnutls_x509_crt_t crt, char *buf, size_t len)
{
	unsigned char san[256], fp[32];
	char ip[INET6_ADDRSTRLEN];
	size_t sz = sizeof(san) - 1, fpsz = sizeof(fp), i, o;
	const char *kind = NULL;
	int type;

	type = gnutls_x509_crt_get_subject_alt_name(crt, 0, san, &sz, NULL);
	switch (type) {
	case GNUTLS_SAN_DNSNAME:
		kind = "DNS";
		break;
	case GNUTLS_SAN_RFC822NAME:
		kind = "email";
		break;
	case GNUTLS_SAN_URI:
		kind = "URI";
		break;
	case GNUTLS_SAN_IPADDRESS:
		if (inet_ntop(sz == 4 ? AF_INET : AF_INET6, san, ip,
		    sizeof(ip)) != NULL && (sz == 4 || sz == 16)) {
			snprintf(buf, len, "IP:%s", ip);
			return;
		}
		break;
	default:
		break;
	}
	if (kind != NULL && memchr(san, '\0', sz) == NULL) {
		san[sz] = '\0';
		snprintf(buf, len, "%s:%s", kind, (const char *)san);
		return;
	}
	if (gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, fp,
	    &fpsz) < 0) {
		snprintf(buf, len, "(no subject)");
		return;
	}
	o = (size_t)snprintf(buf, len, "sha256:");
	for (i = 0; i < fpsz && o + 3 <= len; i++, o += 2)
		snprintf(buf + o, len - o, "%02x", fp[i]);
}

/**
 * tlsio_peer_subject(t, buf, len):
 * Write the verified peer certificate's subject DN into ${buf}: "" if and
 * only if there is none (judged by the peer's certificate list, never by the
 * DN).  A certificate with an empty subject is named by its first subject
 * alternative name ("DNS:name", "email:addr", ...) or its SHA-256.
 */
void
tlsio_peer_subject(const struct tlsio *t, char *buf, size_t len)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t dn;

	buf[0] = '\0';
	if (len < 2 || verified_leaf(t, &crt) < 0)
		return;
	if (gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0) {
		snprintf(buf, len, "%.*s", (int)dn.size, (const char *)dn.data);
		gnutls_free(dn.data);
	}
	if (buf[0] == '\0')
		describe_nameless(crt, buf, len);
	if (buf[0] == '\0')
		snprintf(buf, len, "?");
	gnutls_x509_crt_deinit(crt);
}

/**
 * tlsio_peer_verified(t):
 * Return 1 if the peer presented a certificate and it was verified.
 */
int
tlsio_peer_verified(const struct tlsio *t)
{
	gnutls_x509_crt_t crt;

	if (verified_leaf(t, &crt) < 0)
		return (0);
	gnutls_x509_crt_deinit(crt);
	return (1);
}

/**
 * tlsio_peer_cn(t, buf, len):
 * Write the verified peer certificate's common name into ${buf} ("" if none).
 */
void
tlsio_peer_cn(const struct tlsio *t, char *buf, size_t len)
{
	gnutls_x509_crt_t crt;
	size_t sz = len;

	buf[0] = '\0';
	if (verified_leaf(t, &crt) < 0)
		return;
	if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
	    0, buf, &sz) < 0)
		buf[0] = '\0';
	gnutls_x509_crt_deinit(crt);
}

/**
 * tlsio_session_data(t, out):
 * Export the session for resumption into ${out} (free with gnutls_free).
 * Return 0 or -1.
 */
int
tlsio_session_data(const struct tlsio *t, gnutls_datum_t *out)
{

	/*
	 * Under TLS 1.3 only a ticket makes a session resumable, and without
	 * one gnutls_session_get_data2 would try to read it from the peer,
	 * eating application data: ask only once a ticket has come.
	 */
	if (gnutls_protocol_get_version(t->s) == GNUTLS_TLS1_3 &&
	    !(gnutls_session_get_flags(t->s) & GNUTLS_SFLAGS_SESSION_TICKET))
		return (-1);
	return (gnutls_session_get_data2(t->s, out) < 0 ? -1 : 0);
}

/**
 * tlsio_priority_init(prio, str, errpos):
 * Make ${prio} from the priority string ${str} exactly as written (GnuTLS's
 * default is not appended: it would add back what ${str} leaves out).
 * Return 0, or a GnuTLS error with ${errpos} pointing into ${str}.
 */
int
tlsio_priority_init(gnutls_priority_t *prio, const char *str,
    const char **errpos)
{

	/* No GNUTLS_PRIORITY_INIT_DEF_APPEND: "NORMAL:" + str would allow
	 * SHA-1 signatures and ciphers the operator did not ask for. */
	return (gnutls_priority_init2(prio, str, errpos, 0));
}

/* Append the names of ${n} ids to ${f}, comma-separated. */
static void
name_list(FILE *f, const unsigned int *ids, int n,
    const char *(*name)(unsigned int))
{
	const char *s;
	int i, first = 1;

	for (i = 0; i < n; i++) {
		if ((s = name(ids[i])) == NULL)
			continue;
		fprintf(f, "%s%s", first ? "" : ",", s);
		first = 0;
	}
}

static const char *
version_name(unsigned int v)
{

	return (gnutls_protocol_get_name((gnutls_protocol_t)v));
}

static const char *
cipher_name(unsigned int v)
{

	return (gnutls_cipher_get_name((gnutls_cipher_algorithm_t)v));
}

static const char *
group_name(unsigned int v)
{

	return (gnutls_group_get_name((gnutls_group_t)v));
}

static const char *
sign_name(unsigned int v)
{

	return (gnutls_sign_get_name((gnutls_sign_algorithm_t)v));
}

/**
 * tlsio_priority_log(prio, listener, side, str):
 * Log (info) what ${prio}, made from ${str}, allows on ${side} ("client" or
 * "backend") of ${listener}: protocol versions, ciphers, groups and
 * signature algorithms.
 */
void
tlsio_priority_log(gnutls_priority_t prio, const char *listener,
    const char *side, const char *str)
{
	static const char *const what[] = {
		"versions", "ciphers", "groups", "signatures" };
	const char *(*const namef[])(unsigned int) = {
		version_name, cipher_name, group_name, sign_name };
	struct log_field f[8];
	char *lists[4] = { NULL, NULL, NULL, NULL };
	const unsigned int *ids;
	size_t len, i;
	FILE *mf;
	int n;

	if (!log_enabled(CONFIG_LOG_INFO))
		return;
	for (i = 0; i < 4; i++) {
		if ((mf = open_memstream(&lists[i], &len)) == NULL)
			goto out;
		switch (i) {
		case 0:
			n = gnutls_priority_protocol_list(prio, &ids);
			break;
		case 1:
			n = gnutls_priority_cipher_list(prio, &ids);
			break;
		case 2:
			n = gnutls_priority_group_list(prio, &ids);
			break;
		default:
			n = gnutls_priority_sign_list(prio, &ids);
			break;
		}
		if (n > 0)
			name_list(mf, ids, n, namef[i]);
		if (fclose(mf) != 0)
			goto out;
	}
	f[0] = LOG_STR("listener", listener);
	f[1] = LOG_STR("side", side);
	f[2] = LOG_STR("priority", str);
	for (i = 0; i < 4; i++)
		f[3 + i] = LOG_STR(what[i], lists[i]);
	log_fields(CONFIG_LOG_INFO, "tls_priority", f, 7);
out:
	for (i = 0; i < 4; i++)
		free(lists[i]);
}
