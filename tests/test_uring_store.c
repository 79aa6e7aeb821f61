/* test_uring_store.c - the NVMe spill store: round trips in every I/O mode, extent reuse, and one
 * test per injected fault with its defined outcome (retry, fail cleanly, never wrong bytes, never a
 * leaked file), plus the unnamed spill file (nothing in the directory while it is used, nothing after
 * SIGKILL/SIGTERM/exit() without a close), the sweep of dead processes' files, and signal dispositions
 * left alone. The fault
 * tests run twice: with unaligned buffers (every piece through the bounce slots) and with 4 KiB-
 * aligned ones (zero-copy pieces straight to/from the caller, ragged tails through the slots). The
 * stream (benchmark) path is checked for its contract. */
#include <criterion/criterion.h>

#include "sp_error.h"
#include "support/spill_dir.h"
#include "uring_store.h"

#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

static char dir[256];

static void make_dir(void) { spill_dir_make(dir, sizeof dir, "sp-store"); }
static int count_files(void) { return spill_dir_count(dir); }
static void remove_dir(void) { spill_dir_remove_checked(dir); }

TestSuite(store, .init = make_dir, .fini = remove_dir);

static sp_uring_store_opts opts(int direct, unsigned qd, size_t bs, unsigned faults)
{
    return (sp_uring_store_opts){.dir = dir, .direct_io = direct, .queue_depth = qd, .block_size = bs,
                                 .register_buffers = true, .verify_checksums = true,
                                 .open_faults = faults};
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

/* Put/get/del a mix of sizes (0, sub-page, unaligned, multi-block) and check every byte. */
static void round_trip(sp_uring_store_t *s)
{
    const size_t sizes[] = {0, 1, 4095, 4096, 4097, 65536 + 17, 3 * 1048576 + 123, 200000};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint8_t *src[N], *dst = malloc(4 << 20);
    int64_t ids[N];
    for (int i = 0; i < N; i++) {
        src[i] = malloc(sizes[i] + 1);
        fill(src[i], sizes[i], (unsigned)i + 1);
        ids[i] = sp_uring_store_put(s, src[i], sizes[i]);
        cr_assert_geq(ids[i], 0, "put %zu: %s", sizes[i], sp_last_error());
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            memset(dst, 0xee, sizes[i] + 1);
            cr_assert_eq(sp_uring_store_get(s, ids[i], dst, 4 << 20), 0, "%s", sp_last_error());
            cr_assert_eq(memcmp(dst, src[i], sizes[i]), 0, "segment %d (%zu bytes) differs", i, sizes[i]);
            cr_assert_eq(sp_uring_store_size(s, ids[i]), sizes[i]);
        }
        /* Free every other segment and store new contents in the freed space. */
        for (int i = 0; i < N; i += 2) {
            sp_uring_store_del(s, ids[i]);
            fill(src[i], sizes[i], (unsigned)(100 + i + round));
            ids[i] = sp_uring_store_put(s, src[i], sizes[i]);
            cr_assert_geq(ids[i], 0, "%s", sp_last_error());
        }
    }
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    cr_assert_eq(st.segments, N);
    for (int i = 0; i < N; i++)
        free(src[i]);
    free(dst);
}

Test(store, direct_round_trip_and_file_lifecycle)
{
    sp_uring_store_opts o = opts(0, 8, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    /* The file has no name in the directory while it is used, yet it is reachable through the
     * store's descriptor. */
    cr_assert_eq(count_files(), 0, "the spill file has a name in %s", dir);
    char fp[64];
    cr_assert_eq(sp_uring_store_fd_path(s, fp, sizeof fp), 0);
    cr_assert_eq(access(fp, F_OK), 0, "%s", fp);
    /* ext4/xfs here support O_DIRECT; on tmpfs the store must still work in buffered mode. */
    cr_assert(sp_uring_store_mode(s) != SP_STORE_MODE_PSYNC);
    round_trip(s);
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    cr_assert_gt(st.fixed_ops, 0, "registered buffers were not used");
    cr_assert_gt(st.disk_bytes, 0, "the segments occupy no disk blocks");
    cr_assert_eq(count_files(), 0);
    sp_uring_store_close(s);
}

/* Open with these options, check the I/O mode the store settled on, round-trip, close. */
static void round_trip_in_mode(int direct, unsigned qd, size_t bs, unsigned faults, sp_store_mode want)
{
    sp_uring_store_opts o = opts(direct, qd, bs, faults);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_mode(s), want);
    round_trip(s);
    sp_uring_store_close(s);
}

