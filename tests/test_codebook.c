/* test_codebook.c - greedy cover: hand graph, brute force on repeated copies (the paper's
 * Algorithm 1), multiplicity == explicit repetition, θ bound, zero-norm guard, decode match. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codebook.h"
#include "fp16.h"
#include "support/xorshift.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double urand(void) { return xorshift64_unit(&rng); }

static void angles(float *x, const double *deg, int n)
{
    for (int i = 0; i < n; i++) {
        x[2 * i] = (float)(2.0 * cos(deg[i] * M_PI / 180));
        x[2 * i + 1] = (float)(2.0 * sin(deg[i] * M_PI / 180));
    }
}

Test(codebook, hand_graph_and_multiplicity_changes_the_choice)
{
    /* a=0°, b=5°, c=10°, e=-5°; θ = cos 7°: edges a-b, b-c, a-e (+ self loops).
     * μ = 1: deg a = 3, b = 3 -> tie -> a (lower index) covers a, b, e; then c. */
    double deg[4] = {0, 5, 10, -5};
    float x[8];
    angles(x, deg, 4);
    float theta = (float)cos(7 * M_PI / 180);
    sp_codebook cb;
    cr_assert_eq(sp_codebook_build(x, 4, 2, NULL, theta, &cb), 0);
    cr_assert_eq(cb.n_entries, 2);
    cr_assert(cb.rep[0] == 0 && cb.rep[1] == 2);
    cr_assert(cb.index[0] == 0 && cb.index[1] == 0 && cb.index[2] == 1 && cb.index[3] == 0);
    cr_assert_float_eq(cb.mag[1], 2.0f, 1e-6);
    sp_codebook_free(&cb);
    /* μ(c) = 3: deg b = 1 + 1 + 3 = 5 > deg a = 3 -> b covers a, b, c; then e */
    uint32_t mu[4] = {1, 1, 3, 1};
    cr_assert_eq(sp_codebook_build(x, 4, 2, mu, theta, &cb), 0);
    cr_assert_eq(cb.n_entries, 2);
    cr_assert(cb.rep[0] == 1 && cb.rep[1] == 3);
    cr_assert(cb.index[0] == 0 && cb.index[1] == 0 && cb.index[2] == 0 && cb.index[3] == 1);
    sp_codebook_free(&cb);
}

/* The paper's Algorithm 1, literally: vectors repeated μ times (copies adjacent), graph in double,
 * each round recomputes every uncovered vertex's degree among uncovered vertices, picks the max
 * (lowest index on ties), covers it and its uncovered neighbours. Results are mapped back to the
 * original vectors (rep = original index of the picked copy; index per original vector). Returns
 * false when a cosine lies within 1e-5 of θ (fp32 vs double could legitimately disagree). */
static bool brute(const float *x, int n, int d, const uint32_t *mu, double theta, uint32_t *rep,
                  int *n_rep, uint32_t *index)
{
    int N = 0, orig[4096];
    for (int i = 0; i < n; i++)
        for (uint32_t c = 0; c < mu[i]; c++)
            orig[N++] = i;
    double *u = malloc(sizeof(double) * n * d);
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int c = 0; c < d; c++)
            s += (double)x[i * d + c] * x[i * d + c];
        s = sqrt(s);
        for (int c = 0; c < d; c++)
            u[i * d + c] = x[i * d + c] / s;
    }
    char *G = calloc((size_t)N * N, 1), *cov = calloc(N, 1);
    bool ok = true;
    for (int a = 0; a < N; a++)
        for (int b = 0; b < N; b++) {
            double s = 0;
            for (int c = 0; c < d; c++)
                s += u[orig[a] * d + c] * u[orig[b] * d + c];
            if (orig[a] != orig[b] && fabs(s - theta) < 1e-5)
                ok = false;
            G[a * N + b] = orig[a] == orig[b] || s > theta;
        }
    int left = N, e = 0;
    while (left > 0) {
        int best = -1, bd = -1;
        for (int a = 0; a < N; a++) {
            if (cov[a])
                continue;
            int dg = 0;
            for (int b = 0; b < N; b++)
                dg += !cov[b] && G[a * N + b];
            if (dg > bd) {
                bd = dg;
                best = a;
            }
        }
        rep[e] = (uint32_t)orig[best];
        for (int b = 0; b < N; b++)
            if (!cov[b] && G[best * N + b]) {
                cov[b] = 1;
                index[orig[b]] = (uint32_t)e;
                left--;
            }
        e++;
    }
    *n_rep = e;
    free(u);
    free(G);
    free(cov);
    return ok;
}

