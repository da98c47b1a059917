/*
 * conn_tls: the client's TLS handshake as the connection sees it: where it
 * starts (after STARTTLS), how it fails (classes for logs and metrics, the
 * plaintext alert), and what its session says (SNI, version, certificate).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>

#include "conn_backend.h"
#include "conn_int.h"
#include "conn_side.h"
#include "conn_tls.h"
#include "log.h"
#include "session.h"
#include "tlsio.h"

/* A heap copy of ${s}, or NULL if it is empty; sets *${nomem} on ENOMEM. */
static char *
keep_str(const char *s, int *nomem)
{
	char *p;

	if (s[0] == '\0')
		return (NULL);
	if ((p = strdup(s)) == NULL)
		*nomem = 1;
	return (p);
}

/*
 * The client's TLS handshake has begun (it sent something: a port probe
 * that connects and closes is not a handshake) and not finished.
 */
int
conn_client_in_handshake(const struct conn *c)
{

	return (c->client.tls != NULL && c->hs_begun && !c->hs_done);
}

/*
 * The client hung up or failed in the middle of its handshake: a handshake
 * failure like any other (logged and counted), not a silent close.
 */
void
conn_client_hs_gone(struct conn *c, const char *why)
{

	log_fields(CONFIG_LOG_INFO, "handshake_failed", (struct log_field[]){
	    LOG_NUM("conn", c->id), LOG_STR("listener", c->lc->name),
	    LOG_STR("client", c->peer), LOG_STR("reason", "other"),
	    LOG_STR("error", why) }, 5);
	count(c, METRIC_HS_FAIL_OTHER, 1);
}

static void
hs_watch(struct hs_rec *r, const unsigned char *p, size_t len)
{
	size_t blen, n;

	while (len > 0) {
		if (r->hlen < sizeof(r->hdr)) {
			r->hdr[r->hlen++] = *p++;
			len--;
			r->pos = 0;
			continue;
		}
		blen = (size_t)r->hdr[3] << 8 | r->hdr[4];
		n = blen - r->pos < len ? blen - r->pos : len;
		/* An alert record: level, description. */
		if (r->hdr[0] == 0x15 && blen == 2 && r->pos + n == 2)
			r->alert = p[n - 1] + 1;
		r->pos += (uint16_t)n;
		p += n;
		len -= n;
		if (r->pos == blen)
			r->hlen = 0;
	}
	if (r->hlen == sizeof(r->hdr) &&
	    (r->hdr[3] << 8 | r->hdr[4]) == 0)
		r->hlen = 0;
}

static enum metric
hs_fail_metric(const char *reason)
{

	if (strcmp(reason, "alert") == 0)
		return (METRIC_HS_FAIL_ALERT);
	if (strcmp(reason, "alpn") == 0)
		return (METRIC_HS_FAIL_ALPN);
	if (strcmp(reason, "client_cert") == 0)
		return (METRIC_HS_FAIL_CLIENT_CERT);
	return (METRIC_HS_FAIL_OTHER);
}

/* TLS handshake with the client has completed. */
static void
client_tls_ready(struct conn *c)
{
	struct tlsio *t = c->client.tls;
	char buf[256];
	int nomem = 0;

	c->hs_done = 1;
	c->client_tls_up = 1;
	count(c, METRIC_HANDSHAKES, 1);
	if (c->starttls_used)
		count(c, METRIC_STARTTLS, 1);
	c->hs_deadline = 0;
	c->version = tlsio_version(t);
	c->cipher = tlsio_cipher(t);
	c->sni = keep_str(tlsio_sni(t), &nomem);
	tlsio_peer_subject(t, buf, sizeof(buf));
	c->subject = keep_str(buf, &nomem);
	tlsio_peer_cn(t, buf, sizeof(buf));
	c->cn = keep_str(buf, &nomem);
	if (nomem) {
		conn_finish(c, "no_memory");
		return;
	}
	if (log_enabled(CONFIG_LOG_DEBUG))
		log_fields(CONFIG_LOG_DEBUG, "handshake", (struct log_field[]){
		    LOG_NUM("conn", c->id), LOG_STR("sni", nz(c->sni)),
		    LOG_STR("tls_version", c->version),
		    LOG_STR("cipher", c->cipher),
		    LOG_STR("alpn", tlsio_alpn(t)),
		    LOG_NUM("resumed", tlsio_resumed(t)) }, 6);
	/*
	 * RFC 3207 4.2, RFC 9051 6.2.1: nothing from before STARTTLS
	 * survives.  A new backend connection starts a fresh session there,
	 * and the handler swallows its greeting.
	 */
	if (c->starttls_used && c->sess != NULL)
		(void)session_client_tls(c->sess);
	conn_backend_connect(c);
}

/* The client's handshake failed: log, count by class, close. */
static void
client_hs_failed(struct conn *c, struct tlsio *t)
{
	const char *reason = tlsio_fail_reason(t);

	snprintf(c->detail, sizeof(c->detail), "%s", tlsio_strerror(t));
	if (strcmp(reason, "other") == 0 && c->hsrec.alert != 0) {
		/* The plaintext alert GnuTLS could not decrypt (hs_rec). */
		reason = "alert";
		snprintf(c->detail, sizeof(c->detail), "alert received: %s",
		    gnutls_alert_get_name(
		    (gnutls_alert_description_t)(c->hsrec.alert - 1)));
	}
	log_fields(CONFIG_LOG_INFO, "handshake_failed", (struct log_field[]){
	    LOG_NUM("conn", c->id), LOG_STR("listener", c->lc->name),
	    LOG_STR("client", c->peer), LOG_STR("reason", reason),
	    LOG_STR("error", c->detail) }, 5);
	count(c, hs_fail_metric(reason), 1);
	conn_finish(c, "tls_handshake_failed");
}

/* The client's handshake advanced; 0 when it is done and all is well. */
int
conn_client_handshake(struct conn *c, const char *data, size_t len)
{
	int rc;

	c->hs_begun = 1;
	hs_watch(&c->hsrec, (const unsigned char *)data, len);
	rc = tlsio_handshake(c->client.tls);
	if (rc == TLSIO_AGAIN)
		return (-1);
	if (rc == TLSIO_FAIL) {
		client_hs_failed(c, c->client.tls);
		return (-1);
	}
	client_tls_ready(c);
	return (c->phase == CONN_CLOSING ? -1 : 0);
}

/* Start the TLS handshake with the client once our STARTTLS reply is out. */
void
conn_client_start_tls(struct conn *c)
{

	if ((c->client.tls = tlsio_server_new(&c->l->tls, tls_push,
	    &c->client)) == NULL) {
		conn_finish(c, "no_memory");
		return;
	}
	c->starttls_used = 1;
	if (c->hs_deadline == 0)
		c->hs_deadline = now_ms(c) + c->lc->handshake_timeout_ms;
	conn_arm_timer(c);
	c->phase = CONN_STARTTLS_FLUSH;
	if (c->client.queued == 0)
		c->phase = CONN_STARTTLS_HS;
	conn_update_reading(c);
}
