/*
 * Unit tests for proxyproto: byte-exact v1 and v2 headers (the expected bytes
 * are written out by hand from HAProxy's proxy-protocol.txt, never taken
 * from the builder), parser round trips, and every way a header can be cut
 * short or be wrong.
 */
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proxyproto.h"

/* The v2 signature, spec 2.2, as hex for the vectors below. */
#define SIG	"0d0a0d0a000d0a515549540a"

/* Decode the hex digits in ${hex} (spaces ignored) into ${out}. */
static size_t
unhex(const char *hex, unsigned char *out, size_t cap)
{
	size_t n = 0;
	int hi = -1, v = 0;

	for (; *hex != '\0'; hex++) {
		if (*hex == ' ')
			continue;
		if (*hex >= '0' && *hex <= '9')
			v = *hex - '0';
		else if (*hex >= 'a' && *hex <= 'f')
			v = *hex - 'a' + 10;
		else
			fail_msg("bad hex digit %c", *hex);
		if (hi < 0) {
			hi = v;
			continue;
		}
		assert_true(n < cap);
		out[n++] = (unsigned char)(hi << 4 | v);
		hi = -1;
	}
	assert_int_equal(hi, -1);
	return (n);
}

/* A string as hex, for the v2 vectors. */
static const char *
strhex(const char *s)
{
	static char buf[8][512];
	static int k;
	char *p = buf[k++ % 8];
	size_t i;

	for (i = 0; s[i] != '\0'; i++)
		snprintf(p + 2 * i, 3, "%02x", (unsigned char)s[i]);
	p[2 * i] = '\0';
	return (p);
}

static struct sockaddr_storage
sa4(const char *a, unsigned int port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

	memset(&ss, 0, sizeof(ss));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, a, &sin->sin_addr), 1);
	return (ss);
}

static struct sockaddr_storage
sa6(const char *a, unsigned int port)
{
	struct sockaddr_storage ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof(ss));
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET6, a, &sin6->sin6_addr), 1);
	return (ss);
}

static struct sockaddr_storage
saun(const char *path)
{
	struct sockaddr_storage ss;
	struct sockaddr_un *sun = (struct sockaddr_un *)&ss;

	memset(&ss, 0, sizeof(ss));
	sun->sun_family = AF_UNIX;
	snprintf(sun->sun_path, sizeof(sun->sun_path), "%s", path);
	return (ss);
}

#define SA(ss)	((const struct sockaddr *)&(ss))

/* ${ss} is the IP address ${a} (in its own family) and ${port}. */
static void
check_addr(const struct sockaddr_storage *ss, int af, const char *a,
    unsigned int port)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
	unsigned char want[16];

	assert_int_equal(ss->ss_family, af);
	assert_int_equal(inet_pton(af, a, want), 1);
	if (af == AF_INET) {
		assert_memory_equal(&sin->sin_addr, want, 4);
		assert_int_equal(ntohs(sin->sin_port), port);
	} else {
		assert_memory_equal(&sin6->sin6_addr, want, 16);
		assert_int_equal(ntohs(sin6->sin6_port), port);
		assert_int_equal(sin6->sin6_scope_id, 0);
	}
}

/* Parse ${len} bytes, expecting ${want}; return *used for 1. */
static size_t
parse(const void *buf, size_t len, int want, struct proxyproto_hdr *hdr)
{
	size_t used = (size_t)-1;
	const char *why = NULL;
	int r;

	r = proxyproto_parse(buf, len, hdr, &used, &why);
	if (r != want)
		fail_msg("parse of %zu bytes: %d (%s), wanted %d", len, r,
		    why ? why : "-", want);
	if (r == -1)
		assert_non_null(why);
	if (r == 1)
		assert_true(used <= len);
	return (used);
}

/* Every proper prefix of the ${len} bytes is a valid start: 0. */
static void
all_prefixes(const void *buf, size_t len)
{
	struct proxyproto_hdr hdr;
	unsigned char *copy;
	const char *why = NULL;
	size_t k, used;
	int r;

	/* A heap copy of each prefix, so ASan sees any read past it. */
	for (k = 0; k < len; k++) {
		assert_non_null(copy = malloc(k + 1));
		memcpy(copy, buf, k);
		r = proxyproto_parse(copy, k, &hdr, &used, &why);
		free(copy);
		if (r != 0)
			fail_msg("prefix of %zu bytes: %d (%s)", k, r,
			    why ? why : "-");
	}
}

