/*
 * session: the framing and the execution of the handler's verdicts for one
 * connection, as a pure state machine (include/session.h).
 *
 * Bytes from a side are split into lines (or opaque runs the handler
 * announces) and each line is given to the handler; its verdict becomes
 * actions.  Actions point into the caller's bytes, into the side's buffer
 * (which is only compacted at the start of the next call) or into the
 * arena that collects what the engine writes itself (replies, rewrites).
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

/*
 * Once the client is on TLS a line longer than the buffer is not refused:
 * the handler is shown its first bytes (enough to classify it: a tag and a
 * command, a reply code, a dot) as a line of their own, and if it lets the
 * line pass, the rest goes on as an opaque run up to its LF.
 */
#define LONG_HEAD	1024

/* How much input a side may buffer beyond one line: two reads. */
#define READ_SLACK	(2 * 256 * 1024)

struct sbuf {
	char	*p;
	size_t	 pos;		/* consumed */
	size_t	 len;		/* filled */
	size_t	 cap;
};

/* An action whose bytes are in the arena is resolved when it is read. */
struct pending {
	struct session_action	 a;
	size_t			 off;		/* arena offset */
	int			 in_arena;
};

struct session {
	struct session_conf	 c;
	void			*st;
	struct sbuf		 in[2];		/* PROTO_CLIENT, PROTO_BACKEND */
	struct pending		*acts;
	size_t			 nacts;
	size_t			 actcap;
	struct session_action	*view;		/* resolved for the caller */
	size_t			 viewcap;
	char			*arena;
	size_t			 alen;
	size_t			 acap;
	int			 tls;		/* the client is on TLS */
	int			 held;		/* a client line is held */
	int			 tlswait;	/* STARTTLS answered */
	int			 passthrough;
	int			 closed;
	int			 longrun[2];	/* inside a long line's tail:
					   1 passed on, 2 dropped */
	int			 lined;		/* the last step was a line */
	int			 lastcr[2];	/* a long line's last byte was CR */
	char			 detail[128];
};

static void	run(struct session *, enum proto_side, const char *, size_t,
		    size_t *);

static void
fail_nomem(struct session *s)
{

	/* No memory to record the action: the caller sees closed. */
	s->closed = 1;
}

static struct pending *
act_new(struct session *s, enum session_act kind)
{
	struct pending *p;
	size_t ncap;

	if (s->nacts == s->actcap) {
		ncap = s->actcap ? s->actcap * 2 : 8;
		if ((p = realloc(s->acts, ncap * sizeof(*p))) == NULL)
			return (NULL);
		s->acts = p;
		s->actcap = ncap;
	}
	p = &s->acts[s->nacts++];
	memset(p, 0, sizeof(*p));
	p->a.kind = kind;
	return (p);
}

/* Bytes that stay valid until the next call: pass them by reference. */
static void
emit_ref(struct session *s, enum proto_side to, const char *data, size_t len)
{
	enum session_act k = to == PROTO_CLIENT ? SESSION_TO_CLIENT :
	    SESSION_TO_BACKEND;
	struct pending *last = s->nacts ? &s->acts[s->nacts - 1] : NULL;
	struct pending *p;

	if (len == 0)
		return;
	/* Adjacent bytes toward the same side go out as one write. */
	if (last != NULL && last->a.kind == k && !last->in_arena &&
	    last->a.data + last->a.len == data) {
		last->a.len += len;
		return;
	}
	if ((p = act_new(s, k)) == NULL) {
		fail_nomem(s);
		return;
	}
	p->a.data = data;
	p->a.len = len;
}

/* Bytes the engine made (a reply, a rewrite): copy them to the arena. */
static void
emit_copy(struct session *s, enum proto_side to, const char *data, size_t len)
{
	enum session_act k = to == PROTO_CLIENT ? SESSION_TO_CLIENT :
	    SESSION_TO_BACKEND;
	struct pending *last = s->nacts ? &s->acts[s->nacts - 1] : NULL;
	struct pending *p;
	size_t ncap;
	char *na;

	if (len == 0)
		return;
	if (s->alen + len > s->acap) {
		ncap = s->acap ? s->acap : 1024;
		while (ncap < s->alen + len)
			ncap *= 2;
		if ((na = realloc(s->arena, ncap)) == NULL) {
			fail_nomem(s);
			return;
		}
		s->arena = na;
		s->acap = ncap;
	}
	memcpy(s->arena + s->alen, data, len);
	if (last != NULL && last->a.kind == k && last->in_arena &&
	    last->off + last->a.len == s->alen) {
		last->a.len += len;
		s->alen += len;
		return;
	}
	if ((p = act_new(s, k)) == NULL) {
		fail_nomem(s);
		return;
	}
	p->in_arena = 1;
	p->off = s->alen;
	p->a.len = len;
	s->alen += len;
}

