/* gpu_test_backend_ops.c - every CUDA op against its CPU reference (cpu/dequant.h, cpu/ops.h), in the
 * style of ggml's test-backend-ops: a table of (op, shape, dtype) cases; each runs on the GPU and on
 * the CPU over the same inputs and is compared element by element with a stated tolerance
 * |gpu - cpu| <= atol + rtol * mag, where mag is |cpu| or, for sums, the sum of |terms| (so the
 * bound is the precision's error, not luck). NaN/Inf must agree. Every output buffer has guard
 * bytes before and after it (checked after the op) and is pre-filled with NaN so an element the
 * kernel never wrote shows up as a mismatch. The first few mismatches of a case are printed.
 *
 * Output: one line per case "op shape: ok (max err ..) | FAIL (...) | unsupported (reason)", then
 * "N passed, N failed, N unsupported". Exit 0 when nothing failed, 1 otherwise, 77 without a device.
 * A plain executable, not Criterion: Criterion forks per test and CUDA contexts do not survive fork.
 * Optional argument: only run cases whose op name contains it (e.g. `gpu_test_backend_ops attn`).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dequant.h"
#include "fp16.h"
#include "gguf.h"
#include "gpu.h"
#include "ops.h"
#include "sp_error.h"
#include "support/gpu_harness.h"

/* ---- random inputs ---- */

static void fill_normal(float *x, size_t n, float s)
{
    for (size_t i = 0; i < n; i++)
        x[i] = gh_rng_normal() * s;
}
static void fill_bytes(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)gh_rng_u64();
}

/* ---- comparison ---- */

typedef struct cmp {
    int64_t n_bad;
    double max_err;      /* largest |gpu - cpu| among finite pairs */
    double max_ratio;    /* largest |gpu - cpu| / tolerance */
} cmp;

/* Compare n floats; mag NULL means |ref|. skip[i] != 0 excludes element i (masked). */
static void compare(cmp *c, const char *name, const float *got, const float *ref, const float *mag,
                    const uint8_t *skip, int64_t n, double atol, double rtol)
{
    for (int64_t i = 0; i < n; i++) {
        if (skip && skip[i])
            continue;
        float g = got[i], r = ref[i];
        bool bad;
        double err = 0.0, tol = atol + rtol * (mag ? mag[i] : fabs((double)r));
        if (isnan(r) || isnan(g))
            bad = isnan(r) != isnan(g);
        else if (isinf(r) || isinf(g))
            bad = r != g;
        else {
            err = fabs((double)g - (double)r);
            bad = err > tol;
            if (err > c->max_err)
                c->max_err = err;
            if (err / tol > c->max_ratio)
                c->max_ratio = err / tol;
        }
        if (bad && c->n_bad++ < GH_MAX_PRINT) {
            if (isfinite(g) && isfinite(r))
                printf("    %s[%lld]: gpu %.9g cpu %.9g (err %.3g, tol %.3g)\n", name, (long long)i, g, r, err, tol);
            else
                printf("    %s[%lld]: gpu %.9g cpu %.9g (NaN/Inf disagree)\n", name, (long long)i, g, r);
        }
    }
}

/* Bit-exact comparison of fp32 values (NaN == NaN). */
static void compare_exact32(cmp *c, const char *name, const float *got, const float *ref, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &ref[i], 4);
        bool bad = isnan(ref[i]) ? !isnan(got[i]) : a != b;
        if (!isnan(ref[i]) && !isnan(got[i])) {
            double e = fabs((double)got[i] - (double)ref[i]);
            if (e > c->max_err)
                c->max_err = e;
        }
        if (bad && c->n_bad++ < GH_MAX_PRINT)
            printf("    %s[%lld]: gpu %.9g (0x%08x) cpu %.9g (0x%08x)\n", name, (long long)i, got[i], a, ref[i], b);
    }
}

/* fp16 output against the CPU fp32 value rounded to nearest even: bit-exact (NaN == NaN). */
static void compare_exact16(cmp *c, const char *name, const uint16_t *got, const float *ref, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t want = sp_f32_to_fp16(ref[i]);
        bool gn = (got[i] & 0x7c00) == 0x7c00 && (got[i] & 0x3ff), wn = (want & 0x7c00) == 0x7c00 && (want & 0x3ff);
        bool bad = wn ? !gn : got[i] != want;
        if (!gn && !wn) {
            double e = fabs((double)sp_fp16_to_f32(got[i]) - (double)sp_fp16_to_f32(want));
            if (e > c->max_err)
                c->max_err = e;
        }
        if (bad && c->n_bad++ < GH_MAX_PRINT)
            printf("    %s[%lld]: gpu 0x%04x (%.6g) cpu %.9g -> 0x%04x (%.6g)\n", name, (long long)i, got[i],
                   sp_fp16_to_f32(got[i]), ref[i], want, sp_fp16_to_f32(want));
    }
}

/* ---- reporting ---- */

static void report(const char *op, const char *shape, int rc, const cmp *c, const char *tol)
{
    char summary[256];
    snprintf(summary, sizeof summary, "max err %.3g = %.3g x tol; tol %s", c->max_err, c->max_ratio, tol);
    gh_report(op, shape, rc, c->n_bad, summary);
}

/* ---- dequant: exact ---- */

