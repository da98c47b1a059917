/*
 * proto_imap: the IMAP handler (RFC 9051 / RFC 3501, STARTTLS RFC 2595 and
 * RFC 9051 6.2.1, LITERAL+/LITERAL- RFC 7888, IDLE RFC 2177).  No I/O.
 *
 * One framing model for both directions, the backend's own: where the
 * proxy reads the bytes otherwise, injection is back (the CVE-2022-28220
 * parser differential):
 *
 *  - A client line ending in "{n+}" is followed by n literal bytes that
 *    belong to the command; they are passed on as raw bytes and never parsed,
 *    and the line after them continues the same command.
 *  - A client line ending in "{n}" (synchronizing) is followed by the literal
 *    only once the backend has sent a "+" continuation request.  Until the
 *    backend has answered ("+" or the command's tagged reply) the client's
 *    next line is held, so the proxy reads it as literal or as a new command
 *    exactly as the backend will.
 *  - A command the proxy refuses itself never reaches the backend, so the
 *    proxy's own reading is the only one: the bytes of a "{n+}" literal of a
 *    refused command are dropped (read as lines; a literal with a NUL byte or
 *    an overlong line closes the connection), and the rest of that command
 *    after it is dropped too.  A refused command's "{n}" literal is never
 *    requested, so a correct client never sends it.
 *  - Before TLS with require_tls, a literal in an otherwise allowed command
 *    (CAPABILITY, NOOP, LOGOUT, STARTTLS, ID) is refused with BAD, and so is
 *    any line ending in "}" that might look like one to another parser: no
 *    literal ever reaches the backend before TLS, so no literal can hide a
 *    LOGIN from the proxy however the backend parses it.
 *  - AUTHENTICATE and IDLE: after the backend's "+", exactly one client line
 *    is a SASL response (or "*") or the DONE; then the next is a command.
 *  - Backend untagged data ending in "{n}" is followed by n raw bytes, then
 *    the rest of the same response.
 *
 * Line limits: conn enforces max_line (64 KiB, as Dovecot's
 * imap_max_line_length) on every line, so that long FETCH responses pass.
 * Before TLS on a STARTTLS listener the handler closes the connection on a
 * client line over 8192 octets (literal bytes are not lines and not
 * counted).  Tags longer than 64 octets, or with characters outside
 * ASTRING-CHAR (and "+" or "]"), are refused with an untagged BAD.
 */
#include <stdint.h>
#include <string.h>

#include "proto_base.h"

#define IMAP_MAX_LINE	65536	/* conn's limit */
#define IMAP_CMD_MAX	8192	/* client lines before TLS */
#define IMAP_TAG_MAX	64
#define IMAP_LIT_MAX	0xffffffffULL	/* RFC 9051 number */

enum imap_state {
	IMAP_GREETING,		/* waiting for the backend's greeting */
	IMAP_READY,
	IMAP_STARTTLS,		/* OK sent for STARTTLS, handshake pending */
	IMAP_SWALLOW,		/* after TLS: drop the new backend's greeting */
	IMAP_DEAD,		/* close on anything */
};

/* What the next client line is. */
enum imap_cstate {
	IMAP_C_CMD,		/* a new command */
	IMAP_C_CONT,		/* the rest of the command, after a literal */
	IMAP_C_WAIT,		/* hold: the command waits for "+" or its reply */
	IMAP_C_SASL,		/* one AUTHENTICATE response line */
	IMAP_C_IDLE,		/* the DONE that ends IDLE */
};

/* What the command waiting in IMAP_C_WAIT waits for. */
enum imap_wait {
	IMAP_W_LITERAL,
	IMAP_W_AUTH,
	IMAP_W_IDLE,
};

enum imap_cmd {
	IMAP_K_OTHER,
	IMAP_K_CAPABILITY,
	IMAP_K_NOOP,
	IMAP_K_LOGOUT,
	IMAP_K_STARTTLS,
	IMAP_K_ID,
	IMAP_K_LOGIN,
	IMAP_K_AUTHENTICATE,
	IMAP_K_IDLE,
	IMAP_K_COMPRESS,
};

