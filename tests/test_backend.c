/* test_backend.c - the backend interface on the CPU backend: buffers, supports() and empty slots,
 * the registry, and the ordering that streamed KV slots rely on. The copy stream is a real worker
 * thread; a copy delay (sp_backend_cpu_set_copy_delay_us) makes every missing event wait show as
 * wrong bytes:
 *   - a consumer that does not wait for a copy's "ready" event reads the slot's old bytes;
 *   - a refill that does not wait for the reader's "done" event overwrites bytes not yet read;
 *   - the scheduler's slots (host tier -> device slot on the copy stream) hand out the new bytes. */
#include <criterion/criterion.h>

#include "backend.h"
#include "backend_cpu.h"
#include "scheduler.h"
#include "sp_error.h"
#include "support/spill_dir.h"
#include "tier.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static sp_backend_t *cpu_backend(void)
{
    sp_backend_params p = sp_backend_default_params();
    p.n_threads = 2;
    p.thread_floats = 1024;
    p.shared_floats = 1024;
    p.accum_floats = 64;
    sp_backend_t *be = sp_backend_create(SP_BACKEND_CPU, &p);
    cr_assert(be, "%s", sp_last_error());
    return be;
}


Test(backend, registry_names_and_availability)
{
    sp_backend_kind k;
    cr_assert_eq(sp_backend_kind_parse("cpu", &k), 0);
    cr_assert_eq(k, SP_BACKEND_CPU);
    cr_assert_eq(sp_backend_kind_parse("cuda", &k), 0);
    cr_assert_eq(k, SP_BACKEND_CUDA);
    cr_assert_eq(sp_backend_kind_parse("tpu", &k), -EINVAL);
    cr_assert(strstr(sp_last_error(), "tpu"));
    const char *why = "x";
    cr_assert(sp_backend_available(SP_BACKEND_CPU, &why));
    /* no machine this test runs on without a GPU may claim CUDA; with one, it must say nothing */
    if (!sp_backend_available(SP_BACKEND_CUDA, &why)) {
        cr_assert(why && why[0], "an unavailable backend says why");
        cr_assert_null(sp_backend_create(SP_BACKEND_CUDA, NULL));
        cr_assert(strstr(sp_last_error(), "not available"), "%s", sp_last_error());
    }
    sp_backend_params bad = sp_backend_default_params();
    bad.version = 99;
    cr_assert_null(sp_backend_create(SP_BACKEND_CPU, &bad));
    cr_assert(strstr(sp_last_error(), "version"), "%s", sp_last_error());
}

Test(backend, buffers_round_trip_and_check_ranges)
{
    sp_backend_t *be = cpu_backend();
    for (int kind = 0; kind < 2; kind++) {
        sp_buffer_t *b = sp_backend_buffer_alloc(be, (sp_mem_kind)kind, 1000, NULL);
        cr_assert(b, "%s", sp_last_error());
        cr_assert_eq(sp_backend_buffer_size(b), 1000);
        cr_assert(sp_backend_buffer_is_host(b));
        char in[100], out[100];
        for (int i = 0; i < 100; i++)
            in[i] = (char)(i * 7 + kind);
        cr_assert_eq(sp_backend_buffer_memset(b, 0, 0x5a, 1000), 0);
        cr_assert_eq(sp_backend_buffer_set(b, 900, in, 100), 0);
        cr_assert_eq(sp_backend_buffer_get(b, 900, out, 100), 0);
        cr_assert_arr_eq(in, out, 100);
        cr_assert_eq(sp_backend_buffer_get(b, 899, out, 1), 0);
        cr_assert_eq(out[0], 0x5a);
        cr_assert_eq(sp_backend_buffer_set(b, 901, in, 100), -EINVAL, "past the end");
        cr_assert_eq(sp_backend_buffer_get(b, (size_t)-1, out, 2), -EINVAL, "offset overflow");
        sp_backend_buffer_free(b);
    }
    sp_backend_free(be);
}

