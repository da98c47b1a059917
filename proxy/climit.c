#include <sys/random.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "climit.h"
#include "log.h"

/*
 * The table is an array of buckets of BUCKET_SLOTS slots.  A client may sit
 * in either of two buckets chosen by a keyed hash of its address (two
 * choices keep the chance that both are full of open connections
 * negligible at the load we allow, half the slots), and is looked for in
 * both.  A slot holding an open connection never moves, so a ticket is
 * simply its index plus one.
 */
#define BUCKET_SLOTS	8
#define MIN_SLOTS	256
#define MAX_SLOTS	(1U << 24)
#define BURST		2	/* the bucket holds two seconds' worth */
#define LOG_EVERY_US	1000000

struct slot {
	unsigned char	 addr[16];	/* IPv4-mapped, or an IPv6 /64 */
	uint64_t	 tat;		/* GCRA: when the bucket is full again
					   (us); <= now: full */
	uint32_t	 active;	/* connections open */
	uint32_t	 used;		/* holds a client */
};

_Static_assert(sizeof(struct slot) == CLIMIT_SLOT_BYTES, "slot size");

struct climit {
	const char	*name;
	unsigned	 max;		/* 0: no cap */
	unsigned	 rate;		/* 0: no rate */
	uint64_t	 interval;	/* us per token */
	uint64_t	 span;		/* us: a full bucket */
	uint64_t	 key[2];	/* SipHash key */
	uv_mutex_t	 lock;		/* the slots */
	struct slot	*slots;
	size_t		 nslots;
	size_t		 nbuckets;
	/* The refusal log: counts since the last line, and its thread. */
	uv_mutex_t	 loglock;
	uv_cond_t	 logcond;
	uv_thread_t	 logthread;
	int		 logstarted;
	int		 logstop;
	uint64_t	 pending[3];	/* by verdict */
	char		 last[64];	/* a client refused since the last line */
};

#define ROTL(x, b)	(uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do {							\
	v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);	\
	v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;				\
	v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;				\
	v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);	\
} while (0)

/*
 * SipHash-2-4 of a 16-byte address: keyed with a secret chosen at start, so
 * that nobody can pick addresses that all land in the same buckets.
 */
