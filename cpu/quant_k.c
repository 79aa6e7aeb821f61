/* quant_k.c - Q8_K activation quantization and the K-quant integer dot products (see quant_k.h for
 * the arithmetic they share with ggml). Super-block layouts (bytes):
 *   Q4_K (144): d, dmin (fp16), scales[12] (8 6-bit scales + 8 6-bit mins), qs[128] (element 64j+l in
 *               the low nibble of qs[32j+l], element 64j+32+l in the high one);
 *   Q5_K (176): as Q4_K with qh[32] before qs (bit g of qh[l] is the fifth bit of element 32g+l);
 *   Q6_K (210): ql[128], qh[64], scales[16] (int8, one per 16 elements), d (fp16); element 128j+32g+l
 *               has its low 4 bits in ql[64j+32(g&1)+l] (low nibble for g<2) and bits 2g,2g+1 of
 *               qh[32j+l] on top, minus 32. */
#include "quant_k.h"

#include <math.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "gguf.h"
#include "simd.h"

enum { QK_K = SP_QK_K, Q4_K_BYTES = 144, Q5_K_BYTES = 176, Q6_K_BYTES = 210 };

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return sp_fp16_to_f32(h);
}

/* Round to nearest, ties to even, for |v| < 2^22: ggml's nearest_int (the magic-number trick). */
static inline int nearest_int(float v)
{
    float f = v + 12582912.f;
    int32_t i;
    memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

void sp_quant_row_q8_k(const float *x, sp_block_q8_k *y, int64_t n)
{
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        /* the signed value of largest magnitude (first one on ties) maps to -127 */
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < QK_K / 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++)
                s += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)s;
        }
        y[b].d = 1 / iscale;
    }
}

/* The 8 6-bit scales and 8 6-bit mins of a Q4_K/Q5_K super-block (ggml's get_scale_min_k4 for
 * j = 0..7), unpacked four at a time in 32-bit words. */
static inline void scales_mins_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    const uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
    uint32_t u[3], o[4];
    memcpy(u, q, 12);
    o[0] = u[0] & k6;                                   /* scales 0..3 */
    o[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);     /* scales 4..7 */
    o[2] = u[1] & k6;                                   /* mins 0..3 */
    o[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4); /* mins 4..7 */
    memcpy(sc, o, 8);
    memcpy(mn, o + 2, 8);
}

/* Min term lanes m = 0..3: mins[2m] * bs32[2m] + mins[2m+1] * bs32[2m+1], bs32 = sums of 32. */
static inline void min_lanes(const uint8_t *mn, const int16_t *bs, int *m4)
{
    for (int m = 0; m < 4; m++)
        m4[m] = mn[2 * m] * (bs[4 * m] + bs[4 * m + 1]) + mn[2 * m + 1] * (bs[4 * m + 2] + bs[4 * m + 3]);
}

#ifdef __AVX2__
/* int32 lanes of sum_{4 bytes} u*s, then times the int16 scale(s) in sc16 */
static inline __m256i scaled_lanes(__m256i u, __m256i s, __m256i sc16)
{
    return _mm256_madd_epi16(sc16, _mm256_maddubs_epi16(u, s));
}

/* The 8 scales as int16, in both 128-bit halves; scale_of picks scale k into every int16 lane. */
static inline __m256i scales16(const uint8_t *sc)
{
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)sc)));
}

static inline __m256i scale_of(__m256i sc16, int k)
{
    return _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)((2 * k + 1) << 8 | 2 * k)));
}

