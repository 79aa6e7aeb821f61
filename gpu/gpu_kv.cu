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
    const unsigned blocks = sp_grid_stride_blocks(total);
    SP_LAUNCH((unsigned)blocks, 256, 0, sp_stream(stream), kv_prepare_kernel)(d.raw, d.n_heads, d.l, lc, d.kernel,
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
    SP_LAUNCH(d.n_rows, TOPK_THREADS, 0, sp_stream(stream), kv_topk_kernel)(d.s, d.n, d.ld, k, d.idx, d.idx_ld);
    return SP_CUDA_LAUNCHED("kv_topk_kernel");
}

/* ---- codebook match / code: one block per vector, one warp per entry ---- */

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

/* Best entry of cb[0..ne) for the unit vector uv (block-wide; every thread gets the result):
 * largest cosine, lowest index on ties, NaN never wins; (-inf, -1) without entries. */
static __device__ void block_best(const float *uv, int d, const uint16_t *cb, int64_t ne, float *sv, long long *si,
                                  float *out_v, int64_t *out_i)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
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
    __syncthreads();   /* sv/si may still be read from a previous call */
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    float v = -INFINITY;
    int64_t i = -1;
    for (int j = 0; j < nw; j++)
        match_take(v, i, sv[j], si[j]);
    *out_v = v;
    *out_i = i;
}

static __global__ void codebook_match_kernel(const float *u, int d, const uint16_t *entries, int64_t ent_stride,
                                             const int64_t *n_ent, float theta, int64_t *best, float *best_cos)
{
    __shared__ float sv[MATCH_THREADS / 32];
    __shared__ long long si[MATCH_THREADS / 32];
    float v;
    int64_t i;
    block_best(u + (int64_t)blockIdx.x * d, d, entries + (int64_t)blockIdx.x * ent_stride, n_ent[blockIdx.x], sv, si,
               &v, &i);
    if (threadIdx.x == 0) {
        best[blockIdx.x] = i >= 0 && v > theta ? i : -1;
        if (best_cos)
            best_cos[blockIdx.x] = v;
    }
}

/* One vector per block: unit/magnitude as sp_codebook_unit (thread 0 sums in the CPU's order),
 * match against the segment's entries and the tail's, pick as tail_code in runtime/kv_segment.c,
 * append when neither is above theta. */
static __global__ void codebook_code_kernel(sp_gpu_codebook_code_desc c)
{
    SP_DYNAMIC_SHARED(float, u);   /* [d] */
    __shared__ float sv[MATCH_THREADS / 32];
    __shared__ long long si[MATCH_THREADS / 32];
    __shared__ double s_m;
    const int d = c.d, v = blockIdx.x;
    const float *x = c.x + (int64_t)v * c.ldx;
    if (threadIdx.x == 0) {
        double ss = 0.0;
        for (int i = 0; i < d; i++)
            ss = __dadd_rn(ss, __dmul_rn((double)x[i], (double)x[i]));
        double m = sqrt(ss);
        s_m = !(m > 0) || !isfinite(m) ? 0.0 : m;
    }
    __syncthreads();
    const double m = s_m;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        u[i] = m > 0 ? (float)__ddiv_rn((double)x[i], m) : 0.0f;
    __syncthreads();
    const int64_t seg_n = c.seg_n[v];
    int64_t *tail_n = c.tail_n + v;
    uint16_t *tail_ent = c.tail_ent + (int64_t)v * c.tail_stride;
    float c1, c2;
    int64_t a, b;
    block_best(u, d, c.seg_cb + c.seg_off[v] * d, seg_n, sv, si, &c1, &a);
    const int64_t tn = *tail_n;   /* read by every thread before thread 0 may change it */
    block_best(u, d, tail_ent, tn, sv, si, &c2, &b);
    a = a >= 0 && c1 > c.theta ? a : -1;
    b = b >= 0 && c2 > c.theta ? b : -1;
    uint32_t idx;
    if (a >= 0 && (b < 0 || c1 >= c2)) {
        idx = (uint32_t)a;
    } else if (b >= 0) {
        idx = (uint32_t)(seg_n + b);
    } else if (tn < c.tail_cap) {
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            tail_ent[tn * d + i] = __half_as_ushort(__float2half_rn(u[i]));
        idx = (uint32_t)(seg_n + tn);
        if (threadIdx.x == 0)
            *tail_n = tn + 1;
    } else {
        idx = UINT32_MAX;   /* no room: the caller sized the tail wrongly */
    }
    if (threadIdx.x == 0) {
        c.idx[(int64_t)v * c.out_stride] = idx;
        c.mag[(int64_t)v * c.out_stride] = __half_as_ushort(__float2half_rn((float)m));
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
    SP_LAUNCH(d.n_vec, MATCH_THREADS, 0, sp_stream(stream), codebook_match_kernel)(d.u, d.d, d.entries, d.ent_stride,
                                                                            d.n_ent, d.theta, d.best, d.best_cos);
    return SP_CUDA_LAUNCHED("codebook_match_kernel");
}

extern "C" int sp_gpu_codebook_code(void *stream, sp_gpu_codebook_code_desc d)
{
    if (d.n_vec < 0 || d.d < 1 || d.d > SP_GPU_CODE_MAX_D || d.ldx < d.d || d.tail_stride < 0 || d.tail_cap < 0 ||
        d.out_stride < 1 || isnan(d.theta))
        return sp_error(EINVAL, "gpu codebook code: bad descriptor (%d vectors, d %d, ldx %lld, cap %lld)", d.n_vec,
                        d.d, (long long)d.ldx, (long long)d.tail_cap);
    if (d.n_vec == 0)
        return 0;
    if (!d.x || !d.seg_cb || !d.seg_off || !d.seg_n || !d.tail_ent || !d.tail_n || !d.idx || !d.mag)
        return sp_error(EINVAL, "gpu codebook code: NULL pointer");
    SP_LAUNCH(d.n_vec, MATCH_THREADS, (size_t)d.d * sizeof(float), sp_stream(stream), codebook_code_kernel)(d);
    return SP_CUDA_LAUNCHED("codebook_code_kernel");
}