static const struct proto_cmd commands[] = {
	{ "CAPABILITY",	IMAP_K_CAPABILITY,	PROTO_F_PRETLS },
	{ "NOOP",	IMAP_K_NOOP,		PROTO_F_PRETLS },
	{ "LOGOUT",	IMAP_K_LOGOUT,		PROTO_F_PRETLS },
	{ "STARTTLS",	IMAP_K_STARTTLS,	PROTO_F_PRETLS },
	{ "ID",		IMAP_K_ID,		PROTO_F_PRETLS },
	{ "LOGIN",	IMAP_K_LOGIN,		0 },
	{ "AUTHENTICATE", IMAP_K_AUTHENTICATE,	0 },
	{ "IDLE",	IMAP_K_IDLE,		0 },
	{ "COMPRESS",	IMAP_K_COMPRESS,	0 },
};

struct imap {
	struct proto_base b;

	enum imap_state	 state;
	enum imap_cstate cstate;
	enum imap_wait	 wait;
	int		 authed;
	int		 swallowing;	/* after TLS, the new backend's
					   greeting was dropped: so are the
					   untagged OKs right after it */
	unsigned	 outstanding;	/* tagged replies (and greeting) owed */

	enum imap_cmd	 cur;		/* the command being sent */
	int		 refused;	/* ... answered by us: drop its rest */
	uint64_t	 litwait;	/* its "{n}" literal, awaiting "+" */
	uint64_t	 clit;		/* client literal bytes to pass raw */
	uint64_t	 cdrop;		/* client literal bytes to drop */

	uint64_t	 blit;		/* backend literal bytes to pass raw */
	uint64_t	 bdrop;		/* backend literal bytes to drop */
	int		 bcont;		/* next backend line continues a
					   response after a literal */
	int		 bcont_drop;	/* ... which is being dropped */

	size_t		 taglen;
	size_t		 authtaglen;	/* LOGIN/AUTHENTICATE awaiting reply */
	size_t		 ztaglen;	/* COMPRESS awaiting reply */
	char		 tag[IMAP_TAG_MAX];
	char		 authtag[IMAP_TAG_MAX];
	char		 ztag[IMAP_TAG_MAX];
};

static const char *const R_BYE_LONG = "* BYE Line too long\r\n";
static const char *const R_BADTAG = "* BAD Invalid tag\r\n";

/* Before TLS and before login only some responses reach the client. */
static int
filtering(const struct imap *s)
{

	return (proto_pretls(&s->b) && !s->authed);
}

/* Show STARTTLS (RFC 9051 6.2.1: not in the authenticated state). */
static int
show_starttls(const struct imap *s)
{

	return (proto_pretls(&s->b) && !s->authed);
}

static int
is_digit(char c)
{

	return (c >= '0' && c <= '9');
}

/*
 * If the ${n} bytes at ${l} (no line ending) end in a literal "{N}" or
 * "{N+}" (also "~{N}"), return 1 and set ${size} and ${nonsync}.  Return 0
 * if they do not, -1 if the number is too large.
 */
static int
literal_at_end(const char *l, size_t n, uint64_t *size, int *nonsync)
{
	size_t i, j;
	uint64_t v = 0;

	if (n < 3 || l[n - 1] != '}')
		return (0);
	i = n - 1;
	*nonsync = 0;
	if (l[i - 1] == '+') {
		*nonsync = 1;
		i--;
	}
	for (j = i; j > 0 && is_digit(l[j - 1]); j--)
		continue;
	if (j == i || j == 0 || l[j - 1] != '{')
		return (0);
	if (i - j > 10)
		return (-1);
	for (; j < i; j++)
		v = v * 10 + (uint64_t)(l[j] - '0');
	if (v > IMAP_LIT_MAX)
		return (-1);
	*size = v;
	return (1);
}

