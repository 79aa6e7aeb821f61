/* scheduler.c - ring of d+1 device slots fed by a worker thread (see scheduler.h).
 *
 * DESIGN: streamed layers form a cyclic sequence; position p (global, across steps) is streamed
 * layer p mod n_str and lives in slot p mod R (R = d+1). Three counters, all under `lock`:
 *   released  - positions the caller has released;
 *   written   - positions whose write-back (if dirty) is done; written <= released;
 *   loaded    - positions fetched into their slot; loaded < released + R, and position p is only
 *               loaded once written > p - R (its slot's previous occupant is safely home).
 * The worker always does pending write-backs first, so a layer's next fetch sees its new bytes.
 * Copies run outside the lock; the slot being filled is not visible to the caller until `loaded`
 * moves past it.
 * With a backend (opts.be) the host->device part of a fill and the device->host part of a
 * write-back run on the backend's copy stream: `loaded` then means "issued", and the slot's ready
 * event (recorded after the fill) is what the compute stream waits on in acquire; release records
 * the slot's done event on the compute stream, and the copy stream waits on it before it touches
 * the slot again (the worker itself waits on it before writing into a host-addressable slot).
 * The counters keep their meaning, so a missing event shows as wrong bytes, not as a hang.
 */
#include "scheduler.h"

#include "sp_alloc.h"
#include "sp_error.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    sp_tier_mem mem;   /* device slot */
    int layer;         /* occupant, -1 none */
    size_t size;       /* bytes valid */
    bool dirty;
    int err;           /* fetch error for the current occupant (negative errno) */
    char msg[512];
    sp_buffer_t *view; /* with a backend: a view of mem (the copies' destination) */
    sp_event_t *ready, *done;
} slot_t;

