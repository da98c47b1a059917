#include <arpa/inet.h>
#include <netinet/in.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <uv.h>

#include "backend.h"
#include "certs.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "reloader.h"

#define CONTENT_TYPE_METRICS	"text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_TEXT	"text/plain; charset=utf-8"

/*
 * A growing text buffer; after a failed allocation it stays failed.  It
 * grows (unlike proto_out or the log line) because a scrape has a line per
 * listener and certificate, and a failed scrape is answered 500 rather than
 * cut.
 */
struct sbuf {
	char	*p;
	size_t	 len;
	size_t	 cap;
	int	 failed;
};

enum mstate {
	MS_READING,		/* collecting the request head */
	MS_WRITING,		/* the response is being written */
	MS_LINGER,		/* written and shut down: draining until EOF */
};

struct mconn {
	uv_tcp_t		 tcp;
	uv_timer_t		 timer;
	uv_write_t		 wreq;
	uv_shutdown_t		 sreq;
	struct metrics_http	*h;
	struct mconn		*prev, *next;
	enum mstate		 state;
	int			 closing;
	int			 eof;		/* the client has shut down */
	int			 nopen;		/* handles not yet closed */
	char			 hdr[256];	/* response head */
	char			*body;		/* response body (malloc) */
	size_t			 len;		/* bytes in req */
	char			 req[METRICS_HTTP_MAX_REQUEST];
};

struct metrics_http {
	uv_loop_t		*loop;
	uv_tcp_t		 srv;
	const struct metrics_src *src;
	struct mconn		*conns;		/* newest first */
	unsigned		 nconns;
	unsigned		 nlive;		/* of them not closing */
	unsigned		 nhandles;	/* open handles, srv included */
	int			 stopping;
	char			 addr[128];
	char			 scratch[4096];	/* read and discarded */
};

/* The families with one series (or a fixed set) per listener. */
struct series {
	const char	*value;		/* of the family's label; NULL: none */
	enum metric	 metric;
};

struct family {
	const char	*name;
	const char	*type;
	const char	*help;
	const char	*label;		/* besides listener, or NULL */
	struct series	 s[5];
	size_t		 n;
};

static const struct family families[] = {
	{ "mailtlsd_connections_total", "counter",
	  "Client connections accepted.", NULL,
	  { { NULL, METRIC_CONN_TOTAL } }, 1 },
	{ "mailtlsd_connections_active", "gauge",
	  "Client connections open now.", NULL,
	  { { NULL, METRIC_CONN_ACTIVE } }, 1 },
	{ "mailtlsd_tls_handshakes_total", "counter",
	  "Client TLS handshakes completed (implicit TLS and STARTTLS).", NULL,
	  { { NULL, METRIC_HANDSHAKES } }, 1 },
	{ "mailtlsd_tls_handshake_failures_total", "counter",
	  "Client TLS handshakes that failed, by reason.", "reason",
	  { { "timeout", METRIC_HS_FAIL_TIMEOUT },
	    { "alert", METRIC_HS_FAIL_ALERT },
	    { "alpn", METRIC_HS_FAIL_ALPN },
	    { "client_cert", METRIC_HS_FAIL_CLIENT_CERT },
	    { "other", METRIC_HS_FAIL_OTHER } }, 5 },
	{ "mailtlsd_starttls_upgrades_total", "counter",
	  "Client connections upgraded to TLS by STARTTLS or STLS.", NULL,
	  { { NULL, METRIC_STARTTLS } }, 1 },
	{ "mailtlsd_backend_errors_total", "counter",
	  "Backend failures: connect (unreachable, refused, timeout) or tls "
	  "(STARTTLS, handshake, verification).", "kind",
	  { { "connect", METRIC_BACKEND_CONNECT_ERR },
	    { "tls", METRIC_BACKEND_TLS_ERR } }, 2 },
	{ "mailtlsd_bytes_total", "counter",
	  "Plaintext bytes relayed, by direction.", "direction",
	  { { "client_to_backend", METRIC_BYTES_IN },
	    { "backend_to_client", METRIC_BYTES_OUT } }, 2 },
	{ "mailtlsd_client_limit_refusals_total", "counter",
	  "Connections refused because their client address was over a "
	  "limit, by limit.", "limit",
	  { { "max_per_client", METRIC_CLIMIT_MAX },
	    { "rate_per_client", METRIC_CLIMIT_RATE } }, 2 },
};

