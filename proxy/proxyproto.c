/*
 * proxyproto: the PROXY protocol, versions 1 and 2, after HAProxy's
 * doc/proxy-protocol.txt ("the spec" below).  Pure: no I/O, no allocation.
 *
 * Decisions, besides what the spec fixes:
 * - Builders reduce an IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a
 *   dual-stack v6 listener sees for a v4 peer) to IPv4, so a v4 client behind
 *   a v6 listener goes out as TCP4 / AF_INET.  If one end is then IPv4 and
 *   the other IPv6 (a v6 client from a PROXY header, our v4 local address),
 *   the IPv4 end is written v4-mapped and the header is TCP6 / AF_INET6:
 *   the client's address is never dropped for UNKNOWN.  An IPv6 scope id
 *   cannot be carried and is dropped.  Anything else (AF_UNIX, NULL) is
 *   "PROXY UNKNOWN" in v1 and LOCAL with AF_UNSPEC in v2.
 * - v2 TLVs follow the address block even for LOCAL (the block is then
 *   empty, so Dovecot, which reads TLVs right after the 16 bytes for LOCAL,
 *   finds them).  PP2_TYPE_SSL is sent only for a TLS client; its verify
 *   field is 0 only when a client certificate was presented and verified,
 *   else 1 (nonzero in either byte order: Dovecot reads it in host order).
 *   A certificate presented on this connection sets PP2_CLIENT_CERT_CONN and
 *   PP2_CLIENT_CERT_SESS (it was then presented in the session too).  The
 *   CN goes out only for a verified certificate.  Empty strings are left
 *   out.  A header longer than PROXYPROTO_MAX is never built: -1 (no value
 *   is truncated, since a cut SNI or CN would be a lie).
 * - The parser accepts v1 TCP4/TCP6/UNKNOWN and v2 LOCAL, PROXY over
 *   TCP/IPv4 and TCP/IPv6.  v2 PROXY with AF_UNSPEC or an UNSPEC transport
 *   is taken as local (spec 2.2 lets the receiver use the real endpoints);
 *   AF_UNIX and DGRAM are refused as unsupported (a mail front behind a TCP
 *   balancer never has such a client, so this is a misconfiguration).
 *   Family and transport values the spec leaves unassigned are refused even
 *   with LOCAL (spec 2.2: "must be rejected as invalid by receivers").  For
 *   LOCAL the rest of the block is ignored, as the spec says to discard it.
 *   For PROXY every TLV must fit exactly, PP2_TYPE_SSL must hold its 5-byte
 *   head and well-formed sub-TLVs, and a PP2_TYPE_CRC32C must be 4 bytes
 *   and match.  An IPv6 address in v1 is taken as inet_pton() takes it (so
 *   "::ffff:192.0.2.1" is accepted); it is not reduced to IPv4.
 */
#include <sys/socket.h>
#include <sys/types.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proxyproto.h"

/* Spec 2.1: the longest v1 line, CRLF included. */
#define V1_MAX			107

/* Spec 2.2: the fixed part of a v2 header and its fields. */
#define V2_HDR			16
#define V2_VERSION		0x2
#define V2_CMD_LOCAL		0x0
#define V2_CMD_PROXY		0x1
#define V2_AF_UNSPEC		0x0
#define V2_AF_INET		0x1
#define V2_AF_INET6		0x2
#define V2_AF_UNIX		0x3
#define V2_TP_UNSPEC		0x0
#define V2_TP_STREAM		0x1
#define V2_TP_DGRAM		0x2
#define V2_LEN_INET		(4 + 4 + 2 + 2)
#define V2_LEN_INET6		(16 + 16 + 2 + 2)

/* Spec 2.2: TLV types, and the PP2_TYPE_SSL client bits. */
#define PP2_TYPE_ALPN		0x01
#define PP2_TYPE_AUTHORITY	0x02
#define PP2_TYPE_CRC32C		0x03
#define PP2_TYPE_SSL		0x20
#define PP2_SUBTYPE_SSL_VERSION	0x21
#define PP2_SUBTYPE_SSL_CN	0x22
#define PP2_SUBTYPE_SSL_CIPHER	0x23
#define PP2_CLIENT_SSL		0x01
#define PP2_CLIENT_CERT_CONN	0x02
#define PP2_CLIENT_CERT_SESS	0x04

