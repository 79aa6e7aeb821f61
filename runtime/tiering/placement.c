/* placement.c - the placement policy (see placement.h).
 *
 * DESIGN: O(n²) in the layer count (n <= a few hundred): for each candidate length k of the device
 * run, the slot size is the largest segment outside the run. The arithmetic is in uint64_t with
 * "available" = budget - used (UINT64_MAX when unlimited), so no sum can wrap for real sizes.
 */
#include "placement.h"

#include "sp_error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define UNLIMITED UINT64_MAX

static uint64_t round4k(uint64_t n) { return (n + 4095) / 4096 * 4096; }

static const char *budget_key(sp_tier_kind t)
{
    return t == SP_TIER_DEVICE ? "[tiers] device_budget"
         : t == SP_TIER_HOST   ? "[tiers] host_budget"
                               : "[tiers] nvme_budget";
}

void sp_placement_opts_from_config(sp_placement_opts *o, const sp_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->budget[SP_TIER_DEVICE] = cfg->tiers.device_budget;
    o->budget[SP_TIER_HOST] = cfg->tiers.host_budget;
    o->budget[SP_TIER_NVME] = cfg->tiers.nvme_budget;
    o->resident_deep_layers = (int)cfg->tiers.resident_deep_layers;
    o->order = cfg->spill.order;
    o->prefetch_depth = (int)cfg->spill.prefetch_depth;
}

/* Bytes left on tier t, or UNLIMITED. -ENOSPC when already over (reported by the caller). */
static int avail(const sp_placement_opts *o, sp_tier_kind t, uint64_t *out)
{
    if (!o->budget[t]) {
        *out = UNLIMITED;
        return 0;
    }
    if (o->used[t] > o->budget[t])
        return sp_error(ENOSPC, "placement: tier %s already holds %" PRIu64 " bytes, over its "
                                "budget of %" PRIu64 " (%s)", sp_tier_name(t), o->used[t],
                        o->budget[t], budget_key(t));
    *out = o->budget[t] - o->used[t];
    return 0;
}

static int slots_for(int d, int n_streamed)
{
    if (n_streamed == 0)
        return 0;
    return d + 1 < n_streamed ? d + 1 : n_streamed;
}

