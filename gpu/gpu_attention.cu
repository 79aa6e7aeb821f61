/* gpu_attention.cu - causal GQA attention over an fp16 KV cache: a tiled prefill kernel with an
 * online softmax that can also emit SpindleKV's window scores, and a split-K decode kernel.
 * Contract: sp_attn_desc in cpu/ops.h (the CPU reference), restated in gpu.h.
 *
 * DESIGN
 * - Prefill: a block owns one query head x BQ = 64 queries, one query per thread, and walks the
 *   keys in tiles of BK = 32 converted to fp32 in shared memory: each thread computes its row's
 *   BK scores (causal mask), the tile max, running max m / sum l, then O = O*exp(m_old - m_new)
 *   + P V for its row. Only BK scores per thread exist at a time (never n_q x n_keys), and no warp
 *   collective is needed (a lane-per-key layout needed a max and a sum reduction per row and tile;
 *   they dominated, and under the CPU emulation each costs a fiber switch per lane). All threads
 *   read the same key at once (broadcast); Q and O rows are padded to D+1 floats so the threads'
 *   own rows hit distinct banks. Blocks with the latest queries (most keys) start first. The rows
 *   of the last n_window queries also store lse = m + log(l).
 * - Window scores: a second kernel, one block per (head, tile of WK keys), one thread per key,
 *   recomputes the window queries' scores with the same dot-product order and sums exp(s - lse)
 *   over the window: exactly the fp32 softmax probabilities, with no n_window x n_keys buffer and
 *   no atomics (each key is written by one thread).
 * - Decode (one query, no window): the keys are split into chunks of DEC_SPLIT; a block per
 *   (head, chunk), each warp takes 32 keys at a time (lane = key for the scores, lane = dimension
 *   for P V) and keeps (m, l, o); warps merge in shared memory into a partial per chunk; a second
 *   kernel merges the chunks ("flash decoding"). Partials live in the caller's scratch.
 * - Everything is fp32 except the cache itself; fp16 is read with exact conversions.
 */
#include <math.h>

#include "gpu_common.cuh"

enum {
    ATT_BQ = 64,        /* queries per prefill block, one per thread */
    ATT_BK = 32,        /* keys per tile */
    ATT_THREADS = ATT_BQ,
    WIN_WK = 64,        /* keys per window-score block (one thread each) */
    WIN_WQ = 16,        /* window queries staged in shared memory at a time */
    DEC_SPLIT = 256,    /* keys per decode block */
    DEC_THREADS = 128,
    ATT_MAX_D = 256,
};

static size_t prefill_smem_floats(int D)
{
    return (size_t)ATT_BQ * (D + 1) * 2 + (size_t)ATT_BK * D * 2 + ATT_BQ;
}

