/* test_eval_driver.c - the eval drivers (eval_session.c, eval_fidelity.c, eval_retrieval.c) on the
 * default model without the CLI: a tiny fidelity run lands its points within the tolerance of the
 * byte target and scores the full cache against itself as KL 0; a tiny retrieval cell finds the
 * passkey with the full cache; bad options are refused with a message.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "model.h"
#include "sp_error.h"
#include "support/model_fixture.h"

static char hay_dir[4096];

static void tiny_opts(sp_eval_opts *o)
{
    sp_eval_opts_defaults(o);
    const char *sh = getenv("SPINDLE_SHARED");
    cr_assert(sh, "SPINDLE_SHARED not set");
    snprintf(hay_dir, sizeof hay_dir, "%s/data/haystack/pg_essays", sh);
    o->haystack = hay_dir;
    o->n_texts = 1;   /* pg */
    o->lengths[0] = 256;
    o->n_lengths = 1;
    o->tokens = 8;
    o->n_pol = 0;
    o->pol[o->n_pol] = SP_POLICY_SNAPKV;
    snprintf(o->pol_name[o->n_pol++], sizeof o->pol_name[0], "snapkv");
    o->pol[o->n_pol] = SP_POLICY_SPINDLE;
    snprintf(o->pol_name[o->n_pol++], sizeof o->pol_name[0], "spindle");
    o->targets[0] = 0.3;
    o->n_targets = 1;
    o->ret_lengths[0] = 300;
    o->n_ret_lengths = 1;
    o->depths[0] = 0.5;
    o->n_depths = 1;
    o->seeds = 1;
    o->ret_targets[0] = 0.3;
    o->n_ret_targets = 1;
    o->seed = 42;
}

Test(eval_driver, fidelity_points_within_tolerance, .timeout = 300)
{
    sp_model_t *m = model_fixture_load();
    sp_eval_opts o;
    tiny_opts(&o);
    o.ret = false;
    sp_kv_opts base;
    sp_kv_opts_defaults(&base);
    sp_eval_session E = {0};
    cr_assert_eq(sp_eval_session_open(&E, &o, m, &base, 2), 0, "%s", sp_last_error());
    cr_assert_eq(sp_eval_run_fidelity(&E), 0, "%s", sp_last_error());
    cr_assert_eq(E.n_fr, 1);
    const sp_eval_fid_run *fr = &E.fr[0];
    cr_assert_float_eq(fr->full_ratio, 1.0, 1e-12);
    cr_assert(fr->full_ppl > 1.0);
    cr_assert_eq(fr->n_pol, 2);
    for (int pi = 0; pi < fr->n_pol; pi++) {
        const sp_eval_fid_pol *fp = &fr->pol[pi];
        cr_assert_geq(fp->n_pts, 1);
        for (int j = 0; j < fp->n_pts; j++) {
            const sp_eval_fid_point *pt = &fp->pts[j];
            if (pt->hit && pt->side == 0)
                cr_expect_leq(fabs(pt->ratio - pt->target), o.tol + 1e-12, "%s: ratio %g for target %g",
                              o.pol_name[pi], pt->ratio, pt->target);
            cr_expect(pt->kl >= 0 && isfinite(pt->kl));
            cr_expect(pt->top1 >= 0 && pt->top1 <= 1);
            cr_expect_eq(pt->fp16_bytes, fr->fp16_bytes);
        }
        cr_expect(isfinite(sp_eval_fid_mean(&E, pi, 0, 0, NULL)), "%s: no KL interpolated at the target",
                  o.pol_name[pi]);
    }
    sp_eval_session_free(&E);
    sp_model_free(m);
}

Test(eval_driver, retrieval_full_finds_passkey, .timeout = 300)
{
    sp_model_t *m = model_fixture_load();
    sp_eval_opts o;
    tiny_opts(&o);
    o.fid = false;
    o.n_pol = 1;
    sp_kv_opts base;
    sp_kv_opts_defaults(&base);
    sp_eval_session E = {0};
    cr_assert_eq(sp_eval_session_open(&E, &o, m, &base, 2), 0, "%s", sp_last_error());
    size_t len;
    char *hay = sp_eval_read_dir(o.haystack, &len);
    cr_assert(hay, "%s", sp_last_error());
    cr_assert_eq(sp_eval_run_retrieval(&E, hay, len), 0, "%s", sp_last_error());
    free(hay);
    cr_assert_eq(E.n_rc, 1);
    const sp_eval_ret_cell *c = &E.rc[0];
    cr_assert_eq(c->n_r, 2);   /* full + snapkv at one target */
    cr_assert_eq(c->r[0].pi, -1);
    cr_expect(c->r[0].correct, "full answered '%s' for passkey %s", c->r[0].answer, c->passkey);
    cr_expect(c->needle_token > 0 && c->needle_token < c->n_prompt);
    cr_expect_float_eq(sp_eval_ret_acc_all(&E, -1, -1), 1.0, 1e-12);
    cr_expect(isnan(sp_eval_ret_acc_all(&E, 5, 0)), "no such policy index: NAN");
    sp_eval_session_free(&E);
    sp_model_free(m);
}

/* The tasks driver on one tiny multikey and one vartrack prompt: the full cache is the reference
 * (agrees with itself), every result's found count is the scorer's on its own answer, and the
 * cells carry the prompt's query and answers. */
