/* kv_budget.c - per-layer token budgets: uniform, PyramidKV, SpindleKV linear, ZigZagKV,
 * PyramidInfer (DESIGN §4.3, §4.5). See kv_budget.h for the exact rules. */
#include "kv_budget.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "sp_error.h"

static int check_args(int64_t l, int64_t window, int n_layers, const int64_t *kept)
{
    if (l < 0 || window < 1 || n_layers < 1 || !kept)
        return sp_error(EINVAL, "kv budget: bad arguments (l=%lld, window=%lld, n_layers=%d)",
                        (long long)l, (long long)window, n_layers);
    return 0;
}

static int64_t ctx_len(int64_t l, int64_t window)
{
    return l > window ? l - window : 0;
}

static void fill(int64_t *kept, int n_layers, int64_t v)
{
    for (int i = 0; i < n_layers; i++)
        kept[i] = v;
}

int sp_kv_budget_uniform(int64_t l, int64_t window, int64_t budget, int n_layers, int64_t *kept)
{
    int rc = check_args(l, window, n_layers, kept);
    if (rc < 0)
        return rc;
    int64_t lc = ctx_len(l, window), k = budget - window;
    if (k < 0)
        k = 0;
    fill(kept, n_layers, k < lc ? k : lc);
    return 0;
}

int sp_kv_budget_pyramidkv(int64_t l, int64_t window, int64_t budget, int n_layers,
                           int64_t beta_pkv, int64_t *kept)
{
    int rc = check_args(l, window, n_layers, kept);
    if (rc < 0)
        return rc;
    if (beta_pkv < 1)
        return sp_error(EINVAL, "kv budget pyramidkv: beta=%lld must be >= 1", (long long)beta_pkv);
    int64_t lc = ctx_len(l, window), bw = budget - window;
    if (bw < 0)
        bw = 0;
    if (l < budget) { /* prompt shorter than the budget: the code returns the cache untouched */
        fill(kept, n_layers, lc);
        return 0;
    }
    if (l < 2 * bw) { /* the code's snapkv-style uniform branch */
        fill(kept, n_layers, bw < lc ? bw : lc);
        return 0;
    }
    int64_t mn = bw / beta_pkv, mx = 2 * bw - mn;
    if (mx > l - window) {
        mx = l - window;
        mn = 2 * bw - mx;
    }
    int64_t step = n_layers > 1 ? (mx - mn) / (n_layers - 1) : 0;
    for (int i = 0; i < n_layers; i++) {
        int64_t k = mx - (int64_t)i * step;
        kept[i] = k < 0 ? 0 : (k > lc ? lc : k);
    }
    return 0;
}

static int64_t floor_tokens(double share, int64_t lc)
{
    double x = floor(share * (double)lc + 1e-9);
    if (x < 0)
        return 0;
    return x > (double)lc ? lc : (int64_t)x;
}

int sp_kv_budget_spindle_linear(int64_t l, int64_t window, double ratio, double beta, int n_layers,
                                int64_t *kept, double *rc_layer)
{
    int rc = check_args(l, window, n_layers, kept);
    if (rc < 0)
        return rc;
    if (!(ratio > 0.0) || !(beta >= 0.0 && beta < 1.0))
        return sp_error(EINVAL, "kv budget spindle-linear: ratio=%g must be > 0 and beta=%g in "
                                "[0, 1)", ratio, beta);
    int64_t lc = ctx_len(l, window);
    if (l <= window || ratio >= 1.0) {
        fill(kept, n_layers, lc);
        for (int i = 0; rc_layer && i < n_layers; i++)
            rc_layer[i] = 1.0;
        return 0;
    }
    double r_c = (ratio * (double)l - (double)window) / (double)lc;
    double alpha = (1.0 + beta) / 2.0, r0, r1;
    if (r_c <= beta) {
        sp_notice("kv: spindle-linear: context ratio r_c=%.4f <= beta=%.4f (r=%.4f, l=%lld, "
                  "l_w=%lld): using a uniform r_c on every layer", r_c, beta, ratio, (long long)l,
                  (long long)window);
        r0 = r1 = r_c < 0 ? 0 : r_c;
    } else if (r_c <= alpha) {
        r0 = 2 * r_c - beta;
        r1 = beta;
    } else {
        r0 = 1.0;
        r1 = 2 * r_c - 1.0; /* the paper prints 1 - 2r_c; only this keeps the mean at r_c */
    }
    for (int i = 0; i < n_layers; i++) {
        double rl = n_layers > 1 ? r0 + (r1 - r0) * (double)i / (double)(n_layers - 1) : r_c;
        if (rl < 0)
            rl = 0;
        if (rc_layer)
            rc_layer[i] = rl;
        kept[i] = floor_tokens(rl, lc);
    }
    return 0;
}

