/*
 * proto: handler lookup, the "service not available" replies, and the small
 * helpers the handlers share.  No I/O.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto.h"

/**
 * proto_find(p):
 * Return the handler for ${p}, or NULL for CONFIG_PROTO_NONE.
 */
const struct proto_ops *
proto_find(enum config_proto p)
{

	switch (p) {
	case CONFIG_PROTO_SMTP:
		return (&proto_smtp_ops);
	case CONFIG_PROTO_IMAP:
		return (&proto_imap_ops);
	case CONFIG_PROTO_POP3:
		return (&proto_pop3_ops);
	case CONFIG_PROTO_NONE:
	default:
		return (NULL);
	}
}

/**
 * proto_unavailable(p, hostname, buf, len):
 * Write the protocol's "service not available" reply for ${p} (SMTP 421,
 * IMAP * BYE [UNAVAILABLE], POP3 -ERR [SYS/TEMP]) into ${buf}.  Return its
 * length, 0 for CONFIG_PROTO_NONE (nothing is sent).
 */
size_t
proto_unavailable(enum config_proto p, const char *hostname, char *buf,
    size_t len)
{
	int n;

	if (len == 0)
		return (0);
	if (hostname == NULL || hostname[0] == '\0')
		hostname = "localhost";
	switch (p) {
	case CONFIG_PROTO_SMTP:
		/* RFC 5321 3.8: 421 <domain> Service not available. */
		n = snprintf(buf, len, "421 4.3.0 %s Service not available\r\n",
		    hostname);
		break;
	case CONFIG_PROTO_IMAP:
		n = snprintf(buf, len,
		    "* BYE [UNAVAILABLE] Service not available\r\n");
		break;
	case CONFIG_PROTO_POP3:
		n = snprintf(buf, len,
		    "-ERR [SYS/TEMP] Service not available\r\n");
		break;
	case CONFIG_PROTO_NONE:
	default:
		return (0);
	}

	/* A truncated reply would be malformed: send nothing instead. */
	if (n < 0 || (size_t)n >= len)
		return (0);
	return ((size_t)n);
}

/**
 * proto_chomp(line, len):
 * Return the length of ${line} without its line ending (CRLF or bare LF).
 */
size_t
proto_chomp(const char *line, size_t len)
{

	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	return (len);
}

/**
 * proto_out_add(out, p, len):
 * Append ${len} bytes at ${p} to ${out}.  Return 0, or -1 (and leave ${out}
 * unchanged) if they do not fit.
 */
int
proto_out_add(struct proto_out *out, const void *p, size_t len)
{

	if (len > sizeof(out->buf) - out->len)
		return (-1);
	if (len > 0)
		memcpy(out->buf + out->len, p, len);
	out->len += len;
	return (0);
}

/**
 * proto_out_reply(out, text, v):
 * Make the NUL-terminated ${text} the whole of ${out}; return ${v}.
 */
enum proto_verdict
proto_out_reply(struct proto_out *out, const char *text, enum proto_verdict v)
{

	out->len = 0;
	(void)proto_out_add(out, text, strlen(text));
	return (v);
}

/**
 * proto_out_fmt(out, fmt, ...):
 * Append a formatted string to ${out}.  Return 0, or -1 (${out} unchanged)
 * if it does not fit.
 */
int
proto_out_fmt(struct proto_out *out, const char *fmt, ...)
{
	va_list ap;
	size_t room = sizeof(out->buf) - out->len;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out->buf + out->len, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room)
		return (-1);
	out->len += (size_t)n;
	return (0);
}

/**
 * proto_word_eq(w, wlen, name):
 * Return 1 if the ${wlen} bytes at ${w} equal the NUL-terminated ${name},
 * ignoring ASCII case, else 0.
 */
int
proto_word_eq(const char *w, size_t wlen, const char *name)
{
	size_t i;
	unsigned char a, b;

	for (i = 0; i < wlen; i++) {
		if (name[i] == '\0')
			return (0);
		a = (unsigned char)w[i];
		b = (unsigned char)name[i];
		if (a >= 'a' && a <= 'z')
			a -= 'a' - 'A';
		if (b >= 'a' && b <= 'z')
			b -= 'a' - 'A';
		if (a != b)
			return (0);
	}
	return (name[wlen] == '\0');
}
