/* cuda_runtime.h - the device side of the CPU emulation (tests/cudaemu; a test tool, never part of
 * the product): what the unchanged kernels of gpu/ need to compile as C++ with the host compiler.
 *
 * - __global__/__device__/__host__ vanish; static __shared__ variables live in the linker section
 *   cudaemu_shared, refilled with 0xFF before every block (an uninitialized read gives NaN) and,
 *   under ASan, with redzones (-fsanitize-sections=cudaemu_shared) so an overrun is reported.
 *   Dynamic shared memory (SP_DYNAMIC_SHARED in gpu/gpu_common.cuh) is a fresh heap block per block.
 * - threadIdx/blockIdx/blockDim/gridDim read the current fiber's thread (one cooperative fiber per
 *   CUDA thread, switched on the stream's host thread; see src/emu_kernel.cpp).
 * - __syncthreads, __syncwarp and the warp collectives are real barriers over the block or over the
 *   lanes of the mask; misuse (a lane outside its own mask, a read from a lane outside the mask,
 *   lanes meeting at different collectives, a barrier some thread never reaches) faults the kernel
 *   with a message naming kernel, block and thread (cudaemu_last_fault), instead of hanging.
 * - launches go through cudaemu_launch (the <<<>>> replacement behind SP_LAUNCH). */
#ifndef CUDAEMU_CUDA_RUNTIME_H
#define CUDAEMU_CUDA_RUNTIME_H

#ifndef __cplusplus
#error "cuda_runtime.h (emulation) is C++; C files include cuda_runtime_api.h"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"
#include "cudaemu_vector.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__ static
#define __shared__ static __attribute__((section("cudaemu_shared")))

namespace cudaemu {
/* What kernel code sees of the running CUDA thread (the rest is private to the emulator). */
struct thread_view {
    uint3 tid, bid;
    dim3 bdim, gdim;
};
}
extern __thread cudaemu::thread_view *cudaemu_cur;

#define threadIdx (cudaemu_cur->tid)
#define blockIdx (cudaemu_cur->bid)
#define blockDim (cudaemu_cur->bdim)
#define gridDim (cudaemu_cur->gdim)
static const int warpSize = 32;

namespace cudaemu {
enum coll_op { COLL_SYNCWARP, COLL_BALLOT, COLL_ANY, COLL_ALL, COLL_SHFL, COLL_SHFL_XOR, COLL_SHFL_UP, COLL_SHFL_DOWN };
void syncthreads();
uint64_t warp_collective(coll_op op, unsigned mask, uint64_t value, int param, int width);
unsigned activemask();
void *dynamic_shared();
void nanosleep_ns(unsigned ns);
/* Enqueue a grid on stream s (validates the configuration; errors go to cudaGetLastError). */
void launch(const char *name, const void *fn, dim3 grid, dim3 block, size_t shmem, cudaStream_t s,
            std::function<void()> body);

template <typename T> static inline uint64_t pack(T v)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp shuffles move at most 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}
template <typename T> static inline T unpack(uint64_t u)
{
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}
}

