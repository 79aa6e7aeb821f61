/* alloc_counter.c - see alloc_counter.h.
 *
 * Normal builds interpose the C allocator for the whole process (malloc, calloc, realloc,
 * aligned_alloc, memalign, posix_memalign forward to glibc's internal entry points). Under
 * AddressSanitizer interposing would fight ASan's own interceptors (it aborts at start-up), so there
 * the sanitizer's malloc hook counts instead. */
#include "alloc_counter.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>

static atomic_int alloc_armed, alloc_count;

static void count_alloc(void)
{
    if (atomic_load_explicit(&alloc_armed, memory_order_relaxed))
        atomic_fetch_add(&alloc_count, 1);
}

void alloc_counter_arm(void)
{
    atomic_store(&alloc_count, 0);
    atomic_store(&alloc_armed, 1);
}

int alloc_counter_disarm(void)
{
    atomic_store(&alloc_armed, 0);
    return atomic_load(&alloc_count);
}

#if defined(__SANITIZE_ADDRESS__)
/* From the sanitizer runtime (sanitizer/allocator_interface.h, not installed with every compiler). */
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    count_alloc();
}
static void on_free(const volatile void *p) { (void)p; }
__attribute__((constructor)) static void install_alloc_hooks(void)
{
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
}
#else
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
void *malloc(size_t n) { count_alloc(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count_alloc(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count_alloc(); return __libc_realloc(p, n); }
void *aligned_alloc(size_t al, size_t n) { count_alloc(); return __libc_memalign(al, n); }
void *memalign(size_t al, size_t n) { count_alloc(); return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n)
{
    count_alloc();
    *out = __libc_memalign(al, n);
    return *out ? 0 : ENOMEM;
}
#endif