/* Parse a string expected to be refused. */
#define BAD(s)	parse((s), strlen(s), -1, &hdr)
/* Parse a string expected to be a valid, incomplete prefix. */
#define MORE(s)	parse((s), strlen(s), 0, &hdr)

/* v1 builder. */

static void
test_v1_tcp4(void **state)
{
	static const char want[] =
	    "PROXY TCP4 192.0.2.1 198.51.100.7 51234 25\r\n";
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	char buf[128];
	size_t n = sizeof(want) - 1;

	(void)state;
	memset(buf, 'x', sizeof(buf));
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, sizeof(buf)), n);
	assert_memory_equal(buf, want, n);
	assert_int_equal(buf[n], 'x');		/* no NUL written */

	/* Exactly enough room, and one byte less. */
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, n), n);
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, n - 1), -1);
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, 0), -1);
}

static void
test_v1_tcp6(void **state)
{
	static const char want[] =
	    "PROXY TCP6 2001:db8::1 2001:db8::25 40000 993\r\n";
	struct sockaddr_storage s = sa6("2001:db8::1", 40000);
	struct sockaddr_storage d = sa6("2001:db8:0:0::25", 993);
	char buf[128];

	(void)state;
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, sizeof(buf)),
	    sizeof(want) - 1);
	assert_memory_equal(buf, want, sizeof(want) - 1);
}

static void
test_v1_longest(void **state)
{
	static const char want[] = "PROXY TCP6 "
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe 65535 65535\r\n";
	struct sockaddr_storage s =
	    sa6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
	struct sockaddr_storage d =
	    sa6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
	char buf[104];

	(void)state;
	assert_int_equal(sizeof(want) - 1, 104);
	assert_int_equal(proxyproto_v1(SA(s), SA(d), buf, sizeof(buf)), 104);
	assert_memory_equal(buf, want, 104);
}

static void
test_v1_mapped(void **state)
{
	static const char want4[] =
	    "PROXY TCP4 192.0.2.1 198.51.100.7 51234 143\r\n";
	static const char want6[] =
	    "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 40000 143\r\n";
	struct sockaddr_storage ms = sa6("::ffff:192.0.2.1", 51234);
	struct sockaddr_storage md = sa6("::ffff:198.51.100.7", 143);
	struct sockaddr_storage d4 = sa4("198.51.100.7", 143);
	struct sockaddr_storage s6 = sa6("2001:db8::1", 40000);
	char buf[128];

	(void)state;

	/* A v6 listener with a v4 peer: both ends mapped, sent as TCP4. */
	assert_int_equal(proxyproto_v1(SA(ms), SA(md), buf, sizeof(buf)),
	    sizeof(want4) - 1);
	assert_memory_equal(buf, want4, sizeof(want4) - 1);

	/* One end mapped, the other plain IPv4: TCP4 as well. */
	assert_int_equal(proxyproto_v1(SA(ms), SA(d4), buf, sizeof(buf)),
	    sizeof(want4) - 1);
	assert_memory_equal(buf, want4, sizeof(want4) - 1);

	/* A v6 client and a v4 local end: TCP6, the v4 end mapped. */
	assert_int_equal(proxyproto_v1(SA(s6), SA(d4), buf, sizeof(buf)),
	    sizeof(want6) - 1);
	assert_memory_equal(buf, want6, sizeof(want6) - 1);
}

static void
test_v1_unknown(void **state)
{
	struct sockaddr_storage u = saun("/run/x.sock");
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	char buf[32];

	(void)state;
	assert_int_equal(proxyproto_v1(SA(u), SA(u), buf, sizeof(buf)), 15);
	assert_memory_equal(buf, "PROXY UNKNOWN\r\n", 15);
	assert_int_equal(proxyproto_v1(SA(u), SA(d), buf, sizeof(buf)), 15);
	assert_memory_equal(buf, "PROXY UNKNOWN\r\n", 15);
	assert_int_equal(proxyproto_v1(NULL, SA(d), buf, sizeof(buf)), 15);
	assert_int_equal(proxyproto_v1(SA(u), SA(u), buf, 14), -1);
}

/* v2 builder. */

#define V2_TCP4	SIG "21 11 000c c0000201 c6336407 c822 0019"
#define V2_TCP6	SIG "21 21 0024" \
	"20010db8000000000000000000000001" \
	"20010db8000000000000000000000025 9c40 03e1"

