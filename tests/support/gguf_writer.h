/* gguf_writer.h - a tiny in-memory GGUF writer for the tests that feed the reader hand-made files
 * (test_gguf: hostile and broken files; test_tokenizer: synthetic vocabularies). It writes exactly
 * the bytes asked for, valid or not; the caller composes the file. Growth failures fail the
 * calling Criterion test. Link tests/support/gguf_writer.c (spindle_test_support). */
#ifndef SP_TEST_GGUF_WRITER_H
#define SP_TEST_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>

/* The file being written. Start from {0}; the caller frees p. */
typedef struct gguf_buf {
    uint8_t *p;
    size_t n, cap;   /* bytes written, bytes allocated */
} gguf_buf;

/* Append n raw bytes. */
void gw_put(gguf_buf *b, const void *src, size_t n);
/* Append a little-endian u32 / u64 (host order: the tests run on little-endian machines). */
void gw_u32(gguf_buf *b, uint32_t v);
void gw_u64(gguf_buf *b, uint64_t v);
/* Append a GGUF string: u64 length, then the bytes (no terminator). */
void gw_str(gguf_buf *b, const char *s);
/* Append the header: magic "GGUF", version, tensor count, key/value count. */
void gw_header(gguf_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv);
/* Append one key/value: a u32, a string, an array of n strings. */
void gw_kv_u32(gguf_buf *b, const char *key, uint32_t v);
void gw_kv_str(gguf_buf *b, const char *key, const char *v);
void gw_kv_strs(gguf_buf *b, const char *key, const char *const *v, size_t n);
/* Append zero bytes until the size is a multiple of align. */
void gw_pad(gguf_buf *b, size_t align);

#endif
