/* test_kv_tiered.c - the tiered KV provider over tiny synthetic layer segments (built with
 * sp_kv_segment_build from seeded random K/V, coded and raw layers mixed):
 *   - every forced placement of 3 layers on device/host/nvme x d in {0,1,2,4}: the bytes acquired
 *     equal the bytes placed and segment attention over them is bit-identical to the resident
 *     segments, over several steps, with an abandoned step and out-of-step reads in between;
 *   - the placement policy driven by budgets (weights/scratch reserved first): the provider ends
 *     where sp_placement_plan says, budgets are never exceeded, refusals name the key;
 *   - re-placing (recompression) replaces the bytes and re-plans;
 *   - faults, each with its defined outcome: nvme checksum mismatch / persistent EIO -> the acquire
 *     fails with a message (never bytes), and the next step recovers; short read and transient
 *     EIO -> retried, exact bytes; host-tier corruption -> detected; nvme write EIO / ENOSPC and a
 *     missing or read-only spill dir -> layers fall back to host/device, or place() fails naming
 *     the problem; io_uring unavailable / O_DIRECT refused -> fallback I/O, exact bytes. No spill
 *     file is ever left behind (checked after every test). */
#include <criterion/criterion.h>

#include "kv_segment.h"
#include "kv_tiered.h"
#include "ops.h"
#include "segment_attn.h"
#include "sp_error.h"
#include "support/notice_capture.h"
#include "support/spill_dir.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void make_dir(void)
{
    spill_dir_make(dir, sizeof dir, "sp-kvt");
    sp_set_notice_sink(NULL, NULL);
}

static void remove_dir(void) { spill_dir_remove_checked(dir); }

TestSuite(kvt, .init = make_dir, .fini = remove_dir, .timeout = 300);

static uint32_t rng = 777;
static double urand(void)
{
    rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5;
    return (double)rng / 4294967296.0;
}

enum { HQ = 4, HK = 2, G = HQ / HK, HD = 16, LTOK = 160, WIN = 8, NPOS = LTOK + 8 };

typedef struct {
    int n;
    sp_kv_segment *seg;   /* [n] the resident originals */
    float *ref;           /* [n][HK][G][HD] attention outputs over the originals */
    float q[HK][G * HD];
    float table[NPOS * HD];
} layers_t;

static void build_layers(layers_t *ls, int n, uint32_t seed)
{
    rng = seed;
    ls->n = n;
    ls->seg = calloc((size_t)n, sizeof *ls->seg);
    ls->ref = calloc((size_t)n * HK * G * HD, sizeof(float));
    sp_rope_table_fill(ls->table, NPOS, HD, 10000.0);
    for (int h = 0; h < HK; h++)
        for (int i = 0; i < G * HD; i++)
            ls->q[h][i] = (float)(urand() * 2 - 1);
    float *k = malloc(sizeof(float) * HK * LTOK * HD), *v = malloc(sizeof(float) * HK * LTOK * HD);
    float *sc = malloc(sizeof(float) * HQ * (LTOK - WIN));
    for (int l = 0; l < n; l++) {
        /* clustered directions so that the codebook merges some vectors */
        for (int i = 0; i < HK * LTOK * HD; i++) {
            k[i] = (float)(urand() * 0.2 + ((i % HD) == (i / HD) % 5 ? 3 : 0));
            v[i] = (float)(urand() * 2 - 1);
        }
        for (int i = 0; i < HQ * (LTOK - WIN); i++)
            sc[i] = (float)urand();
        sp_kv_selection sel;
        cr_assert_eq(sp_kv_selection_init(&sel, HQ, HK, LTOK, WIN), 0);
        cr_assert_eq(sp_kv_select_scores(&sel, sc, 40 + 10 * l, SP_GQA_QUERY_HEAD), 0);
        cr_assert_eq(sp_kv_segment_build(&ls->seg[l], l, k, v, HD, &sel, l % 2 == 0, 0.95f, 0.9f,
                                         NULL), 0, "%s", sp_last_error());
        sp_kv_selection_free(&sel);
        for (int h = 0; h < HK; h++) {
            float *work = malloc(sizeof(float) * sp_segattn_work_floats(&ls->seg[l], NULL, h));
            cr_assert_eq(sp_segattn_decode(&ls->seg[l], NULL, h, ls->q[h], ls->table, NPOS,
                                           SP_ROPE_NORM, 0.25f, ls->ref + ((size_t)l * HK + h) * G * HD,
                                           work), 0);
            free(work);
        }
    }
    free(k);
    free(v);
    free(sc);
}

