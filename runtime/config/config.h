/* config.h - spindle's configuration: one INI file (inih) plus `--set section.key=value` overrides.
 *
 * Every key lives in ONE table in config.c (section, name, type, bounds, default, help). That table
 * drives parsing, validation, `--help-config` (sp_config_help), printing the effective configuration
 * (sp_config_print) and the annotated configs/default.ini (sp_config_write_default).
 *
 * The configuration itself is a plain struct: read the fields directly. Enum-typed keys are stored
 * as the C enums below; "mask" keys (layer lists such as "all", "none", "0-3,7,20-") are stored as
 * validated strings and expanded against the model's layer count with sp_config_mask_expand().
 *
 * Thread-safety: none needed; a config is built once, then read. No function here allocates memory
 * that the caller must free.
 */
#ifndef SP_CONFIG_H
#define SP_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "numerics.h" /* sp_numerics */

/* [runtime] backend (resolved to a backend by the CLI; config sits below the backend layer). */
typedef enum sp_backend_choice {
    SP_BACKEND_CHOICE_AUTO = 0,
    SP_BACKEND_CHOICE_CPU = 1,
    SP_BACKEND_CHOICE_CUDA = 2,
} sp_backend_choice;

#define SP_CONFIG_PATH_MAX 1024
#define SP_CONFIG_MASK_MAX 256
#define SP_CONFIG_ORIGIN_MAX 96
/* A config file larger than this is refused (no INI file of ours comes near it). */
#define SP_CONFIG_FILE_MAX (1 << 20)
#define SP_CONFIG_MAX_KEYS 64

typedef enum { SP_CHAT_AUTO, SP_CHAT_CHATML, SP_CHAT_LLAMA3, SP_CHAT_NONE } sp_chat_template;
typedef enum {
    SP_POLICY_FULL, SP_POLICY_STREAMING, SP_POLICY_H2O, SP_POLICY_SNAPKV, SP_POLICY_PYRAMIDKV,
    SP_POLICY_PYRAMIDINFER, SP_POLICY_SPINDLE, SP_POLICY_ZIGZAG
} sp_policy_kind;
typedef enum {
    SP_ALLOCATOR_UNIFORM, SP_ALLOCATOR_PYRAMIDKV, SP_ALLOCATOR_SPINDLE_LINEAR, SP_ALLOCATOR_ZIGZAG
} sp_allocator_kind;
typedef enum { SP_POOL_MAX, SP_POOL_AVG } sp_pool_type;
typedef enum { SP_GQA_QUERY_HEAD, SP_GQA_KV_HEAD } sp_gqa_mode;
/* How decode tokens leaving the raw window are coded: one by one against the codebook, or in
 * batches by Algorithm 1 (the paper's "repeat the process for the remaining tokens"). */
typedef enum { SP_DECODE_CODING_APPEND, SP_DECODE_CODING_BATCH } sp_decode_coding;
/* The direction a codebook entry stores: its greedy pick's own, or its members' mean. */
typedef enum { SP_ENTRY_FIRST, SP_ENTRY_CENTROID } sp_entry_kind;
/* What [compression] ratio means: the true byte ratio (default) or the papers' token share. */
typedef enum { SP_TARGET_BYTES, SP_TARGET_TOKENS } sp_ratio_target;
/* [compression] preset: paper = the SpindleKV paper's exact settings (sp_config_preset_keys). */
typedef enum { SP_PRESET_NONE, SP_PRESET_PAPER } sp_preset;
typedef enum { SP_SPILL_SHALLOW_FIRST, SP_SPILL_DEEP_FIRST } sp_spill_order;
typedef enum { SP_DIRECT_IO_AUTO, SP_DIRECT_IO_ON, SP_DIRECT_IO_OFF } sp_direct_io;

