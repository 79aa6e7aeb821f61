/* blas_guard.c - address-space headroom for OpenBLAS's work buffers (see blas_guard.h). */
#include "blas_guard.h"

#include "sp_error.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

int sp_blas_guard_headroom(int n_callers)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    if (n_callers < 1)
        n_callers = 1;
    size_t need = (size_t)n_callers * SP_BLAS_BUFFER_BYTES;
    /* PROT_NONE costs no memory but counts against RLIMIT_AS exactly like OpenBLAS's mapping. */
    void *p = mmap(NULL, need, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return sp_error(ENOMEM, "the address-space limit (ulimit -v %llu KiB) leaves no room for "
                                "OpenBLAS's work buffers (%d x %zu MiB, one per compute thread; "
                                "OpenBLAS would retry forever): raise ulimit -v or use fewer threads (-t)",
                        (unsigned long long)(rl.rlim_cur / 1024), n_callers, SP_BLAS_BUFFER_BYTES >> 20);
    munmap(p, need);
    return 0;
}