static void
emit_close(struct session *s, const char *reason)
{
	struct pending *p;

	s->closed = 1;
	if ((p = act_new(s, SESSION_CLOSE)) == NULL)
		return;
	p->a.reason = reason;
	p->a.detail = s->detail;
}

static void
sbuf_clear(struct sbuf *b)
{

	b->pos = b->len = 0;
}

/* Make room for ${len} more bytes; the buffer is bounded. */
static int
sbuf_reserve(struct sbuf *b, size_t len, size_t max)
{
	size_t ncap;
	char *np;

	if (b->len + len > max)
		return (-1);
	if (b->len + len > b->cap) {
		ncap = b->cap ? b->cap : 4096;
		while (ncap < b->len + len)
			ncap *= 2;
		if (ncap > max)
			ncap = max;
		if ((np = realloc(b->p, ncap)) == NULL)
			return (-1);
		b->p = np;
		b->cap = ncap;
	}
	return (0);
}

/* Append ${len} bytes for which there is room. */
static void
sbuf_put(struct sbuf *b, const char *data, size_t len)
{

	assert(b->len + len <= b->cap || len == 0);
	if (len > 0)
		memcpy(b->p + b->len, data, len);
	b->len += len;
}

/* Keep ${len} bytes for later; the buffer is bounded. */
static int
sbuf_add(struct sbuf *b, const char *data, size_t len, size_t max)
{

	if (sbuf_reserve(b, len, max) < 0)
		return (-1);
	sbuf_put(b, data, len);
	return (0);
}

/* Drop what is consumed; only between calls, when no action points in. */
static void
sbuf_compact(struct sbuf *b)
{

	if (b->pos == 0)
		return;
	memmove(b->p, b->p + b->pos, b->len - b->pos);
	b->len -= b->pos;
	b->pos = 0;
	if (b->len == 0 && b->cap > 65536) {
		free(b->p);
		b->p = NULL;
		b->cap = 0;
	}
}

static enum proto_side
other(enum proto_side side)
{

	return (side == PROTO_CLIENT ? PROTO_BACKEND : PROTO_CLIENT);
}

static const char *
side_name(enum proto_side side)
{

	return (side == PROTO_CLIENT ? "client" : "backend");
}

/**
 * session_new(conf):
 * Make the engine for one connection.
 */
struct session *
session_new(const struct session_conf *conf)
{
	struct session *s;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		return (NULL);
	s->c = *conf;
	if ((s->st = calloc(1, conf->ops->state_size)) == NULL) {
		free(s);
		return (NULL);
	}
	conf->ops->init(s->st, &s->c.opts);
	s->tls = conf->opts.client_on_tls;
	return (s);
}

void
session_free(struct session *s)
{
	int i;

	if (s == NULL)
		return;
	for (i = 0; i < 2; i++)
		free(s->in[i].p);
	free(s->acts);
	free(s->view);
	free(s->arena);
	free(s->st);
	free(s);
}

/* Start a call: what the last one handed out is no longer referenced. */
static void
begin(struct session *s)
{

	s->nacts = 0;
	s->alen = 0;
	if (s->acap > 65536) {
		free(s->arena);
		s->arena = NULL;
		s->acap = 0;
	}
	sbuf_compact(&s->in[PROTO_CLIENT]);
	sbuf_compact(&s->in[PROTO_BACKEND]);
}

/*
 * While the client is in plaintext on a STARTTLS listener a line must be
 * plain text: a CR that does not end it, or a control character other than
 * tab, closes the connection as NUL does (a backend that ends lines on CR
 * would otherwise read a second command inside the first).
 */
static int
bad_control(const char *p, size_t len)
{
	size_t i;
	unsigned char ch;

	len = proto_chomp(p, len);
	for (i = 0; i < len; i++) {
		ch = (unsigned char)p[i];
		if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
			return (1);
	}
	return (0);
}

/*
 * Checks on a line (${whole}: or the start of one) before the handler sees
 * it; 0, or -1 and closed.
 */
