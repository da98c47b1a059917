#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <uv.h>

#include "log.h"
#include "reloader.h"

/*
 * A reload waits until the files have been quiet for DEBOUNCE_MS, so that
 * a cert and key written one after the other are read together; a stream of
 * changes delays it by SETTLE_MAX_MS at most.  POLL_MS is the period of the
 * fingerprint check that stands in for file systems without change events
 * (NFS, some FUSE and container overlays): with the debounce it still picks
 * a change up well within two seconds.
 */
#define DEBOUNCE_MS	350
#define SETTLE_MAX_MS	1500
#define POLL_MS		800
/* Symlinks followed for one path, as the kernel's limit. */
#define MAX_LINKS	40
/* At most this much of a file goes into its fingerprint. */
#define FP_READ_MAX	(1024 * 1024)
#define FP_LEN		32
/*
 * The coarsest file time stamps trusted (FAT: 2 s): a file changed this
 * recently before its last digest could change again without its times
 * showing it, so it is read again on the next look.
 */
#define RACY_S		2

/* What stat() says of a file: equal, and its contents are taken as equal. */
struct rstat {
	dev_t		 dev;
	ino_t		 ino;
	off_t		 size;
	struct timespec	 mtim;
	struct timespec	 ctim;		/* also moves when mtime is set back */
};

/* One cert, key or client_ca file of a listener. */
struct rfile {
	const char	*path;			/* borrowed from the config */
	unsigned char	 loaded[FP_LEN];	/* at the last load attempt */
	unsigned char	 seen[FP_LEN];		/* at the last look */
	int		 changed;		/* scratch: seen != loaded */
	struct rstat	 st;			/* the file ${seen} was taken of */
	int		 st_ok;			/* ... valid, and not racy */
	time_t		 digest_at;		/* when ${seen} was taken */
};

struct rlistener {
	struct listener		*l;		/* borrowed */
	struct rfile		*files;
	size_t			 nfiles;
	atomic_uint_fast64_t	 count[RELOADER_NRESULTS];
};

/*
 * A watched directory and the entry names in it that matter: the files
 * themselves and every symlink on the way to them.
 */
struct rwatch {
	uv_fs_event_t	 h;
	struct reloader	*r;
	struct rwatch	*next;
	char		*dir;
	char		**names;
	size_t		 nnames;
	int		 mark;		/* still wanted */
	int		 started;
	dev_t		 dev;		/* the directory watched */
	ino_t		 ino;
	int		 warned;
};

struct reloader {
	uv_loop_t		*loop;
	struct ticket		*ticket;	/* borrowed; NULL: none */
	const struct config	*cfg;		/* borrowed */
	struct rlistener	*rl;
	size_t			 n;
	struct rwatch		*watches;
	uv_timer_t		 debounce;
	uv_timer_t		 poll;
	int			 pending;	/* the debounce is armed */
	uint64_t		 pending_since;
	int			 closing;
	int			 poll_only;	/* no uv_fs_event at all */
	unsigned		 nopen;		/* handles not yet closed */
	atomic_uint_fast64_t	 digests;	/* content digests taken */
};

typedef void visit_fn(void *, const char *, const char *);

static void	arm(struct reloader *);

/*
 * Follow ${path} one component at a time, as the kernel does, and write the
 * physical path of the file it names into ${out}.  ${visit}(${arg}, dir,
 * name) is called for every entry on the way that matters to a watcher: each
 * symlink (a swap of it changes what the path names) and the file itself,
 * or the first entry that is missing.  Return 0, or -1 with errno set.
 */
