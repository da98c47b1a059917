/*
 * Unit tests for backend: the pool's choice of candidate (failover order,
 * round-robin, health marks, each candidate once per session, all down ->
 * all tried), address changes from a lookup, and the metrics text.
 */
#include <sys/socket.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "config.h"

/* A listener with the given backend lines. */
static struct config_listener *
listener(const char *name, enum config_balance bal, const char *const *be,
    size_t n)
{
	struct config_listener *l;
	size_t i;

	l = calloc(1, sizeof(*l));
	assert_non_null(l);
	l->name = strdup(name);
	l->backends = calloc(n, sizeof(*l->backends));
	assert_non_null(l->backends);
	for (i = 0; i < n; i++) {
		l->backends[i].line = (int)i + 1;
		assert_null(config_parse_backend(be[i], &l->backends[i]));
	}
	l->nbackends = n;
	l->backend_balance = bal;
	l->backend_resolve_ms = 30000;
	l->connect_timeout_ms = 5000;
	return (l);
}

static void
listener_free(struct config_listener *l)
{

	free(l->name);
	free(l->backends);
	free(l);
}

/* Pick for ${t}; return the address text, or NULL when none is left. */
static const char *
pick(struct backend_pool *p, struct backend_try *t)
{
	struct backend_target out;
	char why[160];

	if (backend_pick(p, t, &out, why, sizeof(why)) != 0)
		return (NULL);
	assert_true(out.sslen > 0);
	return (t->addr);
}

/* A new session's first pick, reported as ${ok}. */
static char *
session(struct backend_pool *p, int ok)
{
	struct backend_try t;
	const char *a;
	char *r;

	memset(&t, 0, sizeof(t));
	a = pick(p, &t);
	assert_non_null(a);
	r = strdup(a);
	backend_report(p, &t, ok);
	return (r);
}

static void
test_failover_order_and_health(void **state)
{
	static const char *const be[] = {
		"127.0.0.1:1001", "127.0.0.1:1002", "[::1]:1003"
	};
	struct config_listener *l;
	struct backend_pool *p;
	struct backend_try t;
	char *a;

	(void)state;
	l = listener("f", CONFIG_BALANCE_FAILOVER, be, 3);
	assert_non_null(p = backend_pool_new(l));

	/* Healthy: every session goes to the first, in file order. */
	a = session(p, 1);
	assert_string_equal(a, "127.0.0.1:1001");
	free(a);
	a = session(p, 1);
	assert_string_equal(a, "127.0.0.1:1001");
	free(a);

	/* One session: each candidate once, in order, then none left. */
	memset(&t, 0, sizeof(t));
	assert_string_equal(pick(p, &t), "127.0.0.1:1001");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "127.0.0.1:1002");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "[::1]:1003");
	backend_report(p, &t, 0);
	assert_null(pick(p, &t));

	/*
	 * Every candidate is down now: a new session still tries them all,
	 * in order (a down mark is a hint, not a verdict).
	 */
	memset(&t, 0, sizeof(t));
	assert_string_equal(pick(p, &t), "127.0.0.1:1001");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "127.0.0.1:1002");
	backend_report(p, &t, 1);

	/* 1002 works again: it is first, the others are skipped. */
	a = session(p, 1);
	assert_string_equal(a, "127.0.0.1:1002");
	free(a);

	/* A down candidate not yet tried comes after the healthy ones. */
	memset(&t, 0, sizeof(t));
	assert_string_equal(pick(p, &t), "127.0.0.1:1002");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "127.0.0.1:1001");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "[::1]:1003");
	backend_report(p, &t, 1);

	/* Ten seconds on, the marks are gone: file order again. */
	backend_clock_advance(BACKEND_DOWN_MS + 1);
	a = session(p, 1);
	assert_string_equal(a, "127.0.0.1:1001");
	free(a);

	backend_pool_free(p);
	listener_free(l);
}

static void
test_roundrobin(void **state)
{
	static const char *const be[] = {
		"127.0.0.1:2001", "127.0.0.1:2002", "127.0.0.1:2003"
	};
	struct config_listener *l;
	struct backend_pool *p;
	int seen[3] = { 0 }, i;
	char *a;

	(void)state;
	l = listener("rr", CONFIG_BALANCE_ROUNDROBIN, be, 3);
	assert_non_null(p = backend_pool_new(l));
	for (i = 0; i < 6; i++) {
		a = session(p, 1);
		seen[a[strlen(a) - 1] - '1']++;
		free(a);
	}
	/* Spread evenly. */
	assert_int_equal(seen[0], 2);
	assert_int_equal(seen[1], 2);
	assert_int_equal(seen[2], 2);

	/* A failed one is skipped while the others are up. */
	{
		struct backend_try t;

		memset(&t, 0, sizeof(t));
		do {
			assert_non_null(pick(p, &t));
			if (strcmp(t.addr, "127.0.0.1:2002") == 0) {
				backend_report(p, &t, 0);
				break;
			}
			backend_report(p, &t, 1);
			memset(&t, 0, sizeof(t));
		} while (1);
	}
	for (i = 0; i < 6; i++) {
		a = session(p, 1);
		assert_string_not_equal(a, "127.0.0.1:2002");
		free(a);
	}
	backend_pool_free(p);
	listener_free(l);
}

