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

#include "backend.h"
#include "dequant.h"
#include "fp16.h"
#include "kv_budget.h"
#include "kv_device.h"
#include "kv_segment.h"
#include "kv_select.h"
#include "kv_target.h"
#include "kvcache.h"
#include "segment_attn.h"
#include "sp_alloc.h"
#include "sp_error.h"
#include "sp_time.h"

#include "model_internal.h"
#include "sampler.h"
#include "weights_device.h"

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
    sp_model_t *m = sp_calloc(1, sizeof(*m));
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
    m->n_vecs = nvec;
    m->vecs = sp_malloc(nvec * sizeof(float));
    m->layers = sp_calloc((size_t)L, sizeof(sp_layer));
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
    sp_backend_t *be;        /* every op of the forward pass and of decode attention runs here */
    size_t be_scratch_bytes; /* the backend's kernel scratch (thread + shared floats) */
    sp_kvcache *kv;
    /* ---- device residency (a backend whose memory the host cannot read, e.g. CUDA) ----
     * Weights, activations (mem), the KV cache and the logits live in the backend's memory; the
     * host stages token ids and positions in pinned memory (stage) and reads back one int32 per
     * sampled token, or the logits when a caller asks for them. */
    bool dev;
    sp_weights_device wd;
    const sp_layer *layers;  /* m->layers, or wd.layers on a device */
    const sp_wmat *tok_embd, *output;
    const float *output_norm;
    sp_buffer_t *mem_buf;    /* dev: owns mem */
    sp_buffer_t *kv_buf;     /* dev: owns kv->k and kv->v */
    sp_buffer_t *stage;      /* dev: pinned [chunk] ids, [chunk] positions, [1] sampled token */
    sp_event_t *stage_ev;    /* dev: the last copy out of (or into) stage has completed */
    int32_t *ids;            /* dev: [chunk] token ids, device */
    float *logits_dev;       /* dev: [n_vocab], the last row's logits */
    sp_buffer_t *logits_rows_buf; /* dev: [logits_rows][n_vocab], made on the first logits_all request */
    int logits_rows;
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
    float *win;      /* [n_head][n_ctx] window scores */
    int32_t *pos;    /* [chunk] */
    float *attx;     /* [chunk][n_head*head_dim] output of the extra score passes (discarded) */
    float *winw;     /* [chunk] PyramidInfer row weights */
    sp_ctx_stats st;

    /* ---- KV compression (see the DESIGN note at sp_ctx_kv_begin) ---- */
    bool kv_on;              /* a policy other than full is set */
    sp_kv_opts kvo;          /* the options of the current segments (or of the next compression) */
    int nwin;                /* rows of window scores the last prefill chunk emits */
    bool has_prov;
    bool probing;            /* a byte-target probe: host segments only, nothing placed on a device */
    sp_kv_provider prov;
    int mode;                /* KV_PLAIN, KV_CAPTURE (first prefill under a policy), KV_SEG */
    int64_t l0;              /* prompt length of the compression */
    /* captured prefill state, [0, l0): kept after compression only with keep_prefill_state */
    bool have_state;
    int64_t st_cap;          /* tokens the state arrays hold */
    int st_window;           /* window (l_w) the window scores were taken with */
    uint16_t *kpre;          /* [n_layer][n_kv_head][st_cap][head_dim] fp16 pre-RoPE K */
    float *sc_win;           /* [n_layer][n_head][st_cap] window scores */
    float *sc_col;           /* [n_layer][n_head][st_cap] full causal column sums (h2o) or NULL */
    float *sc_pinf;          /* [n_layer][st_cap] PyramidInfer scores or NULL */
    sp_policy_kind st_policy; /* the policy the state was captured under */
    /* segments */
    sp_kv_segment *seg;      /* [n_layer]: owned (no provider) or views on acquired bytes */
    sp_kv_tail *tail;        /* [n_layer] decode tails, capacity n_ctx - l0 */
    float *work;             /* [n_threads][work_floats] segment attention scratch */
    size_t work_floats;
    sp_kv_layer_stats *lst;  /* [n_layer] for sp_ctx_kv_stats */
    double compress_s, scores_s;
    /* target = bytes: the token-share knob the search chose and what it measured at l0 */
    double kv_knob, kv_achieved;
    int kv_probes;
    bool kv_hit;
    double attn_s;           /* attention time of one-token chunks (decode) */
    /* ---- KV compression on a device: the capture and the segments in device memory ----
     * kpre lives in kpre_buf (fp16, same layout); window scores are read back per layer during the
     * prefill; score pooling, top-k and the codebooks run on the device over staged copies, the
     * segment is assembled on the host; each layer's segment and tail are then placed in device
     * buffers (dl, or the provider's device tier and slots) and decode appends and attends there. */
    sp_buffer_t *kpre_buf;   /* dev: [n_layer][n_kv_head][st_cap][head_dim] fp16 pre-RoPE K */
    float *win_h;            /* dev: host copy of window scores [n_head][n_ctx] */
    float *winw_h;           /* dev: host PyramidInfer row weights [chunk], copied to winw */
    sp_kv_dev_layer *dl;     /* dev: [n_layer] */
};

enum { KV_PLAIN = 0, KV_CAPTURE = 1, KV_SEG = 2 };

/* The fp16 (fp32) cache in the backend's memory: host memory on the CPU, one device buffer else. */
static int kv_cache_alloc(sp_ctx_t *c)
{
    const sp_hparams *hp = &c->m->hp;
    if (!c->dev) {
        c->kv = sp_kvcache_new(c->p.kv_type, hp->n_layer, hp->n_kv_head, hp->head_dim, c->p.n_ctx);
        return c->kv ? 0 : -ENOMEM;
    }
    sp_kvcache *kv = sp_calloc(1, sizeof *kv);
    if (!kv)
        return sp_error(ENOMEM, "context: out of memory");
    size_t half = sp_kvcache_layout(kv, c->p.kv_type, hp->n_layer, hp->n_kv_head, hp->head_dim, c->p.n_ctx);
    c->kv_buf = sp_backend_buffer_alloc(c->be, SP_MEM_DEVICE, 2 * half, NULL);
    if (!c->kv_buf) {
        free(kv);
        return sp_error(ENOMEM, "context: the KV cache (%.1f MiB for n_ctx=%d) does not fit on %s: lower "
                        "[runtime] n_ctx", 2.0 * (double)half / 1048576.0, c->p.n_ctx, sp_backend_name(c->be));
    }
    kv->k = sp_backend_buffer_base(c->kv_buf);
    kv->v = (char *)kv->k + half;
    c->kv = kv;
    return 0;
}

static void kv_cache_release(sp_ctx_t *c)
{
    if (!c->dev) {
        sp_kvcache_free(c->kv);
    } else {
        sp_backend_buffer_free(c->kv_buf);
        free(c->kv);
        c->kv_buf = NULL;
    }
    c->kv = NULL;
}

/* On a device: the weights once, the staging buffer and its event. What the device path does not
 * do yet is refused here, by name. */
static int device_begin(sp_ctx_t *c)
{
    const sp_hparams *hp = &c->m->hp;
    if (c->p.on_hidden || c->p.on_window)
        return sp_error(ENOTSUP, "context: hidden-state and window-score callbacks need the cpu backend");
    int rc = sp_weights_device_upload(&c->wd, c->m, c->be, NULL);
    if (rc < 0)
        return rc;
    c->layers = c->wd.layers;
    c->tok_embd = &c->wd.tok_embd;
    c->output = &c->wd.output;
    c->output_norm = c->wd.output_norm;
    c->stage = sp_backend_buffer_alloc(c->be, SP_MEM_HOST_PINNED, (2 * (size_t)c->p.chunk + 1) * sizeof(int32_t), NULL);
    c->stage_ev = sp_backend_event_new(c->be);
    c->win_h = sp_malloc(sizeof(float) * (size_t)hp->n_head * (size_t)c->p.n_ctx);
    c->winw_h = sp_malloc(sizeof(float) * (size_t)c->p.chunk);
    c->dl = sp_calloc((size_t)hp->n_layer, sizeof *c->dl);
    return c->stage && c->stage_ev && c->win_h && c->winw_h && c->dl ? 0 : -ENOMEM;
}

static int32_t *stage_ids(sp_ctx_t *c) { return sp_backend_buffer_base(c->stage); }
static int32_t *stage_pos(sp_ctx_t *c) { return stage_ids(c) + c->p.chunk; }
static int32_t *stage_token(sp_ctx_t *c) { return stage_ids(c) + 2 * c->p.chunk; }

/* Before the host writes stage: the previous copy out of it must be done. In decode it always is
 * (reading the sampled token waited for it), so this costs no synchronisation there. */
static int stage_wait(sp_ctx_t *c)
{
    return sp_backend_event_done(c->be, c->stage_ev) ? 0 : sp_backend_event_sync(c->be, c->stage_ev);
}

