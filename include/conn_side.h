/*
 * conn_side: what is written to one side of a connection (client or
 * backend): raw, through its TLS session, or held until a backend is ready;
 * and the side's bounded line buffer (a PROXY header, a backend STARTTLS
 * dialogue line).  Only the conn modules use it: struct side is theirs
 * (proxy/conn_int.h).
 */
#ifndef MAILTLSD_CONN_SIDE_H
#define MAILTLSD_CONN_SIDE_H

#include <stddef.h>

struct side;

/* Send plaintext toward ${s}: through its TLS session, raw, or held until
 * it is ready.  Return 0 or -1 (the side is then dead: conn_settle acts). */
int	side_write(struct side *, const void *, size_t);

/* Send bytes as they are (ciphertext, or plaintext on a plain side). */
int	raw_write(struct side *, const void *, size_t);

/* The tlsio push function: ${arg} is the side. */
int	tls_push(void *, const void *, size_t);

/* Drop what was held for a backend that never became ready. */
void	pend_discard(struct side *);

/* Note a write error ${err} on ${s} (the first one fills the detail). */
void	side_failed(struct side *, int);

void	side_read_stop(struct side *);

/* The line buffer: append (bounded by ${cap}; -1 past it), consume, free. */
int	lb_append_cap(struct side *, const char *, size_t, size_t);
void	lb_consume(struct side *, size_t);
void	lb_free(struct side *);

#endif