struct sp_sched {
    sp_sched_opts o;
    int *streamed;     /* [n_str] layer ids */
    int n_str, R;
    int *pos_of_layer; /* layer -> index in streamed, -1 resident */
    slot_t *slots;     /* [R] */
    sp_tier_mem staging;
    sp_event_t *staged;  /* with a backend: recorded after a copy out of / into staging */
    pthread_mutex_t lock;
    pthread_cond_t cv;
    pthread_t worker;
    bool worker_on, stop;
    bool paused;       /* sp_sched_pause: the worker takes no new job */
    bool busy;         /* the worker is running a job (outside the lock) */
    uint64_t acquired, released, written, loaded;
    bool holding;      /* a streamed layer is acquired and not yet released */
    int wb_err;
    char wb_msg[512];
    sp_sched_stats st;
    uint64_t *layer_wait_ns, *layer_acquires;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Host bytes into slot sl: on the backend's copy stream after the slot's done event, then its ready
 * event; or the tier's synchronous copy. */
static int to_slot(sp_sched_t *s, slot_t *sl, const void *src, size_t n)
{
    if (!s->o.be)
        return sp_tiers_to_device(s->o.tiers, sl->mem.ptr, src, n);
    int rc;
    if ((rc = sp_backend_stream_wait(s->o.be, SP_STREAM_COPY, sl->done)) < 0 ||
        (rc = sp_backend_copy_h2d(s->o.be, SP_STREAM_COPY, sl->view, 0, src, n)) < 0)
        return rc;
    return sp_backend_event_record(s->o.be, sl->ready, SP_STREAM_COPY);
}

/* Slot sl's first n bytes into host memory (a write-back): on the copy stream after the slot's
 * done event, waited for here (the worker's thread). */
static int from_slot(sp_sched_t *s, slot_t *sl, void *dst, size_t n)
{
    if (!s->o.be)
        return sp_tiers_to_host(s->o.tiers, dst, sl->mem.ptr, n);
    int rc;
    if ((rc = sp_backend_stream_wait(s->o.be, SP_STREAM_COPY, sl->done)) < 0 ||
        (rc = sp_backend_copy_d2h(s->o.be, SP_STREAM_COPY, dst, sl->view, 0, n)) < 0 ||
        (rc = sp_backend_event_record(s->o.be, s->staged, SP_STREAM_COPY)) < 0)
        return rc;
    return sp_backend_event_sync(s->o.be, s->staged);
}

/* Fetch streamed layer `layer` into slot sl. Runs without the lock (worker or sync caller). */
static int fetch(sp_sched_t *s, slot_t *sl, int layer, uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT])
{
    sp_seg_loc *loc = &s->o.locs[layer];
    sl->layer = layer;
    sl->dirty = false;
    sl->size = 0;
    sl->err = 0;
    sl->msg[0] = '\0';
    int rc;
    if (loc->size > s->o.slot_bytes) {
        rc = sp_error(ENOBUFS, "layer %d segment (%zu bytes) exceeds the device slot (%zu bytes)",
                      layer, loc->size, s->o.slot_bytes);
    } else if (loc->tier == SP_TIER_HOST) {
        rc = s->o.verify ? s->o.verify(s->o.verify_user, layer, loc->mem.ptr, loc->size) : 0;
        if (rc == 0) {
            rc = to_slot(s, sl, loc->mem.ptr, loc->size);
            moved[SP_TIER_HOST][SP_TIER_DEVICE] += loc->size;
        }
    } else if (sp_tiers_device_is_host(s->o.tiers)) {
        /* CPU arena: the slot is host memory; the store reads (and verifies) straight into it,
         * once the compute stream is done with the slot's previous occupant */
        if (s->o.be && (rc = sp_backend_event_sync(s->o.be, sl->done)) < 0)
            goto out;
        rc = sp_tiers_seg_read(s->o.tiers, loc, sl->mem.ptr, sl->mem.size);
        moved[SP_TIER_NVME][SP_TIER_DEVICE] += loc->size;
        if (rc == 0 && s->o.be)
            rc = sp_backend_event_record(s->o.be, sl->ready, SP_STREAM_COPY);
    } else {
        /* the previous copy out of staging must have finished before the store overwrites it */
        if (s->o.be && (rc = sp_backend_event_sync(s->o.be, s->staged)) < 0)
            goto out;
        rc = sp_tiers_seg_read(s->o.tiers, loc, s->staging.ptr, s->staging.size);
        if (rc == 0) {
            moved[SP_TIER_NVME][SP_TIER_HOST] += loc->size;
            rc = to_slot(s, sl, s->staging.ptr, loc->size);
            if (rc == 0 && s->o.be)
                rc = sp_backend_event_record(s->o.be, s->staged, SP_STREAM_COPY);
            moved[SP_TIER_HOST][SP_TIER_DEVICE] += loc->size;
        }
    }
out:
    if (rc < 0) {
        sl->err = rc;
        snprintf(sl->msg, sizeof sl->msg, "layer %d: fetch from %s failed: %s", layer,
                 sp_tier_name(loc->tier), sp_last_error());
        return rc;
    }
    sl->size = loc->size;
    return 0;
}

/* Write slot sl's bytes back to its layer's home tier. Runs without the lock. */
static int write_back(sp_sched_t *s, slot_t *sl, uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT])
{
    if (!sl->dirty || sl->layer < 0)
        return 0;
    sl->dirty = false;
    sp_seg_loc *loc = &s->o.locs[sl->layer];
    int rc0;
    if (s->o.be && (rc0 = sp_backend_event_sync(s->o.be, s->staged)) < 0)
        return rc0;
    int rc = from_slot(s, sl, s->staging.ptr, sl->size);
    if (rc < 0)
        return sp_error(-rc, "layer %d: device->host copy for write-back failed", sl->layer);
    moved[SP_TIER_DEVICE][SP_TIER_HOST] += sl->size;
    if (loc->tier == SP_TIER_HOST && sl->size <= loc->mem.size) {
        memcpy(loc->mem.ptr, s->staging.ptr, sl->size); /* fits the existing allocation */
        loc->size = sl->size;
        return 0;
    }
    sp_seg_loc fresh;
    rc = sp_tiers_seg_put(s->o.tiers, loc->tier, SP_TIER_SPILL, s->staging.ptr, sl->size, &fresh);
    if (rc < 0)
        return sp_error(-rc, "layer %d: write-back failed, previous contents kept: %s", sl->layer,
                        sp_last_error());
    if (fresh.tier == SP_TIER_NVME)
        moved[SP_TIER_HOST][SP_TIER_NVME] += sl->size;
    sp_tiers_seg_free(s->o.tiers, loc);
    *loc = fresh;
    return 0;
}

