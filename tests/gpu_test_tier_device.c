/* gpu_test_tier_device.c - the CUDA device tier (sp_gpu_tier_ops_create): allocations are real device
 * memory, copies round-trip byte for byte (pinned and pageable host buffers, odd sizes and offsets),
 * and behind sp_tiers the device budget is a hard limit (fail with -ENOSPC or spill to the host,
 * never exceed). Exits 77 when there is no CUDA device; prints one line per check and exits 1 if
 * any check failed. A plain executable (CUDA and Criterion's fork do not mix). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu.h"
#include "sp_error.h"
#include "tier.h"

static int n_fail, n_pass;

static void check(bool ok, const char *what, const char *detail)
{
    if (ok) {
        n_pass++;
        printf("ok   %s\n", what);
    } else {
        n_fail++;
        printf("FAIL %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    }
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (uint8_t)(seed >> 24);
    }
}

/* Round trip through the raw ops: host (pinned or not) -> device at an offset -> other host buffer. */
static void round_trip(const sp_tier_device_ops *ops, size_t n, size_t off, bool pinned)
{
    char what[128];
    snprintf(what, sizeof what, "ops round trip %zu bytes at device offset %zu, %s host buffers", n, off,
             pinned ? "pinned" : "pageable");
    uint8_t *src = pinned ? sp_gpu_host_alloc(n) : malloc(n);
    uint8_t *dst = pinned ? sp_gpu_host_alloc(n) : malloc(n);
    uint8_t *dev = ops->alloc(ops->ctx, n + off);
    if (!src || !dst || !dev) {
        check(false, what, sp_last_error());
        goto done;
    }
    fill(src, n, (uint32_t)(n + off));
    memset(dst, 0, n);
    int rc = ops->to_device(ops->ctx, dev + off, src, n);
    if (!rc)
        rc = ops->to_host(ops->ctx, dst, dev + off, n);
    check(rc == 0 && memcmp(src, dst, n) == 0, what, rc ? sp_last_error() : "bytes differ");
done:
    if (dev)
        ops->free(ops->ctx, dev, n + off);
    if (pinned) {
        sp_gpu_host_free(src);
        sp_gpu_host_free(dst);
    } else {
        free(src);
        free(dst);
    }
}

/* Caller memory page-locked with sp_gpu_host_register (how the host pool pins memory it first bound
 * to the GPU's NUMA node): usable for copies, registered once, released by unregister; and the PCI
 * bus id the topology looks the GPU up by. */
static void register_checks(const sp_tier_device_ops *ops)
{
    const size_t n = 3 * 4096 + 17;
    uint8_t *a = aligned_alloc(4096, 4 * 4096), *b = aligned_alloc(4096, 4 * 4096);
    uint8_t *dev = ops->alloc(ops->ctx, n);
    int ra = a ? sp_gpu_host_register(a, 4 * 4096) : -1, rb = b ? sp_gpu_host_register(b, 4 * 4096) : -1;
    check(a && b && dev && ra == 0 && rb == 0, "sp_gpu_host_register page-locks caller memory", sp_last_error());
    if (ra == 0 && rb == 0 && dev) {
        check(sp_gpu_host_register(a + 4096, 4096) < 0 && strstr(sp_last_error(), "cudaHostRegister"),
              "registering a registered range again is refused with a message", sp_last_error());
        fill(a, n, 99);
        memset(b, 0, n);
        int rc = ops->to_device(ops->ctx, dev, a, n);
        if (!rc)
            rc = ops->to_host(ops->ctx, b, dev, n);
        check(rc == 0 && memcmp(a, b, n) == 0, "round trip through registered host buffers",
              rc ? sp_last_error() : "bytes differ");
    }
    if (ra == 0)
        sp_gpu_host_unregister(a);
    if (rb == 0)
        sp_gpu_host_unregister(b);
    check(a && sp_gpu_host_register(a, 4096) == 0, "an unregistered range can be registered again", sp_last_error());
    if (a)
        sp_gpu_host_unregister(a);
    if (dev)
        ops->free(ops->ctx, dev, n);
    free(a);
    free(b);
    char id[32] = "";
    unsigned dom, bus, d, fn;
    check(sp_gpu_pci_bus_id(0, id, sizeof id) == 0 && sscanf(id, "%x:%x:%x.%x", &dom, &bus, &d, &fn) == 4,
          "device 0 has a PCI bus id (domain:bus:device.function)", id);
}

