/* kv_segment.c - build, validate/open, decode tail, reconstruction and accounting of layer segments
 * (DESIGN §5.1, §4.6). Format: see kv_segment.h.
 *
 * DESIGN: the builder runs every codebook first (they decide the entry counts and the index width),
 * then sizes all sections once, allocates one 4 KiB-aligned buffer and fills it; the checksum is
 * written last. Reading code never trusts the bytes: sp_kv_segment_open re-derives every section
 * length from the header counts and checks positions and indices before attention may index with
 * them. The tail is one preallocated block; appends only write into it.
 */
#include "kv_segment.h"

#include "backend_stage.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "codebook.h"
#include "fp16.h"
#include "sp_error.h"
#include "sp_time.h"

#define HDR_BYTES SP_KV_SEG_ALIGN

_Static_assert(sizeof(sp_kv_seg_header) <= HDR_BYTES, "segment header must fit its 4 KiB page");

static uint64_t align_up(uint64_t x)
{
    return (x + SP_KV_SEG_ALIGN - 1) / SP_KV_SEG_ALIGN * SP_KV_SEG_ALIGN;
}

/* Section lengths implied by the header's shape and counts (build and open share this). */
static void section_lengths(const sp_kv_seg_header *h, uint64_t len[SP_KV_SEC_COUNT])
{
    uint64_t kept = 0, ek = 0, ev = 0, d = (uint64_t)h->head_dim;
    for (int i = 0; i < h->n_kv_heads; i++) {
        kept += (uint64_t)h->n_kept[i];
        ek += (uint64_t)h->n_ent_k[i];
        ev += (uint64_t)h->n_ent_v[i];
    }
    memset(len, 0, SP_KV_SEC_COUNT * sizeof *len);
    bool dense = h->flags & SP_KV_SEG_DENSE, coded = h->flags & SP_KV_SEG_CODED;
    if (!dense) {
        len[SP_KV_SEC_POS] = kept * 4;
        len[SP_KV_SEC_MASK] = kept * h->mask_bytes;
    }
    if (coded) {
        len[SP_KV_SEC_KIDX] = len[SP_KV_SEC_VIDX] = kept * h->index_bytes;
        len[SP_KV_SEC_KMAG] = len[SP_KV_SEC_VMAG] = kept * 2;
        len[SP_KV_SEC_KCB] = ek * d * 2;
        len[SP_KV_SEC_VCB] = ev * d * 2;
    } else {
        len[SP_KV_SEC_RAWK] = len[SP_KV_SEC_RAWV] = kept * d * 2;
    }
    len[SP_KV_SEC_WINK] = len[SP_KV_SEC_WINV] =
        (uint64_t)h->n_kv_heads * (uint64_t)h->window * d * 2;
}

static uint64_t checksum(const void *buf, uint64_t total)
{
    sp_kv_seg_header h;
    memcpy(&h, buf, sizeof h);
    h.checksum = 0;
    uint64_t seed = XXH3_64bits(&h, sizeof h);
    return XXH3_64bits_withSeed((const uint8_t *)buf + HDR_BYTES, total - HDR_BYTES, seed);
}

/* Point the per-head views into `bytes`, laid out as header h says (counts already validated). */
static void map_views_at(sp_kv_segment *seg, const sp_kv_seg_header *h, const void *bytes)
{
    const uint8_t *b = bytes;
    uint64_t d = (uint64_t)h->head_dim, kept = 0, ek = 0, ev = 0;
    seg->hdr = h;
    seg->group = h->n_q_heads / h->n_kv_heads;
#define SEC(s, off) (h->sec_len[s] ? (const void *)(b + h->sec_off[s] + (off)) : NULL)
    for (int i = 0; i < h->n_kv_heads; i++) {
        sp_kv_seg_head *v = &seg->head[i];
        uint64_t win = (uint64_t)i * (uint64_t)h->window * d * 2;
        v->n_kept = h->n_kept[i];
        v->n_ent_k = h->n_ent_k[i];
        v->n_ent_v = h->n_ent_v[i];
        v->pos = SEC(SP_KV_SEC_POS, kept * 4);
        v->mask = SEC(SP_KV_SEC_MASK, kept * h->mask_bytes);
        v->k_idx = SEC(SP_KV_SEC_KIDX, kept * h->index_bytes);
        v->v_idx = SEC(SP_KV_SEC_VIDX, kept * h->index_bytes);
        v->k_mag = SEC(SP_KV_SEC_KMAG, kept * 2);
        v->v_mag = SEC(SP_KV_SEC_VMAG, kept * 2);
        v->k_cb = SEC(SP_KV_SEC_KCB, ek * d * 2);
        v->v_cb = SEC(SP_KV_SEC_VCB, ev * d * 2);
        v->win_k = SEC(SP_KV_SEC_WINK, win);
        v->win_v = SEC(SP_KV_SEC_WINV, win);
        v->raw_k = SEC(SP_KV_SEC_RAWK, kept * d * 2);
        v->raw_v = SEC(SP_KV_SEC_RAWV, kept * d * 2);
        kept += (uint64_t)h->n_kept[i];
        ek += (uint64_t)h->n_ent_k[i];
        ev += (uint64_t)h->n_ent_v[i];
    }
#undef SEC
}

static uint64_t mask_at(const sp_kv_segment *seg, const sp_kv_seg_head *v, int64_t j);

static void map_views(sp_kv_segment *seg) { map_views_at(seg, seg->buf, seg->buf); }

/* seg->members, once the bytes (host memory) are final. */
static void count_members(sp_kv_segment *seg)
{
    int64_t m = 0;
    for (int i = 0; i < seg->hdr->n_kv_heads; i++)
        for (int64_t j = 0; j < seg->head[i].n_kept; j++)
            m += __builtin_popcountll(mask_at(seg, &seg->head[i], j));
    seg->members = m;
}

void sp_kv_segment_view_at(sp_kv_segment *out, const sp_kv_segment *seg, const void *bytes)
{
    *out = *seg;
    out->buf = (void *)bytes;
    out->owned = false;
    map_views_at(out, seg->hdr, bytes);
}

static void to_fp16(uint16_t *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = sp_f32_to_fp16(src[i]);
}

static int run_codebook_build(sp_backend_t *be, const void *d) { return sp_backend_codebook_build(be, d); }

