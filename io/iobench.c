/* iobench.c - sequential NVMe bandwidth, ours vs fio on the same file (see iobench.h). */
#define _GNU_SOURCE /* O_DIRECT */
#include "iobench.h"

#include "sp_error.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

const char *sp_iobench_engine_name(sp_iob_engine e)
{
    static const char *const n[] = {"io_uring+O_DIRECT", "io_uring buffered", "pread/pwrite"};
    return (unsigned)e < SP_IOB_ENGINE_COUNT ? n[e] : "?";
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* One sequential pass over [0, size) with io_uring, qd requests in flight. Returns seconds or <0. */
static double uring_pass(int fd, bool write, uint64_t size, size_t bs, int qd, uint8_t *bufs,
                         bool fixed)
{
    struct io_uring ring;
    if (io_uring_queue_init((unsigned)qd, &ring, 0) < 0)
        return -1;
    if (fixed) {
        struct iovec *iov = calloc((size_t)qd, sizeof *iov);
        for (int i = 0; i < qd; i++)
            iov[i] = (struct iovec){bufs + (size_t)i * bs, bs};
        if (io_uring_register_buffers(&ring, iov, (unsigned)qd) < 0 || io_uring_register_files(&ring, &fd, 1) < 0)
            fixed = false;
        free(iov);
    }
    uint64_t next = 0, done = 0, n = (size + bs - 1) / bs;
    int inflight = 0, err = 0;
    int *free_slots = malloc(sizeof(int) * (size_t)qd), n_free = qd;
    for (int i = 0; i < qd; i++)
        free_slots[i] = i;
    double t0 = now_s();
    while (done < n && !err) {
        while (n_free > 0 && next < n) {
            int slot = free_slots[--n_free];
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
            uint8_t *b = bufs + (size_t)slot * bs;
            uint64_t off = next * bs;
            unsigned len = (unsigned)(off + bs <= size ? bs : size - off);
            if (fixed) {
                if (write) io_uring_prep_write_fixed(sqe, 0, b, len, off, slot);
                else io_uring_prep_read_fixed(sqe, 0, b, len, off, slot);
                sqe->flags |= IOSQE_FIXED_FILE;
            } else if (write) {
                io_uring_prep_write(sqe, fd, b, len, off);
            } else {
                io_uring_prep_read(sqe, fd, b, len, off);
            }
            io_uring_sqe_set_data64(sqe, ((uint64_t)slot << 40) | next);
            next++;
            inflight++;
        }
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            int slot = (int)(cqe->user_data >> 40);
            uint64_t idx = cqe->user_data & ((1ull << 40) - 1);
            uint64_t off = idx * bs;
            unsigned len = (unsigned)(off + bs <= size ? bs : size - off);
            if (cqe->res != (int)len)
                err = cqe->res < 0 ? cqe->res : -EIO; /* a benchmark reports, it does not retry */
            free_slots[n_free++] = slot;
            inflight--;
            done++;
        }
        io_uring_cq_advance(&ring, seen);
    }
    if (write && !err)
        fsync(fd); /* buffered writes must reach the disk to count; a no-op cost for O_DIRECT */
    double t = now_s() - t0;
    while (inflight-- > 0) {
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&ring, &cqe) < 0)
            break;
        io_uring_cqe_seen(&ring, cqe);
    }
    io_uring_queue_exit(&ring);
    free(free_slots);
    return err ? -1 : t;
}

static double psync_pass(int fd, bool write, uint64_t size, size_t bs, uint8_t *buf)
{
    double t0 = now_s();
    for (uint64_t off = 0; off < size; off += bs) {
        size_t len = off + bs <= size ? bs : size - off;
        ssize_t r = write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
        if (r != (ssize_t)len)
            return -1;
    }
    if (write)
        fsync(fd);
    return now_s() - t0;
}

static void drop_cache(int fd)
{
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}

