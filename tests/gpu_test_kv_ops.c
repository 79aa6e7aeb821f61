/* gpu_test_kv_ops.c - the KV-compression and sampling ops of the CUDA backend against their CPU
 * references, case by case (same structure as gpu_test_backend_ops.c):
 *   kv_prepare  vs sp_kv_scores_prepare   bit-exact (same float expressions, same order)
 *   kv_topk     vs sp_kv_topk             identical index lists (ties, NaN, -0/+0, -inf, k edges)
 *   codebook    vs sp_codebook_build      identical entries, assignments and count; unit and mag
 *                                         bit-exact. Inputs are checked to have no pair cosine
 *                                         within 2e-5 of theta (double precision; an fp32 dot of d <=
 *                                         128 unit terms errs by < 1e-5), since cuBLAS and OpenBLAS
 *                                         round the products differently. Lattice inputs have exact
 *                                         cosines (no margin needed, ties with theta included).
 *   tail_code   vs sp_kv_tail_append      identical tail bytes (indices, fp16 magnitudes, appended
 *                                         entries, counts) token by token, up to the first token
 *                                         with a near-tie (2e-5, double) among its choices
 *   cb_match    vs sp_codebook_match      identical index where the best cosine is 2e-5 clear of
 *                                         the runner-up and of theta (others counted, not
 *                                         compared); cosine within 1e-5
 *   segattn     vs sp_segattn_reference   |gpu - ref| <= 1e-4 + 1e-4·|ref| (fp32 vs double; values
 *                                         up to ~15, up to 2000 tokens: the CPU's own fp32 op is
 *                                         2.4e-5 from the reference on the largest case)
 *   sample      vs sp_sampler_sample      identical token for the same uniform draw
 * Every device output has guard bytes around it (checked) and is pre-filled with 0xFF.
 * Output: one line per case, then "N passed, N failed, N unsupported". Exit 0 when nothing failed,
 * 1 otherwise, 77 without a device. A plain executable (CUDA contexts do not survive fork).
 * Optional argument: only run cases whose op name contains it. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "config.h"
#include "fp16.h"
#include "gpu.h"
#include "kv_segment.h"
#include "kv_select.h"
#include "ops.h"
#include "sampler.h"
#include "segment_attn.h"
#include "sp_error.h"
#include "support/gpu_harness.h"

/* ---- reporting ---- */

static void report(const char *op, const char *shape, int rc, int64_t n_bad, double max_err, const char *tol)
{
    char summary[256];
    snprintf(summary, sizeof summary, "max err %.3g; %s", max_err, tol);
    gh_report(op, shape, rc, n_bad, summary);
}

static bool same_bits(float a, float b)
{
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return x == y;
}

/* ---- kv_prepare: bit-exact ---- */

static void case_prepare(int heads, int64_t l, int64_t window, int kernel, sp_pool_type pool, bool divide)
{
    const char *op = "kv_prepare";
    char shape[128];
    snprintf(shape, sizeof shape, "[%d x %lld] window %lld kernel %d %s%s", heads, (long long)l, (long long)window,
             kernel, pool == SP_POOL_MAX ? "max" : "avg", divide ? " /(l-a)" : "");
    if (!gh_selected(op))
        return;
    int64_t lc = l > window ? l - window : 0, bad = 0;
    size_t no = (size_t)heads * (size_t)(lc ? lc : 1);
    float *raw = malloc(sizeof(float) * (size_t)heads * (size_t)l), *want = malloc(sizeof(float) * no),
          *got = malloc(sizeof(float) * no);
    dbuf dr = {0}, dout = {0};
    int rc = -ENOMEM;
    if (!raw || !want || !got)
        goto done;
    for (int64_t i = 0; i < heads * l; i++)
        raw[i] = i % 17 == 0 ? 0.5f : gh_rng_uniform(0.0f, 3.0f);   /* repeated values: pooling ties */
    if ((rc = sp_kv_scores_prepare(raw, heads, l, window, kernel, pool, divide, want)))
        goto done;
    if ((rc = dbuf_upload(&dr, raw, sizeof(float) * (size_t)heads * (size_t)l)) ||
        (rc = dbuf_new(&dout, sizeof(float) * (size_t)heads * (size_t)lc, 0xFF)))
        goto done;
    sp_gpu_kv_prepare_desc d = {.raw = dptr(&dr), .n_heads = heads, .l = l, .window = window, .kernel = kernel,
                                .pool_type = (int)pool, .divide_by_l_minus_a = divide, .out = dptr(&dout)};
    if ((rc = sp_gpu_kv_scores_prepare(gh_stream, d)) || (rc = dbuf_download(&dout, got, "out")))
        goto done;
    for (int64_t i = 0; i < heads * lc; i++)
        if (!same_bits(got[i], want[i]) && bad++ < GH_MAX_PRINT)
            printf("    out[%lld]: gpu %.9g cpu %.9g\n", (long long)i, got[i], want[i]);
done:
    report(op, shape, rc, bad, 0.0, "bit-exact");
    dbuf_free(&dr);
    dbuf_free(&dout);
    free(raw);
    free(want);
    free(got);
}

/* ---- kv_topk: identical index lists ---- */

