#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <uv.h>

#include "capacity.h"
#include "backend.h"
#include "certs.h"
#include "config.h"
#include "listener.h"
#include "log.h"
#include "lsock.h"
#include "metrics.h"
#include "metrics_http.h"
#include "reloader.h"
#include "sdnotify.h"
#include "ticket.h"
#include "upgrade.h"
#include "worker.h"

#define EXIT_CONFIG	1
#define EXIT_STARTUP	2

/*
 * Listener names a reload may add beyond those at start-up: the counters of
 * /metrics are laid out once, one slot per name.
 */
#define SLOTS_SPARE	64

/*
 * How long a new process started by SIGUSR2 has to report that it serves
 * (reading certificates, resolving nothing: seconds at most); after that it
 * is ended and the old process goes on alone.
 */
#define UPGRADE_TIMEOUT_MS	60000

struct mainctx {
	const char	 *path;		/* of the configuration file */
	char		**argv;		/* as started, for an upgrade */
	char		 *exe;		/* our binary, resolved at start */
	struct listener_set *set;	/* the running configuration */
	struct lsock_table *socks;
	struct worker	**ws;
	unsigned	  nws;
	unsigned	  nw;		/* workers wanted; fixed */
	atomic_uint	  ndone;
	uv_loop_t	 *loop;
	uv_signal_t	  sigterm, sigint, sighup, sigusr2, sigchld;
	uv_async_t	  done_async;
	struct reloader	 *reloader;
	struct metrics	 *metrics;
	struct metrics_http *mhttp;
	struct metrics_src  msrc;
	/* One /metrics slot (and connection count) per listener name. */
	char		**slot_names;
	atomic_uint	 *slot_nconns;
	size_t		  nslots, capslots;
	uint64_t	  config_reloads[2];	/* ok, error */
	int		  stopping;
	struct ticket	 *ticket;	/* the running one */
	struct ticket	**old_tickets;	/* replaced: sessions may use them */
	size_t		  nold_tickets;
	/* The upgrade under way, if any. */
	pid_t		  up_pid;
	int		  up_fd;	/* its readiness pipe; -1: none */
	uv_poll_t	  up_poll;
	int		  up_polling;
	uv_timer_t	  up_timer;
	char		  up_buf[16];
	size_t		  up_len;
	int		  ready_fd;	/* ours, when we are the new process */
	/* What a running process cannot change, as it started. */
	char		 *run_user;	/* NULL: none */
	unsigned	  run_workers;	/* as written: 0 = auto */
};

static void
usage(FILE *f)
{

	fprintf(f,
	    "usage: mailtlsd -c FILE        run in the foreground, log to stderr\n"
	    "       mailtlsd -t -c FILE     check the configuration and "
	    "certificates\n"
	    "       mailtlsd --version      print the version\n"
	    "       mailtlsd -h             this help\n");
}

/* Each line of ${text} (FILE:LINE: message) as one log line. */
static size_t
log_lines(enum config_loglevel lvl, const char *event, const char *text)
{
	const char *p = text, *nl;
	size_t n = 0;

	while (p != NULL && *p != '\0') {
		nl = strchr(p, '\n');
		log_msg(lvl, event, "%.*s", (int)(nl != NULL ? nl - p :
		    (ptrdiff_t)strlen(p)), p);
		n++;
		p = nl != NULL ? nl + 1 : NULL;
	}
	return (n);
}

static int
drop_privileges(const char *user)
{
	struct passwd *pw;

	if ((pw = getpwnam(user)) == NULL) {
		log_err("start", "no such user: %s", user);
		return (-1);
	}
	if (geteuid() != 0) {
		if (pw->pw_uid == geteuid())
			return (0);
		log_err("start", "cannot switch to user %s: not started as "
		    "root", user);
		return (-1);
	}
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 ||
	    setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		log_err("start", "cannot switch to user %s: %s", user,
		    strerror(errno));
		return (-1);
	}
	/* Make sure there is no way back. */
	if (setuid(0) == 0) {
		log_err("start", "still able to regain root after dropping to "
		    "%s", user);
		return (-1);
	}
	log_info("start", "running as user %s (uid %u, gid %u)", user,
	    (unsigned)pw->pw_uid, (unsigned)pw->pw_gid);
	return (0);
}

