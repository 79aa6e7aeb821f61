/* gpu_device.cu - CUDA device discovery and a launch self-check (the first piece of the backend). */
#include <cuda_runtime.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu.h"
#include "sp_error.h"

/* Check a CUDA call where it is made; log the expression and file:line into the error channel. */
static int cuda_check(cudaError_t e, const char *expr, const char *file, int line)
{
    if (e == cudaSuccess)
        return 0;
    return sp_error(EIO, "%s:%d: %s failed: %s", file, line, expr, cudaGetErrorString(e));
}
#define CUDA_CHECK(expr) cuda_check((expr), #expr, __FILE__, __LINE__)

extern "C" int sp_gpu_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver / no device" error */
        return 0;
    }
    return n;
}

extern "C" int sp_gpu_describe(int dev, char *buf, size_t size)
{
    int n = sp_gpu_device_count();
    if (n <= 0)
        return sp_error(ENODEV, "no CUDA device");
    if (dev < 0 || dev >= n)
        return sp_error(EINVAL, "CUDA device %d does not exist (found %d)", dev, n);
    cudaDeviceProp p;
    int rc = CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    if (rc)
        return rc;
    snprintf(buf, size, "%s, sm_%d%d, %.1f GiB", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}

static __global__ void axpy_kernel(int n, float a, const float *x, float *y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + y[i];
}

extern "C" int sp_gpu_selftest(int dev)
{
    enum { N = 1 << 16 };
    float *hx = NULL, *hy = NULL, *dx = NULL, *dy = NULL;
    int rc = 0;
    if (sp_gpu_device_count() <= dev)
        return sp_error(ENODEV, "no CUDA device %d", dev);
    hx = (float *)malloc(N * sizeof(float));
    hy = (float *)malloc(N * sizeof(float));
    if (!hx || !hy) {
        rc = sp_error(ENOMEM, "selftest: out of host memory");
        goto free_host;
    }
    for (int i = 0; i < N; i++) {
        hx[i] = (float)i;
        hy[i] = 1.0f;
    }
    if ((rc = CUDA_CHECK(cudaSetDevice(dev))) || (rc = CUDA_CHECK(cudaMalloc(&dx, N * sizeof(float)))) ||
        (rc = CUDA_CHECK(cudaMalloc(&dy, N * sizeof(float)))))
        goto free_dev;
    if ((rc = CUDA_CHECK(cudaMemcpy(dx, hx, N * sizeof(float), cudaMemcpyHostToDevice))) ||
        (rc = CUDA_CHECK(cudaMemcpy(dy, hy, N * sizeof(float), cudaMemcpyHostToDevice))))
        goto free_dev;
    axpy_kernel<<<(N + 255) / 256, 256>>>(N, 2.0f, dx, dy);
    if ((rc = CUDA_CHECK(cudaGetLastError())) ||
        (rc = CUDA_CHECK(cudaMemcpy(hy, dy, N * sizeof(float), cudaMemcpyDeviceToHost))))
        goto free_dev;
    for (int i = 0; i < N; i++)
        if (hy[i] != 2.0f * (float)i + 1.0f) {
            rc = sp_error(EIO, "selftest: y[%d] = %g, expected %g", i, hy[i], 2.0f * i + 1.0f);
            break;
        }
free_dev:
    cudaFree(dx);
    cudaFree(dy);
free_host:
    free(hx);
    free(hy);
    return rc;
}
