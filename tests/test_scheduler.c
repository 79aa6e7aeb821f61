/* test_scheduler.c - the prefetch scheduler over synthetic segments of random bytes: every
 * placement combination x d in {0,1,2,4} returns exactly the stored bytes over many steps,
 * write-backs of grown decode tails are seen by later steps, counters add up, and fetch failures
 * (checksum, EIO) fail the acquire with a message and recover once the fault clears. */
#include <criterion/criterion.h>

#include "scheduler.h"
#include "sp_error.h"
#include "support/spill_dir.h"
#include "tier.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void make_dir(void) { spill_dir_make(dir, sizeof dir, "sp-sched"); }
static void remove_dir(void) { spill_dir_remove_checked(dir); }

TestSuite(sched, .init = make_dir, .fini = remove_dir);

static sp_tiers_t *make_tiers(uint64_t dev)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = dev;
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 8, .block_size = 16384,
                                   .register_buffers = true, .verify_checksums = true};
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    return ts;
}

static uint32_t rng = 12345;
static uint32_t rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
    return rng;
}

enum { SLOT = 64 * 1024 };

typedef struct {
    int n;
    uint8_t **shadow;  /* expected bytes per layer */
    size_t *size;
    sp_seg_loc *locs;
} model;

static void model_init(model *m, sp_tiers_t *ts, int n, const int *tier)
{
    m->n = n;
    m->shadow = calloc((size_t)n, sizeof *m->shadow);
    m->size = calloc((size_t)n, sizeof *m->size);
    m->locs = calloc((size_t)n, sizeof *m->locs);
    for (int l = 0; l < n; l++) {
        m->size[l] = 1000 + rnd() % 20000;
        m->shadow[l] = malloc(SLOT);
        for (size_t i = 0; i < m->size[l]; i++)
            m->shadow[l][i] = (uint8_t)rnd();
        cr_assert_eq(sp_tiers_seg_put(ts, (sp_tier_kind)tier[l], 0, m->shadow[l], m->size[l], &m->locs[l]),
                     0, "%s", sp_last_error());
    }
}

static void model_free(model *m, sp_tiers_t *ts)
{
    for (int l = 0; l < m->n; l++) {
        sp_tiers_seg_free(ts, &m->locs[l]);
        free(m->shadow[l]);
    }
    free(m->shadow);
    free(m->size);
    free(m->locs);
}

/* Run `steps` decode steps; on some steps some layers append a tail and change bytes (dirty). */
static void run_steps(sp_sched_t *s, model *m, int steps, bool mutate)
{
    for (int step = 0; step < steps; step++) {
        cr_assert_eq(sp_sched_begin_step(s), 0, "%s", sp_last_error());
        for (int l = 0; l < m->n; l++) {
            void *p;
            size_t n;
            cr_assert_eq(sp_sched_acquire(s, l, &p, &n), 0, "step %d layer %d: %s", step, l,
                         sp_last_error());
            cr_assert_eq(n, m->size[l], "step %d layer %d size", step, l);
            cr_assert_eq(memcmp(p, m->shadow[l], n), 0, "step %d layer %d bytes differ", step, l);
            bool resident = m->locs[l].tier == SP_TIER_DEVICE;
            if (mutate && rnd() % 3 == 0) {
                size_t grow = resident ? 0 : rnd() % 300;
                if (m->size[l] + grow > SLOT - 1)
                    grow = 0;
                uint8_t *b = p;
                b[rnd() % n] ^= 0xff;
                for (size_t i = 0; i < grow; i++)
                    b[n + i] = (uint8_t)rnd();
                memcpy(m->shadow[l], b, n + grow);
                m->size[l] = n + grow;
                cr_assert_eq(sp_sched_mark_dirty(s, l, n + grow), 0, "%s", sp_last_error());
            }
            cr_assert_eq(sp_sched_release(s, l), 0, "%s", sp_last_error());
        }
    }
}

