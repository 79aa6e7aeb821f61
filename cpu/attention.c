/* attention.c - causal GQA attention over the KV cache, chunked with an online softmax, plus the
 * window scores SpindleKV's eviction needs.
 *
 * DESIGN
 * - Prefill (any n_q): a task is one KV head g x one block of BQ queries; its R = G*BQ rows (the G
 *   query heads sharing g, times the queries) walk the keys in blocks of BK: S = Q K^T (sgemm), causal
 *   mask, running max m / running sum l per row, O = O*exp(m_old - m_new) + P V (sgemm). Scratch is
 *   R x BK, never n_q x n_keys. Tasks are handed out through an atomic counter, latest (largest)
 *   query blocks first, so two threads finish together.
 * - Window scores: the main pass stores lse = m + log(l) for the last n_window queries; a second pass
 *   (tasks: KV head x key block, so writes never overlap) recomputes those queries' scores and sums
 *   exp(s - lse) per key: exactly the fp32 softmax probabilities, with no n_window x n_keys buffer.
 * - Decode (n_q == 1, no window): keys are split among the threads; each keeps (m, l, o) per head
 *   over its slice and the caller merges the partials (split-K "flash decoding").
 * fp16 caches are converted block by block to fp32 scratch; fp32 caches are read in place.
 * - GGML numerics with an fp16 cache (llama.cpp without flash attention): the query is rounded to
 *   fp16 before K.q, the scores are scaled after the product, and the softmax probabilities are
 *   normalized and then rounded to fp16 before P.V. The main path (exact_*_unit, see the section
 *   "bit for bit" below) also repeats llama.cpp's summation orders and exp, so its outputs are the
 *   oracle's bits; it keeps each query's full score row in the thread scratch. When that does not
 *   fit (very long contexts) or head_dim % 16 != 0, a two-pass fallback rounds the same values but
 *   sums in sgemm order: pass 1 finds each row's max and sum (online), pass 2 recomputes the scores
 *   and accumulates fp16(exp(s - max) / sum) V.
 */
#include "ops.h"

#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <cblas.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "simd.h"
#include "sp_error.h"

enum {
    ATT_ROWS = 256,  /* query rows (heads x queries) per prefill task */
    ATT_BK = 256,    /* keys per block */
};

static int rows_max(int G)
{
    return G > ATT_ROWS ? G : ATT_ROWS;
}

size_t sp_op_attention_thread_scratch(int n_head, int n_kv_head, int head_dim)
{
    int G = n_head / (n_kv_head > 0 ? n_kv_head : 1);
    size_t R = (size_t)rows_max(G), D = (size_t)head_dim;
    return 2 * R * D + R * ATT_BK + 2 * (size_t)ATT_BK * D + 2 * R + 64;
}

size_t sp_op_attention_shared_scratch(int n_threads, int n_head, int head_dim, int max_window)
{
    size_t lse = (size_t)n_head * (size_t)(max_window > 0 ? max_window : 0);
    (void)n_threads;
    size_t part = (size_t)16 /* DEC_SLICES */ * (size_t)n_head * ((size_t)head_dim + 2);
    return lse > part ? lse : part;
}

/* Carve one thread's scratch. */
typedef struct att_scr {
    float *qs, *o, *s, *kf, *vf, *m, *l;
} att_scr;

static att_scr carve(sp_cpu *c, int ith, int G, int D)
{
    size_t R = (size_t)rows_max(G);
    float *p = c->thread_scratch + (size_t)ith * c->thread_floats;
    att_scr a;
    a.qs = p; p += R * D;
    a.o = p; p += R * D;
    a.s = p; p += R * ATT_BK;
    a.kf = p; p += (size_t)ATT_BK * D;
    a.vf = p; p += (size_t)ATT_BK * D;
    a.m = p; p += R;
    a.l = p;
    return a;
}

/* Pointer to keys [p0, p0+n) of KV head g as fp32: in place for an fp32 cache, else converted. */
static const float *kv_block(const sp_attn_desc *a, const void *base, int g, int p0, int n, float *buf)
{
    size_t off = (size_t)g * a->kv_head_stride + (size_t)p0 * a->head_dim;
    if (a->kv_type == SP_KV_F32)
        return (const float *)base + off;
    const uint16_t *h = (const uint16_t *)base + off;
    size_t cnt = (size_t)n * a->head_dim, i = 0;
#ifdef __AVX2__
    for (; i + 8 <= cnt; i += 8)
        _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < cnt; i++)
        buf[i] = sp_fp16_to_f32(h[i]);
    return buf;
}

/* y[i] = exp(x[i] - sub) for i < n, returning the sum. */
static float exp_sub_sum(float *x, int n, float sub)
{
    int i = 0;
    float sum = 0.0f;
#ifdef __AVX2__
    __m256 vs = _mm256_set1_ps(sub), acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = sp_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = sp_hsum256(acc);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - sub);
        sum += x[i];
    }
    return sum;
}

