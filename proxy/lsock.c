#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "lsock.h"

/* One listening address and its sockets. */
struct lsock {
	struct lsock		*next;
	struct config_addr	 addr;
	char			 name[128];	/* its listener's, for export */
	char			 next_name[128];	/* in the plan */
	int			*fds;		/* master copies */
	size_t			 nfds;
	struct wfds {				/* each worker's duplicates */
		int		*fd;
		size_t		 n;
	}			*w;
	int			 planned;	/* made by the current plan */
	int			 used;		/* the plan's set uses it */
};

/* A socket from LISTEN_FDS that no listener has taken yet. */
struct inherited {
	struct inherited	*next;
	int			 fd;
	struct config_addr	 addr;
	char			 name[128];
	int			 taken;		/* by the current plan */
};

struct lsock_table {
	unsigned		 nw;
	struct lsock		*socks;
	struct inherited	*pool;
};

/**
 * lsock_table_new(nworkers):
 * An empty table for a process of ${nworkers} workers.  Return it, or NULL.
 */
struct lsock_table *
lsock_table_new(unsigned nw)
{
	struct lsock_table *t;

	if ((t = calloc(1, sizeof(*t))) == NULL)
		return (NULL);
	t->nw = nw > 0 ? nw : 1;
	return (t);
}

/* The address a socket listens on, in the form config.c makes. */
static int
sock_addr(int fd, struct config_addr *a)
{
	int type, acc;
	socklen_t len;

	memset(a, 0, sizeof(*a));
	len = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
	    type != SOCK_STREAM)
		return (-1);
	len = sizeof(acc);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc)
		return (-1);
	a->sslen = sizeof(a->ss);
	if (getsockname(fd, (struct sockaddr *)&a->ss, &a->sslen) < 0)
		return (-1);
	if (a->ss.ss_family == AF_UNIX)
		snprintf(a->text, sizeof(a->text), "unix:%s",
		    ((struct sockaddr_un *)&a->ss)->sun_path);
	else if (uv_ip_name((struct sockaddr *)&a->ss, a->host,
	    sizeof(a->host)) == 0)
		snprintf(a->text, sizeof(a->text),
		    a->ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", a->host,
		    (unsigned)ntohs(((struct sockaddr_in *)&a->ss)->sin_port));
	return (0);
}

/**
 * lsock_inherit(t):
 * Take the sockets passed in LISTEN_FDS (when LISTEN_PID is this process)
 * into ${t}'s pool of inherited sockets, each with its address and its name
 * from LISTEN_FDNAMES, and remove the three variables from the environment.
 * A descriptor that is not a listening stream socket is logged and closed.
 * Return the number of sockets taken.
 */