/* The RoPE table, computed on the host and copied once to a device. */
static int rope_table_init(sp_ctx_t *c)
{
    const sp_hparams *hp = &c->m->hp;
    size_t nf = (size_t)c->p.n_ctx * hp->head_dim;
    float *t = c->dev ? sp_malloc(nf * sizeof(float)) : c->rope;
    if (!t)
        return sp_error(ENOMEM, "context: out of memory");
    if (c->p.numerics == SP_NUMERICS_GGML)
        sp_rope_table_fill_ggml(t, c->p.n_ctx, hp->head_dim, hp->rope_base);
    else
        sp_rope_table_fill(t, c->p.n_ctx, hp->head_dim, hp->rope_base);
    int rc = 0;
    if (c->dev) {
        rc = sp_backend_buffer_set(c->mem_buf, (size_t)((char *)c->rope - (char *)c->mem), t, nf * sizeof(float));
        free(t);
    }
    return rc;
}

/* Sizes the backend's attention scratch for the last position of the context, so that decode never
 * grows it (growing waits for the device). */
static int device_reserve(sp_ctx_t *c)
{
    const sp_hparams *hp = &c->m->hp;
    sp_attn_desc last = {.n_q = 1, .q_pos0 = c->p.n_ctx - 1, .n_head = hp->n_head, .n_kv_head = hp->n_kv_head,
                         .head_dim = hp->head_dim};
    sp_attn_desc chunk = last;
    chunk.n_q = c->p.chunk;
    chunk.q_pos0 = c->p.n_ctx - c->p.chunk;
    chunk.n_window = c->p.n_window;
    int rc = sp_backend_reserve(c->be, SP_OP_ATTN_DECODE, &last);
    return rc < 0 ? rc : sp_backend_reserve(c->be, SP_OP_ATTN_PREFILL, &chunk);
}

sp_ctx_params sp_ctx_default_params(void)
{
    sp_ctx_params p;
    memset(&p, 0, sizeof(p));
    p.kv_type = SP_KV_F16;
    p.numerics = SP_NUMERICS_GGML;
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
        (p.kv_type != SP_KV_F16 && p.kv_type != SP_KV_F32) || p.n_window < 0 || p.n_window > p.chunk ||
        (p.numerics != SP_NUMERICS_GGML && p.numerics != SP_NUMERICS_EXACT)) {
        sp_error(EINVAL, "context: bad parameters (n_ctx=%d n_threads=%d chunk=%d kv_type=%d n_window=%d; need "
                 "1 <= n_ctx <= 4194304, n_window <= chunk)", p.n_ctx, p.n_threads, p.chunk, (int)p.kv_type, p.n_window);
        return NULL;
    }
    sp_kv_opts kvo;
    sp_kv_opts_defaults(&kvo);
    bool kv_on = false;
    if (p.kv_opts) {
        kvo = *p.kv_opts;
        if (sp_kv_opts_validate_relaxed(&kvo, hp->n_layer, 0) < 0)
            return NULL;
        kv_on = kvo.policy != SP_POLICY_FULL;
        if (kv_on && p.n_window && p.n_window != kvo.window) {
            sp_error(EINVAL, "context: n_window=%d differs from the compression window %lld (set n_window to 0 "
                     "or to the window)", p.n_window, (long long)kvo.window);
            return NULL;
        }
        /* The window scores come from the last prefill chunk, which must hold the whole window. */
        if (kv_on && kvo.window > p.chunk)
            p.chunk = kvo.window > p.n_ctx ? p.n_ctx : (int)kvo.window;
    }
    p.kv_opts = NULL;
    if (p.chunk > p.n_ctx)
        p.chunk = p.n_ctx;
    if (p.n_window > p.chunk)
        p.n_window = p.chunk;
    sp_ctx_t *c = sp_calloc(1, sizeof(*c));
    if (!c) {
        sp_error(ENOMEM, "context: out of memory");
        return NULL;
    }
    c->m = m;
    c->p = p;
    c->kvo = kvo;
    c->kv_on = kv_on;
    c->nwin = kv_on ? (int)(kvo.window < p.chunk ? kvo.window : p.chunk) : p.n_window;
    int E = hp->n_embd, Q = hp->n_head * hp->head_dim, KV = hp->n_kv_head * hp->head_dim, F = hp->n_ff, C = p.chunk;
    int64_t maxcols = E > Q ? E : Q;
    maxcols = F > maxcols ? F : maxcols;
    size_t tf = sp_op_matmul_scratch(maxcols), ta = sp_op_attention_thread_scratch(hp->n_head, hp->n_kv_head, hp->head_dim);
    /* Window scores of up to a whole chunk (the h2o / PyramidInfer score passes use every row). */
    size_t sf = sp_op_attention_shared_scratch(p.n_threads, hp->n_head, hp->head_dim, p.chunk);
    sp_backend_params bp = sp_backend_default_params();
    bp.n_threads = p.n_threads;
    bp.numerics = p.numerics;
    bp.thread_floats = tf > ta ? tf : ta;
    bp.shared_floats = sf;
    bp.accum_floats = (size_t)C * E;   /* the residual products (wo, w_down) accumulate into x */
    c->be = sp_backend_create(p.backend, &bp);
    if (!c->be)
        goto fail;
    c->dev = sp_backend_get_kind(c->be) != SP_BACKEND_CPU;
    c->layers = m->layers;
    c->tok_embd = &m->tok_embd;
    c->output = &m->output;
    c->output_norm = m->output_norm;
    if (c->dev && device_begin(c) < 0)
        goto fail;
    c->be_scratch_bytes = c->dev ? 0 : ((size_t)p.n_threads * bp.thread_floats + bp.shared_floats) * sizeof(float);
    if (kv_cache_alloc(c) < 0)
        goto fail;
    size_t sizes[] = {
        (size_t)C * E, (size_t)C * E, (size_t)C * Q, (size_t)C * KV, (size_t)C * KV, (size_t)C * Q,
        (size_t)C * F, (size_t)C * F, (size_t)p.n_ctx * hp->head_dim, (size_t)hp->n_head * p.n_ctx, (size_t)C,
        (size_t)C * Q, (size_t)C, c->dev ? (size_t)C : 0, c->dev ? (size_t)hp->n_vocab : 0,
    };
    float **dst[] = { &c->x, &c->xn, &c->q, &c->k, &c->v, &c->att, &c->gate, &c->up, &c->rope, &c->win,
                      (float **)&c->pos, &c->attx, &c->winw, (float **)&c->ids, &c->logits_dev };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += (sizes[i] + 15) & ~(size_t)15;
    if (c->dev) {
        c->mem_buf = sp_backend_buffer_alloc(c->be, SP_MEM_DEVICE, total * sizeof(float), NULL);
        c->mem = c->mem_buf ? sp_backend_buffer_base(c->mem_buf) : NULL;
    } else {
        c->mem = sp_aligned_alloc(64, total * sizeof(float));
    }
    if (!c->mem) {
        sp_error(ENOMEM, "context: cannot allocate %zu bytes of activations", total * sizeof(float));
        goto fail;
    }
    c->mem_floats = total;
    c->seg = sp_calloc((size_t)hp->n_layer, sizeof *c->seg);
    c->tail = sp_calloc((size_t)hp->n_layer, sizeof *c->tail);
    c->lst = sp_calloc((size_t)hp->n_layer, sizeof *c->lst);
    if (!c->seg || !c->tail || !c->lst) {
        sp_error(ENOMEM, "context: out of memory");
        goto fail;
    }
    float *cur = c->mem;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *dst[i] = sizes[i] ? cur : NULL;
        cur += (sizes[i] + 15) & ~(size_t)15;
    }
    if (rope_table_init(c) < 0)
        goto fail;
    if (c->dev && device_reserve(c) < 0)
        goto fail;
    c->st.kv_bytes = sp_kvcache_bytes(c->kv);
    c->st.buffer_bytes = total * sizeof(float) + c->be_scratch_bytes;
    c->st.weights_device_bytes = c->dev ? c->wd.bytes : 0;
    return c;

fail:
    sp_ctx_free(c);
    return NULL;
}

static void kv_drop_segments(sp_ctx_t *c);
static void kv_drop_state(sp_ctx_t *c);

void sp_ctx_free(sp_ctx_t *c)
{
    if (!c)
        return;
    kv_drop_segments(c);
    kv_drop_state(c);
    free(c->seg);
    free(c->tail);
    free(c->lst);
    kv_cache_release(c);
    if (c->dev) {
        sp_backend_buffer_free(c->logits_rows_buf);
        sp_backend_buffer_free(c->mem_buf);
        sp_backend_buffer_free(c->stage);
        sp_backend_event_free(c->stage_ev);
        sp_weights_device_free(&c->wd);
        free(c->win_h);
        free(c->winw_h);
        free(c->dl);
    } else {
        free(c->mem);
    }
    sp_backend_free(c->be);
    free(c);
}