/* Build v2 from ${s}, ${d}, ${tls}; compare with ${hex}; check room. */
static void
v2_expect(const struct sockaddr *s, const struct sockaddr *d,
    const struct proxyproto_tls *tls, const char *hex)
{
	unsigned char want[PROXYPROTO_MAX], got[PROXYPROTO_MAX + 16];
	struct proxyproto_hdr hdr;
	size_t n = unhex(hex, want, sizeof(want)), k;

	memset(got, 0xee, sizeof(got));
	assert_int_equal(proxyproto_v2(s, d, tls, got, sizeof(got)), n);
	assert_memory_equal(got, want, n);
	assert_int_equal(got[n], 0xee);

	/* Every smaller buffer is refused. */
	assert_int_equal(proxyproto_v2(s, d, tls, got, n), n);
	for (k = 0; k < n; k++)
		assert_int_equal(proxyproto_v2(s, d, tls, got, k), -1);

	/* And it parses back, whole, and not before it is whole. */
	assert_int_equal(parse(want, n, 1, &hdr), n);
	all_prefixes(want, n);
}

static void
test_v2_tcp4(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct sockaddr_storage ms = sa6("::ffff:192.0.2.1", 51234);
	struct sockaddr_storage md = sa6("::ffff:198.51.100.7", 25);

	(void)state;
	v2_expect(SA(s), SA(d), NULL, V2_TCP4);
	v2_expect(SA(ms), SA(md), NULL, V2_TCP4);
	v2_expect(SA(ms), SA(d), NULL, V2_TCP4);
}

static void
test_v2_tcp6(void **state)
{
	struct sockaddr_storage s = sa6("2001:db8::1", 40000);
	struct sockaddr_storage d = sa6("2001:db8::25", 993);
	struct sockaddr_storage d4 = sa4("198.51.100.7", 993);

	(void)state;
	v2_expect(SA(s), SA(d), NULL, V2_TCP6);

	/* Mixed families: the IPv4 end goes v4-mapped. */
	v2_expect(SA(s), SA(d4), NULL, SIG "21 21 0024"
	    "20010db8000000000000000000000001"
	    "00000000000000000000ffffc6336407 9c40 03e1");
}

static void
test_v2_local(void **state)
{
	struct sockaddr_storage u = saun("/run/x.sock");
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls tls = { .alpn = "smtp" };

	(void)state;
	v2_expect(SA(u), SA(d), NULL, SIG "20 00 0000");
	v2_expect(NULL, NULL, NULL, SIG "20 00 0000");

	/* TLVs right after the empty address block. */
	v2_expect(SA(u), SA(d), &tls, SIG "20 00 0007 01 0004 736d7470");
}

static void
test_v2_alpn(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls tls = { .alpn = "imap" };

	(void)state;
	/* 12 + 3 + 4 = 19 */
	v2_expect(SA(s), SA(d), &tls, SIG "21 11 0013 c0000201 c6336407"
	    "c822 0019 01 0004 696d6170");
}

static void
test_v2_authority(void **state)
{
	struct sockaddr_storage s = sa6("2001:db8::1", 40000);
	struct sockaddr_storage d = sa6("2001:db8::25", 993);
	struct proxyproto_tls tls = { .sni = "mail.example.com" };

	(void)state;
	/* 36 + 3 + 16 = 55 */
	v2_expect(SA(s), SA(d), &tls, SIG "21 21 0037"
	    "20010db8000000000000000000000001"
	    "20010db8000000000000000000000025 9c40 03e1"
	    "02 0010 6d61696c2e6578616d706c652e636f6d");
}

static void
test_v2_ssl_no_cert(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls tls = { .client_tls = 1, .version = "TLSv1.3",
	    .cipher = "TLS_AES_256_GCM_SHA384", .cn = "ignored" };

	(void)state;
	/*
	 * client = PP2_CLIENT_SSL, verify = 1 (no certificate, so not
	 * verified), VERSION (3 + 7) and CIPHER (3 + 22), no CN: 5 + 10 +
	 * 25 = 40 = 0x28; 12 + 3 + 40 = 55.
	 */
	v2_expect(SA(s), SA(d), &tls, SIG "21 11 0037 c0000201 c6336407"
	    "c822 0019"
	    "20 0028 01 00000001"
	    "21 0007 544c5376312e33"
	    "23 0016 544c535f4145535f3235365f47434d5f534841333834");
}