static int
resolve(const char *path, char out[PATH_MAX], visit_fn *visit, void *arg)
{
	char cur[PATH_MAX], rest[PATH_MAX], tmp[PATH_MAX], link[PATH_MAX];
	char *comp, *slash, *p;
	struct stat st;
	ssize_t len;
	int nlinks = 0;

	cur[0] = '\0';		/* "" is the root */
	if (path[0] != '/' && getcwd(cur, sizeof(cur)) == NULL)
		return (-1);
	if (strcmp(cur, "/") == 0)
		cur[0] = '\0';
	if (strlen(path) >= sizeof(rest)) {
		errno = ENAMETOOLONG;
		return (-1);
	}
	strcpy(rest, path);
	for (;;) {
		comp = rest;
		while (*comp == '/')
			comp++;
		if (*comp == '\0') {
			/* The path names a directory: not a file we can use. */
			errno = EISDIR;
			return (-1);
		}
		if ((slash = strchr(comp, '/')) != NULL)
			*slash = '\0';
		if (strcmp(comp, ".") == 0 || strcmp(comp, "..") == 0) {
			/* ${cur} is physical, so ".." is its parent. */
			if (comp[1] == '.' && (p = strrchr(cur, '/')) != NULL)
				*p = '\0';
			if (slash == NULL) {
				errno = EISDIR;
				return (-1);
			}
			memmove(rest, slash + 1, strlen(slash + 1) + 1);
			continue;
		}
		if ((size_t)snprintf(tmp, sizeof(tmp), "%s/%s", cur, comp) >=
		    sizeof(tmp)) {
			errno = ENAMETOOLONG;
			return (-1);
		}
		if (lstat(tmp, &st) < 0) {
			visit(arg, cur[0] != '\0' ? cur : "/", comp);
			return (-1);
		}
		if (S_ISLNK(st.st_mode)) {
			visit(arg, cur[0] != '\0' ? cur : "/", comp);
			if (++nlinks > MAX_LINKS) {
				errno = ELOOP;
				return (-1);
			}
			if ((len = readlink(tmp, link, sizeof(link) - 1)) < 0)
				return (-1);
			link[len] = '\0';
			/* The new path: the link's target, then what is left. */
			if (slash != NULL) {
				if ((size_t)snprintf(tmp, sizeof(tmp), "%s/%s",
				    link, slash + 1) >= sizeof(tmp)) {
					errno = ENAMETOOLONG;
					return (-1);
				}
			} else
				strcpy(tmp, link);
			strcpy(rest, tmp);
			if (link[0] == '/')
				cur[0] = '\0';
			continue;
		}
		if (slash == NULL) {
			visit(arg, cur[0] != '\0' ? cur : "/", comp);
			strcpy(out, tmp);
			return (0);
		}
		if (!S_ISDIR(st.st_mode)) {
			errno = ENOTDIR;
			return (-1);
		}
		strcpy(cur, tmp);
		memmove(rest, slash + 1, strlen(slash + 1) + 1);
	}
}

static void
visit_none(void *arg, const char *dir, const char *name)
{

	(void)arg;
	(void)dir;
	(void)name;
}

/*
 * The fingerprint of ${path}: where it leads, the inode, size and times of
 * the file there, and a digest of its contents (for file systems whose
 * times are too coarse to show a rewrite).  An error is part of the
 * fingerprint too, so that fixing it counts as a change.
 */
static void
fingerprint(const char *path, unsigned char fp[FP_LEN])
{
	char real[PATH_MAX];
	unsigned char buf[16384];
	gnutls_hash_hd_t h;
	struct stat st;
	size_t total = 0;
	ssize_t n;
	int fd, err = 0;

	memset(fp, 0, FP_LEN);
	if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) < 0)
		return;
	if (resolve(path, real, visit_none, NULL) < 0)
		err = errno;
	else if ((fd = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY |
	    O_NONBLOCK)) < 0)
		err = errno;
	else {
		if (fstat(fd, &st) < 0)
			err = errno;
		else {
			gnutls_hash(h, real, strlen(real) + 1);
			gnutls_hash(h, &st.st_dev, sizeof(st.st_dev));
			gnutls_hash(h, &st.st_ino, sizeof(st.st_ino));
			gnutls_hash(h, &st.st_size, sizeof(st.st_size));
			gnutls_hash(h, &st.st_mtim, sizeof(st.st_mtim));
			while (total < FP_READ_MAX &&
			    (n = read(fd, buf, sizeof(buf))) != 0) {
				if (n < 0) {
					if (errno == EINTR)
						continue;
					err = errno;
					break;
				}
				gnutls_hash(h, buf, (size_t)n);
				total += (size_t)n;
			}
			/* The buffer may have held a private key. */
			gnutls_memset(buf, 0, sizeof(buf));
		}
		close(fd);
	}
	gnutls_hash(h, &err, sizeof(err));
	gnutls_hash_deinit(h, fp);
}

static int
ts_eq(const struct timespec *a, const struct timespec *b)
{

	return (a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec);
}