void sp_ctx_reset(sp_ctx_t *c)
{
    c->n_past = 0;
    kv_drop_segments(c);
    kv_drop_state(c);
    c->mode = KV_PLAIN;
}

sp_backend_t *sp_ctx_backend(const sp_ctx_t *c) { return c ? c->be : NULL; }

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

/* The ops of the forward pass, through the backend (backend.h). */

static int norm_rows(sp_ctx_t *c, float *y, const float *x, const float *w, int rows, int n, float eps)
{
    sp_rmsnorm_desc d = {.n_rows = rows, .n = n, .x = x, .ldx = n, .y = y, .ldy = n, .w = w, .eps = eps};
    return sp_backend_rmsnorm(c->be, &d);
}

/* y (+)= x W^T for n rows (row strides: W's cols for x, W's rows for y). */
static int matmul(sp_ctx_t *c, const sp_wmat *w, const float *x, int n, float *y, bool accumulate)
{
    sp_matmul_desc d = {.nw = 1, .w = {w}, .y = {y}, .ldy = {(int)w->rows}, .x = x, .n = n, .ldx = (int)w->cols,
                        .accumulate = accumulate};
    return sp_backend_matmul(c->be, &d);
}

static int rope(sp_ctx_t *c, float *x, int n, int n_heads, int ld)
{
    const sp_hparams *hp = &c->m->hp;
    sp_rope_desc d = {.x = x, .n_tok = n, .n_heads = n_heads, .head_dim = hp->head_dim, .ld = ld, .pos = c->pos,
                      .table = c->rope, .table_n_pos = c->p.n_ctx, .mode = hp->rope_mode};
    return sp_backend_rope(c->be, &d);
}

/* A single query without window scores is the decode kernel; anything else the prefill one. */
static int attention(sp_ctx_t *c, const sp_attn_desc *a)
{
    return a->n_q == 1 && a->n_window == 0 ? sp_backend_attn_decode(c->be, a) : sp_backend_attn_prefill(c->be, a);
}

/* ---- KV compression: capture during the first prefill ----------------------------------------
 *
 * DESIGN
 * - Modes: KV_PLAIN is the uncompressed fast path (no policy, policy full, or after
 *   sp_ctx_recompress with policy full). KV_CAPTURE is the first prefill under a policy: the forward
 *   pass is exactly the plain one (attention over the full fp16 cache), and on the side it keeps
 *   the fp16 pre-RoPE K, the window scores of the last l_w rows (emitted by the last chunk's
 *   attention pass) and, when the policy or keep_prefill_state needs them, the full causal column
 *   sums (h2o) and PyramidInfer's weighted scores (extra score passes of the attention op whose
 *   outputs are discarded). After the last chunk every layer is compressed at once: zigzag needs
 *   all layers' scores before any budget is final (DESIGN §4.5), and the others lose nothing by
 *   waiting since the full cache is resident during prefill anyway. KV_SEG: tokens go to the
 *   per-layer tail and attend over segment + tail.
 * - Memory: the full cache, pre-RoPE K and scores are freed right after compression unless
 *   keep_prefill_state; the tails are sized once (n_ctx - prompt) so decode never allocates.
 */

static int capture_kpre(sp_ctx_t *c, int layer, int n, int pos0)
{
    const sp_hparams *hp = &c->m->hp;
    int D = hp->head_dim, KV = hp->n_kv_head * D;
    if (c->dev) {   /* stays on the device: a K-only store into kpre_buf */
        uint16_t *base = sp_backend_buffer_base(c->kpre_buf);
        sp_kv_store_desc st = {.n = n, .pos0 = pos0, .n_pos = (int)c->st_cap, .n_kv_head = hp->n_kv_head,
                               .head_dim = D, .k = c->k, .ldk = KV,
                               .k_dst = base + (size_t)layer * hp->n_kv_head * (size_t)c->st_cap * D,
                               .head_stride = (size_t)c->st_cap * D, .kv_type = SP_KV_F16};
        return sp_backend_kv_store(c->be, &st);
    }
    for (int g = 0; g < hp->n_kv_head; g++) {
        uint16_t *dst = c->kpre + (((size_t)layer * hp->n_kv_head + g) * c->st_cap + pos0) * D;
        for (int t = 0; t < n; t++)
            for (int i = 0; i < D; i++)
                dst[(size_t)t * D + i] = sp_f32_to_fp16(c->k[(size_t)t * KV + g * D + i]);
    }
    return 0;
}

/* The window scores of the last attention pass, [n_head][nk], where the host can read them: c->win
 * itself, or on a device a copy waited for (prefill only). NULL on error. */
static const float *win_on_host(sp_ctx_t *c, int nk)
{
    if (!c->dev)
        return c->win;
    size_t off = (size_t)((char *)c->win - (char *)c->mem), bytes = sizeof(float) * (size_t)c->m->hp.n_head * nk;
    if (sp_backend_copy_d2h(c->be, SP_STREAM_COMPUTE, c->win_h, c->mem_buf, off, bytes) < 0 ||
        sp_backend_stream_sync(c->be, SP_STREAM_COMPUTE) < 0)
        return NULL;
    return c->win_h;
}

/* After the chunk's attention (aa): keep the window scores (last chunk) and run the extra passes. */
static int capture_scores(sp_ctx_t *c, int layer, const sp_attn_desc *aa)
{
    const sp_hparams *hp = &c->m->hp;
    int H = hp->n_head, n = aa->n_q, pos0 = aa->q_pos0, nk = pos0 + n, rc;
    size_t cap = (size_t)c->st_cap;
    const float *win;
    if (aa->n_window > 0) {
        if (!(win = win_on_host(c, nk)))
            return -EIO;
        for (int h = 0; h < H; h++)
            memcpy(c->sc_win + ((size_t)layer * H + h) * cap, win + (size_t)h * nk, sizeof(float) * nk);
    }
    if (!c->sc_col && !c->sc_pinf)
        return 0;
    double t0 = sp_now_s();
    sp_attn_desc x = *aa;
    x.out = c->attx;
    x.win = c->win;
    x.win_ld = nk;
    if (c->sc_col) {             /* every row of every chunk: the full causal column sums */
        x.n_window = n;
        x.win_w = NULL;
        if ((rc = attention(c, &x)) != 0)
            return rc;
        if (!(win = win_on_host(c, nk)))
            return -EIO;
        for (int h = 0; h < H; h++) {
            float *dst = c->sc_col + ((size_t)layer * H + h) * cap;
            const float *src = win + (size_t)h * nk;
            for (int j = 0; j < nk; j++)
                dst[j] += src[j];
        }
    }
    int64_t l = c->st_cap, nq = (l + 4) / 5, first = l - nq; /* last ceil(0.2 l) rows */
    if (c->sc_pinf && nk > first) {
        int r = (int)(nk - (pos0 > first ? pos0 : first));
        float *ww = c->dev ? c->winw_h : c->winw;
        for (int i = 0; i < r; i++) {
            int64_t t = nk - r + i - first;
            ww[i] = nq > 1 ? 1.0f + 0.2f * (float)t / (float)(nq - 1) : 1.0f;
        }
        size_t ww_off = (size_t)((char *)c->winw - (char *)c->mem);
        if (c->dev && (rc = sp_backend_copy_h2d(c->be, SP_STREAM_COMPUTE, c->mem_buf, ww_off, ww, sizeof(float) * r)) < 0)
            return rc;
        x.n_window = r;
        x.win_w = c->winw;
        if ((rc = attention(c, &x)) != 0)
            return rc;
        if (!(win = win_on_host(c, nk)))   /* also the wait that frees winw_h for the next layer */
            return -EIO;
        float *dst = c->sc_pinf + (size_t)layer * cap, inv = 1.0f / (float)H;
        for (int h = 0; h < H; h++) {
            const float *src = win + (size_t)h * nk;
            for (int j = 0; j < nk; j++)
                dst[j] += src[j] * inv;
        }
    }
    c->scores_s += sp_now_s() - t0;
    return 0;
}

/* ---- KV compression: attention over segment + tail ------------------------------------------ */

/* The segment of `layer` for this step: resident, or acquired from the provider and opened as a
 * view (no allocation). */
static int seg_acquire(sp_ctx_t *c, int layer, const sp_kv_segment **out)
{
    if (!c->has_prov) {
        *out = &c->seg[layer];
        return 0;
    }
    const void *bytes = NULL;
    size_t size = 0;
    int rc = c->prov.acquire(c->prov.user, layer, &bytes, &size);
    if (rc < 0)
        return rc;
    const sp_kv_segment *v = c->prov.view ? c->prov.view(c->prov.user, layer) : NULL;
    if (v) {
        /* the header was parsed when the layer was placed; only the bytes' address is new */
        sp_kv_segment_view_at(&c->seg[layer], v, bytes);
    } else if (c->prov.view) {
        c->prov.release(c->prov.user, layer);
        return sp_error(EINVAL, "context: the KV provider has no view of layer %d", layer);
    } else if ((rc = sp_kv_segment_open(&c->seg[layer], bytes, size, false)) < 0) {
        c->prov.release(c->prov.user, layer);
        return rc;
    }
    *out = &c->seg[layer];
    return 0;
}

