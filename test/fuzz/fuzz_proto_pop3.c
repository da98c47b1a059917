/*
 * libFuzzer target for the POP3 handler: arbitrary bytes from both sides,
 * framed as conn frames them (proto_driver.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "proto_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Before TLS with require_tls only these reach the backend. */
static int
allowed(const char *p, size_t len)
{
	static const char *ok[] = { "CAPA", "NOOP", "QUIT" };
	size_t n = proto_chomp(p, len), v, i;

	for (v = 0; v < n && p[v] != ' '; v++)
		continue;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (proto_word_eq(p, v, ok[i]))
			return (1);
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{

	return (pdrv_fuzz(&proto_pop3_ops, allowed, data, size));
}