static void case_topk(int rows, int64_t n, int64_t k, int pad)
{
    const char *op = "kv_topk";
    char shape[128];
    snprintf(shape, sizeof shape, "[%d x %lld] ld+%d k %lld (ties, NaN, -0/+0, -inf)", rows, (long long)n, pad,
             (long long)k);
    if (!gh_selected(op))
        return;
    int64_t ld = n + pad, kk = k < 0 ? 0 : k > n ? n : k, bad = 0;
    float *s = malloc(sizeof(float) * (size_t)(rows * ld));
    int32_t *want = malloc(sizeof(int32_t) * (size_t)(kk ? kk : 1)), *got = malloc(sizeof(int32_t) * (size_t)(rows * (kk ? kk : 1)));
    dbuf ds = {0}, di = {0};
    int rc = -ENOMEM;
    if (!s || !want || !got)
        goto done;
    for (int r = 0; r < rows; r++) {
        float *x = s + r * ld;
        for (int64_t i = 0; i < n; i++) {
            /* few distinct values: many ties at the cut */
            x[i] = r % 3 == 0 ? (float)(gh_rng_u64() % 16) * 0.25f : gh_rng_uniform(-2.0f, 2.0f);
            if (r % 3 == 1 && i % 11 == 0)
                x[i] = i % 2 ? -0.0f : 0.0f;
            if (r % 3 == 2 && i % 13 == 0)
                x[i] = i % 2 ? NAN : -INFINITY;
        }
        for (int64_t i = n; i < ld; i++)
            x[i] = 1e30f;   /* padding must be ignored */
    }
    if ((rc = dbuf_upload(&ds, s, sizeof(float) * (size_t)(rows * ld))) ||
        (rc = dbuf_new(&di, sizeof(int32_t) * (size_t)(rows * kk), 0xFF)))
        goto done;
    sp_gpu_kv_topk_desc d = {.s = dptr(&ds), .n_rows = rows, .n = n, .ld = ld, .k = k, .idx = dptr(&di),
                             .idx_ld = kk};
    if ((rc = sp_gpu_kv_topk(gh_stream, d)) || (rc = dbuf_download(&di, got, "idx")))
        goto done;
    for (int r = 0; r < rows; r++) {
        int64_t m = sp_kv_topk(s + r * ld, n, k, want);
        if (m != kk) {
            rc = -EINVAL;
            goto done;
        }
        for (int64_t i = 0; i < kk; i++)
            if (got[r * kk + i] != want[i] && bad++ < GH_MAX_PRINT)
                printf("    row %d idx[%lld]: gpu %d cpu %d\n", r, (long long)i, got[r * kk + i], want[i]);
    }
done:
    report(op, shape, rc, bad, 0.0, "identical indices");
    dbuf_free(&ds);
    dbuf_free(&di);
    free(s);
    free(want);
    free(got);
}

/* ---- codebook build: identical ---- */

/* Clustered vectors: n_c random directions, each vector = center + noise, random magnitude. Zero
 * vectors every `zeros` (0: none). */
static void make_clusters(float *x, int64_t n, int d, int n_c, float noise, int zeros)
{
    float *c = malloc(sizeof(float) * (size_t)n_c * d);
    for (int i = 0; i < n_c * d; i++)
        c[i] = gh_rng_normal();
    for (int64_t v = 0; v < n; v++) {
        int ci = (int)(gh_rng_u64() % (uint64_t)n_c);
        float m = gh_rng_uniform(0.2f, 5.0f);
        for (int i = 0; i < d; i++)
            x[v * d + i] = zeros && v % zeros == zeros - 1 ? 0.0f : m * (c[ci * d + i] + noise * gh_rng_normal());
    }
    free(c);
}

/* Smallest |cos(a, b) - theta| over all pairs a < b, in double from the CPU's fp32 unit vectors. */
static double theta_margin(const float *unit, int64_t n, int d, float theta)
{
    double m = INFINITY;
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = a + 1; b < n; b++) {
            double dot = 0;
            for (int i = 0; i < d; i++)
                dot += (double)unit[a * d + i] * unit[b * d + i];
            double e = fabs(dot - theta);
            m = e < m ? e : m;
        }
    return m;
}

/* Lattice vectors: 4 nonzeros of ±2^s among the first `span` dimensions, so the norm is 2^(s+1),
 * the unit entries are ±0.5 and every cosine is a multiple of 0.25, exact in fp32 in any summation
 * order: the GEMMs must agree bit for bit, even for cosines equal to theta (strict >), and the
 * graph is no union of cliques (overlapping supports), which exercises the cover's tie rule and
 * incremental degree updates. */
static void make_lattice(float *x, int64_t n, int d, int span)
{
    for (int64_t v = 0; v < n; v++) {
        float *xv = x + v * d;
        memset(xv, 0, sizeof(float) * (size_t)d);
        float m = (float)(1 << (gh_rng_u64() % 4));
        for (int c = 0; c < 4;) {
            int i = (int)(gh_rng_u64() % (uint64_t)span);
            if (xv[i] != 0.0f)
                continue;
            xv[i] = gh_rng_u64() & 1 ? m : -m;
            c++;
        }
    }
}

