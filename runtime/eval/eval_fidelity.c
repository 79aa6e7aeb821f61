/* eval_fidelity.c - the fidelity driver of `spindle eval`: prefill N tokens of a long text once
 * (prefill state kept), teacher-force the next T true tokens with policy full for the reference
 * logits, then for every policy x byte target search the ratio knob until the TRUE byte ratio hits
 * the target (one recompression per probe), teacher-force the same T tokens and record mean
 * KL(full || policy) (fp64), top-1 agreement with full and perplexity; metrics are interpolated
 * linearly in the measured true ratio to the targets.
 *
 * Every scored prediction depends on the compressed cache: the prompt's last token is held back
 * from the prefill and decoded after the recompression as the first teacher-forced token.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "eval_internal.h"
#include "sp_error.h"
#include "sp_time.h"

#define MAXPT (2 * SP_EVAL_MAXT)

static char *load_text(const sp_eval_session *E, const char *name, size_t *len)
{
    if (!strcmp(name, "kjv"))
        return sp_eval_read_kjv(NULL, len);
    return sp_eval_read_dir(E->o->haystack, len);
}

/* Search the knob of policy pi for target t (side 0: |ratio - t| <= tol; -1: ratio in [t - tol, t];
 * +1: in [t, t + tol]), then teacher-force at it unless that knob was measured already. Appends
 * a point to fp. */
static int point_at(sp_eval_session *E, const sp_eval_fid_run *fr, sp_eval_fid_pol *fp, int pi, double t, int side,
                    const int32_t *tf)
{
    const sp_eval_opts *o = E->o;
    const int T = o->tokens;
    if (fp->n_pts == MAXPT)
        return 0;
    int k = fp->n_pts++;
    sp_eval_fid_point *pt = &fp->pts[k];
    memset(pt, 0, sizeof *pt);
    pt->target = t;
    pt->side = side;
    sp_eval_search srch = {.knob_min = 0.01, .knob_max = 1.0, .tol = side ? o->tol / 2 : o->tol,
                           .max_iter = o->max_probes};
    /* Warm start: the knob of the nearest point measured so far, scaled. */
    for (int j = 0; j < k; j++)
        if (fp->pts[j].ratio > 0 && (srch.start == 0 || fabs(fp->pts[j].ratio - t) < fabs(srch.start - t)))
            srch.start = fp->pts[j].knob * t / fp->pts[j].ratio;
    sp_eval_measure_ctx mc = {E, pi};
    double best;
    int s = sp_eval_knob_search(&srch, t + side * o->tol / 2, sp_eval_measure_cb, &mc, fp->probes[k],
                                SP_EVAL_MAXPROBE, &fp->n_probes[k], &best);
    if (s < 0)
        return s;
    pt->hit = s == 0;
    pt->knob = best;
    for (int j = 0; j < k; j++)
        if (fp->pts[j].knob == best) {   /* measured already: copy */
            sp_eval_fid_point keep = *pt;
            *pt = fp->pts[j];
            pt->target = keep.target;
            pt->side = keep.side;
            pt->hit = keep.hit;
            return 0;
        }
    sp_kv_stats st;
    int rc = sp_eval_apply(E, pi, best, &st);
    if (rc < 0)
        return rc;
    pt->ratio = st.true_ratio;
    pt->paper_r = st.paper_r;
    pt->bytes = st.bytes;
    pt->fp16_bytes = st.fp16_bytes;
    pt->compress_s = st.compress_s;
    sp_eval_acc acc = {0}, acc_s = {0};
    double t0 = sp_now_s();
    if ((rc = sp_eval_teacher_force(E, tf, T, false, &acc, &acc_s)) < 0)
        return rc;
    pt->tf_s = sp_now_s() - t0;
    pt->kl_short = sp_eval_acc_kl(&acc_s);
    pt->top1_short = sp_eval_acc_top1(&acc_s);
    if ((rc = sp_ctx_kv_stats(E->ctx, &st)) < 0)
        return rc;
    pt->span_ratio = st.true_ratio;
    pt->kl = sp_eval_acc_kl(&acc);
    pt->kl_max = acc.kl_max;
    pt->top1 = sp_eval_acc_top1(&acc);
    pt->ppl = sp_eval_acc_ppl(&acc);
    sp_eval_progress(E,
                     "fidelity %s N=%d %-12s target %.2f%s: knob %.4f true %.4f%s (%d probes) KL %.4f top1 %.3f "
                     "ppl %.3f, first %d: KL %.4f top1 %.3f; span bytes %.4f (compress %.2f s, %d tokens %.1f s)",
                     fr->text, fr->n_prompt, o->pol_name[pi], t, side < 0 ? "-" : side > 0 ? "+" : " ", pt->knob,
                     pt->ratio, pt->hit ? "" : " (miss)", fp->n_probes[k], pt->kl, pt->top1, pt->ppl,
                     o->short_tokens < T ? o->short_tokens : T, pt->kl_short, pt->top1_short, pt->span_ratio,
                     pt->compress_s, T, pt->tf_s);
    return 0;
}

