/* test_reliability.c - whole-run failure paths on the default model: corrupt weights end in a
 * message (non-finite logits), a bad spill dir is found before the prefill, and the allocation
 * fault walk (every allocation of a small tiered run failing in turn ends in a message, never a
 * crash; the ASan build of CI checks that nothing leaks). Needs SPINDLE_MODEL. */
#include <criterion/criterion.h>

#include "config.h"
#include "gguf.h"
#include "kv_policy.h"
#include "ctx_tiering.h"
#include "kv_tiered.h"
#include "model.h"
#include "sp_alloc.h"
#include "support/spill_dir.h"
#include "sp_error.h"
#include "support/model_fixture.h"
#include "support/notice_capture.h"
#include "tokenizer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TestSuite(reliability, .timeout = 600);

/* Copy the model to a scratch file and overwrite the first floats of output_norm.weight (F32)
 * with NaN: random bytes in tensor data look like this to the forward pass (the quantized LM head
 * then turns the NaN hidden state into finite garbage logits, so that is what must be caught). */
static void poisoned_copy(char *path, size_t len)
{
    sp_gguf_t *g = sp_gguf_open(model_fixture_path());
    cr_assert(g, "%s", sp_last_error());
    const sp_gguf_tensor *t = sp_gguf_find_tensor(g, "output_norm.weight");
    cr_assert(t, "no output_norm.weight");
    uint64_t off = sp_gguf_data_offset(g) + t->offset;
    sp_gguf_close(g);
    snprintf(path, len, "%s/sp-nan-XXXXXX", getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *in = fopen(model_fixture_path(), "rb"), *out = fdopen(fd, "wb");
    cr_assert(in && out);
    static char buf[1 << 20];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        cr_assert_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    float nan[16];
    for (int i = 0; i < 16; i++)
        nan[i] = NAN;
    cr_assert_eq(fseek(out, (long)off, SEEK_SET), 0);
    cr_assert_eq(fwrite(nan, sizeof nan, 1, out), 1);
    cr_assert_eq(fclose(out), 0);
}

Test(reliability, non_finite_logits_are_an_error)
{
    char path[512];
    poisoned_copy(path, sizeof path);
    sp_model_t *m = sp_model_load(path);
    cr_assert(m, "%s", sp_last_error());
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 1;
    sp_ctx_t *c = sp_ctx_new(m, &cp);
    cr_assert(c, "%s", sp_last_error());
    const int32_t ids[3] = {1, 2, 3};
    float *logits = malloc((size_t)sp_model_hparams(m)->n_vocab * sizeof *logits);
    int rc = sp_ctx_prefill(c, ids, 3, logits, NULL);
    cr_assert_eq(rc, -EDOM, "prefill over NaN weights returned %d (%s)", rc, sp_last_error());
    cr_assert(strstr(sp_last_error(), "non-finite") && strstr(sp_last_error(), "GGUF"), "%s", sp_last_error());
    free(logits);
    sp_ctx_free(c);
    sp_model_free(m);
    unlink(path);
}

/* A spill dir that cannot be used is reported when the tiers are attached, before any prefill. */
Test(reliability, bad_spill_dir_is_found_before_the_prefill)
{
    sp_model_t *m = model_fixture_load();
    sp_config cfg;
    sp_config_defaults(&cfg);
    cr_assert_eq(sp_config_set(&cfg, "tiers.device_budget=20MiB", NULL), 0, "%s", sp_last_error());
    cr_assert_eq(sp_config_set(&cfg, "tiers.host_budget=256MiB", NULL), 0, "%s", sp_last_error());
    cr_assert_eq(sp_config_set(&cfg, "spill.dir=/nonexistent/spill", NULL), 0, "%s", sp_last_error());
    sp_kv_opts kvo;
    sp_kv_opts_from_config(&kvo, &cfg);
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = 256;
    cp.n_threads = 1;
    cp.kv_opts = &kvo;
    sp_ctx_t *c = sp_ctx_new(m, &cp);
    cr_assert(c, "%s", sp_last_error());
    sp_kv_tiering_t *tg = NULL;
    notice_capture nc;
    notice_capture_start(&nc);
    int rc = sp_kv_tiering_attach(&tg, &cfg, m, c, true);
    notice_capture_stop();
    cr_assert_eq(rc, 0, "%s", sp_last_error());
    cr_assert_gt(nc.count, 0, "nothing said about the spill dir before the prefill");
    cr_assert(strstr(nc.last, "/nonexistent/spill"), "%s", nc.last);
    sp_ctx_free(c);
    sp_kv_tiering_free(tg);
    sp_model_free(m);
}

/* ---- allocation fault walk ---- */

/* One small tiered run, everything the `spindle run` path allocates: model, tokenizer, context,
 * tiers with the spill store (host budget = weights + bounce + a little, so layers are placed on
 * nvme first and migrated), a 40-token prefill with compression, two decode steps, then every
 * free. Returns 0 or the first failure's negative errno (sp_last_error() says why). */
static int small_run(const char *dir)
{
    int rc = -ENOMEM;
    sp_model_t *m = NULL;
    sp_tokenizer_t *tok = NULL;
    sp_ctx_t *c = NULL;
    sp_kv_tiering_t *tg = NULL;
    float *logits = NULL;
    sp_config cfg;
    sp_config_defaults(&cfg);
    char set[600];
    snprintf(set, sizeof set, "spill.dir=%s", dir);
    const char *sets[] = {set, "tiers.device_budget=1GiB", "tiers.host_budget=104MiB",
                          "tiers.resident_deep_layers=4", "spill.queue_depth=2", "spill.block_size=64KiB",
                          "compression.window=8"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        cr_assert_eq(sp_config_set(&cfg, sets[i], NULL), 0, "%s", sp_last_error());
    if (!(m = sp_model_load(model_fixture_path())))
        goto out;
    if (!(tok = sp_tokenizer_from_gguf(sp_model_gguf(m))))
        goto out;
    int32_t ids[64];
    size_t n = 0;
    const char *text = "The lighthouse keeper counted the ships that passed his island every night, "
                       "and wrote their names in a book that nobody read.";
    if ((rc = sp_tokenizer_encode(tok, text, strlen(text), true, false, ids, 64, &n)) < 0)
        goto out;
    sp_kv_opts kvo;
    sp_kv_opts_from_config(&kvo, &cfg);
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 1;
    cp.kv_opts = &kvo;
    rc = -ENOMEM;
    if (!(c = sp_ctx_new(m, &cp)))
        goto out;
    if ((rc = sp_kv_tiering_attach(&tg, &cfg, m, c, true)) < 0)
        goto out;
    rc = -ENOMEM;
    if (!(logits = malloc((size_t)sp_model_hparams(m)->n_vocab * sizeof *logits)))
        goto out;
    if ((rc = sp_ctx_prefill(c, ids, (int)n, logits, NULL)) < 0 || (rc = sp_kv_tiering_after_prefill(tg, c)) < 0)
        goto out;
    for (int s = 0; s < 2; s++)
        if ((rc = sp_ctx_decode(c, 42 + s, logits)) < 0)
            goto out;
    rc = 0;
out:
    free(logits);
    sp_ctx_free(c);
    sp_kv_tiering_free(tg);
    sp_tokenizer_free(tok);
    sp_model_free(m);
    return rc;
}

/* SQLite-style: count the allocations of a clean run, then make each one fail in turn. Every
 * failure must end the run with a negative code and a message (a failure that the code absorbs,
 * such as an optional cache, may still succeed); none may crash (Criterion reports a crash), and
 * the ASan build of CI reports any leak. The spill dir must stay empty throughout. */
Test(reliability, every_allocation_failure_ends_in_a_message, .timeout = 1800)
{
    char dir[256];
    spill_dir_make(dir, sizeof dir, "sp-afault");
    sp_alloc_fault_set(LONG_MAX);
    cr_assert_eq(small_run(dir), 0, "the clean run fails: %s", sp_last_error());
    long total = sp_alloc_fault_count();
    sp_alloc_fault_set(0);
    cr_assert_gt(total, 20, "only %ld allocations counted: the hook is not on the run's path", total);
    int failed = 0, absorbed = 0;
    for (long k = 1; k <= total; k++) {
        sp_error_clear();
        if (getenv("SP_WALK_VERBOSE"))
            fprintf(stderr, "walk: allocation %ld of %ld fails\n", k, total);
        sp_alloc_fault_set(k);
        int rc = small_run(dir);
        sp_alloc_fault_set(0);
        if (rc == 0) {
            absorbed++;
            continue;
        }
        failed++;
        cr_assert_lt(rc, 0);
        cr_assert(sp_last_error()[0], "allocation %ld of %ld failed the run (%d) without a message", k, total, rc);
        cr_assert_eq(spill_dir_count(dir), 0, "allocation %ld: a spill file was left", k);
    }
    cr_log_info("allocation fault walk: %ld allocations, %d failed the run with a message, %d absorbed",
                total, failed, absorbed);
    fprintf(stderr, "allocation fault walk: %ld allocations, %d failed the run with a message, %d absorbed\n",
            total, failed, absorbed);
    cr_assert_gt(failed, 0);
    spill_dir_remove_checked(dir);
}
