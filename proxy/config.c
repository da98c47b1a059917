/*
 * config: read and validate the ini file.
 *
 * The file is parsed by libinih (ini_parse_stream) fed by our own reader.
 * The reader does the work inih cannot do for us with the options Debian
 * builds it with (INI_HANDLER_LINENO=0, INI_MAX_LINE=200, inline comments
 * ';' only, multi-line continuation on):
 *
 * - it counts lines, so the key handler knows where it is;
 * - it reports lines longer than inih's buffer, which inih would otherwise
 *   split silently into two lines (comments aside: they never reach inih);
 * - it strips comments: a line whose first non-blank character is '#' or ';',
 *   and an inline '#' or ';' preceded by a blank, so that '#' works inline as
 *   ';' does;
 * - it strips leading blanks.  Indentation is therefore allowed and never
 *   continues the previous value: every line stands on its own.  A line meant
 *   as a continuation is not silently joined; it is reported, as a line that
 *   is not "key = value" or as an unknown key;
 * - it owns the section titles: it checks them, remembers the line of each
 *   and reports a title given twice.  The handler works on the section the
 *   reader last saw and ignores the name inih passes;
 * - it reports malformed lines itself and hands inih an empty line instead,
 *   so that every problem in the file is reported, not only inih's first.
 *
 * Decisions worth knowing:
 * - every section but [global] is a listener; a section with no keys is
 *   still a listener (and so misses its required keys);
 * - the keys of a duplicate section are ignored after the title is reported;
 * - keys that have no effect with the listener's other settings (backend_ca,
 *   backend_name, backend_verify with backend_tls = none; client_ca with
 *   client_verify = none; require_tls with client_tls != starttls; a cert
 *   with client_tls = none) are accepted and ignored, as the specification's
 *   own example does;
 * - a listener with no TLS on either side (client_tls = none and
 *   backend_tls = none) is an error: that is a plain TCP relay, not a TLS
 *   front, and almost certainly a mistake;
 * - "no listener defined" is reported on the last line of the file (line 1
 *   for an empty file): the end of the file is where one is missing;
 * - errors are collected and written sorted by line number.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>

#include "config.h"

/* The reader never hands inih a line it would have to split. */
#define LINE_MAX_CHARS		(INI_MAX_LINE - 1)

#define SECTION_MAX_CHARS	64
#define HOSTNAME_MAX_CHARS	253

#define WORKERS_MAX		256
#define MAXCONN_MAX		1000000

#define DEFAULT_SHUTDOWN_MS	(30 * 1000)
#define DEFAULT_CONNECT_MS	(5 * 1000)
#define DEFAULT_HANDSHAKE_MS	(10 * 1000)
#define DEFAULT_IDLE_MS		(10 * 60 * 1000)
#define DEFAULT_MAXCONN		10000
/* RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for a command. */
#define DEFAULT_PLAINTEXT_MS	(5 * 60 * 1000)
#define DEFAULT_RESOLVE_MS	(30 * 1000)
#define MIN_RESOLVE_MS		1000
#define BACKENDS_MAX		16	/* backend lines per listener */

struct parser;

typedef const char *(*parse_fn)(struct parser *, void *, size_t, const char *);

struct keydef {
	const char	*name;
	parse_fn	 parse;
	size_t		 off;
	int		 repeat;	/* may be given more than once */
};

/* Keys of [global], in the order of gkeys[]. */
enum gkey {
	GK_USER,
	GK_WORKERS,
	GK_LOG_LEVEL,
	GK_LOG_FORMAT,
	GK_METRICS,
	GK_SHUTDOWN_TIMEOUT,
	GK_TICKET_KEY_FILE,
	GK_BACKEND_CHECK,
	GK_COUNT
};

/* Keys of a listener section, in the order of lkeys[]. */
enum lkey {
	LK_LISTEN,
	LK_PROTOCOL,
	LK_CLIENT_TLS,
	LK_REQUIRE_TLS,
	LK_BACKEND,
	LK_BACKEND_TLS,
	LK_BACKEND_VERIFY,
	LK_BACKEND_CA,
	LK_BACKEND_NAME,
	LK_CERT,
	LK_KEY,
	LK_CLIENT_CA,
	LK_CLIENT_VERIFY,
	LK_TLS_PRIORITY,
	LK_ALPN,
	LK_PROXY_PROTOCOL,
	LK_ACCEPT_PROXY,
	LK_HOSTNAME,
	LK_CONNECT_TIMEOUT,
	LK_HANDSHAKE_TIMEOUT,
	LK_IDLE_TIMEOUT,
	LK_MAX_CONNECTIONS,
	LK_MAX_PER_CLIENT,
	LK_RATE_PER_CLIENT,
	LK_PLAINTEXT_TIMEOUT,
	LK_BACKEND_BALANCE,
	LK_BACKEND_RESOLVE,
	LK_COUNT
};

/* Parse state of one listener, parallel to cfg->listeners. */
struct lstate {
	int	 keyline[LK_COUNT];	/* line where the key was given, or 0 */
	int	 keybad[LK_COUNT];	/* its value was rejected */
	int	 pending;		/* last cert still waits for its key */
	int	 skip_key;		/* last cert rejected: so is its key */
	int	 auto_line;		/* line of "cert = auto", or 0 */
};

struct error {
	int	 line;
	size_t	 seq;
	char	*msg;
};

enum section {
	SEC_NONE,		/* before the first title */
	SEC_GLOBAL,
	SEC_LISTENER,
	SEC_SKIP,		/* a bad or duplicate title: keys ignored */
};

struct parser {
	const char	*path;
	FILE		*f;
	char		*buf;		/* getline() buffer */
	size_t		 bufsz;
	int		 lineno;
	int		 read_errno;
	struct config	*cfg;
	enum section	 sec;
	size_t		 cur;		/* index of the current listener */
	struct lstate	*ls;		/* parallel to cfg->listeners */
	size_t		 lcap;
	int		 global_line;
	int		 gkeyline[GK_COUNT];
	int		 gkeybad[GK_COUNT];
	struct error	*errs;
	size_t		 nerrs;
	size_t		 errcap;
	int		 enomem;
	char		 msg[160];	/* scratch for a value parser's error */
};

static void perr(struct parser *, int, const char *, ...)
    __attribute__((format(printf, 3, 4)));

