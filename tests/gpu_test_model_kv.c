/* gpu_test_model_kv.c - every compression policy on the CUDA backend against the CPU backend (exact
 * numerics), on the synthetic llama model (tests/support/synth_model.h):
 * - the prefill is captured on the device (pre-RoPE K stored there, window scores read back), the
 *   layers compressed and their segments and tails placed in device memory;
 * - the same greedy tokens over a decode run over segment + tail, the same byte accounting and the
 *   same codebook entry counts (the device's tail coding against the CPU's), the last step's
 *   logits close;
 * - no host synchronisation inside a decode step;
 * - spilled == resident on the device: segments placed through the tiered provider with the device
 *   tier in the backend's memory, layers forced onto device, host and NVMe, streamed into device
 *   slots on the copy stream with prefetch depth d = 0, 1, 2, give the resident run's logits;
 * - what the device path does not do (a raw decode window) is refused with a message.
 * Plain C: exit 0 pass, 1 fail, 77 no CUDA device. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <dirent.h>

#include "backend.h"
#include "kv_policy.h"
#include "kv_tiered.h"
#include "model.h"
#include "sampler.h"
#include "sp_error.h"
#include "tier_backend.h"

#include "support/synth_model.h"

enum { VOCAB = SYNTH_VOCAB, PROMPT = 24, STEPS = 5 };



static void compare_policy(const sp_model_t *m, const sp_kv_opts *o, const char *what)
{
    sp_ctx_t *cpu = synth_ctx_new(m, SP_BACKEND_CPU, o), *gpu = synth_ctx_new(m, SP_BACKEND_CUDA, o);
    float *lc = calloc(VOCAB, sizeof(float)), *lg = calloc(VOCAB, sizeof(float));
    sp_sampler_params sp = sp_sampler_default_params();
    sp.temperature = 0.0f;
    sp_sampler_t *smp = sp_sampler_new(VOCAB, &sp);
    SYNTH_CHECK(cpu && gpu && lc && lg && smp, "%s: set-up", what);
    if (!cpu || !gpu || !lc || !lg || !smp)
        goto out;
    int32_t prompt[PROMPT];
    uint64_t s = 7;
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = (int32_t)(synth_next_u64(&s) % VOCAB);
    int rc1 = sp_ctx_prefill(cpu, prompt, PROMPT, lc, NULL), rc2 = sp_ctx_prefill(gpu, prompt, PROMPT, NULL, NULL);
    SYNTH_CHECK(rc1 == 0 && rc2 == 0, "%s: prefill cpu %d, cuda %d: %s", what, rc1, rc2, sp_last_error());
    if (rc1 || rc2)
        goto out;
    sp_backend_t *be = sp_ctx_backend(gpu);
    int32_t tc = sp_sampler_sample(smp, lc), tg = -1;
    SYNTH_CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0 && tg == tc, "%s: first token cpu %d, cuda %d", what, tc, tg);
    double max_d = 0, max_v = 0;
    int before = synth_failures;
    for (int step = 0; step < STEPS && synth_failures == before; step++) {
        bool last = step == STEPS - 1;   /* the last step reads the logits back to compare them */
        rc1 = sp_ctx_decode(cpu, tc, lc);
        uint64_t s0 = sp_backend_host_syncs(be);
        rc2 = sp_ctx_decode(gpu, tg, last ? lg : NULL);
        uint64_t s1 = sp_backend_host_syncs(be);
        SYNTH_CHECK(rc1 == 0 && rc2 == 0, "%s: decode step %d: %s", what, step, sp_last_error());
        SYNTH_CHECK(last || s1 == s0, "%s: decode step %d made %llu host synchronisations (want 0)", what, step,
              (unsigned long long)(s1 - s0));
        tc = sp_sampler_sample(smp, lc);
        SYNTH_CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0, "%s: sample: %s", what, sp_last_error());
        SYNTH_CHECK(tg == tc, "%s: decode step %d: cpu token %d, cuda token %d", what, step, tc, tg);
    }
    for (int i = 0; i < VOCAB; i++) {
        max_d = fmax(max_d, fabs((double)lc[i] - lg[i]));
        max_v = fmax(max_v, fabs((double)lc[i]));
    }
    SYNTH_CHECK(max_d <= 1e-3 * fmax(1.0, max_v), "%s: last decode logits differ by %g (max |logit| %g)", what, max_d, max_v);
    sp_kv_stats kc, kg;
    rc1 = sp_ctx_kv_stats(cpu, &kc);
    int64_t ce[2 * SYNTH_N_LAYER] = {0};
    for (int l = 0; rc1 == 0 && l < kc.n_layer; l++) {
        ce[2 * l] = kc.layer[l].k_entries;
        ce[2 * l + 1] = kc.layer[l].v_entries;
    }
    rc2 = sp_ctx_kv_stats(gpu, &kg);
    SYNTH_CHECK(rc1 == 0 && rc2 == 0 && kc.compressed && kg.compressed, "%s: kv stats: %s", what, sp_last_error());
    if (rc1 == 0 && rc2 == 0) {
        SYNTH_CHECK(kc.bytes == kg.bytes && kc.fp16_bytes == kg.fp16_bytes, "%s: true bytes cpu %llu, cuda %llu", what,
              (unsigned long long)kc.bytes, (unsigned long long)kg.bytes);
        for (int l = 0; l < kg.n_layer; l++)
            SYNTH_CHECK(ce[2 * l] == kg.layer[l].k_entries && ce[2 * l + 1] == kg.layer[l].v_entries,
                  "%s: layer %d entries cpu K %lld V %lld, cuda K %lld V %lld", what, l, (long long)ce[2 * l],
                  (long long)ce[2 * l + 1], (long long)kg.layer[l].k_entries, (long long)kg.layer[l].v_entries);
        printf("%s: %d greedy decode steps over segment + tail agree; true ratio %.3f; entries K %lld V %lld; "
               "last logits max |cpu - cuda| = %.3g (max |logit| %.3g)\n", what, STEPS, kg.true_ratio,
               (long long)(kg.layer[0].k_entries + kg.layer[1].k_entries),
               (long long)(kg.layer[0].v_entries + kg.layer[1].v_entries), max_d, max_v);
    }
