/*
 * backend: the plaintext server behind the proxy under test.  The first
 * byte a connection sends picks what it is:
 *   'S'  sink: everything after it is read and thrown away (MSG_TRUNC, so
 *        the kernel does not even copy it out)
 *   'E'  echo: everything after it is sent back
 *   'D'  source: an endless stream of bytes is sent
 * One thread, one epoll loop, level-triggered, no allocation unless an echo
 * cannot be written at once: it must never be the bottleneck.
 *
 * With -P smtp|imap|pop3 it is a mail server instead (it speaks first):
 *   smtp  EHLO, MAIL FROM:<...> SIZE=N, RCPT, DATA (the N-octet message of
 *         mailmsg.h, checked byte for byte: "250 ... verified" or "554 ...
 *         corrupted at octet K"), RSET, NOOP, QUIT
 *   imap  CAPABILITY, LOGIN, SELECT, FETCH (BODY[] literal), SEARCH, NOOP,
 *         LOGOUT
 *   pop3  CAPA, USER, PASS, STAT, RETR, NOOP, QUIT
 * The user name says what the mailbox holds: "mN" one message of N octets
 * (FETCH, RETR), "sN" a "* SEARCH" reply line of N octets.  Big replies are
 * sent from shared buffers, never copied per connection.
 *
 *   backend [-P smtp|imap|pop3] HOST:PORT   (prints "ready" once listening)
 */
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <ctype.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mailmsg.h"

#define SOURCE_CHUNK	(256 * 1024)
#define MAXFD		65536

struct mail;

struct bconn {
	char		 mode;		/* 0 until the first byte; 'M' mail */
	unsigned char	*pend;		/* echo not yet written */
	size_t		 plen;
	struct mail	*m;		/* mode 'M' */
};

static struct bconn bc[MAXFD];
static int ep;
static unsigned char buf[256 * 1024];
static unsigned char source[SOURCE_CHUNK];

static void
watch(int fd, int op, uint32_t ev)
{
	struct epoll_event e;

	e.events = ev;
	e.data.fd = fd;
	(void)epoll_ctl(ep, op, fd, &e);
}

static void
drop(int fd)
{

	(void)epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
	free(bc[fd].pend);
	free(bc[fd].m);
	memset(&bc[fd], 0, sizeof(bc[fd]));
	close(fd);
}

/*
 * The mail server.  One reply (or a few, if commands were pipelined) is in
 * flight at a time: small texts are copied into the connection's own
 * buffer, a message or SEARCH line is pointed at where it is shared.
 */
enum mproto { MP_NONE, MP_SMTP, MP_IMAP, MP_POP3 };

#define MAIL_LINE	1024		/* longest command line taken */
#define MAIL_TEXT	2048		/* small reply text in flight */
#define MAIL_IOV	8

struct mail {
	char		 line[MAIL_LINE];
	size_t		 llen;
	int		 in_data;	/* SMTP: receiving the message */
	size_t		 size;		/* SMTP SIZE=, or the mailbox's */
	size_t		 search;	/* the mailbox's SEARCH line */
	size_t		 off;		/* DATA: octets checked so far */
	const unsigned char *msg;	/* DATA: what must arrive */
	int		 bad;
	size_t		 bad_at;
	char		 text[MAIL_TEXT];
	size_t		 tlen;
	struct iovec	 iov[MAIL_IOV];
	int		 niov, iov0;
	int		 close_after;	/* QUIT, LOGOUT: close once sent */
};

static enum mproto mailproto;
static uint64_t mail_serial;

/* Messages and SEARCH lines by size, made once. */
#define MCACHE	8
static struct {
	size_t		 size;
	unsigned char	*p;
	size_t		 len;
} msgs[MCACHE], searches[MCACHE];

static const unsigned char *
message(size_t size)
{
	int i;

	for (i = 0; i < MCACHE && msgs[i].p != NULL; i++)
		if (msgs[i].size == size)
			return (msgs[i].p);
	if (i == MCACHE || (msgs[i].p = mailmsg_new(size)) == NULL)
		return (NULL);
	msgs[i].size = size;
	return (msgs[i].p);
}

/*
 * "* SEARCH 1 2 3 ...\r\n" of at least ${size} octets (numbers as IMAP
 * writes them, so rarely exactly ${size}); its length in *len.
 */
