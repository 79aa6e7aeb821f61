/* cmd_inspect.c - `spindle inspect`: model metadata, tensor types and the KV-cache footprint,
 * read from the GGUF header alone (no weights are loaded). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_io.h"
#include "dequant.h"
#include "gguf.h"
#include "sp_error.h"

/* One line per backend kind: available or why not, and which one [runtime] backend picks. */
static int print_backends(const sp_config *cfg)
{
    for (int k = 0; k < SP_BACKEND_KIND_COUNT; k++) {
        const char *why = NULL;
        bool ok = sp_backend_available((sp_backend_kind)k, &why);
        char name[96] = "";
        if (ok) {
            sp_backend_params p = sp_backend_default_params();
            sp_backend_t *be = sp_backend_create((sp_backend_kind)k, &p);
            snprintf(name, sizeof name, "%s", be ? sp_backend_name(be) : sp_last_error());
            sp_backend_free(be);
        }
        printf("%-5s %s%s%s\n", sp_backend_kind_name((sp_backend_kind)k), ok ? "available: " : "not available: ",
               ok ? name : why, "");
    }
    sp_backend_kind pick;
    if (sp_cli_backend(cfg, &pick) < 0)
        return SP_EXIT_FAIL;
    printf("[runtime] backend = %s -> %s\n", cfg->runtime.backend == SP_BACKEND_CHOICE_AUTO ? "auto"
                                              : cfg->runtime.backend == SP_BACKEND_CHOICE_CPU ? "cpu" : "cuda",
           sp_backend_kind_name(pick));
    return SP_EXIT_OK;
}

static void usage(FILE *out)
{
    fputs("usage: spindle inspect [-m MODEL] [--ctx N] [--all-keys] [--tensors] [--topology] [--backends]\n"
          "  --ctx N      context length for the KV footprint (default: the model's)\n"
          "  --all-keys   print every metadata key (arrays summarized)\n"
          "  --tensors    list every tensor with type, shape and bytes\n"
          "  --topology   show NUMA nodes, cores, GPU locality and the placement chosen\n"
          "  --backends   list the compute backends, which are available here and why not\n"
          "               (no model needed)\n",
          out);
}

static int64_t key_i64(const sp_gguf_t *g, const char *arch, const char *suffix, int64_t dflt)
{
    char key[256];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return sp_gguf_get_i64(g, key, &v) == 0 ? v : dflt;
}

static double key_f32(const sp_gguf_t *g, const char *arch, const char *suffix, double dflt)
{
    char key[256];
    float v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    return sp_gguf_get_f32(g, key, &v) == 0 ? v : dflt;
}

static void print_bytes(FILE *out, double b)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        u++;
    }
    fprintf(out, "%.2f %s", b, unit[u]);
}