Test(store, buffered_mode_round_trip)
{
    round_trip_in_mode(2, 4, 4096, 0, SP_STORE_MODE_URING_BUFFERED);
}

Test(store, no_uring_falls_back_to_pread)
{
    round_trip_in_mode(0, 32, 1 << 20, SP_FAULT_NO_URING, SP_STORE_MODE_PSYNC);
}

Test(store, odirect_refused_falls_back_to_buffered)
{
    round_trip_in_mode(0, 8, 65536, SP_FAULT_NO_ODIRECT, SP_STORE_MODE_URING_BUFFERED);
}

/* The open must fail with a message containing `what` and leave no file behind. */
static void open_fails_without_leaking(int direct, unsigned faults, const char *what)
{
    sp_uring_store_opts o = opts(direct, 8, 65536, faults);
    cr_assert_null(sp_uring_store_open(&o));
    cr_assert(strstr(sp_last_error(), what), "%s", sp_last_error());
    cr_assert_eq(count_files(), 0);
}

Test(store, odirect_required_but_refused_fails_without_leaking)
{
    open_fails_without_leaking(1, SP_FAULT_NO_ODIRECT, "O_DIRECT");
}

Test(store, missing_dir_fails_with_message)
{
    sp_uring_store_opts o = opts(0, 8, 65536, 0);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/does-not-exist", dir);
    o.dir = missing;
    cr_assert_null(sp_uring_store_open(&o));
    cr_assert(strstr(sp_last_error(), missing), "%s", sp_last_error());
    cr_assert(strstr(sp_last_error(), "[spill] dir"));
}

Test(store, read_only_dir_fails_without_leaking) { open_fails_without_leaking(0, SP_FAULT_DIR_RO, "Read-only"); }