/* One codebook, on backend be (the CPU backend runs sp_codebook_build) or here. cb owns its arrays
 * either way (sp_codebook_free). */
static int codebook_build_on(sp_backend_t *be, const float *x, int64_t n, int d, const uint32_t *mu,
                             float theta, sp_codebook *cb)
{
    if (!be)
        return sp_codebook_build(x, n, d, mu, theta, cb);
    memset(cb, 0, sizeof *cb);
    size_t nn = (size_t)(n > 0 ? n : 1);
    cb->index = malloc(nn * sizeof *cb->index);
    cb->rep = malloc(nn * sizeof *cb->rep);
    cb->mag = malloc(nn * sizeof *cb->mag);
    cb->unit = malloc(nn * (size_t)d * sizeof *cb->unit);
    if (!cb->index || !cb->rep || !cb->mag || !cb->unit) {
        sp_codebook_free(cb);
        return sp_error(ENOMEM, "kv segment: out of memory for a codebook of %lld vectors", (long long)n);
    }
    sp_codebook_build_desc dd = {.x = x, .n = n, .d = d, .mu = mu, .theta = theta, .index = cb->index,
                                 .rep = cb->rep, .n_entries = &cb->n_entries, .mag = cb->mag, .unit = cb->unit};
    /* on a device backend through its memory (backend_stage.h): once per layer and prompt */
    size_t vec = nn * sizeof(float) * (size_t)d;
    sp_stage_arg a[] = {{(void **)&dd.x, (size_t)(n > 0 ? n : 0) * (size_t)d * sizeof(float), true, false},
                        {(void **)&dd.mu, mu ? nn * sizeof(uint32_t) : 0, true, false},
                        {(void **)&dd.index, nn * sizeof(uint32_t), false, true},
                        {(void **)&dd.rep, nn * sizeof(uint32_t), false, true},
                        {(void **)&dd.n_entries, sizeof(int64_t), false, true},
                        {(void **)&dd.mag, nn * sizeof(float), false, true},
                        {(void **)&dd.unit, vec, false, true}};
    int rc = sp_backend_run_staged(be, a, 7, run_codebook_build, &dd);
    if (rc < 0) {
        sp_codebook_free(cb);
        return rc;
    }
    cb->n = n;
    cb->d = d;
    return 0;
}

int sp_kv_segment_build(sp_kv_segment *seg, int layer, const float *k, const float *v, int d,
                        const sp_kv_selection *sel, bool coded, float theta_k, float theta_v,
                        sp_kv_build_info *info)
{
    return sp_kv_segment_build_on(NULL, seg, layer, k, v, d, sel, coded, theta_k, theta_v, info);
}

int sp_kv_segment_build_on(sp_backend_t *be, sp_kv_segment *seg, int layer, const float *k, const float *v,
                           int d, const sp_kv_selection *sel, bool coded, float theta_k, float theta_v,
                           sp_kv_build_info *info)
{
    sp_kv_code_opts co = {.coded = coded, .theta_k = theta_k, .theta_v = theta_v};
    return sp_kv_segment_build_opts(be, seg, layer, k, v, d, sel, &co, info);
}

