/* kv_segment.h - the compressed layer segment (DESIGN §5.1): one contiguous, self-describing,
 * checksummed byte buffer per layer, plus the growable decode tail and the byte accounting (§4.6).
 *
 * Layout (all integers little-endian host order; every section starts on a 4 KiB boundary so a
 * segment moves with one O_DIRECT read and one host->device copy):
 *   [0, 4096)  sp_kv_seg_header: magic "SKV1", version, layer, shape, per-KV-head counts, section
 *              offsets/lengths, and a checksum: XXH3-64 of the bytes after the header, seeded
 *              with XXH3-64 of the header itself (checksum field = 0). XXH3 hashes ~2x faster than
 *              XXH64 here, and every host/nvme read of a segment is verified.
 *   sections, KV heads one after another inside each section (head h starts after heads < h):
 *     POS   int32 [n_kept]         original positions of listed tokens (ascending): context tokens
 *                                  (< l - window), then folded decode tokens (>= l)
 *     MASK  uint8 [n_kept][mb]     query-head membership bits, mb = ceil(group/8) bytes
 *     KIDX, VIDX  uint16|uint32 [n_kept]   entry index (uint16 when every head has < 65536 entries)
 *     KMAG, VMAG  fp16 [n_kept]    magnitudes
 *     KCB, VCB    fp16 [n_ent][d]  unit entries
 *     WINK, WINV  fp16 [window][d] raw window tokens, positions l-window .. l-1
 *     RAWK, RAWV  fp16 [n_kept][d] raw kept tokens (layers without codebook)
 *   A coded layer has KIDX..KCB/VCB and no RAW*; an uncoded one the reverse. A DENSE segment (every
 *   context token kept by every query head: policy full, non-evicting layers) omits POS and MASK:
 *   position i is token i, all bits set.
 * Keys are stored PRE-RoPE everywhere (codebook entries, window, raw, tail): the codebook works on
 * pre-RoPE K, and storing one kind means attention rotates every key at its stored original position
 * (cpu/segment_attn.h) the same way.
 *
 * Ownership: sp_kv_segment_build allocates the buffer (4 KiB aligned) and owns it; sp_kv_segment_open
 * makes a read-only view of caller bytes (not owned, must outlive the view). Free with
 * sp_kv_segment_free either way. A segment is immutable after build/open: many threads may read it.
 * The tail is written by one thread (the decode step) and read by attention afterwards.
 */
#ifndef SP_KV_SEGMENT_H
#define SP_KV_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv_select.h"

#define SP_KV_SEG_MAGIC 0x31564b53u /* "SKV1" */
#define SP_KV_SEG_VERSION 2u /* 2: XXH3-64 checksum (1 used XXH64) */
#define SP_KV_SEG_ALIGN 4096u
#define SP_KV_SEG_MAX_KV_HEADS 64

enum {
    SP_KV_SEC_POS, SP_KV_SEC_MASK, SP_KV_SEC_KIDX, SP_KV_SEC_VIDX, SP_KV_SEC_KMAG, SP_KV_SEC_VMAG,
    SP_KV_SEC_KCB, SP_KV_SEC_VCB, SP_KV_SEC_WINK, SP_KV_SEC_WINV, SP_KV_SEC_RAWK, SP_KV_SEC_RAWV,
    SP_KV_SEC_COUNT
};

enum { SP_KV_SEG_CODED = 1u, SP_KV_SEG_DENSE = 2u };

typedef struct sp_kv_seg_header {
    uint32_t magic, version;
    int32_t layer, n_q_heads, n_kv_heads, head_dim;
    uint32_t flags;        /* SP_KV_SEG_CODED | SP_KV_SEG_DENSE */
    uint32_t index_bytes;  /* 2 or 4 (coded), 0 otherwise */
    uint32_t mask_bytes;   /* ceil(group/8); 0 when DENSE */
    uint32_t n_folded;     /* decode tokens folded in (sp_kv_segment_fold_tail), positions >= l */
    int64_t l;             /* prompt length */
    int64_t window;        /* raw window tokens per KV head */
    uint64_t total_bytes;  /* whole segment incl. this header */
    uint64_t checksum;     /* XXH3-64 (see the layout above), computed with this field zero */
    uint64_t sec_off[SP_KV_SEC_COUNT]; /* byte offset from the segment start (0 = absent) */
    uint64_t sec_len[SP_KV_SEC_COUNT]; /* bytes used (the next section starts 4 KiB-aligned) */
    int64_t n_kept[SP_KV_SEG_MAX_KV_HEADS];  /* listed context tokens per KV head */
    int64_t n_ent_k[SP_KV_SEG_MAX_KV_HEADS]; /* K entries per KV head (coded) */
    int64_t n_ent_v[SP_KV_SEG_MAX_KV_HEADS]; /* V entries per KV head (coded) */
} sp_kv_seg_header;