/* Open a small-block store so one segment spans many requests. */
static sp_uring_store_t *small_store(int direct)
{
    sp_uring_store_opts o = opts(direct, 4, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    return s;
}

/* A test buffer 4 KiB-aligned, or deliberately 16 bytes past alignment (as glibc's large
 * malloc() blocks are), so both store paths are exercised whatever malloc does. */
typedef struct {
    void *base;
    uint8_t *p;
} tbuf;

static tbuf buf_alloc(size_t n, bool aligned)
{
    tbuf b = {0};
    cr_assert_eq(posix_memalign(&b.base, 4096, n + 64), 0);
    b.p = (uint8_t *)b.base + (aligned ? 0 : 16);
    return b;
}

static void faults_recoverable(int direct, bool aligned)
{
    const size_t n = 1 << 20;
    tbuf sb = buf_alloc(n, aligned), db = buf_alloc(n, aligned);
    uint8_t *src = sb.p, *dst = db.p;
    fill(src, n, 7);
    struct { unsigned f; int nth; bool on_read; } cases[] = {
        {SP_FAULT_EIO, 3, false},        {SP_FAULT_EIO, 2, true},
        {SP_FAULT_SHORT_WRITE, 1, false}, {SP_FAULT_SHORT_READ, 5, true},
        {SP_FAULT_EAGAIN, 2, false},     {SP_FAULT_EAGAIN, 4, true},
        {SP_FAULT_CSUM, 6, true},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        sp_uring_store_t *s = small_store(direct);
        if (!cases[c].on_read)
            sp_uring_store_inject(s, cases[c].f, cases[c].nth);
        int64_t id = sp_uring_store_put(s, src, n);
        cr_assert_geq(id, 0, "case %zu: %s", c, sp_last_error());
        if (cases[c].on_read)
            sp_uring_store_inject(s, cases[c].f, cases[c].nth);
        memset(dst, 0, n);
        cr_assert_eq(sp_uring_store_get(s, id, dst, n), 0, "case %zu: %s", c, sp_last_error());
        cr_assert_eq(memcmp(src, dst, n), 0, "case %zu returned wrong bytes", c);
        sp_uring_store_stats st;
        sp_uring_store_get_stats(s, &st);
        switch (cases[c].f) {
        case SP_FAULT_EIO: cr_assert_eq(st.eio_retries, 1, "case %zu", c); break;
        case SP_FAULT_SHORT_READ:
        case SP_FAULT_SHORT_WRITE: cr_assert_eq(st.short_requeues, 1, "case %zu", c); break;
        case SP_FAULT_EAGAIN: cr_assert_eq(st.eagain_resubmits, 1, "case %zu", c); break;
        case SP_FAULT_CSUM: cr_assert_eq(st.csum_retries, 1, "case %zu", c); break;
        }
        if (aligned)
            cr_assert_gt(st.zero_copy_ops, 0, "case %zu: aligned buffers were staged", c);
        else
            cr_assert_eq(st.zero_copy_ops, 0, "case %zu: unaligned buffer used directly", c);
        sp_uring_store_close(s);
    }
    free(sb.base);
    free(db.base);
}

Test(store, transient_faults_are_retried_uring) { faults_recoverable(0, false); }
Test(store, transient_faults_are_retried_buffered) { faults_recoverable(2, false); }
Test(store, transient_faults_are_retried_uring_zero_copy) { faults_recoverable(0, true); }
Test(store, transient_faults_are_retried_buffered_zero_copy) { faults_recoverable(2, true); }

static void faults_persistent(unsigned open_faults, bool aligned)
{
    const size_t n = 300000; /* 4 x 64 KiB pieces + a ragged 37856-byte tail */
    tbuf sb = buf_alloc(n, aligned), db = buf_alloc(n, aligned);
    uint8_t *src = sb.p, *dst = db.p;
    fill(src, n, 9);
    sp_uring_store_opts o = opts(0, 4, 65536, open_faults);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());

    /* Write EIO that persists past the retries: the put fails and stores nothing. */
    sp_uring_store_inject(s, SP_FAULT_EIO, -1);
    cr_assert_eq(sp_uring_store_put(s, src, n), -EIO);
    cr_assert(strstr(sp_last_error(), "write"), "%s", sp_last_error());
    /* ENOSPC: no retry, clear failure. */
    sp_uring_store_inject(s, SP_FAULT_ENOSPC, 1);
    cr_assert_eq(sp_uring_store_put(s, src, n), -ENOSPC);
    cr_assert(strstr(sp_last_error(), "No space"), "%s", sp_last_error());
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    cr_assert_eq(st.segments, 0);

    sp_uring_store_inject(s, 0, 0);
    int64_t id = sp_uring_store_put(s, src, n);
    cr_assert_geq(id, 0, "%s", sp_last_error());
    /* Persistent read EIO: fails, and the buffer holds no stale or partial data. */
    sp_uring_store_inject(s, SP_FAULT_EIO, -1);
    memset(dst, 0xab, n);
    cr_assert_eq(sp_uring_store_get(s, id, dst, n), -EIO);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(dst[i], 0, "byte %zu survived a failed read", i);
    /* Persistent corruption: the checksum catches it; never the wrong bytes. */
    sp_uring_store_inject(s, SP_FAULT_CSUM, -1);
    memset(dst, 0xab, n);
    cr_assert_eq(sp_uring_store_get(s, id, dst, n), -EBADMSG);
    cr_assert(strstr(sp_last_error(), "checksum"), "%s", sp_last_error());
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(dst[i], 0);
    /* After the faults clear, the stored bytes are intact. */
    sp_uring_store_inject(s, 0, 0);
    cr_assert_eq(sp_uring_store_get(s, id, dst, n), 0, "%s", sp_last_error());
    cr_assert_eq(memcmp(src, dst, n), 0);
    /* Unknown ids and small buffers are refused. */
    cr_assert_eq(sp_uring_store_get(s, id + 5, dst, n), -ENOENT);
    cr_assert_eq(sp_uring_store_get(s, id, dst, n - 1), -ENOBUFS);
    sp_uring_store_close(s);
    free(sb.base);
    free(db.base);
}

Test(store, persistent_faults_fail_cleanly_uring) { faults_persistent(0, false); }
Test(store, persistent_faults_fail_cleanly_pread) { faults_persistent(SP_FAULT_NO_URING, false); }
Test(store, persistent_faults_fail_cleanly_uring_zero_copy) { faults_persistent(0, true); }
Test(store, persistent_faults_fail_cleanly_pread_zero_copy) { faults_persistent(SP_FAULT_NO_URING, true); }