static float dot_q45k(const uint8_t *x, const sp_block_q8_k *y, int64_t nb, const int five)
{
    const size_t bb = five ? Q5_K_BYTES : Q4_K_BYTES;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++, x += bb) {
        const float d = y[i].d * h2f(x), dmin = -y[i].d * h2f(x + 2);
        uint8_t sc[8], mn[8];
        scales_mins_k4(x + 4, sc, mn);
        const __m128i bs32 = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)(const void *)y[i].bsums),
                                            _mm_loadu_si128((const __m128i *)(const void *)(y[i].bsums + 8)));
        const __m128i prod = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)mn)), bs32);
        if (five) {
            __m128i h = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
            h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
            summs = fmaf(dmin, (float)_mm_cvtsi128_si32(h), summs);
        } else {
            accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm);
        }
        const uint8_t *qs = x + 16 + (five ? 32 : 0);
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(const void *)(x + 16)) : _mm256_setzero_si256();
        const int8_t *a = y[i].qs;
        const __m256i sc16 = scales16(sc);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(const void *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
            }
            sumi = _mm256_add_epi32(sumi, scaled_lanes(lo, _mm256_loadu_si256((const __m256i *)(const void *)(a + 64 * j)),
                                                       scale_of(sc16, 2 * j)));
            sumi = _mm256_add_epi32(sumi, scaled_lanes(hi, _mm256_loadu_si256((const __m256i *)(const void *)(a + 64 * j + 32)),
                                                       scale_of(sc16, 2 * j + 1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    if (five)
        return sp_hsum256(acc) + summs;
    accm = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    accm = _mm_add_ss(accm, _mm_movehdup_ps(accm));
    return sp_hsum256(acc) + _mm_cvtss_f32(accm);
}

static float dot_q6k(const uint8_t *x, const sp_block_q8_k *y, int64_t nb)
{
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x += Q6_K_BYTES) {
        const float d = y[i].d * h2f(x + 208);
        const uint8_t *ql = x, *qh = x + 128;
        const __m128i scales = _mm_loadu_si128((const __m128i *)(const void *)(x + 192));
        /* the -32 offset of every element, per lane: 32 * (bs[2k] sc[2k] + bs[2k+1] sc[2k+1]) */
        const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(const void *)y[i].bsums),
                                                                 _mm256_cvtepi8_epi16(scales)), 5);
        const int8_t *a = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 2; j++) {
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j));
            const __m256i l2 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(qh + 32 * j));
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l1, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4)),
                _mm256_or_si256(_mm256_and_si256(l2, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m15), _mm256_and_si256(h, _mm256_set1_epi8(48))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m15),
                                _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8((char)0xc0)), 2)),
            };
            for (int g = 0; g < 4; g++) {
                const long long G = 4 * j + g;
                /* bytes 0..7: scale 2G, bytes 8..15: scale 2G+1, widened to int16 */
                const __m128i pick = _mm_set_epi64x((long long)(0x0101010101010101ULL * (unsigned long long)(2 * G + 1)),
                                                    (long long)(0x0101010101010101ULL * (unsigned long long)(2 * G)));
                const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                sumi = _mm256_add_epi32(sumi, scaled_lanes(q[g], _mm256_loadu_si256((const __m256i *)(const void *)(a + 32 * G)), sc16));
            }
        }
        sumi = _mm256_sub_epi32(sumi, corr);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return sp_hsum256(acc);
}

/* KT activation rows against one weight row: the same per-row arithmetic as dot_q45k / dot_q6k, with
 * each 64 (Q6_K: 128) weight elements unpacked once for all KT rows (prefill). */
enum { KT = 4 };

