/*
 * bstarttls: mailtlsd as a STARTTLS client toward a backend (see
 * bstarttls.h).  No I/O: conn feeds it the backend's lines.  The backend's
 * greeting is kept, filtered, for the client: it is shown only once the
 * backend's TLS is up and its certificate checked.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "bstarttls.h"

enum {
	B_GREETING,
	B_EHLO,		/* SMTP: EHLO sent */
	B_CAPA,		/* IMAP, POP3: capabilities asked */
	B_CAPA_LIST,	/* POP3: inside the CAPA list */
	B_STARTTLS,	/* STARTTLS/STLS sent */
	B_DONE,
};

static enum bstls_verdict
fail(struct bstls *b, const char *what, const char *line, size_t len)
{

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len > 80)
		len = 80;
	snprintf(b->error, sizeof(b->error), "%s%s%.*s%s", what,
	    len > 0 ? ": \"" : "", (int)len, line, len > 0 ? "\"" : "");
	return (BSTLS_FAIL);
}

static enum bstls_verdict
send_line(struct proto_out *out, const char *s)
{

	out->len = (size_t)snprintf(out->buf, sizeof(out->buf), "%s", s);
	return (BSTLS_SEND);
}

/* Is ${word} one of the space-separated words of line[0..len)? */
static int
has_word(const char *line, size_t len, const char *word)
{
	size_t wl = strlen(word), i = 0, j;

	while (i < len) {
		while (i < len && (line[i] == ' ' || line[i] == '[' ||
		    line[i] == ']' || line[i] == '\r' || line[i] == '\n'))
			i++;
		for (j = i; j < len && line[j] != ' ' && line[j] != ']' &&
		    line[j] != '\r' && line[j] != '\n'; j++)
			;
		if (j - i == wl && strncasecmp(line + i, word, wl) == 0)
			return (1);
		i = j;
	}
	return (0);
}

/* Append to the greeting; -1 if it would not fit (never cut it short). */
static int
keep_greeting(struct bstls *b, const char *line, size_t len)
{

	if (len > sizeof(b->greeting) - b->greetlen)
		return (-1);
	memcpy(b->greeting + b->greetlen, line, len);
	b->greetlen += len;
	return (0);
}

static enum bstls_verdict
smtp_line(struct bstls *b, const char *line, size_t len, struct proto_out *out)
{
	int last = len >= 4 && line[3] != '-';

	if (len < 4 || line[0] < '0' || line[0] > '9')
		return (fail(b, "malformed reply", line, len));
	switch (b->state) {
	case B_GREETING:
		if (strncmp(line, "220", 3) != 0)
			return (fail(b, "greeting refused", line, len));
		if (keep_greeting(b, line, len) == -1)
			return (fail(b, "greeting too long", "", 0));
		if (!last)
			return (BSTLS_MORE);
		b->state = B_EHLO;
		out->len = (size_t)snprintf(out->buf, sizeof(out->buf),
		    "EHLO %s\r\n", b->hostname);
		return (BSTLS_SEND);
	case B_EHLO:
		if (strncmp(line, "250", 3) != 0)
			return (fail(b, "EHLO refused", line, len));
		if (has_word(line + 4, len - 4, "STARTTLS"))
			b->offered = 1;
		if (!last)
			return (BSTLS_MORE);
		if (!b->offered)
			return (fail(b, "backend does not offer STARTTLS", "",
			    0));
		b->state = B_STARTTLS;
		return (send_line(out, "STARTTLS\r\n"));
	case B_STARTTLS:
		if (strncmp(line, "220", 3) != 0)
			return (fail(b, "STARTTLS refused", line, len));
		if (!last)
			return (BSTLS_MORE);
		b->state = B_DONE;
		return (BSTLS_TLS);
	}
	return (fail(b, "unexpected line", line, len));
}

/*
 * Keep an IMAP "* OK" greeting without its response code, whatever the code
 * is (RFC 9051 7.1: "[" resp-text-code "]" right after the status word).
 * Brackets are counted, so that a REFERRAL URL with an IPv6 literal
 * ("[::1]") is removed whole; an unclosed code takes the rest of the text.
 */
static int
imap_keep_greeting(struct bstls *b, const char *line, size_t len)
{
	size_t n = len, i = 4, depth = 0;

	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		n--;
	while (i < n && line[i] == ' ')
		i++;
	if (i < n && line[i] == '[') {
		for (; i < n; i++) {
			if (line[i] == '[')
				depth++;
			else if (line[i] == ']' && --depth == 0)
				break;
		}
		i++;
		while (i < n && line[i] == ' ')
			i++;
	}
	if (i >= n)
		return (keep_greeting(b, "* OK Ready\r\n", 12));
	if (keep_greeting(b, "* OK ", 5) == -1)
		return (-1);
	return (keep_greeting(b, line + i, len - i));
}

