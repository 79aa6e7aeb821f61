/* eval.h - `spindle eval` as a library: fidelity metrics, text loading, passkey/needle prompt
 * generation, the knob search and the interpolation to equal true bytes (plain computation), and
 * the drivers that run them on a model (sp_eval_session: fidelity in eval_fidelity.c, retrieval in
 * eval_retrieval.c, the shared model steps in eval_session.c).
 *
 * The CLI (runtime/cli/cmd_eval.c) parses options and reports (summary, JSON, plots); the tests
 * link exactly the code the command runs.
 *
 * Thread-safety: every function is pure or writes only to the caller's structs; a session is used
 * by one thread at a time. Ownership is stated per function; the *_free functions accept NULL.
 */
#ifndef SP_EVAL_H
#define SP_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_policy.h"
#include "model.h"
#include "tokenizer.h"

/* ---- metrics ------------------------------------------------------------------------------ */

/* out[i] = logits[i] - logsumexp(logits), computed in fp64. Non-finite logits give -inf entries
 * (a -inf logit is probability 0). Returns logsumexp (or -inf if every logit is -inf / NaN). */
double sp_eval_log_softmax(const float *logits, int n, double *out);

/* KL(p || q) = sum_i p_i (log p_i - log q_i) from two log-probability vectors (fp64). Terms with
 * p_i = 0 contribute 0; p_i > 0 with q_i = 0 gives +inf. Never negative beyond rounding (clamped
 * at 0). */
double sp_eval_kl(const double *logp, const double *logq, int n);

/* Index of the largest entry (lowest index on ties); -1 when n <= 0. */
int sp_eval_argmax_d(const double *x, int n);

/* Running fidelity statistics of a teacher-forced continuation against a reference. */
typedef struct sp_eval_acc {
    double kl_sum;        /* sum over steps of KL(ref || test), nats */
    double kl_max;
    double nll_sum;       /* sum over steps of -log p_test(true token), nats */
    int64_t top1_agree;   /* steps where argmax(test) == argmax(ref) */
    int64_t n;            /* steps */
} sp_eval_acc;

/* Add one step: reference and tested log-probabilities ([n_vocab]) and the true next token. */
void sp_eval_acc_add(sp_eval_acc *a, const double *logp_ref, const double *logp_test, int n_vocab,
                     int32_t true_tok);
double sp_eval_acc_kl(const sp_eval_acc *a);     /* mean KL, nats (NaN when empty) */
double sp_eval_acc_top1(const sp_eval_acc *a);   /* agreement share in [0,1] (NaN when empty) */
double sp_eval_acc_ppl(const sp_eval_acc *a);    /* exp(mean NLL) (NaN when empty) */

/* ---- texts -------------------------------------------------------------------------------- */

/* Concatenate the *.txt files of a directory in name order, separated by a blank line. Returns a
 * malloc'd NUL-terminated string (caller frees) and its length in *len, or NULL (sp_last_error():
 * the directory, the file, or "no .txt files"). */
char *sp_eval_read_dir(const char *dir, size_t *len);

/* The King James Bible text from Debian's bible-kjv-text (compressed data in /usr/lib/bible.data)
 * read through its reader `bible` (package bible-kjv), verse references stripped, one chapter per
 * paragraph. `range` is a verse range as `bible` takes it (NULL: "gen1:1-gen50:26", Genesis, about
 * 50k tokens). Returns a malloc'd string or NULL with a message naming the missing package. */
char *sp_eval_read_kjv(const char *range, size_t *len);

/* ---- passkey / needle --------------------------------------------------------------------- */

/* Token counter used to size prompts: number of tokens of text[0..len). Negative on error. */
typedef int (*sp_eval_count_fn)(void *user, const char *text, size_t len);

typedef struct sp_needle_spec {
    int filler_tokens;   /* tokens of haystack text around the needle (the caller subtracts the
                            question, template and needle from its context length) */
    double depth;        /* [0,1]: where the needle goes, as a share of the filler tokens */
    uint64_t seed;       /* passkey digits and the haystack start sentence */
    int n_digits;        /* passkey length, 1..18 (default 5 when 0) */
} sp_needle_spec;

