/* bench_matmul.c - speed of sp_op_matmul (GGML numerics: the integer block dot products) per weight
 * type, for one token (decode: bound by reading the weights, reported in GB/s of weights) and for a
 * block of tokens (prefill: reported in 10^9 multiply-adds per second). Random weights of the shapes
 * Qwen2.5-1.5B uses. Each figure: the best of -r repeats (the machine is shared: best is the least
 * disturbed), with mean +- sd beside it. --cpu-time (one thread only) times with the thread's CPU
 * clock instead of the wall clock, which keeps figures comparable on a loaded machine.
 *
 * usage: bench_matmul [-t threads] [-r repeats] [-n prefill_tokens] [--rows R] [--cols C] [--cpu-time]
 *                     [TYPE...]
 *        TYPE: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k f16 (default: all)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "dequant.h"
#include "gguf.h"
#include "ops.h"
#include "sp_error.h"
#include "sp_time.h"

static const struct { const char *name; uint32_t type; } types[] = {
    {"q4_0", SP_TYPE_Q4_0}, {"q4_1", SP_TYPE_Q4_1}, {"q5_0", SP_TYPE_Q5_0}, {"q5_1", SP_TYPE_Q5_1},
    {"q8_0", SP_TYPE_Q8_0}, {"q4_k", SP_TYPE_Q4_K}, {"q5_k", SP_TYPE_Q5_K}, {"q6_k", SP_TYPE_Q6_K},
    {"f16", SP_TYPE_F16},
};
enum { N_TYPES = sizeof types / sizeof types[0], MAX_REP = 64 };

static uint64_t rng = 88172645463325252ull;
static uint8_t rnd8(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint8_t)(rng >> 24);
}

/* Random bytes with small fp16 scales wherever a block keeps one (so no value overflows). */
static void fill_weights(uint32_t type, uint8_t *w, size_t bytes)
{
    for (size_t i = 0; i < bytes; i++)
        w[i] = rnd8();
    size_t bb = sp_type_block_bytes(type);
    for (size_t o = 0; o + bb <= bytes; o += bb) {
        uint16_t h = 0x2000;   /* ~0.0078 */
        size_t at = type == SP_TYPE_Q6_K ? 208 : 0;
        if (type == SP_TYPE_F16)
            for (size_t k = 0; k < bb; k += 2)
                memcpy(w + o + k, &h, 2);
        else
            memcpy(w + o + at, &h, 2);
    }
}

static bool cpu_time;

static double now(void)
{
    if (!cpu_time)
        return sp_now_s();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run(uint32_t type, const char *name, int threads, int reps, int n_pp, int64_t rows, int64_t cols)
{
    size_t rb = sp_type_row_bytes(type, cols);
    uint8_t *w = malloc(rb * (size_t)rows);
    float *x = malloc(sizeof(float) * (size_t)(n_pp * cols)), *y = malloc(sizeof(float) * (size_t)(n_pp * rows));
    sp_cpu *cpu = sp_cpu_new(threads, sp_op_matmul_scratch(cols), 0);
    if (!w || !x || !y || !cpu) {
        fprintf(stderr, "bench_matmul: out of memory\n");
        exit(1);
    }
    cpu->numerics = SP_NUMERICS_GGML;
    fill_weights(type, w, rb * (size_t)rows);
    for (int64_t i = 0; i < n_pp * cols; i++)
        x[i] = (float)((int)rnd8() - 128) / 64.0f;
    sp_wmat m = { .type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = w };
    double tg[MAX_REP], pp[MAX_REP];
    for (int r = 0; r < reps; r++) {
        int iters = 20;
        double t0 = now();
        for (int k = 0; k < iters; k++)
            if (sp_op_matmul(cpu, &m, x, 1, (int)cols, y, (int)rows) != 0) {
                fprintf(stderr, "bench_matmul: %s\n", sp_last_error());
                exit(1);
            }
        tg[r] = (double)rb * rows * iters / (now() - t0) / 1e9;
        t0 = now();
        if (sp_op_matmul(cpu, &m, x, n_pp, (int)cols, y, (int)rows) != 0) {
            fprintf(stderr, "bench_matmul: %s\n", sp_last_error());
            exit(1);
        }
        pp[r] = (double)rows * cols * n_pp / (now() - t0) / 1e9;
    }
    double tm, ts, pm, ps, tb = 0, pb = 0;
    sp_mean_sd(tg, reps, &tm, &ts);
    sp_mean_sd(pp, reps, &pm, &ps);
    for (int r = 0; r < reps; r++) {
        tb = tg[r] > tb ? tg[r] : tb;
        pb = pp[r] > pb ? pp[r] : pb;
    }
    printf("| %-5s | %lldx%lld | %d | %6.2f GB/s (%.2f +- %.2f) | %7.2f GMAC/s (%.2f +- %.2f) |\n", name,
           (long long)rows, (long long)cols, threads, tb, tm, ts, pb, pm, ps);
    sp_cpu_free(cpu);
    free(w); free(x); free(y);
}

int main(int argc, char **argv)
{
    int threads = 1, reps = 5, n_pp = 128;
    int64_t rows = 1536, cols = 1536;
    bool want[N_TYPES] = { false }, any = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-t") && v) { threads = atoi(v); i++; }
        else if (!strcmp(a, "-r") && v) { reps = atoi(v); i++; }
        else if (!strcmp(a, "-n") && v) { n_pp = atoi(v); i++; }
        else if (!strcmp(a, "--rows") && v) { rows = atoll(v); i++; }
        else if (!strcmp(a, "--cols") && v) { cols = atoll(v); i++; }
        else if (!strcmp(a, "--cpu-time")) cpu_time = true;
        else {
            int k = 0;
            while (k < N_TYPES && strcasecmp(a, types[k].name))
                k++;
            if (k == N_TYPES) {
                fprintf(stderr, "bench_matmul: unknown argument '%s' (see the usage in bench/bench_matmul.c)\n", a);
                return 2;
            }
            want[k] = any = true;
        }
    }
    if (cpu_time && threads != 1) {
        fprintf(stderr, "bench_matmul: --cpu-time needs -t 1\n");
        return 2;
    }
    if (threads < 1 || reps < 1 || reps > MAX_REP || n_pp < 1 || rows < 1 || cols < 256 || cols % 256) {
        fprintf(stderr, "bench_matmul: need -t >= 1, 1 <= -r <= %d, -n >= 1, --cols a multiple of 256\n", MAX_REP);
        return 2;
    }
    printf("| type | rows x cols | threads | decode (1 token): weights read, best (mean +- sd) | prefill (%d tokens), best (mean +- sd) |\n|---|---|---|---|---|\n", n_pp);
    for (int k = 0; k < N_TYPES; k++)
        if (!any || want[k])
            run(types[k].type, types[k].name, threads, reps, n_pp, rows, cols);
    return 0;
}
