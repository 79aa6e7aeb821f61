/* bench_io.c - short io-bench: sequential spill-tier read/write GB/s through the store's engine vs
 * fio on the same file, interleaved repeats. Usage: bench_io [dir] [file_MiB] [repeats].
 * Prints a markdown table; the full grid with JSON output is `spindle io-bench`. */
#include "iobench.h"
#include "sp_error.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 512;
    int repeats = argc > 3 ? atoi(argv[3]) : 3;
    const size_t bs[] = {64 << 10, 1 << 20, 4 << 20};
    const int qd[] = {1, 8, 32};
    sp_iobench_opts o = {.dir = dir, .file_size = mib << 20, .block_sizes = bs, .n_block_sizes = 3,
                         .queue_depths = qd, .n_queue_depths = 3, .repeats = repeats,
                         .engines = 7, .reads = true, .writes = true, .with_fio = true,
                         .register_buffers = true, .progress = stderr};
    sp_iobench_row *rows;
    int n;
    if (sp_iobench_run(&o, &rows, &n) < 0) {
        fprintf(stderr, "bench_io: %s\n", sp_last_error());
        return 1;
    }
    printf("io-bench: %s, file %llu MiB, %d repeats (mean ± sd, ours and fio interleaved; buffered "
           "reads after posix_fadvise DONTNEED, fio --invalidate=1)\n\n", dir,
           (unsigned long long)mib, repeats);
    sp_iobench_print(stdout, rows, n, SP_IOB_URING_DIRECT, 1 << 20, 32);
    free(rows);
    return 0;
}
