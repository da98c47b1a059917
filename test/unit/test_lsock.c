/*
 * lsock and listener sets: the listening sockets kept across reloads, a
 * failed plan that leaves the table as it was, the hand-over list of an
 * upgrade, sockets inherited through LISTEN_FDS matched by address and by
 * name, and the reference counting of listener sets.
 */
#include <sys/socket.h>
#include <sys/stat.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "listener.h"
#include "lsock.h"
#include "worker.h"

static char	tmpdir[PATH_MAX];

/* A port on 127.0.0.1 that nobody listens on right now. */
static unsigned
free_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd;

	assert_true((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return (ntohs(sin.sin_port));
}

/* A socket of our own listening on ${port}, without SO_REUSEPORT. */
static int
hold_port(unsigned port)
{
	struct sockaddr_in sin;
	int fd;

	assert_true((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fd, 8), 0);
	return (fd);
}

static int
accepts(unsigned port)
{
	struct sockaddr_in sin;
	int fd, rc;

	assert_true((fd = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	rc = connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	close(fd);
	return (rc == 0);
}

/*
 * A set of listeners "a" on ${pa} and, when ${pb} is not 0, "b" on ${pb}:
 * plaintext in, TLS toward the backend (no certificate files needed).
 */
static struct listener_set *
make_set(unsigned pa, unsigned pb)
{
	char path[PATH_MAX + 32];
	struct config *cfg;
	struct listener_set *s;
	FILE *f;

	snprintf(path, sizeof(path), "%s/l.conf", tmpdir);
	assert_non_null(f = fopen(path, "w"));
	fprintf(f, "[global]\nworkers = 2\n[a]\nlisten = 127.0.0.1:%u\n"
	    "protocol = none\nclient_tls = none\nbackend = 127.0.0.1:9\n"
	    "backend_tls = implicit\nbackend_verify = no\n", pa);
	if (pb != 0)
		fprintf(f, "[b]\nlisten = 127.0.0.1:%u\nprotocol = none\n"
		    "client_tls = none\nbackend = 127.0.0.1:9\n"
		    "backend_tls = implicit\nbackend_verify = no\n", pb);
	fclose(f);
	assert_non_null(cfg = config_load(path, stderr));
	assert_non_null(s = listener_set_new(cfg, NULL, stderr));
	return (s);
}

static void
close_binds(struct worker_bind *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		close(b[i].fd);
	free(b);
}

static void
test_set_refcount(void **state)
{
	struct listener_set *s = make_set(free_port(), free_port());

	(void)state;
	assert_int_equal(s->n, 2);
	assert_ptr_equal(s->ls[1].set, s);
	assert_ptr_equal(listener_find(s, &s->ls[1].conf->listen), &s->ls[1]);
	/* A session's reference keeps it after the owner lets go (ASan and
	 * LeakSanitizer tell a premature free or a leak). */
	listener_set_ref(s);
	listener_set_unref(s);
	assert_string_equal(s->ls[0].conf->name, "a");
	listener_set_unref(s);
	listener_set_unref(NULL);
}

/*
 * A reload keeps the socket of an unchanged address, binds a new one, and
 * closes the one no listener has any more; a plan that cannot bind undoes
 * itself.
 */
static void
test_plan_keep_add_remove_abort(void **state)
{
	unsigned pa = free_port(), pb = free_port(), pc = free_port();
	unsigned pd = free_port();
	struct lsock_table *t;
	struct listener_set *s1, *s2, *s3;
	struct worker_bind *b0, *b1, *b;
	size_t n0, n1, n;
	int *fds, held, nfds;
	char *names;

	(void)state;
	assert_non_null(t = lsock_table_new(2));
	assert_int_equal(lsock_inherit(t), 0);
	s1 = make_set(pa, pb);
	assert_int_equal(lsock_plan(t, s1, stderr), 0);
	assert_int_equal(lsock_binds(t, s1, 0, &b0, &n0), 0);
	assert_int_equal(lsock_binds(t, s1, 1, &b1, &n1), 0);
	/* One SO_REUSEPORT socket per worker and address. */
	assert_int_equal(n0, 2);
	assert_int_equal(n1, 2);
	assert_int_equal(lsock_commit(t), 0);
	assert_true(accepts(pa));
	assert_true(accepts(pb));
	assert_int_equal(nfds = lsock_export(t, &fds, &names), 4);
	free(fds);
	/* The table lists the newest socket first. */
	assert_string_equal(names, "b:b:a:a");
	free(names);

	/* Reload: a kept, b removed, c added.  Worker 0's copy of a's
	 * socket is the one it already has. */
	s2 = make_set(pa, pc);
	assert_int_equal(lsock_plan(t, s2, stderr), 0);
	assert_int_equal(lsock_binds(t, s2, 0, &b, &n), 0);
	assert_int_equal(n, 2);
	assert_true(b[0].fd == b0[0].fd || b[0].fd == b0[1].fd);
	assert_ptr_equal(b[0].l, &s2->ls[0]);
	assert_ptr_equal(b[1].l, &s2->ls[1]);
	free(b);
	/* b's two master copies. */
	assert_int_equal(lsock_commit(t), 2);
	/* The workers' copies of b still hold it open until they let go. */
	close_binds(b0, n0);
	close_binds(b1, n1);
	assert_false(accepts(pb));
	assert_true(accepts(pa));
	assert_true(accepts(pc));

	/* Somebody else holds the address of the second new listener:
	 * nothing changes, and the sockets bound for the first one in the
	 * same attempt are closed again. */
	held = hold_port(pb);
	s3 = make_set(pd, pb);
	assert_int_equal(lsock_plan(t, s3, stderr), -1);
	close(held);
	assert_false(accepts(pd));
	assert_true(accepts(pa));
	assert_true(accepts(pc));
	assert_int_equal(lsock_export(t, &fds, &names), 4);
	free(fds);
	assert_string_equal(names, "b:b:a:a");	/* c's sockets kept b's name */
	free(names);

	lsock_close_all(t);
	lsock_table_free(t);
	listener_set_unref(s1);
	listener_set_unref(s2);
	listener_set_unref(s3);
}

static int
high(int fd)
{
	int h = fcntl(fd, F_DUPFD, 20);

	close(fd);
	return (h);
}

/*
 * In a child (its descriptors 3 to 5 are its own to overwrite): sockets
 * passed as LISTEN_FDS are matched by address, then by name, bind nothing,
 * and one no listener wants is closed.
 */
static int
inherit_child(unsigned pa, unsigned pb, unsigned pother)
{
	struct lsock_table *t;
	struct listener_set *s;
	struct worker_bind *b;
	size_t n;
	char pid[32];
	int fa, fb, fx;

	/* Out of the way of 3, 4 and 5 first, then into place. */
	fa = high(hold_port(pa));
	fb = high(hold_port(pb));
	fx = high(hold_port(free_port()));
	if (dup2(fa, 3) < 0 || dup2(fb, 4) < 0 || dup2(fx, 5) < 0)
		return (10);
	close(fa);
	close(fb);
	close(fx);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", "3", 1);
	/* fd 4 is on pb, but named "b": the listener b is on pother. */
	setenv("LISTEN_FDNAMES", "x:b:unused", 1);
	if ((t = lsock_table_new(2)) == NULL || lsock_inherit(t) != 3)
		return (11);
	if (getenv("LISTEN_FDS") != NULL || getenv("LISTEN_PID") != NULL)
		return (12);
	s = make_set(pa, pother);
	if (lsock_plan(t, s, stderr) < 0)
		return (13);
	/* Both workers watch copies of the one socket of each listener. */
	if (lsock_binds(t, s, 1, &b, &n) < 0 || n != 2)
		return (14);
	close_binds(b, n);
	if (lsock_binds(t, s, 0, &b, &n) < 0 || n != 2)
		return (14);
	close_binds(b, n);
	/* The unused descriptor 5 is closed. */
	if (lsock_commit(t) != 1 || fcntl(5, F_GETFD) != -1)
		return (15);
	/* Nothing was bound on pother: b serves on the inherited pb. */
	if (accepts(pother) || !accepts(pb) || !accepts(pa))
		return (16);
	lsock_close_all(t);
	lsock_table_free(t);
	listener_set_unref(s);
	return (0);
}

static void
test_inherit(void **state)
{
	unsigned pa = free_port(), pb = free_port(), pother = free_port();
	pid_t pid;
	int st;

	(void)state;
	assert_true((pid = fork()) >= 0);
	if (pid == 0)
		_exit(inherit_child(pa, pb, pother));
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* LISTEN_PID of another process: the variables are not for us. */
static void
test_inherit_other_pid(void **state)
{
	struct lsock_table *t;

	(void)state;
	setenv("LISTEN_PID", "1", 1);
	setenv("LISTEN_FDS", "2", 1);
	assert_non_null(t = lsock_table_new(1));
	assert_int_equal(lsock_inherit(t), 0);
	assert_null(getenv("LISTEN_FDS"));
	/* Our own descriptors 3 and 4, if any, were left alone. */
	lsock_table_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_set_refcount),
		cmocka_unit_test(test_plan_keep_add_remove_abort),
		cmocka_unit_test(test_inherit),
		cmocka_unit_test(test_inherit_other_pid),
	};
	int rc;

	snprintf(tmpdir, sizeof(tmpdir), "/tmp/mtd-lsock-XXXXXX");
	if (mkdtemp(tmpdir) == NULL)
		return (1);
	rc = cmocka_run_group_tests(tests, NULL, NULL);
	{
		char path[PATH_MAX + 32];

		snprintf(path, sizeof(path), "%s/l.conf", tmpdir);
		unlink(path);
		rmdir(tmpdir);
	}
	return (rc);
}