/* Clustered random vectors: a few random directions plus noise of random size. */
static void clustered(float *x, int n, int d, int n_centres, double noise)
{
    float c[16][64];
    for (int k = 0; k < n_centres; k++)
        for (int i = 0; i < d; i++)
            c[k][i] = (float)(urand() * 2 - 1);
    for (int j = 0; j < n; j++) {
        int k = (int)(urand() * n_centres);
        double scale = 0.2 + 3 * urand();
        for (int i = 0; i < d; i++)
            x[j * d + i] = (float)(scale * (c[k][i] + noise * (urand() * 2 - 1)));
    }
}

Test(codebook, equals_brute_force_algorithm1_on_repeated_copies)
{
    int checked = 0;
    for (int trial = 0; trial < 200; trial++) {
        int n = 2 + (int)(urand() * 40), d = 2 + (int)(urand() * 6);
        float x[48 * 8];
        uint32_t mu[48], rep_b[4096], idx_b[48];
        clustered(x, n, d, 1 + (int)(urand() * 5), 0.1 + 0.5 * urand());
        for (int i = 0; i < n; i++)
            mu[i] = 1 + (uint32_t)(urand() * 3);
        float theta = (float)(0.7 + 0.29 * urand());
        int nb;
        if (!brute(x, n, d, mu, theta, rep_b, &nb, idx_b))
            continue;
        sp_codebook cb;
        cr_assert_eq(sp_codebook_build(x, n, d, mu, theta, &cb), 0);
        cr_assert_eq(cb.n_entries, nb, "trial %d: %lld entries vs brute %d", trial,
                     (long long)cb.n_entries, nb);
        for (int e = 0; e < nb; e++)
            cr_assert_eq(cb.rep[e], rep_b[e], "trial %d entry %d", trial, e);
        for (int i = 0; i < n; i++)
            cr_assert_eq(cb.index[i], idx_b[i], "trial %d vector %d", trial, i);
        sp_codebook_free(&cb);
        checked++;
    }
    cr_assert_gt(checked, 150, "too many instances skipped near θ (%d checked)", checked);
}

Test(codebook, multiplicity_equals_explicit_repetition)
{
    for (int trial = 0; trial < 30; trial++) {
        int n = 5 + (int)(urand() * 60), d = 8, R = 0;
        float x[64 * 8], xr[64 * 4 * 8];
        uint32_t mu[64], first[64];
        clustered(x, n, d, 3, 0.4);
        for (int i = 0; i < n; i++) {
            mu[i] = 1 + (uint32_t)(urand() * 4);
            first[i] = (uint32_t)R;
            for (uint32_t c = 0; c < mu[i]; c++)
                memcpy(xr + (R++) * d, x + i * d, sizeof(float) * d);
        }
        sp_codebook a, b;
        cr_assert_eq(sp_codebook_build(x, n, d, mu, 0.9f, &a), 0);
        cr_assert_eq(sp_codebook_build(xr, R, d, NULL, 0.9f, &b), 0);
        cr_assert_eq(a.n_entries, b.n_entries, "trial %d", trial);
        for (int e = 0; e < a.n_entries; e++)
            cr_assert_eq(first[a.rep[e]], b.rep[e], "trial %d entry %d", trial, e);
        for (int i = 0; i < n; i++)
            for (uint32_t c = 0; c < mu[i]; c++)
                cr_assert_eq(a.index[i], b.index[first[i] + c]);
        sp_codebook_free(&a);
        sp_codebook_free(&b);
    }
}

