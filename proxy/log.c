#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static enum config_loglevel level = CONFIG_LOG_INFO;
static enum config_logfmt format = CONFIG_LOG_TEXT;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

/*
 * A log line longer than this is cut; the cut is marked.  A fixed buffer on
 * the stack rather than a growing one: logging must work when memory does
 * not, and a line is always written, cut rather than dropped.
 */
#define LOG_LINE_MAX	4096

struct lbuf {
	char	b[LOG_LINE_MAX];
	size_t	len;
	int	cut;
};

static void
put(struct lbuf *l, const char *s, size_t n)
{

	if (n > sizeof(l->b) - 2 - l->len) {
		n = sizeof(l->b) - 2 - l->len;
		l->cut = 1;
	}
	memcpy(l->b + l->len, s, n);
	l->len += n;
}

static void
putc1(struct lbuf *l, char c)
{

	put(l, &c, 1);
}

/*
 * JSON lines are written so that every line parses, however long its
 * values: a cut happens only between whole escape units inside a string
 * value (never through an escape or a UTF-8 sequence), the string is then
 * closed, a field that does not fit at all is left out whole, and the
 * object ends with "truncated":true.  Room for that ending is kept from
 * the start.  Bytes that are not UTF-8 are written as U+FFFD, so the line
 * is valid UTF-8 too.
 */
static const char json_cut_tail[] = ",\"truncated\":true}";
#define JSON_LIM	(LOG_LINE_MAX - 1 - (sizeof(json_cut_tail) - 1))

/* All of ${s} or nothing; -1 if it does not fit. */
static int
jput(struct lbuf *l, const char *s, size_t n)
{

	if (n > JSON_LIM - l->len)
		return (-1);
	memcpy(l->b + l->len, s, n);
	l->len += n;
	return (0);
}

/* The length of the well-formed UTF-8 sequence at ${s}, or 0. */
static size_t
utf8_len(const unsigned char *s)
{
	unsigned char c = s[0];
	size_t n, i;

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return (0);
	for (i = 1; i < n; i++)
		if ((s[i] & 0xc0) != 0x80)	/* also stops at the NUL */
			return (0);
	/* No overlong forms, no surrogates, nothing above U+10FFFF. */
	if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) ||
	    (c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] > 0x8f))
		return (0);
	return (n);
}

/*
 * Write ${s} as a JSON string.  Return 0 if it all went in, 1 if it was cut
 * (and closed), -1 if not even "" fits (nothing written).
 */
static int
put_json_string(struct lbuf *l, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	char esc[8];
	const char *u;
	size_t n;

	if (JSON_LIM - l->len < 2)
		return (-1);
	l->b[l->len++] = '"';
	while (*s != '\0') {
		if (*s == '"' || *s == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*s;
			u = esc;
			n = 2;
		} else if (*s < 0x20 || *s == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", *s);
			u = esc;
			n = 6;
		} else if (*s < 0x80) {
			u = (const char *)s;
			n = 1;
		} else if ((n = utf8_len(s)) > 0)
			u = (const char *)s;
		else {
			u = "\\ufffd";
			n = 6;
		}
		/* Keep room for the closing quote. */
		if (n + 1 > JSON_LIM - l->len) {
			l->b[l->len++] = '"';
			return (1);
		}
		memcpy(l->b + l->len, u, n);
		l->len += n;
		s += (u == (const char *)s) ? n : 1;
	}
	l->b[l->len++] = '"';
	return (0);
}

/* One ,"key":value member; 0, or -1 when the line is full (l->cut set). */
static int
put_json_field(struct lbuf *l, const struct log_field *f)
{
	size_t mark = l->len;
	char num[32];
	int rc;

	if (jput(l, ",", 1) < 0 || put_json_string(l, f->key) != 0 ||
	    jput(l, ":", 1) < 0)
		goto full;
	if (f->str != NULL) {
		if ((rc = put_json_string(l, f->str)) < 0)
			goto full;
		if (rc > 0) {
			l->cut = 1;
			return (-1);
		}
		return (0);
	}
	snprintf(num, sizeof(num), "%lld", (long long)f->num);
	if (jput(l, num, strlen(num)) < 0)
		goto full;
	return (0);
full:
	/* Leave the member out whole rather than half of it. */
	l->len = mark;
	l->cut = 1;
	return (-1);
}

