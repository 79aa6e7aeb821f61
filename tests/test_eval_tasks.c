/* test_eval_tasks.c - the RULER-style task prompts (eval_tasks.c): generation is deterministic for
 * a seed, needle 0 lands at the requested depth (vartrack's chain in order after it), the answers
 * can be recovered from the prompt text alone by an independent parser, the scorer counts partial
 * multi-value answers and whole words only, templates are checked and used. A word counter stands
 * in for the tokenizer, so these need no model.
 */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

static int count_words(void *user, const char *t, size_t n)
{
    (void)user;
    int c = 0;
    bool in = false;
    for (size_t i = 0; i < n; i++) {
        bool sp = isspace((unsigned char)t[i]);
        if (!sp && !in)
            c++;
        in = !sp;
    }
    return c;
}

/* Numbered sentences of 4..14 words with digit runs of their own. */
static char *make_haystack(int n_sent)
{
    size_t cap = (size_t)n_sent * 120 + 1, w = 0;
    char *h = malloc(cap);
    for (int i = 0; i < n_sent; i++) {
        int words = 3 + (i * 7) % 11;
        w += (size_t)snprintf(h + w, cap - w, "Sentence%d", i);
        for (int k = 0; k < words; k++)
            w += (size_t)snprintf(h + w, cap - w, " w%d", k + i);
        w += (size_t)snprintf(h + w, cap - w, i % 5 == 4 ? ".\n" : ". ");
    }
    return h;
}

static const int max_sentence_words = 3 + 10 + 1;
static const sp_task_kind kinds[3] = {SP_TASK_MULTIKEY, SP_TASK_MULTIVALUE, SP_TASK_VARTRACK};

static sp_task_spec spec_for(sp_task_kind k, double depth, uint64_t seed)
{
    sp_task_spec s = {.kind = k, .filler_tokens = 900, .depth = depth, .seed = seed, .n_needles = 4, .n_digits = 5};
    sp_task_templates_default(k, &s.tmpl);
    return s;
}

Test(eval_tasks, deterministic_for_a_seed)
{
    char *hay = make_haystack(400);
    for (int ki = 0; ki < 3; ki++) {
        sp_task_spec sp = spec_for(kinds[ki], 0.4, 42);
        sp_task_prompt a, b, c;
        cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &a), 0);
        cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &b), 0);
        cr_assert_eq(a.len, b.len, "%s", sp_task_name(kinds[ki]));
        cr_assert_str_eq(a.context, b.context);
        cr_assert_str_eq(a.question, b.question);
        cr_assert_str_eq(a.prefix, b.prefix);
        cr_assert_str_eq(a.query, b.query);
        cr_assert_eq(a.n_answers, b.n_answers);
        for (int i = 0; i < a.n_answers; i++)
            cr_assert_str_eq(a.answers[i], b.answers[i]);
        sp.seed = 43;
        cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &c), 0);
        cr_assert(strcmp(a.context, c.context), "%s: seeds 42 and 43 gave the same prompt", sp_task_name(kinds[ki]));
        cr_assert_str_neq(a.answers[0], c.answers[0]);
        sp_task_prompt_free(&a);
        sp_task_prompt_free(&b);
        sp_task_prompt_free(&c);
    }
    sp_task_prompt_free(NULL);
    free(hay);
}

/* Filler words before needle i: the words before it minus the words of the needles before it. */
static int filler_before(const sp_task_prompt *p, int i)
{
    int w = count_words(NULL, p->context, p->needle_off[i]);
    for (int j = 0; j < p->n_needles; j++)
        if (p->needle_off[j] < p->needle_off[i])
            w -= count_words(NULL, p->context + p->needle_off[j], p->needle_len[j]);
    return w;
}

Test(eval_tasks, needle_at_requested_depth)
{
    char *hay = make_haystack(400);
    const double depths[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
    for (int ki = 0; ki < 3; ki++)
        for (int di = 0; di < 5; di++)
            for (uint64_t seed = 1; seed <= 3; seed++) {
                sp_task_spec sp = spec_for(kinds[ki], depths[di], seed);
                sp_task_prompt p;
                cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &p), 0);
                cr_assert_leq(p.filler_tokens, 900);
                cr_assert_geq(p.filler_tokens, 900 - max_sentence_words);
                int before = filler_before(&p, 0);
                cr_assert_eq(before, p.tokens_before[0]);
                double want = depths[di] * p.filler_tokens;
                cr_assert_leq(fabs(before - want), max_sentence_words, "%s depth %g seed %d: %d filler words before, "
                              "want %.0f", sp_task_name(kinds[ki]), depths[di], (int)seed, before, want);
                for (int i = 0; i < p.n_needles; i++) {
                    /* each needle is where the struct says, formatted from the template */
                    cr_assert(p.needle_off[i] + p.needle_len[i] <= p.len);
                    const char *lead = kinds[ki] == SP_TASK_VARTRACK ? "VAR " : "One of the special magic numbers";
                    cr_assert_eq(strncmp(p.context + p.needle_off[i], lead, strlen(lead)), 0);
                    /* vartrack: the chain in order, from the requested depth on */
                    if (kinds[ki] == SP_TASK_VARTRACK && i > 0)
                        cr_assert_gt(p.needle_off[i], p.needle_off[i - 1], "vartrack needle %d before %d", i, i - 1);
                }
                sp_task_prompt_free(&p);
            }
    free(hay);
}

