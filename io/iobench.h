/* iobench.h - raw spill-tier bandwidth: sequential read and write GB/s over block sizes x queue
 * depths, measured through the spill store's own engine (sp_uring_store_stream: the same slots,
 * registered huge-page bounce buffers, batching and retry rules that put/get use) in three modes:
 * io_uring + O_DIRECT, io_uring buffered, and pread/pwrite; and the same patterns through fio (when
 * installed) on the same file, for the ratio ours / fio.
 *
 * Fairness: each cell runs `repeats` passes of ours and of fio interleaved (ours, fio, fio, ours,
 * ...: the order alternates) so load from other processes hits both alike; the file is laid out
 * once before the cell's timed passes, so writes overwrite allocated blocks for both.
 * Page cache: before every buffered read pass the file is fdatasync()ed and dropped with
 * posix_fadvise(POSIX_FADV_DONTNEED) (fio gets --invalidate=1, which does the same); buffered write
 * passes include their final fdatasync() in the time (fio: --end_fsync=1).
 * pread/pwrite has no queue: it runs at QD 1 only (fio: psync engine).
 *
 * Thread-safety: sp_iobench_run is reentrant (it owns its files and buffers) but two runs on one
 * device measure each other.
 */
#ifndef SP_IOBENCH_H
#define SP_IOBENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { SP_IOB_URING_DIRECT, SP_IOB_URING_BUFFERED, SP_IOB_PSYNC, SP_IOB_ENGINE_COUNT } sp_iob_engine;

#define SP_IOB_MAX_REPEATS 64
#define SP_IOB_MAX_BOUNCE (256ull << 20) /* block x QD cap (the store's bounce memory cap) */

typedef struct {
    const char *dir;           /* spill directory (must exist) */
    uint64_t file_size;        /* bytes per pass (file size), multiple of 4 KiB, >= 1 MiB */
    const size_t *block_sizes; /* e.g. 64 KiB .. 4 MiB, multiples of 4 KiB */
    int n_block_sizes;
    const int *queue_depths;   /* e.g. 1 .. 64, each 1..256 */
    int n_queue_depths;
    int repeats;               /* passes per cell, 1..SP_IOB_MAX_REPEATS (>= 2 for an sd) */
    unsigned engines;          /* bit mask of 1 << sp_iob_engine */
    bool reads, writes;
    bool with_fio;             /* also run fio when `fio` is on PATH */
    bool register_buffers;     /* registered buffers + file for the io_uring engines */
    bool require_direct;       /* O_DIRECT refused: fail (true) or skip the direct engine (false) */
    FILE *progress;            /* one line per cell, or NULL */
} sp_iobench_opts;

typedef struct {
    sp_iob_engine engine;
    bool write;
    size_t block_size;
    int queue_depth;
    int repeats;
    double mean_gbs, sd_gbs;         /* ours, GB/s = 1e9 bytes/s; sd is the sample sd (n-1) */
    double fio_mean_gbs, fio_sd_gbs; /* < 0 when fio was not run */
    double ours_gbs[SP_IOB_MAX_REPEATS], fio_gbs[SP_IOB_MAX_REPEATS]; /* per pass, in run order */
} sp_iobench_row;

/* Run the grid. *rows is malloc()ed (caller frees). Returns 0 or a negative errno (message set);
 * the benchmark files are removed in every case. Not thread-safe against a second run on the
 * same device (they would measure each other). */
int sp_iobench_run(const sp_iobench_opts *o, sp_iobench_row **rows, int *n_rows);

/* Markdown table: engine, op, block, QD, ours mean +- sd, fio mean +- sd, ratio. The row matching
 * (mark_engine, read, mark_block, mark_qd) is marked "**<- target**" (mark_block 0: none). */
void sp_iobench_print(FILE *out, const sp_iobench_row *rows, int n_rows, sp_iob_engine mark_engine,
                      size_t mark_block, int mark_qd);

/* One progress line for a finished cell. */
void sp_iobench_print_row(FILE *out, const sp_iobench_row *r);

/* "io_uring+O_DIRECT", "io_uring buffered", "pread/pwrite". */
const char *sp_iobench_engine_name(sp_iob_engine e);
/* Short names used on the command line and in JSON: "direct", "buffered", "pread". */
const char *sp_iobench_engine_key(sp_iob_engine e);

/* fio's version string ("fio-3.33") into buf, or false when fio is not on PATH. */
bool sp_iobench_fio_version(char *buf, size_t len);

#endif