static inline __attribute__((always_inline)) void dot_q45k_kt(const uint8_t *x, const sp_block_q8_k *const *y,
                                                              int64_t nb, const int five, float *out, size_t stride)
{
    const size_t bb = five ? Q5_K_BYTES : Q4_K_BYTES;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc[KT];
    __m128 accm[KT];
    float summs[KT];
    for (int t = 0; t < KT; t++) {
        acc[t] = _mm256_setzero_ps();
        accm[t] = _mm_setzero_ps();
        summs[t] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++, x += bb) {
        const float wd = h2f(x), wmin = h2f(x + 2);
        uint8_t sc[8], mn[8];
        scales_mins_k4(x + 4, sc, mn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)mn));
        for (int t = 0; t < KT; t++) {
            const sp_block_q8_k *a = y[t] + i;
            const float dmin = -a->d * wmin;
            const __m128i bs32 = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)(const void *)a->bsums),
                                                _mm_loadu_si128((const __m128i *)(const void *)(a->bsums + 8)));
            const __m128i prod = _mm_madd_epi16(mn16, bs32);
            if (five) {
                __m128i h = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
                h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 1));
                summs[t] = fmaf(dmin, (float)_mm_cvtsi128_si32(h), summs[t]);
            } else {
                accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), accm[t]);
            }
        }
        const uint8_t *qs = x + 16 + (five ? 32 : 0);
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(const void *)(x + 16)) : _mm256_setzero_si256();
        const __m256i sc16 = scales16(sc);
        __m256i sumi[KT];
        for (int t = 0; t < KT; t++)
            sumi[t] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(const void *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
            }
            const __m256i sl = scale_of(sc16, 2 * j), sh = scale_of(sc16, 2 * j + 1);
            for (int t = 0; t < KT; t++) {
                const int8_t *a = y[t][i].qs + 64 * j;
                sumi[t] = _mm256_add_epi32(sumi[t], scaled_lanes(lo, _mm256_loadu_si256((const __m256i *)(const void *)a), sl));
                sumi[t] = _mm256_add_epi32(sumi[t], scaled_lanes(hi, _mm256_loadu_si256((const __m256i *)(const void *)(a + 32)), sh));
            }
        }
        for (int t = 0; t < KT; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * wd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < KT; t++) {
        if (five) {
            out[(size_t)t * stride] = sp_hsum256(acc[t]) + summs[t];
        } else {
            __m128 m = _mm_add_ps(accm[t], _mm_movehl_ps(accm[t], accm[t]));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[(size_t)t * stride] = sp_hsum256(acc[t]) + _mm_cvtss_f32(m);
        }
    }
}

