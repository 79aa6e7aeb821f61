/* backend_cuda.cu - the CUDA backend: backend_impl.h over the launchers of gpu.h.
 *
 * DESIGN
 * - Two non-blocking streams on the chosen device (compute, copy); events are cudaEvents
 *   (timing off). Ops run on the compute stream and never synchronize.
 * - Buffers: cudaMalloc (device) or cudaHostAlloc (pinned). The backend also registers
 *   cudaHostAlloc as the host pool's pinner while it lives, so the host tier is DMA-able.
 * - Every slot is filled. matmul: decode (and chunks under MATMUL_GEMM_MIN_N tokens) runs the GEMV
 *   kernel over blocks of SP_GPU_GEMV_MAX_N tokens on the stored (quantized) weights, every type the
 *   loader reads; prefill chunks dequantize row blocks to fp32 in the scratch and run cublasSgemm,
 *   the CPU's exact prefill algorithm (no resident fp16 copy of the weights: it would double their
 *   device bytes); biases and swiglu afterwards. Attention and codebook scratch is device memory owned by the
 *   backend, grown when a larger shape comes (at prefill; a decode step reuses it).
 */
#include "gpu_common.cuh" /* gpu.h, sp_error.h (C headers, in extern "C") */

extern "C" {
#include "backend_impl.h"
#include "host_pool.h"
}

#include <cuda_runtime_api.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

namespace {

struct cuda_ctx {
    int dev;
    void *stream[2];         /* SP_STREAM_COMPUTE, SP_STREAM_COPY */
    sp_gpu_blas *blas;
    void *scratch;           /* device scratch of the attention and codebook launchers */
    size_t scratch_bytes;
    sp_host_pinner pinner;
};

cuda_ctx *ctx_of(const sp_backend_t *be) { return static_cast<cuda_ctx *>(be->ctx); }
void *stream_of(const sp_backend_t *be, sp_stream_id s) { return ctx_of(be)->stream[s == SP_STREAM_COPY ? 1 : 0]; }

int scratch_reserve(sp_backend_t *be, size_t bytes)
{
    cuda_ctx *c = ctx_of(be);
    if (bytes <= c->scratch_bytes)
        return 0;
    /* the old scratch may still be read by queued work */
    int rc = sp_gpu_stream_sync(c->stream[0]);
    if (rc < 0)
        return rc;
    sp_gpu_free(c->scratch);
    c->scratch_bytes = 0;
    if (!(c->scratch = sp_gpu_alloc(bytes)))
        return -ENOMEM;
    c->scratch_bytes = bytes;
    return 0;
}

void *pinned_alloc(void *user, size_t size)
{
    (void)user;
    return sp_gpu_host_alloc(size);
}

void pinned_free(void *user, void *p)
{
    (void)user;
    sp_gpu_host_free(p);
}

int pinned_register(void *user, void *p, size_t size)
{
    (void)user;
    return sp_gpu_host_register(p, size);
}

void pinned_unregister(void *user, void *p)
{
    (void)user;
    sp_gpu_host_unregister(p);
}

void cu_free(sp_backend_t *be)
{
    cuda_ctx *c = ctx_of(be);
    if (!c)
        return;
    for (int i = 0; i < 2; i++)
        if (c->stream[i]) {
            sp_gpu_stream_sync(c->stream[i]);
            sp_gpu_stream_destroy(c->stream[i]);
        }
    sp_host_pool_set_pinner(NULL);
    sp_gpu_blas_free(c->blas);
    sp_gpu_free(c->scratch);
    free(c);
}

int cu_buffer_alloc(sp_backend_t *be, sp_buffer_t *b, sp_mem_kind kind, size_t size)
{
    (void)be;
    b->base = kind == SP_MEM_HOST_PINNED ? sp_gpu_host_alloc(size ? size : 1) : sp_gpu_alloc(size ? size : 1);
    b->host = kind == SP_MEM_HOST_PINNED;
    return b->base ? 0 : -ENOMEM;
}

void cu_buffer_free(sp_backend_t *be, sp_buffer_t *b)
{
    (void)be;
    if (b->host)
        sp_gpu_host_free(b->base);
    else
        sp_gpu_free(b->base);
}

int cu_buffer_set(sp_backend_t *be, sp_buffer_t *b, size_t off, const void *src, size_t n)
{
    return SP_CUDA_CHECK(cudaMemcpyAsync((char *)b->base + off, src, n, cudaMemcpyDefault,
                                         sp_stream(stream_of(be, SP_STREAM_COMPUTE)))) ?:
           sp_gpu_stream_sync(stream_of(be, SP_STREAM_COMPUTE));
}

int cu_buffer_get(sp_backend_t *be, const sp_buffer_t *b, size_t off, void *dst, size_t n)
{
    return SP_CUDA_CHECK(cudaMemcpyAsync(dst, (const char *)b->base + off, n, cudaMemcpyDefault,
                                         sp_stream(stream_of(be, SP_STREAM_COMPUTE)))) ?:
           sp_gpu_stream_sync(stream_of(be, SP_STREAM_COMPUTE));
}

int cu_buffer_memset(sp_backend_t *be, sp_buffer_t *b, size_t off, int byte, size_t n)
{
    return sp_gpu_memset(stream_of(be, SP_STREAM_COMPUTE), (char *)b->base + off, byte, n) ?:
           sp_gpu_stream_sync(stream_of(be, SP_STREAM_COMPUTE));
}

int cu_event_new(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    cudaEvent_t e;
    int rc = SP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (rc < 0)
        return rc;
    ev->impl = (void *)e;
    return 0;
}

void cu_event_free(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    cudaEventDestroy((cudaEvent_t)ev->impl);
}

int cu_event_record(sp_backend_t *be, sp_event_t *ev, sp_stream_id s)
{
    return SP_CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev->impl, sp_stream(stream_of(be, s))));
}

