/*
 * climit: limits per client address, shared by all the workers of the
 * process: at most max_per_client connections open at once, and at most
 * rate_per_client new connections per second (a token bucket holding two
 * seconds' worth: burst 2x).
 *
 * One table per listener with limits, of a size fixed when it is made
 * (CLIMIT_SLOT_BYTES per slot, a power of two of slots, at least twice the
 * listener's max_connections): memory never grows with the number of
 * clients seen.  A client with a connection open is never forgotten; one
 * without is forgotten when its slot is wanted, the longest idle first (its
 * bucket refilled first), so a flood of new addresses can only make us
 * forget what little rate state idle clients still had.
 *
 * The table is used at accept and at close only, under one mutex; nothing
 * on the relay path touches it.
 */
#ifndef MAILTLSD_CLIMIT_H
#define MAILTLSD_CLIMIT_H

#include <sys/socket.h>

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"

/* What one slot of the table costs. */
#define CLIMIT_SLOT_BYTES	32

/* The close reason of a connection refused for its client's limits. */
#define CLIMIT_REASON		"client_limit"

enum climit_verdict {
	CLIMIT_OK,		/* admitted: release its ticket at the end */
	CLIMIT_OVER_MAX,	/* max_per_client connections already open */
	CLIMIT_OVER_RATE,	/* over rate_per_client */
};

struct climit;

/**
 * climit_new(name, max_per_client, rate_per_client, max_connections):
 * Make the table of the listener ${name} (borrowed for the table's life),
 * sized for ${max_connections} connections open at once.  A limit of 0 is
 * no limit.  Return the table, or NULL (out of memory, or both limits 0).
 */
struct climit *climit_new(const char *, unsigned, unsigned, unsigned);

/**
 * climit_free(t):
 * Write the refusals not yet logged, and free ${t}; NULL is a no-op.
 */
void climit_free(struct climit *);

/**
 * climit_admit(t, sa, now_us, ticket):
 * Count a new connection from the client address ${sa} (IPv4, or IPv6 by
 * its /64) at ${now_us} (a monotonic clock in microseconds, climit_now).
 * If it is admitted, *${ticket} is what to give climit_release when it
 * ends (0 when it is not counted: an address that is not IP, or a table
 * so full of open connections that no slot is free).  ${t} may be NULL
 * (no limits): admitted with ticket 0.
 */
enum climit_verdict climit_admit(struct climit *, const struct sockaddr *,
    uint64_t, uint32_t *);

/**
 * climit_release(t, ticket):
 * The connection admitted with ${ticket} has ended.  Ticket 0 and a NULL
 * ${t} are no-ops.
 */
void climit_release(struct climit *, uint32_t);

/**
 * climit_gate(t, lc, fd, peer, ticket, m, worker, listener):
 * At accept, before anything else is done for the connection ${fd} from
 * ${peer} on the listener ${lc}: climit_admit it, or refuse it: count it
 * in ${m} (as worker ${worker}, listener ${listener}: the connection and
 * the refusal), note it for the log, and close ${fd} at once (after the
 * climit_reply on a listener whose client is not on TLS from its first
 * byte).  Return the verdict.
 */
enum climit_verdict climit_gate(struct climit *,
    const struct config_listener *, int, const struct sockaddr *,
    uint32_t *, struct metrics *, size_t, size_t);

/**
 * climit_metric(v):
 * The counter of refusals of verdict ${v}.
 */
enum metric climit_metric(enum climit_verdict);

/**
 * climit_refused(t, v, client):
 * Note a refusal of verdict ${v} for the logs; the address of ${client}
 * is named in the next line.  Lines are written by a thread
 * of the table's, at most one a second, each with the counts since the
 * previous one.
 */
void climit_refused(struct climit *, enum climit_verdict,
    const struct sockaddr *);

/**
 * climit_reply(proto, hostname, buf, len):
 * Write into ${buf} (${len} bytes) the temporary error a client of
 * protocol ${proto} gets when refused on a plaintext or STARTTLS listener.
 * Return its length, or 0 for protocol none (the connection is just
 * closed).
 */
size_t climit_reply(enum config_proto, const char *, char *, size_t);

/**
 * climit_now():
 * The monotonic clock climit_admit wants, in microseconds.
 */
uint64_t climit_now(void);

/**
 * climit_slots(t):
 * How many client addresses ${t} can track (its fixed size); its memory is
 * climit_slots(t) * CLIMIT_SLOT_BYTES.
 */
size_t climit_slots(const struct climit *);

/**
 * climit_tracked(t):
 * How many client addresses ${t} tracks now (for tests).
 */
size_t climit_tracked(struct climit *);

#endif
