/*
 * Unit tests for the session engine itself (proxy/session.c): the actions
 * it returns, in order; the STARTTLS boundary; the held line and its
 * re-offer within one call; control characters and line lengths before and
 * after TLS; passthrough; bounded memory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "proto_transcript.h"

/* The actions of the last call, as a string: "C:..." "B:..." "T" "X:why". */
static char last[1 << 12];

static void
describe(void)
{
	const struct session_action *a;
	size_t i, n, off = 0;

	last[0] = '\0';
	a = session_actions(d.s, &n);
	for (i = 0; i < n && off < sizeof(last) - 1; i++) {
		switch (a[i].kind) {
		case SESSION_TO_CLIENT:
		case SESSION_TO_BACKEND:
			off += (size_t)snprintf(last + off, sizeof(last) - off,
			    "%s%c:%.*s", i ? "|" : "",
			    a[i].kind == SESSION_TO_CLIENT ? 'C' : 'B',
			    (int)(a[i].len > 200 ? 200 : a[i].len), a[i].data);
			break;
		case SESSION_START_TLS:
			off += (size_t)snprintf(last + off, sizeof(last) - off,
			    "%sT", i ? "|" : "");
			break;
		case SESSION_CLOSE:
			off += (size_t)snprintf(last + off, sizeof(last) - off,
			    "%sX:%s", i ? "|" : "", a[i].reason);
			break;
		}
	}
}

static void
feed(enum proto_side side, const char *p, size_t len)
{

	if (side == PROTO_CLIENT)
		(void)session_client(d.s, p, len);
	else
		(void)session_backend(d.s, p, len);
	describe();
	transcript_apply();
}

#define CS(s)	feed(PROTO_CLIENT, (s), strlen(s))
#define BS(s)	feed(PROTO_BACKEND, (s), strlen(s))

