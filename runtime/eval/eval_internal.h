/* eval_internal.h - the model steps shared by the eval drivers (eval_fidelity.c, eval_retrieval.c),
 * implemented in eval_session.c. Not part of the library API: only the drivers include it.
 */
#ifndef SP_EVAL_INTERNAL_H
#define SP_EVAL_INTERNAL_H

#include "eval.h"

/* A progress line through E->log (printf format). */
void sp_eval_progress(sp_eval_session *E, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Tokenize text[0..len) into E->tbuf (grown as needed); *n tokens. Returns 0 or a negative errno. */
int sp_eval_tokenize(sp_eval_session *E, const char *text, size_t len, bool add_special, bool parse_special,
                     size_t *n);

/* sp_eval_count_fn over a session: tokens of text (no specials). */
int sp_eval_count_cb(void *user, const char *text, size_t len);

/* Options of policy index pi (-1: full) at a knob value (variant knobs applied). */
sp_kv_opts sp_eval_opts_for(const sp_eval_session *E, int pi, double knob);

/* Recompress under (policy index, knob) and read the accounting into *st. */
int sp_eval_apply(sp_eval_session *E, int pi, double knob, sp_kv_stats *st);

/* sp_eval_measure_fn: user is a sp_eval_measure_ctx; the measured value is the true byte ratio. */
typedef struct sp_eval_measure_ctx {
    sp_eval_session *E;
    int pi;
} sp_eval_measure_ctx;
int sp_eval_measure_cb(void *user, double knob, double *ratio);

/* Prefill toks[0..n-1) (the last token is held back) with the prefill state kept; *secs: wall time. */
int sp_eval_prefill_prompt(sp_eval_session *E, const int32_t *toks, int n, double *secs);

/* Teacher-force toks[0..T) and add each step's comparison with the reference rows to acc (and the
 * first E->o->short_tokens steps to acc_short, may be NULL); with store, the logits become the
 * reference rows. */
int sp_eval_teacher_force(sp_eval_session *E, const int32_t *toks, int T, bool store, sp_eval_acc *acc,
                          sp_eval_acc *acc_short);

/* The prompt: intro, filler and question as the user turn (the vocabulary's chat template when it
 * has one, *special set), then the answer prefix. malloc'd; NULL when out of memory. */
char *sp_eval_render_prompt(const sp_eval_session *E, const char *intro, const char *filler, const char *question,
                            const char *prefix, bool *special);

/* Decode the held-back last prompt token, then greedy up to max_tokens tokens into buf (JSON-safe),
 * stopping at an end-of-generation token, and with stop_digits once a digit run has ended (the
 * tasks' answers are lists that may span lines: they run to max_tokens). Returns 0 or a negative
 * errno. */
int sp_eval_greedy(sp_eval_session *E, int32_t last, int max_tokens, bool stop_digits, char *buf, size_t cap);

/* Compress the prefilled prompt for (policy index pi, ret_targets index ti) at retrieval length
 * index li: pi = -1 is the full cache (knob 1); else the knob is searched for the true byte target
 * (warm start per (pi, ti, li)). *knob, *hit (search within tol), *ratio (measured). */
int sp_eval_compress_at(sp_eval_session *E, int pi, int ti, int li, double *knob, bool *hit, double *ratio);

#endif