int sp_kv_budget_zigzag(int64_t l, int64_t window, int64_t budget, int n_layers, const double *U,
                        int64_t *kept)
{
    int rc = check_args(l, window, n_layers, kept);
    if (rc < 0)
        return rc;
    if (!U)
        return sp_error(EINVAL, "kv budget zigzag: needs U for every layer");
    int64_t lc = ctx_len(l, window);
    if (l <= budget) {
        fill(kept, n_layers, lc);
        return 0;
    }
    double bavg = (double)(budget - window), sum = 0;
    if (bavg < 0)
        bavg = 0;
    for (int i = 0; i < n_layers; i++) {
        if (!(U[i] >= 0) || !isfinite(U[i]))
            return sp_error(EINVAL, "kv budget zigzag: U[%d]=%g must be finite and >= 0", i, U[i]);
        sum += U[i];
    }
    double bfloor = 0.1 * bavg;
    for (int i = 0; i < n_layers; i++) {
        double b = sum > 0 ? bfloor + (bavg - bfloor) * n_layers * U[i] / sum : bavg;
        int64_t k = (int64_t)floor(b + 1e-9);
        kept[i] = k < 0 ? 0 : (k > lc ? lc : k);
    }
    return 0;
}

static int cmp_desc_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

double sp_kv_zigzag_u(const float *scores, int n_heads, int64_t n, double tau)
{
    if (!scores || n_heads < 1 || n < 1 || !(tau > 0 && tau <= 1))
        return sp_error(EINVAL, "kv zigzag U: bad arguments (n_heads=%d, n=%lld, tau=%g)", n_heads,
                        (long long)n, tau);
    float *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp)
        return sp_error(ENOMEM, "kv zigzag U: out of memory for %lld scores", (long long)n);
    double acc = 0;
    for (int h = 0; h < n_heads; h++) {
        double total = 0;
        for (int64_t j = 0; j < n; j++) {
            float s = scores[(size_t)h * n + j];
            tmp[j] = s > 0 ? s : 0;
            total += tmp[j];
        }
        qsort(tmp, (size_t)n, sizeof *tmp, cmp_desc_float);
        int64_t cnt = n;
        double run = 0;
        for (int64_t j = 0; j < n && total > 0; j++) {
            run += tmp[j];
            if (run >= tau * total) {
                cnt = j + 1;
                break;
            }
        }
        acc += (double)cnt;
    }
    free(tmp);
    return acc / n_heads / (double)n;
}

int sp_kv_budget_pyramidinfer(int64_t l, int64_t window, int64_t budget, int n_layers,
                              int64_t min_tokens, int64_t *kept)
{
    int rc = check_args(l, window, n_layers, kept);
    if (rc < 0)
        return rc;
    int64_t lc = ctx_len(l, window);
    if (l <= budget || lc == 0) {
        fill(kept, n_layers, lc);
        return 0;
    }
    double rho = (double)(budget - window) / (double)lc;
    if (rho < 0)
        rho = 0;
    double fmax = 2 * rho < 1 ? 2 * rho : 1, fmin = 2 * rho - fmax;
    int64_t lo = min_tokens < lc ? min_tokens : lc;
    for (int i = 0; i < n_layers; i++) {
        double c = n_layers > 1 ? (1 + cos(M_PI * i / (n_layers - 1))) / 2 : 0.5;
        int64_t k = floor_tokens(fmin + (fmax - fmin) * c, lc);
        kept[i] = k < lo ? lo : k;
    }
    return 0;
}

int sp_kv_budget_compute(const sp_kv_opts *o, int64_t l, int n_layers, const double *U,
                         int64_t *kept)
{
    int rc = check_args(l, o->window, n_layers, kept);
    if (rc < 0)
        return rc;
    int64_t lc = ctx_len(l, o->window), B = sp_kv_opts_budget(o, l);
    if (o->policy == SP_POLICY_FULL) {
        fill(kept, n_layers, lc);
        return 0;
    }
    if (o->policy == SP_POLICY_PYRAMIDINFER) {
        rc = sp_kv_budget_pyramidinfer(l, o->window, B, n_layers, 64, kept);
    } else {
        switch (sp_kv_opts_allocator(o)) {
        case SP_ALLOCATOR_UNIFORM:
            rc = sp_kv_budget_uniform(l, o->window, B, n_layers, kept);
            break;
        case SP_ALLOCATOR_PYRAMIDKV:
            rc = sp_kv_budget_pyramidkv(l, o->window, B, n_layers, o->pyramidkv_beta, kept);
            break;
        case SP_ALLOCATOR_SPINDLE_LINEAR:
            /* With budget_tokens given, the ratio is B/l so both knobs mean the same thing. */
            rc = sp_kv_budget_spindle_linear(l, o->window,
                                             o->budget_tokens > 0 && l > 0
                                                 ? (double)B / (double)l : o->ratio,
                                             o->beta, n_layers, kept, NULL);
            break;
        case SP_ALLOCATOR_ZIGZAG:
            rc = sp_kv_budget_zigzag(l, o->window, B, n_layers, U, kept);
            break;
        default:
            return sp_error(EINVAL, "kv budget: unknown allocator %d", (int)o->allocator);
        }
    }
    if (rc < 0)
        return rc;
    bool *ev = malloc((size_t)n_layers * 2 * sizeof *ev);
    if (!ev)
        return sp_error(ENOMEM, "kv budget: out of memory");
    rc = sp_kv_opts_layer_masks(o, n_layers, ev, ev + n_layers);
    for (int i = 0; rc == 0 && i < n_layers; i++)
        if (!ev[i])
            kept[i] = lc;
    free(ev);
    return rc;
}