static float row_max(const float *x, int n)
{
    int i = 0;
    float m = -INFINITY;
#ifdef __AVX2__
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
        m = sp_hmax256(vm);
    }
#endif
    for (; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

static void scale_row(float *x, int n, float s)
{
    for (int i = 0; i < n; i++)
        x[i] *= s;
}

typedef struct att_job {
    sp_cpu *c;
    const sp_attn_desc *a;
    bool r16;             /* GGML numerics over an fp16 cache: fp16 queries and probabilities */
    int G, BQ, n_qb;
    int n_slices;         /* decode: key slices */
    int phase;            /* decode_unit_r16: 0 = max and sum, 1 = P.V */
    float *lse;           /* [n_head][n_window] */
} att_job;

/* Round n floats to the nearest fp16 value (ties to even), in place. */
static void round16(float *x, int n)
{
    int i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; i++)
        x[i] = sp_fp16_to_f32(sp_f32_to_fp16(x[i]));
}

/* Gather the queries of KV head g, queries [q0, q0+bq), as rows hh*bq + i: scaled (then the scores
 * need no scaling), or for r16 rounded to fp16 and unscaled (the scores are scaled after K.q, as
 * ggml's softmax does). */
static void gather_q(const sp_attn_desc *a, int G, int g, int q0, int bq, float *qs, bool r16)
{
    int D = a->head_dim;
    for (int hh = 0; hh < G; hh++)
        for (int i = 0; i < bq; i++) {
            const float *src = a->q + (size_t)(q0 + i) * a->ldq + (size_t)(g * G + hh) * D;
            float *dst = qs + ((size_t)hh * bq + i) * D;
            if (r16) {
                memcpy(dst, src, sizeof(float) * D);
                round16(dst, D);
            } else {
                for (int d = 0; d < D; d++)
                    dst[d] = src[d] * a->scale;
            }
        }
}

/* Keys of a block starting at kb (nk keys) that a query at position pos sees (<= 0: none). */
static inline int valid_keys(int pos, int kb, int nk)
{
    return pos - kb + 1 < nk ? pos - kb + 1 : nk;
}

/* One online-softmax step over a row's n scores: the running max *m and sum *l absorb them, srow
 * becomes exp(s - new max). Returns the factor exp(old max - new max) that rescales what was summed
 * before (0 on the first block, where *m = -inf). */
static inline float softmax_step(float *srow, int n, float *m, float *l)
{
    float mx = row_max(srow, n);
    float m_new = mx > *m ? mx : *m;
    float corr = expf(*m - m_new);
    float sum = exp_sub_sum(srow, n, m_new);
    *l = *l * corr + sum;
    *m = m_new;
    return corr;
}

/* Store lse = m + log(l) of query qi, head h, if qi is one of the last n_window queries. */
static void store_lse(const att_job *j, int h, int qi, float lse)
{
    const sp_attn_desc *a = j->a;
    int wi = qi - (a->n_q - a->n_window);
    if (a->n_window > 0 && wi >= 0)
        j->lse[(size_t)h * a->n_window + wi] = lse;
}

/* One prefill task: KV head g x queries [q0, q0+bq), R = G*bq rows (row r = head hh*bq + query r%bq)
 * gathered into sc.qs, with m = -inf, l = 0, o = 0; keys 0..kend-1 are visible to some row. */
typedef struct att_task {
    att_scr sc;
    int g, q0, bq, R, pos_first, kend;
} att_task;

static att_task prefill_begin(const att_job *j, int t, int ith, bool r16)
{
    const sp_attn_desc *a = j->a;
    att_task k;
    int qb = j->n_qb - 1 - t / a->n_kv_head;
    k.sc = carve(j->c, ith, j->G, a->head_dim);
    k.g = t % a->n_kv_head;
    k.q0 = qb * j->BQ;
    k.bq = a->n_q - k.q0 < j->BQ ? a->n_q - k.q0 : j->BQ;
    k.R = j->G * k.bq;
    gather_q(a, j->G, k.g, k.q0, k.bq, k.sc.qs, r16);
    for (int r = 0; r < k.R; r++) {
        k.sc.m[r] = -INFINITY;
        k.sc.l[r] = 0.0f;
    }
    memset(k.sc.o, 0, sizeof(float) * (size_t)k.R * a->head_dim);
    k.pos_first = a->q_pos0 + k.q0;
    k.kend = k.pos_first + k.bq;
    return k;
}