static void free_layers(layers_t *ls)
{
    for (int l = 0; l < ls->n; l++)
        sp_kv_segment_free(&ls->seg[l]);
    free(ls->seg);
    free(ls->ref);
}

/* The bytes handed out for layer l are the placed ones, and attention over them is bit-identical. */
static void check_layer(const layers_t *ls, int l, const void *bytes, size_t size)
{
    cr_assert_eq(size, sp_kv_segment_size(&ls->seg[l]), "layer %d size", l);
    cr_assert_eq(memcmp(bytes, ls->seg[l].buf, size), 0, "layer %d: bytes differ", l);
    sp_kv_segment view;
    cr_assert_eq(sp_kv_segment_open(&view, bytes, size, false), 0, "%s", sp_last_error());
    for (int h = 0; h < HK; h++) {
        float out[G * HD];
        float *work = malloc(sizeof(float) * sp_segattn_work_floats(&view, NULL, h));
        cr_assert_eq(sp_segattn_decode(&view, NULL, h, ls->q[h], ls->table, NPOS, SP_ROPE_NORM, 0.25f,
                                       out, work), 0);
        cr_assert_eq(memcmp(out, ls->ref + ((size_t)l * HK + h) * G * HD, sizeof out), 0,
                     "layer %d head %d: attention differs from the resident segment", l, h);
        free(work);
    }
    sp_kv_segment_free(&view);
}

/* Bounce buffers of the stores make_tiers opens: queue_depth 8 x block_size 16 KiB. */
#define BOUNCE (8u * 16384u)

static sp_tiers_t *make_tiers(uint64_t dev, uint64_t host, uint64_t nvme, const char *spill_dir,
                              unsigned open_faults)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = dev;
    o.budget[SP_TIER_HOST] = host;
    o.budget[SP_TIER_NVME] = nvme;
    o.nvme = (sp_uring_store_opts){.dir = spill_dir ? spill_dir : dir, .queue_depth = 8,
                                   .block_size = 16384, .register_buffers = true,
                                   .verify_checksums = true, .open_faults = open_faults};
    /* The store's bounce buffers are charged to the host tier when it opens: open it first, on
     * top of the host budget a test gives, so that budget is what is left for the layers. A store
     * that cannot open (the spill-dir tests) charges nothing: then the budget stays as given. */
    /* pread/pwrite (no io_uring) runs one slot */
    uint64_t bounce = (open_faults & SP_FAULT_NO_URING) ? BOUNCE / 8 : BOUNCE;
    if (host)
        o.budget[SP_TIER_HOST] = host + bounce;
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    if (host && !sp_tiers_nvme_store(ts)) {
        sp_tiers_free(ts);
        o.budget[SP_TIER_HOST] = host;
        ts = sp_tiers_create(&o);
        cr_assert(ts, "%s", sp_last_error());
    }
    return ts;
}

/* Everything the provider charged is back: only the store's bounce buffers (if it opened) stay
 * charged, to host/staging, until the tiers are freed. */
static void check_released(sp_tiers_t *ts)
{
    for (int k = 0; k < SP_TIER_COUNT; k++) {
        uint64_t u = sp_tiers_used(ts, (sp_tier_kind)k, -1);
        if (k == SP_TIER_HOST) {
            uint64_t st = sp_tiers_used(ts, SP_TIER_HOST, SP_TAG_STAGING);
            cr_assert(st == 0 || st == BOUNCE || st == BOUNCE / 8, "host staging %llu B after release",
                      (unsigned long long)st);
            u -= st;
        }
        cr_assert_eq(u, 0, "tier %d leaked", k);
    }
}

