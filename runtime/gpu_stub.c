/* gpu_stub.c - the one place that knows whether the CUDA backend was built: without it, the gpu.h
 * functions exist and report -ENODEV, so no other file needs an #ifdef. */
#ifndef SPINDLE_WITH_CUDA
#include <errno.h>

#include "gpu.h"
#include "sp_error.h"

int sp_gpu_device_count(void) { return -ENODEV; }

int sp_gpu_describe(int dev, char *buf, size_t size)
{
    (void)dev;
    if (size)
        buf[0] = '\0';
    return sp_error(ENODEV, "spindle was built without CUDA (configure with -DSPINDLE_CUDA=ON)");
}

int sp_gpu_selftest(int dev)
{
    (void)dev;
    return sp_error(ENODEV, "spindle was built without CUDA");
}
#else
typedef int sp_gpu_stub_unused; /* ISO C forbids an empty translation unit */
#endif
