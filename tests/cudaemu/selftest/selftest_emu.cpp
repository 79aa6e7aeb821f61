/* selftest_emu.cpp - the CPU emulation of CUDA checked against what it promises (label gpu-emu).
 * Each case is a ctest test of its own (argv[1] = case name). Cases named bad_* run a deliberately
 * broken kernel or stream sequence and pass only when the emulator reports or exposes the bug:
 *   bad_shared_overrun   static __shared__ array written one past its end   (ASan report; ctest
 *   bad_dyn_shared       dynamic shared memory read past the launch's size   matches the report)
 *   bad_heap_oob         device allocation read one past its end
 *   bad_use_after_free   kernel reads memory freed with cudaFree
 *   bad_missing_sync     a block reads shared data before the barrier that orders the write
 *   bad_divergent_sync   __syncthreads reached by half the block (deadlock report, no hang)
 *   bad_wrong_mask       a warp shuffle whose mask leaves out calling lanes, and one that names
 *                        a lane that never arrives
 *   bad_no_event         reading a stream's output from another stream without its event
 * The other cases check conversions, launch limits, block order, errors, events and cuBLAS.
 * Exit 0 = as promised; 1 = a check failed (printed). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

extern "C" {
#include "fp16.h"
}

#define LAUNCH CUDAEMU_LAUNCH

static int n_fail;
static void check(bool ok, const char *what)
{
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok)
        n_fail++;
}

static void reset() { cudaDeviceReset(); }

/* ---- kernels, correct and broken ---- */

static __global__ void shared_overrun_kernel(int *out, int n)
{
    __shared__ int buf[32];
    int *p = buf;   /* through a pointer, as real overruns are (UBSan sees only direct indexing) */
    p[threadIdx.x] = (int)threadIdx.x;   /* launched with 33 threads: thread 32 writes buf[32] */
    __syncthreads();
    if (threadIdx.x < (unsigned)n)
        out[threadIdx.x] = buf[threadIdx.x % 32];
}

static __global__ void dyn_shared_kernel(float *out, int n)
{
    CUDAEMU_DYNAMIC_SHARED(float, sm);
    sm[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = sm[threadIdx.x + n];   /* n = blockDim.x: reads past the launch's size */
}

static __global__ void read_kernel(const float *in, float *out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n)   /* the bug: <= */
        out[i < n ? i : 0] = in[i];
}

static __global__ void broadcast_kernel(int *out, bool with_sync)
{
    __shared__ int x;
    if (threadIdx.x == 0)
        x = 42;
    if (with_sync)
        __syncthreads();
    out[threadIdx.x] = x;
}

static __global__ void divergent_sync_kernel(int *out)
{
    if (threadIdx.x < blockDim.x / 2) {
        __syncthreads();
        out[threadIdx.x] = 1;
    }
}

static __global__ void shfl_kernel(float *out, unsigned mask, int callers)
{
    float v = (float)threadIdx.x;
    if ((int)(threadIdx.x & 31) < callers)
        v = __shfl_xor_sync(mask, v, 1);
    out[threadIdx.x] = v;
}

static __global__ void warp_ops_kernel(float *sum, unsigned *bal, int *any_all, float *up, float *down, float *idx)
{
    const unsigned l = threadIdx.x & 31;
    float v = (float)threadIdx.x;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    sum[threadIdx.x] = v;
    bal[threadIdx.x] = __ballot_sync(0xffffffffu, l % 3 == 0);
    any_all[threadIdx.x] = __any_sync(0xffffffffu, l == 7) * 2 + __all_sync(0xffffffffu, l < 31);
    up[threadIdx.x] = __shfl_up_sync(0xffffffffu, (float)l, 2, 8);
    down[threadIdx.x] = __shfl_down_sync(0xffffffffu, (float)l, 3);
    idx[threadIdx.x] = __shfl_sync(0xffffffffu, (float)l, 5);
    if (l < 16)   /* a half-warp group with its own mask */
        __syncwarp(0x0000ffffu);
}

static __global__ void slow_writer_kernel(int *out)
{
    __nanosleep(200u * 1000u * 1000u);   /* 200 ms: the other stream runs first unless it waits */
    *out = 7;
}

static __global__ void order_kernel(unsigned *ticket, unsigned *out)
{
    if (threadIdx.x == 0)
        out[blockIdx.x] = atomicAdd(ticket, 1u);
}

static __global__ void big_block_kernel(int *out) { out[threadIdx.x] = 1; }

/* ---- cases ---- */

