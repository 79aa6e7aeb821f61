/* bench_segment_attn.c - decode attention over a compressed layer segment vs a full fp16 cache,
 * and codebook build time per layer, at 8k tokens (SmolLM2-135M shapes: 9 query / 3 KV heads,
 * head_dim 64). SYNTHETIC data: clustered K/V directions and heavy-tailed window scores from a
 * seed; real-model numbers come from `spindle bench`.
 *
 * Usage: bench_segment_attn [tokens=8192] [target_true_ratio=0.20] [repeats=7] [seed=1]
 *                           [json_out] [commit]
 * Single thread (OpenBLAS pinned to 1 thread for the codebook). Each figure is mean ± sd over the
 * repeats, printed next to its memory-bandwidth ceiling (bytes read / measured read bandwidth).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fp16.h"
#include "kv_budget.h"
#include "ops.h"
#include "segment_attn.h"
#include "sp_error.h"
#include "sp_time.h"

enum { HQ = 9, HK = 3, G = 3, D = 64, W = 32 };

static uint64_t rng;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * (1.0 / 9007199254740992.0);
}
static double gauss(void)
{
    double u = urand() + 1e-300, v = urand();
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

/* The CPU model, for the results file. */
static void cpu_model(char *buf, size_t n)
{
    snprintf(buf, n, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(buf, n, "%s", strchr(line, ':') + 2);
            buf[strcspn(buf, "\n\"")] = '\0';
            break;
        }
    fclose(f);
}

/* Clustered vectors: n_c centres; each token = magnitude · (centre + noise), the noise level of
 * each token drawn from [noise/4, noise) so that some tokens merge under θ and others do not. */
static void clustered(float *x, int64_t l, int n_c, double noise, double mag_lo, double mag_hi)
{
    float *c = malloc(sizeof(float) * n_c * D);
    for (int i = 0; i < n_c * D; i++)
        c[i] = (float)gauss();
    for (int64_t t = 0; t < l; t++) {
        int a = (int)(urand() * n_c);
        double m = mag_lo + (mag_hi - mag_lo) * urand(), sg = noise * (0.25 + 0.75 * urand());
        for (int j = 0; j < D; j++)
            x[t * D + j] = (float)(m * (c[a * D + j] + sg * gauss()) / sqrt((double)D));
    }
    free(c);
}

