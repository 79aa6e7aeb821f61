/* backend.h - the one interface under the forward pass, the KV compression and the tier copies
 * (DESIGN §9). A backend is a set of buffers in its memory, two streams (compute and copy) with
 * events between them, and one slot per op; the CPU backend (cpu/) and the CUDA backend (gpu/)
 * implement it, and backend/registry.c is the only place that knows which were built.
 *
 * Memory: pointers inside the op descriptors below are BACKEND pointers: host memory for the CPU
 * backend, device memory for CUDA. They come from sp_backend_buffer_base() (+ an offset) of a
 * buffer of that backend, or, for weights, from sp_backend_buffer_base() of the upload. Host code
 * never dereferences a backend pointer of a device backend: it reads and writes through
 * sp_backend_buffer_get/set or the async copies.
 *
 * Ordering: every op runs on the backend's compute stream, in call order. Copies run on the stream
 * they name. An event recorded on one stream completes when everything queued on that stream
 * before it has completed; sp_backend_stream_wait makes a stream wait for it. The CPU backend's
 * compute stream is the calling thread (ops are done when their call returns) and its copy stream
 * is a real worker thread, so ordering mistakes show on CPU runs too.
 *
 * Errors: calls return 0 or a negative errno with a message in sp_last_error(); -ENOTSUP means
 * "this backend has no such op, or not for this descriptor" (the caller falls back or reports it,
 * never as a failure); sp_backend_supports() asks first. Constructors return NULL.
 *
 * Thread-safety: one thread drives a backend's compute stream; copies and events may be issued
 * from any thread (they are serialized per stream). Buffers are owned by whoever allocated them.
 */
#ifndef SP_BACKEND_H
#define SP_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "numerics.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SP_BACKEND_API_VERSION 1

typedef struct sp_backend sp_backend_t;
typedef struct sp_backend_buffer sp_buffer_t;
typedef struct sp_backend_event sp_event_t;

typedef enum sp_backend_kind {
    SP_BACKEND_CPU = 0,
    SP_BACKEND_CUDA = 1,
    SP_BACKEND_KIND_COUNT
} sp_backend_kind;

typedef enum sp_stream_id {
    SP_STREAM_COMPUTE = 0,
    SP_STREAM_COPY = 1,
} sp_stream_id;

typedef enum sp_mem_kind {
    SP_MEM_DEVICE = 0,       /* the backend's own memory (host memory for the CPU backend) */
    SP_MEM_HOST_PINNED = 1,  /* page-locked host memory the backend copies from at full speed */
} sp_mem_kind;

/* A byte budget a buffer is charged to (the tiers implement it): charge returns 0 or -ENOSPC with a
 * message; release gives the bytes back. NULL fields: no budget. */
typedef struct sp_budget {
    void *user;
    int (*charge)(void *user, size_t bytes);
    void (*release)(void *user, size_t bytes);
} sp_budget;

/* ---- creation (backend/registry.c) -------------------------------------------------------------- */

/* Versioned parameters: set .version = SP_BACKEND_API_VERSION (sp_backend_default_params does). */
typedef struct sp_backend_params {
    uint32_t version;
    int n_threads;           /* CPU: threads of the compute pool (the caller included); >= 1 */
    sp_numerics numerics;    /* rounding of the products and attention (numerics.h) */
    size_t thread_floats;    /* CPU: scratch floats per thread (max over the ops; cpu/ops.h) */
    size_t shared_floats;    /* CPU: scratch floats shared by one op's threads */
    size_t accum_floats;     /* CPU: most n*rows of an accumulating matmul (0: none allowed) */
    int device;              /* CUDA: device index */
} sp_backend_params;

sp_backend_params sp_backend_default_params(void);

/* Whether kind was built and can run here; when not, *why (if non-NULL) says why
 * ("not built: configure with -DSPINDLE_CUDA=ON", "no CUDA device"). Never fails loudly. */
bool sp_backend_available(sp_backend_kind kind, const char **why);

/* "cpu", "cuda"; NULL for an unknown kind. sp_backend_kind_parse: 0 or -EINVAL. */
const char *sp_backend_kind_name(sp_backend_kind kind);
int sp_backend_kind_parse(const char *name, sp_backend_kind *out);

/* Create a backend. NULL with a message when it is not available or out of memory. The caller
 * owns it: sp_backend_free (accepts NULL) waits for both streams, then frees. */
sp_backend_t *sp_backend_create(sp_backend_kind kind, const sp_backend_params *p);
void sp_backend_free(sp_backend_t *be);
/* Another owner: each retain needs one more sp_backend_free (a tiered provider that outlives the
 * context whose backend it copies on retains it). Returns be. Thread-safe. */
