/* spindle.h - the public API of libspindle: everything a program needs to run a GGUF model with
 * spindle's compressed, tiered KV cache. Opaque handles, versioned parameter structs, C11.
 *
 *   spindle_params p = spindle_default_params();
 *   p.model_path = "model.gguf";
 *   spindle_session *s = spindle_open(&p);          // NULL: spindle_last_error() says why
 *   spindle_generate(s, "Hello", 5, 32, on_text, user);
 *   spindle_close(s);
 *
 * Configuration is spindle's (configs/default.ini documents every key): an optional INI file, then
 * "section.key=value" overrides, exactly like `spindle run --config F --set K=V`.
 *
 * Errors: functions return 0 or a negative errno (NULL for spindle_open); the message, naming what
 * failed and what to do, is spindle_last_error() of the calling thread. The library never exits.
 * Thread-safety: a session is driven by one thread at a time; sessions are independent.
 */
#ifndef SPINDLE_H
#define SPINDLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPINDLE_API_VERSION 1

typedef struct spindle_session spindle_session;

typedef struct spindle_params {
    uint32_t version;            /* SPINDLE_API_VERSION (spindle_default_params sets it) */
    const char *model_path;      /* GGUF file; NULL: [model] path of the config */
    const char *config_path;     /* INI file or NULL */
    const char *const *overrides;/* n_overrides "section.key=value" strings, applied after the file */
    int n_overrides;
    float temperature;           /* <= 0: greedy (the default) */
    int top_k;                   /* <= 0: all */
    float top_p;                 /* >= 1: all */
} spindle_params;

/* Called with each piece of generated text (UTF-8, not NUL-terminated). Return nonzero to stop. */
typedef int (*spindle_text_fn)(void *user, const char *text, size_t len);

typedef struct spindle_stats {
    int64_t prompt_tokens, generated_tokens;
    double prefill_s, decode_s;
    double kv_true_ratio;        /* compressed cache bytes / fp16 cache bytes of the same tokens */
} spindle_stats;

const char *spindle_version(void);        /* "0.3.0" */
spindle_params spindle_default_params(void);

/* Load the model and tokenizer under the configuration. The caller owns the session. */
spindle_session *spindle_open(const spindle_params *p);
void spindle_close(spindle_session *s);   /* accepts NULL */

/* Tokenize prompt (len bytes; control-token text is not parsed), prefill it into a fresh context
 * (compressed and placed per the configuration), then sample up to n_predict tokens with the
 * configured sampler, streaming text to on_text (may be NULL). Stops at end of generation.
 * Returns the number of tokens generated, or a negative errno. */
int spindle_generate(spindle_session *s, const char *prompt, size_t len, int n_predict,
                     spindle_text_fn on_text, void *user);

/* Figures of the last spindle_generate. */
spindle_stats spindle_get_stats(const spindle_session *s);

const char *spindle_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
