/* huge_map.h - anonymous memory backed by transparent huge pages, for buffers that O_DIRECT reads
 * land in.
 *
 * Why: an O_DIRECT request is built from its buffer's physical segments. With 4 KiB pages a 1 MiB
 * read has 256 of them, more than a virtio/NVMe queue takes in one command (max_segments is often
 * 128..254), so the block layer splits it and the device sees many small commands; with 2 MiB
 * pages it is one or two segments. Measured on the development VM (virtio-blk, 1 GiB file): 1 MiB
 * reads at QD 1 went from ~0.8 GB/s (dd/fio into 4 KiB pages) to ~2.2 GB/s.
 *
 * The mapping is exactly [ptr, ptr + mapped): 2 MiB aligned, its length rounded up to 2 MiB, and
 * freed with sp_huge_unmap(ptr, mapped) (a plain munmap). Where THP is off the advice is ignored and
 * the memory is ordinary pages: slower for O_DIRECT, never wrong.
 */
#ifndef SP_HUGE_MAP_H
#define SP_HUGE_MAP_H

#include <stddef.h>

#define SP_HUGE_PAGE ((size_t)2 << 20) /* x86-64/arm64 transparent huge page size */

/* size rounded up to a multiple of SP_HUGE_PAGE (what sp_huge_map maps for it). */
size_t sp_huge_round(size_t size);

/* Map sp_huge_round(size) bytes (size > 0), advise MADV_HUGEPAGE and touch every page so the memory
 * is populated before first use. Returns the pointer and sets *mapped, or NULL (errno set). */
void *sp_huge_map(size_t size, size_t *mapped);
void sp_huge_unmap(void *ptr, size_t mapped); /* accepts NULL */

#endif
