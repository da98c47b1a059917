/*
 * Unit tests for the POP3 handler: byte-exact transcripts through the
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

	transcript_start(&proto_pop3_ops, "pop.example.com", starttls, on_tls,
	    require_tls);
}

#define CAPA_REPLY \
	"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n" \
	"USER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n"

static void
greet(void)
{

	B("+OK Dovecot ready.\r\n");
	expect(PROTO_CLIENT, "+OK Dovecot ready.\r\n");
}

static void
test_capa_require_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("CAPA\r\n");
	TO_BACKEND("CAPA\r\n");
	B(CAPA_REPLY);
	TO_CLIENT("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
	    "STLS\r\n.\r\n");
}

static void
test_capa_no_require(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("capa\r\n");
	B(CAPA_REPLY);
	TO_CLIENT("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
	    "USER\r\nSASL PLAIN LOGIN\r\nSTLS\r\n.\r\n");
}

static void
test_capa_implicit(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("CAPA\r\n");
	B(CAPA_REPLY);
	TO_CLIENT("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
	    "USER\r\nSASL PLAIN LOGIN\r\n.\r\n");
	C("STLS\r\n");
	TO_CLIENT("-ERR TLS already active\r\n");
	TO_BACKEND("CAPA\r\n");
}

static void
test_refusals(void **state)
{
	static const char *refused[] = {
		"USER alice\r\n", "PASS secret\r\n", "APOP alice 0123\r\n",
		"AUTH PLAIN\r\n", "AUTH\r\n", "STAT\r\n", "LIST\r\n",
		"RETR 1\r\n", "XTND\r\n",
	};
	size_t i;

	(void)state;
	start(1, 0, 1);
	greet();
	for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		C(refused[i]);
		TO_CLIENT("-ERR Must issue STLS first\r\n");
		TO_BACKEND("");
	}
	C("NOOP\r\nQUIT\r\n");
	TO_BACKEND("NOOP\r\nQUIT\r\n");
}

static void
test_stls_ordering(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("CAPA\r\nSTLS\r\nUSER alice\r\n");
	TO_BACKEND("CAPA\r\n");
	TO_CLIENT("");
	B("+OK\r\nTOP\r\n");
	TO_CLIENT("+OK\r\nTOP\r\n");
	B(".\r\n");
	TO_CLIENT("STLS\r\n.\r\n+OK Begin TLS negotiation\r\n");
	TO_BACKEND("");
	assert_int_equal(d.tlswait, 1);
	B("+OK injected\r\n");
	TO_CLIENT("");

	transcript_tls_ready();
	B("+OK Dovecot ready.\r\n");
	TO_CLIENT("");
	C("CAPA\r\n");
	B(CAPA_REPLY);
	TO_CLIENT("+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
	    "USER\r\nSASL PLAIN LOGIN\r\n.\r\n");
	C("STLS\r\n");
	TO_CLIENT("-ERR TLS already active\r\n");
	C("USER alice\r\nPASS secret\r\n");
	TO_BACKEND("CAPA\r\nUSER alice\r\nPASS secret\r\n");
	B("+OK\r\n");
	assert_false(d.passthrough);
	B("+OK Logged in.\r\n");
	TO_CLIENT("+OK\r\n+OK Logged in.\r\n");
	/* Parsed to the end: STLS never reaches the backend. */
	assert_false(d.passthrough);
	C("STLS\r\n");
	TO_CLIENT("-ERR TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_retr_content(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("USER alice\r\nPASS secret\r\n");
	B("+OK\r\n+OK Logged in.\r\n");
	assert_false(d.passthrough);	/* not on TLS */
	C("RETR 1\r\n");
	B("+OK 42 octets\r\nSTLS\r\n..STLS\r\n+OK\r\n");
	C("STLS\r\n");
	TO_CLIENT("+OK\r\n+OK Logged in.\r\n"
	    "+OK 42 octets\r\nSTLS\r\n..STLS\r\n+OK\r\n");
	B(".\r\n");
	TO_CLIENT(".\r\n-ERR STLS not allowed after login\r\n");
	TO_BACKEND("USER alice\r\nPASS secret\r\nRETR 1\r\n");
}

static void
test_list_forms(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("LIST 1\r\nSTLS\r\n");
	B("+OK 1 120\r\n");
	TO_CLIENT("+OK 1 120\r\n-ERR TLS already active\r\n");
	C("LIST\r\nSTLS\r\n");
	B("+OK 1 messages\r\n1 120\r\n");
	TO_CLIENT("+OK 1 messages\r\n1 120\r\n");
	B(".\r\n");
	TO_CLIENT(".\r\n-ERR TLS already active\r\n");
	C("LIST 9\r\nSTLS\r\n");
	B("-ERR no such message\r\n");
	TO_CLIENT("-ERR no such message\r\n-ERR TLS already active\r\n");
}