sp_backend_t *sp_backend_retain(sp_backend_t *be);

sp_backend_kind sp_backend_get_kind(const sp_backend_t *be);
const char *sp_backend_name(const sp_backend_t *be);          /* "cpu (2 threads)", "cuda: H100" */
sp_numerics sp_backend_get_numerics(const sp_backend_t *be);
/* The PCI bus id of a device backend's GPU ("0000:65:00.0"; its NUMA locality, io/topology.h), or ""
 * for a backend on the host. */
const char *sp_backend_pci_bus_id(const sp_backend_t *be);
/* Change the rounding between ops (the owner's choice, like a parameter). */
void sp_backend_set_numerics(sp_backend_t *be, sp_numerics n);
/* Host synchronisations made so far (stream/event syncs and synchronous copies issued by the
 * caller): decode must make none (tests read this). */
uint64_t sp_backend_host_syncs(const sp_backend_t *be);
/* The same count over every backend, of the synchronisations the calling thread made: what stalls
 * that thread (the decode thread's count, without a tier scheduler worker's waits on its copies). */
uint64_t sp_backend_thread_host_syncs(void);

/* ---- memory ------------------------------------------------------------------------------------ */

/* size bytes of `kind` memory, charged to budget (may be NULL) first. NULL with a message. The
 * contents are unspecified. */
sp_buffer_t *sp_backend_buffer_alloc(sp_backend_t *be, sp_mem_kind kind, size_t size,
                                     const sp_budget *budget);
void sp_backend_buffer_free(sp_buffer_t *b);               /* accepts NULL; releases the budget */
/* A non-owning buffer over size bytes of be's memory at base, allocated elsewhere (a tier): the
 * copies and ops accept it like any buffer; freeing it frees only the handle. host: base may be
 * dereferenced on the host. NULL with a message (out of memory). */
sp_buffer_t *sp_backend_buffer_view(sp_backend_t *be, void *base, size_t size, bool host);
void *sp_backend_buffer_base(const sp_buffer_t *b);         /* a backend pointer */
size_t sp_backend_buffer_size(const sp_buffer_t *b);
bool sp_backend_buffer_is_host(const sp_buffer_t *b);       /* base may be dereferenced on the host */
/* Synchronous host<->buffer transfers and memset (not for the decode path). 0 or -EINVAL (range). */
int sp_backend_buffer_set(sp_buffer_t *b, size_t off, const void *src, size_t n);
int sp_backend_buffer_get(const sp_buffer_t *b, size_t off, void *dst, size_t n);
int sp_backend_buffer_memset(sp_buffer_t *b, size_t off, int byte, size_t n);

/* ---- ordering ---------------------------------------------------------------------------------- */

sp_event_t *sp_backend_event_new(sp_backend_t *be);         /* NULL with a message */
void sp_backend_event_free(sp_event_t *ev);                  /* accepts NULL; waits if pending */
/* Record ev on stream s (replacing an earlier record). */
int sp_backend_event_record(sp_backend_t *be, sp_event_t *ev, sp_stream_id s);
/* Make stream s wait for ev's last record (a never-recorded event is complete). */
int sp_backend_stream_wait(sp_backend_t *be, sp_stream_id s, sp_event_t *ev);
/* Block the calling thread until ev (or everything queued on s) has completed. */
int sp_backend_event_sync(sp_backend_t *be, sp_event_t *ev);
int sp_backend_stream_sync(sp_backend_t *be, sp_stream_id s);
/* Whether ev has completed, without blocking. */
bool sp_backend_event_done(sp_backend_t *be, sp_event_t *ev);

/* Asynchronous copies on stream s. Host memory must stay valid and unchanged until an event
 * recorded after the copy completes. h2d: host -> dst buffer; d2h: src buffer -> host; d2d:
 * buffer -> buffer of the same backend. */
int sp_backend_copy_h2d(sp_backend_t *be, sp_stream_id s, sp_buffer_t *dst, size_t dst_off,
                        const void *src, size_t n);
int sp_backend_copy_d2h(sp_backend_t *be, sp_stream_id s, void *dst, const sp_buffer_t *src,
                        size_t src_off, size_t n);
int sp_backend_copy_d2d(sp_backend_t *be, sp_stream_id s, sp_buffer_t *dst, size_t dst_off,
                        const sp_buffer_t *src, size_t src_off, size_t n);

/* ---- ops: one descriptor type per op, shared by every backend ---------------------------------- */