static void case_dequant(uint32_t type, int64_t rows, int64_t cols, sp_gpu_dtype out, int src_pad, int dst_pad,
                         int src_offset)
{
    char op[64], shape[128];
    snprintf(op, sizeof op, "dequant_%s_to_%s", sp_ggml_type_name(type), out == SP_GPU_F16 ? "f16" : "f32");
    snprintf(shape, sizeof shape, "[%lld x %lld] src_row+%d dst_ld+%d src_off+%d", (long long)rows, (long long)cols,
             src_pad, dst_pad, src_offset);
    if (!gh_selected(op))
        return;
    cmp c = {0};
    dbuf src = {0}, dst = {0};
    size_t row_bytes = sp_type_row_bytes(type, cols) + (size_t)src_pad;
    int64_t ld = cols + dst_pad, esz = out == SP_GPU_F16 ? 2 : 4;
    size_t src_bytes = (size_t)rows * row_bytes + (size_t)src_offset;
    uint8_t *h = malloc(src_bytes);
    float *ref = malloc(sizeof(float) * (size_t)(rows * cols));
    void *got = malloc((size_t)(rows * ld * esz));
    int rc = -ENOMEM;
    if (!h || !ref || !got)
        goto done;
    /* random bytes, scale fields included: NaN/Inf/subnormal scales must agree too */
    fill_bytes(h, src_bytes);
    for (int64_t r = 0; r < rows; r++)
        if ((rc = sp_dequant_ref(type, h + src_offset + r * row_bytes, ref + r * cols, cols)))
            goto done;
    if ((rc = dbuf_upload(&src, h, src_bytes)) || (rc = dbuf_new(&dst, (size_t)(rows * ld * esz), 0xFF)))
        goto done;
    sp_gpu_dequant_desc d = {.type = type, .rows = rows, .cols = cols, .src = (uint8_t *)dptr(&src) + src_offset,
                             .src_row_bytes = row_bytes, .dst = dptr(&dst), .dst_ld = ld, .dst_type = out};
    if ((rc = sp_gpu_dequant(gh_stream, d)) || (rc = dbuf_download(&dst, got, "dst")))
        goto done;
    for (int64_t r = 0; r < rows; r++) {
        char nm[32];
        snprintf(nm, sizeof nm, "row %lld", (long long)r);
        if (out == SP_GPU_F16)
            compare_exact16(&c, nm, (uint16_t *)got + r * ld, ref + r * cols, cols);
        else
            compare_exact32(&c, nm, (float *)got + r * ld, ref + r * cols, cols);
    }
done:
    report(op, shape, rc, &c, out == SP_GPU_F16 ? "bit-exact fp16(cpu)" : "bit-exact");
    dbuf_free(&src);
    dbuf_free(&dst);
    free(h);
    free(ref);
    free(got);
}

/* ---- element-wise ---- */

#define EW_ATOL 1e-6
#define EW_RTOL 1e-5
#define EW_TOL "1e-6 + 1e-5 x |cpu|"

static void case_rmsnorm(int rows, int n, int pad, float eps, bool in_place)
{
    const char *op = "rmsnorm";
    char shape[96];
    snprintf(shape, sizeof shape, "[%d x %d] ld+%d eps %g%s", rows, n, pad, eps, in_place ? " in place" : "");
    if (!gh_selected(op))
        return;
    int64_t ld = n + pad;
    cmp c = {0};
    dbuf x = {0}, y = {0}, w = {0};
    float *hx = malloc(sizeof(float) * (size_t)(rows * ld)), *hw = malloc(sizeof(float) * (size_t)n);
    float *ref = malloc(sizeof(float) * (size_t)(rows * ld)), *got = malloc(sizeof(float) * (size_t)(rows * ld));
    int rc = -ENOMEM;
    if (!hx || !hw || !ref || !got)
        goto done;
    fill_normal(hx, (size_t)(rows * ld), 2.0f);
    for (int i = 0; i < n; i++)
        hw[i] = gh_rng_uniform(0.5f, 1.5f);
    for (int r = 0; r < rows; r++)
        sp_op_rmsnorm(ref + r * ld, hx + r * ld, hw, n, eps);
    if ((rc = dbuf_upload(&x, hx, sizeof(float) * (size_t)(rows * ld))) || (rc = dbuf_upload(&w, hw, sizeof(float) * n)) ||
        (!in_place && (rc = dbuf_new(&y, sizeof(float) * (size_t)(rows * ld), 0xFF))))
        goto done;
    dbuf *out = in_place ? &x : &y;
    sp_gpu_rmsnorm_desc d = {.n_rows = rows, .n = n, .x = dptr(&x), .ldx = ld, .y = dptr(out), .ldy = ld,
                             .w = dptr(&w), .eps = eps};
    if ((rc = sp_gpu_rmsnorm(gh_stream, d)) || (rc = dbuf_download(out, got, "y")))
        goto done;
    for (int r = 0; r < rows; r++) {
        char nm[32];
        snprintf(nm, sizeof nm, "row %d y", r);
        compare(&c, nm, got + r * ld, ref + r * ld, NULL, NULL, n, EW_ATOL, EW_RTOL);
    }
done:
    report(op, shape, rc, &c, EW_TOL);
    dbuf_free(&x);
    dbuf_free(&y);
    dbuf_free(&w);
    free(hx);
    free(hw);
    free(ref);
    free(got);
}