static int case_bad_shared_overrun()
{
    int *d;
    cudaMalloc(&d, 33 * sizeof(int));
    LAUNCH(1, 33, 0, 0, shared_overrun_kernel)(d, 33);
    cudaDeviceSynchronize();
    printf("no report: the overrun went unnoticed\n");
    return 1;
}

static int case_bad_dyn_shared()
{
    float *d;
    cudaMalloc(&d, 64 * sizeof(float));
    LAUNCH(1, 32, 32 * sizeof(float), 0, dyn_shared_kernel)(d, 32);
    cudaDeviceSynchronize();
    printf("no report: the overrun went unnoticed\n");
    return 1;
}

static int case_bad_heap_oob()
{
    float *in, *out;
    cudaMalloc(&in, 100 * sizeof(float));
    cudaMalloc(&out, 100 * sizeof(float));
    LAUNCH(1, 128, 0, 0, read_kernel)(in, out, 100);
    cudaDeviceSynchronize();
    printf("no report: the overrun went unnoticed\n");
    return 1;
}

static int case_bad_use_after_free()
{
    float *in, *out;
    cudaMalloc(&in, 100 * sizeof(float));
    cudaMalloc(&out, 101 * sizeof(float));
    cudaFree(in);
    LAUNCH(1, 64, 0, 0, read_kernel)(in, out, 50);
    cudaDeviceSynchronize();
    printf("no report: the use after free went unnoticed\n");
    return 1;
}

static int case_bad_missing_sync()
{
    int *d, h[256];
    cudaMalloc(&d, sizeof h);
    LAUNCH(1, 256, 0, 0, broadcast_kernel)(d, true);
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    int good = 0;
    for (int i = 0; i < 256; i++)
        good += h[i] == 42;
    check(good == 256, "with __syncthreads every thread reads the write");
    LAUNCH(1, 256, 0, 0, broadcast_kernel)(d, false);
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    good = 0;
    for (int i = 0; i < 256; i++)
        good += h[i] == 42;
    printf("     without it %d of 256 threads read before the write (they see the 0xFF fill)\n", 256 - good);
    check(good < 256, "without __syncthreads the missing order is exposed");
    cudaFree(d);
    return n_fail != 0;
}

static int case_bad_divergent_sync()
{
    int *d;
    cudaMalloc(&d, 128 * sizeof(int));
    LAUNCH(1, 128, 0, 0, divergent_sync_kernel)(d);
    cudaError_t e = cudaDeviceSynchronize();
    check(e == cudaErrorLaunchFailure, "the sync reports the kernel's fault (cudaErrorLaunchFailure)");
    const char *f = cudaemu_last_fault();
    check(strstr(f, "divergent_sync_kernel") && strstr(f, "deadlock") && strstr(f, "64 of 128 threads wait at __syncthreads") &&
              strstr(f, "exited"),
          "the report names the kernel, the waiting threads and the ones that exited");
    int *d2;
    check(cudaGetLastError() == cudaErrorLaunchFailure && cudaMalloc(&d2, 4) == cudaErrorLaunchFailure,
          "the fault is sticky");
    reset();
    check(cudaMalloc(&d2, 4) == cudaSuccess, "cudaDeviceReset clears it");
    cudaFree(d2);
    cudaFree(d);
    return n_fail != 0;
}

static int case_bad_wrong_mask()
{
    float *d;
    cudaMalloc(&d, 64 * sizeof(float));
    LAUNCH(1, 64, 0, 0, shfl_kernel)(d, 0xffffffffu, 32);
    check(cudaDeviceSynchronize() == cudaSuccess, "a full-mask shuffle by every lane is fine");
    LAUNCH(1, 64, 0, 0, shfl_kernel)(d, 0x0000ffffu, 32);
    check(cudaDeviceSynchronize() == cudaErrorLaunchFailure && strstr(cudaemu_last_fault(), "not in the mask"),
          "mask 0x0000ffff called by all 32 lanes: reported (a lane outside its own mask)");
    printf("     %s\n", cudaemu_last_fault());
    reset();
    LAUNCH(1, 64, 0, 0, shfl_kernel)(d, 0xffffffffu, 16);
    check(cudaDeviceSynchronize() == cudaErrorLaunchFailure && strstr(cudaemu_last_fault(), "__shfl_xor_sync with mask 0xffffffff") &&
              strstr(cudaemu_last_fault(), "missing"),
          "mask 0xffffffff called by 16 lanes: reported as a deadlock, not a hang");
    printf("     %s\n", cudaemu_last_fault());
    reset();
    cudaFree(d);
    return n_fail != 0;
}

