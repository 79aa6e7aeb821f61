/* test_segment_attn.c - decode attention over segments: fused value-scatter form vs explicit
 * reconstruction (both RoPE layouts, coded tail), the reference's RoPE vs the forward pass's
 * sp_op_rope, `full` and `spindle` (r = 1, θ > 1) against exact fp32 attention. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "fp16.h"
#include "kv_budget.h"
#include "ops.h"
#include "segment_attn.h"
#include "sp_error.h"
#include "support/kv_fixture.h"
#include "support/xorshift.h"

static uint64_t rng = 0xfeedfacecafebeefull;
static double urand(void) { return xorshift64_unit(&rng); }

/* Clustered K/V [hk][l][d] so the codebook has something to merge (drawn from this file's rng). */
static void make_kv(float *k, float *v, int hk, int l, int d) { kv_fixture_clustered(&rng, k, v, hk, l, d); }

/* Exact attention of `group` queries over keys k [n][d] (pre-RoPE, rotated here with the forward
 * pass's sp_op_rope) at positions pos, values v, in double. */
static void exact_attn(const float *k, const float *v, const int32_t *pos, int n, int d,
                       const float *q, int group, const float *table, sp_rope_mode mode,
                       float *out)
{
    float *kr = malloc(sizeof(float) * n * d);
    memcpy(kr, k, sizeof(float) * n * d);
    sp_op_rope(kr, n, 1, d, d, pos, table, mode);
    double *p = malloc(sizeof(double) * n);
    for (int g = 0; g < group; g++) {
        double mx = -1e300, sum = 0;
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int i = 0; i < d; i++)
                s += (double)q[g * d + i] * kr[j * d + i];
            p[j] = s / sqrt((double)d);
            mx = p[j] > mx ? p[j] : mx;
        }
        for (int j = 0; j < n; j++)
            sum += (p[j] = exp(p[j] - mx));
        for (int i = 0; i < d; i++) {
            double acc = 0;
            for (int j = 0; j < n; j++)
                acc += p[j] * v[j * d + i];
            out[g * d + i] = (float)(acc / sum);
        }
    }
    free(kr);
    free(p);
}