#define TLV_HDR			3	/* type, length_hi, length_lo */
#define SSL_HDR			5	/* client, verify */

static const unsigned char v2sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a
};
static const unsigned char v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

/* An endpoint reduced to what a PROXY header carries. */
struct ep {
	int		 af;		/* AF_INET or AF_INET6 */
	unsigned char	 a[16];		/* 4 or 16 bytes, network order */
	uint16_t	 port;		/* host order */
};

/* Fill ${e} from ${sa}; return 0, or -1 for a family a header cannot carry. */
static int
ep_get(const struct sockaddr *sa, struct ep *e)
{
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;

	if (sa == NULL)
		return (-1);

	/* Copy out: ${sa} may be any sockaddr_* and need not be aligned. */
	switch (sa->sa_family) {
	case AF_INET:
		memcpy(&sin, sa, sizeof(sin));
		e->af = AF_INET;
		memcpy(e->a, &sin.sin_addr, 4);
		e->port = ntohs(sin.sin_port);
		return (0);
	case AF_INET6:
		memcpy(&sin6, sa, sizeof(sin6));
		e->port = ntohs(sin6.sin6_port);
		if (memcmp(sin6.sin6_addr.s6_addr, v4mapped, 12) == 0) {
			e->af = AF_INET;
			memcpy(e->a, sin6.sin6_addr.s6_addr + 12, 4);
		} else {
			e->af = AF_INET6;
			memcpy(e->a, sin6.sin6_addr.s6_addr, 16);
		}
		return (0);
	default:
		return (-1);
	}
}

/* Turn an IPv4 endpoint into its IPv4-mapped IPv6 form. */
static void
ep_map6(struct ep *e)
{

	if (e->af != AF_INET)
		return;
	memmove(e->a + 12, e->a, 4);
	memcpy(e->a, v4mapped, 12);
	e->af = AF_INET6;
}

/*
 * Reduce ${src} and ${dst} to one family, which is returned: AF_INET if both
 * are IPv4 (or IPv4-mapped), AF_INET6 if both are IP, else AF_UNSPEC.
 */
static int
ep_pair(const struct sockaddr *src, const struct sockaddr *dst,
    struct ep *s, struct ep *d)
{

	if (ep_get(src, s) || ep_get(dst, d))
		return (AF_UNSPEC);
	if (s->af != d->af) {
		ep_map6(s);
		ep_map6(d);
	}
	return (s->af);
}

/**
 * proxyproto_v1(src, dst, buf, len):
 * Write a v1 header ("PROXY TCP4 ..." / "PROXY TCP6 ..." / "PROXY UNKNOWN")
 * for a connection from ${src} to ${dst} into ${buf}.  Return its length,
 * or -1 if ${len} is too small.
 */
ssize_t
proxyproto_v1(const struct sockaddr *src, const struct sockaddr *dst,
    char *buf, size_t len)
{
	struct ep s, d;
	char line[V1_MAX + 1];
	char sa[INET6_ADDRSTRLEN], da[INET6_ADDRSTRLEN];
	int af, n;

	/* No NUL is written: the header is sent as is, by length. */
	if ((af = ep_pair(src, dst, &s, &d)) == AF_UNSPEC) {
		n = snprintf(line, sizeof(line), "PROXY UNKNOWN\r\n");
	} else {
		if (inet_ntop(af, s.a, sa, sizeof(sa)) == NULL ||
		    inet_ntop(af, d.a, da, sizeof(da)) == NULL)
			return (-1);
		n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n",
		    af == AF_INET ? "TCP4" : "TCP6", sa, da,
		    (unsigned int)s.port, (unsigned int)d.port);
	}

	/* Spec 2.1: a line longer than 107 bytes would be refused. */
	if (n < 0 || n > V1_MAX || (size_t)n > len)
		return (-1);
	memcpy(buf, line, (size_t)n);
	return (n);
}

