/* config.c - the key table and everything it drives: INI parsing (inih), --set overrides,
 * validation, --help-config, printing the effective config and writing configs/default.ini.
 *
 * DESIGN: defaults are stored as text in the table and applied through the same parser as user
 * values, so a default can never be out of its own bounds (a test loads default.ini and compares).
 * Line numbers: the system inih is built without INI_HANDLER_LINENO, so we feed it through
 * ini_parse_stream with our own line reader that counts lines (one reader call = one line) and
 * also checks section headers, which inih reports only implicitly with the next key.
 */
#include "config.h"

#include "sp_error.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model_names.h"

typedef enum { KT_BOOL, KT_INT, KT_FLOAT, KT_SIZE, KT_STRING, KT_ENUM, KT_MASK } key_type;

/* Flags for string keys whose stored value is derived from the text. */
enum { KF_TILDE = 1, KF_TMPDIR = 2, KF_ALIGN4K = 4, KF_MODEL = 8 /* short model names (model_names.h) */ };

typedef struct {
    const char *section, *name;
    key_type type;
    size_t off;                 /* offsetof(sp_config, ...) */
    size_t len;                 /* strings/masks: buffer size */
    int64_t imin, imax;         /* KT_INT */
    double fmin, fmax;          /* KT_FLOAT */
    bool fmin_excl;             /* KT_FLOAT: min is exclusive */
    uint64_t smin, smax;        /* KT_SIZE (0 is always accepted as "unlimited" when zero_ok) */
    bool zero_ok;               /* KT_SIZE/KT_INT: 0 is a sentinel accepted outside [min,max] */
    const char *const *enums;   /* KT_ENUM: NULL-terminated names, index = C enum value */
    unsigned flags;
    const char *def;            /* default, as text */
    const char *help;
} key_def;

static const char *const chat_names[] = {"auto", "chatml", "llama3", "none", NULL};
static const char *const policy_names[] = {"full", "streaming", "h2o", "snapkv", "pyramidkv",
                                           "pyramidinfer", "spindle", "zigzag", NULL};
static const char *const allocator_names[] = {"uniform", "pyramidkv", "spindle-linear", "zigzag",
                                              NULL};
static const char *const pool_names[] = {"max", "avg", NULL};
static const char *const gqa_names[] = {"query_head", "kv_head", NULL};
static const char *const target_names[] = {"bytes", "tokens", NULL};
static const char *const decode_coding_names[] = {"append", "batch", NULL};
static const char *const preset_names[] = {"none", "paper", NULL};
static const char *const entry_names[] = {"first", "centroid", NULL};

/* The SpindleKV paper's settings (DESIGN §4): its ratio is a kept-token share per query head, one
 * observation window of 32 max-pooled with kernel 7, the corrected linear schedule with beta 0.05,
 * theta_K 0.98 / theta_V 0.95 on every layer, GQA "repeat", and decode tokens coded at once. The
 * ratio itself is the user's. */
static const char *const paper_preset[][2] = {
    {"compression.policy", "spindle"},        {"compression.allocator", "spindle-linear"},
    {"compression.target", "tokens"},         {"compression.window", "32"},
    {"compression.pool_kernel", "7"},         {"compression.pool_type", "max"},
    {"compression.divide_by_l_minus_a", "false"}, {"compression.beta", "0.05"},
    {"compression.theta_k", "0.98"},          {"compression.theta_v", "0.95"},
    {"compression.gqa_mode", "query_head"},   {"compression.evict_layers", "all"},
    {"compression.codebook_layers", "all"},   {"compression.codebook", "true"},
    {"compression.decode_window", "0"},       {"compression.decode_coding", "append"},
    {"compression.entry", "first"},           {"compression.code_fallback", "false"},
};
static const char *const order_names[] = {"shallow-first", "deep-first", NULL};
static const char *const direct_names[] = {"auto", "on", "off", NULL};
static const char *const numerics_names[] = {"ggml", "exact", NULL};
static const char *const backend_names[] = {"auto", "cpu", "cuda", NULL};
_Static_assert(SP_BACKEND_CHOICE_AUTO == 0 && SP_BACKEND_CHOICE_CPU == 1 && SP_BACKEND_CHOICE_CUDA == 2,
               "backend_names order");
_Static_assert(SP_NUMERICS_GGML == 0 && SP_NUMERICS_EXACT == 1, "numerics_names order");

#define OFF(f) offsetof(sp_config, f)
#define LEN(f) sizeof(((sp_config *)0)->f)
#define KIB ((uint64_t)1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)

