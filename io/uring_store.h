/* uring_store.h - the NVMe tier's spill store: opaque byte segments in one spill file, moved with
 * io_uring (O_DIRECT when the file system allows), each segment guarded by an XXH3-64 checksum.
 *
 * A store owns one spill file in its directory that has no name while it is used: O_TMPFILE, or
 * `<dir>/spindle-<pid>-<rand>.seg` created O_EXCL and unlinked right away. The kernel frees it
 * when the descriptor closes, however the process ends (close, exit, SIGKILL, a crash), so nothing
 * is ever left on disk and no signal handler is installed. Opening a store also removes
 * `spindle-<pid>-*.seg` files of processes that no longer exist (left by older versions), with a
 * notice.
 *
 * I/O modes, probed at open and each fallback announced once with sp_notice():
 *   io_uring + O_DIRECT  ->  io_uring buffered  ->  pread/pwrite.
 * Requests are split into block_size pieces, up to queue_depth in flight, submitted in batches;
 * each completion carries its request in user_data; -EAGAIN is resubmitted; short transfers
 * advance and requeue; EIO is retried (SP_STORE_RETRIES times) before the request fails.
 * Callers may hand in any pointer and size. A 4 KiB-aligned caller buffer is read into / written
 * from directly (zero-copy) for every block_size piece that lies inside the payload; other pieces
 * (an unaligned buffer, the ragged tail of a segment) pass through bounce buffers that are
 * registered with the ring (fixed reads/writes) and backed by transparent huge pages where the
 * kernel allows (fewer DMA segments per request; see bounce_alloc in uring_store.c). Tip: give
 * get/put huge-page-backed, 4 KiB-aligned buffers for the fastest path.
 * Ring: COOP_TASKRUN + TASKRUN_FLAG when the kernel has them (no IPI per completion); one
 * io_uring_submit_and_wait per round submits new pieces and requeues and reaps the completions.
 *
 * Thread-safety: every function on one store is serialized by an internal mutex; different stores
 * are independent.
 */
#ifndef SP_URING_STORE_H
#define SP_URING_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sp_uring_store sp_uring_store_t;

#define SP_STORE_RETRIES 3

typedef enum {
    SP_STORE_MODE_URING_DIRECT,   /* io_uring on an O_DIRECT file */
    SP_STORE_MODE_URING_BUFFERED, /* io_uring through the page cache */
    SP_STORE_MODE_PSYNC,          /* pread/pwrite */
} sp_store_mode;

/* Test-only fault injection (SQLite-style: the Nth matching call fails). */
enum {
    SP_FAULT_EIO = 1u << 0,        /* a read or write completes with -EIO */
    SP_FAULT_ENOSPC = 1u << 1,     /* a write completes with -ENOSPC */
    SP_FAULT_SHORT_READ = 1u << 2, /* a read transfers only half its bytes */
    SP_FAULT_SHORT_WRITE = 1u << 3,/* a write transfers only half its bytes */
    SP_FAULT_CSUM = 1u << 4,       /* a completed read has one byte flipped (checksum mismatch) */
    SP_FAULT_EAGAIN = 1u << 5,     /* a request completes with -EAGAIN */
    /* open-time faults, given in sp_uring_store_opts.open_faults: */
    SP_FAULT_NO_URING = 1u << 8,   /* io_uring_queue_init fails (seccomp, old kernel) */
    SP_FAULT_NO_ODIRECT = 1u << 9, /* the O_DIRECT probe write fails with EINVAL (tmpfs) */
    SP_FAULT_DIR_RO = 1u << 10,    /* creating the spill file fails with EROFS */
};

typedef struct {
    const char *dir;          /* spill directory (must exist) */
    int direct_io;            /* sp_direct_io from config.h: 0 auto, 1 on (required), 2 off */
    unsigned queue_depth;     /* 1..256 */
    size_t block_size;        /* bytes per request, multiple of 4096 */
    bool register_buffers;    /* registered buffers + files when the kernel allows */
    bool verify_checksums;    /* verify the XXH3-64 checksum on every read */
    bool no_uring;            /* pread/pwrite even where io_uring works (benchmarks), no notice */
    unsigned open_faults;     /* test only: SP_FAULT_NO_URING | SP_FAULT_NO_ODIRECT | SP_FAULT_DIR_RO */
} sp_uring_store_opts;