static void mean_sd(const double *v, int n, double *mean, double *sd)
{
    double s = 0, q = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    *mean = s / n;
    for (int i = 0; i < n; i++)
        q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

static bool fio_available(void) { return system("fio --version >/dev/null 2>&1") == 0; }

/* Run fio once; returns GB/s or < 0. */
static double fio_once(const char *path, sp_iob_engine e, bool write, uint64_t size, size_t bs, int qd)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "fio --name=sp --filename=%s --rw=%s --bs=%zu --size=%llu --ioengine=%s --iodepth=%d "
             "--direct=%d --invalidate=1 %s %s --output-format=json 2>/dev/null",
             path, write ? "write" : "read", bs, (unsigned long long)size,
             e == SP_IOB_PSYNC ? "psync" : "io_uring", qd, e == SP_IOB_URING_DIRECT,
             e == SP_IOB_URING_DIRECT ? "--fixedbufs=1 --registerfiles=1" : "",
             write ? "--end_fsync=1" : "");
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char *json = NULL;
    size_t cap = 0, len = 0;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *nj = realloc(json, cap);
            if (!nj) {
                free(json);
                pclose(p);
                return -1;
            }
            json = nj;
        }
        memcpy(json + len, chunk, n);
        len += n;
        json[len] = '\0';
    }
    pclose(p);
    if (!json)
        return -1;
    /* jobs[0].<read|write>.bw_bytes: the first "bw_bytes" after the op's key. */
    double gbs = -1;
    const char *op = strstr(json, write ? "\"write\" :" : "\"read\" :");
    const char *bw = op ? strstr(op, "\"bw_bytes\" :") : NULL;
    if (bw)
        gbs = strtod(bw + strlen("\"bw_bytes\" :"), NULL) / 1e9;
    free(json);
    return gbs;
}

