/* spindle.c - the public API (spindle.h) over the library's layers: config -> model + tokenizer at
 * open; per generate a fresh context (compressed per [compression], placed per [tiers]/[spill],
 * on the backend [runtime] backend resolves to), prefill, then sample and stream. */
#include "spindle.h"

#include "backend.h"
#include "config.h"
#include "ctx_tiering.h"
#include "kv_policy.h"
#include "model.h"
#include "sampler.h"
#include "sp_error.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct spindle_session {
    spindle_params p;
    sp_config cfg;
    sp_backend_kind backend;
    sp_model_t *model;
    sp_tokenizer_t *tok;
    spindle_stats st;
};

const char *spindle_version(void) { return "0.3.0"; }
const char *spindle_last_error(void) { return sp_last_error(); }

spindle_params spindle_default_params(void)
{
    return (spindle_params){.version = SPINDLE_API_VERSION, .temperature = 0.0f, .top_k = 40, .top_p = 0.95f};
}

/* auto: cuda when built, present and able to run the configuration (sp_config_cpu_only_reason),
 * else the cpu; cuda when asked. */
static sp_backend_kind resolve_backend(const sp_config *cfg, int *rc)
{
    *rc = 0;
    const char *why = NULL;
    if (cfg->runtime.backend == SP_BACKEND_CHOICE_CUDA) {
        if (!sp_backend_available(SP_BACKEND_CUDA, &why))
            *rc = sp_error(ENODEV, "[runtime] backend = cuda: not available here: %s", why);
        return SP_BACKEND_CUDA;
    }
    if (cfg->runtime.backend == SP_BACKEND_CHOICE_CPU)
        return SP_BACKEND_CPU;
    return sp_backend_available(SP_BACKEND_CUDA, &why) && !sp_config_cpu_only_reason(cfg) ? SP_BACKEND_CUDA
                                                                                           : SP_BACKEND_CPU;
}

/* Config (file, then overrides), backend, model and tokenizer of a zeroed session. */
static int session_init(spindle_session *s, const spindle_params *p)
{
    int rc = 0;
    s->p = *p;
    sp_config_defaults(&s->cfg);
    if (p->config_path && (rc = sp_config_load_file(&s->cfg, p->config_path)) < 0)
        return rc;
    for (int i = 0; i < p->n_overrides && rc == 0; i++)
        rc = sp_config_set(&s->cfg, p->overrides[i], "spindle_params.overrides");
    if (rc == 0)
        s->backend = resolve_backend(&s->cfg, &rc);
    const char *path = p->model_path ? p->model_path : s->cfg.model.path;
    if (rc == 0 && !path[0])
        rc = sp_error(EINVAL, "spindle_open: no model: set spindle_params.model_path or [model] path");
    if (rc == 0 && (!(s->model = sp_model_load(path)) || !(s->tok = sp_tokenizer_from_gguf(sp_model_gguf(s->model)))))
        rc = -EINVAL; /* the loader's message stands */
    return rc;
}

spindle_session *spindle_open(const spindle_params *p)
{
    if (!p || p->version != SPINDLE_API_VERSION) {
        sp_error(EINVAL, "spindle_open: params version %u, this library has %u (use spindle_default_params)",
                 p ? p->version : 0u, (unsigned)SPINDLE_API_VERSION);
        return NULL;
    }
    spindle_session *s = calloc(1, sizeof *s);
    if (!s)
        sp_error(ENOMEM, "spindle_open: out of memory");
    else if (session_init(s, p) < 0) {
        spindle_close(s);
        s = NULL;
    }
    return s;
}

void spindle_close(spindle_session *s)
{
    if (!s)
        return;
    sp_tokenizer_free(s->tok);
    sp_model_free(s->model);
    free(s);
}

spindle_stats spindle_get_stats(const spindle_session *s) { return s->st; }

