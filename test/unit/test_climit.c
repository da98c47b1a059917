/*
 * Unit tests for climit: the cap and the token bucket per client address,
 * IPv4 and IPv6 /64 keys, bounded memory with eviction of idle clients
 * only, the exact refusal replies, and the refusal log (one line, then at
 * most one a second, with counts that add up).
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "climit.h"
#include "log.h"

#define SEC	1000000ULL	/* climit's clock is in microseconds */

static struct sockaddr_storage
addr(const char *text)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, text, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons(12345);
	} else {
		assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr),
		    1);
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(23456);
	}
	return (ss);
}

/* Admit a connection from ${text} at ${now}; return the verdict. */
static enum climit_verdict
admit(struct climit *t, const char *text, uint64_t now, uint32_t *ticket)
{
	struct sockaddr_storage ss = addr(text);
	uint32_t dummy;

	return (climit_admit(t, (struct sockaddr *)&ss, now,
	    ticket != NULL ? ticket : &dummy));
}

static void
test_no_limits(void **state)
{
	struct sockaddr_storage ss = addr("192.0.2.1");
	uint32_t ticket = 99;

	(void)state;
	assert_null(climit_new("x", 0, 0, 100));
	/* No table: everyone is admitted, nothing to release. */
	assert_int_equal(climit_admit(NULL, (struct sockaddr *)&ss, 0,
	    &ticket), CLIMIT_OK);
	assert_int_equal(ticket, 0);
	climit_release(NULL, 0);
	climit_free(NULL);
}

static void
test_cap(void **state)
{
	struct climit *t;
	uint32_t a1, a2, a3, b1;
	int i;

	(void)state;
	assert_non_null(t = climit_new("x", 2, 0, 100));
	assert_int_equal(admit(t, "192.0.2.1", SEC, &a1), CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", SEC, &a2), CLIMIT_OK);
	assert_true(a1 != 0 && a1 == a2);
	assert_int_equal(admit(t, "192.0.2.1", SEC, &a3), CLIMIT_OVER_MAX);
	assert_int_equal(a3, 0);
	/* Another address is not affected. */
	assert_int_equal(admit(t, "192.0.2.2", SEC, &b1), CLIMIT_OK);
	assert_true(b1 != 0 && b1 != a1);
	/* Without a rate limit, refusals go on for as long as it holds 2. */
	for (i = 0; i < 1000; i++)
		assert_int_equal(admit(t, "192.0.2.1", SEC + (uint64_t)i * SEC,
		    NULL), CLIMIT_OVER_MAX);
	climit_release(t, a1);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, &a3), CLIMIT_OK);
	assert_int_equal(a3, a1);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, NULL),
	    CLIMIT_OVER_MAX);
	climit_release(t, a2);
	climit_release(t, a3);
	climit_release(t, b1);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, &a1), CLIMIT_OK);
	climit_release(t, a1);
	/* A stray release never goes below zero. */
	climit_release(t, a1);
	climit_release(t, a1);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, &a1), CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, &a2), CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", 2000 * SEC, NULL),
	    CLIMIT_OVER_MAX);
	climit_free(t);
}

static void
test_keys(void **state)
{
	struct climit *t;
	struct sockaddr_un sun;
	uint32_t ticket = 99;

	(void)state;
	assert_non_null(t = climit_new("x", 1, 0, 100));
	/* IPv6 counts per /64. */
	assert_int_equal(admit(t, "2001:db8:1:2::1", SEC, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "2001:db8:1:2:ffff:ffff:ffff:ffff", SEC,
	    NULL), CLIMIT_OVER_MAX);
	assert_int_equal(admit(t, "2001:db8:1:3::1", SEC, NULL), CLIMIT_OK);
	/* IPv4, plain or IPv4-mapped, is the same client; not its /64. */
	assert_int_equal(admit(t, "198.51.100.7", SEC, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "::ffff:198.51.100.7", SEC, NULL),
	    CLIMIT_OVER_MAX);
	assert_int_equal(admit(t, "198.51.100.8", SEC, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "::ffff:198.51.100.9", SEC, NULL),
	    CLIMIT_OK);
	assert_int_equal(admit(t, "198.51.100.9", SEC, NULL),
	    CLIMIT_OVER_MAX);
	/* ::/64 (::1, say) is not the IPv4 space. */
	assert_int_equal(admit(t, "::1", SEC, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "::2", SEC, NULL), CLIMIT_OVER_MAX);
	assert_int_equal(admit(t, "0.0.0.0", SEC, NULL), CLIMIT_OK);
	/* Not an IP address: not counted. */
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	assert_int_equal(climit_admit(t, (struct sockaddr *)&sun, SEC,
	    &ticket), CLIMIT_OK);
	assert_int_equal(ticket, 0);
	assert_int_equal(climit_admit(t, (struct sockaddr *)&sun, SEC,
	    &ticket), CLIMIT_OK);
	climit_free(t);
}