int sp_kv_segment_build_opts(sp_backend_t *be, sp_kv_segment *seg, int layer, const float *k,
                             const float *v, int d, const sp_kv_selection *sel,
                             const sp_kv_code_opts *co, sp_kv_build_info *info)
{
    bool coded = co->coded;
    float theta_k = co->theta_k, theta_v = co->theta_v;
    memset(seg, 0, sizeof *seg);
    if (info)
        memset(info, 0, sizeof *info);
    if (!sel || !k || !v || d < 1 || sel->n_kv_heads < 1 ||
        sel->n_kv_heads > SP_KV_SEG_MAX_KV_HEADS)
        return sp_error(EINVAL, "kv segment: bad arguments (d=%d, kv heads %d, at most %d)", d,
                        sel ? sel->n_kv_heads : 0, SP_KV_SEG_MAX_KV_HEADS);
    int nkv = sel->n_kv_heads, rc = 0;
    int64_t l = sel->l, cap = sel->cap, maxk = 0;
    uint64_t full = sel->group >= 64 ? ~0ull : (1ull << sel->group) - 1;
    bool dense = true;
    for (int h = 0; h < nkv; h++) {
        if (sel->n_kept[h] != cap)
            dense = false;
        for (int64_t i = 0; dense && i < sel->n_kept[h]; i++)
            if (sel->mask[(size_t)h * cap + i] != full)
                dense = false;
        if (sel->n_kept[h] > maxk)
            maxk = sel->n_kept[h];
    }
    sp_codebook cbk[SP_KV_SEG_MAX_KV_HEADS], cbv[SP_KV_SEG_MAX_KV_HEADS];
    memset(cbk, 0, sizeof cbk);
    memset(cbv, 0, sizeof cbv);
    float *gk = NULL, *gv = NULL;
    uint32_t *mu = NULL;
    sp_kv_seg_header h;
    memset(&h, 0, sizeof h);
    h.magic = SP_KV_SEG_MAGIC;
    h.version = SP_KV_SEG_VERSION;
    h.layer = layer;
    h.n_q_heads = sel->n_q_heads;
    h.n_kv_heads = nkv;
    h.head_dim = d;
    h.flags = (coded ? SP_KV_SEG_CODED : 0) | (dense ? SP_KV_SEG_DENSE : 0);
    h.mask_bytes = dense ? 0 : (uint32_t)(sel->group + 7) / 8;
    h.l = l;
    h.window = sel->window;
    for (int i = 0; i < nkv; i++)
        h.n_kept[i] = sel->n_kept[i];

    if (coded) {
        gk = malloc((size_t)(maxk ? maxk : 1) * d * sizeof *gk);
        gv = malloc((size_t)(maxk ? maxk : 1) * d * sizeof *gv);
        mu = malloc((size_t)(maxk ? maxk : 1) * sizeof *mu);
        if (!gk || !gv || !mu) {
            rc = sp_error(ENOMEM, "kv segment: out of memory gathering %lld tokens",
                          (long long)maxk);
            goto free_scratch;
        }
        double t0 = sp_now_s();
        uint32_t ib = 2;
        for (int i = 0; i < nkv; i++) {
            int64_t n = sel->n_kept[i];
            for (int64_t j = 0; j < n; j++) {
                int32_t p = sel->pos[(size_t)i * cap + j];
                memcpy(gk + (size_t)j * d, k + ((size_t)i * l + p) * d, (size_t)d * sizeof *gk);
                memcpy(gv + (size_t)j * d, v + ((size_t)i * l + p) * d, (size_t)d * sizeof *gv);
                mu[j] = (uint32_t)__builtin_popcountll(sel->mask[(size_t)i * cap + j]);
            }
            rc = codebook_build_on(be, gk, n, d, mu, theta_k, &cbk[i]);
            if (rc == 0)
                rc = codebook_build_on(be, gv, n, d, mu, theta_v, &cbv[i]);
            if (rc == 0 && co->centroid)
                rc = sp_codebook_centroids(&cbk[i], mu);
            if (rc == 0 && co->centroid)
                rc = sp_codebook_centroids(&cbv[i], mu);
            if (rc < 0)
                goto free_scratch;
            h.n_ent_k[i] = cbk[i].n_entries;
            h.n_ent_v[i] = cbv[i].n_entries;
            if (h.n_ent_k[i] > 65535 || h.n_ent_v[i] > 65535)
                ib = 4;
            if (info) {
                info->coded_vectors += n;
                info->entries_k += h.n_ent_k[i];
                info->entries_v += h.n_ent_v[i];
            }
        }
        h.index_bytes = ib;
        if (info)
            info->seconds_codebook = sp_now_s() - t0;
    }

    uint64_t off = HDR_BYTES;
    section_lengths(&h, h.sec_len);
    for (int s = 0; s < SP_KV_SEC_COUNT; s++)
        if (h.sec_len[s]) {
            h.sec_off[s] = off;
            off = align_up(off + h.sec_len[s]);
        }
    h.total_bytes = off;
    seg->buf = aligned_alloc(SP_KV_SEG_ALIGN, off);
    if (!seg->buf) {
        rc = sp_error(ENOMEM, "kv segment: out of memory for %llu bytes", (unsigned long long)off);
        goto free_scratch;
    }
    memset(seg->buf, 0, off);
    memcpy(seg->buf, &h, sizeof h);
    seg->size = off;
    seg->owned = true;
    map_views(seg);

    for (int i = 0; i < nkv; i++) {
        sp_kv_seg_head *hv = &seg->head[i];
        int64_t n = sel->n_kept[i];
        const int32_t *pos = sel->pos + (size_t)i * cap;
        if (!dense)
            for (int64_t j = 0; j < n; j++) {
                ((int32_t *)hv->pos)[j] = pos[j];
                uint64_t m = sel->mask[(size_t)i * cap + j];
                for (uint32_t b = 0; b < h.mask_bytes; b++)
                    ((uint8_t *)hv->mask)[(size_t)j * h.mask_bytes + b] = (uint8_t)(m >> (8 * b));
            }
        if (coded) {
            for (int64_t j = 0; j < n; j++) {
                if (h.index_bytes == 2) {
                    ((uint16_t *)hv->k_idx)[j] = (uint16_t)cbk[i].index[j];
                    ((uint16_t *)hv->v_idx)[j] = (uint16_t)cbv[i].index[j];
                } else {
                    ((uint32_t *)hv->k_idx)[j] = cbk[i].index[j];
                    ((uint32_t *)hv->v_idx)[j] = cbv[i].index[j];
                }
                ((uint16_t *)hv->k_mag)[j] = sp_f32_to_fp16(cbk[i].mag[j]);
                ((uint16_t *)hv->v_mag)[j] = sp_f32_to_fp16(cbv[i].mag[j]);
            }
            for (int64_t e = 0; e < cbk[i].n_entries; e++)
                to_fp16((uint16_t *)hv->k_cb + (size_t)e * d,
                        cbk[i].unit + (size_t)cbk[i].rep[e] * d, d);
            for (int64_t e = 0; e < cbv[i].n_entries; e++)
                to_fp16((uint16_t *)hv->v_cb + (size_t)e * d,
                        cbv[i].unit + (size_t)cbv[i].rep[e] * d, d);
        } else {
            for (int64_t j = 0; j < n; j++) {
                to_fp16((uint16_t *)hv->raw_k + (size_t)j * d, k + ((size_t)i * l + pos[j]) * d, d);
                to_fp16((uint16_t *)hv->raw_v + (size_t)j * d, v + ((size_t)i * l + pos[j]) * d, d);
            }
        }
        for (int64_t j = 0; j < sel->window; j++) {
            size_t src = ((size_t)i * l + (size_t)(l - sel->window + j)) * d;
            to_fp16((uint16_t *)hv->win_k + (size_t)j * d, k + src, d);
            to_fp16((uint16_t *)hv->win_v + (size_t)j * d, v + src, d);
        }
    }
    ((sp_kv_seg_header *)seg->buf)->checksum = checksum(seg->buf, off);
    count_members(seg);

free_scratch:
    for (int i = 0; i < nkv; i++) {
        sp_codebook_free(&cbk[i]);
        sp_codebook_free(&cbv[i]);
    }
    free(gk);
    free(gv);
    free(mu);
    if (rc < 0)
        sp_kv_segment_free(seg);
    return rc;
}

void sp_kv_segment_free(sp_kv_segment *seg)
{
    if (!seg)
        return;
    if (seg->owned)
        free(seg->buf);
    memset(seg, 0, sizeof *seg);
}

size_t sp_kv_segment_size(const sp_kv_segment *seg)
{
    return seg && seg->buf ? seg->size : 0;
}

static uint32_t load_index(const void *p, uint32_t ib, int64_t i)
{
    return ib == 2 ? ((const uint16_t *)p)[i] : ((const uint32_t *)p)[i];
}

