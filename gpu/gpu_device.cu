/* gpu_device.cu - CUDA device discovery, a launch self-check, and the memory / stream / copy
 * primitives that the C side (runtime, tests) uses without including CUDA headers. */
#include <stdio.h>
#include <stdlib.h>

#include "gpu_common.cuh"

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
    int rc = SP_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
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
    if ((rc = SP_CUDA_CHECK(cudaSetDevice(dev))) || (rc = SP_CUDA_CHECK(cudaMalloc(&dx, N * sizeof(float)))) ||
        (rc = SP_CUDA_CHECK(cudaMalloc(&dy, N * sizeof(float)))))
        goto free_dev;
    if ((rc = SP_CUDA_CHECK(cudaMemcpy(dx, hx, N * sizeof(float), cudaMemcpyHostToDevice))) ||
        (rc = SP_CUDA_CHECK(cudaMemcpy(dy, hy, N * sizeof(float), cudaMemcpyHostToDevice))))
        goto free_dev;
    SP_LAUNCH((N + 255) / 256, 256, 0, 0, axpy_kernel)(N, 2.0f, dx, dy);
    if ((rc = SP_CUDA_LAUNCHED("axpy_kernel")) ||
        (rc = SP_CUDA_CHECK(cudaMemcpy(hy, dy, N * sizeof(float), cudaMemcpyDeviceToHost))))
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

extern "C" int sp_gpu_set_device(int dev)
{
    int n = sp_gpu_device_count();
    if (n <= 0)
        return sp_error(ENODEV, "no CUDA device");
    if (dev < 0 || dev >= n)
        return sp_error(EINVAL, "CUDA device %d does not exist (found %d)", dev, n);
    return SP_CUDA_CHECK(cudaSetDevice(dev));
}

extern "C" void *sp_gpu_alloc(size_t size)
{
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size ? size : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is not sticky; keep later checks clean */
        sp_error(ENOMEM, "%s:%d: cudaMalloc(%zu bytes) failed: %s", __FILE__, __LINE__, size,
                 cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

extern "C" void sp_gpu_free(void *p)
{
    if (p)
        cudaFree(p);
}

extern "C" void *sp_gpu_host_alloc(size_t size)
{
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, size ? size : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        sp_error(ENOMEM, "%s:%d: cudaHostAlloc(%zu bytes) failed: %s", __FILE__, __LINE__, size,
                 cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

extern "C" void sp_gpu_host_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

extern "C" int sp_gpu_host_register(void *p, size_t size)
{
    cudaError_t e = cudaHostRegister(p, size, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return sp_error(ENOMEM, "%s:%d: cudaHostRegister(%zu bytes) failed: %s", __FILE__, __LINE__, size,
                        cudaGetErrorString(e));
    }
    return 0;
}

extern "C" void sp_gpu_host_unregister(void *p)
{
    if (p && cudaHostUnregister(p) != cudaSuccess)
        cudaGetLastError();
}

extern "C" int sp_gpu_pci_bus_id(int dev, char *buf, size_t len)
{
    cudaError_t e = cudaDeviceGetPCIBusId(buf, (int)len, dev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return sp_error(ENODEV, "cudaDeviceGetPCIBusId(device %d) failed: %s", dev, cudaGetErrorString(e));
    }
    return 0;
}

extern "C" bool sp_gpu_is_device_ptr(const void *p)
{
    cudaPointerAttributes a;
    if (!p || cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeDevice;
}

extern "C" int sp_gpu_stream_create(void **out)
{
    cudaStream_t s = NULL;
    *out = NULL;
    int rc = SP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    if (rc == 0)
        *out = (void *)s;
    return rc;
}

extern "C" void sp_gpu_stream_destroy(void *stream)
{
    if (stream)
        cudaStreamDestroy(sp_stream(stream));
}

extern "C" int sp_gpu_stream_sync(void *stream)
{
    return SP_CUDA_CHECK(cudaStreamSynchronize(sp_stream(stream)));
}

extern "C" int sp_gpu_memcpy_h2d(void *stream, void *dst, const void *src, size_t n)
{
    return SP_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, sp_stream(stream)));
}

extern "C" int sp_gpu_memcpy_d2h(void *stream, void *dst, const void *src, size_t n)
{
    return SP_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, sp_stream(stream)));
}

extern "C" int sp_gpu_memset(void *stream, void *dst, int byte, size_t n)
{
    return SP_CUDA_CHECK(cudaMemsetAsync(dst, byte, n, sp_stream(stream)));
}
