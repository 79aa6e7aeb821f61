/* test_ops.c - every CPU kernel against a naive double-precision reference on several shapes:
 * RMSNorm, RoPE (both layouts, vs the closed-form rotation), SwiGLU, exp, matmul on every weight type
 * the default model uses plus a generic one (GEMV and GEMM paths, several thread counts), chunked
 * attention (GQA, causal, fp32 and fp16 caches, prefill / decode paths, both numerics) and window
 * scores (vs brute force softmax), the ggml-compatible 8-bit activation quantization and integer dot
 * products (bit-exact against naive integer references), plus the thread pool itself. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"
#include "fp16.h"
#include "gguf.h"
#include "ops.h"
#include "quant_act.h"
#include "sp_error.h"
#include "threadpool.h"

static uint64_t rng_state = 88172645463325252ULL;
static void rng_seed(uint64_t s) { rng_state = s * 2654435761ULL + 1; }
static uint64_t rng_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rng_f(void) { return (float)((rng_u64() >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f; }
static void fill(float *x, size_t n, float amp)
{
    for (size_t i = 0; i < n; i++)
        x[i] = amp * rng_f();
}

/* ---- thread pool ---------------------------------------------------------------------------- */

typedef struct { atomic_int hits[1000]; atomic_int by_thread[8]; } pool_probe;
static void probe_fn(void *arg, int unit, int ith)
{
    pool_probe *p = arg;
    atomic_fetch_add(&p->hits[unit], 1);
    atomic_fetch_add(&p->by_thread[ith], 1);
}

Test(pool, every_unit_runs_exactly_once)
{
    sp_pool_t *pool = sp_pool_new(4);
    cr_assert_not_null(pool);
    static pool_probe pr;
    memset(&pr, 0, sizeof(pr));
    for (int it = 0; it < 200; it++)
        sp_pool_for(pool, 1000 - it * 3, probe_fn, &pr);
    long total = 0;
    for (int u = 0; u < 1000; u++) {
        int want = 0;
        for (int it = 0; it < 200; it++)
            want += u < 1000 - it * 3;
        cr_assert_eq(atomic_load(&pr.hits[u]), want, "unit %d ran %d times, want %d", u, atomic_load(&pr.hits[u]), want);
        total += want;
    }
    long by = 0;
    for (int t = 0; t < 8; t++) {
        cr_assert(t < 4 || atomic_load(&pr.by_thread[t]) == 0, "thread id %d out of range", t);
        by += atomic_load(&pr.by_thread[t]);
    }
    cr_assert_eq(by, total);
    sp_pool_free(pool);
    cr_assert_null(sp_pool_new(0));
}

/* ---- element-wise --------------------------------------------------------------------------- */

Test(ops, rmsnorm)
{
    int ns[] = { 1, 7, 64, 576, 1000 };
    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        int n = ns[k];
        float *x = malloc(sizeof(float) * n), *w = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
        fill(x, n, 3.0f);
        fill(w, n, 1.0f);
        sp_op_rmsnorm(y, x, w, n, 1e-5f);
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        double sc = 1.0 / sqrt(ss / n + 1e-5);
        for (int i = 0; i < n; i++) {
            double ref = x[i] * sc * w[i];
            cr_assert(fabs(y[i] - ref) <= 1e-6 * fabs(ref) + 1e-7, "n=%d i=%d: %g vs %g", n, i, y[i], ref);
        }
        free(x); free(w); free(y);
    }
}