typedef enum sp_op {
    SP_OP_GET_ROWS,          /* embedding gather */
    SP_OP_MATMUL,            /* matmul/GEMV over stored (quantized) weights, bias, accumulate */
    SP_OP_RMSNORM,
    SP_OP_ROPE,
    SP_OP_SWIGLU,
    SP_OP_ATTN_PREFILL,      /* causal attention of a block of queries, with window scores */
    SP_OP_ATTN_DECODE,       /* one query per head over the fp16 cache */
    SP_OP_SCORES_PREPARE,    /* window scores -> pooled context scores */
    SP_OP_TOPK,
    SP_OP_CODEBOOK_BUILD,
    SP_OP_CODEBOOK_CODE,     /* codebook match + tail coding of one decode token */
    SP_OP_SEGATTN,           /* decode attention over a compressed layer segment + tail */
    SP_OP_ARGMAX,
    SP_OP_SAMPLE,
    SP_OP_KV_STORE,          /* new K/V rows into the fp16 (or fp32) cache */
    SP_OP_COUNT
} sp_op;

const char *sp_op_name(sp_op op);

typedef enum sp_rope_mode {
    SP_ROPE_NORM = 0,   /* rotate adjacent pairs (x[2i], x[2i+1]): llama GGUF layout */
    SP_ROPE_NEOX = 1,   /* rotate (x[i], x[i + d/2]): qwen2 / "neox" layout */
} sp_rope_mode;

typedef enum sp_kv_type {
    SP_KV_F16 = 0,           /* IEEE half (llama.cpp's default cache type) */
    SP_KV_F32 = 1,
} sp_kv_type;

/* A weight matrix as stored in the GGUF file: rows = output features (ne[1]), cols = input features
 * (ne[0]), row-major, each row row_bytes long; data may be only byte-aligned. */
typedef struct sp_wmat {
    uint32_t type;           /* sp_ggml_type */
    int64_t rows, cols;
    size_t row_bytes;
    const void *data;
} sp_wmat;

/* out[t][0..cols) = row ids[t] of w, dequantized to fp32. ids: host (CPU) or device (CUDA) memory, as
 * the backend's buffers are. */
typedef struct sp_get_rows_desc {
    const sp_wmat *w;
    const int32_t *ids;      /* [n] */
    int n;
    float *out;
    int64_t ldo;
} sp_get_rows_desc;

/* Up to SP_MM_MAX matrices sharing the input x: y_i[t][r] (+)= sum_c x[t][c] W_i[r][c] (+ bias_i[r]).
 * All W_i have the same cols. swiglu (nw == 2, equal rows): afterwards y_0 = silu(y_0) * y_1. */
#define SP_MM_MAX 4
typedef struct sp_matmul_desc {
    int nw;
    const sp_wmat *w[SP_MM_MAX];
    float *y[SP_MM_MAX];
    int ldy[SP_MM_MAX];
    const float *bias[SP_MM_MAX]; /* [rows] or NULL */
    const float *x;          /* [n][ldx] */
    int n, ldx;
    bool accumulate;         /* y += instead of y = */
    bool swiglu;
} sp_matmul_desc;

/* y = x / sqrt(mean(x^2) + eps) * w per row (y may alias x). */
typedef struct sp_rmsnorm_desc {
    int n_rows, n;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    const float *w;          /* [n] */
    float eps;
} sp_rmsnorm_desc;

/* RoPE in place: x[t*ld + h*head_dim + ...], token t at position pos[t] (< table_n_pos), table in
 * the layout of sp_rope_table_fill: [n_pos][head_dim/2][cos, sin]. */
typedef struct sp_rope_desc {
    float *x;
    int n_tok, n_heads, head_dim;   /* head_dim even */
    int64_t ld;
    const int32_t *pos;             /* [n_tok], host (CPU) or device (CUDA) */
    const float *table;
    int64_t table_n_pos;
    sp_rope_mode mode;
} sp_rope_desc;

/* out[i] = silu(gate[i]) * up[i] for i < n (out may alias gate or up). */
typedef struct sp_swiglu_desc {
    int64_t n;
    const float *gate, *up;
    float *out;
} sp_swiglu_desc;

/* Causal grouped-query attention of n_q new queries at positions q_pos0 .. q_pos0+n_q-1 against keys
 * 0 .. q_pos0+n_q-1 already in the cache (RoPE applied to both). Query head h uses KV head
 * h / (n_head / n_kv_head). Computed in blocks with an online softmax: no n_q x n_keys matrix.
 * Window scores (n_window > 0, <= n_q): for each query head h and key j, the fp32 softmax
 * probabilities of the last n_window queries summed over those queries, written to
 * win[h * win_ld + j] for j < q_pos0+n_q. With win_w, window row i's probabilities are multiplied by
 * win_w[i] before the sum (PyramidInfer's weights). */