out:
    sp_sampler_free(smp);
    free(lc);
    free(lg);
    sp_ctx_free(cpu);
    sp_ctx_free(gpu);
}

/* Teacher-forced decode of STEPS tokens after the prompt; logits [STEPS][VOCAB]. *max_syncs: the
 * most host synchronisations this thread made in one step (the logits read-back is one). */
static int forced_run(sp_ctx_t *c, const int32_t *tok, float *logits, uint64_t *max_syncs)
{
    int rc = sp_ctx_prefill(c, tok, PROMPT, NULL, NULL);
    *max_syncs = 0;
    for (int s = 0; rc == 0 && s < STEPS; s++) {
        uint64_t s0 = sp_backend_thread_host_syncs();
        rc = sp_ctx_decode(c, tok[PROMPT + s], logits + (size_t)s * VOCAB);
        uint64_t n = sp_backend_thread_host_syncs() - s0;
        *max_syncs = n > *max_syncs ? n : *max_syncs;
    }
    return rc;
}

static void spilled_equals_resident(const sp_model_t *m)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    o.code_fallback = false;   /* these runs test the device codebook path */
    o.window = 4;
    o.ratio = 0.5;
    o.target = SP_TARGET_TOKENS;
    int32_t tok[PROMPT + STEPS];
    uint64_t s = 11;
    for (int i = 0; i < PROMPT + STEPS; i++)
        tok[i] = (int32_t)(synth_next_u64(&s) % VOCAB);
    float *ref = calloc((size_t)STEPS * VOCAB, sizeof(float)), *got = calloc((size_t)STEPS * VOCAB, sizeof(float));
    sp_ctx_t *res = synth_ctx_new(m, SP_BACKEND_CUDA, &o);
    uint64_t syncs = 0;
    int rc = res && ref && got ? forced_run(res, tok, ref, &syncs) : -1;
    SYNTH_CHECK(rc == 0, "resident reference: %s", sp_last_error());
    SYNTH_CHECK(rc || syncs == 1, "resident: a decode step made %llu host synchronisations (want 1: the logits read)",
                (unsigned long long)syncs);
    sp_ctx_free(res);
    if (rc) {
        free(ref);
        free(got);
        return;
    }
    char dir[] = "/tmp/spindle-gpu-spill-XXXXXX";
    SYNTH_CHECK(mkdtemp(dir), "spill dir");
    static const struct {
        const char *tiers; /* per layer: D device (resident), H host, N nvme */
        int d;
    } v[] = {{"HN", 0}, {"NN", 1}, {"DH", 2}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        sp_ctx_t *c = synth_ctx_new(m, SP_BACKEND_CUDA, &o);
        sp_tier_backend_t *tb = c ? sp_tier_backend_new(sp_ctx_backend(c)) : NULL;
        sp_tiers_opts to;
        memset(&to, 0, sizeof to);
        to.nvme = (sp_uring_store_opts){.dir = dir, .queue_depth = 4, .block_size = 1 << 20,
                                        .register_buffers = true, .verify_checksums = true};
        to.device_ops = sp_tier_backend_ops(tb);
        sp_tiers_t *ts = tb ? sp_tiers_create(&to) : NULL;
        sp_tier_kind force[SYNTH_N_LAYER];
        for (int l = 0; l < SYNTH_N_LAYER; l++)
            force[l] = v[i].tiers[l] == 'D' ? SP_TIER_DEVICE : v[i].tiers[l] == 'H' ? SP_TIER_HOST : SP_TIER_NVME;
        sp_kv_tiered_opts ko = {.n_layers = SYNTH_N_LAYER, .tiers = ts, .prefetch_depth = v[i].d,
                                .verify_checksums = true, .force = force, .be = c ? sp_ctx_backend(c) : NULL};
        sp_kv_tiered_t *kt = ts ? sp_kv_tiered_create(&ko) : NULL;
        sp_kv_provider p = kt ? sp_kv_tiered_provider(kt) : (sp_kv_provider){0};
        rc = kt ? sp_ctx_set_kv_provider(c, &p) : -1;
        if (rc == 0)
            rc = forced_run(c, tok, got, &syncs);
        SYNTH_CHECK(rc == 0, "%s d=%d: %s", v[i].tiers, v[i].d, sp_last_error());
        /* streamed layers: the copy stream's events order the slots; with prefetch (d >= 1) the
         * decode thread itself only reads back the logits this test asks for. d = 0 fetches on the
         * decode thread by definition (an NVMe read into the staging buffer waits for its last copy) */
        SYNTH_CHECK(rc || v[i].d == 0 || syncs == 1, "%s d=%d: a decode step made %llu host synchronisations on the decode thread "
                    "(want 1: the logits read-back)", v[i].tiers, v[i].d, (unsigned long long)syncs);
        double max_d = 0, max_v = 0;
        for (size_t j = 0; rc == 0 && j < (size_t)STEPS * VOCAB; j++) {
            max_d = fmax(max_d, fabs((double)ref[j] - got[j]));
            max_v = fmax(max_v, fabs((double)ref[j]));
        }
        /* the same kernels on the same bytes; only the float atomics of segment attention's value
         * scatter may reorder on a real GPU */
        SYNTH_CHECK(rc || max_d <= 1e-5 * fmax(1.0, max_v), "%s d=%d: logits differ from resident by %g", v[i].tiers,
              v[i].d, max_d);
        for (int l = 0; rc == 0 && l < SYNTH_N_LAYER; l++)
            SYNTH_CHECK(sp_kv_tiered_layer_tier(kt, l) == force[l], "%s d=%d: layer %d is on tier %d", v[i].tiers, v[i].d,
                  l, (int)sp_kv_tiered_layer_tier(kt, l));
        if (rc == 0)
            printf("spilled (%s, d=%d) == resident on the device: %d teacher-forced steps, max |diff| %.3g, at most "
                   "%llu host synchronisation(s) per step on the decode thread (the logits read)\n",
                   v[i].tiers, v[i].d, STEPS, max_d, (unsigned long long)syncs);
        sp_ctx_free(c);
        sp_kv_tiered_free(kt);
        sp_tiers_free(ts);
        sp_tier_backend_free(tb);
    }
    DIR *dd = opendir(dir);
    int left = 0;
    for (struct dirent *e; dd && (e = readdir(dd));)
        left += e->d_name[0] != '.';
    if (dd)
        closedir(dd);
    SYNTH_CHECK(left == 0, "%d spill files left in %s", left, dir);
    rmdir(dir);
    free(ref);
    free(got);
}