/*
 * Give every listener of ${set} its /metrics slot and connection count by
 * name, so that a listener kept over a reload keeps both.  On failure the
 * slots made here are taken back.
 */
static int
assign_slots(struct mainctx *m, struct listener_set *set, FILE *errf)
{
	size_t i, k, n0 = m->nslots;

	for (i = 0; i < set->n; i++) {
		struct listener *l = &set->ls[i];

		for (k = 0; k < m->nslots; k++)
			if (strcmp(m->slot_names[k], l->conf->name) == 0)
				break;
		if (k == m->nslots) {
			if (m->nslots == m->capslots ||
			    (m->slot_names[k] = strdup(l->conf->name)) ==
			    NULL) {
				fprintf(errf, "%s:%d: listener %s: too many "
				    "listeners added since start-up (%zu "
				    "names at most): restart to add more\n",
				    set->cfg->path, l->conf->line,
				    l->conf->name, m->capslots);
				goto err;
			}
			m->nslots++;
		}
		l->index = k;
		l->nconns = &m->slot_nconns[k];
	}
	return (0);
err:
	while (m->nslots > n0)
		free(m->slot_names[--m->nslots]);
	return (-1);
}

static void
close_cb(uv_handle_t *h)
{

	(void)h;
}

static void
worker_done(void *arg)
{
	struct mainctx *m = arg;

	atomic_fetch_add(&m->ndone, 1);
	uv_async_send(&m->done_async);
}

/*
 * The main loop's services: their handles must close for the loop to end
 * (each is a no-op the second time); the endpoint reads the reloader, so
 * it goes first.
 */
static void
stop_services(struct mainctx *m)
{

	backend_resolver_stop();
	metrics_http_stop(m->mhttp);
	m->mhttp = NULL;
	reloader_free(m->reloader);
	m->reloader = NULL;
}

/* Async sends coalesce: count, don't trust the number of calls. */
static void
all_done_check(uv_async_t *as)
{
	struct mainctx *m = as->data;

	if (atomic_load(&m->ndone) < m->nws)
		return;
	uv_close((uv_handle_t *)&m->sigterm, close_cb);
	uv_close((uv_handle_t *)&m->sigint, close_cb);
	uv_close((uv_handle_t *)&m->sighup, close_cb);
	uv_close((uv_handle_t *)&m->sigusr2, close_cb);
	uv_close((uv_handle_t *)&m->sigchld, close_cb);
	uv_close((uv_handle_t *)&m->done_async, close_cb);
	if (m->up_polling) {
		uv_close((uv_handle_t *)&m->up_poll, close_cb);
		m->up_polling = 0;
	}
	uv_close((uv_handle_t *)&m->up_timer, close_cb);
	stop_services(m);
}

/* The /metrics endpoint on the main loop, once the workers run. */
static int
start_metrics(struct mainctx *m)
{
	const struct config *cfg = m->set->cfg;
	char err[256];

	if ((m->mhttp = metrics_http_start(m->loop, &cfg->metrics, &m->msrc,
	    err, sizeof(err))) == NULL) {
		log_err("start", "metrics = %s: %s", cfg->metrics.text, err);
		return (-1);
	}
	return (0);
}

static void
log_listeners(const struct listener_set *set)
{
	size_t j;

	for (j = 0; j < set->n; j++) {
		const struct config_listener *l = set->ls[j].conf;

		log_fields(CONFIG_LOG_INFO, "listen", (struct log_field[]){
		    LOG_STR("listener", l->name),
		    LOG_STR("listen", l->listen.text),
		    LOG_STR("proto", config_proto_name(l->protocol)),
		    LOG_STR("client_tls", l->client_tls == CONFIG_TLS_IMPLICIT ?
		    "implicit" : l->client_tls == CONFIG_TLS_STARTTLS ?
		    "starttls" : "none"),
		    LOG_STR("backend", l->backend.text),
		    LOG_STR("tls_priority", l->client_tls != CONFIG_TLS_NONE ?
		    l->tls_priority : "") }, 6);
	}
}

