/* test_kv_segment.c - layer segments: full policy bit-identical to fp16, coded reconstruction
 * within θ, open/validate, checksum and structure corruption, decode tail, accounting. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "kv_budget.h"
#include "kv_segment.h"
#include "sp_error.h"
#include "support/kv_fixture.h"
#include "support/xorshift.h"

static uint64_t rng = 0x1234567887654321ull;
static double urand(void) { return xorshift64_unit(&rng); }

/* Clustered K/V [hk][l][d] so the codebook has something to merge (drawn from this file's rng). */
static void make_kv(float *k, float *v, int hk, int l, int d) { kv_fixture_clustered(&rng, k, v, hk, l, d); }

static float r16(float x)
{
    return sp_fp16_to_f32(sp_f32_to_fp16(x));
}

Test(kv_segment, full_policy_reconstruction_is_bit_identical_to_fp16)
{
    enum { HQ = 9, HK = 3, L = 300, D = 64, W = 32 };
    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    make_kv(k, v, HK, L, D);
    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, L, W), 0);
    sp_kv_select_all(&sel);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 5, k, v, D, &sel, false, 0.98f, 0.95f, NULL), 0,
                 "%s", sp_last_error());
    cr_assert(seg.hdr->flags & SP_KV_SEG_DENSE);
    cr_assert_eq(seg.size % SP_KV_SEG_ALIGN, 0);
    cr_assert_eq((uintptr_t)seg.buf % SP_KV_SEG_ALIGN, 0);
    float *kr = malloc(sizeof(float) * L * D), *vr = malloc(sizeof(float) * L * D);
    int32_t pos[L];
    uint64_t mask[L];
    for (int h = 0; h < HK; h++) {
        cr_assert_eq(sp_kv_segment_reconstruct(&seg, NULL, h, kr, vr, pos, mask), L);
        for (int t = 0; t < L; t++) {
            cr_assert_eq(pos[t], t);
            cr_assert_eq(mask[t], 7u);
            for (int j = 0; j < D; j++) {
                float a = r16(k[((size_t)h * L + t) * D + j]), b = r16(v[((size_t)h * L + t) * D + j]);
                cr_assert(memcmp(&a, &kr[t * D + j], 4) == 0 && memcmp(&b, &vr[t * D + j], 4) == 0,
                          "head %d token %d dim %d", h, t, j);
            }
        }
    }
    sp_kv_seg_stats st;
    sp_kv_segment_stats(&seg, NULL, &st);
    cr_assert_eq(st.bytes_content, st.bytes_fp16, "full policy holds exactly the fp16 cache");
    cr_assert_float_eq(st.true_ratio, 1.0, 1e-12);
    cr_assert_float_eq(st.paper_r, 1.0, 1e-12);
    cr_assert_float_eq(st.paper_r1, 1.0, 1e-12);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v); free(kr); free(vr);
}

/* A spindle-style layer: query_head selection with per-head scores, coded. */
static void build_coded(sp_kv_segment *seg, sp_kv_selection *sel, float **kp, float **vp, int HQ,
                        int HK, int L, int D, int W, int keep, float tk, float tv)
{
    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    make_kv(k, v, HK, L, D);
    float *sc = malloc(sizeof(float) * HQ * (L - W));
    for (int i = 0; i < HQ * (L - W); i++)
        sc[i] = (float)urand();
    cr_assert_eq(sp_kv_selection_init(sel, HQ, HK, L, W), 0);
    cr_assert_eq(sp_kv_select_scores(sel, sc, keep, SP_GQA_QUERY_HEAD), 0);
    cr_assert_eq(sp_kv_segment_build(seg, 3, k, v, D, sel, true, tk, tv, NULL), 0, "%s",
                 sp_last_error());
    free(sc);
    *kp = k;
    *vp = v;
}