/* Independent parsers of the context text: the answers follow from what the prompt says. */
static int parse_values_for(const char *ctx, const char *key, char out[][32], int cap)
{
    char pat[96];
    snprintf(pat, sizeof pat, "One of the special magic numbers for %s is: ", key);
    int n = 0;
    for (const char *p = strstr(ctx, pat); p && n < cap; p = strstr(p + 1, pat)) {
        const char *d = p + strlen(pat);
        size_t l = 0;
        while (isdigit((unsigned char)d[l]))
            l++;
        snprintf(out[n++], 32, "%.*s", (int)l, d);
    }
    return n;
}

/* VAR A = B. statements; the variables whose value resolves to `value`. */
static int resolve_chain(const char *ctx, const char *value, char out[][32], int cap)
{
    char lhs[64][32], rhs[64][32];
    int n = 0;
    for (const char *p = strstr(ctx, "VAR "); p && n < 64; p = strstr(p + 1, "VAR "))
        if (sscanf(p, "VAR %31[A-Z] = %31[A-Z0-9].", lhs[n], rhs[n]) == 2) {
            size_t l = strlen(rhs[n]);
            if (l && rhs[n][l - 1] == '.')
                rhs[n][l - 1] = '\0';
            n++;
        }
    int m = 0;
    for (bool grew = true; grew;) {
        grew = false;
        for (int i = 0; i < n; i++) {
            bool known = false, hit = !strcmp(rhs[i], value);
            for (int j = 0; j < m; j++) {
                known = known || !strcmp(out[j], lhs[i]);
                hit = hit || !strcmp(out[j], rhs[i]);
            }
            if (hit && !known && m < cap) {
                memcpy(out[m++], lhs[i], sizeof lhs[i]);
                grew = true;
            }
        }
    }
    return m;
}

static bool same_set(char a[][32], int na, char b[][32], int nb)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++) {
        bool f = false;
        for (int j = 0; j < nb; j++)
            f = f || !strcmp(a[i], b[j]);
        if (!f)
            return false;
    }
    return true;
}

Test(eval_tasks, answer_recoverable_from_prompt)
{
    char *hay = make_haystack(400);
    for (int ki = 0; ki < 3; ki++)
        for (uint64_t seed = 1; seed <= 8; seed++) {
            sp_task_spec sp = spec_for(kinds[ki], (double)(seed % 5) / 4, seed);
            sp.n_needles = 2 + (int)seed % 4;
            sp_task_prompt p;
            cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &p), 0);
            cr_assert(strstr(p.question, p.query), "%s: the question names %s: %s", sp_task_name(kinds[ki]), p.query,
                      p.question);
            char got[SP_TASK_MAXN][32];
            int n;
            if (kinds[ki] == SP_TASK_VARTRACK)
                n = resolve_chain(p.context, p.query, got, SP_TASK_MAXN);
            else
                n = parse_values_for(p.context, p.query, got, SP_TASK_MAXN);
            cr_assert(same_set(got, n, p.answers, p.n_answers), "%s seed %d: parsed %d answers (%s...), prompt says %d (%s...)",
                      sp_task_name(kinds[ki]), (int)seed, n, n ? got[0] : "", p.n_answers, p.answers[0]);
            cr_assert_eq(p.n_answers, kinds[ki] == SP_TASK_MULTIKEY ? 1 : sp.n_needles);
            /* each answer occurs once in the context: no copy in the filler */
            for (int i = 0; i < p.n_answers; i++) {
                int occ = 0;
                for (const char *q = strstr(p.context, p.answers[i]); q; q = strstr(q + 1, p.answers[i]))
                    occ++;
                cr_assert_eq(occ, kinds[ki] == SP_TASK_VARTRACK && i + 1 < p.n_answers ? 2 : 1,
                             "%s answer %s occurs %d times", sp_task_name(kinds[ki]), p.answers[i], occ);
            }
            sp_task_prompt_free(&p);
        }
    free(hay);
}