static const key_def keys[] = {
    {"model", "path", KT_STRING, OFF(model.path), LEN(model.path), .flags = KF_TILDE | KF_MODEL,
     .def = "~/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf",
     .help = "GGUF file, or a name from setup.sh --model (smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b: "
             "found in $SPINDLE_CACHE/models, default ~/.cache/spindle); ~/ expands to $HOME"},
    {"model", "n_ctx", KT_INT, OFF(model.n_ctx), 0, .imin = 0, .imax = 1 << 24, .def = "0",
     .help = "context length in tokens; 0 = the model's trained context"},
    {"model", "chat_template", KT_ENUM, OFF(model.chat_template), 0, .enums = chat_names,
     .def = "auto", .help = "chat template; auto = chosen from the model's metadata"},

    {"compression", "preset", KT_ENUM, OFF(compression.preset), 0, .enums = preset_names,
     .def = "none",
     .help = "paper: the SpindleKV paper's exact settings (README: target tokens, window 32, max:7, "
             "beta 0.05, theta 0.98/0.95, query_head, decode_window 0); explicit keys override it"},
    {"compression", "policy", KT_ENUM, OFF(compression.policy), 0, .enums = policy_names,
     .def = "spindle", .help = "KV cache policy"},
    {"compression", "allocator", KT_ENUM, OFF(compression.allocator), 0, .enums = allocator_names,
     .def = "spindle-linear", .help = "per-layer budget allocator"},
    {"compression", "ratio", KT_FLOAT, OFF(compression.ratio), 0, .fmin = 0, .fmax = 1,
     .fmin_excl = true, .def = "0.2",
     .help = "compression ratio in (0,1]; its meaning is set by target"},
    {"compression", "target", KT_ENUM, OFF(compression.target), 0, .enums = target_names,
     .def = "bytes",
     .help = "bytes: ratio = true byte ratio at the end of the prompt (+-0.01); tokens: kept "
             "token share per query head (the papers' r)"},
    {"compression", "budget_tokens", KT_INT, OFF(compression.budget_tokens), 0, .imin = 0,
     .imax = 1 << 24, .def = "0", .help = "tokens kept per layer; 0 = derive from ratio"},
    {"compression", "window", KT_INT, OFF(compression.window), 0, .imin = 1, .imax = 8192,
     .def = "32", .help = "observation window l_w (tokens, always kept)"},
    {"compression", "pool_kernel", KT_INT, OFF(compression.pool_kernel), 0, .imin = 1, .imax = 255,
     .def = "7", .help = "odd 1-D pooling kernel over the window scores (1 = no pooling)"},
    {"compression", "pool_type", KT_ENUM, OFF(compression.pool_type), 0, .enums = pool_names,
     .def = "max", .help = "pooling type"},
    {"compression", "divide_by_l_minus_a", KT_BOOL, OFF(compression.divide_by_l_minus_a), 0,
     .def = "false", .help = "divide the window scores by (l - a) as the paper's eq. 2 prints"},
    {"compression", "beta", KT_FLOAT, OFF(compression.beta), 0, .fmin = 0, .fmax = 1,
     .def = "0.05", .help = "SpindleKV beta: deepest layer's share of the context"},
    {"compression", "theta_k", KT_FLOAT, OFF(compression.theta_k), 0, .fmin = -1, .fmax = 2,
     .def = "0.98", .help = "codebook cosine threshold for keys (strict >; > 1 disables sharing)"},
    {"compression", "theta_v", KT_FLOAT, OFF(compression.theta_v), 0, .fmin = -1, .fmax = 2,
     .def = "0.95", .help = "codebook cosine threshold for values (strict >; > 1 disables sharing)"},
    {"compression", "gqa_mode", KT_ENUM, OFF(compression.gqa_mode), 0, .enums = gqa_names,
     .def = "query_head", .help = "query_head: each query head picks its tokens (the paper's \"repeat\"); kv_head: "
             "one pick per group from the group-mean score (the paper's \"w/o repeat\", eq. 3)"},
    {"compression", "evict_layers", KT_MASK, OFF(compression.evict_layers),
     LEN(compression.evict_layers), .def = "all",
     .help = "layers that evict: all, none, or a list like 0-3,7,20-"},
    {"compression", "codebook_layers", KT_MASK, OFF(compression.codebook_layers),
     LEN(compression.codebook_layers), .def = "all",
     .help = "layers that use the codebook: all, none, or a list like 0-3,7,20-"},
    {"compression", "codebook", KT_BOOL, OFF(compression.codebook), 0, .def = "true",
     .help = "codebook replacement stage on/off"},
    {"compression", "code_fallback", KT_BOOL, OFF(compression.code_fallback), 0, .def = "true",
     .help = "a coded layer whose segment would not be smaller than its kept tokens stored raw fp16 is "
             "stored raw (lossless and never larger; beyond the paper, which codes every layer)"},
    {"compression", "decode_window", KT_INT, OFF(compression.decode_window), 0, .imin = 0,
     .imax = 1 << 20, .def = "0",
     .help = "coded layers: the last N decode tokens stay raw, older ones are coded as they leave "
             "(0 = coded at once, as the paper; other layers and policies keep decode tokens raw)"},
    {"compression", "entry", KT_ENUM, OFF(compression.entry), 0, .enums = entry_names,
     .def = "first",
     .help = "codebook entry of a merged group: first = the greedy pick's own direction (the "
             "paper); centroid = the members' normalized mean direction (beyond the paper)"},
    {"compression", "decode_coding", KT_ENUM, OFF(compression.decode_coding), 0,
     .enums = decode_coding_names, .def = "append",
     .help = "append: a decode token leaving decode_window is coded alone; batch: they are coded "
             "decode_window at a time by Algorithm 1 (the paper's \"repeat the process\"; needs "
             "decode_window >= 1)"},
    {"compression", "sinks", KT_INT, OFF(compression.sinks), 0, .imin = 0, .imax = 1024,
     .def = "4", .help = "attention-sink tokens kept by streaming and pyramidinfer"},
    {"compression", "pyramidkv_beta", KT_INT, OFF(compression.pyramidkv_beta), 0, .imin = 1,
     .imax = 1000, .def = "20", .help = "PyramidKV beta: min budget = (B - w) / beta"},
    {"compression", "zigzag_tau", KT_FLOAT, OFF(compression.zigzag_tau), 0, .fmin = 0, .fmax = 1,
     .fmin_excl = true, .def = "0.9", .help = "ZigZagKV attention-mass threshold tau"},

    {"tiers", "device_budget", KT_SIZE, OFF(tiers.device_budget), 0, .smin = 1 * MIB,
     .smax = 1ull << 50, .zero_ok = true, .def = "0",
     .help = "device tier byte budget (weights, scratch, KV); 0 = unlimited"},
    {"tiers", "host_budget", KT_SIZE, OFF(tiers.host_budget), 0, .smin = 1 * MIB,
     .smax = 1ull << 50, .zero_ok = true, .def = "0",
     .help = "pinned host tier byte budget; 0 = unlimited"},
    {"tiers", "nvme_budget", KT_SIZE, OFF(tiers.nvme_budget), 0, .smin = 1 * MIB,
     .smax = 1ull << 60, .zero_ok = true, .def = "0",
     .help = "NVMe spill byte budget; 0 = unlimited (bounded by the file system)"},
    {"tiers", "resident_deep_layers", KT_INT, OFF(tiers.resident_deep_layers), 0, .imin = 0,
     .imax = 4096, .def = "8", .help = "deepest layers whose segments are pinned to the device"},
    {"tiers", "numa_bind", KT_BOOL, OFF(tiers.numa_bind), 0, .def = "true",
     .help = "bind host memory and worker threads to the NUMA node near the GPU / compute threads"},

    {"spill", "order", KT_ENUM, OFF(spill.order), 0, .enums = order_names, .def = "shallow-first",
     .help = "which layers leave the device first"},
    {"spill", "dir", KT_STRING, OFF(spill.dir), LEN(spill.dir), .flags = KF_TMPDIR | KF_TILDE,
     .def = "", .help = "directory for spill files; empty = $TMPDIR, else /tmp"},
    {"spill", "direct_io", KT_ENUM, OFF(spill.direct_io), 0, .enums = direct_names, .def = "auto",
     .help = "O_DIRECT for spill files: auto = probe and fall back, on = required, off = buffered"},
    {"spill", "queue_depth", KT_INT, OFF(spill.queue_depth), 0, .imin = 1, .imax = 256,
     .def = "32", .help = "io_uring queue depth (requests in flight)"},
    {"spill", "block_size", KT_SIZE, OFF(spill.block_size), 0, .smin = 4 * KIB, .smax = 16 * MIB,
     .flags = KF_ALIGN4K, .def = "1MiB", .help = "bytes per I/O request (multiple of 4 KiB)"},
    {"spill", "prefetch_depth", KT_INT, OFF(spill.prefetch_depth), 0, .imin = 0, .imax = 16,
     .def = "2", .help = "layers fetched ahead of the one computing; 0 = synchronous"},
    {"spill", "verify_checksums", KT_BOOL, OFF(spill.verify_checksums), 0, .def = "true",
     .help = "verify each spilled segment's XXH3-64 checksum on read"},
    {"spill", "register_buffers", KT_BOOL, OFF(spill.register_buffers), 0, .def = "true",
     .help = "use io_uring registered buffers and files (fixed reads/writes)"},

    {"runtime", "backend", KT_ENUM, OFF(runtime.backend), 0, .enums = backend_names, .def = "auto",
     .help = "where the model computes: auto = cuda when this build has it and a device is usable, else "
             "cpu (said once on stderr); `spindle inspect --backends` lists what is available"},
    {"runtime", "threads", KT_INT, OFF(runtime.threads), 0, .imin = 0, .imax = 4096, .def = "0",
     .help = "compute threads; 0 = all cores"},
    {"runtime", "numerics", KT_ENUM, OFF(runtime.numerics), 0, .enums = numerics_names, .def = "ggml",
     .help = "forward-pass arithmetic: ggml = llama.cpp's CPU backend (8-bit activations, fp16 attention, "
             "same summation order); exact = fp32 on the dequantized weights"},
    {"runtime", "seed", KT_INT, OFF(runtime.seed), 0, .imin = 0, .imax = INT64_MAX, .def = "42",
     .help = "random seed (sampling, synthetic data)"},
    {"runtime", "stats_json", KT_STRING, OFF(runtime.stats_json), LEN(runtime.stats_json),
     .flags = KF_TILDE, .def = "", .help = "write run statistics as JSON to this path; empty = off"},
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))
_Static_assert(sizeof keys / sizeof keys[0] <= SP_CONFIG_MAX_KEYS, "origin[] too small");