static void check_rope(sp_rope_mode mode)
{
    int D = 64, H = 3, T = 5, n_pos = 9000;
    double base = 100000.0;
    float *table = malloc(sizeof(float) * (size_t)n_pos * D);
    sp_rope_table_fill(table, n_pos, D, base);
    int32_t pos[] = { 0, 1, 17, 4095, 8191 };
    float x[5 * 3 * 64], y[5 * 3 * 64];
    fill(x, sizeof(x) / sizeof(x[0]), 2.0f);
    memcpy(y, x, sizeof(x));
    sp_op_rope(y, T, H, D, H * D, pos, table, mode);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D / 2; i++) {
                double th = pos[t] * pow(base, -2.0 * i / D);
                int a = mode == SP_ROPE_NORM ? 2 * i : i, b = mode == SP_ROPE_NORM ? 2 * i + 1 : i + D / 2;
                const float *v = x + (t * H + h) * D;
                double ra = v[a] * cos(th) - v[b] * sin(th), rb = v[a] * sin(th) + v[b] * cos(th);
                const float *o = y + (t * H + h) * D;
                cr_assert(fabs(o[a] - ra) < 2e-6 && fabs(o[b] - rb) < 2e-6,
                          "mode %d pos %d head %d pair %d: (%g,%g) vs (%g,%g)", mode, pos[t], h, i, o[a], o[b], ra, rb);
            }
    free(table);
}

Test(ops, rope_adjacent_pairs) { check_rope(SP_ROPE_NORM); }
Test(ops, rope_neox_half_split) { check_rope(SP_ROPE_NEOX); }

Test(ops, rope_layouts_differ)
{
    /* Guards against a mode flag that is ignored: the two layouts must give different results. */
    float table[4 * 8], a[8], b[8];
    sp_rope_table_fill(table, 4, 8, 10000.0);
    fill(a, 8, 1.0f);
    memcpy(b, a, sizeof(a));
    int32_t pos = 3;
    sp_op_rope(a, 1, 1, 8, 8, &pos, table, SP_ROPE_NORM);
    sp_op_rope(b, 1, 1, 8, 8, &pos, table, SP_ROPE_NEOX);
    cr_assert(memcmp(a, b, sizeof(a)) != 0);
}

Test(ops, swiglu_and_exp)
{
    int n = 1003;
    float *g = malloc(sizeof(float) * n), *u = malloc(sizeof(float) * n), *o = malloc(sizeof(float) * n);
    fill(g, n, 12.0f);
    fill(u, n, 3.0f);
    sp_op_swiglu(o, g, u, n);
    for (int i = 0; i < n; i++) {
        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        cr_assert(fabs(o[i] - ref) <= 1e-6 * fabs(ref) + 1e-7, "i=%d %g vs %g", i, o[i], ref);
    }
    fill(g, n, 87.0f);
    g[0] = -INFINITY;
    g[1] = -100.0f;
    sp_op_exp(o, g, n);
    cr_assert_eq(o[0], 0.0f);
    cr_assert(o[1] < 1e-37f);
    for (int i = 2; i < n; i++) {
        double ref = exp((double)g[i]);
        cr_assert(fabs(o[i] - ref) <= 3e-7 * ref, "exp(%g) = %g vs %g", g[i], o[i], ref);
    }
    free(g); free(u); free(o);
}

/* ---- matmul --------------------------------------------------------------------------------- */

/* Random but valid weights of a type: fp16 scales kept small and finite. */
static void *make_weights(uint32_t type, int64_t rows, int64_t cols, size_t *row_bytes)
{
    *row_bytes = sp_type_row_bytes(type, cols);
    size_t nb = *row_bytes * rows;
    uint8_t *w = malloc(nb);
    for (size_t i = 0; i < nb; i++)
        w[i] = (uint8_t)rng_u64();
    int64_t be = sp_type_block_elems(type);
    size_t bb = sp_type_block_bytes(type);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < cols / be; b++) {
            uint8_t *blk = w + r * *row_bytes + b * bb;
            uint16_t h;
            switch (type) {
            case SP_TYPE_F32:
                for (int j = 0; j < be; j++) { float f = rng_f(); memcpy(blk + 4 * j, &f, 4); }
                break;
            case SP_TYPE_F16:
                h = sp_f32_to_fp16(rng_f()); memcpy(blk, &h, 2);
                break;
            case SP_TYPE_Q4_1:
                h = sp_f32_to_fp16(0.01f + 0.05f * fabsf(rng_f())); memcpy(blk, &h, 2);
                h = sp_f32_to_fp16(-0.3f * fabsf(rng_f())); memcpy(blk + 2, &h, 2);
                break;
            default: /* Q8_0, Q4_0, Q5_0: a leading fp16 d */
                h = sp_f32_to_fp16(0.01f + 0.05f * fabsf(rng_f())); memcpy(blk, &h, 2);
                break;
            }
        }
    return w;
}