/* Per-KV-head views into the segment bytes (NULL when the section is absent). */
typedef struct sp_kv_seg_head {
    int64_t n_kept, n_ent_k, n_ent_v;
    const int32_t *pos;                 /* [n_kept]; NULL = dense (position i) */
    const uint8_t *mask;                /* [n_kept][mask_bytes]; NULL = dense (all bits) */
    const void *k_idx, *v_idx;          /* [n_kept] uint16_t or uint32_t (index_bytes) */
    const uint16_t *k_mag, *v_mag;      /* [n_kept] fp16 */
    const uint16_t *k_cb, *v_cb;        /* [n_ent][d] fp16 unit */
    const uint16_t *win_k, *win_v;      /* [window][d] fp16, K pre-RoPE */
    const uint16_t *raw_k, *raw_v;      /* [n_kept][d] fp16, K pre-RoPE */
} sp_kv_seg_head;

typedef struct sp_kv_segment {
    void *buf;                          /* the bytes (owned when `owned`) */
    size_t size;
    bool owned;
    const sp_kv_seg_header *hdr;        /* = buf */
    int group;                          /* n_q_heads / n_kv_heads */
    int64_t members;                    /* membership bits set over every listed token and query
                                           head: counted where the bytes were host memory (build,
                                           open) and carried by view_at, so statistics never read
                                           the masks of a segment in device memory */
    sp_kv_seg_head head[SP_KV_SEG_MAX_KV_HEADS];
} sp_kv_segment;

/* Codebook summary of a build, per layer (optional output). */
typedef struct sp_kv_build_info {
    int64_t coded_vectors;   /* listed tokens over all KV heads */
    int64_t entries_k, entries_v;
    double seconds_codebook; /* wall time of the codebook builds */
} sp_kv_build_info;

/* Build a layer segment. k, v: [n_kv_heads][l][d] fp32 (K pre-RoPE), l and heads from sel.
 * coded: run the codebook (thresholds theta_k, theta_v, multiplicities from the masks); else the
 * listed tokens are stored raw fp16. info may be NULL. Returns 0 or -EINVAL / -ENOMEM; on error
 * seg is left empty (safe to free). */
int sp_kv_segment_build(sp_kv_segment *seg, int layer, const float *k, const float *v, int d,
                        const sp_kv_selection *sel, bool coded, float theta_k, float theta_v,
                        sp_kv_build_info *info);
/* The same with the codebooks built on backend be (NULL: here); k, v and the outputs stay host
 * memory (the CPU backend; a device build needs the device path of the model). */
int sp_kv_segment_build_on(sp_backend_t *be, sp_kv_segment *seg, int layer, const float *k, const float *v,
                           int d, const sp_kv_selection *sel, bool coded, float theta_k, float theta_v,
                           sp_kv_build_info *info);

/* How a segment's codebooks are made (sp_kv_segment_build_opts). */
typedef struct sp_kv_code_opts {
    bool coded;              /* run the codebook (else the listed tokens are stored raw fp16) */
    float theta_k, theta_v;  /* strict cosine thresholds */
    bool centroid;           /* entries are their members' normalized mean direction
                                (sp_codebook_centroids) instead of the first member's */
} sp_kv_code_opts;

/* sp_kv_segment_build_on with the coding options in one struct. */
int sp_kv_segment_build_opts(sp_backend_t *be, sp_kv_segment *seg, int layer, const float *k,
                             const float *v, int d, const sp_kv_selection *sel,
                             const sp_kv_code_opts *co, sp_kv_build_info *info);

/* Validate bytes as a segment and make a view (not owned). Checks magic, version, shape, section
 * bounds/alignment/lengths against the counts, the checksum when verify is true (-EBADMSG with a
 * message on mismatch), positions in range and ascending, entry indices < entry counts. Returns 0,
 * -EINVAL (malformed) or -EBADMSG (checksum). */
int sp_kv_segment_open(sp_kv_segment *seg, const void *bytes, size_t size, bool verify);

/* Free an owned buffer and clear the struct (accepts NULL and zeroed structs). */
void sp_kv_segment_free(sp_kv_segment *seg);

/* The serialized form is the buffer itself: its size in bytes (0 for an empty struct). */
size_t sp_kv_segment_size(const sp_kv_segment *seg);

/* ---- decode tail ---------------------------------------------------------------------------- */

