/* quant_act.h - activations quantized to 8 bits the way llama.cpp's CPU backend does it, and the
 * integer block dot products against quantized weights that consume them.
 *
 * ggml never multiplies a quantized weight by fp32 activations: each activation row is first
 * quantized to the weight type's "vec_dot_type" (Q8_1 for Q4_1/Q5_1, Q8_0 for Q4_0/Q5_0/Q8_0, Q8_K for
 * the K-quants Q4_K/Q5_K/Q6_K, see quant_k.h) and the products are integer sums per block, scaled by
 * the block scales. F16 weights take fp16 activations (dot_f16.h). The functions here repeat
 * that arithmetic bit for bit as ggml's x86 kernels do it (AVX2 maddubs/madd and AVX-512 VNNI dpbusd
 * give the same lane sums; the fixtures' oracle ran the VNNI build):
 * - quantization: amax per 32-block, d = amax / 127, q = round-half-even(x * (127 / amax)),
 *   d (and for Q8_1 s = d * sum(q)) stored as fp16;
 * - dot product: 8 float lanes, lane i accumulating fma(d_w * d_a, (float)sum_{j<4} w[4i+j]*a[4i+j])
 *   over the blocks, then the lanes summed as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)); Q4_1 adds its
 *   min term m_w * s_a, fma-accumulated in block order, after the lanes.
 * The scalar builds (no AVX2) compute the same expressions, so both give identical results.
 *
 * All functions are thread-safe and allocation-free.
 */
#ifndef SP_QUANT_ACT_H
#define SP_QUANT_ACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { SP_QK8 = 32 };

/* ggml's block_q8_0: 34 bytes. */
typedef struct sp_block_q8_0 {
    uint16_t d;              /* fp16 scale */
    int8_t qs[SP_QK8];
} sp_block_q8_0;

/* ggml's block_q8_1: 36 bytes. */
typedef struct sp_block_q8_1 {
    uint16_t d;              /* fp16 scale */
    uint16_t s;              /* fp16 of d * sum(qs), computed from the unrounded d */
    int8_t qs[SP_QK8];
} sp_block_q8_1;

enum { SP_QK_K = 256 };

/* ggml's block_q8_K: 292 bytes (activations of the K-quants). */
typedef struct sp_block_q8_k {
    float d;                 /* scale: x ~ d * qs */
    int8_t qs[SP_QK_K];
    int16_t bsums[SP_QK_K / 16]; /* sums of qs per 16 */
} sp_block_q8_k;

/* Which activation format a weight type's integer kernel consumes. */
typedef enum sp_act_type {
    SP_ACT_NONE = 0,         /* no integer kernel: the caller multiplies in fp32 */
    SP_ACT_Q8_0 = 1,
    SP_ACT_Q8_1 = 2,
    SP_ACT_Q8_K = 3,
    SP_ACT_F16 = 4,          /* F16 weights: the activations rounded to fp16 (dot_f16.h) */
    SP_ACT_COUNT = 5,
} sp_act_type;

/* The activation format for weights of type `type` (sp_ggml_type), SP_ACT_NONE if unsupported. */
sp_act_type sp_act_type_for(uint32_t type);
/* Bytes of one quantized row of n activations (n a multiple of 32; of 256 for Q8_K). */
size_t sp_act_row_bytes(sp_act_type t, int64_t n);

/* Quantize n floats (a multiple of 32) into n/32 blocks. */
void sp_quant_row_q8_0(const float *x, sp_block_q8_0 *y, int64_t n);
void sp_quant_row_q8_1(const float *x, sp_block_q8_1 *y, int64_t n);
/* n a multiple of 256; ggml's quantize_row_q8_K_ref. */
void sp_quant_row_q8_k(const float *x, sp_block_q8_k *y, int64_t n);
/* Dispatch on t (not SP_ACT_NONE). */
void sp_quant_row(sp_act_type t, const float *x, void *y, int64_t n);

/* Dot products of one weight row (nb blocks as stored in the GGUF) with one quantized activation
 * row; the results equal ggml_vec_dot_<w>_<a> on an AVX2 machine. */
float sp_dot_q4_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb);
float sp_dot_q4_1_q8_1(const void *w, const sp_block_q8_1 *a, int64_t nb);
float sp_dot_q8_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb);
float sp_dot_q5_0_q8_0(const void *w, const sp_block_q8_0 *a, int64_t nb);
float sp_dot_q5_1_q8_1(const void *w, const sp_block_q8_1 *a, int64_t nb);

/* Activation rows are multiplied SP_ACT_TILE at a time, from tiles laid out for that: the quantized
 * blocks interleaved (block b of the tile's row i at byte (b*SP_ACT_TILE + i) * block bytes), then,
 * 32-byte aligned, the per-block scales as floats, transposed: sc[(b*k + j)*SP_ACT_TILE + i] with k = 1
 * (Q8_0: j = 0 is d) or k = 2 (Q8_1: j = 0 is d, j = 1 is s). Q8_K tiles are SP_ACT_TILE plain rows
 * one after the other (the K-quant kernels read each row whole), and so are F16 tiles (n halves per row). A tile of n activations per row takes
 * sp_act_tile_bytes(t, n) bytes (a multiple of 4). */
enum { SP_ACT_TILE = 8 };
size_t sp_act_tile_bytes(sp_act_type t, int64_t n);
/* Quantize row x (n activations, like sp_quant_row) into row `lane` of a tile (4-byte aligned). */
void sp_quant_row_tiled(sp_act_type t, const float *x, int64_t n, void *tile, int lane);

/* The dot products of one weight row with the first nt rows of consecutive tiles (row t in tile t / 8,
 * lane t % 8), written to out[t * out_stride]; each weight block of the 32-element types is unpacked
 * once per tile. Results identical to the one-row functions. nb counts weight blocks (32 or 256
 * elements; for F16: elements). type must have sp_act_type_for(type) != SP_ACT_NONE. */
void sp_dot_rows(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out, size_t out_stride);

#endif