static const char *const sections[] = {"model", "compression", "tiers", "spill", "runtime"};
#define N_SECTIONS ((int)(sizeof sections / sizeof sections[0]))

int sp_config_key_count(void) { return N_KEYS; }

const char *sp_config_key_name(int i, char *buf, size_t len)
{
    if (i < 0 || i >= N_KEYS || !buf || len == 0)
        return NULL;
    snprintf(buf, len, "%s.%s", keys[i].section, keys[i].name);
    return buf;
}

const char *sp_config_cpu_only_reason(const sp_config *cfg)
{
    if (cfg->compression.policy != SP_POLICY_FULL && cfg->compression.codebook && cfg->compression.decode_window > 0)
        return "[compression] decode_window > 0 (a raw decode window of coded layers) is coded on the cpu only";
    return NULL;
}

const char *sp_config_policy_name(sp_policy_kind p)
{
    return (unsigned)p < sizeof policy_names / sizeof *policy_names - 1 ? policy_names[p] : "?";
}

const char *sp_config_allocator_name(sp_allocator_kind a)
{
    return (unsigned)a < sizeof allocator_names / sizeof *allocator_names - 1 ? allocator_names[a]
                                                                            : "?";
}

/* ---- value parsers (each returns 0 or -errno and a reason) ---- */

