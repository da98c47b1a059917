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
 *   backend HOST:PORT        (prints "ready" once listening)
 */
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SOURCE_CHUNK	(256 * 1024)
#define MAXFD		65536

struct bconn {
	char		 mode;		/* 0 until the first byte */
	unsigned char	*pend;		/* echo not yet written */
	size_t		 plen;
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
	memset(&bc[fd], 0, sizeof(bc[fd]));
	close(fd);
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

	if (argc != 2) {
		fprintf(stderr, "usage: backend HOST:PORT\n");
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
					watch(fd, EPOLL_CTL_ADD, EPOLLIN);
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
