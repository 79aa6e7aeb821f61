/* gpu.h - the CUDA backend's C interface. Compiled from the .cu and .c files of gpu/ when CUDA is found;
 * without CUDA runtime/gpu_stub.c provides the same functions returning -ENODEV (NULL, false), so
 * callers never #ifdef.
 *
 * Conventions (every op below):
 * - One launcher per op: a stream (a cudaStream_t passed as void *; NULL = the legacy default
 *   stream) and a descriptor by value. Launchers validate the descriptor, enqueue work and return
 *   0 or a negative errno; they never synchronize. -ENOTSUP means "this shape/type is not
 *   implemented on the GPU" (callers fall back, the backend test reports it as unsupported, not as
 *   a failure); -EINVAL a bad descriptor; -EIO a CUDA/cuBLAS error. sp_last_error() names the call,
 *   its expression and file:line.
 * - Pointers inside descriptors are device pointers unless a field says otherwise.
 * - Every op has a CPU reference in cpu/ (cpu/dequant.h, cpu/ops.h) with the same contract;
 *   tests/gpu_test_backend_ops.c compares them op by op.
 * - Thread-safety: launchers are stateless (sp_gpu_gemm uses its handle; one handle per thread).
 */
#ifndef SP_GPU_H
#define SP_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h" /* the op descriptors shared with the CPU backend */
#include "tier.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- devices, memory, streams ---------------------------------------------------------------- */

/* Number of usable CUDA devices: >= 0, or -ENODEV when built without CUDA. Never fails loudly:
 * a driver without devices counts as 0. */
int sp_gpu_device_count(void);

/* Describe device `dev` ("NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB"). Returns 0, -ENODEV, or -EINVAL
 * for a bad index (message in sp_last_error()). */
int sp_gpu_describe(int dev, char *buf, size_t size);

/* Self-check used by the gpu test: run a small kernel (y = a*x + y over n floats) on device `dev`
 * and compare with the host. Returns 0, -ENODEV, or -EIO with the CUDA error in sp_last_error(). */
int sp_gpu_selftest(int dev);

/* Make `dev` the calling thread's current device. Returns 0, -ENODEV or -EIO. */
int sp_gpu_set_device(int dev);

/* Device memory on the current device. sp_gpu_alloc returns NULL on failure (message set); the
 * caller owns the memory and frees it with sp_gpu_free (accepts NULL). */
void *sp_gpu_alloc(size_t size);
void sp_gpu_free(void *p);

/* Pinned (page-locked) host memory, for copies that really overlap compute. NULL on failure. */
void *sp_gpu_host_alloc(size_t size);
void sp_gpu_host_free(void *p);
/* Page-lock caller memory [p, p+size) for the device (cudaHostRegister): how a host buffer first
 * bound to the GPU's NUMA node becomes pinned. 0 or -errno (message set). */
int sp_gpu_host_register(void *p, size_t size);
void sp_gpu_host_unregister(void *p);
/* The PCI bus id of device dev ("0000:65:00.0") into buf (>= 13 bytes). 0 or -errno. */
int sp_gpu_pci_bus_id(int dev, char *buf, size_t len);

/* Whether p points into device memory (cudaMalloc'ed). false without CUDA. */
bool sp_gpu_is_device_ptr(const void *p);

/* Streams: a non-blocking stream on the current device. The caller owns *out and destroys it with
 * sp_gpu_stream_destroy (accepts NULL). sp_gpu_stream_sync waits for the stream's work and returns
 * the first asynchronous error it reports (a kernel fault shows up here). */
int sp_gpu_stream_create(void **out);
void sp_gpu_stream_destroy(void *stream);
int sp_gpu_stream_sync(void *stream);

/* Asynchronous copies / memset on `stream` (pageable host memory makes them synchronous). */
int sp_gpu_memcpy_h2d(void *stream, void *dst_dev, const void *src_host, size_t n);
int sp_gpu_memcpy_d2h(void *stream, void *dst_host, const void *src_dev, size_t n);
int sp_gpu_memset(void *stream, void *dst_dev, int byte, size_t n);