static sp_kv_tiered_t *make_kvt(sp_tiers_t *ts, int n, int d, int pinned, sp_spill_order order,
                                const sp_tier_kind *force)
{
    sp_kv_tiered_opts o = {.n_layers = n, .tiers = ts, .resident_deep_layers = pinned,
                           .order = order, .prefetch_depth = d, .verify_checksums = true,
                           .force = force};
    sp_kv_tiered_t *t = sp_kv_tiered_create(&o);
    cr_assert(t, "%s", sp_last_error());
    return t;
}

static void place_all(sp_kv_tiered_t *t, const layers_t *ls)
{
    for (int l = 0; l < ls->n; l++)
        cr_assert_eq(sp_kv_tiered_place(t, l, ls->seg[l].buf, sp_kv_segment_size(&ls->seg[l])), 0,
                     "place layer %d: %s", l, sp_last_error());
}

/* One decode step through the provider table, as the model drives it. */
static void run_step(sp_kv_provider *p, const layers_t *ls, int stop_after)
{
    cr_assert_eq(p->step_begin(p->user), 0, "%s", sp_last_error());
    for (int l = 0; l < ls->n && l <= stop_after; l++) {
        const void *b;
        size_t n;
        cr_assert_eq(p->acquire(p->user, l, &b, &n), 0, "acquire %d: %s", l, sp_last_error());
        check_layer(ls, l, b, n);
        cr_assert_eq(p->release(p->user, l), 0, "%s", sp_last_error());
    }
}

static void check_budgets(sp_tiers_t *ts)
{
    for (int k = 0; k < SP_TIER_COUNT; k++) {
        uint64_t b = sp_tiers_budget(ts, (sp_tier_kind)k);
        cr_assert(!b || sp_tiers_used(ts, (sp_tier_kind)k, -1) <= b, "tier %d over budget", k);
    }
}

Test(kvt, every_forced_placement_and_depth_is_bit_identical)
{
    layers_t ls;
    build_layers(&ls, 3, 4242);
    int depths[] = {0, 1, 2, 4};
    for (int combo = 0; combo < 27; combo++) {
        sp_tier_kind force[3] = {(sp_tier_kind)(combo % 3), (sp_tier_kind)(combo / 3 % 3),
                                 (sp_tier_kind)(combo / 9)};
        int streamed = 0;
        for (int l = 0; l < 3; l++)
            streamed += force[l] != SP_TIER_DEVICE;
        for (int di = 0; di < 4; di++) {
            sp_tiers_t *ts = make_tiers(0, 0, 0, NULL, 0);
            sp_kv_tiered_t *t = make_kvt(ts, 3, depths[di], 0, SP_SPILL_SHALLOW_FIRST, force);
            place_all(t, &ls);
            for (int l = 0; l < 3; l++)
                cr_assert_eq(sp_kv_tiered_layer_tier(t, l), force[l]);
            sp_kv_provider p = sp_kv_tiered_provider(t);
            run_step(&p, &ls, 99);
            run_step(&p, &ls, 0); /* abandoned after layer 0: drained by the next step_begin */
            /* an out-of-step read (statistics) between steps leaves the ring alone */
            const void *b;
            size_t n;
            cr_assert_eq(p.acquire(p.user, 2, &b, &n), 0, "%s", sp_last_error());
            check_layer(&ls, 2, b, n);
            cr_assert_eq(p.release(p.user, 2), 0);
            for (int s = 0; s < 3; s++)
                run_step(&p, &ls, 99);
            sp_kv_tiered_stats st;
            sp_kv_tiered_get_stats(t, &st);
            cr_assert_eq(st.sched.steps, 5);
            /* 4 full steps + the abandoned one's layer 0 + its drained rest: 5 per streamed layer */
            cr_assert_eq(st.sched.acquires, (uint64_t)streamed * 5, "combo %d d %d: %llu acquires",
                         combo, depths[di], (unsigned long long)st.sched.acquires);
            cr_assert_eq(st.sched.hits + st.sched.stalls, st.sched.acquires);
            if (depths[di] == 0)
                cr_assert_eq(st.sched.hits, 0, "d = 0 is synchronous: no prefetch hits");
            uint64_t nvme_bytes = 0;
            for (int l = 0; l < 3; l++)
                if (force[l] == SP_TIER_NVME)
                    nvme_bytes += sp_kv_segment_size(&ls.seg[l]);
            cr_assert_geq(st.sched.bytes[SP_TIER_NVME][SP_TIER_DEVICE], nvme_bytes * 5);
            sp_kv_tiered_free(t);
            check_released(ts);
            sp_tiers_free(ts);
        }
    }
    free_layers(&ls);
}

