/* emu_blas.cpp - the cuBLAS subset of the CPU emulation on OpenBLAS (see cublas_v2.h). Each call is
 * checked as cuBLAS checks its arguments, its operand ranges are checked against the device
 * allocations (OpenBLAS is not instrumented, so ASan would not see an overrun inside it), and the
 * product is queued on the handle's stream with alpha/beta read at call time (host pointer mode). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <memory>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emu_internal.h"

struct cudaemu_blas {
    cudaStream_t stream;
    cublasMath_t math;
    cublasPointerMode_t pmode;
};

/* alpha/beta as cuBLAS reads them: now from the host, or when the work runs from the device. */
struct scalar {
    const float *dev;
    float host;
    bool get(const char *call, float *v) const
    {
        if (!dev) {
            *v = host;
            return true;
        }
        if (!cudaemu::device_range(dev, sizeof *dev)) {
            cudaemu::fault(cudaErrorIllegalAddress, "%s: device-mode scalar at %p is not device memory", call, (const void *)dev);
            return false;
        }
        *v = *dev;
        return true;
    }
};
static scalar take(cublasHandle_t h, const void *p)
{
    scalar s{nullptr, 0.0f};
    if (h->pmode == CUBLAS_POINTER_MODE_DEVICE)
        s.dev = (const float *)p;
    else
        s.host = *(const float *)p;
    return s;
}

using namespace cudaemu;

static size_t elt_size(cudaDataType t)
{
    switch (t) {
    case CUDA_R_32F: return 4;
    case CUDA_R_16F: return 2;
    case CUDA_R_16BF: return 2;
    default: return 0;
    }
}

/* Column-major operand of `rows` x `cols` (as stored) with leading dimension ld: the bytes it spans. */
static size_t span(int rows, int cols, int ld, size_t es)
{
    if (rows == 0 || cols == 0)
        return 0;
    return ((size_t)ld * (size_t)(cols - 1) + (size_t)rows) * es;
}

static bool operand_ok(const char *call, const char *what, const void *p, int rows, int cols, int ld, size_t es)
{
    size_t n = span(rows, cols, ld, es);
    if (n == 0 || device_range(p, n))
        return true;
    fault(cudaErrorIllegalAddress, "%s: operand %s (%d x %d, ld %d, %zu bytes at %p) is not inside one device allocation",
          call, what, rows, cols, ld, n, p);
    return false;
}

