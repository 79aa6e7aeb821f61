/* kv_policy.h - KV compression options: policy and allocator names, the options struct, KEY=VALUE
 * knob parsing and validation (DESIGN §4).
 *
 * The enums are the ones the config module already defines (config.h), so a [compression] section
 * converts field by field with sp_kv_opts_from_config(). The same knobs can also be set from
 * "key=value" strings (tests, benchmarks, policy sweeps) with sp_kv_opts_set().
 *
 * Which budget allocator a policy uses (sp_kv_opts_allocator): snapkv -> uniform, pyramidkv ->
 * pyramidkv, zigzag -> zigzag, spindle -> the configured `allocator` (default spindle-linear; this is
 * where allocators combine with the codebook stage), streaming / h2o -> uniform, pyramidinfer -> its
 * own cosine schedule (sp_kv_budget_pyramidinfer), full -> nothing evicted.
 *
 * Thread-safety: all functions are pure or write only to the caller's struct.
 */
#ifndef SP_KV_POLICY_H
#define SP_KV_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

#define SP_KV_MASK_MAX 256

typedef struct sp_kv_opts {
    sp_policy_kind policy;
    sp_allocator_kind allocator;     /* used by policy spindle; other policies imply their own */
    double ratio;                    /* (0,1]: true byte ratio (target bytes) or token share */
    sp_ratio_target target;          /* bytes (default): budgets sized to the byte ratio */
    int64_t budget_tokens;           /* B per layer incl. window (baselines); 0 = round(ratio * l) */
    int64_t window;                  /* l_w, tokens always kept raw (default 32) */
    int64_t pool_kernel;             /* odd 1-D pooling kernel (default 7; 1 = no pooling) */
    sp_pool_type pool_type;          /* max (default) or avg */
    bool divide_by_l_minus_a;        /* eq. 2 as printed: score(a) /= (l - a); default off */
    double beta;                     /* SpindleKV beta, absolute share of the context (0.05) */
    double theta_k, theta_v;         /* codebook cosine thresholds, strict > (0.98, 0.95) */
    sp_gqa_mode gqa_mode;            /* query_head (default) or kv_head */
    char evict_layers[SP_KV_MASK_MAX];    /* layer mask: "all", "none", "0-15,20", "3-" */
    char codebook_layers[SP_KV_MASK_MAX]; /* layer mask for the codebook stage */
    bool codebook;                   /* codebook stage on/off (default on) */
    bool code_fallback;              /* coded layer not smaller than raw: stored raw (default on) */
    int64_t decode_window;           /* coded layers: last N decode tokens raw (0: coded at append) */
    sp_decode_coding decode_coding;  /* append (default) or batch (Algorithm 1 per batch) */
    bool entry_centroid;             /* codebook entries = members' mean direction (default off) */
    int64_t sinks;                   /* streaming / pyramidinfer sinks (4) */
    int64_t pyramidkv_beta;          /* PyramidKV beta (20) */
    double zigzag_tau;               /* ZigZagKV attention-mass threshold (0.9) */
} sp_kv_opts;

/* Defaults of every field (policy spindle, allocator spindle-linear, ratio 0.2). Never fails. */
void sp_kv_opts_defaults(sp_kv_opts *o);

/* Copy the [compression] section of a config. Never fails (the config was validated). */
void sp_kv_opts_from_config(sp_kv_opts *o, const sp_config *cfg);

/* Apply one "key=value" knob (keys are the field names above; bools accept true/false/on/off/1/0).
 * Returns 0, or -EINVAL with a message naming the key, the value and what is allowed. */
int sp_kv_opts_set(sp_kv_opts *o, const char *assignment);

/* Apply several knobs separated by whitespace or ';' (commas belong to layer masks). */
int sp_kv_opts_parse(sp_kv_opts *o, const char *list);

/* Check the options against a model with n_layers layers and a prompt of l tokens (0 = not known
 * yet; l-dependent checks are skipped). Rejected (-EINVAL + message): ratio outside (0,1], theta
 * outside [0,1], even or non-positive pool_kernel, window < 1, beta outside [0,1),
 * bad masks, budget_tokens <= window or <= sinks when given, zigzag_tau outside (0,1].
 * Documented fallbacks (return 0, sp_notice once per call): l <= window -> nothing is evicted.
 * Returns 0 or -EINVAL. */
int sp_kv_opts_validate(const sp_kv_opts *o, int n_layers, int64_t l);

/* Same as validate, but also accepts theta in (1, 2] ("merge nothing", used by tests that check
 * spindle with theta > 1 equals full). */
int sp_kv_opts_validate_relaxed(const sp_kv_opts *o, int n_layers, int64_t l);

/* Name <-> enum. *_from_name return 0 or -EINVAL (message lists the allowed names). Names never
 * NULL ("?" for out-of-range values). */
const char *sp_kv_policy_name(sp_policy_kind p);
const char *sp_kv_allocator_name(sp_allocator_kind a);
int sp_kv_policy_from_name(const char *name, sp_policy_kind *out);
int sp_kv_allocator_from_name(const char *name, sp_allocator_kind *out);

/* The allocator the policy actually uses (see the header comment). */
sp_allocator_kind sp_kv_opts_allocator(const sp_kv_opts *o);

/* Budget B (tokens per layer incl. window) for a prompt of l tokens: budget_tokens when > 0,
 * else round(ratio * l); never more than l. */
int64_t sp_kv_opts_budget(const sp_kv_opts *o, int64_t l);

/* Expand the evict / codebook masks into out[0..n_layers), taking policy and the codebook switch
 * into account (policy full: nothing evicted, no codebook; codebook=off or policies other than
 * spindle: no codebook). Returns 0 or -EINVAL (bad mask). */
int sp_kv_opts_layer_masks(const sp_kv_opts *o, int n_layers, bool *evict, bool *codebook);

#endif