static void
test_v2_ssl_verified(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls tls = { .client_tls = 1, .cert_conn = 1,
	    .cert_verified = 1, .version = "TLSv1.3",
	    .cipher = "TLS_AES_256_GCM_SHA384", .cn = "alice" };

	(void)state;
	/*
	 * client = SSL | CERT_CONN | CERT_SESS = 7, verify = 0, then VERSION,
	 * CN "alice" (3 + 5) and CIPHER: 5 + 10 + 8 + 25 = 48 = 0x30.
	 */
	v2_expect(SA(s), SA(d), &tls, SIG "21 11 003f c0000201 c6336407"
	    "c822 0019"
	    "20 0030 07 00000000"
	    "21 0007 544c5376312e33"
	    "22 0005 616c696365"
	    "23 0016 544c535f4145535f3235365f47434d5f534841333834");
}

static void
test_v2_ssl_unverified(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls tls = { .client_tls = 1, .cert_conn = 1,
	    .cert_verified = 0, .version = "TLSv1.2", .cn = "mallory" };
	struct proxyproto_tls odd = { .client_tls = 1, .cert_conn = 0,
	    .cert_verified = 1, .cn = "mallory" };

	(void)state;
	/* A certificate that did not verify: verify = 1 and no CN. */
	v2_expect(SA(s), SA(d), &tls, SIG "21 11 001e c0000201 c6336407"
	    "c822 0019"
	    "20 000f 07 00000001"
	    "21 0007 544c5376312e32");

	/* "Verified" without a certificate is not verified. */
	v2_expect(SA(s), SA(d), &odd, SIG "21 11 0014 c0000201 c6336407"
	    "c822 0019"
	    "20 0005 01 00000001");
}

static void
test_v2_all_tlvs(void **state)
{
	struct sockaddr_storage s = sa6("2001:db8::1", 40000);
	struct sockaddr_storage d = sa6("2001:db8::25", 993);
	struct proxyproto_tls tls = { .client_tls = 1, .cert_conn = 1,
	    .cert_verified = 1, .sni = "imap.example.org", .alpn = "imap",
	    .version = "TLSv1.2", .cn = "bob",
	    .cipher = "ECDHE-RSA-AES128-GCM-SHA256" };
	char want[1024];

	(void)state;
	/*
	 * ALPN 3 + 4, AUTHORITY 3 + 16, SSL 3 + (5 + 10 + 6 + 30 = 51 =
	 * 0x33): 36 + 7 + 19 + 54 = 116 = 0x74.
	 */
	snprintf(want, sizeof(want), SIG "21 21 0074"
	    "20010db8000000000000000000000001"
	    "20010db8000000000000000000000025 9c40 03e1"
	    "01 0004 %s 02 0010 %s 20 0033 07 00000000"
	    "21 0007 %s 22 0003 %s 23 001b %s",
	    strhex("imap"), strhex("imap.example.org"), strhex("TLSv1.2"),
	    strhex("bob"), strhex("ECDHE-RSA-AES128-GCM-SHA256"));
	v2_expect(SA(s), SA(d), &tls, want);
}

static void
test_v2_empty_strings(void **state)
{
	struct sockaddr_storage s = sa4("192.0.2.1", 51234);
	struct sockaddr_storage d = sa4("198.51.100.7", 25);
	struct proxyproto_tls none = { .sni = "", .alpn = NULL };
	struct proxyproto_tls ssl = { .client_tls = 1, .cert_conn = 1,
	    .cert_verified = 1, .sni = "", .alpn = "", .version = "",
	    .cn = "", .cipher = NULL };

	(void)state;
	v2_expect(SA(s), SA(d), &none, V2_TCP4);
	v2_expect(SA(s), SA(d), &ssl, SIG "21 11 0014 c0000201 c6336407"
	    "c822 0019 20 0005 07 00000000");
}

static void
test_v2_too_long(void **state)
{
	struct sockaddr_storage s = sa6("2001:db8::1", 40000);
	struct sockaddr_storage d = sa6("2001:db8::25", 993);
	struct proxyproto_tls tls = { .client_tls = 1 };
	static char big[2 * PROXYPROTO_MAX];
	static unsigned char buf[4 * PROXYPROTO_MAX];
	struct proxyproto_hdr hdr;
	ssize_t n;

	(void)state;
	/* An SNI that fills the header to exactly PROXYPROTO_MAX. */
	memset(big, 'a', PROXYPROTO_MAX - 16 - 36 - 3 - 8);
	tls.sni = big;
	n = proxyproto_v2(SA(s), SA(d), &tls, buf, sizeof(buf));
	assert_int_equal(n, PROXYPROTO_MAX);
	parse(buf, (size_t)n, 1, &hdr);

	/* One more byte, and anything longer, is never built. */
	big[strlen(big)] = 'a';
	assert_int_equal(proxyproto_v2(SA(s), SA(d), &tls, buf, sizeof(buf)),
	    -1);
	memset(big, 'a', sizeof(big) - 1);
	assert_int_equal(proxyproto_v2(SA(s), SA(d), &tls, buf, sizeof(buf)),
	    -1);
	tls.sni = NULL;
	tls.cn = big;
	tls.cert_conn = tls.cert_verified = 1;
	assert_int_equal(proxyproto_v2(SA(s), SA(d), &tls, buf, sizeof(buf)),
	    -1);
}