typedef struct {
    uint64_t bytes_written, bytes_read; /* payload bytes of completed puts / gets */
    uint64_t segments;                  /* segments currently stored */
    uint64_t file_bytes;                /* largest extent the spill file reached (its size) */
    uint64_t eagain_resubmits, short_requeues, eio_retries, csum_retries;
    uint64_t fixed_ops;                 /* requests that used registered buffers */
    uint64_t zero_copy_ops;             /* pieces moved straight from/to the caller's buffer */
    uint64_t disk_bytes;                /* blocks the spill file occupies on disk now (fstat) */
    uint64_t bounce_bytes;              /* bounce buffers mapped (queue_depth x block_size, rounded) */
    bool bounce_pinned;                 /* they are registered with the ring: pinned in memory */
} sp_uring_store_stats;

/* Open a store (creates the unnamed spill file). NULL on failure with sp_last_error() naming the
 * directory and the reason; nothing is left on disk then. */
sp_uring_store_t *sp_uring_store_open(const sp_uring_store_opts *opts);

/* Close: waits for nothing (no I/O outlives a call); closing the descriptor frees the file.
 * Accepts NULL. */
void sp_uring_store_close(sp_uring_store_t *s);

/* Store `size` bytes; returns a segment id >= 0, or a negative errno (-EIO, -ENOSPC, ...) with a
 * message; a failed put leaves no segment behind. */
int64_t sp_uring_store_put(sp_uring_store_t *s, const void *bytes, size_t size);

/* Read segment `id` into dst (capacity cap >= its size). Verifies the checksum (a mismatch is
 * re-read once, then fails with -EBADMSG). On any failure dst is zeroed: wrong bytes are never
 * returned. Returns 0 or a negative errno. */
int sp_uring_store_get(sp_uring_store_t *s, int64_t id, void *dst, size_t cap);

/* Size of segment id, or 0 if there is none. */
size_t sp_uring_store_size(sp_uring_store_t *s, int64_t id);

/* Benchmark path: move len bytes (a positive multiple of 4 KiB) between [0, len) of the spill file
 * and the store's bounce buffers through the same engine as put/get (same slots, batching, retry
 * and fault rules), without a caller buffer, copies or checksums: a write stores a fixed
 * pseudo-random pattern and extends the file to len; a read (only of what was written) discards
 * the bytes. For a store that holds no segments (else -EBUSY). Returns 0 or a negative errno. */
int sp_uring_store_stream(sp_uring_store_t *s, bool write, uint64_t len);

/* Drop segment id; its file space is reused, and its blocks are punched out of the file where
 * the file system allows (disk_bytes then counts live segments only). Unknown ids are ignored. */
void sp_uring_store_del(sp_uring_store_t *s, int64_t id);

sp_store_mode sp_uring_store_mode(const sp_uring_store_t *s);
const char *sp_uring_store_mode_name(sp_store_mode m);
/* A description of the spill file for messages (it has no name; see above). */
const char *sp_uring_store_path(const sp_uring_store_t *s);
/* A path that opens the spill file from any process while the store is open ("/proc/<pid>/fd/<n>",
 * for benchmarks that hand the file to fio, and tests). 0, or -ENAMETOOLONG. */
int sp_uring_store_fd_path(const sp_uring_store_t *s, char *buf, size_t len);
void sp_uring_store_get_stats(sp_uring_store_t *s, sp_uring_store_stats *out);

/* Test only: make the nth (1-based, counted from this call) I/O request of a kind in `faults`
 * fail as described above; nth < 0 makes every request from the |nth|-th on fail (persistent).
 * faults = 0 clears. */
void sp_uring_store_inject(sp_uring_store_t *s, unsigned faults, int nth);

#endif