typedef struct sp_attn_desc {
    int n_q, q_pos0;
    int n_head, n_kv_head, head_dim;
    const float *q;          /* q[t*ldq + h*head_dim + d] */
    int ldq;
    float *out;              /* out[t*ldo + h*head_dim + d] */
    int ldo;
    const void *k, *v;       /* element [g][p][d] at (g*kv_head_stride + p*head_dim + d) */
    sp_kv_type kv_type;
    size_t kv_head_stride;   /* elements between KV heads (>= n_keys*head_dim) */
    float scale;             /* usually 1/sqrt(head_dim) */
    int n_window;            /* 0: no window scores */
    float *win;              /* [n_head][win_ld] or NULL */
    int win_ld;              /* >= q_pos0+n_q */
    const float *win_w;      /* [n_window] row weights, or NULL (all 1) */
} sp_attn_desc;

/* Context scores from window scores (sp_kv_scores_prepare): per head h, out[h][a] = pool over
 * |j - a| <= kernel/2 of raw[h][j] (optionally / (l - j)), a < l_c = max(l - window, 0). */
typedef struct sp_scores_prepare_desc {
    const float *raw;        /* [n_heads][l] */
    int n_heads;
    int64_t l, window;
    int kernel;              /* odd >= 1 */
    int pool_type;           /* sp_pool_type: 0 = max, 1 = avg */
    bool divide_by_l_minus_a;
    float *out;              /* [n_heads][l_c] */
} sp_scores_prepare_desc;

/* Per-row top-k (sp_kv_topk): idx[r][0..k') = indices of the k' = min(k, n) best scores of row r
 * (descending score, lower index on ties, NaN lowest), in ascending index order. */
typedef struct sp_topk_desc {
    const float *s;          /* [n_rows][ld] */
    int n_rows;
    int64_t n, ld;
    int64_t k;
    int32_t *idx;            /* [n_rows][idx_ld] */
    int64_t idx_ld;
} sp_topk_desc;

/* Codebook over n vectors (sp_codebook_build, DESIGN §4.4): index[i] = entry of vector i, rep[e] =
 * the vector of entry e, *n_entries; mag/unit the split of every vector. */
typedef struct sp_codebook_build_desc {
    const float *x;          /* [n][d] */
    int64_t n;
    int d;
    const uint32_t *mu;      /* [n] multiplicities >= 1, or NULL */
    float theta;
    uint32_t *index;         /* [n] */
    uint32_t *rep;           /* [n] */
    int64_t *n_entries;      /* one int64 (backend memory) */
    float *mag;              /* [n] */
    float *unit;             /* [n][d] */
} sp_codebook_build_desc;

/* Decode-tail coding of one token's K (or V) for n_vec KV heads (the step of sp_kv_tail_append):
 * split into magnitude and direction, match against the segment codebook (seg_cb + seg_off[v]*d,
 * seg_n[v] entries) and the tail's own entries; append a new tail entry when nothing is above theta.
 * Writes idx[v*out_stride] (tail entries numbered after the segment's) and mag[v*out_stride]. The
 * caller keeps tail_n[v] < tail_cap: a full tail is -ENOSPC before anything is written. */
typedef struct sp_codebook_code_desc {
    const float *x;          /* [n_vec][ldx] */
    int n_vec, d;
    int64_t ldx;
    const uint16_t *seg_cb;
    const int64_t *seg_off;  /* [n_vec] */
    const int64_t *seg_n;    /* [n_vec] */
    uint16_t *tail_ent;      /* fp16 [n_vec][tail_stride] */
    int64_t tail_stride;
    int64_t *tail_n;         /* [n_vec], updated */
    int64_t tail_cap;
    float theta;
    uint32_t *idx;
    uint16_t *mag;
    int64_t out_stride;
} sp_codebook_code_desc;

/* Decode attention over one layer's compressed segment + decode tail (DESIGN §5.2) for every KV head
 * (kv_head < 0) or one. The segment crosses the seam as a HOST view of its parsed header plus a
 * backend pointer to its bytes; the tail likewise (host struct, backend copy of its memory). */
