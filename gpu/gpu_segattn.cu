/* gpu_segattn.cu - compressed decode attention over a layer segment + decode tail (DESIGN §5.2),
 * the device counterpart of sp_segattn_decode (cpu/segment_attn.c; contract in gpu.h).
 *
 * DESIGN: one block per KV head, reading the segment bytes in place (the header at the start of
 * seg_dev gives counts and section offsets; a head's rows start after the rows of the heads
 * before it, as map_views in runtime/kv_segment.c lays them out).
 *   1. scores: one warp per token gathers its key (codebook entry or raw fp16), rotates it at the
 *      stored position into a per-warp shared row, then dots it with the group's queries (held in
 *      shared memory); the magnitude multiplies the dot. Masked query heads get -inf.
 *   2. softmax per query head over the scores row (block reductions), probabilities in place.
 *   3. values: coded tokens scatter p*m into a per-entry weight row (float atomics), then one
 *      thread per (query head, dimension) accumulates raw/window/tail values and the weighted
 *      codebook rows (the GEMV over the codebook).
 * Scratch per head: [G][n_max] scores then [G][ent_max] weights (n_max, ent_max: host maxima). */
#include <math.h>
#include <string.h>

extern "C" {
#include "kv_segment.h"
}
#include "gpu_common.cuh"

enum { SA_THREADS = 256, SA_WARPS = SA_THREADS / 32, SA_MAX_GD = 8192, SA_MAX_D = 256 };

typedef struct sa_tail {
    int64_t n, cap;
    bool present, coded;
    const int32_t *pos;
    const uint32_t *k_idx, *v_idx;
    const uint16_t *k_mag, *v_mag, *k_ent, *v_ent;
    const int64_t *n_new_v;
    const uint16_t *raw_k, *raw_v;
} sa_tail;

typedef struct sa_args {
    const uint8_t *seg;
    sa_tail t;
    const float *q, *rope;
    int mode;
    float scale;
    float *out, *scratch;
    int64_t n_max, ent_max;
} sa_args;

static __device__ __forceinline__ const uint8_t *sec(const sp_kv_seg_header *h, int s, uint64_t off)
{
    return h->sec_len[s] ? (const uint8_t *)h + h->sec_off[s] + off : NULL;
}

static __device__ __forceinline__ float f16(const uint16_t *p, int64_t i)
{
    return __half2float(__ushort_as_half(p[i]));
}

static __device__ float block_reduce(float v, bool is_max, float *red)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    v = is_max ? sp_warp_max(v) : sp_warp_sum(v);
    __syncthreads();   /* red may still be read from the previous reduction */
    if (lane == 0)
        red[w] = v;
    __syncthreads();
    float r = red[0];
    for (int j = 1; j < SA_WARPS; j++)
        r = is_max ? fmaxf(r, red[j]) : r + red[j];
    return r;
}

