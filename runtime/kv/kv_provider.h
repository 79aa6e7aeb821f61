/* kv_provider.h - where a context's compressed layer segments live (the seam for tiered placement).
 *
 * Default (no provider set): the context owns every layer segment in host memory and decode reads it
 * in place; nothing below is called and nothing is copied.
 *
 * With a provider (sp_ctx_set_kv_provider, before the first prefill), the context hands each layer's
 * serialized segment (kv_segment.h, DESIGN §5.1: one self-describing, checksummed, 4 KiB-aligned
 * byte range) to place() right after prefill compression and drops its own copy. During every
 * decode step (and every later prefill token, which is appended like a decode token) the model
 * calls step_begin() once, then for each layer in order acquire() -> attention -> release(). The
 * bytes returned by acquire() must stay readable and unchanged until the matching release(); the
 * model opens a non-allocating view on them (sp_kv_segment_open, verify = false) each time.
 * Decode tails (the tokens appended after compression) stay in the context; the provider only ever
 * sees the prefill segments. sp_ctx_recompress() places every layer again (the provider replaces
 * the old bytes of that layer); sp_ctx_free() and sp_ctx_reset() do not call the provider: the
 * provider's owner frees what it holds after the context is gone.
 *
 * Calls come from the thread that drives the context, never concurrently. Every callback returns
 * 0 or a negative errno; an error fails the prefill/decode call that made it (the message should be
 * set with sp_error()). The first four callbacks are required; view is optional.
 */
#ifndef SP_KV_PROVIDER_H
#define SP_KV_PROVIDER_H

#include <stddef.h>

struct sp_kv_segment;

typedef struct sp_kv_provider {
    void *user;
    /* After prefill compression: take the serialized segment of `layer` (bytes, size; the caller
     * frees its copy after the call returns). 0 or -errno. */
    int (*place)(void *user, int layer, const void *bytes, size_t size);
    /* Start of a decode step, before layer 0 (prefetch the first d layers). */
    int (*step_begin)(void *user);
    /* Block until layer's bytes are readable in memory (8-byte aligned at least); valid until
     * release(). */
    int (*acquire)(void *user, int layer, const void **bytes, size_t *size);
    int (*release)(void *user, int layer);
    /* Optional: the host view of layer's segment (its header parsed once, when placed; valid until
     * the layer is placed again). With it the model never parses the acquired bytes: it hands the
     * view plus the bytes' address to the backend (and rebases the view onto the bytes only where
     * they are host memory). NULL: the model validates the acquired bytes itself
     * (sp_kv_segment_open, verify = false), which needs them host-readable. */
    const struct sp_kv_segment *(*view)(void *user, int layer);
} sp_kv_provider;

#endif