/* Decode tokens of one layer, appended after the segment; kept by every query head (no decode
 * eviction). Capacity is fixed at init: appends never allocate. For a coded segment each token's
 * K and V directions are matched against the segment's codebook plus the entries the tail added
 * (cos > θ -> reference the best entry, never updated; else a new tail entry). Indices >= the
 * segment's n_ent refer to tail entry (index - n_ent). */
typedef struct sp_kv_tail {
    int n_kv_heads, d;
    bool coded;
    int64_t cap, n;              /* capacity and tokens appended */
    float theta_k, theta_v;
    void *mem;                   /* one allocation, carved below */
    size_t mem_bytes;
    int32_t *pos;                /* [cap] original positions */
    uint32_t *k_idx, *v_idx;     /* [n_kv_heads][cap] (coded) */
    uint16_t *k_mag, *v_mag;     /* [n_kv_heads][cap] fp16 (coded) */
    uint16_t *k_ent, *v_ent;     /* [n_kv_heads][cap][d] fp16 unit, new entries (coded) */
    int64_t *n_new_k, *n_new_v;  /* [n_kv_heads] new entries (coded) */
    uint16_t *raw_k, *raw_v;     /* [n_kv_heads][raw_cap][d] fp16: every token (uncoded), or a ring
                                    of the last raw_window tokens (coded, raw_window > 0) */
    int64_t raw_window;          /* coded tails: the last raw_window tokens are held raw and coded
                                    one by one as they leave the window; 0 = coded at append */
    int64_t raw_cap;             /* rows per KV head of raw_k / raw_v (0 = none) */
    bool batch;                  /* `decode_coding = batch`: tokens leaving the window are coded
                                    raw_window at a time by Algorithm 1 over the batch (new
                                    entries per batch), not one by one against the codebook */
    int64_t n_coded;             /* batch tails: tokens 0..n_coded-1 are coded, the rest raw */
} sp_kv_tail;

/* Whether tail token j (0 <= j < t->n) is held raw (else coded: k_idx/v_idx/k_mag/v_mag). */
static inline bool sp_kv_tail_is_raw(const sp_kv_tail *t, int64_t j)
{
    if (!t->coded)
        return true;
    return t->batch ? j >= t->n_coded : j >= t->n - t->raw_window;
}

/* Tail tokens held raw (all of an uncoded tail; a coded one's window, plus for a batch tail the
 * tokens waiting for the next batch). */
static inline int64_t sp_kv_tail_n_raw(const sp_kv_tail *t)
{
    if (!t->coded)
        return t->n;
    if (t->batch)
        return t->n - t->n_coded;
    return t->n < t->raw_window ? t->n : t->raw_window;
}

/* Row of tail token j of KV head h in raw_k / raw_v (valid when sp_kv_tail_is_raw). */
static inline size_t sp_kv_tail_raw_row(const sp_kv_tail *t, int h, int64_t j)
{
    return (size_t)h * (size_t)t->raw_cap + (size_t)(t->coded ? j % t->raw_cap : j);
}

/* Allocate a tail for seg with room for cap tokens. Returns 0, -EINVAL or -ENOMEM. */
int sp_kv_tail_init(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                    float theta_v);

/* Same, with a rolling raw window for a coded segment (`[compression] decode_window`): the last
 * raw_window decode tokens stay raw fp16 (a ring of raw_window rows), and a token is coded
 * against the codebook when it leaves the window - from its fp16 copy, by the same best-match /
 * new-entry rule as coding at append. raw_window is ignored for an uncoded segment (its tail is
 * raw anyway). Returns 0, -EINVAL (raw_window < 0) or -ENOMEM. */
int sp_kv_tail_init_window(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                           float theta_v, int64_t raw_window);
/* Same, choosing how tokens leaving the window are coded (`[compression] decode_coding`):
 * batch = false codes each one as it leaves (sp_kv_tail_init_window); batch = true (needs
 * raw_window > 0) keeps up to 2·raw_window tokens raw and, when that many are waiting, codes the
 * oldest raw_window of them together by Algorithm 1 (sp_codebook_build over the batch, every
 * token with the same multiplicity: a tail token is kept by every query head); the batch's entries
 * are appended as tail entries - the paper's "repeat the process for the remaining tokens". The
 * last raw_window tokens are always raw. A batch allocates scratch (sp_codebook_build), so an
 * append of a batch tail can fail with -ENOMEM (the tail is then unchanged). */
int sp_kv_tail_init_coding(sp_kv_tail *t, const sp_kv_segment *seg, int64_t cap, float theta_k,
                           float theta_v, int64_t raw_window, bool batch);
void sp_kv_tail_free(sp_kv_tail *t); /* accepts NULL and zeroed structs */

