/*
 * conn_int: the parts of one proxied connection that the conn modules
 * share (conn.c, the lifecycle; conn_side.c, conn_backend.c, conn_tls.c,
 * conn_proxy.c, conn_log.c).
 *
 * Private on purpose, and so kept beside the sources rather than in
 * include/: struct conn and struct side are one object split by concern
 * across those files, each reading and changing the other's fields under
 * the phase machine's rules.  Nothing outside them may see these fields;
 * the rest of the daemon knows a connection only through conn.h.
 */
#ifndef MAILTLSD_CONN_INT_H
#define MAILTLSD_CONN_INT_H

#include <sys/socket.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>

#include <uv.h>

#include "backend.h"
#include "conn.h"
#include "metrics.h"
#include "worker.h"

/*
 * A side stops being read while the other side has more than this queued
 * for writing, and starts again below the low-water mark: this is what keeps
 * memory per connection bounded whatever the peers do.
 */
#define SIDE_HWM	(256 * 1024)
#define SIDE_LWM	(64 * 1024)

/* How long a closing connection may take to hand over what it still holds. */
#define CLOSE_LINGER_MS	5000

struct wreq {
	uv_write_t	 req;
	struct side	*side;
	struct wreq	*next;		/* while pending a connection */
	size_t		 len;
	char		 data[];
};

struct side {
	union {
		uv_handle_t	h;
		uv_stream_t	s;
		uv_tcp_t	tcp;
		uv_pipe_t	pipe;
	}		 u;
	struct conn	*c;
	struct tlsio	*tls;
	unsigned	 is_client:1;
	unsigned	 open:1;	/* handle initialised, needs uv_close */
	unsigned	 connected:1;
	unsigned	 ready:1;	/* takes plaintext: connected, and
					   TLS up where the backend wants it */
	unsigned	 reading:1;
	unsigned	 eof:1;		/* the peer will send no more */
	unsigned	 dead:1;	/* nothing more can be written */
	unsigned	 shut:1;	/* our write side is shut */
	unsigned	 detached:1;	/* a backend being dropped */
	unsigned	 hs_fed:1;	/* after STARTTLS: ciphertext seen */
	size_t		 queued;	/* bytes handed to libuv or pending */
	struct wreq	*pend_head;	/* plaintext waiting for ready */
	struct wreq	*pend_tail;
	char		*lb;		/* a PROXY header or a backend STARTTLS
					   dialogue line being read */
	size_t		 lblen;
	size_t		 lbcap;
	uint64_t	 bytes;		/* plaintext bytes received */
	struct bstls	*bst;		/* backend STARTTLS dialogue */
	uv_connect_t	 creq;
	uv_shutdown_t	 sreq;
};

enum conn_phase {
	CONN_PROXY_HDR,		/* reading a trusted peer's PROXY header */
	CONN_HANDSHAKE,		/* implicit TLS: handshake with the client */
	CONN_CONNECTING,	/* waiting for the backend connection */
	CONN_BACKEND_STARTTLS,	/* our STARTTLS dialogue with the backend */
	CONN_BACKEND_TLS,	/* TLS handshake with the backend */
	CONN_RELAY,		/* relaying, parsed or not */
	CONN_STARTTLS_FLUSH,	/* our STARTTLS reply drains; client input
				   is discarded */
	CONN_STARTTLS_HS,	/* handshake with the client after STARTTLS */
	CONN_CLOSING,		/* handing over what is queued, then closing */
};

/*
 * The client's TLS records during its handshake, walked only to spot a
 * plaintext alert: a TLS 1.3 client that rejects our certificate sends its
 * alert unencrypted (it has no handshake keys for writing yet), which GnuTLS
 * 3.7 reports as a decryption failure.
 */
struct hs_rec {
	unsigned char	 hdr[5];
	uint8_t		 hlen;		/* header bytes seen */
	uint16_t	 pos;		/* body bytes seen */
	int		 alert;		/* description + 1 of an alert seen */
};

/*
 * What a PROXY header toward the backend says; kept (256 bytes) only on
 * listeners that send one.
 */
struct conn_addrs {
	struct sockaddr_storage	 peer;		/* the client, from PROXY if any */
	struct sockaddr_storage	 local;		/* where it connected to */
};

struct conn {
	struct worker		*w;
	struct listener		*l;
	const struct config_listener *lc;
	struct worker_link	 link;		/* on the worker's list */
	uint64_t		 id;
	enum conn_phase		 phase;
	enum conn_phase		 closed_in;	/* phase when closing began */
	struct side		 client;
	struct side		*backend;
	uv_timer_t		 timer;
	int			 nhandles;
	int			 freed_handles;	/* all handles closed */
	int			 listed;	/* on the worker's list */
	uint64_t		 t_start;
	uint64_t		 hs_deadline;	/* 0: none */
	uint64_t		 conn_deadline;
	uint64_t		 close_deadline;
	uint64_t		 last_active;
	uint64_t		 backend_bytes;	/* from every backend */
	struct session		*sess;		/* NULL: protocol = none */
	int			 client_tls_up;
	int			 starttls_used;
	int			 hs_done;
	int			 hs_begun;	/* the client sent handshake bytes */
	struct hs_rec		 hsrec;		/* its records, until hs_done */
	int			 pre_tls_deadline; /* hs_deadline also bounds
						      the plaintext phase */
	const char		*reason;
	char			 detail[192];
	char			 peer[INET6_ADDRSTRLEN + 8];
	struct conn_addrs	*addrs;		/* NULL: no PROXY header to send */
	uint32_t		 climit;	/* climit ticket; 0: none */
	struct backend_try	 bt;		/* which backends were tried */
	/*
	 * What the client's TLS session said, for logs and the PROXY header.
	 * Names are kept on the heap only when there are any (most sessions
	 * have a short SNI and no certificate): an idle connection should not
	 * carry 640 empty bytes.  NULL means none.
	 */
	char			*sni;
	char			*subject;	/* the verified client cert's DN */
	char			*cn;
	const char		*version;	/* GnuTLS's own static names */
	const char		*cipher;
};

/* "" for a name that is not there. */
static inline const char *
nz(const char *s)
{

	return (s != NULL ? s : "");
}

static inline void
count(const struct conn *c, enum metric m, int64_t n)
{

	metrics_add(worker_metrics(c->w), (size_t)worker_id(c->w), c->l->index,
	    m, n);
}

static inline uint64_t
now_ms(const struct conn *c)
{

	return (uv_now(worker_loop(c->w)));
}

static inline int
side_live(const struct side *s)
{

	return (s != NULL && s->open && !s->detached);
}

/*
 * The lifecycle (conn.c), for the modules that act on a connection: the
 * one way out, the timer, who is read, the check for dead sides, the
 * plaintext delivery and the session's start.
 */
void	conn_finish(struct conn *, const char *);
void	conn_arm_timer(struct conn *);
void	conn_update_reading(struct conn *);
void	conn_settle(struct conn *);
void	conn_deliver(struct conn *, struct side *, const char *, size_t);
void	conn_relay_read(struct conn *, struct side *, const char *, size_t);
void	conn_start_session(struct conn *, const char *, size_t);
void	side_write_cb(uv_write_t *, int);
void	side_close_cb(uv_handle_t *);

#endif
