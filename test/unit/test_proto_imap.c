/*
 * Unit tests for the IMAP handler: byte-exact transcripts through the
 * session engine (proxy/session.c), the code conn.c runs.
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

static void
start(int starttls, int on_tls, int require_tls)
{

	transcript_start(&proto_imap_ops, "imap.example.com", starttls, on_tls,
	    require_tls);
}

#define DOVECOT_GREETING \
	"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE " \
	"LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN] Dovecot ready.\r\n"

static void
greet(void)
{

	B(DOVECOT_GREETING);
	d.to[PROTO_CLIENT].len = 0;
}

static void
test_greeting_require_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	B(DOVECOT_GREETING);
	/* SASL-IR goes with AUTH= (issue 12 item 6b). */
	TO_CLIENT("* OK [CAPABILITY IMAP4rev1 LOGIN-REFERRALS ID ENABLE "
	    "IDLE LITERAL+ STARTTLS LOGINDISABLED] Dovecot ready.\r\n");
}

static void
test_greeting_no_require(void **state)
{

	(void)state;
	start(1, 0, 0);
	B("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n");
	TO_CLIENT("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS] ready\r\n");
}

static void
test_greeting_implicit(void **state)
{

	(void)state;
	start(0, 1, 1);
	B("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN] hi\r\n");
	TO_CLIENT("* OK [CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN] hi\r\n");
}

static void
test_greeting_plain(void **state)
{

	(void)state;
	start(1, 0, 1);
	B("* OK IMAP server ready\r\n");
	TO_CLIENT("* OK IMAP server ready\r\n");
	/* A capability response later gets the same treatment. */
	C("a CAPABILITY\r\n");
	TO_BACKEND("a CAPABILITY\r\n");
	B("* CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE\r\n"
	    "a OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 IDLE STARTTLS LOGINDISABLED\r\n"
	    "a OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] done\r\n");
}

static void
test_preauth_require_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	B("* PREAUTH [CAPABILITY IMAP4rev1] logged in as root\r\n");
	TO_CLIENT("* BYE [UNAVAILABLE] Service not available\r\n");
	assert_true(d.closed);
	C("a SELECT INBOX\r\n");
	TO_BACKEND("");
}

static void
test_preauth_no_require(void **state)
{

	(void)state;
	start(1, 0, 0);
	B("* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n");
	/* Authenticated already: STARTTLS is not offered, and refused. */
	TO_CLIENT("* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n");
	C("a STARTTLS\r\n");
	TO_CLIENT("a BAD STARTTLS not allowed after login\r\n");
	TO_BACKEND("");
}

static void
test_refusals(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a LOGIN user pass\r\n");
	TO_CLIENT("a NO [PRIVACYREQUIRED] Must issue STARTTLS first\r\n");
	C("b authenticate PLAIN AHUAcA==\r\n");
	TO_CLIENT("b NO [PRIVACYREQUIRED] Must issue STARTTLS first\r\n");
	C("c SELECT INBOX\r\nd ENABLE UTF8=ACCEPT\r\ne FOO\r\n");
	TO_CLIENT("c BAD Must issue STARTTLS first\r\n"
	    "d BAD Must issue STARTTLS first\r\n"
	    "e BAD Must issue STARTTLS first\r\n");
	TO_BACKEND("");
	C("f capability\r\ng NOOP\r\nh ID NIL\r\ni LOGOUT\r\n");
	TO_BACKEND("f capability\r\ng NOOP\r\nh ID NIL\r\ni LOGOUT\r\n");
	TO_CLIENT("");
	C("j STARTTLS extra\r\n");
	TO_CLIENT("");		/* waits for the four replies */
	B("* CAPABILITY IMAP4rev1\r\nf OK done\r\ng OK done\r\n"
	    "* ID NIL\r\nh OK done\r\n* BYE bye\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
	    "f OK done\r\ng OK done\r\n* ID NIL\r\nh OK done\r\n* BYE bye\r\n");
	B("i OK done\r\n");
	TO_CLIENT("i OK done\r\nj BAD STARTTLS takes no arguments\r\n");
}

static void
test_invalid_tag(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("+x NOOP\r\n\r\nabc\r\n");
	TO_CLIENT("* BAD Invalid tag\r\n* BAD Invalid tag\r\n"
	    "abc BAD Missing command\r\n");
	TO_BACKEND("");
}

