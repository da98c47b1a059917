/*
 * proto_transcript: what the handler unit tests share.  A test feeds lines
 * from the client (C) and the backend (B) through the model of conn's
 * framing in test/fuzz/proto_driver.h, and checks byte for byte what each
 * side was sent since the last check (TO_CLIENT, TO_BACKEND).
 */
#ifndef MAILTLSD_PROTO_TRANSCRIPT_H
#define MAILTLSD_PROTO_TRANSCRIPT_H

#include "proto.h"
#include "../fuzz/proto_driver.h"

static struct pdrv d;

static void
transcript_start(const struct proto_ops *ops, const char *hostname,
    int starttls, int on_tls, int require_tls)
{
	struct proto_opts o = { starttls, on_tls, require_tls, hostname };

	pdrv_init(&d, ops, &o);
}

static int
teardown(void **state)
{

	(void)state;
	pdrv_free(&d);
	return (0);
}

#define C(s)	pdrv_feed(&d, PROTO_CLIENT, (s), strlen(s))
#define B(s)	pdrv_feed(&d, PROTO_BACKEND, (s), strlen(s))

/* Check what ${side} was sent since the last check, byte for byte. */
static void
expect(enum proto_side side, const char *want)
{
	static char got[1 << 17];
	struct pdrv_buf *b = &d.to[side];
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
