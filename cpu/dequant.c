/* dequant.c - ggml block formats (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
 * to fp32, bit-exact with ggml's reference dequantize_row_* (and with the `gguf` Python package,
 * which tests/fixtures/dequant checks).
 *
 * Bit-exactness rules: fp16 scales are converted exactly (cpu/fp16.h or F16C, both exact) and every
 * float expression keeps ggml's operand order (e.g. Q6_K's (d*sc)*q rounds differently from
 * d*(sc*q); the fixtures catch that). Fused multiply-add would not change any result today: with
 * fp16 scales every product that feeds an add (x*d, (d*sc)*q) has at most 11+6+5 significant bits
 * and is exact in fp32. Contraction is still switched off for this file (GNU C defaults to
 * -ffp-contract=fast and the build enables -mfma) so the code stays ggml's two-rounding reference
 * if a formula ever changes; the AVX2 paths (Q4_1, Q8_0, F16: the default model's types) likewise
 * use separate mul and add.
 *
 * Block layouts follow ggml-common.h; all multi-byte fields are little-endian and read with
 * memcpy because blocks inside a GGUF are only byte-aligned (e.g. 20-byte Q4_1 blocks).
 */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "dequant.h"

#include "fp16.h"
#include "type_traits.h"
#include "sp_error.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define SP_DEQUANT_AVX2 1
#endif

#define QK 32   /* elements per block of the legacy quants */
#define QK_K 256 /* elements per super-block of the K-quants */

/* Block sizes in bytes (ggml-common.h static_asserts the same numbers). */
enum {
    Q4_0_BYTES = 2 + QK / 2,                      /* d, qs */
    Q4_1_BYTES = 2 + 2 + QK / 2,                  /* d, m, qs */
    Q5_0_BYTES = 2 + 4 + QK / 2,                  /* d, qh, qs */
    Q5_1_BYTES = 2 + 2 + 4 + QK / 2,              /* d, m, qh, qs */
    Q8_0_BYTES = 2 + QK,                          /* d, qs */
    Q4_K_BYTES = 2 + 2 + 12 + QK_K / 2,           /* d, dmin, scales, qs */
    Q5_K_BYTES = 2 + 2 + 12 + QK_K / 8 + QK_K / 2, /* d, dmin, scales, qh, qs */
    Q6_K_BYTES = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, /* ql, qh, scales, d */
};

static float half_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return sp_fp16_to_f32(h);
}

bool sp_dequant_supported(uint32_t type)
{
    return sp_type_supported(type);
}

/* ---- legacy quants (blocks of 32) ---- */

/* Q4_0, Q4_1, Q5_0, Q5_1 in ggml's scalar order: 16 bytes of nibbles (element j in the low nibble of
 * byte j, element j+16 in the high one), for Q5_* a fifth bit per element from the 32-bit qh; minus 8
 * (Q4_0) or 16 (Q5_0), times d, plus m for the _1 types. `five` and `has_min` are constants at every
 * call, so each type compiles to its own loop. */
static inline void dq_legacy(const uint8_t *x, float *y, int64_t nb, size_t bytes, bool five, bool has_min)
{
    const int off = has_min ? 0 : five ? 16 : 8;
    for (int64_t i = 0; i < nb; i++, x += bytes, y += QK) {
        const float d = half_at(x);
        const float m = has_min ? half_at(x + 2) : 0.0f;
        const uint8_t *qs = x + (has_min ? 4 : 2);
        uint32_t qh = 0;
        if (five) {
            memcpy(&qh, qs, 4);
            qs += 4;
        }
        for (int j = 0; j < QK / 2; j++) {
            const int x0 = ((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - off;
            const int x1 = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - off;
            if (has_min) {
                y[j] = x0 * d + m;
                y[j + QK / 2] = x1 * d + m;
            } else {
                y[j] = x0 * d;
                y[j + QK / 2] = x1 * d;
            }
        }
    }
}

static void dq_q4_1(const uint8_t *x, float *y, int64_t nb, bool simd)
{
    int64_t i = 0;
    (void)simd; /* unused without AVX2 */
#ifdef SP_DEQUANT_AVX2
    const __m128i lo_mask = _mm_set1_epi8(0x0F);
    for (; simd && i < nb; i++, x += Q4_1_BYTES, y += QK) {
        const __m256 d = _mm256_set1_ps(half_at(x));
        const __m256 m = _mm256_set1_ps(half_at(x + 2));
        const __m128i qs = _mm_loadu_si128((const __m128i *)(x + 4));
        const __m128i lo = _mm_and_si128(qs, lo_mask);                    /* elements 0..15 */
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(qs, 4), lo_mask); /* elements 16..31 */
        const __m128i parts[2] = {lo, hi};
        for (int h = 0; h < 2; h++) {
            const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[h]));
            const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(parts[h], 8)));
            /* separate mul and add: ggml rounds x*d before adding m */
            _mm256_storeu_ps(y + 16 * h, _mm256_add_ps(_mm256_mul_ps(f0, d), m));
            _mm256_storeu_ps(y + 16 * h + 8, _mm256_add_ps(_mm256_mul_ps(f1, d), m));
        }
    }
#endif
    dq_legacy(x, y, nb - i, Q4_1_BYTES, false, true);
}

