/* backend_cpu.c - the CPU backend (backend_impl.h over the kernels of cpu/ and the CPU references
 * of kv/).
 *
 * DESIGN
 * - Streams: each stream is a worker thread with a fixed ring of work items (copies, event signals
 *   and event waits), run in order. Nothing on them allocates: a full ring makes the submitter
 *   wait. Ops run on the calling thread after the compute stream's queue has drained, so they are
 *   ordered after every compute-stream copy and wait before them, and complete when they return.
 *   A compute-stream wait blocks the caller (host code may read the bytes right after it); an
 *   event recorded on the compute stream completes when the compute queue reaches it.
 *   The copy stream's order against compute is only what events say, exactly as on a GPU: a
 *   consumer that reads a copy's destination without waiting for the copy's event reads whatever
 *   was there, and a refill that does not wait for the reader's event overwrites what the
 *   reader's queued copy has not read yet (each stream has a copy-delay test hook).
 * - Events: a pair of counters (recorded, done) under a mutex; a record bumps `recorded` and the
 *   stream's signal sets `done` to that value; a wait waits for done >= the record it saw.
 * - Memory: device buffers are 64-byte aligned heap memory; pinned ones come from the host pool
 *   (mlock()ed, NUMA-bound when a topology is given).
 */
#include "backend_cpu.h"

#include "backend_impl.h"
#include "codebook.h"
#include "host_pool.h"
#include "kv_segment.h"
#include "kv_select.h"
#include "ops.h"
#include "segment_attn.h"
#include "sp_error.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { RING = 256 };

typedef struct cpu_event {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t recorded, done;
} cpu_event;

typedef enum { ITEM_COPY, ITEM_SIGNAL, ITEM_WAIT } item_kind;

typedef struct item {
    item_kind kind;
    void *dst;
    const void *src;
    size_t n;
    cpu_event *ev;
    uint64_t seq;
} item;

typedef struct copy_stream {
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_space, cv_idle;
    item ring[RING];
    unsigned head, count;    /* next item to run, items queued (incl. the one running) */
    bool stop;
    atomic_uint delay_us;    /* test hook: sleep before each copy */
} copy_stream;

typedef struct cpu_ctx {
    sp_cpu *cpu;
    copy_stream cs;          /* SP_STREAM_COPY */
    copy_stream qs;          /* SP_STREAM_COMPUTE: its copies, signals and waits */
    float *accum;            /* [accum_floats] product of an accumulating matmul */
    size_t accum_floats;
} cpu_ctx;

static cpu_ctx *ctx_of(const sp_backend_t *be) { return be->ctx; }

/* ---- events ---- */

