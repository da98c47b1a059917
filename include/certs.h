/*
 * certs: the server credentials of one listener (every cert/key pair, chosen
 * by SNI, and the client CA), reference counted because GnuTLS keeps only a
 * pointer to them in each session: a set is freed when the last session that
 * uses it is gone, so a reload can swap in a new set at any time.
 */
#ifndef MAILTLSD_CERTS_H
#define MAILTLSD_CERTS_H

#include <sys/stat.h>
#include <sys/types.h>

#include <stdio.h>
#include <time.h>

#include <gnutls/gnutls.h>

#include "config.h"

struct certs;

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
struct certs *certs_load(const struct config_listener *, const char *, FILE *);

/**
 * certs_load_trust(l, cfgpath, errf):
 * Build the credentials toward listener ${l}'s backend: the CA that its
 * certificate must chain to (backend_ca, or the system's trust store), none
 * when backend_verify is off.  Problems are written to ${errf} as
 * "CFGPATH:LINE: message".  Return a set with one reference, or NULL.
 */
struct certs *certs_load_trust(const struct config_listener *, const char *,
    FILE *);

/**
 * certs_ref(c):
 * Take one more reference to ${c}; return ${c}.
 */
struct certs *certs_ref(struct certs *);

/**
 * certs_unref(c):
 * Drop a reference; the last one frees ${c}.  NULL is a no-op.
 */
void certs_unref(struct certs *);

/**
 * certs_cred(c):
 * The GnuTLS credentials of ${c}, valid while a reference is held.
 */
gnutls_certificate_credentials_t certs_cred(const struct certs *);

/**
 * certs_count(c), certs_not_after(c, i), certs_subject(c, i):
 * The number of pairs in ${c}, and the expiry time and subject DN of the
 * leaf of pair ${i}.
 */
size_t certs_count(const struct certs *);
time_t certs_not_after(const struct certs *, size_t);
const char *certs_subject(const struct certs *, size_t);

/**
 * certs_key_group(gid):
 * Let group ${gid} (that of [global] user) read keys without a warning.
 * Call before any certs_load().
 */
void certs_key_group(gid_t);

/**
 * certs_key_exposed(st):
 * Return 1 if a key file with status ${st} can be read by others, or by a
 * group other than the one given to certs_key_group().
 */
int certs_key_exposed(const struct stat *);

/* The size of certs_policy(). */
#define CERTS_POLICY_LEN	32

/**
 * certs_policy(c):
 * CERTS_POLICY_LEN bytes that identify the client-certificate policy of the
 * listener ${c} was loaded for: its name, client_verify and the contents of
 * its client_ca.  Equal in every process that loads the same settings.
 */
const unsigned char *certs_policy(const struct certs *);

/*
 * A slot holds the current set of a listener.  Workers take a reference for
 * each new session; a reload replaces the set.  The lock is held only to
 * copy a pointer and bump a count, once per handshake.
 */
struct certs_slot;

/**
 * certs_slot_new(c):
 * Make a slot holding ${c} (takes ownership of the caller's reference).
 */
struct certs_slot *certs_slot_new(struct certs *);

/**
 * certs_slot_get(s):
 * Return the current set with a reference taken for the caller.
 */
struct certs *certs_slot_get(struct certs_slot *);

/**
 * certs_slot_set(s, c):
 * Make ${c} the current set (takes ownership of the caller's reference) and
 * drop the slot's reference to the old one.
 */
void certs_slot_set(struct certs_slot *, struct certs *);

/**
 * certs_slot_free(s):
 * Drop the slot's reference and free it; NULL is a no-op.
 */
void certs_slot_free(struct certs_slot *);

#endif
