/* test_huge_map.c - huge-page mappings: 2 MiB aligned, rounded up, zeroed, writable to the last
 * byte, freed with one munmap; bad sizes refused. */
#include <criterion/criterion.h>

#include "huge_map.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

Test(huge_map, rounding)
{
    cr_assert_eq(sp_huge_round(1), SP_HUGE_PAGE);
    cr_assert_eq(sp_huge_round(SP_HUGE_PAGE), SP_HUGE_PAGE);
    cr_assert_eq(sp_huge_round(SP_HUGE_PAGE + 1), 2 * SP_HUGE_PAGE);
}

Test(huge_map, aligned_zeroed_and_whole)
{
    const size_t sizes[] = {4096, 1400000, SP_HUGE_PAGE, 3 * SP_HUGE_PAGE + 12345};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t mapped = 0;
        uint8_t *p = sp_huge_map(sizes[i], &mapped);
        cr_assert(p, "size %zu: %s", sizes[i], strerror(errno));
        cr_assert_eq(mapped, sp_huge_round(sizes[i]));
        cr_assert_eq((uintptr_t)p % SP_HUGE_PAGE, 0);
        for (size_t o = 0; o < mapped; o += 4096)
            cr_assert_eq(p[o], 0, "size %zu: byte %zu not zeroed", sizes[i], o);
        memset(p, 0xA5, mapped); /* every mapped byte is ours */
        /* the trimmed over-mapping leaves nothing after the range: the next page is unmapped */
        cr_assert_eq(msync(p + mapped, 4096, MS_ASYNC), -1);
        cr_assert_eq(errno, ENOMEM);
        sp_huge_unmap(p, mapped);
        cr_assert_eq(msync(p, 4096, MS_ASYNC), -1, "unmapped after sp_huge_unmap");
    }
    sp_huge_unmap(NULL, 0); /* accepted */
}

Test(huge_map, bad_sizes_refused)
{
    size_t mapped = 1;
    cr_assert_null(sp_huge_map(0, &mapped));
    cr_assert_eq(errno, EINVAL);
    cr_assert_eq(mapped, 0);
    cr_assert_null(sp_huge_map(SIZE_MAX - 4096, &mapped));
    cr_assert_eq(errno, EINVAL);
}
