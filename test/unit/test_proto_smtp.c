/*
 * Unit tests for the SMTP handler: byte-exact transcripts through the
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

	transcript_start(&proto_smtp_ops, "mx.example.com", starttls, on_tls,
	    require_tls);
}

static const char EHLO_AUTH_MID[] =
    "250-mx.example.com\r\n"
    "250-PIPELINING\r\n"
    "250-SIZE 10240000\r\n"
    "250-AUTH PLAIN LOGIN\r\n"
    "250-AUTH=PLAIN LOGIN\r\n"
    "250-CHUNKING\r\n"
    "250 8BITMIME\r\n";

/* Greeting, then EHLO answered by the backend. */
static void
greet(void)
{

	B("220-mx.example.com ESMTP\r\n220 second line\r\n");
	TO_CLIENT("220-mx.example.com ESMTP\r\n220 second line\r\n");
}

static void
test_greeting_unchanged(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	TO_BACKEND("");
}

static void
test_ehlo_require_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("EHLO client.example\r\n");
	TO_BACKEND("EHLO client.example\r\n");
	B(EHLO_AUTH_MID);
	TO_CLIENT("250-mx.example.com\r\n"
	    "250-PIPELINING\r\n"
	    "250-SIZE 10240000\r\n"
	    "250-STARTTLS\r\n"
	    "250 8BITMIME\r\n");
}

static void
test_ehlo_auth_last(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("ehlo client.example\r\n");
	B("250-mx.example.com\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n");
	TO_CLIENT("250-mx.example.com\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
}

static void
test_ehlo_no_require(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("EHLO client.example\r\n");
	B("250-mx.example.com\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n"
	    "250 CHUNKING\r\n");
	TO_CLIENT("250-mx.example.com\r\n250-AUTH PLAIN\r\n"
	    "250-STARTTLS\r\n250 CHUNKING\r\n");
}

static void
test_ehlo_one_line(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("EHLO client.example\r\n");
	B("250 mx.example.com\r\n");
	TO_CLIENT("250-mx.example.com\r\n250 STARTTLS\r\n");
}

static void
test_ehlo_failed_unchanged(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("EHLO\r\n");
	B("501 5.5.4 Syntax: EHLO hostname\r\n");
	TO_CLIENT("501 5.5.4 Syntax: EHLO hostname\r\n");
}

static void
test_ehlo_implicit(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("EHLO client.example\r\n");
	B("250-mx.example.com\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n");
	TO_CLIENT("250-mx.example.com\r\n250 AUTH PLAIN\r\n");
	C("EHLO client.example\r\n");
	B("250 mx.example.com\r\n");
	TO_CLIENT("250 mx.example.com\r\n");
}

static void
test_refused_before_tls(void **state)
{
	static const char *refused[] = {
		"MAIL FROM:<a@example.com>\r\n", "RCPT TO:<b@example.com>\r\n",
		"DATA\r\n", "AUTH PLAIN AGFhAGI=\r\n", "VRFY root\r\n",
		"EXPN list\r\n", "XYZZY\r\n", "HELP\r\n",
	};
	size_t i;

	(void)state;
	start(1, 0, 1);
	greet();
	for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		C(refused[i]);
		TO_CLIENT("530 5.7.0 Must issue a STARTTLS command first\r\n");
		TO_BACKEND("");
	}
	C("NOOP\r\nRSET\r\nHELO client.example\r\nQUIT\r\n");
	TO_BACKEND("NOOP\r\nRSET\r\nHELO client.example\r\nQUIT\r\n");
	assert_false(d.closed);
}

static void
test_refused_in_order(void **state)
{
	enum proto_verdict v;

	(void)state;
	start(1, 0, 1);
	greet();
	/* NOOP is owed a reply, so the refusal waits for it. */
	C("NOOP\r\nMAIL FROM:<a@example.com>\r\n");
	TO_BACKEND("NOOP\r\n");
	TO_CLIENT("");
	B("250 2.0.0 Ok\r\n");
	TO_CLIENT("250 2.0.0 Ok\r\n"
	    "530 5.7.0 Must issue a STARTTLS command first\r\n");

	/* The verdict itself. */
	C("NOOP\r\n");
	d.out.len = 0;
	v = proto_smtp_ops.client_line(d.st, "MAIL FROM:<>\r\n", 14,
	    &d.out);
	assert_int_equal(v, PROTO_HOLD);
}

