/* kv_tiered.c - the tiered KV provider (see kv_tiered.h).
 *
 * DESIGN: the provider holds one sp_seg_loc per layer (the only copy of the layer's bytes) and,
 * once planned, a scheduler over those locations. Invariants:
 *   - `planned` implies every layer is placed, locs[l].tier == plan[l] and `sched` exists;
 *   - at most one layer is handed out at a time: `held` (through the scheduler's ring), `side`
 *     (a synchronous read, out of order) or `failed` (ring acquire failed; the ring slot was
 *     already released, the caller's release is a no-op);
 *   - `next` is the layer the ring expects next inside a step; a step that stops early is drained
 *     at the next step_begin (acquire + release of the rest) so ring positions stay aligned.
 * Budgets: every byte goes through sp_tiers (segments, slots, staging, side and bounce buffers),
 * so a tier can never exceed its budget; a move that does not fit yet is retried after the other
 * moves of the pass (they free space on slower or faster tiers), and fails when a pass makes no
 * progress.
 */
#include "kv_tiered.h"

#include "kv_segment.h"
#include "sp_alloc.h"
#include "sp_error.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sp_kv_tiered {
    sp_kv_tiered_opts o;
    sp_tier_kind *force;      /* [L] copy of o.force, or NULL */
    sp_seg_loc *locs;         /* [L] */
    bool *have, *fresh;       /* [L] placed at all / placed since the last plan */
    int n_have, n_fresh;
    sp_tier_kind *plan;       /* [L] */
    sp_placement_opts popts;  /* last planning input (seg_bytes not kept) */
    bool planned;
    bool nvme_broken;         /* a write to the nvme tier failed for a reason other than budget */
    char nvme_why[640];       /* why (quoted by every later "no tier can take it") */
    sp_sched_t *sched;
    bool in_step;
    int next, held, failed, side_layer;
    bool side_paused;         /* the side read borrowed the scheduler's staging buffer */
    sp_tier_mem bounce;
    sp_kv_segment *views;     /* [L] host views of the placed segments (sp_kv_tiered_view) */
    void *headers;            /* [L][SP_KV_SEG_ALIGN] their headers, copied at place() */
    sp_kv_tiered_stats st;    /* placement counters + scheduler stats of retired schedulers */
    uint64_t *old_wait, *old_acq; /* [L] per-layer scheduler counters of retired schedulers */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t round4k(uint64_t n) { return (n + 4095) / 4096 * 4096; }

void sp_kv_tiered_opts_from_config(sp_kv_tiered_opts *o, const sp_config *cfg, sp_tiers_t *ts,
                                   int n_layers)
{
    memset(o, 0, sizeof *o);
    o->n_layers = n_layers;
    o->tiers = ts;
    o->resident_deep_layers = (int)cfg->tiers.resident_deep_layers;
    o->order = cfg->spill.order;
    o->prefetch_depth = (int)cfg->spill.prefetch_depth;
    o->verify_checksums = cfg->spill.verify_checksums;
}

sp_kv_tiered_t *sp_kv_tiered_create(const sp_kv_tiered_opts *o)
{
    if (!o || !o->tiers || o->n_layers <= 0 || o->prefetch_depth < 0 || o->resident_deep_layers < 0) {
        sp_error(EINVAL, "kv tiered: bad options");
        return NULL;
    }
    sp_kv_tiered_t *t = sp_calloc(1, sizeof *t);
    if (!t) {
        sp_error(ENOMEM, "kv tiered: out of memory");
        return NULL;
    }
    t->o = *o;
    sp_backend_retain(t->o.be); /* the scheduler copies on it until sp_kv_tiered_free */
    if (t->o.resident_deep_layers > o->n_layers)
        t->o.resident_deep_layers = o->n_layers;
    size_t L = (size_t)o->n_layers;
    t->locs = sp_calloc(L, sizeof *t->locs);
    t->have = sp_calloc(L, sizeof *t->have);
    t->fresh = sp_calloc(L, sizeof *t->fresh);
    t->plan = sp_calloc(L, sizeof *t->plan);
    t->old_wait = sp_calloc(L, sizeof *t->old_wait);
    t->old_acq = sp_calloc(L, sizeof *t->old_acq);
    t->views = sp_calloc(L, sizeof *t->views);
    t->headers = sp_calloc(L, SP_KV_SEG_ALIGN);
    if (o->force)
        t->force = sp_malloc(L * sizeof *t->force);
    if (!t->locs || !t->have || !t->fresh || !t->plan || !t->old_wait || !t->old_acq || !t->views || !t->headers ||
        (o->force && !t->force)) {
        sp_kv_tiered_free(t);
        sp_error(ENOMEM, "kv tiered: out of memory");
        return NULL;
    }
    for (size_t l = 0; l < L; l++) {
        t->locs[l].nvme_id = -1;
        t->locs[l].tier = SP_TIER_COUNT;
        if (o->force) {
            if ((unsigned)o->force[l] >= SP_TIER_COUNT) {
                sp_kv_tiered_free(t);
                sp_error(EINVAL, "kv tiered: bad forced tier for layer %zu", l);
                return NULL;
            }
            t->force[l] = o->force[l];
        }
    }
    t->o.force = NULL;
    t->held = t->failed = t->side_layer = -1;
    return t;
}

