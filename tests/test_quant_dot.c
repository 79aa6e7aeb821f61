/* test_quant_dot.c - the integer block dot products of every quantized weight type (Q4_0, Q4_1,
 * Q5_0, Q5_1, Q8_0 against Q8_0/Q8_1 activations; Q4_K, Q5_K, Q6_K against Q8_K) and the matmul
 * that uses them under GGML numerics:
 * - Q8_K quantization equals ggml's quantize_row_q8_K_ref (re-derived here) exactly;
 * - each product agrees with the scalar dequantize-then-dot reference (sp_dequant_ref weights times the
 *   dequantized activations, in double) to float rounding, on odd block counts, through the one-row
 *   and the tiled (several activation rows) entry points;
 * - the K-quant products equal ggml's AVX2 evaluation order (8 int32 lanes, fma per super-block,
 *   fixed lane reduction; written out plainly below) bit for bit;
 * - sp_op_matmul (GGML numerics) equals those products bit for bit for 1..300 tokens and 2 threads. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/test_note.h"
#include "dequant.h"
#include "dot_f16.h"
#include "fp16.h"
#include "gguf.h"
#include "ops.h"
#include "quant_act.h"
#include "quant_act_isa.h"
#include "quant_k.h"
#include "sp_error.h"

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rng_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rng_f(void) { return (float)((rng_u64() >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f; }

static void put_half(uint8_t *p, float f)
{
    uint16_t h = sp_f32_to_fp16(f);
    memcpy(p, &h, 2);
}

static float get_half(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return sp_fp16_to_f32(h);
}

/* Random blocks with sane fp16 scales (random bits elsewhere: every quant value occurs). */
static uint8_t *make_weights(uint32_t type, int64_t rows, int64_t cols, size_t *row_bytes)
{
    *row_bytes = sp_type_row_bytes(type, cols);
    size_t n = *row_bytes * (size_t)rows;
    uint8_t *w = malloc(n);
    cr_assert_not_null(w);
    for (size_t i = 0; i < n; i++)
        w[i] = (uint8_t)rng_u64();
    size_t bb = sp_type_block_bytes(type);
    for (size_t off = 0; off < n; off += bb) {
        uint8_t *b = w + off;
        float d = 0.002f + 0.02f * fabsf(rng_f());
        switch (type) {
        case SP_TYPE_Q4_1: case SP_TYPE_Q5_1:
            put_half(b, d); put_half(b + 2, -0.3f * fabsf(rng_f())); break;
        case SP_TYPE_Q4_K: case SP_TYPE_Q5_K:
            put_half(b, d * 0.05f); put_half(b + 2, 0.01f * fabsf(rng_f())); break;
        case SP_TYPE_Q6_K:
            put_half(b + 208, d * 0.05f); break;
        default:
            put_half(b, d); break;
        }
    }
    return w;
}

/* Activations with the awkward cases: tiny and large blocks, exact ties, all-zero blocks. */
static void make_input(float *x, int64_t n)
{
    for (int64_t b = 0; b < n / 32; b++) {
        float amp = b % 5 == 0 ? 1e-3f : b % 5 == 1 ? 40.0f : 1.0f;
        for (int j = 0; j < 32; j++)
            x[32 * b + j] = amp * rng_f();
        if (b % 7 == 3) {
            x[32 * b] = 127.0f;
            for (int j = 1; j < 32; j++)
                x[32 * b + j] = (float)((j % 9) - 4) + 0.5f;
        }
        if (b % 11 == 6)
            memset(x + 32 * b, 0, sizeof(float) * 32);
    }
    if (n >= 512)   /* one whole zero super-block */
        memset(x + 256, 0, sizeof(float) * 256);
}

static const uint32_t all_types[] = { SP_TYPE_Q4_0, SP_TYPE_Q4_1, SP_TYPE_Q5_0, SP_TYPE_Q5_1,
                                      SP_TYPE_Q8_0, SP_TYPE_Q4_K, SP_TYPE_Q5_K, SP_TYPE_Q6_K };
enum { N_TYPES = sizeof(all_types) / sizeof(all_types[0]) };

/* Dequantized activations of one quantized row; *minerr: the fp16 rounding of the Q8_1 s terms
 * (s = d * sum q is stored rounded), weighted by the weight mins, i.e. the part of the difference to
 * the plain dot product that the kernels inherit from ggml's format. */