static int seg_release(sp_ctx_t *c, int layer)
{
    return c->has_prov ? c->prov.release(c->prov.user, layer) : 0;
}

/* n tokens of one layer, one after the other (each appends to the tail, then attends over the
 * segment, the tail so far and itself). c->k holds pre-RoPE K, c->q rotated queries. */
static int seg_attention(sp_ctx_t *c, int layer, int n, int pos0)
{
    const sp_hparams *hp = &c->m->hp;
    int D = hp->head_dim, Q = hp->n_head * D, KV = hp->n_kv_head * D;
    const sp_kv_segment *seg;
    int rc = 0;
    if (c->dev) {
        /* kept here (dl->seg) or the provider's copy in device memory (a resident layer or the slot
         * it was streamed into); the host view is the one parsed at placement */
        sp_kv_dev_layer *dl = &c->dl[layer];
        const void *bytes = sp_kv_dev_seg_bytes(dl);
        seg = &c->seg[layer];
        if (c->has_prov) {
            size_t size = 0;
            const sp_kv_segment *v = c->prov.view ? c->prov.view(c->prov.user, layer) : NULL;
            if (!v)
                return sp_error(EINVAL, "context: the KV provider has no view of layer %d (a device backend needs "
                                "one: it never reads segment bytes on the host)", layer);
            if ((rc = c->prov.acquire(c->prov.user, layer, &bytes, &size)) < 0)
                return rc;
            sp_kv_segment_view_at(&c->seg[layer], v, bytes);
        }
        size_t pos_off = (size_t)((char *)c->pos - (char *)c->mem);
        for (int t = 0; t < n && rc == 0; t++) {
            if ((rc = sp_kv_dev_append(c->be, dl, seg, bytes, &c->tail[layer], c->k + (size_t)t * KV,
                                       c->v + (size_t)t * KV, c->mem_buf, pos_off + sizeof(int32_t) * t, pos0 + t)) < 0)
                break;
            sp_segattn_desc d = {
                .seg = seg, .seg_bytes = bytes, .tail = &c->tail[layer],
                .tail_bytes = sp_backend_buffer_base(dl->tail), .kv_head = -1, .q = c->q + (size_t)t * Q,
                .rope_table = c->rope, .rope_n_pos = c->p.n_ctx, .mode = hp->rope_mode,
                .scale = 1.0f / sqrtf((float)D), .out = c->att + (size_t)t * Q,
            };
            rc = sp_backend_segattn(c->be, &d);
        }
        int rr = seg_release(c, layer);
        return rc < 0 ? rc : rr;
    }
    if ((rc = seg_acquire(c, layer, &seg)) < 0)
        return rc;
    for (int t = 0; t < n && rc == 0; t++) {
        rc = sp_kv_tail_append_op(c->be, seg, &c->tail[layer], c->k + (size_t)t * KV, c->v + (size_t)t * KV, pos0 + t);
        if (rc < 0)
            break;
        sp_segattn_desc d = {
            .seg = seg, .seg_bytes = seg->buf, .tail = &c->tail[layer], .tail_bytes = c->tail[layer].mem,
            .kv_head = -1, .q = c->q + (size_t)t * Q, .rope_table = c->rope, .rope_n_pos = c->p.n_ctx,
            .mode = hp->rope_mode, .scale = 1.0f / sqrtf((float)D), .out = c->att + (size_t)t * Q,
            .scratch = c->work, .scratch_floats = (size_t)c->p.n_threads * c->work_floats,
        };
        rc = sp_backend_segattn(c->be, &d);
    }
    int rr = seg_release(c, layer);
    return rc < 0 ? rc : rr;
}

/* One chunk of n tokens at positions n_past.. ; window: produce window scores in this chunk. */
/* A NaN or Inf (a corrupt weight, random bytes in tensor data) would make sampling print nothing
 * and "succeed": refuse it with a message. Checked on the final hidden state too, because the
 * quantized LM-head matmul turns a NaN activation into finite garbage. */
static int check_finite(const float *v, int n, const char *what, int pos)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return sp_error(EDOM, "the model produced a non-finite %s (%g at index %d, position %d): its "
                                  "weights hold NaN/Inf or corrupt tensor data; check the GGUF file "
                                  "(re-download it, compare its sha256)", what, (double)v[i], i, pos);
    return 0;
}

/* On a device the last row's logits always go to logits_dev (sp_ctx_sample reads them there); the
 * host gets logits only when it asks (not the decode hot path of a sampling run, which passes
 * NULL). logits_all goes a block of rows at a time through one matmul (the prefill GEMM, which
 * dequantizes the output matrix once per call: per row it was a GEMV each) into a buffer made on
 * the first such request - a whole chunk's rows, at most LOGITS_BLOCK_BYTES, at least 16 rows -
 * each block copied back and waited for; the last row is copied on the device into logits_dev, so
 * sampling sees the same numbers. */
static const size_t LOGITS_BLOCK_BYTES = (size_t)64 << 20;

static int device_logits_all(sp_ctx_t *c, int n, float *logits_all)
{
    const sp_hparams *hp = &c->m->hp;
    int E = hp->n_embd, V = hp->n_vocab, rc;
    size_t row_bytes = sizeof(float) * (size_t)V;
    if (!c->logits_rows_buf) {
        size_t fit = LOGITS_BLOCK_BYTES / row_bytes;
        c->logits_rows = fit < 16 ? 16 : fit > (size_t)c->p.chunk ? c->p.chunk : (int)fit;
        if (!(c->logits_rows_buf = sp_backend_buffer_alloc(c->be, SP_MEM_DEVICE, c->logits_rows * row_bytes, NULL)))
            return -ENOMEM;
    }
    float *rows = sp_backend_buffer_base(c->logits_rows_buf);
    for (int t0 = 0; t0 < n; t0 += c->logits_rows) {
        int nb = n - t0 < c->logits_rows ? n - t0 : c->logits_rows;
        if ((rc = matmul(c, c->output, c->xn + (size_t)t0 * E, nb, rows, false)) != 0 ||
            (rc = sp_backend_copy_d2h(c->be, SP_STREAM_COMPUTE, logits_all + (size_t)t0 * V, c->logits_rows_buf, 0,
                                      nb * row_bytes)) < 0)
            return rc;
        if (t0 + nb == n) {
            size_t lg_off = (size_t)((char *)c->logits_dev - (char *)c->mem);
            if ((rc = sp_backend_copy_d2d(c->be, SP_STREAM_COMPUTE, c->mem_buf, lg_off, c->logits_rows_buf,
                                          (size_t)(nb - 1) * row_bytes, row_bytes)) < 0)
                return rc;
        }
        if ((rc = sp_backend_stream_sync(c->be, SP_STREAM_COMPUTE)) < 0)
            return rc;
    }
    return 0;
}

static int device_logits(sp_ctx_t *c, int n, float *logits_last, float *logits_all)
{
    const sp_hparams *hp = &c->m->hp;
    int E = hp->n_embd, V = hp->n_vocab, rc;
    size_t lg_off = (size_t)((char *)c->logits_dev - (char *)c->mem);
    if (logits_all) {
        if ((rc = device_logits_all(c, n, logits_all)) != 0)
            return rc;
        if (logits_last)
            memcpy(logits_last, logits_all + (size_t)(n - 1) * V, sizeof(float) * V);
    } else {
        if ((rc = matmul(c, c->output, c->xn + (size_t)(n - 1) * E, 1, c->logits_dev, false)) != 0)
            return rc;
        if (logits_last &&
            ((rc = sp_backend_copy_d2h(c->be, SP_STREAM_COMPUTE, logits_last, c->mem_buf, lg_off, sizeof(float) * V)) < 0 ||
             (rc = sp_backend_stream_sync(c->be, SP_STREAM_COMPUTE)) < 0))
            return rc;
    }
    if (logits_last && (rc = check_finite(logits_last, V, "logit", c->n_past + n - 1)) != 0)
        return rc;
    return 0;
}