static void side_release(sp_kv_tiered_t *t)
{
    if (t->side_paused)
        sp_sched_resume(t->sched);
    t->side_paused = false;
    t->side_layer = -1;
}

static void retire_sched(sp_kv_tiered_t *t)
{
    if (!t->sched)
        return;
    side_release(t);
    sp_sched_stats s;
    sp_sched_sync(t->sched);
    sp_sched_get_stats(t->sched, &s);
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            t->st.sched.bytes[a][b] += s.bytes[a][b];
    t->st.sched.acquires += s.acquires;
    t->st.sched.hits += s.hits;
    t->st.sched.stalls += s.stalls;
    t->st.sched.wait_ns += s.wait_ns;
    t->st.sched.writebacks += s.writebacks;
    t->st.sched.steps += s.steps;
    for (int l = 0; l < t->o.n_layers; l++) {
        uint64_t acq, wait;
        sp_sched_layer_stats(t->sched, l, &acq, &wait);
        t->old_acq[l] += acq;
        t->old_wait[l] += wait;
    }
    sp_sched_free(t->sched);
    t->sched = NULL;
    t->in_step = false;
    t->held = t->failed = -1;
}

void sp_kv_tiered_free(sp_kv_tiered_t *t)
{
    if (!t)
        return;
    retire_sched(t);
    if (t->o.tiers) {
        sp_tiers_release(t->o.tiers, &t->bounce);
        for (int l = 0; t->have && l < t->o.n_layers; l++)
            if (t->have[l])
                sp_tiers_seg_free(t->o.tiers, &t->locs[l]);
    }
    free(t->force);
    free(t->locs);
    free(t->have);
    free(t->fresh);
    free(t->plan);
    free(t->old_wait);
    free(t->old_acq);
    free(t->views);
    free(t->headers);
    sp_backend_free(t->o.be);
    free(t);
}

/* Does n more bytes fit tier k's budget right now? */
static bool fits(sp_kv_tiered_t *t, sp_tier_kind k, size_t n)
{
    uint64_t b = sp_tiers_budget(t->o.tiers, k);
    uint64_t need = k == SP_TIER_NVME ? round4k(n) : n;
    return !b || (need <= b && sp_tiers_used(t->o.tiers, k, -1) <= b - need);
}

static void nvme_fault(sp_kv_tiered_t *t, const char *what)
{
    if (!t->nvme_broken) {
        snprintf(t->nvme_why, sizeof t->nvme_why, "%s", what);
        sp_notice("nvme tier unusable (%s); spilled layers are kept on the host/device tiers where "
                  "the budgets allow", what);
    }
    t->nvme_broken = true;
}

void sp_kv_tiered_nvme_disable(sp_kv_tiered_t *t, const char *why) { nvme_fault(t, why); }

/* First write of a layer: somewhere it can wait until the plan is made. */
static int put_provisional(sp_kv_tiered_t *t, int layer, const void *bytes, size_t size,
                           sp_seg_loc *out)
{
    sp_tier_kind order[3];
    int n = 0;
    bool pinned = layer >= t->o.n_layers - t->o.resident_deep_layers;
    if (t->force) {
        order[n++] = t->force[layer];
    } else if (pinned || !sp_tiers_budget(t->o.tiers, SP_TIER_DEVICE)) {
        order[n++] = SP_TIER_DEVICE;
        order[n++] = SP_TIER_HOST;
        order[n++] = SP_TIER_NVME;
    } else {
        order[n++] = SP_TIER_NVME;
        order[n++] = SP_TIER_HOST;
        order[n++] = SP_TIER_DEVICE;
    }
    char why[1024] = "";
    size_t wl = 0;
    for (int i = 0; i < n; i++) {
        sp_tier_kind k = order[i];
        if (k == SP_TIER_NVME && t->nvme_broken && !t->force)
            continue;
        bool room = fits(t, k, size);
        int rc = sp_tiers_seg_put(t->o.tiers, k, 0, bytes, size, out);
        if (rc == 0)
            return 0;
        if (k == SP_TIER_NVME && room)
            nvme_fault(t, sp_last_error());
        if (wl < sizeof why)
            wl += (size_t)snprintf(why + wl, sizeof why - wl, "%s%s", wl ? "; " : "", sp_last_error());
    }
    if (t->nvme_broken && !t->force)
        return sp_error(ENOSPC, "kv tiered: layer %d: no tier can take its %zu-byte segment: %s; "
                                "the nvme tier is not used because %s", layer, size, why, t->nvme_why);
    return sp_error(ENOSPC, "kv tiered: layer %d: no tier can take its %zu-byte segment: %s", layer,
                    size, why);
}

