/* Must NOT compile: base/ is the lowest layer; config.h belongs to a layer above it. */
#include "config.h"
int sp_layering_probe_bad(void) { return 0; }
