/* cmd_eval.c - `spindle eval`: options and reporting. The drivers that run the model are in the
 * library (eval.h: sp_eval_run_fidelity, sp_eval_run_retrieval); this file parses the options,
 * opens the session, and writes what it measured: the frontier table on stdout, JSON with every
 * measured point and probe (rewritten after each run/cell while it goes), PNG plots through gnuplot.
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

#include "cli.h"
#include "eval.h"
#include "kv_policy.h"
#include "model.h"
#include "sp_error.h"
#include "sp_time.h"

#define MAXL SP_EVAL_MAXL
#define MAXP SP_EVAL_MAXP
#define MAXT SP_EVAL_MAXT
#define MAXD SP_EVAL_MAXD
#define MAXPROBE SP_EVAL_MAXPROBE

static void usage(FILE *out)
{
    fputs("usage: spindle eval [options]\n"
          "  --fidelity / --retrieval   run only that part (default: both)\n"
          "  --quick                    small run (a few minutes): see below\n"
          "  --texts LIST               fidelity texts: pg (haystack essays), kjv (Debian bible-kjv-text)\n"
          "                             (default pg,kjv)\n"
          "  --lengths LIST             fidelity prompt lengths (default 2048,4096,8000)\n"
          "  --tokens N                 teacher-forced tokens per point (default 256)\n"
          "  --short N                  short-continuation metric over the first N of them (default 32)\n"
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
          "  --tasks LIST               retrieval tasks: passkey, multikey, multivalue, vartrack (RULER style;\n"
          "                             default passkey); each runs over the --ret-* / --depths / --seeds grid\n"
          "  --keys N, --values N, --hops N  needles of multikey (keys), multivalue (values), vartrack\n"
          "                             (chain length) (default 4 each, at most 16)\n"
          "  --task-tokens N            greedy answer length limit of the tasks (default 40)\n"
          "  --template TASK.FIELD=TEXT a task's text (FIELD: intro, needle, question, prefix; repeatable);\n"
          "                             placeholders {key} {value} {n}, e.g.\n"
          "                             --template 'multikey.needle=The code of {key} is {value}.'\n"
          "  --haystack DIR             essays directory of every retrieval task (default\n"
          "                             data/haystack/pg_essays under $SPINDLE_SHARED, else ../shared of the\n"
          "                             checkout the binary was built in, else the installed data directory;\n"
          "                             the choice is printed)\n"
          "  --seed S                   base seed of the passkeys (default [runtime] seed)\n"
          "  --json FILE                write every point as JSON\n"
          "  --out DIR                  write PNG plots (gnuplot) and their data files there\n"
          "  -m, -t, -c, --config FILE, --set compression.KEY=VALUE (other knobs: window, theta_k, ...)\n"
          "  numerics: exact (fp32 attention in the reference and the compressed runs alike) unless\n"
          "                             [runtime] numerics is set; ggml rounding in the plain cache alone\n"
          "                             is a KL floor of ~0.003 for every policy\n"
          "--quick: --texts pg,kjv --lengths 1024 --tokens 64 --targets 0.2,0.5 --ret-lengths 1000,2000\n"
          "         --depths 0,50,100 --seeds 1 (options given after --quick still apply)\n",
          out);
}

typedef sp_eval_opts eval_opts;

/* The command's state: the options, where to write, the session with the results. */
typedef struct evalcli {
    eval_opts *o;
    const char *json, *out;
    sp_cli_common *c;
    sp_eval_session S;
    double t0;
} evalcli;

