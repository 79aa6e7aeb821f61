/* kv_select.h - attention scores, pooling, top-k and per-policy token selection (DESIGN §4.1, §4.2,
 * §4.5), plus the CPU reference for the forward pass's window scores.
 *
 * Shapes (all row-major, plain arrays so the forward pass and tests can call them):
 *   window scores  [n_q_heads][l]  softmax rows of the last l_w queries summed per key (§4.1)
 *   prepared       [n_q_heads][l_c] context columns only, after optional /(l-a) and pooling
 * Query head g of KV head h is q head h·group + g (llama / qwen2 GQA order).
 *
 * A selection lists, per KV head, the union of context tokens (positions < l - window) kept by any
 * query head of the group, ascending, each with a group-bit membership mask (bit g set when query
 * head g kept it). The window [l - window, l) is kept by every head and is NOT listed. In kv_head
 * mode every listed token has all group bits set.
 *
 * Determinism: top-k orders by score descending, ties broken by lower index; NaN scores rank
 * below everything. Thread-safety: functions are reentrant; a selection is owned by one thread
 * while written.
 */
#ifndef SP_KV_SELECT_H
#define SP_KV_SELECT_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "kv_policy.h"

#define SP_KV_MAX_GROUP 64 /* query heads per KV head (membership masks are uint64) */

typedef struct sp_kv_selection {
    int n_q_heads, n_kv_heads, group; /* group = n_q_heads / n_kv_heads, <= SP_KV_MAX_GROUP */
    int64_t l;                        /* prompt length */
    int64_t window;                   /* min(l_w, l): tokens [l - window, l) always kept */
    int64_t cap;                      /* l - window: context tokens, row stride of pos/mask */
    int64_t *n_kept;                  /* [n_kv_heads] number of listed (union) context tokens */
    int32_t *pos;                     /* [n_kv_heads][cap] ascending original positions */
    uint64_t *mask;                   /* [n_kv_heads][cap] group membership bits */
} sp_kv_selection;

/* Allocate a selection (all n_kept = 0). Returns 0, -EINVAL (heads not divisible, group too large)
 * or -ENOMEM. Free with sp_kv_selection_free (accepts NULL and zeroed structs). */
int sp_kv_selection_init(sp_kv_selection *s, int n_q_heads, int n_kv_heads, int64_t l,
                         int64_t window);
void sp_kv_selection_free(sp_kv_selection *s);

/* Number of query heads that kept the i-th listed token of KV head h (its multiplicity μ). */
int sp_kv_selection_mu(const sp_kv_selection *s, int kv_head, int64_t i);

/* 1-D pooling, stride 1, same length: out[i] = max (or mean) of in[j] for |j - i| <= kernel/2.
 * Edges behave like a padded pool: max ignores the padding (-inf pad); avg divides by the full
 * kernel (zero pad, count_include_pad as in SnapKV's F.avg_pool1d). kernel must be odd >= 1.
 * out must not alias in. Returns 0 or -EINVAL. */
int sp_kv_pool_1d(const float *in, int64_t n, int kernel, sp_pool_type type, float *out);

/* Context scores from window scores: take columns [0, l_c) of each head, optionally divide
 * column a by (l - a) (eq. 2 as printed), then pool. out: [n_heads][l_c]. Returns 0 or -errno. */
int sp_kv_scores_prepare(const float *raw, int n_heads, int64_t l, int64_t window, int kernel,
                         sp_pool_type type, bool divide_by_l_minus_a, float *out);

/* Deterministic top-k of s[0..n): writes the chosen indices ascending to idx[0..min(k,n)).
 * Returns the count, or a negative errno. */
int64_t sp_kv_topk(const float *s, int64_t n, int64_t k, int32_t *idx);

/* Select from prepared scores [n_q_heads][cap]: each query head keeps its top-`keep` (query_head
 * mode), or each KV head keeps the top-`keep` of the group-mean score (kv_head mode).
 * keep is clamped to [0, cap]. Returns 0 or a negative errno. */
int sp_kv_select_scores(sp_kv_selection *s, const float *scores, int64_t keep, sp_gqa_mode mode);

/* Keep every context token with every group bit (policy full, or a layer that does not evict). */
void sp_kv_select_all(sp_kv_selection *s);

/* StreamingLLM: sinks [0, sinks) + the most recent (budget - sinks) tokens, of which the last
 * `window` are the raw window; identical for all heads. Returns 0 or -EINVAL. */
int sp_kv_select_streaming(sp_kv_selection *s, int64_t sinks, int64_t budget);

/* PyramidInfer: one set for all heads from score[0..l) (attention averaged over heads, see
 * sp_kv_pyramidinfer_scores_ref); the first `sinks` tokens are forced; when prev (the previous
 * layer's selection, same shape) is given, only its tokens are candidates (nested sets).
 * Keeps min(keep, candidates). Returns 0 or a negative errno. */
int sp_kv_select_pyramidinfer(sp_kv_selection *s, const float *score, int64_t keep, int64_t sinks,
                              const sp_kv_selection *prev);

/* What a layer's selection may need; unused pointers may be NULL. */
typedef struct sp_kv_layer_scores {
    const float *window_scores;   /* [n_q_heads][l]: snapkv, pyramidkv, spindle, zigzag */
    const float *colsums;         /* [n_q_heads][l] full causal attention column sums: h2o */
    const float *pinfer;          /* [l] PyramidInfer weighted head-mean attention */
    const sp_kv_selection *prev;  /* previous layer (pyramidinfer nesting) */
} sp_kv_layer_scores;

/* Run the policy of `o` for one layer with kept = that layer's budget (sp_kv_budget_compute).
 * evict == false (layer mask off) keeps everything. Returns 0 or a negative errno (-EINVAL when a
 * needed score array is missing). */
int sp_kv_select_layer(const sp_kv_opts *o, bool evict, int64_t kept, const sp_kv_layer_scores *in,
                       sp_kv_selection *s);
/* The same with the score preparation and the top-k on backend be (NULL: here, as above). The
 * score arrays must be memory be's ops read (host memory for the CPU backend). */
int sp_kv_select_layer_on(sp_backend_t *be, const sp_kv_opts *o, bool evict, int64_t kept,
                          const sp_kv_layer_scores *in, sp_kv_selection *s);

/* CPU reference of the window scores (§4.1): q [n_q_heads][l][d] and k [n_kv_heads][l][d] (both
 * post-RoPE), scale 1/sqrt(d); for each of the last `window` query rows i (causal: keys j <= i),
 * softmax in fp32 (max-subtracted) and out[h][j] += p. out: [n_q_heads][l], overwritten.
 * window = l gives the full causal column sums (h2o). Allocates one row of scratch.
 * Returns 0 or a negative errno. */
int sp_kv_window_scores_ref(const float *q, const float *k, int n_q_heads, int n_kv_heads,
                            int64_t l, int d, int64_t window, float *out);

/* PyramidInfer reference score: rows i of the last ceil(0.2·l) queries weighted linearly from 1.0
 * (first of them) to 1.2 (last), softmax rows summed per key, averaged over all query heads.
 * out: [l]. Returns 0 or a negative errno. */
int sp_kv_pyramidinfer_scores_ref(const float *q, const float *k, int n_q_heads, int n_kv_heads,
                                  int64_t l, int d, float *out);

#endif
