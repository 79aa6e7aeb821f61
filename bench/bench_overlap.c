/* bench_overlap.c - does prefetch hide the spill? The real model's decode step with every
 * non-resident layer's segment on NVMe (d = 0, 1, 2, 4) and with a host/NVMe mix, against the
 * all-resident step, side by side in one process; and spilled == resident, bit for bit, on every
 * step (issue 4, items 6 and 8).
 *
 * Usage: bench_overlap MODEL HAYSTACK_DIR [tokens=8064] [threads=2] [steps=16] [repeats=5]
 *                      [spill_dir=/tmp] [json_out] [commit]
 *
 * 1. Tokenize the haystack texts (files of HAYSTACK_DIR in name order) and prefill the first
 *    `tokens` tokens once, under spindle compression (default options), keeping the prefill state.
 * 2. Each repeat runs every variant in turn (same load for all): a fresh tier set and tiered
 *    provider with forced placement (the deepest 8 layers on the device, the others as the variant
 *    says), sp_ctx_recompress places the segments (spill writes), then `steps` teacher-forced
 *    decode steps. The first step warms the pipeline and is not timed. Variant 0 is all-resident.
 * 3. Per variant: decode step time mean ± sd over repeats (each repeat's mean over its steps), the
 *    ratio to the all-resident step of the same repeat (mean ± sd), stall % (time acquire waited /
 *    step time), prefetch hit rate, NVMe bytes read per step, the store's I/O mode (O_DIRECT means
 *    every read goes to the disk, not the page cache), and whether every step's logits equal the
 *    resident ones bit for bit.
 * 4. The ceiling: an all-resident step while a separate thread reads the same nvme bytes (see
 *    side_reader), and those reads alone. If the ceiling is above the target, no prefetch schedule
 *    can meet it on this machine: the disk and the decode share its memory bandwidth.
 * 5. Fewer layers on nvme at d = 2 (the shallowest 6, 11, 16; the rest resident, as a larger device
 *    budget would place them): how many bytes per step prefetch hides on this machine.
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "huge_map.h"
#include "kv_tiered.h"
#include "model.h"
#include "sp_error.h"
#include "tokenizer.h"
#include "sp_time.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The files of dir in name order, concatenated until at least `want` bytes. */
static char *read_texts(const char *dir, size_t want, size_t *len)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, (size_t)cap * sizeof *names);
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    size_t bcap = want + (1 << 20), off = 0;
    char *buf = malloc(bcap);
    for (int i = 0; i < n; i++) {
        if (off < want) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            FILE *f = fopen(path, "rb");
            if (f) {
                size_t r;
                while (off < bcap - 1 && (r = fread(buf + off, 1, bcap - 1 - off, f)) > 0)
                    off += r;
                fclose(f);
            }
        }
        free(names[i]);
    }
    free(names);
    buf[off] = '\0';
    *len = off;
    return buf;
}

/* Forwards to the current provider so one context can be re-placed into fresh ones. */
typedef struct {
    sp_kv_tiered_t *cur;
} swap_t;
static int sw_place(void *u, int l, const void *b, size_t n) { return sp_kv_tiered_place(((swap_t *)u)->cur, l, b, n); }
static int sw_step(void *u) { return sp_kv_tiered_step_begin(((swap_t *)u)->cur); }
static int sw_acq(void *u, int l, const void **b, size_t *n) { return sp_kv_tiered_acquire(((swap_t *)u)->cur, l, b, n); }
static int sw_rel(void *u, int l) { return sp_kv_tiered_release(((swap_t *)u)->cur, l); }

enum { PINNED = 8, MAXV = 12 };

/* The hardware ceiling of overlap: the same NVMe bytes as the streamed variants, read by a thread of
 * its own while an all-resident decode step runs, with no dependency between the two. A step is
 * over when both are: no schedule that must read these bytes once per step can beat it, whatever
 * its prefetch depth. Reads go through a store of the same options into huge-page buffers, with
 * checksums verified, exactly like a streamed fetch. */
typedef struct {
    sp_uring_store_t *store;
    int64_t ids[256];
    size_t sizes[256];
    int n;
    uint8_t *buf;      /* huge-page buffer of the largest segment */
    size_t buf_len;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go, done, quit, err;
    double io_s;       /* seconds spent reading in the last round */
} side_reader;

