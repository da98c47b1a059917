/*
 * Unit tests for metrics (per-worker cells summed on read, the gauge going
 * up and down, writers on their own threads) and for the exposition text
 * that metrics_http serves: byte-exact for a known state, label values
 * escaped (backslash, double quote, line feed), and the certificate families
 * fed by a real reloader (expiry and subject of each pair, the earliest of
 * those sharing a subject, reload counts by result).
 */
#include <sys/stat.h>

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <uv.h>

#include "certs.h"
#include "config.h"
#include "listener.h"
#include "metrics.h"
#include "metrics_http.h"
#include "reloader.h"

static char	tmpdir[PATH_MAX];

/* snprintf that fails the test instead of truncating. */
static void __attribute__((format(printf, 3, 4)))
xsnprintf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	assert_true(n >= 0 && (size_t)n < len);
}

static void
write_file(const char *path, const void *data, size_t len)
{
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
}

/* --- counters ------------------------------------------------------------- */

static void
sums_across_workers(void **state)
{
	struct metrics *m;

	(void)state;
	assert_non_null(m = metrics_new(3, 2));
	assert_int_equal(metrics_nworkers(m), 3);
	assert_int_equal(metrics_nlisteners(m), 2);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_TOTAL), 0);
	metrics_add(m, 0, 0, METRIC_CONN_TOTAL, 2);
	metrics_add(m, 1, 0, METRIC_CONN_TOTAL, 3);
	metrics_add(m, 2, 0, METRIC_CONN_TOTAL, 5);
	metrics_add(m, 2, 1, METRIC_CONN_TOTAL, 7);
	metrics_add(m, 1, 1, METRIC_BYTES_OUT, INT64_C(1) << 40);
	metrics_add(m, 2, 1, METRIC_BYTES_OUT, 1);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_TOTAL), 10);
	assert_int_equal(metrics_get(m, 1, METRIC_CONN_TOTAL), 7);
	assert_int_equal(metrics_get(m, 1, METRIC_BYTES_OUT),
	    (INT64_C(1) << 40) + 1);
	/* Neighbouring cells are untouched. */
	assert_int_equal(metrics_get(m, 0, METRIC_BYTES_OUT), 0);
	assert_int_equal(metrics_get(m, 1, METRIC_BYTES_IN), 0);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_ACTIVE), 0);
	metrics_free(m);
}

static void
gauge_up_and_down(void **state)
{
	struct metrics *m;

	(void)state;
	assert_non_null(m = metrics_new(2, 1));
	metrics_add(m, 0, 0, METRIC_CONN_ACTIVE, 1);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, 1);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, 1);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_ACTIVE), 3);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, -1);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_ACTIVE), 2);
	metrics_add(m, 0, 0, METRIC_CONN_ACTIVE, -1);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, -1);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_ACTIVE), 0);
	metrics_free(m);
}

static void
null_is_a_no_op(void **state)
{

	(void)state;
	metrics_add(NULL, 0, 0, METRIC_CONN_TOTAL, 1);
	assert_int_equal(metrics_get(NULL, 0, METRIC_CONN_TOTAL), 0);
	metrics_free(NULL);
	assert_null(metrics_new(0, 1));
}

#define NTHREADS	4
#define NADDS		200000

struct writer {
	pthread_t	 t;
	struct metrics	*m;
	size_t		 id;
};

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	int i;

	for (i = 0; i < NADDS; i++) {
		metrics_add(w->m, w->id, 0, METRIC_CONN_TOTAL, 1);
		metrics_add(w->m, w->id, 0, METRIC_CONN_ACTIVE, 1);
		metrics_add(w->m, w->id, 1, METRIC_BYTES_IN, 3);
		metrics_add(w->m, w->id, 0, METRIC_CONN_ACTIVE, -1);
	}
	return (NULL);
}

