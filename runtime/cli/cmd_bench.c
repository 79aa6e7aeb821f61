/* cmd_bench.c - `spindle bench`: llama-bench-style prefill and decode speed at several context
 * depths, side by side with llama.cpp's llama-bench on the same GGUF and thread count.
 *
 * Definitions (the same as `llama-bench -p PP -n TG -d D`): ppPP@D = tokens/s of prefilling PP
 * tokens after D tokens are already in the cache; tgTG@D = tokens/s of decoding TG tokens one at a
 * time after D tokens. The depth fill itself is not timed. Prompt tokens are deterministic
 * pseudo-random ids. Each figure is mean +- sd over the repeats.
 *
 * --kv-ratio R adds the compressed decode step: tgTG@D with the cache compressed by the
 * [compression] policy (default spindle) to R true bytes at the end of the depth fill. The depth is
 * prefilled once per depth (keep_prefill_state), then each repeat rebuilds the compressed cache from
 * the retained prefill state (sp_ctx_recompress) and times TG steps, and times TG steps on the full
 * fp16 cache of the same prefill (recompress with policy full: the plain decode path), alternating
 * so the machine's drift hits both. At depth 32k a second prefill per figure would cost minutes. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "model.h"
#include "sp_error.h"
#include "sp_time.h"

enum { MAX_DEPTHS = 16, MAX_REPEATS = 64 };

typedef struct bench_row {
    int depth;
    double pp_mean, pp_sd, tg_mean, tg_sd;           /* ours, tokens/s */
    double lpp_mean, lpp_sd, ltg_mean, ltg_sd;       /* llama-bench, tokens/s; < 0 = not run */
    double ctg_mean, ctg_sd;                         /* compressed decode, tokens/s; < 0 = not run */
    double kv_true_ratio, kv_mib, kv_full_mib;       /* compressed cache: achieved bytes / fp16, MiB */
    double compress_s;                               /* one compression of the depth */
} bench_row;

static void usage(FILE *out)
{
    fputs("usage: spindle bench [options]\n"
          "  -m, --model FILE|NAME GGUF model or a short name: smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b\n"
          "  --depths LIST         context depths, comma-separated (default 512,2048,8192)\n"
          "  --pp N                prompt tokens timed per prefill (default 512; 0 = no prefill figure)\n"
          "  --tg N                tokens timed per decode run (default 64)\n"
          "  -r, --repeats N       repeats per figure (default 3)\n"
          "  -t, --threads N       threads (default 2)\n"
          "  --kv-ratio R          also time decode with the cache compressed to R true bytes by the\n"
          "                        [compression] policy (default spindle), beside the full cache of the\n"
          "                        same depth fill (see the header of runtime/cli/cmd_bench.c)\n"
          "  --llama-repeats N     llama-bench's repeats (default: -r; each of its repeats refills the depth)\n"
          "  --llama-bench PATH    llama.cpp's llama-bench for the side-by-side figures\n"
          "                        (default $SPINDLE_LLAMA_BENCH, then ~/.cache/spindle/llama.cpp-build/bin/llama-bench;\n"
          "                        'none' to skip)\n"
          "  --json FILE           write the results as JSON\n",
          out);
}

static int parse_depths(const char *s, int *d, int *n)
{
    *n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > (1 << 24) || *n == MAX_DEPTHS)
            return -1;
        d[(*n)++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *n ? 0 : -1;
}

/* Value of "key": NUMBER inside the JSON object text [p, end); NAN if absent. */
static double json_num(const char *p, const char *end, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    size_t pl = strlen(pat);
    for (const char *q = p; q + pl < end; q++)
        if (!memcmp(q, pat, pl))
            return strtod(q + pl, NULL);
    return NAN;
}

