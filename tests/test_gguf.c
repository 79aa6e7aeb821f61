/* test_gguf.c - the GGUF reader: the real default model (metadata, tensor table, data ranges, rows
 * dequantized against the gguf Python package) and hostile/broken files built in memory by a tiny
 * GGUF writer (tests/support/gguf_writer), each of which must be rejected with a message naming
 * what is wrong.
 */
#include <criterion/criterion.h>

#include "dequant.h"
#include "gguf.h"
#include "sp_error.h"
#include "support/gguf_writer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- tensor records for the GGUF writer ---- */

static void tinfo(gguf_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    gw_str(b, name);
    gw_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++)
        gw_u64(b, ne[i]);
    gw_u32(b, type);
    gw_u64(b, off);
}
/* Pad to the alignment, then n data bytes (a recognizable pattern). */
static void data(gguf_buf *b, size_t align, size_t n)
{
    gw_pad(b, align);
    for (size_t i = 0; i < n; i++) {
        uint8_t v = (uint8_t)(i * 7 + 1);
        gw_put(b, &v, 1);
    }
}

#define NAME "synthetic.gguf"

static sp_gguf_t *open_buf(const gguf_buf *b) { return sp_gguf_open_buffer(b->p, b->n, NAME); }

/* The file must be rejected and the message must name the file and contain every word given. */
static void expect_reject_words(gguf_buf *b, const char *const *words, size_t n_words)
{
    sp_error_clear();
    sp_gguf_t *g = open_buf(b);
    const char *msg = sp_last_error();
    cr_expect_null(g, "accepted a bad file (expected: %s)", words[0]);
    sp_gguf_close(g);
    cr_expect(strstr(msg, NAME) != NULL, "message does not name the file: %s", msg);
    for (size_t i = 0; i < n_words; i++)
        cr_expect(strstr(msg, words[i]) != NULL, "message lacks '%s': %s", words[i], msg);
    free(b->p);
    memset(b, 0, sizeof *b);
}
#define expect_reject(b, ...)                                                                              \
    do {                                                                                                   \
        const char *const w_[] = {__VA_ARGS__};                                                            \
        expect_reject_words((b), w_, sizeof w_ / sizeof w_[0]);                                            \
    } while (0)

/* A valid file: 11 keys of every kind, two tensors (F32 [4,2] at 0, Q8_0 [32] at 32). */
static void valid_file(gguf_buf *b)
{
    gw_header(b, 3, 2, 11);
    gw_kv_str(b, "general.architecture", "llama");
    gw_kv_u32(b, "test.u32", 7);
    gw_str(b, "test.f32"); gw_u32(b, SP_GGUF_FLOAT32); { float f = 1.5f; gw_put(b, &f, 4); }
    gw_str(b, "test.f64"); gw_u32(b, SP_GGUF_FLOAT64); { double d = 0.25; gw_put(b, &d, 8); }
    gw_str(b, "test.bool"); gw_u32(b, SP_GGUF_BOOL); gw_put(b, "\1", 1);
    gw_str(b, "test.i8"); gw_u32(b, SP_GGUF_INT8); gw_put(b, "\xfb", 1); /* -5 */
    gw_str(b, "test.u64"); gw_u32(b, SP_GGUF_UINT64); gw_u64(b, 1ull << 40);
    gw_str(b, "test.arr_i32"); gw_u32(b, SP_GGUF_ARRAY); gw_u32(b, SP_GGUF_INT32); gw_u64(b, 3);
    { int32_t v[3] = {1, -2, 3}; gw_put(b, v, sizeof v); }
    gw_str(b, "test.strs"); gw_u32(b, SP_GGUF_ARRAY); gw_u32(b, SP_GGUF_STRING); gw_u64(b, 3);
    gw_str(b, "a"); gw_str(b, ""); gw_str(b, "bcd");
    /* [[1u8, 2u8], ["x"]] : an array of arrays, walked but not exposed */
    gw_str(b, "test.nested"); gw_u32(b, SP_GGUF_ARRAY); gw_u32(b, SP_GGUF_ARRAY); gw_u64(b, 2);
    gw_u32(b, SP_GGUF_UINT8); gw_u64(b, 2); gw_put(b, "\1\2", 2);
    gw_u32(b, SP_GGUF_STRING); gw_u64(b, 1); gw_str(b, "x");
    gw_str(b, "test.f32s"); gw_u32(b, SP_GGUF_ARRAY); gw_u32(b, SP_GGUF_FLOAT32); gw_u64(b, 2);
    { float v[2] = {0.5f, -4.0f}; gw_put(b, v, sizeof v); }
    tinfo(b, "a", 2, (uint64_t[]){4, 2}, SP_TYPE_F32, 0);
    tinfo(b, "b", 1, (uint64_t[]){32}, SP_TYPE_Q8_0, 32);
    data(b, 32, 32 + 34);
}

