/*
 * conn_side: what is written to one side of a connection (raw, through its
 * TLS session, or held until a backend is ready) and the side's bounded line
 * buffer.  The queue it keeps is what backpressure (conn.c) measures.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <assert.h>

#include <uv.h>

#include "conn_int.h"
#include "conn_side.h"
#include "tlsio.h"

/* Write errors are noted here and acted on by the caller's next check. */
void
side_failed(struct side *s, int err)
{

	if (s->dead)
		return;
	s->dead = 1;
	if (s->c->detail[0] == '\0')
		snprintf(s->c->detail, sizeof(s->c->detail), "%s: %s",
		    s->is_client ? "client" : "backend", uv_strerror(err));
}

/*
 * A write request holding a copy of ${data}, counted in ${s}'s queue from
 * now on (backpressure); NULL, with the side failed, when out of memory.
 */
static struct wreq *
wreq_new(struct side *s, const void *data, size_t len)
{
	struct wreq *w;

	if ((w = malloc(sizeof(*w) + len)) == NULL) {
		side_failed(s, UV_ENOMEM);
		return (NULL);
	}
	w->side = s;
	w->next = NULL;
	w->len = len;
	w->req.data = w;
	memcpy(w->data, data, len);
	s->queued += len;
	return (w);
}

static int
submit(struct side *s, struct wreq *w)
{
	uv_buf_t b = uv_buf_init(w->data, (unsigned int)w->len);
	int rc;

	if ((rc = uv_write(&w->req, &s->u.s, &b, 1, side_write_cb)) < 0) {
		s->queued -= w->len;
		free(w);
		side_failed(s, rc);
		return (-1);
	}
	return (0);
}

/* Send bytes as they are (ciphertext, or plaintext on a plain side). */
int
raw_write(struct side *s, const void *data, size_t len)
{
	struct wreq *w;
	uv_buf_t b;
	int n;

	if (s->dead || s->detached || !s->connected)
		return (-1);
	if (len == 0)
		return (0);
	if (s->queued == 0) {
		b = uv_buf_init((char *)(uintptr_t)data, (unsigned int)len);
		n = uv_try_write(&s->u.s, &b, 1);
		if (n >= 0 && (size_t)n == len)
			return (0);
		if (n < 0 && n != UV_EAGAIN) {
			side_failed(s, n);
			return (-1);
		}
		if (n > 0) {
			data = (const char *)data + n;
			len -= (size_t)n;
		}
	}
	if ((w = wreq_new(s, data, len)) == NULL)
		return (-1);
	return (submit(s, w));
}

/*
 * Plaintext for a backend that is not ready (connecting, or its TLS not up
 * yet) waits here, so that nothing ever reaches it unencrypted when it
 * should be encrypted.  It counts toward the queue, so backpressure holds.
 */
static int
pend_write(struct side *s, const void *data, size_t len)
{
	struct wreq *w;

	if ((w = wreq_new(s, data, len)) == NULL)
		return (-1);
	if (s->pend_tail != NULL)
		s->pend_tail->next = w;
	else
		s->pend_head = w;
	s->pend_tail = w;
	return (0);
}

void
pend_discard(struct side *s)
{
	struct wreq *w, *nw;

	for (w = s->pend_head; w != NULL; w = nw) {
		nw = w->next;
		s->queued -= w->len;
		free(w);
	}
	s->pend_head = s->pend_tail = NULL;
}

int
tls_push(void *arg, const void *data, size_t len)
{

	return (raw_write(arg, data, len));
}

/* Send plaintext toward a side, through its TLS session if it has one. */
int
side_write(struct side *s, const void *data, size_t len)
{

	if (s == NULL || s->dead || s->detached || s->shut)
		return (-1);
	if (len == 0)
		return (0);
	if (!s->ready)
		return (pend_write(s, data, len));
	if (s->tls != NULL)
		return (tlsio_send(s->tls, data, len));
	return (raw_write(s, data, len));
}

void
side_read_stop(struct side *s)
{

	if (s->reading) {
		uv_read_stop(&s->u.s);
		s->reading = 0;
	}
}

void
lb_consume(struct side *s, size_t n)
{

	assert(n <= s->lblen);
	memmove(s->lb, s->lb + n, s->lblen - n);
	s->lblen -= n;
}

void
lb_free(struct side *s)
{

	free(s->lb);
	s->lb = NULL;
	s->lblen = s->lbcap = 0;
}

/*
 * Keep bytes of a PROXY header or of the backend's STARTTLS dialogue (the
 * session engine keeps its own); bounded by ${cap}.
 */
int
lb_append_cap(struct side *s, const char *data, size_t len, size_t cap)
{
	char *nb;

	if (s->lblen + len > cap)
		return (-1);
	if (s->lblen + len > s->lbcap) {
		size_t ncap = s->lbcap ? s->lbcap : 4096;

		while (ncap < s->lblen + len)
			ncap *= 2;
		if (ncap > cap)
			ncap = cap;
		if ((nb = realloc(s->lb, ncap)) == NULL)
			return (-1);
		s->lb = nb;
		s->lbcap = ncap;
	}
	memcpy(s->lb + s->lblen, data, len);
	s->lblen += len;
	return (0);
}
