/*
 * reloader: keeps every listener's credentials in step with the files on
 * disk.  It runs on the main loop and reloads a listener's cert/key pairs and
 * client_ca on SIGHUP, and by itself within about a second of one of its files
 * changing: a file rewritten in place, a new file renamed over the old one,
 * or a symlink swap anywhere along the path (certbot's live/ links into
 * archive/, Kubernetes secret volumes' "..data" link).
 *
 * Changes are noticed through uv_fs_event watches on every directory along
 * each file's symlink chain, and by a poll every 800 ms for file systems that
 * send no events: it stat()s every file and takes a fresh fingerprint
 * (resolved path, inode, size, times, a digest of the contents) only of one
 * whose device, inode, size, mtime or ctime moved, or that changed within
 * two seconds of its last fingerprint (coarse time stamps).  Either one only arms a short debounce:
 * a listener is reloaded once its files have stopped changing, so a pair is
 * never read half-written.  A reload that fails validation (certs_load) is
 * logged with the file and the reason, and the old set keeps serving.
 */
#ifndef MAILTLSD_RELOADER_H
#define MAILTLSD_RELOADER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "certs.h"
#include "config.h"
#include "listener.h"
#include "ticket.h"

enum reloader_result {
	RELOADER_OK,
	RELOADER_FAILED,
	RELOADER_NRESULTS
};

struct reloader;

/*
 * With this variable set in the environment, no uv_fs_event watch is made
 * and only the fingerprint check runs: for the tests of that path, and to
 * rule inotify out when chasing a problem.
 */
#define RELOADER_POLL_ONLY_ENV	"MAILTLSD_RELOADER_POLL_ONLY"

/**
 * reloader_new(loop, cfg, ls, n, ticket):
 * Watch the certificate files of the ${n} listeners ${ls} (configured by
 * ${cfg}) from ${loop}, which must be the thread's running loop, and the
 * session-ticket key ${ticket} (may be NULL), re-read with them.  ${cfg},
 * ${ls} and ${ticket} are borrowed until the reloader has been freed.  The
 * listeners' current credentials are taken as matching the files as they
 * are now.
 * Return the reloader, or NULL.
 */
struct reloader *reloader_new(uv_loop_t *, const struct config *,
    struct listener *, size_t, struct ticket *);

/**
 * reloader_reload(r, why):
 * Reload every TLS listener of ${r} now, changed or not (SIGHUP); ${why} is
 * logged as the trigger.  A listener whose new set fails validation keeps its
 * old one.
 */
void reloader_reload(struct reloader *, const char *);

/**
 * reloader_free(r):
 * Stop watching and free ${r}.  Its handles are closed, so the memory goes
 * once the loop has run their close callbacks; the loop must run on.  NULL
 * is a no-op.
 */
void reloader_free(struct reloader *);

/**
 * reloader_count(r, i, result):
 * The number of reloads of listener ${i} that ended with ${result}.  Safe to
 * call from any thread while ${r} exists.
 */
uint64_t reloader_count(const struct reloader *, size_t,
    enum reloader_result);

/**
 * reloader_digests(r):
 * The number of times a watched file's contents were read and hashed: the
 * cost of the change check.  Safe to call from any thread while ${r} exists.
 */
uint64_t reloader_digests(const struct reloader *);

/**
 * reloader_nlisteners(r), reloader_listener_name(r, i):
 * The number of listeners of ${r}, and the name of listener ${i}.
 */
size_t reloader_nlisteners(const struct reloader *);
const char *reloader_listener_name(const struct reloader *, size_t);

/**
 * reloader_certs(r, i):
 * The credentials listener ${i} is serving now, with a reference for the
 * caller (drop it with certs_unref), or NULL if the listener has no TLS.
 * certs_count(), certs_not_after() and certs_subject() describe them.  Safe
 * to call from any thread while ${r} exists.
 */
struct certs *reloader_certs(const struct reloader *, size_t);

#endif
