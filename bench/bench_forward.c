/* bench_forward.c - prefill and decode speed of the CPU forward pass, llama-bench style.
 *
 * For each depth d: pp512 = time to prefill 512 tokens after d tokens already in the cache; tg64 =
 * time to decode 64 tokens one by one after d tokens (the depth fill is not timed), as
 * `llama-bench -p 512 -n 64 -d d`. Plus fill = prefill of the whole n_ctx from empty. Tokens are
 * deterministic pseudo-random ids. Each figure: mean +- sd over the repeats. Peak RSS (ru_maxrss)
 * is reported at the end (the fill run touches the full context).
 *
 * usage: bench_forward [-m model] [-t threads] [-r repeats] [-c n_ctx] [-d d1,d2,...] [--kv f16|f32]
 *                      [--numerics ggml|exact] [--json out.json]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "model.h"
#include "sp_error.h"
#include "sp_time.h"

enum { MAX_DEPTHS = 8, MAX_REP = 32, PP = 512, TG = 64 };

int main(int argc, char **argv)
{
    const char *model = getenv("SPINDLE_MODEL"), *json = NULL;
    static char defmodel[512];
    if (!model) {
        snprintf(defmodel, sizeof(defmodel), "%s/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : "/root");
        model = defmodel;
    }
    int threads = 2, reps = 3, n_ctx = 8192, nd = 3;
    int depths[MAX_DEPTHS] = { 0, 2048, 8192 - PP - TG };
    sp_kv_type kvt = SP_KV_F16;
    sp_numerics num = SP_NUMERICS_GGML;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) { model = v; i++; }
        else if (!strcmp(a, "-t") && v) { threads = atoi(v); i++; }
        else if (!strcmp(a, "-r") && v) { reps = atoi(v); i++; }
        else if (!strcmp(a, "-c") && v) { n_ctx = atoi(v); i++; }
        else if (!strcmp(a, "--json") && v) { json = v; i++; }
        else if (!strcmp(a, "--numerics") && v && (!strcmp(v, "ggml") || !strcmp(v, "exact"))) {
            num = !strcmp(v, "exact") ? SP_NUMERICS_EXACT : SP_NUMERICS_GGML;
            i++;
        }
        else if (!strcmp(a, "--kv") && v) { kvt = !strcmp(v, "f32") ? SP_KV_F32 : SP_KV_F16; i++; }
        else if (!strcmp(a, "-d") && v) {
            nd = 0;
            for (char *s = (char *)v; *s && nd < MAX_DEPTHS;) {
                depths[nd++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
            }
            i++;
        } else {
            fprintf(stderr, "usage: %s [-m model] [-t threads] [-r repeats] [-c n_ctx] [-d d1,d2] [--kv f16|f32] "
                            "[--numerics ggml|exact] [--json out.json]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > MAX_REP) {
        fprintf(stderr, "repeats must be in [1, %d]\n", MAX_REP);
        return 2;
    }
    sp_model_t *m = sp_model_load(model);
    if (!m) {
        fprintf(stderr, "bench_forward: %s\n", sp_last_error());
        return 1;
    }
    const sp_hparams *hp = sp_model_hparams(m);
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = threads;
    p.kv_type = kvt;
    p.numerics = num;
    sp_ctx_t *c = sp_ctx_new(m, &p);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n_ctx);
    float *logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    if (!c || !tok || !logits) {
        fprintf(stderr, "bench_forward: %s\n", c ? "out of memory" : sp_last_error());
        return 1;
    }
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n_ctx; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        tok[i] = (int32_t)(s % (uint64_t)hp->n_vocab);
    }
    printf("model %s, %d threads, n_ctx %d, kv %s, numerics %s, %d repeats\n", model, threads, n_ctx,
           kvt == SP_KV_F16 ? "f16" : "f32", num == SP_NUMERICS_GGML ? "ggml" : "exact", reps);
    /* warm-up: page in the weights, let OpenBLAS set up its buffers */
    if (sp_ctx_prefill(c, tok, 64, logits, NULL) != 0) {
        fprintf(stderr, "bench_forward: %s\n", sp_last_error());
        return 1;
    }
    double pp[MAX_DEPTHS][MAX_REP], tg[MAX_DEPTHS][MAX_REP], fill[MAX_REP];
    for (int r = 0; r < reps; r++) {
        for (int di = 0; di < nd; di++) {
            int d = depths[di];
            if (d + PP > n_ctx || d + TG > n_ctx) {
                fprintf(stderr, "bench_forward: depth %d + %d does not fit n_ctx %d\n", d, PP, n_ctx);
                return 1;
            }
            sp_ctx_reset(c);
            if (d && sp_ctx_prefill(c, tok, d, NULL, NULL) != 0)
                goto fail;
            double t0 = sp_now_s();
            if (sp_ctx_prefill(c, tok + d, PP, logits, NULL) != 0)
                goto fail;
            pp[di][r] = PP / (sp_now_s() - t0);
            sp_ctx_reset(c);
            if (d && sp_ctx_prefill(c, tok, d, logits, NULL) != 0)
                goto fail;
            int32_t t = tok[d];
            t0 = sp_now_s();
            for (int i = 0; i < TG; i++)
                if (sp_ctx_decode(c, t, logits) != 0)
                    goto fail;
                else
                    t = tok[(d + i + 1) % n_ctx];
            tg[di][r] = TG / (sp_now_s() - t0);
        }
        sp_ctx_reset(c);
        double t0 = sp_now_s();
        if (sp_ctx_prefill(c, tok, n_ctx, logits, NULL) != 0)
            goto fail;
        fill[r] = n_ctx / (sp_now_s() - t0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    sp_ctx_stats st = sp_ctx_get_stats(c);
    printf("\n| test | depth | tokens/s (mean ± sd) |\n|---|---:|---:|\n");
    FILE *jf = json ? fopen(json, "w") : NULL;
    if (jf)
        fprintf(jf, "{\n  \"model\": \"%s\", \"threads\": %d, \"n_ctx\": %d, \"kv\": \"%s\", \"numerics\": \"%s\", "
                "\"repeats\": %d,\n  \"results\": [\n",
                model, threads, n_ctx, kvt == SP_KV_F16 ? "f16" : "f32", num == SP_NUMERICS_GGML ? "ggml" : "exact", reps);
    for (int di = 0; di < nd; di++) {
        double mu, sd;
        sp_mean_sd(pp[di], reps, &mu, &sd);
        printf("| pp%d | %d | %.1f ± %.1f |\n", PP, depths[di], mu, sd);
        if (jf)
            fprintf(jf, "    {\"test\": \"pp%d\", \"depth\": %d, \"mean\": %.2f, \"sd\": %.2f},\n", PP, depths[di], mu, sd);
        sp_mean_sd(tg[di], reps, &mu, &sd);
        printf("| tg%d | %d | %.1f ± %.1f |\n", TG, depths[di], mu, sd);
        if (jf)
            fprintf(jf, "    {\"test\": \"tg%d\", \"depth\": %d, \"mean\": %.2f, \"sd\": %.2f},\n", TG, depths[di], mu, sd);
    }
    double mu, sd;
    sp_mean_sd(fill, reps, &mu, &sd);
    printf("| fill%d | 0 | %.1f ± %.1f |\n", n_ctx, mu, sd);
    printf("\npeak RSS %.1f MiB (limit 1536 MiB); KV cache %.1f MiB; activations+scratch %.1f MiB\n",
           ru.ru_maxrss / 1024.0, st.kv_bytes / 1048576.0, st.buffer_bytes / 1048576.0);
    if (jf) {
        fprintf(jf, "    {\"test\": \"fill%d\", \"depth\": 0, \"mean\": %.2f, \"sd\": %.2f}\n  ],\n", n_ctx, mu, sd);
        fprintf(jf, "  \"peak_rss_mib\": %.1f, \"kv_mib\": %.1f\n}\n", ru.ru_maxrss / 1024.0, st.kv_bytes / 1048576.0);
        fclose(jf);
    }
    sp_ctx_free(c);
    sp_model_free(m);
    free(tok);
    free(logits);
    return 0;
fail:
    fprintf(stderr, "bench_forward: %s\n", sp_last_error());
    return 1;
}