int sp_kv_tiered_place(sp_kv_tiered_t *t, int layer, const void *bytes, size_t size)
{
    if (!t || layer < 0 || layer >= t->o.n_layers || !bytes || !size)
        return sp_error(EINVAL, "kv tiered: bad place of layer %d", layer);
    uint64_t t0 = now_ns();
    if (t->planned) {
        /* a new prefill / recompression: the old plan and its ring are void */
        retire_sched(t);
        t->planned = false;
        memset(t->fresh, 0, (size_t)t->o.n_layers * sizeof *t->fresh);
        t->n_fresh = 0;
    }
    sp_seg_loc loc;
    /* Free the old copy first: its space is what the new one most likely needs. */
    if (t->have[layer]) {
        sp_tiers_seg_free(t->o.tiers, &t->locs[layer]);
        t->locs[layer].tier = SP_TIER_COUNT;
        t->have[layer] = false;
        t->n_have--;
        if (t->fresh[layer]) {
            t->fresh[layer] = false;
            t->n_fresh--;
        }
    }
    /* The host view: parsed here, once; decode never reads a header out of a slot. */
    sp_kv_segment v;
    int rc = sp_kv_segment_open(&v, bytes, size, false);
    if (rc < 0)
        return rc;
    void *hdr = (char *)t->headers + (size_t)layer * SP_KV_SEG_ALIGN;
    memcpy(hdr, bytes, SP_KV_SEG_ALIGN);
    sp_kv_segment_view_at(&t->views[layer], &v, bytes);
    t->views[layer].hdr = hdr;
    t->views[layer].buf = NULL; /* the bytes move: whoever uses the view says where they are */
    rc = put_provisional(t, layer, bytes, size, &loc);
    if (rc < 0)
        return rc;
    t->locs[layer] = loc;
    t->have[layer] = true;
    t->n_have++;
    t->fresh[layer] = true;
    t->n_fresh++;
    t->st.placed_bytes[loc.tier] += size;
    t->st.placed_layers[loc.tier]++;
    t->st.place_ns += now_ns() - t0;
    if (t->n_fresh == t->o.n_layers && !t->o.defer_plan)
        return sp_kv_tiered_finalize(t);
    return 0;
}

/* Move layer l to tier dst. Returns 0, 1 (does not fit yet: retry after other moves), or a
 * negative errno (message set; *nvme_failed when the nvme tier itself failed). */
static int move_layer(sp_kv_tiered_t *t, int l, sp_tier_kind dst, size_t max_size, bool *nvme_failed)
{
    sp_seg_loc *src = &t->locs[l];
    size_t size = src->size;
    if (!fits(t, dst, size))
        return 1;
    sp_seg_loc fresh;
    memset(&fresh, 0, sizeof fresh);
    fresh.nvme_id = -1;
    int rc;
    bool direct = (dst == SP_TIER_HOST && src->tier != SP_TIER_HOST) ||
                  (dst == SP_TIER_DEVICE && src->tier == SP_TIER_NVME &&
                   sp_tiers_device_is_host(t->o.tiers));
    if (direct) {
        /* read straight into the new allocation (host memory, or the CPU arena's device) */
        rc = sp_tiers_alloc(t->o.tiers, dst, SP_TAG_KV, size, 0, &fresh.mem);
        if (rc == -ENOSPC)
            return 1;
        if (rc < 0)
            return rc;
        rc = sp_tiers_seg_read(t->o.tiers, src, fresh.mem.ptr, size);
        if (rc < 0) {
            sp_tiers_release(t->o.tiers, &fresh.mem);
            return sp_error(-rc, "kv tiered: layer %d: moving %s -> %s failed: %s", l,
                            sp_tier_name(src->tier), sp_tier_name(dst), sp_last_error());
        }
        fresh.tier = dst;
        fresh.size = size;
    } else {
        const void *from;
        if (src->tier == SP_TIER_HOST) {
            from = src->mem.ptr;
        } else {
            if (!t->bounce.ptr) {
                rc = sp_tiers_alloc(t->o.tiers, SP_TIER_HOST, SP_TAG_STAGING, max_size, 0, &t->bounce);
                if (rc == -ENOSPC)
                    return 1;
                if (rc < 0)
                    return rc;
            }
            rc = sp_tiers_seg_read(t->o.tiers, src, t->bounce.ptr, t->bounce.size);
            if (rc < 0)
                return sp_error(-rc, "kv tiered: layer %d: moving %s -> %s failed: %s", l,
                                sp_tier_name(src->tier), sp_tier_name(dst), sp_last_error());
            from = t->bounce.ptr;
        }
        rc = sp_tiers_seg_put(t->o.tiers, dst, 0, from, size, &fresh);
        if (rc < 0) {
            if (dst == SP_TIER_NVME)
                *nvme_failed = true;
            return sp_error(-rc, "kv tiered: layer %d: moving %s -> %s failed: %s", l,
                            sp_tier_name(src->tier), sp_tier_name(dst), sp_last_error());
        }
    }
    t->st.migrated_bytes[src->tier][dst] += size;
    sp_tiers_seg_free(t->o.tiers, src);
    *src = fresh;
    return 0;
}

