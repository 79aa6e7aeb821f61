/* bench_kv_decode.c - the real model's decode with a SpindleKV-compressed cache vs the full fp16
 * cache at long context, and the compression overhead at prefill (issue 3, item 8).
 *
 * Usage: bench_kv_decode MODEL HAYSTACK_DIR [tokens=8064] [threads=2] [steps=32] [repeats=5]
 *                        [target_true_ratio=0.20] [json_out] [commit]
 *
 * 1. Tokenize the haystack texts (files of HAYSTACK_DIR in name order, concatenated) and take the
 *    first `tokens` tokens as the prompt (n_ctx = tokens + steps).
 * 2. Overhead: a plain context and a spindle context (default options, keep_prefill_state off)
 *    prefill the same prompt, side by side; report the spindle context's compression time (scores
 *    prepare + top-k + codebook + segment build, all layers) as % of its prefill, and the prefill
 *    time difference.
 * 3. Decode: one context with keep_prefill_state prefills once; sp_ctx_recompress picks the spindle
 *    ratio whose true byte ratio is nearest the target; then for each repeat: recompress to full,
 *    `steps` teacher-forced decode steps, recompress to spindle, `steps` decode steps (so both
 *    caches are measured alternately under the same load). Per-token decode attention time (the
 *    attention part of each step, sp_ctx_stats.decode_attn_s) and whole decode step time, mean ± sd
 *    over the repeats.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "sp_error.h"
#include "tokenizer.h"
#include "sp_time.h"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Concatenate the files of dir (sorted) until at least `want` bytes. */
static char *read_haystack(const char *dir, size_t want, size_t *len)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096)
        if (e->d_name[0] != '.')
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    size_t cap = want + (1 << 20), off = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < n && off < want; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        size_t r;
        while (off < cap - 1 && (r = fread(buf + off, 1, cap - 1 - off, f)) > 0)
            off += r;
        fclose(f);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    buf[off] = 0;
    *len = off;
    return buf;
}

static void cpu_model(char *buf, size_t n)
{
    snprintf(buf, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p += 2;
                p[strcspn(p, "\n")] = 0;
                snprintf(buf, n, "%s", p);
            }
            break;
        }
    fclose(f);
}

static sp_ctx_t *new_ctx(const sp_model_t *m, int n_ctx, int threads, const sp_kv_opts *o, bool keep)
{
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = threads;
    p.kv_opts = o;
    p.keep_prefill_state = keep;
    sp_ctx_t *c = sp_ctx_new(m, &p);
    if (!c)
        fprintf(stderr, "bench_kv_decode: %s\n", sp_last_error());
    return c;
}

