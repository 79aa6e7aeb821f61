/* model_names.h - short model names (`-m qwen2.5-0.5b`) resolved to the GGUF files that
 * scripts/setup.sh --model NAME puts in the model cache ($SPINDLE_CACHE/models, default
 * ~/.cache/spindle/models). Thread-safe (reads the environment only). */
#ifndef SP_MODEL_NAMES_H
#define SP_MODEL_NAMES_H

#include <stddef.h>

/* If `name` is a known short name (case-insensitive), write the cached GGUF path to out[len] and
 * return 1; return 0 when it is not a short name (out untouched: treat it as a path); -EINVAL if
 * neither $SPINDLE_CACHE nor $HOME is set, -ENAMETOOLONG if the path does not fit (message set). */
int sp_model_name_resolve(const char *name, char *out, size_t len);

/* The known short names, comma-separated, for help texts. */
const char *sp_model_name_list(void);

#endif
