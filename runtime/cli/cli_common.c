/* cli_common.c - option scanning and config layering shared by the subcommands. */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sp_error.h"

void sp_cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("spindle: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *sp_cli_value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        sp_cli_error("%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

bool sp_cli_int(const char *opt, const char *text, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text || *end) {
        sp_cli_error("%s: '%s' is not an integer", opt, text);
        return false;
    }
    if (v < lo || v > hi) {
        sp_cli_error("%s: %lld is out of range [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
        return false;
    }
    *out = v;
    return true;
}

bool sp_cli_float(const char *opt, const char *text, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || v != v) {
        sp_cli_error("%s: '%s' is not a number", opt, text);
        return false;
    }
    if (v < lo || v > hi) {
        sp_cli_error("%s: %g is out of range [%g, %g]", opt, v, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

void sp_cli_common_init(sp_cli_common *c)
{
    memset(c, 0, sizeof *c);
    sp_config_defaults(&c->cfg);
}

/* Apply "section.key=value" and report failures with the library's message. */
static int apply_set(sp_cli_common *c, const char *assignment, const char *origin)
{
    if (sp_config_set(&c->cfg, assignment, origin) < 0) {
        sp_cli_error("%s", sp_last_error());
        return -1;
    }
    return 1;
}

int sp_cli_common_arg(sp_cli_common *c, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *v;
    char buf[SP_CONFIG_PATH_MAX + 64];
    if (!strcmp(a, "--config")) {
        if (!(v = sp_cli_value(argc, argv, i)))
            return -1;
        if (sp_config_load_file(&c->cfg, v) < 0) {
            sp_cli_error("%s", sp_last_error());
            return -1;
        }
        return 1;
    }
    if (!strcmp(a, "--set")) {
        if (!(v = sp_cli_value(argc, argv, i)))
            return -1;
        return apply_set(c, v, "--set");
    }
    if (!strcmp(a, "--print-config")) {
        c->print_config = true;
        return 1;
    }
    /* Direct flags are shorthands for config keys, so they share its validation. */
    static const struct { const char *flag, *key; } shorthands[] = {
        {"-m", "model.path"}, {"--model", "model.path"}, {"-c", "model.n_ctx"},
        {"--ctx", "model.n_ctx"}, {"-t", "runtime.threads"}, {"--threads", "runtime.threads"},
        {"--seed", "runtime.seed"}, {"--policy", "compression.policy"},
        {"--ratio", "compression.ratio"}, {"-b", "runtime.backend"}, {"--backend", "runtime.backend"},
    };
    for (size_t k = 0; k < sizeof shorthands / sizeof shorthands[0]; k++) {
        if (strcmp(a, shorthands[k].flag))
            continue;
        if (!(v = sp_cli_value(argc, argv, i)))
            return -1;
        snprintf(buf, sizeof buf, "%s=%s", shorthands[k].key, v);
        return apply_set(c, buf, shorthands[k].flag);
    }
    return 0;
}

int sp_cli_backend(const sp_config *cfg, sp_backend_kind *out)
{
    const char *why = NULL;
    switch (cfg->runtime.backend) {
    case SP_BACKEND_CHOICE_CPU:
        *out = SP_BACKEND_CPU;
        return 0;
    case SP_BACKEND_CHOICE_CUDA:
        if (!sp_backend_available(SP_BACKEND_CUDA, &why)) {
            sp_cli_error("[runtime] backend = cuda: not available here: %s (use --backend cpu, or see "
                         "`spindle inspect --backends`)", why);
            return -1;
        }
        *out = SP_BACKEND_CUDA;
        return 0;
    default:
        break;
    }
    static bool said;
    bool cuda = sp_backend_available(SP_BACKEND_CUDA, &why);
    const char *cpu_only = cuda ? sp_config_cpu_only_reason(cfg) : NULL;
    *out = cuda && !cpu_only ? SP_BACKEND_CUDA : SP_BACKEND_CPU;
    if (!said) {
        if (*out == SP_BACKEND_CUDA)
            fprintf(stderr, "spindle: backend auto: cuda (--backend cpu runs on the host)\n");
        else
            fprintf(stderr, "spindle: backend auto: cpu (cuda: %s)\n", cpu_only ? cpu_only : why);
    }
    said = true;
    return 0;
}

int sp_cli_threads(const sp_config *cfg)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (cfg->runtime.threads > 0) {
        /* More threads than cores only queue behind each other (and spin at barriers): say so. */
        if (n > 0 && cfg->runtime.threads > n)
            sp_notice("%lld compute threads requested but only %ld CPUs are online: the threads "
                      "will share cores and run slower than with -t %ld",
                      (long long)cfg->runtime.threads, n, n);
        return (int)cfg->runtime.threads;
    }
    return n > 0 ? (int)n : 1;
}

void sp_cli_single_threaded_blas(char **argv)
{
    /* OpenBLAS reads its thread count in its library constructor, before main(), and starts its
     * thread server there: each server thread then allocates a 128 MiB buffer, retrying forever
     * under an address-space limit, and exit() waits for it. spindle runs sgemm from its own pool,
     * so OpenBLAS must start none: fix the environment and restart this program once. */
    const char *v = getenv("OPENBLAS_NUM_THREADS");
    if (v && !strcmp(v, "1"))
        return;
    if (setenv("OPENBLAS_NUM_THREADS", "1", 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* exec refused (no /proc): carry on; only the address-space-limit case suffers. */
}

/* ---- stdout: every write checked, the loss reported once ---- */

static bool stdout_lost;

static void report_stdout_loss(int err)
{
    if (stdout_lost)
        return;
    stdout_lost = true;
    sp_cli_error("cannot write the output to stdout: %s; the output is lost (exit code %d)",
                 strerror(err ? err : EIO), SP_EXIT_OUTPUT);
}

bool sp_cli_put_out(const void *bytes, size_t n)
{
    if (stdout_lost)
        return false;
    errno = 0;
    if ((n && fwrite(bytes, 1, n, stdout) != n) || fflush(stdout) != 0) {
        report_stdout_loss(errno);
        return false;
    }
    return true;
}

int sp_cli_close_stdout(void)
{
    errno = 0;
    bool bad = fflush(stdout) != 0 || ferror(stdout);
    int err = errno;
    if (fclose(stdout) != 0 && !bad) {
        bad = true;
        err = errno;
    }
    if (!bad && !stdout_lost)
        return 0;
    report_stdout_loss(err);
    return SP_EXIT_OUTPUT;
}

char *sp_cli_read_file(const char *path, size_t max_bytes, const char *too_long, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        sp_cli_error("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    /* Read at most max_bytes + 1: one byte more tells "too long" from "exactly the limit", and an
     * endless source (/dev/zero, `yes`) costs no more than the limit. */
    size_t cap = 1 << 16, n = 0;
    if (cap > max_bytes + 1)
        cap = max_bytes + 1;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap || n > max_bytes)
            break;
        size_t nc = 2 * cap > max_bytes + 1 ? max_bytes + 1 : 2 * cap;
        char *nb = realloc(buf, nc + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap = nc;
    }
    bool failed = ferror(f);
    int err = errno;
    if (f != stdin)
        fclose(f);
    if (!buf || failed) {
        sp_cli_error("cannot read '%s': %s", path, buf ? strerror(err ? err : EIO) : "out of memory");
        free(buf);
        return NULL;
    }
    if (n > max_bytes) {
        sp_cli_error("stopped reading '%s' after %zu bytes: %s", path, max_bytes,
                     too_long ? too_long : "the input is too long");
        free(buf);
        return NULL;
    }
    /* Text is bytes with a length: a NUL inside it would cut every C-string consumer short, so it
     * is refused rather than silently truncated. */
    const char *nul = memchr(buf, '\0', n);
    if (nul) {
        sp_cli_error("'%s' contains a NUL byte at offset %zu (of %zu bytes): prompts are text; "
                     "remove the NUL bytes (e.g. tr -d '\\000')", path, (size_t)(nul - buf), n);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* ---- shared data ---- */

static bool readable_dir(const char *p) { return access(p, R_OK | X_OK) == 0; }

int sp_cli_data_path(const char *rel, char *buf, size_t len, const char **how)
{
    const char *sh = getenv("SPINDLE_SHARED");
    if (sh && sh[0]) {
        snprintf(buf, len, "%s/%s", sh, rel);
        *how = "from $SPINDLE_SHARED";
        return readable_dir(buf) ? 0 : -ENOENT;
    }
    /* ../shared beside the checkout: the binary lives in <checkout>/<build dir>/ (or one deeper). */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        static const char *const up[] = {"../..", "../../.."};
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        for (size_t i = 0; i < sizeof up / sizeof up[0]; i++) {
            snprintf(buf, len, "%s/%s/shared/%s", exe, up[i], rel);
            if (readable_dir(buf)) {
                *how = "../shared beside the checkout the binary was built in";
                return 0;
            }
        }
    }
    snprintf(buf, len, "../shared/%s", rel);
    if (readable_dir(buf)) {
        *how = "../shared relative to the current directory";
        return 0;
    }
#ifdef SPINDLE_DATADIR
    snprintf(buf, len, "%s/%s", SPINDLE_DATADIR, rel);
    if (readable_dir(buf)) {
        *how = "the installed data directory";
        return 0;
    }
#endif
    *how = "looked under $SPINDLE_SHARED (unset), ../shared beside the checkout and the current "
           "directory, and the installed data directory";
    return -ENOENT;
}

/* ---- machine description for the JSON results ---- */

void sp_cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void sp_cli_cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10))
            continue;
        const char *v = strchr(line, ':');
        if (v) {
            v++;
            while (*v == ' ' || *v == '\t')
                v++;
            snprintf(buf, len, "%s", v);
            buf[strcspn(buf, "\r\n")] = '\0';
        }
        break;
    }
    fclose(f);
}

/* First line of a command's output, or "" (the command's stderr is discarded). */
static void command_line(const char *cmd, char *buf, size_t len)
{
    buf[0] = '\0';
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    if (!fgets(buf, (int)len, p))
        buf[0] = '\0';
    if (pclose(p) != 0)
        buf[0] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
}

/* git in the binary's directory first: build dirs live inside the checkout, and a benchmark may run
 * from anywhere. */
void sp_cli_git_commit(char *buf, size_t len)
{
    char exe[PATH_MAX], cmd[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    buf[0] = '\0';
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        if (!strchr(exe, '\'')) {
            snprintf(cmd, sizeof cmd, "git -C '%s' rev-parse HEAD 2>/dev/null", exe);
            command_line(cmd, buf, len);
        }
    }
    if (!buf[0])
        command_line("git rev-parse HEAD 2>/dev/null", buf, len);
    if (!buf[0])
        snprintf(buf, len, "unknown");
}
