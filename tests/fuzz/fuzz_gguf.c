/* fuzz_gguf.c - libFuzzer target for the GGUF reader: open arbitrary bytes, then exercise every
 * getter on every key and every tensor (touching each tensor's first and last data byte and
 * dequantizing small ones), so ASan/UBSan see any read the validation let through.
 * Seeds: tests/fuzz/corpus/gguf (scripts/make_dequant_fixtures.py --fuzz-corpus regenerates them).
 */
#include "dequant.h"
#include "gguf.h"
#include "sp_error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static volatile uint64_t sink; /* keeps the reads from being optimized away */

static void walk_key(const sp_gguf_t *g, int64_t i)
{
    char key[256], txt[128];
    sp_gguf_str name = sp_gguf_key_name(g, i);
    sp_gguf_kv_to_string(g, i, txt, sizeof txt);
    sp_gguf_kv_to_string(g, i, txt, 3); /* the truncating path */
    /* getters take NUL-terminated names: only keys without NUL fit that */
    if (name.len >= sizeof key || memchr(name.ptr, '\0', name.len))
        return;
    memcpy(key, name.ptr, name.len);
    key[name.len] = '\0';
    if (sp_gguf_find_key(g, key) != i)
        abort(); /* a key that is present must be found, at its own index */
    uint32_t u32;
    int64_t i64;
    float f;
    bool b;
    sp_gguf_str s;
    sp_gguf_get_u32(g, key, &u32);
    sp_gguf_get_i64(g, key, &i64);
    sp_gguf_get_f32(g, key, &f);
    sp_gguf_get_bool(g, key, &b);
    if (sp_gguf_get_str(g, key, &s) == 0 && s.len)
        sink += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
    sp_gguf_vtype et;
    uint64_t n;
    if (sp_gguf_get_arr(g, key, &et, &n) != 0 || n == 0)
        return;
    const uint64_t idx[3] = {0, n / 2, n - 1};
    for (int k = 0; k < 3; k++) {
        if (sp_gguf_arr_str(g, key, idx[k], &s) == 0 && s.len)
            sink += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
        if (sp_gguf_arr_i64(g, key, idx[k], &i64) == 0)
            sink += (uint64_t)i64;
        if (sp_gguf_arr_f32(g, key, idx[k], &f) == 0)
            sink += f != f;
    }
    sp_gguf_arr_str(g, key, n, &s); /* out of range */
    const uint8_t *p = sp_gguf_arr_data(g, key);
    if (p)
        sink += p[0];
}

static void walk_tensor(const sp_gguf_t *g, int64_t i)
{
    static float out[1 << 16];
    const sp_gguf_tensor *t = sp_gguf_tensor_at(g, i);
    if (!t || sp_gguf_find_tensor(g, t->name) != t)
        abort(); /* names are unique, so lookup must return this tensor */
    if (t->nbytes) {
        const uint8_t *d = t->data;
        sink += d[0] + d[t->nbytes - 1];
    }
    int64_t nel = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    if (sp_dequant_supported(t->type) && nel <= (int64_t)(sizeof out / sizeof out[0]))
        if (sp_dequant(t->type, t->data, out, nel) == 0 && nel)
            sink += out[nel - 1] != out[nel - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sp_gguf_t *g = sp_gguf_open_buffer(data, size, "fuzz.gguf");
    if (!g) {
        sink += strlen(sp_last_error()); /* every rejection must leave a message */
        return 0;
    }
    sink += sp_gguf_version(g) + sp_gguf_alignment(g) + sp_gguf_file_size(g) + sp_gguf_data_offset(g);
    sp_gguf_find_key(g, "general.architecture");
    sp_gguf_find_tensor(g, "token_embd.weight");
    for (int64_t i = 0; i < sp_gguf_n_kv(g); i++)
        walk_key(g, i);
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++)
        walk_tensor(g, i);
    sp_gguf_close(g);
    return 0;
}
