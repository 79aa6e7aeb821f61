/* sp_alloc.c - allocation calls with a fault-injection hook (see sp_alloc.h). */
#include "sp_alloc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

static atomic_long fault_nth;   /* 0: not armed */
static atomic_long seen;        /* allocations counted since armed */
static atomic_bool persistent;

bool sp_alloc_fault(void)
{
    long n = atomic_load_explicit(&fault_nth, memory_order_relaxed);
    if (n == 0)
        return false;
    long k = atomic_fetch_add(&seen, 1) + 1;
    if (atomic_load(&persistent) ? k >= n : k == n) {
        errno = ENOMEM;
        return true;
    }
    return false;
}

void sp_alloc_fault_set(long n)
{
    atomic_store(&fault_nth, 0);
    atomic_store(&seen, 0);
    atomic_store(&persistent, n < 0);
    atomic_store(&fault_nth, n < 0 ? -n : n);
}

long sp_alloc_fault_count(void) { return atomic_load(&seen); }

void *sp_malloc(size_t n) { return sp_alloc_fault() ? NULL : malloc(n); }
void *sp_calloc(size_t count, size_t size) { return sp_alloc_fault() ? NULL : calloc(count, size); }
void *sp_realloc(void *p, size_t n) { return sp_alloc_fault() ? NULL : realloc(p, n); }

void *sp_aligned_alloc(size_t align, size_t n)
{
    if (sp_alloc_fault())
        return NULL;
    return aligned_alloc(align, (n + align - 1) / align * align);
}