static __global__ void __launch_bounds__(SA_THREADS) segattn_kernel(sa_args A)
{
    SP_DYNAMIC_SHARED(float, smem);
    __shared__ float red[SA_WARPS];
    __shared__ int bad_index;   /* an entry index outside the codebooks (a full tail's UINT32_MAX) */
    const sp_kv_seg_header *h = (const sp_kv_seg_header *)A.seg;
    const int kh = blockIdx.x, d = h->head_dim, half = d / 2, G = h->n_q_heads / h->n_kv_heads;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const bool coded = h->flags & SP_KV_SEG_CODED;
    const uint32_t ib = h->index_bytes, mb = h->mask_bytes;
    uint64_t kept = 0, ek = 0, ev = 0;
    for (int i = 0; i < kh; i++) {
        kept += (uint64_t)h->n_kept[i];
        ek += (uint64_t)h->n_ent_k[i];
        ev += (uint64_t)h->n_ent_v[i];
    }
    const uint64_t D = (uint64_t)d;
    const int32_t *pos = (const int32_t *)sec(h, SP_KV_SEC_POS, kept * 4);
    const uint8_t *mask = sec(h, SP_KV_SEC_MASK, kept * mb);
    const uint8_t *k_idx = sec(h, SP_KV_SEC_KIDX, kept * ib), *v_idx = sec(h, SP_KV_SEC_VIDX, kept * ib);
    const uint16_t *k_mag = (const uint16_t *)sec(h, SP_KV_SEC_KMAG, kept * 2);
    const uint16_t *v_mag = (const uint16_t *)sec(h, SP_KV_SEC_VMAG, kept * 2);
    const uint16_t *k_cb = (const uint16_t *)sec(h, SP_KV_SEC_KCB, ek * D * 2);
    const uint16_t *v_cb = (const uint16_t *)sec(h, SP_KV_SEC_VCB, ev * D * 2);
    const uint64_t woff = (uint64_t)kh * (uint64_t)h->window * D * 2;
    const uint16_t *win_k = (const uint16_t *)sec(h, SP_KV_SEC_WINK, woff);
    const uint16_t *win_v = (const uint16_t *)sec(h, SP_KV_SEC_WINV, woff);
    const uint16_t *raw_k = (const uint16_t *)sec(h, SP_KV_SEC_RAWK, kept * D * 2);
    const uint16_t *raw_v = (const uint16_t *)sec(h, SP_KV_SEC_RAWV, kept * D * 2);
    const int64_t nk = h->n_kept[kh], nw = h->window, nt = A.t.present ? A.t.n : 0, N = nk + nw + nt;
    const int64_t ent_k_seg = h->n_ent_k[kh], ent_seg = h->n_ent_v[kh];
    int64_t ent_tail = A.t.present && A.t.coded ? A.t.n_new_v[kh] : 0;
    ent_tail = ent_tail < 0 ? 0 : ent_tail > A.t.cap ? A.t.cap : ent_tail;   /* scratch holds cap */
    const int64_t ent = ent_seg + ent_tail;
    const size_t tc = (size_t)A.t.cap, trow = (size_t)kh * tc;

    float *qs = smem;                    /* [G][d] */
    float *krow = smem + G * d + w * d;  /* [SA_WARPS][d]: this warp's rotated key */
    float *s = A.scratch + (size_t)kh * G * (A.n_max + A.ent_max);   /* [G][n_max] */
    float *wv = s + (size_t)G * A.n_max;                               /* [G][ent_max] */
    const float *qh = A.q + (size_t)kh * G * d;
    for (int i = threadIdx.x; i < G * d; i += blockDim.x)
        qs[i] = qh[i];
    for (int64_t i = threadIdx.x; i < (int64_t)G * ent; i += blockDim.x)
        wv[(i / ent) * A.ent_max + i % ent] = 0.0f;
    if (threadIdx.x == 0)
        bad_index = 0;
    __syncthreads();

    /* 1. scores */
    for (int64_t j = w; j < N; j += SA_WARPS) {
        const uint16_t *src;
        float m = 1.0f;
        int64_t p;
        uint64_t bits = ~0ull;
        if (j < nk) {
            p = pos ? pos[j] : j;
            if (coded) {
                uint32_t e = ib == 2 ? ((const uint16_t *)k_idx)[j] : ((const uint32_t *)k_idx)[j];
                src = k_cb + (size_t)e * d;
                m = f16(k_mag, j);
            } else {
                src = raw_k + (size_t)j * d;
            }
            if (mask) {
                bits = 0;
                for (uint32_t b = 0; b < mb; b++)
                    bits |= (uint64_t)mask[(size_t)j * mb + b] << (8 * b);
            }
        } else if (j < nk + nw) {
            p = h->l - nw + (j - nk);
            src = win_k + (size_t)(j - nk) * d;
        } else {
            size_t r = trow + (size_t)(j - nk - nw);
            p = A.t.pos[j - nk - nw];
            if (A.t.coded) {
                uint32_t ik = A.t.k_idx[r];
                if (ik >= (uint64_t)ent_k_seg + tc) {   /* no such entry: the head's output becomes NaN */
                    bad_index = 1;
                    src = A.t.k_ent + trow * d;   /* any readable row */
                } else {
                    src = ik < ent_k_seg ? k_cb + (size_t)ik * d : A.t.k_ent + (trow + ik - (size_t)ent_k_seg) * d;
                }
                m = f16(A.t.k_mag, (int64_t)r);
            } else {
                src = A.t.raw_k + r * d;
            }
        }
        const float *cs = A.rope + (size_t)p * half * 2;
        for (int i = lane; i < half; i += 32) {
            int a = A.mode == 0 ? 2 * i : i, b = A.mode == 0 ? 2 * i + 1 : i + half;
            float x0 = f16(src, a), x1 = f16(src, b), c = cs[2 * i], sn = cs[2 * i + 1];
            krow[a] = x0 * c - x1 * sn;
            krow[b] = x0 * sn + x1 * c;
        }
        __syncwarp();
        for (int g = 0; g < G; g++) {
            float acc = 0.0f;
            for (int i = lane; i < d; i += 32)
                acc += qs[g * d + i] * krow[i];
            acc = sp_warp_sum(acc);
            if (lane == 0)
                s[(size_t)g * A.n_max + j] = g < 64 && (bits >> g & 1) ? m * A.scale * acc : -INFINITY;
        }
        __syncwarp();   /* krow is rewritten for the next token */
    }
    __syncthreads();

    /* 2. softmax per query head */
    for (int g = 0; g < G; g++) {
        float *sg = s + (size_t)g * A.n_max;
        float mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < N; j += blockDim.x)
            mx = fmaxf(mx, sg[j]);
        mx = block_reduce(mx, true, red);
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < N; j += blockDim.x) {
            float e = mx == -INFINITY ? 0.0f : expf(sg[j] - mx);
            sg[j] = e;
            sum += e;
        }
        sum = block_reduce(sum, false, red);
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t j = threadIdx.x; j < N; j += blockDim.x)
            sg[j] *= inv;
    }
    __syncthreads();

    /* 3a. per-entry weights of coded tokens */
    if (coded)
        for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
            uint32_t e = ib == 2 ? ((const uint16_t *)v_idx)[j] : ((const uint32_t *)v_idx)[j];
            float m = f16(v_mag, j);
            if (e >= (uint64_t)ent) {
                bad_index = 1;
                continue;
            }
            for (int g = 0; g < G; g++) {
                float p = s[(size_t)g * A.n_max + j];
                if (p != 0.0f)
                    atomicAdd(&wv[(size_t)g * A.ent_max + e], p * m);
            }
        }
    if (nt > 0 && A.t.coded)
        for (int64_t j = threadIdx.x; j < nt; j += blockDim.x) {
            size_t r = trow + (size_t)j;
            uint32_t e = A.t.v_idx[r];
            float m = f16(A.t.v_mag, (int64_t)r);
            if (e >= (uint64_t)ent) {
                bad_index = 1;
                continue;
            }
            for (int g = 0; g < G; g++) {
                float p = s[(size_t)g * A.n_max + nk + nw + j];
                if (p != 0.0f)
                    atomicAdd(&wv[(size_t)g * A.ent_max + e], p * m);
            }
        }
    __syncthreads();

    /* 3b. outputs: one thread per (query head, dimension) */
    for (int t = threadIdx.x; t < G * d; t += blockDim.x) {
        int g = t / d, c = t % d;
        const float *pg = s + (size_t)g * A.n_max;
        float acc = 0.0f;
        if (!coded)
            for (int64_t j = 0; j < nk; j++)
                acc += pg[j] * f16(raw_v, j * d + c);
        for (int64_t j = 0; j < nw; j++)
            acc += pg[nk + j] * f16(win_v, j * d + c);
        if (nt > 0 && !A.t.coded)
            for (int64_t j = 0; j < nt; j++)
                acc += pg[nk + nw + j] * f16(A.t.raw_v, (int64_t)((trow + (size_t)j) * d) + c);
        const float *wg = wv + (size_t)g * A.ent_max;
        for (int64_t e = 0; e < ent; e++) {
            float we = wg[e];
            if (we != 0.0f)
                acc += we * (e < ent_seg ? f16(v_cb, e * d + c)
                                         : f16(A.t.v_ent, (int64_t)((trow + (size_t)(e - ent_seg)) * d) + c));
        }
        A.out[(size_t)kh * G * d + t] = bad_index ? NAN : acc;
    }
}

