/* gpu_select.cuh - block-wide exact selection shared by top-k (gpu_kv.cu) and sampling
 * (gpu_sample.cu). Private to gpu/.
 *
 * DESIGN: a score s at index i becomes one 64-bit key, (order-preserving bits of s) << 32 |
 * (2^32 - 1 - i): keys are distinct, and "larger key" is exactly the CPU's order "larger score,
 * then lower index" (NaN is mapped to -inf and -0 to +0 first, as sp_kv_topk and the sampler
 * compare with C operators). The k-th largest key is found by an MSB-first radix select, 8 bits a
 * pass (8 passes over the row, a 256-bin shared histogram per pass); the k best are then exactly
 * the keys >= it. All threads of the block must call these functions (they synchronize).
 * blockDim.x must be a multiple of 32 and at most 1024. */
#ifndef SP_GPU_SELECT_CUH
#define SP_GPU_SELECT_CUH

#include "gpu_common.cuh"

static __device__ __forceinline__ uint32_t sp_ord_f32(float v)
{
    if (v != v)
        v = -INFINITY;
    if (v == 0.0f)
        v = 0.0f;   /* -0 == +0 for the CPU's comparisons */
    uint32_t b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static __device__ __forceinline__ uint64_t sp_select_key(float v, int64_t i)
{
    return ((uint64_t)sp_ord_f32(v) << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)i);
}

static __device__ __forceinline__ int64_t sp_select_index(uint64_t key)
{
    return (int64_t)(0xFFFFFFFFu - (uint32_t)key);
}

/* Shared state of one select: declare once per block (__shared__) and pass it in. */
typedef struct sp_select_smem {
    unsigned hist[256];
    unsigned long long bcast[2];
    int warp_tot[32];
} sp_select_smem;

/* The k-th largest key of s[0..n) (1 <= k <= n <= INT32_MAX). */
static __device__ uint64_t sp_block_kth_key(const float *s, int64_t n, int64_t k, sp_select_smem *sm)
{
    uint64_t prefix = 0, mask = 0;
    int64_t rem = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x)
            sm->hist[i] = 0;
        __syncthreads();
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            uint64_t key = sp_select_key(s[i], i);
            if ((key & mask) == prefix)
                atomicAdd(&sm->hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int64_t above = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (above + (int64_t)sm->hist[b] >= rem)
                    break;
                above += sm->hist[b];
            }
            sm->bcast[0] = prefix | ((uint64_t)b << shift);
            sm->bcast[1] = (unsigned long long)(rem - above);
        }
        __syncthreads();
        prefix = sm->bcast[0];
        rem = (int64_t)sm->bcast[1];
        mask |= 255ull << shift;
        __syncthreads();   /* bcast and hist are rewritten by the next pass */
    }
    return prefix;
}

/* Write the indices i < n with key(s[i], i) >= kth to out[0..), ascending. Returns the count. */
static __device__ int64_t sp_block_compact_ge(const float *s, int64_t n, uint64_t kth, int32_t *out,
                                              sp_select_smem *sm)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int64_t base = 0;
    for (int64_t c0 = 0; c0 < n; c0 += blockDim.x) {
        int64_t i = c0 + threadIdx.x;
        bool f = i < n && sp_select_key(s[i], i) >= kth;
        unsigned bal = __ballot_sync(0xffffffffu, f);
        if (lane == 0)
            sm->warp_tot[w] = __popc(bal);
        __syncthreads();
        int off = 0, tot = 0;
        for (int j = 0; j < nw; j++) {
            off += j < w ? sm->warp_tot[j] : 0;
            tot += sm->warp_tot[j];
        }
        if (f)
            out[base + off + __popc(bal & ((1u << lane) - 1u))] = (int32_t)i;
        base += tot;
        __syncthreads();   /* warp_tot is rewritten by the next chunk */
    }
    return base;
}

#endif
