/*
 * loadgen: a GnuTLS client that loads a TLS proxy in front of bench/backend
 * and measures it.  One thread, one epoll loop, non-blocking sessions.
 *
 * Modes (-m):
 *   full      connect, full handshake, one echoed byte, close; repeat
 *   resumed   the same with a TLS 1.3 ticket from an earlier connection
 *   upload    stream 16 KiB records toward the backend's sink
 *   download  read what the backend's source sends
 *   idle      open -n connections (each echoes one byte), hold them, read
 *             the proxy's RSS, check every one is still alive, close
 *   pingpong  one message at a time through the echo; latency percentiles
 *   session   mail sessions (-x): SMTP submits a message of -M octets, IMAP
 *             FETCHes one, POP3 RETRs one (-M 0: log in and out only);
 *             every octet is checked against the message both ends make
 *             (mailmsg.h), and any error fails the run
 *   search    IMAP sessions whose SEARCH reply is a line of -M octets
 *
 * With -x smtp|imap|pop3 the backend is bench/backend -P PROTO and the
 * sessions speak the protocol: implicit TLS, or with -T plaintext first and
 * STARTTLS (STLS) before anything else.  idle then holds sessions that have
 * logged in (SMTP: after EHLO) and checks them with a NOOP.
 *
 * With -p PID the proxy's CPU time (utime + stime of PID and its
 * descendants, from /proc/PID/stat) over the measurement window is reported
 * too, so that results do not depend on who wins the CPU on a small machine.
 *
 * The result is one line on stdout: "RESULT key=value ...".
 */
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "mailmsg.h"

#define DEFAULT_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:" \
	"+AES-128-GCM:-GROUP-ALL:+GROUP-X25519"
#define CHUNK		(16 * 1024)	/* plaintext per record sent */
#define MAX_SAMPLES	(1 << 20)
#define MAX_MSG		(64 * 1024)

enum mode { M_FULL, M_RESUMED, M_UPLOAD, M_DOWNLOAD, M_IDLE, M_PINGPONG,
	M_SESSION, M_SEARCH, M_NMODES };

static const char *const mode_names[] = {
	"full", "resumed", "upload", "download", "idle", "pingpong",
	"session", "search",
};

enum xproto { X_NONE, X_SMTP, X_IMAP, X_POP3 };

static const char *const proto_names[] = { "none", "smtp", "imap", "pop3" };

enum st {
	ST_FREE,
	ST_CONNECTING,
	ST_HANDSHAKE,
	ST_SEND,	/* sending msg[] */
	ST_ECHO,	/* waiting for the echo of what was sent */
	ST_STREAM,	/* upload or download */
	ST_HELD,	/* idle: established, held */
	ST_MAIL,	/* a mail session's script */
};

struct lc {
	int			 fd;
	gnutls_session_t	 s;
	enum st			 st;
	uint32_t		 events;	/* registered with epoll */
	size_t			 msglen;	/* in msg[], to send */
	size_t			 sent;
	size_t			 expect;	/* echo bytes awaited */
	size_t			 got;
	uint64_t		 t0;		/* ns: operation start */
	int			 established;	/* idle: counted */
	/* Mail sessions. */
	int			 step;		/* in script[] */
	int			 tls_up;	/* plaintext before STARTTLS */
	int			 seen;		/* what the step looks for */
	char			*line;		/* a reply line being read */
	size_t			 llen, lcap;
};

static struct {
	enum mode		 mode;
	struct sockaddr_storage	 addr;
	socklen_t		 addrlen;
	int			 conc;
	double			 duration;
	double			 warmup;
	int			 nidle;
	double			 hold;
	size_t			 msgsize;
	pid_t			 pid;
	const char		*priority;
	const char		*sni;
	enum xproto		 proto;
	int			 starttls;
	size_t			 mailsize;
} opt = {
	.mode = M_FULL,
	.conc = 16,
	.duration = 5,
	.warmup = 1,
	.nidle = 1000,
	.hold = 1,
	.msgsize = 64,
	.priority = DEFAULT_PRIORITY,
	.sni = "bench.test",		/* as real clients send one */
};

static int ep;
static struct lc *conns;
static int nconns;
static gnutls_certificate_credentials_t cred;
static gnutls_priority_t prio;
static gnutls_datum_t sess;		/* resumed: a ticket to offer */
static unsigned char msg[MAX_MSG + 1];
static unsigned char rbuf[64 * 1024];
static unsigned char payload[CHUNK];

/* What the run counts. */
static int in_window, stopping;
static uint64_t ops, errors, not_resumed, bytes, nestablished, nalive;
static uint64_t verified;		/* mail sessions done and checked */
static uint64_t *samples;
static size_t nsamples;
static char first_error[256];
static uint64_t warm_errors;		/* mail: errors in the warm-up */
static char warm_error[256];

static uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
}

/*
 * Sum utime + stime (clock ticks) and RSS (KiB) over ${root} and all its
 * descendants: hitch runs its workers as child processes.  /proc/N/stat of
 * a process already covers all of its threads.
 */