/* Aligned caller buffers: pieces inside the payload move directly, the ragged tail through a bounce
 * slot, and nothing past the payload in the caller's buffer is touched. */
static void zero_copy_round_trip(int direct, bool no_uring)
{
    const size_t n = 3 * 1048576 + 123, cap = 4 << 20;
    sp_uring_store_opts o = opts(direct, 8, 65536, 0);
    o.no_uring = no_uring;
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    if (no_uring)
        cr_assert_eq(sp_uring_store_mode(s), SP_STORE_MODE_PSYNC);
    tbuf sb = buf_alloc(n, true), db = buf_alloc(cap, true);
    uint8_t *src = sb.p, *dst = db.p;
    fill(src, n, 42);
    int64_t id = sp_uring_store_put(s, src, n);
    cr_assert_geq(id, 0, "%s", sp_last_error());
    memset(dst, 0xee, cap);
    cr_assert_eq(sp_uring_store_get(s, id, dst, cap), 0, "%s", sp_last_error());
    cr_assert_eq(memcmp(dst, src, n), 0, "zero-copy get returned wrong bytes");
    for (size_t i = n; i < cap; i++)
        cr_assert_eq(dst[i], 0xee, "byte %zu past the payload was overwritten", i);
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    /* 48 full pieces each way moved directly; the last partial piece (123 bytes) was staged. */
    cr_assert_eq(st.zero_copy_ops, 2 * 48, "zero-copy pieces: %llu", (unsigned long long)st.zero_copy_ops);
    /* An unaligned view of the same bytes goes through the slots and reads back the same. */
    uint8_t *odd = malloc(n + 1);
    memcpy(odd + 1, src, n);
    int64_t id2 = sp_uring_store_put(s, odd + 1, n);
    cr_assert_geq(id2, 0, "%s", sp_last_error());
    memset(odd, 0, n + 1);
    cr_assert_eq(sp_uring_store_get(s, id2, odd + 1, n), 0, "%s", sp_last_error());
    cr_assert_eq(memcmp(odd + 1, src, n), 0);
    sp_uring_store_get_stats(s, &st);
    cr_assert_eq(st.zero_copy_ops, 2 * 48, "an unaligned buffer was used directly");
    free(odd);
    sp_uring_store_close(s);
    free(sb.base);
    free(db.base);
}

Test(store, zero_copy_direct) { zero_copy_round_trip(0, false); }
Test(store, zero_copy_buffered) { zero_copy_round_trip(2, false); }
Test(store, zero_copy_pread) { zero_copy_round_trip(0, true); }

/* The benchmark stream: its own store only, whole 4 KiB multiples, reads only of what it wrote,
 * and segments stored after it still round-trip. */
Test(store, stream_contract)
{
    sp_uring_store_opts o = opts(0, 4, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_stream(s, false, 65536), -EINVAL, "read before any write");
    cr_assert_eq(sp_uring_store_stream(s, true, 1000), -EINVAL, "unaligned length");
    const uint64_t len = 1 << 20;
    cr_assert_eq(sp_uring_store_stream(s, true, len), 0, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_stream(s, false, len), 0, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_stream(s, false, 2 * len), -EINVAL, "read past the end");
    struct stat stt;
    char fp[64];
    cr_assert_eq(sp_uring_store_fd_path(s, fp, sizeof fp), 0);
    cr_assert_eq(stat(fp, &stt), 0);
    cr_assert_geq((uint64_t)stt.st_size, len, "the stream write did not reach the file");
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    cr_assert_eq(st.bytes_written, len);
    cr_assert_eq(st.bytes_read, len);
    uint8_t src[10000], dst[10000];
    fill(src, sizeof src, 5);
    int64_t id = sp_uring_store_put(s, src, sizeof src);
    cr_assert_geq(id, 0, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_get(s, id, dst, sizeof dst), 0, "%s", sp_last_error());
    cr_assert_eq(memcmp(src, dst, sizeof src), 0);
    cr_assert_eq(sp_uring_store_stream(s, false, len), -EBUSY, "stream over stored segments");
    /* The segment was placed after the streamed range, which still reads. */
    sp_uring_store_del(s, id);
    cr_assert_eq(sp_uring_store_stream(s, false, len), 0, "%s", sp_last_error());
    sp_uring_store_close(s);
}

