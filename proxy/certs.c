#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>

#include "certs.h"
#include "log.h"

#define CERTS_MAX_PAIRS		64
#define CERTS_EXPIRY_WARN	(14 * 24 * 3600)
/* A PEM file bigger than this is not a certificate, key or CA bundle. */
#define CERTS_FILE_MAX		(16 * 1024 * 1024)

struct certs {
	atomic_int				refs;
	gnutls_certificate_credentials_t	cred;
	size_t					npairs;
	time_t					not_after[CERTS_MAX_PAIRS];
	char					*subject[CERTS_MAX_PAIRS];
	unsigned char				policy[CERTS_POLICY_LEN];
};

struct certs_slot {
	pthread_mutex_t	 mu;
	struct certs	*cur;
};

/* Besides the owner, this group may read keys: [global] user's. */
static gid_t key_gid = (gid_t)-1;

static void
certs_free(struct certs *c)
{
	size_t i;

	if (c->cred != NULL)
		gnutls_certificate_free_credentials(c->cred);
	for (i = 0; i < c->npairs; i++)
		free(c->subject[i]);
	free(c);
}

static char *
crt_subject(gnutls_x509_crt_t crt)
{
	gnutls_datum_t dn;
	char *s;

	if (gnutls_x509_crt_get_dn3(crt, &dn, 0) < 0)
		return (strdup(""));
	s = strndup((const char *)dn.data, dn.size);
	gnutls_free(dn.data);
	return (s);
}

/*
 * Read ${path} whole into ${out} (free with gnutls_free) with one open(2),
 * and its status into ${stp}.  Return 0, or -1 with errno set.
 */
static int
read_file(const char *path, gnutls_datum_t *out, struct stat *stp)
{
	struct stat st;
	unsigned char *buf = NULL;
	size_t len = 0;
	ssize_t n;
	int fd, e;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return (-1);
	if (fstat(fd, &st) < 0)
		goto err;
	if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
		errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
		goto err;
	}
	*stp = st;
	/* st_size is only a hint: the file may be growing. */
	for (;;) {
		unsigned char *nb;
		size_t cap = len + 65536;

		if (cap > CERTS_FILE_MAX + 1)
			cap = CERTS_FILE_MAX + 1;
		if ((nb = gnutls_realloc(buf, cap + 1)) == NULL) {
			errno = ENOMEM;
			goto err;
		}
		buf = nb;
		do
			n = read(fd, buf + len, cap - len);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			goto err;
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CERTS_FILE_MAX) {
			errno = EFBIG;
			goto err;
		}
	}
	close(fd);
	buf[len] = '\0';
	out->data = buf;
	out->size = (unsigned int)len;
	return (0);
err:
	e = errno;
	if (buf != NULL) {
		gnutls_memset(buf, 0, len);
		gnutls_free(buf);
	}
	close(fd);
	errno = e;
	return (-1);
}

static void
wipe(gnutls_datum_t *d)
{

	if (d->data != NULL) {
		gnutls_memset(d->data, 0, d->size);
		gnutls_free(d->data);
	}
	d->data = NULL;
	d->size = 0;
}

/*
 * Load pair ${p} into ${c}: each file is read once, the chain is parsed
 * once and its leaf checked (parses, has not expired, matches the key), and
 * the parsed chain and key are handed to GnuTLS.  On success record the
 * leaf's expiry and subject as pair c->npairs.
 */