static void case_rope(int n_tok, int n_heads, int head_dim, int pad, int mode, bool table, double base, int max_pos)
{
    char op[32], shape[128];
    snprintf(op, sizeof op, "rope_%s", mode == SP_ROPE_NORM ? "norm" : "neox");
    snprintf(shape, sizeof shape, "[%d tok x %d heads x %d] ld+%d pos<%d %s base %g", n_tok, n_heads, head_dim, pad,
             max_pos, table ? "table" : "computed", base);
    if (!gh_selected(op))
        return;
    int64_t ld = (int64_t)n_heads * head_dim + pad, n = n_tok * ld;
    cmp c = {0};
    dbuf x = {0}, pos = {0}, tab = {0};
    float *hx = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    float *mag = malloc(sizeof(float) * n);
    float *htab = malloc(sizeof(float) * (size_t)max_pos * head_dim);
    int32_t *hp = malloc(sizeof(int32_t) * n_tok);
    int rc = -ENOMEM;
    if (!hx || !ref || !got || !mag || !htab || !hp)
        goto done;
    fill_normal(hx, n, 1.0f);
    for (int t = 0; t < n_tok; t++)
        hp[t] = t == 0 ? max_pos - 1 : (int32_t)(gh_rng_u64() % (uint64_t)max_pos);
    sp_rope_table_fill(htab, max_pos, head_dim, base);
    memcpy(ref, hx, sizeof(float) * n);
    sp_op_rope(ref, n_tok, n_heads, head_dim, (int)ld, hp, htab, (sp_rope_mode)mode);
    /* error scale of a rotated element: |x_a| + |x_b| of its pair (the result may cancel to ~0) */
    int half = head_dim / 2;
    for (int64_t i = 0; i < n; i++)
        mag[i] = fabsf(hx[i]);
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < half; i++) {
                int64_t o = t * ld + (int64_t)h * head_dim;
                int64_t a = o + (mode == SP_ROPE_NORM ? 2 * i : i), b = o + (mode == SP_ROPE_NORM ? 2 * i + 1 : i + half);
                mag[a] = mag[b] = fabsf(hx[a]) + fabsf(hx[b]);
            }
    if ((rc = dbuf_upload(&x, hx, sizeof(float) * n)) || (rc = dbuf_upload(&pos, hp, sizeof(int32_t) * n_tok)) ||
        (table && (rc = dbuf_upload(&tab, htab, sizeof(float) * (size_t)max_pos * head_dim))))
        goto done;
    sp_gpu_rope_desc d = {.x = dptr(&x), .n_tok = n_tok, .n_heads = n_heads, .head_dim = head_dim, .ld = ld,
                          .pos = dptr(&pos), .table = table ? dptr(&tab) : NULL, .n_pos = max_pos, .base = base,
                          .mode = mode};
    if ((rc = sp_gpu_rope(gh_stream, d)) || (rc = dbuf_download(&x, got, "x")))
        goto done;
    compare(&c, "x", got, ref, mag, NULL, n, EW_ATOL, EW_RTOL);
done:
    report(op, shape, rc, &c, "1e-6 + 1e-5 x (|x_a|+|x_b|)");
    dbuf_free(&x);
    dbuf_free(&pos);
    dbuf_free(&tab);
    free(hx);
    free(ref);
    free(got);
    free(mag);
    free(htab);
    free(hp);
}

/* Positions outside the table (the device holds them, the launcher cannot check): their tokens
 * become NaN, the others are rotated as usual, and nothing outside the table is read (the table
 * is a guarded buffer; ASan in the emulation build). */
static void case_rope_out_of_table(int mode)
{
    char op[32];
    snprintf(op, sizeof op, "rope_%s", mode == SP_ROPE_NORM ? "norm" : "neox");
    const char *shape = "[4 tok x 2 heads x 8] table of 16 positions, pos {3, 16, -1, 1000000}";
    if (!gh_selected(op))
        return;
    enum { T = 4, H = 2, D = 8, NP = 16, N = T * H * D };
    const int32_t hp[T] = {3, NP, -1, 1000000};
    float hx[N], ref[N], got[N], htab[NP * D];
    cmp c = {0};
    dbuf x = {0}, pos = {0}, tab = {0};
    fill_normal(hx, N, 1.0f);
    sp_rope_table_fill(htab, NP, D, 1e4);
    memcpy(ref, hx, sizeof ref);
    sp_op_rope(ref, 1, H, D, H * D, hp, htab, (sp_rope_mode)mode);   /* token 0 only: the in-table one */
    int rc;
    if ((rc = dbuf_upload(&x, hx, sizeof hx)) || (rc = dbuf_upload(&pos, hp, sizeof hp)) ||
        (rc = dbuf_upload(&tab, htab, sizeof htab)))
        goto done;
    sp_gpu_rope_desc d = {.x = dptr(&x), .n_tok = T, .n_heads = H, .head_dim = D, .ld = H * D, .pos = dptr(&pos),
                          .table = dptr(&tab), .n_pos = NP, .mode = mode};
    if ((rc = sp_gpu_rope(gh_stream, d)) || (rc = dbuf_download(&x, got, "x")) ||
        (rc = dbuf_download(&tab, NULL, "table")))
        goto done;
    for (int i = 0; i < N; i++)
        if (i >= H * D)
            ref[i] = NAN;   /* compare() wants NaN exactly where the reference has it */
    compare(&c, "x", got, ref, NULL, NULL, N, EW_ATOL, EW_RTOL);
done:
    report(op, shape, rc, &c, "token 0 as the CPU, the out-of-table tokens NaN");
    dbuf_free(&x);
    dbuf_free(&pos);
    dbuf_free(&tab);
}

static void case_swiglu(int64_t n, float range)
{
    const char *op = "swiglu";
    char shape[64];
    snprintf(shape, sizeof shape, "[%lld] |gate|<%g", (long long)n, range);
    if (!gh_selected(op))
        return;
    cmp c = {0};
    dbuf g = {0}, u = {0}, o = {0};
    float *hg = malloc(sizeof(float) * n), *hu = malloc(sizeof(float) * n);
    float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
    int rc = -ENOMEM;
    if (!hg || !hu || !ref || !got)
        goto done;
    for (int64_t i = 0; i < n; i++) {
        hg[i] = gh_rng_uniform(-range, range);
        hu[i] = gh_rng_normal();
    }
    sp_op_swiglu(ref, hg, hu, (int)n);
    if ((rc = dbuf_upload(&g, hg, sizeof(float) * n)) || (rc = dbuf_upload(&u, hu, sizeof(float) * n)) ||
        (rc = dbuf_new(&o, sizeof(float) * n, 0xFF)))
        goto done;
    sp_gpu_swiglu_desc d = {.n = n, .gate = dptr(&g), .up = dptr(&u), .out = dptr(&o)};
    if ((rc = sp_gpu_swiglu(gh_stream, d)) || (rc = dbuf_download(&o, got, "out")))
        goto done;
    compare(&c, "out", got, ref, NULL, NULL, n, EW_ATOL, EW_RTOL);
done:
    report(op, shape, rc, &c, EW_TOL);
    dbuf_free(&g);
    dbuf_free(&u);
    dbuf_free(&o);
    free(hg);
    free(hu);
    free(ref);
    free(got);
}

