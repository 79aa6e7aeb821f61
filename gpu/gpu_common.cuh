/* gpu_common.cuh - what every CUDA file of the backend shares: the error checks (expression and
 * file:line into the sp_error channel) and the C headers of the rest of the library, which have no
 * extern "C" guards of their own. Private to gpu/. */
#ifndef SP_GPU_COMMON_CUH
#define SP_GPU_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <errno.h>
#include <stdint.h>

extern "C" {
#include "dequant.h"
#include "gguf.h"
#include "sp_error.h"
}
#include "gpu.h"

/* Check a CUDA call where it is made: 0, or -EIO with "file:line: expr failed: reason". */
static inline int sp_cuda_check(cudaError_t e, const char *expr, const char *file, int line)
{
    if (e == cudaSuccess)
        return 0;
    return sp_error(EIO, "%s:%d: %s failed: %s (%s)", file, line, expr, cudaGetErrorString(e),
                    cudaGetErrorName(e));
}
#define SP_CUDA_CHECK(expr) sp_cuda_check((expr), #expr, __FILE__, __LINE__)

/* After every kernel launch: a bad configuration (too much shared memory, grid too large) is only
 * reported by cudaGetLastError. `what` names the kernel. */
#define SP_CUDA_LAUNCHED(what) sp_cuda_check(cudaGetLastError(), "launch " what, __FILE__, __LINE__)

static inline cudaStream_t sp_stream(void *s) { return (cudaStream_t)s; }

/* Blocks of 256 threads for a grid-stride loop over `total` elements: enough to fill an H100/H200
 * (132 SMs x 8 resident blocks of 256 threads), no more. More blocks only repeat the index set-up
 * on a GPU, and under the CPU emulation every block costs a set-up of its own (its threads, its
 * shared memory refill), which made those launches ~10x slower there. */
static const int64_t SP_GRID_STRIDE_MAX_BLOCKS = 132 * 8;
static inline unsigned sp_grid_stride_blocks(int64_t total)
{
    int64_t b = (total + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > SP_GRID_STRIDE_MAX_BLOCKS ? SP_GRID_STRIDE_MAX_BLOCKS : b);
}

/* Kernel launches and dynamic shared memory, spelled so that the host compiler can build these
 * files against the CPU emulation of CUDA (tests/cudaemu, which defines CUDAEMU; SPINDLE_CUDA_EMU):
 * SP_LAUNCH(grid, block, shmem, stream, kernel)(args...) is kernel<<<grid, block, shmem, stream>>>
 * (args...) under nvcc; SP_DYNAMIC_SHARED(T, name) is extern __shared__ T name[]. */
#ifdef CUDAEMU
#define SP_LAUNCH(grid, block, shmem, stream, ...) CUDAEMU_LAUNCH(grid, block, shmem, stream, __VA_ARGS__)
#define SP_DYNAMIC_SHARED(type, name) CUDAEMU_DYNAMIC_SHARED(type, name)
#else
#define SP_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
#define SP_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* Byte-aligned little-endian loads: GGUF blocks are only byte-aligned (20-byte Q4_1, 34-byte Q8_0). */
static __device__ __forceinline__ uint16_t sp_ld_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static __device__ __forceinline__ uint32_t sp_ld_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static __device__ __forceinline__ float sp_ld_half(const uint8_t *p)
{
    return __half2float(__ushort_as_half(sp_ld_u16(p)));
}

static __device__ __forceinline__ float sp_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The end of a GEMV row: lane 0 writes (or adds) each token's warp-reduced sum to y[t*ldy + r]. */
static __device__ __forceinline__ void sp_gemv_store(const float *acc, int n, int lane, float *y, int64_t ldy,
                                                     int64_t r, bool accumulate)
{
#pragma unroll
    for (int t = 0; t < SP_GPU_GEMV_MAX_N; t++) {
        if (t >= n)
            break;
        float s = sp_warp_sum(acc[t]);
        if (lane == 0) {
            float *dst = y + t * ldy + r;
            *dst = accumulate ? *dst + s : s;
        }
    }
}
static __device__ __forceinline__ float sp_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