static void progress(evalcli *E, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress(evalcli *E, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "eval [%6.0fs] ", sp_now_s() - E->t0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The drivers' progress lines, with the command's time stamp. */
static void log_line(void *user, const char *line)
{
    progress(user, "%s", line);
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
    sp_kv_opts def;
    sp_kv_opts_defaults(&def);
    if (test.window != def.window || test.policy != def.policy || test.ratio != def.ratio ||
        test.budget_tokens != def.budget_tokens || test.target != def.target) {
        sp_cli_error("--variant '%s': window, policy, ratio, target and budget_tokens cannot vary within one run "
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

static int parse_tasks(const char *list, eval_opts *o)
{
    char buf[128];
    snprintf(buf, sizeof buf, "%s", list);
    o->tasks = 0;
    for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
        sp_task_kind k;
        if (sp_task_from_name(s, &k) < 0) {
            sp_cli_error("--tasks: %s", sp_last_error());
            return -1;
        }
        o->tasks |= 1u << k;
    }
    if (!o->tasks)
        sp_cli_error("--tasks: empty list");
    return o->tasks ? 0 : -1;
}

/* --template TASK.FIELD=TEXT: the text is borrowed from argv; checked for its placeholders now. */
static int parse_template(const char *v, eval_opts *o)
{
    const char *dot = strchr(v, '.'), *eq = strchr(v, '=');
    char task[16], field[16];
    if (!dot || !eq || dot > eq || (size_t)(dot - v) >= sizeof task || (size_t)(eq - dot - 1) >= sizeof field) {
        sp_cli_error("--template: '%s' is not TASK.FIELD=TEXT", v);
        return -1;
    }
    snprintf(task, sizeof task, "%.*s", (int)(dot - v), v);
    snprintf(field, sizeof field, "%.*s", (int)(eq - dot - 1), dot + 1);
    sp_task_kind k;
    if (sp_task_from_name(task, &k) < 0 || (k == SP_TASK_PASSKEY && sp_error(EINVAL, "the passkey texts are fixed "
                                                                                "(the retrieval driver's)") < 0) ||
        sp_task_templates_set(&o->tmpl[k], field, eq + 1) < 0 || sp_task_templates_check(k, &o->tmpl[k]) < 0) {
        sp_cli_error("--template '%s': %s", v, sp_last_error());
        return -1;
    }
    return 0;
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

static int parse_args(int argc, char **argv, sp_cli_common *c, eval_opts *o, const char **json, const char **out)
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
        } else if (!strcmp(a, "--short")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 4096, &x))
                return -1;
            o->short_tokens = (int)x;
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
        } else if (!strcmp(a, "--tasks")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || parse_tasks(v, o) < 0)
                return -1;
        } else if (!strcmp(a, "--keys") || !strcmp(a, "--values") || !strcmp(a, "--hops")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, SP_TASK_MAXN, &x))
                return -1;
            o->task_needles[a[2] == 'k' ? SP_TASK_MULTIKEY : a[2] == 'v' ? SP_TASK_MULTIVALUE : SP_TASK_VARTRACK] = (int)x;
        } else if (!strcmp(a, "--task-tokens")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 256, &x))
                return -1;
            o->task_tokens = (int)x;
        } else if (!strcmp(a, "--template")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || parse_template(v, o) < 0)
                return -1;
        } else if (!strcmp(a, "--haystack")) {
            if (!(o->haystack = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "--json")) {
            if (!(*json = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "--out")) {
            if (!(*out = sp_cli_value(argc, argv, &i)))
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

static void write_json(evalcli *E, FILE *f, double wall_s, bool complete);

/* With --json: rewrite the file after each finished fidelity run / retrieval cell ("complete":
 * false), so a long run that is stopped keeps what it measured. Write to a temporary name, then
 * rename. Failures are reported once at the end by the final write. */
static void checkpoint(void *user)
{
    evalcli *E = user;
    if (!E->json)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.partial", E->json);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    write_json(E, f, sp_now_s() - E->t0, false);
    if (fclose(f) == 0)
        rename(tmp, E->json);
    else
        remove(tmp);
}

/* ---- output ---- */

static void jnum(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.6g", v);
    else
        fputs("null", f);
}

/* The "tasks" block: the configuration and texts of each task run, per (task, policy, target) the
 * accuracy / partial score / agreement with the full cache, and every cell with every answer. */
static void write_json_tasks(evalcli *E, FILE *f)
{
    eval_opts *o = E->o;
    fprintf(f, "  \"tasks\": {\"run\": [");
    for (int k = SP_TASK_MULTIKEY, first = 1; k < SP_TASK_COUNT; k++) {
        if (!(o->tasks & (1u << k)))
            continue;
        fprintf(f, "%s\n    {\"task\": \"%s\", \"needles\": %d, \"digits\": %d, \"answer_tokens\": %d, \"intro\": ",
                first ? "" : ",", sp_task_name((sp_task_kind)k), o->task_needles[k], o->digits, o->task_tokens);
        first = 0;
        sp_cli_json_str(f, o->tmpl[k].intro);
        fprintf(f, ", \"needle\": ");
        sp_cli_json_str(f, o->tmpl[k].needle);
        fprintf(f, ", \"question\": ");
        sp_cli_json_str(f, o->tmpl[k].question);
        fprintf(f, ", \"prefix\": ");
        sp_cli_json_str(f, o->tmpl[k].prefix);
        fprintf(f, ",\n     \"summary\": [");
        for (int pi = -1, f1 = 1; pi < o->n_pol; pi++)
            for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
                int n;
                fprintf(f, "%s\n       {\"policy\": ", f1 ? "" : ",");
                f1 = 0;
                sp_cli_json_str(f, pi < 0 ? "full" : o->pol_name[pi]);
                fprintf(f, ", \"target\": ");
                jnum(f, ti < 0 ? 1.0 : o->ret_targets[ti]);
                fprintf(f, ", \"accuracy\": ");
                jnum(f, sp_eval_task_mean(&E->S, (sp_task_kind)k, pi, ti, SP_EVAL_TASK_ACC, &n));
                fprintf(f, ", \"score\": ");
                jnum(f, sp_eval_task_mean(&E->S, (sp_task_kind)k, pi, ti, SP_EVAL_TASK_SCORE, NULL));
                fprintf(f, ", \"same_text_as_full\": ");
                jnum(f, sp_eval_task_mean(&E->S, (sp_task_kind)k, pi, ti, SP_EVAL_TASK_SAME_TEXT, NULL));
                fprintf(f, ", \"same_correct_as_full\": ");
                jnum(f, sp_eval_task_mean(&E->S, (sp_task_kind)k, pi, ti, SP_EVAL_TASK_SAME_CORRECT, NULL));
                fprintf(f, ", \"prompts\": %d}", n);
            }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ],\n  \"cells\": [");
    for (int i = 0; i < E->S.n_tc; i++) {
        const sp_eval_task_cell *c = &E->S.tc[i];
        fprintf(f, "%s\n    {\"task\": \"%s\", \"length\": %d, \"n_prompt\": %d, \"depth\": %g, \"needle_token\": %d, "
                   "\"seed\": %" PRIu64 ", \"query\": ",
                i ? "," : "", sp_task_name(c->task), c->length, c->n_prompt, c->depth, c->needle_token, c->seed);
        sp_cli_json_str(f, c->query);
        fprintf(f, ", \"answers\": [");
        for (int a = 0; a < c->n_answers; a++) {
            fprintf(f, "%s", a ? ", " : "");
            sp_cli_json_str(f, c->answers[a]);
        }
        fprintf(f, "], \"prefill_s\": %.2f, \"results\": [", c->prefill_s);
        for (int k = 0; k < c->n_r; k++) {
            const sp_eval_task_res *r = &c->r[k];
            fprintf(f, "%s\n      {\"policy\": ", k ? "," : "");
            sp_cli_json_str(f, r->pi < 0 ? "full" : o->pol_name[r->pi]);
            fprintf(f, ", \"target\": ");
            jnum(f, r->ti < 0 ? 1.0 : o->ret_targets[r->ti]);
            fprintf(f, ", \"knob\": %.6g, \"hit\": %s, \"true_ratio\": ", r->knob, r->hit ? "true" : "false");
            jnum(f, r->ratio);
            fprintf(f, ", \"answer\": ");
            sp_cli_json_str(f, r->answer);
            fprintf(f, ", \"found\": %d, \"correct\": %s, \"same_text_as_full\": %s, \"same_correct_as_full\": %s}",
                    r->found, r->correct ? "true" : "false", r->same_text ? "true" : "false",
                    r->same_correct ? "true" : "false");
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ]}\n");
}

static void write_json(evalcli *E, FILE *f, double wall_s, bool complete)
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
    const sp_hparams *hp = E->S.hp;
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
    const sp_kv_opts *b = &E->S.base;
    fprintf(f, "  \"config\": {\"threads\": %d, \"tokens\": %d, \"tol\": %g, \"max_probes\": %d, \"knob\": \"ratio\", "
               "\"short_tokens\": %d, \"numerics\": \"%s\", \"teacher_forcing\": \"%s\", \"window\": %" PRId64 ", \"pool_kernel\": %" PRId64 ", \"beta\": %g, \"theta_k\": %g, \"theta_v\": %g, "
               "\"gqa_mode\": \"%s\", \"allocator\": \"%s\", \"codebook\": %s, \"evict_layers\": ",
            sp_cli_threads(&E->c->cfg), o->tokens, o->tol, o->max_probes,
            o->short_tokens < o->tokens ? o->short_tokens : o->tokens,
            o->numerics == SP_NUMERICS_EXACT ? "exact" : "ggml", o->tf_decode ? "decode" : "prefill", b->window, b->pool_kernel, b->beta,
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
               "decoded tokens; *_at_span_bytes: interpolated in the ratio at the end of the scored span instead, "
               "decode tokens counted); the last prompt token is decoded over the compressed cache, so every scored "
               "prediction depends on it; metrics at the targets are interpolated linearly in the measured ratio "
               "between measured points (null: target outside the measured range)\"},\n");

    fprintf(f, "  \"fidelity\": [");
    for (int r = 0; r < E->S.n_fr; r++) {
        const sp_eval_fid_run *fr = &E->S.fr[r];
        fprintf(f, "%s\n    {\"text\": \"%s\", \"n_prompt\": %d, \"n_tokens\": %d, \"prefill_s\": %.2f, "
                   "\"score_passes_s\": %.2f, \"reference_s\": %.2f, \"fp16_bytes\": %" PRIu64 ",\n     \"full\": {\"true_ratio\": ",
                r ? "," : "", fr->text, fr->n_prompt, fr->n_tokens, fr->prefill_s, fr->scores_s, fr->ref_s,
                fr->fp16_bytes);
        jnum(f, fr->full_ratio);
        fprintf(f, ", \"ppl\": ");
        jnum(f, fr->full_ppl);
        fprintf(f, ", \"kl\": 0, \"top1\": 1},\n     \"policies\": [");
        for (int pi = 0; pi < fr->n_pol; pi++) {
            const sp_eval_fid_pol *fp = &fr->pol[pi];
            fprintf(f, "%s\n      {\"policy\": ", pi ? "," : "");
            sp_cli_json_str(f, o->pol_name[pi]);
            fprintf(f, ", \"base_policy\": \"%s\", \"knobs\": ", sp_kv_policy_name(fp->policy));
            sp_cli_json_str(f, o->pol_knobs[pi]);
            fprintf(f, ", \"points\": [");
            for (int j = 0; j < fp->n_pts; j++) {
                const sp_eval_fid_point *pt = &fp->pts[j];
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
                fprintf(f, ", \"kl_short\": ");
                jnum(f, pt->kl_short);
                fprintf(f, ", \"top1_short\": ");
                jnum(f, pt->top1_short);
                fprintf(f, ", \"span_true_ratio\": ");
                jnum(f, pt->span_ratio);
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
                fprintf(f, ", \"kl_short\": ");
                jnum(f, fp->ikl_short[ti]);
                fprintf(f, ", \"top1_short\": ");
                jnum(f, fp->itop1_short[ti]);
                fprintf(f, ", \"kl_at_span_bytes\": ");
                jnum(f, fp->ikl_span[ti]);
                fprintf(f, ", \"top1_at_span_bytes\": ");
                jnum(f, fp->itop1_span[ti]);
                fprintf(f, "}");
            }
            fprintf(f, "]}");
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ],\n  \"frontier\": [");
    for (int pi = 0; pi < o->n_pol && E->S.n_fr; pi++) {
        fprintf(f, "%s\n    {\"policy\": ", pi ? "," : "");
        sp_cli_json_str(f, o->pol_name[pi]);
        fprintf(f, ", \"at_targets\": [");
        for (int ti = 0; ti < o->n_targets; ti++) {
            int n;
            fprintf(f, "%s{\"target\": %g, \"mean_kl\": ", ti ? ", " : "", o->targets[ti]);
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, 0, &n));
            fprintf(f, ", \"mean_top1\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, 1, NULL));
            fprintf(f, ", \"mean_ppl_over_full\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, 2, NULL));
            fprintf(f, ", \"mean_kl_short\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, SP_EVAL_KL_SHORT, NULL));
            fprintf(f, ", \"mean_top1_short\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, SP_EVAL_TOP1_SHORT, NULL));
            fprintf(f, ", \"mean_kl_at_span_bytes\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, SP_EVAL_KL_SPAN, NULL));
            fprintf(f, ", \"mean_top1_at_span_bytes\": ");
            jnum(f, sp_eval_fid_mean(&E->S, pi, ti, SP_EVAL_TOP1_SPAN, NULL));
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
    sp_cli_json_str(f, sp_eval_ret_intro);
    fprintf(f, ", \"question\": ");
    sp_cli_json_str(f, sp_eval_ret_question);
    fprintf(f, ", \"answer_prefix\": ");
    sp_cli_json_str(f, sp_eval_ret_prefix);
    fprintf(f, ",\n    \"accuracy\": [");
    for (int pi = -1, first = 1; pi < o->n_pol; pi++)
        for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
            if (!E->S.n_rc)
                break;
            fprintf(f, "%s\n      {\"policy\": ", first ? "" : ",");
            sp_cli_json_str(f, pi < 0 ? "full" : o->pol_name[pi]);
            fprintf(f, ", \"target\": ");
            first = 0;
            jnum(f, ti < 0 ? 1.0 : o->ret_targets[ti]);
            fprintf(f, ", \"overall\": ");
            jnum(f, sp_eval_ret_acc_all(&E->S, pi, ti));
            fprintf(f, ", \"grid\": [");
            for (int li = 0; li < o->n_ret_lengths; li++) {
                fprintf(f, "%s[", li ? ", " : "");
                for (int di = 0; di < o->n_depths; di++) {
                    fprintf(f, "%s", di ? ", " : "");
                    jnum(f, sp_eval_ret_acc(&E->S, pi, ti, li, di, NULL));
                }
                fprintf(f, "]");
            }
            fprintf(f, "]}");
        }
    fprintf(f, "\n    ],\n    \"cells\": [");
    for (int i = 0; i < E->S.n_rc; i++) {
        const sp_eval_ret_cell *c = &E->S.rc[i];
        fprintf(f, "%s\n      {\"length\": %d, \"n_prompt\": %d, \"depth\": %g, \"needle_token\": %d, \"seed\": %" PRIu64
                   ", \"passkey\": \"%s\", \"prefill_s\": %.2f, \"results\": [",
                i ? "," : "", c->length, c->n_prompt, c->depth, c->needle_token, c->seed, c->passkey, c->prefill_s);
        for (int k = 0; k < c->n_r; k++) {
            const sp_eval_ret_res *r = &c->r[k];
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
    fprintf(f, "\n    ]\n  },\n");
    write_json_tasks(E, f);
    fprintf(f, "}\n");
}

/* One "| policy | target... |" table of mean KL / top-1 (metrics kl_m, t1_m of sp_eval_fid_mean). */
static void print_kl_top1_table(evalcli *E, int kl_m, int t1_m)
{
    eval_opts *o = E->o;
    for (int ti = 0; ti < o->n_targets; ti++)
        printf(" %.2f |", o->targets[ti]);
    printf("\n|---|");
    for (int ti = 0; ti < o->n_targets; ti++)
        printf("---|");
    printf("\n");
    for (int pi = 0; pi < o->n_pol; pi++) {
        printf("| %s |", o->pol_name[pi]);
        for (int ti = 0; ti < o->n_targets; ti++) {
            double kl = sp_eval_fid_mean(&E->S, pi, ti, kl_m, NULL),
                   t1 = sp_eval_fid_mean(&E->S, pi, ti, t1_m, NULL);
            if (isfinite(kl))
                printf(" %.4f / %.3f |", kl, t1);
            else
                printf(" - |");
        }
        printf("\n");
    }
}

static void print_summary(evalcli *E)
{
    eval_opts *o = E->o;
    if (E->S.n_fr) {
        printf("\nFidelity at equal TRUE byte ratio: mean over %d runs (texts x lengths) of the metric interpolated "
               "to each target\n(KL(full||policy) nats / top-1 agreement / ppl relative to full; '-' = target outside "
               "the measured range in some run)\n\n| policy |",
               E->S.n_fr);
        for (int ti = 0; ti < o->n_targets; ti++)
            printf(" %.2f |", o->targets[ti]);
        printf("\n|---|");
        for (int ti = 0; ti < o->n_targets; ti++)
            printf("---|");
        printf("\n");
        for (int pi = 0; pi < o->n_pol; pi++) {
            printf("| %s |", o->pol_name[pi]);
            for (int ti = 0; ti < o->n_targets; ti++) {
                double kl = sp_eval_fid_mean(&E->S, pi, ti, 0, NULL), t1 = sp_eval_fid_mean(&E->S, pi, ti, 1, NULL),
                       pp = sp_eval_fid_mean(&E->S, pi, ti, 2, NULL);
                if (isfinite(kl))
                    printf(" %.4f / %.3f / %.3f |", kl, t1, pp);
                else
                    printf(" - |");
            }
            printf("\n");
        }
        printf("\nAt equal SPAN bytes: the same KL / top-1, interpolated in the true byte ratio at the end of the "
               "scored span (decode tokens counted; '-' = outside the measured span ratios)\n\n| policy |");
        print_kl_top1_table(E, SP_EVAL_KL_SPAN, SP_EVAL_TOP1_SPAN);
        printf("\nShort continuation: the first %d teacher-forced tokens (KL / top-1, same interpolation)\n\n| policy |",
               o->short_tokens < o->tokens ? o->short_tokens : o->tokens);
        print_kl_top1_table(E, SP_EVAL_KL_SHORT, SP_EVAL_TOP1_SHORT);
        printf("\nPer run, best policy (lowest interpolated KL) at each target:\n");
        for (int r = 0; r < E->S.n_fr; r++) {
            const sp_eval_fid_run *fr = &E->S.fr[r];
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
    if (E->S.n_rc) {
        printf("\nRetrieval: passkey exact match over %d prompts (%d seeds per length x depth cell)\n\n| policy | "
               "target | accuracy | mean true ratio |\n|---|---|---|---|\n",
               E->S.n_rc, o->seeds);
        printf("| full | 1 | %.3f | 1 |\n", sp_eval_ret_acc_all(&E->S, -1, -1));
        for (int pi = 0; pi < o->n_pol; pi++)
            for (int ti = 0; ti < o->n_ret_targets; ti++) {
                double s = 0;
                int n = 0;
                for (int i = 0; i < E->S.n_rc; i++)
                    for (int k = 0; k < E->S.rc[i].n_r; k++)
                        if (E->S.rc[i].r[k].pi == pi && E->S.rc[i].r[k].ti == ti) {
                            s += E->S.rc[i].r[k].ratio;
                            n++;
                        }
                printf("| %s | %.2f | %.3f | %.4f |\n", o->pol_name[pi], o->ret_targets[ti],
                       sp_eval_ret_acc_all(&E->S, pi, ti), n ? s / n : NAN);
            }
    }
    if (E->S.n_tc) {
        printf("\nRetrieval tasks (RULER style) over %d prompts: accuracy (every answer found) / partial score (share "
               "of answers found) / agreement with full (same continuation, same correctness)\n\n| task | policy | "
               "target | accuracy | score | same text | same correct | prompts |\n|---|---|---|---|---|---|---|---|\n",
               E->S.n_tc);
        for (int k = SP_TASK_MULTIKEY; k < SP_TASK_COUNT; k++) {
            if (!(o->tasks & (1u << k)))
                continue;
            for (int pi = -1; pi < o->n_pol; pi++)
                for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
                    int n;
                    sp_task_kind tk = (sp_task_kind)k;
                    double acc = sp_eval_task_mean(&E->S, tk, pi, ti, SP_EVAL_TASK_ACC, &n);
                    printf("| %s | %s | %.2f | %.3f | %.3f | %.3f | %.3f | %d |\n", sp_task_name(tk),
                           pi < 0 ? "full" : o->pol_name[pi], ti < 0 ? 1.0 : o->ret_targets[ti], acc,
                           sp_eval_task_mean(&E->S, tk, pi, ti, SP_EVAL_TASK_SCORE, NULL),
                           sp_eval_task_mean(&E->S, tk, pi, ti, SP_EVAL_TASK_SAME_TEXT, NULL),
                           sp_eval_task_mean(&E->S, tk, pi, ti, SP_EVAL_TASK_SAME_CORRECT, NULL), n);
                }
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
static int write_plots(evalcli *E, const char *dir)
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
    for (int r = 0; r < E->S.n_fr; r++) {
        const sp_eval_fid_run *fr = &E->S.fr[r];
        for (int pi = 0; pi < fr->n_pol; pi++) {
            const sp_eval_fid_pol *fp = &fr->pol[pi];
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
                const sp_eval_fid_point *pt = &fp->pts[idx[j]];
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
    for (int m = 0; m < 3 && E->S.n_fr; m++) {
        int cols = E->S.n_fr < 3 ? E->S.n_fr : 3, rows = (E->S.n_fr + cols - 1) / cols;
        fprintf(gp, "set terminal pngcairo noenhanced size %d,%d font ',10'\nset output 'quality_%s.png'\n", 560 * cols,
                420 * rows + 40, metric[m]);
        fprintf(gp, "set multiplot layout %d,%d title 'spindle eval: %s vs TRUE byte ratio (measured points)'\n", rows,
                cols, metric[m]);
        fprintf(gp, "set xlabel 'true byte ratio (bytes held / fp16 GQA cache)'\nset ylabel '%s'\n%s\n", ylabel[m],
                m == 0 ? "set logscale y" : "unset logscale y");
        fprintf(gp, "set xrange [0:*]\n");
        for (int r = 0; r < E->S.n_fr; r++) {
            const sp_eval_fid_run *fr = &E->S.fr[r];
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
    if (E->S.n_rc) {
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
                        fprintf(d, "%d %d %.4f\n", li, di, sp_eval_ret_acc(&E->S, pi, ti, li, di, NULL));
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
                fprintf(gp, "set title '%s at %.2f true bytes (acc %.2f)'\n", pn, tp / 100.0, sp_eval_ret_acc_all(&E->S, pi, ti));
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
    eval_opts o;
    sp_eval_opts_defaults(&o);
    evalcli E = {.o = &o, .c = &c, .t0 = sp_now_s()};
    int r = parse_args(argc, argv, &c, &o, &E.json, &E.out);
    if (r)
        return r > 0 ? SP_EXIT_OK : SP_EXIT_USAGE;
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }
    o.seed = (uint64_t)c.cfg.runtime.seed;
    /* Exact numerics unless [runtime] numerics was given: the plain cache's ggml rounding (fp16
     * queries and probabilities, cpu/attention.c) against the segment path's fp32 is a KL floor
     * (0.0026 with everything kept, 1k tokens) that would hit every policy. */
    o.numerics = SP_NUMERICS_EXACT;
    for (int k = 0; k < sp_config_key_count(); k++) {
        char name[64];
        if (sp_config_key_name(k, name, sizeof name) && !strcmp(name, "runtime.numerics") &&
            strcmp(c.cfg.origin[k], "default"))
            o.numerics = c.cfg.runtime.numerics;
    }
    char hay_dir[4096];
    if (!o.haystack) {
        const char *how = NULL;
        if (sp_cli_data_path("data/haystack/pg_essays", hay_dir, sizeof hay_dir, &how) < 0) {
            sp_cli_error("eval: no haystack essays found (%s); pass --haystack DIR", how);
            return SP_EXIT_USAGE;
        }
        sp_notice("eval: haystack %s (%s)", hay_dir, how);
        o.haystack = hay_dir;
    }

    int rc = SP_EXIT_FAIL;
    char *hay = NULL;
    size_t hay_len = 0;
    sp_model_t *m = sp_model_load(c.cfg.model.path);
    if (!m) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    if (sp_config_validate(&c.cfg, sp_model_hparams(m)->n_layer) < 0) {
        sp_cli_error("%s", sp_last_error());
        rc = SP_EXIT_USAGE;
        goto out;
    }
    sp_kv_opts base;
    sp_kv_opts_from_config(&base, &c.cfg);
    int n_ctx = sp_eval_ctx_needed(&o);
    if (c.cfg.model.n_ctx > 0 && c.cfg.model.n_ctx < n_ctx) {
        sp_cli_error("eval: -c %" PRId64 " is smaller than the %d tokens the lengths need", c.cfg.model.n_ctx, n_ctx);
        rc = SP_EXIT_USAGE;
        goto out;
    }
    if (sp_cli_backend(&c.cfg, &o.backend) < 0) {
        rc = SP_EXIT_USAGE;
        goto out;
    }
    E.S.log = log_line;
    E.S.checkpoint = checkpoint;
    E.S.user = &E;
    if (sp_eval_session_open(&E.S, &o, m, &base, sp_cli_threads(&c.cfg)) < 0) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    progress(&E, "model %s, %d threads, context %d, policies %d, fidelity %s, retrieval %s", c.cfg.model.path,
             E.S.n_threads, n_ctx, o.n_pol, o.fid ? "on" : "off", o.ret ? "on" : "off");
    if (o.fid && sp_eval_run_fidelity(&E.S) < 0) {
        sp_cli_error("eval: fidelity: %s", sp_last_error());
        goto out;
    }
    if (o.ret) {
        if (!(hay = sp_eval_read_dir(o.haystack, &hay_len))) {
            sp_cli_error("eval: haystack: %s", sp_last_error());
            goto out;
        }
        if ((o.tasks & (1u << SP_TASK_PASSKEY)) && sp_eval_run_retrieval(&E.S, hay, hay_len) < 0) {
            sp_cli_error("eval: retrieval: %s", sp_last_error());
            goto out;
        }
        if ((o.tasks & ~(1u << SP_TASK_PASSKEY)) && sp_eval_run_tasks(&E.S, hay, hay_len) < 0) {
            sp_cli_error("eval: tasks: %s", sp_last_error());
            goto out;
        }
    }
    double wall = sp_now_s() - E.t0;
    print_summary(&E);
    rc = SP_EXIT_OK;
    if (E.json) {
        FILE *f = fopen(E.json, "w");
        if (!f) {
            sp_cli_error("eval: cannot write '%s': %s", E.json, strerror(errno));
            rc = SP_EXIT_FAIL;
        } else {
            write_json(&E, f, wall, true);
            if (fclose(f) != 0) {
                sp_cli_error("eval: writing '%s' failed", E.json);
                rc = SP_EXIT_FAIL;
            } else {
                progress(&E, "wrote %s", E.json);
            }
        }
    }
    if (E.out && write_plots(&E, E.out) < 0)
        rc = SP_EXIT_FAIL;
    else if (E.out)
        progress(&E, "plots in %s (quality_kl.png, quality_top1.png, quality_ppl.png, retrieval.png)", E.out);
    progress(&E, "done in %.0f s", sp_now_s() - E.t0);
out:
    free(hay);
    sp_eval_session_free(&E.S);
    sp_model_free(m);
    return rc;
}
