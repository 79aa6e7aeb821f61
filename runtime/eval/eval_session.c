/* eval_session.c - the eval session (context, tokenizer, buffers) and the model steps both drivers
 * use: tokenize, recompress under a policy and knob, prefill a prompt with its last token held
 * back, teacher-force a span against the reference logits.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "eval_internal.h"
#include "sp_error.h"
#include "sp_time.h"

void sp_eval_opts_defaults(sp_eval_opts *o)
{
    static const sp_policy_kind pols[] = {SP_POLICY_STREAMING, SP_POLICY_H2O,          SP_POLICY_SNAPKV,
                                          SP_POLICY_PYRAMIDKV, SP_POLICY_PYRAMIDINFER, SP_POLICY_SPINDLE};
    memset(o, 0, sizeof *o);
    o->fid = o->ret = true;
    snprintf(o->texts[0], sizeof o->texts[0], "pg");
    snprintf(o->texts[1], sizeof o->texts[1], "kjv");
    o->n_texts = 2;
    o->lengths[0] = 2048;
    o->lengths[1] = 4096;
    o->lengths[2] = 8000;
    o->n_lengths = 3;
    o->tokens = 256;
    o->short_tokens = 32;
    o->numerics = SP_NUMERICS_GGML;
    for (int i = 0; i < 6; i++) {
        o->pol[i] = pols[i];
        snprintf(o->pol_name[i], sizeof o->pol_name[0], "%s", sp_kv_policy_name(pols[i]));
    }
    o->n_pol = 6;
    static const double targets[] = {0.1, 0.2, 0.3, 0.5};
    memcpy(o->targets, targets, sizeof targets);
    o->n_targets = 4;
    static const int rl[] = {1000, 2000, 4000, 8000};
    memcpy(o->ret_lengths, rl, sizeof rl);
    o->n_ret_lengths = 4;
    static const double depths[] = {0, 0.25, 0.5, 0.75, 1.0};
    memcpy(o->depths, depths, sizeof depths);
    o->n_depths = 5;
    o->seeds = 2;
    o->ret_targets[0] = 0.2;
    o->n_ret_targets = 1;
    o->digits = 5;
    o->answer_tokens = 10;
    o->tol = 0.01;
    o->max_probes = 8;
    o->tasks = 1u << SP_TASK_PASSKEY;
    o->task_needles[SP_TASK_MULTIKEY] = o->task_needles[SP_TASK_MULTIVALUE] = o->task_needles[SP_TASK_VARTRACK] = 4;
    o->task_tokens = 40;
    for (int k = 0; k < SP_TASK_COUNT; k++)
        sp_task_templates_default((sp_task_kind)k, &o->tmpl[k]);
}

int sp_eval_ctx_needed(const sp_eval_opts *o)
{
    int n_ctx = 0;
    for (int i = 0; o->fid && i < o->n_lengths; i++)
        if (o->lengths[i] + o->tokens + 1 > n_ctx)
            n_ctx = o->lengths[i] + o->tokens + 1;
    for (int i = 0; o->ret && i < o->n_ret_lengths; i++)
        if (o->ret_lengths[i] + o->answer_tokens + 16 > n_ctx)
            n_ctx = o->ret_lengths[i] + o->answer_tokens + 16;
    bool tasks = (o->tasks & ~(1u << SP_TASK_PASSKEY)) != 0;
    for (int i = 0; o->ret && tasks && i < o->n_ret_lengths; i++)
        if (o->ret_lengths[i] + o->task_tokens + 16 > n_ctx)
            n_ctx = o->ret_lengths[i] + o->task_tokens + 16;
    return n_ctx;
}

void sp_eval_session_free(sp_eval_session *E)
{
    if (!E)
        return;
    free(E->fr);
    free(E->rc);
    free(E->tc);
    free(E->tbuf);
    free(E->logits);
    free(E->ref);
    free(E->test);
    free(E->lp_ref);
    free(E->lp_test);
    sp_ctx_free(E->ctx);
    sp_tokenizer_free(E->tok);
    memset(E, 0, sizeof *E);
}

int sp_eval_session_open(sp_eval_session *E, const sp_eval_opts *o, const sp_model_t *m, const sp_kv_opts *base,
                         int n_threads)
{
    sp_eval_log_fn log = E->log;   /* hooks set by the caller before open survive it */
    sp_eval_checkpoint_fn cp_fn = E->checkpoint;
    void *user = E->user;
    memset(E, 0, sizeof *E);
    E->log = log;
    E->checkpoint = cp_fn;
    E->user = user;
    E->o = o;
    E->m = m;
    E->hp = sp_model_hparams(m);
    E->base = *base;
    E->t0 = sp_now_s();
    if (o->max_probes < 1 || o->max_probes > SP_EVAL_MAXPROBE || o->n_pol > SP_EVAL_MAXP || o->tokens < 1)
        return sp_error(EINVAL, "eval: max_probes %d (1..%d), policies %d (<= %d) or tokens %d out of range",
                        o->max_probes, SP_EVAL_MAXPROBE, o->n_pol, SP_EVAL_MAXP, o->tokens);
    if (E->base.budget_tokens) {
        sp_notice("eval: compression.budget_tokens ignored: the sweep sets the ratio knob");
        E->base.budget_tokens = 0;
    }
    int rc;
    if (!(E->tok = sp_tokenizer_from_gguf(sp_model_gguf(m)))) {
        rc = -EINVAL;
        goto fail;
    }
    E->n_vocab = E->hp->n_vocab;
    E->n_ctx = sp_eval_ctx_needed(o);
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = E->n_ctx;
    cp.n_threads = n_threads;
    cp.keep_prefill_state = true;
    cp.numerics = o->numerics;
    cp.backend = o->backend;
    /* Any valid compressing policy: every prompt sets its own before its prefill. */
    sp_kv_opts first = sp_eval_opts_for(E, -1, 0.5);
    first.policy = SP_POLICY_SNAPKV;
    cp.kv_opts = &first;
    if (!(E->ctx = sp_ctx_new(m, &cp))) {
        rc = -EINVAL;
        goto fail;
    }
    E->n_threads = n_threads;
    E->tcap = 1 << 16;
    E->tbuf = malloc(E->tcap * sizeof *E->tbuf);
    E->logits = malloc((size_t)E->n_vocab * sizeof *E->logits);
    E->ref = malloc((size_t)o->tokens * (size_t)E->n_vocab * sizeof *E->ref);
    E->test = malloc((size_t)o->tokens * (size_t)E->n_vocab * sizeof *E->test);
    E->lp_ref = malloc((size_t)E->n_vocab * sizeof *E->lp_ref);
    E->lp_test = malloc((size_t)E->n_vocab * sizeof *E->lp_test);
    if (!E->tbuf || !E->logits || !E->ref || !E->test || !E->lp_ref || !E->lp_test) {
        rc = sp_error(ENOMEM, "eval: out of memory for the logit buffers (%d tokens x %d vocabulary)", o->tokens,
                      E->n_vocab);
        goto fail;
    }
    return 0;
