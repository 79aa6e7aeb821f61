/* test_kv_budget.c - per-layer budgets: SpindleKV linear schedule (means, endpoints, corrected
 * second case, fallbacks), PyramidKV integer schedule and fallbacks, ZigZagKV, PyramidInfer. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kv_budget.h"
#include "sp_error.h"
#include "support/notice_capture.h"

static double mean_share(const int64_t *kept, int L, int64_t lc)
{
    double s = 0;
    for (int i = 0; i < L; i++)
        s += (double)kept[i] / (double)lc;
    return s / L;
}

Test(kv_budget, spindle_linear_first_case_hand_numbers)
{
    /* l = 1032, l_w = 32 -> l_c = 1000; r = 0.5 -> r_c = (516 - 32)/1000 = 0.484 <= α = 0.525 */
    int64_t kept[30];
    double rc[30];
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 0.5, 0.05, 30, kept, rc), 0);
    cr_assert_float_eq(rc[0], 2 * 0.484 - 0.05, 1e-12);
    cr_assert_float_eq(rc[29], 0.05, 1e-12);
    cr_assert_eq(kept[0], 918);
    cr_assert_eq(kept[29], 50);
    for (int i = 1; i < 30; i++)
        cr_assert_leq(kept[i], kept[i - 1], "schedule must shrink with depth");
    cr_assert(fabs(mean_share(kept, 30, 1000) - 0.484) <= 1.0 / 1000, "mean %f vs r_c 0.484",
              mean_share(kept, 30, 1000));
}

Test(kv_budget, spindle_linear_second_case_corrected)
{
    /* r = 0.8: r_c = (825.6 - 32)/1000 = 0.7936 > α -> r_c(0) = 1, r_c(m-1) = 2r_c - 1 = 0.5872
     * (the paper's printed 1 - 2r_c would be negative). */
    int64_t kept[30];
    double rc[30];
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 0.8, 0.05, 30, kept, rc), 0);
    cr_assert_float_eq(rc[0], 1.0, 1e-12);
    cr_assert_float_eq(rc[29], 2 * 0.7936 - 1, 1e-9);
    cr_assert_eq(kept[0], 1000);
    cr_assert_eq(kept[29], 587);
    cr_assert(fabs(mean_share(kept, 30, 1000) - 0.7936) <= 1.0 / 1000);
}

Test(kv_budget, spindle_linear_mean_equals_rc_over_a_grid)
{
    int64_t kept[64];
    double rc[64];
    int64_t ls[] = {100, 1000, 4096, 8192, 12345};
    int Ls[] = {1, 2, 7, 30, 64};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 5; b++)
            for (double r = 0.08; r < 1.0; r += 0.07) {
                int64_t l = ls[a], w = 32, lc = l - w;
                int L = Ls[b];
                double r_c = (r * l - w) / lc;
                if (r_c <= 0.05)
                    continue;
                cr_assert_eq(sp_kv_budget_spindle_linear(l, w, r, 0.05, L, kept, rc), 0);
                double m = mean_share(kept, L, lc);
                cr_assert(m <= r_c + 1e-12 && m > r_c - 1.0 / lc - 1e-12,
                          "l=%lld L=%d r=%.2f: mean %.6f vs r_c %.6f", (long long)l, L, r, m, r_c);
                for (int i = 0; i < L; i++)
                    cr_assert(kept[i] >= 0 && kept[i] <= lc);
                if (L > 1) {
                    double alpha = 0.525;
                    cr_assert_float_eq(rc[0], r_c <= alpha ? 2 * r_c - 0.05 : 1.0, 1e-9);
                    cr_assert_float_eq(rc[L - 1], r_c <= alpha ? 0.05 : 2 * r_c - 1, 1e-9);
                }
            }
}

Test(kv_budget, spindle_linear_fallbacks)
{
    int64_t kept[4];
    notice_capture nc;
    notice_capture_start(&nc);
    /* r_c = (0.07·1032 - 32)/1000 = 0.04024 <= β: uniform 40 with a warning */
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 0.07, 0.05, 4, kept, NULL), 0);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(kept[i], 40);
    cr_assert_eq(nc.count, 1);
    cr_assert(strstr(nc.last, "uniform"), "notice: %s", nc.last);
    /* r·l < l_w: nothing but the window */
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 0.01, 0.05, 4, kept, NULL), 0);
    cr_assert_eq(kept[0], 0);
    /* r >= 1 and l <= l_w: no eviction */
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 1.0, 0.05, 4, kept, NULL), 0);
    cr_assert_eq(kept[3], 1000);
    cr_assert_eq(sp_kv_budget_spindle_linear(20, 32, 0.3, 0.05, 4, kept, NULL), 0);
    cr_assert_eq(kept[0], 0);
    notice_capture_stop();
    cr_assert_lt(sp_kv_budget_spindle_linear(1032, 32, 0.0, 0.05, 4, kept, NULL), 0);
}