typedef struct sp_config {
    struct {
        char path[SP_CONFIG_PATH_MAX];  /* GGUF file; a leading "~/" is expanded with $HOME */
        int64_t n_ctx;                  /* tokens; 0 = the model's trained context */
        sp_chat_template chat_template;
    } model;
    struct {
        sp_preset preset;               /* settings bundle applied under explicit keys */
        sp_policy_kind policy;
        sp_allocator_kind allocator;
        double ratio;                   /* (0,1]: true byte ratio (target bytes) or kept token share */
        sp_ratio_target target;         /* what ratio means */
        int64_t budget_tokens;          /* tokens per layer; 0 = derive from ratio */
        int64_t window;                 /* l_w, observation window (tokens, always kept) */
        int64_t pool_kernel;            /* odd 1-D pooling kernel over the window scores */
        sp_pool_type pool_type;
        bool divide_by_l_minus_a;       /* eq. 2 as printed (divide the scores by l - a) */
        double beta;                    /* SpindleKV beta: absolute share of the context */
        double theta_k, theta_v;        /* codebook cosine thresholds (strict >) */
        sp_gqa_mode gqa_mode;
        char evict_layers[SP_CONFIG_MASK_MAX];    /* layer mask, see sp_config_mask_expand */
        char codebook_layers[SP_CONFIG_MASK_MAX]; /* layer mask */
        bool code_fallback;             /* a coded layer not smaller than raw is stored raw */
        bool codebook;                  /* codebook stage on/off */
        int64_t decode_window;          /* coded layers: last N decode tokens raw (0 = coded at once) */
        sp_decode_coding decode_coding; /* append | batch (batch needs decode_window >= 1) */
        sp_entry_kind entry;            /* first (the paper) | centroid (members' mean direction) */
        int64_t sinks;                  /* streaming/pyramidinfer attention sinks */
        int64_t pyramidkv_beta;         /* PyramidKV's beta (min = (B - w) / beta) */
        double zigzag_tau;              /* ZigZagKV attention-mass threshold */
    } compression;
    struct {
        uint64_t device_budget;         /* bytes; 0 = unlimited */
        uint64_t host_budget;           /* bytes; 0 = unlimited */
        uint64_t nvme_budget;           /* bytes; 0 = unlimited */
        int64_t resident_deep_layers;   /* deepest layers pinned to the device tier */
        bool numa_bind;                 /* bind host memory and workers to the chosen NUMA node */
    } tiers;
    struct {
        sp_spill_order order;
        char dir[SP_CONFIG_PATH_MAX];   /* effective directory ("" in the file = $TMPDIR or /tmp) */
        sp_direct_io direct_io;
        int64_t queue_depth;            /* io_uring submission queue depth, 1..256 */
        uint64_t block_size;            /* bytes per I/O request, 4 KiB..16 MiB, multiple of 4 KiB */
        int64_t prefetch_depth;         /* d: layers fetched ahead; 0 = synchronous */
        bool verify_checksums;          /* verify each segment's XXH3-64 checksum on read */
        bool register_buffers;          /* io_uring registered buffers and files */
    } spill;
    struct {
        sp_backend_choice backend;      /* auto | cpu | cuda */
        int64_t threads;                /* compute threads; 0 = all cores */
        sp_numerics numerics;           /* rounding of the CPU forward pass (ggml = llama.cpp's) */
        int64_t seed;                   /* RNG seed, 0..2^63-1 */
        char stats_json[SP_CONFIG_PATH_MAX]; /* write run statistics here; "" = off */
    } runtime;
    /* Where each key's value came from ("default", "file.ini:12", "--set"), indexed like the key
     * table (sp_config_key_count()). */
    char origin[SP_CONFIG_MAX_KEYS][SP_CONFIG_ORIGIN_MAX];
} sp_config;

/* [compression] preset = paper sets the paper's exact settings on every key of its list that still
 * has its default - whatever the order of the lines - so an explicit key (file or --set, before or
 * after the preset) always wins over the preset, and the preset over the defaults. The keys it set
 * show the origin "preset paper (<where the preset was set>)". preset = none sets nothing (keys a
 * paper preset already set keep their values). The paper's list: i-th key name
 * ("section.key") and value, i in [0, n); NULL past the end. */
const char *sp_config_preset_key(sp_preset p, int i, const char **value);

/* Fill every key with its default. Never fails. */
void sp_config_defaults(sp_config *cfg);

/* Apply an INI file on top of cfg. Returns 0, or a negative errno with sp_last_error() set to
 * "file:line: [section] key = value: reason; allowed: ...". cfg may be partly updated on error.
 * Only a regular file is read (a directory or device is -EISDIR / -EINVAL naming it), at most
 * SP_CONFIG_FILE_MAX bytes; a NUL byte, an over-long line or a read error ends the read with an
 * error. A key set twice in one file keeps the later value with a notice naming both lines. */
int sp_config_load_file(sp_config *cfg, const char *path);

/* Same for INI text held in memory; `name` is used in messages in place of the file name. */
int sp_config_load_string(sp_config *cfg, const char *text, const char *name);

/* Apply one "section.key=value" assignment (the CLI's --set). `origin` names it in messages and
 * in sp_config_print ("--set" when NULL). Returns 0 or a negative errno (message as above). */
int sp_config_set(sp_config *cfg, const char *assignment, const char *origin);

/* Cross-key checks (conflicts, budgets too small for the spill pipeline). n_layers is the model's
 * layer count, or 0 when not known yet (layer-dependent checks are then skipped). Returns 0 or
 * -EINVAL with a message naming the keys involved. */
int sp_config_validate(const sp_config *cfg, int n_layers);

/* Print the effective configuration as loadable INI, each key annotated with its origin. */
void sp_config_print(const sp_config *cfg, FILE *out);

/* Print the `--help-config` text: every key with type, allowed values or range, default, help. */
void sp_config_help(FILE *out);

/* Write the annotated default configuration (the content of configs/default.ini). */
void sp_config_write_default(FILE *out);

/* Expand a layer mask ("all", "none", or comma-separated items "a", "a-b", "a-" (to the last
 * layer)) into out[0..n_layers). Returns 0, or -EINVAL when the syntax is bad or a layer is
 * >= n_layers (message names the mask). */
int sp_config_mask_expand(const char *mask, int n_layers, bool *out);

/* Parse a size with optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB; plain number = bytes).
 * Returns 0 or -EINVAL / -ERANGE. Exposed for the CLI and tests. */
int sp_config_parse_size(const char *text, uint64_t *out);

/* Number of keys in the table, and a key's "section.name" (NULL when out of range). */
int sp_config_key_count(void);
const char *sp_config_key_name(int index, char *buf, size_t buf_len);

/* Enum names, for printing (never NULL). */
const char *sp_config_policy_name(sp_policy_kind p);
/* Why this configuration needs the cpu backend (a setting only the CPU path implements), or NULL
 * when a device backend runs it: what `[runtime] backend = auto` consults. */
const char *sp_config_cpu_only_reason(const sp_config *cfg);
const char *sp_config_allocator_name(sp_allocator_kind a);

#endif
