/* cmd_eval.c - `spindle eval`: quality of the compressed KV cache on the real model.
 *
 *   fidelity   prefill N tokens of a long text once (keep_prefill_state), teacher-force the next T
 *              true tokens with policy full for the reference logits, then for every policy x byte
 *              target: search the ratio knob until the TRUE byte ratio hits the target
 *              (sp_ctx_recompress + sp_ctx_kv_stats per probe), teacher-force the same T tokens and
 *              report mean KL(full || policy) (fp64), top-1 agreement with full and perplexity.
 *   retrieval  passkey prompts (chat template) over length x depth x seeds; each prompt is prefilled
 *              once and every policy x byte target is recompressed from it; greedy answer, exact
 *              match of the passkey digits.
 *   output     JSON with every measured point and probe, metrics interpolated linearly in the
 *              measured true ratio to the targets, PNG plots through gnuplot, a frontier table.
 *
 * Every generated token depends on the compressed cache: the prompt's last token is held back from
 * the prefill and decoded after the recompression (fidelity: the first of the T decoded tokens is
 * the first true continuation token; retrieval: the last token of the answer prefix).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "eval.h"
#include "kv_policy.h"
#include "model.h"
#include "sampler.h"
#include "sp_error.h"
#include "tokenizer.h"
#include "sp_time.h"

#define MAXL 8     /* lengths */
#define MAXP 8     /* policies */
#define MAXT 8     /* byte targets */
#define MAXD 16    /* depths */
#define MAXPROBE 16

static void usage(FILE *out)
{
    fputs("usage: spindle eval [options]\n"
          "  --fidelity / --retrieval   run only that part (default: both)\n"
          "  --quick                    small run (a few minutes): see below\n"
          "  --texts LIST               fidelity texts: pg (haystack essays), kjv (Debian bible-kjv-text)\n"
          "                             (default pg,kjv)\n"
          "  --lengths LIST             fidelity prompt lengths (default 2048,4096,8000)\n"
          "  --tokens N                 teacher-forced tokens per point (default 256)\n"
          "  --policies LIST            default streaming,h2o,snapkv,pyramidkv,pyramidinfer,spindle\n"
          "                             (full is always measured as the reference)\n"
          "  --variant P:K=V[;K=V]      one more curve: policy P with other knobs, e.g. spindle:codebook=off\n"
          "                             (repeatable; after --policies; same prefill, so no window change)\n"
          "  --targets LIST             true byte ratios to compare at (default 0.1,0.2,0.3,0.5)\n"
          "  --ret-lengths LIST         retrieval prompt lengths (default 1000,2000,4000,8000)\n"
          "  --depths LIST              needle depths in percent (default 0,25,50,75,100)\n"
          "  --seeds N                  passkeys per cell (default 2)\n"
          "  --ret-targets LIST         true byte ratios for retrieval (default 0.2)\n"
          "  --digits N                 passkey digits (default 5)\n"
          "  --answer-tokens N          greedy answer length limit (default 10)\n"
          "  --tol X                    knob search: |true ratio - t| <= X for each target t (default 0.01);\n"
          "                             a target not bracketed gets a point in [t - X, t] or [t, t + X]\n"
          "  --max-probes N             recompressions per knob search (default 8)\n"
          "  --tf prefill|decode        teacher forcing as one batched prefill of the T tokens (default)\n"
          "                             or one decode call per token (same tail path, slower)\n"
          "  --haystack DIR             essays directory (default $SPINDLE_SHARED/data/haystack/pg_essays,\n"
          "                             else /work/shared/data/haystack/pg_essays)\n"
          "  --seed S                   base seed of the passkeys (default [runtime] seed)\n"
          "  --json FILE                write every point as JSON\n"
          "  --out DIR                  write PNG plots (gnuplot) and their data files there\n"
          "  -m, -t, -c, --config FILE, --set compression.KEY=VALUE (other knobs: window, theta_k, ...)\n"
          "--quick: --texts pg,kjv --lengths 1024 --tokens 64 --targets 0.2,0.5 --ret-lengths 1000,2000\n"
          "         --depths 0,50,100 --seeds 1 (options given after --quick still apply)\n",
          out);
}

typedef struct eval_opts {
    bool fid, ret;
    char texts[4][8];
    int n_texts;
    int lengths[MAXL], n_lengths;
    int tokens;
    sp_policy_kind pol[MAXP];
    char pol_name[MAXP][96];     /* label: the policy name, or "policy:knobs" for a --variant */
    char pol_knobs[MAXP][160];   /* extra knobs of a variant ("" for a plain policy) */
    int n_pol;
    double targets[MAXT];
    int n_targets;
    int ret_lengths[MAXL], n_ret_lengths;
    double depths[MAXD];
    int n_depths;
    int seeds;
    double ret_targets[MAXT];
    int n_ret_targets;
    int digits, answer_tokens;
    double tol;
    int max_probes;
    bool tf_decode;
    const char *haystack, *json, *out;
    uint64_t seed;
} eval_opts;

/* ---- results ---- */

typedef struct fid_point {
    double target, knob, ratio, paper_r;
    int side;   /* 0: searched for |ratio - target| <= tol; -1: in [target - tol, target], +1: in
                   [target, target + tol] (bracket points) */
    uint64_t bytes, fp16_bytes;
    double kl, kl_max, top1, ppl, compress_s, tf_s;
    bool hit;   /* knob search within tol */
} fid_point;

typedef struct fid_pol {
    sp_policy_kind policy;
    fid_point pts[2 * MAXT];   /* one per target, plus bracket points (a knob found by several
                                  searches is measured once and copied) */
    int n_pts;
    sp_eval_probe probes[2 * MAXT][MAXPROBE];
    int n_probes[2 * MAXT];
    double ikl[MAXT], itop1[MAXT], ippl[MAXT];   /* interpolated at the targets; NAN = out of range */
} fid_pol;

typedef struct fid_run {
    char text[8];
    int n_prompt, n_tokens;
    double prefill_s, scores_s, ref_s, full_ppl, full_ratio;
    uint64_t fp16_bytes;
    fid_pol pol[MAXP];
    int n_pol;
} fid_run;

typedef struct ret_res {
    int pi;          /* index into opts.pol, -1 = full */
    int ti;          /* index into ret_targets, -1 = full */
    double knob, ratio;
    bool hit, correct;
    char answer[64];
} ret_res;

typedef struct ret_cell {
    int length, n_prompt, needle_token;
    double depth;
    uint64_t seed;
    char passkey[20];
    double prefill_s;
    ret_res r[MAXP * MAXT + 1];
    int n_r;
} ret_cell;

typedef struct evalctx {
    eval_opts *o;
    sp_cli_common *c;
    sp_model_t *m;
    const sp_hparams *hp;
    sp_tokenizer_t *tok;
    sp_ctx_t *ctx;
    sp_kv_opts base;
    int n_vocab;
    float *logits, *ref, *test; /* [n_vocab], [tokens][n_vocab] x 2 */
    double *lp_ref, *lp_test; /* [n_vocab] */
    int32_t *tbuf;
    size_t tcap;
    double t0;
    fid_run *fr;
    int n_fr;
    ret_cell *rc;
    int n_rc;
    /* knob warm starts for retrieval: [policy][target][length index] */
    double warm[MAXP][MAXT][MAXL];
} evalctx;

