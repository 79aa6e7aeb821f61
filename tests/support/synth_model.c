/* synth_model.c - synthetic GGUF models for the GPU tests. See synth_model.h. */
#include "synth_model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16.h"
#include "sp_error.h"
#include "type_traits.h"


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

uint64_t synth_next_u64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}
static float urand(uint64_t *s) { return (float)(synth_next_u64(s) >> 11) / 9007199254740992.0f; }

/* Random blocks of `type` whose scales are small finite fp16 values, so every format decodes to
 * moderate numbers (random bytes would put NaN/inf in the scales). */
static void fill_blocks(uint8_t *p, size_t bytes, uint32_t type, uint64_t *s)
{
    for (size_t i = 0; i < bytes; i++)
        p[i] = (uint8_t)synth_next_u64(s);
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
int synth_model_write(const char *path, bool qwen2, uint64_t seed)
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
    make_tensor(&t[nt++], "token_embd.weight", qwen2 ? SP_TYPE_Q8_0 : SP_TYPE_Q4_1, SYNTH_E, SYNTH_VOCAB, &s);
    make_tensor(&t[nt++], "output_norm.weight", SP_TYPE_F32, SYNTH_E, 1, &s);
    make_tensor(&t[nt++], "output.weight", qwen2 ? SP_TYPE_Q6_K : SP_TYPE_Q8_0, SYNTH_E, SYNTH_VOCAB, &s);
    for (int l = 0; l < SYNTH_N_LAYER; l++) {
        const char *mats[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
        uint64_t ne0[] = {SYNTH_E, SYNTH_E, SYNTH_E, SYNTH_N_HEAD * SYNTH_HD, SYNTH_E, SYNTH_E, SYNTH_F}, ne1[] = {SYNTH_N_HEAD * SYNTH_HD, SYNTH_N_KV * SYNTH_HD, SYNTH_N_KV * SYNTH_HD, SYNTH_E, SYNTH_F, SYNTH_F, SYNTH_E};
        for (int i = 0; i < 7; i++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, mats[i]);
            make_tensor(&t[nt++], nm, ty[(i + l) % 7], ne0[i], ne1[i], &s);
        }
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", l);
        make_tensor(&t[nt++], nm, SP_TYPE_F32, SYNTH_E, 1, &s);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", l);
        make_tensor(&t[nt++], nm, SP_TYPE_F32, SYNTH_E, 1, &s);
        if (qwen2) {
            const char *b[] = {"attn_q", "attn_k", "attn_v"};
            uint64_t n[] = {SYNTH_N_HEAD * SYNTH_HD, SYNTH_N_KV * SYNTH_HD, SYNTH_N_KV * SYNTH_HD};
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
    kv_u32(f, KEY("block_count"), SYNTH_N_LAYER);
    kv_u32(f, KEY("embedding_length"), SYNTH_E);
    kv_u32(f, KEY("feed_forward_length"), SYNTH_F);
    kv_u32(f, KEY("attention.head_count"), SYNTH_N_HEAD);
    kv_u32(f, KEY("attention.head_count_kv"), SYNTH_N_KV);
    kv_u32(f, KEY("attention.key_length"), SYNTH_HD);
    kv_u32(f, KEY("context_length"), SYNTH_N_CTX);
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

int synth_failures;

sp_ctx_t *synth_ctx_new(const sp_model_t *m, sp_backend_kind kind, const sp_kv_opts *o)
{
    sp_ctx_params p = sp_ctx_default_params();
    p.n_ctx = SYNTH_N_CTX;
    p.n_threads = 1;
    p.chunk = 16;
    p.numerics = SP_NUMERICS_EXACT;
    p.backend = kind;
    p.kv_opts = o;
    sp_ctx_t *c = sp_ctx_new(m, &p);
    if (!c)
        fprintf(stderr, "context on %s: %s\n", kind == SP_BACKEND_CPU ? "cpu" : "cuda", sp_last_error());
    return c;
}

bool synth_cuda_available(void)
{
    sp_backend_t *probe = sp_backend_create(SP_BACKEND_CUDA, &(sp_backend_params){.version = SP_BACKEND_API_VERSION});
    if (!probe) {
        printf("skipped: no CUDA backend (%s)\n", sp_last_error());
        return false;
    }
    sp_backend_free(probe);
    return true;
}
