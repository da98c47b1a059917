/*
 * conn: the lifecycle of one proxied connection: its sockets and handles,
 * the phase machine, who is read (backpressure), the timer, the read ->
 * decrypt -> deliver loop shared by both sides, the session engine's
 * actions applied in order, and the one way out (close).  The backend side,
 * the client's TLS handshake, PROXY and client limits, the write queues and
 * the close line are in conn_backend.c, conn_tls.c, conn_proxy.c,
 * conn_side.c and conn_log.c; what they share is conn_int.h.
 */
#include <sys/socket.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "climit.h"
#include "conn.h"
#include "conn_backend.h"
#include "conn_int.h"
#include "conn_log.h"
#include "conn_proxy.h"
#include "conn_side.h"
#include "conn_tls.h"
#include "proto.h"
#include "session.h"
#include "tlsio.h"

static void	side_read_start(struct side *);
static void	maybe_close(struct conn *);

void
side_write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct side *s = w->side;
	struct conn *c = s->c;

	s->queued -= w->len;
	free(w);
	if (s->detached)
		return;
	if (status < 0)
		side_failed(s, status);
	if (c->phase == CONN_CLOSING) {
		maybe_close(c);
		return;
	}
	conn_settle(c);
	if (c->phase == CONN_CLOSING)
		return;
	/* RFC 3207 4.2 / RFC 2595: TLS starts once our reply is out. */
	if (c->phase == CONN_STARTTLS_FLUSH && s->is_client && s->queued == 0) {
		c->phase = CONN_STARTTLS_HS;
		conn_update_reading(c);
		return;
	}
	if (s->queued < SIDE_LWM)
		conn_update_reading(c);
}

/*
 * While a client line is held back the client is still read, up to one
 * line's worth (the engine says): enough to see it hang up rather than
 * leave its end unread until idle_timeout.
 */
static int
client_readable(const struct conn *c)
{

	return (c->sess == NULL || session_client_readable(c->sess));
}

/*
 * One place decides who is read: the phase, the other side's queue
 * (backpressure), a held client line, and end of stream.
 */
void
conn_update_reading(struct conn *c)
{
	struct side *b = c->backend;
	int rc = 0, rb = 0;

	if (c->phase == CONN_CLOSING)
		return;
	switch (c->phase) {
	case CONN_PROXY_HDR:
	case CONN_HANDSHAKE:
	case CONN_STARTTLS_FLUSH:
	case CONN_STARTTLS_HS:
		rc = 1;
		break;
	case CONN_CONNECTING:
	case CONN_BACKEND_STARTTLS:
	case CONN_BACKEND_TLS:
		/*
		 * Before TLS, nothing more from the client until the backend is
		 * there.  Once the client is on TLS, what it says waits for the
		 * backend (bounded like a write queue) as if it had come with
		 * its Finished: not pausing saves re-arming the socket, and a
		 * client that hangs up meanwhile is seen at once.
		 */
		rc = c->client_tls_up && client_readable(c) &&
		    (b == NULL || b->queued < SIDE_HWM);
		rb = c->phase != CONN_CONNECTING;
		break;
	case CONN_RELAY:
		rc = client_readable(c) && (b == NULL || b->queued < SIDE_HWM);
		rb = b != NULL && b->connected && c->client.queued < SIDE_HWM;
		break;
	case CONN_CLOSING:
		break;
	}
	if (c->client.eof || c->client.dead)
		rc = 0;
	if (rc && !c->client.reading)
		side_read_start(&c->client);
	else if (!rc)
		side_read_stop(&c->client);
	if (side_live(b)) {
		if (b->eof || b->dead)
			rb = 0;
		if (rb && !b->reading)
			side_read_start(b);
		else if (!rb)
			side_read_stop(b);
	}
}

void
side_close_cb(uv_handle_t *h)
{
	struct side *s = h->data;
	struct conn *c = s->c;
	struct wreq *w, *nw;

	for (w = s->pend_head; w != NULL; w = nw) {
		nw = w->next;
		free(w);
	}
	s->pend_head = s->pend_tail = NULL;
	if (!s->is_client && s->tls != NULL && s->ready)
		worker_save_session(s->c->w, s->c->l, s->tls);
	free(s->bst);
	tlsio_free(s->tls);
	s->tls = NULL;
	lb_free(s);
	if (!s->is_client)
		free(s);
	if (--c->nhandles == 0)
		maybe_close(c);
}