static void case_codebook(sp_gpu_blas *blas, int64_t n, int d, int n_c, float noise, float theta, int max_mu,
                          int zeros)
{
    /* n_c < 0: lattice vectors over -n_c dimensions (exact cosines), noise unused */
    const char *op = "codebook";
    char shape[160];
    if (n_c < 0)
        snprintf(shape, sizeof shape, "[%lld x %d] lattice over %d dims (exact cosines) theta %g mu %s", (long long)n,
                 d, -n_c, (double)theta, max_mu ? "1..G" : "NULL");
    else
        snprintf(shape, sizeof shape, "[%lld x %d] %d clusters noise %g theta %g mu %s%s", (long long)n, d, n_c,
                 (double)noise, (double)theta, max_mu ? "1..G" : "NULL", zeros ? " zero vectors" : "");
    if (!gh_selected(op))
        return;
    int64_t bad = 0, ne = -1;
    double margin = 0;
    float *x = malloc(sizeof(float) * (size_t)n * d), *unit = malloc(sizeof(float) * (size_t)n * d),
          *mag = malloc(sizeof(float) * (size_t)n);
    uint32_t *mu = malloc(sizeof(uint32_t) * (size_t)n), *index = malloc(sizeof(uint32_t) * (size_t)n),
             *rep = malloc(sizeof(uint32_t) * (size_t)n);
    sp_codebook cb = {0};
    dbuf dx = {0}, dmu = {0}, di = {0}, dr = {0}, dne = {0}, dm = {0}, du = {0}, dsc = {0};
    int rc = -ENOMEM;
    char tol[96] = "identical";
    if (!x || !unit || !mag || !mu || !index || !rep)
        goto done;
    if (n_c < 0)
        make_lattice(x, n, d, -n_c);
    else
        make_clusters(x, n, d, n_c, noise, zeros);
    for (int64_t i = 0; i < n; i++)
        mu[i] = max_mu ? 1 + (uint32_t)(gh_rng_u64() % (uint64_t)max_mu) : 1;
    if ((rc = sp_codebook_build(x, n, d, max_mu ? mu : NULL, theta, &cb)))
        goto done;
    margin = n_c < 0 ? INFINITY : theta_margin(cb.unit, n, d, theta);
    snprintf(tol, sizeof tol, "identical; closest pair cosine %.2g from theta", margin);
    if (margin < 2e-5) {
        printf("    input has a pair cosine %.3g from theta: the GPU may decide it otherwise\n", margin);
        rc = -EINVAL;
        goto done;
    }
    size_t sb = sp_gpu_codebook_scratch_bytes(n);
    if ((rc = dbuf_upload(&dx, x, sizeof(float) * (size_t)n * d)) ||
        (rc = dbuf_upload(&dmu, mu, sizeof(uint32_t) * (size_t)n)) ||
        (rc = dbuf_new(&di, sizeof(uint32_t) * (size_t)n, 0xFF)) || (rc = dbuf_new(&dr, sizeof(uint32_t) * (size_t)n, 0xFF)) ||
        (rc = dbuf_new(&dne, sizeof(int64_t), 0xFF)) || (rc = dbuf_new(&dm, sizeof(float) * (size_t)n, 0xFF)) ||
        (rc = dbuf_new(&du, sizeof(float) * (size_t)n * d, 0xFF)) || (rc = dbuf_new(&dsc, sb, 0xFF)))
        goto done;
    sp_gpu_codebook_desc desc = {.x = dptr(&dx), .n = n, .d = d, .mu = max_mu ? dptr(&dmu) : NULL, .theta = theta,
                                 .index = dptr(&di), .rep = dptr(&dr), .n_entries = dptr(&dne), .mag = dptr(&dm),
                                 .unit = dptr(&du), .scratch = dptr(&dsc), .scratch_bytes = sb};
    if ((rc = sp_gpu_codebook_build(blas, gh_stream, desc)) || (rc = dbuf_download(&dne, &ne, "n_entries")) ||
        (rc = dbuf_download(&di, index, "index")) || (rc = dbuf_download(&dr, rep, "rep")) ||
        (rc = dbuf_download(&dm, mag, "mag")) || (rc = dbuf_download(&du, unit, "unit")) ||
        (rc = dbuf_download(&dsc, NULL, "scratch")))
        goto done;
    if (ne != cb.n_entries) {
        printf("    n_entries: gpu %lld cpu %lld\n", (long long)ne, (long long)cb.n_entries);
        bad++;
    }
    for (int64_t e = 0; e < cb.n_entries && e < ne; e++)
        if (rep[e] != cb.rep[e] && bad++ < GH_MAX_PRINT)
            printf("    rep[%lld]: gpu %u cpu %u\n", (long long)e, rep[e], cb.rep[e]);
    for (int64_t i = 0; i < n; i++) {
        if (index[i] != cb.index[i] && bad++ < GH_MAX_PRINT)
            printf("    index[%lld]: gpu %u cpu %u\n", (long long)i, index[i], cb.index[i]);
        if (!same_bits(mag[i], cb.mag[i]) && bad++ < GH_MAX_PRINT)
            printf("    mag[%lld]: gpu %.9g cpu %.9g\n", (long long)i, mag[i], cb.mag[i]);
    }
    for (int64_t i = 0; i < n * d; i++)
        if (!same_bits(unit[i], cb.unit[i]) && bad++ < GH_MAX_PRINT)
            printf("    unit[%lld]: gpu %.9g cpu %.9g\n", (long long)i, unit[i], cb.unit[i]);
    snprintf(tol, sizeof tol, "identical; %lld entries; closest pair cosine %.2g from theta", (long long)ne, margin);
done:
    report(op, shape, rc, bad, 0.0, tol);
    sp_codebook_free(&cb);
    dbuf_free(&dx);
    dbuf_free(&dmu);
    dbuf_free(&di);
    dbuf_free(&dr);
    dbuf_free(&dne);
    dbuf_free(&dm);
    dbuf_free(&du);
    dbuf_free(&dsc);
    free(x);
    free(unit);
    free(mag);
    free(mu);
    free(index);
    free(rep);
}

/* ---- codebook match ---- */