int sp_placement_plan(const sp_placement_opts *o, sp_tier_kind *tier_out, sp_placement_summary *sum)
{
    sp_placement_summary local;
    if (!sum)
        sum = &local;
    memset(sum, 0, sizeof *sum);
    if (!o || !tier_out || o->n_layers <= 0 || !o->seg_bytes || o->prefetch_depth < 0 ||
        o->resident_deep_layers < 0)
        return sp_error(EINVAL, "placement: bad options");
    const int L = o->n_layers;
    if (o->resident_deep_layers > L)
        return sp_error(EINVAL, "placement: [tiers] resident_deep_layers = %d exceeds the %d layers",
                        o->resident_deep_layers, L);
    uint64_t av[SP_TIER_COUNT];
    for (int t = 0; t < SP_TIER_COUNT; t++) {
        int rc = avail(o, (sp_tier_kind)t, &av[t]);
        if (rc < 0)
            return rc;
    }
    if (o->nvme_unavailable)
        av[SP_TIER_NVME] = 0;

    /* 1. pinned deep layers */
    const int first_pinned = L - o->resident_deep_layers;
    uint64_t pinned = 0;
    for (int l = first_pinned; l < L; l++)
        pinned += o->seg_bytes[l];
    if (pinned > av[SP_TIER_DEVICE])
        return sp_error(ENOSPC, "placement: the %d deepest layers ([tiers] resident_deep_layers) need "
                                "%" PRIu64 " bytes on the device tier, but only %" PRIu64 " of its "
                                "%" PRIu64 "-byte budget are left after %" PRIu64 " bytes of weights/"
                                "scratch; raise [tiers] device_budget or lower resident_deep_layers",
                        o->resident_deep_layers, pinned, av[SP_TIER_DEVICE],
                        o->budget[SP_TIER_DEVICE], o->used[SP_TIER_DEVICE]);

    /* 2. rank of the other layers: best tier first */
    const int nf = first_pinned;
    int *rank = malloc((size_t)(nf ? nf : 1) * sizeof *rank);
    if (!rank)
        return sp_error(ENOMEM, "placement: out of memory");
    for (int i = 0; i < nf; i++)
        rank[i] = o->order == SP_SPILL_SHALLOW_FIRST ? nf - 1 - i : i;

    /* 3. longest device run that leaves room for the streaming slots */
    int k = nf;
    uint64_t run = 0;
    for (int i = 0; i < nf; i++)
        run += o->seg_bytes[rank[i]];
    size_t slot = 0, dev_slot = 0; /* largest streamed segment; what one device slot is charged */
    int R = 0;
    for (;; k--) {
        slot = 0;
        for (int i = k; i < nf; i++)
            if (o->seg_bytes[rank[i]] > slot)
                slot = o->seg_bytes[rank[i]];
        dev_slot = sp_tier_dma_round(slot, o->slot_granule);
        R = slots_for(o->prefetch_depth, nf - k);
        uint64_t need = pinned + run + (uint64_t)R * dev_slot;
        if (need <= av[SP_TIER_DEVICE])
            break;
        if (k == 0) {
            free(rank);
            return sp_error(ENOSPC, "placement: the device tier cannot hold the %d pinned layers "
                                    "(%" PRIu64 " bytes) plus %d streaming slot%s of %zu bytes "
                                    "([spill] prefetch_depth = %d): %" PRIu64 " bytes needed, %" PRIu64
                                    " left of the %" PRIu64 "-byte budget after %" PRIu64 " bytes of "
                                    "weights/scratch; raise [tiers] device_budget, lower "
                                    "resident_deep_layers or prefetch_depth",
                            o->resident_deep_layers, pinned, R, R == 1 ? "" : "s", dev_slot,
                            o->prefetch_depth, need, av[SP_TIER_DEVICE], o->budget[SP_TIER_DEVICE],
                            o->used[SP_TIER_DEVICE]);
        }
        run -= o->seg_bytes[rank[k - 1]];
    }
    for (int l = first_pinned; l < L; l++)
        tier_out[l] = SP_TIER_DEVICE;
    for (int i = 0; i < k; i++)
        tier_out[rank[i]] = SP_TIER_DEVICE;
    sum->n_streamed = nf - k;
    sum->n_slots = R;
    sum->slot_bytes = R ? dev_slot : 0;
    sum->layers[SP_TIER_DEVICE] = o->resident_deep_layers + k;
    sum->seg_bytes[SP_TIER_DEVICE] = pinned + run;
    sum->need[SP_TIER_DEVICE] = o->used[SP_TIER_DEVICE] + pinned + run + (uint64_t)R * dev_slot;

    /* 4. host run, after the staging buffer */
    uint64_t host = 0;
    int h = k;
    if (sum->n_streamed > 0) {
        if (slot > av[SP_TIER_HOST]) {
            free(rank);
            return sp_error(ENOSPC, "placement: the host tier cannot hold the %zu-byte staging "
                                    "buffer for streamed layers: %" PRIu64 " bytes left of the %" PRIu64
                                    "-byte budget ([tiers] host_budget)", slot, av[SP_TIER_HOST],
                            o->budget[SP_TIER_HOST]);
        }
        for (; h < nf && host + o->seg_bytes[rank[h]] <= av[SP_TIER_HOST] - slot; h++) {
            host += o->seg_bytes[rank[h]];
            tier_out[rank[h]] = SP_TIER_HOST;
        }
    }
    sum->layers[SP_TIER_HOST] = h - k;
    sum->seg_bytes[SP_TIER_HOST] = host;
    sum->need[SP_TIER_HOST] = o->used[SP_TIER_HOST] + host + (sum->n_streamed ? slot : 0);

    /* 5. the rest on nvme */
    uint64_t nv = 0;
    for (int i = h; i < nf; i++) {
        nv += round4k(o->seg_bytes[rank[i]]);
        tier_out[rank[i]] = SP_TIER_NVME;
    }
    free(rank);
    sum->layers[SP_TIER_NVME] = nf - h;
    sum->seg_bytes[SP_TIER_NVME] = nv;
    sum->need[SP_TIER_NVME] = o->used[SP_TIER_NVME] + nv;
    if (nf - h > 0 && o->nvme_unavailable)
        return sp_error(ENOSPC, "placement: %d layer%s (%" PRIu64 " bytes) fit neither the device "
                                "nor the host tier and the nvme tier is unavailable (spill directory "
                                "unusable); raise [tiers] device_budget / host_budget or fix [spill] "
                                "dir", nf - h, nf - h == 1 ? "" : "s", nv);
    if (nv > av[SP_TIER_NVME])
        return sp_error(ENOSPC, "placement: %d layer%s need %" PRIu64 " bytes on the nvme tier "
                                "(device and host are full), but only %" PRIu64 " of its %" PRIu64
                                "-byte budget are left; raise [tiers] nvme_budget, host_budget or "
                                "device_budget", nf - h, nf - h == 1 ? "" : "s", nv,
                        av[SP_TIER_NVME], o->budget[SP_TIER_NVME]);
    return 0;
}

void sp_placement_print(const sp_placement_opts *o, const sp_tier_kind *tier,
                        const sp_placement_summary *sum, FILE *out)
{
    for (int t = 0; t < SP_TIER_COUNT; t++) {
        char ranges[512] = "";
        size_t n = 0;
        for (int l = 0; l < o->n_layers && n < sizeof ranges - 16; l++) {
            if (tier[l] != (sp_tier_kind)t || (l > 0 && tier[l - 1] == (sp_tier_kind)t))
                continue;
            int e = l;
            while (e + 1 < o->n_layers && tier[e + 1] == (sp_tier_kind)t)
                e++;
            if (e > l)
                n += (size_t)snprintf(ranges + n, sizeof ranges - n, "%s%d-%d", n ? "," : "", l, e);
            else
                n += (size_t)snprintf(ranges + n, sizeof ranges - n, "%s%d", n ? "," : "", l);
        }
        fprintf(out, "  %-6s %2d layers [%s]  segments %" PRIu64 " B, tier total %" PRIu64 " B",
                sp_tier_name((sp_tier_kind)t), sum->layers[t], ranges, sum->seg_bytes[t],
                sum->need[t]);
        if (o->budget[t])
            fprintf(out, " of %" PRIu64 " B\n", o->budget[t]);
        else
            fprintf(out, " (unlimited)\n");
    }
    if (sum->n_streamed)
        fprintf(out, "  streamed %d layers through %d device slot%s of %zu B\n", sum->n_streamed,
                sum->n_slots, sum->n_slots == 1 ? "" : "s", sum->slot_bytes);
}