static void tiers_checks(const sp_tier_device_ops *ops, const char *dir)
{
    enum { KiB = 1024, BUDGET = 1024 * KiB };
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = BUDGET;
    o.budget[SP_TIER_HOST] = 8 * BUDGET;
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 8, .block_size = 65536, .verify_checksums = true};
    o.device_ops = ops;
    sp_tiers_t *ts = sp_tiers_create(&o);
    check(ts != NULL, "tiers with the CUDA device ops", ts ? NULL : sp_last_error());
    if (!ts)
        return;
    sp_tier_mem a = {0}, b = {0}, c = {0};
    sp_seg_loc s1 = {0}, s2 = {0};
    uint8_t *bytes = malloc(300 * KiB), *back = malloc(600 * KiB);
    if (!bytes || !back) {
        check(false, "test buffers", "out of memory");
        goto done;
    }
    fill(bytes, 300 * KiB, 7);

    int rc = sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 600 * KiB, 0, &a);
    check(rc == 0 && a.tier == SP_TIER_DEVICE && sp_gpu_is_device_ptr(a.ptr),
          "600 KiB on the device tier is device memory", rc ? sp_last_error() : NULL);
    rc = sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 600 * KiB, 0, &b);
    check(rc == -ENOSPC && b.ptr == NULL, "a second 600 KiB without spill fails with -ENOSPC",
          rc == 0 ? "allocated beyond the budget" : NULL);
    check(sp_tiers_used(ts, SP_TIER_DEVICE, -1) == 600 * KiB, "device usage unchanged by the failed request", NULL);
    rc = sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_KV, 600 * KiB, SP_TIER_SPILL, &b);
    check(rc == 0 && b.tier == SP_TIER_HOST && !sp_gpu_is_device_ptr(b.ptr), "with spill it lands on the host tier",
          rc ? sp_last_error() : NULL);

    rc = sp_tiers_seg_put(ts, SP_TIER_DEVICE, 0, bytes, 300 * KiB, &s1);
    check(rc == 0 && s1.tier == SP_TIER_DEVICE, "segment of 300 KiB placed on the device", rc ? sp_last_error() : NULL);
    memset(back, 0, 300 * KiB);
    rc = rc ? rc : sp_tiers_seg_read(ts, &s1, back, 300 * KiB);
    check(rc == 0 && memcmp(bytes, back, 300 * KiB) == 0, "device segment reads back identical",
          rc ? sp_last_error() : "bytes differ");
    rc = sp_tiers_seg_put(ts, SP_TIER_DEVICE, SP_TIER_SPILL, bytes, 300 * KiB, &s2);
    check(rc == 0 && s2.tier != SP_TIER_DEVICE, "a segment over the device budget spills", rc ? sp_last_error() : NULL);
    check(sp_tiers_used(ts, SP_TIER_DEVICE, -1) <= BUDGET, "device usage within its budget", NULL);
    memset(back, 0, 300 * KiB);
    rc = rc ? rc : sp_tiers_seg_read(ts, &s2, back, 300 * KiB);
    check(rc == 0 && memcmp(bytes, back, 300 * KiB) == 0, "spilled segment reads back identical",
          rc ? sp_last_error() : "bytes differ");

    /* sp_tiers_to_device / to_host on a device allocation, at an odd offset */
    rc = sp_tiers_to_device(ts, (uint8_t *)a.ptr + 13, bytes, 300 * KiB - 5);
    memset(back, 0, 300 * KiB);
    if (!rc)
        rc = sp_tiers_to_host(ts, back, (uint8_t *)a.ptr + 13, 300 * KiB - 5);
    check(rc == 0 && memcmp(bytes, back, 300 * KiB - 5) == 0, "sp_tiers_to_device/to_host round trip",
          rc ? sp_last_error() : "bytes differ");

    rc = sp_tiers_alloc(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, (size_t)BUDGET - 600 * KiB - 300 * KiB, 0, &c);
    check(rc == 0 && sp_tiers_used(ts, SP_TIER_DEVICE, -1) == BUDGET, "the budget can be filled exactly",
          rc ? sp_last_error() : NULL);
done:
    sp_tiers_seg_free(ts, &s1);
    sp_tiers_seg_free(ts, &s2);
    sp_tiers_release(ts, &a);
    sp_tiers_release(ts, &b);
    sp_tiers_release(ts, &c);
    check(sp_tiers_used(ts, SP_TIER_DEVICE, -1) == 0 && sp_tiers_used(ts, SP_TIER_HOST, -1) == 0,
          "everything released: device and host usage back to 0", NULL);
    sp_tiers_free(ts);
    free(bytes);
    free(back);
}

int main(void)
{
    int n = sp_gpu_device_count();
    if (n <= 0) {
        printf("no CUDA device (%d): skipped\n", n);
        /* without CUDA the table must not exist either */
        return sp_gpu_tier_ops_create(0) == NULL ? 77 : 1;
    }
    const sp_tier_device_ops *ops = sp_gpu_tier_ops_create(0);
    check(ops != NULL, "sp_gpu_tier_ops_create(0)", ops ? NULL : sp_last_error());
    if (!ops)
        return 1;
    check(ops->name && strcmp(ops->name, "cuda") == 0, "table is named cuda", NULL);
    check(sp_gpu_tier_ops_create(n) == NULL, "a device index past the last is refused", NULL);

    void *p = ops->alloc(ops->ctx, 4096);
    check(p && sp_gpu_is_device_ptr(p), "alloc returns device memory", p ? NULL : sp_last_error());
    ops->free(ops->ctx, p, 4096);
    void *huge = ops->alloc(ops->ctx, (size_t)1 << 50);
    check(huge == NULL && strstr(sp_last_error(), "cudaMalloc"), "a 1 PiB alloc fails with a message", sp_last_error());
    if (huge)
        ops->free(ops->ctx, huge, (size_t)1 << 50);

    round_trip(ops, 1, 0, false);
    round_trip(ops, 4096, 0, true);
    round_trip(ops, (1u << 20) + 13, 7, true);
    round_trip(ops, (3u << 20) + 1, 3, false);
    check(ops->to_device(ops->ctx, NULL, NULL, 0) == 0, "zero-byte copy is a no-op", sp_last_error());
    register_checks(ops);

    char dir[] = "/tmp/sp-gpu-tier-XXXXXX";
    if (!mkdtemp(dir)) {
        check(false, "spill dir", "mkdtemp failed");
    } else {
        tiers_checks(ops, dir);
        rmdir(dir);
    }
    sp_gpu_tier_ops_free(ops);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