static double max_diff(const float *a, const float *b, int n)
{
    double m = 0;
    for (int i = 0; i < n; i++)
        m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

typedef struct {
    int hq, hk, l, d, w, keep;
    sp_rope_mode mode;
} shape;

Test(segment_attn, value_scatter_equals_explicit_reconstruction)
{
    shape shapes[] = {{9, 3, 700, 64, 32, 150, SP_ROPE_NORM}, {9, 3, 700, 64, 32, 150, SP_ROPE_NEOX},
                      {4, 2, 300, 32, 16, 40, SP_ROPE_NORM}, {16, 1, 257, 128, 8, 100, SP_ROPE_NEOX},
                      {2, 2, 90, 16, 4, 86, SP_ROPE_NORM}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        shape s = shapes[si];
        int G = s.hq / s.hk, npos = s.l + 16;
        float *k = malloc(sizeof(float) * s.hk * s.l * s.d), *v = malloc(sizeof(float) * s.hk * s.l * s.d);
        make_kv(k, v, s.hk, s.l, s.d);
        float *sc = malloc(sizeof(float) * s.hq * (s.l - s.w));
        for (int i = 0; i < s.hq * (s.l - s.w); i++)
            sc[i] = (float)urand();
        sp_kv_selection sel;
        cr_assert_eq(sp_kv_selection_init(&sel, s.hq, s.hk, s.l, s.w), 0);
        cr_assert_eq(sp_kv_select_scores(&sel, sc, s.keep, SP_GQA_QUERY_HEAD), 0);
        sp_kv_segment seg;
        cr_assert_eq(sp_kv_segment_build(&seg, 0, k, v, s.d, &sel, true, 0.95f, 0.9f, NULL), 0);
        sp_kv_tail t;
        cr_assert_eq(sp_kv_tail_init(&t, &seg, 8, 0.95f, 0.9f), 0);
        for (int j = 0; j < 6; j++) { /* tail: some tokens reuse entries, some add */
            float nk[16 * 128], nv[16 * 128];
            for (int i = 0; i < s.hk * s.d; i++) {
                nk[i] = j % 2 ? k[i + j * s.d] : (float)(urand() * 4 - 2);
                nv[i] = j % 2 ? v[i + j * s.d] : (float)(urand() * 2 - 1);
            }
            cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, s.l + j), 0);
        }
        float *table = malloc(sizeof(float) * npos * s.d);
        sp_rope_table_fill(table, npos, s.d, 10000.0);
        float q[16 * 128], a[16 * 128], b[16 * 128];
        for (int h = 0; h < s.hk; h++) {
            for (int i = 0; i < G * s.d; i++)
                q[i] = (float)(urand() * 2 - 1);
            size_t wf = sp_segattn_work_floats(&seg, &t, h);
            float *work = malloc(sizeof(float) * wf);
            cr_assert_eq(sp_segattn_decode(&seg, &t, h, q, table, npos, s.mode, 1 / sqrtf(s.d), a,
                                           work), 0, "%s", sp_last_error());
            cr_assert_eq(sp_segattn_reference(&seg, &t, h, q, table, npos, s.mode, 1 / sqrtf(s.d),
                                              b), 0);
            double md = max_diff(a, b, G * s.d);
            cr_log_info("shape %zu head %d: fused vs explicit max abs diff %g", si, h, md);
            cr_assert_lt(md, 2e-6, "shape %zu head %d: fused vs explicit differ by %g", si, h, md);
            /* the same attention after the tail is folded into the segment (write-back) */
            sp_kv_segment fold;
            cr_assert_eq(sp_kv_segment_fold_tail(&fold, &seg, &t), 0, "%s", sp_last_error());
            float *work2 = malloc(sizeof(float) * sp_segattn_work_floats(&fold, NULL, h));
            cr_assert_eq(sp_segattn_decode(&fold, NULL, h, q, table, npos, s.mode, 1 / sqrtf(s.d),
                                           b, work2), 0);
            md = max_diff(a, b, G * s.d);
            cr_assert_lt(md, 2e-6, "shape %zu head %d: folded differs by %g", si, h, md);
            free(work2);
            sp_kv_segment_free(&fold);
            free(work);
        }
        free(table);
        sp_kv_tail_free(&t);
        sp_kv_segment_free(&seg);
        sp_kv_selection_free(&sel);
        free(k); free(v); free(sc);
    }
}

Test(segment_attn, reference_rope_matches_forward_pass_rope_and_masks)
{
    /* The reference's own RoPE against sp_op_rope (cpu/ops.c), both layouts, with masks. */
    enum { HQ = 6, HK = 2, L = 200, D = 32, W = 8, G = 3 };
    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    make_kv(k, v, HK, L, D);
    float sc[HQ * (L - W)];
    for (int i = 0; i < HQ * (L - W); i++)
        sc[i] = (float)urand();
    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, L, W), 0);
    cr_assert_eq(sp_kv_select_scores(&sel, sc, 30, SP_GQA_QUERY_HEAD), 0);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 0, k, v, D, &sel, true, 0.9f, 0.9f, NULL), 0);
    float table[L * D];
    sp_rope_table_fill(table, L, D, 1e5);
    sp_rope_mode modes[2] = {SP_ROPE_NORM, SP_ROPE_NEOX};
    float out_mode[2][G * D];
    for (int mi = 0; mi < 2; mi++) {
        float q[G * D], ref[G * D], want[G * D], kk[L * D], vv[L * D], ks[L * D], vs[L * D];
        int32_t pos[L], ps[L];
        uint64_t mask[L];
        for (int i = 0; i < G * D; i++)
            q[i] = (float)(urand() * 2 - 1);
        cr_assert_eq(sp_segattn_reference(&seg, NULL, 1, q, table, L, modes[mi], 1 / sqrtf(D), ref),
                     0);
        int64_t n = sp_kv_segment_reconstruct(&seg, NULL, 1, kk, vv, pos, mask);
        for (int g = 0; g < G; g++) {
            int m = 0;
            for (int64_t j = 0; j < n; j++)
                if (mask[j] >> g & 1) {
                    memcpy(ks + m * D, kk + j * D, sizeof(float) * D);
                    memcpy(vs + m * D, vv + j * D, sizeof(float) * D);
                    ps[m++] = pos[j];
                }
            exact_attn(ks, vs, ps, m, D, q + g * D, 1, table, modes[mi], want + g * D);
        }
        cr_assert_lt(max_diff(ref, want, G * D), 1e-5, "mode %d", mi);
        memcpy(out_mode[mi], ref, sizeof ref);
    }
    cr_assert_gt(max_diff(out_mode[0], out_mode[1], G * D), 1e-3, "the two layouts differ");
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v);
}

