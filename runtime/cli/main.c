/* main.c - the `spindle` command: dispatch to the subcommands in runtime/cli/, then check that
 * what they wrote to stdout really left the process (a lost output is an error, SP_EXIT_OUTPUT). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_io.h"

static void usage(FILE *out)
{
    fputs("usage: spindle <command> [options]\n"
          "\n"
          "commands:\n"
          "  run       generate text from a prompt (-p TEXT | -f FILE | stdin), streaming tokens\n"
          "  inspect   show model metadata, tensor types and KV-cache footprint\n"
          "  bench     prefill/decode tokens per second at several context depths\n"
          "  eval      quality of the compressed cache: fidelity, passkey retrieval, sweeps at equal bytes\n"
          "  io-bench  spill-tier read/write GB/s (io_uring direct/buffered, pread) next to fio\n"
          "\n"
          "common options: -m MODEL  -t THREADS  -c CTX  --config FILE  --set section.key=value\n"
          "                --print-config  --help-config  --write-default-config (configs/default.ini)\n"
          "`spindle <command> --help` shows the options of one command.\n",
          out);
}

static int dispatch(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return SP_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run"))
        return sp_cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect"))
        return sp_cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "io-bench"))
        return sp_cmd_iobench(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval"))
        return sp_cmd_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "bench"))
        return sp_cmd_bench(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help-config")) {
        sp_config_help(stdout);
        return SP_EXIT_OK;
    }
    if (!strcmp(cmd, "--write-default-config")) { /* regenerates configs/default.ini */
        sp_config_write_default(stdout);
        return SP_EXIT_OK;
    }
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return SP_EXIT_OK;
    }
    sp_cli_error("unknown command '%s'", cmd);
    usage(stderr);
    return SP_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    sp_cli_single_threaded_blas(argv);
    /* A closed pipe (`spindle run | head`) must be an EPIPE the writers see and report, not a
     * silent death by signal; an inherited SIG_IGN stays as it is. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    int rc = dispatch(argc, argv);
    int out_rc = sp_cli_close_stdout();
    return rc == SP_EXIT_OK && out_rc ? out_rc : rc;
}