/* ---- matrix products ---- */

/* CPU reference: y = x W^T through sp_op_matmul on the same stored weights, plus mag[t][r] =
 * sum_c |W[r][c] x[t][c]| (exact dequantized W) as the error scale. */
static int matmul_ref(const sp_wmat *w, const float *x, int n, float *y, float *mag)
{
    sp_cpu *cpu = sp_cpu_new(2, sp_op_matmul_scratch(w->cols), 0);
    if (!cpu)
        return -ENOMEM;
    int rc = sp_op_matmul(cpu, w, x, n, (int)w->cols, y, (int)w->rows);
    sp_cpu_free(cpu);
    float *row = malloc(sizeof(float) * (size_t)w->cols);
    if (!row)
        return -ENOMEM;
    for (int64_t r = 0; !rc && r < w->rows; r++) {
        if ((rc = sp_op_get_row(w, r, row)))
            break;
        for (int t = 0; t < n; t++) {
            double s = 0.0;
            for (int64_t k = 0; k < w->cols; k++)
                s += fabs((double)row[k] * (double)x[t * w->cols + k]);
            mag[t * w->rows + r] = (float)s;
        }
    }
    free(row);
    return rc;
}

/* big != 0: a few fp32 activations are set to +-big (beyond fp16's 65504: they must not become inf). */
static void case_gemm(sp_gpu_blas *blas, int64_t rows, int64_t cols, int n, sp_gpu_dtype xt, bool accumulate,
                      float big)
{
    const char *op = "gemm_f16";
    char shape[128];
    snprintf(shape, sizeof shape, "W[%lld x %lld] x %d tok, x %s%s%s", (long long)rows, (long long)cols, n,
             xt == SP_GPU_F16 ? "f16" : "f32", accumulate ? ", y +=" : "", big != 0.0f ? ", |x| up to " : "");
    if (big != 0.0f)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%g", (double)big);
    if (!gh_selected(op))
        return;
    cmp c = {0};
    dbuf w = {0}, x = {0}, x16 = {0}, y = {0};
    size_t nw = (size_t)(rows * cols), nx = (size_t)n * cols, ny = (size_t)n * rows;
    uint16_t *hw = malloc(2 * nw), *hx16 = malloc(2 * nx);
    float *hx = malloc(4 * nx), *y0 = malloc(4 * ny), *ref = malloc(4 * ny), *mag = malloc(4 * ny);
    float *got = malloc(4 * ny);
    int rc = -ENOMEM;
    if (!hw || !hx16 || !hx || !y0 || !ref || !mag || !got)
        goto done;
    for (size_t i = 0; i < nw; i++)
        hw[i] = sp_f32_to_fp16(gh_rng_normal() * 0.05f);
    fill_normal(hx, nx, 1.0f);
    for (size_t i = 0; big != 0.0f && i < nx; i += 97)
        hx[i] = i % 2 ? big : -big / 3.0f;
    for (size_t i = 0; i < nx; i++) {
        hx16[i] = sp_f32_to_fp16(hx[i]);
        if (xt == SP_GPU_F16)
            hx[i] = sp_fp16_to_f32(hx16[i]);   /* the reference sees the activations the GPU sees */
    }
    fill_normal(y0, ny, 1.0f);
    sp_wmat wm = {.type = SP_TYPE_F16, .rows = rows, .cols = cols, .row_bytes = 2 * (size_t)cols, .data = hw};
    if ((rc = matmul_ref(&wm, hx, n, ref, mag)))
        goto done;
    if (accumulate)
        for (size_t i = 0; i < ny; i++) {
            ref[i] += y0[i];
            mag[i] += fabsf(y0[i]);
        }
    if ((rc = dbuf_upload(&w, hw, 2 * nw)) ||
        (rc = xt == SP_GPU_F16 ? dbuf_upload(&x, hx16, 2 * nx) : dbuf_upload(&x, hx, 4 * nx)) ||
        (xt == SP_GPU_F32 && (rc = dbuf_new(&x16, SP_GPU_GEMM_X16_HEAD + 2 * nx, 0xFF))) ||
        (rc = accumulate ? dbuf_upload(&y, y0, 4 * ny) : dbuf_new(&y, 4 * ny, 0xFF)))
        goto done;
    sp_gpu_gemm_desc d = {.rows = rows, .cols = cols, .w = dptr(&w), .ldw = cols, .n = n, .x = dptr(&x), .ldx = cols,
                          .x_type = xt, .y = dptr(&y), .ldy = rows, .accumulate = accumulate,
                          .x16 = xt == SP_GPU_F32 ? dptr(&x16) : NULL};
    if ((rc = sp_gpu_gemm(blas, gh_stream, d)) || (rc = dbuf_download(&y, got, "y")) ||
        (xt == SP_GPU_F32 && (rc = dbuf_download(&x16, NULL, "x16"))))
        goto done;
    /* fp16 products are exact in fp32; the budget is fp32 accumulation order (1e-4 x sum|terms|) plus,
     * for fp32 activations, their rounding to fp16 (2^-11 x sum|terms|) */
    compare(&c, "y", got, ref, mag, NULL, (int64_t)ny, 1e-6, xt == SP_GPU_F16 ? 1e-4 : 1e-4 + 0x1p-11);
done:
    report(op, shape, rc, &c, xt == SP_GPU_F16 ? "1e-6 + 1e-4 x sum|w x|" : "1e-6 + (1e-4 + 2^-11) x sum|w x|");
    dbuf_free(&w);
    dbuf_free(&x);
    dbuf_free(&x16);
    dbuf_free(&y);
    free(hw);
    free(hx16);
    free(hx);
    free(y0);
    free(ref);
    free(mag);
    free(got);
}

