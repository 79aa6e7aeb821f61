/* kv_budget.h - per-layer token budgets for KV eviction (DESIGN §4.3, §4.5).
 *
 * Every allocator writes kept[λ] for λ in [0, n_layers): the number of NON-window context tokens
 * each query head keeps in layer λ, out of l_c = l - l_w context tokens (the last l_w tokens, the
 * observation window, are always kept on top). 0 <= kept[λ] <= l_c. When l <= l_w, l_c = 0 and
 * every kept[λ] is 0 (the whole prompt is window).
 *
 * B ("budget", the baselines' max_capacity_prompt) counts the window: B - l_w context tokens.
 *
 * All functions are pure (thread-safe), return 0 or -EINVAL (message via sp_last_error()), and
 * allocate nothing except sp_kv_zigzag_u (a scratch copy of one head's scores, freed before return).
 */
#ifndef SP_KV_BUDGET_H
#define SP_KV_BUDGET_H

#include <stdint.h>

#include "kv_policy.h"

/* Uniform: kept = min(B - l_w, l_c) (clamped at 0) on every layer. */
int sp_kv_budget_uniform(int64_t l, int64_t window, int64_t budget, int n_layers, int64_t *kept);

/* PyramidKV as its published code behaves (integer arithmetic):
 *   l < B                 -> no compression: kept = l_c
 *   l < 2(B - w)          -> uniform: kept = B - w
 *   else min = (B-w)//beta_pkv, max = 2(B-w) - min; if max > l - w: max = l - w and
 *        min = 2(B-w) - max (the code recomputes min so the mean stays B - w);
 *        step = (max - min)//(L - 1); kept[λ] = max - λ·step (layer 0 gets max).
 * n_layers == 1 uses max for the single layer. */
int sp_kv_budget_pyramidkv(int64_t l, int64_t window, int64_t budget, int n_layers,
                           int64_t beta_pkv, int64_t *kept);

/* SpindleKV linear schedule (eq. 5-6 corrected, DESIGN §4.3), m = n_layers:
 *   r_c = (r·l - l_w)/l_c; α = (1+β)/2
 *   l <= l_w or r >= 1      -> no eviction: kept = l_c
 *   r_c <= β                -> uniform r_c on every layer (sp_notice warning; r_c < 0 -> 0)
 *   β < r_c <= α            -> r_c(0) = 2r_c - β, r_c(m-1) = β
 *   α < r_c <= 1            -> r_c(0) = 1,        r_c(m-1) = 2r_c - 1
 *   linear in λ between; kept[λ] = ⌊r_c(λ)·l_c⌋ (with a 1e-9 guard against 0.999.. products).
 * rc_layer (optional, may be NULL) receives r_c(λ). */
int sp_kv_budget_spindle_linear(int64_t l, int64_t window, double ratio, double beta, int n_layers,
                                int64_t *kept, double *rc_layer);

/* ZigZagKV: B_avg = B - l_w, B_floor = 0.1·B_avg,
 *   B_λ = B_floor + (B_avg - B_floor)·L·U_λ/ΣU, kept[λ] = min(⌊B_λ⌋, l_c).
 * l <= B -> no compression; ΣU == 0 -> uniform. U[λ] >= 0 from sp_kv_zigzag_u on every layer,
 * so the caller must hold all layers' scores (or their U) before any budget is final. */
int sp_kv_budget_zigzag(int64_t l, int64_t window, int64_t budget, int n_layers, const double *U,
                        int64_t *kept);

/* U for one layer: for each of n_heads rows of scores[h][0..n) (attention mass per key, any
 * positive scale), the smallest number of top keys whose mass reaches tau of the row total,
 * averaged over heads and divided by n (a share in (0,1]). Returns the share, or a negative errno
 * (-ENOMEM, -EINVAL). */
double sp_kv_zigzag_u(const float *scores, int n_heads, int64_t n, double tau);

/* PyramidInfer keep schedule (our reading of "cosine keep schedule, minimum 64 tokens"):
 * ρ = (B - w)/l_c, f_max = min(1, 2ρ), f_min = 2ρ - f_max,
 * f(λ) = f_min + (f_max - f_min)·(1 + cos(πλ/(L-1)))/2 (mean over layers ≈ ρ; non-increasing, which
 * the nested token sets need), kept[λ] = clamp(⌊f(λ)·l_c⌋, min(min_tokens, l_c), l_c).
 * l <= B -> no compression. */
int sp_kv_budget_pyramidinfer(int64_t l, int64_t window, int64_t budget, int n_layers,
                              int64_t min_tokens, int64_t *kept);

/* Dispatch on the options (policy + sp_kv_opts_allocator): budget from sp_kv_opts_budget, U only
 * read for zigzag (may be NULL otherwise). Layers whose evict mask bit is off, and policy full,
 * get kept = l_c. Policy streaming gets kept = B - l_w (its sinks + recent, see kv_select.h). */
int sp_kv_budget_compute(const sp_kv_opts *o, int64_t l, int n_layers, const double *U,
                         int64_t *kept);

#endif
