/*
 * libFuzzer target for the PROXY header parser: arbitrary bytes in.  For
 * every header accepted, the parser must agree with itself on the header
 * alone and on each of its prefixes, and a v1 and a v2 header built from the
 * parsed addresses (with TLVs made from the bytes after the header) must
 * parse back to the same addresses.
 */
#include <sys/socket.h>
#include <sys/types.h>

#include <netinet/in.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* An address as a header carries it: IPv4-mapped IPv6 taken as IPv4. */
struct norm {
	int		 af;
	unsigned char	 a[16];
	uint16_t	 port;
};

static void
norm(const struct sockaddr_storage *ss, struct norm *n)
{
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0,
	    0, 0xff, 0xff };
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;

	memset(n, 0, sizeof(*n));
	switch (ss->ss_family) {
	case AF_INET:
		memcpy(&sin, ss, sizeof(sin));
		n->af = AF_INET;
		memcpy(n->a, &sin.sin_addr, 4);
		n->port = sin.sin_port;
		break;
	case AF_INET6:
		memcpy(&sin6, ss, sizeof(sin6));
		n->port = sin6.sin6_port;
		if (memcmp(sin6.sin6_addr.s6_addr, mapped, 12) == 0) {
			n->af = AF_INET;
			memcpy(n->a, sin6.sin6_addr.s6_addr + 12, 4);
		} else {
			n->af = AF_INET6;
			memcpy(n->a, sin6.sin6_addr.s6_addr, 16);
		}
		break;
	default:
		abort();
	}
}

static void
same_addrs(const struct proxyproto_hdr *x, const struct proxyproto_hdr *y)
{
	struct norm a, b;

	if (x->local || y->local)
		abort();
	norm(&x->src, &a);
	norm(&y->src, &b);
	if (memcmp(&a, &b, sizeof(a)) != 0)
		abort();
	norm(&x->dst, &a);
	norm(&y->dst, &b);
	if (memcmp(&a, &b, sizeof(a)) != 0)
		abort();
}

/* Parse, checking what the interface promises; return the result. */
static int
parse(const unsigned char *buf, size_t len, struct proxyproto_hdr *hdr,
    size_t *used)
{
	const char *why = NULL;
	int r;

	*used = (size_t)-1;
	r = proxyproto_parse(buf, len, hdr, used, &why);
	if (r == -1 && why == NULL)
		abort();
	if (r == 0 && len >= PROXYPROTO_MAX)
		abort();
	if (r == 1 && (*used == 0 || *used > len || *used > PROXYPROTO_MAX))
		abort();
	if (r < -1 || r > 1)
		abort();
	return (r);
}

/* Parse a header we built, which must be whole and exactly ${len} long. */
static void
reparse(const unsigned char *buf, ssize_t len, struct proxyproto_hdr *hdr)
{
	size_t used;

	if (len <= 0)
		abort();
	if (parse(buf, (size_t)len, hdr, &used) != 1 || used != (size_t)len)
		abort();
}

/*
 * Fill ${tls} from ${data}: a flags byte, then NUL-separated strings for
 * sni, alpn, version, cipher and cn (copied into ${sbuf}).  Return their
 * total length.
 */
static size_t
make_tls(const uint8_t *data, size_t size, struct proxyproto_tls *tls,
    char *sbuf, size_t cap)
{
	const char **field[] = { &tls->sni, &tls->alpn, &tls->version,
	    &tls->cipher, &tls->cn };
	size_t i, n, total = 0, off = 0;

	memset(tls, 0, sizeof(*tls));
	if (size == 0)
		return (0);
	tls->client_tls = data[0] & 1;
	tls->cert_conn = (data[0] >> 1) & 1;
	tls->cert_verified = (data[0] >> 2) & 1;
	data++;
	size--;
	for (i = 0; i < sizeof(field) / sizeof(field[0]); i++) {
		for (n = 0; n < size && data[n] != '\0'; n++)
			continue;
		if (n + 1 > cap - off)
			break;
		memcpy(sbuf + off, data, n);
		sbuf[off + n] = '\0';
		*field[i] = sbuf + off;
		off += n + 1;
		total += n;
		if (n == size)
			break;
		data += n + 1;
		size -= n + 1;
	}
	return (total);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char sbuf[4 * PROXYPROTO_MAX];
	struct proxyproto_hdr h, h2, h3;
	struct proxyproto_tls tls;
	unsigned char v1[PROXYPROTO_MAX], v2[PROXYPROTO_MAX], again[PROXYPROTO_MAX];
	unsigned char *copy;
	size_t used, used2, k, strs;
	ssize_t n1, n2, n3;

	if (parse(data, size, &h, &used) != 1)
		return (0);

	/* The header alone gives the same; any prefix of it is incomplete. */
	if ((copy = malloc(used)) == NULL)
		abort();
	memcpy(copy, data, used);
	if (parse(copy, used, &h2, &used2) != 1 || used2 != used ||
	    memcmp(&h, &h2, sizeof(h)) != 0)
		abort();
	for (k = 0; k < used; k++)
		if (parse(copy, k, &h2, &used2) != 0)
			abort();
	free(copy);

	strs = make_tls(data + used, size - used, &tls, sbuf, sizeof(sbuf));

	if (h.local) {
		/* No addresses (ss_family 0): UNKNOWN and LOCAL, local again. */
		n1 = proxyproto_v1((struct sockaddr *)&h.src,
		    (struct sockaddr *)&h.dst, (char *)v1, sizeof(v1));
		if (n1 != 15 || memcmp(v1, "PROXY UNKNOWN\r\n", 15) != 0)
			abort();
		n2 = proxyproto_v2((struct sockaddr *)&h.src,
		    (struct sockaddr *)&h.dst, &tls, v2, sizeof(v2));
		if (n2 == -1 && strs + 16 + 7 * 3 + 5 <= PROXYPROTO_MAX)
			abort();
		if (n2 != -1) {
			reparse(v2, n2, &h2);
			if (!h2.local)
				abort();
		}
		return (0);
	}

	n1 = proxyproto_v1((struct sockaddr *)&h.src, (struct sockaddr *)&h.dst,
	    (char *)v1, sizeof(v1));
	reparse(v1, n1, &h2);
	same_addrs(&h, &h2);

	n2 = proxyproto_v2((struct sockaddr *)&h.src, (struct sockaddr *)&h.dst,
	    &tls, v2, sizeof(v2));
	if (n2 == -1) {
		/* Only when the strings cannot fit. */
		if (strs + 16 + 36 + 7 * 3 + 5 <= PROXYPROTO_MAX)
			abort();
		return (0);
	}
	reparse(v2, n2, &h3);
	same_addrs(&h, &h3);

	/* v1 and v2 reduce addresses the same way. */
	if (memcmp(&h2, &h3, sizeof(h2)) != 0)
		abort();

	/* Building again from what was parsed gives the same bytes. */
	n3 = proxyproto_v2((struct sockaddr *)&h3.src,
	    (struct sockaddr *)&h3.dst, &tls, again, sizeof(again));
	if (n3 != n2 || memcmp(again, v2, (size_t)n2) != 0)
		abort();
	return (0);
}
