/* cli.h - shared pieces of the `spindle` command line: option scanning, config handling, model
 * path defaults, and the entry points of the subcommands. Only the binary links these files. */
#ifndef SP_CLI_H
#define SP_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "config.h"

/* Exit codes: 0 ok, 1 runtime failure (bad model file, I/O), 2 usage error. */
enum { SP_EXIT_OK = 0, SP_EXIT_FAIL = 1, SP_EXIT_USAGE = 2 };

/* Options every subcommand accepts; the rest are subcommand-specific. */
typedef struct sp_cli_common {
    sp_config cfg;          /* defaults < --config file < --set overrides < direct flags */
    bool print_config;      /* --print-config: print the effective config and exit */
} sp_cli_common;

/* Try to consume one common option at argv[*i] (--config F, --set K=V, --print-config, -m F,
 * -t N, -c N, --seed N). Returns 1 if consumed (advancing *i past its value), 0 if not a common
 * option, or -1 on error (message already printed). */
int sp_cli_common_arg(sp_cli_common *c, int argc, char **argv, int *i);
void sp_cli_common_init(sp_cli_common *c);

/* Value of option argv[*i] (the next argument); prints an error and returns NULL when missing. */
const char *sp_cli_value(int argc, char **argv, int *i);
/* Parse integers / floats strictly; print "spindle: <opt>: ..." and return false on error. */
bool sp_cli_int(const char *opt, const char *text, int64_t lo, int64_t hi, int64_t *out);
bool sp_cli_float(const char *opt, const char *text, double lo, double hi, double *out);

/* Print "spindle: <msg>" to stderr. */
void sp_cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Resolve [runtime] backend: auto -> the best available (said once on stderr), cpu, or cuda (an
 * error naming why when it is not available here). 0, or -1 with the message printed. */
int sp_cli_backend(const sp_config *cfg, sp_backend_kind *out);

/* Resolve the thread count (0 = online cores). */
int sp_cli_threads(const sp_config *cfg);

/* For the JSON results: s as a JSON string (quotes, escapes; NULL prints ""); the CPU's model name
 * from /proc/cpuinfo ("unknown" if none); the commit of the git checkout the binary was built in
 * (else of the current directory, else "unknown"). buf is always NUL-terminated. */
void sp_cli_json_str(FILE *f, const char *s);
void sp_cli_cpu_model(char *buf, size_t len);
void sp_cli_git_commit(char *buf, size_t len);

/* Read a whole file (or stdin when path is "-") into a NUL-terminated malloc'd buffer. */
char *sp_cli_read_file(const char *path, size_t *len);

int sp_cmd_run(int argc, char **argv);
int sp_cmd_inspect(int argc, char **argv);
int sp_cmd_bench(int argc, char **argv);
int sp_cmd_eval(int argc, char **argv);

#endif