static int forward_chunk(sp_ctx_t *c, const int32_t *tok, int n, bool window, float *logits_last, float *logits_all)
{
    const sp_model_t *m = c->m;
    const sp_hparams *hp = &m->hp;
    int E = hp->n_embd, D = hp->head_dim, Q = hp->n_head * D, KV = hp->n_kv_head * D, F = hp->n_ff;
    int pos0 = c->n_past, rc;
    if (c->mode == KV_SEG && c->has_prov && (rc = c->prov.step_begin(c->prov.user)) < 0)
        return rc;
    const int32_t *ids = tok;
    if (c->dev) {
        /* ids and positions through the pinned stage, on the compute stream before the ops */
        if ((rc = stage_wait(c)) < 0)
            return rc;
        memcpy(stage_ids(c), tok, sizeof(int32_t) * n);
        for (int t = 0; t < n; t++)
            stage_pos(c)[t] = pos0 + t;
        size_t ids_off = (size_t)((char *)c->ids - (char *)c->mem), pos_off = (size_t)((char *)c->pos - (char *)c->mem);
        if ((rc = sp_backend_copy_h2d(c->be, SP_STREAM_COMPUTE, c->mem_buf, ids_off, stage_ids(c), sizeof(int32_t) * n)) < 0 ||
            (rc = sp_backend_copy_h2d(c->be, SP_STREAM_COMPUTE, c->mem_buf, pos_off, stage_pos(c), sizeof(int32_t) * n)) < 0 ||
            (rc = sp_backend_event_record(c->be, c->stage_ev, SP_STREAM_COMPUTE)) < 0)
            return rc;
        ids = c->ids;
    } else {
        for (int t = 0; t < n; t++)
            c->pos[t] = pos0 + t;
    }
    sp_get_rows_desc gr = {.w = c->tok_embd, .ids = ids, .n = n, .out = c->x, .ldo = E};
    if ((rc = sp_backend_get_rows(c->be, &gr)) != 0)
        return rc;
    if (c->p.on_hidden)
        c->p.on_hidden(c->p.hidden_user, 0, pos0, n, c->x);
    for (int l = 0; l < hp->n_layer; l++) {
        const sp_layer *ly = &c->layers[l];
        if ((rc = norm_rows(c, c->xn, c->x, ly->attn_norm, n, E, hp->norm_eps)) != 0)
            return rc;
        sp_matmul_desc qkv = {.nw = 3, .w = {&ly->wq, &ly->wk, &ly->wv}, .y = {c->q, c->k, c->v}, .ldy = {Q, KV, KV},
                              .bias = {ly->bq, ly->bk, ly->bv}, .x = c->xn, .n = n, .ldx = E};
        if ((rc = sp_backend_matmul(c->be, &qkv)) != 0 || (rc = rope(c, c->q, n, hp->n_head, Q)) != 0)
            return rc;
        double ta = n == 1 ? sp_now_s() : 0;
        if (c->mode == KV_SEG) {
            /* Compressed: keys stay pre-RoPE (the segment attention rotates them). */
            if ((rc = seg_attention(c, l, n, pos0)) != 0)
                return rc;
        } else {
            if (c->mode == KV_CAPTURE && (rc = capture_kpre(c, l, n, pos0)) != 0)
                return rc;
            if ((rc = rope(c, c->k, n, hp->n_kv_head, KV)) != 0)
                return rc;
            sp_kv_store_desc st = {.n = n, .pos0 = pos0, .n_pos = c->kv->n_ctx, .n_kv_head = hp->n_kv_head,
                                   .head_dim = D, .k = c->k, .v = c->v, .ldk = KV, .ldv = KV,
                                   .k_dst = sp_kvcache_k(c->kv, l), .v_dst = sp_kvcache_v(c->kv, l),
                                   .head_stride = c->kv->head_stride, .kv_type = c->kv->type};
            if ((rc = sp_backend_kv_store(c->be, &st)) != 0)
                return rc;
            sp_attn_desc aa = {
                .n_q = n, .q_pos0 = pos0, .n_head = hp->n_head, .n_kv_head = hp->n_kv_head, .head_dim = D,
                .q = c->q, .ldq = Q, .out = c->att, .ldo = Q,
                .k = sp_kvcache_k(c->kv, l), .v = sp_kvcache_v(c->kv, l), .kv_type = c->kv->type,
                .kv_head_stride = c->kv->head_stride, .scale = 1.0f / sqrtf((float)D),
                .n_window = window ? (c->nwin < n ? c->nwin : n) : 0, .win = c->win, .win_ld = pos0 + n,
            };
            if ((rc = attention(c, &aa)) != 0)
                return rc;
            if (aa.n_window > 0 && c->p.on_window)
                c->p.on_window(c->p.window_user, l, c->win, hp->n_head, pos0 + n, aa.n_window);
            if (c->mode == KV_CAPTURE && (rc = capture_scores(c, l, &aa)) != 0)
                return rc;
        }
        if (n == 1)
            c->attn_s += sp_now_s() - ta;
        if ((rc = matmul(c, &ly->wo, c->att, n, c->x, true)) != 0 ||   /* x += att Wo^T */
            (rc = norm_rows(c, c->xn, c->x, ly->ffn_norm, n, E, hp->norm_eps)) != 0)
            return rc;
        sp_matmul_desc gu = {.nw = 2, .w = {&ly->w_gate, &ly->w_up}, .y = {c->gate, c->up}, .ldy = {F, F},
                             .x = c->xn, .n = n, .ldx = E, .swiglu = true};           /* gate = silu(gate) * up */
        if ((rc = sp_backend_matmul(c->be, &gu)) != 0 ||
            (rc = matmul(c, &ly->w_down, c->gate, n, c->x, true)) != 0)              /* x += gate Wdown^T */
            return rc;
        if (c->p.on_hidden)
            c->p.on_hidden(c->p.hidden_user, l + 1, pos0, n, c->x);
    }
    /* Final norm: every row when someone needs them all, else only the last. */
    bool all = logits_all || c->p.on_hidden;
    int t0 = all ? 0 : n - 1;
    if ((rc = norm_rows(c, c->xn + (size_t)t0 * E, c->x + (size_t)t0 * E, c->output_norm, n - t0, E,
                        hp->norm_eps)) != 0)
        return rc;
    if (c->dev) {
        if ((rc = device_logits(c, n, logits_last, logits_all)) != 0)
            return rc;
        c->n_past += n;
        return 0;
    }
    if (c->p.on_hidden)
        c->p.on_hidden(c->p.hidden_user, hp->n_layer + 1, pos0, n, c->xn);
    if (logits_all && (rc = matmul(c, c->output, c->xn, n, logits_all, false)) != 0)
        return rc;
    if (logits_last) {
        if (logits_all)
            memcpy(logits_last, logits_all + (size_t)(n - 1) * hp->n_vocab, sizeof(float) * hp->n_vocab);
        else if ((rc = matmul(c, c->output, c->xn + (size_t)(n - 1) * E, 1, logits_last, false)) != 0)
            return rc;
        if ((rc = check_finite(c->xn + (size_t)(n - 1) * E, E, "hidden state", pos0 + n - 1)) != 0 ||
            (rc = check_finite(logits_last, hp->n_vocab, "logit", pos0 + n - 1)) != 0)
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

/* ---- KV compression: state, compression, API -------------------------------------------------- */

static void kv_drop_segments(sp_ctx_t *c)
{
    /* Either array may be missing when sp_ctx_new failed half-way. */
    for (int l = 0; l < c->m->hp.n_layer; l++) {
        if (c->seg)
            sp_kv_segment_free(&c->seg[l]);
        if (c->tail)
            sp_kv_tail_free(&c->tail[l]);
        if (c->dl)
            sp_kv_dev_free(&c->dl[l]);
    }
    free(c->work);
    c->work = NULL;
    c->work_floats = 0;
}

static void kv_drop_state(sp_ctx_t *c)
{
    free(c->kpre);
    free(c->sc_win);
    free(c->sc_col);
    free(c->sc_pinf);
    sp_backend_buffer_free(c->kpre_buf);
    c->kpre_buf = NULL;
    c->kpre = NULL;
    c->sc_win = c->sc_col = c->sc_pinf = NULL;
    c->have_state = false;
    c->st_cap = 0;
}

/* Bytes the context itself holds for KV: the fp16 cache when allocated, plus owned segments and
 * the tails (with a provider the segments are the provider's). */
static void kv_update_bytes(sp_ctx_t *c)
{
    size_t b = c->kv ? sp_kvcache_bytes(c->kv) : 0;
    if (c->mode == KV_SEG)
        for (int l = 0; l < c->m->hp.n_layer; l++)
            b += sp_kv_segment_size(&c->seg[l]) + c->tail[l].mem_bytes;
    c->st.kv_bytes = b;
}

static int kv_ensure_cache(sp_ctx_t *c)
{
    return c->kv ? 0 : kv_cache_alloc(c);
}

/* Allocate the capture state for a prompt of l tokens. */
static int kv_capture_begin(sp_ctx_t *c, int64_t l)
{
    const sp_hparams *hp = &c->m->hp;
    size_t L = (size_t)hp->n_layer, H = (size_t)hp->n_head, n = (size_t)l;
    kv_drop_state(c);
    int rc = kv_ensure_cache(c);
    if (rc)
        return rc;
    bool all = c->p.keep_prefill_state && !c->p.keep_own_scores_only;
    bool col = c->kvo.policy == SP_POLICY_H2O || all;
    bool pinf = c->kvo.policy == SP_POLICY_PYRAMIDINFER || all;
    size_t kpre_bytes = L * hp->n_kv_head * n * hp->head_dim * sizeof *c->kpre;
    if (c->dev && !(c->kpre_buf = sp_backend_buffer_alloc(c->be, SP_MEM_DEVICE, kpre_bytes, NULL)))
        return -ENOMEM;
    c->kpre = c->dev ? NULL : sp_malloc(kpre_bytes);
    c->sc_win = sp_calloc(L * H * n, sizeof *c->sc_win);
    c->sc_col = col ? sp_calloc(L * H * n, sizeof *c->sc_col) : NULL;
    c->sc_pinf = pinf ? sp_calloc(L * n, sizeof *c->sc_pinf) : NULL;
    if ((!c->kpre && !c->kpre_buf) || !c->sc_win || (col && !c->sc_col) || (pinf && !c->sc_pinf)) {
        kv_drop_state(c);
        return sp_error(ENOMEM, "context: out of memory for the prefill state of %lld tokens", (long long)l);
    }
    c->st_cap = l;
    c->st_window = (int)c->kvo.window;
    c->st_policy = c->kvo.policy;
    c->scores_s = 0;
    return 0;
}

/* compression.code_fallback: a coded segment that is not smaller than the same selection stored raw
 * (few merges: every entry costs its fp16 vector plus an index and a magnitude per token) is
 * replaced by the raw one, which is exact. Counted in true bytes, the tail empty. */
static int kv_code_fallback(sp_backend_t *be, sp_kv_segment *seg, int layer, const float *kf, const float *vf, int D,
                            const sp_kv_selection *sel, const sp_kv_code_opts *co)
{
    sp_kv_code_opts raw_co = *co;
    raw_co.coded = false;
    sp_kv_segment raw = {0};
    int rc = sp_kv_segment_build_opts(be, &raw, layer, kf, vf, D, sel, &raw_co, NULL);
    if (rc < 0)
        return rc;
    sp_kv_seg_stats sc, sr;
    sp_kv_segment_stats(seg, NULL, &sc);
    sp_kv_segment_stats(&raw, NULL, &sr);
    if (sr.bytes_content <= sc.bytes_content) {
        sp_kv_segment_free(seg);
        *seg = raw;
    } else {
        sp_kv_segment_free(&raw);
    }
    return 0;
}

/* Build every layer's segment (and an empty tail) from the captured state under o. */
static int kv_compress(sp_ctx_t *c, const sp_kv_opts *o)
{
    const sp_hparams *hp = &c->m->hp;
    int L = hp->n_layer, H = hp->n_head, KVH = hp->n_kv_head, D = hp->head_dim, G = H / KVH;
    int64_t l = c->l0, cap = c->st_cap, tcap = c->p.n_ctx - l;
    double t0 = sp_now_s();
    int rc = sp_kv_opts_validate_relaxed(o, L, l);
    if (rc < 0)
        return rc;
    kv_drop_segments(c);
    c->mode = KV_PLAIN;
    sp_kv_selection sel, prev;
    memset(&sel, 0, sizeof sel);
    memset(&prev, 0, sizeof prev);
    bool *evict = sp_malloc((size_t)L * 2 * sizeof *evict);
    int64_t *kept = sp_malloc((size_t)L * sizeof *kept);
    double *U = sp_calloc((size_t)L, sizeof *U);
    float *kf = sp_malloc((size_t)KVH * (size_t)l * D * sizeof *kf), *vf = sp_malloc((size_t)KVH * (size_t)l * D * sizeof *vf);
    size_t wf = 0, kv_elt = c->kv->type == SP_KV_F16 ? 2 : 4, kv_layer = (size_t)KVH * c->kv->head_stride * kv_elt;
    /* on a device: one layer's pre-RoPE K and V read back; the selection's score pooling and top-k and
     * the codebooks run on the device over staged copies (backend_stage.h), the segment is
     * assembled here and placed back */
    void *kh = c->dev ? sp_malloc((size_t)KVH * (size_t)cap * D * sizeof(uint16_t)) : NULL;
    void *vh = c->dev ? sp_malloc(kv_layer) : NULL;
    sp_backend_t *be_sel = c->be;
    if (!evict || !kept || !U || !kf || !vf || (c->dev && (!kh || !vh))) {
        rc = sp_error(ENOMEM, "kv compress: out of memory for %lld tokens", (long long)l);
        goto out;
    }
    if ((rc = sp_kv_opts_layer_masks(o, L, evict, evict + L)) < 0)
        goto out;
    if (o->policy != SP_POLICY_FULL && o->policy != SP_POLICY_PYRAMIDINFER &&
        sp_kv_opts_allocator(o) == SP_ALLOCATOR_ZIGZAG)
        for (int i = 0; i < L; i++) {
            /* U over the whole window-score row of each head (the attention mass per key). */
            U[i] = sp_kv_zigzag_u(c->sc_win + (size_t)i * H * cap, H, l, o->zigzag_tau);
            if (U[i] < 0) {
                rc = (int)U[i];
                goto out;
            }
        }
    if ((rc = sp_kv_budget_compute(o, l, L, U, kept)) < 0)
        goto out;
    for (int i = 0; i < L; i++) {
        if ((rc = sp_kv_selection_init(&sel, H, KVH, l, o->window)) < 0)
            goto out;
        sp_kv_layer_scores in = {
            .window_scores = c->sc_win + (size_t)i * H * cap,
            .colsums = c->sc_col ? c->sc_col + (size_t)i * H * cap : NULL,
            .pinfer = c->sc_pinf ? c->sc_pinf + (size_t)i * cap : NULL,
            .prev = i > 0 ? &prev : NULL,
        };
        if ((rc = sp_kv_select_layer_on(be_sel, o, evict[i], kept[i], &in, &sel)) < 0)
            goto out;
        const void *vsrc = sp_kvcache_v(c->kv, i);
        const uint16_t *kpre_i = c->kpre ? c->kpre + (size_t)i * KVH * cap * D : kh;
        if (c->dev) {
            size_t kb = (size_t)KVH * (size_t)cap * D * sizeof(uint16_t);
            size_t voff = (size_t)((const char *)vsrc - (const char *)sp_backend_buffer_base(c->kv_buf));
            if ((rc = sp_backend_buffer_get(c->kpre_buf, (size_t)i * kb, kh, kb)) < 0 ||
                (rc = sp_backend_buffer_get(c->kv_buf, voff, vh, kv_layer)) < 0)
                goto out;
            vsrc = vh;
        }
        for (int g = 0; g < KVH; g++) {
            const uint16_t *ks = kpre_i + (size_t)g * cap * D;
            float *kd = kf + (size_t)g * l * D, *vd = vf + (size_t)g * l * D;
            for (size_t e = 0; e < (size_t)l * D; e++)
                kd[e] = sp_fp16_to_f32(ks[e]);
            if (c->kv->type == SP_KV_F16) {
                const uint16_t *vs = (const uint16_t *)vsrc + (size_t)g * c->kv->head_stride;
                for (size_t e = 0; e < (size_t)l * D; e++)
                    vd[e] = sp_fp16_to_f32(vs[e]);
            } else {
                memcpy(vd, (const float *)vsrc + (size_t)g * c->kv->head_stride, (size_t)l * D * sizeof *vd);
            }
        }
        sp_kv_code_opts co = {.coded = evict[L + i], .theta_k = (float)o->theta_k, .theta_v = (float)o->theta_v,
                              .centroid = o->entry_centroid};
        rc = sp_kv_segment_build_opts(be_sel, &c->seg[i], i, kf, vf, D, &sel, &co, NULL);
        if (rc == 0 && co.coded && o->code_fallback)
            rc = kv_code_fallback(be_sel, &c->seg[i], i, kf, vf, D, &sel, &co);
        if (rc == 0)
            rc = sp_kv_tail_init_coding(&c->tail[i], &c->seg[i], tcap, (float)o->theta_k, (float)o->theta_v,
                                        o->decode_window, o->decode_coding == SP_DECODE_CODING_BATCH);
        if (rc == 0 && c->dev && !c->probing)
            rc = sp_kv_dev_place(c->be, &c->dl[i], &c->seg[i], &c->tail[i], !c->has_prov, NULL);
        if (rc < 0)
            goto out;
        for (int g = 0; g < KVH; g++) {
            const sp_kv_seg_head *sh = &c->seg[i].head[g];
            size_t need = (size_t)G * ((size_t)sh->n_kept + (size_t)c->seg[i].hdr->window + (size_t)sh->n_ent_v +
                                       2 * (size_t)tcap) + 2 * (size_t)D + 16;
            wf = need > wf ? need : wf;
        }
        if (c->has_prov) {
            rc = c->prov.place(c->prov.user, i, c->seg[i].buf, c->seg[i].size);
            sp_kv_segment_free(&c->seg[i]);
            if (rc < 0)
                goto out;
        }
        sp_kv_selection_free(&prev);
        prev = sel;
        memset(&sel, 0, sizeof sel);
    }
    wf = (wf + 15) & ~(size_t)15;
    c->work = c->dev ? NULL : sp_aligned_alloc(64, (size_t)c->p.n_threads * wf * sizeof *c->work);
    if (!c->dev && !c->work) {
        rc = sp_error(ENOMEM, "kv compress: out of memory for attention scratch");
        goto out;
    }
    c->work_floats = wf;
    c->kvo = *o;
    c->mode = KV_SEG;
    c->compress_s = sp_now_s() - t0;
out:
    if (rc < 0)
        kv_drop_segments(c);
    sp_kv_selection_free(&sel);
    sp_kv_selection_free(&prev);
    free(evict);
    free(kept);
    free(U);
    free(kf);
    free(vf);
    free(kh);
    free(vh);
    return rc;
}

/* True byte ratio of the owned segments and tails (no provider): the measurement of a probe. */
static double kv_owned_ratio(const sp_ctx_t *c)
{
    uint64_t b = 0, f = 0;
    for (int i = 0; i < c->m->hp.n_layer; i++) {
        sp_kv_seg_stats ss;
        sp_kv_segment_stats(&c->seg[i], &c->tail[i], &ss);
        b += ss.bytes_content;
        f += ss.bytes_fp16;
    }
    return f ? (double)b / (double)f : 0.0;
}

typedef struct kv_probe_ctx {
    sp_ctx_t *c;
    sp_kv_opts o;   /* the requested options with target tokens; ratio = the probed knob */
} kv_probe_ctx;

static int kv_probe(void *user, double knob, double *ratio)
{
    kv_probe_ctx *p = user;
    p->o.ratio = knob;
    int rc = kv_compress(p->c, &p->o);
    if (rc < 0)
        return rc;
    *ratio = kv_owned_ratio(p->c);
    return 0;
}

/* kv_compress under o; with target = bytes, first search the token-share knob whose true byte
 * ratio at the end of the prompt is o->ratio (kv_target.h). The probes build owned segments (the
 * provider sees only the final build). c->kvo keeps the requested options. */
static int kv_compress_target(sp_ctx_t *c, const sp_kv_opts *o_in)
{
    const sp_hparams *hp = &c->m->hp;
    const sp_kv_opts req = *o_in, *o = &req;   /* o_in may be &c->kvo, which kv_compress rewrites */
    c->kv_knob = o->ratio;
    c->kv_achieved = NAN;
    c->kv_probes = 0;
    c->kv_hit = false;
    bool search = o->target == SP_TARGET_BYTES && o->policy != SP_POLICY_FULL && o->budget_tokens == 0 &&
                  o->ratio < 1.0 && c->l0 > o->window;
    if (!search)
        return kv_compress(c, o);
    kv_probe_ctx pc = {.c = c, .o = *o};
    pc.o.target = SP_TARGET_TOKENS;
    sp_kv_target_spec s = {.target = o->ratio, .tol = SP_KV_TARGET_TOL, .max_probes = SP_KV_TARGET_PROBES,
                           .knob_min = 1e-3,
                           .start = sp_kv_target_start(o->ratio, hp->head_dim, hp->n_head / hp->n_kv_head)};
    sp_kv_target_result res;
    bool prov = c->has_prov;
    c->has_prov = false;
    c->probing = true;   /* a probe measures host segments; only the chosen build goes to the device */
    int rc = sp_kv_target_search(&s, kv_probe, &pc, &res);
    c->has_prov = prov;
    c->probing = false;
    if (rc < 0) {
        kv_drop_segments(c);
        c->mode = KV_PLAIN;
        return rc;
    }
    pc.o.ratio = res.knob;
    if (prov || !res.last_is_best) {
        if ((rc = kv_compress(c, &pc.o)) < 0)
            return rc;
    } else if (c->dev) {
        /* the last probe is the build: place its segments and tails on the device now */
        for (int i = 0; i < hp->n_layer && rc == 0; i++)
            rc = sp_kv_dev_place(c->be, &c->dl[i], &c->seg[i], &c->tail[i], true, NULL);
        if (rc < 0) {
            kv_drop_segments(c);
            c->mode = KV_PLAIN;
            return rc;
        }
    }
    c->kvo = *o;
    c->kv_knob = res.knob;
    c->kv_achieved = res.ratio;
    c->kv_probes = res.probes;
    c->kv_hit = fabs(res.ratio - o->ratio) <= 0.01;
    if (!c->kv_hit)
        sp_notice("kv: %s cannot reach a true byte ratio of %.3f on this %lld-token prompt: nearest %.4f at "
                  "token share %.4f (the window of %lld tokens and per-token positions/masks set a floor; "
                  "target = tokens gives the papers' token share)",
                  sp_kv_policy_name(o->policy), o->ratio, (long long)c->l0, res.ratio, res.knob,
                  (long long)o->window);
    return 0;
}

int sp_ctx_set_policy(sp_ctx_t *c, const sp_kv_opts *o)
{
    if (c->n_past > 0 || c->mode != KV_PLAIN)
        return sp_error(EBUSY, "context: the compression policy can only change before the first prefill "
                        "(or after sp_ctx_reset)");
    if (!o) {
        c->kv_on = false;
        c->nwin = c->p.n_window;
        return 0;
    }
    int rc = sp_kv_opts_validate_relaxed(o, c->m->hp.n_layer, 0);
    if (rc < 0)
        return rc;
    bool on = o->policy != SP_POLICY_FULL;
    if (on && o->window > c->p.chunk && o->window < c->p.n_ctx)
        return sp_error(EINVAL, "context: compression window %lld exceeds the prefill chunk %d (give the options "
                        "at creation, sp_ctx_params.kv_opts, or raise chunk)", (long long)o->window, c->p.chunk);
    if (on && c->p.n_window && c->p.n_window != o->window)
        return sp_error(EINVAL, "context: n_window=%d differs from the compression window %lld", c->p.n_window,
                        (long long)o->window);
    c->kvo = *o;
    c->kv_on = on;
    c->nwin = on ? (int)(o->window < c->p.chunk ? o->window : c->p.chunk) : c->p.n_window;
    return 0;
}

int sp_ctx_set_kv_provider(sp_ctx_t *c, const sp_kv_provider *p)
{
    if (c->n_past > 0 || c->mode != KV_PLAIN)
        return sp_error(EBUSY, "context: the KV provider can only change before the first prefill");
    if (!p) {
        c->has_prov = false;
        return 0;
    }
    if (!p->place || !p->step_begin || !p->acquire || !p->release)
        return sp_error(EINVAL, "context: a KV provider needs all four callbacks (place, step_begin, acquire, "
                        "release)");
    if (c->dev && !p->view)
        return sp_error(EINVAL, "context: a KV provider for %s needs the view callback (the host never reads "
                        "segment bytes in device memory)", sp_backend_name(c->be));
    c->prov = *p;
    c->has_prov = true;
    return 0;
}

int sp_ctx_recompress(sp_ctx_t *c, const sp_kv_opts *o)
{
    if (!o)
        return sp_error(EINVAL, "context: recompress needs options");
    if (!c->have_state)
        return sp_error(ENOENT, "context: nothing to recompress (needs keep_prefill_state and a prefill under a "
                        "compression policy)");
    int rc = sp_kv_opts_validate_relaxed(o, c->m->hp.n_layer, c->l0);
    if (rc < 0)
        return rc;
    if (o->policy != SP_POLICY_FULL && o->window != c->st_window)
        return sp_error(EINVAL, "context: recompress with window %lld, but the retained window scores are over the "
                        "last %d prompt tokens (the window cannot change)", (long long)o->window, c->st_window);
    if ((o->policy == SP_POLICY_H2O && !c->sc_col) || (o->policy == SP_POLICY_PYRAMIDINFER && !c->sc_pinf))
        return sp_error(EINVAL, "context: recompress with policy %s, but its prefill scores were not retained "
                        "(keep_own_scores_only kept only the %s policy's)", sp_kv_policy_name(o->policy),
                        sp_kv_policy_name(c->st_policy));
    if (o->policy == SP_POLICY_FULL) {
        /* The retained cache holds the prompt untouched (compressed decode never writes it). */
        kv_drop_segments(c);
        c->kvo = *o;
        c->mode = KV_PLAIN;
        c->n_past = (int)c->l0;
        kv_update_bytes(c);
        return 0;
    }
    rc = kv_compress_target(c, o);
    if (rc < 0) {
        /* Fall back to the retained full cache so the context stays usable. */
        c->mode = KV_PLAIN;
        c->n_past = (int)c->l0;
        kv_update_bytes(c);
        return rc;
    }
    c->n_past = (int)c->l0;
    kv_update_bytes(c);
    return 0;
}

int sp_ctx_kv_stats(sp_ctx_t *c, sp_kv_stats *st)
{
    const sp_hparams *hp = &c->m->hp;
    int L = hp->n_layer, KVH = hp->n_kv_head, D = hp->head_dim;
    memset(st, 0, sizeof *st);
    memset(c->lst, 0, (size_t)L * sizeof *c->lst);
    st->n_layer = L;
    st->layer = c->lst;
    st->compressed = c->mode == KV_SEG;
    st->compress_s = c->compress_s;
    st->scores_s = c->scores_s;
    st->target = c->kvo.target;
    st->ratio_requested = c->mode == KV_SEG ? c->kvo.ratio : 1.0;
    st->knob = c->mode == KV_SEG ? c->kv_knob : 1.0;
    st->prompt_ratio = c->mode == KV_SEG ? c->kv_achieved : 1.0;
    st->target_probes = c->mode == KV_SEG ? c->kv_probes : 0;
    double rsum = 0, rmha = 0;
    for (int i = 0; i < L; i++) {
        sp_kv_layer_stats *ls = &c->lst[i];
        if (c->mode == KV_SEG) {
            const sp_kv_segment *seg;
            /* on a device: the tail read back, the segment's host view (never its bytes) */
            int rc = c->dev ? sp_kv_dev_pull_tail(c->be, &c->dl[i], &c->tail[i]) : 0;
            bool view = c->dev && c->has_prov;
            if (rc < 0)
                return rc;
            if (view && !(seg = c->prov.view(c->prov.user, i)))
                return sp_error(EINVAL, "context: the KV provider has no view of layer %d", i);
            if (!view && (rc = seg_acquire(c, i, &seg)) < 0)
                return rc;
            sp_kv_seg_stats ss;
            const sp_kv_tail *t = &c->tail[i];
            sp_kv_segment_stats(seg, t, &ss);
            ls->tokens = seg->hdr->l + seg->hdr->n_folded + t->n;
            ls->kept = (int64_t)llround(ss.paper_r1 * (double)ls->tokens);
            ls->coded = seg->hdr->flags & SP_KV_SEG_CODED;
            for (int g = 0; ls->coded && g < KVH; g++) {
                ls->k_entries += seg->head[g].n_ent_k + (t->coded ? t->n_new_k[g] : 0);
                ls->v_entries += seg->head[g].n_ent_v + (t->coded ? t->n_new_v[g] : 0);
            }
            ls->bytes = ss.bytes_content;
            ls->bytes_alloc = ss.bytes_segment + ss.bytes_tail_alloc;
            ls->fp16_bytes = ss.bytes_fp16;
            ls->paper_r1 = ss.paper_r1;
            ls->paper_r2 = ss.paper_r2;
            ls->paper_r3 = ss.paper_r3;
            ls->paper_r = ss.paper_r;
            if (!view && (rc = seg_release(c, i)) < 0)
                return rc;
        } else {
            ls->tokens = ls->kept = c->n_past;
            ls->fp16_bytes = 2ull * KVH * (uint64_t)c->n_past * D * 2;
            ls->bytes = 2ull * KVH * (uint64_t)c->n_past * D * (c->p.kv_type == SP_KV_F16 ? 2 : 4);
            ls->bytes_alloc = c->kv ? sp_kvcache_bytes(c->kv) / (size_t)L : 0;
            if (c->n_past) {     /* every token, every vector stored once: r = 1 */
                ls->paper_r1 = 1.0;
                ls->paper_r2 = (double)KVH / hp->n_head;
                ls->paper_r3 = (double)hp->n_head / KVH;
                ls->paper_r = 1.0;
            }
        }
        ls->true_ratio = ls->fp16_bytes ? (double)ls->bytes / (double)ls->fp16_bytes : 0.0;
        st->bytes += ls->bytes;
        st->bytes_alloc += ls->bytes_alloc;
        st->fp16_bytes += ls->fp16_bytes;
        rsum += ls->paper_r;
        rmha += ls->paper_r1 * ls->paper_r2;
    }
    st->true_ratio = st->fp16_bytes ? (double)st->bytes / (double)st->fp16_bytes : 0.0;
    st->paper_r = rsum / L;
    st->paper_r_mha = rmha / L;
    return 0;
}

int sp_ctx_prefill(sp_ctx_t *c, const int32_t *tok, int n, float *logits_last, float *logits_all)
{
    int rc = check_tokens(c, tok, n);
    if (rc)
        return rc;
    double t0 = sp_now_s();
    bool capture = c->kv_on && c->mode == KV_PLAIN && c->n_past == 0;
    if (capture) {
        if ((rc = kv_capture_begin(c, n)) < 0)
            return rc;
        c->mode = KV_CAPTURE;
    } else if (c->mode == KV_PLAIN && (rc = kv_ensure_cache(c)) < 0) {
        return rc;
    }
    int start = c->n_past, W = c->mode == KV_SEG ? 0 : c->nwin;
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
            if (capture) {
                kv_drop_state(c);
                c->mode = KV_PLAIN;
            }
            /* A compressed context cannot take back tail tokens: it must be reset. */
            return rc;
        }
        done += take;
        if (c->p.on_progress)
            c->p.on_progress(c->p.progress_user, done, n);
    }
    if (capture) {
        c->l0 = n;
        c->have_state = true;
        if ((rc = kv_compress_target(c, &c->kvo)) < 0) {
            kv_drop_state(c);
            c->mode = KV_PLAIN;
            c->n_past = start;
            return rc;
        }
        if (!c->p.keep_prefill_state) {
            kv_drop_state(c);
            kv_cache_release(c);
        }
        kv_update_bytes(c);
    }
    c->st.prefill_s += sp_now_s() - t0;
    c->st.prefill_tokens += n;
    return 0;
}

