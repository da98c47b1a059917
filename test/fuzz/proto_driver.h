/*
 * proto_driver: a model of how conn.c drives a protocol handler, without
 * sockets, for the fuzz targets and the unit tests.
 *
 * Bytes from a side are appended to that side's input; then, as conn does:
 * raw() is asked first and that many bytes are passed on untouched; else one
 * line (ending in LF, at most max_line bytes, no NUL while the client is in
 * plaintext, no unfinished line past line_limit, or the connection
 * closes) is given to line() and its verdict carried out.  A held client line
 * is offered again after the next backend line has been handled.  After
 * STARTTLS every client byte is discarded until tls_ready().  After
 * PASSTHROUGH bytes are relayed without the handler.
 *
 * What each side received is collected in to[] (to[PROTO_CLIENT] is what the
 * client was sent).  CLOSE sends out->buf to the client whichever side the
 * line came from, or for a backend line without one the "service not
 * available" reply, as conn.c does.  A verdict the interface forbids (HOLD, REPLY or
 * STARTTLS for a backend line; out->len beyond its buffer; a backend byte
 * relayed between the STARTTLS answer and tls_ready) aborts, so that the
 * fuzzer reports it.
 */
#ifndef MAILTLSD_PROTO_DRIVER_H
#define MAILTLSD_PROTO_DRIVER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

struct pdrv_buf {
	char	*p;
	size_t	 len;
	size_t	 cap;
};

struct pdrv {
	const struct proto_ops	*ops;
	void			*st;
	struct proto_opts	 opts;
	struct proto_out	 out;
	struct pdrv_buf		 in[2];		/* unprocessed input per side */
	struct pdrv_buf		 to[2];		/* bytes each side was sent */
	int			 held;		/* a client line is held */
	int			 tlswait;	/* STARTTLS answered */
	int			 tls;		/* tls_ready() called */
	int			 passthrough;
	int			 closed;
	int			 reoffer_direct;	/* re-offer a held line
						   to line() without raw() */
	int			 reoffer;
	unsigned long		 lines[2];	/* lines handled per side */

	/*
	 * Called for every piece of data passed from ${side} to the other
	 * side (a line, a rewrite, raw bytes); for invariants in fuzzers.
	 */
	void			(*check)(struct pdrv *, enum proto_side side,
				    const char *, size_t, int raw);
};

static inline void
pdrv_buf_add(struct pdrv_buf *b, const void *p, size_t len)
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

static inline void
pdrv_buf_eat(struct pdrv_buf *b, size_t len)
{

	memmove(b->p, b->p + len, b->len - len);
	b->len -= len;
}

static inline void
pdrv_init(struct pdrv *d, const struct proto_ops *ops,
    const struct proto_opts *o)
{

	memset(d, 0, sizeof(*d));
	d->ops = ops;
	d->opts = *o;
	if ((d->st = calloc(1, ops->state_size)) == NULL)
		abort();
	ops->init(d->st, o);
}

static inline void
pdrv_free(struct pdrv *d)
{
	int i;

	for (i = 0; i < 2; i++) {
		free(d->in[i].p);
		free(d->to[i].p);
	}
	free(d->st);
	memset(d, 0, sizeof(*d));
}

/* Pass ${len} bytes from ${side} to the other side. */
static inline void
pdrv_pass(struct pdrv *d, enum proto_side side, const char *p, size_t len,
    int raw)
{

	/* SPEC: no backend byte between the STARTTLS answer and TLS. */
	if (side == PROTO_BACKEND && d->tlswait && len > 0)
		abort();
	if (d->check != NULL)
		d->check(d, side, p, len, raw);
	pdrv_buf_add(&d->to[side == PROTO_CLIENT ? PROTO_BACKEND :
	    PROTO_CLIENT], p, len);
}

static inline void pdrv_run(struct pdrv *, enum proto_side);

