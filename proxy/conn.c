#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <assert.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "backend.h"
#include "bstarttls.h"
#include "climit.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "proto.h"
#include "proxyproto.h"
#include "session.h"
#include "tlsio.h"

/*
 * A side stops being read while the other side has more than this queued
 * for writing, and starts again below the low-water mark: this is what keeps
 * memory per connection bounded whatever the peers do.
 */
#define SIDE_HWM	(256 * 1024)
#define SIDE_LWM	(64 * 1024)

/* How long a closing connection may take to hand over what it still holds. */
#define CLOSE_LINGER_MS	5000

struct wreq {
	uv_write_t	 req;
	struct side	*side;
	struct wreq	*next;		/* while pending a connection */
	size_t		 len;
	char		 data[];
};

struct side {
	union {
		uv_handle_t	h;
		uv_stream_t	s;
		uv_tcp_t	tcp;
		uv_pipe_t	pipe;
	}		 u;
	struct conn	*c;
	struct tlsio	*tls;
	unsigned	 is_client:1;
	unsigned	 open:1;	/* handle initialised, needs uv_close */
	unsigned	 connected:1;
	unsigned	 ready:1;	/* takes plaintext: connected, and
					   TLS up where the backend wants it */
	unsigned	 reading:1;
	unsigned	 eof:1;		/* the peer will send no more */
	unsigned	 dead:1;	/* nothing more can be written */
	unsigned	 shut:1;	/* our write side is shut */
	unsigned	 detached:1;	/* a backend being dropped */
	unsigned	 hs_fed:1;	/* after STARTTLS: ciphertext seen */
	size_t		 queued;	/* bytes handed to libuv or pending */
	struct wreq	*pend_head;	/* plaintext waiting for ready */
	struct wreq	*pend_tail;
	char		*lb;		/* a PROXY header or a backend STARTTLS
					   dialogue line being read */
	size_t		 lblen;
	size_t		 lbcap;
	uint64_t	 bytes;		/* plaintext bytes received */
	struct bstls	*bst;		/* backend STARTTLS dialogue */
	uv_connect_t	 creq;
	uv_shutdown_t	 sreq;
};

enum conn_phase {
	CONN_PROXY_HDR,		/* reading a trusted peer's PROXY header */
	CONN_HANDSHAKE,		/* implicit TLS: handshake with the client */
	CONN_CONNECTING,	/* waiting for the backend connection */
	CONN_BACKEND_STARTTLS,	/* our STARTTLS dialogue with the backend */
	CONN_BACKEND_TLS,	/* TLS handshake with the backend */
	CONN_RELAY,		/* relaying, parsed or not */
	CONN_STARTTLS_FLUSH,	/* our STARTTLS reply drains; client input
				   is discarded */
	CONN_STARTTLS_HS,	/* handshake with the client after STARTTLS */
	CONN_CLOSING,		/* handing over what is queued, then closing */
};

static const char *const phase_names[] = {
	"proxy_header", "handshake", "connecting", "backend_starttls",
	"backend_tls", "relay", "starttls", "starttls_handshake", "closing",
};

/*
 * The client's TLS records during its handshake, walked only to spot a
 * plaintext alert: a TLS 1.3 client that rejects our certificate sends its
 * alert unencrypted (it has no handshake keys for writing yet), which GnuTLS
 * 3.7 reports as a decryption failure.
 */
struct hs_rec {
	unsigned char	 hdr[5];
	uint8_t		 hlen;		/* header bytes seen */
	uint16_t	 pos;		/* body bytes seen */
	int		 alert;		/* description + 1 of an alert seen */
};

/*
 * What a PROXY header toward the backend says; kept (256 bytes) only on
 * listeners that send one.
 */
struct conn_addrs {
	struct sockaddr_storage	 peer;		/* the client, from PROXY if any */
	struct sockaddr_storage	 local;		/* where it connected to */
};