Test(eval_driver, tasks_cells_and_agreement, .timeout = 300)
{
    sp_model_t *m = model_fixture_load();
    sp_eval_opts o;
    tiny_opts(&o);
    o.fid = false;
    o.n_pol = 1;
    o.tasks = (1u << SP_TASK_MULTIKEY) | (1u << SP_TASK_VARTRACK);
    o.task_needles[SP_TASK_VARTRACK] = 2;
    o.task_tokens = 12;
    sp_kv_opts base;
    sp_kv_opts_defaults(&base);
    sp_eval_session E = {0};
    cr_assert_eq(sp_eval_session_open(&E, &o, m, &base, 2), 0, "%s", sp_last_error());
    size_t len;
    char *hay = sp_eval_read_dir(o.haystack, &len);
    cr_assert(hay, "%s", sp_last_error());
    cr_assert_eq(sp_eval_run_tasks(&E, hay, len), 0, "%s", sp_last_error());
    free(hay);
    cr_assert_eq(E.n_tc, 2);
    cr_assert_eq(E.tc[0].task, SP_TASK_MULTIKEY);
    cr_assert_eq(E.tc[1].task, SP_TASK_VARTRACK);
    cr_assert_eq(E.tc[0].n_answers, 1);
    cr_assert_eq(E.tc[1].n_answers, 2);
    for (int i = 0; i < E.n_tc; i++) {
        const sp_eval_task_cell *c = &E.tc[i];
        cr_assert_eq(c->n_r, 2);
        cr_assert_eq(c->r[0].pi, -1);
        cr_expect(c->r[0].same_text && c->r[0].same_correct, "full agrees with itself");
        cr_expect(c->n_prompt <= 300 && c->needle_token > 0 && c->needle_token < c->n_prompt);
        cr_expect(c->query[0] != '\0');
        for (int k = 0; k < c->n_r; k++) {
            const sp_eval_task_res *r = &c->r[k];
            sp_task_prompt p = {.n_answers = c->n_answers};
            memcpy(p.answers, c->answers, sizeof p.answers);
            cr_expect_eq(r->found, sp_task_score(&p, r->answer));
            cr_expect_eq(r->correct, r->found == c->n_answers);
            cr_expect_eq(r->same_text, !strcmp(r->answer, c->r[0].answer));
        }
        cr_expect(fabs(c->r[1].ratio - 0.3) <= o.tol + 1e-9 || !c->r[1].hit);
    }
    cr_expect(isfinite(sp_eval_task_mean(&E, SP_TASK_MULTIKEY, 0, 0, SP_EVAL_TASK_SAME_CORRECT, NULL)));
    cr_expect(isnan(sp_eval_task_mean(&E, SP_TASK_MULTIVALUE, -1, -1, SP_EVAL_TASK_ACC, NULL)), "not run: NAN");
    sp_eval_session_free(&E);
    sp_model_free(m);
}

Test(eval_driver, open_refuses_bad_options)
{
    sp_model_t *m = model_fixture_load();
    sp_eval_opts o;
    tiny_opts(&o);
    o.max_probes = SP_EVAL_MAXPROBE + 1;
    sp_kv_opts base;
    sp_kv_opts_defaults(&base);
    sp_eval_session E = {0};
    cr_assert_eq(sp_eval_session_open(&E, &o, m, &base, 2), -EINVAL);
    cr_expect(strstr(sp_last_error(), "max_probes"), "message: %s", sp_last_error());
    cr_expect_null(E.ctx);
    sp_eval_session_free(&E);
    sp_model_free(m);
}

/* Everything kept, codebook off: the segment path against the plain cache. With exact numerics
 * (the eval's default) the two agree (KL < 0.001); with ggml numerics only the plain path rounds
 * queries and probabilities to fp16, and the difference is a floor well above that. */
static double kept_all_kl(sp_numerics nm)
{
    sp_model_t *m = model_fixture_load();
    sp_eval_opts o;
    tiny_opts(&o);
    o.ret = false;
    o.numerics = nm;
    o.lengths[0] = 512;
    o.tokens = 32;
    o.n_pol = 1;
    o.pol[0] = SP_POLICY_SPINDLE;
    snprintf(o.pol_knobs[0], sizeof o.pol_knobs[0], "codebook=off");
    o.targets[0] = 1.0;
    sp_kv_opts base;
    sp_kv_opts_defaults(&base);
    sp_eval_session E = {0};
    cr_assert_eq(sp_eval_session_open(&E, &o, m, &base, 2), 0, "%s", sp_last_error());
    cr_assert_eq(sp_eval_run_fidelity(&E), 0, "%s", sp_last_error());
    const sp_eval_fid_point *pt = &E.fr[0].pol[0].pts[0];
    cr_assert_float_eq(pt->ratio, 1.0, 1e-9, "everything kept raw: true ratio %g", pt->ratio);
    double kl = pt->kl;
    sp_eval_session_free(&E);
    sp_model_free(m);
    return kl;
}

Test(eval_driver, no_numerics_floor_with_exact, .timeout = 300)
{
    double kl = kept_all_kl(SP_NUMERICS_EXACT);
    cr_expect_lt(kl, 1e-3, "exact numerics, everything kept: KL %g", kl);
}

Test(eval_driver, ggml_numerics_floor_is_visible, .timeout = 300)
{
    double kl = kept_all_kl(SP_NUMERICS_GGML);
    cr_expect_gt(kl, 1e-3, "ggml numerics, everything kept: KL %g (the floor the eval avoids)", kl);
}
