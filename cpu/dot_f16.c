/* dot_f16.c - see dot_f16.h. The 8-lane kernel is ggml's AVX/F16C variant (GGML_F16_STEP 32, four
 * __m256 accumulators, GGML_F32x8_REDUCE); the 16-lane one its AVX-512 variant (GGML_F16_STEP 64,
 * four __m512 accumulators, pairwise adds, then _mm512_reduce_add_ps). The scalar build has the
 * 8-lane order. */
#include "dot_f16.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "quant_act_isa.h"

static inline float h2f(uint16_t h)
{
    return sp_fp16_to_f32(h);
}

void sp_quant_row_f16(const float *x, uint16_t *y, int64_t n)
{
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++)
        y[i] = sp_f32_to_fp16(x[i]);
}

/* The part past the last full step: products in float, summed in double, like ggml's leftovers. */
static double tail_sum(const uint16_t *w, const uint16_t *a, int64_t from, int64_t n)
{
    double s = 0.0;
    for (int64_t i = from; i < n; i++)
        s += (double)(h2f(w[i]) * h2f(a[i]));
    return s;
}

static float dot8(const uint16_t *w, const uint16_t *a, int64_t n)
{
    const int64_t np = n & ~(int64_t)31;
#ifdef __AVX2__
    __m256 s[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++) {
            const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(w + i + 8 * j)));
            const __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(a + i + 8 * j)));
            s[j] = _mm256_fmadd_ps(x, y, s[j]);
        }
    s[0] = _mm256_add_ps(s[0], s[2]);
    s[1] = _mm256_add_ps(s[1], s[3]);
    s[0] = _mm256_add_ps(s[0], s[1]);
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(s[0]), _mm256_extractf128_ps(s[0], 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    double sum = (double)_mm_cvtss_f32(_mm_hadd_ps(t1, t1));
#else
    float s[4][8];
    memset(s, 0, sizeof s);
    for (int64_t i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 8; l++)
                s[j][l] = fmaf(h2f(w[i + 8 * j + l]), h2f(a[i + 8 * j + l]), s[j][l]);
    float r[8];
    for (int l = 0; l < 8; l++)
        r[l] = (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]);
    /* _mm_add_ps of the halves, then two hadds */
    float h[4] = { r[0] + r[4], r[1] + r[5], r[2] + r[6], r[3] + r[7] };
    double sum = (double)((h[0] + h[1]) + (h[2] + h[3]));
#endif
    return (float)(sum + tail_sum(w, a, np, n));
}

#if defined(__AVX2__) && defined(__GNUC__)
#define SP_HAVE_DOT16 1
__attribute__((target("avx512f"))) static float dot16(const uint16_t *w, const uint16_t *a, int64_t n)
{
    const int64_t np = n & ~(int64_t)63;
    __m512 s[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (int64_t i = 0; i < np; i += 64)
        for (int j = 0; j < 4; j++) {
            const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(w + i + 16 * j)));
            const __m512 y = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(a + i + 16 * j)));
            s[j] = _mm512_fmadd_ps(x, y, s[j]);
        }
    s[0] = _mm512_add_ps(s[0], s[2]);
    s[1] = _mm512_add_ps(s[1], s[3]);
    s[0] = _mm512_add_ps(s[0], s[1]);
    double sum = (double)_mm512_reduce_add_ps(s[0]);
    return (float)(sum + tail_sum(w, a, np, n));
}
#endif

static bool use16(void)
{
#ifdef SP_HAVE_DOT16
    /* benign race: every thread computes the same value */
    static _Atomic int v = -1;
    int r = v;
    if (r < 0) {
        const char *off = getenv("SPINDLE_NO_AVX512");
        r = __builtin_cpu_supports("avx512f") && !(off && *off && strcmp(off, "0"));
        v = r;
    }
    return r;
#else
    return false;
#endif
}

int sp_dot_f16_widest(void)
{
#ifdef SP_HAVE_DOT16
    return __builtin_cpu_supports("avx512f") ? 16 : 8;
#else
    return 8;
#endif
}

float sp_dot_f16_width(const uint16_t *w, const uint16_t *a, int64_t n, int width)
{
#ifdef SP_HAVE_DOT16
    if (width == 16)
        return dot16(w, a, n);
#endif
    (void)width;
    return dot8(w, a, n);
}

void sp_dot_rows_f16(const void *w, int64_t n, const void *act, int nt, float *out, size_t out_stride)
{
    const bool wide = use16();
    for (int t = 0; t < nt; t++)
        out[(size_t)t * out_stride] = sp_dot_f16_width(w, (const uint16_t *)act + (size_t)t * (size_t)n, n, wide ? 16 : 8);
}