/* Random weights of `type` with sane scales (finite, small) so the products are meaningful. */
static void fill_weights(uint32_t type, uint8_t *w, int64_t rows, int64_t cols, size_t row_bytes)
{
    fill_bytes(w, (size_t)rows * row_bytes);
    int64_t nb = cols / sp_type_block_elems(type);
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = w + r * row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            uint16_t d = sp_f32_to_fp16(gh_rng_uniform(0.001f, 0.01f)), m = sp_f32_to_fp16(-gh_rng_uniform(0.0f, 0.08f));
            switch (type) {
            case SP_TYPE_F16: {
                uint16_t h = sp_f32_to_fp16(gh_rng_normal() * 0.05f);
                memcpy(row + 2 * b, &h, 2);
                break;
            }
            case SP_TYPE_F32: {
                float f = gh_rng_normal() * 0.05f;
                memcpy(row + 4 * b, &f, 4);
                break;
            }
            case SP_TYPE_BF16: {   /* random bytes would span every exponent and overflow the sums */
                float f = gh_rng_normal() * 0.05f;
                uint32_t u;
                memcpy(&u, &f, 4);
                uint16_t h = (uint16_t)(u >> 16);
                memcpy(row + 2 * b, &h, 2);
                break;
            }
            case SP_TYPE_Q8_0: memcpy(row + 34 * b, &d, 2); break;
            case SP_TYPE_Q4_0: memcpy(row + 18 * b, &d, 2); break;
            case SP_TYPE_Q4_1:
                memcpy(row + 20 * b, &d, 2);
                memcpy(row + 20 * b + 2, &m, 2);
                break;
            case SP_TYPE_Q6_K: memcpy(row + 208 + 210 * b, &d, 2); break;
            default: break;
            }
        }
    }
}

/* One product y (+)= W x of n vectors, host and device sides, shared by the GEMV and the
 * dequantize-then-SGEMM cases: seeded weights and activations, the CPU reference with its
 * magnitude bound, and the operands uploaded (y as given, or NaN fill when not accumulating). */
typedef struct mm_case {
    int64_t rows, cols;
    int n;
    size_t row_bytes, nx, ny;
    uint8_t *hw;
    float *hx, *y0, *ref, *mag, *got;
    dbuf w, x, y;
} mm_case;

static int mm_case_make(mm_case *m, uint32_t type, int64_t rows, int64_t cols, int n, size_t row_bytes,
                        bool accumulate)
{
    memset(m, 0, sizeof *m);
    m->rows = rows;
    m->cols = cols;
    m->n = n;
    m->row_bytes = row_bytes;
    m->nx = (size_t)n * cols;
    m->ny = (size_t)n * rows;
    m->hw = malloc((size_t)rows * row_bytes);
    m->hx = malloc(4 * m->nx);
    m->y0 = malloc(4 * m->ny);
    m->ref = malloc(4 * m->ny);
    m->mag = malloc(4 * m->ny);
    m->got = malloc(4 * m->ny);
    if (!m->hw || !m->hx || !m->y0 || !m->ref || !m->mag || !m->got)
        return -ENOMEM;
    fill_weights(type, m->hw, rows, cols, row_bytes);
    fill_normal(m->hx, m->nx, 1.0f);
    fill_normal(m->y0, m->ny, 1.0f);
    sp_wmat wm = {.type = type, .rows = rows, .cols = cols, .row_bytes = row_bytes, .data = m->hw};
    int rc = matmul_ref(&wm, m->hx, n, m->ref, m->mag);
    if (rc)
        return rc;
    if (accumulate)
        for (size_t i = 0; i < m->ny; i++) {
            m->ref[i] += m->y0[i];
            m->mag[i] += fabsf(m->y0[i]);
        }
    if ((rc = dbuf_upload(&m->w, m->hw, (size_t)rows * row_bytes)) || (rc = dbuf_upload(&m->x, m->hx, 4 * m->nx)) ||
        (rc = accumulate ? dbuf_upload(&m->y, m->y0, 4 * m->ny) : dbuf_new(&m->y, 4 * m->ny, 0xFF)))
        return rc;
    return 0;
}

/* Download y and compare it with the reference. */
static int mm_case_check(mm_case *m, cmp *c)
{
    int rc = dbuf_download(&m->y, m->got, "y");
    if (rc == 0)
        compare(c, "y", m->got, m->ref, m->mag, NULL, (int64_t)m->ny, 1e-6, 1e-4);
    return rc;
}

static void mm_case_free(mm_case *m)
{
    dbuf_free(&m->w);
    dbuf_free(&m->x);
    dbuf_free(&m->y);
    free(m->hw);
    free(m->hx);
    free(m->y0);
    free(m->ref);
    free(m->mag);
    free(m->got);
}

