/* test_placement.c - the placement policy: hand-computed tables, then thousands of random
 * combinations (layer counts, segment sizes, budgets, weights/scratch already charged, pinned
 * layers, spill order, prefetch depth, nvme unavailable, slot granule) checked against an
 * exhaustive search over every (device run, host run) split and against the invariants: pinned layers on the device,
 * budgets never exceeded (slots and staging included), spill order respected. */
#include <criterion/criterion.h>

#include "placement.h"
#include "sp_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D SP_TIER_DEVICE
#define H SP_TIER_HOST
#define N SP_TIER_NVME

typedef struct {
    const char *name;
    int n;
    size_t sizes[8];
    uint64_t budget[3], used[3];
    int pinned;
    sp_spill_order order;
    int d;
    bool no_nvme;
    int want_rc;        /* 0 or -ENOSPC / -EINVAL */
    const char *tiers;  /* expected tier per layer: 'D', 'H', 'N' */
    const char *msg;    /* substring of the error message */
} hand_case;

static const hand_case hand[] = {
    {"unlimited: all on the device", 4, {100, 200, 300, 400}, {0, 0, 0}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 2, false, 0, "DDDD", NULL},
    /* 6 layers of 100, layer 5 pinned, d = 1 (R = 2 slots), rank 4,3,2,1,0:
     * device run k needs 100 + 100k + 2·100 while at least 2 layers stream */
    {"device exactly full incl. two slots", 6, {100, 100, 100, 100, 100, 100}, {400, 0, 0},
     {0, 0, 0}, 1, SP_SPILL_SHALLOW_FIRST, 1, false, 0, "HHHHDD", NULL},
    {"one byte short: the run shrinks", 6, {100, 100, 100, 100, 100, 100}, {399, 0, 0}, {0, 0, 0},
     1, SP_SPILL_SHALLOW_FIRST, 1, false, 0, "HHHHHD", NULL},
    {"no room for the slots fails with the key", 6, {100, 100, 100, 100, 100, 100}, {299, 0, 0},
     {0, 0, 0}, 1, SP_SPILL_SHALLOW_FIRST, 1, false, -ENOSPC, NULL, "device_budget"},
    {"d=0 needs one slot", 6, {100, 100, 100, 100, 100, 100}, {299, 0, 0}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, false, 0, "HHHHHD", NULL},
    {"d=0, one more layer", 6, {100, 100, 100, 100, 100, 100}, {300, 0, 0}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, false, 0, "HHHHDD", NULL},
    {"deep-first keeps the shallow layers", 6, {100, 100, 100, 100, 100, 100}, {400, 0, 0},
     {0, 0, 0}, 1, SP_SPILL_DEEP_FIRST, 1, false, 0, "DHHHHD", NULL},
    /* used 500 of 1000: pinned 400 + 3 slots of 300 cannot fit */
    {"weights count against the device", 4, {100, 200, 300, 400}, {1000, 0, 0}, {500, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 2, false, -ENOSPC, NULL, "weights/scratch"},
    /* nothing pinned, d = 0: 500 left -> only the slot of the largest (400) */
    {"same with nothing pinned and d=0", 4, {100, 200, 300, 400}, {1000, 0, 0}, {500, 0, 0}, 0,
     SP_SPILL_SHALLOW_FIRST, 0, false, 0, "HHHH", NULL},
    /* host budget: staging 300 + layers in rank 2,1,0 (sizes 300 200 100): host 700: staging 300,
     * then 300 (600), then 200 -> 800 > 700 -> stop; layers 1, 0 to nvme */
    {"host run then nvme", 4, {100, 200, 300, 400}, {700, 700, 0}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, false, 0, "NNHD", NULL},
    {"nvme unavailable fails naming the dir", 4, {100, 200, 300, 400}, {700, 700, 0}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, true, -ENOSPC, NULL, "[spill] dir"},
    /* nvme charged in 4 KiB: two layers -> 8192 > 8000 */
    {"nvme budget counts 4 KiB blocks", 4, {100, 200, 300, 400}, {700, 700, 8000}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, false, -ENOSPC, NULL, "nvme_budget"},
    {"nvme budget exactly two blocks", 4, {100, 200, 300, 400}, {700, 700, 8192}, {0, 0, 0}, 1,
     SP_SPILL_SHALLOW_FIRST, 0, false, 0, "NNHD", NULL},
    {"pinned layers do not fit", 3, {10, 20, 30}, {49, 0, 0}, {0, 0, 0}, 2, SP_SPILL_SHALLOW_FIRST,
     0, false, -ENOSPC, NULL, "resident_deep_layers"},
    {"every layer pinned", 3, {10, 20, 30}, {60, 0, 0}, {0, 0, 0}, 3, SP_SPILL_SHALLOW_FIRST, 4,
     false, 0, "DDD", NULL},
    {"nothing pinned, nothing fits on the device but slots", 3, {10, 20, 30}, {30, 0, 0}, {0, 0, 0},
     0, SP_SPILL_SHALLOW_FIRST, 0, false, 0, "HHH", NULL},
    {"pinned more than layers", 3, {10, 20, 30}, {0, 0, 0}, {0, 0, 0}, 4, SP_SPILL_SHALLOW_FIRST, 0,
     false, -EINVAL, NULL, "exceeds"},
    {"already over budget", 3, {10, 20, 30}, {100, 0, 0}, {101, 0, 0}, 0, SP_SPILL_SHALLOW_FIRST, 0,
     false, -ENOSPC, NULL, "already holds"},
    {"host too small for staging", 3, {10, 20, 30}, {50, 10, 0}, {0, 0, 0}, 1, SP_SPILL_SHALLOW_FIRST,
     0, false, -ENOSPC, NULL, "staging"},
};

static char tier_char(sp_tier_kind t) { return t == D ? 'D' : t == H ? 'H' : 'N'; }

static void fill_opts(sp_placement_opts *o, const hand_case *c)
{
    memset(o, 0, sizeof *o);
    o->n_layers = c->n;
    o->seg_bytes = c->sizes;
    for (int t = 0; t < 3; t++) {
        o->budget[t] = c->budget[t];
        o->used[t] = c->used[t];
    }
    o->resident_deep_layers = c->pinned;
    o->order = c->order;
    o->prefetch_depth = c->d;
    o->nvme_unavailable = c->no_nvme;
}

Test(placement, hand_computed_cases)
{
    for (size_t i = 0; i < sizeof hand / sizeof hand[0]; i++) {
        const hand_case *c = &hand[i];
        sp_placement_opts o;
        fill_opts(&o, c);
        sp_tier_kind tier[8];
        sp_placement_summary sum;
        int rc = sp_placement_plan(&o, tier, &sum);
        cr_assert_eq(rc, c->want_rc, "%s: rc %d (%s)", c->name, rc, sp_last_error());
        if (rc == 0) {
            char got[9] = {0};
            for (int l = 0; l < c->n; l++)
                got[l] = tier_char(tier[l]);
            cr_assert_str_eq(got, c->tiers, "%s", c->name);
        } else {
            cr_assert(strstr(sp_last_error(), c->msg), "%s: message '%s' lacks '%s'", c->name,
                      sp_last_error(), c->msg);
        }
    }
}

Test(placement, slots_are_charged_at_the_granule)
{
    /* 6 x 100 B, layer 5 pinned, d = 1 (2 slots), device 400 B: exact slots leave room for one more
     * layer ("HHHHDD"); 150-byte slots do not ("HHHHHD"); a granule over twice the slot is ignored */
    static const struct { size_t granule; const char *tiers; size_t slot; } cases[] = {
        {0, "HHHHDD", 100}, {1, "HHHHDD", 100}, {150, "HHHHHD", 150}, {256, "HHHHDD", 100}};
    size_t sizes[6] = {100, 100, 100, 100, 100, 100};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sp_placement_opts o = {.n_layers = 6, .seg_bytes = sizes, .budget = {400, 0, 0},
                               .resident_deep_layers = 1, .order = SP_SPILL_SHALLOW_FIRST,
                               .prefetch_depth = 1, .slot_granule = cases[i].granule};
        sp_tier_kind tier[6];
        sp_placement_summary sum;
        cr_assert_eq(sp_placement_plan(&o, tier, &sum), 0, "%s", sp_last_error());
        char got[7] = {0};
        for (int l = 0; l < 6; l++)
            got[l] = tier_char(tier[l]);
        cr_assert_str_eq(got, cases[i].tiers, "granule %zu", cases[i].granule);
        cr_assert_eq(sum.slot_bytes, cases[i].slot, "granule %zu", cases[i].granule);
        cr_assert_leq(sum.need[D], 400);
    }
}

