/* model_names.c - the table of short model names; file names must match scripts/setup.sh. */
#include "model_names.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "sp_error.h"

static const struct {
    const char *name, *file;
} models[] = {
    {"smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf"},
    {"qwen2.5-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"},
    {"qwen2.5-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"},
};

const char *sp_model_name_list(void)
{
    return "smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b";
}

int sp_model_name_resolve(const char *name, char *out, size_t len)
{
    size_t k = 0, n = sizeof models / sizeof models[0];
    while (k < n && strcasecmp(name, models[k].name))
        k++;
    if (k == n)
        return 0;
    const char *cache = getenv("SPINDLE_CACHE"), *home = getenv("HOME");
    int w;
    if (cache && *cache)
        w = snprintf(out, len, "%s/models/%s", cache, models[k].file);
    else if (home && *home)
        w = snprintf(out, len, "%s/.cache/spindle/models/%s", home, models[k].file);
    else
        return sp_error(EINVAL, "model '%s': neither $SPINDLE_CACHE nor $HOME is set, so the model cache "
                        "cannot be found; pass the GGUF path instead", name);
    if (w < 0 || (size_t)w >= len)
        return sp_error(ENAMETOOLONG, "model '%s': the cached path is longer than %zu bytes", name, len - 1);
    return 1;
}
