/* kv_fixture.h - synthetic K/V inputs for the segment tests (test_kv_segment, test_segment_attn):
 * vectors clustered around a few directions, so the codebook has something to merge and the
 * selection has structure. Link tests/support/kv_fixture.c (spindle_test_support). */
#ifndef SP_TEST_KV_FIXTURE_H
#define SP_TEST_KV_FIXTURE_H

#include <stdint.h>

/* Fill k and v, each [hk][l][d] fp32 (d <= 128), from the xorshift64 state *rng: 8 random centres
 * in [-1, 1)^d; each key is a centre scaled by 0.5..2.5 plus 5 % noise, each value another centre
 * plus 10 % noise. Deterministic for a given *rng, which it advances. */
void kv_fixture_clustered(uint64_t *rng, float *k, float *v, int hk, int l, int d);

#endif