static void dequant_act(sp_act_type at, const void *a, int64_t n, float *xa)
{
    if (at == SP_ACT_Q8_K) {
        const sp_block_q8_k *q = a;
        for (int64_t i = 0; i < n; i++)
            xa[i] = q[i / 256].d * q[i / 256].qs[i % 256];
    } else if (at == SP_ACT_Q8_1) {
        const sp_block_q8_1 *q = a;
        for (int64_t i = 0; i < n; i++)
            xa[i] = sp_fp16_to_f32(q[i / 32].d) * q[i / 32].qs[i % 32];
    } else {
        const sp_block_q8_0 *q = a;
        for (int64_t i = 0; i < n; i++)
            xa[i] = sp_fp16_to_f32(q[i / 32].d) * q[i / 32].qs[i % 32];
    }
}

static double min_term_error(uint32_t type, const uint8_t *w, const sp_block_q8_1 *a, int64_t nb)
{
    double e = 0.0;
    if (type != SP_TYPE_Q4_1 && type != SP_TYPE_Q5_1)
        return 0.0;
    size_t bb = sp_type_block_bytes(type);
    for (int64_t b = 0; b < nb; b++) {
        int s = 0;
        for (int j = 0; j < 32; j++)
            s += a[b].qs[j];
        e += fabs((double)get_half(w + b * bb + 2)) *
             fabs((double)sp_fp16_to_f32(a[b].s) - (double)sp_fp16_to_f32(a[b].d) * s);
    }
    return e;
}

/* ggml's quantize_row_q8_K_ref, restated. */
static void naive_q8_k(const float *x, sp_block_q8_k *y)
{
    float max = 0, amax = 0;
    for (int j = 0; j < 256; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    memset(y, 0, sizeof *y);
    if (amax == 0)
        return;
    float iscale = -127.f / max;
    for (int j = 0; j < 256; j++) {
        int v = (int)rintf(iscale * x[j]);
        y->qs[j] = (int8_t)(v > 127 ? 127 : v);
    }
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += y->qs[16 * g + j];
        y->bsums[g] = (int16_t)s;
    }
    y->d = 1 / iscale;
}

Test(quant_dot, q8_k_quantization_matches_ggml_reference)
{
    enum { NB = 6 };
    float x[256 * NB];
    rng_seed(3);
    make_input(x, 256 * NB);
    for (int j = 0; j < 256; j++)   /* block 2: the largest magnitude is negative and repeated */
        x[512 + j] = (j % 3) ? 0.25f * (float)(j % 17) : -4.25f;
    sp_block_q8_k q[NB], ref;
    sp_quant_row_q8_k(x, q, 256 * NB);
    for (int b = 0; b < NB; b++) {
        naive_q8_k(x + 256 * b, &ref);
        cr_assert(q[b].d == ref.d, "block %d: d %.9g vs %.9g", b, q[b].d, ref.d);
        cr_assert(memcmp(q[b].qs, ref.qs, 256) == 0, "block %d: quants differ", b);
        cr_assert(memcmp(q[b].bsums, ref.bsums, sizeof ref.bsums) == 0, "block %d: bsums differ", b);
    }
    cr_assert(q[1].d == 0.0f && q[1].bsums[0] == 0, "the zero super-block quantizes to zeros");
    cr_assert_eq(q[2].qs[0], -127, "the extreme value maps to -127 (iscale = -127/max)");
}

/* Row t of the activations, quantized for type, in the tiled layout of sp_dot_rows. */
static uint8_t *quant_tiles(sp_act_type at, const float *x, int64_t n, int rows, size_t *tile_bytes)
{
    size_t tb = sp_act_tile_bytes(at, n);
    int ntiles = (rows + SP_ACT_TILE - 1) / SP_ACT_TILE;
    uint8_t *tiles = aligned_alloc(64, (tb * (size_t)ntiles + 63) & ~(size_t)63);
    cr_assert_not_null(tiles);
    for (int t = 0; t < rows; t++)
        sp_quant_row_tiled(at, x + (size_t)t * n, n, tiles + tb * (size_t)(t / SP_ACT_TILE), t % SP_ACT_TILE);
    *tile_bytes = tb;
    return tiles;
}