/* Fork a child that opens a store, puts a segment, reports how many names its spill directory
 * holds, and then ends without a close: by signal `sig` (SIGKILL, SIGTERM, SIGHUP, SIGQUIT: the
 * kernel must free the unnamed file) or, with sig 0, by exit(0). Returns the wait status. */
/* The child's store, kept reachable so LeakSanitizer (ASan builds) does not count the store that
 * exit() abandons on purpose as a leak. */
static sp_uring_store_t *volatile child_store;

static int child_leaves_store_open(int sig)
{
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        sp_uring_store_opts o = opts(0, 4, 65536, 0);
        sp_uring_store_t *s = sp_uring_store_open(&o);
        if (!s)
            _exit(3);
        child_store = s;
        char buf[8192];
        memset(buf, 1, sizeof buf);
        if (sp_uring_store_put(s, buf, sizeof buf) < 0)
            _exit(4);
        int names = spill_dir_count(dir);
        if (write(pfd[1], &names, sizeof names) != (ssize_t)sizeof names)
            _exit(5);
        if (sig)
            raise(sig);
        else
            exit(0); /* the store is never closed */
        _exit(6); /* not reached: the default action ends the process */
    }
    close(pfd[1]);
    int names = -1;
    cr_assert_eq(read(pfd[0], &names, sizeof names), (ssize_t)sizeof names);
    close(pfd[0]);
    cr_assert_eq(names, 0, "the child's open spill file has a name in %s", dir);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return status;
}

static void ended_by_signal_leaves_nothing(int sig)
{
    int status = child_leaves_store_open(sig);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == sig, "status %d", status);
    cr_assert_eq(count_files(), 0, "a spill file survived signal %d", sig);
}

Test(store, sigkill_leaves_no_spill_file) { ended_by_signal_leaves_nothing(SIGKILL); }
Test(store, sigterm_leaves_no_spill_file) { ended_by_signal_leaves_nothing(SIGTERM); }
Test(store, sighup_leaves_no_spill_file) { ended_by_signal_leaves_nothing(SIGHUP); }
Test(store, sigquit_leaves_no_spill_file) { ended_by_signal_leaves_nothing(SIGQUIT); }