/* Append ${n} bytes at ${p} to ${buf} of ${cap} bytes at *${off}. */
static int
put(unsigned char *buf, size_t cap, size_t *off, const void *p, size_t n)
{

	if (n > cap - *off)
		return (-1);
	if (n > 0)
		memcpy(buf + *off, p, n);
	*off += n;
	return (0);
}

/* Append a TLV of ${type} whose value is the string ${s}, if not empty. */
static int
put_tlv(unsigned char *buf, size_t cap, size_t *off, unsigned char type,
    const char *s)
{
	unsigned char h[TLV_HDR];
	size_t n;

	/* Bounded: a longer string cannot fit in cap anyway. */
	if (s == NULL || (n = strnlen(s, PROXYPROTO_MAX)) == 0)
		return (0);
	h[0] = type;
	h[1] = (unsigned char)(n >> 8);
	h[2] = (unsigned char)n;
	if (put(buf, cap, off, h, sizeof(h)) || put(buf, cap, off, s, n))
		return (-1);
	return (0);
}

/* Append the PP2_TYPE_SSL TLV for ${tls}, a TLS client (spec 2.2.6). */
static int
put_ssl(unsigned char *buf, size_t cap, size_t *off,
    const struct proxyproto_tls *tls)
{
	unsigned char h[TLV_HDR + SSL_HDR];
	size_t at = *off, n;
	int verified = tls->cert_conn && tls->cert_verified;

	h[0] = PP2_TYPE_SSL;
	h[1] = h[2] = 0;		/* set below */
	h[3] = PP2_CLIENT_SSL;
	if (tls->cert_conn)
		h[3] |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;

	/* Spec 2.2.6: verify is zero iff a certificate was verified. */
	h[4] = h[5] = h[6] = 0;
	h[7] = verified ? 0 : 1;
	if (put(buf, cap, off, h, sizeof(h)))
		return (-1);

	if (put_tlv(buf, cap, off, PP2_SUBTYPE_SSL_VERSION, tls->version) ||
	    (verified &&
	    put_tlv(buf, cap, off, PP2_SUBTYPE_SSL_CN, tls->cn)) ||
	    put_tlv(buf, cap, off, PP2_SUBTYPE_SSL_CIPHER, tls->cipher))
		return (-1);

	/* At most PROXYPROTO_MAX, so it fits in 16 bits. */
	n = *off - at - TLV_HDR;
	buf[at + 1] = (unsigned char)(n >> 8);
	buf[at + 2] = (unsigned char)n;
	return (0);
}

/**
 * proxyproto_v2(src, dst, tls, buf, len):
 * Write a v2 PROXY header (or LOCAL for a family it cannot carry) with the
 * TLVs from ${tls} (may be NULL) into ${buf}.  Return its length, or -1.
 */
