/* host_pool.c - pinned, page-aligned host buffers (see host_pool.h). Device-pinned memory comes from
 * the allocator a backend registered; this file knows nothing of CUDA. */
#include "host_pool.h"

#include "sp_error.h"
#include "sp_alloc.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* The pinning allocator a device backend registered (cudaHostAlloc for CUDA), or none. */
static _Atomic(const sp_host_pinner *) pinner;

void sp_host_pool_set_pinner(const sp_host_pinner *p) { atomic_store(&pinner, p); }

static void *pinned_alloc(size_t size, const sp_host_pinner **used)
{
    const sp_host_pinner *p = atomic_load(&pinner);
    *used = p;
    return p ? p->alloc(p->user, size) : NULL;
}

static atomic_flag notice_mlock = ATOMIC_FLAG_INIT, notice_bind = ATOMIC_FLAG_INIT;

int sp_host_pool_alloc(sp_host_buf *out, size_t size, const sp_topology_t *topo)
{
    memset(out, 0, sizeof *out);
    if (size == 0)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t mapped = (size + page - 1) / page * page;
    const sp_host_pinner *pin = NULL;
    void *p = pinned_alloc(mapped, &pin);
    if (p) {
        memset(p, 0, mapped);
        *out = (sp_host_buf){p, size, mapped, SP_HOST_CUDA | SP_HOST_LOCKED, pin};
        return 0;
    }
    p = sp_alloc_fault() ? MAP_FAILED : mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return sp_error(ENOMEM, "host pool: cannot map %zu bytes: %s", mapped, strerror(errno));
    unsigned flags = 0;
    /* Bind before the pages are touched, so first touch lands on the chosen node. */
    if (topo) {
        if (sp_topo_bind_memory(topo, p, mapped) == 0)
            flags |= SP_HOST_BOUND;
        else if (!atomic_flag_test_and_set(&notice_bind))
            sp_notice("host pool: NUMA binding refused (%s); memory stays where the kernel puts it",
                      sp_last_error());
    }
    if (mlock(p, mapped) == 0)
        flags |= SP_HOST_LOCKED;
    else if (!atomic_flag_test_and_set(&notice_mlock))
        sp_notice("host pool: mlock of %zu bytes refused (%s); host tier memory is pageable "
                  "(raise `ulimit -l` to pin it)", mapped, strerror(errno));
    *out = (sp_host_buf){p, size, mapped, flags, NULL};
    return 0;
}

void sp_host_pool_free(sp_host_buf *b)
{
    if (!b || !b->ptr)
        return;
    if (b->flags & SP_HOST_CUDA) {
        b->pinner->free(b->pinner->user, b->ptr);
    } else {
        if (b->flags & SP_HOST_LOCKED)
            munlock(b->ptr, b->mapped);
        munmap(b->ptr, b->mapped);
    }
    memset(b, 0, sizeof *b);
}
