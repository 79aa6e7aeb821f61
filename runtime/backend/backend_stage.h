/* backend_stage.h - one op on host arrays, run on a backend whose memory the host cannot read (a
 * device): the inputs are copied into one scratch buffer of the backend, the descriptor's pointer
 * fields are pointed there, the op runs, the outputs are copied back and waited for. For work done
 * once per prompt (the compression's scores, top-k and codebooks) where the data is on the host;
 * never for the decode path (it synchronises). On a backend with host memory (the CPU) the op runs
 * on the host arrays directly. */
#ifndef SP_BACKEND_STAGE_H
#define SP_BACKEND_STAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "backend.h"

/* One array of the descriptor: *field points at bytes bytes of host memory; in: copied to the
 * backend before the op, out: copied back after it. */
typedef struct sp_stage_arg {
    void **field;
    size_t bytes;
    bool in, out;
} sp_stage_arg;

/* Whether be's buffers are host memory (then no staging is needed). */
bool sp_backend_is_host(const sp_backend_t *be);

/* run(be, desc) with every field of args staged (restored to the host pointers afterwards).
 * Returns run's result, or a negative errno from the staging. */
int sp_backend_run_staged(sp_backend_t *be, sp_stage_arg *args, int n_args,
                          int (*run)(sp_backend_t *be, const void *desc), const void *desc);

#endif