struct conn {
	struct worker		*w;
	struct listener		*l;
	const struct config_listener *lc;
	struct worker_link	 link;		/* on the worker's list */
	uint64_t		 id;
	enum conn_phase		 phase;
	enum conn_phase		 closed_in;	/* phase when closing began */
	struct side		 client;
	struct side		*backend;
	uv_timer_t		 timer;
	int			 nhandles;
	int			 freed_handles;	/* all handles closed */
	int			 listed;	/* on the worker's list */
	uint64_t		 t_start;
	uint64_t		 hs_deadline;	/* 0: none */
	uint64_t		 conn_deadline;
	uint64_t		 close_deadline;
	uint64_t		 last_active;
	uint64_t		 backend_bytes;	/* from every backend */
	struct session		*sess;		/* NULL: protocol = none */
	int			 client_tls_up;
	int			 starttls_used;
	int			 hs_done;
	int			 hs_begun;	/* the client sent handshake bytes */
	struct hs_rec		 hsrec;		/* its records, until hs_done */
	int			 pre_tls_deadline; /* hs_deadline also bounds
						      the plaintext phase */
	const char		*reason;
	char			 detail[192];
	char			 peer[INET6_ADDRSTRLEN + 8];
	struct conn_addrs	*addrs;		/* NULL: no PROXY header to send */
	uint32_t		 climit;	/* climit ticket; 0: none */
	struct backend_try	 bt;		/* which backends were tried */
	/*
	 * What the client's TLS session said, for logs and the PROXY header.
	 * Names are kept on the heap only when there are any (most sessions
	 * have a short SNI and no certificate): an idle connection should not
	 * carry 640 empty bytes.  NULL means none.
	 */
	char			*sni;
	char			*subject;	/* the verified client cert's DN */
	char			*cn;
	const char		*version;	/* GnuTLS's own static names */
	const char		*cipher;
};

static void	side_read_start(struct side *);
static void	update_reading(struct conn *);
static void	arm_timer(struct conn *);
static void	finish(struct conn *, const char *);
static void	maybe_close(struct conn *);
static void	backend_connect(struct conn *);
static void	deliver(struct conn *, struct side *, const char *, size_t);
static void	proxy_header(struct conn *, const char *, size_t);
static void	relay_read(struct conn *, struct side *, const char *,
		    size_t);
static void	format_peer(const struct sockaddr *, char *, size_t);
static void	backend_unavailable(struct conn *, const char *);
static void	backend_ready(struct conn *, struct side *);
static void	backend_dialogue(struct conn *, struct side *, const char *,
		    size_t);
static void	settle(struct conn *);
static void	start_client_tls(struct conn *);

/* "" for a name that is not there. */
static const char *
nz(const char *s)
{

	return (s != NULL ? s : "");
}

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

static void
count(const struct conn *c, enum metric m, int64_t n)
{

	metrics_add(worker_metrics(c->w), (size_t)worker_id(c->w), c->l->index,
	    m, n);
}

static uint64_t
now_ms(const struct conn *c)
{

	return (uv_now(worker_loop(c->w)));
}

static int
side_live(const struct side *s)
{

	return (s != NULL && s->open && !s->detached);
}

/* Write errors are noted here and acted on by the caller's next check. */
static void
side_failed(struct side *s, int err)
{

	if (s->dead)
		return;
	s->dead = 1;
	if (s->c->detail[0] == '\0')
		snprintf(s->c->detail, sizeof(s->c->detail), "%s: %s",
		    s->is_client ? "client" : "backend", uv_strerror(err));
}

static void
write_cb(uv_write_t *req, int status)
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
	settle(c);
	if (c->phase == CONN_CLOSING)
		return;
	/* RFC 3207 4.2 / RFC 2595: TLS starts once our reply is out. */
	if (c->phase == CONN_STARTTLS_FLUSH && s->is_client && s->queued == 0) {
		c->phase = CONN_STARTTLS_HS;
		update_reading(c);
		return;
	}
	if (s->queued < SIDE_LWM)
		update_reading(c);
}