/* ---- element types of activations ------------------------------------------------------------ */

typedef enum sp_gpu_dtype {
    SP_GPU_F32 = 0,
    SP_GPU_F16 = 1,          /* IEEE half */
} sp_gpu_dtype;

/* ---- dequantization --------------------------------------------------------------------------- */

/* dst[r*dst_ld + c] = value c of row r, for every type cpu/dequant.h supports (F32 F16 BF16 Q8_0
 * Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K). fp32 output is bit-identical to sp_dequant (same float
 * expression order, no contraction); fp16 output is that value rounded to nearest even. */
typedef struct sp_gpu_dequant_desc {
    uint32_t type;           /* sp_ggml_type of the source */
    int64_t rows, cols;      /* cols: a multiple of the type's block size */
    const void *src;         /* row r at src + r*src_row_bytes; only byte alignment needed */
    size_t src_row_bytes;    /* >= sp_type_row_bytes(type, cols) */
    void *dst;               /* [rows][dst_ld] of dst_type */
    int64_t dst_ld;          /* elements, >= cols */
    sp_gpu_dtype dst_type;
} sp_gpu_dequant_desc;

bool sp_gpu_dequant_supported(uint32_t type);
int sp_gpu_dequant(void *stream, sp_gpu_dequant_desc d);

/* Embedding gather: out[t][c] = value c of row ids[t] of W (any sp_gpu_dequant_supported type), fp32,
 * bit-identical to the CPU's sp_op_get_row. ids are device memory: an id outside [0, rows) yields a
 * NaN row (only the kernel sees the ids), which the caller's finiteness check reports. */
typedef sp_get_rows_desc sp_gpu_get_rows_desc; /* the shared descriptor (backend.h); ids device */
int sp_gpu_get_rows(void *stream, sp_gpu_get_rows_desc d);

/* ---- element-wise ops on fp32 activations ------------------------------------------------------ */

/* y = x / sqrt(mean(x^2) + eps) * w per row (y may alias x). */
typedef sp_rmsnorm_desc sp_gpu_rmsnorm_desc; /* the shared descriptor (backend.h) */
int sp_gpu_rmsnorm(void *stream, sp_gpu_rmsnorm_desc d);

/* RoPE in place, as sp_op_rope: x[t*ld + h*head_dim + ...], token t at position pos[t]. With a
 * table (sp_rope_table_fill layout: [n_pos][head_dim/2][cos, sin], n_pos > every pos) it is used;
 * with table == NULL the angles are computed from `base` in double (as the table is), so both
 * paths agree with the CPU to fp32 rounding. */
typedef struct sp_gpu_rope_desc {
    float *x;
    int n_tok, n_heads, head_dim;   /* head_dim even */
    int64_t ld;
    const int32_t *pos;             /* [n_tok], device */
    const float *table;             /* device, or NULL */
    int n_pos;                      /* positions in the table (> 0 with a table): a pos outside
                                       [0, n_pos) yields NaN for its token, never a read outside */
    double base;                    /* used when table == NULL */
    int mode;                       /* sp_rope_mode: 0 = adjacent pairs (llama), 1 = half split (neox) */
} sp_gpu_rope_desc;
int sp_gpu_rope(void *stream, sp_gpu_rope_desc d);

/* out[i] = silu(gate[i]) * up[i] for i < n (out may alias gate or up). */
typedef sp_swiglu_desc sp_gpu_swiglu_desc; /* the shared descriptor (backend.h) */
int sp_gpu_swiglu(void *stream, sp_gpu_swiglu_desc d);

/* ---- matrix products -------------------------------------------------------------------------- */

/* A cuBLAS handle (one per thread that launches GEMMs). NULL on failure (message set). */
typedef struct sp_gpu_blas sp_gpu_blas;
sp_gpu_blas *sp_gpu_blas_create(void);
void sp_gpu_blas_free(sp_gpu_blas *b);   /* accepts NULL */

