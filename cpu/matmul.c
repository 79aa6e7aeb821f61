/* matmul.c - y = x W^T against GGUF weights kept in their stored format.
 *
 * DESIGN: weights are never converted or re-quantized at load; they stay memory-mapped in the GGUF
 * file (Q4_1/Q8_0 for the default model: 4-6x fewer bytes than fp32, which is what decode is bound by).
 * Two numerics (sp_cpu.numerics, see ops.h):
 * - GGML (default for models): like llama.cpp's CPU backend, each activation row is quantized to 8
 *   bits per 32-block (Q8_1 for Q4_1 weights, Q8_0 for Q4_0/Q8_0; cpu/quant_act.c) and every product
 *   is an integer block dot product, for any number of tokens. Tokens are processed in groups that
 *   fit the context's qact buffer: the pool's threads quantize the group's rows into tiles of 8
 *   tokens (quant_act.h layout), then the weight rows are split among the threads, each computing
 *   its rows for MM_QTILE tokens at a time (those tokens' quantized activations stay in L1 while the
 *   rows stream by; each weight block is unpacked once per 8 tokens). Weight types without an
 *   integer kernel take the EXACT path below.
 * - EXACT, few tokens (decode): rows are split among the pool's threads; each dot product reads the
 *   stored blocks directly. For a Q4_1 block w_j = d*q_j + m, so sum_j w_j x_j = d*sum_j(q_j x_j) +
 *   m*sum_j x_j with the per-block sums of x computed once per token: the weights used are exactly
 *   ggml's dequantized values, only the summation order differs. Q8_0 (w = d*q), F16 and F32 have
 *   direct kernels; every other supported type is dequantized row by row into scratch.
 * - EXACT, many tokens (prefill): each thread dequantizes blocks of MM_RB rows exactly
 *   (cpu/dequant.c) into its scratch and calls sgemm on them; OpenBLAS itself runs single-threaded
 *   (see sp_cpu_new).
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
#include "quant_act.h"
#include "simd.h"
#include "sp_error.h"

enum {
    MM_RB = 128,           /* weight rows dequantized per sgemm call */
    MM_GEMM_MIN_TOK = 8,   /* below this many tokens, dot products beat dequant + sgemm */
    MM_GEMV_UNIT = 16,     /* rows per unit of work on the dot-product path */
    MM_QTILE = 32,         /* GGML: tokens per tile of quantized activations (~20 KiB at 576 columns) */
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
    size_t gemv = (size_t)cols;
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
    int nw;
    const sp_wmat *const *w;  /* [nw] */
    float *const *y;          /* [nw] */
    const int *ldy;           /* [nw] */
    const float *x;
    int n, ldx;
    bool swiglu;              /* nw == 2: y[0] = silu(y[0]) * y[1] per finished unit */
    bool gemm;
    int64_t unit;             /* rows per unit of work */
    int64_t units[SP_MM_MAX + 1]; /* cumulative unit counts per matrix */
    int err;                  /* set by any thread whose dequant failed */
    /* GGML numerics: the group's activations quantized per format in tiles of SP_ACT_TILE tokens
     * (quant_act.h), NULL when no matrix needs that format */
    const uint8_t *qa[SP_ACT_COUNT];  /* indexed by sp_act_type */
    size_t qa_stride[SP_ACT_COUNT];   /* bytes per tile */
    const float *qx;          /* quantization input (rows of the group), row stride ldx */
} mm_job;

