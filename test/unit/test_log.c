/*
 * Unit tests for log: every JSON line is one valid JSON object, whatever the
 * lengths and bytes of its event, keys and values (issue 12 item 12).  The
 * lines are written to a temporary file put in place of stderr and checked
 * by a small JSON validator written here for the purpose (strict: no raw
 * control characters, only the escapes JSON has, well-formed UTF-8).
 */
#include <errno.h>
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

#include "config.h"
#include "log.h"

#define LINE_MAX_BYTES	4096

/* --- A strict validator for the lines log.c writes ----------------------- */

struct cur {
	const unsigned char	*p;
	const unsigned char	*end;
};

/* One well-formed UTF-8 sequence (RFC 3629) at c->p; 0 or -1. */
static int
v_utf8(struct cur *c)
{
	const unsigned char *p = c->p;
	unsigned int cp;
	size_t n, i;

	if (p[0] < 0x80) {
		c->p++;
		return (0);
	}
	if ((p[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = p[0] & 0x07;
	} else
		return (-1);
	if ((size_t)(c->end - p) < n)
		return (-1);
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return (-1);
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return (-1);
	c->p += n;
	return (0);
}

static int
v_string(struct cur *c)
{
	int i;

	if (c->p >= c->end || *c->p != '"')
		return (-1);
	c->p++;
	while (c->p < c->end) {
		if (*c->p == '"') {
			c->p++;
			return (0);
		}
		if (*c->p < 0x20)
			return (-1);
		if (*c->p == '\\') {
			c->p++;
			if (c->p >= c->end)
				return (-1);
			if (strchr("\"\\/bfnrt", *c->p) != NULL && *c->p) {
				c->p++;
				continue;
			}
			if (*c->p != 'u' || c->end - c->p < 5)
				return (-1);
			for (i = 1; i <= 4; i++)
				if (strchr("0123456789abcdefABCDEF",
				    c->p[i]) == NULL || c->p[i] == '\0')
					return (-1);
			c->p += 5;
			continue;
		}
		if (v_utf8(c) < 0)
			return (-1);
	}
	return (-1);
}

static int
v_value(struct cur *c)
{
	const unsigned char *start;

	if (c->p < c->end && *c->p == '"')
		return (v_string(c));
	if (c->end - c->p >= 4 && memcmp(c->p, "true", 4) == 0) {
		c->p += 4;
		return (0);
	}
	if (c->p < c->end && *c->p == '-')
		c->p++;
	start = c->p;
	while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
		c->p++;
	return (c->p > start ? 0 : -1);
}

/*
 * Is [line, line + len) one JSON object of string keys?  Sets *truncated
 * if it has a "truncated" member (it must be true).
 */
static int
valid_json_object(const char *line, size_t len, int *truncated)
{
	struct cur c = { (const unsigned char *)line,
	    (const unsigned char *)line + len };
	const unsigned char *k;

	*truncated = 0;
	if (c.p >= c.end || *c.p++ != '{')
		return (-1);
	if (c.p < c.end && *c.p == '}')
		return (c.p + 1 == c.end ? 0 : -1);
	for (;;) {
		k = c.p;
		if (v_string(&c) < 0)
			return (-1);
		if ((size_t)(c.p - k) == 11 && memcmp(k, "\"truncated\"", 11)
		    == 0) {
			if (c.end - c.p < 5 || memcmp(c.p, ":true", 5) != 0)
				return (-1);
			*truncated = 1;
		}
		if (c.p >= c.end || *c.p++ != ':')
			return (-1);
		if (v_value(&c) < 0)
			return (-1);
		if (c.p >= c.end)
			return (-1);
		if (*c.p == '}')
			return (c.p + 1 == c.end ? 0 : -1);
		if (*c.p++ != ',')
			return (-1);
	}
}

/* --- Capturing stderr ---------------------------------------------------- */

static int	saved_stderr = -1;
static char	capture_path[] = "/tmp/mtd-test-log-XXXXXX";
static int	capture_fd = -1;

static int
setup(void **state)
{

	(void)state;
	if ((capture_fd = mkstemp(capture_path)) < 0)
		return (-1);
	(void)unlink(capture_path);
	if ((saved_stderr = dup(STDERR_FILENO)) < 0)
		return (-1);
	log_setup(CONFIG_LOG_DEBUG, CONFIG_LOG_JSON);
	return (0);
}

static int
teardown(void **state)
{

	(void)state;
	if (saved_stderr >= 0)
		close(saved_stderr);
	if (capture_fd >= 0)
		close(capture_fd);
	return (0);
}

/* Write one line with ${f} and check it; return whether it was cut. */
static int
one_line(const char *event, const struct log_field *f, size_t n)
{
	static char buf[3 * LINE_MAX_BYTES];
	ssize_t len;
	int truncated;

	assert_int_equal(ftruncate(capture_fd, 0), 0);
	assert_int_equal(lseek(capture_fd, 0, SEEK_SET), 0);
	/* Only for the call: cmocka reports failures on stderr. */
	assert_true(dup2(capture_fd, STDERR_FILENO) >= 0);
	log_fields(CONFIG_LOG_INFO, event, f, n);
	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	len = pread(capture_fd, buf, sizeof(buf), 0);
	assert_true(len > 0);
	assert_true(len <= LINE_MAX_BYTES);
	/* One line: a single newline, at the end. */
	assert_int_equal(buf[len - 1], '\n');
	assert_null(memchr(buf, '\n', (size_t)len - 1));
	if (valid_json_object(buf, (size_t)len - 1, &truncated) != 0)
		fail_msg("not a JSON object (%zd bytes): %.*s", len, (int)len,
		    buf);
	return (truncated);
}

/* ${n} bytes of ${pattern} over and over. */
static char *
repeat(const char *pattern, size_t n)
{
	size_t plen = strlen(pattern), i;
	char *s;

	s = malloc(n + 1);
	assert_non_null(s);
	for (i = 0; i < n; i++)
		s[i] = pattern[i % plen];
	s[n] = '\0';
	return (s);
}

/* Values of every length from empty to past the line limit, made of
 * characters that need escapes, commas, UTF-8 and a byte that is not. */
static void
test_every_length_parses(void **state)
{
	static const char *const patterns[] = {
		"a\"b\\c,d",
		"\xc3\xa9,\x01\"",
		"x,\xe2\x82\xac\\\x1f",
		"\xf0\x9f\x93\xa7,,",
		"ok\xff\xc3",		/* not UTF-8: a stray byte, a cut one */
	};
	size_t p, len;
	int cut = 0, whole = 0;

	(void)state;
	for (p = 0; p < sizeof(patterns) / sizeof(patterns[0]); p++)
		for (len = 0; len <= LINE_MAX_BYTES + 64; len += 1 + p) {
			char *v = repeat(patterns[p], len);
			struct log_field f[3] = {
				LOG_NUM("conn", 42),
				LOG_STR("files", v),
				LOG_STR("after", "x,y"),
			};

			if (one_line("reload", f, 3))
				cut++;
			else
				whole++;
			free(v);
		}
	/* The sweep went both under and over the limit. */
	assert_true(cut > 100);
	assert_true(whole > 100);
}

/* Many short fields: the cut falls between members, in keys and in values. */
static void
test_many_fields_parse(void **state)
{
	struct log_field f[400];
	char keys[400][16];
	size_t n, i;

	(void)state;
	for (i = 0; i < 400; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k\"%zu,", i);
		f[i] = (i % 3 == 0) ? LOG_NUM(keys[i], -(int64_t)i * 1000003) :
		    LOG_STR(keys[i], i % 3 == 1 ? "v,\"\\" : "");
	}
	for (n = 0; n <= 400; n++)
		(void)one_line("close", f, n);
	assert_true(one_line("close", f, 400));
}

/* Keys and the event name are not trusted to be short either. */
static void
test_long_event_and_key_parse(void **state)
{
	char *big = repeat("e\",\\", 5000);
	struct log_field f[2];

	(void)state;
	f[0] = LOG_STR(big, "v");
	f[1] = LOG_NUM("n", 1);
	assert_true(one_line(big, f, 2));
	assert_true(one_line("ev", f, 2));
	free(big);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_length_parses),
		cmocka_unit_test(test_many_fields_parse),
		cmocka_unit_test(test_long_event_and_key_parse),
	};

	return (cmocka_run_group_tests(tests, setup, teardown));
}