static void progress(evalctx *E, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(evalctx *E, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "eval [%6.0fs] ", sp_now_s() - E->t0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- option parsing ---- */

static int parse_policies(const char *list, eval_opts *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    o->n_pol = 0;
    for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
        sp_policy_kind p;
        if (sp_kv_policy_from_name(s, &p) < 0) {
            sp_cli_error("--policies: %s", sp_last_error());
            return -1;
        }
        if (p == SP_POLICY_FULL)
            continue;   /* always measured as the reference */
        if (o->n_pol == MAXP) {
            sp_cli_error("--policies: at most %d", MAXP);
            return -1;
        }
        o->pol[o->n_pol] = p;
        snprintf(o->pol_name[o->n_pol], sizeof o->pol_name[0], "%s", sp_kv_policy_name(p));
        o->pol_knobs[o->n_pol][0] = '\0';
        o->n_pol++;
    }
    return 0;
}

/* --variant POLICY:KEY=VALUE[;KEY=VALUE...]: one more curve with its own knobs (e.g.
 * "spindle:codebook=off", "spindle:gqa_mode=kv_head;theta_v=0.98"); the knobs are checked now. */
static int parse_variant(const char *v, eval_opts *o)
{
    const char *colon = strchr(v, ':');
    char name[32];
    if (!colon || colon == v || (size_t)(colon - v) >= sizeof name || !colon[1]) {
        sp_cli_error("--variant: '%s' is not POLICY:KEY=VALUE[;KEY=VALUE...]", v);
        return -1;
    }
    memcpy(name, v, (size_t)(colon - v));
    name[colon - v] = '\0';
    sp_policy_kind p;
    if (sp_kv_policy_from_name(name, &p) < 0) {
        sp_cli_error("--variant: %s", sp_last_error());
        return -1;
    }
    sp_kv_opts test;
    sp_kv_opts_defaults(&test);
    if (strlen(colon + 1) >= sizeof o->pol_knobs[0] || sp_kv_opts_parse(&test, colon + 1) < 0) {
        sp_cli_error("--variant '%s': %s", v, sp_last_error());
        return -1;
    }
    if (strstr(colon + 1, "window") || strstr(colon + 1, "policy") || strstr(colon + 1, "ratio") ||
        strstr(colon + 1, "budget_tokens")) {
        sp_cli_error("--variant '%s': window, policy, ratio and budget_tokens cannot vary within one run "
                     "(the window scores are computed once per prompt; the sweep sets the ratio)", v);
        return -1;
    }
    if (o->n_pol == MAXP) {
        sp_cli_error("--variant: at most %d policies and variants", MAXP);
        return -1;
    }
    o->pol[o->n_pol] = p;
    snprintf(o->pol_name[o->n_pol], sizeof o->pol_name[0], "%s", v);
    snprintf(o->pol_knobs[o->n_pol], sizeof o->pol_knobs[0], "%s", colon + 1);
    o->n_pol++;
    return 0;
}

static int parse_texts(const char *list, eval_opts *o)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", list);
    o->n_texts = 0;
    for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
        if (strcmp(s, "pg") && strcmp(s, "kjv")) {
            sp_cli_error("--texts: unknown text '%s' (allowed: pg, kjv)", s);
            return -1;
        }
        if (o->n_texts == 4)
            return -1;
        snprintf(o->texts[o->n_texts++], sizeof o->texts[0], "%s", s);
    }
    return o->n_texts ? 0 : -1;
}

static bool list_d(const char *opt, const char *v, double *out, int cap, int *n, double lo, double hi)
{
    int k = sp_eval_parse_doubles(v, out, cap);
    if (k < 0) {
        sp_cli_error("%s: %s", opt, sp_last_error());
        return false;
    }
    for (int i = 0; i < k; i++)
        if (!(out[i] >= lo && out[i] <= hi)) {
            sp_cli_error("%s: %g is out of range [%g, %g]", opt, out[i], lo, hi);
            return false;
        }
    *n = k;
    return true;
}

static bool list_i(const char *opt, const char *v, int *out, int cap, int *n, int lo, int hi)
{
    int k = sp_eval_parse_ints(v, out, cap);
    if (k < 0) {
        sp_cli_error("%s: %s", opt, sp_last_error());
        return false;
    }
    for (int i = 0; i < k; i++)
        if (out[i] < lo || out[i] > hi) {
            sp_cli_error("%s: %d is out of range [%d, %d]", opt, out[i], lo, hi);
            return false;
        }
    *n = k;
    return true;
}

static void set_quick(eval_opts *o)
{
    o->n_lengths = 1;
    o->lengths[0] = 1024;
    o->tokens = 64;
    o->n_targets = 2;
    o->targets[0] = 0.2;
    o->targets[1] = 0.5;
    o->n_ret_lengths = 2;
    o->ret_lengths[0] = 1000;
    o->ret_lengths[1] = 2000;
    o->n_depths = 3;
    o->depths[0] = 0;
    o->depths[1] = 0.5;
    o->depths[2] = 1.0;
    o->seeds = 1;
}

static int parse_args(int argc, char **argv, sp_cli_common *c, eval_opts *o)
{
    bool only_fid = false, only_ret = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int64_t x;
        int r = sp_cli_common_arg(c, argc, argv, &i);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--fidelity")) {
            only_fid = true;
        } else if (!strcmp(a, "--retrieval")) {
            only_ret = true;
        } else if (!strcmp(a, "--quick")) {
            set_quick(o);
        } else if (!strcmp(a, "--texts")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || parse_texts(v, o) < 0)
                return -1;
        } else if (!strcmp(a, "--lengths")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !list_i(a, v, o->lengths, MAXL, &o->n_lengths, 64, 1 << 20))
                return -1;
        } else if (!strcmp(a, "--tokens")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 4096, &x))
                return -1;
            o->tokens = (int)x;
        } else if (!strcmp(a, "--policies")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || parse_policies(v, o) < 0)
                return -1;
        } else if (!strcmp(a, "--variant")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || parse_variant(v, o) < 0)
                return -1;
        } else if (!strcmp(a, "--targets")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !list_d(a, v, o->targets, MAXT, &o->n_targets, 1e-3, 1.0))
                return -1;
        } else if (!strcmp(a, "--ret-lengths")) {
            if (!(v = sp_cli_value(argc, argv, &i)) ||
                !list_i(a, v, o->ret_lengths, MAXL, &o->n_ret_lengths, 64, 1 << 20))
                return -1;
        } else if (!strcmp(a, "--depths")) {
            int d[MAXD], n;
            if (!(v = sp_cli_value(argc, argv, &i)) || !list_i(a, v, d, MAXD, &n, 0, 100))
                return -1;
            o->n_depths = n;
            for (int k = 0; k < n; k++)
                o->depths[k] = d[k] / 100.0;
        } else if (!strcmp(a, "--seeds")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 100, &x))
                return -1;
            o->seeds = (int)x;
        } else if (!strcmp(a, "--ret-targets")) {
            if (!(v = sp_cli_value(argc, argv, &i)) ||
                !list_d(a, v, o->ret_targets, MAXT, &o->n_ret_targets, 1e-3, 1.0))
                return -1;
        } else if (!strcmp(a, "--digits")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 18, &x))
                return -1;
            o->digits = (int)x;
        } else if (!strcmp(a, "--answer-tokens")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 256, &x))
                return -1;
            o->answer_tokens = (int)x;
        } else if (!strcmp(a, "--tol")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_float(a, v, 1e-5, 0.5, &o->tol))
                return -1;
        } else if (!strcmp(a, "--max-probes")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, MAXPROBE, &x))
                return -1;
            o->max_probes = (int)x;
        } else if (!strcmp(a, "--tf")) {
            if (!(v = sp_cli_value(argc, argv, &i)))
                return -1;
            if (strcmp(v, "prefill") && strcmp(v, "decode")) {
                sp_cli_error("--tf: '%s' is not prefill or decode", v);
                return -1;
            }
            o->tf_decode = !strcmp(v, "decode");
        } else if (!strcmp(a, "--haystack")) {
            if (!(o->haystack = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "--json")) {
            if (!(o->json = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "--out")) {
            if (!(o->out = sp_cli_value(argc, argv, &i)))
                return -1;
        } else {
            sp_cli_error("eval: unknown option '%s' (see spindle eval --help)", a);
            return -1;
        }
    }
    if (only_fid || only_ret) {
        o->fid = only_fid;
        o->ret = only_ret;
    }
    return 0;
}

/* ---- model helpers ---- */

static int tokenize(evalctx *E, const char *text, size_t len, bool add_special, bool parse_special, size_t *n)
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

static int count_cb(void *user, const char *text, size_t len)
{
    evalctx *E = user;
    size_t n;
    int rc = tokenize(E, text, len, false, false, &n);
    return rc < 0 ? rc : (int)n;
}

/* Options of policy index pi (-1: full) at a knob value. Variant knobs were validated at parse. */
static sp_kv_opts opts_for(const evalctx *E, int pi, double knob)
{
    sp_kv_opts k = E->base;
    k.policy = pi < 0 ? SP_POLICY_FULL : E->o->pol[pi];
    if (pi >= 0 && E->o->pol_knobs[pi][0])
        sp_kv_opts_parse(&k, E->o->pol_knobs[pi]);
    k.ratio = knob;
    return k;
}

