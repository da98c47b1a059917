/*
 * bstarttls: mailtlsd as a STARTTLS client toward a backend.  Each test
 * feeds a backend's lines and checks, byte for byte, what mailtlsd sends
 * and when it starts TLS or gives up.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>

#include <cmocka.h>

#include "bstarttls.h"

static struct bstls b;
static struct proto_out out;

static enum bstls_verdict
feed(const char *line)
{

	return (bstls_line(&b, line, strlen(line), &out));
}

static void
assert_sent(const char *s)
{

	assert_int_equal(out.len, strlen(s));
	assert_memory_equal(out.buf, s, out.len);
}

static void
test_smtp_ehlo_then_starttls(void **state)
{
	const char *g;
	size_t glen;

	(void)state;
	bstls_init(&b, CONFIG_PROTO_SMTP, "front.example");
	assert_int_equal(feed("220-mx.example ESMTP\r\n"), BSTLS_MORE);
	assert_int_equal(feed("220 mx.example ready\r\n"), BSTLS_SEND);
	assert_sent("EHLO front.example\r\n");
	assert_int_equal(feed("250-mx.example\r\n"), BSTLS_MORE);
	assert_int_equal(feed("250-PIPELINING\r\n"), BSTLS_MORE);
	assert_int_equal(feed("250-STARTTLS\r\n"), BSTLS_MORE);
	assert_int_equal(feed("250 8BITMIME\r\n"), BSTLS_SEND);
	assert_sent("STARTTLS\r\n");
	assert_int_equal(feed("220 2.0.0 Ready to start TLS\r\n"), BSTLS_TLS);
	/* The greeting the client will see is the backend's, unchanged. */
	g = bstls_greeting(&b, &glen);
	assert_int_equal(glen, strlen("220-mx.example ESMTP\r\n"
	    "220 mx.example ready\r\n"));
	assert_memory_equal(g, "220-mx.example ESMTP\r\n220 mx.example ready\r\n",
	    glen);
	/* Anything after the go-ahead is an attack. */
	assert_int_equal(feed("250 injected\r\n"), BSTLS_FAIL);
}

static void
test_smtp_starttls_last_line_and_lowercase(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("220 mx\r\n"), BSTLS_SEND);
	assert_int_equal(feed("250-mx\r\n"), BSTLS_MORE);
	assert_int_equal(feed("250 starttls\r\n"), BSTLS_SEND);
	assert_sent("STARTTLS\r\n");
}

static void
test_smtp_no_starttls_offered(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("220 mx\r\n"), BSTLS_SEND);
	assert_int_equal(feed("250-mx\r\n"), BSTLS_MORE);
	/* A word that merely contains STARTTLS does not count. */
	assert_int_equal(feed("250-XSTARTTLS\r\n"), BSTLS_MORE);
	assert_int_equal(feed("250 SIZE 1000\r\n"), BSTLS_FAIL);
	assert_string_equal(bstls_error(&b),
	    "backend does not offer STARTTLS");
}

static void
test_smtp_refusals(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("554 go away\r\n"), BSTLS_FAIL);
	assert_string_equal(bstls_error(&b), "greeting refused: \"554 go away\"");

	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("220 mx\r\n"), BSTLS_SEND);
	assert_int_equal(feed("250 STARTTLS\r\n"), BSTLS_SEND);
	assert_int_equal(feed("454 4.7.0 TLS not available\r\n"), BSTLS_FAIL);
	assert_string_equal(bstls_error(&b),
	    "STARTTLS refused: \"454 4.7.0 TLS not available\"");

	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("220 mx\r\n"), BSTLS_SEND);
	assert_int_equal(feed("502 no EHLO\r\n"), BSTLS_FAIL);

	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	assert_int_equal(feed("hello\r\n"), BSTLS_FAIL);
}