Test(kv_segment, coded_vectors_within_theta_and_masks_round_trip)
{
    enum { HQ = 9, HK = 3, L = 600, D = 64, W = 32 };
    sp_kv_segment seg;
    sp_kv_selection sel;
    float *k, *v;
    build_coded(&seg, &sel, &k, &v, HQ, HK, L, D, W, 200, 0.98f, 0.95f);
    cr_assert(seg.hdr->flags & SP_KV_SEG_CODED);
    cr_assert(!(seg.hdr->flags & SP_KV_SEG_DENSE));
    cr_assert_eq(seg.hdr->index_bytes, 2);
    float *kr = malloc(sizeof(float) * L * D), *vr = malloc(sizeof(float) * L * D);
    int32_t pos[L];
    uint64_t mask[L];
    for (int h = 0; h < HK; h++) {
        int64_t n = sp_kv_segment_reconstruct(&seg, NULL, h, kr, vr, pos, mask);
        cr_assert_eq(n, sel.n_kept[h] + W);
        cr_assert_lt(seg.head[h].n_ent_k, sel.n_kept[h], "clustered keys must share entries");
        for (int64_t i = 0; i < n; i++) {
            bool win = i >= sel.n_kept[h];
            cr_assert_eq(pos[i], win ? L - W + (i - sel.n_kept[h]) : sel.pos[h * sel.cap + i]);
            cr_assert_eq(mask[i], win ? 7u : sel.mask[h * sel.cap + i]);
            const float *ko = k + ((size_t)h * L + pos[i]) * D, *vo = v + ((size_t)h * L + pos[i]) * D;
            double dk = 0, nk = 0, nko = 0, dv = 0, nv = 0, nvo = 0;
            for (int j = 0; j < D; j++) {
                dk += (double)ko[j] * kr[i * D + j];
                nk += (double)kr[i * D + j] * kr[i * D + j];
                nko += (double)ko[j] * ko[j];
                dv += (double)vo[j] * vr[i * D + j];
                nv += (double)vr[i * D + j] * vr[i * D + j];
                nvo += (double)vo[j] * vo[j];
            }
            double ck = dk / sqrt(nk * nko), cv = dv / sqrt(nv * nvo);
            cr_assert_gt(ck, win ? 0.9999 : 0.98 - 1e-3, "K cos %f (token %lld)", ck, (long long)i);
            cr_assert_gt(cv, win ? 0.9999 : 0.95 - 1e-3, "V cos %f", cv);
            cr_assert_float_eq(sqrt(nk), sqrt(nko), 2e-3 * sqrt(nko), "magnitude kept");
        }
    }
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v); free(kr); free(vr);
}

Test(kv_segment, open_validates_and_detects_corruption)
{
    enum { HQ = 6, HK = 2, L = 300, D = 32, W = 16 };
    sp_kv_segment seg, view;
    sp_kv_selection sel;
    float *k, *v;
    build_coded(&seg, &sel, &k, &v, HQ, HK, L, D, W, 100, 0.9f, 0.9f);
    size_t n = sp_kv_segment_size(&seg);
    void *copy = aligned_alloc(SP_KV_SEG_ALIGN, n);
    memcpy(copy, seg.buf, n);
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), 0, "%s", sp_last_error());
    cr_assert_eq(view.head[1].n_kept, seg.head[1].n_kept);
    float a[L * D], b[L * D];
    cr_assert_eq(sp_kv_segment_reconstruct(&seg, NULL, 1, a, NULL, NULL, NULL),
                 sp_kv_segment_reconstruct(&view, NULL, 1, b, NULL, NULL, NULL));
    cr_assert(memcmp(a, b, sizeof(float) * (seg.head[1].n_kept + W) * D) == 0);
    sp_kv_segment_free(&view);

    /* a flipped payload bit: checksum */
    uint8_t *p = copy;
    p[seg.hdr->sec_off[SP_KV_SEC_KMAG] + 3] ^= 0x10;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), -EBADMSG);
    cr_assert(strstr(sp_last_error(), "checksum mismatch"), "%s", sp_last_error());
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, false), 0, "verify=false skips the hash");
    p[seg.hdr->sec_off[SP_KV_SEC_KMAG] + 3] ^= 0x10;
    /* a flipped bit in the padding (not a section) still changes the hash */
    p[n - 1] ^= 1;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), -EBADMSG);
    p[n - 1] ^= 1;
    /* header: a count that no longer matches the section lengths */
    sp_kv_seg_header *h = copy;
    h->n_kept[0]--;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), -EINVAL);
    cr_assert(strstr(sp_last_error(), "section"), "%s", sp_last_error());
    h->n_kept[0]++;
    /* an out-of-range entry index with a recomputed (valid) checksum is still rejected */
    uint16_t *idx = (uint16_t *)(p + h->sec_off[SP_KV_SEC_KIDX]);
    uint16_t save = idx[0];
    idx[0] = 60000;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, false), -EINVAL);
    cr_assert(strstr(sp_last_error(), "out of range"), "%s", sp_last_error());
    idx[0] = save;
    h->magic = 0;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), -EINVAL);
    h->magic = SP_KV_SEG_MAGIC;
    cr_assert_eq(sp_kv_segment_open(&view, copy, n - 4096, true), -EINVAL, "truncated");
    cr_assert_eq(sp_kv_segment_open(&view, copy, 100, true), -EINVAL);
    cr_assert_eq(sp_kv_segment_open(&view, copy, n, true), 0, "restored bytes open again");
    free(copy);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v);
}

