#include <sys/types.h>

#include <errno.h>
#include <getopt.h>
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

#include "backend.h"
#include "certs.h"
#include "config.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "reloader.h"
#include "ticket.h"
#include "worker.h"

#define EXIT_CONFIG	1
#define EXIT_STARTUP	2

struct mainctx {
	struct config	 *cfg;
	struct listener	 *ls;
	struct worker	**ws;
	unsigned	  nws;
	atomic_uint	  ndone;
	uv_loop_t	 *loop;
	uv_signal_t	  sigterm, sigint, sighup;
	uv_async_t	  done_async;
	struct reloader	 *reloader;
	struct metrics	 *metrics;
	struct metrics_http *mhttp;
	struct metrics_src  msrc;
	const char	**lnames;	/* listener names, for msrc */
	int		  stopping;
	struct ticket	 *ticket;
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

static int
setup_listeners(struct mainctx *m, FILE *errf)
{
	size_t i;
	int bad = 0;

	if ((m->ls = calloc(m->cfg->nlisteners, sizeof(*m->ls))) == NULL)
		return (-1);
	for (i = 0; i < m->cfg->nlisteners; i++) {
		if (listener_setup(&m->ls[i], &m->cfg->listeners[i],
		    m->cfg->path, m->ticket, errf) < 0)
			bad = 1;
		m->ls[i].index = i;
	}
	return (bad ? -1 : 0);
}

static void
teardown_listeners(struct mainctx *m)
{
	size_t i;

	if (m->ls == NULL)
		return;
	for (i = 0; i < m->cfg->nlisteners; i++)
		listener_teardown(&m->ls[i]);
	free(m->ls);
	m->ls = NULL;
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
	uv_close((uv_handle_t *)&m->done_async, close_cb);
	backend_resolver_stop();
	metrics_http_stop(m->mhttp);
	m->mhttp = NULL;
	reloader_free(m->reloader);
	m->reloader = NULL;
}

static void
signal_cb(uv_signal_t *s, int signum)
{
	struct mainctx *m = s->data;
	unsigned i;

	if (signum == SIGHUP) {
		log_info("reload", "SIGHUP: reloading certificates");
		if (m->reloader != NULL)
			reloader_reload(m->reloader, "SIGHUP");
		return;
	}
	if (m->stopping)
		return;
	m->stopping = 1;
	log_info("shutdown", "%s: no longer accepting; letting open sessions "
	    "finish for up to %llu ms", signum == SIGTERM ? "SIGTERM" :
	    "SIGINT", (unsigned long long)m->cfg->shutdown_timeout_ms);
	for (i = 0; i < m->nws; i++)
		worker_stop(m->ws[i]);
	backend_resolver_stop();
	/*
	 * Their handles must close for the main loop to end; the endpoint
	 * reads the reloader, so it goes first.
	 */
	metrics_http_stop(m->mhttp);
	m->mhttp = NULL;
	reloader_free(m->reloader);
	m->reloader = NULL;
}

/* The /metrics endpoint on the main loop, once the workers run. */
static int
start_metrics(struct mainctx *m)
{
	const struct config *cfg = m->cfg;
	char err[256];
	size_t j;

	if ((m->lnames = calloc(cfg->nlisteners + 1, sizeof(*m->lnames))) ==
	    NULL) {
		log_err("start", "metrics: out of memory");
		return (-1);
	}
	for (j = 0; j < cfg->nlisteners; j++)
		m->lnames[j] = cfg->listeners[j].name;
	m->msrc.metrics = m->metrics;
	m->msrc.names = m->lnames;
	m->msrc.nlisteners = cfg->nlisteners;
	m->msrc.reloader = m->reloader;
	m->msrc.version = MAILTLSD_VERSION;
	m->msrc.gnutls = gnutls_check_version(NULL);
	m->msrc.libuv = uv_version_string();
	if ((m->mhttp = metrics_http_start(m->loop, &cfg->metrics, &m->msrc,
	    err, sizeof(err))) == NULL) {
		log_err("start", "metrics = %s: %s", cfg->metrics.text, err);
		return (-1);
	}
	return (0);
}

static int
run(struct mainctx *m)
{
	const struct config *cfg = m->cfg;
	char err[256];
	unsigned nw, i;
	size_t j;
	int *fds = NULL, rc = EXIT_STARTUP;

	/*
	 * Signals are caught before any port listens: a client (or a test)
	 * that sees the port may signal at once.  They are acted on once the
	 * loop runs.
	 */
	m->loop = uv_default_loop();
	uv_signal_init(m->loop, &m->sigterm);
	uv_signal_init(m->loop, &m->sigint);
	uv_signal_init(m->loop, &m->sighup);
	m->sigterm.data = m->sigint.data = m->sighup.data = m;
	uv_signal_start(&m->sigterm, signal_cb, SIGTERM);
	uv_signal_start(&m->sigint, signal_cb, SIGINT);
	uv_signal_start(&m->sighup, signal_cb, SIGHUP);
	uv_async_init(m->loop, &m->done_async, all_done_check);
	m->done_async.data = m;

	/*
	 * Backend names are looked up first (for at most 2 s, a name that does
	 * not resolve is only a warning), so that the first clients find them.
	 */
	if (backend_resolver_start(m->loop, cfg->backend_check) < 0) {
		log_err("start", "cannot start the backend resolver");
		return (EXIT_STARTUP);
	}
	backend_resolver_wait(2000);

	nw = cfg->workers != 0 ? cfg->workers :
	    (unsigned)uv_available_parallelism();
	if (nw == 0)
		nw = 1;
	for (j = 0; j < cfg->nlisteners; j++)
		if (listener_probe(&cfg->listeners[j].listen, err,
		    sizeof(err)) < 0) {
			log_err("start", "listener %s: %s",
			    cfg->listeners[j].name, err);
			return (EXIT_STARTUP);
		}
	if ((m->ws = calloc(nw, sizeof(*m->ws))) == NULL ||
	    (fds = calloc(cfg->nlisteners, sizeof(int))) == NULL)
		goto out;
	/* Made before the workers, which count into it. */
	if ((m->metrics = metrics_new(nw, cfg->nlisteners)) == NULL)
		goto out;
	for (i = 0; i < nw; i++) {
		for (j = 0; j < cfg->nlisteners; j++) {
			fds[j] = listener_socket(&cfg->listeners[j].listen, 1,
			    err, sizeof(err));
			if (fds[j] < 0) {
				log_err("start", "listener %s: %s",
				    cfg->listeners[j].name, err);
				goto out;
			}
		}
		if ((m->ws[i] = worker_new((int)i, cfg, m->ls,
		    cfg->nlisteners, fds, worker_done, m)) == NULL)
			goto out;
		m->ws[i]->metrics = m->metrics;
		m->nws++;
	}
	/* Ports are bound: now nothing needs root any more. */
	if (cfg->user != NULL && drop_privileges(cfg->user) < 0)
		goto out;
	if (cfg->user == NULL && geteuid() == 0)
		log_warn("start", "running as root: set user = in [global] to "
		    "drop root once the ports are bound");

	for (i = 0; i < m->nws; i++)
		if (worker_start(m->ws[i]) < 0) {
			log_err("start", "cannot start worker %u", i);
			exit(EXIT_STARTUP);
		}
	if ((m->reloader = reloader_new(m->loop, cfg, m->ls,
	    cfg->nlisteners, m->ticket)) == NULL) {
		log_err("start", "cannot start the certificate reloader");
		exit(EXIT_STARTUP);
	}
	if (cfg->has_metrics && start_metrics(m) < 0)
		exit(EXIT_STARTUP);

	for (j = 0; j < cfg->nlisteners; j++) {
		const struct config_listener *l = &cfg->listeners[j];

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
	log_info("ready", "mailtlsd %s: %u worker(s), %zu listener(s)",
	    MAILTLSD_VERSION, m->nws, cfg->nlisteners);
	uv_run(m->loop, UV_RUN_DEFAULT);
	for (i = 0; i < m->nws; i++)
		worker_join(m->ws[i]);
	m->nws = 0;
	(void)uv_loop_close(m->loop);
	log_info("shutdown", "stopped");
	rc = 0;
out:
	free(fds);
	return (rc);
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
	struct passwd *pw;
	const char *path = NULL;
	int ch, check = 0, rc;

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
			return (0);
		case 'h':
			usage(stdout);
			return (0);
		default:
			usage(stderr);
			return (EXIT_CONFIG);
		}
	}
	if (path == NULL || optind != argc) {
		usage(stderr);
		return (EXIT_CONFIG);
	}
	signal(SIGPIPE, SIG_IGN);
	/* Before anything uses libuv's threadpool, which reads it once. */
	backend_threadpool_setup();
	memset(&m, 0, sizeof(m));
	if ((m.cfg = config_load(path, stderr)) == NULL)
		return (EXIT_CONFIG);
	log_setup(m.cfg->log_level, m.cfg->log_format);
	if (m.cfg->user != NULL && (pw = getpwnam(m.cfg->user)) != NULL)
		certs_key_group(pw->pw_gid);
	if ((m.ticket = ticket_new(m.cfg, stderr)) == NULL) {
		rc = check ? EXIT_CONFIG : EXIT_STARTUP;
		goto out;
	}
	if (setup_listeners(&m, stderr) < 0) {
		rc = check ? EXIT_CONFIG : EXIT_STARTUP;
		goto out;
	}
	if (check) {
		/* Not an error: a service may come up after us. */
		(void)backend_check(m.cfg, stderr);
		printf("%s: configuration and certificates OK\n", path);
		rc = 0;
		goto out;
	}
	rc = run(&m);
out:
	teardown_listeners(&m);
	ticket_free(m.ticket);
	free(m.ws);
	metrics_free(m.metrics);
	free(m.lnames);
	config_free(m.cfg);
	return (rc);
}
