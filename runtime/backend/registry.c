/* registry.c - the one place that knows which backends were built: CUDA when the build found a CUDA
 * compiler (SPINDLE_WITH_CUDA, set for this file only), the CPU always. Everything else asks here. */
#include "backend_impl.h"

#include "sp_error.h"

#include <errno.h>
#include <string.h>

static const char *const kind_names[SP_BACKEND_KIND_COUNT] = {[SP_BACKEND_CPU] = "cpu",
                                                              [SP_BACKEND_CUDA] = "cuda"};

const char *sp_backend_kind_name(sp_backend_kind kind)
{
    return (unsigned)kind < SP_BACKEND_KIND_COUNT ? kind_names[kind] : NULL;
}

int sp_backend_kind_parse(const char *name, sp_backend_kind *out)
{
    for (int k = 0; k < SP_BACKEND_KIND_COUNT; k++)
        if (name && !strcmp(name, kind_names[k])) {
            *out = (sp_backend_kind)k;
            return 0;
        }
    return sp_error(EINVAL, "unknown backend '%s' (use cpu or cuda)", name ? name : "");
}

bool sp_backend_available(sp_backend_kind kind, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = NULL;
    switch (kind) {
    case SP_BACKEND_CPU:
        return true;
    case SP_BACKEND_CUDA:
#ifdef SPINDLE_WITH_CUDA
        return sp_backend_cuda_available(why);
#else
        *why = "not built: this build has no CUDA (configure with a CUDA toolkit, -DSPINDLE_CUDA=ON)";
        return false;
#endif
    default:
        *why = "unknown backend";
        return false;
    }
}

sp_backend_t *sp_backend_create(sp_backend_kind kind, const sp_backend_params *p)
{
    sp_backend_params def = sp_backend_default_params();
    if (!p)
        p = &def;
    if (p->version != SP_BACKEND_API_VERSION) {
        sp_error(EINVAL, "backend params: version %u, this library has %u (use sp_backend_default_params)",
                 p->version, (unsigned)SP_BACKEND_API_VERSION);
        return NULL;
    }
    const char *why = NULL;
    if (!sp_backend_available(kind, &why)) {
        sp_error(ENODEV, "backend %s is not available: %s", sp_backend_kind_name(kind) ? sp_backend_kind_name(kind) : "?",
                 why);
        return NULL;
    }
    switch (kind) {
    case SP_BACKEND_CPU:
        return sp_backend_cpu_new(p);
#ifdef SPINDLE_WITH_CUDA
    case SP_BACKEND_CUDA:
        return sp_backend_cuda_new(p);
#endif
    default:
        sp_error(ENODEV, "backend %d is not available", (int)kind);
        return NULL;
    }
}