/* Interpolate each metric linearly in the measured true ratio (no extrapolation). */
static void interpolate(const sp_eval_opts *o, sp_eval_fid_pol *fp)
{
    double x[MAXPT], xs[MAXPT], ykl[MAXPT], yt[MAXPT], yp[MAXPT], yks[MAXPT], yts[MAXPT];
    int n = 0;
    for (int j = 0; j < fp->n_pts; j++) {
        x[n] = fp->pts[j].ratio;
        xs[n] = fp->pts[j].span_ratio;
        ykl[n] = fp->pts[j].kl;
        yt[n] = fp->pts[j].top1;
        yp[n] = fp->pts[j].ppl;
        yks[n] = fp->pts[j].kl_short;
        yts[n] = fp->pts[j].top1_short;
        n++;
    }
    for (int ti = 0; ti < o->n_targets; ti++) {
        double tg = o->targets[ti];
        if (sp_eval_interp(x, ykl, n, tg, &fp->ikl[ti]) < 0)
            fp->ikl[ti] = NAN;
        if (sp_eval_interp(x, yt, n, tg, &fp->itop1[ti]) < 0)
            fp->itop1[ti] = NAN;
        if (sp_eval_interp(x, yp, n, tg, &fp->ippl[ti]) < 0)
            fp->ippl[ti] = NAN;
        if (sp_eval_interp(x, yks, n, tg, &fp->ikl_short[ti]) < 0)
            fp->ikl_short[ti] = NAN;
        if (sp_eval_interp(x, yts, n, tg, &fp->itop1_short[ti]) < 0)
            fp->itop1_short[ti] = NAN;
        if (sp_eval_interp(xs, ykl, n, tg, &fp->ikl_span[ti]) < 0)
            fp->ikl_span[ti] = NAN;
        if (sp_eval_interp(xs, yt, n, tg, &fp->itop1_span[ti]) < 0)
            fp->itop1_span[ti] = NAN;
    }
}

static int run_one(sp_eval_session *E, const char *tname, const int32_t *all, int N, sp_eval_fid_run *fr)
{
    const sp_eval_opts *o = E->o;
    const int T = o->tokens;
    memset(fr, 0, sizeof *fr);
    snprintf(fr->text, sizeof fr->text, "%s", tname);
    fr->n_prompt = N;
    fr->n_tokens = T;
    /* Prompt all[0..N); the prefill takes all[0..N-1), then all[N-1 .. N-1+T) are decoded,
     * predicting all[N .. N+T). */
    int rc = sp_eval_prefill_prompt(E, all, N, &fr->prefill_s);
    if (rc < 0)
        return rc;
    const int32_t *tf = all + N - 1;
    sp_kv_stats st;
    if ((rc = sp_eval_apply(E, -1, 1.0, &st)) < 0)
        return rc;
    fr->full_ratio = st.true_ratio;
    fr->fp16_bytes = st.fp16_bytes;
    fr->scores_s = st.scores_s;
    sp_eval_acc ref = {0};
    double t = sp_now_s();
    if ((rc = sp_eval_teacher_force(E, tf, T, true, &ref, NULL)) < 0)
        return rc;
    fr->ref_s = sp_now_s() - t;
    fr->full_ppl = sp_eval_acc_ppl(&ref);
    sp_eval_progress(E, "fidelity %s N=%d: prefill %.1f s, full reference %d tokens %.1f s, ppl %.3f", tname, N,
                     fr->prefill_s, T, fr->ref_s, fr->full_ppl);

    /* One search per target (|ratio - t| <= tol); then, for a target that no two measured points
     * bracket, one more search on the missing side ([t - tol, t] or [t, t + tol]), so every
     * reachable target is interpolated between points close to it. */
    for (int pi = 0; pi < o->n_pol; pi++) {
        sp_eval_fid_pol *fp = &fr->pol[fr->n_pol++];
        fp->policy = o->pol[pi];
        for (int ti = 0; ti < o->n_targets; ti++)
            if ((rc = point_at(E, fr, fp, pi, o->targets[ti], 0, tf)) < 0)
                return rc;
        for (int ti = 0; ti < o->n_targets; ti++) {
            bool below = false, above = false;
            for (int j = 0; j < fp->n_pts; j++) {
                below = below || fp->pts[j].ratio <= o->targets[ti];
                above = above || fp->pts[j].ratio >= o->targets[ti];
            }
            if (!below && (rc = point_at(E, fr, fp, pi, o->targets[ti], -1, tf)) < 0)
                return rc;
            if (!above && (rc = point_at(E, fr, fp, pi, o->targets[ti], +1, tf)) < 0)
                return rc;
        }
        interpolate(o, fp);
    }
    return 0;
}