static void prefill_unit(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int G = j->G, D = a->head_dim;
    att_task tk = prefill_begin(j, t, ith, false);
    att_scr sc = tk.sc;
    int g = tk.g, q0 = tk.q0, bq = tk.bq, R = tk.R, pos_first = tk.pos_first, kend = tk.kend;
    for (int kb = 0; kb < kend; kb += ATT_BK) {
        int nk = kend - kb < ATT_BK ? kend - kb : ATT_BK;
        const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
        const float *V = kv_block(a, a->v, g, kb, nk, sc.vf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, D, 1.0f, sc.qs, D, K, D, 0.0f,
                    sc.s, ATT_BK);
        for (int r = 0; r < R; r++) {
            float *srow = sc.s + (size_t)r * ATT_BK;
            int valid = valid_keys(pos_first + r % bq, kb, nk);
            if (valid <= 0) {           /* whole block is in this query's future */
                memset(srow, 0, sizeof(float) * nk);
                continue;
            }
            float corr = softmax_step(srow, valid, &sc.m[r], &sc.l[r]);
            if (valid < nk)
                memset(srow + valid, 0, sizeof(float) * (nk - valid));
            if (corr != 1.0f)
                scale_row(sc.o + (size_t)r * D, D, corr);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, D, nk, 1.0f, sc.s, ATT_BK, V, D, 1.0f,
                    sc.o, D);
    }
    for (int r = 0; r < R; r++) {
        int hh = r / bq, i = r % bq, h = g * G + hh, qi = q0 + i;
        float inv = 1.0f / sc.l[r];
        float *dst = a->out + (size_t)qi * a->ldo + (size_t)h * D;
        for (int d = 0; d < D; d++)
            dst[d] = sc.o[(size_t)r * D + d] * inv;
        store_lse(j, h, qi, sc.m[r] + logf(sc.l[r]));
    }
}

/* prefill_unit for GGML numerics over an fp16 cache (see DESIGN). */
static void prefill_unit_r16(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int G = j->G, D = a->head_dim;
    att_task tk = prefill_begin(j, t, ith, true);
    att_scr sc = tk.sc;
    int g = tk.g, q0 = tk.q0, bq = tk.bq, R = tk.R, pos_first = tk.pos_first, kend = tk.kend;
    for (int pass = 0; pass < 2; pass++)
        for (int kb = 0; kb < kend; kb += ATT_BK) {
            int nk = kend - kb < ATT_BK ? kend - kb : ATT_BK;
            const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, D, a->scale, sc.qs, D, K, D, 0.0f, sc.s,
                        ATT_BK);
            for (int r = 0; r < R; r++) {
                float *srow = sc.s + (size_t)r * ATT_BK;
                int valid = valid_keys(pos_first + r % bq, kb, nk);
                if (valid <= 0) {
                    memset(srow, 0, sizeof(float) * nk);
                    continue;
                }
                if (pass == 0) {
                    softmax_step(srow, valid, &sc.m[r], &sc.l[r]);
                } else {
                    exp_sub_sum(srow, valid, sc.m[r]);
                    scale_row(srow, valid, (float)(1.0 / (double)sc.l[r]));
                    round16(srow, valid);
                    if (valid < nk)
                        memset(srow + valid, 0, sizeof(float) * (nk - valid));
                }
            }
            if (pass == 1) {
                const float *V = kv_block(a, a->v, g, kb, nk, sc.vf);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, D, nk, 1.0f, sc.s, ATT_BK, V, D, 1.0f,
                            sc.o, D);
            }
        }
    for (int r = 0; r < R; r++) {
        int hh = r / bq, i = r % bq, h = g * G + hh, qi = q0 + i;
        memcpy(a->out + (size_t)qi * a->ldo + (size_t)h * D, sc.o + (size_t)r * D, sizeof(float) * D);
        store_lse(j, h, qi, sc.m[r] + logf(sc.l[r]));
    }
}

static void window_unit(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int G = j->G, D = a->head_dim, W = a->n_window;
    int n_keys = a->q_pos0 + a->n_q;
    int wq0 = a->n_q - W;                       /* chunk index of the first window query */
    att_scr sc = carve(j->c, ith, G, D);
    int g = t % a->n_kv_head, kb = (t / a->n_kv_head) * ATT_BK;
    int nk = n_keys - kb < ATT_BK ? n_keys - kb : ATT_BK;
    for (int hh = 0; hh < G; hh++)
        memset(a->win + (size_t)(g * G + hh) * a->win_ld + kb, 0, sizeof(float) * nk);
    const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
    for (int w0 = 0; w0 < W; w0 += j->BQ) {
        int bw = W - w0 < j->BQ ? W - w0 : j->BQ, R = G * bw;
        gather_q(a, G, g, wq0 + w0, bw, sc.qs, j->r16);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, D, j->r16 ? a->scale : 1.0f, sc.qs, D, K, D, 0.0f,
                    sc.s, ATT_BK);
        for (int r = 0; r < R; r++) {
            int hh = r / bw, wi = w0 + r % bw, h = g * G + hh;
            int valid = valid_keys(a->q_pos0 + wq0 + wi, kb, nk);
            if (valid <= 0)
                continue;
            float *srow = sc.s + (size_t)r * ATT_BK;
            exp_sub_sum(srow, valid, j->lse[(size_t)h * W + wi]);
            float *dst = a->win + (size_t)h * a->win_ld + kb;
            if (a->win_w) {
                float w = a->win_w[wi];
                for (int k = 0; k < valid; k++)
                    dst[k] += w * srow[k];
            } else {
                for (int k = 0; k < valid; k++)
                    dst[k] += srow[k];
            }
        }
    }
}