static void
test_starttls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a CAPABILITY\r\nb STARTTLS\r\nc LOGIN user pass\r\n");
	TO_BACKEND("a CAPABILITY\r\n");
	TO_CLIENT("");
	B("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n");
	B("a OK done\r\n");
	TO_CLIENT("a OK done\r\nb OK Begin TLS negotiation now\r\n");
	/* The pipelined LOGIN is discarded. */
	TO_BACKEND("");
	assert_int_equal(d.tlswait, 1);
	B("* OK [ALERT] injected\r\n");
	TO_CLIENT("");

	transcript_tls_ready();
	B(DOVECOT_GREETING);
	TO_CLIENT("");
	C("c CAPABILITY\r\n");
	B("* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nc OK done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nc OK done\r\n");
	C("d STARTTLS\r\n");
	TO_CLIENT("d BAD TLS already active\r\n");
	C("e LOGIN user pass\r\n");
	TO_BACKEND("c CAPABILITY\r\ne LOGIN user pass\r\n");
	B("e OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] Logged in\r\n");
	TO_CLIENT("e OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
	/* Parsed to the end: STARTTLS never reaches the backend. */
	assert_false(d.passthrough);
	C("f STARTTLS\r\n");
	TO_CLIENT("f BAD TLS already active\r\n");
	TO_BACKEND("");
}

/*
 * After STARTTLS the new backend's greeting is not shown, also when it
 * comes in two untagged OKs (Dovecot with a slow auth process).
 */
static void
test_tls_ready_greeting_in_two_lines(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a STARTTLS\r\n");
	TO_CLIENT("a OK Begin TLS negotiation now\r\n");
	transcript_tls_ready();
	C("b CAPABILITY\r\n");
	TO_BACKEND("b CAPABILITY\r\n");
	B("* OK Waiting for authentication process to respond..\r\n");
	TO_CLIENT("");
	B(DOVECOT_GREETING);
	TO_CLIENT("");
	B("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nb OK done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nb OK done\r\n");
	/* Once the backend said something else, untagged OKs pass. */
	B("* OK [ALERT] maintenance at noon\r\n");
	TO_CLIENT("* OK [ALERT] maintenance at noon\r\n");
}

static void
test_tls_ready_bye(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a STARTTLS\r\n");
	TO_CLIENT("a OK Begin TLS negotiation now\r\n");
	transcript_tls_ready();
	B("* BYE [UNAVAILABLE] too many connections\r\n");
	TO_CLIENT("* BYE [UNAVAILABLE] Service not available\r\n");
	assert_true(d.closed);
}

