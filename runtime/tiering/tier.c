/* tier.c - tier budgets, spill policy and segment placement (see tier.h).
 *
 * DESIGN: a request is charged to a tier's budget under the mutex BEFORE memory is obtained or I/O
 * starts, and un-charged if that then fails, so concurrent callers can never jointly overshoot a
 * budget. The nvme budget is charged in 4 KiB-rounded bytes: what the spill file really holds.
 */
#include "tier.h"

#include "host_pool.h"
#include "huge_map.h"
#include "sp_alloc.h"
#include "sp_error.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct sp_tiers {
    pthread_mutex_t lock;
    sp_tiers_opts opts;
    sp_tier_device_ops dev;
    uint64_t used[SP_TIER_COUNT][SP_TAG_COUNT];
    sp_uring_store_t *store;
    bool store_failed;
    char store_error[512];
    uint64_t bounce_charged; /* the store's bounce buffers, charged to host/staging while it is open */
    uint64_t locked_host;    /* bytes of host-tier buffers that are mlocked or CUDA-pinned */
};

const char *sp_tier_name(sp_tier_kind t)
{
    static const char *const n[] = {"device", "host", "nvme"};
    return (unsigned)t < SP_TIER_COUNT ? n[t] : "?";
}

const char *sp_tier_tag_name(sp_tier_tag t)
{
    static const char *const n[] = {"weights", "scratch", "kv", "staging"};
    return (unsigned)t < SP_TAG_COUNT ? n[t] : "?";
}

/* ---- the CPU "device": capacity-limited host memory behind the same ops table ---- */

/* Every arena buffer is its own mapping (page-rounded), so a huge-page one (SP_TIER_DMA, see
 * mem_obtain) is freed by the same munmap. */