static enum bstls_verdict
imap_line(struct bstls *b, const char *line, size_t len, struct proto_out *out)
{

	switch (b->state) {
	case B_GREETING:
		if (len >= 9 && strncasecmp(line, "* PREAUTH", 9) == 0)
			return (fail(b, "PREAUTH greeting would skip STARTTLS",
			    line, len));
		if (len < 4 || strncasecmp(line, "* OK", 4) != 0)
			return (fail(b, "greeting refused", line, len));
		if (imap_keep_greeting(b, line, len) == -1)
			return (fail(b, "greeting too long", "", 0));
		if (has_word(line + 4, len - 4, "CAPABILITY")) {
			if (!has_word(line + 4, len - 4, "STARTTLS"))
				return (fail(b, "backend does not offer "
				    "STARTTLS", "", 0));
			b->state = B_STARTTLS;
			return (send_line(out, "M1 STARTTLS\r\n"));
		}
		b->state = B_CAPA;
		return (send_line(out, "M0 CAPABILITY\r\n"));
	case B_CAPA:
		if (len >= 13 && strncasecmp(line, "* CAPABILITY ", 13) == 0) {
			if (has_word(line + 13, len - 13, "STARTTLS"))
				b->offered = 1;
			return (BSTLS_MORE);
		}
		if (line[0] == '*')
			return (BSTLS_MORE);
		if (len >= 5 && strncasecmp(line, "M0 OK", 5) == 0) {
			if (!b->offered)
				return (fail(b, "backend does not offer "
				    "STARTTLS", "", 0));
			b->state = B_STARTTLS;
			return (send_line(out, "M1 STARTTLS\r\n"));
		}
		return (fail(b, "CAPABILITY refused", line, len));
	case B_STARTTLS:
		if (line[0] == '*')
			return (BSTLS_MORE);
		if (len >= 5 && strncasecmp(line, "M1 OK", 5) == 0) {
			b->state = B_DONE;
			return (BSTLS_TLS);
		}
		return (fail(b, "STARTTLS refused", line, len));
	}
	return (fail(b, "unexpected line", line, len));
}

static enum bstls_verdict
pop3_line(struct bstls *b, const char *line, size_t len, struct proto_out *out)
{
	size_t l = len;

	while (l > 0 && (line[l - 1] == '\n' || line[l - 1] == '\r'))
		l--;
	switch (b->state) {
	case B_GREETING:
		if (l < 3 || strncasecmp(line, "+OK", 3) != 0)
			return (fail(b, "greeting refused", line, len));
		if (keep_greeting(b, line, len) == -1)
			return (fail(b, "greeting too long", "", 0));
		b->state = B_CAPA;
		return (send_line(out, "CAPA\r\n"));
	case B_CAPA:
		if (l < 3 || strncasecmp(line, "+OK", 3) != 0)
			return (fail(b, "CAPA refused (backend does not offer "
			    "STLS)", line, len));
		b->state = B_CAPA_LIST;
		return (BSTLS_MORE);
	case B_CAPA_LIST:
		if (l == 1 && line[0] == '.') {
			if (!b->offered)
				return (fail(b, "backend does not offer STLS",
				    "", 0));
			b->state = B_STARTTLS;
			return (send_line(out, "STLS\r\n"));
		}
		if (l == 4 && strncasecmp(line, "STLS", 4) == 0)
			b->offered = 1;
		return (BSTLS_MORE);
	case B_STARTTLS:
		if (l >= 3 && strncasecmp(line, "+OK", 3) == 0) {
			b->state = B_DONE;
			return (BSTLS_TLS);
		}
		return (fail(b, "STLS refused", line, len));
	}
	return (fail(b, "unexpected line", line, len));
}

/**
 * bstls_init(b, proto, hostname):
 * Start the dialogue for ${proto}; ${hostname} (borrowed) goes in EHLO.
 */
void
bstls_init(struct bstls *b, enum config_proto proto, const char *hostname)
{

	memset(b, 0, sizeof(*b));
	b->proto = proto;
	b->hostname = hostname;
	b->state = B_GREETING;
}

/**
 * bstls_line(b, line, len, out):
 * Handle one line from the backend (line ending included).
 */
enum bstls_verdict
bstls_line(struct bstls *b, const char *line, size_t len, struct proto_out *out)
{

	out->len = 0;
	if (b->state == B_DONE)
		return (fail(b, "data after the go-ahead", line, len));
	switch (b->proto) {
	case CONFIG_PROTO_SMTP:
		return (smtp_line(b, line, len, out));
	case CONFIG_PROTO_IMAP:
		return (imap_line(b, line, len, out));
	case CONFIG_PROTO_POP3:
		return (pop3_line(b, line, len, out));
	default:
		return (fail(b, "no STARTTLS for this protocol", "", 0));
	}
}

/**
 * bstls_greeting(b, len):
 * The backend's greeting as the client should see it once TLS is up,
 * filtered as the pre-TLS rules filter a greeting (see bstarttls.h).
 */
const char *
bstls_greeting(const struct bstls *b, size_t *len)
{

	*len = b->greetlen;
	return (b->greeting);
}

/**
 * bstls_error(b):
 * Why the dialogue failed.
 */
const char *
bstls_error(const struct bstls *b)
{

	return (b->error);
}
