/* main.c - the `spindle` command: dispatch to the subcommands in runtime/cli/. */
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
          "                --print-config  --help-config\n"
          "`spindle <command> --help` shows the options of one command.\n",
          out);
}

int main(int argc, char **argv)
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
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return SP_EXIT_OK;
    }
    sp_cli_error("unknown command '%s'", cmd);
    usage(stderr);
    return SP_EXIT_USAGE;
}