static void ev_signal(cpu_event *e, uint64_t seq)
{
    pthread_mutex_lock(&e->mu);
    if (e->done < seq)
        e->done = seq;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void ev_wait_for(cpu_event *e, uint64_t seq)
{
    pthread_mutex_lock(&e->mu);
    while (e->done < seq)
        pthread_cond_wait(&e->cv, &e->mu);
    pthread_mutex_unlock(&e->mu);
}

static uint64_t ev_recorded(cpu_event *e)
{
    pthread_mutex_lock(&e->mu);
    uint64_t r = e->recorded;
    pthread_mutex_unlock(&e->mu);
    return r;
}

/* ---- the copy stream ---- */

static void *copy_worker(void *arg)
{
    copy_stream *cs = arg;
    pthread_mutex_lock(&cs->mu);
    for (;;) {
        while (cs->count == 0 && !cs->stop)
            pthread_cond_wait(&cs->cv_work, &cs->mu);
        if (cs->count == 0 && cs->stop)
            break;
        item it = cs->ring[cs->head];
        pthread_mutex_unlock(&cs->mu);
        switch (it.kind) {
        case ITEM_COPY: {
            unsigned us = atomic_load(&cs->delay_us);
            if (us)
                nanosleep(&(struct timespec){.tv_sec = us / 1000000u, .tv_nsec = (long)(us % 1000000u) * 1000}, NULL);
            memcpy(it.dst, it.src, it.n);
            break;
        }
        case ITEM_SIGNAL:
            ev_signal(it.ev, it.seq);
            break;
        case ITEM_WAIT:
            ev_wait_for(it.ev, it.seq);
            break;
        }
        pthread_mutex_lock(&cs->mu);
        cs->head = (cs->head + 1) % RING;
        cs->count--;
        pthread_cond_signal(&cs->cv_space);
        if (cs->count == 0)
            pthread_cond_broadcast(&cs->cv_idle);
    }
    pthread_mutex_unlock(&cs->mu);
    return NULL;
}

static void cs_push(copy_stream *cs, item it)
{
    pthread_mutex_lock(&cs->mu);
    while (cs->count == RING)
        pthread_cond_wait(&cs->cv_space, &cs->mu);
    cs->ring[(cs->head + cs->count) % RING] = it;
    cs->count++;
    pthread_cond_signal(&cs->cv_work);
    pthread_mutex_unlock(&cs->mu);
}

static void cs_drain(copy_stream *cs)
{
    pthread_mutex_lock(&cs->mu);
    while (cs->count > 0)
        pthread_cond_wait(&cs->cv_idle, &cs->mu);
    pthread_mutex_unlock(&cs->mu);
}

/* ---- lifetime ---- */

static copy_stream *stream_q(const sp_backend_t *be, sp_stream_id s)
{
    cpu_ctx *c = ctx_of(be);
    return s == SP_STREAM_COPY ? &c->cs : &c->qs;
}

static void cs_init(copy_stream *cs)
{
    pthread_mutex_init(&cs->mu, NULL);
    pthread_cond_init(&cs->cv_work, NULL);
    pthread_cond_init(&cs->cv_space, NULL);
    pthread_cond_init(&cs->cv_idle, NULL);
    atomic_init(&cs->delay_us, 0);
}

static int cs_start(copy_stream *cs)
{
    int rc = pthread_create(&cs->thread, NULL, copy_worker, cs);
    if (rc != 0)
        return sp_error(rc, "cpu backend: cannot start a stream's thread: %s", strerror(rc));
    cs->started = true;
    return 0;
}

/* Drain and stop the worker (after everything queued has run). */
static void cs_destroy(copy_stream *cs)
{
    if (cs->started) {
        pthread_mutex_lock(&cs->mu);
        cs->stop = true;
        pthread_cond_signal(&cs->cv_work);
        pthread_mutex_unlock(&cs->mu);
        pthread_join(cs->thread, NULL);
    }
    pthread_mutex_destroy(&cs->mu);
    pthread_cond_destroy(&cs->cv_work);
    pthread_cond_destroy(&cs->cv_space);
    pthread_cond_destroy(&cs->cv_idle);
}

static void cpu_free(sp_backend_t *be)
{
    cpu_ctx *c = ctx_of(be);
    if (!c)
        return;
    cs_destroy(&c->qs);
    cs_destroy(&c->cs);
    sp_cpu_free(c->cpu);
    free(c->accum);
    free(c);
}

/* ---- memory ---- */

static int cpu_buffer_alloc(sp_backend_t *be, sp_buffer_t *b, sp_mem_kind kind, size_t size)
{
    if (kind == SP_MEM_HOST_PINNED) {
        sp_host_buf *hb = calloc(1, sizeof *hb);
        if (!hb)
            return sp_error(ENOMEM, "backend %s: out of memory", be->name);
        int rc = sp_host_pool_alloc(hb, size ? size : 1, NULL);
        if (rc < 0) {
            free(hb);
            return rc;
        }
        b->base = hb->ptr;
        b->impl = hb;
    } else {
        void *p = NULL;
        size_t rounded = (size + 63) / 64 * 64;
        if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0)
            return sp_error(ENOMEM, "backend %s: cannot allocate %zu bytes", be->name, size);
        b->base = p;
    }
    b->host = true;
    return 0;
}

static void cpu_buffer_free(sp_backend_t *be, sp_buffer_t *b)
{
    (void)be;
    if (b->impl) {
        sp_host_pool_free(b->impl);
        free(b->impl);
    } else {
        free(b->base);
    }
}

static int cpu_buffer_set(sp_backend_t *be, sp_buffer_t *b, size_t off, const void *src, size_t n)
{
    cs_drain(&ctx_of(be)->qs); /* synchronous: after the compute stream's queued copies */
    memcpy((char *)b->base + off, src, n);
    return 0;
}

