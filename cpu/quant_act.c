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
#include "quant_k.h"
#include "simd.h"

_Static_assert(sizeof(sp_block_q8_0) == 34, "block_q8_0 layout");
_Static_assert(sizeof(sp_block_q8_1) == 36, "block_q8_1 layout");
_Static_assert(sizeof(sp_block_q8_k) == 292, "block_q8_K layout");

enum { Q4_0_BYTES = 18, Q4_1_BYTES = 20, Q5_0_BYTES = 22, Q5_1_BYTES = 24, Q8_0_BYTES = 34, };

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
    else
        sp_quant_row_q8_0(x, y, n);
}

size_t sp_act_tile_bytes(sp_act_type t, int64_t n)
{
    if (t == SP_ACT_Q8_K)
        return SP_ACT_TILE * sp_act_row_bytes(t, n);
    size_t nb = (size_t)(n / SP_QK8), ab = t == SP_ACT_Q8_1 ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    size_t q = nb * SP_ACT_TILE * ab, sc = nb * SP_ACT_TILE * (t == SP_ACT_Q8_1 ? 2 : 1) * sizeof(float);
    return ((q + 31) & ~(size_t)31) + sc;
}

void sp_quant_row_tiled(sp_act_type t, const float *x, int64_t n, void *tile, int lane)
{
    if (t == SP_ACT_Q8_K) {
        sp_quant_row_q8_k(x, (sp_block_q8_k *)tile + (size_t)lane * (size_t)(n / SP_QK_K), n);
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

/* Q4_1 and Q5_1: w = d*q + m, against Q8_1 activations (whose s carries the min term). */
static inline bool has_min(uint32_t type)
{
    return type == SP_TYPE_Q4_1 || type == SP_TYPE_Q5_1;
}

#ifdef __AVX2__
/* 8 lanes: float(sum of the 4 products ux[4i..4i+3] * sy[4i..4i+3]), ux unsigned, sy signed. */
static inline __m256 lanes_us(__m256i ux, __m256i sy)
{
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ux, sy)));
}

/* 32 nibbles -> 32 bytes: low nibbles first (elements 0..15), then high nibbles (16..31). */
static inline __m256i nibbles(const uint8_t *qs)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)qs);
    __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0f));
}

/* The 32 bits of a Q5 block's qh as bytes: 0xff where bit j (element j) is set. */
static inline __m256i fifth_bits(const uint8_t *qh)
{
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h),
                                               _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                  0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/* The weight block as bytes for maddubs: unsigned values for the types with a min (Q4_1/Q5_1: ux),
 * else |w| with *sx = w for the sign transfer. Q5_0: nibble | 16*bit - 16, i.e. the nibble with the
 * high nibble set (as int8: minus 16) where the fifth bit is clear. */
static inline __m256i wbytes(uint32_t type, const uint8_t *blk, __m256i *sx)
{
    __m256i q;
    switch (type) {
    case SP_TYPE_Q8_0: q = _mm256_loadu_si256((const __m256i *)(const void *)(blk + 2)); break;
    case SP_TYPE_Q4_0: q = _mm256_sub_epi8(nibbles(blk + 2), _mm256_set1_epi8(8)); break;
    case SP_TYPE_Q5_0:
        q = _mm256_or_si256(nibbles(blk + 6), _mm256_andnot_si256(fifth_bits(blk + 2), _mm256_set1_epi8((char)0xf0)));
        break;
    case SP_TYPE_Q5_1:
        q = _mm256_or_si256(nibbles(blk + 8), _mm256_and_si256(fifth_bits(blk + 4), _mm256_set1_epi8(0x10)));
        break;
    default: q = nibbles(blk + 4); break;   /* Q4_1 */
    }
    *sx = q;
    return has_min(type) ? q : _mm256_sign_epi8(q, q);
}

