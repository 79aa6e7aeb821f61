/* test_tier.c - tier budgets are hard limits (fail with a message or spill, never exceed), segment
 * placement across device/host/nvme returns the stored bytes, nvme failures fall back or fail
 * cleanly, plus the host pool and topology helpers. */
#include <criterion/criterion.h>

#include "config.h"
#include "host_pool.h"
#include "huge_map.h"
#include "sp_error.h"
#include "support/spill_dir.h"
#include "tier.h"
#include "topology.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void make_dir(void) { spill_dir_make(dir, sizeof dir, "sp-tier"); }
static int count_files(void) { return spill_dir_count(dir); }
static void remove_dir(void) { spill_dir_remove_checked(dir); }

TestSuite(tier, .init = make_dir, .fini = remove_dir);

/* Bounce buffers of the stores make() opens: queue_depth 8 x block_size 64 KiB. */
#define BOUNCE (8u * 65536u)

/* Tiers with these budgets (0 = unlimited); a host budget is what is left after the bounce
 * buffers (see below). */
static sp_tiers_t *make(uint64_t dev, uint64_t host, uint64_t nvme)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = dev;
    o.budget[SP_TIER_HOST] = host;
    o.budget[SP_TIER_NVME] = nvme;
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 8, .block_size = 65536,
                                   .register_buffers = true, .verify_checksums = true};
    if (host)
        o.budget[SP_TIER_HOST] += BOUNCE;
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    /* The store's bounce buffers are charged to the host tier when it opens: open it first, so the
     * host budget a test gives is what is left for its own buffers and segments. */
    if (host) {
        cr_assert(sp_tiers_nvme_store(ts), "%s", sp_last_error());
        cr_assert_eq(sp_tiers_used(ts, SP_TIER_HOST, SP_TAG_STAGING), BOUNCE);
    }
    return ts;
}

Test(tier, budget_is_hard_and_message_names_everything)
{
    sp_tiers_t *ts = make(1000000, 0, 0);
    sp_tier_mem a, b, c;
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS, 600000, 0, &a), 0);
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 600000, 0, &b), -ENOSPC);
    const char *m = sp_last_error();
    cr_assert(strstr(m, "600000 bytes for scratch on tier device"), "%s", m);
    cr_assert(strstr(m, "600000 of 1000000 bytes used"), "%s", m);
    cr_assert(strstr(m, "[tiers] device_budget"), "%s", m);
    cr_assert_null(b.ptr);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 600000, "a failed request must not be charged");
    /* Exactly filling the budget is allowed; one byte more is not. */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 400000, 0, &c), 0);
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 1, 0, &b), -ENOSPC);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, SP_TAG_KV), 400000);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS), 600000);
    /* Memory is real and writable. */
    memset(a.ptr, 1, 600000);
    memset(c.ptr, 2, 400000);
    /* With SP_TIER_SPILL the request goes to the host tier. */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 600000, SP_TIER_SPILL, &b), 0);
    cr_assert_eq(b.tier, SP_TIER_HOST);
    cr_assert_eq(((uintptr_t)b.ptr) % 4096, 0, "host memory is page-aligned");
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_HOST, SP_TAG_SCRATCH), 600000);
    sp_tiers_release(ts, &a);
    sp_tiers_release(ts, &b);
    sp_tiers_release(ts, &c);
    sp_tiers_release(ts, &c); /* double release of an emptied handle is harmless */
    for (int t = 0; t < SP_TIER_COUNT; t++)
        cr_assert_eq(sp_tiers_used(ts, (sp_tier_kind)t, -1), 0);
    sp_tiers_free(ts);
}

Test(tier, reservations_count_against_the_budget)
{
    sp_tiers_t *ts = make(1000000, 0, 0);
    cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS, 700000), 0);
    cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 300001), -ENOSPC);
    cr_assert(strstr(sp_last_error(), "cannot reserve 300001 bytes for scratch on tier device"), "%s",
              sp_last_error());
    cr_assert(strstr(sp_last_error(), "[tiers] device_budget"), "%s", sp_last_error());
    cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 300000), 0);
    sp_tier_mem m;
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 1, 0, &m), -ENOSPC);
    sp_tiers_unreserve(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 300000);
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 300000, 0, &m), 0);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS), 700000);
    sp_tiers_release(ts, &m);
    sp_tiers_unreserve(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS, 700000);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 0);
    /* an unlimited tier takes any reservation */
    cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_HOST, SP_TAG_WEIGHTS, 1ull << 40), 0);
    sp_tiers_unreserve(ts, SP_TIER_HOST, SP_TAG_WEIGHTS, 1ull << 40);
    sp_tiers_free(ts);
}