typedef struct mm_case { uint32_t type; int rows, cols, n, threads; } mm_case;

ParameterizedTestParameters(matmul, vs_naive)
{
    static mm_case cases[] = {
        { SP_TYPE_Q4_1, 1, 32, 1, 1 },      { SP_TYPE_Q4_1, 130, 576, 1, 2 },  { SP_TYPE_Q4_1, 300, 1536, 3, 3 },
        { SP_TYPE_Q4_1, 300, 576, 8, 2 },   { SP_TYPE_Q4_1, 257, 64, 37, 2 },  { SP_TYPE_Q8_0, 49, 576, 1, 2 },
        { SP_TYPE_Q8_0, 1000, 576, 20, 2 }, { SP_TYPE_F16, 65, 72, 2, 2 },     { SP_TYPE_F16, 130, 576, 9, 1 },
        { SP_TYPE_F32, 33, 40, 1, 2 },      { SP_TYPE_F32, 129, 100, 16, 2 },  { SP_TYPE_Q4_0, 70, 256, 1, 2 },
        { SP_TYPE_Q5_0, 70, 256, 12, 2 },
    };
    return cr_make_param_array(mm_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(mm_case *c, matmul, vs_naive)
{
    rng_seed((uint64_t)c->rows * 131 + c->cols * 7 + c->n);
    sp_wmat w = { .type = c->type, .rows = c->rows, .cols = c->cols };
    size_t rb;
    void *data = make_weights(c->type, c->rows, c->cols, &rb);
    w.data = data;
    w.row_bytes = rb;
    int ldx = c->cols + 3, ldy = c->rows + 5;
    float *x = malloc(sizeof(float) * (size_t)c->n * ldx), *y = malloc(sizeof(float) * (size_t)c->n * ldy);
    float *wf = malloc(sizeof(float) * (size_t)c->rows * c->cols);
    fill(x, (size_t)c->n * ldx, 1.0f);
    for (size_t i = 0; i < (size_t)c->n * ldy; i++)
        y[i] = 12345.0f;   /* guard: the padding columns must stay untouched */
    cr_assert_eq(sp_dequant_ref(c->type, data, wf, (int64_t)c->rows * c->cols), 0);
    sp_cpu *cpu = sp_cpu_new(c->threads, sp_op_matmul_scratch(c->cols), 0);
    cr_assert_not_null(cpu);
    cr_assert_eq(sp_op_matmul(cpu, &w, x, c->n, ldx, y, ldy), 0);
    int bad = 0;
    for (int t = 0; t < c->n; t++) {
        for (int r = 0; r < c->rows; r++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < c->cols; k++) {
                ref += (double)wf[(size_t)r * c->cols + k] * x[(size_t)t * ldx + k];
                mag += fabs((double)wf[(size_t)r * c->cols + k] * x[(size_t)t * ldx + k]);
            }
            float got = y[(size_t)t * ldy + r];
            if (!(fabs(got - ref) <= 2e-6 * mag + 1e-7) && bad++ < 5)
                cr_log_error("%s %dx%d n=%d: y[%d][%d] = %g, want %g", sp_ggml_type_name(c->type), c->rows, c->cols,
                             c->n, t, r, got, ref);
        }
        for (int r = c->rows; r < ldy; r++)
            cr_assert_eq(y[(size_t)t * ldy + r], 12345.0f, "padding overwritten");
    }
    cr_assert_eq(bad, 0, "%d mismatches", bad);
    sp_cpu_free(cpu);
    free(x); free(y); free(wf); free(data);
}

Test(matmul, rejects_too_small_scratch)
{
    float x[64], y[2];
    float wdata[2 * 64] = { 0 };
    sp_wmat w = { .type = SP_TYPE_F32, .rows = 2, .cols = 64, .row_bytes = 256, .data = wdata };
    sp_cpu *cpu = sp_cpu_new(1, 8, 0);
    cr_assert_not_null(cpu);
    cr_assert_eq(sp_op_matmul(cpu, &w, x, 1, 64, y, 2), -ENOSPC);
    sp_cpu_free(cpu);
}

/* ---- ggml activation quantization and integer dot products (quant_act.h) --------------------- */

/* Naive block quantization: amax, d = amax / 127, q = x * (127 / amax) rounded half to even. */
static void naive_quant_block(const float *x, int8_t *q, uint16_t *d, uint16_t *s)
{
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    float dd = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        float v = x[j] * id, r = floorf(v), f = v - r;
        if (f > 0.5f || (f == 0.5f && fmodf(r, 2.0f) != 0.0f))
            r += 1.0f;
        q[j] = (int8_t)r;
        sum += (int)r;
    }
    *d = sp_f32_to_fp16(dd);
    *s = sp_f32_to_fp16(dd * (float)sum);
}