static void trim_copy(char *dst, size_t cap, const char *src)
{
    while (*src && isspace((unsigned char)*src))
        src++;
    size_t n = strlen(src);
    while (n > 0 && isspace((unsigned char)src[n - 1]))
        n--;
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int sp_config_parse_size(const char *text, uint64_t *out)
{
    static const struct { const char *unit; uint64_t mul; } units[] = {
        {"", 1},          {"b", 1},          {"kib", KIB},   {"mib", MIB},       {"gib", GIB},
        {"tib", GIB * KIB}, {"kb", 1000},    {"mb", 1000000}, {"gb", 1000000000}, {"tb", 1000000000000ull},
        {"k", KIB},       {"m", MIB},        {"g", GIB},
    };
    char buf[64];
    if (!text || strlen(text) >= sizeof buf)
        return -EINVAL;
    trim_copy(buf, sizeof buf, text);
    if (!isdigit((unsigned char)buf[0]))
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno == ERANGE)
        return -ERANGE;
    while (*end == ' ' || *end == '\t')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            if (units[i].mul > 1 && v > UINT64_MAX / units[i].mul)
                return -ERANGE;
            *out = (uint64_t)v * units[i].mul;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const t[] = {"true", "yes", "on", "1"}, *const f[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, t[i]) == 0) { *out = true; return 0; }
        if (strcasecmp(s, f[i]) == 0) { *out = false; return 0; }
    }
    return -EINVAL;
}

/* Mask syntax check; when n_layers > 0 also fills out[] and range-checks. */
static int mask_parse(const char *mask, int n_layers, bool *out, char *why, size_t why_len)
{
    if (out)
        for (int i = 0; i < n_layers; i++)
            out[i] = false;
    if (strcasecmp(mask, "all") == 0) {
        if (out)
            for (int i = 0; i < n_layers; i++)
                out[i] = true;
        return 0;
    }
    if (strcasecmp(mask, "none") == 0)
        return 0;
    const char *p = mask;
    if (!*p) {
        snprintf(why, why_len, "empty layer mask");
        return -EINVAL;
    }
    for (;;) {
        while (*p == ' ')
            p++;
        if (!isdigit((unsigned char)*p)) {
            snprintf(why, why_len, "expected a layer number at '%.16s'", p);
            return -EINVAL;
        }
        char *end;
        long a = strtol(p, &end, 10), b = a;
        if (a > 100000) {
            snprintf(why, why_len, "layer %ld out of range", a);
            return -ERANGE;
        }
        p = end;
        if (*p == '-') {
            p++;
            if (isdigit((unsigned char)*p)) {
                b = strtol(p, &end, 10);
                if (b > 100000 || b < a) {
                    snprintf(why, why_len, "bad layer range %ld-%ld", a, b);
                    return -EINVAL;
                }
                p = end;
            } else {
                b = n_layers > 0 ? n_layers - 1 : 100000; /* "a-" runs to the last layer */
            }
        }
        if (n_layers > 0) {
            if (a >= n_layers || (b >= n_layers && b != 100000)) {
                snprintf(why, why_len, "layer %ld >= number of layers %d", b >= n_layers ? b : a,
                         n_layers);
                return -ERANGE;
            }
            if (out)
                for (long i = a; i <= b && i < n_layers; i++)
                    out[i] = true;
        }
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return 0;
        if (*p != ',') {
            snprintf(why, why_len, "unexpected '%c'", *p);
            return -EINVAL;
        }
        p++;
    }
}

int sp_config_mask_expand(const char *mask, int n_layers, bool *out)
{
    char why[128];
    if (!mask || n_layers <= 0 || !out)
        return sp_error(EINVAL, "layer mask: bad arguments");
    int rc = mask_parse(mask, n_layers, out, why, sizeof why);
    if (rc < 0)
        return sp_error(-rc, "layer mask '%s': %s", mask, why);
    return 0;
}

static void allowed_text(const key_def *k, char *buf, size_t len)
{
    switch (k->type) {
    case KT_BOOL:
        snprintf(buf, len, "true, false (also yes/no, on/off, 1/0)");
        break;
    case KT_INT:
        if (k->imax == INT64_MAX)
            snprintf(buf, len, "integer >= %" PRId64, k->imin);
        else
            snprintf(buf, len, "integer in [%" PRId64 ", %" PRId64 "]", k->imin, k->imax);
        break;
    case KT_FLOAT:
        snprintf(buf, len, "number in %c%g, %g]", k->fmin_excl ? '(' : '[', k->fmin, k->fmax);
        break;
    case KT_SIZE: {
        char lo[32], hi[32];
        uint64_t v[2] = {k->smin, k->smax};
        char *o[2] = {lo, hi};
        for (int i = 0; i < 2; i++) {
            if (v[i] % GIB == 0) snprintf(o[i], 32, "%" PRIu64 "GiB", v[i] / GIB);
            else if (v[i] % MIB == 0) snprintf(o[i], 32, "%" PRIu64 "MiB", v[i] / MIB);
            else if (v[i] % KIB == 0) snprintf(o[i], 32, "%" PRIu64 "KiB", v[i] / KIB);
            else snprintf(o[i], 32, "%" PRIu64, v[i]);
        }
        snprintf(buf, len, "size in [%s, %s]%s%s, units B KiB MiB GiB TiB KB MB GB TB", lo, hi,
                 k->zero_ok ? " or 0" : "", (k->flags & KF_ALIGN4K) ? ", multiple of 4KiB" : "");
        break;
    }
    case KT_STRING:
        snprintf(buf, len, "any text");
        break;
    case KT_ENUM: {
        size_t n = 0;
        buf[0] = '\0';
        for (int i = 0; k->enums[i]; i++)
            n += snprintf(buf + n, n < len ? len - n : 0, "%s%s", i ? "|" : "", k->enums[i]);
        break;
    }
    case KT_MASK:
        snprintf(buf, len, "all, none, or layers like 0-3,7,20-");
        break;
    }
}