static int
line_ok(struct session *s, enum proto_side side, const char *p, size_t len,
    int whole)
{
	int plain = !s->c.opts.client_on_tls && !s->tls;

	if (plain && memchr(p, '\0', len) != NULL) {
		snprintf(s->detail, sizeof(s->detail), "NUL byte from %s",
		    side_name(side));
		emit_close(s, "nul_byte");
		return (-1);
	}
	if (plain && whole && s->c.opts.starttls && side == PROTO_CLIENT &&
	    bad_control(p, len)) {
		snprintf(s->detail, sizeof(s->detail), "control character "
		    "from the client before TLS");
		emit_close(s, "control_char");
		return (-1);
	}
	return (0);
}

/* The other side's unhandled bytes go on as they are (passthrough). */
static void
flush_other(struct session *s, enum proto_side side)
{
	struct sbuf *b = &s->in[other(side)];

	emit_ref(s, side, b->p + b->pos, b->len - b->pos);
	b->pos = b->len;
}

/*
 * Carry out the handler's verdict on one line from ${side}.  Return 1 if
 * the line is consumed, 0 if it is held (offered again later).
 */
static int
verdict(struct session *s, enum proto_side side, enum proto_verdict v,
    const char *line, size_t len)
{
	const struct proto_out *out = s->c.out;
	enum proto_side to = other(side);
	char buf[512];
	size_t n;

	switch (v) {
	case PROTO_FORWARD:
		emit_ref(s, to, line, len);
		break;
	case PROTO_REWRITE:
		emit_copy(s, to, out->buf, out->len);
		break;
	case PROTO_REPLY:
		emit_copy(s, side, out->buf, out->len);
		break;
	case PROTO_DROP:
		break;
	case PROTO_HOLD:
		s->held = 1;
		return (0);
	case PROTO_PASSTHROUGH:
		if (out->len > 0)
			emit_copy(s, to, out->buf, out->len);
		else
			emit_ref(s, to, line, len);
		s->passthrough = 1;
		s->held = 0;
		flush_other(s, side);
		break;
	case PROTO_STARTTLS:
		/*
		 * CVE-2011-0411: whatever the client sent after STARTTLS is
		 * dropped, and the pre-TLS backend session with it.
		 */
		emit_copy(s, PROTO_CLIENT, out->buf, out->len);
		if (act_new(s, SESSION_START_TLS) == NULL)
			fail_nomem(s);
		/* input() empties both buffers once the run stops. */
		s->tlswait = 1;
		break;
	case PROTO_CLOSE:
		/* A backend line that closes tells the client, not the
		 * backend. */
		if (out->len > 0)
			emit_copy(s, PROTO_CLIENT, out->buf, out->len);
		else if (side == PROTO_BACKEND) {
			n = proto_unavailable(s->c.proto, s->c.opts.hostname,
			    buf, sizeof(buf));
			emit_copy(s, PROTO_CLIENT, buf, n);
		}
		s->detail[0] = '\0';
		emit_close(s, "protocol");
		break;
	}
	return (1);
}

/* The handler's verdict on one line from ${side}. */
static enum proto_verdict
handler_line(struct session *s, enum proto_side side, const char *p,
    size_t len)
{

	s->c.out->len = 0;
	if (side == PROTO_CLIENT)
		return (s->c.ops->client_line(s->st, p, len, s->c.out));
	return (s->c.ops->backend_line(s->st, p, len, s->c.out));
}

/* Offer one line to the handler; return 1 if consumed. */
static int
offer(struct session *s, enum proto_side side, const char *p, size_t len)
{
	enum proto_verdict v;

	v = handler_line(s, side, p, len);
	/* The interface: only client lines may be held or answered. */
	if (side == PROTO_BACKEND && (v == PROTO_HOLD || v == PROTO_REPLY ||
	    v == PROTO_STARTTLS)) {
		snprintf(s->detail, sizeof(s->detail), "handler verdict %d "
		    "on a backend line", (int)v);
		emit_close(s, "protocol");
		return (1);
	}
	return (verdict(s, side, v, p, len));
}

/*
 * Inside a long line: up to its LF, passed on (longrun 1) or dropped (2).
 * A long line that ends in a bare LF is passed on ending in CRLF, as the
 * handlers do for the lines they see (SMTP smuggling, CVE-2023-51764).
 */
static size_t
long_tail(struct session *s, enum proto_side side, const char *p, size_t n)
{
	const char *lf = memchr(p, '\n', n);
	size_t len = lf != NULL ? (size_t)(lf - p) + 1 : n;
	int cr = len >= 2 ? p[len - 2] == '\r' : s->lastcr[side];

	if (s->longrun[side] == 1) {
		if (lf != NULL && !cr) {
			emit_ref(s, other(side), p, len - 1);
			emit_copy(s, other(side), "\r\n", 2);
		} else
			emit_ref(s, other(side), p, len);
	}
	s->lastcr[side] = p[len - 1] == '\r';
	if (lf != NULL)
		s->longrun[side] = 0;
	return (len);
}

