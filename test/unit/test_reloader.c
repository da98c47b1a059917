/*
 * Unit tests for certs (reference counts, what certs_load rejects and why)
 * and for the reloader (a change on disk reaches the listener's slot by
 * itself within two seconds, in every layout: rewritten in place, renamed
 * over, a Kubernetes "..data" swap, a certbot live/ link; a bad pair keeps
 * the old set; SIGHUP; every handle closes).
 *
 * Certificates are made here with GnuTLS's x509 API, each with its own
 * common name "CN=<name>", so a set is recognised by certs_subject().
 */
#include <sys/stat.h>

#include <fcntl.h>
#include <limits.h>
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
#include "log.h"
#include "reloader.h"

#define DAY	(24 * 3600)

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
path_of(char *buf, const char *name)
{

	xsnprintf(buf, PATH_MAX, "%s/%s", tmpdir, name);
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

static char *
read_file(const char *path, size_t *len)
{
	FILE *f;
	char *buf;
	long n;

	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	*len = (size_t)n;
	return (buf);
}

/* Copy ${from} over ${to} in place (same inode, truncated and rewritten). */
static void
copy_in_place(const char *from, const char *to)
{
	size_t len;
	char *d = read_file(from, &len);

	write_file(to, d, len);
	free(d);
}

/* Copy ${from} to a temporary name, then rename it over ${to}. */
static void
copy_rename(const char *from, const char *to)
{
	char tmp[PATH_MAX + 8];

	xsnprintf(tmp, sizeof(tmp), "%s.tmp", to);
	copy_in_place(from, tmp);
	assert_int_equal(rename(tmp, to), 0);
}

/*
 * Make an ECDSA key and a self-signed certificate "CN=${name}" valid from
 * ${nb} to ${na}, in DIR/${name}.crt and DIR/${name}.key.
 */
static void
make_pair(const char *name, time_t nb, time_t na)
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
	assert_int_equal(gnutls_x509_crt_set_activation_time(crt, nb), 0);
	assert_int_equal(gnutls_x509_crt_set_expiration_time(crt, na), 0);
	assert_int_equal(gnutls_x509_crt_set_dn_by_oid(crt,
	    GNUTLS_OID_X520_COMMON_NAME, 0, name, strlen(name)), 0);
	assert_int_equal(gnutls_x509_crt_set_subject_alt_name(crt,
	    GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_SET), 0);
	assert_int_equal(gnutls_x509_crt_set_key(crt, key), 0);
	assert_int_equal(gnutls_x509_crt_sign2(crt, crt, key,
	    GNUTLS_DIG_SHA256, 0), 0);

	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d),
	    0);
	xsnprintf(path, sizeof(path), "%s/%s.crt", tmpdir, name);
	write_file(path, d.data, d.size);
	gnutls_free(d.data);
	assert_int_equal(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM,
	    &d), 0);
	xsnprintf(path, sizeof(path), "%s/%s.key", tmpdir, name);
	write_file(path, d.data, d.size);
	gnutls_free(d.data);
	gnutls_x509_crt_deinit(crt);
	gnutls_x509_privkey_deinit(key);
}

static void
make_good(const char *name)
{
	time_t now = time(NULL);

	make_pair(name, now - DAY, now + 90 * DAY);
}

/* More "cert = ...\nkey = ...\n" lines for the next load_config(). */
static char	extra_pairs[2 * PATH_MAX + 32];

/*
 * A configuration with one implicit-TLS listener serving ${cert}/${key}
 * (and extra_pairs).
 */
static struct config *
load_config(const char *cert, const char *key)
{
	char path[PATH_MAX], text[5 * PATH_MAX];
	struct config *cfg;

	xsnprintf(text, sizeof(text),
	    "[global]\nworkers = 1\n"
	    "[imp]\nlisten = 127.0.0.1:1\nprotocol = none\n"
	    "client_tls = implicit\nbackend = 127.0.0.1:2\n"
	    "cert = %s\nkey = %s\n%s", cert, key, extra_pairs);
	path_of(path, "mailtlsd.conf");
	write_file(path, text, strlen(text));
	cfg = config_load(path, stderr);
	assert_non_null(cfg);
	return (cfg);
}

