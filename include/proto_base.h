/*
 * proto_base: what the three protocol handlers (proto_smtp.c, proto_imap.c,
 * proto_pop3.c) share, written once: the listener's STARTTLS settings and
 * the session's TLS phase, the queue of commands whose replies are still
 * owed, and the lookup of a command word in a handler's table.  No I/O; not
 * used by conn.
 */
#ifndef MAILTLSD_PROTO_BASE_H
#define MAILTLSD_PROTO_BASE_H

#include <stddef.h>

#include "proto.h"

/* The listener's settings (struct proto_opts) and where the session is. */
struct proto_base {
	int		 starttls;	/* client_tls = starttls */
	int		 client_on_tls;	/* implicit listener */
	int		 require_tls;
	const char	*hostname;	/* borrowed */
	int		 tls;		/* STARTTLS done on this session */
};

/**
 * proto_base_init(b, o):
 * Set ${b} from the listener's options ${o}, before TLS.
 */
void proto_base_init(struct proto_base *, const struct proto_opts *);

/**
 * proto_pretls(b):
 * Return 1 in the plaintext phase of a STARTTLS listener, else 0.
 */
int proto_pretls(const struct proto_base *);

/**
 * proto_strict(b):
 * Return 1 in the plaintext phase of a STARTTLS listener with require_tls
 * (nothing but the pre-TLS commands passes), else 0.
 */
int proto_strict(const struct proto_base *);

/**
 * proto_ontls(b):
 * Return 1 if the client is on TLS now (after STARTTLS, or implicit).
 */
int proto_ontls(const struct proto_base *);

/* Commands forwarded whose replies are still owed, oldest first. */
#define PROTO_RING_MAX	64

struct proto_ring {
	unsigned char	 q[PROTO_RING_MAX];	/* a handler's command kind */
	unsigned	 head;
	unsigned	 len;
};

/**
 * proto_ring_push(r, c):
 * Queue the command kind ${c} (0..255); return 0, or -1 if ${r} is full
 * (the handler then holds the line until a reply makes room).
 */
int proto_ring_push(struct proto_ring *, int);

/**
 * proto_ring_peek(r):
 * Return the oldest command kind, left in ${r}; ${r} must not be empty.
 */
int proto_ring_peek(const struct proto_ring *);

/**
 * proto_ring_pop(r):
 * Remove and return the oldest command kind; ${r} must not be empty.
 */
int proto_ring_pop(struct proto_ring *);

/* A handler's table of the commands it knows. */
#define PROTO_F_PRETLS	0x01	/* allowed before TLS when require_tls */

struct proto_cmd {
	const char	*name;
	int		 cmd;		/* the handler's enum */
	int		 flags;		/* PROTO_F_* */
};

/**
 * proto_cmd_find(tab, n, w, wlen):
 * Return the entry of the ${n} in ${tab} whose name is the ${wlen} bytes at
 * ${w} (ASCII case ignored), or NULL.
 */
const struct proto_cmd *proto_cmd_find(const struct proto_cmd *, size_t,
    const char *, size_t);

/**
 * proto_span_body(p, avail, max, crlf):
 * The length of the whole lines at the start of the ${avail} bytes at ${p}
 * that are plain body lines of a dot-terminated block (message content,
 * a multi-line response): each at most ${max} octets, none starting with a
 * dot and at most 3 octets long (".", the end, is for the handler), and
 * with ${crlf} none ending in a bare LF (the handler rewrites those).
 */
size_t proto_span_body(const char *, size_t, size_t, int);

#endif