/*
 * The fingerprint of ${f} into ${fp}: its last one if stat() shows the same
 * file as then (device, inode, size, mtime, ctime) and that one was taken
 * long enough after the file's last change; else a new one.  The poll runs
 * on the main loop every POLL_MS: reading and hashing every file each time
 * would cost the loop a few milliseconds per megabyte of certificates for
 * nothing.
 */
static void
refresh(struct reloader *r, struct rfile *f, unsigned char fp[FP_LEN])
{
	struct stat st;
	time_t last;

	if (stat(f->path, &st) < 0) {
		/* Gone or unreadable: no contents to read, the error counts. */
		f->st_ok = 0;
		fingerprint(f->path, fp);
		return;
	}
	if (f->st_ok && f->st.dev == st.st_dev && f->st.ino == st.st_ino &&
	    f->st.size == st.st_size && ts_eq(&f->st.mtim, &st.st_mtim) &&
	    ts_eq(&f->st.ctim, &st.st_ctim)) {
		last = st.st_mtim.tv_sec > st.st_ctim.tv_sec ? st.st_mtim.tv_sec :
		    st.st_ctim.tv_sec;
		if (f->digest_at - last > RACY_S) {
			memcpy(fp, f->seen, FP_LEN);
			return;
		}
	}
	/* Taken of the file as stat() saw it before: a later change shows. */
	f->st.dev = st.st_dev;
	f->st.ino = st.st_ino;
	f->st.size = st.st_size;
	f->st.mtim = st.st_mtim;
	f->st.ctim = st.st_ctim;
	f->st_ok = 1;
	f->digest_at = time(NULL);
	fingerprint(f->path, fp);
	atomic_fetch_add(&r->digests, 1);
}

/* Look at every file again; return 1 if any changed since the last look. */
static int
look(struct reloader *r)
{
	unsigned char fp[FP_LEN];
	size_t i, j;
	int moved = 0;

	for (i = 0; i < r->n; i++) {
		struct rlistener *rl = &r->rl[i];

		for (j = 0; j < rl->nfiles; j++) {
			struct rfile *f = &rl->files[j];

			refresh(r, f, fp);
			if (memcmp(fp, f->seen, FP_LEN) != 0) {
				memcpy(f->seen, fp, FP_LEN);
				moved = 1;
			}
			f->changed = memcmp(f->seen, f->loaded, FP_LEN) != 0;
		}
	}
	return (moved);
}

static int
any_changed(const struct rlistener *rl)
{
	size_t j;

	for (j = 0; j < rl->nfiles; j++)
		if (rl->files[j].changed)
			return (1);
	return (0);
}

/* --- Watches ------------------------------------------------------------ */

/* A handle of ${r} has closed; the last one after reloader_free frees it. */
static void
release(struct reloader *r)
{
	size_t i;

	if (--r->nopen > 0 || !r->closing)
		return;
	for (i = 0; i < r->n; i++)
		free(r->rl[i].files);
	free(r->rl);
	free(r);
}

static void
watch_close_cb(uv_handle_t *h)
{
	struct rwatch *w = h->data;
	struct reloader *r = w->r;
	size_t i;

	for (i = 0; i < w->nnames; i++)
		free(w->names[i]);
	free(w->names);
	free(w->dir);
	free(w);
	release(r);
}

static void
watch_close(struct rwatch *w)
{

	uv_close((uv_handle_t *)&w->h, watch_close_cb);
}

static int
watch_relevant(const struct rwatch *w, const char *name)
{
	const char *base;
	size_t i;

	/*
	 * No name, or the directory's own name (libuv's report of an event on
	 * the directory itself, such as its removal), may hide anything.
	 */
	if (name == NULL)
		return (1);
	base = strrchr(w->dir, '/');
	if (strcmp(name, base != NULL ? base + 1 : w->dir) == 0)
		return (1);
	for (i = 0; i < w->nnames; i++)
		if (strcmp(w->names[i], name) == 0)
			return (1);
	return (0);
}

static void
fs_event_cb(uv_fs_event_t *h, const char *name, int events, int status)
{
	struct rwatch *w = h->data;
	struct reloader *r = w->r;

	(void)events;
	if (r->closing)
		return;
	if (status < 0) {
		log_debug("reload_watch", "%s: %s", w->dir,
		    uv_strerror(status));
		arm(r);
		return;
	}
	if (!watch_relevant(w, name))
		return;
	log_debug("reload_watch", "%s: %s changed", w->dir,
	    name != NULL ? name : "(something)");
	arm(r);
}

