/* gpu_test_teacher_forced.c - the default model (SPINDLE_MODEL, SmolLM2-135M) on the CUDA backend
 * against the CPU backend over 2048 teacher-forced tokens of real text (haystack essays from
 * SPINDLE_SHARED), exact numerics on both: the top-1 next-token prediction at every position must
 * agree at >= 99 % of positions, and a disagreement must be a near-tie on the CPU (margin between
 * its top two logits below MAX_TIE_MARGIN); the largest such margin is printed. The prompt goes in
 * chunks of CHUNK tokens with every row's logits (prefill GEMM path, attention over the growing
 * cache), so both backends see the same tokens whatever either predicts.
 * SPINDLE_TF_TOKENS overrides the 2048 (scripts/gpu-check.sh runs the same binary on a device).
 * Plain C (CUDA contexts do not survive Criterion's fork): exit 0 pass, 1 fail, 77 no CUDA device. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "sp_error.h"
#include "sp_time.h"
#include "tokenizer.h"

#include "support/synth_model.h"

enum { DEFAULT_TOKENS = 2048, CHUNK = 256 };
static const double MIN_AGREEMENT = 0.99;
static const double MAX_TIE_MARGIN = 0.05;   /* logits; a flip beyond this is a bug, not rounding */

/* Essays concatenated until the text holds comfortably more than `need` tokens. */
static const char *ESSAYS[] = {"addiction", "apple", "submarine", "boss", "desres", "gap", "gh"};