static void quant_input(float *x, int nb)
{
    for (int b = 0; b < nb; b++) {
        float amp = b % 5 == 0 ? 1e-3f : b % 5 == 1 ? 40.0f : 1.0f;
        fill(x + 32 * b, 32, amp);
        if (b % 7 == 3) {                /* exact ties: amax = 127 makes x * id = x */
            x[32 * b] = 127.0f;
            for (int j = 1; j < 32; j++)
                x[32 * b + j] = (float)((j % 9) - 4) + 0.5f;
        }
        if (b % 11 == 6)
            memset(x + 32 * b, 0, sizeof(float) * 32);
    }
}

Test(quant_act, rows_match_naive_quantization_bit_exactly)
{
    rng_seed(5);
    enum { NB = 40 };
    float x[32 * NB];
    quant_input(x, NB);
    sp_block_q8_0 q0[NB];
    sp_block_q8_1 q1[NB];
    sp_quant_row_q8_0(x, q0, 32 * NB);
    sp_quant_row(SP_ACT_Q8_1, x, q1, 32 * NB);
    for (int b = 0; b < NB; b++) {
        int8_t q[32];
        uint16_t d, sm;
        naive_quant_block(x + 32 * b, q, &d, &sm);
        cr_assert_eq(q0[b].d, d, "block %d: q8_0 d %04x vs %04x", b, q0[b].d, d);
        cr_assert_eq(q1[b].d, d, "block %d: q8_1 d", b);
        cr_assert_eq(q1[b].s, sm, "block %d: q8_1 s %04x vs %04x", b, q1[b].s, sm);
        cr_assert(memcmp(q0[b].qs, q, 32) == 0 && memcmp(q1[b].qs, q, 32) == 0, "block %d: quants differ", b);
    }
    /* the tie block (x = 127, then (j % 9) - 3.5) rounds half to even */
    cr_assert_eq(q0[3].qs[0], 127);
    cr_assert_eq(q0[3].qs[1], -2);  /* -2.5 */
    cr_assert_eq(q0[3].qs[2], -2);  /* -1.5 */
    cr_assert_eq(q0[3].qs[3], 0);   /* -0.5 */
    cr_assert_eq(q0[3].qs[4], 0);   /*  0.5 */
    cr_assert_eq(q0[3].qs[5], 2);   /*  1.5 */
}

Test(ops, swiglu_ggml_vs_double)
{
    enum { N = 1000 };
    float g[N], u[N], y[N];
    rng_seed(9);
    fill(g, N, 20.0f);
    fill(u, N, 2.0f);
    g[0] = -100.0f;   /* exp(100) overflows to inf in the kernel: silu -> -0 */
    sp_op_swiglu_ggml(y, g, u, N);
    for (int i = 0; i < N; i++) {
        double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        cr_assert(fabs(y[i] - ref) <= 1e-6 * fabs(ref) + 1e-30, "i=%d: %g vs %g", i, y[i], ref);
    }
}

