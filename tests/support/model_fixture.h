/* model_fixture.h - the default model for the model-level Criterion tests: its path from
 * SPINDLE_MODEL (ctest sets it), the loaded model and its tokenizer. These tests fail, never skip,
 * when the model is missing. Criterion assertions fail the calling test; link
 * tests/support/model_fixture.c (spindle_test_support). */
#ifndef SP_TEST_MODEL_FIXTURE_H
#define SP_TEST_MODEL_FIXTURE_H

#include "model.h"
#include "tokenizer.h"

/* SPINDLE_MODEL; asserts that it is set and readable. */
const char *model_fixture_path(void);

/* Load the model at model_fixture_path() (asserting it loads); free with sp_model_free. */
sp_model_t *model_fixture_load(void);

/* The tokenizer of a loaded model, from its GGUF (asserting it builds); free with
 * sp_tokenizer_free. */
sp_tokenizer_t *model_fixture_tokenizer(const sp_model_t *m);

#endif