/* A budget that counts what it was charged, refusing beyond `cap`. */
typedef struct { size_t used, cap; } count_budget;
static int cb_charge(void *u, size_t n)
{
    count_budget *b = u;
    if (b->used + n > b->cap)
        return sp_error(ENOSPC, "test budget: %zu + %zu > %zu", b->used, n, b->cap);
    b->used += n;
    return 0;
}
static void cb_release(void *u, size_t n) { ((count_budget *)u)->used -= n; }

Test(backend, buffers_are_charged_to_the_budget)
{
    sp_backend_t *be = cpu_backend();
    count_budget cb = {0, 1500};
    sp_budget bud = {&cb, cb_charge, cb_release};
    sp_buffer_t *a = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, 1000, &bud);
    cr_assert(a);
    cr_assert_eq(cb.used, 1000);
    cr_assert_null(sp_backend_buffer_alloc(be, SP_MEM_DEVICE, 1000, &bud), "over budget");
    cr_assert(strstr(sp_last_error(), "test budget"), "%s", sp_last_error());
    cr_assert_eq(cb.used, 1000, "a refused buffer charges nothing");
    sp_backend_buffer_free(a);
    cr_assert_eq(cb.used, 0);
    sp_backend_free(be);
}

Test(backend, supports_and_empty_slots_answer_enotsup)
{
    sp_backend_t *be = cpu_backend();
    /* the CPU backend has no sampling slot (the host sampler samples on a CPU run) */
    cr_assert_not(sp_backend_supports(be, SP_OP_SAMPLE, NULL));
    float logits[4] = {1, 2, 3, 4};
    int32_t tok = -7;
    sp_sample_desc sd = {.logits = logits, .n = 4, .temperature = 1, .top_k = 2, .top_p = 1, .u01 = 0.5, .out = &tok};
    cr_assert_eq(sp_backend_sample(be, &sd), -ENOTSUP);
    cr_assert(strstr(sp_last_error(), "sample"), "%s", sp_last_error());
    cr_assert_eq(tok, -7, "an unsupported op writes nothing");
    /* a slot that exists but not for this descriptor: accumulate beyond the accumulation scratch */
    static const float w[2 * 64] = {0};
    sp_wmat m = {.type = 0 /* F32 */, .rows = 64, .cols = 2, .row_bytes = 8, .data = w};
    float x[2 * 2] = {0}, y[2 * 64] = {0};
    sp_matmul_desc md = {.nw = 1, .w = {&m}, .y = {y}, .ldy = {64}, .x = x, .n = 2, .ldx = 2, .accumulate = true};
    cr_assert(sp_backend_supports(be, SP_OP_MATMUL, NULL));
    cr_assert_not(sp_backend_supports(be, SP_OP_MATMUL, &md), "2 x 64 products > 64 floats of scratch");
    cr_assert_eq(sp_backend_matmul(be, &md), -ENOTSUP);
    md.n = 1;
    cr_assert(sp_backend_supports(be, SP_OP_MATMUL, &md));
    cr_assert_eq(sp_backend_matmul(be, &md), 0, "%s", sp_last_error());
    /* argmax: lowest index on ties, NaN never wins, -1 for an all-NaN row */
    float lg[6] = {1, 5, 5, NAN, NAN, NAN};
    int32_t am[2];
    sp_argmax_desc ad = {.logits = lg, .n_rows = 2, .n = 3, .ld = 3, .out = am};
    cr_assert_eq(sp_backend_argmax(be, &ad), 0);
    cr_assert_eq(am[0], 1);
    cr_assert_eq(am[1], -1);
    sp_backend_free(be);
}

Test(backend, matmul_accumulate_adds_bias_and_product)
{
    sp_backend_t *be = cpu_backend();
    float w[3 * 2] = {1, 2, 3, 4, 5, 6}, b[3] = {0.5f, -1, 2}, x[2] = {10, 1};
    sp_wmat m = {.type = 0, .rows = 3, .cols = 2, .row_bytes = 8, .data = w};
    float y[3] = {100, 200, 300};
    sp_matmul_desc md = {.nw = 1, .w = {&m}, .y = {y}, .ldy = {3}, .bias = {b}, .x = x, .n = 1, .ldx = 2,
                         .accumulate = true};
    cr_assert_eq(sp_backend_matmul(be, &md), 0, "%s", sp_last_error());
    cr_assert_float_eq(y[0], 100 + 12 + 0.5f, 1e-5);
    cr_assert_float_eq(y[1], 200 + 34 - 1, 1e-5);
    cr_assert_float_eq(y[2], 300 + 56 + 2, 1e-5);
    sp_backend_free(be);
}

