/* test_config.c - the configuration key table: defaults, units, errors with file:line, --set,
 * validation conflicts, print -> load round trip, and configs/default.ini matching the table. */
#include <criterion/criterion.h>

#include "config.h"
#include "sp_error.h"
#include "support/notice_capture.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *slurp(FILE *f, size_t *len)
{
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

Test(config, defaults_match_spec)
{
    sp_config c;
    setenv("HOME", "/home/u", 1);
    setenv("TMPDIR", "/var/tmp", 1);
    sp_config_defaults(&c);
    cr_assert_str_eq(c.model.path, "/home/u/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    cr_assert_eq(c.model.n_ctx, 0);
    cr_assert_eq(c.compression.policy, SP_POLICY_SPINDLE);
    cr_assert_eq(c.compression.allocator, SP_ALLOCATOR_SPINDLE_LINEAR);
    cr_assert_float_eq(c.compression.ratio, 0.2, 1e-12);
    cr_assert_eq(c.compression.window, 32);
    cr_assert_eq(c.compression.pool_kernel, 7);
    cr_assert_float_eq(c.compression.theta_k, 0.98, 1e-12);
    cr_assert_float_eq(c.compression.theta_v, 0.95, 1e-12);
    cr_assert_str_eq(c.compression.evict_layers, "all");
    cr_assert(c.compression.codebook);
    cr_assert_eq(c.tiers.resident_deep_layers, 8);
    cr_assert_str_eq(c.spill.dir, "/var/tmp");
    cr_assert_eq(c.spill.queue_depth, 32);
    cr_assert_eq(c.spill.block_size, 1024 * 1024);
    cr_assert_eq(c.spill.prefetch_depth, 2);
    cr_assert(c.spill.verify_checksums);
    cr_assert_str_eq(c.origin[0], "default");
    unsetenv("TMPDIR");
    sp_config_defaults(&c);
    cr_assert_str_eq(c.spill.dir, "/tmp");
    cr_assert_eq(sp_config_validate(&c, 30), 0, "%s", sp_last_error());
}

Test(config, sizes_with_units)
{
    struct { const char *t; uint64_t v; int rc; } cases[] = {
        {"0", 0, 0}, {"4096", 4096, 0}, {"512MiB", 512ull << 20, 0}, {"8GiB", 8ull << 30, 0},
        {"8 GiB", 8ull << 30, 0}, {"1KB", 1000, 0}, {"3MB", 3000000, 0}, {"2GB", 2000000000, 0},
        {"7B", 7, 0}, {"1kib", 1024, 0}, {"12XB", 0, -EINVAL}, {"-1", 0, -EINVAL}, {"", 0, -EINVAL},
        {"99999999999GiB", 0, -ERANGE}, {"1.5GiB", 0, -EINVAL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t v = 0;
        int rc = sp_config_parse_size(cases[i].t, &v);
        cr_assert_eq(rc, cases[i].rc, "'%s': rc %d", cases[i].t, rc);
        if (rc == 0)
            cr_assert_eq(v, cases[i].v, "'%s' -> %lu", cases[i].t, (unsigned long)v);
    }
}

Test(config, load_string_applies_values_and_origins)
{
    sp_config c;
    sp_config_defaults(&c);
    const char *ini = "; comment\n[tiers]\ndevice_budget = 512MiB\nhost_budget=2GiB\n"
                      "[compression]\npolicy = snapkv\nratio = 0.5\nevict_layers = 0-3, 7, 20-\n"
                      "[spill]\norder = deep-first\nqueue_depth = 64\ndirect_io = off\n";
    cr_assert_eq(sp_config_load_string(&c, ini, "t.ini"), 0, "%s", sp_last_error());
    cr_assert_eq(c.tiers.device_budget, 512ull << 20);
    cr_assert_eq(c.tiers.host_budget, 2ull << 30);
    cr_assert_eq(c.compression.policy, SP_POLICY_SNAPKV);
    cr_assert_float_eq(c.compression.ratio, 0.5, 1e-12);
    cr_assert_eq(c.spill.order, SP_SPILL_DEEP_FIRST);
    cr_assert_eq(c.spill.queue_depth, 64);
    cr_assert_eq(c.spill.direct_io, SP_DIRECT_IO_OFF);
    bool m[30];
    cr_assert_eq(sp_config_mask_expand(c.compression.evict_layers, 30, m), 0);
    int n = 0;
    for (int i = 0; i < 30; i++)
        n += m[i];
    cr_assert_eq(n, 4 + 1 + 10);
    cr_assert(m[0] && m[3] && !m[4] && m[7] && !m[19] && m[20] && m[29]);
    char key[64];
    for (int i = 0; i < sp_config_key_count(); i++) {
        sp_config_key_name(i, key, sizeof key);
        if (strcmp(key, "tiers.device_budget") == 0)
            cr_assert_str_eq(c.origin[i], "t.ini:3");
        if (strcmp(key, "spill.queue_depth") == 0)
            cr_assert_str_eq(c.origin[i], "t.ini:11");
    }
}

static void expect_error(const char *ini, const char *needle1, const char *needle2)
{
    sp_config c;
    sp_config_defaults(&c);
    int rc = sp_config_load_string(&c, ini, "bad.ini");
    cr_assert_lt(rc, 0, "accepted: %s", ini);
    cr_assert(strstr(sp_last_error(), needle1), "message '%s' lacks '%s'", sp_last_error(), needle1);
    if (needle2)
        cr_assert(strstr(sp_last_error(), needle2), "message '%s' lacks '%s'", sp_last_error(),
                  needle2);
}

Test(config, errors_name_file_line_key_and_allowed)
{
    expect_error("[spill]\n\nqueue_depth = 999\n",
                 "bad.ini:3: [spill] queue_depth = 999: out of range", "allowed: integer in [1, 256]");
    expect_error("[compression]\npolicy = fancy\n", "bad.ini:2: [compression] policy = fancy: unknown value",
                 "allowed: full|streaming|h2o|snapkv|pyramidkv|pyramidinfer|spindle|zigzag");
    expect_error("[compression]\nratio = 0\n", "bad.ini:2: [compression] ratio = 0: out of range",
                 "(0, 1]");
    expect_error("[compression]\nratio = abc\n", "not a finite number", NULL);
    expect_error("[model]\nn_ctx = 12x\n", "bad.ini:2: [model] n_ctx = 12x: not an integer", NULL);
    expect_error("[tiers]\nnumaa_bind = true\n", "bad.ini:2: [tiers] numaa_bind = true: unknown key",
                 "numa_bind");
    expect_error("[model]\n[gpu]\nx = 1\n", "bad.ini:2: [gpu]: unknown section", "model, compression");
    expect_error("[tiers]\nnuma_bind = maybe\n", "not a boolean", NULL);
    expect_error("[spill]\nblock_size = 2000\n", "[spill] block_size = 2000: out of range", NULL);
    expect_error("[spill]\nblock_size = 12KB\n", "not a multiple of 4KiB", NULL);
    expect_error("[tiers]\nhost_budget = lots\n", "not a size", NULL);
    expect_error("[compression]\nevict_layers = 3-1\n", "bad layer range", NULL);
    expect_error("orphan = 1\n", "outside any section", NULL);
    expect_error("[model]\nthis line has no equals\n", "bad.ini:2: syntax error", NULL);
}

Test(config, missing_file_is_an_error)
{
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_lt(sp_config_load_file(&c, "/nonexistent/x.ini"), 0);
    cr_assert(strstr(sp_last_error(), "/nonexistent/x.ini"));
}

/* A directory opens and reads as empty (it used to load as "all defaults"); /dev/zero never ends
 * (it used to spin forever): both are refused, naming the path. */
Test(config, only_regular_files_are_configs, .timeout = 20)
{
    const char *paths[] = {"/tmp", "/dev/zero", "/dev/null"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        sp_config c;
        sp_config_defaults(&c);
        cr_assert_lt(sp_config_load_file(&c, paths[i]), 0, "%s loaded as a config", paths[i]);
        cr_assert(strstr(sp_last_error(), paths[i]) && strstr(sp_last_error(), "not a regular file"),
                  "%s", sp_last_error());
    }
}

/* Regular files that are not INI text end the read with an error, never a hang or a cut: an
 * endless line, a NUL byte, more than SP_CONFIG_FILE_MAX bytes. */
Test(config, bad_regular_files_end_the_read, .timeout = 20)
{
    char path[] = "/tmp/sp-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < 4 << 20; i++)
        fputc('x', f); /* one 4 MiB line */
    fclose(f);
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_lt(sp_config_load_file(&c, path), 0);
    cr_assert(strstr(sp_last_error(), "line longer than"), "%s", sp_last_error());

    f = fopen(path, "w");
    fputs("[tiers]\ndevice_budget = 20MiB\n", f);
    fputc('\0', f);
    fputs("host_budget = 1GiB\n", f);
    fclose(f);
    sp_config_defaults(&c);
    cr_assert_lt(sp_config_load_file(&c, path), 0);
    cr_assert(strstr(sp_last_error(), ":3: NUL byte"), "%s", sp_last_error());

    f = fopen(path, "w");
    for (int i = 0; i < (SP_CONFIG_FILE_MAX / 16) + 2; i++)
        fputs(";  comment line\n", f); /* 16 bytes a line */
    fclose(f);
    sp_config_defaults(&c);
    cr_assert_lt(sp_config_load_file(&c, path), 0);
    cr_assert(strstr(sp_last_error(), "longer than"), "%s", sp_last_error());
    unlink(path);
}

/* A key set twice keeps the later value, with a notice naming both lines. */
Test(config, duplicate_keys_are_announced_with_both_lines)
{
    sp_config c;
    sp_config_defaults(&c);
    notice_capture nc;
    notice_capture_start(&nc);
    int rc = sp_config_load_string(&c, "[tiers]\ndevice_budget = 20MiB\n\nhost_budget = 1GiB\n"
                                       "device_budget = 30MiB\n", "dup.ini");
    notice_capture_stop();
    cr_assert_eq(rc, 0, "%s", sp_last_error());
    cr_assert_eq(c.tiers.device_budget, 30u << 20);
    cr_assert_eq(nc.count, 1);
    cr_assert(strstr(nc.last, "dup.ini:5") && strstr(nc.last, "line 2") && strstr(nc.last, "device_budget"),
              "%s", nc.last);
}

Test(config, set_overrides)
{
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "spill.prefetch_depth=4", NULL), 0);
    cr_assert_eq(c.spill.prefetch_depth, 4);
    cr_assert_eq(sp_config_set(&c, "tiers.device_budget = 1GiB", "--set"), 0);
    cr_assert_eq(c.tiers.device_budget, 1ull << 30);
    cr_assert_lt(sp_config_set(&c, "spill.prefetch_depth=17", NULL), 0);
    cr_assert(strstr(sp_last_error(), "--set: [spill] prefetch_depth = 17: out of range"),
              "%s", sp_last_error());
    cr_assert_lt(sp_config_set(&c, "prefetch_depth=1", NULL), 0);
    cr_assert(strstr(sp_last_error(), "expected section.key=value"));
    cr_assert_lt(sp_config_set(&c, "spill.nope=1", NULL), 0);
    cr_assert(strstr(sp_last_error(), "unknown key"));
    cr_assert_eq(c.spill.prefetch_depth, 4, "a failed --set must not change the value");
}

Test(config, validate_conflicts)
{
    sp_config c;
    sp_config_defaults(&c);
    c.spill.prefetch_depth = 16;
    cr_assert_lt(sp_config_validate(&c, 12), 0);
    cr_assert(strstr(sp_last_error(), "prefetch_depth = 16 exceeds the model's 12 layers"),
              "%s", sp_last_error());
    cr_assert_eq(sp_config_validate(&c, 0), 0, "layer checks skipped when layers unknown");
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "tiers.host_budget=2MiB", NULL), 0);
    cr_assert_lt(sp_config_validate(&c, 30), 0);
    cr_assert(strstr(sp_last_error(), "host_budget"), "%s", sp_last_error());
    sp_config_defaults(&c);
    c.compression.budget_tokens = 16;
    cr_assert_lt(sp_config_validate(&c, 30), 0);
    cr_assert(strstr(sp_last_error(), "window"));
    sp_config_defaults(&c);
    c.compression.pool_kernel = 6;
    cr_assert_lt(sp_config_validate(&c, 30), 0);
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "compression.codebook_layers=0-40", NULL), 0);
    cr_assert_lt(sp_config_validate(&c, 30), 0);
    cr_assert(strstr(sp_last_error(), "codebook_layers"));
    sp_config_defaults(&c);
    c.tiers.resident_deep_layers = 31;
    cr_assert_lt(sp_config_validate(&c, 30), 0);
}

