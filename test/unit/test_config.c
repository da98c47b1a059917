/*
 * Unit tests for config: every key with good and bad values, the exact
 * "FILE:LINE: message" of each kind of error, and the helpers.
 *
 * Each test writes its configuration to a temporary file; errors are
 * captured with open_memstream() and the temporary path is replaced by "F"
 * so that expected output can be written out literally.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

/* A complete, valid listener, six lines long. */
#define LISTENER(name, port)						\
	"[" name "]\n"							\
	"listen = 127.0.0.1:" port "\n"					\
	"protocol = smtp\n"						\
	"backend = 127.0.0.1:25\n"					\
	"cert = /etc/c.pem\n"						\
	"key = /etc/k.pem\n"

static char *
write_tmp(const char *text)
{
	char *path;
	size_t len = strlen(text);
	int fd;

	path = strdup("/tmp/test_config.XXXXXX");
	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	return (path);
}

/* Replace every ${path} in ${s} by "F"; return a new string. */
static char *
replace_path(const char *s, const char *path)
{
	size_t plen = strlen(path);
	char *out, *o;
	const char *hit;

	out = malloc(strlen(s) + 1);
	assert_non_null(out);
	for (o = out; (hit = strstr(s, path)) != NULL; s = hit + plen) {
		memcpy(o, s, (size_t)(hit - s));
		o += hit - s;
		*o++ = 'F';
	}
	strcpy(o, s);
	return (out);
}

/* Load ${text}; store the error output (with the path as "F") in ${errs}. */
static struct config *
load(const char *text, char **errs)
{
	struct config *cfg;
	char *path, *buf = NULL;
	size_t len = 0;
	FILE *f;

	path = write_tmp(text);
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	cfg = config_load(path, f);
	assert_int_equal(fclose(f), 0);
	*errs = replace_path(buf, path);
	free(buf);
	unlink(path);
	free(path);
	return (cfg);
}

/* Load ${text}, which must be valid. */
static struct config *
load_ok(const char *text)
{
	struct config *cfg;
	char *errs;

	cfg = load(text, &errs);
	assert_string_equal(errs, "");
	free(errs);
	assert_non_null(cfg);
	return (cfg);
}

/* Load ${text}, which must fail with exactly ${expected} as output. */
static void
load_fails(const char *text, const char *expected)
{
	struct config *cfg;
	char *errs;

	cfg = load(text, &errs);
	assert_string_equal(errs, expected);
	free(errs);
	assert_null(cfg);
}

static uint16_t
port_of(const struct config_addr *a)
{

	if (a->ss.ss_family == AF_INET)
		return (ntohs(((const struct sockaddr_in *)&a->ss)->sin_port));
	return (ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port));
}

static void
test_spec_example(void **state)
{
	static const char text[] =
	    "[global]\n"
	    "user = mailtlsd                ; drop to this user\n"
	    "workers = auto                 ; event-loop threads\n"
	    "log_level = info               ; error | warn | info | debug\n"
	    "log_format = text              ; text | json\n"
	    "metrics = 127.0.0.1:9465       ; optional\n"
	    "shutdown_timeout = 30s\n"
	    "ticket_key_file = /etc/mailtlsd/ticket.key   ; optional: "
	    "session-ticket key shared by replicas (openssl rand -base64 64)\n"
	    "\n"
	    "[submissions]\n"
	    "listen = 0.0.0.0:465           ; HOST:PORT, [V6]:PORT\n"
	    "protocol = smtp                ; smtp | imap | pop3 | none\n"
	    "client_tls = implicit          ; implicit | starttls | none\n"
	    "require_tls = yes              ; starttls listeners\n"
	    "backend = 127.0.0.1:587        ; HOST:PORT or unix:/path\n"
	    "backend_tls = none             ; none | starttls | implicit\n"
	    "backend_verify = yes           ; check the backend's cert\n"
	    "backend_ca = /etc/ssl/certs/ca-certificates.crt\n"
	    "backend_name = mail.internal   ; SNI sent to the backend\n"
	    "cert = /etc/mailtlsd/example.crt   ; repeatable\n"
	    "key  = /etc/mailtlsd/example.key   ; chosen by SNI\n"
	    "; cert = auto                  ; a throw-away certificate\n"
	    "client_ca = /etc/mailtlsd/clients-ca.crt   ; optional\n"
	    "client_verify = none           ; none | optional | required\n"
	    "tls_priority = NORMAL:-VERS-ALL:+VERS-TLS1.3\n"
	    "alpn = strict                  ; strict | off (see below)\n"
	    "proxy_protocol = none          ; none | v1 | v2\n"
	    "accept_proxy = 10.0.0.0/8      ; optional\n"
	    "hostname = mail.example.com    ; used in replies\n"
	    "connect_timeout = 5s\n"
	    "handshake_timeout = 10s        ; TLS handshake\n"
	    "idle_timeout = 10m\n"
	    "max_connections = 10000\n";
	struct config *cfg;
	struct config_listener *l;

	(void)state;
	cfg = load_ok(text);
	assert_string_equal(cfg->user, "mailtlsd");
	assert_int_equal(cfg->workers, 0);
	assert_int_equal(cfg->log_level, CONFIG_LOG_INFO);
	assert_int_equal(cfg->log_format, CONFIG_LOG_TEXT);
	assert_int_equal(cfg->has_metrics, 1);
	assert_string_equal(cfg->metrics.text, "127.0.0.1:9465");
	assert_int_equal(port_of(&cfg->metrics), 9465);
	assert_int_equal(cfg->shutdown_timeout_ms, 30000);
	assert_string_equal(cfg->ticket_key_file, "/etc/mailtlsd/ticket.key");
	assert_int_equal(cfg->nlisteners, 1);
	l = &cfg->listeners[0];
	assert_string_equal(l->name, "submissions");
	assert_int_equal(l->line, 10);
	assert_string_equal(l->listen.text, "0.0.0.0:465");
	assert_string_equal(l->listen.host, "0.0.0.0");
	assert_int_equal(port_of(&l->listen), 465);
	assert_int_equal(l->protocol, CONFIG_PROTO_SMTP);
	assert_int_equal(l->client_tls, CONFIG_TLS_IMPLICIT);
	assert_int_equal(l->require_tls, 1);
	assert_string_equal(l->backend.text, "127.0.0.1:587");
	assert_int_equal(l->backend_tls, CONFIG_TLS_NONE);
	assert_int_equal(l->backend_verify, 1);
	assert_string_equal(l->backend_ca,
	    "/etc/ssl/certs/ca-certificates.crt");
	assert_string_equal(l->backend_name, "mail.internal");
	assert_int_equal(l->ncerts, 1);
	assert_string_equal(l->certs[0].cert, "/etc/mailtlsd/example.crt");
	assert_string_equal(l->certs[0].key, "/etc/mailtlsd/example.key");
	assert_int_equal(l->certs[0].line, 20);
	assert_string_equal(l->client_ca, "/etc/mailtlsd/clients-ca.crt");
	assert_int_equal(l->client_verify, CONFIG_VERIFY_NONE);
	assert_string_equal(l->tls_priority, "NORMAL:-VERS-ALL:+VERS-TLS1.3");
	assert_int_equal(l->alpn_strict, 1);
	assert_int_equal(l->proxy_protocol, CONFIG_PP_NONE);
	assert_int_equal(l->naccept_proxy, 1);
	assert_int_equal(l->accept_proxy[0].family, AF_INET);
	assert_int_equal(l->accept_proxy[0].prefix, 8);
	assert_string_equal(l->hostname, "mail.example.com");
	assert_int_equal(l->connect_timeout_ms, 5000);
	assert_int_equal(l->handshake_timeout_ms, 10000);
	assert_int_equal(l->idle_timeout_ms, 600000);
	assert_int_equal(l->max_connections, 10000);
	config_free(cfg);
}