typedef struct {
    const char *name;
    uint64_t budget[3];
    uint64_t weights_dev, scratch_dev, weights_host;
    int pinned;
    sp_spill_order order;
} policy_case;

Test(kvt, policy_placement_follows_the_plan_within_budgets)
{
    layers_t ls;
    build_layers(&ls, 6, 99);
    size_t sizes[6], total = 0, biggest = 0;
    for (int l = 0; l < 6; l++) {
        sizes[l] = sp_kv_segment_size(&ls.seg[l]);
        total += sizes[l];
        biggest = sizes[l] > biggest ? sizes[l] : biggest;
    }
    policy_case cases[] = {
        {"unlimited", {0, 0, 0}, 1 << 20, 4096, 0, 2, SP_SPILL_SHALLOW_FIRST},
        {"device for pinned + slots", {(1 << 20) + 4096 + 2 * biggest + 5 * biggest, 0, 0}, 1 << 20,
         4096, 0, 2, SP_SPILL_SHALLOW_FIRST},
        {"tight device, tight host -> nvme", {(1 << 20) + 3 * biggest + 5 * biggest, 3 * biggest, 0},
         1 << 20, 0, 0, 1, SP_SPILL_SHALLOW_FIRST},
        {"deep-first", {(1 << 20) + 3 * biggest + 5 * biggest, 3 * biggest, 0}, 1 << 20, 0, 0, 1,
         SP_SPILL_DEEP_FIRST},
        {"host weights", {6 * biggest, (64 << 10) + 2 * biggest, 0}, 0, 0, 64 << 10, 0,
         SP_SPILL_SHALLOW_FIRST},
    };
    int depths[] = {0, 1, 2, 4};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        for (int di = 0; di < 4; di++) {
            const policy_case *c = &cases[ci];
            sp_tiers_t *ts = make_tiers(c->budget[0], c->budget[1], c->budget[2], NULL, 0);
            cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_DEVICE, SP_TAG_WEIGHTS, c->weights_dev), 0);
            cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_DEVICE, SP_TAG_SCRATCH, c->scratch_dev), 0);
            cr_assert_eq(sp_tiers_reserve(ts, SP_TIER_HOST, SP_TAG_WEIGHTS, c->weights_host), 0);
            /* what the policy alone says for these inputs */
            sp_placement_opts po = {.n_layers = 6, .seg_bytes = sizes, .resident_deep_layers = c->pinned,
                                    .order = c->order, .prefetch_depth = depths[di]};
            for (int k = 0; k < 3; k++) {
                po.budget[k] = sp_tiers_budget(ts, (sp_tier_kind)k); /* with the bounce buffers */
                po.used[k] = sp_tiers_used(ts, (sp_tier_kind)k, -1);
            }
            sp_tier_kind want[6];
            int prc = sp_placement_plan(&po, want, NULL);
            sp_kv_tiered_t *t = make_kvt(ts, 6, depths[di], c->pinned, c->order, NULL);
            int rc = 0;
            for (int l = 0; l < 6 && rc == 0; l++) {
                rc = sp_kv_tiered_place(t, l, ls.seg[l].buf, sizes[l]);
                check_budgets(ts);
            }
            cr_assert_eq(rc, prc, "%s d=%d: place %d, plan %d (%s)", c->name, depths[di], rc, prc,
                         sp_last_error());
            if (rc == 0) {
                for (int l = 0; l < 6; l++)
                    cr_assert_eq(sp_kv_tiered_layer_tier(t, l), want[l], "%s d=%d layer %d", c->name,
                                 depths[di], l);
                sp_kv_provider p = sp_kv_tiered_provider(t);
                for (int s = 0; s < 3; s++) {
                    run_step(&p, &ls, 99);
                    check_budgets(ts);
                }
                /* statistics read every layer between steps, in any order, with no memory to
                 * spare on the tiers: nvme layers go through the borrowed staging buffer */
                for (int l = 5; l >= 0; l--) {
                    const void *b;
                    size_t n;
                    cr_assert_eq(p.acquire(p.user, l, &b, &n), 0, "%s", sp_last_error());
                    check_layer(&ls, l, b, n);
                    cr_assert_eq(p.release(p.user, l), 0);
                    check_budgets(ts);
                }
                run_step(&p, &ls, 99);
                char *text = NULL;
                size_t len = 0;
                FILE *f = open_memstream(&text, &len);
                sp_kv_tiered_print_stats(t, f);
                fputc('\n', f);
                sp_kv_tiered_stats_json(t, f);
                fclose(f);
                cr_assert(strstr(text, "prefetch hits"), "%s", text);
                cr_assert(strstr(text, "\"per_layer\":[{\"layer\":0"), "%s", text);
                if (ci == 0 && di == 0)
                    cr_log_info("%s", text);
                free(text);
            }
            sp_kv_tiered_free(t);
            sp_tiers_free(ts);
        }
    }
    /* a device too small for even the pinned layers: refused, naming the key, nothing leaked */
    sp_tiers_t *ts = make_tiers(biggest, 0, 0, NULL, 0);
    sp_kv_tiered_t *t = make_kvt(ts, 6, 2, 3, SP_SPILL_SHALLOW_FIRST, NULL);
    int rc = 0;
    for (int l = 0; l < 6 && rc == 0; l++)
        rc = sp_kv_tiered_place(t, l, ls.seg[l].buf, sizes[l]);
    cr_assert_eq(rc, -ENOSPC);
    cr_assert(strstr(sp_last_error(), "resident_deep_layers"), "%s", sp_last_error());
    sp_kv_tiered_free(t);
    check_released(ts);
    sp_tiers_free(ts);
    /* room for the slot and some deep layers, not all 5 asked: fewer are pinned, with a notice that
     * names the key (the segments exist only after a long prefill: not thrown away) */
    ts = make_tiers(4 * biggest, 0, 0, NULL, 0);
    t = make_kvt(ts, 6, 0, 5, SP_SPILL_SHALLOW_FIRST, NULL);
    notice_capture nc;
    notice_capture_start(&nc);
    rc = 0;
    for (int l = 0; l < 6 && rc == 0; l++)
        rc = sp_kv_tiered_place(t, l, ls.seg[l].buf, sizes[l]);
    if (rc == 0)
        rc = sp_kv_tiered_finalize(t);
    notice_capture_stop();
    cr_assert_eq(rc, 0, "%s", sp_last_error());
    cr_assert_eq(nc.count, 1);
    cr_assert(strstr(nc.last, "resident_deep_layers") && strstr(nc.last, "pinned the"), "%s", nc.last);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    sp_kv_tiered_stats_json(t, f);
    fclose(f);
    int pinned = -1;
    const char *k = strstr(text, "\"resident_deep_layers\":");
    cr_assert(k, "%s", text);
    pinned = atoi(k + strlen("\"resident_deep_layers\":"));
    cr_assert(pinned >= 1 && pinned < 5, "pinned %d: %s", pinned, nc.last);
    free(text);
    sp_kv_tiered_free(t);
    check_released(ts);
    sp_tiers_free(ts);
    free_layers(&ls);
}

