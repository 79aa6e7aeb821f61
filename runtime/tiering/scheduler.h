/* scheduler.h - decode-time prefetch of spilled layer segments (DESIGN §6).
 *
 * Layers whose segment lives on the device tier are used in place. The others ("streamed" layers,
 * in increasing layer order) cycle through a ring of d+1 device slots: while the caller computes
 * layer λ, a worker thread brings the next d streamed layers nvme -> host staging -> device slot
 * (on the CPU arena, whose slots are host memory, the store reads straight into the slot). Releasing a layer frees its slot,
 * writes the layer back to its home tier if it was marked dirty (decode tail appended), and lets
 * the worker start on the streamed layer d+1 positions later, wrapping into the next step, so the
 * first layers of step t+1 are fetched while the last layers of step t compute.
 * d = 0 is synchronous: acquire loads on the caller's thread, release writes back.
 *
 * Contract: within a step the caller acquires and releases streamed layers in increasing order,
 * one at a time (acquire λ, compute, release λ); resident layers may be used in any order. The
 * caller's `locs` array is owned by the caller but updated by the scheduler on write-back: do not
 * touch it between sp_sched_create and sp_sched_sync/sp_sched_free.
 *
 * Thread-safety: one caller thread; the worker is internal.
 */
#ifndef SP_SCHEDULER_H
#define SP_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "tier.h"

typedef struct sp_sched sp_sched_t;

typedef struct {
    int n_layers;
    int prefetch_depth;   /* d >= 0 (clamped to the number of streamed layers - 1) */
    sp_tiers_t *tiers;
    sp_seg_loc *locs;     /* [n_layers] placements; updated on write-back */
    size_t slot_bytes;    /* capacity of each device slot: >= largest streamed segment + tail room */
    /* Optional: called on the host-side bytes of every fetch from the host tier, before they are
     * copied to the device (on the worker thread for d > 0). Nonzero (a negative errno, message set
     * with sp_error) fails the fetch: the acquire then reports it and no bytes are handed out.
     * Reads from the nvme tier are verified by the store itself (XXH3-64 of the spilled bytes). */
    int (*verify)(void *user, int layer, const void *bytes, size_t size);
    void *verify_user;
    /* Optional: the backend whose copy stream moves host bytes into the device slots. With it,
     * every slot has a "ready" event (recorded on the copy stream after its fill; acquire makes
     * the compute stream wait on it) and a "done" event (recorded on the compute stream at release;
     * the copy stream waits on it before the slot is refilled or read back). Without it the tier's
     * synchronous copies are used. */
    sp_backend_t *be;
} sp_sched_opts;

typedef struct {
    uint64_t bytes[SP_TIER_COUNT][SP_TIER_COUNT]; /* bytes moved [from][to] */
    uint64_t acquires;        /* streamed-layer acquires */
    uint64_t hits;            /* ... that found their layer already on the device */
    uint64_t stalls;          /* ... that had to wait (acquires - hits) */
    uint64_t wait_ns;         /* total time spent waiting in acquire */
    uint64_t writebacks;
    uint64_t steps;
} sp_sched_stats;

/* Allocates d+1 slots on the device tier (tag kv) and one staging buffer on the host tier (tag
 * staging), both within budget, and starts the worker (d > 0). NULL on failure (message set). */
sp_sched_t *sp_sched_create(const sp_sched_opts *opts);

/* Waits for pending write-backs, stops the worker, returns the slots. Accepts NULL. */
void sp_sched_free(sp_sched_t *s);

/* Marks the start of a decode step (counts steps; the pipeline itself runs across steps). */
int sp_sched_begin_step(sp_sched_t *s);

/* Blocks until layer's bytes are on the device; *data / *size receive them (device memory, valid
 * until release). Counts a stall and its wait time when the layer was not ready. Returns 0, or a
 * negative errno with a message when the fetch failed (the layer is then unusable this step, but
 * must still be released) or the order contract is broken. */
int sp_sched_acquire(sp_sched_t *s, int layer, void **data, size_t *size);

/* The caller changed the acquired layer's bytes (e.g. appended its decode tail): new_size bytes
 * (<= slot capacity, or the resident allocation for resident layers) are written back to the
 * layer's home tier when it leaves the device. */
int sp_sched_mark_dirty(sp_sched_t *s, int layer, size_t new_size);

/* Done with layer: frees its slot (after write-back) and lets the worker fetch further ahead. */
int sp_sched_release(sp_sched_t *s, int layer);

/* Waits until every write-back requested so far has completed; returns the first write-back
 * error (0 if none). After it, locs reflect every write-back. */
int sp_sched_sync(sp_sched_t *s);

void sp_sched_get_stats(sp_sched_t *s, sp_sched_stats *out);
double sp_sched_hit_rate(sp_sched_t *s); /* hits / acquires of streamed layers; 1 when none */

/* Borrow the host staging buffer for a synchronous read outside the ring (statistics, out-of-order
 * access): waits until the worker finishes its current job and keeps it from starting another
 * until sp_sched_resume. No streamed layer may be acquired meanwhile. Returns 0 (*staging, *cap
 * set), -ENOENT when nothing is streamed (no staging buffer) or -EINVAL. */
int sp_sched_pause(sp_sched_t *s, void **staging, size_t *cap);
void sp_sched_resume(sp_sched_t *s); /* accepts NULL */

/* Per-layer counters: acquires of the layer while streamed and the time spent waiting for it. */
void sp_sched_layer_stats(sp_sched_t *s, int layer, uint64_t *acquires, uint64_t *wait_ns);

/* Slots in the ring (0 when nothing is streamed) and streamed layers. */
int sp_sched_n_slots(const sp_sched_t *s);
int sp_sched_n_streamed(const sp_sched_t *s);

/* {"prefetch_depth":..,"bytes":{"nvme->host":..},"per_layer":[{"layer":0,"wait_ms":..}],..} */
void sp_sched_stats_json(sp_sched_t *s, FILE *out);

#endif