static const key_def *find_key(const char *section, const char *name)
{
    for (int i = 0; i < N_KEYS; i++)
        if (strcasecmp(keys[i].section, section) == 0 && strcasecmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static bool known_section(const char *s)
{
    for (int i = 0; i < N_SECTIONS; i++)
        if (strcasecmp(sections[i], s) == 0)
            return true;
    return false;
}

static int key_error(const char *origin, const char *section, const char *name, const char *value,
                     int err, const char *reason, const key_def *k)
{
    char allowed[512];
    if (k)
        allowed_text(k, allowed, sizeof allowed);
    return sp_error(err, "%s: [%s] %s = %s: %s; allowed: %s", origin, section, name, value, reason,
                    k ? allowed : "?");
}

/* Parse `value` for key k and store it in cfg. */
static int apply_preset(sp_config *cfg, sp_preset p, const char *origin);

static int set_value(sp_config *cfg, const key_def *k, const char *raw, const char *origin)
{
    char value[SP_CONFIG_PATH_MAX];
    char why[160] = "";
    if (strlen(raw) >= sizeof value)
        return key_error(origin, k->section, k->name, "(too long)", EINVAL, "value too long", k);
    trim_copy(value, sizeof value, raw);
    char *base = (char *)cfg + k->off;
    switch (k->type) {
    case KT_BOOL: {
        bool b;
        if (parse_bool(value, &b) < 0)
            return key_error(origin, k->section, k->name, value, EINVAL, "not a boolean", k);
        *(bool *)base = b;
        break;
    }
    case KT_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (end == value || *end != '\0')
            return key_error(origin, k->section, k->name, value, EINVAL, "not an integer", k);
        if (errno == ERANGE || v < k->imin || v > k->imax)
            return key_error(origin, k->section, k->name, value, ERANGE, "out of range", k);
        *(int64_t *)base = v;
        break;
    }
    case KT_FLOAT: {
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end != '\0' || !isfinite(v))
            return key_error(origin, k->section, k->name, value, EINVAL, "not a finite number", k);
        if (v > k->fmax || v < k->fmin || (k->fmin_excl && v == k->fmin))
            return key_error(origin, k->section, k->name, value, ERANGE, "out of range", k);
        *(double *)base = v;
        break;
    }
    case KT_SIZE: {
        uint64_t v;
        int rc = sp_config_parse_size(value, &v);
        if (rc == -EINVAL)
            return key_error(origin, k->section, k->name, value, EINVAL, "not a size", k);
        if (rc < 0 || (!(k->zero_ok && v == 0) && (v < k->smin || v > k->smax)))
            return key_error(origin, k->section, k->name, value, ERANGE, "out of range", k);
        if ((k->flags & KF_ALIGN4K) && v % 4096 != 0)
            return key_error(origin, k->section, k->name, value, EINVAL, "not a multiple of 4KiB", k);
        *(uint64_t *)base = v;
        break;
    }
    case KT_STRING: {
        char out[SP_CONFIG_PATH_MAX];
        const char *src = value;
        if ((k->flags & KF_TMPDIR) && value[0] == '\0') {
            const char *t = getenv("TMPDIR");
            src = (t && *t) ? t : "/tmp";
        }
        int named = (k->flags & KF_MODEL) ? sp_model_name_resolve(src, out, k->len) : 0;
        if (named < 0) {
            char why_named[256];
            snprintf(why_named, sizeof why_named, "%s", sp_last_error());
            return key_error(origin, k->section, k->name, value, -named, why_named, k);
        }
        /* named == 1: out already holds the cached file's path */
        if (!named && (k->flags & KF_TILDE) && src[0] == '~' && (src[1] == '/' || src[1] == '\0')) {
            const char *home = getenv("HOME");
            if (!home || !*home)
                return key_error(origin, k->section, k->name, value, EINVAL,
                                 "'~' used but $HOME is not set", k);
            if ((size_t)snprintf(out, sizeof out, "%s%s", home, src + 1) >= k->len)
                return key_error(origin, k->section, k->name, value, ENAMETOOLONG, "path too long", k);
        } else if (!named) {
            if (strlen(src) >= k->len)
                return key_error(origin, k->section, k->name, value, ENAMETOOLONG, "too long", k);
            snprintf(out, sizeof out, "%s", src);
        }
        memcpy(base, out, strlen(out) + 1);
        break;
    }
    case KT_ENUM: {
        int found = -1;
        for (int i = 0; k->enums[i]; i++)
            if (strcasecmp(value, k->enums[i]) == 0)
                found = i;
        if (found < 0)
            return key_error(origin, k->section, k->name, value, EINVAL, "unknown value", k);
        *(int *)base = found;
        break;
    }
    case KT_MASK: {
        int rc = mask_parse(value, 0, NULL, why, sizeof why);
        if (rc < 0)
            return key_error(origin, k->section, k->name, value, -rc, why, k);
        if (strlen(value) >= k->len)
            return key_error(origin, k->section, k->name, value, ENAMETOOLONG, "too long", k);
        memcpy(base, value, strlen(value) + 1);
        break;
    }
    }
    snprintf(cfg->origin[k - keys], SP_CONFIG_ORIGIN_MAX, "%s", origin);
    if (k->off == OFF(compression.preset) && cfg->compression.preset == SP_PRESET_PAPER)
        return apply_preset(cfg, SP_PRESET_PAPER, origin);
    return 0;
}