Test(kv_segment, tail_appends_codes_and_fills_up)
{
    enum { HQ = 6, HK = 2, L = 200, D = 32, W = 16, CAP = 5 };
    sp_kv_segment seg;
    sp_kv_selection sel;
    float *k, *v;
    build_coded(&seg, &sel, &k, &v, HQ, HK, L, D, W, 60, 0.95f, 0.95f);
    sp_kv_tail t;
    cr_assert_eq(sp_kv_tail_init(&t, &seg, CAP, 0.95f, 0.95f), 0);
    /* token 1: the K/V of a listed token -> references existing entries, no new entries */
    float nk[HK * D], nv[HK * D];
    for (int h = 0; h < HK; h++) {
        int32_t p0 = sel.pos[h * sel.cap];
        memcpy(nk + h * D, k + ((size_t)h * L + p0) * D, sizeof(float) * D);
        memcpy(nv + h * D, v + ((size_t)h * L + p0) * D, sizeof(float) * D);
    }
    cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, L), 0);
    for (int h = 0; h < HK; h++) {
        cr_assert_eq(t.n_new_k[h], 0);
        cr_assert_lt(t.k_idx[h * CAP], (uint32_t)seg.head[h].n_ent_k);
    }
    /* token 2: an orthogonal-ish random direction -> new entry; token 3 = same -> reuses it */
    float rk[HK * D], rv[HK * D];
    for (int i = 0; i < HK * D; i++) {
        rk[i] = (i % D == 0) ? 50.0f : 0.0f; /* far from the clustered data */
        rv[i] = (i % D == 1) ? -40.0f : 0.0f;
    }
    cr_assert_eq(sp_kv_tail_append(&t, &seg, rk, rv, L + 1), 0);
    cr_assert_eq(sp_kv_tail_append(&t, &seg, rk, rv, L + 2), 0);
    for (int h = 0; h < HK; h++) {
        cr_assert_eq(t.n_new_k[h], 1);
        cr_assert_eq(t.n_new_v[h], 1);
        cr_assert_eq(t.k_idx[h * CAP + 1], (uint32_t)seg.head[h].n_ent_k);
        cr_assert_eq(t.k_idx[h * CAP + 2], t.k_idx[h * CAP + 1]);
    }
    cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, L + 3), 0);
    cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, L + 4), 0);
    cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, L + 5), -ENOSPC);
    cr_assert_eq(t.n, CAP);
    /* reconstruction of the tail */
    float kr[(L + CAP) * D];
    int32_t pos[L + CAP];
    int64_t n = sp_kv_segment_reconstruct(&seg, &t, 1, kr, NULL, pos, NULL);
    cr_assert_eq(n, seg.head[1].n_kept + W + CAP);
    cr_assert_eq(pos[n - 1], L + 4);
    cr_assert_float_eq(kr[(n - 4) * D + 0], 50.0f, 0.05f, "new entry reproduces the key");
    cr_assert_float_eq(kr[(n - 4) * D + 1], 0.0f, 1e-6);
    sp_kv_seg_stats st;
    sp_kv_segment_stats(&seg, &t, &st);
    cr_assert_eq(st.bytes_tail_alloc, t.mem_bytes);
    cr_assert_eq(st.bytes_fp16, 2ull * HK * (L + CAP) * D * 2);
    sp_kv_tail_free(&t);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v);
}