static void
test_defaults(void **state)
{
	struct config *cfg;
	struct config_listener *l;
	char host[256];

	(void)state;
	cfg = load_ok(LISTENER("a", "10465"));
	assert_null(cfg->user);
	assert_int_equal(cfg->workers, 0);
	assert_int_equal(cfg->log_level, CONFIG_LOG_INFO);
	assert_int_equal(cfg->log_format, CONFIG_LOG_TEXT);
	assert_int_equal(cfg->has_metrics, 0);
	assert_int_equal(cfg->shutdown_timeout_ms, 30000);
	assert_null(cfg->ticket_key_file);
	assert_non_null(cfg->path);
	l = &cfg->listeners[0];
	assert_int_equal(l->line, 1);
	assert_int_equal(l->client_tls, CONFIG_TLS_IMPLICIT);
	assert_int_equal(l->require_tls, 1);
	assert_int_equal(l->backend_tls, CONFIG_TLS_NONE);
	assert_int_equal(l->backend_verify, 1);
	assert_null(l->backend_ca);
	assert_null(l->backend_name);
	assert_null(l->client_ca);
	assert_int_equal(l->client_verify, CONFIG_VERIFY_NONE);
	assert_string_equal(l->tls_priority, CONFIG_DEFAULT_PRIORITY);
	assert_int_equal(l->alpn_strict, 1);
	assert_int_equal(l->proxy_protocol, CONFIG_PP_NONE);
	assert_int_equal(l->naccept_proxy, 0);
	assert_null(l->accept_proxy);
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[sizeof(host) - 1] = '\0';
	assert_string_equal(l->hostname, host);
	assert_int_equal(l->connect_timeout_ms, 5000);
	assert_int_equal(l->handshake_timeout_ms, 10000);
	assert_int_equal(l->idle_timeout_ms, 600000);
	assert_int_equal(l->max_connections, 10000);
	config_free(cfg);
}

static void
test_global_good(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok("[global]\n"
	    "user: nobody\n"
	    "workers: 256\n"
	    "log_level = debug\n"
	    "log_format = JSON\n"
	    "metrics = [::1]:9465\n"
	    "shutdown_timeout = 0\n"
	    LISTENER("a", "10465"));
	assert_string_equal(cfg->user, "nobody");
	assert_int_equal(cfg->workers, 256);
	assert_int_equal(cfg->log_level, CONFIG_LOG_DEBUG);
	assert_int_equal(cfg->log_format, CONFIG_LOG_JSON);
	assert_int_equal(cfg->has_metrics, 1);
	assert_int_equal(cfg->metrics.ss.ss_family, AF_INET6);
	assert_string_equal(cfg->metrics.host, "::1");
	assert_int_equal(cfg->shutdown_timeout_ms, 0);
	config_free(cfg);

	cfg = load_ok("[global]\nworkers = 1\nlog_level = error\n"
	    "log_format = text\n" LISTENER("a", "10465"));
	assert_int_equal(cfg->workers, 1);
	assert_int_equal(cfg->log_level, CONFIG_LOG_ERROR);
	config_free(cfg);
	cfg = load_ok("[global]\nlog_level = warn\n" LISTENER("a", "10465"));
	assert_int_equal(cfg->log_level, CONFIG_LOG_WARN);
	config_free(cfg);
}

static void
test_global_bad(void **state)
{

	(void)state;
	load_fails("[global]\n"
	    "workers = 0\n"
	    "log_level = loud\n"
	    "log_format = xml\n"
	    "metrics = unix:/run/m.sock\n"
	    "shutdown_timeout = 5x\n"
	    "user =\n"
	    "ticket_key_file = \"/etc/t.key\"\n"
	    LISTENER("a", "10465"),
	    "F:2: workers: invalid value \"0\": expected auto or a number "
	    "from 1 to 256\n"
	    "F:3: log_level: invalid value \"loud\": expected error, warn, "
	    "info or debug\n"
	    "F:4: log_format: invalid value \"xml\": expected text or json\n"
	    "F:5: metrics: invalid value \"unix:/run/m.sock\": expected "
	    "HOST:PORT or [V6]:PORT; unix sockets are not supported here\n"
	    "F:6: shutdown_timeout: invalid value \"5x\": expected a duration "
	    "such as 500ms, 30s, 10m or 1h\n"
	    "F:7: user: empty value\n"
	    "F:8: ticket_key_file: values are not quoted; remove the quotes\n");
	load_fails("[global]\nworkers = 257\nworkers = -1\n"
	    LISTENER("a", "10465"),
	    "F:2: workers: invalid value \"257\": expected auto or a number "
	    "from 1 to 256\n"
	    "F:3: duplicate key \"workers\" (first at line 2)\n");
	load_fails("[global]\nworkers = 4 threads\n" LISTENER("a", "10465"),
	    "F:2: workers: invalid value \"4 threads\": expected auto or a "
	    "number from 1 to 256\n");
}

static void
test_listener_good(void **state)
{
	struct config *cfg;
	struct config_listener *l;

	(void)state;
	cfg = load_ok("[imap]\n"
	    "listen = [::]:10143\n"
	    "protocol = imap\n"
	    "client_tls = starttls\n"
	    "require_tls = off\n"
	    "backend = unix:/run/dovecot/imap.sock\n"
	    "backend_tls = starttls\n"
	    "backend_verify = FALSE\n"
	    "cert = /a.crt\n"
	    "key = /a.key\n"
	    "client_ca = /ca.pem\n"
	    "client_verify = required\n"
	    "alpn = off\n"
	    "proxy_protocol = v2\n"
	    "hostname = mx1.example.org\n"
	    "connect_timeout = 1500ms\n"
	    "handshake_timeout = 1m\n"
	    "idle_timeout = 1h\n"
	    "max_connections = 1000000\n"
	    "[pop3]\n"
	    "listen = 127.0.0.1:10110\n"
	    "protocol = pop3\n"
	    "client_tls = none\n"
	    "backend = localhost:995\n"
	    "backend_tls = implicit\n"
	    "backend_name = 192.0.2.1\n"
	    "client_verify = optional\n"
	    "client_ca = /ca.pem\n"
	    "proxy_protocol = v1\n"
	    "max_connections = 1\n"
	    "[opaque]\n"
	    "listen = 127.0.0.1:10999\n"
	    "protocol = none\n"
	    "backend = 127.0.0.1:999\n"
	    "require_tls = true\n"
	    "cert = auto\n");
	assert_int_equal(cfg->nlisteners, 3);
	l = &cfg->listeners[0];
	assert_int_equal(l->listen.ss.ss_family, AF_INET6);
	assert_string_equal(l->listen.host, "::");
	assert_int_equal(port_of(&l->listen), 10143);
	assert_int_equal(l->protocol, CONFIG_PROTO_IMAP);
	assert_int_equal(l->client_tls, CONFIG_TLS_STARTTLS);
	assert_int_equal(l->require_tls, 0);
	assert_int_equal(l->backend.ss.ss_family, AF_UNIX);
	assert_string_equal(l->backend.text, "unix:/run/dovecot/imap.sock");
	assert_int_equal(l->backend_tls, CONFIG_TLS_STARTTLS);
	assert_int_equal(l->backend_verify, 0);
	assert_int_equal(l->client_verify, CONFIG_VERIFY_REQUIRED);
	assert_int_equal(l->alpn_strict, 0);
	assert_int_equal(l->proxy_protocol, CONFIG_PP_V2);
	assert_string_equal(l->hostname, "mx1.example.org");
	assert_int_equal(l->connect_timeout_ms, 1500);
	assert_int_equal(l->handshake_timeout_ms, 60000);
	assert_int_equal(l->idle_timeout_ms, 3600000);
	assert_int_equal(l->max_connections, 1000000);
	l = &cfg->listeners[1];
	assert_int_equal(l->line, 20);
	assert_int_equal(l->protocol, CONFIG_PROTO_POP3);
	assert_int_equal(l->client_tls, CONFIG_TLS_NONE);
	assert_int_equal(l->ncerts, 0);
	assert_string_equal(l->backend.host, "localhost");
	assert_int_equal(
	    ((struct sockaddr_in *)&l->backend.ss)->sin_addr.s_addr,
	    htonl(INADDR_LOOPBACK));
	assert_int_equal(l->backend_tls, CONFIG_TLS_IMPLICIT);
	assert_string_equal(l->backend_name, "192.0.2.1");
	assert_int_equal(l->client_verify, CONFIG_VERIFY_OPTIONAL);
	assert_int_equal(l->proxy_protocol, CONFIG_PP_V1);
	assert_int_equal(l->max_connections, 1);
	l = &cfg->listeners[2];
	assert_int_equal(l->protocol, CONFIG_PROTO_NONE);
	assert_int_equal(l->require_tls, 1);
	assert_int_equal(l->ncerts, 1);
	assert_string_equal(l->certs[0].cert, "auto");
	assert_null(l->certs[0].key);
	config_free(cfg);
}

