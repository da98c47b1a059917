#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"

/* Set numbers, for telling a set from a later one made at the same address. */
static atomic_uint_fast64_t next_gen = 1;

/*
 * Toward the backend: the CA to verify it against (the system's trust
 * store unless backend_ca is given) and the name it must have.
 */
static int
backend_setup(struct listener *l, const struct config_listener *conf,
    const char *cfgpath, FILE *errf)
{
	const char *errpos = NULL;
	struct certs *c;
	int rc;

	rc = tlsio_priority_init(&l->btls.prio, conf->tls_priority, &errpos);
	if (rc < 0) {
		fprintf(errf, "%s:%d: listener %s: bad tls_priority near "
		    "\"%s\": %s\n", cfgpath, conf->line, conf->name,
		    errpos != NULL ? errpos : "", gnutls_strerror(rc));
		return (-1);
	}
	tlsio_priority_log(l->btls.prio, conf->name, "backend",
	    conf->tls_priority);
	if ((c = certs_load_trust(conf, cfgpath, errf)) == NULL)
		goto err;
	if ((l->btls.slot = certs_slot_new(c)) == NULL) {
		certs_unref(c);
		goto err;
	}
	l->btls.name = conf->backend_name != NULL ? conf->backend_name :
	    conf->backend.host;
	l->btls.verify = conf->backend_verify;
	l->backend_tls = 1;
	return (0);
err:
	gnutls_priority_deinit(l->btls.prio);
	memset(&l->btls, 0, sizeof(l->btls));
	return (-1);
}

/**
 * listener_setup(l, conf, cfgpath, ticket, errf):
 * Prepare ${l} for ${conf}: credentials, priority, ALPN.  Problems are written
 * to ${errf} as "CFGPATH:LINE: message".  Return 0 or -1.
 */
int
listener_setup(struct listener *l, const struct config_listener *conf,
    const char *cfgpath, struct ticket *ticket, FILE *errf)
{
	struct certs *c;
	const char *errpos = NULL;
	const char *id;
	int rc;

	memset(l, 0, sizeof(*l));
	l->conf = conf;
	l->proto = proto_find(conf->protocol);
	atomic_init(&l->own_nconns, 0);
	l->nconns = &l->own_nconns;
	if ((l->pool = backend_pool_new(conf)) == NULL) {
		fprintf(errf, "%s:%d: listener %s: out of memory\n", cfgpath,
		    conf->line, conf->name);
		return (-1);
	}
	if ((conf->max_per_client > 0 || conf->rate_per_client > 0) &&
	    (l->climit = climit_new(conf->name, conf->max_per_client,
	    conf->rate_per_client, conf->max_connections)) == NULL) {
		fprintf(errf, "%s:%d: listener %s: out of memory\n", cfgpath,
		    conf->line, conf->name);
		return (-1);
	}
	if (conf->backend_tls != CONFIG_TLS_NONE &&
	    backend_setup(l, conf, cfgpath, errf) < 0)
		return (-1);
	if (conf->client_tls == CONFIG_TLS_NONE)
		return (0);

	rc = tlsio_priority_init(&l->tls.prio, conf->tls_priority, &errpos);
	if (rc < 0) {
		fprintf(errf, "%s:%d: listener %s: bad tls_priority near "
		    "\"%s\": %s\n", cfgpath, conf->line, conf->name,
		    errpos != NULL ? errpos : "", gnutls_strerror(rc));
		return (-1);
	}
	tlsio_priority_log(l->tls.prio, conf->name, "client",
	    conf->tls_priority);
	if ((c = certs_load(conf, cfgpath, errf)) == NULL)
		goto err1;
	if ((l->tls.slot = certs_slot_new(c)) == NULL) {
		certs_unref(c);
		goto err1;
	}
	/*
	 * ALPN ids: "imap" and "pop3" are registered with IANA, "smtp" is
	 * not but is what nginx and others use.
	 */
	id = l->proto != NULL ? l->proto->name : NULL;
	if (id != NULL) {
		l->tls.alpn.data = (unsigned char *)(uintptr_t)id;
		l->tls.alpn.size = (unsigned int)strlen(id);
	}
	l->tls.alpn_strict = conf->alpn_strict;
	l->tls.ticket = ticket;
	l->tls.verify = conf->client_verify;
	l->client_tls = 1;
	return (0);

err1:
	gnutls_priority_deinit(l->tls.prio);
	l->tls.prio = NULL;
	return (-1);
}

/**
 * listener_teardown(l):
 * Free what listener_setup made.
 */
void
listener_teardown(struct listener *l)
{

	climit_free(l->climit);
	l->climit = NULL;
	backend_pool_free(l->pool);
	l->pool = NULL;
	if (l->tls.prio != NULL)
		gnutls_priority_deinit(l->tls.prio);
	certs_slot_free(l->tls.slot);
	memset(&l->tls, 0, sizeof(l->tls));
	if (l->backend_tls) {
		certs_slot_free(l->btls.slot);
		gnutls_priority_deinit(l->btls.prio);
		memset(&l->btls, 0, sizeof(l->btls));
		l->backend_tls = 0;
	}
}

/**
 * listener_set_new(cfg, ticket, errf):
 * Set up a listener for every section of ${cfg} (listener_setup: every
 * certificate, key and CA is read and checked).  Problems are written to
 * ${errf} as "FILE:LINE: message".  Return the set, holding one reference
 * for the caller and owning ${cfg}, or NULL (then ${cfg} is still the
 * caller's).  ${ticket} is borrowed for the set's lifetime.
 */
