#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>

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
 * random one if there is no such key.  Problems are written to ${errf}.
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
		if (read_key(cfg->ticket_key_file, cfg->path, t->key,
		    errf) < 0)
			goto err;
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
 * ticket_enable(t, s):
 * Let the server session ${s} issue and accept tickets under the current
 * key.  Return 0 or -1.
 */
int
ticket_enable(struct ticket *t, gnutls_session_t s)
{
	gnutls_datum_t d;
	int rc;

	/* GnuTLS copies the key into the session. */
	pthread_mutex_lock(&t->mu);
	d.data = t->key;
	d.size = TICKET_KEY_SIZE;
	rc = gnutls_session_ticket_enable_server(s, &d);
	pthread_mutex_unlock(&t->mu);
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