static void
timer_close_cb(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (--c->nhandles == 0)
		maybe_close(c);
}

static void
conn_free(struct conn *c)
{
	struct worker *w = c->w;
	int listed = c->listed;

	climit_release(c->l->climit, c->climit);
	if (listed) {
		/* Refusals have their own line, once a second (climit). */
		if (c->reason == NULL || strcmp(c->reason, CLIMIT_REASON) != 0)
			conn_log_close(c);
		count(c, METRIC_CONN_ACTIVE, -1);
		worker_conn_remove(w, &c->link);
	}
	free(c->sni);
	free(c->subject);
	free(c->cn);
	free(c->addrs);
	session_free(c->sess);
	free(c);
}

/*
 * The last step of closing: once nothing is queued toward a live peer (or
 * the linger time is over), close every handle; the last close callback
 * frees the connection.
 */
static void
maybe_close(struct conn *c)
{
	struct side *b = c->backend;
	int busy = 0;

	if (c->phase != CONN_CLOSING)
		return;
	if (c->freed_handles) {
		if (c->nhandles == 0)
			conn_free(c);
		return;
	}
	if (c->client.open && !c->client.dead && c->client.queued > 0)
		busy = 1;
	if (side_live(b) && b->connected && !b->dead && b->queued > 0)
		busy = 1;
	if (busy && now_ms(c) < c->close_deadline)
		return;
	c->freed_handles = 1;
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, timer_close_cb);
	if (side_live(b)) {
		c->backend = NULL;
		b->detached = 1;
		uv_close(&b->u.h, side_close_cb);
	}
	if (c->client.open)
		uv_close(&c->client.u.h, side_close_cb);
}

/*
 * The one way out: stop taking input, say close_notify where TLS is up,
 * let what is queued drain (bounded by the linger time), then close.
 */
void
conn_finish(struct conn *c, const char *reason)
{
	struct side *b = c->backend;

	if (c->phase == CONN_CLOSING)
		return;
	c->closed_in = c->phase;
	c->phase = CONN_CLOSING;
	c->reason = reason;
	side_read_stop(&c->client);
	if (side_live(b)) {
		side_read_stop(b);
		/* Never sent now: it must not hold the linger open. */
		pend_discard(b);
	}
	if (c->client.tls != NULL && c->hs_done && !c->client.dead)
		tlsio_bye(c->client.tls);
	if (side_live(b) && b->tls != NULL && b->connected && !b->dead)
		tlsio_bye(b->tls);
	c->close_deadline = now_ms(c) + CLOSE_LINGER_MS;
	conn_arm_timer(c);
	maybe_close(c);
}

/**
 * conn_abort(c, reason):
 * Close ${c} now (shutdown timeout): close_notify where TLS is up, no wait.
 */
void
conn_abort(struct conn *c, const char *reason)
{

	conn_finish(c, reason);
	c->close_deadline = 0;
	maybe_close(c);
}

/**
 * conn_next(c):
 * The next connection on the worker's list.
 */
struct conn *
conn_next(const struct conn *c)
{

	return (c->link.next != NULL ? c->link.next->conn : NULL);
}

/*
 * How long the session may stay idle.  A STARTTLS client still in
 * plaintext with require_tls = no has plaintext_timeout (if shorter): it
 * may be a whole plaintext session, so no absolute bound, but an idle
 * one costs a backend connection too.
 */
static uint64_t
idle_ms(const struct conn *c)
{
	const struct config_listener *lc = c->lc;

	if (lc->client_tls == CONFIG_TLS_STARTTLS && !lc->require_tls &&
	    !c->client_tls_up && lc->plaintext_timeout_ms < lc->idle_timeout_ms)
		return (lc->plaintext_timeout_ms);
	return (lc->idle_timeout_ms);
}

static void
timer_cb(uv_timer_t *t)
{
	struct conn *c = t->data;
	uint64_t now = now_ms(c);

	switch (c->phase) {
	case CONN_CLOSING:
		c->close_deadline = 0;
		maybe_close(c);
		return;
	case CONN_CONNECTING:
	case CONN_BACKEND_STARTTLS:
	case CONN_BACKEND_TLS:
		if (c->conn_deadline != 0 && now >= c->conn_deadline) {
			conn_backend_unavailable(c, c->phase == CONN_CONNECTING ?
			    "connect timeout" : "backend TLS set-up timeout");
			return;
		}
		break;
	default:
		break;
	}
	if (c->hs_deadline != 0 && now >= c->hs_deadline) {
		count(c, METRIC_HS_FAIL_TIMEOUT, 1);
		conn_finish(c, "handshake_timeout");
		return;
	}
	if (c->phase == CONN_RELAY && now >= c->last_active + idle_ms(c)) {
		conn_finish(c, "idle_timeout");
		return;
	}
	conn_arm_timer(c);
}