int spindle_generate(spindle_session *s, const char *prompt, size_t len, int n_predict,
                     spindle_text_fn on_text, void *user)
{
    if (!s || !prompt || n_predict < 0)
        return sp_error(EINVAL, "spindle_generate: bad arguments");
    memset(&s->st, 0, sizeof s->st);
    const sp_hparams *hp = sp_model_hparams(s->model);
    int n_ctx = s->cfg.model.n_ctx > 0 ? (int)s->cfg.model.n_ctx : hp->n_ctx_train;
    int32_t *ids = malloc(sizeof *ids * (size_t)n_ctx);
    float *logits = malloc(sizeof *logits * (size_t)hp->n_vocab);
    sp_ctx_t *ctx = NULL;
    sp_kv_tiering_t *tiering = NULL;
    sp_sampler_t *smp = NULL;
    int rc = -ENOMEM, n_gen = 0;
    size_t n_ids = 0;
    if (!ids || !logits) {
        sp_error(ENOMEM, "spindle_generate: out of memory");
        goto out;
    }
    if ((rc = sp_tokenizer_encode(s->tok, prompt, len, true, false, ids, (size_t)n_ctx, &n_ids)) < 0)
        goto out;
    if (n_ids == 0 || (int64_t)n_ids + n_predict > n_ctx) {
        rc = sp_error(n_ids ? ERANGE : EINVAL, "spindle_generate: the prompt has %zu tokens; with %d to generate "
                      "that does not fit the context of %d ([model] n_ctx)", n_ids, n_predict, n_ctx);
        goto out;
    }
    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = (int)n_ids + n_predict + 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cp.n_threads = s->cfg.runtime.threads > 0 ? (int)s->cfg.runtime.threads : (cores > 0 ? (int)cores : 1);
    cp.numerics = s->cfg.runtime.numerics;
    cp.backend = s->backend;
    sp_kv_opts kvo;
    sp_kv_opts_from_config(&kvo, &s->cfg);
    bool compress = kvo.policy != SP_POLICY_FULL;
    if ((rc = sp_kv_opts_validate_relaxed(&kvo, hp->n_layer, (int64_t)n_ids)) < 0)
        goto out;
    cp.kv_opts = &kvo;
    rc = -EINVAL;
    if (!(ctx = sp_ctx_new(s->model, &cp)) || (rc = sp_kv_tiering_attach(&tiering, &s->cfg, s->model, ctx, compress)) < 0)
        goto out;
    sp_sampler_params sp = {.temperature = s->p.temperature, .top_k = s->p.top_k, .top_p = s->p.top_p,
                            .seed = (uint64_t)s->cfg.runtime.seed};
    rc = -EINVAL;
    if (!(smp = sp_sampler_new(hp->n_vocab, &sp)))
        goto out;
    if ((rc = sp_ctx_prefill(ctx, ids, (int)n_ids, logits, NULL)) < 0 ||
        (rc = sp_kv_tiering_after_prefill(tiering, ctx)) < 0)
        goto out;
    sp_tokenizer_stream ts;
    sp_tokenizer_stream_init(&ts);
    char piece[256];
    bool stop = false;
    for (; n_gen < n_predict && !stop; n_gen++) {
        int32_t t;
        if ((rc = sp_ctx_sample(ctx, smp, logits, &t)) < 0)
            goto out;
        if (sp_tokenizer_is_eog(s->tok, t))
            break;
        int n = sp_tokenizer_stream_put(s->tok, &ts, t, false, piece, sizeof piece);
        if (n > 0 && on_text)
            stop = on_text(user, piece, (size_t)n) != 0;
        if (n_gen + 1 < n_predict && !stop &&
            (rc = sp_ctx_decode(ctx, t, sp_ctx_device_resident(ctx) ? NULL : logits)) < 0)
            goto out;
    }
    int n = sp_tokenizer_stream_flush(&ts, piece, sizeof piece);
    if (n > 0 && on_text && !stop)
        on_text(user, piece, (size_t)n);
    sp_ctx_stats st = sp_ctx_get_stats(ctx);
    sp_kv_stats ks;
    s->st = (spindle_stats){.prompt_tokens = (int64_t)n_ids, .generated_tokens = n_gen, .prefill_s = st.prefill_s,
                            .decode_s = st.decode_s,
                            .kv_true_ratio = sp_ctx_kv_stats(ctx, &ks) == 0 ? ks.true_ratio : 1.0};
    rc = n_gen;
out:
    sp_sampler_free(smp);
    sp_ctx_free(ctx);
    sp_kv_tiering_free(tiering);
    free(ids);
    free(logits);
    return rc;
}