static int
submit(struct side *s, struct wreq *w)
{
	uv_buf_t b = uv_buf_init(w->data, (unsigned int)w->len);
	int rc;

	if ((rc = uv_write(&w->req, &s->u.s, &b, 1, write_cb)) < 0) {
		s->queued -= w->len;
		free(w);
		side_failed(s, rc);
		return (-1);
	}
	return (0);
}

/* Send bytes as they are (ciphertext, or plaintext on a plain side). */
static int
raw_write(struct side *s, const void *data, size_t len)
{
	struct wreq *w;
	uv_buf_t b;
	int n;

	if (s->dead || s->detached || !s->connected)
		return (-1);
	if (len == 0)
		return (0);
	if (s->queued == 0) {
		b = uv_buf_init((char *)(uintptr_t)data, (unsigned int)len);
		n = uv_try_write(&s->u.s, &b, 1);
		if (n >= 0 && (size_t)n == len)
			return (0);
		if (n < 0 && n != UV_EAGAIN) {
			side_failed(s, n);
			return (-1);
		}
		if (n > 0) {
			data = (const char *)data + n;
			len -= (size_t)n;
		}
	}
	if ((w = malloc(sizeof(*w) + len)) == NULL) {
		side_failed(s, UV_ENOMEM);
		return (-1);
	}
	w->side = s;
	w->next = NULL;
	w->len = len;
	w->req.data = w;
	memcpy(w->data, data, len);
	s->queued += len;
	return (submit(s, w));
}

/*
 * Plaintext for a backend that is not ready (connecting, or its TLS not up
 * yet) waits here, so that nothing ever reaches it unencrypted when it
 * should be encrypted.  It counts toward the queue, so backpressure holds.
 */
static int
pend_write(struct side *s, const void *data, size_t len)
{
	struct wreq *w;

	if ((w = malloc(sizeof(*w) + len)) == NULL) {
		side_failed(s, UV_ENOMEM);
		return (-1);
	}
	w->side = s;
	w->next = NULL;
	w->len = len;
	memcpy(w->data, data, len);
	s->queued += len;
	if (s->pend_tail != NULL)
		s->pend_tail->next = w;
	else
		s->pend_head = w;
	s->pend_tail = w;
	return (0);
}

static void
pend_discard(struct side *s)
{
	struct wreq *w, *nw;

	for (w = s->pend_head; w != NULL; w = nw) {
		nw = w->next;
		s->queued -= w->len;
		free(w);
	}
	s->pend_head = s->pend_tail = NULL;
}

static int
tls_push(void *arg, const void *data, size_t len)
{

	return (raw_write(arg, data, len));
}

/* Send plaintext toward a side, through its TLS session if it has one. */
static int
side_write(struct side *s, const void *data, size_t len)
{

	if (s == NULL || s->dead || s->detached || s->shut)
		return (-1);
	if (len == 0)
		return (0);
	if (!s->ready)
		return (pend_write(s, data, len));
	if (s->tls != NULL)
		return (tlsio_send(s->tls, data, len));
	return (raw_write(s, data, len));
}

