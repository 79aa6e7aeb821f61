/* cmd_run.c - `spindle run`: tokenize a prompt (optionally in the model's chat template), prefill,
 * then decode token by token, streaming the text to stdout and a summary to stderr. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "blas_guard.h"
#include "ctx_tiering.h"
#include "chat.h"
#include "cli.h"
#include "model.h"
#include "sampler.h"
#include "sp_error.h"
#include "tokenizer.h"
#include "sp_time.h"

static void usage(FILE *out)
{
    fputs("usage: spindle run [options] [-p TEXT | -f FILE | < stdin]\n"
          "  -m, --model FILE   GGUF model (default: [model] path)\n"
          "  -p, --prompt TEXT  prompt text\n"
          "  -f, --file FILE    read the prompt from FILE ('-' = stdin)\n"
          "  -n, --n-predict N  tokens to generate (default 128; stops early at end of turn)\n"
          "  --chat             wrap the prompt in the model's chat template (from its vocabulary);\n"
          "                     as in llama.cpp, control-token text in the prompt (<|im_end|>) is parsed\n"
          "                     as that token (with a notice)\n"
          "  --template NAME    chatml | llama3 | none (overrides the detected template)\n"
          "  --system TEXT      system message for --chat\n"
          "  --temp T           sampling temperature (default 0 = greedy)\n"
          "  --top-k K          top-k for sampling (default 40)\n"
          "  --top-p P          top-p for sampling (default 0.95)\n"
          "  --seed S           RNG seed (default [runtime] seed)\n"
          "  -t, --threads N    compute threads (default: all cores)\n"
          "  -c, --ctx N        context length (default: the model's; with compression on, prompt + -n)\n"
          "  --stats            print the per-layer KV cache table (tokens kept, codebook entries, bytes)\n"
          "Exit codes: 0 ok, 1 failure (model, memory, I/O), 2 usage, 3 output lost (stdout closed or full).\n"
          "KV compression comes from [compression] (default policy spindle), e.g.\n"
          "  --set compression.policy=snapkv --set compression.ratio=0.3; policy=full turns it off.\n"
          "  --config FILE, --set section.key=value, --print-config\n",
          out);
}

typedef struct run_opts {
    const char *prompt, *file, *system, *template_name;
    int64_t n_predict;
    bool chat, stats;
    double temp, top_p;
    int64_t top_k;
} run_opts;

/* Progress for long prefills: a bar on a TTY, a line per quarter otherwise, nothing for the first
 * two seconds so short prompts stay quiet. */
typedef struct progress {
    double t0;
    bool tty, shown;
    int last_quarter;
} progress;

static void on_progress(void *user, int done, int total)
{
    progress *p = user;
    double el = sp_now_s() - p->t0;
    if (el < 2.0 || total <= 0)
        return;
    double rate = done / el;
    if (p->tty) {
        fprintf(stderr, "\rprefill %d/%d tokens (%.0f tok/s)  ", done, total, rate);
        p->shown = true;
    } else {
        int q = (int)(4.0 * done / total);
        if (q > p->last_quarter) {
            p->last_quarter = q;
            fprintf(stderr, "spindle: prefill %d/%d tokens (%.0f tok/s)\n", done, total, rate);
        }
    }
    if (done == total && p->shown)
        fputc('\n', stderr);
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : -1;
}

/* "ratio requested ... achieved ..." for the summary and --stats: with target bytes the requested
 * ratio is a true byte ratio, achieved is the measurement at the end of the prompt (and now, with
 * decode tokens, ks->true_ratio); with target tokens it is the token share. */
static void print_ratio_line(FILE *f, const sp_kv_stats *ks)
{
    if (!ks->compressed)
        return;
    if (ks->target == SP_TARGET_BYTES && isfinite(ks->prompt_ratio))
        fprintf(f, "ratio      requested %.3f true bytes, achieved %.4f at the end of the prompt (token share "
                "%.4f, %d compressions), %.4f now\n", ks->ratio_requested, ks->prompt_ratio, ks->knob,
                ks->target_probes, ks->true_ratio);
    else
        fprintf(f, "ratio      requested %.3f as %s, achieved %.4f true bytes now\n", ks->ratio_requested,
                ks->target == SP_TARGET_BYTES ? "true bytes (no search: budget_tokens, or a short prompt)"
                                              : "token share (target = tokens)",
                ks->true_ratio);
}