/* Tag characters: ASTRING-CHAR except "+" (RFC 9051 9), and not "]". */
static int
tag_char(char c)
{

	if (c <= 0x20 || c >= 0x7f)
		return (0);
	return (strchr("(){%*\"\\+]", c) == NULL);
}

static int
tag_eq(const char *a, size_t alen, const char *b, size_t blen)
{

	return (alen > 0 && alen == blen && memcmp(a, b, alen) == 0);
}

static void
imap_init(void *st, const struct proto_opts *o)
{
	struct imap *s = st;

	memset(s, 0, sizeof(*s));
	proto_base_init(&s->b, o);
	s->state = IMAP_GREETING;
	s->cstate = IMAP_C_CMD;

	/* The greeting is owed before anything the proxy says itself. */
	s->outstanding = 1;
}

static size_t
imap_raw(void *st, enum proto_side side, size_t avail)
{
	struct imap *s = st;
	uint64_t *lit = side == PROTO_CLIENT ? &s->clit : &s->blit;
	size_t n;

	if (s->state == IMAP_DEAD || s->state == IMAP_STARTTLS)
		return (0);
	if ((side == PROTO_CLIENT ? s->cdrop : s->bdrop) > 0 || *lit == 0)
		return (0);
	n = avail < *lit ? avail : (size_t)*lit;
	*lit -= n;
	return (n);
}

static enum proto_verdict
reply(struct proto_out *out, const char *tag, size_t taglen, const char *text)
{

	out->len = 0;
	if (tag != NULL)
		(void)proto_out_add(out, tag, taglen);
	(void)proto_out_add(out, text, strlen(text));
	return (PROTO_REPLY);
}

/* The command just ended: what does the next client line hold? */
static void
command_end(struct imap *s)
{

	s->litwait = 0;
	if (!s->refused && s->cur == IMAP_K_AUTHENTICATE) {
		s->cstate = IMAP_C_WAIT;
		s->wait = IMAP_W_AUTH;
	} else if (!s->refused && s->cur == IMAP_K_IDLE) {
		s->cstate = IMAP_C_WAIT;
		s->wait = IMAP_W_IDLE;
	} else
		s->cstate = IMAP_C_CMD;
}

/*
 * The ${n} bytes at ${t} (no line ending) end a piece of the current
 * command: see whether a literal follows.  Return 0, or -1 if the literal of
 * a forwarded command is too large.
 */
static int
command_piece(struct imap *s, const char *t, size_t n)
{
	uint64_t size = 0;
	int nonsync = 0;
	int r = literal_at_end(t, n, &size, &nonsync);

	if (s->refused) {
		if (r == 1 && nonsync) {
			s->cdrop = size;
			s->cstate = IMAP_C_CONT;
		} else
			command_end(s);
		return (0);
	}
	if (r == -1)
		return (-1);
	if (r == 0) {
		command_end(s);
		return (0);
	}
	if (nonsync) {
		s->clit = size;
		s->cstate = IMAP_C_CONT;
	} else {
		s->litwait = size;
		s->cstate = IMAP_C_WAIT;
		s->wait = IMAP_W_LITERAL;
	}
	return (0);
}

/*
 * A client line that starts with ${*lit} bytes of literal (read as a line:
 * a literal of a refused command, or one sent before the "+" and held).
 * Return 1 if the whole line is literal, else 0 and the rest in ${t}, ${tn}.
 */
static int
eat_literal(uint64_t *lit, const char **t, size_t *tlen)
{

	if (*lit >= *tlen) {
		*lit -= *tlen;
		return (1);
	}
	*t += *lit;
	*tlen -= (size_t)*lit;
	*lit = 0;
	return (0);
}

static enum proto_verdict
imap_command(struct imap *s, const char *line, size_t len,
    struct proto_out *out)
{
	size_t n = proto_chomp(line, len);
	size_t tl, cs, ce;
	const struct proto_cmd *c;
	enum imap_cmd cmd = IMAP_K_OTHER;
	int flags = 0, nonsync = 0, lit;
	uint64_t size = 0;
	const char *r = NULL;
	enum proto_verdict v = PROTO_REPLY;