/* Each worker on its own thread, a reader meanwhile: nothing is lost. */
static void
writers_on_threads(void **state)
{
	struct writer w[NTHREADS];
	struct metrics *m;
	int64_t last = 0, now;
	size_t i;

	(void)state;
	assert_non_null(m = metrics_new(NTHREADS, 2));
	for (i = 0; i < NTHREADS; i++) {
		w[i].m = m;
		w[i].id = i;
		assert_int_equal(pthread_create(&w[i].t, NULL, writer_main,
		    &w[i]), 0);
	}
	/* A scrape while they run sees counters that never go back. */
	for (i = 0; i < 1000; i++) {
		now = metrics_get(m, 0, METRIC_CONN_TOTAL);
		assert_true(now >= last);
		assert_true(metrics_get(m, 0, METRIC_CONN_ACTIVE) >= 0);
		last = now;
	}
	for (i = 0; i < NTHREADS; i++)
		assert_int_equal(pthread_join(w[i].t, NULL), 0);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_TOTAL),
	    NTHREADS * NADDS);
	assert_int_equal(metrics_get(m, 1, METRIC_BYTES_IN),
	    3 * NTHREADS * NADDS);
	assert_int_equal(metrics_get(m, 0, METRIC_CONN_ACTIVE), 0);
	metrics_free(m);
}

/* --- exposition text ------------------------------------------------------ */

#define HELP_TYPE(name, help, type)					\
	"# HELP " name " " help "\n# TYPE " name " " type "\n"

#define HT_BUILD HELP_TYPE("mailtlsd_build_info", "Always 1; the labels "\
	"tell the versions of mailtlsd and of the libraries it runs with.",\
	"gauge")
#define HT_CONN HELP_TYPE("mailtlsd_connections_total",			\
	"Client connections accepted.", "counter")
#define HT_ACTIVE HELP_TYPE("mailtlsd_connections_active",		\
	"Client connections open now.", "gauge")
#define HT_HS HELP_TYPE("mailtlsd_tls_handshakes_total",		\
	"Client TLS handshakes completed (implicit TLS and STARTTLS).",	\
	"counter")
#define HT_HSF HELP_TYPE("mailtlsd_tls_handshake_failures_total",	\
	"Client TLS handshakes that failed, by reason.", "counter")
#define HT_STARTTLS HELP_TYPE("mailtlsd_starttls_upgrades_total",	\
	"Client connections upgraded to TLS by STARTTLS or STLS.", "counter")
#define HT_BACKEND HELP_TYPE("mailtlsd_backend_errors_total",		\
	"Backend failures: connect (unreachable, refused, timeout) or tls "\
	"(STARTTLS, handshake, verification).", "counter")
#define HT_BYTES HELP_TYPE("mailtlsd_bytes_total",			\
	"Plaintext bytes relayed, by direction.", "counter")
#define HT_CLIMIT HELP_TYPE("mailtlsd_client_limit_refusals_total",	\
	"Connections refused because their client address was over a "	\
	"limit, by limit.", "counter")
#define HT_NOTAFTER HELP_TYPE("mailtlsd_cert_not_after_seconds",	\
	"Expiry (not_after) of each certificate served, in seconds since "\
	"the Unix epoch; the earliest one when several share a subject.",\
	"gauge")
#define HT_RELOADS HELP_TYPE("mailtlsd_cert_reloads_total",		\
	"Certificate reloads of TLS listeners, by result (a failed reload "\
	"keeps the old certificates).", "counter")

/* The name of listener 1, and how it must appear as a label value. */
#define ODD_NAME	"we\"ird\\na\nme"
#define ODD_LABEL	"we\\\"ird\\\\na\\nme"

