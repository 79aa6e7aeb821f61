/* tier.h - the three storage tiers (device, host, nvme) with hard byte budgets.
 *
 * Everything that occupies a tier goes through here and is tagged (weights, scratch, KV segments,
 * staging), so the budgets cover all of it. A request that does not fit either spills to the next
 * tier (device -> host -> nvme, when the caller passes SP_TIER_SPILL) or fails with a message that
 * names the tier, the request and the budget; a tier never silently exceeds its budget.
 *
 * Device memory is reached through a small table of operations (sp_tier_device_ops). Without one
 * (CPU-only runs) the device tier is a capacity-limited arena in host memory with memcpy copies,
 * so the CPU run exercises the same code path as a GPU run. The nvme tier is an sp_uring_store,
 * opened lazily on the first spill (so a missing spill dir only matters when something spills).
 *
 * Thread-safety: all functions may be called concurrently (one internal mutex for accounting; the
 * store serializes its own I/O).
 */
#ifndef SP_TIER_H
#define SP_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "topology.h"
#include "uring_store.h"

typedef enum { SP_TIER_DEVICE, SP_TIER_HOST, SP_TIER_NVME, SP_TIER_COUNT } sp_tier_kind;
typedef enum { SP_TAG_WEIGHTS, SP_TAG_SCRATCH, SP_TAG_KV, SP_TAG_STAGING, SP_TAG_COUNT } sp_tier_tag;

enum {
    SP_TIER_SPILL = 1u << 0, /* allow placing in a later tier when the asked one is full */
    /* The buffer receives O_DIRECT reads from the spill store. On the CPU arena one of 1 MiB or more
     * is then backed by huge pages (io/huge_map.h: ~2.5x faster direct reads on virtio) and charged
     * at its 2 MiB-rounded size (sp_tier_dma_round), which becomes its size. No effect on a real
     * device or on the host tier. */
    SP_TIER_DMA = 1u << 1,
};

/* Device memory backend. All entries required; ctx is passed back unchanged. Copies are
 * synchronous from the caller's point of view. */
typedef struct {
    const char *name;
    void *(*alloc)(void *ctx, size_t size);                 /* NULL on failure */
    void (*free)(void *ctx, void *ptr, size_t size);
    int (*to_device)(void *ctx, void *dst, const void *src_host, size_t n);   /* 0 or -errno */
    int (*to_host)(void *ctx, void *dst_host, const void *src, size_t n);     /* 0 or -errno */
    void *ctx;
} sp_tier_device_ops;

typedef struct {
    uint64_t budget[SP_TIER_COUNT];       /* bytes; 0 = unlimited */
    sp_uring_store_opts nvme;             /* spill store options (dir must outlive the tiers) */
    const sp_topology_t *topo;            /* NUMA binding of host memory; may be NULL */
    const sp_tier_device_ops *device_ops; /* NULL = CPU arena */
} sp_tiers_opts;

typedef struct sp_tiers sp_tiers_t;

/* A memory allocation on the device or host tier. */
typedef struct {
    sp_tier_kind tier;
    sp_tier_tag tag;
    void *ptr;        /* device pointer (device tier) or host pointer; NULL = empty */
    size_t size;      /* bytes charged to the budget */
    void *priv;       /* host tier: the sp_host_buf bookkeeping */
} sp_tier_mem;

/* Where one segment lives. */
typedef struct {
    sp_tier_kind tier;
    size_t size;      /* payload bytes */
    sp_tier_mem mem;  /* device/host tiers */
    int64_t nvme_id;  /* nvme tier: the store's segment id; -1 otherwise */
    size_t charged;   /* bytes charged to the nvme budget (4 KiB-rounded) */
} sp_seg_loc;

/* Fill opts from a configuration ([tiers] budgets, [spill] store options). cfg must outlive opts
 * (opts->nvme.dir points into it). */
void sp_tiers_opts_from_config(sp_tiers_opts *opts, const sp_config *cfg);

sp_tiers_t *sp_tiers_create(const sp_tiers_opts *opts); /* NULL on failure (message set) */
void sp_tiers_free(sp_tiers_t *ts); /* accepts NULL; frees the arena, closes (removes) spill file */

/* Allocate size bytes on `tier` (device or host) tagged `tag`. With SP_TIER_SPILL a device request
 * that does not fit goes to the host. Returns 0 (out->tier says where) or a negative errno:
 * -ENOSPC when over budget, with "tier <name>: cannot allocate N bytes for <tag>: U of B bytes
 * used (budget ... )". */