/* Record an error at ${line}; they are written sorted when parsing ends. */
static void
perr(struct parser *p, int line, const char *fmt, ...)
{
	struct error *e;
	va_list ap;
	char *msg;
	int rc;

	va_start(ap, fmt);
	rc = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (rc < 0 || (msg = malloc((size_t)rc + 1)) == NULL) {
		p->enomem = 1;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(msg, (size_t)rc + 1, fmt, ap);
	va_end(ap);
	if (p->nerrs == p->errcap) {
		size_t ncap = p->errcap ? p->errcap * 2 : 16;

		if ((e = reallocarray(p->errs, ncap, sizeof(*e))) == NULL) {
			free(msg);
			p->enomem = 1;
			return;
		}
		p->errs = e;
		p->errcap = ncap;
	}
	e = &p->errs[p->nerrs];
	e->line = line;
	e->seq = p->nerrs;
	e->msg = msg;
	p->nerrs++;
}

static int
errcmp(const void *a, const void *b)
{
	const struct error *x = a, *y = b;

	if (x->line != y->line)
		return (x->line < y->line ? -1 : 1);
	return (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* Parse a decimal number of digits only (no sign, no blanks) up to ${max}. */
static int
parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (*s == '\0')
		return (-1);
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return (-1);
		if (v > (max - (uint64_t)(*s - '0')) / 10)
			return (-1);
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return (0);
}

/* Return the index of ${s} in the NULL-terminated ${words}, or -1. */
static int
keyword(const char *s, const char *const *words)
{
	int i;

	for (i = 0; words[i] != NULL; i++)
		if (strcasecmp(s, words[i]) == 0)
			return (i);
	return (-1);
}

/**
 * config_parse_duration(s, ms):
 * Parse a duration ("30", "30s", "500ms", "10m", "1h") into milliseconds.
 * Return 0, or -1 if ${s} is not a duration.
 */
int
config_parse_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char	*suffix;
		uint64_t	 mult;
	} units[] = {
		{ "", 1000 },
		{ "ms", 1 },
		{ "s", 1000 },
		{ "m", 60 * 1000 },
		{ "h", 60 * 60 * 1000 },
	};
	const char *end;
	uint64_t v;
	size_t i, n;
	char num[24];

	for (end = s; *end >= '0' && *end <= '9'; end++)
		;
	n = (size_t)(end - s);
	if (n == 0 || n >= sizeof(num))
		return (-1);
	memcpy(num, s, n);
	num[n] = '\0';
	if (parse_uint(num, UINT64_MAX, &v))
		return (-1);
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].suffix) != 0)
			continue;
		if (v > UINT64_MAX / units[i].mult)
			return (-1);
		*ms = v * units[i].mult;
		return (0);
	}
	return (-1);
}

/**
 * config_parse_addr(s, a):
 * Parse HOST:PORT, [V6]:PORT or unix:/path into ${a}; HOST must be a numeric
 * address or "localhost".  Return NULL, or a static error message.
 */
const char *
config_parse_addr(const char *s, struct config_addr *a)
{
	struct sockaddr_in *sin;
	struct sockaddr_in6 *sin6;
	struct sockaddr_un *sun;
	const char *port, *colon;
	char host[sizeof(a->host)];
	size_t hlen;
	uint64_t pnum;

	memset(a, 0, sizeof(*a));
	if (strlen(s) >= sizeof(a->text))
		return ("address too long");

	if (strncmp(s, "unix:", 5) == 0) {
		const char *path = s + 5;

		sun = (struct sockaddr_un *)&a->ss;
		if (path[0] != '/')
			return ("unix socket path must be absolute "
			    "(unix:/path)");
		if (strlen(path) >= sizeof(sun->sun_path))
			return ("unix socket path too long");
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, path, strlen(path) + 1);
		a->sslen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
		    strlen(path) + 1);
		memcpy(a->text, s, strlen(s) + 1);
		return (NULL);
	}

	if (s[0] == '[') {
		const char *rb = strchr(s, ']');

		if (rb == NULL)
			return ("missing ']' after IPv6 address");
		hlen = (size_t)(rb - (s + 1));
		if (hlen == 0)
			return ("missing host");
		if (hlen >= sizeof(host))
			return ("invalid IPv6 address");
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (rb[1] != ':')
			return (rb[1] == '\0' ? "missing port" :
			    "expected ':' and a port after ']'");
		port = rb + 2;
		sin6 = (struct sockaddr_in6 *)&a->ss;
		if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
			return ("invalid IPv6 address");
		sin6->sin6_family = AF_INET6;
		a->sslen = sizeof(*sin6);
	} else {
		if ((colon = strrchr(s, ':')) == NULL)
			return ("missing port (HOST:PORT)");
		if (strchr(s, ':') != colon)
			return ("IPv6 addresses go in brackets: [V6]:PORT");
		hlen = (size_t)(colon - s);
		if (hlen == 0)
			return ("missing host");
		if (hlen >= sizeof(host))
			return ("host must be a numeric address or localhost "
			    "(no DNS lookups at configuration time)");
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		port = colon + 1;
		sin = (struct sockaddr_in *)&a->ss;
		if (strcasecmp(host, "localhost") == 0)
			sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
			return ("host must be a numeric address or localhost "
			    "(no DNS lookups at configuration time)");
		sin->sin_family = AF_INET;
		a->sslen = sizeof(*sin);
	}

	if (*port == '\0')
		return ("missing port");
	if (parse_uint(port, 65535, &pnum) || pnum == 0) {
		memset(a, 0, sizeof(*a));
		return ("port must be a number from 1 to 65535");
	}
	if (a->ss.ss_family == AF_INET)
		((struct sockaddr_in *)&a->ss)->sin_port =
		    htons((uint16_t)pnum);
	else
		((struct sockaddr_in6 *)&a->ss)->sin6_port =
		    htons((uint16_t)pnum);
	memcpy(a->host, host, strlen(host) + 1);
	memcpy(a->text, s, strlen(s) + 1);
	return (NULL);
}