/* Run the policy end to end on one layer and compare attention with exact fp32 attention over
 * all original keys. Returns the max abs difference over all heads. */
static double policy_vs_exact(const char *knobs, sp_rope_mode mode)
{
    enum { HQ = 9, HK = 3, L = 400, D = 64, G = 3 };
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    cr_assert_eq(sp_kv_opts_parse(&o, knobs), 0, "%s", sp_last_error());
    cr_assert_eq(sp_kv_opts_validate_relaxed(&o, 1, L), 0, "%s", sp_last_error());
    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    make_kv(k, v, HK, L, D);
    float *ws = malloc(sizeof(float) * HQ * L);
    for (int i = 0; i < HQ * L; i++)
        ws[i] = (float)urand();
    int64_t kept[1];
    cr_assert_eq(sp_kv_budget_compute(&o, L, 1, NULL, kept), 0);
    if (o.ratio >= 1.0)
        cr_assert_eq(kept[0], L - o.window, "ratio 1 keeps every context token");
    bool ev[1], cb[1];
    cr_assert_eq(sp_kv_opts_layer_masks(&o, 1, ev, cb), 0);
    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, L, o.window), 0);
    sp_kv_layer_scores in = {.window_scores = ws};
    cr_assert_eq(sp_kv_select_layer(&o, ev[0], kept[0], &in, &sel), 0);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 0, k, v, D, &sel, cb[0], (float)o.theta_k,
                                     (float)o.theta_v, NULL), 0);
    float table[L * D];
    sp_rope_table_fill(table, L, D, 1e5);
    int32_t pos[L];
    for (int i = 0; i < L; i++)
        pos[i] = i;
    double worst = 0;
    for (int h = 0; h < HK; h++) {
        float q[G * D], a[G * D], want[G * D];
        for (int i = 0; i < G * D; i++)
            q[i] = (float)(urand() * 2 - 1);
        float *work = malloc(sizeof(float) * sp_segattn_work_floats(&seg, NULL, h));
        cr_assert_eq(sp_segattn_decode(&seg, NULL, h, q, table, L, mode, 1 / sqrtf(D), a, work), 0);
        exact_attn(k + (size_t)h * L * D, v + (size_t)h * L * D, pos, L, D, q, G, table, mode, want);
        worst = fmax(worst, max_diff(a, want, G * D));
        free(work);
    }
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v); free(ws);
    return worst;
}

/* Tolerance: K and V are stored in fp16 (relative error <= 2^-11 per component, plus the fp16
 * magnitude for coded tokens); with |k| <= ~3, |q| <= 1, |v| <= ~1.1 one value component can be off
 * by ~1e-3 but the softmax average over hundreds of tokens shrinks it; observed max 6.5e-5.
 * We allow 5e-4 absolute. */
