/* kv_select.c - score pooling, deterministic top-k and per-policy token selection.
 *
 * DESIGN: selection works on one layer at a time. Per query head the chosen context indices are
 * marked into a per-KV-head uint64 membership array of length cap (bit g = query head g of the
 * group); the union is then compacted into ascending positions. Cost per layer: O(h·l_c·log l_c)
 * for the sorts, O(h_kv·l_c) memory for the marks. Nothing here runs in the decode loop.
 */
#include "kv_select.h"

#include "backend_stage.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sp_error.h"

int sp_kv_selection_init(sp_kv_selection *s, int n_q_heads, int n_kv_heads, int64_t l,
                         int64_t window)
{
    memset(s, 0, sizeof *s);
    if (n_q_heads < 1 || n_kv_heads < 1 || n_q_heads % n_kv_heads || l < 0 || window < 0)
        return sp_error(EINVAL, "kv selection: bad shape (q heads %d, kv heads %d, l %lld, "
                                "window %lld)", n_q_heads, n_kv_heads, (long long)l,
                        (long long)window);
    if (n_q_heads / n_kv_heads > SP_KV_MAX_GROUP)
        return sp_error(EINVAL, "kv selection: %d query heads per KV head; at most %d supported",
                        n_q_heads / n_kv_heads, SP_KV_MAX_GROUP);
    s->n_q_heads = n_q_heads;
    s->n_kv_heads = n_kv_heads;
    s->group = n_q_heads / n_kv_heads;
    s->l = l;
    s->window = window < l ? window : l;
    s->cap = l - s->window;
    size_t rows = (size_t)n_kv_heads * (size_t)(s->cap > 0 ? s->cap : 1);
    s->n_kept = calloc((size_t)n_kv_heads, sizeof *s->n_kept);
    s->pos = malloc(rows * sizeof *s->pos);
    s->mask = malloc(rows * sizeof *s->mask);
    if (!s->n_kept || !s->pos || !s->mask) {
        sp_kv_selection_free(s);
        return sp_error(ENOMEM, "kv selection: out of memory for %lld tokens", (long long)l);
    }
    return 0;
}

void sp_kv_selection_free(sp_kv_selection *s)
{
    if (!s)
        return;
    free(s->n_kept);
    free(s->pos);
    free(s->mask);
    memset(s, 0, sizeof *s);
}

int sp_kv_selection_mu(const sp_kv_selection *s, int kv_head, int64_t i)
{
    return __builtin_popcountll(s->mask[(size_t)kv_head * s->cap + i]);
}

int sp_kv_pool_1d(const float *in, int64_t n, int kernel, sp_pool_type type, float *out)
{
    if (kernel < 1 || kernel % 2 == 0 || n < 0 || (n > 0 && (!in || !out)))
        return sp_error(EINVAL, "kv pool: kernel %d must be odd and >= 1", kernel);
    int64_t r = kernel / 2;
    for (int64_t i = 0; i < n; i++) {
        int64_t a = i - r < 0 ? 0 : i - r, b = i + r >= n ? n - 1 : i + r;
        if (type == SP_POOL_MAX) {
            float m = in[a];
            for (int64_t j = a + 1; j <= b; j++)
                if (in[j] > m)
                    m = in[j];
            out[i] = m;
        } else {
            float acc = 0;
            for (int64_t j = a; j <= b; j++)
                acc += in[j];
            out[i] = acc / (float)kernel;
        }
    }
    return 0;
}

int sp_kv_scores_prepare(const float *raw, int n_heads, int64_t l, int64_t window, int kernel,
                         sp_pool_type type, bool divide_by_l_minus_a, float *out)
{
    int64_t lc = l > window ? l - window : 0;
    if (lc == 0)
        return 0;
    float *tmp = malloc((size_t)lc * sizeof *tmp);
    if (!tmp)
        return sp_error(ENOMEM, "kv scores: out of memory");
    int rc = 0;
    for (int h = 0; h < n_heads && rc == 0; h++) {
        const float *src = raw + (size_t)h * l;
        for (int64_t a = 0; a < lc; a++)
            tmp[a] = divide_by_l_minus_a ? src[a] / (float)(l - a) : src[a];
        rc = sp_kv_pool_1d(tmp, lc, kernel, type, out + (size_t)h * lc);
    }
    free(tmp);
    return rc;
}

