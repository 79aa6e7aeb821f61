/* eval_needle.c - passkey retrieval prompts: haystack sentences around one needle sentence that
 * carries a seeded random passkey, placed at a requested depth.
 *
 * DESIGN: the haystack is cut into sentences (ending after . ! ? or a newline, together with the
 * whitespace that follows), so concatenating consecutive sentences reproduces the original text.
 * Sentences are taken from a seeded start, wrapping around, while their summed token counts stay
 * within the filler budget; the needle goes to the sentence boundary whose cumulative token count is
 * nearest to depth x filler tokens, so it is within one sentence of the requested depth by
 * construction. Token counts come from the caller's counter (the model's tokenizer in the CLI):
 * per-sentence counts add up to the count of the concatenation up to the rare merge across a
 * boundary, which the caller absorbs with a margin.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "sp_error.h"

uint64_t sp_eval_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int sp_needle_sentence(const char *passkey, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, " The pass key is %s. Remember it.", passkey);
    return n < 0 || (size_t)n >= cap ? -ENOSPC : n;
}

int sp_eval_count_occurrences(const char *hay, size_t len, const char *needle)
{
    size_t nl = strlen(needle);
    if (nl == 0 || nl > len)
        return 0;
    int c = 0;
    for (size_t i = 0; i + nl <= len;) {
        if (!memcmp(hay + i, needle, nl)) {
            c++;
            i += nl;
        } else {
            i++;
        }
    }
    return c;
}

bool sp_eval_passkey_match(const char *answer, const char *passkey)
{
    const char *p = answer;
    while (*p && !isdigit((unsigned char)*p))
        p++;
    size_t n = 0;
    while (isdigit((unsigned char)p[n]))
        n++;
    return n > 0 && n == strlen(passkey) && !memcmp(p, passkey, n);
}

/* Sentence boundaries of text: starts[0..*n) (offsets), each sentence running to the next start
 * (the last to len). A sentence ends after . ! ? followed by whitespace, or before a newline; the
 * whitespace that follows belongs to the NEXT sentence, so that a sentence tokenized alone gets the
 * same tokens as inside the concatenation (byte-level BPE attaches a leading space to its word).
 * Long runs without punctuation are cut before a space after 400 bytes. Caller frees *starts. */
int sp_eval_split_sentences(const char *t, size_t len, size_t **starts, int *n)
{
    size_t cap = 1024, k = 0;
    size_t *s = malloc(cap * sizeof *s);
    if (!s)
        return -ENOMEM;
    size_t i = 0;
    while (i < len && isspace((unsigned char)t[i]))
        i++;
    size_t cur = i;
    for (; i < len; i++) {
        char ch = t[i];
        size_t end = 0;
        if (i + 1 < len && !isspace((unsigned char)ch) &&
            (t[i + 1] == '\n' || ((ch == '.' || ch == '!' || ch == '?') && isspace((unsigned char)t[i + 1]))))
            end = i + 1;
        else if (ch == ' ' && i - cur > 400)
            end = i;
        if (!end || end == cur)
            continue;
        if (k == cap) {
            size_t *ns = realloc(s, 2 * cap * sizeof *s);
            if (!ns) {
                free(s);
                return -ENOMEM;
            }
            s = ns;
            cap *= 2;
        }
        s[k++] = cur;
        cur = end;
    }
    /* The rest is a sentence unless it is only whitespace. */
    bool blank = true;
    for (size_t j = cur; j < len && blank; j++)
        blank = isspace((unsigned char)t[j]);
    if (!blank) {
        if (k == cap) {
            size_t *ns = realloc(s, (cap + 1) * sizeof *s);
            if (!ns) {
                free(s);
                return -ENOMEM;
            }
            s = ns;
        }
        s[k++] = cur;
    }
    *starts = s;
    *n = (int)k;
    return 0;
}

void sp_needle_free(sp_needle *n)
{
    if (!n)
        return;
    free(n->text);
    memset(n, 0, sizeof *n);
}