ssize_t
proxyproto_v2(const struct sockaddr *src, const struct sockaddr *dst,
    const struct proxyproto_tls *tls, unsigned char *buf, size_t len)
{
	struct ep s, d;
	unsigned char port[4];
	size_t cap = len < PROXYPROTO_MAX ? len : PROXYPROTO_MAX;
	size_t off = 0, alen, n;
	int af;

	if (put(buf, cap, &off, v2sig, sizeof(v2sig)) ||
	    put(buf, cap, &off, "\0\0\0\0", 4))
		return (-1);

	af = ep_pair(src, dst, &s, &d);
	switch (af) {
	case AF_INET:
		buf[12] = V2_VERSION << 4 | V2_CMD_PROXY;
		buf[13] = V2_AF_INET << 4 | V2_TP_STREAM;
		alen = 4;
		break;
	case AF_INET6:
		buf[12] = V2_VERSION << 4 | V2_CMD_PROXY;
		buf[13] = V2_AF_INET6 << 4 | V2_TP_STREAM;
		alen = 16;
		break;
	default:
		/* Spec 2.2: LOCAL with AF_UNSPEC and no address block. */
		buf[12] = V2_VERSION << 4 | V2_CMD_LOCAL;
		buf[13] = V2_AF_UNSPEC << 4 | V2_TP_UNSPEC;
		alen = 0;
		break;
	}
	if (alen > 0) {
		port[0] = (unsigned char)(s.port >> 8);
		port[1] = (unsigned char)s.port;
		port[2] = (unsigned char)(d.port >> 8);
		port[3] = (unsigned char)d.port;
		if (put(buf, cap, &off, s.a, alen) ||
		    put(buf, cap, &off, d.a, alen) ||
		    put(buf, cap, &off, port, sizeof(port)))
			return (-1);
	}

	if (tls != NULL) {
		if (put_tlv(buf, cap, &off, PP2_TYPE_ALPN, tls->alpn) ||
		    put_tlv(buf, cap, &off, PP2_TYPE_AUTHORITY, tls->sni))
			return (-1);
		if (tls->client_tls && put_ssl(buf, cap, &off, tls))
			return (-1);
	}

	n = off - V2_HDR;
	buf[14] = (unsigned char)(n >> 8);
	buf[15] = (unsigned char)n;
	return ((ssize_t)off);
}

/* Fail with ${msg}. */
static int
fail(const char **why, const char *msg)
{

	if (why != NULL)
		*why = msg;
	return (-1);
}

static void
set_in(struct sockaddr_storage *ss, const unsigned char a[4], uint16_t port)
{
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, a, 4);
	sin.sin_port = htons(port);
	memcpy(ss, &sin, sizeof(sin));
}

static void
set_in6(struct sockaddr_storage *ss, const unsigned char a[16], uint16_t port)
{
	struct sockaddr_in6 sin6;

	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	memcpy(&sin6.sin6_addr, a, 16);
	sin6.sin6_port = htons(port);
	memcpy(ss, &sin6, sizeof(sin6));
}

/*
 * Match the literal ${s} at *${p} in ${buf} up to ${end}: return 1 and move
 * *${p} past it, 0 if the bytes end while still matching, -1 if they differ.
 */
static int
lit(const unsigned char *buf, size_t end, size_t *p, const char *s)
{
	size_t i, n = strlen(s);

	for (i = 0; i < n; i++) {
		if (*p + i >= end)
			return (0);
		if (buf[*p + i] != (unsigned char)s[i])
			return (-1);
	}
	*p += n;
	return (1);
}

enum v1_field { V1_IP4, V1_IP6, V1_PORT };

static int
is_digit(unsigned char c)
{

	return (c >= '0' && c <= '9');
}