typedef struct sp_needle {
    char *text;          /* malloc'd: filler with the needle sentence inserted (no question) */
    size_t len;
    char passkey[20];    /* the digits, NUL-terminated */
    size_t needle_off;   /* byte offset of the needle sentence in text */
    size_t needle_len;
    int n_sentences;     /* filler sentences used */
    int needle_index;    /* needle inserted before filler sentence needle_index (0..n_sentences) */
    int filler_tokens;   /* counted filler tokens (sum over sentences) */
    int tokens_before;   /* counted filler tokens before the needle */
} sp_needle;

/* The needle sentence for a passkey (e.g. " The pass key is 12345. Remember it. 12345 is the pass
 * key."). Returns the length written or -ENOSPC. */
int sp_needle_sentence(const char *passkey, char *buf, size_t cap);

/* Build a filler text of about spec->filler_tokens tokens from haystack sentences, starting at a
 * seeded sentence and wrapping around, with the passkey sentence inserted at the sentence boundary
 * nearest to depth * filler tokens. The passkey is drawn from the seed and redrawn (deterministically)
 * while its digits occur in the filler. Same inputs -> same output. Returns 0, -EINVAL (bad spec,
 * haystack without sentences), -ENOMEM, or the counter's error; out is zeroed on failure. */
int sp_needle_build(const char *haystack, size_t hay_len, const sp_needle_spec *spec, sp_eval_count_fn count,
                    void *user, sp_needle *out);
void sp_needle_free(sp_needle *n);

/* Number of non-overlapping occurrences of needle in hay[0..len). */
int sp_eval_count_occurrences(const char *hay, size_t len, const char *needle);

/* Exact match of an answer: the first maximal run of digits in the answer equals the passkey. */
bool sp_eval_passkey_match(const char *answer, const char *passkey);

/* Haystack sentences (shared by the passkey and the task generators): starts[0..*n) are byte
 * offsets, each sentence running to the next start (the last to len); the whitespace after a
 * sentence belongs to the next one. Returns 0 or -ENOMEM; the caller frees *starts. */
int sp_eval_split_sentences(const char *text, size_t len, size_t **starts, int *n);

/* ---- RULER-style tasks: question after context ------------------------------------------- */

/* passkey: the digits of one needle (eval_needle.c, the retrieval driver);
 * multikey: n key -> value needles, the question names one key, its value is the answer;
 * multivalue: n needles with one key and different values, every value is an answer;
 * vartrack: a chain VAR X1 = v, VAR X2 = X1, ..., the answers are every variable equal to v. */
typedef enum sp_task_kind {
    SP_TASK_PASSKEY = 0, SP_TASK_MULTIKEY, SP_TASK_MULTIVALUE, SP_TASK_VARTRACK, SP_TASK_COUNT
} sp_task_kind;

const char *sp_task_name(sp_task_kind k);                 /* "passkey", ... ("?" if out of range) */
int sp_task_from_name(const char *name, sp_task_kind *k); /* 0, or -EINVAL with a message */

/* The texts of a task's prompt. Placeholders: {key} (a key, or a variable name for vartrack),
 * {value} (a value, or the previous variable / the number for vartrack), {n} (the number of
 * answers). The needle needs {key} and {value}; the question of multikey / multivalue needs {key},
 * that of vartrack {value}. Strings are borrowed (static defaults or the caller's). */
typedef struct sp_task_templates {
    const char *intro, *needle, *question, *prefix;
} sp_task_templates;

/* The RULER-style defaults of task k (passkey: the retrieval driver's texts). Never fails. */
void sp_task_templates_default(sp_task_kind k, sp_task_templates *t);

/* Set field ("intro", "needle", "question", "prefix") of t to text (borrowed). 0 or -EINVAL. */
int sp_task_templates_set(sp_task_templates *t, const char *field, const char *text);

/* Check the placeholders task k needs. 0, or -EINVAL with a message naming the field. */
int sp_task_templates_check(sp_task_kind k, const sp_task_templates *t);

#define SP_TASK_MAXN 16   /* needles per prompt */

typedef struct sp_task_spec {
    sp_task_kind kind;            /* multikey, multivalue or vartrack */
    int filler_tokens;            /* haystack tokens around the needles */
    double depth;                 /* [0,1]: where needle 0 goes, as a share of the filler tokens */
    uint64_t seed;                /* filler start, keys, values, other needles' depths */
    int n_needles;                /* 1..SP_TASK_MAXN: keys (multikey), values (multivalue), chain
                                     length (vartrack) */
    int n_digits;                 /* values' digits, 1..18 (default 5 when 0) */
    sp_task_templates tmpl;       /* checked by sp_task_build */
} sp_task_spec;

