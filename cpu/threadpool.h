/* threadpool.h - a fixed pool of compute threads reused for every op of a forward pass.
 *
 * sp_pool_run() hands one job to all n threads (the caller is thread 0) and returns when all have
 * finished it. Threads are created once in sp_pool_new(); a dispatch costs no allocation and no
 * thread creation. Idle workers spin briefly (a decode step issues hundreds of short jobs) and then
 * sleep on a condition variable, so an idle pool costs no CPU.
 * A pool is driven by one caller thread at a time (not re-entrant, not thread-safe).
 */
#ifndef SP_THREADPOOL_H
#define SP_THREADPOOL_H

typedef struct sp_pool sp_pool_t;

/* One job: fn(arg, ith, nth) is called once on each of the nth threads, ith in [0, nth). */
typedef void (*sp_pool_fn)(void *arg, int ith, int nth);

/* Create a pool of n_threads (>= 1; the caller counts as one, so n_threads-1 workers are started).
 * Returns NULL on failure (sp_last_error() says why). */
sp_pool_t *sp_pool_new(int n_threads);
/* Stop and join the workers. Accepts NULL. */
void sp_pool_free(sp_pool_t *p);
int sp_pool_size(const sp_pool_t *p);
/* Run fn on every thread and wait for all of them. With p == NULL, runs fn(arg, 0, 1) inline. */
void sp_pool_run(sp_pool_t *p, sp_pool_fn fn, void *arg);

#endif