static int
is_ip6_char(unsigned char c)
{

	return (is_digit(c) || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F') || c == ':' || c == '.');
}

/*
 * Spec 2.1: four decimal numbers 0..255 separated by single dots, without
 * leading zeroes.  Return 0 with the address in ${out}, or -1.
 */
static int
v1_ip4(const unsigned char *p, size_t n, unsigned char out[4])
{
	size_t i = 0, start;
	unsigned int v;
	int k;

	for (k = 0; k < 4; k++) {
		if (k > 0) {
			if (i >= n || p[i] != '.')
				return (-1);
			i++;
		}
		start = i;
		for (v = 0; i < n && i - start < 3 && is_digit(p[i]); i++)
			v = v * 10 + (unsigned int)(p[i] - '0');
		if (i == start || v > 255 || (p[start] == '0' && i - start > 1))
			return (-1);
		out[k] = (unsigned char)v;
	}
	return (i == n ? 0 : -1);
}

/* An IPv6 address as inet_pton() reads it.  Return 0, or -1. */
static int
v1_ip6(const unsigned char *p, size_t n, unsigned char out[16])
{
	char s[INET6_ADDRSTRLEN];
	size_t i;

	if (n == 0 || n >= sizeof(s))
		return (-1);
	for (i = 0; i < n; i++)
		if (!is_ip6_char(p[i]))
			return (-1);
	memcpy(s, p, n);
	s[n] = '\0';
	return (inet_pton(AF_INET6, s, out) == 1 ? 0 : -1);
}

/* Spec 2.1: a decimal 0..65535 without leading zeroes.  Return 0, or -1. */
static int
v1_port(const unsigned char *p, size_t n, uint16_t *out)
{
	unsigned long v = 0;
	size_t i;

	if (n == 0 || n > 5 || (p[0] == '0' && n > 1))
		return (-1);
	for (i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return (-1);
		v = v * 10 + (unsigned long)(p[i] - '0');
	}
	if (v > 65535)
		return (-1);
	*out = (uint16_t)v;
	return (0);
}

/* Whether the ${n} bytes at ${p} can begin a field of ${kind}. */
static int
v1_prefix_ok(enum v1_field kind, const unsigned char *p, size_t n)
{
	size_t i;

	switch (kind) {
	case V1_IP4:
		if (n > 15)
			return (0);
		for (i = 0; i < n; i++)
			if (!is_digit(p[i]) && p[i] != '.')
				return (0);
		return (1);
	case V1_IP6:
		if (n >= INET6_ADDRSTRLEN)
			return (0);
		for (i = 0; i < n; i++)
			if (!is_ip6_char(p[i]))
				return (0);
		return (1);
	case V1_PORT:
		if (n > 5 || (n > 1 && p[0] == '0'))
			return (0);
		for (i = 0; i < n; i++)
			if (!is_digit(p[i]))
				return (0);
		return (1);
	}
	return (0);
}

/* Parse a v1 header; see proxyproto_parse().  ${buf} starts "PROXY ". */
static int
v1_parse(const unsigned char *buf, size_t len, struct proxyproto_hdr *hdr,
    size_t *used, const char **why)
{
	static const char *const proto[] = { "TCP4 ", "TCP6 ", "UNKNOWN" };
	static const char *const bad[] = { "v1: bad source address",
	    "v1: bad destination address", "v1: bad source port",
	    "v1: bad destination port" };
	unsigned char addr[2][16];
	uint16_t port[2];
	size_t n = len < V1_MAX ? len : V1_MAX, end, i, p, q, tlen;
	enum v1_field kind;
	int partial, prefix, af, r, k, f, term;

	/*
	 * Spec 2.1: the line ends with the first CRLF, at most 107 bytes in;
	 * a CR or LF alone never ends it.  A NUL cannot be in it either.
	 */
	for (i = 0; i < n; i++)
		if (buf[i] == '\r' || buf[i] == '\n' || buf[i] == '\0')
			break;
	if (i == n) {
		if (len >= V1_MAX)
			return (fail(why, "v1: no CRLF within 107 bytes"));
		partial = 1;
		end = len;
	} else if (buf[i] != '\r') {
		return (fail(why, "v1: LF or NUL before CRLF"));
	} else if (i + 1 >= V1_MAX) {
		return (fail(why, "v1: no CRLF within 107 bytes"));
	} else if (i + 1 == len) {
		partial = 1;
		end = i;
	} else if (buf[i + 1] != '\n') {
		return (fail(why, "v1: CR without LF"));
	} else {
		partial = 0;
		end = i;
	}

	/*
	 * Fields are checked as they arrive, so that garbage is refused at
	 * once; a field that may still grow is only checked as a prefix.
	 */
	p = 0;
	if ((r = lit(buf, end, &p, "PROXY ")) < 0)
		return (fail(why, "no PROXY header"));
	if (r == 0)
		return (partial ? 0 : fail(why, "v1: truncated line"));
	for (k = 0, prefix = 0; k < 3; k++) {
		q = p;
		if ((r = lit(buf, end, &q, proto[k])) == 1)
			break;
		if (r == 0)
			prefix = 1;
	}
	if (k == 3) {
		if (prefix)
			return (partial ? 0 : fail(why, "v1: truncated line"));
		return (fail(why, "v1: unknown protocol"));
	}
	p = q;

	/* Spec 2.1: after UNKNOWN, anything up to the CRLF is ignored. */
	if (k == 2) {
		if (p < end && buf[p] != ' ')
			return (fail(why, "v1: unknown protocol"));
		if (partial)
			return (0);
		hdr->local = 1;
		*used = end + 2;
		return (1);
	}

	af = k == 0 ? AF_INET : AF_INET6;
	for (f = 0; f < 4; f++) {
		for (tlen = 0; p + tlen < end && buf[p + tlen] != ' '; tlen++)
			continue;
		term = p + tlen < end;
		if (f >= 2)
			kind = V1_PORT;
		else
			kind = af == AF_INET ? V1_IP4 : V1_IP6;

		if (!term && partial)
			return (v1_prefix_ok(kind, buf + p, tlen) ? 0 :
			    fail(why, bad[f]));
		if (tlen == 0)
			return (fail(why, "v1: empty field"));
		if (!term && f < 3)
			return (fail(why, "v1: missing field"));
		if (term && f == 3)
			return (fail(why, "v1: extra field"));

		switch (kind) {
		case V1_IP4:
			r = v1_ip4(buf + p, tlen, addr[f]);
			break;
		case V1_IP6:
			r = v1_ip6(buf + p, tlen, addr[f]);
			break;
		case V1_PORT:
			r = v1_port(buf + p, tlen, &port[f - 2]);
			break;
		}
		if (r != 0)
			return (fail(why, bad[f]));
		p += tlen + 1;
	}

	/* Only a whole line gets here: a partial one returned in the loop. */
	if (af == AF_INET) {
		set_in(&hdr->src, addr[0], port[0]);
		set_in(&hdr->dst, addr[1], port[1]);
	} else {
		set_in6(&hdr->src, addr[0], port[0]);
		set_in6(&hdr->dst, addr[1], port[1]);
	}
	*used = end + 2;
	return (1);
}

/* CRC32c (Castagnoli, reflected 0x82f63b78), as in RFC 4960 appendix B. */
static uint32_t
crc32c(uint32_t crc, const unsigned char *p, size_t n)
{
	int k;

	while (n-- > 0) {
		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78U & (0U - (crc & 1)));
	}
	return (crc);
}