/* A coded tail with a raw decode window is coded on the CPU only: refused with the key to change. */
static void refuse_decode_window(const sp_model_t *m)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    o.code_fallback = false;   /* these runs test the device codebook path */
    o.window = 4;
    o.ratio = 0.5;
    o.target = SP_TARGET_TOKENS;
    o.decode_window = 4;
    sp_ctx_t *gpu = synth_ctx_new(m, SP_BACKEND_CUDA, &o);
    SYNTH_CHECK(gpu, "decode window: context");
    if (!gpu)
        return;
    int32_t prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = i % VOCAB;
    int rc = sp_ctx_prefill(gpu, prompt, PROMPT, NULL, NULL);
    SYNTH_CHECK(rc == -ENOTSUP && strstr(sp_last_error(), "decode_window"), "decode window on cuda: rc %d (%s)", rc,
          sp_last_error());
    sp_ctx_free(gpu);
}

int main(void)
{
    if (!synth_cuda_available())
        return 77;
    char path[] = "/tmp/spindle-gpu-model-kv-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    close(fd);
    int rc = synth_model_write(path, false, 4321);
    sp_model_t *m = rc == 0 ? sp_model_load(path) : NULL;
    unlink(path);
    SYNTH_CHECK(m, "synthetic model: %d %s", rc, sp_last_error());
    if (!m)
        return 1;
    /* the policies whose capture or segments differ on the device (pyramidkv and zigzag only size
     * the budgets differently, on the host; tests/test_model_kv.c covers them on the CPU) */
    static const struct {
        sp_policy_kind policy;
        const char *name;
        sp_ratio_target target;
        double theta_k, theta_v; /* 0: the default thresholds */
    } runs[] = {
        {SP_POLICY_SPINDLE, "spindle (bytes target 0.4)", SP_TARGET_BYTES, 0, 0},
        /* K tail tokens match entries, V ones (similar directions here) make new entries */
        {SP_POLICY_SPINDLE, "spindle (theta_k 0.2, theta_v 0.999)", SP_TARGET_TOKENS, 0.2, 0.999},
        {SP_POLICY_SNAPKV, "snapkv", SP_TARGET_TOKENS, 0, 0},
        {SP_POLICY_H2O, "h2o", SP_TARGET_TOKENS, 0, 0},
        {SP_POLICY_PYRAMIDINFER, "pyramidinfer", SP_TARGET_TOKENS, 0, 0},
        {SP_POLICY_STREAMING, "streaming", SP_TARGET_TOKENS, 0, 0},
    };
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        sp_kv_opts o;
        sp_kv_opts_defaults(&o);
        o.code_fallback = false;   /* these runs test the device codebook path */
        o.policy = runs[i].policy;
        o.target = runs[i].target;
        o.window = 4;
        o.ratio = runs[i].target == SP_TARGET_BYTES ? 0.4 : 0.5;
        if (runs[i].theta_k > 0) {
            o.theta_k = runs[i].theta_k;
            o.theta_v = runs[i].theta_v;
        }
        compare_policy(m, &o, runs[i].name);
    }
    spilled_equals_resident(m);
    refuse_decode_window(m);
    sp_model_free(m);
    printf("%s\n", synth_failures ? "FAILED" : "passed");
    return synth_failures ? 1 : 0;
}