static void
test_imap_capability_in_greeting(void **state)
{
	const char *g;
	size_t glen;

	(void)state;
	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* OK [CAPABILITY IMAP4rev1 STARTTLS "
	    "AUTH=PLAIN] Dovecot ready.\r\n"), BSTLS_SEND);
	assert_sent("M1 STARTTLS\r\n");
	assert_int_equal(feed("M1 OK Begin TLS negotiation now.\r\n"),
	    BSTLS_TLS);
	/* The code no longer holds after TLS: it is removed. */
	g = bstls_greeting(&b, &glen);
	assert_int_equal(glen, strlen("* OK Dovecot ready.\r\n"));
	assert_memory_equal(g, "* OK Dovecot ready.\r\n", glen);
}

static void
test_imap_capability_asked(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* OK ready\r\n"), BSTLS_SEND);
	assert_sent("M0 CAPABILITY\r\n");
	assert_int_equal(feed("* CAPABILITY IMAP4rev1 STARTTLS\r\n"),
	    BSTLS_MORE);
	assert_int_equal(feed("M0 OK done\r\n"), BSTLS_SEND);
	assert_sent("M1 STARTTLS\r\n");
	assert_int_equal(feed("* OK untagged noise\r\n"), BSTLS_MORE);
	assert_int_equal(feed("M1 OK go\r\n"), BSTLS_TLS);
}

static void
test_imap_failures(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] "
	    "logged in\r\n"), BSTLS_FAIL);
	assert_non_null(strstr(bstls_error(&b), "PREAUTH"));

	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* OK [CAPABILITY IMAP4rev1] ready\r\n"),
	    BSTLS_FAIL);
	assert_string_equal(bstls_error(&b),
	    "backend does not offer STARTTLS");

	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* OK ready\r\n"), BSTLS_SEND);
	assert_int_equal(feed("* CAPABILITY IMAP4rev1\r\n"), BSTLS_MORE);
	assert_int_equal(feed("M0 OK done\r\n"), BSTLS_FAIL);

	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* OK [CAPABILITY STARTTLS] x\r\n"), BSTLS_SEND);
	assert_int_equal(feed("M1 NO not now\r\n"), BSTLS_FAIL);

	bstls_init(&b, CONFIG_PROTO_IMAP, "f");
	assert_int_equal(feed("* BYE busy\r\n"), BSTLS_FAIL);
}

static void
test_pop3_capa_stls(void **state)
{
	const char *g;
	size_t glen;

	(void)state;
	bstls_init(&b, CONFIG_PROTO_POP3, "f");
	assert_int_equal(feed("+OK POP3 ready <1.2@x>\r\n"), BSTLS_SEND);
	assert_sent("CAPA\r\n");
	assert_int_equal(feed("+OK\r\n"), BSTLS_MORE);
	assert_int_equal(feed("TOP\r\n"), BSTLS_MORE);
	assert_int_equal(feed("STLS\r\n"), BSTLS_MORE);
	assert_int_equal(feed(".\r\n"), BSTLS_SEND);
	assert_sent("STLS\r\n");
	assert_int_equal(feed("+OK Begin TLS\r\n"), BSTLS_TLS);
	g = bstls_greeting(&b, &glen);
	assert_int_equal(glen, strlen("+OK POP3 ready <1.2@x>\r\n"));
	assert_memory_equal(g, "+OK POP3 ready <1.2@x>\r\n", glen);
}

static void
test_pop3_failures(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_POP3, "f");
	assert_int_equal(feed("+OK hi\r\n"), BSTLS_SEND);
	assert_int_equal(feed("+OK\r\n"), BSTLS_MORE);
	assert_int_equal(feed("USER\r\n"), BSTLS_MORE);
	assert_int_equal(feed(".\r\n"), BSTLS_FAIL);
	assert_string_equal(bstls_error(&b), "backend does not offer STLS");

	bstls_init(&b, CONFIG_PROTO_POP3, "f");
	assert_int_equal(feed("+OK hi\r\n"), BSTLS_SEND);
	assert_int_equal(feed("-ERR no CAPA\r\n"), BSTLS_FAIL);

	bstls_init(&b, CONFIG_PROTO_POP3, "f");
	assert_int_equal(feed("+OK hi\r\n"), BSTLS_SEND);
	assert_int_equal(feed("+OK\r\n"), BSTLS_MORE);
	assert_int_equal(feed("STLS\r\n"), BSTLS_MORE);
	assert_int_equal(feed(".\r\n"), BSTLS_SEND);
	assert_int_equal(feed("-ERR not now\r\n"), BSTLS_FAIL);

	bstls_init(&b, CONFIG_PROTO_POP3, "f");
	assert_int_equal(feed("-ERR busy\r\n"), BSTLS_FAIL);
}