Test(kvt, placing_again_replaces_and_replans)
{
    layers_t a, b;
    build_layers(&a, 4, 1);
    build_layers(&b, 4, 2);
    size_t biggest = 0;
    for (int l = 0; l < 4; l++) {
        size_t s = sp_kv_segment_size(&a.seg[l]), s2 = sp_kv_segment_size(&b.seg[l]);
        biggest = s > biggest ? s : biggest;
        biggest = s2 > biggest ? s2 : biggest;
    }
    sp_tiers_t *ts = make_tiers(3 * biggest, 2 * biggest, 0, NULL, 0);
    sp_kv_tiered_t *t = make_kvt(ts, 4, 1, 1, SP_SPILL_SHALLOW_FIRST, NULL);
    sp_kv_provider p = sp_kv_tiered_provider(t);
    place_all(t, &a);
    run_step(&p, &a, 99);
    run_step(&p, &a, 1);
    place_all(t, &b);
    run_step(&p, &b, 99);
    run_step(&p, &b, 99);
    check_budgets(ts);
    sp_kv_tiered_stats st;
    sp_kv_tiered_get_stats(t, &st);
    cr_assert_eq(st.sched.steps, 4);
    cr_assert_gt(st.layers[SP_TIER_NVME], 0, "this budget must spill something to nvme");
    sp_kv_tiered_free(t);
    sp_tiers_free(ts);
    free_layers(&a);
    free_layers(&b);
}

