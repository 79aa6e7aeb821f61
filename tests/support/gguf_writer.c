/* gguf_writer.c - see gguf_writer.h. */
#include "gguf_writer.h"

#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

#include "gguf.h"

void gw_put(gguf_buf *b, const void *src, size_t n)
{
    if (n == 0)
        return;
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        cr_assert_not_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

void gw_u32(gguf_buf *b, uint32_t v) { gw_put(b, &v, 4); }
void gw_u64(gguf_buf *b, uint64_t v) { gw_put(b, &v, 8); }

void gw_str(gguf_buf *b, const char *s)
{
    gw_u64(b, strlen(s));
    gw_put(b, s, strlen(s));
}

void gw_header(gguf_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    gw_put(b, "GGUF", 4);
    gw_u32(b, version);
    gw_u64(b, n_tensors);
    gw_u64(b, n_kv);
}

void gw_kv_u32(gguf_buf *b, const char *key, uint32_t v)
{
    gw_str(b, key);
    gw_u32(b, SP_GGUF_UINT32);
    gw_u32(b, v);
}

void gw_kv_str(gguf_buf *b, const char *key, const char *v)
{
    gw_str(b, key);
    gw_u32(b, SP_GGUF_STRING);
    gw_str(b, v);
}

void gw_kv_strs(gguf_buf *b, const char *key, const char *const *v, size_t n)
{
    gw_str(b, key);
    gw_u32(b, SP_GGUF_ARRAY);
    gw_u32(b, SP_GGUF_STRING);
    gw_u64(b, n);
    for (size_t i = 0; i < n; i++)
        gw_str(b, v[i]);
}

void gw_pad(gguf_buf *b, size_t align)
{
    while (b->n % align)
        gw_put(b, "", 1);
}
