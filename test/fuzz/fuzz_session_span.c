/*
 * libFuzzer target for the content fast path: the same input through two
 * session engines, one with the handler's span op and one without it (each
 * line offered to the handler), must give the same bytes to each side, the
 * same STARTTLS and the same close.  The span op is a shortcut, never a
 * second opinion.
 *
 * Input: a byte choosing the protocol and the listener (implicit TLS, or
 * STARTTLS with the handshake done as soon as it is asked for), then
 * pieces of [side, length, bytes].
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "session.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

struct out {
	uint8_t	*p;
	size_t	 len;
	size_t	 cap;
};

struct run {
	struct session		*s;
	struct proto_out	 scratch;
	struct out		 to[2];		/* PROTO_CLIENT, PROTO_BACKEND */
	int			 closed;
	int			 starttls;
};

static void
put(struct out *o, const char *p, size_t len)
{

	if (o->len + len > o->cap) {
		o->cap = (o->len + len) * 2;
		if ((o->p = realloc(o->p, o->cap)) == NULL)
			abort();
	}
	memcpy(o->p + o->len, p, len);
	o->len += len;
}

static void
collect(struct run *r)
{
	const struct session_action *a;
	size_t i, n;

	a = session_actions(r->s, &n);
	for (i = 0; i < n; i++) {
		switch (a[i].kind) {
		case SESSION_TO_CLIENT:
			put(&r->to[PROTO_CLIENT], a[i].data, a[i].len);
			break;
		case SESSION_TO_BACKEND:
			put(&r->to[PROTO_BACKEND], a[i].data, a[i].len);
			break;
		case SESSION_START_TLS:
			r->starttls++;
			break;
		case SESSION_CLOSE:
			r->closed = 1;
			break;
		}
	}
}

static void
same(const struct run *a, const struct run *b)
{
	int i;

	if (a->closed != b->closed || a->starttls != b->starttls)
		abort();
	for (i = 0; i < 2; i++)
		if (a->to[i].len != b->to[i].len || (a->to[i].len > 0 &&
		    memcmp(a->to[i].p, b->to[i].p, a->to[i].len) != 0))
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct proto_ops *const all[] = { &proto_smtp_ops,
	    &proto_imap_ops, &proto_pop3_ops };
	static const enum config_proto protos[] = { CONFIG_PROTO_SMTP,
	    CONFIG_PROTO_IMAP, CONFIG_PROTO_POP3 };
	struct proto_ops nospan;
	struct session_conf sc;
	struct run r[2];
	size_t off = 1, len, k;
	int i, side, tlsdone = 0;

	if (size < 1)
		return (0);
	memset(r, 0, sizeof(r));
	nospan = *all[data[0] % 3];
	nospan.span = NULL;
	for (i = 0; i < 2; i++) {
		memset(&sc, 0, sizeof(sc));
		sc.ops = i == 0 ? all[data[0] % 3] : &nospan;
		sc.proto = protos[data[0] % 3];
		sc.opts.starttls = (data[0] & 4) != 0;
		sc.opts.client_on_tls = !sc.opts.starttls;
		sc.opts.require_tls = (data[0] & 8) != 0;
		sc.opts.hostname = "mx.example.com";
		sc.out = &r[i].scratch;
		if ((r[i].s = session_new(&sc)) == NULL)
			abort();
	}
	while (off + 2 <= size && !r[0].closed) {
		side = data[off] & 1 ? PROTO_BACKEND : PROTO_CLIENT;
		/* Long pieces too: content spans more than one read. */
		len = (size_t)data[off + 1] * (data[off] & 2 ? 64 : 1);
		off += 2;
		if (len > size - off)
			len = size - off;
		for (i = 0; i < 2; i++) {
			k = side == PROTO_CLIENT ?
			    session_client(r[i].s, (const char *)data + off,
			    len) : session_backend(r[i].s,
			    (const char *)data + off, len);
			(void)k;
			collect(&r[i]);
		}
		same(&r[0], &r[1]);
		off += len;
		if (r[0].starttls && !tlsdone) {
			tlsdone = 1;
			for (i = 0; i < 2; i++) {
				(void)session_client_tls(r[i].s);
				collect(&r[i]);
			}
			same(&r[0], &r[1]);
		}
	}
	for (i = 0; i < 2; i++) {
		session_free(r[i].s);
		free(r[i].to[0].p);
		free(r[i].to[1].p);
	}
	return (0);
}