static void case_gemv(uint32_t type, int64_t rows, int64_t cols, int n, int row_pad, bool accumulate)
{
    char op[32], shape[128];
    int64_t be = sp_type_block_elems(type);
    cols = (cols + be - 1) / be * be;   /* K-quants: whole super-blocks */
    snprintf(op, sizeof op, "gemv_%s", sp_ggml_type_name(type));
    snprintf(shape, sizeof shape, "W[%lld x %lld] row+%dB x %d vec%s", (long long)rows, (long long)cols, row_pad, n,
             accumulate ? ", y +=" : "");
    if (!gh_selected(op))
        return;
    cmp c = {0};
    mm_case m;
    size_t row_bytes = sp_type_row_bytes(type, cols) + (size_t)row_pad;
    int rc = mm_case_make(&m, type, rows, cols, n, row_bytes, accumulate);
    if (rc == 0) {
        sp_gpu_gemv_desc d = {.w_type = type, .rows = rows, .cols = cols, .w = dptr(&m.w), .w_row_bytes = row_bytes,
                              .n = n, .x = dptr(&m.x), .ldx = cols, .y = dptr(&m.y), .ldy = rows,
                              .accumulate = accumulate};
        if ((rc = sp_gpu_gemv(gh_stream, d)) == 0)
            rc = mm_case_check(&m, &c);
    }
    report(op, shape, rc, &c, "1e-6 + 1e-4 x sum|w x|");
    mm_case_free(&m);
}

/* The prefill product on dequantized row blocks: scratch_rows rows per block (several blocks and a
 * short last one when it does not divide rows). */
static void case_matmul_dq(sp_gpu_blas *blas, uint32_t type, int64_t rows, int64_t cols, int n, int64_t scratch_rows,
                           bool accumulate)
{
    char op[32], shape[128];
    int64_t be = sp_type_block_elems(type);
    cols = (cols + be - 1) / be * be;
    snprintf(op, sizeof op, "matmul_dq_%s", sp_ggml_type_name(type));
    snprintf(shape, sizeof shape, "W[%lld x %lld] x %d tok, %lld rows a block%s", (long long)rows, (long long)cols, n,
             (long long)scratch_rows, accumulate ? ", y +=" : "");
    if (!gh_selected(op))
        return;
    cmp c = {0};
    mm_case m;
    dbuf scr = {0};
    size_t row_bytes = sp_type_row_bytes(type, cols), scratch_floats = (size_t)(scratch_rows * cols);
    int rc = mm_case_make(&m, type, rows, cols, n, row_bytes, accumulate);
    if (rc == 0)
        rc = dbuf_new(&scr, 4 * scratch_floats, 0xFF);
    if (rc == 0) {
        sp_gpu_matmul_dq_desc d = {.p = {.w_type = type, .rows = rows, .cols = cols, .w = dptr(&m.w),
                                         .w_row_bytes = row_bytes, .n = n, .x = dptr(&m.x), .ldx = cols,
                                         .y = dptr(&m.y), .ldy = rows, .accumulate = accumulate},
                                   .scratch = dptr(&scr), .scratch_floats = scratch_floats};
        if ((rc = sp_gpu_matmul_dq(blas, gh_stream, d)) == 0 && (rc = mm_case_check(&m, &c)) == 0)
            rc = dbuf_download(&scr, NULL, "scratch");
    }
    report(op, shape, rc, &c, "1e-6 + 1e-4 x sum|w x|");
    dbuf_free(&scr);
    mm_case_free(&m);
}

/* ---- attention ---- */

#define ATT_ATOL 2e-5
#define ATT_RTOL 1e-4

static void case_attention(int n_q, int q_pos0, int n_head, int n_kv_head, int head_dim, int n_window, float q_scale,
                           int stride_pad)
{
    const char *op = n_q == 1 && n_window == 0 ? "attn_decode" : "attn_prefill";
    char shape[160];
    int n_keys = q_pos0 + n_q;
    snprintf(shape, sizeof shape, "n_q %d pos0 %d heads %d/%d d %d window %d |q|x%g kv_stride+%d", n_q, q_pos0, n_head,
             n_kv_head, head_dim, n_window, q_scale, stride_pad);
    if (!gh_selected(op))
        return;
    cmp c = {0};
    dbuf q = {0}, k = {0}, v = {0}, out = {0}, win = {0}, scr = {0};
    int D = head_dim, ldq = n_head * D + 8, ldo = n_head * D + 4, win_ld = n_keys + 3;
    size_t stride = (size_t)(n_keys + stride_pad) * D, nkv = stride * n_kv_head;
    size_t nq = (size_t)n_q * ldq, no = (size_t)n_q * ldo, nwin = (size_t)n_head * win_ld;
    float *hq = malloc(4 * nq), *ref = calloc(no, 4), *got = malloc(4 * no), *wref = calloc(nwin, 4);
    float *wgot = malloc(4 * nwin);
    uint16_t *hk = malloc(2 * nkv), *hv = malloc(2 * nkv);
    uint8_t *oskip = calloc(no, 1), *wskip = calloc(nwin, 1);
    sp_cpu *cpu = NULL;
    int rc = -ENOMEM;
    if (!hq || !ref || !got || !wref || !wgot || !hk || !hv || !oskip || !wskip)
        goto done;
    fill_normal(hq, nq, q_scale);
    for (size_t i = 0; i < nkv; i++) {
        hk[i] = sp_f32_to_fp16(gh_rng_normal());
        hv[i] = sp_f32_to_fp16(gh_rng_normal());
    }
    /* masked: the padding columns of out and win are not part of the contract */
    for (int t = 0; t < n_q; t++)
        for (int i = n_head * D; i < ldo; i++)
            oskip[(size_t)t * ldo + i] = 1;
    for (int h = 0; h < n_head; h++)
        for (int j = n_keys; j < win_ld; j++)
            wskip[(size_t)h * win_ld + j] = 1;
    cpu = sp_cpu_new(2, sp_op_attention_thread_scratch(n_head, n_kv_head, D),
                     sp_op_attention_shared_scratch(2, n_head, D, n_window));
    if (!cpu)
        goto done;
    sp_attn_desc a = {.n_q = n_q, .q_pos0 = q_pos0, .n_head = n_head, .n_kv_head = n_kv_head, .head_dim = D,
                      .q = hq, .ldq = ldq, .out = ref, .ldo = ldo, .k = hk, .v = hv, .kv_type = SP_KV_F16,
                      .kv_head_stride = stride, .scale = 1.0f / sqrtf((float)D), .n_window = n_window,
                      .win = n_window ? wref : NULL, .win_ld = win_ld};
    if ((rc = sp_op_attention(cpu, &a)))
        goto done;
    size_t nscr = sp_gpu_attention_scratch_floats(n_q, q_pos0, n_head, D, n_window);
    if ((rc = dbuf_upload(&q, hq, 4 * nq)) || (rc = dbuf_upload(&k, hk, 2 * nkv)) || (rc = dbuf_upload(&v, hv, 2 * nkv)) ||
        (rc = dbuf_new(&out, 4 * no, 0xFF)) || (n_window && (rc = dbuf_new(&win, 4 * nwin, 0xFF))) ||
        (rc = dbuf_new(&scr, 4 * (nscr ? nscr : 1), 0xFF)))
        goto done;
    sp_attn_desc d = a;      /* the same descriptor, pointing at device memory */
    d.q = dptr(&q), d.out = dptr(&out), d.k = dptr(&k), d.v = dptr(&v), d.win = n_window ? dptr(&win) : NULL;
    if ((rc = sp_gpu_attention(gh_stream, &d, dptr(&scr), nscr)) || (rc = dbuf_download(&out, got, "out")) ||
        (n_window && (rc = dbuf_download(&win, wgot, "win"))) || (rc = dbuf_download(&scr, NULL, "scratch")))
        goto done;
    compare(&c, "out", got, ref, NULL, oskip, (int64_t)no, ATT_ATOL, ATT_RTOL);
    if (n_window)
        compare(&c, "win", wgot, wref, NULL, wskip, (int64_t)nwin, ATT_ATOL, ATT_RTOL);
done:
    report(op, shape, rc, &c, "2e-5 + 1e-4 x |cpu| (out and window scores)");
    sp_cpu_free(cpu);
    dbuf_free(&q);
    dbuf_free(&k);
    dbuf_free(&v);
    dbuf_free(&out);
    dbuf_free(&win);
    dbuf_free(&scr);
    free(hq);
    free(ref);
    free(got);
    free(wref);
    free(wgot);
    free(hk);
    free(hv);
    free(oskip);
    free(wskip);
}

