/*
 * ticket: the key that encrypts TLS session tickets.  One master key per
 * process, from ticket_key_file (so that replicas resume each other's
 * sessions) or random.  Sessions never use it directly: each gets a key
 * derived from it (HKDF-SHA256) and from its listener's client-certificate
 * policy, so a ticket only opens where it was issued -- on the same listener
 * with the same client_verify and client_ca, in this process or in a replica
 * with the same file.  The master key can be replaced while sessions are
 * being made: each new session derives from it under a lock.
 */
#ifndef MAILTLSD_TICKET_H
#define MAILTLSD_TICKET_H

#include <stdio.h>

#include <gnutls/gnutls.h>

#include "config.h"

struct ticket;

/**
 * ticket_new(cfg, errf):
 * Load the key from cfg->ticket_key_file (64 bytes, base64), or make a
 * random one if there is no such key.  A file that certs_key_exposed() is
 * warned about in the log.  Problems are written to ${errf}.
 * Return the key holder, or NULL.
 */
struct ticket *ticket_new(const struct config *, FILE *);

/**
 * ticket_reload(t, cfg, errf):
 * Read cfg->ticket_key_file again and use it for new sessions if it is
 * good; keep the old key otherwise.  Return 1 if the key changed, 0 if it
 * did not (or there is no file), -1 on error (written to ${errf}).
 */
int ticket_reload(struct ticket *, const struct config *, FILE *);

/**
 * ticket_enable(t, s, scope, len):
 * Let the server session ${s} issue and accept tickets under the key
 * derived from the current master key and the ${len} bytes ${scope} (what
 * a ticket must have been issued under to be accepted: certs_policy()).
 * Return 0 or -1.
 */
int ticket_enable(struct ticket *, gnutls_session_t, const unsigned char *,
    size_t);

/**
 * ticket_free(t):
 * Wipe and free; NULL is a no-op.
 */
void ticket_free(struct ticket *);

#endif