/* certs_load for ${cert}/${key}; the messages go to ${err}. */
static struct certs *
try_load(const char *cert, const char *key, char *err, size_t errlen)
{
	struct config *cfg;
	struct certs *c;
	char *msg = NULL;
	size_t len = 0;
	FILE *f;

	cfg = load_config(cert, key);
	assert_non_null(f = open_memstream(&msg, &len));
	c = certs_load(&cfg->listeners[0], cfg->path, f);
	fclose(f);
	xsnprintf(err, errlen, "%s", msg);
	free(msg);
	config_free(cfg);
	return (c);
}

static int
has_cn(const struct certs *c, const char *name)
{
	char want[128];

	xsnprintf(want, sizeof(want), "CN=%s", name);
	return (certs_count(c) > 0 && strstr(certs_subject(c, 0), want) !=
	    NULL);
}

/* The DER of the leaf in ${c}'s credentials: proves they are still usable. */
static int
cred_has_cn(const struct certs *c, const char *name)
{
	gnutls_datum_t der;
	gnutls_x509_crt_t crt;
	char dn[512], want[128];
	size_t dnlen = sizeof(dn);
	int ok;

	if (gnutls_certificate_get_crt_raw(certs_cred(c), 0, 0, &der) < 0)
		return (0);
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	assert_int_equal(gnutls_x509_crt_import(crt, &der, GNUTLS_X509_FMT_DER),
	    0);
	assert_int_equal(gnutls_x509_crt_get_dn(crt, dn, &dnlen), 0);
	gnutls_x509_crt_deinit(crt);
	xsnprintf(want, sizeof(want), "CN=%s", name);
	ok = strstr(dn, want) != NULL;
	return (ok);
}