/* Parser: round trips. */

static void
test_parse_v1(void **state)
{
	static const char l4[] =
	    "PROXY TCP4 192.0.2.1 198.51.100.7 51234 25\r\nEHLO x\r\n";
	static const char l6[] =
	    "PROXY TCP6 2001:DB8::1 2001:db8::25 0 65535\r\n";
	static const char lm[] =
	    "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n";
	static const char lu[] = "PROXY UNKNOWN\r\n";
	static const char lux[] =
	    "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	struct proxyproto_hdr hdr;

	(void)state;
	assert_int_equal(parse(l4, sizeof(l4) - 1, 1, &hdr), 44);
	assert_int_equal(hdr.local, 0);
	check_addr(&hdr.src, AF_INET, "192.0.2.1", 51234);
	check_addr(&hdr.dst, AF_INET, "198.51.100.7", 25);
	all_prefixes(l4, 44);

	assert_int_equal(parse(l6, sizeof(l6) - 1, 1, &hdr), sizeof(l6) - 1);
	check_addr(&hdr.src, AF_INET6, "2001:db8::1", 0);
	check_addr(&hdr.dst, AF_INET6, "2001:db8::25", 65535);
	all_prefixes(l6, sizeof(l6) - 1);

	/* A mapped address stays what the header said. */
	assert_int_equal(parse(lm, sizeof(lm) - 1, 1, &hdr), sizeof(lm) - 1);
	check_addr(&hdr.src, AF_INET6, "::ffff:192.0.2.1", 1);

	assert_int_equal(parse(lu, sizeof(lu) - 1, 1, &hdr), 15);
	assert_int_equal(hdr.local, 1);
	all_prefixes(lu, 15);

	/* Spec 2.1's worst case, 107 bytes: the rest after UNKNOWN ignored. */
	assert_int_equal(sizeof(lux) - 1, 107);
	assert_int_equal(parse(lux, 107, 1, &hdr), 107);
	assert_int_equal(hdr.local, 1);
	all_prefixes(lux, 107);
}

static void
test_parse_v1_built(void **state)
{
	const char *addrs[][2] = {
		{ "192.0.2.1", "198.51.100.7" }, { "0.0.0.0", "255.255.255.255" },
		{ "2001:db8::1", "::" }, { "::1", "fe80::1:2:3:4" },
	};
	struct proxyproto_hdr hdr;
	char buf[128];
	ssize_t n;
	size_t i;
	int af;

	(void)state;
	for (i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
		af = strchr(addrs[i][0], ':') ? AF_INET6 : AF_INET;
		struct sockaddr_storage s = af == AF_INET ?
		    sa4(addrs[i][0], 1) : sa6(addrs[i][0], 1);
		struct sockaddr_storage d = af == AF_INET ?
		    sa4(addrs[i][1], 65535) : sa6(addrs[i][1], 65535);
		n = proxyproto_v1(SA(s), SA(d), buf, sizeof(buf));
		assert_true(n > 0);
		assert_int_equal(parse(buf, (size_t)n, 1, &hdr), n);
		check_addr(&hdr.src, af, addrs[i][0], 1);
		check_addr(&hdr.dst, af, addrs[i][1], 65535);
	}
}

static void
test_parse_v2(void **state)
{
	unsigned char buf[256];
	struct proxyproto_hdr hdr;
	size_t n;

	(void)state;
	n = unhex(V2_TCP4 "4548", buf, sizeof(buf));
	assert_int_equal(parse(buf, n, 1, &hdr), 28);
	assert_int_equal(hdr.local, 0);
	check_addr(&hdr.src, AF_INET, "192.0.2.1", 51234);
	check_addr(&hdr.dst, AF_INET, "198.51.100.7", 25);

	n = unhex(V2_TCP6, buf, sizeof(buf));
	assert_int_equal(parse(buf, n, 1, &hdr), 52);
	check_addr(&hdr.src, AF_INET6, "2001:db8::1", 40000);
	check_addr(&hdr.dst, AF_INET6, "2001:db8::25", 993);

	/* Unknown TLV types, NOOP and nested SSL are skipped. */
	n = unhex(SIG "21 11 0022 c0000201 c6336407 c822 0019"
	    "04 0000 e0 0002 abcd 20 0008 05 00000000 24 0000 f0 0000", buf,
	    sizeof(buf));
	assert_int_equal(parse(buf, n, 1, &hdr), n);
	all_prefixes(buf, n);
	check_addr(&hdr.src, AF_INET, "192.0.2.1", 51234);
}