/* `steps` teacher-forced decode steps; per-token whole-step and attention seconds. */
static int decode_steps(sp_ctx_t *c, const int32_t *ids, int steps, float *logits, double *step_s, double *attn_s)
{
    sp_ctx_stats a = sp_ctx_get_stats(c);
    for (int s = 0; s < steps; s++)
        if (sp_ctx_decode(c, ids[s], logits) < 0) {
            fprintf(stderr, "bench_kv_decode: decode: %s\n", sp_last_error());
            return -1;
        }
    sp_ctx_stats b = sp_ctx_get_stats(c);
    *step_s = (b.decode_s - a.decode_s) / steps;
    *attn_s = (b.decode_attn_s - a.decode_attn_s) / steps;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_kv_decode MODEL HAYSTACK_DIR [tokens=8064] [threads=2] [steps=32] "
                        "[repeats=5] [target_true_ratio=0.20] [json_out] [commit]\n");
        return 2;
    }
    int tokens = argc > 3 ? atoi(argv[3]) : 8064, threads = argc > 4 ? atoi(argv[4]) : 2;
    int steps = argc > 5 ? atoi(argv[5]) : 32, reps = argc > 6 ? atoi(argv[6]) : 5;
    double target = argc > 7 ? atof(argv[7]) : 0.20;
    const char *json = argc > 8 ? argv[8] : NULL, *commit = argc > 9 ? argv[9] : "unknown";
    if (tokens < 64 || threads < 1 || steps < 1 || reps < 1 || reps > 64)
        return 2;
    sp_model_t *m = sp_model_load(argv[1]);
    if (!m) {
        fprintf(stderr, "bench_kv_decode: %s\n", sp_last_error());
        return 1;
    }
    sp_tokenizer_t *tok = sp_tokenizer_from_gguf(sp_model_gguf(m));
    size_t len = 0;
    char *text = read_haystack(argv[2], (size_t)tokens * 8, &len);
    if (!tok || !text) {
        fprintf(stderr, "bench_kv_decode: cannot read the tokenizer or %s\n", argv[2]);
        return 1;
    }
    size_t cap = len + 16, n_ids = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (sp_tokenizer_encode(tok, text, len, true, false, ids, cap, &n_ids) < 0 ||
        n_ids < (size_t)tokens + (size_t)steps) {
        fprintf(stderr, "bench_kv_decode: the haystack has %zu tokens, need %d\n", n_ids, tokens + steps);
        return 1;
    }
    int V = sp_model_hparams(m)->n_vocab, n_ctx = tokens + steps;
    float *logits = malloc(sizeof(float) * (size_t)V);
    double load[3] = { 0 };
    if (getloadavg(load, 3) < 0)
        load[0] = -1;
    printf("bench_kv_decode: %d prompt tokens, %d threads, %d steps x %d repeats, load %.2f\n", tokens, threads,
           steps, reps, load[0]);

    /* 2. prefill overhead, plain and spindle side by side */
    sp_kv_opts sp;
    sp_kv_opts_defaults(&sp);
    sp_ctx_t *plain = new_ctx(m, n_ctx, threads, NULL, false), *comp = new_ctx(m, n_ctx, threads, &sp, false);
    if (!plain || !comp)
        return 1;
    if (sp_ctx_prefill(plain, ids, tokens, logits, NULL) < 0 || sp_ctx_prefill(comp, ids, tokens, logits, NULL) < 0) {
        fprintf(stderr, "bench_kv_decode: prefill: %s\n", sp_last_error());
        return 1;
    }
    sp_ctx_stats sp_plain = sp_ctx_get_stats(plain), sp_comp = sp_ctx_get_stats(comp);
    sp_kv_stats ks;
    sp_ctx_kv_stats(comp, &ks);
    double comp_s = ks.compress_s + ks.scores_s;
    printf("prefill: plain %.2f s, spindle (ratio %.2f) %.2f s; compression %.3f s = %.1f%% of the spindle "
           "prefill (target <= 15%%); true ratio %.3f\n",
           sp_plain.prefill_s, sp.ratio, sp_comp.prefill_s, comp_s, 100.0 * comp_s / sp_comp.prefill_s,
           ks.true_ratio);
    double default_true = ks.true_ratio;
    sp_ctx_free(plain);
    sp_ctx_free(comp);

    /* 3. decode, full vs spindle at ~target true bytes */
    sp_ctx_t *c = new_ctx(m, n_ctx, threads, &sp, true);
    if (!c || sp_ctx_prefill(c, ids, tokens, logits, NULL) < 0) {
        fprintf(stderr, "bench_kv_decode: %s\n", sp_last_error());
        return 1;
    }
    double best_r = sp.ratio, best_t = 0, best_d = 1e9;
    for (double r = 0.10; r <= 0.60 + 1e-9; r += 0.02) {
        sp_kv_opts o = sp;
        o.ratio = r;
        if (sp_ctx_recompress(c, &o) < 0 || sp_ctx_kv_stats(c, &ks) < 0) {
            fprintf(stderr, "bench_kv_decode: recompress: %s\n", sp_last_error());
            return 1;
        }
        if (fabs(ks.true_ratio - target) < best_d) {
            best_d = fabs(ks.true_ratio - target);
            best_r = r;
            best_t = ks.true_ratio;
        }
    }
    sp_kv_opts spin = sp, full;
    spin.ratio = best_r;
    sp_kv_opts_defaults(&full);
    full.policy = SP_POLICY_FULL;
    printf("spindle ratio %.2f gives true byte ratio %.3f (target %.2f)\n", best_r, best_t, target);
    double fs[64], fa[64], ss[64], sa[64];
    for (int r = 0; r < reps; r++) {
        if (sp_ctx_recompress(c, &full) < 0 || decode_steps(c, ids + tokens, steps, logits, &fs[r], &fa[r]) < 0 ||
            sp_ctx_recompress(c, &spin) < 0 || decode_steps(c, ids + tokens, steps, logits, &ss[r], &sa[r]) < 0) {
            fprintf(stderr, "bench_kv_decode: %s\n", sp_last_error());
            return 1;
        }
    }
    double mfs, sfs, mfa, sfa, mss, sss, msa, ssa;
    sp_mean_sd(fs, reps, &mfs, &sfs);
    sp_mean_sd(fa, reps, &mfa, &sfa);
    sp_mean_sd(ss, reps, &mss, &sss);
    sp_mean_sd(sa, reps, &msa, &ssa);
    sp_ctx_kv_stats(c, &ks);
    double load2[3] = { 0 };
    if (getloadavg(load2, 3) < 0)
        load2[0] = -1;
    printf("decode attention per token (30 layers): full fp16 %.3f ± %.3f ms, spindle %.3f ± %.3f ms "
           "(spindle/full %.2f)\n", 1e3 * mfa, 1e3 * sfa, 1e3 * msa, 1e3 * ssa, msa / mfa);
    printf("decode step per token:                  full fp16 %.3f ± %.3f ms, spindle %.3f ± %.3f ms "
           "(spindle/full %.2f)\n", 1e3 * mfs, 1e3 * sfs, 1e3 * mss, 1e3 * sss, mss / mfs);
    printf("KV bytes at the end: spindle %.2f MiB true (%.3f of fp16 %.2f MiB); load after %.2f\n",
           ks.bytes / 1048576.0, ks.true_ratio, ks.fp16_bytes / 1048576.0, load2[0]);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_kv_decode: cannot write %s\n", json);
            return 1;
        }
        char cpu[256];
        cpu_model(cpu, sizeof cpu);
        fprintf(f,
                "{\"bench\":\"kv_decode\",\"machine\":\"%s\",\"commit\":\"%s\",\"model\":\"%s\",\"prompt_tokens\":%d,"
                "\"threads\":%d,\"steps\":%d,\"repeats\":%d,\"load_before\":%.2f,\"load_after\":%.2f,\n"
                " \"prefill\":{\"plain_s\":%.4f,\"spindle_s\":%.4f,\"spindle_ratio\":%.3f,\"spindle_true_ratio\":%.4f,"
                "\"compression_s\":%.4f,\"compression_pct_of_prefill\":%.2f,\"target_pct\":15},\n"
                " \"decode\":{\"spindle_ratio\":%.3f,\"spindle_true_ratio\":%.4f,"
                "\"attn_ms_full\":[%.4f,%.4f],\"attn_ms_spindle\":[%.4f,%.4f],"
                "\"step_ms_full\":[%.4f,%.4f],\"step_ms_spindle\":[%.4f,%.4f],\"note\":\"[mean, sd] per token over "
                "repeats; attention = all 30 layers' attention inside the decode step\"}}\n",
                cpu, commit, argv[1], tokens, threads, steps, reps, load[0], load2[0], sp_plain.prefill_s,
                sp_comp.prefill_s, sp.ratio, default_true, comp_s, 100.0 * comp_s / sp_comp.prefill_s, best_r,
                best_t, 1e3 * mfa, 1e3 * sfa, 1e3 * msa, 1e3 * ssa, 1e3 * mfs, 1e3 * sfs, 1e3 * mss, 1e3 * sss);
        fclose(f);
    }
    sp_ctx_free(c);
    free(logits);
    free(ids);
    free(text);
    sp_tokenizer_free(tok);
    sp_model_free(m);
    return 0;
}