static int migrate_all(sp_kv_tiered_t *t, bool *nvme_failed)
{
    size_t max_size = 0;
    int pending = 0;
    for (int l = 0; l < t->o.n_layers; l++) {
        max_size = t->locs[l].size > max_size ? t->locs[l].size : max_size;
        pending += t->locs[l].tier != t->plan[l];
    }
    int rc = 0;
    while (pending > 0 && rc == 0) {
        int progress = 0;
        for (int l = 0; l < t->o.n_layers && rc == 0; l++) {
            if (t->locs[l].tier == t->plan[l])
                continue;
            int m = move_layer(t, l, t->plan[l], max_size, nvme_failed);
            if (m < 0)
                rc = m;
            else if (m == 0)
                progress++;
        }
        pending -= progress;
        if (rc == 0 && pending > 0 && progress == 0)
            rc = sp_error(ENOSPC, "kv tiered: %d layer%s cannot reach their planned tier: the "
                                  "budgets leave no room to move them (the moves need a free "
                                  "segment's worth on the way); raise the host or device budget",
                          pending, pending == 1 ? "" : "s");
    }
    sp_tiers_release(t->o.tiers, &t->bounce);
    return rc;
}

static int verify_host(void *user, int layer, const void *bytes, size_t size)
{
    (void)user;
    sp_kv_segment seg;
    int rc = sp_kv_segment_open(&seg, bytes, size, true);
    if (rc < 0)
        return sp_error(-rc, "layer %d: host-tier copy failed verification: %s", layer,
                        sp_last_error());
    sp_kv_segment_free(&seg);
    return 0;
}

static int make_plan(sp_kv_tiered_t *t)
{
    const int L = t->o.n_layers;
    size_t *sizes = sp_malloc((size_t)L * sizeof *sizes);
    if (!sizes)
        return sp_error(ENOMEM, "kv tiered: out of memory");
    sp_placement_opts *p = &t->popts;
    memset(p, 0, sizeof *p);
    p->n_layers = L;
    p->resident_deep_layers = t->o.resident_deep_layers;
    p->order = t->o.order;
    p->prefetch_depth = t->o.prefetch_depth;
    p->nvme_unavailable = t->nvme_broken;
    p->slot_granule = sp_tiers_dma_granule(t->o.tiers);
    for (int k = 0; k < SP_TIER_COUNT; k++) {
        p->budget[k] = sp_tiers_budget(t->o.tiers, (sp_tier_kind)k);
        p->used[k] = sp_tiers_used(t->o.tiers, (sp_tier_kind)k, -1);
    }
    for (int l = 0; l < L; l++) {
        const sp_seg_loc *c = &t->locs[l];
        sizes[l] = c->size;
        /* the plan is made as if our segments were not there yet */
        p->used[c->tier] -= c->tier == SP_TIER_NVME ? c->charged : c->mem.size;
    }
    p->seg_bytes = sizes;
    sp_placement_summary sum;
    int rc = sp_placement_plan(p, t->plan, &sum);
    /* The segment sizes are known only after a prefill that may have taken an hour: when the deep
     * layers asked to stay resident do not fit the device, pin fewer (a notice names the key)
     * instead of throwing the prefill away. Refused only when not even the streaming slots fit. */
    if (rc == -ENOSPC && p->resident_deep_layers > 0) {
        const int asked = p->resident_deep_layers;
        while (rc == -ENOSPC && p->resident_deep_layers > 0) {
            p->resident_deep_layers--;
            rc = sp_placement_plan(p, t->plan, &sum);
        }
        if (rc == 0) {
            sp_notice("placement: the %d deepest layers ([tiers] resident_deep_layers) do not fit the device "
                      "tier's budget with the streaming slots; pinned the %d deepest instead (raise [tiers] "
                      "device_budget to pin them all)", asked, p->resident_deep_layers);
            t->o.resident_deep_layers = p->resident_deep_layers;
        }
    }
    p->seg_bytes = NULL;
    free(sizes);
    return rc;
}