/* ---- faults --------------------------------------------------------------------------------- */

/* A step that tolerates failed acquires (checking that nothing wrong is ever handed out);
 * returns the number of layers whose acquire failed. */
static int tolerant_step(sp_kv_provider *p, const layers_t *ls)
{
    cr_assert_eq(p->step_begin(p->user), 0, "%s", sp_last_error());
    int failed = 0;
    for (int l = 0; l < ls->n; l++) {
        const void *b = (const void *)1;
        size_t n = 1;
        int rc = p->acquire(p->user, l, &b, &n);
        if (rc == 0) {
            check_layer(ls, l, b, n);
        } else {
            failed++;
            cr_assert_null(b, "a failed acquire hands out no bytes");
            cr_assert_eq(n, 0);
            cr_assert(strstr(sp_last_error(), "layer"), "message names the layer: %s", sp_last_error());
        }
        cr_assert_eq(p->release(p->user, l), 0, "%s", sp_last_error());
    }
    return failed;
}

static void read_fault(int d, unsigned fault, int nth, bool recovers)
{
    layers_t ls;
    build_layers(&ls, 3, 5);
    sp_tier_kind force[3] = {SP_TIER_NVME, SP_TIER_NVME, SP_TIER_DEVICE};
    sp_tiers_t *ts = make_tiers(0, 0, 0, NULL, 0);
    sp_kv_tiered_t *t = make_kvt(ts, 3, d, 0, SP_SPILL_SHALLOW_FIRST, force);
    place_all(t, &ls);
    sp_kv_provider p = sp_kv_tiered_provider(t);
    run_step(&p, &ls, 99);
    sp_uring_store_t *store = sp_tiers_nvme_store(ts);
    sp_uring_store_inject(store, fault, nth);
    /* d > 0: the worker may have fetched the next layers before the fault was armed */
    int failed = 0;
    for (int s = 0; s < (d ? 3 : 1); s++)
        failed += tolerant_step(&p, &ls);
    if (recovers)
        cr_assert_eq(failed, 0, "a transient fault must be absorbed by a retry");
    else
        cr_assert_gt(failed, 0, "a persistent fault must fail the acquire");
    sp_uring_store_stats ss;
    sp_uring_store_get_stats(store, &ss);
    if (fault == SP_FAULT_SHORT_READ)
        cr_assert_gt(ss.short_requeues, 0);
    if (fault == SP_FAULT_EIO)
        cr_assert_gt(ss.eio_retries, 0);
    if (fault == SP_FAULT_CSUM)
        cr_assert_gt(ss.csum_retries, 0);
    sp_uring_store_inject(store, 0, 0);
    if (d)
        tolerant_step(&p, &ls); /* layers prefetched under the fault fail once more */
    for (int s = 0; s < 2; s++)
        run_step(&p, &ls, 99);
    sp_kv_tiered_free(t);
    sp_tiers_free(ts);
    free_layers(&ls);
}