Test(store, exit_without_close_leaves_no_spill_file)
{
    int status = child_leaves_store_open(0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert_eq(count_files(), 0, "a spill file survived exit()");
}

/* Files of older versions named spindle-<pid>-<hex>.seg: a dead process's file is removed at the
 * next open, a live process's file is kept. */
Test(store, open_sweeps_files_of_dead_processes)
{
    pid_t dead = fork();
    cr_assert_geq(dead, 0);
    if (dead == 0)
        _exit(0);
    cr_assert_eq(waitpid(dead, NULL, 0), dead); /* reaped: the pid names no process now */
    char stale[512], live[512];
    snprintf(stale, sizeof stale, "%s/spindle-%d-0000abcd.seg", dir, (int)dead);
    snprintf(live, sizeof live, "%s/spindle-%d-0000abcd.seg", dir, (int)getppid());
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(i ? live : stale, "w");
        cr_assert(f);
        fputs("old segment bytes", f);
        fclose(f);
    }
    sp_uring_store_opts o = opts(0, 4, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    cr_assert_neq(access(stale, F_OK), 0, "%s of a dead process was not swept", stale);
    cr_assert_eq(access(live, F_OK), 0, "%s of a live process was removed", live);
    sp_uring_store_close(s);
    unlink(live);
}

/* The store installs no signal handler: a caller's SIG_IGN (nohup, background jobs) stays. */
Test(store, signal_dispositions_are_left_alone)
{
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_int, old_term, now;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGINT, &ign, &old_int);
    sigaction(SIGTERM, &ign, &old_term);
    sp_uring_store_opts o = opts(0, 4, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    sigaction(SIGINT, NULL, &now);
    cr_assert(now.sa_handler == SIG_IGN, "SIGINT disposition was changed");
    sigaction(SIGTERM, NULL, &now);
    cr_assert(now.sa_handler == SIG_IGN, "SIGTERM disposition was changed");
    sp_uring_store_close(s);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
}

/* The stored checksum is XXH3_64bits(payload) whatever the path (it is computed while the I/O is
 * in flight): a byte changed on disk in any piece, including the ragged tail, is caught, and the
 * message quotes the stored value, which must equal the one-shot hash of what was put. */
static void on_disk_corruption(int direct, bool aligned, bool no_uring)
{
    const size_t n = 5 * 65536 + 1000; /* 5 full pieces + a ragged tail */
    const size_t spots[] = {0, 2 * 65536 + 17, 5 * 65536 + 999};
    tbuf sb = buf_alloc(n, aligned), db = buf_alloc(n, aligned);
    fill(sb.p, n, 77);
    char want[32];
    snprintf(want, sizeof want, "stored xxh3 %016llx", (unsigned long long)XXH3_64bits(sb.p, n));
    for (size_t k = 0; k < sizeof spots / sizeof spots[0]; k++) {
        sp_uring_store_opts o = opts(direct, 4, 65536, 0);
        o.no_uring = no_uring;
        sp_uring_store_t *s = sp_uring_store_open(&o);
        cr_assert(s, "%s", sp_last_error());
        int64_t id = sp_uring_store_put(s, sb.p, n);
        cr_assert_geq(id, 0, "%s", sp_last_error());
        cr_assert_eq(sp_uring_store_get(s, id, db.p, n), 0, "%s", sp_last_error());
        cr_assert_eq(memcmp(sb.p, db.p, n), 0);
        /* The first segment of a fresh store starts at offset 0 of its file. */
        char fp[64];
        cr_assert_eq(sp_uring_store_fd_path(s, fp, sizeof fp), 0);
        int fd = open(fp, O_RDWR);
        cr_assert_geq(fd, 0);
        uint8_t b = (uint8_t)(sb.p[spots[k]] ^ 0x01);
        cr_assert_eq(pwrite(fd, &b, 1, (off_t)spots[k]), 1);
        fsync(fd);
        close(fd);
        cr_assert_eq(sp_uring_store_get(s, id, db.p, n), -EBADMSG, "flip at %zu not caught", spots[k]);
        cr_assert(strstr(sp_last_error(), want), "%s (want %s)", sp_last_error(), want);
        sp_uring_store_close(s);
    }
    free(sb.base);
    free(db.base);
}

Test(store, checksum_catches_disk_corruption_direct) { on_disk_corruption(0, false, false); }
Test(store, checksum_catches_disk_corruption_direct_zero_copy) { on_disk_corruption(0, true, false); }
Test(store, checksum_catches_disk_corruption_buffered) { on_disk_corruption(2, true, false); }
Test(store, checksum_catches_disk_corruption_pread) { on_disk_corruption(2, false, true); }

/* The disk holds what the live segments need: a dropped segment's blocks are given back, so the
 * nvme figure (live, 4 KiB-rounded) and the file's blocks on disk agree. */
Test(store, dropped_segments_leave_the_disk)
{
    sp_uring_store_opts o = opts(0, 4, 65536, 0);
    sp_uring_store_t *s = sp_uring_store_open(&o);
    cr_assert(s, "%s", sp_last_error());
    enum { N = 4, SZ = 300000 };
    uint8_t *b = malloc(SZ);
    fill(b, SZ, 9);
    int64_t id[N];
    for (int i = 0; i < N; i++)
        cr_assert_geq(id[i] = sp_uring_store_put(s, b, SZ), 0, "%s", sp_last_error());
    sp_uring_store_del(s, id[0]);
    sp_uring_store_del(s, id[2]);
    sp_uring_store_stats st;
    sp_uring_store_get_stats(s, &st);
    const uint64_t live = 2 * ((SZ + 4095) / 4096 * 4096);
    cr_assert_eq(st.segments, 2);
    /* st_blocks may include a block or two of the file system's own extent map. */
    cr_assert(st.disk_bytes >= live && st.disk_bytes <= live + 16384, "%llu B on disk for %llu B of live segments",
              (unsigned long long)st.disk_bytes, (unsigned long long)live);
    cr_assert_eq(sp_uring_store_get(s, id[1], b, SZ), 0, "%s", sp_last_error());
    cr_assert_eq(sp_uring_store_get(s, id[3], b, SZ), 0, "%s", sp_last_error());
    sp_uring_store_close(s);
    free(b);
}
