/*
 * proto: the protocol handlers (SMTP, IMAP, POP3) that see the plaintext
 * dialogue line by line.  They do no I/O: the session engine (session.c)
 * splits the byte streams into lines (or opaque runs of bytes, such as IMAP
 * literals), asks the handler what to do with each, and turns the verdict
 * into actions for conn.c.
 */
#ifndef MAILTLSD_PROTO_H
#define MAILTLSD_PROTO_H

#include <stddef.h>

#include "config.h"

/*
 * Large enough for any reply a handler writes, a rewritten EHLO included.
 * Not a growing string (as metrics_http.c's sbuf) nor a cut one (as log.c's
 * line): it is filled per line on the relay's hot path, so it never
 * allocates, and an append that does not fit fails whole (a cut reply
 * would be malformed).
 */
#define PROTO_OUT_MAX	8192

struct proto_out {
	char	buf[PROTO_OUT_MAX];
	size_t	len;
};

enum proto_side {
	PROTO_CLIENT,		/* bytes from the client, toward the backend */
	PROTO_BACKEND,		/* bytes from the backend, toward the client */
};

enum proto_verdict {
	PROTO_FORWARD,		/* pass the line on unchanged */
	PROTO_REWRITE,		/* pass out->buf on instead of the line */
	PROTO_REPLY,		/* client lines only: answer the client with out->buf */
	PROTO_DROP,		/* swallow the line */
	PROTO_HOLD,		/* client lines only: not yet; offer this line again
				   after the next backend line has been handled */
	PROTO_STARTTLS,		/* client lines only: send out->buf to the client,
				   discard every byte after this line, and start
				   the TLS handshake with the client */
	PROTO_PASSTHROUGH,	/* pass the line on (out->buf instead when
				   out->len > 0), then stop parsing both ways */
	PROTO_CLOSE,		/* close the connection; out->buf (if any) goes
				   to the client first, and a backend line
				   with none gets the client the protocol's
				   proto_unavailable() reply */
};

struct proto_opts {
	int		 starttls;	/* client_tls = starttls (else: client is
					   on TLS from the start, or never) */
	int		 client_on_tls;	/* implicit listener: STARTTLS never shown */
	int		 require_tls;
	const char	*hostname;
};

struct proto_ops {
	const char	*name;		/* "smtp", "imap", "pop3" */
	size_t		 state_size;	/* the engine allocates this much, zeroed */
	size_t		 max_line;	/* longest line, CRLF included, accepted
					   while parsing; longer closes the conn */

	void		 (*init)(void *st, const struct proto_opts *);

	/*
	 * How many of the next ${avail} bytes from ${side} are opaque data (an
	 * IMAP literal, a BDAT chunk) to be passed on untouched rather than
	 * split into lines; the handler counts them as consumed.  0: the next
	 * bytes form a line.
	 */
	size_t		 (*raw)(void *st, enum proto_side side, size_t avail);

	/*
	 * Optional (NULL: none).  How many of the ${avail} bytes at ${p} from
	 * ${side} are whole lines, each at most max_line octets, that line()
	 * would pass on unchanged (PROTO_FORWARD) without a change of state
	 * that matters: message content inside DATA or a RETR response.  The
	 * engine passes them on in one piece without offering each line; 0:
	 * offer the next line.  Asked only once the client is on TLS (before,
	 * the engine checks every line for NUL and control characters).
	 */
	size_t		 (*span)(void *st, enum proto_side side, const char *p,
			    size_t avail);

	/*
	 * The longest line from ${side} that the handler will take in its
	 * present state (at most max_line).  The engine closes a session whose
	 * unfinished line has grown past it, without waiting for the line
	 * ending that would only let the handler refuse it.
	 */
	size_t		 (*line_limit)(const void *st, enum proto_side side);

	/*
	 * One complete line from the client (client_line) or the backend
	 * (backend_line), its line ending (CRLF or bare LF) included in ${len}
	 * (never 0); ${out} is empty on entry.  While the client is in
	 * plaintext on a STARTTLS listener the engine closes on a NUL byte
	 * instead; once on TLS a line may contain NUL (message content).  Only
	 * client lines may be answered PROTO_HOLD, PROTO_REPLY or PROTO_STARTTLS.
	 */
	enum proto_verdict (*client_line)(void *st, const char *line,
			    size_t len, struct proto_out *out);
	enum proto_verdict (*backend_line)(void *st, const char *line,
			    size_t len, struct proto_out *out);

	/*
	 * The client's TLS handshake finished and conn has opened a fresh
	 * backend connection: forget everything learned before, and swallow
	 * the new backend's greeting.
	 */
	void		 (*tls_ready)(void *st);

	/*
	 * The handler's phase as a short word ("greeting", "command", ...),
	 * never NULL: for tests and debugging (it is not logged).
	 */
	const char	*(*strstate)(const void *st);
};

/**
 * proto_find(p):
 * Return the handler for ${p}, or NULL for CONFIG_PROTO_NONE.
 */
const struct proto_ops *proto_find(enum config_proto);

/**
 * proto_unavailable(p, hostname, buf, len):
 * Write the protocol's "service not available" reply for ${p} (SMTP 421,
 * IMAP * BYE [UNAVAILABLE], POP3 -ERR [SYS/TEMP]) into ${buf}.  Return its
 * length, 0 for CONFIG_PROTO_NONE (nothing is sent).
 */
size_t proto_unavailable(enum config_proto, const char *, char *, size_t);

extern const struct proto_ops proto_smtp_ops;
extern const struct proto_ops proto_imap_ops;
extern const struct proto_ops proto_pop3_ops;

/*
 * Helpers shared by the handlers (proto.c); not used by conn.
 */

/**
 * proto_chomp(line, len):
 * Return the length of ${line} without its line ending (CRLF or bare LF).
 */
size_t proto_chomp(const char *, size_t);

/**
 * proto_out_add(out, p, len):
 * Append ${len} bytes at ${p} to ${out}.  Return 0, or -1 (and leave ${out}
 * unchanged) if they do not fit.
 */
int proto_out_add(struct proto_out *, const void *, size_t);

/**
 * proto_out_reply(out, text, v):
 * Make the NUL-terminated ${text} the whole of ${out}; return ${v}.
 */
enum proto_verdict proto_out_reply(struct proto_out *, const char *,
    enum proto_verdict);

/**
 * proto_out_fmt(out, fmt, ...):
 * Append a formatted string to ${out}.  Return 0, or -1 (${out} unchanged)
 * if it does not fit.
 */
int proto_out_fmt(struct proto_out *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

/**
 * proto_word_eq(w, wlen, name):
 * Return 1 if the ${wlen} bytes at ${w} equal the NUL-terminated ${name},
 * ignoring ASCII case, else 0.
 */
int proto_word_eq(const char *, size_t, const char *);

#endif