/* The per-layer table of `--stats` (stdout is the generated text, so this goes to stderr). */
static void print_kv_stats(const sp_kv_stats *ks, const sp_kv_opts *o, const sp_hparams *hp)
{
    FILE *f = stderr;
    fprintf(f, "\n--- KV cache per layer: %s", ks->compressed ? sp_kv_policy_name(o->policy) : "fp16, uncompressed");
    if (ks->compressed)
        fprintf(f, " (allocator %s, ratio %.3g, window %lld, theta_k %.3g, theta_v %.3g, gqa %s)",
                sp_kv_allocator_name(sp_kv_opts_allocator(o)), o->ratio, (long long)o->window, o->theta_k,
                o->theta_v, o->gqa_mode == SP_GQA_KV_HEAD ? "kv_head" : "query_head");
    fprintf(f, "\n%5s %7s %7s %8s %8s %11s %11s %11s %7s %7s\n", "layer", "tokens", "kept", "K ent", "V ent",
            "bytes", "alloc", "fp16", "ratio", "r");
    for (int i = 0; i < ks->n_layer; i++) {
        const sp_kv_layer_stats *l = &ks->layer[i];
        char ke[24] = "-", ve[24] = "-";
        if (l->coded) {
            snprintf(ke, sizeof ke, "%lld", (long long)l->k_entries);
            snprintf(ve, sizeof ve, "%lld", (long long)l->v_entries);
        }
        fprintf(f, "%5d %7lld %7lld %8s %8s %11llu %11llu %11llu %7.3f %7.3f\n", i, (long long)l->tokens,
                (long long)l->kept, ke, ve, (unsigned long long)l->bytes, (unsigned long long)l->bytes_alloc,
                (unsigned long long)l->fp16_bytes, l->true_ratio, l->paper_r);
    }
    fprintf(f, "%5s %7s %7s %8s %8s %11llu %11llu %11llu %7.3f %7.3f\n", "total", "", "", "", "",
            (unsigned long long)ks->bytes, (unsigned long long)ks->bytes_alloc, (unsigned long long)ks->fp16_bytes,
            ks->true_ratio, ks->paper_r);
    fprintf(f, "kept: tokens attention reads, mean over the %d query heads; bytes: what the cache holds (entries, "
            "indices, magnitudes, positions, masks, raw window, tail); alloc: + header/4 KiB padding and tail "
            "capacity;\nratio: true byte ratio vs an fp16 GQA cache (%d KV heads) of the same tokens; r: the "
            "paper's eq. 15, r1*r2*r3, read as stored d-vectors / fp16 GQA d-vectors (indices, magnitudes and "
            "positions not counted)\n",
            hp->n_head, hp->n_kv_head);
    if (ks->compressed)
        fprintf(f, "paper r    %.4f over the fp16 GQA cache (r1*r2*r3, r3 = %d/%d); %.4f over the per-query-head "
                "cache of %d heads (r1*r2, the other reading of eq. 15's denominator)\n",
                ks->paper_r, hp->n_head, hp->n_kv_head, ks->paper_r_mha, hp->n_head);
    print_ratio_line(f, ks);
}

static int parse_args(int argc, char **argv, sp_cli_common *c, run_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int r = sp_cli_common_arg(c, argc, argv, &i);
        if (r < 0)
            return -1;
        if (r > 0)
            continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(o->prompt = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            if (!(o->file = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 0, 1 << 24, &o->n_predict))
                return -1;
        } else if (!strcmp(a, "--chat")) {
            o->chat = true;
        } else if (!strcmp(a, "--stats")) {
            o->stats = true;
        } else if (!strcmp(a, "--template")) {
            if (!(o->template_name = sp_cli_value(argc, argv, &i)))
                return -1;
            if (sp_chat_family_from_name(o->template_name) < 0) {
                sp_cli_error("--template: unknown template '%s' (allowed: chatml, llama3, none)", o->template_name);
                return -1;
            }
        } else if (!strcmp(a, "--system")) {
            if (!(o->system = sp_cli_value(argc, argv, &i)))
                return -1;
        } else if (!strcmp(a, "--temp")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_float(a, v, 0.0, 100.0, &o->temp))
                return -1;
        } else if (!strcmp(a, "--top-k")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_int(a, v, 0, 1 << 30, &o->top_k))
                return -1;
        } else if (!strcmp(a, "--top-p")) {
            if (!(v = sp_cli_value(argc, argv, &i)) || !sp_cli_float(a, v, 0.0, 1.0, &o->top_p))
                return -1;
        } else {
            sp_cli_error("run: unknown option '%s' (see spindle run --help)", a);
            return -1;
        }
    }
    if (o->prompt && o->file) {
        sp_cli_error("run: give either -p or -f, not both");
        return -1;
    }
    return 0;
}

