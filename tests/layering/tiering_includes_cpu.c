/* Must NOT compile: tiering/ sits below the CPU backend (cpu/), so ops.h is not on its path. */
#include "ops.h"
int sp_layering_probe_bad(void) { return 0; }
