/* gpu_matmul.cu - matrix products against weight matrices: prefill GEMM through cuBLAS on fp16
 * weights (fp32 accumulation) or on fp32 row blocks dequantized from the stored ones, and decode GEMV kernels that read the stored rows directly (fp16,
 * fp32, or the Q8_0 / Q4_1 blocks of the GGUF file, never dequantized to memory).
 *
 * DESIGN (GEMV): decode is bound by weight bandwidth, so each weight byte is read once per call:
 * one warp per output row, lanes stride over the row (16-byte loads for fp16 when aligned; one
 * block per lane for the quantized types), the n <= SP_GPU_GEMV_MAX_N input vectors are all applied
 * while the row is in registers, fp32 accumulation, one warp reduction per vector. Quantized
 * blocks are factored as d*sum(q*x) (+ m*sum(x)), the same algebra as the CPU's block dot. */
#include "gpu_blas.cuh"

extern "C" sp_gpu_blas *sp_gpu_blas_create(void)
{
    sp_gpu_blas *b = (sp_gpu_blas *)calloc(1, sizeof *b);
    if (!b) {
        sp_error(ENOMEM, "gpu blas: out of memory");
        return NULL;
    }
    if (SP_CUBLAS_CHECK(cublasCreate(&b->h)))
        goto free_b;
    /* fp16 tensor-core paths; the accumulation type stays fp32 (CUBLAS_COMPUTE_32F below) */
    if (SP_CUBLAS_CHECK(cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH)))
        goto destroy;
    return b;
destroy:
    cublasDestroy(b->h);
free_b:
    free(b);
    return NULL;
}

extern "C" void sp_gpu_blas_free(sp_gpu_blas *b)
{
    if (!b)
        return;
    cublasDestroy(b->h);
    free(b);
}

enum { SCALE_THREADS = 1024 };

/* scal = {2^k, 2^-k, beta}: k the least exponent with max finite |x| * 2^-k <= 65504 (fp16 max),
 * so the conversion below never turns a finite activation into inf. One block. */
static __global__ void x16_scale_kernel(const float *x, int64_t ldx, int n, int64_t cols, float beta, float *scal)
{
    __shared__ float part[SCALE_THREADS / 32];
    const int64_t total = (int64_t)n * cols;
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
        float v = x[(i / cols) * ldx + i % cols];
        if (isfinite(v))
            m = fmaxf(m, fabsf(v));
    }
    m = sp_warp_max(m);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / 32); w++)
            m = fmaxf(m, part[w]);
        int k = 0;
        while (ldexpf(m, -k) > 65504.0f)
            k++;
        scal[0] = ldexpf(1.0f, k);
        scal[1] = ldexpf(1.0f, -k);
        scal[2] = beta;
    }
}

static __global__ void f32_to_f16_kernel(const float *x, int64_t ldx, int n, int64_t cols, const float *scal,
                                         __half *y)
{
    const int64_t total = (int64_t)n * cols;
    const float inv = scal[1];   /* a power of two: x * inv is exact */
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / cols, c = i % cols;
        y[i] = __float2half_rn(x[t * ldx + c] * inv);
    }
}