/* Read a prompt file, bounded by what the context can hold: every token covers at most the
 * longest piece of the vocabulary, so more bytes than n_ctx x that cannot fit whatever they say. */
static char *read_prompt(const char *path, int64_t n_ctx, const sp_tokenizer_t *tok)
{
    size_t longest = 1;
    for (int32_t id = 0; id < sp_tokenizer_n_vocab(tok); id++) {
        int l = sp_tokenizer_piece_len(tok, id, true);
        if (l > 0 && (size_t)l > longest)
            longest = (size_t)l;
    }
    char why[192];
    snprintf(why, sizeof why, "more text than a context of %lld tokens can hold (at most %zu bytes a "
             "token); shorten the input or raise -c", (long long)n_ctx, longest);
    return sp_cli_read_file(path, (size_t)n_ctx * longest, why, NULL);
}

/* With --chat the whole rendering is tokenized with special tokens parsed, as llama.cpp's chat
 * does: control-token text typed by the user ("<|im_end|>") becomes that control token. Kept for
 * compatibility, but never silently: name the first such text found. */
static void warn_special_text(const sp_tokenizer_t *tok, const char *text)
{
    for (int32_t id = 0; id < sp_tokenizer_n_vocab(tok); id++) {
        const char *s = sp_tokenizer_is_control(tok, id) ? sp_tokenizer_token_text(tok, id) : NULL;
        if (s && s[0] && strstr(text, s)) {
            sp_notice("--chat: the prompt contains '%s', the text of a control token; it is parsed as "
                      "that token (as llama.cpp does), so it can end or restructure the turn", s);
            return;
        }
    }
}

/* The prompt as it will be tokenized: raw text or the chat rendering. Caller frees. */
static char *build_prompt(const run_opts *o, const sp_config *cfg, const sp_tokenizer_t *tok, int64_t n_ctx,
                          bool *parse_special)
{
    char *text;
    if (o->prompt) {
        text = strdup(o->prompt);
    } else {
        if (!o->file && isatty(STDIN_FILENO)) {
            sp_cli_error("run: no prompt: use -p TEXT, -f FILE, or pipe text on stdin");
            return NULL;
        }
        text = read_prompt(o->file ? o->file : "-", n_ctx, tok);
    }
    if (!text)
        return NULL;
    *parse_special = false;
    if (!o->chat)
        return text;

    int family;
    if (o->template_name)
        family = sp_chat_family_from_name(o->template_name);
    else if (cfg->model.chat_template == SP_CHAT_CHATML)
        family = SP_CHAT_FAMILY_CHATML;
    else if (cfg->model.chat_template == SP_CHAT_LLAMA3)
        family = SP_CHAT_FAMILY_LLAMA3;
    else if (cfg->model.chat_template == SP_CHAT_NONE)
        family = SP_CHAT_FAMILY_NONE;
    else
        family = sp_chat_family_from_name(sp_tokenizer_chat_template(tok));
    if (family <= SP_CHAT_FAMILY_NONE) {
        if (family < 0)
            sp_notice("--chat: the vocabulary implies no known chat template; using the raw prompt");
        return text;
    }
    warn_special_text(tok, text);
    if (o->system)
        warn_special_text(tok, o->system);
    size_t cap = sp_chat_render_size(o->system, text);
    char *chat = malloc(cap);
    if (!chat || sp_chat_render((sp_chat_family)family, o->system, text, chat, cap) < 0) {
        sp_cli_error("run: cannot render the chat prompt: %s", chat ? sp_last_error() : "out of memory");
        free(chat);
        free(text);
        return NULL;
    }
    free(text);
    *parse_special = true;
    return chat;
}