/* Prefill GEMM through cuBLAS: y[t][r] (+)= sum_c x[t][c] * W[r][c], W fp16, fp32 accumulation
 * (CUBLAS_COMPUTE_32F). fp32 activations are first rounded to fp16 into x16 (cuBLAS has no
 * fp16 x fp32 product); fp16 activations are used directly. */
typedef struct sp_gpu_gemm_desc {
    int64_t rows, cols;      /* W: rows = output features, cols = input features */
    const void *w;           /* fp16 [rows][ldw] */
    int64_t ldw;
    int n;                   /* tokens */
    const void *x;           /* [n][ldx] of x_type */
    int64_t ldx;
    sp_gpu_dtype x_type;
    float *y;                /* fp32 [n][ldy] */
    int64_t ldy;
    bool accumulate;         /* y += instead of y = (residual adds) */
    void *x16;               /* x_type F32: scratch of SP_GPU_GEMM_X16_HEAD bytes + n*cols halves;
                                else unused */
} sp_gpu_gemm_desc;
/* fp32 activations are converted to fp16 scaled by 2^-k, the least k that keeps every finite
 * |x| <= 65504 (k = 0, an exact conversion, unless some activation is beyond fp16's range; inf and
 * NaN stay what they are), and the product is scaled back by 2^k: the scale lives in the first
 * SP_GPU_GEMM_X16_HEAD bytes of x16 (device scalars for cuBLAS), the halves after them. */
enum { SP_GPU_GEMM_X16_HEAD = 256 };
int sp_gpu_gemm(sp_gpu_blas *b, void *stream, sp_gpu_gemm_desc d);


/* Decode GEMV straight on the stored weights: one warp per output row, fp32 accumulation, for
 * n (<= SP_GPU_GEMV_MAX_N) vectors. Weight types: F16, F32, Q8_0, Q4_1 (sp_gpu_gemv_supported);
 * quantized rows are read as blocks, never dequantized to memory. */
enum { SP_GPU_GEMV_MAX_N = 8 };
typedef struct sp_gpu_gemv_desc {
    uint32_t w_type;         /* sp_ggml_type */
    int64_t rows, cols;
    const void *w;           /* row r at w + r*w_row_bytes */
    size_t w_row_bytes;
    int n;
    const float *x;          /* [n][ldx] */
    int64_t ldx;
    float *y;                /* [n][ldy] */
    int64_t ldy;
    bool accumulate;
} sp_gpu_gemv_desc;
bool sp_gpu_gemv_supported(uint32_t w_type);
int sp_gpu_gemv(void *stream, sp_gpu_gemv_desc d);

/* Prefill product on the stored weights, any sp_gpu_dequant_supported type: blocks of rows are
 * dequantized to fp32 in `scratch` and multiplied with cublasSgemm (fp32 throughout, the CPU's
 * EXACT prefill algorithm: dequantize, then sgemm), y = x W^T (or y += with accumulate). The
 * product is described as for the GEMV, with any n. Each block has at most scratch_floats / cols
 * rows (at least one row must fit). The scratch must stay untouched until the stream passes this
 * work. */
typedef struct sp_gpu_matmul_dq_desc {
    sp_gpu_gemv_desc p;      /* weights, x, y, accumulate; n unbounded */
    float *scratch;          /* device, scratch_floats */
    size_t scratch_floats;
} sp_gpu_matmul_dq_desc;
int sp_gpu_matmul_dq(sp_gpu_blas *b, void *stream, sp_gpu_matmul_dq_desc d);
/* The GEMV for the weight types without a block kernel of their own in gpu_matmul.cu (Q4_0, Q5_0,
 * Q5_1, Q4_K, Q5_K, Q6_K, BF16): each value read through the dequantizer of gpu_dequant.cu, fp32
 * accumulation, same descriptor and checks as sp_gpu_gemv (which calls it). */
int sp_gpu_gemv_dequant(void *stream, sp_gpu_gemv_desc d);

/* y[t*ldy + r] += bias[r] for t < n, r < rows (the q/k/v biases of qwen2). */
int sp_gpu_add_bias(void *stream, float *y, int64_t ldy, int n, int64_t rows, const float *bias);

