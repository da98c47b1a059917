/*
 * conn_backend: the backend side of a session: choosing a backend and
 * failing over (backend_pick/backend_report), moving what the client said
 * to a retried backend, our STARTTLS dialogue with the backend, its TLS,
 * and the client's reply when no backend is there.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "backend.h"
#include "bstarttls.h"
#include "conn_backend.h"
#include "conn_int.h"
#include "conn_proxy.h"
#include "conn_side.h"
#include "log.h"
#include "proto.h"
#include "tlsio.h"

static void	backend_ready(struct conn *, struct side *);

/* Drop a backend connection that the session no longer uses. */
void
conn_backend_drop(struct conn *c)
{
	struct side *b = c->backend;

	if (b == NULL)
		return;
	c->backend = NULL;
	side_read_stop(b);
	b->detached = 1;
	uv_close(&b->u.h, side_close_cb);
}

/* Tell the client the service is not there, in its protocol, and close. */
static void
unavailable_reply(struct conn *c)
{
	char buf[512];
	size_t n;

	conn_backend_drop(c);
	n = proto_unavailable(c->lc->protocol, c->lc->hostname, buf,
	    sizeof(buf));
	if (n > 0)
		(void)side_write(&c->client, buf, n);
	conn_finish(c, "backend_unavailable");
}

/*
 * A backend that is not ready yet failed: the next candidate gets the
 * session, with what the client said meanwhile.  Return 0 if there is no
 * attempt to retry (the backend was relaying already).
 */
static int
backend_retry(struct conn *c)
{
	struct side *b = c->backend, *nb;
	struct wreq *head, *tail, *w;
	size_t len = 0;

	if (b == NULL || b->ready)
		return (0);
	backend_report(c->l->pool, &c->bt, 0);
	head = b->pend_head;
	tail = b->pend_tail;
	b->pend_head = b->pend_tail = NULL;
	for (w = head; w != NULL; w = w->next)
		len += w->len;
	b->queued -= len;
	conn_backend_drop(c);
	conn_backend_connect(c);
	if ((nb = c->backend) == NULL || c->phase == CONN_CLOSING) {
		for (; head != NULL; head = w) {
			w = head->next;
			free(head);
		}
		return (1);
	}
	for (w = head; w != NULL; w = w->next)
		w->side = nb;
	nb->pend_head = head;
	nb->pend_tail = tail;
	nb->queued += len;
	return (1);
}

/* A backend attempt failed: try the next candidate, or give up. */
void
conn_backend_unavailable(struct conn *c, const char *why)
{

	log_fields(CONFIG_LOG_WARN, "backend_unavailable", (struct log_field[]){
	    LOG_NUM("conn", c->id), LOG_STR("listener", c->lc->name),
	    LOG_STR("backend", c->bt.addr), LOG_STR("error", why) }, 4);
	snprintf(c->detail, sizeof(c->detail), "%s: %s", c->bt.addr, why);
	count(c, c->phase == CONN_CONNECTING ? METRIC_BACKEND_CONNECT_ERR :
	    METRIC_BACKEND_TLS_ERR, 1);
	if (!backend_retry(c))
		unavailable_reply(c);
}

/* The backend is being set up: connect, its STARTTLS dialogue, its TLS. */
int
conn_backend_setting_up(const struct conn *c)
{

	return (c->phase == CONN_CONNECTING ||
	    c->phase == CONN_BACKEND_STARTTLS || c->phase == CONN_BACKEND_TLS);
}

/* The backend's handshake advanced; 0 when it is done and all is well. */
int
conn_backend_handshake(struct conn *c, struct side *b)
{
	int rc;

	rc = tlsio_handshake(b->tls);
	if (rc == TLSIO_AGAIN)
		return (-1);
	if (rc == TLSIO_FAIL) {
		conn_backend_unavailable(c, tlsio_strerror(b->tls));
		return (-1);
	}
	backend_ready(c, b);
	return (c->phase == CONN_CLOSING || c->backend != b ? -1 : 0);
}

/*
 * The backend takes plaintext now: show the client the greeting kept from
 * a STARTTLS dialogue, and send what the client said meanwhile.
 */
static void
backend_ready(struct conn *c, struct side *b)
{
	struct wreq *w, *nw;
	const char *g;
	size_t glen;

	b->ready = 1;
	backend_report(c->l->pool, &c->bt, 1);
	c->conn_deadline = 0;
	c->phase = CONN_RELAY;
	c->last_active = now_ms(c);
	if (b->bst != NULL) {
		g = bstls_greeting(b->bst, &glen);
		if (glen > 0) {
			conn_deliver(c, b, g, glen);
			if (c->phase == CONN_CLOSING || c->backend != b)
				return;
		}
		free(b->bst);
		b->bst = NULL;
	}
	w = b->pend_head;
	b->pend_head = b->pend_tail = NULL;
	for (; w != NULL; w = nw) {
		nw = w->next;
		b->queued -= w->len;
		if (side_write(b, w->data, w->len) < 0) {
			free(w);
			for (w = nw; w != NULL; w = nw) {
				nw = w->next;
				b->queued -= w->len;
				free(w);
			}
			conn_finish(c, "backend_error");
			return;
		}
		free(w);
	}
	conn_arm_timer(c);
	conn_update_reading(c);
}