/* ---- argmax (reference: the contract in gpu.h, a plain loop) ---- */

static int32_t argmax_ref(const float *x, int64_t n)
{
    int32_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best]))
            best = (int32_t)i;
    return best;
}

static void case_argmax(int rows, int64_t n, int pad)
{
    const char *op = "argmax";
    char shape[96];
    snprintf(shape, sizeof shape, "[%d x %lld] ld+%d (ties, NaN, -inf rows)", rows, (long long)n, pad);
    if (!gh_selected(op))
        return;
    cmp c = {0};
    int64_t ld = n + pad;
    dbuf l = {0}, o = {0};
    float *hl = malloc(sizeof(float) * (size_t)(rows * ld));
    int32_t *got = malloc(sizeof(int32_t) * rows);
    int rc = -ENOMEM;
    if (!hl || !got)
        goto done;
    fill_normal(hl, (size_t)(rows * ld), 3.0f);
    for (int r = 0; r < rows; r++) {
        float *x = hl + r * ld;
        switch (r % 5) {
        case 1: /* tie: the lower index wins */
            x[n - 1] = x[n / 3] = 100.0f;
            break;
        case 2: /* NaNs never win */
            x[0] = NAN;
            x[n / 2] = NAN;
            x[n - 2] = 50.0f;
            break;
        case 3: /* all -inf except the last */
            for (int64_t i = 0; i < n; i++)
                x[i] = -INFINITY;
            x[n - 1] = -1e30f;
            break;
        case 4: /* all NaN: -1 */
            for (int64_t i = 0; i < n; i++)
                x[i] = NAN;
            break;
        default: break;
        }
        for (int64_t i = n; i < ld; i++)
            x[i] = 1e38f;   /* padding must be ignored */
    }
    if ((rc = dbuf_upload(&l, hl, sizeof(float) * (size_t)(rows * ld))) || (rc = dbuf_new(&o, sizeof(int32_t) * rows, 0xFF)))
        goto done;
    sp_gpu_argmax_desc d = {.logits = dptr(&l), .n_rows = rows, .n = n, .ld = ld, .out = dptr(&o)};
    if ((rc = sp_gpu_argmax(gh_stream, d)) || (rc = dbuf_download(&o, got, "out")))
        goto done;
    for (int r = 0; r < rows; r++) {
        int32_t want = argmax_ref(hl + r * ld, n);
        if (got[r] != want && c.n_bad++ < GH_MAX_PRINT)
            printf("    row %d: gpu %d cpu %d\n", r, got[r], want);
    }
done:
    report(op, shape, rc, &c, "exact index");
    dbuf_free(&l);
    dbuf_free(&o);
    free(hl);
    free(got);
}

/* ---- the table ---- */

