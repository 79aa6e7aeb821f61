/* model.c - GGUF model loading (llama, qwen2) and the CPU forward pass (see model.h).
 *
 * DESIGN
 * - Load: every hyper-parameter comes from `<arch>.*` metadata; every tensor is looked up by name,
 *   its type checked against what the kernels support and its shape against the hyper-parameters, so
 *   a bad file fails here with a message naming the tensor, not later inside a kernel.
 * - Forward: tokens are processed in chunks of at most `chunk` tokens (decode is a chunk of 1); per
 *   chunk and per layer: RMSNorm -> Q,K,V (+bias) -> RoPE -> store K,V in the cache -> attention over
 *   the cache -> output projection + residual -> RMSNorm -> SwiGLU MLP + residual. All buffers are
 *   carved from one allocation made at sp_ctx_new(), sized for one chunk.
 * - Window scores are produced with the last chunk of a prefill; the chunking is adjusted so that
 *   chunk holds at least n_window tokens.
 */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dequant.h"
#include "kvcache.h"
#include "sp_error.h"

typedef struct sp_layer {
    const float *attn_norm, *ffn_norm;   /* [n_embd] fp32 (owned by model->vecs) */
    const float *bq, *bk, *bv;           /* biases or NULL */
    sp_wmat wq, wk, wv, wo, w_gate, w_up, w_down;
} sp_layer;

struct sp_model {
    sp_gguf_t *g;
    sp_hparams hp;
    sp_wmat tok_embd, output;
    const float *output_norm;
    sp_layer *layers;                    /* [n_layer] */
    float *vecs;                         /* fp32 copies of every 1-D tensor */
};

/* ---- loading -------------------------------------------------------------------------------- */

static int get_int(const sp_gguf_t *g, const char *arch, const char *suffix, int *out, bool required, int def)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    int64_t v;
    if (sp_gguf_find_key(g, key) < 0) {
        if (required)
            return sp_error(EINVAL, "%s: missing metadata key '%s'", sp_gguf_path(g), key);
        *out = def;
        return 0;
    }
    if (sp_gguf_get_i64(g, key, &v) != 0)
        return sp_error(EINVAL, "%s: metadata key '%s' is not an integer", sp_gguf_path(g), key);
    if (v <= 0 || v > (1 << 24))
        return sp_error(EINVAL, "%s: metadata key '%s' = %lld is out of range", sp_gguf_path(g), key, (long long)v);
    *out = (int)v;
    return 0;
}

static int get_float(const sp_gguf_t *g, const char *arch, const char *suffix, float *out, bool required, float def)
{
    char key[128];
    snprintf(key, sizeof(key), "%s.%s", arch, suffix);
    if (sp_gguf_find_key(g, key) < 0) {
        if (required)
            return sp_error(EINVAL, "%s: missing metadata key '%s'", sp_gguf_path(g), key);
        *out = def;
        return 0;
    }
    if (sp_gguf_get_f32(g, key, out) != 0)
        return sp_error(EINVAL, "%s: metadata key '%s' is not a float", sp_gguf_path(g), key);
    if (!(*out > 0.0f) || !isfinite(*out))
        return sp_error(EINVAL, "%s: metadata key '%s' = %g is out of range", sp_gguf_path(g), key, (double)*out);
    return 0;
}

/* Look up a tensor and check it is [ne0, ne1] (ne1 = 0 for 1-D). */
static const sp_gguf_tensor *want_tensor(const sp_gguf_t *g, const char *name, int64_t ne0, int64_t ne1, bool optional,
                                         int *err)
{
    const sp_gguf_tensor *t = sp_gguf_find_tensor(g, name);
    if (!t) {
        if (!optional)
            *err = sp_error(EINVAL, "%s: missing tensor '%s'", sp_gguf_path(g), name);
        return NULL;
    }
    int64_t e1 = ne1 ? ne1 : 1;
    bool ok = t->ne[0] == ne0 && t->ne[1] == e1 && t->ne[2] == 1 && t->ne[3] == 1;
    if (!ok) {
        *err = sp_error(EINVAL, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                        sp_gguf_path(g), name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                        (long long)t->ne[3], (long long)ne0, (long long)e1);
        return NULL;
    }
    if (!sp_op_matmul_supported(t->type) || ne0 % sp_type_block_elems(t->type) != 0) {
        *err = sp_error(EINVAL, "%s: tensor '%s' has unsupported type %s (%u)", sp_gguf_path(g), name,
                        sp_ggml_type_name(t->type), t->type);
        return NULL;
    }
    return t;
}