static int
setup(void **state)
{
	const char *base = getenv("TMPDIR");

	(void)state;
	extra_pairs[0] = '\0';
	xsnprintf(tmpdir, sizeof(tmpdir), "%s/test_reloader.XXXXXX",
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

/* --- certs ---------------------------------------------------------------- */

static void
refcount_survives_swap(void **state)
{
	char a_crt[PATH_MAX], a_key[PATH_MAX], b_crt[PATH_MAX], b_key[PATH_MAX];
	char err[1024];
	struct certs *a, *b, *held, *now;
	struct certs_slot *slot;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(a_crt, "alpha.crt");
	path_of(a_key, "alpha.key");
	path_of(b_crt, "bravo.crt");
	path_of(b_key, "bravo.key");
	assert_non_null(a = try_load(a_crt, a_key, err, sizeof(err)));
	assert_non_null(b = try_load(b_crt, b_key, err, sizeof(err)));
	assert_int_equal(certs_count(a), 1);
	assert_true(certs_not_after(a, 0) > time(NULL) + 80 * DAY);

	assert_non_null(slot = certs_slot_new(a));
	/* A session of the old set holds a reference... */
	held = certs_slot_get(slot);
	assert_ptr_equal(held, a);
	/* ...the slot moves on to the new set... */
	certs_slot_set(slot, b);
	now = certs_slot_get(slot);
	assert_ptr_equal(now, b);
	assert_true(has_cn(now, "bravo"));
	certs_unref(now);
	/* ...and the old set and its credentials are still whole. */
	assert_true(has_cn(held, "alpha"));
	assert_true(cred_has_cn(held, "alpha"));
	certs_unref(held);	/* the last reference: freed (ASan checks) */
	certs_slot_free(slot);
	certs_unref(NULL);
	certs_slot_free(NULL);
}

static void
failed_load_keeps_old(void **state)
{
	char a_crt[PATH_MAX], a_key[PATH_MAX], bad[PATH_MAX], err[1024];
	struct certs *a, *c;
	struct certs_slot *slot;

	(void)state;
	make_good("alpha");
	path_of(a_crt, "alpha.crt");
	path_of(a_key, "alpha.key");
	path_of(bad, "garbage.crt");
	write_file(bad, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
	    "-----END CERTIFICATE-----\n", 67);
	assert_non_null(a = try_load(a_crt, a_key, err, sizeof(err)));
	assert_non_null(slot = certs_slot_new(a));

	/* What a reload does: load, and swap only on success. */
	c = try_load(bad, a_key, err, sizeof(err));
	assert_null(c);
	assert_non_null(strstr(err, bad));
	assert_non_null(strstr(err, "does not parse"));
	c = certs_slot_get(slot);
	assert_ptr_equal(c, a);
	assert_true(cred_has_cn(c, "alpha"));
	certs_unref(c);
	certs_slot_free(slot);
}

static void
garbage_rejected(void **state)
{
	char a_crt[PATH_MAX], a_key[PATH_MAX], bad[PATH_MAX], empty[PATH_MAX];
	char err[1024];

	(void)state;
	make_good("alpha");
	path_of(a_crt, "alpha.crt");
	path_of(a_key, "alpha.key");
	path_of(bad, "garbage.pem");
	write_file(bad, "hello, I am not PEM\n", 20);
	path_of(empty, "empty.pem");
	write_file(empty, "", 0);

	assert_null(try_load(bad, a_key, err, sizeof(err)));
	assert_non_null(strstr(err, bad));
	assert_null(try_load(empty, a_key, err, sizeof(err)));
	assert_non_null(strstr(err, empty));
	/* A garbage key: the message names the key file. */
	assert_null(try_load(a_crt, bad, err, sizeof(err)));
	assert_non_null(strstr(err, bad));
	/* A missing file. */
	path_of(bad, "missing.pem");
	assert_null(try_load(bad, a_key, err, sizeof(err)));
	assert_non_null(strstr(err, bad));
	assert_non_null(strstr(err, "cannot read"));
}

static void
key_of_other_cert_rejected(void **state)
{
	char a_crt[PATH_MAX], b_key[PATH_MAX], err[1024];

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(a_crt, "alpha.crt");
	path_of(b_key, "bravo.key");
	assert_null(try_load(a_crt, b_key, err, sizeof(err)));
	assert_non_null(strstr(err, a_crt));
	assert_non_null(strstr(err, b_key));
	assert_non_null(strstr(err, "do not match"));
}

static void
expired_rejected(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], err[1024];
	time_t now = time(NULL);

	(void)state;
	make_pair("old", now - 400 * DAY, now - 35 * DAY);
	path_of(crt, "old.crt");
	path_of(key, "old.key");
	assert_null(try_load(crt, key, err, sizeof(err)));
	assert_non_null(strstr(err, crt));
	assert_non_null(strstr(err, "expired"));
}

/* --- reloader ------------------------------------------------------------- */

/* A listener, its reloader and a loop, as main.c has them. */
struct rig {
	uv_loop_t		 loop;
	struct config		*cfg;
	struct listener		 l;
	struct reloader		*r;
	uv_timer_t		 probe, deadline;
	int			(*pred)(struct rig *);
	const char		*want;		/* CN the slot should reach */
	int			 reached;
};

static void
rig_start(struct rig *g, const char *cert, const char *key)
{
	memset(g, 0, sizeof(*g));
	assert_int_equal(uv_loop_init(&g->loop), 0);
	g->cfg = load_config(cert, key);
	assert_int_equal(listener_setup(&g->l, &g->cfg->listeners[0],
	    g->cfg->path, NULL, stderr), 0);
	assert_non_null(g->r = reloader_new(&g->loop, g->cfg, &g->l, 1, NULL));
	assert_int_equal(reloader_nlisteners(g->r), 1);
	assert_string_equal(reloader_listener_name(g->r, 0), "imp");
}

static int
rig_serves(struct rig *g, const char *name)
{
	struct certs *c;
	int ok;

	assert_non_null(c = reloader_certs(g->r, 0));
	ok = has_cn(c, name) && cred_has_cn(c, name);
	certs_unref(c);
	return (ok);
}

static int
serves_want(struct rig *g)
{

	return (rig_serves(g, g->want));
}

static int
has_failed(struct rig *g)
{

	return (reloader_count(g->r, 0, RELOADER_FAILED) > 0);
}

static void
probe_cb(uv_timer_t *t)
{
	struct rig *g = t->data;

	if (g->pred(g)) {
		g->reached = 1;
		uv_stop(&g->loop);
	}
}

static void
deadline_cb(uv_timer_t *t)
{

	uv_stop(t->loop);
}

/*
 * Run the loop until ${pred}(${g}) holds or ${ms} have passed; return the
 * milliseconds it took, or -1.
 */
static int64_t
rig_wait_for(struct rig *g, int (*pred)(struct rig *), uint64_t ms)
{
	uint64_t t0;

	g->pred = pred;
	g->reached = 0;
	uv_update_time(&g->loop);
	t0 = uv_now(&g->loop);
	uv_timer_init(&g->loop, &g->probe);
	uv_timer_init(&g->loop, &g->deadline);
	g->probe.data = g;
	uv_timer_start(&g->probe, probe_cb, 10, 10);
	uv_timer_start(&g->deadline, deadline_cb, ms, 0);
	uv_run(&g->loop, UV_RUN_DEFAULT);
	uv_close((uv_handle_t *)&g->probe, NULL);
	uv_close((uv_handle_t *)&g->deadline, NULL);
	uv_run(&g->loop, UV_RUN_NOWAIT);
	uv_update_time(&g->loop);
	return (g->reached ? (int64_t)(uv_now(&g->loop) - t0) : -1);
}

/* Wait until the listener serves "CN=${name}"; as rig_wait_for. */
static int64_t
rig_wait(struct rig *g, const char *name, uint64_t ms)
{

	g->want = name;
	return (rig_wait_for(g, serves_want, ms));
}

static void
rig_stop(struct rig *g)
{

	reloader_free(g->r);
	reloader_free(NULL);
	/* Every handle of the reloader closes: the loop ends by itself. */
	assert_int_equal(uv_run(&g->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&g->loop), 0);
	listener_teardown(&g->l);
	config_free(g->cfg);
}

/* The SPEC's promise: within two seconds of the change, with no signal. */
static void
expect_within_2s(struct rig *g, const char *name)
{
	int64_t ms = rig_wait(g, name, 4000);

	if (ms < 0 || ms > 2000)
		fail_msg("listener did not switch to %s within 2 s (%lld ms)",
		    name, (long long)ms);
}

static void
reload_in_place(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], src[PATH_MAX];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(crt, "alpha.crt");
	path_of(key, "alpha.key");
	rig_start(&g, crt, key);
	assert_true(rig_serves(&g, "alpha"));

	path_of(src, "bravo.crt");
	copy_in_place(src, crt);
	path_of(src, "bravo.key");
	copy_in_place(src, key);
	expect_within_2s(&g, "bravo");
	/* One reload for the pair, not one per file. */
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 1);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