static void	mconn_close(struct mconn *);
static void	timer_cb(uv_timer_t *);

/* Text buffer. */

static void
sb_reserve(struct sbuf *b, size_t n)
{
	size_t cap;
	char *p;

	if (b->failed || b->cap - b->len > n)
		return;
	cap = b->cap > 0 ? b->cap : 4096;
	while (cap - b->len <= n) {
		if (cap > SIZE_MAX / 2) {
			b->failed = 1;
			return;
		}
		cap *= 2;
	}
	if ((p = realloc(b->p, cap)) == NULL) {
		b->failed = 1;
		return;
	}
	b->p = p;
	b->cap = cap;
}

static void
sb_put(struct sbuf *b, const char *s, size_t n)
{

	sb_reserve(b, n);
	if (b->failed)
		return;
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_puts(struct sbuf *b, const char *s)
{

	sb_put(b, s, strlen(s));
}

static void __attribute__((format(printf, 2, 3)))
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	int n;

	/* Only numbers go through here; they always fit. */
	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		b->failed = 1;
		return;
	}
	sb_put(b, tmp, (size_t)n);
}

/*
 * A label value as the text format 0.0.4 wants it: backslash, double quote
 * and line feed escaped as \\, \" and \n; everything else as it is (UTF-8).
 */
static void
sb_label(struct sbuf *b, const char *name, const char *value, int first)
{
	const char *p;

	if (!first)
		sb_put(b, ",", 1);
	sb_puts(b, name);
	sb_put(b, "=\"", 2);
	for (p = value; *p != '\0'; p++) {
		switch (*p) {
		case '\\':
			sb_put(b, "\\\\", 2);
			break;
		case '"':
			sb_put(b, "\\\"", 2);
			break;
		case '\n':
			sb_put(b, "\\n", 2);
			break;
		default:
			sb_put(b, p, 1);
		}
	}
	sb_put(b, "\"", 1);
}

static void
sb_family(struct sbuf *b, const char *name, const char *type,
    const char *help)
{

	sb_puts(b, "# HELP ");
	sb_puts(b, name);
	sb_put(b, " ", 1);
	sb_puts(b, help);
	sb_puts(b, "\n# TYPE ");
	sb_puts(b, name);
	sb_put(b, " ", 1);
	sb_puts(b, type);
	sb_put(b, "\n", 1);
}

/* Rendering. */

static void
render_counters(struct sbuf *b, const struct metrics_src *src)
{
	const struct family *f;
	size_t i, j, n = 0;

	if (src->metrics != NULL) {
		n = metrics_nlisteners(src->metrics);
		if (src->nlisteners < n)
			n = src->nlisteners;
	}
	for (f = families; f < families + sizeof(families) /
	    sizeof(families[0]); f++) {
		sb_family(b, f->name, f->type, f->help);
		for (i = 0; i < n; i++)
			for (j = 0; j < f->n; j++) {
				sb_puts(b, f->name);
				sb_put(b, "{", 1);
				sb_label(b, "listener", src->names[i], 1);
				if (f->label != NULL)
					sb_label(b, f->label, f->s[j].value, 0);
				sb_printf(b, "} %" PRId64 "\n",
				    metrics_get(src->metrics, i,
				    f->s[j].metric));
			}
	}
}

static void
render_certs(struct sbuf *b, const struct reloader *r)
{
	struct certs *c;
	size_t i, j, k, n;
	time_t na;

	sb_family(b, "mailtlsd_cert_not_after_seconds", "gauge",
	    "Expiry (not_after) of each certificate served, in seconds since "
	    "the Unix epoch; the earliest one when several share a subject.");
	n = r != NULL ? reloader_nlisteners(r) : 0;
	for (i = 0; i < n; i++) {
		if ((c = reloader_certs(r, i)) == NULL)
			continue;
		for (j = 0; j < certs_count(c); j++) {
			/*
			 * An RSA and an ECDSA certificate for the same names
			 * are common; one series per (listener, subject) is
			 * what the text format allows, and the earliest expiry
			 * is the one to alert on.
			 */
			for (k = 0; k < j; k++)
				if (strcmp(certs_subject(c, k),
				    certs_subject(c, j)) == 0)
					break;
			if (k < j)
				continue;
			na = certs_not_after(c, j);
			for (k = j + 1; k < certs_count(c); k++)
				if (strcmp(certs_subject(c, k),
				    certs_subject(c, j)) == 0 &&
				    certs_not_after(c, k) < na)
					na = certs_not_after(c, k);
			sb_puts(b, "mailtlsd_cert_not_after_seconds{");
			sb_label(b, "listener", reloader_listener_name(r, i),
			    1);
			sb_label(b, "subject", certs_subject(c, j), 0);
			sb_printf(b, "} %lld\n", (long long)na);
		}
		certs_unref(c);
	}

	sb_family(b, "mailtlsd_cert_reloads_total", "counter",
	    "Certificate reloads of TLS listeners, by result (a failed reload "
	    "keeps the old certificates).");
	for (i = 0; i < n; i++) {
		if ((c = reloader_certs(r, i)) == NULL)
			continue;
		certs_unref(c);
		for (k = 0; k < RELOADER_NRESULTS; k++) {
			sb_puts(b, "mailtlsd_cert_reloads_total{");
			sb_label(b, "listener", reloader_listener_name(r, i),
			    1);
			sb_label(b, "result", k == RELOADER_OK ? "ok" :
			    "failed", 0);
			sb_printf(b, "} %" PRIu64 "\n", reloader_count(r, i,
			    (enum reloader_result)k));
		}
	}
}

