/*
 * libFuzzer target for the IMAP handler: arbitrary bytes from both sides,
 * framed as conn frames them (proto_driver.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "proto_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/*
 * Before TLS with require_tls only these commands reach the backend, as
 * whole lines: never a literal, never a continuation line.
 */
static int
allowed(const char *p, size_t len)
{
	static const char *ok[] = { "CAPABILITY", "NOOP", "LOGOUT", "ID" };
	size_t n = proto_chomp(p, len), t, c, i;

	if (n > 0 && p[n - 1] == '}')
		return (0);
	for (t = 0; t < n && p[t] != ' '; t++)
		continue;
	if (t == 0 || t >= n)
		return (0);
	for (c = t + 1; c < n && p[c] != ' '; c++)
		continue;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (proto_word_eq(p + t + 1, c - t - 1, ok[i]))
			return (1);
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{

	return (pdrv_fuzz(&proto_imap_ops, allowed, data, size));
}
