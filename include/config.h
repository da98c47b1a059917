/*
 * config: the immutable configuration read from the ini file.
 *
 * config_load() parses and validates everything a running daemon relies on
 * (keys, values, required keys, listen address clashes); the certificate files
 * are checked by certs_check(), not here.
 */
#ifndef MAILTLSD_CONFIG_H
#define MAILTLSD_CONFIG_H

#include <sys/socket.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum config_proto {
	CONFIG_PROTO_NONE,
	CONFIG_PROTO_SMTP,
	CONFIG_PROTO_IMAP,
	CONFIG_PROTO_POP3,
};

enum config_tls {
	CONFIG_TLS_NONE,
	CONFIG_TLS_IMPLICIT,
	CONFIG_TLS_STARTTLS,
};

enum config_verify {
	CONFIG_VERIFY_NONE,
	CONFIG_VERIFY_OPTIONAL,
	CONFIG_VERIFY_REQUIRED,
};

enum config_pp {
	CONFIG_PP_NONE,
	CONFIG_PP_V1,
	CONFIG_PP_V2,
};

enum config_logfmt {
	CONFIG_LOG_TEXT,
	CONFIG_LOG_JSON,
};

/* Log levels, most severe first: a message is written when <= log_level. */
enum config_loglevel {
	CONFIG_LOG_ERROR,
	CONFIG_LOG_WARN,
	CONFIG_LOG_INFO,
	CONFIG_LOG_DEBUG,
};

/* An address as written in the file: HOST:PORT, [V6]:PORT or unix:/path. */
struct config_addr {
	struct sockaddr_storage	 ss;	/* resolved; AF_INET, AF_INET6 or AF_UNIX */
	socklen_t		 sslen;
	char			 text[128];	/* as written, for logs */
	char			 host[128];	/* host part (no brackets), "" for unix */
};

enum config_balance {
	CONFIG_BALANCE_FAILOVER,	/* the first healthy, in file order */
	CONFIG_BALANCE_ROUNDROBIN,	/* sessions spread over the healthy */
};

/*
 * One backend line.  A numeric address or unix socket is resolved at load
 * time (addr.ss); a DNS name (is_name) is looked up at run time by backend.c
 * and addr.ss stays AF_UNSPEC, with addr.host and port set.
 */
struct config_backend {
	struct config_addr	 addr;
	uint16_t		 port;		/* host byte order; 0 for unix */
	int			 is_name;
	int			 line;
};

struct config_certpair {
	char	*cert;		/* path, or "auto" */
	char	*key;		/* path; NULL when cert is "auto" */
	int	 line;		/* line of the cert key */
};

struct config_cidr {
	int		family;		/* AF_INET or AF_INET6 */
	unsigned char	addr[16];	/* network address, host bits zero */
	int		prefix;
};

struct config_listener {
	char			*name;		/* section title */
	int			 line;		/* line of the section title */
	struct config_addr	 listen;
	enum config_proto	 protocol;
	enum config_tls		 client_tls;
	int			 require_tls;
	struct config_addr	 backend;	/* the first backend line */
	struct config_backend	*backends;	/* every backend line, in order */
	size_t			 nbackends;
	enum config_balance	 backend_balance;
	uint64_t		 backend_resolve_ms;
	enum config_tls		 backend_tls;
	int			 backend_verify;
	char			*backend_ca;	/* NULL: the system trust store */
	char			*backend_name;	/* NULL: the backend's host */
	struct config_certpair	*certs;
	size_t			 ncerts;
	char			*client_ca;
	int			 client_ca_line;
	enum config_verify	 client_verify;
	char			*tls_priority;	/* never NULL: default filled in */
	int			 alpn_strict;
	enum config_pp		 proxy_protocol;
	struct config_cidr	*accept_proxy;
	size_t			 naccept_proxy;
	char			*hostname;	/* never NULL: gethostname() */
	uint64_t		 connect_timeout_ms;
	uint64_t		 handshake_timeout_ms;
	uint64_t		 idle_timeout_ms;
	unsigned		 max_connections;
	unsigned		 max_per_client;	/* 0: no limit */
	unsigned		 rate_per_client;	/* per second; 0: none */
	uint64_t		 plaintext_timeout_ms;	/* idle, before TLS,
							   require_tls = no */
};

