/* backend_stage.c - host arrays through a device backend's memory. See backend_stage.h. */
#include "backend_stage.h"

#include "sp_error.h"

#include <errno.h>
#include <stdint.h>

bool sp_backend_is_host(const sp_backend_t *be)
{
    return sp_backend_get_kind(be) == SP_BACKEND_CPU;
}

enum { STAGE_MAX_ARGS = 8, STAGE_ALIGN = 256 };

int sp_backend_run_staged(sp_backend_t *be, sp_stage_arg *args, int n_args,
                          int (*run)(sp_backend_t *be, const void *desc), const void *desc)
{
    if (sp_backend_is_host(be))
        return run(be, desc);
    if (n_args < 0 || n_args > STAGE_MAX_ARGS)
        return sp_error(EINVAL, "backend stage: %d arrays (at most %d)", n_args, STAGE_MAX_ARGS);
    size_t off[STAGE_MAX_ARGS], total = 0;
    void *host[STAGE_MAX_ARGS];
    for (int i = 0; i < n_args; i++) {
        off[i] = total;
        total += (args[i].bytes + STAGE_ALIGN - 1) / STAGE_ALIGN * STAGE_ALIGN;
        host[i] = *args[i].field;
    }
    sp_buffer_t *b = sp_backend_buffer_alloc(be, SP_MEM_DEVICE, total ? total : 1, NULL);
    if (!b)
        return -ENOMEM;
    uint8_t *base = sp_backend_buffer_base(b);
    int rc = 0;
    for (int i = 0; i < n_args; i++) {
        if (args[i].in && args[i].bytes && host[i] && (rc = sp_backend_buffer_set(b, off[i], host[i], args[i].bytes)) < 0)
            break;
        *args[i].field = host[i] ? base + off[i] : NULL;
    }
    if (rc == 0)
        rc = run(be, desc);
    if (rc == 0 && (rc = sp_backend_stream_sync(be, SP_STREAM_COMPUTE)) == 0)
        for (int i = 0; i < n_args && rc == 0; i++)
            if (args[i].out && args[i].bytes && host[i])
                rc = sp_backend_buffer_get(b, off[i], host[i], args[i].bytes);
    for (int i = 0; i < n_args; i++)
        *args[i].field = host[i];
    sp_backend_buffer_free(b);
    return rc;
}