static char *read_essays(const char *shared, size_t want_bytes, size_t *len)
{
    size_t cap = want_bytes + (1 << 16), n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    for (size_t e = 0; e < sizeof ESSAYS / sizeof *ESSAYS && n < want_bytes; e++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/data/haystack/pg_essays/%s.txt", shared, ESSAYS[e]);
        FILE *f = fopen(path, "rb");
        if (!f) {
            fprintf(stderr, "cannot read %s (SPINDLE_SHARED must name the shared folder beside the checkout)\n",
                    path);
            free(buf);
            return NULL;
        }
        size_t got;
        while (n + 1 < cap && (got = fread(buf + n, 1, cap - n - 1, f)) > 0)
            n += got;
        fclose(f);
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int argmax2(const float *x, int n, float *margin)
{
    int best = 0;
    float b1 = -INFINITY, b2 = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (x[i] > b1) {
            b2 = b1;
            b1 = x[i];
            best = i;
        } else if (x[i] > b2) {
            b2 = x[i];
        }
    }
    *margin = b1 - b2;
    return best;
}

static sp_ctx_t *ctx_on(const sp_model_t *m, sp_backend_kind kind, int n_ctx)
{
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    p.numerics = SP_NUMERICS_EXACT;
    p.backend = kind;
    sp_ctx_t *c = sp_ctx_new(m, &p);
    if (!c)
        fprintf(stderr, "context on %s: %s\n", kind == SP_BACKEND_CUDA ? "cuda" : "cpu", sp_last_error());
    return c;
}

int main(void)
{
    const char *path = getenv("SPINDLE_MODEL"), *shared = getenv("SPINDLE_SHARED"), *nt = getenv("SPINDLE_TF_TOKENS");
    int n_tok = nt ? atoi(nt) : DEFAULT_TOKENS;
    if (!path || !shared || n_tok < 2) {
        fprintf(stderr, "SPINDLE_MODEL and SPINDLE_SHARED must be set (ctest sets them); SPINDLE_TF_TOKENS >= 2\n");
        return 1;
    }
    if (!synth_cuda_available())
        return 77;
    int rc = 1;
    sp_tokenizer_t *tok = NULL;
    sp_ctx_t *cpu = NULL, *gpu = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    float *lc = NULL, *lg = NULL;
    sp_model_t *m = sp_model_load(path);
    if (!m) {
        fprintf(stderr, "load %s: %s\n", path, sp_last_error());
        return 1;
    }
    int V = sp_model_hparams(m)->n_vocab;
    size_t len = 0, n_ids = 0;
    /* ~4 bytes a token in English prose; read twice that. */
    if (!(tok = sp_tokenizer_from_gguf(sp_model_gguf(m))) || !(text = read_essays(shared, (size_t)n_tok * 8, &len)))
        goto out;
    if (!(ids = malloc(sizeof *ids * (len + 16))) ||
        sp_tokenizer_encode(tok, text, len, true, false, ids, len + 16, &n_ids) < 0) {
        fprintf(stderr, "tokenize: %s\n", sp_last_error());
        goto out;
    }
    if ((int64_t)n_ids < n_tok + 1) {
        fprintf(stderr, "the essays give %zu tokens, fewer than %d\n", n_ids, n_tok + 1);
        goto out;
    }
    cpu = ctx_on(m, SP_BACKEND_CPU, n_tok);
    gpu = ctx_on(m, SP_BACKEND_CUDA, n_tok);
    lc = malloc(sizeof *lc * (size_t)CHUNK * V);
    lg = malloc(sizeof *lg * (size_t)CHUNK * V);
    if (!cpu || !gpu || !lc || !lg)
        goto out;
    int agree = 0, ties = 0, truth_cpu = 0, truth_gpu = 0;
    float worst_tie = 0, worst_flip = 0;
    double t0 = sp_now_s(), t_cpu = 0, t_gpu = 0;
    for (int p0 = 0; p0 < n_tok; p0 += CHUNK) {
        int n = n_tok - p0 < CHUNK ? n_tok - p0 : CHUNK;
        double a = sp_now_s();
        int r1 = sp_ctx_prefill(cpu, ids + p0, n, NULL, lc);
        double b = sp_now_s();
        int r2 = sp_ctx_prefill(gpu, ids + p0, n, NULL, lg);
        t_cpu += b - a;
        t_gpu += sp_now_s() - b;
        if (r1 < 0 || r2 < 0) {
            fprintf(stderr, "prefill at %d: cpu %d, cuda %d: %s\n", p0, r1, r2, sp_last_error());
            goto out;
        }
        for (int i = 0; i < n; i++) {
            float mc, mg;
            int tc = argmax2(lc + (size_t)i * V, V, &mc), tg = argmax2(lg + (size_t)i * V, V, &mg);
            truth_cpu += tc == ids[p0 + i + 1];
            truth_gpu += tg == ids[p0 + i + 1];
            if (tc == tg) {
                agree++;
                continue;
            }
            ties++;
            /* the CPU's margin between its own top-1 and the token the device chose */
            float gap = lc[(size_t)i * V + tc] - lc[(size_t)i * V + tg];
            fprintf(stderr, "position %d: cpu %d, cuda %d (cpu margin %.4g, cpu logits gap %.4g)\n", p0 + i, tc, tg,
                    mc, gap);
            worst_tie = gap > worst_tie ? gap : worst_tie;
            if (gap > MAX_TIE_MARGIN)
                worst_flip = gap > worst_flip ? gap : worst_flip;
        }
        fprintf(stderr, "\r%d/%d tokens, %.0f s   ", p0 + n, n_tok, sp_now_s() - t0);
    }
    fputc('\n', stderr);
    double share = (double)agree / n_tok;
    printf("teacher-forced top-1 over %d tokens: cpu and cuda agree at %d (%.2f %%), %d disagreements, largest cpu "
           "logit gap at one %.4g; top-1 = next text token: cpu %.2f %%, cuda %.2f %%; prefill cpu %.1f s, cuda %.1f s\n",
           n_tok, agree, 100 * share, ties, worst_tie, 100.0 * truth_cpu / n_tok, 100.0 * truth_gpu / n_tok, t_cpu, t_gpu);
    SYNTH_CHECK(share >= MIN_AGREEMENT, "agreement %.4f below %.2f", share, MIN_AGREEMENT);
    SYNTH_CHECK(worst_flip == 0, "a disagreement with a cpu logit gap of %.4g (> %.2g): not a near-tie", worst_flip,
                MAX_TIE_MARGIN);
    rc = synth_failures ? 1 : 0;
    printf("%s\n", rc ? "FAILED" : "passed");
out:
    free(lc);
    free(lg);
    sp_ctx_free(cpu);
    sp_ctx_free(gpu);
    free(ids);
    free(text);
    sp_tokenizer_free(tok);
    sp_model_free(m);
    return rc;
}
