#include <sys/types.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lsock.h"
#include "upgrade.h"

extern char **environ;

/**
 * upgrade_self_path(argv0):
 * The path of the running binary (/proc/self/exe, else ${argv0} made
 * absolute), resolved now, at start-up, so that a binary replaced on disk
 * later is the one an upgrade starts.  Return a new string, or NULL.
 */
char *
upgrade_self_path(const char *argv0)
{
	char buf[PATH_MAX];
	ssize_t n;

	if ((n = readlink("/proc/self/exe", buf, sizeof(buf) - 1)) > 0) {
		buf[n] = '\0';
		return (strdup(buf));
	}
	if (argv0 != NULL && strchr(argv0, '/') != NULL &&
	    realpath(argv0, buf) != NULL)
		return (strdup(buf));
	return (NULL);
}

/* Variables the new process gets from us, not from our environment. */
static int
ours(const char *e)
{

	return (strncmp(e, "LISTEN_PID=", 11) == 0 ||
	    strncmp(e, "LISTEN_FDS=", 11) == 0 ||
	    strncmp(e, "LISTEN_FDNAMES=", 15) == 0 ||
	    strncmp(e, UPGRADE_FD_ENV "=", sizeof(UPGRADE_FD_ENV)) == 0);
}

/* Digits of ${v} into ${p} with async-signal-safe code (after fork). */
static void
put_num(char *p, unsigned long v)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		*p++ = tmp[--n];
	*p = '\0';
}

/**
 * upgrade_spawn(exe, argv, fds, n, names, readfd):
 * Start ${exe} with ${argv} and the environment of this process, giving it
 * the ${n} descriptors ${fds} as 3, 4, ... with LISTEN_FDS=${n},
 * LISTEN_FDNAMES=${names} and LISTEN_PID set to the new process, and the
 * writing end of a new pipe, named by MAILTLSD_UPGRADE_FD.  ${*readfd} is
 * the reading end (close-on-exec, blocking).  Return the new process's pid,
 * or -1 with errno set.
 */
pid_t
upgrade_spawn(const char *exe, char *const *argv, const int *fds, int n,
    const char *names, int *readfd)
{
	char **envp = NULL, *nfds = NULL, *fdnames = NULL, *upfd = NULL;
	char pidvar[48];
	int *tmp = NULL, p[2] = { -1, -1 }, saved, i, wtmp;
	size_t ne = 0, k = 0;
	pid_t pid = -1;

	for (ne = 0; environ[ne] != NULL; ne++)
		;
	if ((envp = calloc(ne + 5, sizeof(*envp))) == NULL ||
	    (tmp = calloc((size_t)n + 1, sizeof(int))) == NULL ||
	    asprintf(&nfds, "LISTEN_FDS=%d", n) < 0 ||
	    asprintf(&fdnames, "LISTEN_FDNAMES=%s", names) < 0 ||
	    asprintf(&upfd, UPGRADE_FD_ENV "=%d", LSOCK_FDS_START + n) < 0)
		goto out;
	for (ne = 0; environ[ne] != NULL; ne++)
		if (!ours(environ[ne]))
			envp[k++] = environ[ne];
	/* Filled in by the child, which alone knows its pid before exec. */
	strcpy(pidvar, "LISTEN_PID=");
	envp[k++] = pidvar;
	envp[k++] = nfds;
	envp[k++] = fdnames;
	envp[k++] = upfd;
	envp[k] = NULL;
	if (pipe2(p, O_CLOEXEC) < 0)
		goto out;
	if ((pid = fork()) < 0)
		goto out;
	if (pid == 0) {
		/*
		 * The child of a threaded process: only async-signal-safe
		 * calls until exec.  First copy everything above the target
		 * range, so that moving one descriptor into place cannot
		 * overwrite another that is still to be moved.
		 */
		int hi = LSOCK_FDS_START + n + 1;

		for (i = 0; i < n; i++)
			if ((tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, hi)) < 0)
				_exit(127);
		if ((wtmp = fcntl(p[1], F_DUPFD_CLOEXEC, hi)) < 0)
			_exit(127);
		/* dup2 leaves the new descriptors open across exec. */
		for (i = 0; i < n; i++)
			if (dup2(tmp[i], LSOCK_FDS_START + i) < 0)
				_exit(127);
		if (dup2(wtmp, LSOCK_FDS_START + n) < 0)
			_exit(127);
		put_num(pidvar + strlen("LISTEN_PID="),
		    (unsigned long)getpid());
		execve(exe, argv, envp);
		_exit(127);
	}
	close(p[1]);
	p[1] = -1;
	*readfd = p[0];
	p[0] = -1;
out:
	saved = errno;
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	free(envp);
	free(tmp);
	free(nfds);
	free(fdnames);
	free(upfd);
	errno = saved;
	return (pid);
}

/**
 * upgrade_take_fd():
 * In a process started by upgrade_spawn: the readiness descriptor (removed
 * from the environment, made close-on-exec), or -1.
 */
int
upgrade_take_fd(void)
{
	const char *v = getenv(UPGRADE_FD_ENV);
	char *end;
	long fd;

	if (v == NULL)
		return (-1);
	fd = strtol(v, &end, 10);
	unsetenv(UPGRADE_FD_ENV);
	if (*end != '\0' || fd < LSOCK_FDS_START || fd > INT_MAX ||
	    fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
		return (-1);
	return ((int)fd);
}

/**
 * upgrade_report_ready(fd):
 * Tell the old process that this one serves, and close ${fd}.
 */
void
upgrade_report_ready(int fd)
{
	ssize_t n;

	do
		n = write(fd, UPGRADE_READY, strlen(UPGRADE_READY));
	while (n < 0 && errno == EINTR);
	close(fd);
}