/* Note that ${name} in ${dir} is to be watched (a resolve() visitor). */
static void
watch_add(void *arg, const char *dir, const char *name)
{
	struct reloader *r = arg;
	struct rwatch *w;
	char **names, *s;
	size_t i;

	for (w = r->watches; w != NULL; w = w->next)
		if (strcmp(w->dir, dir) == 0)
			break;
	if (w == NULL) {
		if ((w = calloc(1, sizeof(*w))) == NULL)
			return;
		if ((w->dir = strdup(dir)) == NULL) {
			free(w);
			return;
		}
		/* uv_fs_event_init cannot fail on Linux. */
		(void)uv_fs_event_init(r->loop, &w->h);
		w->h.data = w;
		w->r = r;
		w->next = r->watches;
		r->watches = w;
		r->nopen++;
	}
	w->mark = 1;
	for (i = 0; i < w->nnames; i++)
		if (strcmp(w->names[i], name) == 0)
			return;
	if ((s = strdup(name)) == NULL)
		return;
	names = reallocarray(w->names, w->nnames + 1, sizeof(*names));
	if (names == NULL) {
		free(s);
		return;
	}
	names[w->nnames++] = s;
	w->names = names;
}

/*
 * Make the set of watched directories match what the files' paths lead
 * through now: a symlink swap can move a file into another directory (a new
 * Kubernetes "..2026_..." directory, another certbot archive), and the old
 * one may be gone.
 */
static void
watch_update(struct reloader *r)
{
	char real[PATH_MAX];
	struct rwatch *w, **pw;
	struct stat st;
	size_t i, j;
	int rc;

	if (r->poll_only)
		return;
	for (w = r->watches; w != NULL; w = w->next) {
		w->mark = 0;
		for (i = 0; i < w->nnames; i++)
			free(w->names[i]);
		free(w->names);
		w->names = NULL;
		w->nnames = 0;
	}
	for (i = 0; i < r->n; i++)
		for (j = 0; j < r->rl[i].nfiles; j++)
			(void)resolve(r->rl[i].files[j].path, real, watch_add,
			    r);
	for (pw = &r->watches; (w = *pw) != NULL;) {
		if (!w->mark) {
			*pw = w->next;
			log_debug("reload_watch", "no longer watching %s",
			    w->dir);
			watch_close(w);
			continue;
		}
		pw = &w->next;
		/*
		 * A directory removed and made again under the same name is
		 * a new inode, and the old watch sees nothing of it.
		 */
		if (stat(w->dir, &st) < 0)
			memset(&st, 0, sizeof(st));
		if (w->started && st.st_dev == w->dev && st.st_ino == w->ino)
			continue;
		if (w->started) {
			(void)uv_fs_event_stop(&w->h);
			w->started = 0;
		}
		w->dev = st.st_dev;
		w->ino = st.st_ino;
		if ((rc = uv_fs_event_start(&w->h, fs_event_cb, w->dir,
		    0)) < 0) {
			/* The fingerprint check still covers this directory. */
			if (!w->warned)
				log_warn("reload_watch", "cannot watch %s: %s; "
				    "checking every %d ms instead", w->dir,
				    uv_strerror(rc), POLL_MS);
			w->warned = 1;
			continue;
		}
		w->started = 1;
		log_debug("reload_watch", "watching %s", w->dir);
	}
}

/* --- Reloading ---------------------------------------------------------- */

/* The certs_load messages as one line, "a; b"; NULL if out of memory. */
static char *
one_line(const char *msg)
{
	size_t len = strlen(msg), n = 0, i;
	char *s, *o;

	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		len--;
	for (i = 0; i < len; i++)
		n += msg[i] == '\n';
	if ((s = malloc(len + n + 1)) == NULL)
		return (NULL);
	for (i = 0, o = s; i < len; i++) {
		if (msg[i] != '\n') {
			*o++ = msg[i];
			continue;
		}
		*o++ = ';';
		*o++ = ' ';
	}
	*o = '\0';
	return (s);
}

