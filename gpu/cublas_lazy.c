/* cublas_lazy.c - the seven cuBLAS entry points gpu/ uses, resolved from libcublas on first use
 * (dlopen) instead of at program start.
 *
 * Why: merely loading libcublas (and the libcublasLt it pulls in) costs ~210 MiB of resident memory
 * at start-up, measured here on an empty program that links it, before a single call. A CUDA
 * build of spindle runs on the CPU on most machines; with these forwarders it loads cuBLAS only
 * when a BLAS handle is created (prefill GEMM, codebook build on the GPU). Real CUDA builds only:
 * the CUDA emulation provides its own cuBLAS. If the library cannot be loaded, every call answers
 * CUBLAS_STATUS_NOT_INITIALIZED and the status string says which file was tried.
 */
#include <cublas_v2.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

#ifndef SP_CUBLAS_SONAME
#define SP_CUBLAS_SONAME "libcublas.so"
#endif
#ifndef SP_CUBLAS_DIR
#define SP_CUBLAS_DIR ""
#endif

static struct {
    cublasStatus_t (*create)(cublasHandle_t *);
    cublasStatus_t (*destroy)(cublasHandle_t);
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
    cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
    const char *(*status_string)(cublasStatus_t);
    cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float *,
                            const float *, int, const float *, int, const float *, float *, int);
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                              const void *, cudaDataType, int, const void *, cudaDataType, int, const void *,
                              void *, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    int ok;
} lib;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
    void *h = dlopen(SP_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h && SP_CUBLAS_DIR[0])
        h = dlopen(SP_CUBLAS_DIR "/" SP_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return;
    /* POSIX: a void * from dlsym converts to a function pointer */
    *(void **)&lib.create = dlsym(h, "cublasCreate_v2");
    *(void **)&lib.destroy = dlsym(h, "cublasDestroy_v2");
    *(void **)&lib.set_stream = dlsym(h, "cublasSetStream_v2");
    *(void **)&lib.set_math_mode = dlsym(h, "cublasSetMathMode");
    *(void **)&lib.status_string = dlsym(h, "cublasGetStatusString");
    *(void **)&lib.sgemm = dlsym(h, "cublasSgemm_v2");
    *(void **)&lib.gemm_ex = dlsym(h, "cublasGemmEx");
    lib.ok = lib.create && lib.destroy && lib.set_stream && lib.set_math_mode && lib.status_string && lib.sgemm &&
             lib.gemm_ex;
}

static int ready(void)
{
    pthread_once(&once, load);
    return lib.ok;
}

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t *handle)
{
    return ready() ? lib.create(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle)
{
    return ready() ? lib.destroy(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream)
{
    return ready() ? lib.set_stream(handle, stream) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    return ready() ? lib.set_math_mode(handle, mode) : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char *CUBLASWINAPI cublasGetStatusString(cublasStatus_t status)
{
    return ready() ? lib.status_string(status) : "cuBLAS is not loaded (dlopen of " SP_CUBLAS_SONAME " failed)";
}

cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                           int m, int n, int k, const float *alpha, const float *A, int lda,
                                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    return ready() ? lib.sgemm(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
                   : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const void *alpha, const void *A, cudaDataType Atype,
                                         int lda, const void *B, cudaDataType Btype, int ldb, const void *beta,
                                         void *C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                         cublasGemmAlgo_t algo)
{
    return ready() ? lib.gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                                 Ctype, ldc, computeType, algo)
                   : CUBLAS_STATUS_NOT_INITIALIZED;
}
