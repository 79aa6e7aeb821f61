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
static const float *kv_block(const sp_attn_args *a, const void *base, int g, int p0, int n, float *buf)
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
    const sp_attn_args *a;
    int G, BQ, n_qb;
    int n_slices;         /* decode: key slices */
    float *lse;           /* [n_head][n_window] */
} att_job;

/* Gather the scaled queries of KV head g, queries [q0, q0+bq), as rows hh*bq + i. */
static void gather_q(const sp_attn_args *a, int G, int g, int q0, int bq, float *qs)
{
    int D = a->head_dim;
    for (int hh = 0; hh < G; hh++)
        for (int i = 0; i < bq; i++) {
            const float *src = a->q + (size_t)(q0 + i) * a->ldq + (size_t)(g * G + hh) * D;
            float *dst = qs + ((size_t)hh * bq + i) * D;
            for (int d = 0; d < D; d++)
                dst[d] = src[d] * a->scale;
        }
}

static void prefill_unit(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_args *a = j->a;
    int G = j->G, D = a->head_dim;
    att_scr sc = carve(j->c, ith, G, D);
    int qb = j->n_qb - 1 - t / a->n_kv_head, g = t % a->n_kv_head;
    int q0 = qb * j->BQ, bq = a->n_q - q0 < j->BQ ? a->n_q - q0 : j->BQ, R = G * bq;
    gather_q(a, G, g, q0, bq, sc.qs);
    for (int r = 0; r < R; r++) {
        sc.m[r] = -INFINITY;
        sc.l[r] = 0.0f;
    }
    memset(sc.o, 0, sizeof(float) * (size_t)R * D);
    int pos_first = a->q_pos0 + q0, kend = pos_first + bq;
    for (int kb = 0; kb < kend; kb += ATT_BK) {
        int nk = kend - kb < ATT_BK ? kend - kb : ATT_BK;
        const float *K = kv_block(a, a->k, g, kb, nk, sc.kf);
        const float *V = kv_block(a, a->v, g, kb, nk, sc.vf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, D, 1.0f, sc.qs, D, K, D, 0.0f,
                    sc.s, ATT_BK);
        for (int r = 0; r < R; r++) {
            float *srow = sc.s + (size_t)r * ATT_BK;
            int pos = pos_first + r % bq;
            int valid = pos - kb + 1 < nk ? pos - kb + 1 : nk;
            if (valid <= 0) {           /* whole block is in this query's future */
                memset(srow, 0, sizeof(float) * nk);
                continue;
            }
            float mx = row_max(srow, valid);
            float m_new = mx > sc.m[r] ? mx : sc.m[r];
            float corr = expf(sc.m[r] - m_new);   /* m = -inf on the first block: corr = 0 */
            float sum = exp_sub_sum(srow, valid, m_new);
            if (valid < nk)
                memset(srow + valid, 0, sizeof(float) * (nk - valid));
            sc.l[r] = sc.l[r] * corr + sum;
            sc.m[r] = m_new;
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
        int wi = qi - (a->n_q - a->n_window);
        if (a->n_window > 0 && wi >= 0)
            j->lse[(size_t)h * a->n_window + wi] = sc.m[r] + logf(sc.l[r]);
    }
}

static void window_unit(void *arg, int t, int ith)
{
    att_job *j = arg;
    const sp_attn_args *a = j->a;
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
        gather_q(a, G, g, wq0 + w0, bw, sc.qs);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, nk, D, 1.0f, sc.qs, D, K, D, 0.0f,
                    sc.s, ATT_BK);
        for (int r = 0; r < R; r++) {
            int hh = r / bw, wi = w0 + r % bw, h = g * G + hh;
            int pos = a->q_pos0 + wq0 + wi;
            int valid = pos - kb + 1 < nk ? pos - kb + 1 : nk;
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

static void decode_unit(void *arg, int slice, int ith)
{
    att_job *j = arg;
    const sp_attn_args *a = j->a;
    int G = j->G, D = a->head_dim, n_keys = a->q_pos0 + 1;
    int k0 = (int)((int64_t)n_keys * slice / j->n_slices), k1 = (int)((int64_t)n_keys * (slice + 1) / j->n_slices);
    att_scr sc = carve(j->c, ith, G, D);
    float *part = j->c->shared + (size_t)slice * a->n_head * (D + 2);   /* [n_head][m, l, o[D]] */
    for (int g = 0; g < a->n_kv_head; g++) {
        gather_q(a, G, g, 0, 1, sc.qs);
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
                float mx = row_max(srow, nk);
                float m_new = mx > sc.m[hh] ? mx : sc.m[hh];
                float corr = expf(sc.m[hh] - m_new);
                float sum = exp_sub_sum(srow, nk, m_new);
                sc.l[hh] = sc.l[hh] * corr + sum;
                sc.m[hh] = m_new;
                float *o = sc.o + (size_t)hh * D;
                if (corr != 1.0f)
                    scale_row(o, D, corr);
                dec_accum(o, V, srow, nk, D);
            }
        }
        for (int hh = 0; hh < G; hh++) {
            float *p = part + (size_t)(g * G + hh) * (D + 2);
            p[0] = sc.m[hh];
            p[1] = sc.l[hh];
            memcpy(p + 2, sc.o + (size_t)hh * D, sizeof(float) * D);
        }
    }
}

int sp_op_attention(sp_cpu *c, const sp_attn_args *a)
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
    att_job j = { .c = c, .a = a, .G = a->n_head / a->n_kv_head, .lse = c->shared };
    j.BQ = ATT_ROWS / j.G > 0 ? ATT_ROWS / j.G : 1;
    j.n_qb = (a->n_q + j.BQ - 1) / j.BQ;

    if (a->n_q == 1 && a->n_window == 0) {
        int D = a->head_dim;
        int nsl = (a->q_pos0 + 1) / DEC_MIN_KEYS;
        j.n_slices = nsl < 1 ? 1 : nsl > DEC_SLICES ? DEC_SLICES : nsl;
        sp_pool_for(c->pool, j.n_slices, decode_unit, &j);
        for (int h = 0; h < a->n_head; h++) {
            float M = -INFINITY, L = 0.0f;
            for (int t = 0; t < j.n_slices; t++) {
                float m = c->shared[((size_t)t * a->n_head + h) * (D + 2)];
                M = m > M ? m : M;
            }
            float *dst = a->out + (size_t)h * D;
            memset(dst, 0, sizeof(float) * D);
            for (int t = 0; t < j.n_slices; t++) {
                const float *p = c->shared + ((size_t)t * a->n_head + h) * (D + 2);
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
    sp_pool_for(c->pool, a->n_kv_head * j.n_qb, prefill_unit, &j);
    if (a->n_window > 0)
        sp_pool_for(c->pool, a->n_kv_head * ((a->q_pos0 + a->n_q + ATT_BK - 1) / ATT_BK), window_unit, &j);
    return 0;
}