/*
 * Spec 2.2.3: the CRC32c of the whole header (${total} bytes at ${buf}) with
 * the 4-byte checksum value at offset ${at} taken as zero.
 */
static int
crc_ok(const unsigned char *buf, size_t total, size_t at)
{
	static const unsigned char zero[4] = { 0, 0, 0, 0 };
	uint32_t crc = 0xffffffffU, want;

	crc = crc32c(crc, buf, at);
	crc = crc32c(crc, zero, 4);
	crc = crc32c(crc, buf + at + 4, total - at - 4);
	crc ^= 0xffffffffU;
	want = (uint32_t)buf[at] << 24 | (uint32_t)buf[at + 1] << 16 |
	    (uint32_t)buf[at + 2] << 8 | buf[at + 3];
	return (crc == want);
}

/*
 * Check the TLVs in [${off}, ${end}) of the header at ${buf}, ${total} bytes
 * long, each exactly fitting; ${nested} for the sub-TLVs of PP2_TYPE_SSL.
 * Return NULL, or what is wrong.
 */
static const char *
tlv_check(const unsigned char *buf, size_t total, size_t off, size_t end,
    int nested)
{
	const char *err;
	size_t n;

	while (off < end) {
		if (end - off < TLV_HDR)
			return ("v2: truncated TLV");
		n = (size_t)buf[off + 1] << 8 | buf[off + 2];
		if (n > end - off - TLV_HDR)
			return ("v2: TLV runs past the header");
		if (!nested && buf[off] == PP2_TYPE_SSL) {
			if (n < SSL_HDR)
				return ("v2: short PP2_TYPE_SSL");
			if ((err = tlv_check(buf, total,
			    off + TLV_HDR + SSL_HDR, off + TLV_HDR + n, 1)))
				return (err);
		} else if (!nested && buf[off] == PP2_TYPE_CRC32C) {
			if (n != 4)
				return ("v2: bad PP2_TYPE_CRC32C length");
			if (!crc_ok(buf, total, off + TLV_HDR))
				return ("v2: CRC32c mismatch");
		}
		off += TLV_HDR + n;
	}
	return (NULL);
}

