/* threadpool.c - fixed pthread pool (see threadpool.h).
 *
 * DESIGN: a job is published by writing fn/arg and then bumping `gen` (release). Workers watch
 * `gen` (acquire): spinning with pause for a bounded number of rounds, then sleeping on `cv`. The
 * caller broadcasts `cv` under `mu` after every bump; a worker re-checks `gen` under `mu` before
 * waiting, so a wake-up cannot be lost. Completion is an atomic count the caller spins on (it yields
 * after a while: the machine may have fewer free cores than threads).
 */
#include "threadpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

#include "sp_error.h"

enum { SPIN_ROUNDS = 1 << 16 };

struct sp_pool {
    int n;                        /* threads including the caller */
    pthread_t *tid;               /* [n-1] workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;              /* job generation; bumped once per sp_pool_run */
    atomic_int done;              /* workers finished with the current generation */
    atomic_int quit;
    sp_pool_fn fn;
    void *arg;
};

typedef struct worker_arg {
    sp_pool_t *p;
    int ith;
} worker_arg;

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
        p->fn(p->arg, ith, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
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
    atomic_init(&p->gen, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->quit, 0);
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
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++)
        pthread_join(p->tid[i], NULL);
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
    atomic_store(&p->quit, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++)
        pthread_join(p->tid[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->tid);
    free(p);
}

int sp_pool_size(const sp_pool_t *p)
{
    return p ? p->n : 1;
}

void sp_pool_run(sp_pool_t *p, sp_pool_fn fn, void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < p->n - 1) {
        if (++spins < 4096)
            _mm_pause();
        else
            sched_yield();
    }
}