static const unsigned char *
search_line(size_t size, size_t *len)
{
	char num[32];
	size_t off, n;
	unsigned long k;
	int i;

	for (i = 0; i < MCACHE && searches[i].p != NULL; i++)
		if (searches[i].size == size) {
			*len = searches[i].len;
			return (searches[i].p);
		}
	if (i == MCACHE || size < 16 ||
	    (searches[i].p = malloc(size + 32)) == NULL)
		return (NULL);
	memcpy(searches[i].p, "* SEARCH", 8);
	for (off = 8, k = 1; off + 2 < size; k++) {
		n = (size_t)snprintf(num, sizeof(num), " %lu", k);
		memcpy(searches[i].p + off, num, n);
		off += n;
	}
	memcpy(searches[i].p + off, "\r\n", 2);
	searches[i].size = size;
	*len = searches[i].len = off + 2;
	return (searches[i].p);
}

static int
mail_iov(struct mail *m, const void *p, size_t len)
{

	if (m->niov == MAIL_IOV)
		return (-1);
	m->iov[m->niov].iov_base = (void *)(uintptr_t)p;
	m->iov[m->niov].iov_len = len;
	m->niov++;
	return (0);
}

/* Queue a small text reply (printf-style). */
static int __attribute__((format(printf, 2, 3)))
mail_say(struct mail *m, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(m->text + m->tlen, sizeof(m->text) - m->tlen, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(m->text) - m->tlen)
		return (-1);
	/* Texts follow each other: extend the last one if it is ours. */
	if (m->niov > m->iov0 && (char *)m->iov[m->niov - 1].iov_base +
	    m->iov[m->niov - 1].iov_len == m->text + m->tlen) {
		m->iov[m->niov - 1].iov_len += (size_t)n;
		m->tlen += (size_t)n;
		return (0);
	}
	if (mail_iov(m, m->text + m->tlen, (size_t)n) < 0)
		return (-1);
	m->tlen += (size_t)n;
	return (0);
}

/* Write what is queued; 1: all of it, 0: the rest waits, -1: error. */
static int
mail_flush(int fd)
{
	struct mail *m = bc[fd].m;
	struct msghdr mh;
	ssize_t n;
	size_t k;

	while (m->iov0 < m->niov) {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &m->iov[m->iov0];
		mh.msg_iovlen = (size_t)(m->niov - m->iov0);
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			watch(fd, EPOLL_CTL_MOD, EPOLLOUT);
			return (0);
		}
		if (n < 0)
			return (-1);
		for (k = (size_t)n; k > 0 && m->iov0 < m->niov;) {
			struct iovec *v = &m->iov[m->iov0];

			if (k >= v->iov_len) {
				k -= v->iov_len;
				m->iov0++;
			} else {
				v->iov_base = (char *)v->iov_base + k;
				v->iov_len -= k;
				k = 0;
			}
		}
	}
	m->niov = m->iov0 = 0;
	m->tlen = 0;
	if (m->close_after)
		return (-1);
	watch(fd, EPOLL_CTL_MOD, EPOLLIN);
	return (1);
}

/* Does ${line} start with the word ${w} (any case)? */
static int
word(const char *line, const char *w)
{
	size_t n = strlen(w);

	return (strncasecmp(line, w, n) == 0 &&
	    (line[n] == '\0' || line[n] == ' '));
}

/* The mailbox named by the user name: "mN" or "sN". */
static void
mail_user(struct mail *m, const char *user)
{
	size_t v = (size_t)strtoull(user + 1, NULL, 10);

	if (user[0] == 'm')
		m->size = v;
	else if (user[0] == 's')
		m->search = v;
}