/* ---- the valid synthetic file: getters ---- */

Test(gguf_synthetic, opens_and_exposes_everything)
{
    gguf_buf b = {0};
    valid_file(&b);
    sp_gguf_t *g = open_buf(&b);
    cr_assert_not_null(g, "%s", sp_last_error());
    cr_expect_eq(sp_gguf_version(g), 3);
    cr_expect_eq(sp_gguf_alignment(g), 32);
    cr_expect_eq(sp_gguf_file_size(g), b.n);
    cr_expect_str_eq(sp_gguf_path(g), NAME);
    cr_expect_eq(sp_gguf_n_kv(g), 11);
    cr_expect_eq(sp_gguf_n_tensors(g), 2);

    int64_t i = sp_gguf_find_key(g, "test.u32");
    cr_assert_eq(i, 1);
    sp_gguf_str k = sp_gguf_key_name(g, i);
    cr_expect(k.len == 8 && !memcmp(k.ptr, "test.u32", 8));
    cr_expect_eq(sp_gguf_kv_type(g, i), SP_GGUF_UINT32);
    cr_expect_eq(sp_gguf_find_key(g, "test.u3"), -1, "prefix is not a match");
    cr_expect_eq(sp_gguf_find_key(g, "nope"), -1);

    uint32_t u32;
    int64_t i64;
    float f;
    bool bo;
    sp_gguf_str s;
    cr_expect_eq(sp_gguf_get_u32(g, "test.u32", &u32), 0);
    cr_expect_eq(u32, 7);
    cr_expect_eq(sp_gguf_get_i64(g, "test.i8", &i64), 0);
    cr_expect_eq(i64, -5);
    cr_expect_eq(sp_gguf_get_i64(g, "test.u64", &i64), 0);
    cr_expect_eq(i64, 1ll << 40);
    cr_expect_eq(sp_gguf_get_f32(g, "test.f32", &f), 0);
    cr_expect_eq(f, 1.5f);
    cr_expect_eq(sp_gguf_get_f32(g, "test.f64", &f), 0, "f64 accepted as f32");
    cr_expect_eq(f, 0.25f);
    cr_expect_eq(sp_gguf_get_bool(g, "test.bool", &bo), 0);
    cr_expect(bo);
    cr_expect_eq(sp_gguf_get_str(g, "general.architecture", &s), 0);
    cr_expect(s.len == 5 && !memcmp(s.ptr, "llama", 5));

    /* wrong type -> -EINVAL naming the key; missing -> -ENOENT naming the key */
    cr_expect_eq(sp_gguf_get_u32(g, "general.architecture", &u32), -EINVAL);
    cr_expect(strstr(sp_last_error(), "general.architecture") && strstr(sp_last_error(), "string"),
              "%s", sp_last_error());
    cr_expect_eq(sp_gguf_get_u32(g, "test.i8", &u32), -EINVAL, "-5 does not fit in u32");
    cr_expect_eq(sp_gguf_get_u32(g, "test.u64", &u32), -EINVAL, "2^40 does not fit in u32");
    cr_expect_eq(sp_gguf_get_str(g, "test.u32", &s), -EINVAL);
    cr_expect_eq(sp_gguf_get_f32(g, "test.u32", &f), -EINVAL);
    cr_expect_eq(sp_gguf_get_bool(g, "test.u32", &bo), -EINVAL);
    cr_expect_eq(sp_gguf_get_i64(g, "test.f32", &i64), -EINVAL);
    cr_expect_eq(sp_gguf_get_u32(g, "llama.block_count", &u32), -ENOENT);
    cr_expect(strstr(sp_last_error(), "llama.block_count") != NULL, "%s", sp_last_error());
    cr_expect_eq(sp_gguf_get_arr(g, "test.u32", &(sp_gguf_vtype){0}, &(uint64_t){0}), -EINVAL);

    /* arrays */
    sp_gguf_vtype et;
    uint64_t n;
    cr_expect_eq(sp_gguf_get_arr(g, "test.arr_i32", &et, &n), 0);
    cr_expect(et == SP_GGUF_INT32 && n == 3);
    const uint8_t *raw = sp_gguf_arr_data(g, "test.arr_i32");
    cr_assert_not_null(raw);
    int32_t v1;
    memcpy(&v1, raw + 4, 4);
    cr_expect_eq(v1, -2);
    cr_expect_eq(sp_gguf_arr_i64(g, "test.arr_i32", 2, &i64), 0);
    cr_expect_eq(i64, 3);
    cr_expect_eq(sp_gguf_arr_i64(g, "test.arr_i32", 3, &i64), -ERANGE);
    cr_expect_eq(sp_gguf_arr_f32(g, "test.f32s", 1, &f), 0);
    cr_expect_eq(f, -4.0f);
    cr_expect_eq(sp_gguf_arr_f32(g, "test.arr_i32", 0, &f), -EINVAL);
    cr_expect_eq(sp_gguf_get_arr(g, "test.strs", &et, &n), 0);
    cr_expect(et == SP_GGUF_STRING && n == 3);
    cr_expect_null(sp_gguf_arr_data(g, "test.strs"), "string arrays have no flat data");
    cr_expect_eq(sp_gguf_arr_str(g, "test.strs", 2, &s), 0);
    cr_expect(s.len == 3 && !memcmp(s.ptr, "bcd", 3));
    cr_expect_eq(sp_gguf_arr_str(g, "test.strs", 1, &s), 0);
    cr_expect_eq(s.len, 0);
    cr_expect_eq(sp_gguf_arr_str(g, "test.strs", 3, &s), -ERANGE);
    cr_expect_eq(sp_gguf_arr_str(g, "test.arr_i32", 0, &s), -EINVAL);
    cr_expect_eq(sp_gguf_arr_str(g, "missing", 0, &s), -ENOENT);
    cr_expect_eq(sp_gguf_get_arr(g, "test.nested", &et, &n), 0);
    cr_expect(et == SP_GGUF_ARRAY && n == 2);
    cr_expect_null(sp_gguf_arr_data(g, "test.nested"));
    cr_expect_eq(sp_gguf_arr_str(g, "test.nested", 0, &s), -EINVAL);

    /* kv_to_string */
    char txt[64];
    const struct { const char *key, *want; } strs[] = {
        {"test.u32", "7"}, {"test.i8", "-5"}, {"test.f32", "1.5"}, {"test.f64", "0.25"}, {"test.bool", "true"},
        {"general.architecture", "llama"}, {"test.arr_i32", "[i32; 3]"}, {"test.strs", "[string; 3]"},
        {"test.nested", "[array; 2]"}, {"test.u64", "1099511627776"},
    };
    for (size_t j = 0; j < sizeof strs / sizeof strs[0]; j++) {
        cr_expect_eq(sp_gguf_kv_to_string(g, sp_gguf_find_key(g, strs[j].key), txt, sizeof txt), 0);
        cr_expect_str_eq(txt, strs[j].want, "%s", strs[j].key);
    }
    cr_expect_eq(sp_gguf_kv_to_string(g, sp_gguf_find_key(g, "general.architecture"), txt, 4), -ERANGE);
    cr_expect_str_eq(txt, "lla", "truncated but terminated");
    cr_expect_eq(sp_gguf_kv_to_string(g, 99, txt, sizeof txt), -EINVAL);

    /* tensors */
    const sp_gguf_tensor *a = sp_gguf_find_tensor(g, "a"), *bt = sp_gguf_find_tensor(g, "b");
    cr_assert(a && bt);
    cr_expect_null(sp_gguf_find_tensor(g, "c"));
    cr_expect_eq(sp_gguf_tensor_at(g, 0), a);
    cr_expect_null(sp_gguf_tensor_at(g, 2));
    cr_expect(a->type == SP_TYPE_F32 && a->n_dims == 2 && a->ne[0] == 4 && a->ne[1] == 2 && a->ne[2] == 1 &&
              a->ne[3] == 1);
    cr_expect_eq(a->nbytes, 32);
    cr_expect_eq(bt->nbytes, 34);
    size_t doff = sp_gguf_data_offset(g);
    cr_expect_eq(doff % 32, 0);
    cr_expect_eq((const uint8_t *)a->data, b.p + doff);
    cr_expect_eq((const uint8_t *)bt->data, b.p + doff + 32);
    cr_expect_eq(((const uint8_t *)bt->data)[0], (uint8_t)(32 * 7 + 1), "data pattern");
    sp_gguf_close(g);
    sp_gguf_close(NULL);
    free(b.p);
}

