/* codebook.c - greedy-cover codebook over unit directions (DESIGN §4.4).
 *
 * DESIGN
 * - Graph: the n×n cosine matrix is never held in floats. Rows are processed in tiles of T rows
 *   (T·n <= 1 Mi floats, so the tile is at most 4 MiB): cblas_sgemm computes the tile against the
 *   columns at or right of the tile start (the upper triangle only), and each decision cos > θ is
 *   written to BOTH bits (a,b) and (b,a) of a bitset. Deciding every pair once keeps the graph
 *   exactly symmetric even though sgemm's summation order varies between tiles; the incremental
 *   degree updates below rely on that symmetry. Self-loops are set unconditionally.
 *   Memory: n·⌈n/64⌉·8 bytes (8 MiB at n = 8192) + tile + n·d floats of directions.
 * - Degrees: deg[a] = Σ_b μ(b)·G[a,b]. On repeated copies (each vector μ times, as the paper's
 *   "repeat" does) Algorithm 1 sees exactly these degrees, and a vector's copies are always covered
 *   together, so the result equals the paper's on the repeated set (tests check this by brute force).
 * - Cover: pick the uncovered vertex of maximum degree (lowest index on ties), make it an entry,
 *   cover it and its uncovered neighbours; for each vertex c covered in that round subtract μ(c)
 *   from the degree of each still-uncovered neighbour (one pass over row c, which is visited once
 *   in the whole run): O(n²/64) word operations in total. The pick uses a lazy max-heap
 *   (O(log n) per pick and per re-queued stale entry).
 */
#include "codebook.h"

#include <cblas.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "sp_error.h"

void sp_codebook_unit(const float *x, int d, float *u, float *mag)
{
    double ss = 0;
    for (int i = 0; i < d; i++)
        ss += (double)x[i] * x[i];
    double m = sqrt(ss);
    if (!(m > 0) || !isfinite(m)) {
        memset(u, 0, (size_t)d * sizeof *u);
        *mag = 0;
        return;
    }
    for (int i = 0; i < d; i++)
        u[i] = (float)(x[i] / m);
    *mag = (float)m;
}

void sp_codebook_free(sp_codebook *cb)
{
    if (!cb)
        return;
    free(cb->index);
    free(cb->rep);
    free(cb->mag);
    free(cb->unit);
    memset(cb, 0, sizeof *cb);
}

/* Max-heap of (degree, vertex) ordered by degree descending, vertex ascending: the greedy pick
 * with its tie rule. Entries go stale when a degree falls; they are re-queued lazily on pop, so
 * the heap never holds more than n entries and a pick costs O(log n) amortized per stale
 * re-queue instead of an O(n) scan. */
typedef struct {
    int64_t deg, v;
} hnode;

static bool hbefore(hnode a, hnode b)
{
    return a.deg > b.deg || (a.deg == b.deg && a.v < b.v);
}

