/* weights_device.c - copy a loaded model's tensors into one device buffer (weights_device.h). */
#include "weights_device.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sp_alloc.h"
#include "sp_error.h"

static size_t wmat_bytes(const sp_wmat *w)
{
    return (size_t)w->rows * w->row_bytes;
}

static size_t align_up(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

/* Every matrix of the model, in a fixed order: tok_embd, output, then per layer. */
static int n_mats(const sp_model_t *m)
{
    return 2 + 7 * m->hp.n_layer;
}

static const sp_wmat *mat_at(const sp_model_t *m, int i)
{
    if (i == 0)
        return &m->tok_embd;
    if (i == 1)
        return &m->output;
    const sp_layer *ly = &m->layers[(i - 2) / 7];
    const sp_wmat *all[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
    return all[(i - 2) % 7];
}

static sp_wmat *dev_mat_at(sp_weights_device *w, int i)
{
    if (i == 0)
        return &w->tok_embd;
    if (i == 1)
        return &w->output;
    sp_layer *ly = &w->layers[(i - 2) / 7];
    sp_wmat *all[7] = {&ly->wq, &ly->wk, &ly->wv, &ly->wo, &ly->w_gate, &ly->w_up, &ly->w_down};
    return all[(i - 2) % 7];
}

/* The device address of a host pointer into m->vecs (NULL stays NULL). */
static const float *vec_on_device(const sp_model_t *m, const float *host, const float *dev_vecs)
{
    return host ? dev_vecs + (host - m->vecs) : NULL;
}

int sp_weights_device_upload(sp_weights_device *w, const sp_model_t *m, sp_backend_t *be, const sp_budget *budget)
{
    memset(w, 0, sizeof *w);
    bool tied = m->output.data == m->tok_embd.data;
    size_t total = align_up(m->n_vecs * sizeof(float));
    for (int i = 0; i < n_mats(m); i++)
        if (!(i == 1 && tied))
            total += align_up(wmat_bytes(mat_at(m, i)));
    w->layers = sp_calloc((size_t)m->hp.n_layer, sizeof *w->layers);
    if (!w->layers)
        return sp_error(ENOMEM, "device weights: out of memory");
    w->buf = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, total, budget);
    if (!w->buf) {
        /* no split of the layers between the CPU and the device yet: name the keys that exist */
        int rc = sp_error(ENOMEM, "device weights: %.1f MiB of weights do not fit on %s (%s); raise [tiers] "
                          "device_budget (--set tiers.device_budget=...) if it is below the device's memory, or "
                          "run on the CPU with --backend cpu ([runtime] backend = cpu)", (double)total / 1048576.0,
                          sp_backend_name(be), sp_last_error());
        sp_weights_device_free(w);
        return rc;
    }
    w->bytes = total;
    char *base = sp_backend_buffer_base(w->buf);
    size_t off = 0;
    int rc = sp_backend_buffer_set(w->buf, off, m->vecs, m->n_vecs * sizeof(float));
    const float *dev_vecs = (const float *)base;
    off += align_up(m->n_vecs * sizeof(float));
    for (int l = 0; l < m->hp.n_layer; l++) {
        const sp_layer *h = &m->layers[l];
        sp_layer *d = &w->layers[l];
        d->attn_norm = vec_on_device(m, h->attn_norm, dev_vecs);
        d->ffn_norm = vec_on_device(m, h->ffn_norm, dev_vecs);
        d->bq = vec_on_device(m, h->bq, dev_vecs);
        d->bk = vec_on_device(m, h->bk, dev_vecs);
        d->bv = vec_on_device(m, h->bv, dev_vecs);
    }
    w->output_norm = vec_on_device(m, m->output_norm, dev_vecs);
    for (int i = 0; i < n_mats(m) && rc == 0; i++) {
        const sp_wmat *src = mat_at(m, i);
        sp_wmat *dst = dev_mat_at(w, i);
        *dst = *src;
        if (i == 1 && tied) {
            dst->data = w->tok_embd.data;
            continue;
        }
        dst->data = base + off;
        rc = sp_backend_buffer_set(w->buf, off, src->data, wmat_bytes(src));
        off += align_up(wmat_bytes(src));
    }
    if (rc < 0) {
        sp_weights_device_free(w);
        return rc;
    }
    return 0;
}

void sp_weights_device_free(sp_weights_device *w)
{
    sp_backend_buffer_free(w->buf);
    free(w->layers);
    memset(w, 0, sizeof *w);
}
