/* backend.c - the wrappers of backend.h over a backend's sp_backend_iface: argument and range
 * checks, budget charging of buffers, host-synchronisation counting, and -ENOTSUP for empty op
 * slots. Holds no backend-specific code. */
#include "backend_impl.h"

#include "sp_error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const op_names[SP_OP_COUNT] = {
    [SP_OP_GET_ROWS] = "get_rows",         [SP_OP_MATMUL] = "matmul",
    [SP_OP_RMSNORM] = "rmsnorm",           [SP_OP_ROPE] = "rope",
    [SP_OP_SWIGLU] = "swiglu",             [SP_OP_ATTN_PREFILL] = "attn_prefill",
    [SP_OP_ATTN_DECODE] = "attn_decode",   [SP_OP_SCORES_PREPARE] = "scores_prepare",
    [SP_OP_TOPK] = "topk",                 [SP_OP_CODEBOOK_BUILD] = "codebook_build",
    [SP_OP_CODEBOOK_CODE] = "codebook_code", [SP_OP_SEGATTN] = "segattn",
    [SP_OP_ARGMAX] = "argmax",             [SP_OP_SAMPLE] = "sample",
    [SP_OP_KV_STORE] = "kv_store",
};

const char *sp_op_name(sp_op op) { return (unsigned)op < SP_OP_COUNT ? op_names[op] : "unknown"; }

sp_backend_params sp_backend_default_params(void)
{
    return (sp_backend_params){.version = SP_BACKEND_API_VERSION, .n_threads = 1,
                               .numerics = SP_NUMERICS_GGML};
}

sp_backend_t *sp_backend_shell_new(const sp_backend_iface *iface, void *ctx, sp_backend_kind kind,
                                   sp_numerics numerics, const char *name)
{
    if (!iface || iface->api_version != SP_BACKEND_API_VERSION) {
        sp_error(EINVAL, "backend %s: written for API version %u, this library has %u", name,
                 iface ? iface->api_version : 0u, (unsigned)SP_BACKEND_API_VERSION);
        return NULL;
    }
    sp_backend_t *be = calloc(1, sizeof *be);
    if (!be) {
        sp_error(ENOMEM, "backend %s: out of memory", name);
        return NULL;
    }
    be->iface = iface;
    be->ctx = ctx;
    be->kind = kind;
    be->numerics = numerics;
    snprintf(be->name, sizeof be->name, "%s", name);
    return be;
}

sp_backend_t *sp_backend_retain(sp_backend_t *be)
{
    if (be)
        __atomic_fetch_add(&be->refs, 1, __ATOMIC_ACQ_REL);
    return be;
}

