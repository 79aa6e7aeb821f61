/* kv_device.c - a layer's compressed KV cache in backend memory. See kv_device.h. */
#include "kv_device.h"

#include "sp_error.h"

#include <errno.h>
#include <string.h>

static size_t off_in(const sp_kv_tail *t, const void *p)
{
    return (size_t)((const uint8_t *)p - (const uint8_t *)t->mem);
}

/* Where the codebook op finds each head's entries: int64 [4][n_kv] = K entry offsets (entries from
 * the section start), K counts, V offsets, V counts; zeros for an uncoded segment. */
static void code_meta(const sp_kv_segment *seg, int64_t *meta)
{
    const sp_kv_seg_header *h = seg->hdr;
    int nkv = h->n_kv_heads, d = h->head_dim;
    bool coded = h->flags & SP_KV_SEG_CODED;
    const uint8_t *kcb = (const uint8_t *)seg->buf + h->sec_off[SP_KV_SEC_KCB];
    const uint8_t *vcb = (const uint8_t *)seg->buf + h->sec_off[SP_KV_SEC_VCB];
    for (int v = 0; v < nkv; v++) {
        const sp_kv_seg_head *sh = &seg->head[v];
        meta[v] = coded && sh->k_cb ? ((const uint8_t *)sh->k_cb - kcb) / (2 * (int64_t)d) : 0;
        meta[nkv + v] = coded ? sh->n_ent_k : 0;
        meta[2 * nkv + v] = coded && sh->v_cb ? ((const uint8_t *)sh->v_cb - vcb) / (2 * (int64_t)d) : 0;
        meta[3 * nkv + v] = coded ? sh->n_ent_v : 0;
    }
}

void sp_kv_dev_free(sp_kv_dev_layer *dl)
{
    if (!dl)
        return;
    sp_backend_buffer_free(dl->seg);
    sp_backend_buffer_free(dl->meta);
    sp_backend_buffer_free(dl->tail);
    memset(dl, 0, sizeof *dl);
}

int sp_kv_dev_place(sp_backend_t *be, sp_kv_dev_layer *dl, const sp_kv_segment *seg,
                    const sp_kv_tail *tail, bool keep_bytes, const sp_budget *budget)
{
    memset(dl, 0, sizeof *dl);
    if (!seg || !seg->hdr || !tail || !tail->mem)
        return sp_error(EINVAL, "kv device: placing a layer needs its segment and its tail");
    const sp_kv_seg_header *h = seg->hdr;
    int nkv = h->n_kv_heads;
    if (tail->coded && (tail->raw_window > 0 || tail->batch))
        return sp_error(ENOTSUP, "kv device: layer %d: a decode tail with a raw window (decode_window = %lld%s) "
                        "is coded on the cpu backend only; set [compression] decode_window = 0 or use "
                        "--backend cpu", h->layer, (long long)tail->raw_window,
                        tail->batch ? ", decode_coding = batch" : "");
    int64_t meta[4 * SP_KV_SEG_MAX_KV_HEADS];
    code_meta(seg, meta);
    size_t seg_bytes = sp_kv_segment_size(seg), meta_bytes = 4 * (size_t)nkv * sizeof(int64_t);
    int rc;
    if ((keep_bytes && !(dl->seg = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, seg_bytes, budget))) ||
        !(dl->meta = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, meta_bytes, budget)) ||
        !(dl->tail = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, tail->mem_bytes, budget))) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((keep_bytes && (rc = sp_backend_buffer_set(dl->seg, 0, seg->buf, seg_bytes)) < 0) ||
        (rc = sp_backend_buffer_set(dl->meta, 0, meta, meta_bytes)) < 0 ||
        (rc = sp_backend_buffer_set(dl->tail, 0, tail->mem, tail->mem_bytes)) < 0)
        goto fail;
    sp_segattn_desc probe = {.seg = seg, .tail = tail};
    if ((rc = sp_backend_reserve(be, SP_OP_SEGATTN, &probe)) < 0)
        goto fail;
    return 0;
fail:
    sp_kv_dev_free(dl);
    return rc;
}

const void *sp_kv_dev_seg_bytes(const sp_kv_dev_layer *dl)
{
    return dl->seg ? sp_backend_buffer_base(dl->seg) : NULL;
}

/* K (which = 0) or V of one token against the segment's codebook (bytes at sb) and the tail's
 * entries, the tail's memory carved as tail->mem but based at tb, the code_meta table at meta: the
 * backend's tail and table on a device, the host's own on the CPU. */