/*
 * A line too long for the buffer, once the client is on TLS: show the
 * handler its head as a line; if it lets it pass, pass the head and stream
 * the rest.  Return the bytes consumed (0: closed).
 */
static size_t
long_line(struct session *s, enum proto_side side, const char *p, size_t n)
{
	char head[LONG_HEAD + 2];
	enum proto_verdict v;

	memcpy(head, p, LONG_HEAD);
	memcpy(head + LONG_HEAD, "\r\n", 2);
	v = handler_line(s, side, head, sizeof(head));
	if (v == PROTO_CLOSE) {
		(void)verdict(s, side, v, head, sizeof(head));
		return (0);
	}
	if (v != PROTO_FORWARD && v != PROTO_DROP) {
		snprintf(s->detail, sizeof(s->detail), "%s line longer than "
		    "%zu octets", side_name(side), s->c.ops->max_line);
		emit_close(s, "line_too_long");
		return (0);
	}
	s->longrun[side] = v == PROTO_FORWARD ? 1 : 2;
	return (long_tail(s, side, p, n));
}

/* The unfinished line at ${p}: wait for more, stream it, or close. */
static size_t
partial(struct session *s, enum proto_side side, const char *p, size_t n)
{
	size_t limit, max = s->c.ops->max_line;

	if (s->tls) {
		if (n >= max)
			return (long_line(s, side, p, n));
		return (0);
	}
	/* Do not wait for the end of a line already too long to take. */
	limit = s->c.ops->line_limit(s->st, side);
	if (limit > max)
		limit = max;
	if (n >= limit) {
		snprintf(s->detail, sizeof(s->detail), "%s line longer than "
		    "%zu octets", side_name(side), limit);
		emit_close(s, "line_too_long");
	}
	return (0);
}

/* One step over the bytes at ${p}: return how many were consumed. */
static size_t
step(struct session *s, enum proto_side side, const char *p, size_t n)
{
	size_t raw, len, max = s->c.ops->max_line;
	const char *eol;

	if (s->passthrough) {
		emit_ref(s, other(side), p, n);
		return (n);
	}
	if (s->longrun[side])
		return (long_tail(s, side, p, n));
	raw = s->c.ops->raw(s->st, side, n);
	if (raw > 0) {
		if (raw > n)
			raw = n;
		emit_ref(s, other(side), p, raw);
		return (raw);
	}
	/*
	 * Message content the handler would pass line by line unchanged goes
	 * on whole (on TLS only: before, line_ok() looks at every line).
	 */
	if (s->c.ops->span != NULL && (s->c.opts.client_on_tls || s->tls) &&
	    (len = s->c.ops->span(s->st, side, p, n)) > 0) {
		emit_ref(s, other(side), p, len);
		s->lined = 1;
		return (len);
	}
	eol = memchr(p, '\n', n > max ? max : n);
	len = eol != NULL ? (size_t)(eol - p) + 1 : n;
	if (line_ok(s, side, p, len, eol != NULL) < 0)
		return (0);
	if (eol == NULL)
		return (partial(s, side, p, n));
	if (!offer(s, side, p, len))
		return (0);
	s->lined = 1;
	return (len);
}

/* The client's buffered bytes, after a held line was released. */
static void
reoffer(struct session *s)
{
	struct sbuf *b = &s->in[PROTO_CLIENT];

	s->held = 0;
	run(s, PROTO_CLIENT, b->p, b->len, &b->pos);
}

/*
 * Handle what can be handled of the ${n} bytes at ${p} from *${pos} on,
 * advancing *${pos} step by step (it is the buffer's own position when the
 * bytes are buffered: a verdict may look at the other side's buffer).
 */
static void
run(struct session *s, enum proto_side side, const char *p, size_t n,
    size_t *pos)
{
	size_t k;

	while (*pos < n && !s->closed && !s->tlswait) {
		if (side == PROTO_CLIENT && s->held)
			break;
		s->lined = 0;
		k = step(s, side, p + *pos, n - *pos);
		if (k == 0)
			break;
		*pos += k;
		/* The backend answered: offer the held line again. */
		if (side == PROTO_BACKEND && s->lined && s->held &&
		    !s->passthrough)
			reoffer(s);
	}
}

