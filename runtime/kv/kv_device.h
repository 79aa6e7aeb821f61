/* kv_device.h - one layer's compressed KV cache in a backend's memory (DESIGN §5.2 on a device):
 * the segment's bytes and its decode tail live in backend buffers, beside the host views that
 * describe them (the segment's parsed header and the tail's layout and token count), so decode
 * appends and attends with backend ops only: no host read of device memory on the hot path.
 *
 * A decode step per layer is three queued ops and one 4-byte device copy: the token's position
 * into the tail, the codebook match of K and of V (SP_OP_CODEBOOK_CODE) or, for an uncoded layer,
 * the fp16 store of the raw K and V (SP_OP_KV_STORE), then segment attention (SP_OP_SEGATTN). The
 * host mirrors only what it decides itself: the position and the token count; the tail's entry
 * counts and indices are written by the device and read back only by sp_kv_dev_pull_tail.
 *
 * Supported tails: coded at append (decode_window = 0) and uncoded ones. A coded tail with a raw
 * window, or batch coding, is refused at placement (-ENOTSUP with the key to change).
 */
#ifndef SP_KV_DEVICE_H
#define SP_KV_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kv_segment.h"

typedef struct sp_kv_dev_layer {
    sp_buffer_t *seg;        /* the segment's bytes when the context keeps them, else NULL (a KV
                                provider holds them and hands out their address per step) */
    sp_buffer_t *meta;       /* int64 [4][n_kv]: K entry offsets, K counts, V offsets, V counts */
    sp_buffer_t *tail;       /* the tail's memory (tail->mem_bytes), same carving as the host's */
} sp_kv_dev_layer;

/* Copy tail's (empty) memory and the codebook offsets into new buffers of be and, with keep_bytes,
 * seg's bytes too; size be's segment-attention scratch for the tail at full capacity. budget may
 * be NULL. On error dl is left empty. */
int sp_kv_dev_place(sp_backend_t *be, sp_kv_dev_layer *dl, const sp_kv_segment *seg,
                    const sp_kv_tail *tail, bool keep_bytes, const sp_budget *budget);
/* The kept segment bytes (a backend pointer), or NULL. */
const void *sp_kv_dev_seg_bytes(const sp_kv_dev_layer *dl);
void sp_kv_dev_free(sp_kv_dev_layer *dl); /* accepts NULL and zeroed structs */

/* Append one decode token to the tail of the segment whose bytes are at seg_bytes (a backend
 * pointer: sp_kv_dev_seg_bytes or the provider's): k, v backend pointers to its pre-RoPE K and V
 * rows ([n_kv][d] fp32);
 * its position pos is on the host and, as the same int32, at pos_off of pos_buf (copied on the
 * compute stream, so the host never writes device memory it might still be reading). Updates the
 * host tail's pos[] and n. -ENOSPC when the tail is full (nothing queued). */
int sp_kv_dev_append(sp_backend_t *be, sp_kv_dev_layer *dl, const sp_kv_segment *seg, const void *seg_bytes,
                     sp_kv_tail *tail, const float *k, const float *v, const sp_buffer_t *pos_buf, size_t pos_off, int32_t pos);

/* Append one decode token to a tail in host memory (tail->mem) through be's SP_OP_CODEBOOK_CODE
 * (a backend that computes on host memory: the CPU one) -- the same op the device path queues, so
 * the CPU run codes new tokens with the backend's kernel too. seg: the host segment (its bytes
 * host-readable). Tails with a raw window or batch coding, and uncoded ones, are appended on the
 * host (sp_kv_tail_append). k, v: host [n_kv][d] fp32. */
int sp_kv_tail_append_op(sp_backend_t *be, const sp_kv_segment *seg, sp_kv_tail *tail, const float *k,
                         const float *v, int32_t pos);

/* Read the device tail back into tail->mem (entry counts, indices, magnitudes, entries): for
 * statistics and tests, never on the decode path (one synchronous copy). */
int sp_kv_dev_pull_tail(sp_backend_t *be, const sp_kv_dev_layer *dl, sp_kv_tail *tail);

#endif