static void
test_no_starttls_for_opaque_listeners(void **state)
{

	(void)state;
	bstls_init(&b, CONFIG_PROTO_NONE, "f");
	assert_int_equal(feed("220 hello\r\n"), BSTLS_FAIL);
}

/*
 * Issue 12 item 6: a greeting is kept whole, however many lines (never a
 * line dropped), up to BSTLS_GREETING_MAX; past it the backend fails.
 */
static void
test_smtp_long_greeting(void **state)
{
	static char line[2048], all[BSTLS_GREETING_MAX];
	size_t alen = 0, glen;
	const char *g;
	int i;

	(void)state;
	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	memset(line, 'a', sizeof(line));
	memcpy(line, "220-", 4);
	memcpy(line + 1500, "\r\n", 3);
	for (i = 0; i < 5; i++) {
		assert_int_equal(feed(line), BSTLS_MORE);
		memcpy(all + alen, line, 1502);
		alen += 1502;
	}
	assert_int_equal(feed("220 last\r\n"), BSTLS_SEND);
	memcpy(all + alen, "220 last\r\n", 10);
	alen += 10;
	g = bstls_greeting(&b, &glen);
	assert_int_equal(glen, alen);
	assert_memory_equal(g, all, alen);

	/* 11 lines of 1502: past 16 KiB. */
	bstls_init(&b, CONFIG_PROTO_SMTP, "f");
	for (i = 0; i < 10; i++)
		assert_int_equal(feed(line), BSTLS_MORE);
	assert_int_equal(feed(line), BSTLS_FAIL);
	assert_string_equal(bstls_error(&b), "greeting too long");
}

/* Issue 12 item 6: no IMAP response code from the plaintext hop. */
static void
test_imap_greeting_codes_removed(void **state)
{
	static const char *const cases[][2] = {
		{ "* OK [ALERT] Call 555-0100 now\r\n",
		    "* OK Call 555-0100 now\r\n" },
		{ "* OK [REFERRAL imap://u@[::1]/] ready\r\n",
		    "* OK ready\r\n" },
		{ "* ok [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
		    "* OK ready\r\n" },
		{ "* OK [ALERT]\r\n", "* OK Ready\r\n" },
		{ "* OK [ALERT unclosed text\r\n", "* OK Ready\r\n" },
		{ "* OK ready [ALERT] later\r\n",
		    "* OK ready [ALERT] later\r\n" },
	};
	const char *g;
	size_t i, glen;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bstls_init(&b, CONFIG_PROTO_IMAP, "f");
		(void)feed(cases[i][0]);
		g = bstls_greeting(&b, &glen);
		assert_int_equal(glen, strlen(cases[i][1]));
		assert_memory_equal(g, cases[i][1], glen);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_smtp_ehlo_then_starttls),
		cmocka_unit_test(test_smtp_starttls_last_line_and_lowercase),
		cmocka_unit_test(test_smtp_no_starttls_offered),
		cmocka_unit_test(test_smtp_refusals),
		cmocka_unit_test(test_imap_capability_in_greeting),
		cmocka_unit_test(test_imap_capability_asked),
		cmocka_unit_test(test_imap_failures),
		cmocka_unit_test(test_pop3_capa_stls),
		cmocka_unit_test(test_pop3_failures),
		cmocka_unit_test(test_no_starttls_for_opaque_listeners),
		cmocka_unit_test(test_smtp_long_greeting),
		cmocka_unit_test(test_imap_greeting_codes_removed),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