Test(tier, dma_buffers_on_the_cpu_arena_are_huge_pages_charged_at_their_rounded_size)
{
    const size_t huge = SP_HUGE_PAGE;
    sp_tiers_t *ts = make(3 * huge, 0, 0);
    cr_assert_eq(sp_tiers_dma_granule(ts), huge);
    sp_tier_mem a, b, c;
    /* 1.4 MB: rounded to one huge page, aligned, charged (and sized) as such */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 1400000, SP_TIER_DMA, &a), 0);
    cr_assert_eq(a.size, huge);
    cr_assert_eq((uintptr_t)a.ptr % huge, 0);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, SP_TAG_KV), huge);
    memset(a.ptr, 7, a.size);
    /* under half a huge page: exact size, ordinary pages */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 100000, SP_TIER_DMA, &b), 0);
    cr_assert_eq(b.size, 100000);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, SP_TAG_KV), huge + 100000);
    /* the rounded size is what must fit: 2 MiB + 1 B would need 4 MiB, but only 4 MiB - 100000 B
     * are left */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, huge + 1, SP_TIER_DMA, &c), -ENOSPC);
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, huge + 1, 0, &c), 0,
                 "without the flag the exact size fits");
    sp_tiers_release(ts, &c);
    /* the host tier ignores the flag */
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_HOST, SP_TAG_STAGING, 1400000, SP_TIER_DMA, &c), 0);
    cr_assert_eq(c.size, 1400000);
    sp_tiers_release(ts, &a);
    sp_tiers_release(ts, &b);
    sp_tiers_release(ts, &c);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 0);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_HOST, -1), 0);
    sp_tiers_free(ts);
}

static void *fake_dev_alloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static void fake_dev_free(void *ctx, void *p, size_t n) { (void)ctx; (void)n; free(p); }
static int fake_dev_copy(void *ctx, void *d, const void *s, size_t n)
{
    (void)ctx;
    memcpy(d, s, n);
    return 0;
}

Test(tier, dma_flag_changes_nothing_on_a_real_device)
{
    static const sp_tier_device_ops ops = {"fake", fake_dev_alloc, fake_dev_free, fake_dev_copy,
                                           fake_dev_copy, NULL};
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.device_ops = &ops;
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts);
    cr_assert_eq(sp_tiers_dma_granule(ts), 1);
    sp_tier_mem a;
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 1400000, SP_TIER_DMA, &a), 0);
    cr_assert_eq(a.size, 1400000);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 1400000);
    sp_tiers_release(ts, &a);
    sp_tiers_free(ts);
}

Test(tier, nvme_is_not_a_memory_tier)
{
    sp_tiers_t *ts = make(0, 0, 0);
    sp_tier_mem a;
    cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_NVME, SP_TAG_KV, 10, 0, &a), -EINVAL);
    sp_tiers_free(ts);
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint8_t)(x >> 24);
    }
}