Test(gguf_synthetic, version2_alignment_and_known_unsupported_type)
{
    gguf_buf b = {0};
    gw_header(&b, 2, 2, 1);
    gw_kv_u32(&b, "general.alignment", 64);
    tinfo(&b, "q2k", 1, (uint64_t[]){256}, 10 /* Q2_K: ggml knows it, dequant does not */, 0);
    tinfo(&b, "f", 1, (uint64_t[]){3}, SP_TYPE_F16, 128);
    data(&b, 64, 128 + 6);
    sp_gguf_t *g = open_buf(&b);
    cr_assert_not_null(g, "%s", sp_last_error());
    cr_expect_eq(sp_gguf_version(g), 2);
    cr_expect_eq(sp_gguf_alignment(g), 64);
    cr_expect_eq(sp_gguf_data_offset(g) % 64, 0);
    const sp_gguf_tensor *t = sp_gguf_find_tensor(g, "q2k");
    cr_assert_not_null(t);
    cr_expect_eq(t->type, 10);
    cr_expect_eq(t->nbytes, 84);
    cr_expect_str_eq(sp_ggml_type_name(t->type), "Q2_K");
    cr_expect_not(sp_dequant_supported(t->type));
    cr_expect_eq(sp_gguf_find_tensor(g, "f")->nbytes, 6);
    sp_gguf_close(g);
    free(b.p);
}