static int case_bad_no_event()
{
    cudaStream_t a, b;
    cudaEvent_t ev;
    int *d, *h;
    cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
    cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    cudaMalloc(&d, sizeof(int));
    cudaMallocHost(&h, sizeof(int));
    cudaMemsetAsync(d, 0xFF, sizeof(int), a);
    LAUNCH(1, 1, 0, a, slow_writer_kernel)(d);
    cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, b);   /* the bug: b does not wait for a */
    cudaStreamSynchronize(b);
    int raced = *h;
    cudaStreamSynchronize(a);
    printf("     without the event stream b read %d (the writer on stream a had not run)\n", raced);
    check(raced != 7, "reading a stream's output without its event is a real race");
    cudaMemsetAsync(d, 0xFF, sizeof(int), a);
    LAUNCH(1, 1, 0, a, slow_writer_kernel)(d);
    cudaEventRecord(ev, a);
    cudaStreamWaitEvent(b, ev, 0);
    cudaMemcpyAsync(h, d, sizeof(int), cudaMemcpyDeviceToHost, b);
    cudaStreamSynchronize(b);
    check(*h == 7, "with cudaStreamWaitEvent the copy sees the write");
    cudaFreeHost(h);
    cudaFree(d);
    cudaEventDestroy(ev);
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
    return n_fail != 0;
}

static int case_fp16()
{
    struct { float f; unsigned short h; } k[] = {
        {65504.0f, 0x7bff}, {65519.996f, 0x7bff}, {65520.0f, 0x7c00}, {-1e9f, 0xfc00}, {0x1p-24f, 0x0001},
        {0x1p-25f, 0x0000}, {0x1.8p-25f, 0x0001}, {0x1p-14f, 0x0400}, {1.0f + 0x1p-11f, 0x3c00},
        {1.0f + 0x3p-11f, 0x3c02}, {-0.0f, 0x8000}, {INFINITY, 0x7c00},
    };
    bool ok = true;
    for (auto &c : k)
        if (__half_as_ushort(__float2half_rn(c.f)) != c.h) {
            printf("     fp16(%a) = 0x%04x, want 0x%04x\n", c.f, __half_as_ushort(__float2half_rn(c.f)), c.h);
            ok = false;
        }
    check(ok, "fp16 rounding: 65504 max, 65520 to inf, subnormals, ties to even");
    check(__hisnan(__float2half_rn(NAN)), "fp16 of NaN is NaN");
    uint64_t s = 12345;
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (f != f)
            continue;
        bad += __half_as_ushort(__float2half_rn(f)) != sp_f32_to_fp16(f);
    }
    check(bad == 0, "fp16 of 2M random fp32 bit patterns equals the library's sp_f32_to_fp16");
    bad = 0;
    for (unsigned h = 0; h < 65536; h++) {
        float a = __half2float(__ushort_as_half((unsigned short)h)), b = sp_fp16_to_f32((uint16_t)h);
        bad += memcmp(&a, &b, 4) != 0 && !(a != a && b != b);
    }
    check(bad == 0, "every fp16 widens as sp_fp16_to_f32 does");
    check(__bfloat16_as_ushort(__float2bfloat16_rn(1.0f + 0x1p-8f)) == 0x3f80 &&
              __bfloat16_as_ushort(__float2bfloat16_rn(1.0f + 0x3p-8f)) == 0x3f82 &&
              __bfloat162float(__ushort_as_bfloat16(0x4049)) == 3.140625f,
          "bf16 rounds to nearest even and widens exactly");
    return n_fail != 0;
}

