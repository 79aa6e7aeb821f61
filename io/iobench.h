/* iobench.h - raw spill-tier bandwidth: sequential read and write GB/s over block sizes x queue
 * depths for io_uring + O_DIRECT (registered buffers, fixed file), io_uring buffered and
 * pread/pwrite, on one file in the spill directory, mean +- sd over repeats; and the same patterns
 * through fio (when installed) on the same file, for the ratio ours / fio.
 *
 * Page cache: before every buffered read pass the file is fsync()ed and dropped from the cache with
 * posix_fadvise(POSIX_FADV_DONTNEED) (fio gets --invalidate=1, which does the same); buffered write
 * passes include their final fsync() in the time (fio: --end_fsync=1).
 * pread/pwrite has no queue: it runs at QD 1 only (fio: psync engine).
 */
#ifndef SP_IOBENCH_H
#define SP_IOBENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum { SP_IOB_URING_DIRECT, SP_IOB_URING_BUFFERED, SP_IOB_PSYNC, SP_IOB_ENGINE_COUNT } sp_iob_engine;

typedef struct {
    const char *dir;           /* spill directory */
    uint64_t file_size;        /* bytes per pass (file size) */
    const size_t *block_sizes; /* e.g. 64 KiB .. 4 MiB */
    int n_block_sizes;
    const int *queue_depths;   /* e.g. 1 .. 64 */
    int n_queue_depths;
    int repeats;               /* passes per cell (>= 2 for an sd) */
    unsigned engines;          /* bit mask of 1 << sp_iob_engine */
    bool reads, writes;
    bool with_fio;             /* also run fio when `fio` is on PATH */
    FILE *progress;            /* one line per cell, or NULL */
} sp_iobench_opts;

typedef struct {
    sp_iob_engine engine;
    bool write;
    size_t block_size;
    int queue_depth;
    double mean_gbs, sd_gbs;   /* ours, GB/s = 1e9 bytes/s */
    double fio_mean_gbs, fio_sd_gbs; /* < 0 when fio was not run */
} sp_iobench_row;

/* Run the grid. *rows is malloc()ed (caller frees). Returns 0 or a negative errno (message set);
 * the benchmark file is removed in every case. */
int sp_iobench_run(const sp_iobench_opts *o, sp_iobench_row **rows, int *n_rows);

/* Markdown table: engine, op, bs, qd, ours mean +- sd, fio mean +- sd, ratio. */
void sp_iobench_print(FILE *out, const sp_iobench_row *rows, int n_rows);

const char *sp_iobench_engine_name(sp_iob_engine e);

#endif