static const char expected_text[] =
	HT_BUILD
	"mailtlsd_build_info{version=\"1.2.3\",gnutls=\"3.7.9 \\\"x\\\"\","
	"libuv=\"1.44.2\"} 1\n"
	HT_CONN
	"mailtlsd_connections_total{listener=\"smtps\"} 10\n"
	"mailtlsd_connections_total{listener=\"" ODD_LABEL "\"} 0\n"
	HT_ACTIVE
	"mailtlsd_connections_active{listener=\"smtps\"} 2\n"
	"mailtlsd_connections_active{listener=\"" ODD_LABEL "\"} 0\n"
	HT_HS
	"mailtlsd_tls_handshakes_total{listener=\"smtps\"} 7\n"
	"mailtlsd_tls_handshakes_total{listener=\"" ODD_LABEL "\"} 0\n"
	HT_HSF
	"mailtlsd_tls_handshake_failures_total{listener=\"smtps\","
	"reason=\"timeout\"} 0\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"smtps\","
	"reason=\"alert\"} 1\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"smtps\","
	"reason=\"alpn\"} 0\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"smtps\","
	"reason=\"client_cert\"} 3\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"smtps\","
	"reason=\"other\"} 2\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"" ODD_LABEL "\","
	"reason=\"timeout\"} 4\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"" ODD_LABEL "\","
	"reason=\"alert\"} 0\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"" ODD_LABEL "\","
	"reason=\"alpn\"} 5\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"" ODD_LABEL "\","
	"reason=\"client_cert\"} 0\n"
	"mailtlsd_tls_handshake_failures_total{listener=\"" ODD_LABEL "\","
	"reason=\"other\"} 0\n"
	HT_STARTTLS
	"mailtlsd_starttls_upgrades_total{listener=\"smtps\"} 0\n"
	"mailtlsd_starttls_upgrades_total{listener=\"" ODD_LABEL "\"} 4\n"
	HT_BACKEND
	"mailtlsd_backend_errors_total{listener=\"smtps\",kind=\"connect\"} 0\n"
	"mailtlsd_backend_errors_total{listener=\"smtps\",kind=\"tls\"} 0\n"
	"mailtlsd_backend_errors_total{listener=\"" ODD_LABEL "\","
	"kind=\"connect\"} 1\n"
	"mailtlsd_backend_errors_total{listener=\"" ODD_LABEL "\","
	"kind=\"tls\"} 2\n"
	HT_BYTES
	"mailtlsd_bytes_total{listener=\"smtps\","
	"direction=\"client_to_backend\"} 0\n"
	"mailtlsd_bytes_total{listener=\"smtps\","
	"direction=\"backend_to_client\"} 0\n"
	"mailtlsd_bytes_total{listener=\"" ODD_LABEL "\","
	"direction=\"client_to_backend\"} 1234567890123\n"
	"mailtlsd_bytes_total{listener=\"" ODD_LABEL "\","
	"direction=\"backend_to_client\"} 42\n"
	HT_CLIMIT
	"mailtlsd_client_limit_refusals_total{listener=\"smtps\","
	"limit=\"max_per_client\"} 300\n"
	"mailtlsd_client_limit_refusals_total{listener=\"smtps\","
	"limit=\"rate_per_client\"} 0\n"
	"mailtlsd_client_limit_refusals_total{listener=\"" ODD_LABEL "\","
	"limit=\"max_per_client\"} 0\n"
	"mailtlsd_client_limit_refusals_total{listener=\"" ODD_LABEL "\","
	"limit=\"rate_per_client\"} 9\n"
	HT_NOTAFTER
	HT_RELOADS;

static void
exposition_is_byte_exact(void **state)
{
	static const char *const names[] = { "smtps", ODD_NAME };
	struct metrics_src src;
	struct metrics *m;
	size_t len;
	char *text;

	(void)state;
	assert_non_null(m = metrics_new(3, 2));
	metrics_add(m, 0, 0, METRIC_CONN_TOTAL, 2);
	metrics_add(m, 1, 0, METRIC_CONN_TOTAL, 3);
	metrics_add(m, 2, 0, METRIC_CONN_TOTAL, 5);
	metrics_add(m, 0, 0, METRIC_CONN_ACTIVE, 1);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, 1);
	metrics_add(m, 1, 0, METRIC_CONN_ACTIVE, -1);
	metrics_add(m, 2, 0, METRIC_CONN_ACTIVE, 1);
	metrics_add(m, 2, 0, METRIC_HANDSHAKES, 7);
	metrics_add(m, 0, 0, METRIC_HS_FAIL_ALERT, 1);
	metrics_add(m, 1, 0, METRIC_HS_FAIL_OTHER, 2);
	metrics_add(m, 2, 0, METRIC_HS_FAIL_CLIENT_CERT, 3);
	metrics_add(m, 0, 1, METRIC_HS_FAIL_TIMEOUT, 4);
	metrics_add(m, 1, 1, METRIC_HS_FAIL_ALPN, 5);
	metrics_add(m, 1, 1, METRIC_STARTTLS, 4);
	metrics_add(m, 0, 1, METRIC_BACKEND_CONNECT_ERR, 1);
	metrics_add(m, 2, 1, METRIC_BACKEND_TLS_ERR, 2);
	metrics_add(m, 0, 1, METRIC_BYTES_IN, INT64_C(1234567890000));
	metrics_add(m, 2, 1, METRIC_BYTES_IN, 123);
	metrics_add(m, 1, 1, METRIC_BYTES_OUT, 42);
	metrics_add(m, 0, 0, METRIC_CLIMIT_MAX, 100);
	metrics_add(m, 2, 0, METRIC_CLIMIT_MAX, 200);
	metrics_add(m, 1, 1, METRIC_CLIMIT_RATE, 9);

	memset(&src, 0, sizeof(src));
	src.metrics = m;
	src.names = names;
	src.nlisteners = 2;
	src.reloader = NULL;
	src.version = "1.2.3";
	src.gnutls = "3.7.9 \"x\"";
	src.libuv = "1.44.2";
	assert_non_null(text = metrics_http_render(&src, &len));
	assert_string_equal(text, expected_text);
	assert_int_equal(len, strlen(expected_text));
	free(text);
	metrics_free(m);
}