static int case_launch_limits()
{
    int *d;
    cudaMalloc(&d, 2048 * sizeof(int));
    LAUNCH(1, 1025, 0, 0, big_block_kernel)(d);
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block: cudaErrorInvalidConfiguration");
    check(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears a launch error");
    LAUNCH(1, 1024, 0, 0, big_block_kernel)(d);
    check(cudaPeekAtLastError() == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess, "1024 threads run");
    LAUNCH(1, 32, 49 * 1024, 0, dyn_shared_kernel)((float *)d, 0);
    check(cudaPeekAtLastError() == cudaErrorInvalidValue && cudaPeekAtLastError() == cudaErrorInvalidValue &&
              cudaGetLastError() == cudaErrorInvalidValue,
          "49 KiB of dynamic shared memory without the opt-in: rejected (peek keeps the error, get clears it)");
    check(cudaFuncSetAttribute(dyn_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess,
          "opt-in to 100 KiB");
    LAUNCH(1, 32, 49 * 1024, 0, dyn_shared_kernel)((float *)d, 0);
    check(cudaGetLastError() == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess, "49 KiB run after the opt-in");
    check(cudaFuncSetAttribute(dyn_shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
              cudaErrorInvalidValue,
          "228 KiB cannot be opted into (227 KiB is the limit)");
    LAUNCH(1, 32, 228 * 1024, 0, dyn_shared_kernel)((float *)d, 0);
    check(cudaGetLastError() == cudaErrorInvalidValue, "228 KiB launch rejected");
    cudaDeviceProp p;
    check(cudaGetDeviceProperties(&p, 0) == cudaSuccess && p.major == 9 && p.warpSize == 32 &&
              p.maxThreadsPerBlock == 1024 && p.sharedMemPerBlockOptin == 227 * 1024,
          "device properties of the model GPU (sm_90, warp 32, 1024 threads, 227 KiB opt-in)");
    cudaFree(d);
    return n_fail != 0;
}

static int case_warp_ops()
{
    float *sum, *up, *down, *idx;
    unsigned *bal;
    int *aa;
    cudaMalloc(&sum, 64 * 4);
    cudaMalloc(&up, 64 * 4);
    cudaMalloc(&down, 64 * 4);
    cudaMalloc(&idx, 64 * 4);
    cudaMalloc(&bal, 64 * 4);
    cudaMalloc(&aa, 64 * 4);
    LAUNCH(1, 64, 0, 0, warp_ops_kernel)(sum, bal, aa, up, down, idx);
    float hs[64], hu[64], hd[64], hi[64];
    unsigned hb[64];
    int ha[64];
    cudaMemcpy(hs, sum, sizeof hs, cudaMemcpyDeviceToHost);
    cudaMemcpy(hu, up, sizeof hu, cudaMemcpyDeviceToHost);
    cudaMemcpy(hd, down, sizeof hd, cudaMemcpyDeviceToHost);
    cudaMemcpy(hi, idx, sizeof hi, cudaMemcpyDeviceToHost);
    cudaMemcpy(hb, bal, sizeof hb, cudaMemcpyDeviceToHost);
    cudaMemcpy(ha, aa, sizeof ha, cudaMemcpyDeviceToHost);
    bool ok = true;
    for (int t = 0; t < 64; t++) {
        int l = t % 32, w = t / 32;
        float want_sum = (float)(32 * 31 / 2 + 32 * 32 * w);
        ok &= hs[t] == want_sum && hb[t] == 0x49249249u && ha[t] == 2;
        ok &= hu[t] == (float)(l % 8 >= 2 ? l - 2 : l) && hd[t] == (float)(l + 3 < 32 ? l + 3 : l) && hi[t] == 5.0f;
    }
    check(ok, "xor/up/down/idx shuffles (with width), ballot, any, all, half-warp __syncwarp");
    for (void *p : {(void *)sum, (void *)up, (void *)down, (void *)idx, (void *)bal, (void *)aa})
        cudaFree(p);
    return n_fail != 0;
}

static int case_block_order()
{
    unsigned *t, *o, h[64];
    cudaMalloc(&t, 4);
    cudaMalloc(&o, sizeof h);
    cudaMemset(t, 0, 4);
    LAUNCH(64, 32, 0, 0, order_kernel)(t, o);
    cudaMemcpy(h, o, sizeof h, cudaMemcpyDeviceToHost);
    int in_order = 0;
    unsigned seen = 0;
    for (unsigned b = 0; b < 64; b++) {
        in_order += h[b] == b;
        seen |= h[b] < 64 ? 0u : 1u;
    }
    check(seen == 0 && in_order < 64, "blocks run in a (seeded) random order, each once");
    cudaFree(t);
    cudaFree(o);
    return n_fail != 0;
}

static int case_events_errors()
{
    cudaEvent_t a, b;
    cudaStream_t s;
    cudaStreamCreate(&s);
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    float ms = -1;
    check(cudaEventElapsedTime(&ms, a, b) == cudaErrorInvalidResourceHandle, "elapsed time of unrecorded events fails");
    cudaGetLastError();
    int *d;
    cudaMalloc(&d, 4);
    cudaEventRecord(a, s);
    LAUNCH(1, 1, 0, s, slow_writer_kernel)(d);
    cudaEventRecord(b, s);
    check(cudaEventQuery(b) == cudaErrorNotReady, "an event behind a running kernel is not ready");
    cudaEventSynchronize(b);
    check(cudaEventElapsedTime(&ms, a, b) == cudaSuccess && ms >= 150.0f && ms < 5000.0f,
          "elapsed time spans the 200 ms kernel");
    printf("     %.1f ms\n", (double)ms);
    check(cudaMemcpy(d, d, 8, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue,
          "a copy past the end of an allocation is refused");
    check(cudaFree((char *)d + 4) == cudaErrorInvalidDevicePointer, "freeing an interior pointer is refused");
    cudaGetLastError();
    struct cudaPointerAttributes pa;
    int host_var = 0;
    check(cudaPointerGetAttributes(&pa, d) == cudaSuccess && pa.type == cudaMemoryTypeDevice &&
              cudaPointerGetAttributes(&pa, &host_var) == cudaSuccess && pa.type == cudaMemoryTypeUnregistered,
          "pointer attributes tell device from host memory");
    cudaFree(d);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaStreamDestroy(s);
    return n_fail != 0;
}

static int case_cublas()
{
    const int m = 5, n = 4, k = 3, lda = 7, ldb = 6, ldc = 9;
    std::vector<float> A(lda * 5), B(ldb * 4), C(ldc * n), want(ldc * n);
    for (size_t i = 0; i < A.size(); i++)
        A[i] = (float)((i * 7) % 11) - 5.0f;
    for (size_t i = 0; i < B.size(); i++)
        B[i] = (float)((i * 5) % 13) - 6.0f;
    for (size_t i = 0; i < C.size(); i++)
        C[i] = (float)i;
    cublasHandle_t h;
    cublasCreate(&h);
    float *dA, *dB, *dC;
    cudaMalloc(&dA, A.size() * 4);
    cudaMalloc(&dB, B.size() * 4);
    cudaMalloc(&dC, C.size() * 4);
    cudaMemcpy(dA, A.data(), A.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, B.data(), B.size() * 4, cudaMemcpyHostToDevice);
    bool ok = true;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            /* column-major: op(A) m x k, op(B) k x n */
            auto a = [&](int i, int p) { return ta ? A[(size_t)i * lda + p] : A[(size_t)p * lda + i]; };
            auto b = [&](int p, int j) { return tb ? B[(size_t)p * ldb + j] : B[(size_t)j * ldb + p]; };
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float s = 0;
                    for (int p = 0; p < k; p++)
                        s += a(i, p) * b(p, j);
                    want[(size_t)j * ldc + i] = 2.0f * s + 0.5f * C[(size_t)j * ldc + i];
                }
            cudaMemcpy(dC, C.data(), C.size() * 4, cudaMemcpyHostToDevice);
            const float al = 2.0f, be = 0.5f;
            ok &= cublasSgemm(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &al, dA, lda,
                              dB, ldb, &be, dC, ldc) == CUBLAS_STATUS_SUCCESS;
            std::vector<float> got(C.size());
            cudaMemcpy(got.data(), dC, got.size() * 4, cudaMemcpyDeviceToHost);
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++)
                    ok &= fabsf(got[(size_t)j * ldc + i] - want[(size_t)j * ldc + i]) < 1e-4f;
        }
    check(ok, "cublasSgemm: column-major, all four transpose combinations, alpha/beta, leading dimensions");
    const float one = 1.0f;
    check(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, 2, dB, ldb, &one, dC, ldc) ==
              CUBLAS_STATUS_INVALID_VALUE,
          "lda < m is CUBLAS_STATUS_INVALID_VALUE");
    cublasDestroy(h);
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dC);
    return n_fail != 0;
}

int main(int argc, char **argv)
{
    struct { const char *name; int (*fn)(); } cases[] = {
        {"bad_shared_overrun", case_bad_shared_overrun}, {"bad_dyn_shared", case_bad_dyn_shared},
        {"bad_heap_oob", case_bad_heap_oob}, {"bad_use_after_free", case_bad_use_after_free},
        {"bad_missing_sync", case_bad_missing_sync}, {"bad_divergent_sync", case_bad_divergent_sync},
        {"bad_wrong_mask", case_bad_wrong_mask}, {"bad_no_event", case_bad_no_event}, {"fp16", case_fp16},
        {"launch_limits", case_launch_limits}, {"warp_ops", case_warp_ops}, {"block_order", case_block_order},
        {"events_errors", case_events_errors}, {"cublas", case_cublas},
    };
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    for (auto &c : cases)
        if (strcmp(c.name, argv[1]) == 0) {
            int rc = c.fn();
            printf("%s: %s\n", c.name, rc ? "FAILED" : "as promised");
            return rc;
        }
    fprintf(stderr, "no case %s\n", argv[1]);
    return 2;
}
