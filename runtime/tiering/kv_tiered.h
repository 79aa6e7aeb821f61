/* kv_tiered.h - the tiered KV provider: a context's layer segments placed on the device / host /
 * nvme tiers by the placement policy (placement.h) and streamed back at decode time by the prefetch
 * scheduler (scheduler.h). Implements the sp_kv_provider seam (kv_provider.h).
 *
 * Life cycle:
 *   place(layer)   during prefill compression, layers arrive one by one (0 .. n-1). Placement needs
 *                  every size, so each segment is first written where it can wait: pinned deep
 *                  layers straight to the device; the others to the nvme tier (the spill write
 *                  happens while the next layer is compressed), or host/device when nvme is full or
 *                  unusable; with an unlimited device budget straight to the device. When the last
 *                  layer arrives the plan is made from the real sizes and the layers that belong on
 *                  a faster tier are moved there (nvme -> host/device reads are checksum-verified);
 *                  then the scheduler is created (d + 1 device slots, one host staging buffer).
 *                  Placing a layer again (sp_ctx_recompress) replaces its bytes and re-plans once
 *                  every layer has been placed again.
 *   step_begin()   starts a decode step; acquire(λ) / release(λ) in layer order use the scheduler's
 *                  ring, so layer λ+d is fetched while λ computes (d = [spill] prefetch_depth;
 *                  0 = synchronous on the caller's thread). A step abandoned half-way (an error
 *                  in the model) is drained at the next step_begin so the ring stays aligned.
 *   acquire outside a step, or out of order (statistics): synchronous; device and host copies are
 *                  handed out in place (host ones checksum-verified), nvme ones are read into the
 *                  scheduler's staging buffer while its worker is held (sp_sched_pause), so no
 *                  extra memory is needed; release resumes the worker.
 * Integrity: reads from nvme are verified by the store (XXH3-64, one re-read, then -EBADMSG);
 * reads from the host tier verify the segment's own checksum (kv_segment.h) when verify_checksums
 * is on. A failed fetch fails that acquire (and so the decode call) with a message: wrong bytes are
 * never handed out. Faults while writing (EIO, ENOSPC on disk, a missing or read-only spill
 * directory) make the nvme tier unavailable for this provider: layers fall back to host/device if
 * the budgets allow, else place() fails naming the directory and the budgets.
 *
 * Ownership: the provider does not own the tiers (they must outlive it); it owns every segment
 * copy it made; sp_kv_tiered_free releases them (and the nvme store removes its file when the
 * tiers are freed). Thread-safety: one caller thread (the context's); the scheduler's worker is
 * internal. No allocation in step_begin/acquire/release on the in-order path.
 */
#ifndef SP_KV_TIERED_H
#define SP_KV_TIERED_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "config.h"
#include "kv_provider.h"
#include "placement.h"
#include "scheduler.h"
#include "tier.h"

typedef struct sp_kv_tiered sp_kv_tiered_t;

typedef struct {
    int n_layers;
    sp_tiers_t *tiers;            /* not owned; outlives the provider */
    int resident_deep_layers;     /* [tiers] resident_deep_layers (clamped to n_layers) */
    sp_spill_order order;         /* [spill] order */
    int prefetch_depth;           /* [spill] prefetch_depth */
    bool verify_checksums;        /* [spill] verify_checksums: host-tier reads check the segment */
    const sp_tier_kind *force;    /* tests/benchmarks: [n_layers] exact tiers instead of the
                                     policy (still within budgets); NULL = policy */
    sp_backend_t *be;             /* the backend whose copy stream fills the device slots (events
                                     order fill -> compute -> refill), or NULL: synchronous tier copies */
    bool defer_plan;              /* do not plan at the last place(): the owner calls
                                     sp_kv_tiered_finalize (after charging what the prefill left on
                                     the tiers, e.g. decode tails), else the first step_begin does */
} sp_kv_tiered_opts;

