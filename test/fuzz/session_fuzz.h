/*
 * session_fuzz: the fuzz targets' driver.  It runs the session engine
 * itself (proxy/session.c, the code conn.c runs) on fuzz input and checks
 * the promises of the spec on every list of actions it returns:
 *
 *  - no byte is written anywhere after a STARTTLS answer until the client's
 *    TLS is up (CVE-2011-0411: nothing after the STARTTLS line survives);
 *  - before TLS with require_tls the backend gets nothing but whole lines
 *    of allowed commands;
 *  - bytes passed on (not written by the handler) are the sender's own,
 *    in the order it sent them, each at most once: replies keep their
 *    order, and after TLS the fresh backend gets only what the client sent
 *    after TLS (and the client only what the new backend sent);
 *  - memory stays bounded;
 *  - STARTTLS happens only on a STARTTLS listener, and only once.
 *
 * A broken promise aborts, so that libFuzzer reports the input.
 */
#ifndef MAILTLSD_SESSION_FUZZ_H
#define MAILTLSD_SESSION_FUZZ_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "session.h"

/* The commands allowed before TLS with require_tls (fuzz_allowed.c). */
int	sf_allowed_smtp(const char *, size_t);
int	sf_allowed_imap(const char *, size_t);
int	sf_allowed_pop3(const char *, size_t);

/* The engine's own bound: two lines' worth per side and the arena. */
#define SF_MEMORY_MAX	(8u * 1024 * 1024)

struct sf {
	struct session		*s;
	struct proto_out	 out;
	struct proto_opts	 opts;
	int			 (*allowed)(const char *, size_t);
	int			 tlswait;
	int			 tls;		/* after STARTTLS, TLS is up */
	int			 closed;
	int			 starttls_seen;
	/* What each side sent (since TLS), and how far it was passed on. */
	uint8_t			*sent[2];
	size_t			 nsent[2];
	size_t			 cursor[2];
};

static inline enum config_proto
sf_proto(const struct proto_ops *ops)
{

	if (ops == &proto_smtp_ops)
		return (CONFIG_PROTO_SMTP);
	if (ops == &proto_imap_ops)
		return (CONFIG_PROTO_IMAP);
	return (CONFIG_PROTO_POP3);
}

static inline void
sf_require_allowed(const struct sf *f, const char *p, size_t len)
{
	const char *lf;
	size_t n;

	while (len > 0) {
		/* Whole lines only: never a fragment, never raw bytes. */
		if ((lf = memchr(p, '\n', len)) == NULL)
			abort();
		n = (size_t)(lf - p) + 1;
		if (!f->allowed(p, n))
			abort();
		p += n;
		len -= n;
	}
}

static inline void
sf_record(struct sf *f, enum proto_side side, const uint8_t *p, size_t len)
{

	if (len == 0)
		return;
	if ((f->sent[side] = realloc(f->sent[side], f->nsent[side] + len)) ==
	    NULL)
		abort();
	memcpy(f->sent[side] + f->nsent[side], p, len);
	f->nsent[side] += len;
}

/* Passed-on bytes from ${from}: its own, in order, each at most once. */
static inline void
sf_in_order(struct sf *f, enum proto_side from, const char *p, size_t len)
{
	const uint8_t *hit;

	hit = memmem(f->sent[from] + f->cursor[from], f->nsent[from] -
	    f->cursor[from], p, len);
	if (hit == NULL)
		abort();
	f->cursor[from] = (size_t)(hit - f->sent[from]) + len;
}

/*
 * Check and "carry out" the actions of one call with the ${len} bytes at
 * ${in} from ${side} (NULL: no input).
 */
static inline void
sf_check(struct sf *f, enum proto_side side, const char *in, size_t len)
{
	const struct session_action *a;
	const char *bend = in;	/* end of backend bytes already passed */
	size_t i, n;

	a = session_actions(f->s, &n);
	for (i = 0; i < n; i++) {
		if (f->closed)
			abort();	/* nothing after CLOSE */
		switch (a[i].kind) {
		case SESSION_TO_CLIENT:
		case SESSION_TO_BACKEND:
			if (f->tlswait)
				abort();	/* after the STARTTLS answer */
			break;
		case SESSION_START_TLS:
			if (!f->opts.starttls || f->starttls_seen)
				abort();
			f->starttls_seen = f->tlswait = 1;
			continue;
		case SESSION_CLOSE:
			f->closed = 1;
			continue;
		}
		if (a[i].kind == SESSION_TO_BACKEND && f->opts.starttls &&
		    f->opts.require_tls && !f->tls)
			sf_require_allowed(f, a[i].data, a[i].len);
		if (!session_made(f->s, a[i].data))
			sf_in_order(f, a[i].kind == SESSION_TO_BACKEND ?
			    PROTO_CLIENT : PROTO_BACKEND, a[i].data, a[i].len);
		/* Backend bytes passed straight on keep their order. */
		if (a[i].kind == SESSION_TO_CLIENT && side == PROTO_BACKEND &&
		    a[i].data >= in && a[i].data < in + len) {
			if (a[i].data < bend)
				abort();
			bend = a[i].data + a[i].len;
		}
	}
	if (session_footprint(f->s) > SF_MEMORY_MAX)
		abort();
	if (session_state(f->s) == NULL)
		abort();
}

