/* gpu_dequant.cu - ggml block formats to fp32 or fp16 on the device (weights are dequantized once
 * at load to the GPU's compute type).
 *
 * DESIGN: one thread per output element; each thread decodes its value from its block (scales are
 * re-read per element, which costs nothing next to the load-time copy that precedes it). fp32 output
 * must be bit-identical to cpu/dequant.c, so every expression keeps ggml's operand order and uses
 * explicit round-to-nearest intrinsics (__fmul_rn, __fadd_rn): nvcc would otherwise contract
 * x*d + m into one fma, which rounds once instead of twice. fp16 output is the fp32 value rounded
 * to nearest even (__float2half_rn), identical to sp_f32_to_fp16 of the CPU value. */
#include "gpu_common.cuh"

#define QK 32
#define QK_K 256

static __device__ __forceinline__ void scale_min_k4(int j, const uint8_t *q, int *d, int *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

/* Value c of a row in format T (sp_ggml_type). */
template <uint32_t T> static __device__ __forceinline__ float dq_elem(const uint8_t *row, int64_t c)
{
    switch (T) {
    case SP_TYPE_F32: return __uint_as_float(sp_ld_u32(row + 4 * c));
    case SP_TYPE_F16: return sp_ld_half(row + 2 * c);
    case SP_TYPE_BF16: return __uint_as_float((uint32_t)sp_ld_u16(row + 2 * c) << 16);
    case SP_TYPE_Q4_0: {
        const uint8_t *b = row + (c / QK) * 18;
        int j = (int)(c % QK), q = b[2 + (j & 15)];
        int x = (j < 16 ? q & 0xF : q >> 4) - 8;
        return __fmul_rn((float)x, sp_ld_half(b));
    }
    case SP_TYPE_Q4_1: {
        const uint8_t *b = row + (c / QK) * 20;
        int j = (int)(c % QK), q = b[4 + (j & 15)];
        int x = j < 16 ? q & 0xF : q >> 4;
        return __fadd_rn(__fmul_rn((float)x, sp_ld_half(b)), sp_ld_half(b + 2));
    }
    case SP_TYPE_Q5_0: {
        const uint8_t *b = row + (c / QK) * 22;
        int j = (int)(c % QK), jj = j & 15, q = b[6 + jj];
        uint32_t qh = sp_ld_u32(b + 2);
        int x = j < 16 ? ((q & 0xF) | (((qh >> jj) << 4) & 0x10)) - 16
                       : ((q >> 4) | ((qh >> (jj + 12)) & 0x10)) - 16;
        return __fmul_rn((float)x, sp_ld_half(b));
    }
    case SP_TYPE_Q5_1: {
        const uint8_t *b = row + (c / QK) * 24;
        int j = (int)(c % QK), jj = j & 15, q = b[8 + jj];
        uint32_t qh = sp_ld_u32(b + 4);
        int x = j < 16 ? (q & 0xF) | (((qh >> jj) << 4) & 0x10) : (q >> 4) | ((qh >> (jj + 12)) & 0x10);
        return __fadd_rn(__fmul_rn((float)x, sp_ld_half(b)), sp_ld_half(b + 2));
    }
    case SP_TYPE_Q8_0: {
        const uint8_t *b = row + (c / QK) * 34;
        return __fmul_rn((float)(int8_t)b[2 + c % QK], sp_ld_half(b));
    }
    case SP_TYPE_Q4_K:
    case SP_TYPE_Q5_K: {
        const bool k5 = T == SP_TYPE_Q5_K;
        const uint8_t *b = row + (c / QK_K) * (k5 ? 176 : 144);
        int e = (int)(c % QK_K), jj = e / 64, w = e % 64, l = w % 32, is = 2 * jj + (w >= 32);
        int sc, m;
        scale_min_k4(is, b + 4, &sc, &m);
        const float d1 = __fmul_rn(sp_ld_half(b), (float)sc);
        const float m1 = __fmul_rn(sp_ld_half(b + 2), (float)m);
        int v;
        if (k5) {
            int ql = b[48 + jj * 32 + l], qh = b[16 + l];
            int u = (w < 32 ? 1 : 2) << (2 * jj);
            v = (w < 32 ? ql & 0xF : ql >> 4) + ((qh & u) ? 16 : 0);
        } else {
            int q = b[16 + jj * 32 + l];
            v = w < 32 ? q & 0xF : q >> 4;
        }
        return __fsub_rn(__fmul_rn(d1, (float)v), m1);
    }
    case SP_TYPE_Q6_K: {
        const uint8_t *b = row + (c / QK_K) * 210;
        int e = (int)(c % QK_K), n = e / 128, r = e % 128, k = r / 32, l = r % 32, is = l / 16;
        const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * n);
        int lo = (k & 1) ? ql[l + 32] : ql[l];
        lo = (k & 2) ? lo >> 4 : lo & 0xF;
        int q = (lo | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
        const float d = sp_ld_half(b + 208);
        return __fmul_rn(__fmul_rn(d, (float)sc[is + 2 * k]), (float)q);
    }
    default: return 0.0f;
    }
}

template <uint32_t T, typename OUT>
static __global__ void dequant_kernel(const uint8_t *src, size_t src_row_bytes, int64_t rows, int64_t cols,
                                      OUT *dst, int64_t dst_ld)
{
    const int64_t total = rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        float v = dq_elem<T>(src + (size_t)r * src_row_bytes, c);
        if constexpr (sizeof(OUT) == 2)
            dst[r * dst_ld + c] = __float2half_rn(v);
        else
            dst[r * dst_ld + c] = v;
    }
}