	for (tl = 0; tl < n && line[tl] != ' '; tl++)
		if (!tag_char(line[tl]))
			break;
	if (tl == 0 || tl > IMAP_TAG_MAX || (tl < n && line[tl] != ' ')) {
		if (s->outstanding > 0)
			return (PROTO_HOLD);
		/* No tag to follow: read it as a refused command. */
		s->refused = 1;
		s->cur = IMAP_K_OTHER;
		s->taglen = 0;
		(void)command_piece(s, line, n);
		return (reply(out, NULL, 0, R_BADTAG));
	}
	cs = tl + 1;
	for (ce = cs; ce < n && line[ce] != ' '; ce++)
		continue;
	if (ce > cs && (c = proto_cmd_find(commands, sizeof(commands) /
	    sizeof(commands[0]), line + cs, ce - cs)) != NULL) {
		cmd = (enum imap_cmd)c->cmd;
		flags = c->flags;
	}
	lit = literal_at_end(line, n, &size, &nonsync);

	if (ce <= cs)
		r = " BAD Missing command\r\n";
	else if (cmd == IMAP_K_STARTTLS) {
		if (ce < n)
			r = " BAD STARTTLS takes no arguments\r\n";
		else if (proto_ontls(&s->b))
			r = " BAD TLS already active\r\n";
		else if (!s->b.starttls)
			r = " BAD STARTTLS not available\r\n";
		else if (s->authed)
			r = " BAD STARTTLS not allowed after login\r\n";
		else {
			r = " OK Begin TLS negotiation now\r\n";
			v = PROTO_STARTTLS;
		}
	} else if (proto_strict(&s->b)) {
		/* RFC 9051 6.2.3, 7.1: PRIVACYREQUIRED. */
		if (cmd == IMAP_K_LOGIN || cmd == IMAP_K_AUTHENTICATE)
			r = " NO [PRIVACYREQUIRED] "
			    "Must issue STARTTLS first\r\n";
		else if (!(flags & PROTO_F_PRETLS))
			r = " BAD Must issue STARTTLS first\r\n";
		else if (lit != 0 || (n > 0 && line[n - 1] == '}'))
			r = " BAD Literals not allowed before STARTTLS\r\n";
	}
	if (r == NULL && lit == -1)
		r = " BAD Literal too large\r\n";

	if (r != NULL) {
		/* Answer after the replies to every earlier command. */
		if (s->outstanding > 0)
			return (PROTO_HOLD);
		s->refused = 1;
		s->cur = cmd;
		memcpy(s->tag, line, tl);
		s->taglen = tl;
		(void)command_piece(s, line, n);
		(void)reply(out, line, tl, r);
		if (v == PROTO_STARTTLS)
			s->state = IMAP_STARTTLS;
		return (v);
	}

	s->refused = 0;
	s->cur = cmd;
	memcpy(s->tag, line, tl);
	s->taglen = tl;
	s->outstanding++;
	if (cmd == IMAP_K_LOGIN || cmd == IMAP_K_AUTHENTICATE) {
		memcpy(s->authtag, line, tl);
		s->authtaglen = tl;
	} else if (cmd == IMAP_K_COMPRESS) {
		memcpy(s->ztag, line, tl);
		s->ztaglen = tl;
	}
	(void)command_piece(s, line, n);
	return (PROTO_FORWARD);
}