int sp_kv_segment_open(sp_kv_segment *seg, const void *bytes, size_t size, bool verify)
{
    memset(seg, 0, sizeof *seg);
    if (!bytes || size < HDR_BYTES)
        return sp_error(EINVAL, "kv segment: %zu bytes is shorter than the %u-byte header", size,
                        HDR_BYTES);
    if ((uintptr_t)bytes % 8)
        return sp_error(EINVAL, "kv segment: buffer not 8-byte aligned");
    const sp_kv_seg_header *h = bytes;
    if (h->magic != SP_KV_SEG_MAGIC)
        return sp_error(EINVAL, "kv segment: bad magic 0x%08x (expected 0x%08x \"SKV1\")",
                        h->magic, SP_KV_SEG_MAGIC);
    if (h->version != SP_KV_SEG_VERSION)
        return sp_error(EINVAL, "kv segment: format version %u, this build reads %u", h->version,
                        SP_KV_SEG_VERSION);
    if (h->n_kv_heads < 1 || h->n_kv_heads > SP_KV_SEG_MAX_KV_HEADS || h->n_q_heads < 1 ||
        h->n_q_heads % h->n_kv_heads || h->n_q_heads / h->n_kv_heads > SP_KV_MAX_GROUP ||
        h->head_dim < 1 || h->head_dim > 65536 || h->l < 0 || h->window < 0 || h->window > h->l ||
        h->l > INT32_MAX || (h->flags & ~(uint32_t)(SP_KV_SEG_CODED | SP_KV_SEG_DENSE)))
        return sp_error(EINVAL, "kv segment (layer %d): bad shape (q heads %d, kv heads %d, d %d, "
                                "l %lld, window %lld, flags %u)", h->layer, h->n_q_heads,
                        h->n_kv_heads, h->head_dim, (long long)h->l, (long long)h->window,
                        h->flags);
    bool coded = h->flags & SP_KV_SEG_CODED, dense = h->flags & SP_KV_SEG_DENSE;
    int group = h->n_q_heads / h->n_kv_heads;
    if ((coded ? h->index_bytes != 2 && h->index_bytes != 4 : h->index_bytes != 0) ||
        h->mask_bytes != (dense ? 0u : (uint32_t)(group + 7) / 8))
        return sp_error(EINVAL, "kv segment (layer %d): bad index width %u or mask width %u",
                        h->layer, h->index_bytes, h->mask_bytes);
    int64_t cap = h->l - h->window, nf = h->n_folded;
    if (dense && nf)
        return sp_error(EINVAL, "kv segment (layer %d): a dense segment cannot hold folded tokens",
                        h->layer);
    for (int i = 0; i < h->n_kv_heads; i++) {
        int64_t n = h->n_kept[i];
        bool ok = n >= 0 && n <= cap + nf && (!dense || n == cap);
        if (coded)
            ok = ok && h->n_ent_k[i] >= (n > 0) && h->n_ent_k[i] <= n && h->n_ent_v[i] >= (n > 0) &&
                 h->n_ent_v[i] <= n && (h->index_bytes == 4 ||
                                        (h->n_ent_k[i] <= 65536 && h->n_ent_v[i] <= 65536));
        else
            ok = ok && h->n_ent_k[i] == 0 && h->n_ent_v[i] == 0;
        if (!ok)
            return sp_error(EINVAL, "kv segment (layer %d): KV head %d: bad counts (kept %lld of "
                                    "%lld, entries %lld/%lld)", h->layer, i, (long long)n,
                            (long long)cap, (long long)h->n_ent_k[i], (long long)h->n_ent_v[i]);
    }
    if (h->total_bytes != size)
        return sp_error(EINVAL, "kv segment (layer %d): header says %llu bytes, got %zu", h->layer,
                        (unsigned long long)h->total_bytes, size);
    uint64_t len[SP_KV_SEC_COUNT], end = HDR_BYTES;
    section_lengths(h, len);
    for (int s = 0; s < SP_KV_SEC_COUNT; s++) {
        if (h->sec_len[s] != len[s])
            return sp_error(EINVAL, "kv segment (layer %d): section %d holds %llu bytes, the counts "
                                    "need %llu", h->layer, s, (unsigned long long)h->sec_len[s],
                            (unsigned long long)len[s]);
        if (!len[s]) {
            if (h->sec_off[s])
                return sp_error(EINVAL, "kv segment (layer %d): empty section %d has an offset",
                                h->layer, s);
            continue;
        }
        if (h->sec_off[s] % SP_KV_SEG_ALIGN || h->sec_off[s] < end || h->sec_off[s] > size ||
            len[s] > size - h->sec_off[s])
            return sp_error(EINVAL, "kv segment (layer %d): section %d at %llu+%llu is misaligned, "
                                    "overlapping or past the end (%zu)", h->layer, s,
                            (unsigned long long)h->sec_off[s], (unsigned long long)len[s], size);
        end = h->sec_off[s] + len[s];
    }
    if (verify) {
        uint64_t sum = checksum(bytes, size);
        if (sum != h->checksum)
            return sp_error(EBADMSG, "kv segment (layer %d): checksum mismatch (stored %016llx, "
                                     "computed %016llx): the segment is corrupt", h->layer,
                            (unsigned long long)h->checksum, (unsigned long long)sum);
    }
    seg->buf = (void *)bytes;
    seg->size = size;
    seg->owned = false;
    map_views(seg);
    count_members(seg);
    uint64_t full = group >= 64 ? ~0ull : (1ull << group) - 1;
    for (int i = 0; i < h->n_kv_heads; i++) {
        const sp_kv_seg_head *v = &seg->head[i];
        for (int64_t j = 0; j < v->n_kept; j++) {
            bool ok = true;
            if (!dense) {
                uint64_t m = 0;
                for (uint32_t b = 0; b < h->mask_bytes; b++)
                    m |= (uint64_t)v->mask[(size_t)j * h->mask_bytes + b] << (8 * b);
                int32_t p = v->pos[j];
                ok = p >= 0 && (p < cap || (p >= h->l && p - h->l < nf)) &&
                     (j == 0 || p > v->pos[j - 1]) &&
                     m != 0 && (m & ~full) == 0;
            }
            if (coded)
                ok = ok && load_index(v->k_idx, h->index_bytes, j) < (uint64_t)v->n_ent_k &&
                     load_index(v->v_idx, h->index_bytes, j) < (uint64_t)v->n_ent_v;
            if (!ok) {
                memset(seg, 0, sizeof *seg);
                return sp_error(EINVAL, "kv segment (layer %d): KV head %d token %lld: position, "
                                        "mask or entry index out of range", h->layer, i,
                                (long long)j);
            }
        }
    }
    return 0;
}

/* ---- tail ----------------------------------------------------------------------------------- */

