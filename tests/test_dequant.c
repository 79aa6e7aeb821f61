/* test_dequant.c - cpu/dequant.c against the `gguf` Python package's dequantizer.
 *
 * Fixtures (tests/fixtures/dequant/<TYPE>.bin, format in scripts/make_dequant_fixtures.py) hold raw
 * ggml blocks and the fp32 values gguf.quants.dequantize returned for them. Both sp_dequant (SIMD
 * paths where present) and sp_dequant_ref (scalar) must reproduce them bit for bit; NaNs only need
 * to agree on being NaN. Block sizes are checked against the sizes recorded from gguf's table.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "dequant.h"
#include "gguf.h"
#include "sp_error.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fixture {
    uint32_t type, n_blocks, block_elems, block_bytes;
    uint8_t *raw;    /* [n_blocks * block_bytes] */
    float *expected; /* [n_blocks * block_elems] */
};

static void load_fixture(const char *type_name, struct fixture *fx)
{
    const char *dir = getenv("SPINDLE_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/dequant/%s.bin", dir ? dir : "tests/fixtures", type_name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open fixture %s (set SPINDLE_FIXTURES)", path);
    char magic[4];
    uint32_t hdr[5];
    cr_assert_eq(fread(magic, 1, 4, f), 4);
    cr_assert_eq(memcmp(magic, "SPDQ", 4), 0, "%s: bad magic", path);
    cr_assert_eq(fread(hdr, 4, 5, f), 5);
    cr_assert_eq(hdr[0], 1, "%s: fixture version %u", path, hdr[0]);
    fx->type = hdr[1];
    fx->n_blocks = hdr[2];
    fx->block_elems = hdr[3];
    fx->block_bytes = hdr[4];
    cr_assert(fx->n_blocks > 0 && fx->n_blocks < 100000);
    size_t nraw = (size_t)fx->n_blocks * fx->block_bytes, nel = (size_t)fx->n_blocks * fx->block_elems;
    fx->raw = malloc(nraw);
    fx->expected = malloc(nel * sizeof(float));
    cr_assert(fx->raw && fx->expected);
    cr_assert_eq(fread(fx->raw, 1, nraw, f), nraw, "%s: truncated", path);
    cr_assert_eq(fread(fx->expected, sizeof(float), nel, f), nel, "%s: truncated", path);
    cr_assert_eq(fgetc(f), EOF, "%s: trailing bytes", path);
    fclose(f);
}

/* Bit-exact comparison, NaN-aware (any NaN matches any NaN); prints the first few mismatches. */
static size_t count_mismatches(const char *what, const float *got, const float *want, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i]))
            continue;
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            if (bad < 5)
                cr_log_error("%s: element %zu: got %.9g, expected %.9g", what, i, (double)got[i], (double)want[i]);
            bad++;
        }
    }
    return bad;
}

/* Criterion copies parameters into the test process: keep them free of pointers. */
struct case_param {
    char name[8];
    uint32_t type;
};

static struct case_param cases[] = {
    {"F32", SP_TYPE_F32},   {"F16", SP_TYPE_F16},   {"BF16", SP_TYPE_BF16}, {"Q4_0", SP_TYPE_Q4_0},
    {"Q4_1", SP_TYPE_Q4_1}, {"Q5_0", SP_TYPE_Q5_0}, {"Q5_1", SP_TYPE_Q5_1}, {"Q8_0", SP_TYPE_Q8_0},
    {"Q4_K", SP_TYPE_Q4_K}, {"Q5_K", SP_TYPE_Q5_K}, {"Q6_K", SP_TYPE_Q6_K},
};

ParameterizedTestParameters(dequant, matches_gguf_python)
{
    return cr_make_param_array(struct case_param, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct case_param *p, dequant, matches_gguf_python)
{
    struct fixture fx;
    load_fixture(p->name, &fx);
    cr_assert_eq(fx.type, p->type, "%s: fixture holds type %u", p->name, fx.type);
    cr_assert(sp_dequant_supported(p->type));
    /* block geometry must agree with the gguf package's GGML_QUANT_SIZES */
    cr_assert_eq(sp_type_block_elems(p->type), (int64_t)fx.block_elems, "%s block elems", p->name);
    cr_assert_eq(sp_type_block_bytes(p->type), (size_t)fx.block_bytes, "%s block bytes", p->name);
    cr_assert_str_eq(sp_ggml_type_name(p->type), p->name);

    int64_t n = (int64_t)fx.n_blocks * fx.block_elems;
    cr_assert_eq(sp_type_row_bytes(p->type, n), (size_t)fx.n_blocks * fx.block_bytes);
    /* guard elements after the output catch writes past n */
    float *out = malloc(((size_t)n + 16) * sizeof(float));
    cr_assert_not_null(out);
    int (*fns[2])(uint32_t, const void *, float *, int64_t) = {sp_dequant, sp_dequant_ref};
    const char *fn_names[2] = {"sp_dequant", "sp_dequant_ref"};
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < 16; j++)
            out[n + j] = -12345.0f;
        memset(out, 0xA5, (size_t)n * sizeof(float));
        cr_assert_eq(fns[k](p->type, fx.raw, out, n), 0, "%s %s: %s", fn_names[k], p->name, sp_last_error());
        char what[64];
        snprintf(what, sizeof what, "%s %s", fn_names[k], p->name);
        size_t bad = count_mismatches(what, out, fx.expected, (size_t)n);
        cr_expect_eq(bad, 0, "%s: %zu of %lld elements differ from gguf.quants", what, bad, (long long)n);
        for (int j = 0; j < 16; j++)
            cr_assert_eq(out[n + j], -12345.0f, "%s wrote past the end", what);
    }
    /* one block at an odd address: GGUF blocks are only byte-aligned */
    uint8_t *shifted = malloc(fx.block_bytes + 1);
    cr_assert_not_null(shifted);
    memcpy(shifted + 1, fx.raw + (size_t)(fx.n_blocks - 1) * fx.block_bytes, fx.block_bytes);
    cr_assert_eq(sp_dequant(p->type, shifted + 1, out, fx.block_elems), 0);
    cr_expect_eq(count_mismatches("unaligned block", out,
                                  fx.expected + (size_t)(fx.n_blocks - 1) * fx.block_elems, fx.block_elems), 0);
    free(shifted);
    free(out);
    free(fx.raw);
    free(fx.expected);
}