static int load_mat(const sp_gguf_t *g, const char *name, int64_t cols, int64_t rows, sp_wmat *w)
{
    int err = 0;
    const sp_gguf_tensor *t = want_tensor(g, name, cols, rows, false, &err);
    if (!t)
        return err;
    w->type = t->type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = sp_type_row_bytes(t->type, cols);
    w->data = t->data;
    return 0;
}

/* Dequantize a 1-D tensor of n elements into dst (optional: *dst = NULL when absent). */
static int load_vec(const sp_gguf_t *g, const char *name, int64_t n, bool optional, float **cursor, const float **dst)
{
    int err = 0;
    *dst = NULL;
    const sp_gguf_tensor *t = want_tensor(g, name, n, 0, optional, &err);
    if (!t)
        return err;
    if (sp_dequant(t->type, t->data, *cursor, n) != 0)
        return sp_error(EINVAL, "%s: tensor '%s': %s", sp_gguf_path(g), name, sp_last_error());
    *dst = *cursor;
    *cursor += n;
    return 0;
}

sp_model_t *sp_model_load(const char *path)
{
    sp_model_t *m = calloc(1, sizeof(*m));
    if (!m) {
        sp_error(ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    m->g = sp_gguf_open(path);
    if (!m->g)
        goto fail;
    const sp_gguf_t *g = m->g;
    sp_hparams *hp = &m->hp;

    sp_gguf_str a;
    if (sp_gguf_get_str(g, "general.architecture", &a) != 0) {
        sp_error(EINVAL, "%s: missing metadata key 'general.architecture'", path);
        goto fail;
    }
    snprintf(hp->arch_name, sizeof(hp->arch_name), "%.*s", (int)(a.len < 31 ? a.len : 31), a.ptr);
    if (a.len == 5 && memcmp(a.ptr, "llama", 5) == 0) {
        hp->arch = SP_ARCH_LLAMA;
        hp->rope_mode = SP_ROPE_NORM;
    } else if (a.len == 5 && memcmp(a.ptr, "qwen2", 5) == 0) {
        hp->arch = SP_ARCH_QWEN2;
        hp->rope_mode = SP_ROPE_NEOX;
    } else {
        sp_error(EINVAL, "%s: unsupported architecture '%.*s' (general.architecture); supported: llama, qwen2", path,
                 (int)(a.len < 64 ? a.len : 64), a.ptr);
        goto fail;
    }
    const char *arch = hp->arch_name;
    if (get_int(g, arch, "block_count", &hp->n_layer, true, 0) || get_int(g, arch, "embedding_length", &hp->n_embd, true, 0) ||
        get_int(g, arch, "feed_forward_length", &hp->n_ff, true, 0) ||
        get_int(g, arch, "attention.head_count", &hp->n_head, true, 0) ||
        get_int(g, arch, "attention.head_count_kv", &hp->n_kv_head, false, hp->n_head) ||
        get_int(g, arch, "attention.key_length", &hp->head_dim, false, hp->n_embd / hp->n_head) ||
        get_int(g, arch, "context_length", &hp->n_ctx_train, true, 0) ||
        get_float(g, arch, "rope.freq_base", &hp->rope_base, false, 10000.0f) ||
        get_float(g, arch, "attention.layer_norm_rms_epsilon", &hp->norm_eps, true, 0.0f))
        goto fail;
    if (hp->n_head % hp->n_kv_head != 0) {
        sp_error(EINVAL, "%s: %s.attention.head_count=%d is not a multiple of head_count_kv=%d", path, arch, hp->n_head,
                 hp->n_kv_head);
        goto fail;
    }
    if (hp->head_dim % 2 != 0) {
        sp_error(EINVAL, "%s: head dimension %d is odd (RoPE needs pairs)", path, hp->head_dim);
        goto fail;
    }
    const sp_gguf_tensor *te = sp_gguf_find_tensor(g, "token_embd.weight");
    if (!te) {
        sp_error(EINVAL, "%s: missing tensor 'token_embd.weight'", path);
        goto fail;
    }
    if (te->ne[1] <= 0 || te->ne[1] > (1 << 24)) {
        sp_error(EINVAL, "%s: tensor 'token_embd.weight' has %lld rows", path, (long long)te->ne[1]);
        goto fail;
    }
    hp->n_vocab = (int)te->ne[1];
    int E = hp->n_embd, Q = hp->n_head * hp->head_dim, KV = hp->n_kv_head * hp->head_dim, F = hp->n_ff, L = hp->n_layer;
    if (load_mat(g, "token_embd.weight", E, hp->n_vocab, &m->tok_embd))
        goto fail;
    hp->tied_embd = sp_gguf_find_tensor(g, "output.weight") == NULL;
    if (hp->tied_embd)
        m->output = m->tok_embd;
    else if (load_mat(g, "output.weight", E, hp->n_vocab, &m->output))
        goto fail;
    char nm[128];
    snprintf(nm, sizeof(nm), "blk.0.attn_q.bias");
    hp->qkv_bias = sp_gguf_find_tensor(g, nm) != NULL;

    size_t nvec = (size_t)E + (size_t)L * (2 * (size_t)E + (hp->qkv_bias ? (size_t)Q + 2 * (size_t)KV : 0));
    m->vecs = malloc(nvec * sizeof(float));
    m->layers = calloc((size_t)L, sizeof(sp_layer));
    if (!m->vecs || !m->layers) {
        sp_error(ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    float *cur = m->vecs;
    if (load_vec(g, "output_norm.weight", E, false, &cur, &m->output_norm))
        goto fail;
    for (int l = 0; l < L; l++) {
        sp_layer *ly = &m->layers[l];
#define NM(s) (snprintf(nm, sizeof(nm), "blk.%d." s, l), nm)
        if (load_vec(g, NM("attn_norm.weight"), E, false, &cur, &ly->attn_norm) ||
            load_vec(g, NM("ffn_norm.weight"), E, false, &cur, &ly->ffn_norm) ||
            load_mat(g, NM("attn_q.weight"), E, Q, &ly->wq) || load_mat(g, NM("attn_k.weight"), E, KV, &ly->wk) ||
            load_mat(g, NM("attn_v.weight"), E, KV, &ly->wv) || load_mat(g, NM("attn_output.weight"), Q, E, &ly->wo) ||
            load_mat(g, NM("ffn_gate.weight"), E, F, &ly->w_gate) || load_mat(g, NM("ffn_up.weight"), E, F, &ly->w_up) ||
            load_mat(g, NM("ffn_down.weight"), F, E, &ly->w_down))
            goto fail;
        if (hp->qkv_bias &&
            (load_vec(g, NM("attn_q.bias"), Q, false, &cur, &ly->bq) || load_vec(g, NM("attn_k.bias"), KV, false, &cur, &ly->bk) ||
             load_vec(g, NM("attn_v.bias"), KV, false, &cur, &ly->bv)))
            goto fail;
#undef NM
    }
    return m;

fail:
    sp_model_free(m);
    return NULL;
}

void sp_model_free(sp_model_t *m)
{
    if (!m)
        return;
    sp_gguf_close(m->g);
    free(m->layers);
    free(m->vecs);
    free(m);
}

const sp_hparams *sp_model_hparams(const sp_model_t *m)
{
    return &m->hp;
}

const sp_gguf_t *sp_model_gguf(const sp_model_t *m)
{
    return m->g;
}

/* ---- contexts ------------------------------------------------------------------------------- */

struct sp_ctx {
    const sp_model_t *m;
    sp_ctx_params p;
    int n_past;
    sp_cpu *cpu;
    sp_kvcache *kv;
    /* One allocation, carved: */
    float *mem;
    size_t mem_floats;
    float *x;        /* [chunk][n_embd] residual stream */
    float *xn;       /* [chunk][n_embd] normed input / projection output */
    float *q;        /* [chunk][n_head*head_dim] */
    float *k, *v;    /* [chunk][n_kv_head*head_dim] */
    float *att;      /* [chunk][n_head*head_dim] */
    float *gate, *up;/* [chunk][n_ff] */
    float *rope;     /* [n_ctx][head_dim] cos/sin */
    float *win;      /* [n_head][n_ctx] window scores, or NULL */
    int32_t *pos;    /* [chunk] */
    sp_ctx_stats st;
};

sp_ctx_params sp_ctx_default_params(void)
{
    sp_ctx_params p;
    memset(&p, 0, sizeof(p));
    p.kv_type = SP_KV_F16;
    p.chunk = 512;
    return p;
}

sp_ctx_t *sp_ctx_new(const sp_model_t *m, const sp_ctx_params *pp)
{
    const sp_hparams *hp = &m->hp;
    sp_ctx_params p = pp ? *pp : sp_ctx_default_params();
    if (p.n_ctx == 0)
        p.n_ctx = hp->n_ctx_train;
    if (p.n_threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = n > 0 ? (int)n : 1;
    }
    if (p.chunk == 0)
        p.chunk = 512;
    if (p.n_ctx < 1 || p.n_ctx > (1 << 22) || p.n_threads < 1 || p.n_threads > 1024 || p.chunk < 1 ||
        (p.kv_type != SP_KV_F16 && p.kv_type != SP_KV_F32) || p.n_window < 0 || p.n_window > p.chunk) {
        sp_error(EINVAL, "context: bad parameters (n_ctx=%d n_threads=%d chunk=%d kv_type=%d n_window=%d; need "
                 "1 <= n_ctx <= 4194304, n_window <= chunk)", p.n_ctx, p.n_threads, p.chunk, (int)p.kv_type, p.n_window);
        return NULL;
    }
    if (p.chunk > p.n_ctx)
        p.chunk = p.n_ctx;
    if (p.n_window > p.chunk)
        p.n_window = p.chunk;
    sp_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) {
        sp_error(ENOMEM, "context: out of memory");
        return NULL;
    }
    c->m = m;
    c->p = p;
    int E = hp->n_embd, Q = hp->n_head * hp->head_dim, KV = hp->n_kv_head * hp->head_dim, F = hp->n_ff, C = p.chunk;
    int64_t maxcols = E > Q ? E : Q;
    maxcols = F > maxcols ? F : maxcols;
    size_t tf = sp_op_matmul_scratch(maxcols), ta = sp_op_attention_thread_scratch(hp->n_head, hp->n_kv_head, hp->head_dim);
    size_t sf = sp_op_attention_shared_scratch(p.n_threads, hp->n_head, hp->head_dim, p.n_window);
    c->cpu = sp_cpu_new(p.n_threads, tf > ta ? tf : ta, sf);
    if (!c->cpu)
        goto fail;
    c->kv = sp_kvcache_new(p.kv_type, hp->n_layer, hp->n_kv_head, hp->head_dim, p.n_ctx);
    if (!c->kv)
        goto fail;
    size_t sizes[] = {
        (size_t)C * E, (size_t)C * E, (size_t)C * Q, (size_t)C * KV, (size_t)C * KV, (size_t)C * Q,
        (size_t)C * F, (size_t)C * F, (size_t)p.n_ctx * hp->head_dim,
        p.n_window ? (size_t)hp->n_head * p.n_ctx : 0, (size_t)C,
    };
    float **dst[] = { &c->x, &c->xn, &c->q, &c->k, &c->v, &c->att, &c->gate, &c->up, &c->rope, &c->win,
                      (float **)&c->pos };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += (sizes[i] + 15) & ~(size_t)15;
    c->mem = aligned_alloc(64, total * sizeof(float));
    if (!c->mem) {
        sp_error(ENOMEM, "context: cannot allocate %zu bytes of activations", total * sizeof(float));
        goto fail;
    }
    c->mem_floats = total;
    float *cur = c->mem;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *dst[i] = sizes[i] ? cur : NULL;
        cur += (sizes[i] + 15) & ~(size_t)15;
    }
    sp_rope_table_fill(c->rope, p.n_ctx, hp->head_dim, hp->rope_base);
    c->st.kv_bytes = sp_kvcache_bytes(c->kv);
    c->st.buffer_bytes = total * sizeof(float) + (size_t)p.n_threads * c->cpu->thread_floats * sizeof(float) +
                         c->cpu->shared_floats * sizeof(float);
    return c;

fail:
    sp_ctx_free(c);
    return NULL;
}

void sp_ctx_free(sp_ctx_t *c)
{
    if (!c)
        return;
    sp_cpu_free(c->cpu);
    sp_kvcache_free(c->kv);
    free(c->mem);
    free(c);
}

void sp_ctx_reset(sp_ctx_t *c)
{
    c->n_past = 0;
}

int sp_ctx_n_past(const sp_ctx_t *c)
{
    return c->n_past;
}

int sp_ctx_n_ctx(const sp_ctx_t *c)
{
    return c->p.n_ctx;
}

sp_ctx_stats sp_ctx_get_stats(const sp_ctx_t *c)
{
    return c->st;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void add_rows(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

static void add_bias(float *x, const float *b, int n, int width)
{
    if (!b)
        return;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < width; i++)
            x[(size_t)t * width + i] += b[i];
}

static int matmul(sp_ctx_t *c, const sp_wmat *w, const float *x, int n, float *y)
{
    return sp_op_matmul(c->cpu, w, x, n, (int)w->cols, y, (int)w->rows);
}

/* One chunk of n tokens at positions n_past.. ; window: produce window scores in this chunk. */
static int forward_chunk(sp_ctx_t *c, const int32_t *tok, int n, bool window, float *logits_last, float *logits_all)
{
    const sp_model_t *m = c->m;
    const sp_hparams *hp = &m->hp;
    int E = hp->n_embd, D = hp->head_dim, Q = hp->n_head * D, KV = hp->n_kv_head * D, F = hp->n_ff;
    int pos0 = c->n_past, rc;
    for (int t = 0; t < n; t++) {
        c->pos[t] = pos0 + t;
        if ((rc = sp_op_get_row(&m->tok_embd, tok[t], c->x + (size_t)t * E)) != 0)
            return rc;
    }
    if (c->p.on_hidden)
        c->p.on_hidden(c->p.hidden_user, 0, pos0, n, c->x);
    for (int l = 0; l < hp->n_layer; l++) {
        const sp_layer *ly = &m->layers[l];
        for (int t = 0; t < n; t++)
            sp_op_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, ly->attn_norm, E, hp->norm_eps);
        const sp_wmat *wqkv[3] = { &ly->wq, &ly->wk, &ly->wv };
        float *yqkv[3] = { c->q, c->k, c->v };
        int ldqkv[3] = { Q, KV, KV };
        if ((rc = sp_op_matmul_multi(c->cpu, 3, wqkv, yqkv, ldqkv, c->xn, n, E, false)) != 0)
            return rc;
        add_bias(c->q, ly->bq, n, Q);
        add_bias(c->k, ly->bk, n, KV);
        add_bias(c->v, ly->bv, n, KV);
        sp_op_rope(c->q, n, hp->n_head, D, Q, c->pos, c->rope, hp->rope_mode);
        sp_op_rope(c->k, n, hp->n_kv_head, D, KV, c->pos, c->rope, hp->rope_mode);
        if ((rc = sp_kvcache_store(c->kv, l, pos0, n, c->k, KV, c->v, KV)) != 0)
            return rc;
        sp_attn_args aa = {
            .n_q = n, .q_pos0 = pos0, .n_head = hp->n_head, .n_kv_head = hp->n_kv_head, .head_dim = D,
            .q = c->q, .ldq = Q, .out = c->att, .ldo = Q,
            .k = sp_kvcache_k(c->kv, l), .v = sp_kvcache_v(c->kv, l), .kv_type = c->kv->type,
            .kv_head_stride = c->kv->head_stride, .scale = 1.0f / sqrtf((float)D),
            .n_window = window ? (c->p.n_window < n ? c->p.n_window : n) : 0, .win = c->win, .win_ld = pos0 + n,
        };
        if ((rc = sp_op_attention(c->cpu, &aa)) != 0)
            return rc;
        if (aa.n_window > 0 && c->p.on_window)
            c->p.on_window(c->p.window_user, l, c->win, hp->n_head, pos0 + n, aa.n_window);
        if ((rc = matmul(c, &ly->wo, c->att, n, c->xn)) != 0)
            return rc;
        add_rows(c->x, c->xn, (size_t)n * E);
        for (int t = 0; t < n; t++)
            sp_op_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, ly->ffn_norm, E, hp->norm_eps);
        const sp_wmat *wgu[2] = { &ly->w_gate, &ly->w_up };
        float *ygu[2] = { c->gate, c->up };
        int ldgu[2] = { F, F };
        if ((rc = sp_op_matmul_multi(c->cpu, 2, wgu, ygu, ldgu, c->xn, n, E, true)) != 0)   /* gate = silu(gate) * up */
            return rc;
        if ((rc = matmul(c, &ly->w_down, c->gate, n, c->xn)) != 0)
            return rc;
        add_rows(c->x, c->xn, (size_t)n * E);
        if (c->p.on_hidden)
            c->p.on_hidden(c->p.hidden_user, l + 1, pos0, n, c->x);
    }
    /* Final norm: every row when someone needs them all, else only the last. */
    bool all = logits_all || c->p.on_hidden;
    int t0 = all ? 0 : n - 1;
    for (int t = t0; t < n; t++)
        sp_op_rmsnorm(c->xn + (size_t)t * E, c->x + (size_t)t * E, m->output_norm, E, hp->norm_eps);
    if (c->p.on_hidden)
        c->p.on_hidden(c->p.hidden_user, hp->n_layer + 1, pos0, n, c->xn);
    if (logits_all && (rc = matmul(c, &m->output, c->xn, n, logits_all)) != 0)
        return rc;
    if (logits_last) {
        if (logits_all)
            memcpy(logits_last, logits_all + (size_t)(n - 1) * hp->n_vocab, sizeof(float) * hp->n_vocab);
        else if ((rc = matmul(c, &m->output, c->xn + (size_t)(n - 1) * E, 1, logits_last)) != 0)
            return rc;
    }
    c->n_past += n;
    return 0;
}

static int check_tokens(const sp_ctx_t *c, const int32_t *tok, int n)
{
    if (n <= 0 || !tok)
        return sp_error(EINVAL, "context: empty token list (n=%d)", n);
    if ((int64_t)c->n_past + n > c->p.n_ctx)
        return sp_error(ERANGE, "context: %d tokens + %d already in context exceed n_ctx=%d (the context limit)", n,
                        c->n_past, c->p.n_ctx);
    for (int t = 0; t < n; t++)
        if (tok[t] < 0 || tok[t] >= c->m->hp.n_vocab)
            return sp_error(EINVAL, "context: token id %d at index %d is outside the vocabulary [0, %d)", tok[t], t,
                            c->m->hp.n_vocab);
    return 0;
}

int sp_ctx_prefill(sp_ctx_t *c, const int32_t *tok, int n, float *logits_last, float *logits_all)
{
    int rc = check_tokens(c, tok, n);
    if (rc)
        return rc;
    double t0 = now_s();
    int start = c->n_past, W = c->p.n_window;
    for (int done = 0; done < n;) {
        int take = n - done < c->p.chunk ? n - done : c->p.chunk;
        int rest = n - done - take;
        if (rest > 0 && rest < W)      /* keep >= n_window tokens for the last chunk */
            take = n - done - W;
        bool last = done + take == n;
        rc = forward_chunk(c, tok + done, take, last && W > 0, last ? logits_last : NULL,
                           logits_all ? logits_all + (size_t)done * c->m->hp.n_vocab : NULL);
        if (rc) {
            c->n_past = start;         /* the cache rows written so far are simply overwritten later */
            return rc;
        }
        done += take;
        if (c->p.on_progress)
            c->p.on_progress(c->p.progress_user, done, n);
    }
    c->st.prefill_s += now_s() - t0;
    c->st.prefill_tokens += n;
    return 0;
}

int sp_ctx_decode(sp_ctx_t *c, int32_t tok, float *logits)
{
    int rc = check_tokens(c, &tok, 1);
    if (rc)
        return rc;
    double t0 = now_s();
    rc = forward_chunk(c, &tok, 1, false, logits, NULL);
    c->st.decode_s += now_s() - t0;
    c->st.decode_tokens += rc == 0;
    return rc;
}

/* ---- KV compression (interface first; the implementation follows in the next commits) -------- */

int sp_ctx_set_policy(sp_ctx_t *c, const sp_kv_opts *o)
{
    (void)c;
    (void)o;
    return sp_error(ENOSYS, "context: KV compression is not wired into the model yet");
}

int sp_ctx_set_kv_provider(sp_ctx_t *c, const sp_kv_provider *p)
{
    (void)c;
    (void)p;
    return sp_error(ENOSYS, "context: KV providers are not wired into the model yet");
}

int sp_ctx_recompress(sp_ctx_t *c, const sp_kv_opts *o)
{
    (void)c;
    (void)o;
    return sp_error(ENOSYS, "context: recompress is not wired into the model yet");
}

int sp_ctx_kv_stats(sp_ctx_t *c, sp_kv_stats *st)
{
    (void)c;
    memset(st, 0, sizeof *st);
    return sp_error(ENOSYS, "context: KV stats are not wired into the model yet");
}