int sp_kv_tail_init(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                    float theta_v)
{
    return sp_kv_tail_init_window(t, seg, cap, theta_k, theta_v, 0);
}

int sp_kv_tail_init_window(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                           float theta_v, int64_t raw_window)
{
    return sp_kv_tail_init_coding(t, seg, cap, theta_k, theta_v, raw_window, false);
}

int sp_kv_tail_init_coding(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                           float theta_v, int64_t raw_window, bool batch)
{
    memset(t, 0, sizeof *t);
    if (!seg || !seg->hdr || cap < 0 || raw_window < 0)
        return sp_error(EINVAL, "kv tail: needs a segment, a capacity >= 0 and a raw window >= 0");
    if (batch && raw_window < 1)
        return sp_error(EINVAL, "kv tail: decode_coding = batch needs decode_window >= 1 (the "
                                "batch is the tokens leaving the window)");
    const sp_kv_seg_header *h = seg->hdr;
    int nkv = h->n_kv_heads, d = h->head_dim;
    size_t c = (size_t)(cap ? cap : 1), sz[10], total = 0;
    t->coded = h->flags & SP_KV_SEG_CODED;
    t->raw_window = t->coded ? raw_window : 0;
    t->batch = t->coded && batch;
    /* a batch tail holds the window plus the batch waiting to be coded */
    t->raw_cap = !t->coded ? (int64_t)c : t->batch ? 2 * raw_window : raw_window;
    /* sizes of: pos, k_idx, v_idx, k_mag, v_mag, k_ent, v_ent, n_new_k, n_new_v, raw (k and v) */
    sz[0] = c * 4;
    sz[1] = sz[2] = t->coded ? nkv * c * 4 : 0;
    sz[3] = sz[4] = t->coded ? nkv * c * 2 : 0;
    sz[5] = sz[6] = t->coded ? nkv * c * (size_t)d * 2 : 0;
    sz[7] = sz[8] = t->coded ? (size_t)nkv * 8 : 0;
    sz[9] = 2 * nkv * (size_t)t->raw_cap * (size_t)d * 2;
    for (int i = 0; i < 10; i++)
        total += (sz[i] + 63) / 64 * 64;
    t->mem = aligned_alloc(64, total);
    if (!t->mem)
        return sp_error(ENOMEM, "kv tail: out of memory for %lld tokens", (long long)cap);
    memset(t->mem, 0, total);
    t->mem_bytes = total;
    uint8_t *p = t->mem;
    void *parts[10];
    for (int i = 0; i < 10; i++) {
        parts[i] = sz[i] ? p : NULL;
        p += (sz[i] + 63) / 64 * 64;
    }
    t->pos = parts[0];
    t->k_idx = parts[1];
    t->v_idx = parts[2];
    t->k_mag = parts[3];
    t->v_mag = parts[4];
    t->k_ent = parts[5];
    t->v_ent = parts[6];
    t->n_new_k = parts[7];
    t->n_new_v = parts[8];
    t->raw_k = parts[9];
    t->raw_v = parts[9] ? (uint16_t *)parts[9] + nkv * (size_t)t->raw_cap * (size_t)d : NULL;
    t->n_kv_heads = nkv;
    t->d = d;
    t->cap = cap;
    t->theta_k = theta_k;
    t->theta_v = theta_v;
    return 0;
}

void sp_kv_tail_free(sp_kv_tail *t)
{
    if (!t)
        return;
    free(t->mem);
    memset(t, 0, sizeof *t);
}

/* Code one vector against segment entries + tail entries; appends a tail entry when none is
 * within theta. Returns the index in the combined numbering. */
uint32_t sp_kv_tail_code_vector(const uint16_t *seg_cb, int64_t seg_n, uint16_t *tail_ent,
                                int64_t *tail_n, int d, const float *x, float theta, uint16_t *mag_out)
{
    float u[d > 0 ? d : 1], mag, c1, c2;
    sp_codebook_unit(x, d, u, &mag);
    *mag_out = sp_f32_to_fp16(mag);
    int64_t a = sp_codebook_match(seg_cb, seg_n, d, u, theta, &c1);
    int64_t b = sp_codebook_match(tail_ent, *tail_n, d, u, theta, &c2);
    if (a >= 0 && (b < 0 || c1 >= c2))
        return (uint32_t)a;
    if (b >= 0)
        return (uint32_t)(seg_n + b);
    to_fp16(tail_ent + (size_t)*tail_n * d, u, d);
    return (uint32_t)(seg_n + (*tail_n)++);
}

/* Algorithm 1 over tail tokens o..o+nb-1 of KV head h, one of K / V (from their fp16 ring rows):
 * the batch's codebook entries become new tail entries after the *n_new already there. */
static int code_batch_one(sp_kv_tail *t, int h, int64_t o, int64_t nb, const uint16_t *raw,
                          float theta, uint32_t *idx, uint16_t *mag, uint16_t *ent, int64_t *n_new,
                          int64_t seg_n, float *x)
{
    int d = t->d;
    for (int64_t i = 0; i < nb; i++)
        for (int e = 0; e < d; e++)
            x[i * d + e] = sp_fp16_to_f32(raw[sp_kv_tail_raw_row(t, h, o + i) * d + e]);
    sp_codebook cb;
    int rc = sp_codebook_build(x, nb, d, NULL, theta, &cb);
    if (rc)
        return rc;
    for (int64_t e = 0; e < cb.n_entries; e++)
        to_fp16(ent + (size_t)(*n_new + e) * d, cb.unit + (size_t)cb.rep[e] * d, d);
    for (int64_t i = 0; i < nb; i++) {
        idx[o + i] = (uint32_t)(seg_n + *n_new + cb.index[i]);
        mag[o + i] = sp_f32_to_fp16(cb.mag[i]);
    }
    *n_new += cb.n_entries;
    sp_codebook_free(&cb);
    return 0;
}

/* Code the oldest raw_window waiting tokens of a batch tail (every KV head, K and V). On failure
 * the entry counts are restored: the tail is as before. */