/* ---- exhaustive reference over every contiguous split ---------------------------------------- */

static uint64_t r4k(uint64_t n) { return (n + 4095) / 4096 * 4096; }

/* Feasibility of device run k and host run h-k over rank; fills tier on success. */
static bool feasible(const sp_placement_opts *o, const int *rank, int nf, int k, int h,
                     sp_tier_kind *tier, uint64_t need[3])
{
    int L = o->n_layers;
    uint64_t dev = o->used[D], host = o->used[H], nv = o->used[N];
    for (int l = nf; l < L; l++) {
        dev += o->seg_bytes[l];
        tier[l] = D;
    }
    size_t slot = 0;
    for (int i = 0; i < nf; i++) {
        int l = rank[i];
        if (i < k) {
            dev += o->seg_bytes[l];
            tier[l] = D;
            continue;
        }
        slot = o->seg_bytes[l] > slot ? o->seg_bytes[l] : slot;
        if (i < h) {
            host += o->seg_bytes[l];
            tier[l] = H;
        } else {
            nv += r4k(o->seg_bytes[l]);
            tier[l] = N;
        }
    }
    int ns = nf - k;
    int R = ns == 0 ? 0 : (o->prefetch_depth + 1 < ns ? o->prefetch_depth + 1 : ns);
    /* a device slot of at least half a granule is charged rounded up to the granule */
    size_t g = o->slot_granule, dev_slot = g > 1 && slot >= g / 2 ? (slot + g - 1) / g * g : slot;
    dev += (uint64_t)R * dev_slot;
    if (ns)
        host += slot;
    need[0] = dev;
    need[1] = host;
    need[2] = nv;
    if (o->budget[D] && dev > o->budget[D])
        return false;
    if (o->budget[H] && host > o->budget[H])
        return false;
    if (nf - h > 0 && o->nvme_unavailable)
        return false;
    if (o->budget[N] && nv > o->budget[N])
        return false;
    return true;
}

