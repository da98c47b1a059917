/*
 * lsock: the process's listening sockets, by address.  A socket is bound
 * once and then kept for as long as a listener has its address: across
 * configuration reloads, and across an upgrade in place, when the sockets
 * are handed to the new process as inherited descriptors.  The same
 * hand-over is what systemd's socket activation does, so one code path,
 * lsock_inherit(), takes sockets from either: LISTEN_PID, LISTEN_FDS and
 * LISTEN_FDNAMES as sd_listen_fds(3) describes them.
 *
 * The table keeps one descriptor of each socket (the "master", used for the
 * hand-over); each worker gets duplicates of its own, which it closes when
 * it stops serving them.  A socket closes once every copy is closed.
 *
 * Only the main thread uses a table.
 */
#ifndef MAILTLSD_LSOCK_H
#define MAILTLSD_LSOCK_H

#include <stddef.h>

#include "listener.h"
#include "worker.h"

/* The first inherited descriptor (SD_LISTEN_FDS_START). */
#define LSOCK_FDS_START		3

struct lsock_table;

/**
 * lsock_table_new(nworkers):
 * An empty table for a process of ${nworkers} workers.  Return it, or NULL.
 */
struct lsock_table *lsock_table_new(unsigned);

/**
 * lsock_inherit(t):
 * Take the sockets passed in LISTEN_FDS (when LISTEN_PID is this process)
 * into ${t}'s pool of inherited sockets, each with its address and its name
 * from LISTEN_FDNAMES, and remove the three variables from the environment.
 * A descriptor that is not a listening stream socket is logged and closed.
 * Return the number of sockets taken.
 */
size_t lsock_inherit(struct lsock_table *);

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
int lsock_plan(struct lsock_table *, struct listener_set *, FILE *);

/**
 * lsock_binds(t, set, worker, binds, n):
 * The descriptors worker ${worker} is to accept on for the planned ${set}:
 * ${*binds} is a new array of ${*n} entries (free it).  The descriptors
 * stay the table's until handed to worker_new or worker_rebind.  Return 0
 * or -1.
 */
int lsock_binds(struct lsock_table *, struct listener_set *, unsigned,
    struct worker_bind **, size_t *);

/**
 * lsock_commit(t):
 * Make the plan the table: sockets no listener uses any more are closed
 * (their workers close their copies when rebound), and so are inherited
 * sockets no listener asked for (logged).  Return the number of sockets
 * closed.
 */
size_t lsock_commit(struct lsock_table *);

/**
 * lsock_abort(t):
 * Forget the plan: sockets bound or taken for it are closed or given back.
 */
void lsock_abort(struct lsock_table *);

/**
 * lsock_export(t, fds, names):
 * Every socket of ${t}, for an upgrade: ${*fds} is a new array of the
 * descriptors (still the table's) and ${*names} a new LISTEN_FDNAMES value
 * ("name:name:..."); free both.  Return the number of descriptors, or -1.
 */
int lsock_export(struct lsock_table *, int **, char **);

/**
 * lsock_close_all(t):
 * Close every socket's master copy (the workers close their own): done when
 * the process stops accepting.
 */
void lsock_close_all(struct lsock_table *);

/**
 * lsock_table_free(t):
 * Close what is left and free ${t}; NULL is a no-op.
 */
void lsock_table_free(struct lsock_table *);

#endif