static int code_batch(sp_kv_tail *t, const sp_kv_segment *seg)
{
    int64_t nb = t->raw_window, o = t->n_coded, saved_k[SP_KV_SEG_MAX_KV_HEADS],
            saved_v[SP_KV_SEG_MAX_KV_HEADS];
    size_t c = (size_t)t->cap, d = (size_t)t->d;
    float *x = malloc((size_t)nb * d * sizeof *x);
    if (!x)
        return sp_error(ENOMEM, "kv tail: out of memory for a batch of %lld tokens", (long long)nb);
    int rc = 0;
    for (int h = 0; h < t->n_kv_heads && !rc; h++) {
        const sp_kv_seg_head *sv = &seg->head[h];
        saved_k[h] = t->n_new_k[h];
        saved_v[h] = t->n_new_v[h];
        rc = code_batch_one(t, h, o, nb, t->raw_k, t->theta_k, t->k_idx + h * c, t->k_mag + h * c,
                            t->k_ent + h * c * d, &t->n_new_k[h], sv->n_ent_k, x);
        if (!rc)
            rc = code_batch_one(t, h, o, nb, t->raw_v, t->theta_v, t->v_idx + h * c,
                                t->v_mag + h * c, t->v_ent + h * c * d, &t->n_new_v[h], sv->n_ent_v, x);
        if (rc)
            for (int g = 0; g <= h; g++) {
                t->n_new_k[g] = saved_k[g];
                t->n_new_v[g] = saved_v[g];
            }
    }
    free(x);
    if (!rc)
        t->n_coded += nb;
    return rc;
}

int sp_kv_tail_append(sp_kv_tail *t, const sp_kv_segment *seg, const float *k, const float *v,
                      int32_t pos)
{
    if (t->n >= t->cap)
        return sp_error(ENOSPC, "kv tail: full (%lld tokens); fold it into the segment or give "
                                "it more capacity", (long long)t->cap);
    int d = t->d;
    size_t c = (size_t)t->cap, n = (size_t)t->n;
    /* A batch tail whose ring is full codes its oldest raw_window tokens, freeing their rows. */
    if (t->batch && t->n - t->n_coded >= t->raw_cap) {
        int rc = code_batch(t, seg);
        if (rc)
            return rc;
    }
    t->pos[n] = pos;
    for (int h = 0; h < t->n_kv_heads; h++) {
        const float *kh = k + (size_t)h * d, *vh = v + (size_t)h * d;
        if (t->batch) {
            size_t row = sp_kv_tail_raw_row(t, h, (int64_t)n);
            to_fp16(t->raw_k + row * d, kh, d);
            to_fp16(t->raw_v + row * d, vh, d);
        } else if (t->coded && t->raw_window > 0) {
            /* The token raw_window back leaves the window: code it from its ring slot, which the
             * new token then takes. */
            size_t row = sp_kv_tail_raw_row(t, h, (int64_t)n);
            if ((int64_t)n >= t->raw_window) {
                size_t o = n - (size_t)t->raw_window;
                float ko[d > 0 ? d : 1], vo[d > 0 ? d : 1];
                for (int i = 0; i < d; i++) {
                    ko[i] = sp_fp16_to_f32(t->raw_k[row * d + i]);
                    vo[i] = sp_fp16_to_f32(t->raw_v[row * d + i]);
                }
                const sp_kv_seg_head *sv = &seg->head[h];
                t->k_idx[h * c + o] = sp_kv_tail_code_vector(sv->k_cb, sv->n_ent_k, t->k_ent + h * c * d, &t->n_new_k[h], d,
                                                ko, t->theta_k, &t->k_mag[h * c + o]);
                t->v_idx[h * c + o] = sp_kv_tail_code_vector(sv->v_cb, sv->n_ent_v, t->v_ent + h * c * d, &t->n_new_v[h], d,
                                                vo, t->theta_v, &t->v_mag[h * c + o]);
            }
            to_fp16(t->raw_k + row * d, kh, d);
            to_fp16(t->raw_v + row * d, vh, d);
        } else if (t->coded) {
            const sp_kv_seg_head *sv = &seg->head[h];
            t->k_idx[h * c + n] = sp_kv_tail_code_vector(sv->k_cb, sv->n_ent_k, t->k_ent + h * c * d,
                                            &t->n_new_k[h], d, kh, t->theta_k,
                                            &t->k_mag[h * c + n]);
            t->v_idx[h * c + n] = sp_kv_tail_code_vector(sv->v_cb, sv->n_ent_v, t->v_ent + h * c * d,
                                            &t->n_new_v[h], d, vh, t->theta_v,
                                            &t->v_mag[h * c + n]);
        } else {
            to_fp16(t->raw_k + sp_kv_tail_raw_row(t, h, (int64_t)n) * d, kh, d);
            to_fp16(t->raw_v + sp_kv_tail_raw_row(t, h, (int64_t)n) * d, vh, d);
        }
    }
    t->n++;
    return 0;
}

void sp_kv_tail_reset(sp_kv_tail *t)
{
    t->n = 0;
    t->n_coded = 0;
    if (t->coded)
        for (int h = 0; h < t->n_kv_heads; h++)
            t->n_new_k[h] = t->n_new_v[h] = 0;
}

