/* cmd_run.c - `spindle run` (being wired to the model; see issue 2). */
#include "cli.h"
int sp_cmd_run(int argc, char **argv)
{
    (void)argc; (void)argv;
    sp_cli_error("run: not wired yet");
    return SP_EXIT_FAIL;
}
