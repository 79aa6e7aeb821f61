/* model.h - a GGUF decoder-only transformer (llama, qwen2) and the CPU forward pass over it.
 *
 * sp_model_t: hyper-parameters and weight views. Linear weights are not converted: they stay in the
 * memory-mapped GGUF in their stored format and the kernels (cpu/ops.h) read the blocks directly, so
 * the values used are exactly ggml's dequantized ones. Norm weights and biases are dequantized to
 * fp32 at load. A model is read-only after load and may be shared by several contexts.
 *
 * sp_ctx_t: one sequence: thread pool, fp16 (or fp32) KV cache, activation buffers for one prefill
 * chunk, RoPE table. Everything is sized at sp_ctx_new() from n_ctx and the chunk size; prefill and
 * decode perform no heap allocation. A context is used by one thread at a time.
 */
#ifndef SP_MODEL_H
#define SP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "kv_policy.h"
#include "kv_provider.h"
#include "backend.h"
#include "ops.h"

typedef enum sp_arch {
    SP_ARCH_LLAMA = 0,
    SP_ARCH_QWEN2 = 1,
} sp_arch;

typedef struct sp_hparams {
    sp_arch arch;
    char arch_name[32];      /* general.architecture */
    int n_layer, n_embd, n_ff;
    int n_head, n_kv_head, head_dim;
    int n_ctx_train;         /* <arch>.context_length */
    int n_vocab;             /* token_embd rows */
    float rope_base;         /* <arch>.rope.freq_base, default 10000 */
    float norm_eps;          /* <arch>.attention.layer_norm_rms_epsilon */
    sp_rope_mode rope_mode;  /* NORM (adjacent pairs) for llama, NEOX (half split) for qwen2 */
    bool tied_embd;          /* no output.weight: the LM head is token_embd */
    bool qkv_bias;           /* blk.N.attn_{q,k,v}.bias present (qwen2) */
} sp_hparams;

typedef struct sp_model sp_model_t;

/* Open and validate a model file. Returns NULL on failure; sp_last_error() names the file and the
 * key/tensor and value at fault (unsupported architecture, missing key or tensor, wrong shape,
 * unsupported tensor type). */
sp_model_t *sp_model_load(const char *path);
void sp_model_free(sp_model_t *m);   /* accepts NULL */
const sp_hparams *sp_model_hparams(const sp_model_t *m);
/* The underlying GGUF (tokenizer metadata etc.); owned by the model. */
const sp_gguf_t *sp_model_gguf(const sp_model_t *m);

/* ---- contexts ------------------------------------------------------------------------------- */

/* Hidden-state hook: h is [n][n_embd] for tokens at positions pos0..pos0+n-1. `layer` is 0 for the
 * token embeddings (input of block 0), l in 1..n_layer for the residual stream after block l-1, and
 * n_layer+1 for the output of the final RMSNorm. Called synchronously; h is valid during the call. */
typedef void (*sp_hidden_fn)(void *user, int layer, int pos0, int n, const float *h);
/* Window-score hook (prefill only): scores[h * n_keys + j] = sum over the last n_window prompt tokens
 * of query head h's softmax probability on key j (j < n_keys = positions so far). Once per layer. */
typedef void (*sp_window_fn)(void *user, int layer, const float *scores, int n_head, int n_keys, int n_window);
/* Progress hook: `done` of `total` prompt tokens processed by this prefill call. */
typedef void (*sp_progress_fn)(void *user, int done, int total);