int sp_kv_tiered_finalize(sp_kv_tiered_t *t)
{
    if (!t)
        return sp_error(EINVAL, "kv tiered: NULL");
    if (t->planned)
        return 0;
    if (t->n_have < t->o.n_layers)
        return sp_error(EINVAL, "kv tiered: only %d of %d layers placed", t->n_have, t->o.n_layers);
    uint64_t t0 = now_ns();
    int rc = 0;
    if (t->force) {
        memcpy(t->plan, t->force, (size_t)t->o.n_layers * sizeof *t->plan);
    } else {
        for (int attempt = 0; attempt < 2; attempt++) {
            rc = make_plan(t);
            if (rc < 0)
                break;
            bool nvme_failed = false;
            rc = migrate_all(t, &nvme_failed);
            if (rc < 0 && nvme_failed && attempt == 0) {
                nvme_fault(t, sp_last_error());
                continue; /* plan again without the nvme tier */
            }
            break;
        }
    }
    if (rc == 0) {
        size_t slot = 0;
        for (int l = 0; l < t->o.n_layers; l++) {
            if (t->locs[l].tier != t->plan[l])
                rc = sp_error(EINVAL, "kv tiered: layer %d is on %s, planned %s", l,
                              sp_tier_name(t->locs[l].tier), sp_tier_name(t->plan[l]));
            if (t->locs[l].tier != SP_TIER_DEVICE && t->locs[l].size > slot)
                slot = t->locs[l].size;
        }
        if (rc == 0) {
            sp_sched_opts so = {.n_layers = t->o.n_layers, .prefetch_depth = t->o.prefetch_depth,
                                .tiers = t->o.tiers, .locs = t->locs, .slot_bytes = slot,
                                .verify = t->o.verify_checksums ? verify_host : NULL, .be = t->o.be};
            t->sched = sp_sched_create(&so);
            if (!t->sched)
                rc = sp_error(ENOSPC, "kv tiered: %s", sp_last_error());
        }
    }
    t->st.migrate_ns += now_ns() - t0;
    if (rc < 0)
        return rc;
    t->planned = true;
    t->in_step = false;
    t->next = 0;
    return 0;
}

static int ensure_planned(sp_kv_tiered_t *t)
{
    if (t->planned)
        return 0;
    if (t->n_have == 0)
        return sp_error(EINVAL, "kv tiered: no layer has been placed");
    return sp_kv_tiered_finalize(t);
}

int sp_kv_tiered_step_begin(sp_kv_tiered_t *t)
{
    if (!t)
        return sp_error(EINVAL, "kv tiered: NULL");
    if (t->n_have == 0)
        return 0; /* nothing placed (uncompressed context): nothing to prefetch */
    int rc = ensure_planned(t);
    if (rc < 0)
        return rc;
    if (t->side_layer >= 0)
        side_release(t);
    if (t->held >= 0) {
        sp_sched_release(t->sched, t->held);
        t->next = t->held + 1;
        t->held = -1;
    }
    t->failed = -1;
    if (t->in_step) {
        /* the previous step stopped early: walk the ring past its remaining layers */
        for (int l = t->next; l < t->o.n_layers; l++) {
            void *p;
            size_t n;
            sp_sched_acquire(t->sched, l, &p, &n);
            sp_sched_release(t->sched, l);
        }
    }
    rc = sp_sched_begin_step(t->sched);
    if (rc < 0)
        return rc;
    t->in_step = true;
    t->next = 0;
    return 0;
}