int sp_kv_segment_fold_tail(sp_kv_segment *out, const sp_kv_segment *seg, const sp_kv_tail *tail)
{
    memset(out, 0, sizeof *out);
    if (!seg || !seg->hdr || !tail)
        return sp_error(EINVAL, "kv fold: needs a segment and a tail");
    const sp_kv_seg_header *o = seg->hdr;
    bool coded = o->flags & SP_KV_SEG_CODED;
    if (tail->n_kv_heads != o->n_kv_heads || tail->d != o->head_dim || tail->coded != coded)
        return sp_error(EINVAL, "kv fold: the tail was made for another segment shape");
    if (tail->coded && tail->raw_window > 0 && tail->n > 0)
        return sp_error(ENOTSUP, "kv fold: the tail holds its last %lld tokens raw (decode_window); folding "
                        "codes only coded tokens - set decode_window = 0 where segments are written back",
                        (long long)tail->raw_window);
    int32_t last = -1;
    for (int i = 0; i < o->n_kv_heads; i++) {
        const sp_kv_seg_head *v = &seg->head[i];
        if (v->n_kept)
            last = v->pos ? (v->pos[v->n_kept - 1] > last ? v->pos[v->n_kept - 1] : last)
                          : (int32_t)(v->n_kept - 1 > last ? v->n_kept - 1 : last);
    }
    int64_t nt = tail->n;
    for (int64_t j = 0; j < nt; j++) {
        int32_t p = tail->pos[j];
        if (p <= last || p != o->l + (int64_t)o->n_folded + j)
            return sp_error(EINVAL, "kv fold: tail position %d at %lld is not the next decode "
                                    "position (prompt %lld, %u folded before)", p, (long long)j,
                            (long long)o->l, o->n_folded);
        last = p;
    }
    sp_kv_seg_header h = *o;
    int group = seg->group, d = o->head_dim;
    uint64_t full = group >= 64 ? ~0ull : (1ull << group) - 1;
    if (nt > 0) {
        h.flags &= ~(uint32_t)SP_KV_SEG_DENSE;
        h.mask_bytes = (uint32_t)(group + 7) / 8;
    }
    h.n_folded = o->n_folded + (uint32_t)nt;
    for (int i = 0; i < o->n_kv_heads; i++) {
        h.n_kept[i] += nt;
        if (coded) {
            h.n_ent_k[i] += tail->n_new_k[i];
            h.n_ent_v[i] += tail->n_new_v[i];
            if (h.n_ent_k[i] > 65535 || h.n_ent_v[i] > 65535)
                h.index_bytes = 4;
        }
    }
    memset(h.sec_off, 0, sizeof h.sec_off);
    section_lengths(&h, h.sec_len);
    uint64_t off = HDR_BYTES;
    for (int s = 0; s < SP_KV_SEC_COUNT; s++)
        if (h.sec_len[s]) {
            h.sec_off[s] = off;
            off = align_up(off + h.sec_len[s]);
        }
    h.total_bytes = off;
    h.checksum = 0;
    out->buf = aligned_alloc(SP_KV_SEG_ALIGN, off);
    if (!out->buf)
        return sp_error(ENOMEM, "kv fold: out of memory for %llu bytes", (unsigned long long)off);
    memset(out->buf, 0, off);
    memcpy(out->buf, &h, sizeof h);
    out->size = off;
    out->owned = true;
    map_views(out);
    size_t c = (size_t)tail->cap;
    for (int i = 0; i < o->n_kv_heads; i++) {
        const sp_kv_seg_head *a = &seg->head[i];
        sp_kv_seg_head *b = &out->head[i];
        int64_t n0 = a->n_kept;
        for (int64_t j = 0; j < n0 + nt; j++) {
            bool old = j < n0;
            if (b->pos) {
                ((int32_t *)b->pos)[j] = old ? (a->pos ? a->pos[j] : (int32_t)j) : tail->pos[j - n0];
                uint64_t m = old ? mask_at(seg, a, j) : full;
                for (uint32_t x = 0; x < h.mask_bytes; x++)
                    ((uint8_t *)b->mask)[(size_t)j * h.mask_bytes + x] = (uint8_t)(m >> (8 * x));
            }
            if (coded) {
                size_t r = (size_t)i * c + (size_t)(j - n0);
                uint32_t ik = old ? load_index(a->k_idx, o->index_bytes, j) : tail->k_idx[r];
                uint32_t iv = old ? load_index(a->v_idx, o->index_bytes, j) : tail->v_idx[r];
                if (h.index_bytes == 2) {
                    ((uint16_t *)b->k_idx)[j] = (uint16_t)ik;
                    ((uint16_t *)b->v_idx)[j] = (uint16_t)iv;
                } else {
                    ((uint32_t *)b->k_idx)[j] = ik;
                    ((uint32_t *)b->v_idx)[j] = iv;
                }
                ((uint16_t *)b->k_mag)[j] = old ? a->k_mag[j] : tail->k_mag[r];
                ((uint16_t *)b->v_mag)[j] = old ? a->v_mag[j] : tail->v_mag[r];
            } else {
                memcpy((uint16_t *)b->raw_k + (size_t)j * d,
                       old ? a->raw_k + (size_t)j * d : tail->raw_k + ((size_t)i * c + (size_t)(j - n0)) * d,
                       (size_t)d * 2);
                memcpy((uint16_t *)b->raw_v + (size_t)j * d,
                       old ? a->raw_v + (size_t)j * d : tail->raw_v + ((size_t)i * c + (size_t)(j - n0)) * d,
                       (size_t)d * 2);
            }
        }
        if (coded) {
            memcpy((uint16_t *)b->k_cb, a->k_cb, (size_t)a->n_ent_k * d * 2);
            memcpy((uint16_t *)b->k_cb + (size_t)a->n_ent_k * d, tail->k_ent + (size_t)i * c * d,
                   (size_t)tail->n_new_k[i] * d * 2);
            memcpy((uint16_t *)b->v_cb, a->v_cb, (size_t)a->n_ent_v * d * 2);
            memcpy((uint16_t *)b->v_cb + (size_t)a->n_ent_v * d, tail->v_ent + (size_t)i * c * d,
                   (size_t)tail->n_new_v[i] * d * 2);
        }
        if (o->window) {
            memcpy((uint16_t *)b->win_k, a->win_k, (size_t)o->window * d * 2);
            memcpy((uint16_t *)b->win_v, a->win_v, (size_t)o->window * d * 2);
        }
    }
    ((sp_kv_seg_header *)out->buf)->checksum = checksum(out->buf, off);
    count_members(out);
    return 0;
}

/* ---- reconstruction and accounting ---------------------------------------------------------- */

int64_t sp_kv_segment_tokens(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head)
{
    return seg->head[kv_head].n_kept + seg->hdr->window + (tail ? tail->n : 0);
}

static uint64_t mask_at(const sp_kv_segment *seg, const sp_kv_seg_head *v, int64_t j)
{
    uint32_t mb = seg->hdr->mask_bytes;
    if (!v->mask)
        return seg->group >= 64 ? ~0ull : (1ull << seg->group) - 1;
    uint64_t m = 0;
    for (uint32_t b = 0; b < mb; b++)
        m |= (uint64_t)v->mask[(size_t)j * mb + b] << (8 * b);
    return m;
}

static void decode_vec(float *out, const uint16_t *src, float scale, int d)
{
    for (int i = 0; i < d; i++)
        out[i] = scale * sp_fp16_to_f32(src[i]);
}