#define FP16_ATOL 5e-4

Test(segment_attn, full_policy_equals_full_attention)
{
    double a = policy_vs_exact("policy=full", SP_ROPE_NORM);
    double b = policy_vs_exact("policy=full", SP_ROPE_NEOX);
    cr_log_info("full vs exact fp32 attention: max abs diff %g (norm), %g (neox)", a, b);
    cr_assert_lt(a, FP16_ATOL, "full vs exact: %g", a);
    cr_assert_lt(b, FP16_ATOL, "full vs exact (neox): %g", b);
}

Test(segment_attn, spindle_ratio_one_theta_above_one_equals_full_attention)
{
    double a = policy_vs_exact("policy=spindle ratio=1 theta_k=1.5 theta_v=1.5", SP_ROPE_NORM);
    cr_log_info("spindle r=1 theta>1 vs exact fp32 attention: max abs diff %g", a);
    cr_assert_lt(a, FP16_ATOL, "spindle r=1 θ>1 vs exact: %g", a);
    /* sanity: real compression moves the output (so the comparison above could fail) */
    double c = policy_vs_exact("policy=spindle ratio=0.3 theta_k=0.5 theta_v=0.5", SP_ROPE_NORM);
    cr_assert_gt(c, FP16_ATOL, "compressed output should differ: %g", c);
}

Test(segment_attn, full_fp16_baseline_and_bad_table)
{
    enum { N = 100, D = 32, G = 2 };
    float k[N * D], v[N * D], q[G * D], a[G * D], want[G * D], work[G * N];
    uint16_t k16[N * D], v16[N * D];
    make_kv(k, v, 1, N, D);
    for (int i = 0; i < G * D; i++)
        q[i] = (float)(urand() * 2 - 1);
    for (int i = 0; i < N * D; i++) {
        k16[i] = sp_f32_to_fp16(k[i]);
        v16[i] = sp_f32_to_fp16(v[i]);
    }
    sp_segattn_full_fp16(k16, v16, N, D, q, G, 1 / sqrtf(D), a, work);
    float table[N * D];
    sp_rope_table_fill(table, N, D, 1e4);
    int32_t pos0[N];
    for (int i = 0; i < N; i++)
        pos0[i] = 0; /* position 0: identity rotation, so k is used as given */
    exact_attn(k, v, pos0, N, D, q, G, table, SP_ROPE_NORM, want);
    cr_assert_lt(max_diff(a, want, G * D), FP16_ATOL);

    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, 2, 1, N, 8), 0);
    sp_kv_select_all(&sel);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 0, k, v, D, &sel, false, 0.9f, 0.9f, NULL), 0);
    float w2[4096];
    cr_assert_eq(sp_segattn_decode(&seg, NULL, 0, q, table, N - 1, SP_ROPE_NORM, 1.0f, a, w2),
                 -EINVAL, "a table shorter than the positions is refused");
    cr_assert_eq(sp_segattn_decode(&seg, NULL, 1, q, table, N, SP_ROPE_NORM, 1.0f, a, w2), -EINVAL);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
}

/* A coded segment (θ_K 0.95, θ_V 0.9) over clustered K/V [hk][l][d], each query head keeping its
 * top 60 of random scores: the base of the decode-tail tests (free with tail_fixture_free). */
typedef struct tail_fixture {
    float *k, *v, *sc;
    sp_kv_selection sel;
    sp_kv_segment seg;
} tail_fixture;

static void tail_fixture_init(tail_fixture *f, int hq, int hk, int l, int d, int win)
{
    f->k = malloc(sizeof(float) * hk * l * d);
    f->v = malloc(sizeof(float) * hk * l * d);
    make_kv(f->k, f->v, hk, l, d);
    f->sc = malloc(sizeof(float) * hq * (l - win));
    for (int i = 0; i < hq * (l - win); i++)
        f->sc[i] = (float)urand();
    cr_assert_eq(sp_kv_selection_init(&f->sel, hq, hk, l, win), 0);
    cr_assert_eq(sp_kv_select_scores(&f->sel, f->sc, 60, SP_GQA_QUERY_HEAD), 0);
    cr_assert_eq(sp_kv_segment_build(&f->seg, 0, f->k, f->v, d, &f->sel, true, 0.95f, 0.9f, NULL), 0);
}