/* Stop accepting and let the workers drain (SIGTERM, or an upgrade). */
static void
stop_accepting(struct mainctx *m)
{
	unsigned i;

	m->stopping = 1;
	for (i = 0; i < m->nws; i++)
		worker_stop(m->ws[i]);
	/* The workers close their copies; these are the last ones here. */
	lsock_close_all(m->socks);
	stop_services(m);
}

static int
same_str(const char *a, const char *b)
{

	if (a == NULL || b == NULL)
		return (a == b);
	return (strcmp(a, b) == 0);
}

/*
 * Everything of a new configuration that can fail, done before anything
 * changes: the file, every listener's certificates and keys (as -t checks
 * them), the ticket key, and a socket for every new address.  Problems go
 * to ${errf}.  Return the new set, or NULL.
 */
static struct listener_set *
reload_prepare(struct mainctx *m, FILE *errf, struct ticket **tp,
    struct worker_bind ***bindsp, size_t **nbindsp,
    struct metrics_http **mhttpp)
{
	const struct config *old = m->set->cfg;
	struct config *cfg;
	struct listener_set *set = NULL;
	struct ticket *t = m->ticket;
	struct worker_bind **binds = NULL;
	size_t *nbinds = NULL, n0 = m->nslots;
	char err[256];
	unsigned i;

	*mhttpp = NULL;
	if ((cfg = config_load(m->path, errf)) == NULL)
		return (NULL);
	/* A new key file is a new key; the same one is re-read below. */
	if (!same_str(cfg->ticket_key_file, old->ticket_key_file) &&
	    (t = ticket_new(cfg, errf)) == NULL)
		goto err0;
	if ((set = listener_set_new(cfg, t, errf)) == NULL)
		goto err1;
	if (assign_slots(m, set, errf) < 0)
		goto err2;
	if (lsock_plan(m->socks, set, errf) < 0)
		goto err3;
	if ((binds = calloc(m->nws, sizeof(*binds))) == NULL ||
	    (nbinds = calloc(m->nws, sizeof(*nbinds))) == NULL)
		goto err4;
	for (i = 0; i < m->nws; i++)
		if (lsock_binds(m->socks, set, i, &binds[i], &nbinds[i]) < 0) {
			fprintf(errf, "%s: out of memory\n", m->path);
			goto err4;
		}
	/* A new /metrics address is bound now too, beside the old one. */
	if (cfg->has_metrics && (m->mhttp == NULL ||
	    strcmp(cfg->metrics.text, old->metrics.text) != 0) &&
	    (*mhttpp = metrics_http_start(m->loop, &cfg->metrics, &m->msrc,
	    err, sizeof(err))) == NULL) {
		fprintf(errf, "%s: metrics = %s: %s\n", m->path,
		    cfg->metrics.text, err);
		goto err4;
	}
	*tp = t;
	*bindsp = binds;
	*nbindsp = nbinds;
	return (set);

err4:
	for (i = 0; binds != NULL && i < m->nws; i++)
		free(binds[i]);
	free(binds);
	free(nbinds);
	lsock_abort(m->socks);
err3:
	while (m->nslots > n0)
		free(m->slot_names[--m->nslots]);
err2:
	listener_set_unref(set);
	cfg = NULL;		/* freed with the set */
err1:
	if (t != m->ticket)
		ticket_free(t);
err0:
	config_free(cfg);
	return (NULL);
}

/*
 * Settings a running process keeps: say so whenever the file differs from
 * what the process started with (not only from the last reload).
 */
static void
restart_needed(const struct mainctx *m, const struct config *new)
{

	if (!same_str(m->run_user, new->user))
		log_warn("config_reload", "user changed to %s: a restart is "
		    "needed; still running as %s", new->user != NULL ?
		    new->user : "(none)", m->run_user != NULL ? m->run_user :
		    "(the starting user)");
	if (m->run_workers != new->workers)
		log_warn("config_reload", "workers changed: a restart is "
		    "needed; keeping the %u running worker(s)", m->nws);
}

