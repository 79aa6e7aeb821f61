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
    int chunk;               /* prefill chunk (tokens per pass), default 512 */
    int n_window;            /* window scores over the last n_window prompt tokens; 0 = off; <= chunk */
    sp_window_fn on_window;
    void *window_user;
    sp_hidden_fn on_hidden;
    void *hidden_user;
    sp_progress_fn on_progress;
    void *progress_user;
} sp_ctx_params;

typedef struct sp_ctx_stats {
    double prefill_s, decode_s;      /* wall seconds spent in prefill / decode */
    int64_t prefill_tokens, decode_tokens;
    size_t kv_bytes;                 /* KV cache storage (full n_ctx) */
    size_t buffer_bytes;             /* activations + scratch + RoPE table */
} sp_ctx_stats;

typedef struct sp_ctx sp_ctx_t;

sp_ctx_params sp_ctx_default_params(void);
/* Returns NULL on failure (sp_last_error()). The model must outlive the context. */
sp_ctx_t *sp_ctx_new(const sp_model_t *m, const sp_ctx_params *p);
void sp_ctx_free(sp_ctx_t *c);       /* accepts NULL */
/* Forget the sequence (n_past = 0); buffers are kept. */
void sp_ctx_reset(sp_ctx_t *c);
int sp_ctx_n_past(const sp_ctx_t *c);
int sp_ctx_n_ctx(const sp_ctx_t *c);
/* Append n tokens (positions n_past..n_past+n-1) in chunks. logits_last: [n_vocab] for the last
 * token, or NULL; logits_all: [n][n_vocab], or NULL. Returns 0, -EINVAL (bad token id / n), -ERANGE
 * (n_past + n > n_ctx: the message names the limit; the context is left unchanged). */
int sp_ctx_prefill(sp_ctx_t *c, const int32_t *tok, int n, float *logits_last, float *logits_all);
/* Append one token and write its logits ([n_vocab]). Same errors as prefill. No heap allocation. */
int sp_ctx_decode(sp_ctx_t *c, int32_t tok, float *logits);
sp_ctx_stats sp_ctx_get_stats(const sp_ctx_t *c);

#endif
