/* eval_tasks.c - RULER-style question-after-context prompts (multi-key needles, multi-value
 * needles, variable tracking) generated from a seed over a haystack, and their scorer.
 *
 * DESIGN: the filler is chosen exactly as for the passkey (eval_needle.c): haystack sentences from
 * a seeded start, wrapping, while their token counts fit the budget. Needles go to sentence
 * boundaries (k = 0..used: before filler sentence k), each at the boundary whose cumulative filler
 * token count is nearest to its depth x the filler tokens; several needles at one boundary keep
 * their index order, so a variable chain reads in order. Everything random comes from one
 * SplitMix64 stream seeded by spec->seed, so the same inputs give the same prompt. Keys, values and
 * variable names are redrawn while they occur in the filler or repeat, so each answer occurs in the
 * context only where a needle put it.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "sp_error.h"

static const char *const task_names[SP_TASK_COUNT] = {"passkey", "multikey", "multivalue", "vartrack"};

const char *sp_task_name(sp_task_kind k)
{
    return (unsigned)k < SP_TASK_COUNT ? task_names[k] : "?";
}

int sp_task_from_name(const char *name, sp_task_kind *k)
{
    for (int i = 0; i < SP_TASK_COUNT; i++)
        if (!strcmp(name, task_names[i])) {
            *k = (sp_task_kind)i;
            return 0;
        }
    return sp_error(EINVAL, "unknown task '%s' (allowed: passkey, multikey, multivalue, vartrack)", name);
}

static const char mk_intro[] = "Some special magic numbers are hidden within the following text. Make sure to "
                               "memorize it. I will quiz you about the numbers afterwards.";
static const char mk_needle[] = "One of the special magic numbers for {key} is: {value}.";

void sp_task_templates_default(sp_task_kind k, sp_task_templates *t)
{
    switch (k) {
    case SP_TASK_MULTIKEY:
        *t = (sp_task_templates){mk_intro, mk_needle,
                                 "What is the special magic number for {key} mentioned in the provided text? "
                                 "Answer with the number only.",
                                 "The special magic number for {key} mentioned in the provided text is"};
        break;
    case SP_TASK_MULTIVALUE:
        *t = (sp_task_templates){mk_intro, mk_needle,
                                 "What are all the special magic numbers for {key} mentioned in the provided text? "
                                 "Answer with the numbers only.",
                                 "The special magic numbers for {key} mentioned in the provided text are"};
        break;
    case SP_TASK_VARTRACK:
        *t = (sp_task_templates){"Memorize and track the chain of variable assignments hidden in the following text.",
                                 "VAR {key} = {value}.",
                                 "Question: Find all variables that are assigned the value {value} in the text above.",
                                 "Answer: According to the chain of variable assignments in the text above, {n} "
                                 "variables are assigned the value {value}, they are:"};
        break;
    default:   /* passkey: the retrieval driver's fixed texts */
        *t = (sp_task_templates){sp_eval_ret_intro, "The pass key is {value}. Remember it.", sp_eval_ret_question,
                                 sp_eval_ret_prefix};
        break;
    }
}

int sp_task_templates_set(sp_task_templates *t, const char *field, const char *text)
{
    if (!strcmp(field, "intro"))
        t->intro = text;
    else if (!strcmp(field, "needle"))
        t->needle = text;
    else if (!strcmp(field, "question"))
        t->question = text;
    else if (!strcmp(field, "prefix"))
        t->prefix = text;
    else
        return sp_error(EINVAL, "unknown template field '%s' (allowed: intro, needle, question, prefix)", field);
    return 0;
}

int sp_task_templates_check(sp_task_kind k, const sp_task_templates *t)
{
    if (!t->intro || !t->needle || !t->question || !t->prefix)
        return sp_error(EINVAL, "%s: a template text is missing", sp_task_name(k));
    if (!strstr(t->needle, "{key}") || !strstr(t->needle, "{value}"))
        return sp_error(EINVAL, "%s: the needle template '%s' needs {key} and {value}", sp_task_name(k), t->needle);
    const char *need = k == SP_TASK_VARTRACK ? "{value}" : "{key}";
    if (k != SP_TASK_PASSKEY && !strstr(t->question, need))
        return sp_error(EINVAL, "%s: the question template '%s' needs %s (which %s is asked)", sp_task_name(k),
                        t->question, need, k == SP_TASK_VARTRACK ? "value" : "key");
    return 0;
}