/* Text values are quoted when they would not read back as one token. */
static void
put_text_value(struct lbuf *l, const char *s)
{
	const char *p;
	int quote = (*s == '\0');

	for (p = s; *p != '\0' && !quote; p++)
		if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' ||
		    (unsigned char)*p < 0x20)
			quote = 1;
	if (!quote) {
		put(l, s, strlen(s));
		return;
	}
	putc1(l, '"');
	for (p = s; *p != '\0'; p++) {
		unsigned char ch = (unsigned char)*p;

		if (ch == '"' || ch == '\\') {
			putc1(l, '\\');
			putc1(l, (char)ch);
		} else if (ch < 0x20 || ch == 0x7f)
			putc1(l, '?');
		else
			putc1(l, (char)ch);
	}
	putc1(l, '"');
}

/**
 * log_setup(level, format):
 * Set the level and the format of the lines written from now on.
 */
void
log_setup(enum config_loglevel lvl, enum config_logfmt fmt)
{

	level = lvl;
	format = fmt;
}

/**
 * log_enabled(level):
 * Return nonzero if a line at ${level} would be written.
 */
int
log_enabled(enum config_loglevel lvl)
{

	return (lvl <= level);
}

/**
 * log_fields(level, event, f, n):
 * Write one line with the event name and the ${n} fields ${f}.
 */
void
log_fields(enum config_loglevel lvl, const char *event,
    const struct log_field *f, size_t n)
{
	struct lbuf l;
	struct timespec ts;
	struct tm tm;
	char tbuf[64], num[32];
	size_t i;
	ssize_t w;

	if (lvl > level)
		return;
	l.len = 0;
	l.cut = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(tbuf, sizeof(tbuf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
	    tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

	if (format == CONFIG_LOG_JSON) {
		/* The head always fits: JSON_LIM is far above it. */
		(void)jput(&l, "{\"ts\":\"", 7);
		(void)jput(&l, tbuf, strlen(tbuf));
		(void)jput(&l, "\",\"level\":\"", 11);
		(void)jput(&l, level_names[lvl], strlen(level_names[lvl]));
		(void)jput(&l, "\",\"event\":", 10);
		if (put_json_string(&l, event) != 0)
			l.cut = 1;
		for (i = 0; i < n && !l.cut; i++)
			(void)put_json_field(&l, &f[i]);
		/* Room for the ending was kept aside (JSON_LIM). */
		if (l.cut) {
			memcpy(l.b + l.len, json_cut_tail,
			    sizeof(json_cut_tail) - 1);
			l.len += sizeof(json_cut_tail) - 1;
		} else
			l.b[l.len++] = '}';
	} else {
		put(&l, "ts=", 3);
		put(&l, tbuf, strlen(tbuf));
		put(&l, " level=", 7);
		put(&l, level_names[lvl], strlen(level_names[lvl]));
		put(&l, " event=", 7);
		put_text_value(&l, event);
		for (i = 0; i < n; i++) {
			putc1(&l, ' ');
			put(&l, f[i].key, strlen(f[i].key));
			putc1(&l, '=');
			if (f[i].str != NULL)
				put_text_value(&l, f[i].str);
			else {
				snprintf(num, sizeof(num), "%lld",
				    (long long)f[i].num);
				put(&l, num, strlen(num));
			}
		}
		if (l.cut)
			put(&l, " truncated=1", 12);
	}
	l.b[l.len++] = '\n';

	/* One write per line keeps lines from several threads whole. */
	do
		w = write(STDERR_FILENO, l.b, l.len);
	while (w < 0 && errno == EINTR);
}

/**
 * log_msg(level, event, fmt, ...):
 * Write one line with the event name and a formatted "msg" field.
 */
void
log_msg(enum config_loglevel lvl, const char *event, const char *fmt, ...)
{
	struct log_field f;
	char msg[2048];
	va_list ap;

	if (lvl > level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	f = LOG_STR("msg", msg);
	log_fields(lvl, event, &f, 1);
}