static uint64_t
siphash16(const uint64_t k[2], const unsigned char in[16])
{
	uint64_t v0 = 0x736f6d6570736575ULL ^ k[0];
	uint64_t v1 = 0x646f72616e646f6dULL ^ k[1];
	uint64_t v2 = 0x6c7967656e657261ULL ^ k[0];
	uint64_t v3 = 0x7465646279746573ULL ^ k[1];
	uint64_t m;
	int i, j;

	for (i = 0; i < 2; i++) {
		m = 0;
		for (j = 7; j >= 0; j--)
			m = m << 8 | in[i * 8 + j];
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	m = (uint64_t)16 << 56;
	v3 ^= m;
	SIPROUND;
	SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return (v0 ^ v1 ^ v2 ^ v3);
}

/*
 * The key of a client: an IPv4 address (also when it comes IPv4-mapped) as
 * ::ffff:a.b.c.d, an IPv6 address by its /64 (one subscriber gets a whole
 * /64, RFC 6177).  No IPv6 /64 key can equal an IPv4 one: those have
 * 0xffff in bytes 10 and 11, a /64 key has zeros there.  Return 0, or -1
 * for an address that is not IP.
 */
static int
client_key(const struct sockaddr *sa, unsigned char k[16])
{
	const struct sockaddr_in *sin;
	const struct sockaddr_in6 *sin6;

	memset(k, 0, 16);
	switch (sa->sa_family) {
	case AF_INET:
		sin = (const void *)sa;
		k[10] = k[11] = 0xff;
		memcpy(k + 12, &sin->sin_addr, 4);
		return (0);
	case AF_INET6:
		sin6 = (const void *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			memcpy(k, &sin6->sin6_addr, 16);
		else
			memcpy(k, &sin6->sin6_addr, 8);
		return (0);
	default:
		return (-1);
	}
}

/**
 * climit_new(name, max_per_client, rate_per_client, max_connections):
 * Make the table of the listener ${name} (borrowed for the table's life),
 * sized for ${max_connections} connections open at once.  A limit of 0 is
 * no limit.  Return the table, or NULL (out of memory, or both limits 0).
 */
struct climit *
climit_new(const char *name, unsigned max, unsigned rate, unsigned maxconn)
{
	struct climit *t;
	size_t n = MIN_SLOTS;

	if (max == 0 && rate == 0)
		goto err0;
	if ((t = calloc(1, sizeof(*t))) == NULL)
		goto err0;
	t->name = name;
	t->max = max;
	t->rate = rate;
	if (rate > 0) {
		t->interval = 1000000 / rate;
		if (t->interval == 0)
			t->interval = 1;
		t->span = t->interval * rate * BURST;
	}
	/*
	 * At most max_connections slots hold an open connection: with twice
	 * as many slots, at least half of any two buckets is usually free.
	 */
	while (n < (size_t)maxconn * 2 && n < MAX_SLOTS)
		n *= 2;
	t->nslots = n;
	t->nbuckets = n / BUCKET_SLOTS;
	if ((t->slots = calloc(n, sizeof(*t->slots))) == NULL)
		goto err1;
	if (getrandom(t->key, sizeof(t->key), 0) != sizeof(t->key)) {
		/* Not secret, but still spread: better than refusing to start. */
		t->key[0] = uv_hrtime();
		t->key[1] = (uint64_t)(uintptr_t)t;
	}
	if (uv_mutex_init(&t->lock) < 0)
		goto err2;
	if (uv_mutex_init(&t->loglock) < 0)
		goto err3;
	if (uv_cond_init(&t->logcond) < 0)
		goto err4;
	return (t);

err4:
	uv_mutex_destroy(&t->loglock);
err3:
	uv_mutex_destroy(&t->lock);
err2:
	free(t->slots);
err1:
	free(t);
err0:
	return (NULL);
}

/* One line for the refusals counted since the last; loglock held. */
static void
log_pending(struct climit *t)
{
	uint64_t nmax = t->pending[CLIMIT_OVER_MAX];
	uint64_t nrate = t->pending[CLIMIT_OVER_RATE];
	char last[sizeof(t->last)];

	if (nmax + nrate == 0)
		return;
	t->pending[CLIMIT_OVER_MAX] = t->pending[CLIMIT_OVER_RATE] = 0;
	memcpy(last, t->last, sizeof(last));
	uv_mutex_unlock(&t->loglock);
	log_fields(CONFIG_LOG_WARN, "client_limit", (struct log_field[]){
	    LOG_STR("listener", t->name), LOG_NUM("refused", nmax + nrate),
	    LOG_NUM("max_per_client", nmax), LOG_NUM("rate_per_client", nrate),
	    LOG_STR("last_client", last) }, 5);
	uv_mutex_lock(&t->loglock);
}

/*
 * The refusal log: a line as soon as something is refused, then at most one
 * a second while refusals go on, so that a flood costs a line a second, and
 * the count of its tail is written within a second of its end.
 */
static void
log_main(void *arg)
{
	struct climit *t = arg;
	uint64_t until, now;

	uv_mutex_lock(&t->loglock);
	for (;;) {
		while (!t->logstop && t->pending[CLIMIT_OVER_MAX] +
		    t->pending[CLIMIT_OVER_RATE] == 0)
			uv_cond_wait(&t->logcond, &t->loglock);
		log_pending(t);
		if (t->logstop)
			break;
		until = uv_hrtime() + (uint64_t)LOG_EVERY_US * 1000;
		while (!t->logstop && (now = uv_hrtime()) < until)
			(void)uv_cond_timedwait(&t->logcond, &t->loglock,
			    until - now);
	}
	log_pending(t);
	uv_mutex_unlock(&t->loglock);
}

/**
 * climit_free(t):
 * Write the refusals not yet logged, and free ${t}; NULL is a no-op.
 */
void
climit_free(struct climit *t)
{

	if (t == NULL)
		return;
	uv_mutex_lock(&t->loglock);
	t->logstop = 1;
	uv_cond_signal(&t->logcond);
	uv_mutex_unlock(&t->loglock);
	if (t->logstarted)
		uv_thread_join(&t->logthread);
	uv_cond_destroy(&t->logcond);
	uv_mutex_destroy(&t->loglock);
	uv_mutex_destroy(&t->lock);
	free(t->slots);
	free(t);
}

/* The slot of ${k}, or of a newcomer in its place; NULL if none is free. */
static struct slot *
find_slot(struct climit *t, const unsigned char k[16], uint64_t now)
{
	uint64_t h = siphash16(t->key, k);
	size_t b[2], i, j;
	struct slot *s, *victim = NULL;

	b[0] = (size_t)(h & (t->nbuckets - 1));
	b[1] = (size_t)((h >> 32) & (t->nbuckets - 1));
	for (i = 0; i < 2; i++)
		for (j = 0; j < BUCKET_SLOTS; j++) {
			s = &t->slots[b[i] * BUCKET_SLOTS + j];
			if (s->used && memcmp(s->addr, k, 16) == 0)
				return (s);
		}
	/*
	 * A newcomer takes an empty slot, or that of the client idle for
	 * longest: one with no connection open whose bucket is the fullest
	 * (a full one, tat <= now, is forgotten at no cost at all).
	 */
	for (i = 0; i < 2; i++)
		for (j = 0; j < BUCKET_SLOTS; j++) {
			s = &t->slots[b[i] * BUCKET_SLOTS + j];
			if (!s->used) {
				victim = s;
				goto take;
			}
			if (s->active == 0 && (victim == NULL ||
			    s->tat < victim->tat))
				victim = s;
		}
	if (victim == NULL)
		return (NULL);
take:
	memcpy(victim->addr, k, 16);
	victim->used = 1;
	victim->active = 0;
	victim->tat = now;
	return (victim);
}

/**
 * climit_admit(t, sa, now_us, ticket):
 * Count a new connection from the client address ${sa} (IPv4, or IPv6 by
 * its /64) at ${now_us} (a monotonic clock in microseconds, climit_now).
 * If it is admitted, *${ticket} is what to give climit_release when it
 * ends (0 when it is not counted: an address that is not IP, or a table
 * so full of open connections that no slot is free).  ${t} may be NULL
 * (no limits): admitted with ticket 0.
 */
enum climit_verdict
climit_admit(struct climit *t, const struct sockaddr *sa, uint64_t now,
    uint32_t *ticket)
{
	enum climit_verdict v = CLIMIT_OK;
	unsigned char k[16];
	struct slot *s;
	uint64_t tat;

	*ticket = 0;
	if (t == NULL || client_key(sa, k) < 0)
		return (CLIMIT_OK);
	uv_mutex_lock(&t->lock);
	/*
	 * No slot: only when both buckets are full of open connections,
	 * which takes far more than max_connections in practice.  Serve the
	 * client uncounted rather than refuse one that may be under its
	 * limits.
	 */
	if ((s = find_slot(t, k, now)) == NULL)
		goto out;
	/* A refusal costs the client no token: it is not served. */
	if (t->max > 0 && s->active >= t->max) {
		v = CLIMIT_OVER_MAX;
		goto out;
	}
	if (t->rate > 0) {
		/* GCRA (ITU-T I.371): the token bucket kept as one time. */
		tat = (s->tat > now ? s->tat : now) + t->interval;
		if (tat - now > t->span) {
			v = CLIMIT_OVER_RATE;
			goto out;
		}
		s->tat = tat;
	}
	s->active++;
	*ticket = (uint32_t)(s - t->slots) + 1;
out:
	uv_mutex_unlock(&t->lock);
	return (v);
}

/**
 * climit_release(t, ticket):
 * The connection admitted with ${ticket} has ended.  Ticket 0 and a NULL
 * ${t} are no-ops.
 */
void
climit_release(struct climit *t, uint32_t ticket)
{
	struct slot *s;

	if (t == NULL || ticket == 0 || ticket > t->nslots)
		return;
	uv_mutex_lock(&t->lock);
	s = &t->slots[ticket - 1];
	if (s->active > 0)
		s->active--;
	uv_mutex_unlock(&t->lock);
}

/**
 * climit_gate(t, lc, fd, peer, ticket, m, worker, listener):
 * At accept, before anything else is done for the connection ${fd} from
 * ${peer} on the listener ${lc}: climit_admit it, or refuse it: count it
 * in ${m} (as worker ${worker}, listener ${listener}: the connection and
 * the refusal), note it for the log, and close ${fd} at once (after the
 * climit_reply on a listener whose client is not on TLS from its first
 * byte).  Return the verdict.
 */
enum climit_verdict
climit_gate(struct climit *t, const struct config_listener *lc, int fd,
    const struct sockaddr *peer, uint32_t *ticket, struct metrics *m,
    size_t worker, size_t listener)
{
	enum climit_verdict v;
	char buf[512];
	size_t n;

	if ((v = climit_admit(t, peer, climit_now(), ticket)) == CLIMIT_OK)
		return (v);
	/* Counted before the close, which the client may act on at once. */
	metrics_add(m, worker, listener, METRIC_CONN_TOTAL, 1);
	metrics_add(m, worker, listener, climit_metric(v), 1);
	climit_refused(t, v, peer);
	/*
	 * The reply is short and the socket new: it fits in the send
	 * buffer, and the kernel delivers it before the FIN.  An implicit
	 * TLS client gets nothing: not a byte of TLS is spent on it.
	 */
	if (lc->client_tls != CONFIG_TLS_IMPLICIT &&
	    (n = climit_reply(lc->protocol, lc->hostname, buf,
	    sizeof(buf))) > 0)
		(void)send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(fd);
	return (v);
}

/**
 * climit_metric(v):
 * The counter of refusals of verdict ${v}.
 */
enum metric
climit_metric(enum climit_verdict v)
{

	return (v == CLIMIT_OVER_RATE ? METRIC_CLIMIT_RATE :
	    METRIC_CLIMIT_MAX);
}

/**
 * climit_refused(t, v, client):
 * Note a refusal of verdict ${v} for the logs; the address of ${client}
 * is named in the next line.  Lines are written by a thread
 * of the table's, at most one a second, each with the counts since the
 * previous one.
 */
void
climit_refused(struct climit *t, enum climit_verdict v,
    const struct sockaddr *client)
{
	char host[INET6_ADDRSTRLEN] = "";

	if (t == NULL || v == CLIMIT_OK)
		return;
	if (client->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)
		    client)->sin_addr, host, sizeof(host));
	else if (client->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)
		    (const void *)client)->sin6_addr, host, sizeof(host));
	uv_mutex_lock(&t->loglock);
	t->pending[v]++;
	memcpy(t->last, host, sizeof(host));
	/* The thread starts with the first refusal: most tables never log. */
	if (!t->logstarted && !t->logstop) {
		if (uv_thread_create(&t->logthread, log_main, t) == 0)
			t->logstarted = 1;
		else
			log_pending(t);
	}
	uv_cond_signal(&t->logcond);
	uv_mutex_unlock(&t->loglock);
}