static void merge_moved(sp_sched_t *s, uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT])
{
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++)
            s->st.bytes[a][b] += moved[a][b];
}

static void *worker_main(void *arg)
{
    sp_sched_t *s = arg;
    /* The worker sleeps on I/O most of the time but must run the moment a read completes or a slot
     * frees, also while the compute threads spin-wait on every core: ask for a slightly higher
     * priority (nice -5) where permitted; without the privilege it keeps the default. */
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -5) != 0)
        errno = 0;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->stop && (s->paused || (s->written == s->released &&
                                           s->loaded >= s->released + (uint64_t)s->R)))
            pthread_cond_wait(&s->cv, &s->lock);
        if (s->stop)
            break;
        s->busy = true;
        uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT] = {{0}};
        if (s->written < s->released) {
            slot_t *sl = &s->slots[s->written % (uint64_t)s->R];
            pthread_mutex_unlock(&s->lock);
            int rc = write_back(s, sl, moved);
            char msg[512];
            if (rc < 0)
                snprintf(msg, sizeof msg, "%s", sp_last_error());
            pthread_mutex_lock(&s->lock);
            if (rc < 0 && !s->wb_err) {
                s->wb_err = rc;
                snprintf(s->wb_msg, sizeof s->wb_msg, "%s", msg);
            }
            s->written++;
        } else {
            uint64_t p = s->loaded;
            slot_t *sl = &s->slots[p % (uint64_t)s->R];
            int layer = s->streamed[p % (uint64_t)s->n_str];
            pthread_mutex_unlock(&s->lock);
            fetch(s, sl, layer, moved);
            pthread_mutex_lock(&s->lock);
            s->loaded++;
        }
        s->busy = false;
        merge_moved(s, moved);
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

sp_sched_t *sp_sched_create(const sp_sched_opts *o)
{
    if (!o || o->n_layers <= 0 || !o->tiers || !o->locs || o->prefetch_depth < 0) {
        sp_error(EINVAL, "scheduler: bad options");
        return NULL;
    }
    sp_sched_t *s = sp_calloc(1, sizeof *s);
    if (!s) {
        sp_error(ENOMEM, "scheduler: out of memory");
        return NULL;
    }
    s->o = *o;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->streamed = sp_calloc((size_t)o->n_layers, sizeof *s->streamed);
    s->pos_of_layer = sp_calloc((size_t)o->n_layers, sizeof *s->pos_of_layer);
    s->layer_wait_ns = sp_calloc((size_t)o->n_layers, sizeof *s->layer_wait_ns);
    s->layer_acquires = sp_calloc((size_t)o->n_layers, sizeof *s->layer_acquires);
    if (!s->streamed || !s->pos_of_layer || !s->layer_wait_ns || !s->layer_acquires) {
        sp_error(ENOMEM, "scheduler: out of memory");
        goto fail;
    }
    for (int l = 0; l < o->n_layers; l++) {
        s->pos_of_layer[l] = -1;
        if (o->locs[l].tier != SP_TIER_DEVICE) {
            s->pos_of_layer[l] = s->n_str;
            s->streamed[s->n_str++] = l;
        }
    }
    if (s->n_str == 0)
        return s; /* everything resident: nothing to stream */
    s->R = o->prefetch_depth + 1 < s->n_str ? o->prefetch_depth + 1 : s->n_str;
    if (o->prefetch_depth == 0)
        s->R = 1;
    s->slots = sp_calloc((size_t)s->R, sizeof *s->slots);
    if (!s->slots) {
        sp_error(ENOMEM, "scheduler: out of memory");
        goto fail;
    }
    for (int i = 0; i < s->R; i++) {
        s->slots[i].layer = -1;
        if (sp_tiers_alloc(o->tiers, SP_TIER_DEVICE, SP_TAG_KV, o->slot_bytes, SP_TIER_DMA,
                           &s->slots[i].mem) < 0) {
            sp_error(ENOSPC, "scheduler: cannot allocate %d device slots of %zu bytes (prefetch_depth "
                             "%d): %s", s->R, o->slot_bytes, o->prefetch_depth, sp_last_error());
            goto fail;
        }
        if (o->be && (!(s->slots[i].view = sp_backend_buffer_view(o->be, s->slots[i].mem.ptr, o->slot_bytes,
                                                                   sp_tiers_device_is_host(o->tiers))) ||
                      !(s->slots[i].ready = sp_backend_event_new(o->be)) ||
                      !(s->slots[i].done = sp_backend_event_new(o->be))))
            goto fail;
    }
    if (o->be && !(s->staged = sp_backend_event_new(o->be)))
        goto fail;
    if (sp_tiers_alloc(o->tiers, SP_TIER_HOST, SP_TAG_STAGING, o->slot_bytes, 0, &s->staging) < 0) {
        sp_error(ENOSPC, "scheduler: cannot allocate the host staging buffer: %s", sp_last_error());
        goto fail;
    }
    if (o->prefetch_depth > 0) {
        int rc = pthread_create(&s->worker, NULL, worker_main, s);
        if (rc != 0) {
            sp_error(rc, "scheduler: cannot start the prefetch worker");
            goto fail;
        }
        s->worker_on = true;
    }
    return s;
fail:
    sp_sched_free(s);
    return NULL;
}