Test(gguf_synthetic, empty_model_without_tensors_or_keys)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 0);
    sp_gguf_t *g = open_buf(&b);
    cr_assert_not_null(g, "%s", sp_last_error());
    cr_expect_eq(sp_gguf_n_kv(g), 0);
    cr_expect_eq(sp_gguf_n_tensors(g), 0);
    cr_expect_eq(sp_gguf_find_key(g, "x"), -1);
    cr_expect_null(sp_gguf_find_tensor(g, "x"));
    sp_gguf_close(g);
    free(b.p);
}

/* ---- rejected files ---- */

Test(gguf_reject, missing_file)
{
    sp_error_clear();
    cr_expect_null(sp_gguf_open("/nonexistent/dir/model.gguf"));
    cr_expect(strstr(sp_last_error(), "/nonexistent/dir/model.gguf") && strstr(sp_last_error(), "No such file"),
              "%s", sp_last_error());
}

Test(gguf_reject, empty_file_and_directory)
{
    char path[] = "/tmp/spindle_gguf_empty_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    close(fd);
    sp_error_clear();
    cr_expect_null(sp_gguf_open(path));
    cr_expect(strstr(sp_last_error(), path) && strstr(sp_last_error(), "empty file"), "%s", sp_last_error());
    unlink(path);
    cr_expect_null(sp_gguf_open("/tmp"));
    cr_expect(strstr(sp_last_error(), "not a regular file"), "%s", sp_last_error());
    gguf_buf b = {0};
    gw_put(&b, "", 0);
    expect_reject(&b, "empty file");
}

Test(gguf_reject, wrong_magic)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 0);
    memcpy(b.p, "GGML", 4);
    expect_reject(&b, "not a GGUF file", "magic", "47474d4c");
    gw_put(&b, "GG", 2);
    expect_reject(&b, "not a GGUF file");
}

Test(gguf_reject, unsupported_version)
{
    gguf_buf b = {0};
    gw_header(&b, 1, 0, 0);
    expect_reject(&b, "unsupported GGUF version 1");
    gw_header(&b, 4, 0, 0);
    expect_reject(&b, "unsupported GGUF version 4");
    gw_header(&b, 3u << 24, 0, 0); /* a big-endian v3 file */
    expect_reject(&b, "unsupported GGUF version 50331648", "big-endian");
}