/* tmpl with {key}, {value}, {n} replaced; malloc'd, NULL when out of memory. */
static char *format(const char *tmpl, const char *key, const char *value, int n)
{
    char num[16];
    snprintf(num, sizeof num, "%d", n);
    size_t cap = strlen(tmpl) + 1, w = 0;
    for (const char *p = strstr(tmpl, "{"); p; p = strstr(p + 1, "{"))
        cap += strlen(key) + strlen(value) + strlen(num);
    char *out = malloc(cap);
    if (!out)
        return NULL;
    for (const char *p = tmpl; *p;) {
        const char *sub = NULL;
        size_t skip = 0;
        if (!strncmp(p, "{key}", 5))
            sub = key, skip = 5;
        else if (!strncmp(p, "{value}", 7))
            sub = value, skip = 7;
        else if (!strncmp(p, "{n}", 3))
            sub = num, skip = 3;
        if (sub) {
            memcpy(out + w, sub, strlen(sub));
            w += strlen(sub);
            p += skip;
        } else {
            out[w++] = *p++;
        }
    }
    out[w] = '\0';
    return out;
}

/* Whole-word occurrence of w in t[0..n) (t need not be NUL-terminated). */
static bool has_word(const char *t, size_t n, const char *w)
{
    size_t wl = strlen(w);
    if (!wl || wl > n)
        return false;
    for (size_t i = 0; i + wl <= n; i++)
        if (t[i] == w[0] && !memcmp(t + i, w, wl) && (i == 0 || !isalnum((unsigned char)t[i - 1])) &&
            (i + wl == n || !isalnum((unsigned char)t[i + wl])))
            return true;
    return false;
}

bool sp_task_text_has(const char *text, const char *answer)
{
    return has_word(text, strlen(text), answer);
}

int sp_task_score(const sp_task_prompt *p, const char *text)
{
    int found = 0;
    for (int i = 0; i < p->n_answers; i++)
        found += sp_task_text_has(text, p->answers[i]);
    return found;
}

void sp_task_prompt_free(sp_task_prompt *p)
{
    if (!p)
        return;
    free(p->context);
    free(p->question);
    free(p->prefix);
    memset(p, 0, sizeof *p);
}

/* The filler: sentence indices in text order and their token counts. */
typedef struct filler {
    const char *hay;
    size_t hay_len;
    size_t *starts;
    int n_sent;
    int *order, *toks, used, total;
    size_t bytes;
} filler;

static void sentence(const filler *f, int j, size_t *b, size_t *e)
{
    int s = f->order[j];
    *b = f->starts[s];
    *e = s + 1 < f->n_sent ? f->starts[s + 1] : f->hay_len;
}

/* Whether str occurs in the filler as a whole word (a digit run inside a longer number is no clash:
 * the scorer matches whole words too). */
static bool filler_has(const filler *f, const char *str)
{
    for (int j = 0; j < f->used; j++) {
        size_t b, e;
        sentence(f, j, &b, &e);
        if (has_word(f->hay + b, e - b, str))
            return true;
    }
    return false;
}

static int filler_pick(filler *f, int budget, uint64_t *rng, sp_eval_count_fn count, void *user)
{
    int rc = sp_eval_split_sentences(f->hay, f->hay_len, &f->starts, &f->n_sent);
    if (rc < 0)
        return sp_error(-rc, "task: out of memory splitting the haystack");
    if (f->n_sent == 0)
        return sp_error(EINVAL, "task: the haystack has no sentences");
    f->order = malloc((size_t)f->n_sent * sizeof *f->order);
    f->toks = malloc((size_t)f->n_sent * sizeof *f->toks);
    if (!f->order || !f->toks)
        return sp_error(ENOMEM, "task: out of memory");
    int first = (int)(sp_eval_rng_next(rng) % (uint64_t)f->n_sent);
    for (int j = 0; j < f->n_sent; j++) {
        int s = (first + j) % f->n_sent;
        size_t b = f->starts[s], e = s + 1 < f->n_sent ? f->starts[s + 1] : f->hay_len;
        int c = count(user, f->hay + b, e - b);
        if (c < 0)
            return c;
        if (f->total + c > budget)
            break;
        f->order[f->used] = s;
        f->toks[f->used++] = c;
        f->total += c;
        f->bytes += e - b + 1;
    }
    if (f->used == 0)
        return sp_error(EINVAL, "task: no haystack sentence fits in %d tokens", budget);
    return 0;
}