static void
test_parse_v2_local(void **state)
{
	static const char *local[] = {
		SIG "20 00 0000",
		SIG "20 11 000c c0000201 c6336407 c822 0019",	/* ignored */
		SIG "20 11 0000",	/* LOCAL: family ignored, no block */
		SIG "20 31 0003 ffffff",	/* junk ignored for LOCAL */
		SIG "21 00 0000",	/* PROXY, AF_UNSPEC */
		SIG "21 00 0003 010000",	/* UNSPEC with a TLV */
		SIG "21 10 0000",	/* AF_INET, UNSPEC transport */
		SIG "21 20 0000",
	};
	unsigned char buf[64];
	struct proxyproto_hdr hdr;
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
		n = unhex(local[i], buf, sizeof(buf));
		assert_int_equal(parse(buf, n, 1, &hdr), n);
		assert_int_equal(hdr.local, 1);
		all_prefixes(buf, n);
	}
}

static void
test_parse_v2_crc32c(void **state)
{
	/* CRC32c computed independently (Python, check "123456789"). */
	static const char good[] = SIG "21 11 0013 c0000201 c6336407"
	    "c822 0019 03 0004 2e386f38";
	static const char bad[] = SIG "21 11 0013 c0000201 c6336407"
	    "c822 0019 03 0004 2e386f39";
	static const char bad2[] = SIG "21 11 0013 c0000201 c6336408"
	    "c822 0019 03 0004 2e386f38";
	static const char shortcrc[] = SIG "21 11 0012 c0000201 c6336407"
	    "c822 0019 03 0003 2e386f";
	unsigned char buf[64];
	struct proxyproto_hdr hdr;
	size_t n;

	(void)state;
	n = unhex(good, buf, sizeof(buf));
	assert_int_equal(parse(buf, n, 1, &hdr), n);
	n = unhex(bad, buf, sizeof(buf));
	parse(buf, n, -1, &hdr);
	n = unhex(bad2, buf, sizeof(buf));
	parse(buf, n, -1, &hdr);
	n = unhex(shortcrc, buf, sizeof(buf));
	parse(buf, n, -1, &hdr);
}

/* Parser: refusals. */

static void
test_parse_signature(void **state)
{
	static const char *bad[] = {
		"X", "EHLO client.example\r\n", "GET / HTTP/1.0\r\n",
		"proxy TCP4", "PROXY\r\n", "PROXY\t", "PROXYTCP4", " PROXY",
		"\r\n\r\n\r",
		"\x16\x03\x01\x02\x00\x01", "\0",
	};
	static const char *more[] = { "P", "PROXY", "PROXY ", "\r", "\r\n\r",
	    "\r\n\r\n" };
	struct proxyproto_hdr hdr;
	unsigned char buf[64];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		parse(bad[i], strlen(bad[i]) ? strlen(bad[i]) : 1, -1, &hdr);
	for (i = 0; i < sizeof(more) / sizeof(more[0]); i++)
		MORE(more[i]);
	parse("", 0, 0, &hdr);

	/* The v2 signature, cut anywhere, with the NUL in it. */
	n = unhex(SIG, buf, sizeof(buf));
	all_prefixes(buf, n);
	buf[4] = '1';
	parse(buf, 5, -1, &hdr);
	n = unhex(SIG, buf, sizeof(buf));
	buf[11] = 0x0d;
	parse(buf, 12, -1, &hdr);
	parse(buf, 7, 0, &hdr);
}

static void
test_parse_v2_refused(void **state)
{
	static const char *bad[] = {
		SIG "11",					/* version 1 */
		SIG "31",					/* version 3 */
		SIG "22",					/* command 2 */
		SIG "2f",
		SIG "21 41",					/* family 4 */
		SIG "20 f0",
		SIG "21 13",					/* transport 3 */
		SIG "20 03",
		SIG "21 31",					/* AF_UNIX */
		SIG "21 30",
		SIG "21 12",					/* DGRAM */
		SIG "21 22",
		SIG "21 02",
		SIG "21 11 000b",				/* short */
		SIG "21 21 0023",
		SIG "21 21 000c",
		SIG "21 11 fff4",				/* too long */
		SIG "20 00 03f1",
		SIG "21 11 ffff",
	};
	struct proxyproto_hdr hdr;
	unsigned char buf[64];
	size_t i, n;

	(void)state;
	/*
	 * Each vector ends with the byte that shows it is wrong: refused
	 * there, and not before (not after a timeout either).
	 */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = unhex(bad[i], buf, sizeof(buf));
		parse(buf, n, -1, &hdr);
		all_prefixes(buf, n);
	}
}