/* Window scores: one task per KV head x key block (the lse of the window queries are in j->lse). */
static void window_pass(sp_cpu *c, const sp_attn_desc *a, att_job *j)
{
    sp_pool_for(c->pool, a->n_kv_head * ((a->q_pos0 + a->n_q + ATT_BK - 1) / ATT_BK), window_unit, j);
}

static float dot_d(const float *a, const float *b, int n)
{
    int i = 0;
    float s = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    s = sp_hsum256(acc);
#endif
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy(float *y, const float *x, float alpha, int n)
{
    int i = 0;
#ifdef __AVX2__
    __m256 va = _mm256_set1_ps(alpha);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

enum {
    DEC_BK = 64,        /* keys per block in a decode slice */
    DEC_SLICES = 16,    /* at most this many key slices (partials) per decode step */
    DEC_MIN_KEYS = 128, /* keys per slice at least */
};

/* s[hh*DEC_BK + k] = q_hh . K[k] for G query heads and nk keys (fp32 rows of D). */
static void dec_scores(const float *q, int G, const float *K, int nk, int D, float *s)
{
    int k = 0;
#ifdef __AVX2__
    if (D == 64) {
        /* 8 keys at a time: one accumulator vector per key, then an 8x8 transpose-add gives the 8
         * scores in one vector (no horizontal sum per dot product). */
        for (; k + 8 <= nk; k += 8)
            for (int hh = 0; hh < G; hh++) {
                const float *qh = q + (size_t)hh * 64;
                __m256 acc[8];
                for (int kk = 0; kk < 8; kk++) {
                    const float *kr = K + (size_t)(k + kk) * 64;
                    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(qh), _mm256_loadu_ps(kr));
                    for (int d = 8; d < 64; d += 8)
                        a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), _mm256_loadu_ps(kr + d), a);
                    acc[kk] = a;
                }
                __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
                __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
                t0 = _mm256_hadd_ps(t0, t1);
                t2 = _mm256_hadd_ps(t2, t3);
                __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
                _mm256_storeu_ps(s + (size_t)hh * DEC_BK + k, r);
            }
    }
#endif
    for (; k < nk; k++)
        for (int hh = 0; hh < G; hh++)
            s[(size_t)hh * DEC_BK + k] = dot_d(q + (size_t)hh * D, K + (size_t)k * D, D);
}

/* o[D] += sum_k p[k] * V[k] */
static void dec_accum(float *o, const float *V, const float *p, int nk, int D)
{
#ifdef __AVX2__
    if (D == 64) {
        __m256 a0 = _mm256_loadu_ps(o), a1 = _mm256_loadu_ps(o + 8), a2 = _mm256_loadu_ps(o + 16),
               a3 = _mm256_loadu_ps(o + 24), a4 = _mm256_loadu_ps(o + 32), a5 = _mm256_loadu_ps(o + 40),
               a6 = _mm256_loadu_ps(o + 48), a7 = _mm256_loadu_ps(o + 56);
        for (int k = 0; k < nk; k++) {
            const float *v = V + (size_t)k * 64;
            __m256 w = _mm256_set1_ps(p[k]);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 24), a3);
            a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 32), a4);
            a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 40), a5);
            a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 48), a6);
            a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 56), a7);
        }
        _mm256_storeu_ps(o, a0); _mm256_storeu_ps(o + 8, a1); _mm256_storeu_ps(o + 16, a2);
        _mm256_storeu_ps(o + 24, a3); _mm256_storeu_ps(o + 32, a4); _mm256_storeu_ps(o + 40, a5);
        _mm256_storeu_ps(o + 48, a6); _mm256_storeu_ps(o + 56, a7);
        return;
    }
#endif
    for (int k = 0; k < nk; k++)
        axpy(o, V + (size_t)k * D, p[k], D);
}

/* Decode slice `slice`'s partial of head h in the shared scratch: [m, l, o[D]]. */
static inline float *dec_part(const sp_cpu *c, const sp_attn_desc *a, int slice, int h)
{
    return c->shared + ((size_t)slice * a->n_head + h) * (size_t)(a->head_dim + 2);
}

/* Keys [*k0, *k1) of decode slice `slice`. */
static void dec_slice(const att_job *j, int slice, int *k0, int *k1)
{
    int n_keys = j->a->q_pos0 + 1;
    *k0 = (int)((int64_t)n_keys * slice / j->n_slices);
    *k1 = (int)((int64_t)n_keys * (slice + 1) / j->n_slices);
}

/* The largest running max of head h over the decode slices' partials. */
static float dec_max(const sp_cpu *c, const sp_attn_desc *a, int n_slices, int h)
{
    float M = -INFINITY;
    for (int t = 0; t < n_slices; t++) {
        float m = dec_part(c, a, t, h)[0];
        M = m > M ? m : M;
    }
    return M;
}