/* A CPU backend whose copy stream sleeps delay_us per copy, one buffer of n bytes and one event. */
static sp_backend_t *delayed(unsigned delay_us, size_t n, sp_buffer_t **b, sp_event_t **e)
{
    sp_backend_t *be = cpu_backend();
    sp_backend_cpu_set_copy_delay_us(be, SP_STREAM_COPY, delay_us);
    *b = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, n, NULL);
    *e = sp_backend_event_new(be);
    cr_assert(*b && *e, "%s", sp_last_error());
    return be;
}

Test(backend, events_on_the_copy_stream_complete_in_order)
{
    sp_buffer_t *b;
    sp_event_t *e;
    sp_backend_t *be = delayed(100000, 64, &b, &e);
    cr_assert(sp_backend_event_done(be, e), "a never-recorded event is complete");
    static const char src[64] = "new bytes";
    cr_assert_eq(sp_backend_copy_h2d(be, SP_STREAM_COPY, b, 0, src, 64), 0);
    cr_assert_eq(sp_backend_event_record(be, e, SP_STREAM_COPY), 0);
    cr_assert_not(sp_backend_event_done(be, e), "the delayed copy is still queued");
    uint64_t syncs = sp_backend_host_syncs(be);
    cr_assert_eq(sp_backend_event_sync(be, e), 0);
    cr_assert(sp_backend_event_done(be, e));
    cr_assert_eq(sp_backend_host_syncs(be), syncs + 1, "an event sync is a host synchronisation");
    cr_assert_str_eq((char *)sp_backend_buffer_base(b), "new bytes");
    cr_assert_eq(sp_backend_event_record(be, e, SP_STREAM_COMPUTE), 0);
    cr_assert_eq(sp_backend_event_sync(be, e), 0);
    cr_assert(sp_backend_event_done(be, e));
    sp_backend_event_free(e);
    sp_backend_buffer_free(b);
    sp_backend_free(be);
}

/* The consumer side: after the copy, the compute stream waits on the slot's ready event. */
Test(backend, a_reader_that_waits_for_ready_sees_the_copy)
{
    sp_buffer_t *slot;
    sp_event_t *ready;
    sp_backend_t *be = delayed(50000, 16, &slot, &ready);
    cr_assert_eq(sp_backend_buffer_memset(slot, 0, 'o', 16), 0);
    static const char fresh[16] = "fffffffffffffff";
    cr_assert_eq(sp_backend_copy_h2d(be, SP_STREAM_COPY, slot, 0, fresh, 16), 0);
    cr_assert_eq(sp_backend_event_record(be, ready, SP_STREAM_COPY), 0);
    cr_assert_eq(sp_backend_stream_wait(be, SP_STREAM_COMPUTE, ready), 0);
    char seen[16];
    cr_assert_eq(sp_backend_copy_d2h(be, SP_STREAM_COMPUTE, seen, slot, 0, 16), 0);
    cr_assert_eq(sp_backend_stream_sync(be, SP_STREAM_COMPUTE), 0);
    cr_assert_eq(seen[0], 'f', "the compute stream read the slot before the copy landed");
    sp_backend_event_free(ready);
    sp_backend_buffer_free(slot);
    sp_backend_free(be);
}

/* The producer side: the reader's copy out of the slot sits on the compute stream (slow: 100 ms)
 * with its "done" event behind it; the refill on the copy stream must wait for that event. Without
 * the wait the refill lands first and the reader gets the new bytes. */