static enum proto_verdict
imap_client(void *st, const char *line, size_t len, struct proto_out *out)
{
	struct imap *s = st;
	const char *t = line;
	size_t tlen = len;

	if (s->state == IMAP_DEAD)
		return (PROTO_CLOSE);
	if (s->state == IMAP_STARTTLS)
		return (PROTO_DROP);	/* the engine discards these anyway */

	/* Literal bytes that reached us as lines. */
	if (s->cdrop > 0) {
		if (eat_literal(&s->cdrop, &t, &tlen))
			return (PROTO_DROP);
		(void)command_piece(s, t, proto_chomp(t, tlen));
		return (PROTO_DROP);
	}
	if (s->clit > 0) {
		if (eat_literal(&s->clit, &t, &tlen))
			return (PROTO_FORWARD);
		if (command_piece(s, t, proto_chomp(t, tlen)) == -1)
			goto dead;
		return (PROTO_FORWARD);
	}

	if (proto_pretls(&s->b) && len > IMAP_CMD_MAX) {
		s->state = IMAP_DEAD;
		out->len = 0;
		(void)proto_out_add(out, R_BYE_LONG, strlen(R_BYE_LONG));
		return (PROTO_CLOSE);
	}

	switch (s->cstate) {
	case IMAP_C_WAIT:
		return (PROTO_HOLD);
	case IMAP_C_SASL:
		/* RFC 9051 6.2.2: one response line (or "*") per "+". */
		s->cstate = IMAP_C_WAIT;
		s->wait = IMAP_W_AUTH;
		return (PROTO_FORWARD);
	case IMAP_C_IDLE:
		/* RFC 2177: the DONE; the backend answers with the tag. */
		s->cstate = IMAP_C_CMD;
		return (PROTO_FORWARD);
	case IMAP_C_CONT:
		if (command_piece(s, line, proto_chomp(line, len)) == -1)
			goto dead;
		return (s->refused ? PROTO_DROP : PROTO_FORWARD);
	case IMAP_C_CMD:
	default:
		return (imap_command(s, line, len, out));
	}

dead:
	s->state = IMAP_DEAD;
	out->len = 0;
	return (PROTO_CLOSE);
}

/*
 * Before TLS with require_tls, is the capability at ${w} (${wl} bytes) one
 * that invites credentials in clear?  AUTH= offers a
 * mechanism, SASL-IR lets a client put its credentials in the first line
 * of AUTHENTICATE: refused, but by then the password has crossed the
 * network.
 */
static int
invites_credentials(const char *w, size_t wl)
{

	return ((wl >= 5 && proto_word_eq(w, 5, "AUTH=")) ||
	    proto_word_eq(w, wl, "SASL-IR"));
}

/*
 * Append the capability list ${l} (${n} bytes) to ${out}, rewritten: the
 * backend's STARTTLS removed, ours added before TLS on a STARTTLS listener;
 * before TLS with require_tls, AUTH= and SASL-IR removed and LOGINDISABLED
 * added.
 */
static int
caps_rewrite(const struct imap *s, const char *l, size_t n,
    struct proto_out *out)
{
	int show = show_starttls(s);
	int strict = show && s->b.require_tls;
	int logindisabled = 0, first = 1;
	size_t i = 0, j;

	while (i < n) {
		for (j = i; j < n && l[j] != ' '; j++)
			continue;
		if (j > i && !proto_word_eq(l + i, j - i, "STARTTLS") &&
		    !(strict && invites_credentials(l + i, j - i))) {
			if (proto_word_eq(l + i, j - i, "LOGINDISABLED"))
				logindisabled = 1;
			if ((!first && proto_out_add(out, " ", 1) == -1) ||
			    proto_out_add(out, l + i, j - i) == -1)
				return (-1);
			first = 0;
		}
		i = j + 1;
	}
	if (show && proto_out_fmt(out, "%sSTARTTLS", first ? "" : " ") == -1)
		return (-1);
	if (strict && !logindisabled &&
	    proto_out_add(out, " LOGINDISABLED", 14) == -1)
		return (-1);
	return (0);
}

/*
 * A status response ("<tag|*> OK|NO|BAD|BYE|PREAUTH [CODE] text"), whose
 * response code starts at ${at} if it has one: rewrite a CAPABILITY code,
 * and before TLS remove ALERT and REFERRAL codes.  Return FORWARD if
 * nothing changed, REWRITE with ${out} filled, or CLOSE if it did not fit.
 */
