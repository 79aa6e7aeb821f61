/* quant_k.h - integer dot products of the K-quant weight formats (Q4_K, Q5_K, Q6_K: super-blocks of
 * 256) with Q8_K activations, with the arithmetic of ggml's x86 kernels (private to cpu/).
 *
 * Exactness: every per-lane sum is an exact int32 (the maddubs pairs cannot saturate: |q| <= 63,
 * |a| <= 127), so only the float steps decide the result, and they follow ggml's AVX2 code:
 * - 8 float lanes per row; lane i holds the products of the elements at positions 4i..4i+3 of every
 *   32-element group, times the group's (16-group's for Q6_K) scale, summed in int32 over the
 *   super-block, then acc_i = fma(d_w * d_a, (float)lane_i, acc_i); Q6_K subtracts its -32 offset per
 *   lane as 32 * (bsums[2i] * sc[2i] + bsums[2i+1] * sc[2i+1]) before the conversion.
 * - mins (Q4_K: 4 float lanes, lane m = mins[2m]*(bs_32[2m]) + mins[2m+1]*(bs_32[2m+1]) fma'd with
 *   -d_a*dmin, reduced (m0+m2)+(m1+m3); Q5_K: the int sum of those 4 lanes, fma'd into one float).
 * - result = ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) + the min term.
 * The scalar build computes the same expressions. Thread-safe, allocation-free. */
#ifndef SP_QUANT_K_H
#define SP_QUANT_K_H

#include <stddef.h>
#include <stdint.h>

#include "quant_act.h"

/* One weight row (nb super-blocks of type Q4_K/Q5_K/Q6_K) . one Q8_K activation row. */
float sp_dot_k_q8_k(uint32_t type, const void *w, const sp_block_q8_k *a, int64_t nb);

/* sp_dot_rows for the K-quants: nt activation rows in Q8_K tiles (quant_act.h). */
void sp_dot_rows_k(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                   size_t out_stride);

#endif
