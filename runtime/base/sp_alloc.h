/* sp_alloc.h - the allocation calls of the tier and model code, with a fault-injection hook in the
 * style of SQLite's malloc tests: arm it with sp_alloc_fault_set(n) and the n-th allocation from
 * then on fails (returns NULL with errno ENOMEM), so a test can walk n over a whole run and check
 * that every failure ends in a message, never a crash or a leak.
 *
 * sp_malloc/sp_calloc/sp_realloc/sp_aligned_alloc behave exactly like the libc calls when the hook
 * is not armed (one relaxed atomic load extra); free() releases what they return. Allocations that
 * do not go through malloc (mmap of arenas, host-pool and huge-page buffers) ask sp_alloc_fault()
 * first. Thread-safe: the counter is atomic, so allocations on worker threads count too.
 */
#ifndef SP_ALLOC_H
#define SP_ALLOC_H

#include <stdbool.h>
#include <stddef.h>

void *sp_malloc(size_t n);
void *sp_calloc(size_t count, size_t size);
void *sp_realloc(void *p, size_t n);
void *sp_aligned_alloc(size_t align, size_t n); /* n rounded up to a multiple of align */

/* True when this allocation must fail (counts it when the hook is armed). */
bool sp_alloc_fault(void);

/* Test only. n > 0: the n-th counted allocation from now fails, later ones succeed; n < 0: every
 * allocation from the |n|-th on fails; n = 0: off. Resets the count. */
void sp_alloc_fault_set(long n);
/* Allocations counted since the last sp_alloc_fault_set (arm with a huge n to only count). */
long sp_alloc_fault_count(void);

#endif