static void
test_parse_v2_sizes(void **state)
{
	static unsigned char buf[PROXYPROTO_MAX + 64];
	struct proxyproto_hdr hdr;
	size_t n;

	(void)state;
	/* The longest accepted header: LOCAL, 1008 bytes of block. */
	memset(buf, 0, sizeof(buf));
	n = unhex(SIG "20 00 03f0", buf, sizeof(buf));
	assert_int_equal(n, 16);
	parse(buf, PROXYPROTO_MAX - 1, 0, &hdr);
	assert_int_equal(parse(buf, sizeof(buf), 1, &hdr), PROXYPROTO_MAX);

	/* PROXY, 12 address bytes and one NOOP TLV of 993 bytes. */
	n = unhex(SIG "21 11 03f0 c0000201 c6336407 c822 0019 04 03e1", buf,
	    sizeof(buf));
	memset(buf + n, 0xaa, sizeof(buf) - n);
	parse(buf, PROXYPROTO_MAX - 1, 0, &hdr);
	assert_int_equal(parse(buf, sizeof(buf), 1, &hdr), PROXYPROTO_MAX);
	/* The same, one byte too long for the TLV. */
	buf[30] = 0xe2;
	parse(buf, sizeof(buf), -1, &hdr);
	/* One byte more than PROXYPROTO_MAX. */
	n = unhex(SIG "20 00 03f1", buf, sizeof(buf));
	parse(buf, 16, -1, &hdr);
}

static void
test_parse_v2_tlv_overrun(void **state)
{
	static const char *bad[] = {
		/* A TLV one byte longer than what is left. */
		SIG "21 11 0013 c0000201 c6336407 c822 0019 01 0005 696d6170",
		/* One or two bytes: no room for a TLV head. */
		SIG "21 11 000d c0000201 c6336407 c822 0019 01",
		SIG "21 11 000e c0000201 c6336407 c822 0019 01 00",
		/* A length that wraps if added carelessly. */
		SIG "21 11 0013 c0000201 c6336407 c822 0019 01 ffff 696d6170",
		/* After a good TLV. */
		SIG "21 11 0013 c0000201 c6336407 c822 0019 04 0000 01 0002"
		    "69",
		/* PP2_TYPE_SSL shorter than client + verify. */
		SIG "21 11 0013 c0000201 c6336407 c822 0019 20 0004 01000000",
		/* A sub-TLV running past PP2_TYPE_SSL (not past the header). */
		SIG "21 11 001b c0000201 c6336407 c822 0019 20 0009 01 00000000"
		    "21 0002 41 04 0000",
		/* A sub-TLV head cut short. */
		SIG "21 11 0016 c0000201 c6336407 c822 0019 20 0007 01 00000000"
		    "21 00",
		/* IPv6 too. */
		SIG "21 21 0025"
		    "20010db8000000000000000000000001"
		    "20010db8000000000000000000000025 9c40 03e1 04",
	};
	struct proxyproto_hdr hdr;
	unsigned char buf[128];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = unhex(bad[i], buf, sizeof(buf));
		parse(buf, n, -1, &hdr);
		all_prefixes(buf, n);
	}
}

