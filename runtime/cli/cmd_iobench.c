/* cmd_iobench.c - `spindle io-bench`: sequential spill-tier bandwidth over a grid of block sizes x
 * queue depths x engines, through the spill store's own engine and side by side with fio on the
 * same file (io/iobench.h), printed as a table with the configured cell marked, and written as
 * JSON with the machine, the git commit and the configuration so results can be compared later.
 *
 * The [spill] section applies: dir is the default --dir, (block_size, queue_depth) is the target
 * cell, direct_io = off drops the O_DIRECT engine from the default set and = on makes a refused
 * O_DIRECT an error, register_buffers is passed to the store. */
#define _GNU_SOURCE /* realpath */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_io.h"
#include "iobench.h"
#include "sp_error.h"

#define MAX_LIST 16

static void usage(FILE *out)
{
    fputs("usage: spindle io-bench [options]\n"
          "  --dir DIR          directory to test (default: [spill] dir)\n"
          "  --size SIZE        file size per pass, with units (default 256MiB)\n"
          "  --blocks LIST      block sizes (default 64KiB,256KiB,1MiB,4MiB; multiples of 4 KiB)\n"
          "  --qd LIST          queue depths (default 1,4,16,32,64; 1..256)\n"
          "  --repeats R        passes per cell for ours and for fio, interleaved (default 3)\n"
          "  --engines LIST     direct,buffered,pread (default: all; direct dropped when\n"
          "                     [spill] direct_io = off)\n"
          "  --ops LIST         read,write (default both)\n"
          "  --no-fio           do not run fio\n"
          "  --json FILE        write the results as JSON\n"
          "The target cell is io_uring+O_DIRECT reads at [spill] block_size / queue_depth.\n",
          out);
}

/* One item of an option's list: parse tok into ((T *)out)[i]; false + message when it is bad. */
typedef bool (*list_item_fn)(const char *opt, const char *tok, void *out, int i);

/* A block size with units, a multiple of 4 KiB up to 64 MiB, into size_t. */
static bool item_block(const char *opt, const char *tok, void *out, int i)
{
    uint64_t v;
    if (sp_config_parse_size(tok, &v) < 0) {
        sp_cli_error("%s: '%s' is not a size (e.g. 64KiB, 1MiB)", opt, tok);
        return false;
    }
    if (v == 0 || v % 4096 || v > (64u << 20)) {
        sp_cli_error("%s: block %s must be a multiple of 4 KiB between 4 KiB and 64 MiB", opt, tok);
        return false;
    }
    ((size_t *)out)[i] = (size_t)v;
    return true;
}

/* A queue depth, 1..256, into int. */
static bool item_qd(const char *opt, const char *tok, void *out, int i)
{
    int64_t v;
    if (!sp_cli_int(opt, tok, 1, 256, &v))
        return false;
    ((int *)out)[i] = (int)v;
    return true;
}

/* Comma-separated list of at most MAX_LIST items into out, *n of them. false + message on a bad
 * item, too many or none. */
static bool parse_list(const char *opt, const char *text, list_item_fn item, void *out, int *n)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", text);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) {
            sp_cli_error("%s: more than %d values", opt, MAX_LIST);
            return false;
        }
        if (!item(opt, tok, out, *n))
            return false;
        (*n)++;
    }
    if (*n == 0) {
        sp_cli_error("%s: empty list", opt);
        return false;
    }
    return true;
}

static bool parse_engines(const char *text, unsigned *mask)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", text);
    *mask = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int e;
        for (e = 0; e < SP_IOB_ENGINE_COUNT; e++)
            if (!strcmp(tok, sp_iobench_engine_key((sp_iob_engine)e)))
                break;
        if (e == SP_IOB_ENGINE_COUNT) {
            sp_cli_error("--engines: unknown engine '%s' (allowed: direct, buffered, pread)", tok);
            return false;
        }
        *mask |= 1u << e;
    }
    if (!*mask) {
        sp_cli_error("--engines: empty list");
        return false;
    }
    return true;
}

