#include <assert.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/*
 * Each worker owns one block of cells, nlisteners * METRIC_NMETRICS of
 * them, and only its own thread writes there.  Blocks start on a cache-line
 * boundary and are padded to a whole number of lines, so two workers never
 * write to the same line (no false sharing) and no lock is needed: a cell is
 * a relaxed atomic only so that the scrape, on another thread, reads a whole
 * value.
 */
#define CACHE_LINE	64

struct metrics {
	size_t			 nworkers;
	size_t			 nlisteners;
	size_t			 stride;	/* cells per worker block */
	_Atomic int64_t		*cells;
};

/**
 * metrics_new(nworkers, nlisteners):
 * Make the counters, all zero.  Return them, or NULL.
 */
struct metrics *
metrics_new(size_t nworkers, size_t nlisteners)
{
	struct metrics *m;
	size_t per_line = CACHE_LINE / sizeof(_Atomic int64_t);
	size_t ncells, i;

	if (nworkers == 0 ||
	    nlisteners > SIZE_MAX / METRIC_NMETRICS / nworkers / CACHE_LINE)
		goto err0;
	if ((m = calloc(1, sizeof(*m))) == NULL)
		goto err0;
	m->nworkers = nworkers;
	m->nlisteners = nlisteners;
	m->stride = nlisteners * METRIC_NMETRICS;
	m->stride = (m->stride + per_line - 1) / per_line * per_line;
	ncells = m->stride * nworkers;
	/* aligned_alloc wants a size that is a multiple of the alignment. */
	if ((m->cells = aligned_alloc(CACHE_LINE, ncells > 0 ?
	    ncells * sizeof(*m->cells) : CACHE_LINE)) == NULL)
		goto err1;
	for (i = 0; i < ncells; i++)
		atomic_init(&m->cells[i], 0);
	return (m);
err1:
	free(m);
err0:
	return (NULL);
}

/**
 * metrics_free(m):
 * Free ${m}; NULL is a no-op.
 */
void
metrics_free(struct metrics *m)
{

	if (m == NULL)
		return;
	free(m->cells);
	free(m);
}

/**
 * metrics_add(m, worker, listener, metric, n):
 * Add ${n} (may be negative for the gauge) to a counter.  Only worker
 * ${worker}'s thread may call this for that worker; no lock is taken.
 * ${m} may be NULL (no metrics): a no-op.
 */
void
metrics_add(struct metrics *m, size_t w, size_t l, enum metric k, int64_t n)
{
	_Atomic int64_t *cell;

	if (m == NULL)
		return;
	assert(w < m->nworkers && l < m->nlisteners && k < METRIC_NMETRICS);
	cell = &m->cells[w * m->stride + l * METRIC_NMETRICS + k];
	/*
	 * Relaxed: nothing else is published through a counter.  The line is
	 * this worker's alone, so the add never contends; it stays an atomic
	 * add rather than a load and a store so that a call from the wrong
	 * thread would still lose nothing.
	 */
	atomic_fetch_add_explicit(cell, n, memory_order_relaxed);
}

/**
 * metrics_get(m, listener, metric):
 * The sum over all workers (for the endpoint and tests).
 */
int64_t
metrics_get(const struct metrics *m, size_t l, enum metric k)
{
	int64_t sum = 0;
	size_t w;

	if (m == NULL)
		return (0);
	assert(l < m->nlisteners && k < METRIC_NMETRICS);
	for (w = 0; w < m->nworkers; w++)
		sum += atomic_load_explicit(
		    &m->cells[w * m->stride + l * METRIC_NMETRICS + k],
		    memory_order_relaxed);
	return (sum);
}

/**
 * metrics_nworkers(m), metrics_nlisteners(m):
 * The sizes ${m} was made with.
 */
size_t
metrics_nworkers(const struct metrics *m)
{

	return (m->nworkers);
}

size_t
metrics_nlisteners(const struct metrics *m)
{

	return (m->nlisteners);
}