Test(config, print_then_load_round_trips)
{
    sp_config a, b;
    sp_config_defaults(&a);
    cr_assert_eq(sp_config_set(&a, "compression.ratio=0.123456789", NULL), 0);
    cr_assert_eq(sp_config_set(&a, "tiers.nvme_budget=3000000", NULL), 0);
    cr_assert_eq(sp_config_set(&a, "runtime.stats_json=/tmp/s.json", NULL), 0);
    cr_assert_eq(sp_config_set(&a, "compression.codebook_layers=0-5,9", NULL), 0);
    FILE *f = tmpfile();
    sp_config_print(&a, f);
    size_t n;
    char *text = slurp(f, &n);
    fclose(f);
    cr_assert(strstr(text, "; --set"), "origins are printed");
    sp_config_defaults(&b);
    cr_assert_eq(sp_config_load_string(&b, text, "printed"), 0, "%s", sp_last_error());
    free(text);
    cr_assert_eq(b.compression.ratio, a.compression.ratio);
    cr_assert_eq(b.tiers.nvme_budget, 3000000);
    cr_assert_str_eq(b.runtime.stats_json, "/tmp/s.json");
    cr_assert_str_eq(b.compression.codebook_layers, "0-5,9");
    /* Everything except origins must be identical. */
    memcpy(b.origin, a.origin, sizeof a.origin);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
}