bool sp_ctx_device_resident(const sp_ctx_t *c)
{
    return c->dev;
}

int sp_ctx_sample(sp_ctx_t *c, sp_sampler_t *s, const float *logits, int32_t *out)
{
    if (!c->dev) {
        *out = sp_sampler_sample(s, logits);
        return 0;
    }
    if (c->n_past == 0)
        return sp_error(EINVAL, "context: nothing to sample from (no prefill yet)");
    int rc, V = c->m->hp.n_vocab;
    double t0 = sp_now_s();
    int32_t *tok_dev = c->ids;   /* the ids of the last chunk are consumed: reuse the slot */
    if (sp_sampler_is_greedy(s)) {
        sp_argmax_desc d = {.logits = c->logits_dev, .n_rows = 1, .n = V, .ld = V, .out = tok_dev};
        rc = sp_backend_argmax(c->be, &d);
    } else {
        sp_sampler_params sp = sp_sampler_get_params(s);
        sp_sample_desc d = {.logits = c->logits_dev, .n = V, .temperature = sp.temperature,
                            .top_k = sp.top_k > 0 && sp.top_k < V ? sp.top_k : V, .top_p = sp.top_p,
                            .u01 = sp_sampler_draw_u01(s), .out = tok_dev};
        rc = sp_backend_sample(c->be, &d);
    }
    size_t off = (size_t)((char *)tok_dev - (char *)c->mem);
    /* the token slot of stage is written only by this copy: no wait for earlier copies */
    if (rc < 0 ||
        (rc = sp_backend_copy_d2h(c->be, SP_STREAM_COMPUTE, stage_token(c), c->mem_buf, off, sizeof(int32_t))) < 0 ||
        (rc = sp_backend_event_record(c->be, c->stage_ev, SP_STREAM_COMPUTE)) < 0 ||
        (rc = sp_backend_event_sync(c->be, c->stage_ev)) < 0)
        return rc;
    *out = *stage_token(c);
    /* sp_ctx_decode only queues the step on a device; the wait for its token is where it runs */
    c->st.decode_s += sp_now_s() - t0;
    if (*out < 0 || *out >= V)
        return sp_error(EDOM, "the model produced no valid token at position %d (non-finite logits: check the "
                        "GGUF file)", c->n_past - 1);
    return 0;
}

int sp_ctx_decode(sp_ctx_t *c, int32_t tok, float *logits)
{
    int rc = check_tokens(c, &tok, 1);
    if (rc)
        return rc;
    if (c->kv_on && c->mode == KV_PLAIN && c->n_past == 0)   /* a one-token prompt: compress it */
        return sp_ctx_prefill(c, &tok, 1, logits, NULL);
    if (c->mode == KV_PLAIN && (rc = kv_ensure_cache(c)) < 0)
        return rc;
    double t0 = sp_now_s();
    c->attn_s = 0;
    rc = forward_chunk(c, &tok, 1, false, logits, NULL);
    c->st.decode_s += sp_now_s() - t0;
    c->st.decode_attn_s += c->attn_s;
    c->st.decode_tokens += rc == 0;
    return rc;
}