/* SIGHUP reloads of the configuration file (main.c counts them). */
static void
render_config_reloads(struct sbuf *b, const uint64_t *n)
{

	if (n == NULL)
		return;
	sb_family(b, "mailtlsd_config_reloads_total", "counter",
	    "Configuration reloads (SIGHUP), by result (an error keeps the "
	    "running configuration).");
	sb_printf(b, "mailtlsd_config_reloads_total{result=\"ok\"} %" PRIu64
	    "\n", n[0]);
	sb_printf(b, "mailtlsd_config_reloads_total{result=\"error\"} %"
	    PRIu64 "\n", n[1]);
}

/**
 * metrics_http_render(src, len):
 * The exposition text of ${src} as it is now: a NUL-terminated string of
 * ${*len} bytes owned by the caller (free it), or NULL.
 */
char *
metrics_http_render(const struct metrics_src *src, size_t *len)
{
	struct sbuf b = { NULL, 0, 0, 0 };
	char *bt;
	size_t btlen;

	sb_family(&b, "mailtlsd_build_info", "gauge",
	    "Always 1; the labels tell the versions of mailtlsd and of the "
	    "libraries it runs with.");
	sb_puts(&b, "mailtlsd_build_info{");
	sb_label(&b, "version", src->version != NULL ? src->version : "", 1);
	sb_label(&b, "gnutls", src->gnutls != NULL ? src->gnutls : "", 0);
	sb_label(&b, "libuv", src->libuv != NULL ? src->libuv : "", 0);
	sb_puts(&b, "} 1\n");
	render_counters(&b, src);
	/* Per backend address: up, attempts, failures (backend.c). */
	if ((bt = backend_metrics_render(&btlen)) != NULL) {
		sb_put(&b, bt, btlen);
		free(bt);
	}
	render_certs(&b, src->reloader);
	render_config_reloads(&b, src->config_reloads);
	if (b.failed) {
		free(b.p);
		return (NULL);
	}
	*len = b.len;
	return (b.p);
}

/* HTTP. */

static int
is_tchar(int ch)
{

	return ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	    (ch >= '0' && ch <= '9') || (ch != '\0' &&
	    strchr("!#$%&'*+-.^_`|~", ch) != NULL));
}

/*
 * The end of the request head in ${p}: the offset just past the empty line
 * (CRLF CRLF, or bare LFs, which RFC 9112 2.2 lets a server accept), or 0.
 */
static size_t
head_end(const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < len && p[i + 1] == '\n')
			return (i + 2);
		if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n')
			return (i + 3);
	}
	return (0);
}

/* The length of the line at ${p} (without its LF or CRLF), within ${end}. */
static size_t
line_len(const char *p, const char *end)
{
	const char *q = memchr(p, '\n', (size_t)(end - p));
	size_t n = (size_t)((q != NULL ? q : end) - p);

	if (n > 0 && p[n - 1] == '\r')
		n--;
	return (n);
}

/*
 * Check the request head ${p} (${len} bytes, ending with the empty line)
 * and decide the status: 200 (with *${head} set for HEAD), 400, 404, 405 or
 * 505.
 */