/*
 * SIGHUP: read the configuration file again.  With any error nothing
 * changes; otherwise new connections get the new settings at once, while
 * open sessions finish under the set they started with.
 */
static void
reload_config(struct mainctx *m)
{
	struct listener_set *set, *old = m->set;
	struct worker_bind **binds = NULL;
	struct metrics_http *mhttp;
	struct reloader *r;
	struct ticket *t = NULL;
	size_t *nbinds = NULL, nerr, nclosed, nadded = 0, i;
	char *text = NULL;
	size_t textlen = 0;
	FILE *errf;
	unsigned w;

	(void)sdnotify_reloading();
	log_info("config_reload", "SIGHUP: reloading %s and every "
	    "certificate", m->path);
	if ((errf = open_memstream(&text, &textlen)) == NULL) {
		log_err("config_reload", "out of memory; keeping the running "
		    "configuration");
		m->config_reloads[1]++;
		(void)sdnotify("READY=1");
		return;
	}
	set = reload_prepare(m, errf, &t, &binds, &nbinds, &mhttp);
	fclose(errf);
	if (set == NULL) {
		nerr = log_lines(CONFIG_LOG_ERROR, "config_reload", text);
		log_fields(CONFIG_LOG_ERROR, "config_reload",
		    (struct log_field[]){
		    LOG_STR("result", "error"),
		    LOG_NUM("errors", nerr),
		    LOG_STR("action", "keeping the running configuration") },
		    3);
		free(text);
		m->config_reloads[1]++;
		/*
		 * The running listeners still get their renewed certificates,
		 * each on its own, as the reloader does without a signal: a
		 * typo in the file must not hold up a renewal.
		 */
		if (m->reloader != NULL)
			reloader_reload(m->reloader, "SIGHUP");
		(void)sdnotify("READY=1");
		return;
	}
	/* Warnings (a backend name that does not resolve yet, say). */
	(void)log_lines(CONFIG_LOG_WARN, "config_reload", text);
	free(text);
	restart_needed(m, set->cfg);
	for (i = 0; i < set->n; i++)
		if (listener_find(old, &set->ls[i].conf->listen) == NULL)
			nadded++;

	/* From here on nothing fails: commit. */
	for (w = 0; w < m->nws; w++) {
		if (worker_rebind(m->ws[w], set, binds[w], nbinds[w]) < 0)
			log_err("config_reload", "worker %u: out of memory; it "
			    "keeps the old listeners", w);
		free(binds[w]);
	}
	free(binds);
	free(nbinds);
	nclosed = lsock_commit(m->socks);
	if (t != m->ticket) {
		struct ticket **ot;

		/* Sessions of the old set may still use the old key. */
		ot = realloc(m->old_tickets, (m->nold_tickets + 1) *
		    sizeof(*ot));
		if (ot != NULL) {
			m->old_tickets = ot;
			ot[m->nold_tickets++] = m->ticket;
		}
		m->ticket = t;
	}
	log_setup(set->cfg->log_level, set->cfg->log_format);
	m->set = set;
	if ((r = reloader_new(m->loop, set->cfg, set->ls, set->n,
	    m->ticket)) == NULL)
		log_err("config_reload", "cannot start the certificate "
		    "reloader: certificates are reloaded on SIGHUP only");
	reloader_free(m->reloader);
	m->reloader = r;
	m->msrc.reloader = r;
	m->msrc.nlisteners = m->nslots;
	/* The files were read just now; this logs and counts it per listener
	 * as before, and re-reads a ticket key file that did not move. */
	if (r != NULL)
		reloader_reload(r, "SIGHUP");
	if (mhttp != NULL || !set->cfg->has_metrics) {
		metrics_http_stop(m->mhttp);
		m->mhttp = mhttp;
	}
	listener_set_unref(old);
	log_listeners(set);
	m->config_reloads[0]++;
	log_fields(CONFIG_LOG_INFO, "config_reload", (struct log_field[]){
	    LOG_STR("result", "ok"),
	    LOG_NUM("listeners", set->n),
	    LOG_NUM("added", nadded),
	    LOG_NUM("sockets_closed", nclosed) }, 4);
	(void)sdnotify("READY=1");
}

