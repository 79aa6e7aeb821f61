/* gpu_codebook.cu - the SpindleKV codebook build on the device (DESIGN §4.4; contract and bounds in
 * gpu.h, CPU reference runtime/codebook.c).
 *
 * DESIGN
 * - Same decisions as the CPU: unit/magnitude per vector in double (one thread per vector, the
 *   CPU's loop order: bit-identical); the cosine graph from SGEMM tiles of the upper triangle,
 *   every pair (a < b) decided once and written to both bits, self-loops set; degrees weighted by
 *   multiplicity; greedy cover with the CPU's pick rule and incremental degree updates.
 * - Stream order only: unit -> memset(adjacency) -> per tile (SGEMM, threshold) -> degrees ->
 *   cover. The cover is one kernel of ONE block: each round is a block-wide arg-max over the
 *   uncovered vertices, a parallel pass over the pick's adjacency row (covering, assigning,
 *   listing the newly covered), then a parallel pass over the listed rows subtracting their
 *   multiplicity from still-uncovered neighbours with 64-bit integer atomics (exact, so the order
 *   of the atomics does not matter). __syncthreads separates the phases; global writes of the
 *   block are visible to the block after it.
 * - Scratch layout (each part 256-byte aligned): adjacency [n][words] u64 | deg [n] i64 |
 *   covered [words] u64 | round [n] i32 | tile [T][n] f32. */
#include <limits.h>
#include <math.h>

#include "gpu_blas.cuh"

enum { CB_THREADS = 256, COVER_THREADS = 1024 };

static size_t align256(size_t x) { return (x + 255) / 256 * 256; }

static int64_t tile_rows(int64_t n)
{
    int64_t t = n > 0 ? ((int64_t)1 << 24) / n : 1;
    if (t < 1)
        t = 1;
    if (t > n)
        t = n > 0 ? n : 1;
    return t;
}

typedef struct cb_layout {
    size_t words, off_deg, off_cov, off_round, off_tile, total;
} cb_layout;

static cb_layout layout(int64_t n)
{
    cb_layout L;
    L.words = (size_t)(n + 63) / 64;
    size_t adj = align256(L.words * (size_t)n * 8 + 8);
    L.off_deg = adj;
    L.off_cov = L.off_deg + align256((size_t)n * 8 + 8);
    L.off_round = L.off_cov + align256(L.words * 8 + 8);
    L.off_tile = L.off_round + align256((size_t)n * 4 + 4);
    L.total = L.off_tile + align256((size_t)tile_rows(n) * (size_t)(n > 0 ? n : 1) * 4);
    return L;
}

extern "C" size_t sp_gpu_codebook_scratch_bytes(int64_t n)
{
    return n < 0 ? 0 : layout(n).total;
}

static __global__ void unit_kernel(const float *x, int64_t n, int d, float *unit, float *mag)
{
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < n; v += (int64_t)gridDim.x * blockDim.x) {
        const float *xv = x + v * d;
        float *uv = unit + v * d;
        double ss = 0.0;
        for (int i = 0; i < d; i++)
            ss = __dadd_rn(ss, __dmul_rn((double)xv[i], (double)xv[i]));
        double m = sqrt(ss);
        if (!(m > 0) || !isfinite(m)) {
            for (int i = 0; i < d; i++)
                uv[i] = 0.0f;
            mag[v] = 0.0f;
            continue;
        }
        for (int i = 0; i < d; i++)
            uv[i] = (float)__ddiv_rn((double)xv[i], m);
        mag[v] = (float)m;
    }
}

/* Tile rows r0 .. r0+rows, columns b >= r0 (tile[i][b - r0] = cos(r0 + i, b)). Block (x, y):
 * row y of the tile, absolute columns [x*256 + cbase, +256) with cbase = r0 rounded down to 256,
 * so each warp's 32 columns are one aligned half of a bitset word. */