static void *side_main(void *arg)
{
    side_reader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->go && !r->quit)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit)
            break;
        r->go = 0;
        pthread_mutex_unlock(&r->mu);
        double t = sp_now_s();
        int err = 0;
        for (int i = 0; i < r->n && !err; i++)
            err = sp_uring_store_get(r->store, r->ids[i], r->buf, r->buf_len) < 0;
        t = sp_now_s() - t;
        pthread_mutex_lock(&r->mu);
        r->io_s = t;
        r->err |= err;
        r->done = 1;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Spill the non-resident layers' segments (bytes of the current, all-resident placement). */
static int side_open(side_reader *r, const sp_uring_store_opts *so, sp_kv_tiered_t *kvt, int n_spilled)
{
    memset(r, 0, sizeof *r);
    r->store = sp_uring_store_open(so);
    if (!r->store)
        return -1;
    size_t biggest = 0;
    for (int l = 0; l < n_spilled; l++) {
        const sp_seg_loc *loc = sp_kv_tiered_loc(kvt, l);
        r->ids[l] = sp_uring_store_put(r->store, loc->mem.ptr, loc->size);
        if (r->ids[l] < 0)
            return -1;
        r->sizes[l] = loc->size;
        biggest = loc->size > biggest ? loc->size : biggest;
    }
    r->n = n_spilled;
    r->buf = sp_huge_map(biggest, &r->buf_len);
    if (!r->buf)
        return -1;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    return pthread_create(&r->th, NULL, side_main, r) == 0 ? 0 : -1;
}