Test(codebook, every_vector_within_theta_of_its_entry)
{
    enum { N = 2000, D = 64 };
    float *x = malloc(sizeof(float) * N * D);
    clustered(x, N, D, 12, 0.15);
    float thetas[2] = {0.98f, 0.95f};
    for (int t = 0; t < 2; t++) {
        sp_codebook cb;
        cr_assert_eq(sp_codebook_build(x, N, D, NULL, thetas[t], &cb), 0);
        cr_assert_lt(cb.n_entries, N / 2, "clustered data must share entries (%lld)",
                     (long long)cb.n_entries);
        for (int64_t e = 0; e < cb.n_entries; e++)
            cr_assert_eq(cb.index[cb.rep[e]], (uint32_t)e, "an entry codes itself");
        double worst = 2, worst16 = 2;
        for (int i = 0; i < N; i++) {
            const float *u = cb.unit + (size_t)i * D,
                        *c = cb.unit + (size_t)cb.rep[cb.index[i]] * D;
            double s = 0, s16 = 0, n16 = 0;
            for (int k = 0; k < D; k++) {
                s += (double)u[k] * c[k];
                float h = sp_fp16_to_f32(sp_f32_to_fp16(c[k]));
                s16 += (double)u[k] * h;
                n16 += (double)h * h;
            }
            worst = s < worst ? s : worst;
            s16 /= sqrt(n16);
            worst16 = s16 < worst16 ? s16 : worst16;
            double xn = 0;
            for (int k = 0; k < D; k++)
                xn += (double)x[i * D + k] * x[i * D + k];
            cr_assert_float_eq(cb.mag[i], sqrt(xn), 1e-4 * sqrt(xn));
        }
        cr_assert_gt(worst, thetas[t] - 1e-6, "cos %f not > θ %f", worst, thetas[t]);
        /* stored fp16 entries lose at most ~1e-3 of cosine */
        cr_assert_gt(worst16, thetas[t] - 1e-3, "fp16 cos %f vs θ %f", worst16, thetas[t]);
        sp_codebook_free(&cb);
    }
    free(x);
}

Test(codebook, theta_above_one_and_zero_vectors)
{
    float x[5 * 4] = {1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0};
    sp_codebook cb;
    cr_assert_eq(sp_codebook_build(x, 5, 4, NULL, 1.5f, &cb), 0);
    cr_assert_eq(cb.n_entries, 5, "θ > 1 merges nothing, not even duplicates");
    sp_codebook_free(&cb);
    cr_assert_eq(sp_codebook_build(x, 5, 4, NULL, 0.9f, &cb), 0);
    cr_assert_eq(cb.index[0], cb.index[1], "duplicates merge");
    cr_assert_eq(cb.mag[2], 0.0f, "zero-norm guard");
    cr_assert_neq(cb.index[2], cb.index[0]);
    for (int k = 0; k < 4; k++)
        cr_assert_eq(cb.unit[2 * 4 + k], 0.0f);
    cr_assert_eq(cb.index[4], cb.index[0], "cos 0.949 > 0.9 merges");
    cr_assert_eq(cb.n_entries, 3, "two zero vectors have cos 0: separate entries");
    sp_codebook_free(&cb);
    cr_assert_lt(sp_codebook_build(x, 5, 0, NULL, 0.9f, &cb), 0);
}