Test(tier, segments_spill_down_the_tiers_and_read_back_exactly)
{
    enum { N = 12, SZ = 40000 };
    sp_tiers_t *ts = make(100000, 130000, 0);
    uint8_t *src = malloc((size_t)N * SZ), *dst = malloc(SZ);
    sp_seg_loc loc[N];
    int per_tier[SP_TIER_COUNT] = {0};
    for (int i = 0; i < N; i++) {
        fill(src + (size_t)i * SZ, SZ, (unsigned)i);
        cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_DEVICE, SP_TIER_SPILL, src + (size_t)i * SZ, SZ, &loc[i]),
                     0, "%s", sp_last_error());
        per_tier[loc[i].tier]++;
        cr_assert_leq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 100000);
        cr_assert_leq(sp_tiers_used(ts, SP_TIER_HOST, -1), 130000 + BOUNCE);
    }
    cr_assert_eq(per_tier[SP_TIER_DEVICE], 2);
    cr_assert_eq(per_tier[SP_TIER_HOST], 3);
    cr_assert_eq(per_tier[SP_TIER_NVME], N - 5);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_NVME, SP_TAG_KV), (uint64_t)(N - 5) * 40960);
    cr_assert_eq(count_files(), 0, "the spill file has a name");
    for (int i = N - 1; i >= 0; i--) {
        memset(dst, 0, SZ);
        cr_assert_eq(sp_tiers_seg_read(ts, &loc[i], dst, SZ), 0, "%s", sp_last_error());
        cr_assert_eq(memcmp(dst, src + (size_t)i * SZ, SZ), 0, "segment %d on %s differs", i,
                     sp_tier_name(loc[i].tier));
    }
    /* Without SP_TIER_SPILL a full tier fails instead of spilling. */
    sp_seg_loc x;
    cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_DEVICE, 0, src, SZ, &x), -ENOSPC);
    cr_assert(strstr(sp_last_error(), "tier device"), "%s", sp_last_error());
    for (int i = 0; i < N; i++)
        sp_tiers_seg_free(ts, &loc[i]);
    for (int t = 0; t < SP_TIER_COUNT; t++)
        cr_assert_eq(sp_tiers_used(ts, (sp_tier_kind)t, -1), t == SP_TIER_HOST ? BOUNCE : 0);
    sp_tiers_free(ts);
    cr_assert_eq(count_files(), 0, "spill file removed by sp_tiers_free");
    free(src);
    free(dst);
}

Test(tier, nvme_budget_is_hard)
{
    sp_tiers_t *ts = make(0, 0, 3 * 4096);
    uint8_t buf[5000] = {1};
    sp_seg_loc a, b;
    cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_NVME, 0, buf, sizeof buf, &a), 0, "%s", sp_last_error());
    cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_NVME, SP_TIER_SPILL, buf, sizeof buf, &b), -ENOSPC);
    cr_assert(strstr(sp_last_error(), "tier nvme: 8192 of 12288 bytes used ([tiers] nvme_budget)"),
              "%s", sp_last_error());
    sp_tiers_seg_free(ts, &a);
    sp_tiers_free(ts);
}

Test(tier, nvme_write_failure_falls_back_to_host_or_fails_cleanly)
{
    sp_tiers_t *ts = make(4096, 100000, 0);
    uint8_t buf[60000];
    fill(buf, sizeof buf, 3);
    sp_uring_store_t *s = sp_tiers_nvme_store(ts);
    cr_assert(s, "%s", sp_last_error());
    sp_uring_store_inject(s, SP_FAULT_ENOSPC, -1);
    sp_seg_loc a, b;
    cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_NVME, SP_TIER_SPILL, buf, sizeof buf, &a), 0,
                 "%s", sp_last_error());
    cr_assert_eq(a.tier, SP_TIER_HOST, "kept in host memory when the disk is full");
    uint8_t out[60000];
    cr_assert_eq(sp_tiers_seg_read(ts, &a, out, sizeof out), 0);
    cr_assert_eq(memcmp(out, buf, sizeof buf), 0);
    /* Host is now too full for a second copy: the request fails with both reasons. */
    cr_assert_lt(sp_tiers_seg_put(ts, SP_TIER_NVME, SP_TIER_SPILL, buf, sizeof buf, &b), 0);
    cr_assert(strstr(sp_last_error(), "No space left"), "%s", sp_last_error());
    cr_assert(strstr(sp_last_error(), "tier host"), "%s", sp_last_error());
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_NVME, -1), 0, "failed nvme writes are not charged");
    sp_tiers_seg_free(ts, &a);
    sp_tiers_free(ts);
}

Test(tier, missing_spill_dir_fails_the_spill_with_its_name)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = 4096;
    o.budget[SP_TIER_HOST] = 4096;
    char missing[300];
    snprintf(missing, sizeof missing, "%s/gone", dir);
    o.nvme = (sp_uring_store_opts){.dir = missing, .queue_depth = 4, .block_size = 65536};
    sp_tiers_t *ts = sp_tiers_create(&o);
    uint8_t buf[10000] = {0};
    sp_seg_loc a;
    cr_assert_lt(sp_tiers_seg_put(ts, SP_TIER_DEVICE, SP_TIER_SPILL, buf, sizeof buf, &a), 0);
    cr_assert(strstr(sp_last_error(), missing), "%s", sp_last_error());
    for (int t = 0; t < SP_TIER_COUNT; t++)
        cr_assert_eq(sp_tiers_used(ts, (sp_tier_kind)t, -1), 0);
    sp_tiers_free(ts);
}