static void
side_read_stop(struct side *s)
{

	if (s->reading) {
		uv_read_stop(&s->u.s);
		s->reading = 0;
	}
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
static void
update_reading(struct conn *c)
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

static void
lb_consume(struct side *s, size_t n)
{

	assert(n <= s->lblen);
	memmove(s->lb, s->lb + n, s->lblen - n);
	s->lblen -= n;
}

static void
lb_free(struct side *s)
{

	free(s->lb);
	s->lb = NULL;
	s->lblen = s->lbcap = 0;
}

/*
 * Keep bytes of a PROXY header or of the backend's STARTTLS dialogue (the
 * session engine keeps its own); bounded by ${cap}.
 */
static int
lb_append_cap(struct side *s, const char *data, size_t len, size_t cap)
{
	char *nb;

	if (s->lblen + len > cap)
		return (-1);
	if (s->lblen + len > s->lbcap) {
		size_t ncap = s->lbcap ? s->lbcap : 4096;

		while (ncap < s->lblen + len)
			ncap *= 2;
		if (ncap > cap)
			ncap = cap;
		if ((nb = realloc(s->lb, ncap)) == NULL)
			return (-1);
		s->lb = nb;
		s->lbcap = ncap;
	}
	memcpy(s->lb + s->lblen, data, len);
	s->lblen += len;
	return (0);
}

static void
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

/* Drop a backend connection that the session no longer uses. */
static void
backend_drop(struct conn *c)
{
	struct side *b = c->backend;

	if (b == NULL)
		return;
	c->backend = NULL;
	side_read_stop(b);
	b->detached = 1;
	uv_close(&b->u.h, side_close_cb);
}

static void
log_close(struct conn *c)
{
	struct log_field f[20];
	size_t n = 0;
	uint64_t to_backend = c->client.bytes;

	f[n++] = LOG_NUM("conn", c->id);
	f[n++] = LOG_STR("listener", c->lc->name);
	f[n++] = LOG_STR("client", c->peer);
	f[n++] = LOG_STR("proto", config_proto_name(c->lc->protocol));
	f[n++] = LOG_STR("starttls", c->starttls_used ? "yes" : "no");
	f[n++] = LOG_STR("sni", nz(c->sni));
	f[n++] = LOG_STR("tls_version", nz(c->version));
	f[n++] = LOG_STR("cipher", nz(c->cipher));
	f[n++] = LOG_STR("client_cert", nz(c->subject));
	f[n++] = LOG_NUM("bytes_in", to_backend);
	f[n++] = LOG_NUM("bytes_out", c->backend_bytes);
	f[n++] = LOG_NUM("duration_ms", now_ms(c) - c->t_start);
	f[n++] = LOG_STR("reason", c->reason != NULL ? c->reason : "");
	f[n++] = LOG_STR("phase", phase_names[c->closed_in]);
	f[n++] = LOG_STR("backend", c->bt.addr);
	if (c->detail[0] != '\0')
		f[n++] = LOG_STR("detail", c->detail);
	log_fields(CONFIG_LOG_INFO, "close", f, n);
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
			log_close(c);
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
static void
finish(struct conn *c, const char *reason)
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
	arm_timer(c);
	maybe_close(c);
}

/**
 * conn_abort(c, reason):
 * Close ${c} now (shutdown timeout): close_notify where TLS is up, no wait.
 */
void
conn_abort(struct conn *c, const char *reason)
{

	finish(c, reason);
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

/* Tell the client the service is not there, in its protocol, and close. */
static void
unavailable_reply(struct conn *c)
{
	char buf[512];
	size_t n;

	backend_drop(c);
	n = proto_unavailable(c->lc->protocol, c->lc->hostname, buf,
	    sizeof(buf));
	if (n > 0)
		(void)side_write(&c->client, buf, n);
	finish(c, "backend_unavailable");
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
	backend_drop(c);
	backend_connect(c);
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
static void
backend_unavailable(struct conn *c, const char *why)
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
			backend_unavailable(c, c->phase == CONN_CONNECTING ?
			    "connect timeout" : "backend TLS set-up timeout");
			return;
		}
		break;
	default:
		break;
	}
	if (c->hs_deadline != 0 && now >= c->hs_deadline) {
		count(c, METRIC_HS_FAIL_TIMEOUT, 1);
		finish(c, "handshake_timeout");
		return;
	}
	if (c->phase == CONN_RELAY && now >= c->last_active + idle_ms(c)) {
		finish(c, "idle_timeout");
		return;
	}
	arm_timer(c);
}

/*
 * One timer per connection, set for the nearest deadline of the phase: the
 * handshake (absolute), the backend connection, idleness (checked lazily:
 * reads only note the time), or the linger of a closing connection.
 */
static void
arm_timer(struct conn *c)
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

