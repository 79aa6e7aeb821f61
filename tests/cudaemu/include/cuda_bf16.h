/* cuda_bf16.h - __nv_bfloat16 of the CPU emulation (tests/cudaemu): the top 16 bits of an fp32,
 * converted with round-to-nearest-even (NaN kept quiet). */
#ifndef CUDAEMU_CUDA_BF16_H
#define CUDAEMU_CUDA_BF16_H

#include <stdint.h>
#include <string.h>

#include "cuda_fp16.h"

struct __nv_bfloat16 {
    unsigned short __x;
};
struct __align__(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    __nv_bfloat16 r;
    if ((x & 0x7fffffffu) > 0x7f800000u)
        r.__x = (unsigned short)((x >> 16) | 0x40u);
    else
        r.__x = (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
    return r;
}
static inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
static inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t x = (uint32_t)b.__x << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 b; b.__x = u; return b; }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }

#endif