Test(codebook, decode_match)
{
    uint16_t e[3 * 2];
    float v[6] = {1, 0, 0, 1, -1, 0};
    for (int i = 0; i < 6; i++)
        e[i] = sp_f32_to_fp16(v[i]);
    float u[2] = {0.9950042f, 0.0998334f}, best; /* 5.7° from entry 0 */
    cr_assert_eq(sp_codebook_match(e, 3, 2, u, 0.99f, &best), 0);
    cr_assert_float_eq(best, 0.9950042f, 1e-4);
    cr_assert_eq(sp_codebook_match(e, 3, 2, u, 0.996f, &best), -1, "strict threshold");
    float w[2] = {0.7071068f, 0.7071068f};
    cr_assert_eq(sp_codebook_match(e, 3, 2, w, 0.5f, &best), 0, "ties go to the lower index");
    cr_assert_eq(sp_codebook_match(e, 0, 2, w, 0.5f, &best), -1);
}

Test(codebook, eight_k_tokens_bounded, .timeout = 120)
{
    enum { N = 8192, D = 64 };
    float *x = malloc(sizeof(float) * N * D);
    clustered(x, N, D, 16, 0.1);
    sp_codebook cb;
    cr_assert_eq(sp_codebook_build(x, N, D, NULL, 0.98f, &cb), 0);
    cr_assert_gt(cb.n_entries, 0);
    cr_assert_leq(cb.n_entries, N);
    sp_codebook_free(&cb);
    free(x);
}

/* entry = centroid: each entry becomes the normalized mu-weighted mean of its members' directions,
 * which has at least the weighted cosine sum of the first member's own direction (the paper's
 * entry); indices, magnitudes and representatives do not change. */
Test(codebook, centroid_entries)
{
    enum { N = 300, D = 24 };
    float *x = malloc(sizeof(float) * N * D);
    uint32_t mu[N];
    clustered(x, N, D, 12, 0.08);
    for (int i = 0; i < N; i++)
        mu[i] = 1 + (uint32_t)(urand() * 4);
    sp_codebook a, b;
    cr_assert_eq(sp_codebook_build(x, N, D, mu, 0.95f, &a), 0);
    cr_assert_eq(sp_codebook_build(x, N, D, mu, 0.95f, &b), 0);
    cr_assert_eq(sp_codebook_centroids(&b, mu), 0);
    cr_assert_lt(a.n_entries, N / 2, "the fixture merges (%lld entries)", (long long)a.n_entries);
    int moved = 0;
    for (int64_t e = 0; e < a.n_entries; e++) {
        double want[D] = {0}, nrm = 0, first = 0, cent = 0;
        const float *ua = a.unit + (size_t)a.rep[e] * D, *ub = b.unit + (size_t)b.rep[e] * D;
        for (int i = 0; i < N; i++)
            if (a.index[i] == (uint32_t)e)
                for (int j = 0; j < D; j++)
                    want[j] += mu[i] * (double)a.unit[(size_t)i * D + j];
        for (int j = 0; j < D; j++)
            nrm += want[j] * want[j];
        for (int j = 0; j < D; j++)
            cr_assert_float_eq(ub[j], want[j] / sqrt(nrm), 1e-6, "entry %lld", (long long)e);
        for (int i = 0; i < N; i++) {
            if (a.index[i] != (uint32_t)e)
                continue;
            double cf = 0, cc = 0;
            for (int j = 0; j < D; j++) {
                cf += (double)ua[j] * a.unit[(size_t)i * D + j];
                cc += (double)ub[j] * a.unit[(size_t)i * D + j];
            }
            first += mu[i] * cf;
            cent += mu[i] * cc;
        }
        cr_assert_geq(cent, first - 1e-9, "entry %lld: centroid %g < first member %g", (long long)e,
                      cent, first);
        moved += cent > first + 1e-6;
    }
    cr_assert_gt(moved, 0, "no centroid differs from its first member");
    cr_assert_eq(memcmp(a.index, b.index, sizeof(uint32_t) * N), 0);
    cr_assert_eq(memcmp(a.mag, b.mag, sizeof(float) * N), 0);
    sp_codebook_free(&a);
    sp_codebook_free(&b);
    free(x);
}