static void case_match(int n_vec, int d, int64_t max_ent, float theta)
{
    const char *op = "cb_match";
    char shape[128];
    snprintf(shape, sizeof shape, "%d vectors d %d up to %lld entries theta %g", n_vec, d, (long long)max_ent,
             (double)theta);
    if (!gh_selected(op))
        return;
    int64_t bad = 0, skipped = 0;
    double max_err = 0;
    size_t stride = (size_t)max_ent * d;
    uint16_t *ent = malloc(sizeof(uint16_t) * stride * n_vec);
    float *u = malloc(sizeof(float) * (size_t)n_vec * d), *x = malloc(sizeof(float) * (size_t)d),
          *cosg = malloc(sizeof(float) * (size_t)n_vec), mag;
    int64_t *nent = malloc(sizeof(int64_t) * (size_t)n_vec), *best = malloc(sizeof(int64_t) * (size_t)n_vec);
    dbuf de = {0}, du = {0}, dn = {0}, db = {0}, dc = {0};
    int rc = -ENOMEM;
    char tol[96];
    if (!ent || !u || !x || !cosg || !nent || !best)
        goto done;
    for (int v = 0; v < n_vec; v++) {
        nent[v] = v % 7 == 0 ? 0 : (int64_t)(gh_rng_u64() % (uint64_t)(max_ent + 1));
        for (int64_t e = 0; e < nent[v]; e++) {
            for (int i = 0; i < d; i++)
                x[i] = gh_rng_normal();
            sp_codebook_unit(x, d, x, &mag);
            for (int i = 0; i < d; i++)
                ent[v * stride + e * d + i] = sp_f32_to_fp16(x[i]);
        }
        /* half the vectors near an entry (cos ~ 0.9 .. 1), the rest random */
        int64_t near = nent[v] && v % 2 ? (int64_t)(gh_rng_u64() % (uint64_t)nent[v]) : -1;
        for (int i = 0; i < d; i++)
            x[i] = (near >= 0 ? 4.0f * sp_fp16_to_f32(ent[v * stride + near * d + i]) * sqrtf((float)d) : 0.0f) +
                   gh_rng_normal();
        sp_codebook_unit(x, d, u + (size_t)v * d, &mag);
    }
    if ((rc = dbuf_upload(&de, ent, sizeof(uint16_t) * stride * n_vec)) ||
        (rc = dbuf_upload(&du, u, sizeof(float) * (size_t)n_vec * d)) ||
        (rc = dbuf_upload(&dn, nent, sizeof(int64_t) * (size_t)n_vec)) ||
        (rc = dbuf_new(&db, sizeof(int64_t) * (size_t)n_vec, 0xFF)) || (rc = dbuf_new(&dc, sizeof(float) * (size_t)n_vec, 0xFF)))
        goto done;
    sp_gpu_codebook_match_desc md = {.u = dptr(&du), .n_vec = n_vec, .d = d, .entries = dptr(&de),
                                     .ent_stride = (int64_t)stride, .n_ent = dptr(&dn), .theta = theta,
                                     .best = dptr(&db), .best_cos = dptr(&dc)};
    if ((rc = sp_gpu_codebook_match(gh_stream, md)) || (rc = dbuf_download(&db, best, "best")) ||
        (rc = dbuf_download(&dc, cosg, "best_cos")))
        goto done;
    for (int v = 0; v < n_vec; v++) {
        float cc;
        const uint16_t *ev = ent + v * stride;
        int64_t want = sp_codebook_match(ev, nent[v], d, u + (size_t)v * d, theta, &cc);
        /* runner-up margin in double */
        double c1 = -INFINITY, c2 = -INFINITY;
        for (int64_t e = 0; e < nent[v]; e++) {
            double dot = 0;
            for (int i = 0; i < d; i++)
                dot += (double)u[(size_t)v * d + i] * sp_fp16_to_f32(ev[e * d + i]);
            if (dot > c1) {
                c2 = c1;
                c1 = dot;
            } else if (dot > c2) {
                c2 = dot;
            }
        }
        bool clear = nent[v] == 0 || ((c1 - c2 > 2e-5 || nent[v] == 1) && fabs(c1 - theta) > 2e-5);
        if (!clear) {
            skipped++;
            continue;
        }
        double err = nent[v] ? fabs((double)cosg[v] - cc) : 0;
        max_err = err > max_err ? err : max_err;
        bool cos_bad = nent[v] ? err > 1e-5 : cosg[v] != -INFINITY;
        if ((best[v] != want || cos_bad) && bad++ < GH_MAX_PRINT)
            printf("    vector %d (%lld entries): gpu %lld (cos %.7g) cpu %lld (cos %.7g)\n", v, (long long)nent[v],
                   (long long)best[v], cosg[v], (long long)want, cc);
    }
done:
    snprintf(tol, sizeof tol, "identical index, cos 1e-5; %lld near-tie vectors not compared", (long long)skipped);
    report(op, shape, rc, bad, max_err, tol);
    dbuf_free(&de);
    dbuf_free(&du);
    dbuf_free(&dn);
    dbuf_free(&db);
    dbuf_free(&dc);
    free(ent);
    free(u);
    free(x);
    free(cosg);
    free(nent);
    free(best);
}

/* ---- decode-tail coding (match or append) vs sp_kv_tail_append ---- */

/* Whether the CPU's choice for x is within fp32 rounding of another choice: the best two cosines
 * over segment + tail entries, or the best and theta, closer than 2e-5 (double precision). */
static bool near_tie(const float *x, int d, const uint16_t *cb1, int64_t n1, const uint16_t *cb2, int64_t n2,
                     float theta)
{
    float u[4096], mag;
    sp_codebook_unit(x, d, u, &mag);
    double c1 = -INFINITY, c2 = -INFINITY;
    for (int64_t e = 0; e < n1 + n2; e++) {
        const uint16_t *c = e < n1 ? cb1 + e * d : cb2 + (e - n1) * d;
        double dot = 0;
        for (int i = 0; i < d; i++)
            dot += (double)u[i] * sp_fp16_to_f32(c[i]);
        if (dot > c1) {
            c2 = c1;
            c1 = dot;
        } else if (dot > c2) {
            c2 = dot;
        }
    }
    return (n1 + n2 > 1 && c1 - c2 <= 2e-5) || (n1 + n2 > 0 && fabs(c1 - theta) <= 2e-5);
}