/* The KV cache store of backend.h (sp_kv_store_desc) on device memory: fp32 rows to fp16 (round to
 * nearest even, as the CPU) or fp32. */
int sp_gpu_kv_store(void *stream, const sp_kv_store_desc *d);

/* ---- attention -------------------------------------------------------------------------------- */

/* Causal GQA attention over an fp16 KV cache, the contract of sp_attn_desc (runtime/backend/backend.h,
 * the descriptor the CPU backend takes too; here kv_type must be SP_KV_F16 and the pointers device
 * memory): n_q queries at positions q_pos0.., keys 0 .. q_pos0+n_q-1, query head h reads KV head
 * h / (n_head/n_kv_head).
 * n_q > 1 or n_window > 0: tiled prefill kernel with an online softmax (no n_q x n_keys matrix);
 * window scores win[h*win_ld + j] = sum over the last n_window queries of the fp32 softmax
 * probabilities (written for every j < q_pos0+n_q). n_q == 1 without window: split-K decode.
 * head_dim: even and <= 256 (decode: a multiple of 32); else -ENOTSUP. scratch: device memory of at
 * least sp_gpu_attention_scratch_floats() floats. */
size_t sp_gpu_attention_scratch_floats(int n_q, int q_pos0, int n_head, int head_dim, int n_window);
int sp_gpu_attention(void *stream, const sp_attn_desc *d, float *scratch, size_t scratch_floats);

/* ---- KV compression (DESIGN §4.2, §4.4, §5.2) -------------------------------------------------- */

/* Context scores from window scores, as sp_kv_scores_prepare (runtime/kv_select.h): per head h,
 * out[h][a] = pool over |j - a| <= kernel/2 of raw[h][j] (optionally / (l - j)), a < l_c = l -
 * window. Same float expressions in the same order as the CPU: bit-identical output. */
typedef sp_scores_prepare_desc sp_gpu_kv_prepare_desc; /* the shared descriptor (backend.h) */
int sp_gpu_kv_scores_prepare(void *stream, sp_gpu_kv_prepare_desc d);

/* Per-row top-k as sp_kv_topk: idx[r][0..k') = the indices of the k' = min(k, n) best scores of row
 * r (score descending, lower index on ties, NaN below everything, -0 == +0), ascending. One block
 * per row: an exact 8-pass radix select on a (score, index) key, then an ordered compaction. */
typedef sp_topk_desc sp_gpu_kv_topk_desc; /* the shared descriptor (backend.h) */
int sp_gpu_kv_topk(void *stream, sp_gpu_kv_topk_desc d);

/* Codebook build on the device, output identical to sp_codebook_build (runtime/codebook.h) when no
 * pair's fp32 cosine lies within the GEMM's rounding of theta (cuBLAS and OpenBLAS sum in different
 * orders; every decision is made once per pair, so the graph is symmetric either way):
 *   unit/mag per vector as sp_codebook_unit (double norm, one thread per vector: bit-identical);
 *   adjacency: SGEMM tiles of the upper triangle (cuBLAS, fp32, no TF32), cos > theta written to
 *   both bits of a bitset; self-loops always;
 *   degrees: deg[a] = sum over neighbours b of mu[b] (int64);
 *   greedy cover in ONE single-block kernel: pick the uncovered vertex of max degree (lowest
 *   index on ties), cover its uncovered neighbours, subtract mu(c) from the uncovered neighbours
 *   of every vertex c covered in the round (integer atomics: exact, order-free). No host round trip.
 * Memory (scratch, sp_gpu_codebook_scratch_bytes): n*ceil(n/64)*8 bytes of adjacency + a tile of
 * T*n floats (T = max(1, min(n, 2^24 / n)): <= 64 MiB) + (n + ceil(n/64) + 1)*8 + n*4 bytes.
 * Time: n^2*d flops of SGEMM (upper triangle), O(n^2/64) word operations for the degrees and the
 * cover updates, O(n) per pick (a block-wide arg-max): O(n * entries / 1024) per thread.
 * Uses (and sets the stream of) the cuBLAS handle b: one handle per thread, as sp_gpu_gemm. */
