/*
 * Unit tests for proto_base.c: proto_span_body(), the scan that lets
 * message content pass without a handler call per line.  Every stop is
 * tried at every offset, so that it falls in the first octet, inside and
 * across the 64-octet blocks and in the scalar tail.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "proto_base.h"

#define N	300

/* ${n} octets of CRLF lines of 7 octets ("xxxxx\r\n"), then a tail. */
static size_t
lines(char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		b[i] = i % 7 == 5 ? '\r' : i % 7 == 6 ? '\n' : 'x';
	return (n);
}

static void
test_plain_lines_up_to_the_last_lf(void **state)
{
	char b[N];

	(void)state;
	lines(b, N);
	/* 300 = 42 * 7 + 6: the unfinished tail is not taken. */
	assert_int_equal(proto_span_body(b, N, 65536, 1), 42 * 7);
	assert_int_equal(proto_span_body(b, N, 65536, 0), 42 * 7);
	assert_int_equal(proto_span_body(b, 6, 65536, 1), 0);
	assert_int_equal(proto_span_body(b, 0, 65536, 1), 0);
	/* At most max octets are looked at: whole lines within them. */
	assert_int_equal(proto_span_body(b, N, 100, 1), 14 * 7);
}

static void
test_stops_before_the_dot_line(void **state)
{
	static const char *const ends[] = { ".\r\n", ".\n" };
	char b[N + 8];
	size_t at, e, n;

	(void)state;
	for (e = 0; e < 2; e++) {
		n = strlen(ends[e]);
		for (at = 0; at + 40 < N; at += 7) {
			lines(b, N);
			memcpy(b + at, ends[e], n);
			memcpy(b + at + n, "xxxxx\r\n", 7);
			assert_int_equal(proto_span_body(b, at + n + 7, 65536, 0),
			    at);
			assert_int_equal(proto_span_body(b, at + n + 7, 65536, 1),
			    at);
		}
	}
}

static void
test_dot_stuffed_lines_pass(void **state)
{
	char b[N];
	size_t at;

	(void)state;
	for (at = 0; at + 7 <= N; at += 7) {
		lines(b, N);
		memcpy(b + at, "..", 2);	/* "..xxx\r\n" */
		assert_int_equal(proto_span_body(b, N, 65536, 1), 42 * 7);
		memcpy(b + at, ".x", 2);	/* ".xxxx\r\n" */
		assert_int_equal(proto_span_body(b, N, 65536, 1), 42 * 7);
	}
}

static void
test_bare_lf_stops_smtp_only(void **state)
{
	char b[N];
	size_t at, k;

	(void)state;
	for (at = 0; at + 7 <= 42 * 7; at += 7)
		for (k = 0; k <= 5; k++) {
			/* The line at ${at} ends in a bare LF. */
			lines(b, N);
			if (k < 5)
				b[at + k] = '\n';	/* "xx\n" */
			else
				b[at + 5] = 'x';	/* "xxxxxx\n" */
			assert_int_equal(proto_span_body(b, N, 65536, 1), at);
			/* POP3 passes it on as it is. */
			assert_int_equal(proto_span_body(b, N, 65536, 0),
			    42 * 7);
		}
}

static void
test_empty_bare_line(void **state)
{
	char b[N];

	(void)state;
	lines(b, N);
	b[0] = '\n';
	assert_int_equal(proto_span_body(b, N, 65536, 1), 0);
	lines(b, N);
	b[70] = '\n';	/* "\r\n" then "\n": an empty line, bare */
	assert_int_equal(proto_span_body(b, N, 65536, 1), 70);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_lines_up_to_the_last_lf),
		cmocka_unit_test(test_stops_before_the_dot_line),
		cmocka_unit_test(test_dot_stuffed_lines_pass),
		cmocka_unit_test(test_bare_lf_stops_smtp_only),
		cmocka_unit_test(test_empty_bare_line),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
