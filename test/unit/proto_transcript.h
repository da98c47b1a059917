/*
 * proto_transcript: what the handler unit tests share.  A test feeds lines
 * from the client (C) and the backend (B) through the session engine
 * (proxy/session.c, the code conn.c runs), carries out the actions it
 * returns as conn.c would, and checks byte for byte what each side was sent
 * since the last check (TO_CLIENT, TO_BACKEND).
 */
#ifndef MAILTLSD_PROTO_TRANSCRIPT_H
#define MAILTLSD_PROTO_TRANSCRIPT_H

#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "session.h"

struct tbuf {
	char	*p;
	size_t	 len;
	size_t	 cap;
};

struct transcript {
	struct session		*s;
	void			*st;		/* the handler's state */
	struct proto_out	 out;		/* the engine's scratch */
	struct tbuf		 to[2];		/* what each side was sent */
	int			 tlswait;	/* STARTTLS answered */
	int			 closed;
	int			 passthrough;
};

static struct transcript d;

static inline void
tbuf_add(struct tbuf *b, const void *p, size_t len)
{

	if (len == 0)
		return;
	if (b->len + len > b->cap) {
		size_t ncap = b->cap ? b->cap : 256;

		while (ncap < b->len + len)
			ncap *= 2;
		if ((b->p = realloc(b->p, ncap)) == NULL)
			abort();
		b->cap = ncap;
	}
	memcpy(b->p + b->len, p, len);
	b->len += len;
}

static inline enum config_proto
transcript_proto(const struct proto_ops *ops)
{

	if (ops == &proto_smtp_ops)
		return (CONFIG_PROTO_SMTP);
	if (ops == &proto_imap_ops)
		return (CONFIG_PROTO_IMAP);
	return (CONFIG_PROTO_POP3);
}

static inline void
transcript_start(const struct proto_ops *ops, const char *hostname,
    int starttls, int on_tls, int require_tls)
{
	struct session_conf sc;

	memset(&d, 0, sizeof(d));
	memset(&sc, 0, sizeof(sc));
	sc.ops = ops;
	sc.opts.starttls = starttls;
	sc.opts.client_on_tls = on_tls;
	sc.opts.require_tls = require_tls;
	sc.opts.hostname = hostname;
	sc.proto = transcript_proto(ops);
	sc.out = &d.out;
	if ((d.s = session_new(&sc)) == NULL)
		abort();
	d.st = session_proto_state(d.s);
}

static inline void
transcript_free(void)
{

	session_free(d.s);
	free(d.to[0].p);
	free(d.to[1].p);
	memset(&d, 0, sizeof(d));
}

static inline int
teardown(void **state)
{

	(void)state;
	transcript_free();
	return (0);
}

/* Carry out the engine's actions as conn.c does. */
static inline void
transcript_apply(void)
{
	const struct session_action *a;
	size_t i, n;

	a = session_actions(d.s, &n);
	for (i = 0; i < n; i++) {
		switch (a[i].kind) {
		case SESSION_TO_CLIENT:
			tbuf_add(&d.to[PROTO_CLIENT], a[i].data, a[i].len);
			break;
		case SESSION_TO_BACKEND:
			tbuf_add(&d.to[PROTO_BACKEND], a[i].data, a[i].len);
			break;
		case SESSION_START_TLS:
			d.tlswait = 1;
			break;
		case SESSION_CLOSE:
			d.closed = 1;
			break;
		}
	}
	d.passthrough = !d.closed && !session_parsing(d.s);
}

static inline void
transcript_feed(enum proto_side side, const char *p, size_t len)
{

	if (side == PROTO_CLIENT)
		(void)session_client(d.s, p, len);
	else
		(void)session_backend(d.s, p, len);
	transcript_apply();
}

/* The client's handshake after STARTTLS finished. */
static inline void
transcript_tls_ready(void)
{

	(void)session_client_tls(d.s);
	d.tlswait = 0;
	transcript_apply();
}

#define C(s)	transcript_feed(PROTO_CLIENT, (s), strlen(s))
#define B(s)	transcript_feed(PROTO_BACKEND, (s), strlen(s))

/* Check what ${side} was sent since the last check, byte for byte. */
static inline void
expect(enum proto_side side, const char *want)
{
	static char got[1 << 17];
	struct tbuf *b = &d.to[side];
	size_t n = b->len < sizeof(got) - 1 ? b->len : sizeof(got) - 1;

	if (n > 0)
		memcpy(got, b->p, n);
	got[n] = '\0';
	b->len = 0;
	assert_string_equal(got, want);
	assert_int_equal(n, strlen(want));
}

#define TO_CLIENT(s)	expect(PROTO_CLIENT, (s))
#define TO_BACKEND(s)	expect(PROTO_BACKEND, (s))

#endif
