/* gpu_test_model.c - the whole forward pass on the CUDA backend against the CPU backend (exact
 * numerics), on synthetic models small enough for the CPU emulation of CUDA:
 * - two architectures: llama (adjacent-pair RoPE, no biases) and qwen2 (half-split RoPE, q/k/v
 *   biases), with every weight type the loader reads spread over their matrices;
 * - prefill logits of every row within a tolerance of the CPU's, and the same greedy tokens over
 *   a decode run (the sampled token is read back as one int32: sp_ctx_sample);
 * - no host synchronisation inside a decode step (sp_ctx_decode with logits left on the device),
 *   exactly one per sampled token.
 * Plain C (no Criterion, like the other GPU tests): exit 0 pass, 1 fail, 77 no CUDA device. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "fp16.h"
#include "gguf.h"
#include "model.h"
#include "sampler.h"
#include "sp_error.h"
#include "type_traits.h"

#include "support/synth_model.h"

enum { VOCAB = SYNTH_VOCAB, N_CTX = SYNTH_N_CTX };


/* ---- the comparison ---- */


static void compare_model(const char *path, const char *what)
{
    sp_model_t *m = sp_model_load(path);
    SYNTH_CHECK(m, "%s: load: %s", what, sp_last_error());
    if (!m)
        return;
    sp_ctx_t *cpu = synth_ctx_new(m, SP_BACKEND_CPU, NULL), *gpu = synth_ctx_new(m, SP_BACKEND_CUDA, NULL);
    float *lc = calloc((size_t)24 * VOCAB, sizeof(float)), *lg = calloc((size_t)24 * VOCAB, sizeof(float));
    sp_sampler_params sp = sp_sampler_default_params();
    sp.temperature = 0.0f;
    sp_sampler_t *smp = sp_sampler_new(VOCAB, &sp);
    SYNTH_CHECK(cpu && gpu && lc && lg && smp, "%s: set-up", what);
    if (!cpu || !gpu || !lc || !lg || !smp)
        goto out;
    SYNTH_CHECK(sp_ctx_device_resident(gpu) && !sp_ctx_device_resident(cpu), "%s: residency", what);
    /* a prompt longer than one chunk (16) and not a multiple of the GEMV block (8) */
    int32_t prompt[21];
    uint64_t s = 99;
    for (int i = 0; i < 21; i++)
        prompt[i] = (int32_t)(synth_next_u64(&s) % VOCAB);
    int rc1 = sp_ctx_prefill(cpu, prompt, 21, NULL, lc), rc2 = sp_ctx_prefill(gpu, prompt, 21, NULL, lg);
    SYNTH_CHECK(rc1 == 0 && rc2 == 0, "%s: prefill cpu %d, cuda %d: %s", what, rc1, rc2, sp_last_error());
    double max_d = 0, max_v = 0;
    for (size_t i = 0; i < (size_t)21 * VOCAB; i++) {
        max_d = fmax(max_d, fabs((double)lc[i] - lg[i]));
        max_v = fmax(max_v, fabs((double)lc[i]));
    }
    printf("%s: prefill logits of 21 rows: max |cpu - cuda| = %.3g (max |logit| %.3g)\n", what, max_d, max_v);
    SYNTH_CHECK(max_d <= 1e-3 * fmax(1.0, max_v), "%s: prefill logits differ by %g", what, max_d);
    /* greedy decode: tokens equal; no host sync in a decode step, one per sampled token */
    sp_backend_t *be = sp_ctx_backend(gpu);
    int32_t tc = sp_sampler_sample(smp, lc + (size_t)20 * VOCAB), tg = -1;
    SYNTH_CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0 && tg == tc, "%s: first token cpu %d, cuda %d", what, tc, tg);
    for (int step = 0; step < 10 && synth_failures == 0; step++) {
        uint64_t s0 = sp_backend_host_syncs(be);
        rc1 = sp_ctx_decode(cpu, tc, lc);
        rc2 = sp_ctx_decode(gpu, tg, NULL);
        uint64_t s1 = sp_backend_host_syncs(be);
        SYNTH_CHECK(rc1 == 0 && rc2 == 0, "%s: decode step %d: %s", what, step, sp_last_error());
        SYNTH_CHECK(s1 == s0, "%s: decode step %d made %llu host synchronisations (want 0)", what, step,
              (unsigned long long)(s1 - s0));
        tc = sp_sampler_sample(smp, lc);
        SYNTH_CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0, "%s: sample: %s", what, sp_last_error());
        SYNTH_CHECK(sp_backend_host_syncs(be) - s1 == 1, "%s: sampling made %llu host synchronisations (want 1)", what,
              (unsigned long long)(sp_backend_host_syncs(be) - s1));
        SYNTH_CHECK(tg == tc, "%s: decode step %d: cpu token %d, cuda token %d", what, step, tc, tg);
    }
    printf("%s: 10 greedy decode steps compared\n", what);
out:
    sp_sampler_free(smp);
    free(lc);
    free(lg);
    sp_ctx_free(cpu);
    sp_ctx_free(gpu);
    sp_model_free(m);
}

int main(void)
{
    if (!synth_cuda_available())
        return 77;
    char path[] = "/tmp/spindle-gpu-model-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    close(fd);
    for (int arch = 0; arch < 2; arch++) {
        int rc = synth_model_write(path, arch == 1, 1234 + (uint64_t)arch);
        SYNTH_CHECK(rc == 0, "write %s: %d", path, rc);
        if (rc == 0)
            compare_model(path, arch ? "qwen2 (Q4_K Q5_K Q6_K BF16 F32 Q8_0, biases)" : "llama (Q4_0 Q5_0 Q5_1 Q8_0 F16 Q4_1)");
    }
    unlink(path);
    printf("%s\n", synth_failures ? "FAILED" : "passed");
    return synth_failures ? 1 : 0;
}
