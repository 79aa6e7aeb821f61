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
        {"--ratio", "compression.ratio"},
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
