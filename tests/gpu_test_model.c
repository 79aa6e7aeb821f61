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

enum { E = 256, F = 512, N_HEAD = 4, N_KV = 2, HD = 64, VOCAB = 320, N_LAYER = 2, N_CTX = 64 };

static int failures;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            failures++;                                                    \
        }                                                                  \
    } while (0)

/* ---- a synthetic GGUF, written with stdio ---- */

static void put_u32(FILE *f, uint32_t v) { fwrite(&v, 4, 1, f); }
static void put_u64(FILE *f, uint64_t v) { fwrite(&v, 8, 1, f); }
static void put_str(FILE *f, const char *s)
{
    put_u64(f, strlen(s));
    fwrite(s, 1, strlen(s), f);
}
static void kv_u32(FILE *f, const char *k, uint32_t v)
{
    put_str(f, k);
    put_u32(f, 4); /* GGUF_TYPE_UINT32 */
    put_u32(f, v);
}
static void kv_f32(FILE *f, const char *k, float v)
{
    put_str(f, k);
    put_u32(f, 6); /* GGUF_TYPE_FLOAT32 */
    fwrite(&v, 4, 1, f);
}
static void kv_str(FILE *f, const char *k, const char *v)
{
    put_str(f, k);
    put_u32(f, 8); /* GGUF_TYPE_STRING */
    put_str(f, v);
}

typedef struct tensor {
    char name[64];
    uint32_t type;
    uint64_t ne0, ne1;       /* ne1 = 1: a vector */
    size_t bytes;
    uint8_t *data;
} tensor;

static uint64_t next_u64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}
static float urand(uint64_t *s) { return (float)(next_u64(s) >> 11) / 9007199254740992.0f; }

/* Random blocks of `type` whose scales are small finite fp16 values, so every format decodes to
 * moderate numbers (random bytes would put NaN/inf in the scales). */
static void fill_blocks(uint8_t *p, size_t bytes, uint32_t type, uint64_t *s)
{
    for (size_t i = 0; i < bytes; i++)
        p[i] = (uint8_t)next_u64(s);
    size_t bs = sp_type_row_bytes(type, sp_type_block_elems(type));
    for (size_t b = 0; b + bs <= bytes; b += bs) {
        uint8_t *blk = p + b;
        uint16_t d = sp_f32_to_fp16(0.002f + 0.004f * urand(s)), m = sp_f32_to_fp16(-0.01f * urand(s));
        switch (type) {
        case SP_TYPE_Q6_K: memcpy(blk + 208, &d, 2); break;
        case SP_TYPE_Q4_1: case SP_TYPE_Q5_1: case SP_TYPE_Q4_K: case SP_TYPE_Q5_K:
            memcpy(blk, &d, 2);
            memcpy(blk + 2, &m, 2);
            break;
        default: memcpy(blk, &d, 2); break;
        }
    }
}

static void make_tensor(tensor *t, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1, uint64_t *s)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->bytes = sp_type_row_bytes(type, (int64_t)ne0) * ne1;
    t->data = malloc(t->bytes);
    float scale = 1.0f / sqrtf((float)ne0);
    for (uint64_t i = 0; i < ne0 * ne1 && (type == SP_TYPE_F32 || type == SP_TYPE_F16 || type == SP_TYPE_BF16); i++) {
        float v = ne1 == 1 ? 0.8f + 0.4f * urand(s) : (2.0f * urand(s) - 1.0f) * scale * 1.7f;
        if (type == SP_TYPE_F32) {
            memcpy(t->data + 4 * i, &v, 4);
        } else if (type == SP_TYPE_F16) {
            uint16_t h = sp_f32_to_fp16(v);
            memcpy(t->data + 2 * i, &h, 2);
        } else {
            uint32_t u;
            memcpy(&u, &v, 4);
            uint16_t h = (uint16_t)(u >> 16);
            memcpy(t->data + 2 * i, &h, 2);
        }
    }
    if (type != SP_TYPE_F32 && type != SP_TYPE_F16 && type != SP_TYPE_BF16)
        fill_blocks(t->data, t->bytes, type, s);
}