int sp_sched_sync(sp_sched_t *s)
{
    if (!s)
        return 0;
    int rc;
    if (s->worker_on) {
        pthread_mutex_lock(&s->lock);
        while (s->written < s->released)
            pthread_cond_wait(&s->cv, &s->lock);
        rc = s->wb_err;
        if (rc)
            sp_error(-rc, "%s", s->wb_msg);
        pthread_mutex_unlock(&s->lock);
    } else {
        rc = s->wb_err;
        if (rc)
            sp_error(-rc, "%s", s->wb_msg);
    }
    return rc;
}

void sp_sched_free(sp_sched_t *s)
{
    if (!s)
        return;
    if (s->worker_on) {
        sp_sched_sync(s);
        pthread_mutex_lock(&s->lock);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->worker, NULL);
    }
    if (s->o.be)
        sp_backend_stream_sync(s->o.be, SP_STREAM_COPY);
    for (int i = 0; s->slots && i < s->R; i++) {
        sp_backend_event_free(s->slots[i].ready);
        sp_backend_event_free(s->slots[i].done);
        sp_backend_buffer_free(s->slots[i].view);
        sp_tiers_release(s->o.tiers, &s->slots[i].mem);
    }
    sp_backend_event_free(s->staged);
    sp_tiers_release(s->o.tiers, &s->staging);
    free(s->slots);
    free(s->streamed);
    free(s->pos_of_layer);
    free(s->layer_wait_ns);
    free(s->layer_acquires);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int sp_sched_begin_step(sp_sched_t *s)
{
    if (!s)
        return sp_error(EINVAL, "scheduler: NULL");
    if (s->holding)
        return sp_error(EINVAL, "scheduler: begin_step while layer %d is still acquired",
                        s->slots[s->acquired % (uint64_t)s->R].layer);
    pthread_mutex_lock(&s->lock);
    s->st.steps++;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int check_layer(sp_sched_t *s, int layer)
{
    if (layer < 0 || layer >= s->o.n_layers)
        return sp_error(EINVAL, "scheduler: layer %d out of range [0, %d)", layer, s->o.n_layers);
    return 0;
}

int sp_sched_acquire(sp_sched_t *s, int layer, void **data, size_t *size)
{
    int rc = check_layer(s, layer);
    if (rc < 0)
        return rc;
    *data = NULL;
    *size = 0;
    if (s->pos_of_layer[layer] < 0) {
        *data = s->o.locs[layer].mem.ptr;
        *size = s->o.locs[layer].size;
        return 0;
    }
    if (s->holding)
        return sp_error(EINVAL, "scheduler: acquire of layer %d while layer %d is still acquired",
                        layer, s->streamed[s->acquired % (uint64_t)s->n_str]);
    uint64_t p = s->acquired;
    int want = s->streamed[p % (uint64_t)s->n_str];
    if (want != layer)
        return sp_error(EINVAL, "scheduler: streamed layers must be acquired in order: expected layer "
                                "%d, got %d", want, layer);
    slot_t *sl = &s->slots[p % (uint64_t)s->R];
    uint64_t t0 = now_ns(), waited = 0;
    bool hit;
    if (!s->worker_on) {
        /* Synchronous (d = 0): fetch here; it is never a prefetch hit. */
        uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT] = {{0}};
        fetch(s, sl, layer, moved);
        merge_moved(s, moved);
        hit = false;
        waited = now_ns() - t0;
        s->loaded = p + 1;
    } else {
        pthread_mutex_lock(&s->lock);
        hit = s->loaded > p;
        while (s->loaded <= p)
            pthread_cond_wait(&s->cv, &s->lock);
        pthread_mutex_unlock(&s->lock);
        if (!hit)
            waited = now_ns() - t0;
    }
    pthread_mutex_lock(&s->lock);
    s->st.acquires++;
    s->st.hits += hit;
    s->st.stalls += !hit;
    s->st.wait_ns += waited;
    s->layer_wait_ns[layer] += waited;
    s->layer_acquires[layer]++;
    s->acquired = p + 1;
    s->holding = true;
    pthread_mutex_unlock(&s->lock);
    if (sl->err)
        return sp_error(-sl->err, "%s", sl->msg);
    /* the fill was issued; the compute stream waits for it to land */
    if (s->o.be && (rc = sp_backend_stream_wait(s->o.be, SP_STREAM_COMPUTE, sl->ready)) < 0)
        return rc;
    *data = sl->mem.ptr;
    *size = sl->size;
    return 0;
}