/* The coding of one vector of a decode token (the step sp_kv_tail_append makes per KV head, and the
 * CPU reference of the backends' codebook_code op): split x [d] into magnitude (fp16 in *mag_out) and
 * direction, match against seg_cb [seg_n][d] and tail_ent [*tail_n][d] (fp16 units); the segment
 * entry wins when both are above theta and its cosine is >= the tail's; with neither the direction
 * is appended as tail entry *tail_n (incremented). Returns the index in the combined numbering
 * (tail entries after the segment's). The caller keeps room for one more tail entry. */
uint32_t sp_kv_tail_code_vector(const uint16_t *seg_cb, int64_t seg_n, uint16_t *tail_ent,
                                int64_t *tail_n, int d, const float *x, float theta, uint16_t *mag_out);

/* A view of the same segment at other bytes (a streamed copy): *out = *seg with every section
 * pointer moved to `bytes`. Parses nothing (the header stays the one validated at placement); the
 * bytes must be a copy of seg's. */
void sp_kv_segment_view_at(sp_kv_segment *out, const sp_kv_segment *seg, const void *bytes);

/* Append one token: k, v [n_kv_heads][d] fp32 (K pre-RoPE) at original position pos. Returns 0,
 * or -ENOSPC when the tail is full (nothing written). No allocation. */
int sp_kv_tail_append(sp_kv_tail *t, const sp_kv_segment *seg, const float *k, const float *v,
                      int32_t pos);

/* ---- reconstruction and accounting ---------------------------------------------------------- */

/* Tokens attention sees for one KV head: listed + window + tail. */
int64_t sp_kv_segment_tokens(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head);

/* Explicit reconstruction (tests, references) of one KV head in the order listed, window, tail:
 * k and v [n][d] fp32 (K pre-RoPE: k = m·C_K[idx] or raw fp16), pos [n], mask [n] (group bits).
 * tail may be NULL. Any output may be NULL. Returns n or a negative errno. */
int64_t sp_kv_segment_reconstruct(const sp_kv_segment *seg, const sp_kv_tail *tail, int kv_head,
                                  float *k, float *v, int32_t *pos, uint64_t *mask);

typedef struct sp_kv_seg_stats {
    uint64_t bytes_content;   /* entries + indices + magnitudes + positions + masks + raw window +
                                 raw kept + used tail: the compressed cache's true bytes */
    uint64_t bytes_segment;   /* the segment buffer incl. header and 4 KiB padding */
    uint64_t bytes_tail_alloc;/* tail capacity (allocated whether used or not) */
    uint64_t bytes_fp16;      /* fp16 GQA cache (n_kv heads, K and V) for the same tokens:
                                 l + folded + tail */
    double true_ratio;        /* bytes_content / bytes_fp16: the headline number (§4.6) */
    double alloc_ratio;       /* (bytes_segment + bytes_tail_alloc) / bytes_fp16 */
    /* Paper r (eq. 15) as r1·r2·r3, interpretation "vectors only" (indices, magnitudes,
     * positions and masks are not counted; they are in true_ratio):
     *   r1 eviction: mean over query heads of kept tokens (listed+window+tail) / all tokens
     *   r2 codebook: stored d-vectors (entries + raw, K and V) / d-vectors of the per-query-head
     *      repeated cache of the kept tokens (2·Σ_q kept_q)
     *   r3 GQA repeat: n_q_heads / n_kv_heads
     *   r = r1·r2·r3 = stored d-vectors / d-vectors of the fp16 GQA cache. */
    double paper_r1, paper_r2, paper_r3, paper_r;
} sp_kv_seg_stats;

/* Write-back of the decode tail: a new segment (owned by out) whose listed tokens are seg's
 * followed by the tail's tokens (membership: every query head), with the tail's new codebook
 * entries appended to the codebooks (tail indices already use the combined numbering) or its raw
 * K/V appended. The window is unchanged. Afterwards the caller frees seg and resets the tail
 * (sp_kv_tail_reset) against the new segment. Returns 0, -EINVAL (tail of another shape, tail
 * positions not increasing past the listed ones) or -ENOMEM. */
int sp_kv_segment_fold_tail(sp_kv_segment *out, const sp_kv_segment *seg, const sp_kv_tail *tail);

/* Forget the tail's tokens and new entries (capacity kept; no allocation). A tail with raw tokens
 * in a coded window cannot be folded (-ENOTSUP from sp_kv_segment_fold_tail). */
void sp_kv_tail_reset(sp_kv_tail *t);

/* Fill the accounting of a segment (+ optional tail). Never fails on a valid segment. */
void sp_kv_segment_stats(const sp_kv_segment *seg, const sp_kv_tail *tail, sp_kv_seg_stats *st);

#endif
