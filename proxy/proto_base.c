/*
 * proto_base: the state and helpers the three protocol handlers share (see
 * proto_base.h).  No I/O.
 */
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

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

/*
 * Is ${i} where the block scan stops: a bare LF (with ${crlf}), or a dot
 * that starts a line of at most 3 octets (the end of the block, for the
 * handler)?  ${last} is the region's last LF, so that reads stay in it.
 */
static int
stop_at(const char *p, size_t i, const char *last, int crlf)
{
	const char *q = p + i;

	if (*q == '\n')
		return (crlf && (i == 0 || q[-1] != '\r'));
	if (*q == '.' && (i == 0 || q[-1] == '\n'))
		return (q[1] == '\n' || (q + 1 < last && q[2] == '\n'));
	return (0);
}

/* The start of the line that holds ${i}. */
static size_t
line_start(const char *p, size_t i)
{

	while (i > 0 && p[i - 1] != '\n')
		i--;
	return (i);
}

#ifdef __SSE2__
/* One bit per octet of the 64 at ${p} that equals the one in ${c}. */
static inline uint64_t
mask64(const char *p, __m128i c)
{
	const __m128i *v = (const __m128i *)(const void *)p;

	return ((uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(
	    _mm_loadu_si128(v), c)) |
	    (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(
	    _mm_loadu_si128(v + 1), c)) << 16 |
	    (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(
	    _mm_loadu_si128(v + 2), c)) << 32 |
	    (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(
	    _mm_loadu_si128(v + 3), c)) << 48);
}
#endif

/**
 * proto_span_body(p, avail, max, crlf):
 * The whole plain body lines at the start of ${p} (see proto_base.h).
 */
size_t
proto_span_body(const char *p, size_t avail, size_t max, int crlf)
{
	const char *last;
	size_t i = 0, j, end;
#ifdef __SSE2__
	const __m128i lf = _mm_set1_epi8('\n');
	uint64_t l;
#endif

	/*
	 * A region of at most max octets holds no whole line longer than
	 * that, so only its line ends and its dots need a look.  No call per
	 * line: this is the hot path of message data.
	 */
	if (avail > max)
		avail = max;
	if (avail == 0 || (last = memrchr(p, '\n', avail)) == NULL)
		return (0);
	end = (size_t)(last - p) + 1;
	if (stop_at(p, 0, last, crlf))
		return (0);
#ifdef __SSE2__
	/*
	 * 64 octets at a time, as a bit mask of their LFs; only the octets
	 * around each LF can stop the scan: the one before (a bare LF) and
	 * the one after (a dot that starts a line).  With lines of 78
	 * columns that is about one LF per block, so this costs less than
	 * masks of CRs and dots would (callgrind: about half the
	 * instructions).
	 */
	for (; i + 64 <= end; i += 64) {
		for (l = mask64(p + i, lf); l != 0; l &= l - 1) {
			j = i + (size_t)__builtin_ctzll(l);
			if (stop_at(p, j, last, crlf))
				return (line_start(p, j));
			if (p + j < last && p[j + 1] == '.' &&
			    stop_at(p, j + 1, last, crlf))
				return (j + 1);
		}
	}
#endif
	for (; i < end; i++)
		if (stop_at(p, i, last, crlf))
			return (line_start(p, i));
	return (end);
}