typedef struct {
    sp_tiers_t *ts;
    int ok;
} worker_arg;

static void *hammer(void *p)
{
    worker_arg *w = p;
    sp_tier_mem held[64];
    int n = 0;
    for (int i = 0; i < 2000; i++) {
        if (n < 64 && (i % 3 != 2)) {
            if (sp_tiers_alloc(w->ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, 4096 + (size_t)(i % 7) * 1000, 0,
                               &held[n]) == 0) {
                n++;
                w->ok++;
            }
        } else if (n > 0) {
            sp_tiers_release(w->ts, &held[--n]);
        }
        if (sp_tiers_used(w->ts, SP_TIER_DEVICE, -1) > 100000)
            return (void *)1;
    }
    while (n > 0)
        sp_tiers_release(w->ts, &held[--n]);
    return NULL;
}

Test(tier, concurrent_allocations_never_exceed_budget)
{
    sp_tiers_t *ts = make(100000, 0, 0);
    pthread_t th[4];
    worker_arg w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_arg){ts, 0};
        pthread_create(&th[i], NULL, hammer, &w[i]);
    }
    int total_ok = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        cr_assert_null(r, "budget exceeded under concurrency");
        total_ok += w[i].ok;
    }
    /* One worker may starve while the others keep the budget full (on 2 cores a late starter can
     * find it full for its whole run), so progress is required of the workers together. */
    cr_assert_gt(total_ok, 0);
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 0);
    sp_tiers_free(ts);
}

Test(tier, opts_from_config)
{
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "tiers.device_budget=2GiB", NULL), 0);
    cr_assert_eq(sp_config_set(&c, "spill.queue_depth=16", NULL), 0);
    sp_tiers_opts o;
    sp_tiers_opts_from_config(&o, &c);
    cr_assert_eq(o.budget[SP_TIER_DEVICE], 2ull << 30);
    cr_assert_eq(o.budget[SP_TIER_HOST], 0);
    cr_assert_eq(o.nvme.queue_depth, 16);
    cr_assert_eq(o.nvme.block_size, 1 << 20);
    cr_assert_str_eq(o.nvme.dir, c.spill.dir);
}

Test(tier, host_pool_and_topology)
{
    sp_topology_t *t = sp_topo_create(NULL);
    cr_assert(t, "%s", sp_last_error());
    cr_assert_geq(sp_topo_n_numa(t), 1);
    cr_assert_geq(sp_topo_n_pus(t), 1);
    cr_assert_geq(sp_topo_n_pus(t), sp_topo_n_cores(t));
    sp_host_buf b;
    cr_assert_eq(sp_host_pool_alloc(&b, 100000, t), 0, "%s", sp_last_error());
    cr_assert_eq((uintptr_t)b.ptr % 4096, 0);
    cr_assert_geq(b.mapped, 100000);
    for (size_t i = 0; i < b.size; i++)
        cr_assert_eq(((uint8_t *)b.ptr)[i], 0);
    memset(b.ptr, 7, b.size);
    sp_host_pool_free(&b);
    cr_assert_null(b.ptr);
    sp_host_pool_free(&b);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sp_topo_print(t, f);
    fclose(f);
    cr_assert(strstr(text, "<- chosen"), "%s", text);
    cr_assert(strstr(text, "host memory and workers: node"), "%s", text);
    free(text);
    sp_topo_free(t);
}

/* kB value of one "Name:  N kB" line of /proc/self/status (0 when the kernel has no such line). */
static long status_kb(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    cr_assert(f);
    char line[256];
    long v = 0;
    size_t n = strlen(name);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, name, n) && line[n] == ':')
            v = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return v;
}

/* Every locked byte is the tiers' and charged to the host tier: the growth of VmLck (mlock) +
 * VmPin (io_uring's registered bounce buffers) equals what sp_tiers_locked reports, and the host
 * tier's usage covers it. */
