/* uring_store.c - NVMe spill store: segments in one spill file, io_uring with O_DIRECT and
 * registered buffers, an XXH3-64 checksum per segment, fault injection, signal-safe cleanup.
 *
 * DESIGN
 * - Space: segments occupy 4 KiB-aligned extents of the file (first fit over a sorted free list,
 *   else appended). Freed extents are merged and reused; the file never shrinks while open.
 * - I/O: one request = one block_size piece of a segment, staged through bounce buffer slot i
 *   (registered buffer index i). Up to n_slots requests are in flight; the loop fills free slots,
 *   submits once per round (batching), then reaps every available completion. A request's
 *   sp_req pointer travels in user_data, so completions may arrive in any order.
 * - Errors: -EAGAIN resubmits as is; a short transfer advances the request and requeues the
 *   remainder; -EIO is retried SP_STORE_RETRIES times; anything else stops issuing, drains what is
 *   in flight (the slots are ours until their completion arrives), and fails the call.
 * - Lifetime: the spill file has no name while it is in use: O_TMPFILE where the file system has
 *   it, else created O_EXCL and unlinked at once. Only the descriptor keeps it, so the kernel frees
 *   it however the process ends (SIGKILL, a crash, SIGPIPE): no signal handler, no atexit hook, and
 *   no signal disposition of the caller is touched. Files named spindle-<pid>-*.seg of processes
 *   that no longer exist (older versions, or a kill between create and unlink) are swept at open.
 */
#define _GNU_SOURCE /* O_DIRECT */
#include "uring_store.h"

#include "huge_map.h"

#include "sp_alloc.h"
#include "sp_error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <dirent.h>
#include <unistd.h>
#include <xxhash.h>

#define ALIGN 4096u
#define MAX_BOUNCE_BYTES (256u << 20) /* cap on bounce memory: queue_depth x block_size */

/* ---- sweep of spill files left by dead processes ---- */

/* Remove dir/spindle-<pid>-<hex>.seg files whose process is gone. Another live spindle's files
 * are left alone (kill(pid, 0) tells; EPERM means it exists under another user). */
static void sweep_dead(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    int removed = 0;
    uint64_t bytes = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid, end = 0;
        unsigned r;
        if (sscanf(e->d_name, "spindle-%d-%8x.seg%n", &pid, &r, &end) != 2 || end == 0 ||
            e->d_name[end] != '\0' || pid <= 0 || pid == (int)getpid())
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char p[PATH_MAX];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && unlink(p) == 0) {
            removed++;
            bytes += (uint64_t)st.st_blocks * 512u;
        }
    }
    closedir(d);
    if (removed)
        sp_notice("spill dir '%s': removed %d spill file(s) of processes that no longer run "
                  "(%.2f MB on disk)", dir, removed, (double)bytes / 1e6);
}

/* ---- one-time notices ---- */

static atomic_flag notice_no_direct = ATOMIC_FLAG_INIT, notice_no_uring = ATOMIC_FLAG_INIT,
                   notice_no_register = ATOMIC_FLAG_INIT;

/* ---- store ---- */

typedef struct {
    uint64_t off, alloc; /* extent in the file (4 KiB multiples) */
    size_t size;         /* payload bytes */
    uint64_t hash;       /* XXH3_64bits(payload) */
    bool used;
} seg_rec;

typedef struct {
    uint64_t off, len;
} extent;

typedef struct sp_req {
    int slot;            /* bounce buffer / registered buffer index */
    uint8_t *buf;        /* where the piece's bytes go/come from: the slot's bounce buffer, or the
                            caller's buffer at user_off (zero-copy) */
    uint64_t off;        /* file offset of the piece */
    size_t len, done;    /* piece length (I/O bytes), bytes transferred so far */
    size_t user_off;     /* offset of the piece inside the caller's buffer */
    int retries;
    bool active;
} sp_req;

struct sp_uring_store {
    pthread_mutex_t lock;
    char path[PATH_MAX]; /* for messages only: the file has no name (see DESIGN) */
    int fd;
    sp_store_mode mode;
    bool ring_ok, fixed_bufs, fixed_file;
    struct io_uring ring;
    unsigned n_slots;
    size_t block_size;
    uint8_t *bounce;     /* n_slots x block_size, huge-page backed (sp_huge_map) */
    size_t bounce_len;   /* bytes mapped at bounce */
    bool stream_filled;  /* bounce holds the stream-write pattern (sp_uring_store_stream) */
    sp_req *reqs;        /* n_slots */
    int *free_slots;     /* n_slots: stack of idle slot indices during one do_io */
    bool zero_copy;      /* aligned caller buffers bypass the bounce slots */
    bool broken;         /* a failed drain left requests in flight: refuse further I/O */
    XXH3_state_t *hstate; /* streaming checksum of the segment being moved (under lock) */
    bool verify;
    seg_rec *segs;
    size_t n_segs, cap_segs;
    extent *free_ext;
    size_t n_free, cap_free;
    uint64_t file_end;
    sp_uring_store_stats st;
    unsigned fault_mask;
    int fault_nth;
    bool fault_persistent;
    int fault_seen;
};

