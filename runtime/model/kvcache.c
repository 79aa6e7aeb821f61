/* kvcache.c - fp16/fp32 KV cache storage (see kvcache.h). */
#include "kvcache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_error.h"

size_t sp_kvcache_layout(sp_kvcache *kv, sp_kv_type type, int n_layer, int n_kv_head, int head_dim, int n_ctx)
{
    kv->type = type;
    kv->n_layer = n_layer;
    kv->n_kv_head = n_kv_head;
    kv->head_dim = head_dim;
    kv->n_ctx = n_ctx;
    kv->elem_bytes = type == SP_KV_F16 ? 2 : 4;
    kv->head_stride = (size_t)n_ctx * head_dim;
    kv->layer_elems = (size_t)n_kv_head * kv->head_stride;
    return (size_t)n_layer * kv->layer_elems * kv->elem_bytes;
}

sp_kvcache *sp_kvcache_new(sp_kv_type type, int n_layer, int n_kv_head, int head_dim, int n_ctx)
{
    if (n_layer <= 0 || n_kv_head <= 0 || head_dim <= 0 || n_ctx <= 0 || (type != SP_KV_F16 && type != SP_KV_F32)) {
        sp_error(EINVAL, "kv cache: bad shape (layers=%d kv_heads=%d head_dim=%d n_ctx=%d type=%d)", n_layer,
                 n_kv_head, head_dim, n_ctx, (int)type);
        return NULL;
    }
    sp_kvcache *kv = sp_calloc(1, sizeof(*kv));
    if (!kv) {
        sp_error(ENOMEM, "kv cache: out of memory");
        return NULL;
    }
    size_t bytes = sp_kvcache_layout(kv, type, n_layer, n_kv_head, head_dim, n_ctx);
    /* calloc of this size maps fresh zero pages: memory is committed only as positions fill. */
    kv->k = sp_calloc(1, bytes);
    kv->v = sp_calloc(1, bytes);
    if (!kv->k || !kv->v) {
        sp_error(ENOMEM, "kv cache: cannot allocate 2 x %zu bytes for n_ctx=%d", bytes, n_ctx);
        sp_kvcache_free(kv);
        return NULL;
    }
    return kv;
}

void sp_kvcache_free(sp_kvcache *kv)
{
    if (!kv)
        return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

size_t sp_kvcache_bytes(const sp_kvcache *kv)
{
    return 2 * (size_t)kv->n_layer * kv->layer_elems * kv->elem_bytes;
}

void *sp_kvcache_k(const sp_kvcache *kv, int layer)
{
    return (char *)kv->k + (size_t)layer * kv->layer_elems * kv->elem_bytes;
}

void *sp_kvcache_v(const sp_kvcache *kv, int layer)
{
    return (char *)kv->v + (size_t)layer * kv->layer_elems * kv->elem_bytes;
}

int sp_kvcache_store(sp_kvcache *kv, int layer, int pos0, int n, const float *k, int ldk, const float *v,
                     int ldv)
{
    if (layer < 0 || layer >= kv->n_layer || pos0 < 0 || n < 0 || pos0 + n > kv->n_ctx)
        return sp_error(ERANGE, "kv cache: store of %d tokens at position %d (layer %d) exceeds n_ctx=%d", n, pos0,
                        layer, kv->n_ctx);
    sp_kv_store_desc d = {.n = n, .pos0 = pos0, .n_pos = kv->n_ctx, .n_kv_head = kv->n_kv_head,
                          .head_dim = kv->head_dim, .k = k, .v = v, .ldk = ldk, .ldv = ldv,
                          .k_dst = sp_kvcache_k(kv, layer), .v_dst = sp_kvcache_v(kv, layer),
                          .head_stride = kv->head_stride, .kv_type = kv->type};
    sp_op_kv_store(&d);
    return 0;
}