static void decode_unit(void *arg, int slice, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int G = j->G, D = a->head_dim, k0, k1;
    dec_slice(j, slice, &k0, &k1);
    att_scr sc = carve(j->c, ith, G, D);
    for (int g = 0; g < a->n_kv_head; g++) {
        gather_q(a, G, g, 0, 1, sc.qs, false);
        for (int hh = 0; hh < G; hh++) {
            sc.m[hh] = -INFINITY;
            sc.l[hh] = 0.0f;
        }
        memset(sc.o, 0, sizeof(float) * (size_t)G * D);
        for (int kb = k0; kb < k1; kb += DEC_BK) {
            int nk = k1 - kb < DEC_BK ? k1 - kb : DEC_BK;
            const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
            const float *V = kv_block(a, a->v, g, kb, nk, sc.vf);
            dec_scores(sc.qs, G, K, nk, D, sc.s);
            for (int hh = 0; hh < G; hh++) {
                float *srow = sc.s + (size_t)hh * DEC_BK;
                float corr = softmax_step(srow, nk, &sc.m[hh], &sc.l[hh]);
                float *o = sc.o + (size_t)hh * D;
                if (corr != 1.0f)
                    scale_row(o, D, corr);
                dec_accum(o, V, srow, nk, D);
            }
        }
        for (int hh = 0; hh < G; hh++) {
            float *p = dec_part(j->c, a, slice, g * G + hh);
            p[0] = sc.m[hh];
            p[1] = sc.l[hh];
            memcpy(p + 2, sc.o + (size_t)hh * D, sizeof(float) * D);
        }
    }
}

/* Decode with GGML numerics over an fp16 cache, phase `j->phase`: 0 = each slice's per-head max and
 * sum into part[0], part[1]; 1 = with the global max and 1/sum placed in part[0], part[1] by the
 * caller, the slice's sum of fp16(exp(s - max) / sum) V into part[2..]. */
static void decode_unit_r16(void *arg, int slice, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int G = j->G, D = a->head_dim, k0, k1;
    dec_slice(j, slice, &k0, &k1);
    att_scr sc = carve(j->c, ith, G, D);
    for (int g = 0; g < a->n_kv_head; g++) {
        gather_q(a, G, g, 0, 1, sc.qs, true);
        for (int hh = 0; hh < G; hh++) {
            float *p = dec_part(j->c, a, slice, g * G + hh);
            if (j->phase == 0) {
                p[0] = -INFINITY;
                p[1] = 0.0f;
            } else {
                memset(p + 2, 0, sizeof(float) * D);
            }
        }
        for (int kb = k0; kb < k1; kb += DEC_BK) {
            int nk = k1 - kb < DEC_BK ? k1 - kb : DEC_BK;
            const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
            dec_scores(sc.qs, G, K, nk, D, sc.s);
            const float *V = j->phase ? kv_block(a, a->v, g, kb, nk, sc.vf) : NULL;
            for (int hh = 0; hh < G; hh++) {
                float *srow = sc.s + (size_t)hh * DEC_BK;
                float *p = dec_part(j->c, a, slice, g * G + hh);
                scale_row(srow, nk, a->scale);
                if (j->phase == 0) {
                    softmax_step(srow, nk, &p[0], &p[1]);
                } else {
                    exp_sub_sum(srow, nk, p[0]);
                    scale_row(srow, nk, p[1]);
                    round16(srow, nk);
                    dec_accum(p + 2, V, srow, nk, D);
                }
            }
        }
    }
}

static void decode_r16(sp_cpu *c, const sp_attn_desc *a, att_job *j)
{
    int D = a->head_dim;
    j->phase = 0;
    sp_pool_for(c->pool, j->n_slices, decode_unit_r16, j);
    for (int h = 0; h < a->n_head; h++) {
        float M = dec_max(c, a, j->n_slices, h);
        double L = 0.0;
        for (int t = 0; t < j->n_slices; t++) {
            const float *p = dec_part(c, a, t, h);
            if (p[0] != -INFINITY)
                L += (double)expf(p[0] - M) * p[1];
        }
        float inv = (float)(1.0 / L);
        for (int t = 0; t < j->n_slices; t++) {
            float *p = dec_part(c, a, t, h);
            p[0] = M;
            p[1] = inv;
        }
    }
    j->phase = 1;
    sp_pool_for(c->pool, j->n_slices, decode_unit_r16, j);
    for (int h = 0; h < a->n_head; h++) {
        float *dst = a->out + (size_t)h * D;
        memset(dst, 0, sizeof(float) * D);
        for (int t = 0; t < j->n_slices; t++)
            axpy(dst, dec_part(c, a, t, h) + 2, 1.0f, D);
    }
}