Test(backend, a_refill_waits_for_the_readers_done_event)
{
    sp_backend_t *be = cpu_backend();
    sp_buffer_t *slot = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, 16, NULL);
    sp_event_t *done = sp_backend_event_new(be);
    static const char first[16] = "111111111111111", second[16] = "222222222222222";
    cr_assert_eq(sp_backend_buffer_set(slot, 0, first, 16), 0);
    char seen[16] = {0};
    sp_backend_cpu_set_copy_delay_us(be, SP_STREAM_COMPUTE, 100000);
    cr_assert_eq(sp_backend_copy_d2h(be, SP_STREAM_COMPUTE, seen, slot, 0, 16), 0);   /* the reader */
    cr_assert_eq(sp_backend_event_record(be, done, SP_STREAM_COMPUTE), 0);           /* its release */
    cr_assert_not(sp_backend_event_done(be, done), "the reader is still reading");
    cr_assert_eq(sp_backend_stream_wait(be, SP_STREAM_COPY, done), 0);               /* slot reuse */
    cr_assert_eq(sp_backend_copy_h2d(be, SP_STREAM_COPY, slot, 0, second, 16), 0);   /* the refill */
    cr_assert_eq(sp_backend_stream_sync(be, SP_STREAM_COPY), 0);
    cr_assert_eq(sp_backend_stream_sync(be, SP_STREAM_COMPUTE), 0);
    cr_assert_eq(seen[0], '1', "the refill overwrote the slot before the reader had read it");
    cr_assert_eq(((char *)sp_backend_buffer_base(slot))[0], '2', "the refill ran after the release");
    sp_backend_event_free(done);
    sp_backend_buffer_free(slot);
    sp_backend_free(be);
}

/* ---- the scheduler's slots on the backend's copy stream ---- */

static char dir[256];
static void make_dir(void) { spill_dir_make(dir, sizeof dir, "sp-backend"); }
static void remove_dir(void) { spill_dir_remove_checked(dir); }

TestSuite(backend_sched, .init = make_dir, .fini = remove_dir);

/* Three layers on the host tier streamed through d+1 slots; the copies are slow (20 ms each), so
 * an acquire that did not wait for the slot's ready event would hand out the previous occupant's
 * bytes. Every step, every layer must read exactly its own bytes. */
static void streamed_through_backend(int depth)
{
    sp_backend_t *be = cpu_backend();
    sp_backend_cpu_set_copy_delay_us(be, SP_STREAM_COPY, 20000);
    sp_tiers_opts o;
    memset(&o, 0, sizeof o);
    o.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 4, .block_size = 16384};
    sp_tiers_t *ts = sp_tiers_create(&o);
    cr_assert(ts, "%s", sp_last_error());
    enum { L = 3, SZ = 8192 };
    sp_seg_loc locs[L];
    uint8_t bytes[L][SZ];
    for (int l = 0; l < L; l++) {
        memset(bytes[l], 'a' + l, SZ);
        cr_assert_eq(sp_tiers_seg_put(ts, SP_TIER_HOST, 0, bytes[l], SZ, &locs[l]), 0, "%s", sp_last_error());
    }
    sp_sched_opts so = {.n_layers = L, .prefetch_depth = depth, .tiers = ts, .locs = locs, .slot_bytes = SZ,
                        .be = be};
    sp_sched_t *s = sp_sched_create(&so);
    cr_assert(s, "%s", sp_last_error());
    for (int step = 0; step < 4; step++) {
        cr_assert_eq(sp_sched_begin_step(s), 0);
        for (int l = 0; l < L; l++) {
            void *p;
            size_t n;
            cr_assert_eq(sp_sched_acquire(s, l, &p, &n), 0, "%s", sp_last_error());
            cr_assert_eq(n, (size_t)SZ);
            const uint8_t *b = p;
            cr_assert(b[0] == 'a' + l && b[SZ - 1] == 'a' + l,
                      "d=%d step %d layer %d: read '%c' (stale slot)", depth, step, l, b[0]);
            cr_assert_eq(sp_sched_release(s, l), 0);
        }
    }
    sp_sched_free(s);
    for (int l = 0; l < L; l++)
        sp_tiers_seg_free(ts, &locs[l]);
    sp_tiers_free(ts);
    sp_backend_free(be);
}

Test(backend_sched, host_layers_sync) { streamed_through_backend(0); }
Test(backend_sched, host_layers_prefetch_1) { streamed_through_backend(1); }
Test(backend_sched, host_layers_prefetch_2) { streamed_through_backend(2); }