/* Recompress under (policy index, knob) and read the accounting. */
static int apply(evalctx *E, int pi, double knob, sp_kv_stats *st)
{
    sp_kv_opts k = opts_for(E, pi, knob);
    int rc = sp_ctx_recompress(E->ctx, &k);
    if (rc < 0)
        return rc;
    return sp_ctx_kv_stats(E->ctx, st);
}

typedef struct measure_ctx {
    evalctx *E;
    int pi;
} measure_ctx;

static int measure_cb(void *user, double knob, double *ratio)
{
    measure_ctx *mc = user;
    sp_kv_stats st;
    int rc = apply(mc->E, mc->pi, knob, &st);
    if (rc < 0)
        return rc;
    *ratio = st.true_ratio;
    return 0;
}

/* Prefill the prompt minus its last token with the retained state (the first compression uses
 * the base options; every measurement recompresses). */
static int prefill_prompt(evalctx *E, const int32_t *toks, int n, double *secs)
{
    sp_ctx_reset(E->ctx);
    sp_kv_opts k = opts_for(E, -1, 1.0);
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

/* Teacher-force toks[0..T): the logits after toks[i] (predicting toks[i+1]) are compared with the
 * reference row i; with store, they become the reference rows. Default: one prefill call with every
 * row's logits (batched matmuls; a compressed context appends the tokens to its tails exactly as
 * decode does); --tf decode: one sp_ctx_decode per token. */
static int teacher_force(evalctx *E, const int32_t *toks, int T, bool store, sp_eval_acc *acc)
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
    }
    return 0;
}

/* ---- fidelity ---- */

static char *load_text(evalctx *E, const char *name, size_t *len)
{
    if (!strcmp(name, "kjv"))
        return sp_eval_read_kjv(NULL, len);
    return sp_eval_read_dir(E->o->haystack, len);
}

static void write_json(evalctx *E, FILE *f, double wall_s, bool complete);

/* With --json: rewrite the file after each finished fidelity run / retrieval cell ("complete":
 * false), so a long run that is stopped keeps what it measured. Write to a temporary name, then
 * rename. Failures are reported once at the end by the final write. */
static void checkpoint(evalctx *E)
{
    if (!E->o->json)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.partial", E->o->json);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    write_json(E, f, sp_now_s() - E->t0, false);
    if (fclose(f) == 0)
        rename(tmp, E->o->json);
    else
        remove(tmp);
}

/* Search the knob of policy pi for target t (side 0: |ratio - t| <= tol; -1: ratio in [t - tol, t];
 * +1: in [t, t + tol]), then teacher-force at it unless that knob was measured already. Appends
 * a point to fp. */
static int fid_point_at(evalctx *E, const fid_run *fr, fid_pol *fp, int pi, double t, int side, const int32_t *tf)
{
    eval_opts *o = E->o;
    const int T = o->tokens;
    if (fp->n_pts == 2 * MAXT)
        return 0;
    int k = fp->n_pts++;
    fid_point *pt = &fp->pts[k];
    memset(pt, 0, sizeof *pt);
    pt->target = t;
    pt->side = side;
    sp_eval_search srch = {.knob_min = 0.01, .knob_max = 1.0, .tol = side ? o->tol / 2 : o->tol,
                           .max_iter = o->max_probes};
    /* Warm start: the knob of the nearest point measured so far, scaled. */
    for (int j = 0; j < k; j++)
        if (fp->pts[j].ratio > 0 && (srch.start == 0 || fabs(fp->pts[j].ratio - t) < fabs(srch.start - t)))
            srch.start = fp->pts[j].knob * t / fp->pts[j].ratio;
    measure_ctx mc = {E, pi};
    double best;
    int s = sp_eval_knob_search(&srch, t + side * o->tol / 2, measure_cb, &mc, fp->probes[k], MAXPROBE,
                                &fp->n_probes[k], &best);
    if (s < 0)
        return s;
    pt->hit = s == 0;
    pt->knob = best;
    for (int j = 0; j < k; j++)
        if (fp->pts[j].knob == best) {   /* measured already: copy */
            fid_point keep = *pt;
            *pt = fp->pts[j];
            pt->target = keep.target;
            pt->side = keep.side;
            pt->hit = keep.hit;
            return 0;
        }
    sp_kv_stats st;
    int rc = apply(E, pi, best, &st);
    if (rc < 0)
        return rc;
    pt->ratio = st.true_ratio;
    pt->paper_r = st.paper_r;
    pt->bytes = st.bytes;
    pt->fp16_bytes = st.fp16_bytes;
    pt->compress_s = st.compress_s;
    sp_eval_acc acc = {0};
    double t0 = sp_now_s();
    if ((rc = teacher_force(E, tf, T, false, &acc)) < 0)
        return rc;
    pt->tf_s = sp_now_s() - t0;
    pt->kl = sp_eval_acc_kl(&acc);
    pt->kl_max = acc.kl_max;
    pt->top1 = sp_eval_acc_top1(&acc);
    pt->ppl = sp_eval_acc_ppl(&acc);
    progress(E, "fidelity %s N=%d %-12s target %.2f%s: knob %.4f true %.4f%s (%d probes) KL %.4f top1 %.3f ppl %.3f "
                "(compress %.2f s, %d tokens %.1f s)",
             fr->text, fr->n_prompt, o->pol_name[pi], t, side < 0 ? "-" : side > 0 ? "+" : " ", pt->knob, pt->ratio,
             pt->hit ? "" : " (miss)", fp->n_probes[k], pt->kl, pt->top1, pt->ppl, pt->compress_s, T, pt->tf_s);
    return 0;
}

static int run_fidelity_one(evalctx *E, const char *tname, const int32_t *all, int N, fid_run *fr)
{
    eval_opts *o = E->o;
    const int T = o->tokens;
    memset(fr, 0, sizeof *fr);
    snprintf(fr->text, sizeof fr->text, "%s", tname);
    fr->n_prompt = N;
    fr->n_tokens = T;
    /* Prompt all[0..N); the last prompt token all[N-1] is decoded as the first teacher-forced token:
     * the prefill takes all[0..N-1), then tokens all[N-1 .. N-1+T) are decoded, predicting
     * all[N .. N+T). */
    int rc = prefill_prompt(E, all, N, &fr->prefill_s);
    if (rc < 0)
        return rc;
    const int32_t *tf = all + N - 1;
    sp_kv_stats st;
    if ((rc = apply(E, -1, 1.0, &st)) < 0)
        return rc;
    fr->full_ratio = st.true_ratio;
    fr->fp16_bytes = st.fp16_bytes;
    fr->scores_s = st.scores_s;
    sp_eval_acc ref = {0};
    double t = sp_now_s();
    if ((rc = teacher_force(E, tf, T, true, &ref)) < 0)
        return rc;
    fr->ref_s = sp_now_s() - t;
    fr->full_ppl = sp_eval_acc_ppl(&ref);
    progress(E, "fidelity %s N=%d: prefill %.1f s, full reference %d tokens %.1f s, ppl %.3f", tname, N,
             fr->prefill_s, T, fr->ref_s, fr->full_ppl);

    /* One search per target (|ratio - t| <= tol); then, for a target that no two measured points
     * bracket, one more search on the missing side ([t - tol, t] or [t, t + tol]), so every
     * reachable target is interpolated between points close to it. */
    for (int pi = 0; pi < o->n_pol; pi++) {
        fid_pol *fp = &fr->pol[fr->n_pol++];
        fp->policy = o->pol[pi];
        for (int ti = 0; ti < o->n_targets; ti++)
            if ((rc = fid_point_at(E, fr, fp, pi, o->targets[ti], 0, tf)) < 0)
                return rc;
        for (int ti = 0; ti < o->n_targets; ti++) {
            bool below = false, above = false;
            for (int j = 0; j < fp->n_pts; j++) {
                below = below || fp->pts[j].ratio <= o->targets[ti];
                above = above || fp->pts[j].ratio >= o->targets[ti];
            }
            if (!below && (rc = fid_point_at(E, fr, fp, pi, o->targets[ti], -1, tf)) < 0)
                return rc;
            if (!above && (rc = fid_point_at(E, fr, fp, pi, o->targets[ti], +1, tf)) < 0)
                return rc;
        }
        /* Interpolate each metric linearly in the measured true ratio (no extrapolation). */
        double x[2 * MAXT], ykl[2 * MAXT], yt[2 * MAXT], yp[2 * MAXT];
        int n = 0;
        for (int j = 0; j < fp->n_pts; j++) {
            x[n] = fp->pts[j].ratio;
            ykl[n] = fp->pts[j].kl;
            yt[n] = fp->pts[j].top1;
            yp[n] = fp->pts[j].ppl;
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
        }
    }
    return 0;
}