static int
proc_usage(pid_t root, uint64_t *ticks, uint64_t *rss_kb)
{
	static pid_t pids[65536], ppids[65536];
	static uint64_t cpu[65536], rss[65536];
	static char in_tree[65536];
	long pagekb = sysconf(_SC_PAGESIZE) / 1024;
	DIR *d;
	struct dirent *e;
	size_t n = 0, i;
	int changed, found = 0;

	*ticks = *rss_kb = 0;
	if ((d = opendir("/proc")) == NULL)
		return (-1);
	while ((e = readdir(d)) != NULL && n < 65536) {
		char path[300], buf[1024], *p;
		unsigned long long ut, stt, rs;
		int ppid;
		FILE *f;

		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		if ((f = fopen(path, "r")) == NULL)
			continue;
		p = fgets(buf, sizeof(buf), f);
		fclose(f);
		if (p == NULL || (p = strrchr(buf, ')')) == NULL)
			continue;
		/* After ")": state ppid ... utime(14) stime(15) ... rss(24). */
		if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
		    "%llu %llu %*d %*d %*d %*d %*d %*d %*u %*u %llu", &ppid,
		    &ut, &stt, &rs) != 4)
			continue;
		pids[n] = (pid_t)atoi(e->d_name);
		ppids[n] = (pid_t)ppid;
		cpu[n] = ut + stt;
		rss[n] = rs * (uint64_t)pagekb;
		in_tree[n] = pids[n] == root;
		found |= in_tree[n];
		n++;
	}
	closedir(d);
	if (!found)
		return (-1);
	do {
		changed = 0;
		for (i = 0; i < n; i++) {
			size_t j;

			if (in_tree[i])
				continue;
			for (j = 0; j < n; j++)
				if (in_tree[j] && pids[j] == ppids[i]) {
					in_tree[i] = 1;
					changed = 1;
					break;
				}
		}
	} while (changed);
	for (i = 0; i < n; i++)
		if (in_tree[i]) {
			*ticks += cpu[i];
			*rss_kb += rss[i];
		}
	return (0);
}

static void
note_error(const char *what, const char *why)
{

	errors++;
	if (first_error[0] == '\0')
		snprintf(first_error, sizeof(first_error), "%s: %s", what, why);
}

static void
set_events(struct lc *c, uint32_t ev)
{
	struct epoll_event e;

	if (c->events == ev)
		return;
	e.events = ev;
	e.data.ptr = c;
	if (c->events == 0)
		(void)epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
	else if (ev == 0)
		(void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, &e);
	else
		(void)epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
	c->events = ev;
}

/* Wait for what GnuTLS is blocked on. */
static void
want_tls(struct lc *c)
{

	set_events(c, gnutls_record_get_direction(c->s) ? EPOLLOUT : EPOLLIN);
}

static void
lc_close(struct lc *c)
{

	if (c->st == ST_FREE)
		return;
	set_events(c, 0);
	if (c->s != NULL) {
		gnutls_deinit(c->s);
		c->s = NULL;
	}
	free(c->line);
	c->line = NULL;
	c->llen = c->lcap = 0;
	close(c->fd);
	c->fd = -1;
	c->st = ST_FREE;
}

static int
lc_open(struct lc *c)
{
	int fd, one = 1;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	if ((fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) < 0) {
		note_error("socket", strerror(errno));
		return (-1);
	}
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&opt.addr, opt.addrlen) < 0 &&
	    errno != EINPROGRESS) {
		note_error("connect", strerror(errno));
		close(fd);
		return (-1);
	}
	c->fd = fd;
	c->st = ST_CONNECTING;
	c->t0 = now_ns();
	if (gnutls_init(&c->s, GNUTLS_CLIENT | GNUTLS_NONBLOCK |
	    GNUTLS_NO_SIGNAL) < 0 ||
	    gnutls_priority_set(c->s, prio) < 0 ||
	    gnutls_credentials_set(c->s, GNUTLS_CRD_CERTIFICATE, cred) < 0) {
		note_error("gnutls", "cannot make a session");
		lc_close(c);
		return (-1);
	}
	if (opt.sni[0] != '\0')
		(void)gnutls_server_name_set(c->s, GNUTLS_NAME_DNS, opt.sni,
		    strlen(opt.sni));
	if (opt.mode == M_RESUMED && sess.size > 0)
		(void)gnutls_session_set_data(c->s, sess.data, sess.size);
	gnutls_transport_set_int(c->s, fd);
	set_events(c, EPOLLOUT);
	return (0);
}

static void
fail(struct lc *c, const char *what, const char *why)
{

	/* Failures while stopping are the teardown, not the proxy's. */
	if (!stopping)
		note_error(what, why);
	lc_close(c);
}

/* Queue a message: ${first} adds the backend's mode byte in front. */
static void
start_send(struct lc *c, int modebyte, size_t len)
{
	size_t off = 0;

	if (modebyte)
		msg[off++] = (unsigned char)modebyte;
	memset(msg + off, 'x', len);
	c->msglen = off + len;
	c->sent = 0;
	c->expect = modebyte == 'E' || modebyte == 0 ? len : 0;
	c->got = 0;
	c->st = ST_SEND;
}

static int
percentile_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x < y ? -1 : x > y);
}

/* An echo came back whole: the operation is over. */
static void
echo_done(struct lc *c)
{
	uint64_t t = now_ns();

	switch (opt.mode) {
	case M_FULL:
	case M_RESUMED:
		if (opt.mode == M_RESUMED) {
			if (sess.size == 0 && (gnutls_session_get_flags(c->s) &
			    GNUTLS_SFLAGS_SESSION_TICKET))
				(void)gnutls_session_get_data2(c->s, &sess);
			if (!gnutls_session_is_resumed(c->s)) {
				if (in_window)
					not_resumed++;
				(void)gnutls_bye(c->s, GNUTLS_SHUT_WR);
				lc_close(c);
				return;
			}
		}
		if (in_window)
			ops++;
		(void)gnutls_bye(c->s, GNUTLS_SHUT_WR);
		lc_close(c);
		return;
	case M_IDLE:
		if (!c->established) {
			c->established = 1;
			nestablished++;
		} else
			nalive++;
		c->st = ST_HELD;
		set_events(c, EPOLLIN);
		return;
	case M_PINGPONG:
		if (in_window) {
			ops++;
			if (nsamples < MAX_SAMPLES)
				samples[nsamples++] = t - c->t0;
		}
		c->t0 = t;
		start_send(c, 0, opt.msgsize);
		return;
	default:
		return;
	}
}