const char *sp_config_preset_key(sp_preset p, int i, const char **value)
{
    int n = p == SP_PRESET_PAPER ? (int)(sizeof paper_preset / sizeof paper_preset[0]) : 0;
    if (i < 0 || i >= n)
        return NULL;
    if (value)
        *value = paper_preset[i][1];
    return paper_preset[i][0];
}

/* Set the preset's keys that still hold their defaults (explicit keys win, in any order). */
static int apply_preset(sp_config *cfg, sp_preset p, const char *origin)
{
    char why[SP_CONFIG_ORIGIN_MAX];
    snprintf(why, sizeof why, "preset paper (%s)", origin);
    const char *value, *name;
    for (int i = 0; (name = sp_config_preset_key(p, i, &value)) != NULL; i++) {
        const char *dot = strchr(name, '.');
        char section[32];
        snprintf(section, sizeof section, "%.*s", (int)(dot - name), name);
        const key_def *k = find_key(section, dot + 1);
        if (!k)
            return sp_error(EINVAL, "config preset: unknown key %s", name);
        const char *o = cfg->origin[k - keys];
        if (o[0] && strcmp(o, "default") != 0)
            continue;
        int rc = set_value(cfg, k, value, why);
        if (rc < 0)
            return rc;
    }
    return 0;
}

void sp_config_defaults(sp_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (int i = 0; i < N_KEYS; i++)
        (void)set_value(cfg, &keys[i], keys[i].def, "default"); /* the table test covers failures */
}

/* ---- INI loading ---- */

typedef struct {
    sp_config *cfg;
    const char *name;   /* file name for messages */
    const char *text;   /* string source (or NULL) */
    size_t pos;
    FILE *fp;           /* file source (or NULL) */
    int line;           /* line number of the last line handed to inih */
    int err;            /* first error (negative errno), 0 if none */
    size_t bytes;       /* bytes read so far (bounded by SP_CONFIG_FILE_MAX) */
    int key_line[N_KEYS]; /* line where each key was last set in this file, 0 = not yet */
} load_ctx;

static void check_section_line(load_ctx *c, const char *line)
{
    while (*line == ' ' || *line == '\t')
        line++;
    if (*line != '[' || c->err)
        return;
    const char *close = strchr(line, ']');
    if (!close)
        return; /* inih reports the syntax error */
    char sec[128];
    size_t n = (size_t)(close - line - 1);
    if (n >= sizeof sec)
        n = sizeof sec - 1;
    memcpy(sec, line + 1, n);
    sec[n] = '\0';
    char t[128];
    trim_copy(t, sizeof t, sec);
    if (!known_section(t))
        c->err = sp_error(EINVAL, "%s:%d: [%s]: unknown section; allowed: model, compression, "
                                  "tiers, spill, runtime", c->name, c->line, t);
}

/* fgets-style reader: returns exactly one line per call so c->line matches inih's count. */
static char *reader(char *str, int num, void *stream)
{
    load_ctx *c = stream;
    int n = 0;
    bool got = false, nl = false;
    for (;;) {
        int ch;
        if (c->fp) {
            ch = fgetc(c->fp);
            if (ch == EOF) {
                if (ferror(c->fp) && !c->err)
                    c->err = sp_error(EIO, "%s:%d: read error: %s", c->name, c->line + 1,
                                      strerror(errno ? errno : EIO));
                break;
            }
            if (++c->bytes > SP_CONFIG_FILE_MAX && !c->err) {
                c->err = sp_error(EFBIG, "%s: longer than %d bytes: not a config file", c->name,
                                  SP_CONFIG_FILE_MAX);
                break;
            }
        } else {
            ch = (unsigned char)c->text[c->pos];
            if (ch == 0)
                break;
            c->pos++;
        }
        got = true;
        if (ch == '\n') {
            nl = true;
            break;
        }
        if (ch == '\0' && !c->err) {
            c->err = sp_error(EINVAL, "%s:%d: NUL byte: not a text config file", c->name, c->line + 1);
            break;
        }
        if (n < num - 2) {
            str[n++] = (char)ch;
        } else {
            /* Stop here: reading on to the end of an endless line would never return. */
            if (!c->err)
                c->err = sp_error(EINVAL, "%s:%d: line longer than %d characters", c->name,
                                  c->line + 1, num - 2);
            break;
        }
    }
    if (c->err)
        return NULL; /* inih stops at "end of input"; load() reports c->err */
    if (!got)
        return NULL;
    if (nl)
        str[n++] = '\n';
    str[n] = '\0';
    c->line++;
    check_section_line(c, str);
    return str;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    load_ctx *c = user;
    if (c->err)
        return 0;
    char origin[SP_CONFIG_ORIGIN_MAX];
    snprintf(origin, sizeof origin, "%s:%d", c->name, c->line);
    if (section[0] == '\0') {
        c->err = sp_error(EINVAL, "%s: %s = %s: key outside any section; allowed sections: model, "
                                  "compression, tiers, spill, runtime", origin, name, value);
        return 0;
    }
    if (!known_section(section))
        return 0; /* already reported by check_section_line */
    const key_def *k = find_key(section, name);
    if (!k) {
        char allowed[512];
        size_t n = 0;
        allowed[0] = '\0';
        for (int i = 0; i < N_KEYS; i++)
            if (strcasecmp(keys[i].section, section) == 0)
                n += snprintf(allowed + n, n < sizeof allowed ? sizeof allowed - n : 0, "%s%s",
                              n ? ", " : "", keys[i].name);
        c->err = sp_error(EINVAL, "%s: [%s] %s = %s: unknown key; allowed: %s", origin, section,
                          name, value, allowed);
        return 0;
    }
    int rc = set_value(c->cfg, k, value, origin);
    if (rc < 0) {
        c->err = rc;
        return 0;
    }
    int ki = (int)(k - keys);
    if (c->key_line[ki])
        sp_notice("%s:%d: [%s] %s is set again (first on line %d); the later value '%s' is used",
                  c->name, c->line, k->section, k->name, c->key_line[ki], value);
    c->key_line[ki] = c->line;
    return 1;
}

