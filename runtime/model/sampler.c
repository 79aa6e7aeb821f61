/* sampler.c - greedy / temperature + top-k + top-p sampling (see sampler.h).
 *
 * Candidate selection is a bounded min-heap over the vocabulary (O(V log k)), then an in-place heap
 * sort of the survivors into descending order (no qsort: glibc's may allocate). Ties order by lower
 * token id first so results do not depend on the heap's history.
 */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "sp_error.h"

struct sp_sampler {
    sp_sampler_params p;
    int n_vocab;
    uint64_t state, inc;     /* PCG32 */
    int32_t *idx;            /* [n_vocab] candidate ids */
    float *prob;             /* [n_vocab] */
};

sp_sampler_params sp_sampler_default_params(void)
{
    sp_sampler_params p = { .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 0 };
    return p;
}

static uint32_t pcg32(sp_sampler_t *s)
{
    uint64_t old = s->state;
    s->state = old * 6364136223846793005ULL + s->inc;
    uint32_t xs = (uint32_t)(((old >> 18) ^ old) >> 27), rot = (uint32_t)(old >> 59);
    return (xs >> rot) | (xs << ((32 - rot) & 31));
}

void sp_sampler_seed(sp_sampler_t *s, uint64_t seed)
{
    s->state = 0;
    s->inc = (seed << 1) | 1u;
    pcg32(s);
    s->state += 0x853c49e6748fea9bULL ^ seed;
    pcg32(s);
}

sp_sampler_t *sp_sampler_new(int n_vocab, const sp_sampler_params *pp)
{
    sp_sampler_params p = pp ? *pp : sp_sampler_default_params();
    if (n_vocab < 1 || isnan(p.temperature) || isnan(p.top_p)) {
        sp_error(EINVAL, "sampler: bad parameters (n_vocab=%d temperature=%g top_p=%g)", n_vocab, (double)p.temperature,
                 (double)p.top_p);
        return NULL;
    }
    sp_sampler_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto oom;
    s->p = p;
    s->n_vocab = n_vocab;
    s->idx = malloc(sizeof(int32_t) * (size_t)n_vocab);
    s->prob = malloc(sizeof(float) * (size_t)n_vocab);
    if (!s->idx || !s->prob)
        goto oom;
    sp_sampler_seed(s, p.seed);
    return s;
oom:
    sp_sampler_free(s);
    sp_error(ENOMEM, "sampler: out of memory for %d tokens", n_vocab);
    return NULL;
}

void sp_sampler_free(sp_sampler_t *s)
{
    if (!s)
        return;
    free(s->idx);
    free(s->prob);
    free(s);
}

static float key(const float *l, int32_t i)
{
    float v = l[i];
    return isnan(v) ? -INFINITY : v;
}

/* a ranks below b: smaller logit, or equal logit and larger id. */
static int below(const float *l, int32_t a, int32_t b)
{
    float x = key(l, a), y = key(l, b);
    return x < y || (x == y && a > b);
}

static void sift_down(const float *l, int32_t *h, int n, int i)
{
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            return;
        if (c + 1 < n && below(l, h[c + 1], h[c]))
            c++;
        if (!below(l, h[c], h[i]))
            return;
        int32_t t = h[c];
        h[c] = h[i];
        h[i] = t;
        i = c;
    }
}

int32_t sp_sampler_greedy(const float *logits, int n_vocab)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (below(logits, best, i))
            best = i;
    return best;
}

bool sp_sampler_is_greedy(const sp_sampler_t *s)
{
    return s->p.temperature <= 0.0f || s->p.top_k == 1;
}

sp_sampler_params sp_sampler_get_params(const sp_sampler_t *s)
{
    return s->p;
}

double sp_sampler_draw_u01(sp_sampler_t *s)
{
    return (double)pcg32(s) / 4294967296.0;
}

int32_t sp_sampler_sample(sp_sampler_t *s, const float *logits)
{
    int V = s->n_vocab;
    if (sp_sampler_is_greedy(s))
        return sp_sampler_greedy(logits, V);
    int k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : V;
    int32_t *h = s->idx;
    /* min-heap of the k best: root = worst kept */
    for (int i = 0; i < k; i++)
        h[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(logits, h, k, i);
    for (int32_t i = k; i < V; i++)
        if (below(logits, h[0], i)) {
            h[0] = i;
            sift_down(logits, h, k, 0);
        }
    /* heap sort: moving the worst to the end leaves h descending */
    for (int n = k; n > 1; n--) {
        int32_t t = h[0];
        h[0] = h[n - 1];
        h[n - 1] = t;
        sift_down(logits, h, n - 1, 0);
    }
    float mx = key(logits, h[0]);
    if (mx == -INFINITY)
        return h[0];
    double sum = 0.0;
    int n = 0;
    for (; n < k; n++) {
        float v = key(logits, h[n]);
        if (v == -INFINITY)
            break;
        s->prob[n] = expf((v - mx) / s->p.temperature);
        sum += s->prob[n];
    }
    /* top-p over the sorted candidates */
    if (s->p.top_p < 1.0f) {
        double cum = 0.0, lim = (double)s->p.top_p * sum;
        int keep = 0;
        while (keep < n) {
            cum += s->prob[keep++];
            if (cum >= lim)
                break;
        }
        n = keep > 0 ? keep : 1;
        sum = cum;
    }
    double u = sp_sampler_draw_u01(s) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->prob[i];
        if (u < acc)
            return h[i];
    }
    return h[n - 1];
}
