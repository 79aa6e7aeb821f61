/* synth_model.h - small synthetic GGUF models for the GPU tests, small enough for the CPU emulation
 * of CUDA: llama (adjacent-pair RoPE, no biases; Q4_0 Q5_0 Q5_1 Q8_0 F16 Q4_1 matrices) or qwen2
 * (half-split RoPE, q/k/v biases; Q4_K Q5_K Q6_K BF16 F32 Q8_0), random weights from a seed whose
 * block scales are small finite values. Written with stdio; link tests/support/synth_model.c
 * (spindle_gpu_harness). */
#ifndef SP_TEST_SYNTH_MODEL_H
#define SP_TEST_SYNTH_MODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "kv_policy.h"
#include "model.h"

enum { SYNTH_E = 256, SYNTH_F = 512, SYNTH_N_HEAD = 4, SYNTH_N_KV = 2, SYNTH_HD = 64, SYNTH_VOCAB = 320,
       SYNTH_N_LAYER = 2, SYNTH_N_CTX = 64 };

/* Write the model to path: 0 or a negative errno. */
int synth_model_write(const char *path, bool qwen2, uint64_t seed);
/* The xorshift64 the writer draws from (tests use it for prompts). */
uint64_t synth_next_u64(uint64_t *s);

/* A context for the CPU-vs-device comparisons: SYNTH_N_CTX tokens, one thread, chunks of 16, exact
 * numerics, on kind, with compression options o (NULL: none). NULL with the reason on stderr. */
sp_ctx_t *synth_ctx_new(const sp_model_t *m, sp_backend_kind kind, const sp_kv_opts *o);

/* Whether a CUDA backend can be created here; when not, prints the skip line (the test exits 77). */
bool synth_cuda_available(void);

/* The plain-C tests' check: count and report a failure, go on. */
extern int synth_failures;
#define SYNTH_CHECK(cond, ...)                                             \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            synth_failures++;                                              \
        }                                                                  \
    } while (0)

#endif