extern "C" int sp_gpu_gemm(sp_gpu_blas *b, void *stream, sp_gpu_gemm_desc d)
{
    if (!b || d.rows <= 0 || d.cols <= 0 || d.n < 0 || d.ldw < d.cols || d.ldx < d.cols || d.ldy < d.rows ||
        d.rows > INT32_MAX || d.cols > INT32_MAX || d.ldw > INT32_MAX || d.ldx > INT32_MAX || d.ldy > INT32_MAX ||
        (d.x_type != SP_GPU_F32 && d.x_type != SP_GPU_F16) || !d.w || !d.x || !d.y ||
        (d.x_type == SP_GPU_F32 && !d.x16))
        return sp_error(EINVAL, "gpu gemm: bad descriptor (W %lld x %lld ld %lld, n %d, ldx %lld, ldy %lld, x type %d%s)",
                        (long long)d.rows, (long long)d.cols, (long long)d.ldw, d.n, (long long)d.ldx,
                        (long long)d.ldy, (int)d.x_type, d.x_type == SP_GPU_F32 && !d.x16 ? ", no x16 scratch" : "");
    if (d.n == 0)
        return 0;
    cudaStream_t s = sp_stream(stream);
    int rc;
    if ((rc = SP_CUBLAS_CHECK(cublasSetStream(b->h, s))))
        return rc;
    /* Column-major view: Y^T (rows x n, ld ldy) = op_T(W^T view: cols x rows, ld ldw) * X^T (cols x n). */
    const float alpha = 1.0f, beta = d.accumulate ? 1.0f : 0.0f;
    if (d.x_type == SP_GPU_F16)
        return SP_CUBLAS_CHECK(cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)d.rows, d.n, (int)d.cols, &alpha,
                                            d.w, CUDA_R_16F, (int)d.ldw, d.x, CUDA_R_16F, (int)d.ldx, &beta, d.y,
                                            CUDA_R_32F, (int)d.ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    float *scal = (float *)d.x16;
    __half *x16 = (__half *)((uint8_t *)d.x16 + SP_GPU_GEMM_X16_HEAD);
    const unsigned blocks = sp_grid_stride_blocks((int64_t)d.n * d.cols);
    SP_LAUNCH(1, SCALE_THREADS, 0, s, x16_scale_kernel)((const float *)d.x, d.ldx, d.n, d.cols, beta, scal);
    if ((rc = SP_CUDA_LAUNCHED("x16_scale_kernel")))
        return rc;
    SP_LAUNCH((unsigned)blocks, 256, 0, s, f32_to_f16_kernel)((const float *)d.x, d.ldx, d.n, d.cols, scal, x16);
    if ((rc = SP_CUDA_LAUNCHED("f32_to_f16_kernel")))
        return rc;
    /* alpha = 2^k undoes the activations' scale; alpha and beta are read on the device */
    if ((rc = SP_CUBLAS_CHECK(cublasSetPointerMode(b->h, CUBLAS_POINTER_MODE_DEVICE))))
        return rc;
    rc = SP_CUBLAS_CHECK(cublasGemmEx(b->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)d.rows, d.n, (int)d.cols, scal, d.w,
                                      CUDA_R_16F, (int)d.ldw, x16, CUDA_R_16F, (int)d.cols, scal + 2, d.y, CUDA_R_32F,
                                      (int)d.ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    int rc2 = SP_CUBLAS_CHECK(cublasSetPointerMode(b->h, CUBLAS_POINTER_MODE_HOST));
    return rc ? rc : rc2;
}

/* ---- prefill on dequantized row blocks ---- */

extern "C" int sp_gpu_matmul_dq(sp_gpu_blas *b, void *stream, sp_gpu_matmul_dq_desc dq)
{
    const sp_gpu_gemv_desc &d = dq.p;
    int64_t block_rows = d.cols > 0 ? (int64_t)(dq.scratch_floats / (size_t)d.cols) : 0;
    if (!b || !sp_gpu_dequant_supported(d.w_type) || d.rows <= 0 || d.cols <= 0 || d.n < 0 || d.ldx < d.cols ||
        d.ldy < d.rows || d.cols % sp_type_block_elems(d.w_type) || d.w_row_bytes < sp_type_row_bytes(d.w_type, d.cols) ||
        d.rows > INT32_MAX || d.cols > INT32_MAX || d.ldx > INT32_MAX || d.ldy > INT32_MAX || block_rows < 1 ||
        !d.w || !d.x || !d.y || !dq.scratch)
        return sp_error(EINVAL, "gpu matmul_dq: bad descriptor (%s W %lld x %lld, row %zu bytes, n %d, ldx %lld, ldy %lld, "
                        "scratch %zu floats)", sp_ggml_type_name(d.w_type), (long long)d.rows, (long long)d.cols,
                        d.w_row_bytes, d.n, (long long)d.ldx, (long long)d.ldy, dq.scratch_floats);
    if (d.n == 0)
        return 0;
    cudaStream_t s = sp_stream(stream);
    int rc;
    if ((rc = SP_CUBLAS_CHECK(cublasSetStream(b->h, s))))
        return rc;
    const float alpha = 1.0f, beta = d.accumulate ? 1.0f : 0.0f;
    for (int64_t r0 = 0; r0 < d.rows; r0 += block_rows) {
        int64_t nr = d.rows - r0 < block_rows ? d.rows - r0 : block_rows;
        sp_gpu_dequant_desc q = {};
        q.type = d.w_type;
        q.rows = nr;
        q.cols = d.cols;
        q.src = (const uint8_t *)d.w + (size_t)r0 * d.w_row_bytes;
        q.src_row_bytes = d.w_row_bytes;
        q.dst = dq.scratch;
        q.dst_ld = d.cols;
        q.dst_type = SP_GPU_F32;
        if ((rc = sp_gpu_dequant(stream, q)) < 0)
            return rc;
        /* column-major: Y^T block (nr x n, ld ldy) = (W block, cols x nr col-major)^T * X^T (cols x n) */
        if ((rc = SP_CUBLAS_CHECK(cublasSgemm(b->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, d.n, (int)d.cols, &alpha,
                                              dq.scratch, (int)d.cols, d.x, (int)d.ldx, &beta, d.y + r0, (int)d.ldy))))
            return rc;
    }
    return 0;
}

/* ---- GEMV ---- */

enum { GEMV_WARPS = 8 };

/* acc[t] += dot(row segment, x_t segment) for the lane's share of the row. */
template <uint32_t WT, bool VEC>
static __device__ __forceinline__ void gemv_row(const uint8_t *row, int64_t cols, int n, const float *x, int64_t ldx,
                                                int lane, float *acc)
{
    if (WT == SP_TYPE_F16 && VEC) {
        const uint4 *w4 = (const uint4 *)row;
        for (int64_t k = lane; k < cols / 8; k += 32) {
            uint4 u = w4[k];
            const __half2 *h2 = (const __half2 *)&u;
            float w[8];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float2 f = __half22float2(h2[e]);
                w[2 * e] = f.x;
                w[2 * e + 1] = f.y;
            }
#pragma unroll
            for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++) {
                if (t >= n)
                    break;
                const float4 *x4 = (const float4 *)(x + t * ldx + 8 * k);
                float4 a = x4[0], b = x4[1];
                acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z +
                          w[7] * b.w;
            }
        }
    } else if (WT == SP_TYPE_F16 || WT == SP_TYPE_F32) {
        for (int64_t c = lane; c < cols; c += 32) {
            float w = WT == SP_TYPE_F16 ? __half2float(((const __half *)row)[c]) : ((const float *)row)[c];
#pragma unroll
            for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++) {
                if (t >= n)
                    break;
                acc[t] += w * x[t * ldx + c];
            }
        }
    } else if (WT == SP_TYPE_Q8_0) {
        for (int64_t b = lane; b < cols / 32; b += 32) {
            const uint8_t *blk = row + b * 34;
            const float dd = sp_ld_half(blk);
            int8_t q[32];
#pragma unroll
            for (int j = 0; j < 32; j++)
                q[j] = (int8_t)blk[2 + j];
#pragma unroll
            for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++) {
                if (t >= n)
                    break;
                const float *xb = x + t * ldx + b * 32;
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 32; j++)
                    s += (float)q[j] * xb[j];
                acc[t] += dd * s;
            }
        }
    } else if (WT == SP_TYPE_Q4_1) {
        for (int64_t b = lane; b < cols / 32; b += 32) {
            const uint8_t *blk = row + b * 20;
            const float dd = sp_ld_half(blk), mm = sp_ld_half(blk + 2);
            uint8_t qs[16];
#pragma unroll
            for (int j = 0; j < 16; j++)
                qs[j] = blk[4 + j];
#pragma unroll
            for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++) {
                if (t >= n)
                    break;
                const float *xb = x + t * ldx + b * 32;
                float sq = 0.0f, sx = 0.0f;
#pragma unroll
                for (int j = 0; j < 16; j++) {
                    float x0 = xb[j], x1 = xb[j + 16];
                    sq += (float)(qs[j] & 0xF) * x0 + (float)(qs[j] >> 4) * x1;
                    sx += x0 + x1;
                }
                acc[t] += dd * sq + mm * sx;
            }
        }
    }
}