static int load(load_ctx *c)
{
    int rc = ini_parse_stream(reader, c, handler, c);
    if (c->err)
        return c->err;
    if (rc > 0)
        return sp_error(EINVAL, "%s:%d: syntax error (expected [section] or key = value)", c->name, rc);
    if (rc < 0)
        return sp_error(ENOMEM, "%s: inih failed (%d)", c->name, rc);
    return 0;
}

int sp_config_load_file(sp_config *cfg, const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return sp_error(errno, "%s: cannot open config file: %s", path, strerror(errno));
    /* A directory opens and reads as empty, /dev/zero never ends: only regular files are configs. */
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        int err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        fclose(fp);
        return sp_error(err, "%s: not a regular file (%s): give --config an INI file such as "
                             "configs/default.ini", path, S_ISDIR(st.st_mode) ? "a directory" : "a device, pipe or socket");
    }
    load_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        fclose(fp);
        return sp_error(ENOMEM, "%s: out of memory", path);
    }
    *c = (load_ctx){.cfg = cfg, .name = path, .fp = fp};
    int rc = load(c);
    free(c);
    fclose(fp);
    return rc;
}

int sp_config_load_string(sp_config *cfg, const char *text, const char *name)
{
    load_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return sp_error(ENOMEM, "%s: out of memory", name ? name : "<string>");
    *c = (load_ctx){.cfg = cfg, .name = name ? name : "<string>", .text = text};
    int rc = load(c);
    free(c);
    return rc;
}

int sp_config_set(sp_config *cfg, const char *assignment, const char *origin)
{
    if (!origin)
        origin = "--set";
    const char *eq = strchr(assignment, '=');
    const char *dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq)
        return sp_error(EINVAL, "%s: '%s': expected section.key=value", origin, assignment);
    char section[64], name[64];
    size_t sl = (size_t)(dot - assignment), nl = (size_t)(eq - dot - 1);
    if (sl >= sizeof section || nl >= sizeof name)
        return sp_error(EINVAL, "%s: '%s': section or key too long", origin, assignment);
    memcpy(section, assignment, sl);
    section[sl] = '\0';
    memcpy(name, dot + 1, nl);
    name[nl] = '\0';
    char s[64], n[64];
    trim_copy(s, sizeof s, section);
    trim_copy(n, sizeof n, name);
    if (!known_section(s))
        return sp_error(EINVAL, "%s: [%s]: unknown section; allowed: model, compression, tiers, "
                                "spill, runtime", origin, s);
    const key_def *k = find_key(s, n);
    if (!k) {
        char allowed[512];
        size_t off = 0;
        allowed[0] = '\0';
        for (int i = 0; i < N_KEYS; i++)
            if (strcasecmp(keys[i].section, s) == 0)
                off += snprintf(allowed + off, off < sizeof allowed ? sizeof allowed - off : 0,
                                "%s%s", off ? ", " : "", keys[i].name);
        return sp_error(EINVAL, "%s: [%s] %s = %s: unknown key; allowed: %s", origin, s, n, eq + 1,
                        allowed);
    }
    return set_value(cfg, k, eq + 1, origin);
}

/* ---- validation ---- */

