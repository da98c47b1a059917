/*
 * mailmsg.h: the message both ends of the benchmark agree on, so that each
 * can check byte for byte what crossed the proxy (bench/loadgen.c sends or
 * expects it, bench/backend.c expects or serves it).
 *
 * A message of exactly ${size} octets: a few header lines, a blank line,
 * then body lines of 78 base64 characters and CRLF, as an attachment looks
 * on the wire.  The alphabet has no '.', so no line needs dot-stuffing and
 * the SMTP DATA / POP3 RETR terminator can only be the real one; there is
 * no bare LF.  The buffer gets ".\r\n" after the message (size + 3 octets
 * in all), the terminator a sender puts after it.
 */
#ifndef BENCH_MAILMSG_H
#define BENCH_MAILMSG_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAILMSG_MIN	512		/* room for the headers and a line */
#define MAILMSG_LINE	78		/* characters per body line */

static const char mailmsg_headers[] =
	"From: Bench Sender <sender@bench.test>\r\n"
	"To: Bench Recipient <rcpt@bench.test>\r\n"
	"Subject: mailtlsd benchmark message\r\n"
	"Message-ID: <bench-message@bench.test>\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: application/octet-stream\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n";

/* A message of ${size} (>= MAILMSG_MIN) octets, then ".\r\n"; free(). */
static inline unsigned char *
mailmsg_new(size_t size)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
	    "qrstuvwxyz0123456789+/";
	unsigned char *m, *p, *end;
	uint32_t x = 2463534242u;
	size_t left, n;

	if (size < MAILMSG_MIN || (m = malloc(size + 3)) == NULL)
		return (NULL);
	memcpy(m, mailmsg_headers, sizeof(mailmsg_headers) - 1);
	p = m + sizeof(mailmsg_headers) - 1;
	end = m + size;
	while (p < end) {
		left = (size_t)(end - p);
		/* The last line takes what is left (never fewer than 1). */
		if (left < 2 * (MAILMSG_LINE + 2) && left > MAILMSG_LINE + 2)
			n = left - (MAILMSG_LINE + 2) < 3 ? left - 2 :
			    MAILMSG_LINE;
		else
			n = left <= MAILMSG_LINE + 2 ? left - 2 : MAILMSG_LINE;
		while (n-- > 0) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			*p++ = (unsigned char)b64[x & 63];
		}
		*p++ = '\r';
		*p++ = '\n';
	}
	memcpy(end, ".\r\n", 3);
	return (m);
}

#endif /* BENCH_MAILMSG_H */