Test(kvt, nvme_checksum_mismatch_fails_the_acquire_then_recovers_sync) { read_fault(0, SP_FAULT_CSUM, -1, false); }
Test(kvt, nvme_checksum_mismatch_fails_the_acquire_then_recovers_async) { read_fault(2, SP_FAULT_CSUM, -1, false); }
Test(kvt, nvme_persistent_eio_fails_the_acquire_then_recovers_sync) { read_fault(0, SP_FAULT_EIO, -1, false); }
Test(kvt, nvme_persistent_eio_fails_the_acquire_then_recovers_async) { read_fault(1, SP_FAULT_EIO, -1, false); }
Test(kvt, nvme_short_read_is_requeued_sync) { read_fault(0, SP_FAULT_SHORT_READ, 1, true); }
Test(kvt, nvme_short_read_is_requeued_async) { read_fault(2, SP_FAULT_SHORT_READ, 1, true); }
Test(kvt, nvme_transient_eio_is_retried_sync) { read_fault(0, SP_FAULT_EIO, 1, true); }
Test(kvt, nvme_one_corrupted_read_is_reread_async) { read_fault(4, SP_FAULT_CSUM, 1, true); }

Test(kvt, host_tier_corruption_is_detected_sync_and_async)
{
    layers_t ls;
    build_layers(&ls, 3, 6);
    sp_tier_kind force[3] = {SP_TIER_HOST, SP_TIER_DEVICE, SP_TIER_HOST};
    for (int d = 0; d <= 2; d += 2) {
        sp_tiers_t *ts = make_tiers(0, 0, 0, NULL, 0);
        sp_kv_tiered_t *t = make_kvt(ts, 3, d, 0, SP_SPILL_SHALLOW_FIRST, force);
        place_all(t, &ls);
        sp_kv_provider p = sp_kv_tiered_provider(t);
        run_step(&p, &ls, 99);
        /* flip one byte of layer 2's home copy in host memory */
        uint8_t *home = sp_kv_tiered_loc(t, 2)->mem.ptr;
        size_t at = sp_kv_tiered_loc(t, 2)->size - 7;
        home[at] ^= 0x10;
        /* d > 0: the worker may have fetched the next step's copy before the flip; every fetch
         * after it fails */
        int failed = 0;
        for (int s = 0; s < 3; s++)
            failed += tolerant_step(&p, &ls);
        if (d == 0)
            cr_assert_eq(failed, 3, "d=0: layer 2 must fail in every step (%d failures)", failed);
        else
            cr_assert_geq(failed, 2, "d=%d: layer 2 must fail once fetched after the flip (%d)", d, failed);
        /* out-of-step reads verify too */
        const void *b;
        size_t n;
        cr_assert_eq(p.acquire(p.user, 2, &b, &n), -EBADMSG);
        cr_assert(strstr(sp_last_error(), "checksum"), "%s", sp_last_error());
        cr_assert_eq(p.release(p.user, 2), 0);
        home[at] ^= 0x10;
        tolerant_step(&p, &ls);
        run_step(&p, &ls, 99);
        sp_kv_tiered_free(t);
        sp_tiers_free(ts);
    }
    free_layers(&ls);
}

/* nvme writes fail for a reason other than the budget: the layers fall back to host/device when
 * the budgets allow; otherwise place() fails with a message. */
static void write_fault(unsigned fault, bool host_room)
{
    layers_t ls;
    build_layers(&ls, 4, 8);
    size_t biggest = 0, total = 0;
    for (int l = 0; l < 4; l++) {
        biggest = sp_kv_segment_size(&ls.seg[l]) > biggest ? sp_kv_segment_size(&ls.seg[l]) : biggest;
        total += sp_kv_segment_size(&ls.seg[l]);
    }
    /* the device holds the pinned layer and the slots only: the rest must leave it */
    sp_tiers_t *ts = make_tiers(3 * biggest, host_room ? 0 : 2 * biggest, 0, NULL, 0);
    sp_uring_store_inject(sp_tiers_nvme_store(ts), fault, -1);
    notice_capture nc;
    notice_capture_start(&nc);
    sp_kv_tiered_t *t = make_kvt(ts, 4, 1, 1, SP_SPILL_SHALLOW_FIRST, NULL);
    int rc = 0;
    for (int l = 0; l < 4 && rc == 0; l++) {
        rc = sp_kv_tiered_place(t, l, ls.seg[l].buf, sp_kv_segment_size(&ls.seg[l]));
        check_budgets(ts);
    }
    notice_capture_stop();
    cr_assert_geq(nc.count, 1, "the fallback is announced");
    if (host_room) {
        cr_assert_eq(rc, 0, "%s", sp_last_error());
        for (int l = 0; l < 4; l++)
            cr_assert_neq(sp_kv_tiered_layer_tier(t, l), SP_TIER_NVME);
        sp_kv_provider p = sp_kv_tiered_provider(t);
        for (int s = 0; s < 3; s++)
            run_step(&p, &ls, 99);
    } else {
        cr_assert_lt(rc, 0);
        cr_assert(strstr(sp_last_error(), "nvme") || strstr(sp_last_error(), "budget"), "%s",
                  sp_last_error());
    }
    sp_kv_tiered_free(t);
    check_released(ts);
    sp_tiers_free(ts);
    free_layers(&ls);
    (void)total;
}