/*
 * One timer per connection, set for the nearest deadline of the phase: the
 * handshake (absolute), the backend connection, idleness (checked lazily:
 * reads only note the time), or the linger of a closing connection.
 */
void
conn_arm_timer(struct conn *c)
{
	uint64_t now = now_ms(c), when = UINT64_MAX;

	if (c->freed_handles)
		return;
	if (c->phase == CONN_CLOSING)
		when = c->close_deadline;
	else {
		if (c->hs_deadline != 0)
			when = c->hs_deadline;
		if (c->conn_deadline != 0 && c->conn_deadline < when)
			when = c->conn_deadline;
		if (c->phase == CONN_RELAY && c->last_active + idle_ms(c) <
		    when)
			when = c->last_active + idle_ms(c);
	}
	if (when == UINT64_MAX) {
		uv_timer_stop(&c->timer);
		return;
	}
	uv_timer_start(&c->timer, timer_cb, when > now ? when - now : 0, 0);
}

static void
alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct side *s = h->data;

	(void)hint;
	*buf = uv_buf_init(worker_rbuf(s->c->w), WORKER_READ_CHUNK);
}

/*
 * The one place that turns a side found dead (a failed write, noted by
 * side_failed wherever it happened, even inside a TLS push) into the end of
 * the session, so that no path can leave a dead side behind unnoticed.
 */
void
conn_settle(struct conn *c)
{
	struct side *b = c->backend;

	if (c->phase == CONN_CLOSING)
		return;
	if (side_live(b) && b->dead) {
		if (conn_backend_setting_up(c))
			conn_backend_unavailable(c, c->detail[0] != '\0' ? c->detail :
			    "backend write failed");
		else
			conn_finish(c, "backend_error");
		return;
	}
	if (c->client.dead) {
		if (conn_client_in_handshake(c))
			conn_client_hs_gone(c, c->detail);
		conn_finish(c, "client_error");
	}
}

/* The end of one direction: pass it on (close_notify, FIN) to the other. */
static void
side_eof(struct conn *c, struct side *s)
{
	struct side *o = s->is_client ? c->backend : &c->client;

	s->eof = 1;
	side_read_stop(s);
	if (!s->is_client && conn_backend_setting_up(c)) {
		/* A backend failure: the client hears the protocol's reply. */
		conn_backend_unavailable(c, "backend closed the connection during "
		    "its set-up");
		return;
	}
	if (s->is_client && conn_client_in_handshake(c))
		conn_client_hs_gone(c, "client closed the connection");
	if (c->phase != CONN_RELAY) {
		conn_finish(c, s->is_client ? "client_closed" : "backend_closed");
		return;
	}
	if (!side_live(o) || o->dead || o->eof) {
		conn_finish(c, s->is_client ? "client_closed" : "backend_closed");
		return;
	}
	/*
	 * Mail sessions are never half-closed: a client that closes is gone
	 * (it sends QUIT and waits for the reply first), and a backend that
	 * closes has said its last word (a reply to QUIT/LOGOUT, or a BYE).
	 * What was received is delivered (finish lingers, bounded, for the
	 * queued bytes and the close_notify), then the other side is closed,
	 * whatever the engine still holds.  Opaque listeners keep half-close.
	 */
	if (c->sess != NULL) {
		conn_finish(c, s->is_client ? "client_closed" : "backend_closed");
		return;
	}
	if (o->tls != NULL)
		tlsio_bye(o->tls);
	if (!o->shut) {
		o->shut = 1;
		if (uv_shutdown(&o->sreq, &o->u.s, NULL) < 0)
			side_failed(o, UV_EPIPE);
	}
	conn_update_reading(c);
	conn_settle(c);
}

static void
side_error(struct conn *c, struct side *s, int err)
{

	side_failed(s, err);
	if (!s->is_client && conn_backend_setting_up(c)) {
		conn_backend_unavailable(c, c->detail);
		return;
	}
	if (s->is_client && conn_client_in_handshake(c))
		conn_client_hs_gone(c, c->detail);
	/* What the other side already sent us still goes out (conn_finish). */
	conn_finish(c, s->is_client ? "client_error" : "backend_error");
}

