/*
 * proto_pop3: the POP3 handler (RFC 1939, CAPA and PIPELINING RFC 2449,
 * STLS RFC 2595, AUTH RFC 5034).  No I/O.
 *
 * The handler keeps a queue of the commands forwarded to the backend whose
 * responses are still owed, so that it knows which responses are multi-line
 * (CAPA, LIST and UIDL without argument, RETR, TOP, AUTH without argument:
 * after +OK, dot-stuffed lines up to "."), which "+ " lines are SASL
 * challenges, and when authentication succeeded.  Lines the proxy answers
 * itself (STLS, refusals) wait until every earlier response has been
 * relayed (RFC 2449 6.6 keeps responses in order).
 *
 * Line limits: conn enforces max_line (64 KiB, CRLF included) on every
 * line, so that message lines in RETR pass.  Before TLS on a STLS listener
 * the handler closes the connection on a client command line over 512
 * octets (RFC 2449 4 allows 255 for commands and 512 for responses; 512 is
 * lenient toward long APOP/USER arguments) and on a SASL response over
 * 12288 octets.
 */
#include <string.h>

#include "proto_base.h"

#define POP3_MAX_LINE	65536	/* conn's limit; RETR content */
#define POP3_CMD_MAX	512	/* client command lines before TLS */
#define POP3_SASL_MAX	12288	/* SASL responses before TLS */

enum pop3_state {
	POP3_COMMAND,		/* the next client line is a command */
	POP3_WAIT,		/* AUTH forwarded: hold client lines until the
				   backend sends "+ " or the result */
	POP3_SASL,		/* after "+ ": the next line is a SASL response */
	POP3_STARTTLS,		/* +OK sent for STLS, handshake pending */
	POP3_DEAD,		/* close on anything */
};

enum pop3_cmd {
	POP3_C_GREETING,
	POP3_C_CAPA,		/* multi-line after +OK */
	POP3_C_LISTALL,		/* LIST or UIDL without argument: multi-line */
	POP3_C_RETR,		/* RETR, TOP: multi-line */
	POP3_C_AUTHLIST,	/* AUTH without argument: multi-line */
	POP3_C_AUTH,
	POP3_C_PASS,		/* PASS, APOP: end of authentication */
	POP3_C_STLS,
	POP3_C_LIST,		/* LIST, UIDL with argument */
	POP3_C_OTHER,
};

static const struct proto_cmd commands[] = {
	{ "CAPA",	POP3_C_CAPA,	PROTO_F_PRETLS },
	{ "STLS",	POP3_C_STLS,	PROTO_F_PRETLS },
	{ "NOOP",	POP3_C_OTHER,	PROTO_F_PRETLS },
	{ "QUIT",	POP3_C_OTHER,	PROTO_F_PRETLS },
	{ "USER",	POP3_C_OTHER,	0 },
	{ "PASS",	POP3_C_PASS,	0 },
	{ "APOP",	POP3_C_PASS,	0 },
	{ "AUTH",	POP3_C_AUTH,	0 },
	{ "LIST",	POP3_C_LIST,	0 },
	{ "UIDL",	POP3_C_LIST,	0 },
	{ "RETR",	POP3_C_RETR,	0 },
	{ "TOP",	POP3_C_RETR,	0 },
};

struct pop3 {
	struct proto_base b;

	enum pop3_state	 state;
	int		 authed;
	int		 swallow;	/* drop the fresh backend's greeting */
	int		 multi;		/* inside a multi-line response */
	enum pop3_cmd	 multicmd;	/* ... to this command */

	struct proto_ring q;		/* enum pop3_cmd owed a response */
};

static const char *const R_READY = "+OK Begin TLS negotiation\r\n";
static const char *const R_MUSTTLS = "-ERR Must issue STLS first\r\n";
static const char *const R_TLSACTIVE = "-ERR TLS already active\r\n";
static const char *const R_AUTHED = "-ERR STLS not allowed after login\r\n";
static const char *const R_NOTLS = "-ERR STLS not available\r\n";
static const char *const R_TLSARG = "-ERR STLS takes no arguments\r\n";
static const char *const R_LONG = "-ERR Line too long\r\n";

static void
pop3_init(void *st, const struct proto_opts *o)
{
	struct pop3 *s = st;

	memset(s, 0, sizeof(*s));
	proto_base_init(&s->b, o);
	s->state = POP3_COMMAND;
	(void)proto_ring_push(&s->q, POP3_C_GREETING);
}

static size_t
pop3_raw(void *st, enum proto_side side, size_t avail)
{

	(void)st;
	(void)side;
	(void)avail;
	return (0);
}