static int
load_pair(struct certs *c, const struct config_certpair *p,
    const char *cfgpath, const char *lname, FILE *errf)
{
	gnutls_datum_t data = { NULL, 0 };
	gnutls_x509_crt_t *crts = NULL;
	gnutls_x509_privkey_t key = NULL;
	unsigned int ncrts = 0, i;
	time_t exp, now = time(NULL);
	struct stat st;
	int rc, ret = -1;

	if (read_file(p->cert, &data, &st) < 0) {
		fprintf(errf, "%s:%d: cannot read certificate %s: %s\n",
		    cfgpath, p->line, p->cert, strerror(errno));
		return (-1);
	}
	rc = gnutls_x509_crt_list_import2(&crts, &ncrts, &data,
	    GNUTLS_X509_FMT_PEM, 0);
	wipe(&data);
	if (rc < 0 || ncrts == 0) {
		fprintf(errf, "%s:%d: certificate %s does not parse: %s\n",
		    cfgpath, p->line, p->cert,
		    rc < 0 ? gnutls_strerror(rc) : "no certificate in file");
		return (-1);
	}
	exp = gnutls_x509_crt_get_expiration_time(crts[0]);
	if (exp != (time_t)-1 && exp < now) {
		char when[32];
		struct tm tm;

		gmtime_r(&exp, &tm);
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		fprintf(errf, "%s:%d: certificate %s expired on %s\n",
		    cfgpath, p->line, p->cert, when);
		goto out;
	}
	if (read_file(p->key, &data, &st) < 0) {
		fprintf(errf, "%s:%d: cannot use certificate %s with key "
		    "%s: cannot read the key: %s\n", cfgpath, p->line, p->cert,
		    p->key, strerror(errno));
		goto out;
	}
	if (certs_key_exposed(&st))
		log_warn("key_permissions", "listener %s: key %s is readable "
		    "by %s (mode %04o); make it 0600 and owned by the user "
		    "mailtlsd runs as (or 0640 in that user's group)", lname,
		    p->key, (st.st_mode & S_IROTH) ? "others" : "its group",
		    (unsigned)(st.st_mode & 07777));
	if ((rc = gnutls_x509_privkey_init(&key)) >= 0)
		rc = gnutls_x509_privkey_import2(key, &data,
		    GNUTLS_X509_FMT_PEM, NULL, 0);
	wipe(&data);
	if (rc < 0) {
		fprintf(errf, "%s:%d: cannot use certificate %s with key "
		    "%s: the key does not parse: %s\n", cfgpath, p->line,
		    p->cert, p->key, gnutls_strerror(rc));
		goto out;
	}
	/* GnuTLS copies both and checks that the key matches the leaf. */
	rc = gnutls_certificate_set_x509_key(c->cred, crts, ncrts, key);
	if (rc < 0) {
		fprintf(errf, "%s:%d: cannot use certificate %s with key "
		    "%s: %s\n", cfgpath, p->line, p->cert, p->key,
		    gnutls_strerror(rc));
		goto out;
	}
	if (exp != (time_t)-1 && exp - now < CERTS_EXPIRY_WARN)
		log_warn("cert_expiring", "listener %s: certificate %s expires "
		    "in %lld days", lname, p->cert,
		    (long long)((exp - now) / 86400));
	c->not_after[c->npairs] = exp;
	c->subject[c->npairs] = crt_subject(crts[0]);
	ret = 0;
out:
	if (key != NULL)
		gnutls_x509_privkey_deinit(key);
	for (i = 0; i < ncrts; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
	return (ret);
}

/*
 * What identifies the client-certificate policy that sessions made with
 * these credentials passed: the listener, its client_verify, and the exact
 * client_ca contents (${ca}, NULL: none).  Session tickets are encrypted
 * under a key derived from it (tlsio.c), so a session is only resumed where
 * the same policy would have admitted it, and a new client_ca ends the
 * resumption of sessions the old one admitted.
 */
static int
make_policy(struct certs *c, const struct config_listener *l,
    const gnutls_datum_t *ca)
{
	static const char label[] = "mailtlsd client-certificate policy v1";
	unsigned char cadig[32], v[2];
	gnutls_hash_hd_t h;

	memset(cadig, 0, sizeof(cadig));
	if (ca != NULL && gnutls_hash_fast(GNUTLS_DIG_SHA256, ca->data,
	    ca->size, cadig) < 0)
		return (-1);
	v[0] = (unsigned char)l->client_verify;
	v[1] = ca != NULL;
	if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0)
		return (-1);
	/* Each part is NUL-ended or fixed-size: no two inputs collide. */
	(void)gnutls_hash(h, label, sizeof(label));
	(void)gnutls_hash(h, l->name, strlen(l->name) + 1);
	(void)gnutls_hash(h, v, sizeof(v));
	(void)gnutls_hash(h, cadig, sizeof(cadig));
	gnutls_hash_deinit(h, c->policy);
	return (0);
}

/*
 * "cert = auto": an ECDSA P-256 key and a self-signed certificate for the
 * listener's hostname, valid for a year, never written to disk.
 */