int sp_kv_tiered_acquire(sp_kv_tiered_t *t, int layer, const void **bytes, size_t *size)
{
    if (!t || !bytes || !size || layer < 0 || layer >= t->o.n_layers)
        return sp_error(EINVAL, "kv tiered: bad acquire of layer %d", layer);
    *bytes = NULL;
    *size = 0;
    int rc = ensure_planned(t);
    if (rc < 0)
        return rc;
    t->failed = -1; /* a failed acquire holds nothing; its release is optional */
    if (t->held >= 0 || t->side_layer >= 0)
        return sp_error(EINVAL, "kv tiered: acquire of layer %d while layer %d is still acquired",
                        layer, t->held >= 0 ? t->held : t->side_layer);
    if (t->in_step && layer == t->next) {
        void *p;
        size_t n;
        rc = sp_sched_acquire(t->sched, layer, &p, &n);
        t->next = layer + 1;
        if (rc < 0) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", sp_last_error());
            sp_sched_release(t->sched, layer);
            t->failed = layer;
            if (t->next == t->o.n_layers)
                t->in_step = false;
            return sp_error(-rc, "%s", msg);
        }
        t->held = layer;
        *bytes = p;
        *size = n;
        return 0;
    }
    /* Out of step or out of order: a synchronous read that leaves the ring alone. Device and host
     * copies are readable in place (host ones verified first); nvme is read into the scheduler's
     * staging buffer, borrowed while the worker is held. */
    const sp_seg_loc *loc = &t->locs[layer];
    if (loc->tier == SP_TIER_DEVICE || loc->tier == SP_TIER_HOST) {
        rc = loc->tier == SP_TIER_HOST && t->o.verify_checksums
                 ? verify_host(NULL, layer, loc->mem.ptr, loc->size) : 0;
        if (rc < 0) {
            t->failed = layer;
            return rc;
        }
        t->side_layer = layer;
        *bytes = loc->mem.ptr;
        *size = loc->size;
        t->st.side_reads += loc->tier == SP_TIER_HOST;
        return 0;
    }
    void *buf;
    size_t cap;
    rc = sp_sched_pause(t->sched, &buf, &cap);
    if (rc == 0) {
        t->side_paused = true;
        rc = sp_tiers_seg_read(t->o.tiers, loc, buf, cap);
    }
    if (rc < 0) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", sp_last_error());
        side_release(t);
        t->failed = layer;
        return sp_error(-rc, "kv tiered: layer %d: read from %s failed: %s", layer,
                        sp_tier_name(loc->tier), msg);
    }
    t->st.side_reads++;
    t->side_layer = layer;
    *bytes = buf;
    *size = loc->size;
    return 0;
}

int sp_kv_tiered_release(sp_kv_tiered_t *t, int layer)
{
    if (!t)
        return sp_error(EINVAL, "kv tiered: NULL");
    if (layer >= 0 && layer == t->failed) {
        t->failed = -1;
        return 0;
    }
    if (layer >= 0 && layer == t->side_layer) {
        side_release(t);
        return 0;
    }
    if (layer < 0 || layer != t->held)
        return sp_error(EINVAL, "kv tiered: release of layer %d, which is not acquired", layer);
    int rc = sp_sched_release(t->sched, layer);
    t->held = -1;
    if (layer == t->o.n_layers - 1)
        t->in_step = false;
    return rc;
}

static int cb_place(void *u, int layer, const void *bytes, size_t size)
{
    return sp_kv_tiered_place(u, layer, bytes, size);
}
static int cb_step_begin(void *u) { return sp_kv_tiered_step_begin(u); }
static int cb_acquire(void *u, int layer, const void **bytes, size_t *size)
{
    return sp_kv_tiered_acquire(u, layer, bytes, size);
}
static int cb_release(void *u, int layer) { return sp_kv_tiered_release(u, layer); }
static const sp_kv_segment *cb_view(void *u, int layer) { return sp_kv_tiered_view(u, layer); }

const sp_kv_segment *sp_kv_tiered_view(const sp_kv_tiered_t *t, int layer)
{
    if (!t || layer < 0 || layer >= t->o.n_layers || !t->have[layer])
        return NULL;
    return &t->views[layer];
}

sp_kv_provider sp_kv_tiered_provider(sp_kv_tiered_t *t)
{
    return (sp_kv_provider){.user = t, .place = cb_place, .step_begin = cb_step_begin,
                            .acquire = cb_acquire, .release = cb_release, .view = cb_view};
}

sp_tier_kind sp_kv_tiered_layer_tier(const sp_kv_tiered_t *t, int layer)
{
    if (!t || layer < 0 || layer >= t->o.n_layers || !t->have[layer])
        return SP_TIER_COUNT;
    return t->locs[layer].tier;
}

const sp_seg_loc *sp_kv_tiered_loc(const sp_kv_tiered_t *t, int layer)
{
    if (!t || layer < 0 || layer >= t->o.n_layers || !t->have[layer])
        return NULL;
    return &t->locs[layer];
}