static void
reload_rename_over(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], src[PATH_MAX];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	make_good("charlie");
	path_of(crt, "live.crt");
	path_of(key, "live.key");
	path_of(src, "alpha.crt");
	copy_in_place(src, crt);
	path_of(src, "alpha.key");
	copy_in_place(src, key);
	rig_start(&g, crt, key);

	path_of(src, "bravo.key");
	copy_rename(src, key);
	path_of(src, "bravo.crt");
	copy_rename(src, crt);
	expect_within_2s(&g, "bravo");

	/* Again: the watch survives the directory entry being replaced. */
	path_of(src, "charlie.crt");
	copy_rename(src, crt);
	path_of(src, "charlie.key");
	copy_rename(src, key);
	expect_within_2s(&g, "charlie");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

/* A Kubernetes secret volume: DIR/tls.crt -> ..data/tls.crt, ..data -> ..TS */
static void
k8s_publish(const char *vol, const char *ts, const char *name)
{
	char dir[PATH_MAX], src[PATH_MAX], dst[PATH_MAX + 16], link[PATH_MAX];

	xsnprintf(dir, sizeof(dir), "%s/%s", vol, ts);
	assert_int_equal(mkdir(dir, 0755), 0);
	xsnprintf(src, sizeof(src), "%s/%s.crt", tmpdir, name);
	xsnprintf(dst, sizeof(dst), "%s/tls.crt", dir);
	copy_in_place(src, dst);
	xsnprintf(src, sizeof(src), "%s/%s.key", tmpdir, name);
	xsnprintf(dst, sizeof(dst), "%s/tls.key", dir);
	copy_in_place(src, dst);
	/* The atomic writer: a new link, renamed over "..data". */
	xsnprintf(link, sizeof(link), "%s/..data_tmp", vol);
	assert_int_equal(symlink(ts, link), 0);
	xsnprintf(dst, sizeof(dst), "%s/..data", vol);
	assert_int_equal(rename(link, dst), 0);
}

