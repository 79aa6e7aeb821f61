/* iobench.c - sequential spill-tier bandwidth through the store's engine, side by side with fio on
 * the same file (see iobench.h).
 *
 * DESIGN
 * - One store per (engine, block, QD) cell: the store's slots are sized by QD and block, so a
 *   cell measures exactly the configuration the runtime would use with those [spill] settings.
 * - The store's file is laid out with one untimed stream write; then each repeat runs ours and
 *   fio back to back, alternating which goes first, writes (if asked) before reads.
 * - fio gets the store's file path, so both read the same blocks: same fragmentation, same
 *   position on the device.
 */
#define _GNU_SOURCE /* O_DIRECT */
#include "iobench.h"

#include "sp_error.h"
#include "uring_store.h"
#include "sp_time.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *sp_iobench_engine_name(sp_iob_engine e)
{
    static const char *const n[] = {"io_uring+O_DIRECT", "io_uring buffered", "pread/pwrite"};
    return (unsigned)e < SP_IOB_ENGINE_COUNT ? n[e] : "?";
}

const char *sp_iobench_engine_key(sp_iob_engine e)
{
    static const char *const n[] = {"direct", "buffered", "pread"};
    return (unsigned)e < SP_IOB_ENGINE_COUNT ? n[e] : "?";
}