/*
 * The files to name in the log: those that changed, or all of them.  Strings
 * here are built with open_memstream(): certs_load() and ticket_reload()
 * report to a FILE * (stderr at start-up), and a reload is rare, so the
 * allocation costs nothing that matters.
 */
static char *
file_list(const struct rlistener *rl, int all)
{
	char *s = NULL;
	size_t len = 0, j;
	FILE *f;
	int first = 1;

	if ((f = open_memstream(&s, &len)) == NULL)
		return (NULL);
	for (j = 0; j < rl->nfiles; j++) {
		if (!all && !rl->files[j].changed)
			continue;
		fprintf(f, "%s%s", first ? "" : ",", rl->files[j].path);
		first = 0;
	}
	if (first)
		fputs(all ? "auto" : "", f);
	fclose(f);
	return (s);
}

static void
reload_one(struct reloader *r, struct rlistener *rl, const char *why, int all)
{
	const struct config_listener *lc = rl->l->conf;
	struct certs *c, *bc;
	char *msg = NULL, *line = NULL, *files, when[32];
	size_t msglen = 0, i, n;
	time_t first = 0;
	struct tm tm;
	FILE *errf;

	files = file_list(rl, all);
	for (i = 0; i < rl->nfiles; i++)
		memcpy(rl->files[i].loaded, rl->files[i].seen, FP_LEN);
	c = bc = NULL;
	if ((errf = open_memstream(&msg, &msglen)) != NULL) {
		if (rl->l->client_tls)
			c = certs_load(lc, r->cfg->path, errf);
		if (rl->l->backend_tls)
			bc = certs_load_trust(lc, r->cfg->path, errf);
		fclose(errf);
	}
	/* Both sets are good or neither is used. */
	if ((rl->l->client_tls && c == NULL) ||
	    (rl->l->backend_tls && bc == NULL)) {
		certs_unref(c);
		certs_unref(bc);
		if (msg != NULL)
			line = one_line(msg);
		atomic_fetch_add(&rl->count[RELOADER_FAILED], 1);
		log_fields(CONFIG_LOG_ERROR, "reload", (struct log_field[]){
		    LOG_STR("listener", lc->name),
		    LOG_STR("trigger", why),
		    LOG_STR("files", files),
		    LOG_STR("result", "failed"),
		    LOG_STR("error", line != NULL ? line : strerror(ENOMEM)),
		    LOG_STR("action", "keeping the certificates in use") }, 6);
		goto out;
	}
	/* The first certificate to expire is the one to watch out for. */
	n = c != NULL ? certs_count(c) : 0;
	for (i = 0; i < n; i++)
		if (i == 0 || certs_not_after(c, i) < first)
			first = certs_not_after(c, i);
	when[0] = '\0';
	if (n > 0 && gmtime_r(&first, &tm) != NULL)
		strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	/*
	 * New handshakes get the new set; open sessions keep the reference
	 * they took, so the old set goes when the last of them does.
	 */
	if (c != NULL)
		certs_slot_set(rl->l->tls.slot, c);
	if (bc != NULL)
		certs_slot_set(rl->l->btls.slot, bc);
	atomic_fetch_add(&rl->count[RELOADER_OK], 1);
	log_fields(CONFIG_LOG_INFO, "reload", (struct log_field[]){
	    LOG_STR("listener", lc->name),
	    LOG_STR("trigger", why),
	    LOG_STR("files", files),
	    LOG_STR("result", "ok"),
	    LOG_NUM("certs", n),
	    LOG_STR("not_after", when) }, 6);
out:
	free(line);
	free(msg);
	free(files);
}

/* The session-ticket key is re-read with the certificates. */
static void
reload_ticket(struct reloader *r, const char *why)
{
	char *msg = NULL;
	size_t msglen = 0;
	FILE *errf;
	int rc;

	if (r->ticket == NULL || r->cfg->ticket_key_file == NULL)
		return;
	if ((errf = open_memstream(&msg, &msglen)) == NULL)
		return;
	rc = ticket_reload(r->ticket, r->cfg, errf);
	fclose(errf);
	if (rc < 0)
		log_fields(CONFIG_LOG_ERROR, "reload", (struct log_field[]){
		    LOG_STR("file", r->cfg->ticket_key_file),
		    LOG_STR("trigger", why), LOG_STR("result", "failed"),
		    LOG_STR("error", msg),
		    LOG_STR("action", "keeping the ticket key in use") }, 5);
	else if (rc > 0)
		log_fields(CONFIG_LOG_INFO, "reload", (struct log_field[]){
		    LOG_STR("file", r->cfg->ticket_key_file),
		    LOG_STR("trigger", why), LOG_STR("result", "ok") }, 3);
	free(msg);
}