static void
test_listener_bad(void **state)
{

	(void)state;
	load_fails("[a]\n"
	    "listen = 127.0.0.1:10465\n"
	    "protocol = lmtp\n"
	    "client_tls = yes\n"
	    "require_tls = maybe\n"
	    "backend = mail!example.com:25\n"
	    "backend_tls = tls\n"
	    "backend_verify = 1\n"
	    "backend_name = bad name\n"
	    "cert = /c\n"
	    "key = /k\n"
	    "client_verify = always\n"
	    "alpn = on\n"
	    "proxy_protocol = v3\n"
	    "accept_proxy = 10.0.0.0/33\n"
	    "hostname = mail_example com\n"
	    "connect_timeout = 0s\n"
	    "handshake_timeout = -5s\n"
	    "idle_timeout = 10 m\n"
	    "max_connections = 1000001\n"
	    "tls_priority =\n",
	    "F:3: protocol: invalid value \"lmtp\": expected smtp, imap, pop3 "
	    "or none\n"
	    "F:4: client_tls: invalid value \"yes\": expected implicit, "
	    "starttls or none\n"
	    "F:5: require_tls: invalid value \"maybe\": expected yes, no, "
	    "true, false, on or off\n"
	    "F:6: backend: invalid value \"mail!example.com:25\": expected a "
	    "DNS name, an IPv4 address, [IPv6] or unix:/path before the port\n"
	    "F:7: backend_tls: invalid value \"tls\": expected implicit, "
	    "starttls or none\n"
	    "F:8: backend_verify: invalid value \"1\": expected yes, no, true, "
	    "false, on or off\n"
	    "F:9: backend_name: invalid value \"bad name\": expected a host "
	    "name or an IP address\n"
	    "F:12: client_verify: invalid value \"always\": expected none, "
	    "optional or required\n"
	    "F:13: alpn: invalid value \"on\": expected strict or off\n"
	    "F:14: proxy_protocol: invalid value \"v3\": expected none, v1 or "
	    "v2\n"
	    "F:15: accept_proxy: invalid value \"10.0.0.0/33\": 10.0.0.0/33: "
	    "prefix must be a number from 0 to 32\n"
	    "F:16: hostname: invalid value \"mail_example com\": expected a "
	    "host name (letters, digits, '-' and '.')\n"
	    "F:17: connect_timeout: invalid value \"0s\": must be more than "
	    "zero\n"
	    "F:18: handshake_timeout: invalid value \"-5s\": expected a "
	    "duration such as 500ms, 30s, 10m or 1h\n"
	    "F:19: idle_timeout: invalid value \"10 m\": expected a duration "
	    "such as 500ms, 30s, 10m or 1h\n"
	    "F:20: max_connections: invalid value \"1000001\": expected a "
	    "number from 1 to 1000000\n"
	    "F:21: tls_priority: empty value\n");
	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\nmax_connections = 0\n"
	    "listen = unix:/run/x\n",
	    "F:6: max_connections: invalid value \"0\": expected a number "
	    "from 1 to 1000000\n"
	    "F:7: duplicate key \"listen\" (first at line 2)\n");
}

static void
test_booleans(void **state)
{
	static const struct {
		const char	*v;
		int		 want;
	} cases[] = {
		{ "yes", 1 }, { "no", 0 }, { "true", 1 }, { "false", 0 },
		{ "on", 1 }, { "off", 0 }, { "YES", 1 }, { "Off", 0 },
	};
	struct config *cfg;
	char text[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), LISTENER("a", "10465")
		    "backend_verify = %s\n", cases[i].v);
		cfg = load_ok(text);
		assert_int_equal(cfg->listeners[0].backend_verify,
		    cases[i].want);
		config_free(cfg);
	}
	load_fails(LISTENER("a", "10465") "require_tls = y\n",
	    "F:7: require_tls: invalid value \"y\": expected yes, no, true, "
	    "false, on or off\n");
}

static void
test_durations(void **state)
{
	static const struct {
		const char	*s;
		uint64_t	 ms;
	} good[] = {
		{ "0", 0 }, { "30", 30000 }, { "30s", 30000 },
		{ "500ms", 500 }, { "10m", 600000 }, { "1h", 3600000 },
		{ "0ms", 0 }, { "007s", 7000 },
		{ "18446744073709551615ms", UINT64_MAX },
		{ "5124095576030h", 5124095576030ULL * 3600000 },
	};
	static const char *const bad[] = {
		"", "s", "ms", "5x", "5 s", " 5s", "5s ", "-5", "-5s", "+5",
		"5.5s", "5S", "5sec", "1h30m", "18446744073709551616ms",
		"18446744073709551615s", "5124095576031h",
		"99999999999999999999999", "0x10", "5mss",
	};
	uint64_t ms;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ms = 12345;
		assert_int_equal(config_parse_duration(good[i].s, &ms), 0);
		assert_int_equal(ms, good[i].ms);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ms = 12345;
		if (config_parse_duration(bad[i], &ms) != -1)
			fail_msg("\"%s\" accepted", bad[i]);
		assert_int_equal(ms, 12345);
	}
}

static void
test_addr_good(void **state)
{
	struct config_addr a;
	struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
	struct sockaddr_un *sun = (struct sockaddr_un *)&a.ss;
	struct in6_addr v6;

	(void)state;
	assert_null(config_parse_addr("127.0.0.1:465", &a));
	assert_int_equal(a.ss.ss_family, AF_INET);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in));
	assert_int_equal(sin->sin_addr.s_addr, htonl(0x7f000001));
	assert_int_equal(ntohs(sin->sin_port), 465);
	assert_string_equal(a.text, "127.0.0.1:465");
	assert_string_equal(a.host, "127.0.0.1");

	assert_null(config_parse_addr("0.0.0.0:65535", &a));
	assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));
	assert_int_equal(ntohs(sin->sin_port), 65535);

	assert_null(config_parse_addr("localhost:25", &a));
	assert_int_equal(a.ss.ss_family, AF_INET);
	assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
	assert_int_equal(ntohs(sin->sin_port), 25);
	assert_string_equal(a.host, "localhost");

	assert_null(config_parse_addr("[::1]:993", &a));
	assert_int_equal(a.ss.ss_family, AF_INET6);
	assert_int_equal(a.sslen, sizeof(struct sockaddr_in6));
	assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	assert_int_equal(ntohs(sin6->sin6_port), 993);
	assert_string_equal(a.host, "::1");
	assert_string_equal(a.text, "[::1]:993");

	assert_null(config_parse_addr("[::]:993", &a));
	assert_true(IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr));
	assert_string_equal(a.host, "::");

	assert_null(config_parse_addr("[2001:db8::25]:1", &a));
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::25", &v6), 1);
	assert_memory_equal(&sin6->sin6_addr, &v6, sizeof(v6));
	assert_int_equal(ntohs(sin6->sin6_port), 1);

	assert_null(config_parse_addr("unix:/run/x.sock", &a));
	assert_int_equal(a.ss.ss_family, AF_UNIX);
	assert_string_equal(sun->sun_path, "/run/x.sock");
	assert_int_equal(a.sslen, offsetof(struct sockaddr_un, sun_path) +
	    sizeof("/run/x.sock"));
	assert_string_equal(a.text, "unix:/run/x.sock");
	assert_string_equal(a.host, "");
}