static inline void
pdrv_unavailable(struct pdrv *d)
{
	enum config_proto p = CONFIG_PROTO_NONE;
	char buf[512];
	size_t n;

	if (d->ops == &proto_smtp_ops)
		p = CONFIG_PROTO_SMTP;
	else if (d->ops == &proto_imap_ops)
		p = CONFIG_PROTO_IMAP;
	else if (d->ops == &proto_pop3_ops)
		p = CONFIG_PROTO_POP3;
	n = proto_unavailable(p, d->opts.hostname, buf, sizeof(buf));
	pdrv_buf_add(&d->to[PROTO_CLIENT], buf, n);
}

static inline void
pdrv_close(struct pdrv *d)
{

	d->closed = 1;
	d->in[0].len = d->in[1].len = 0;
}

/* Handle one unit of input from ${side}; return 0 when nothing more can be
 * done for now. */
static inline int
pdrv_step(struct pdrv *d, enum proto_side side)
{
	struct pdrv_buf *in = &d->in[side];
	enum proto_verdict v;
	size_t n, len;
	char *lf;

	if (d->closed || in->len == 0)
		return (0);
	if (d->passthrough) {
		pdrv_pass(d, side, in->p, in->len, 1);
		in->len = 0;
		return (0);
	}
	if (side == PROTO_CLIENT && d->tlswait) {
		in->len = 0;		/* conn discards these */
		return (0);
	}
	if (side == PROTO_CLIENT && d->held)
		return (0);

	if (side == PROTO_CLIENT && d->reoffer && d->reoffer_direct)
		n = 0;
	else
		n = d->ops->raw(d->st, side, in->len);
	if (side == PROTO_CLIENT)
		d->reoffer = 0;
	if (n > in->len)
		abort();
	if (n > 0) {
		pdrv_pass(d, side, in->p, n, 1);
		pdrv_buf_eat(in, n);
		return (1);
	}

	lf = memchr(in->p, '\n', in->len);
	len = lf != NULL ? (size_t)(lf - in->p) + 1 : in->len;
	/* As conn: NUL closes only while the client is in plaintext. */
	if (!d->opts.client_on_tls && !d->tls &&
	    memchr(in->p, '\0', len) != NULL) {
		pdrv_close(d);
		return (0);
	}
	if (lf == NULL) {
		if (in->len >= d->ops->max_line ||
		    in->len >= d->ops->line_limit(d->st, side))
			pdrv_close(d);
		return (0);
	}
	if (side == PROTO_CLIENT)
		d->reoffer = 0;
	if (len > d->ops->max_line) {
		pdrv_close(d);
		return (0);
	}

	d->out.len = 0;
	v = d->ops->line(d->st, side, in->p, len, &d->out);
	if (d->out.len > sizeof(d->out.buf))
		abort();
	d->lines[side]++;
	if (side == PROTO_BACKEND && (v == PROTO_HOLD || v == PROTO_REPLY ||
	    v == PROTO_STARTTLS))
		abort();
	switch (v) {
	case PROTO_FORWARD:
		pdrv_pass(d, side, in->p, len, 0);
		break;
	case PROTO_REWRITE:
		pdrv_pass(d, side, d->out.buf, d->out.len, 0);
		break;
	case PROTO_DROP:
		break;
	case PROTO_REPLY:
		pdrv_buf_add(&d->to[PROTO_CLIENT], d->out.buf, d->out.len);
		break;
	case PROTO_HOLD:
		d->held = 1;
		return (0);
	case PROTO_STARTTLS:
		pdrv_buf_add(&d->to[PROTO_CLIENT], d->out.buf, d->out.len);
		pdrv_buf_eat(in, len);
		in->len = 0;
		d->tlswait = 1;
		return (0);
	case PROTO_PASSTHROUGH:
		if (d->out.len > 0)
			pdrv_pass(d, side, d->out.buf, d->out.len, 0);
		else
			pdrv_pass(d, side, in->p, len, 0);
		d->passthrough = 1;
		break;
	case PROTO_CLOSE:
		/*
		 * As conn does: out->buf goes to the client, whichever side
		 * sent the line; a backend line that closes without one gets
		 * the protocol's "service not available" reply.
		 */
		if (d->out.len > 0 || side == PROTO_CLIENT)
			pdrv_buf_add(&d->to[PROTO_CLIENT], d->out.buf,
			    d->out.len);
		else
			pdrv_unavailable(d);
		pdrv_close(d);
		return (0);
	default:
		abort();
	}
	pdrv_buf_eat(in, len);

	/* A held client line is offered again after a backend line. */
	if (side == PROTO_BACKEND && d->held) {
		d->held = 0;
		d->reoffer = 1;
		pdrv_run(d, PROTO_CLIENT);
	}
	return (1);
}