static float dot_one(uint32_t type, const uint8_t *w, const void *a, int64_t nb)
{
    switch (type) {
    case SP_TYPE_Q4_0: return sp_dot_q4_0_q8_0(w, a, nb);
    case SP_TYPE_Q4_1: return sp_dot_q4_1_q8_1(w, a, nb);
    case SP_TYPE_Q5_0: return sp_dot_q5_0_q8_0(w, a, nb);
    case SP_TYPE_Q5_1: return sp_dot_q5_1_q8_1(w, a, nb);
    case SP_TYPE_Q8_0: return sp_dot_q8_0_q8_0(w, a, nb);
    default: return sp_dot_k_q8_k(type, w, a, nb);
    }
}

Test(quant_dot, every_type_matches_the_dequantized_reference)
{
    static const int blocks[] = { 1, 3, 19 };   /* odd counts; 19 x 256 = Qwen2.5-0.5B's ffn width */
    enum { ROWS = 9 };
    for (int ti = 0; ti < N_TYPES; ti++)
        for (int bi = 0; bi < 3; bi++) {
            uint32_t type = all_types[ti];
            sp_act_type at = sp_act_type_for(type);
            cr_assert_neq(at, SP_ACT_NONE, "%s has an integer kernel", sp_ggml_type_name(type));
            int64_t nb = blocks[bi], n = nb * sp_type_block_elems(type);
            rng_seed(100 * ti + bi);
            size_t rb;
            uint8_t *w = make_weights(type, 1, n, &rb);
            float *x = malloc(sizeof(float) * (size_t)(n * ROWS)), *wf = malloc(sizeof(float) * (size_t)n),
                  *xa = malloc(sizeof(float) * (size_t)n);
            make_input(x, n * ROWS);
            cr_assert_eq(sp_dequant_ref(type, w, wf, n), 0);
            size_t ab = sp_act_row_bytes(at, n), tb;
            uint8_t *a = malloc(ab);
            uint8_t *tiles = quant_tiles(at, x, n, ROWS, &tb);
            float rows9[ROWS], rows5[5];
            sp_dot_rows(type, w, nb, tiles, ROWS, rows9, 1);
            sp_dot_rows(type, w, nb, tiles, 5, rows5, 1);
            for (int t = 0; t < ROWS; t++) {
                sp_quant_row(at, x + (size_t)t * n, a, n);
                dequant_act(at, a, n, xa);
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < n; i++) {
                    ref += (double)wf[i] * xa[i];
                    mag += fabs((double)wf[i] * xa[i]);
                }
                float got = dot_one(type, w, a, nb);
                double tol = 2e-6 * mag + min_term_error(type, w, (const sp_block_q8_1 *)(const void *)a, nb) + 1e-7;
                cr_assert(fabs(got - ref) <= tol, "%s nb=%lld row %d: %.9g vs dequantized %.9g (tol %.3g)",
                          sp_ggml_type_name(type), (long long)nb, t, got, ref, tol);
                cr_assert(rows9[t] == got && (t >= 5 || rows5[t] == got),
                          "%s nb=%lld row %d: tiled %.9g / %.9g vs one-row %.9g", sp_ggml_type_name(type),
                          (long long)nb, t, rows9[t], t < 5 ? rows5[t] : 0.0f, got);
            }
            free(tiles); free(a); free(w); free(x); free(wf); free(xa);
        }
}

/* ---- ggml's AVX2 order for the K-quants, on plain integers ---- */

static void k4_scales(const uint8_t *q, int *sc, int *mn)
{
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = q[j] & 63;
            mn[j] = q[j + 4] & 63;
        } else {
            sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
}

/* Element e's unsigned quant and scale index (Q6_K: 16-groups), as dequant.c unpacks them. */
static int k_quant(uint32_t type, const uint8_t *b, int e, int *si)
{
    if (type == SP_TYPE_Q6_K) {
        int j = e / 128, r = e % 128, g = r / 32, l = r % 32;
        const uint8_t lb = b[64 * j + 32 * (g & 1) + l];
        *si = e / 16;
        return (g < 2 ? lb & 15 : lb >> 4) | (((b[128 + 32 * j + l] >> (2 * g)) & 3) << 4);
    }
    int g = e / 32, l = e % 32;
    const uint8_t *qs = b + 16 + (type == SP_TYPE_Q5_K ? 32 : 0);
    int q = (g & 1) ? qs[32 * (g / 2) + l] >> 4 : qs[32 * (g / 2) + l] & 15;
    if (type == SP_TYPE_Q5_K)
        q |= ((b[16 + l] >> g) & 1) << 4;
    *si = g;
    return q;
}