static int cpu_buffer_get(sp_backend_t *be, const sp_buffer_t *b, size_t off, void *dst, size_t n)
{
    cs_drain(&ctx_of(be)->qs); /* synchronous: after the compute stream's queued copies */
    memcpy(dst, (const char *)b->base + off, n);
    return 0;
}

static int cpu_buffer_memset(sp_backend_t *be, sp_buffer_t *b, size_t off, int byte, size_t n)
{
    cs_drain(&ctx_of(be)->qs); /* synchronous: after the compute stream's queued copies */
    memset((char *)b->base + off, byte, n);
    return 0;
}

/* ---- ordering ---- */

static int cpu_event_new(sp_backend_t *be, sp_event_t *ev)
{
    cpu_event *e = calloc(1, sizeof *e);
    if (!e)
        return sp_error(ENOMEM, "backend %s: out of memory", be->name);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    ev->impl = e;
    return 0;
}

static void cpu_event_free(sp_backend_t *be, sp_event_t *ev)
{
    cpu_event *e = ev->impl;
    ev_wait_for(e, ev_recorded(e)); /* a signal still queued must not touch freed memory */
    (void)be;
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

static int cpu_event_record(sp_backend_t *be, sp_event_t *ev, sp_stream_id s)
{
    cpu_event *e = ev->impl;
    pthread_mutex_lock(&e->mu);
    uint64_t seq = ++e->recorded;
    pthread_mutex_unlock(&e->mu);
    cs_push(stream_q(be, s), (item){.kind = ITEM_SIGNAL, .ev = e, .seq = seq});
    return 0;
}

static int cpu_stream_wait(sp_backend_t *be, sp_stream_id s, sp_event_t *ev)
{
    cpu_event *e = ev->impl;
    uint64_t seq = ev_recorded(e);
    if (s == SP_STREAM_COMPUTE) {
        /* blocking: host code after this call may read what the event guards */
        cs_drain(&ctx_of(be)->qs);
        ev_wait_for(e, seq);
    } else {
        cs_push(&ctx_of(be)->cs, (item){.kind = ITEM_WAIT, .ev = e, .seq = seq});
    }
    return 0;
}

static int cpu_event_sync(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    cpu_event *e = ev->impl;
    ev_wait_for(e, ev_recorded(e));
    return 0;
}

static bool cpu_event_done(sp_backend_t *be, sp_event_t *ev)
{
    (void)be;
    cpu_event *e = ev->impl;
    pthread_mutex_lock(&e->mu);
    bool done = e->done >= e->recorded;
    pthread_mutex_unlock(&e->mu);
    return done;
}

static int cpu_stream_sync(sp_backend_t *be, sp_stream_id s)
{
    cs_drain(stream_q(be, s));
    return 0;
}

static int cpu_copy(sp_backend_t *be, sp_stream_id s, sp_copy_dir dir, void *dst, const void *src, size_t n)
{
    (void)dir; /* every CPU backend pointer is a host pointer */
    cs_push(stream_q(be, s), (item){.kind = ITEM_COPY, .dst = dst, .src = src, .n = n});
    return 0;
}

/* ---- ops ---- */

/* Every op starts here: the compute stream's queued copies and waits come first. */
static sp_cpu *cpu_for_op(sp_backend_t *be)
{
    cs_drain(&ctx_of(be)->qs);
    sp_cpu *c = ctx_of(be)->cpu;
    c->numerics = be->numerics;
    return c;
}

static bool cpu_supports(const sp_backend_t *be, sp_op op, const void *desc)
{
    if (!desc)
        return true;
    switch (op) {
    case SP_OP_MATMUL: {
        const sp_matmul_desc *d = desc;
        if (d->nw < 1 || d->nw > SP_MM_MAX || (d->swiglu && d->nw != 2))
            return false;
        for (int i = 0; i < d->nw; i++)
            if (!sp_op_matmul_supported(d->w[i]->type) || (d->swiglu && d->bias[i]))
                return false;
        if (d->accumulate &&
            (d->nw != 1 || d->swiglu || (size_t)d->n * (size_t)d->w[0]->rows > ctx_of(be)->accum_floats))
            return false;
        return true;
    }
    case SP_OP_GET_ROWS:
        return sp_op_matmul_supported(((const sp_get_rows_desc *)desc)->w->type);
    case SP_OP_SEGATTN: {
        const sp_segattn_desc *d = desc;
        return !d->tail || !d->tail_bytes || d->tail_bytes == d->tail->mem;
    }
    default:
        return true;
    }
}

static int cpu_get_rows(sp_backend_t *be, const sp_get_rows_desc *d)
{
    cpu_for_op(be);
    for (int t = 0; t < d->n; t++) {
        int rc = sp_op_get_row(d->w, d->ids[t], d->out + (size_t)t * (size_t)d->ldo);
        if (rc)
            return rc;
    }
    return 0;
}

static void add_bias(float *y, int ldy, const float *b, int n, int64_t rows)
{
    for (int t = 0; t < n; t++)
        for (int64_t i = 0; i < rows; i++)
            y[(size_t)t * (size_t)ldy + (size_t)i] += b[i];
}

static int cpu_matmul(sp_backend_t *be, const sp_matmul_desc *d)
{
    sp_cpu *c = cpu_for_op(be);
    int rc;
    if (d->accumulate) {
        /* y += x W^T: the product into the backend's scratch, then added row by row. */
        cpu_ctx *cc = ctx_of(be);
        int rows = (int)d->w[0]->rows;
        if ((rc = sp_op_matmul(c, d->w[0], d->x, d->n, d->ldx, cc->accum, rows)) != 0)
            return rc;
        if (d->bias[0])
            add_bias(cc->accum, rows, d->bias[0], d->n, rows);
        for (int t = 0; t < d->n; t++) {
            float *y = d->y[0] + (size_t)t * (size_t)d->ldy[0];
            const float *p = cc->accum + (size_t)t * (size_t)rows;
            for (int i = 0; i < rows; i++)
                y[i] += p[i];
        }
        return 0;
    }
    if (d->nw == 1 && !d->swiglu)
        rc = sp_op_matmul(c, d->w[0], d->x, d->n, d->ldx, d->y[0], d->ldy[0]);
    else
        rc = sp_op_matmul_multi(c, d->nw, d->w, d->y, d->ldy, d->x, d->n, d->ldx, d->swiglu);
    if (rc)
        return rc;
    for (int i = 0; i < d->nw; i++)
        if (d->bias[i])
            add_bias(d->y[i], d->ldy[i], d->bias[i], d->n, d->w[i]->rows);
    return 0;
}

static int cpu_rmsnorm(sp_backend_t *be, const sp_rmsnorm_desc *d)
{
    cpu_for_op(be);
    void (*f)(float *, const float *, const float *, int, float) =
        be->numerics == SP_NUMERICS_GGML ? sp_op_rmsnorm_ggml : sp_op_rmsnorm;
    for (int r = 0; r < d->n_rows; r++)
        f(d->y + (size_t)r * (size_t)d->ldy, d->x + (size_t)r * (size_t)d->ldx, d->w, d->n, d->eps);
    return 0;
}

static int cpu_rope(sp_backend_t *be, const sp_rope_desc *d)
{
    cpu_for_op(be);
    for (int t = 0; t < d->n_tok; t++)
        if (d->pos[t] < 0 || d->pos[t] >= d->table_n_pos)
            return sp_error(EINVAL, "rope: position %d outside the table (%lld positions)", (int)d->pos[t],
                            (long long)d->table_n_pos);
    sp_op_rope(d->x, d->n_tok, d->n_heads, d->head_dim, (int)d->ld, d->pos, d->table, d->mode);
    return 0;
}

static int cpu_swiglu(sp_backend_t *be, const sp_swiglu_desc *d)
{
    cpu_for_op(be);
    (be->numerics == SP_NUMERICS_GGML ? sp_op_swiglu_ggml : sp_op_swiglu)(d->out, d->gate, d->up, (int)d->n);
    return 0;
}

static int cpu_attention(sp_backend_t *be, const sp_attn_desc *d) { return sp_op_attention(cpu_for_op(be), d); }

static int cpu_scores_prepare(sp_backend_t *be, const sp_scores_prepare_desc *d)
{
    cpu_for_op(be);
    return sp_kv_scores_prepare(d->raw, d->n_heads, d->l, d->window, d->kernel, (sp_pool_type)d->pool_type,
                                d->divide_by_l_minus_a, d->out);
}

static int cpu_topk(sp_backend_t *be, const sp_topk_desc *d)
{
    cpu_for_op(be);
    for (int r = 0; r < d->n_rows; r++) {
        int64_t n = sp_kv_topk(d->s + (size_t)r * (size_t)d->ld, d->n, d->k, d->idx + (size_t)r * (size_t)d->idx_ld);
        if (n < 0)
            return (int)n;
    }
    return 0;
}

static int cpu_codebook_build(sp_backend_t *be, const sp_codebook_build_desc *d)
{
    cpu_for_op(be);
    sp_codebook cb = {0};
    int rc = sp_codebook_build(d->x, d->n, d->d, d->mu, d->theta, &cb);
    if (rc < 0)
        return rc;
    memcpy(d->index, cb.index, sizeof(uint32_t) * (size_t)d->n);
    memcpy(d->rep, cb.rep, sizeof(uint32_t) * (size_t)cb.n_entries);
    memcpy(d->mag, cb.mag, sizeof(float) * (size_t)d->n);
    memcpy(d->unit, cb.unit, sizeof(float) * (size_t)d->n * (size_t)d->d);
    *d->n_entries = cb.n_entries;
    sp_codebook_free(&cb);
    return 0;
}

static int cpu_codebook_code(sp_backend_t *be, const sp_codebook_code_desc *d)
{
    cpu_for_op(be);
    for (int v = 0; v < d->n_vec; v++)
        if (d->tail_n[v] >= d->tail_cap)
            return sp_error(ENOSPC, "codebook code: the tail of vector %d is full (%lld entries)", v,
                            (long long)d->tail_cap);
    for (int v = 0; v < d->n_vec; v++) {
        uint16_t mag;
        uint32_t idx = sp_kv_tail_code_vector(d->seg_cb + (size_t)d->seg_off[v] * (size_t)d->d, d->seg_n[v],
                                              d->tail_ent + (size_t)v * (size_t)d->tail_stride, &d->tail_n[v],
                                              d->d, d->x + (size_t)v * (size_t)d->ldx, d->theta, &mag);
        d->idx[(size_t)v * (size_t)d->out_stride] = idx;
        d->mag[(size_t)v * (size_t)d->out_stride] = mag;
    }
    return 0;
}

typedef struct segattn_job {
    const sp_segattn_desc *d;
    const sp_kv_segment *seg;
    int group, head_dim, first;
    size_t work_floats;
    atomic_int rc;
} segattn_job;

static void segattn_unit(void *arg, int i, int ith)
{
    segattn_job *j = arg;
    const sp_segattn_desc *d = j->d;
    int h = j->first + i;
    size_t row = (size_t)(d->kv_head < 0 ? h : 0) * (size_t)j->group * (size_t)j->head_dim;
    int rc = sp_segattn_decode(j->seg, d->tail, h, d->q + row, d->rope_table, d->rope_n_pos, d->mode, d->scale,
                               d->out + row, d->scratch + (size_t)ith * j->work_floats);
    if (rc)
        atomic_store(&j->rc, rc);
}

static int cpu_segattn(sp_backend_t *be, const sp_segattn_desc *d)
{
    sp_cpu *c = cpu_for_op(be);
    sp_kv_segment view;
    const sp_kv_segment *seg = d->seg;
    if (d->seg_bytes && d->seg_bytes != d->seg->buf) {
        sp_kv_segment_view_at(&view, d->seg, d->seg_bytes);
        seg = &view;
    }
    const sp_kv_seg_header *h = seg->hdr;
    int nkv = h->n_kv_heads, heads = d->kv_head < 0 ? nkv : 1;
    size_t need = 0;
    for (int i = 0; i < nkv; i++) {
        size_t w = sp_segattn_work_floats(seg, d->tail, i);
        if (w > need)
            need = w;
    }
    int threads = c->n_threads < heads ? c->n_threads : heads;
    if (need * (size_t)c->n_threads > d->scratch_floats)
        return sp_error(ENOSPC, "segment attention: scratch of %zu floats, %zu needed (%d threads x %zu)",
                        d->scratch_floats, need * (size_t)c->n_threads, c->n_threads, need);
    (void)threads;
    segattn_job j = {.d = d, .seg = seg, .group = h->n_q_heads / nkv, .head_dim = h->head_dim,
                     .first = d->kv_head < 0 ? 0 : d->kv_head, .work_floats = need};
    atomic_init(&j.rc, 0);
    sp_pool_for(c->pool, heads, segattn_unit, &j);
    return atomic_load(&j.rc);
}

static int cpu_kv_store(sp_backend_t *be, const sp_kv_store_desc *d)
{
    cpu_for_op(be);
    sp_op_kv_store(d);
    return 0;
}

static int cpu_argmax(sp_backend_t *be, const sp_argmax_desc *d)
{
    cpu_for_op(be);
    for (int r = 0; r < d->n_rows; r++) {
        const float *x = d->logits + (size_t)r * (size_t)d->ld;
        int32_t best = -1;
        for (int64_t i = 0; i < d->n; i++)
            if (!isnan(x[i]) && (best < 0 || x[i] > x[best]))
                best = (int32_t)i;
        d->out[r] = best;
    }
    return 0;
}

size_t sp_backend_cpu_segattn_scratch_floats(const sp_backend_t *be, size_t per_head_floats)
{
    return per_head_floats * (size_t)ctx_of(be)->cpu->n_threads;
}

static const sp_backend_iface cpu_iface = {
    .api_version = SP_BACKEND_API_VERSION,
    .free = cpu_free,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .buffer_set = cpu_buffer_set,
    .buffer_get = cpu_buffer_get,
    .buffer_memset = cpu_buffer_memset,
    .event_new = cpu_event_new,
    .event_free = cpu_event_free,
    .event_record = cpu_event_record,
    .stream_wait = cpu_stream_wait,
    .event_sync = cpu_event_sync,
    .event_done = cpu_event_done,
    .stream_sync = cpu_stream_sync,
    .copy = cpu_copy,
    .supports = cpu_supports,
    .get_rows = cpu_get_rows,
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .swiglu = cpu_swiglu,
    .attn_prefill = cpu_attention,
    .attn_decode = cpu_attention,
    .scores_prepare = cpu_scores_prepare,
    .topk = cpu_topk,
    .codebook_build = cpu_codebook_build,
    .codebook_code = cpu_codebook_code,
    .segattn = cpu_segattn,
    .argmax = cpu_argmax,
    .sample = NULL, /* sampling stays in the host sampler (model/sampler.c) on a CPU run */
    .kv_store = cpu_kv_store,
};

sp_backend_t *sp_backend_cpu_new(const sp_backend_params *p)
{
    if (p->n_threads < 1) {
        sp_error(EINVAL, "cpu backend: n_threads must be >= 1 (got %d)", p->n_threads);
        return NULL;
    }
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        sp_error(ENOMEM, "cpu backend: out of memory");
        return NULL;
    }
    cs_init(&c->cs);
    cs_init(&c->qs);
    char name[64];
    snprintf(name, sizeof name, "cpu (%d thread%s)", p->n_threads, p->n_threads == 1 ? "" : "s");
    sp_backend_t *be = sp_backend_shell_new(&cpu_iface, c, SP_BACKEND_CPU, p->numerics, name);
    if (!be) {
        cpu_free(&(sp_backend_t){.ctx = c});
        return NULL;
    }
    if (!(c->cpu = sp_cpu_new(p->n_threads, p->thread_floats, p->shared_floats)))
        goto fail;
    c->cpu->numerics = p->numerics;
    if (p->accum_floats) {
        if (!(c->accum = malloc(sizeof(float) * p->accum_floats))) {
            sp_error(ENOMEM, "cpu backend: cannot allocate %zu floats of matmul scratch", p->accum_floats);
            goto fail;
        }
        c->accum_floats = p->accum_floats;
    }
    if (cs_start(&c->cs) < 0 || cs_start(&c->qs) < 0)
        goto fail;
    return be;
fail:
    sp_backend_free(be);
    return NULL;
}

void sp_backend_cpu_set_copy_delay_us(sp_backend_t *be, sp_stream_id s, unsigned us)
{
    if (be && be->kind == SP_BACKEND_CPU)
        atomic_store(&stream_q(be, s)->delay_us, us);
}

sp_cpu *sp_backend_cpu_kernels(sp_backend_t *be)
{
    return be && be->kind == SP_BACKEND_CPU ? ctx_of(be)->cpu : NULL;
}