/*
 * Mail sessions (-x smtp|imap|pop3): each connection walks a script of
 * steps, the same for every connection, built once from the options.  A
 * step sends a command (or the message), expects the reply (or the
 * message, checked octet for octet against mailmsg.h), starts TLS, holds
 * the connection (idle) or ends the session.
 */
enum mkind {
	K_SEND,		/* text */
	K_BODY,		/* the message and ".\r\n" (SMTP DATA) */
	K_TLS,		/* handshake (first step, or after STARTTLS) */
	K_SMTP,		/* a reply of class text[0] ('2', '3') */
	K_SMTP_STLS,	/* a 2xx EHLO reply that offers STARTTLS */
	K_IMAP_GREET,	/* "* OK" */
	K_IMAP_TAG,	/* lines up to "TAG OK"; check what came before */
	K_POP_OK,	/* "+OK" */
	K_POP_RETR,	/* "+OK", the message, "." */
	K_HOLD,		/* idle: held here, NOOP after the hold */
	K_END,		/* session done: close */
};

enum mcheck { C_NONE, C_FETCH, C_SEARCH };

struct mstep {
	enum mkind	 kind;
	char		 text[64];	/* to send, a tag, or a reply class */
	enum mcheck	 check;
};

#define MAX_STEPS	32
#define MAX_LINE	(4 << 20)	/* a reply line we are willing to hold */

static struct mstep script[MAX_STEPS];
static int nscript;
static unsigned char *mailmsg;		/* the message, then ".\r\n" */

static void
script_add(enum mkind kind, const char *text, enum mcheck check)
{

	if (nscript == MAX_STEPS)
		abort();
	script[nscript].kind = kind;
	snprintf(script[nscript].text, sizeof(script[nscript].text), "%s",
	    text != NULL ? text : "");
	script[nscript].check = check;
	nscript++;
}

/* The session the options describe (see the usage). */
static void
script_build(void)
{
	char t[64];
	int tls = opt.starttls, idle = opt.mode == M_IDLE;
	size_t m = opt.mailsize;

	if (!tls)
		script_add(K_TLS, NULL, C_NONE);
	switch (opt.proto) {
	case X_SMTP:
		script_add(K_SMTP, "2", C_NONE);
		script_add(K_SEND, "EHLO loadgen.bench.test\r\n", C_NONE);
		if (tls) {
			script_add(K_SMTP_STLS, "2", C_NONE);
			script_add(K_SEND, "STARTTLS\r\n", C_NONE);
			script_add(K_SMTP, "2", C_NONE);
			script_add(K_TLS, NULL, C_NONE);
			script_add(K_SEND, "EHLO loadgen.bench.test\r\n",
			    C_NONE);
		}
		script_add(K_SMTP, "2", C_NONE);
		if (m > 0 && !idle) {
			snprintf(t, sizeof(t), "MAIL FROM:<sender@bench.test> "
			    "SIZE=%zu\r\n", m);
			script_add(K_SEND, t, C_NONE);
			script_add(K_SMTP, "2", C_NONE);
			script_add(K_SEND, "RCPT TO:<rcpt@bench.test>\r\n",
			    C_NONE);
			script_add(K_SMTP, "2", C_NONE);
			script_add(K_SEND, "DATA\r\n", C_NONE);
			script_add(K_SMTP, "3", C_NONE);
			script_add(K_BODY, NULL, C_NONE);
			script_add(K_SMTP, "2", C_NONE);
		}
		if (idle) {
			script_add(K_HOLD, NULL, C_NONE);
			script_add(K_SEND, "NOOP\r\n", C_NONE);
			script_add(K_SMTP, "2", C_NONE);
		}
		script_add(K_SEND, "QUIT\r\n", C_NONE);
		script_add(K_SMTP, "2", C_NONE);
		break;
	case X_IMAP:
		script_add(K_IMAP_GREET, NULL, C_NONE);
		if (tls) {
			script_add(K_SEND, "a0 STARTTLS\r\n", C_NONE);
			script_add(K_IMAP_TAG, "a0", C_NONE);
			script_add(K_TLS, NULL, C_NONE);
		}
		snprintf(t, sizeof(t), "a1 LOGIN %c%zu secret\r\n",
		    opt.mode == M_SEARCH ? 's' : 'm', m);
		script_add(K_SEND, t, C_NONE);
		script_add(K_IMAP_TAG, "a1", C_NONE);
		script_add(K_SEND, "a2 SELECT INBOX\r\n", C_NONE);
		script_add(K_IMAP_TAG, "a2", C_NONE);
		if (opt.mode == M_SEARCH) {
			script_add(K_SEND, "a3 SEARCH ALL\r\n", C_NONE);
			script_add(K_IMAP_TAG, "a3", C_SEARCH);
		} else if (m > 0 && !idle) {
			script_add(K_SEND, "a3 FETCH 1 BODY[]\r\n", C_NONE);
			script_add(K_IMAP_TAG, "a3", C_FETCH);
		}
		if (idle) {
			script_add(K_HOLD, NULL, C_NONE);
			script_add(K_SEND, "a5 NOOP\r\n", C_NONE);
			script_add(K_IMAP_TAG, "a5", C_NONE);
		}
		script_add(K_SEND, "a4 LOGOUT\r\n", C_NONE);
		script_add(K_IMAP_TAG, "a4", C_NONE);
		break;
	default:
		script_add(K_POP_OK, NULL, C_NONE);
		if (tls) {
			script_add(K_SEND, "STLS\r\n", C_NONE);
			script_add(K_POP_OK, NULL, C_NONE);
			script_add(K_TLS, NULL, C_NONE);
		}
		snprintf(t, sizeof(t), "USER m%zu\r\n", m);
		script_add(K_SEND, t, C_NONE);
		script_add(K_POP_OK, NULL, C_NONE);
		script_add(K_SEND, "PASS secret\r\n", C_NONE);
		script_add(K_POP_OK, NULL, C_NONE);
		if (m > 0 && !idle) {
			script_add(K_SEND, "RETR 1\r\n", C_NONE);
			script_add(K_POP_RETR, NULL, C_NONE);
		}
		if (idle) {
			script_add(K_HOLD, NULL, C_NONE);
			script_add(K_SEND, "NOOP\r\n", C_NONE);
			script_add(K_POP_OK, NULL, C_NONE);
		}
		script_add(K_SEND, "QUIT\r\n", C_NONE);
		script_add(K_POP_OK, NULL, C_NONE);
		break;
	}
	script_add(K_END, NULL, C_NONE);
}