static void one_config(const int *tier, int n, int d, int steps)
{
    sp_tiers_t *ts = make_tiers(0);
    model m;
    model_init(&m, ts, n, tier);
    sp_sched_opts o = {.n_layers = n, .prefetch_depth = d, .tiers = ts, .locs = m.locs, .slot_bytes = SLOT};
    sp_sched_t *s = sp_sched_create(&o);
    cr_assert(s, "%s", sp_last_error());
    run_steps(s, &m, steps, true);
    cr_assert_eq(sp_sched_sync(s), 0, "%s", sp_last_error());
    sp_sched_stats st;
    sp_sched_get_stats(s, &st);
    int n_str = 0;
    for (int l = 0; l < n; l++)
        n_str += tier[l] != SP_TIER_DEVICE;
    cr_assert_eq(st.acquires, (uint64_t)(n_str * steps));
    cr_assert_eq(st.hits + st.stalls, st.acquires);
    cr_assert_eq(st.steps, (uint64_t)steps);
    if (d == 0)
        cr_assert_eq(st.hits, 0, "d = 0 is synchronous");
    sp_sched_free(s);
    /* After the scheduler is gone, the home copies hold the latest bytes. */
    uint8_t *buf = malloc(SLOT);
    for (int l = 0; l < n; l++) {
        cr_assert_eq(m.locs[l].size, m.size[l]);
        cr_assert_eq(sp_tiers_seg_read(ts, &m.locs[l], buf, SLOT), 0, "%s", sp_last_error());
        cr_assert_eq(memcmp(buf, m.shadow[l], m.size[l]), 0, "layer %d home copy stale", l);
    }
    free(buf);
    model_free(&m, ts);
    /* Only the spill store's bounce buffers stay charged (host/staging) while it is open. */
    uint64_t bounce = 0;
    if (sp_tiers_used(ts, SP_TIER_NVME, -1) == 0 && sp_tiers_used(ts, SP_TIER_HOST, SP_TAG_STAGING)) {
        sp_uring_store_stats st;
        sp_uring_store_get_stats(sp_tiers_nvme_store(ts), &st);
        bounce = st.bounce_bytes;
    }
    for (int t = 0; t < SP_TIER_COUNT; t++)
        cr_assert_eq(sp_tiers_used(ts, (sp_tier_kind)t, -1), t == SP_TIER_HOST ? bounce : 0, "tier %d leaks", t);
    sp_tiers_free(ts);
}

Test(sched, every_placement_and_depth_returns_stored_bytes, .timeout = 600)
{
    enum { L = 4 };
    const int depths[] = {0, 1, 2, 4};
    int combos = 1;
    for (int i = 0; i < L; i++)
        combos *= 3;
    for (int c = 0; c < combos; c++) {
        int tier[L], x = c;
        for (int l = 0; l < L; l++) {
            tier[l] = x % 3;
            x /= 3;
        }
        for (size_t di = 0; di < sizeof depths / sizeof depths[0]; di++)
            one_config(tier, L, depths[di], 6);
    }
}

Test(sched, long_run_mixed_placement, .timeout = 600)
{
    enum { L = 16 };
    int tier[L];
    for (int l = 0; l < L; l++)
        tier[l] = l >= 12 ? SP_TIER_DEVICE : (l % 2 ? SP_TIER_NVME : SP_TIER_HOST);
    for (int d = 0; d <= 4; d += 2)
        one_config(tier, L, d, 60);
}

Test(sched, prefetch_hides_latency_when_compute_is_slower)
{
    enum { L = 8 };
    int tier[L];
    for (int l = 0; l < L; l++)
        tier[l] = SP_TIER_NVME;
    sp_tiers_t *ts = make_tiers(0);
    model m;
    model_init(&m, ts, L, tier);
    sp_sched_opts o = {.n_layers = L, .prefetch_depth = 2, .tiers = ts, .locs = m.locs, .slot_bytes = SLOT};
    sp_sched_t *s = sp_sched_create(&o);
    cr_assert(s);
    for (int step = 0; step < 5; step++) {
        sp_sched_begin_step(s);
        for (int l = 0; l < L; l++) {
            void *p;
            size_t n;
            cr_assert_eq(sp_sched_acquire(s, l, &p, &n), 0);
            usleep(20000); /* "compute" far slower than a 20 KB read, even on a loaded machine */
            sp_sched_release(s, l);
        }
    }
    /* Only the very first acquire can miss; allow one more for scheduling noise. */
    sp_sched_stats st;
    sp_sched_get_stats(s, &st);
    cr_assert_leq(st.stalls, 2, "stalls %lu", (unsigned long)st.stalls);
    cr_assert_gt(sp_sched_hit_rate(s), 0.9);
    /* CPU arena: nvme reads land in the device slot directly, no staging hop */
    cr_assert_eq(st.bytes[SP_TIER_NVME][SP_TIER_HOST], 0);
    cr_assert_eq(st.bytes[SP_TIER_HOST][SP_TIER_DEVICE], 0);
    uint64_t total = 0, prefetched_ahead = 0;
    for (int l = 0; l < L; l++)
        total += m.size[l];
    for (int l = 0; l < 3; l++) /* the worker may already hold step 6's first d+1 layers */
        prefetched_ahead += m.size[l];
    cr_assert_geq(st.bytes[SP_TIER_NVME][SP_TIER_DEVICE], 5 * total);
    cr_assert_leq(st.bytes[SP_TIER_NVME][SP_TIER_DEVICE], 5 * total + prefetched_ahead);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sp_sched_stats_json(s, f);
    fclose(f);
    cr_assert(strstr(text, "\"prefetch_depth\":2"), "%s", text);
    cr_assert(strstr(text, "\"nvme->device\":"), "%s", text);
    cr_assert(strstr(text, "\"per_layer\":[{\"layer\":0"), "%s", text);
    free(text);
    sp_sched_free(s);
    model_free(&m, ts);
    sp_tiers_free(ts);
}