static float naive_k_dot(uint32_t type, const uint8_t *w, const sp_block_q8_k *a, int64_t nb)
{
    float lane[8] = { 0 }, mlane[4] = { 0 }, summs = 0;
    size_t bb = sp_type_block_bytes(type);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = w + i * bb;
        int sc[16], mn[8];
        float d;
        if (type == SP_TYPE_Q6_K) {
            for (int k = 0; k < 16; k++)
                sc[k] = (int8_t)b[192 + k];
            d = a[i].d * get_half(b + 208);
        } else {
            k4_scales(b + 4, sc, mn);
            d = a[i].d * get_half(b);
            float dmin = -a[i].d * get_half(b + 2);
            int m4[4], all = 0;
            for (int m = 0; m < 4; m++) {
                m4[m] = mn[2 * m] * (a[i].bsums[4 * m] + a[i].bsums[4 * m + 1]) +
                        mn[2 * m + 1] * (a[i].bsums[4 * m + 2] + a[i].bsums[4 * m + 3]);
                all += m4[m];
                mlane[m] = fmaf(dmin, (float)m4[m], mlane[m]);
            }
            summs = fmaf(dmin, (float)all, summs);
        }
        int isum[8] = { 0 };
        for (int e = 0; e < 256; e++) {
            int si, q = k_quant(type, b, e, &si);
            isum[(e % 32) / 4] += sc[si] * q * a[i].qs[e];
        }
        if (type == SP_TYPE_Q6_K)
            for (int k = 0; k < 8; k++)
                isum[k] -= 32 * (a[i].bsums[2 * k] * sc[2 * k] + a[i].bsums[2 * k + 1] * sc[2 * k + 1]);
        for (int k = 0; k < 8; k++)
            lane[k] = fmaf(d, (float)isum[k], lane[k]);
    }
    float h = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
    if (type == SP_TYPE_Q4_K)
        return h + ((mlane[0] + mlane[2]) + (mlane[1] + mlane[3]));
    return type == SP_TYPE_Q5_K ? h + summs : h;
}

Test(quant_dot, k_quants_follow_ggml_order_bit_exactly)
{
    static const uint32_t types[] = { SP_TYPE_Q4_K, SP_TYPE_Q5_K, SP_TYPE_Q6_K };
    for (int ti = 0; ti < 3; ti++)
        for (int nb = 1; nb <= 19; nb += 6) {
            uint32_t type = types[ti];
            rng_seed(1000 + 10 * ti + nb);
            size_t rb;
            uint8_t *w = make_weights(type, 1, 256 * nb, &rb);
            float *x = malloc(sizeof(float) * 256 * (size_t)nb);
            sp_block_q8_k *a = malloc(sizeof(sp_block_q8_k) * (size_t)nb);
            make_input(x, 256 * nb);
            sp_quant_row_q8_k(x, a, 256 * nb);
            float got = sp_dot_k_q8_k(type, w, a, nb), want = naive_k_dot(type, w, a, nb);
            cr_assert(got == want, "%s nb=%d: %.9g, ggml order %.9g", sp_ggml_type_name(type), nb, got, want);
            free(w); free(x); free(a);
        }
}

/* sp_op_matmul under GGML numerics: one-row products of the quantized input rows, bit for bit, for
 * one token (decode), a partial tile, and more tokens than one quantized-activation group holds. */
