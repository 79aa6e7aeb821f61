/* quant_act.c - ggml-compatible 8-bit activation quantization and integer block dot products (see
 * quant_act.h for the exact arithmetic). The AVX2 paths use the same instruction sequence as ggml's
 * x86 kernels (maddubs + madd give the exact int32 sum of 4 adjacent products per lane, converted to
 * float, then one fma per block and lane); the scalar paths evaluate the same float expressions in
 * the same order, so results do not depend on the build. */
#include "quant_act.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "gguf.h"
#include "dot_f16.h"
#include "quant_act_isa.h"
#include "quant_k.h"
#include "simd.h"

_Static_assert(sizeof(sp_block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(sp_block_q8_1) == 36, "block_q8_1 layout");
_Static_assert(sizeof(sp_block_q8_k) == 292, "block_q8_K layout");


sp_act_type sp_act_type_for(uint32_t type)
{
    switch (type) {
    case SP_TYPE_Q4_0:
    case SP_TYPE_Q5_0:
    case SP_TYPE_Q8_0:
        return SP_ACT_Q8_0;
    case SP_TYPE_Q4_1:
    case SP_TYPE_Q5_1:
        return SP_ACT_Q8_1;
    case SP_TYPE_Q4_K:
    case SP_TYPE_Q5_K:
    case SP_TYPE_Q6_K:
        return SP_ACT_Q8_K;
    case SP_TYPE_F16:
        return SP_ACT_F16;
    default:
        return SP_ACT_NONE;
    }
}

size_t sp_act_row_bytes(sp_act_type t, int64_t n)
{
    size_t nb = (size_t)(n / SP_QK8);
    return t == SP_ACT_Q8_0   ? nb * sizeof(sp_block_q8_0)
           : t == SP_ACT_Q8_1 ? nb * sizeof(sp_block_q8_1)
           : t == SP_ACT_Q8_K ? (size_t)(n / SP_QK_K) * sizeof(sp_block_q8_k)
           : t == SP_ACT_F16  ? (size_t)n * sizeof(uint16_t)
                              : 0;
}

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __AVX2__
    return _cvtsh_ss(h);
#else
    return sp_fp16_to_f32(h);
#endif
}

static inline uint16_t f2h(float f)
{
#ifdef __AVX2__
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    return sp_f32_to_fp16(f);
#endif
}

/* ---- quantization ---------------------------------------------------------------------------- */

/* One block: returns d (unrounded) and writes the 32 quants; *sum = sum of the quants. */
static float quant_block(const float *x, int8_t *qs, int *sum)
{
#ifdef __AVX2__
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
           v3 = _mm256_loadu_ps(x + 24);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_andnot_ps(sign, v0);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v1));
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v2));
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v3));
    float m = sp_hmax256(amax);
    float d = m / 127.f, id = m != 0.0f ? 127.f / m : 0.0f;
    __m256 mul = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
    *sum = _mm_cvtsi128_si32(s4);
    /* int32 -> int8 with the lane order restored (packs work per 128-bit half) */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)(void *)qs, p);
    return d;
#else
    float m = 0.0f;
    for (int j = 0; j < SP_QK8; j++)
        m = fabsf(x[j]) > m ? fabsf(x[j]) : m;
    float d = m / 127.f, id = m != 0.0f ? 127.f / m : 0.0f;
    int s = 0;
    for (int j = 0; j < SP_QK8; j++) {
        float r = nearbyintf(x[j] * id);     /* default rounding mode: half to even, like vroundps */
        int q = (int)r;
        q = q > 127 ? 127 : q < -128 ? -128 : q;
        qs[j] = (int8_t)q;
        s += (int)r;
    }
    *sum = s;
    return d;
#endif
}

void sp_quant_row_q8_0(const float *x, sp_block_q8_0 *y, int64_t n)
{
    for (int64_t b = 0; b < n / SP_QK8; b++) {
        int sum;
        y[b].d = f2h(quant_block(x + b * SP_QK8, y[b].qs, &sum));
    }
}

void sp_quant_row_q8_1(const float *x, sp_block_q8_1 *y, int64_t n)
{
    for (int64_t b = 0; b < n / SP_QK8; b++) {
        int sum;
        float d = quant_block(x + b * SP_QK8, y[b].qs, &sum);
        y[b].d = f2h(d);
        y[b].s = f2h(d * (float)sum);
    }
}

void sp_quant_row(sp_act_type t, const float *x, void *y, int64_t n)
{
    if (t == SP_ACT_Q8_1)
        sp_quant_row_q8_1(x, y, n);
    else if (t == SP_ACT_Q8_K)
        sp_quant_row_q8_k(x, y, n);
    else if (t == SP_ACT_F16)
        sp_quant_row_f16(x, y, n);
    else
        sp_quant_row_q8_0(x, y, n);
}

