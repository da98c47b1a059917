/*
 * upgrade: the in-place upgrade (SIGUSR2).  The running process starts its
 * binary again with the same arguments and hands it the listening sockets as
 * inherited descriptors in the form of systemd's socket activation
 * (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID: see lsock.h), plus the writing
 * end of a pipe on which the new process reports that it is ready.  Only
 * then does the old process stop accepting and drain; until then both
 * accept from the same sockets, so no connection is refused.
 */
#ifndef MAILTLSD_UPGRADE_H
#define MAILTLSD_UPGRADE_H

#include <sys/types.h>

/* Names the descriptor of the readiness pipe in the new process. */
#define UPGRADE_FD_ENV		"MAILTLSD_UPGRADE_FD"
/* What the new process writes on it once it serves. */
#define UPGRADE_READY		"READY\n"

/**
 * upgrade_self_path(argv0):
 * The path of the running binary (/proc/self/exe, else ${argv0} made
 * absolute), resolved now, at start-up, so that a binary replaced on disk
 * later is the one an upgrade starts.  Return a new string, or NULL.
 */
char *upgrade_self_path(const char *);

/**
 * upgrade_spawn(exe, argv, fds, n, names, readfd):
 * Start ${exe} with ${argv} and the environment of this process, giving it
 * the ${n} descriptors ${fds} as 3, 4, ... with LISTEN_FDS=${n},
 * LISTEN_FDNAMES=${names} and LISTEN_PID set to the new process, and the
 * writing end of a new pipe, named by MAILTLSD_UPGRADE_FD.  ${*readfd} is
 * the reading end (close-on-exec, blocking).  Return the new process's pid,
 * or -1 with errno set.
 */
pid_t upgrade_spawn(const char *, char *const *, const int *, int,
    const char *, int *);

/**
 * upgrade_take_fd():
 * In a process started by upgrade_spawn: the readiness descriptor (removed
 * from the environment, made close-on-exec), or -1.
 */
int upgrade_take_fd(void);

/**
 * upgrade_report_ready(fd):
 * Tell the old process that this one serves, and close ${fd}.
 */
void upgrade_report_ready(int);

#endif