/* Parse a v2 header; see proxyproto_parse().  ${buf} starts the signature. */
static int
v2_parse(const unsigned char *buf, size_t len, struct proxyproto_hdr *hdr,
    size_t *used, const char **why)
{
	const char *err;
	size_t total, alen, need;
	unsigned int cmd, af, tp;

	/* Every byte is checked as soon as it is there (spec 2.2). */
	if (len <= 12)
		return (0);
	if (buf[12] >> 4 != V2_VERSION)
		return (fail(why, "v2: bad version"));
	cmd = buf[12] & 0x0f;
	if (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY)
		return (fail(why, "v2: bad command"));
	if (len <= 13)
		return (0);
	af = buf[13] >> 4;
	tp = buf[13] & 0x0f;
	if (af > V2_AF_UNIX || tp > V2_TP_DGRAM)
		return (fail(why, "v2: bad family or transport"));
	if (cmd == V2_CMD_PROXY && (af == V2_AF_UNIX || tp == V2_TP_DGRAM))
		return (fail(why, "v2: unsupported family or transport"));
	if (len < V2_HDR)
		return (0);

	alen = (size_t)buf[14] << 8 | buf[15];
	total = V2_HDR + alen;
	if (total > PROXYPROTO_MAX)
		return (fail(why, "v2: header too long"));

	if (cmd == V2_CMD_PROXY && tp == V2_TP_STREAM && af == V2_AF_INET)
		need = V2_LEN_INET;
	else if (cmd == V2_CMD_PROXY && tp == V2_TP_STREAM &&
	    af == V2_AF_INET6)
		need = V2_LEN_INET6;
	else
		need = 0;
	if (alen < need)
		return (fail(why, "v2: address block too short"));
	if (len < total)
		return (0);

	/*
	 * Spec 2.2: LOCAL, or PROXY for an unspecified family or transport:
	 * keep the connection's own addresses, ignore the rest.
	 */
	if (need == 0) {
		hdr->local = 1;
		*used = total;
		return (1);
	}

	if ((err = tlv_check(buf, total, V2_HDR + need, total, 0)) != NULL)
		return (fail(why, err));
	if (af == V2_AF_INET) {
		set_in(&hdr->src, buf + 16, (uint16_t)(buf[24] << 8 | buf[25]));
		set_in(&hdr->dst, buf + 20, (uint16_t)(buf[26] << 8 | buf[27]));
	} else {
		set_in6(&hdr->src, buf + 16,
		    (uint16_t)(buf[48] << 8 | buf[49]));
		set_in6(&hdr->dst, buf + 32,
		    (uint16_t)(buf[50] << 8 | buf[51]));
	}
	*used = total;
	return (1);
}

/**
 * proxyproto_parse(buf, len, hdr, used, why):
 * Parse a v1 or v2 header at the start of ${buf}.  Return 1 with *${used}
 * set to the header's length when it is complete, 0 if more bytes are
 * needed (never when ${len} >= PROXYPROTO_MAX), or -1 if it is malformed,
 * with *${why} set to a static message (then nothing is to be trusted and
 * the connection is to be closed).
 */
int
proxyproto_parse(const unsigned char *buf, size_t len,
    struct proxyproto_hdr *hdr, size_t *used, const char **why)
{
	size_t n;

	memset(hdr, 0, sizeof(*hdr));
	if (len == 0)
		return (0);

	/*
	 * Spec 2.2 tells the versions apart by their first bytes; anything
	 * else is refused at its first byte (no guessing, spec 2).
	 */
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) == 0)
		return (v1_parse(buf, len, hdr, used, why));
	n = len < sizeof(v2sig) ? len : sizeof(v2sig);
	if (memcmp(buf, v2sig, n) == 0)
		return (v2_parse(buf, len, hdr, used, why));
	return (fail(why, "no PROXY header"));
}