int sp_cmd_inspect(int argc, char **argv)
{
    sp_cli_common c;
    sp_cli_common_init(&c);
    bool all_keys = false, tensors = false, topology = false, backends = false;
    for (int i = 1; i < argc; i++) {
        int r = sp_cli_common_arg(&c, argc, argv, &i);
        if (r < 0)
            return SP_EXIT_USAGE;
        if (r > 0)
            continue;
        if (!strcmp(argv[i], "--all-keys")) {
            all_keys = true;
        } else if (!strcmp(argv[i], "--tensors")) {
            tensors = true;
        } else if (!strcmp(argv[i], "--topology")) {
            topology = true;
        } else if (!strcmp(argv[i], "--backends")) {
            backends = true;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return SP_EXIT_OK;
        } else {
            sp_cli_error("inspect: unknown option '%s'", argv[i]);
            usage(stderr);
            return SP_EXIT_USAGE;
        }
    }
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }
    if (topology)
        return sp_cli_print_topology(stdout);
    if (backends)
        return print_backends(&c.cfg);
    sp_gguf_t *g = sp_gguf_open(c.cfg.model.path);
    if (!g) {
        sp_cli_error("%s", sp_last_error());
        return SP_EXIT_FAIL;
    }
    char arch[64] = "?", name[256] = "?";
    sp_gguf_str s;
    if (sp_gguf_get_str(g, "general.architecture", &s) == 0)
        snprintf(arch, sizeof arch, "%.*s", (int)s.len, s.ptr);
    if (sp_gguf_get_str(g, "general.name", &s) == 0)
        snprintf(name, sizeof name, "%.*s", (int)s.len, s.ptr);

    printf("file            %s (GGUF v%u, %zu bytes, alignment %" PRIu64 ")\n", sp_gguf_path(g),
           sp_gguf_version(g), sp_gguf_file_size(g), sp_gguf_alignment(g));
    printf("name            %s\narchitecture    %s\n", name, arch);
    int64_t n_layer = key_i64(g, arch, "block_count", 0);
    int64_t n_embd = key_i64(g, arch, "embedding_length", 0);
    int64_t n_head = key_i64(g, arch, "attention.head_count", 0);
    int64_t n_head_kv = key_i64(g, arch, "attention.head_count_kv", n_head);
    int64_t head_dim = key_i64(g, arch, "attention.key_length", n_head ? n_embd / n_head : 0);
    int64_t n_ff = key_i64(g, arch, "feed_forward_length", 0);
    int64_t n_ctx_train = key_i64(g, arch, "context_length", 0);
    printf("layers          %" PRId64 "\nhidden          %" PRId64 "\nheads (q / kv)  %" PRId64
           " / %" PRId64 "\nhead dim        %" PRId64 "\nffn             %" PRId64
           "\ncontext         %" PRId64 "\n",
           n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_ctx_train);
    printf("rope base       %g\nrms norm eps    %g\n", key_f32(g, arch, "rope.freq_base", 10000.0),
           key_f32(g, arch, "attention.layer_norm_rms_epsilon", 1e-5));
    const sp_gguf_tensor *emb = sp_gguf_find_tensor(g, "token_embd.weight");
    if (emb)
        printf("vocab           %" PRId64 "\n", emb->ne[1]);
    printf("tied embeddings %s\n", sp_gguf_find_tensor(g, "output.weight") ? "no" : "yes");

    /* Tensor types: count and bytes per type. */
    int64_t count[64] = {0};
    uint64_t bytes[64] = {0}, total = 0, params = 0;
    for (int64_t i = 0; i < sp_gguf_n_tensors(g); i++) {
        const sp_gguf_tensor *t = sp_gguf_tensor_at(g, i);
        uint32_t ty = t->type < 64 ? t->type : 63;
        count[ty]++;
        bytes[ty] += t->nbytes;
        total += t->nbytes;
        params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        if (tensors)
            printf("  %-40s %-5s [%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] %" PRIu64 " B\n",
                   t->name, sp_ggml_type_name(t->type), t->ne[0], t->ne[1], t->ne[2], t->ne[3], t->nbytes);
    }
    printf("tensors         %" PRId64 " (%.1fM parameters, ", sp_gguf_n_tensors(g), params / 1e6);
    print_bytes(stdout, (double)total);
    printf(")\n");
    for (int ty = 0; ty < 64; ty++)
        if (count[ty]) {
            printf("  %-6s %4" PRId64 " tensors  ", sp_ggml_type_name((uint32_t)ty), count[ty]);
            print_bytes(stdout, (double)bytes[ty]);
            printf("%s\n", sp_dequant_supported((uint32_t)ty) ? "" : "  (unsupported type)");
        }

    /* KV footprint of an fp16 GQA cache: K and V, every layer, every KV head. */
    int64_t ctx = c.cfg.model.n_ctx > 0 ? c.cfg.model.n_ctx : n_ctx_train;
    double per_tok = 2.0 * (double)n_layer * (double)n_head_kv * (double)head_dim * 2.0;
    printf("KV fp16         %.0f B per token; ", per_tok);
    print_bytes(stdout, per_tok * (double)ctx);
    printf(" at %" PRId64 " tokens\n", ctx);

    if (all_keys) {
        printf("metadata (%" PRId64 " keys):\n", sp_gguf_n_kv(g));
        char buf[512];
        for (int64_t i = 0; i < sp_gguf_n_kv(g); i++) {
            sp_gguf_str k = sp_gguf_key_name(g, i);
            sp_gguf_kv_to_string(g, i, buf, sizeof buf);
            printf("  %.*s = %s\n", (int)k.len, k.ptr, buf);
        }
    }
    sp_gguf_close(g);
    return SP_EXIT_OK;
}