/*
 * Ciphertext from side ${s}: the STARTTLS boundaries, then its TLS session,
 * advancing a handshake.  Return 0 if application data may follow.
 */
static int
tls_in(struct conn *c, struct side *s, const char *data, size_t len)
{
	const char *p;

	if (s->is_client && c->phase == CONN_STARTTLS_HS && !s->hs_fed) {
		/*
		 * Plaintext the client pipelined after STARTTLS and that came
		 * after our reply went out is discarded like the rest: a
		 * ClientHello starts with a handshake record (0x16).
		 */
		if ((p = memchr(data, 0x16, len)) == NULL)
			return (-1);
		len -= (size_t)(p - data);
		data = p;
		s->hs_fed = 1;
	}
	if (!s->is_client && c->phase == CONN_BACKEND_TLS && s->bst != NULL &&
	    !s->hs_fed) {
		/*
		 * After the go-ahead the backend's first byte must start a TLS
		 * record (handshake or alert): anything else was injected,
		 * whatever packet it came in.
		 */
		if ((unsigned char)data[0] != 0x16 &&
		    (unsigned char)data[0] != 0x15) {
			conn_backend_unavailable(c, "data after the STARTTLS "
			    "go-ahead (response injection)");
			return (-1);
		}
		s->hs_fed = 1;
	}
	tlsio_feed(s->tls, data, len);
	if (s->is_client && !c->hs_done)
		return (conn_client_handshake(c, data, len));
	if (!s->is_client && c->phase == CONN_BACKEND_TLS)
		return (conn_backend_handshake(c, s));
	return (0);
}

/* Whether what comes from ${s} still matters. */
static int
side_current(const struct conn *c, const struct side *s)
{

	return (c->phase != CONN_CLOSING && (s->is_client || c->backend == s));
}

/*
 * Decrypt what side ${s}'s TLS session was fed and deliver it.  Records
 * are gathered until the buffer is full or the feed runs dry, so that one
 * read's worth of ciphertext becomes one write toward the other side, not
 * one per record.  The same loop for both sides.
 */
static void
tls_drain(struct conn *c, struct side *s)
{
	char *buf = worker_pbuf(c->w);
	size_t off = 0, cap = WORKER_READ_CHUNK;
	ssize_t n;

	for (;;) {
		n = tlsio_recv(s->tls, buf + off, cap - off);
		if (n > 0 && (off += (size_t)n) < cap)
			continue;
		if (off > 0) {
			conn_deliver(c, s, buf, off);
			off = 0;
			if (!side_current(c, s))
				return;
			if (n > 0)
				continue;
		}
		if (n == TLSIO_AGAIN)
			return;
		if (n == 0)
			side_eof(c, s);
		else {
			snprintf(c->detail, sizeof(c->detail), "%s tls: %s",
			    s->is_client ? "client" : "backend",
			    tlsio_strerror(s->tls));
			conn_finish(c, s->is_client ? "client_error" :
			    "backend_error");
		}
		return;
	}
}

/* Carry out what the session engine said, in order. */
static void
apply(struct conn *c)
{
	const struct session_action *a;
	size_t i, n;

	a = session_actions(c->sess, &n);
	for (i = 0; i < n && c->phase != CONN_CLOSING; i++) {
		switch (a[i].kind) {
		case SESSION_TO_CLIENT:
			(void)side_write(&c->client, a[i].data, a[i].len);
			break;
		case SESSION_TO_BACKEND:
			(void)side_write(c->backend, a[i].data, a[i].len);
			break;
		case SESSION_START_TLS:
			conn_backend_drop(c);
			conn_client_start_tls(c);
			break;
		case SESSION_CLOSE:
			if (a[i].detail[0] != '\0')
				snprintf(c->detail, sizeof(c->detail), "%s",
				    a[i].detail);
			conn_finish(c, a[i].reason);
			break;
		}
	}
	/* Failed writes are acted on by conn_settle(). */
}

/*
 * Plaintext from side ${s}: relayed as it is, or through the session
 * engine on mail listeners.
 */
void
conn_deliver(struct conn *c, struct side *s, const char *data, size_t len)
{
	size_t n;

	if (s->is_client) {
		c->client.bytes += len;
		count(c, METRIC_BYTES_IN, (int64_t)len);
	} else {
		c->backend_bytes += len;
		count(c, METRIC_BYTES_OUT, (int64_t)len);
	}
	if (c->sess == NULL || !session_parsing(c->sess)) {
		(void)side_write(s->is_client ? c->backend : &c->client, data,
		    len);
		return;
	}
	n = s->is_client ? session_client(c->sess, data, len) :
	    session_backend(c->sess, data, len);
	if (n > 0)
		apply(c);
}