static void
test_addr_bad(void **state)
{
	static const struct {
		const char	*s;
		const char	*err;
	} cases[] = {
		{ "127.0.0.1", "missing port (HOST:PORT)" },
		{ "127.0.0.1:", "missing port" },
		{ "127.0.0.1:0", "port must be a number from 1 to 65535" },
		{ "127.0.0.1:65536", "port must be a number from 1 to 65535" },
		{ "127.0.0.1:99999999999999999999",
		  "port must be a number from 1 to 65535" },
		{ "127.0.0.1:-1", "port must be a number from 1 to 65535" },
		{ "127.0.0.1:25x", "port must be a number from 1 to 65535" },
		{ "127.0.0.1: 25", "port must be a number from 1 to 65535" },
		{ "127.0.0.1:smtp", "port must be a number from 1 to 65535" },
		{ ":25", "missing host" },
		{ "", "missing port (HOST:PORT)" },
		{ "mail.example.com:25", "host must be a numeric address or "
		  "localhost (no DNS lookups at configuration time)" },
		{ "127.1:25", "host must be a numeric address or localhost "
		  "(no DNS lookups at configuration time)" },
		{ "256.0.0.1:25", "host must be a numeric address or "
		  "localhost (no DNS lookups at configuration time)" },
		{ "::1:993", "IPv6 addresses go in brackets: [V6]:PORT" },
		{ "[::1]", "missing port" },
		{ "[::1]:", "missing port" },
		{ "[::1]993", "expected ':' and a port after ']'" },
		{ "[::1:993", "missing ']' after IPv6 address" },
		{ "[]:993", "missing host" },
		{ "[127.0.0.1]:25", "invalid IPv6 address" },
		{ "[fe80::1%eth0]:25", "invalid IPv6 address" },
		{ "unix:run/x.sock", "unix socket path must be absolute "
		  "(unix:/path)" },
		{ "unix:", "unix socket path must be absolute (unix:/path)" },
	};
	struct config_addr a;
	char longpath[120];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *e = config_parse_addr(cases[i].s, &a);

		if (e == NULL)
			fail_msg("\"%s\" accepted", cases[i].s);
		assert_string_equal(e, cases[i].err);
	}

	/* sun_path holds 108 bytes, the NUL included. */
	memset(longpath, 0, sizeof(longpath));
	memcpy(longpath, "unix:/", 6);
	memset(longpath + 6, 'x', 106);
	assert_null(config_parse_addr(longpath, &a));
	assert_int_equal(strlen(((struct sockaddr_un *)&a.ss)->sun_path),
	    107);
	longpath[6 + 106] = 'x';
	assert_string_equal(config_parse_addr(longpath, &a),
	    "unix socket path too long");
}

static void
test_cidr_parse(void **state)
{
	struct config_cidr c;
	unsigned char v6[16];

	(void)state;
	assert_null(config_parse_cidr("10.0.0.0/8", &c));
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 8);
	assert_int_equal(c.addr[0], 10);

	assert_null(config_parse_cidr("192.0.2.7", &c));
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 32);
	assert_memory_equal(c.addr, "\xc0\x00\x02\x07", 4);

	assert_null(config_parse_cidr("0.0.0.0/0", &c));
	assert_int_equal(c.prefix, 0);

	assert_null(config_parse_cidr("2001:db8::/32", &c));
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 32);
	assert_int_equal(inet_pton(AF_INET6, "2001:db8::", v6), 1);
	assert_memory_equal(c.addr, v6, 16);

	assert_null(config_parse_cidr("::1", &c));
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.prefix, 128);

	assert_null(config_parse_cidr("172.16.0.0/12", &c));
	assert_int_equal(c.prefix, 12);

	/* A mapped network is kept as the IPv4 network it maps. */
	assert_null(config_parse_cidr("::ffff:10.1.0.0/112", &c));
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 16);
	assert_memory_equal(c.addr, "\x0a\x01\x00\x00", 4);

	assert_string_equal(config_parse_cidr("10.0.0.1/8", &c),
	    "host bits set beyond the prefix");
	assert_string_equal(config_parse_cidr("2001:db8::1/64", &c),
	    "host bits set beyond the prefix");
	assert_string_equal(config_parse_cidr("10.0.0.0/33", &c),
	    "prefix must be a number from 0 to 32");
	assert_string_equal(config_parse_cidr("::/129", &c),
	    "prefix must be a number from 0 to 128");
	assert_string_equal(config_parse_cidr("10.0.0.0/", &c),
	    "prefix must be a number from 0 to 32");
	assert_string_equal(config_parse_cidr("10.0.0.0/-8", &c),
	    "prefix must be a number from 0 to 32");
	assert_string_equal(config_parse_cidr("10.0.0.0/8x", &c),
	    "prefix must be a number from 0 to 32");
	assert_string_equal(config_parse_cidr("/8", &c), "missing address");
	assert_string_equal(config_parse_cidr("10.0.0/8", &c),
	    "invalid address");
	assert_string_equal(config_parse_cidr("example.com", &c),
	    "invalid address");
	assert_string_equal(config_parse_cidr("[::1]/128", &c),
	    "invalid address");
}

static void
sa4(struct sockaddr_storage *ss, const char *a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	sin->sin_family = AF_INET;
	assert_int_equal(inet_pton(AF_INET, a, &sin->sin_addr), 1);
}

static void
sa6(struct sockaddr_storage *ss, const char *a)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	sin6->sin6_family = AF_INET6;
	assert_int_equal(inet_pton(AF_INET6, a, &sin6->sin6_addr), 1);
}

static void
test_cidr_match(void **state)
{
	struct config_cidr c;
	struct sockaddr_storage ss;
	const struct sockaddr *sa = (const struct sockaddr *)&ss;

	(void)state;
	assert_null(config_parse_cidr("10.0.0.0/8", &c));
	sa4(&ss, "10.255.1.2");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa4(&ss, "11.0.0.1");
	assert_int_equal(config_cidr_match(&c, sa), 0);
	sa4(&ss, "9.255.255.255");
	assert_int_equal(config_cidr_match(&c, sa), 0);
	sa6(&ss, "::ffff:10.9.8.7");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "::ffff:192.0.2.1");
	assert_int_equal(config_cidr_match(&c, sa), 0);
	/* Only the mapped form counts, not the IPv4-compatible one. */
	sa6(&ss, "::10.9.8.7");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("192.168.1.0/25", &c));
	sa4(&ss, "192.168.1.127");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa4(&ss, "192.168.1.128");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("192.0.2.7", &c));
	sa4(&ss, "192.0.2.7");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa4(&ss, "192.0.2.6");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("0.0.0.0/0", &c));
	sa4(&ss, "203.0.113.9");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "2001:db8::1");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("2001:db8:1::/48", &c));
	sa6(&ss, "2001:db8:1:ffff::1");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "2001:db8:2::1");
	assert_int_equal(config_cidr_match(&c, sa), 0);
	sa4(&ss, "32.1.13.184");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("2001:db8::/31", &c));
	sa6(&ss, "2001:db9::1");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "2001:dba::1");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	assert_null(config_parse_cidr("::1", &c));
	sa6(&ss, "::1");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "::2");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	/* A mapped network matches plain IPv4 peers and mapped ones. */
	assert_null(config_parse_cidr("::ffff:10.1.0.0/112", &c));
	sa4(&ss, "10.1.200.3");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa6(&ss, "::ffff:10.1.200.3");
	assert_int_equal(config_cidr_match(&c, sa), 1);
	sa4(&ss, "10.2.0.1");
	assert_int_equal(config_cidr_match(&c, sa), 0);

	/* Other families never match. */
	memset(&ss, 0, sizeof(ss));
	ss.ss_family = AF_UNIX;
	assert_int_equal(config_cidr_match(&c, sa), 0);
}