static bool parse_ops(const char *text, bool *reads, bool *writes)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", text);
    *reads = *writes = false;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "read")) {
            *reads = true;
        } else if (!strcmp(tok, "write")) {
            *writes = true;
        } else {
            sp_cli_error("--ops: unknown op '%s' (allowed: read, write)", tok);
            return false;
        }
    }
    if (!*reads && !*writes) {
        sp_cli_error("--ops: empty list");
        return false;
    }
    return true;
}

/* ---- machine description for the JSON (CPU model, commit, JSON strings: cli_common.c) ---- */

/* File system of dir: the longest mount point in /proc/self/mounts that prefixes its real path. */
static void dir_filesystem(const char *dir, char *type, size_t tlen, char *dev, size_t dlen)
{
    snprintf(type, tlen, "unknown");
    snprintf(dev, dlen, "unknown");
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return;
    FILE *f = fopen("/proc/self/mounts", "r");
    if (!f)
        return;
    char line[4096], src[1024], mnt[2048], fst[128];
    size_t best = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%1023s %2047s %127s", src, mnt, fst) != 3)
            continue;
        size_t m = strlen(mnt);
        bool prefix = !strcmp(mnt, "/") ? true
                      : !strncmp(real, mnt, m) && (real[m] == '/' || real[m] == '\0');
        if (prefix && m >= best) {
            best = m;
            snprintf(type, tlen, "%s", fst);
            snprintf(dev, dlen, "%s", src);
        }
    }
    fclose(f);
}

static void json_num_or_null(FILE *f, double v, bool ok)
{
    if (ok)
        fprintf(f, "%.6f", v);
    else
        fputs("null", f);
}

/* A row's fio mean, fio sd and ours/fio ratio values (null without fio), after "fio_mean_gbs": . */
static void json_fio(FILE *f, const sp_iobench_row *r)
{
    bool fio_ok = r->fio_mean_gbs > 0;
    json_num_or_null(f, r->fio_mean_gbs, fio_ok);
    fputs(", \"fio_sd_gbs\": ", f);
    json_num_or_null(f, r->fio_sd_gbs, fio_ok);
    fputs(", \"ratio\": ", f);
    json_num_or_null(f, fio_ok ? r->mean_gbs / r->fio_mean_gbs : 0, fio_ok);
}

typedef struct {
    const char *dir;
    uint64_t size;
    const size_t *blocks;
    int n_blocks;
    const int *qds;
    int n_qds;
    int repeats;
    unsigned engines;
    bool reads, writes, fio, register_buffers;
    const char *direct_io;
    size_t target_block;
    int target_qd;
} run_desc;

static bool is_target(const run_desc *d, const sp_iobench_row *r)
{
    return r->engine == SP_IOB_URING_DIRECT && !r->write && r->block_size == d->target_block &&
           r->queue_depth == d->target_qd;
}