static inline void
sf_input(struct sf *f, enum proto_side side, const uint8_t *p, size_t len)
{

	if (f->closed || (side == PROTO_CLIENT && f->tlswait))
		return;		/* conn discards these */
	sf_record(f, side, p, len);
	if (side == PROTO_CLIENT)
		(void)session_client(f->s, (const char *)p, len);
	else
		(void)session_backend(f->s, (const char *)p, len);
	sf_check(f, side, (const char *)p, len);
}

static inline void
sf_tls_up(struct sf *f)
{

	if (!f->tlswait || f->closed)
		return;
	(void)session_client_tls(f->s);
	f->tlswait = 0;
	f->tls = 1;
	/* A fresh backend: only what is sent from now on may pass. */
	f->nsent[0] = f->nsent[1] = f->cursor[0] = f->cursor[1] = 0;
	sf_check(f, PROTO_CLIENT, NULL, 0);
}

static inline void
sf_free(struct sf *f)
{

	session_free(f->s);
	free(f->sent[0]);
	free(f->sent[1]);
}

/* The listener from a configuration byte. */
static inline void
sf_init(struct sf *f, const struct proto_ops *ops,
    int (*allowed)(const char *, size_t), uint8_t conf)
{
	struct session_conf sc;

	memset(f, 0, sizeof(*f));
	switch (conf & 3) {
	case 1:
		f->opts.client_on_tls = 1;
		break;
	case 2:
		break;
	default:
		f->opts.starttls = 1;
		break;
	}
	f->opts.require_tls = (conf >> 2) & 1;
	f->opts.hostname = "fuzz.example";
	f->allowed = allowed;
	memset(&sc, 0, sizeof(sc));
	sc.ops = ops;
	sc.opts = f->opts;
	sc.proto = sf_proto(ops);
	sc.out = &f->out;
	if ((f->s = session_new(&sc)) == NULL)
		abort();
}

/*
 * sf_chunks(ops, allowed, data, size):
 * The first byte picks the listener (bits 0-1: 0 and 3 starttls, 1
 * implicit, 2 none; bit 2: require_tls); then chunks of [op][len][bytes],
 * op bits 0-1: 0 and 3 client bytes, 1 backend bytes, 2 the client's TLS is
 * up.
 */
static inline int
sf_chunks(const struct proto_ops *ops, int (*allowed)(const char *, size_t),
    const uint8_t *data, size_t size)
{
	struct sf f;
	size_t i, n;

	if (size < 1)
		return (0);
	sf_init(&f, ops, allowed, data[0]);
	for (i = 1; i + 2 <= size && !f.closed; i += 2 + n) {
		n = data[i + 1];
		if (n > size - i - 2)
			n = size - i - 2;
		switch (data[i] & 3) {
		case 1:
			sf_input(&f, PROTO_BACKEND, data + i + 2, n);
			break;
		case 2:
			sf_tls_up(&f);
			break;
		default:
			sf_input(&f, PROTO_CLIENT, data + i + 2, n);
			break;
		}
	}
	sf_free(&f);
	return (0);
}

/*
 * sf_interleaved(data, size):
 * Both directions interleaved, since injection lives in the interleaving.
 * Byte 0: the listener as for sf_chunks, bits 4-5 the protocol (0 and 3
 * SMTP, 1 IMAP, 2 POP3); bytes 1-2: the length of the client's script; then
 * the client's script and the backend's.  A generator seeded from the input
 * picks which script goes next and how many of its bytes (1 to 64), and
 * when the client's handshake completes after a STARTTLS answer.
 */
static inline int
sf_interleaved(const uint8_t *data, size_t size)
{
	static const struct proto_ops *ops[] = { &proto_smtp_ops,
	    &proto_imap_ops, &proto_pop3_ops, &proto_smtp_ops };
	static int (*allowed[])(const char *, size_t) = { sf_allowed_smtp,
	    sf_allowed_imap, sf_allowed_pop3, sf_allowed_smtp };
	const uint8_t *sc[2];
	size_t left[2], clen, n, i;
	uint32_t x = 2463534242u;
	struct sf f;
	int p, side;

	if (size < 3)
		return (0);
	p = (data[0] >> 4) & 3;
	clen = (size_t)data[1] << 8 | data[2];
	if (clen > size - 3)
		clen = size - 3;
	sc[PROTO_CLIENT] = data + 3;
	left[PROTO_CLIENT] = clen;
	sc[PROTO_BACKEND] = data + 3 + clen;
	left[PROTO_BACKEND] = size - 3 - clen;
	for (i = 0; i < size && i < 16; i++)
		x = (x ^ data[i]) * 16777619u + 1;
	sf_init(&f, ops[p], allowed[p], data[0]);
	while ((left[0] > 0 || left[1] > 0) && !f.closed) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		if (f.tlswait && (x & 7) == 0) {
			sf_tls_up(&f);
			continue;
		}
		side = (x >> 3) & 1;
		if (left[side] == 0)
			side = !side;
		n = 1 + ((x >> 4) & 63);
		if (n > left[side])
			n = left[side];
		sf_input(&f, (enum proto_side)side, sc[side], n);
		sc[side] += n;
		left[side] -= n;
	}
	sf_free(&f);
	return (0);
}

#endif