static void
smtp_starttls_listener(void)
{

	transcript_start(&proto_smtp_ops, "mx.example.com", 1, 0, 1);
	BS("220 mx ESMTP\r\n");
	CS("EHLO c\r\n");
	BS("250-mx\r\n250 8BITMIME\r\n");
	TO_CLIENT("220 mx ESMTP\r\n250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
	TO_BACKEND("EHLO c\r\n");
}

static void
test_lines_of_one_read_go_as_one_write(void **state)
{

	(void)state;
	transcript_start(&proto_smtp_ops, "mx.example.com", 0, 1, 0);
	BS("220 mx ESMTP\r\n");
	CS("EHLO c\r\n");
	BS("250-mx\r\n250 PIPELINING\r\n");
	CS("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
	/* One action, pointing at the caller's bytes. */
	assert_string_equal(last,
	    "B:MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
}

static void
test_starttls_boundary(void **state)
{

	(void)state;
	smtp_starttls_listener();
	CS("NOOP\r\nSTARTTLS\r\nMAIL FROM:<evil@example.com>\r\n");
	/* NOOP is owed a reply first: STARTTLS is held. */
	assert_string_equal(last, "B:NOOP\r\n");
	BS("250 ok\r\n");
	/* The reply, then the answer, then TLS: nothing after. */
	assert_string_equal(last, "C:250 ok\r\n|C:220 2.0.0 Ready to start "
	    "TLS\r\n|T");
	BS("250 injected\r\n");
	assert_string_equal(last, "");
	CS("RSET\r\n");
	assert_string_equal(last, "");
	transcript_tls_ready();
	/* The new backend's greeting is swallowed; only new bytes pass. */
	BS("220 fresh ESMTP\r\n");
	CS("EHLO c\r\n");
	assert_string_equal(last, "B:EHLO c\r\n");
	TO_BACKEND("NOOP\r\nEHLO c\r\n");
}

static void
test_bare_cr_and_controls_before_tls(void **state)
{
	static const char *bad[] = {
		"EHLO a\rMAIL FROM:<x@y>\r\n", "EHLO a\r\r\n", "EHLO a\x01\r\n",
		"EHLO \033a\r\n", "EHLO a\x7f\r\n",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		transcript_start(&proto_smtp_ops, "mx.example.com", 1, 0, 1);
		BS("220 mx ESMTP\r\n");
		CS(bad[i]);
		assert_string_equal(last, "X:control_char");
		TO_BACKEND("");
		transcript_free();
	}
	/* Tab is text; a CR split from its LF by a read is still CRLF. */
	transcript_start(&proto_smtp_ops, "mx.example.com", 1, 0, 1);
	BS("220 mx ESMTP\r\n");
	CS("EHLO a\tb\r\n");
	assert_false(d.closed);
	BS("250 mx\r\n");
	CS("NOOP\r");
	CS("\n");
	assert_false(d.closed);
	TO_BACKEND("EHLO a\tb\r\nNOOP\r\n");
}

static void
test_controls_pass_on_tls(void **state)
{

	(void)state;
	transcript_start(&proto_smtp_ops, "mx.example.com", 0, 1, 1);
	BS("220 mx ESMTP\r\n");
	CS("NOOP a\rb\x01\r\n");
	assert_false(d.closed);
	TO_BACKEND("NOOP a\rb\x01\r\n");
}

static void
test_long_line_after_tls_streams(void **state)
{
	static char line[300000];
	size_t off, n;

	(void)state;
	transcript_start(&proto_imap_ops, "imap.example.com", 0, 1, 0);
	BS("* OK ready\r\n");
	TO_CLIENT("* OK ready\r\n");
	CS("a SEARCH ALL\r\n");
	TO_BACKEND("a SEARCH ALL\r\n");
	memset(line, '7', sizeof(line));
	memcpy(line, "* SEARCH ", 9);
	memcpy(line + sizeof(line) - 2, "\r\n", 2);
	/* In reads of 16 KB: memory stays bounded while it streams. */
	for (off = 0; off < sizeof(line); off += n) {
		n = sizeof(line) - off < 16384 ? sizeof(line) - off : 16384;
		feed(PROTO_BACKEND, line + off, n);
		assert_false(d.closed);
		assert_true(session_footprint(d.s) < 3 * 65536 + 600000);
	}
	BS("a OK done\r\n");
	assert_int_equal(d.to[PROTO_CLIENT].len, sizeof(line) + 11);
	assert_memory_equal(d.to[PROTO_CLIENT].p, line, sizeof(line));
	assert_memory_equal(d.to[PROTO_CLIENT].p + sizeof(line),
	    "a OK done\r\n", 11);
	d.to[PROTO_CLIENT].len = 0;
	/* The handler kept its footing: the next command is a command. */
	CS("b STARTTLS\r\n");
	TO_CLIENT("b BAD TLS already active\r\n");
}

static void
test_long_bare_lf_line_ends_in_crlf(void **state)
{
	static char line[70001];

	(void)state;
	transcript_start(&proto_smtp_ops, "mx.example.com", 0, 1, 0);
	BS("220 mx ESMTP\r\n");
	CS("EHLO c\r\n");
	BS("250 mx\r\n");
	CS("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
	BS("250 ok\r\n250 ok\r\n354 go\r\n");
	d.to[PROTO_BACKEND].len = 0;
	memset(line, 'x', sizeof(line) - 2);
	line[sizeof(line) - 2] = '\n';
	line[sizeof(line) - 1] = '\0';
	CS(line);
	CS(".\r\n");
	assert_false(d.closed);
	/* 69999 x, then CRLF instead of the bare LF, then the dot. */
	assert_int_equal(d.to[PROTO_BACKEND].len, 69999 + 2 + 3);
	assert_memory_equal(d.to[PROTO_BACKEND].p + 69999, "\r\n.\r\n", 5);
}

static void
test_long_line_before_tls_closes(void **state)
{
	static char line[70000];

	(void)state;
	transcript_start(&proto_imap_ops, "imap.example.com", 1, 0, 0);
	BS("* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n");
	memset(line, 'a', sizeof(line) - 1);
	line[sizeof(line) - 1] = '\0';
	CS(line);
	assert_true(d.closed);
	assert_string_equal(last, "X:line_too_long");
	TO_BACKEND("");
}

static void
test_backend_close_verdict_tells_the_client(void **state)
{

	(void)state;
	smtp_starttls_listener();
	CS("STARTTLS\r\n");
	transcript_tls_ready();
	BS("554 5.3.2 go away\r\n");
	assert_true(d.closed);
	TO_CLIENT("220 2.0.0 Ready to start TLS\r\n"
	    "421 4.3.0 mx.example.com Service not available\r\n");
	/* Nothing after the close. */
	CS("EHLO c\r\n");
	assert_string_equal(last, "");
}

static void
test_held_line_offered_again_in_the_same_call(void **state)
{

	(void)state;
	smtp_starttls_listener();
	/* NOOP is owed a reply, so the refusal of MAIL waits for it. */
	CS("NOOP\r\nMAIL FROM:<a@example.com>\r\n");
	assert_string_equal(last, "B:NOOP\r\n");
	BS("250 2.0.0 Ok\r\n");
	/* The reply, and in the same call the held line's answer. */
	assert_string_equal(last, "C:250 2.0.0 Ok\r\n|"
	    "C:530 5.7.0 Must issue a STARTTLS command first\r\n");
	assert_true(session_client_readable(d.s));
}

/*
 * Message content on TLS goes on in one piece, but the lines the handler
 * must see still reach it: a bare LF line is rewritten, the dot ends the
 * message, and the command after it in the same read is a command.
 */
static void
test_smtp_content_in_one_piece(void **state)
{

	(void)state;
	transcript_start(&proto_smtp_ops, "mx.example.com", 0, 1, 0);
	BS("220 mx ESMTP\r\n");
	CS("EHLO c\r\n");
	BS("250-mx\r\n250 PIPELINING\r\n");
	CS("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
	BS("250 ok\r\n250 ok\r\n354 go\r\n");
	d.to[PROTO_CLIENT].len = d.to[PROTO_BACKEND].len = 0;
	CS("a\r\n..\r\n.x\r\n\001\r\nbare\nc\r\n.\r\nSTARTTLS\r\nRSET\r\n");
	/* The rewritten line is the engine's; the rest the caller's bytes. */
	assert_string_equal(last, "B:a\r\n..\r\n.x\r\n\001\r\n|B:bare\r\n|"
	    "B:c\r\n.\r\n");
	TO_BACKEND("a\r\n..\r\n.x\r\n\001\r\nbare\r\nc\r\n.\r\n");
	/* STARTTLS waits for the dot's reply, RSET for the refusal. */
	BS("250 queued\r\n");
	TO_CLIENT("250 queued\r\n503 5.5.1 Error: TLS already active\r\n");
	TO_BACKEND("RSET\r\n");
	assert_false(d.closed);
}

/*
 * A RETR response on TLS goes on in one piece; a command held behind it is
 * answered after its last line, not inside it.
 */
static void
test_pop3_retr_in_one_piece(void **state)
{

	(void)state;
	transcript_start(&proto_pop3_ops, "pop.example.com", 0, 1, 0);
	BS("+OK ready\r\n");
	CS("RETR 1\r\nSTLS\r\n");
	TO_CLIENT("+OK ready\r\n");
	TO_BACKEND("RETR 1\r\n");
	BS("+OK 9 octets\r\nab\r\n..\r\nbare\n.\r\n");
	assert_string_equal(last, "C:+OK 9 octets\r\nab\r\n..\r\nbare\n.\r\n|"
	    "C:-ERR TLS already active\r\n");
	TO_CLIENT("+OK 9 octets\r\nab\r\n..\r\nbare\n.\r\n"
	    "-ERR TLS already active\r\n");
	/* The response is over: the next backend line is a response. */
	CS("NOOP\r\n");
	TO_BACKEND("NOOP\r\n");
	BS("+OK\r\n");
	TO_CLIENT("+OK\r\n");
	assert_false(d.closed);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_lines_of_one_read_go_as_one_write,
		    teardown),
		cmocka_unit_test_teardown(test_starttls_boundary, teardown),
		cmocka_unit_test_teardown(test_bare_cr_and_controls_before_tls,
		    teardown),
		cmocka_unit_test_teardown(test_controls_pass_on_tls, teardown),
		cmocka_unit_test_teardown(test_long_line_after_tls_streams,
		    teardown),
		cmocka_unit_test_teardown(test_long_bare_lf_line_ends_in_crlf,
		    teardown),
		cmocka_unit_test_teardown(test_long_line_before_tls_closes,
		    teardown),
		cmocka_unit_test_teardown(
		    test_backend_close_verdict_tells_the_client, teardown),
		cmocka_unit_test_teardown(
		    test_held_line_offered_again_in_the_same_call, teardown),
		cmocka_unit_test_teardown(test_smtp_content_in_one_piece,
		    teardown),
		cmocka_unit_test_teardown(test_pop3_retr_in_one_piece,
		    teardown),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
