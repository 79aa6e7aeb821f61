/* test_eval.c - the model-free parts of `spindle eval`: metrics (hand cases), interpolation at
 * equal bytes, the knob search, passkey prompts (exactly one passkey, depth within one sentence,
 * seeded reproducibility), answer matching and list parsing. One test uses the default model's
 * tokenizer as the token counter (needs SPINDLE_MODEL). */
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval.h"
#include "model.h"
#include "support/model_fixture.h"
#include "tokenizer.h"

/* ---- metrics ---- */

Test(eval_metrics, log_softmax_hand)
{
    /* logits (0, ln 3) -> p = (1/4, 3/4) */
    float lg[2] = {0.0f, (float)log(3.0)};
    double lp[2];
    sp_eval_log_softmax(lg, 2, lp);
    cr_assert_float_eq(lp[0], log(0.25), 1e-7);
    cr_assert_float_eq(lp[1], log(0.75), 1e-7);
    /* Shift invariance with large logits (no overflow in fp64 after the max shift). */
    float big[3] = {1000.0f, 1001.0f, 999.0f};
    double lb[3];
    sp_eval_log_softmax(big, 3, lb);
    double s = exp(lb[0]) + exp(lb[1]) + exp(lb[2]);
    cr_assert_float_eq(s, 1.0, 1e-12);
    cr_assert_float_eq(lb[1] - lb[0], 1.0, 1e-9);
}

Test(eval_metrics, kl_identical_is_zero)
{
    float lg[5] = {0.3f, -2.0f, 1.5f, 0.0f, 7.25f};
    double a[5], b[5];
    sp_eval_log_softmax(lg, 5, a);
    sp_eval_log_softmax(lg, 5, b);
    cr_assert_eq(sp_eval_kl(a, b, 5), 0.0);
}

Test(eval_metrics, kl_hand_case)
{
    /* p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) */
    double p[2] = {log(0.5), log(0.5)}, q[2] = {log(0.25), log(0.75)};
    double want = 0.5 * log(2.0) + 0.5 * log(0.5 / 0.75);
    cr_assert_float_eq(sp_eval_kl(p, q, 2), want, 1e-12);
    /* Asymmetric: KL(q || p) = 1/4 ln(1/2) + 3/4 ln(3/2) */
    cr_assert_float_eq(sp_eval_kl(q, p, 2), 0.25 * log(0.5) + 0.75 * log(1.5), 1e-12);
    /* p puts mass where q has none: infinite. q zero where p is zero: ignored. */
    double p0[2] = {0.0, -INFINITY}, q0[2] = {-INFINITY, 0.0};
    cr_assert(isinf(sp_eval_kl(p0, q0, 2)));
    cr_assert_eq(sp_eval_kl(p0, p0, 2), 0.0);
}

Test(eval_metrics, accumulator)
{
    sp_eval_acc a = {0};
    double ref[2] = {log(0.5), log(0.5)};
    double t1[2] = {log(0.25), log(0.75)};
    double r2[2] = {log(0.9), log(0.1)};
    double t2[2] = {log(0.8), log(0.2)};
    sp_eval_acc_add(&a, ref, t1, 2, 1);    /* argmax ref 0 (tie -> lowest), test 1: disagree */
    sp_eval_acc_add(&a, r2, t2, 2, 0);     /* agree */
    cr_assert_eq(a.n, 2);
    cr_assert_float_eq(sp_eval_acc_top1(&a), 0.5, 1e-12);
    double kl2 = 0.9 * log(0.9 / 0.8) + 0.1 * log(0.1 / 0.2);
    cr_assert_float_eq(sp_eval_acc_kl(&a), (0.5 * log(2.0) + 0.5 * log(0.5 / 0.75) + kl2) / 2, 1e-12);
    /* ppl = exp(mean(-log 0.75, -log 0.8)) */
    cr_assert_float_eq(sp_eval_acc_ppl(&a), exp(-(log(0.75) + log(0.8)) / 2), 1e-12);
    sp_eval_acc e = {0};
    cr_assert(isnan(sp_eval_acc_kl(&e)) && isnan(sp_eval_acc_ppl(&e)));
}

/* ---- interpolation at equal bytes ---- */

Test(eval_sweep, interp_linear_and_bounds)
{
    double x[4] = {0.31, 0.12, 0.52, 0.2};   /* any order */
    double y[4] = {3.1, 1.2, 5.2, 2.0};      /* y = 10 x */
    double v;
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.3, &v), 0);
    cr_assert_float_eq(v, 3.0, 1e-12);
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.12, &v), 0);
    cr_assert_float_eq(v, 1.2, 1e-12);
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.5, &v), 0);
    cr_assert_float_eq(v, 5.0, 1e-12);
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.1, &v), -ERANGE);   /* below the smallest: no extrapolation */
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.6, &v), -ERANGE);
}