int sp_sched_mark_dirty(sp_sched_t *s, int layer, size_t new_size)
{
    int rc = check_layer(s, layer);
    if (rc < 0)
        return rc;
    if (s->pos_of_layer[layer] < 0) {
        sp_seg_loc *loc = &s->o.locs[layer];
        if (new_size > loc->mem.size)
            return sp_error(ENOBUFS, "scheduler: resident layer %d grows to %zu bytes beyond its "
                                     "%zu-byte allocation", layer, new_size, loc->mem.size);
        loc->size = new_size; /* resident: the bytes are already home */
        return 0;
    }
    if (!s->holding || s->streamed[(s->acquired - 1) % (uint64_t)s->n_str] != layer)
        return sp_error(EINVAL, "scheduler: mark_dirty of layer %d, which is not acquired", layer);
    slot_t *sl = &s->slots[(s->acquired - 1) % (uint64_t)s->R];
    if (sl->err)
        return sp_error(EIO, "scheduler: layer %d failed to load; its bytes cannot be written back",
                        layer);
    if (new_size > s->o.slot_bytes)
        return sp_error(ENOBUFS, "scheduler: layer %d grows to %zu bytes beyond the %zu-byte slot",
                        layer, new_size, s->o.slot_bytes);
    sl->size = new_size;
    sl->dirty = true;
    return 0;
}