static void case_tail_code(int hq, int hk, int l, int d, int w, int keep, int n_tail)
{
    const char *op = "tail_code";
    char shape[128];
    snprintf(shape, sizeof shape, "hq %d hk %d l %d d %d window %d keep %d, %d tokens", hq, hk, l, d, w, keep, n_tail);
    if (!gh_selected(op))
        return;
    int64_t bad = 0;
    size_t kvn = (size_t)hk * l * d;
    float *k = malloc(sizeof(float) * kvn), *v = malloc(sizeof(float) * kvn);
    float *sc = malloc(sizeof(float) * (size_t)hq * (size_t)(l - w));
    float *nk = malloc(sizeof(float) * (size_t)hk * d), *nv = malloc(sizeof(float) * (size_t)hk * d);
    uint8_t *got = NULL;
    int64_t off[2][64] = {{0}}, cnt[2][64] = {{0}};
    sp_kv_selection sel = {0};
    sp_kv_segment seg = {0};
    sp_kv_tail t = {0};
    dbuf ds = {0}, dt = {0}, dx = {0}, doff = {0}, dcnt = {0};
    int rc = -ENOMEM, tokens = 0;
    char tol[96];
    if (!k || !v || !sc || !nk || !nv)
        goto done;
    make_clusters(k, (int64_t)hk * l, d, 24, 0.15f, 0);
    make_clusters(v, (int64_t)hk * l, d, 24, 0.2f, 0);
    for (int i = 0; i < hq * (l - w); i++)
        sc[i] = gh_rng_uniform(0.0f, 1.0f);
    if ((rc = sp_kv_selection_init(&sel, hq, hk, l, w)) || (rc = sp_kv_select_scores(&sel, sc, keep, SP_GQA_QUERY_HEAD)) ||
        (rc = sp_kv_segment_build(&seg, 0, k, v, d, &sel, true, 0.9f, 0.85f, NULL)) ||
        (rc = sp_kv_tail_init(&t, &seg, n_tail, 0.9f, 0.85f)))
        goto done;
    got = malloc(t.mem_bytes);
    if (!got) {
        rc = -ENOMEM;
        goto done;
    }
    for (int kv = 0; kv < 2; kv++)
        for (int h = 0, acc = 0; h < hk; h++) {
            cnt[kv][h] = kv ? seg.hdr->n_ent_v[h] : seg.hdr->n_ent_k[h];
            off[kv][h] = acc;
            acc += (int)cnt[kv][h];
        }
    if ((rc = dbuf_upload(&ds, seg.buf, seg.size)) || (rc = dbuf_upload(&dt, t.mem, t.mem_bytes)) ||
        (rc = dbuf_new(&dx, sizeof(float) * (size_t)hk * d, 0)) || (rc = dbuf_upload(&doff, off, sizeof off)) ||
        (rc = dbuf_upload(&dcnt, cnt, sizeof cnt)))
        goto done;
    uint8_t *tdev = dptr(&dt);
#define TDEV(field) (void *)(tdev + ((const uint8_t *)(field) - (const uint8_t *)t.mem))
    for (int j = 0; j < n_tail && !rc; j++) {
        for (int i = 0; i < hk * d; i++) {   /* odd tokens repeat context vectors, even ones are new */
            int h = i / d, c = i % d;
            nk[i] = j % 2 ? k[(size_t)h * l * d + (size_t)(j * 7 % l) * d + c] : gh_rng_uniform(-2.0f, 2.0f);
            nv[i] = j % 2 ? v[(size_t)h * l * d + (size_t)(j * 7 % l) * d + c] : gh_rng_uniform(-1.0f, 1.0f);
        }
        bool tie = false;
        for (int h = 0; h < hk; h++)
            tie |= near_tie(nk + h * d, d, seg.head[h].k_cb, seg.head[h].n_ent_k, t.k_ent + (size_t)h * t.cap * d,
                            t.n_new_k[h], t.theta_k) ||
                   near_tie(nv + h * d, d, seg.head[h].v_cb, seg.head[h].n_ent_v, t.v_ent + (size_t)h * t.cap * d,
                            t.n_new_v[h], t.theta_v);
        if (tie)
            break;   /* compare the tokens before it */
        if ((rc = sp_kv_tail_append(&t, &seg, nk, nv, l + j)))
            goto done;
        for (int kv = 0; kv < 2 && !rc; kv++) {
            if ((rc = sp_gpu_memcpy_h2d(gh_stream, dptr(&dx), kv ? nv : nk, sizeof(float) * (size_t)hk * d)))
                break;
            sp_gpu_codebook_code_desc cd = {
                .x = dptr(&dx), .n_vec = hk, .d = d, .ldx = d,
                .seg_cb = (const uint16_t *)((const uint8_t *)dptr(&ds) + seg.hdr->sec_off[kv ? SP_KV_SEC_VCB : SP_KV_SEC_KCB]),
                .seg_off = (const int64_t *)dptr(&doff) + kv * 64, .seg_n = (const int64_t *)dptr(&dcnt) + kv * 64,
                .tail_ent = TDEV(kv ? t.v_ent : t.k_ent), .tail_stride = t.cap * d, .tail_n = TDEV(kv ? t.n_new_v : t.n_new_k),
                .tail_cap = t.cap, .theta = kv ? t.theta_v : t.theta_k, .idx = (uint32_t *)TDEV(kv ? t.v_idx : t.k_idx) + j,
                .mag = (uint16_t *)TDEV(kv ? t.v_mag : t.k_mag) + j, .out_stride = t.cap};
            rc = sp_gpu_codebook_code(gh_stream, cd);
        }
        tokens++;
    }
#undef TDEV
    if (rc || (rc = dbuf_download(&dt, got, "tail")))
        goto done;
    /* every coded part (indices, magnitudes, new entries, their counts) byte for byte; pos is not
     * the kernel's (the host writes it) */
    size_t from = (size_t)((const uint8_t *)t.k_idx - (const uint8_t *)t.mem);
    for (size_t i = from; i < t.mem_bytes; i++)
        if (got[i] != ((const uint8_t *)t.mem)[i] && bad++ < GH_MAX_PRINT)
            printf("    tail byte %zu (part starting at %zu): gpu 0x%02x cpu 0x%02x\n", i, from, got[i],
                   ((const uint8_t *)t.mem)[i]);
done:
    snprintf(tol, sizeof tol, "identical tail bytes; %d of %d tokens compared (stops at a near-tie)", tokens, n_tail);
    report(op, shape, rc, bad, 0.0, tol);
    sp_kv_tail_free(&t);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    dbuf_free(&ds);
    dbuf_free(&dt);
    dbuf_free(&dx);
    dbuf_free(&doff);
    dbuf_free(&dcnt);
    free(k);
    free(v);
    free(sc);
    free(nk);
    free(nv);
    free(got);
}

/* ---- segment attention ---- */

/* bad_tail: the tail indices of KV head 0 (K of token 1, V of token 2) are set to UINT32_MAX on the
 * device, what a full tail's coding step writes: that head's outputs must be NaN (never a read or
 * an atomic outside the codebooks), the other heads unchanged. */
