/* codebook.h - SpindleKV codebook replacement (DESIGN §4.4, Algorithm 1 made exact).
 *
 * One codebook is built per (layer, KV head, K or V) over the context tokens that any query head of
 * the group kept (window tokens stay raw). Each vector γ is split into magnitude m = ‖γ‖ and unit
 * direction u = γ/m; the directions form a graph with an edge a-b iff cos(u_a, u_b) > θ (strict,
 * fp32, self-loops always). A greedy cover with multiplicity-weighted degrees picks entries; every
 * vector then stores (entry index, magnitude) and is reconstructed as m·u_entry.
 *
 * Thread-safety: functions are reentrant; sp_codebook_build uses cblas_sgemm (OpenBLAS may use its
 * own threads unless the caller pinned it to one).
 */
#ifndef SP_CODEBOOK_H
#define SP_CODEBOOK_H

#include <stdint.h>

typedef struct sp_codebook {
    int64_t n;          /* vectors coded */
    int64_t n_entries;  /* entries chosen, <= n */
    int d;              /* vector length */
    uint32_t *index;    /* [n] entry of each vector */
    uint32_t *rep;      /* [n_entries] the vector whose unit direction is the entry */
    float *mag;         /* [n] ‖γ‖₂ (0 for a zero vector) */
    float *unit;        /* [n][d] unit directions (a zero vector gets the zero direction) */
} sp_codebook;

/* Magnitude and direction of x[0..d): *mag = ‖x‖₂ (sum in double), u = x/‖x‖, or u = 0 and
 * *mag = 0 when the norm is zero or not finite-positive (zero-norm guard). */
void sp_codebook_unit(const float *x, int d, float *u, float *mag);

/* Build the codebook of x [n][d] (row-major). mu[i] >= 1 is the multiplicity of vector i (number
 * of query heads that kept it; NULL = all 1). theta: strict cosine threshold (> 1 merges nothing).
 * On success cb owns its arrays (free with sp_codebook_free). Returns 0, -EINVAL or -ENOMEM.
 * Memory: O(n²/8) bytes of bitset adjacency + O(n·d) + one sgemm tile of at most 1 Mi floats.
 * Time: O(n²·d) flops for the products (half the matrix), O(n²/64) word operations for the cover
 * with incremental degree updates, O((n + degree changes)·log n) for the lazy max-heap picks. */
int sp_codebook_build(const float *x, int64_t n, int d, const uint32_t *mu, float theta,
                      sp_codebook *cb);

/* Centroid entries (`[compression] entry = centroid`, beyond the paper): replace each entry's unit
 * direction (unit[rep[e]]) by the normalized mu-weighted mean of its members' directions - the
 * unit vector with the largest weighted sum of cosines to them - instead of the first member's
 * own. Every member (rep included) is then reconstructed from the centroid. An entry whose
 * members' mean is zero keeps its direction. mu as in sp_codebook_build (NULL = all 1).
 * Returns 0 or -ENOMEM (cb unchanged). */
int sp_codebook_centroids(sp_codebook *cb, const uint32_t *mu);

/* Free a codebook's arrays (accepts NULL and zeroed structs). */
void sp_codebook_free(sp_codebook *cb);

/* Decode-time match: the entry among entries[0..n_entries) (fp16 unit vectors, [n][d]) with the
 * largest cos(u, entry) (ties -> lowest index). Returns its index when that cosine is > theta, else
 * -1. *best_cos (optional) receives the best cosine (-inf when n_entries is 0). u must be unit. */
int64_t sp_codebook_match(const uint16_t *entries, int64_t n_entries, int d, const float *u,
                          float theta, float *best_cos);

#endif