/* The weight block's values as ints, and its fp16 d (and m for Q4_1). */
static void naive_unpack(uint32_t type, const uint8_t *blk, int *q, float *d, float *m)
{
    *d = sp_fp16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
    *m = type == SP_TYPE_Q4_1 ? sp_fp16_to_f32((uint16_t)(blk[2] | blk[3] << 8)) : 0.0f;
    if (type == SP_TYPE_Q8_0) {
        for (int j = 0; j < 32; j++)
            q[j] = (int8_t)blk[2 + j];
        return;
    }
    const uint8_t *qs = blk + (type == SP_TYPE_Q4_1 ? 4 : 2);
    int off = type == SP_TYPE_Q4_0 ? 8 : 0;
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 15) - off;
        q[j + 16] = (qs[j] >> 4) - off;
    }
}

/* ggml's order (8 lanes of 4-element integer sums, fma per block, fixed lane reduction, then the Q4_1
 * min term) on plain integers: the kernels must match it bit for bit. *exact: the same in double. */
static float naive_dot(uint32_t type, const uint8_t *w, const void *a, int nb, double *exact, double *mag)
{
    float lane[8] = { 0 }, summs = 0.0f;
    *exact = 0.0;
    *mag = 0.0;
    size_t wb = sp_type_block_bytes(type);
    for (int b = 0; b < nb; b++) {
        int q[32];
        float dw, mw;
        naive_unpack(type, w + (size_t)b * wb, q, &dw, &mw);
        const int8_t *qa;
        float da, sa = 0.0f;
        if (type == SP_TYPE_Q4_1) {
            const sp_block_q8_1 *ab = (const sp_block_q8_1 *)a + b;
            qa = ab->qs;
            da = sp_fp16_to_f32(ab->d);
            sa = sp_fp16_to_f32(ab->s);
        } else {
            const sp_block_q8_0 *ab = (const sp_block_q8_0 *)a + b;
            qa = ab->qs;
            da = sp_fp16_to_f32(ab->d);
        }
        long isum = 0;
        for (int l = 0; l < 8; l++) {
            int s4 = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                s4 += q[j] * qa[j];
            lane[l] = fmaf(dw * da, (float)s4, lane[l]);
            isum += s4;
        }
        summs = fmaf(mw, sa, summs);
        *exact += (double)dw * da * (double)isum + (double)mw * sa;
        *mag += fabs((double)dw * da * (double)isum) + fabs((double)mw * sa);
    }
    float h = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    return h + summs;
}

Test(quant_act, dot_products_match_naive_integer_reference)
{
    static const uint32_t types[] = { SP_TYPE_Q4_0, SP_TYPE_Q4_1, SP_TYPE_Q8_0 };
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        uint32_t type = types[ti];
        for (int nb = 1; nb <= 48; nb += 47 / 4 + 1) {
            rng_seed((uint64_t)type * 100 + nb);
            size_t rb;
            uint8_t *w = make_weights(type, 9, 32 * nb, &rb);
            sp_act_type at = sp_act_type_for(type);
            cr_assert_neq(at, SP_ACT_NONE);
            size_t ab = sp_act_row_bytes(at, 32 * nb);
            float *x = malloc(sizeof(float) * 32 * nb * 9);
            uint8_t *a = malloc(ab * 9);
            quant_input(x, nb * 9);
            for (int t = 0; t < 9; t++)
                sp_quant_row(at, x + 32 * nb * t, a + ab * t, 32 * nb);
            /* 9 rows in two tiles: a full tile (tile kernel) + one row (one-row kernel on the tile
             * layout); and the first 5 rows alone (a partial tile through the tile kernel) */
            float rows[9], rows5[5];
            size_t tb = sp_act_tile_bytes(at, 32 * nb);
            uint8_t *tiles = aligned_alloc(32, 2 * tb);
            for (int t = 0; t < 9; t++)
                sp_quant_row_tiled(at, x + 32 * nb * t, 32 * nb, tiles + tb * (t / SP_ACT_TILE), t % SP_ACT_TILE);
            sp_dot_rows(type, w, nb, tiles, 9, rows, 1);
            sp_dot_rows(type, w, nb, tiles, 5, rows5, 1);
            free(tiles);
            for (int t = 0; t < 9; t++) {
                double exact, mag;
                float want = naive_dot(type, w, a + ab * t, nb, &exact, &mag);
                float got = type == SP_TYPE_Q4_1 ? sp_dot_q4_1_q8_1(w, (const sp_block_q8_1 *)(a + ab * t), nb)
                            : type == SP_TYPE_Q4_0 ? sp_dot_q4_0_q8_0(w, (const sp_block_q8_0 *)(a + ab * t), nb)
                                                   : sp_dot_q8_0_q8_0(w, (const sp_block_q8_0 *)(a + ab * t), nb);
                cr_assert(got == want, "%s nb=%d t=%d: %.9g, naive %.9g", sp_ggml_type_name(type), nb, t, got, want);
                cr_assert(rows[t] == got && (t >= 5 || rows5[t] == got), "%s nb=%d t=%d: tiled %.9g vs %.9g",
                          sp_ggml_type_name(type), nb, t, rows[t], got);
                cr_assert(fabs(got - exact) <= 1e-5 * mag + 1e-6, "%s nb=%d: %.9g vs exact %.9g",
                          sp_ggml_type_name(type), nb, got, exact);
            }
            free(w); free(x); free(a);
        }
    }
}