Test(config, help_lists_every_key)
{
    FILE *f = tmpfile();
    sp_config_help(f);
    size_t n;
    char *text = slurp(f, &n);
    fclose(f);
    char key[64];
    for (int i = 0; i < sp_config_key_count(); i++)
        cr_assert(strstr(text, sp_config_key_name(i, key, sizeof key)), "help lacks %s", key);
    cr_assert(strstr(text, "shallow-first|deep-first"));
    free(text);
}

Test(config, committed_default_ini_matches_table)
{
    const char *fixtures = getenv("SPINDLE_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/../../configs/default.ini", fixtures ? fixtures : "tests/fixtures");
    FILE *committed = fopen(path, "r");
    cr_assert(committed, "cannot open %s", path);
    size_t n1, n2;
    char *want = slurp(committed, &n1);
    fclose(committed);
    FILE *gen = tmpfile();
    sp_config_write_default(gen);
    char *got = slurp(gen, &n2);
    fclose(gen);
    cr_assert_str_eq(want, got, "configs/default.ini is stale: regenerate it with "
                                "sp_config_write_default()");
    /* And loading it yields exactly the defaults. */
    sp_config a, b;
    sp_config_defaults(&a);
    sp_config_defaults(&b);
    cr_assert_eq(sp_config_load_file(&b, path), 0, "%s", sp_last_error());
    memcpy(b.origin, a.origin, sizeof a.origin);
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
    free(want);
    free(got);
}