static uint32_t seed = 99;
static uint32_t rnd(void)
{
    seed ^= seed << 13; seed ^= seed >> 17; seed ^= seed << 5;
    return seed;
}

Test(placement, random_combinations_match_exhaustive_search)
{
    int ok = 0, fail = 0, streamed_cases = 0, nvme_cases = 0;
    for (int it = 0; it < 40000; it++) {
        int L = 1 + (int)(rnd() % 24);
        size_t sizes[24];
        uint64_t total = 0, biggest = 0;
        bool uniform = rnd() % 2; /* real segments are of similar sizes */
        size_t base = 1 + rnd() % 100000;
        for (int l = 0; l < L; l++) {
            sizes[l] = uniform ? base - base / 5 + rnd() % (base / 5 * 2 + 1)
                               : 1 + rnd() % (rnd() % 2 ? 5000 : 100000);
            total += sizes[l];
            biggest = sizes[l] > biggest ? sizes[l] : biggest;
        }
        sp_placement_opts o;
        memset(&o, 0, sizeof o);
        o.n_layers = L;
        o.seg_bytes = sizes;
        for (int t = 0; t < 3; t++) {
            o.used[t] = rnd() % 3 == 0 ? rnd() % (total / 4 + 1) : 0;
            switch (rnd() % 4) {
            case 0: o.budget[t] = 0; break;
            case 1: o.budget[t] = 1 + rnd() % (total + 4096 * (uint64_t)L); break;
            default: /* near the interesting edge: a few segments' worth above what is used */
                o.budget[t] = o.used[t] + biggest * (1 + rnd() % (unsigned)(L + 1)) - rnd() % 64;
            }
        }
        o.resident_deep_layers = (int)(rnd() % (unsigned)(L + 1));
        o.order = rnd() % 2 ? SP_SPILL_SHALLOW_FIRST : SP_SPILL_DEEP_FIRST;
        o.prefetch_depth = (int)(rnd() % 3 ? rnd() % 3 : 4);
        o.nvme_unavailable = rnd() % 6 == 0;
        o.slot_granule = rnd() % 3 == 0 ? 4096 * (1 + rnd() % 16) : rnd() % 2; /* huge-page slots */

        bool over = false;
        for (int t = 0; t < 3; t++)
            over |= o.budget[t] && o.used[t] > o.budget[t];
        int nf = L - o.resident_deep_layers;
        int rank[24];
        for (int i = 0; i < nf; i++)
            rank[i] = o.order == SP_SPILL_SHALLOW_FIRST ? nf - 1 - i : i;
        /* reference: largest feasible device run, then largest host run */
        sp_tier_kind want[24];
        uint64_t want_need[3];
        bool found = false;
        uint64_t pinned = 0;
        for (int l = nf; l < L; l++)
            pinned += sizes[l];
        for (int k = nf; k >= 0 && !found && !over; k--) {
            /* the device run alone must fit (the policy fixes it before looking at slower tiers) */
            uint64_t dneed[3];
            sp_tier_kind tmp[24];
            feasible(&o, rank, nf, k, nf, tmp, dneed);
            if (o.budget[D] && dneed[0] > o.budget[D])
                continue;
            for (int h = nf; h >= k; h--) {
                feasible(&o, rank, nf, k, h, tmp, dneed);
                if (o.budget[H] && dneed[1] > o.budget[H])
                    continue;
                /* host run fixed: the rest must fit on nvme */
                found = feasible(&o, rank, nf, k, h, want, want_need);
                break;
            }
            break; /* the device run is fixed at the largest k that fits */
        }
        sp_tier_kind got[24];
        sp_placement_summary sum;
        int rc = sp_placement_plan(&o, got, &sum);
        if (!found) {
            cr_assert_eq(rc, -ENOSPC, "case %d: plan succeeded where the search found nothing", it);
            cr_assert_neq(sp_last_error()[0], '\0');
            fail++;
            continue;
        }
        cr_assert_eq(rc, 0, "case %d: %s", it, sp_last_error());
        ok++;
        for (int l = 0; l < L; l++)
            cr_assert_eq(got[l], want[l], "case %d layer %d: tier %d, search says %d", it, l, got[l],
                         want[l]);
        for (int t = 0; t < 3; t++) {
            cr_assert_eq(sum.need[t], want_need[t], "case %d tier %d need", it, t);
            cr_assert(!o.budget[t] || sum.need[t] <= o.budget[t], "case %d: tier %d over budget", it, t);
        }
        for (int l = nf; l < L; l++)
            cr_assert_eq(got[l], D, "pinned layer %d off the device", l);
        for (int i = 1; i < nf; i++)
            cr_assert_geq(got[rank[i]], got[rank[i - 1]], "case %d: spill order broken", it);
        streamed_cases += sum.n_streamed > 0;
        nvme_cases += sum.layers[N] > 0;
    }
    cr_log_info("%d placed, %d refused, %d streamed, %d on nvme", ok, fail, streamed_cases,
                nvme_cases);
    /* the generator must exercise every outcome */
    cr_assert_gt(ok, 2000);
    cr_assert_gt(fail, 1000);
    cr_assert_gt(streamed_cases, 1000);
    cr_assert_gt(nvme_cases, 500);
}