/* sp_op_matmul under GGML numerics == quantize each input row, naive integer dot per output, bit for
 * bit, for any token count (500 rows exceed one quantized-activation group) and thread count. */
Test(matmul, ggml_numerics_equal_quantized_integer_reference)
{
    static const struct { uint32_t type; int rows, cols, n, threads; } cases[] = {
        { SP_TYPE_Q4_1, 70, 576, 1, 2 }, { SP_TYPE_Q4_1, 33, 1536, 37, 2 }, { SP_TYPE_Q8_0, 45, 576, 9, 1 },
        { SP_TYPE_Q4_0, 20, 64, 3, 2 },  { SP_TYPE_Q4_1, 17, 96, 500, 2 },
    };
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int rows = cases[ci].rows, cols = cases[ci].cols, n = cases[ci].n;
        uint32_t type = cases[ci].type;
        rng_seed(ci + 77);
        size_t rb;
        uint8_t *data = make_weights(type, rows, cols, &rb);
        sp_wmat w = { .type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = data };
        float *x = malloc(sizeof(float) * (size_t)n * cols), *y = malloc(sizeof(float) * (size_t)n * rows);
        quant_input(x, n * cols / 32);
        sp_cpu *cpu = sp_cpu_new(cases[ci].threads, sp_op_matmul_scratch(cols), 0);
        cr_assert_not_null(cpu);
        cpu->numerics = SP_NUMERICS_GGML;
        cr_assert_eq(sp_op_matmul(cpu, &w, x, n, cols, y, rows), 0, "%s", sp_last_error());
        sp_act_type at = sp_act_type_for(type);
        size_t ab = sp_act_row_bytes(at, cols);
        uint8_t *a = malloc(ab);
        for (int t = 0; t < n; t++) {
            sp_quant_row(at, x + (size_t)t * cols, a, cols);
            for (int r = 0; r < rows; r++) {
                double exact, mag;
                float want = naive_dot(type, data + (size_t)r * rb, a, cols / 32, &exact, &mag);
                cr_assert(y[(size_t)t * rows + r] == want, "%s %dx%d n=%d: y[%d][%d] = %.9g, want %.9g",
                          sp_ggml_type_name(type), rows, cols, n, t, r, y[(size_t)t * rows + r], want);
            }
        }
        sp_cpu_free(cpu);
        free(data); free(x); free(y); free(a);
    }
}

/* ---- attention ------------------------------------------------------------------------------ */

/* ggml: SP_NUMERICS_GGML (with an fp16 cache: fp16 queries and probabilities, see attention.c). */
typedef struct att_case { int n_head, n_kv, D, pos0, n_q, n_window, threads; sp_kv_type kv; bool ggml; } att_case;