/* What the connection was waiting for, for error messages. */
static const char *
mail_where(const struct lc *c)
{
	int i;

	for (i = c->step; i >= 0; i--)
		if (script[i].kind == K_SEND)
			return (script[i].text);
	return ("the greeting");
}

static void
mail_fail(struct lc *c, const char *why, const char *line, size_t len)
{
	char what[160], where[64];
	size_t n;

	snprintf(where, sizeof(where), "%s", mail_where(c));
	n = strcspn(where, "\r\n");
	where[n] = '\0';
	if (line != NULL) {
		n = strcspn(line, "\r\n");
		snprintf(what, sizeof(what), "after \"%s\": %s: \"%.*s\"", where,
		    why, (int)(n < len ? (n > 80 ? 80 : n) : 0), line);
	} else
		snprintf(what, sizeof(what), "after \"%s\": %s", where, why);
	fail(c, opt.proto == X_SMTP ? "smtp" : opt.proto == X_IMAP ? "imap" :
	    "pop3", what);
}

/* Send on the connection as it is now (TLS or not): >0, 0 (wait), -1. */
static ssize_t
io_send(struct lc *c, const void *p, size_t len)
{
	ssize_t n;

	if (c->tls_up) {
		n = gnutls_record_send(c->s, p, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			want_tls(c);
			return (0);
		}
		if (n < 0) {
			mail_fail(c, gnutls_strerror((int)n), NULL, 0);
			return (-1);
		}
		return (n);
	}
	n = send(c->fd, p, len, MSG_NOSIGNAL);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		set_events(c, EPOLLOUT);
		return (0);
	}
	if (n <= 0) {
		mail_fail(c, strerror(errno), NULL, 0);
		return (-1);
	}
	return (n);
}

static ssize_t
io_recv(struct lc *c, void *p, size_t len)
{
	ssize_t n;

	if (c->tls_up) {
		n = gnutls_record_recv(c->s, p, len);
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			want_tls(c);
			return (0);
		}
		if (n <= 0) {
			mail_fail(c, n == 0 ? "closed by the proxy" :
			    gnutls_strerror((int)n), NULL, 0);
			return (-1);
		}
		return (n);
	}
	n = recv(c->fd, p, len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		set_events(c, EPOLLIN);
		return (0);
	}
	if (n <= 0) {
		mail_fail(c, n == 0 ? "closed by the proxy" : strerror(errno),
		    NULL, 0);
		return (-1);
	}
	return (n);
}

/* Does the IMAP line end in a literal "{N}"?  Its size, or -1. */
static long long
imap_literal(const char *l, size_t len)
{
	const char *p;

	while (len > 0 && (l[len - 1] == '\n' || l[len - 1] == '\r'))
		len--;
	if (len < 3 || l[len - 1] != '}')
		return (-1);
	for (p = l + len - 2; p > l && isdigit((unsigned char)*p); p--)
		;
	if (*p != '{' || p == l + len - 2)
		return (-1);
	return (strtoll(p + 1, NULL, 10));
}

/* One whole reply line: -1 failed, 0 more to come, 1 the step is done. */
static int
mail_line(struct lc *c, const char *l, size_t len)
{
	const struct mstep *st = &script[c->step];
	size_t tl;
	long long lit;

	switch (st->kind) {
	case K_SMTP:
	case K_SMTP_STLS:
		if (len < 5 || l[0] != st->text[0] || !isdigit((unsigned
		    char)l[1]) || !isdigit((unsigned char)l[2]) ||
		    (l[3] != ' ' && l[3] != '-')) {
			mail_fail(c, "unexpected reply", l, len);
			return (-1);
		}
		if (len >= 12 && strncasecmp(l + 4, "STARTTLS", 8) == 0)
			c->seen = 1;
		if (l[3] == '-')
			return (0);
		if (st->kind == K_SMTP_STLS && !c->seen) {
			mail_fail(c, "STARTTLS not offered", l, len);
			return (-1);
		}
		return (1);
	case K_IMAP_GREET:
		if (len < 4 || strncmp(l, "* OK", 4) != 0) {
			mail_fail(c, "unexpected greeting", l, len);
			return (-1);
		}
		return (1);
	case K_IMAP_TAG:
		tl = strlen(st->text);
		if (len > tl && strncmp(l, st->text, tl) == 0 && l[tl] == ' ') {
			if (len < tl + 3 || strncmp(l + tl + 1, "OK", 2) != 0) {
				mail_fail(c, "refused", l, len);
				return (-1);
			}
			if (st->check != C_NONE && !c->seen) {
				mail_fail(c, st->check == C_FETCH ?
				    "OK without the message" :
				    "OK without a whole SEARCH line", l, len);
				return (-1);
			}
			return (1);
		}
		if (st->check == C_FETCH && (lit = imap_literal(l, len)) >= 0) {
			if ((size_t)lit != opt.mailsize) {
				mail_fail(c, "wrong literal size", l, len);
				return (-1);
			}
			c->expect = (size_t)lit;
			c->got = 0;
			c->seen = 1;
			return (0);
		}
		if (st->check == C_SEARCH && len >= 9 &&
		    strncmp(l, "* SEARCH ", 9) == 0) {
			if (len < opt.mailsize) {
				mail_fail(c, "short SEARCH line", l, len);
				return (-1);
			}
			c->seen = 1;
			if (in_window)
				bytes += len;
		}
		return (0);
	case K_POP_OK:
	case K_POP_RETR:
		if (len < 3 || strncmp(l, "+OK", 3) != 0) {
			mail_fail(c, "unexpected reply", l, len);
			return (-1);
		}
		if (st->kind == K_POP_OK)
			return (1);
		/* The message and its ".\r\n", exactly. */
		c->expect = opt.mailsize + 3;
		c->got = 0;
		c->seen = 1;
		return (0);
	default:
		abort();
	}
}

