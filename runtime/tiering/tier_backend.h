/* tier_backend.h - the device tier in a backend's memory: an sp_tier_device_ops table whose
 * allocations are buffers of the backend (sp_backend_buffer_alloc, SP_MEM_DEVICE) and whose copies
 * are the backend's synchronous buffer transfers. With it the tiers' device budget counts the
 * memory the context's own backend computes from (a CUDA device, or host memory for the CPU
 * backend), and device slots filled on the backend's copy stream are that memory.
 *
 * Thread-safety: alloc/free/copies may come from any thread (one mutex over the allocation list).
 * The table retains the backend until sp_tier_backend_free; free it after the tiers. */
#ifndef SP_TIER_BACKEND_H
#define SP_TIER_BACKEND_H

#include "backend.h"
#include "tier.h"

typedef struct sp_tier_backend sp_tier_backend_t;

sp_tier_backend_t *sp_tier_backend_new(sp_backend_t *be);   /* NULL with a message */
const sp_tier_device_ops *sp_tier_backend_ops(const sp_tier_backend_t *tb);
void sp_tier_backend_free(sp_tier_backend_t *tb);            /* accepts NULL */

#endif