static int
make_auto(struct certs *c, const char *hostname)
{
	gnutls_x509_privkey_t key = NULL;
	gnutls_x509_crt_t crt = NULL;
	unsigned char serial[16];
	time_t now = time(NULL);
	int ret = -1;

	if (gnutls_x509_privkey_init(&key) < 0 ||
	    gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA,
	    GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0) < 0)
		goto out;
	if (gnutls_x509_crt_init(&crt) < 0)
		goto out;
	if (gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)) < 0)
		goto out;
	serial[0] &= 0x7f;
	if (gnutls_x509_crt_set_version(crt, 3) < 0 ||
	    gnutls_x509_crt_set_serial(crt, serial, sizeof(serial)) < 0 ||
	    gnutls_x509_crt_set_activation_time(crt, now - 3600) < 0 ||
	    gnutls_x509_crt_set_expiration_time(crt, now + 365 * 86400) < 0 ||
	    gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0,
	    hostname, strlen(hostname)) < 0 ||
	    gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME,
	    hostname, strlen(hostname), GNUTLS_FSAN_APPEND) < 0 ||
	    gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME,
	    "localhost", 9, GNUTLS_FSAN_APPEND) < 0 ||
	    gnutls_x509_crt_set_key(crt, key) < 0 ||
	    gnutls_x509_crt_set_key_usage(crt,
	    GNUTLS_KEY_DIGITAL_SIGNATURE) < 0 ||
	    gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER,
	    0) < 0 ||
	    gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0) < 0)
		goto out;
	if (gnutls_certificate_set_x509_key(c->cred, &crt, 1, key) < 0)
		goto out;
	c->not_after[c->npairs] = now + 365 * 86400;
	c->subject[c->npairs] = crt_subject(crt);
	ret = 0;
out:
	if (crt != NULL)
		gnutls_x509_crt_deinit(crt);
	if (key != NULL)
		gnutls_x509_privkey_deinit(key);
	return (ret);
}

/**
 * certs_load(l, cfgpath, errf):
 * Build the credentials for listener ${l}: read and check every pair (the
 * chain parses, the key matches the leaf, the leaf has not expired), make a
 * throw-away self-signed certificate for "cert = auto", and load client_ca.
 * Each file is read once.  A key that certs_key_exposed() is warned about
 * in the log.
 * Problems are written to ${errf} as "CFGPATH:LINE: message" lines.  Return
 * a set holding one reference for the caller, or NULL.
 */
struct certs *
certs_load(const struct config_listener *l, const char *cfgpath, FILE *errf)
{
	struct certs *c;
	size_t i;
	int rc, bad = 0;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		goto err0;
	atomic_init(&c->refs, 1);
	if (gnutls_certificate_allocate_credentials(&c->cred) < 0)
		goto err1;
	if (l->ncerts > CERTS_MAX_PAIRS) {
		fprintf(errf, "%s:%d: too many certificates (at most %d)\n",
		    cfgpath, l->certs[CERTS_MAX_PAIRS].line, CERTS_MAX_PAIRS);
		goto err1;
	}
	for (i = 0; i < l->ncerts; i++) {
		const struct config_certpair *p = &l->certs[i];

		if (p->key == NULL) {
			if (make_auto(c, l->hostname) < 0) {
				fprintf(errf, "%s:%d: cannot make a self-signed "
				    "certificate\n", cfgpath, p->line);
				bad = 1;
				continue;
			}
			log_warn("cert_auto", "listener %s: serving a throw-away "
			    "self-signed certificate for %s (cert = auto); "
			    "clients cannot verify it", l->name, l->hostname);
			c->npairs++;
			continue;
		}
		if (load_pair(c, p, cfgpath, l->name, errf) < 0) {
			bad = 1;
			continue;
		}
		c->npairs++;
	}
	if (l->client_ca != NULL) {
		gnutls_datum_t ca = { NULL, 0 };
		struct stat st;

		rc = 0;
		if (read_file(l->client_ca, &ca, &st) < 0)
			fprintf(errf, "%s:%d: cannot read client_ca %s: %s\n",
			    cfgpath, l->client_ca_line, l->client_ca,
			    strerror(errno));
		else if ((rc = gnutls_certificate_set_x509_trust_mem(c->cred,
		    &ca, GNUTLS_X509_FMT_PEM)) <= 0)
			fprintf(errf, "%s:%d: cannot read client_ca %s: %s\n",
			    cfgpath, l->client_ca_line, l->client_ca,
			    rc < 0 ? gnutls_strerror(rc) :
			    "no certificate in file");
		if (rc <= 0 || make_policy(c, l, &ca) < 0)
			bad = 1;
		gnutls_free(ca.data);
	} else if (make_policy(c, l, NULL) < 0)
		bad = 1;
	if (bad)
		goto err1;
	return (c);

err1:
	certs_free(c);
err0:
	return (NULL);
}

/**
 * certs_load_trust(l, cfgpath, errf):
 * Build the credentials toward listener ${l}'s backend: the CA that its
 * certificate must chain to (backend_ca, or the system's trust store), none
 * when backend_verify is off.  Problems are written to ${errf} as
 * "CFGPATH:LINE: message".  Return a set with one reference, or NULL.
 */