static void drop_cache(int fd)
{
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

bool sp_iobench_fio_version(char *buf, size_t len)
{
    FILE *p = popen("fio --version 2>/dev/null", "r");
    if (!p)
        return false;
    bool ok = fgets(buf, (int)len, p) != NULL;
    int st = pclose(p);
    if (!ok || st != 0)
        return false;
    buf[strcspn(buf, "\r\n")] = '\0';
    return buf[0] != '\0';
}

/* Run fio once; returns GB/s or < 0. The path comes from the store (dir + generated name); it is
 * single-quoted for the shell, so a dir with a quote in it is refused up front. */
static double fio_once(const char *path, sp_iob_engine e, bool write, uint64_t size, size_t bs, int qd)
{
    char cmd[2048];
    int n = snprintf(cmd, sizeof cmd,
                     "fio --name=sp --filename='%s' --rw=%s --bs=%zu --size=%llu --ioengine=%s "
                     "--iodepth=%d --direct=%d --invalidate=1 %s %s --output-format=json 2>/dev/null",
                     path, write ? "write" : "read", bs, (unsigned long long)size,
                     e == SP_IOB_PSYNC ? "psync" : "io_uring", e == SP_IOB_PSYNC ? 1 : qd,
                     e == SP_IOB_URING_DIRECT,
                     e == SP_IOB_URING_DIRECT ? "--fixedbufs=1 --registerfiles=1" : "",
                     write ? "--end_fsync=1" : "");
    if (n < 0 || (size_t)n >= sizeof cmd)
        return -1;
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char *json = NULL;
    size_t cap = 0, len = 0;
    char chunk[4096];
    size_t got;
    bool oom = false;
    while ((got = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (len + got + 1 > cap) {
            cap = (len + got + 1) * 2;
            char *nj = realloc(json, cap);
            if (!nj) {
                oom = true;
                break;
            }
            json = nj;
        }
        memcpy(json + len, chunk, got);
        len += got;
        json[len] = '\0';
    }
    pclose(p);
    if (!json || oom) {
        free(json);
        return -1;
    }
    /* jobs[0].<read|write>.bw_bytes: the first "bw_bytes" after the op's key. */
    double gbs = -1;
    const char *op = strstr(json, write ? "\"write\" :" : "\"read\" :");
    const char *bw = op ? strstr(op, "\"bw_bytes\" :") : NULL;
    if (bw)
        gbs = strtod(bw + strlen("\"bw_bytes\" :"), NULL) / 1e9;
    free(json);
    return gbs;
}

/* One timed pass of ours. Buffered reads start from a cold page cache; buffered writes count
 * their fdatasync. Returns GB/s or a negative errno (message set). */
static double ours_once(sp_uring_store_t *s, int sync_fd, sp_iob_engine e, bool write, uint64_t size)
{
    if (!write && e != SP_IOB_URING_DIRECT)
        drop_cache(sync_fd);
    double t0 = sp_now_s();
    int rc = sp_uring_store_stream(s, write, size);
    if (rc < 0)
        return rc;
    if (write && e != SP_IOB_URING_DIRECT && fdatasync(sync_fd) != 0)
        return sp_error(errno, "io-bench: fdatasync %s: %s", sp_uring_store_path(s), strerror(errno));
    double t = sp_now_s() - t0;
    return (double)size / t / 1e9;
}

/* One cell: open a store, lay the file out, run the interleaved repeats, fill one row per op. */
static int run_cell(const sp_iobench_opts *o, sp_iob_engine e, size_t bs, int qd, bool fio,
                    sp_iobench_row *rows, int *n_rows, bool *skip_engine)
{
    sp_uring_store_opts so = {.dir = o->dir, .direct_io = e == SP_IOB_URING_DIRECT ? 1 : 2,
                              .queue_depth = (unsigned)qd, .block_size = bs,
                              .register_buffers = o->register_buffers && e != SP_IOB_PSYNC,
                              .verify_checksums = false, .no_uring = e == SP_IOB_PSYNC};
    sp_uring_store_t *s = sp_uring_store_open(&so);
    if (!s) {
        if (e == SP_IOB_URING_DIRECT && !o->require_direct && strstr(sp_last_error(), "O_DIRECT")) {
            sp_notice("io-bench: %s: skipping io_uring+O_DIRECT", sp_last_error());
            *skip_engine = true;
            return 0;
        }
        return -EIO; /* the store's message stands */
    }
    int rc = 0, sync_fd = -1;
    char fpath[64]; /* the spill file has no name: fio opens it through our descriptor */
    if ((rc = sp_uring_store_fd_path(s, fpath, sizeof fpath)) < 0)
        goto cleanup;
    sync_fd = open(fpath, O_RDONLY | O_CLOEXEC);
    if (sync_fd < 0) {
        rc = sp_error(errno, "io-bench: cannot open %s: %s", fpath, strerror(errno));
        goto cleanup;
    }
    rc = sp_uring_store_stream(s, true, o->file_size); /* layout, untimed */
    if (rc < 0)
        goto cleanup;
    if (fdatasync(sync_fd) != 0) {
        rc = sp_error(errno, "io-bench: fdatasync %s: %s", sp_uring_store_path(s), strerror(errno));
        goto cleanup;
    }
    for (int w = 1; w >= 0; w--) {
        if ((w && !o->writes) || (!w && !o->reads))
            continue;
        sp_iobench_row *row = &rows[(*n_rows)];
        *row = (sp_iobench_row){.engine = e, .write = w, .block_size = bs, .queue_depth = qd,
                                .repeats = o->repeats, .fio_mean_gbs = -1, .fio_sd_gbs = -1};
        bool fio_ok = fio;
        for (int k = 0; k < o->repeats; k++) {
            double ours, theirs = -1;
            if (fio && k % 2 == 1)
                theirs = fio_once(fpath, e, w, o->file_size, bs, qd);
            ours = ours_once(s, sync_fd, e, w, o->file_size);
            if (ours < 0) {
                rc = (int)ours;
                goto cleanup;
            }
            if (fio && k % 2 == 0)
                theirs = fio_once(fpath, e, w, o->file_size, bs, qd);
            row->ours_gbs[k] = ours;
            row->fio_gbs[k] = theirs;
            if (theirs <= 0)
                fio_ok = false;
        }
        sp_mean_sd(row->ours_gbs, o->repeats, &row->mean_gbs, &row->sd_gbs);
        if (fio_ok)
            sp_mean_sd(row->fio_gbs, o->repeats, &row->fio_mean_gbs, &row->fio_sd_gbs);
        else if (fio)
            sp_notice("io-bench: fio failed on some passes; fio columns left empty");
        (*n_rows)++;
        if (o->progress)
            sp_iobench_print_row(o->progress, row);
    }
cleanup:
    if (sync_fd >= 0)
        close(sync_fd);
    sp_uring_store_close(s);
    return rc;
}

int sp_iobench_run(const sp_iobench_opts *o, sp_iobench_row **rows_out, int *n_out)
{
    *rows_out = NULL;
    *n_out = 0;
    if (!o || !o->dir || o->repeats < 1 || o->repeats > SP_IOB_MAX_REPEATS ||
        o->file_size < (1u << 20) || o->file_size % 4096 || o->n_block_sizes < 1 ||
        o->n_queue_depths < 1)
        return sp_error(EINVAL, "io-bench: bad options (dir, repeats 1..%d, file >= 1 MiB and a "
                                "multiple of 4 KiB, at least one block size and queue depth)",
                        SP_IOB_MAX_REPEATS);
    for (int i = 0; i < o->n_block_sizes; i++)
        if (o->block_sizes[i] < 4096 || o->block_sizes[i] % 4096)
            return sp_error(EINVAL, "io-bench: block size %zu is not a positive multiple of 4 KiB",
                            o->block_sizes[i]);
    for (int i = 0; i < o->n_queue_depths; i++) {
        if (o->queue_depths[i] < 1 || o->queue_depths[i] > 256)
            return sp_error(EINVAL, "io-bench: queue depth %d is outside 1..256", o->queue_depths[i]);
        for (int b = 0; b < o->n_block_sizes; b++)
            if ((uint64_t)o->queue_depths[i] * o->block_sizes[b] > SP_IOB_MAX_BOUNCE)
                return sp_error(EINVAL, "io-bench: block %zu x QD %d exceeds the store's %llu MiB "
                                        "of buffers", o->block_sizes[b], o->queue_depths[i],
                                (unsigned long long)(SP_IOB_MAX_BOUNCE >> 20));
    }
    char ver[64];
    bool fio = o->with_fio && sp_iobench_fio_version(ver, sizeof ver);
    if (o->with_fio && !fio)
        sp_notice("io-bench: fio is not on PATH: fio columns left empty");
    /* Rows: per engine, op, block, QD (pread/pwrite: one QD). */
    size_t max_rows = (size_t)SP_IOB_ENGINE_COUNT * 2 * (size_t)o->n_block_sizes * (size_t)o->n_queue_depths;
    sp_iobench_row *rows = calloc(max_rows, sizeof *rows);
    if (!rows)
        return sp_error(ENOMEM, "io-bench: out of memory");
    int rc = 0, n_rows = 0;
    for (int e = 0; e < SP_IOB_ENGINE_COUNT && rc == 0; e++) {
        if (!(o->engines & (1u << e)))
            continue;
        bool skip = false;
        for (int bi = 0; bi < o->n_block_sizes && rc == 0 && !skip; bi++) {
            for (int qi = 0; qi < o->n_queue_depths && rc == 0 && !skip; qi++) {
                int qd = o->queue_depths[qi];
                if (e == SP_IOB_PSYNC) {
                    if (qi > 0)
                        break;
                    qd = 1; /* no queue: one pass per block size */
                }
                rc = run_cell(o, (sp_iob_engine)e, o->block_sizes[bi], qd, fio, rows, &n_rows, &skip);
            }
        }
    }
    if (rc < 0) {
        free(rows);
        return rc;
    }
    *rows_out = rows;
    *n_out = n_rows;
    return 0;
}

/* One table line; `mark` non-NULL adds the last column. */
static void row_line(FILE *out, const sp_iobench_row *r, const char *mark)
{
    char fio[64] = "n/a", ratio[32] = "n/a";
    if (r->fio_mean_gbs > 0) {
        snprintf(fio, sizeof fio, "%.3f ± %.3f", r->fio_mean_gbs, r->fio_sd_gbs);
        snprintf(ratio, sizeof ratio, "%.3f", r->mean_gbs / r->fio_mean_gbs);
    }
    char block[32];
    if (r->block_size >= (1u << 20) && r->block_size % (1u << 20) == 0)
        snprintf(block, sizeof block, "%zu MiB", r->block_size >> 20);
    else
        snprintf(block, sizeof block, "%zu KiB", r->block_size >> 10);
    fprintf(out, "| %s | %s | %s | %d | %.3f ± %.3f | %s | %s |", sp_iobench_engine_name(r->engine),
            r->write ? "write" : "read", block, r->queue_depth, r->mean_gbs, r->sd_gbs, fio, ratio);
    if (mark)
        fprintf(out, " %s |", mark);
    fputc('\n', out);
}

void sp_iobench_print_row(FILE *out, const sp_iobench_row *r)
{
    row_line(out, r, NULL);
    fflush(out);
}

void sp_iobench_print(FILE *out, const sp_iobench_row *rows, int n_rows, sp_iob_engine mark_engine,
                      size_t mark_block, int mark_qd)
{
    fprintf(out, "| engine | op | block | QD | ours GB/s | fio GB/s | ours/fio | |\n"
                 "|---|---|---:|---:|---:|---:|---:|---|\n");
    for (int i = 0; i < n_rows; i++) {
        const sp_iobench_row *r = &rows[i];
        bool mark = mark_block && r->engine == mark_engine && !r->write &&
                    r->block_size == mark_block && r->queue_depth == mark_qd;
        row_line(out, r, mark ? "**<- target**" : "");
    }
    fflush(out);
}