Test(gguf_reject, truncated_header)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 0);
    b.n = 4 + 4 + 8 + 3; /* key count cut short */
    expect_reject(&b, "truncated header (key count)");
    gw_put(&b, "GGUF\3", 5);
    expect_reject(&b, "truncated header (version)");
}

Test(gguf_reject, truncated_key_string)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_u64(&b, 20);
    gw_put(&b, "gener", 5);
    expect_reject(&b, "key #0 name", "string length 20", "truncated");
}

Test(gguf_reject, absurd_key_count)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1ull << 60);
    gw_kv_u32(&b, "a", 1);
    expect_reject(&b, "key count 1152921504606846976");
    gw_header(&b, 3, 0, 3); /* plausible but not present */
    gw_kv_u32(&b, "a", 1);
    expect_reject(&b, "key count 3");
}

Test(gguf_reject, absurd_string_length)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "general.name");
    gw_u32(&b, SP_GGUF_STRING);
    gw_u64(&b, 1ull << 63);
    gw_put(&b, "abcdefgh", 8);
    expect_reject(&b, "general.name", "string length 9223372036854775808");
    /* the same inside a string array */
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "tokens");
    gw_u32(&b, SP_GGUF_ARRAY); gw_u32(&b, SP_GGUF_STRING); gw_u64(&b, 2);
    gw_str(&b, "ok");
    gw_u64(&b, UINT64_MAX);
    gw_put(&b, "xx", 2);
    expect_reject(&b, "key 'tokens' element 1", "string length 18446744073709551615");
    /* array counts that cannot fit */
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "scores");
    gw_u32(&b, SP_GGUF_ARRAY); gw_u32(&b, SP_GGUF_FLOAT32); gw_u64(&b, 1ull << 62);
    gw_put(&b, "xxxxxxxx", 8);
    expect_reject(&b, "scores", "array length 4611686018427387904");
}

Test(gguf_reject, unknown_value_type)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "weird");
    gw_u32(&b, 13);
    gw_u32(&b, 0);
    expect_reject(&b, "weird", "unknown value type 13");
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "weird_arr");
    gw_u32(&b, SP_GGUF_ARRAY); gw_u32(&b, 77); gw_u64(&b, 1); gw_u32(&b, 0);
    expect_reject(&b, "weird_arr", "unknown value type 77");
}

Test(gguf_reject, nested_arrays_too_deep)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "deep");
    gw_u32(&b, SP_GGUF_ARRAY);
    for (int i = 0; i < 100; i++) {
        gw_u32(&b, SP_GGUF_ARRAY);
        gw_u64(&b, 1);
    }
    gw_u32(&b, SP_GGUF_UINT8); gw_u64(&b, 0);
    expect_reject(&b, "deep", "nested deeper");
}

Test(gguf_reject, duplicate_key)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 2);
    gw_kv_u32(&b, "llama.block_count", 30);
    gw_kv_u32(&b, "llama.block_count", 31);
    expect_reject(&b, "duplicate key 'llama.block_count'");
}

Test(gguf_reject, truncated_tensor_table)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    gw_str(&b, "a");
    gw_u32(&b, 1);
    expect_reject(&b, "tensor count 1", "truncated tensor table");
    /* count plausible, second entry cut inside its offset field */
    gw_header(&b, 3, 2, 0);
    tinfo(&b, "a", 1, (uint64_t[]){4}, SP_TYPE_F32, 0);
    tinfo(&b, "b", 1, (uint64_t[]){4}, SP_TYPE_F32, 32);
    b.n -= 2;
    expect_reject(&b, "truncated tensor offset");
}

Test(gguf_reject, bad_alignment)
{
    const uint32_t bad[] = {0, 48, 3};
    for (size_t i = 0; i < 3; i++) {
        gguf_buf b = {0};
        char want[64];
        gw_header(&b, 3, 0, 1);
        gw_kv_u32(&b, "general.alignment", bad[i]);
        snprintf(want, sizeof want, "general.alignment = %u is not a power of two", bad[i]);
        expect_reject(&b, want);
    }
    gguf_buf b = {0};
    gw_header(&b, 3, 0, 1);
    gw_str(&b, "general.alignment"); gw_u32(&b, SP_GGUF_UINT64); gw_u64(&b, 32);
    expect_reject(&b, "general.alignment has type u64");
}

