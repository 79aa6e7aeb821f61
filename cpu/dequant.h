/* dequant.h - ggml block formats to fp32 (the CPU backend's compute type).
 *
 * Bit-exact with ggml's reference dequantization (fp16 scales converted exactly, then the same
 * float expression order). Thread-safe, no allocation.
 */
#ifndef SP_DEQUANT_H
#define SP_DEQUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "type_traits.h" /* sp_type_block_elems, sp_type_row_bytes, ... */

bool sp_dequant_supported(uint32_t type); /* = sp_type_supported */
/* Dequantize n elements (a multiple of the block size) from src into dst.
 * Returns 0, or -EINVAL for an unsupported type / bad n (sp_last_error() says which). */
int sp_dequant(uint32_t type, const void *src, float *dst, int64_t n);
/* Same, always through the scalar reference code (no SIMD paths); for tests and benchmarks. */
int sp_dequant_ref(uint32_t type, const void *src, float *dst, int64_t n);

#endif
