/* test_spill_model.c - spilled == resident on the default model (SmolLM2-135M, spindle
 * compression): decode logits through the tiered provider are bit-identical to the context that
 * keeps its segments, with every non-resident layer on NVMe for d = 0, 1, 2, 4, with host/NVMe
 * mixes, and with the placement policy choosing a mix from budgets. One prefill per context:
 * the variants re-place the retained prefill state (sp_ctx_recompress, itself bit-identical to a
 * fresh compression - test_model_kv) into a fresh provider each. The CI prompt is ~512 tokens
 * of haystack text (generated text when the data is not there); the 4k and 8k versions are in
 * bench/bench_overlap.c. Needs SPINDLE_MODEL. */
#include <criterion/criterion.h>

#include "support/test_note.h"
#include "kv_tiered.h"
#include "model.h"
#include "sp_error.h"
#include "support/model_fixture.h"
#include "support/spill_dir.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { PROMPT = 512, STEPS = 4, NCTX = PROMPT + STEPS + 4, MAXL = 64 };

static sp_model_t *g_model;
static int32_t g_ids[2048];
static char dir[256];

static void setup(void)
{
    g_model = model_fixture_load();
    sp_tokenizer_t *tok = model_fixture_tokenizer(g_model);
    char path[1024], *text = calloc(1, 16384);
    const char *shared = getenv("SPINDLE_SHARED");
    snprintf(path, sizeof path, "%s/data/haystack/pg_essays/addiction.txt", shared ? shared : "../shared");
    FILE *f = fopen(path, "r");
    size_t len = 0;
    if (f) {
        len = fread(text, 1, 16383, f);
        fclose(f);
    } else {
        test_note("%s not found: generated text instead", path);
        for (int i = 0; len < 16000; i++)
            len += (size_t)snprintf(text + len, 16384 - len, "Item %d of the list is a %s. ", i,
                                    i % 3 ? "harbor" : "lamp");
    }
    size_t n = 0;
    cr_assert_eq(sp_tokenizer_encode(tok, text, len, true, false, g_ids, 2048, &n), 0, "%s", sp_last_error());
    cr_assert_geq(n, PROMPT + STEPS);
    sp_tokenizer_free(tok);
    free(text);
    spill_dir_make(dir, sizeof dir, "sp-spillm");
}

static void teardown(void)
{
    sp_model_free(g_model);
    spill_dir_remove_checked(dir);
}

TestSuite(spill_model, .init = setup, .fini = teardown, .timeout = 600);

/* A provider that forwards to the current tiered provider, so one context can be re-placed into
 * differently configured providers (sp_ctx_recompress places every layer again). */
typedef struct {
    sp_kv_tiered_t *cur;
} swap_t;
static int sw_place(void *u, int l, const void *b, size_t n) { return sp_kv_tiered_place(((swap_t *)u)->cur, l, b, n); }
static int sw_step(void *u) { return sp_kv_tiered_step_begin(((swap_t *)u)->cur); }
static int sw_acq(void *u, int l, const void **b, size_t *n) { return sp_kv_tiered_acquire(((swap_t *)u)->cur, l, b, n); }
static int sw_rel(void *u, int l) { return sp_kv_tiered_release(((swap_t *)u)->cur, l); }

static sp_tiers_t *make_tiers(uint64_t dev, uint64_t host)
{
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.budget[SP_TIER_DEVICE] = dev;
    /* The store's bounce buffers (4 x 1 MiB) are charged to the host tier when it opens: open it
     * first, on top of the host budget asked for, so that budget is what the layers get. */
    o.budget[SP_TIER_HOST] = host ? host + (4u << 20) : 0;
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 4, .block_size = 1 << 20,
                                   .register_buffers = true, .verify_checksums = true};
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    if (host)
        cr_assert(sp_tiers_nvme_store(ts), "%s", sp_last_error());
    return ts;
}