static int
judge(const char *p, const char *end, int *head)
{
	const char *line, *sp1, *sp2, *path, *pend, *q, *nl;
	size_t n, mlen;

	*head = 0;
	if (memchr(p, '\0', (size_t)(end - p)) != NULL)
		return (400);
	/* RFC 9112 2.2: ignore at least one empty line before the request. */
	if (line_len(p, end) == 0)
		p = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1;
	line = p;
	n = line_len(line, end);
	/* RFC 9112 3: method SP request-target SP HTTP-version */
	if ((sp1 = memchr(line, ' ', n)) == NULL ||
	    (sp2 = memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - line))) == NULL)
		return (400);
	mlen = (size_t)(sp1 - line);
	if (mlen == 0 || sp2 == sp1 + 1)
		return (400);
	for (q = line; q < sp1; q++)
		if (!is_tchar((unsigned char)*q))
			return (400);
	for (q = sp1 + 1; q < sp2; q++)
		if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
			return (400);
	q = sp2 + 1;
	if (line + n - q != 8 || memcmp(q, "HTTP/", 5) != 0 ||
	    q[5] < '0' || q[5] > '9' || q[6] != '.' || q[7] < '0' ||
	    q[7] > '9')
		return (400);
	if (q[5] != '1')
		return (505);

	/* RFC 9112 5: field-name ":" field-value; no obsolete line folding. */
	for (p = (const char *)memchr(line, '\n', (size_t)(end - line)) + 1;
	    p < end; p = nl + 1) {
		if ((n = line_len(p, end)) == 0)
			break;
		if ((q = memchr(p, ':', n)) == NULL || q == p)
			return (400);
		for (; p < q; p++)
			if (!is_tchar((unsigned char)*p))
				return (400);
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			break;
	}

	/* RFC 9112 3.2.2: a server must accept the absolute form too. */
	path = sp1 + 1;
	pend = sp2;
	if ((pend - path > 7 && strncasecmp(path, "http://", 7) == 0) ||
	    (pend - path > 8 && strncasecmp(path, "https://", 8) == 0)) {
		q = (const char *)memchr(path, ':', (size_t)(pend - path)) + 3;
		if ((path = memchr(q, '/', (size_t)(pend - q))) == NULL)
			return (404);
	}
	if (pend - path < 8 || memcmp(path, "/metrics", 8) != 0 ||
	    (pend - path > 8 && path[8] != '?'))
		return (404);
	if (mlen == 4 && memcmp(line, "HEAD", 4) == 0)
		*head = 1;
	else if (mlen != 3 || memcmp(line, "GET", 3) != 0)
		return (405);
	return (200);
}

static const char *
reason(int status)
{

	switch (status) {
	case 200:
		return ("OK");
	case 400:
		return ("Bad Request");
	case 404:
		return ("Not Found");
	case 405:
		return ("Method Not Allowed");
	case 408:
		return ("Request Timeout");
	case 431:
		return ("Request Header Fields Too Large");
	case 505:
		return ("HTTP Version Not Supported");
	default:
		return ("Internal Server Error");
	}
}

static void
mconn_close_cb(uv_handle_t *hd)
{
	struct mconn *c = hd->data;
	struct metrics_http *h = c->h;

	h->nhandles--;
	if (--c->nopen > 0)
		return;
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	h->nconns--;
	free(c->body);
	free(c);
	if (h->stopping && h->nhandles == 0)
		free(h);
}

/* The one way out of a connection: close its handles; freed when closed. */
static void
mconn_close(struct mconn *c)
{

	if (c->closing)
		return;
	c->closing = 1;
	c->h->nlive--;
	uv_close((uv_handle_t *)&c->tcp, mconn_close_cb);
	uv_close((uv_handle_t *)&c->timer, mconn_close_cb);
}

static void
shutdown_cb(uv_shutdown_t *req, int status)
{
	struct mconn *c = req->data;

	if (status < 0)
		mconn_close(c);
}