Test(kv_segment, accounting_matches_hand_count)
{
    enum { HQ = 9, HK = 3, L = 500, D = 64, W = 32 };
    sp_kv_segment seg;
    sp_kv_selection sel;
    float *k, *v;
    build_coded(&seg, &sel, &k, &v, HQ, HK, L, D, W, 100, 0.98f, 0.95f);
    uint64_t want = 0, stored = 0;
    double kept_q = 0;
    for (int h = 0; h < HK; h++) {
        int64_t n = sel.n_kept[h];
        want += n * (4 + 1 + 2 * 2 + 2 * 2);                              /* pos, mask, idx, mag */
        want += (uint64_t)(seg.head[h].n_ent_k + seg.head[h].n_ent_v) * D * 2; /* codebooks */
        want += 2ull * W * D * 2;                                          /* raw window */
        stored += seg.head[h].n_ent_k + seg.head[h].n_ent_v + 2 * W;
        for (int64_t i = 0; i < n; i++)
            kept_q += __builtin_popcountll(sel.mask[h * sel.cap + i]);
        kept_q += 3.0 * W;
    }
    sp_kv_seg_stats st;
    sp_kv_segment_stats(&seg, NULL, &st);
    cr_assert_eq(st.bytes_content, want);
    cr_assert_eq(st.bytes_fp16, 2ull * HK * L * D * 2);
    cr_assert_float_eq(st.true_ratio, (double)want / st.bytes_fp16, 1e-12);
    cr_assert_float_eq(st.paper_r1, kept_q / (HQ * (double)L), 1e-12);
    cr_assert_float_eq(st.paper_r3, 3.0, 1e-12);
    cr_assert_float_eq(st.paper_r, (double)stored / (2.0 * HK * L), 1e-12);
    cr_assert_geq(st.bytes_segment, st.bytes_content);
    cr_assert_lt(st.true_ratio, 0.5, "this selection keeps ~1/3 per head: ratio %f",
                 st.true_ratio);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    free(k); free(v);
}

Test(kv_segment, short_prompt_is_all_window)
{
    enum { HQ = 4, HK = 2, L = 20, D = 8, W = 32 };
    float k[HK * L * D], v[HK * L * D];
    make_kv(k, v, HK, L, D);
    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, L, W), 0);
    cr_assert_eq(sel.window, L, "window clamps to the prompt");
    sp_kv_select_all(&sel);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 0, k, v, D, &sel, true, 0.9f, 0.9f, NULL), 0);
    cr_assert_eq(sp_kv_segment_tokens(&seg, NULL, 1), L);
    sp_kv_seg_stats st;
    sp_kv_segment_stats(&seg, NULL, &st);
    cr_assert_float_eq(st.true_ratio, 1.0, 1e-12, "all window: raw fp16");
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
}

Test(kv_segment, uncoded_evicting_layer_keeps_exact_fp16_of_listed_tokens)
{
    enum { HQ = 4, HK = 2, L = 100, D = 16, W = 8 };
    float k[HK * L * D], v[HK * L * D], sc[HQ * (L - W)];
    make_kv(k, v, HK, L, D);
    for (int i = 0; i < HQ * (L - W); i++)
        sc[i] = (float)urand();
    sp_kv_selection sel;
    cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, L, W), 0);
    cr_assert_eq(sp_kv_select_scores(&sel, sc, 10, SP_GQA_QUERY_HEAD), 0);
    sp_kv_segment seg;
    cr_assert_eq(sp_kv_segment_build(&seg, 1, k, v, D, &sel, false, 0.9f, 0.9f, NULL), 0);
    cr_assert(!(seg.hdr->flags & (SP_KV_SEG_CODED | SP_KV_SEG_DENSE)));
    float kr[L * D];
    int32_t pos[L];
    for (int h = 0; h < HK; h++) {
        int64_t n = sp_kv_segment_reconstruct(&seg, NULL, h, kr, NULL, pos, NULL);
        cr_assert_eq(n, sel.n_kept[h] + W);
        for (int64_t i = 0; i < n; i++)
            for (int j = 0; j < D; j++)
                cr_assert_eq(kr[i * D + j], r16(k[((size_t)h * L + pos[i]) * D + j]));
    }
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
}

