/* quant_act.c - ggml-compatible 8-bit activation quantization and integer block dot products (see
 * quant_act.h for the exact arithmetic). The AVX2 paths use the same instruction sequence as ggml's
 * x86 kernels (maddubs + madd give the exact int32 sum of 4 adjacent products per lane, converted to
 * float, then one fma per block and lane); the scalar paths evaluate the same float expressions in
 * the same order, so results do not depend on the build. */
#include "quant_act.h"

#include <math.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "gguf.h"
#include "simd.h"

_Static_assert(sizeof(sp_block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(sp_block_q8_1) == 36, "block_q8_1 layout");

enum { Q4_0_BYTES = 18, Q4_1_BYTES = 20, Q8_0_BYTES = 34, MAX_NT = 8 };

sp_act_type sp_act_type_for(uint32_t type)
{
    switch (type) {
    case SP_TYPE_Q4_0:
    case SP_TYPE_Q8_0:
        return SP_ACT_Q8_0;
    case SP_TYPE_Q4_1:
        return SP_ACT_Q8_1;
    default:
        return SP_ACT_NONE;
    }
}

size_t sp_act_row_bytes(sp_act_type t, int64_t n)
{
    size_t nb = (size_t)(n / SP_QK8);
    return t == SP_ACT_Q8_0 ? nb * sizeof(sp_block_q8_0) : t == SP_ACT_Q8_1 ? nb * sizeof(sp_block_q8_1) : 0;
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

size_t sp_act_scale_floats(sp_act_type t, int64_t n)
{
    return (size_t)(n / SP_QK8) * (t == SP_ACT_Q8_1 ? 2 : 1);
}

void sp_act_scales(sp_act_type t, const void *q, int64_t n, float *sc)
{
    for (int64_t b = 0; b < n / SP_QK8; b++) {
        if (t == SP_ACT_Q8_1) {
            const sp_block_q8_1 *y = (const sp_block_q8_1 *)q + b;
            sc[2 * b] = h2f((const uint8_t *)&y->d);
            sc[2 * b + 1] = h2f((const uint8_t *)&y->s);
        } else {
            sc[b] = h2f((const uint8_t *)&((const sp_block_q8_0 *)q + b)->d);
        }
    }
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
    else
        sp_quant_row_q8_0(x, y, n);
}

/* ---- dot products ---------------------------------------------------------------------------- */

#ifdef __AVX2__
/* 8 lanes: float(sum of the 4 products ux[4i..4i+3] * sy[4i..4i+3]), ux unsigned, sy signed. */
static inline __m256 lanes_us(__m256i ux, __m256i sy)
{
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ux, sy)));
}

static inline __m256 lanes_ss(__m256i x, __m256i y)
{
    return lanes_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* 32 nibbles -> 32 bytes: low nibbles first (elements 0..15), then high nibbles (16..31). */
static inline __m256i nibbles(const uint8_t *qs)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)qs);
    __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}