static inline __m256i abytes(uint32_t type, const uint8_t *ablk, __m256i sx)
{
    __m256i qy = _mm256_loadu_si256((const __m256i *)(const void *)(ablk + (has_min(type) ? 4 : 2)));
    return has_min(type) ? qy : _mm256_sign_epi8(qy, sx);
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
    const bool five = type == SP_TYPE_Q5_0 || type == SP_TYPE_Q5_1;
    const uint8_t *qs = blk + (has_min(type) ? 4 : 2) + (five ? 4 : 0);
    uint32_t qh = 0;
    if (five)
        memcpy(&qh, qs - 4, 4);
    int off = type == SP_TYPE_Q4_0 ? 8 : type == SP_TYPE_Q5_0 ? 16 : 0;
    for (int j = 0; j < SP_QK8 / 2; j++) {
        q[j] = ((qs[j] & 0x0f) | (int)((qh >> j) & 1) << 4) - off;
        q[j + SP_QK8 / 2] = ((qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4) - off;
    }
}
#endif

static inline size_t wblock_bytes(uint32_t type)
{
    switch (type) {
    case SP_TYPE_Q4_0: return Q4_0_BYTES;
    case SP_TYPE_Q4_1: return Q4_1_BYTES;
    case SP_TYPE_Q5_0: return Q5_0_BYTES;
    case SP_TYPE_Q5_1: return Q5_1_BYTES;
    default: return Q8_0_BYTES;
    }
}

/* One weight row . one activation row whose blocks are ab bytes apart, scales read from the blocks
 * (ggml_vec_dot_*). */
static inline __attribute__((always_inline)) float dot_one(uint32_t type, const uint8_t *w, int64_t nb,
                                                           const uint8_t *a, size_t ab)
{
    const bool with_min = has_min(type);
    const size_t wb = wblock_bytes(type);
    float summs = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *ablk = a + (size_t)b * ab;
        __m256i sx, ux = wbytes(type, blk, &sx);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(blk) * h2f(ablk)), lanes_us(ux, abytes(type, ablk, sx)), acc);
        if (with_min)
            summs = fmaf(h2f(blk + 2), h2f(ablk + 2), summs);
    }
    return sp_hsum256(acc) + summs;
#else
    float acc[8] = { 0 };
    int q[SP_QK8];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *ablk = a + (size_t)b * ab;
        const int8_t *qy = (const int8_t *)(ablk + (with_min ? 4 : 2));
        unpack_block(type, blk, q);
        float dd = h2f(blk) * h2f(ablk);
        for (int l = 0; l < 8; l++) {
            int s4 = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                s4 += q[j] * qy[j];
            acc[l] = fmaf(dd, (float)s4, acc[l]);
        }
        if (with_min)
            summs = fmaf(h2f(blk + 2), h2f(ablk + 2), summs);
    }
    return hsum8(acc) + summs;
#endif
}

/* One weight row . the first nt rows of an activation tile (sp_act_quant_tiled layout), scales from
 * the tile's scale block. Same per-row arithmetic as dot_one; the scale products and min terms of the
 * tile's rows are computed 8 at a time. Rows >= nt are computed from whatever the tile holds and not
 * written. */
static inline __attribute__((always_inline)) void dot_tile(uint32_t type, const uint8_t *w, int64_t nb,
                                                           const uint8_t *a, const float *sc, int nt, float *out,
                                                           size_t out_stride)
{
    enum { T = SP_ACT_TILE };
    const bool with_min = has_min(type);
    const size_t wb = wblock_bytes(type), ab = with_min ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);
    const int ks = with_min ? 2 : 1;
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0,
           acc6 = acc0, acc7 = acc0, summs = acc0;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb, *at = a + (size_t)b * T * ab;
        __m256i sx, ux = wbytes(type, blk, &sx);
        const float *scb = sc + (size_t)b * ks * T;
        __m256 dd = _mm256_mul_ps(_mm256_set1_ps(h2f(blk)), _mm256_loadu_ps(scb));
        if (with_min)
            summs = _mm256_fmadd_ps(_mm256_set1_ps(h2f(blk + 2)), _mm256_loadu_ps(scb + T), summs);
