#include <sys/stat.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "certs.h"
#include "log.h"
#include "ticket.h"

/* What gnutls_session_ticket_key_generate makes and GnuTLS expects. */
#define TICKET_KEY_SIZE	64

struct ticket {
	pthread_mutex_t	 mu;
	unsigned char	 key[TICKET_KEY_SIZE];
};

static int
read_key(const char *path, const char *cfgpath, unsigned char *out, FILE *errf)
{
	gnutls_datum_t raw, b64, key;
	size_t len;
	int rc;

	if ((rc = gnutls_load_file(path, &raw)) < 0) {
		fprintf(errf, "%s: cannot read ticket_key_file %s: %s\n",
		    cfgpath, path, gnutls_strerror(rc));
		return (-1);
	}
	len = raw.size;
	while (len > 0 && (raw.data[len - 1] == '\n' ||
	    raw.data[len - 1] == '\r' || raw.data[len - 1] == ' '))
		len--;
	b64.data = raw.data;
	b64.size = (unsigned int)len;
	rc = gnutls_base64_decode2(&b64, &key);
	gnutls_memset(raw.data, 0, raw.size);
	gnutls_free(raw.data);
	if (rc < 0 || key.size != TICKET_KEY_SIZE) {
		fprintf(errf, "%s: ticket_key_file %s must hold %d bytes in "
		    "base64 (openssl rand -base64 %d)\n", cfgpath, path,
		    TICKET_KEY_SIZE, TICKET_KEY_SIZE);
		if (rc >= 0) {
			gnutls_memset(key.data, 0, key.size);
			gnutls_free(key.data);
		}
		return (-1);
	}
	memcpy(out, key.data, TICKET_KEY_SIZE);
	gnutls_memset(key.data, 0, key.size);
	gnutls_free(key.data);
	return (0);
}

/**
 * ticket_new(cfg, errf):
 * Load the key from cfg->ticket_key_file (64 bytes, base64), or make a
 * random one if there is no such key.  A file that certs_key_exposed() is
 * warned about in the log.  Problems are written to ${errf}.
 * Return the key holder, or NULL.
 */
struct ticket *
ticket_new(const struct config *cfg, FILE *errf)
{
	struct ticket *t;
	gnutls_datum_t k;

	if ((t = calloc(1, sizeof(*t))) == NULL)
		return (NULL);
	pthread_mutex_init(&t->mu, NULL);
	if (cfg->ticket_key_file != NULL) {
		struct stat st;

		if (read_key(cfg->ticket_key_file, cfg->path, t->key,
		    errf) < 0)
			goto err;
		/* Whoever reads it can decrypt every recorded session. */
		if (stat(cfg->ticket_key_file, &st) == 0 &&
		    certs_key_exposed(&st))
			log_warn("key_permissions", "ticket_key_file %s is "
			    "readable by %s (mode %04o); make it 0600 and "
			    "owned by the user mailtlsd runs as (or 0640 in "
			    "that user's group)", cfg->ticket_key_file,
			    (st.st_mode & S_IROTH) ? "others" : "its group",
			    (unsigned)(st.st_mode & 07777));
		return (t);
	}
	if (gnutls_session_ticket_key_generate(&k) < 0 ||
	    k.size != TICKET_KEY_SIZE) {
		fprintf(errf, "%s: cannot make a session-ticket key\n",
		    cfg->path);
		goto err;
	}
	memcpy(t->key, k.data, TICKET_KEY_SIZE);
	gnutls_memset(k.data, 0, k.size);
	gnutls_free(k.data);
	return (t);
err:
	ticket_free(t);
	return (NULL);
}

/**
 * ticket_reload(t, cfg, errf):
 * Read cfg->ticket_key_file again and use it for new sessions if it is
 * good; keep the old key otherwise.  Return 1 if the key changed, 0 if it
 * did not (or there is no file), -1 on error (written to ${errf}).
 */
int
ticket_reload(struct ticket *t, const struct config *cfg, FILE *errf)
{
	unsigned char key[TICKET_KEY_SIZE];
	int changed;

	if (cfg->ticket_key_file == NULL)
		return (0);
	if (read_key(cfg->ticket_key_file, cfg->path, key, errf) < 0)
		return (-1);
	pthread_mutex_lock(&t->mu);
	changed = memcmp(t->key, key, sizeof(key)) != 0;
	memcpy(t->key, key, sizeof(key));
	pthread_mutex_unlock(&t->mu);
	gnutls_memset(key, 0, sizeof(key));
	return (changed);
}

/**
 * ticket_enable(t, s, scope, len):
 * Let the server session ${s} issue and accept tickets under the key
 * derived from the current master key and the ${len} bytes ${scope} (what
 * a ticket must have been issued under to be accepted: certs_policy()).
 * Return 0 or -1.
 */
int
ticket_enable(struct ticket *t, gnutls_session_t s,
    const unsigned char *scope, size_t len)
{
	static const char salt[] = "mailtlsd session-ticket key v1";
	unsigned char prk[32], key[TICKET_KEY_SIZE];
	gnutls_datum_t ikm, sd, pd, info, d;
	int rc;

	/*
	 * RFC 5869: PRK = HMAC(salt, master), key = HKDF-Expand(PRK, scope).
	 * Deterministic, so replicas with one ticket_key_file agree; a
	 * different scope gives an unrelated key, and a ticket made under it
	 * does not even decrypt: GnuTLS falls back to a full handshake.
	 * A few HMACs per handshake, next to the handshake's own signatures.
	 */
	sd.data = (unsigned char *)(uintptr_t)salt;
	sd.size = sizeof(salt) - 1;
	info.data = (unsigned char *)(uintptr_t)scope;
	info.size = (unsigned int)len;
	pthread_mutex_lock(&t->mu);
	ikm.data = t->key;
	ikm.size = TICKET_KEY_SIZE;
	rc = gnutls_hkdf_extract(GNUTLS_MAC_SHA256, &ikm, &sd, prk);
	pthread_mutex_unlock(&t->mu);
	if (rc >= 0) {
		pd.data = prk;
		pd.size = sizeof(prk);
		rc = gnutls_hkdf_expand(GNUTLS_MAC_SHA256, &pd, &info, key,
		    sizeof(key));
	}
	/* GnuTLS copies the key into the session. */
	if (rc >= 0) {
		d.data = key;
		d.size = sizeof(key);
		rc = gnutls_session_ticket_enable_server(s, &d);
	}
	gnutls_memset(prk, 0, sizeof(prk));
	gnutls_memset(key, 0, sizeof(key));
	return (rc < 0 ? -1 : 0);
}

/**
 * ticket_free(t):
 * Wipe and free; NULL is a no-op.
 */
void
ticket_free(struct ticket *t)
{

	if (t == NULL)
		return;
	gnutls_memset(t->key, 0, sizeof(t->key));
	pthread_mutex_destroy(&t->mu);
	free(t);
}