static void
test_starttls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("EHLO client.example\r\n");
	TO_BACKEND("EHLO client.example\r\n");
	B("250-mx.example.com\r\n250 8BITMIME\r\n");
	TO_CLIENT("250-mx.example.com\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
	/* CVE-2011-0411: the pipelined MAIL is discarded, never relayed. */
	C("STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n");
	TO_CLIENT("220 2.0.0 Ready to start TLS\r\n");
	TO_BACKEND("");
	assert_int_equal(d.tlswait, 1);
	assert_string_equal(proto_smtp_ops.strstate(d.st), "starttls");
	/* Nothing from the old backend reaches the client now. */
	B("250 injected\r\n");
	TO_CLIENT("");

	transcript_tls_ready();
	/* RFC 3207 4.2: the fresh backend's greeting is swallowed. */
	B("220-mx.example.com ESMTP\r\n220 more\r\n");
	TO_CLIENT("");
	C("EHLO client.example\r\n");
	TO_BACKEND("EHLO client.example\r\n");
	B(EHLO_AUTH_MID);
	TO_CLIENT("250-mx.example.com\r\n"
	    "250-PIPELINING\r\n"
	    "250-SIZE 10240000\r\n"
	    "250-AUTH PLAIN LOGIN\r\n"
	    "250-AUTH=PLAIN LOGIN\r\n"
	    "250-CHUNKING\r\n"
	    "250 8BITMIME\r\n");
	/* A second STARTTLS is refused: never a second handshake. */
	C("STARTTLS\r\n");
	TO_CLIENT("503 5.5.1 Error: TLS already active\r\n");
	TO_BACKEND("");
	C("MAIL FROM:<a@example.com>\r\n");
	TO_BACKEND("MAIL FROM:<a@example.com>\r\n");
}

static void
test_starttls_after_pipelined(void **state)
{

	(void)state;
	start(1, 0, 1);
	/* Sent before the greeting, even: STARTTLS waits for both replies. */
	C("EHLO client.example\r\nSTARTTLS\r\n");
	TO_BACKEND("EHLO client.example\r\n");
	TO_CLIENT("");
	B("220 mx.example.com ESMTP\r\n");
	TO_CLIENT("220 mx.example.com ESMTP\r\n");
	B("250-mx.example.com\r\n");
	TO_CLIENT("");
	B("250 PIPELINING\r\n");
	TO_CLIENT("250-mx.example.com\r\n250-STARTTLS\r\n250 PIPELINING\r\n"
	    "220 2.0.0 Ready to start TLS\r\n");
	assert_int_equal(d.tlswait, 1);
}

static void
test_starttls_refusals(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("STARTTLS now\r\n");
	TO_CLIENT("501 5.5.4 Syntax: STARTTLS\r\n");
	C("MAIL FROM:<a@example.com>\r\n");
	TO_BACKEND("MAIL FROM:<a@example.com>\r\n");
	B("250 2.1.0 Ok\r\n");
	TO_CLIENT("250 2.1.0 Ok\r\n");
	C("STARTTLS\r\n");
	TO_CLIENT("503 5.5.1 Error: MAIL transaction in progress\r\n");
	TO_BACKEND("");
	C("RSET\r\n");
	B("250 2.0.0 Ok\r\n");
	TO_CLIENT("250 2.0.0 Ok\r\n");
	C("AUTH PLAIN AGFhAGI=\r\n");
	TO_BACKEND("RSET\r\nAUTH PLAIN AGFhAGI=\r\n");
	B("235 2.7.0 Authentication successful\r\n");
	/* Plaintext session: authenticated, but still parsed. */
	TO_CLIENT("235 2.7.0 Authentication successful\r\n");
	assert_false(d.passthrough);
	C("STARTTLS\r\n");
	TO_CLIENT("503 5.5.1 Error: already authenticated\r\n");
	TO_BACKEND("");
}