static void
ai_fill(struct addrinfo *ai, struct sockaddr_in *sin, const char *ip,
    uint16_t port, struct addrinfo *next)
{

	memset(ai, 0, sizeof(*ai));
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
	ai->ai_family = AF_INET;
	ai->ai_socktype = SOCK_STREAM;
	ai->ai_addr = (struct sockaddr *)sin;
	ai->ai_addrlen = sizeof(*sin);
	ai->ai_next = next;
}

static void
test_names(void **state)
{
	static const char *const be[] = { "relay.test:25", "192.0.2.9:25" };
	struct config_listener *l;
	struct backend_pool *p;
	struct backend_try t;
	struct backend_target out;
	struct addrinfo a1, a2;
	struct sockaddr_in s1, s2;
	char why[160], *a;

	(void)state;
	l = listener("n", CONFIG_BALANCE_FAILOVER, be, 2);
	assert_non_null(p = backend_pool_new(l));

	/* Not looked up yet: only the numeric backend is a candidate. */
	a = session(p, 1);
	assert_string_equal(a, "192.0.2.9:25");
	free(a);

	/* The name's two addresses come first (file order of the lines). */
	ai_fill(&a2, &s2, "10.0.0.2", 25, NULL);
	ai_fill(&a1, &s1, "10.0.0.1", 25, &a2);
	assert_int_equal(backend_pool_update(p, 0, &a1), 1);
	assert_int_equal(backend_pool_update(p, 0, &a1), 0);
	memset(&t, 0, sizeof(t));
	assert_string_equal(pick(p, &t), "10.0.0.1:25");
	assert_string_equal(t.host, "relay.test");
	backend_report(p, &t, 0);
	assert_string_equal(pick(p, &t), "10.0.0.2:25");
	backend_report(p, &t, 1);

	/*
	 * The name moves: 10.0.0.1 goes, 10.0.0.3 comes; 10.0.0.2 keeps its
	 * place.  The new address is first in the answer, so first in order.
	 */
	ai_fill(&a2, &s2, "10.0.0.2", 25, NULL);
	ai_fill(&a1, &s1, "10.0.0.3", 25, &a2);
	assert_int_equal(backend_pool_update(p, 0, &a1), 1);
	a = session(p, 1);
	assert_string_equal(a, "10.0.0.3:25");
	free(a);

	/* A name that stops resolving leaves the numeric backend. */
	assert_int_equal(backend_pool_update(p, 0, NULL), 1);
	a = session(p, 1);
	assert_string_equal(a, "192.0.2.9:25");
	free(a);
	backend_pool_free(p);
	listener_free(l);

	/* Only a name, never resolved: no candidate, a reason, no spin. */
	l = listener("n2", CONFIG_BALANCE_FAILOVER, be, 1);
	assert_non_null(p = backend_pool_new(l));
	memset(&t, 0, sizeof(t));
	/* The first failure is worth a warning, the next ones not yet. */
	assert_int_equal(backend_pick(p, &t, &out, why, sizeof(why)), 1);
	assert_non_null(strstr(why, "relay.test:25"));
	assert_int_equal(backend_pick(p, &t, &out, why, sizeof(why)), -1);
	backend_clock_advance(10001);
	assert_int_equal(backend_pick(p, &t, &out, why, sizeof(why)), 1);
	backend_pool_free(p);
	listener_free(l);
}

static void
test_metrics_text(void **state)
{
	static const char *const be[] = { "127.0.0.1:3001", "unix:/run/x" };
	struct config_listener *l;
	struct backend_pool *p;
	char *a, *text;
	size_t len;

	(void)state;
	l = listener("m", CONFIG_BALANCE_FAILOVER, be, 2);
	assert_non_null(p = backend_pool_new(l));
	a = session(p, 0);
	free(a);
	assert_non_null(text = backend_metrics_render(&len));
	assert_int_equal(strlen(text), len);
	assert_non_null(strstr(text, "# TYPE mailtlsd_backend_up gauge\n"));
	assert_non_null(strstr(text, "mailtlsd_backend_up{listener=\"m\","
	    "backend=\"127.0.0.1:3001\",name=\"127.0.0.1:3001\"} 0\n"));
	assert_non_null(strstr(text, "mailtlsd_backend_up{listener=\"m\","
	    "backend=\"unix:/run/x\",name=\"unix:/run/x\"} 1\n"));
	assert_non_null(strstr(text, "mailtlsd_backend_attempts_total{"
	    "listener=\"m\",backend=\"127.0.0.1:3001\",name=\"127.0.0.1:3001\"} "
	    "1\n"));
	assert_non_null(strstr(text, "mailtlsd_backend_failures_total{"
	    "listener=\"m\",backend=\"127.0.0.1:3001\",name=\"127.0.0.1:3001\"} "
	    "1\n"));
	free(text);
	backend_pool_free(p);
	listener_free(l);
	/* No pool: nothing to say. */
	assert_null(backend_metrics_render(&len));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_failover_order_and_health),
		cmocka_unit_test(test_roundrobin),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_metrics_text),
	};

	return (cmocka_run_group_tests(tests, NULL, NULL));
}