int cu_stream_wait(sp_backend_t *be, sp_stream_id s, sp_event_t *ev)
{
    return SP_CUDA_CHECK(cudaStreamWaitEvent(sp_stream(stream_of(be, s)), (cudaEvent_t)ev->impl, 0));
}

int cu_event_sync(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    return SP_CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)ev->impl));
}

bool cu_event_done(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    return cudaEventQuery((cudaEvent_t)ev->impl) == cudaSuccess;
}

int cu_stream_sync(sp_backend_t *be, sp_stream_id s) { return sp_gpu_stream_sync(stream_of(be, s)); }

int cu_copy(sp_backend_t *be, sp_stream_id s, sp_copy_dir dir, void *dst, const void *src, size_t n)
{
    cudaMemcpyKind k = dir == SP_COPY_H2D ? cudaMemcpyHostToDevice
                       : dir == SP_COPY_D2H ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    return SP_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, k, sp_stream(stream_of(be, s))));
}

bool cu_supports(const sp_backend_t *be, sp_op op, const void *desc)
{
    (void)be;
    if (!desc)
        return true;
    switch (op) {
    case SP_OP_MATMUL: {
        const sp_matmul_desc *d = static_cast<const sp_matmul_desc *>(desc);
        if (d->nw < 1 || d->nw > SP_MM_MAX || (d->swiglu && d->nw != 2))
            return false;
        for (int i = 0; i < d->nw; i++)
            if (!sp_gpu_dequant_supported(d->w[i]->type))
                return false;
        return true;
    }
    case SP_OP_GET_ROWS:
        return sp_gpu_dequant_supported(static_cast<const sp_get_rows_desc *>(desc)->w->type);
    case SP_OP_ATTN_PREFILL:
    case SP_OP_ATTN_DECODE: {
        const sp_attn_desc *d = static_cast<const sp_attn_desc *>(desc);
        return d->kv_type == SP_KV_F16;
    }
    case SP_OP_SEGATTN:
        return static_cast<const sp_segattn_desc *>(desc)->kv_head < 0;
    case SP_OP_SAMPLE: {
        const sp_sample_desc *d = static_cast<const sp_sample_desc *>(desc);
        return d->top_k >= 1 && d->top_k <= SP_GPU_SAMPLE_MAX_K;
    }
    default:
        return true;
    }
}