/*
 * Take ${n} octets of reply: message octets are compared with the message
 * as they come, lines are gathered and judged.  -1 failed, 0 more to come,
 * 1 the step is done (what is left over is kept for the next one).
 */
static int
mail_input(struct lc *c, const unsigned char *p, size_t n)
{
	const unsigned char *eol;
	size_t k;
	int rc;

	while (n > 0) {
		if (c->got < c->expect) {
			k = c->expect - c->got < n ? c->expect - c->got : n;
			if (memcmp(p, mailmsg + c->got, k) != 0) {
				char why[80];

				for (k = 0; p[k] == mailmsg[c->got + k]; k++)
					;
				snprintf(why, sizeof(why), "the message "
				    "differs at octet %zu", c->got + k);
				mail_fail(c, why, NULL, 0);
				return (-1);
			}
			if (in_window)
				bytes += k > opt.mailsize - c->got ?
				    opt.mailsize - c->got : k;
			c->got += k;
			p += k;
			n -= k;
			/* POP3: the message and "." end the reply. */
			if (c->got == c->expect &&
			    script[c->step].kind == K_POP_RETR) {
				c->expect = c->got = 0;
				rc = 1;
				goto done;
			}
			continue;
		}
		eol = memchr(p, '\n', n);
		k = eol != NULL ? (size_t)(eol - p) + 1 : n;
		if (c->llen + k > MAX_LINE) {
			mail_fail(c, "reply line too long", NULL, 0);
			return (-1);
		}
		if (c->llen + k + 1 > c->lcap) {
			size_t cap = c->lcap == 0 ? 256 : c->lcap;
			char *nl;

			while (cap < c->llen + k + 1)
				cap *= 2;
			if ((nl = realloc(c->line, cap)) == NULL) {
				mail_fail(c, "out of memory", NULL, 0);
				return (-1);
			}
			c->line = nl;
			c->lcap = cap;
		}
		memcpy(c->line + c->llen, p, k);
		c->llen += k;
		c->line[c->llen] = '\0';
		p += k;
		n -= k;
		if (eol == NULL)
			return (0);
		k = c->llen;
		c->llen = 0;
		if ((rc = mail_line(c, c->line, k)) != 0)
			goto done;
	}
	return (0);
done:
	if (rc > 0 && n > 0) {
		/* Nothing is pipelined: the server spoke out of turn. */
		mail_fail(c, "data after the reply", (const char *)p, n);
		return (-1);
	}
	return (rc);
}

/* Start the next step of the script. */
static void
mail_next(struct lc *c)
{

	c->step++;
	c->sent = 0;
	c->seen = 0;
	c->expect = c->got = 0;
}

/* Drive a mail session as far as it goes; returns when it must wait. */
static void
mail_step(struct lc *c)
{
	const struct mstep *st;
	ssize_t n;
	size_t len;
	int rc;

	for (;;) {
		st = &script[c->step];
		switch (st->kind) {
		case K_SEND:
			len = strlen(st->text);
			if ((n = io_send(c, st->text + c->sent, len -
			    c->sent)) <= 0)
				return;
			if ((c->sent += (size_t)n) == len)
				mail_next(c);
			break;
		case K_BODY:
			len = opt.mailsize + 3;
			n = io_send(c, mailmsg + c->sent, len - c->sent >
			    CHUNK ? CHUNK : len - c->sent);
			if (n <= 0)
				return;
			/* Count the message, not its terminator. */
			if (in_window && c->sent < opt.mailsize)
				bytes += (c->sent + (size_t)n > opt.mailsize ?
				    opt.mailsize : c->sent + (size_t)n) -
				    c->sent;
			if ((c->sent += (size_t)n) == len)
				mail_next(c);
			break;
		case K_TLS:
			c->st = ST_HANDSHAKE;
			return;
		case K_HOLD:
			if (!c->established) {
				c->established = 1;
				nestablished++;
			}
			c->st = ST_HELD;
			set_events(c, EPOLLIN);
			return;
		case K_END:
			if (opt.mode == M_IDLE)
				nalive++;
			else if (in_window)
				ops++;
			verified++;
			(void)gnutls_bye(c->s, GNUTLS_SHUT_WR);
			lc_close(c);
			return;
		default:
			n = io_recv(c, rbuf, sizeof(rbuf));
			if (n <= 0)
				return;
			if ((rc = mail_input(c, rbuf, (size_t)n)) < 0)
				return;
			if (rc > 0)
				mail_next(c);
			break;
		}
	}
}

