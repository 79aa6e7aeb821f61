/* blas_guard.h - OpenBLAS never fails an allocation: when its per-caller GEMM work buffer cannot be
 * mapped it retries forever (blas_memory_alloc). Under an address-space limit (ulimit -v) that is a
 * hang, not an error, so spindle checks the headroom itself before it calls GEMM. */
#ifndef SP_BLAS_GUARD_H
#define SP_BLAS_GUARD_H

/* Address space one concurrent GEMM caller makes OpenBLAS map (its BUFFER_SIZE, 128 MiB on
 * x86-64, plus a margin). */
#define SP_BLAS_BUFFER_BYTES ((size_t)129 << 20)

/* Under a finite RLIMIT_AS, check that n_callers OpenBLAS work buffers can still be mapped (a
 * PROT_NONE probe mapping, released at once). Returns 0 (also without a limit), or -ENOMEM with a
 * message naming the limit and what to do. Thread-safe; the answer is only as good as the moment:
 * call it after the big allocations and before the first GEMM. */
int sp_blas_guard_headroom(int n_callers);

#endif