struct config {
	char			*path;
	char			*user;		/* NULL: keep running as we are */
	unsigned		 workers;	/* 0 = auto */
	enum config_loglevel	 log_level;
	enum config_logfmt	 log_format;
	int			 has_metrics;
	struct config_addr	 metrics;
	uint64_t		 shutdown_timeout_ms;
	char			*ticket_key_file;
	int			 backend_check;	/* try each backend at start-up */
	struct config_listener	*listeners;
	size_t			 nlisteners;
};

/*
 * The default TLS priority: TLS 1.2 and 1.3, ECDHE, AEAD only, no SHA-1
 * (neither as a MAC nor in signatures).  Used as written, like any
 * tls_priority: nothing is appended to it.
 */
#define CONFIG_DEFAULT_PRIORITY \
	"SECURE:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-RSA:-CIPHER-ALL:" \
	"+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:-SHA1:" \
	"-SIGN-RSA-SHA1:-SIGN-ECDSA-SHA1:-SIGN-DSA-SHA1:%SERVER_PRECEDENCE"

/**
 * config_load(path, errf):
 * Read and validate the configuration file ${path}.  Every problem found is
 * written to ${errf} as one "FILE:LINE: message" line (all of them, not only
 * the first).  Return a new configuration owned by the caller (free it with
 * config_free), or NULL if there was any problem.
 */
struct config *config_load(const char *, FILE *);

/**
 * config_free(cfg):
 * Free ${cfg}; NULL is a no-op.
 */
void config_free(struct config *);

/**
 * config_parse_duration(s, ms):
 * Parse a duration ("30", "30s", "500ms", "10m", "1h") into milliseconds.
 * Return 0, or -1 if ${s} is not a duration.
 */
int config_parse_duration(const char *, uint64_t *);

/**
 * config_parse_addr(s, a):
 * Parse HOST:PORT, [V6]:PORT or unix:/path into ${a}; HOST must be a numeric
 * address or "localhost".  Return NULL, or a static error message.
 */
const char *config_parse_addr(const char *, struct config_addr *);

/**
 * config_parse_backend(s, b):
 * Parse a backend: HOST:PORT where HOST may also be a DNS name (letters,
 * digits, '-', '_' and '.'), [V6]:PORT or unix:/path, into ${b} (its line is
 * left alone).  Return NULL, or a static error message.
 */
const char *config_parse_backend(const char *, struct config_backend *);

/**
 * config_parse_cidr(s, c):
 * Parse a network "ADDR/PREFIX" or a bare address (a /32 or /128) into ${c}.
 * An IPv4-mapped IPv6 network of prefix 96 or more is stored as the IPv4
 * network it maps.  Host bits set beyond the prefix are an error.  Return
 * NULL, or a static error message.
 */
const char *config_parse_cidr(const char *, struct config_cidr *);

/**
 * config_cidr_match(c, sa):
 * Return 1 if the socket address ${sa} lies in the network ${c}, else 0.
 * IPv4-mapped IPv6 addresses match IPv4 networks.
 */
int config_cidr_match(const struct config_cidr *, const struct sockaddr *);

/**
 * config_sockaddr_text(sa, buf, len):
 * Write the socket address ${sa} to ${buf} (at most ${len} bytes) as logs
 * and metrics show addresses, the way they are written in the file:
 * "192.0.2.1:25", "[2001:db8::1]:25", "unix:/path", or "local" for a
 * socket without a name (a unix-socket peer).
 */
void config_sockaddr_text(const struct sockaddr *, char *, size_t);

/**
 * config_proto_name(proto):
 * Return the name of ${proto} as written in the file: "smtp", "imap",
 * "pop3" or "none".
 */
const char *config_proto_name(enum config_proto);

#endif
