/* emu_internal.h - what the parts of the CPU emulation share (private to tests/cudaemu/src):
 * stream queues, the error state, the device-allocation registry and the fault report. */
#ifndef CUDAEMU_INTERNAL_H
#define CUDAEMU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <functional>

#include "cuda_runtime.h"

namespace cudaemu {

/* The stream behind a handle (NULL: the legacy default stream), or nullptr for a destroyed or
 * unknown handle. */
struct stream;
stream *resolve(cudaStream_t s);
/* Queue work on a stream; it runs on the stream's host thread in order, after the implicit
 * legacy-stream dependencies. Work is skipped once the context has a sticky error. */
void enqueue(stream *st, std::function<void()> work);
/* Block the caller until everything queued on st so far has run. */
void drain(stream *st);
void drain_all();

/* Record e as the calling thread's last error (unless success) and return it; with a sticky
 * error pending, that error is returned instead. */
cudaError_t ret(cudaError_t e);
/* A kernel or library call faulted: print the message, keep it for cudaemu_last_fault, make the
 * context's error sticky (cudaErrorLaunchFailure, or `e`). Honours CUDAEMU_ABORT=1. */
void fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool faulted();

/* Whether [p, p+n) lies inside one live device allocation. */
bool device_range(const void *p, size_t n);
/* Whether [p, p+n) lies inside one pinned host allocation (cudaHostAlloc/cudaMallocHost). */
bool pinned_range(const void *p, size_t n);

/* Run a grid on the calling (stream) thread; defined in emu_kernel.cpp. */
struct grid_job {
    const char *name;
    const void *fn;
    dim3 grid, block;
    size_t shmem;
    uint64_t launch_id;
    std::function<void()> body;
};
void run_grid(const grid_job &job);
/* The dynamic shared memory limit a kernel opted into (cudaFuncSetAttribute), 48 KiB without. */
size_t func_max_dynamic_shared(const void *fn);
uint64_t seed();

enum : size_t {
    DEFAULT_SHARED = 48 * 1024,
    OPTIN_SHARED = 227 * 1024,
    MAX_THREADS = 1024,
};

}

#endif