static void side_start(side_reader *r)
{
    pthread_mutex_lock(&r->mu);
    r->go = 1;
    r->done = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static double side_wait(side_reader *r)
{
    pthread_mutex_lock(&r->mu);
    while (!r->done)
        pthread_cond_wait(&r->cv, &r->mu);
    double t = r->io_s;
    pthread_mutex_unlock(&r->mu);
    return t;
}

static void side_close(side_reader *r)
{
    pthread_mutex_lock(&r->mu);
    r->quit = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    sp_huge_unmap(r->buf, r->buf_len);
    sp_uring_store_close(r->store);
}

typedef struct {
    const char *name;
    char kind;  /* 'R' resident, 'N' non-resident on nvme, 'M' host/nvme alternating, 'C' ceiling:
                   resident + the non-resident layers' bytes read from nvme in parallel (side_reader),
                   'K' only the shallowest n_nvme layers on nvme (a larger device budget) */
    int d, n_nvme;
    double *step_ms, *ratio, *stall_pct, *hit, *nvme_mb, *io_ms; /* io_ms: 'C' reads alone */
    bool identical;
    char mode[64];
} variant;

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_overlap MODEL HAYSTACK_DIR [tokens=8064] [threads=2] [steps=16] "
                        "[repeats=5] [spill_dir=/tmp] [json_out] [commit]\n");
        return 2;
    }
    int tokens = argc > 3 ? atoi(argv[3]) : 8064, threads = argc > 4 ? atoi(argv[4]) : 2;
    int steps = argc > 5 ? atoi(argv[5]) : 16, reps = argc > 6 ? atoi(argv[6]) : 5;
    const char *spill = argc > 7 ? argv[7] : "/tmp", *json = argc > 8 ? argv[8] : NULL;
    const char *commit = argc > 9 ? argv[9] : "unknown";
    if (steps < 2 || reps < 1 || tokens < 64) {
        fprintf(stderr, "bench_overlap: need steps >= 2, repeats >= 1, tokens >= 64\n");
        return 2;
    }
    double load0[3] = {0};
    if (getloadavg(load0, 3) < 0)
        load0[0] = -1;

    sp_model_t *m = sp_model_load(argv[1]);
    if (!m) {
        fprintf(stderr, "bench_overlap: %s\n", sp_last_error());
        return 1;
    }
    const sp_hparams *hp = sp_model_hparams(m);
    const int L = hp->n_layer, V = hp->n_vocab;
    sp_tokenizer_t *tok = sp_tokenizer_from_gguf(sp_model_gguf(m));
    size_t tlen = 0;
    char *text = read_texts(argv[2], (size_t)tokens * 6, &tlen);
    int32_t *ids = malloc(sizeof(int32_t) * (tlen + 16)); /* a token covers at least one byte */
    size_t n_ids = 0;
    if (!tok || !text || sp_tokenizer_encode(tok, text, tlen, true, false, ids, tlen + 16, &n_ids) < 0 ||
        n_ids < (size_t)tokens + (size_t)steps) {
        fprintf(stderr, "bench_overlap: not enough text in %s for %d tokens (%s)\n", argv[2], tokens + steps,
                sp_last_error());
        return 1;
    }
    free(text);
    sp_tokenizer_free(tok);

    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = tokens + steps + 1;
    cp.n_threads = threads;
    cp.kv_opts = &o;
    cp.keep_prefill_state = true;
    sp_ctx_t *c = sp_ctx_new(m, &cp);
    sp_tiers_opts to;
    memset(&to, 0, sizeof to);
    to.nvme = (sp_uring_store_opts){.dir = spill, .queue_depth = 32, .block_size = 1 << 20,
                                    .register_buffers = true, .verify_checksums = true};
    swap_t sw = {0};
    sp_tiers_t *ts0 = sp_tiers_create(&to);
    sp_kv_tiered_opts ko = {.n_layers = L, .tiers = ts0, .resident_deep_layers = L, .verify_checksums = true};
    sw.cur = ts0 ? sp_kv_tiered_create(&ko) : NULL;
    sp_kv_provider prov = {.user = &sw, .place = sw_place, .step_begin = sw_step, .acquire = sw_acq, .release = sw_rel};
    if (!c || !sw.cur || sp_ctx_set_kv_provider(c, &prov) < 0) {
        fprintf(stderr, "bench_overlap: %s\n", sp_last_error());
        return 1;
    }
    float *logits = malloc(sizeof(float) * (size_t)V);
    float *ref = malloc(sizeof(float) * (size_t)V * (size_t)steps);
    fprintf(stderr, "bench_overlap: prefill %d tokens (%d threads)...\n", tokens, threads);
    double t0 = sp_now_s();
    if (sp_ctx_prefill(c, ids, tokens, logits, NULL) < 0) {
        fprintf(stderr, "bench_overlap: prefill: %s\n", sp_last_error());
        return 1;
    }
    double prefill_s = sp_now_s() - t0;
    uint64_t kv_bytes = 0, spilled_bytes = 0;
    for (int l = 0; l < L; l++) {
        kv_bytes += sp_kv_tiered_loc(sw.cur, l)->size;
        if (l < L - PINNED)
            spilled_bytes += sp_kv_tiered_loc(sw.cur, l)->size;
    }
    fprintf(stderr, "bench_overlap: prefill %.1f s; segments %.2f MiB, %.2f MiB of them in the %d "
                    "non-resident layers\n", prefill_s, kv_bytes / 1048576.0, spilled_bytes / 1048576.0,
            L - PINNED);

    variant vs[MAXV] = {
        {.name = "all resident", .kind = 'R', .d = 0},
        {.name = "non-resident on nvme, d=2", .kind = 'N', .d = 2},
        {.name = "non-resident on nvme, d=0", .kind = 'N', .d = 0},
        {.name = "non-resident on nvme, d=1", .kind = 'N', .d = 1},
        {.name = "non-resident on nvme, d=4", .kind = 'N', .d = 4},
        {.name = "host/nvme alternating, d=2", .kind = 'M', .d = 2},
        {.name = "ceiling: resident + reads", .kind = 'C', .d = 0},
        {.name = "shallowest 6 on nvme, d=2", .kind = 'K', .d = 2, .n_nvme = 6},
        {.name = "shallowest 11 on nvme, d=2", .kind = 'K', .d = 2, .n_nvme = 11},
        {.name = "shallowest 16 on nvme, d=2", .kind = 'K', .d = 2, .n_nvme = 16},
    };
    int nv = 10;
    for (int v = 0; v < nv; v++) {
        vs[v].step_ms = calloc((size_t)reps, sizeof(double));
        vs[v].ratio = calloc((size_t)reps, sizeof(double));
        vs[v].stall_pct = calloc((size_t)reps, sizeof(double));
        vs[v].hit = calloc((size_t)reps, sizeof(double));
        vs[v].nvme_mb = calloc((size_t)reps, sizeof(double));
        vs[v].io_ms = calloc((size_t)reps, sizeof(double));
        vs[v].identical = true;
        snprintf(vs[v].mode, sizeof vs[v].mode, "-");
    }
    sp_tiers_t *cur_ts = ts0;
    for (int r = 0; r < reps; r++) {
        for (int v = 0; v < nv; v++) {
            variant *x = &vs[v];
            sp_tier_kind force[256];
            for (int l = 0; l < L; l++)
                force[l] = l >= L - PINNED || x->kind == 'R' || x->kind == 'C' ? SP_TIER_DEVICE
                         : x->kind == 'K'                     ? (l < x->n_nvme ? SP_TIER_NVME : SP_TIER_DEVICE)
                         : x->kind == 'M' && l % 2            ? SP_TIER_HOST
                                                              : SP_TIER_NVME;
            sp_tiers_t *ts = sp_tiers_create(&to);
            sp_kv_tiered_opts k2 = {.n_layers = L, .tiers = ts, .resident_deep_layers = PINNED,
                                    .prefetch_depth = x->d, .verify_checksums = true, .force = force};
            sp_kv_tiered_t *old = sw.cur;
            sw.cur = ts ? sp_kv_tiered_create(&k2) : NULL;
            if (!sw.cur || sp_ctx_recompress(c, &o) < 0) {
                fprintf(stderr, "bench_overlap: %s: %s\n", x->name, sp_last_error());
                return 1;
            }
            sp_kv_tiered_free(old);
            sp_tiers_free(cur_ts);
            cur_ts = ts;
            side_reader side;
            if (x->kind == 'C') {
                if (side_open(&side, &to.nvme, sw.cur, L - PINNED) < 0) {
                    fprintf(stderr, "bench_overlap: %s: %s\n", x->name, sp_last_error());
                    return 1;
                }
                side_start(&side); /* warm, then the reads alone: the I/O time without compute */
                side_wait(&side);
                side_start(&side);
                x->io_ms[r] = 1e3 * side_wait(&side);
            }
            double sum = 0;
            sp_kv_tiered_stats s0, s1;
            uint64_t side_bytes = 0;
            for (int s = 0; s < steps; s++) {
                if (s == 1)
                    sp_kv_tiered_get_stats(sw.cur, &s0);
                double a = sp_now_s();
                if (x->kind == 'C')
                    side_start(&side);
                if (sp_ctx_decode(c, ids[tokens + s], logits) < 0) {
                    fprintf(stderr, "bench_overlap: %s: decode: %s\n", x->name, sp_last_error());
                    return 1;
                }
                if (x->kind == 'C') {
                    side_wait(&side);
                    for (int i = 0; i < side.n && s >= 1; i++)
                        side_bytes += side.sizes[i];
                }
                if (s >= 1)
                    sum += sp_now_s() - a;
                if (x->kind == 'R' && v == 0)
                    memcpy(ref + (size_t)s * V, logits, sizeof(float) * (size_t)V);
                else if (memcmp(ref + (size_t)s * V, logits, sizeof(float) * (size_t)V) != 0)
                    x->identical = false;
            }
            sp_kv_tiered_get_stats(sw.cur, &s1);
            int timed = steps - 1;
            x->step_ms[r] = 1e3 * sum / timed;
            uint64_t acq = s1.sched.acquires - s0.sched.acquires, hits = s1.sched.hits - s0.sched.hits;
            x->hit[r] = acq ? (double)hits / (double)acq : 1.0;
            x->stall_pct[r] = 100.0 * (double)(s1.sched.wait_ns - s0.sched.wait_ns) / 1e9 / sum;
            x->nvme_mb[r] = (double)(s1.sched.bytes[SP_TIER_NVME][SP_TIER_HOST] + s1.sched.bytes[SP_TIER_NVME][SP_TIER_DEVICE] -
                                     s0.sched.bytes[SP_TIER_NVME][SP_TIER_HOST] - s0.sched.bytes[SP_TIER_NVME][SP_TIER_DEVICE]) /
                            1e6 / timed;
            if (x->kind == 'C') {
                if (side.err) {
                    fprintf(stderr, "bench_overlap: %s: a side read failed\n", x->name);
                    return 1;
                }
                x->nvme_mb[r] = (double)side_bytes / 1e6 / (steps - 1);
                snprintf(x->mode, sizeof x->mode, "%s", sp_uring_store_mode_name(sp_uring_store_mode(side.store)));
                side_close(&side);
            } else if (x->kind != 'R') {
                sp_uring_store_t *st = sp_tiers_nvme_store(ts);
                if (st)
                    snprintf(x->mode, sizeof x->mode, "%s", sp_uring_store_mode_name(sp_uring_store_mode(st)));
            }
            x->ratio[r] = x->step_ms[r] / vs[0].step_ms[r];
            fprintf(stderr, "  repeat %d  %-28s %8.2f ms/step  x%.3f  stall %5.1f%%  hits %5.1f%%  nvme %.2f MB/step%s\n",
                    r, x->name, x->step_ms[r], x->ratio[r], x->stall_pct[r], 100 * x->hit[r], x->nvme_mb[r],
                    x->identical ? "" : "  LOGITS DIFFER");
            if (x->kind == 'C')
                fprintf(stderr, "  repeat %d  %-28s %8.2f ms (the same reads with nothing else running)\n", r,
                        "reads alone", x->io_ms[r]);
        }
    }
    double load1[3] = {0};
    if (getloadavg(load1, 3) < 0)
        load1[0] = -1;
    printf("\nbench_overlap: %d-token prompt, %d threads, %d timed steps x %d repeats, load %.2f -> %.2f\n",
           tokens, threads, steps - 1, reps, load0[0], load1[0]);
    printf("%-28s %18s %16s %14s %12s %12s %s\n", "variant", "step ms", "vs resident", "stall %", "hit rate",
           "nvme MB/step", "logits");
    FILE *f = json ? fopen(json, "w") : NULL;
    if (json && !f)
        fprintf(stderr, "bench_overlap: cannot write %s\n", json);
    if (f)
        fprintf(f, "{\"bench\":\"overlap\",\"commit\":\"%s\",\"model\":\"%s\",\"prompt_tokens\":%d,\"threads\":%d,"
                   "\"timed_steps\":%d,\"repeats\":%d,\"load_before\":%.2f,\"load_after\":%.2f,\"prefill_s\":%.2f,"
                   "\"resident_deep_layers\":%d,\"segment_bytes\":%llu,\"non_resident_bytes\":%llu,"
                   "\"target\":\"nvme d=2 step <= 1.10 x resident step\",\"variants\":[",
                commit, argv[1], tokens, threads, steps - 1, reps, load0[0], load1[0], prefill_s, PINNED,
                (unsigned long long)kv_bytes, (unsigned long long)spilled_bytes);
    for (int v = 0; v < nv; v++) {
        variant *x = &vs[v];
        double ms, mss, ra, ras, st, sts, hi, his, nm, nms;
        sp_mean_sd(x->step_ms, reps, &ms, &mss);
        sp_mean_sd(x->ratio, reps, &ra, &ras);
        sp_mean_sd(x->stall_pct, reps, &st, &sts);
        sp_mean_sd(x->hit, reps, &hi, &his);
        sp_mean_sd(x->nvme_mb, reps, &nm, &nms);
        printf("%-28s %9.2f ± %6.2f %8.3f ± %5.3f %7.1f ± %4.1f %6.3f ± %4.3f %12.2f %s (%s)\n", x->name, ms, mss, ra,
               ras, st, sts, hi, his, nm, x->identical ? "bit-identical" : "DIFFER", x->mode);
        if (f)
            fprintf(f, "%s{\"name\":\"%s\",\"nvme_layers\":%d,\"prefetch_depth\":%d,\"step_ms\":[%.3f,%.3f],\"ratio_to_resident\":[%.4f,%.4f],"
                       "\"stall_pct\":[%.2f,%.2f],\"hit_rate\":[%.4f,%.4f],\"nvme_mb_per_step\":%.3f,\"io_mode\":\"%s\","
                       "\"logits_bit_identical\":%s}",
                    v ? "," : "", x->name,
                    x->kind == 'K' ? x->n_nvme : x->kind == 'N' || x->kind == 'C' ? L - PINNED : x->kind == 'M' ? (L - PINNED) / 2 : 0,
                    x->d, ms, mss, ra, ras, st, sts, hi, his, nm, x->mode,
                    x->identical ? "true" : "false");
    }
    double io, ios;
    int vc = 0;
    while (vs[vc].kind != 'C')
        vc++;
    sp_mean_sd(vs[vc].io_ms, reps, &io, &ios);
    printf("%-28s %9.2f ± %6.2f ms per step's nvme bytes with nothing else running\n", "reads alone", io, ios);
    if (f) {
        fprintf(f, "],\"reads_alone_ms\":[%.3f,%.3f],\"note\":\"[mean, sd] over repeats; each repeat's value is the mean over its timed steps "
                   "(the first decode step after placement warms the pipeline and is not timed); variants run "
                   "in turn within each repeat. 'ceiling' reads the non-resident layers' bytes from nvme on a thread of its own "
                   "while an all-resident step runs, with no dependency, and the step ends when both are done: the best "
                   "any per-step streaming schedule can do on this machine. reads_alone_ms: those reads with nothing "
                   "else running.\"}\n", io, ios);
        fclose(f);
    }
    sp_ctx_free(c);
    sp_kv_tiered_free(sw.cur);
    sp_tiers_free(cur_ts);
    for (int v = 0; v < nv; v++) {
        free(vs[v].step_ms);
        free(vs[v].ratio);
        free(vs[v].stall_pct);
        free(vs[v].hit);
        free(vs[v].nvme_mb);
        free(vs[v].io_ms);
    }
    free(ref);
    free(logits);
    free(ids);
    sp_model_free(m);
    return 0;
}