/* Fill opts from a configuration for a model of n_layers layers (tiers must be set by caller). */
void sp_kv_tiered_opts_from_config(sp_kv_tiered_opts *o, const sp_config *cfg, sp_tiers_t *ts,
                                   int n_layers);

sp_kv_tiered_t *sp_kv_tiered_create(const sp_kv_tiered_opts *o); /* NULL on failure (message) */
void sp_kv_tiered_free(sp_kv_tiered_t *t);                     /* accepts NULL */

/* The host view of layer's segment, parsed when it was placed (header copied to host memory; the
 * section pointers are not to be dereferenced: rebase with sp_kv_segment_view_at). NULL when the
 * layer is not placed. */
const struct sp_kv_segment *sp_kv_tiered_view(const sp_kv_tiered_t *t, int layer);

/* The provider table for sp_ctx_set_kv_provider (user = t). */
sp_kv_provider sp_kv_tiered_provider(sp_kv_tiered_t *t);

/* The four callbacks, callable directly (tests, benchmarks). Return 0 or a negative errno. */
int sp_kv_tiered_place(sp_kv_tiered_t *t, int layer, const void *bytes, size_t size);
int sp_kv_tiered_step_begin(sp_kv_tiered_t *t);
int sp_kv_tiered_acquire(sp_kv_tiered_t *t, int layer, const void **bytes, size_t *size);
int sp_kv_tiered_release(sp_kv_tiered_t *t, int layer);

/* Plan and move now (normally automatic after the last place()). Returns 0 or a negative errno. */
int sp_kv_tiered_finalize(sp_kv_tiered_t *t);

/* Where layer lives now (SP_TIER_COUNT when not placed). */
sp_tier_kind sp_kv_tiered_layer_tier(const sp_kv_tiered_t *t, int layer);

/* The layer's home location (NULL when not placed): for statistics and fault-injection tests;
 * read-only for the caller. */
const sp_seg_loc *sp_kv_tiered_loc(const sp_kv_tiered_t *t, int layer);

typedef struct {
    sp_sched_stats sched;                  /* decode-time movement, summed over re-plans */
    uint64_t placed_bytes[SP_TIER_COUNT];  /* prefill writes, by the tier first written to */
    uint64_t placed_layers[SP_TIER_COUNT];
    uint64_t place_ns;                     /* time inside place() (writes incl.) */
    uint64_t migrated_bytes[SP_TIER_COUNT][SP_TIER_COUNT]; /* moves at plan time [from][to] */
    uint64_t migrate_ns;                   /* time spent planning and moving */
    uint64_t side_reads;                   /* out-of-order / out-of-step acquires */
    uint64_t layers[SP_TIER_COUNT];        /* where the layers are now */
    uint64_t bytes[SP_TIER_COUNT];         /* their bytes */
    int n_slots;                           /* device slots of the current scheduler */
    size_t slot_bytes;
} sp_kv_tiered_stats;

void sp_kv_tiered_get_stats(sp_kv_tiered_t *t, sp_kv_tiered_stats *out);

/* Human summary for `spindle run --stats`: one line per tier (layers, bytes, budget), prefill
 * writes and moves, decode acquires, prefetch hit rate, stalls and wait time, bytes per tier pair,
 * the nvme file and its I/O mode. */
void sp_kv_tiered_print_stats(sp_kv_tiered_t *t, FILE *out);

/* The same as one JSON object (no trailing newline), per-layer tier and wait time included. */
void sp_kv_tiered_stats_json(sp_kv_tiered_t *t, FILE *out);

/* ---- a context's tiering, as `spindle run` sets it up ---------------------------------------- */

/* Layers placed so far (0 before the first prefill or with no compression). NULL -> 0. */
int sp_kv_tiered_n_placed(const sp_kv_tiered_t *t);


/* Stop using the nvme tier (a failed probe of the spill dir): announce `why` once; placement keeps
 * segments on the host/device tiers, and a placement that then fails quotes `why`. */
void sp_kv_tiered_nvme_disable(sp_kv_tiered_t *t, const char *why);

#endif