/* The upgrade is over, one way or the other: stop watching its pipe. */
static void
upgrade_end(struct mainctx *m)
{

	if (m->up_polling) {
		uv_close((uv_handle_t *)&m->up_poll, close_cb);
		m->up_polling = 0;
	}
	uv_timer_stop(&m->up_timer);
	if (m->up_fd >= 0)
		close(m->up_fd);
	m->up_fd = -1;
	m->up_len = 0;
}

static void
upgrade_failed(struct mainctx *m, const char *why)
{

	log_fields(CONFIG_LOG_ERROR, "upgrade", (struct log_field[]){
	    LOG_STR("result", "failed"),
	    LOG_NUM("pid", m->up_pid),
	    LOG_STR("error", why),
	    LOG_STR("action", "still serving") }, 4);
	upgrade_end(m);
	/* The endpoint was closed so that the new process could bind it. */
	if (m->mhttp == NULL && m->set->cfg->has_metrics && !m->stopping)
		(void)start_metrics(m);
}

static void
upgrade_read_cb(uv_poll_t *p, int status, int events)
{
	struct mainctx *m = p->data;
	ssize_t n;

	(void)events;
	n = status < 0 ? -1 : read(m->up_fd, m->up_buf + m->up_len,
	    sizeof(m->up_buf) - 1 - m->up_len);
	if (n < 0 && (errno == EAGAIN || errno == EINTR) && status >= 0)
		return;
	if (n > 0) {
		m->up_len += (size_t)n;
		m->up_buf[m->up_len] = '\0';
		if (strcmp(m->up_buf, UPGRADE_READY) != 0 &&
		    m->up_len < sizeof(m->up_buf) - 1)
			return;
	}
	if (n > 0 && strcmp(m->up_buf, UPGRADE_READY) == 0) {
		log_fields(CONFIG_LOG_INFO, "upgrade", (struct log_field[]){
		    LOG_STR("result", "ok"),
		    LOG_NUM("pid", m->up_pid),
		    LOG_STR("action", "no longer accepting; letting open "
		    "sessions finish") }, 3);
		upgrade_end(m);
		if (!m->stopping)
			stop_accepting(m);
		return;
	}
	upgrade_failed(m, "the new process ended before it was ready "
	    "(its log says why)");
}

static void
upgrade_timeout_cb(uv_timer_t *t)
{
	struct mainctx *m = t->data;

	(void)kill(m->up_pid, SIGTERM);
	upgrade_failed(m, "the new process did not report ready in time; "
	    "sent it SIGTERM");
}

/*
 * SIGUSR2: start our binary again with the listening sockets; once it says
 * it serves, drain as on SIGTERM.  Until then both accept.
 */