static void
debounce_cb(uv_timer_t *t)
{
	struct reloader *r = t->data;
	size_t i;
	int changed = 0;

	/*
	 * Files that moved since the last event (or the last poll) are still
	 * being written, or sit on a file system that tells us nothing: wait
	 * until they hold still, but not for ever.
	 */
	watch_update(r);
	if (look(r) && uv_now(r->loop) - r->pending_since < SETTLE_MAX_MS) {
		uv_timer_start(&r->debounce, debounce_cb, DEBOUNCE_MS, 0);
		return;
	}
	r->pending = 0;
	for (i = 0; i < r->n; i++)
		if (any_changed(&r->rl[i])) {
			reload_one(r, &r->rl[i], "change", 0);
			changed = 1;
		}
	if (changed)
		reload_ticket(r, "change");
}

/* Something may have changed: reload once things have settled. */
static void
arm(struct reloader *r)
{
	uint64_t now = uv_now(r->loop);

	/* Remember the files as they are now, to tell when they settle. */
	(void)look(r);
	if (!r->pending) {
		r->pending = 1;
		r->pending_since = now;
	} else if (now - r->pending_since >= SETTLE_MAX_MS)
		return;
	uv_timer_start(&r->debounce, debounce_cb, DEBOUNCE_MS, 0);
}

static void
poll_cb(uv_timer_t *t)
{
	struct reloader *r = t->data;
	size_t i;

	if (r->pending)
		return;
	(void)look(r);
	for (i = 0; i < r->n; i++)
		if (any_changed(&r->rl[i])) {
			log_debug("reload_watch", "listener %s: a file changed "
			    "(fingerprint)", r->rl[i].l->conf->name);
			r->pending = 1;
			r->pending_since = uv_now(r->loop);
			uv_timer_start(&r->debounce, debounce_cb, DEBOUNCE_MS,
			    0);
			return;
		}
}

static void
timer_close_cb(uv_handle_t *h)
{

	release(h->data);
}

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
struct reloader *
reloader_new(uv_loop_t *loop, const struct config *cfg, struct listener *ls,
    size_t n, struct ticket *ticket)
{
	struct reloader *r;
	size_t i, j, k, nfiles = 0, ndirs = 0;
	struct rwatch *w;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		goto err0;
	r->loop = loop;
	r->ticket = ticket;
	r->cfg = cfg;
	r->n = n;
	/* For tests, and to rule inotify out when chasing a problem. */
	r->poll_only = getenv(RELOADER_POLL_ONLY_ENV) != NULL;
	atomic_init(&r->digests, 0);
	if ((r->rl = calloc(n > 0 ? n : 1, sizeof(*r->rl))) == NULL)
		goto err1;
	for (i = 0; i < n; i++) {
		const struct config_listener *lc = ls[i].conf;
		struct rlistener *rl = &r->rl[i];

		rl->l = &ls[i];
		for (k = 0; k < RELOADER_NRESULTS; k++)
			atomic_init(&rl->count[k], 0);
		if (!ls[i].client_tls && !ls[i].backend_tls)
			continue;
		/*
		 * Two files per pair at most, the client CA, the backend CA,
		 * and the ticket key: a change to it reloads the listener,
		 * and the key with it.
		 */
		rl->files = calloc(2 * lc->ncerts + 3, sizeof(*rl->files));
		if (rl->files == NULL)
			goto err2;
		for (j = 0; j < lc->ncerts; j++) {
			/* "cert = auto" has no key and no file. */
			if (lc->certs[j].key == NULL)
				continue;
			rl->files[rl->nfiles++].path = lc->certs[j].cert;
			rl->files[rl->nfiles++].path = lc->certs[j].key;
		}
		if (lc->client_ca != NULL && ls[i].client_tls)
			rl->files[rl->nfiles++].path = lc->client_ca;
		if (lc->backend_ca != NULL && ls[i].backend_tls &&
		    lc->backend_verify)
			rl->files[rl->nfiles++].path = lc->backend_ca;
		if (cfg->ticket_key_file != NULL && ls[i].client_tls)
			rl->files[rl->nfiles++].path = cfg->ticket_key_file;
		nfiles += rl->nfiles;
	}
	(void)look(r);
	for (i = 0; i < n; i++)
		for (j = 0; j < r->rl[i].nfiles; j++)
			memcpy(r->rl[i].files[j].loaded, r->rl[i].files[j].seen,
			    FP_LEN);

	uv_timer_init(loop, &r->debounce);
	uv_timer_init(loop, &r->poll);
	r->debounce.data = r->poll.data = r;
	r->nopen = 2;
	if (nfiles > 0) {
		watch_update(r);
		uv_timer_start(&r->poll, poll_cb, POLL_MS, POLL_MS);
	}
	for (w = r->watches; w != NULL; w = w->next)
		ndirs += w->started;
	log_fields(CONFIG_LOG_INFO, "reload_watch", (struct log_field[]){
	    LOG_NUM("files", nfiles),
	    LOG_NUM("dirs", ndirs),
	    LOG_STR("fs_events", r->poll_only ? "off" : "on"),
	    LOG_NUM("debounce_ms", DEBOUNCE_MS),
	    LOG_NUM("poll_ms", POLL_MS) }, 5);
	return (r);

err2:
	for (i = 0; i < n; i++)
		free(r->rl[i].files);
	free(r->rl);
err1:
	free(r);
err0:
	return (NULL);
}