template <uint32_t WT, bool VEC>
static __global__ void gemv_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, int n, const float *x,
                                   int64_t ldx, float *y, int64_t ldy, bool accumulate)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    if (r >= rows)
        return;
    float acc[SP_GPU_GEMV_MAX_N];
#pragma unroll
    for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++)
        acc[t] = 0.0f;
    gemv_row<WT, VEC>(w + (size_t)r * row_bytes, cols, n, x, ldx, lane, acc);
    sp_gemv_store(acc, n, lane, y, ldy, r, accumulate);
}

/* The types with a block kernel here; sp_gpu_gemv takes every sp_gpu_dequant_supported type. */
extern "C" bool sp_gpu_gemv_supported(uint32_t w_type)
{
    return w_type == SP_TYPE_F16 || w_type == SP_TYPE_F32 || w_type == SP_TYPE_Q8_0 || w_type == SP_TYPE_Q4_1;
}

template <uint32_t WT, bool VEC>
static int gemv_launch(cudaStream_t s, const sp_gpu_gemv_desc &d)
{
    unsigned blocks = (unsigned)((d.rows + GEMV_WARPS - 1) / GEMV_WARPS);
    SP_LAUNCH(blocks, GEMV_WARPS * 32, 0, s, gemv_kernel<WT, VEC>)((const uint8_t *)d.w, d.w_row_bytes, d.rows, d.cols, d.n,
                                                            d.x, d.ldx, d.y, d.ldy, d.accumulate);
    return SP_CUDA_LAUNCHED("gemv_kernel");
}

