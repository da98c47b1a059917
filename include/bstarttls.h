/*
 * bstarttls: mailtlsd as a STARTTLS client toward a backend (SMTP EHLO +
 * STARTTLS, IMAP STARTTLS, POP3 CAPA + STLS).  Pure: it is fed the
 * backend's lines and says what to send, when to start TLS, and why not.
 */
#ifndef MAILTLSD_BSTARTTLS_H
#define MAILTLSD_BSTARTTLS_H

#include <stddef.h>

#include "config.h"
#include "proto.h"

/* The longest backend line accepted during the dialogue. */
#define BSTLS_MAX_LINE	8192

/*
 * The longest greeting kept for the client, all its lines together (an SMTP
 * greeting may have any number of 220- lines).  A longer one makes the
 * backend unusable (BSTLS_FAIL): a greeting is never cut short.
 */
#define BSTLS_GREETING_MAX	(2 * BSTLS_MAX_LINE)

enum bstls_verdict {
	BSTLS_MORE,	/* nothing to do; wait for the next line */
	BSTLS_SEND,	/* send out->buf to the backend */
	BSTLS_TLS,	/* start the handshake; this was the last byte the
			   backend may send in plaintext */
	BSTLS_FAIL,	/* the backend cannot be used; see bstls_error */
};

struct bstls {
	enum config_proto	 proto;
	int			 state;
	int			 offered;	/* STARTTLS/STLS announced */
	const char		*hostname;
	char			 greeting[BSTLS_GREETING_MAX];
						/* shown to the client */
	size_t			 greetlen;
	char			 error[256];
};

/**
 * bstls_init(b, proto, hostname):
 * Start the dialogue for ${proto}; ${hostname} (borrowed) goes in EHLO.
 */
void bstls_init(struct bstls *, enum config_proto, const char *);

/**
 * bstls_line(b, line, len, out):
 * Handle one line from the backend (line ending included).
 */
enum bstls_verdict bstls_line(struct bstls *, const char *, size_t,
    struct proto_out *);

/**
 * bstls_greeting(b, len):
 * The backend's greeting as the client should see it once TLS is up.  It
 * came in plaintext, so it is filtered as the pre-TLS rules filter a
 * greeting: an IMAP response code ([CAPABILITY ...], no longer true;
 * [ALERT], [REFERRAL ...], which an attacker on the plaintext hop could
 * have written) is removed.  SMTP and POP3 greetings carry no such codes
 * and are kept whole, every line of a multi-line SMTP greeting included.
 */
const char *bstls_greeting(const struct bstls *, size_t *);

/**
 * bstls_error(b):
 * Why the dialogue failed.
 */
const char *bstls_error(const struct bstls *);

#endif