static void fault_case(int d, unsigned fault)
{
    enum { L = 6 };
    int tier[L] = {SP_TIER_HOST, SP_TIER_NVME, SP_TIER_HOST, SP_TIER_NVME, SP_TIER_DEVICE, SP_TIER_NVME};
    sp_tiers_t *ts = make_tiers(0);
    model m;
    model_init(&m, ts, L, tier);
    sp_sched_opts o = {.n_layers = L, .prefetch_depth = d, .tiers = ts, .locs = m.locs, .slot_bytes = SLOT};
    sp_sched_t *s = sp_sched_create(&o);
    cr_assert(s, "%s", sp_last_error());
    run_steps(s, &m, 2, false);
    /* Corrupt every read from now on: every nvme layer must fail, never hand out bad bytes. */
    sp_uring_store_inject(sp_tiers_nvme_store(ts), fault, -1);
    int failures = 0;
    for (int step = 0; step < 2; step++) {
        sp_sched_begin_step(s);
        for (int l = 0; l < L; l++) {
            void *p;
            size_t n;
            int rc = sp_sched_acquire(s, l, &p, &n);
            if (rc < 0) {
                failures++;
                cr_assert_null(p);
                cr_assert(strstr(sp_last_error(), "fetch from nvme failed"), "%s", sp_last_error());
                cr_assert_eq(sp_sched_mark_dirty(s, l, 10), -EIO, "a failed layer cannot be dirtied");
            } else {
                cr_assert_eq(memcmp(p, m.shadow[l], n), 0, "layer %d wrong bytes under fault", l);
            }
            cr_assert_eq(sp_sched_release(s, l), 0);
        }
    }
    /* With d > 0 the first step's fetches may have been prefetched before the fault: at least the
     * second step fails all three nvme layers. */
    cr_assert_geq(failures, 3);
    sp_uring_store_inject(sp_tiers_nvme_store(ts), 0, 0);
    /* Positions fetched ahead under the fault still fail; after d+1 more layers it recovers. */
    for (int step = 0; step < 2; step++) {
        sp_sched_begin_step(s);
        for (int l = 0; l < L; l++) {
            void *p;
            size_t n;
            if (sp_sched_acquire(s, l, &p, &n) == 0)
                cr_assert_eq(memcmp(p, m.shadow[l], n), 0);
            sp_sched_release(s, l);
        }
    }
    run_steps(s, &m, 2, false);
    sp_sched_free(s);
    model_free(&m, ts);
    sp_tiers_free(ts);
}

Test(sched, checksum_failure_fails_acquire_then_recovers_sync) { fault_case(0, SP_FAULT_CSUM); }
Test(sched, checksum_failure_fails_acquire_then_recovers_async) { fault_case(2, SP_FAULT_CSUM); }
Test(sched, eio_fails_acquire_then_recovers) { fault_case(1, SP_FAULT_EIO); }

Test(sched, order_contract_and_budget_errors)
{
    enum { L = 3 };
    int tier[L] = {SP_TIER_HOST, SP_TIER_HOST, SP_TIER_DEVICE};
    sp_tiers_t *ts = make_tiers(0);
    model m;
    model_init(&m, ts, L, tier);
    sp_sched_opts o = {.n_layers = L, .prefetch_depth = 1, .tiers = ts, .locs = m.locs, .slot_bytes = SLOT};
    sp_sched_t *s = sp_sched_create(&o);
    void *p;
    size_t n;
    cr_assert_eq(sp_sched_acquire(s, 1, &p, &n), -EINVAL);
    cr_assert(strstr(sp_last_error(), "expected layer 0, got 1"), "%s", sp_last_error());
    cr_assert_eq(sp_sched_acquire(s, 2, &p, &n), 0, "resident layers in any order");
    cr_assert_eq(sp_sched_acquire(s, 0, &p, &n), 0);
    cr_assert_eq(sp_sched_release(s, 1), -EINVAL);
    cr_assert_eq(sp_sched_mark_dirty(s, 0, SLOT + 1), -ENOBUFS);
    cr_assert_eq(sp_sched_release(s, 0), 0);
    cr_assert_eq(sp_sched_acquire(s, 7, &p, &n), -EINVAL);
    sp_sched_free(s);
    model_free(&m, ts);
    sp_tiers_free(ts);

    /* Slots count against the device budget: too small a budget fails creation with a message. */
    ts = make_tiers(2 * SLOT);
    int t2[L] = {SP_TIER_HOST, SP_TIER_HOST, SP_TIER_HOST};
    model_init(&m, ts, L, t2);
    o = (sp_sched_opts){.n_layers = L, .prefetch_depth = 2, .tiers = ts, .locs = m.locs, .slot_bytes = SLOT};
    cr_assert_null(sp_sched_create(&o));
    cr_assert(strstr(sp_last_error(), "device slots"), "%s", sp_last_error());
    cr_assert_eq(sp_tiers_used(ts, SP_TIER_DEVICE, -1), 0, "partial slots returned");
    model_free(&m, ts);
    sp_tiers_free(ts);
}