static inline __attribute__((always_inline)) void dot_q6k_kt(const uint8_t *x, const sp_block_q8_k *const *y,
                                                             int64_t nb, float *out, size_t stride)
{
    const __m256i m15 = _mm256_set1_epi8(15);
    __m256 acc[KT];
    for (int t = 0; t < KT; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x += Q6_K_BYTES) {
        const float wd = h2f(x + 208);
        const uint8_t *ql = x, *qh = x + 128;
        const __m128i scales = _mm_loadu_si128((const __m128i *)(const void *)(x + 192));
        const __m256i sc16all = _mm256_cvtepi8_epi16(scales);
        __m256i sumi[KT];
        for (int t = 0; t < KT; t++)
            sumi[t] = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(const void *)y[t][i].bsums),
                                                          sc16all), 5);
        for (int t = 0; t < KT; t++)   /* start from -corr: the int32 sum is exact in any order */
            sumi[t] = _mm256_sub_epi32(_mm256_setzero_si256(), sumi[t]);
        for (int j = 0; j < 2; j++) {
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j));
            const __m256i l2 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(qh + 32 * j));
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(l1, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4)),
                _mm256_or_si256(_mm256_and_si256(l2, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m15), _mm256_and_si256(h, _mm256_set1_epi8(48))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m15),
                                _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8((char)0xc0)), 2)),
            };
            for (int g = 0; g < 4; g++) {
                const long long G = 4 * j + g;
                const __m128i pick = _mm_set_epi64x((long long)(0x0101010101010101ULL * (unsigned long long)(2 * G + 1)),
                                                    (long long)(0x0101010101010101ULL * (unsigned long long)(2 * G)));
                const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                for (int t = 0; t < KT; t++)
                    sumi[t] = _mm256_add_epi32(sumi[t], scaled_lanes(q[g], _mm256_loadu_si256((const __m256i *)(const void *)(y[t][i].qs + 32 * G)), sc16));
            }
        }
        for (int t = 0; t < KT; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * wd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
    }
    for (int t = 0; t < KT; t++)
        out[(size_t)t * stride] = sp_hsum256(acc[t]);
}
#else
static float hsum8(const float *l)
{
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

static float dot_q45k(const uint8_t *x, const sp_block_q8_k *y, int64_t nb, const int five)
{
    const size_t bb = five ? Q5_K_BYTES : Q4_K_BYTES;
    float acc[8] = { 0 }, accm[4] = { 0 }, summs = 0.0f;
    for (int64_t i = 0; i < nb; i++, x += bb) {
        const float d = y[i].d * h2f(x), dmin = -y[i].d * h2f(x + 2);
        uint8_t sc[8], mn[8];
        scales_mins_k4(x + 4, sc, mn);
        int m4[4];
        min_lanes(mn, y[i].bsums, m4);
        if (five)
            summs = fmaf(dmin, (float)(m4[0] + m4[1] + m4[2] + m4[3]), summs);
        else
            for (int m = 0; m < 4; m++)
                accm[m] = fmaf(dmin, (float)m4[m], accm[m]);
        const uint8_t *qh = x + 16, *qs = x + 16 + (five ? 32 : 0);
        int lanes[8] = { 0 };
        for (int g = 0; g < 8; g++)
            for (int e = 0; e < 32; e++) {
                const uint8_t byte = qs[32 * (g / 2) + e];
                int q = (g & 1) ? byte >> 4 : byte & 0x0f;
                if (five)
                    q |= ((qh[e] >> g) & 1) << 4;
                lanes[e / 4] += sc[g] * q * y[i].qs[32 * g + e];
            }
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(d, (float)lanes[k], acc[k]);
    }
    return hsum8(acc) + (five ? summs : (accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static float dot_q6k(const uint8_t *x, const sp_block_q8_k *y, int64_t nb)
{
    float acc[8] = { 0 };
    for (int64_t i = 0; i < nb; i++, x += Q6_K_BYTES) {
        const float d = y[i].d * h2f(x + 208);
        const uint8_t *ql = x, *qh = x + 128;
        const int8_t *sc = (const int8_t *)(x + 192);
        int lanes[8] = { 0 };
        for (int G = 0; G < 8; G++) {
            const int j = G / 4, g = G % 4;
            for (int e = 0; e < 32; e++) {
                const uint8_t lb = ql[64 * j + 32 * (g & 1) + e];
                const int q = (g < 2 ? lb & 0x0f : lb >> 4) | (((qh[32 * j + e] >> (2 * g)) & 3) << 4);
                lanes[e / 4] += sc[2 * G + e / 16] * q * y[i].qs[32 * G + e];
            }
        }
        for (int k = 0; k < 8; k++) {
            lanes[k] -= 32 * (y[i].bsums[2 * k] * sc[2 * k] + y[i].bsums[2 * k + 1] * sc[2 * k + 1]);
            acc[k] = fmaf(d, (float)lanes[k], acc[k]);
        }
    }
    return hsum8(acc);
}
#endif

float sp_dot_k_q8_k(uint32_t type, const void *w, const sp_block_q8_k *a, int64_t nb)
{
    switch (type) {
    case SP_TYPE_Q4_K: return dot_q45k(w, a, nb, 0);
    case SP_TYPE_Q5_K: return dot_q45k(w, a, nb, 1);
    default: return dot_q6k(w, a, nb);
    }
}

void sp_dot_rows_k(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                   size_t out_stride)
{
    /* Q8_K tiles are plain rows back to back, so row t is simply the t-th row */
    const sp_block_q8_k *a = tiles;
    int t = 0;
#ifdef __AVX2__
    for (; t + KT <= nt; t += KT) {
        const sp_block_q8_k *rows[KT];
        for (int k = 0; k < KT; k++)
            rows[k] = a + (size_t)(t + k) * (size_t)nb;
        float *o = out + (size_t)t * out_stride;
        switch (type) {
        case SP_TYPE_Q4_K: dot_q45k_kt(w, rows, nb, 0, o, out_stride); break;
        case SP_TYPE_Q5_K: dot_q45k_kt(w, rows, nb, 1, o, out_stride); break;
        default: dot_q6k_kt(w, rows, nb, o, out_stride); break;
        }
    }
#endif
    for (; t < nt; t++)
        out[(size_t)t * out_stride] = sp_dot_k_q8_k(type, w, a + (size_t)t * (size_t)nb, nb);
}
