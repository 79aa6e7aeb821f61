/* gpu_ops.cu - element-wise kernels on fp32 activations (RMSNorm, RoPE in both layouts, SwiGLU) and
 * greedy sampling (argmax over device logits). Contracts: cpu/ops.h; tolerances: the backend test. */
#include <math.h>

#include "gpu_common.cuh"

/* ---- RMSNorm: one block per row; the sum of squares in double as the CPU reference does ---- */

enum { NORM_THREADS = 256 };

static __global__ void rmsnorm_kernel(const float *x, int64_t ldx, float *y, int64_t ldy, const float *w, int n,
                                      float eps)
{
    __shared__ double part[NORM_THREADS / 32];
    __shared__ float scale_sh;
    const float *xr = x + (int64_t)blockIdx.x * ldx;
    float *yr = y + (int64_t)blockIdx.x * ldy;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        ss += (double)xr[i] * (double)xr[i];
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x / 32] = ss;
    __syncthreads();   /* also orders every read of xr before any write when y aliases x */
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int k = 0; k < (int)(blockDim.x / 32); k++)
            t += part[k];
        scale_sh = (float)(1.0 / sqrt(t / n + (double)eps));
    }
    __syncthreads();
    const float scale = scale_sh;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        yr[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);   /* (x*scale)*w, as the CPU */
}

extern "C" int sp_gpu_rmsnorm(void *stream, sp_gpu_rmsnorm_desc d)
{
    if (d.n_rows < 0 || d.n <= 0 || d.ldx < d.n || d.ldy < d.n || !d.x || !d.y || !d.w)
        return sp_error(EINVAL, "gpu rmsnorm: bad descriptor (%d rows x %d, ldx %lld, ldy %lld)", d.n_rows, d.n,
                        (long long)d.ldx, (long long)d.ldy);
    if (d.n_rows == 0)
        return 0;
    SP_LAUNCH(d.n_rows, NORM_THREADS, 0, sp_stream(stream), rmsnorm_kernel)(d.x, d.ldx, d.y, d.ldy, d.w, d.n, d.eps);
    return SP_CUDA_LAUNCHED("rmsnorm_kernel");
}

/* ---- RoPE: one thread per rotated pair ---- */