int64_t sp_kv_segment_reconstruct(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                                  float *k, float *v, int32_t *pos, uint64_t *mask)
{
    if (!seg || !seg->hdr || kv_head < 0 || kv_head >= seg->hdr->n_kv_heads)
        return sp_error(EINVAL, "kv reconstruct: bad segment or KV head %d", kv_head);
    const sp_kv_seg_header *h = seg->hdr;
    const sp_kv_seg_head *hv = &seg->head[kv_head];
    int d = h->head_dim;
    uint32_t ib = h->index_bytes;
    uint64_t full = seg->group >= 64 ? ~0ull : (1ull << seg->group) - 1;
    int64_t o = 0;
    for (int64_t j = 0; j < hv->n_kept; j++, o++) {
        if (pos)
            pos[o] = hv->pos ? hv->pos[j] : (int32_t)j;
        if (mask)
            mask[o] = mask_at(seg, hv, j);
        if (h->flags & SP_KV_SEG_CODED) {
            if (k)
                decode_vec(k + (size_t)o * d, hv->k_cb + (size_t)load_index(hv->k_idx, ib, j) * d,
                           sp_fp16_to_f32(hv->k_mag[j]), d);
            if (v)
                decode_vec(v + (size_t)o * d, hv->v_cb + (size_t)load_index(hv->v_idx, ib, j) * d,
                           sp_fp16_to_f32(hv->v_mag[j]), d);
        } else {
            if (k)
                decode_vec(k + (size_t)o * d, hv->raw_k + (size_t)j * d, 1.0f, d);
            if (v)
                decode_vec(v + (size_t)o * d, hv->raw_v + (size_t)j * d, 1.0f, d);
        }
    }
    for (int64_t j = 0; j < h->window; j++, o++) {
        if (pos)
            pos[o] = (int32_t)(h->l - h->window + j);
        if (mask)
            mask[o] = full;
        if (k)
            decode_vec(k + (size_t)o * d, hv->win_k + (size_t)j * d, 1.0f, d);
        if (v)
            decode_vec(v + (size_t)o * d, hv->win_v + (size_t)j * d, 1.0f, d);
    }
    for (int64_t j = 0; tail && j < tail->n; j++, o++) {
        size_t c = (size_t)tail->cap, r = (size_t)kv_head * c + (size_t)j;
        if (pos)
            pos[o] = tail->pos[j];
        if (mask)
            mask[o] = full;
        if (!sp_kv_tail_is_raw(tail, j)) {
            uint32_t ik = tail->k_idx[r], iv = tail->v_idx[r];
            const uint16_t *ek = ik < hv->n_ent_k ? hv->k_cb + (size_t)ik * d
                                                  : tail->k_ent + ((size_t)kv_head * c + ik -
                                                                   (size_t)hv->n_ent_k) * d;
            const uint16_t *ev = iv < hv->n_ent_v ? hv->v_cb + (size_t)iv * d
                                                  : tail->v_ent + ((size_t)kv_head * c + iv -
                                                                   (size_t)hv->n_ent_v) * d;
            if (k)
                decode_vec(k + (size_t)o * d, ek, sp_fp16_to_f32(tail->k_mag[r]), d);
            if (v)
                decode_vec(v + (size_t)o * d, ev, sp_fp16_to_f32(tail->v_mag[r]), d);
        } else {
            size_t rr = sp_kv_tail_raw_row(tail, kv_head, j);
            if (k)
                decode_vec(k + (size_t)o * d, tail->raw_k + rr * d, 1.0f, d);
            if (v)
                decode_vec(v + (size_t)o * d, tail->raw_v + rr * d, 1.0f, d);
        }
    }
    return o;
}

void sp_kv_segment_stats(const sp_kv_segment *seg, const sp_kv_tail *tail, sp_kv_seg_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!seg || !seg->hdr)
        return;
    const sp_kv_seg_header *h = seg->hdr;
    uint64_t d = (uint64_t)h->head_dim, nt = tail ? (uint64_t)tail->n : 0, content = 0;
    uint64_t all = (uint64_t)h->l + h->n_folded + nt; /* tokens the model has seen */
    for (int s = 0; s < SP_KV_SEC_COUNT; s++)
        content += h->sec_len[s];
    /* Σ over query heads of kept tokens: listed (the membership bits), window and tail */
    double kept_q = (double)seg->members + (double)h->n_q_heads * ((double)h->window + (double)nt), stored = 0;
    for (int i = 0; i < h->n_kv_heads; i++) {
        const sp_kv_seg_head *hv = &seg->head[i];
        stored += 2.0 * (double)h->window;
        /* raw tail tokens: all of an uncoded tail, the last raw_window of a coded one */
        uint64_t nraw = tail ? (uint64_t)sp_kv_tail_n_raw(tail) : 0;
        if (h->flags & SP_KV_SEG_CODED) {
            stored += (double)(hv->n_ent_k + hv->n_ent_v) + 2.0 * (double)nraw;
            if (tail)
                stored += (double)(tail->n_new_k[i] + tail->n_new_v[i]);
        } else {
            stored += 2.0 * (double)(hv->n_kept + (int64_t)nt);
        }
        if (tail && tail->coded)
            content += (nt - nraw) * (4 + 4 + 2 + 2) + nraw * 2 * d * 2 +
                       (uint64_t)(tail->n_new_k[i] + tail->n_new_v[i]) * d * 2;
        else
            content += nt * 2 * d * 2;
    }
    content += nt * 4; /* tail positions, shared by the KV heads */
    st->bytes_content = content;
    st->bytes_segment = seg->size;
    st->bytes_tail_alloc = tail ? tail->mem_bytes : 0;
    st->bytes_fp16 = 2ull * (uint64_t)h->n_kv_heads * all * d * 2;
    if (st->bytes_fp16) {
        st->true_ratio = (double)st->bytes_content / (double)st->bytes_fp16;
        st->alloc_ratio = (double)(st->bytes_segment + st->bytes_tail_alloc) / (double)st->bytes_fp16;
    }
    double L = (double)all;
    if (L > 0 && kept_q > 0) {
        st->paper_r1 = kept_q / ((double)h->n_q_heads * L);
        st->paper_r2 = stored / (2.0 * kept_q);
        st->paper_r3 = (double)h->n_q_heads / (double)h->n_kv_heads;
        st->paper_r = st->paper_r1 * st->paper_r2 * st->paper_r3;
    }
}