/**
 * reloader_reload(r, why):
 * Reload every TLS listener of ${r} now, changed or not (SIGHUP); ${why} is
 * logged as the trigger.  A listener whose new set fails validation keeps its
 * old one.
 */
void
reloader_reload(struct reloader *r, const char *why)
{
	size_t i;

	if (r->closing)
		return;
	watch_update(r);
	(void)look(r);
	for (i = 0; i < r->n; i++)
		if (r->rl[i].l->client_tls || r->rl[i].l->backend_tls)
			reload_one(r, &r->rl[i], why, 1);
	reload_ticket(r, why);
}

/**
 * reloader_free(r):
 * Stop watching and free ${r}.  Its handles are closed, so the memory goes
 * once the loop has run their close callbacks; the loop must run on.  NULL
 * is a no-op.
 */
void
reloader_free(struct reloader *r)
{
	struct rwatch *w, *next;

	if (r == NULL || r->closing)
		return;
	r->closing = 1;
	for (w = r->watches; w != NULL; w = next) {
		next = w->next;
		watch_close(w);
	}
	r->watches = NULL;
	uv_close((uv_handle_t *)&r->debounce, timer_close_cb);
	uv_close((uv_handle_t *)&r->poll, timer_close_cb);
}

/**
 * reloader_count(r, i, result):
 * The number of reloads of listener ${i} that ended with ${result}.  Safe to
 * call from any thread while ${r} exists.
 */
uint64_t
reloader_count(const struct reloader *r, size_t i, enum reloader_result res)
{

	return (atomic_load(&r->rl[i].count[res]));
}

/**
 * reloader_digests(r):
 * The number of times a watched file's contents were read and hashed: the
 * cost of the change check.  Safe to call from any thread while ${r} exists.
 */
uint64_t
reloader_digests(const struct reloader *r)
{

	return (atomic_load(&r->digests));
}

/**
 * reloader_nlisteners(r), reloader_listener_name(r, i):
 * The number of listeners of ${r}, and the name of listener ${i}.
 */
size_t
reloader_nlisteners(const struct reloader *r)
{

	return (r->n);
}

const char *
reloader_listener_name(const struct reloader *r, size_t i)
{

	return (r->rl[i].l->conf->name);
}

/**
 * reloader_certs(r, i):
 * The credentials listener ${i} is serving now, with a reference for the
 * caller (drop it with certs_unref), or NULL if the listener has no TLS.
 * certs_count(), certs_not_after() and certs_subject() describe them.  Safe
 * to call from any thread while ${r} exists.
 */
struct certs *
reloader_certs(const struct reloader *r, size_t i)
{
	struct listener *l = r->rl[i].l;

	if (!l->client_tls || l->tls.slot == NULL)
		return (NULL);
	return (certs_slot_get(l->tls.slot));
}