typedef struct sp_gpu_codebook_desc {
    const float *x;          /* [n][d] */
    int64_t n;               /* <= INT32_MAX */
    int d;
    const uint32_t *mu;      /* [n] multiplicities >= 1, or NULL (all 1) */
    float theta;
    uint32_t *index;         /* [n] entry of each vector */
    uint32_t *rep;           /* [n] (first n_entries used) the vector of each entry */
    int64_t *n_entries;      /* one int64 */
    float *mag;              /* [n] */
    float *unit;             /* [n][d] */
    void *scratch;           /* sp_gpu_codebook_scratch_bytes(n) bytes, 8-byte aligned */
    size_t scratch_bytes;
} sp_gpu_codebook_desc;
size_t sp_gpu_codebook_scratch_bytes(int64_t n);
int sp_gpu_codebook_build(sp_gpu_blas *b, void *stream, sp_gpu_codebook_desc d);

/* Decode-time codebook match, as sp_codebook_match for n_vec vectors at once: vector i (unit,
 * fp32 [d]) against its codebook entries + i*ent_stride (fp16 [n_ent[i]][d]): best[i] = the entry
 * with the largest cosine (lowest index on ties) when that cosine is > theta, else -1 (the caller
 * appends); best_cos[i] = that cosine (-inf with no entries). Dot products in fp32 with a
 * different summation order than the CPU: indices agree unless two cosines (or a cosine and theta)
 * are within fp32 rounding. One warp per entry, one block per vector. */
typedef struct sp_gpu_codebook_match_desc {
    const float *u;          /* [n_vec][d] unit vectors */
    int n_vec, d;
    const uint16_t *entries; /* fp16, codebook of vector i at entries + i*ent_stride */
    int64_t ent_stride;      /* elements */
    const int64_t *n_ent;    /* [n_vec] device */
    float theta;
    int64_t *best;           /* [n_vec] */
    float *best_cos;         /* [n_vec] or NULL */
} sp_gpu_codebook_match_desc;
int sp_gpu_codebook_match(void *stream, sp_gpu_codebook_match_desc d);

/* The decode-tail coding step of sp_kv_tail_append (runtime/kv_segment.c) for one token's K (or V)
 * of n_vec KV heads: vector v = x + v*ldx (fp32, raw) is split into magnitude and unit direction as
 * sp_codebook_unit does (bit-identical), matched against its segment codebook (seg_cb +
 * seg_off[v]*d, seg_n[v] fp16 entries) and its tail entries (tail_ent + v*tail_stride, tail_n[v]
 * of them); the segment entry wins when both are above theta and its cosine is >= the tail's;
 * with neither above theta the direction is appended (fp16, round to nearest even) as tail entry
 * tail_n[v] and tail_n[v] is incremented on the device. Writes idx[v*out_stride] (combined
 * numbering: tail entries follow the segment's) and mag[v*out_stride] (fp16 magnitude).
 * With the tail's buffers in a device copy of sp_kv_tail.mem: tail_ent = k_ent (or v_ent),
 * tail_stride = cap*d, tail_n = n_new_k, idx = k_idx + n, mag = k_mag + n, out_stride = cap.
 * The caller keeps n < cap (a full tail would get idx UINT32_MAX). Cosines: as
 * sp_gpu_codebook_match (a near-tie may pick differently than the CPU). */
enum { SP_GPU_CODE_MAX_D = 4096 };
typedef sp_codebook_code_desc sp_gpu_codebook_code_desc; /* the shared descriptor (backend.h) */
int sp_gpu_codebook_code(void *stream, sp_gpu_codebook_code_desc d);