static void case_segattn(int hq, int hk, int l, int d, int w, int keep, sp_rope_mode mode, bool coded, int n_tail,
                         bool dense, bool bad_tail)
{
    const char *op = "segattn";
    char shape[160];
    snprintf(shape, sizeof shape, "hq %d hk %d l %d d %d window %d keep %d %s %s tail %d%s%s", hq, hk, l, d, w, keep,
             mode == SP_ROPE_NORM ? "norm" : "neox", coded ? "coded" : "raw", n_tail, dense ? " dense" : "",
             bad_tail ? " (head 0 tail indices UINT32_MAX)" : "");
    if (!gh_selected(op))
        return;
    int G = hq / hk, npos = l + n_tail + 4;
    int64_t bad = 0;
    double max_err = 0;
    size_t kvn = (size_t)hk * l * d;
    float *k = malloc(sizeof(float) * kvn), *v = malloc(sizeof(float) * kvn);
    float *sc = malloc(sizeof(float) * (size_t)hq * (size_t)(l - w > 0 ? l - w : 1));
    float *table = malloc(sizeof(float) * (size_t)npos * d), *q = malloc(sizeof(float) * (size_t)hq * d);
    float *want = malloc(sizeof(float) * (size_t)hq * d), *got = malloc(sizeof(float) * (size_t)hq * d);
    float *nk = malloc(sizeof(float) * (size_t)hk * d), *nv = malloc(sizeof(float) * (size_t)hk * d);
    sp_kv_selection sel = {0};
    sp_kv_segment seg = {0};
    sp_kv_tail t = {0};
    dbuf ds = {0}, dt = {0}, dq = {0}, dtab = {0}, dout = {0}, dsc = {0};
    int rc = -ENOMEM;
    if (!k || !v || !sc || !table || !q || !want || !got || !nk || !nv)
        goto done;
    make_clusters(k, (int64_t)hk * l, d, 24, 0.15f, 0);
    make_clusters(v, (int64_t)hk * l, d, 24, 0.2f, 0);
    for (int i = 0; i < hq * (l - w); i++)
        sc[i] = gh_rng_uniform(0.0f, 1.0f);
    if ((rc = sp_kv_selection_init(&sel, hq, hk, l, w)))
        goto done;
    if (dense)
        sp_kv_select_all(&sel);
    else if ((rc = sp_kv_select_scores(&sel, sc, keep, SP_GQA_QUERY_HEAD)))
        goto done;
    if ((rc = sp_kv_segment_build(&seg, 0, k, v, d, &sel, coded, 0.9f, 0.85f, NULL)) ||
        (rc = sp_kv_tail_init(&t, &seg, n_tail + 2, 0.9f, 0.85f)))
        goto done;
    for (int j = 0; j < n_tail; j++) {   /* odd tokens repeat context vectors (entry reuse), even ones are new */
        for (int i = 0; i < hk * d; i++) {
            int h = i / d, c = i % d;
            nk[i] = j % 2 ? k[(size_t)h * l * d + (size_t)(j * 5 % l) * d + c] : gh_rng_uniform(-2.0f, 2.0f);
            nv[i] = j % 2 ? v[(size_t)h * l * d + (size_t)(j * 5 % l) * d + c] : gh_rng_uniform(-1.0f, 1.0f);
        }
        if ((rc = sp_kv_tail_append(&t, &seg, nk, nv, l + j)))
            goto done;
    }
    sp_rope_table_fill(table, npos, d, 10000.0);
    for (int i = 0; i < hq * d; i++)
        q[i] = gh_rng_uniform(-1.0f, 1.0f) * 2.0f;
    for (int h = 0; h < hk; h++)
        if ((rc = sp_segattn_reference(&seg, &t, h, q + (size_t)h * G * d, table, npos, mode, 1.0f / sqrtf((float)d),
                                       want + (size_t)h * G * d)))
            goto done;
    if (bad_tail) {
        t.k_idx[1] = UINT32_MAX;   /* head 0: row h * cap + j */
        t.v_idx[2] = UINT32_MAX;
        for (int i = 0; i < G * d; i++)
            want[i] = NAN;
    }
    size_t sf = sp_gpu_segattn_scratch_floats(&seg, &t);
    if ((rc = dbuf_upload(&ds, seg.buf, seg.size)) || (rc = dbuf_upload(&dt, t.mem, t.mem_bytes)) ||
        (rc = dbuf_upload(&dq, q, sizeof(float) * (size_t)hq * d)) ||
        (rc = dbuf_upload(&dtab, table, sizeof(float) * (size_t)npos * d)) ||
        (rc = dbuf_new(&dout, sizeof(float) * (size_t)hq * d, 0xFF)) || (rc = dbuf_new(&dsc, sizeof(float) * sf, 0xFF)))
        goto done;
    sp_gpu_segattn_desc sd = {.seg = &seg, .seg_dev = dptr(&ds), .tail = &t, .tail_dev = dptr(&dt), .q = dptr(&dq),
                              .rope_table = dptr(&dtab), .rope_n_pos = npos, .mode = (int)mode,
                              .scale = 1.0f / sqrtf((float)d), .out = dptr(&dout), .scratch = dptr(&dsc),
                              .scratch_floats = sf};
    if ((rc = sp_gpu_segattn_decode(gh_stream, sd)) || (rc = dbuf_download(&dout, got, "out")) ||
        (rc = dbuf_download(&dsc, NULL, "scratch")))
        goto done;
    for (int i = 0; i < hq * d; i++) {
        double err = fabs((double)got[i] - want[i]), tol = 1e-4 + 1e-4 * fabs(want[i]);
        if (isnan(want[i])) {
            err = isnan(got[i]) ? 0.0 : INFINITY;
            tol = 0.0;
        }
        if (!(err <= tol) && bad++ < GH_MAX_PRINT)
            printf("    out[%d]: gpu %.9g ref %.9g\n", i, got[i], want[i]);
        if (err > max_err)
            max_err = err;
    }
done:
    report(op, shape, rc, bad, max_err, "1e-4 + 1e-4*|ref| vs the double reference");
    sp_kv_tail_free(&t);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    dbuf_free(&ds);
    dbuf_free(&dt);
    dbuf_free(&dq);
    dbuf_free(&dtab);
    dbuf_free(&dout);
    dbuf_free(&dsc);
    free(k);
    free(v);
    free(sc);
    free(table);
    free(q);
    free(want);
    free(got);
    free(nk);
    free(nv);
}