typedef struct sp_task_prompt {
    char *context;                /* malloc'd: filler with the needle sentences inserted */
    size_t len;
    char *question, *prefix;      /* malloc'd: the formatted question and answer prefix */
    char query[32];               /* the asked key (multikey/multivalue) or value (vartrack) */
    char answers[SP_TASK_MAXN][32];
    int n_answers;
    /* needle i: byte span in context and counted filler tokens before it. Needle 0 is the one at
       the requested depth (the asked key / the first value / the assignment of the number);
       vartrack's needles are in chain order, and so is their order in the text. */
    size_t needle_off[SP_TASK_MAXN], needle_len[SP_TASK_MAXN];
    int tokens_before[SP_TASK_MAXN];
    int n_needles;
    int filler_tokens;            /* counted filler tokens (sum over sentences) */
} sp_task_prompt;

/* Build a task prompt: filler sentences as for the passkey (seeded start, wrapping, within
 * filler_tokens), the needles formatted from the templates and inserted at sentence boundaries:
 * needle 0 at the one nearest to depth x filler tokens; multikey / multivalue's others at seeded
 * depths; vartrack's chain evenly from depth to the end, in order. Keys, values and variable
 * names are distinct, drawn from the seed and redrawn while they occur in the filler. Same
 * inputs -> same output. Returns 0, -EINVAL (bad spec or templates, no sentence fits), -ENOMEM or
 * the counter's error; out is zeroed on failure. */
int sp_task_build(const char *hay, size_t hay_len, const sp_task_spec *spec, sp_eval_count_fn count, void *user,
                  sp_task_prompt *out);
void sp_task_prompt_free(sp_task_prompt *p);   /* accepts NULL and a zeroed prompt */

/* Whether answer occurs in text as a whole word: not preceded or followed by a letter or digit. */
bool sp_task_text_has(const char *text, const char *answer);

/* Answers of p found in text (each counted once, 0..p->n_answers). The score is that over
 * n_answers; a prompt is correct when every answer is found. */
int sp_task_score(const sp_task_prompt *p, const char *text);

/* ---- sweeps at equal true bytes ----------------------------------------------------------- */

/* Linear interpolation of y at x = target over points (x[i], y[i]) in any order. The two nearest
 * points bracketing the target (x_lo <= target <= x_hi) are used; equal x values are averaged.
 * Points with a non-finite x or y are skipped. Returns 0 and *out, or -ERANGE when the target is
 * outside [min x, max x] (no extrapolation), -EINVAL when no usable point exists. */
int sp_eval_interp(const double *x, const double *y, int n, double target, double *out);

/* Measures the true byte ratio for a knob value. Returns 0 and *ratio, or a negative error. */
typedef int (*sp_eval_measure_fn)(void *user, double knob, double *ratio);

typedef struct sp_eval_probe {
    double knob, ratio;
} sp_eval_probe;

typedef struct sp_eval_search {
    double knob_min, knob_max;   /* search interval, e.g. (0.01, 1] */
    double tol;                  /* accept |ratio - target| <= tol */
    int max_iter;                /* measurements at most */
    double start;                /* first knob to try (0: the target itself) */
} sp_eval_search;

/* Find a knob whose measured ratio is within tol of target, assuming the ratio does not decrease
 * with the knob. Regula falsi on the tightest measured bracket (kept at least 10% inside it),
 * proportional scaling before a bracket exists. Every measurement is appended to probes (up to
 * cap; *n_probes counts them). *best is the probed knob whose ratio is closest to the target.
 * Returns 0 (within tol), 1 (not within tol after max_iter, or the target lies outside what
 * knob_min..knob_max can reach: *best is then the nearest reachable), or the measure error. */
int sp_eval_knob_search(const sp_eval_search *s, double target, sp_eval_measure_fn f, void *user,
                        sp_eval_probe *probes, int cap, int *n_probes, double *best);

/* ---- small helpers ------------------------------------------------------------------------ */