static float to_f32(const void *p, cudaDataType t, size_t i)
{
    switch (t) {
    case CUDA_R_16F: return __half2float(((const __half *)p)[i]);
    case CUDA_R_16BF: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* An operand widened to a dense fp32 column-major copy (ld = rows). */
static std::vector<float> widen(const void *p, cudaDataType t, int rows, int cols, int ld)
{
    std::vector<float> v((size_t)rows * cols);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++)
            v[(size_t)c * rows + r] = to_f32(p, t, (size_t)c * ld + r);
    return v;
}

static CBLAS_TRANSPOSE tr(cublasOperation_t o) { return o == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

/* cuBLAS's checks for a GEMM: m x n result, inner k; A is m x k (op N) or k x m stored. */
static cublasStatus_t gemm_check(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                 int lda, int ldb, int ldc)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T && ta != CUBLAS_OP_C) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T && tb != CUBLAS_OP_C) || m < 0 || n < 0 || k < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int a_rows = ta == CUBLAS_OP_N ? m : k, b_rows = tb == CUBLAS_OP_N ? k : n;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" {

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    if (!h)
        return CUBLAS_STATUS_INVALID_VALUE;
    *h = new cudaemu_blas{NULL, CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    drain_all();   /* work queued with the handle may still run */
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!resolve(s))
        return CUBLAS_STATUS_INVALID_VALUE;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t h, cudaStream_t *s)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    *s = h->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t mode)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE)
        return CUBLAS_STATUS_INVALID_VALUE;
    h->pmode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetPointerMode(cublasHandle_t h, cublasPointerMode_t *mode)
{
    if (!h || !mode)
        return h ? CUBLAS_STATUS_INVALID_VALUE : CUBLAS_STATUS_NOT_INITIALIZED;
    *mode = h->pmode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    if (!h)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasGetStatusString(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                           float *C, int ldc)
{
    cublasStatus_t st = gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (!alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    stream *s = resolve(h->stream);
    if (!s)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    const scalar sa = take(h, alpha), sb = take(h, beta);
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    enqueue(s, [=] {
        float al, be;
        if (!sa.get("cublasSgemm", &al) || !sb.get("cublasSgemm", &be))
            return;
        if (!operand_ok("cublasSgemm", "A", A, ar, ac, lda, 4) || !operand_ok("cublasSgemm", "B", B, br, bc, ldb, 4) ||
            !operand_ok("cublasSgemm", "C", C, m, n, ldc, 4))
            return;
        if (k == 0) {   /* BLAS would not touch C with beta == 1; cuBLAS scales by beta */
            for (int c = 0; c < n; c++)
                for (int r = 0; r < m; r++)
                    C[(size_t)c * ldc + r] = be == 0.0f ? 0.0f : be * C[(size_t)c * ldc + r];
            return;
        }
        if (be == 0.0f)   /* cuBLAS never reads C when beta is 0 (it may hold NaN) */
            for (int c = 0; c < n; c++)
                memset(C + (size_t)c * ldc, 0, (size_t)m * 4);
        cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, al, A, lda, B, ldb, be, C, ldc);
    });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt,
                            int ldb, const void *beta, void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    cublasStatus_t st = gemm_check(h, ta, tb, m, n, k, lda, ldb, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    if (!alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
        compute != CUBLAS_COMPUTE_32F_FAST_16F && compute != CUBLAS_COMPUTE_32F_FAST_16BF &&
        compute != CUBLAS_COMPUTE_32F_FAST_TF32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!elt_size(at) || !elt_size(bt) || at != bt || (ct != CUDA_R_32F && ct != CUDA_R_16F && ct != CUDA_R_16BF))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    stream *s = resolve(h->stream);
    if (!s)
        return CUBLAS_STATUS_EXECUTION_FAILED;
    /* 32F compute: alpha and beta are floats */
    const scalar sa = take(h, alpha), sb = take(h, beta);
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    enqueue(s, [=] {
        float al, be;
        if (!sa.get("cublasGemmEx", &al) || !sb.get("cublasGemmEx", &be))
            return;
        if (!operand_ok("cublasGemmEx", "A", A, ar, ac, lda, elt_size(at)) ||
            !operand_ok("cublasGemmEx", "B", B, br, bc, ldb, elt_size(bt)) ||
            !operand_ok("cublasGemmEx", "C", C, m, n, ldc, elt_size(ct)))
            return;
        std::vector<float> a = widen(A, at, ar, ac, lda), b = widen(B, bt, br, bc, ldb);
        std::vector<float> c((size_t)m * n, 0.0f);
        if (be != 0.0f)
            for (int j = 0; j < n; j++)
                for (int r = 0; r < m; r++)
                    c[(size_t)j * m + r] = to_f32(C, ct, (size_t)j * ldc + r);
        if (k > 0)
            cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, al, a.data(), ar, b.data(), br, be, c.data(), m);
        else
            for (float &x : c)
                x *= be;
        for (int j = 0; j < n; j++)
            for (int r = 0; r < m; r++) {
                const float v = c[(size_t)j * m + r];
                const size_t i = (size_t)j * ldc + r;
                if (ct == CUDA_R_32F)
                    ((float *)C)[i] = v;
                else if (ct == CUDA_R_16F)
                    ((__half *)C)[i] = __float2half_rn(v);
                else
                    ((__nv_bfloat16 *)C)[i] = __float2bfloat16_rn(v);
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}

}   // extern "C"