static enum proto_verdict
status_rewrite(const struct imap *s, const char *line, size_t len, size_t n,
    size_t at, struct proto_out *out)
{
	size_t cb, ce, ne;

	if (at >= n || line[at] != '[')
		return (PROTO_FORWARD);
	for (ce = at + 1; ce < n && line[ce] != ']'; ce++)
		continue;
	if (ce >= n)
		return (PROTO_FORWARD);
	cb = at + 1;
	for (ne = cb; ne < ce && line[ne] != ' '; ne++)
		continue;

	out->len = 0;
	if (proto_word_eq(line + cb, ne - cb, "CAPABILITY")) {
		if (proto_out_add(out, line, ne) == -1 ||
		    proto_out_add(out, " ", 1) == -1 ||
		    caps_rewrite(s, line + ne + 1,
		    ne < ce ? ce - ne - 1 : 0, out) == -1 ||
		    proto_out_add(out, line + ce, len - ce) == -1)
			return (PROTO_CLOSE);
		return (PROTO_REWRITE);
	}
	if (filtering(s) && (proto_word_eq(line + cb, ne - cb, "ALERT") ||
	    proto_word_eq(line + cb, ne - cb, "REFERRAL"))) {
		/* Drop "[...]" and the space after it. */
		ce++;
		if (ce < n && line[ce] == ' ')
			ce++;
		if (proto_out_add(out, line, at) == -1 ||
		    proto_out_add(out, line + ce, len - ce) == -1)
			return (PROTO_CLOSE);
		return (PROTO_REWRITE);
	}
	return (PROTO_FORWARD);
}

/* Is the word at ${w} a status response (RFC 9051 7.1)? */
static int
is_status(const char *w, size_t wl)
{

	return (proto_word_eq(w, wl, "OK") || proto_word_eq(w, wl, "NO") ||
	    proto_word_eq(w, wl, "BAD") || proto_word_eq(w, wl, "BYE") ||
	    proto_word_eq(w, wl, "PREAUTH"));
}

/* The rest of an untagged response after a literal, or its first line. */
static enum proto_verdict
untagged_data(struct imap *s, const char *t, size_t tn, int drop)
{
	uint64_t size = 0;
	int nonsync = 0;
	int r = literal_at_end(t, tn, &size, &nonsync);

	if (r == -1) {
		s->state = IMAP_DEAD;
		return (PROTO_CLOSE);
	}
	s->bcont = (r == 1);
	s->bcont_drop = s->bcont && drop;
	if (r == 1) {
		if (drop)
			s->bdrop = size;
		else
			s->blit = size;
	}
	return (drop ? PROTO_DROP : PROTO_FORWARD);
}

static enum proto_verdict
greeting(struct imap *s, const char *line, size_t len, size_t n,
    struct proto_out *out)
{
	int swallow = (s->state == IMAP_SWALLOW);

	s->state = IMAP_READY;
	if (n >= 10 && proto_word_eq(line, 10, "* PREAUTH ")) {
		/*
		 * A session already authenticated skips STARTTLS: refuse it
		 * where TLS is required (RFC 9051 6.2.1).
		 */
		if (proto_strict(&s->b)) {
			s->state = IMAP_DEAD;
			return (PROTO_CLOSE);
		}
		s->authed = 1;
		if (swallow)
			return (PROTO_DROP);
		return (status_rewrite(s, line, len, n, 10, out));
	}
	if (n >= 5 && proto_word_eq(line, 5, "* OK ")) {
		if (swallow)
			return (PROTO_DROP);
		return (status_rewrite(s, line, len, n, 5, out));
	}

	/* BYE, or not IMAP: nothing to relay to. */
	if (swallow) {
		s->state = IMAP_DEAD;
		return (PROTO_CLOSE);
	}
	return (PROTO_FORWARD);
}

static enum proto_verdict
imap_backend(struct imap *s, const char *line, size_t len,
    struct proto_out *out)
{
	size_t n = proto_chomp(line, len);
	const char *t = line;
	size_t tlen = len, tl, w, we, i;
	enum proto_verdict v;
	int mine, auth, z;

	if (s->state == IMAP_DEAD)
		return (PROTO_CLOSE);
	/* No backend byte between our OK and the handshake. */
	if (s->state == IMAP_STARTTLS)
		return (PROTO_DROP);