static void tail_fixture_free(tail_fixture *f)
{
    sp_kv_segment_free(&f->seg);
    sp_kv_selection_free(&f->sel);
    free(f->k);
    free(f->v);
    free(f->sc);
}

/* The fused decode attention over segment + tail of KV head h equals the explicit reconstruction
 * (one random query per head of the group, NEOX RoPE). */
static void fused_equals_explicit(const sp_kv_segment *seg, const sp_kv_tail *tail, int h, int g,
                                  int d, const float *table, int npos)
{
    float *q = malloc(sizeof(float) * g * d * 3), *a = q + g * d, *b = a + g * d;
    for (int i = 0; i < g * d; i++)
        q[i] = (float)(urand() * 2 - 1);
    float *work = malloc(sizeof(float) * sp_segattn_work_floats(seg, tail, h));
    cr_assert_eq(sp_segattn_decode(seg, tail, h, q, table, npos, SP_ROPE_NEOX, 1 / sqrtf(d), a, work), 0,
                 "%s", sp_last_error());
    cr_assert_eq(sp_segattn_reference(seg, tail, h, q, table, npos, SP_ROPE_NEOX, 1 / sqrtf(d), b), 0);
    double md = max_diff(a, b, g * d);
    cr_assert_lt(md, 2e-6, "head %d: fused vs explicit differ by %g", h, md);
    free(work);
    free(q);
}

/* decode_window: the last W tail tokens are held raw (exactly their fp16 values), older ones are
 * coded as they leave the window - identical to a tail without window fed the fp16 copies; the
 * fused attention equals the explicit reconstruction; the bytes count raw tokens at 4·d each;
 * folding such a tail is refused. */