int sp_cmd_run(int argc, char **argv)
{
    sp_cli_common c;
    sp_cli_common_init(&c);
    run_opts o = {.n_predict = 128, .temp = 0.0, .top_k = 40, .top_p = 0.95};
    int r = parse_args(argc, argv, &c, &o);
    if (r)
        return r > 0 ? SP_EXIT_OK : SP_EXIT_USAGE;
    if (c.print_config) {
        sp_config_print(&c.cfg, stdout);
        return SP_EXIT_OK;
    }

    int rc = SP_EXIT_FAIL;
    sp_model_t *model = NULL;
    sp_tokenizer_t *tok = NULL;
    sp_ctx_t *ctx = NULL;
    sp_kv_tiering_t *tiering = NULL;
    sp_sampler_t *smp = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;

    double t_load = sp_now_s();
    if (!(model = sp_model_load(c.cfg.model.path))) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    const sp_hparams *hp = sp_model_hparams(model);
    if (sp_config_validate(&c.cfg, hp->n_layer) < 0) {
        sp_cli_error("%s", sp_last_error());
        rc = SP_EXIT_USAGE;
        goto out;
    }
    if (!(tok = sp_tokenizer_from_gguf(sp_model_gguf(model)))) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    bool parse_special;
    if (!(text = build_prompt(&o, &c.cfg, tok, c.cfg.model.n_ctx > 0 ? c.cfg.model.n_ctx : hp->n_ctx_train,
                              &parse_special)))
        goto out;

    size_t n_ids = 0, cap = strlen(text) + 16;
    if (!(ids = malloc(cap * sizeof *ids))) {
        sp_cli_error("run: out of memory for %zu prompt tokens", cap);
        goto out;
    }
    if (sp_tokenizer_encode(tok, text, strlen(text), true, parse_special, ids, cap, &n_ids) < 0) {
        sp_cli_error("run: tokenizing the prompt failed: %s", sp_last_error());
        goto out;
    }
    if (n_ids == 0) {
        sp_cli_error("run: the prompt is empty");
        rc = SP_EXIT_USAGE;
        goto out;
    }

    sp_ctx_params cp = sp_ctx_default_params();
    cp.n_ctx = (int)c.cfg.model.n_ctx;
    cp.n_threads = sp_cli_threads(&c.cfg);
    cp.numerics = c.cfg.runtime.numerics;
    if (sp_cli_backend(&c.cfg, &cp.backend) < 0) {
        rc = SP_EXIT_USAGE;
        goto out;
    }
    progress prog = {.tty = isatty(STDERR_FILENO), .last_quarter = 0};
    cp.on_progress = on_progress;
    cp.progress_user = &prog;
    int n_ctx = cp.n_ctx > 0 ? cp.n_ctx : hp->n_ctx_train;
    if ((int64_t)n_ids > n_ctx) {
        sp_cli_error("run: the prompt has %zu tokens, more than the context of %d tokens "
                     "(raise it with -c, or shorten the prompt)", n_ids, n_ctx);
        rc = SP_EXIT_USAGE;
        goto out;
    }
    if ((int64_t)n_ids + o.n_predict > n_ctx) {
        int64_t fit = n_ctx - (int64_t)n_ids;
        sp_notice("prompt (%zu tokens) + %" PRId64 " new tokens exceed the context of %d: generating at most %" PRId64,
                  n_ids, o.n_predict, n_ctx, fit);
        o.n_predict = fit;
    }
    sp_kv_opts kvo;
    sp_kv_opts_from_config(&kvo, &c.cfg);
    /* theta in (1, 2] is allowed ("merge nothing"); everything else as the strict check. */
    if (sp_kv_opts_validate_relaxed(&kvo, hp->n_layer, (int64_t)n_ids) < 0) {
        sp_cli_error("%s", sp_last_error());
        rc = SP_EXIT_USAGE;
        goto out;
    }
    bool compress = kvo.policy != SP_POLICY_FULL;
    cp.kv_opts = &kvo;
    /* The decode tails are sized for the rest of the context: a run never needs more than the
     * prompt plus the tokens it generates. */
    if (compress && c.cfg.model.n_ctx == 0)
        cp.n_ctx = (int)((int64_t)n_ids + o.n_predict < hp->n_ctx_train ? (int64_t)n_ids + o.n_predict
                                                                          : hp->n_ctx_train);
    if (!(ctx = sp_ctx_new(model, &cp)) || sp_kv_tiering_attach(&tiering, &c.cfg, model, ctx, compress) < 0) {
        sp_cli_error("%s", sp_last_error());
        goto out;
    }
    sp_sampler_params sp = sp_sampler_default_params();
    sp.temperature = (float)o.temp;
    sp.top_k = (int)o.top_k;
    sp.top_p = (float)o.top_p;
    sp.seed = (uint64_t)c.cfg.runtime.seed;
    if (!(smp = sp_sampler_new(hp->n_vocab, &sp)) || !(logits = malloc((size_t)hp->n_vocab * sizeof *logits))) {
        sp_cli_error("run: %s", smp ? "out of memory for logits" : sp_last_error());
        goto out;
    }
    t_load = sp_now_s() - t_load;

    /* Every big allocation is done: the GEMM work buffers OpenBLAS maps on first use must fit
     * (one per compute thread; the caller is one of them), or it would hang instead of failing. */
    if (sp_blas_guard_headroom(cp.n_threads) < 0) {
        sp_cli_error("run: %s", sp_last_error());
        goto out;
    }
    prog.t0 = sp_now_s();
    if (sp_ctx_prefill(ctx, ids, (int)n_ids, logits, NULL) < 0 || sp_kv_tiering_after_prefill(tiering, ctx) < 0) {
        sp_cli_error("run: prefill failed: %s", sp_last_error());
        goto out;
    }

    sp_tokenizer_stream ts;
    sp_tokenizer_stream_init(&ts);
    char piece[512];
    int64_t n_gen = 0;
    const char *stop = "length";
    for (; n_gen < o.n_predict; n_gen++) {
        int32_t t;
        if (sp_ctx_sample(ctx, smp, logits, &t) < 0) {
            sp_cli_error("run: sampling failed: %s", sp_last_error());
            goto out;
        }
        if (sp_tokenizer_is_eog(tok, t)) {
            stop = "end of turn";
            break;
        }
        int len = sp_tokenizer_stream_put(tok, &ts, t, false, piece, sizeof piece);
        if (len > 0 && !sp_cli_put_out(piece, (size_t)len)) {
            rc = SP_EXIT_OUTPUT; /* nobody reads the rest: stop generating (message printed) */
            goto out;
        }
        /* on a device the logits stay there: sp_ctx_sample reads back one token */
        if (n_gen + 1 < o.n_predict && sp_ctx_decode(ctx, t, sp_ctx_device_resident(ctx) ? NULL : logits) < 0) {
            sp_cli_error("run: decode failed: %s", sp_last_error());
            goto out;
        }
    }
    int tail = sp_tokenizer_stream_flush(&ts, piece, sizeof piece);
    if ((tail > 0 && !sp_cli_put_out(piece, (size_t)tail)) || !sp_cli_put_out("\n", 1)) {
        rc = SP_EXIT_OUTPUT;
        goto out;
    }

    sp_kv_stats ks;
    if (sp_ctx_kv_stats(ctx, &ks) < 0) {
        sp_cli_error("run: %s", sp_last_error());
        goto out;
    }
    if (o.stats)
        print_kv_stats(&ks, &kvo, hp);
    if (sp_kv_tiering_report(tiering, o.stats ? stderr : NULL, c.cfg.runtime.stats_json) < 0)
        sp_cli_error("run: %s", sp_last_error());
    sp_ctx_stats st = sp_ctx_get_stats(ctx);
    double kv_tok = 2.0 * hp->n_layer * hp->n_kv_head * hp->head_dim * 2.0;
    fprintf(stderr,
            "\n--- spindle run: %s\n"
            "model      %s (%s, %d layers, %d/%d heads)\n"
            "threads    %d   load %.2f s\n"
            "prompt     %" PRId64 " tokens, prefill %.2f s = %.1f tok/s\n"
            "generated  %" PRId64 " tokens (%s), decode %.2f s = %.1f tok/s\n"
            "KV cache   %s, %d tokens: %.2f MiB of data (fp16 cache: %.2f MiB, true ratio %.3f); %.2f MiB "
            "allocated for it (table 'alloc': segments + tail capacity, context of %d), %.2f MiB of that "
            "held by the context itself\n"
            "memory     peak RSS %.1f MiB\n",
            o.chat ? "chat" : "raw", c.cfg.model.path, hp->arch_name, hp->n_layer, hp->n_head,
            hp->n_kv_head, cp.n_threads, t_load, st.prefill_tokens, st.prefill_s,
            st.prefill_s > 0 ? st.prefill_tokens / st.prefill_s : 0.0, n_gen, stop, st.decode_s,
            st.decode_s > 0 ? st.decode_tokens / st.decode_s : 0.0,
            ks.compressed ? sp_kv_policy_name(kvo.policy) : "fp16 (uncompressed)", sp_ctx_n_past(ctx),
            ks.bytes / 1048576.0, kv_tok * sp_ctx_n_past(ctx) / 1048576.0, ks.true_ratio,
            ks.bytes_alloc / 1048576.0, sp_ctx_n_ctx(ctx), st.kv_bytes / 1048576.0, peak_rss_kib() / 1024.0);
    print_ratio_line(stderr, &ks);
    if (ks.compressed)
        fprintf(stderr, "compression %.3f s (%.1f%% of prefill): scores prepare + top-k + codebook + segments\n",
                ks.compress_s + ks.scores_s,
                st.prefill_s > 0 ? 100.0 * (ks.compress_s + ks.scores_s) / st.prefill_s : 0.0);
    rc = SP_EXIT_OK;
out:
    free(logits);
    free(ids);
    free(text);
    sp_sampler_free(smp);
    sp_ctx_free(ctx);
    sp_kv_tiering_free(tiering);
    sp_tokenizer_free(tok);
    sp_model_free(model);
    return rc;
}