static void dq_q8_0(const uint8_t *x, float *y, int64_t nb, bool simd)
{
    int64_t i = 0;
    (void)simd; /* unused without AVX2 */
#ifdef SP_DEQUANT_AVX2
    for (; simd && i < nb; i++, x += Q8_0_BYTES, y += QK) {
        const __m256 d = _mm256_set1_ps(half_at(x));
        for (int k = 0; k < QK; k += 8) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(x + 2 + k));
            _mm256_storeu_ps(y + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
#endif
    for (; i < nb; i++, x += Q8_0_BYTES, y += QK) {
        const float d = half_at(x);
        for (int j = 0; j < QK; j++)
            y[j] = (int8_t)x[2 + j] * d;
    }
}

/* ---- K-quants (super-blocks of 256) ---- */

/* 6-bit scale and min of sub-block j from the 12 packed bytes (ggml's get_scale_min_k4). */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

/* Q4_K and Q5_K (five: a fifth bit per element from qh, 32 bytes after the scales): per 64 elements
 * two sub-blocks with 6-bit scales and mins, y = (d*sc) * q - (min*m). `five` is a constant at each
 * call. */
static inline void dq_q45_k(const uint8_t *x, float *y, int64_t nb, bool five)
{
    for (int64_t i = 0; i < nb; i++, x += five ? Q5_K_BYTES : Q4_K_BYTES) {
        const float d = half_at(x);
        const float min = half_at(x + 2);
        const uint8_t *scales = x + 4;
        const uint8_t *qh = x + 16;
        const uint8_t *ql = x + 16 + (five ? QK_K / 8 : 0);
        int is = 0;
        uint8_t sc, m;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            scale_min_k4(is + 0, scales, &sc, &m);
            const float d1 = d * sc;
            const float m1 = min * m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * sc;
            const float m2 = min * m;
            for (int l = 0; l < 32; ++l)
                *y++ = d1 * ((ql[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l)
                *y++ = d2 * ((ql[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

static void dq_q6_k(const uint8_t *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += Q6_K_BYTES) {
        const uint8_t *ql = x;
        const uint8_t *qh = x + QK_K / 2;
        const int8_t *sc = (const int8_t *)(x + QK_K / 2 + QK_K / 4);
        const float d = half_at(x + QK_K / 2 + QK_K / 4 + QK_K / 16);
        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                /* left to right as in ggml: (d * sc) * q */
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* ---- plain float types ---- */

static void dq_f16(const uint8_t *x, float *y, int64_t n, bool simd)
{
    int64_t i = 0;
    (void)simd; /* unused without AVX2 */
#ifdef SP_DEQUANT_AVX2
    /* F16C conversion is exact (every half is representable as a float) */
    for (; simd && i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + 2 * i))));
#endif
    for (; i < n; i++)
        y[i] = half_at(x + 2 * i);
}

static void dq_bf16(const uint8_t *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, x + 2 * i, 2);
        y[i] = sp_bf16_to_f32(h);
    }
}

static int dequant(uint32_t type, const void *src, float *dst, int64_t n, bool simd)
{
    const uint8_t *x = src;
    int64_t be = sp_type_block_elems(type);
    if (be == 0)
        return sp_error(EINVAL, "dequant: unsupported tensor type %" PRIu32 " (%s)", type, sp_ggml_type_name(type));
    if (n < 0 || n % be)
        return sp_error(EINVAL, "dequant: element count %" PRId64 " is not a non-negative multiple of the %s block "
                        "size %" PRId64, n, sp_ggml_type_name(type), be);
    if (n == 0)
        return 0;
    if (!src || !dst)
        return sp_error(EINVAL, "dequant: NULL %s pointer", src ? "destination" : "source");
    int64_t nb = n / be;
    switch (type) {
    case SP_TYPE_F32: memcpy(dst, x, (size_t)n * 4); break;
    case SP_TYPE_F16: dq_f16(x, dst, n, simd); break;
    case SP_TYPE_BF16: dq_bf16(x, dst, n); break;
    case SP_TYPE_Q4_0: dq_legacy(x, dst, nb, Q4_0_BYTES, false, false); break;
    case SP_TYPE_Q4_1: dq_q4_1(x, dst, nb, simd); break;
    case SP_TYPE_Q5_0: dq_legacy(x, dst, nb, Q5_0_BYTES, true, false); break;
    case SP_TYPE_Q5_1: dq_legacy(x, dst, nb, Q5_1_BYTES, true, true); break;
    case SP_TYPE_Q8_0: dq_q8_0(x, dst, nb, simd); break;
    case SP_TYPE_Q4_K: dq_q45_k(x, dst, nb, false); break;
    case SP_TYPE_Q5_K: dq_q45_k(x, dst, nb, true); break;
    case SP_TYPE_Q6_K: dq_q6_k(x, dst, nb); break;
    default: return sp_error(EINVAL, "dequant: unsupported tensor type %" PRIu32, type);
    }
    return 0;
}

int sp_dequant(uint32_t type, const void *src, float *dst, int64_t n) { return dequant(type, src, dst, n, true); }

int sp_dequant_ref(uint32_t type, const void *src, float *dst, int64_t n) { return dequant(type, src, dst, n, false); }