static __global__ void threshold_kernel(const float *tile, int64_t r0, int64_t n, int64_t cols, float theta,
                                        uint64_t *adj, size_t words)
{
    const int64_t a = r0 + blockIdx.y;
    const int64_t b = (r0 / 256) * 256 + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    bool edge = b > a && b < n && tile[(int64_t)blockIdx.y * cols + (b - r0)] > theta;
    bool bit = edge || b == a;
    unsigned bal = __ballot_sync(0xffffffffu, bit);
    if ((threadIdx.x & 31) == 0 && bal) {
        int64_t b0 = b;   /* lane 0: the first column of the warp's 32, a multiple of 32 */
        atomicOr((unsigned long long *)&adj[(size_t)a * words + (size_t)(b0 / 64)],
                 (unsigned long long)bal << (b0 % 64));
    }
    if (edge)
        atomicOr((unsigned long long *)&adj[(size_t)b * words + (size_t)(a / 64)], 1ull << (a % 64));
}

/* deg[a] = sum over set bits b of row a of mu[b] (1 without mu): one warp per row. */
static __global__ void degree_kernel(const uint64_t *adj, size_t words, int64_t n, const uint32_t *mu, long long *deg)
{
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x / 32);
    for (int64_t a = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; a < n; a += warps) {
        const uint64_t *row = adj + (size_t)a * words;
        long long s = 0;
        for (size_t w = lane; w < words; w += 32)
            for (uint64_t bits = row[w]; bits; bits &= bits - 1) {
                int64_t b = (int64_t)(w * 64 + (size_t)__ffsll((long long)bits) - 1);
                s += mu ? (long long)mu[b] : 1;
            }
        for (int o = 16; o > 0; o >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0)
            deg[a] = s;
    }
}

static __device__ __forceinline__ void pick_take(long long &bd, int64_t &bv, long long d, int64_t v)
{
    if (v < 0)
        return;
    if (bv < 0 || d > bd || (d == bd && v < bv)) {
        bd = d;
        bv = v;
    }
}