fail:
    sp_eval_session_free(E);
    return rc;
}

void sp_eval_progress(sp_eval_session *E, const char *fmt, ...)
{
    if (!E->log)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    E->log(E->user, line);
}

int sp_eval_tokenize(sp_eval_session *E, const char *text, size_t len, bool add_special, bool parse_special,
                     size_t *n)
{
    for (;;) {
        int rc = sp_tokenizer_encode(E->tok, text, len, add_special, parse_special, E->tbuf, E->tcap, n);
        if (rc != -ENOSPC)
            return rc;
        size_t cap = *n + 64;
        int32_t *nb = realloc(E->tbuf, cap * sizeof *nb);
        if (!nb)
            return sp_error(ENOMEM, "out of memory for %zu tokens", cap);
        E->tbuf = nb;
        E->tcap = cap;
    }
}

int sp_eval_count_cb(void *user, const char *text, size_t len)
{
    sp_eval_session *E = user;
    size_t n;
    int rc = sp_eval_tokenize(E, text, len, false, false, &n);
    return rc < 0 ? rc : (int)n;
}

sp_kv_opts sp_eval_opts_for(const sp_eval_session *E, int pi, double knob)
{
    sp_kv_opts k = E->base;
    k.policy = pi < 0 ? SP_POLICY_FULL : E->o->pol[pi];
    if (pi >= 0 && E->o->pol_knobs[pi][0])
        sp_kv_opts_parse(&k, E->o->pol_knobs[pi]);   /* checked by the caller when the variant was given */
    k.ratio = knob;
    k.target = SP_TARGET_TOKENS;   /* the sweep's knob is the token share; it measures the bytes itself */
    return k;
}

