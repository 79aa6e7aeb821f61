/* backend_cpu.h - what the CPU backend offers beyond backend.h (create it with
 * sp_backend_create(SP_BACKEND_CPU, ...)). */
#ifndef SP_BACKEND_CPU_H
#define SP_BACKEND_CPU_H

#include <stddef.h>

#include "backend.h"
#include "ops.h"

/* Test hook: stream s sleeps `us` microseconds before each of its copies, so a consumer that does
 * not wait for a copy's event reads stale bytes, and a refill that does not wait for a reader's
 * event overwrites what the reader's copy has not read yet. 0 turns it off. No-op elsewhere. */
void sp_backend_cpu_set_copy_delay_us(sp_backend_t *be, sp_stream_id s, unsigned us);

/* The kernel context (thread pool, scratch) behind a CPU backend, for code that still drives
 * cpu/ops.h directly (benchmarks). NULL for other backends. */
sp_cpu *sp_backend_cpu_kernels(sp_backend_t *be);

/* Scratch floats sp_backend_segattn needs on this backend given the per-KV-head need
 * (sp_segattn_work_floats, maximum over the heads): one slice per pool thread. */
size_t sp_backend_cpu_segattn_scratch_floats(const sp_backend_t *be, size_t per_head_floats);

#endif