static __global__ void __launch_bounds__(COVER_THREADS)
cover_kernel(const uint64_t *adj, size_t words, int64_t n, const uint32_t *mu, long long *deg, uint64_t *covered,
             int32_t *round, uint32_t *index, uint32_t *rep, int64_t *n_entries)
{
    __shared__ long long s_deg[COVER_THREADS / 32];
    __shared__ long long s_v[COVER_THREADS / 32];
    __shared__ long long s_p;
    __shared__ int s_nr;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (size_t i = threadIdx.x; i < words; i += blockDim.x)
        covered[i] = 0;
    __syncthreads();
    int64_t left = n, ne = 0;
    while (left > 0) {
        /* pick: uncovered vertex of max degree, lowest index on ties */
        long long bd = LLONG_MIN;
        int64_t bv = -1;
        for (int64_t a = threadIdx.x; a < n; a += blockDim.x)
            if (!(covered[a >> 6] >> (a & 63) & 1))
                pick_take(bd, bv, deg[a], a);
        for (int o = 16; o > 0; o >>= 1) {
            long long od = __shfl_xor_sync(0xffffffffu, bd, o);
            long long ov = __shfl_xor_sync(0xffffffffu, (long long)bv, o);
            pick_take(bd, bv, od, (int64_t)ov);
        }
        if (lane == 0) {
            s_deg[w] = bd;
            s_v[w] = bv;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            long long d = LLONG_MIN;
            int64_t v = -1;
            for (int j = 0; j < nw; j++)
                pick_take(d, v, s_deg[j], (int64_t)s_v[j]);
            s_p = v;
            s_nr = 0;
            rep[ne] = (uint32_t)v;
        }
        __syncthreads();
        const int64_t p = s_p;   /* >= 0: left > 0 means an uncovered vertex exists */
        /* cover p's uncovered neighbours (p itself through its self-loop) */
        for (size_t i = threadIdx.x; i < words; i += blockDim.x) {
            uint64_t bits = adj[(size_t)p * words + i] & ~covered[i];
            covered[i] |= bits;
            for (; bits; bits &= bits - 1) {
                int64_t b = (int64_t)(i * 64 + (size_t)__ffsll((long long)bits) - 1);
                index[b] = (uint32_t)ne;
                round[atomicAdd(&s_nr, 1)] = (int32_t)b;
            }
        }
        __syncthreads();
        const int64_t nr = s_nr;
        /* each vertex covered this round leaves the degree of its still-uncovered neighbours */
        for (int64_t t = threadIdx.x; t < nr * (int64_t)words; t += blockDim.x) {
            int64_t c = round[t / (int64_t)words];
            size_t i = (size_t)(t % (int64_t)words);
            unsigned long long m = mu ? (unsigned long long)mu[c] : 1ull;
            for (uint64_t bits = adj[(size_t)c * words + i] & ~covered[i]; bits; bits &= bits - 1) {
                int64_t b = (int64_t)(i * 64 + (size_t)__ffsll((long long)bits) - 1);
                atomicAdd((unsigned long long *)&deg[b], 0ull - m);   /* two's complement: deg -= m */
            }
        }
        left -= nr;
        ne++;
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *n_entries = ne;
}

extern "C" int sp_gpu_codebook_build(sp_gpu_blas *blas, void *stream, sp_gpu_codebook_desc d)
{
    if (!blas || d.n < 0 || d.n > INT32_MAX || d.d < 1 || isnan(d.theta) || !d.n_entries)
        return sp_error(EINVAL, "gpu codebook: bad descriptor (n %lld, d %d, theta %g)", (long long)d.n, d.d,
                        (double)d.theta);
    cudaStream_t s = sp_stream(stream);
    int rc;
    if (d.n == 0)
        return SP_CUDA_CHECK(cudaMemsetAsync(d.n_entries, 0, sizeof(int64_t), s));
    cb_layout L = layout(d.n);
    if (!d.x || !d.index || !d.rep || !d.mag || !d.unit || !d.scratch || d.scratch_bytes < L.total ||
        (uintptr_t)d.scratch % 8)
        return sp_error(EINVAL, "gpu codebook: NULL pointer or scratch of %zu bytes (needs %zu, 8-byte aligned)",
                        d.scratch_bytes, L.total);
    uint8_t *sc = (uint8_t *)d.scratch;
    uint64_t *adj = (uint64_t *)sc;
    long long *deg = (long long *)(sc + L.off_deg);
    uint64_t *cov = (uint64_t *)(sc + L.off_cov);
    int32_t *round = (int32_t *)(sc + L.off_round);
    float *tile = (float *)(sc + L.off_tile);
    const int64_t n = d.n, T = tile_rows(n);

    int64_t ub = (n + CB_THREADS - 1) / CB_THREADS;
    SP_LAUNCH((unsigned)(ub > 65535 ? 65535 : ub), CB_THREADS, 0, s, unit_kernel)(d.x, n, d.d, d.unit, d.mag);
    if ((rc = SP_CUDA_LAUNCHED("unit_kernel")))
        return rc;
    if ((rc = SP_CUDA_CHECK(cudaMemsetAsync(adj, 0, L.words * (size_t)n * 8, s))))
        return rc;
    /* SGEMM in fp32 (the handle's default math mode: no TF32 unless NVIDIA_TF32_OVERRIDE forces it).
     * Column-major view: C (cols x rows, ldc = cols) = U_cols^T(d x cols)^T * U_rows(d x rows), i.e.
     * row-major tile[i][j] = dot(unit[r0 + i], unit[r0 + j]). */
    if ((rc = SP_CUBLAS_CHECK(cublasSetStream(blas->h, s))))
        return rc;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < n; r0 += T) {
        int64_t rows = n - r0 < T ? n - r0 : T, cols = n - r0;
        const float *u0 = d.unit + r0 * d.d;
        if ((rc = SP_CUBLAS_CHECK(cublasSgemm(blas->h, CUBLAS_OP_T, CUBLAS_OP_N, (int)cols, (int)rows, d.d, &one,
                                              u0, d.d, u0, d.d, &zero, tile, (int)cols))))
            return rc;
        int64_t span = n - (r0 / 256) * 256;
        dim3 grid((unsigned)((span + 255) / 256), (unsigned)rows);
        SP_LAUNCH(grid, 256, 0, s, threshold_kernel)(tile, r0, n, cols, d.theta, adj, L.words);
        if ((rc = SP_CUDA_LAUNCHED("threshold_kernel")))
            return rc;
    }
    int64_t db = (n * 32 + CB_THREADS - 1) / CB_THREADS;
    SP_LAUNCH((unsigned)(db > 65535 ? 65535 : db), CB_THREADS, 0, s, degree_kernel)(adj, L.words, n, d.mu, deg);
    if ((rc = SP_CUDA_LAUNCHED("degree_kernel")))
        return rc;
    SP_LAUNCH(1, COVER_THREADS, 0, s, cover_kernel)(adj, L.words, n, d.mu, deg, cov, round, d.index, d.rep, d.n_entries);
    return SP_CUDA_LAUNCHED("cover_kernel");
}