int sp_eval_apply(sp_eval_session *E, int pi, double knob, sp_kv_stats *st)
{
    sp_kv_opts k = sp_eval_opts_for(E, pi, knob);
    int rc = sp_ctx_recompress(E->ctx, &k);
    if (rc < 0)
        return rc;
    return sp_ctx_kv_stats(E->ctx, st);
}

int sp_eval_measure_cb(void *user, double knob, double *ratio)
{
    sp_eval_measure_ctx *mc = user;
    sp_kv_stats st;
    int rc = sp_eval_apply(mc->E, mc->pi, knob, &st);
    if (rc < 0)
        return rc;
    *ratio = st.true_ratio;
    return 0;
}

/* The first compression uses snapkv at 0.5 (any compressing policy keeps the prefill state);
 * every measurement recompresses from it. */
int sp_eval_prefill_prompt(sp_eval_session *E, const int32_t *toks, int n, double *secs)
{
    sp_ctx_reset(E->ctx);
    sp_kv_opts k = sp_eval_opts_for(E, -1, 1.0);
    k.policy = SP_POLICY_SNAPKV;
    k.ratio = 0.5;
    int rc = sp_ctx_set_policy(E->ctx, &k);
    if (rc < 0)
        return rc;
    double t = sp_now_s();
    rc = sp_ctx_prefill(E->ctx, toks, n - 1, NULL, NULL);
    *secs = sp_now_s() - t;
    return rc;
}

/* The logits after toks[i] (predicting toks[i+1]) are compared with the reference row i. Default:
 * one prefill call with every row's logits (batched matmuls; a compressed context appends the
 * tokens to its tails exactly as decode does); tf_decode: one sp_ctx_decode per token. */
int sp_eval_teacher_force(sp_eval_session *E, const int32_t *toks, int T, bool store, sp_eval_acc *acc,
                          sp_eval_acc *acc_short)
{
    float *rows = store ? E->ref : E->test;
    const size_t V = (size_t)E->n_vocab;
    int rc;
    if (E->o->tf_decode) {
        for (int i = 0; i < T; i++)
            if ((rc = sp_ctx_decode(E->ctx, toks[i], rows + (size_t)i * V)) < 0)
                return rc;
    } else if ((rc = sp_ctx_prefill(E->ctx, toks, T, NULL, rows)) < 0) {
        return rc;
    }
    for (int i = 0; i < T; i++) {
        sp_eval_log_softmax(E->ref + (size_t)i * V, E->n_vocab, E->lp_ref);
        sp_eval_log_softmax(rows + (size_t)i * V, E->n_vocab, E->lp_test);
        sp_eval_acc_add(acc, E->lp_ref, E->lp_test, E->n_vocab, toks[i + 1]);
        if (acc_short && i < E->o->short_tokens)
            sp_eval_acc_add(acc_short, E->lp_ref, E->lp_test, E->n_vocab, toks[i + 1]);
    }
    return 0;
}