static void
test_accept_proxy(void **state)
{
	struct config *cfg;
	struct config_listener *l;

	(void)state;
	cfg = load_ok(LISTENER("a", "10465")
	    "accept_proxy = 10.0.0.0/8,192.0.2.7 , 2001:db8::/32,\t::1\n");
	l = &cfg->listeners[0];
	assert_int_equal(l->naccept_proxy, 4);
	assert_int_equal(l->accept_proxy[0].family, AF_INET);
	assert_int_equal(l->accept_proxy[0].prefix, 8);
	assert_int_equal(l->accept_proxy[1].family, AF_INET);
	assert_int_equal(l->accept_proxy[1].prefix, 32);
	assert_int_equal(l->accept_proxy[2].family, AF_INET6);
	assert_int_equal(l->accept_proxy[2].prefix, 32);
	assert_int_equal(l->accept_proxy[3].family, AF_INET6);
	assert_int_equal(l->accept_proxy[3].prefix, 128);
	config_free(cfg);

	load_fails(LISTENER("a", "10465") "accept_proxy = 10.0.0.0/8,,::1\n",
	    "F:7: accept_proxy: invalid value \"10.0.0.0/8,,::1\": empty "
	    "entry in the list of networks\n");
	load_fails(LISTENER("a", "10465") "accept_proxy = 10.0.0.0/8,\n",
	    "F:7: accept_proxy: invalid value \"10.0.0.0/8,\": empty entry in "
	    "the list of networks\n");
	load_fails(LISTENER("a", "10465")
	    "accept_proxy = 10.0.0.0/8, 10.0.0.1/24\n",
	    "F:7: accept_proxy: invalid value \"10.0.0.0/8, 10.0.0.1/24\": "
	    "10.0.0.1/24: host bits set beyond the prefix\n");
	load_fails(LISTENER("a", "10465") "accept_proxy = lb.example.com\n",
	    "F:7: accept_proxy: invalid value \"lb.example.com\": "
	    "lb.example.com: invalid address\n");
}

static void
test_line_numbers(void **state)
{

	(void)state;
	/* Comments, blank lines, "key: value" and CRLF all count as lines. */
	load_fails("# a comment\n"
	    "; another comment\n"
	    "\n"
	    "[global]   # inline\n"
	    "\r\n"
	    "log_level: chatty\r\n"
	    "   ; indented comment\n"
	    "\t\n"
	    "[a]\n"
	    "listen: 127.0.0.1:10465 ; inline\n"
	    "protocol: smtp # inline too\n"
	    "backend: 127.0.0.1:25\n"
	    "cert: /c\n"
	    "key: /k\n"
	    "bogus: 1\n",
	    "F:6: log_level: invalid value \"chatty\": expected error, warn, "
	    "info or debug\n"
	    "F:15: unknown key \"bogus\"\n");
}

static void
test_comments(void **state)
{
	struct config *cfg;

	(void)state;
	/* '#' and ';' start a comment only after a blank or at the start. */
	cfg = load_ok("[global]\n"
	    "user = mail#tls ; comment\n"
	    "ticket_key_file = /etc/x;y.key # comment\n"
	    "#user = other\n"
	    LISTENER("a", "10465")
	    "tls_priority = NORMAL:%COMPAT\t# trailing\n");
	assert_string_equal(cfg->user, "mail#tls");
	assert_string_equal(cfg->ticket_key_file, "/etc/x;y.key");
	assert_string_equal(cfg->listeners[0].tls_priority, "NORMAL:%COMPAT");
	config_free(cfg);
}

static void
test_indentation(void **state)
{
	struct config *cfg;

	(void)state;
	/* Indented keys are ordinary keys, never continuations. */
	cfg = load_ok("[a]\n"
	    "    listen = 127.0.0.1:10465\n"
	    "\tprotocol = imap\n"
	    "  backend = 127.0.0.1:143\n"
	    "  cert = /c\n"
	    "  key = /k\n");
	assert_int_equal(cfg->listeners[0].protocol, CONFIG_PROTO_IMAP);
	assert_string_equal(cfg->listeners[0].certs[0].key, "/k");
	config_free(cfg);

	/* A line meant to continue a value is reported, not joined. */
	load_fails(LISTENER("a", "10465")
	    "accept_proxy = 10.0.0.0/8,\n"
	    "    192.168.0.0/16\n"
	    "tls_priority = SECURE:-VERS-ALL\n"
	    "  +VERS-TLS1.3:+AES-128-GCM\n",
	    "F:7: accept_proxy: invalid value \"10.0.0.0/8,\": empty entry in "
	    "the list of networks\n"
	    "F:8: expected \"key = value\", \"key: value\" or \"[section]\"\n"
	    "F:10: unknown key \"+VERS-TLS1.3\"\n");
}

static void
test_bom_and_crlf(void **state)
{
	struct config *cfg;

	(void)state;
	cfg = load_ok("\xEF\xBB\xBF[a]\r\nlisten = 127.0.0.1:10465\r\n"
	    "protocol = pop3\r\nbackend = 127.0.0.1:110\r\ncert = auto\r\n");
	assert_string_equal(cfg->listeners[0].name, "a");
	assert_string_equal(cfg->listeners[0].certs[0].cert, "auto");
	config_free(cfg);
}

static void
test_sections(void **state)
{

	(void)state;
	load_fails("user = x\n"
	    "listen: 127.0.0.1:1\n"
	    "[global]\n"
	    "[a b]\n"
	    "listen = 1\n"
	    "[c\n"
	    "[d] junk\n"
	    "[]\n"
	    "[global]\n"
	    "workers = 0\n"
	    LISTENER("a", "10465")
	    LISTENER("a", "10587")
	    "[x123456789x123456789x123456789x123456789x123456789x123456789"
	    "x12345]\n"
	    "just some words\n",
	    "F:1: key \"user\" outside of any section\n"
	    "F:2: key \"listen\" outside of any section\n"
	    "F:4: invalid section title [a b]: use letters, digits, '-', '_' "
	    "and '.'\n"
	    "F:6: missing ']' in section title\n"
	    "F:7: unexpected text after section title\n"
	    "F:8: empty section title\n"
	    "F:9: duplicate section [global] (first at line 3)\n"
	    "F:17: duplicate section [a] (first at line 11)\n"
	    "F:23: section title too long (more than 64 characters)\n"
	    "F:24: expected \"key = value\", \"key: value\" or "
	    "\"[section]\"\n");
}