static void
read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct side *s = stream->data;
	struct conn *c = s->c;

	if (nread == 0 || s->detached)
		return;
	if (c->phase == CONN_CLOSING) {
		side_read_stop(s);
		return;
	}
	if (nread < 0) {
		if (nread == UV_EOF) {
			if (s->is_client && c->phase == CONN_STARTTLS_FLUSH)
				conn_finish(c, "client_closed");
			else
				side_eof(c, s);
		} else
			side_error(c, s, (int)nread);
		return;
	}
	c->last_active = now_ms(c);
	conn_relay_read(c, s, buf->base, (size_t)nread);
	/* Backpressure: what was just queued may be over the mark. */
	if (c->phase != CONN_CLOSING)
		conn_update_reading(c);
	conn_settle(c);
}

/* Bytes read from side ${s}: where they go depends on the phase. */
void
conn_relay_read(struct conn *c, struct side *s, const char *data, size_t len)
{
	struct tlsio *t = s->tls;

	if (s->is_client && c->phase == CONN_STARTTLS_FLUSH)
		return;		/* pipelined after STARTTLS: discarded */
	if (s->is_client && c->phase == CONN_PROXY_HDR) {
		conn_proxy_header_in(c, data, len);
		return;
	}
	if (!s->is_client && c->phase == CONN_BACKEND_STARTTLS) {
		conn_backend_dialogue(c, s, data, len);
		return;
	}
	if (t == NULL) {
		conn_deliver(c, s, data, len);
		return;
	}
	if (tls_in(c, s, data, len) == 0)
		tls_drain(c, s);
	/* Whatever is still fed is dropped here: the buffer goes away. */
	tlsio_feed(t, NULL, 0);
}

static void
side_read_start(struct side *s)
{
	int rc;

	if ((rc = uv_read_start(&s->u.s, alloc_cb, read_cb)) < 0) {
		side_error(s->c, s, rc);
		return;
	}
	s->reading = 1;
}

/*
 * The session proper starts: after accept, or after a trusted PROXY header,
 * with the ${len} bytes that followed it.
 */
void
conn_start_session(struct conn *c, const char *rest, size_t len)
{
	const struct config_listener *lc = c->lc;

	switch (lc->client_tls) {
	case CONFIG_TLS_IMPLICIT:
		if ((c->client.tls = tlsio_server_new(&c->l->tls, tls_push,
		    &c->client)) == NULL) {
			conn_finish(c, "no_memory");
			return;
		}
		c->phase = CONN_HANDSHAKE;
		if (c->hs_deadline == 0)
			c->hs_deadline = c->t_start + lc->handshake_timeout_ms;
		conn_arm_timer(c);
		conn_update_reading(c);
		if (len > 0)
			conn_relay_read(c, &c->client, rest, len);
		break;
	case CONFIG_TLS_STARTTLS:
	case CONFIG_TLS_NONE:
		/*
		 * With require_tls nothing useful happens before TLS, so the
		 * handshake deadline also bounds the plaintext phase.
		 * Without it a client may stay in plaintext: idle_timeout.
		 */
		c->hs_deadline = 0;
		if (lc->client_tls == CONFIG_TLS_STARTTLS && lc->require_tls)
			c->hs_deadline = c->t_start + lc->handshake_timeout_ms;
		conn_backend_connect(c);
		if (len > 0 && c->phase != CONN_CLOSING)
			conn_deliver(c, &c->client, rest, len);
		break;
	}
}

/* The session engine for a mail listener's connection. */
static struct session *
new_session(struct worker *w, const struct listener *l)
{
	const struct config_listener *lc = l->conf;
	struct session_conf sc;

	memset(&sc, 0, sizeof(sc));
	sc.ops = l->proto;
	sc.opts.starttls = lc->client_tls == CONFIG_TLS_STARTTLS;
	sc.opts.client_on_tls = lc->client_tls == CONFIG_TLS_IMPLICIT;
	sc.opts.require_tls = lc->require_tls;
	sc.opts.hostname = lc->hostname;
	sc.proto = lc->protocol;
	sc.out = worker_out(w);
	return (session_new(&sc));
}

