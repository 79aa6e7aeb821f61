/* Must compile (the control): kv/ may include its own headers and every layer below it. */
#include "backend.h"
#include "config.h"
#include "kv_policy.h"
#include "sp_error.h"
#include "uring_store.h"
int sp_layering_probe_ok(void) { return 0; }
