/* host_pool.h - pinned host memory for the host tier and staging buffers: page-aligned, mlock()ed
 * where permitted (a one-time notice when not), bound to the chosen NUMA node when a topology is
 * given, and allocated by a device backend's pinning allocator when one is registered (the CUDA
 * backend registers cudaHostAlloc, so host->device copies are true DMA).
 *
 * Thread-safety: the functions are thread-safe; a buffer is owned by whoever allocated it.
 */
#ifndef SP_HOST_POOL_H
#define SP_HOST_POOL_H

#include <stdbool.h>
#include <stddef.h>

#include "topology.h"

enum {
    SP_HOST_LOCKED = 1u << 0, /* mlock() succeeded (or cudaHostAlloc pinned it) */
    SP_HOST_CUDA = 1u << 1,   /* from the registered pinner (cudaHostAlloc); freed by it */
    SP_HOST_BOUND = 1u << 2,  /* bound to the topology's chosen NUMA node */
    SP_HOST_REGISTERED = 1u << 3, /* our mapping, page-locked by the pinner's register_range */
};

/* A device backend's allocator of page-locked host memory (NULL from alloc: fall back to mlock).
 * register_range/unregister_range (optional, both or neither) page-lock memory the pool mapped
 * itself: with a topology the pool maps, binds to the chosen NUMA node (the GPU's), touches the
 * pages there and then registers them, since the driver's own allocation (alloc) lands wherever
 * the calling thread happens to run. */
typedef struct sp_host_pinner {
    void *user;
    void *(*alloc)(void *user, size_t size);
    void (*free)(void *user, void *p);
    int (*register_range)(void *user, void *p, size_t size);
    void (*unregister_range)(void *user, void *p);
} sp_host_pinner;

/* Register (or with NULL remove) the pinner used by later allocations; p must outlive every buffer
 * it allocated. Thread-safe. */
void sp_host_pool_set_pinner(const sp_host_pinner *p);

typedef struct {
    void *ptr;      /* page-aligned; NULL for an empty buffer */
    size_t size;    /* bytes requested */
    size_t mapped;  /* bytes mapped (size rounded up to pages) */
    unsigned flags; /* SP_HOST_* */
    const sp_host_pinner *pinner; /* SP_HOST_CUDA: the allocator that frees it */
} sp_host_buf;

/* Allocate size bytes (zeroed). topo may be NULL (no NUMA binding). With a pinner: page-locked for
 * the device, on topo's node when the pinner can register and the OS lets the pool bind. Returns 0 or -ENOMEM with a
 * message naming the size. */
int sp_host_pool_alloc(sp_host_buf *out, size_t size, const sp_topology_t *topo);

/* Release a buffer (accepts an empty one) and reset it to empty. */
void sp_host_pool_free(sp_host_buf *b);

#endif