static void
reload_k8s_symlink_swap(void **state)
{
	char vol[PATH_MAX], crt[PATH_MAX], key[PATH_MAX], old[PATH_MAX + 32];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	make_good("charlie");
	path_of(vol, "secret");
	assert_int_equal(mkdir(vol, 0755), 0);
	k8s_publish(vol, "..2026_01_01_00_00_00.1", "alpha");
	xsnprintf(crt, sizeof(crt), "%s/tls.crt", vol);
	xsnprintf(key, sizeof(key), "%s/tls.key", vol);
	assert_int_equal(symlink("..data/tls.crt", crt), 0);
	assert_int_equal(symlink("..data/tls.key", key), 0);
	rig_start(&g, crt, key);
	assert_true(rig_serves(&g, "alpha"));

	k8s_publish(vol, "..2026_01_02_00_00_00.2", "bravo");
	/* Kubernetes removes the old directory right after the swap. */
	xsnprintf(old, sizeof(old), "rm -rf '%s/..2026_01_01_00_00_00.1'", vol);
	assert_int_equal(system(old), 0);
	expect_within_2s(&g, "bravo");

	/* The next update is seen through the new directory. */
	k8s_publish(vol, "..2026_01_03_00_00_00.3", "charlie");
	expect_within_2s(&g, "charlie");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

/* certbot: live/NAME/x.pem -> ../../archive/NAME/xN.pem, relinked on renewal */
static void
reload_certbot_live(void **state)
{
	char d[PATH_MAX], src[PATH_MAX], dst[PATH_MAX + 32];
	char crt[PATH_MAX + 32], key[PATH_MAX + 32];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(d, "le");
	assert_int_equal(mkdir(d, 0755), 0);
	path_of(d, "le/live");
	assert_int_equal(mkdir(d, 0700), 0);
	path_of(d, "le/archive");
	assert_int_equal(mkdir(d, 0700), 0);
	path_of(d, "le/live/mail.example.test");
	assert_int_equal(mkdir(d, 0755), 0);
	path_of(d, "le/archive/mail.example.test");
	assert_int_equal(mkdir(d, 0755), 0);
	path_of(src, "alpha.crt");
	xsnprintf(dst, sizeof(dst), "%s/fullchain1.pem", d);
	copy_in_place(src, dst);
	path_of(src, "alpha.key");
	xsnprintf(dst, sizeof(dst), "%s/privkey1.pem", d);
	copy_in_place(src, dst);
	path_of(d, "le/live/mail.example.test");
	xsnprintf(crt, sizeof(crt), "%s/fullchain.pem", d);
	xsnprintf(key, sizeof(key), "%s/privkey.pem", d);
	assert_int_equal(symlink(
	    "../../archive/mail.example.test/fullchain1.pem", crt), 0);
	assert_int_equal(symlink(
	    "../../archive/mail.example.test/privkey1.pem", key), 0);
	rig_start(&g, crt, key);
	assert_true(rig_serves(&g, "alpha"));

	/* Renewal: new files in archive/, then each link replaced. */
	path_of(d, "le/archive/mail.example.test");
	path_of(src, "bravo.crt");
	xsnprintf(dst, sizeof(dst), "%s/fullchain2.pem", d);
	copy_in_place(src, dst);
	path_of(src, "bravo.key");
	xsnprintf(dst, sizeof(dst), "%s/privkey2.pem", d);
	copy_in_place(src, dst);
	assert_int_equal(unlink(crt), 0);
	assert_int_equal(symlink(
	    "../../archive/mail.example.test/fullchain2.pem", crt), 0);
	assert_int_equal(unlink(key), 0);
	assert_int_equal(symlink(
	    "../../archive/mail.example.test/privkey2.pem", key), 0);
	expect_within_2s(&g, "bravo");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

/* A directory link swapped above the files: DIR/current -> v1 | v2. */
static void
reload_parent_dir_link(void **state)
{
	char d[PATH_MAX], src[PATH_MAX], dst[PATH_MAX + 32];
	char crt[PATH_MAX + 32], key[PATH_MAX + 32], link[PATH_MAX + 32];
	const char *v[] = { "v1", "v2" }, *n[] = { "alpha", "bravo" };
	struct rig g;
	int i;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	for (i = 0; i < 2; i++) {
		path_of(d, v[i]);
		assert_int_equal(mkdir(d, 0755), 0);
		xsnprintf(src, sizeof(src), "%s/%s.crt", tmpdir, n[i]);
		xsnprintf(dst, sizeof(dst), "%s/tls.crt", d);
		copy_in_place(src, dst);
		xsnprintf(src, sizeof(src), "%s/%s.key", tmpdir, n[i]);
		xsnprintf(dst, sizeof(dst), "%s/tls.key", d);
		copy_in_place(src, dst);
	}
	path_of(d, "current");
	assert_int_equal(symlink("v1", d), 0);
	xsnprintf(crt, sizeof(crt), "%s/tls.crt", d);
	xsnprintf(key, sizeof(key), "%s/tls.key", d);
	rig_start(&g, crt, key);

	xsnprintf(link, sizeof(link), "%s/current.new", tmpdir);
	assert_int_equal(symlink("v2", link), 0);
	assert_int_equal(rename(link, d), 0);
	expect_within_2s(&g, "bravo");
	rig_stop(&g);
}

static void
reload_bad_pair_keeps_old(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], src[PATH_MAX];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(crt, "live.crt");
	path_of(key, "live.key");
	path_of(src, "alpha.crt");
	copy_in_place(src, crt);
	path_of(src, "alpha.key");
	copy_in_place(src, key);
	rig_start(&g, crt, key);

	/* Only the certificate changes: its key no longer matches. */
	path_of(src, "bravo.crt");
	copy_rename(src, crt);
	if (rig_wait_for(&g, has_failed, 4000) < 0)
		fail_msg("the bad pair was not tried within 4 s");
	assert_true(rig_serves(&g, "alpha"));
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 0);

	/* Then the key follows: the pair is good again. */
	path_of(src, "bravo.key");
	copy_rename(src, key);
	expect_within_2s(&g, "bravo");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 1);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 1);
	rig_stop(&g);
}