static void
test_keys_in_wrong_section(void **state)
{

	(void)state;
	load_fails("[global]\n"
	    "listen = 127.0.0.1:1\n"
	    LISTENER("a", "10465")
	    "workers = 4\n"
	    "Listen = 127.0.0.1:2\n"
	    "= value\n"
	    "protocol = imap\n"
	    "cert = /c2\n"
	    "key = /k2\n"
	    "cert = /c3\n"
	    "key = /k3\n",
	    "F:2: key \"listen\" belongs in a listener section, not [global]\n"
	    "F:9: key \"workers\" belongs in [global]\n"
	    "F:10: unknown key \"Listen\"\n"
	    "F:11: missing key name\n"
	    "F:12: duplicate key \"protocol\" (first at line 5)\n");
}

static void
test_missing_required(void **state)
{

	(void)state;
	load_fails("[global]\n"
	    "\n"
	    "[empty]\n"
	    "\n"
	    "[nocert]\n"
	    "listen = 127.0.0.1:10465\n"
	    "protocol = smtp\n"
	    "backend = 127.0.0.1:25\n"
	    "[plain]\n"
	    "listen = 127.0.0.1:10587\n"
	    "client_tls = none\n"
	    "backend_tls = implicit\n",
	    "F:3: [empty]: missing required key \"listen\"\n"
	    "F:3: [empty]: missing required key \"protocol\"\n"
	    "F:3: [empty]: missing required key \"backend\"\n"
	    "F:3: [empty]: no cert (at least one is required unless "
	    "client_tls = none)\n"
	    "F:5: [nocert]: no cert (at least one is required unless "
	    "client_tls = none)\n"
	    "F:9: [plain]: missing required key \"protocol\"\n"
	    "F:9: [plain]: missing required key \"backend\"\n");

	/* Errors found at the end are still written in line order. */
	load_fails("[early]\n"
	    "listen = 127.0.0.1:10465\n"
	    "[late]\n"
	    "listen = 127.0.0.1:10466\n"
	    "protocol = smtp\n"
	    "backend = 127.0.0.1:25\n"
	    "cert = auto\n"
	    "bogus = 1\n",
	    "F:1: [early]: missing required key \"protocol\"\n"
	    "F:1: [early]: missing required key \"backend\"\n"
	    "F:1: [early]: no cert (at least one is required unless "
	    "client_tls = none)\n"
	    "F:8: unknown key \"bogus\"\n");

	/* A key given with a bad value is not also reported missing. */
	load_fails("[a]\nlisten = nowhere\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n",
	    "F:2: listen: invalid value \"nowhere\": missing port "
	    "(HOST:PORT)\n");
}

static void
test_cert_key_pairing(void **state)
{
	struct config *cfg;
	struct config_listener *l;

	(void)state;
	cfg = load_ok("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\n"
	    "cert = /rsa.crt\nkey = /rsa.key\n"
	    "cert = /ec.crt\nkey = /ec.key\n"
	    "cert = auto\n"
	    "cert = /ed.crt\nkey = /ed.key\n");
	l = &cfg->listeners[0];
	assert_int_equal(l->ncerts, 4);
	assert_string_equal(l->certs[0].cert, "/rsa.crt");
	assert_string_equal(l->certs[0].key, "/rsa.key");
	assert_int_equal(l->certs[0].line, 5);
	assert_string_equal(l->certs[1].cert, "/ec.crt");
	assert_string_equal(l->certs[1].key, "/ec.key");
	assert_int_equal(l->certs[1].line, 7);
	assert_string_equal(l->certs[2].cert, "auto");
	assert_null(l->certs[2].key);
	assert_string_equal(l->certs[3].key, "/ed.key");
	config_free(cfg);

	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\n"
	    "key = /early.key\n"
	    "cert = /one.crt\n"
	    "cert = /two.crt\n"
	    "key = /two.key\n"
	    "key = /again.key\n"
	    "cert = auto\n"
	    "key = /auto.key\n"
	    "cert = auto\n"
	    "cert = /last.crt\n"
	    "[b]\nlisten = 127.0.0.1:10587\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = /b.crt\n",
	    "F:5: key without a preceding cert\n"
	    "F:6: cert \"/one.crt\" has no key (each cert must be followed by "
	    "its key)\n"
	    "F:9: key without a preceding cert\n"
	    "F:11: key after \"cert = auto\" (line 10), which takes no key\n"
	    "F:12: cert = auto given twice (first at line 10)\n"
	    "F:13: cert \"/last.crt\" has no key (each cert must be followed "
	    "by its key)\n"
	    "F:18: cert \"/b.crt\" has no key (each cert must be followed by "
	    "its key)\n");

	/* A rejected cert or key does not make its partner an error too. */
	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\n"
	    "cert =\n"
	    "key = /one.key\n"
	    "cert = /two.crt\n"
	    "key = \"/two.key\"\n"
	    "cert = /three.crt\n"
	    "key = /three.key\n"
	    "key = /extra.key\n",
	    "F:5: cert: empty value\n"
	    "F:8: key: values are not quoted; remove the quotes\n"
	    "F:11: key without a preceding cert\n");
}

static void
test_duplicate_listen(void **state)
{
	struct config *cfg;

	(void)state;
	load_fails(LISTENER("first", "10465")
	    LISTENER("second", "10465")
	    LISTENER("third", "10465"),
	    "F:8: listen address 127.0.0.1:10465 already used by [first] "
	    "(line 2)\n"
	    "F:14: listen address 127.0.0.1:10465 already used by [first] "
	    "(line 2)\n");

	load_fails("[any]\nlisten = 0.0.0.0:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n"
	    "[lo]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n"
	    "[v6]\nlisten = [::1]:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n"
	    "[v6any]\nlisten = [::]:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n",
	    "F:7: listen address 127.0.0.1:10465 overlaps 0.0.0.0:10465 of "
	    "[any] (line 2)\n"
	    "F:17: listen address [::]:10465 overlaps [::1]:10465 of [v6] "
	    "(line 12)\n");

	load_fails("[global]\nmetrics = 127.0.0.1:10465\n"
	    LISTENER("a", "10465"),
	    "F:4: listen address 127.0.0.1:10465 clashes with metrics = "
	    "127.0.0.1:10465 (line 2)\n");

	/* Same host, other port; same port, other host: both fine. */
	cfg = load_ok(LISTENER("a", "10465") LISTENER("b", "10466")
	    "[c]\nlisten = 127.0.0.2:10465\nprotocol = smtp\n"
	    "backend = 127.0.0.1:25\ncert = auto\n");
	assert_int_equal(cfg->nlisteners, 3);
	assert_string_equal(cfg->listeners[2].name, "c");
	config_free(cfg);
}

static void
test_combinations(void **state)
{
	struct config *cfg;

	(void)state;
	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = none\n"
	    "client_tls = starttls\nbackend = 127.0.0.1:25\n"
	    "backend_tls = starttls\ncert = auto\n"
	    "client_verify = required\n",
	    "F:4: client_tls = starttls needs a protocol (smtp, imap or pop3), "
	    "not protocol = none\n"
	    "F:6: backend_tls = starttls needs a protocol (smtp, imap or "
	    "pop3), not protocol = none\n"
	    "F:8: client_verify = required needs client_ca\n");
	load_fails(LISTENER("a", "10465") "client_verify = optional\n",
	    "F:7: client_verify = optional needs client_ca\n");
	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "client_tls = none\nbackend = 127.0.0.1:25\n",
	    "F:4: client_tls = none with backend_tls = none: the listener "
	    "would use no TLS at all\n");
	load_fails("[a]\nlisten = 127.0.0.1:10465\nprotocol = smtp\n"
	    "backend = unix:/run/smtpd.sock\nbackend_tls = starttls\n"
	    "cert = auto\n",
	    "F:4: a unix: backend with backend_tls and backend_verify needs "
	    "backend_name\n");

	/* Keys with no effect are accepted and ignored. */
	cfg = load_ok(LISTENER("a", "10465")
	    "backend_ca = /ca.pem\nbackend_name = mx.internal\n"
	    "backend_verify = no\nclient_ca = /cca.pem\nrequire_tls = no\n");
	config_free(cfg);
	cfg = load_ok("[a]\nlisten = 127.0.0.1:10465\nprotocol = none\n"
	    "backend = unix:/run/x.sock\nbackend_tls = implicit\n"
	    "backend_name = x.internal\nclient_tls = none\n");
	config_free(cfg);
	cfg = load_ok("[a]\nlisten = 127.0.0.1:10465\nprotocol = imap\n"
	    "backend = unix:/run/x.sock\nbackend_tls = starttls\n"
	    "backend_verify = off\ncert = auto\n");
	config_free(cfg);
}