static int
smtp_line(struct mail *m, char *l)
{
	const char *p;

	if (word(l, "EHLO"))
		return (mail_say(m, "250-bench.test\r\n250-PIPELINING\r\n"
		    "250-SIZE 104857600\r\n250-8BITMIME\r\n"
		    "250 ENHANCEDSTATUSCODES\r\n"));
	if (word(l, "HELO"))
		return (mail_say(m, "250 bench.test\r\n"));
	if (strncasecmp(l, "MAIL FROM:", 10) == 0) {
		m->size = (p = strcasestr(l, " SIZE=")) != NULL ?
		    (size_t)strtoull(p + 6, NULL, 10) : 0;
		return (mail_say(m, "250 2.1.0 Ok\r\n"));
	}
	if (strncasecmp(l, "RCPT TO:", 8) == 0)
		return (mail_say(m, "250 2.1.5 Ok\r\n"));
	if (word(l, "DATA")) {
		if ((m->msg = message(m->size)) == NULL)
			return (mail_say(m, "554 5.5.4 the benchmark needs "
			    "MAIL FROM:<...> SIZE=N with N >= %d\r\n",
			    MAILMSG_MIN));
		m->in_data = 1;
		m->off = 0;
		m->bad = 0;
		return (mail_say(m, "354 End data with <CR><LF>.<CR><LF>\r\n"));
	}
	if (word(l, "RSET") || word(l, "NOOP"))
		return (mail_say(m, "250 2.0.0 Ok\r\n"));
	if (word(l, "QUIT")) {
		m->close_after = 1;
		return (mail_say(m, "221 2.0.0 Bye\r\n"));
	}
	return (mail_say(m, "502 5.5.2 Error: command not recognized\r\n"));
}

static int
imap_line(struct mail *m, char *l)
{
	char *tag = l, *cmd, *arg;
	const unsigned char *p;

	if ((cmd = strchr(l, ' ')) == NULL)
		return (mail_say(m, "* BAD no command\r\n"));
	*cmd++ = '\0';
	if (strncasecmp(cmd, "UID ", 4) == 0)
		cmd += 4;
	arg = strchr(cmd, ' ');
	if (word(cmd, "CAPABILITY"))
		return (mail_say(m, "* CAPABILITY IMAP4rev1 LITERAL+ "
		    "SASL-IR\r\n%s OK CAPABILITY completed\r\n", tag));
	if (word(cmd, "LOGIN") && arg != NULL) {
		mail_user(m, arg + 1);
		return (mail_say(m, "%s OK LOGIN completed\r\n", tag));
	}
	if (word(cmd, "SELECT") || word(cmd, "EXAMINE"))
		return (mail_say(m, "* FLAGS (\\Seen \\Deleted)\r\n* 1 EXISTS"
		    "\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
		    "%s OK [READ-WRITE] SELECT completed\r\n", tag));
	if (word(cmd, "FETCH")) {
		if ((p = message(m->size)) == NULL)
			return (mail_say(m, "%s NO no such message (log in "
			    "as mN)\r\n", tag));
		if (mail_say(m, "* 1 FETCH (BODY[] {%zu}\r\n", m->size) < 0 ||
		    mail_iov(m, p, m->size) < 0)
			return (-1);
		return (mail_say(m, ")\r\n%s OK FETCH completed\r\n", tag));
	}
	if (word(cmd, "SEARCH")) {
		size_t len;

		if ((p = search_line(m->search, &len)) == NULL)
			return (mail_say(m, "* SEARCH\r\n%s OK SEARCH "
			    "completed\r\n", tag));
		if (mail_iov(m, p, len) < 0)
			return (-1);
		return (mail_say(m, "%s OK SEARCH completed\r\n", tag));
	}
	if (word(cmd, "NOOP"))
		return (mail_say(m, "%s OK NOOP completed\r\n", tag));
	if (word(cmd, "LOGOUT")) {
		m->close_after = 1;
		return (mail_say(m, "* BYE logging out\r\n%s OK LOGOUT "
		    "completed\r\n", tag));
	}
	return (mail_say(m, "%s BAD unknown command\r\n", tag));
}

static int
pop3_line(struct mail *m, char *l)
{
	const unsigned char *p;

	if (word(l, "CAPA"))
		return (mail_say(m, "+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n"));
	if (word(l, "USER") && l[4] == ' ') {
		mail_user(m, l + 5);
		return (mail_say(m, "+OK\r\n"));
	}
	if (word(l, "PASS"))
		return (mail_say(m, "+OK logged in\r\n"));
	if (word(l, "STAT"))
		return (mail_say(m, "+OK 1 %zu\r\n", m->size));
	if (word(l, "RETR")) {
		if ((p = message(m->size)) == NULL)
			return (mail_say(m, "-ERR no such message (log in as "
			    "mN)\r\n"));
		/* The message ends in CRLF; ".\r\n" follows it in p. */
		if (mail_say(m, "+OK %zu octets\r\n", m->size) < 0)
			return (-1);
		return (mail_iov(m, p, m->size + 3));
	}
	if (word(l, "NOOP"))
		return (mail_say(m, "+OK\r\n"));
	if (word(l, "QUIT")) {
		m->close_after = 1;
		return (mail_say(m, "+OK bye\r\n"));
	}
	return (mail_say(m, "-ERR unknown command\r\n"));
}

