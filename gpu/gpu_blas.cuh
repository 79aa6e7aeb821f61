/* gpu_blas.cuh - the cuBLAS handle behind sp_gpu_blas and its status check, shared by the files of
 * gpu/ that call cuBLAS (gpu_matmul.cu, gpu_codebook.cu). Private to gpu/. */
#ifndef SP_GPU_BLAS_CUH
#define SP_GPU_BLAS_CUH

#include <cublas_v2.h>

#include "gpu_common.cuh"

struct sp_gpu_blas {
    cublasHandle_t h;
};

static inline int sp_cublas_check(cublasStatus_t s, const char *expr, const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    return sp_error(EIO, "%s:%d: %s failed: %s (%d)", file, line, expr, cublasGetStatusString(s), (int)s);
}
#define SP_CUBLAS_CHECK(expr) sp_cublas_check((expr), #expr, __FILE__, __LINE__)

#endif
