/* quant_k_vnni.c - the K-quant dot products of quant_k.c on 512-bit registers (AVX-512 BW + VNNI),
 * run only where sp_qa_isa_active() found the CPU features.
 *
 * Why it is faster: the AVX2 kernels spend maddubs + madd + add per 32 elements and activation row;
 * here one 512-bit maddubs and one vpdpwssd (madd and add fused) cover 64 elements. The weights are
 * still unpacked in 256-bit halves; the two halves that belong to 64 consecutive elements are joined
 * once and used for all KT activation rows.
 *
 * Results are bit-identical to quant_k.c's: every int32 lane sum is the same integer (the low and
 * high 256 bits of a 512-bit sum hold two of the AVX2 kernel's lane sets, added before the one float
 * step), and the float steps are the AVX2 kernels' own. */
#include "quant_k.h"

#include "quant_act_isa.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "gguf.h"
#include "simd.h"

enum { Q4_K_BYTES = 144, Q5_K_BYTES = 176, Q6_K_BYTES = 210, KT_MAX = 8 };

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* quant_k.c's scales_mins_k4: the 8 6-bit scales and 8 6-bit mins of a Q4_K/Q5_K super-block */
static inline void scales_mins_k4(const uint8_t *q, uint8_t *sc, uint8_t *mn)
{
    const uint32_t k6 = 0x3f3f3f3f, k4 = 0x0f0f0f0f, k2 = 0x03030303;
    uint32_t u[3], o[4];
    memcpy(u, q, 12);
    o[0] = u[0] & k6;
    o[1] = (u[2] & k4) | (((u[0] >> 6) & k2) << 4);
    o[2] = u[1] & k6;
    o[3] = ((u[2] >> 4) & k4) | (((u[1] >> 6) & k2) << 4);
    memcpy(sc, o, 8);
    memcpy(mn, o + 2, 8);
}

/* Two 256-bit halves as one 512-bit register (lo in bits 0..255). */
static inline __m512i join(__m256i lo, __m256i hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The 8 int32 lanes of the AVX2 kernel: a 512-bit sum's halves added. */
static inline __m256i fold(__m512i s)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

static inline __attribute__((always_inline)) void q45k_rows(const uint8_t *x, const sp_block_q8_k *const *y,
                                                            int64_t nb, const int five, const int kt, float *out,
                                                            size_t stride)
{
    const size_t bb = five ? Q5_K_BYTES : Q4_K_BYTES;
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256 acc[KT_MAX];
    __m128 accm[KT_MAX];
    float summs[KT_MAX];
    for (int t = 0; t < kt; t++) {
        acc[t] = _mm256_setzero_ps();
        accm[t] = _mm_setzero_ps();
        summs[t] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++, x += bb) {
        const float wd = h2f(x), wmin = h2f(x + 2);
        uint8_t sc[8], mn[8];
        scales_mins_k4(x + 4, sc, mn);
        const __m128i mn16 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)mn));
        for (int t = 0; t < kt; t++) {
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
        __m512i sumi[KT_MAX];
        for (int t = 0; t < kt; t++)
            sumi[t] = _mm512_setzero_si512();
        for (int j = 0; j < 4; j++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(const void *)(qs + 32 * j));
            __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (five) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one), 4));
            }
            /* elements 64j .. 64j+63 in order; scale 2j on the low half, 2j+1 on the high */
            const __m512i w = join(lo, hi);
            const __m512i s = join(_mm256_set1_epi16(sc[2 * j]), _mm256_set1_epi16(sc[2 * j + 1]));
            for (int t = 0; t < kt; t++) {
                const __m512i a = _mm512_loadu_si512((const void *)(y[t][i].qs + 64 * j));
                sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(w, a), s);
            }
        }
        for (int t = 0; t < kt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * wd), _mm256_cvtepi32_ps(fold(sumi[t])), acc[t]);
    }
    for (int t = 0; t < kt; t++) {
        if (five) {
            out[(size_t)t * stride] = sp_hsum256(acc[t]) + summs[t];
        } else {
            __m128 m = _mm_add_ps(accm[t], _mm_movehl_ps(accm[t], accm[t]));
            m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[(size_t)t * stride] = sp_hsum256(acc[t]) + _mm_cvtss_f32(m);
        }
    }
}