static void heap_push(hnode *h, int64_t *n, int64_t deg, int64_t v)
{
    int64_t i = (*n)++;
    hnode x = {deg, v};
    while (i > 0 && hbefore(x, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

static hnode heap_pop(hnode *h, int64_t *n)
{
    hnode top = h[0], x = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && hbefore(h[c + 1], h[c]))
            c++;
        if (!hbefore(h[c], x))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
    return top;
}

int sp_codebook_build(const float *x, int64_t n, int d, const uint32_t *mu, float theta,
                      sp_codebook *cb)
{
    memset(cb, 0, sizeof *cb);
    if (n < 0 || n > UINT32_MAX || d < 1 || (n > 0 && !x) || isnan(theta))
        return sp_error(EINVAL, "codebook: bad arguments (n=%lld, d=%d, theta=%g)", (long long)n,
                        d, (double)theta);
    cb->n = n;
    cb->d = d;
    int rc = 0;
    size_t words = (size_t)(n + 63) / 64;
    uint64_t *adj = NULL, *covered = NULL;
    int64_t *deg = NULL, *round = NULL, hn = 0;
    hnode *heap = NULL;
    float *tile = NULL;
    cb->index = malloc((size_t)(n ? n : 1) * sizeof *cb->index);
    cb->rep = malloc((size_t)(n ? n : 1) * sizeof *cb->rep);
    cb->mag = malloc((size_t)(n ? n : 1) * sizeof *cb->mag);
    cb->unit = malloc((size_t)(n ? n : 1) * d * sizeof *cb->unit);
    adj = calloc(words * (size_t)n + 1, sizeof *adj);
    covered = calloc(words + 1, sizeof *covered);
    deg = calloc((size_t)n + 1, sizeof *deg);
    round = malloc(((size_t)n + 1) * sizeof *round);
    /* a vertex has at most one heap entry at any time (a stale pop removes it before re-queueing) */
    heap = malloc(((size_t)n + 1) * sizeof *heap);
    int64_t T = n > 0 ? (int64_t)(1 << 20) / n : 1;
    if (T < 1)
        T = 1;
    if (T > n)
        T = n > 0 ? n : 1;
    tile = malloc((size_t)T * (size_t)(n ? n : 1) * sizeof *tile);
    if (!cb->index || !cb->rep || !cb->mag || !cb->unit || !adj || !covered || !deg || !round ||
        !heap || !tile) {
        rc = sp_error(ENOMEM, "codebook: out of memory for %lld vectors (%zu MiB of adjacency)",
                      (long long)n, words * (size_t)n * 8 >> 20);
        goto free_all;
    }
    for (int64_t i = 0; i < n; i++)
        sp_codebook_unit(x + (size_t)i * d, d, cb->unit + (size_t)i * d, &cb->mag[i]);

    /* Graph, upper triangle per tile, mirrored. */
    for (int64_t r0 = 0; r0 < n; r0 += T) {
        int64_t rows = n - r0 < T ? n - r0 : T, cols = n - r0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)cols, d, 1.0f,
                    cb->unit + (size_t)r0 * d, d, cb->unit + (size_t)r0 * d, d, 0.0f, tile,
                    (int)cols);
        for (int64_t i = 0; i < rows; i++) {
            int64_t a = r0 + i;
            adj[(size_t)a * words + (size_t)a / 64] |= 1ull << (a % 64);
            const float *t = tile + (size_t)i * cols - r0; /* t[b]: cos(a, b) */
            uint64_t *arow = adj + (size_t)a * words;
            int64_t b = a + 1;
            for (; b < n && b % 8; b++)
                if (t[b] > theta) {
                    arow[b / 64] |= 1ull << (b % 64);
                    adj[(size_t)b * words + (size_t)a / 64] |= 1ull << (a % 64);
                }
#if defined(__AVX2__)
            /* Most pairs are not edges: compare 8 at a time, touch memory only for edges. */
            const __m256 th = _mm256_set1_ps(theta);
            for (; b + 8 <= n; b += 8) {
                unsigned m = (unsigned)_mm256_movemask_ps(
                    _mm256_cmp_ps(_mm256_loadu_ps(t + b), th, _CMP_GT_OQ));
                if (!m)
                    continue;
                arow[b / 64] |= (uint64_t)m << (b % 64);
                for (; m; m &= m - 1)
                    adj[(size_t)(b + __builtin_ctz(m)) * words + (size_t)a / 64] |= 1ull << (a % 64);
            }
#endif
            for (; b < n; b++)
                if (t[b] > theta) {
                    arow[b / 64] |= 1ull << (b % 64);
                    adj[(size_t)b * words + (size_t)a / 64] |= 1ull << (a % 64);
                }
        }
    }
    for (int64_t a = 0; a < n; a++) {
        const uint64_t *row = adj + (size_t)a * words;
        int64_t s = 0;
        for (size_t w = 0; w < words; w++)
            for (uint64_t bits = row[w]; bits; bits &= bits - 1) {
                int64_t b = (int64_t)(w * 64 + (size_t)__builtin_ctzll(bits));
                s += mu ? mu[b] : 1;
            }
        deg[a] = s;
    }

    /* Greedy cover with incremental degree updates. */
    for (int64_t a = 0; a < n; a++)
        heap_push(heap, &hn, deg[a], a);
    int64_t left = n, ne = 0;
    while (left > 0) {
        int64_t p = -1;
        while (p < 0) {
            hnode top = heap_pop(heap, &hn);
            if (covered[top.v / 64] >> (top.v % 64) & 1)
                continue;
            if (top.deg != deg[top.v]) /* stale: degrees only fall, so re-queue at its value */
                heap_push(heap, &hn, deg[top.v], top.v);
            else
                p = top.v;
        }
        cb->rep[ne] = (uint32_t)p;
        int64_t nr = 0;
        const uint64_t *prow = adj + (size_t)p * words;
        for (size_t w = 0; w < words; w++) {
            uint64_t bits = prow[w] & ~covered[w];
            covered[w] |= bits;
            for (; bits; bits &= bits - 1) {
                int64_t b = (int64_t)(w * 64 + (size_t)__builtin_ctzll(bits));
                cb->index[b] = (uint32_t)ne;
                round[nr++] = b;
            }
        }
        for (int64_t i = 0; i < nr; i++) {
            int64_t c = round[i];
            int64_t m = mu ? mu[c] : 1;
            const uint64_t *crow = adj + (size_t)c * words;
            for (size_t w = 0; w < words; w++)
                for (uint64_t bits = crow[w] & ~covered[w]; bits; bits &= bits - 1)
                    deg[w * 64 + (size_t)__builtin_ctzll(bits)] -= m;
        }
        left -= nr;
        ne++;
    }
    cb->n_entries = ne;

free_all:
    free(adj);
    free(covered);
    free(deg);
    free(round);
    free(heap);
    free(tile);
    if (rc < 0)
        sp_codebook_free(cb);
    return rc;
}