Test(kv_budget, pyramidkv_schedule_hand_numbers)
{
    /* B = 512, w = 32 -> B-w = 480; min = 480//20 = 24; max = 960 - 24 = 936 (<= l-w = 1968);
     * step = (936 - 24)//29 = 31; layer λ keeps 936 - 31λ. */
    int64_t kept[30];
    cr_assert_eq(sp_kv_budget_pyramidkv(2000, 32, 512, 30, 20, kept), 0);
    cr_assert_eq(kept[0], 936);
    cr_assert_eq(kept[1], 905);
    cr_assert_eq(kept[29], 936 - 29 * 31);
}

Test(kv_budget, pyramidkv_fallbacks_and_clamp)
{
    int64_t kept[30];
    /* l < B: untouched */
    cr_assert_eq(sp_kv_budget_pyramidkv(400, 32, 512, 30, 20, kept), 0);
    for (int i = 0; i < 30; i++)
        cr_assert_eq(kept[i], 368);
    /* B <= l < 2(B-w) = 960: uniform B - w */
    cr_assert_eq(sp_kv_budget_pyramidkv(900, 32, 512, 30, 20, kept), 0);
    for (int i = 0; i < 30; i++)
        cr_assert_eq(kept[i], 480);
    /* l = 965: max = 936 > l-w = 933 -> max = 933, min = 960 - 933 = 27, step = 906//29 = 31 */
    cr_assert_eq(sp_kv_budget_pyramidkv(965, 32, 512, 30, 20, kept), 0);
    cr_assert_eq(kept[0], 933);
    cr_assert_eq(kept[29], 933 - 29 * 31);
}

Test(kv_budget, zigzag_hand_numbers)
{
    int64_t kept[2];
    double U[2] = {1, 3};
    /* B_avg = 100, floor 10: B_0 = 10 + 90·2·1/4 = 55, B_1 = 10 + 90·2·3/4 = 145 */
    cr_assert_eq(sp_kv_budget_zigzag(10000, 32, 132, 2, U, kept), 0);
    cr_assert_eq(kept[0], 55);
    cr_assert_eq(kept[1], 145);
    double Ue[2] = {0.3, 0.3};
    cr_assert_eq(sp_kv_budget_zigzag(10000, 32, 132, 2, Ue, kept), 0);
    cr_assert_eq(kept[0], 100);
    cr_assert_eq(kept[1], 100);
    cr_assert_lt(sp_kv_budget_zigzag(10000, 32, 132, 2, NULL, kept), 0);
    /* U: scores 4,3,2,1 (total 10); 90% needs 4+3+2 = 9 -> 3 of 4; 50% -> 2 of 4 */
    float s[8] = {1, 4, 2, 3, 1, 4, 2, 3};
    cr_assert_float_eq(sp_kv_zigzag_u(s, 2, 4, 0.9), 0.75, 1e-12);
    cr_assert_float_eq(sp_kv_zigzag_u(s, 2, 4, 0.5), 0.5, 1e-12);
}

Test(kv_budget, pyramidinfer_schedule)
{
    int64_t kept[30];
    cr_assert_eq(sp_kv_budget_pyramidinfer(4128, 32, 1056, 30, 64, kept), 0); /* ρ = 1024/4096 */
    double m = mean_share(kept, 30, 4096);
    cr_assert(fabs(m - 0.25) < 0.02, "mean %f", m);
    cr_assert_eq(kept[0], 2048);
    for (int i = 1; i < 30; i++)
        cr_assert_leq(kept[i], kept[i - 1]);
    cr_assert_geq(kept[29], 64, "minimum 64 tokens");
}

Test(kv_budget, compute_dispatch_and_layer_mask)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    int64_t kept[30], ref[30];
    o.ratio = 0.5;
    snprintf(o.evict_layers, sizeof o.evict_layers, "2-29");
    cr_assert_eq(sp_kv_budget_compute(&o, 1032, 30, NULL, kept), 0);
    cr_assert_eq(sp_kv_budget_spindle_linear(1032, 32, 0.5, 0.05, 30, ref, NULL), 0);
    cr_assert_eq(kept[0], 1000, "layers outside evict_layers keep everything");
    cr_assert_eq(kept[1], 1000);
    cr_assert_eq(kept[2], ref[2]);
    o.policy = SP_POLICY_PYRAMIDKV;
    o.budget_tokens = 512;
    snprintf(o.evict_layers, sizeof o.evict_layers, "all");
    cr_assert_eq(sp_kv_budget_compute(&o, 2000, 30, NULL, kept), 0);
    cr_assert_eq(kept[0], 936);
    o.policy = SP_POLICY_SNAPKV;
    cr_assert_eq(sp_kv_budget_compute(&o, 2000, 30, NULL, kept), 0);
    cr_assert_eq(kept[0], 480);
    cr_assert_eq(kept[29], 480);
    o.policy = SP_POLICY_ZIGZAG;
    cr_assert_lt(sp_kv_budget_compute(&o, 2000, 30, NULL, kept), 0, "zigzag needs U");
}
