/* xorshift.h - the seeded xorshift64 generator the CPU tests draw their synthetic inputs from. The
 * caller owns the state (one static per test file, so each file's sequence is its own and a
 * test's inputs do not depend on which other files were built). Header-only. */
#ifndef SP_TEST_XORSHIFT_H
#define SP_TEST_XORSHIFT_H

#include <stdint.h>

/* Advance *state (nonzero) and return a uniform double in [0, 1) with 53 random bits. */
static inline double xorshift64_unit(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

#endif