void sp_kv_tiered_get_stats(sp_kv_tiered_t *t, sp_kv_tiered_stats *out)
{
    *out = t->st;
    if (t->sched) {
        sp_sched_stats s;
        sp_sched_get_stats(t->sched, &s);
        for (int a = 0; a < SP_TIER_COUNT; a++)
            for (int b = 0; b < SP_TIER_COUNT; b++)
                out->sched.bytes[a][b] += s.bytes[a][b];
        out->sched.acquires += s.acquires;
        out->sched.hits += s.hits;
        out->sched.stalls += s.stalls;
        out->sched.wait_ns += s.wait_ns;
        out->sched.writebacks += s.writebacks;
        out->sched.steps += s.steps;
        out->n_slots = sp_sched_n_slots(t->sched);
    }
    for (int l = 0; l < t->o.n_layers; l++) {
        if (!t->have[l])
            continue;
        sp_tier_kind k = t->locs[l].tier;
        out->layers[k]++;
        out->bytes[k] += t->locs[l].size;
        if (k != SP_TIER_DEVICE && t->locs[l].size > out->slot_bytes)
            out->slot_bytes = t->locs[l].size;
    }
    if (!out->n_slots)
        out->slot_bytes = 0;
}

static void layer_wait(sp_kv_tiered_t *t, int l, uint64_t *acq, uint64_t *wait)
{
    sp_sched_layer_stats(t->sched, l, acq, wait);
    *acq += t->old_acq[l];
    *wait += t->old_wait[l];
}

void sp_kv_tiered_print_stats(sp_kv_tiered_t *t, FILE *out)
{
    sp_kv_tiered_stats s;
    sp_kv_tiered_get_stats(t, &s);
    sp_tier_kind *where = sp_malloc((size_t)t->o.n_layers * sizeof *where);
    if (!where)
        return;
    sp_placement_summary sum;
    memset(&sum, 0, sizeof sum);
    sp_placement_opts po = t->popts;
    po.n_layers = t->o.n_layers;
    for (int k = 0; k < SP_TIER_COUNT; k++) {
        po.budget[k] = sp_tiers_budget(t->o.tiers, (sp_tier_kind)k);
        sum.layers[k] = (int)s.layers[k];
        sum.need[k] = sp_tiers_used(t->o.tiers, (sp_tier_kind)k, -1);
    }
    for (int l = 0; l < t->o.n_layers; l++) {
        where[l] = t->have[l] ? t->locs[l].tier : SP_TIER_COUNT;
        if (t->have[l])
            sum.seg_bytes[where[l]] += where[l] == SP_TIER_NVME ? t->locs[l].charged : t->locs[l].size;
    }
    sum.n_streamed = (int)(s.layers[SP_TIER_HOST] + s.layers[SP_TIER_NVME]);
    sum.n_slots = s.n_slots;
    sum.slot_bytes = s.slot_bytes;
    fprintf(out, "tiers (%s placement, %d deepest layers resident, spill %s, prefetch_depth %d):\n",
            t->force ? "forced" : "policy", t->o.resident_deep_layers,
            t->o.order == SP_SPILL_SHALLOW_FIRST ? "shallow-first" : "deep-first",
            t->o.prefetch_depth);
    sp_placement_print(&po, where, &sum, out);
    free(where);
    fprintf(out, "  prefill: placed %.2f MB (device %.2f, host %.2f, nvme %.2f) in %.1f ms; plan + "
                 "moves %.1f ms",
            (double)(s.placed_bytes[0] + s.placed_bytes[1] + s.placed_bytes[2]) / 1e6,
            (double)s.placed_bytes[0] / 1e6, (double)s.placed_bytes[1] / 1e6,
            (double)s.placed_bytes[2] / 1e6, (double)s.place_ns / 1e6, (double)s.migrate_ns / 1e6);
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            if (s.migrated_bytes[a][b])
                fprintf(out, ", %s->%s %.2f MB", sp_tier_name((sp_tier_kind)a),
                        sp_tier_name((sp_tier_kind)b), (double)s.migrated_bytes[a][b] / 1e6);
    fprintf(out, "\n  decode: %" PRIu64 " steps, %" PRIu64 " streamed acquires, prefetch hits %" PRIu64
                 " (%.1f%%), stalls %" PRIu64 ", wait %.2f ms (%.3f ms/step)",
            s.sched.steps, s.sched.acquires, s.sched.hits,
            s.sched.acquires ? 100.0 * (double)s.sched.hits / (double)s.sched.acquires : 100.0,
            s.sched.stalls, (double)s.sched.wait_ns / 1e6,
            s.sched.steps ? (double)s.sched.wait_ns / 1e6 / (double)s.sched.steps : 0.0);
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            if (s.sched.bytes[a][b])
                fprintf(out, ", %s->%s %.2f MB", sp_tier_name((sp_tier_kind)a),
                        sp_tier_name((sp_tier_kind)b), (double)s.sched.bytes[a][b] / 1e6);
    fprintf(out, "\n");
    if (s.side_reads)
        fprintf(out, "  out-of-order reads: %" PRIu64 "\n", s.side_reads);
    if (s.layers[SP_TIER_NVME]) {
        sp_uring_store_t *st = sp_tiers_nvme_store(t->o.tiers);
        if (st) {
            sp_uring_store_stats ss;
            sp_uring_store_get_stats(st, &ss);
            fprintf(out, "  nvme file %s (%s): %" PRIu64 " B on disk for %" PRIu64 " live segments "
                         "(freed extents are punched out); peak extent %" PRIu64 " B\n",
                    sp_uring_store_path(st), sp_uring_store_mode_name(sp_uring_store_mode(st)),
                    ss.disk_bytes, ss.segments, ss.file_bytes);
        }
    }
}

