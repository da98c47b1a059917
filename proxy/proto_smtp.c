/*
 * proto_smtp: the SMTP handler (RFC 5321, STARTTLS RFC 3207, PIPELINING
 * RFC 2920, CHUNKING RFC 3030, AUTH RFC 4954).  No I/O.
 *
 * The handler keeps one framing model for both directions, the backend's
 * own (a proxy that reads the bytes otherwise re-opens injection): a queue of the commands forwarded to the backend whose replies
 * are still owed, so that it knows which reply is the EHLO reply, when DATA
 * content starts (354) and ends ("."), which bytes are a BDAT chunk, and
 * which client lines are SASL responses (334).  A client line whose meaning
 * depends on a reply not yet received (the line after DATA or AUTH) is held
 * until that reply has been relayed.
 *
 * Line limits: conn enforces max_line (64 KiB, CRLF included) on every line,
 * so that message content with long lines still passes after TLS.  Before
 * TLS on a STARTTLS listener the handler itself closes the connection on a
 * command line over 512 octets (RFC 5321 4.5.3.1.4) when require_tls is set,
 * over 2048 (Postfix's line_length_limit, room for DSN parameters) when it
 * is not, and on a SASL response over 12288 octets (RFC 4954 4).
 *
 * XCLIENT and XFORWARD are refused from clients everywhere and removed from
 * EHLO replies: the backend may trust mailtlsd's address for them.
 */
#include <stdint.h>
#include <string.h>

#include "proto_base.h"

#define SMTP_MAX_LINE		65536	/* conn's limit; DATA content */
#define SMTP_CMD_MAX		512	/* before TLS, require_tls = yes */
#define SMTP_CMD_MAX_OPEN	2048	/* before TLS, require_tls = no */
#define SMTP_SASL_MAX		12288	/* RFC 4954 4 */
#define SMTP_HELD_MAX		1024	/* one EHLO reply line (RFC: 512) */
#define SMTP_BDAT_MAX		((uint64_t)1 << 62)

enum smtp_state {
	SMTP_COMMAND,		/* the next client line is a command */
	SMTP_WAIT,		/* DATA or AUTH forwarded: hold client lines
				   until its reply says what they are */
	SMTP_CONTENT,		/* after 354: message content up to "." */
	SMTP_SASL,		/* after 334: the next line is a SASL response */
	SMTP_STARTTLS,		/* 220 sent for STARTTLS, handshake pending */
	SMTP_DEAD,		/* close on anything */
};

/* What a forwarded command is, for reading its reply. */
enum smtp_cmd {
	SMTP_C_GREETING,
	SMTP_C_EHLO,
	SMTP_C_HELO,
	SMTP_C_MAIL,
	SMTP_C_RCPT,
	SMTP_C_DATA,
	SMTP_C_DOT,		/* the "." that ends DATA content */
	SMTP_C_BDAT,
	SMTP_C_BDAT_LAST,
	SMTP_C_AUTH,		/* AUTH, and each SASL response */
	SMTP_C_RSET,
	SMTP_C_QUIT,
	SMTP_C_STARTTLS,
	SMTP_C_NOOP,
	SMTP_C_XCLIENT,		/* XCLIENT, XFORWARD: never forwarded */
	SMTP_C_OTHER,
};

static const struct proto_cmd commands[] = {
	{ "EHLO",	SMTP_C_EHLO,		PROTO_F_PRETLS },
	{ "HELO",	SMTP_C_HELO,		PROTO_F_PRETLS },
	{ "STARTTLS",	SMTP_C_STARTTLS,	PROTO_F_PRETLS },
	{ "NOOP",	SMTP_C_NOOP,		PROTO_F_PRETLS },
	{ "RSET",	SMTP_C_RSET,		PROTO_F_PRETLS },
	{ "QUIT",	SMTP_C_QUIT,		PROTO_F_PRETLS },
	{ "MAIL",	SMTP_C_MAIL,		0 },
	{ "RCPT",	SMTP_C_RCPT,		0 },
	{ "DATA",	SMTP_C_DATA,		0 },
	{ "BDAT",	SMTP_C_BDAT,		0 },
	{ "AUTH",	SMTP_C_AUTH,		0 },
	{ "XCLIENT",	SMTP_C_XCLIENT,		0 },
	{ "XFORWARD",	SMTP_C_XCLIENT,		0 },
};

struct smtp {
	struct proto_base b;

	enum smtp_state	 state;
	int		 authed;	/* 235 seen */
	int		 in_mail;	/* MAIL accepted, transaction open */
	int		 swallow;	/* drop the fresh backend's greeting */
	uint64_t	 bdat;		/* BDAT chunk bytes still to pass */