static void
test_parse_v1_refused(void **state)
{
	static const char *bad[] = {
		/* Addresses. */
		"PROXY TCP4 256.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2.1.5 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2.01 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0..1 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.1000 1 2\r\n",
		"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",
		"PROXY TCP4 0x7f.0.0.1 198.51.100.7 1 2\r\n",
		"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",
		"PROXY TCP6 ::1 2001:db8:::1 1 2\r\n",
		"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
		"PROXY TCP6 ::1 ::g 1 2\r\n",
		"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n",
		/* Ports. */
		"PROXY TCP4 192.0.2.1 198.51.100.7 99999 25\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 65536 25\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 025\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 +1 25\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 -1 25\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2x\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 000000000025\r\n",
		/* Spaces and fields. */
		"PROXY  TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY TCP4  192.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7  1 2\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1  2\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 \r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
		"PROXY TCP4 192.0.2.1\r\n",
		"PROXY TCP4\r\n",
		"PROXY TCP4 \r\n",
		"PROXY \r\n",
		"PROXY TCP4\t192.0.2.1 198.51.100.7 1 2\r\n",
		/* Protocols. */
		"PROXY TCP5 192.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
		"PROXY UNKNOWNX\r\n",
		"PROXY UNKNOWN\tx\r\n",
		/* Line ends. */
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\n",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\rX",
		"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\r\n",
		"PROXY UNKNOWN x\ny\r\n",
		"PROXY UNKNOWN\n\r\n",
	};
	struct proxyproto_hdr hdr;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		BAD(bad[i]);

	/* Refused while still incomplete, as soon as a field is wrong. */
	BAD("PROXY X");
	BAD("PROXY TCP4 1.2.3.4x");
	BAD("PROXY TCP4 1.2.3.4 5.6.7.8 01");
	BAD("PROXY TCP4 1.2.3.4 5.6.7.8 123456");
	BAD("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ");
	BAD("PROXY TCP4 1234567890123456");
	BAD("PROXY TCP6 ::g");
	BAD("PROXY TCP4 1.2.3.4\n");
	MORE("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r");
	MORE("PROXY TCP4 1.2.3.4 5.6.7.8 1 2");
	MORE("PROXY TCP4 1.2.3.4 5.6.7.8 0 ");
	MORE("PROXY TCP4 1.2.3.4 5.6.7.8 0");
	MORE("PROXY TCP6 ::1 ");
	MORE("PROXY UNKNOWN x");
	MORE("PROXY UNK");
	MORE("PROXY TCP");

	/* A NUL in the line. */
	parse("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33, -1, &hdr);
	parse("PROXY UNKNOWN \0\r\n", 17, -1, &hdr);
}

static void
test_parse_v1_length(void **state)
{
	char line[PROXYPROTO_MAX + 1];
	struct proxyproto_hdr hdr;

	(void)state;
	/* 107 bytes with its CRLF is accepted (see test_parse_v1)... */
	memset(line, 'a', sizeof(line));
	memcpy(line, "PROXY UNKNOWN ", 14);
	memcpy(line + 105, "\r\n", 2);
	assert_int_equal(parse(line, 107, 1, &hdr), 107);

	/* ...108 is not, nor a CR as the 107th byte. */
	memset(line + 105, 'a', 2);
	memcpy(line + 106, "\r\n", 2);
	parse(line, 108, -1, &hdr);
	parse(line, 107, -1, &hdr);

	/* No CRLF within 107 bytes: refused at 107, waiting before. */
	memset(line + 14, 'a', sizeof(line) - 14);
	parse(line, 106, 0, &hdr);
	parse(line, 107, -1, &hdr);
	parse(line, sizeof(line), -1, &hdr);

	/* Never 0 for PROXYPROTO_MAX bytes, whatever they are. */
	memset(line, ' ', sizeof(line));
	memcpy(line, "PROXY TCP4 ", 11);
	parse(line, PROXYPROTO_MAX, -1, &hdr);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_v1_tcp4),
		cmocka_unit_test(test_v1_tcp6),
		cmocka_unit_test(test_v1_longest),
		cmocka_unit_test(test_v1_mapped),
		cmocka_unit_test(test_v1_unknown),
		cmocka_unit_test(test_v2_tcp4),
		cmocka_unit_test(test_v2_tcp6),
		cmocka_unit_test(test_v2_local),
		cmocka_unit_test(test_v2_alpn),
		cmocka_unit_test(test_v2_authority),
		cmocka_unit_test(test_v2_ssl_no_cert),
		cmocka_unit_test(test_v2_ssl_verified),
		cmocka_unit_test(test_v2_ssl_unverified),
		cmocka_unit_test(test_v2_all_tlvs),
		cmocka_unit_test(test_v2_empty_strings),
		cmocka_unit_test(test_v2_too_long),
		cmocka_unit_test(test_parse_v1),
		cmocka_unit_test(test_parse_v1_built),
		cmocka_unit_test(test_parse_v2),
		cmocka_unit_test(test_parse_v2_local),
		cmocka_unit_test(test_parse_v2_crc32c),
		cmocka_unit_test(test_parse_signature),
		cmocka_unit_test(test_parse_v2_refused),
		cmocka_unit_test(test_parse_v2_sizes),
		cmocka_unit_test(test_parse_v2_tlv_overrun),
		cmocka_unit_test(test_parse_v1_refused),
		cmocka_unit_test(test_parse_v1_length),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