static void
test_starttls_plain_listener(void **state)
{

	(void)state;
	start(0, 0, 0);
	greet();
	C("EHLO c\r\n");
	B("250-mx.example.com\r\n250 STARTTLS\r\n");
	TO_CLIENT("250 mx.example.com\r\n");
	C("STARTTLS\r\n");
	TO_CLIENT("502 5.5.1 Error: command not implemented\r\n");
	TO_BACKEND("EHLO c\r\n");
}

static void
test_data_content(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
	TO_BACKEND("MAIL FROM:<a@example.com>\r\n"
	    "RCPT TO:<b@example.com>\r\nDATA\r\n");
	/* Lines after DATA wait for its reply: content or command? */
	C("STARTTLS\r\nAUTH PLAIN x\r\n..STARTTLS\r\n.\r\n");
	TO_BACKEND("");
	B("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
	TO_BACKEND("");
	B("354 End data with <CR><LF>.<CR><LF>\r\n");
	TO_CLIENT("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
	    "354 End data with <CR><LF>.<CR><LF>\r\n");
	TO_BACKEND("STARTTLS\r\nAUTH PLAIN x\r\n..STARTTLS\r\n.\r\n");
	B("250 2.0.0 Ok: queued\r\n");
	TO_CLIENT("250 2.0.0 Ok: queued\r\n");
	C("STARTTLS\r\n");
	TO_CLIENT("503 5.5.1 Error: TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_data_refused_then_commands(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("DATA\r\nSTARTTLS\r\n");
	TO_BACKEND("DATA\r\n");
	B("554 5.5.1 Error: no valid recipients\r\n");
	/* Not content after all: STARTTLS is a command, and refused. */
	TO_CLIENT("554 5.5.1 Error: no valid recipients\r\n"
	    "503 5.5.1 Error: TLS already active\r\n");
	TO_BACKEND("");
}

static void
test_data_plaintext_starttls_line(void **state)
{

	(void)state;
	start(1, 0, 0);
	greet();
	C("MAIL FROM:<a@example.com>\r\n");
	B("250 Ok\r\n");
	C("DATA\r\n");
	B("354 go\r\n");
	TO_CLIENT("250 Ok\r\n354 go\r\n");
	C("STARTTLS\r\nSTARTTLS\n.\n");
	/* Bare LF content lines go on with CRLF (SMTP smuggling). */
	TO_BACKEND("MAIL FROM:<a@example.com>\r\nDATA\r\n"
	    "STARTTLS\r\nSTARTTLS\r\n.\r\n");
	TO_CLIENT("");
	assert_int_equal(d.tlswait, 0);
}

static void
test_bdat_raw(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("EHLO c\r\n");
	B("250-mx.example.com\r\n250 CHUNKING\r\n");
	TO_CLIENT("250-mx.example.com\r\n250 CHUNKING\r\n");
	C("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
	/* 22 bytes: "STARTTLS\r\nAUTH x\r\nab" + "\r\n", split over reads. */
	C("BDAT 22 LAST\r\nSTARTTLS\r\nAUTH ");
	C("x\r\nab\r\nSTARTTLS\r\n");
	TO_BACKEND("EHLO c\r\nMAIL FROM:<a@example.com>\r\n"
	    "RCPT TO:<b@example.com>\r\nBDAT 22 LAST\r\n"
	    "STARTTLS\r\nAUTH x\r\nab\r\n");
	B("250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: 22 octets\r\n");
	TO_CLIENT("250 Ok\r\n250 Ok\r\n250 2.0.0 Ok: 22 octets\r\n"
	    "503 5.5.1 Error: TLS already active\r\n");
}

static void
test_bdat_syntax(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("BDAT 0x10\r\nBDAT 5 LAST junk\r\nBDAT\r\n");
	TO_CLIENT("501 5.5.4 Syntax: BDAT count [LAST]\r\n"
	    "501 5.5.4 Syntax: BDAT count [LAST]\r\n"
	    "501 5.5.4 Syntax: BDAT count [LAST]\r\n");
	TO_BACKEND("");
}

static void
test_bdat_before_tls(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("BDAT 10 LAST\r\nQUIT\r\n0123");
	TO_CLIENT("530 5.7.0 Must issue a STARTTLS command first\r\n");
	TO_BACKEND("");
	assert_true(d.closed);
}

static void
test_auth_then_starttls_refused_on_tls(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("AUTH LOGIN\r\nSTARTTLS\r\n");
	TO_BACKEND("AUTH LOGIN\r\n");
	B("334 VXNlcm5hbWU6\r\n");
	/* The held line is a SASL response, not a command. */
	TO_CLIENT("334 VXNlcm5hbWU6\r\n");
	TO_BACKEND("STARTTLS\r\n");
	B("334 UGFzc3dvcmQ6\r\n");
	C("cGFzcw==\r\n");
	TO_BACKEND("cGFzcw==\r\n");
	B("235 2.7.0 Authentication successful\r\n");
	TO_CLIENT("334 UGFzc3dvcmQ6\r\n"
	    "235 2.7.0 Authentication successful\r\n");
	/* Parsed to the end: STARTTLS never reaches the backend. */
	assert_false(d.passthrough);
	C("EHLO again\r\n");
	B("250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");
	TO_CLIENT("250-mx\r\n250 AUTH PLAIN\r\n");
	C("STARTTLS\r\n");
	TO_CLIENT("503 5.5.1 Error: TLS already active\r\n");
	TO_BACKEND("EHLO again\r\n");
}

static void
test_auth_cancel(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("AUTH PLAIN\r\n");
	B("334 \r\n");
	C("*\r\n");
	B("501 5.7.0 Authentication aborted\r\n");
	C("STARTTLS\r\n");
	TO_BACKEND("AUTH PLAIN\r\n*\r\n");
	TO_CLIENT("334 \r\n501 5.7.0 Authentication aborted\r\n"
	    "503 5.5.1 Error: TLS already active\r\n");
	assert_false(d.passthrough);
}

static void
test_long_line_before_tls(void **state)
{
	char line[600];

	(void)state;
	start(1, 0, 1);
	greet();
	memset(line, 'a', sizeof(line));
	memcpy(line, "NOOP ", 5);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	C(line);	/* 599 octets */
	TO_CLIENT("500 5.5.2 Error: line too long\r\n");
	TO_BACKEND("");
	assert_true(d.closed);

	/* 512 octets exactly is fine. */
	transcript_free();
	start(1, 0, 1);
	greet();
	line[510] = '\r';
	line[511] = '\n';
	line[512] = '\0';
	C(line);
	assert_false(d.closed);
	assert_int_equal(d.to[PROTO_BACKEND].len, 512);
}

static void
test_long_line_after_tls(void **state)
{
	static char line[20000];

	(void)state;
	start(0, 1, 1);
	greet();
	memset(line, 'b', sizeof(line));
	memcpy(line, "NOOP ", 5);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	C(line);
	assert_false(d.closed);
	assert_int_equal(d.to[PROTO_BACKEND].len, sizeof(line) - 1);
	assert_int_equal(proto_smtp_ops.max_line, 65536);
}

static void
test_bare_lf(void **state)
{

	(void)state;
	start(1, 0, 1);
	B("220 mx\n");
	TO_CLIENT("220 mx\n");
	C("EHLO c\n");
	B("250-mx\n250 SIZE\n");
	TO_CLIENT("250-mx\n250-STARTTLS\r\n250 SIZE\n");
	C("STARTTLS\n");
	TO_CLIENT("220 2.0.0 Ready to start TLS\r\n");
}

static void
test_tls_ready_bad_greeting(void **state)
{

	(void)state;
	start(1, 0, 1);
	greet();
	C("STARTTLS\r\n");
	TO_CLIENT("220 2.0.0 Ready to start TLS\r\n");
	transcript_tls_ready();
	assert_string_equal(proto_smtp_ops.strstate(d.st), "greeting");
	B("554 5.3.2 busy\r\n");
	assert_true(d.closed);
	TO_CLIENT("421 4.3.0 mx.example.com Service not available\r\n");
	TO_BACKEND("");
}

static void
test_unavailable(void **state)
{
	char buf[128];
	size_t n;

	(void)state;
	n = proto_unavailable(CONFIG_PROTO_SMTP, "mx.example.com", buf,
	    sizeof(buf));
	assert_int_equal(n, strlen("421 4.3.0 mx.example.com Service not "
	    "available\r\n"));
	assert_memory_equal(buf,
	    "421 4.3.0 mx.example.com Service not available\r\n", n);
	n = proto_unavailable(CONFIG_PROTO_IMAP, "x", buf, sizeof(buf));
	assert_int_equal(n, 43);
	assert_memory_equal(buf, "* BYE [UNAVAILABLE] Service not available\r\n",
	    n);
	n = proto_unavailable(CONFIG_PROTO_POP3, "x", buf, sizeof(buf));
	assert_int_equal(n, 39);
	assert_memory_equal(buf, "-ERR [SYS/TEMP] Service not available\r\n",
	    n);
	assert_int_equal(proto_unavailable(CONFIG_PROTO_NONE, "x", buf,
	    sizeof(buf)), 0);
	/* Too small: nothing rather than a truncated reply. */
	assert_int_equal(proto_unavailable(CONFIG_PROTO_SMTP, "x", buf, 10),
	    0);
}

static void
test_find(void **state)
{

	(void)state;
	assert_ptr_equal(proto_find(CONFIG_PROTO_SMTP), &proto_smtp_ops);
	assert_ptr_equal(proto_find(CONFIG_PROTO_IMAP), &proto_imap_ops);
	assert_ptr_equal(proto_find(CONFIG_PROTO_POP3), &proto_pop3_ops);
	assert_null(proto_find(CONFIG_PROTO_NONE));
	assert_string_equal(proto_find(CONFIG_PROTO_SMTP)->name, "smtp");
}

static void
test_bdat_binary(void **state)
{
	static const char c1[] = "BDAT 4 LAST\r\n\0\1\0\2NOOP\r\n";

	(void)state;
	start(0, 1, 1);
	greet();
	/* The chunk is raw, NUL bytes included. */
	transcript_feed(PROTO_CLIENT, c1, sizeof(c1) - 1);
	assert_false(d.closed);
	assert_int_equal(d.to[PROTO_BACKEND].len, sizeof(c1) - 1);
	assert_memory_equal(d.to[PROTO_BACKEND].p, c1, sizeof(c1) - 1);
}

/* Issue 12 item 4: XCLIENT and XFORWARD never reach the backend. */
static const char R_XCLIENT[] =
    "550 5.7.0 Error: insufficient authorization\r\n";

static void
test_xclient_refused(void **state)
{
	static const int modes[][3] = {
		{ 0, 1, 1 },	/* implicit */
		{ 1, 0, 1 },	/* STARTTLS, require_tls, before TLS */
		{ 1, 0, 0 },	/* STARTTLS, before TLS */
		{ 0, 0, 0 },	/* client_tls = none */
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		start(modes[i][0], modes[i][1], modes[i][2]);
		greet();
		C("EHLO client.example\r\n");
		TO_BACKEND("EHLO client.example\r\n");
		B("250-mx.example.com\r\n250-XCLIENT NAME ADDR\r\n"
		    "250-XFORWARD NAME ADDR\r\n250 8BITMIME\r\n");
		TO_CLIENT(modes[i][0] ? "250-mx.example.com\r\n"
		    "250-STARTTLS\r\n250 8BITMIME\r\n" :
		    "250-mx.example.com\r\n250 8BITMIME\r\n");
		C("XCLIENT ADDR=203.0.113.7\r\n");
		TO_CLIENT(R_XCLIENT);
		C("xforward ADDR=203.0.113.7\r\n");
		TO_CLIENT(R_XCLIENT);
		/* Postfix skips leading white space and splits on any. */
		C(" XCLIENT ADDR=203.0.113.7\r\n");
		TO_CLIENT(R_XCLIENT);
		C("XFORWARD\tADDR=203.0.113.7\r\n");
		TO_CLIENT(R_XCLIENT);
		C("XCLIENT\r\n");
		TO_CLIENT(R_XCLIENT);
		TO_BACKEND("");
		/* In a pipelined group: answered in order. */
		C("NOOP\r\nXCLIENT ADDR=203.0.113.7\r\nNOOP\r\n");
		TO_BACKEND("NOOP\r\n");
		TO_CLIENT("");
		B("250 2.0.0 Ok\r\n");
		TO_CLIENT("250 2.0.0 Ok\r\n550 5.7.0 Error: insufficient "
		    "authorization\r\n");
		TO_BACKEND("NOOP\r\n");
		B("250 2.0.0 Ok\r\n");
		TO_CLIENT("250 2.0.0 Ok\r\n");
		assert_false(d.closed);
		transcript_free();
	}
}

/*
 * The verb is read as the backend reads it, so that a chunk size after a
 * tab is a chunk size here too: the XCLIENT after the two chunk bytes is a
 * command to both, and is refused.
 */
static void
test_xclient_after_bdat_tab(void **state)
{

	(void)state;
	start(0, 1, 1);
	greet();
	C("BDAT\t2\r\n..XCLIENT ADDR=203.0.113.7\r\n");
	TO_BACKEND("BDAT\t2\r\n..");
	B("250 2.0.0 Ok: 2 octets\r\n");
	TO_CLIENT("250 2.0.0 Ok: 2 octets\r\n550 5.7.0 Error: insufficient "
	    "authorization\r\n");
	TO_BACKEND("");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_greeting_unchanged, teardown),
		cmocka_unit_test_teardown(test_ehlo_require_tls, teardown),
		cmocka_unit_test_teardown(test_ehlo_auth_last, teardown),
		cmocka_unit_test_teardown(test_ehlo_no_require, teardown),
		cmocka_unit_test_teardown(test_ehlo_one_line, teardown),
		cmocka_unit_test_teardown(test_ehlo_failed_unchanged, teardown),
		cmocka_unit_test_teardown(test_ehlo_implicit, teardown),
		cmocka_unit_test_teardown(test_refused_before_tls, teardown),
		cmocka_unit_test_teardown(test_refused_in_order, teardown),
		cmocka_unit_test_teardown(test_starttls, teardown),
		cmocka_unit_test_teardown(test_starttls_after_pipelined,
		    teardown),
		cmocka_unit_test_teardown(test_starttls_refusals, teardown),
		cmocka_unit_test_teardown(test_starttls_plain_listener,
		    teardown),
		cmocka_unit_test_teardown(test_data_content, teardown),
		cmocka_unit_test_teardown(test_data_refused_then_commands,
		    teardown),
		cmocka_unit_test_teardown(test_data_plaintext_starttls_line,
		    teardown),
		cmocka_unit_test_teardown(test_bdat_raw, teardown),
		cmocka_unit_test_teardown(test_bdat_syntax, teardown),
		cmocka_unit_test_teardown(test_bdat_before_tls, teardown),
		cmocka_unit_test_teardown(test_bdat_binary, teardown),
		cmocka_unit_test_teardown(test_auth_then_starttls_refused_on_tls,
		    teardown),
		cmocka_unit_test_teardown(test_auth_cancel, teardown),
		cmocka_unit_test_teardown(test_long_line_before_tls, teardown),
		cmocka_unit_test_teardown(test_long_line_after_tls, teardown),
		cmocka_unit_test_teardown(test_bare_lf, teardown),
		cmocka_unit_test_teardown(test_tls_ready_bad_greeting,
		    teardown),
		cmocka_unit_test(test_unavailable),
		cmocka_unit_test(test_find),
		cmocka_unit_test_teardown(test_xclient_refused, teardown),
		cmocka_unit_test_teardown(test_xclient_after_bdat_tab,
		    teardown),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
