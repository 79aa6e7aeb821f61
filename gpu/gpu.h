/* gpu.h - the CUDA backend's C interface. Compiled from gpu/*.cu when CUDA is found; without CUDA
 * runtime/gpu_stub.c provides the same functions returning -ENODEV, so callers never #ifdef. */
#ifndef SP_GPU_H
#define SP_GPU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices: >= 0, or -ENODEV when built without CUDA. Never fails loudly:
 * a driver without devices counts as 0. */
int sp_gpu_device_count(void);

/* Describe device `dev` ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"). Returns 0, -ENODEV, or -EINVAL
 * for a bad index (message in sp_last_error()). */
int sp_gpu_describe(int dev, char *buf, size_t size);

/* Self-check used by the gpu test: run a small kernel (y = a*x + y over n floats) on device `dev`
 * and compare with the host. Returns 0, -ENODEV, or -EIO with the CUDA error in sp_last_error(). */
int sp_gpu_selftest(int dev);

#ifdef __cplusplus
}
#endif

#endif