struct sp_kv_seg_header;
struct sp_kv_segment;
struct sp_kv_tail;
typedef struct sp_segattn_desc {
    const struct sp_kv_segment *seg; /* host view: header and layout, parsed once at placement */
    const void *seg_bytes;      /* backend pointer to the segment's bytes (seg->size of them) */
    const struct sp_kv_tail *tail;   /* host struct (layout, token count) or NULL */
    const void *tail_bytes;     /* backend pointer to tail->mem, or NULL */
    int kv_head;                /* < 0: every KV head */
    const float *q;             /* [n_q_heads][head_dim] (one KV head: its group's rows) */
    const float *rope_table;
    int64_t rope_n_pos;
    sp_rope_mode mode;
    float scale;
    float *out;                 /* as q */
    /* CPU: host scratch of sp_backend_cpu_segattn_scratch_floats() floats. CUDA: NULL = the
     * backend's own scratch, sized once by sp_backend_reserve(SP_OP_SEGATTN, d) for d->tail at its
     * full capacity (so no decode step grows it), or a device buffer of that many floats. */
    float *scratch;
    size_t scratch_floats;
} sp_segattn_desc;

/* Greedy: out[r] = index of the largest logits[r*ld + i] (lowest on ties, NaN never wins, -1 for an
 * all-NaN row). */
typedef struct sp_argmax_desc {
    const float *logits;
    int n_rows;
    int64_t n, ld;
    int32_t *out;            /* [n_rows] */
} sp_argmax_desc;

/* Temperature + top-k + top-p with the caller's uniform draw u01 (sp_sampler_sample's contract). */
typedef struct sp_sample_desc {
    const float *logits;     /* [n] */
    int64_t n;
    float temperature;
    int top_k;
    float top_p;
    double u01;
    int32_t *out;            /* one int32 */
} sp_sample_desc;

/* Store n tokens at positions pos0.. of one layer's cache from row-major fp32 k[t*ldk + g*head_dim + d]
 * (same for v), converted to kv_type (round to nearest even). The cache element [g][p][d] is at
 * g*head_stride + p*head_dim + d from k_dst (v_dst); pos0 + n must be <= n_pos. v_dst NULL: K only
 * (the captured pre-RoPE keys). */
typedef struct sp_kv_store_desc {
    int n, pos0, n_pos;
    int n_kv_head, head_dim;
    const float *k, *v;
    int ldk, ldv;
    void *k_dst, *v_dst;
    size_t head_stride;      /* elements between KV heads (>= n_pos*head_dim) */
    sp_kv_type kv_type;
} sp_kv_store_desc;

/* Size the backend's scratch for the largest descriptor op will see (e.g. decode attention at the
 * last position of the context), so that later calls never reallocate (a reallocation waits for the
 * queued work: a host synchronisation). 0 when the backend needs no scratch for op; -ENOMEM. */
int sp_backend_reserve(sp_backend_t *be, sp_op op, const void *desc);

/* Whether be implements op for this descriptor (desc may be NULL: for some descriptor). */
bool sp_backend_supports(const sp_backend_t *be, sp_op op, const void *desc);

/* Each runs the op on the compute stream: 0, -ENOTSUP (slot empty or descriptor not supported),
 * -EINVAL, or another negative errno, with a message. */
int sp_backend_get_rows(sp_backend_t *be, const sp_get_rows_desc *d);
int sp_backend_matmul(sp_backend_t *be, const sp_matmul_desc *d);
int sp_backend_rmsnorm(sp_backend_t *be, const sp_rmsnorm_desc *d);
int sp_backend_rope(sp_backend_t *be, const sp_rope_desc *d);
int sp_backend_swiglu(sp_backend_t *be, const sp_swiglu_desc *d);
int sp_backend_attn_prefill(sp_backend_t *be, const sp_attn_desc *d);
int sp_backend_attn_decode(sp_backend_t *be, const sp_attn_desc *d);
int sp_backend_scores_prepare(sp_backend_t *be, const sp_scores_prepare_desc *d);
int sp_backend_topk(sp_backend_t *be, const sp_topk_desc *d);
int sp_backend_codebook_build(sp_backend_t *be, const sp_codebook_build_desc *d);
int sp_backend_codebook_code(sp_backend_t *be, const sp_codebook_code_desc *d);
int sp_backend_segattn(sp_backend_t *be, const sp_segattn_desc *d);
int sp_backend_argmax(sp_backend_t *be, const sp_argmax_desc *d);
int sp_backend_sample(sp_backend_t *be, const sp_sample_desc *d);
int sp_backend_kv_store(sp_backend_t *be, const sp_kv_store_desc *d);

#ifdef __cplusplus
}
#endif

#endif