Test(dequant, block_sizes_of_ggml)
{
    /* ggml-common.h sizes, independent of the fixtures */
    const struct { uint32_t t; int64_t e; size_t b; } want[] = {
        {SP_TYPE_F32, 1, 4},      {SP_TYPE_F16, 1, 2},      {SP_TYPE_BF16, 1, 2},     {SP_TYPE_Q4_0, 32, 18},
        {SP_TYPE_Q4_1, 32, 20},   {SP_TYPE_Q5_0, 32, 22},   {SP_TYPE_Q5_1, 32, 24},   {SP_TYPE_Q8_0, 32, 34},
        {SP_TYPE_Q4_K, 256, 144}, {SP_TYPE_Q5_K, 256, 176}, {SP_TYPE_Q6_K, 256, 210},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_expect_eq(sp_type_block_elems(want[i].t), want[i].e, "type %u", want[i].t);
        cr_expect_eq(sp_type_block_bytes(want[i].t), want[i].b, "type %u", want[i].t);
    }
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q4_1, 576), 18 * 20);
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q6_K, 512), 2 * 210);
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_F16, 7), 14);
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q4_1, 33), 0, "not a multiple of the block");
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q4_K, 128), 0, "not a multiple of the block");
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q8_0, -32), 0, "negative");
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_F32, INT64_MAX), 0, "size_t overflow");
    cr_expect_eq(sp_type_row_bytes(SP_TYPE_Q8_0, INT64_MAX - 31), (size_t)(INT64_MAX / 32) * 34, "largest Q8_0 row");
    cr_expect_eq(sp_type_row_bytes(10 /* Q2_K */, 256), 0, "unsupported");
}

Test(dequant, unsupported_types_rejected)
{
    const uint32_t bad[] = {10 /* Q2_K */, 11 /* Q3_K */, 9 /* Q8_1 */, 20 /* IQ4_NL */, 4 /* removed */, 999};
    uint8_t src[512] = {0};
    float dst[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sp_error_clear();
        cr_expect_not(sp_dequant_supported(bad[i]));
        cr_expect_eq(sp_type_block_elems(bad[i]), 0);
        cr_expect_eq(sp_type_block_bytes(bad[i]), 0);
        cr_expect_eq(sp_dequant(bad[i], src, dst, 256), -EINVAL, "type %u", bad[i]);
        cr_expect(strstr(sp_last_error(), "unsupported tensor type") != NULL, "message: %s", sp_last_error());
    }
    sp_dequant(10, src, dst, 256);
    cr_expect(strstr(sp_last_error(), "Q2_K") != NULL, "names the type: %s", sp_last_error());
}

Test(dequant, bad_element_counts)
{
    uint8_t src[64] = {0};
    float dst[64];
    cr_expect_eq(sp_dequant(SP_TYPE_Q4_1, src, dst, 31), -EINVAL);
    cr_expect(strstr(sp_last_error(), "multiple") != NULL, "message: %s", sp_last_error());
    cr_expect_eq(sp_dequant(SP_TYPE_Q8_0, src, dst, -32), -EINVAL);
    cr_expect_eq(sp_dequant(SP_TYPE_Q8_0, src, dst, 0), 0, "zero elements is a no-op");
    cr_expect_eq(sp_dequant(SP_TYPE_F32, NULL, dst, 4), -EINVAL);
}

Test(dequant, q4_1_hand_computed)
{
    /* d = 0.5, m = -1: element j holds nibble q, value q*0.5 - 1 */
    uint8_t blk[20];
    uint16_t d = 0x3800 /* 0.5 */, m = 0xBC00 /* -1 */;
    memcpy(blk, &d, 2);
    memcpy(blk + 2, &m, 2);
    for (int j = 0; j < 16; j++)
        blk[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    float y[32];
    cr_assert_eq(sp_dequant(SP_TYPE_Q4_1, blk, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        cr_expect_eq(y[j], j * 0.5f - 1.0f, "low nibble %d", j);
        cr_expect_eq(y[j + 16], (15 - j) * 0.5f - 1.0f, "high nibble %d", j);
    }
}