static inline void __syncthreads() { cudaemu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { cudaemu::warp_collective(cudaemu::COLL_SYNCWARP, mask, 0, 0, 32); }
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return (unsigned)cudaemu::warp_collective(cudaemu::COLL_BALLOT, mask, pred != 0, 0, 32);
}
static inline int __any_sync(unsigned mask, int pred) { return (int)cudaemu::warp_collective(cudaemu::COLL_ANY, mask, pred != 0, 0, 32); }
static inline int __all_sync(unsigned mask, int pred) { return (int)cudaemu::warp_collective(cudaemu::COLL_ALL, mask, pred != 0, 0, 32); }
static inline unsigned __activemask() { return cudaemu::activemask(); }
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    return cudaemu::unpack<T>(cudaemu::warp_collective(cudaemu::COLL_SHFL, mask, cudaemu::pack(v), src, width));
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    return cudaemu::unpack<T>(cudaemu::warp_collective(cudaemu::COLL_SHFL_XOR, mask, cudaemu::pack(v), lane_mask, width));
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return cudaemu::unpack<T>(cudaemu::warp_collective(cudaemu::COLL_SHFL_UP, mask, cudaemu::pack(v), (int)delta, width));
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    return cudaemu::unpack<T>(cudaemu::warp_collective(cudaemu::COLL_SHFL_DOWN, mask, cudaemu::pack(v), (int)delta, width));
}
static inline void __nanosleep(unsigned ns) { cudaemu::nanosleep_ns(ns); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* ---- atomics: real host atomics (kernels of other streams and host threads may run beside) ---- */
template <typename T> static inline T cudaemu_atomic_fetch_add(T *p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int atomicAdd(int *p, int v) { return cudaemu_atomic_fetch_add(p, v); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return cudaemu_atomic_fetch_add(p, v); }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) { return cudaemu_atomic_fetch_add(p, v); }
template <typename F, typename U> static inline F cudaemu_atomic_fadd(F *p, F v)
{
    U *q = (U *)p, old = __atomic_load_n(q, __ATOMIC_RELAXED), nw;
    F f;
    do {
        memcpy(&f, &old, sizeof f);
        F s = f + v;
        memcpy(&nw, &s, sizeof nw);
    } while (!__atomic_compare_exchange_n(q, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return f;
}
static inline float atomicAdd(float *p, float v) { return cudaemu_atomic_fadd<float, uint32_t>(p, v); }
static inline double atomicAdd(double *p, double v) { return cudaemu_atomic_fadd<double, uint64_t>(p, v); }
static inline int atomicSub(int *p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
static inline unsigned atomicSub(unsigned *p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
#define CUDAEMU_BITOP(name, builtin)                                                                              \
    static inline int name(int *p, int v) { return builtin(p, v, __ATOMIC_RELAXED); }                             \
    static inline unsigned name(unsigned *p, unsigned v) { return builtin(p, v, __ATOMIC_RELAXED); }              \
    static inline unsigned long long name(unsigned long long *p, unsigned long long v) { return builtin(p, v, __ATOMIC_RELAXED); }
CUDAEMU_BITOP(atomicOr, __atomic_fetch_or)
CUDAEMU_BITOP(atomicAnd, __atomic_fetch_and)
CUDAEMU_BITOP(atomicXor, __atomic_fetch_xor)
#undef CUDAEMU_BITOP
template <typename T> static inline T cudaemu_atomic_minmax(T *p, T v, bool is_max)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while ((is_max ? v > old : v < old) &&
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
static inline int atomicMax(int *p, int v) { return cudaemu_atomic_minmax(p, v, true); }
static inline unsigned atomicMax(unsigned *p, unsigned v) { return cudaemu_atomic_minmax(p, v, true); }
static inline long long atomicMax(long long *p, long long v) { return cudaemu_atomic_minmax(p, v, true); }
static inline unsigned long long atomicMax(unsigned long long *p, unsigned long long v) { return cudaemu_atomic_minmax(p, v, true); }
static inline int atomicMin(int *p, int v) { return cudaemu_atomic_minmax(p, v, false); }
static inline unsigned atomicMin(unsigned *p, unsigned v) { return cudaemu_atomic_minmax(p, v, false); }
static inline long long atomicMin(long long *p, long long v) { return cudaemu_atomic_minmax(p, v, false); }
static inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) { return cudaemu_atomic_minmax(p, v, false); }
template <typename T> static inline T atomicExch(T *p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <typename T> static inline T atomicCAS(T *p, T cmp, T v)
{
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}

/* ---- loads, bit tricks, rounding intrinsics (the build has -ffp-contract=off: each op rounds) ---- */
template <typename T> static inline T __ldg(const T *p) { return *p; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline unsigned __brev(unsigned x)
{
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline double __longlong_as_double(long long u) { double f; memcpy(&f, &u, 8); return f; }
static inline long long __double_as_longlong(double f) { long long u; memcpy(&u, &f, 8); return u; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline long min(long a, long b) { return a < b ? a : b; }
static inline long max(long a, long b) { return a > b ? a : b; }
static inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
static inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

/* ---- launches: SP_LAUNCH(grid, block, shmem, stream, kernel)(args...) under emulation ---- */
template <typename... P> struct cudaemu_launcher {
    void (*fn)(P...);
    const char *name;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;
    template <typename... A> void operator()(A &&...a) const
    {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
        /* the arguments are copied at launch, as CUDA copies them into the parameter buffer */
        auto args = std::make_shared<std::tuple<typename std::decay<P>::type...>>(std::forward<A>(a)...);
        void (*f)(P...) = fn;
        cudaemu::launch(name, (const void *)fn, grid, block, shmem, stream, [f, args]() { std::apply(f, *args); });
    }
};
template <typename... P>
static inline cudaemu_launcher<P...> cudaemu_launch(const char *name, dim3 grid, dim3 block, size_t shmem, cudaStream_t s,
                                                    void (*fn)(P...))
{
    return cudaemu_launcher<P...>{fn, name, grid, block, shmem, s};
}
#define CUDAEMU_LAUNCH(grid, block, shmem, stream, ...) \
    cudaemu_launch(#__VA_ARGS__, grid, block, shmem, stream, __VA_ARGS__)
#define CUDAEMU_DYNAMIC_SHARED(type, name) type *const name = (type *)cudaemu::dynamic_shared()

#endif