/* Start TLS toward the backend (implicit, or after its go-ahead). */
static void
backend_start_tls(struct conn *c, struct side *b)
{
	const gnutls_datum_t *resume = worker_session(c->w, c->l);
	struct tlsio_client_ctx ctx = c->l->btls;

	/* Without backend_name, each backend is checked for its own name. */
	if (c->lc->backend_name == NULL && c->bt.host != NULL)
		ctx.name = c->bt.host;
	if ((b->tls = tlsio_client_new(&ctx, resume, tls_push, b)) == NULL) {
		conn_backend_unavailable(c, "cannot make a TLS session");
		return;
	}
	c->phase = CONN_BACKEND_TLS;
	if (tlsio_handshake(b->tls) == TLSIO_FAIL) {
		conn_backend_unavailable(c, tlsio_strerror(b->tls));
		return;
	}
	conn_update_reading(c);
}

/* A backend line during our STARTTLS dialogue with it. */
void
conn_backend_dialogue(struct conn *c, struct side *b, const char *data, size_t len)
{
	struct proto_out *out = worker_out(c->w);
	const char *eol;
	size_t n;

	if (b->lblen + len > BSTLS_MAX_LINE * 2 ||
	    lb_append_cap(b, data, len, BSTLS_MAX_LINE * 2) < 0) {
		conn_backend_unavailable(c, "backend line too long");
		return;
	}
	while (b->lblen > 0) {
		if ((eol = memchr(b->lb, '\n', b->lblen)) == NULL) {
			if (b->lblen >= BSTLS_MAX_LINE)
				conn_backend_unavailable(c, "backend line too long");
			return;
		}
		n = (size_t)(eol - b->lb) + 1;
		switch (bstls_line(b->bst, b->lb, n, out)) {
		case BSTLS_MORE:
			break;
		case BSTLS_SEND:
			if (raw_write(b, out->buf, out->len) < 0) {
				conn_backend_unavailable(c, "write failed");
				return;
			}
			break;
		case BSTLS_FAIL:
			conn_backend_unavailable(c, bstls_error(b->bst));
			return;
		case BSTLS_TLS:
			/*
			 * Response injection: nothing may follow the
			 * go-ahead before our ClientHello.
			 */
			if (b->lblen > n) {
				conn_backend_unavailable(c, "data after the STARTTLS "
				    "go-ahead (response injection)");
				return;
			}
			lb_free(b);
			backend_start_tls(c, b);
			return;
		}
		lb_consume(b, n);
	}
}

static void
connect_cb(uv_connect_t *req, int status)
{
	struct side *b = req->data;
	struct conn *c = b->c;

	if (b->detached || c->phase == CONN_CLOSING)
		return;
	if (status < 0) {
		conn_backend_unavailable(c, uv_strerror(status));
		return;
	}
	b->connected = 1;
	/* The PROXY header goes first, before any byte of ours or the client's. */
	if (c->lc->proxy_protocol != CONFIG_PP_NONE && conn_proxy_header_out(c,
	    b) < 0) {
		conn_backend_unavailable(c, "cannot send the PROXY header");
		return;
	}
	switch (c->lc->backend_tls) {
	case CONFIG_TLS_NONE:
		backend_ready(c, b);
		break;
	case CONFIG_TLS_IMPLICIT:
		backend_start_tls(c, b);
		break;
	case CONFIG_TLS_STARTTLS:
		if ((b->bst = malloc(sizeof(*b->bst))) == NULL) {
			conn_backend_unavailable(c, "out of memory");
			return;
		}
		bstls_init(b->bst, c->lc->protocol, c->lc->hostname);
		c->phase = CONN_BACKEND_STARTTLS;
		conn_update_reading(c);
		break;
	}
}

void
conn_backend_connect(struct conn *c)
{
	struct backend_target t, *a = &t;
	struct side *b;
	char why[160];
	int rc;

	if ((rc = backend_pick(c->l->pool, &c->bt, &t, why, sizeof(why))) != 0) {
		/* No address, or every one failed (each was logged). */
		if (rc > 0)
			log_fields(CONFIG_LOG_WARN, "backend_unavailable",
			    (struct log_field[]){ LOG_NUM("conn", c->id),
			    LOG_STR("listener", c->lc->name),
			    LOG_STR("error", why) }, 3);
		if (c->bt.tried == 0) {
			snprintf(c->detail, sizeof(c->detail), "%s", why);
			count(c, METRIC_BACKEND_CONNECT_ERR, 1);
		}
		unavailable_reply(c);
		return;
	}
	if ((b = calloc(1, sizeof(*b))) == NULL) {
		conn_backend_unavailable(c, "out of memory");
		return;
	}
	b->c = c;
	b->creq.data = b;
	b->sreq.data = b;
	if (a->ss.ss_family == AF_UNIX)
		rc = uv_pipe_init(worker_loop(c->w), &b->u.pipe, 0);
	else
		rc = uv_tcp_init(worker_loop(c->w), &b->u.tcp);
	if (rc < 0) {
		free(b);
		conn_backend_unavailable(c, uv_strerror(rc));
		return;
	}
	b->u.h.data = b;
	b->open = 1;
	c->nhandles++;
	c->backend = b;
	c->phase = CONN_CONNECTING;
	c->conn_deadline = now_ms(c) + c->lc->connect_timeout_ms;
	if (a->ss.ss_family == AF_UNIX) {
		const struct sockaddr_un *sun = (const void *)&a->ss;

		uv_pipe_connect(&b->creq, &b->u.pipe, sun->sun_path,
		    connect_cb);
	} else {
		(void)uv_tcp_nodelay(&b->u.tcp, 1);
		if ((rc = uv_tcp_connect(&b->creq, &b->u.tcp,
		    (const struct sockaddr *)&a->ss, connect_cb)) < 0) {
			conn_backend_unavailable(c, uv_strerror(rc));
			return;
		}
	}
	conn_arm_timer(c);
	conn_update_reading(c);
}
