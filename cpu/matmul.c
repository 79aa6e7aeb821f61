/* matmul.c - y = x W^T against GGUF weights kept in their stored format.
 *
 * DESIGN: weights are never converted or re-quantized at load; they stay memory-mapped in the GGUF
 * file (Q4_1/Q8_0 for the default model: 4-6x fewer bytes than fp32, which is what decode is bound by).
 * - Few tokens (decode): rows are split among the pool's threads; each dot product reads the stored
 *   blocks directly. For a Q4_1 block w_j = d*q_j + m, so sum_j w_j x_j = d*sum_j(q_j x_j) + m*sum_j x_j
 *   with the per-block sums of x computed once per token: the weights used are exactly ggml's
 *   dequantized values, only the summation order differs. Q8_0 (w = d*q), F16 and F32 have direct
 *   kernels; every other supported type is dequantized row by row into scratch.
 * - Many tokens (prefill): each thread dequantizes blocks of MM_RB rows exactly (cpu/dequant.c) into
 *   its scratch and calls sgemm on them; OpenBLAS itself runs single-threaded (see sp_cpu_new).
 */
#include "ops.h"

#include <errno.h>
#include <string.h>
#include <cblas.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "dequant.h"
#include "fp16.h"
#include "gguf.h"
#include "simd.h"
#include "sp_error.h"

enum {
    MM_RB = 128,           /* weight rows dequantized per sgemm call */
    MM_GEMM_MIN_TOK = 8,   /* below this many tokens, dot products beat dequant + sgemm */
    QK = 32,
    Q4_1_BYTES = 20,
    Q8_0_BYTES = 34,
};

bool sp_op_matmul_supported(uint32_t type)
{
    return sp_dequant_supported(type);
}

size_t sp_op_matmul_scratch(int64_t cols)
{
    size_t gemm = (size_t)MM_RB * (size_t)cols;
    size_t gemv = (size_t)MM_GEMM_MIN_TOK * (size_t)(cols / QK + 1) + (size_t)cols;
    return gemm > gemv ? gemm : gemv;
}

int sp_op_get_row(const sp_wmat *w, int64_t r, float *out)
{
    if (r < 0 || r >= w->rows)
        return sp_error(EINVAL, "get_row: row %lld out of range [0, %lld)", (long long)r, (long long)w->rows);
    return sp_dequant(w->type, (const uint8_t *)w->data + (size_t)r * w->row_bytes, out, w->cols);
}

static float dot_f32(const float *a, const float *x, int64_t n)
{
    int64_t i = 0;
    float s = 0.0f;
#ifdef __AVX2__
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    s = sp_hsum256(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++)
        s += a[i] * x[i];
    return s;
}

static float dot_f16(const uint8_t *row, const float *x, int64_t n)
{
    int64_t i = 0;
    float s = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 2 * i)));
        acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i), acc);
    }
    s = sp_hsum256(acc);
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, row + 2 * i, 2);
        s += sp_fp16_to_f32(h) * x[i];
    }
    return s;
}

static inline float half_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return sp_fp16_to_f32(h);
}

/* xs[b] = sum of x over block b (the m term of Q4_1). */
static void block_sums(const float *x, int64_t nb, float *xs)
{
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
#ifdef __AVX2__
        __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(xb), _mm256_loadu_ps(xb + 8)),
                                 _mm256_add_ps(_mm256_loadu_ps(xb + 16), _mm256_loadu_ps(xb + 24)));
        xs[b] = sp_hsum256(s);
#else
        float s = 0.0f;
        for (int j = 0; j < QK; j++)
            s += xb[j];
        xs[b] = s;
#endif
    }
}

static float dot_q4_1(const uint8_t *row, const float *x, const float *xs, int64_t nb)
{
    float macc = 0.0f;
#ifdef __AVX2__
    const __m128i m4 = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q4_1_BYTES;
        const float *xb = x + b * QK;
        float d = half_at(blk), m = half_at(blk + 2);
        __m128i raw = _mm_loadu_si128((const __m128i *)(blk + 4));
        __m128i lo = _mm_and_si128(raw, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        __m256 q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        __m256 q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        __m256 s = _mm256_mul_ps(q0, _mm256_loadu_ps(xb));
        s = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xb + 8), s);
        s = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xb + 16), s);
        s = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xb + 24), s);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        macc += m * xs[b];
    }
    return sp_hsum256(acc) + macc;
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q4_1_BYTES;
        const float *xb = x + b * QK;
        float s = 0.0f;
        for (int j = 0; j < QK / 2; j++)
            s += (float)(blk[4 + j] & 0x0f) * xb[j] + (float)(blk[4 + j] >> 4) * xb[j + QK / 2];
        acc += half_at(blk) * s;
        macc += half_at(blk + 2) * xs[b];
    }
    return acc + macc;
#endif
}

static float dot_q8_0(const uint8_t *row, const float *x, int64_t nb)
{
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q8_0_BYTES;
        const float *xb = x + b * QK;
        __m256 s = _mm256_setzero_ps();
        for (int j = 0; j < QK; j += 8) {
            __m128i q8 = _mm_loadl_epi64((const __m128i *)(blk + 2 + j));
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), _mm256_loadu_ps(xb + j), s);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_at(blk)), s, acc);
    }
    return sp_hsum256(acc);