Test(eval_sweep, interp_duplicates_and_nan)
{
    double x[4] = {0.2, 0.2, 0.4, NAN};
    double y[4] = {1.0, 3.0, 4.0, 100.0};
    double v;
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.2, &v), 0);
    cr_assert_float_eq(v, 2.0, 1e-12);   /* equal x: averaged */
    cr_assert_eq(sp_eval_interp(x, y, 4, 0.3, &v), 0);
    cr_assert_float_eq(v, 3.0, 1e-12);   /* between mean 2 at 0.2 and 4 at 0.4 */
    double xn[1] = {NAN}, yn[1] = {1};
    cr_assert_eq(sp_eval_interp(xn, yn, 1, 0.3, &v), -EINVAL);
}

/* Synthetic policy: true ratio = scale * knob^p + floor, like a codebook (scale < 1) with a fixed
 * window overhead (floor). */
typedef struct synth {
    double scale, p, floor;
    int calls;
} synth;

static int synth_measure(void *user, double knob, double *r)
{
    synth *s = user;
    s->calls++;
    *r = s->floor + s->scale * pow(knob, s->p);
    return 0;
}

Test(eval_sweep, knob_search_hits_target)
{
    synth s = {.scale = 0.55, .p = 1.3, .floor = 0.02};
    sp_eval_search cfg = {.knob_min = 0.01, .knob_max = 1.0, .tol = 0.002, .max_iter = 12};
    const double targets[4] = {0.1, 0.2, 0.3, 0.5};
    for (int i = 0; i < 4; i++) {
        sp_eval_probe pr[16];
        int np = 0;
        double best;
        s.calls = 0;
        int rc = sp_eval_knob_search(&cfg, targets[i], synth_measure, &s, pr, 16, &np, &best);
        cr_assert_eq(rc, 0, "target %g: rc %d after %d probes", targets[i], rc, np);
        cr_assert_eq(np, s.calls);
        double r;
        synth_measure(&s, best, &r);
        cr_assert_leq(fabs(r - targets[i]), 0.002, "target %g got %g", targets[i], r);
        /* The spindle-like knob must be above the target (codebook makes bytes < knob). */
        cr_assert_gt(best, targets[i]);
    }
}

Test(eval_sweep, knob_search_unreachable)
{
    synth s = {.scale = 0.3, .p = 1.0, .floor = 0.15};   /* reachable: [0.153, 0.45] */
    sp_eval_search cfg = {.knob_min = 0.01, .knob_max = 1.0, .tol = 0.002, .max_iter = 12};
    sp_eval_probe pr[16];
    int np;
    double best;
    cr_assert_eq(sp_eval_knob_search(&cfg, 0.5, synth_measure, &s, pr, 16, &np, &best), 1);
    cr_assert_float_eq(best, 1.0, 1e-12);   /* nearest reachable: the largest knob */
    cr_assert_eq(sp_eval_knob_search(&cfg, 0.1, synth_measure, &s, pr, 16, &np, &best), 1);
    cr_assert_float_eq(best, 0.01, 1e-12);
    cr_assert_leq(np, 12);
}

static int failing_measure(void *user, double knob, double *r)
{
    (void)user;
    (void)knob;
    (void)r;
    return -EIO;
}

Test(eval_sweep, knob_search_propagates_errors)
{
    sp_eval_search cfg = {.knob_min = 0.01, .knob_max = 1.0, .tol = 0.002, .max_iter = 5};
    double best;
    int np;
    cr_assert_eq(sp_eval_knob_search(&cfg, 0.2, failing_measure, NULL, NULL, 0, &np, &best), -EIO);
}

Test(eval_sweep, parse_lists)
{
    double d[4];
    int v[3];
    cr_assert_eq(sp_eval_parse_doubles("0.1,0.2,0.3,0.5", d, 4), 4);
    cr_assert_float_eq(d[3], 0.5, 1e-15);
    cr_assert_eq(sp_eval_parse_doubles("0.1,0.2,0.3,0.5,0.6", d, 4), -EINVAL);
    cr_assert_eq(sp_eval_parse_doubles("0.1,x", d, 4), -EINVAL);
    cr_assert_eq(sp_eval_parse_ints("1024,2048,8000", v, 3), 3);
    cr_assert_eq(v[2], 8000);
    cr_assert_eq(sp_eval_parse_ints("1024;2", v, 3), -EINVAL);
    cr_assert_eq(sp_eval_parse_ints("", v, 3), -EINVAL);
}

/* ---- passkey prompts ---- */

/* Word counter: a stand-in tokenizer with one token per whitespace-separated word. */
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