int sp_tiers_alloc(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, size_t size, unsigned flags,
                   sp_tier_mem *out);
void sp_tiers_release(sp_tiers_t *ts, sp_tier_mem *m); /* accepts an empty one */

/* Charge `bytes` of memory that exists elsewhere (the memory-mapped weights, a context's activation
 * buffers and decode tails) to `tier` under `tag`, so later allocations and placements see it.
 * Nothing is allocated. Returns 0, or -ENOSPC with the same message as sp_tiers_alloc when it does
 * not fit. sp_tiers_unreserve gives the bytes back (same tier, tag and count). */
int sp_tiers_reserve(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, uint64_t bytes);
void sp_tiers_unreserve(sp_tiers_t *ts, sp_tier_kind tier, sp_tier_tag tag, uint64_t bytes);

/* Place a copy of bytes[0..size) on `want`, spilling onward with SP_TIER_SPILL. If the nvme write
 * itself fails (EIO, ENOSPC), a copy goes to the host or device tier instead when one has room;
 * otherwise the call fails and nothing is charged. */
int sp_tiers_seg_put(sp_tiers_t *ts, sp_tier_kind want, unsigned flags, const void *bytes,
                     size_t size, sp_seg_loc *out);

/* Copy segment bytes into host memory dst (cap bytes). nvme reads verify the checksum. */
int sp_tiers_seg_read(sp_tiers_t *ts, const sp_seg_loc *loc, void *dst, size_t cap);
void sp_tiers_seg_free(sp_tiers_t *ts, sp_seg_loc *loc); /* accepts a freed one */

/* True when device memory is ordinary host memory (the CPU arena): the nvme store can then read
 * straight into a device buffer, with no staging copy. */
bool sp_tiers_device_is_host(const sp_tiers_t *ts);
/* The granule SP_TIER_DMA device allocations are rounded to: the huge page size on the CPU arena,
 * 1 on a real device. Placement uses it (through sp_tier_dma_round) to charge slots exactly. */
size_t sp_tiers_dma_granule(const sp_tiers_t *ts);
/* What an SP_TIER_DMA device allocation of n bytes is charged with granule g: requests of at least
 * half a granule are rounded up to a multiple of it (at most 2x for the smallest of them); smaller
 * ones gain little from huge pages and keep their size. */
static inline size_t sp_tier_dma_round(size_t n, size_t g)
{
    return g > 1 && n >= g / 2 ? (n + g - 1) / g * g : n;
}

/* Copies between a host buffer and device memory through the device ops (memcpy on CPU). */
int sp_tiers_to_device(sp_tiers_t *ts, void *dst_dev, const void *src_host, size_t n);
int sp_tiers_to_host(sp_tiers_t *ts, void *dst_host, const void *src_dev, size_t n);

/* Bytes in use on a tier: for one tag, or all tags with tag < 0. */
uint64_t sp_tiers_used(sp_tiers_t *ts, sp_tier_kind tier, int tag);
uint64_t sp_tiers_budget(const sp_tiers_t *ts, sp_tier_kind tier);

/* The nvme store (opening it now if needed); NULL with a message when the spill dir is unusable
 * or its bounce buffers (queue_depth x block_size, pinned by io_uring) do not fit the host budget:
 * they are charged to host/staging while the store is open. */
sp_uring_store_t *sp_tiers_nvme_store(sp_tiers_t *ts);

/* Open the store and write, read back and drop one block, so an unusable or full spill dir shows
 * before any work depends on it. 0, or a negative errno with a message naming the directory, the
 * condition (-ENOSPC: the file system is full) and the keys that help. */
int sp_tiers_nvme_probe(sp_tiers_t *ts);

/* Bytes of memory the tiers hold locked: host buffers that are mlocked or CUDA-pinned, plus the
 * spill store's bounce buffers when io_uring has them registered (pinned). Every one of them is
 * charged to the host tier. Either out pointer may be NULL. */
uint64_t sp_tiers_locked(sp_tiers_t *ts, uint64_t *host_buffers, uint64_t *bounce);

const char *sp_tier_name(sp_tier_kind t);
const char *sp_tier_tag_name(sp_tier_tag t);

/* One line per tier: used per tag / budget. */
void sp_tiers_print(sp_tiers_t *ts, FILE *out);

#endif