/* The backend is being set up: connect, its STARTTLS dialogue, its TLS. */
static int
backend_setting_up(const struct conn *c)
{

	return (c->phase == CONN_CONNECTING ||
	    c->phase == CONN_BACKEND_STARTTLS || c->phase == CONN_BACKEND_TLS);
}

/*
 * The client's TLS handshake has begun (it sent something: a port probe
 * that connects and closes is not a handshake) and not finished.
 */
static int
client_in_handshake(const struct conn *c)
{

	return (c->client.tls != NULL && c->hs_begun && !c->hs_done);
}

/*
 * The client hung up or failed in the middle of its handshake: a handshake
 * failure like any other (logged and counted), not a silent close.
 */
static void
client_hs_gone(struct conn *c, const char *why)
{

	log_fields(CONFIG_LOG_INFO, "handshake_failed", (struct log_field[]){
	    LOG_NUM("conn", c->id), LOG_STR("listener", c->lc->name),
	    LOG_STR("client", c->peer), LOG_STR("reason", "other"),
	    LOG_STR("error", why) }, 5);
	count(c, METRIC_HS_FAIL_OTHER, 1);
}

/*
 * The one place that turns a side found dead (a failed write, noted by
 * side_failed wherever it happened, even inside a TLS push) into the end of
 * the session, so that no path can leave a dead side behind unnoticed.
 */
static void
settle(struct conn *c)
{
	struct side *b = c->backend;

	if (c->phase == CONN_CLOSING)
		return;
	if (side_live(b) && b->dead) {
		if (backend_setting_up(c))
			backend_unavailable(c, c->detail[0] != '\0' ? c->detail :
			    "backend write failed");
		else
			finish(c, "backend_error");
		return;
	}
	if (c->client.dead) {
		if (client_in_handshake(c))
			client_hs_gone(c, c->detail);
		finish(c, "client_error");
	}
}

/* The end of one direction: pass it on (close_notify, FIN) to the other. */
static void
side_eof(struct conn *c, struct side *s)
{
	struct side *o = s->is_client ? c->backend : &c->client;

	s->eof = 1;
	side_read_stop(s);
	if (!s->is_client && backend_setting_up(c)) {
		/* A backend failure: the client hears the protocol's reply. */
		backend_unavailable(c, "backend closed the connection during "
		    "its set-up");
		return;
	}
	if (s->is_client && client_in_handshake(c))
		client_hs_gone(c, "client closed the connection");
	if (c->phase != CONN_RELAY) {
		finish(c, s->is_client ? "client_closed" : "backend_closed");
		return;
	}
	if (!side_live(o) || o->dead || o->eof) {
		finish(c, s->is_client ? "client_closed" : "backend_closed");
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
		finish(c, s->is_client ? "client_closed" : "backend_closed");
		return;
	}
	if (o->tls != NULL)
		tlsio_bye(o->tls);
	if (!o->shut) {
		o->shut = 1;
		if (uv_shutdown(&o->sreq, &o->u.s, NULL) < 0)
			side_failed(o, UV_EPIPE);
	}
	update_reading(c);
	settle(c);
}

static void
side_error(struct conn *c, struct side *s, int err)
{

	side_failed(s, err);
	if (!s->is_client && backend_setting_up(c)) {
		backend_unavailable(c, c->detail);
		return;
	}
	if (s->is_client && client_in_handshake(c))
		client_hs_gone(c, c->detail);
	/* What the other side already sent us still goes out (finish). */
	finish(c, s->is_client ? "client_error" : "backend_error");
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
		finish(c, "no_memory");
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
	backend_connect(c);
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
	finish(c, "tls_handshake_failed");
}

/* The client's handshake advanced; 0 when it is done and all is well. */
static int
client_handshake(struct conn *c, const char *data, size_t len)
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

