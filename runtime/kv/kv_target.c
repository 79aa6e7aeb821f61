/* kv_target.c - the knob search behind `[compression] target = bytes` (see kv_target.h). */
#include "kv_target.h"

#include <errno.h>
#include <math.h>

#include "sp_error.h"

double sp_kv_target_start(double t, int head_dim, int group)
{
    double fp16 = 4.0 * head_dim, raw = fp16 + 4.0 + (double)((group + 7) / 8);
    double k = t * fp16 / raw;
    return k > 1.0 ? 1.0 : k > 0 ? k : 1e-3;
}

int sp_kv_target_search(const sp_kv_target_spec *s, sp_kv_ratio_fn f, void *user, sp_kv_target_result *res)
{
    if (!(s->target > 0 && s->target < 1) || !(s->tol > 0) || s->max_probes < 1 || !(s->knob_min > 0) ||
        !(s->knob_min < 1))
        return sp_error(EINVAL, "kv target: bad search (target %g, tol %g, probes %d, knob_min %g)", s->target,
                        s->tol, s->max_probes, s->knob_min);
    const double t = s->target;
    double lo = 0, lo_r = 0, hi = 0, hi_r = 0;   /* bracket ends measured so far (0 = none) */
    double px = 0, pr = 0;                       /* the previous probe (0 = none) */
    double x = s->start > 0 ? s->start : t;
    res->knob = res->ratio = NAN;
    res->probes = 0;
    res->hit = res->last_is_best = false;
    for (int i = 0; i < s->max_probes; i++) {
        x = x < s->knob_min ? s->knob_min : x > 1.0 ? 1.0 : x;
        double r;
        int rc = f(user, x, &r);
        if (rc < 0)
            return rc;
        res->probes++;
        bool better = !isfinite(res->ratio) || fabs(r - t) < fabs(res->ratio - t);
        res->last_is_best = better;
        if (better) {
            res->knob = x;
            res->ratio = r;
        }
        if (fabs(r - t) <= s->tol) {
            res->hit = true;
            return 0;
        }
        if (r < t && (lo == 0 || x > lo)) {
            lo = x;
            lo_r = r;
        } else if (r > t && (hi == 0 || x < hi)) {
            hi = x;
            hi_r = r;
        }
        double next;
        if (lo > 0 && hi > 0) {
            if (hi - lo <= 1e-6)
                break;   /* the ratio jumps across the target between two adjacent knobs */
            next = hi_r > lo_r ? lo + (t - lo_r) * (hi - lo) / (hi_r - lo_r) : 0.5 * (lo + hi);
            double w = hi - lo;
            if (next < lo + 0.1 * w)
                next = lo + 0.1 * w;
            if (next > hi - 0.1 * w)
                next = hi - 0.1 * w;
        } else {
            /* Not bracketed: extrapolate through the last two probes (the ratio has an offset - the
             * window, sinks, codebooks - so proportional steps alone crawl); a flat ratio or a
             * bound already probed ends the search: the target is out of reach. */
            bool up = r < t;
            if ((up && x >= 1.0) || (!up && x <= s->knob_min))
                break;
            if (px > 0 && fabs(r - pr) <= 1e-9 * (fabs(r) + 1e-12)) {
                next = up ? 1.0 : s->knob_min;
                if ((up && px >= 1.0) || (!up && px <= s->knob_min))
                    break;
            } else if (px > 0 && (r - pr) * (x - px) > 0) {
                next = x + (t - r) * (x - px) / (r - pr);
            } else {
                next = r > 0 ? x * t / r : 2 * x;
            }
            if (up && next <= x * 1.05)
                next = x * 1.25;
            if (!up && next >= x * 0.95)
                next = x * 0.8;
        }
        px = x;
        pr = r;
        x = next;
    }
    return 0;
}