static inline __attribute__((always_inline)) void q6k_rows(const uint8_t *x, const sp_block_q8_k *const *y,
                                                           int64_t nb, const int kt, float *out, size_t stride)
{
    const __m256i m15 = _mm256_set1_epi8(15);
    /* byte k of pick[p] selects scale 4p + k/8: int16 lanes 8q..8q+7 of a 64-element step get the
     * scale of its q-th 16 elements */
    static const int8_t pick[4][32] = {
#define SP_P(s) s, s, s, s, s, s, s, s
        { SP_P(0), SP_P(1), SP_P(2), SP_P(3) },     { SP_P(4), SP_P(5), SP_P(6), SP_P(7) },
        { SP_P(8), SP_P(9), SP_P(10), SP_P(11) },   { SP_P(12), SP_P(13), SP_P(14), SP_P(15) },
#undef SP_P
    };
    __m256 acc[KT_MAX];
    for (int t = 0; t < kt; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++, x += Q6_K_BYTES) {
        const float wd = h2f(x + 208);
        const uint8_t *ql = x, *qh = x + 128;
        const __m128i scales = _mm_loadu_si128((const __m128i *)(const void *)(x + 192));
        const __m256i sc16all = _mm256_cvtepi8_epi16(scales), scb = _mm256_broadcastsi128_si256(scales);
        __m256i corr[KT_MAX];
        __m512i sumi[KT_MAX];
        for (int t = 0; t < kt; t++) {
            /* the -32 offset of every element, per lane, as in quant_k.c */
            corr[t] = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(const void *)y[t][i].bsums),
                                                          sc16all), 5);
            sumi[t] = _mm512_setzero_si512();
        }
        for (int j = 0; j < 2; j++) {
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j));
            const __m256i l2 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * j + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(qh + 32 * j));
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l1, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(3)), 4));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l2, m15), _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(12)), 2));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m15), _mm256_and_si256(h, _mm256_set1_epi8(48)));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m15),
                                               _mm256_srli_epi16(_mm256_and_si256(h, _mm256_set1_epi8((char)0xc0)), 2));
            /* elements 128j .. 128j+63 and 128j+64 .. 128j+127 */
            const __m512i w[2] = { join(q0, q1), join(q2, q3) };
            for (int p = 0; p < 2; p++) {
                const __m512i s = _mm512_cvtepi8_epi16(
                    _mm256_shuffle_epi8(scb, _mm256_loadu_si256((const __m256i *)(const void *)pick[2 * j + p])));
                for (int t = 0; t < kt; t++) {
                    const __m512i a = _mm512_loadu_si512((const void *)(y[t][i].qs + 128 * j + 64 * p));
                    sumi[t] = _mm512_dpwssd_epi32(sumi[t], _mm512_maddubs_epi16(w[p], a), s);
                }
            }
        }
        for (int t = 0; t < kt; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * wd),
                                     _mm256_cvtepi32_ps(_mm256_sub_epi32(fold(sumi[t]), corr[t])), acc[t]);
    }
    for (int t = 0; t < kt; t++)
        out[(size_t)t * stride] = sp_hsum256(acc[t]);
}

/* kt activation rows from row t0 of the Q8_K tiles (plain rows back to back). */
static inline __attribute__((always_inline)) void k_rows(uint32_t type, const void *w, int64_t nb,
                                                         const sp_block_q8_k *a, int t0, const int kt,
                                                         float *out, size_t stride)
{
    const sp_block_q8_k *rows[KT_MAX];
    for (int k = 0; k < kt; k++)
        rows[k] = a + (size_t)(t0 + k) * (size_t)nb;
    float *o = out + (size_t)t0 * stride;
    switch (type) {
    case SP_TYPE_Q4_K: q45k_rows(w, rows, nb, 0, kt, o, stride); break;
    case SP_TYPE_Q5_K: q45k_rows(w, rows, nb, 1, kt, o, stride); break;
    default: q6k_rows(w, rows, nb, kt, o, stride); break;
    }
}

bool sp_dot_rows_k_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                        size_t out_stride)
{
    if (type != SP_TYPE_Q4_K && type != SP_TYPE_Q5_K && type != SP_TYPE_Q6_K)
        return false;
    const sp_block_q8_k *a = tiles;
    int t = 0;
    for (; t + 4 <= nt; t += 4)
        k_rows(type, w, nb, a, t, 4, out, out_stride);
    for (; t < nt; t++)
        k_rows(type, w, nb, a, t, 1, out, out_stride);
    return true;
}
#else
bool sp_dot_rows_k_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                        size_t out_stride)
{
    (void)type; (void)w; (void)nb; (void)tiles; (void)nt; (void)out; (void)out_stride;
    return false;
}
#endif
