/*
 * log: one line per event on stderr, as key=value text or as a JSON object.
 * Safe to call from any worker thread: each line is written with one write(2).
 */
#ifndef MAILTLSD_LOG_H
#define MAILTLSD_LOG_H

#include <stdint.h>

#include "config.h"

struct log_field {
	const char	*key;
	const char	*str;		/* NULL: use num */
	int64_t		 num;
};

static inline const char *
log_nonnull(const char *s)
{

	return (s != NULL ? s : "");
}

#define LOG_STR(k, v)	((struct log_field){ (k), log_nonnull(v), 0 })
#define LOG_NUM(k, v)	((struct log_field){ (k), NULL, (int64_t)(v) })

/**
 * log_setup(level, format):
 * Set the level and the format of the lines written from now on.
 */
void log_setup(enum config_loglevel, enum config_logfmt);

/**
 * log_enabled(level):
 * Return nonzero if a line at ${level} would be written.
 */
int log_enabled(enum config_loglevel);

/**
 * log_fields(level, event, f, n):
 * Write one line with the event name and the ${n} fields ${f}.
 */
void log_fields(enum config_loglevel, const char *, const struct log_field *,
    size_t);

/**
 * log_msg(level, event, fmt, ...):
 * Write one line with the event name and a formatted "msg" field.
 */
void log_msg(enum config_loglevel, const char *, const char *, ...)
    __attribute__((format(printf, 3, 4)));

#define log_err(ev, ...)	log_msg(CONFIG_LOG_ERROR, ev, __VA_ARGS__)
#define log_warn(ev, ...)	log_msg(CONFIG_LOG_WARN, ev, __VA_ARGS__)
#define log_info(ev, ...)	log_msg(CONFIG_LOG_INFO, ev, __VA_ARGS__)
#define log_debug(ev, ...)	do {					\
	if (log_enabled(CONFIG_LOG_DEBUG))				\
		log_msg(CONFIG_LOG_DEBUG, ev, __VA_ARGS__);		\
} while (0)

#endif
