/* weights_device.h - the model's tensors copied once into one buffer of a device backend.
 *
 * The copy mirrors struct sp_model: the same sp_wmat/sp_layer shapes with data pointers into the
 * device buffer, so the forward pass reads either through one set of pointers. Tied embeddings
 * (output == tok_embd) are copied once. Matrices keep their stored (quantized) blocks: the GEMV
 * reads them as they are in the file. */
#ifndef SP_WEIGHTS_DEVICE_H
#define SP_WEIGHTS_DEVICE_H

#include "model_internal.h"

typedef struct sp_weights_device {
    sp_buffer_t *buf;        /* owns every byte below */
    size_t bytes;
    sp_wmat tok_embd, output;
    const float *output_norm;
    sp_layer *layers;        /* [n_layer], host array of device pointers */
} sp_weights_device;

/* Upload m to be, charged to budget (may be NULL). 0, or a negative errno with a message that says
 * how many bytes did not fit. */
int sp_weights_device_upload(sp_weights_device *w, const sp_model_t *m, sp_backend_t *be, const sp_budget *budget);
void sp_weights_device_free(sp_weights_device *w);   /* accepts a zeroed struct */

#endif
