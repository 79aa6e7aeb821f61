/* fuzz_config.c - libFuzzer target: arbitrary bytes as an INI file into the config loader, then
 * validation and printing of whatever was accepted. Crashes, leaks and UB are the findings. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    sp_config cfg;
    sp_config_defaults(&cfg);
    if (sp_config_load_string(&cfg, text, "fuzz.ini") == 0) {
        (void)sp_config_validate(&cfg, 30);
        FILE *null = fopen("/dev/null", "w");
        if (null) {
            sp_config_print(&cfg, null);
            fclose(null);
        }
    }
    /* The same bytes as a --set assignment. */
    (void)sp_config_set(&cfg, text, "fuzz");
    free(text);
    return 0;
}