static __global__ void attn_prefill_kernel(sp_attn_desc a, float *lse)
{
    SP_DYNAMIC_SHARED(float, sm);
    const int D = a.head_dim, DP = D + 1, G = a.n_head / a.n_kv_head;
    float *Qs = sm;                          /* [BQ][D+1], pre-scaled; row i read by thread i only */
    float *O = Qs + ATT_BQ * DP;             /* [BQ][D+1], thread i's output row */
    float *Ks = O + ATT_BQ * DP;             /* [BK][D]: all threads read the same key (broadcast) */
    float *Vs = Ks + ATT_BK * D;             /* [BK][D] */
    float *lrow = Vs + ATT_BK * D;           /* [BQ] softmax denominators, for the coalesced store */

    const int n_qt = (a.n_q + ATT_BQ - 1) / ATT_BQ;
    const int qt = n_qt - 1 - (int)blockIdx.x;   /* heaviest tiles first */
    const int h = blockIdx.y, g = h / G;
    const int q0 = qt * ATT_BQ, bq = min(ATT_BQ, a.n_q - q0);
    const int tid = threadIdx.x;
    const __half *kh = (const __half *)a.k + (size_t)g * a.kv_head_stride;
    const __half *vh = (const __half *)a.v + (size_t)g * a.kv_head_stride;

    for (int idx = tid; idx < ATT_BQ * D; idx += blockDim.x) {
        int i = idx / D, d = idx % D;
        Qs[i * DP + d] = i < bq ? a.q[(size_t)(q0 + i) * a.ldq + (size_t)h * D + d] * a.scale : 0.0f;
        O[i * DP + d] = 0.0f;
    }
    const bool mine = tid < bq;                  /* this thread owns query q0 + tid */
    const int pos = a.q_pos0 + q0 + tid;
    const float *qi = Qs + tid * DP;
    float *oi = O + tid * DP;
    float m = -INFINITY, l = 0.0f, s[ATT_BK];
    const int kend = a.q_pos0 + q0 + bq;
    for (int kb = 0; kb < kend; kb += ATT_BK) {
        const int nk = min(ATT_BK, kend - kb);
        __syncthreads();   /* Q/O staged; the previous tile consumed before K/V are overwritten */
        for (int idx = tid; idx < nk * D; idx += blockDim.x) {
            int j = idx / D, d = idx % D;
            Ks[j * D + d] = __half2float(kh[(size_t)(kb + j) * D + d]);
            Vs[j * D + d] = __half2float(vh[(size_t)(kb + j) * D + d]);
        }
        __syncthreads();
        const int nv = mine ? min(nk, pos - kb + 1) : 0;   /* causal: keys kb .. kb+nv-1 are visible */
        if (nv <= 0)
            continue;
        float tmax = -INFINITY;
        for (int j = 0; j < nv; j++) {
            const float *kj = Ks + j * D;
            float acc = 0.0f;
            for (int d = 0; d < D; d++)
                acc = fmaf(qi[d], kj[d], acc);
            s[j] = acc;
            tmax = fmaxf(tmax, acc);
        }
        const float m_new = fmaxf(m, tmax);
        const float c = expf(m - m_new);   /* 0 on the row's first visible tile */
        float sum = 0.0f;
        for (int j = 0; j < nv; j++) {
            s[j] = expf(s[j] - m_new);
            sum += s[j];
        }
        l = l * c + sum;
        m = m_new;
        for (int d = 0; d < D; d++) {
            float o = oi[d] * c;
            for (int j = 0; j < nv; j++)
                o = fmaf(s[j], Vs[j * D + d], o);
            oi[d] = o;
        }
    }
    if (mine) {
        lrow[tid] = l;
        if (a.n_window > 0) {
            const int wi = q0 + tid - (a.n_q - a.n_window);
            if (wi >= 0)
                lse[(size_t)h * a.n_window + wi] = m + logf(l);
        }
    }
    __syncthreads();
    for (int idx = tid; idx < bq * D; idx += blockDim.x) {
        const int i = idx / D, d = idx % D;
        a.out[(size_t)(q0 + i) * a.ldo + (size_t)h * D + d] = O[i * DP + d] / lrow[i];
    }
}

static size_t window_smem_floats(int D)
{
    return (size_t)WIN_WK * (D + 1) + (size_t)WIN_WQ * D;
}