struct listener_set *
listener_set_new(struct config *cfg, struct ticket *ticket, FILE *errf)
{
	struct listener_set *s;
	size_t i;
	int bad = 0;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		goto err0;
	if ((s->ls = calloc(cfg->nlisteners > 0 ? cfg->nlisteners : 1,
	    sizeof(*s->ls))) == NULL)
		goto err1;
	/* Every listener, not only up to the first bad one: -t lists all. */
	for (i = 0; i < cfg->nlisteners; i++) {
		if (listener_setup(&s->ls[i], &cfg->listeners[i], cfg->path,
		    ticket, errf) < 0)
			bad = 1;
		s->ls[i].set = s;
		s->ls[i].index = i;
	}
	s->n = cfg->nlisteners;
	if (bad)
		goto err2;
	atomic_init(&s->refs, 1);
	s->gen = atomic_fetch_add(&next_gen, 1);
	s->cfg = cfg;
	return (s);

err2:
	for (i = 0; i < s->n; i++)
		listener_teardown(&s->ls[i]);
	free(s->ls);
err1:
	free(s);
err0:
	return (NULL);
}

/**
 * listener_set_ref(s):
 * Take one more reference to ${s} (any thread); return ${s}.
 */
struct listener_set *
listener_set_ref(struct listener_set *s)
{

	atomic_fetch_add(&s->refs, 1);
	return (s);
}

/**
 * listener_set_unref(s):
 * Drop a reference (any thread); the last one tears every listener down and
 * frees the configuration.  NULL is a no-op.
 */
void
listener_set_unref(struct listener_set *s)
{
	size_t i;

	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	for (i = 0; i < s->n; i++)
		listener_teardown(&s->ls[i]);
	free(s->ls);
	config_free(s->cfg);
	free(s);
}

/**
 * listener_addr_equal(a, b):
 * Return 1 if ${a} and ${b} are the same socket address, else 0.
 */
int
listener_addr_equal(const struct config_addr *a, const struct config_addr *b)
{
	const struct sockaddr_in *a4, *b4;
	const struct sockaddr_in6 *a6, *b6;
	const struct sockaddr_un *au, *bu;

	if (a->ss.ss_family != b->ss.ss_family)
		return (0);
	switch (a->ss.ss_family) {
	case AF_INET:
		a4 = (const struct sockaddr_in *)&a->ss;
		b4 = (const struct sockaddr_in *)&b->ss;
		return (a4->sin_port == b4->sin_port &&
		    a4->sin_addr.s_addr == b4->sin_addr.s_addr);
	case AF_INET6:
		a6 = (const struct sockaddr_in6 *)&a->ss;
		b6 = (const struct sockaddr_in6 *)&b->ss;
		return (a6->sin6_port == b6->sin6_port &&
		    a6->sin6_scope_id == b6->sin6_scope_id &&
		    memcmp(&a6->sin6_addr, &b6->sin6_addr,
		    sizeof(a6->sin6_addr)) == 0);
	case AF_UNIX:
		au = (const struct sockaddr_un *)&a->ss;
		bu = (const struct sockaddr_un *)&b->ss;
		return (strncmp(au->sun_path, bu->sun_path,
		    sizeof(au->sun_path)) == 0);
	default:
		return (0);
	}
}

/**
 * listener_find(s, a):
 * The listener of ${s} listening on ${a}, or NULL.
 */
struct listener *
listener_find(struct listener_set *s, const struct config_addr *a)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		if (listener_addr_equal(&s->ls[i].conf->listen, a))
			return (&s->ls[i]);
	return (NULL);
}

static int
make_socket(const struct config_addr *a, int reuseport, char *err,
    size_t errlen)
{
	int fd, one = 1;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return (-1);
	}
	if (a->ss.ss_family != AF_UNIX) {
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
		    sizeof(one));
		if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
		    sizeof(one)) < 0) {
			snprintf(err, errlen, "SO_REUSEPORT: %s",
			    strerror(errno));
			close(fd);
			return (-1);
		}
		/* [::]:PORT means IPv6 only; list 0.0.0.0:PORT for IPv4. */
		if (a->ss.ss_family == AF_INET6)
			(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
			    sizeof(one));
	}
	if (bind(fd, (const struct sockaddr *)&a->ss, a->sslen) < 0) {
		snprintf(err, errlen, "cannot bind %s: %s", a->text,
		    strerror(errno));
		close(fd);
		return (-1);
	}
	return (fd);
}

/**
 * listener_socket(addr, reuseport, err, errlen):
 * Make a non-blocking socket listening on ${addr}, with SO_REUSEPORT if
 * ${reuseport}.  Return the descriptor, or -1 with a message in ${err}.
 */
int
listener_socket(const struct config_addr *a, int reuseport, char *err,
    size_t errlen)
{
	int fd;

	if ((fd = make_socket(a, reuseport, err, errlen)) < 0)
		return (-1);
	if (listen(fd, 511) < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", a->text,
		    strerror(errno));
		close(fd);
		return (-1);
	}
	return (fd);
}

/**
 * listener_probe(addr, err, errlen):
 * Check that no other socket (another process's included) holds ${addr}.
 * Return 0, or -1 with a message in ${err}.
 */
int
listener_probe(const struct config_addr *a, char *err, size_t errlen)
{
	int fd;

	/*
	 * The workers' sockets share the port through SO_REUSEPORT, which
	 * would also let a second mailtlsd of the same user share it without
	 * a word.  A bind without it fails if anybody holds the address.
	 */
	if ((fd = make_socket(a, 0, err, errlen)) < 0)
		return (-1);
	close(fd);
	return (0);
}