/* A multi-line response but its last line (CAPA is filtered line by line). */
static size_t
pop3_span(void *st, enum proto_side side, const char *p, size_t avail)
{
	struct pop3 *s = st;

	if (side != PROTO_BACKEND || !s->multi || s->multicmd == POP3_C_CAPA ||
	    s->swallow || s->state == POP3_STARTTLS || s->state == POP3_DEAD)
		return (0);
	return (proto_span_body(p, avail, POP3_MAX_LINE, 0));
}

static enum proto_verdict
pop3_command(struct pop3 *s, const char *line, size_t len,
    struct proto_out *out)
{
	size_t n = proto_chomp(line, len);
	size_t vlen;
	const struct proto_cmd *c;
	enum pop3_cmd cmd = POP3_C_OTHER;
	int flags = 0;
	const char *r = NULL;
	enum proto_verdict v = PROTO_REPLY;

	if (proto_pretls(&s->b) && len > POP3_CMD_MAX) {
		s->state = POP3_DEAD;
		return (proto_out_reply(out, R_LONG, PROTO_CLOSE));
	}
	for (vlen = 0; vlen < n && line[vlen] != ' '; vlen++)
		continue;
	if ((c = proto_cmd_find(commands, sizeof(commands) /
	    sizeof(commands[0]), line, vlen)) != NULL) {
		cmd = (enum pop3_cmd)c->cmd;
		flags = c->flags;
	}

	if (cmd == POP3_C_STLS) {
		if (vlen < n)
			r = R_TLSARG;
		else if (proto_ontls(&s->b))
			r = R_TLSACTIVE;
		else if (!s->b.starttls)
			r = R_NOTLS;
		else if (s->authed)
			r = R_AUTHED;
		else {
			r = R_READY;
			v = PROTO_STARTTLS;
		}
	} else if (proto_strict(&s->b) && !(flags & PROTO_F_PRETLS))
		r = R_MUSTTLS;

	if (r != NULL) {
		/* Answer in order, after every earlier response. */
		if (s->q.len > 0 || s->multi)
			return (PROTO_HOLD);
		if (v == PROTO_STARTTLS)
			s->state = POP3_STARTTLS;
		return (proto_out_reply(out, r, v));
	}

	/* Which responses are multi-line (RFC 1939, 2449, 5034). */
	if (cmd == POP3_C_LIST && vlen == n)
		cmd = POP3_C_LISTALL;
	else if (cmd == POP3_C_AUTH && vlen == n)
		cmd = POP3_C_AUTHLIST;
	if (proto_ring_push(&s->q, cmd) == -1)
		return (PROTO_HOLD);
	if (cmd == POP3_C_AUTH)
		s->state = POP3_WAIT;
	return (PROTO_FORWARD);
}

static enum proto_verdict
pop3_client(void *st, const char *line, size_t len, struct proto_out *out)
{
	struct pop3 *s = st;

	switch (s->state) {
	case POP3_COMMAND:
		return (pop3_command(s, line, len, out));
	case POP3_WAIT:
		return (PROTO_HOLD);
	case POP3_SASL:
		if (proto_pretls(&s->b) && len > POP3_SASL_MAX) {
			s->state = POP3_DEAD;
			return (proto_out_reply(out, R_LONG, PROTO_CLOSE));
		}
		/* RFC 5034 4: one response (or "*") per challenge. */
		s->state = POP3_WAIT;
		return (PROTO_FORWARD);
	case POP3_STARTTLS:
		return (PROTO_DROP);
	case POP3_DEAD:
	default:
		return (PROTO_CLOSE);
	}
}

/* One line of a CAPA response body (RFC 2449 5). */
static enum proto_verdict
capa_line(struct pop3 *s, const char *line, size_t len, size_t n,
    struct proto_out *out)
{
	size_t k;
	int strict = proto_strict(&s->b);

	if (n == 1 && line[0] == '.') {
		if (!proto_pretls(&s->b))
			return (PROTO_FORWARD);
		out->len = 0;
		(void)proto_out_add(out, "STLS\r\n", 6);
		(void)proto_out_add(out, line, len);
		return (PROTO_REWRITE);
	}
	for (k = 0; k < n && line[k] != ' '; k++)
		continue;
	if (proto_word_eq(line, k, "STLS"))
		return (PROTO_DROP);
	if (strict && (proto_word_eq(line, k, "USER") ||
	    proto_word_eq(line, k, "SASL")))
		return (PROTO_DROP);
	return (PROTO_FORWARD);
}

/*
 * A "+OK" greeting before TLS with require_tls: remove the APOP timestamp
 * ("<...>", RFC 1939 7), from the first "<" to the last ">", so that no
 * client answers it with an APOP digest in clear: APOP is refused before
 * TLS, but the digest of a weak password can be cracked once seen.  (The
 * fresh backend session after TLS has a timestamp of its own, which the
 * client never sees: APOP cannot work on a STLS listener after TLS either.)
 */