typedef struct sp_ctx_params {
    int n_ctx;               /* 0: the model's context_length */
    int n_threads;           /* 0: online CPUs */
    sp_kv_type kv_type;      /* SP_KV_F16 (default) or SP_KV_F32 */
    sp_numerics numerics;    /* SP_NUMERICS_GGML (default: llama.cpp's rounding) or SP_NUMERICS_EXACT */
    sp_backend_kind backend; /* where the forward pass runs (SP_BACKEND_CPU default; see backend.h) */
    int chunk;               /* prefill chunk (tokens per pass), default 512 */
    int n_window;            /* window scores over the last n_window prompt tokens; 0 = off; <= chunk */
    sp_window_fn on_window;
    void *window_user;
    sp_hidden_fn on_hidden;
    void *hidden_user;
    sp_progress_fn on_progress;
    void *progress_user;
    /* KV compression (DESIGN §2, §4). NULL or policy full: the plain fp16 cache (the fast path;
     * policy full is exactly the same computation). Otherwise the first prefill after creation or
     * reset computes every layer from the full cache as usual, then compresses each layer into a
     * segment; decode tokens and later prefill tokens go to a per-layer tail and attend over
     * segment + tail (cpu/segment_attn.h). The options are copied; validated at sp_ctx_new. */
    const sp_kv_opts *kv_opts;
    /* Keep what sp_ctx_recompress() needs after compression: the fp16 cache (K after RoPE, V),
     * the fp16 pre-RoPE K and the prompt's scores (window scores, full-attention column sums and
     * PyramidInfer scores of every layer). Memory: about 1.5x the fp16 cache of the prompt plus
     * (2·n_head + 1)·n_layer·l floats of scores (SmolLM2-135M at l = 8192: ~280 MiB + ~68 MiB).
     * Off (default): the full cache is freed right after compression. */
    bool keep_prefill_state;
    /* With keep_prefill_state: retain only the scores the context's own policy reads (window scores
     * always), not the extra full-causal and PyramidInfer passes every policy would need - those
     * double the prefill's attention. sp_ctx_recompress then accepts policies whose scores were kept
     * (and full). spindle bench sets it. */
    bool keep_own_scores_only;
} sp_ctx_params;

typedef struct sp_ctx_stats {
    double prefill_s, decode_s;      /* wall seconds spent in prefill / decode */
    int64_t prefill_tokens, decode_tokens;
    double decode_attn_s;            /* part of decode_s spent in attention (full cache or segment) */
    size_t kv_bytes;                 /* KV storage the context holds: the fp16 cache (full n_ctx) while
                                        allocated, plus owned segments and decode tails when compressed
                                        (segments given to a provider are not counted) */
    size_t buffer_bytes;             /* activations + scratch + RoPE table */
    size_t weights_device_bytes;     /* the weights uploaded to a device backend (0 on the CPU, which
                                        reads the memory-mapped GGUF) */
} sp_ctx_stats;

typedef struct sp_ctx sp_ctx_t;

sp_ctx_params sp_ctx_default_params(void);
/* Returns NULL on failure (sp_last_error()). The model must outlive the context. */
sp_ctx_t *sp_ctx_new(const sp_model_t *m, const sp_ctx_params *p);
void sp_ctx_free(sp_ctx_t *c);       /* accepts NULL */
/* Forget the sequence (n_past = 0); buffers are kept. */
void sp_ctx_reset(sp_ctx_t *c);
int sp_ctx_n_past(const sp_ctx_t *c);
/* The backend the context computes on (owned by the context). */
sp_backend_t *sp_ctx_backend(const sp_ctx_t *c);
int sp_ctx_n_ctx(const sp_ctx_t *c);
/* Append n tokens (positions n_past..n_past+n-1) in chunks. logits_last: [n_vocab] for the last
 * token, or NULL; logits_all: [n][n_vocab], or NULL. Returns 0, -EINVAL (bad token id / n), -ERANGE
 * (n_past + n > n_ctx: the message names the limit; the context is left unchanged). */
int sp_ctx_prefill(sp_ctx_t *c, const int32_t *tok, int n, float *logits_last, float *logits_all);
/* Append one token and write its logits ([n_vocab]). Same errors as prefill. No heap allocation. */
int sp_ctx_decode(sp_ctx_t *c, int32_t tok, float *logits);
/* Whether the context computes in a device's memory (weights, activations, KV cache and logits;
 * --backend cuda). Then a sampling loop passes logits = NULL to sp_ctx_decode and samples with
 * sp_ctx_sample, which reads back one int32 per token instead of the logits. */
bool sp_ctx_device_resident(const sp_ctx_t *c);
/* The next token from the logits of the last prefill/decode: on a device, the backend's argmax or
 * sample op with the sampler's own draw (one int32 copied back, one host synchronisation); else
 * sp_sampler_sample(s, logits). Same tokens either way, up to expf rounding (gpu.h). 0 or < 0. */
struct sp_sampler;
int sp_ctx_sample(sp_ctx_t *c, struct sp_sampler *s, const float *logits, int32_t *out);
sp_ctx_stats sp_ctx_get_stats(const sp_ctx_t *c);