enum {
    /* from this many tokens a product dequantizes row blocks and runs cublasSgemm (prefill chunks);
     * below it the GEMV reads the stored blocks, each weight byte once per SP_GPU_GEMV_MAX_N tokens */
    MATMUL_GEMM_MIN_N = 16,
};
/* fp32 floats of the dequantized row block (16 MiB: 7281 rows of 576 columns, 468 of 8960) */
const size_t MATMUL_DQ_FLOATS = (size_t)4 << 20;

/* Tokens t0 .. t0+n-1 of matrix i of d, as the device products take them. */
sp_gpu_gemv_desc product_desc(const sp_matmul_desc *d, int i, int t0, int n)
{
    sp_gpu_gemv_desc g = {};
    g.w_type = d->w[i]->type;
    g.rows = d->w[i]->rows;
    g.cols = d->w[i]->cols;
    g.w = d->w[i]->data;
    g.w_row_bytes = d->w[i]->row_bytes;
    g.n = n;
    g.x = d->x + (size_t)t0 * (size_t)d->ldx;
    g.ldx = d->ldx;
    g.y = d->y[i] + (size_t)t0 * (size_t)d->ldy[i];
    g.ldy = d->ldy[i];
    g.accumulate = d->accumulate;
    return g;
}

/* One matrix of a prefill chunk: dequantized row blocks times the chunk, in the backend's scratch. */
int matmul_gemm(sp_backend_t *be, const sp_matmul_desc *d, int i)
{
    cuda_ctx *c = ctx_of(be);
    const sp_wmat *w = d->w[i];
    size_t whole = (size_t)w->rows * (size_t)w->cols;
    size_t floats = whole < MATMUL_DQ_FLOATS ? whole : MATMUL_DQ_FLOATS;
    if (floats < (size_t)w->cols)
        floats = (size_t)w->cols;
    int rc;
    if (!c->blas && !(c->blas = sp_gpu_blas_create()))
        return -ENOMEM;
    if ((rc = scratch_reserve(be, floats * sizeof(float))) < 0)
        return rc;
    sp_gpu_matmul_dq_desc g = {};
    g.p = product_desc(d, i, 0, d->n);
    g.scratch = static_cast<float *>(c->scratch);
    g.scratch_floats = floats;
    return sp_gpu_matmul_dq(c->blas, stream_of(be, SP_STREAM_COMPUTE), g);
}

/* A chunk of at least MATMUL_GEMM_MIN_N tokens through matmul_gemm; fewer, every row block of at most
 * SP_GPU_GEMV_MAX_N tokens through the GEMV on the stored weights; then the biases. */