static void
upgrade(struct mainctx *m)
{
	int *fds = NULL, n, fd = -1;
	char *names = NULL;
	pid_t pid;

	if (m->stopping || m->up_fd >= 0) {
		log_warn("upgrade", "SIGUSR2 ignored: %s", m->stopping ?
		    "stopping" : "an upgrade is already under way");
		return;
	}
	if (m->exe == NULL) {
		log_err("upgrade", "SIGUSR2: the path of the binary is not "
		    "known; still serving");
		return;
	}
	/*
	 * Process 1 of a container: the container, and the new process with
	 * it, would end when this one has drained.
	 */
	if (getpid() == 1) {
		log_err("upgrade", "SIGUSR2 ignored: this is process 1 (a "
		    "container ends with it); replace the container instead");
		return;
	}
	if ((n = lsock_export(m->socks, &fds, &names)) < 0) {
		log_err("upgrade", "SIGUSR2: out of memory; still serving");
		return;
	}
	/* The new process binds the endpoint itself. */
	metrics_http_stop(m->mhttp);
	m->mhttp = NULL;
	pid = upgrade_spawn(m->exe, m->argv, fds, n, names, &fd);
	free(fds);
	free(names);
	if (pid < 0) {
		m->up_pid = 0;
		upgrade_failed(m, strerror(errno));
		return;
	}
	m->up_pid = pid;
	m->up_fd = fd;
	m->up_len = 0;
	log_info("upgrade", "SIGUSR2: started %s as pid %ld with %d "
	    "listening socket(s); waiting for it to be ready", m->exe,
	    (long)pid, n);
	if (uv_poll_init(m->loop, &m->up_poll, fd) < 0) {
		upgrade_failed(m, "cannot watch the new process");
		return;
	}
	m->up_poll.data = m;
	m->up_polling = 1;
	uv_timer_start(&m->up_timer, upgrade_timeout_cb, UPGRADE_TIMEOUT_MS, 0);
	uv_poll_start(&m->up_poll, UV_READABLE | UV_DISCONNECT,
	    upgrade_read_cb);
}

/* Reap the processes an upgrade started, and say how they ended. */
static void
reap_children(void)
{
	pid_t pid;
	int st;

	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		if (WIFEXITED(st))
			log_msg(WEXITSTATUS(st) == 0 ? CONFIG_LOG_INFO :
			    CONFIG_LOG_ERROR, "upgrade", "pid %ld exited with "
			    "status %d", (long)pid, WEXITSTATUS(st));
		else if (WIFSIGNALED(st))
			log_err("upgrade", "pid %ld was killed by signal %d",
			    (long)pid, WTERMSIG(st));
	}
}

static void
signal_cb(uv_signal_t *s, int signum)
{
	struct mainctx *m = s->data;

	switch (signum) {
	case SIGHUP:
		/*
		 * The new process of an upgrade has the sockets as they were:
		 * a reload now would leave the two out of step.
		 */
		if (m->up_fd >= 0)
			log_warn("config_reload", "SIGHUP ignored: an upgrade "
			    "is under way; send it to the new process");
		else if (!m->stopping)
			reload_config(m);
		return;
	case SIGUSR2:
		upgrade(m);
		return;
	case SIGCHLD:
		reap_children();
		return;
	}
	if (m->stopping)
		return;
	(void)sdnotify("STOPPING=1");
	log_info("shutdown", "%s: no longer accepting; letting open sessions "
	    "finish for up to %llu ms", signum == SIGTERM ? "SIGTERM" :
	    "SIGINT", (unsigned long long)m->set->cfg->shutdown_timeout_ms);
	if (m->up_fd >= 0) {
		/* Asked to stop: the half-started new process goes too. */
		log_warn("upgrade", "stopping: ending pid %ld, which was not "
		    "ready yet", (long)m->up_pid);
		(void)kill(m->up_pid, SIGTERM);
		upgrade_end(m);
	}
	stop_accepting(m);
}

static void
start_signal(struct mainctx *m, uv_signal_t *s, int signum)
{

	uv_signal_init(m->loop, s);
	s->data = m;
	uv_signal_start(s, signal_cb, signum);
}

/* The listening sockets and the workers on them. */
static int
start_workers(struct mainctx *m)
{
	struct worker_bind *binds;
	char *text = NULL;
	size_t textlen = 0, nb;
	FILE *errf;
	unsigned i;
	int rc;

	if ((errf = open_memstream(&text, &textlen)) == NULL)
		return (-1);
	rc = assign_slots(m, m->set, errf);
	if (rc == 0)
		rc = lsock_plan(m->socks, m->set, errf);
	fclose(errf);
	(void)log_lines(CONFIG_LOG_ERROR, "start", text);
	free(text);
	if (rc < 0)
		return (-1);
	if ((m->ws = calloc(m->nw, sizeof(*m->ws))) == NULL)
		return (-1);
	for (i = 0; i < m->nw; i++) {
		if (lsock_binds(m->socks, m->set, i, &binds, &nb) < 0)
			return (-1);
		m->ws[i] = worker_new((int)i, m->set, binds, nb, m->metrics,
		    worker_done, m);
		free(binds);
		if (m->ws[i] == NULL)
			return (-1);
		m->nws++;
	}
	(void)lsock_commit(m->socks);
	return (0);
}