static int write_json(const char *path, const run_desc *d, const sp_iobench_row *rows, int n,
                      double seconds)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        sp_cli_error("io-bench: cannot write '%s': %s", path, strerror(errno));
        return SP_EXIT_FAIL;
    }
    char cpu[256], fio[64] = "", commit[64], fstype[128], fsdev[1024], date[64];
    struct utsname u;
    sp_cli_cpu_model(cpu, sizeof cpu);
    bool have_fio = sp_iobench_fio_version(fio, sizeof fio);
    sp_cli_git_commit(commit, sizeof commit);
    dir_filesystem(d->dir, fstype, sizeof fstype, fsdev, sizeof fsdev);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    bool uname_ok = uname(&u) == 0;

    fputs("{\n  \"tool\": \"spindle io-bench\",\n  \"date\": ", f);
    sp_cli_json_str(f, date);
    fputs(",\n  \"git_commit\": ", f);
    sp_cli_json_str(f, commit);
    fputs(",\n  \"machine\": {\n    \"cpu\": ", f);
    sp_cli_json_str(f, cpu);
    fprintf(f, ",\n    \"cpus_online\": %ld,\n    \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    char kernel[600];
    snprintf(kernel, sizeof kernel, "%s %s %s", uname_ok ? u.sysname : "?",
             uname_ok ? u.release : "?", uname_ok ? u.machine : "?");
    sp_cli_json_str(f, kernel);
    fputs(",\n    \"filesystem\": ", f);
    sp_cli_json_str(f, fstype);
    fputs(",\n    \"device\": ", f);
    sp_cli_json_str(f, fsdev);
    fputs(",\n    \"fio\": ", f);
    if (have_fio)
        sp_cli_json_str(f, fio);
    else
        fputs("null", f);
    fputs("\n  },\n  \"config\": {\n    \"dir\": ", f);
    sp_cli_json_str(f, d->dir);
    fprintf(f, ",\n    \"file_size\": %" PRIu64 ",\n    \"blocks\": [", d->size);
    for (int i = 0; i < d->n_blocks; i++)
        fprintf(f, "%s%zu", i ? ", " : "", d->blocks[i]);
    fputs("],\n    \"queue_depths\": [", f);
    for (int i = 0; i < d->n_qds; i++)
        fprintf(f, "%s%d", i ? ", " : "", d->qds[i]);
    fprintf(f, "],\n    \"repeats\": %d,\n    \"engines\": [", d->repeats);
    bool first = true;
    for (int e = 0; e < SP_IOB_ENGINE_COUNT; e++) {
        if (!(d->engines & (1u << e)))
            continue;
        fputs(first ? "" : ", ", f);
        sp_cli_json_str(f, sp_iobench_engine_key((sp_iob_engine)e));
        first = false;
    }
    fprintf(f, "],\n    \"ops\": [%s%s%s],\n    \"fio\": %s,\n    \"register_buffers\": %s,\n"
               "    \"direct_io\": ",
            d->reads ? "\"read\"" : "", d->reads && d->writes ? ", " : "",
            d->writes ? "\"write\"" : "", d->fio ? "true" : "false",
            d->register_buffers ? "true" : "false");
    sp_cli_json_str(f, d->direct_io);
    fprintf(f, ",\n    \"target\": {\"engine\": \"direct\", \"op\": \"read\", \"block\": %zu, "
               "\"qd\": %d},\n    \"interleaving\": \"per repeat, ours and fio back to back, order "
               "alternating\"\n  },\n  \"wall_seconds\": %.1f,\n  \"rows\": [\n",
            d->target_block, d->target_qd, seconds);
    const sp_iobench_row *target = NULL;
    for (int i = 0; i < n; i++) {
        const sp_iobench_row *r = &rows[i];
        bool fio_ok = r->fio_mean_gbs > 0;
        if (is_target(d, r))
            target = r;
        fputs("    {\"engine\": ", f);
        sp_cli_json_str(f, sp_iobench_engine_key(r->engine));
        fprintf(f, ", \"op\": \"%s\", \"block\": %zu, \"qd\": %d, \"ours_mean_gbs\": %.6f, "
                   "\"ours_sd_gbs\": %.6f, \"fio_mean_gbs\": ",
                r->write ? "write" : "read", r->block_size, r->queue_depth, r->mean_gbs, r->sd_gbs);
        json_fio(f, r);
        fputs(", \"ours_gbs\": [", f);
        for (int k = 0; k < r->repeats; k++)
            fprintf(f, "%s%.6f", k ? ", " : "", r->ours_gbs[k]);
        fputs("], \"fio_gbs\": ", f);
        if (fio_ok) {
            fputc('[', f);
            for (int k = 0; k < r->repeats; k++)
                fprintf(f, "%s%.6f", k ? ", " : "", r->fio_gbs[k]);
            fputc(']', f);
        } else {
            fputs("null", f);
        }
        fprintf(f, ", \"target\": %s}%s\n", is_target(d, r) ? "true" : "false", i + 1 < n ? "," : "");
    }
    fputs("  ],\n  \"target\": ", f);
    if (target) {
        fprintf(f, "{\"block\": %zu, \"qd\": %d, \"ours_mean_gbs\": %.6f, \"ours_sd_gbs\": %.6f, "
                   "\"fio_mean_gbs\": ", target->block_size, target->queue_depth, target->mean_gbs,
                target->sd_gbs);
        json_fio(f, target);
        fputc('}', f);
    } else {
        fputs("null", f);
    }
    fputs("\n}\n", f);
    if (fclose(f) != 0) {
        sp_cli_error("io-bench: writing '%s' failed: %s", path, strerror(errno));
        return SP_EXIT_FAIL;
    }
    return SP_EXIT_OK;
}