/* Rows [r0, r0+nr) of one matrix for all n tokens. */
static int mm_rows(mm_job *j, int ith, int wi, int64_t r0, int64_t nr)
{
    const sp_wmat *w = j->w[wi];
    float *y = j->y[wi];
    int ldy = j->ldy[wi];
    int64_t cols = w->cols, nb = cols / QK;
    float *scr = j->c->thread_scratch + (size_t)ith * j->c->thread_floats;
    sp_act_type at = j->c->numerics == SP_NUMERICS_GGML ? sp_act_type_for(w->type) : SP_ACT_NONE;
    if (at != SP_ACT_NONE) {
        if (at == SP_ACT_Q8_K)
            nb = cols / SP_QK_K;
        else if (at == SP_ACT_F16)
            nb = cols;
        for (int t0 = 0; t0 < j->n; t0 += MM_QTILE) {
            int nt = j->n - t0 < MM_QTILE ? j->n - t0 : MM_QTILE;
            const uint8_t *tiles = j->qa[at] + (size_t)(t0 / SP_ACT_TILE) * j->qa_stride[at];
            for (int64_t r = r0; r < r0 + nr; r++)
                sp_dot_rows(w->type, (const uint8_t *)w->data + (size_t)r * w->row_bytes, nb, tiles, nt,
                            y + (size_t)t0 * ldy + r, (size_t)ldy);
        }
        return 0;
    }
    if (j->gemm) {
        if (sp_dequant(w->type, (const uint8_t *)w->data + (size_t)r0 * w->row_bytes, scr, nr * cols) != 0)
            return -EINVAL;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, (int)nr, (int)cols, 1.0f, j->x, j->ldx, scr,
                    (int)cols, 0.0f, y + r0, ldy);
        return 0;
    }
    const float *xs = j->c->xs;
    float *rowbuf = scr;
    for (int64_t r = r0; r < r0 + nr; r++) {
        const uint8_t *row = (const uint8_t *)w->data + (size_t)r * w->row_bytes;
        switch (w->type) {
        case SP_TYPE_Q4_1:
            for (int t = 0; t < j->n; t++)
                y[(size_t)t * ldy + r] = dot_q4_1(row, j->x + (size_t)t * j->ldx, xs + (size_t)t * nb, nb);
            break;
        case SP_TYPE_Q8_0:
            for (int t = 0; t < j->n; t++)
                y[(size_t)t * ldy + r] = dot_q8_0(row, j->x + (size_t)t * j->ldx, nb);
            break;
        case SP_TYPE_F16:
            for (int t = 0; t < j->n; t++)
                y[(size_t)t * ldy + r] = dot_f16(row, j->x + (size_t)t * j->ldx, cols);
            break;
        case SP_TYPE_F32:
            for (int t = 0; t < j->n; t++)
                y[(size_t)t * ldy + r] = dot_f32((const float *)(const void *)row, j->x + (size_t)t * j->ldx, cols);
            break;
        default:
            if (sp_dequant(w->type, row, rowbuf, cols) != 0)
                return -EINVAL;
            for (int t = 0; t < j->n; t++)
                y[(size_t)t * ldy + r] = dot_f32(rowbuf, j->x + (size_t)t * j->ldx, cols);
            break;
        }
    }
    return 0;
}

static void mm_unit(void *arg, int u, int ith)
{
    mm_job *j = arg;
    int wi, nmat = j->swiglu ? 2 : 1;
    int64_t r0;
    if (j->swiglu) {
        wi = 0;
        r0 = (int64_t)u * j->unit;
    } else {
        wi = 0;
        while (u >= j->units[wi + 1])
            wi++;
        r0 = (u - j->units[wi]) * j->unit;
    }
    int64_t rows = j->w[wi]->rows, nr = rows - r0 < j->unit ? rows - r0 : j->unit;
    for (int k = 0; k < nmat; k++)
        if (mm_rows(j, ith, wi + k, r0, nr) != 0) {
            j->err = -EINVAL;
            return;
        }
    if (j->swiglu)
        for (int t = 0; t < j->n; t++)
            (j->c->numerics == SP_NUMERICS_GGML ? sp_op_swiglu_ggml : sp_op_swiglu)(j->y[0] + (size_t)t * j->ldy[0] + r0, j->y[0] + (size_t)t * j->ldy[0] + r0,
                         j->y[1] + (size_t)t * j->ldy[1] + r0, (int)nr);
}

/* Quantize token u of the group into every format the job needs. */
static void quant_unit(void *arg, int u, int ith)
{
    (void)ith;
    mm_job *j = arg;
    const float *xr = j->qx + (size_t)u * j->ldx;
    for (int t = SP_ACT_Q8_0; t < SP_ACT_COUNT; t++)
        if (j->qa[t])
            sp_quant_row_tiled((sp_act_type)t, xr, j->w[0]->cols,
                               (uint8_t *)j->qa[t] + (size_t)(u / SP_ACT_TILE) * j->qa_stride[t], u % SP_ACT_TILE);
}