static inline void
pdrv_run(struct pdrv *d, enum proto_side side)
{

	while (pdrv_step(d, side))
		continue;
	if (d->passthrough) {
		(void)pdrv_step(d, PROTO_CLIENT);
		(void)pdrv_step(d, PROTO_BACKEND);
	}
}

/* Bytes arrive from ${side}. */
static inline void
pdrv_feed(struct pdrv *d, enum proto_side side, const void *p, size_t len)
{

	if (d->closed)
		return;
	if (side == PROTO_CLIENT && d->tlswait)
		return;
	pdrv_buf_add(&d->in[side], p, len);
	pdrv_run(d, side);
}

/*
 * The client's handshake finished and a fresh backend is connected: any
 * input still buffered from the old backend is gone.
 */
static inline void
pdrv_tls_ready(struct pdrv *d)
{

	if (!d->tlswait || d->closed)
		return;
	d->tlswait = 0;
	d->tls = 1;
	d->held = 0;
	d->in[PROTO_BACKEND].len = 0;
	d->in[PROTO_CLIENT].len = 0;
	d->ops->tls_ready(d->st);
}

/*
 * pdrv_fuzz(ops, allowed, data, size):
 * Run one session of ${ops} from fuzz input: the first byte picks the
 * listener (bits 0-1: 0 and 3 starttls, 1 implicit, 2 none; bit 2:
 * require_tls; bit 3: re-offer held lines without raw()); then chunks of
 * [op][len][len bytes], op bits 0-1: 0 and 3 client bytes, 1 backend bytes,
 * 2 the handshake finishes (tls_ready).  Before TLS with require_tls, every
 * client byte passed to the backend must be a line ${allowed} accepts.
 */
static int (*pdrv_allowed)(const char *, size_t);

static inline void
pdrv_fuzz_check(struct pdrv *d, enum proto_side side, const char *p,
    size_t len, int raw)
{

	if (side != PROTO_CLIENT || !d->opts.starttls || !d->opts.require_tls ||
	    d->tls)
		return;
	if (raw || len == 0 || p[len - 1] != '\n' || !pdrv_allowed(p, len))
		abort();
}

static inline int
pdrv_fuzz(const struct proto_ops *ops, int (*allowed)(const char *, size_t),
    const uint8_t *data, size_t size)
{
	struct pdrv d;
	struct proto_opts o;
	size_t i, n;
	uint8_t op;

	if (size < 1)
		return (0);
	memset(&o, 0, sizeof(o));
	switch (data[0] & 3) {
	case 1:
		o.client_on_tls = 1;
		break;
	case 2:
		break;
	default:
		o.starttls = 1;
		break;
	}
	o.require_tls = (data[0] >> 2) & 1;
	o.hostname = "fuzz.example";
	pdrv_init(&d, ops, &o);
	d.reoffer_direct = (data[0] >> 3) & 1;
	pdrv_allowed = allowed;
	d.check = pdrv_fuzz_check;

	for (i = 1; i + 2 <= size && !d.closed; i += 2 + n) {
		op = data[i];
		n = data[i + 1];
		if (n > size - i - 2)
			n = size - i - 2;
		switch (op & 3) {
		case 1:
			pdrv_feed(&d, PROTO_BACKEND, data + i + 2, n);
			break;
		case 2:
			pdrv_tls_ready(&d);
			break;
		default:
			pdrv_feed(&d, PROTO_CLIENT, data + i + 2, n);
			break;
		}
		/* STARTTLS only on a STARTTLS listener, and only once. */
		if (d.tlswait && (!o.starttls || d.tls))
			abort();
		if (ops->strstate(d.st) == NULL)
			abort();
	}
	pdrv_free(&d);
	return (0);
}

#endif
