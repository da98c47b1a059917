/*
 * libFuzzer target for the session engine with both directions
 * interleaved: a client script and a backend script cut into pieces and
 * fed in an input-chosen order, for any of the three protocols, with the
 * spec's invariants checked (session_fuzz.h).
 */
#include <stddef.h>
#include <stdint.h>

#include "session_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{

	return (sf_interleaved(data, size));
}
