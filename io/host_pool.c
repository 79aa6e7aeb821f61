/* host_pool.c - pinned, page-aligned host buffers (see host_pool.h). The only CUDA #ifdef of the
 * tier code lives here, around the allocation and release of CUDA-pinned memory. */
#include "host_pool.h"

#include "sp_error.h"
#include "sp_alloc.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef SPINDLE_WITH_CUDA
#include <cuda_runtime_api.h>
static void *cuda_pinned_alloc(size_t size)
{
    int n = 0;
    void *p = NULL;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0)
        return NULL;
    if (cudaHostAlloc(&p, size, cudaHostAllocPortable) != cudaSuccess)
        return NULL;
    return p;
}
static void cuda_pinned_free(void *p) { cudaFreeHost(p); }
#else
static void *cuda_pinned_alloc(size_t size) { (void)size; return NULL; }
static void cuda_pinned_free(void *p) { (void)p; }
#endif

static atomic_flag notice_mlock = ATOMIC_FLAG_INIT, notice_bind = ATOMIC_FLAG_INIT;

int sp_host_pool_alloc(sp_host_buf *out, size_t size, const sp_topology_t *topo)
{
    memset(out, 0, sizeof *out);
    if (size == 0)
        return 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t mapped = (size + page - 1) / page * page;
    void *p = cuda_pinned_alloc(mapped);
    if (p) {
        memset(p, 0, mapped);
        *out = (sp_host_buf){p, size, mapped, SP_HOST_CUDA | SP_HOST_LOCKED};
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
    *out = (sp_host_buf){p, size, mapped, flags};
    return 0;
}

void sp_host_pool_free(sp_host_buf *b)
{
    if (!b || !b->ptr)
        return;
    if (b->flags & SP_HOST_CUDA) {
        cuda_pinned_free(b->ptr);
    } else {
        if (b->flags & SP_HOST_LOCKED)
            munlock(b->ptr, b->mapped);
        munmap(b->ptr, b->mapped);
    }
    memset(b, 0, sizeof *b);
}