	if (s->bdrop > 0) {
		if (eat_literal(&s->bdrop, &t, &tlen))
			return (PROTO_DROP);
		return (untagged_data(s, t, proto_chomp(t, tlen), 1));
	}
	if (s->bcont)
		return (untagged_data(s, line, n, s->bcont_drop));

	if (s->state == IMAP_GREETING) {
		if (s->outstanding > 0)
			s->outstanding--;
		return (greeting(s, line, len, n, out));
	}
	if (s->state == IMAP_SWALLOW) {
		v = greeting(s, line, len, n, out);
		s->swallowing = (v == PROTO_DROP && !s->authed);
		return (v);
	}
	if (s->swallowing) {
		/*
		 * A greeting can come in more than one untagged OK: Dovecot
		 * sends "* OK Waiting for authentication process to
		 * respond.." and its real greeting later.  Until the backend
		 * says anything else, they are all the new backend's
		 * greeting, which the client must not see after STARTTLS.
		 */
		if (n >= 5 && proto_word_eq(line, 5, "* OK "))
			return (PROTO_DROP);
		s->swallowing = 0;
	}

	/* A continuation request. */
	if (n >= 1 && line[0] == '+') {
		if (s->cstate != IMAP_C_WAIT)
			return (filtering(s) ? PROTO_DROP : PROTO_FORWARD);
		switch (s->wait) {
		case IMAP_W_LITERAL:
			s->clit = s->litwait;
			s->litwait = 0;
			s->cstate = IMAP_C_CONT;
			break;
		case IMAP_W_AUTH:
			s->cstate = IMAP_C_SASL;
			break;
		case IMAP_W_IDLE:
			s->cstate = IMAP_C_IDLE;
			break;
		}
		return (PROTO_FORWARD);
	}

	for (tl = 0; tl < n && line[tl] != ' '; tl++)
		continue;
	w = tl < n ? tl + 1 : n;
	for (we = w; we < n && line[we] != ' ' && line[we] != '\r'; we++)
		continue;

	/* Untagged. */
	if (tl == 1 && line[0] == '*') {
		if (is_status(line + w, we - w)) {
			v = status_rewrite(s, line, len, n,
			    we < n ? we + 1 : n, out);
			if (!filtering(s) || v == PROTO_CLOSE ||
			    proto_word_eq(line + w, we - w, "BYE"))
				return (v);
			/* Before TLS: only capability news gets through. */
			if (we + 12 <= n && proto_word_eq(line + we + 1, 11,
			    "[CAPABILITY"))
				return (v);
			return (PROTO_DROP);
		}
		if (proto_word_eq(line + w, we - w, "CAPABILITY")) {
			out->len = 0;
			if (proto_out_add(out, line, we) == -1 ||
			    proto_out_add(out, " ", 1) == -1 ||
			    caps_rewrite(s, line + we + (we < n),
			    n - we - (we < n), out) == -1 ||
			    proto_out_add(out, line + n, len - n) == -1) {
				s->state = IMAP_DEAD;
				out->len = 0;
				return (PROTO_CLOSE);
			}
			return (PROTO_REWRITE);
		}
		/*
		 * Data.  Before TLS only the answer to ID is solicited; the
		 * rest (EXISTS, FLAGS, ...) is dropped, literals included.
		 */
		return (untagged_data(s, line, n, filtering(s) &&
		    !proto_word_eq(line + w, we - w, "ID")));
	}

	/* Not IMAP: nothing to learn from it. */
	for (i = 0; i < tl; i++)
		if (!tag_char(line[i]))
			break;
	if (tl == 0 || i < tl)
		return (filtering(s) ? PROTO_DROP : PROTO_FORWARD);