/* Boundary whose cumulative token count is nearest to depth x total (lowest on ties). */
static int boundary(const filler *f, double depth, int *before)
{
    double want = depth * f->total;
    int best = 0, cum = 0;
    double d_best = want;
    *before = 0;
    for (int k = 1; k <= f->used; k++) {
        cum += f->toks[k - 1];
        double d = cum > want ? cum - want : want - cum;
        if (d < d_best) {
            d_best = d;
            best = k;
            *before = cum;
        }
    }
    return best;
}

static const char *const adjectives[32] = {
    "amber",  "brisk",  "calm",   "dusty",  "eager",  "faint",  "gentle", "hollow", "icy",    "jolly",  "keen",
    "lively", "mellow", "nimble", "olive",  "plain",  "quiet",  "rapid",  "silent", "tawny",  "upper",  "vivid",
    "wary",   "young",  "zesty",  "bold",   "crisp",  "dim",    "frosty", "grand",  "humble", "lucky"};
static const char *const nouns[32] = {
    "otter",  "harbor", "lantern", "meadow", "falcon", "cobalt", "pepper",  "quarry", "saddle", "thistle", "walnut",
    "badger", "canyon", "dynamo",  "ember",  "fjord",  "garnet", "hazel",   "island", "juniper", "kettle", "lagoon",
    "marble", "nectar", "orchid",  "pebble", "quiver", "raven",  "spruce",  "tundra", "violet",  "willow"};

/* Draw a string of the kind into buf until it is absent from the filler and from taken[0..n). */
static int draw(filler *f, uint64_t *rng, int kind, int digits, char taken[][32], int n, char *buf)
{
    for (int attempt = 0; attempt < 1000; attempt++) {
        if (kind == 0) {   /* number */
            buf[0] = (char)('1' + sp_eval_rng_next(rng) % 9);
            for (int d = 1; d < digits; d++)
                buf[d] = (char)('0' + sp_eval_rng_next(rng) % 10);
            buf[digits] = '\0';
        } else if (kind == 1) {   /* key: adjective-noun */
            uint64_t r = sp_eval_rng_next(rng);
            snprintf(buf, 32, "%s-%s", adjectives[r % 32], nouns[(r >> 8) % 32]);
        } else {   /* variable: five capital letters */
            for (int d = 0; d < 5; d++)
                buf[d] = (char)('A' + sp_eval_rng_next(rng) % 26);
            buf[5] = '\0';
        }
        bool clash = filler_has(f, buf);
        for (int i = 0; i < n && !clash; i++)
            clash = !strcmp(taken[i], buf);
        if (!clash)
            return 0;
    }
    return sp_error(EINVAL, "task: cannot draw a %s absent from the filler",
                    kind == 0 ? "value" : kind == 1 ? "key" : "variable name");
}