/* A haystack of numbered sentences of varying length, with a few digit runs of its own. */
static char *make_haystack(int n_sent)
{
    size_t cap = (size_t)n_sent * 120 + 1, w = 0;
    char *h = malloc(cap);
    for (int i = 0; i < n_sent; i++) {
        int words = 3 + (i * 7) % 11;
        w += (size_t)snprintf(h + w, cap - w, "Sentence%d", i);
        for (int k = 0; k < words; k++)
            w += (size_t)snprintf(h + w, cap - w, " w%d", k);
        w += (size_t)snprintf(h + w, cap - w, i % 5 == 4 ? ".\n" : ". ");
    }
    return h;
}

/* Longest sentence of the haystack, in counted tokens. */
static const int max_sentence_words = 3 + 10 + 1;

Test(eval_needle, exactly_once_at_depth)
{
    char *hay = make_haystack(400);
    const double depths[5] = {0.0, 0.25, 0.5, 0.75, 1.0};
    for (int di = 0; di < 5; di++) {
        for (uint64_t seed = 1; seed <= 3; seed++) {
            sp_needle_spec sp = {.filler_tokens = 900, .depth = depths[di], .seed = seed, .n_digits = 5};
            sp_needle nd;
            cr_assert_eq(sp_needle_build(hay, strlen(hay), &sp, count_words, NULL, &nd), 0);
            cr_assert_eq(strlen(nd.passkey), 5);
            cr_assert_eq(sp_eval_count_occurrences(nd.text, nd.len, nd.passkey), 1, "depth %g seed %d",
                         depths[di], (int)seed);
            cr_assert_leq(nd.filler_tokens, 900);
            cr_assert_geq(nd.filler_tokens, 900 - max_sentence_words);
            /* Depth measured independently: words of the text before the needle. */
            int before = count_words(NULL, nd.text, nd.needle_off);
            cr_assert_eq(before, nd.tokens_before);
            double want = depths[di] * nd.filler_tokens;
            cr_assert_leq(fabs(before - want), max_sentence_words, "depth %g: %d tokens before, want %.0f",
                          depths[di], before, want);
            /* The needle sentence is where the struct says. */
            char s[96];
            int sl = sp_needle_sentence(nd.passkey, s, sizeof s);
            cr_assert_leq(nd.needle_len, (size_t)sl);
            cr_assert_eq(strncmp(nd.text + nd.needle_off, s + ((size_t)sl - nd.needle_len), nd.needle_len), 0);
            cr_assert_geq(nd.needle_len, (size_t)sl - 1);
            if (depths[di] == 0.0)
                cr_assert_eq(nd.needle_off, 0);
            if (depths[di] == 1.0)
                cr_assert_eq(nd.needle_off + nd.needle_len, nd.len);
            sp_needle_free(&nd);
        }
    }
    free(hay);
}

Test(eval_needle, seeded_reproducible)
{
    char *hay = make_haystack(300);
    sp_needle_spec sp = {.filler_tokens = 500, .depth = 0.4, .seed = 42};
    sp_needle a, b, c;
    cr_assert_eq(sp_needle_build(hay, strlen(hay), &sp, count_words, NULL, &a), 0);
    cr_assert_eq(sp_needle_build(hay, strlen(hay), &sp, count_words, NULL, &b), 0);
    cr_assert_eq(a.len, b.len);
    cr_assert_eq(memcmp(a.text, b.text, a.len), 0);
    cr_assert_str_eq(a.passkey, b.passkey);
    sp.seed = 43;
    cr_assert_eq(sp_needle_build(hay, strlen(hay), &sp, count_words, NULL, &c), 0);
    cr_assert(strcmp(a.passkey, c.passkey) || a.len != c.len || memcmp(a.text, c.text, a.len),
              "seeds 42 and 43 gave the same prompt");
    cr_assert_str_neq(a.passkey, c.passkey);
    sp_needle_free(&a);
    sp_needle_free(&b);
    sp_needle_free(&c);
    sp_needle_free(NULL);
    free(hay);
}

Test(eval_needle, passkey_redrawn_when_in_filler)
{
    /* A haystack full of every 2-digit number: any 2-digit passkey would clash, so the build must
     * fail rather than hide a second copy; 6 digits fit. */
    char hay[4096];
    size_t w = 0;
    for (int i = 10; i < 100; i++)
        w += (size_t)snprintf(hay + w, sizeof hay - w, "Item %d is here. ", i);
    sp_needle_spec sp = {.filler_tokens = 400, .depth = 0.5, .seed = 7, .n_digits = 2};   /* all 90 sentences */
    sp_needle nd;
    cr_assert_eq(sp_needle_build(hay, w, &sp, count_words, NULL, &nd), -EINVAL);
    cr_assert_null(nd.text);
    sp.n_digits = 6;
    cr_assert_eq(sp_needle_build(hay, w, &sp, count_words, NULL, &nd), 0);
    cr_assert_eq(sp_eval_count_occurrences(nd.text, nd.len, nd.passkey), 1);
    sp_needle_free(&nd);
}