static __global__ void rope_kernel(float *x, int n_tok, int n_heads, int head_dim, int64_t ld, const int32_t *pos,
                                   const float *table, int n_pos, double base, int mode)
{
    const int half = head_dim / 2;
    const int64_t total = (int64_t)n_tok * n_heads * half;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < total;
         k += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(k % half);
        int64_t th_ = k / half;
        int h = (int)(th_ % n_heads), t = (int)(th_ / n_heads);
        int p = pos[t];
        float c, s;
        if (table && (p < 0 || p >= n_pos)) {
            c = s = NAN;   /* no such row: the positions come from the device, only the kernel can tell */
        } else if (table) {
            c = table[((int64_t)p * half + i) * 2 + 0];
            s = table[((int64_t)p * half + i) * 2 + 1];
        } else {
            /* as sp_rope_table_fill: the angle in double, then rounded */
            double ang = (double)p * pow(base, -2.0 * i / head_dim);
            c = (float)cos(ang);
            s = (float)sin(ang);
        }
        float *v = x + (int64_t)t * ld + (int64_t)h * head_dim;
        int a = mode == 0 ? 2 * i : i;
        int b = mode == 0 ? 2 * i + 1 : i + half;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

extern "C" int sp_gpu_rope(void *stream, sp_gpu_rope_desc d)
{
    if (d.n_tok < 0 || d.n_heads <= 0 || d.head_dim <= 0 || d.head_dim % 2 || d.ld < (int64_t)d.n_heads * d.head_dim ||
        (d.mode != 0 && d.mode != 1) || !d.x || !d.pos || (!d.table && !(d.base > 0.0)) || (d.table && d.n_pos < 1))
        return sp_error(EINVAL, "gpu rope: bad descriptor (%d tokens, %d heads x %d, ld %lld, mode %d, base %g, "
                        "table of %d positions)", d.n_tok, d.n_heads, d.head_dim, (long long)d.ld, d.mode, d.base,
                        d.n_pos);
    int64_t total = (int64_t)d.n_tok * d.n_heads * (d.head_dim / 2);
    if (total == 0)
        return 0;
    const unsigned blocks = sp_grid_stride_blocks(total);
    SP_LAUNCH((unsigned)blocks, 256, 0, sp_stream(stream), rope_kernel)(d.x, d.n_tok, d.n_heads, d.head_dim, d.ld, d.pos,
                                                                   d.table, d.n_pos, d.base, d.mode);
    return SP_CUDA_LAUNCHED("rope_kernel");
}

/* ---- SwiGLU ---- */

static __global__ void swiglu_kernel(int64_t n, const float *gate, const float *up, float *out)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" int sp_gpu_swiglu(void *stream, sp_gpu_swiglu_desc d)
{
    if (d.n < 0 || (d.n > 0 && (!d.gate || !d.up || !d.out)))
        return sp_error(EINVAL, "gpu swiglu: bad descriptor (n=%lld)", (long long)d.n);
    if (d.n == 0)
        return 0;
    const unsigned blocks = sp_grid_stride_blocks(d.n);
    SP_LAUNCH((unsigned)blocks, 256, 0, sp_stream(stream), swiglu_kernel)(d.n, d.gate, d.up, d.out);
    return SP_CUDA_LAUNCHED("swiglu_kernel");
}

/* ---- argmax: one block per row; (value, index) pairs reduced with "larger, then lower index" ---- */

enum { ARGMAX_THREADS = 1024 };

static __device__ __forceinline__ void arg_take(float &bv, int &bi, float v, int i)
{
    if (i < 0 || v != v)
        return;   /* empty slot or NaN */
    if (bi < 0 || v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

static __global__ void argmax_kernel(const float *logits, int64_t n, int64_t ld, int32_t *out)
{
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int si[ARGMAX_THREADS / 32];
    const float *row = logits + (int64_t)blockIdx.x * ld;
    float bv = -INFINITY;
    int bi = -1;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        arg_take(bv, bi, row[i], (int)i);
    for (int o = 16; o > 0; o >>= 1) {
        float v = __shfl_xor_sync(0xffffffffu, bv, o);
        int i = __shfl_xor_sync(0xffffffffu, bi, o);
        arg_take(bv, bi, v, i);
    }
    if ((threadIdx.x & 31) == 0) {
        sv[threadIdx.x / 32] = bv;
        si[threadIdx.x / 32] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = -INFINITY;
        int idx = -1;
        for (int k = 0; k < (int)(blockDim.x / 32); k++)
            arg_take(v, idx, sv[k], si[k]);
        out[blockIdx.x] = idx;
    }
}

extern "C" int sp_gpu_argmax(void *stream, sp_gpu_argmax_desc d)
{
    if (d.n_rows < 0 || d.n <= 0 || d.n > INT32_MAX || d.ld < d.n || !d.logits || !d.out)
        return sp_error(EINVAL, "gpu argmax: bad descriptor (%d rows x %lld, ld %lld)", d.n_rows, (long long)d.n,
                        (long long)d.ld);
    if (d.n_rows == 0)
        return 0;
    SP_LAUNCH(d.n_rows, ARGMAX_THREADS, 0, sp_stream(stream), argmax_kernel)(d.logits, d.n, d.ld, d.out);
    return SP_CUDA_LAUNCHED("argmax_kernel");
}

/* ---- bias add ---- */

static __global__ void add_bias_kernel(float *y, int64_t ldy, int n, int64_t rows, const float *bias)
{
    const int64_t total = (int64_t)n * rows;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[(i / rows) * ldy + i % rows] += bias[i % rows];
}

extern "C" int sp_gpu_add_bias(void *stream, float *y, int64_t ldy, int n, int64_t rows, const float *bias)
{
    if (n < 0 || rows < 1 || ldy < rows || (n > 0 && (!y || !bias)))
        return sp_error(EINVAL, "gpu bias: bad shape (%d x %lld, ldy %lld)", n, (long long)rows, (long long)ldy);
    int64_t total = (int64_t)n * rows;
    const unsigned blocks = sp_grid_stride_blocks(total);
    if (total == 0)
        return 0;
    SP_LAUNCH((unsigned)blocks, 256, 0, sp_stream(stream), add_bias_kernel)(y, ldy, n, rows, bias);
    return SP_CUDA_LAUNCHED("add_bias_kernel");
}

/* ---- KV store: one thread per stored element ---- */

static __global__ void kv_store_kernel(const float *src, int ld, int n, int pos0, int n_kv_head, int head_dim,
                                       void *dst, size_t head_stride, bool f16)
{
    const int64_t total = (int64_t)n * n_kv_head * head_dim;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int d = (int)(i % head_dim);
        int64_t r = i / head_dim;
        int g = (int)(r % n_kv_head), t = (int)(r / n_kv_head);
        float v = src[(int64_t)t * ld + (int64_t)g * head_dim + d];
        size_t off = (size_t)g * head_stride + (size_t)(pos0 + t) * head_dim + d;
        if (f16)
            ((__half *)dst)[off] = __float2half_rn(v);
        else
            ((float *)dst)[off] = v;
    }
}

extern "C" int sp_gpu_kv_store(void *stream, const sp_kv_store_desc *d)
{
    int64_t total = (int64_t)d->n * d->n_kv_head * d->head_dim;
    const unsigned blocks = sp_grid_stride_blocks(total);
    if (total == 0)
        return 0;
    bool f16 = d->kv_type == SP_KV_F16;
    cudaStream_t s = sp_stream(stream);
    SP_LAUNCH((unsigned)blocks, 256, 0, s, kv_store_kernel)(d->k, d->ldk, d->n, d->pos0, d->n_kv_head, d->head_dim,
                                                           d->k_dst, d->head_stride, f16);
    int rc = SP_CUDA_LAUNCHED("kv_store_kernel (K)");
    if (rc || !d->v_dst)
        return rc;
    SP_LAUNCH((unsigned)blocks, 256, 0, s, kv_store_kernel)(d->v, d->ldv, d->n, d->pos0, d->n_kv_head, d->head_dim,
                                                           d->v_dst, d->head_stride, f16);
    return SP_CUDA_LAUNCHED("kv_store_kernel (V)");
}
