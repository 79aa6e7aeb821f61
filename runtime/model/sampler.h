/* sampler.h - next-token selection from logits: greedy, or temperature + top-k + top-p with a
 * seeded, reproducible RNG (PCG32).
 *
 * All scratch is allocated in sp_sampler_new (sized by the vocabulary); sampling never allocates.
 * A sampler holds RNG state: use one per sequence/thread.
 */
#ifndef SP_SAMPLER_H
#define SP_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

typedef struct sp_sampler_params {
    float temperature;   /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;           /* keep the k most likely tokens; <= 0: all */
    float top_p;         /* keep the smallest prefix with cumulative probability >= top_p; >= 1: all */
    uint64_t seed;
} sp_sampler_params;

typedef struct sp_sampler sp_sampler_t;

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, seed 0. */
sp_sampler_params sp_sampler_default_params(void);
/* Returns NULL on failure (sp_last_error()): n_vocab < 1, NaN parameters, out of memory. */
sp_sampler_t *sp_sampler_new(int n_vocab, const sp_sampler_params *p);
void sp_sampler_free(sp_sampler_t *s);   /* accepts NULL */
/* Restart the random sequence: the same seed and logits give the same tokens. */
void sp_sampler_seed(sp_sampler_t *s, uint64_t seed);
/* Pick a token id in [0, n_vocab) from logits[n_vocab]. Tokens whose logit is NaN or -inf are never
 * picked unless every logit is; then returns 0. */
int32_t sp_sampler_sample(sp_sampler_t *s, const float *logits);
/* For sampling elsewhere (a backend's sample op) with the same result: whether this sampler is
 * greedy, its parameters, and the next uniform draw in [0, 1) that sp_sampler_sample would use. */
bool sp_sampler_is_greedy(const sp_sampler_t *s);
sp_sampler_params sp_sampler_get_params(const sp_sampler_t *s);
double sp_sampler_draw_u01(sp_sampler_t *s);
/* Argmax (lowest id on ties); no state. */
int32_t sp_sampler_greedy(const float *logits, int n_vocab);

#endif