Test(tier, locked_memory_matches_vmlck_and_is_charged_to_the_host_tier)
{
    long before = status_kb("VmLck") + status_kb("VmPin");
    sp_tiers_t *ts = make(0, 64 << 20, 0);
    sp_tier_mem m[3];
    const size_t sizes[3] = {1 << 20, 300000, 4 << 20};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(sp_tiers_alloc(ts, SP_TIER_HOST, SP_TAG_KV, sizes[i], 0, &m[i]), 0, "%s", sp_last_error());
    cr_assert(sp_tiers_nvme_store(ts), "%s", sp_last_error());
    long grown = status_kb("VmLck") + status_kb("VmPin") - before;
    uint64_t hb, bb, locked = sp_tiers_locked(ts, &hb, &bb);
#ifdef __SANITIZE_ADDRESS__
    /* ASan turns mlock() into a no-op that succeeds: only the io_uring pins reach the kernel. */
    locked = bb;
#endif
    cr_assert_eq((uint64_t)grown * 1024, locked, "VmLck+VmPin grew by %ld KiB, the tiers report %llu B locked "
                 "(host buffers %llu, bounce %llu)", grown, (unsigned long long)locked,
                 (unsigned long long)hb, (unsigned long long)bb);
    cr_assert_gt(grown, 0, "nothing was locked (mlock refused and no registered buffers?)");
    /* Host buffers are charged at their size and locked in whole pages: < 4 KiB slack each. */
    cr_assert_geq(sp_tiers_used(ts, SP_TIER_HOST, -1) + 3 * 4096, (uint64_t)grown * 1024,
                  "locked memory outside the host budget");
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_HOST, SP_TAG_STAGING), BOUNCE);
    cr_assert_eq(bb, BOUNCE, "the registered bounce buffers are not reported as locked");
    for (int i = 0; i < 3; i++)
        sp_tiers_release(ts, &m[i]);
    sp_tiers_free(ts);
    /* The kernel tears an io_uring down in a work queue: its pins go shortly after the close. */
    long now = 0;
    for (int i = 0; i < 200 && (now = status_kb("VmLck") + status_kb("VmPin")) != before; i++)
        usleep(10000);
    cr_assert_eq(now, before, "locked memory outlived the tiers");
}

/* Bounce buffers that do not fit the host budget fail the store, naming the keys. */
Test(tier, bounce_buffers_over_the_host_budget_fail_the_store)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_HOST] = 256 << 10; /* 8 x 64 KiB bounce = 512 KiB */
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 8, .block_size = 65536,
                                   .register_buffers = true, .verify_checksums = true};
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    cr_assert_null(sp_tiers_nvme_store(ts), "the store opened outside the host budget");
    cr_assert(strstr(sp_last_error(), "queue_depth") && strstr(sp_last_error(), "[tiers] host_budget"),
              "%s", sp_last_error());
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_HOST, -1), 0);
    sp_tiers_free(ts);
}

/* A full disk under the spill dir is named as such, with the directory and the keys that help,
 * never as a budget problem. */
Test(tier, disk_full_is_named_with_the_dir_and_the_keys)
{
    sp_tiers_t *ts = make(0, 0, 0);
    sp_uring_store_t *s = sp_tiers_nvme_store(ts);
    cr_assert(s, "%s", sp_last_error());
    sp_uring_store_inject(s, SP_FAULT_ENOSPC, -1);
    uint8_t bytes[10000] = {1};
    sp_seg_loc loc;
    cr_assert_lt(sp_tiers_seg_put(ts, SP_TIER_NVME, 0, bytes, sizeof bytes, &loc), 0);
    const char *m = sp_last_error();
    cr_assert(strstr(m, "is full") && strstr(m, dir) && strstr(m, "[spill] dir") && strstr(m, "[tiers] host_budget"),
              "%s", m);
    cr_assert_eq(sp_tiers_nvme_probe(ts), -ENOSPC);
    cr_assert(strstr(sp_last_error(), "full") && strstr(sp_last_error(), dir), "%s", sp_last_error());
    sp_uring_store_inject(s, 0, 0);
    cr_assert_eq(sp_tiers_nvme_probe(ts), 0, "%s", sp_last_error());
    sp_tiers_free(ts);
}