static int
run(struct mainctx *m)
{
	const struct config *cfg = m->set->cfg;
	unsigned i;

	/*
	 * Signals are caught before any port listens: a client (or a test)
	 * that sees the port may signal at once.  They are acted on once the
	 * loop runs.
	 */
	m->loop = uv_default_loop();
	start_signal(m, &m->sigterm, SIGTERM);
	start_signal(m, &m->sigint, SIGINT);
	start_signal(m, &m->sighup, SIGHUP);
	start_signal(m, &m->sigusr2, SIGUSR2);
	start_signal(m, &m->sigchld, SIGCHLD);
	uv_async_init(m->loop, &m->done_async, all_done_check);
	m->done_async.data = m;
	uv_timer_init(m->loop, &m->up_timer);
	m->up_timer.data = m;

	m->run_workers = cfg->workers;
	if (cfg->user != NULL && (m->run_user = strdup(cfg->user)) == NULL)
		return (EXIT_STARTUP);
	m->nw = cfg->workers != 0 ? cfg->workers :
	    (unsigned)uv_available_parallelism();
	if (m->nw == 0)
		m->nw = 1;
	m->capslots = cfg->nlisteners + SLOTS_SPARE;
	if ((m->socks = lsock_table_new(m->nw)) == NULL ||
	    (m->slot_names = calloc(m->capslots, sizeof(char *))) == NULL ||
	    (m->slot_nconns = calloc(m->capslots, sizeof(atomic_uint))) ==
	    NULL)
		return (EXIT_STARTUP);
	for (i = 0; i < m->capslots; i++)
		atomic_init(&m->slot_nconns[i], 0);
	(void)lsock_inherit(m->socks);
	/*
	 * Backend names are looked up first (for at most 2 s, a name that does
	 * not resolve is only a warning), so that the first clients find them.
	 */
	if (backend_resolver_start(m->loop, cfg->backend_check) < 0) {
		log_err("start", "cannot start the backend resolver");
		return (EXIT_STARTUP);
	}
	backend_resolver_wait(2000);
	/* Made before the workers, which count into it. */
	if ((m->metrics = metrics_new(m->nw, m->capslots)) == NULL)
		return (EXIT_STARTUP);
	if (start_workers(m) < 0)
		return (EXIT_STARTUP);
	/* Ports are bound: now nothing needs root any more. */
	if (cfg->user != NULL && drop_privileges(cfg->user) < 0)
		return (EXIT_STARTUP);
	if (cfg->user == NULL && geteuid() == 0)
		log_warn("start", "running as root: set user = in [global] to "
		    "drop root once the ports are bound");

	for (i = 0; i < m->nws; i++)
		if (worker_start(m->ws[i]) < 0) {
			log_err("start", "cannot start worker %u", i);
			exit(EXIT_STARTUP);
		}
	if ((m->reloader = reloader_new(m->loop, cfg, m->set->ls, m->set->n,
	    m->ticket)) == NULL) {
		log_err("start", "cannot start the certificate reloader");
		exit(EXIT_STARTUP);
	}
	/* What /metrics shows; a reload may start the endpoint later. */
	m->msrc.metrics = m->metrics;
	m->msrc.names = (const char * const *)m->slot_names;
	m->msrc.nlisteners = m->nslots;
	m->msrc.reloader = m->reloader;
	m->msrc.version = MAILTLSD_VERSION;
	m->msrc.gnutls = gnutls_check_version(NULL);
	m->msrc.libuv = uv_version_string();
	m->msrc.config_reloads = m->config_reloads;
	if (cfg->has_metrics && start_metrics(m) < 0)
		exit(EXIT_STARTUP);
	log_listeners(m->set);
	log_info("ready", "mailtlsd %s: %u worker(s), %zu listener(s), pid "
	    "%ld", MAILTLSD_VERSION, m->nws, cfg->nlisteners,
	    (long)getpid());
	if (m->ready_fd >= 0) {
		char st[64];

		/* An upgrade: the old process drains now; systemd (with
		 * NotifyAccess=all) learns that we are the main process. */
		upgrade_report_ready(m->ready_fd);
		m->ready_fd = -1;
		snprintf(st, sizeof(st), "MAINPID=%ld\nREADY=1",
		    (long)getpid());
		(void)sdnotify(st);
	} else
		(void)sdnotify("READY=1");
	uv_run(m->loop, UV_RUN_DEFAULT);
	for (i = 0; i < m->nws; i++)
		worker_join(m->ws[i]);
	m->nws = 0;
	(void)uv_loop_close(m->loop);
	log_info("shutdown", "stopped");
	return (0);
}

