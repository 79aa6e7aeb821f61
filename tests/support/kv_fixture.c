/* kv_fixture.c - see kv_fixture.h. */
#include "kv_fixture.h"

#include <criterion/criterion.h>

#include <stddef.h>

#include "xorshift.h"

enum { CENTRES = 8, MAX_D = 128 };

void kv_fixture_clustered(uint64_t *rng, float *k, float *v, int hk, int l, int d)
{
    cr_assert(d > 0 && d <= MAX_D, "kv_fixture_clustered: head dim %d outside 1..%d", d, MAX_D);
    float c[CENTRES][MAX_D];
    for (int i = 0; i < CENTRES; i++)
        for (int j = 0; j < d; j++)
            c[i][j] = (float)(xorshift64_unit(rng) * 2 - 1);
    for (int h = 0; h < hk; h++)
        for (int t = 0; t < l; t++) {
            int a = (int)(xorshift64_unit(rng) * CENTRES), b = (int)(xorshift64_unit(rng) * CENTRES);
            double s = 0.5 + 2 * xorshift64_unit(rng);
            for (int j = 0; j < d; j++) {
                k[((size_t)h * l + t) * d + j] = (float)(s * (c[a][j] + 0.05 * (xorshift64_unit(rng) * 2 - 1)));
                v[((size_t)h * l + t) * d + j] = (float)(c[b][j] + 0.1 * (xorshift64_unit(rng) * 2 - 1));
            }
        }
}