static int code_one(sp_backend_t *be, const sp_kv_segment *seg, const uint8_t *sb, const sp_kv_tail *t, uint8_t *tb,
                    const int64_t *meta, const float *x, int which)
{
    const sp_kv_seg_header *h = seg->hdr;
    int nkv = h->n_kv_heads, d = h->head_dim;
    size_t n = (size_t)t->n, c = (size_t)t->cap;
    sp_codebook_code_desc cd = {
        .x = x, .n_vec = nkv, .d = d, .ldx = d,
        .seg_cb = (const uint16_t *)(sb + h->sec_off[which ? SP_KV_SEC_VCB : SP_KV_SEC_KCB]),
        .seg_off = meta + (which ? 2 : 0) * nkv, .seg_n = meta + (which ? 3 : 1) * nkv,
        .tail_ent = (uint16_t *)(tb + off_in(t, which ? t->v_ent : t->k_ent)), .tail_stride = (int64_t)(c * d),
        .tail_n = (int64_t *)(tb + off_in(t, which ? t->n_new_v : t->n_new_k)), .tail_cap = (int64_t)c,
        .theta = which ? t->theta_v : t->theta_k,
        .idx = (uint32_t *)(tb + off_in(t, which ? t->v_idx : t->k_idx)) + n,
        .mag = (uint16_t *)(tb + off_in(t, which ? t->v_mag : t->k_mag)) + n,
        .out_stride = (int64_t)c,
    };
    return sp_backend_codebook_code(be, &cd);
}

int sp_kv_dev_append(sp_backend_t *be, sp_kv_dev_layer *dl, const sp_kv_segment *seg, const void *seg_bytes,
                     sp_kv_tail *t, const float *k, const float *v, const sp_buffer_t *pos_buf, size_t pos_off, int32_t pos)
{
    if (t->n >= t->cap)
        return sp_error(ENOSPC, "kv tail: full (%lld tokens); fold it into the segment or give it more capacity",
                        (long long)t->cap);
    int rc = sp_backend_copy_d2d(be, SP_STREAM_COMPUTE, dl->tail, off_in(t, t->pos) + sizeof(int32_t) * (size_t)t->n,
                                 pos_buf, pos_off, sizeof(int32_t));
    if (rc < 0)
        return rc;
    if (t->coded) {
        /* a tail entry per token and head at most: n < cap keeps every head's count below cap */
        uint8_t *tb = sp_backend_buffer_base(dl->tail);
        const int64_t *meta = sp_backend_buffer_base(dl->meta);
        if ((rc = code_one(be, seg, seg_bytes, t, tb, meta, k, 0)) < 0 ||
            (rc = code_one(be, seg, seg_bytes, t, tb, meta, v, 1)) < 0)
            return rc;
    } else {
        uint8_t *tb = sp_backend_buffer_base(dl->tail);
        sp_kv_store_desc st = {
            .n = 1, .pos0 = (int)t->n, .n_pos = (int)t->raw_cap, .n_kv_head = t->n_kv_heads, .head_dim = t->d,
            .k = k, .v = v, .ldk = t->n_kv_heads * t->d, .ldv = t->n_kv_heads * t->d,
            .k_dst = tb + off_in(t, t->raw_k), .v_dst = tb + off_in(t, t->raw_v),
            .head_stride = (size_t)t->raw_cap * (size_t)t->d, .kv_type = SP_KV_F16,
        };
        if ((rc = sp_backend_kv_store(be, &st)) < 0)
            return rc;
    }
    t->pos[t->n] = pos;
    t->n++;
    return 0;
}

int sp_kv_dev_pull_tail(sp_backend_t *be, const sp_kv_dev_layer *dl, sp_kv_tail *t)
{
    int rc = sp_backend_stream_sync(be, SP_STREAM_COMPUTE);
    if (rc < 0)
        return rc;
    return sp_backend_buffer_get(dl->tail, 0, t->mem, t->mem_bytes);
}

int sp_kv_tail_append_op(sp_backend_t *be, const sp_kv_segment *seg, sp_kv_tail *t, const float *k,
                         const float *v, int32_t pos)
{
    if (!t->coded || t->raw_window > 0 || t->batch)
        return sp_kv_tail_append(t, seg, k, v, pos);
    if (t->n >= t->cap)
        return sp_error(ENOSPC, "kv tail: full (%lld tokens); fold it into the segment or give it more capacity",
                        (long long)t->cap);
    int64_t meta[4 * SP_KV_SEG_MAX_KV_HEADS];
    code_meta(seg, meta);
    int rc;
    if ((rc = code_one(be, seg, seg->buf, t, t->mem, meta, k, 0)) < 0 ||
        (rc = code_one(be, seg, seg->buf, t, t->mem, meta, v, 1)) < 0)
        return rc;
    size_t n = (size_t)t->n;
    t->pos[n] = pos;
    t->n++;
    return 0;
}