Test(quant_dot, matmul_ggml_numerics_equal_the_row_products)
{
    static const struct { uint32_t type; int rows, cols, n; } cases[] = {
        { SP_TYPE_Q5_0, 37, 896, 1 },    { SP_TYPE_Q5_0, 70, 96, 300 },  { SP_TYPE_Q5_1, 19, 160, 13 },
        { SP_TYPE_Q4_K, 45, 1536, 1 },   { SP_TYPE_Q4_K, 33, 768, 41 },  { SP_TYPE_Q5_K, 21, 512, 9 },
        { SP_TYPE_Q6_K, 50, 4864, 1 },   { SP_TYPE_Q6_K, 17, 256, 300 },
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        uint32_t type = cases[ci].type;
        int rows = cases[ci].rows, cols = cases[ci].cols, n = cases[ci].n;
        rng_seed(ci + 500);
        size_t rb;
        uint8_t *data = make_weights(type, rows, cols, &rb);
        sp_wmat w = { .type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = data };
        float *x = malloc(sizeof(float) * (size_t)n * cols), *y = malloc(sizeof(float) * (size_t)n * rows);
        make_input(x, (int64_t)n * cols);
        sp_cpu *cpu = sp_cpu_new(2, sp_op_matmul_scratch(cols), 0);
        cr_assert_not_null(cpu);
        cpu->numerics = SP_NUMERICS_GGML;
        cr_assert_eq(sp_op_matmul(cpu, &w, x, n, cols, y, rows), 0, "%s", sp_last_error());
        sp_act_type at = sp_act_type_for(type);
        uint8_t *a = malloc(sp_act_row_bytes(at, cols));
        int64_t nb = cols / sp_type_block_elems(type);
        for (int t = 0; t < n; t++) {
            sp_quant_row(at, x + (size_t)t * cols, a, cols);
            for (int r = 0; r < rows; r++) {
                float want = dot_one(type, data + (size_t)r * rb, a, nb);
                cr_assert(y[(size_t)t * rows + r] == want, "%s %dx%d n=%d: y[%d][%d] = %.9g, want %.9g",
                          sp_ggml_type_name(type), rows, cols, n, t, r, y[(size_t)t * rows + r], want);
            }
        }
        sp_cpu_free(cpu);
        free(data); free(x); free(y); free(a);
    }
}

/* The AVX-512 VNNI kernels (chosen at run time where the CPU has them) give the baseline's results
 * bit for bit, on every type with an integer kernel (32-element blocks and K-quant super-blocks),
 * one row and full/partial tiles. */
Test(quant_dot, vnni_kernels_equal_the_baseline)
{
    if (!sp_qa_isa_vnni_available()) {
        test_note("skipped: this CPU (or build) has no AVX-512 VNNI");
        return;
    }
    enum { ROWS = 11 };
    for (int ti = 0; ti < N_TYPES; ti++)
        for (int nb = 1; nb <= 29; nb += 14) {
            uint32_t type = all_types[ti];
            sp_act_type at = sp_act_type_for(type);
            int64_t cols = (at == SP_ACT_Q8_K ? 256 : 32) * (int64_t)nb;
            rng_seed(7000 + 31 * ti + nb);
            size_t rb, tb;
            uint8_t *w = make_weights(type, 1, cols, &rb);
            float *x = malloc(sizeof(float) * (size_t)cols * ROWS);
            make_input(x, cols * ROWS);
            uint8_t *tiles = quant_tiles(at, x, cols, ROWS, &tb);
            for (int nt = 1; nt <= ROWS; nt += 5) {
                float base[ROWS], vnni[ROWS];
                cr_assert(sp_dot_rows_isa(SP_QA_ISA_BASE, type, w, nb, tiles, nt, base, 1));
                cr_assert(sp_dot_rows_isa(SP_QA_ISA_VNNI, type, w, nb, tiles, nt, vnni, 1));
                for (int t = 0; t < nt; t++)
                    cr_assert(base[t] == vnni[t], "%s nb=%d nt=%d row %d: vnni %.9g vs base %.9g",
                              sp_ggml_type_name(type), nb, nt, t, vnni[t], base[t]);
            }
            free(w); free(x); free(tiles);
        }
}

/* ggml_vec_dot_f16's order for a vector width of L lanes (8: AVX2, 16: AVX-512), restated: 4
 * accumulators over steps of 4L, pairwise reduction, lanes summed, the tail in double. */