/* ---- GGML numerics over an fp16 cache, bit for bit --------------------------------------------
 * llama.cpp (no flash attention, fp16 cache, x86 build with AVX-512 as the oracle's) computes, per
 * query head and query at position P over keys 0..P (masked keys contribute exact zeros):
 *   s_k = scale * dot(fp16(q), K_k)          prefill (>= 2 tokens): tinyBLAS, 16 lanes (lane l takes
 *                                             elements 16c+l, fma chain over c), 512-bit reduction;
 *                                             decode: ggml_vec_dot_f16, 4 x 16 lanes over 64-element
 *                                             steps, reduced as (a0+a2)+(a1+a3), then 512-bit reduction
 *   e_k = exp_ggml(s_k - max), sum = double sum over 16-key chunks of the chunk's 512-bit reduction
 *   p_k = fp16(e_k * (float)(1 / sum))
 *   o_d = sum_k p_k V_kd                       prefill: 16 lanes by key mod 16 (tinyBLAS); decode:
 *                                             64 lanes by key mod 64 (ggml_vec_dot_f16), same reductions
 * A 512-bit reduction of lanes lo[0..7], hi[0..7] equals sp_hsum256(lo + hi). Everything below
 * follows those orders, so the outputs are the oracle's bits. One task = one query head and a block of
 * queries (prefill) or one query head (decode); each task's score row and lane accumulators live in its
 * thread's scratch (exact_fits() says whether they do; otherwise the two-pass path above is used). */
#ifdef __AVX2__
enum { EX_BQ = 16, SP_ATT_MAX_G = 64 };  /* queries per prefill task; GQA group size limit of this path */

static inline float red16(__m256 lo, __m256 hi)
{
    return sp_hsum256(_mm256_add_ps(hi, lo));
}

static inline __m256 ld16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}

/* ggml_vec_dot_f16 order: D a multiple of 16; the part past the last multiple of 64 in double. */
static float dot_vd(const float *q, const uint16_t *k, int D)
{
    __m256 a[8];
    for (int i = 0; i < 8; i++)
        a[i] = _mm256_setzero_ps();
    int np = D & ~63;
    for (int i = 0; i < np; i += 64)
        for (int j = 0; j < 8; j++)
            a[j] = _mm256_fmadd_ps(ld16(k + i + 8 * j), _mm256_loadu_ps(q + i + 8 * j), a[j]);
    __m256 lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
    __m256 hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
    double r = red16(lo, hi);
    for (int i = np; i < D; i++)
        r += (double)(q[i] * sp_fp16_to_f32(k[i]));
    return (float)r;
}

/* s[0..n) scores -> fp16-valued probabilities in place (s has room for n rounded up to 16). Returns
 * max + log(sum) (for window scores). */
static float softmax_ggml(float *s, int n)
{
    int n16 = (n + 15) & ~15;
    for (int i = n; i < n16; i++)
        s[i] = -INFINITY;
    float mx = row_max(s, n);
    __m256 vm = _mm256_set1_ps(mx);
    double sum = 0.0;
    for (int i = 0; i < n16; i += 16) {
        __m256 lo = sp_exp256_ggml(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
        __m256 hi = sp_exp256_ggml(_mm256_sub_ps(_mm256_loadu_ps(s + i + 8), vm));
        _mm256_storeu_ps(s + i, lo);
        _mm256_storeu_ps(s + i + 8, hi);
        sum += (double)red16(lo, hi);
    }
    __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (int i = 0; i < n16; i += 8)
        _mm256_storeu_ps(s + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(s + i), inv),
                                                                _MM_FROUND_TO_NEAREST_INT)));
    return mx + logf((float)sum);
}

/* out[D] = sum_k p[k] V[k] with nl lane accumulators (16: tinyBLAS, 64: ggml_vec_dot_f16) in acc. */
static void pv_lanes(const float *p, const uint16_t *V, int n, int D, int nl, float *acc, float *out)
{
    memset(acc, 0, sizeof(float) * (size_t)nl * D);
    for (int k = 0; k < n; k++) {
        if (p[k] == 0.0f)
            continue;                   /* fma(0, v, a) == a for finite v */
        float *a = acc + (size_t)(k & (nl - 1)) * D;
        const uint16_t *v = V + (size_t)k * D;
        __m256 pk = _mm256_set1_ps(p[k]);
        for (int d = 0; d < D; d += 8)
            _mm256_storeu_ps(a + d, _mm256_fmadd_ps(ld16(v + d), pk, _mm256_loadu_ps(a + d)));
    }
    for (int d = 0; d < D; d += 8) {
        __m256 y[16];
        for (int l = 0; l < 16; l++) {
            const float *a = acc + (size_t)l * D + d;
            if (nl == 64)
                y[l] = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(a + (size_t)32 * D)),
                                     _mm256_add_ps(_mm256_loadu_ps(a + (size_t)16 * D), _mm256_loadu_ps(a + (size_t)48 * D)));
            else
                y[l] = _mm256_loadu_ps(a);
        }
        __m256 t[8];
        for (int l = 0; l < 8; l++)
            t[l] = _mm256_add_ps(y[l + 8], y[l]);
        __m256 r = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[4]), _mm256_add_ps(t[2], t[6])),
                                 _mm256_add_ps(_mm256_add_ps(t[1], t[5]), _mm256_add_ps(t[3], t[7])));
        _mm256_storeu_ps(out + d, r);
    }
}