	struct proto_ring q;		/* enum smtp_cmd owed a reply */

	unsigned	 rlines;	/* lines of the current reply so far */
	int		 ehlo;		/* current reply is a 250 EHLO reply */
	size_t		 heldlen;	/* EHLO line kept back, see ehlo_line */
	char		 held[SMTP_HELD_MAX];
};

static const char *const R_READY = "220 2.0.0 Ready to start TLS\r\n";
static const char *const R_MUSTTLS =
    "530 5.7.0 Must issue a STARTTLS command first\r\n";
static const char *const R_TLSACTIVE =
    "503 5.5.1 Error: TLS already active\r\n";
static const char *const R_INMAIL =
    "503 5.5.1 Error: MAIL transaction in progress\r\n";
static const char *const R_AUTHED =
    "503 5.5.1 Error: already authenticated\r\n";
static const char *const R_NOTLS =
    "502 5.5.1 Error: command not implemented\r\n";
static const char *const R_TLSARG = "501 5.5.4 Syntax: STARTTLS\r\n";
/* Postfix's own answer to a client not authorized for XCLIENT/XFORWARD. */
static const char *const R_XCLIENT =
    "550 5.7.0 Error: insufficient authorization\r\n";
static const char *const R_BDATARG = "501 5.5.4 Syntax: BDAT count [LAST]\r\n";
static const char *const R_LONG = "500 5.5.2 Error: line too long\r\n";
static const char *const R_BARELF =
    "500 5.5.2 Error: bare <LF> in an overlong line\r\n";

/* White space as Postfix's tokenizer sees it (ISSPACE, C locale). */
static int
is_space(char c)
{

	return (c == ' ' || (c >= '\t' && c <= '\r'));
}

static void
smtp_init(void *st, const struct proto_opts *o)
{
	struct smtp *s = st;

	memset(s, 0, sizeof(*s));
	proto_base_init(&s->b, o);
	s->state = SMTP_COMMAND;

	/* The greeting is the first reply the backend owes. */
	(void)proto_ring_push(&s->q, SMTP_C_GREETING);
}

static size_t
smtp_raw(void *st, enum proto_side side, size_t avail)
{
	struct smtp *s = st;
	size_t n;

	if (side != PROTO_CLIENT || s->state != SMTP_COMMAND || s->bdat == 0)
		return (0);
	n = avail < s->bdat ? avail : (size_t)s->bdat;
	s->bdat -= n;
	return (n);
}

/* Message content but its last line and bare-LF lines: pass it on whole. */
static size_t
smtp_span(void *st, enum proto_side side, const char *p, size_t avail)
{
	struct smtp *s = st;

	if (side != PROTO_CLIENT || s->state != SMTP_CONTENT)
		return (0);
	return (proto_span_body(p, avail, SMTP_MAX_LINE, 1));
}

/*
 * Parse the argument of BDAT strictly: 1*DIGIT [SP "LAST"] (RFC 3030 2).
 * Anything else is refused locally, so that the proxy and the backend never
 * disagree on which bytes are a chunk.
 */
static int
parse_bdat(const char *a, size_t n, uint64_t *size, int *last)
{
	size_t i = 0;
	uint64_t v = 0;

	if (n == 0 || a[0] < '0' || a[0] > '9')
		return (-1);
	for (; i < n && a[i] >= '0' && a[i] <= '9'; i++) {
		v = v * 10 + (uint64_t)(a[i] - '0');
		if (v > SMTP_BDAT_MAX || i >= 18)
			return (-1);
	}
	*last = 0;
	if (i < n) {
		if (a[i] != ' ' || !proto_word_eq(a + i + 1, n - i - 1, "LAST"))
			return (-1);
		*last = 1;
	}
	*size = v;
	return (0);
}

/* DATA content, up to and including the "." line (RFC 5321 4.1.1.4). */
static enum proto_verdict
smtp_content(struct smtp *s, const char *line, size_t len,
    struct proto_out *out)
{
	size_t n = proto_chomp(line, len);
	int barelf = (n == len - 1);

	if (n == 1 && line[0] == '.') {
		if (proto_ring_push(&s->q, SMTP_C_DOT) == -1)
			return (PROTO_HOLD);
		s->state = SMTP_COMMAND;
	}
	if (!barelf)
		return (PROTO_FORWARD);