static void
write_cb(uv_write_t *req, int status)
{
	struct mconn *c = req->data;

	if (c->closing)
		return;
	/* After the client's EOF there is nothing left to drain. */
	if (status < 0 || c->eof || uv_shutdown(&c->sreq,
	    (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
		mconn_close(c);
		return;
	}
	/*
	 * Closing a socket with unread input resets it, and the reset can
	 * destroy the response before the client has read it: read and
	 * discard until the client closes, for a short while.
	 */
	c->state = MS_LINGER;
	uv_timer_start(&c->timer, timer_cb, METRICS_HTTP_LINGER_MS, 0);
}

/* One debug line per response, with the client's address. */
static void
log_request(struct mconn *c, int status)
{
	struct sockaddr_storage ss;
	char host[INET6_ADDRSTRLEN] = "", peer[INET6_ADDRSTRLEN + 8];
	int len = sizeof(ss), port = 0;

	ss.ss_family = AF_UNSPEC;
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
		if (ss.ss_family == AF_INET) {
			const struct sockaddr_in *sin = (const void *)&ss;

			uv_ip4_name(sin, host, sizeof(host));
			port = ntohs(sin->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			const struct sockaddr_in6 *sin6 = (const void *)&ss;

			uv_ip6_name(sin6, host, sizeof(host));
			port = ntohs(sin6->sin6_port);
		}
	}
	snprintf(peer, sizeof(peer), ss.ss_family == AF_INET6 ? "[%s]:%d" :
	    "%s:%d", host, port);
	log_fields(CONFIG_LOG_DEBUG, "metrics_request", (struct log_field[]){
	    LOG_STR("client", peer), LOG_NUM("status", status) }, 2);
}

/* Send the response ${status} (with the metrics for a 200) and close. */
static void
respond(struct mconn *c, int status, int head)
{
	const struct metrics_src *src = c->h->src;
	const char *ctype = CONTENT_TYPE_TEXT, *extra = "";
	uv_buf_t bufs[2];
	size_t blen;
	int n;

	c->state = MS_WRITING;
	if (status == 200) {
		if ((c->body = metrics_http_render(src, &blen)) == NULL)
			status = 500;
		else
			ctype = CONTENT_TYPE_METRICS;
	}
	if (status != 200) {
		n = asprintf(&c->body, "%d %s\n", status, reason(status));
		if (n < 0) {
			c->body = NULL;
			mconn_close(c);
			return;
		}
		blen = (size_t)n;
	}
	if (status == 405)
		extra = "Allow: GET, HEAD\r\n";
	n = snprintf(c->hdr, sizeof(c->hdr), "HTTP/1.1 %d %s\r\n"
	    "Content-Type: %s\r\nContent-Length: %zu\r\n%s"
	    "Connection: close\r\n\r\n", status, reason(status), ctype, blen,
	    extra);
	if (n < 0 || (size_t)n >= sizeof(c->hdr)) {
		mconn_close(c);
		return;
	}
	if (log_enabled(CONFIG_LOG_DEBUG))
		log_request(c, status);
	bufs[0] = uv_buf_init(c->hdr, (unsigned int)n);
	bufs[1] = uv_buf_init(c->body, head ? 0 : (unsigned int)blen);
	if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, 2, write_cb) < 0)
		mconn_close(c);
}

static void
timer_cb(uv_timer_t *t)
{
	struct mconn *c = t->data;

	if (c->state != MS_READING) {
		mconn_close(c);
		return;
	}
	/* Too slow: say so, and allow a little time to write that. */
	respond(c, 408, 0);
	if (!c->closing)
		uv_timer_start(&c->timer, timer_cb, METRICS_HTTP_LINGER_MS, 0);
}

static void
alloc_cb(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
	struct mconn *c = hd->data;

	(void)hint;
	if (c->state == MS_READING)
		*buf = uv_buf_init(c->req + c->len,
		    (unsigned int)(sizeof(c->req) - c->len));
	else
		*buf = uv_buf_init(c->h->scratch, sizeof(c->h->scratch));
}

static void
read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct mconn *c = s->data;
	size_t end;
	int status, head;

	(void)buf;
	if (nread == 0)
		return;
	if (nread < 0) {
		/* EOF before a whole request, or after the response. */
		if (c->state != MS_WRITING)
			mconn_close(c);
		else {
			c->eof = 1;
			uv_read_stop(s);
		}
		return;
	}
	if (c->state != MS_READING)
		return;
	c->len += (size_t)nread;
	if ((end = head_end(c->req, c->len)) == 0) {
		if (c->len == sizeof(c->req))
			respond(c, 431, 0);
		return;
	}
	status = judge(c->req, c->req + end, &head);
	respond(c, status, head);
}

static void
reject_close_cb(uv_handle_t *hd)
{
	struct metrics_http *h = hd->data;

	free(hd);
	h->nhandles--;
	if (h->stopping && h->nhandles == 0)
		free(h);
}