template <uint32_t T>
static int launch_t(cudaStream_t s, const sp_gpu_dequant_desc &d)
{
    const unsigned blocks = sp_grid_stride_blocks(d.rows * d.cols);
    const uint8_t *src = (const uint8_t *)d.src;
    if (d.dst_type == SP_GPU_F16)
        SP_LAUNCH((unsigned)blocks, 256, 0, s, dequant_kernel<T, __half>)(src, d.src_row_bytes, d.rows, d.cols,
                                                                  (__half *)d.dst, d.dst_ld);
    else
        SP_LAUNCH((unsigned)blocks, 256, 0, s, dequant_kernel<T, float>)(src, d.src_row_bytes, d.rows, d.cols,
                                                                 (float *)d.dst, d.dst_ld);
    return SP_CUDA_LAUNCHED("dequant_kernel");
}

extern "C" bool sp_gpu_dequant_supported(uint32_t type)
{
    return sp_dequant_supported(type);
}

extern "C" int sp_gpu_dequant(void *stream, sp_gpu_dequant_desc d)
{
    if (!sp_gpu_dequant_supported(d.type))
        return sp_error(ENOTSUP, "gpu dequant: tensor type %u (%s) not supported", (unsigned)d.type,
                        sp_ggml_type_name(d.type));
    if (d.rows < 0 || d.cols < 0 || d.cols % sp_type_block_elems(d.type) || d.dst_ld < d.cols ||
        d.src_row_bytes < sp_type_row_bytes(d.type, d.cols) ||
        (d.dst_type != SP_GPU_F32 && d.dst_type != SP_GPU_F16))
        return sp_error(EINVAL, "gpu dequant: bad shape (%s, %lld x %lld, src row %zu bytes, dst ld %lld, dst type %d)",
                        sp_ggml_type_name(d.type), (long long)d.rows, (long long)d.cols, d.src_row_bytes,
                        (long long)d.dst_ld, (int)d.dst_type);
    if (d.rows == 0 || d.cols == 0)
        return 0;
    if (!d.src || !d.dst)
        return sp_error(EINVAL, "gpu dequant: NULL %s", d.src ? "destination" : "source");
    cudaStream_t s = sp_stream(stream);
    switch (d.type) {
    case SP_TYPE_F32: return launch_t<SP_TYPE_F32>(s, d);
    case SP_TYPE_F16: return launch_t<SP_TYPE_F16>(s, d);
    case SP_TYPE_BF16: return launch_t<SP_TYPE_BF16>(s, d);
    case SP_TYPE_Q4_0: return launch_t<SP_TYPE_Q4_0>(s, d);
    case SP_TYPE_Q4_1: return launch_t<SP_TYPE_Q4_1>(s, d);
    case SP_TYPE_Q5_0: return launch_t<SP_TYPE_Q5_0>(s, d);
    case SP_TYPE_Q5_1: return launch_t<SP_TYPE_Q5_1>(s, d);
    case SP_TYPE_Q8_0: return launch_t<SP_TYPE_Q8_0>(s, d);
    case SP_TYPE_Q4_K: return launch_t<SP_TYPE_Q4_K>(s, d);
    case SP_TYPE_Q5_K: return launch_t<SP_TYPE_Q5_K>(s, d);
    case SP_TYPE_Q6_K: return launch_t<SP_TYPE_Q6_K>(s, d);
    default: return sp_error(ENOTSUP, "gpu dequant: tensor type %u not supported", (unsigned)d.type);
    }
}