	/*
	 * A line ending in a bare LF is passed on with CRLF, so that a backend
	 * that only honours <CRLF>.<CRLF> and the proxy, which takes LF as a
	 * line end, agree on where the message ends (SMTP smuggling,
	 * CVE-2023-51764).
	 */
	out->len = 0;
	if (proto_out_add(out, line, n) == -1 ||
	    proto_out_add(out, "\r\n", 2) == -1) {
		s->state = SMTP_DEAD;
		return (proto_out_reply(out, R_BARELF, PROTO_CLOSE));
	}
	return (PROTO_REWRITE);
}

static enum proto_verdict
smtp_command(struct smtp *s, const char *line, size_t len,
    struct proto_out *out)
{
	size_t n = proto_chomp(line, len);
	size_t vs, ve;
	const struct proto_cmd *c;
	const char *arg;
	size_t alen;
	enum smtp_cmd cmd = SMTP_C_OTHER;
	int flags = 0, last = 0;
	uint64_t size = 0;
	const char *r = NULL;
	enum proto_verdict v = PROTO_REPLY;

	if (proto_pretls(&s->b) &&
	    len > (s->b.require_tls ? SMTP_CMD_MAX : SMTP_CMD_MAX_OPEN)) {
		s->state = SMTP_DEAD;
		return (proto_out_reply(out, R_LONG, PROTO_CLOSE));
	}

	/*
	 * The verb as Postfix's smtpd_token() reads it: leading white space
	 * skipped, ended by white space or a NUL (where its C string ends).
	 * A narrower reading would let " XCLIENT", "EHLO\tx" or "BDAT\t2"
	 * mean one thing here and another to the backend.
	 */
	for (vs = 0; vs < n && is_space(line[vs]); vs++)
		continue;
	for (ve = vs; ve < n && !is_space(line[ve]) && line[ve] != '\0'; ve++)
		continue;
	arg = line + ve + (ve < n);
	alen = n - ve - (ve < n);
	if ((c = proto_cmd_find(commands, sizeof(commands) /
	    sizeof(commands[0]), line + vs, ve - vs)) != NULL) {
		cmd = (enum smtp_cmd)c->cmd;
		flags = c->flags;
	}

	/*
	 * Decide whether the proxy answers this command itself.  XCLIENT and
	 * XFORWARD are for proxies the backend trusts, which is what mailtlsd
	 * is: from a client they would claim another address or login, so
	 * they are refused on every listener, before and after TLS.
	 */
	if (cmd == SMTP_C_XCLIENT)
		r = R_XCLIENT;
	else if (cmd == SMTP_C_STARTTLS) {
		if (vs > 0 || ve < n)
			r = R_TLSARG;
		else if (proto_ontls(&s->b))
			r = R_TLSACTIVE;
		else if (!s->b.starttls)
			r = R_NOTLS;
		else if (s->authed)
			r = R_AUTHED;
		else if (s->in_mail)
			r = R_INMAIL;
		else {
			r = R_READY;
			v = PROTO_STARTTLS;
		}
	} else if (proto_strict(&s->b) && !(flags & PROTO_F_PRETLS)) {
		r = R_MUSTTLS;
		/*
		 * A refused BDAT is followed by a chunk the proxy cannot skip
		 * without reading it as lines; CHUNKING is not advertised
		 * before TLS, so only a broken client gets here.
		 */
		if (cmd == SMTP_C_BDAT)
			v = PROTO_CLOSE;
	} else if (cmd == SMTP_C_BDAT) {
		if (parse_bdat(arg, alen, &size, &last) == -1)
			r = R_BDATARG;
		else if (last)
			cmd = SMTP_C_BDAT_LAST;
	}

	if (r != NULL) {
		/* RFC 2920: answer in order, after every earlier reply. */
		if (s->q.len > 0)
			return (PROTO_HOLD);
		if (v == PROTO_STARTTLS)
			s->state = SMTP_STARTTLS;
		else if (v == PROTO_CLOSE)
			s->state = SMTP_DEAD;
		return (proto_out_reply(out, r, v));
	}

	if (proto_ring_push(&s->q, cmd) == -1)
		return (PROTO_HOLD);
	if (cmd == SMTP_C_DATA || cmd == SMTP_C_AUTH)
		s->state = SMTP_WAIT;
	else if (cmd == SMTP_C_BDAT || cmd == SMTP_C_BDAT_LAST)
		s->bdat = size;
	return (PROTO_FORWARD);
}