int sp_task_build(const char *hay, size_t hay_len, const sp_task_spec *spec, sp_eval_count_fn count, void *user,
                  sp_task_prompt *out)
{
    memset(out, 0, sizeof *out);
    int nd = spec->n_digits ? spec->n_digits : 5, n = spec->n_needles;
    sp_task_kind k = spec->kind;
    if (!hay || !count || (k != SP_TASK_MULTIKEY && k != SP_TASK_MULTIVALUE && k != SP_TASK_VARTRACK) ||
        spec->filler_tokens < 1 || !(spec->depth >= 0.0 && spec->depth <= 1.0) || nd < 1 || nd > 18 || n < 1 ||
        n > SP_TASK_MAXN)
        return sp_error(EINVAL, "task: bad spec (task %s, filler_tokens %d, depth %g, digits %d, needles %d of 1..%d)",
                        sp_task_name(k), spec->filler_tokens, spec->depth, nd, n, SP_TASK_MAXN);
    int rc = sp_task_templates_check(k, &spec->tmpl);
    if (rc < 0)
        return rc;
    filler f = {.hay = hay, .hay_len = hay_len};
    char *needle[SP_TASK_MAXN] = {0};
    char *text = NULL;
    uint64_t rng = spec->seed * 0x9E3779B97F4A7C15ull + 0x5eed7a5cull;
    if ((rc = filler_pick(&f, spec->filler_tokens, &rng, count, user)) < 0)
        goto fail;

    /* keys[i] / vals[i]: what needle i says ({key}, {value}). */
    char keys[SP_TASK_MAXN][32], vals[SP_TASK_MAXN][32];
    double depth[SP_TASK_MAXN];
    for (int i = 0; i < n; i++) {
        if (k == SP_TASK_MULTIKEY) {
            if ((rc = draw(&f, &rng, 1, nd, keys, i, keys[i])) < 0 || (rc = draw(&f, &rng, 0, nd, vals, i, vals[i])) < 0)
                goto fail;
        } else if (k == SP_TASK_MULTIVALUE) {
            if (i == 0 && (rc = draw(&f, &rng, 1, nd, keys, 0, keys[0])) < 0)
                goto fail;
            if (i > 0)
                memcpy(keys[i], keys[0], sizeof keys[0]);
            if ((rc = draw(&f, &rng, 0, nd, vals, i, vals[i])) < 0)
                goto fail;
        } else {
            if ((rc = draw(&f, &rng, 2, nd, keys, i, keys[i])) < 0)
                goto fail;
            if (i == 0 && (rc = draw(&f, &rng, 0, nd, vals, 0, vals[0])) < 0)
                goto fail;
            if (i > 0)
                memcpy(vals[i], keys[i - 1], sizeof vals[0]);
        }
        if (k == SP_TASK_VARTRACK)
            depth[i] = spec->depth + (1.0 - spec->depth) * i / n;
        else
            depth[i] = i == 0 ? spec->depth : (double)(sp_eval_rng_next(&rng) >> 11) / (double)(1ull << 53);
    }
    if (k == SP_TASK_VARTRACK) {
        snprintf(out->query, sizeof out->query, "%s", vals[0]);
        for (int i = 0; i < n; i++)
            memcpy(out->answers[i], keys[i], sizeof keys[i]);
        out->n_answers = n;
    } else {
        snprintf(out->query, sizeof out->query, "%s", keys[0]);
        out->n_answers = k == SP_TASK_MULTIKEY ? 1 : n;
        for (int i = 0; i < out->n_answers; i++)
            memcpy(out->answers[i], vals[i], sizeof vals[i]);
    }
    size_t extra = 0;
    for (int i = 0; i < n; i++) {
        if (!(needle[i] = format(spec->tmpl.needle, keys[i], vals[i], out->n_answers))) {
            rc = sp_error(ENOMEM, "task: out of memory");
            goto fail;
        }
        extra += strlen(needle[i]) + 1;
    }
    const char *qk = k == SP_TASK_VARTRACK ? "" : out->query, *qv = k == SP_TASK_VARTRACK ? out->query : "";
    out->question = format(spec->tmpl.question, qk, qv, out->n_answers);
    out->prefix = format(spec->tmpl.prefix, qk, qv, out->n_answers);
    text = malloc(f.bytes + extra + 1);
    if (!out->question || !out->prefix || !text) {
        rc = sp_error(ENOMEM, "task: out of memory");
        goto fail;
    }
    int at[SP_TASK_MAXN];
    for (int i = 0; i < n; i++)
        at[i] = boundary(&f, depth[i], &out->tokens_before[i]);

    /* Before sentence j (and after the last one for j == used): the needles at boundary j, in
     * index order; a space joins two pieces where neither side has whitespace. */
    size_t w = 0;
    for (int j = 0; j <= f.used; j++) {
        for (int i = 0; i < n; i++) {
            if (at[i] != j)
                continue;
            if (w && !isspace((unsigned char)text[w - 1]))
                text[w++] = ' ';
            out->needle_off[i] = w;
            out->needle_len[i] = strlen(needle[i]);
            memcpy(text + w, needle[i], out->needle_len[i]);
            w += out->needle_len[i];
        }
        if (j == f.used)
            break;
        size_t b, e;
        sentence(&f, j, &b, &e);
        if (w == 0)
            while (b < e && isspace((unsigned char)hay[b]))
                b++;
        if (w && !isspace((unsigned char)text[w - 1]) && b < e && !isspace((unsigned char)hay[b]))
            text[w++] = ' ';
        memcpy(text + w, hay + b, e - b);
        w += e - b;
    }
    while (w && isspace((unsigned char)text[w - 1]))
        w--;
    text[w] = '\0';
    out->context = text;
    out->len = w;
    out->n_needles = n;
    out->filler_tokens = f.total;
    for (int i = 0; i < n; i++)
        free(needle[i]);
    free(f.starts);
    free(f.order);
    free(f.toks);
    return 0;
fail:
    for (int i = 0; i < n && i < SP_TASK_MAXN; i++)
        free(needle[i]);
    free(f.starts);
    free(f.order);
    free(f.toks);
    free(text);
    sp_task_prompt_free(out);
    return rc;
}
