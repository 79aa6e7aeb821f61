/* numerics.h - how a backend rounds intermediate values: a backend parameter chosen by the
 * config ([model] numerics) and honoured by every backend (cpu/ops.h says what each means there). */
#ifndef SP_NUMERICS_H
#define SP_NUMERICS_H

/* How the matrix products and attention round intermediate values.
 * GGML: what llama.cpp's CPU backend computes (the reference users compare against): activations
 *   quantized to 8 bits per 32-block before every Q4_0/Q4_1/Q8_0 product (integer dot products,
 *   cpu/quant_act.h); with an fp16 KV cache, queries and softmax probabilities rounded to fp16 for
 *   the K.q and P.V products, the probabilities normalized before that rounding. Weight types without
 *   an integer kernel are multiplied in fp32 as in EXACT.
 * EXACT: fp32 activations against the exact dequantized weights (an fp32 reference forward pass). */
typedef enum sp_numerics {
    SP_NUMERICS_GGML = 0,
    SP_NUMERICS_EXACT = 1,
} sp_numerics;

#endif