static void
test_line_too_long(void **state)
{
	struct config *cfg;
	char text[2048], val[256], comment[256];

	(void)state;
	/* 199 characters is the longest line inih takes whole. */
	memset(val, 'a', sizeof(val));
	val[199 - strlen("user = ")] = '\0';
	memset(comment, 'c', sizeof(comment));
	comment[sizeof(comment) - 1] = '\0';
	snprintf(text, sizeof(text), "[global]\nuser = %s\n"
	    "; %s\n"
	    "ticket_key_file = /t.key ; %s\n"
	    LISTENER("a", "10465"), val, comment, comment);
	cfg = load_ok(text);
	assert_int_equal(strlen(cfg->user), 199 - strlen("user = "));
	assert_string_equal(cfg->ticket_key_file, "/t.key");
	config_free(cfg);

	/* One more is too long, and the lines after it still count. */
	val[199 - strlen("user = ")] = 'a';
	val[200 - strlen("user = ")] = '\0';
	snprintf(text, sizeof(text), "[global]\nuser = %s\n"
	    "ticket_key_file = /%s\nworkers = 0\n" LISTENER("a", "10465"),
	    val, comment);
	load_fails(text,
	    "F:2: line too long (more than 199 characters, comments aside)\n"
	    "F:3: line too long (more than 199 characters, comments aside)\n"
	    "F:4: workers: invalid value \"0\": expected auto or a number "
	    "from 1 to 256\n");
}

static void
test_nul_byte(void **state)
{
	struct config *cfg;
	char *path, *buf = NULL;
	size_t len = 0;
	FILE *f, *w;
	int fd;
	static const char text[] = "[global]\nuser = a\0b\n"
	    LISTENER("a", "10465");

	(void)state;
	path = strdup("/tmp/test_config.XXXXXX");
	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	w = fdopen(fd, "w");
	assert_non_null(w);
	assert_int_equal(fwrite(text, 1, sizeof(text) - 1, w),
	    sizeof(text) - 1);
	assert_int_equal(fclose(w), 0);
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	cfg = config_load(path, f);
	assert_int_equal(fclose(f), 0);
	assert_null(cfg);
	assert_non_null(strstr(buf, ":2: NUL byte in line\n"));
	assert_int_equal(strncmp(buf, path, strlen(path)), 0);
	free(buf);
	unlink(path);
	free(path);
}

static void
test_quoted_and_empty(void **state)
{

	(void)state;
	load_fails(LISTENER("a", "10465")
	    "backend_ca = '/etc/ca.pem'\n"
	    "hostname =\n"
	    "client_ca: \n",
	    "F:7: backend_ca: values are not quoted; remove the quotes\n"
	    "F:8: hostname: empty value\n"
	    "F:9: client_ca: empty value\n");
}

static void
test_no_listener(void **state)
{

	(void)state;
	load_fails("", "F:1: no listener defined\n");
	load_fails("[global]\nworkers = 2\n\n; the end\n",
	    "F:4: no listener defined\n");
	load_fails("[global]\nworkers = x\n",
	    "F:2: workers: invalid value \"x\": expected auto or a number "
	    "from 1 to 256\n"
	    "F:2: no listener defined\n");
}

static void
test_cannot_open(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	assert_null(config_load("/nonexistent/mailtlsd.conf", f));
	assert_int_equal(fclose(f), 0);
	assert_string_equal(buf, "/nonexistent/mailtlsd.conf:0: cannot "
	    "open: No such file or directory\n");
	free(buf);

	buf = NULL;
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	assert_null(config_load("/", f));
	assert_int_equal(fclose(f), 0);
	assert_string_equal(buf, "/:0: cannot read: Is a directory\n");
	free(buf);
}

static void
test_proto_name(void **state)
{

	(void)state;
	assert_string_equal(config_proto_name(CONFIG_PROTO_SMTP), "smtp");
	assert_string_equal(config_proto_name(CONFIG_PROTO_IMAP), "imap");
	assert_string_equal(config_proto_name(CONFIG_PROTO_POP3), "pop3");
	assert_string_equal(config_proto_name(CONFIG_PROTO_NONE), "none");
}

static void
test_free_null(void **state)
{

	(void)state;
	config_free(NULL);
}

static void
test_fixture_files(void **state)
{
	struct config *cfg;
	const char *dir;
	char path[1024];
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	/* ctest sets MAILTLSD_TEST_DATA; run by hand, use the source tree. */
	if ((dir = getenv("MAILTLSD_TEST_DATA")) == NULL)
		dir = "test/unit/data";
	snprintf(path, sizeof(path), "%s/config/good.ini", dir);
	f = open_memstream(&buf, &len);
	assert_non_null(f);
	cfg = config_load(path, f);
	assert_int_equal(fclose(f), 0);
	assert_string_equal(buf, "");
	free(buf);
	assert_non_null(cfg);
	assert_int_equal(cfg->nlisteners, 4);
	assert_string_equal(cfg->listeners[3].name, "pop3s");
	config_free(cfg);
}

/* Limits per client and the plaintext bound (issue 16). */
static void
test_client_limits(void **state)
{
	struct config *cfg;
	struct config_listener *l;

	(void)state;
	cfg = load_ok(LISTENER("a", "10465"));
	l = &cfg->listeners[0];
	assert_int_equal(l->max_per_client, 0);
	assert_int_equal(l->rate_per_client, 0);
	assert_int_equal(l->plaintext_timeout_ms, 300000);
	config_free(cfg);

	cfg = load_ok(LISTENER("a", "10465")
	    "max_per_client = 20          ; the spec's words\n"
	    "rate_per_client: 5\n"
	    "plaintext_timeout = 90s\n"
	    LISTENER("b", "10466")
	    "max_per_client = 1000000\n"
	    "rate_per_client = 0\n"
	    "plaintext_timeout = 1500ms\n");
	l = &cfg->listeners[0];
	assert_int_equal(l->max_per_client, 20);
	assert_int_equal(l->rate_per_client, 5);
	assert_int_equal(l->plaintext_timeout_ms, 90000);
	l = &cfg->listeners[1];
	assert_int_equal(l->max_per_client, 1000000);
	assert_int_equal(l->rate_per_client, 0);
	assert_int_equal(l->plaintext_timeout_ms, 1500);
	config_free(cfg);

	load_fails(LISTENER("a", "10465")
	    "max_per_client = -1\n"
	    "rate_per_client = 10/s\n"
	    "plaintext_timeout = 0\n"
	    "max_per_client = 5\n",
	    "F:7: max_per_client: invalid value \"-1\": expected a number from "
	    "0 (no limit) to 1000000\n"
	    "F:8: rate_per_client: invalid value \"10/s\": expected a number "
	    "from 0 (no limit) to 1000000\n"
	    "F:9: plaintext_timeout: invalid value \"0\": must be more than "
	    "zero\n"
	    "F:10: duplicate key \"max_per_client\" (first at line 7)\n");
	load_fails(LISTENER("a", "10465")
	    "max_per_client = 1000001\n"
	    "rate_per_client = 1e3\n"
	    "[global]\n"
	    "max_per_client = 1\n",
	    "F:7: max_per_client: invalid value \"1000001\": expected a number "
	    "from 0 (no limit) to 1000000\n"
	    "F:8: rate_per_client: invalid value \"1e3\": expected a number "
	    "from 0 (no limit) to 1000000\n"
	    "F:10: key \"max_per_client\" belongs in a listener section, not "
	    "[global]\n");
}