Test(kvt, nvme_write_eio_falls_back_to_host) { write_fault(SP_FAULT_EIO, true); }
Test(kvt, nvme_write_enospc_falls_back_to_host) { write_fault(SP_FAULT_ENOSPC, true); }
Test(kvt, nvme_write_eio_without_room_fails_the_place) { write_fault(SP_FAULT_EIO, false); }

/* Spill directory problems and degraded I/O modes, end to end through the provider. */
static void open_problem(const char *spill_dir, unsigned open_faults, bool expect_nvme,
                         bool host_room)
{
    layers_t ls;
    build_layers(&ls, 4, 9);
    size_t biggest = 0; /* of the three layers that may leave the device */
    for (int l = 0; l < 3; l++)
        biggest = sp_kv_segment_size(&ls.seg[l]) > biggest ? sp_kv_segment_size(&ls.seg[l]) : biggest;
    /* device: the pinned layer + 2 slots (d = 1) only; host: staging + one layer, or unlimited */
    notice_capture nc;
    notice_capture_start(&nc); /* the store may open (and announce its fallback) in make_tiers */
    sp_tiers_t *ts = make_tiers(sp_kv_segment_size(&ls.seg[3]) + 2 * biggest,
                                host_room ? 0 : 2 * biggest, 0, spill_dir, open_faults);
    sp_kv_tiered_t *t = make_kvt(ts, 4, 1, 1, SP_SPILL_SHALLOW_FIRST, NULL);
    int rc = 0;
    for (int l = 0; l < 4 && rc == 0; l++)
        rc = sp_kv_tiered_place(t, l, ls.seg[l].buf, sp_kv_segment_size(&ls.seg[l]));
    notice_capture_stop();
    if (!host_room && !expect_nvme) {
        cr_assert_lt(rc, 0);
        cr_assert(strstr(sp_last_error(), "[spill] dir"), "%s", sp_last_error());
    } else {
        cr_assert_eq(rc, 0, "%s", sp_last_error());
        int on_nvme = 0;
        for (int l = 0; l < 4; l++)
            on_nvme += sp_kv_tiered_layer_tier(t, l) == SP_TIER_NVME;
        if (expect_nvme)
            cr_assert_gt(on_nvme, 0);
        else
            cr_assert_eq(on_nvme, 0);
        sp_kv_provider p = sp_kv_tiered_provider(t);
        for (int s = 0; s < 3; s++)
            run_step(&p, &ls, 99);
        check_budgets(ts);
    }
    cr_assert_geq(nc.count, 1, "the fallback is announced");
    sp_kv_tiered_free(t);
    sp_tiers_free(ts);
    free_layers(&ls);
}

Test(kvt, missing_spill_dir_keeps_layers_in_memory) { open_problem("/nonexistent/spindle", 0, false, true); }
Test(kvt, missing_spill_dir_without_room_fails_naming_it) { open_problem("/nonexistent/spindle", 0, false, false); }
Test(kvt, read_only_spill_dir_keeps_layers_in_memory) { open_problem(NULL, SP_FAULT_DIR_RO, false, true); }
Test(kvt, read_only_spill_dir_without_room_fails_naming_it) { open_problem(NULL, SP_FAULT_DIR_RO, false, false); }
Test(kvt, no_io_uring_falls_back_to_pread) { open_problem(NULL, SP_FAULT_NO_URING, true, false); }
Test(kvt, o_direct_refused_falls_back_to_buffered) { open_problem(NULL, SP_FAULT_NO_ODIRECT, true, false); }