/* ---- the pinned pool on the GPU's NUMA node ---- */

/* A fake device pinner that records what the pool asks of it. */
static struct {
    int alloc_calls, free_calls, reg_calls, unreg_calls, reg_rc;
    void *reg_p, *unreg_p;
    size_t reg_n;
} fk;

static void *fake_alloc(void *user, size_t n)
{
    (void)user;
    fk.alloc_calls++;
    void *p = aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    return p;
}
static void fake_free(void *user, void *p)
{
    (void)user;
    fk.free_calls++;
    free(p);
}
static int fake_register(void *user, void *p, size_t n)
{
    (void)user;
    fk.reg_calls++;
    fk.reg_p = p;
    fk.reg_n = n;
    if (fk.reg_rc)
        return sp_error(-fk.reg_rc, "fake register refused");
    return 0;
}
static void fake_unregister(void *user, void *p)
{
    (void)user;
    fk.unreg_calls++;
    fk.unreg_p = p;
}

Test(tier, pinned_pool_binds_then_registers)
{
    sp_topology_t *t = sp_topo_create(NULL);
    cr_assert(t, "%s", sp_last_error());
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *probe = aligned_alloc(page, page);
    bool can_bind = sp_topo_bind_memory(t, probe, page) == 0;
    free(probe);
    static const sp_host_pinner pin = {NULL, fake_alloc, fake_free, fake_register, fake_unregister};
    sp_host_pool_set_pinner(&pin);
    memset(&fk, 0, sizeof fk);

    /* with a topology: the pool's own mapping, bound (where the OS allows), zeroed, registered */
    sp_host_buf b;
    cr_assert_eq(sp_host_pool_alloc(&b, 100000, t), 0, "%s", sp_last_error());
    cr_assert_eq(fk.reg_calls, 1);
    cr_assert_eq(fk.alloc_calls, 0, "the driver's allocation ignores the NUMA node");
    cr_assert_eq(fk.reg_p, b.ptr);
    cr_assert_eq(fk.reg_n, b.mapped);
    cr_assert(b.flags & SP_HOST_REGISTERED && b.flags & SP_HOST_CUDA && b.flags & SP_HOST_LOCKED);
    cr_assert_eq(!!(b.flags & SP_HOST_BOUND), can_bind, "bound %d, binding possible %d", !!(b.flags & SP_HOST_BOUND),
                 can_bind);
    for (size_t i = 0; i < b.size; i++)
        cr_assert_eq(((uint8_t *)b.ptr)[i], 0);
    void *p = b.ptr;
    sp_host_pool_free(&b);
    cr_assert_eq(fk.unreg_calls, 1);
    cr_assert_eq(fk.unreg_p, p);
    cr_assert_eq(fk.free_calls, 0);

    /* without one: the pinner's own allocation, freed by it */
    cr_assert_eq(sp_host_pool_alloc(&b, 5000, NULL), 0, "%s", sp_last_error());
    cr_assert_eq(fk.alloc_calls, 1);
    cr_assert(b.flags & SP_HOST_CUDA && !(b.flags & SP_HOST_REGISTERED));
    sp_host_pool_free(&b);
    cr_assert_eq(fk.free_calls, 1);

    /* registration refused: the pinner's allocation still gives pinned memory */
    fk.reg_rc = -ENOMEM;
    cr_assert_eq(sp_host_pool_alloc(&b, 5000, t), 0, "%s", sp_last_error());
    cr_assert_eq(fk.reg_calls, 2);
    cr_assert_eq(fk.alloc_calls, 2);
    cr_assert(b.flags & SP_HOST_CUDA && !(b.flags & SP_HOST_REGISTERED));
    sp_host_pool_free(&b);
    cr_assert_eq(fk.free_calls, 2);
    sp_host_pool_set_pinner(NULL);
    sp_topo_free(t);
}