/* llama: Q4_0, Q5_0, Q5_1, Q8_0, F16, Q4_1 matrices; qwen2 (biases): Q4_K, Q5_K, Q6_K, BF16, F32, Q8_0. */
static int write_model(const char *path, bool qwen2, uint64_t seed)
{
    static const uint32_t llama_types[] = {SP_TYPE_Q4_0, SP_TYPE_Q5_0, SP_TYPE_Q5_1, SP_TYPE_Q8_0, SP_TYPE_F16,
                                           SP_TYPE_Q4_1, SP_TYPE_Q4_0};
    static const uint32_t qwen_types[] = {SP_TYPE_Q4_K, SP_TYPE_Q5_K, SP_TYPE_Q6_K, SP_TYPE_BF16, SP_TYPE_F32,
                                          SP_TYPE_Q8_0, SP_TYPE_Q6_K};
    const uint32_t *ty = qwen2 ? qwen_types : llama_types;
    uint64_t s = seed;
    tensor t[64];
    int nt = 0;
    char nm[64];
    make_tensor(&t[nt++], "token_embd.weight", qwen2 ? SP_TYPE_Q8_0 : SP_TYPE_Q4_1, E, VOCAB, &s);
    make_tensor(&t[nt++], "output_norm.weight", SP_TYPE_F32, E, 1, &s);
    make_tensor(&t[nt++], "output.weight", qwen2 ? SP_TYPE_Q6_K : SP_TYPE_Q8_0, E, VOCAB, &s);
    for (int l = 0; l < N_LAYER; l++) {
        const char *mats[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        uint64_t ne0[] = {E, E, E, N_HEAD * HD, E, E, F}, ne1[] = {N_HEAD * HD, N_KV * HD, N_KV * HD, E, F, F, E};
        for (int i = 0; i < 7; i++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, mats[i]);
            make_tensor(&t[nt++], nm, ty[(i + l) % 7], ne0[i], ne1[i], &s);
        }
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        make_tensor(&t[nt++], nm, SP_TYPE_F32, E, 1, &s);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        make_tensor(&t[nt++], nm, SP_TYPE_F32, E, 1, &s);
        if (qwen2) {
            const char *b[] = {"attn_q", "attn_k", "attn_v"};
            uint64_t n[] = {N_HEAD * HD, N_KV * HD, N_KV * HD};
            for (int i = 0; i < 3; i++) {
                snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, b[i]);
                make_tensor(&t[nt++], nm, SP_TYPE_F32, n[i], 1, &s);
            }
        }
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return -errno;
    const char *arch = qwen2 ? "qwen2" : "llama";
    char k[96];
    fwrite("GGUF", 1, 4, f);
    put_u32(f, 3);
    put_u64(f, (uint64_t)nt);
    put_u64(f, 10);
    kv_str(f, "general.architecture", arch);
#define KEY(x) (snprintf(k, sizeof k, "%s.%s", arch, x), k)
    kv_u32(f, KEY("block_count"), N_LAYER);
    kv_u32(f, KEY("embedding_length"), E);
    kv_u32(f, KEY("feed_forward_length"), F);
    kv_u32(f, KEY("attention.head_count"), N_HEAD);
    kv_u32(f, KEY("attention.head_count_kv"), N_KV);
    kv_u32(f, KEY("attention.key_length"), HD);
    kv_u32(f, KEY("context_length"), N_CTX);
    kv_f32(f, KEY("rope.freq_base"), 10000.0f);
    kv_f32(f, KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
#undef KEY
    uint64_t off = 0;
    for (int i = 0; i < nt; i++) {
        put_str(f, t[i].name);
        put_u32(f, t[i].ne1 == 1 ? 1 : 2);
        put_u64(f, t[i].ne0);
        if (t[i].ne1 != 1)
            put_u64(f, t[i].ne1);
        put_u32(f, t[i].type);
        put_u64(f, off);
        off += (t[i].bytes + 31) & ~(uint64_t)31;
    }
    long pos = ftell(f);
    for (; pos % 32; pos++)
        fputc(0, f);
    for (int i = 0; i < nt; i++) {
        fwrite(t[i].data, 1, t[i].bytes, f);
        for (size_t p = t[i].bytes; p % 32; p++)
            fputc(0, f);
        free(t[i].data);
    }
    return fclose(f) == 0 ? 0 : -EIO;
}

/* ---- the comparison ---- */

static sp_ctx_t *new_ctx(const sp_model_t *m, sp_backend_kind kind)
{
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = N_CTX;
    p.n_threads = 1;
    p.chunk = 16;
    p.numerics = SP_NUMERICS_EXACT;
    p.backend = kind;
    sp_ctx_t *c = sp_ctx_new(m, &p);
    if (!c)
        fprintf(stderr, "context on %s: %s\n", kind == SP_BACKEND_CPU ? "cpu" : "cuda", sp_last_error());
    return c;
}

static void compare_model(const char *path, const char *what)
{
    sp_model_t *m = sp_model_load(path);
    CHECK(m, "%s: load: %s", what, sp_last_error());
    if (!m)
        return;
    sp_ctx_t *cpu = new_ctx(m, SP_BACKEND_CPU), *gpu = new_ctx(m, SP_BACKEND_CUDA);
    float *lc = calloc((size_t)24 * VOCAB, sizeof(float)), *lg = calloc((size_t)24 * VOCAB, sizeof(float));
    sp_sampler_params sp = sp_sampler_default_params();
    sp.temperature = 0.0f;
    sp_sampler_t *smp = sp_sampler_new(VOCAB, &sp);
    CHECK(cpu && gpu && lc && lg && smp, "%s: set-up", what);
    if (!cpu || !gpu || !lc || !lg || !smp)
        goto out;
    CHECK(sp_ctx_device_resident(gpu) && !sp_ctx_device_resident(cpu), "%s: residency", what);
    /* a prompt longer than one chunk (16) and not a multiple of the GEMV block (8) */
    int32_t prompt[21];
    uint64_t s = 99;
    for (int i = 0; i < 21; i++)
        prompt[i] = (int32_t)(next_u64(&s) % VOCAB);
    int rc1 = sp_ctx_prefill(cpu, prompt, 21, NULL, lc), rc2 = sp_ctx_prefill(gpu, prompt, 21, NULL, lg);
    CHECK(rc1 == 0 && rc2 == 0, "%s: prefill cpu %d, cuda %d: %s", what, rc1, rc2, sp_last_error());
    double max_d = 0, max_v = 0;
    for (size_t i = 0; i < (size_t)21 * VOCAB; i++) {
        max_d = fmax(max_d, fabs((double)lc[i] - lg[i]));
        max_v = fmax(max_v, fabs((double)lc[i]));
    }
    printf("%s: prefill logits of 21 rows: max |cpu - cuda| = %.3g (max |logit| %.3g)\n", what, max_d, max_v);
    CHECK(max_d <= 1e-3 * fmax(1.0, max_v), "%s: prefill logits differ by %g", what, max_d);
    /* greedy decode: tokens equal; no host sync in a decode step, one per sampled token */
    sp_backend_t *be = sp_ctx_backend(gpu);
    int32_t tc = sp_sampler_sample(smp, lc + (size_t)20 * VOCAB), tg = -1;
    CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0 && tg == tc, "%s: first token cpu %d, cuda %d", what, tc, tg);
    for (int step = 0; step < 10 && failures == 0; step++) {
        uint64_t s0 = sp_backend_host_syncs(be);
        rc1 = sp_ctx_decode(cpu, tc, lc);
        rc2 = sp_ctx_decode(gpu, tg, NULL);
        uint64_t s1 = sp_backend_host_syncs(be);
        CHECK(rc1 == 0 && rc2 == 0, "%s: decode step %d: %s", what, step, sp_last_error());
        CHECK(s1 == s0, "%s: decode step %d made %llu host synchronisations (want 0)", what, step,
              (unsigned long long)(s1 - s0));
        tc = sp_sampler_sample(smp, lc);
        CHECK(sp_ctx_sample(gpu, smp, NULL, &tg) == 0, "%s: sample: %s", what, sp_last_error());
        CHECK(sp_backend_host_syncs(be) - s1 == 1, "%s: sampling made %llu host synchronisations (want 1)", what,
              (unsigned long long)(sp_backend_host_syncs(be) - s1));
        CHECK(tg == tc, "%s: decode step %d: cpu token %d, cuda token %d", what, step, tc, tg);
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
    const char *why = NULL;
    sp_backend_t *probe = sp_backend_create(SP_BACKEND_CUDA, &(sp_backend_params){.version = SP_BACKEND_API_VERSION});
    if (!probe) {
        printf("skipped: no CUDA backend (%s)\n", (why = sp_last_error()));
        return 77;
    }
    sp_backend_free(probe);
    char path[] = "/tmp/spindle-gpu-model-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    close(fd);
    for (int arch = 0; arch < 2; arch++) {
        int rc = write_model(path, arch == 1, 1234 + (uint64_t)arch);
        CHECK(rc == 0, "write %s: %d", path, rc);
        if (rc == 0)
            compare_model(path, arch ? "qwen2 (Q4_K Q5_K Q6_K BF16 F32 Q8_0, biases)" : "llama (Q4_0 Q5_0 Q5_1 Q8_0 F16 Q4_1)");
    }
    unlink(path);
    printf("%s\n", failures ? "FAILED" : "passed");
    return failures ? 1 : 0;
}