size_t sp_act_tile_bytes(sp_act_type t, int64_t n)
{
    if (t == SP_ACT_Q8_K || t == SP_ACT_F16)
        return (SP_ACT_TILE * sp_act_row_bytes(t, n) + 3) & ~(size_t)3;
    size_t nb = (size_t)(n / SP_QK8), ab = t == SP_ACT_Q8_1 ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    size_t q = nb * SP_ACT_TILE * ab, sc = nb * SP_ACT_TILE * (t == SP_ACT_Q8_1 ? 2 : 1) * sizeof(float);
    return ((q + 31) & ~(size_t)31) + sc;
}

void sp_quant_row_tiled(sp_act_type t, const float *x, int64_t n, void *tile, int lane)
{
    if (t == SP_ACT_Q8_K || t == SP_ACT_F16) {
        sp_quant_row(t, x, (uint8_t *)tile + (size_t)lane * sp_act_row_bytes(t, n), n);
        return;
    }
    const int64_t nb = n / SP_QK8;
    const bool q81 = t == SP_ACT_Q8_1;
    const size_t ab = q81 ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    uint8_t *q = tile;
    float *sc = (float *)(void *)(q + (((size_t)nb * SP_ACT_TILE * ab + 31) & ~(size_t)31));
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = q + ((size_t)b * SP_ACT_TILE + lane) * ab;
        sp_quant_row(t, x + b * SP_QK8, blk, SP_QK8);
        if (q81) {
            sc[(2 * b) * SP_ACT_TILE + lane] = h2f(blk);
            sc[(2 * b + 1) * SP_ACT_TILE + lane] = h2f(blk + 2);
        } else {
            sc[b * SP_ACT_TILE + lane] = h2f(blk);
        }
    }
}

/* ---- dot products ---------------------------------------------------------------------------- */

#define SP_QA_FN(name) name
#include "quant_act_kern.h"

sp_qa_isa sp_qa_isa_active(void)
{
    /* benign race: every thread computes the same value */
    static _Atomic int isa = -1;
    int v = isa;
    if (v < 0) {
        const char *off = getenv("SPINDLE_NO_AVX512");
        v = sp_qa_isa_vnni_available() && !(off && *off && strcmp(off, "0")) ? SP_QA_ISA_VNNI : SP_QA_ISA_BASE;
        isa = v;
    }
    return (sp_qa_isa)v;
}

bool sp_dot_rows_isa(sp_qa_isa isa, uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                     size_t out_stride)
{
    if (isa == SP_QA_ISA_VNNI)
        return sp_dot_rows_vnni(type, w, nb, tiles, nt, out, out_stride);
    switch (type) {
    case SP_TYPE_Q4_0: rows_q4_0(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q4_1: rows_q4_1(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q5_0: rows_q5_0(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q5_1: rows_q5_1(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q8_0: rows_q8_0(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q4_K: case SP_TYPE_Q5_K: case SP_TYPE_Q6_K:
        sp_dot_rows_k(type, w, nb, tiles, nt, out, out_stride);
        return true;
    default: return false;
    }
}

void sp_dot_rows(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out, size_t out_stride)
{
    if (sp_qa_isa_active() == SP_QA_ISA_VNNI && sp_dot_rows_vnni(type, w, nb, tiles, nt, out, out_stride))
        return;
    switch (type) {
    case SP_TYPE_Q4_0:
        rows_q4_0(w, nb, tiles, nt, out, out_stride);
        break;
    case SP_TYPE_Q4_1:
        rows_q4_1(w, nb, tiles, nt, out, out_stride);
        break;
    case SP_TYPE_Q5_0:
        rows_q5_0(w, nb, tiles, nt, out, out_stride);
        break;
    case SP_TYPE_Q5_1:
        rows_q5_1(w, nb, tiles, nt, out, out_stride);
        break;
    case SP_TYPE_Q4_K:
    case SP_TYPE_Q5_K:
    case SP_TYPE_Q6_K:
        sp_dot_rows_k(type, w, nb, tiles, nt, out, out_stride);
        break;
    case SP_TYPE_F16:
        sp_dot_rows_f16(w, nb, tiles, nt, out, out_stride);
        break;
    default:
        rows_q8_0(w, nb, tiles, nt, out, out_stride);
        break;
    }
}

float sp_dot_q4_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb)
{
    return dot_one(SP_TYPE_Q4_0, w, nb, (const uint8_t *)a, sizeof(sp_block_q8_0));
}

float sp_dot_q4_1_q8_1(const void *w, const sp_block_q8_1 *a, int64_t nb)
{
    return dot_one(SP_TYPE_Q4_1, w, nb, (const uint8_t *)a, sizeof(sp_block_q8_1));
}

float sp_dot_q8_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb)
{
    return dot_one(SP_TYPE_Q8_0, w, nb, (const uint8_t *)a, sizeof(sp_block_q8_0));
}

float sp_dot_q5_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb)
{
    return dot_one(SP_TYPE_Q5_0, w, nb, (const uint8_t *)a, sizeof(sp_block_q8_0));
}

float sp_dot_q5_1_q8_1(const void *w, const sp_block_q8_1 *a, int64_t nb)
{
    return dot_one(SP_TYPE_Q5_1, w, nb, (const uint8_t *)a, sizeof(sp_block_q8_1));
}
