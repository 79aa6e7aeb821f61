/* Must NOT compile: kv/ sits below model/ (README "Layout"), so model.h is not on kv's include path. */
#include "model.h"
int sp_layering_probe_bad(void) { return 0; }