/* ---- KV compression ------------------------------------------------------------------------- */

/* Set (or with NULL clear) the compression policy before the first prefill (n_past == 0): same
 * meaning as sp_ctx_params.kv_opts. Returns 0, -EINVAL (invalid options, message names the knob)
 * or -EBUSY (tokens already in the context). */
int sp_ctx_set_policy(sp_ctx_t *c, const sp_kv_opts *o);

/* Where the layer segments live (kv_provider.h); NULL = owned by the context (default). Only
 * before the first prefill. The struct is copied. Returns 0, -EINVAL or -EBUSY. */
int sp_ctx_set_kv_provider(sp_ctx_t *c, const sp_kv_provider *p);

/* Rebuild every layer's segment from the retained prefill state under other options, drop the
 * tails and set n_past back to the prompt length. Needs keep_prefill_state and a compressed
 * context; o->window must equal the window of the first compression (its window scores are the
 * retained ones). Policy full is allowed (the retained cache is used as is). Allocates (it is a
 * prefill-time operation). Returns 0, -EINVAL (options, window) or -ENOENT (no retained state). */
int sp_ctx_recompress(sp_ctx_t *c, const sp_kv_opts *o);

/* Per-layer accounting (DESIGN §4.6). Bytes are what the cache really holds for the tokens so
 * far; fp16_bytes is an fp16 GQA cache (n_kv_head heads, K and V) of the same tokens. */
typedef struct sp_kv_layer_stats {
    int64_t tokens;          /* tokens the layer has seen (prompt + appended) */
    int64_t kept;            /* tokens attention reads, mean over query heads (listed with the
                                head's bit + window + tail) */
    int64_t k_entries, v_entries; /* codebook entries over all KV heads (incl. tail entries);
                                     0 for an uncoded layer */
    bool coded;              /* the codebook stage ran on this layer */
    uint64_t bytes;          /* true bytes: entries + indices + magnitudes + positions + masks +
                                raw window/kept + used tail (uncompressed: fp16 K+V of the tokens) */
    uint64_t bytes_alloc;    /* segment buffer (header + 4 KiB padding) + tail capacity
                                (uncompressed: this layer's share of the allocated fp16 cache) */
    uint64_t fp16_bytes;
    double true_ratio;       /* bytes / fp16_bytes */
    double paper_r1, paper_r2, paper_r3, paper_r; /* eq. 15 per layer, see kv_segment.h */
} sp_kv_layer_stats;

typedef struct sp_kv_stats {
    bool compressed;         /* false: the plain fp16 cache (no policy, policy full, or no prefill) */
    int n_layer;
    sp_kv_layer_stats *layer; /* [n_layer], owned by the context, valid until the next call */
    uint64_t bytes, bytes_alloc, fp16_bytes; /* sums over layers */
    double true_ratio;       /* bytes / fp16_bytes: the headline number */
    double paper_r;          /* mean over layers of paper_r ("vectors only" interpretation: stored
                                d-vectors / d-vectors of the fp16 GQA cache; indices, magnitudes,
                                positions and masks are not counted - they are in true_ratio) */
    double paper_r_mha;      /* mean over layers of r1·r2: the other reading of eq. 15's denominator,
                                the per-query-head (h heads, repeated) cache; = paper_r / r3 with
                                r3 = n_head / n_kv_head */
    double compress_s;       /* wall seconds of the last compression (scores prepare + top-k +
                                codebook + segment build, all layers) */
    double scores_s;         /* wall seconds of the extra prefill score passes (h2o/pyramidinfer) */
    /* What was asked and what the compression chose (1 for an uncompressed cache): */
    sp_ratio_target target;  /* meaning of ratio_requested */
    double ratio_requested;  /* [compression] ratio */
    double knob;             /* token share the budgets used (= ratio_requested with target tokens) */
    double prompt_ratio;     /* target bytes: true byte ratio at the end of the prompt (the search's
                                measurement); NAN when no search ran (target tokens, budget_tokens,
                                short prompts) */
    int target_probes;       /* compressions the search made (0: none) */
} sp_kv_stats;

/* Fill *st (pointers into the context). Returns 0 or a negative errno (provider acquire failed). */
int sp_ctx_kv_stats(sp_ctx_t *c, sp_kv_stats *st);

#endif
