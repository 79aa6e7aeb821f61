/* main.c - the `spindle` command line (placeholder until the CLI lands). */
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "spindle: no commands yet\n");
    return 2;
}
