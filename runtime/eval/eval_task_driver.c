/* eval_task_driver.c - the RULER-style tasks of `spindle eval` (multikey, multivalue, vartrack) on
 * a model: per task x seed x length x depth one prompt (eval_tasks.c), prefilled once; the full
 * cache answers first and is the reference; every policy x byte target is recompressed from the
 * same prefill (knob searched for the true byte ratio, as for the passkey) and answers greedily.
 * Scored as accuracy (every answer string found in the continuation; the share found as the
 * partial score) and as agreement with the full cache (identical continuation; same correctness).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "eval_internal.h"
#include "sp_error.h"

/* Tokens of the prompt besides the filler (template, intro, question, prefix, needles) for one
 * task, measured on a prompt whose filler is one short sentence. */
static int overhead(sp_eval_session *E, sp_task_kind k, int *n_over)
{
    const sp_eval_opts *o = E->o;
    sp_task_spec spec = {.kind = k, .filler_tokens = 1 << 20, .depth = 0.5, .seed = o->seed,
                         .n_needles = o->task_needles[k], .n_digits = o->digits, .tmpl = o->tmpl[k]};
    sp_task_prompt p;
    static const char one[] = "A short sentence.";
    int rc = sp_task_build(one, sizeof one - 1, &spec, sp_eval_count_cb, E, &p);
    if (rc < 0)
        return rc;
    bool special;
    char *prompt = sp_eval_render_prompt(E, o->tmpl[k].intro, p.context, p.question, p.prefix, &special);
    sp_task_prompt_free(&p);
    if (!prompt)
        return sp_error(ENOMEM, "cannot render the %s prompt", sp_task_name(k));
    size_t n;
    rc = sp_eval_tokenize(E, prompt, strlen(prompt), true, special, &n);
    free(prompt);
    *n_over = (int)n;
    return rc;
}

/* Build, tokenize and prefill one cell's prompt; *last: the held-back token; *p: the prompt. */
static int prepare(sp_eval_session *E, const char *hay, size_t hay_len, int n_over, sp_eval_task_cell *cell,
                   sp_task_prompt *p, int32_t *last)
{
    const sp_eval_opts *o = E->o;
    sp_task_kind k = cell->task;
    sp_task_spec spec = {.kind = k, .filler_tokens = cell->length - n_over - 8, .depth = cell->depth,
                         .seed = cell->seed, .n_needles = o->task_needles[k], .n_digits = o->digits,
                         .tmpl = o->tmpl[k]};
    int rc = sp_task_build(hay, hay_len, &spec, sp_eval_count_cb, E, p);
    if (rc < 0)
        return rc;
    snprintf(cell->query, sizeof cell->query, "%s", p->query);
    cell->n_answers = p->n_answers;
    memcpy(cell->answers, p->answers, sizeof cell->answers);
    bool special;
    char *prompt = sp_eval_render_prompt(E, o->tmpl[k].intro, p->context, p->question, p->prefix, &special);
    if (!prompt)
        return sp_error(ENOMEM, "cannot render the %s prompt", sp_task_name(k));
    size_t before;
    char *ctx = strstr(prompt, p->context);
    if (ctx && sp_eval_tokenize(E, prompt, (size_t)(ctx - prompt) + p->needle_off[0], true, special, &before) == 0)
        cell->needle_token = (int)before;
    size_t n;
    rc = sp_eval_tokenize(E, prompt, strlen(prompt), true, special, &n);
    free(prompt);
    if (rc < 0)
        return rc;
    if ((int)n + o->task_tokens + 1 > sp_ctx_n_ctx(E->ctx))
        return sp_error(ERANGE, "%s prompt of %zu tokens + %d answer tokens exceed the context %d", sp_task_name(k), n,
                        o->task_tokens, sp_ctx_n_ctx(E->ctx));
    cell->n_prompt = (int)n;
    int32_t *toks = malloc(n * sizeof *toks);
    if (!toks)
        return sp_error(ENOMEM, "out of memory");
    memcpy(toks, E->tbuf, n * sizeof *toks);
    rc = sp_eval_prefill_prompt(E, toks, (int)n, &cell->prefill_s);
    *last = toks[n - 1];
    free(toks);
    return rc;
}

