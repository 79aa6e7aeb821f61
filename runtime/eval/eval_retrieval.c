/* eval_retrieval.c - the retrieval driver of `spindle eval`: passkey prompts (chat template when
 * the vocabulary has one) over length x depth x seeds; each prompt is prefilled once and every
 * policy x byte target is recompressed from it (knob searched for the true byte ratio); greedy
 * answer, exact match of the passkey digits.
 *
 * The prompt's last token (the end of the answer prefix) is held back from the prefill and decoded
 * over the compressed cache, so the whole answer depends on it.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "eval.h"
#include "eval_internal.h"
#include "sampler.h"
#include "sp_error.h"

const char sp_eval_ret_intro[] = "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
                                 "I will quiz you about the pass key.";
const char sp_eval_ret_question[] = "What is the pass key? Answer with the number only.";
const char sp_eval_ret_prefix[] = "The pass key is";

char *sp_eval_render_prompt(const sp_eval_session *E, const char *intro, const char *filler, const char *question,
                            const char *prefix, bool *special)
{
    size_t ul = strlen(intro) + strlen(filler) + strlen(question) + 8;
    char *user = malloc(ul);
    if (!user)
        return NULL;
    snprintf(user, ul, "%s\n\n%s\n\n%s", intro, filler, question);
    int fam = sp_chat_family_from_name(sp_tokenizer_chat_template(E->tok));
    char *out;
    if (fam > SP_CHAT_FAMILY_NONE) {
        size_t cap = sp_chat_render_size(NULL, user) + strlen(prefix) + 1;
        out = malloc(cap);
        int n = out ? sp_chat_render((sp_chat_family)fam, NULL, user, out, cap) : -ENOMEM;
        if (n < 0) {
            free(out);
            free(user);
            return NULL;
        }
        memcpy(out + n, prefix, strlen(prefix) + 1);
        *special = true;
    } else {
        size_t cap = ul + strlen(prefix) + 2;
        out = malloc(cap);
        if (out)
            snprintf(out, cap, "%s\n%s", user, prefix);
        *special = false;
    }
    free(user);
    return out;
}

/* The passkey prompt around a filler. */
static char *render_prompt(const sp_eval_session *E, const char *filler, bool *special)
{
    return sp_eval_render_prompt(E, sp_eval_ret_intro, filler, sp_eval_ret_question, sp_eval_ret_prefix, special);
}

int sp_eval_greedy(sp_eval_session *E, int32_t last, int max_tokens, bool stop_digits, char *buf, size_t cap)
{
    size_t w = 0;
    buf[0] = '\0';
    int rc = sp_ctx_decode(E->ctx, last, E->logits);
    if (rc < 0)
        return rc;
    for (int i = 0; i < max_tokens; i++) {
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
        bool digits = false, ended = false;
        for (size_t k = 0; stop_digits && k < w; k++) {
            bool d = buf[k] >= '0' && buf[k] <= '9';
            if (digits && !d)
                ended = true;
            digits = digits || d;
        }
        if (ended || i + 1 == max_tokens)
            break;
        if ((rc = sp_ctx_decode(E->ctx, t, E->logits)) < 0)
            return rc;
    }
    for (size_t k = 0; k < w; k++)
        if (buf[k] == '"' || buf[k] == '\\' || (unsigned char)buf[k] < 0x20)
            buf[k] = ' ';   /* JSON- and table-safe */
    return 0;
}

/* The passkey answer: up to answer_tokens, ending with the first digit run. */
static int answer(sp_eval_session *E, int32_t last, char *buf, size_t cap)
{
    return sp_eval_greedy(E, last, E->o->answer_tokens, true, buf, cap);
}

int sp_eval_compress_at(sp_eval_session *E, int pi, int ti, int li, double *knob, bool *hit, double *ratio)
{
    const sp_eval_opts *o = E->o;
    sp_kv_stats st;
    int rc;
    *knob = 1.0;
    *hit = true;
    if (pi >= 0) {
        sp_eval_search srch = {.knob_min = 0.01, .knob_max = 1.0, .tol = o->tol, .max_iter = o->max_probes,
                               .start = E->warm[pi][ti][li]};
        sp_eval_measure_ctx mc = {E, pi};
        sp_eval_probe pr[SP_EVAL_MAXPROBE];
        int np;
        int sres = sp_eval_knob_search(&srch, o->ret_targets[ti], sp_eval_measure_cb, &mc, pr, SP_EVAL_MAXPROBE, &np,
                                       knob);
        if (sres < 0)
            return sres;
        *hit = sres == 0;
        E->warm[pi][ti][li] = *knob;
    }
    if ((rc = sp_eval_apply(E, pi, *knob, &st)) < 0)
        return rc;
    *ratio = st.true_ratio;
    return 0;
}