static void tail_maxima(const sp_kv_segment *seg, const sp_kv_tail *tail, int64_t *n_max, int64_t *ent_max)
{
    const sp_kv_seg_header *h = seg->hdr;
    int64_t nm = 0, em = 0;
    for (int i = 0; i < h->n_kv_heads; i++) {
        int64_t n = h->n_kept[i] + h->window + (tail ? tail->n : 0);
        /* a tail adds at most one entry per token and head: bounded by its capacity whatever the
         * device copy says */
        int64_t e = h->n_ent_v[i] + (tail && tail->coded ? tail->cap : 0);
        nm = n > nm ? n : nm;
        em = e > em ? e : em;
    }
    *n_max = nm;
    *ent_max = em;
}

extern "C" size_t sp_gpu_segattn_scratch_floats(const sp_kv_segment *seg, const sp_kv_tail *tail)
{
    if (!seg || !seg->hdr)
        return 0;
    int64_t nm, em;
    tail_maxima(seg, tail, &nm, &em);
    return (size_t)seg->hdr->n_kv_heads * (size_t)seg->group * (size_t)(nm + em) + 1;
}

extern "C" size_t sp_gpu_segattn_scratch_floats_full(const sp_kv_segment *seg, const sp_kv_tail *tail)
{
    if (!tail)
        return sp_gpu_segattn_scratch_floats(seg, NULL);
    sp_kv_tail full = *tail;
    full.n = full.cap;
    return sp_gpu_segattn_scratch_floats(seg, &full);
}

static const void *tail_ptr(const sp_kv_tail *t, const void *host, const void *dev)
{
    return host ? (const uint8_t *)dev + ((const uint8_t *)host - (const uint8_t *)t->mem) : NULL;
}

