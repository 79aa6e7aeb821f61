/* cuda_fp16.h - __half / __half2 of the CPU emulation (tests/cudaemu): IEEE binary16 stored as
 * bits, conversions with round-to-nearest-even (overflow to inf from 65520 up, subnormals, NaN kept
 * quiet), and the intrinsics gpu/ uses. Device and host code alike. */
#ifndef CUDAEMU_CUDA_FP16_H
#define CUDAEMU_CUDA_FP16_H

#include <stdint.h>
#include <string.h>

#include "cudaemu_vector.h"

struct __half {
    unsigned short __x;
};
struct __align__(4) __half2 {
    __half x, y;
};
typedef __half half;
typedef __half2 half2;

static inline unsigned short cudaemu_f32_to_f16_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)   /* NaN: quiet, payload's top bits kept */
        return (unsigned short)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u)   /* >= 65520 (and inf): rounds to inf */
        return (unsigned short)(sign | 0x7c00u);
    if (ax < 0x38800000u) {   /* below 2^-14: a subnormal half (or zero), in units of 2^-24 */
        const uint32_t e = ax >> 23;
        if (e < 102)
            return (unsigned short)sign;
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u, s = 126 - e;
        uint32_t r = m >> s;
        const uint32_t rem = m & ((1u << s) - 1), halfway = 1u << (s - 1);
        if (rem > halfway || (rem == halfway && (r & 1)))
            r++;
        return (unsigned short)(sign | r);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (unsigned short)(sign | h);
}

static inline float cudaemu_f16_bits_to_f32(unsigned short h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t x;
    if (e == 0x1f) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e == 0) {
        if (m == 0) {
            x = sign;
        } else {   /* subnormal: normalize */
            int k = 0;
            uint32_t mm = m;
            while (!(mm & 0x400u)) {
                mm <<= 1;
                k++;
            }
            x = sign | ((uint32_t)(113 - k) << 23) | ((mm & 0x3ffu) << 13);
        }
    } else {
        x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __float2half_rn(float f) { return __ushort_as_half(cudaemu_f32_to_f16_bits(f)); }
static inline __half __float2half(float f) { return __float2half_rn(f); }
static inline float __half2float(__half h) { return cudaemu_f16_bits_to_f32(h.__x); }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
static inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
static inline __half2 __floats2half2_rn(float a, float b)
{
    __half2 r;
    r.x = __float2half_rn(a);
    r.y = __float2half_rn(b);
    return r;
}
static inline __half2 __float22half2_rn(float2 f) { return __floats2half2_rn(f.x, f.y); }
static inline __half2 __halves2half2(__half a, __half b) { __half2 r; r.x = a; r.y = b; return r; }
/* Arithmetic as the hardware does it: in fp32, rounded once to fp16. */
static inline __half __hadd(__half a, __half b) { return __float2half_rn(__half2float(a) + __half2float(b)); }
static inline __half __hsub(__half a, __half b) { return __float2half_rn(__half2float(a) - __half2float(b)); }
static inline __half __hmul(__half a, __half b) { return __float2half_rn(__half2float(a) * __half2float(b)); }
static inline bool __hisnan(__half a) { return (a.__x & 0x7c00u) == 0x7c00u && (a.__x & 0x3ffu); }
static inline bool __hisinf(__half a) { return (a.__x & 0x7fffu) == 0x7c00u; }

#endif