/**
 * climit_reply(proto, hostname, buf, len):
 * Write into ${buf} (${len} bytes) the temporary error a client of
 * protocol ${proto} gets when refused on a plaintext or STARTTLS listener.
 * Return its length, or 0 for protocol none (the connection is just
 * closed).
 */
size_t
climit_reply(enum config_proto proto, const char *hostname, char *buf,
    size_t len)
{
	int n;

	switch (proto) {
	case CONFIG_PROTO_SMTP:
		/* RFC 5321 4.2.5: 421 closes; RFC 3463 4.7.0: policy. */
		n = snprintf(buf, len, "421 4.7.0 %s Too many connections "
		    "from your address\r\n", hostname);
		break;
	case CONFIG_PROTO_IMAP:
		/* RFC 9051 7.1: BYE; RFC 5530 UNAVAILABLE: try later. */
		n = snprintf(buf, len, "* BYE [UNAVAILABLE] Too many "
		    "connections\r\n");
		break;
	case CONFIG_PROTO_POP3:
		/* RFC 3206: SYS/TEMP, a temporary system problem. */
		n = snprintf(buf, len, "-ERR [SYS/TEMP] Too many "
		    "connections\r\n");
		break;
	default:
		return (0);
	}
	if (n < 0 || (size_t)n >= len)
		return (0);
	return ((size_t)n);
}

/**
 * climit_now():
 * The monotonic clock climit_admit wants, in microseconds.
 */
uint64_t
climit_now(void)
{

	return (uv_hrtime() / 1000);
}

/**
 * climit_slots(t):
 * How many client addresses ${t} can track (its fixed size); its memory is
 * climit_slots(t) * CLIMIT_SLOT_BYTES.
 */
size_t
climit_slots(const struct climit *t)
{

	return (t->nslots);
}

/**
 * climit_tracked(t):
 * How many client addresses ${t} tracks now (for tests).
 */
size_t
climit_tracked(struct climit *t)
{
	size_t i, n = 0;

	uv_mutex_lock(&t->lock);
	for (i = 0; i < t->nslots; i++)
		n += t->slots[i].used;
	uv_mutex_unlock(&t->lock);
	return (n);
}
