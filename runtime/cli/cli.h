/* cli.h - shared pieces of the `spindle` command line: option scanning, config handling, model
 * path defaults, and the entry points of the subcommands. Only the binary links these files. */
#ifndef SP_CLI_H
#define SP_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "config.h"

/* Exit codes: 0 ok, 1 runtime failure (bad model file, I/O, out of memory), 2 usage error,
 * 3 the output was lost (stdout could not be written: a closed pipe, a full disk). */
enum { SP_EXIT_OK = 0, SP_EXIT_FAIL = 1, SP_EXIT_USAGE = 2, SP_EXIT_OUTPUT = 3 };

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

/* Resolve the thread count (0 = online cores); warns (sp_notice) when more are asked for than
 * CPUs are online. */
int sp_cli_threads(const sp_config *cfg);

/* Make sure OpenBLAS runs no threads of its own (spindle calls it from its pool): unless
 * OPENBLAS_NUM_THREADS is already 1, set it and re-execute /proc/self/exe with argv (OpenBLAS reads
 * it before main). Returns only when nothing needs doing or the exec failed. Call first in main. */
void sp_cli_single_threaded_blas(char **argv);

/* Write n bytes to stdout and flush. On the first failure (EPIPE, ENOSPC, ...) prints one message
 * and returns false; every later call returns false without writing. */
bool sp_cli_put_out(const void *bytes, size_t n);
/* Flush and close stdout at the end of the program. Returns 0, or SP_EXIT_OUTPUT when any output
 * was lost (message printed once). */
int sp_cli_close_stdout(void);

/* For the JSON results: s as a JSON string (quotes, escapes; NULL prints ""); the CPU's model name
 * from /proc/cpuinfo ("unknown" if none); the commit of the git checkout the binary was built in
 * (else of the current directory, else "unknown"). buf is always NUL-terminated. */
void sp_cli_json_str(FILE *f, const char *s);
void sp_cli_cpu_model(char *buf, size_t len);
void sp_cli_git_commit(char *buf, size_t len);

/* Read a whole file (or stdin when path is "-") into a NUL-terminated malloc'd buffer (caller
 * frees), reading at most max_bytes: a longer input stops the read and fails with "stopped reading
 * ...: <too_long>". A NUL byte inside the text is refused with its offset. NULL on failure, the
 * message printed. *len (may be NULL) gets the length. */
char *sp_cli_read_file(const char *path, size_t max_bytes, const char *too_long, size_t *len);

/* Find `rel` (e.g. "data/haystack/pg_essays") among the shared data: under $SPINDLE_SHARED when
 * set; else in ../shared beside the checkout the binary was built in (<checkout>/build/spindle);
 * else ../shared of the current directory; else the installed data directory (SPINDLE_DATADIR).
 * Writes the path to buf and a description of the choice to *how. 0, or -ENOENT (*how lists
 * where it looked). No machine path is built in. */
int sp_cli_data_path(const char *rel, char *buf, size_t len, const char **how);

int sp_cmd_run(int argc, char **argv);
int sp_cmd_inspect(int argc, char **argv);
int sp_cmd_bench(int argc, char **argv);
int sp_cmd_eval(int argc, char **argv);

#endif