Test(gguf_reject, misaligned_tensor_offset)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "blk.0.attn_q.weight", 1, (uint64_t[]){4}, SP_TYPE_F32, 4);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'blk.0.attn_q.weight'", "data offset 4 is not aligned to 32");
}

Test(gguf_reject, tensor_data_beyond_file)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "blk.3.attn_q.weight", 2, (uint64_t[]){32, 4}, SP_TYPE_Q8_0, 32);
    data(&b, 32, 100);
    expect_reject(&b, "tensor 'blk.3.attn_q.weight' data [", "lies outside the file (size");
    /* offset near 2^64: the range sum must not wrap around */
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "t", 1, (uint64_t[]){8}, SP_TYPE_F32, UINT64_MAX - 31);
    data(&b, 32, 32);
    expect_reject(&b, "tensor 't'", "outside the file");
    /* no data section at all */
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "t", 1, (uint64_t[]){8}, SP_TYPE_F32, 0);
    expect_reject(&b, "tensor 't'", "outside the file");
}

Test(gguf_reject, n_dims_0_and_5)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "t", 0, NULL, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 't'", "n_dims = 0");
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "t", 5, (uint64_t[]){1, 1, 1, 1, 1}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 't'", "n_dims = 5");
}

Test(gguf_reject, bad_dims)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "big", 3, (uint64_t[]){1ull << 32, 1ull << 31, 4}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'big'", "overflow");
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "huge", 1, (uint64_t[]){1ull << 63}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'huge'", "dimension 0 = 9223372036854775808");
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "zero", 2, (uint64_t[]){4, 0}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'zero'", "dimension 1 = 0");
    /* element count fits in int64 but F32 bytes overflow 64 bits */
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "bytes", 1, (uint64_t[]){(1ull << 62) + 8}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'bytes'");
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "odd", 1, (uint64_t[]){33}, SP_TYPE_Q4_1, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'odd'", "not a multiple of the Q4_1 block size");
}

Test(gguf_reject, unknown_tensor_type)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "mystery", 1, (uint64_t[]){32}, 99, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor 'mystery'", "unknown tensor type 99");
}

Test(gguf_reject, duplicate_tensor_name)
{
    gguf_buf b = {0};
    gw_header(&b, 3, 2, 0);
    tinfo(&b, "output_norm.weight", 1, (uint64_t[]){8}, SP_TYPE_F32, 0);
    tinfo(&b, "output_norm.weight", 1, (uint64_t[]){8}, SP_TYPE_F32, 32);
    data(&b, 32, 64);
    expect_reject(&b, "duplicate tensor name 'output_norm.weight'");
}