/* ---- embedding gather ---- */

template <uint32_t T>
static __global__ void get_rows_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, const int32_t *ids,
                                       int n, float *out, int64_t ldo)
{
    const int64_t total = (int64_t)n * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / cols, c = i % cols;
        int32_t r = ids[t];
        out[t * ldo + c] = r >= 0 && r < rows ? dq_elem<T>(w + (size_t)r * row_bytes, c) : NAN;
    }
}

template <uint32_t T>
static int get_rows_t(cudaStream_t s, const sp_gpu_get_rows_desc &d)
{
    const sp_wmat *w = d.w;
    const unsigned blocks = sp_grid_stride_blocks((int64_t)d.n * w->cols);
    SP_LAUNCH((unsigned)blocks, 256, 0, s, get_rows_kernel<T>)((const uint8_t *)w->data, w->row_bytes, w->rows, w->cols,
                                                           d.ids, d.n, d.out, d.ldo);
    return SP_CUDA_LAUNCHED("get_rows_kernel");
}

/* ---- GEMV through the dequantizer: one warp per output row ---- */

enum { GEMV_DQ_WARPS = 8 };

template <uint32_t T>
static __global__ void gemv_dq_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, int n,
                                      const float *x, int64_t ldx, float *y, int64_t ldy, bool accumulate)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * GEMV_DQ_WARPS + threadIdx.x / 32;
    if (r >= rows)
        return;
    const uint8_t *row = w + (size_t)r * row_bytes;
    float acc[SP_GPU_GEMV_MAX_N];
#pragma unroll
    for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++)
        acc[t] = 0.0f;
    for (int64_t c = lane; c < cols; c += 32) {
        float v = dq_elem<T>(row, c);
#pragma unroll
        for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++)
            if (t < n)
                acc[t] += v * x[t * ldx + c];
    }
    sp_gemv_store(acc, n, lane, y, ldy, r, accumulate);
}

template <uint32_t T>
static int gemv_dq_t(cudaStream_t s, const sp_gpu_gemv_desc &d)
{
    unsigned blocks = (unsigned)((d.rows + GEMV_DQ_WARPS - 1) / GEMV_DQ_WARPS);
    SP_LAUNCH(blocks, GEMV_DQ_WARPS * 32, 0, s, gemv_dq_kernel<T>)((const uint8_t *)d.w, d.w_row_bytes, d.rows, d.cols,
                                                               d.n, d.x, d.ldx, d.y, d.ldy, d.accumulate);
    return SP_CUDA_LAUNCHED("gemv_dq_kernel");
}