static sp_ctx_t *new_ctx(const sp_kv_opts *o, bool keep)
{
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = NCTX;
    p.n_threads = 2;
    p.kv_opts = o;
    p.keep_prefill_state = keep;
    sp_ctx_t *c = sp_ctx_new(g_model, &p);
    cr_assert_not_null(c, "%s", sp_last_error());
    return c;
}

/* Decode STEPS teacher-forced tokens; logits [STEPS][V]. */
static void decode(sp_ctx_t *c, float *logits)
{
    int V = sp_model_hparams(g_model)->n_vocab;
    for (int s = 0; s < STEPS; s++)
        cr_assert_eq(sp_ctx_decode(c, g_ids[PROMPT + s], logits + (size_t)s * V), 0, "step %d: %s", s,
                     sp_last_error());
}

typedef struct {
    const char *name;
    char tiers[MAXL + 1]; /* forced tier per layer ('D', 'H', 'N'); "" = the policy */
    int d;
    uint64_t dev, host;   /* policy budgets */
} variant;

Test(spill_model, spilled_logits_equal_resident_bit_for_bit)
{
    const sp_hparams *hp = sp_model_hparams(g_model);
    const int L = hp->n_layer, V = hp->n_vocab, PINNED = 8;
    cr_assert_leq(L, MAXL);
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    cr_assert_eq(sp_kv_opts_parse(&o, "policy=spindle ratio=0.3"), 0, "%s", sp_last_error());

    /* resident reference */
    float *ref = malloc(sizeof(float) * STEPS * (size_t)V), *got = malloc(sizeof(float) * STEPS * (size_t)V);
    float *last = malloc(sizeof(float) * (size_t)V);
    sp_ctx_t *res = new_ctx(&o, false);
    cr_assert_eq(sp_ctx_prefill(res, g_ids, PROMPT, last, NULL), 0, "%s", sp_last_error());
    decode(res, ref);
    sp_ctx_free(res);

    /* one prefill into an all-device provider, then re-placed per variant */
    swap_t sw;
    sp_tiers_t *ts0 = make_tiers(0, 0);
    sp_kv_tiered_opts ko = {.n_layers = L, .tiers = ts0, .resident_deep_layers = PINNED,
                            .prefetch_depth = 2, .verify_checksums = true};
    sw.cur = sp_kv_tiered_create(&ko);
    cr_assert(sw.cur, "%s", sp_last_error());
    sp_ctx_t *c = new_ctx(&o, true);
    sp_kv_provider prov = {.user = &sw, .place = sw_place, .step_begin = sw_step, .acquire = sw_acq, .release = sw_rel};
    cr_assert_eq(sp_ctx_set_kv_provider(c, &prov), 0, "%s", sp_last_error());
    cr_assert_eq(sp_ctx_prefill(c, g_ids, PROMPT, last, NULL), 0, "%s", sp_last_error());
    size_t sizes[MAXL], biggest = 0, pinned_bytes = 0;
    for (int l = 0; l < L; l++) {
        sizes[l] = sp_kv_tiered_loc(sw.cur, l)->size;
        if (l < L - PINNED)
            biggest = sizes[l] > biggest ? sizes[l] : biggest;
        else
            pinned_bytes += sizes[l];
    }
    decode(c, got);
    cr_assert_eq(memcmp(ref, got, sizeof(float) * STEPS * (size_t)V), 0, "all-device provider != resident");

    variant vs[12];
    int nv = 0;
    for (int di = 0; di < 4; di++) {
        variant *v = &vs[nv++];
        memset(v, 0, sizeof *v);
        v->d = (int[]){0, 1, 2, 4}[di];
        v->name = "every non-resident layer on nvme";
        for (int l = 0; l < L; l++)
            v->tiers[l] = l < L - PINNED ? 'N' : 'D';
    }
    variant *v = &vs[nv++];
    memset(v, 0, sizeof *v);
    v->name = "host/nvme alternating";
    v->d = 2;
    for (int l = 0; l < L; l++)
        v->tiers[l] = l >= L - PINNED ? 'D' : l % 2 ? 'H' : 'N';
    v = &vs[nv++];
    memset(v, 0, sizeof *v);
    v->name = "shallow half nvme, then host, then device";
    v->d = 1;
    for (int l = 0; l < L; l++)
        v->tiers[l] = l < L / 2 ? 'N' : l < L - PINNED ? 'H' : 'D';
    v = &vs[nv++];
    memset(v, 0, sizeof *v);
    v->name = "policy: device for the pinned layers and slots, host for 4 layers";
    v->d = 2;
    v->dev = pinned_bytes + 3 * biggest + biggest / 2;
    v->host = 5 * biggest;

    sp_tiers_t *cur_ts = ts0;
    for (int i = 0; i < nv; i++) {
        v = &vs[i];
        sp_tier_kind force[MAXL];
        for (int l = 0; l < L; l++)
            force[l] = v->tiers[l] == 'N' ? SP_TIER_NVME : v->tiers[l] == 'H' ? SP_TIER_HOST : SP_TIER_DEVICE;
        sp_tiers_t *ts = make_tiers(v->dev, v->host);
        sp_kv_tiered_opts k2 = {.n_layers = L, .tiers = ts, .resident_deep_layers = PINNED,
                                .order = SP_SPILL_SHALLOW_FIRST, .prefetch_depth = v->d,
                                .verify_checksums = true, .force = v->tiers[0] ? force : NULL};
        sp_kv_tiered_t *old = sw.cur;
        sw.cur = sp_kv_tiered_create(&k2);
        cr_assert(sw.cur, "%s", sp_last_error());
        cr_assert_eq(sp_ctx_recompress(c, &o), 0, "%s: %s", v->name, sp_last_error());
        int on[SP_TIER_COUNT] = {0};
        for (int l = 0; l < L; l++) {
            sp_tier_kind k = sp_kv_tiered_layer_tier(sw.cur, l);
            cr_assert_lt(k, SP_TIER_COUNT);
            on[k]++;
            if (v->tiers[0])
                cr_assert_eq(k, force[l], "%s: layer %d", v->name, l);
        }
        if (!v->tiers[0])
            cr_assert(on[SP_TIER_HOST] > 0 && on[SP_TIER_NVME] > 0, "%s: %d on host, %d on nvme",
                      v->name, on[SP_TIER_HOST], on[SP_TIER_NVME]);
        decode(c, got);
        cr_assert_eq(memcmp(ref, got, sizeof(float) * STEPS * (size_t)V), 0, "%s, d=%d: logits differ",
                     v->name, v->d);
        sp_kv_tiered_stats st;
        sp_kv_tiered_get_stats(sw.cur, &st);
        cr_assert_eq(st.sched.steps, STEPS);
        cr_assert_eq(st.sched.acquires, (uint64_t)STEPS * (on[SP_TIER_HOST] + on[SP_TIER_NVME]));
        if (on[SP_TIER_NVME])
            cr_assert_gt(st.sched.bytes[SP_TIER_NVME][SP_TIER_DEVICE], 0);
        cr_log_info("%s, d=%d: %d device / %d host / %d nvme layers, hit rate %.2f, wait %.2f ms", v->name,
                    v->d, on[0], on[1], on[2],
                    st.sched.acquires ? (double)st.sched.hits / (double)st.sched.acquires : 1.0,
                    (double)st.sched.wait_ns / 1e6);
        for (int k = 0; k < SP_TIER_COUNT; k++) {
            uint64_t b = sp_tiers_budget(ts, (sp_tier_kind)k);
            cr_assert(!b || sp_tiers_used(ts, (sp_tier_kind)k, -1) <= b);
        }
        /* the previous provider's segments are no longer referenced by the context */
        sp_kv_tiered_free(old);
        sp_tiers_free(cur_ts);
        cur_ts = ts;
    }
    sp_ctx_free(c);
    sp_kv_tiered_free(sw.cur);
    sp_tiers_free(cur_ts);
    free(ref);
    free(got);
    free(last);
}
