/* kvcache.h - the uncompressed per-layer KV cache of a context (fp16 by default, fp32 for tight
 * reference checks).
 *
 * Layout per layer and per K/V: [n_kv_head][n_ctx][head_dim], so one head's keys are contiguous
 * (what the attention kernels stream). K is stored after RoPE. Allocated once at creation; storing
 * never allocates. Not thread-safe for concurrent writers.
 */
#ifndef SP_KVCACHE_H
#define SP_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

typedef struct sp_kvcache {
    sp_kv_type type;
    int n_layer, n_kv_head, head_dim, n_ctx;
    size_t elem_bytes;       /* 2 (F16) or 4 (F32) */
    size_t head_stride;      /* elements between heads: n_ctx * head_dim */
    size_t layer_elems;      /* elements per layer and per K or V: n_kv_head * head_stride */
    void *k, *v;             /* [n_layer][layer_elems] */
} sp_kvcache;

/* Returns NULL on failure (sp_last_error()). */
sp_kvcache *sp_kvcache_new(sp_kv_type type, int n_layer, int n_kv_head, int head_dim, int n_ctx);
void sp_kvcache_free(sp_kvcache *kv);   /* accepts NULL */
/* Fill kv's shape fields (not k/v) for storage held elsewhere (a device buffer); returns the bytes
 * of K (= of V) over all layers. */
size_t sp_kvcache_layout(sp_kvcache *kv, sp_kv_type type, int n_layer, int n_kv_head, int head_dim, int n_ctx);
/* Bytes of K+V storage (all layers, full n_ctx). */
size_t sp_kvcache_bytes(const sp_kvcache *kv);
/* Base of layer `layer`'s K (or V): the element [g][p][d] is at g*head_stride + p*head_dim + d. */
void *sp_kvcache_k(const sp_kvcache *kv, int layer);
void *sp_kvcache_v(const sp_kvcache *kv, int layer);
/* Store n tokens at positions pos0.. of one layer from row-major fp32 k[t*ldk + g*head_dim + d]
 * (same for v), converting to the cache type (round to nearest even). Returns 0 or -ERANGE when
 * pos0 + n > n_ctx. */
int sp_kvcache_store(sp_kvcache *kv, int layer, int pos0, int n, const float *k, int ldk, const float *v,
                     int ldv);

#endif