/* Read bandwidth of this machine (sum over a 256 MiB buffer, best of 3), bytes/s. */
static double read_bandwidth(void)
{
    size_t n = (size_t)256 << 20 >> 3;
    uint64_t *b = malloc(n * 8);
    for (size_t i = 0; i < n; i++)
        b[i] = i;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = sp_now_s();
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i < n; i += 4) {
            s0 += b[i];
            s1 += b[i + 1];
            s2 += b[i + 2];
            s3 += b[i + 3];
        }
        sink += s0 + s1 + s2 + s3;
        double bw = (double)n * 8 / (sp_now_s() - t0);
        best = bw > best ? bw : best;
    }
    (void)sink;
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    int64_t L = argc > 1 ? atoll(argv[1]) : 8192;
    double target = argc > 2 ? atof(argv[2]) : 0.20;
    int reps = argc > 3 ? atoi(argv[3]) : 7;
    uint64_t seed = argc > 4 ? strtoull(argv[4], NULL, 10) : 1;
    const char *json = argc > 5 ? argv[5] : NULL;
    const char *commit = argc > 6 ? argv[6] : "unknown";
    rng = 0x9e3779b97f4a7c15ull ^ (seed * 0xbf58476d1ce4e5b9ull);
    if (L < 2 * W || reps < 2) {
        fprintf(stderr, "bench_segment_attn: need tokens >= %d and repeats >= 2\n", 2 * W);
        return 2;
    }
    openblas_set_num_threads(1);

    float *k = malloc(sizeof(float) * HK * L * D), *v = malloc(sizeof(float) * HK * L * D);
    float *ws = malloc(sizeof(float) * HQ * L);
    for (int h = 0; h < HK; h++) {
        clustered(k + (size_t)h * L * D, L, 256, 0.30, 4.0, 12.0);
        clustered(v + (size_t)h * L * D, L, 256, 0.45, 0.5, 2.0);
    }
    /* Heavy-tailed window scores with local correlation (what pooling expects); each query head
     * has its own preferences, shared in part within the group. */
    for (int h = 0; h < HQ; h++)
        for (int64_t t = 0; t < L; t++)
            ws[h * L + t] = (float)exp(2.0 * gauss() + ((t * 7 + h / G * 13) % 97 < 9 ? 3.0 : 0));

    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    sp_kv_layer_scores in = {.window_scores = ws};
    sp_kv_selection sel;
    sp_kv_segment seg = {0};
    sp_kv_build_info info;
    sp_kv_seg_stats st;
    if (sp_kv_selection_init(&sel, HQ, HK, L, W) < 0)
        goto fail;
    /* Find the per-query-head keep count whose true byte ratio is closest to the target
     * (bisection over keep; the ratio grows with keep). */
    int64_t lo = 1, hi = L - W, keep = hi;
    for (int it = 0; it < 14 && lo <= hi; it++) {
        int64_t mid = (lo + hi) / 2;
        sp_kv_segment_free(&seg);
        if (sp_kv_select_layer(&o, true, mid, &in, &sel) < 0 ||
            sp_kv_segment_build(&seg, 0, k, v, D, &sel, true, 0.98f, 0.95f, &info) < 0)
            goto fail;
        sp_kv_segment_stats(&seg, NULL, &st);
        keep = mid;
        if (st.true_ratio < target)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    sp_kv_segment_stats(&seg, NULL, &st);

    /* Codebook build time for this layer (the whole segment build, codebooks dominate). */
    double tb[16], tcb[16];
    int nb = reps < 16 ? reps : 16;
    sp_kv_segment tmp;
    for (int r = 0; r < nb; r++) {
        double t0 = sp_now_s();
        if (sp_kv_segment_build(&tmp, 0, k, v, D, &sel, true, 0.98f, 0.95f, &info) < 0)
            goto fail;
        tb[r] = sp_now_s() - t0;
        tcb[r] = info.seconds_codebook;
        sp_kv_segment_free(&tmp);
    }
    /* The same at layer 0 of a spindle-linear r = 0.2 schedule over 30 layers (the largest
     * codebooks of a model: r_c(0) = 2 r_c - beta). */
    int64_t sched[30];
    if (sp_kv_budget_spindle_linear(L, W, 0.2, 0.05, 30, sched, NULL) < 0)
        goto fail;
    sp_kv_selection sel0;
    if (sp_kv_selection_init(&sel0, HQ, HK, L, W) < 0 ||
        sp_kv_select_layer(&o, true, sched[0], &in, &sel0) < 0)
        goto fail;
    double t0s[16];
    int64_t n0 = 0, e0 = 0;
    for (int r = 0; r < nb; r++) {
        double t0 = sp_now_s();
        if (sp_kv_segment_build(&tmp, 0, k, v, D, &sel0, true, 0.98f, 0.95f, &info) < 0)
            goto fail;
        t0s[r] = sp_now_s() - t0;
        n0 = info.coded_vectors;
        e0 = info.entries_k + info.entries_v;
        sp_kv_segment_free(&tmp);
    }
    sp_kv_selection_free(&sel0);

    /* Decode attention: full fp16 cache (post-RoPE K) vs the segment, all 3 KV heads per token. */
    float *table = malloc(sizeof(float) * (L + 1) * D);
    sp_rope_table_fill(table, (int)L + 1, D, 1e5);
    uint16_t *k16 = malloc(2 * HK * L * D), *v16 = malloc(2 * HK * L * D);
    float *kr = malloc(sizeof(float) * L * D);
    int32_t *pos = malloc(sizeof(int32_t) * L);
    for (int64_t t = 0; t < L; t++)
        pos[t] = (int32_t)t;
    for (int h = 0; h < HK; h++) {
        memcpy(kr, k + (size_t)h * L * D, sizeof(float) * L * D);
        sp_op_rope(kr, (int)L, 1, D, D, pos, table, SP_ROPE_NORM);
        for (int64_t i = 0; i < L * D; i++) {
            k16[(size_t)h * L * D + i] = sp_f32_to_fp16(kr[i]);
            v16[(size_t)h * L * D + i] = sp_f32_to_fp16(v[(size_t)h * L * D + i]);
        }
    }
    size_t wf = 0;
    for (int h = 0; h < HK; h++) {
        size_t f = sp_segattn_work_floats(&seg, NULL, h);
        wf = f > wf ? f : wf;
    }
    wf = wf > (size_t)G * L ? wf : (size_t)G * L;
    float *work = malloc(sizeof(float) * wf), q[HQ * D], out[HQ * D];
    for (int i = 0; i < HQ * D; i++)
        q[i] = (float)gauss() * 0.3f;
    int iters = (int)(2e8 / (double)(L * HK * D * 4)) + 5; /* ~0.2 s per repeat at 8k */
    double tf[64], ts[64];
    reps = reps < 64 ? reps : 64;
    for (int r = 0; r < reps; r++) { /* interleaved so drift hits both equally */
        double t0 = sp_now_s();
        for (int it = 0; it < iters; it++)
            for (int h = 0; h < HK; h++)
                sp_segattn_full_fp16(k16 + (size_t)h * L * D, v16 + (size_t)h * L * D, L, D,
                                     q + h * G * D, G, 0.125f, out + h * G * D, work);
        tf[r] = (sp_now_s() - t0) / iters;
        t0 = sp_now_s();
        for (int it = 0; it < iters; it++)
            for (int h = 0; h < HK; h++)
                if (sp_segattn_decode(&seg, NULL, h, q + h * G * D, table, L + 1, SP_ROPE_NORM,
                                      0.125f, out + h * G * D, work) < 0)
                    goto fail;
        ts[r] = (sp_now_s() - t0) / iters;
    }
    /* Decode append: code one new token (3 KV heads, K and V) against this segment's codebooks. */
    sp_kv_tail tail;
    if (sp_kv_tail_init(&tail, &seg, 256, 0.98f, 0.95f) < 0)
        goto fail;
    double ta[64];
    for (int r = 0; r < reps; r++) {
        sp_kv_tail_reset(&tail);
        double t0 = sp_now_s();
        for (int j = 0; j < 256; j++) {
            int64_t src = (int64_t)(urand() * (double)L);
            float nk[HK * D], nv[HK * D];
            for (int h = 0; h < HK; h++) {
                memcpy(nk + h * D, k + ((size_t)h * L + src) * D, sizeof(float) * D);
                memcpy(nv + h * D, v + ((size_t)h * L + src) * D, sizeof(float) * D);
            }
            if (sp_kv_tail_append(&tail, &seg, nk, nv, (int32_t)(L + j)) < 0)
                goto fail;
        }
        ta[r] = (sp_now_s() - t0) / 256;
    }
    sp_kv_tail_free(&tail);
    double bw = read_bandwidth();
    double mf, sf, ms, ss, mb, sb, mc, sc, m0, s0, ma, sa;
    sp_mean_sd(ta, reps, &ma, &sa);
    sp_mean_sd(tf, reps, &mf, &sf);
    sp_mean_sd(ts, reps, &ms, &ss);
    sp_mean_sd(tb, nb, &mb, &sb);
    sp_mean_sd(tcb, nb, &mc, &sc);
    sp_mean_sd(t0s, nb, &m0, &s0);
    int64_t kept = 0, ek = 0, ev = 0;
    for (int h = 0; h < HK; h++) {
        kept += seg.head[h].n_kept;
        ek += seg.head[h].n_ent_k;
        ev += seg.head[h].n_ent_v;
    }
    printf("bench_segment_attn: SYNTHETIC clustered data (seed %llu), %lld tokens, %d q / %d KV "
           "heads, head_dim %d, window %d, 1 thread, %d repeats (mean ± sd)\n",
           (unsigned long long)seed, (long long)L, HQ, HK, D, W, reps);
    printf("segment: keep %lld per q head, union %lld tokens over %d KV heads, entries K %lld V "
           "%lld, true byte ratio %.4f (content %llu B vs fp16 %llu B), alloc ratio %.4f, paper r "
           "%.4f (r1 %.3f r2 %.3f r3 %.1f)\n", (long long)keep, (long long)kept, HK,
           (long long)ek, (long long)ev, st.true_ratio, (unsigned long long)st.bytes_content,
           (unsigned long long)st.bytes_fp16, st.alloc_ratio, st.paper_r, st.paper_r1,
           st.paper_r2, st.paper_r3);
    printf("read bandwidth (1 thread, best of 3): %.2f GB/s\n\n", bw / 1e9);
    printf("| measurement | mean | sd | ceiling (bytes / bandwidth) |\n|---|---|---|---|\n");
    printf("| decode attention, full fp16 cache, per token (3 KV heads) | %.1f us | %.1f us | %.1f us |\n",
           mf * 1e6, sf * 1e6, (double)st.bytes_fp16 / bw * 1e6);
    printf("| decode attention, segment, per token (3 KV heads) | %.1f us | %.1f us | %.1f us |\n",
           ms * 1e6, ss * 1e6, (double)st.bytes_content / bw * 1e6);
    printf("| speed-up segment vs full | %.2fx | | %.2fx |\n", mf / ms,
           (double)st.bytes_fp16 / (double)st.bytes_content);
    printf("| decode append (codebook match, 3 KV heads, K+V), per token | %.1f us | %.1f us | "
           "%.1f us |\n", ma * 1e6, sa * 1e6,
           (double)(ek + ev) * D * 2 / bw * 1e6);
    printf("| segment build, this layer (%lld coded vectors) | %.1f ms | %.1f ms | |\n",
           (long long)kept, mb * 1e3, sb * 1e3);
    printf("|   of which codebooks | %.1f ms | %.1f ms | |\n", mc * 1e3, sc * 1e3);
    printf("| segment build, spindle-linear r=0.2 layer 0 (%lld coded vectors, %lld entries) | "
           "%.1f ms | %.1f ms | |\n", (long long)n0, (long long)e0, m0 * 1e3, s0 * 1e3);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_segment_attn: cannot write %s\n", json);
            return 1;
        }
        char cpu[256];
        cpu_model(cpu, sizeof cpu);
        fprintf(f, "{\"bench\":\"segment_attn\",\"machine\":\"%s\",\"commit\":\"%s\","
                   "\"data\":\"synthetic clustered\",\"seed\":%llu,"
                   "\"tokens\":%lld,\"n_q_heads\":%d,\"n_kv_heads\":%d,\"head_dim\":%d,"
                   "\"window\":%d,\"threads\":1,\"repeats\":%d,\"keep_per_q_head\":%lld,"
                   "\"true_ratio\":%.5f,\"paper_r\":%.5f,\"read_bw_gbs\":%.3f,"
                   "\"full_us\":[%.2f,%.2f],\"segment_us\":[%.2f,%.2f],"
                   "\"build_ms\":[%.2f,%.2f],\"codebook_ms\":[%.2f,%.2f],"
                   "\"build_layer0_ms\":[%.2f,%.2f],\"layer0_coded_vectors\":%lld,"
                   "\"append_us\":[%.2f,%.2f]}\n",
                cpu, commit, (unsigned long long)seed, (long long)L, HQ, HK, D, W, reps,
                (long long)keep,
                st.true_ratio, st.paper_r, bw / 1e9, mf * 1e6, sf * 1e6, ms * 1e6, ss * 1e6,
                mb * 1e3, sb * 1e3, mc * 1e3, sc * 1e3, m0 * 1e3, s0 * 1e3, (long long)n0,
                ma * 1e6, sa * 1e6);
        fclose(f);
    }
    free(k); free(v); free(ws); free(table); free(k16); free(v16); free(kr); free(pos); free(work);
    sp_kv_segment_free(&seg);
    sp_kv_selection_free(&sel);
    return 0;
fail:
    fprintf(stderr, "bench_segment_attn: %s\n", sp_last_error());
    return 1;
}
