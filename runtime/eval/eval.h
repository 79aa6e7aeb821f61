/* eval.h - the pieces of `spindle eval` that do not need a model: fidelity metrics, text loading,
 * passkey/needle prompt generation, the knob search and the interpolation to equal true bytes.
 *
 * The CLI (runtime/cli/cmd_eval.c) drives the model; everything here is plain computation so the
 * tests link exactly the code the command runs.
 *
 * Thread-safety: every function is pure or writes only to the caller's structs. Ownership is
 * stated per function; the *_free functions accept NULL.
 */
#ifndef SP_EVAL_H
#define SP_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