Test(placement, from_config_and_print)
{
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "tiers.device_budget=64MiB", NULL), 0);
    cr_assert_eq(sp_config_set(&c, "spill.order=deep-first", NULL), 0);
    cr_assert_eq(sp_config_set(&c, "tiers.resident_deep_layers=2", NULL), 0);
    sp_placement_opts o;
    sp_placement_opts_from_config(&o, &c);
    cr_assert_eq(o.budget[D], 64ull << 20);
    cr_assert_eq(o.order, SP_SPILL_DEEP_FIRST);
    cr_assert_eq(o.resident_deep_layers, 2);
    cr_assert_eq(o.prefetch_depth, c.spill.prefetch_depth);
    size_t sizes[6] = {5000, 5000, 5000, 5000, 5000, 5000};
    o.n_layers = 6;
    o.seg_bytes = sizes;
    o.prefetch_depth = 1;
    o.budget[D] = 5000 * 2 + 5000 + 2 * 5000; /* pinned + one layer + 2 slots */
    o.budget[H] = 5000 * 2;                  /* staging + one layer */
    sp_tier_kind t[6];
    sp_placement_summary sum;
    cr_assert_eq(sp_placement_plan(&o, t, &sum), 0, "%s", sp_last_error());
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sp_placement_print(&o, t, &sum, f);
    fclose(f);
    cr_assert(strstr(text, "device  3 layers [0,4-5]"), "%s", text);
    cr_assert(strstr(text, "host    1 layers [1]"), "%s", text);
    cr_assert(strstr(text, "nvme    2 layers [2-3]"), "%s", text);
    cr_assert(strstr(text, "streamed 3 layers through 2 device slots of 5000 B"), "%s", text);
    free(text);
}