static void
test_sync_literal(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	/* The client sends the literal early; it waits for "+". */
	C("a LOGIN {12}\r\nb STARTTLS\r\n pass\r\n");
	TO_BACKEND("a LOGIN {12}\r\n");
	B("+ Ready for literal data\r\n");
	TO_CLIENT("+ Ready for literal data\r\n");
	TO_BACKEND("b STARTTLS\r\n pass\r\n");
	B("a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
	C("c STARTTLS\r\n");
	TO_CLIENT("a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
	    "c BAD TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_sync_literal_direct_reoffer(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a LOGIN {12}\r\nb STARTTLS\r\n pass\r\nc STARTTLS\r\n");
	B("+ go\r\n");
	TO_BACKEND("a LOGIN {12}\r\nb STARTTLS\r\n pass\r\n");
	TO_CLIENT("+ go\r\n");
	B("a NO failed\r\n");
	TO_CLIENT("a NO failed\r\nc BAD TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_sync_literal_declined(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a APPEND INBOX {99999999}\r\nb STARTTLS\r\n");
	TO_BACKEND("a APPEND INBOX {99999999}\r\n");
	/* No "+": the next line is a command after all, as for the backend. */
	B("a NO [OVERQUOTA] Quota exceeded\r\n");
	TO_CLIENT("a NO [OVERQUOTA] Quota exceeded\r\n"
	    "b BAD TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_nonsync_literal(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a LOGIN {12+}\r\nb STARTTLS\r\n {4+}\r\n");
	C("c ST\r\nd STARTTLS\r\n");
	TO_BACKEND("a LOGIN {12+}\r\nb STARTTLS\r\n {4+}\r\nc ST\r\n");
	TO_CLIENT("");		/* d waits for a's reply */
	B("a NO failed\r\n");
	TO_CLIENT("a NO failed\r\nd BAD TLS already active\r\n");
}

static void
test_refused_nonsync_literal(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	/* Refused before TLS: the literals are skipped, never parsed. */
	C("a LOGIN {12+}\r\nb STARTTLS\r\n {13+}\r\nc LOGIN x y\r\n\r\n");
	C("d SELECT {3+}\r\nabc e STARTTLS\r\nf NOOP\r\n");
	TO_CLIENT("a NO [PRIVACYREQUIRED] Must issue STARTTLS first\r\n"
	    "d BAD Must issue STARTTLS first\r\n");
	TO_BACKEND("f NOOP\r\n");
	assert_int_equal(d.tlswait, 0);
}

static void
test_refused_literal_in_allowed(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a ID ({4+}\r\nname {13+}\r\nb STARTTLS\r\n)\r\nc NOOP\r\n");
	TO_CLIENT("a BAD Literals not allowed before STARTTLS\r\n");
	TO_BACKEND("c NOOP\r\n");
	/* A synchronizing one is refused too, and never requested. */
	C("d ID ({4}\r\n");
	TO_CLIENT("");
	B("c OK done\r\n");
	TO_CLIENT("c OK done\r\nd BAD Literals not allowed before STARTTLS\r\n");
	TO_BACKEND("");
}

static void
test_pretls_filter(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	B("* OK [ALERT] System going down\r\n* 3 EXISTS\r\n"
	    "* 1 FETCH (BODY[] {28}\r\n* OK [CAPABILITY STARTTLS]\r\n)\r\n"
	    "+ unsolicited\r\n* OK [CAPABILITY IMAP4rev1] news\r\n");
	TO_CLIENT("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] news\r\n");
	C("a NOOP\r\n");
	B("a NO [ALERT] hello\r\n");
	C("b NOOP\r\n");
	B("b OK [REFERRAL imap://other/] done\r\n");
	TO_CLIENT("a NO hello\r\nb OK done\r\n");
	B("* BYE [ALERT] shutting down\r\n");
	TO_CLIENT("* BYE shutting down\r\n");
}

static void
test_backend_literal_after_tls(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a FETCH 1 BODY[]\r\n");
	B("* 1 FETCH (BODY[] {38}\r\n"
	    "x OK [CAPABILITY STARTTLS] [ALERT]\r\n"
	    " FLAGS (\\Seen) X {2}\r\n{}\r\n)\r\na OK done\r\n");
	TO_CLIENT("* 1 FETCH (BODY[] {38}\r\n"
	    "x OK [CAPABILITY STARTTLS] [ALERT]\r\n"
	    " FLAGS (\\Seen) X {2}\r\n{}\r\n)\r\na OK done\r\n");
}

static void
test_authenticate(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a AUTHENTICATE PLAIN\r\nb STARTTLS\r\n");
	TO_BACKEND("a AUTHENTICATE PLAIN\r\n");
	B("+ \r\n");
	/* The held line is the SASL response. */
	TO_BACKEND("b STARTTLS\r\n");
	B("a OK [CAPABILITY IMAP4rev1 STARTTLS] Logged in\r\n");
	TO_CLIENT("+ \r\na OK [CAPABILITY IMAP4rev1] Logged in\r\n");
	assert_false(d.passthrough);
	C("c STARTTLS\r\n");
	TO_CLIENT("c BAD TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_authenticate_failed(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("a AUTHENTICATE PLAIN\r\n");
	B("+ \r\n");
	C("*\r\n");
	B("a BAD Authentication aborted\r\n");
	C("b STARTTLS\r\n");
	TO_BACKEND("a AUTHENTICATE PLAIN\r\n*\r\n");
	TO_CLIENT("+ \r\na BAD Authentication aborted\r\n"
	    "b BAD TLS already active\r\n");
	assert_false(d.passthrough);
}

static void
test_idle(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("a LOGIN user pass\r\n");
	B("a OK Logged in\r\n");
	/* Plaintext login (require_tls = no): no passthrough. */
	assert_false(d.passthrough);
	C("b IDLE\r\n");
	B("+ idling\r\n* 4 EXISTS\r\n");
	C("DONE\r\nc STARTTLS\r\n");
	B("b OK Idle completed\r\n");
	TO_BACKEND("a LOGIN user pass\r\nb IDLE\r\nDONE\r\n");
	TO_CLIENT("a OK Logged in\r\n+ idling\r\n* 4 EXISTS\r\n"
	    "b OK Idle completed\r\nc BAD STARTTLS not allowed after login\r\n");
}

static void
test_long_line(void **state)
{
	static char line[9000];

	(void)state;
	start(1, 0, 1);
	greet();
	memset(line, 'a', sizeof(line));
	memcpy(line, "a ID ", 5);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	C(line);
	TO_CLIENT("* BYE Line too long\r\n");
	TO_BACKEND("");
	assert_true(d.closed);
}

static void
test_bare_lf(void **state)
{

	(void)state;
	start(1, 0, 1);
	B("* OK ready\n");
	TO_CLIENT("* OK ready\n");
	C("a STARTTLS\n");
	TO_CLIENT("a OK Begin TLS negotiation now\r\n");
	assert_int_equal(proto_imap_ops.max_line, 65536);
}

static void
test_compress_passthrough(void **state)
{

	(void)state;
	start(0, 0, 0);
	greet();
	C("a LOGIN u p\r\n");
	B("a OK done\r\n");
	assert_false(d.passthrough);
	C("b COMPRESS DEFLATE\r\n");
	B("b OK DEFLATE active\r\n");
	assert_true(d.passthrough);
}

static void
test_literal_binary(void **state)
{
	static const char c1[] = "a APPEND INBOX {5+}\r\n\0\1\n\0x\r\n";
	static const char b1[] = "* 1 FETCH (BINARY[1] ~{4}\r\n\0\0\n\0)\r\n";

	(void)state;
	start(0, 1, 1);
	greet();
	/* Raw bytes, NUL included: never split into lines. */
	transcript_feed(PROTO_CLIENT, c1, sizeof(c1) - 1);
	assert_false(d.closed);
	assert_int_equal(d.to[PROTO_BACKEND].len, sizeof(c1) - 1);
	assert_memory_equal(d.to[PROTO_BACKEND].p, c1, sizeof(c1) - 1);
	transcript_feed(PROTO_BACKEND, b1, sizeof(b1) - 1);
	assert_false(d.closed);
	assert_int_equal(d.to[PROTO_CLIENT].len, sizeof(b1) - 1);
	assert_memory_equal(d.to[PROTO_CLIENT].p, b1, sizeof(b1) - 1);
}

/* Issue 12 item 6b: SASL-IR goes with AUTH= before TLS (require_tls). */
static void
test_sasl_ir_before_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("a CAPABILITY\r\n");
	B("* CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN\r\na OK done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED\r\n"
	    "a OK done\r\n");
	transcript_free();

	/* Without require_tls, and after TLS, it stays. */
	start(1, 0, 0);
	greet();
	C("a CAPABILITY\r\n");
	B("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\na OK done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN STARTTLS\r\n"
	    "a OK done\r\n");
	transcript_free();
	start(0, 1, 1);
	greet();
	C("a CAPABILITY\r\n");
	B("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\na OK done\r\n");
	TO_CLIENT("* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\na OK done\r\n");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_greeting_require_tls, teardown),
		cmocka_unit_test_teardown(test_greeting_no_require, teardown),
		cmocka_unit_test_teardown(test_greeting_implicit, teardown),
		cmocka_unit_test_teardown(test_greeting_plain, teardown),
		cmocka_unit_test_teardown(test_preauth_require_tls, teardown),
		cmocka_unit_test_teardown(test_preauth_no_require, teardown),
		cmocka_unit_test_teardown(test_refusals, teardown),
		cmocka_unit_test_teardown(test_invalid_tag, teardown),
		cmocka_unit_test_teardown(test_starttls, teardown),
		cmocka_unit_test_teardown(test_tls_ready_greeting_in_two_lines,
		    teardown),
		cmocka_unit_test_teardown(test_tls_ready_bye, teardown),
		cmocka_unit_test_teardown(test_sync_literal, teardown),
		cmocka_unit_test_teardown(test_sync_literal_direct_reoffer,
		    teardown),
		cmocka_unit_test_teardown(test_sync_literal_declined, teardown),
		cmocka_unit_test_teardown(test_nonsync_literal, teardown),
		cmocka_unit_test_teardown(test_refused_nonsync_literal,
		    teardown),
		cmocka_unit_test_teardown(test_refused_literal_in_allowed,
		    teardown),
		cmocka_unit_test_teardown(test_pretls_filter, teardown),
		cmocka_unit_test_teardown(test_backend_literal_after_tls,
		    teardown),
		cmocka_unit_test_teardown(test_authenticate, teardown),
		cmocka_unit_test_teardown(test_authenticate_failed, teardown),
		cmocka_unit_test_teardown(test_idle, teardown),
		cmocka_unit_test_teardown(test_long_line, teardown),
		cmocka_unit_test_teardown(test_bare_lf, teardown),
		cmocka_unit_test_teardown(test_compress_passthrough, teardown),
		cmocka_unit_test_teardown(test_literal_binary, teardown),
		cmocka_unit_test_teardown(test_sasl_ir_before_tls, teardown),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