const char *sp_uring_store_mode_name(sp_store_mode m)
{
    switch (m) {
    case SP_STORE_MODE_URING_DIRECT: return "io_uring+O_DIRECT";
    case SP_STORE_MODE_URING_BUFFERED: return "io_uring buffered";
    case SP_STORE_MODE_PSYNC: return "pread/pwrite";
    }
    return "?";
}

static uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

/* Switch fd to O_DIRECT and try an aligned write: the only reliable probe (tmpfs and some FUSE
 * file systems accept the flag on some kernels, then fail the I/O). Returns 0, or -errno with fd
 * back in buffered mode. */
static int probe_direct(int fd, unsigned faults)
{
    if (faults & SP_FAULT_NO_ODIRECT)
        return -EINVAL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_DIRECT) != 0)
        return -errno;
    void *buf = NULL;
    int err = 0;
    if (posix_memalign(&buf, ALIGN, ALIGN) != 0) {
        err = ENOMEM;
    } else {
        memset(buf, 0, ALIGN);
        ssize_t w = pwrite(fd, buf, ALIGN, 0);
        err = w == (ssize_t)ALIGN ? 0 : (w < 0 ? errno : EIO);
        free(buf);
    }
    if (!err && ftruncate(fd, 0) != 0)
        err = errno;
    if (err) {
        fcntl(fd, F_SETFL, fl);
        ftruncate(fd, 0);
        return -err;
    }
    return 0;
}

/* A spill file nobody else can see: O_TMPFILE, else a fresh O_EXCL name unlinked at once. Fills
 * s->path with a description for messages. Returns the fd or -errno. */
static int create_unnamed(sp_uring_store_t *s, const char *dir, unsigned faults)
{
    if (faults & SP_FAULT_DIR_RO)
        return -EROFS;
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) {
        snprintf(s->path, sizeof s->path, "%s/(unnamed spill file of pid %d)", dir, (int)getpid());
        return fd;
    }
    if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL && errno != ENOENT)
        return -errno; /* EACCES, EROFS, ENOSPC...: the named path would fail the same way */
    for (int attempt = 0; attempt < 16; attempt++) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint32_t)rand() ^ (uint32_t)attempt;
        char name[PATH_MAX - 16]; /* room for " (unlinked)" in s->path */
        snprintf(name, sizeof name, "%s/spindle-%d-%08x.seg", dir, (int)getpid(), r);
        fd = open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno == EEXIST)
            continue;
        if (fd < 0)
            return -errno;
        if (unlink(name) != 0) {
            int err = errno;
            close(fd);
            unlink(name);
            return -err;
        }
        snprintf(s->path, sizeof s->path, "%s (unlinked)", name);
        return fd;
    }
    return -EEXIST;
}

/* Bounce memory: huge-page backed (huge_map.h says why), populated before it is registered. */
static int bounce_alloc(sp_uring_store_t *s, size_t bytes)
{
    /* Below half a huge page the rounding would cost more than huge pages gain (the same rule
     * as sp_tier_dma_round): plain pages, so what is charged to the host tier stays close to
     * queue_depth x block_size. */
    if (bytes < SP_HUGE_PAGE / 2) {
        size_t len = (bytes + ALIGN - 1) / ALIGN * ALIGN;
        void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -errno;
        s->bounce = p;
        s->bounce_len = len;
        return 0;
    }
    s->bounce = sp_huge_map(bytes, &s->bounce_len);
    return s->bounce ? 0 : -errno;
}

/* Ring flags, best first. COOP_TASKRUN lets completions run at the next io_uring_enter instead of
 * interrupting the task with an IPI; TASKRUN_FLAG tells us when that work is pending. Not
 * SINGLE_ISSUER/DEFER_TASKRUN: a store is opened on one thread and used from the scheduler's
 * worker, and those flags bind the ring to its creator (submits from another task get -EEXIST). */
static int ring_init(struct io_uring *ring, unsigned entries)
{
    static const unsigned flag_sets[] = {
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SUBMIT_ALL,
        0,
    };
    int rc = -EINVAL;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        p.flags = flag_sets[i];
        rc = io_uring_queue_init_params(entries, ring, &p);
        if (rc != -EINVAL)
            break; /* success, or a failure that no flag change fixes (ENOSYS, EPERM, ENOMEM) */
    }
    return rc;
}

