/* test_kv_select.c - pooling, top-k ties, window scores vs a brute-force softmax, GQA modes and
 * the per-policy selections. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv_select.h"
#include "sp_error.h"
#include "support/xorshift.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) /* uniform [-1, 1) */
{
    return (float)xorshift64_unit(&rng) * 2.0f - 1.0f;
}

Test(kv_select, pool_hand_cases)
{
    float in[10] = {0, 5, 0, 0, 0, 0, 0, 0, 1, 0}, out[10];
    float mx3[10] = {5, 5, 5, 0, 0, 0, 0, 1, 1, 1};
    cr_assert_eq(sp_kv_pool_1d(in, 10, 3, SP_POOL_MAX, out), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_float_eq(out[i], mx3[i], 0, "max3[%d] = %f", i, out[i]);
    /* avg divides by the kernel also at the edges (zero padding counted) */
    float av3[10] = {5 / 3.f, 5 / 3.f, 5 / 3.f, 0, 0, 0, 0, 1 / 3.f, 1 / 3.f, 1 / 3.f};
    cr_assert_eq(sp_kv_pool_1d(in, 10, 3, SP_POOL_AVG, out), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_float_eq(out[i], av3[i], 1e-6, "avg3[%d] = %f", i, out[i]);
    /* kernel 7 (radius 3): the 5 at index 1 reaches 0..4; the 1 at 8 reaches 5..9 */
    float mx7[10] = {5, 5, 5, 5, 5, 1, 1, 1, 1, 1};
    cr_assert_eq(sp_kv_pool_1d(in, 10, 7, SP_POOL_MAX, out), 0);
    for (int i = 0; i < 10; i++)
        cr_assert_float_eq(out[i], mx7[i], 0);
    float neg[3] = {-3, -1, -2};
    cr_assert_eq(sp_kv_pool_1d(neg, 3, 7, SP_POOL_MAX, out), 0);
    cr_assert_float_eq(out[0], -1, 0, "padding never wins a max");
    cr_assert_lt(sp_kv_pool_1d(in, 10, 4, SP_POOL_MAX, out), 0);
}

Test(kv_select, topk_ties_go_to_lower_index)
{
    float s[6] = {1, 3, 3, 2, 3, NAN};
    int32_t idx[6];
    cr_assert_eq(sp_kv_topk(s, 6, 2, idx), 2);
    cr_assert(idx[0] == 1 && idx[1] == 2, "%d %d", idx[0], idx[1]);
    cr_assert_eq(sp_kv_topk(s, 6, 4, idx), 4);
    cr_assert(idx[0] == 1 && idx[1] == 2 && idx[2] == 3 && idx[3] == 4);
    cr_assert_eq(sp_kv_topk(s, 6, 5, idx), 5);
    cr_assert_eq(idx[0], 0, "NaN ranks last: index 5 excluded");
    cr_assert_eq(idx[4], 4);
    float eq[5] = {7, 7, 7, 7, 7};
    cr_assert_eq(sp_kv_topk(eq, 5, 3, idx), 3);
    cr_assert(idx[0] == 0 && idx[1] == 1 && idx[2] == 2);
    cr_assert_eq(sp_kv_topk(eq, 5, 9, idx), 5);
}

/* Brute-force window scores in double straight from the definition. */
static void brute_scores(const float *q, const float *k, int hq, int hk, int l, int d, int w,
                         double *out)
{
    int group = hq / hk;
    memset(out, 0, sizeof(double) * hq * l);
    for (int h = 0; h < hq; h++)
        for (int i = l - w; i < l; i++) {
            double row[256], mx = -1e300, sum = 0;
            for (int j = 0; j <= i; j++) {
                double s = 0;
                for (int c = 0; c < d; c++)
                    s += (double)q[((size_t)h * l + i) * d + c] *
                         k[((size_t)(h / group) * l + j) * d + c];
                row[j] = s / sqrt((double)d);
                mx = row[j] > mx ? row[j] : mx;
            }
            for (int j = 0; j <= i; j++)
                sum += (row[j] = exp(row[j] - mx));
            for (int j = 0; j <= i; j++)
                out[h * l + j] += row[j] / sum;
        }
}

Test(kv_select, window_scores_match_brute_force_softmax)
{
    enum { HQ = 6, HK = 2, L = 70, D = 16, W = 9 };
    float *q = malloc(sizeof(float) * HQ * L * D), *k = malloc(sizeof(float) * HK * L * D);
    float out[HQ * L];
    double ref[HQ * L];
    for (int i = 0; i < HQ * L * D; i++)
        q[i] = 2 * frand();
    for (int i = 0; i < HK * L * D; i++)
        k[i] = 2 * frand();
    cr_assert_eq(sp_kv_window_scores_ref(q, k, HQ, HK, L, D, W, out), 0);
    brute_scores(q, k, HQ, HK, L, D, W, ref);
    double total = 0;
    for (int i = 0; i < HQ * L; i++) {
        cr_assert(fabs(out[i] - ref[i]) <= 1e-5 + 1e-5 * fabs(ref[i]), "[%d] %g vs %g", i,
                  out[i], ref[i]);
        total += out[i];
    }
    cr_assert_float_eq(total, (double)HQ * W, 1e-3, "each softmax row sums to 1");
    /* window = l gives the full causal column sums (h2o) */
    cr_assert_eq(sp_kv_window_scores_ref(q, k, HQ, HK, L, D, L, out), 0);
    double *full = malloc(sizeof(double) * HQ * L);
    brute_scores(q, k, HQ, HK, L, D, L, full);
    for (int i = 0; i < HQ * L; i++)
        cr_assert(fabs(out[i] - full[i]) <= 1e-4 + 1e-5 * fabs(full[i]));
    free(full);
    free(q);
    free(k);
}

Test(kv_select, gqa_query_head_union_and_masks)
{
    /* 4 query heads, 2 KV heads, l = 10, window 4 -> 6 context tokens; keep 2 per query head */
    sp_kv_selection s;
    cr_assert_eq(sp_kv_selection_init(&s, 4, 2, 10, 4), 0);
    float sc[4][6] = {{9, 8, 0, 0, 0, 0},   /* q0 -> {0,1}   (kv 0) */
                      {0, 9, 8, 0, 0, 0},   /* q1 -> {1,2}   (kv 0) */
                      {0, 0, 0, 0, 5, 5},   /* q2 -> {4,5}   (kv 1) */
                      {0, 0, 0, 0, 5, 5}};  /* q3 -> {4,5}   (kv 1) */
    cr_assert_eq(sp_kv_select_scores(&s, &sc[0][0], 2, SP_GQA_QUERY_HEAD), 0);
    cr_assert_eq(s.n_kept[0], 3);
    cr_assert(s.pos[0] == 0 && s.pos[1] == 1 && s.pos[2] == 2);
    cr_assert(s.mask[0] == 1 && s.mask[1] == 3 && s.mask[2] == 2);
    cr_assert_eq(sp_kv_selection_mu(&s, 0, 1), 2);
    cr_assert_eq(s.n_kept[1], 2);
    cr_assert(s.pos[s.cap + 0] == 4 && s.pos[s.cap + 1] == 5 && s.mask[s.cap] == 3);
    /* kv_head: mean of q0,q1 = {4.5, 8.5, 4, 0,...} -> {0,1}, all bits */
    cr_assert_eq(sp_kv_select_scores(&s, &sc[0][0], 2, SP_GQA_KV_HEAD), 0);
    cr_assert_eq(s.n_kept[0], 2);
    cr_assert(s.pos[0] == 0 && s.pos[1] == 1 && s.mask[0] == 3 && s.mask[1] == 3);
    sp_kv_selection_free(&s);
}

Test(kv_select, streaming_sinks_and_recent)
{
    sp_kv_selection s;
    cr_assert_eq(sp_kv_selection_init(&s, 2, 1, 20, 4), 0);
    /* budget 8 = 2 sinks + 6 recent; the last 4 are the window, so context keeps {0,1,14,15} */
    cr_assert_eq(sp_kv_select_streaming(&s, 2, 8), 0);
    cr_assert_eq(s.n_kept[0], 4);
    cr_assert(s.pos[0] == 0 && s.pos[1] == 1 && s.pos[2] == 14 && s.pos[3] == 15);
    sp_kv_selection_free(&s);
}

Test(kv_select, policies_through_select_layer)
{
    enum { HQ = 2, HK = 1, L = 40, W = 8, LC = L - W };
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    o.window = W;
    float raw[HQ * L], prep[HQ * LC];
    for (int i = 0; i < HQ * L; i++)
        raw[i] = frand() + 1.0f;
    sp_kv_selection s;
    cr_assert_eq(sp_kv_selection_init(&s, HQ, HK, L, W), 0);
    sp_kv_layer_scores in = {.window_scores = raw, .colsums = raw};

    /* snapkv: pool (max, 7) then top-5 per query head */
    o.policy = SP_POLICY_SNAPKV;
    cr_assert_eq(sp_kv_select_layer(&o, true, 5, &in, &s), 0);
    int32_t idx[LC];
    uint64_t want[LC] = {0};
    for (int h = 0; h < HQ; h++) {
        cr_assert_eq(sp_kv_pool_1d(raw + h * L, LC, 7, SP_POOL_MAX, prep + h * LC), 0);
        cr_assert_eq(sp_kv_topk(prep + h * LC, LC, 5, idx), 5);
        for (int i = 0; i < 5; i++)
            want[idx[i]] |= 1ull << h;
    }
    int64_t n = 0;
    for (int a = 0; a < LC; a++)
        if (want[a]) {
            cr_assert_eq(s.pos[n], a);
            cr_assert_eq(s.mask[n++], want[a]);
        }
    cr_assert_eq(s.n_kept[0], n);

    /* h2o: raw column sums, no pooling */
    o.policy = SP_POLICY_H2O;
    cr_assert_eq(sp_kv_select_layer(&o, true, 5, &in, &s), 0);
    memset(want, 0, sizeof want);
    for (int h = 0; h < HQ; h++) {
        cr_assert_eq(sp_kv_topk(raw + h * L, LC, 5, idx), 5);
        for (int i = 0; i < 5; i++)
            want[idx[i]] |= 1ull << h;
    }
    n = 0;
    for (int a = 0; a < LC; a++)
        if (want[a])
            cr_assert_eq(s.pos[n++], a);
    cr_assert_eq(s.n_kept[0], n);

    /* a layer outside evict_layers keeps everything; missing scores are an error */
    cr_assert_eq(sp_kv_select_layer(&o, false, 5, &in, &s), 0);
    cr_assert_eq(s.n_kept[0], LC);
    sp_kv_layer_scores none = {0};
    cr_assert_lt(sp_kv_select_layer(&o, true, 5, &none, &s), 0);
    cr_assert(strstr(sp_last_error(), "column sums"), "%s", sp_last_error());
    sp_kv_selection_free(&s);
}

Test(kv_select, divide_by_l_minus_a_as_printed)
{
    /* l = 6, window 2: context columns 0..3 divided by l - a = 6, 5, 4, 3 */
    float raw[6] = {6, 5, 4, 6, 1, 1}, out[4];
    cr_assert_eq(sp_kv_scores_prepare(raw, 1, 6, 2, 1, SP_POOL_MAX, true, out), 0);
    cr_assert_float_eq(out[0], 1.0f, 1e-7);
    cr_assert_float_eq(out[1], 1.0f, 1e-7);
    cr_assert_float_eq(out[2], 1.0f, 1e-7);
    cr_assert_float_eq(out[3], 2.0f, 1e-7);
}

Test(kv_select, pyramidinfer_nested_with_sinks)
{
    enum { L = 50, W = 4 };
    float sc[L];
    for (int i = 0; i < L; i++)
        sc[i] = frand();
    sc[0] = sc[1] = -5; /* sinks must be kept regardless */
    sp_kv_selection a, b;
    cr_assert_eq(sp_kv_selection_init(&a, 3, 1, L, W), 0);
    cr_assert_eq(sp_kv_selection_init(&b, 3, 1, L, W), 0);
    cr_assert_eq(sp_kv_select_pyramidinfer(&a, sc, 20, 2, NULL), 0);
    cr_assert_eq(a.n_kept[0], 20);
    cr_assert(a.pos[0] == 0 && a.pos[1] == 1);
    for (int i = 0; i < L; i++)
        sc[i] = frand();
    cr_assert_eq(sp_kv_select_pyramidinfer(&b, sc, 10, 2, &a), 0);
    cr_assert_eq(b.n_kept[0], 10);
    for (int64_t i = 0; i < b.n_kept[0]; i++) {
        bool found = false;
        for (int64_t j = 0; j < a.n_kept[0]; j++)
            found |= a.pos[j] == b.pos[i];
        cr_assert(found, "layer sets must be nested (pos %d)", b.pos[i]);
    }
    cr_assert(b.pos[0] == 0 && b.pos[1] == 1);
    sp_kv_selection_free(&a);
    sp_kv_selection_free(&b);
}

Test(kv_select, pyramidinfer_reference_weights)
{
    /* all-equal keys: every causal row is uniform, so the score is a known sum */
    enum { H = 2, L = 10, D = 4 };
    float q[H * L * D], k[L * D], out[L];
    for (int i = 0; i < H * L * D; i++)
        q[i] = frand();
    for (int i = 0; i < L * D; i++)
        k[i] = 0.5f;
    cr_assert_eq(sp_kv_pyramidinfer_scores_ref(q, k, H, 1, L, D, out), 0);
    /* last ceil(0.2·10) = 2 rows: i = 8 (weight 1.0, 1/9 each), i = 9 (weight 1.2, 1/10 each) */
    cr_assert_float_eq(out[0], 1.0 / 9 + 1.2 / 10, 1e-6);
    cr_assert_float_eq(out[9], 1.2 / 10, 1e-6);
}