struct certs *
certs_load_trust(const struct config_listener *l, const char *cfgpath,
    FILE *errf)
{
	struct certs *c;
	int rc;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return (NULL);
	atomic_init(&c->refs, 1);
	if (gnutls_certificate_allocate_credentials(&c->cred) < 0)
		goto err;
	if (!l->backend_verify)
		return (c);
	if (l->backend_ca != NULL)
		rc = gnutls_certificate_set_x509_trust_file(c->cred,
		    l->backend_ca, GNUTLS_X509_FMT_PEM);
	else
		rc = gnutls_certificate_set_x509_system_trust(c->cred);
	if (rc <= 0) {
		fprintf(errf, "%s:%d: listener %s: cannot load %s: %s\n",
		    cfgpath, l->line, l->name, l->backend_ca != NULL ?
		    l->backend_ca : "the system trust store", rc < 0 ?
		    gnutls_strerror(rc) : "no certificate in file");
		goto err;
	}
	return (c);
err:
	certs_free(c);
	return (NULL);
}

/**
 * certs_ref(c):
 * Take one more reference to ${c}; return ${c}.
 */
struct certs *
certs_ref(struct certs *c)
{

	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return (c);
}

/**
 * certs_unref(c):
 * Drop a reference; the last one frees ${c}.  NULL is a no-op.
 */
void
certs_unref(struct certs *c)
{

	if (c == NULL)
		return;
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
		certs_free(c);
}

/**
 * certs_cred(c):
 * The GnuTLS credentials of ${c}, valid while a reference is held.
 */
gnutls_certificate_credentials_t
certs_cred(const struct certs *c)
{

	return (c->cred);
}

/**
 * certs_count(c), certs_not_after(c, i), certs_subject(c, i):
 * The number of pairs in ${c}, and the expiry time and subject DN of the
 * leaf of pair ${i}.
 */
size_t
certs_count(const struct certs *c)
{

	return (c->npairs);
}

time_t
certs_not_after(const struct certs *c, size_t i)
{

	return (c->not_after[i]);
}

const char *
certs_subject(const struct certs *c, size_t i)
{

	return (c->subject[i] != NULL ? c->subject[i] : "");
}

/**
 * certs_policy(c):
 * CERTS_POLICY_LEN bytes that identify the client-certificate policy of the
 * listener ${c} was loaded for: its name, client_verify and the contents of
 * its client_ca.  Equal in every process that loads the same settings.
 */
const unsigned char *
certs_policy(const struct certs *c)
{

	return (c->policy);
}

/**
 * certs_key_group(gid):
 * Let group ${gid} (that of [global] user) read keys without a warning.
 * Call before any certs_load().
 */
void
certs_key_group(gid_t gid)
{

	key_gid = gid;
}

/**
 * certs_key_exposed(st):
 * Return 1 if a key file with status ${st} can be read by others, or by a
 * group other than the one given to certs_key_group().
 */
int
certs_key_exposed(const struct stat *st)
{

	/* Issue 12 item 13: a private key is for mailtlsd's eyes only. */
	if (st->st_mode & S_IROTH)
		return (1);
	return ((st->st_mode & S_IRGRP) && st->st_gid != key_gid);
}

/**
 * certs_slot_new(c):
 * Make a slot holding ${c} (takes ownership of the caller's reference).
 */
struct certs_slot *
certs_slot_new(struct certs *c)
{
	struct certs_slot *s;

	if ((s = malloc(sizeof(*s))) == NULL)
		return (NULL);
	pthread_mutex_init(&s->mu, NULL);
	s->cur = c;
	return (s);
}

/**
 * certs_slot_get(s):
 * Return the current set with a reference taken for the caller.
 */
struct certs *
certs_slot_get(struct certs_slot *s)
{
	struct certs *c;

	pthread_mutex_lock(&s->mu);
	c = certs_ref(s->cur);
	pthread_mutex_unlock(&s->mu);
	return (c);
}

/**
 * certs_slot_set(s, c):
 * Make ${c} the current set (takes ownership of the caller's reference) and
 * drop the slot's reference to the old one.
 */
void
certs_slot_set(struct certs_slot *s, struct certs *c)
{
	struct certs *old;

	pthread_mutex_lock(&s->mu);
	old = s->cur;
	s->cur = c;
	pthread_mutex_unlock(&s->mu);
	certs_unref(old);
}

/**
 * certs_slot_free(s):
 * Drop the slot's reference and free it; NULL is a no-op.
 */
void
certs_slot_free(struct certs_slot *s)
{

	if (s == NULL)
		return;
	certs_unref(s->cur);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
