/* example.c - a third-party program: only <spindle.h>, built against the installed libspindle with
 * pkg-config (tests/example_install.sh). Generates a few tokens greedily and checks the stats. */
#include <spindle.h>

#include <stdio.h>
#include <string.h>

static int print_text(void *user, const char *text, size_t len)
{
    size_t *total = user;
    *total += len;
    fwrite(text, 1, len, stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: example MODEL.gguf\n");
        return 2;
    }
    spindle_params p = spindle_default_params();
    p.model_path = argv[1];
    const char *sets[] = {"runtime.threads=2", "compression.policy=snapkv"};
    p.overrides = sets;
    p.n_overrides = 2;
    spindle_session *s = spindle_open(&p);
    if (!s) {
        fprintf(stderr, "example: %s\n", spindle_last_error());
        return 1;
    }
    const char *prompt = "The capital of France is";
    size_t total = 0;
    int n = spindle_generate(s, prompt, strlen(prompt), 8, print_text, &total);
    if (n < 0) {
        fprintf(stderr, "example: %s\n", spindle_last_error());
        spindle_close(s);
        return 1;
    }
    spindle_stats st = spindle_get_stats(s);
    printf("\nspindle %s: %d tokens generated, %zu bytes of text, prompt %lld tokens\n", spindle_version(), n,
           total, (long long)st.prompt_tokens);
    spindle_close(s);
    return n > 0 && total > 0 && st.prompt_tokens > 0 ? 0 : 1;
}