int
main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ "config", required_argument, NULL, 'c' },
		{ "test", no_argument, NULL, 't' },
		{ NULL, 0, NULL, 0 },
	};
	struct mainctx m;
	struct config *cfg;
	struct passwd *pw;
	const char *path = NULL;
	int ch, check = 0, rc;
	size_t i;

	memset(&m, 0, sizeof(m));
	m.up_fd = m.ready_fd = -1;
	/* Before getopt, which may reorder argv. */
	m.exe = upgrade_self_path(argv[0]);
	m.argv = argv;
	while ((ch = getopt_long(argc, argv, "c:thV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 't':
			check = 1;
			break;
		case 'V':
			printf("mailtlsd %s (GnuTLS %s, libuv %s)\n",
			    MAILTLSD_VERSION, gnutls_check_version(NULL),
			    uv_version_string());
			free(m.exe);
			return (0);
		case 'h':
			usage(stdout);
			free(m.exe);
			return (0);
		default:
			usage(stderr);
			free(m.exe);
			return (EXIT_CONFIG);
		}
	}
	if (path == NULL || optind != argc) {
		usage(stderr);
		free(m.exe);
		return (EXIT_CONFIG);
	}
	m.path = path;
	m.ready_fd = upgrade_take_fd();
	signal(SIGPIPE, SIG_IGN);
	/* Before anything uses libuv's threadpool, which reads it once. */
	backend_threadpool_setup();
	if ((cfg = config_load(path, stderr)) == NULL) {
		rc = EXIT_CONFIG;
		goto out;
	}
	log_setup(cfg->log_level, cfg->log_format);
	if (cfg->user != NULL && (pw = getpwnam(cfg->user)) != NULL)
		certs_key_group(pw->pw_gid);
	(void)capacity_setup(cfg);
	if ((m.ticket = ticket_new(cfg, stderr)) == NULL) {
		config_free(cfg);
		rc = check ? EXIT_CONFIG : EXIT_STARTUP;
		goto out;
	}
	if ((m.set = listener_set_new(cfg, m.ticket, stderr)) == NULL) {
		config_free(cfg);
		rc = check ? EXIT_CONFIG : EXIT_STARTUP;
		goto out;
	}
	if (check) {
		/* Not an error: a service may come up after us. */
		(void)backend_check(cfg, stderr);
		printf("%s: configuration and certificates OK\n", path);
		rc = 0;
		goto out;
	}
	rc = run(&m);
out:
	listener_set_unref(m.set);
	lsock_table_free(m.socks);
	ticket_free(m.ticket);
	for (i = 0; i < m.nold_tickets; i++)
		ticket_free(m.old_tickets[i]);
	free(m.old_tickets);
	free(m.ws);
	metrics_free(m.metrics);
	for (i = 0; i < m.nslots; i++)
		free(m.slot_names[i]);
	free(m.slot_names);
	free(m.slot_nconns);
	free(m.exe);
	free(m.run_user);
	if (m.ready_fd >= 0)
		close(m.ready_fd);
	return (rc);
}