static __global__ void attn_window_kernel(sp_attn_desc a, const float *lse)
{
    SP_DYNAMIC_SHARED(float, sm);
    const int D = a.head_dim, G = a.n_head / a.n_kv_head, W = a.n_window;
    float *Kt = sm;                   /* [WK][D+1] */
    float *Qw = Kt + WIN_WK * (D + 1); /* [WQ][D], pre-scaled */
    const int h = blockIdx.y, g = h / G, tid = threadIdx.x;
    const int n_keys = a.q_pos0 + a.n_q, kb = blockIdx.x * WIN_WK, nk = min(WIN_WK, n_keys - kb);
    const int wq0 = a.n_q - W;
    const __half *kh = (const __half *)a.k + (size_t)g * a.kv_head_stride;
    for (int idx = tid; idx < nk * D; idx += blockDim.x) {
        int j = idx / D, d = idx % D;
        Kt[j * (D + 1) + d] = __half2float(kh[(size_t)(kb + j) * D + d]);
    }
    float acc = 0.0f;
    const int key = kb + tid;
    for (int w0 = 0; w0 < W; w0 += WIN_WQ) {
        const int bw = min(WIN_WQ, W - w0);
        __syncthreads();   /* K tile loaded / previous queries consumed */
        for (int idx = tid; idx < bw * D; idx += blockDim.x) {
            int w = idx / D, d = idx % D;
            Qw[idx] = a.q[(size_t)(wq0 + w0 + w) * a.ldq + (size_t)h * D + d] * a.scale;
        }
        __syncthreads();
        if (tid < nk) {
            for (int w = 0; w < bw; w++) {
                const int pos = a.q_pos0 + wq0 + w0 + w;
                if (key > pos)
                    continue;
                const float *qw = Qw + w * D, *kj = Kt + tid * (D + 1);
                float s = 0.0f;
                for (int d = 0; d < D; d++)
                    s = fmaf(qw[d], kj[d], s);
                float p = expf(s - lse[(size_t)h * W + w0 + w]);
                acc += a.win_w ? a.win_w[w0 + w] * p : p;
            }
        }
    }
    if (tid < nk)
        a.win[(size_t)h * a.win_ld + key] = acc;
}

/* Decode: partial (m, l, o[D]) per (head, chunk) into part[(h*n_chunks + c)*(D+2)]. */
static __global__ void attn_decode_kernel(sp_attn_desc a, float *part, int n_chunks)
{
    SP_DYNAMIC_SHARED(float, sm);
    const int D = a.head_dim, G = a.n_head / a.n_kv_head, E = D / 32;
    const int n_warps = DEC_THREADS / 32;
    float *qs = sm;                      /* [D] */
    float *wm = qs + D, *wl = wm + n_warps, *wo = wl + n_warps;   /* per warp m, l, o[D] */
    const int h = blockIdx.y, g = h / G, c = blockIdx.x;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
    const int n_keys = a.q_pos0 + 1;
    const int k0 = c * DEC_SPLIT, k1 = min(n_keys, k0 + DEC_SPLIT);
    const int per_warp = DEC_SPLIT / n_warps;
    const int w0 = k0 + warp * per_warp, w1 = min(k1, w0 + per_warp);
    const __half *kh = (const __half *)a.k + (size_t)g * a.kv_head_stride;
    const __half *vh = (const __half *)a.v + (size_t)g * a.kv_head_stride;

    for (int d = tid; d < D; d += blockDim.x)
        qs[d] = a.q[(size_t)h * D + d] * a.scale;
    __syncthreads();
    float m = -INFINITY, l = 0.0f, o[ATT_MAX_D / 32];
#pragma unroll
    for (int e = 0; e < ATT_MAX_D / 32; e++)
        o[e] = 0.0f;
    for (int kk = w0; kk < w1; kk += 32) {
        const int j = kk + lane;
        const bool valid = j < w1;
        float s = -INFINITY;
        if (valid) {
            const __half2 *kr = (const __half2 *)(kh + (size_t)j * D);
            float acc = 0.0f;
            for (int d2 = 0; d2 < D / 2; d2++) {
                float2 kf = __half22float2(kr[d2]);
                acc = fmaf(qs[2 * d2], kf.x, acc);
                acc = fmaf(qs[2 * d2 + 1], kf.y, acc);
            }
            s = acc;
        }
        const float m_new = fmaxf(m, sp_warp_max(s));   /* finite: lane 0's key is valid */
        const float p = valid ? expf(s - m_new) : 0.0f;
        const float cr = expf(m - m_new);
        l = l * cr + sp_warp_sum(p);
        m = m_new;
#pragma unroll
        for (int e = 0; e < ATT_MAX_D / 32; e++)
            o[e] *= cr;
        const int nk = min(32, w1 - kk);
        for (int jj = 0; jj < nk; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const __half *vr = vh + (size_t)(kk + jj) * D;
#pragma unroll
            for (int e = 0; e < ATT_MAX_D / 32; e++)
                if (e < E)
                    o[e] = fmaf(pj, __half2float(vr[lane + 32 * e]), o[e]);
        }
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < ATT_MAX_D / 32; e++)
        if (e < E)
            wo[warp * D + lane + 32 * e] = o[e];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < n_warps; w++)
        M = fmaxf(M, wm[w]);
    float *dst = part + ((size_t)h * n_chunks + c) * (D + 2);
    for (int d = tid; d < D; d += blockDim.x) {
        float od = 0.0f;
        for (int w = 0; w < n_warps; w++)
            if (wm[w] != -INFINITY)
                od += expf(wm[w] - M) * wo[w * D + d];
        dst[2 + d] = od;
    }
    if (tid == 0) {
        float L = 0.0f;
        for (int w = 0; w < n_warps; w++)
            if (wm[w] != -INFINITY)
                L += expf(wm[w] - M) * wl[w];
        dst[0] = M;
        dst[1] = L;
    }
}