/* The backend's handshake advanced; 0 when it is done and all is well. */
static int
backend_handshake(struct conn *c, struct side *b)
{
	int rc;

	rc = tlsio_handshake(b->tls);
	if (rc == TLSIO_AGAIN)
		return (-1);
	if (rc == TLSIO_FAIL) {
		backend_unavailable(c, tlsio_strerror(b->tls));
		return (-1);
	}
	backend_ready(c, b);
	return (c->phase == CONN_CLOSING || c->backend != b ? -1 : 0);
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
			backend_unavailable(c, "data after the STARTTLS "
			    "go-ahead (response injection)");
			return (-1);
		}
		s->hs_fed = 1;
	}
	tlsio_feed(s->tls, data, len);
	if (s->is_client && !c->hs_done)
		return (client_handshake(c, data, len));
	if (!s->is_client && c->phase == CONN_BACKEND_TLS)
		return (backend_handshake(c, s));
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
			deliver(c, s, buf, off);
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
			finish(c, s->is_client ? "client_error" :
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
			backend_drop(c);
			start_client_tls(c);
			break;
		case SESSION_CLOSE:
			if (a[i].detail[0] != '\0')
				snprintf(c->detail, sizeof(c->detail), "%s",
				    a[i].detail);
			finish(c, a[i].reason);
			break;
		}
	}
	/* Failed writes are acted on by settle(). */
}

/*
 * Plaintext from side ${s}: relayed as it is, or through the session
 * engine on mail listeners.
 */
static void
deliver(struct conn *c, struct side *s, const char *data, size_t len)
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
				finish(c, "client_closed");
			else
				side_eof(c, s);
		} else
			side_error(c, s, (int)nread);
		return;
	}
	c->last_active = now_ms(c);
	relay_read(c, s, buf->base, (size_t)nread);
	/* Backpressure: what was just queued may be over the mark. */
	if (c->phase != CONN_CLOSING)
		update_reading(c);
	settle(c);
}

/* Bytes read from side ${s}: where they go depends on the phase. */
static void
relay_read(struct conn *c, struct side *s, const char *data, size_t len)
{
	struct tlsio *t = s->tls;

	if (s->is_client && c->phase == CONN_STARTTLS_FLUSH)
		return;		/* pipelined after STARTTLS: discarded */
	if (s->is_client && c->phase == CONN_PROXY_HDR) {
		proxy_header(c, data, len);
		return;
	}
	if (!s->is_client && c->phase == CONN_BACKEND_STARTTLS) {
		backend_dialogue(c, s, data, len);
		return;
	}
	if (t == NULL) {
		deliver(c, s, data, len);
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

/* Start the TLS handshake with the client once our STARTTLS reply is out. */
static void
start_client_tls(struct conn *c)
{

	if ((c->client.tls = tlsio_server_new(&c->l->tls, tls_push,
	    &c->client)) == NULL) {
		finish(c, "no_memory");
		return;
	}
	c->starttls_used = 1;
	if (c->hs_deadline == 0)
		c->hs_deadline = now_ms(c) + c->lc->handshake_timeout_ms;
	arm_timer(c);
	c->phase = CONN_STARTTLS_FLUSH;
	if (c->client.queued == 0)
		c->phase = CONN_STARTTLS_HS;
	update_reading(c);
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
			deliver(c, b, g, glen);
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
			finish(c, "backend_error");
			return;
		}
		free(w);
	}
	arm_timer(c);
	update_reading(c);
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
		backend_unavailable(c, "cannot make a TLS session");
		return;
	}
	c->phase = CONN_BACKEND_TLS;
	if (tlsio_handshake(b->tls) == TLSIO_FAIL) {
		backend_unavailable(c, tlsio_strerror(b->tls));
		return;
	}
	update_reading(c);
}