	/* Tagged: the end of a command. */
	if (s->outstanding > 0)
		s->outstanding--;
	mine = tag_eq(line, tl, s->tag, s->taglen);
	if (mine && (s->cstate == IMAP_C_WAIT || s->cstate == IMAP_C_SASL ||
	    s->cstate == IMAP_C_IDLE)) {
		/* Also a "{n}" literal the backend declined. */
		s->cstate = IMAP_C_CMD;
		s->litwait = 0;
	}
	auth = tag_eq(line, tl, s->authtag, s->authtaglen);
	z = tag_eq(line, tl, s->ztag, s->ztaglen);
	if (auth)
		s->authtaglen = 0;
	if (z)
		s->ztaglen = 0;

	/* Logged in: its [CAPABILITY] code must not offer STARTTLS. */
	if (auth && proto_word_eq(line + w, we - w, "OK"))
		s->authed = 1;
	v = status_rewrite(s, line, len, n, we < n ? we + 1 : n, out);
	if (v == PROTO_CLOSE) {
		s->state = IMAP_DEAD;
		out->len = 0;
		return (v);
	}
	/*
	 * The session is parsed to its end, so that STARTTLS never reaches
	 * the backend and is never offered again.  After COMPRESS nothing
	 * can be parsed any more; COMPRESS is only allowed once
	 * authenticated (RFC 4978), where the backend itself must refuse
	 * STARTTLS (RFC 9051 6.2.1).
	 */
	if (z && proto_word_eq(line + w, we - w, "OK")) {
		if (v == PROTO_FORWARD)
			out->len = 0;
		return (PROTO_PASSTHROUGH);
	}
	return (v);
}

static enum proto_verdict
imap_backend_line(void *st, const char *line, size_t len,
    struct proto_out *out)
{
	struct imap *s = st;
	enum proto_verdict v;

	v = imap_backend(s, line, len, out);
	if (v == PROTO_CLOSE) {
		/* The engine tells the client the service is unavailable. */
		s->state = IMAP_DEAD;
		out->len = 0;
	}
	return (v);
}

static void
imap_tls_ready(void *st)
{
	struct imap *s = st;

	/* RFC 9051 6.2.1: discard everything learned before STARTTLS. */
	s->state = IMAP_SWALLOW;
	s->swallowing = 0;
	s->cstate = IMAP_C_CMD;
	s->b.tls = 1;
	s->authed = 0;
	s->outstanding = 0;
	s->cur = IMAP_K_OTHER;
	s->refused = 0;
	s->litwait = s->clit = s->cdrop = 0;
	s->blit = s->bdrop = 0;
	s->bcont = s->bcont_drop = 0;
	s->taglen = s->authtaglen = s->ztaglen = 0;
}

static const char *
imap_strstate(const void *st)
{
	const struct imap *s = st;

	switch (s->state) {
	case IMAP_GREETING:
	case IMAP_SWALLOW:
		return ("greeting");
	case IMAP_STARTTLS:
		return ("starttls");
	case IMAP_DEAD:
		return ("dead");
	case IMAP_READY:
	default:
		break;
	}
	if (s->clit > 0 || s->cdrop > 0)
		return ("literal");
	switch (s->cstate) {
	case IMAP_C_CONT:
		return ("literal");
	case IMAP_C_WAIT:
		return ("wait");
	case IMAP_C_SASL:
		return ("authenticate");
	case IMAP_C_IDLE:
		return ("idle");
	case IMAP_C_CMD:
	default:
		return (s->authed ? "authenticated" : "command");
	}
}

static size_t
imap_line_limit(const void *st, enum proto_side side)
{
	const struct imap *s = st;

	/* Literal bytes come through raw() and do not count. */
	if (side == PROTO_CLIENT && proto_pretls(&s->b))
		return (IMAP_CMD_MAX);
	return (IMAP_MAX_LINE);
}

const struct proto_ops proto_imap_ops = {
	.name = "imap",
	.state_size = sizeof(struct imap),
	.max_line = IMAP_MAX_LINE,
	.init = imap_init,
	.raw = imap_raw,
	.line_limit = imap_line_limit,
	.client_line = imap_client,
	.backend_line = imap_backend_line,
	.tls_ready = imap_tls_ready,
	.strstate = imap_strstate,
};