Test(eval_tasks, scorer_partial_and_whole_words)
{
    char *hay = make_haystack(300);
    sp_task_spec sp = spec_for(SP_TASK_MULTIVALUE, 0.5, 9);
    sp_task_prompt p;
    cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &p), 0);
    cr_assert_eq(p.n_answers, 4);
    char text[256];
    snprintf(text, sizeof text, " %s, %s and more", p.answers[2], p.answers[0]);
    cr_assert_eq(sp_task_score(&p, text), 2, "two of four values: %s", text);
    snprintf(text, sizeof text, "%s %s %s %s.", p.answers[3], p.answers[1], p.answers[0], p.answers[2]);
    cr_assert_eq(sp_task_score(&p, text), 4);
    snprintf(text, sizeof text, "%s, %s, %s", p.answers[1], p.answers[1], p.answers[1]);
    cr_assert_eq(sp_task_score(&p, text), 1, "a repeated value counts once");
    snprintf(text, sizeof text, "%s7 and 1%s", p.answers[0], p.answers[1]);
    cr_assert_eq(sp_task_score(&p, text), 0, "inside a longer number is not the value: %s", text);
    cr_assert_eq(sp_task_score(&p, ""), 0);
    cr_assert(sp_task_text_has("they are: ABCDE, FGHIJ", "FGHIJ"));
    cr_assert_not(sp_task_text_has("ABCDEF", "ABCDE"));
    sp_task_prompt_free(&p);
    free(hay);
}

Test(eval_tasks, templates_checked_and_used)
{
    char *hay = make_haystack(300);
    sp_task_spec sp = spec_for(SP_TASK_MULTIKEY, 0.5, 5);
    cr_assert_eq(sp_task_templates_set(&sp.tmpl, "needle", "The code of {key} is {value}."), 0);
    cr_assert_eq(sp_task_templates_set(&sp.tmpl, "question", "Which code has {key}?"), 0);
    cr_assert_eq(sp_task_templates_set(&sp.tmpl, "colour", "x"), -EINVAL);
    sp_task_prompt p;
    cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &p), 0);
    char want[96];
    snprintf(want, sizeof want, "The code of %s is %s.", p.query, p.answers[0]);
    cr_assert(strstr(p.context, want), "custom needle '%s' not in the context", want);
    snprintf(want, sizeof want, "Which code has %s?", p.query);
    cr_assert_str_eq(p.question, want);
    sp_task_prompt_free(&p);
    sp.tmpl.needle = "The code is {value}.";   /* no {key}: the question could not name one */
    cr_assert_eq(sp_task_build(hay, strlen(hay), &sp, count_words, NULL, &p), -EINVAL);
    cr_assert_null(p.context);
    sp_task_templates_default(SP_TASK_VARTRACK, &sp.tmpl);
    sp.tmpl.question = "Which variables?";   /* vartrack must say which value */
    cr_assert_eq(sp_task_templates_check(SP_TASK_VARTRACK, &sp.tmpl), -EINVAL);
    sp_task_kind k;
    cr_assert_eq(sp_task_from_name("vartrack", &k), 0);
    cr_assert_eq(k, SP_TASK_VARTRACK);
    cr_assert_eq(sp_task_from_name("needle", &k), -EINVAL);
    free(hay);
}

Test(eval_tasks, bad_spec)
{
    sp_task_spec sp = spec_for(SP_TASK_MULTIKEY, 1.5, 1);
    sp_task_prompt p;
    cr_assert_eq(sp_task_build("A b. C d.", 9, &sp, count_words, NULL, &p), -EINVAL);
    sp = spec_for(SP_TASK_MULTIKEY, 0.5, 1);
    sp.n_needles = SP_TASK_MAXN + 1;
    cr_assert_eq(sp_task_build("A b. C d.", 9, &sp, count_words, NULL, &p), -EINVAL);
    sp = spec_for(SP_TASK_PASSKEY, 0.5, 1);   /* the passkey has its own builder */
    cr_assert_eq(sp_task_build("A b. C d.", 9, &sp, count_words, NULL, &p), -EINVAL);
    sp = spec_for(SP_TASK_VARTRACK, 0.5, 1);
    sp.filler_tokens = 1;   /* no sentence fits */
    cr_assert_eq(sp_task_build("A b. C d.", 9, &sp, count_words, NULL, &p), -EINVAL);
}