/* Without counters (no metrics object), only the families' heads remain. */
static void
exposition_without_counters(void **state)
{
	struct metrics_src src;
	size_t len;
	char *text;

	(void)state;
	memset(&src, 0, sizeof(src));
	src.version = "v";
	assert_non_null(text = metrics_http_render(&src, &len));
	assert_string_equal(text,
	    HT_BUILD "mailtlsd_build_info{version=\"v\",gnutls=\"\","
	    "libuv=\"\"} 1\n"
	    HT_CONN HT_ACTIVE HT_HS HT_HSF HT_STARTTLS HT_BACKEND HT_BYTES
	    HT_CLIMIT HT_NOTAFTER HT_RELOADS);
	free(text);
}

/* --- certificates through a real reloader --------------------------------- */

/*
 * Make a self-signed ECDSA certificate with common name ${cn}, expiring at
 * ${na}, in DIR/${file}.crt and DIR/${file}.key.
 */
static void
make_pair(const char *file, const char *cn, time_t na)
{
	static unsigned char serial = 1;
	gnutls_x509_privkey_t key;
	gnutls_x509_crt_t crt;
	gnutls_datum_t d;
	char path[PATH_MAX];

	assert_int_equal(gnutls_x509_privkey_init(&key), 0);
	assert_int_equal(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
	    GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0), 0);
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	serial++;
	assert_int_equal(gnutls_x509_crt_set_version(crt, 3), 0);
	assert_int_equal(gnutls_x509_crt_set_serial(crt, &serial, 1), 0);
	assert_int_equal(gnutls_x509_crt_set_activation_time(crt,
	    time(NULL) - 3600), 0);
	assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, na), 0);
	assert_int_equal(gnutls_x509_crt_set_dn_by_oid(crt,
	    GNUTLS_OID_X520_COMMON_NAME, 0, cn, strlen(cn)), 0);
	assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt,
	    GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_SET), 0);
	assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
	assert_int_equal(gnutls_x509_crt_sign2(crt, crt, key,
	    GNUTLS_DIG_SHA256, 0), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d),
	    0);
	xsnprintf(path, sizeof(path), "%s/%s.crt", tmpdir, file);
	write_file(path, d.data, d.size);
	gnutls_free(d.data);
	assert_int_equal(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM,
	    &d), 0);
	xsnprintf(path, sizeof(path), "%s/%s.key", tmpdir, file);
	write_file(path, d.data, d.size);
	gnutls_free(d.data);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
}

/* Fixed expiry times, so that the text can be written out. */
#define NA_LATE		((time_t)4102444800)	/* 2100-01-01 */
#define NA_EARLY	((time_t)4000000000)	/* 2096-10-02 */
#define NA_ODD		((time_t)3999999999)

