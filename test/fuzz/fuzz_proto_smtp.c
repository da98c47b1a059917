/*
 * libFuzzer target for the SMTP handler: arbitrary bytes from both sides,
 * through the session engine itself, checking the spec's invariants
 * (session_fuzz.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "session_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{

	return (sf_chunks(&proto_smtp_ops, sf_allowed_smtp, data, size));
}