static size_t page_round(size_t size) { return (size ? size + 4095 : 4096) / 4096 * 4096; }
static void *cpu_alloc(void *ctx, size_t size)
{
    (void)ctx;
    if (sp_alloc_fault())
        return NULL;
    void *p = mmap(NULL, page_round(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
static void cpu_free(void *ctx, void *p, size_t size) { (void)ctx; munmap(p, page_round(size)); }
static int cpu_copy(void *ctx, void *dst, const void *src, size_t n)
{
    (void)ctx;
    memcpy(dst, src, n);
    return 0;
}
static const sp_tier_device_ops cpu_device = {"cpu-arena", cpu_alloc, cpu_free, cpu_copy, cpu_copy,
                                              NULL};

void sp_tiers_opts_from_config(sp_tiers_opts *o, const sp_config *cfg)
{
    memset(o, 0, sizeof *o);
    o->budget[SP_TIER_DEVICE] = cfg->tiers.device_budget;
    o->budget[SP_TIER_HOST] = cfg->tiers.host_budget;
    o->budget[SP_TIER_NVME] = cfg->tiers.nvme_budget;
    o->nvme = (sp_uring_store_opts){.dir = cfg->spill.dir, .direct_io = (int)cfg->spill.direct_io,
                                    .queue_depth = (unsigned)cfg->spill.queue_depth,
                                    .block_size = (size_t)cfg->spill.block_size,
                                    .register_buffers = cfg->spill.register_buffers,
                                    .verify_checksums = cfg->spill.verify_checksums};
}

sp_tiers_t *sp_tiers_create(const sp_tiers_opts *o)
{
    if (!o) {
        sp_error(EINVAL, "tiers: no options");
        return NULL;
    }
    sp_tiers_t *ts = sp_calloc(1, sizeof *ts);
    if (!ts) {
        sp_error(ENOMEM, "tiers: out of memory");
        return NULL;
    }
    pthread_mutex_init(&ts->lock, NULL);
    ts->opts = *o;
    ts->dev = o->device_ops ? *o->device_ops : cpu_device;
    return ts;
}

void sp_tiers_free(sp_tiers_t *ts)
{
    if (!ts)
        return;
    sp_uring_store_close(ts->store);
    ts->used[SP_TIER_HOST][SP_TAG_STAGING] -= ts->bounce_charged;
    pthread_mutex_destroy(&ts->lock);
    free(ts);
}

static uint64_t used_total(const sp_tiers_t *ts, sp_tier_kind t)
{
    uint64_t u = 0;
    for (int g = 0; g < SP_TAG_COUNT; g++)
        u += ts->used[t][g];
    return u;
}

/* Charge n bytes to tier t if they fit. Caller holds the lock. */
static bool charge(sp_tiers_t *ts, sp_tier_kind t, sp_tier_tag tag, uint64_t n)
{
    uint64_t b = ts->opts.budget[t];
    uint64_t u = used_total(ts, t);
    if (b && (n > b || u > b - n))
        return false;
    ts->used[t][tag] += n;
    return true;
}

static void uncharge(sp_tiers_t *ts, sp_tier_kind t, sp_tier_tag tag, uint64_t n)
{
    pthread_mutex_lock(&ts->lock);
    ts->used[t][tag] -= n;
    pthread_mutex_unlock(&ts->lock);
}

static const char *budget_key(sp_tier_kind t)
{
    return t == SP_TIER_DEVICE ? "[tiers] device_budget"
         : t == SP_TIER_HOST   ? "[tiers] host_budget"
                               : "[tiers] nvme_budget";
}

/* Append "tier X: U of B bytes used" to msg. */
static void describe_full(sp_tiers_t *ts, sp_tier_kind t, char *msg, size_t len)
{
    size_t n = strlen(msg);
    snprintf(msg + n, len - n, "%stier %s: %" PRIu64 " of %" PRIu64 " bytes used (%s)",
             n ? "; " : "", sp_tier_name(t), used_total(ts, t), ts->opts.budget[t], budget_key(t));
}

/* SP_TIER_DMA on the CPU arena, large enough to be rounded (sp_tier_dma_round): huge pages, charged
 * at the rounded size. */
static bool wants_huge(const sp_tiers_t *ts, sp_tier_kind t, unsigned flags, size_t size)
{
    return (flags & SP_TIER_DMA) && t == SP_TIER_DEVICE && sp_tiers_device_is_host(ts) &&
           size >= SP_HUGE_PAGE / 2;
}

/* huge: a huge-page mapping (size already rounded by the caller, see wants_huge). */
static int mem_obtain(sp_tiers_t *ts, sp_tier_kind t, sp_tier_tag tag, size_t size, bool huge,
                      sp_tier_mem *out)
{
    memset(out, 0, sizeof *out);
    out->tier = t;
    out->tag = tag;
    out->size = size;
    if (huge) {
        size_t mapped;
        out->ptr = sp_huge_map(size, &mapped);
        if (!out->ptr)
            return sp_error(ENOMEM, "tier device (%s): huge-page allocation of %zu bytes failed: %s",
                            ts->dev.name, size, strerror(errno));
        return 0; /* mapped == size: the caller rounded it; cpu_free's munmap releases it */
    }
    if (t == SP_TIER_DEVICE) {
        out->ptr = ts->dev.alloc(ts->dev.ctx, size);
        if (!out->ptr)
            return sp_error(ENOMEM, "tier device (%s): allocation of %zu bytes failed", ts->dev.name,
                            size);
        return 0;
    }
    sp_host_buf *hb = sp_malloc(sizeof *hb);
    if (!hb)
        return sp_error(ENOMEM, "tier host: out of memory");
    int rc = sp_host_pool_alloc(hb, size ? size : 1, ts->opts.topo);
    if (rc < 0) {
        free(hb);
        return rc;
    }
    out->ptr = hb->ptr;
    out->priv = hb;
    if (hb->flags & SP_HOST_LOCKED) {
        pthread_mutex_lock(&ts->lock);
        ts->locked_host += hb->mapped;
        pthread_mutex_unlock(&ts->lock);
    }
    return 0;
}

static void mem_drop(sp_tiers_t *ts, sp_tier_mem *m)
{
    if (m->tier == SP_TIER_DEVICE) {
        ts->dev.free(ts->dev.ctx, m->ptr, m->size);
    } else {
        sp_host_buf *hb = m->priv;
        if (hb && (hb->flags & SP_HOST_LOCKED)) {
            pthread_mutex_lock(&ts->lock);
            ts->locked_host -= hb->mapped;
            pthread_mutex_unlock(&ts->lock);
        }
        sp_host_pool_free(hb);
        free(hb);
    }
}

int sp_tiers_alloc(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, size_t size, unsigned flags,
                   sp_tier_mem *out)
{
    memset(out, 0, sizeof *out);
    if (tier != SP_TIER_DEVICE && tier != SP_TIER_HOST)
        return sp_error(EINVAL, "tiers: memory allocations live on the device or host tier, not %s",
                        sp_tier_name(tier));
    if ((unsigned)tag >= SP_TAG_COUNT)
        return sp_error(EINVAL, "tiers: bad tag %d", (int)tag);
    char why[512] = "";
    sp_tier_kind last = (flags & SP_TIER_SPILL) ? SP_TIER_HOST : tier;
    for (sp_tier_kind t = tier; t <= last; t++) {
        bool huge = wants_huge(ts, t, flags, size);
        size_t n = huge ? sp_tier_dma_round(size, SP_HUGE_PAGE) : size;
        pthread_mutex_lock(&ts->lock);
        bool ok = charge(ts, t, tag, n);
        if (!ok)
            describe_full(ts, t, why, sizeof why);
        pthread_mutex_unlock(&ts->lock);
        if (!ok)
            continue;
        int rc = mem_obtain(ts, t, tag, n, huge, out);
        if (rc < 0) {
            uncharge(ts, t, tag, n);
            return rc;
        }
        return 0;
    }
    return sp_error(ENOSPC, "cannot allocate %zu bytes for %s on tier %s%s: %s", size,
                    sp_tier_tag_name(tag), sp_tier_name(tier),
                    (flags & SP_TIER_SPILL) ? " or later tiers" : "", why);
}

void sp_tiers_release(sp_tiers_t *ts, sp_tier_mem *m)
{
    if (!ts || !m || !m->ptr)
        return;
    mem_drop(ts, m);
    uncharge(ts, m->tier, m->tag, m->size);
    memset(m, 0, sizeof *m);
}

int sp_tiers_reserve(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, uint64_t bytes)
{
    if (!ts || (unsigned)tier >= SP_TIER_COUNT || (unsigned)tag >= SP_TAG_COUNT)
        return sp_error(EINVAL, "tiers: bad reservation");
    char why[256] = "";
    pthread_mutex_lock(&ts->lock);
    bool ok = charge(ts, tier, tag, bytes);
    if (!ok)
        describe_full(ts, tier, why, sizeof why);
    pthread_mutex_unlock(&ts->lock);
    if (!ok)
        return sp_error(ENOSPC, "cannot reserve %" PRIu64 " bytes for %s on tier %s: %s", bytes,
                        sp_tier_tag_name(tag), sp_tier_name(tier), why);
    return 0;
}

void sp_tiers_unreserve(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, uint64_t bytes)
{
    if (!ts || (unsigned)tier >= SP_TIER_COUNT || (unsigned)tag >= SP_TAG_COUNT)
        return;
    pthread_mutex_lock(&ts->lock);
    ts->used[tier][tag] -= bytes < ts->used[tier][tag] ? bytes : ts->used[tier][tag];
    pthread_mutex_unlock(&ts->lock);
}

sp_uring_store_t *sp_tiers_nvme_store(sp_tiers_t *ts)
{
    pthread_mutex_lock(&ts->lock);
    if (!ts->store && !ts->store_failed) {
        ts->store = sp_uring_store_open(&ts->opts.nvme);
        if (ts->store) {
            /* The bounce buffers are host memory that io_uring pins: they count against the host
             * budget like any other host buffer. */
            sp_uring_store_stats st;
            sp_uring_store_get_stats(ts->store, &st);
            char why[256] = "";
            if (!charge(ts, SP_TIER_HOST, SP_TAG_STAGING, st.bounce_bytes)) {
                describe_full(ts, SP_TIER_HOST, why, sizeof why);
                sp_error(ENOSPC, "the spill store's bounce buffers ([spill] queue_depth x block_size "
                                 "= %.2f MiB) do not fit the host tier: %s; lower [spill] queue_depth "
                                 "or block_size, or raise [tiers] host_budget",
                         (double)st.bounce_bytes / 1048576.0, why);
                sp_uring_store_close(ts->store);
                ts->store = NULL;
            } else {
                ts->bounce_charged = st.bounce_bytes;
            }
        }
        if (!ts->store) {
            /* Remember why: every later spill fails with the same, clear reason. */
            ts->store_failed = true;
            snprintf(ts->store_error, sizeof ts->store_error, "%s", sp_last_error());
        }
    }
    sp_uring_store_t *s = ts->store;
    if (!s)
        sp_error(EIO, "tier nvme unavailable: %s", ts->store_error);
    pthread_mutex_unlock(&ts->lock);
    return s;
}

int sp_tiers_nvme_probe(sp_tiers_t *ts)
{
    sp_uring_store_t *s = sp_tiers_nvme_store(ts);
    if (!s)
        return sp_error(EIO, "%s", ts->store_error); /* names the dir or the budget, and the keys */
    size_t n = ts->opts.nvme.block_size ? ts->opts.nvme.block_size : 4096;
    uint8_t *probe = sp_calloc(1, n);
    if (!probe)
        return sp_error(ENOMEM, "spill probe: out of memory");
    int64_t id = sp_uring_store_put(s, probe, n);
    int rc = 0;
    if (id == -ENOSPC)
        rc = sp_error(ENOSPC, "spill dir '%s': the file system is full (a %zu-byte probe write "
                              "failed); free space there, point [spill] dir at a directory with "
                              "room, or raise [tiers] host_budget", ts->opts.nvme.dir, n);
    else if (id < 0)
        rc = sp_error((int)-id, "spill dir '%s': a %zu-byte probe write failed: %s (set [spill] "
                                "dir to a writable directory)", ts->opts.nvme.dir, n, sp_last_error());
    else if ((rc = sp_uring_store_get(s, id, probe, n)) < 0)
        rc = sp_error(-rc, "spill dir '%s': reading back a probe write failed: %s",
                      ts->opts.nvme.dir, sp_last_error());
    if (id >= 0)
        sp_uring_store_del(s, id);
    free(probe);
    return rc;
}

uint64_t sp_tiers_locked(sp_tiers_t *ts, uint64_t *host_buffers, uint64_t *bounce)
{
    pthread_mutex_lock(&ts->lock);
    uint64_t h = ts->locked_host, b = 0;
    if (ts->store) {
        sp_uring_store_stats st;
        sp_uring_store_get_stats(ts->store, &st);
        b = st.bounce_pinned ? st.bounce_bytes : 0;
    }
    pthread_mutex_unlock(&ts->lock);
    if (host_buffers)
        *host_buffers = h;
    if (bounce)
        *bounce = b;
    return h + b;
}

static int put_on(sp_tiers_t *ts, sp_tier_kind t, const void *bytes, size_t size, sp_seg_loc *out,
                  char *why, size_t why_len)
{
    memset(out, 0, sizeof *out);
    out->tier = t;
    out->size = size;
    out->nvme_id = -1;
    if (t == SP_TIER_NVME) {
        size_t charged = (size + 4095) / 4096 * 4096;
        pthread_mutex_lock(&ts->lock);
        bool ok = charge(ts, t, SP_TAG_KV, charged);
        if (!ok)
            describe_full(ts, t, why, why_len);
        pthread_mutex_unlock(&ts->lock);
        if (!ok)
            return -EDQUOT; /* internal: over budget, as opposed to the disk being full */
        sp_uring_store_t *s = sp_tiers_nvme_store(ts);
        int64_t id = s ? sp_uring_store_put(s, bytes, size) : -EIO;
        if (id < 0) {
            uncharge(ts, t, SP_TAG_KV, charged);
            size_t n = strlen(why);
            if (id == -ENOSPC)
                /* The disk, not a budget: say so, and which keys move the data elsewhere. */
                snprintf(why + n, why_len - n, "%sthe file system of the spill dir '%s' is full "
                         "(%s); free space there, point [spill] dir at a directory with room, or "
                         "raise [tiers] host_budget to keep more in memory", n ? "; " : "",
                         ts->opts.nvme.dir, sp_last_error());
            else
                snprintf(why + n, why_len - n, "%s%s", n ? "; " : "", sp_last_error());
            return (int)id;
        }
        out->nvme_id = id;
        out->charged = charged;
        return 0;
    }
    int rc = sp_tiers_alloc(ts, t, SP_TAG_KV, size, 0, &out->mem);
    if (rc < 0) {
        size_t n = strlen(why);
        pthread_mutex_lock(&ts->lock);
        if (rc == -ENOSPC)
            describe_full(ts, t, why, why_len);
        else
            snprintf(why + n, why_len - n, "%s%s", n ? "; " : "", sp_last_error());
        pthread_mutex_unlock(&ts->lock);
        return rc == -ENOSPC ? -EDQUOT : rc;
    }
    rc = t == SP_TIER_DEVICE ? ts->dev.to_device(ts->dev.ctx, out->mem.ptr, bytes, size)
                             : (memcpy(out->mem.ptr, bytes, size), 0);
    if (rc < 0) {
        size_t n = strlen(why);
        snprintf(why + n, why_len - n, "%scopy to %s failed (%d)", n ? "; " : "", sp_tier_name(t), rc);
        sp_tiers_release(ts, &out->mem);
    }
    return rc;
}

int sp_tiers_seg_put(sp_tiers_t *ts, sp_tier_kind want, unsigned flags, const void *bytes,
                     size_t size, sp_seg_loc *out)
{
    if (!ts || !out || (!bytes && size) || (unsigned)want >= SP_TIER_COUNT)
        return sp_error(EINVAL, "tiers: bad segment put");
    char why[1024] = "";
    int rc = -EDQUOT;
    sp_tier_kind last = (flags & SP_TIER_SPILL) ? SP_TIER_NVME : want;
    for (sp_tier_kind t = want; t <= last; t++) {
        rc = put_on(ts, t, bytes, size, out, why, sizeof why);
        if (rc == 0)
            return 0;
    }
    if (rc != -EDQUOT && last == SP_TIER_NVME && (flags & SP_TIER_SPILL)) {
        /* The nvme write itself failed (EIO, ENOSPC on disk, unusable dir), not the budget: keep
         * the data in memory if any tier has room rather than lose the segment. */
        for (int t = SP_TIER_HOST; t >= SP_TIER_DEVICE; t--) {
            if (put_on(ts, (sp_tier_kind)t, bytes, size, out, why, sizeof why) == 0) {
                sp_notice("nvme spill failed; segment kept on the %s tier instead",
                          sp_tier_name((sp_tier_kind)t));
                return 0;
            }
        }
    }
    memset(out, 0, sizeof *out);
    out->nvme_id = -1;
    return sp_error(rc == -EDQUOT ? ENOSPC : -rc, "cannot place a %zu-byte segment on tier %s%s: %s",
                    size, sp_tier_name(want), (flags & SP_TIER_SPILL) ? " or later tiers" : "", why);
}

int sp_tiers_seg_read(sp_tiers_t *ts, const sp_seg_loc *loc, void *dst, size_t cap)
{
    if (!ts || !loc || !dst)
        return sp_error(EINVAL, "tiers: bad segment read");
    if (cap < loc->size)
        return sp_error(ENOBUFS, "tiers: segment of %zu bytes, buffer of %zu", loc->size, cap);
    switch (loc->tier) {
    case SP_TIER_DEVICE: return ts->dev.to_host(ts->dev.ctx, dst, loc->mem.ptr, loc->size);
    case SP_TIER_HOST: memcpy(dst, loc->mem.ptr, loc->size); return 0;
    case SP_TIER_NVME: {
        sp_uring_store_t *s = sp_tiers_nvme_store(ts);
        return s ? sp_uring_store_get(s, loc->nvme_id, dst, cap) : -EIO;
    }
    default: return sp_error(EINVAL, "tiers: bad segment location");
    }
}

void sp_tiers_seg_free(sp_tiers_t *ts, sp_seg_loc *loc)
{
    if (!ts || !loc)
        return;
    if (loc->tier == SP_TIER_NVME && loc->nvme_id >= 0) {
        if (ts->store)
            sp_uring_store_del(ts->store, loc->nvme_id);
        uncharge(ts, SP_TIER_NVME, SP_TAG_KV, loc->charged);
    } else if (loc->tier != SP_TIER_NVME) {
        sp_tiers_release(ts, &loc->mem);
    }
    memset(loc, 0, sizeof *loc);
    loc->nvme_id = -1;
}

bool sp_tiers_device_is_host(const sp_tiers_t *ts) { return ts && !ts->opts.device_ops; }
size_t sp_tiers_dma_granule(const sp_tiers_t *ts) { return sp_tiers_device_is_host(ts) ? SP_HUGE_PAGE : 1; }

int sp_tiers_to_device(sp_tiers_t *ts, void *dst, const void *src, size_t n)
{
    return ts->dev.to_device(ts->dev.ctx, dst, src, n);
}

int sp_tiers_to_host(sp_tiers_t *ts, void *dst, const void *src, size_t n)
{
    return ts->dev.to_host(ts->dev.ctx, dst, src, n);
}

uint64_t sp_tiers_used(sp_tiers_t *ts, sp_tier_kind tier, int tag)
{
    pthread_mutex_lock(&ts->lock);
    uint64_t u = tag < 0 ? used_total(ts, tier) : ts->used[tier][tag];
    pthread_mutex_unlock(&ts->lock);
    return u;
}

uint64_t sp_tiers_budget(const sp_tiers_t *ts, sp_tier_kind tier) { return ts->opts.budget[tier]; }

void sp_tiers_print(sp_tiers_t *ts, FILE *out)
{
    pthread_mutex_lock(&ts->lock);
    for (int t = 0; t < SP_TIER_COUNT; t++) {
        fprintf(out, "%-6s used %12" PRIu64 " B", sp_tier_name((sp_tier_kind)t),
                used_total(ts, (sp_tier_kind)t));
        for (int g = 0; g < SP_TAG_COUNT; g++)
            fprintf(out, "  %s %" PRIu64, sp_tier_tag_name((sp_tier_tag)g), ts->used[t][g]);
        if (ts->opts.budget[t])
            fprintf(out, "  budget %" PRIu64 "\n", ts->opts.budget[t]);
        else
            fprintf(out, "  budget unlimited\n");
    }
    if (ts->store)
        fprintf(out, "nvme   file %s (%s)\n", sp_uring_store_path(ts->store),
                sp_uring_store_mode_name(sp_uring_store_mode(ts->store)));
    pthread_mutex_unlock(&ts->lock);
    uint64_t hb, bb, lk = sp_tiers_locked(ts, &hb, &bb);
    fprintf(out, "locked %12" PRIu64 " B  host buffers %" PRIu64 "  io_uring bounce %" PRIu64
                 " (charged to host staging)\n", lk, hb, bb);
}
