/*
 * conn_proxy: who the client is: a trusted peer's PROXY header in, the
 * client limits that can be checked only once it is read, the PROXY header
 * out to the backend, and the peer's printable address.
 */
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "climit.h"
#include "conn_int.h"
#include "conn_proxy.h"
#include "conn_side.h"
#include "proto.h"
#include "proxyproto.h"
#include "tlsio.h"

int
conn_trusted_proxy(const struct config_listener *lc, const struct sockaddr *peer)
{
	size_t i;

	for (i = 0; i < lc->naccept_proxy; i++)
		if (config_cidr_match(&lc->accept_proxy[i], peer))
			return (1);
	return (0);
}

/*
 * The client's limits, known once a trusted peer's PROXY header says who
 * the client is: still before any TLS or backend.  Return 1 if refused.
 */
static int
climit_refuse(struct conn *c, const struct sockaddr *client)
{
	enum climit_verdict v;
	char buf[512];
	size_t n;

	v = climit_admit(c->l->climit, client, climit_now(), &c->climit);
	if (v == CLIMIT_OK)
		return (0);
	count(c, climit_metric(v), 1);
	climit_refused(c->l->climit, v, client);
	lb_free(&c->client);
	if (c->lc->client_tls != CONFIG_TLS_IMPLICIT && (n = climit_reply(
	    c->lc->protocol, c->lc->hostname, buf, sizeof(buf))) > 0)
		(void)side_write(&c->client, buf, n);
	conn_finish(c, CLIMIT_REASON);
	return (1);
}

/* Bytes from a trusted peer that must start with a PROXY header. */
void
conn_proxy_header_in(struct conn *c, const char *data, size_t len)
{
	struct proxyproto_hdr h;
	const char *why = NULL;
	size_t used = 0;
	int rc;

	if (lb_append_cap(&c->client, data, len, PROXYPROTO_MAX +
	    WORKER_READ_CHUNK) < 0) {
		conn_finish(c, "proxy_header");
		return;
	}
	rc = proxyproto_parse((const unsigned char *)c->client.lb,
	    c->client.lblen, &h, &used, &why);
	if (rc == 0)
		return;
	if (rc < 0) {
		snprintf(c->detail, sizeof(c->detail), "bad PROXY header from "
		    "%s: %s", c->peer, why != NULL ? why : "malformed");
		conn_finish(c, "proxy_header");
		return;
	}
	if (!h.local) {
		if (climit_refuse(c, (const struct sockaddr *)&h.src))
			return;
		if (c->addrs != NULL) {
			memcpy(&c->addrs->peer, &h.src, sizeof(c->addrs->peer));
			memcpy(&c->addrs->local, &h.dst,
			    sizeof(c->addrs->local));
		}
		config_sockaddr_text((const struct sockaddr *)&h.src, c->peer,
		    sizeof(c->peer));
	}
	/* The rest is the client's own: hand it on, from a copy. */
	len = c->client.lblen - used;
	if (len > 0)
		memcpy(worker_rbuf(c->w), c->client.lb + used, len);
	lb_free(&c->client);
	conn_start_session(c, worker_rbuf(c->w), len);
}

/* Tell the backend who the client is (and, v2, how it reached us). */
int
conn_proxy_header_out(struct conn *c, struct side *b)
{
	unsigned char buf[PROXYPROTO_MAX];
	struct proxyproto_tls ti, *tip = NULL;
	const struct sockaddr *src, *dst;
	ssize_t n;

	if (c->addrs == NULL)
		return (-1);
	src = (const void *)&c->addrs->peer;
	dst = (const void *)&c->addrs->local;

	if (c->lc->proxy_protocol == CONFIG_PP_V1)
		n = proxyproto_v1(src, dst, (char *)buf, sizeof(buf));
	else {
		if (c->client_tls_up) {
			memset(&ti, 0, sizeof(ti));
			ti.client_tls = 1;
			ti.cert_conn = c->subject != NULL;
			ti.cert_verified = c->subject != NULL;
			ti.sni = nz(c->sni);
			ti.alpn = tlsio_alpn(c->client.tls);
			ti.version = nz(c->version);
			ti.cipher = nz(c->cipher);
			ti.cn = nz(c->cn);
			tip = &ti;
		}
		n = proxyproto_v2(src, dst, tip, buf, sizeof(buf));
	}
	if (n < 0)
		return (-1);
	return (raw_write(b, buf, (size_t)n));
}