typedef struct {
    float s;
    int32_t i;
} scored;

/* Score descending, index ascending on ties: a total order, so qsort's instability is harmless. */
static int cmp_scored(const void *pa, const void *pb)
{
    const scored *a = pa, *b = pb;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static int cmp_i32(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

int64_t sp_kv_topk(const float *s, int64_t n, int64_t k, int32_t *idx)
{
    if (n < 0 || n > INT32_MAX)
        return sp_error(EINVAL, "kv topk: n=%lld out of range", (long long)n);
    if (k > n)
        k = n;
    if (k <= 0)
        return 0;
    if (k == n) {
        for (int64_t i = 0; i < n; i++)
            idx[i] = (int32_t)i;
        return n;
    }
    scored *v = malloc((size_t)n * sizeof *v);
    if (!v)
        return sp_error(ENOMEM, "kv topk: out of memory for %lld scores", (long long)n);
    for (int64_t i = 0; i < n; i++) {
        v[i].s = isnan(s[i]) ? -INFINITY : s[i];
        v[i].i = (int32_t)i;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_scored);
    for (int64_t i = 0; i < k; i++)
        idx[i] = v[i].i;
    free(v);
    qsort(idx, (size_t)k, sizeof *idx, cmp_i32);
    return k;
}

/* Turn the per-token marks of each KV head into the ascending union lists. marks: [kv][cap]. */
static void compact(sp_kv_selection *s, const uint64_t *marks)
{
    for (int h = 0; h < s->n_kv_heads; h++) {
        const uint64_t *m = marks + (size_t)h * s->cap;
        int32_t *pos = s->pos + (size_t)h * s->cap;
        uint64_t *mask = s->mask + (size_t)h * s->cap;
        int64_t n = 0;
        for (int64_t a = 0; a < s->cap; a++)
            if (m[a]) {
                pos[n] = (int32_t)a;
                mask[n++] = m[a];
            }
        s->n_kept[h] = n;
    }
}

static uint64_t group_bits(int group)
{
    return group >= 64 ? ~0ull : (1ull << group) - 1;
}

/* ---- the backend seam: top-k and score preparation run on a backend when one is given (the CPU
 * backend runs exactly the functions above), else here directly. ---- */

static int run_topk(sp_backend_t *be, const void *d) { return sp_backend_topk(be, d); }
static int run_prepare(sp_backend_t *be, const void *d) { return sp_backend_scores_prepare(be, d); }

/* On a device backend the host arrays go through its memory (backend_stage.h): these run once per
 * layer and prompt, after the prefill. */
static int64_t topk_on(sp_backend_t *be, const float *sc, int64_t n, int64_t k, int32_t *idx)
{
    if (!be)
        return sp_kv_topk(sc, n, k, idx);
    int64_t kk = k < 0 ? 0 : (k > n ? n : k);
    sp_topk_desc d = {.s = sc, .n_rows = 1, .n = n, .ld = n, .k = kk, .idx = idx, .idx_ld = kk > 0 ? kk : 1};
    sp_stage_arg a[] = {{(void **)&d.s, sizeof(float) * (size_t)n, true, false},
                        {(void **)&d.idx, sizeof(int32_t) * (size_t)(kk > 0 ? kk : 1), false, true}};
    int rc = sp_backend_run_staged(be, a, 2, run_topk, &d);
    return rc < 0 ? rc : kk;
}

static int scores_prepare_on(sp_backend_t *be, const float *raw, int n_heads, int64_t l, int64_t window,
                             int kernel, sp_pool_type type, bool divide, float *out)
{
    if (!be)
        return sp_kv_scores_prepare(raw, n_heads, l, window, kernel, type, divide, out);
    sp_scores_prepare_desc d = {.raw = raw, .n_heads = n_heads, .l = l, .window = window, .kernel = kernel,
                                .pool_type = (int)type, .divide_by_l_minus_a = divide, .out = out};
    int64_t lc = l - window > 0 ? l - window : 0;
    sp_stage_arg a[] = {{(void **)&d.raw, sizeof(float) * (size_t)n_heads * (size_t)l, true, false},
                        {(void **)&d.out, sizeof(float) * (size_t)n_heads * (size_t)lc, false, true}};
    return sp_backend_run_staged(be, a, 2, run_prepare, &d);
}

static int select_scores_on(sp_backend_t *be, sp_kv_selection *s, const float *scores, int64_t keep,
                            sp_gqa_mode mode);

int sp_kv_select_scores(sp_kv_selection *s, const float *scores, int64_t keep, sp_gqa_mode mode)
{
    return select_scores_on(NULL, s, scores, keep, mode);
}

static int select_scores_on(sp_backend_t *be, sp_kv_selection *s, const float *scores, int64_t keep,
                            sp_gqa_mode mode)
{
    int64_t cap = s->cap;
    if (cap == 0) {
        memset(s->n_kept, 0, (size_t)s->n_kv_heads * sizeof *s->n_kept);
        return 0;
    }
    if (keep < 0)
        keep = 0;
    if (keep > cap)
        keep = cap;
    int rc = 0;
    uint64_t *marks = calloc((size_t)s->n_kv_heads * cap, sizeof *marks);
    int32_t *idx = malloc((size_t)cap * sizeof *idx);
    float *mean = mode == SP_GQA_KV_HEAD ? malloc((size_t)cap * sizeof *mean) : NULL;
    if (!marks || !idx || (mode == SP_GQA_KV_HEAD && !mean)) {
        rc = sp_error(ENOMEM, "kv select: out of memory");
        goto free_scratch;
    }
    for (int h = 0; h < s->n_kv_heads; h++) {
        uint64_t *m = marks + (size_t)h * cap;
        if (mode == SP_GQA_KV_HEAD) {
            for (int64_t a = 0; a < cap; a++) {
                float acc = 0;
                for (int g = 0; g < s->group; g++)
                    acc += scores[(size_t)(h * s->group + g) * cap + a];
                mean[a] = acc / (float)s->group;
            }
            int64_t n = topk_on(be, mean, cap, keep, idx);
            if (n < 0) {
                rc = (int)n;
                goto free_scratch;
            }
            for (int64_t i = 0; i < n; i++)
                m[idx[i]] = group_bits(s->group);
        } else {
            for (int g = 0; g < s->group; g++) {
                int64_t n = topk_on(be, scores + (size_t)(h * s->group + g) * cap, cap, keep, idx);
                if (n < 0) {
                    rc = (int)n;
                    goto free_scratch;
                }
                for (int64_t i = 0; i < n; i++)
                    m[idx[i]] |= 1ull << g;
            }
        }
    }
    compact(s, marks);
free_scratch:
    free(marks);
    free(idx);
    free(mean);
    return rc;
}

void sp_kv_select_all(sp_kv_selection *s)
{
    for (int h = 0; h < s->n_kv_heads; h++) {
        for (int64_t a = 0; a < s->cap; a++) {
            s->pos[(size_t)h * s->cap + a] = (int32_t)a;
            s->mask[(size_t)h * s->cap + a] = group_bits(s->group);
        }
        s->n_kept[h] = s->cap;
    }
}

int sp_kv_select_streaming(sp_kv_selection *s, int64_t sinks, int64_t budget)
{
    if (sinks < 0 || budget < 0)
        return sp_error(EINVAL, "kv streaming: sinks=%lld and budget=%lld must be >= 0",
                        (long long)sinks, (long long)budget);
    int64_t recent = budget - sinks;
    if (recent < 0)
        recent = 0;
    /* Context tokens [0, cap): sinks at the front, then the recent ones that precede the window. */
    int64_t recent_ctx = recent - s->window;
    if (recent_ctx < 0)
        recent_ctx = 0;
    for (int h = 0; h < s->n_kv_heads; h++) {
        int64_t n = 0;
        for (int64_t a = 0; a < s->cap; a++)
            if (a < sinks || a >= s->cap - recent_ctx) {
                s->pos[(size_t)h * s->cap + n] = (int32_t)a;
                s->mask[(size_t)h * s->cap + n++] = group_bits(s->group);
            }
        s->n_kept[h] = n;
    }
    return 0;
}

static int pyramidinfer_on(sp_backend_t *be, sp_kv_selection *s, const float *score, int64_t keep,
                           int64_t sinks, const sp_kv_selection *prev);

int sp_kv_select_pyramidinfer(sp_kv_selection *s, const float *score, int64_t keep, int64_t sinks,
                              const sp_kv_selection *prev)
{
    return pyramidinfer_on(NULL, s, score, keep, sinks, prev);
}

static int pyramidinfer_on(sp_backend_t *be, sp_kv_selection *s, const float *score, int64_t keep,
                           int64_t sinks, const sp_kv_selection *prev)
{
    int64_t cap = s->cap;
    if (prev && (prev->cap != cap || prev->n_kv_heads != s->n_kv_heads))
        return sp_error(EINVAL, "kv pyramidinfer: previous layer selection has another shape");
    if (cap == 0) {
        memset(s->n_kept, 0, (size_t)s->n_kv_heads * sizeof *s->n_kept);
        return 0;
    }
    int rc = 0;
    float *cand = malloc((size_t)cap * sizeof *cand);
    int32_t *idx = malloc((size_t)cap * sizeof *idx);
    uint64_t *marks = calloc((size_t)cap, sizeof *marks);
    if (!cand || !idx || !marks) {
        rc = sp_error(ENOMEM, "kv pyramidinfer: out of memory");
        goto free_scratch;
    }
    /* Non-candidates (not kept by the previous layer) rank below any real score; forced sinks
     * rank above. Candidates are then the top `keep` of this order. */
    for (int64_t a = 0; a < cap; a++)
        cand[a] = prev ? -INFINITY : (isnan(score[a]) ? -FLT_MAX : score[a]);
    if (prev)
        for (int64_t i = 0; i < prev->n_kept[0]; i++) {
            int32_t a = prev->pos[i];
            cand[a] = isnan(score[a]) ? -FLT_MAX : score[a];
        }
    int64_t n_cand = prev ? prev->n_kept[0] : cap;
    for (int64_t a = 0; a < sinks && a < cap; a++)
        if (cand[a] != -INFINITY)
            cand[a] = INFINITY;
    int64_t k = keep < n_cand ? keep : n_cand;
    int64_t n = topk_on(be, cand, cap, k, idx);
    if (n < 0) {
        rc = (int)n;
        goto free_scratch;
    }
    for (int64_t i = 0; i < n; i++)
        marks[idx[i]] = group_bits(s->group);
    for (int h = 0; h < s->n_kv_heads; h++) {
        int64_t m = 0;
        for (int64_t a = 0; a < cap; a++)
            if (marks[a]) {
                s->pos[(size_t)h * cap + m] = (int32_t)a;
                s->mask[(size_t)h * cap + m++] = marks[a];
            }
        s->n_kept[h] = m;
    }
free_scratch:
    free(cand);
    free(idx);
    free(marks);
    return rc;
}

int sp_kv_select_layer(const sp_kv_opts *o, bool evict, int64_t kept, const sp_kv_layer_scores *in,
                       sp_kv_selection *s)
{
    return sp_kv_select_layer_on(NULL, o, evict, kept, in, s);
}

int sp_kv_select_layer_on(sp_backend_t *be, const sp_kv_opts *o, bool evict, int64_t kept,
                          const sp_kv_layer_scores *in, sp_kv_selection *s)
{
    if (!evict || o->policy == SP_POLICY_FULL || s->cap == 0) {
        sp_kv_select_all(s);
        return 0;
    }
    switch (o->policy) {
    case SP_POLICY_STREAMING:
        return sp_kv_select_streaming(s, o->sinks, kept + s->window);
    case SP_POLICY_PYRAMIDINFER:
        if (!in || !in->pinfer)
            return sp_error(EINVAL, "kv select: policy pyramidinfer needs the weighted head-mean "
                                    "attention scores");
        return pyramidinfer_on(be, s, in->pinfer, kept, o->sinks, in->prev);
    case SP_POLICY_H2O:
    case SP_POLICY_SNAPKV:
    case SP_POLICY_PYRAMIDKV:
    case SP_POLICY_SPINDLE:
    case SP_POLICY_ZIGZAG: {
        bool h2o = o->policy == SP_POLICY_H2O;
        const float *raw = in ? (h2o ? in->colsums : in->window_scores) : NULL;
        if (!raw)
            return sp_error(EINVAL, "kv select: policy %s needs %s", sp_kv_policy_name(o->policy),
                            h2o ? "the full attention column sums" : "the window scores");
        float *prep = malloc((size_t)s->n_q_heads * s->cap * sizeof *prep);
        if (!prep)
            return sp_error(ENOMEM, "kv select: out of memory");
        /* h2o: accumulated attention as is (no pooling, no division). */
        int rc = scores_prepare_on(be, raw, s->n_q_heads, s->l, s->window, h2o ? 1 : (int)o->pool_kernel,
                                   o->pool_type, h2o ? false : o->divide_by_l_minus_a, prep);
        if (rc == 0)
            rc = select_scores_on(be, s, prep, kept, o->gqa_mode);
        free(prep);
        return rc;
    }
    default:
        return sp_error(EINVAL, "kv select: unknown policy %d", (int)o->policy);
    }
}

/* One query row's causal softmax against KV head kh, added (times w) into acc[0..=i]. */
static void softmax_row_add(const float *qi, const float *k, int64_t i, int d, float scale,
                            float w, float *row, float *acc)
{
    float mx = -INFINITY;
    for (int64_t j = 0; j <= i; j++) {
        const float *kj = k + (size_t)j * d;
        float dot = 0;
        for (int c = 0; c < d; c++)
            dot += qi[c] * kj[c];
        row[j] = dot * scale;
        if (row[j] > mx)
            mx = row[j];
    }
    float sum = 0;
    for (int64_t j = 0; j <= i; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    float inv = w / sum;
    for (int64_t j = 0; j <= i; j++)
        acc[j] += row[j] * inv;
}

int sp_kv_window_scores_ref(const float *q, const float *k, int n_q_heads, int n_kv_heads,
                            int64_t l, int d, int64_t window, float *out)
{
    if (n_q_heads < 1 || n_kv_heads < 1 || n_q_heads % n_kv_heads || d < 1 || l < 0)
        return sp_error(EINVAL, "kv window scores: bad shape");
    float *row = malloc((size_t)(l > 0 ? l : 1) * sizeof *row);
    if (!row)
        return sp_error(ENOMEM, "kv window scores: out of memory");
    int group = n_q_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)d);
    int64_t w = window < l ? window : l;
    memset(out, 0, (size_t)n_q_heads * l * sizeof *out);
    for (int h = 0; h < n_q_heads; h++) {
        const float *kh = k + (size_t)(h / group) * l * d;
        for (int64_t i = l - w; i < l; i++)
            softmax_row_add(q + ((size_t)h * l + i) * d, kh, i, d, scale, 1.0f, row,
                            out + (size_t)h * l);
    }
    free(row);
    return 0;
}

int sp_kv_pyramidinfer_scores_ref(const float *q, const float *k, int n_q_heads, int n_kv_heads,
                                  int64_t l, int d, float *out)
{
    if (n_q_heads < 1 || n_kv_heads < 1 || n_q_heads % n_kv_heads || d < 1 || l < 1)
        return sp_error(EINVAL, "kv pyramidinfer scores: bad shape");
    float *row = malloc((size_t)l * sizeof *row);
    if (!row)
        return sp_error(ENOMEM, "kv pyramidinfer scores: out of memory");
    int group = n_q_heads / n_kv_heads;
    float scale = 1.0f / sqrtf((float)d);
    int64_t nq = (l + 4) / 5; /* ceil(0.2 l) */
    memset(out, 0, (size_t)l * sizeof *out);
    for (int h = 0; h < n_q_heads; h++) {
        const float *kh = k + (size_t)(h / group) * l * d;
        for (int64_t t = 0; t < nq; t++) {
            int64_t i = l - nq + t;
            float w = nq > 1 ? 1.0f + 0.2f * (float)t / (float)(nq - 1) : 1.0f;
            softmax_row_add(q + ((size_t)h * l + i) * d, kh, i, d, scale, w / n_q_heads, row, out);
        }
    }
    free(row);
    return 0;
}
