/* gpu_sample.cu - temperature + top-k + top-p sampling on the device, the algorithm of
 * runtime/sampler.c given the same uniform number (contract in gpu.h).
 *
 * DESIGN: one block of 1024 threads. The k candidates are found with the exact radix select of
 * gpu_select.cuh (the sampler's order: larger logit, then lower id; NaN as -inf), gathered into
 * shared memory and bitonic-sorted (1024 slots, one per thread) into the CPU's descending order.
 * The rest (at most 1024 probabilities, double sums, the top-p prefix and the draw) is sequential
 * in thread 0 in exactly the CPU's order of operations: it costs microseconds and keeps every
 * double sum identical; only expf may differ from libm by an ulp. */
#include <math.h>

#include "gpu_select.cuh"

enum { SAMPLE_THREADS = 1024 };

static __device__ __forceinline__ float logit_key(const float *l, int64_t i)
{
    float v = l[i];
    return v != v ? -INFINITY : v;
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(const float *logits, int64_t n, int k, bool greedy, float temperature, float top_p, double u01,
              int32_t *out)
{
    __shared__ sp_select_smem sm;
    __shared__ unsigned long long keys[SAMPLE_THREADS];
    __shared__ float prob[SAMPLE_THREADS];
    __shared__ int count;
    uint64_t kth = sp_block_kth_key(logits, n, k, &sm);
    keys[threadIdx.x] = 0;   /* below every real key (index 2^32 - 1 with the lowest score) */
    if (threadIdx.x == 0)
        count = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        uint64_t key = sp_select_key(logits[i], i);
        if (key >= kth)
            keys[atomicAdd(&count, 1)] = key;   /* exactly k keys (they are distinct) */
    }
    for (int size = 2; size <= SAMPLE_THREADS; size <<= 1)
        for (int stride = size / 2; stride > 0; stride >>= 1) {
            __syncthreads();
            int i = threadIdx.x, j = i ^ stride;
            if (j > i) {
                bool desc = (i & size) == 0;
                unsigned long long a = keys[i], b = keys[j];
                if (desc ? a < b : a > b) {
                    keys[i] = b;
                    keys[j] = a;
                }
            }
        }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    int32_t h0 = (int32_t)sp_select_index(keys[0]);
    float mx = logit_key(logits, h0);
    if (greedy || mx == -INFINITY) {
        *out = h0;
        return;
    }
    double sum = 0.0;
    int m = 0;
    for (; m < k; m++) {
        float v = logit_key(logits, sp_select_index(keys[m]));
        if (v == -INFINITY)
            break;
        prob[m] = expf(__fdiv_rn(v - mx, temperature));
        sum += (double)prob[m];
    }
    if (top_p < 1.0f) {
        double cum = 0.0, lim = (double)top_p * sum;
        int keep = 0;
        while (keep < m) {
            cum += (double)prob[keep++];
            if (cum >= lim)
                break;
        }
        m = keep > 0 ? keep : 1;
        sum = cum;
    }
    double u = u01 * sum, acc = 0.0;
    for (int i = 0; i < m; i++) {
        acc += (double)prob[i];
        if (u < acc) {
            *out = (int32_t)sp_select_index(keys[i]);
            return;
        }
    }
    *out = (int32_t)sp_select_index(keys[m - 1]);
}

extern "C" int sp_gpu_sample(void *stream, sp_gpu_sample_desc d)
{
    if (d.n < 1 || d.n > INT32_MAX || !d.logits || !d.out || isnan(d.temperature) || isnan(d.top_p) ||
        !(d.u01 >= 0.0 && d.u01 < 1.0))
        return sp_error(EINVAL, "gpu sample: bad descriptor (n %lld, temperature %g, top_p %g, u %g)", (long long)d.n,
                        (double)d.temperature, (double)d.top_p, d.u01);
    bool greedy = d.temperature <= 0.0f || d.top_k == 1;
    int64_t k = greedy ? 1 : d.top_k > 0 && d.top_k < d.n ? d.top_k : d.n;
    if (k > SP_GPU_SAMPLE_MAX_K)
        return sp_error(ENOTSUP, "gpu sample: %lld candidates (top_k %d over %lld logits); at most %d on the GPU",
                        (long long)k, d.top_k, (long long)d.n, (int)SP_GPU_SAMPLE_MAX_K);
    SP_LAUNCH(1, SAMPLE_THREADS, 0, sp_stream(stream), sample_kernel)(d.logits, d.n, (int)k, greedy, d.temperature,
                                                                d.top_p, d.u01, d.out);
    return SP_CUDA_LAUNCHED("sample_kernel");
}
