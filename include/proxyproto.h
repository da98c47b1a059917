/*
 * proxyproto: the PROXY protocol (HAProxy's proxy-protocol.txt), versions 1
 * and 2: pure builders that write a header into a caller's buffer, and a
 * strict, bounded parser for headers received from a trusted load balancer.
 */
#ifndef MAILTLSD_PROXYPROTO_H
#define MAILTLSD_PROXYPROTO_H

#include <sys/socket.h>

#include <stddef.h>
#include <sys/types.h>

/* The longest header we build or accept (v2: 16 + TLVs). */
#define PROXYPROTO_MAX	1024

/* What a v2 header tells the backend about the client's TLS session. */
struct proxyproto_tls {
	int		 client_tls;	/* the client used TLS (PP2_CLIENT_SSL) */
	int		 cert_conn;	/* client certificate presented on this
					   connection (PP2_CLIENT_CERT_CONN) */
	int		 cert_verified;	/* and verified (PP2_SUBTYPE_SSL verify = 0) */
	const char	*sni;		/* PP2_TYPE_AUTHORITY; NULL or "" = none */
	const char	*alpn;		/* PP2_TYPE_ALPN */
	const char	*version;	/* PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3" */
	const char	*cipher;	/* PP2_SUBTYPE_SSL_CIPHER */
	const char	*cn;		/* PP2_SUBTYPE_SSL_CN (verified cert only) */
};

/**
 * proxyproto_v1(src, dst, buf, len):
 * Write a v1 header ("PROXY TCP4 ..." / "PROXY TCP6 ..." / "PROXY UNKNOWN")
 * for a connection from ${src} to ${dst} into ${buf}.  Return its length,
 * or -1 if ${len} is too small.
 */
ssize_t proxyproto_v1(const struct sockaddr *, const struct sockaddr *, char *,
    size_t);

/**
 * proxyproto_v2(src, dst, tls, buf, len):
 * Write a v2 PROXY header (or LOCAL for a family it cannot carry) with the
 * TLVs from ${tls} (may be NULL) into ${buf}.  Return its length, or -1.
 */
ssize_t proxyproto_v2(const struct sockaddr *, const struct sockaddr *,
    const struct proxyproto_tls *, unsigned char *, size_t);

struct proxyproto_hdr {
	int			 local;	/* LOCAL command or UNKNOWN: keep the
					   connection's own addresses */
	struct sockaddr_storage	 src;
	struct sockaddr_storage	 dst;
};

/**
 * proxyproto_parse(buf, len, hdr, used, why):
 * Parse a v1 or v2 header at the start of ${buf}.  Return 1 with *${used}
 * set to the header's length when it is complete, 0 if more bytes are
 * needed (never when ${len} >= PROXYPROTO_MAX), or -1 if it is malformed,
 * with *${why} set to a static message (then nothing is to be trusted and
 * the connection is to be closed).
 */
int proxyproto_parse(const unsigned char *, size_t, struct proxyproto_hdr *,
    size_t *, const char **);

#endif
