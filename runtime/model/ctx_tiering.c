/* ctx_tiering.c - tiering for a model context: the glue between a context (model/) and the tiered
 * KV provider (tiering/), which knows nothing of models. See ctx_tiering.h. */
#include "ctx_tiering.h"

#include "model.h"
#include "sp_alloc.h"
#include "sp_error.h"
#include "tier_backend.h"
#include "topology.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- tiering for a context -------------------------------------------------------------------- */

struct sp_kv_tiering {
    sp_tiers_t *tiers;
    sp_kv_tiered_t *kvt;
    sp_tier_backend_t *dev_ops;   /* a device backend: the device tier is its memory */
    sp_topology_t *topo;          /* the host tier's NUMA node: the GPU's, else the compute cores' */
    uint64_t weights, scratch, tails;
    bool weights_on_device;
};

sp_kv_tiered_t *sp_kv_tiering_provider_of(sp_kv_tiering_t *tg) { return tg ? tg->kvt : NULL; }

void sp_kv_tiering_free(sp_kv_tiering_t *tg)
{
    if (!tg)
        return;
    sp_kv_tiered_free(tg->kvt);
    sp_tiers_free(tg->tiers);
    sp_tier_backend_free(tg->dev_ops);
    sp_topo_free(tg->topo);
    free(tg);
}

int sp_kv_tiering_attach(sp_kv_tiering_t **out, const sp_config *cfg, const sp_model_t *m,
                         sp_ctx_t *ctx, bool compressing)
{
    *out = NULL;
    if (!compressing || (!cfg->tiers.device_budget && !cfg->tiers.host_budget))
        return 0;
    sp_kv_tiering_t *tg = sp_calloc(1, sizeof *tg);
    if (!tg)
        return sp_error(ENOMEM, "tiers: out of memory");
    sp_tiers_opts to;
    sp_tiers_opts_from_config(&to, cfg);
    int rc = -ENOMEM;
    /* On a device backend the device tier is that device's memory, and the weights live there. */
    tg->weights_on_device = sp_ctx_device_resident(ctx);
    if (tg->weights_on_device) {
        if (!(tg->dev_ops = sp_tier_backend_new(sp_ctx_backend(ctx))))
            goto fail;
        to.device_ops = sp_tier_backend_ops(tg->dev_ops);
    }
    /* host-tier buffers (pinned bounce buffers included) go on the GPU's NUMA node */
    if (!(tg->topo = sp_topo_create(sp_backend_pci_bus_id(sp_ctx_backend(ctx)))))
        sp_notice("tiers: no hwloc topology (%s); host memory is not bound to a NUMA node", sp_last_error());
    to.topo = tg->topo;
    if (!(tg->tiers = sp_tiers_create(&to)))
        goto fail;
    tg->weights = tg->weights_on_device ? sp_ctx_get_stats(ctx).weights_device_bytes
                                        : sp_gguf_file_size(sp_model_gguf(m));
    tg->scratch = sp_ctx_get_stats(ctx).buffer_bytes;
    if ((rc = sp_tiers_reserve(tg->tiers, tg->weights_on_device ? SP_TIER_DEVICE : SP_TIER_HOST, SP_TAG_WEIGHTS,
                               tg->weights)) < 0 ||
        (rc = sp_tiers_reserve(tg->tiers, SP_TIER_DEVICE, SP_TAG_SCRATCH, tg->scratch)) < 0)
        goto fail;
    sp_kv_tiered_opts ko;
    sp_kv_tiered_opts_from_config(&ko, cfg, tg->tiers, sp_model_hparams(m)->n_layer);
    ko.defer_plan = true;
    ko.be = sp_ctx_backend(ctx); /* slot fills on its copy stream, ordered by events */
    rc = -ENOMEM;
    if (!(tg->kvt = sp_kv_tiered_create(&ko)))
        goto fail;
    /* Find a bad spill dir (missing, read-only, full) now, not after a long prefill: the run goes
     * on without the nvme tier, and a later "no tier can take it" names this reason. */
    if (sp_tiers_nvme_probe(tg->tiers) < 0)
        sp_kv_tiered_nvme_disable(tg->kvt, sp_last_error());
    sp_kv_provider p = sp_kv_tiered_provider(tg->kvt);
    if ((rc = sp_ctx_set_kv_provider(ctx, &p)) < 0)
        goto fail;
    *out = tg;
    return 0;
fail:
    sp_kv_tiering_free(tg);
    return rc;
}

int sp_kv_tiering_after_prefill(sp_kv_tiering_t *tg, sp_ctx_t *ctx)
{
    if (!tg || sp_kv_tiered_n_placed(tg->kvt) == 0)
        return 0; /* nothing was compressed into segments: nothing to place */
    /* with a provider the context's KV bytes are its decode tails (and nothing else) */
    uint64_t tails = sp_ctx_get_stats(ctx).kv_bytes;
    if (tails > tg->tails) {
        int rc = sp_tiers_reserve(tg->tiers, SP_TIER_DEVICE, SP_TAG_SCRATCH, tails - tg->tails);
        if (rc < 0) {
            /* The tails are sized once for every token left in the context (decode never
             * allocates), so a short prompt in a long context asks for the most. */
            int left = sp_ctx_n_ctx(ctx) - sp_ctx_n_past(ctx);
            return sp_error(-rc, "decode tails for the %d tokens left in the context (context %d, "
                                 "prompt %d) need %" PRIu64 " bytes on the device: %s; lower the "
                                 "context size (-c / [model] n_ctx) or raise [tiers] device_budget",
                            left, sp_ctx_n_ctx(ctx), sp_ctx_n_past(ctx), tails, sp_last_error());
        }
        tg->tails = tails;
    }
    return sp_kv_tiered_finalize(tg->kvt);
}

int sp_kv_tiering_report(sp_kv_tiering_t *tg, FILE *out, const char *json_path)
{
    if (!tg)
        return 0;
    if (out) {
        if (tg->weights_on_device)
            fprintf(out, "device tier: %.2f MiB weights (uploaded) + %.2f MiB scratch + decode tails charged\n",
                    (double)tg->weights / 1048576.0, (double)(tg->scratch + tg->tails) / 1048576.0);
        else
            fprintf(out, "device tier: %.2f MiB scratch + decode tails charged; host tier: %.2f MiB "
                         "weights (memory-mapped GGUF) charged\n",
                    (double)(tg->scratch + tg->tails) / 1048576.0, (double)tg->weights / 1048576.0);
        if (tg->topo)
            fprintf(out, "host tier: NUMA node %d (%s)\n", sp_topo_chosen_node(tg->topo), sp_topo_reason(tg->topo));
        sp_kv_tiered_print_stats(tg->kvt, out);
    }
    if (json_path && json_path[0]) {
        FILE *f = fopen(json_path, "w");
        if (!f)
            return sp_error(errno, "stats_json: cannot write %s: %s", json_path, strerror(errno));
        fprintf(f, "{\"weights_bytes\":%" PRIu64 ",\"scratch_bytes\":%" PRIu64 ",\"tail_bytes\":%" PRIu64
                   ",\"kv_tiers\":", tg->weights, tg->scratch, tg->tails);
        sp_kv_tiered_stats_json(tg->kvt, f);
        fprintf(f, "}\n");
        if (fclose(f) != 0)
            return sp_error(EIO, "stats_json: writing %s failed", json_path);
    }
    return 0;
}