static __global__ void attn_decode_merge_kernel(sp_attn_desc a, const float *part, int n_chunks)
{
    const int D = a.head_dim, h = blockIdx.x;
    const float *ph = part + (size_t)h * n_chunks * (D + 2);
    float M = -INFINITY;
    for (int c = 0; c < n_chunks; c++)
        M = fmaxf(M, ph[(size_t)c * (D + 2)]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float L = 0.0f, od = 0.0f;
        for (int c = 0; c < n_chunks; c++) {
            const float *p = ph + (size_t)c * (D + 2);
            const float w = expf(p[0] - M);
            L += w * p[1];
            od += w * p[2 + d];
        }
        a.out[(size_t)h * D + d] = od / L;
    }
}

static bool is_decode(int n_q, int n_window)
{
    return n_q == 1 && n_window == 0;
}

extern "C" size_t sp_gpu_attention_scratch_floats(int n_q, int q_pos0, int n_head, int head_dim, int n_window)
{
    if (n_q <= 0 || q_pos0 < 0 || n_head <= 0 || head_dim <= 0)
        return 0;
    if (is_decode(n_q, n_window)) {
        size_t n_chunks = ((size_t)q_pos0 + 1 + DEC_SPLIT - 1) / DEC_SPLIT;
        return (size_t)n_head * n_chunks * ((size_t)head_dim + 2);
    }
    return (size_t)n_head * (size_t)(n_window > 0 ? n_window : 0);
}