/* Drive ${c} as far as it goes without blocking. */
static void
step(struct lc *c)
{
	ssize_t n;
	int rc, err;
	socklen_t len;

	for (;;) {
		switch (c->st) {
		case ST_FREE:
			return;
		case ST_CONNECTING:
			err = 0;
			len = sizeof(err);
			(void)getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err,
			    &len);
			if (err != 0) {
				fail(c, "connect", strerror(err));
				return;
			}
			c->st = opt.proto != X_NONE ? ST_MAIL : ST_HANDSHAKE;
			break;
		case ST_MAIL:
			mail_step(c);
			if (c->st != ST_HANDSHAKE)
				return;
			break;
		case ST_HANDSHAKE:
			rc = gnutls_handshake(c->s);
			if (rc == GNUTLS_E_AGAIN ||
			    rc == GNUTLS_E_INTERRUPTED) {
				want_tls(c);
				return;
			}
			if (rc < 0) {
				fail(c, "handshake", gnutls_strerror(rc));
				return;
			}
			if (opt.proto != X_NONE) {
				c->tls_up = 1;
				mail_next(c);
				c->st = ST_MAIL;
				break;
			}
			switch (opt.mode) {
			case M_UPLOAD:
				start_send(c, 'S', 0);
				break;
			case M_DOWNLOAD:
				start_send(c, 'D', 0);
				break;
			case M_PINGPONG:
				c->t0 = now_ns();
				start_send(c, 'E', opt.msgsize);
				break;
			default:
				start_send(c, 'E', 1);
				break;
			}
			break;
		case ST_SEND:
			n = gnutls_record_send(c->s, msg + c->sent,
			    c->msglen - c->sent);
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
				want_tls(c);
				return;
			}
			if (n < 0) {
				fail(c, "send", gnutls_strerror((int)n));
				return;
			}
			c->sent += (size_t)n;
			if (c->sent < c->msglen)
				break;
			if (opt.mode == M_UPLOAD || opt.mode == M_DOWNLOAD)
				c->st = ST_STREAM;
			else
				c->st = ST_ECHO;
			break;
		case ST_ECHO:
			n = gnutls_record_recv(c->s, rbuf, sizeof(rbuf));
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
				want_tls(c);
				return;
			}
			if (n <= 0) {
				fail(c, "recv", n == 0 ? "closed by the peer" :
				    gnutls_strerror((int)n));
				return;
			}
			c->got += (size_t)n;
			if (c->got >= c->expect) {
				echo_done(c);
				if (c->st != ST_SEND)
					return;
			}
			break;
		case ST_STREAM:
			if (stopping)
				return;
			if (opt.mode == M_UPLOAD)
				n = gnutls_record_send(c->s, payload,
				    sizeof(payload));
			else
				n = gnutls_record_recv(c->s, rbuf,
				    sizeof(rbuf));
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
				want_tls(c);
				return;
			}
			if (n <= 0) {
				fail(c, "stream", n == 0 ?
				    "closed by the peer" :
				    gnutls_strerror((int)n));
				return;
			}
			if (in_window)
				bytes += (uint64_t)n;
			break;
		case ST_HELD:
			/* Nothing should come: anything is the end of it. */
			n = gnutls_record_recv(c->s, rbuf, sizeof(rbuf));
			if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
				return;
			fail(c, "held connection", n == 0 ? "closed by the "
			    "peer" : n < 0 ? gnutls_strerror((int)n) :
			    "unexpected data");
			return;
		}
	}
}

/* Run the loop until ${deadline} (ns), reopening slots if ${refill}. */
static void
loop_until(uint64_t deadline, int refill)
{
	struct epoll_event evs[256];
	int i, n;
	uint64_t t;

	while ((t = now_ns()) < deadline) {
		if (refill)
			for (i = 0; i < nconns; i++)
				if (conns[i].st == ST_FREE &&
				    lc_open(&conns[i]) == 0)
					step(&conns[i]);
		n = epoll_wait(ep, evs, 256, (int)((deadline - t) / 1000000 +
		    1 > 50 ? 50 : (deadline - t) / 1000000 + 1));
		for (i = 0; i < n; i++)
			step(evs[i].data.ptr);
	}
}

static double
secs(uint64_t ns)
{

	return ((double)ns / 1e9);
}

static int
parse_addr(const char *s)
{
	char host[256], *colon;
	struct addrinfo hints, *res;
	const char *h;

	snprintf(host, sizeof(host), "%s", s);
	if ((colon = strrchr(host, ':')) == NULL)
		return (-1);
	*colon = '\0';
	h = host;
	if (h[0] == '[') {
		h++;
		host[strlen(host) - 1] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(h, colon + 1, &hints, &res) != 0)
		return (-1);
	memcpy(&opt.addr, res->ai_addr, res->ai_addrlen);
	opt.addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return (0);
}

static void
usage(void)
{

	fprintf(stderr,
	    "usage: loadgen -a HOST:PORT -m full|resumed|upload|download|"
	    "idle|pingpong|session|search\n"
	    "               [-c CONNS] [-d SECONDS] [-w WARMUP] [-n IDLE_CONNS]"
	    " [-H HOLD]\n"
	    "               [-s MSG_BYTES] [-p PROXY_PID] [-P PRIORITY] "
	    "[-S SNI]\n"
	    "               [-x smtp|imap|pop3 [-T] [-M MAIL_BYTES]]\n");
	exit(2);
}