/* Parse "a,b,c" into doubles / ints. Returns the count, or -EINVAL (bad number, too many). */
int sp_eval_parse_doubles(const char *list, double *out, int cap);
int sp_eval_parse_ints(const char *list, int *out, int cap);

/* SplitMix64 step (seeded generators of the eval). */
uint64_t sp_eval_rng_next(uint64_t *state);

/* ---- drivers: fidelity and retrieval on a model ------------------------------------------- */

#define SP_EVAL_MAXL 8      /* prompt lengths */
#define SP_EVAL_MAXP 8      /* policies and variants */
#define SP_EVAL_MAXT 8      /* byte targets */
#define SP_EVAL_MAXD 16     /* needle depths */
#define SP_EVAL_MAXPROBE 16 /* measurements per knob search */

/* What to run. The CLI fills it from its options (sp_eval_opts_defaults first). */
typedef struct sp_eval_opts {
    bool fid, ret;                   /* run fidelity / retrieval */
    char texts[4][8];                /* fidelity texts: "pg" (haystack directory) or "kjv" */
    int n_texts;
    int lengths[SP_EVAL_MAXL], n_lengths;  /* fidelity prompt lengths, tokens */
    int tokens;                      /* teacher-forced tokens per point */
    int short_tokens;                /* the short-continuation metric: the first short_tokens of
                                        them, scored apart (default 32; clamped to tokens) */
    sp_numerics numerics;            /* CPU forward-pass rounding ([runtime] numerics) */
    sp_backend_kind backend;         /* where the forward pass runs (SP_BACKEND_CPU default) */
    sp_policy_kind pol[SP_EVAL_MAXP];
    char pol_name[SP_EVAL_MAXP][96];    /* label: the policy name, or "policy:knobs" for a variant */
    char pol_knobs[SP_EVAL_MAXP][160];  /* extra knobs of a variant ("" for a plain policy),
                                           checked by the caller with sp_kv_opts_parse */
    int n_pol;
    double targets[SP_EVAL_MAXT];    /* fidelity true byte ratios */
    int n_targets;
    int ret_lengths[SP_EVAL_MAXL], n_ret_lengths;
    double depths[SP_EVAL_MAXD];     /* needle depths in [0,1] */
    int n_depths;
    int seeds;                       /* passkeys per (length, depth) cell */
    double ret_targets[SP_EVAL_MAXT];
    int n_ret_targets;
    int digits, answer_tokens;
    double tol;                      /* knob search: |true ratio - target| <= tol */
    int max_probes;                  /* recompressions per knob search, <= SP_EVAL_MAXPROBE */
    bool tf_decode;                  /* teacher forcing one decode call per token (else one prefill) */
    const char *haystack;            /* essays directory (texts "pg" and the retrieval haystack) */
    uint64_t seed;                   /* base seed of the passkeys */
    unsigned tasks;                  /* bit (1u << sp_task_kind): the retrieval tasks to run
                                        (default: passkey only) */
    int task_needles[SP_TASK_COUNT]; /* needles per prompt (default 4 keys, 4 values, 4 hops) */
    int task_tokens;                 /* greedy answer length limit of the tasks (default 40) */
    sp_task_templates tmpl[SP_TASK_COUNT];   /* default sp_task_templates_default */
} sp_eval_opts;

/* The defaults of `spindle eval` (both parts, texts pg,kjv, lengths 2048,4096,8000, 256 tokens, the
 * six baselines + spindle, targets 0.1,0.2,0.3,0.5, retrieval 1000..8000 x 5 depths x 2 seeds at
 * 0.2, tol 0.01, 8 probes; haystack NULL: the caller sets it). Never fails. */
void sp_eval_opts_defaults(sp_eval_opts *o);

/* The prompt's fixed texts of the retrieval task (reported in the JSON). */
extern const char sp_eval_ret_intro[], sp_eval_ret_question[], sp_eval_ret_prefix[];

typedef struct sp_eval_fid_point {
    double target, knob, ratio, paper_r;
    int side;   /* 0: searched for |ratio - target| <= tol; -1: in [target - tol, target], +1: in
                   [target, target + tol] (bracket points) */
    uint64_t bytes, fp16_bytes;
    double kl, kl_max, top1, ppl, compress_s, tf_s;
    double kl_short, top1_short;     /* over the first short_tokens teacher-forced tokens */
    double span_ratio;               /* true byte ratio at the end of the scored span (prompt +
                                        decoded tokens: what the cache held for the last prediction) */
    bool hit;   /* knob search within tol */
} sp_eval_fid_point;