extern "C" int sp_gpu_gemv(void *stream, sp_gpu_gemv_desc d)
{
    if (!sp_gpu_gemv_supported(d.w_type))
        return sp_gpu_gemv_dequant(stream, d);   /* every other stored type, through the dequantizer */
    if (d.rows <= 0 || d.cols <= 0 || d.n < 0 || d.n > SP_GPU_GEMV_MAX_N || d.ldx < d.cols || d.ldy < d.rows ||
        d.cols % sp_type_block_elems(d.w_type) || d.w_row_bytes < sp_type_row_bytes(d.w_type, d.cols) ||
        (unsigned long long)(d.rows + GEMV_WARPS - 1) / GEMV_WARPS > 0x7fffffffull || !d.w || !d.x || !d.y)
        return sp_error(EINVAL, "gpu gemv: bad descriptor (%s W %lld x %lld, row %zu bytes, n %d of at most %d, ldx %lld, ldy %lld)",
                        sp_ggml_type_name(d.w_type), (long long)d.rows, (long long)d.cols, d.w_row_bytes, d.n,
                        SP_GPU_GEMV_MAX_N, (long long)d.ldx, (long long)d.ldy);
    if (d.n == 0)
        return 0;
    cudaStream_t s = sp_stream(stream);
    uintptr_t wa = (uintptr_t)d.w, xa = (uintptr_t)d.x;
    switch (d.w_type) {
    case SP_TYPE_F16:
        if (wa % 2 || d.w_row_bytes % 2)
            return sp_error(ENOTSUP, "gpu gemv: fp16 weights must be 2-byte aligned");
        if (wa % 16 == 0 && d.w_row_bytes % 16 == 0 && d.cols % 8 == 0 && xa % 16 == 0 && d.ldx % 4 == 0)
            return gemv_launch<SP_TYPE_F16, true>(s, d);
        return gemv_launch<SP_TYPE_F16, false>(s, d);
    case SP_TYPE_F32:
        if (wa % 4 || d.w_row_bytes % 4)
            return sp_error(ENOTSUP, "gpu gemv: fp32 weights must be 4-byte aligned");
        return gemv_launch<SP_TYPE_F32, false>(s, d);
    case SP_TYPE_Q8_0: return gemv_launch<SP_TYPE_Q8_0, false>(s, d);
    case SP_TYPE_Q4_1: return gemv_launch<SP_TYPE_Q4_1, false>(s, d);
    default: return sp_error(ENOTSUP, "gpu gemv: weight type %u not supported", (unsigned)d.w_type);
    }
}
