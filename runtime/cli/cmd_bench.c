/* cmd_run.c - `spindle bench` (being wired to the model; see issue 2). */
#include "cli.h"
int sp_cmd_bench(int argc, char **argv)
{
    (void)argc; (void)argv;
    sp_cli_error("bench: not wired yet");
    return SP_EXIT_FAIL;
}