typedef struct sp_eval_fid_pol {
    sp_policy_kind policy;
    sp_eval_fid_point pts[2 * SP_EVAL_MAXT];   /* one per target, plus bracket points (a knob found
                                                  by several searches is measured once and copied) */
    int n_pts;
    sp_eval_probe probes[2 * SP_EVAL_MAXT][SP_EVAL_MAXPROBE];
    int n_probes[2 * SP_EVAL_MAXT];
    /* interpolated at the targets; NAN = out of range */
    double ikl[SP_EVAL_MAXT], itop1[SP_EVAL_MAXT], ippl[SP_EVAL_MAXT];
    double ikl_short[SP_EVAL_MAXT], itop1_short[SP_EVAL_MAXT];
    /* KL and top-1 interpolated in the span ratio (bytes over prompt + scored tokens) instead */
    double ikl_span[SP_EVAL_MAXT], itop1_span[SP_EVAL_MAXT];
} sp_eval_fid_pol;

typedef struct sp_eval_fid_run {
    char text[8];
    int n_prompt, n_tokens;
    double prefill_s, scores_s, ref_s, full_ppl, full_ratio;
    uint64_t fp16_bytes;
    sp_eval_fid_pol pol[SP_EVAL_MAXP];
    int n_pol;
} sp_eval_fid_run;

typedef struct sp_eval_ret_res {
    int pi;          /* index into opts.pol, -1 = full */
    int ti;          /* index into ret_targets, -1 = full */
    double knob, ratio;
    bool hit, correct;
    char answer[64];
} sp_eval_ret_res;

typedef struct sp_eval_ret_cell {
    int length, n_prompt, needle_token;
    double depth;
    uint64_t seed;
    char passkey[20];
    double prefill_s;
    sp_eval_ret_res r[SP_EVAL_MAXP * SP_EVAL_MAXT + 1];
    int n_r;
} sp_eval_ret_cell;

/* Progress line (no newline) and checkpoint hooks: called synchronously by the drivers, NULL =
 * none. The checkpoint hook runs after each finished fidelity run and retrieval cell, so a caller
 * can save what was measured so far. */
typedef void (*sp_eval_log_fn)(void *user, const char *line);
typedef void (*sp_eval_checkpoint_fn)(void *user);

/* One evaluation: the model's context (keep_prefill_state), tokenizer, buffers and results. The
 * results (fr, rc) are owned by the session and read by the reporting. */
typedef struct sp_eval_session {
    const sp_eval_opts *o;           /* borrowed; must outlive the session */
    const sp_model_t *m;             /* borrowed */
    const sp_hparams *hp;
    sp_tokenizer_t *tok;
    sp_ctx_t *ctx;
    sp_kv_opts base;                 /* the configured [compression] knobs (ratio set per probe) */
    int n_vocab, n_ctx, n_threads;
    float *logits, *ref, *test;      /* [n_vocab], [tokens][n_vocab] x 2 */
    double *lp_ref, *lp_test;        /* [n_vocab] */
    int32_t *tbuf;                   /* tokenizer output */
    size_t tcap;
    double t0;                       /* sp_now_s() at open: progress time base */
    sp_eval_fid_run *fr;             /* [n_texts * n_lengths] */
    int n_fr;
    sp_eval_ret_cell *rc;            /* [n_ret_lengths * n_depths * seeds] */
    int n_rc;
    struct sp_eval_task_cell *tc;    /* [tasks * n_ret_lengths * n_depths * seeds] */
    int n_tc;
    double warm[SP_EVAL_MAXP][SP_EVAL_MAXT][SP_EVAL_MAXL];  /* retrieval knob warm starts */
    sp_eval_log_fn log;
    sp_eval_checkpoint_fn checkpoint;
    void *user;                      /* passed to log and checkpoint */
} sp_eval_session;

/* Context length the options need (fidelity: length + tokens + 1; retrieval: length + answer
 * tokens + 16, task_tokens for the tasks other than passkey). */
int sp_eval_ctx_needed(const sp_eval_opts *o);