/* A segment whose group (query heads per KV head) exceeds the 64 bits of a membership mask: the
 * launcher must refuse it (-EINVAL) rather than shift a mask by 64 or more. The segment is a valid
 * dense one whose header (host and device copy) then claims 130 query heads. */
static void case_segattn_group(void)
{
    const char *op = "segattn";
    const char *shape = "group 130 > 64 (header patched): -EINVAL";
    if (!gh_selected(op))
        return;
    enum { HQ = 2, HK = 1, L = 40, D = 16, W = 4, GBIG = 130, NPOS = L + 4 };
    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    float *table = malloc(sizeof(float) * NPOS * D), *q = calloc((size_t)GBIG * D, sizeof(float));
    sp_kv_selection sel = {0};
    sp_kv_segment seg = {0};
    dbuf ds = {0}, dq = {0}, dtab = {0}, dout = {0}, dsc = {0};
    int rc = -ENOMEM;
    int64_t bad = 0;
    if (!k || !v || !table || !q)
        goto done;
    make_clusters(k, HK * L, D, 4, 0.1f, 0);
    make_clusters(v, HK * L, D, 4, 0.1f, 0);
    sp_rope_table_fill(table, NPOS, D, 10000.0);
    if ((rc = sp_kv_selection_init(&sel, HQ, HK, L, W)))
        goto done;
    sp_kv_select_all(&sel);
    if ((rc = sp_kv_segment_build(&seg, 0, k, v, D, &sel, false, 0.9f, 0.85f, NULL)))
        goto done;
    ((sp_kv_seg_header *)seg.hdr)->n_q_heads = GBIG * HK;
    seg.group = GBIG;
    size_t sf = sp_gpu_segattn_scratch_floats(&seg, NULL);
    if ((rc = dbuf_upload(&ds, seg.buf, seg.size)) || (rc = dbuf_upload(&dq, q, sizeof(float) * GBIG * D)) ||
        (rc = dbuf_upload(&dtab, table, sizeof(float) * NPOS * D)) ||
        (rc = dbuf_new(&dout, sizeof(float) * GBIG * D, 0xFF)) || (rc = dbuf_new(&dsc, sizeof(float) * sf, 0xFF)))
        goto done;
    sp_gpu_segattn_desc sd = {.seg = &seg, .seg_dev = dptr(&ds), .q = dptr(&dq), .rope_table = dptr(&dtab),
                              .rope_n_pos = NPOS, .mode = 0, .scale = 0.25f, .out = dptr(&dout),
                              .scratch = dptr(&dsc), .scratch_floats = sf};
    rc = sp_gpu_segattn_decode(gh_stream, sd);
    if (rc != -EINVAL) {
        printf("    launcher returned %d, expected -EINVAL\n", rc);
        bad = 1;
    }
    rc = dbuf_download(&dout, NULL, "out");   /* the context survived (and nothing ran) */
done:
    report(op, shape, rc, bad, 0.0, "refused");
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    dbuf_free(&ds);
    dbuf_free(&dq);
    dbuf_free(&dtab);
    dbuf_free(&dout);
    dbuf_free(&dsc);
    free(k);
    free(v);
    free(table);
    free(q);
}

/* ---- sampling ---- */

/* The sampler's PCG32 (runtime/sampler.c), reproduced to hand the GPU the same uniform draw. */
typedef struct {
    uint64_t state, inc;
} pcg;
static uint32_t pcg32(pcg *s)
{
    uint64_t old = s->state;
    s->state = old * 6364136223846793005ULL + s->inc;
    uint32_t xs = (uint32_t)(((old >> 18) ^ old) >> 27), rot = (uint32_t)(old >> 59);
    return (xs >> rot) | (xs << ((32 - rot) & 31));
}
static void pcg_seed(pcg *s, uint64_t seed)
{
    s->state = 0;
    s->inc = (seed << 1) | 1u;
    pcg32(s);
    s->state += 0x853c49e6748fea9bULL ^ seed;
    pcg32(s);
}

static void case_sample(int64_t n, float temperature, int top_k, float top_p, int draws, bool specials)
{
    const char *op = "sample";
    char shape[128];
    snprintf(shape, sizeof shape, "n %lld T %g top_k %d top_p %g x%d%s", (long long)n, (double)temperature, top_k,
             (double)top_p, draws, specials ? " (NaN, -inf, ties)" : "");
    if (!gh_selected(op))
        return;
    int64_t bad = 0;
    float *l = malloc(sizeof(float) * (size_t)n);
    sp_sampler_params p = {.temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = 1234};
    sp_sampler_t *smp = sp_sampler_new((int)n, &p);
    dbuf dl = {0}, dout = {0};
    int rc = -ENOMEM;
    pcg g;
    pcg_seed(&g, p.seed);
    if (!l || !smp)
        goto done;
    for (int64_t i = 0; i < n; i++) {
        l[i] = gh_rng_normal() * 3.0f;
        if (specials && i % 97 == 0)
            l[i] = i % 2 ? NAN : -INFINITY;
        if (specials && i % 101 == 0)
            l[i] = 9.0f;   /* a tie among the best */
    }
    if ((rc = dbuf_upload(&dl, l, sizeof(float) * (size_t)n)) || (rc = dbuf_new(&dout, sizeof(int32_t), 0xFF)))
        goto done;
    bool greedy = temperature <= 0.0f || top_k == 1;
    for (int r = 0; r < draws && !rc; r++) {
        int32_t want = sp_sampler_sample(smp, l), got = -1;
        double u = greedy ? 0.0 : (double)pcg32(&g) / 4294967296.0;   /* greedy draws nothing */
        sp_gpu_sample_desc d = {.logits = dptr(&dl), .n = n, .temperature = temperature, .top_k = top_k,
                                .top_p = top_p, .u01 = u, .out = dptr(&dout)};
        if ((rc = sp_gpu_sample(gh_stream, d)) || (rc = dbuf_download(&dout, &got, "out")))
            break;
        if (got != want && bad++ < GH_MAX_PRINT)
            printf("    draw %d (u %.9f): gpu %d cpu %d\n", r, u, got, want);
    }
done:
    report(op, shape, rc, bad, 0.0, "identical token for the same draw");
    dbuf_free(&dl);
    dbuf_free(&dout);
    sp_sampler_free(smp);
    free(l);
}