Test(gguf_reject, bad_tensor_names)
{
    gguf_buf b = {0};
    char longname[200];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    gw_header(&b, 3, 1, 0);
    tinfo(&b, longname, 1, (uint64_t[]){8}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor #0", "name length 199");
    gw_header(&b, 3, 1, 0);
    tinfo(&b, "", 1, (uint64_t[]){8}, SP_TYPE_F32, 0);
    data(&b, 32, 64);
    expect_reject(&b, "tensor #0", "name length 0");
}

/* Every proper prefix of a valid file must be rejected (and must not crash or leak). */
Test(gguf_reject, every_truncation_of_a_valid_file)
{
    gguf_buf b = {0};
    valid_file(&b);
    size_t full = b.n;
    for (size_t n = 0; n < full; n++) {
        sp_gguf_t *g = sp_gguf_open_buffer(b.p, n, NAME);
        cr_expect_null(g, "prefix of %zu of %zu bytes accepted", n, full);
        sp_gguf_close(g);
    }
    free(b.p);
}

/* ---- the real default model ---- */

static sp_gguf_t *open_model(void)
{
    const char *path = getenv("SPINDLE_MODEL");
    if (!path)
        cr_skip_test("SPINDLE_MODEL is not set (ctest sets it)");
    sp_gguf_t *g = sp_gguf_open(path);
    cr_assert_not_null(g, "%s", sp_last_error());
    return g;
}

Test(gguf_model, metadata)
{
    sp_gguf_t *g = open_model();
    sp_gguf_str s;
    uint32_t u;
    float f;
    cr_expect_eq(sp_gguf_version(g), 3);
    cr_expect_eq(sp_gguf_alignment(g), 32);
    cr_assert_eq(sp_gguf_get_str(g, "general.architecture", &s), 0);
    cr_expect(s.len == 5 && !memcmp(s.ptr, "llama", 5));
    const struct { const char *key; uint32_t want; } u32s[] = {
        {"llama.block_count", 30},          {"llama.embedding_length", 576},
        {"llama.attention.head_count", 9},  {"llama.attention.head_count_kv", 3},
        {"llama.context_length", 8192},     {"llama.feed_forward_length", 1536},
        {"llama.vocab_size", 49152},        {"llama.rope.dimension_count", 64},
    };
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
        cr_expect_eq(sp_gguf_get_u32(g, u32s[i].key, &u), 0, "%s", sp_last_error());
        cr_expect_eq(u, u32s[i].want, "%s = %u", u32s[i].key, u);
    }
    cr_expect_eq(sp_gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    cr_expect_eq(f, 100000.0f);
    cr_expect_eq(sp_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    cr_expect_float_eq(f, 1e-5f, 1e-12f);

    sp_gguf_vtype et;
    uint64_t n;
    cr_expect_eq(sp_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), 0);
    cr_expect(et == SP_GGUF_STRING && n == 49152);
    cr_expect_eq(sp_gguf_arr_str(g, "tokenizer.ggml.tokens", 0, &s), 0);
    cr_expect(s.len == 13 && !memcmp(s.ptr, "<|endoftext|>", 13), "token 0 = %.*s", (int)s.len, s.ptr);
    cr_expect_eq(sp_gguf_arr_str(g, "tokenizer.ggml.tokens", 49151, &s), 0);
    cr_expect_eq(sp_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &n), 0);
    cr_expect(et == SP_GGUF_STRING && n == 48900);
    int64_t tt;
    cr_expect_eq(sp_gguf_arr_i64(g, "tokenizer.ggml.token_type", 0, &tt), 0);
    char txt[32];
    cr_expect_eq(sp_gguf_kv_to_string(g, sp_gguf_find_key(g, "tokenizer.ggml.tokens"), txt, sizeof txt), 0);
    cr_expect_str_eq(txt, "[string; 49152]");
    sp_gguf_close(g);
}

Test(gguf_model, tensor_table)
{
    sp_gguf_t *g = open_model();
    cr_assert_eq(sp_gguf_n_tensors(g), 272);
    int n_q41 = 0, n_f32 = 0, n_q80 = 0;
    const sp_gguf_tensor *t0 = sp_gguf_tensor_at(g, 0);
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++) {
        const sp_gguf_tensor *t = sp_gguf_tensor_at(g, i);
        n_q41 += t->type == SP_TYPE_Q4_1;
        n_f32 += t->type == SP_TYPE_F32;
        n_q80 += t->type == SP_TYPE_Q8_0;
        /* data range inside the file, pointers consistent with offsets */
        cr_expect(sp_gguf_data_offset(g) + t->offset + t->nbytes <= sp_gguf_file_size(g), "%s", t->name);
        cr_expect_eq((const uint8_t *)t->data - (const uint8_t *)t0->data, (ptrdiff_t)(t->offset - t0->offset));
        cr_expect_eq(t->offset % 32, 0);
        int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        cr_expect_eq(t->nbytes, sp_type_row_bytes(t->type, t->ne[0]) * (uint64_t)(nel / t->ne[0]), "%s", t->name);
        if (strstr(t->name, "_norm.weight"))
            cr_expect_eq(t->type, SP_TYPE_F32, "%s is %s", t->name, sp_ggml_type_name(t->type));
        cr_expect_eq(sp_gguf_find_tensor(g, t->name), t);
    }
    cr_expect_eq(n_q41, 210);
    cr_expect_eq(n_f32, 61);
    cr_expect_eq(n_q80, 1);
    const sp_gguf_tensor *e = sp_gguf_find_tensor(g, "token_embd.weight");
    cr_assert_not_null(e);
    cr_expect_eq(e->type, SP_TYPE_Q8_0);
    cr_expect(e->n_dims == 2 && e->ne[0] == 576 && e->ne[1] == 49152);
    const sp_gguf_tensor *q = sp_gguf_find_tensor(g, "blk.17.attn_q.weight");
    cr_assert_not_null(q);
    cr_expect_eq(q->type, SP_TYPE_Q4_1);
    cr_expect(q->ne[0] == 576 && q->ne[1] == 576);
    const sp_gguf_tensor *k = sp_gguf_find_tensor(g, "blk.0.attn_k.weight");
    cr_assert_not_null(k);
    cr_expect(k->ne[0] == 576 && k->ne[1] == 192);
    cr_expect_eq(sp_gguf_find_tensor(g, "output_norm.weight")->type, SP_TYPE_F32);
    cr_expect_null(sp_gguf_find_tensor(g, "output.weight"), "tied embeddings");
    /* the last tensor ends at the end of the file (no trailing garbage, no short file) */
    const sp_gguf_tensor *last = NULL;
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++)
        if (!last || sp_gguf_tensor_at(g, i)->offset > last->offset)
            last = sp_gguf_tensor_at(g, i);
    cr_expect_eq(sp_gguf_data_offset(g) + last->offset + last->nbytes, sp_gguf_file_size(g));
    sp_gguf_close(g);
}