static float naive_f16(const uint16_t *w, const uint16_t *a, int n, int L)
{
    float s[4][16] = { { 0 } };
    int np = n & ~(4 * L - 1);
    for (int i = 0; i < np; i += 4 * L)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < L; l++)
                s[j][l] = fmaf(sp_fp16_to_f32(w[i + L * j + l]), sp_fp16_to_f32(a[i + L * j + l]), s[j][l]);
    float r[16];
    for (int l = 0; l < L; l++)
        r[l] = (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]);
    float sum;
    if (L == 8) {
        float h[4] = { r[0] + r[4], r[1] + r[5], r[2] + r[6], r[3] + r[7] };
        sum = (h[0] + h[1]) + (h[2] + h[3]);
    } else {   /* _mm512_reduce_add_ps: halves, quarters, then (0+2, 1+3), then the two */
        float e[8], q[4];
        for (int l = 0; l < 8; l++)
            e[l] = r[l + 8] + r[l];
        for (int l = 0; l < 4; l++)
            q[l] = e[l + 4] + e[l];
        sum = (q[0] + q[2]) + (q[1] + q[3]);
    }
    double d = sum;
    for (int i = np; i < n; i++)
        d += (double)(sp_fp16_to_f32(w[i]) * sp_fp16_to_f32(a[i]));
    return (float)d;
}

Test(quant_dot, f16_follows_ggml_order_and_matmul_uses_it)
{
    static const int lens[] = { 8, 72, 100, 896, 1000 };
    for (int li = 0; li < 5; li++) {
        int n = lens[li];
        rng_seed(900 + n);
        uint16_t *w = malloc(2 * (size_t)n), *a = malloc(2 * (size_t)n);
        float *x = malloc(sizeof(float) * (size_t)n);
        for (int i = 0; i < n; i++) {
            w[i] = sp_f32_to_fp16(rng_f());
            x[i] = 3.0f * rng_f();
        }
        sp_quant_row(SP_ACT_F16, x, a, n);
        double ref = 0, mag = 0;
        for (int i = 0; i < n; i++) {
            cr_assert(a[i] == sp_f32_to_fp16(x[i]), "activation %d rounds to nearest fp16", i);
            ref += (double)sp_fp16_to_f32(w[i]) * sp_fp16_to_f32(a[i]);
            mag += fabs((double)sp_fp16_to_f32(w[i]) * sp_fp16_to_f32(a[i]));
        }
        float g8 = sp_dot_f16_width(w, a, n, 8);
        cr_assert(g8 == naive_f16(w, a, n, 8), "n=%d: 8 lanes %.9g vs ggml order %.9g", n, g8, naive_f16(w, a, n, 8));
        cr_assert(fabs(g8 - ref) <= 1e-6 * mag + 1e-7, "n=%d: %.9g vs %.9g", n, g8, ref);
        if (sp_dot_f16_widest() == 16) {
            float g16 = sp_dot_f16_width(w, a, n, 16);
            cr_assert(g16 == naive_f16(w, a, n, 16), "n=%d: 16 lanes %.9g vs ggml order %.9g", n, g16,
                      naive_f16(w, a, n, 16));
        }
        free(w); free(a); free(x);
    }
    /* matmul under GGML numerics: F16 rows . fp16-rounded activations, as sp_dot_rows computes them */
    enum { ROWS = 23, COLS = 200, N = 13 };
    rng_seed(4242);
    size_t rb;
    uint8_t *data = make_weights(SP_TYPE_F16, ROWS, COLS, &rb);
    for (size_t i = 0; i < rb * ROWS; i += 2) {
        uint16_t h = sp_f32_to_fp16(rng_f());
        memcpy(data + i, &h, 2);
    }
    float *x = malloc(sizeof(float) * N * COLS), *y = malloc(sizeof(float) * N * ROWS);
    make_input(x, N * COLS);
    sp_wmat w = { .type = SP_TYPE_F16, .rows = ROWS, .cols = COLS, .row_bytes = rb, .data = data };
    sp_cpu *cpu = sp_cpu_new(2, sp_op_matmul_scratch(COLS), 0);
    cpu->numerics = SP_NUMERICS_GGML;
    cr_assert_eq(sp_op_matmul(cpu, &w, x, N, COLS, y, ROWS), 0, "%s", sp_last_error());
    uint16_t a[COLS];
    for (int t = 0; t < N; t++) {
        sp_quant_row(SP_ACT_F16, x + t * COLS, a, COLS);
        for (int r = 0; r < ROWS; r++) {
            float want;
            sp_dot_rows(SP_TYPE_F16, data + r * rb, COLS, a, 1, &want, 1);
            cr_assert(y[t * ROWS + r] == want, "F16 matmul y[%d][%d] %.9g vs %.9g", t, r, y[t * ROWS + r], want);
        }
    }
    sp_cpu_free(cpu);
    free(data); free(x); free(y);
}