static void
test_rate(void **state)
{
	struct climit *t;
	uint32_t tk;
	uint64_t now = 50 * SEC;
	int i;

	(void)state;
	assert_non_null(t = climit_new("x", 0, 5, 100));
	/* A burst of 2 x 5 at once, then nothing. */
	for (i = 0; i < 10; i++) {
		assert_int_equal(admit(t, "192.0.2.1", now, &tk), CLIMIT_OK);
		climit_release(t, tk);
	}
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_RATE);
	assert_int_equal(admit(t, "192.0.2.2", now, NULL), CLIMIT_OK);
	/* A token comes back every 200 ms; a refusal does not spend one. */
	assert_int_equal(admit(t, "192.0.2.1", now + 199999, NULL),
	    CLIMIT_OVER_RATE);
	assert_int_equal(admit(t, "192.0.2.1", now + 200000, NULL),
	    CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", now + 200000, NULL),
	    CLIMIT_OVER_RATE);
	/* A steady 5 a second goes on being served. */
	for (i = 2; i < 50; i++)
		assert_int_equal(admit(t, "192.0.2.1", now + (uint64_t)i *
		    200000, NULL), CLIMIT_OK);
	now += 49 * 200000;
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_RATE);
	/* Two seconds idle: the whole burst again, and no more. */
	now += 2 * SEC;
	for (i = 0; i < 10; i++)
		assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_RATE);
	/* Idle a long time: still only one burst. */
	now += 3600 * SEC;
	for (i = 0; i < 10; i++)
		assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_RATE);
	climit_free(t);
}

static void
test_cap_and_rate(void **state)
{
	struct climit *t;
	uint32_t tk[3];
	uint64_t now = SEC;
	int i;

	(void)state;
	assert_non_null(t = climit_new("x", 3, 2, 100));
	for (i = 0; i < 3; i++)
		assert_int_equal(admit(t, "192.0.2.1", now, &tk[i]),
		    CLIMIT_OK);
	/* At the cap: refused for it, and no token is spent. */
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_MAX);
	climit_release(t, tk[0]);
	assert_int_equal(admit(t, "192.0.2.1", now, &tk[0]), CLIMIT_OK);
	/* Burst of 4 spent (3 + 1), one closes: the rate refuses now. */
	climit_release(t, tk[0]);
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_RATE);
	/* A rate refusal is not counted as open. */
	climit_release(t, tk[1]);
	climit_release(t, tk[2]);
	now += 2 * SEC;
	for (i = 0; i < 3; i++)
		assert_int_equal(admit(t, "192.0.2.1", now, &tk[i]),
		    CLIMIT_OK);
	assert_int_equal(admit(t, "192.0.2.1", now, NULL), CLIMIT_OVER_MAX);
	climit_free(t);
}

/*
 * 100,000 distinct addresses through a table for 100 connections: its size
 * never changes, the idle are forgotten, and a client holding connections
 * open is never forgotten (its cap still holds after the flood).
 */
static void
test_bounded(void **state)
{
	struct climit *t;
	uint32_t held[4], tk;
	char text[64];
	uint64_t now = SEC;
	size_t slots;
	int i;

	(void)state;
	assert_non_null(t = climit_new("x", 4, 2, 100));
	slots = climit_slots(t);
	assert_int_equal(slots, 256);
	for (i = 0; i < 4; i++)
		assert_int_equal(admit(t, "2001:db8::7", now, &held[i]),
		    CLIMIT_OK);
	for (i = 0; i < 100000; i++) {
		snprintf(text, sizeof(text), "10.%d.%d.%d", (i >> 16) & 255,
		    (i >> 8) & 255, i & 255);
		assert_int_equal(admit(t, text, now + (uint64_t)i, &tk),
		    CLIMIT_OK);
		climit_release(t, tk);
		assert_true(climit_tracked(t) <= slots);
	}
	assert_int_equal(climit_slots(t), slots);
	assert_int_equal(climit_tracked(t), slots);
	/* Rate state is lost only for the idle ones: never for the held. */
	assert_int_equal(admit(t, "2001:db8::8", now, NULL), CLIMIT_OVER_MAX);
	climit_release(t, held[0]);
	assert_int_equal(admit(t, "2001:db8::8", now + 200000, NULL),
	    CLIMIT_OVER_RATE);
	assert_int_equal(admit(t, "2001:db8::8", now + 2 * SEC, NULL),
	    CLIMIT_OK);
	climit_free(t);
}

