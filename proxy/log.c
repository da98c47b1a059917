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

/* A log line longer than this is cut; the cut is marked. */
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

static void
put_json_string(struct lbuf *l, const char *s)
{
	char esc[8];

	putc1(l, '"');
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\') {
			putc1(l, '\\');
			putc1(l, (char)ch);
		} else if (ch < 0x20 || ch == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", ch);
			put(l, esc, 6);
		} else
			putc1(l, (char)ch);
	}
	putc1(l, '"');
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
		put(&l, "{\"ts\":\"", 7);
		put(&l, tbuf, strlen(tbuf));
		put(&l, "\",\"level\":\"", 11);
		put(&l, level_names[lvl], strlen(level_names[lvl]));
		put(&l, "\",\"event\":", 10);
		put_json_string(&l, event);
		for (i = 0; i < n; i++) {
			putc1(&l, ',');
			put_json_string(&l, f[i].key);
			putc1(&l, ':');
			if (f[i].str != NULL)
				put_json_string(&l, f[i].str);
			else {
				snprintf(num, sizeof(num), "%lld",
				    (long long)f[i].num);
				put(&l, num, strlen(num));
			}
		}
		/* A cut JSON line would not parse: end it cleanly instead. */
		if (l.cut) {
			l.len = l.len > sizeof(l.b) - 32 ? sizeof(l.b) - 32 :
			    l.len;
			while (l.len > 0 && l.b[l.len - 1] != ',')
				l.len--;
			l.cut = 0;
			put(&l, "\"truncated\":true", 16);
		}
		putc1(&l, '}');
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
