/* ctx_tiering.h - tiers and a tiered KV provider for one model context, made from the config. */
#ifndef SP_CTX_TIERING_H
#define SP_CTX_TIERING_H

#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "kv_tiered.h"
#include "model.h"

/* Accounting on a CPU-only run (DESIGN §6: weights and scratch are accounted):
 *   - the weights stay in the memory-mapped GGUF, i.e. host memory: charged to the host tier (tag
 *     weights; the GGUF file size). On a GPU run they would be charged to the device tier;
 *   - the context's activation and scratch buffers and its decode tails are what decode computes on:
 *     charged to the device tier (tag scratch);
 *   - KV segments, streaming slots and the staging buffer: charged by the provider (tag kv/staging).
 * Not charged: the prefill's transient full-precision cache (and captured scores), which a CPU
 * prefill computes in ordinary host memory and frees right after compression.
 * Tiering is attached only when a policy compresses (segments exist) and a device or host budget
 * is set; otherwise every layer would stay resident anyway and the context keeps its segments. */
typedef struct sp_kv_tiering sp_kv_tiering_t;

/* Create tiers and the provider from cfg for ctx (before its first prefill) and set it on ctx.
 * *out = NULL (and 0 returned) when tiering is not needed. Returns 0 or a negative errno with a
 * message (a reservation that does not fit names the tier and the budget key). */
int sp_kv_tiering_attach(sp_kv_tiering_t **out, const sp_config *cfg, const sp_model_t *m,
                         sp_ctx_t *ctx, bool compressing);

/* After the first prefill: charge the decode tails to the device tier, then plan and move the
 * segments. Accepts NULL (no-op). Returns 0 or a negative errno with a message. */
int sp_kv_tiering_after_prefill(sp_kv_tiering_t *tg, sp_ctx_t *ctx);

/* Print the per-tier summary to `out` (may be NULL) and write the JSON statistics to json_path
 * (may be NULL or ""). Accepts tg == NULL (no-op). Returns 0 or a negative errno (JSON file). */
int sp_kv_tiering_report(sp_kv_tiering_t *tg, FILE *out, const char *json_path);

/* Free the provider and the tiers (removing the spill file). Call after the context is freed.
 * Accepts NULL. */
void sp_kv_tiering_free(sp_kv_tiering_t *tg);

sp_kv_tiered_t *sp_kv_tiering_provider_of(sp_kv_tiering_t *tg);

#endif
