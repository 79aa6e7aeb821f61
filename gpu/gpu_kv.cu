/* gpu_kv.cu - token selection and codebook matching on the device: window-score preparation
 * (division + 1-D pooling), per-row exact top-k, and the decode-time codebook match.
 * Contracts: runtime/kv_select.h, runtime/codebook.h; tests: tests/gpu_test_kv_ops.c. */
#include <math.h>

#include "gpu_select.cuh"

/* ---- scores prepare: one thread per output, the CPU's expressions in the CPU's order ---- */

static __global__ void kv_prepare_kernel(const float *raw, int n_heads, int64_t l, int64_t lc, int kernel,
                                         int pool_type, bool divide, float *out)
{
    const int64_t total = (int64_t)n_heads * lc, r = kernel / 2;
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        int64_t h = t / lc, i = t % lc;
        const float *src = raw + h * l;
        int64_t a = i - r < 0 ? 0 : i - r, b = i + r >= lc ? lc - 1 : i + r;
        if (pool_type == 0) {
            float m = divide ? __fdiv_rn(src[a], (float)(l - a)) : src[a];
            for (int64_t j = a + 1; j <= b; j++) {
                float v = divide ? __fdiv_rn(src[j], (float)(l - j)) : src[j];
                if (v > m)
                    m = v;
            }
            out[t] = m;
        } else {
            float acc = 0.0f;
            for (int64_t j = a; j <= b; j++)
                acc = __fadd_rn(acc, divide ? __fdiv_rn(src[j], (float)(l - j)) : src[j]);
            out[t] = __fdiv_rn(acc, (float)kernel);
        }
    }
}

extern "C" int sp_gpu_kv_scores_prepare(void *stream, sp_gpu_kv_prepare_desc d)
{
    if (d.n_heads < 0 || d.l < 0 || d.window < 0 || d.kernel < 1 || d.kernel % 2 == 0 ||
        (d.pool_type != 0 && d.pool_type != 1))
        return sp_error(EINVAL, "gpu kv prepare: bad descriptor (%d heads, l %lld, window %lld, kernel %d, pool %d)",
                        d.n_heads, (long long)d.l, (long long)d.window, d.kernel, d.pool_type);
    int64_t lc = d.l > d.window ? d.l - d.window : 0, total = (int64_t)d.n_heads * lc;
    if (total == 0)
        return 0;
    if (!d.raw || !d.out)
        return sp_error(EINVAL, "gpu kv prepare: NULL input or output");
    int64_t blocks = (total + 255) / 256;
    if (blocks > (1 << 20))
        blocks = 1 << 20;
    kv_prepare_kernel<<<(unsigned)blocks, 256, 0, sp_stream(stream)>>>(d.raw, d.n_heads, d.l, lc, d.kernel,
                                                                         d.pool_type, d.divide_by_l_minus_a, d.out);
    return SP_CUDA_LAUNCHED("kv_prepare_kernel");
}

/* ---- top-k: one block per row ---- */

enum { TOPK_THREADS = 512 };

static __global__ void kv_topk_kernel(const float *s, int64_t n, int64_t ld, int64_t k, int32_t *idx, int64_t idx_ld)
{
    __shared__ sp_select_smem sm;
    const float *row = s + (int64_t)blockIdx.x * ld;
    int32_t *out = idx + (int64_t)blockIdx.x * idx_ld;
    if (k == n) {   /* everything, as sp_kv_topk's shortcut */
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            out[i] = (int32_t)i;
        return;
    }
    uint64_t kth = sp_block_kth_key(row, n, k, &sm);
    sp_block_compact_ge(row, n, kth, out, &sm);
}

extern "C" int sp_gpu_kv_topk(void *stream, sp_gpu_kv_topk_desc d)
{
    if (d.n_rows < 0 || d.n < 0 || d.n > INT32_MAX || d.ld < d.n)
        return sp_error(EINVAL, "gpu kv topk: bad descriptor (%d rows x %lld, ld %lld)", d.n_rows, (long long)d.n,
                        (long long)d.ld);
    int64_t k = d.k < 0 ? 0 : d.k > d.n ? d.n : d.k;
    if (d.n_rows == 0 || k == 0)
        return 0;
    if (!d.s || !d.idx || d.idx_ld < k)
        return sp_error(EINVAL, "gpu kv topk: NULL pointer or idx_ld %lld < k %lld", (long long)d.idx_ld,
                        (long long)k);
    kv_topk_kernel<<<d.n_rows, TOPK_THREADS, 0, sp_stream(stream)>>>(d.s, d.n, d.ld, k, d.idx, d.idx_ld);
    return SP_CUDA_LAUNCHED("kv_topk_kernel");
}

/* ---- codebook match: one block per vector, one warp per entry ---- */

enum { MATCH_THREADS = 256 };

static __device__ __forceinline__ void match_take(float &bv, int64_t &bi, float v, int64_t i)
{
    if (i < 0 || !(v == v))
        return;
    if (bi < 0 || v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

static __global__ void codebook_match_kernel(const float *u, int d, const uint16_t *entries, int64_t ent_stride,
                                             const int64_t *n_ent, float theta, int64_t *best, float *best_cos)
{
    __shared__ float sv[MATCH_THREADS / 32];
    __shared__ long long si[MATCH_THREADS / 32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float *uv = u + (int64_t)blockIdx.x * d;
    const uint16_t *cb = entries + (int64_t)blockIdx.x * ent_stride;
    const int64_t ne = n_ent[blockIdx.x];
    float bv = -INFINITY;
    int64_t bi = -1;
    /* each warp sees its entries in increasing order: a strict > keeps the lowest index on ties */
    for (int64_t e = w; e < ne; e += nw) {
        const uint16_t *c = cb + e * d;
        float acc = 0.0f;
        for (int i = lane; i < d; i += 32)
            acc += uv[i] * __half2float(__ushort_as_half(c[i]));
        acc = sp_warp_sum(acc);
        if (acc > bv) {
            bv = acc;
            bi = e;
        }
    }
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = -INFINITY;
        int64_t i = -1;
        for (int j = 0; j < nw; j++)
            match_take(v, i, sv[j], si[j]);
        best[blockIdx.x] = i >= 0 && v > theta ? i : -1;
        if (best_cos)
            best_cos[blockIdx.x] = v;
    }
}

extern "C" int sp_gpu_codebook_match(void *stream, sp_gpu_codebook_match_desc d)
{
    if (d.n_vec < 0 || d.d < 1 || d.ent_stride < 0 || isnan(d.theta))
        return sp_error(EINVAL, "gpu codebook match: bad descriptor (%d vectors, d %d, stride %lld)", d.n_vec, d.d,
                        (long long)d.ent_stride);
    if (d.n_vec == 0)
        return 0;
    if (!d.u || !d.entries || !d.n_ent || !d.best)
        return sp_error(EINVAL, "gpu codebook match: NULL pointer");
    codebook_match_kernel<<<d.n_vec, MATCH_THREADS, 0, sp_stream(stream)>>>(d.u, d.d, d.entries, d.ent_stride,
                                                                            d.n_ent, d.theta, d.best, d.best_cos);
    return SP_CUDA_LAUNCHED("codebook_match_kernel");
}