static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int
main(int argc, char **argv)
{
	uint64_t t_start, t_end, cpu0 = 0, cpu1 = 0, rss0 = 0, rss1 = 0;
	double window, cpu_s = -1;
	const char *errpos;
	int ch, i, have_pid;
	long hz = sysconf(_SC_CLK_TCK);

	while ((ch = getopt(argc, argv, "a:c:d:H:m:M:n:p:P:s:S:Tw:x:h")) != -1) {
		switch (ch) {
		case 'a':
			if (parse_addr(optarg) < 0) {
				fprintf(stderr, "loadgen: bad address %s\n",
				    optarg);
				return (2);
			}
			break;
		case 'c':
			opt.conc = atoi(optarg);
			break;
		case 'd':
			opt.duration = atof(optarg);
			break;
		case 'H':
			opt.hold = atof(optarg);
			break;
		case 'm':
			for (i = 0; i < M_NMODES; i++)
				if (strcmp(optarg, mode_names[i]) == 0)
					break;
			if (i == M_NMODES)
				usage();
			opt.mode = (enum mode)i;
			break;
		case 'M':
			opt.mailsize = (size_t)strtoull(optarg, NULL, 10);
			break;
		case 'T':
			opt.starttls = 1;
			break;
		case 'x':
			for (i = 1; i < 4; i++)
				if (strcmp(optarg, proto_names[i]) == 0)
					break;
			if (i == 4)
				usage();
			opt.proto = (enum xproto)i;
			break;
		case 'n':
			opt.nidle = atoi(optarg);
			break;
		case 'p':
			opt.pid = (pid_t)atoi(optarg);
			break;
		case 'P':
			opt.priority = optarg;
			break;
		case 's':
			opt.msgsize = (size_t)atol(optarg);
			break;
		case 'S':
			opt.sni = optarg;
			break;
		case 'w':
			opt.warmup = atof(optarg);
			break;
		default:
			usage();
		}
	}
	if (opt.addrlen == 0 || opt.conc < 1 || opt.nidle < 1 ||
	    opt.msgsize < 1 || opt.msgsize > MAX_MSG)
		usage();
	/* Mail sessions: which modes, and a message both ends can check. */
	if ((opt.proto != X_NONE) != (opt.mode == M_SESSION ||
	    opt.mode == M_SEARCH || (opt.mode == M_IDLE &&
	    opt.proto != X_NONE)) || (opt.starttls && opt.proto == X_NONE) ||
	    (opt.mode == M_SEARCH && opt.proto != X_IMAP))
		usage();
	if (opt.proto != X_NONE && opt.mode != M_SEARCH && opt.mailsize > 0 &&
	    (mailmsg = mailmsg_new(opt.mailsize)) == NULL) {
		fprintf(stderr, "loadgen: -M must be 0 or at least %d\n",
		    MAILMSG_MIN);
		return (2);
	}
	if (opt.proto != X_NONE)
		script_build();
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	if (gnutls_certificate_allocate_credentials(&cred) < 0 ||
	    gnutls_priority_init(&prio, opt.priority, &errpos) < 0) {
		fprintf(stderr, "loadgen: bad priority %s\n", opt.priority);
		return (2);
	}
	memset(payload, 'u', sizeof(payload));
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return (1);
	if (opt.mode == M_PINGPONG) {
		opt.conc = opt.conc == 16 ? 1 : opt.conc;
		if ((samples = calloc(MAX_SAMPLES, sizeof(*samples))) == NULL)
			return (1);
	}
	if (opt.mode == M_UPLOAD || opt.mode == M_DOWNLOAD)
		opt.conc = opt.conc == 16 ? 1 : opt.conc;
	nconns = opt.mode == M_IDLE ? opt.nidle : opt.conc;
	if ((conns = calloc((size_t)nconns, sizeof(*conns))) == NULL)
		return (1);
	have_pid = opt.pid > 0 && proc_usage(opt.pid, &cpu0, &rss0) == 0;
	if (opt.pid > 0 && !have_pid)
		fprintf(stderr, "loadgen: no process %d in /proc\n",
		    (int)opt.pid);

	if (opt.mode == M_IDLE) {
		/* Open them in waves: the accept queue must not overflow. */
		uint64_t deadline = now_ns() + (uint64_t)(120 * 1e9);
		int opened = 0, inflight;

		t_start = now_ns();
		while (now_ns() < deadline) {
			inflight = 0;
			for (i = 0; i < opened; i++)
				if (conns[i].st != ST_FREE &&
				    conns[i].st != ST_HELD)
					inflight++;
			while (opened < nconns && inflight < 64) {
				if (lc_open(&conns[opened]) == 0) {
					step(&conns[opened]);
					inflight++;
				}
				opened++;
			}
			if (opened == nconns && inflight == 0)
				break;
			loop_until(now_ns() + 2000000, 0);
		}
		t_end = now_ns();
		window = secs(t_end - t_start);
		/* Let the proxy settle, then read its memory. */
		loop_until(now_ns() + (uint64_t)(opt.hold * 1e9), 0);
		if (have_pid)
			(void)proc_usage(opt.pid, &cpu1, &rss1);
		/* Every held connection must still carry data both ways. */
		for (i = 0; i < nconns; i++)
			if (conns[i].st == ST_HELD && opt.proto != X_NONE) {
				conns[i].st = ST_MAIL;
				mail_next(&conns[i]);
				step(&conns[i]);
			} else if (conns[i].st == ST_HELD) {
				start_send(&conns[i], 0, 1);
				step(&conns[i]);
			}
		deadline = now_ns() + (uint64_t)(30 * 1e9);
		while (now_ns() < deadline) {
			int busy = 0;

			for (i = 0; i < nconns && !busy; i++)
				busy = conns[i].st == ST_MAIL ||
				    conns[i].st == ST_SEND ||
				    conns[i].st == ST_ECHO;
			if (!busy)
				break;
			loop_until(now_ns() + 10000000, 0);
		}
		stopping = 1;
		for (i = 0; i < nconns; i++)
			lc_close(&conns[i]);
		printf("RESULT mode=idle proto=%s starttls=%d conns=%d "
		    "established=%llu alive=%llu errors=%llu open_s=%.2f",
		    proto_names[opt.proto], opt.starttls, nconns,
		    (unsigned long long)nestablished,
		    (unsigned long long)nalive, (unsigned long long)errors,
		    window);
		if (have_pid)
			printf(" rss_before_kb=%llu rss_after_kb=%llu "
			    "kb_per_conn=%.2f", (unsigned long long)rss0,
			    (unsigned long long)rss1, nestablished > 0 ?
			    (double)(rss1 - rss0) / (double)nestablished : 0);
		printf("\n");
		if (first_error[0] != '\0')
			fprintf(stderr, "loadgen: first error: %s\n",
			    first_error);
		return (errors == 0 && nalive == (uint64_t)nconns ? 0 : 1);
	}

	/* Warm up (and, resumed, get a ticket), then measure a window. */
	t_start = now_ns();
	loop_until(t_start + (uint64_t)(opt.warmup * 1e9), 1);
	if (opt.mode == M_RESUMED)
		while (sess.size == 0 && errors < 100)
			loop_until(now_ns() + 10000000, 1);
	/* Mail sessions check correctness: an error in the warm-up counts. */
	if (errors > 0 && opt.proto != X_NONE) {
		warm_errors = errors;
		snprintf(warm_error, sizeof(warm_error), "%s", first_error);
	}
	errors = 0;
	first_error[0] = '\0';
	if (have_pid)
		(void)proc_usage(opt.pid, &cpu0, &rss0);
	in_window = 1;
	t_start = now_ns();
	loop_until(t_start + (uint64_t)(opt.duration * 1e9), 1);
	t_end = now_ns();
	if (have_pid)
		(void)proc_usage(opt.pid, &cpu1, &rss1);
	in_window = 0;
	if (opt.proto != X_NONE) {
		/*
		 * Let the sessions in flight finish (nothing new starts), so
		 * that even a short run checks whole transfers.
		 */
		uint64_t deadline = now_ns() + (uint64_t)(120 * 1e9);
		int busy = 1;

		while (busy && now_ns() < deadline) {
			loop_until(now_ns() + 10000000, 0);
			for (i = 0, busy = 0; i < nconns && !busy; i++)
				busy = conns[i].st != ST_FREE;
		}
		if (busy)
			note_error("drain", "sessions still open after 120 s");
	}
	stopping = 1;
	for (i = 0; i < nconns; i++)
		lc_close(&conns[i]);
	window = secs(t_end - t_start);
	if (have_pid)
		cpu_s = (double)(cpu1 - cpu0) / (double)hz;

	printf("RESULT mode=%s conc=%d window_s=%.3f errors=%llu",
	    mode_names[opt.mode], opt.conc, window,
	    (unsigned long long)errors);
	if (have_pid)
		printf(" proxy_cpu_s=%.3f proxy_cpu_pct=%.1f", cpu_s,
		    100 * cpu_s / window);
	switch (opt.mode) {
	case M_FULL:
	case M_RESUMED:
	case M_PINGPONG:
		printf(" ops=%llu ops_per_s=%.1f", (unsigned long long)ops,
		    (double)ops / window);
		if (opt.mode == M_RESUMED)
			printf(" not_resumed=%llu",
			    (unsigned long long)not_resumed);
		if (have_pid && ops > 0)
			printf(" cpu_us_per_op=%.1f", 1e6 * cpu_s /
			    (double)ops);
		if (opt.mode == M_PINGPONG && nsamples > 0) {
			double sum = 0;
			size_t k;

			qsort(samples, nsamples, sizeof(*samples),
			    percentile_cmp);
			for (k = 0; k < nsamples; k++)
				sum += (double)samples[k];
			printf(" p50_us=%.1f p90_us=%.1f p99_us=%.1f "
			    "mean_us=%.1f",
			    (double)samples[nsamples / 2] / 1e3,
			    (double)samples[nsamples * 9 / 10] / 1e3,
			    (double)samples[nsamples * 99 / 100] / 1e3,
			    sum / (double)nsamples / 1e3);
		}
		break;
	case M_UPLOAD:
	case M_DOWNLOAD:
		printf(" bytes=%llu mb_per_s=%.1f", (unsigned long long)bytes,
		    (double)bytes / 1e6 / window);
		if (have_pid && cpu_s > 0)
			printf(" mb_per_cpu_s=%.1f", (double)bytes / 1e6 /
			    cpu_s);
		break;
	case M_SESSION:
	case M_SEARCH:
		printf(" proto=%s starttls=%d mail_bytes=%zu warmup_errors=%llu"
		    " verified=%llu ops=%llu ops_per_s=%.1f bytes=%llu "
		    "mb_per_s=%.1f",
		    proto_names[opt.proto], opt.starttls, opt.mailsize,
		    (unsigned long long)warm_errors,
		    (unsigned long long)verified, (unsigned long long)ops,
		    (double)ops / window, (unsigned long long)bytes,
		    (double)bytes / 1e6 / window);
		if (have_pid && ops > 0)
			printf(" cpu_us_per_op=%.1f", 1e6 * cpu_s /
			    (double)ops);
		if (have_pid && bytes > 0 && cpu_s > 0)
			printf(" cpu_us_per_mb=%.1f mb_per_cpu_s=%.1f",
			    1e6 * cpu_s / ((double)bytes / 1e6),
			    (double)bytes / 1e6 / cpu_s);
		break;
	default:
		break;
	}
	printf("\n");
	if (warm_error[0] != '\0')
		fprintf(stderr, "loadgen: first error (warm-up): %s\n",
		    warm_error);
	if (first_error[0] != '\0')
		fprintf(stderr, "loadgen: first error: %s\n", first_error);
	if (opt.proto != X_NONE)
		return (verified == 0 || errors > 0 || warm_errors > 0 ? 1 : 0);
	return (ops == 0 && bytes == 0 ? 1 : 0);
}
