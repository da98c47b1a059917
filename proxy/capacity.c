/*
 * capacity: raise the descriptor limit and say what it allows.
 *
 * Descriptors, not memory, are what usually caps a TLS proxy first: the
 * soft RLIMIT_NOFILE is often 1024 while the hard limit allows far more,
 * and a process may raise its own soft limit up to the hard one.  Each
 * session holds two sockets (client and backend; a STARTTLS session drops
 * its pre-TLS backend before it opens the fresh one), so the capacity is
 * about half the descriptors left once the process's own are set aside.
 */
#include <sys/resource.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "capacity.h"
#include "log.h"

/* Standard streams, main loop, signals, reloader, metrics, certificate reads. */
#define RESERVE_PROCESS		32
/* Per worker: its loop (epoll, eventfd, timers) and async handles. */
#define RESERVE_WORKER		8

uint64_t
capacity_sessions(uint64_t nofile, unsigned workers, size_t nlisteners)
{
	uint64_t reserved = RESERVE_PROCESS + (uint64_t)workers *
	    (RESERVE_WORKER + nlisteners);

	if (nofile <= reserved)
		return (0);
	return ((nofile - reserved) / CAPACITY_FDS_PER_SESSION);
}

/* The ceiling for RLIM_INFINITY: the kernel's fs.nr_open. */
static rlim_t
nr_open(void)
{
	unsigned long long v = 0;
	FILE *f;

	if ((f = fopen("/proc/sys/fs/nr_open", "r")) != NULL) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 0;
		fclose(f);
	}
	return (v > 0 ? (rlim_t)v : 1048576);
}

uint64_t
capacity_setup(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t was, want;
	uint64_t sessions, total = 0;
	unsigned workers;
	size_t i;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		log_warn("capacity", "getrlimit(RLIMIT_NOFILE): %s",
		    strerror(errno));
		return (0);
	}
	was = rl.rlim_cur;
	want = rl.rlim_max == RLIM_INFINITY ? nr_open() : rl.rlim_max;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warn("capacity", "cannot raise the descriptor "
			    "limit from %llu to %llu: %s",
			    (unsigned long long)was, (unsigned long long)want,
			    strerror(errno));
			rl.rlim_cur = was;
		}
	}
	workers = cfg->workers != 0 ? cfg->workers :
	    (unsigned)uv_available_parallelism();
	if (workers == 0)
		workers = 1;
	sessions = capacity_sessions(rl.rlim_cur == RLIM_INFINITY ? nr_open() :
	    rl.rlim_cur, workers, cfg->nlisteners);
	log_info("capacity", "descriptor limit %llu (soft limit was %llu, "
	    "hard %llu): room for about %" PRIu64 " sessions at %d "
	    "descriptors each", (unsigned long long)rl.rlim_cur,
	    (unsigned long long)was, (unsigned long long)rl.rlim_max,
	    sessions, CAPACITY_FDS_PER_SESSION);
	/* Listeners share the descriptor table: their limits add up. */
	for (i = 0; i < cfg->nlisteners; i++)
		total += cfg->listeners[i].max_connections;
	if (total > sessions)
		log_warn("capacity", "max_connections adds up to %" PRIu64
		    " over %zu listener(s), more than the about %" PRIu64
		    " sessions the descriptor limit (%llu) allows: beyond "
		    "that, new connections wait in the backlog; raise the "
		    "hard limit (LimitNOFILE=, ulimit -Hn, --ulimit nofile=) "
		    "or lower max_connections", total, cfg->nlisteners,
		    sessions, (unsigned long long)rl.rlim_cur);
	return (sessions);
}