int sp_cmd_iobench(int argc, char **argv)
{
    sp_cli_common c;
    sp_cli_common_init(&c);
    const char *dir = NULL, *json = NULL, *v;
    uint64_t size = 256ull << 20;
    size_t blocks[MAX_LIST] = {64 << 10, 256 << 10, 1 << 20, 4 << 20};
    int qds[MAX_LIST] = {1, 4, 16, 32, 64};
    int n_blocks = 4, n_qds = 5;
    int64_t repeats = 3;
    unsigned engines = 0;
    bool engines_given = false, reads = true, writes = true, fio = true;
    for (int i = 1; i < argc; i++) {
        int r = sp_cli_common_arg(&c, argc, argv, &i);
        if (r < 0)
            return SP_EXIT_USAGE;
        if (r > 0)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return SP_EXIT_OK;
        } else if (!strcmp(a, "--no-fio")) {
            fio = false;
        } else if (!strcmp(a, "--dir") || !strcmp(a, "--json") || !strcmp(a, "--size") ||
                   !strcmp(a, "--blocks") || !strcmp(a, "--qd") || !strcmp(a, "--repeats") ||
                   !strcmp(a, "--engines") || !strcmp(a, "--ops")) {
            if (!(v = sp_cli_value(argc, argv, &i)))
                return SP_EXIT_USAGE;
            bool ok = true;
            if (!strcmp(a, "--dir")) {
                dir = v;
            } else if (!strcmp(a, "--json")) {
                json = v;
            } else if (!strcmp(a, "--size")) {
                ok = sp_config_parse_size(v, &size) == 0 && size >= (1u << 20) && size % 4096 == 0;
                if (!ok)
                    sp_cli_error("--size: '%s' must be a size of at least 1MiB, a multiple of 4 KiB", v);
            } else if (!strcmp(a, "--blocks")) {
                ok = parse_list(a, v, item_block, blocks, &n_blocks);
            } else if (!strcmp(a, "--qd")) {
                ok = parse_list(a, v, item_qd, qds, &n_qds);
            } else if (!strcmp(a, "--repeats")) {
                ok = sp_cli_int(a, v, 1, SP_IOB_MAX_REPEATS, &repeats);
            } else if (!strcmp(a, "--engines")) {
                ok = parse_engines(v, &engines);
                engines_given = true;
            } else {
                ok = parse_ops(v, &reads, &writes);
            }
            if (!ok)
                return SP_EXIT_USAGE;
        } else {
            sp_cli_error("io-bench: unknown option '%s'", a);
            usage(stderr);
            return SP_EXIT_USAGE;
        }
    }
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }
    const sp_config *cfg = &c.cfg;
    if (!dir)
        dir = cfg->spill.dir;
    struct stat st;
    if (stat(dir, &st) != 0) {
        sp_cli_error("io-bench: directory '%s': %s (give --dir or set [spill] dir)", dir,
                     strerror(errno));
        return SP_EXIT_USAGE;
    }
    if (!S_ISDIR(st.st_mode)) {
        sp_cli_error("io-bench: '%s' is not a directory (give --dir or set [spill] dir)", dir);
        return SP_EXIT_USAGE;
    }
    if (!engines_given) {
        engines = (1u << SP_IOB_URING_BUFFERED) | (1u << SP_IOB_PSYNC);
        if (cfg->spill.direct_io != SP_DIRECT_IO_OFF)
            engines |= 1u << SP_IOB_URING_DIRECT;
    }
    for (int b = 0; b < n_blocks; b++)
        for (int q = 0; q < n_qds; q++)
            if ((uint64_t)blocks[b] * (uint64_t)qds[q] > SP_IOB_MAX_BOUNCE) {
                sp_cli_error("io-bench: block %zu x QD %d exceeds %llu MiB of I/O buffers; use "
                             "smaller blocks or queue depths", blocks[b], qds[q],
                             (unsigned long long)(SP_IOB_MAX_BOUNCE >> 20));
                return SP_EXIT_USAGE;
            }
    static const char *const direct_names[] = {"auto", "on", "off"};
    run_desc d = {.dir = dir, .size = size, .blocks = blocks, .n_blocks = n_blocks, .qds = qds,
                  .n_qds = n_qds, .repeats = (int)repeats, .engines = engines, .reads = reads,
                  .writes = writes, .fio = fio, .register_buffers = cfg->spill.register_buffers,
                  .direct_io = direct_names[cfg->spill.direct_io % 3],
                  .target_block = (size_t)cfg->spill.block_size, .target_qd = (int)cfg->spill.queue_depth};
    sp_iobench_opts o = {.dir = dir, .file_size = size, .block_sizes = blocks, .n_block_sizes = n_blocks,
                         .queue_depths = qds, .n_queue_depths = n_qds, .repeats = (int)repeats,
                         .engines = engines, .reads = reads, .writes = writes, .with_fio = fio,
                         .register_buffers = cfg->spill.register_buffers,
                         .require_direct = cfg->spill.direct_io == SP_DIRECT_IO_ON,
                         .progress = stderr};
    fprintf(stderr, "io-bench: %s, %" PRIu64 " MiB per pass, %d repeat(s)%s\n", dir, size >> 20,
            (int)repeats, fio ? ", fio interleaved" : "");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sp_iobench_row *rows = NULL;
    int n = 0;
    if (sp_iobench_run(&o, &rows, &n) < 0) {
        sp_cli_error("io-bench: %s", sp_last_error());
        return SP_EXIT_FAIL;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("io-bench: %s, file %" PRIu64 " MiB, %d repeats; GB/s = 1e9 B/s, mean ± sd; ours and fio "
           "interleaved per repeat\n\n", dir, size >> 20, (int)repeats);
    sp_iobench_print(stdout, rows, n, SP_IOB_URING_DIRECT, d.target_block, d.target_qd);
    const sp_iobench_row *target = NULL;
    for (int i = 0; i < n; i++)
        if (is_target(&d, &rows[i]))
            target = &rows[i];
    if (target && target->fio_mean_gbs > 0)
        printf("\ntarget (io_uring+O_DIRECT read, %zu KiB, QD %d): ours %.3f ± %.3f GB/s, fio %.3f ± "
               "%.3f GB/s, ratio %.3f\n", target->block_size >> 10, target->queue_depth,
               target->mean_gbs, target->sd_gbs, target->fio_mean_gbs, target->fio_sd_gbs,
               target->mean_gbs / target->fio_mean_gbs);
    else if (target)
        printf("\ntarget (io_uring+O_DIRECT read, %zu KiB, QD %d): ours %.3f ± %.3f GB/s (no fio)\n",
               target->block_size >> 10, target->queue_depth, target->mean_gbs, target->sd_gbs);
    int rc = SP_EXIT_OK;
    if (json) {
        rc = write_json(json, &d, rows, n, secs);
        if (rc == SP_EXIT_OK)
            fprintf(stderr, "io-bench: wrote %s\n", json);
    }
    free(rows);
    return rc;
}