static int smem_opt_in(const void *kernel, size_t bytes)
{
    if (bytes <= 48 * 1024)
        return 0;
    return SP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

extern "C" int sp_gpu_attention(void *stream, const sp_attn_desc *desc, float *scratch, size_t scratch_floats)
{
    if (!desc)
        return sp_error(EINVAL, "gpu attention: no descriptor");
    const sp_attn_desc a = *desc;
    if (a.n_q <= 0 || a.q_pos0 < 0 || a.n_head <= 0 || a.n_kv_head <= 0 || a.head_dim <= 0 ||
        a.n_head % a.n_kv_head != 0 || !a.q || !a.out || !a.k || !a.v || a.ldq < a.n_head * a.head_dim ||
        a.ldo < a.n_head * a.head_dim)
        return sp_error(EINVAL, "gpu attention: bad shape (n_q=%d pos0=%d heads=%d kv_heads=%d head_dim=%d ldq=%d ldo=%d)",
                        a.n_q, a.q_pos0, a.n_head, a.n_kv_head, a.head_dim, a.ldq, a.ldo);
    const int n_keys = a.q_pos0 + a.n_q;
    if (a.kv_head_stride < (size_t)n_keys * a.head_dim)
        return sp_error(EINVAL, "gpu attention: KV head stride %zu too small for %d keys", a.kv_head_stride, n_keys);
    if (a.n_window < 0 || a.n_window > a.n_q || (a.n_window > 0 && (!a.win || a.win_ld < n_keys)))
        return sp_error(EINVAL, "gpu attention: bad window (n_window=%d n_q=%d win_ld=%d)", a.n_window, a.n_q,
                        a.win_ld);
    size_t need = sp_gpu_attention_scratch_floats(a.n_q, a.q_pos0, a.n_head, a.head_dim, a.n_window);
    if (need && (!scratch || scratch_floats < need))
        return sp_error(ENOSPC, "gpu attention: scratch of %zu floats, need %zu", scratch ? scratch_floats : 0, need);
    if (a.kv_type != SP_KV_F16)
        return sp_error(ENOTSUP, "gpu attention: KV cache type %d (the device kernels read fp16 only)", (int)a.kv_type);
    if (a.head_dim % 2 || a.head_dim > ATT_MAX_D)
        return sp_error(ENOTSUP, "gpu attention: head_dim %d not supported (even, <= %d)", a.head_dim, ATT_MAX_D);
    if (a.n_head > 65535)
        return sp_error(ENOTSUP, "gpu attention: %d heads (at most 65535)", a.n_head);
    cudaStream_t s = sp_stream(stream);
    int rc;
    if (is_decode(a.n_q, a.n_window)) {
        if (a.head_dim % 32 || (uintptr_t)a.k % 4 || (uintptr_t)a.v % 4 || a.kv_head_stride % 2)
            return sp_error(ENOTSUP, "gpu attention decode: head_dim %d (needs a multiple of 32) or KV alignment "
                            "not supported", a.head_dim);
        const int n_chunks = (n_keys + DEC_SPLIT - 1) / DEC_SPLIT;
        const size_t smem = sizeof(float) * ((size_t)a.head_dim + 2 * (DEC_THREADS / 32) +
                                             (size_t)(DEC_THREADS / 32) * a.head_dim);
        if ((rc = smem_opt_in((const void *)attn_decode_kernel, smem)))
            return rc;
        SP_LAUNCH(dim3(n_chunks, a.n_head), DEC_THREADS, smem, s, attn_decode_kernel)(a, scratch, n_chunks);
        if ((rc = SP_CUDA_LAUNCHED("attn_decode_kernel")))
            return rc;
        SP_LAUNCH(a.n_head, a.head_dim < 128 ? 128 : a.head_dim, 0, s, attn_decode_merge_kernel)(a, scratch, n_chunks);
        return SP_CUDA_LAUNCHED("attn_decode_merge_kernel");
    }
    const int n_qt = (a.n_q + ATT_BQ - 1) / ATT_BQ;
    size_t smem = sizeof(float) * prefill_smem_floats(a.head_dim);
    if ((rc = smem_opt_in((const void *)attn_prefill_kernel, smem)))
        return rc;
    SP_LAUNCH(dim3(n_qt, a.n_head), ATT_THREADS, smem, s, attn_prefill_kernel)(a, scratch);
    if ((rc = SP_CUDA_LAUNCHED("attn_prefill_kernel")))
        return rc;
    if (a.n_window == 0)
        return 0;
    smem = sizeof(float) * window_smem_floats(a.head_dim);
    if ((rc = smem_opt_in((const void *)attn_window_kernel, smem)))
        return rc;
    SP_LAUNCH(dim3((n_keys + WIN_WK - 1) / WIN_WK, a.n_head), WIN_WK, smem, s, attn_window_kernel)(a, scratch);
    return SP_CUDA_LAUNCHED("attn_window_kernel");
}