/* A DNS name: letters, digits, '-', '_' and '.', in labels of 1-63. */
static int
valid_dnsname(const char *h)
{
	size_t n = strlen(h), lab = 0, i;

	if (n == 0 || n > 253 || strspn(h, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != n)
		return (0);
	for (i = 0; i < n; i++) {
		if (h[i] != '.') {
			if (++lab > 63)
				return (0);
			continue;
		}
		/* An empty label; a trailing dot (a rooted name) is fine. */
		if (lab == 0)
			return (0);
		lab = 0;
	}
	return (h[0] != '-' && h[0] != '.');
}

/**
 * config_parse_backend(s, b):
 * Parse a backend: HOST:PORT where HOST may also be a DNS name (letters,
 * digits, '-', '_' and '.'), [V6]:PORT or unix:/path, into ${b} (its line is
 * left alone).  Return NULL, or a static error message.
 */
const char *
config_parse_backend(const char *s, struct config_backend *b)
{
	struct config_addr *a = &b->addr;
	const char *colon, *e;
	char host[sizeof(a->host)];
	unsigned char buf[4];
	uint64_t pnum;
	size_t hlen;
	int line = b->line;

	memset(b, 0, sizeof(*b));
	b->line = line;
	colon = strrchr(s, ':');
	if (strncmp(s, "unix:", 5) == 0 || s[0] == '[' || colon == NULL ||
	    strchr(s, ':') != colon || colon == s ||
	    (size_t)(colon - s) >= sizeof(host))
		goto numeric;
	hlen = (size_t)(colon - s);
	memcpy(host, s, hlen);
	host[hlen] = '\0';
	/* Numbers and dots only: an address (inet_aton's forms are not). */
	if (strspn(host, "0123456789.") == hlen ||
	    strcasecmp(host, "localhost") == 0 ||
	    inet_pton(AF_INET, host, buf) == 1)
		goto numeric;
	if (strlen(s) >= sizeof(a->text))
		return ("address too long");
	if (!valid_dnsname(host))
		return ("expected a DNS name, an IPv4 address, [IPv6] or "
		    "unix:/path before the port");
	if (colon[1] == '\0')
		return ("missing port");
	if (parse_uint(colon + 1, 65535, &pnum) || pnum == 0)
		return ("port must be a number from 1 to 65535");
	a->ss.ss_family = AF_UNSPEC;
	memcpy(a->host, host, hlen + 1);
	memcpy(a->text, s, strlen(s) + 1);
	b->port = (uint16_t)pnum;
	b->is_name = 1;
	return (NULL);

numeric:
	if ((e = config_parse_addr(s, a)) != NULL) {
		/* The numeric parser's advice predates DNS names. */
		if (strncmp(e, "host must be", 12) == 0)
			return ("invalid IPv4 address");
		return (e);
	}
	if (a->ss.ss_family == AF_INET)
		b->port = ntohs(((struct sockaddr_in *)&a->ss)->sin_port);
	else if (a->ss.ss_family == AF_INET6)
		b->port = ntohs(((struct sockaddr_in6 *)&a->ss)->sin6_port);
	return (NULL);
}

/* Clear the bits of ${addr} (${len} bytes) past ${prefix}; 1 if any was set. */
static int
mask_host_bits(unsigned char *addr, size_t len, int prefix)
{
	size_t i;
	int set = 0;
	unsigned char keep;

	for (i = 0; i < len; i++) {
		if ((int)(i * 8) >= prefix)
			keep = 0;
		else if ((int)(i * 8) + 8 <= prefix)
			keep = 0xff;
		else
			keep = (unsigned char)(0xff <<
			    (8 - (prefix - (int)i * 8)));
		if (addr[i] & ~keep)
			set = 1;
		addr[i] &= keep;
	}
	return (set);
}

static const unsigned char v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

/**
 * config_parse_cidr(s, c):
 * Parse a network "ADDR/PREFIX" or a bare address (a /32 or /128) into ${c}.
 * An IPv4-mapped IPv6 network of prefix 96 or more is stored as the IPv4
 * network it maps.  Host bits set beyond the prefix are an error.  Return
 * NULL, or a static error message.
 */
const char *
config_parse_cidr(const char *s, struct config_cidr *c)
{
	const char *slash;
	char addr[INET6_ADDRSTRLEN];
	size_t alen;
	uint64_t prefix;
	int max;

	memset(c, 0, sizeof(*c));
	slash = strchr(s, '/');
	alen = slash ? (size_t)(slash - s) : strlen(s);
	if (alen == 0)
		return ("missing address");
	if (alen >= sizeof(addr))
		return ("invalid address");
	memcpy(addr, s, alen);
	addr[alen] = '\0';

	if (inet_pton(AF_INET, addr, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return ("invalid address");
	}
	if (slash == NULL) {
		prefix = (uint64_t)max;
	} else if (parse_uint(slash + 1, (uint64_t)max, &prefix)) {
		memset(c, 0, sizeof(*c));
		return (max == 32 ? "prefix must be a number from 0 to 32" :
		    "prefix must be a number from 0 to 128");
	}
	c->prefix = (int)prefix;
	if (mask_host_bits(c->addr, max / 8, c->prefix)) {
		memset(c, 0, sizeof(*c));
		return ("host bits set beyond the prefix");
	}

	/* Match ::ffff:a.b.c.d/N against IPv4 peers too: store it as IPv4. */
	if (c->family == AF_INET6 && c->prefix >= 96 &&
	    memcmp(c->addr, v4mapped, sizeof(v4mapped)) == 0) {
		memmove(c->addr, c->addr + 12, 4);
		memset(c->addr + 4, 0, 12);
		c->family = AF_INET;
		c->prefix -= 96;
	}
	return (NULL);
}

/**
 * config_cidr_match(c, sa):
 * Return 1 if the socket address ${sa} lies in the network ${c}, else 0.
 * IPv4-mapped IPv6 addresses match IPv4 networks.
 */
int
config_cidr_match(const struct config_cidr *c, const struct sockaddr *sa)
{
	unsigned char addr[16];
	size_t len;
	int family;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		memcpy(addr, &sin->sin_addr, 4);
		family = AF_INET;
		len = 4;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 =
		    (const struct sockaddr_in6 *)sa;

		memcpy(addr, &sin6->sin6_addr, 16);
		family = AF_INET6;
		len = 16;
		if (memcmp(addr, v4mapped, sizeof(v4mapped)) == 0) {
			memmove(addr, addr + 12, 4);
			family = AF_INET;
			len = 4;
		}
	} else {
		return (0);
	}
	if (family != c->family)
		return (0);
	mask_host_bits(addr, len, c->prefix);
	return (memcmp(addr, c->addr, len) == 0);
}

/**
 * config_proto_name(proto):
 * Return the name of ${proto} as written in the file: "smtp", "imap",
 * "pop3" or "none".
 */
const char *
config_proto_name(enum config_proto proto)
{

	switch (proto) {
	case CONFIG_PROTO_SMTP:
		return ("smtp");
	case CONFIG_PROTO_IMAP:
		return ("imap");
	case CONFIG_PROTO_POP3:
		return ("pop3");
	case CONFIG_PROTO_NONE:
		break;
	}
	return ("none");
}

/*
 * Value parsers.  Each gets the object the key belongs to (struct config or
 * struct config_listener) and the offset of its field, and returns NULL or
 * what a good value looks like; the handler writes the error.
 */
#define FIELD(obj, off, type)	((type *)(void *)((char *)(obj) + (off)))

static const char *
parse_string(struct parser *p, void *obj, size_t off, const char *v)
{
	char **field = FIELD(obj, off, char *);
	char *s;

	if ((s = strdup(v)) == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	free(*field);
	*field = s;
	return (NULL);
}

static const char *
parse_workers(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t n;

	(void)p;
	if (strcasecmp(v, "auto") == 0) {
		*FIELD(obj, off, unsigned) = 0;
		return (NULL);
	}
	if (parse_uint(v, WORKERS_MAX, &n) || n == 0)
		return ("expected auto or a number from 1 to 256");
	*FIELD(obj, off, unsigned) = (unsigned)n;
	return (NULL);
}

static const char *
parse_maxconn(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t n;

	(void)p;
	if (parse_uint(v, MAXCONN_MAX, &n) || n == 0)
		return ("expected a number from 1 to 1000000");
	*FIELD(obj, off, unsigned) = (unsigned)n;
	return (NULL);
}

/*
 * The keyword-valued keys: each word and the value stored for it, in an int
 * or an enum (the same size, checked below), and the message for anything
 * else.  One parser reads them all; ENUM_KEY makes the parse_fn of a table.
 */
struct enumdef {
	const char	*expected;
	const char	*words[8];	/* NULL-terminated */
	int		 vals[8];
};

_Static_assert(sizeof(enum config_loglevel) == sizeof(int) &&
    sizeof(enum config_logfmt) == sizeof(int) &&
    sizeof(enum config_proto) == sizeof(int) &&
    sizeof(enum config_tls) == sizeof(int) &&
    sizeof(enum config_verify) == sizeof(int) &&
    sizeof(enum config_pp) == sizeof(int), "enum keys are stored as int");

static const struct enumdef en_bool = {
	"expected yes, no, true, false, on or off",
	{ "no", "yes", "false", "true", "off", "on" }, { 0, 1, 0, 1, 0, 1 }
};
static const struct enumdef en_loglevel = {
	"expected error, warn, info or debug",
	{ "error", "warn", "info", "debug" },
	{ CONFIG_LOG_ERROR, CONFIG_LOG_WARN, CONFIG_LOG_INFO, CONFIG_LOG_DEBUG }
};
static const struct enumdef en_logfmt = {
	"expected text or json",
	{ "text", "json" }, { CONFIG_LOG_TEXT, CONFIG_LOG_JSON }
};
static const struct enumdef en_proto = {
	"expected smtp, imap, pop3 or none",
	{ "smtp", "imap", "pop3", "none" },
	{ CONFIG_PROTO_SMTP, CONFIG_PROTO_IMAP, CONFIG_PROTO_POP3,
	    CONFIG_PROTO_NONE }
};
static const struct enumdef en_tls = {
	"expected implicit, starttls or none",
	{ "implicit", "starttls", "none" },
	{ CONFIG_TLS_IMPLICIT, CONFIG_TLS_STARTTLS, CONFIG_TLS_NONE }
};
static const struct enumdef en_verify = {
	"expected none, optional or required",
	{ "none", "optional", "required" },
	{ CONFIG_VERIFY_NONE, CONFIG_VERIFY_OPTIONAL, CONFIG_VERIFY_REQUIRED }
};
static const struct enumdef en_pp = {
	"expected none, v1 or v2",
	{ "none", "v1", "v2" }, { CONFIG_PP_NONE, CONFIG_PP_V1, CONFIG_PP_V2 }
};
static const struct enumdef en_alpn = {
	"expected strict or off",
	{ "off", "strict" }, { 0, 1 }
};

/* A limit per client: 0 means none. */
static const char *
parse_perclient(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t n;

	(void)p;
	if (parse_uint(v, MAXCONN_MAX, &n))
		return ("expected a number from 0 (no limit) to 1000000");
	*FIELD(obj, off, unsigned) = (unsigned)n;
	return (NULL);
}

static const char *
parse_enum(const struct enumdef *e, void *obj, size_t off, const char *v)
{
	int i;

	if ((i = keyword(v, e->words)) < 0)
		return (e->expected);
	*FIELD(obj, off, int) = e->vals[i];
	return (NULL);
}

#define ENUM_KEY(fn, def)						\
static const char *							\
fn(struct parser *p, void *obj, size_t off, const char *v)		\
{									\
									\
	(void)p;							\
	return (parse_enum(&(def), obj, off, v));			\
}
ENUM_KEY(parse_bool, en_bool)
ENUM_KEY(parse_loglevel, en_loglevel)
ENUM_KEY(parse_logfmt, en_logfmt)
ENUM_KEY(parse_proto, en_proto)
ENUM_KEY(parse_tls, en_tls)
ENUM_KEY(parse_verify, en_verify)
ENUM_KEY(parse_pp, en_pp)
ENUM_KEY(parse_alpn, en_alpn)
#undef ENUM_KEY

/* Any duration, zero included (shutdown_timeout = 0: do not wait). */
static const char *
parse_duration(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t ms;

	(void)p;
	if (config_parse_duration(v, &ms))
		return ("expected a duration such as 500ms, 30s, 10m or 1h");
	*FIELD(obj, off, uint64_t) = ms;
	return (NULL);
}

/* A timeout of zero would expire at once: it must be positive. */
static const char *
parse_timeout(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t ms;

	(void)p;
	if (config_parse_duration(v, &ms))
		return ("expected a duration such as 500ms, 30s, 10m or 1h");
	if (ms == 0)
		return ("must be more than zero");
	*FIELD(obj, off, uint64_t) = ms;
	return (NULL);
}

/* An address we listen on: TCP only, since listeners are uv_tcp_t. */
static const char *
parse_tcpaddr(struct parser *p, void *obj, size_t off, const char *v)
{
	struct config_addr a;
	const char *e;

	(void)p;
	if ((e = config_parse_addr(v, &a)) != NULL)
		return (e);
	if (a.ss.ss_family == AF_UNIX)
		return ("expected HOST:PORT or [V6]:PORT; unix sockets are "
		    "not supported here");
	*FIELD(obj, off, struct config_addr) = a;
	return (NULL);
}

static const char *
parse_metrics(struct parser *p, void *obj, size_t off, const char *v)
{
	const char *e;

	if ((e = parse_tcpaddr(p, obj, off, v)) != NULL)
		return (e);
	((struct config *)obj)->has_metrics = 1;
	return (NULL);
}

/* Letters, digits, '-' and '.': it goes into SMTP replies and EHLO. */
static int
valid_hostname(const char *v)
{
	size_t n = strlen(v);

	if (n == 0 || n > HOSTNAME_MAX_CHARS)
		return (0);
	return (strspn(v, "abcdefghijklmnopqrstuvwxyz"
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.") == n);
}

static const char *
parse_hostname(struct parser *p, void *obj, size_t off, const char *v)
{

	if (!valid_hostname(v))
		return ("expected a host name (letters, digits, '-' and '.')");
	return (parse_string(p, obj, off, v));
}

/* The backend's name for SNI and certificate checks: a host name or an IP. */
static const char *
parse_backend_name(struct parser *p, void *obj, size_t off, const char *v)
{
	unsigned char buf[16];

	if (!valid_hostname(v) && inet_pton(AF_INET6, v, buf) != 1)
		return ("expected a host name or an IP address");
	return (parse_string(p, obj, off, v));
}

static const char *
parse_accept_proxy(struct parser *p, void *obj, size_t off, const char *v)
{
	struct config_listener *l = obj;
	struct config_cidr *c;
	const char *item, *e;
	char buf[INI_MAX_LINE];
	size_t n, i;
	char *tok, *save, *end;

	(void)off;
	/* A comma-separated list; blanks around the commas are allowed. */
	if (strlen(v) >= sizeof(buf))
		return ("value too long");
	memcpy(buf, v, strlen(v) + 1);
	for (n = 1, item = v; (item = strchr(item, ',')) != NULL; item++)
		n++;
	if ((c = calloc(n, sizeof(*c))) == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	i = 0;
	for (tok = buf; tok != NULL; tok = save) {
		if ((save = strchr(tok, ',')) != NULL)
			*save++ = '\0';
		while (*tok == ' ' || *tok == '\t')
			tok++;
		end = tok + strlen(tok);
		while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
			*--end = '\0';
		if (*tok == '\0') {
			free(c);
			return ("empty entry in the list of networks");
		}
		if ((e = config_parse_cidr(tok, &c[i])) != NULL) {
			free(c);
			snprintf(p->msg, sizeof(p->msg), "%.60s: %s", tok, e);
			return (p->msg);
		}
		i++;
	}
	free(l->accept_proxy);
	l->accept_proxy = c;
	l->naccept_proxy = i;
	return (NULL);
}

/* "backend" may be repeated: each line adds a candidate source. */
static const char *
parse_backend(struct parser *p, void *obj, size_t off, const char *v)
{
	struct config_listener *l = obj;
	struct config_backend b, *nb;
	const char *e;
	size_t i;

	(void)off;
	b.line = p->lineno;
	if ((e = config_parse_backend(v, &b)) != NULL)
		return (e);
	for (i = 0; i < l->nbackends; i++) {
		if (strcmp(l->backends[i].addr.text, b.addr.text) != 0)
			continue;
		snprintf(p->msg, sizeof(p->msg), "given twice (first at line "
		    "%d)", l->backends[i].line);
		return (p->msg);
	}
	if (l->nbackends == BACKENDS_MAX)
		return ("too many backends (at most 16 per listener)");
	nb = reallocarray(l->backends, l->nbackends + 1, sizeof(*nb));
	if (nb == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	l->backends = nb;
	l->backends[l->nbackends++] = b;
	if (l->nbackends == 1)
		l->backend = b.addr;
	return (NULL);
}

static const char *
parse_balance(struct parser *p, void *obj, size_t off, const char *v)
{
	static const char *const words[] = { "failover", "roundrobin", NULL };
	static const enum config_balance vals[] = {
		CONFIG_BALANCE_FAILOVER, CONFIG_BALANCE_ROUNDROBIN
	};
	int i;

	(void)p;
	if ((i = keyword(v, words)) < 0)
		return ("expected failover or roundrobin");
	*FIELD(obj, off, enum config_balance) = vals[i];
	return (NULL);
}

/* Looking names up more often than once a second helps nobody. */
static const char *
parse_resolve(struct parser *p, void *obj, size_t off, const char *v)
{
	uint64_t ms;

	(void)p;
	if (config_parse_duration(v, &ms))
		return ("expected a duration such as 500ms, 30s, 10m or 1h");
	if (ms < MIN_RESOLVE_MS)
		return ("must be at least 1s");
	*FIELD(obj, off, uint64_t) = ms;
	return (NULL);
}

static const char *parse_cert(struct parser *, void *, size_t, const char *);
static const char *parse_key(struct parser *, void *, size_t, const char *);

#define G(f)	offsetof(struct config, f)
static const struct keydef gkeys[GK_COUNT] = {
	[GK_USER] = { "user", parse_string, G(user), 0 },
	[GK_WORKERS] = { "workers", parse_workers, G(workers), 0 },
	[GK_LOG_LEVEL] = { "log_level", parse_loglevel, G(log_level), 0 },
	[GK_LOG_FORMAT] = { "log_format", parse_logfmt, G(log_format), 0 },
	[GK_METRICS] = { "metrics", parse_metrics, G(metrics), 0 },
	[GK_SHUTDOWN_TIMEOUT] = { "shutdown_timeout", parse_duration,
	    G(shutdown_timeout_ms), 0 },
	[GK_TICKET_KEY_FILE] = { "ticket_key_file", parse_string,
	    G(ticket_key_file), 0 },
	[GK_BACKEND_CHECK] = { "backend_check", parse_bool, G(backend_check),
	    0 },
};
#undef G

#define L(f)	offsetof(struct config_listener, f)
static const struct keydef lkeys[LK_COUNT] = {
	[LK_LISTEN] = { "listen", parse_tcpaddr, L(listen), 0 },
	[LK_PROTOCOL] = { "protocol", parse_proto, L(protocol), 0 },
	[LK_CLIENT_TLS] = { "client_tls", parse_tls, L(client_tls), 0 },
	[LK_REQUIRE_TLS] = { "require_tls", parse_bool, L(require_tls), 0 },
	[LK_BACKEND] = { "backend", parse_backend, 0, 1 },
	[LK_BACKEND_TLS] = { "backend_tls", parse_tls, L(backend_tls), 0 },
	[LK_BACKEND_VERIFY] = { "backend_verify", parse_bool,
	    L(backend_verify), 0 },
	[LK_BACKEND_CA] = { "backend_ca", parse_string, L(backend_ca), 0 },
	[LK_BACKEND_NAME] = { "backend_name", parse_backend_name,
	    L(backend_name), 0 },
	[LK_CERT] = { "cert", parse_cert, 0, 1 },
	[LK_KEY] = { "key", parse_key, 0, 1 },
	[LK_CLIENT_CA] = { "client_ca", parse_string, L(client_ca), 0 },
	[LK_CLIENT_VERIFY] = { "client_verify", parse_verify,
	    L(client_verify), 0 },
	[LK_TLS_PRIORITY] = { "tls_priority", parse_string,
	    L(tls_priority), 0 },
	[LK_ALPN] = { "alpn", parse_alpn, L(alpn_strict), 0 },
	[LK_PROXY_PROTOCOL] = { "proxy_protocol", parse_pp,
	    L(proxy_protocol), 0 },
	[LK_ACCEPT_PROXY] = { "accept_proxy", parse_accept_proxy, 0, 0 },
	[LK_HOSTNAME] = { "hostname", parse_hostname, L(hostname), 0 },
	[LK_CONNECT_TIMEOUT] = { "connect_timeout", parse_timeout,
	    L(connect_timeout_ms), 0 },
	[LK_HANDSHAKE_TIMEOUT] = { "handshake_timeout", parse_timeout,
	    L(handshake_timeout_ms), 0 },
	[LK_IDLE_TIMEOUT] = { "idle_timeout", parse_timeout,
	    L(idle_timeout_ms), 0 },
	[LK_MAX_CONNECTIONS] = { "max_connections", parse_maxconn,
	    L(max_connections), 0 },
	[LK_MAX_PER_CLIENT] = { "max_per_client", parse_perclient,
	    L(max_per_client), 0 },
	[LK_RATE_PER_CLIENT] = { "rate_per_client", parse_perclient,
	    L(rate_per_client), 0 },
	[LK_PLAINTEXT_TIMEOUT] = { "plaintext_timeout", parse_timeout,
	    L(plaintext_timeout_ms), 0 },
	[LK_BACKEND_BALANCE] = { "backend_balance", parse_balance,
	    L(backend_balance), 0 },
	[LK_BACKEND_RESOLVE] = { "backend_resolve", parse_resolve,
	    L(backend_resolve_ms), 0 },
};
#undef L

static int
lookup(const struct keydef *keys, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (strcmp(keys[i].name, name) == 0)
			return (i);
	return (-1);
}

/* Report the last cert of ${l} if it still waits for its key. */
static void
check_orphan(struct parser *p, struct config_listener *l, struct lstate *ls)
{
	struct config_certpair *cp;

	if (!ls->pending)
		return;
	cp = &l->certs[l->ncerts - 1];
	perr(p, cp->line, "cert \"%s\" has no key (each cert must be "
	    "followed by its key)", cp->cert);
	ls->pending = 0;
}

/*
 * "cert" starts a new pair; the "key" that follows completes it.  The pair
 * errors are complete messages, written here; a NULL return means handled.
 */
static const char *
parse_cert(struct parser *p, void *obj, size_t off, const char *v)
{
	struct config_listener *l = obj;
	struct lstate *ls = &p->ls[p->cur];
	struct config_certpair *cp;
	int isauto = strcmp(v, "auto") == 0;

	(void)off;
	check_orphan(p, l, ls);
	ls->skip_key = 0;
	if (isauto && ls->auto_line) {
		perr(p, p->lineno, "cert = auto given twice (first at line %d)",
		    ls->auto_line);
		return (NULL);
	}
	cp = reallocarray(l->certs, l->ncerts + 1, sizeof(*cp));
	if (cp == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	l->certs = cp;
	cp = &l->certs[l->ncerts];
	memset(cp, 0, sizeof(*cp));
	if ((cp->cert = strdup(v)) == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	cp->line = p->lineno;
	l->ncerts++;
	if (isauto)
		ls->auto_line = p->lineno;
	else
		ls->pending = 1;
	return (NULL);
}

static const char *
parse_key(struct parser *p, void *obj, size_t off, const char *v)
{
	struct config_listener *l = obj;
	struct lstate *ls = &p->ls[p->cur];
	struct config_certpair *cp;

	(void)off;
	if (!ls->pending && ls->skip_key) {
		ls->skip_key = 0;
		return (NULL);
	}
	if (!ls->pending) {
		cp = l->ncerts ? &l->certs[l->ncerts - 1] : NULL;
		if (cp != NULL && cp->key == NULL)
			perr(p, p->lineno, "key after \"cert = auto\" "
			    "(line %d), which takes no key", cp->line);
		else
			perr(p, p->lineno, "key without a preceding cert");
		return (NULL);
	}
	cp = &l->certs[l->ncerts - 1];
	if ((cp->key = strdup(v)) == NULL) {
		p->enomem = 1;
		return (NULL);
	}
	ls->pending = 0;
	return (NULL);
}

/*
 * The inih handler: one "key = value" line of the current section.  inih's
 * ${section} is ignored; the reader tracks sections itself.  Errors are
 * recorded and parsing goes on, so this always returns 1.
 */
static int
handler(void *user, const char *section, const char *name, const char *value)
{
	struct parser *p = user;
	const struct keydef *keys, *kd;
	void *obj;
	const char *e;
	int *keyline, *keybad;
	int n, k, line = p->lineno;
	size_t vlen = strlen(value);

	(void)section;
	if (*name == '\0') {
		perr(p, line, "missing key name");
		return (1);
	}
	switch (p->sec) {
	case SEC_NONE:
		perr(p, line, "key \"%s\" outside of any section", name);
		return (1);
	case SEC_SKIP:
		return (1);
	case SEC_GLOBAL:
		keys = gkeys;
		n = GK_COUNT;
		obj = p->cfg;
		keyline = p->gkeyline;
		keybad = p->gkeybad;
		break;
	case SEC_LISTENER:
	default:
		keys = lkeys;
		n = LK_COUNT;
		obj = &p->cfg->listeners[p->cur];
		keyline = p->ls[p->cur].keyline;
		keybad = p->ls[p->cur].keybad;
		break;
	}

	if ((k = lookup(keys, n, name)) < 0) {
		/* Say where a key of the other kind of section belongs. */
		if (p->sec == SEC_GLOBAL && lookup(lkeys, LK_COUNT, name) >= 0)
			perr(p, line, "key \"%s\" belongs in a listener "
			    "section, not [global]", name);
		else if (p->sec == SEC_LISTENER &&
		    lookup(gkeys, GK_COUNT, name) >= 0)
			perr(p, line, "key \"%s\" belongs in [global]", name);
		else
			perr(p, line, "unknown key \"%s\"", name);
		return (1);
	}
	kd = &keys[k];
	if (keyline[k] && !kd->repeat) {
		perr(p, line, "duplicate key \"%s\" (first at line %d)", name,
		    keyline[k]);
		return (1);
	}
	keyline[k] = line;
	if (vlen == 0) {
		perr(p, line, "%s: empty value", name);
		goto bad;
	}
	/* Quotes are not syntax here; a quoted path would never be found. */
	if (vlen >= 2 && (value[0] == '"' || value[0] == '\'') &&
	    value[vlen - 1] == value[0]) {
		perr(p, line, "%s: values are not quoted; remove the quotes",
		    name);
		goto bad;
	}
	if ((e = kd->parse(p, obj, kd->off, value)) != NULL) {
		perr(p, line, "%s: invalid value \"%s\": %s", name, value, e);
		goto bad;
	}
	return (1);

bad:
	keybad[k] = 1;
	/*
	 * A rejected cert or key still takes its place in the pairing, so
	 * that its partner is not reported as well.
	 */
	if (p->sec == SEC_LISTENER && k == LK_CERT) {
		check_orphan(p, obj, &p->ls[p->cur]);
		p->ls[p->cur].skip_key = 1;
	} else if (p->sec == SEC_LISTENER && k == LK_KEY) {
		p->ls[p->cur].pending = 0;
		p->ls[p->cur].skip_key = 0;
	}
	return (1);
}

/* Start listener section ${name} at the current line. */
static int
add_listener(struct parser *p, const char *name)
{
	struct config *cfg = p->cfg;
	struct config_listener *l;
	struct lstate *ls;

	if (cfg->nlisteners == p->lcap) {
		size_t ncap = p->lcap ? p->lcap * 2 : 4;

		l = reallocarray(cfg->listeners, ncap, sizeof(*l));
		if (l == NULL)
			return (-1);
		cfg->listeners = l;
		if ((ls = reallocarray(p->ls, ncap, sizeof(*ls))) == NULL)
			return (-1);
		p->ls = ls;
		p->lcap = ncap;
	}
	l = &cfg->listeners[cfg->nlisteners];
	ls = &p->ls[cfg->nlisteners];
	memset(l, 0, sizeof(*l));
	memset(ls, 0, sizeof(*ls));
	if ((l->name = strdup(name)) == NULL)
		return (-1);
	l->line = p->lineno;
	l->protocol = CONFIG_PROTO_NONE;
	l->client_tls = CONFIG_TLS_IMPLICIT;
	l->require_tls = 1;
	l->backend_tls = CONFIG_TLS_NONE;
	l->backend_verify = 1;
	l->client_verify = CONFIG_VERIFY_NONE;
	l->alpn_strict = 1;
	l->proxy_protocol = CONFIG_PP_NONE;
	l->connect_timeout_ms = DEFAULT_CONNECT_MS;
	l->handshake_timeout_ms = DEFAULT_HANDSHAKE_MS;
	l->idle_timeout_ms = DEFAULT_IDLE_MS;
	l->max_connections = DEFAULT_MAXCONN;
	l->plaintext_timeout_ms = DEFAULT_PLAINTEXT_MS;
	l->backend_balance = CONFIG_BALANCE_FAILOVER;
	l->backend_resolve_ms = DEFAULT_RESOLVE_MS;
	p->cur = cfg->nlisteners++;
	return (0);
}

/* Handle the section title "[...]" in ${s}; return what inih should see. */
static const char *
section_line(struct parser *p, char *s)
{
	char *rb, *name;
	size_t i, n;

	p->sec = SEC_SKIP;
	if ((rb = strchr(s, ']')) == NULL) {
		perr(p, p->lineno, "missing ']' in section title");
		return ("");
	}
	if (rb[1] != '\0') {
		perr(p, p->lineno, "unexpected text after section title");
		return ("");
	}
	*rb = '\0';
	name = s + 1;
	n = strlen(name);
	if (n == 0) {
		perr(p, p->lineno, "empty section title");
		return ("");
	}
	if (n > SECTION_MAX_CHARS) {
		perr(p, p->lineno, "section title too long (more than %d "
		    "characters)", SECTION_MAX_CHARS);
		return ("");
	}
	/* Listener names go into logs and metrics labels unquoted. */
	if (strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789-_.") != n) {
		perr(p, p->lineno, "invalid section title [%s]: use letters, "
		    "digits, '-', '_' and '.'", name);
		return ("");
	}
	if (strcmp(name, "global") == 0) {
		if (p->global_line) {
			perr(p, p->lineno, "duplicate section [global] (first "
			    "at line %d)", p->global_line);
			return ("");
		}
		p->global_line = p->lineno;
		p->sec = SEC_GLOBAL;
	} else {
		for (i = 0; i < p->cfg->nlisteners; i++) {
			if (strcmp(p->cfg->listeners[i].name, name) != 0)
				continue;
			perr(p, p->lineno, "duplicate section [%s] (first at "
			    "line %d)", name, p->cfg->listeners[i].line);
			return ("");
		}
		if (add_listener(p, name)) {
			p->enomem = 1;
			return ("");
		}
		p->sec = SEC_LISTENER;
	}
	*rb = ']';
	return (s);
}

/*
 * The inih reader: hand inih the next line of the file, cleaned as the
 * comment at the top of this file says, in ${str} (${num} bytes).
 */
static char *
reader(char *str, int num, void *stream)
{
	struct parser *p = stream;
	const char *out;
	ssize_t len;
	char *s, *c;
	int limit;

	if (p->enomem)
		return (NULL);
	errno = 0;
	if ((len = getline(&p->buf, &p->bufsz, p->f)) < 0) {
		if (ferror(p->f))
			p->read_errno = errno ? errno : EIO;
		return (NULL);
	}
	p->lineno++;
	s = p->buf;
	if (len > 0 && s[len - 1] == '\n')
		s[--len] = '\0';
	if (len > 0 && s[len - 1] == '\r')
		s[--len] = '\0';
	if (memchr(s, '\0', (size_t)len) != NULL) {
		perr(p, p->lineno, "NUL byte in line");
		out = "";
		goto done;
	}
	/* A UTF-8 byte order mark, as inih would strip it. */
	if (p->lineno == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;
	/* Leading blanks are indentation, never a continuation. */
	while (*s == ' ' || *s == '\t')
		s++;
	/* Comments: whole lines, and '#' or ';' after a blank. */
	if (*s == '#' || *s == ';')
		*s = '\0';
	for (c = s; *c != '\0'; c++) {
		if ((*c == '#' || *c == ';') && c > s &&
		    (c[-1] == ' ' || c[-1] == '\t')) {
			*c = '\0';
			break;
		}
	}
	for (c = s + strlen(s); c > s && isspace((unsigned char)c[-1]); )
		*--c = '\0';

	/*
	 * inih would split a longer line in two.  We read whole lines, so
	 * only what is left for inih counts: long comments are fine.
	 */
	limit = num - 1 < LINE_MAX_CHARS ? num - 1 : LINE_MAX_CHARS;
	if (strlen(s) > (size_t)limit) {
		perr(p, p->lineno, "line too long (more than %d characters, "
		    "comments aside)", limit);
		out = "";
	} else if (*s == '\0')
		out = "";
	else if (*s == '[')
		out = section_line(p, s);
	else if (strpbrk(s, "=:") == NULL) {
		perr(p, p->lineno, "expected \"key = value\", \"key: value\" "
		    "or \"[section]\"");
		out = "";
	} else
		out = s;
done:
	/* Checked above: out is never longer than num - 1. */
	memcpy(str, out, strlen(out) + 1);
	return (str);
}

/* 1 if binding both ${a} and ${b} would clash. */
static int
addr_clash(const struct config_addr *a, const struct config_addr *b, int *same)
{
	*same = 0;
	if (a->ss.ss_family != b->ss.ss_family)
		return (0);
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->ss;
		const struct sockaddr_in *y = (const void *)&b->ss;

		if (x->sin_port != y->sin_port)
			return (0);
		*same = x->sin_addr.s_addr == y->sin_addr.s_addr;
		return (*same || x->sin_addr.s_addr == htonl(INADDR_ANY) ||
		    y->sin_addr.s_addr == htonl(INADDR_ANY));
	}
	if (a->ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)&a->ss;
		const struct sockaddr_in6 *y = (const void *)&b->ss;

		if (x->sin6_port != y->sin6_port)
			return (0);
		*same = IN6_ARE_ADDR_EQUAL(&x->sin6_addr, &y->sin6_addr);
		return (*same || IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) ||
		    IN6_IS_ADDR_UNSPECIFIED(&y->sin6_addr));
	}
	return (0);
}

static const enum lkey required[] = { LK_LISTEN, LK_PROTOCOL, LK_BACKEND };

/* Check listener ${i} once its section is complete; fill in defaults. */
static void
check_listener(struct parser *p, size_t i)
{
	struct config_listener *l = &p->cfg->listeners[i];
	struct lstate *ls = &p->ls[i];
	const struct config_addr *prev;
	char host[256];
	size_t j, r;
	int same;

	check_orphan(p, l, ls);

	for (r = 0; r < sizeof(required) / sizeof(required[0]); r++)
		if (!ls->keyline[required[r]])
			perr(p, l->line, "[%s]: missing required key \"%s\"",
			    l->name, lkeys[required[r]].name);
	if (!ls->keybad[LK_CLIENT_TLS] && l->client_tls != CONFIG_TLS_NONE &&
	    l->ncerts == 0 && !ls->keyline[LK_CERT])
		perr(p, l->line, "[%s]: no cert (at least one is required "
		    "unless client_tls = none)", l->name);

	/* Combinations, checked only between values that parsed. */
#define OK(k)	(ls->keyline[k] && !ls->keybad[k])
	if (OK(LK_PROTOCOL) && l->protocol == CONFIG_PROTO_NONE) {
		if (OK(LK_CLIENT_TLS) && l->client_tls == CONFIG_TLS_STARTTLS)
			perr(p, ls->keyline[LK_CLIENT_TLS], "client_tls = "
			    "starttls needs a protocol (smtp, imap or pop3), "
			    "not protocol = none");
		if (OK(LK_BACKEND_TLS) && l->backend_tls == CONFIG_TLS_STARTTLS)
			perr(p, ls->keyline[LK_BACKEND_TLS], "backend_tls = "
			    "starttls needs a protocol (smtp, imap or pop3), "
			    "not protocol = none");
	}
	if (OK(LK_CLIENT_TLS) && l->client_tls == CONFIG_TLS_NONE &&
	    !ls->keybad[LK_BACKEND_TLS] && l->backend_tls == CONFIG_TLS_NONE)
		perr(p, ls->keyline[LK_CLIENT_TLS], "client_tls = none with "
		    "backend_tls = none: the listener would use no TLS at all");
	if (OK(LK_CLIENT_VERIFY) && l->client_verify != CONFIG_VERIFY_NONE &&
	    !ls->keyline[LK_CLIENT_CA])
		perr(p, ls->keyline[LK_CLIENT_VERIFY], "client_verify = %s "
		    "needs client_ca", l->client_verify ==
		    CONFIG_VERIFY_REQUIRED ? "required" : "optional");
	/* With a unix backend there is no host name to check the cert for. */
	for (j = 0; j < l->nbackends; j++)
		if (l->backends[j].addr.ss.ss_family == AF_UNIX &&
		    !ls->keybad[LK_BACKEND_TLS] &&
		    l->backend_tls != CONFIG_TLS_NONE &&
		    !ls->keybad[LK_BACKEND_VERIFY] && l->backend_verify &&
		    !ls->keyline[LK_BACKEND_NAME])
			perr(p, l->backends[j].line, "a unix: backend with "
			    "backend_tls and backend_verify needs backend_name");

	if (OK(LK_LISTEN)) {
		for (j = 0; j < i; j++) {
			if (!(p->ls[j].keyline[LK_LISTEN] &&
			    !p->ls[j].keybad[LK_LISTEN]))
				continue;
			prev = &p->cfg->listeners[j].listen;
			if (!addr_clash(&l->listen, prev, &same))
				continue;
			if (same)
				perr(p, ls->keyline[LK_LISTEN], "listen "
				    "address %s already used by [%s] (line %d)",
				    l->listen.text, p->cfg->listeners[j].name,
				    p->ls[j].keyline[LK_LISTEN]);
			else
				perr(p, ls->keyline[LK_LISTEN], "listen "
				    "address %s overlaps %s of [%s] (line %d)",
				    l->listen.text, prev->text,
				    p->cfg->listeners[j].name,
				    p->ls[j].keyline[LK_LISTEN]);
			break;
		}
		if (p->cfg->has_metrics &&
		    addr_clash(&l->listen, &p->cfg->metrics, &same))
			perr(p, ls->keyline[LK_LISTEN], "listen address %s "
			    "clashes with metrics = %s (line %d)",
			    l->listen.text, p->cfg->metrics.text,
			    p->gkeyline[GK_METRICS]);
	}
#undef OK

	if (l->tls_priority == NULL &&
	    (l->tls_priority = strdup(CONFIG_DEFAULT_PRIORITY)) == NULL)
		p->enomem = 1;
	if (l->hostname == NULL) {
		/* No name (or an unusable one) means "localhost". */
		if (gethostname(host, sizeof(host)) != 0)
			host[0] = '\0';
		host[sizeof(host) - 1] = '\0';
		if (!valid_hostname(host))
			strcpy(host, "localhost");
		if ((l->hostname = strdup(host)) == NULL)
			p->enomem = 1;
	}
}

/**
 * config_load(path, errf):
 * Read and validate the configuration file ${path}.  Every problem found is
 * written to ${errf} as one "FILE:LINE: message" line (all of them, not only
 * the first).  Return a new configuration owned by the caller (free it with
 * config_free), or NULL if there was any problem.
 */
struct config *
config_load(const char *path, FILE *errf)
{
	struct parser p;
	struct config *cfg;
	size_t i;
	int rc;

	memset(&p, 0, sizeof(p));
	p.path = path;
	if ((p.f = fopen(path, "r")) == NULL) {
		fprintf(errf, "%s:0: cannot open: %s\n", path, strerror(errno));
		return (NULL);
	}
	if ((cfg = calloc(1, sizeof(*cfg))) == NULL ||
	    (cfg->path = strdup(path)) == NULL)
		goto nomem;
	p.cfg = cfg;
	cfg->log_level = CONFIG_LOG_INFO;
	cfg->log_format = CONFIG_LOG_TEXT;
	cfg->shutdown_timeout_ms = DEFAULT_SHUTDOWN_MS;
	cfg->backend_check = 1;

	rc = ini_parse_stream(reader, &p, handler, &p);
	if (p.enomem || rc == -2)
		goto nomem;
	if (p.read_errno) {
		perr(&p, 0, "cannot read: %s", strerror(p.read_errno));
		goto out;
	}
	/* The reader lets no malformed line through; this is a safety net. */
	if (rc > 0 && p.nerrs == 0)
		perr(&p, rc, "syntax error");

	for (i = 0; i < cfg->nlisteners; i++)
		check_listener(&p, i);
	if (cfg->nlisteners == 0)
		perr(&p, p.lineno > 0 ? p.lineno : 1, "no listener defined");
	if (p.enomem)
		goto nomem;

out:
	if (p.nerrs > 0)
		qsort(p.errs, p.nerrs, sizeof(p.errs[0]), errcmp);
	for (i = 0; i < p.nerrs; i++) {
		fprintf(errf, "%s:%d: %s\n", path, p.errs[i].line,
		    p.errs[i].msg);
		free(p.errs[i].msg);
	}
	if (p.nerrs) {
		config_free(cfg);
		cfg = NULL;
	}
	free(p.errs);
	free(p.ls);
	free(p.buf);
	fclose(p.f);
	return (cfg);

nomem:
	/* Other errors may be consequences of the failure: report only it. */
	for (i = 0; i < p.nerrs; i++)
		free(p.errs[i].msg);
	free(p.errs);
	free(p.ls);
	free(p.buf);
	fclose(p.f);
	config_free(cfg);
	fprintf(errf, "%s:0: out of memory\n", path);
	return (NULL);
}

/**
 * config_free(cfg):
 * Free ${cfg}; NULL is a no-op.
 */
void
config_free(struct config *cfg)
{
	struct config_listener *l;
	size_t i, j;

	if (cfg == NULL)
		return;
	for (i = 0; i < cfg->nlisteners; i++) {
		l = &cfg->listeners[i];
		free(l->name);
		free(l->backends);
		free(l->backend_ca);
		free(l->backend_name);
		for (j = 0; j < l->ncerts; j++) {
			free(l->certs[j].cert);
			free(l->certs[j].key);
		}
		free(l->certs);
		free(l->client_ca);
		free(l->tls_priority);
		free(l->accept_proxy);
		free(l->hostname);
	}
	free(cfg->listeners);
	free(cfg->path);
	free(cfg->user);
	free(cfg->ticket_key_file);
	free(cfg);
}

/**
 * config_sockaddr_text(sa, buf, len):
 * Write the socket address ${sa} to ${buf} (at most ${len} bytes) as logs
 * and metrics show addresses.
 */
void
config_sockaddr_text(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(in6->sin6_port));
	} else if (sa->sa_family == AF_UNIX &&
	    ((const struct sockaddr_un *)(const void *)sa)->sun_path[0] != '\0')
		snprintf(buf, len, "unix:%s",
		    ((const struct sockaddr_un *)(const void *)sa)->sun_path);
	else
		snprintf(buf, len, "local");
}
