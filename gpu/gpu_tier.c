/* gpu_tier.c - the device tier on a CUDA GPU: an sp_tier_device_ops table whose allocations are
 * cudaMalloc'ed and whose copies run on a dedicated copy stream.
 *
 * DESIGN: tier.h wants copies that are synchronous for the caller, but a blocking cudaMemcpy would
 * serialize against the legacy default stream (every compute launch on it). A private non-blocking
 * stream plus an event wait keeps the copy ordered only against itself. One stream and one event
 * serve all callers, so a mutex makes record+wait atomic (the scheduler's worker thread and the
 * main thread both copy). Each entry sets the device first: the worker thread starts on device 0.
 * Host buffers should be pinned (host pool / sp_gpu_host_alloc); pageable ones still work, staged
 * by the driver at lower bandwidth. */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "gpu.h"
#include "sp_error.h"

typedef struct gpu_tier {
    sp_tier_device_ops ops;   /* first: ops.ctx points back here */
    int dev;
    cudaStream_t copy;
    cudaEvent_t done;
    pthread_mutex_t lock;
} gpu_tier;

static int check(cudaError_t e, const char *expr, const char *file, int line)
{
    if (e == cudaSuccess)
        return 0;
    return sp_error(EIO, "%s:%d: %s failed: %s (%s)", file, line, expr, cudaGetErrorString(e), cudaGetErrorName(e));
}
#define CHECK(expr) check((expr), #expr, __FILE__, __LINE__)

static void *tier_alloc(void *ctx, size_t size)
{
    gpu_tier *t = ctx;
    void *p = NULL;
    if (CHECK(cudaSetDevice(t->dev)))
        return NULL;
    cudaError_t e = cudaMalloc(&p, size ? size : 1);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* out of memory is not sticky; keep later checks clean */
        sp_error(ENOMEM, "%s:%d: cudaMalloc(%zu bytes) on device %d failed: %s", __FILE__, __LINE__, size, t->dev,
                 cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void tier_free(void *ctx, void *ptr, size_t size)
{
    gpu_tier *t = ctx;
    (void)size;
    if (!ptr)
        return;
    cudaSetDevice(t->dev);
    cudaFree(ptr);
}

static int tier_copy(gpu_tier *t, void *dst, const void *src, size_t n, enum cudaMemcpyKind kind)
{
    int rc;
    if (n == 0)
        return 0;
    pthread_mutex_lock(&t->lock);
    if (!(rc = CHECK(cudaSetDevice(t->dev))) && !(rc = CHECK(cudaMemcpyAsync(dst, src, n, kind, t->copy))) &&
        !(rc = CHECK(cudaEventRecord(t->done, t->copy))))
        rc = CHECK(cudaEventSynchronize(t->done));
    pthread_mutex_unlock(&t->lock);
    return rc;
}

static int tier_to_device(void *ctx, void *dst, const void *src, size_t n)
{
    return tier_copy(ctx, dst, src, n, cudaMemcpyHostToDevice);
}

static int tier_to_host(void *ctx, void *dst, const void *src, size_t n)
{
    return tier_copy(ctx, dst, src, n, cudaMemcpyDeviceToHost);
}

const sp_tier_device_ops *sp_gpu_tier_ops_create(int dev)
{
    int n = sp_gpu_device_count();
    if (n <= 0) {
        sp_error(ENODEV, "gpu tier: no CUDA device");
        return NULL;
    }
    if (dev < 0 || dev >= n) {
        sp_error(EINVAL, "gpu tier: CUDA device %d does not exist (found %d)", dev, n);
        return NULL;
    }
    gpu_tier *t = calloc(1, sizeof *t);
    if (!t) {
        sp_error(ENOMEM, "gpu tier: out of memory");
        return NULL;
    }
    t->dev = dev;
    if (CHECK(cudaSetDevice(dev)) || CHECK(cudaStreamCreateWithFlags(&t->copy, cudaStreamNonBlocking)))
        goto free_t;
    if (CHECK(cudaEventCreateWithFlags(&t->done, cudaEventDisableTiming)))
        goto destroy_stream;
    pthread_mutex_init(&t->lock, NULL);
    t->ops = (sp_tier_device_ops){.name = "cuda", .alloc = tier_alloc, .free = tier_free,
                                  .to_device = tier_to_device, .to_host = tier_to_host, .ctx = t};
    return &t->ops;
destroy_stream:
    cudaStreamDestroy(t->copy);
free_t:
    free(t);
    return NULL;
}

void sp_gpu_tier_ops_free(const sp_tier_device_ops *ops)
{
    if (!ops)
        return;
    gpu_tier *t = ops->ctx;
    cudaSetDevice(t->dev);
    cudaEventDestroy(t->done);
    cudaStreamDestroy(t->copy);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