static int run_fidelity(evalctx *E)
{
    eval_opts *o = E->o;
    int maxN = 0;
    for (int i = 0; i < o->n_lengths; i++)
        if (o->lengths[i] > maxN)
            maxN = o->lengths[i];
    E->fr = calloc((size_t)o->n_texts * (size_t)o->n_lengths, sizeof *E->fr);
    if (!E->fr)
        return sp_error(ENOMEM, "out of memory");
    for (int ti = 0; ti < o->n_texts; ti++) {
        size_t len;
        char *text = load_text(E, o->texts[ti], &len);
        if (!text)
            return -ENOENT;
        /* Tokenize a prefix long enough for the longest prompt + T + 1 tokens (about 4 bytes per
         * token in English; 12 leaves room). */
        size_t need = (size_t)maxN + (size_t)o->tokens + 1, n;
        size_t take = need * 12 < len ? need * 12 : len;
        int rc = tokenize(E, text, take, true, false, &n);
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
            if ((rc = run_fidelity_one(E, o->texts[ti], all, o->lengths[li], &E->fr[E->n_fr])) == 0) {
                E->n_fr++;
                checkpoint(E);
            }
        free(all);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- retrieval ---- */

static const char *RET_INTRO = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
                               "I will quiz you about the pass key.";
static const char *RET_QUESTION = "What is the pass key? Answer with the number only.";
static const char *RET_PREFIX = "The pass key is";

/* Render the retrieval prompt (chat template when the vocabulary has one) into a malloc'd string. */
static char *render_prompt(evalctx *E, const char *filler, bool *special)
{
    size_t ul = strlen(RET_INTRO) + strlen(filler) + strlen(RET_QUESTION) + 8;
    char *user = malloc(ul);
    if (!user)
        return NULL;
    snprintf(user, ul, "%s\n\n%s\n\n%s", RET_INTRO, filler, RET_QUESTION);
    int fam = sp_chat_family_from_name(sp_tokenizer_chat_template(E->tok));
    char *out;
    if (fam > SP_CHAT_FAMILY_NONE) {
        size_t cap = sp_chat_render_size(NULL, user) + strlen(RET_PREFIX) + 1;
        out = malloc(cap);
        int n = out ? sp_chat_render((sp_chat_family)fam, NULL, user, out, cap) : -ENOMEM;
        if (n < 0) {
            free(out);
            free(user);
            return NULL;
        }
        memcpy(out + n, RET_PREFIX, strlen(RET_PREFIX) + 1);
        *special = true;
    } else {
        size_t cap = ul + strlen(RET_PREFIX) + 2;
        out = malloc(cap);
        if (out)
            snprintf(out, cap, "%s\n%s", user, RET_PREFIX);
        *special = false;
    }
    free(user);
    return out;
}

/* Decode the held-back last prompt token, then greedy up to answer_tokens tokens. */
static int answer(evalctx *E, int32_t last, char *buf, size_t cap)
{
    size_t w = 0;
    buf[0] = '\0';
    int rc = sp_ctx_decode(E->ctx, last, E->logits);
    if (rc < 0)
        return rc;
    for (int i = 0; i < E->o->answer_tokens; i++) {
        int32_t t = sp_sampler_greedy(E->logits, E->n_vocab);
        if (sp_tokenizer_is_eog(E->tok, t))
            break;
        char piece[64];
        int n = sp_tokenizer_token_to_piece(E->tok, t, false, piece, sizeof piece);
        if (n > 0 && w + (size_t)n < cap) {
            memcpy(buf + w, piece, (size_t)n);
            w += (size_t)n;
            buf[w] = '\0';
        }
        /* Stop once a digit run has ended. */
        bool digits = false, ended = false;
        for (size_t k = 0; k < w; k++) {
            bool d = buf[k] >= '0' && buf[k] <= '9';
            if (digits && !d)
                ended = true;
            digits = digits || d;
        }
        if (ended || i + 1 == E->o->answer_tokens)
            break;
        if ((rc = sp_ctx_decode(E->ctx, t, E->logits)) < 0)
            return rc;
    }
    for (size_t k = 0; k < w; k++)
        if (buf[k] == '"' || buf[k] == '\\' || (unsigned char)buf[k] < 0x20)
            buf[k] = ' ';   /* JSON- and table-safe */
    return 0;
}

static int run_retrieval(evalctx *E, const char *hay, size_t hay_len)
{
    eval_opts *o = E->o;
    size_t n_cells = (size_t)o->n_ret_lengths * (size_t)o->n_depths * (size_t)o->seeds;
    E->rc = calloc(n_cells, sizeof *E->rc);
    if (!E->rc)
        return sp_error(ENOMEM, "out of memory");
    /* Tokens besides the filler: template + intro + question + answer prefix + needle + margin. */
    bool special;
    char *empty = render_prompt(E, "", &special);
    if (!empty)
        return sp_error(ENOMEM, "cannot render the retrieval prompt");
    size_t n_over;
    int rc = tokenize(E, empty, strlen(empty), true, special, &n_over);
    free(empty);
    if (rc < 0)
        return rc;
    char ns[96], key0[20];
    memset(key0, '9', (size_t)o->digits);
    key0[o->digits] = '\0';
    sp_needle_sentence(key0, ns, sizeof ns);
    int n_needle = count_cb(E, ns, strlen(ns));
    if (n_needle < 0)
        return n_needle;
    for (int p = 0; p < MAXP; p++)
        for (int t = 0; t < MAXT; t++)
            for (int l = 0; l < MAXL; l++)
                E->warm[p][t][l] = 0;
    sp_eval_search srch = {.knob_min = 0.01, .knob_max = 1.0, .tol = o->tol, .max_iter = o->max_probes};
    /* Seeds outermost: after each seed the whole length x depth grid has one more sample. */
    for (int s = 0; s < o->seeds; s++)
        for (int li = 0; li < o->n_ret_lengths; li++)
            for (int di = 0; di < o->n_depths; di++) {
                ret_cell *cell = &E->rc[E->n_rc];
                memset(cell, 0, sizeof *cell);
                cell->length = o->ret_lengths[li];
                cell->depth = o->depths[di];
                cell->seed = o->seed + (uint64_t)s * 1000003u + (uint64_t)li * 7919u + (uint64_t)di * 104729u;
                sp_needle_spec spec = {.filler_tokens = cell->length - (int)n_over - n_needle - 8,
                                       .depth = cell->depth, .seed = cell->seed, .n_digits = o->digits};
                sp_needle nd;
                if ((rc = sp_needle_build(hay, hay_len, &spec, count_cb, E, &nd)) < 0)
                    return rc;
                char *prompt = render_prompt(E, nd.text, &special);
                snprintf(cell->passkey, sizeof cell->passkey, "%s", nd.passkey);
                /* needle position in tokens: tokens of the prompt before the needle sentence */
                size_t before = 0;
                char *nptr = prompt ? strstr(prompt, nd.text) : NULL;
                if (nptr && tokenize(E, prompt, (size_t)(nptr - prompt) + nd.needle_off, true, special, &before) == 0)
                    cell->needle_token = (int)before;
                sp_needle_free(&nd);
                if (!prompt)
                    return sp_error(ENOMEM, "cannot render the retrieval prompt");
                size_t n;
                rc = tokenize(E, prompt, strlen(prompt), true, special, &n);
                free(prompt);
                if (rc < 0)
                    return rc;
                if ((int)n + o->answer_tokens + 1 > sp_ctx_n_ctx(E->ctx))
                    return sp_error(ERANGE, "retrieval prompt of %zu tokens + %d answer tokens exceed the context %d",
                                    n, o->answer_tokens, sp_ctx_n_ctx(E->ctx));
                cell->n_prompt = (int)n;
                int32_t *toks = malloc(n * sizeof *toks);
                if (!toks)
                    return sp_error(ENOMEM, "out of memory");
                memcpy(toks, E->tbuf, n * sizeof *toks);
                if ((rc = prefill_prompt(E, toks, (int)n, &cell->prefill_s)) < 0) {
                    free(toks);
                    return rc;
                }
                int32_t last = toks[n - 1];
                free(toks);
                sp_kv_stats st;
                /* full first: the reference of the cell */
                ret_res *r = &cell->r[cell->n_r++];
                r->pi = r->ti = -1;
                r->knob = 1.0;
                if ((rc = apply(E, -1, 1.0, &st)) < 0 ||
                    (rc = answer(E, last, r->answer, sizeof r->answer)) < 0)
                    return rc;
                r->ratio = st.true_ratio;
                r->hit = true;
                r->correct = sp_eval_passkey_match(r->answer, cell->passkey);
                int n_ok = r->correct, n_all = 1;
                for (int pi = 0; pi < o->n_pol; pi++) {
                    measure_ctx mc = {E, pi};
                    for (int ti = 0; ti < o->n_ret_targets; ti++) {
                        r = &cell->r[cell->n_r++];
                        r->pi = pi;
                        r->ti = ti;
                        sp_eval_probe pr[MAXPROBE];
                        int np;
                        srch.start = E->warm[pi][ti][li];
                        int sres = sp_eval_knob_search(&srch, o->ret_targets[ti], measure_cb, &mc, pr, MAXPROBE, &np,
                                                       &r->knob);
                        if (sres < 0)
                            return sres;
                        r->hit = sres == 0;
                        E->warm[pi][ti][li] = r->knob;
                        if ((rc = apply(E, pi, r->knob, &st)) < 0 ||
                            (rc = answer(E, last, r->answer, sizeof r->answer)) < 0)
                            return rc;
                        r->ratio = st.true_ratio;
                        r->correct = sp_eval_passkey_match(r->answer, cell->passkey);
                        n_ok += r->correct;
                        n_all++;
                    }
                }
                progress(E, "retrieval L=%d (%d tokens) depth %3.0f%% seed %d: passkey %s, full answered '%s' (%s); "
                            "%d/%d policy points correct (prefill %.1f s)",
                         cell->length, cell->n_prompt, 100 * cell->depth, s, cell->passkey, cell->r[0].answer,
                         cell->r[0].correct ? "ok" : "wrong", n_ok, n_all, cell->prefill_s);
                E->n_rc++;
                checkpoint(E);
            }
    return 0;
}

/* Accuracy of (policy index pi or -1 = full, target ti) at (length li, depth di) over seeds. */
static double ret_acc(const evalctx *E, int pi, int ti, int li, int di, int *n_out)
{
    int ok = 0, n = 0;
    for (int i = 0; i < E->n_rc; i++) {
        const ret_cell *c = &E->rc[i];
        if (c->length != E->o->ret_lengths[li] || c->depth != E->o->depths[di])
            continue;
        for (int k = 0; k < c->n_r; k++)
            if (c->r[k].pi == pi && c->r[k].ti == ti) {
                ok += c->r[k].correct;
                n++;
            }
    }
    if (n_out)
        *n_out = n;
    return n ? (double)ok / n : NAN;
}

static double ret_acc_all(const evalctx *E, int pi, int ti)
{
    int ok = 0, n = 0;
    for (int i = 0; i < E->n_rc; i++)
        for (int k = 0; k < E->rc[i].n_r; k++)
            if (E->rc[i].r[k].pi == pi && E->rc[i].r[k].ti == ti) {
                ok += E->rc[i].r[k].correct;
                n++;
            }
    return n ? (double)ok / n : NAN;
}

/* Mean over fidelity runs of an interpolated metric (NAN when any run lacks it). */
static double fid_mean(const evalctx *E, int pi, int ti, int which, int *n_ok)
{
    double s = 0;
    int n = 0, miss = 0;
    for (int r = 0; r < E->n_fr; r++) {
        const fid_pol *fp = &E->fr[r].pol[pi];
        double v = which == 0 ? fp->ikl[ti] : which == 1 ? fp->itop1[ti] : fp->ippl[ti] / E->fr[r].full_ppl;
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

/* ---- output ---- */

static void jnum(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

static void write_json(evalctx *E, FILE *f, double wall_s, bool complete)
{
    eval_opts *o = E->o;
    struct utsname un;
    uname(&un);
    char cpu[256], commit[64];
    sp_cli_cpu_model(cpu, sizeof cpu);
    sp_cli_git_commit(commit, sizeof commit);
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0)
        load[0] = load[1] = load[2] = NAN;
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    const sp_hparams *hp = E->hp;
    fprintf(f, "{\n  \"bench\": \"spindle eval\",\n  \"complete\": %s,\n  \"date\": \"%s\",\n  \"commit\": ",
            complete ? "true" : "false", date);
    sp_cli_json_str(f, commit);
    fprintf(f, ",\n  \"machine\": {\"cpu\": ");
    sp_cli_json_str(f, cpu);
    fprintf(f, ", \"cores_online\": %ld, \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    sp_cli_json_str(f, un.release);
    fprintf(f, ", \"loadavg_end\": [%.2f, %.2f, %.2f]},\n  \"wall_s\": %.1f,\n", load[0], load[1], load[2], wall_s);
    fprintf(f, "  \"model\": {\"path\": ");
    sp_cli_json_str(f, E->c->cfg.model.path);
    fprintf(f, ", \"arch\": ");
    sp_cli_json_str(f, hp->arch_name);
    fprintf(f, ", \"n_layer\": %d, \"n_head\": %d, \"n_kv_head\": %d, \"head_dim\": %d, \"n_vocab\": %d},\n",
            hp->n_layer, hp->n_head, hp->n_kv_head, hp->head_dim, hp->n_vocab);
    const sp_kv_opts *b = &E->base;
    fprintf(f, "  \"config\": {\"threads\": %d, \"tokens\": %d, \"tol\": %g, \"max_probes\": %d, \"knob\": \"ratio\", "
               "\"teacher_forcing\": \"%s\", \"window\": %" PRId64 ", \"pool_kernel\": %" PRId64 ", \"beta\": %g, \"theta_k\": %g, \"theta_v\": %g, "
               "\"gqa_mode\": \"%s\", \"allocator\": \"%s\", \"codebook\": %s, \"evict_layers\": ",
            sp_cli_threads(&E->c->cfg), o->tokens, o->tol, o->max_probes, o->tf_decode ? "decode" : "prefill", b->window, b->pool_kernel, b->beta,
            b->theta_k, b->theta_v, b->gqa_mode == SP_GQA_KV_HEAD ? "kv_head" : "query_head",
            sp_kv_allocator_name(b->allocator), b->codebook ? "true" : "false");
    sp_cli_json_str(f, b->evict_layers);
    fprintf(f, ", \"codebook_layers\": ");
    sp_cli_json_str(f, b->codebook_layers);
    fprintf(f, ", \"targets\": [");
    for (int i = 0; i < o->n_targets; i++)
        fprintf(f, "%s%g", i ? ", " : "", o->targets[i]);
    fprintf(f, "], \"policies\": [");
    for (int i = 0; i < o->n_pol; i++) {
        fprintf(f, "%s", i ? ", " : "");
        sp_cli_json_str(f, o->pol_name[i]);
    }
    fprintf(f, "],\n    \"note\": \"x axis = true byte ratio measured after compressing the prompt (before the "
               "decoded tokens); the last prompt token is decoded over the compressed cache, so every scored "
               "prediction depends on it; metrics at the targets are interpolated linearly in the measured ratio "
               "between measured points (null: target outside the measured range)\"},\n");

    fprintf(f, "  \"fidelity\": [");
    for (int r = 0; r < E->n_fr; r++) {
        const fid_run *fr = &E->fr[r];
        fprintf(f, "%s\n    {\"text\": \"%s\", \"n_prompt\": %d, \"n_tokens\": %d, \"prefill_s\": %.2f, "
                   "\"score_passes_s\": %.2f, \"reference_s\": %.2f, \"fp16_bytes\": %" PRIu64 ",\n     \"full\": {\"true_ratio\": ",
                r ? "," : "", fr->text, fr->n_prompt, fr->n_tokens, fr->prefill_s, fr->scores_s, fr->ref_s,
                fr->fp16_bytes);
        jnum(f, fr->full_ratio);
        fprintf(f, ", \"ppl\": ");
        jnum(f, fr->full_ppl);
        fprintf(f, ", \"kl\": 0, \"top1\": 1},\n     \"policies\": [");
        for (int pi = 0; pi < fr->n_pol; pi++) {
            const fid_pol *fp = &fr->pol[pi];
            fprintf(f, "%s\n      {\"policy\": ", pi ? "," : "");
            sp_cli_json_str(f, o->pol_name[pi]);
            fprintf(f, ", \"base_policy\": \"%s\", \"knobs\": ", sp_kv_policy_name(fp->policy));
            sp_cli_json_str(f, o->pol_knobs[pi]);
            fprintf(f, ", \"points\": [");
            for (int j = 0; j < fp->n_pts; j++) {
                const fid_point *pt = &fp->pts[j];
                fprintf(f, "%s\n        {\"target\": %g, \"side\": %d, \"knob\": %.6g, \"hit\": %s, \"true_ratio\": ",
                        j ? "," : "", pt->target, pt->side, pt->knob, pt->hit ? "true" : "false");
                jnum(f, pt->ratio);
                fprintf(f, ", \"paper_r\": ");
                jnum(f, pt->paper_r);
                fprintf(f, ", \"bytes\": %" PRIu64 ", \"fp16_bytes\": %" PRIu64 ", \"kl\": ", pt->bytes, pt->fp16_bytes);
                jnum(f, pt->kl);
                fprintf(f, ", \"kl_max\": ");
                jnum(f, pt->kl_max);
                fprintf(f, ", \"top1\": ");
                jnum(f, pt->top1);
                fprintf(f, ", \"ppl\": ");
                jnum(f, pt->ppl);
                fprintf(f, ", \"compress_s\": %.3f, \"decode_s\": %.2f, \"probes\": [", pt->compress_s, pt->tf_s);
                for (int k = 0; k < fp->n_probes[j] && k < MAXPROBE; k++)
                    fprintf(f, "%s[%.6g, %.6g]", k ? ", " : "", fp->probes[j][k].knob, fp->probes[j][k].ratio);
                fprintf(f, "]}");
            }
            fprintf(f, "],\n       \"at_targets\": [");
            for (int ti = 0; ti < o->n_targets; ti++) {
                fprintf(f, "%s{\"target\": %g, \"kl\": ", ti ? ", " : "", o->targets[ti]);
                jnum(f, fp->ikl[ti]);
                fprintf(f, ", \"top1\": ");
                jnum(f, fp->itop1[ti]);
                fprintf(f, ", \"ppl\": ");
                jnum(f, fp->ippl[ti]);
                fprintf(f, "}");
            }
            fprintf(f, "]}");
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ],\n  \"frontier\": [");
    for (int pi = 0; pi < o->n_pol && E->n_fr; pi++) {
        fprintf(f, "%s\n    {\"policy\": ", pi ? "," : "");
        sp_cli_json_str(f, o->pol_name[pi]);
        fprintf(f, ", \"at_targets\": [");
        for (int ti = 0; ti < o->n_targets; ti++) {
            int n;
            fprintf(f, "%s{\"target\": %g, \"mean_kl\": ", ti ? ", " : "", o->targets[ti]);
            jnum(f, fid_mean(E, pi, ti, 0, &n));
            fprintf(f, ", \"mean_top1\": ");
            jnum(f, fid_mean(E, pi, ti, 1, NULL));
            fprintf(f, ", \"mean_ppl_over_full\": ");
            jnum(f, fid_mean(E, pi, ti, 2, NULL));
            fprintf(f, ", \"runs\": %d}", n);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ],\n  \"retrieval\": {\"lengths\": [");
    for (int i = 0; i < o->n_ret_lengths; i++)
        fprintf(f, "%s%d", i ? ", " : "", o->ret_lengths[i]);
    fprintf(f, "], \"depths\": [");
    for (int i = 0; i < o->n_depths; i++)
        fprintf(f, "%s%g", i ? ", " : "", o->depths[i]);
    fprintf(f, "], \"seeds_per_cell\": %d, \"digits\": %d, \"targets\": [", o->seeds, o->digits);
    for (int i = 0; i < o->n_ret_targets; i++)
        fprintf(f, "%s%g", i ? ", " : "", o->ret_targets[i]);
    fprintf(f, "],\n    \"prompt\": ");
    sp_cli_json_str(f, RET_INTRO);
    fprintf(f, ", \"question\": ");
    sp_cli_json_str(f, RET_QUESTION);
    fprintf(f, ", \"answer_prefix\": ");
    sp_cli_json_str(f, RET_PREFIX);
    fprintf(f, ",\n    \"accuracy\": [");
    for (int pi = -1, first = 1; pi < o->n_pol; pi++)
        for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
            if (!E->n_rc)
                break;
            fprintf(f, "%s\n      {\"policy\": ", first ? "" : ",");
            sp_cli_json_str(f, pi < 0 ? "full" : o->pol_name[pi]);
            fprintf(f, ", \"target\": ");
            first = 0;
            jnum(f, ti < 0 ? 1.0 : o->ret_targets[ti]);
            fprintf(f, ", \"overall\": ");
            jnum(f, ret_acc_all(E, pi, ti));
            fprintf(f, ", \"grid\": [");
            for (int li = 0; li < o->n_ret_lengths; li++) {
                fprintf(f, "%s[", li ? ", " : "");
                for (int di = 0; di < o->n_depths; di++) {
                    fprintf(f, "%s", di ? ", " : "");
                    jnum(f, ret_acc(E, pi, ti, li, di, NULL));
                }
                fprintf(f, "]");
            }
            fprintf(f, "]}");
        }
    fprintf(f, "\n    ],\n    \"cells\": [");
    for (int i = 0; i < E->n_rc; i++) {
        const ret_cell *c = &E->rc[i];
        fprintf(f, "%s\n      {\"length\": %d, \"n_prompt\": %d, \"depth\": %g, \"needle_token\": %d, \"seed\": %" PRIu64
                   ", \"passkey\": \"%s\", \"prefill_s\": %.2f, \"results\": [",
                i ? "," : "", c->length, c->n_prompt, c->depth, c->needle_token, c->seed, c->passkey, c->prefill_s);
        for (int k = 0; k < c->n_r; k++) {
            const ret_res *r = &c->r[k];
            fprintf(f, "%s\n        {\"policy\": ", k ? "," : "");
            sp_cli_json_str(f, r->pi < 0 ? "full" : o->pol_name[r->pi]);
            fprintf(f, ", \"target\": ");
            jnum(f, r->ti < 0 ? 1.0 : o->ret_targets[r->ti]);
            fprintf(f, ", \"knob\": %.6g, \"hit\": %s, \"true_ratio\": ", r->knob, r->hit ? "true" : "false");
            jnum(f, r->ratio);
            fprintf(f, ", \"answer\": ");
            sp_cli_json_str(f, r->answer);
            fprintf(f, ", \"correct\": %s}", r->correct ? "true" : "false");
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n    ]\n  }\n}\n");
}

static void print_summary(evalctx *E)
{
    eval_opts *o = E->o;
    if (E->n_fr) {
        printf("\nFidelity at equal TRUE byte ratio: mean over %d runs (texts x lengths) of the metric interpolated "
               "to each target\n(KL(full||policy) nats / top-1 agreement / ppl relative to full; '-' = target outside "
               "the measured range in some run)\n\n| policy |",
               E->n_fr);
        for (int ti = 0; ti < o->n_targets; ti++)
            printf(" %.2f |", o->targets[ti]);
        printf("\n|---|");
        for (int ti = 0; ti < o->n_targets; ti++)
            printf("---|");
        printf("\n");
        for (int pi = 0; pi < o->n_pol; pi++) {
            printf("| %s |", o->pol_name[pi]);
            for (int ti = 0; ti < o->n_targets; ti++) {
                double kl = fid_mean(E, pi, ti, 0, NULL), t1 = fid_mean(E, pi, ti, 1, NULL),
                       pp = fid_mean(E, pi, ti, 2, NULL);
                if (isfinite(kl))
                    printf(" %.4f / %.3f / %.3f |", kl, t1, pp);
                else
                    printf(" - |");
            }
            printf("\n");
        }
        printf("\nPer run, best policy (lowest interpolated KL) at each target:\n");
        for (int r = 0; r < E->n_fr; r++) {
            const fid_run *fr = &E->fr[r];
            printf("  %-3s N=%-5d full ppl %.3f:", fr->text, fr->n_prompt, fr->full_ppl);
            for (int ti = 0; ti < o->n_targets; ti++) {
                int best = -1;
                for (int pi = 0; pi < fr->n_pol; pi++)
                    if (isfinite(fr->pol[pi].ikl[ti]) && (best < 0 || fr->pol[pi].ikl[ti] < fr->pol[best].ikl[ti]))
                        best = pi;
                printf("  %.2f: %s", o->targets[ti], best < 0 ? "-" : o->pol_name[best]);
            }
            printf("\n");
        }
    }
    if (E->n_rc) {
        printf("\nRetrieval: passkey exact match over %d prompts (%d seeds per length x depth cell)\n\n| policy | "
               "target | accuracy | mean true ratio |\n|---|---|---|---|\n",
               E->n_rc, o->seeds);
        printf("| full | 1 | %.3f | 1 |\n", ret_acc_all(E, -1, -1));
        for (int pi = 0; pi < o->n_pol; pi++)
            for (int ti = 0; ti < o->n_ret_targets; ti++) {
                double s = 0;
                int n = 0;
                for (int i = 0; i < E->n_rc; i++)
                    for (int k = 0; k < E->rc[i].n_r; k++)
                        if (E->rc[i].r[k].pi == pi && E->rc[i].r[k].ti == ti) {
                            s += E->rc[i].r[k].ratio;
                            n++;
                        }
                printf("| %s | %.2f | %.3f | %.4f |\n", o->pol_name[pi], o->ret_targets[ti],
                       ret_acc_all(E, pi, ti), n ? s / n : NAN);
            }
    }
    fflush(stdout);
}

/* A label usable in a file name: anything but [A-Za-z0-9.-] becomes '_'. */
static const char *file_label(const char *name, char *buf, size_t cap)
{
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++) {
        char ch = name[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
                  ch == '-';
        buf[i] = ok ? ch : '_';
    }
    buf[i] = '\0';
    return buf;
}

/* Data files + a gnuplot script in dir, then gnuplot. Returns 0 or -1 (message printed). */
static int write_plots(evalctx *E, const char *dir)
{
    eval_opts *o = E->o;
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        sp_cli_error("eval: cannot create '%s': %s", dir, strerror(errno));
        return -1;
    }
    char path[4096];
    FILE *gp;
    snprintf(path, sizeof path, "%s/eval.gp", dir);
    if (!(gp = fopen(path, "w"))) {
        sp_cli_error("eval: cannot write '%s': %s", path, strerror(errno));
        return -1;
    }
    fprintf(gp, "# generated by spindle eval; run: gnuplot eval.gp (in this directory)\n"
                "set key outside right\nset grid\n");
    /* One data file per (run, policy): true_ratio kl top1 ppl_rel, sorted by ratio. */
    for (int r = 0; r < E->n_fr; r++) {
        const fid_run *fr = &E->fr[r];
        for (int pi = 0; pi < fr->n_pol; pi++) {
            const fid_pol *fp = &fr->pol[pi];
            char fl[128];
            snprintf(path, sizeof path, "%s/fid_%s_%d_%s.dat", dir, fr->text, fr->n_prompt,
                     file_label(o->pol_name[pi], fl, sizeof fl));
            FILE *d = fopen(path, "w");
            if (!d) {
                fclose(gp);
                sp_cli_error("eval: cannot write '%s': %s", path, strerror(errno));
                return -1;
            }
            fprintf(d, "# true_ratio kl top1 ppl/ppl_full knob\n");
            int idx[2 * MAXT];
            for (int j = 0; j < fp->n_pts; j++)
                idx[j] = j;
            for (int a = 0; a < fp->n_pts; a++)
                for (int b2 = a + 1; b2 < fp->n_pts; b2++)
                    if (fp->pts[idx[b2]].ratio < fp->pts[idx[a]].ratio) {
                        int t = idx[a];
                        idx[a] = idx[b2];
                        idx[b2] = t;
                    }
            for (int j = 0; j < fp->n_pts; j++) {
                const fid_point *pt = &fp->pts[idx[j]];
                if (j && pt->ratio == fp->pts[idx[j - 1]].ratio)
                    continue;
                fprintf(d, "%.6g %.6g %.6g %.6g %.6g\n", pt->ratio, pt->kl, pt->top1, pt->ppl / fr->full_ppl, pt->knob);
            }
            fclose(d);
        }
    }
    static const char *metric[3] = {"kl", "top1", "ppl"};
    static const char *ylabel[3] = {"mean KL(full || policy), nats", "top-1 agreement with full",
                                    "perplexity / full perplexity"};
    for (int m = 0; m < 3 && E->n_fr; m++) {
        int cols = E->n_fr < 3 ? E->n_fr : 3, rows = (E->n_fr + cols - 1) / cols;
        fprintf(gp, "set terminal pngcairo noenhanced size %d,%d font ',10'\nset output 'quality_%s.png'\n", 560 * cols,
                420 * rows + 40, metric[m]);
        fprintf(gp, "set multiplot layout %d,%d title 'spindle eval: %s vs TRUE byte ratio (measured points)'\n", rows,
                cols, metric[m]);
        fprintf(gp, "set xlabel 'true byte ratio (bytes held / fp16 GQA cache)'\nset ylabel '%s'\n%s\n", ylabel[m],
                m == 0 ? "set logscale y" : "unset logscale y");
        fprintf(gp, "set xrange [0:*]\n");
        for (int r = 0; r < E->n_fr; r++) {
            const fid_run *fr = &E->fr[r];
            fprintf(gp, "set title '%s, N = %d, %d tokens'\nplot ", fr->text, fr->n_prompt, fr->n_tokens);
            for (int pi = 0; pi < fr->n_pol; pi++) {
                char fl[128];
                fprintf(gp, "%s'fid_%s_%d_%s.dat' using 1:%d with linespoints lw 2 title '%s'", pi ? ", " : "",
                        fr->text, fr->n_prompt, file_label(o->pol_name[pi], fl, sizeof fl), m + 2, o->pol_name[pi]);
            }
            fprintf(gp, "\n");
        }
        fprintf(gp, "unset multiplot\nunset logscale y\n");
    }
    /* Retrieval heatmaps: one panel per (policy, target), length x depth. */
    if (E->n_rc) {
        int panels = 1 + o->n_pol * o->n_ret_targets;
        int cols = panels < 4 ? panels : 4, rows = (panels + cols - 1) / cols;
        for (int pi = -1; pi < o->n_pol; pi++)
            for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
                char fl[128];
                snprintf(path, sizeof path, "%s/ret_%s_%d.dat", dir,
                         pi < 0 ? "full" : file_label(o->pol_name[pi], fl, sizeof fl),
                         ti < 0 ? 100 : (int)lround(100 * o->ret_targets[ti]));
                FILE *d = fopen(path, "w");
                if (!d) {
                    fclose(gp);
                    sp_cli_error("eval: cannot write '%s': %s", path, strerror(errno));
                    return -1;
                }
                fprintf(d, "# length_index depth_index accuracy\n");
                for (int li = 0; li < o->n_ret_lengths; li++) {
                    for (int di = 0; di < o->n_depths; di++)
                        fprintf(d, "%d %d %.4f\n", li, di, ret_acc(E, pi, ti, li, di, NULL));
                    fprintf(d, "\n");
                }
                fclose(d);
            }
        fprintf(gp, "set terminal pngcairo noenhanced size %d,%d font ',10'\nset output 'retrieval.png'\n", 420 * cols,
                360 * rows + 40);
        fprintf(gp, "set multiplot layout %d,%d title 'spindle eval: passkey accuracy (%d seeds per cell)'\n", rows, cols,
                o->seeds);
        fprintf(gp, "unset grid\nset cbrange [0:1]\nset palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')\n"
                    "set xlabel 'context length'\nset ylabel 'depth %%'\nunset key\n");
        fprintf(gp, "set xtics (");
        for (int li = 0; li < o->n_ret_lengths; li++)
            fprintf(gp, "%s'%d' %d", li ? ", " : "", o->ret_lengths[li], li);
        fprintf(gp, ")\nset ytics (");
        for (int di = 0; di < o->n_depths; di++)
            fprintf(gp, "%s'%.0f' %d", di ? ", " : "", 100 * o->depths[di], di);
        fprintf(gp, ")\nset xrange [-0.5:%g]\nset yrange [-0.5:%g]\n", o->n_ret_lengths - 0.5, o->n_depths - 0.5);
        for (int pi = -1; pi < o->n_pol; pi++)
            for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
                char fl[128];
                const char *pn = pi < 0 ? "full" : o->pol_name[pi];
                int tp = ti < 0 ? 100 : (int)lround(100 * o->ret_targets[ti]);
                fprintf(gp, "set title '%s at %.2f true bytes (acc %.2f)'\n", pn, tp / 100.0, ret_acc_all(E, pi, ti));
                fprintf(gp, "plot 'ret_%s_%d.dat' using 1:2:3 with image, '' using 1:2:(sprintf('%%.2f',$3)) with labels\n",
                        file_label(pn, fl, sizeof fl), tp);
            }
        fprintf(gp, "unset multiplot\n");
    }
    fclose(gp);
    if (access("/usr/bin/gnuplot", X_OK) != 0 && system("command -v gnuplot >/dev/null 2>&1") != 0) {
        sp_cli_error("eval: gnuplot not found (Debian package gnuplot-nox); data and script are in %s", dir);
        return -1;
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "cd '%s' && gnuplot eval.gp", dir);
    if (system(cmd) != 0) {
        sp_cli_error("eval: gnuplot failed on %s/eval.gp", dir);
        return -1;
    }
    return 0;
}