static enum proto_verdict
smtp_client(void *st, const char *line, size_t len, struct proto_out *out)
{
	struct smtp *s = st;

	switch (s->state) {
	case SMTP_COMMAND:
		return (smtp_command(s, line, len, out));
	case SMTP_WAIT:
		return (PROTO_HOLD);
	case SMTP_CONTENT:
		return (smtp_content(s, line, len, out));
	case SMTP_SASL:
		if (proto_pretls(&s->b) && len > SMTP_SASL_MAX) {
			s->state = SMTP_DEAD;
			return (proto_out_reply(out, R_LONG, PROTO_CLOSE));
		}
		/* RFC 4954 4: each response, "*" included, gets a reply. */
		if (proto_ring_push(&s->q, SMTP_C_AUTH) == -1)
			return (PROTO_HOLD);
		s->state = SMTP_WAIT;
		return (PROTO_FORWARD);
	case SMTP_STARTTLS:
		/* The engine discards these; never pass them on. */
		return (PROTO_DROP);
	case SMTP_DEAD:
	default:
		return (PROTO_CLOSE);
	}
}

/* Is this EHLO keyword line (text after "250-") to be removed? */
static int
drop_keyword(const struct smtp *s, const char *t, size_t n)
{
	size_t k;

	for (k = 0; k < n && t[k] != ' ' && t[k] != '='; k++)
		continue;
	/* Only the proxy offers STARTTLS: it cannot relay a backend's TLS. */
	if (proto_word_eq(t, k, "STARTTLS"))
		return (1);
	/* Refused from clients (smtp_command): never offered to them. */
	if (proto_word_eq(t, k, "XCLIENT") || proto_word_eq(t, k, "XFORWARD"))
		return (1);
	if (!proto_strict(&s->b))
		return (0);
	/* Also "AUTH=" (Postfix broken_sasl_auth_clients). */
	if (proto_word_eq(t, k, "AUTH"))
		return (1);
	/* MAIL is refused before TLS, and a refused chunk cannot be skipped. */
	return (proto_word_eq(t, k, "CHUNKING"));
}

/*
 * One line of a 250 EHLO reply.  Lines are passed on one line late, so that
 * when the backend's last line is removed the line before it can become the
 * last one ("250 " instead of "250-"): the reply stays well-formed.
 * STARTTLS is inserted before the last line, or after the first line of a
 * one-line reply (the first line is the server's domain, RFC 5321 4.1.1.1).
 */
static enum proto_verdict
ehlo_line(struct smtp *s, const char *line, size_t len, size_t n, int final,
    struct proto_out *out)
{
	int add = proto_pretls(&s->b);
	int first = (s->rlines == 0);
	int keep = first || n < 4 || !drop_keyword(s, line + 4, n - 4);
	static const char starttls_more[] = "250-STARTTLS\r\n";
	static const char starttls_last[] = "250 STARTTLS\r\n";
	size_t skip;

	out->len = 0;
	if (first && final) {
		if (!add)
			return (PROTO_FORWARD);
		skip = n > 3 ? 4 : 3;
		if (proto_out_add(out, line, 3) == -1 ||
		    proto_out_add(out, "-", 1) == -1 ||
		    proto_out_add(out, line + skip, len - skip) == -1 ||
		    proto_out_add(out, starttls_last,
		    sizeof(starttls_last) - 1) == -1)
			return (PROTO_CLOSE);
		return (PROTO_REWRITE);
	}

	if (!final) {
		if (!keep)
			return (PROTO_DROP);
		if (len > sizeof(s->held))
			return (PROTO_CLOSE);
		(void)proto_out_add(out, s->held, s->heldlen);
		memcpy(s->held, line, len);
		s->heldlen = len;
		return (out->len > 0 ? PROTO_REWRITE : PROTO_DROP);
	}

	/* The last line; the first line is always held by now. */
	if (keep) {
		if (proto_out_add(out, s->held, s->heldlen) == -1 ||
		    (add && proto_out_add(out, starttls_more,
		    sizeof(starttls_more) - 1) == -1) ||
		    proto_out_add(out, line, len) == -1)
			return (PROTO_CLOSE);
	} else if (add) {
		if (proto_out_add(out, s->held, s->heldlen) == -1 ||
		    proto_out_add(out, starttls_last,
		    sizeof(starttls_last) - 1) == -1)
			return (PROTO_CLOSE);
	} else {
		s->held[3] = ' ';
		if (proto_out_add(out, s->held, s->heldlen) == -1)
			return (PROTO_CLOSE);
	}
	s->heldlen = 0;
	return (PROTO_REWRITE);
}