sp_uring_store_t *sp_uring_store_open(const sp_uring_store_opts *o)
{
    if (!o || !o->dir || !o->dir[0] || o->queue_depth < 1 || o->queue_depth > 256 ||
        o->block_size < ALIGN || o->block_size % ALIGN) {
        sp_error(EINVAL, "spill store: bad options (dir, queue_depth 1..256, block_size multiple "
                         "of 4KiB)");
        return NULL;
    }
    struct stat stt;
    if (stat(o->dir, &stt) != 0) {
        sp_error(errno, "spill dir '%s': %s (set [spill] dir to an existing writable directory)",
                 o->dir, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(stt.st_mode)) {
        sp_error(ENOTDIR, "spill dir '%s' is not a directory (set [spill] dir)", o->dir);
        return NULL;
    }
    sp_uring_store_t *s = sp_calloc(1, sizeof *s);
    if (!s) {
        sp_error(ENOMEM, "spill store: out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->fd = -1;
    s->verify = o->verify_checksums;
    s->block_size = o->block_size;
    s->zero_copy = true;

    sweep_dead(o->dir);
    int fd = create_unnamed(s, o->dir, o->open_faults);
    if (fd < 0) {
        sp_error(-fd, "cannot create a spill file in '%s': %s (set [spill] dir to a writable "
                      "directory)", o->dir, strerror(-fd));
        goto fail;
    }
    s->fd = fd;

    /* Direct I/O probe. */
    s->mode = SP_STORE_MODE_URING_BUFFERED;
    if (o->direct_io != 2) {
        int dr = probe_direct(s->fd, o->open_faults);
        if (dr == 0) {
            s->mode = SP_STORE_MODE_URING_DIRECT;
        } else if (o->direct_io == 1) {
            sp_error(-dr, "spill dir '%s' does not support O_DIRECT (%s) and [spill] direct_io = "
                          "on; use direct_io = auto or another directory", o->dir, strerror(-dr));
            goto fail;
        } else if (!atomic_flag_test_and_set(&notice_no_direct)) {
            sp_notice("spill dir '%s' refuses O_DIRECT (%s): using buffered I/O", o->dir,
                      strerror(-dr));
        }
    }

    s->n_slots = o->queue_depth;
    if ((size_t)s->n_slots * s->block_size > MAX_BOUNCE_BYTES)
        s->n_slots = (unsigned)(MAX_BOUNCE_BYTES / s->block_size);
    if (s->n_slots < 1)
        s->n_slots = 1;

    int rc = (o->open_faults & SP_FAULT_NO_URING) ? -ENOSYS
             : o->no_uring                        ? -ECANCELED
                                                  : ring_init(&s->ring, s->n_slots);
    if (rc < 0) {
        if (rc != -ECANCELED && !atomic_flag_test_and_set(&notice_no_uring))
            sp_notice("io_uring unavailable (%s): spill I/O falls back to pread/pwrite",
                      strerror(-rc));
        s->mode = SP_STORE_MODE_PSYNC;
        s->n_slots = 1;
    } else {
        s->ring_ok = true;
    }

    if (bounce_alloc(s, (size_t)s->n_slots * s->block_size) < 0) {
        sp_error(ENOMEM, "spill store: cannot allocate %u x %zu bytes of bounce buffers",
                 s->n_slots, s->block_size);
        goto fail;
    }
    s->reqs = sp_calloc(s->n_slots, sizeof *s->reqs);
    s->free_slots = sp_calloc(s->n_slots, sizeof *s->free_slots);
    s->hstate = XXH3_createState();
    if (!s->reqs || !s->free_slots || !s->hstate) {
        sp_error(ENOMEM, "spill store: out of memory");
        goto fail;
    }
    if (s->ring_ok && o->register_buffers) {
        struct iovec *iov = sp_calloc(s->n_slots, sizeof *iov);
        if (!iov) {
            sp_error(ENOMEM, "spill store: out of memory");
            goto fail;
        }
        for (unsigned i = 0; i < s->n_slots; i++) {
            iov[i].iov_base = s->bounce + (size_t)i * s->block_size;
            iov[i].iov_len = s->block_size;
        }
        int rb = io_uring_register_buffers(&s->ring, iov, s->n_slots);
        free(iov);
        int rf = io_uring_register_files(&s->ring, &s->fd, 1);
        s->fixed_bufs = rb == 0;
        s->fixed_file = rf == 0;
        if ((rb < 0 || rf < 0) && !atomic_flag_test_and_set(&notice_no_register))
            sp_notice("io_uring buffer/file registration failed (%s): using plain reads/writes",
                      strerror(-(rb < 0 ? rb : rf)));
    }
    return s;

fail:
    sp_uring_store_close(s);
    return NULL;
}

void sp_uring_store_close(sp_uring_store_t *s)
{
    if (!s)
        return;
    if (s->ring_ok)
        io_uring_queue_exit(&s->ring); /* also unregisters buffers and files */
    if (s->fd >= 0)
        close(s->fd); /* the last reference: the kernel frees the unnamed file */
    sp_huge_unmap(s->bounce, s->bounce_len);
    free(s->reqs);
    free(s->free_slots);
    XXH3_freeState(s->hstate); /* accepts NULL */
    free(s->segs);
    free(s->free_ext);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- extents ---- */

static uint64_t extent_alloc(sp_uring_store_t *s, uint64_t len)
{
    for (size_t i = 0; i < s->n_free; i++) {
        if (s->free_ext[i].len >= len) {
            uint64_t off = s->free_ext[i].off;
            s->free_ext[i].off += len;
            s->free_ext[i].len -= len;
            if (s->free_ext[i].len == 0) {
                memmove(&s->free_ext[i], &s->free_ext[i + 1], (s->n_free - i - 1) * sizeof(extent));
                s->n_free--;
            }
            return off;
        }
    }
    uint64_t off = s->file_end;
    s->file_end += len;
    return off;
}

static int extent_free(sp_uring_store_t *s, uint64_t off, uint64_t len)
{
    if (off + len == s->file_end) {
        s->file_end = off;
        /* Absorb a free extent that now touches the end. */
        if (s->n_free && s->free_ext[s->n_free - 1].off + s->free_ext[s->n_free - 1].len == s->file_end) {
            s->file_end = s->free_ext[s->n_free - 1].off;
            s->n_free--;
        }
        return 0;
    }
    if (s->n_free == s->cap_free) {
        size_t nc = s->cap_free ? 2 * s->cap_free : 16;
        extent *ne = sp_realloc(s->free_ext, nc * sizeof *ne);
        if (!ne)
            return -ENOMEM; /* the space is leaked inside the file, never reused: harmless */
        s->free_ext = ne;
        s->cap_free = nc;
    }
    size_t i = 0;
    while (i < s->n_free && s->free_ext[i].off < off)
        i++;
    memmove(&s->free_ext[i + 1], &s->free_ext[i], (s->n_free - i) * sizeof(extent));
    s->free_ext[i] = (extent){off, len};
    s->n_free++;
    if (i + 1 < s->n_free && s->free_ext[i].off + s->free_ext[i].len == s->free_ext[i + 1].off) {
        s->free_ext[i].len += s->free_ext[i + 1].len;
        memmove(&s->free_ext[i + 1], &s->free_ext[i + 2], (s->n_free - i - 2) * sizeof(extent));
        s->n_free--;
    }
    if (i > 0 && s->free_ext[i - 1].off + s->free_ext[i - 1].len == s->free_ext[i].off) {
        s->free_ext[i - 1].len += s->free_ext[i].len;
        memmove(&s->free_ext[i], &s->free_ext[i + 1], (s->n_free - i - 1) * sizeof(extent));
        s->n_free--;
    }
    return 0;
}

/* ---- fault injection ---- */

static unsigned fault_for(sp_uring_store_t *s, bool write)
{
    unsigned applicable = write ? (SP_FAULT_EIO | SP_FAULT_ENOSPC | SP_FAULT_SHORT_WRITE | SP_FAULT_EAGAIN)
                                : (SP_FAULT_EIO | SP_FAULT_SHORT_READ | SP_FAULT_CSUM | SP_FAULT_EAGAIN);
    unsigned m = s->fault_mask & applicable;
    if (!m)
        return 0;
    s->fault_seen++;
    if (s->fault_persistent ? s->fault_seen >= s->fault_nth : s->fault_seen == s->fault_nth)
        return m;
    return 0;
}

void sp_uring_store_inject(sp_uring_store_t *s, unsigned faults, int nth)
{
    pthread_mutex_lock(&s->lock);
    s->fault_mask = faults;
    s->fault_persistent = nth < 0;
    s->fault_nth = nth < 0 ? -nth : nth;
    s->fault_seen = 0;
    pthread_mutex_unlock(&s->lock);
}

/* Apply an injected fault to a completed transfer of `res` bytes (of `rem` requested). */
static int apply_fault(sp_uring_store_t *s, bool write, int res, size_t rem, uint8_t *buf)
{
    unsigned f = fault_for(s, write);
    if (!f || res < 0)
        return res;
    if (f & SP_FAULT_ENOSPC)
        return -ENOSPC;
    if (f & SP_FAULT_EIO)
        return -EIO;
    if (f & SP_FAULT_EAGAIN)
        return -EAGAIN;
    if ((f & (SP_FAULT_SHORT_READ | SP_FAULT_SHORT_WRITE)) && rem >= 2 * ALIGN && (size_t)res == rem)
        return (int)((rem / 2) & ~(size_t)(ALIGN - 1)); /* aligned, so O_DIRECT can continue */
    if ((f & SP_FAULT_CSUM) && res > 0)
        buf[res / 2] ^= 0x5a;
    return res;
}

/* ---- the I/O engine ---- */

static uint8_t *slot_buf(sp_uring_store_t *s, int slot) { return s->bounce + (size_t)slot * s->block_size; }

static int queue_req(sp_uring_store_t *s, sp_req *r, bool write)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe)
        return sp_error(EBUSY, "io_uring submission queue full"); /* cannot happen: SQ >= slots */
    uint8_t *buf = r->buf + r->done;
    unsigned len = (unsigned)(r->len - r->done);
    uint64_t off = r->off + r->done;
    int fd = s->fixed_file ? 0 : s->fd;
    if (s->fixed_bufs && r->buf == slot_buf(s, r->slot)) {
        if (write)
            io_uring_prep_write_fixed(sqe, fd, buf, len, off, r->slot);
        else
            io_uring_prep_read_fixed(sqe, fd, buf, len, off, r->slot);
        s->st.fixed_ops++;
    } else if (write) {
        io_uring_prep_write(sqe, fd, buf, len, off);
    } else {
        io_uring_prep_read(sqe, fd, buf, len, off);
    }
    if (s->fixed_file)
        sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data(sqe, r);
    return 0;
}

/* Synchronous transfer of one piece with the same retry/short/fault rules as the ring path. */
static int psync_req(sp_uring_store_t *s, sp_req *r, bool write)
{
    while (r->done < r->len) {
        uint8_t *b = r->buf + r->done;
        size_t rem = r->len - r->done;
        ssize_t n = write ? pwrite(s->fd, b, rem, (off_t)(r->off + r->done))
                          : pread(s->fd, b, rem, (off_t)(r->off + r->done));
        int res = n < 0 ? -errno : (int)n;
        res = apply_fault(s, write, res, rem, b);
        if (res == -EAGAIN || res == -EINTR) {
            s->st.eagain_resubmits++;
            continue;
        }
        if (res == -EIO && r->retries < SP_STORE_RETRIES) {
            r->retries++;
            s->st.eio_retries++;
            continue;
        }
        if (res < 0)
            return sp_error(-res, "spill file %s: %s at offset %" PRIu64 ": %s", s->path,
                            write ? "write" : "read", r->off + r->done, strerror(-res));
        if (res == 0)
            return sp_error(EIO, "spill file %s: unexpected end of file at offset %" PRIu64, s->path,
                            r->off + r->done);
        if ((size_t)res < rem)
            s->st.short_requeues++;
        r->done += (size_t)res;
    }
    return 0;
}

/* A finished read piece that was staged in a bounce buffer: hand its payload to the caller. */
static void deliver(sp_uring_store_t *s, const sp_req *r, uint8_t *ubuf, size_t len_payload)
{
    if (!ubuf || r->buf != slot_buf(s, r->slot))
        return; /* zero-copy piece (already in place) or a stream read (discarded) */
    size_t pay = r->user_off < len_payload ? len_payload - r->user_off : 0;
    memcpy(ubuf + r->user_off, r->buf, pay < r->len ? pay : r->len);
}

/* Move `len_io` bytes between file offset `off` and user buffer `ubuf` (payload `len_payload`
 * bytes; the rest of the last piece is zero padding on writes and discarded on reads). ubuf NULL: stream mode, the bounce buffers' contents are written
 * and reads are discarded (benchmarks).
 *
 * Zero-copy: when ubuf is 4 KiB aligned (and s->zero_copy), every piece that lies wholly inside
 * the payload is transferred straight from or
 * into it; only a ragged tail goes through a bounce slot. The ring path keeps the slots busy while
 * the copy of a finished piece runs, so copies overlap the device's work on the others.
 *
 * Hashing: with hs (already reset) the payload is fed to XXH3 while I/O is in flight: on writes
 * one block per round before waiting, on reads each completed piece in file order (a bitmap
 * remembers pieces that finish early). XXH3's streaming form gives exactly the one-shot value,
 * so the stored checksums are unchanged; the hashing just hides behind the device's time. */
/* Feed the payload of pieces [*hashed, ...) that are complete, in order, to the hash. */
static void hash_ready(const sp_uring_store_t *s, XXH3_state_t *hs, const uint8_t *ubuf,
                       size_t len_payload, const uint8_t *piece_done, size_t n_pieces, size_t *hashed)
{
    while (*hashed < n_pieces && piece_done[*hashed / 8] & (1u << (*hashed % 8))) {
        size_t uo = *hashed * s->block_size;
        if (uo < len_payload) {
            size_t pay = len_payload - uo < s->block_size ? len_payload - uo : s->block_size;
            XXH3_64bits_update(hs, ubuf + uo, pay);
        }
        (*hashed)++;
    }
}

static int do_io(sp_uring_store_t *s, bool write, uint64_t off, uint8_t *ubuf, size_t len_payload,
                 size_t len_io, XXH3_state_t *hs)
{
    const size_t bs = s->block_size;
    const size_t n_pieces = (len_io + bs - 1) / bs;
    /* Never touch ubuf past the payload: on reads the caller's bytes after it are theirs. */
    const size_t limit = len_payload;
    const bool direct_ok = ubuf && s->zero_copy && ((uintptr_t)ubuf & (ALIGN - 1)) == 0;
    const bool psync = s->mode == SP_STORE_MODE_PSYNC;
    size_t next = 0, inflight = 0, hashed = 0; /* hashed: bytes (writes) or pieces (reads) */
    unsigned n_free = s->n_slots;
    int err = 0;
    if (s->broken)
        return sp_error(EIO, "spill file %s: an earlier I/O failure left requests in flight; the "
                             "store is unusable", s->path);
    if (!ubuf)
        hs = NULL;
    /* Reads: which pieces are complete. A few hundred bytes even for GiB segments; on the stack
     * up to 32 Ki pieces. */
    uint8_t piece_bits[4096], *piece_done = NULL;
    if (hs && !write) {
        size_t nb = (n_pieces + 7) / 8;
        piece_done = nb <= sizeof piece_bits ? piece_bits : sp_malloc(nb);
        if (!piece_done)
            return sp_error(ENOMEM, "spill I/O: out of memory");
        memset(piece_done, 0, nb);
    }
    for (unsigned i = 0; i < s->n_slots; i++)
        s->free_slots[i] = (int)(s->n_slots - 1 - i); /* slot 0 on top: the warmest buffer first */

    while ((next < n_pieces && !err) || inflight > 0) {
        /* Fill every free slot with a new piece; they reach the kernel in one submit below. */
        while (n_free > 0 && next < n_pieces && !err) {
            int sl = s->free_slots[--n_free];
            sp_req *r = &s->reqs[sl];
            size_t uo = next * bs;
            *r = (sp_req){.slot = sl, .off = off + uo, .user_off = uo,
                          .len = uo + bs <= len_io ? bs : len_io - uo, .active = true};
            if (direct_ok && uo + r->len <= limit) {
                r->buf = ubuf + uo;
                s->st.zero_copy_ops++;
            } else {
                r->buf = slot_buf(s, sl);
                if (write && ubuf) {
                    size_t pay = uo < len_payload ? len_payload - uo : 0;
                    if (pay > r->len)
                        pay = r->len;
                    memcpy(r->buf, ubuf + uo, pay);
                    memset(r->buf + pay, 0, r->len - pay);
                }
            }
            next++;
            if (psync) {
                err = psync_req(s, r, write);
                if (!err && !write) {
                    deliver(s, r, ubuf, len_payload);
                    if (piece_done) {
                        piece_done[(next - 1) / 8] |= (uint8_t)(1u << ((next - 1) % 8));
                        hash_ready(s, hs, ubuf, len_payload, piece_done, n_pieces, &hashed);
                    }
                }
                s->free_slots[n_free++] = sl;
                continue;
            }
            int q = queue_req(s, r, write);
            if (q < 0) {
                err = q;
                s->free_slots[n_free++] = sl;
                break;
            }
            inflight++;
        }
        if (inflight == 0)
            continue;
        /* One syscall submits what was queued (new pieces and requeues) and waits for >= 1
         * completion; with COOP_TASKRUN this is also where completions are run. */
        int sr = io_uring_submit_and_wait(&s->ring, 1);
        if (sr == -EINTR)
            continue;
        if (sr < 0) {
            if (!err)
                err = sp_error(-sr, "io_uring_submit_and_wait: %s", strerror(-sr));
            break;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&s->ring, head, cqe) {
            seen++;
            sp_req *r = io_uring_cqe_get_data(cqe);
            size_t rem = r->len - r->done;
            int res = apply_fault(s, write, cqe->res, rem, r->buf + r->done);
            bool finished = false;
            if (res == -EAGAIN) {
                s->st.eagain_resubmits++;
            } else if (res == -EIO && r->retries < SP_STORE_RETRIES && !err) {
                r->retries++;
                s->st.eio_retries++;
            } else if (res < 0) {
                if (!err)
                    err = sp_error(-res, "spill file %s: %s of %zu bytes at offset %" PRIu64 ": %s",
                                   s->path, write ? "write" : "read", rem, r->off + r->done,
                                   strerror(-res));
                finished = true;
            } else if (res == 0) {
                if (!err)
                    err = sp_error(EIO, "spill file %s: unexpected end of file at offset %" PRIu64,
                                   s->path, r->off + r->done);
                finished = true;
            } else {
                if ((size_t)res < rem)
                    s->st.short_requeues++;
                r->done += (size_t)res;
                if (r->done >= r->len) {
                    if (!write) {
                        deliver(s, r, ubuf, len_payload);
                        if (piece_done) {
                            size_t pi = r->user_off / bs;
                            piece_done[pi / 8] |= (uint8_t)(1u << (pi % 8));
                        }
                    }
                    finished = true;
                }
            }
            if (!finished && err)
                finished = true; /* failing: do not requeue, just drain */
            if (!finished && queue_req(s, r, write) < 0) {
                if (!err)
                    err = sp_error(EBUSY, "spill file %s: cannot requeue a request", s->path);
                finished = true;
            }
            if (finished) {
                s->free_slots[n_free++] = r->slot;
                inflight--;
            }
        }
        io_uring_cq_advance(&s->ring, seen);
        if (piece_done && !err)
            hash_ready(s, hs, ubuf, len_payload, piece_done, n_pieces, &hashed);
        if (hs && write && !err && hashed < len_payload) {
            /* As many blocks as just completed, so hashing keeps pace with the device while the
             * pieces still in flight proceed; what is left is hashed after the loop. */
            size_t upto = hashed + (size_t)(seen ? seen : 1) * bs;
            if (upto > len_payload)
                upto = len_payload;
            XXH3_64bits_update(hs, ubuf + hashed, upto - hashed);
            hashed = upto;
        }
    }
    if (hs && write && !err && hashed < len_payload)
        XXH3_64bits_update(hs, ubuf + hashed, len_payload - hashed); /* psync, or the last round */
    if (inflight > 0) {
        /* Drain so no completion can land in a buffer after we return. Submitting again covers
         * requests that were queued but never reached the kernel; a timeout bounds the wait when
         * the ring itself is failing, and then the store refuses further I/O. */
        struct __kernel_timespec ts = {.tv_sec = 10, .tv_nsec = 0};
        while (inflight > 0) {
            struct io_uring_cqe *cqe;
            int wr = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
            if (wr == -EINTR)
                continue;
            if (wr < 0) {
                s->broken = true;
                break;
            }
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&s->ring, head, cqe) {
                seen++;
                inflight--;
            }
            io_uring_cq_advance(&s->ring, seen);
        }
    }
    if (piece_done && piece_done != piece_bits)
        free(piece_done);
    return err;
}

int64_t sp_uring_store_put(sp_uring_store_t *s, const void *bytes, size_t size)
{
    if (!s || (!bytes && size))
        return sp_error(EINVAL, "spill put: bad arguments");
    pthread_mutex_lock(&s->lock);
    int64_t id = -1;
    int rc = 0;
    for (size_t i = 0; i < s->n_segs; i++)
        if (!s->segs[i].used) {
            id = (int64_t)i;
            break;
        }
    if (id < 0) {
        if (s->n_segs == s->cap_segs) {
            size_t nc = s->cap_segs ? 2 * s->cap_segs : 64;
            seg_rec *ns = sp_realloc(s->segs, nc * sizeof *ns);
            if (!ns) {
                rc = sp_error(ENOMEM, "spill put: out of memory");
                goto out;
            }
            s->segs = ns;
            s->cap_segs = nc;
        }
        id = (int64_t)s->n_segs++;
        s->segs[id].used = false;
    }
    seg_rec *g = &s->segs[id];
    uint64_t alloc = round_up(size ? size : 1, ALIGN);
    uint64_t off = extent_alloc(s, alloc);
    XXH3_64bits_reset(s->hstate);
    rc = do_io(s, true, off, (uint8_t *)bytes, size, alloc, size ? s->hstate : NULL);
    uint64_t hash = size ? XXH3_64bits_digest(s->hstate) : XXH3_64bits(bytes, 0);
    if (rc < 0) {
        extent_free(s, off, alloc);
        goto out;
    }
    *g = (seg_rec){.off = off, .alloc = alloc, .size = size, .hash = hash, .used = true};
    s->st.bytes_written += size;
    s->st.segments++;
    if (s->file_end > s->st.file_bytes)
        s->st.file_bytes = s->file_end;
out:
    pthread_mutex_unlock(&s->lock);
    return rc < 0 ? rc : id;
}

int sp_uring_store_get(sp_uring_store_t *s, int64_t id, void *dst, size_t cap)
{
    if (!s || !dst)
        return sp_error(EINVAL, "spill get: bad arguments");
    pthread_mutex_lock(&s->lock);
    int rc = 0;
    if (id < 0 || (size_t)id >= s->n_segs || !s->segs[id].used) {
        rc = sp_error(ENOENT, "spill get: no segment %" PRId64 " in %s", id, s->path);
        goto out;
    }
    seg_rec g = s->segs[id];
    if (cap < g.size) {
        rc = sp_error(ENOBUFS, "spill get: segment %" PRId64 " has %zu bytes, buffer %zu", id,
                      g.size, cap);
        goto out;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        XXH3_64bits_reset(s->hstate);
        rc = do_io(s, false, g.off, dst, g.size, g.alloc, s->verify && g.size ? s->hstate : NULL);
        if (rc < 0 || !s->verify)
            break;
        uint64_t h = g.size ? XXH3_64bits_digest(s->hstate) : XXH3_64bits(dst, 0);
        if (h == g.hash)
            break;
        if (attempt == 0) {
            s->st.csum_retries++; /* a torn or flipped read may be transient: read once more */
            continue;
        }
        rc = sp_error(EBADMSG, "spill file %s: segment %" PRId64 " (%zu bytes at offset %" PRIu64
                               ") fails its checksum (stored xxh3 %016" PRIx64 ", read %016" PRIx64
                               "); refusing to use it", s->path, id, g.size, g.off, g.hash, h);
    }
    if (rc < 0)
        memset(dst, 0, g.size);
    else
        s->st.bytes_read += g.size;
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

size_t sp_uring_store_size(sp_uring_store_t *s, int64_t id)
{
    size_t n = 0;
    pthread_mutex_lock(&s->lock);
    if (id >= 0 && (size_t)id < s->n_segs && s->segs[id].used)
        n = s->segs[id].size;
    pthread_mutex_unlock(&s->lock);
    return n;
}

void sp_uring_store_del(sp_uring_store_t *s, int64_t id)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    if (id >= 0 && (size_t)id < s->n_segs && s->segs[id].used) {
        /* Give the blocks back now (the extent stays reusable), so the disk holds what the nvme
         * tier is charged with and no more; file systems without hole punching keep them. */
        fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)s->segs[id].off,
                  (off_t)s->segs[id].alloc);
        extent_free(s, s->segs[id].off, s->segs[id].alloc);
        s->segs[id].used = false;
        s->st.segments--;
    }
    pthread_mutex_unlock(&s->lock);
}

