/* model_fixture.c - see model_fixture.h. */
#include "model_fixture.h"

#include <criterion/criterion.h>

#include <stdlib.h>
#include <unistd.h>

#include "sp_error.h"

const char *model_fixture_path(void)
{
    const char *p = getenv("SPINDLE_MODEL");
    cr_assert(p && access(p, R_OK) == 0, "SPINDLE_MODEL not set or unreadable (%s)", p ? p : "unset");
    return p;
}

sp_model_t *model_fixture_load(void)
{
    const char *p = model_fixture_path();
    sp_model_t *m = sp_model_load(p);
    cr_assert_not_null(m, "load %s: %s", p, sp_last_error());
    return m;
}

sp_tokenizer_t *model_fixture_tokenizer(const sp_model_t *m)
{
    sp_tokenizer_t *tok = sp_tokenizer_from_gguf(sp_model_gguf(m));
    cr_assert_not_null(tok, "tokenizer from the model: %s", sp_last_error());
    return tok;
}