/* Take ${len} octets of SMTP DATA; returns how many were message. */
static size_t
smtp_data(struct mail *m, const unsigned char *p, size_t len)
{
	size_t want = m->size + 3 - m->off, k = len < want ? len : want, i;

	if (!m->bad && memcmp(p, m->msg + m->off, k) != 0) {
		for (i = 0; p[i] == m->msg[m->off + i]; i++)
			;
		m->bad = 1;
		m->bad_at = m->off + i;
	}
	m->off += k;
	if (m->bad) {
		/* Whatever it was, it did not end where it should. */
		m->in_data = 0;
		m->close_after = 1;
		(void)mail_say(m, "554 5.6.0 message corrupted at octet %zu\r\n",
		    m->bad_at);
		return (len);
	}
	if (m->off == m->size + 3) {
		m->in_data = 0;
		(void)mail_say(m, "250 2.0.0 Ok: queued as B%llu (%zu octets "
		    "verified)\r\n", (unsigned long long)++mail_serial,
		    m->size);
	}
	return (k);
}

/* Take what the client sent; -1: drop the connection. */
static int
mail_input(struct mail *m, const unsigned char *p, size_t len)
{
	const unsigned char *eol;
	size_t k;
	int rc;

	while (len > 0 && !m->close_after) {
		if (m->in_data) {
			k = smtp_data(m, p, len);
			p += k;
			len -= k;
			continue;
		}
		eol = memchr(p, '\n', len);
		k = eol != NULL ? (size_t)(eol - p) + 1 : len;
		if (m->llen + k >= sizeof(m->line))
			return (-1);
		memcpy(m->line + m->llen, p, k);
		m->llen += k;
		p += k;
		len -= k;
		if (eol == NULL)
			break;
		while (m->llen > 0 && (m->line[m->llen - 1] == '\n' ||
		    m->line[m->llen - 1] == '\r'))
			m->llen--;
		m->line[m->llen] = '\0';
		m->llen = 0;
		rc = mailproto == MP_SMTP ? smtp_line(m, m->line) :
		    mailproto == MP_IMAP ? imap_line(m, m->line) :
		    pop3_line(m, m->line);
		if (rc < 0)
			return (-1);
	}
	return (0);
}

static void
mail_accept(int fd)
{
	struct mail *m;

	if ((m = calloc(1, sizeof(*m))) == NULL) {
		close(fd);
		return;
	}
	bc[fd].mode = 'M';
	bc[fd].m = m;
	(void)mail_say(m, "%s", mailproto == MP_SMTP ?
	    "220 bench.test ESMTP bench\r\n" : mailproto == MP_IMAP ?
	    "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR] bench ready\r\n" :
	    "+OK bench ready\r\n");
	watch(fd, EPOLL_CTL_ADD, EPOLLIN);
	if (mail_flush(fd) < 0)
		drop(fd);
}

static void
mail_readable(int fd)
{
	struct mail *m = bc[fd].m;
	ssize_t n;

	/* A reply in flight: the next command waits its turn. */
	while (m->niov == 0) {
		n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0 || mail_input(m, buf, (size_t)n) < 0) {
			drop(fd);
			return;
		}
		if (m->niov > 0 && mail_flush(fd) < 0) {
			drop(fd);
			return;
		}
	}
}

/* Send ${len} bytes back; keep what does not fit and wait to write. */
static int
echo(int fd, const unsigned char *p, size_t len)
{
	ssize_t n;

	n = send(fd, p, len, MSG_NOSIGNAL);
	if (n < 0 && errno != EAGAIN)
		return (-1);
	if (n < 0)
		n = 0;
	if ((size_t)n == len)
		return (0);
	if ((bc[fd].pend = malloc(len - (size_t)n)) == NULL)
		return (-1);
	memcpy(bc[fd].pend, p + n, len - (size_t)n);
	bc[fd].plen = len - (size_t)n;
	watch(fd, EPOLL_CTL_MOD, EPOLLOUT);
	return (0);
}