sp_store_mode sp_uring_store_mode(const sp_uring_store_t *s) { return s->mode; }
const char *sp_uring_store_path(const sp_uring_store_t *s) { return s->path; }

int sp_uring_store_fd_path(const sp_uring_store_t *s, char *buf, size_t len)
{
    int n = snprintf(buf, len, "/proc/%d/fd/%d", (int)getpid(), s->fd);
    return n > 0 && (size_t)n < len ? 0 : sp_error(ENAMETOOLONG, "spill store: buffer too small");
}

void sp_uring_store_get_stats(sp_uring_store_t *s, sp_uring_store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->st;
    struct stat st;
    out->disk_bytes = fstat(s->fd, &st) == 0 ? (uint64_t)st.st_blocks * 512u : 0;
    out->bounce_bytes = s->bounce_len;
    out->bounce_pinned = s->fixed_bufs;
    pthread_mutex_unlock(&s->lock);
}

int sp_uring_store_stream(sp_uring_store_t *s, bool write, uint64_t len)
{
    if (!s || len == 0 || len % ALIGN)
        return sp_error(EINVAL, "spill stream: length must be a positive multiple of 4 KiB");
    pthread_mutex_lock(&s->lock);
    int rc;
    if (s->st.segments > 0 || s->n_free > 0) {
        rc = sp_error(EBUSY, "spill stream: %s holds segments; streams use a store of their own",
                      s->path);
    } else if (!write && len > s->file_end) {
        rc = sp_error(EINVAL, "spill stream: read of %" PRIu64 " bytes past the end of %s (%" PRIu64
                              " bytes); stream-write it first", len, s->path, s->file_end);
    } else {
        if (write && !s->stream_filled) {
            /* Something other than zeros, so no layer below can shortcut the write. */
            uint64_t x = 0x9E3779B97F4A7C15ull;
            size_t n = (size_t)s->n_slots * s->block_size / sizeof x;
            for (size_t i = 0; i < n; i++) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                memcpy(s->bounce + i * sizeof x, &x, sizeof x);
            }
            s->stream_filled = true;
        }
        rc = do_io(s, write, 0, NULL, 0, len, NULL);
        if (rc == 0 && write) {
            if (len > s->file_end)
                s->file_end = len;
            if (s->file_end > s->st.file_bytes)
                s->st.file_bytes = s->file_end;
            s->st.bytes_written += len;
        } else if (rc == 0) {
            s->st.bytes_read += len;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}