/* Rows of real tensors, dequantized by gguf-py (tests/fixtures/dequant/model_rows.bin). */
Test(gguf_model, rows_match_gguf_python)
{
    sp_gguf_t *g = open_model();
    const char *dir = getenv("SPINDLE_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/dequant/model_rows.bin", dir ? dir : "tests/fixtures");
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    char magic[4];
    uint32_t ver, n_rec;
    cr_assert(fread(magic, 1, 4, f) == 4 && !memcmp(magic, "SPMR", 4));
    cr_assert(fread(&ver, 4, 1, f) == 1 && ver == 1);
    cr_assert(fread(&n_rec, 4, 1, f) == 1 && n_rec > 0);
    for (uint32_t r = 0; r < n_rec; r++) {
        uint32_t len, type, n;
        uint64_t row;
        char name[128] = {0};
        cr_assert(fread(&len, 4, 1, f) == 1 && len < sizeof name);
        cr_assert(fread(name, 1, len, f) == len);
        cr_assert(fread(&type, 4, 1, f) == 1 && fread(&row, 8, 1, f) == 1 && fread(&n, 4, 1, f) == 1);
        float *want = malloc(n * sizeof(float)), *got = malloc(n * sizeof(float));
        cr_assert(want && got && fread(want, 4, n, f) == n);
        const sp_gguf_tensor *t = sp_gguf_find_tensor(g, name);
        cr_assert_not_null(t, "%s", name);
        cr_expect_eq(t->type, type, "%s", name);
        cr_assert_eq((int64_t)n, t->ne[0]);
        size_t rb = sp_type_row_bytes(t->type, t->ne[0]);
        cr_assert_eq(sp_dequant(t->type, (const uint8_t *)t->data + row * rb, got, n), 0, "%s", sp_last_error());
        cr_expect_eq(memcmp(got, want, n * sizeof(float)), 0, "%s row %llu differs from gguf-py", name,
                     (unsigned long long)row);
        free(want);
        free(got);
    }
    fclose(f);
    sp_gguf_close(g);
}

/* Open + dequantize every tensor; all values must be finite. Logs the time (not gated). */
Test(gguf_model, dequantize_all_tensors, .timeout = 300)
{
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sp_gguf_t *g = open_model();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int64_t max_el = 0, total = 0;
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++) {
        const sp_gguf_tensor *t = sp_gguf_tensor_at(g, i);
        int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        if (nel > max_el)
            max_el = nel;
    }
    float *out = malloc((size_t)max_el * sizeof(float));
    cr_assert_not_null(out);
    size_t nonfinite = 0;
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++) {
        const sp_gguf_tensor *t = sp_gguf_tensor_at(g, i);
        int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        cr_assert_eq(sp_dequant(t->type, t->data, out, nel), 0, "%s: %s", t->name, sp_last_error());
        for (int64_t j = 0; j < nel; j++)
            nonfinite += !isfinite(out[j]);
        total += nel;
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    cr_expect_eq(nonfinite, 0);
    cr_expect_eq(total, 134515008, "parameter count of SmolLM2-135M (embedding counted once)");
    double open_ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    double all_ms = (t2.tv_sec - t0.tv_sec) * 1e3 + (t2.tv_nsec - t0.tv_nsec) / 1e6;
    cr_log_info("open %.2f ms; open + dequantize %lld elements (+ finiteness scan) %.1f ms", open_ms,
                (long long)total, all_ms);
    free(out);
    sp_gguf_close(g);
}