Test(eval_needle, bad_spec)
{
    sp_needle nd;
    sp_needle_spec sp = {.filler_tokens = 100, .depth = 1.5, .seed = 1};
    cr_assert_eq(sp_needle_build("A b. C d.", 9, &sp, count_words, NULL, &nd), -EINVAL);
    sp.depth = 0.5;
    sp.filler_tokens = 1;   /* no sentence fits */
    cr_assert_eq(sp_needle_build("A b. C d.", 9, &sp, count_words, NULL, &nd), -EINVAL);
}

Test(eval_needle, answer_match)
{
    cr_assert(sp_eval_passkey_match(" 71432.", "71432"));
    cr_assert(sp_eval_passkey_match("The pass key is 71432", "71432"));
    cr_assert_not(sp_eval_passkey_match(" 714320", "71432"));
    cr_assert_not(sp_eval_passkey_match(" 7143", "71432"));
    cr_assert_not(sp_eval_passkey_match("12 then 71432", "71432"));
    cr_assert_not(sp_eval_passkey_match("no digits", "71432"));
}

/* With the model's tokenizer on the real haystack: the needle is within one sentence of the depth
 * in real tokens, and the filler's token count is what the sentences summed to (within the few
 * merges across sentence boundaries). */
typedef struct tokctx {
    const sp_tokenizer_t *t;
    int32_t *buf;
    size_t cap;
} tokctx;

static int count_tokens(void *user, const char *text, size_t len)
{
    tokctx *c = user;
    size_t n;
    int rc = sp_tokenizer_encode(c->t, text, len, false, false, c->buf, c->cap, &n);
    return rc < 0 ? rc : (int)n;
}

Test(eval_needle, real_tokenizer_and_haystack, .timeout = 60)
{
    const char *mp = model_fixture_path();
    const char *sh = getenv("SPINDLE_SHARED");
    char dir[4096];
    /* ctest sets SPINDLE_SHARED (the checkout's ../shared); by hand, ../shared of the cwd. */
    snprintf(dir, sizeof dir, "%s/data/haystack/pg_essays", sh ? sh : "../shared");
    size_t hl;
    char *hay = sp_eval_read_dir(dir, &hl);
    cr_assert_not_null(hay, "%s", dir);
    cr_assert_gt(hl, 100000);
    sp_gguf_t *g = sp_gguf_open(mp);
    cr_assert_not_null(g);
    sp_tokenizer_t *t = sp_tokenizer_from_gguf(g);
    cr_assert_not_null(t);
    tokctx c = {.t = t, .cap = 1 << 16};
    c.buf = malloc(c.cap * sizeof *c.buf);
    for (int di = 0; di <= 4; di++) {
        sp_needle_spec sp = {.filler_tokens = 1500, .depth = di / 4.0, .seed = 100 + (uint64_t)di};
        sp_needle nd;
        cr_assert_eq(sp_needle_build(hay, hl, &sp, count_tokens, &c, &nd), 0);
        cr_assert_eq(sp_eval_count_occurrences(nd.text, nd.len, nd.passkey), 1);
        int whole = count_tokens(&c, nd.text, nd.len);
        int needle_toks = count_tokens(&c, nd.text + nd.needle_off, nd.needle_len);
        cr_assert_leq(abs(whole - needle_toks - nd.filler_tokens), 1 + nd.n_sentences / 20,
                      "whole %d, needle %d, filler %d", whole, needle_toks, nd.filler_tokens);
        int before = count_tokens(&c, nd.text, nd.needle_off);
        cr_assert_leq(abs(before - nd.tokens_before), 1 + nd.needle_index / 20, "%d vs %d", before, nd.tokens_before);
        /* one sentence: the longest one around the boundary, bounded by the 400-byte cut */
        cr_assert_leq(fabs(before - sp.depth * nd.filler_tokens), 150.0, "depth %g: %d before", sp.depth, before);
        sp_needle_free(&nd);
    }
    free(c.buf);
    sp_tokenizer_free(t);
    sp_gguf_close(g);
    free(hay);
}

Test(eval_text, read_dir_errors)
{
    size_t n;
    cr_assert_null(sp_eval_read_dir("/nonexistent-dir-for-spindle", &n));
    cr_assert_null(sp_eval_read_dir("/proc/self", &n));   /* no .txt files */
}