static void
on_readable(int fd)
{
	struct bconn *b = &bc[fd];
	ssize_t n;

	if (b->mode == 'M') {
		mail_readable(fd);
		return;
	}
	for (;;) {
		if (b->mode == 'S') {
			/* TCP: MSG_TRUNC discards the bytes without copying. */
			n = recv(fd, NULL, 1 << 20, MSG_TRUNC | MSG_DONTWAIT);
		} else if (b->mode == 0) {
			char m;

			if ((n = recv(fd, &m, 1, MSG_DONTWAIT)) == 1) {
				if (m != 'S' && m != 'E' && m != 'D') {
					drop(fd);
					return;
				}
				b->mode = m;
				if (m == 'D')
					watch(fd, EPOLL_CTL_MOD,
					    EPOLLIN | EPOLLOUT);
				continue;
			}
		} else
			n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			drop(fd);
			return;
		}
		if (n < 0)
			return;
		if (b->mode == 'E') {
			if (echo(fd, buf, (size_t)n) < 0) {
				drop(fd);
				return;
			}
			if (b->plen > 0)
				return;
		}
	}
}

static void
on_writable(int fd)
{
	struct bconn *b = &bc[fd];
	ssize_t n;

	if (b->mode == 'M') {
		if (mail_flush(fd) < 0)
			drop(fd);
		else if (b->m->niov == 0)
			mail_readable(fd);	/* commands that waited */
		return;
	}
	if (b->mode == 'D') {
		do
			n = send(fd, source, sizeof(source), MSG_NOSIGNAL |
			    MSG_DONTWAIT);
		while (n == (ssize_t)sizeof(source));
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			drop(fd);
		return;
	}
	n = send(fd, b->pend, b->plen, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n < 0 && errno != EAGAIN && errno != EINTR) {
		drop(fd);
		return;
	}
	if (n < 0)
		return;
	if ((size_t)n < b->plen) {
		memmove(b->pend, b->pend + n, b->plen - (size_t)n);
		b->plen -= (size_t)n;
		return;
	}
	free(b->pend);
	b->pend = NULL;
	b->plen = 0;
	watch(fd, EPOLL_CTL_MOD, EPOLLIN);
}

int
main(int argc, char **argv)
{
	struct addrinfo hints, *res;
	struct epoll_event evs[256];
	struct rlimit rl;
	char host[256], *colon;
	int lfd, one = 1, i, n, fd;

	if (argc == 4 && strcmp(argv[1], "-P") == 0) {
		mailproto = strcmp(argv[2], "smtp") == 0 ? MP_SMTP :
		    strcmp(argv[2], "imap") == 0 ? MP_IMAP :
		    strcmp(argv[2], "pop3") == 0 ? MP_POP3 : MP_NONE;
		if (mailproto == MP_NONE)
			argc = 0;
		argv += 2;
		argc -= 2;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: backend [-P smtp|imap|pop3] "
		    "HOST:PORT\n");
		return (2);
	}
	signal(SIGPIPE, SIG_IGN);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max > MAXFD ? MAXFD : rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
	memset(source, 'd', sizeof(source));
	snprintf(host, sizeof(host), "%s", argv[1]);
	if ((colon = strrchr(host, ':')) == NULL) {
		fprintf(stderr, "backend: bad address %s\n", argv[1]);
		return (2);
	}
	*colon = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0) {
		fprintf(stderr, "backend: bad address %s\n", argv[1]);
		return (2);
	}
	if ((lfd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0)) < 0 ||
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(lfd, res->ai_addr, res->ai_addrlen) < 0 ||
	    listen(lfd, 4096) < 0) {
		fprintf(stderr, "backend: %s: %s\n", argv[1], strerror(errno));
		return (1);
	}
	freeaddrinfo(res);
	if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
		return (1);
	watch(lfd, EPOLL_CTL_ADD, EPOLLIN);
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		n = epoll_wait(ep, evs, 256, -1);
		for (i = 0; i < n; i++) {
			fd = evs[i].data.fd;
			if (fd == lfd) {
				while ((fd = accept4(lfd, NULL, NULL,
				    SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					if (fd >= MAXFD) {
						close(fd);
						continue;
					}
					(void)setsockopt(fd, IPPROTO_TCP,
					    TCP_NODELAY, &one, sizeof(one));
					if (mailproto != MP_NONE)
						mail_accept(fd);
					else
						watch(fd, EPOLL_CTL_ADD,
						    EPOLLIN);
				}
				continue;
			}
			if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
				on_readable(fd);
			if (bc[fd].mode != 0 && (evs[i].events & EPOLLOUT))
				on_writable(fd);
		}
	}
}