/* Free a connection that never had a handle. */
static void
conn_unmade(struct conn *c)
{

	free(c->addrs);
	session_free(c->sess);
	free(c);
}

/*
 * A connection from ${peer} on listener ${l}, holding climit ${ticket},
 * before any handle: its fields, its session engine, room for what a PROXY
 * header toward the backend says.  NULL when out of memory.
 */
static struct conn *
conn_new(struct worker *w, struct listener *l, const struct sockaddr *peer,
    uint32_t ticket)
{
	const struct config_listener *lc = l->conf;
	struct conn *c;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return (NULL);
	c->climit = ticket;
	c->w = w;
	c->l = l;
	c->lc = lc;
	c->client.c = c;
	c->client.is_client = 1;
	c->client.connected = 1;
	c->client.ready = 1;
	c->t_start = c->last_active = uv_now(worker_loop(w));
	config_sockaddr_text(peer, c->peer, sizeof(c->peer));
	if ((l->proto != NULL && (c->sess = new_session(w, l)) == NULL) ||
	    (lc->proxy_protocol != CONFIG_PP_NONE &&
	    (c->addrs = calloc(1, sizeof(*c->addrs))) == NULL)) {
		conn_unmade(c);
		return (NULL);
	}
	return (c);
}

/* Who and where matter only to a PROXY header. */
static void
keep_addrs(struct conn *c, const struct sockaddr *peer, socklen_t peerlen)
{
	int sslen;

	if (c->addrs == NULL)
		return;
	memcpy(&c->addrs->peer, peer, peerlen < sizeof(c->addrs->peer) ?
	    peerlen : sizeof(c->addrs->peer));
	sslen = sizeof(c->addrs->local);
	if (uv_tcp_getsockname(&c->client.u.tcp,
	    (struct sockaddr *)&c->addrs->local, &sslen) < 0)
		memset(&c->addrs->local, 0, sizeof(c->addrs->local));
}

/**
 * conn_start(w, l, fd, peer, peerlen):
 * Take over the accepted socket ${fd} from ${peer} and start serving it on
 * worker ${w}.  On failure the descriptor is closed.  Return 0 or -1.
 */
int
conn_start(struct worker *w, struct listener *l, int fd,
    const struct sockaddr *peer, socklen_t peerlen)
{
	const struct config_listener *lc = l->conf;
	struct conn *c;
	uint32_t ticket = 0;

	/* Over its limits, a client costs no more than this. */
	if (!conn_trusted_proxy(lc, peer) && climit_gate(l->climit, lc, fd, peer,
	    &ticket, worker_metrics(w), (size_t)worker_id(w),
	    l->index) != CLIMIT_OK)
		return (0);
	if ((c = conn_new(w, l, peer, ticket)) == NULL)
		goto err0;
	if (uv_tcp_init(worker_loop(w), &c->client.u.tcp) < 0)
		goto err1;
	c->client.u.h.data = &c->client;
	if (uv_tcp_open(&c->client.u.tcp, fd) < 0) {
		/* The handle exists: close it the normal way. */
		c->client.open = 1;
		c->nhandles = 1;
		close(fd);
		fd = -1;
		goto err2;
	}
	c->client.open = 1;
	c->nhandles = 1;
	/* TCP_NODELAY comes from the listening socket (worker.c). */
	if (uv_timer_init(worker_loop(w), &c->timer) < 0)
		goto err2;
	c->timer.data = c;
	c->nhandles++;

	c->id = worker_conn_add(w, l, &c->link, c);
	c->listed = 1;
	count(c, METRIC_CONN_TOTAL, 1);
	count(c, METRIC_CONN_ACTIVE, 1);
	keep_addrs(c, peer, peerlen);
	if (conn_trusted_proxy(lc, peer)) {
		/* A load balancer in front: its header says who the client is. */
		c->phase = CONN_PROXY_HDR;
		c->hs_deadline = c->t_start + lc->handshake_timeout_ms;
		conn_arm_timer(c);
		conn_update_reading(c);
		return (0);
	}
	conn_start_session(c, NULL, 0);
	return (0);

err2:
	/* Not yet on the worker's list: free here once the handle is closed. */
	c->phase = CONN_CLOSING;
	c->freed_handles = 1;
	c->reason = "setup_failed";
	c->nhandles = 1;
	uv_close(&c->client.u.h, side_close_cb);
	return (-1);
err1:
	conn_unmade(c);
err0:
	climit_release(l->climit, ticket);
	if (fd >= 0)
		close(fd);
	return (-1);
}
