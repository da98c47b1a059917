#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sdnotify.h"

/**
 * sdnotify(state):
 * Send ${state} ("READY=1", "RELOADING=1\nMONOTONIC_USEC=...", ...).
 * Return 1 if it was sent, 0 if there is no $NOTIFY_SOCKET, -1 on error.
 */
int
sdnotify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t len;
	size_t plen;
	ssize_t n;
	int fd;

	if (path == NULL || path[0] == '\0')
		return (0);
	plen = strlen(path);
	/* A path, or "@name" for the abstract namespace (NUL first). */
	if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sun.sun_path))
		return (-1);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, plen);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen +
	    (path[0] == '@' ? 0 : 1));
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
		return (-1);
	n = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
	    (struct sockaddr *)&sun, len);
	close(fd);
	return (n == (ssize_t)strlen(state) ? 1 : -1);
}

/**
 * sdnotify_reloading():
 * Send RELOADING=1 with MONOTONIC_USEC (as systemd's Type=notify-reload
 * wants).  Return as sdnotify.
 */
int
sdnotify_reloading(void)
{
	struct timespec ts;
	char buf[96];

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		return (sdnotify("RELOADING=1"));
	snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	    (unsigned long long)ts.tv_nsec / 1000);
	return (sdnotify(buf));
}