/* Issue 14: DNS names, repeated backends, balance and resolve interval. */
static void
test_backends(void **state)
{
	struct config *cfg;
	const struct config_listener *l;

	(void)state;
	cfg = load_ok("[a]\n"
	    "listen = 127.0.0.1:10465\n"
	    "protocol = smtp\n"
	    "backend = postfix:25\n"
	    "backend = 192.0.2.7:2525\n"
	    "backend = [2001:db8::1]:25\n"
	    "backend = dovecot.mail.svc.cluster.local.:143\n"
	    "backend = mail_relay-2:25\n"
	    "backend = unix:/run/smtpd.sock\n"
	    "backend_balance = roundrobin\n"
	    "backend_resolve = 5s\n"
	    "cert = auto\n"
	    "[b]\n"
	    "listen = 127.0.0.1:10466\n"
	    "protocol = smtp\n"
	    "backend = localhost:25\n"
	    "cert = auto\n");
	l = &cfg->listeners[0];
	assert_int_equal(l->nbackends, 6);
	assert_int_equal(l->backends[0].is_name, 1);
	assert_string_equal(l->backends[0].addr.host, "postfix");
	assert_string_equal(l->backends[0].addr.text, "postfix:25");
	assert_int_equal(l->backends[0].port, 25);
	assert_int_equal(l->backends[0].line, 4);
	assert_int_equal(l->backends[0].addr.ss.ss_family, AF_UNSPEC);
	/* The first line stays in l->backend, for what logs it. */
	assert_string_equal(l->backend.text, "postfix:25");
	assert_int_equal(l->backends[1].is_name, 0);
	assert_int_equal(l->backends[1].addr.ss.ss_family, AF_INET);
	assert_int_equal(l->backends[1].port, 2525);
	assert_int_equal(l->backends[2].addr.ss.ss_family, AF_INET6);
	assert_int_equal(l->backends[2].port, 25);
	assert_int_equal(l->backends[3].is_name, 1);
	assert_string_equal(l->backends[3].addr.host,
	    "dovecot.mail.svc.cluster.local.");
	assert_int_equal(l->backends[3].port, 143);
	assert_int_equal(l->backends[4].is_name, 1);
	assert_int_equal(l->backends[5].addr.ss.ss_family, AF_UNIX);
	assert_int_equal(l->backends[5].line, 9);
	assert_int_equal(l->backend_balance, CONFIG_BALANCE_ROUNDROBIN);
	assert_int_equal(l->backend_resolve_ms, 5000);
	/* Defaults; localhost is still taken as 127.0.0.1, not looked up. */
	l = &cfg->listeners[1];
	assert_int_equal(l->nbackends, 1);
	assert_int_equal(l->backends[0].is_name, 0);
	assert_int_equal(l->backends[0].addr.ss.ss_family, AF_INET);
	assert_int_equal(l->backend_balance, CONFIG_BALANCE_FAILOVER);
	assert_int_equal(l->backend_resolve_ms, 30000);
	config_free(cfg);
}

static void
test_backends_bad(void **state)
{

	(void)state;
	load_fails("[a]\n"
	    "listen = 127.0.0.1:10465\n"
	    "protocol = smtp\n"
	    "backend = postfix:25\n"
	    "backend = postfix:25\n"
	    "backend = 127.0.0.1:25\n"
	    "backend = 127.0.0.1:25\n"
	    "backend = -postfix:25\n"
	    "backend = post..fix:25\n"
	    "backend = postfix:\n"
	    "backend = postfix:smtp\n"
	    "backend = postfix:0\n"
	    "backend = 127.1:25\n"
	    "backend = 999.0.0.1:25\n"
	    "backend_balance = random\n"
	    "backend_resolve = 500ms\n"
	    "backend_balance = failover\n"
	    "cert = auto\n"
	    "[b]\n"
	    "listen = 127.0.0.1:10466\n"
	    "protocol = smtp\n"
	    "backend = a:25\nbackend = b:25\nbackend = c:25\nbackend = d:25\n"
	    "backend = e:25\nbackend = f:25\nbackend = g:25\nbackend = h:25\n"
	    "backend = i:25\nbackend = j:25\nbackend = k:25\nbackend = l:25\n"
	    "backend = m:25\nbackend = n:25\nbackend = o:25\nbackend = p:25\n"
	    "backend = q:25\n"
	    "backend_resolve = 0\n"
	    "cert = auto\n",
	    "F:5: backend: invalid value \"postfix:25\": given twice (first at "
	    "line 4)\n"
	    "F:7: backend: invalid value \"127.0.0.1:25\": given twice (first "
	    "at line 6)\n"
	    "F:8: backend: invalid value \"-postfix:25\": expected a DNS name, "
	    "an IPv4 address, [IPv6] or unix:/path before the port\n"
	    "F:9: backend: invalid value \"post..fix:25\": expected a DNS name, "
	    "an IPv4 address, [IPv6] or unix:/path before the port\n"
	    "F:10: backend: invalid value \"postfix:\": missing port\n"
	    "F:11: backend: invalid value \"postfix:smtp\": port must be a "
	    "number from 1 to 65535\n"
	    "F:12: backend: invalid value \"postfix:0\": port must be a number "
	    "from 1 to 65535\n"
	    "F:13: backend: invalid value \"127.1:25\": invalid IPv4 address\n"
	    "F:14: backend: invalid value \"999.0.0.1:25\": invalid IPv4 "
	    "address\n"
	    "F:15: backend_balance: invalid value \"random\": expected failover "
	    "or roundrobin\n"
	    "F:16: backend_resolve: invalid value \"500ms\": must be at least "
	    "1s\n"
	    "F:17: duplicate key \"backend_balance\" (first at line 15)\n"
	    "F:38: backend: invalid value \"q:25\": too many backends (at most "
	    "16 per listener)\n"
	    "F:39: backend_resolve: invalid value \"0\": must be at least 1s\n");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_spec_example),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_global_good),
		cmocka_unit_test(test_global_bad),
		cmocka_unit_test(test_listener_good),
		cmocka_unit_test(test_listener_bad),
		cmocka_unit_test(test_booleans),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_addr_good),
		cmocka_unit_test(test_addr_bad),
		cmocka_unit_test(test_cidr_parse),
		cmocka_unit_test(test_cidr_match),
		cmocka_unit_test(test_accept_proxy),
		cmocka_unit_test(test_line_numbers),
		cmocka_unit_test(test_comments),
		cmocka_unit_test(test_indentation),
		cmocka_unit_test(test_bom_and_crlf),
		cmocka_unit_test(test_sections),
		cmocka_unit_test(test_keys_in_wrong_section),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_cert_key_pairing),
		cmocka_unit_test(test_duplicate_listen),
		cmocka_unit_test(test_combinations),
		cmocka_unit_test(test_line_too_long),
		cmocka_unit_test(test_nul_byte),
		cmocka_unit_test(test_quoted_and_empty),
		cmocka_unit_test(test_no_listener),
		cmocka_unit_test(test_cannot_open),
		cmocka_unit_test(test_proto_name),
		cmocka_unit_test(test_free_null),
		cmocka_unit_test(test_fixture_files),
		cmocka_unit_test(test_client_limits),
		cmocka_unit_test(test_backends),
		cmocka_unit_test(test_backends_bad),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