int sp_op_matmul_multi(sp_cpu *c, int nw, const sp_wmat *const *w, float *const *y, const int *ldy, const float *x,
                       int n, int ldx, bool swiglu)
{
    if (nw < 1 || nw > SP_MM_MAX || (swiglu && (nw != 2 || w[0]->rows != w[1]->rows)))
        return sp_error(EINVAL, "matmul: bad job (%d matrices, swiglu=%d)", nw, (int)swiglu);
    mm_job j = { .c = c, .nw = nw, .w = w, .y = y, .ldy = ldy, .x = x, .n = n, .ldx = ldx, .swiglu = swiglu };
    bool ggml = c->numerics == SP_NUMERICS_GGML;
    int64_t cols_q41 = 0, total_rows = 0;
    bool all_q = true;                /* GGML: every matrix has an integer kernel */
    for (int i = 0; i < nw; i++) {
        if (!sp_op_matmul_supported(w[i]->type))
            return sp_error(EINVAL, "matmul: unsupported weight type %s", sp_ggml_type_name(w[i]->type));
        if (n <= 0 || ldx < w[i]->cols || ldy[i] < w[i]->rows)
            return sp_error(EINVAL, "matmul: bad shape (n=%d ldx=%d ldy=%d for %lldx%lld)", n, ldx, ldy[i],
                            (long long)w[i]->rows, (long long)w[i]->cols);
        if (w[i]->cols != w[0]->cols)
            return sp_error(EINVAL, "matmul: matrices of one job must share the input (%lld vs %lld columns)",
                            (long long)w[i]->cols, (long long)w[0]->cols);
        if (c->thread_floats < sp_op_matmul_scratch(w[i]->cols) || c->xs_floats < (size_t)(w[i]->cols / QK) * MM_GEMM_MIN_TOK)
            return sp_error(ENOSPC, "matmul: thread scratch %zu floats < %zu needed for %lld columns",
                            c->thread_floats, sp_op_matmul_scratch(w[i]->cols), (long long)w[i]->cols);
        sp_act_type at = ggml ? sp_act_type_for(w[i]->type) : SP_ACT_NONE;
        if (at != SP_ACT_NONE)
            j.qa_stride[at] = sp_act_tile_bytes(at, w[i]->cols);
        all_q = all_q && at != SP_ACT_NONE;
        if (w[i]->type == SP_TYPE_Q4_1)
            cols_q41 = w[i]->cols;
        total_rows += w[i]->rows;
    }
    /* Tokens per pass: all of them, or (GGML) as many as the quantized-activation buffer holds. */
    int group = n;
    size_t tile_bytes = 0;
    for (int t = SP_ACT_Q8_0; t < SP_ACT_COUNT; t++)
        tile_bytes += j.qa_stride[t];
    if (tile_bytes) {
        /* c->qact for a group: [Q8_0 tiles][Q8_1 tiles][Q8_K tiles], each format's tiles 64-byte aligned */
        size_t fit = (c->qact_bytes / (tile_bytes + 64 * (SP_ACT_COUNT - 1))) * SP_ACT_TILE;
        if (fit < 1)
            return sp_error(ENOSPC, "matmul: quantized-activation buffer %zu bytes < %zu for one tile of rows",
                            c->qact_bytes, tile_bytes);
        group = fit < (size_t)n ? (int)fit : n;
        size_t off = 0;
        for (int t = SP_ACT_Q8_0; t < SP_ACT_COUNT; t++) {
            j.qa[t] = j.qa_stride[t] ? (const uint8_t *)c->qact + off : NULL;
            off = (off + (fit / SP_ACT_TILE) * j.qa_stride[t] + 63) & ~(size_t)63;
        }
    }
    /* Units: MM_RB-row blocks for sgemm; for dot products ~64 units per job (>= 16 rows) so that the
     * threads balance without paying a claim per handful of rows. */
    j.gemm = group >= MM_GEMM_MIN_TOK && !all_q;
    j.unit = j.gemm ? MM_RB : (((total_rows / 64) + 15) & ~(int64_t)15);
    if (j.unit < MM_GEMV_UNIT)
        j.unit = MM_GEMV_UNIT;
    for (int i = 0; i < nw; i++)
        j.units[i + 1] = j.units[i] + (w[i]->rows + j.unit - 1) / j.unit;
    int n_units = (int)(swiglu ? j.units[1] : j.units[nw]);
    float *yg[SP_MM_MAX];
    for (int t0 = 0; t0 < n; t0 += group) {
        int g = n - t0 < group ? n - t0 : group;
        j.n = g;
        j.x = x + (size_t)t0 * ldx;
        for (int i = 0; i < nw; i++)
            yg[i] = y[i] + (size_t)t0 * ldy[i];
        j.y = yg;
        if (tile_bytes) {
            j.qx = j.x;
            if (g == 1)
                quant_unit(&j, 0, 0);
            else
                sp_pool_for(c->pool, g, quant_unit, &j);
        }
        if (!j.gemm && cols_q41 && !ggml)   /* per-block sums of x: the m term of every Q4_1 row */
            for (int t = 0; t < g; t++)
                block_sums(j.x + (size_t)t * ldx, cols_q41 / QK, c->xs + (size_t)t * (cols_q41 / QK));
        sp_pool_for(c->pool, n_units, mm_unit, &j);
        if (j.err)
            return sp_error(EINVAL, "matmul: cannot dequantize the weights");
    }
    return 0;
}

int sp_op_matmul(sp_cpu *c, const sp_wmat *w, const float *x, int n, int ldx, float *y, int ldy)
{
    return sp_op_matmul_multi(c, 1, &w, &y, &ldy, x, n, ldx, false);
}
