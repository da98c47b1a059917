/*
 * proto_base: the state and helpers the three protocol handlers share (see
 * proto_base.h).  No I/O.
 */
#include <string.h>

#include "proto_base.h"

/**
 * proto_base_init(b, o):
 * Set ${b} from the listener's options ${o}, before TLS.
 */
void
proto_base_init(struct proto_base *b, const struct proto_opts *o)
{

	memset(b, 0, sizeof(*b));
	b->starttls = o->starttls;
	b->client_on_tls = o->client_on_tls;
	b->require_tls = o->require_tls;
	b->hostname = o->hostname;
}

/**
 * proto_pretls(b):
 * Return 1 in the plaintext phase of a STARTTLS listener, else 0.
 */
int
proto_pretls(const struct proto_base *b)
{

	return (b->starttls && !b->tls);
}

/**
 * proto_strict(b):
 * Return 1 in the plaintext phase of a STARTTLS listener with require_tls
 * (nothing but the pre-TLS commands passes), else 0.
 */
int
proto_strict(const struct proto_base *b)
{

	return (proto_pretls(b) && b->require_tls);
}

/**
 * proto_ontls(b):
 * Return 1 if the client is on TLS now (after STARTTLS, or implicit).
 */
int
proto_ontls(const struct proto_base *b)
{

	return (b->tls || b->client_on_tls);
}

/**
 * proto_ring_push(r, c):
 * Queue the command kind ${c} (0..255); return 0, or -1 if ${r} is full
 * (the handler then holds the line until a reply makes room).
 */
int
proto_ring_push(struct proto_ring *r, int c)
{

	if (r->len == PROTO_RING_MAX)
		return (-1);
	r->q[(r->head + r->len) % PROTO_RING_MAX] = (unsigned char)c;
	r->len++;
	return (0);
}

/**
 * proto_ring_peek(r):
 * Return the oldest command kind, left in ${r}; ${r} must not be empty.
 */
int
proto_ring_peek(const struct proto_ring *r)
{

	return (r->q[r->head]);
}

/**
 * proto_ring_pop(r):
 * Remove and return the oldest command kind; ${r} must not be empty.
 */
int
proto_ring_pop(struct proto_ring *r)
{
	int c = r->q[r->head];

	r->head = (r->head + 1) % PROTO_RING_MAX;
	r->len--;
	return (c);
}

/**
 * proto_cmd_find(tab, n, w, wlen):
 * Return the entry of the ${n} in ${tab} whose name is the ${wlen} bytes at
 * ${w} (ASCII case ignored), or NULL.
 */
const struct proto_cmd *
proto_cmd_find(const struct proto_cmd *tab, size_t n, const char *w,
    size_t wlen)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (proto_word_eq(w, wlen, tab[i].name))
			return (&tab[i]);
	return (NULL);
}

/**
 * proto_span_body(p, avail, max, crlf):
 * The whole plain body lines at the start of ${p} (see proto_base.h).
 */
size_t
proto_span_body(const char *p, size_t avail, size_t max, int crlf)
{
	const char *q = p, *end = p + avail, *lf;
	size_t len;

	/* One memchr per line, no call per line: the hot path of a body. */
	while (q < end) {
		len = (size_t)(end - q);
		if ((lf = memchr(q, '\n', len > max ? max : len)) == NULL)
			break;
		len = (size_t)(lf - q) + 1;
		if (q[0] == '.' && len <= 3)
			break;
		if (crlf && (len < 2 || lf[-1] != '\r'))
			break;
		q = lf + 1;
	}
	return ((size_t)(q - p));
}