/* Short model names resolve against the model cache wherever model.path is set (-m is --set
 * model.path=...); anything else stays a path. */
Test(config, model_short_names_resolve_to_the_cache)
{
    sp_config c;
    setenv("HOME", "/home/u", 1);
    unsetenv("SPINDLE_CACHE");
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_set(&c, "model.path=qwen2.5-0.5b", "-m"), 0, "%s", sp_last_error());
    cr_assert_str_eq(c.model.path, "/home/u/.cache/spindle/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    setenv("SPINDLE_CACHE", "/srv/sp", 1);
    cr_assert_eq(sp_config_set(&c, "model.path=Qwen2.5-1.5B", "-m"), 0, "%s", sp_last_error());
    cr_assert_str_eq(c.model.path, "/srv/sp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf");
    cr_assert_eq(sp_config_set(&c, "model.path=smollm2-135m", "-m"), 0, "%s", sp_last_error());
    cr_assert_str_eq(c.model.path, "/srv/sp/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    cr_assert_eq(sp_config_load_string(&c, "[model]\npath = qwen2.5-0.5b\n", "t.ini"), 0, "%s", sp_last_error());
    cr_assert_str_eq(c.model.path, "/srv/sp/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    /* not a known name: a relative path, kept as given */
    cr_assert_eq(sp_config_set(&c, "model.path=qwen2.5-7b", "-m"), 0, "%s", sp_last_error());
    cr_assert_str_eq(c.model.path, "qwen2.5-7b");
    unsetenv("SPINDLE_CACHE");
}

/* preset = paper: sets the paper's values on keys still at their defaults, in any line order;
 * explicit keys (the file, before or after the preset line, and --set) win; ratio stays the
 * user's; the keys it set name it as their origin. */
Test(config, preset_paper_precedence)
{
    sp_config c;
    sp_config_defaults(&c);
    cr_assert_eq(c.compression.preset, SP_PRESET_NONE);
    cr_assert_eq(c.compression.target, SP_TARGET_BYTES, "the default differs from the paper here");
    cr_assert_eq(sp_config_load_string(&c, "[compression]\npreset = paper\n", "p.ini"), 0, "%s",
                 sp_last_error());
    cr_assert_eq(c.compression.target, SP_TARGET_TOKENS);
    cr_assert_eq(c.compression.decode_window, 0);
    cr_assert_eq(c.compression.decode_coding, SP_DECODE_CODING_APPEND);
    cr_assert_float_eq(c.compression.ratio, 0.2, 1e-12, "ratio is not part of the preset");
    char name[96];
    for (int i = 0; i < sp_config_key_count(); i++) {
        sp_config_key_name(i, name, sizeof name);
        if (!strcmp(name, "compression.target"))
            cr_assert_str_eq(c.origin[i], "preset paper (p.ini:2)");
    }
    /* The preset equals setting each listed key explicitly, and names itself as their origin. */
    const char *value, *key;
    sp_config d;
    sp_config_defaults(&d);
    int n = 0;
    for (; (key = sp_config_preset_key(SP_PRESET_PAPER, n, &value)) != NULL; n++) {
        char set[160];
        snprintf(set, sizeof set, "%s=%s", key, value);
        cr_assert_eq(sp_config_set(&d, set, NULL), 0, "%s: %s", set, sp_last_error());
        for (int i = 0; i < sp_config_key_count(); i++) {
            sp_config_key_name(i, name, sizeof name);
            if (!strcmp(name, key))
                cr_assert_str_eq(c.origin[i], "preset paper (p.ini:2)", "%s not set by the preset", key);
        }
    }
    d.compression.preset = SP_PRESET_PAPER;
    cr_assert_eq(memcmp(&d.compression, &c.compression, sizeof c.compression), 0);
    cr_assert_geq(n, 16);
    cr_assert_null(sp_config_preset_key(SP_PRESET_NONE, 0, NULL));

    /* explicit before and after the preset line, and --set afterwards, all win */
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_load_string(&c, "[compression]\ntarget = bytes\ntheta_k = 0.9\n"
                                           "preset = paper\nwindow = 8\n", "q.ini"), 0, "%s",
                 sp_last_error());
    cr_assert_eq(c.compression.target, SP_TARGET_BYTES, "an explicit key before the preset wins");
    cr_assert_float_eq(c.compression.theta_k, 0.9, 1e-12);
    cr_assert_eq(c.compression.window, 8, "an explicit key after the preset wins");
    cr_assert_eq(c.compression.gqa_mode, SP_GQA_QUERY_HEAD);
    cr_assert_eq(sp_config_set(&c, "compression.decode_window=16", NULL), 0);
    cr_assert_eq(c.compression.decode_window, 16, "--set wins over the file's preset");

    /* a preset given by --set after a file does not touch the file's keys */
    sp_config_defaults(&c);
    cr_assert_eq(sp_config_load_string(&c, "[compression]\ngqa_mode = kv_head\n", "r.ini"), 0);
    cr_assert_eq(sp_config_set(&c, "compression.preset=paper", NULL), 0, "%s", sp_last_error());
    cr_assert_eq(c.compression.gqa_mode, SP_GQA_KV_HEAD);
    cr_assert_eq(c.compression.target, SP_TARGET_TOKENS);
    cr_assert_eq(sp_config_validate(&c, 30), 0, "%s", sp_last_error());
}