int sp_cmd_eval(int argc, char **argv)
{
    sp_cli_common c;
    sp_cli_common_init(&c);
    eval_opts o = {
        .fid = true,
        .ret = true,
        .texts = {"pg", "kjv"},
        .n_texts = 2,
        .lengths = {2048, 4096, 8000},
        .n_lengths = 3,
        .tokens = 256,
        .pol = {SP_POLICY_STREAMING, SP_POLICY_H2O, SP_POLICY_SNAPKV, SP_POLICY_PYRAMIDKV, SP_POLICY_PYRAMIDINFER,
                SP_POLICY_SPINDLE},
        .n_pol = 6,
        .targets = {0.1, 0.2, 0.3, 0.5},
        .n_targets = 4,
        .ret_lengths = {1000, 2000, 4000, 8000},
        .n_ret_lengths = 4,
        .depths = {0, 0.25, 0.5, 0.75, 1.0},
        .n_depths = 5,
        .seeds = 2,
        .ret_targets = {0.2},
        .n_ret_targets = 1,
        .digits = 5,
        .answer_tokens = 10,
        .tol = 0.01,
        .max_probes = 8,
    };
    int r = parse_args(argc, argv, &c, &o);
    if (r)
        return r > 0 ? SP_EXIT_OK : SP_EXIT_USAGE;
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }
    o.seed = (uint64_t)c.cfg.runtime.seed;
    for (int i = 0; i < o.n_pol; i++)   /* the default list has no labels yet */
        if (!o.pol_name[i][0])
            snprintf(o.pol_name[i], sizeof o.pol_name[0], "%s", sp_kv_policy_name(o.pol[i]));
    char hay_dir[4096];
    if (!o.haystack) {
        const char *sh = getenv("SPINDLE_SHARED");
        snprintf(hay_dir, sizeof hay_dir, "%s/data/haystack/pg_essays", sh ? sh : "/work/shared");
        if (access(hay_dir, R_OK) != 0)
            snprintf(hay_dir, sizeof hay_dir, "/work/shared/data/haystack/pg_essays");
        o.haystack = hay_dir;
    }

    evalctx E = {.o = &o, .c = &c, .t0 = sp_now_s()};
    int rc = SP_EXIT_FAIL;
    char *hay = NULL;
    size_t hay_len = 0;
    if (!(E.m = sp_model_load(c.cfg.model.path))) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    E.hp = sp_model_hparams(E.m);
    if (sp_config_validate(&c.cfg, E.hp->n_layer) < 0) {
        sp_cli_error("%s", sp_last_error());
        rc = SP_EXIT_USAGE;
        goto out;
    }
    sp_kv_opts_from_config(&E.base, &c.cfg);
    if (E.base.budget_tokens) {
        sp_notice("eval: compression.budget_tokens ignored: the sweep sets the ratio knob");
        E.base.budget_tokens = 0;
    }
    if (!(E.tok = sp_tokenizer_from_gguf(sp_model_gguf(E.m)))) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    E.n_vocab = E.hp->n_vocab;
    int n_ctx = 0;
    for (int i = 0; o.fid && i < o.n_lengths; i++)
        if (o.lengths[i] + o.tokens + 1 > n_ctx)
            n_ctx = o.lengths[i] + o.tokens + 1;
    for (int i = 0; o.ret && i < o.n_ret_lengths; i++)
        if (o.ret_lengths[i] + o.answer_tokens + 16 > n_ctx)
            n_ctx = o.ret_lengths[i] + o.answer_tokens + 16;
    if (c.cfg.model.n_ctx > 0 && c.cfg.model.n_ctx < n_ctx) {
        sp_cli_error("eval: -c %" PRId64 " is smaller than the %d tokens the lengths need", c.cfg.model.n_ctx, n_ctx);
        rc = SP_EXIT_USAGE;
        goto out;
    }
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = sp_cli_threads(&c.cfg);
    if (sp_cli_backend(&c.cfg, &cp.backend) < 0) {
        rc = SP_EXIT_USAGE;
        goto out;
    }
    cp.keep_prefill_state = true;
    sp_kv_opts first = opts_for(&E, SP_POLICY_SNAPKV, 0.5);
    cp.kv_opts = &first;
    if (!(E.ctx = sp_ctx_new(E.m, &cp))) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    E.tcap = 1 << 16;
    E.tbuf = malloc(E.tcap * sizeof *E.tbuf);
    E.logits = malloc((size_t)E.n_vocab * sizeof *E.logits);
    E.ref = malloc((size_t)o.tokens * (size_t)E.n_vocab * sizeof *E.ref);
    E.test = malloc((size_t)o.tokens * (size_t)E.n_vocab * sizeof *E.test);
    E.lp_ref = malloc((size_t)E.n_vocab * sizeof *E.lp_ref);
    E.lp_test = malloc((size_t)E.n_vocab * sizeof *E.lp_test);
    if (!E.tbuf || !E.logits || !E.ref || !E.test || !E.lp_ref || !E.lp_test) {
        sp_cli_error("eval: out of memory");
        goto out;
    }
    progress(&E, "model %s, %d threads, context %d, policies %d, fidelity %s, retrieval %s", c.cfg.model.path,
             cp.n_threads, n_ctx, o.n_pol, o.fid ? "on" : "off", o.ret ? "on" : "off");
    if (o.fid && run_fidelity(&E) < 0) {
        sp_cli_error("eval: fidelity: %s", sp_last_error());
        goto out;
    }
    if (o.ret) {
        if (!(hay = sp_eval_read_dir(o.haystack, &hay_len))) {
            sp_cli_error("eval: haystack: %s", sp_last_error());
            goto out;
        }
        if (run_retrieval(&E, hay, hay_len) < 0) {
            sp_cli_error("eval: retrieval: %s", sp_last_error());
            goto out;
        }
    }
    double wall = sp_now_s() - E.t0;
    print_summary(&E);
    rc = SP_EXIT_OK;
    if (o.json) {
        FILE *f = fopen(o.json, "w");
        if (!f) {
            sp_cli_error("eval: cannot write '%s': %s", o.json, strerror(errno));
            rc = SP_EXIT_FAIL;
        } else {
            write_json(&E, f, wall, true);
            if (fclose(f) != 0) {
                sp_cli_error("eval: writing '%s' failed", o.json);
                rc = SP_EXIT_FAIL;
            } else {
                progress(&E, "wrote %s", o.json);
            }
        }
    }
    if (o.out && write_plots(&E, o.out) < 0)
        rc = SP_EXIT_FAIL;
    else if (o.out)
        progress(&E, "plots in %s (quality_kl.png, quality_top1.png, quality_ppl.png, retrieval.png)", o.out);
    progress(&E, "done in %.0f s", sp_now_s() - E.t0);
out:
    free(hay);
    free(E.fr);
    free(E.rc);
    free(E.tbuf);
    free(E.logits);
    free(E.ref);
    free(E.test);
    free(E.lp_ref);
    free(E.lp_test);
    sp_ctx_free(E.ctx);
    sp_tokenizer_free(E.tok);
    sp_model_free(E.m);
    return rc;
}