ParameterizedTestParameters(attention, vs_naive)
{
    static att_case cases[] = {
        { 1, 1, 8, 0, 1, 0, 1, SP_KV_F32, false },       { 4, 4, 16, 0, 5, 0, 2, SP_KV_F32, false },
        { 9, 3, 64, 0, 37, 0, 2, SP_KV_F32, false },     { 9, 3, 64, 300, 1, 0, 2, SP_KV_F16, false },  /* decode path */
        { 9, 3, 64, 2047, 1, 0, 3, SP_KV_F16, false },   { 9, 3, 64, 5, 1, 0, 8, SP_KV_F32, false },    /* more threads than keys */
        { 8, 2, 32, 100, 300, 0, 2, SP_KV_F16, false },  { 9, 3, 64, 0, 600, 32, 2, SP_KV_F16, false }, /* several q and k blocks */
        { 9, 3, 64, 700, 90, 90, 2, SP_KV_F32, false },  { 6, 1, 24, 0, 7, 3, 1, SP_KV_F32, false },
        { 2, 2, 8, 513, 1, 1, 2, SP_KV_F16, false },     /* a 1-query window goes through the prefill path */
        /* GGML numerics: the exact-order kernels (D % 16 == 0), the two-pass fallback (D = 8), fp32 cache */
        { 9, 3, 64, 0, 37, 0, 2, SP_KV_F16, true },    { 9, 3, 64, 300, 1, 0, 2, SP_KV_F16, true },
        { 9, 3, 64, 1000, 1, 0, 1, SP_KV_F16, true },  { 8, 2, 32, 100, 300, 20, 2, SP_KV_F16, true },
        { 4, 2, 8, 40, 9, 0, 2, SP_KV_F16, true },     { 4, 2, 8, 300, 1, 0, 2, SP_KV_F16, true },
        { 9, 3, 64, 700, 90, 90, 2, SP_KV_F32, true },
    };
    return cr_make_param_array(att_case, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(att_case *c, attention, vs_naive)
{
    rng_seed((uint64_t)c->n_head * 1000 + c->pos0 * 7 + c->n_q);
    int H = c->n_head, KVH = c->n_kv, D = c->D, G = H / KVH, nk = c->pos0 + c->n_q, W = c->n_window;
    size_t stride = (size_t)(nk + 11) * D;                        /* heads not packed tightly */
    float *kf = malloc(sizeof(float) * KVH * stride), *vf = malloc(sizeof(float) * KVH * stride);
    fill(kf, KVH * stride, 1.0f);
    fill(vf, KVH * stride, 1.0f);
    void *kc = kf, *vc = vf;
    uint16_t *kh = NULL, *vh = NULL;
    if (c->kv == SP_KV_F16) {
        kh = malloc(2 * KVH * stride);
        vh = malloc(2 * KVH * stride);
        for (size_t i = 0; i < KVH * stride; i++) {
            kh[i] = sp_f32_to_fp16(kf[i]);
            vh[i] = sp_f32_to_fp16(vf[i]);
            kf[i] = sp_fp16_to_f32(kh[i]);    /* reference sees exactly the cached values */
            vf[i] = sp_fp16_to_f32(vh[i]);
        }
        kc = kh;
        vc = vh;
    }
    int ldq = H * D + 4;
    float *q = malloc(sizeof(float) * c->n_q * ldq), *out = malloc(sizeof(float) * c->n_q * ldq);
    fill(q, (size_t)c->n_q * ldq, 3.0f);   /* peaky softmax rows */
    float *win = W ? calloc((size_t)H * (nk + 2), sizeof(float)) : NULL;
    sp_cpu *cpu = sp_cpu_new(c->threads, sp_op_attention_thread_scratch(H, KVH, D),
                             sp_op_attention_shared_scratch(c->threads, H, D, W));
    cr_assert_not_null(cpu);
    cpu->numerics = c->ggml ? SP_NUMERICS_GGML : SP_NUMERICS_EXACT;
    bool r16 = c->ggml && c->kv == SP_KV_F16;
    float scale = 1.0f / sqrtf((float)D);
    sp_attn_desc a = { .n_q = c->n_q, .q_pos0 = c->pos0, .n_head = H, .n_kv_head = KVH, .head_dim = D, .q = q,
                       .ldq = ldq, .out = out, .ldo = ldq, .k = kc, .v = vc, .kv_type = c->kv, .kv_head_stride = stride,
                       .scale = scale, .n_window = W, .win = win, .win_ld = nk + 2 };
    cr_assert_eq(sp_op_attention(cpu, &a), 0);

    double *p = malloc(sizeof(double) * nk), *wref = calloc((size_t)H * nk, sizeof(double));
    int bad = 0;
    for (int t = 0; t < c->n_q; t++) {
        int pos = c->pos0 + t;
        for (int h = 0; h < H; h++) {
            int g = h / G;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= pos; j++) {
                double s = 0;
                for (int d = 0; d < D; d++) {
                    float qd = q[(size_t)t * ldq + h * D + d];
                    if (r16)
                        qd = sp_fp16_to_f32(sp_f32_to_fp16(qd));
                    s += (double)qd * kf[g * stride + (size_t)j * D + d];
                }
                p[j] = s * scale;
                mx = p[j] > mx ? p[j] : mx;
            }
            for (int j = 0; j <= pos; j++)
                sum += (p[j] = exp(p[j] - mx));
            for (int d = 0; d < D; d++) {
                double o = 0;
                for (int j = 0; j <= pos; j++) {
                    double pj = p[j] / sum;
                    if (r16)   /* normalized, then rounded to fp16 */
                        pj = sp_fp16_to_f32(sp_f32_to_fp16((float)pj));
                    o += pj * vf[g * stride + (size_t)j * D + d];
                }
                float got = out[(size_t)t * ldq + h * D + d];
                /* r16: a probability within float rounding of an fp16 tie may round the other way (one
                 * fp16 ulp of one probability) */
                if (!(fabs(got - o) <= (r16 ? 2e-4 : 2e-5)) && bad++ < 5)
                    cr_log_error("t=%d h=%d d=%d: %g vs %g", t, h, d, got, o);
            }
            if (W && t >= c->n_q - W)
                for (int j = 0; j <= pos; j++)
                    wref[(size_t)h * nk + j] += p[j] / sum;
        }
    }
    cr_assert_eq(bad, 0, "%d output mismatches", bad);
    for (int h = 0; W && h < H; h++)
        for (int j = 0; j < nk; j++) {
            double ref = wref[(size_t)h * nk + j];
            float got = win[(size_t)h * (nk + 2) + j];
            cr_assert(fabs(got - ref) <= 1e-5 * (1.0 + ref), "window h=%d key=%d: %g vs %g", h, j, got, ref);
        }
    sp_cpu_free(cpu);
    free(kf); free(vf); free(kh); free(vh); free(q); free(out); free(win); free(p); free(wref);
}

Test(attention, rejects_bad_args)
{
    sp_cpu *cpu = sp_cpu_new(1, sp_op_attention_thread_scratch(4, 2, 8), sp_op_attention_shared_scratch(1, 4, 8, 0));
    float q[32], o[32], k[64], v[64];
    sp_attn_desc a = { .n_q = 1, .q_pos0 = 0, .n_head = 4, .n_kv_head = 3, .head_dim = 8, .q = q, .ldq = 32, .out = o,
                       .ldo = 32, .k = k, .v = v, .kv_type = SP_KV_F32, .kv_head_stride = 8, .scale = 1.0f };
    cr_assert_eq(sp_op_attention(cpu, &a), -EINVAL);           /* 4 heads over 3 KV heads */
    a.n_kv_head = 2;
    a.n_window = 1;                                           /* window without buffer */
    cr_assert_eq(sp_op_attention(cpu, &a), -EINVAL);
    sp_cpu_free(cpu);
}