int sp_iobench_run(const sp_iobench_opts *o, sp_iobench_row **rows_out, int *n_out)
{
    *rows_out = NULL;
    *n_out = 0;
    if (!o || !o->dir || o->repeats < 1 || o->file_size < (1u << 20))
        return sp_error(EINVAL, "io-bench: bad options (dir, repeats >= 1, file >= 1 MiB)");
    size_t max_bs = 0;
    int max_qd = 1;
    for (int i = 0; i < o->n_block_sizes; i++)
        if (o->block_sizes[i] > max_bs)
            max_bs = o->block_sizes[i];
    for (int i = 0; i < o->n_queue_depths; i++)
        if (o->queue_depths[i] > max_qd)
            max_qd = o->queue_depths[i];
    char path[1024];
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint32_t)getpid();
    snprintf(path, sizeof path, "%s/spindle-%d-%08x.iobench", o->dir, (int)getpid(), r);
    int rc = 0, fd_b = -1, fd_d = -1, n_rows = 0;
    uint8_t *bufs = NULL;
    double *v = calloc((size_t)o->repeats, sizeof *v), *fv = calloc((size_t)o->repeats, sizeof *fv);
    sp_iobench_row *rows = calloc((size_t)(SP_IOB_ENGINE_COUNT * 2 * o->n_block_sizes * o->n_queue_depths),
                                  sizeof *rows);
    bool fio = o->with_fio && fio_available();
    if (!v || !fv || !rows || posix_memalign((void **)&bufs, 4096, max_bs * (size_t)max_qd) != 0) {
        rc = sp_error(ENOMEM, "io-bench: out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < max_bs * (size_t)max_qd; i++)
        bufs[i] = (uint8_t)(i * 131 + 7); /* incompressible enough; never all zeros */
    fd_b = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd_b < 0) {
        rc = sp_error(errno, "io-bench: cannot create %s: %s", path, strerror(errno));
        goto cleanup;
    }
    /* Lay the file out once so reads never hit holes. */
    if (psync_pass(fd_b, true, o->file_size, max_bs, bufs) < 0) {
        rc = sp_error(errno ? errno : EIO, "io-bench: cannot write %s: %s", path, strerror(errno));
        goto cleanup;
    }
    fd_d = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd_d < 0 && (o->engines & (1u << SP_IOB_URING_DIRECT)))
        sp_notice("io-bench: %s refuses O_DIRECT (%s): skipping io_uring+O_DIRECT", o->dir,
                  strerror(errno));
    for (int e = 0; e < SP_IOB_ENGINE_COUNT; e++) {
        if (!(o->engines & (1u << e)) || (e == SP_IOB_URING_DIRECT && fd_d < 0))
            continue;
        for (int w = 0; w < 2; w++) {
            if ((w && !o->writes) || (!w && !o->reads))
                continue;
            for (int bi = 0; bi < o->n_block_sizes; bi++) {
                for (int qi = 0; qi < o->n_queue_depths; qi++) {
                    size_t bs = o->block_sizes[bi];
                    int qd = o->queue_depths[qi];
                    if (e == SP_IOB_PSYNC && qd != 1)
                        continue;
                    int fd = e == SP_IOB_URING_DIRECT ? fd_d : fd_b;
                    for (int k = 0; k < o->repeats; k++) {
                        if (e != SP_IOB_URING_DIRECT)
                            drop_cache(fd_b);
                        double t = e == SP_IOB_PSYNC ? psync_pass(fd, w, o->file_size, bs, bufs)
                                                     : uring_pass(fd, w, o->file_size, bs, qd, bufs,
                                                                  e == SP_IOB_URING_DIRECT);
                        if (t <= 0) {
                            rc = sp_error(EIO, "io-bench: %s %s pass failed (bs %zu, qd %d)",
                                          sp_iobench_engine_name((sp_iob_engine)e),
                                          w ? "write" : "read", bs, qd);
                            goto cleanup;
                        }
                        v[k] = (double)o->file_size / t / 1e9;
                        fv[k] = fio ? fio_once(path, (sp_iob_engine)e, w, o->file_size, bs, qd) : -1;
                    }
                    sp_iobench_row *row = &rows[n_rows++];
                    *row = (sp_iobench_row){.engine = (sp_iob_engine)e, .write = w, .block_size = bs,
                                            .queue_depth = qd, .fio_mean_gbs = -1, .fio_sd_gbs = -1};
                    mean_sd(v, o->repeats, &row->mean_gbs, &row->sd_gbs);
                    if (fio && fv[0] > 0)
                        mean_sd(fv, o->repeats, &row->fio_mean_gbs, &row->fio_sd_gbs);
                    if (o->progress)
                        sp_iobench_print(o->progress, row, -1);
                }
            }
        }
    }
cleanup:
    if (fd_d >= 0)
        close(fd_d);
    if (fd_b >= 0) {
        close(fd_b);
        unlink(path);
    }
    free(bufs);
    free(v);
    free(fv);
    if (rc < 0) {
        free(rows);
        return rc;
    }
    *rows_out = rows;
    *n_out = n_rows;
    return 0;
}

/* n_rows < 0: print rows[0] as a single line without the header (progress). */
void sp_iobench_print(FILE *out, const sp_iobench_row *rows, int n_rows)
{
    bool single = n_rows < 0;
    if (!single) {
        fprintf(out, "| engine | op | block | QD | ours GB/s | fio GB/s | ours/fio |\n"
                     "|---|---|---:|---:|---:|---:|---:|\n");
    }
    for (int i = 0; i < (single ? 1 : n_rows); i++) {
        const sp_iobench_row *r = &rows[i];
        char fio[64] = "n/a", ratio[32] = "n/a";
        if (r->fio_mean_gbs > 0) {
            snprintf(fio, sizeof fio, "%.3f ± %.3f", r->fio_mean_gbs, r->fio_sd_gbs);
            snprintf(ratio, sizeof ratio, "%.3f", r->mean_gbs / r->fio_mean_gbs);
        }
        fprintf(out, "| %s | %s | %zu KiB | %d | %.3f ± %.3f | %s | %s |\n",
                sp_iobench_engine_name(r->engine), r->write ? "write" : "read", r->block_size >> 10,
                r->queue_depth, r->mean_gbs, r->sd_gbs, fio, ratio);
    }
    fflush(out);
}