/* Prefill: tinyBLAS order on fp32 copies of the row (k converted once for the G heads sharing it). */
static inline float dot_tb_f(const float *q, const float *k, int D)
{
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), _mm256_loadu_ps(k + c + 8), hi);
    }
    return red16(lo, hi);
}

static inline void cvt_row(const uint16_t *h, float *f, int D)
{
    for (int d = 0; d < D; d += 8)
        _mm256_storeu_ps(f + d, ld16(h + d));
}

/* 16-lane accumulators acc[16][D] -> out[D] in the 512-bit reduction order. */
static void reduce_lanes16(const float *acc, int D, float *out)
{
    for (int d = 0; d < D; d += 8) {
        __m256 t[8];
        for (int l = 0; l < 8; l++)
            t[l] = _mm256_add_ps(_mm256_loadu_ps(acc + (size_t)(l + 8) * D + d), _mm256_loadu_ps(acc + (size_t)l * D + d));
        __m256 r = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[4]), _mm256_add_ps(t[2], t[6])),
                                 _mm256_add_ps(_mm256_add_ps(t[1], t[5]), _mm256_add_ps(t[3], t[7])));
        _mm256_storeu_ps(out + d, r);
    }
}

static size_t exact_scratch(int n_keys, int D, int nl, int G)
{
    size_t n16 = (size_t)((n_keys + 15) & ~15);
    if (nl == 64)                                   /* decode: one head per task */
        return n16 + 64 * (size_t)D + (size_t)D + 64;
    return (size_t)G * (n16 + 16 * (size_t)D + (size_t)D) + 2 * (size_t)D + 64;
}

static bool exact_fits(const sp_cpu *c, const sp_attn_desc *a)
{
    int n_keys = a->q_pos0 + a->n_q, G = a->n_head / a->n_kv_head;
    return a->head_dim % 16 == 0 && a->head_dim <= 256 && G <= SP_ATT_MAX_G &&
           c->thread_floats >= exact_scratch(n_keys, a->head_dim, a->n_q == 1 ? 64 : 16, G);
}

/* Decode (n_q == 1): one query head per task, ggml_vec_dot_f16 orders. */
static void exact_decode_unit(void *arg, int h, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int D = a->head_dim, g = h / j->G, n = a->q_pos0 + 1;
    float *s = j->c->thread_scratch + (size_t)ith * j->c->thread_floats;
    float *acc = s + ((n + 15) & ~15), *q16 = acc + (size_t)64 * D;
    const uint16_t *K = (const uint16_t *)a->k + (size_t)g * a->kv_head_stride;
    const uint16_t *V = (const uint16_t *)a->v + (size_t)g * a->kv_head_stride;
    memcpy(q16, a->q + (size_t)h * D, sizeof(float) * D);
    round16(q16, D);
    for (int k = 0; k < n; k++)
        s[k] = dot_vd(q16, K + (size_t)k * D, D) * a->scale;
    float lse = softmax_ggml(s, n);
    pv_lanes(s, V, n, D, 64, acc, a->out + (size_t)h * D);
    if (a->n_window > 0)                /* n_window == n_q == 1 */
        j->lse[h] = lse;
}

/* Prefill: the G query heads of KV head g x EX_BQ queries per task, tinyBLAS orders; each key and
 * value row is converted to fp32 once for the G heads. */
static void exact_prefill_unit(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_desc *a = j->a;
    int D = a->head_dim, G = j->G;
    int nqb = (a->n_q + EX_BQ - 1) / EX_BQ;
    int g = t % a->n_kv_head, qb = nqb - 1 - t / a->n_kv_head;
    int q0 = qb * EX_BQ, q1 = a->n_q - q0 < EX_BQ ? a->n_q : q0 + EX_BQ;
    size_t n16 = (size_t)((a->q_pos0 + a->n_q + 15) & ~15);
    float *base = j->c->thread_scratch + (size_t)ith * j->c->thread_floats;
    float *s = base, *acc = s + (size_t)G * n16, *q16 = acc + (size_t)G * 16 * D, *kf = q16 + (size_t)G * D;
    const uint16_t *K = (const uint16_t *)a->k + (size_t)g * a->kv_head_stride;
    const uint16_t *V = (const uint16_t *)a->v + (size_t)g * a->kv_head_stride;
    for (int qi = q0; qi < q1; qi++) {
        int n = a->q_pos0 + qi + 1;
        for (int hh = 0; hh < G; hh++) {
            memcpy(q16 + (size_t)hh * D, a->q + (size_t)qi * a->ldq + (size_t)(g * G + hh) * D, sizeof(float) * D);
            round16(q16 + (size_t)hh * D, D);
        }
        for (int k = 0; k < n; k++) {
            cvt_row(K + (size_t)k * D, kf, D);
            for (int hh = 0; hh < G; hh++)
                s[(size_t)hh * n16 + k] = dot_tb_f(q16 + (size_t)hh * D, kf, D) * a->scale;
        }
        float lse[SP_ATT_MAX_G];
        for (int hh = 0; hh < G; hh++)
            lse[hh] = softmax_ggml(s + (size_t)hh * n16, n);
        memset(acc, 0, sizeof(float) * (size_t)G * 16 * D);
        for (int k = 0; k < n; k++) {
            cvt_row(V + (size_t)k * D, kf, D);
            for (int hh = 0; hh < G; hh++) {
                float p = s[(size_t)hh * n16 + k];
                if (p == 0.0f)
                    continue;           /* fma(0, v, a) == a for finite v */
                float *ac = acc + ((size_t)hh * 16 + (k & 15)) * D;
                __m256 pk = _mm256_set1_ps(p);
                for (int d = 0; d < D; d += 8)
                    _mm256_storeu_ps(ac + d, _mm256_fmadd_ps(_mm256_loadu_ps(kf + d), pk, _mm256_loadu_ps(ac + d)));
            }
        }
        for (int hh = 0; hh < G; hh++) {
            int h = g * G + hh;
            reduce_lanes16(acc + (size_t)hh * 16 * D, D, a->out + (size_t)qi * a->ldo + (size_t)h * D);
            store_lse(j, h, qi, lse[hh]);
        }
    }
}
#endif

