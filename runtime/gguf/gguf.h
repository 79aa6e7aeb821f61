/* gguf.h - read-only, memory-mapped GGUF (llama.cpp model file) reader.
 *
 * Every offset and size read from the file is validated against the file size before use; a file
 * that fails validation is rejected with a message naming the file and the offending field.
 * The returned handle owns the mapping; strings, arrays and tensor data point into it and stay valid
 * until sp_gguf_close(). Not thread-safe for concurrent open/close; read-only use from many threads
 * is fine.
 */
#ifndef SP_GGUF_H
#define SP_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "type_traits.h" /* sp_ggml_type, sp_ggml_type_name */

/* GGUF metadata value types (numbering fixed by the format). */
typedef enum sp_gguf_vtype {
    SP_GGUF_UINT8 = 0, SP_GGUF_INT8 = 1, SP_GGUF_UINT16 = 2, SP_GGUF_INT16 = 3,
    SP_GGUF_UINT32 = 4, SP_GGUF_INT32 = 5, SP_GGUF_FLOAT32 = 6, SP_GGUF_BOOL = 7,
    SP_GGUF_STRING = 8, SP_GGUF_ARRAY = 9, SP_GGUF_UINT64 = 10, SP_GGUF_INT64 = 11,
    SP_GGUF_FLOAT64 = 12,
} sp_gguf_vtype;


typedef struct sp_gguf sp_gguf_t;

/* A borrowed string (not NUL-terminated in the file). */
typedef struct sp_gguf_str {
    const char *ptr;
    uint64_t len;
} sp_gguf_str;

typedef struct sp_gguf_tensor {
    char name[128];          /* NUL-terminated copy */
    uint32_t type;           /* sp_ggml_type value as stored (may be unsupported) */
    uint32_t n_dims;         /* 1..4 */
    int64_t ne[4];           /* ne[0] = row length (innermost), unused dims = 1 */
    uint64_t offset;         /* relative to the data section */
    uint64_t nbytes;         /* validated against the file */
    const void *data;        /* points into the mapping */
} sp_gguf_tensor;

/* Open and validate a GGUF file. Returns NULL on failure (sp_last_error() says why: missing file,
 * not a GGUF, unsupported version, truncated/corrupt header, key or tensor table, bad alignment,
 * tensor data outside the file). */
sp_gguf_t *sp_gguf_open(const char *path);
/* Same, over a caller-owned buffer (used by the fuzzer and tests); the buffer must outlive the handle. */
sp_gguf_t *sp_gguf_open_buffer(const void *buf, size_t size, const char *name);
void sp_gguf_close(sp_gguf_t *g);   /* accepts NULL */

const char *sp_gguf_path(const sp_gguf_t *g);
uint32_t sp_gguf_version(const sp_gguf_t *g);
uint64_t sp_gguf_alignment(const sp_gguf_t *g);
size_t sp_gguf_file_size(const sp_gguf_t *g);
/* Absolute file offset of the data section (tensor offsets are relative to it). */
uint64_t sp_gguf_data_offset(const sp_gguf_t *g);

/* Metadata: key lookup returns the key index or -1. */
int64_t sp_gguf_n_kv(const sp_gguf_t *g);
int64_t sp_gguf_find_key(const sp_gguf_t *g, const char *key);
sp_gguf_str sp_gguf_key_name(const sp_gguf_t *g, int64_t i);
sp_gguf_vtype sp_gguf_kv_type(const sp_gguf_t *g, int64_t i);
/* Typed getters: return 0 and set *out, or a negative errno with sp_last_error() naming the key
 * (-ENOENT missing, -EINVAL wrong type). Integer getters accept any integer type whose value fits. */
int sp_gguf_get_u32(const sp_gguf_t *g, const char *key, uint32_t *out);
int sp_gguf_get_i64(const sp_gguf_t *g, const char *key, int64_t *out);
int sp_gguf_get_f32(const sp_gguf_t *g, const char *key, float *out);   /* accepts f32 or f64 */
int sp_gguf_get_bool(const sp_gguf_t *g, const char *key, bool *out);
int sp_gguf_get_str(const sp_gguf_t *g, const char *key, sp_gguf_str *out);
/* Arrays: element type and count; elements by index (strings) or a raw pointer (fixed-size types). */
int sp_gguf_get_arr(const sp_gguf_t *g, const char *key, sp_gguf_vtype *elem_type, uint64_t *n);
int sp_gguf_arr_str(const sp_gguf_t *g, const char *key, uint64_t i, sp_gguf_str *out);
const void *sp_gguf_arr_data(const sp_gguf_t *g, const char *key);  /* NULL for string arrays */
/* The pointer above points into the file and is generally NOT aligned for its element type: copy
 * elements out with memcpy, or use these per-element getters. They return 0, -ENOENT (missing key),
 * -EINVAL (not an array of that kind; arr_i64 takes any integer element type, arr_f32 f32 or f64)
 * or -ERANGE (index out of range). Arrays of arrays are walked at open but not exposed (-EINVAL). */
int sp_gguf_arr_i64(const sp_gguf_t *g, const char *key, uint64_t i, int64_t *out);
int sp_gguf_arr_f32(const sp_gguf_t *g, const char *key, uint64_t i, float *out);
/* Value of any scalar key as text (for `spindle inspect`); arrays print as "[type; n]", e.g.
 * "[string; 49152]". Returns 0, -EINVAL (bad index or empty buffer) or -ERANGE when the text did not
 * fit (buf then holds the truncated, NUL-terminated text). */
int sp_gguf_kv_to_string(const sp_gguf_t *g, int64_t i, char *buf, size_t size);

/* Tensors. */
int64_t sp_gguf_n_tensors(const sp_gguf_t *g);
const sp_gguf_tensor *sp_gguf_tensor_at(const sp_gguf_t *g, int64_t i);
const sp_gguf_tensor *sp_gguf_find_tensor(const sp_gguf_t *g, const char *name);  /* NULL if absent */

/* Tensor types: a type dequant does not support (Q2_K, IQ*, F64, ...) still opens when ggml defines
 * its block size (nbytes is exact and the data range validated; the loader rejects it when it
 * dequantizes). An id ggml does not define is rejected at open, naming the tensor and the type. */

#endif
