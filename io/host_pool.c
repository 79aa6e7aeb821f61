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

static atomic_flag notice_mlock = ATOMIC_FLAG_INIT, notice_bind = ATOMIC_FLAG_INIT;

/* Map and, with a topology, bind before the pages are touched, so first touch lands on the chosen
 * node. Returns the mapping or MAP_FAILED (message set); *bound says whether binding took. */
static void *map_bound(size_t mapped, const sp_topology_t *topo, bool *bound)
{
    *bound = false;
    void *p = sp_alloc_fault() ? MAP_FAILED : mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        sp_error(ENOMEM, "host pool: cannot map %zu bytes: %s", mapped, strerror(errno));
        return p;
    }
    if (topo) {
        if (sp_topo_bind_memory(topo, p, mapped) == 0)
            *bound = true;
        else if (!atomic_flag_test_and_set(&notice_bind))
            sp_notice("host pool: NUMA binding refused (%s); memory stays where the kernel puts it",
                      sp_last_error());
    }
    return p;
}

int sp_host_pool_alloc(sp_host_buf *out, size_t size, const sp_topology_t *topo)
{
    memset(out, 0, sizeof *out);
    if (size == 0)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t mapped = (size + page - 1) / page * page;
    const sp_host_pinner *pin = atomic_load(&pinner);
    bool bound;
    void *p;
    if (pin && topo && pin->register_range) {
        /* the GPU's node: our own mapping, bound and touched there, then page-locked */
        if ((p = map_bound(mapped, topo, &bound)) == MAP_FAILED)
            return -ENOMEM;
        memset(p, 0, mapped);
        if (pin->register_range(pin->user, p, mapped) == 0) {
            *out = (sp_host_buf){p, size, mapped,
                                 SP_HOST_CUDA | SP_HOST_LOCKED | SP_HOST_REGISTERED | (bound ? SP_HOST_BOUND : 0u), pin};
            return 0;
        }
        munmap(p, mapped);   /* the pinner's message stands; try its own allocation */
    }
    if (pin && (p = pin->alloc(pin->user, mapped)) != NULL) {
        memset(p, 0, mapped);
        *out = (sp_host_buf){p, size, mapped, SP_HOST_CUDA | SP_HOST_LOCKED, pin};
        return 0;
    }
    if ((p = map_bound(mapped, topo, &bound)) == MAP_FAILED)
        return -ENOMEM;
    unsigned flags = bound ? SP_HOST_BOUND : 0u;
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
    if (b->flags & SP_HOST_REGISTERED) {
        b->pinner->unregister_range(b->pinner->user, b->ptr);
        munmap(b->ptr, b->mapped);
    } else if (b->flags & SP_HOST_CUDA) {
        b->pinner->free(b->pinner->user, b->ptr);
    } else {
        if (b->flags & SP_HOST_LOCKED)
            munlock(b->ptr, b->mapped);
        munmap(b->ptr, b->mapped);
    }
    memset(b, 0, sizeof *b);
}
