/*
 * ticket: the key that encrypts TLS session tickets.  One per process,
 * shared by every listener and worker; from ticket_key_file (so that
 * replicas resume each other's sessions) or random.  It can be replaced
 * while sessions are being made: each new session copies it under a lock.
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
 * random one if there is no such key.  Problems are written to ${errf}.
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
 * ticket_enable(t, s):
 * Let the server session ${s} issue and accept tickets under the current
 * key.  Return 0 or -1.
 */
int ticket_enable(struct ticket *, gnutls_session_t);

/**
 * ticket_free(t):
 * Wipe and free; NULL is a no-op.
 */
void ticket_free(struct ticket *);

#endif