/* Run llama-bench once over all depths and fill the l* fields. Returns 0 or -1 (message printed). */
static int run_llama_bench(const char *exe, const char *model, int threads, int pp, int tg, int reps,
                           bench_row *rows, int nd)
{
    char depths[256] = "", cmd[4096];
    for (int i = 0; i < nd; i++)
        snprintf(depths + strlen(depths), sizeof depths - strlen(depths), "%s%d", i ? "," : "", rows[i].depth);
    snprintf(cmd, sizeof cmd, "'%s' -m '%s' -t %d -p %d -n %d -d %s -r %d -o json 2>/dev/null", exe, model,
             threads, pp, tg, depths, reps);
    fprintf(stderr, "spindle bench: running %s\n", cmd);
    FILE *f = popen(cmd, "r");
    if (!f) {
        sp_cli_error("bench: cannot run llama-bench: %s", strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
    }
    int status = pclose(f);
    if (!buf || status != 0) {
        sp_cli_error("bench: llama-bench failed (exit status %d)", status);
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    /* llama-bench -o json prints an array of flat objects, one per (n_prompt, n_gen, n_depth). */
    for (char *o = strchr(buf, '{'); o; o = strchr(o + 1, '{')) {
        char *e = strchr(o, '}');
        if (!e)
            break;
        double np = json_num(o, e, "n_prompt"), ng = json_num(o, e, "n_gen"), d = json_num(o, e, "n_depth");
        double avg = json_num(o, e, "avg_ts"), sd = json_num(o, e, "stddev_ts");
        for (int i = 0; i < nd; i++) {
            if (d != rows[i].depth)
                continue;
            if (np == pp && ng == 0) {
                rows[i].lpp_mean = avg;
                rows[i].lpp_sd = sd;
            } else if (np == 0 && ng == tg) {
                rows[i].ltg_mean = avg;
                rows[i].ltg_sd = sd;
            }
        }
        o = e;
    }
    free(buf);
    return 0;
}

static void write_json(FILE *f, const char *model, const char *backend, int threads, int pp, int tg, int reps,
                       const bench_row *rows, int nd, const char *llama, int llama_reps, const sp_kv_opts *kvo)
{
    struct utsname un;
    uname(&un);
    char cpu[256], commit[64];
    sp_cli_cpu_model(cpu, sizeof cpu);
    sp_cli_git_commit(commit, sizeof commit);
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    fprintf(f, "{\n  \"bench\": \"spindle bench\",\n  \"date\": \"%s\",\n  \"commit\": \"%s\",\n", date, commit);
    fprintf(f, "  \"machine\": {\"cpu\": \"%s\", \"cores_online\": %ld, \"kernel\": \"%s\"},\n", cpu,
            sysconf(_SC_NPROCESSORS_ONLN), un.release);
    fprintf(f, "  \"model\": \"%s\",\n  \"threads\": %d,\n  \"pp\": %d,\n  \"tg\": %d,\n  \"repeats\": %d,\n", model,
            threads, pp, tg, reps);
    fprintf(f, "  \"backend\": \"%s\",\n  \"kv\": \"f16 (full cache) for pp/tg\",\n", backend);
    if (kvo)
        fprintf(f, "  \"compressed\": {\"policy\": \"%s\", \"ratio\": %.4f, \"target\": \"%s\", \"note\": "
                "\"ctg = decode on the compressed cache; tg from the same depth fill (recompress full)\"},\n",
                sp_kv_policy_name(kvo->policy), kvo->ratio, kvo->target == SP_TARGET_TOKENS ? "tokens" : "bytes");
    fprintf(f, "  \"llama_bench\": \"%s\",\n  \"llama_repeats\": %d,\n  \"llama_kv\": \"f16 (full cache)\",\n  \"rows\": [\n",
            llama ? llama : "", llama_reps);
    for (int i = 0; i < nd; i++) {
        const bench_row *r = &rows[i];
        fprintf(f,
                "    {\"depth\": %d, \"tg_tps\": %.3f, \"tg_sd\": %.3f", r->depth, r->tg_mean, r->tg_sd);
        if (r->pp_mean > 0)
            fprintf(f, ", \"pp_tps\": %.3f, \"pp_sd\": %.3f", r->pp_mean, r->pp_sd);
        if (r->ctg_mean > 0)
            fprintf(f, ", \"ctg_tps\": %.3f, \"ctg_sd\": %.3f, \"ctg_over_tg\": %.4f, \"kv_true_ratio\": %.4f, "
                    "\"kv_mib\": %.3f, \"kv_full_mib\": %.3f, \"compress_s\": %.3f",
                    r->ctg_mean, r->ctg_sd, r->ctg_mean / r->tg_mean, r->kv_true_ratio, r->kv_mib, r->kv_full_mib,
                    r->compress_s);
        if (r->lpp_mean > 0 && r->pp_mean > 0)
            fprintf(f, ", \"llama_pp_tps\": %.3f, \"llama_pp_sd\": %.3f, \"pp_ratio\": %.4f", r->lpp_mean, r->lpp_sd,
                    r->pp_mean / r->lpp_mean);
        if (r->ltg_mean > 0)
            fprintf(f, ", \"llama_tg_tps\": %.3f, \"llama_tg_sd\": %.3f, \"tg_ratio\": %.4f", r->ltg_mean, r->ltg_sd,
                    r->tg_mean / r->ltg_mean);
        if (r->ltg_mean > 0 && r->ctg_mean > 0)
            fprintf(f, ", \"ctg_ratio_vs_llama_full\": %.4f", r->ctg_mean / r->ltg_mean);
        fprintf(f, "}%s\n", i + 1 < nd ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
}

/* Decode tok[0..tg) one at a time; *tps = tokens per second. */
static int time_decode(sp_ctx_t *c, const int32_t *tok, int tg, float *logits, double *tps)
{
    double t0 = sp_now_s();
    for (int i = 0; i < tg; i++)
        if (sp_ctx_decode(c, tok[i], logits) < 0)
            return -1;
    *tps = tg / (sp_now_s() - t0);
    return 0;
}

/* Compressed decode figures of one depth (see the file header): prefill d once under the policy,
 * then per repeat: rebuild the compressed cache and time tg steps, rebuild the full cache and
 * time tg steps. Fills row->ctg_*, row->tg_* (full, same prefill) and the cache sizes. */
static int bench_compressed(sp_ctx_t *cc, const sp_kv_opts *kvo, const int32_t *tok, int d, int tg, int reps,
                            float *logits, bench_row *row)
{
    sp_kv_opts full = *kvo;
    full.policy = SP_POLICY_FULL;
    double ctgv[MAX_REPEATS] = {0}, tgv[MAX_REPEATS] = {0};
    sp_ctx_reset(cc);
    if (sp_ctx_set_policy(cc, kvo) < 0 || sp_ctx_prefill(cc, tok, d, NULL, NULL) < 0)
        return -1;
    sp_kv_stats ks;
    if (sp_ctx_kv_stats(cc, &ks) < 0)
        return -1;
    if (!ks.compressed)
        return sp_error(EINVAL, "bench: the depth %d prefill did not compress (policy %s, ratio %g)", d,
                        sp_kv_policy_name(kvo->policy), kvo->ratio);
    row->kv_true_ratio = ks.true_ratio;
    row->kv_mib = ks.bytes / 1048576.0;
    row->kv_full_mib = ks.fp16_bytes / 1048576.0;
    row->compress_s = ks.compress_s + ks.scores_s;
    for (int r = 0; r < reps; r++) {
        fprintf(stderr, "\rspindle bench: depth %d, compressed, repeat %d/%d   ", d, r + 1, reps);
        /* The first repeat decodes the compression the prefill made; later ones rebuild it. */
        if (r > 0 && sp_ctx_recompress(cc, kvo) < 0)
            return -1;
        if (time_decode(cc, tok + d, tg, logits, &ctgv[r]) < 0 || sp_ctx_recompress(cc, &full) < 0 ||
            time_decode(cc, tok + d, tg, logits, &tgv[r]) < 0)
            return -1;
    }
    sp_mean_sd(ctgv, reps, &row->ctg_mean, &row->ctg_sd);
    sp_mean_sd(tgv, reps, &row->tg_mean, &row->tg_sd);
    return 0;
}

int sp_cmd_bench(int argc, char **argv)
{
    sp_cli_common c;
    sp_cli_common_init(&c);
    sp_config_set(&c.cfg, "runtime.threads=2", "spindle bench default");
    int depths[MAX_DEPTHS] = {512, 2048, 8192}, nd = 3;
    int64_t pp = 512, tg = 64, reps = 3, llama_reps = 0;
    double kv_ratio = -1;
    const char *json = NULL, *llama = getenv("SPINDLE_LLAMA_BENCH"), *v;
    static char llama_default[1024];
    if (!llama) {
        snprintf(llama_default, sizeof llama_default, "%s/.cache/spindle/llama.cpp-build/bin/llama-bench",
                 getenv("HOME") ? getenv("HOME") : "/root");
        llama = access(llama_default, X_OK) == 0 ? llama_default : NULL;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = sp_cli_common_arg(&c, argc, argv, &i);
        if (r < 0)
            return SP_EXIT_USAGE;
        if (r > 0)
            continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return SP_EXIT_OK;
        } else if (!strcmp(a, "--depths")) {
            if (!(v = sp_cli_value(argc, argv, &i)))
                return SP_EXIT_USAGE;
            if (parse_depths(v, depths, &nd) < 0) {
                sp_cli_error("--depths: '%s' is not a list of up to %d non-negative integers", v, MAX_DEPTHS);
                return SP_EXIT_USAGE;
            }
        } else if (!strcmp(a, "--pp")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 0, 1 << 20, &pp))
                return SP_EXIT_USAGE;
        } else if (!strcmp(a, "--tg")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, 1 << 20, &tg))
                return SP_EXIT_USAGE;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repeats")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, MAX_REPEATS, &reps))
                return SP_EXIT_USAGE;
        } else if (!strcmp(a, "--kv-ratio")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_float(a, v, 0.001, 1.0, &kv_ratio))
                return SP_EXIT_USAGE;
        } else if (!strcmp(a, "--llama-repeats")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 1, MAX_REPEATS, &llama_reps))
                return SP_EXIT_USAGE;
        } else if (!strcmp(a, "--llama-bench")) {
            if (!(v = sp_cli_value(argc, argv, &i)))
                return SP_EXIT_USAGE;
            llama = strcmp(v, "none") ? v : NULL;
        } else if (!strcmp(a, "--json")) {
            if (!(json = sp_cli_value(argc, argv, &i)))
                return SP_EXIT_USAGE;
        } else {
            sp_cli_error("bench: unknown option '%s' (see spindle bench --help)", a);
            return SP_EXIT_USAGE;
        }
    }
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }
    int threads = sp_cli_threads(&c.cfg), max_d = 0;
    for (int i = 0; i < nd; i++)
        max_d = depths[i] > max_d ? depths[i] : max_d;
    sp_kv_opts kvo;
    sp_kv_opts_from_config(&kvo, &c.cfg);
    if (kv_ratio > 0) {
        if (kvo.policy == SP_POLICY_FULL) {
            sp_cli_error("bench: --kv-ratio with compression.policy=full: set a policy (e.g. --set "
                         "compression.policy=spindle)");
            return SP_EXIT_USAGE;
        }
        kvo.ratio = kv_ratio;
        for (int i = 0; i < nd; i++)
            if (depths[i] < 2 * kvo.window) {
                sp_cli_error("bench: --kv-ratio needs every depth >= %lld (twice compression.window); depth %d "
                             "is too short to compress", 2 * (long long)kvo.window, depths[i]);
                return SP_EXIT_USAGE;
            }
    }

    int rc = SP_EXIT_FAIL;
    sp_ctx_t *ctx = NULL, *cctx = NULL;
    int32_t *tok = NULL;
    float *logits = NULL;
    bench_row rows[MAX_DEPTHS];
    sp_model_t *m = sp_model_load(c.cfg.model.path);
    if (!m) {
        sp_cli_error("%s", sp_last_error());
        return SP_EXIT_FAIL;
    }
    const sp_hparams *hp = sp_model_hparams(m);
    sp_ctx_params p = sp_ctx_default_params();
    int n_ctx = max_d + (int)(pp > tg ? pp : tg);
    p.n_ctx = n_ctx;
    p.n_threads = threads;
    p.numerics = c.cfg.runtime.numerics;
    if (sp_cli_backend(&c.cfg, &p.backend) < 0)
        goto out;
    /* The plain context times prefill, and decode when no compressed figure is asked for. */
    if (pp > 0 || kv_ratio < 0) {
        if (!(ctx = sp_ctx_new(m, &p))) {
            sp_cli_error("%s", sp_last_error());
            goto out;
        }
    }
    if (kv_ratio > 0) {
        sp_ctx_params cp = p;
        cp.n_ctx = max_d + (int)tg;
        cp.kv_opts = &kvo;
        cp.keep_prefill_state = true;
        cp.keep_own_scores_only = true;
        if (sp_kv_opts_validate_relaxed(&kvo, hp->n_layer, max_d) < 0 || !(cctx = sp_ctx_new(m, &cp))) {
            sp_cli_error("%s", sp_last_error());
            goto out;
        }
    }
    tok = malloc(sizeof *tok * (size_t)n_ctx);
    logits = malloc(sizeof *logits * (size_t)hp->n_vocab);
    if (!tok || !logits) {
        sp_cli_error("bench: out of memory");
        goto out;
    }
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < n_ctx; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        tok[i] = (int32_t)(s % (uint64_t)hp->n_vocab);
    }
    if (n_ctx > hp->n_ctx_train)
        sp_notice("bench: context %d exceeds the model's trained %d tokens (speed only; RoPE extrapolates)",
                  n_ctx, hp->n_ctx_train);
    /* Warm-up: page the weights in and let every buffer be touched once. */
    sp_ctx_t *warm = ctx ? ctx : cctx;
    if (sp_ctx_prefill(warm, tok, 64, logits, NULL) < 0) {
        sp_cli_error("bench: %s", sp_last_error());
        goto out;
    }
    for (int di = 0; di < nd; di++) {
        double ppv[MAX_REPEATS] = {0}, tgv[MAX_REPEATS] = {0};
        int d = depths[di];
        bench_row *row = &rows[di];
        memset(row, 0, sizeof *row);
        row->depth = d;
        row->pp_mean = row->lpp_mean = row->ltg_mean = row->ctg_mean = -1;
        for (int r = 0; r < reps && pp > 0; r++) {
            fprintf(stderr, "\rspindle bench: depth %d, prefill, repeat %d/%d   ", d, r + 1, (int)reps);
            sp_ctx_reset(ctx);
            if (d && sp_ctx_prefill(ctx, tok, d, NULL, NULL) < 0)
                goto fail;
            double t0 = sp_now_s();
            if (sp_ctx_prefill(ctx, tok + d, (int)pp, logits, NULL) < 0)
                goto fail;
            ppv[r] = pp / (sp_now_s() - t0);
        }
        if (pp > 0)
            sp_mean_sd(ppv, (int)reps, &row->pp_mean, &row->pp_sd);
        if (kv_ratio > 0) {
            if (bench_compressed(cctx, &kvo, tok, d, (int)tg, (int)reps, logits, row) < 0)
                goto fail;
            continue;
        }
        for (int r = 0; r < reps; r++) {
            fprintf(stderr, "\rspindle bench: depth %d, decode, repeat %d/%d   ", d, r + 1, (int)reps);
            sp_ctx_reset(ctx);
            if (d && sp_ctx_prefill(ctx, tok, d, NULL, NULL) < 0)
                goto fail;
            if (time_decode(ctx, tok + d, (int)tg, logits, &tgv[r]) < 0)
                goto fail;
        }
        sp_mean_sd(tgv, (int)reps, &row->tg_mean, &row->tg_sd);
    }
    fputc('\n', stderr);
    char be_name[128];
    snprintf(be_name, sizeof be_name, "%s", sp_backend_name(sp_ctx_backend(warm)));
    sp_ctx_free(ctx);
    sp_ctx_free(cctx);
    ctx = cctx = NULL;
    if (llama && run_llama_bench(llama, c.cfg.model.path, threads, (int)pp, (int)tg,
                                 (int)(llama_reps ? llama_reps : reps), rows, nd) < 0)
        llama = NULL;

    printf("backend %s; pp and tg: full fp16 cache", be_name);
    if (kv_ratio > 0)
        printf("; ctg: cache compressed by %s to %.2f true bytes (tg and ctg from one depth fill each)",
               sp_kv_policy_name(kvo.policy), kv_ratio);
    printf("\n| model | threads | test | spindle t/s | llama.cpp t/s (full cache) | ratio |\n|---|---|---|---|---|---|\n");
    for (int i = 0; i < nd; i++) {
        const bench_row *r = &rows[i];
        for (int k = 0; k < 3; k++) {
            double m0 = k == 0 ? r->pp_mean : k == 1 ? r->tg_mean : r->ctg_mean;
            double s0 = k == 0 ? r->pp_sd : k == 1 ? r->tg_sd : r->ctg_sd;
            double m1 = k ? r->ltg_mean : r->lpp_mean, s1 = k ? r->ltg_sd : r->lpp_sd;
            if (m0 < 0)
                continue;
            printf("| %s | %d | %s%" PRId64 " @ d%d | %.2f ± %.2f |", hp->arch_name, threads,
                   k == 0 ? "pp" : k == 1 ? "tg" : "ctg", k ? tg : pp, r->depth, m0, s0);
            if (m1 > 0)
                printf(" %.2f ± %.2f | %.3f |\n", m1, s1, m0 / m1);
            else
                printf(" - | - |\n");
        }
        if (r->ctg_mean > 0)
            printf("  d%d compressed: %.2f of %.2f MiB (true ratio %.3f), compression %.2f s; ctg/tg %.3f\n",
                   r->depth, r->kv_mib, r->kv_full_mib, r->kv_true_ratio, r->compress_s, r->ctg_mean / r->tg_mean);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.1f MiB (context %d tokens)\n", ru.ru_maxrss / 1024.0, n_ctx);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            sp_cli_error("bench: cannot write '%s': %s", json, strerror(errno));
            goto out;
        }
        write_json(f, c.cfg.model.path, be_name, threads, (int)pp, (int)tg, (int)reps,
                   rows, nd, llama, (int)(llama_reps ? llama_reps : reps), kv_ratio > 0 ? &kvo : NULL);
        fclose(f);
        fprintf(stderr, "spindle bench: wrote %s\n", json);
    }
    rc = SP_EXIT_OK;
    goto out;
fail:
    sp_cli_error("bench: %s", sp_last_error());
out:
    free(tok);
    free(logits);
    sp_ctx_free(ctx);
    sp_ctx_free(cctx);
    sp_model_free(m);
    return rc;
}
