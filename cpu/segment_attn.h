/* segment_attn.h - decode attention over a compressed layer segment (DESIGN §5.2), its explicit-
 * reconstruction reference, and a plain fp16-cache baseline (for tests and benchmarks).
 *
 * One call handles one KV head and the `group` query heads that share it, for one decode query:
 *   q    [group][d] fp32, already rotated (RoPE) at the query's position
 *   out  [group][d] fp32
 * Keys in a segment are pre-RoPE (kv_segment.h): each key is gathered (entry × magnitude, or raw
 * fp16), rotated at its stored original position with the RoPE table and dotted with the queries
 * in one pass; no key matrix is ever materialized. Query head g attends to the listed tokens whose
 * membership bit g is set, plus the window and the tail. Values of a coded layer are applied as a
 * weight scatter per entry (w_e = Σ_{j: idx_j = e} p_j·m_j) followed by one small GEMV over the
 * codebook; raw values are accumulated directly.
 *
 * RoPE table: the layout of sp_rope_table_fill (cpu/ops.h): table[(p·d/2 + i)·2 + {0,1}] =
 * {cos, sin}(p·base^(-2i/d)); mode SP_ROPE_NORM rotates adjacent pairs (llama GGUF), SP_ROPE_NEOX
 * rotates (x[i], x[i + d/2]) (qwen2).
 *
 * Thread-safety: reentrant; segment and tail are only read; each concurrent caller passes its own
 * work buffer. Nothing allocates except the reference.
 */
#ifndef SP_SEGMENT_ATTN_H
#define SP_SEGMENT_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "kv_segment.h"
#include "ops.h"

/* Floats of scratch sp_segattn_decode needs for this segment, tail and KV head. */
size_t sp_segattn_work_floats(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head);

/* Fused attention (see above). scale is usually 1/sqrt(d). Every stored position must be below
 * rope_n_pos. Returns 0, or -EINVAL (bad head, odd d, position outside the table). */
int sp_segattn_decode(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                      const float *q, const float *rope_table, int64_t rope_n_pos,
                      sp_rope_mode mode, float scale, float *out, float *work);

/* Reference: reconstruct every key/value explicitly (sp_kv_segment_reconstruct), rotate the keys
 * with a scalar RoPE, masked softmax and weighted sum in double. Allocates; for tests. Returns 0
 * or a negative errno. */
int sp_segattn_reference(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                         const float *q, const float *rope_table, int64_t rope_n_pos,
                         sp_rope_mode mode, float scale, float *out);

/* Baseline: attention of `group` queries over a plain fp16 cache of n tokens (k post-RoPE,
 * [n][d]; v [n][d]). work: group·n floats. */
void sp_segattn_full_fp16(const uint16_t *k, const uint16_t *v, int64_t n, int d, const float *q,
                          int group, float scale, float *out, float *work);

#endif