/* A backend line during our STARTTLS dialogue with it. */
static void
backend_dialogue(struct conn *c, struct side *b, const char *data, size_t len)
{
	struct proto_out *out = worker_out(c->w);
	const char *eol;
	size_t n;

	if (b->lblen + len > BSTLS_MAX_LINE * 2 ||
	    lb_append_cap(b, data, len, BSTLS_MAX_LINE * 2) < 0) {
		backend_unavailable(c, "backend line too long");
		return;
	}
	while (b->lblen > 0) {
		if ((eol = memchr(b->lb, '\n', b->lblen)) == NULL) {
			if (b->lblen >= BSTLS_MAX_LINE)
				backend_unavailable(c, "backend line too long");
			return;
		}
		n = (size_t)(eol - b->lb) + 1;
		switch (bstls_line(b->bst, b->lb, n, out)) {
		case BSTLS_MORE:
			break;
		case BSTLS_SEND:
			if (raw_write(b, out->buf, out->len) < 0) {
				backend_unavailable(c, "write failed");
				return;
			}
			break;
		case BSTLS_FAIL:
			backend_unavailable(c, bstls_error(b->bst));
			return;
		case BSTLS_TLS:
			/*
			 * Response injection: nothing may follow the
			 * go-ahead before our ClientHello.
			 */
			if (b->lblen > n) {
				backend_unavailable(c, "data after the STARTTLS "
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

/* Tell the backend who the client is (and, v2, how it reached us). */
static int
send_proxy_header(struct conn *c, struct side *b)
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

static void
connect_cb(uv_connect_t *req, int status)
{
	struct side *b = req->data;
	struct conn *c = b->c;

	if (b->detached || c->phase == CONN_CLOSING)
		return;
	if (status < 0) {
		backend_unavailable(c, uv_strerror(status));
		return;
	}
	b->connected = 1;
	/* The PROXY header goes first, before any byte of ours or the client's. */
	if (c->lc->proxy_protocol != CONFIG_PP_NONE && send_proxy_header(c,
	    b) < 0) {
		backend_unavailable(c, "cannot send the PROXY header");
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
			backend_unavailable(c, "out of memory");
			return;
		}
		bstls_init(b->bst, c->lc->protocol, c->lc->hostname);
		c->phase = CONN_BACKEND_STARTTLS;
		update_reading(c);
		break;
	}
}

static void
backend_connect(struct conn *c)
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
		backend_unavailable(c, "out of memory");
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
		backend_unavailable(c, uv_strerror(rc));
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
			backend_unavailable(c, uv_strerror(rc));
			return;
		}
	}
	arm_timer(c);
	update_reading(c);
}

static int
trusted_proxy(const struct config_listener *lc, const struct sockaddr *peer)
{
	size_t i;

	for (i = 0; i < lc->naccept_proxy; i++)
		if (config_cidr_match(&lc->accept_proxy[i], peer))
			return (1);
	return (0);
}

/*
 * The session proper starts: after accept, or after a trusted PROXY header,
 * with the ${len} bytes that followed it.
 */
static void
start_session(struct conn *c, const char *rest, size_t len)
{
	const struct config_listener *lc = c->lc;

	switch (lc->client_tls) {
	case CONFIG_TLS_IMPLICIT:
		if ((c->client.tls = tlsio_server_new(&c->l->tls, tls_push,
		    &c->client)) == NULL) {
			finish(c, "no_memory");
			return;
		}
		c->phase = CONN_HANDSHAKE;
		if (c->hs_deadline == 0)
			c->hs_deadline = c->t_start + lc->handshake_timeout_ms;
		arm_timer(c);
		update_reading(c);
		if (len > 0)
			relay_read(c, &c->client, rest, len);
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
		backend_connect(c);
		if (len > 0 && c->phase != CONN_CLOSING)
			deliver(c, &c->client, rest, len);
		break;
	}
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
	finish(c, CLIMIT_REASON);
	return (1);
}

/* Bytes from a trusted peer that must start with a PROXY header. */
static void
proxy_header(struct conn *c, const char *data, size_t len)
{
	struct proxyproto_hdr h;
	const char *why = NULL;
	size_t used = 0;
	int rc;

	if (lb_append_cap(&c->client, data, len, PROXYPROTO_MAX +
	    WORKER_READ_CHUNK) < 0) {
		finish(c, "proxy_header");
		return;
	}
	rc = proxyproto_parse((const unsigned char *)c->client.lb,
	    c->client.lblen, &h, &used, &why);
	if (rc == 0)
		return;
	if (rc < 0) {
		snprintf(c->detail, sizeof(c->detail), "bad PROXY header from "
		    "%s: %s", c->peer, why != NULL ? why : "malformed");
		finish(c, "proxy_header");
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
		format_peer((const struct sockaddr *)&h.src, c->peer,
		    sizeof(c->peer));
	}
	/* The rest is the client's own: hand it on, from a copy. */
	len = c->client.lblen - used;
	if (len > 0)
		memcpy(worker_rbuf(c->w), c->client.lb + used, len);
	lb_free(&c->client);
	start_session(c, worker_rbuf(c->w), len);
}

static void
format_peer(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else
		snprintf(buf, len, "local");
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
	int sslen;

	/* Over its limits, a client costs no more than this. */
	if (!trusted_proxy(lc, peer) && climit_gate(l->climit, lc, fd, peer,
	    &ticket, worker_metrics(w), (size_t)worker_id(w),
	    l->index) != CLIMIT_OK)
		return (0);
	if ((c = calloc(1, sizeof(*c))) == NULL)
		goto err0;
	c->climit = ticket;
	c->w = w;
	c->l = l;
	c->lc = lc;
	c->client.c = c;
	c->client.is_client = 1;
	c->client.connected = 1;
	c->client.ready = 1;
	c->t_start = c->last_active = uv_now(worker_loop(w));
	format_peer(peer, c->peer, sizeof(c->peer));
	if (l->proto != NULL && (c->sess = new_session(w, l)) == NULL)
		goto err1;
	if (lc->proxy_protocol != CONFIG_PP_NONE &&
	    (c->addrs = calloc(1, sizeof(*c->addrs))) == NULL)
		goto err2;
	if (uv_tcp_init(worker_loop(w), &c->client.u.tcp) < 0)
		goto err2;
	c->client.u.h.data = &c->client;
	if (uv_tcp_open(&c->client.u.tcp, fd) < 0) {
		/* The handle exists: close it the normal way. */
		c->client.open = 1;
		c->nhandles = 1;
		close(fd);
		fd = -1;
		goto err3;
	}
	c->client.open = 1;
	c->nhandles = 1;
	/* TCP_NODELAY comes from the listening socket (worker.c). */
	if (uv_timer_init(worker_loop(w), &c->timer) < 0)
		goto err3;
	c->timer.data = c;
	c->nhandles++;

	c->id = worker_conn_add(w, l, &c->link, c);
	c->listed = 1;
	count(c, METRIC_CONN_TOTAL, 1);
	count(c, METRIC_CONN_ACTIVE, 1);

	/* Who and where matter only to a PROXY header. */
	if (c->addrs != NULL) {
		memcpy(&c->addrs->peer, peer, peerlen < sizeof(c->addrs->peer) ?
		    peerlen : sizeof(c->addrs->peer));
		sslen = sizeof(c->addrs->local);
		if (uv_tcp_getsockname(&c->client.u.tcp,
		    (struct sockaddr *)&c->addrs->local, &sslen) < 0)
			memset(&c->addrs->local, 0, sizeof(c->addrs->local));
	}
	if (trusted_proxy(lc, peer)) {
		/* A load balancer in front: its header says who the client is. */
		c->phase = CONN_PROXY_HDR;
		c->hs_deadline = c->t_start + lc->handshake_timeout_ms;
		arm_timer(c);
		update_reading(c);
		return (0);
	}
	start_session(c, NULL, 0);
	return (0);

err3:
	/* Not yet on the worker's list: free here once the handle is closed. */
	c->phase = CONN_CLOSING;
	c->freed_handles = 1;
	c->reason = "setup_failed";
	c->nhandles = 1;
	uv_close(&c->client.u.h, side_close_cb);
	return (-1);
err2:
	free(c->addrs);
	session_free(c->sess);
err1:
	free(c);
err0:
	climit_release(l->climit, ticket);
	if (fd >= 0)
		close(fd);
	return (-1);
}