int sp_op_attention(sp_cpu *c, const sp_attn_desc *a)
{
    if (a->n_q <= 0 || a->q_pos0 < 0 || a->n_head <= 0 || a->n_kv_head <= 0 || a->head_dim <= 0 ||
        a->n_head % a->n_kv_head != 0)
        return sp_error(EINVAL, "attention: bad shape (n_q=%d pos0=%d heads=%d kv_heads=%d head_dim=%d)",
                        a->n_q, a->q_pos0, a->n_head, a->n_kv_head, a->head_dim);
    if (a->kv_head_stride < (size_t)(a->q_pos0 + a->n_q) * a->head_dim)
        return sp_error(EINVAL, "attention: KV head stride %zu too small for %d keys", a->kv_head_stride,
                        a->q_pos0 + a->n_q);
    if (a->n_window < 0 || a->n_window > a->n_q || (a->n_window > 0 && (!a->win || a->win_ld < a->q_pos0 + a->n_q)))
        return sp_error(EINVAL, "attention: bad window (n_window=%d n_q=%d win_ld=%d)", a->n_window, a->n_q,
                        a->win_ld);
    if (c->thread_floats < sp_op_attention_thread_scratch(a->n_head, a->n_kv_head, a->head_dim) ||
        c->shared_floats < sp_op_attention_shared_scratch(c->n_threads, a->n_head, a->head_dim, a->n_window))
        return sp_error(ENOSPC, "attention: cpu scratch too small for %d heads x %d dims, window %d", a->n_head,
                        a->head_dim, a->n_window);
    att_job j = { .c = c, .a = a, .G = a->n_head / a->n_kv_head, .lse = c->shared,
                  .r16 = c->numerics == SP_NUMERICS_GGML && a->kv_type == SP_KV_F16 };
    j.BQ = ATT_ROWS / j.G > 0 ? ATT_ROWS / j.G : 1;
    j.n_qb = (a->n_q + j.BQ - 1) / j.BQ;
#ifdef __AVX2__
    if (j.r16 && exact_fits(c, a)) {
        if (a->n_q == 1)
            sp_pool_for(c->pool, a->n_head, exact_decode_unit, &j);
        else
            sp_pool_for(c->pool, a->n_kv_head * ((a->n_q + EX_BQ - 1) / EX_BQ), exact_prefill_unit, &j);
        if (a->n_window > 0)
            window_pass(c, a, &j);
        return 0;
    }
#endif

    if (a->n_q == 1 && a->n_window == 0) {
        int D = a->head_dim;
        int nsl = (a->q_pos0 + 1) / DEC_MIN_KEYS;
        j.n_slices = nsl < 1 ? 1 : nsl > DEC_SLICES ? DEC_SLICES : nsl;
        if (j.r16) {
            decode_r16(c, a, &j);
            return 0;
        }
        sp_pool_for(c->pool, j.n_slices, decode_unit, &j);
        for (int h = 0; h < a->n_head; h++) {
            float M = dec_max(c, a, j.n_slices, h), L = 0.0f;
            float *dst = a->out + (size_t)h * D;
            memset(dst, 0, sizeof(float) * D);
            for (int t = 0; t < j.n_slices; t++) {
                const float *p = dec_part(c, a, t, h);
                if (p[0] == -INFINITY)
                    continue;                 /* empty key slice */
                float w = expf(p[0] - M);
                L += w * p[1];
                axpy(dst, p + 2, w, D);
            }
            scale_row(dst, D, 1.0f / L);
        }
        return 0;
    }
    sp_pool_for(c->pool, a->n_kv_head * j.n_qb, j.r16 ? prefill_unit_r16 : prefill_unit, &j);
    if (a->n_window > 0)
        window_pass(c, a, &j);
    return 0;
}