static void
connection_cb(uv_stream_t *srv, int status)
{
	struct metrics_http *h = srv->data;
	struct mconn *c, *old = NULL;
	uv_tcp_t *t;

	if (status < 0 || h->stopping)
		return;
	/*
	 * At the cap the oldest connection makes room: a scraper sends its
	 * request at once and is gone within milliseconds, so only clients
	 * that are slow (or idle) are ever pushed out, and no number of them
	 * can keep a scrape from being served.
	 */
	if (h->nlive >= METRICS_HTTP_MAX_CONNS) {
		for (c = h->conns; c != NULL; c = c->next)
			if (!c->closing)
				old = c;
		if (old != NULL) {
			log_debug("metrics", "%s: %d connections, closing the "
			    "oldest", h->addr, METRICS_HTTP_MAX_CONNS);
			mconn_close(old);
		}
	}
	if (h->nlive >= METRICS_HTTP_MAX_CONNS) {
		/*
		 * Accept and close at once: a connection left in the queue
		 * would stop libuv accepting at all.
		 */
		if ((t = malloc(sizeof(*t))) == NULL)
			return;
		uv_tcp_init(h->loop, t);
		t->data = h;
		h->nhandles++;
		(void)uv_accept(srv, (uv_stream_t *)t);
		uv_close((uv_handle_t *)t, reject_close_cb);
		log_debug("metrics", "%s: more than %d connections, closing "
		    "one", h->addr, METRICS_HTTP_MAX_CONNS);
		return;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return;
	c->h = h;
	uv_tcp_init(h->loop, &c->tcp);
	uv_timer_init(h->loop, &c->timer);
	c->tcp.data = c->timer.data = c->wreq.data = c->sreq.data = c;
	c->nopen = 2;
	h->nhandles += 2;
	h->nconns++;
	h->nlive++;
	if ((c->next = h->conns) != NULL)
		c->next->prev = c;
	h->conns = c;
	if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0 ||
	    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) < 0) {
		mconn_close(c);
		return;
	}
	uv_timer_start(&c->timer, timer_cb, METRICS_HTTP_DEADLINE_MS, 0);
}

static void
srv_close_cb(uv_handle_t *hd)
{
	struct metrics_http *h = hd->data;

	h->nhandles--;
	if (h->nhandles == 0)
		free(h);
}

/**
 * metrics_http_start(loop, addr, src, err, errlen):
 * Listen on ${addr} from ${loop} (the main loop, which must be running or
 * about to run) and serve what ${src} describes; ${src} and what it points
 * to are borrowed until metrics_http_stop.  Return the endpoint, or NULL
 * with a message in ${err} (the address cannot be bound, say).
 */
struct metrics_http *
metrics_http_start(uv_loop_t *loop, const struct config_addr *addr,
    const struct metrics_src *src, char *err, size_t errlen)
{
	struct metrics_http *h;
	int rc;

	if ((h = calloc(1, sizeof(*h))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return (NULL);
	}
	h->loop = loop;
	h->src = src;
	snprintf(h->addr, sizeof(h->addr), "%s", addr->text);
	if ((rc = uv_tcp_init(loop, &h->srv)) < 0) {
		snprintf(err, errlen, "%s", uv_strerror(rc));
		free(h);
		return (NULL);
	}
	h->srv.data = h;
	h->nhandles = 1;
	/* A bind error may only show at listen time: check both. */
	if ((rc = uv_tcp_bind(&h->srv, (const struct sockaddr *)&addr->ss,
	    0)) < 0 || (rc = uv_listen((uv_stream_t *)&h->srv, 64,
	    connection_cb)) < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", addr->text,
		    uv_strerror(rc));
		h->stopping = 1;
		uv_close((uv_handle_t *)&h->srv, srv_close_cb);
		return (NULL);
	}
	log_info("metrics", "serving /metrics on http://%s", addr->text);
	return (h);
}

/**
 * metrics_http_stop(h):
 * Stop listening, close every connection and free ${h}.  Its handles are
 * closed, so the memory goes once the loop has run their close callbacks;
 * the loop must run on.  After the call ${h}'s source is no longer used.
 * NULL is a no-op.
 */
void
metrics_http_stop(struct metrics_http *h)
{
	struct mconn *c;

	if (h == NULL || h->stopping)
		return;
	h->stopping = 1;
	h->src = NULL;
	for (c = h->conns; c != NULL; c = c->next)
		mconn_close(c);
	uv_close((uv_handle_t *)&h->srv, srv_close_cb);
}