int sp_needle_build(const char *hay, size_t hay_len, const sp_needle_spec *spec, sp_eval_count_fn count,
                    void *user, sp_needle *out)
{
    memset(out, 0, sizeof *out);
    int nd = spec->n_digits ? spec->n_digits : 5;
    if (!hay || !count || spec->filler_tokens < 1 || !(spec->depth >= 0.0 && spec->depth <= 1.0) || nd < 1 ||
        nd > 18)
        return sp_error(EINVAL, "needle: bad spec (filler_tokens %d, depth %g, digits %d)", spec->filler_tokens,
                        spec->depth, nd);
    size_t *starts = NULL;
    int n_sent = 0, rc;
    int *toks = NULL, *order = NULL;
    char *text = NULL;
    if ((rc = sp_eval_split_sentences(hay, hay_len, &starts, &n_sent)) < 0)
        return sp_error(-rc, "needle: out of memory splitting the haystack");
    if (n_sent == 0) {
        free(starts);
        return sp_error(EINVAL, "needle: the haystack has no sentences");
    }
    uint64_t rng = spec->seed * 0x2545F4914F6CDD1Dull + 0x1234567ull;
    int first = (int)(sp_eval_rng_next(&rng) % (uint64_t)n_sent);

    /* Take sentences from `first`, wrapping, while they fit the budget (each used at most once). */
    size_t cap_sent = (size_t)n_sent;
    toks = malloc(cap_sent * sizeof *toks);
    order = malloc(cap_sent * sizeof *order);
    if (!toks || !order) {
        rc = sp_error(ENOMEM, "needle: out of memory");
        goto fail;
    }
    int used = 0, total = 0;
    size_t bytes = 0;
    for (int j = 0; j < n_sent; j++) {
        int s = (first + j) % n_sent;
        size_t b = starts[s], e = s + 1 < n_sent ? starts[s + 1] : hay_len;
        int c = count(user, hay + b, e - b);
        if (c < 0) {
            rc = c;
            goto fail;
        }
        if (total + c > spec->filler_tokens)
            break;
        toks[used] = c;
        order[used] = s;
        used++;
        total += c;
        bytes += e - b + 1;   /* +1: a space added where a wrapped sentence lacks one */
    }
    if (used == 0) {
        rc = sp_error(EINVAL, "needle: no haystack sentence fits in %d tokens", spec->filler_tokens);
        goto fail;
    }
    /* Boundary k (needle before sentence k) whose cumulative count is nearest to depth * total. */
    double want = spec->depth * total;
    int k_best = 0, cum = 0, before = 0;
    double d_best = want;
    for (int k = 1; k <= used; k++) {
        cum += toks[k - 1];
        double d = cum > want ? cum - want : want - cum;
        if (d < d_best) {
            d_best = d;
            k_best = k;
            before = cum;
        }
    }

    char key[20], needle[96];
    int nl = 0;
    text = malloc(bytes + sizeof needle + 2);
    if (!text) {
        rc = sp_error(ENOMEM, "needle: out of memory");
        goto fail;
    }
    /* Draw passkeys until the digits do not occur anywhere in the filler. */
    for (int attempt = 0;; attempt++) {
        key[0] = (char)('1' + sp_eval_rng_next(&rng) % 9);
        for (int d = 1; d < nd; d++)
            key[d] = (char)('0' + sp_eval_rng_next(&rng) % 10);
        key[nd] = '\0';
        bool clash = false;
        for (int j = 0; j < used && !clash; j++) {
            int s = order[j];
            size_t b = starts[s], e = s + 1 < n_sent ? starts[s + 1] : hay_len;
            clash = sp_eval_count_occurrences(hay + b, e - b, key) > 0;
        }
        if (!clash)
            break;
        if (attempt == 1000) {
            rc = sp_error(EINVAL, "needle: cannot draw a %d-digit passkey absent from the filler", nd);
            goto fail;
        }
    }
    if ((nl = sp_needle_sentence(key, needle, sizeof needle)) < 0) {
        rc = sp_error(ENOSPC, "needle: sentence too long");
        goto fail;
    }

    size_t w = 0;
    for (int j = 0; j <= used; j++) {
        if (j == k_best) {
            out->needle_off = w;
            memcpy(text + w, needle, (size_t)nl);
            w += (size_t)nl;
        }
        if (j == used)
            break;
        int s = order[j];
        size_t b = starts[s], e = s + 1 < n_sent ? starts[s + 1] : hay_len;
        /* Only the haystack's first sentence lacks leading whitespace (after a wrap). */
        if (w && !isspace((unsigned char)text[w - 1]) && !isspace((unsigned char)hay[b]))
            text[w++] = ' ';
        memcpy(text + w, hay + b, e - b);
        w += e - b;
    }
    while (w && isspace((unsigned char)text[w - 1]))
        w--;
    /* The text starts with a word: drop the leading whitespace (and shift the needle with it). */
    size_t lead = 0;
    while (lead < w && isspace((unsigned char)text[lead]))
        lead++;
    memmove(text, text + lead, w - lead);
    w -= lead;
    text[w] = '\0';
    size_t noff = out->needle_off > lead ? out->needle_off - lead : 0;
    size_t nskip = out->needle_off < lead ? lead - out->needle_off : 0;
    out->needle_off = noff;
    nl -= (int)nskip;

    out->text = text;
    out->len = w;
    memcpy(out->passkey, key, (size_t)nd + 1);
    out->needle_len = w - out->needle_off < (size_t)nl ? w - out->needle_off : (size_t)nl;
    out->n_sentences = used;
    out->needle_index = k_best;
    out->filler_tokens = total;
    out->tokens_before = before;
    free(starts);
    free(toks);
    free(order);
    return 0;
fail:
    free(starts);
    free(toks);
    free(order);
    free(text);
    memset(out, 0, sizeof *out);
    return rc;
}
