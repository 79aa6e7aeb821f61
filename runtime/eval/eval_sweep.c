/* eval_sweep.c - policy sweeps at equal TRUE byte ratio: a knob search that hits a byte target
 * (a policy's eviction ratio is not its byte ratio: codebooks, GQA unions, masks and positions all
 * move it), and the linear interpolation of a metric to the targets over the measured points. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "sp_error.h"

int sp_eval_interp(const double *x, const double *y, int n, double target, double *out)
{
    double lo_x = -INFINITY, hi_x = INFINITY, lo_s = 0, hi_s = 0;
    int lo_n = 0, hi_n = 0, usable = 0;
    double xmin = INFINITY, xmax = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]))
            continue;
        usable++;
        if (x[i] < xmin)
            xmin = x[i];
        if (x[i] > xmax)
            xmax = x[i];
        if (x[i] <= target) {
            if (x[i] > lo_x) {
                lo_x = x[i];
                lo_s = 0;
                lo_n = 0;
            }
            if (x[i] == lo_x) {
                lo_s += y[i];
                lo_n++;
            }
        }
        if (x[i] >= target) {
            if (x[i] < hi_x) {
                hi_x = x[i];
                hi_s = 0;
                hi_n = 0;
            }
            if (x[i] == hi_x) {
                hi_s += y[i];
                hi_n++;
            }
        }
    }
    if (!usable)
        return sp_error(EINVAL, "interpolation: no finite point");
    if (!lo_n || !hi_n)
        return sp_error(ERANGE, "interpolation: target %g outside the measured range [%g, %g]", target, xmin, xmax);
    double ylo = lo_s / lo_n, yhi = hi_s / hi_n;
    if (hi_x == lo_x) {
        *out = ylo;
        return 0;
    }
    double t = (target - lo_x) / (hi_x - lo_x);
    *out = ylo + t * (yhi - ylo);
    return 0;
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

int sp_eval_knob_search(const sp_eval_search *s, double target, sp_eval_measure_fn f, void *user,
                        sp_eval_probe *probes, int cap, int *n_probes, double *best)
{
    /* Tightest bracket seen so far: (kb, rb) below the target, (ka, ra) above it. */
    bool have_below = false, have_above = false;
    double kb = 0, rb = 0, ka = 0, ra = 0;
    double best_d = INFINITY;
    int np = 0;
    double k = s->start > 0 ? s->start : target;
    k = clampd(k, s->knob_min, s->knob_max);
    *best = k;
    for (int it = 0; it < s->max_iter; it++) {
        double r;
        int rc = f(user, k, &r);
        if (rc < 0) {
            if (n_probes)
                *n_probes = np;
            return rc;
        }
        if (np < cap)
            probes[np] = (sp_eval_probe){k, r};
        np++;
        double d = fabs(r - target);
        if (d < best_d) {
            best_d = d;
            *best = k;
        }
        if (d <= s->tol)
            break;
        if (r < target && (!have_below || k > kb)) {
            have_below = true;
            kb = k;
            rb = r;
        } else if (r > target && (!have_above || k < ka)) {
            have_above = true;
            ka = k;
            ra = r;
        }
        double next;
        if (have_below && have_above) {
            next = ra > rb ? kb + (target - rb) * (ka - kb) / (ra - rb) : 0.5 * (kb + ka);
            double margin = 0.1 * (ka - kb);
            next = clampd(next, kb + margin, ka - margin);
        } else if (have_below) {
            if (kb >= s->knob_max)
                break;   /* the largest knob stays below the target: unreachable */
            next = rb > 0 ? kb * target / rb : 2 * kb;
            next = clampd(next, kb + 0.01 * (s->knob_max - kb), s->knob_max);
        } else {
            if (ka <= s->knob_min)
                break;   /* the smallest knob stays above the target: unreachable */
            next = ra > 0 ? ka * target / ra : 0.5 * ka;
            next = clampd(next, s->knob_min, ka - 0.01 * (ka - s->knob_min));
        }
        if (next == k)
            break;
        k = next;
    }
    if (n_probes)
        *n_probes = np;
    return best_d <= s->tol ? 0 : 1;
}

/* One value of a comma-separated list at p: parsed, stored at out[i] unless out is NULL, *end set past
 * it. Returns 0 or -EINVAL (the message names the list and the bad value). */
typedef int (*list_item_fn)(const char *list, const char *p, char **end, void *out, int i);

static int item_double(const char *list, const char *p, char **end, void *out, int i)
{
    errno = 0;
    double v = strtod(p, end);
    if (*end == p || errno || !isfinite(v))
        return sp_error(EINVAL, "'%s': '%s' is not a number", list, p);
    if (out)
        ((double *)out)[i] = v;
    return 0;
}

static int item_int(const char *list, const char *p, char **end, void *out, int i)
{
    errno = 0;
    long v = strtol(p, end, 10);
    if (*end == p || errno || v < -2147483647L || v > 2147483647L)
        return sp_error(EINVAL, "'%s': '%s' is not an integer", list, p);
    if (out)
        ((int *)out)[i] = (int)v;
    return 0;
}

/* At most cap values of a non-empty comma-separated list into out; returns how many, or -EINVAL. */
static int parse_list(const char *list, void *out, int cap, list_item_fn item)
{
    int n = 0;
    const char *p = list;
    while (*p) {
        char *end;
        int rc = item(list, p, &end, n < cap ? out : NULL, n);
        if (rc)
            return rc;
        if (n == cap)
            return sp_error(EINVAL, "'%s': more than %d values", list, cap);
        n++;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return sp_error(EINVAL, "'%s': expected ',' at '%s'", list, p);
    }
    if (!n)
        return sp_error(EINVAL, "empty list");
    return n;
}

int sp_eval_parse_doubles(const char *list, double *out, int cap)
{
    return parse_list(list, out, cap, item_double);
}

int sp_eval_parse_ints(const char *list, int *out, int cap)
{
    return parse_list(list, out, cap, item_int);
}
