/* model_internal.h - the loaded model's tensors, shared by model.c and the device upload
 * (weights_device.c). Private to runtime/model/. */
#ifndef SP_MODEL_INTERNAL_H
#define SP_MODEL_INTERNAL_H

#include "backend.h"
#include "gguf.h"
#include "model.h"

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
    size_t n_vecs;                       /* floats in vecs */
};

#endif