/* One switch over the types for both launchers. */
#define SP_DQ_DISPATCH(type, fn, ...)                                                 \
    switch (type) {                                                                   \
    case SP_TYPE_F32: return fn<SP_TYPE_F32>(__VA_ARGS__);                            \
    case SP_TYPE_F16: return fn<SP_TYPE_F16>(__VA_ARGS__);                            \
    case SP_TYPE_BF16: return fn<SP_TYPE_BF16>(__VA_ARGS__);                          \
    case SP_TYPE_Q4_0: return fn<SP_TYPE_Q4_0>(__VA_ARGS__);                          \
    case SP_TYPE_Q4_1: return fn<SP_TYPE_Q4_1>(__VA_ARGS__);                          \
    case SP_TYPE_Q5_0: return fn<SP_TYPE_Q5_0>(__VA_ARGS__);                          \
    case SP_TYPE_Q5_1: return fn<SP_TYPE_Q5_1>(__VA_ARGS__);                          \
    case SP_TYPE_Q8_0: return fn<SP_TYPE_Q8_0>(__VA_ARGS__);                          \
    case SP_TYPE_Q4_K: return fn<SP_TYPE_Q4_K>(__VA_ARGS__);                          \
    case SP_TYPE_Q5_K: return fn<SP_TYPE_Q5_K>(__VA_ARGS__);                          \
    case SP_TYPE_Q6_K: return fn<SP_TYPE_Q6_K>(__VA_ARGS__);                          \
    default: break;                                                                   \
    }

extern "C" int sp_gpu_get_rows(void *stream, sp_gpu_get_rows_desc d)
{
    const sp_wmat *w = d.w;
    if (!w || !sp_gpu_dequant_supported(w->type))
        return sp_error(ENOTSUP, "gpu get_rows: tensor type %s not supported", w ? sp_ggml_type_name(w->type) : "?");
    if (w->rows < 1 || w->cols < 1 || d.n < 0 || d.ldo < w->cols || w->cols % sp_type_block_elems(w->type) ||
        w->row_bytes < sp_type_row_bytes(w->type, w->cols) || (d.n > 0 && (!w->data || !d.ids || !d.out)))
        return sp_error(EINVAL, "gpu get_rows: bad descriptor (%s %lld x %lld, %d ids, ldo %lld)",
                        sp_ggml_type_name(w->type), (long long)w->rows, (long long)w->cols, d.n, (long long)d.ldo);
    if (d.n == 0)
        return 0;
    cudaStream_t s = sp_stream(stream);
    SP_DQ_DISPATCH(w->type, get_rows_t, s, d)
    return sp_error(ENOTSUP, "gpu get_rows: tensor type %u not supported", (unsigned)w->type);
}

extern "C" int sp_gpu_gemv_dequant(void *stream, sp_gpu_gemv_desc d)
{
    if (!sp_gpu_dequant_supported(d.w_type))
        return sp_error(ENOTSUP, "gpu gemv: weight type %s not supported", sp_ggml_type_name(d.w_type));
    if (d.rows <= 0 || d.cols <= 0 || d.n < 0 || d.n > SP_GPU_GEMV_MAX_N || d.ldx < d.cols || d.ldy < d.rows ||
        d.cols % sp_type_block_elems(d.w_type) || d.w_row_bytes < sp_type_row_bytes(d.w_type, d.cols) ||
        (unsigned long long)(d.rows + GEMV_DQ_WARPS - 1) / GEMV_DQ_WARPS > 0x7fffffffull || !d.w || !d.x || !d.y)
        return sp_error(EINVAL, "gpu gemv: bad descriptor (%s W %lld x %lld, row %zu bytes, n %d of at most %d)",
                        sp_ggml_type_name(d.w_type), (long long)d.rows, (long long)d.cols, d.w_row_bytes, d.n,
                        SP_GPU_GEMV_MAX_N);
    if (d.n == 0)
        return 0;
    cudaStream_t s = sp_stream(stream);
    SP_DQ_DISPATCH(d.w_type, gemv_dq_t, s, d)
    return sp_error(ENOTSUP, "gpu gemv: weight type %u not supported", (unsigned)d.w_type);
}
