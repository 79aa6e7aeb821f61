/* gpu_harness.h - what the table-driven GPU tests (gpu_test_backend_ops, gpu_test_kv_ops) share:
 * device set-up that skips with exit status 77 when there is no CUDA device, a case filter from
 * argv[1], a seeded random generator, device buffers with guard bytes around the payload, and the
 * per-case report line with the pass/fail/unsupported tally. Plain C, no Criterion (CUDA contexts
 * do not survive Criterion's fork); single-threaded. Link tests/support/gpu_harness.c. */
#ifndef SP_TEST_GPU_HARNESS_H
#define SP_TEST_GPU_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu.h"

enum { GH_MAX_PRINT = 5 };   /* mismatching elements printed per case */

/* The stream every case runs on (created by gh_begin). */
extern void *gh_stream;
/* Set when a sync failed: the CUDA context is unusable, the remaining cases must not run. */
extern bool gh_dead;

/* Start a test program: seed the generator, read the case filter (argv[1], optional), pick device
 * 0, create gh_stream and *blas, print the device. Returns 0 when the cases can run; otherwise
 * the status main should return: 77 without a CUDA device (ctest: skipped), 1 when set-up failed
 * (message on stderr; nothing is left to free). */
int gh_begin(int argc, char **argv, uint64_t seed, sp_gpu_blas **blas);

/* Finish: print the tally line "N passed, N failed, N unsupported" (after a note when gh_dead),
 * free blas and gh_stream. Returns main's status: 0 when every case passed or was unsupported. */
int gh_end(sp_gpu_blas *blas);

/* Whether the case family `op` passes the filter (a substring of op; no filter: all). */
bool gh_selected(const char *op);

/* Record and print one case: "<op> <shape>: unsupported (<last error>)" for rc == -ENOTSUP,
 * "FAIL (error <rc>: ...)" for another nonzero rc (-1: guard bytes overwritten), "FAIL (<n_bad>
 * mismatches, <summary>)" when n_bad > 0, else "ok (<summary>)". */
void gh_report(const char *op, const char *shape, int rc, int64_t n_bad, const char *summary);

/* splitmix64 from the seed given to gh_begin. */
uint64_t gh_rng_u64(void);
/* Uniform float in [lo, hi) (24 random bits). */
float gh_rng_uniform(float lo, float hi);
/* Standard normal float (Box-Muller). */
float gh_rng_normal(void);

/* A device buffer with GUARD bytes (0xA5) before and after the payload. */
typedef struct dbuf {
    uint8_t *base;   /* GUARD | payload | GUARD; NULL when not allocated */
    size_t size;     /* payload bytes */
} dbuf;

/* The payload's device address, NULL for an unallocated buffer. */
void *dptr(const dbuf *b);
/* Allocate a guarded buffer with the payload set to `fill` (0xFF: NaN for fp32 and fp16). Returns
 * 0 or a negative errno; b must be freed with dbuf_free either way. Asynchronous on gh_stream. */
int dbuf_new(dbuf *b, size_t size, int fill);
/* dbuf_new, then copy size bytes from host into the payload. */
int dbuf_upload(dbuf *b, const void *host, size_t size);
/* Free the buffer (an unallocated one too) and mark it unallocated. */
void dbuf_free(dbuf *b);
/* Sync gh_stream, copy the payload into host (unless NULL) and check both guards. Returns 0, -1
 * when a guard byte was overwritten (printed, naming `name`), or a CUDA error (gh_dead is set). */
int dbuf_download(const dbuf *b, void *host, const char *name);

#endif