/*
 * A table full of open connections (far past max_connections) serves the
 * newcomer uncounted rather than refusing it.
 */
static void
test_full_of_open(void **state)
{
	struct climit *t;
	char text[64];
	uint32_t tk;
	int i, uncounted = 0;

	(void)state;
	assert_non_null(t = climit_new("x", 1, 0, 10));
	for (i = 0; i < 1000; i++) {
		snprintf(text, sizeof(text), "10.0.%d.%d", i >> 8, i & 255);
		assert_int_equal(admit(t, text, SEC, &tk), CLIMIT_OK);
		uncounted += tk == 0;
	}
	assert_true(uncounted >= 1000 - 256);
	assert_int_equal(climit_tracked(t), 256);
	climit_free(t);
}

static void
test_reply(void **state)
{
	char buf[512];
	size_t n;

	(void)state;
	n = climit_reply(CONFIG_PROTO_SMTP, "mx.example.org", buf,
	    sizeof(buf));
	assert_int_equal(n, strlen(buf));
	assert_string_equal(buf, "421 4.7.0 mx.example.org Too many "
	    "connections from your address\r\n");
	n = climit_reply(CONFIG_PROTO_IMAP, "mx.example.org", buf,
	    sizeof(buf));
	assert_int_equal(n, strlen(buf));
	assert_string_equal(buf, "* BYE [UNAVAILABLE] Too many "
	    "connections\r\n");
	n = climit_reply(CONFIG_PROTO_POP3, "mx.example.org", buf,
	    sizeof(buf));
	assert_int_equal(n, strlen(buf));
	assert_string_equal(buf, "-ERR [SYS/TEMP] Too many connections\r\n");
	assert_int_equal(climit_reply(CONFIG_PROTO_NONE, "x", buf,
	    sizeof(buf)), 0);
	/* Too small a buffer: nothing rather than a cut line. */
	assert_int_equal(climit_reply(CONFIG_PROTO_SMTP, "x", buf, 10), 0);
}

/* Sum the "refused=N" of every client_limit line in ${text}. */
static int
count_lines(const char *text, long *refused)
{
	const char *p;
	int n = 0;

	*refused = 0;
	for (p = text; (p = strstr(p, "event=client_limit")) != NULL; p++) {
		const char *r = strstr(p, "refused=");

		assert_non_null(r);
		*refused += strtol(r + 8, NULL, 10);
		n++;
	}
	return (n);
}

/*
 * 300 refusals in a burst: one line at once, the rest within a second in
 * one more line, written by the table's thread; the counts add up.
 */
static void
test_refusal_log(void **state)
{
	struct climit *t;
	struct sockaddr_storage ss = addr("192.0.2.9");
	char path[] = "/tmp/test_climit.XXXXXX", buf[8192];
	int fd, saved, i, lines;
	ssize_t n;
	long refused;

	(void)state;
	log_setup(CONFIG_LOG_INFO, CONFIG_LOG_TEXT);
	assert_true((fd = mkstemp(path)) >= 0);
	assert_true((saved = dup(STDERR_FILENO)) >= 0);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	assert_non_null(t = climit_new("smtps", 1, 1, 100));
	for (i = 0; i < 300; i++)
		climit_refused(t, i % 3 == 0 ? CLIMIT_OVER_RATE :
		    CLIMIT_OVER_MAX, (struct sockaddr *)&ss);
	climit_free(t);
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	assert_true(n > 0);
	buf[n] = '\0';
	close(fd);
	unlink(path);
	lines = count_lines(buf, &refused);
	assert_true(lines >= 1 && lines <= 2);
	assert_int_equal(refused, 300);
	assert_non_null(strstr(buf, "listener=smtps"));
	assert_non_null(strstr(buf, "last_client=192.0.2.9"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_limits),
		cmocka_unit_test(test_cap),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_rate),
		cmocka_unit_test(test_cap_and_rate),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_full_of_open),
		cmocka_unit_test(test_reply),
		cmocka_unit_test(test_refusal_log),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
