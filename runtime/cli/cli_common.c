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
    if (sp_backend_available(SP_BACKEND_CUDA, &why))
        why = "the forward pass runs on the cpu backend in this version";
    if (!said)
        fprintf(stderr, "spindle: backend auto: cpu (cuda: %s)\n", why);
    said = true;
    *out = SP_BACKEND_CPU;
    return 0;
}

int sp_cli_threads(const sp_config *cfg)
{
    if (cfg->runtime.threads > 0)
        return (int)cfg->runtime.threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

char *sp_cli_read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        sp_cli_error("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    bool failed = ferror(f);
    if (f != stdin)
        fclose(f);
    if (!buf || failed) {
        sp_cli_error("cannot read '%s'%s", path, buf ? ": I/O error" : ": out of memory");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
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
