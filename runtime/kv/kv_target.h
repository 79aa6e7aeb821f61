/* kv_target.h - sizing the token budgets so the compressed cache lands on a TRUE byte ratio
 * (`[compression] target = bytes`, DESIGN §4.6).
 *
 * The policies' knob is a per-query-head token share; the bytes it costs depend on the policy (GQA
 * unions, positions and masks, the codebook's merge rate), so no closed form is exact. Both: a
 * closed-form start (raw eviction: kept tokens pay positions and membership bytes on top of fp16
 * K/V) and a bracketing search (proportional steps until the target is bracketed, then regula falsi
 * kept 10 % inside the bracket) on the measured ratio, which is assumed non-decreasing in the knob.
 *
 * Thread-safety: pure; the measure callback is called synchronously.
 */
#ifndef SP_KV_TARGET_H
#define SP_KV_TARGET_H

#include <stdbool.h>

#include "kv_policy.h"

/* Build under token-share knob `knob` and report the true byte ratio. Returns 0 or a negative
 * errno (the search stops and returns it). */
typedef int (*sp_kv_ratio_fn)(void *user, double knob, double *ratio);

typedef struct sp_kv_target_spec {
    double target;       /* wanted true byte ratio, (0, 1) */
    double tol;          /* accept |ratio - target| <= tol (SP_KV_TARGET_TOL) */
    int max_probes;      /* measurements at most (SP_KV_TARGET_PROBES) */
    double knob_min;     /* smallest knob tried (the knob's upper end is 1) */
    double start;        /* first knob (sp_kv_target_start) */
} sp_kv_target_spec;

typedef struct sp_kv_target_result {
    double knob;         /* the probed knob whose ratio is closest to the target */
    double ratio;        /* its measured ratio */
    int probes;          /* measurements made */
    bool hit;            /* |ratio - target| <= tol */
    bool last_is_best;   /* the last measurement was at knob (the caller's build is already it) */
} sp_kv_target_result;

#define SP_KV_TARGET_TOL 0.005   /* half the promised +-0.01, so rounding of the last probe keeps it */
#define SP_KV_TARGET_PROBES 12

/* Closed-form first knob for target t: t * fp16 bytes per token / bytes per raw kept token
 * (4·d fp16 K+V, plus a 4-byte position and ceil(group/8) mask bytes when evicting), clamped to
 * (0, 1]. Exact for kv_head-mode eviction without codebook up to the window's share. */
double sp_kv_target_start(double t, int head_dim, int group);

/* Search the knob (see the header comment). Returns 0 (res filled; res->hit says whether tol was
 * met: a target below what knob_min reaches or above what knob 1 reaches gives the nearest
 * reachable), -EINVAL (bad spec) or the measure error. */
int sp_kv_target_search(const sp_kv_target_spec *s, sp_kv_ratio_fn f, void *user, sp_kv_target_result *res);

#endif