int sp_config_validate(const sp_config *cfg, int n_layers)
{
    const typeof(cfg->compression) *c = &cfg->compression;
    if (c->pool_kernel % 2 == 0)
        return sp_error(EINVAL, "[compression] pool_kernel = %" PRId64 ": must be odd (a centred "
                                "'same' pooling window)", c->pool_kernel);
    if (c->budget_tokens > 0 && c->budget_tokens <= c->window)
        return sp_error(EINVAL, "[compression] budget_tokens = %" PRId64 " must exceed window = %"
                                PRId64 " (the window is always kept)", c->budget_tokens, c->window);
    if (c->policy == SP_POLICY_STREAMING && c->budget_tokens > 0 && c->budget_tokens <= c->sinks)
        return sp_error(EINVAL, "[compression] budget_tokens = %" PRId64 " must exceed sinks = %"
                                PRId64 " for policy streaming", c->budget_tokens, c->sinks);
    if (c->policy == SP_POLICY_ZIGZAG && c->allocator != SP_ALLOCATOR_ZIGZAG)
        return sp_error(EINVAL, "[compression] policy = zigzag needs allocator = zigzag (it is "
                                "%s)", sp_config_allocator_name(c->allocator));
    const uint64_t bs = cfg->spill.block_size;
    const uint64_t d = (uint64_t)cfg->spill.prefetch_depth;
    if (cfg->tiers.host_budget && cfg->tiers.host_budget < (d + 1) * bs)
        return sp_error(EINVAL, "[tiers] host_budget = %" PRIu64 " is too small: staging %" PRIu64
                                " prefetched layers needs at least (prefetch_depth + 1) x "
                                "block_size = %" PRIu64 " bytes", cfg->tiers.host_budget, d + 1,
                        (d + 1) * bs);
    if (cfg->tiers.nvme_budget && cfg->tiers.nvme_budget < bs)
        return sp_error(EINVAL, "[tiers] nvme_budget = %" PRIu64 " is smaller than [spill] "
                                "block_size = %" PRIu64, cfg->tiers.nvme_budget, bs);
    if (cfg->spill.queue_depth * bs > 4 * GIB)
        return sp_error(EINVAL, "[spill] queue_depth x block_size = %" PRIu64 " bytes of bounce "
                                "buffers exceeds 4GiB; lower one of them",
                        (uint64_t)cfg->spill.queue_depth * bs);
    if (n_layers > 0) {
        if (cfg->spill.prefetch_depth > n_layers)
            return sp_error(EINVAL, "[spill] prefetch_depth = %" PRId64 " exceeds the model's %d "
                                    "layers", cfg->spill.prefetch_depth, n_layers);
        if (cfg->tiers.resident_deep_layers > n_layers)
            return sp_error(EINVAL, "[tiers] resident_deep_layers = %" PRId64 " exceeds the "
                                    "model's %d layers", cfg->tiers.resident_deep_layers, n_layers);
        bool *m = calloc((size_t)n_layers, sizeof *m);
        if (!m)
            return sp_error(ENOMEM, "out of memory");
        int rc = 0;
        if (sp_config_mask_expand(c->evict_layers, n_layers, m) < 0)
            rc = sp_error(EINVAL, "[compression] evict_layers = %s: %s", c->evict_layers,
                          sp_last_error());
        else if (sp_config_mask_expand(c->codebook_layers, n_layers, m) < 0)
            rc = sp_error(EINVAL, "[compression] codebook_layers = %s: %s", c->codebook_layers,
                          sp_last_error());
        free(m);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- printing ---- */

static void format_value(const sp_config *cfg, const key_def *k, char *buf, size_t len)
{
    const char *base = (const char *)cfg + k->off;
    switch (k->type) {
    case KT_BOOL: snprintf(buf, len, "%s", *(const bool *)base ? "true" : "false"); break;
    case KT_INT: snprintf(buf, len, "%" PRId64, *(const int64_t *)base); break;
    case KT_FLOAT: {
        /* shortest text that reads back to the same double, so print -> load is lossless */
        double v = *(const double *)base;
        snprintf(buf, len, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, len, "%.17g", v);
        break;
    }
    case KT_SIZE: {
        uint64_t v = *(const uint64_t *)base;
        if (v && v % GIB == 0) snprintf(buf, len, "%" PRIu64 "GiB", v / GIB);
        else if (v && v % MIB == 0) snprintf(buf, len, "%" PRIu64 "MiB", v / MIB);
        else if (v && v % KIB == 0) snprintf(buf, len, "%" PRIu64 "KiB", v / KIB);
        else snprintf(buf, len, "%" PRIu64, v);
        break;
    }
    case KT_STRING:
    case KT_MASK: snprintf(buf, len, "%s", base); break;
    case KT_ENUM: snprintf(buf, len, "%s", k->enums[*(const int *)base]); break;
    }
}

void sp_config_print(const sp_config *cfg, FILE *out)
{
    const char *cur = "";
    for (int i = 0; i < N_KEYS; i++) {
        if (strcmp(cur, keys[i].section) != 0) {
            cur = keys[i].section;
            fprintf(out, "%s[%s]\n", i ? "\n" : "", cur);
        }
        char v[SP_CONFIG_PATH_MAX + 8];
        format_value(cfg, &keys[i], v, sizeof v);
        fprintf(out, "%-22s = %-24s ; %s\n", keys[i].name, v,
                cfg->origin[i][0] ? cfg->origin[i] : "default");
    }
}

void sp_config_help(FILE *out)
{
    fprintf(out, "Configuration keys (INI sections; override with --set section.key=value):\n");
    for (int i = 0; i < N_KEYS; i++) {
        char allowed[512];
        allowed_text(&keys[i], allowed, sizeof allowed);
        char name[96];
        snprintf(name, sizeof name, "%s.%s", keys[i].section, keys[i].name);
        fprintf(out, "  %-34s %s\n  %-34s allowed: %s; default: %s\n", name, keys[i].help, "",
                allowed, keys[i].def[0] ? keys[i].def : "(empty)");
    }
}

void sp_config_write_default(FILE *out)
{
    fprintf(out, "; configs/default.ini - every spindle configuration key with its default.\n"
                 "; Generated by sp_config_write_default() from the key table in runtime/config/config.c;\n"
                 "; tests/test_config.c checks that this file matches the table. Sizes take units\n"
                 "; B KiB MiB GiB TiB (powers of 1024) or KB MB GB TB (powers of 1000); a plain\n"
                 "; number is bytes. Override any key with --set section.key=value.\n");
    const char *cur = "";
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &keys[i];
        if (strcmp(cur, k->section) != 0) {
            cur = k->section;
            fprintf(out, "\n[%s]\n", cur);
        }
        char allowed[512];
        allowed_text(k, allowed, sizeof allowed);
        fprintf(out, "; %s\n; allowed: %s\n%s = %s\n", k->help, allowed, k->name, k->def);
    }
}
