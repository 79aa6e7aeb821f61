/* huge_map.c - 2 MiB-aligned anonymous mappings advised for transparent huge pages (see huge_map.h).
 * DESIGN: over-map by one huge page, then unmap the unaligned head and the tail, so the caller
 * owns exactly the aligned range and frees it with one munmap. */
#include "huge_map.h"
#include "sp_alloc.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

size_t sp_huge_round(size_t size)
{
    return (size + SP_HUGE_PAGE - 1) / SP_HUGE_PAGE * SP_HUGE_PAGE;
}

void *sp_huge_map(size_t size, size_t *mapped)
{
    *mapped = 0;
    if (size == 0 || size > SIZE_MAX - 2 * SP_HUGE_PAGE) {
        errno = EINVAL;
        return NULL;
    }
    size_t want = sp_huge_round(size), len = want + SP_HUGE_PAGE;
    if (sp_alloc_fault())
        return NULL;
    uint8_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)map + SP_HUGE_PAGE - 1) & ~(uintptr_t)(SP_HUGE_PAGE - 1));
    size_t head = (size_t)(p - map), tail = len - head - want;
    if (head)
        munmap(map, head);
    if (tail)
        munmap(p + want, tail);
#ifdef MADV_HUGEPAGE
    madvise(p, want, MADV_HUGEPAGE); /* advice only: may fail where THP is off */
#endif
    memset(p, 0, want); /* fault it in now, not inside the first timed request */
    *mapped = want;
    return p;
}

void sp_huge_unmap(void *ptr, size_t mapped)
{
    if (ptr)
        munmap(ptr, mapped);
}