Test(segment_attn, tail_raw_window)
{
    enum { HQ = 6, HK = 2, L = 300, D = 32, WIN = 16, CAP = 12, RW = 4, NT = 10 };
    int G = HQ / HK, npos = L + CAP;
    tail_fixture fx;
    tail_fixture_init(&fx, HQ, HK, L, D, WIN);
    sp_kv_segment seg = fx.seg;
    const float *k = fx.k, *v = fx.v;
    sp_kv_tail tw, tr;   /* with window; reference without window, fed fp16-rounded copies */
    cr_assert_eq(sp_kv_tail_init_window(&tw, &seg, CAP, 0.95f, 0.9f, RW), 0);
    cr_assert_eq(sp_kv_tail_init(&tr, &seg, CAP, 0.95f, 0.9f), 0);
    float in_k[NT][HK * D], in_v[NT][HK * D];
    for (int j = 0; j < NT; j++) {
        float rk[HK * D], rv[HK * D];
        for (int i = 0; i < HK * D; i++) {
            in_k[j][i] = j % 2 ? k[i + j * D] : (float)(urand() * 4 - 2);
            in_v[j][i] = j % 2 ? v[i + j * D] : (float)(urand() * 2 - 1);
            rk[i] = sp_fp16_to_f32(sp_f32_to_fp16(in_k[j][i]));
            rv[i] = sp_fp16_to_f32(sp_f32_to_fp16(in_v[j][i]));
        }
        cr_assert_eq(sp_kv_tail_append(&tw, &seg, in_k[j], in_v[j], L + j), 0);
        cr_assert_eq(sp_kv_tail_append(&tr, &seg, rk, rv, L + j), 0);
    }
    int64_t n = sp_kv_segment_tokens(&seg, &tw, 0);
    float *kw = malloc(sizeof(float) * n * D), *vw = malloc(sizeof(float) * n * D);
    float *kr = malloc(sizeof(float) * n * D), *vr = malloc(sizeof(float) * n * D);
    float *table = malloc(sizeof(float) * npos * D);
    sp_rope_table_fill(table, npos, D, 10000.0);
    for (int h = 0; h < HK; h++) {
        int64_t nw = sp_kv_segment_reconstruct(&seg, &tw, h, kw, vw, NULL, NULL);
        int64_t nr = sp_kv_segment_reconstruct(&seg, &tr, h, kr, vr, NULL, NULL);
        cr_assert_eq(nw, nr);
        int64_t t0 = nw - NT;
        for (int j = 0; j < NT; j++)
            for (int i = 0; i < D; i++) {
                float ek = sp_fp16_to_f32(sp_f32_to_fp16(in_k[j][h * D + i]));
                float ev = sp_fp16_to_f32(sp_f32_to_fp16(in_v[j][h * D + i]));
                size_t o = (size_t)(t0 + j) * D + i;
                if (j >= NT - RW) {   /* raw: the fp16 value itself */
                    cr_assert_eq(kw[o], ek, "head %d tail %d: raw K %g != %g", h, j, kw[o], ek);
                    cr_assert_eq(vw[o], ev);
                } else {              /* coded: exactly what coding at append gives */
                    cr_assert_eq(kw[o], kr[o], "head %d tail %d: coded K %g != %g", h, j, kw[o], kr[o]);
                    cr_assert_eq(vw[o], vr[o]);
                }
            }
        cr_assert_eq(tw.n_new_k[h] <= tr.n_new_k[h], true, "the window codes no more tokens than append");
        fused_equals_explicit(&seg, &tw, h, G, D, table, npos);
    }
    sp_kv_seg_stats sw, sr;
    sp_kv_segment_stats(&seg, &tw, &sw);
    sp_kv_segment_stats(&seg, &tr, &sr);
    int64_t dent = 0;
    for (int h = 0; h < HK; h++)
        dent += tw.n_new_k[h] + tw.n_new_v[h] - tr.n_new_k[h] - tr.n_new_v[h];
    /* per KV head, a raw token costs 4·D bytes instead of 12 (two uint32 indices, two fp16 mags) */
    cr_assert_eq((int64_t)sw.bytes_content - (int64_t)sr.bytes_content,
                 (int64_t)HK * RW * (4 * D - 12) + dent * D * 2);
    sp_kv_segment fold;
    cr_assert_eq(sp_kv_segment_fold_tail(&fold, &seg, &tw), -ENOTSUP);
    free(kw); free(vw); free(kr); free(vr); free(table);
    sp_kv_tail_free(&tw);
    sp_kv_tail_free(&tr);
    tail_fixture_free(&fx);
}

/* One decode token per KV head for tail_batch_coding: token j of a batch of 4 is, for j < 3, the
 * unit e rotated by (j-1)·14° towards f (a chain: neighbours within 14°, ends 28° apart: above
 * θ_K = 0.95 / θ_V = 0.9 for neighbours, below for the ends), and for j = 3 an unrelated direction.
 * Magnitudes vary. e and f are fresh random directions, far from the segment's entries. */
static void chain_token(float *x, int d, int j, const float *e, const float *f, const float *far)
{
    double phi = (j - 1) * 14.0 * M_PI / 180.0, m = 0.5 + j;
    for (int i = 0; i < d; i++)
        x[i] = (float)(m * (j == 3 ? far[i] : cos(phi) * e[i] + sin(phi) * f[i]));
}