int cu_matmul(sp_backend_t *be, const sp_matmul_desc *d)
{
    void *s = stream_of(be, SP_STREAM_COMPUTE);
    for (int i = 0; i < d->nw; i++) {
        if (d->n >= MATMUL_GEMM_MIN_N) {
            int rc = matmul_gemm(be, d, i);
            if (rc < 0)
                return rc;
        }
        for (int t0 = 0; d->n < MATMUL_GEMM_MIN_N && t0 < d->n; t0 += SP_GPU_GEMV_MAX_N) {
            sp_gpu_gemv_desc g = product_desc(d, i, t0, d->n - t0 < SP_GPU_GEMV_MAX_N ? d->n - t0 : SP_GPU_GEMV_MAX_N);
            int rc = sp_gpu_gemv(s, g);
            if (rc < 0)
                return rc;
        }
        if (d->bias[i]) {
            int rc = sp_gpu_add_bias(s, d->y[i], d->ldy[i], d->n, d->w[i]->rows, d->bias[i]);
            if (rc < 0)
                return rc;
        }
    }
    if (d->swiglu) {
        for (int t = 0; t < d->n; t++) {
            float *gate = d->y[0] + (size_t)t * (size_t)d->ldy[0];
            sp_swiglu_desc w = {d->w[0]->rows, gate, d->y[1] + (size_t)t * (size_t)d->ldy[1], gate};
            int rc = sp_gpu_swiglu(s, w);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int cu_get_rows(sp_backend_t *be, const sp_get_rows_desc *d)
{
    return sp_gpu_get_rows(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_kv_store(sp_backend_t *be, const sp_kv_store_desc *d)
{
    return sp_gpu_kv_store(stream_of(be, SP_STREAM_COMPUTE), d);
}

int cu_rmsnorm(sp_backend_t *be, const sp_rmsnorm_desc *d)
{
    return sp_gpu_rmsnorm(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_rope(sp_backend_t *be, const sp_rope_desc *d)
{
    sp_gpu_rope_desc g = {};
    g.x = d->x;
    g.n_tok = d->n_tok;
    g.n_heads = d->n_heads;
    g.head_dim = d->head_dim;
    g.ld = d->ld;
    g.pos = d->pos;
    g.table = d->table;
    g.n_pos = d->table_n_pos > INT32_MAX ? INT32_MAX : (int)d->table_n_pos;   /* positions beyond it: NaN */
    g.mode = d->mode;
    return sp_gpu_rope(stream_of(be, SP_STREAM_COMPUTE), g);
}

int cu_swiglu(sp_backend_t *be, const sp_swiglu_desc *d)
{
    return sp_gpu_swiglu(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_reserve(sp_backend_t *be, sp_op op, const void *desc)
{
    if (op == SP_OP_ATTN_PREFILL || op == SP_OP_ATTN_DECODE) {
        const sp_attn_desc *d = static_cast<const sp_attn_desc *>(desc);
        return scratch_reserve(be, sp_gpu_attention_scratch_floats(d->n_q, d->q_pos0, d->n_head, d->head_dim,
                                                                   d->n_window) * sizeof(float));
    }
    if (op == SP_OP_SEGATTN) {
        const sp_segattn_desc *d = static_cast<const sp_segattn_desc *>(desc);
        return scratch_reserve(be, sp_gpu_segattn_scratch_floats_full(d->seg, d->tail) * sizeof(float));
    }
    return 0;
}

int cu_attention(sp_backend_t *be, const sp_attn_desc *d)
{
    size_t floats = sp_gpu_attention_scratch_floats(d->n_q, d->q_pos0, d->n_head, d->head_dim, d->n_window);
    int rc = scratch_reserve(be, floats * sizeof(float));
    if (rc < 0)
        return rc;
    return sp_gpu_attention(stream_of(be, SP_STREAM_COMPUTE), d, static_cast<float *>(ctx_of(be)->scratch), floats);
}

int cu_scores_prepare(sp_backend_t *be, const sp_scores_prepare_desc *d)
{
    return sp_gpu_kv_scores_prepare(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_topk(sp_backend_t *be, const sp_topk_desc *d)
{
    return sp_gpu_kv_topk(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_codebook_build(sp_backend_t *be, const sp_codebook_build_desc *d)
{
    cuda_ctx *c = ctx_of(be);
    size_t bytes = sp_gpu_codebook_scratch_bytes(d->n);
    int rc = scratch_reserve(be, bytes);
    if (rc < 0)
        return rc;
    if (!c->blas && !(c->blas = sp_gpu_blas_create()))
        return -EIO;
    sp_gpu_codebook_desc g = {d->x, d->n, d->d, d->mu, d->theta, d->index, d->rep, d->n_entries,
                              d->mag, d->unit, c->scratch, bytes};
    return sp_gpu_codebook_build(c->blas, stream_of(be, SP_STREAM_COMPUTE), g);
}

int cu_codebook_code(sp_backend_t *be, const sp_codebook_code_desc *d)
{
    return sp_gpu_codebook_code(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_segattn(sp_backend_t *be, const sp_segattn_desc *d)
{
    sp_gpu_segattn_desc g = {};
    g.seg = d->seg;
    g.seg_dev = d->seg_bytes;
    g.tail = d->tail;
    g.tail_dev = d->tail_bytes;
    g.q = d->q;
    g.rope_table = d->rope_table;
    g.rope_n_pos = d->rope_n_pos;
    g.mode = d->mode;
    g.scale = d->scale;
    g.out = d->out;
    g.scratch = d->scratch;
    g.scratch_floats = d->scratch_floats;
    if (!g.scratch) {
        /* the backend's own: reserved for the full tail at placement, so this never grows it */
        size_t floats = sp_gpu_segattn_scratch_floats(d->seg, d->tail);
        int rc = scratch_reserve(be, floats * sizeof(float));
        if (rc < 0)
            return rc;
        g.scratch = static_cast<float *>(ctx_of(be)->scratch);
        g.scratch_floats = ctx_of(be)->scratch_bytes / sizeof(float);
    }
    return sp_gpu_segattn_decode(stream_of(be, SP_STREAM_COMPUTE), g);
}

int cu_argmax(sp_backend_t *be, const sp_argmax_desc *d)
{
    return sp_gpu_argmax(stream_of(be, SP_STREAM_COMPUTE), *d);
}

int cu_sample(sp_backend_t *be, const sp_sample_desc *d)
{
    return sp_gpu_sample(stream_of(be, SP_STREAM_COMPUTE), *d);
}

sp_backend_iface make_iface()
{
    sp_backend_iface i = {};
    i.api_version = SP_BACKEND_API_VERSION;
    i.free = cu_free;
    i.buffer_alloc = cu_buffer_alloc;
    i.buffer_free = cu_buffer_free;
    i.buffer_set = cu_buffer_set;
    i.buffer_get = cu_buffer_get;
    i.buffer_memset = cu_buffer_memset;
    i.event_new = cu_event_new;
    i.event_free = cu_event_free;
    i.event_record = cu_event_record;
    i.stream_wait = cu_stream_wait;
    i.event_sync = cu_event_sync;
    i.event_done = cu_event_done;
    i.stream_sync = cu_stream_sync;
    i.copy = cu_copy;
    i.supports = cu_supports;
    i.reserve = cu_reserve;
    i.get_rows = cu_get_rows;
    i.matmul = cu_matmul;
    i.rmsnorm = cu_rmsnorm;
    i.rope = cu_rope;
    i.swiglu = cu_swiglu;
    i.attn_prefill = cu_attention;
    i.attn_decode = cu_attention;
    i.scores_prepare = cu_scores_prepare;
    i.topk = cu_topk;
    i.codebook_build = cu_codebook_build;
    i.codebook_code = cu_codebook_code;
    i.segattn = cu_segattn;
    i.argmax = cu_argmax;
    i.sample = cu_sample;
    i.kv_store = cu_kv_store;
    return i;
}

const sp_backend_iface cuda_iface = make_iface();

} // namespace

extern "C" bool sp_backend_cuda_available(const char **why)
{
    int n = sp_gpu_device_count();
    if (n <= 0) {
        *why = "no CUDA device (the driver reports none)";
        return false;
    }
    return true;
}

extern "C" sp_backend_t *sp_backend_cuda_new(const sp_backend_params *p)
{
    cuda_ctx *c = static_cast<cuda_ctx *>(calloc(1, sizeof *c));
    if (!c) {
        sp_error(ENOMEM, "cuda backend: out of memory");
        return NULL;
    }
    c->dev = p->device;
    char desc[80] = "?", name[96];
    sp_gpu_describe(p->device, desc, sizeof desc);
    snprintf(name, sizeof name, "cuda: %s", desc);
    sp_backend_t *be = sp_backend_shell_new(&cuda_iface, c, SP_BACKEND_CUDA, p->numerics, name);
    if (!be) {
        free(c);
        return NULL;
    }
    if (sp_gpu_set_device(p->device) < 0 || sp_gpu_stream_create(&c->stream[0]) < 0 ||
        sp_gpu_stream_create(&c->stream[1]) < 0) {
        sp_backend_free(be);
        return NULL;
    }
    if (sp_gpu_pci_bus_id(p->device, be->pci_bus_id, sizeof be->pci_bus_id) < 0)
        be->pci_bus_id[0] = '\0';   /* NUMA locality unknown: the host pool picks a node itself */
    c->pinner.alloc = pinned_alloc;
    c->pinner.free = pinned_free;
    c->pinner.register_range = pinned_register;
    c->pinner.unregister_range = pinned_unregister;
    sp_host_pool_set_pinner(&c->pinner);
    return be;
}