static void
test_auth_sasl(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("AUTH\r\n");
	B("+OK\r\nPLAIN\r\n.\r\n");
	TO_CLIENT("+OK\r\nPLAIN\r\n.\r\n");
	C("AUTH PLAIN\r\nSTLS\r\n");
	TO_BACKEND("AUTH\r\nAUTH PLAIN\r\n");
	B("+ \r\n");
	/* The held line is a SASL response. */
	TO_BACKEND("STLS\r\n");
	B("+OK Logged in.\r\n");
	TO_CLIENT("+ \r\n+OK Logged in.\r\n");
	assert_false(d.passthrough);
	C("STLS\r\n");
	TO_CLIENT("-ERR TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_auth_cancel(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("AUTH LOGIN\r\n");
	B("+ VXNlcm5hbWU6\r\n");
	C("*\r\n");
	B("-ERR Authentication aborted\r\n");
	C("STLS\r\n");
	TO_CLIENT("+ VXNlcm5hbWU6\r\n-ERR Authentication aborted\r\n"
	    "-ERR TLS already active\r\n");
	assert_false(d.passthrough);
}

static void
test_stls_refusals(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("STLS now\r\n");
	TO_CLIENT("-ERR STLS takes no arguments\r\n");
	transcript_free();
	start(0, 0, 0);
	greet();
	C("CAPA\r\n");
	B("+OK\r\nSTLS\r\nUSER\r\n.\r\n");
	TO_CLIENT("+OK\r\nUSER\r\n.\r\n");
	C("STLS\r\n");
	TO_CLIENT("-ERR STLS not available\r\n");
}

static void
test_long_line(void **state)
{
	char line[600];

	(void)state;
	start(1, 0, 1);
	greet();
	memset(line, 'a', sizeof(line));
	memcpy(line, "NOOP ", 5);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	C(line);
	TO_CLIENT("-ERR Line too long\r\n");
	TO_BACKEND("");
	assert_true(d.closed);
	assert_int_equal(proto_pop3_ops.max_line, 65536);
}

static void
test_tls_ready_err_greeting(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("STLS\r\n");
	transcript_tls_ready();
	assert_string_equal(proto_pop3_ops.strstate(d.st), "greeting");
	B("-ERR [SYS/TEMP] busy\r\n");
	TO_CLIENT("+OK Begin TLS negotiation\r\n"
	    "-ERR [SYS/TEMP] Service not available\r\n");
	assert_true(d.closed);
}

static void
test_bare_lf(void **state)
{

	(void)state;
	start(1, 0, 1);
	B("+OK hi\n");
	TO_CLIENT("+OK hi\n");
	C("CAPA\n");
	B("+OK\nTOP\n.\n");
	TO_CLIENT("+OK\nTOP\nSTLS\r\n.\n");
	C("STLS\n");
	TO_CLIENT("+OK Begin TLS negotiation\r\n");
}

/*
 * Issue 12 item 6b: before TLS with require_tls the APOP timestamp is
 * removed from the greeting (APOP is refused then anyway).
 */
static void
test_apop_timestamp_before_tls(void **state)
{
	static const char g[] =
	    "+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>\r\n";

	(void)state;
	start(1, 0, 1);
	B(g);
	TO_CLIENT("+OK POP3 ready\r\n");
	C("APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n");
	TO_CLIENT("-ERR Must issue STLS first\r\n");
	TO_BACKEND("");
	transcript_free();

	/* Text after it stays; a greeting of "<" alone is left alone. */
	start(1, 0, 1);
	B("+OK <1.2@x> hello\r\n");
	TO_CLIENT("+OK hello\r\n");
	transcript_free();
	start(1, 0, 1);
	B("+OK a < b\r\n");
	TO_CLIENT("+OK a < b\r\n");
	transcript_free();

	/* Without require_tls, and on an implicit listener: unchanged. */
	start(1, 0, 0);
	B(g);
	TO_CLIENT(g);
	transcript_free();
	start(0, 1, 1);
	B(g);
	TO_CLIENT(g);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_capa_require_tls, teardown),
		cmocka_unit_test_teardown(test_capa_no_require, teardown),
		cmocka_unit_test_teardown(test_capa_implicit, teardown),
		cmocka_unit_test_teardown(test_refusals, teardown),
		cmocka_unit_test_teardown(test_stls_ordering, teardown),
		cmocka_unit_test_teardown(test_retr_content, teardown),
		cmocka_unit_test_teardown(test_list_forms, teardown),
		cmocka_unit_test_teardown(test_auth_sasl, teardown),
		cmocka_unit_test_teardown(test_auth_cancel, teardown),
		cmocka_unit_test_teardown(test_stls_refusals, teardown),
		cmocka_unit_test_teardown(test_long_line, teardown),
		cmocka_unit_test_teardown(test_tls_ready_err_greeting,
		    teardown),
		cmocka_unit_test_teardown(test_bare_lf, teardown),
		cmocka_unit_test_teardown(test_apop_timestamp_before_tls,
		    teardown),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