/* ---- the table ---- */

int main(int argc, char **argv)
{
    sp_gpu_blas *blas;
    int status = gh_begin(argc, argv, 0x2545F4914F6CDD1Dull, &blas);
    if (status)
        return status;

    struct { int h; int64_t l, w; int k; sp_pool_type p; bool div; } pr[] = {
        {9, 700, 32, 7, SP_POOL_MAX, false}, {9, 700, 32, 7, SP_POOL_AVG, false}, {4, 300, 16, 5, SP_POOL_MAX, true},
        {4, 300, 16, 5, SP_POOL_AVG, true}, {2, 40, 32, 13, SP_POOL_AVG, false}, {3, 10, 32, 7, SP_POOL_MAX, false},
        {1, 5000, 64, 1, SP_POOL_MAX, true},
    };
    for (size_t i = 0; i < sizeof pr / sizeof pr[0] && !gh_dead; i++)
        case_prepare(pr[i].h, pr[i].l, pr[i].w, pr[i].k, pr[i].p, pr[i].div);

    struct { int rows; int64_t n, k; int pad; } tk[] = {
        {9, 668, 150, 0}, {6, 668, 1, 3}, {6, 668, 667, 0}, {6, 668, 668, 0}, {3, 668, 1000, 0}, {3, 100, 0, 0},
        {4, 40000, 4096, 5}, {2, 1, 1, 0}, {3, 513, 257, 0},
    };
    for (size_t i = 0; i < sizeof tk / sizeof tk[0] && !gh_dead; i++)
        case_topk(tk[i].rows, tk[i].n, tk[i].k, tk[i].pad);

    struct { int64_t n; int d, nc; float noise, theta; int mu, zeros; } cbc[] = {
        {300, 64, 20, 0.3f, 0.8f, 0, 0}, {700, 64, 40, 0.3f, 0.8f, 3, 50}, {1000, 128, 60, 0.25f, 0.85f, 4, 0},
        {257, 32, 8, 0.2f, 0.7f, 0, 0}, {100, 64, 5, 0.2f, 1.5f, 0, 10}, {100, 64, 5, 0.2f, -1.5f, 2, 0},
        {5000, 64, 200, 0.3f, 0.75f, 3, 0}, {1, 16, 1, 0.1f, 0.9f, 0, 0},
        {600, 64, -10, 0, 0.25f, 0, 0}, {600, 64, -10, 0, 0.5f, 3, 0}, {2000, 32, -14, 0, 0.0f, 4, 0},
        {129, 16, -6, 0, 0.25f, 2, 0},
    };
    for (size_t i = 0; i < sizeof cbc / sizeof cbc[0] && !gh_dead; i++)
        case_codebook(blas, cbc[i].n, cbc[i].d, cbc[i].nc, cbc[i].noise, cbc[i].theta, cbc[i].mu, cbc[i].zeros);

    if (!gh_dead) {
        case_match(64, 64, 300, 0.9f);
        case_match(33, 128, 1000, 0.8f);
        case_match(7, 32, 1, 0.5f);
        case_tail_code(9, 3, 700, 64, 32, 150, 24);
        case_tail_code(16, 1, 257, 128, 8, 100, 12);
        case_tail_code(4, 4, 300, 32, 16, 40, 40);
    }

    struct { int hq, hk, l, d, w, keep; sp_rope_mode m; bool coded; int tail; bool dense, bad_tail; } sa[] = {
        {9, 3, 700, 64, 32, 150, SP_ROPE_NORM, true, 6, false, false},
        {9, 3, 700, 64, 32, 150, SP_ROPE_NEOX, true, 6, false, false},
        {4, 2, 300, 32, 16, 40, SP_ROPE_NORM, false, 5, false, false},
        {16, 1, 257, 128, 8, 100, SP_ROPE_NEOX, true, 3, false, false},
        {2, 2, 90, 16, 4, 86, SP_ROPE_NORM, true, 0, false, false},
        {8, 2, 400, 128, 16, 0, SP_ROPE_NEOX, true, 4, true, false},
        {4, 4, 200, 64, 64, 60, SP_ROPE_NORM, false, 0, true, false},
        {8, 1, 2000, 64, 32, 500, SP_ROPE_NORM, true, 8, false, false},
        {6, 3, 120, 32, 8, 50, SP_ROPE_NORM, true, 4, false, true},
    };
    for (size_t i = 0; i < sizeof sa / sizeof sa[0] && !gh_dead; i++)
        case_segattn(sa[i].hq, sa[i].hk, sa[i].l, sa[i].d, sa[i].w, sa[i].keep, sa[i].m, sa[i].coded, sa[i].tail,
                     sa[i].dense, sa[i].bad_tail);
    if (!gh_dead)
        case_segattn_group();

    struct { int64_t n; float t; int k; float p; int draws; bool sp; } smp[] = {
        {49152, 0.8f, 40, 0.95f, 50, false}, {49152, 0.8f, 40, 0.95f, 50, true}, {49152, 1.5f, 1024, 1.0f, 50, false},
        {1000, 0.7f, 0, 0.9f, 30, true}, {49152, 0.0f, 40, 0.95f, 5, true}, {49152, 0.9f, 1, 0.5f, 5, false},
        {49152, 1.0f, 2000, 0.9f, 2, false}, {10, 1.0f, 40, 0.01f, 20, false},
    };
    for (size_t i = 0; i < sizeof smp / sizeof smp[0] && !gh_dead; i++)
        case_sample(smp[i].n, smp[i].t, smp[i].k, smp[i].p, smp[i].draws, smp[i].sp);

    return gh_end(blas);
}