static enum proto_verdict
smtp_backend(void *st, const char *line, size_t len, struct proto_out *out)
{
	struct smtp *s = st;
	size_t n = proto_chomp(line, len);
	int isnum = n >= 3 && line[0] >= '0' && line[0] <= '9' &&
	    line[1] >= '0' && line[1] <= '9' && line[2] >= '0' &&
	    line[2] <= '9';
	int final = !(isnum && n >= 4 && line[3] == '-');
	int code = isnum ? (line[0] - '0') * 100 + (line[1] - '0') * 10 +
	    (line[2] - '0') : 0;
	enum smtp_cmd cmd;
	enum proto_verdict v = PROTO_FORWARD;

	if (s->state == SMTP_DEAD)
		return (PROTO_CLOSE);

	/*
	 * RFC 3207 4.2: after TLS the client starts afresh; the new backend
	 * session's greeting was already seen by the client before TLS.  A
	 * backend that refuses the new session ends it.
	 */
	if (s->swallow) {
		if (final) {
			s->swallow = 0;
			if (code / 100 != 2) {
				s->state = SMTP_DEAD;
				return (PROTO_CLOSE);
			}
		}
		return (PROTO_DROP);
	}

	/* No backend byte between our 220 and the handshake. */
	if (s->state == SMTP_STARTTLS)
		return (PROTO_DROP);

	if (s->q.len == 0)
		return (PROTO_FORWARD);	/* unsolicited, e.g. 421 */
	cmd = (enum smtp_cmd)proto_ring_peek(&s->q);

	if (s->rlines == 0)
		s->ehlo = (cmd == SMTP_C_EHLO && code == 250);
	if (s->ehlo)
		v = ehlo_line(s, line, len, n, final, out);
	if (v == PROTO_CLOSE) {
		s->state = SMTP_DEAD;
		out->len = 0;
		return (v);
	}
	s->rlines++;
	if (!final)
		return (v);

	/* The reply is complete: it answers the oldest command. */
	s->rlines = 0;
	s->ehlo = 0;
	(void)proto_ring_pop(&s->q);
	switch (cmd) {
	case SMTP_C_EHLO:
	case SMTP_C_HELO:
	case SMTP_C_RSET:
		/* RFC 5321 4.1.4: these end a transaction. */
		if (code / 100 == 2)
			s->in_mail = 0;
		break;
	case SMTP_C_MAIL:
		if (code / 100 == 2)
			s->in_mail = 1;
		break;
	case SMTP_C_DOT:
	case SMTP_C_BDAT_LAST:
		s->in_mail = 0;
		break;
	case SMTP_C_DATA:
		s->state = code == 354 ? SMTP_CONTENT : SMTP_COMMAND;
		break;
	case SMTP_C_AUTH:
		s->state = code == 334 ? SMTP_SASL : SMTP_COMMAND;
		/*
		 * Parsing goes on after AUTH: a backend that does TLS itself
		 * would offer and accept STARTTLS again.
		 */
		if (code == 235)
			s->authed = 1;
		break;
	default:
		break;
	}
	return (v);
}

static void
smtp_tls_ready(void *st)
{
	struct smtp *s = st;

	/* RFC 3207 4.2: discard everything learned before STARTTLS. */
	s->state = SMTP_COMMAND;
	s->b.tls = 1;
	s->authed = 0;
	s->in_mail = 0;
	s->bdat = 0;
	s->q.len = 0;
	s->rlines = 0;
	s->ehlo = 0;
	s->heldlen = 0;
	s->swallow = 1;
}

static const char *
smtp_strstate(const void *st)
{
	const struct smtp *s = st;

	if (s->swallow)
		return ("greeting");
	switch (s->state) {
	case SMTP_COMMAND:
		return (s->bdat > 0 ? "bdat" : "command");
	case SMTP_WAIT:
		return ("wait");
	case SMTP_CONTENT:
		return ("data");
	case SMTP_SASL:
		return ("auth");
	case SMTP_STARTTLS:
		return ("starttls");
	case SMTP_DEAD:
	default:
		return ("dead");
	}
}

static size_t
smtp_line_limit(const void *st, enum proto_side side)
{
	const struct smtp *s = st;

	if (side == PROTO_CLIENT && proto_pretls(&s->b)) {
		if (s->state == SMTP_COMMAND)
			return (s->b.require_tls ? SMTP_CMD_MAX :
			    SMTP_CMD_MAX_OPEN);
		if (s->state == SMTP_SASL)
			return (SMTP_SASL_MAX);
	}
	return (SMTP_MAX_LINE);
}

const struct proto_ops proto_smtp_ops = {
	.name = "smtp",
	.state_size = sizeof(struct smtp),
	.max_line = SMTP_MAX_LINE,
	.init = smtp_init,
	.raw = smtp_raw,
	.span = smtp_span,
	.line_limit = smtp_line_limit,
	.client_line = smtp_client,
	.backend_line = smtp_backend,
	.tls_ready = smtp_tls_ready,
	.strstate = smtp_strstate,
};