static int score(sp_eval_session *E, sp_eval_task_cell *cell, const sp_task_prompt *p, int li, int32_t last)
{
    const sp_eval_opts *o = E->o;
    for (int pi = -1; pi < o->n_pol; pi++)
        for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
            sp_eval_task_res *r = &cell->r[cell->n_r++];
            r->pi = pi;
            r->ti = ti;
            int rc;
            if ((rc = sp_eval_compress_at(E, pi, ti, li, &r->knob, &r->hit, &r->ratio)) < 0 ||
                (rc = sp_eval_greedy(E, last, o->task_tokens, false, r->answer, sizeof r->answer)) < 0)
                return rc;
            r->found = sp_task_score(p, r->answer);
            r->correct = r->found == p->n_answers;
            const sp_eval_task_res *full = &cell->r[0];   /* pi = -1 comes first */
            r->same_text = !strcmp(r->answer, full->answer);
            r->same_correct = r->correct == full->correct;
        }
    return 0;
}

int sp_eval_run_tasks(sp_eval_session *E, const char *hay, size_t hay_len)
{
    const sp_eval_opts *o = E->o;
    int n_tasks = 0, rc;
    for (int k = SP_TASK_MULTIKEY; k < SP_TASK_COUNT; k++)
        if (o->tasks & (1u << k)) {
            n_tasks++;
            if ((rc = sp_task_templates_check((sp_task_kind)k, &o->tmpl[k])) < 0)
                return rc;
        }
    size_t n_cells = (size_t)n_tasks * (size_t)o->n_ret_lengths * (size_t)o->n_depths * (size_t)o->seeds;
    free(E->tc);
    E->n_tc = 0;
    E->tc = n_cells ? calloc(n_cells, sizeof *E->tc) : NULL;
    if (n_cells && !E->tc)
        return sp_error(ENOMEM, "out of memory for %zu task cells", n_cells);
    for (int k = SP_TASK_MULTIKEY; k < SP_TASK_COUNT; k++) {
        if (!(o->tasks & (1u << k)))
            continue;
        int n_over = 0;
        if ((rc = overhead(E, (sp_task_kind)k, &n_over)) < 0)
            return rc;
        for (int s = 0; s < o->seeds; s++)
            for (int li = 0; li < o->n_ret_lengths; li++)
                for (int di = 0; di < o->n_depths; di++) {
                    sp_eval_task_cell *cell = &E->tc[E->n_tc];
                    memset(cell, 0, sizeof *cell);
                    cell->task = (sp_task_kind)k;
                    cell->length = o->ret_lengths[li];
                    cell->depth = o->depths[di];
                    cell->seed = o->seed + (uint64_t)s * 1000003u + (uint64_t)li * 7919u + (uint64_t)di * 104729u +
                                 (uint64_t)k * 15485863u;
                    sp_task_prompt p;
                    int32_t last = 0;
                    rc = prepare(E, hay, hay_len, n_over, cell, &p, &last);
                    if (rc == 0)
                        rc = score(E, cell, &p, li, last);
                    sp_task_prompt_free(&p);
                    if (rc < 0)
                        return rc;
                    int ok = 0, same = 0;
                    for (int j = 1; j < cell->n_r; j++) {
                        ok += cell->r[j].correct;
                        same += cell->r[j].same_text;
                    }
                    sp_eval_progress(E,
                                     "%s L=%d (%d tokens) depth %3.0f%% seed %d: query %s, %d answers; full found "
                                     "%d ('%s'); %d/%d policy points correct, %d same text (prefill %.1f s)",
                                     sp_task_name(cell->task), cell->length, cell->n_prompt, 100 * cell->depth, s,
                                     cell->query, cell->n_answers, cell->r[0].found, cell->r[0].answer, ok,
                                     cell->n_r - 1, same, cell->prefill_s);
                    E->n_tc++;
                    if (E->checkpoint)
                        E->checkpoint(E->user);
                }
    }
    return 0;
}

double sp_eval_task_mean(const sp_eval_session *E, sp_task_kind task, int pi, int ti, int which, int *n_out)
{
    double sum = 0;
    int n = 0;
    for (int i = 0; i < E->n_tc; i++) {
        const sp_eval_task_cell *c = &E->tc[i];
        if (c->task != task)
            continue;
        for (int k = 0; k < c->n_r; k++) {
            const sp_eval_task_res *r = &c->r[k];
            if (r->pi != pi || r->ti != ti)
                continue;
            switch (which) {
            case SP_EVAL_TASK_ACC: sum += r->correct; break;
            case SP_EVAL_TASK_SCORE: sum += c->n_answers ? (double)r->found / c->n_answers : 0; break;
            case SP_EVAL_TASK_SAME_TEXT: sum += r->same_text; break;
            default: sum += r->same_correct; break;
            }
            n++;
        }
    }
    if (n_out)
        *n_out = n;
    return n ? sum / n : NAN;
}