extern "C" int sp_gpu_segattn_decode(void *stream, sp_gpu_segattn_desc d)
{
    const sp_kv_segment *seg = d.seg;
    if (!seg || !seg->hdr || !d.seg_dev || !d.q || !d.rope_table || !d.out || (d.mode != 0 && d.mode != 1) ||
        (d.tail && !d.tail_dev))
        return sp_error(EINVAL, "gpu segment attention: bad descriptor (NULL segment, query, table or output)");
    const sp_kv_seg_header *h = seg->hdr;
    int hd = h->head_dim, G = seg->group;
    if (hd % 2)
        return sp_error(EINVAL, "gpu segment attention: head_dim %d must be even for RoPE", hd);
    /* membership masks are 64-bit (bits >> g): a larger group has no mask bit for its heads */
    if (h->n_kv_heads < 1 || G != h->n_q_heads / h->n_kv_heads || G < 1 || G > SP_KV_MAX_GROUP || h->mask_bytes > 8)
        return sp_error(EINVAL, "gpu segment attention: group %d (%d query heads / %d KV heads, %u mask bytes); "
                        "at most %d query heads per KV head", G, h->n_q_heads, h->n_kv_heads, h->mask_bytes,
                        SP_KV_MAX_GROUP);
    if (hd > SA_MAX_D || G * hd > SA_MAX_GD)
        return sp_error(ENOTSUP, "gpu segment attention: group %d x head_dim %d exceeds %d floats of shared queries",
                        G, hd, SA_MAX_GD);
    if (h->l + (int64_t)h->n_folded > d.rope_n_pos)
        return sp_error(EINVAL, "gpu segment attention: RoPE table has %lld positions, segment needs %lld",
                        (long long)d.rope_n_pos, (long long)(h->l + h->n_folded));
    const sp_kv_tail *t = d.tail;
    if (t) {
        if (t->n_kv_heads != h->n_kv_heads || t->d != hd || t->coded != (bool)(h->flags & SP_KV_SEG_CODED))
            return sp_error(EINVAL, "gpu segment attention: the tail has another shape than the segment");
        for (int64_t j = 0; j < t->n; j++)
            if (t->pos[j] < 0 || t->pos[j] >= d.rope_n_pos)
                return sp_error(EINVAL, "gpu segment attention: tail position %d outside the RoPE table (%lld)",
                                t->pos[j], (long long)d.rope_n_pos);
    }
    size_t need = sp_gpu_segattn_scratch_floats(seg, t);
    if (!d.scratch || d.scratch_floats < need)
        return sp_error(EINVAL, "gpu segment attention: scratch of %zu floats, needs %zu", d.scratch_floats, need);
    sa_args A;
    memset(&A, 0, sizeof A);
    A.seg = (const uint8_t *)d.seg_dev;
    if (t && t->coded && t->raw_window > 0)
        return sp_error(ENOTSUP, "gpu segment attention: a coded tail with a raw window (decode_window = %lld) "
                        "is CPU-only so far", (long long)t->raw_window);
    if (t) {
        A.t.present = true;
        A.t.coded = t->coded;
        A.t.n = t->n;
        A.t.cap = t->cap;
        A.t.pos = (const int32_t *)tail_ptr(t, t->pos, d.tail_dev);
        A.t.k_idx = (const uint32_t *)tail_ptr(t, t->k_idx, d.tail_dev);
        A.t.v_idx = (const uint32_t *)tail_ptr(t, t->v_idx, d.tail_dev);
        A.t.k_mag = (const uint16_t *)tail_ptr(t, t->k_mag, d.tail_dev);
        A.t.v_mag = (const uint16_t *)tail_ptr(t, t->v_mag, d.tail_dev);
        A.t.k_ent = (const uint16_t *)tail_ptr(t, t->k_ent, d.tail_dev);
        A.t.v_ent = (const uint16_t *)tail_ptr(t, t->v_ent, d.tail_dev);
        A.t.n_new_v = (const int64_t *)tail_ptr(t, t->n_new_v, d.tail_dev);
        A.t.raw_k = (const uint16_t *)tail_ptr(t, t->raw_k, d.tail_dev);
        A.t.raw_v = (const uint16_t *)tail_ptr(t, t->raw_v, d.tail_dev);
    }
    A.q = d.q;
    A.rope = d.rope_table;
    A.mode = d.mode;
    A.scale = d.scale;
    A.out = d.out;
    A.scratch = d.scratch;
    tail_maxima(seg, t, &A.n_max, &A.ent_max);
    size_t shmem = (size_t)(G * hd + SA_WARPS * hd) * sizeof(float);   /* <= (8192 + 8*256)*4 = 40 KiB */
    SP_LAUNCH(h->n_kv_heads, SA_THREADS, shmem, sp_stream(stream), segattn_kernel)(A);
    return SP_CUDA_LAUNCHED("segattn_kernel");
}
