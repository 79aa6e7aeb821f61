/* placement.h - which tier holds each layer's KV segment (DESIGN §6), decided once per prefill
 * from the configuration and the real segment sizes.
 *
 * Policy:
 *   1. The deepest `resident_deep_layers` layers are pinned to the device tier. If they do not fit
 *      in what the device budget leaves after the bytes already charged there (weights, scratch,
 *      decode tails: `used`), planning fails.
 *   2. The other layers are ranked by how long they may stay on the device: with spill order
 *      shallow-first (the default) the shallowest layers leave first, so the rank is deep -> shallow;
 *      with deep-first it is shallow -> deep. Walking that rank, layers fill the device, then the
 *      host, then the nvme tier. Each tier takes a contiguous run of the rank: once a layer does
 *      not fit, it and every later-ranked layer go to a slower tier (predictable "which layers
 *      leave first", at the cost of not back-filling a gap with a smaller later layer).
 *   3. Layers not on the device are streamed at decode time (runtime/scheduler.h): the device then
 *      also holds R = min(d + 1, streamed) slots (R = 1 for d = 0) of the largest streamed segment,
 *      and the host one staging buffer of that size. These are charged when the device run is
 *      chosen, so the device keeps the longest run that still leaves room for the slots.
 *   4. Budgets are never exceeded: the nvme tier is charged in 4 KiB-rounded bytes (what the spill
 *      file holds); when the layers do not fit anywhere, planning fails with a message naming the
 *      tier, the bytes needed and the budget key.
 * The same arithmetic is what sp_tiers_alloc / sp_tiers_seg_put / sp_sched_create charge, so a
 * plan that succeeds can be carried out on tiers whose `used` matched the plan's input.
 *
 * Thread-safety: pure functions.
 */
#ifndef SP_PLACEMENT_H
#define SP_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "tier.h"

typedef struct {
    int n_layers;
    const size_t *seg_bytes;          /* [n_layers] serialized segment bytes per layer */
    uint64_t budget[SP_TIER_COUNT];   /* bytes; 0 = unlimited */
    uint64_t used[SP_TIER_COUNT];     /* bytes already charged per tier (weights, scratch, ...) */
    int resident_deep_layers;         /* 0..n_layers */
    sp_spill_order order;
    int prefetch_depth;               /* d >= 0 */
    bool nvme_unavailable;            /* the spill directory cannot be used: no nvme tier */
    size_t slot_granule;              /* device slots are charged sp_tier_dma_round(slot, granule)
                                         (0/1: exact; sp_tiers_dma_granule() matches the tiers) */
} sp_placement_opts;

typedef struct {
    int layers[SP_TIER_COUNT];        /* layers placed per tier */
    uint64_t seg_bytes[SP_TIER_COUNT];/* segment bytes charged per tier (nvme: 4 KiB-rounded) */
    uint64_t need[SP_TIER_COUNT];     /* used + segments + slots/staging: the tier's total after */
    int n_streamed;                   /* layers not on the device */
    int n_slots;                      /* device slots R (0 when nothing is streamed) */
    size_t slot_bytes;                /* device bytes per slot: the largest streamed segment, rounded
                                         per slot_granule (0 when nothing is streamed) */
} sp_placement_summary;

/* Fill the options' placement knobs from a configuration (budgets, resident_deep_layers, order,
 * prefetch_depth); n_layers, seg_bytes and used are left for the caller. */
void sp_placement_opts_from_config(sp_placement_opts *o, const sp_config *cfg);

/* Decide each layer's tier: tier_out[n_layers]. sum may be NULL. Returns 0, -EINVAL (bad options,
 * resident_deep_layers > n_layers) or -ENOSPC when the layers cannot be placed within the budgets
 * (message: which tier, bytes needed vs available, and the config key to raise). */
int sp_placement_plan(const sp_placement_opts *o, sp_tier_kind *tier_out, sp_placement_summary *sum);

/* One line per tier: layers (as ranges, e.g. "0-11,14") and bytes vs budget. */
void sp_placement_print(const sp_placement_opts *o, const sp_tier_kind *tier,
                        const sp_placement_summary *sum, FILE *out);

#endif
