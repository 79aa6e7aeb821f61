/* threadpool.h - a fixed pool of compute threads reused for every op of a forward pass.
 *
 * sp_pool_for() runs fn(arg, unit, ith) for unit = 0 .. n_units-1, spread dynamically over the
 * threads (the caller is thread 0 and takes units too), and returns when every unit has finished.
 * Units are claimed one at a time, so a worker the OS has not scheduled yet never holds up the
 * others: on a busy machine the caller simply runs the units itself. Threads are created once in
 * sp_pool_new(); a dispatch costs no allocation and no thread creation. Idle workers spin briefly
 * (a decode step issues ~150 short jobs) and then sleep on a condition variable.
 * `ith` identifies the running thread (0 .. n_threads-1) for per-thread scratch: one thread runs one
 * unit at a time. A pool is driven by one caller thread at a time (not re-entrant).
 */
#ifndef SP_THREADPOOL_H
#define SP_THREADPOOL_H

typedef struct sp_pool sp_pool_t;

typedef void (*sp_pool_fn)(void *arg, int unit, int ith);

/* Create a pool of n_threads (1 .. 1024; the caller counts as one, so n_threads-1 workers are
 * started). Returns NULL on failure (sp_last_error() says why). */
sp_pool_t *sp_pool_new(int n_threads);
/* Stop and join the workers. Accepts NULL. */
void sp_pool_free(sp_pool_t *p);
int sp_pool_size(const sp_pool_t *p);
/* Run units 0 .. n_units-1 and wait for all. p == NULL runs them inline on the caller. */
void sp_pool_for(sp_pool_t *p, int n_units, sp_pool_fn fn, void *arg);

#endif
