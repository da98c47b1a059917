/*
 * sdnotify: tell the service manager how the process is doing, as
 * sd_notify(3) does, without linking libsystemd: one datagram to the
 * AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract name when
 * it starts with "@").  Without that variable every call is a no-op.
 */
#ifndef MAILTLSD_SDNOTIFY_H
#define MAILTLSD_SDNOTIFY_H

/**
 * sdnotify(state):
 * Send ${state} ("READY=1", "RELOADING=1\nMONOTONIC_USEC=...", ...).
 * Return 1 if it was sent, 0 if there is no $NOTIFY_SOCKET, -1 on error.
 */
int sdnotify(const char *);

/**
 * sdnotify_reloading():
 * Send RELOADING=1 with MONOTONIC_USEC (as systemd's Type=notify-reload
 * wants).  Return as sdnotify.
 */
int sdnotify_reloading(void);

#endif
