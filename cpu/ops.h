/* ops.h - CPU kernels of the forward pass: RMSNorm, RoPE (both layouts), SwiGLU, matrix products
 * against GGUF weights kept in their file format (quantized blocks are never re-quantized), and
 * chunked causal GQA attention over an fp16/fp32 KV cache with optional window scores.
 *
 * Threads: the matrix and attention ops run on an sp_cpu_t (a thread pool plus per-thread scratch,
 * both sized once); the element-wise ops are single-threaded and called per row. No op allocates.
 * An sp_cpu_t is driven by one caller thread at a time.
 */
#ifndef SP_OPS_H
#define SP_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"  /* sp_wmat, sp_attn_desc, sp_rope_mode, sp_kv_type: the shared descriptors */
#include "numerics.h"
#include "threadpool.h"

/* ---- execution context ---------------------------------------------------------------------- */


typedef struct sp_cpu {
    sp_pool_t *pool;         /* n_threads threads (caller included) */
    int n_threads;
    size_t thread_floats;    /* scratch floats per thread */
    float *thread_scratch;   /* [n_threads][thread_floats], 64-byte aligned rows */
    size_t shared_floats;
    float *shared;           /* [shared_floats] scratch shared by one op's threads */
    size_t xs_floats;
    float *xs;               /* [xs_floats] per-block input sums for the Q4_1 dot products */
    sp_numerics numerics;    /* SP_NUMERICS_EXACT after sp_cpu_new; the owner may change it between ops */
    size_t qact_bytes;       /* = thread_floats * sizeof(float): >= 3 * MM_RB quantized rows of any
                              * matrix the thread scratch is sized for */
    void *qact;              /* [qact_bytes] activations quantized for the integer products (GGML) */
} sp_cpu;

/* Create the pool and scratch. thread_floats / shared_floats: the maximum over the ops the caller
 * will run (see sp_op_*_scratch below). Also pins OpenBLAS to one thread per call, because the
 * pool's threads call sgemm concurrently. Returns NULL on failure (sp_last_error()). */
sp_cpu *sp_cpu_new(int n_threads, size_t thread_floats, size_t shared_floats);
void sp_cpu_free(sp_cpu *c);  /* accepts NULL */

/* ---- element-wise ops ----------------------------------------------------------------------- */

/* y = x / sqrt(mean(x^2) + eps) * w over n elements (sum of squares in double). y may alias x. */
void sp_op_rmsnorm(float *y, const float *x, const float *w, int n, float eps);


/* Fill table[p][i] = {cos, sin}(p * base^(-2i/head_dim)) for p < n_pos, i < head_dim/2, computed in
 * double then rounded (table: n_pos * head_dim floats). */
void sp_rope_table_fill(float *table, int n_pos, int head_dim, double base);
/* Same table computed as ggml does (SP_NUMERICS_GGML): in float, theta_i = p * s^i with
 * s = powf(base, -2/head_dim) accumulated by repeated multiplication, then cosf / sinf. */
void sp_rope_table_fill_ggml(float *table, int n_pos, int head_dim, float base);
/* Rotate n_tok rows of n_heads heads in place: x[t*ld + h*head_dim + ...], token t at position
 * pos[t] (< the table's n_pos; not checked here). head_dim must be even. */
void sp_op_rope(float *x, int n_tok, int n_heads, int head_dim, int ld, const int32_t *pos,
                const float *table, sp_rope_mode mode);

/* The same as ggml computes it (SP_NUMERICS_GGML): sum of the fp32 squares accumulated in double,
 * mean and scale rounded to float, y = (x * scale) * w. */
void sp_op_rmsnorm_ggml(float *y, const float *x, const float *w, int n, float eps);

/* out[i] = silu(gate[i]) * up[i]; out may alias gate or up. */
void sp_op_swiglu(float *out, const float *gate, const float *up, int n);
/* The same with ggml's exp (SP_NUMERICS_GGML): silu(g) = g / (1 + exp(-g)) with sp_exp256_ggml. */
void sp_op_swiglu_ggml(float *out, const float *gate, const float *up, int n);

/* Vectorized expf over n elements (relative error < 2e-7 on [-87, 88]; -inf -> 0). */
void sp_op_exp(float *y, const float *x, int n);

/* ---- matrix products ------------------------------------------------------------------------ */


/* Whether matmul supports this type (every type cpu/dequant.h supports). */
bool sp_op_matmul_supported(uint32_t type);
/* Scratch floats per thread that sp_op_matmul needs for a matrix of `cols` inputs. */
size_t sp_op_matmul_scratch(int64_t cols);
/* y[t][r] = sum_c x[t][c] * W[r][c] for t < n (x row stride ldx, y row stride ldy, in floats).
 * Small n: threaded dot products straight on the stored blocks (exact dequantized values, factored
 * as d*sum(q*x) + m*sum(x)); large n: blocks of rows dequantized exactly to fp32 scratch, then
 * OpenBLAS sgemm. Returns 0 or -EINVAL/-ENOSPC (sp_last_error()). */
int sp_op_matmul(sp_cpu *c, const sp_wmat *w, const float *x, int n, int ldx, float *y, int ldy);
/* Several matrices sharing the input x in one dispatch (fewer thread wake-ups per token): y[i] gets
 * x W_i^T with row stride ldy[i]. All must have the same cols. swiglu (nw == 2, equal rows): after
 * the products, y[0] = silu(y[0]) * y[1] (computed by the thread that owns those rows). */
int sp_op_matmul_multi(sp_cpu *c, int nw, const sp_wmat *const *w, float *const *y, const int *ldy, const float *x,
                       int n, int ldx, bool swiglu);
/* Dequantize row r of w to fp32 (n = w->cols floats). Returns 0 or -EINVAL. */
int sp_op_get_row(const sp_wmat *w, int64_t r, float *out);
/* The KV cache store (sp_kv_store_desc, already range-checked) on host memory. */
void sp_op_kv_store(const sp_kv_store_desc *d);

/* ---- attention ------------------------------------------------------------------------------ */


/* Causal GQA attention with optional window scores: the contract of sp_attn_desc (backend.h). */

size_t sp_op_attention_thread_scratch(int n_head, int n_kv_head, int head_dim);
size_t sp_op_attention_shared_scratch(int n_threads, int n_head, int head_dim, int max_window);
/* Returns 0 or -EINVAL/-ENOSPC (sp_last_error()). */
int sp_op_attention(sp_cpu *c, const sp_attn_desc *a);

#endif