Test(kv_segment, fold_tail_keeps_the_same_tokens_and_reopens)
{
    enum { HQ = 6, HK = 2, L = 200, D = 32, W = 16, CAP = 6 };
    for (int coded = 0; coded < 2; coded++) {
        sp_kv_segment seg, fold, view;
        sp_kv_selection sel;
        float *k, *v;
        build_coded(&seg, &sel, &k, &v, HQ, HK, L, D, W, 60, 0.95f, 0.95f);
        if (!coded) { /* same selection, raw storage */
            sp_kv_segment_free(&seg);
            cr_assert_eq(sp_kv_segment_build(&seg, 3, k, v, D, &sel, false, 0.95f, 0.95f, NULL), 0);
        }
        sp_kv_tail t;
        cr_assert_eq(sp_kv_tail_init(&t, &seg, CAP, 0.95f, 0.95f), 0);
        for (int j = 0; j < 4; j++) {
            float nk[HK * D], nv[HK * D];
            for (int i = 0; i < HK * D; i++) {
                nk[i] = j % 2 ? k[i + 7 * D] : (float)(urand() * 4 - 2);
                nv[i] = (float)(urand() * 2 - 1);
            }
            cr_assert_eq(sp_kv_tail_append(&t, &seg, nk, nv, L + j), 0);
        }
        float a[(L + CAP) * D], b[(L + CAP) * D], av[(L + CAP) * D], bv[(L + CAP) * D];
        int32_t pa[L + CAP], pb[L + CAP];
        uint64_t ma[L + CAP], mb[L + CAP];
        cr_assert_eq(sp_kv_segment_fold_tail(&fold, &seg, &t), 0, "%s", sp_last_error());
        cr_assert_eq(fold.hdr->n_folded, 4);
        sp_kv_seg_stats s1, s2;
        sp_kv_segment_stats(&seg, &t, &s1);
        sp_kv_segment_stats(&fold, NULL, &s2);
        cr_assert_eq(s1.bytes_fp16, s2.bytes_fp16);
        cr_assert_float_eq(s1.paper_r, s2.paper_r, 1e-12);
        for (int h = 0; h < HK; h++) {
            int64_t n1 = sp_kv_segment_reconstruct(&seg, &t, h, a, av, pa, ma);
            int64_t n2 = sp_kv_segment_reconstruct(&fold, NULL, h, b, bv, pb, mb);
            cr_assert_eq(n1, n2);
            /* same tokens; order: listed, window, tail  vs  listed, tail, window */
            int64_t nl = seg.head[h].n_kept;
            for (int64_t i = 0; i < n1; i++) {
                int64_t j = i < nl ? i : (i < nl + W ? i + 4 : i - W);
                cr_assert_eq(pa[i], pb[j]);
                cr_assert_eq(ma[i], mb[j]);
                cr_assert(memcmp(a + i * D, b + j * D, sizeof(float) * D) == 0);
                cr_assert(memcmp(av + i * D, bv + j * D, sizeof(float) * D) == 0);
            }
        }
        cr_assert_eq(sp_kv_segment_open(&view, fold.buf, fold.size, true), 0, "%s", sp_last_error());
        /* the next tail continues at position L + 4 */
        sp_kv_tail_reset(&t);
        float nk[HK * D] = {0}, nv[HK * D] = {0};
        cr_assert_eq(sp_kv_tail_append(&t, &fold, nk, nv, L + 4), 0);
        sp_kv_segment f2;
        cr_assert_eq(sp_kv_segment_fold_tail(&f2, &fold, &t), 0);
        cr_assert_eq(f2.hdr->n_folded, 5);
        sp_kv_segment_free(&f2);
        t.pos[0] = L + 9; /* not the next position */
        cr_assert_eq(sp_kv_segment_fold_tail(&f2, &fold, &t), -EINVAL);
        sp_kv_tail_free(&t);
        sp_kv_segment_free(&fold);
        sp_kv_segment_free(&seg);
        sp_kv_selection_free(&sel);
        free(k); free(v);
    }
}
