/* dot_f16.h - F16 weights under GGML numerics, as llama.cpp's CPU backend computes them: the
 * activation row is rounded to fp16 (F16 is F16's vec_dot_type), then ggml_vec_dot_f16 sums
 * fp16 x fp16 products in fp32 in 4 vector accumulators over steps of 4 vectors, reduces them, and
 * adds the tail past the last full step in double (private to cpu/).
 * The vector width follows the CPU like ggml's build does: 16 lanes where AVX-512F is available
 * (selected at run time; SPINDLE_NO_AVX512=1 opts out), else 8 (AVX2). Thread-safe. */
#ifndef SP_DOT_F16_H
#define SP_DOT_F16_H

#include <stddef.h>
#include <stdint.h>

/* Round n floats to fp16 (nearest even). */
void sp_quant_row_f16(const float *x, uint16_t *y, int64_t n);

/* One F16 weight row (n elements) . nt fp16 activation rows of n elements each, back to back;
 * results to out[t * out_stride]. */
void sp_dot_rows_f16(const void *w, int64_t n, const void *act, int nt, float *out, size_t out_stride);

/* 16 if this build has the 16-lane kernel and the CPU AVX-512F, else 8. */
int sp_dot_f16_widest(void);
/* The same on a given vector width (8, or 16 when sp_dot_f16_widest() is 16), for tests. */
float sp_dot_f16_width(const uint16_t *w, const uint16_t *a, int64_t n, int width);

#endif