static void random_orthonormal(float *e, float *f, float *far, int d)
{
    double ne = 0, dot_ef = 0, nf = 0, nr = 0;
    for (int i = 0; i < d; i++) {
        e[i] = (float)(urand() * 2 - 1);
        f[i] = (float)(urand() * 2 - 1);
        far[i] = (float)(urand() * 2 - 1);
        ne += (double)e[i] * e[i];
    }
    for (int i = 0; i < d; i++)
        e[i] = (float)(e[i] / sqrt(ne));
    for (int i = 0; i < d; i++)
        dot_ef += (double)e[i] * f[i];
    for (int i = 0; i < d; i++) {
        f[i] = (float)(f[i] - dot_ef * e[i]);
        nf += (double)f[i] * f[i];
        nr += (double)far[i] * far[i];
    }
    for (int i = 0; i < d; i++) {
        f[i] = (float)(f[i] / sqrt(nf));
        far[i] = (float)(far[i] / sqrt(nr));
    }
}

/* decode_coding = batch: with a raw window of RW, the tokens leaving it are coded RW at a time by
 * Algorithm 1 over the batch. On chains (a-b-c with a, c apart) the greedy cover picks the middle
 * token and covers the chain with one entry where coding one by one needs two: the entries
 * created differ from append mode. The coded tokens equal m·entry of sp_codebook_build over the
 * batch's fp16 copies, the last tokens stay raw, the fused attention equals the explicit
 * reconstruction, and the bytes count coded, raw and entries as they are held. */
