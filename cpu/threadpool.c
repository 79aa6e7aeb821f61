/* threadpool.c - fixed pthread pool with dynamically claimed work units (see threadpool.h).
 *
 * DESIGN: `ticket` packs (generation << 32 | next unit). A job is published by first closing the
 * ticket (new generation, next = UINT32_MAX: nothing claimable), then writing fn/arg/n_units, then
 * opening it (next = 0). A thread claims a unit with a compare-and-swap on the whole ticket after
 * reading n_units; since ticket values never repeat, a successful CAS proves no newer job was
 * published between its read of the ticket and the claim, so the fn/arg/n_units it read belong to
 * the claimed job. The caller returns only when `done` reaches n_units, so the job's arguments stay
 * valid while any claimed unit runs. Workers watch `gen` (spin, then sleep on `cv`); the caller
 * broadcasts `cv` under `mu` after each publish and workers re-check `gen` under `mu` before
 * sleeping, so no wake-up is lost.
 */
#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

#include "sp_error.h"

enum { SPIN_ROUNDS = 1 << 15 };

struct sp_pool {
    int n;                          /* threads including the caller */
    pthread_t *tid;                 /* [n-1] workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t ticket;        /* gen << 32 | next unit */
    atomic_uint gen;                /* generation of the latest job (wake-up signal) */
    atomic_int done;                /* units finished in the current job */
    atomic_int quit;
    _Atomic(sp_pool_fn) fn;
    _Atomic(void *) arg;
    atomic_int n_units;
};

typedef struct worker_arg {
    sp_pool_t *p;
    int ith;
} worker_arg;

/* Claim and run units of generation g until none is left. */
static void run_units(sp_pool_t *p, uint32_t g, int ith)
{
    for (;;) {
        uint64_t t = atomic_load(&p->ticket);
        if ((uint32_t)(t >> 32) != g)
            return;
        uint32_t u = (uint32_t)t;
        sp_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&p->arg, memory_order_relaxed);
        int n = atomic_load_explicit(&p->n_units, memory_order_relaxed);
        if (u >= (uint32_t)n)
            return;
        if (!atomic_compare_exchange_weak(&p->ticket, &t, t + 1))
            continue;
        fn(arg, (int)u, ith);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker_main(void *varg)
{
    sp_pool_t *p = ((worker_arg *)varg)->p;
    int ith = ((worker_arg *)varg)->ith;
    free(varg);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
            if (++spins < SPIN_ROUNDS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
                   !atomic_load_explicit(&p->quit, memory_order_relaxed))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load_explicit(&p->quit, memory_order_relaxed))
            return NULL;
        seen = g;
        run_units(p, g, ith);
    }
}

static void stop_workers(sp_pool_t *p, int started)
{
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++)
        pthread_join(p->tid[i], NULL);
}

sp_pool_t *sp_pool_new(int n_threads)
{
    if (n_threads < 1 || n_threads > 1024) {
        sp_error(EINVAL, "thread pool: n_threads=%d out of range [1, 1024]", n_threads);
        return NULL;
    }
    sp_pool_t *p = calloc(1, sizeof(*p));
    if (!p) {
        sp_error(ENOMEM, "thread pool: out of memory");
        return NULL;
    }
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->ticket, (uint64_t)UINT32_MAX);
    int started = 0;
    if (n_threads > 1) {
        p->tid = calloc((size_t)n_threads - 1, sizeof(pthread_t));
        if (!p->tid) {
            sp_error(ENOMEM, "thread pool: out of memory");
            goto fail;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof(*wa));
            if (!wa) {
                sp_error(ENOMEM, "thread pool: out of memory");
                goto fail;
            }
            wa->p = p;
            wa->ith = i;
            int rc = pthread_create(&p->tid[i - 1], NULL, worker_main, wa);
            if (rc != 0) {
                free(wa);
                sp_error(rc, "thread pool: pthread_create failed for thread %d: %s", i, strerror(rc));
                goto fail;
            }
            started++;
        }
    }
    return p;

fail:
    stop_workers(p, started);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->tid);
    free(p);
    return NULL;
}

void sp_pool_free(sp_pool_t *p)
{
    if (!p)
        return;
    stop_workers(p, p->n - 1);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->tid);
    free(p);
}

int sp_pool_size(const sp_pool_t *p)
{
    return p ? p->n : 1;
}

void sp_pool_for(sp_pool_t *p, int n_units, sp_pool_fn fn, void *arg)
{
    if (n_units <= 0)
        return;
    if (!p || p->n == 1 || n_units == 1) {
        for (int u = 0; u < n_units; u++)
            fn(arg, u, 0);
        return;
    }
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    atomic_store(&p->ticket, ((uint64_t)g << 32) | UINT32_MAX);       /* close */
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->arg, arg, memory_order_relaxed);
    atomic_store_explicit(&p->n_units, n_units, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store(&p->ticket, (uint64_t)g << 32);                      /* open */
    atomic_store_explicit(&p->gen, g, memory_order_release);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_units(p, g, 0);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < n_units) {
        if (++spins < 4096)
            _mm_pause();
        else
            sched_yield();
    }
}