void sp_backend_free(sp_backend_t *be)
{
    if (!be)
        return;
    if (__atomic_fetch_sub(&be->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return; /* another owner still holds it */
    be->iface->free(be); /* waits for both streams, frees ctx */
    free(be);
}

sp_backend_kind sp_backend_get_kind(const sp_backend_t *be) { return be->kind; }
const char *sp_backend_name(const sp_backend_t *be) { return be->name; }
sp_numerics sp_backend_get_numerics(const sp_backend_t *be) { return be->numerics; }
const char *sp_backend_pci_bus_id(const sp_backend_t *be) { return be->pci_bus_id; }
void sp_backend_set_numerics(sp_backend_t *be, sp_numerics n) { be->numerics = n; }
uint64_t sp_backend_host_syncs(const sp_backend_t *be) { return __atomic_load_n(&be->host_syncs, __ATOMIC_RELAXED); }

/* per thread too: a scheduler worker waiting on a copy event does not stall the decode thread */
static _Thread_local uint64_t t_host_syncs;
uint64_t sp_backend_thread_host_syncs(void) { return t_host_syncs; }

static void count_sync(sp_backend_t *be)
{
    __atomic_fetch_add(&be->host_syncs, 1, __ATOMIC_RELAXED);
    t_host_syncs++;
}

/* ---- memory ---- */

sp_buffer_t *sp_backend_buffer_alloc(sp_backend_t *be, sp_mem_kind kind, size_t size,
                                     const sp_budget *budget)
{
    sp_buffer_t *b = calloc(1, sizeof *b);
    if (!b) {
        sp_error(ENOMEM, "backend %s: out of memory", be->name);
        return NULL;
    }
    b->be = be;
    b->size = size;
    b->kind = kind;
    if (budget && budget->charge) {
        if (budget->charge(budget->user, size) < 0) {
            free(b);
            return NULL; /* the budget's message stands */
        }
        b->budget = *budget;
    }
    if (be->iface->buffer_alloc(be, b, kind, size) < 0) {
        if (b->budget.release)
            b->budget.release(b->budget.user, size);
        free(b);
        return NULL;
    }
    return b;
}

sp_buffer_t *sp_backend_buffer_view(sp_backend_t *be, void *base, size_t size, bool host)
{
    sp_buffer_t *b = calloc(1, sizeof *b);
    if (!b) {
        sp_error(ENOMEM, "backend %s: out of memory", be->name);
        return NULL;
    }
    *b = (sp_buffer_t){.be = be, .base = base, .size = size, .kind = SP_MEM_DEVICE, .host = host, .view = true};
    return b;
}

void sp_backend_buffer_free(sp_buffer_t *b)
{
    if (!b)
        return;
    if (!b->view)
        b->be->iface->buffer_free(b->be, b);
    if (b->budget.release)
        b->budget.release(b->budget.user, b->size);
    free(b);
}

void *sp_backend_buffer_base(const sp_buffer_t *b) { return b ? b->base : NULL; }
size_t sp_backend_buffer_size(const sp_buffer_t *b) { return b ? b->size : 0; }
bool sp_backend_buffer_is_host(const sp_buffer_t *b) { return b && b->host; }

static int check_range(const sp_buffer_t *b, size_t off, size_t n, const char *what)
{
    if (!b || off > b->size || n > b->size - off)
        return sp_error(EINVAL, "backend: %s of %zu bytes at offset %zu is outside the buffer (%zu bytes)",
                        what, n, off, b ? b->size : (size_t)0);
    return 0;
}

int sp_backend_buffer_set(sp_buffer_t *b, size_t off, const void *src, size_t n)
{
    int rc = check_range(b, off, n, "buffer_set");
    if (rc < 0 || n == 0)
        return rc;
    count_sync(b->be);
    return b->be->iface->buffer_set(b->be, b, off, src, n);
}

int sp_backend_buffer_get(const sp_buffer_t *b, size_t off, void *dst, size_t n)
{
    int rc = check_range(b, off, n, "buffer_get");
    if (rc < 0 || n == 0)
        return rc;
    count_sync(b->be);
    return b->be->iface->buffer_get(b->be, b, off, dst, n);
}

int sp_backend_buffer_memset(sp_buffer_t *b, size_t off, int byte, size_t n)
{
    int rc = check_range(b, off, n, "buffer_memset");
    if (rc < 0 || n == 0)
        return rc;
    count_sync(b->be);
    return b->be->iface->buffer_memset(b->be, b, off, byte, n);
}

/* ---- ordering ---- */

static int check_stream(sp_stream_id s)
{
    if (s != SP_STREAM_COMPUTE && s != SP_STREAM_COPY)
        return sp_error(EINVAL, "backend: unknown stream %d", (int)s);
    return 0;
}

sp_event_t *sp_backend_event_new(sp_backend_t *be)
{
    sp_event_t *ev = calloc(1, sizeof *ev);
    if (!ev) {
        sp_error(ENOMEM, "backend %s: out of memory", be->name);
        return NULL;
    }
    ev->be = be;
    if (be->iface->event_new(be, ev) < 0) {
        free(ev);
        return NULL;
    }
    return ev;
}

void sp_backend_event_free(sp_event_t *ev)
{
    if (!ev)
        return;
    ev->be->iface->event_free(ev->be, ev);
    free(ev);
}

int sp_backend_event_record(sp_backend_t *be, sp_event_t *ev, sp_stream_id s)
{
    int rc = check_stream(s);
    return rc < 0 ? rc : be->iface->event_record(be, ev, s);
}

int sp_backend_stream_wait(sp_backend_t *be, sp_stream_id s, sp_event_t *ev)
{
    int rc = check_stream(s);
    return rc < 0 ? rc : be->iface->stream_wait(be, s, ev);
}

int sp_backend_event_sync(sp_backend_t *be, sp_event_t *ev)
{
    count_sync(be);
    return be->iface->event_sync(be, ev);
}

int sp_backend_stream_sync(sp_backend_t *be, sp_stream_id s)
{
    int rc = check_stream(s);
    if (rc < 0)
        return rc;
    count_sync(be);
    return be->iface->stream_sync(be, s);
}

bool sp_backend_event_done(sp_backend_t *be, sp_event_t *ev) { return be->iface->event_done(be, ev); }

int sp_backend_copy_h2d(sp_backend_t *be, sp_stream_id s, sp_buffer_t *dst, size_t dst_off,
                        const void *src, size_t n)
{
    int rc = check_stream(s);
    if (rc < 0 || (rc = check_range(dst, dst_off, n, "copy_h2d")) < 0 || n == 0)
        return rc;
    return be->iface->copy(be, s, SP_COPY_H2D, (char *)dst->base + dst_off, src, n);
}

int sp_backend_copy_d2h(sp_backend_t *be, sp_stream_id s, void *dst, const sp_buffer_t *src,
                        size_t src_off, size_t n)
{
    int rc = check_stream(s);
    if (rc < 0 || (rc = check_range(src, src_off, n, "copy_d2h")) < 0 || n == 0)
        return rc;
    return be->iface->copy(be, s, SP_COPY_D2H, dst, (const char *)src->base + src_off, n);
}

int sp_backend_copy_d2d(sp_backend_t *be, sp_stream_id s, sp_buffer_t *dst, size_t dst_off,
                        const sp_buffer_t *src, size_t src_off, size_t n)
{
    int rc = check_stream(s);
    if (rc < 0 || (rc = check_range(dst, dst_off, n, "copy_d2d")) < 0 ||
        (rc = check_range(src, src_off, n, "copy_d2d")) < 0 || n == 0)
        return rc;
    return be->iface->copy(be, s, SP_COPY_D2D, (char *)dst->base + dst_off,
                           (const char *)src->base + src_off, n);
}

/* ---- ops ---- */

static void *op_slot(const sp_backend_t *be, sp_op op)
{
    const sp_backend_iface *i = be->iface;
    switch (op) {
    case SP_OP_GET_ROWS: return (void *)i->get_rows;
    case SP_OP_MATMUL: return (void *)i->matmul;
    case SP_OP_RMSNORM: return (void *)i->rmsnorm;
    case SP_OP_ROPE: return (void *)i->rope;
    case SP_OP_SWIGLU: return (void *)i->swiglu;
    case SP_OP_ATTN_PREFILL: return (void *)i->attn_prefill;
    case SP_OP_ATTN_DECODE: return (void *)i->attn_decode;
    case SP_OP_SCORES_PREPARE: return (void *)i->scores_prepare;
    case SP_OP_TOPK: return (void *)i->topk;
    case SP_OP_CODEBOOK_BUILD: return (void *)i->codebook_build;
    case SP_OP_CODEBOOK_CODE: return (void *)i->codebook_code;
    case SP_OP_SEGATTN: return (void *)i->segattn;
    case SP_OP_ARGMAX: return (void *)i->argmax;
    case SP_OP_SAMPLE: return (void *)i->sample;
    case SP_OP_KV_STORE: return (void *)i->kv_store;
    default: return NULL;
    }
}

bool sp_backend_supports(const sp_backend_t *be, sp_op op, const void *desc)
{
    if (!be || !op_slot(be, op))
        return false;
    return be->iface->supports ? be->iface->supports(be, op, desc) : true;
}

int sp_backend_reserve(sp_backend_t *be, sp_op op, const void *desc)
{
    return be->iface->reserve ? be->iface->reserve(be, op, desc) : 0;
}

static int unsupported(const sp_backend_t *be, sp_op op)
{
    return sp_error(ENOTSUP, "backend %s: op %s is not implemented%s", be->name, sp_op_name(op),
                    op_slot(be, op) ? " for this shape or type" : "");
}

/* One wrapper per op: the empty slot and an unsupported descriptor answer -ENOTSUP. */
#define SP_BACKEND_OP_WRAPPER(fn, slot, OP, desc_t)                     \
    int fn(sp_backend_t *be, const desc_t *d)                           \
    {                                                                   \
        if (!be->iface->slot || !sp_backend_supports(be, OP, d))        \
            return unsupported(be, OP);                                 \
        return be->iface->slot(be, d);                                  \
    }

SP_BACKEND_OP_WRAPPER(sp_backend_get_rows, get_rows, SP_OP_GET_ROWS, sp_get_rows_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_matmul, matmul, SP_OP_MATMUL, sp_matmul_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_rmsnorm, rmsnorm, SP_OP_RMSNORM, sp_rmsnorm_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_rope, rope, SP_OP_ROPE, sp_rope_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_swiglu, swiglu, SP_OP_SWIGLU, sp_swiglu_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_attn_prefill, attn_prefill, SP_OP_ATTN_PREFILL, sp_attn_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_attn_decode, attn_decode, SP_OP_ATTN_DECODE, sp_attn_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_scores_prepare, scores_prepare, SP_OP_SCORES_PREPARE, sp_scores_prepare_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_topk, topk, SP_OP_TOPK, sp_topk_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_codebook_build, codebook_build, SP_OP_CODEBOOK_BUILD, sp_codebook_build_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_codebook_code, codebook_code, SP_OP_CODEBOOK_CODE, sp_codebook_code_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_segattn, segattn, SP_OP_SEGATTN, sp_segattn_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_argmax, argmax, SP_OP_ARGMAX, sp_argmax_desc)
SP_BACKEND_OP_WRAPPER(sp_backend_sample, sample, SP_OP_SAMPLE, sp_sample_desc)

int sp_backend_kv_store(sp_backend_t *be, const sp_kv_store_desc *d)
{
    if (!be->iface->kv_store || !sp_backend_supports(be, SP_OP_KV_STORE, d))
        return unsupported(be, SP_OP_KV_STORE);
    if (d->n < 0 || d->pos0 < 0 || d->pos0 + d->n > d->n_pos || d->n_kv_head < 1 || d->head_dim < 1 ||
        d->head_stride < (size_t)d->n_pos * (size_t)d->head_dim || (d->kv_type != SP_KV_F16 && d->kv_type != SP_KV_F32))
        return sp_error(ERANGE, "kv store: %d tokens at position %d do not fit a cache of %d positions "
                        "(%d heads x %d, head stride %zu)", d->n, d->pos0, d->n_pos, d->n_kv_head, d->head_dim,
                        d->head_stride);
    return be->iface->kv_store(be, d);
}
