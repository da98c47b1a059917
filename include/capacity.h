/*
 * capacity: how many sessions the process's descriptors allow.  At start-up
 * the soft RLIMIT_NOFILE is raised to the hard limit (as HAProxy and Go
 * do), the number of sessions that fits is logged, and listeners whose
 * max_connections add up to more get a warning.
 */
#ifndef MAILTLSD_CAPACITY_H
#define MAILTLSD_CAPACITY_H

#include <stdint.h>

#include "config.h"

/* A session holds a client and a backend socket. */
#define CAPACITY_FDS_PER_SESSION	2

/**
 * capacity_sessions(nofile, workers, nlisteners):
 * Return how many sessions ${nofile} descriptors hold once those of the
 * process itself (standard streams, event loops, listening sockets, the
 * reloader and metrics endpoint) are set aside.
 */
uint64_t capacity_sessions(uint64_t, unsigned, size_t);

/**
 * capacity_setup(cfg):
 * Raise the soft descriptor limit to the hard one, log the resulting
 * capacity, and warn if the listeners' max_connections add up to more.
 * Return the capacity in sessions.
 */
uint64_t capacity_setup(const struct config *);

#endif /* MAILTLSD_CAPACITY_H */