#else
    float acc = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q8_0_BYTES;
        float s = 0.0f;
        for (int j = 0; j < QK; j++)
            s += (float)(int8_t)blk[2 + j] * x[b * QK + j];
        acc += half_at(blk) * s;
    }
    return acc;
#endif
}

typedef struct mm_job {
    sp_cpu *c;
    const sp_wmat *w;
    const float *x;
    int n, ldx, ldy;
    float *y;
    int err;                  /* first dequant failure (set by any thread; all report the same) */
} mm_job;

static void gemv_worker(void *arg, int ith, int nth)
{
    mm_job *j = arg;
    const sp_wmat *w = j->w;
    int64_t rows = w->rows, cols = w->cols;
    int64_t r0 = rows * ith / nth, r1 = rows * (ith + 1) / nth;
    float *scr = j->c->thread_scratch + (size_t)ith * j->c->thread_floats;
    int64_t nb = cols / QK;
    float *xs = scr, *rowbuf = scr + (size_t)MM_GEMM_MIN_TOK * (size_t)(nb + 1);
    if (w->type == SP_TYPE_Q4_1)
        for (int t = 0; t < j->n; t++)
            block_sums(j->x + (size_t)t * j->ldx, nb, xs + (size_t)t * nb);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        switch (w->type) {
        case SP_TYPE_Q4_1:
            for (int t = 0; t < j->n; t++)
                j->y[(size_t)t * j->ldy + r] = dot_q4_1(row, j->x + (size_t)t * j->ldx, xs + (size_t)t * nb, nb);
            break;
        case SP_TYPE_Q8_0:
            for (int t = 0; t < j->n; t++)
                j->y[(size_t)t * j->ldy + r] = dot_q8_0(row, j->x + (size_t)t * j->ldx, nb);
            break;
        case SP_TYPE_F16:
            for (int t = 0; t < j->n; t++)
                j->y[(size_t)t * j->ldy + r] = dot_f16(row, j->x + (size_t)t * j->ldx, cols);
            break;
        case SP_TYPE_F32:
            for (int t = 0; t < j->n; t++)
                j->y[(size_t)t * j->ldy + r] = dot_f32((const float *)(const void *)row, j->x + (size_t)t * j->ldx, cols);
            break;
        default:
            if (sp_dequant(w->type, row, rowbuf, cols) != 0) {
                j->err = -EINVAL;
                return;
            }
            for (int t = 0; t < j->n; t++)
                j->y[(size_t)t * j->ldy + r] = dot_f32(rowbuf, j->x + (size_t)t * j->ldx, cols);
            break;
        }
    }
}

static void gemm_worker(void *arg, int ith, int nth)
{
    mm_job *j = arg;
    const sp_wmat *w = j->w;
    int64_t nblk = (w->rows + MM_RB - 1) / MM_RB;
    int64_t b0 = nblk * ith / nth, b1 = nblk * (ith + 1) / nth;
    float *scr = j->c->thread_scratch + (size_t)ith * j->c->thread_floats;
    for (int64_t b = b0; b < b1; b++) {
        int64_t r0 = b * MM_RB, nr = w->rows - r0 < MM_RB ? w->rows - r0 : MM_RB;
        if (sp_dequant(w->type, (const uint8_t *)w->data + (size_t)r0 * w->row_bytes, scr, nr * w->cols) != 0) {
            j->err = -EINVAL;
            return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, (int)nr, (int)w->cols, 1.0f, j->x, j->ldx,
                    scr, (int)w->cols, 0.0f, j->y + r0, j->ldy);
    }
}

int sp_op_matmul(sp_cpu *c, const sp_wmat *w, const float *x, int n, int ldx, float *y, int ldy)
{
    if (!sp_op_matmul_supported(w->type))
        return sp_error(EINVAL, "matmul: unsupported weight type %s", sp_ggml_type_name(w->type));
    if (n <= 0 || ldx < w->cols || ldy < w->rows)
        return sp_error(EINVAL, "matmul: bad shape (n=%d ldx=%d ldy=%d for %lldx%lld)", n, ldx, ldy,
                        (long long)w->rows, (long long)w->cols);
    if (c->thread_floats < sp_op_matmul_scratch(w->cols))
        return sp_error(ENOSPC, "matmul: thread scratch %zu floats < %zu needed for %lld columns",
                        c->thread_floats, sp_op_matmul_scratch(w->cols), (long long)w->cols);
    mm_job j = { .c = c, .w = w, .x = x, .n = n, .ldx = ldx, .ldy = ldy, .y = y, .err = 0 };
    if (n >= MM_GEMM_MIN_TOK) {
        sp_pool_run(c->pool, gemm_worker, &j);
    } else {
        sp_pool_run(c->pool, gemv_worker, &j);
    }
    if (j.err)
        return sp_error(EINVAL, "matmul: cannot dequantize %s weights", sp_ggml_type_name(w->type));
    return 0;
}