Test(segment_attn, tail_batch_coding)
{
    enum { HQ = 6, HK = 2, L = 300, D = 32, WIN = 16, CAP = 16, RW = 4, NT = 13 };
    int G = HQ / HK, npos = L + CAP;
    tail_fixture fx;
    tail_fixture_init(&fx, HQ, HK, L, D, WIN);
    sp_kv_segment seg = fx.seg;
    sp_kv_tail tb, ta;   /* batch; append (the same window) */
    cr_assert_eq(sp_kv_tail_init_coding(&tb, &seg, CAP, 0.95f, 0.9f, 0, true), -EINVAL,
                 "batch without a window is refused");
    cr_assert_eq(sp_kv_tail_init_coding(&tb, &seg, CAP, 0.95f, 0.9f, RW, true), 0);
    cr_assert_eq(sp_kv_tail_init_coding(&ta, &seg, CAP, 0.95f, 0.9f, RW, false), 0);
    static float in_k[NT][HK * D], in_v[NT][HK * D];
    for (int b = 0; b * 4 < NT; b++)
        for (int h = 0; h < HK; h++) {
            float ek[D], fk[D], rk[D], ev[D], fv[D], rv[D];
            random_orthonormal(ek, fk, rk, D);
            random_orthonormal(ev, fv, rv, D);
            for (int j = 0; j < 4 && b * 4 + j < NT; j++) {
                chain_token(in_k[b * 4 + j] + h * D, D, j, ek, fk, rk);
                chain_token(in_v[b * 4 + j] + h * D, D, j, ev, fv, rv);
            }
        }
    for (int j = 0; j < NT; j++) {
        cr_assert_eq(sp_kv_tail_append(&tb, &seg, in_k[j], in_v[j], L + j), 0, "%s", sp_last_error());
        if (j < 12)   /* append codes tokens 0..7 once 12 are in */
            cr_assert_eq(sp_kv_tail_append(&ta, &seg, in_k[j], in_v[j], L + j), 0);
    }
    /* two batches coded (at the appends of tokens 8 and 12), tokens 8..12 raw */
    cr_assert_eq(tb.n_coded, 2 * RW);
    cr_assert_eq(sp_kv_tail_n_raw(&tb), NT - 2 * RW);
    int64_t n = sp_kv_segment_tokens(&seg, &tb, 0);
    float *kb = malloc(sizeof(float) * n * D), *vb = malloc(sizeof(float) * n * D);
    float *table = malloc(sizeof(float) * npos * D);
    sp_rope_table_fill(table, npos, D, 10000.0);
    for (int h = 0; h < HK; h++) {
        cr_assert_eq(tb.n_new_k[h], 4, "head %d: batch K entries %lld, expected 2 per batch", h,
                     (long long)tb.n_new_k[h]);
        cr_assert_eq(tb.n_new_v[h], 4);
        cr_assert_eq(ta.n_new_k[h], 6, "head %d: append K entries %lld, expected 3 per batch", h,
                     (long long)ta.n_new_k[h]);
        cr_assert_eq(ta.n_new_v[h], 6);
        int64_t nb = sp_kv_segment_reconstruct(&seg, &tb, h, kb, vb, NULL, NULL), t0 = nb - NT;
        for (int b = 0; b < 2; b++) {   /* the coded batches: Algorithm 1 over the fp16 copies */
            float xk[RW * D], xv[RW * D];
            for (int j = 0; j < RW; j++)
                for (int i = 0; i < D; i++) {
                    xk[j * D + i] = sp_fp16_to_f32(sp_f32_to_fp16(in_k[b * RW + j][h * D + i]));
                    xv[j * D + i] = sp_fp16_to_f32(sp_f32_to_fp16(in_v[b * RW + j][h * D + i]));
                }
            sp_codebook ck, cv;
            cr_assert_eq(sp_codebook_build(xk, RW, D, NULL, 0.95f, &ck), 0);
            cr_assert_eq(sp_codebook_build(xv, RW, D, NULL, 0.9f, &cv), 0);
            cr_assert_eq(ck.n_entries, 2);
            cr_assert_eq(ck.rep[ck.index[0]], 1, "the chain's middle token is its entry");
            for (int j = 0; j < RW; j++)
                for (int i = 0; i < D; i++) {
                    size_t o = (size_t)(t0 + b * RW + j) * D + i;
                    float wk = sp_fp16_to_f32(sp_f32_to_fp16(ck.mag[j])) *
                               sp_fp16_to_f32(sp_f32_to_fp16(ck.unit[(size_t)ck.rep[ck.index[j]] * D + i]));
                    float wv = sp_fp16_to_f32(sp_f32_to_fp16(cv.mag[j])) *
                               sp_fp16_to_f32(sp_f32_to_fp16(cv.unit[(size_t)cv.rep[cv.index[j]] * D + i]));
                    cr_assert_eq(kb[o], wk, "head %d batch %d token %d: K %g != %g", h, b, j, kb[o], wk);
                    cr_assert_eq(vb[o], wv);
                }
            sp_codebook_free(&ck);
            sp_codebook_free(&cv);
        }
        for (int j = 2 * RW; j < NT; j++)   /* raw: the fp16 values */
            for (int i = 0; i < D; i++) {
                size_t o = (size_t)(t0 + j) * D + i;
                cr_assert_eq(kb[o], sp_fp16_to_f32(sp_f32_to_fp16(in_k[j][h * D + i])));
                cr_assert_eq(vb[o], sp_fp16_to_f32(sp_f32_to_fp16(in_v[j][h * D + i])));
            }
        fused_equals_explicit(&seg, &tb, h, G, D, table, npos);
    }
    sp_kv_seg_stats s0, sb;
    sp_kv_segment_stats(&seg, NULL, &s0);
    sp_kv_segment_stats(&seg, &tb, &sb);
    /* per KV head: coded tokens 12 bytes (two uint32 indices, two fp16 magnitudes), raw ones 4·D,
     * entries 2·D; positions 4 bytes per token */
    int64_t want = (int64_t)HK * (2 * RW * 12 + (NT - 2 * RW) * 4 * D + 8 * 2 * D) + NT * 4;
    cr_assert_eq((int64_t)sb.bytes_content - (int64_t)s0.bytes_content, want);
    sp_kv_tail_reset(&tb);
    cr_assert_eq(tb.n_coded, 0);
    free(kb); free(vb); free(table);
    sp_kv_tail_free(&tb);
    sp_kv_tail_free(&ta);
    tail_fixture_free(&fx);
}