/* Build, tokenize and prefill the prompt of one cell; *last: the held-back token. */
static int prepare_cell(sp_eval_session *E, const char *hay, size_t hay_len, int n_over, int n_needle,
                        sp_eval_ret_cell *cell, int32_t *last)
{
    const sp_eval_opts *o = E->o;
    bool special;
    sp_needle_spec spec = {.filler_tokens = cell->length - n_over - n_needle - 8,
                           .depth = cell->depth, .seed = cell->seed, .n_digits = o->digits};
    sp_needle nd;
    int rc = sp_needle_build(hay, hay_len, &spec, sp_eval_count_cb, E, &nd);
    if (rc < 0)
        return rc;
    char *prompt = render_prompt(E, nd.text, &special);
    snprintf(cell->passkey, sizeof cell->passkey, "%s", nd.passkey);
    /* needle position in tokens: tokens of the prompt before the needle sentence */
    size_t before = 0;
    char *nptr = prompt ? strstr(prompt, nd.text) : NULL;
    if (nptr && sp_eval_tokenize(E, prompt, (size_t)(nptr - prompt) + nd.needle_off, true, special, &before) == 0)
        cell->needle_token = (int)before;
    sp_needle_free(&nd);
    if (!prompt)
        return sp_error(ENOMEM, "cannot render the retrieval prompt");
    size_t n;
    rc = sp_eval_tokenize(E, prompt, strlen(prompt), true, special, &n);
    free(prompt);
    if (rc < 0)
        return rc;
    if ((int)n + o->answer_tokens + 1 > sp_ctx_n_ctx(E->ctx))
        return sp_error(ERANGE, "retrieval prompt of %zu tokens + %d answer tokens exceed the context %d", n,
                        o->answer_tokens, sp_ctx_n_ctx(E->ctx));
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

/* Full first (the reference of the cell), then every policy x target. */
static int score_cell(sp_eval_session *E, sp_eval_ret_cell *cell, int li, int32_t last, int *n_ok, int *n_all)
{
    const sp_eval_opts *o = E->o;
    *n_ok = *n_all = 0;
    for (int pi = -1; pi < o->n_pol; pi++)
        for (int ti = pi < 0 ? -1 : 0; ti < (pi < 0 ? 0 : o->n_ret_targets); ti++) {
            sp_eval_ret_res *r = &cell->r[cell->n_r++];
            r->pi = pi;
            r->ti = ti;
            int rc;
            if ((rc = sp_eval_compress_at(E, pi, ti, li, &r->knob, &r->hit, &r->ratio)) < 0 ||
                (rc = answer(E, last, r->answer, sizeof r->answer)) < 0)
                return rc;
            r->correct = sp_eval_passkey_match(r->answer, cell->passkey);
            *n_ok += r->correct;
            (*n_all)++;
        }
    return 0;
}

int sp_eval_run_retrieval(sp_eval_session *E, const char *hay, size_t hay_len)
{
    const sp_eval_opts *o = E->o;
    size_t n_cells = (size_t)o->n_ret_lengths * (size_t)o->n_depths * (size_t)o->seeds;
    free(E->rc);
    E->n_rc = 0;
    E->rc = calloc(n_cells, sizeof *E->rc);
    if (!E->rc)
        return sp_error(ENOMEM, "out of memory for %zu retrieval cells", n_cells);
    /* Tokens besides the filler: template + intro + question + answer prefix + needle + margin. */
    bool special;
    char *empty = render_prompt(E, "", &special);
    if (!empty)
        return sp_error(ENOMEM, "cannot render the retrieval prompt");
    size_t n_over;
    int rc = sp_eval_tokenize(E, empty, strlen(empty), true, special, &n_over);
    free(empty);
    if (rc < 0)
        return rc;
    char ns[96], key0[20];
    memset(key0, '9', (size_t)o->digits);
    key0[o->digits] = '\0';
    sp_needle_sentence(key0, ns, sizeof ns);
    int n_needle = sp_eval_count_cb(E, ns, strlen(ns));
    if (n_needle < 0)
        return n_needle;
    memset(E->warm, 0, sizeof E->warm);
    /* Seeds outermost: after each seed the whole length x depth grid has one more sample. */
    for (int s = 0; s < o->seeds; s++)
        for (int li = 0; li < o->n_ret_lengths; li++)
            for (int di = 0; di < o->n_depths; di++) {
                sp_eval_ret_cell *cell = &E->rc[E->n_rc];
                memset(cell, 0, sizeof *cell);
                cell->length = o->ret_lengths[li];
                cell->depth = o->depths[di];
                cell->seed = o->seed + (uint64_t)s * 1000003u + (uint64_t)li * 7919u + (uint64_t)di * 104729u;
                int32_t last = 0;
                int n_ok, n_all;
                if ((rc = prepare_cell(E, hay, hay_len, (int)n_over, n_needle, cell, &last)) < 0 ||
                    (rc = score_cell(E, cell, li, last, &n_ok, &n_all)) < 0)
                    return rc;
                sp_eval_progress(E,
                                 "retrieval L=%d (%d tokens) depth %3.0f%% seed %d: passkey %s, full answered '%s' "
                                 "(%s); %d/%d policy points correct (prefill %.1f s)",
                                 cell->length, cell->n_prompt, 100 * cell->depth, s, cell->passkey, cell->r[0].answer,
                                 cell->r[0].correct ? "ok" : "wrong", n_ok, n_all, cell->prefill_s);
                E->n_rc++;
                if (E->checkpoint)
                    E->checkpoint(E->user);
            }
    return 0;
}

double sp_eval_ret_acc(const sp_eval_session *E, int pi, int ti, int li, int di, int *n_out)
{
    int ok = 0, n = 0;
    for (int i = 0; i < E->n_rc; i++) {
        const sp_eval_ret_cell *c = &E->rc[i];
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

double sp_eval_ret_acc_all(const sp_eval_session *E, int pi, int ti)
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