int main(int argc, char **argv)
{
    sp_gpu_blas *blas;
    int status = gh_begin(argc, argv, 0x9E3779B97F4A7C15ull, &blas);
    if (status)
        return status;

    static const uint32_t types[] = {SP_TYPE_F32, SP_TYPE_F16, SP_TYPE_BF16, SP_TYPE_Q8_0, SP_TYPE_Q4_0, SP_TYPE_Q4_1,
                                     SP_TYPE_Q5_0, SP_TYPE_Q5_1, SP_TYPE_Q4_K, SP_TYPE_Q5_K, SP_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0] && !gh_dead; i++)
        for (int o = 0; o < 2 && !gh_dead; o++) {
            sp_gpu_dtype out = o ? SP_GPU_F16 : SP_GPU_F32;
            case_dequant(types[i], 3, 512, out, 0, 0, 0);
            case_dequant(types[i], 7, 1024, out, 5, 3, 1);  /* padded rows, odd source address */
        }

    struct { int rows, n, pad; float eps; bool in_place; } norm[] = {
        {1, 576, 0, 1e-5f, false}, {5, 576, 24, 1e-5f, false}, {3, 1536, 0, 1e-6f, true}, {2, 4096, 7, 1e-6f, false},
        {4, 65, 0, 1e-5f, false},
    };
    for (size_t i = 0; i < sizeof norm / sizeof norm[0] && !gh_dead; i++)
        case_rmsnorm(norm[i].rows, norm[i].n, norm[i].pad, norm[i].eps, norm[i].in_place);

    for (int mode = 0; mode < 2 && !gh_dead; mode++)
        for (int table = 0; table < 2 && !gh_dead; table++) {
            case_rope(7, 9, 64, 0, mode, table, 1e5, 8192);
            case_rope(5, 3, 64, 16, mode, table, 1e5, 64);
            case_rope(3, 4, 128, 0, mode, table, 1e4, 32768);
            case_rope(2, 2, 6, 2, mode, table, 1e6, 100);
        }
    for (int mode = 0; mode < 2 && !gh_dead; mode++)
        case_rope_out_of_table(mode);

    case_swiglu(1536, 10.0f);
    case_swiglu(4 * 1536 + 7, 20.0f);
    case_swiglu(1, 1.0f);

    struct { int64_t rows, cols; int n; } mm[] = {
        {576, 576, 17}, {1536, 576, 64}, {576, 1536, 33}, {192, 200, 5}, {49152, 576, 3},
    };
    for (size_t i = 0; i < sizeof mm / sizeof mm[0] && !gh_dead; i++)
        for (int xt = 0; xt < 2 && !gh_dead; xt++)
            case_gemm(blas, mm[i].rows, mm[i].cols, mm[i].n, xt ? SP_GPU_F16 : SP_GPU_F32, false, 0.0f);
    if (!gh_dead)
        case_gemm(blas, 576, 1536, 9, SP_GPU_F32, true, 0.0f);
    if (!gh_dead)
        case_gemm(blas, 192, 200, 5, SP_GPU_F32, false, 3e5f);
    if (!gh_dead)
        case_gemm(blas, 576, 576, 17, SP_GPU_F32, true, 1e9f);

    static const uint32_t gv_types[] = {SP_TYPE_F16, SP_TYPE_F32, SP_TYPE_Q8_0, SP_TYPE_Q4_1, SP_TYPE_Q4_0, SP_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof gv_types / sizeof gv_types[0] && !gh_dead; i++) {
        uint32_t t = gv_types[i];
        case_gemv(t, 576, 576, 1, 0, false);
        case_gemv(t, 1536, 576, 4, 0, false);
        case_gemv(t, 576, 1536, SP_GPU_GEMV_MAX_N, 0, true);
        case_gemv(t, 77, 768, 2, 8, false);        /* padded rows: fp16 rows not 16-byte aligned */
        if (t == SP_TYPE_F16 || t == SP_TYPE_Q8_0)
            case_gemv(t, 49152, 576, 1, 0, false); /* the tied LM head */
    }
    if (!gh_dead)
        case_gemv(SP_TYPE_F16, 33, 200, 3, 0, false);  /* cols % 8 != 0: scalar path */

    static const uint32_t dq_types[] = {SP_TYPE_F16, SP_TYPE_BF16, SP_TYPE_F32, SP_TYPE_Q4_0, SP_TYPE_Q4_1,
                                        SP_TYPE_Q5_0, SP_TYPE_Q5_1, SP_TYPE_Q8_0, SP_TYPE_Q4_K, SP_TYPE_Q5_K,
                                        SP_TYPE_Q6_K};
    for (size_t i = 0; i < sizeof dq_types / sizeof dq_types[0] && !gh_dead; i++) {
        case_matmul_dq(blas, dq_types[i], 200, 512, 16, 64, false);   /* 4 blocks, the last of 8 rows */
        case_matmul_dq(blas, dq_types[i], 96, 768, 33, 96, true);     /* one block, y += */
    }

    struct { int n_q, pos0, h, hkv, d, win; float qs; int pad; } at[] = {
        {37, 0, 9, 3, 64, 0, 1.0f, 0},
        {100, 0, 9, 3, 64, 32, 1.0f, 0},
        {300, 0, 8, 2, 64, 32, 3.0f, 5},
        {64, 50, 4, 4, 128, 16, 1.0f, 0},
        {33, 0, 2, 1, 256, 8, 1.0f, 0},
        {5, 10, 4, 2, 80, 2, 1.0f, 1},
        {1, 20, 4, 1, 64, 1, 1.0f, 0},
        {513, 0, 9, 3, 64, 513, 1.0f, 0},
        {1, 0, 9, 3, 64, 0, 1.0f, 0},
        {1, 255, 9, 3, 64, 0, 1.0f, 0},
        {1, 999, 9, 3, 64, 0, 4.0f, 3},
        {1, 4095, 8, 2, 128, 0, 1.0f, 0},
        {1, 300, 2, 1, 256, 0, 1.0f, 0},
        {1, 10, 4, 2, 80, 0, 1.0f, 0},   /* decode head_dim 80: unsupported on the GPU */
    };
    for (size_t i = 0; i < sizeof at / sizeof at[0] && !gh_dead; i++)
        case_attention(at[i].n_q, at[i].pos0, at[i].h, at[i].hkv, at[i].d, at[i].win, at[i].qs, at[i].pad);

    if (!gh_dead) {
        case_argmax(10, 49152, 0);
        case_argmax(3, 1000, 5);
        case_argmax(2, 1, 0);
    }

    return gh_end(blas);
}