/* Compressed decode attention over a layer segment + decode tail for every KV head of the layer,
 * same semantics as sp_segattn_decode (cpu/segment_attn.h): keys gathered from the segment's
 * sections (entry x magnitude, or raw fp16), rotated at their stored position with the RoPE table,
 * membership masks per query head; values of coded tokens as a per-entry weight scatter then a
 * GEMV over the codebook. The kernel reads the segment's own header from seg_dev (a device copy
 * of the segment bytes, validated on the host by sp_kv_segment_open) and the tail from tail_dev
 * (a device copy of tail->mem: the host struct gives its layout and token count).
 * One block per KV head; scores/weights in scratch (sp_gpu_segattn_scratch_floats).
 * Limits: head_dim even (else -EINVAL), <= 256 and group * head_dim <= 8192 (queries and one
 * rotated key per warp in shared memory, <= 40 KiB); else -ENOTSUP.
 * Weight scatter uses float atomics: the last bits of the output can vary between runs. */
struct sp_kv_segment;
struct sp_kv_tail;
typedef struct sp_gpu_segattn_desc {
    const struct sp_kv_segment *seg; /* host view (counts, layout) */
    const void *seg_dev;        /* device copy of seg->buf (seg->size bytes) */
    const struct sp_kv_tail *tail;   /* host struct or NULL */
    const void *tail_dev;       /* device copy of tail->mem (tail->mem_bytes) or NULL */
    const float *q;             /* [n_q_heads][head_dim], rotated at the query position */
    const float *rope_table;    /* [rope_n_pos][head_dim/2][cos, sin] */
    int64_t rope_n_pos;
    int mode;                   /* sp_rope_mode */
    float scale;
    float *out;                 /* [n_q_heads][head_dim] */
    float *scratch;
    size_t scratch_floats;
} sp_gpu_segattn_desc;
size_t sp_gpu_segattn_scratch_floats(const struct sp_kv_segment *seg, const struct sp_kv_tail *tail);
/* The same once the tail holds tail->cap tokens: the most any decode step over it needs. */
size_t sp_gpu_segattn_scratch_floats_full(const struct sp_kv_segment *seg, const struct sp_kv_tail *tail);
int sp_gpu_segattn_decode(void *stream, sp_gpu_segattn_desc d);

/* ---- sampling --------------------------------------------------------------------------------- */

/* Greedy: out[r] = index of the largest logits[r*ld + i], i < n (lowest index on ties; NaN never
 * wins; -1 when the row has no non-NaN value). */
typedef sp_argmax_desc sp_gpu_argmax_desc; /* the shared descriptor (backend.h) */
int sp_gpu_argmax(void *stream, sp_gpu_argmax_desc d);

/* Temperature + top-k + top-p, as sp_sampler_sample (runtime/sampler.c) given the same uniform
 * number u01 = (the sampler's pcg32 draw) / 2^32: candidates are the top_k best logits (NaN ->
 * -inf, lower id on ties), probabilities expf((l - max)/T) summed in double, the top-p prefix, then
 * the first candidate whose cumulative sum exceeds u01 * sum. temperature <= 0 or top_k == 1:
 * greedy. One block per call; supports 1 <= effective k <= SP_GPU_SAMPLE_MAX_K (else -ENOTSUP:
 * fall back to the CPU). CUDA's expf may differ from libm's by an ulp: the token agrees unless u
 * falls within that rounding of a cumulative boundary. */
enum { SP_GPU_SAMPLE_MAX_K = 1024 };
typedef sp_sample_desc sp_gpu_sample_desc; /* the shared descriptor (backend.h) */
int sp_gpu_sample(void *stream, sp_gpu_sample_desc d);

/* ---- the device tier --------------------------------------------------------------------------- */

/* The CUDA implementation of sp_tier_device_ops for device `dev`: alloc/free are cudaMalloc/cudaFree,
 * to_device/to_host are cudaMemcpyAsync on a dedicated copy stream followed by an event wait (so
 * they are synchronous for the caller, as tier.h requires, without serializing the compute
 * streams). Pass pinned host buffers (sp_gpu_host_alloc, the host pool) for full bandwidth.
 * Returns a table the caller owns (free with sp_gpu_tier_ops_free, accepts NULL), or NULL with a
 * message (no CUDA: -ENODEV message). The copy entries may be called from several threads. */
const sp_tier_device_ops *sp_gpu_tier_ops_create(int dev);
void sp_gpu_tier_ops_free(const sp_tier_device_ops *ops);

#ifdef __cplusplus
}
#endif

#endif