static enum proto_verdict
greeting_line(const char *line, size_t len, size_t n, struct proto_out *out)
{
	const char *lt = memchr(line, '<', n), *gt = NULL;
	size_t i, a, z;

	for (i = n; i > 0; i--)
		if (line[i - 1] == '>') {
			gt = line + i - 1;
			break;
		}
	if (lt == NULL || gt == NULL || gt < lt)
		return (PROTO_FORWARD);
	a = (size_t)(lt - line);
	z = (size_t)(gt - line) + 1;
	while (a > 3 && line[a - 1] == ' ')
		a--;
	out->len = 0;
	if (proto_out_add(out, line, a) == -1 ||
	    proto_out_add(out, line + z, len - z) == -1)
		return (PROTO_CLOSE);
	return (PROTO_REWRITE);
}

static enum proto_verdict
pop3_backend(void *st, const char *line, size_t len, struct proto_out *out)
{
	struct pop3 *s = st;
	size_t n = proto_chomp(line, len);
	int ok = n >= 3 && proto_word_eq(line, 3, "+OK") &&
	    (n == 3 || line[3] == ' ');
	enum pop3_cmd cmd;
	enum proto_verdict v = PROTO_FORWARD;

	if (s->state == POP3_DEAD)
		return (PROTO_CLOSE);
	if (s->swallow) {
		/* RFC 2595 4: the client starts afresh after TLS. */
		s->swallow = 0;
		if (!ok) {
			s->state = POP3_DEAD;
			return (PROTO_CLOSE);
		}
		return (PROTO_DROP);
	}
	/* No backend byte between our +OK and the handshake. */
	if (s->state == POP3_STARTTLS)
		return (PROTO_DROP);

	if (s->multi) {
		if (s->multicmd == POP3_C_CAPA)
			v = capa_line(s, line, len, n, out);
		if (n == 1 && line[0] == '.')
			s->multi = 0;
		return (v);
	}

	if (s->q.len == 0)
		return (PROTO_FORWARD);		/* unsolicited */
	cmd = (enum pop3_cmd)proto_ring_peek(&s->q);

	/* A SASL challenge: the AUTH is not over yet. */
	if (cmd == POP3_C_AUTH && n >= 1 && line[0] == '+' &&
	    (n == 1 || line[1] == ' ')) {
		if (s->state == POP3_WAIT)
			s->state = POP3_SASL;
		return (PROTO_FORWARD);
	}

	(void)proto_ring_pop(&s->q);
	switch (cmd) {
	case POP3_C_GREETING:
		if (ok && proto_strict(&s->b))
			v = greeting_line(line, len, n, out);
		if (v == PROTO_CLOSE)
			s->state = POP3_DEAD;
		break;
	case POP3_C_CAPA:
	case POP3_C_LISTALL:
	case POP3_C_RETR:
	case POP3_C_AUTHLIST:
		if (ok) {
			s->multi = 1;
			s->multicmd = cmd;
		}
		break;
	case POP3_C_AUTH:
		s->state = POP3_COMMAND;
		/* FALLTHROUGH */
	case POP3_C_PASS:
		/* Parsing goes on: STLS must never reach the backend. */
		if (ok)
			s->authed = 1;
		break;
	default:
		break;
	}
	return (v);
}

static void
pop3_tls_ready(void *st)
{
	struct pop3 *s = st;

	/* RFC 2595 4: discard everything learned before STLS. */
	s->state = POP3_COMMAND;
	s->b.tls = 1;
	s->authed = 0;
	s->multi = 0;
	s->q.len = 0;
	s->swallow = 1;
}

static const char *
pop3_strstate(const void *st)
{
	const struct pop3 *s = st;

	if (s->swallow)
		return ("greeting");
	switch (s->state) {
	case POP3_COMMAND:
		if (s->multi)
			return ("multiline");
		return (s->authed ? "transaction" : "authorization");
	case POP3_WAIT:
		return ("wait");
	case POP3_SASL:
		return ("auth");
	case POP3_STARTTLS:
		return ("starttls");
	case POP3_DEAD:
	default:
		return ("dead");
	}
}

static size_t
pop3_line_limit(const void *st, enum proto_side side)
{
	const struct pop3 *s = st;

	if (side == PROTO_CLIENT && proto_pretls(&s->b)) {
		if (s->state == POP3_COMMAND)
			return (POP3_CMD_MAX);
		if (s->state == POP3_SASL)
			return (POP3_SASL_MAX);
	}
	return (POP3_MAX_LINE);
}

const struct proto_ops proto_pop3_ops = {
	.name = "pop3",
	.state_size = sizeof(struct pop3),
	.max_line = POP3_MAX_LINE,
	.init = pop3_init,
	.raw = pop3_raw,
	.span = pop3_span,
	.line_limit = pop3_line_limit,
	.client_line = pop3_client,
	.backend_line = pop3_backend,
	.tls_ready = pop3_tls_ready,
	.strstate = pop3_strstate,
};