static void
buffer_full(struct session *s, enum proto_side side)
{

	snprintf(s->detail, sizeof(s->detail), "%s buffer full",
	    side_name(side));
	emit_close(s, "buffer_full");
}

static size_t
input(struct session *s, enum proto_side side, const char *data, size_t len)
{
	struct sbuf *b = &s->in[side];
	size_t used = 0, cap = s->c.ops->max_line + READ_SLACK;
	const char *lf;

	begin(s);
	/*
	 * Bytes after the STARTTLS line never reach anyone (the client's are
	 * discarded by the caller too; the backend is being dropped).
	 */
	if (s->closed || s->tlswait || len == 0)
		return (s->nacts);
	if (b->len == 0) {
		/* Straight from the caller's bytes; keep only the rest. */
		run(s, side, data, len, &used);
		if (!s->closed && !s->tlswait && used < len &&
		    sbuf_add(b, data + used, len - used, cap) < 0)
			buffer_full(s, side);
	} else if (sbuf_reserve(b, len, cap) < 0)
		buffer_full(s, side);
	else {
		/*
		 * Complete the buffered line from the new bytes; if that
		 * empties the buffer, take the rest straight from the
		 * caller's bytes, so that a read is not copied whole because
		 * the last one ended inside a line.  The room is reserved
		 * first: actions point into the buffer, it must not move.
		 */
		lf = memchr(data, '\n', len);
		used = lf != NULL ? (size_t)(lf - data) + 1 : len;
		sbuf_put(b, data, used);
		run(s, side, b->p, b->len, &b->pos);
		if (used < len && b->pos == b->len && !s->closed &&
		    !s->tlswait && !(side == PROTO_CLIENT && s->held))
			run(s, side, data, len, &used);
		if (!s->closed && !s->tlswait)
			sbuf_put(b, data + used, len - used);
	}
	if (s->tlswait) {
		/* Still referenced by actions; compacted by the next call. */
		sbuf_clear(&s->in[PROTO_CLIENT]);
		sbuf_clear(&s->in[PROTO_BACKEND]);
	}
	return (s->nacts);
}

size_t
session_client(struct session *s, const char *data, size_t len)
{

	return (input(s, PROTO_CLIENT, data, len));
}

size_t
session_backend(struct session *s, const char *data, size_t len)
{

	return (input(s, PROTO_BACKEND, data, len));
}

/**
 * session_client_tls(s):
 * The client's TLS is up after STARTTLS; the backend is a fresh one.
 */
size_t
session_client_tls(struct session *s)
{

	begin(s);
	if (s->closed)
		return (0);
	s->tls = 1;
	if (!s->tlswait)
		return (0);
	s->tlswait = 0;
	s->held = 0;
	s->longrun[0] = s->longrun[1] = 0;
	sbuf_clear(&s->in[PROTO_CLIENT]);
	sbuf_clear(&s->in[PROTO_BACKEND]);
	s->c.ops->tls_ready(s->st);
	return (0);
}

const struct session_action *
session_actions(const struct session *cs, size_t *n)
{
	struct session *s = (struct session *)(uintptr_t)cs;
	struct session_action *v;
	size_t i;

	*n = 0;
	if (s->nacts == 0)
		return (NULL);
	if (s->nacts > s->viewcap) {
		if ((v = realloc(s->view, s->actcap * sizeof(*v))) == NULL)
			return (NULL);
		s->view = v;
		s->viewcap = s->actcap;
	}
	v = s->view;
	for (i = 0; i < s->nacts; i++) {
		v[i] = s->acts[i].a;
		if (s->acts[i].in_arena)
			v[i].data = s->arena + s->acts[i].off;
	}
	*n = s->nacts;
	return (v);
}

int
session_client_readable(const struct session *s)
{
	const struct sbuf *b = &s->in[PROTO_CLIENT];

	return (!s->held || b->len - b->pos < s->c.ops->max_line);
}

int
session_parsing(const struct session *s)
{

	return (!s->passthrough && !s->closed);
}

size_t
session_footprint(const struct session *s)
{

	return (sizeof(*s) + s->c.ops->state_size + s->in[0].cap +
	    s->in[1].cap + s->acap + s->actcap * sizeof(*s->acts) +
	    s->viewcap * sizeof(*s->view));
}

int
session_made(const struct session *s, const char *p)
{

	return (s->arena != NULL && p >= s->arena && p < s->arena + s->alen);
}

void *
session_proto_state(const struct session *s)
{

	return (s->st);
}

const char *
session_state(const struct session *s)
{

	return (s->c.ops->strstate(s->st));
}