/* Two packages with a NUMA node each, an NVIDIA GPU (3D controller) behind a bridge on node 1. */
static const char two_node_xml[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE topology SYSTEM \"hwloc2.dtd\">\n"
    "<topology version=\"2.0\">\n"
    "<object type=\"Machine\" os_index=\"0\" cpuset=\"0x0000000f\" complete_cpuset=\"0x0000000f\" "
    "allowed_cpuset=\"0x0000000f\" nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\" "
    "allowed_nodeset=\"0x00000003\" gp_index=\"1\">\n"
    " <object type=\"Package\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\" "
    "nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"6\">\n"
    "  <object type=\"NUMANode\" os_index=\"0\" cpuset=\"0x00000003\" complete_cpuset=\"0x00000003\" "
    "nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"7\" local_memory=\"1073741824\"/>\n"
    "  <object type=\"Core\" os_index=\"0\" cpuset=\"0x00000001\" complete_cpuset=\"0x00000001\" nodeset=\"0x00000001\" "
    "complete_nodeset=\"0x00000001\" gp_index=\"3\"><object type=\"PU\" os_index=\"0\" cpuset=\"0x00000001\" "
    "complete_cpuset=\"0x00000001\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"2\"/></object>\n"
    "  <object type=\"Core\" os_index=\"1\" cpuset=\"0x00000002\" complete_cpuset=\"0x00000002\" nodeset=\"0x00000001\" "
    "complete_nodeset=\"0x00000001\" gp_index=\"5\"><object type=\"PU\" os_index=\"1\" cpuset=\"0x00000002\" "
    "complete_cpuset=\"0x00000002\" nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"4\"/></object>\n"
    " </object>\n"
    " <object type=\"Package\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\" "
    "nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"12\">\n"
    "  <object type=\"NUMANode\" os_index=\"1\" cpuset=\"0x0000000c\" complete_cpuset=\"0x0000000c\" "
    "nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"13\" local_memory=\"1073741824\"/>\n"
    "  <object type=\"Core\" os_index=\"2\" cpuset=\"0x00000004\" complete_cpuset=\"0x00000004\" nodeset=\"0x00000002\" "
    "complete_nodeset=\"0x00000002\" gp_index=\"9\"><object type=\"PU\" os_index=\"2\" cpuset=\"0x00000004\" "
    "complete_cpuset=\"0x00000004\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"8\"/></object>\n"
    "  <object type=\"Core\" os_index=\"3\" cpuset=\"0x00000008\" complete_cpuset=\"0x00000008\" nodeset=\"0x00000002\" "
    "complete_nodeset=\"0x00000002\" gp_index=\"11\"><object type=\"PU\" os_index=\"3\" cpuset=\"0x00000008\" "
    "complete_cpuset=\"0x00000008\" nodeset=\"0x00000002\" complete_nodeset=\"0x00000002\" gp_index=\"10\"/></object>\n"
    "  <object type=\"Bridge\" gp_index=\"20\" bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[64-65]\">\n"
    "   <object type=\"PCIDev\" gp_index=\"21\" pci_busid=\"0000:65:00.0\" pci_type=\"0302 [10de:2335] [10de:18be] a1\"/>\n"
    "  </object>\n"
    " </object>\n"
    "</object>\n"
    "</topology>\n";

Test(tier, topology_picks_the_gpus_numa_node)
{
    char path[] = "/tmp/spindle-topo-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, two_node_xml, sizeof two_node_xml - 1), (ssize_t)(sizeof two_node_xml - 1));
    close(fd);
    /* hwloc loads this instead of the machine (this test's process only); a HWLOC_COMPONENTS list
     * (CI's ASan stage sets "-pci") would make it ignore HWLOC_XMLFILE */
    unsetenv("HWLOC_COMPONENTS");
    setenv("HWLOC_XMLFILE", path, 1);
    sp_topology_t *t = sp_topo_create("0000:65:00.0");
    sp_topology_t *other = sp_topo_create("0000:17:00.0");
    unlink(path);
    cr_assert(t && other, "%s", sp_last_error());
    cr_assert_eq(sp_topo_n_numa(t), 2);
    cr_assert(sp_topo_has_gpu(t));
    cr_assert_eq(sp_topo_chosen_node(t), 1, "the GPU sits on node 1");
    cr_assert(strstr(sp_topo_reason(t), "GPU"), "%s", sp_topo_reason(t));
    /* a bus id that is not there: no GPU, the node with most allowed cores (a tie: the first) */
    cr_assert(!sp_topo_has_gpu(other));
    cr_assert_eq(sp_topo_chosen_node(other), 0);
    sp_topo_free(t);
    sp_topo_free(other);
}