static void
cert_families_from_reloader(void **state)
{
	static const char *const names[] = { "plain", "imp" };
	char path[PATH_MAX], text[8 * PATH_MAX];
	struct metrics_src src;
	struct listener ls[2];
	struct config *cfg;
	struct reloader *r;
	uv_loop_t loop;
	const char *certs;
	size_t len, i;
	char *out;

	(void)state;
	/* Two pairs with one subject (as RSA + ECDSA are), and an odd one. */
	make_pair("a1", "alpha.example", NA_LATE);
	make_pair("a2", "alpha.example", NA_EARLY);
	make_pair("odd", "q\"uo\\te", NA_ODD);
	xsnprintf(text, sizeof(text),
	    "[global]\nworkers = 1\n"
	    "[plain]\nlisten = 127.0.0.1:1\nprotocol = none\n"
	    "client_tls = none\nbackend = 127.0.0.1:2\n"
	    "backend_tls = implicit\nbackend_verify = no\n"
	    "[imp]\nlisten = 127.0.0.1:3\nprotocol = none\n"
	    "client_tls = implicit\nbackend = 127.0.0.1:2\n"
	    "cert = %s/a1.crt\nkey = %s/a1.key\n"
	    "cert = %s/odd.crt\nkey = %s/odd.key\n"
	    "cert = %s/a2.crt\nkey = %s/a2.key\n",
	    tmpdir, tmpdir, tmpdir, tmpdir, tmpdir, tmpdir);
	xsnprintf(path, sizeof(path), "%s/mailtlsd.conf", tmpdir);
	write_file(path, text, strlen(text));
	assert_non_null(cfg = config_load(path, stderr));
	assert_int_equal(cfg->nlisteners, 2);
	memset(ls, 0, sizeof(ls));
	for (i = 0; i < 2; i++) {
		assert_int_equal(listener_setup(&ls[i], &cfg->listeners[i],
		    cfg->path, NULL, stderr), 0);
		ls[i].index = i;
	}
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_non_null(r = reloader_new(&loop, cfg, ls, 2, NULL));

	/* One good reload, then one that fails (garbage key). */
	reloader_reload(r, "test");
	xsnprintf(path, sizeof(path), "%s/a2.key", tmpdir);
	write_file(path, "garbage\n", 8);
	reloader_reload(r, "test");
	assert_int_equal(reloader_count(r, 1, RELOADER_OK), 1);
	assert_int_equal(reloader_count(r, 1, RELOADER_FAILED), 1);

	memset(&src, 0, sizeof(src));
	src.names = names;
	src.nlisteners = 2;
	src.reloader = r;
	src.version = "v";
	assert_non_null(out = metrics_http_render(&src, &len));
	assert_int_equal(strlen(out), len);
	/*
	 * The DN is as GnuTLS writes it (RFC 4514: CN=q\"uo\\te), and that
	 * is escaped once more for the label.  The listener without TLS has
	 * no certificate series.
	 */
	assert_non_null(certs = strstr(out,
	    "# HELP mailtlsd_cert_not_after_seconds"));
	assert_string_equal(certs, HT_NOTAFTER
	    "mailtlsd_cert_not_after_seconds{listener=\"imp\","
	    "subject=\"CN=alpha.example\"} 4000000000\n"
	    "mailtlsd_cert_not_after_seconds{listener=\"imp\","
	    "subject=\"CN=q\\\\\\\"uo\\\\\\\\te\"} 3999999999\n"
	    HT_RELOADS
	    "mailtlsd_cert_reloads_total{listener=\"imp\",result=\"ok\"} 1\n"
	    "mailtlsd_cert_reloads_total{listener=\"imp\",result=\"failed\"} "
	    "1\n");
	free(out);

	reloader_free(r);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
	for (i = 0; i < 2; i++)
		listener_teardown(&ls[i]);
	config_free(cfg);
}

static int
setup(void **state)
{
	const char *base = getenv("TMPDIR");

	(void)state;
	xsnprintf(tmpdir, sizeof(tmpdir), "%s/test_metrics.XXXXXX",
	    base != NULL ? base : "/tmp");
	assert_non_null(mkdtemp(tmpdir));
	return (0);
}

static int
teardown(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	xsnprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	assert_int_equal(system(cmd), 0);
	return (0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sums_across_workers),
		cmocka_unit_test(gauge_up_and_down),
		cmocka_unit_test(null_is_a_no_op),
		cmocka_unit_test(writers_on_threads),
		cmocka_unit_test(exposition_is_byte_exact),
		cmocka_unit_test(exposition_without_counters),
		cmocka_unit_test_setup_teardown(cert_families_from_reloader,
		    setup, teardown),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