void sp_kv_tiered_stats_json(sp_kv_tiered_t *t, FILE *out)
{
    sp_kv_tiered_stats s;
    sp_kv_tiered_get_stats(t, &s);
    fprintf(out, "{\"placement\":{\"mode\":\"%s\",\"order\":\"%s\",\"resident_deep_layers\":%d,"
                 "\"prefetch_depth\":%d,\"slots\":%d,\"slot_bytes\":%zu},\"tiers\":{",
            t->force ? "forced" : "policy",
            t->o.order == SP_SPILL_SHALLOW_FIRST ? "shallow-first" : "deep-first",
            t->o.resident_deep_layers, t->o.prefetch_depth, s.n_slots, s.slot_bytes);
    for (int k = 0; k < SP_TIER_COUNT; k++)
        fprintf(out, "%s\"%s\":{\"layers\":%" PRIu64 ",\"segment_bytes\":%" PRIu64 ",\"used\":%" PRIu64
                     ",\"budget\":%" PRIu64 ",\"placed_bytes\":%" PRIu64 "}",
                k ? "," : "", sp_tier_name((sp_tier_kind)k), s.layers[k], s.bytes[k],
                sp_tiers_used(t->o.tiers, (sp_tier_kind)k, -1),
                sp_tiers_budget(t->o.tiers, (sp_tier_kind)k), s.placed_bytes[k]);
    fprintf(out, "},\"place_ms\":%.3f,\"plan_ms\":%.3f,\"migrated\":{", (double)s.place_ns / 1e6,
            (double)s.migrate_ns / 1e6);
    bool first = true;
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            if (a != b) {
                fprintf(out, "%s\"%s->%s\":%" PRIu64, first ? "" : ",", sp_tier_name((sp_tier_kind)a),
                        sp_tier_name((sp_tier_kind)b), s.migrated_bytes[a][b]);
                first = false;
            }
    fprintf(out, "},\"decode\":{\"steps\":%" PRIu64 ",\"acquires\":%" PRIu64 ",\"hits\":%" PRIu64
                 ",\"stalls\":%" PRIu64 ",\"hit_rate\":%.4f,\"wait_ms\":%.3f,\"side_reads\":%" PRIu64
                 ",\"bytes\":{",
            s.sched.steps, s.sched.acquires, s.sched.hits, s.sched.stalls,
            s.sched.acquires ? (double)s.sched.hits / (double)s.sched.acquires : 1.0,
            (double)s.sched.wait_ns / 1e6, s.side_reads);
    first = true;
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            if (a != b) {
                fprintf(out, "%s\"%s->%s\":%" PRIu64, first ? "" : ",", sp_tier_name((sp_tier_kind)a),
                        sp_tier_name((sp_tier_kind)b), s.sched.bytes[a][b]);
                first = false;
            }
    fprintf(out, "}},\"per_layer\":[");
    for (int l = 0; l < t->o.n_layers; l++) {
        uint64_t acq, wait;
        layer_wait(t, l, &acq, &wait);
        fprintf(out, "%s{\"layer\":%d,\"tier\":\"%s\",\"bytes\":%zu,\"acquires\":%" PRIu64
                     ",\"wait_ms\":%.3f}",
                l ? "," : "", l, t->have[l] ? sp_tier_name(t->locs[l].tier) : "none",
                t->have[l] ? t->locs[l].size : (size_t)0, acq, (double)wait / 1e6);
    }
    fprintf(out, "]}");
}

int sp_kv_tiered_n_placed(const sp_kv_tiered_t *t) { return t ? t->n_have : 0; }