#define TILE_ROW(t, acc)                                                                                       \
    acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dd, _mm256_set1_epi32(t)),                                   \
                          lanes_us(ux, abytes(type, at + (t) * ab, sx)), acc)
        TILE_ROW(0, acc0); TILE_ROW(1, acc1); TILE_ROW(2, acc2); TILE_ROW(3, acc3);
        TILE_ROW(4, acc4); TILE_ROW(5, acc5); TILE_ROW(6, acc6); TILE_ROW(7, acc7);
#undef TILE_ROW
    }
    float sm[T];
    _mm256_storeu_ps(sm, summs);
    const __m256 accs[T] = { acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 };
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = sp_hsum256(accs[t]) + sm[t];
#else
    float acc[T][8], summs[T];
    memset(acc, 0, sizeof(acc));
    memset(summs, 0, sizeof(summs));
    int q[SP_QK8];
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + (size_t)b * wb;
        const float *scb = sc + (size_t)b * ks * T;
        unpack_block(type, blk, q);
        float dw = h2f(blk);
        for (int t = 0; t < nt; t++) {
            const int8_t *qy = (const int8_t *)(a + ((size_t)b * T + t) * ab + (with_min ? 4 : 2));
            float dd = dw * scb[t];
            for (int l = 0; l < 8; l++) {
                int s4 = 0;
                for (int j = 4 * l; j < 4 * l + 4; j++)
                    s4 += q[j] * qy[j];
                acc[t][l] = fmaf(dd, (float)s4, acc[t][l]);
            }
            if (with_min)
                summs[t] = fmaf(h2f(blk + 2), scb[T + t], summs[t]);
        }
    }
    for (int t = 0; t < nt; t++)
        out[t * out_stride] = hsum8(acc[t]) + summs[t];
#endif
}

/* Specialized per weight type (the type tests then fold away). */
#define DOT_ROWS_FN(name, TYPE)                                                                                \
    static void name(const void *w, int64_t nb, const void *tiles, int nt, float *out, size_t out_stride)     \
    {                                                                                                          \
        const size_t ab = has_min(TYPE) ? sizeof(sp_block_q8_1) : sizeof(sp_block_q8_0);               \
        const size_t tb = sp_act_tile_bytes(sp_act_type_for(TYPE), nb * SP_QK8);                              \
        const size_t qb = ((size_t)nb * SP_ACT_TILE * ab + 31) & ~(size_t)31;  /* the scales' offset */        \
        for (int t = 0; t < nt; t += SP_ACT_TILE) {                                                            \
            const uint8_t *tile = (const uint8_t *)tiles + (size_t)(t / SP_ACT_TILE) * tb;                     \
            int k = nt - t < SP_ACT_TILE ? nt - t : SP_ACT_TILE;                                               \
            if (k >= SP_ACT_TILE / 2) /* fewer rows: the tile would compute mostly unused ones */              \
                dot_tile(TYPE, w, nb, tile, (const float *)(const void *)(tile + qb), k,                       \
                         out + (size_t)t * out_stride, out_stride);                                            \
            else                                                                                               \
                for (int i = 0; i < k; i++)                                                                    \
                    out[(size_t)(t + i) * out_stride] = dot_one(TYPE, w, nb, tile + (size_t)i * ab,            \
                                                                SP_ACT_TILE * ab);                             \
        }                                                                                                      \
    }
DOT_ROWS_FN(rows_q4_0, SP_TYPE_Q4_0)
DOT_ROWS_FN(rows_q4_1, SP_TYPE_Q4_1)
DOT_ROWS_FN(rows_q8_0, SP_TYPE_Q8_0)
DOT_ROWS_FN(rows_q5_0, SP_TYPE_Q5_0)
DOT_ROWS_FN(rows_q5_1, SP_TYPE_Q5_1)

void sp_dot_rows(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out, size_t out_stride)
{
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