size_t
lsock_inherit(struct lsock_table *t)
{
	const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
	const char *names = getenv("LISTEN_FDNAMES"), *np;
	struct inherited *in, **tail = &t->pool;
	unsigned long n = 0, i;
	char *end;
	size_t taken = 0, len;
	int fd;

	if (pid != NULL && nfds != NULL &&
	    strtoul(pid, &end, 10) == (unsigned long)getpid() && *end == '\0')
		n = strtoul(nfds, &end, 10);
	if (n > 4096)
		n = 0;
	np = names;
	for (i = 0; i < n; i++) {
		fd = LSOCK_FDS_START + (int)i;
		if ((in = calloc(1, sizeof(*in))) == NULL) {
			close(fd);
			continue;
		}
		in->fd = fd;
		if (np != NULL) {
			len = strcspn(np, ":");
			snprintf(in->name, sizeof(in->name), "%.*s", (int)len,
			    np);
			np = np[len] == ':' ? np + len + 1 : NULL;
		}
		if (sock_addr(fd, &in->addr) < 0) {
			log_warn("start", "LISTEN_FDS: descriptor %d (%s) is "
			    "not a listening stream socket; closing it", fd,
			    in->name);
			close(fd);
			free(in);
			continue;
		}
		/* Not ours to keep open across an exec of something else. */
		(void)fcntl(fd, F_SETFD, FD_CLOEXEC);
		(void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		log_fields(CONFIG_LOG_INFO, "inherit", (struct log_field[]){
		    LOG_NUM("fd", fd),
		    LOG_STR("name", in->name),
		    LOG_STR("listen", in->addr.text) }, 3);
		*tail = in;
		tail = &in->next;
		taken++;
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return (taken);
}

static void
close_dups(struct lsock_table *t, struct lsock *s)
{
	size_t i, k;

	if (s->w == NULL)
		return;
	for (i = 0; i < t->nw; i++) {
		for (k = 0; k < s->w[i].n; k++)
			close(s->w[i].fd[k]);
		free(s->w[i].fd);
	}
	free(s->w);
	s->w = NULL;
}

/*
 * Each worker gets its share of the masters: with one socket per worker
 * (our own SO_REUSEPORT sockets) one each; with fewer (systemd's single
 * socket) every worker watches a copy of the same one; with more (a
 * hand-over from a process with more workers) some watch several, so that
 * no socket is left without anybody accepting from its queue.
 */
static int
make_dups(struct lsock_table *t, struct lsock *s)
{
	size_t i, j, k;
	int fd;

	if ((s->w = calloc(t->nw, sizeof(*s->w))) == NULL)
		return (-1);
	for (i = 0; i < t->nw; i++) {
		k = s->nfds >= t->nw ? (s->nfds - i + t->nw - 1) / t->nw : 1;
		if ((s->w[i].fd = calloc(k, sizeof(int))) == NULL)
			goto err;
		for (j = 0; j < k; j++) {
			size_t m = s->nfds >= t->nw ? i + j * t->nw :
			    i % s->nfds;

			if ((fd = fcntl(s->fds[m], F_DUPFD_CLOEXEC,
			    LSOCK_FDS_START)) < 0)
				goto err;
			s->w[i].fd[s->w[i].n++] = fd;
		}
	}
	return (0);
err:
	close_dups(t, s);
	return (-1);
}

static struct lsock *
find_sock(struct lsock_table *t, const struct config_addr *a)
{
	struct lsock *s;

	for (s = t->socks; s != NULL; s = s->next)
		if (listener_addr_equal(&s->addr, a))
			return (s);
	return (NULL);
}

/* Inherited sockets for ${l}: by address, else by name. */
static size_t
take_inherited(struct lsock_table *t, const struct listener *l,
    struct lsock *s)
{
	struct inherited *in;
	size_t n = 0;
	int byname;

	for (byname = 0; byname < 2 && n == 0; byname++)
		for (in = t->pool; in != NULL; in = in->next) {
			if (in->taken || !(byname ?
			    strcmp(in->name, l->conf->name) == 0 :
			    listener_addr_equal(&in->addr, &l->conf->listen)))
				continue;
			if (s != NULL)
				s->fds[n] = in->fd;
			if (s != NULL)
				in->taken = 1;
			n++;
		}
	return (n);
}

static int
new_sock(struct lsock_table *t, const struct listener *l, const char *path,
    FILE *errf)
{
	const struct config_listener *lc = l->conf;
	struct lsock *s;
	char err[256];
	size_t n, i;

	if ((s = calloc(1, sizeof(*s))) == NULL)
		goto nomem;
	s->addr = lc->listen;
	s->planned = s->used = 1;
	snprintf(s->name, sizeof(s->name), "%s", lc->name);
	if ((n = take_inherited(t, l, NULL)) > 0) {
		if ((s->fds = calloc(n, sizeof(int))) == NULL)
			goto nomem;
		s->nfds = take_inherited(t, l, s);
	} else {
		/*
		 * Our sockets share the port through SO_REUSEPORT, which would
		 * also let another process of the same user share it without
		 * a word: first check that nobody holds the address.
		 */
		if (listener_probe(&lc->listen, err, sizeof(err)) < 0)
			goto bad;
		if ((s->fds = calloc(t->nw, sizeof(int))) == NULL)
			goto nomem;
		for (i = 0; i < t->nw; i++) {
			if ((s->fds[i] = listener_socket(&lc->listen, 1, err,
			    sizeof(err))) < 0)
				goto bad;
			s->nfds++;
		}
	}
	if (make_dups(t, s) < 0)
		goto nomem;
	s->next = t->socks;
	t->socks = s;
	return (0);

nomem:
	snprintf(err, sizeof(err), "out of memory or descriptors");
bad:
	fprintf(errf, "%s:%d: listener %s: %s\n", path, lc->line, lc->name,
	    err);
	if (s != NULL) {
		/* lsock_plan's lsock_abort closes it or gives it back. */
		s->next = t->socks;
		t->socks = s;
	}
	return (-1);
}

/**
 * lsock_plan(t, set, errf):
 * Find a socket for every listener of ${set}: the one ${t} has for its
 * address already, else inherited ones of the same address or, failing
 * that, of the listener's name, else new ones (one per worker, with
 * SO_REUSEPORT, after checking that nobody else holds the address).
 * Problems are written to ${errf} as "FILE:LINE: message".  Return 0, or
 * -1 after undoing everything (then nothing changed).  A plan is ended by
 * lsock_commit or lsock_abort.
 */
int
lsock_plan(struct lsock_table *t, struct listener_set *set, FILE *errf)
{
	struct lsock *s;
	size_t i;
	int bad = 0;

	for (s = t->socks; s != NULL; s = s->next)
		s->used = 0;
	for (i = 0; i < set->n; i++) {
		const struct listener *l = &set->ls[i];

		if ((s = find_sock(t, &l->conf->listen)) != NULL) {
			s->used = 1;
			snprintf(s->next_name, sizeof(s->next_name), "%s",
			    l->conf->name);
			continue;
		}
		if (new_sock(t, l, set->cfg->path, errf) < 0) {
			bad = 1;
			break;
		}
	}
	if (bad) {
		lsock_abort(t);
		return (-1);
	}
	return (0);
}

/**
 * lsock_binds(t, set, worker, binds, n):
 * The descriptors worker ${worker} is to accept on for the planned ${set}:
 * ${*binds} is a new array of ${*n} entries (free it).  The descriptors
 * stay the table's until handed to worker_new or worker_rebind.  Return 0
 * or -1.
 */
int
lsock_binds(struct lsock_table *t, struct listener_set *set, unsigned wi,
    struct worker_bind **binds, size_t *n)
{
	struct lsock *s;
	struct worker_bind *b;
	size_t i, k, cnt = 0;

	for (i = 0; i < set->n; i++)
		if ((s = find_sock(t, &set->ls[i].conf->listen)) != NULL)
			cnt += s->w[wi].n;
	if ((b = calloc(cnt > 0 ? cnt : 1, sizeof(*b))) == NULL)
		return (-1);
	*n = 0;
	for (i = 0; i < set->n; i++) {
		if ((s = find_sock(t, &set->ls[i].conf->listen)) == NULL)
			continue;
		for (k = 0; k < s->w[wi].n; k++) {
			b[*n].l = &set->ls[i];
			b[*n].fd = s->w[wi].fd[k];
			(*n)++;
		}
	}
	*binds = b;
	return (0);
}

static void
free_sock(struct lsock_table *t, struct lsock *s, int close_dup)
{
	size_t i;

	for (i = 0; i < s->nfds; i++)
		close(s->fds[i]);
	if (close_dup)
		close_dups(t, s);
	else if (s->w != NULL) {
		/* The workers have the duplicates and close them. */
		for (i = 0; i < t->nw; i++)
			free(s->w[i].fd);
		free(s->w);
	}
	free(s->fds);
	free(s);
}

/**
 * lsock_commit(t):
 * Make the plan the table: sockets no listener uses any more are closed
 * (their workers close their copies when rebound), and so are inherited
 * sockets no listener asked for (logged).  Return the number of sockets
 * closed.
 */
size_t
lsock_commit(struct lsock_table *t)
{
	struct lsock *s, **sp;
	struct inherited *in, **ip;
	size_t n = 0;

	for (sp = &t->socks; (s = *sp) != NULL;) {
		if (s->used) {
			/* A listener renamed at the same address. */
			if (s->next_name[0] != '\0')
				memcpy(s->name, s->next_name, sizeof(s->name));
			s->next_name[0] = '\0';
			s->planned = 0;
			sp = &s->next;
			continue;
		}
		*sp = s->next;
		n += s->nfds;
		free_sock(t, s, 0);
	}
	for (ip = &t->pool; (in = *ip) != NULL;) {
		*ip = in->next;
		if (!in->taken) {
			log_warn("start", "LISTEN_FDS: no listener has the "
			    "address %s or the name \"%s\" of descriptor %d; "
			    "closing it", in->addr.text, in->name, in->fd);
			close(in->fd);
			n++;
		}
		free(in);
	}
	return (n);
}

/**
 * lsock_abort(t):
 * Forget the plan: sockets bound or taken for it are closed or given back.
 */
void
lsock_abort(struct lsock_table *t)
{
	struct lsock *s, **sp;
	struct inherited *in;
	size_t i;

	for (sp = &t->socks; (s = *sp) != NULL;) {
		if (!s->planned) {
			s->next_name[0] = '\0';
			sp = &s->next;
			continue;
		}
		*sp = s->next;
		/* Inherited masters go back to the pool, not closed. */
		for (i = 0; i < s->nfds; i++)
			for (in = t->pool; in != NULL; in = in->next)
				if (in->taken && in->fd == s->fds[i]) {
					in->taken = 0;
					s->fds[i] = -1;
				}
		for (i = 0; i < s->nfds; i++)
			if (s->fds[i] >= 0)
				close(s->fds[i]);
		s->nfds = 0;
		free_sock(t, s, 1);
	}
}

/**
 * lsock_export(t, fds, names):
 * Every socket of ${t}, for an upgrade: ${*fds} is a new array of the
 * descriptors (still the table's) and ${*names} a new LISTEN_FDNAMES value
 * ("name:name:..."); free both.  Return the number of descriptors, or -1.
 */
int
lsock_export(struct lsock_table *t, int **fdsp, char **namesp)
{
	struct lsock *s;
	size_t n = 0, len = 1, i;
	char *names, *p;
	int *fds;

	for (s = t->socks; s != NULL; s = s->next) {
		n += s->nfds;
		len += s->nfds * (strlen(s->name) + 1);
	}
	if ((fds = calloc(n > 0 ? n : 1, sizeof(int))) == NULL)
		return (-1);
	if ((names = malloc(len)) == NULL) {
		free(fds);
		return (-1);
	}
	n = 0;
	p = names;
	*p = '\0';
	for (s = t->socks; s != NULL; s = s->next)
		for (i = 0; i < s->nfds; i++) {
			fds[n++] = s->fds[i];
			if (p != names)
				*p++ = ':';
			/* A ':' would split the name in LISTEN_FDNAMES. */
			for (const char *q = s->name; *q != '\0'; q++)
				*p++ = *q == ':' ? '_' : *q;
			*p = '\0';
		}
	*fdsp = fds;
	*namesp = names;
	return ((int)n);
}

/**
 * lsock_close_all(t):
 * Close every socket's master copy (the workers close their own): done when
 * the process stops accepting.
 */
void
lsock_close_all(struct lsock_table *t)
{
	struct lsock *s;
	size_t i;

	for (s = t->socks; s != NULL; s = s->next) {
		for (i = 0; i < s->nfds; i++)
			close(s->fds[i]);
		s->nfds = 0;
	}
}

/**
 * lsock_table_free(t):
 * Close what is left and free ${t}; NULL is a no-op.
 */
void
lsock_table_free(struct lsock_table *t)
{
	struct lsock *s;
	struct inherited *in;

	if (t == NULL)
		return;
	while ((s = t->socks) != NULL) {
		t->socks = s->next;
		free_sock(t, s, 0);
	}
	while ((in = t->pool) != NULL) {
		t->pool = in->next;
		close(in->fd);
		free(in);
	}
	free(t);
}
