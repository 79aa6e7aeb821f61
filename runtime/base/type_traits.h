/* type_traits.h - ggml tensor types: ids, names and block layouts, in one table shared by the GGUF
 * reader (sizes of every tensor in a file) and the backends (which types they compute with).
 *
 * Thread-safe (constant data), no allocation.
 */
#ifndef SP_TYPE_TRAITS_H
#define SP_TYPE_TRAITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml tensor types (numbering fixed by ggml). Only those listed are computed with (dequantized,
 * multiplied); the table in type_traits.c knows the names and block sizes of every ggml type. */
typedef enum sp_ggml_type {
    SP_TYPE_F32 = 0, SP_TYPE_F16 = 1, SP_TYPE_Q4_0 = 2, SP_TYPE_Q4_1 = 3,
    SP_TYPE_Q5_0 = 6, SP_TYPE_Q5_1 = 7, SP_TYPE_Q8_0 = 8,
    SP_TYPE_Q4_K = 12, SP_TYPE_Q5_K = 13, SP_TYPE_Q6_K = 14, SP_TYPE_BF16 = 30,
} sp_ggml_type;

/* "Q4_1", ... for any ggml type id, "unknown" for ids ggml does not define. */
const char *sp_ggml_type_name(uint32_t type);

/* Whether the backends compute with this type (the sp_ggml_type values above). */
bool sp_type_supported(uint32_t type);

/* Elements per block (1 for F32/F16/BF16, 32 for Q*_0/1, 256 for K-quants); 0 if not supported. */
int64_t sp_type_block_elems(uint32_t type);
/* Bytes per block; 0 if not supported. */
size_t sp_type_block_bytes(uint32_t type);
/* Bytes of n elements of a supported type (n a multiple of the block size; else 0). */
size_t sp_type_row_bytes(uint32_t type, int64_t n);

/* Bytes of n elements of ANY ggml type the table knows (also ones that are not computed with):
 * 0 for an unknown id, n <= 0, n not a multiple of the block, or an overflow. For file readers. */
uint64_t sp_type_any_row_bytes(uint32_t type, int64_t n);

#endif