#else
static float hsum8(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/* Weight values of one block as ints (32 of them). */
static void unpack_block(uint32_t type, const uint8_t *blk, int *q)
{
    if (type == SP_TYPE_Q8_0) {
        for (int j = 0; j < SP_QK8; j++)
            q[j] = (int8_t)blk[2 + j];
        return;
    }
    const uint8_t *qs = blk + (type == SP_TYPE_Q4_1 ? 4 : 2);
    int off = type == SP_TYPE_Q4_0 ? 8 : 0;
    for (int j = 0; j < SP_QK8 / 2; j++) {
        q[j] = (qs[j] & 0x0f) - off;
        q[j + SP_QK8 / 2] = (qs[j] >> 4) - off;
    }
}
#endif

static size_t wblock_bytes(uint32_t type)
{
    return type == SP_TYPE_Q4_1 ? Q4_1_BYTES : type == SP_TYPE_Q4_0 ? Q4_0_BYTES : Q8_0_BYTES;
}

/* nt <= MAX_NT activation rows against one weight row; scales from sc (float) or, sc == NULL, from the
 * blocks. Inlined into callers with a constant sc-or-not so each gets its own loop. */
static inline __attribute__((always_inline)) void dot_tile(uint32_t type, const uint8_t *w, int64_t nb,
                                                           const uint8_t *a, size_t a_stride, bool use_sc,
                                                           const float *sc, size_t sc_stride, int nt, float *out,
                                                           size_t out_stride)
{
    const bool q41 = type == SP_TYPE_Q4_1;
    const size_t wb = wblock_bytes(type), ab = q41 ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    const size_t qoff = q41 ? 4 : 2;         /* offset of qs in the activation block */
    float summs[MAX_NT] = { 0 };
#ifdef __AVX2__
    __m256 acc[MAX_NT];
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb;
        float dw = h2f(blk);
        __m256i qx;
        if (type == SP_TYPE_Q8_0)
            qx = _mm256_loadu_si256((const __m256i *)(const void *)(blk + 2));
        else if (type == SP_TYPE_Q4_0)
            qx = _mm256_sub_epi8(nibbles(blk + 2), _mm256_set1_epi8(8));
        else
            qx = nibbles(blk + 4);
        if (q41) {
            float m = h2f(blk + 2);
            for (int t = 0; t < nt; t++) {
                const uint8_t *ablk = a + t * a_stride + (size_t)b * ab;
                __m256i qy = _mm256_loadu_si256((const __m256i *)(const void *)(ablk + qoff));
                float da = use_sc ? sc[t * sc_stride + 2 * b] : h2f(ablk);
                float sa = use_sc ? sc[t * sc_stride + 2 * b + 1] : h2f(ablk + 2);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), lanes_us(qx, qy), acc[t]);
                summs[t] = fmaf(m, sa, summs[t]);
            }
        } else {
            __m256i ax = _mm256_sign_epi8(qx, qx);
            for (int t = 0; t < nt; t++) {
                const uint8_t *ablk = a + t * a_stride + (size_t)b * ab;
                __m256i qy = _mm256_loadu_si256((const __m256i *)(const void *)(ablk + qoff));
                float da = use_sc ? sc[t * sc_stride + b] : h2f(ablk);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), lanes_us(ax, _mm256_sign_epi8(qy, qx)), acc[t]);
            }
        }
    }
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = sp_hsum256(acc[t]) + summs[t];
#else
    float acc[MAX_NT][8];
    memset(acc, 0, sizeof(acc));
    int q[SP_QK8];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb;
        float dw = h2f(blk);
        unpack_block(type, blk, q);
        for (int t = 0; t < nt; t++) {
            const uint8_t *ablk = a + t * a_stride + (size_t)b * ab;
            const int8_t *qy = (const int8_t *)(ablk + qoff);
            float da = use_sc ? sc[t * sc_stride + (q41 ? 2 * b : b)] : h2f(ablk);
            float dd = dw * da;
            for (int l = 0; l < 8; l++) {
                int s = 0;
                for (int j = 4 * l; j < 4 * l + 4; j++)
                    s += q[j] * qy[j];
                acc[t][l] = fmaf(dd, (float)s, acc[t][l]);
            }
            if (q41)
                summs[t] = fmaf(h2f(blk + 2), use_sc ? sc[t * sc_stride + 2 * b + 1] : h2f(ablk + 2), summs[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = hsum8(acc[t]) + summs[t];
#endif
}

/* Specialized per weight type and scale source (the type tests then fold away). */
#define DOT_ROWS_FN(name, TYPE, SC)                                                                          \
    static void name(const void *w, int64_t nb, const void *a, size_t a_stride, const float *sc,              \
                     size_t sc_stride, int nt, float *out, size_t out_stride)                                 \
    {                                                                                                          \
        for (int t = 0; t < nt; t += MAX_NT) {                                                                 \
            int k = nt - t < MAX_NT ? nt - t : MAX_NT;                                                         \
            dot_tile(TYPE, w, nb, (const uint8_t *)a + (size_t)t * a_stride, a_stride, SC,                     \
                     SC ? sc + (size_t)t * sc_stride : NULL, sc_stride, k, out + (size_t)t * out_stride,       \
                     out_stride);                                                                              \
        }                                                                                                      \
    }
DOT_ROWS_FN(rows_q4_0, SP_TYPE_Q4_0, true)
DOT_ROWS_FN(rows_q4_1, SP_TYPE_Q4_1, true)
DOT_ROWS_FN(rows_q8_0, SP_TYPE_Q8_0, true)
DOT_ROWS_FN(rows_q4_0_nosc, SP_TYPE_Q4_0, false)
DOT_ROWS_FN(rows_q4_1_nosc, SP_TYPE_Q4_1, false)
DOT_ROWS_FN(rows_q8_0_nosc, SP_TYPE_Q8_0, false)

void sp_dot_rows(uint32_t type, const void *w, int64_t nb, const void *a, size_t a_stride, const float *sc,
                 size_t sc_stride, int nt, float *out, size_t out_stride)
{
    switch (type) {
    case SP_TYPE_Q4_0:
        (sc ? rows_q4_0 : rows_q4_0_nosc)(w, nb, a, a_stride, sc, sc_stride, nt, out, out_stride);
        break;
    case SP_TYPE_Q4_1:
        (sc ? rows_q4_1 : rows_q4_1_nosc)(w, nb, a, a_stride, sc, sc_stride, nt, out, out_stride);
        break;
    default:
        (sc ? rows_q8_0 : rows_q8_0_nosc)(w, nb, a, a_stride, sc, sc_stride, nt, out, out_stride);
        break;
    }
}

float sp_dot_q4_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb)
{
    float r;
    rows_q4_0_nosc(w, nb, a, 0, NULL, 0, 1, &r, 0);
    return r;
}

float sp_dot_q4_1_q8_1(const void *w, const sp_block_q8_1 *a, int64_t nb)
{
    float r;
    rows_q4_1_nosc(w, nb, a, 0, NULL, 0, 1, &r, 0);
    return r;
}

float sp_dot_q8_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb)
{
    float r;
    rows_q8_0_nosc(w, nb, a, 0, NULL, 0, 1, &r, 0);
    return r;
}
