/* gpu_harness.c - see gpu_harness.h. */
#include "gpu_harness.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_error.h"

enum { GUARD = 256, GUARD_BYTE = 0xA5 };

void *gh_stream;
bool gh_dead;

static const char *g_filter;
static int n_pass, n_fail, n_unsup;
static uint64_t rng_state;

int gh_begin(int argc, char **argv, uint64_t seed, sp_gpu_blas **blas)
{
    *blas = NULL;
    rng_state = seed;
    int nd = sp_gpu_device_count();
    if (nd <= 0) {
        printf("no CUDA device (%d): skipped\n", nd);
        return 77;
    }
    g_filter = argc > 1 ? argv[1] : NULL;
    char desc[256];
    if (sp_gpu_describe(0, desc, sizeof desc) || sp_gpu_set_device(0) || sp_gpu_stream_create(&gh_stream)) {
        fprintf(stderr, "device setup: %s\n", sp_last_error());
        return 1;
    }
    printf("device 0: %s\n", desc);
    *blas = sp_gpu_blas_create();
    if (!*blas) {
        fprintf(stderr, "cublas: %s\n", sp_last_error());
        sp_gpu_stream_destroy(gh_stream);
        gh_stream = NULL;
        return 1;
    }
    return 0;
}

int gh_end(sp_gpu_blas *blas)
{
    if (gh_dead)
        printf("CUDA context lost after an asynchronous error (%s): remaining cases not run\n", sp_last_error());
    printf("%d passed, %d failed, %d unsupported\n", n_pass, n_fail, n_unsup);
    sp_gpu_blas_free(blas);
    sp_gpu_stream_destroy(gh_stream);
    return n_fail || gh_dead ? 1 : 0;
}

bool gh_selected(const char *op) { return !g_filter || strstr(op, g_filter); }

void gh_report(const char *op, const char *shape, int rc, int64_t n_bad, const char *summary)
{
    if (rc == -ENOTSUP) {
        printf("%s %s: unsupported (%s)\n", op, shape, sp_last_error());
        n_unsup++;
    } else if (rc) {
        printf("%s %s: FAIL (error %d: %s)\n", op, shape, rc, rc == -1 ? "guard bytes overwritten" : sp_last_error());
        n_fail++;
    } else if (n_bad) {
        printf("%s %s: FAIL (%lld mismatches, %s)\n", op, shape, (long long)n_bad, summary);
        n_fail++;
    } else {
        printf("%s %s: ok (%s)\n", op, shape, summary);
        n_pass++;
    }
}

/* ---- random numbers ---- */

uint64_t gh_rng_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

float gh_rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)((gh_rng_u64() >> 40) * 0x1.0p-24); }

float gh_rng_normal(void)
{
    float u1 = gh_rng_uniform(1e-7f, 1.0f), u2 = gh_rng_uniform(0.0f, 1.0f);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ---- guarded device buffers ---- */

void *dptr(const dbuf *b) { return b->base ? b->base + GUARD : NULL; }

int dbuf_new(dbuf *b, size_t size, int fill)
{
    b->size = size;
    b->base = sp_gpu_alloc(size + 2 * GUARD);
    if (!b->base)
        return -ENOMEM;
    int rc = sp_gpu_memset(gh_stream, b->base, GUARD_BYTE, size + 2 * GUARD);
    if (!rc && size)
        rc = sp_gpu_memset(gh_stream, b->base + GUARD, fill, size);
    return rc;
}

int dbuf_upload(dbuf *b, const void *host, size_t size)
{
    int rc = dbuf_new(b, size, 0);
    if (!rc && size)
        rc = sp_gpu_memcpy_h2d(gh_stream, b->base + GUARD, host, size);
    return rc;
}

void dbuf_free(dbuf *b)
{
    sp_gpu_free(b->base);
    b->base = NULL;
}

int dbuf_download(const dbuf *b, void *host, const char *name)
{
    uint8_t *all = malloc(b->size + 2 * GUARD);
    if (!all)
        return -ENOMEM;
    int rc = sp_gpu_memcpy_d2h(gh_stream, all, b->base, b->size + 2 * GUARD);
    if (!rc)
        rc = sp_gpu_stream_sync(gh_stream);
    if (rc) {
        gh_dead = true;
        free(all);
        return rc;
    }
    for (size_t i = 0; i < GUARD; i++) {
        if (all[i] != GUARD_BYTE || all[GUARD + b->size + i] != GUARD_BYTE) {
            printf("    %s: guard byte %s the output overwritten (offset %zu)\n", name,
                   all[i] != GUARD_BYTE ? "before" : "after", i);
            free(all);
            return -1;
        }
    }
    if (host)
        memcpy(host, all + GUARD, b->size);
    free(all);
    return 0;
}