/* Two pairs, both broken at once: two reasons, one failed reload. */
static void
reload_two_bad_pairs(void **state)
{
	char a_crt[PATH_MAX], a_key[PATH_MAX], b_crt[PATH_MAX], b_key[PATH_MAX];
	struct rig g;
	struct certs *c;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(a_crt, "alpha.crt");
	path_of(a_key, "alpha.key");
	path_of(b_crt, "bravo.crt");
	path_of(b_key, "bravo.key");
	xsnprintf(extra_pairs, sizeof(extra_pairs), "cert = %s\nkey = %s\n",
	    b_crt, b_key);
	rig_start(&g, a_crt, a_key);
	assert_non_null(c = reloader_certs(g.r, 0));
	assert_int_equal(certs_count(c), 2);
	certs_unref(c);

	write_file(a_key, "garbage\n", 8);
	write_file(b_crt, "garbage\n", 8);
	if (rig_wait_for(&g, has_failed, 4000) < 0)
		fail_msg("the bad pairs were not tried within 4 s");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 1);
	assert_non_null(c = reloader_certs(g.r, 0));
	assert_int_equal(certs_count(c), 2);
	assert_true(has_cn(c, "alpha"));
	assert_true(cred_has_cn(c, "alpha"));
	certs_unref(c);
	rig_stop(&g);
}

static void
reload_sighup(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX];
	struct rig g;
	struct certs *before, *after;

	(void)state;
	make_good("alpha");
	path_of(crt, "alpha.crt");
	path_of(key, "alpha.key");
	rig_start(&g, crt, key);
	before = reloader_certs(g.r, 0);
	/* SIGHUP reloads even when nothing changed. */
	reloader_reload(g.r, "SIGHUP");
	after = reloader_certs(g.r, 0);
	assert_ptr_not_equal(before, after);
	assert_true(has_cn(after, "alpha"));
	assert_true(cred_has_cn(before, "alpha"));
	certs_unref(before);
	certs_unref(after);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 1);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

