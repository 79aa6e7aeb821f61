/* ops.c - the CPU execution context (pool + scratch) and the element-wise kernels: RMSNorm, RoPE,
 * SwiGLU and a vectorized exp. Matrix products live in matmul.c, attention in attention.c. */
#include "ops.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "fp16.h"
#include "sp_error.h"
#include "simd.h"

sp_cpu *sp_cpu_new(int n_threads, size_t thread_floats, size_t shared_floats)
{
    sp_cpu *c = calloc(1, sizeof(*c));
    if (!c) {
        sp_error(ENOMEM, "cpu context: out of memory");
        return NULL;
    }
    /* Round each thread's slice to 64 bytes so threads never share a cache line. */
    thread_floats = (thread_floats + 15) & ~(size_t)15;
    c->n_threads = n_threads;
    c->thread_floats = thread_floats;
    c->shared_floats = shared_floats;
    c->pool = sp_pool_new(n_threads);
    if (!c->pool)
        goto fail;
    size_t tbytes = (size_t)n_threads * thread_floats * sizeof(float);
    if (tbytes && !(c->thread_scratch = aligned_alloc(64, (tbytes + 63) & ~(size_t)63))) {
        sp_error(ENOMEM, "cpu context: cannot allocate %zu bytes of thread scratch", tbytes);
        goto fail;
    }
    size_t sbytes = shared_floats * sizeof(float);
    if (sbytes && !(c->shared = aligned_alloc(64, (sbytes + 63) & ~(size_t)63))) {
        sp_error(ENOMEM, "cpu context: cannot allocate %zu bytes of shared scratch", sbytes);
        goto fail;
    }
    c->xs_floats = thread_floats / 16 + 64;
    c->numerics = SP_NUMERICS_EXACT;
    c->qact_bytes = thread_floats * sizeof(float);
    if (c->qact_bytes && !(c->qact = aligned_alloc(64, (c->qact_bytes + 63) & ~(size_t)63))) {
        sp_error(ENOMEM, "cpu context: cannot allocate %zu bytes of quantized activations", c->qact_bytes);
        goto fail;
    }
    if (!(c->xs = malloc(c->xs_floats * sizeof(float)))) {
        sp_error(ENOMEM, "cpu context: out of memory");
        goto fail;
    }
    /* Our own threads call sgemm concurrently on disjoint blocks; letting OpenBLAS start its own
     * threads on top would oversubscribe the cores. */
    openblas_set_num_threads(1);
    return c;

fail:
    sp_cpu_free(c);
    return NULL;
}

void sp_cpu_free(sp_cpu *c)
{
    if (!c)
        return;
    sp_pool_free(c->pool);
    free(c->thread_scratch);
    free(c->shared);
    free(c->xs);
    free(c->qact);
    free(c);
}

void sp_op_rmsnorm(float *y, const float *x, const float *w, int n, float eps)
{
    /* Sum in double like ggml does, so long rows keep full fp32 accuracy. */
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++)
        y[i] = x[i] * scale * w[i];
}

void sp_op_rmsnorm_ggml(float *y, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    float mean = (float)(ss / n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

void sp_rope_table_fill(float *table, int n_pos, int head_dim, double base)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double inv = pow(base, -2.0 * i / head_dim);
        for (int p = 0; p < n_pos; p++) {
            double th = (double)p * inv;
            table[((size_t)p * half + i) * 2 + 0] = (float)cos(th);
            table[((size_t)p * half + i) * 2 + 1] = (float)sin(th);
        }
    }
}

void sp_rope_table_fill_ggml(float *table, int n_pos, int head_dim, float base)
{
    int half = head_dim / 2;
    const float scale = powf(base, -2.0f / (float)head_dim);
    for (int p = 0; p < n_pos; p++) {
        float theta = (float)p;
        float *row = table + (size_t)p * half * 2;
        for (int i = 0; i < half; i++) {
            row[2 * i + 0] = cosf(theta);
            row[2 * i + 1] = sinf(theta);
            theta *= scale;
        }
    }
}

void sp_op_rope(float *x, int n_tok, int n_heads, int head_dim, int ld, const int32_t *pos,
                const float *table, sp_rope_mode mode)
{
    int half = head_dim / 2;
    for (int t = 0; t < n_tok; t++) {
        const float *cs = table + (size_t)pos[t] * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)t * ld + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1];
                int a = mode == SP_ROPE_NORM ? 2 * i : i;
                int b = mode == SP_ROPE_NORM ? 2 * i + 1 : i + half;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c - x1 * s;
                v[b] = x0 * s + x1 * c;
            }
        }
    }
}

void sp_op_swiglu_ggml(float *out, const float *gate, const float *up, int n)
{
    int i = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = sp_exp256_ggml(_mm256_sub_ps(_mm256_setzero_ps(), g));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void sp_op_exp(float *y, const float *x, int n)
{
    int i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, sp_exp256(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++)
        y[i] = expf(x[i]);
}

void sp_op_swiglu(float *out, const float *gate, const float *up, int n)
{
    int i = 0;
#ifdef __AVX2__
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 neg = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = sp_exp256(_mm256_xor_ps(g, neg));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}


/* ---- KV store ---- */

static void kv_store_one(const sp_kv_store_desc *d, void *base, const float *src, int ld)
{
    int D = d->head_dim;
    for (int g = 0; g < d->n_kv_head; g++)
        for (int t = 0; t < d->n; t++) {
            const float *s = src + (size_t)t * ld + (size_t)g * D;
            size_t off = (size_t)g * d->head_stride + (size_t)(d->pos0 + t) * D;
            if (d->kv_type == SP_KV_F32) {
                memcpy((float *)base + off, s, sizeof(float) * D);
                continue;
            }
            uint16_t *o = (uint16_t *)base + off;
            int i = 0;
#ifdef __F16C__
            for (; i + 8 <= D; i += 8)
                _mm_storeu_si128((__m128i *)(o + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
#endif
            for (; i < D; i++)
                o[i] = sp_f32_to_fp16(s[i]);
        }
}

void sp_op_kv_store(const sp_kv_store_desc *d)
{
    kv_store_one(d, d->k_dst, d->k, d->ldk);
    if (d->v_dst)
        kv_store_one(d, d->v_dst, d->v, d->ldv);
}