/* Open a session on a loaded model: tokenizer, a context of sp_eval_ctx_needed() tokens with the
 * prefill state kept, n_threads threads (0: online CPUs), and the buffers. base: the [compression]
 * knobs (budget_tokens must be 0: the sweep sets the ratio). Returns 0, or a negative errno with
 * sp_last_error() set; *E is then freed and zeroed. */
int sp_eval_session_open(sp_eval_session *E, const sp_eval_opts *o, const sp_model_t *m, const sp_kv_opts *base,
                         int n_threads);
void sp_eval_session_free(sp_eval_session *E);   /* accepts a zeroed session */

/* Fidelity: for every text x length, prefill once, the full reference, then per policy the knob
 * searches and the teacher-forced metrics at each target. Appends to E->fr. Returns 0 or a
 * negative errno (sp_last_error()). */
int sp_eval_run_fidelity(sp_eval_session *E);

/* Retrieval over the passkey grid on haystack text hay[0..hay_len). Appends to E->rc. Returns 0 or
 * a negative errno (sp_last_error()). */
int sp_eval_run_retrieval(sp_eval_session *E, const char *hay, size_t hay_len);

/* The multikey / multivalue / vartrack tasks of o->tasks over the same grid as the passkey
 * (ret_lengths x depths x seeds, policies x ret_targets, full first as the reference). Appends to
 * E->tc. Returns 0 or a negative errno (sp_last_error()). */
int sp_eval_run_tasks(sp_eval_session *E, const char *hay, size_t hay_len);

typedef struct sp_eval_task_res {
    int pi, ti;                    /* policy index / ret_targets index, -1 = full */
    double knob, ratio;
    bool hit;
    int found;                     /* answers found in the continuation */
    bool correct;                  /* found == n_answers */
    bool same_text;                /* continuation identical to the full cache's */
    bool same_correct;             /* correct == the full cache's correct */
    char answer[192];              /* the greedy continuation (JSON-safe) */
} sp_eval_task_res;

typedef struct sp_eval_task_cell {
    sp_task_kind task;
    int length, n_prompt, needle_token;   /* needle_token: prompt tokens before needle 0 */
    double depth;
    uint64_t seed;
    char query[32];
    char answers[SP_TASK_MAXN][32];
    int n_answers;
    double prefill_s;
    sp_eval_task_res r[SP_EVAL_MAXP * SP_EVAL_MAXT + 1];
    int n_r;
} sp_eval_task_cell;

/* Mean over the task's cells of a result of (pi, ti) (-1, -1 = full): SP_EVAL_TASK_ACC (all answers
 * found), _SCORE (share of answers found), _SAME_TEXT, _SAME_CORRECT (agreement with the full
 * cache). NAN when nothing matches; n_out (may be NULL): cells counted. */
enum { SP_EVAL_TASK_ACC = 0, SP_EVAL_TASK_SCORE, SP_EVAL_TASK_SAME_TEXT, SP_EVAL_TASK_SAME_CORRECT };
double sp_eval_task_mean(const sp_eval_session *E, sp_task_kind task, int pi, int ti, int which, int *n_out);

/* Passkey accuracy of (policy index pi or -1 = full, target index ti or -1) at (length index li,
 * depth index di) over seeds, or over every cell (_all); NAN when nothing matches. n_out: cells
 * counted (may be NULL). */
double sp_eval_ret_acc(const sp_eval_session *E, int pi, int ti, int li, int di, int *n_out);
double sp_eval_ret_acc_all(const sp_eval_session *E, int pi, int ti);

/* Mean over fidelity runs of the metric interpolated at target ti for policy pi: which = 0 KL,
 * 1 top-1, 2 ppl / full ppl, 3 short-continuation KL, 4 short-continuation top-1, 5 / 6 KL / top-1
 * at equal span bytes (SP_EVAL_*). NAN when any run lacks it; n_ok: runs that have it (may be NULL). */
double sp_eval_fid_mean(const sp_eval_session *E, int pi, int ti, int which, int *n_ok);
enum {
    SP_EVAL_KL = 0, SP_EVAL_TOP1 = 1, SP_EVAL_PPL = 2, SP_EVAL_KL_SHORT = 3, SP_EVAL_TOP1_SHORT = 4,
    SP_EVAL_KL_SPAN = 5, SP_EVAL_TOP1_SPAN = 6
};

#endif