/* Without any change event, the fingerprint check alone meets 2 s. */
static void
reload_poll_only(void **state)
{
	char vol[PATH_MAX], crt[PATH_MAX + 16], key[PATH_MAX + 16];
	char src[PATH_MAX];
	struct rig g;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	make_good("charlie");
	path_of(vol, "secret");
	assert_int_equal(mkdir(vol, 0755), 0);
	k8s_publish(vol, "..2026_01_01_00_00_00.1", "alpha");
	xsnprintf(crt, sizeof(crt), "%s/tls.crt", vol);
	xsnprintf(key, sizeof(key), "%s/tls.key", vol);
	assert_int_equal(symlink("..data/tls.crt", crt), 0);
	assert_int_equal(symlink("..data/tls.key", key), 0);
	assert_int_equal(setenv(RELOADER_POLL_ONLY_ENV, "1", 1), 0);
	rig_start(&g, crt, key);
	assert_int_equal(unsetenv(RELOADER_POLL_ONLY_ENV), 0);

	k8s_publish(vol, "..2026_01_02_00_00_00.2", "bravo");
	expect_within_2s(&g, "bravo");
	/* In place, through the links. */
	path_of(src, "charlie.crt");
	copy_in_place(src, crt);
	path_of(src, "charlie.key");
	copy_in_place(src, key);
	expect_within_2s(&g, "charlie");
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

static void
reload_ignores_other_files(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], other[PATH_MAX];
	struct rig g;
	int i;

	(void)state;
	make_good("alpha");
	path_of(crt, "alpha.crt");
	path_of(key, "alpha.key");
	path_of(other, "unrelated.txt");
	rig_start(&g, crt, key);
	for (i = 0; i < 5; i++)
		write_file(other, "x", 1);
	/* Longer than a debounce and a poll period: nothing reloads. */
	assert_int_equal(rig_wait(&g, "never", 1600), -1);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 0);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_FAILED), 0);
	rig_stop(&g);
}

/*
 * Issue 13 item 5: the poll reads and hashes a file only when stat() shows
 * it changed (or changed too recently to trust its times): an idle poll
 * reads nothing, and a change is still picked up within 2 s.
 */
static void
poll_reads_only_changed_files(void **state)
{
	char crt[PATH_MAX], key[PATH_MAX], src[PATH_MAX];
	struct rig g;
	uint64_t n0;

	(void)state;
	make_good("alpha");
	make_good("bravo");
	path_of(crt, "alpha.crt");
	path_of(key, "alpha.key");
	assert_int_equal(setenv(RELOADER_POLL_ONLY_ENV, "1", 1), 0);
	rig_start(&g, crt, key);
	assert_int_equal(unsetenv(RELOADER_POLL_ONLY_ENV), 0);
	/* Past the two seconds in which fresh files are read every time. */
	assert_int_equal(rig_wait(&g, "never", 3500), -1);
	n0 = reloader_digests(g.r);
	/* Two more poll periods, the files untouched: stat() only. */
	assert_int_equal(rig_wait(&g, "never", 1700), -1);
	assert_int_equal(reloader_digests(g.r), n0);

	path_of(src, "bravo.crt");
	copy_in_place(src, crt);
	path_of(src, "bravo.key");
	copy_in_place(src, key);
	expect_within_2s(&g, "bravo");
	assert_true(reloader_digests(g.r) > n0);
	assert_int_equal(reloader_count(g.r, 0, RELOADER_OK), 1);
	rig_stop(&g);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(refcount_survives_swap, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(failed_load_keeps_old, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(garbage_rejected, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(key_of_other_cert_rejected,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(expired_rejected, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_in_place, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_rename_over, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_k8s_symlink_swap, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_certbot_live, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_parent_dir_link, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_bad_pair_keeps_old,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(reload_two_bad_pairs, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_sighup, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_poll_only, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(reload_ignores_other_files,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(poll_reads_only_changed_files,
		    setup, teardown),
	};

	log_setup(CONFIG_LOG_INFO, CONFIG_LOG_TEXT);
	return (cmocka_run_group_tests(tests, NULL, NULL));
}