int sp_eval_run_fidelity(sp_eval_session *E)
{
    const sp_eval_opts *o = E->o;
    int maxN = 0;
    for (int i = 0; i < o->n_lengths; i++)
        if (o->lengths[i] > maxN)
            maxN = o->lengths[i];
    free(E->fr);
    E->n_fr = 0;
    E->fr = calloc((size_t)o->n_texts * (size_t)o->n_lengths, sizeof *E->fr);
    if (!E->fr)
        return sp_error(ENOMEM, "out of memory for %d fidelity runs", o->n_texts * o->n_lengths);
    for (int ti = 0; ti < o->n_texts; ti++) {
        size_t len;
        char *text = load_text(E, o->texts[ti], &len);
        if (!text)
            return -ENOENT;
        /* Tokenize a prefix long enough for the longest prompt + T + 1 tokens (about 4 bytes per
         * token in English; 12 leaves room). */
        size_t need = (size_t)maxN + (size_t)o->tokens + 1, n;
        size_t take = need * 12 < len ? need * 12 : len;
        int rc = sp_eval_tokenize(E, text, take, true, false, &n);
        free(text);
        if (rc < 0)
            return rc;
        if (n < need)
            return sp_error(EINVAL, "text %s has %zu tokens in its first %zu bytes; %zu are needed", o->texts[ti], n,
                            take, need);
        int32_t *all = malloc(n * sizeof *all);
        if (!all)
            return sp_error(ENOMEM, "out of memory");
        memcpy(all, E->tbuf, n * sizeof *all);
        for (int li = 0; li < o->n_lengths && rc == 0; li++)
            if ((rc = run_one(E, o->texts[ti], all, o->lengths[li], &E->fr[E->n_fr])) == 0) {
                E->n_fr++;
                if (E->checkpoint)
                    E->checkpoint(E->user);
            }
        free(all);
        if (rc < 0)
            return rc;
    }
    return 0;
}

double sp_eval_fid_mean(const sp_eval_session *E, int pi, int ti, int which, int *n_ok)
{
    double s = 0;
    int n = 0, miss = 0;
    for (int r = 0; r < E->n_fr; r++) {
        const sp_eval_fid_pol *fp = &E->fr[r].pol[pi];
        double v = which == SP_EVAL_KL           ? fp->ikl[ti]
                   : which == SP_EVAL_TOP1       ? fp->itop1[ti]
                   : which == SP_EVAL_KL_SHORT   ? fp->ikl_short[ti]
                   : which == SP_EVAL_TOP1_SHORT ? fp->itop1_short[ti]
                   : which == SP_EVAL_KL_SPAN    ? fp->ikl_span[ti]
                   : which == SP_EVAL_TOP1_SPAN  ? fp->itop1_span[ti]
                                                 : fp->ippl[ti] / E->fr[r].full_ppl;
        if (isfinite(v)) {
            s += v;
            n++;
        } else {
            miss++;
        }
    }
    if (n_ok)
        *n_ok = n;
    return n && !miss ? s / n : NAN;
}