int sp_sched_release(sp_sched_t *s, int layer)
{
    int rc = check_layer(s, layer);
    if (rc < 0)
        return rc;
    if (s->pos_of_layer[layer] < 0)
        return 0;
    if (!s->holding || s->streamed[(s->acquired - 1) % (uint64_t)s->n_str] != layer)
        return sp_error(EINVAL, "scheduler: release of layer %d, which is not acquired", layer);
    slot_t *sl = &s->slots[(s->acquired - 1) % (uint64_t)s->R];
    bool dirty = sl->dirty;
    /* the compute stream's reads of this slot come before anything the copy stream does to it */
    if (s->o.be && (rc = sp_backend_event_record(s->o.be, sl->done, SP_STREAM_COMPUTE)) < 0)
        return rc;
    if (!s->worker_on) {
        uint64_t moved[SP_TIER_COUNT][SP_TIER_COUNT] = {{0}};
        int wb = write_back(s, sl, moved);
        merge_moved(s, moved);
        if (wb < 0 && !s->wb_err) {
            s->wb_err = wb;
            snprintf(s->wb_msg, sizeof s->wb_msg, "%s", sp_last_error());
        }
        s->released++;
        s->written++;
        s->st.writebacks += dirty;
        s->holding = false;
        return wb;
    }
    pthread_mutex_lock(&s->lock);
    s->released++;
    s->st.writebacks += dirty;
    s->holding = false;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

void sp_sched_get_stats(sp_sched_t *s, sp_sched_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->st;
    pthread_mutex_unlock(&s->lock);
}

double sp_sched_hit_rate(sp_sched_t *s)
{
    sp_sched_stats st;
    sp_sched_get_stats(s, &st);
    return st.acquires ? (double)st.hits / (double)st.acquires : 1.0;
}

int sp_sched_pause(sp_sched_t *s, void **staging, size_t *cap)
{
    *staging = NULL;
    *cap = 0;
    if (!s || s->n_str == 0 || !s->staging.ptr)
        return sp_error(ENOENT, "scheduler: no staging buffer (nothing is streamed)");
    if (s->holding)
        return sp_error(EINVAL, "scheduler: pause while a streamed layer is acquired");
    pthread_mutex_lock(&s->lock);
    if (s->paused) {
        pthread_mutex_unlock(&s->lock);
        return sp_error(EINVAL, "scheduler: already paused");
    }
    s->paused = true;
    while (s->busy)
        pthread_cond_wait(&s->cv, &s->lock);
    pthread_mutex_unlock(&s->lock);
    *staging = s->staging.ptr;
    *cap = s->staging.size;
    return 0;
}

void sp_sched_resume(sp_sched_t *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->paused = false;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->lock);
}

void sp_sched_layer_stats(sp_sched_t *s, int layer, uint64_t *acquires, uint64_t *wait_ns)
{
    *acquires = 0;
    *wait_ns = 0;
    if (!s || layer < 0 || layer >= s->o.n_layers)
        return;
    pthread_mutex_lock(&s->lock);
    *acquires = s->layer_acquires[layer];
    *wait_ns = s->layer_wait_ns[layer];
    pthread_mutex_unlock(&s->lock);
}

int sp_sched_n_slots(const sp_sched_t *s) { return s ? s->R : 0; }
int sp_sched_n_streamed(const sp_sched_t *s) { return s ? s->n_str : 0; }

void sp_sched_stats_json(sp_sched_t *s, FILE *out)
{
    sp_sched_stats st;
    sp_sched_get_stats(s, &st);
    fprintf(out, "{\"prefetch_depth\":%d,\"slots\":%d,\"streamed_layers\":%d,\"steps\":%" PRIu64
                 ",\"acquires\":%" PRIu64 ",\"hits\":%" PRIu64 ",\"stalls\":%" PRIu64
                 ",\"hit_rate\":%.4f,\"wait_ms\":%.3f,\"writebacks\":%" PRIu64 ",\"bytes\":{",
            s->o.prefetch_depth, s->R, s->n_str, st.steps, st.acquires, st.hits, st.stalls,
            st.acquires ? (double)st.hits / (double)st.acquires : 1.0, (double)st.wait_ns / 1e6,
            st.writebacks);
    bool first = true;
    for (int a = 0; a < SP_TIER_COUNT; a++)
        for (int b = 0; b < SP_TIER_COUNT; b++) {
            if (a == b)
                continue;
            fprintf(out, "%s\"%s->%s\":%" PRIu64, first ? "" : ",", sp_tier_name((sp_tier_kind)a),
                    sp_tier_name((sp_tier_kind)b), st.bytes[a][b]);
            first = false;
        }
    fprintf(out, "},\"per_layer\":[");
    pthread_mutex_lock(&s->lock);
    for (int l = 0; l < s->o.n_layers; l++)
        fprintf(out, "%s{\"layer\":%d,\"tier\":\"%s\",\"acquires\":%" PRIu64 ",\"wait_ms\":%.3f}",
                l ? "," : "", l, sp_tier_name(s->o.locs[l].tier), s->layer_acquires[l],
                (double)s->layer_wait_ns[l] / 1e6);
    pthread_mutex_unlock(&s->lock);
    fprintf(out, "]}\n");
}