int64_t sp_codebook_match(const uint16_t *entries, int64_t n_entries, int d, const float *u,
                          float theta, float *best_cos)
{
    int64_t best = -1;
    float bc = -INFINITY;
    for (int64_t e = 0; e < n_entries; e++) {
        const uint16_t *c = entries + (size_t)e * d;
        float dot = 0;
        int i = 0;
#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
        __m256 acc = _mm256_setzero_ps();
        for (; i + 8 <= d; i += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(u + i),
                                  _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + i))), acc);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        dot = _mm_cvtss_f32(h);
#endif
        for (; i < d; i++)
            dot += u[i] * sp_fp16_to_f32(c[i]);
        if (dot > bc) {
            bc = dot;
            best = e;
        }
    }
    if (best_cos)
        *best_cos = bc;
    return best >= 0 && bc > theta ? best : -1;
}

int sp_codebook_centroids(sp_codebook *cb, const uint32_t *mu)
{
    size_t d = (size_t)cb->d, ne = (size_t)cb->n_entries;
    double *sum = calloc((ne ? ne : 1) * d, sizeof *sum);
    if (!sum)
        return sp_error(ENOMEM, "codebook: out of memory for %zu centroids", ne);
    for (int64_t i = 0; i < cb->n; i++) {
        double w = mu ? (double)mu[i] : 1.0;
        const float *u = cb->unit + (size_t)i * d;
        double *s = sum + (size_t)cb->index[i] * d;
        for (size_t j = 0; j < d; j++)
            s[j] += w * u[j];
    }
    for (size_t e = 0; e < ne; e++) {
        double *s = sum + e * d, nrm = 0;
        for (size_t j = 0; j < d; j++)
            nrm += s[j] * s[j];
        if (!(nrm > 0))
            continue;
        nrm = sqrt(nrm);
        float *dst = cb->unit + (size_t)cb->rep[e] * d;
        for (size_t j = 0; j < d; j++)
            dst[j] = (float)(s[j] / nrm);
    }
    free(sum);
    return 0;
}
