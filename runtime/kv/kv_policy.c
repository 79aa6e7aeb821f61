/* kv_policy.c - KV compression options: names, defaults, key=value knobs and validation. */
#include "kv_policy.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_error.h"

static const char *const policy_names[] = {"full", "streaming", "h2o", "snapkv", "pyramidkv",
                                           "pyramidinfer", "spindle", "zigzag"};
static const char *const allocator_names[] = {"uniform", "pyramidkv", "spindle-linear", "zigzag"};
#define N_POLICIES ((int)(sizeof policy_names / sizeof *policy_names))
#define N_ALLOCATORS ((int)(sizeof allocator_names / sizeof *allocator_names))

void sp_kv_opts_defaults(sp_kv_opts *o)
{
    memset(o, 0, sizeof *o);
    o->policy = SP_POLICY_SPINDLE;
    o->allocator = SP_ALLOCATOR_SPINDLE_LINEAR;
    o->ratio = 0.2;
    o->target = SP_TARGET_BYTES;
    o->budget_tokens = 0;
    o->window = 32;
    o->pool_kernel = 7;
    o->pool_type = SP_POOL_MAX;
    o->divide_by_l_minus_a = false;
    o->beta = 0.05;
    o->theta_k = 0.98;
    o->theta_v = 0.95;
    o->gqa_mode = SP_GQA_QUERY_HEAD;
    snprintf(o->evict_layers, sizeof o->evict_layers, "all");
    snprintf(o->codebook_layers, sizeof o->codebook_layers, "all");
    o->codebook = true;
    o->code_fallback = true;
    o->sinks = 4;
    o->pyramidkv_beta = 20;
    o->zigzag_tau = 0.9;
}

void sp_kv_opts_from_config(sp_kv_opts *o, const sp_config *cfg)
{
    const typeof(cfg->compression) *c = &cfg->compression;
    sp_kv_opts_defaults(o);
    o->policy = c->policy;
    o->allocator = c->allocator;
    o->ratio = c->ratio;
    o->target = c->target;
    o->budget_tokens = c->budget_tokens;
    o->window = c->window;
    o->pool_kernel = c->pool_kernel;
    o->pool_type = c->pool_type;
    o->divide_by_l_minus_a = c->divide_by_l_minus_a;
    o->beta = c->beta;
    o->theta_k = c->theta_k;
    o->theta_v = c->theta_v;
    o->gqa_mode = c->gqa_mode;
    snprintf(o->evict_layers, sizeof o->evict_layers, "%s", c->evict_layers);
    snprintf(o->codebook_layers, sizeof o->codebook_layers, "%s", c->codebook_layers);
    o->codebook = c->codebook;
    o->code_fallback = c->code_fallback;
    o->decode_window = c->decode_window;
    o->decode_coding = c->decode_coding;
    o->entry_centroid = c->entry == SP_ENTRY_CENTROID;
    o->sinks = c->sinks;
    o->pyramidkv_beta = c->pyramidkv_beta;
    o->zigzag_tau = c->zigzag_tau;
}

const char *sp_kv_policy_name(sp_policy_kind p)
{
    return (unsigned)p < (unsigned)N_POLICIES ? policy_names[p] : "?";
}

const char *sp_kv_allocator_name(sp_allocator_kind a)
{
    return (unsigned)a < (unsigned)N_ALLOCATORS ? allocator_names[a] : "?";
}

int sp_kv_policy_from_name(const char *name, sp_policy_kind *out)
{
    for (int i = 0; i < N_POLICIES; i++)
        if (name && strcmp(name, policy_names[i]) == 0) {
            *out = (sp_policy_kind)i;
            return 0;
        }
    return sp_error(EINVAL, "unknown KV policy '%s'; allowed: full, streaming, h2o, snapkv, "
                            "pyramidkv, pyramidinfer, spindle, zigzag", name ? name : "(null)");
}

int sp_kv_allocator_from_name(const char *name, sp_allocator_kind *out)
{
    for (int i = 0; i < N_ALLOCATORS; i++)
        if (name && strcmp(name, allocator_names[i]) == 0) {
            *out = (sp_allocator_kind)i;
            return 0;
        }
    return sp_error(EINVAL, "unknown budget allocator '%s'; allowed: uniform, pyramidkv, "
                            "spindle-linear, zigzag", name ? name : "(null)");
}

/* strtod/strtoll that insist on consuming the whole value. */
static int parse_double(const char *key, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end != '\0' || errno == ERANGE || !isfinite(x))
        return sp_error(EINVAL, "kv option %s=%s: not a finite number", key, v);
    *out = x;
    return 0;
}

static int parse_int(const char *key, const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (end == v || *end != '\0' || errno == ERANGE)
        return sp_error(EINVAL, "kv option %s=%s: not an integer", key, v);
    *out = x;
    return 0;
}

/* A two-valued option: 0 for `a`, 1 for `b`, or -EINVAL naming both. */
static int parse_choice(const char *key, const char *v, const char *a, const char *b)
{
    if (!strcmp(v, a))
        return 0;
    if (!strcmp(v, b))
        return 1;
    return sp_error(EINVAL, "kv option %s=%s: allowed: %s, %s", key, v, a, b);
}

static int parse_bool(const char *key, const char *v, bool *out)
{
    if (!strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1") || !strcmp(v, "yes")) {
        *out = true;
        return 0;
    }
    if (!strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0") || !strcmp(v, "no")) {
        *out = false;
        return 0;
    }
    return sp_error(EINVAL, "kv option %s=%s: not a boolean; allowed: true, false, on, off, 1, 0",
                    key, v);
}

int sp_kv_opts_set(sp_kv_opts *o, const char *assignment)
{
    char key[64];
    const char *eq = assignment ? strchr(assignment, '=') : NULL;
    if (!eq || eq == assignment || (size_t)(eq - assignment) >= sizeof key)
        return sp_error(EINVAL, "kv option '%s': expected key=value", assignment ? assignment : "");
    memcpy(key, assignment, (size_t)(eq - assignment));
    key[eq - assignment] = '\0';
    const char *v = eq + 1;

    if (!strcmp(key, "policy"))
        return sp_kv_policy_from_name(v, &o->policy);
    if (!strcmp(key, "allocator"))
        return sp_kv_allocator_from_name(v, &o->allocator);
    if (!strcmp(key, "ratio"))
        return parse_double(key, v, &o->ratio);
    if (!strcmp(key, "target")) {
        int c = parse_choice(key, v, "bytes", "tokens");
        if (c >= 0)
            o->target = (sp_ratio_target)c;
        return c < 0 ? c : 0;
    }
    if (!strcmp(key, "budget_tokens"))
        return parse_int(key, v, &o->budget_tokens);
    if (!strcmp(key, "window"))
        return parse_int(key, v, &o->window);
    if (!strcmp(key, "pool_kernel"))
        return parse_int(key, v, &o->pool_kernel);
    if (!strcmp(key, "pool_type")) {
        if (!strcmp(v, "max"))
            o->pool_type = SP_POOL_MAX;
        else if (!strcmp(v, "avg"))
            o->pool_type = SP_POOL_AVG;
        else
            return sp_error(EINVAL, "kv option pool_type=%s: allowed: max, avg", v);
        return 0;
    }
    if (!strcmp(key, "divide_by_l_minus_a"))
        return parse_bool(key, v, &o->divide_by_l_minus_a);
    if (!strcmp(key, "beta"))
        return parse_double(key, v, &o->beta);
    if (!strcmp(key, "theta_k"))
        return parse_double(key, v, &o->theta_k);
    if (!strcmp(key, "theta_v"))
        return parse_double(key, v, &o->theta_v);
    if (!strcmp(key, "gqa_mode")) {
        int c = parse_choice(key, v, "query_head", "kv_head");
        if (c >= 0)
            o->gqa_mode = (sp_gqa_mode)c;
        return c < 0 ? c : 0;
    }
    if (!strcmp(key, "evict_layers") || !strcmp(key, "codebook_layers")) {
        char *dst = key[0] == 'e' ? o->evict_layers : o->codebook_layers;
        if (strlen(v) >= SP_KV_MASK_MAX)
            return sp_error(EINVAL, "kv option %s: mask longer than %d characters", key,
                            SP_KV_MASK_MAX - 1);
        /* Syntax check now (layer bounds are checked once n_layers is known). */
        if (strcmp(v, "all") && strcmp(v, "none")) {
            for (const char *c = v; *c; c++)
                if (!isdigit((unsigned char)*c) && *c != ',' && *c != '-')
                    return sp_error(EINVAL, "kv option %s=%s: bad layer mask; allowed: all, none, "
                                            "or a list like 0-15,20,24-", key, v);
        }
        snprintf(dst, SP_KV_MASK_MAX, "%s", v);
        return 0;
    }
    if (!strcmp(key, "codebook"))
        return parse_bool(key, v, &o->codebook);
    if (!strcmp(key, "code_fallback"))
        return parse_bool(key, v, &o->code_fallback);
    if (!strcmp(key, "decode_window"))
        return parse_int(key, v, &o->decode_window);
    if (!strcmp(key, "entry")) {
        int c = parse_choice(key, v, "first", "centroid");
        if (c >= 0)
            o->entry_centroid = c == 1;
        return c < 0 ? c : 0;
    }
    if (!strcmp(key, "decode_coding")) {
        int c = parse_choice(key, v, "append", "batch");
        if (c >= 0)
            o->decode_coding = (sp_decode_coding)c;
        return c < 0 ? c : 0;
    }
    if (!strcmp(key, "sinks"))
        return parse_int(key, v, &o->sinks);
    if (!strcmp(key, "pyramidkv_beta"))
        return parse_int(key, v, &o->pyramidkv_beta);
    if (!strcmp(key, "zigzag_tau"))
        return parse_double(key, v, &o->zigzag_tau);
    return sp_error(EINVAL, "unknown kv option '%s'; allowed: policy, allocator, ratio, target, "
                            "budget_tokens, window, pool_kernel, pool_type, divide_by_l_minus_a, "
                            "beta, theta_k, theta_v, gqa_mode, evict_layers, codebook_layers, "
                            "codebook, code_fallback, decode_window, decode_coding, entry, sinks, pyramidkv_beta, zigzag_tau", key);
}

int sp_kv_opts_parse(sp_kv_opts *o, const char *list)
{
    char tok[512];
    const char *p = list ? list : "";
    while (*p) {
        while (*p && (isspace((unsigned char)*p) || *p == ';'))
            p++;
        size_t n = 0;
        while (p[n] && !isspace((unsigned char)p[n]) && p[n] != ';')
            n++;
        if (n == 0)
            break;
        if (n >= sizeof tok)
            return sp_error(EINVAL, "kv option list: item longer than %zu characters", sizeof tok - 1);
        memcpy(tok, p, n);
        tok[n] = '\0';
        int rc = sp_kv_opts_set(o, tok);
        if (rc < 0)
            return rc;
        p += n;
    }
    return 0;
}

static int validate(const sp_kv_opts *o, int n_layers, int64_t l, double theta_max)
{
    if ((unsigned)o->policy >= (unsigned)N_POLICIES)
        return sp_error(EINVAL, "kv policy %d: unknown", (int)o->policy);
    if ((unsigned)o->allocator >= (unsigned)N_ALLOCATORS)
        return sp_error(EINVAL, "kv allocator %d: unknown", (int)o->allocator);
    if (!(o->ratio > 0.0 && o->ratio <= 1.0))
        return sp_error(EINVAL, "kv option ratio=%g: must be in (0, 1] (the kept share of the "
                                "context)", o->ratio);
    if (!(o->theta_k >= 0.0 && o->theta_k <= theta_max))
        return sp_error(EINVAL, "kv option theta_k=%g: must be in [0, %g] (cosine threshold)",
                        o->theta_k, theta_max);
    if (!(o->theta_v >= 0.0 && o->theta_v <= theta_max))
        return sp_error(EINVAL, "kv option theta_v=%g: must be in [0, %g] (cosine threshold)",
                        o->theta_v, theta_max);
    if (o->window < 1)
        return sp_error(EINVAL, "kv option window=%lld: must be >= 1", (long long)o->window);
    if (o->decode_window < 0)
        return sp_error(EINVAL, "kv option decode_window=%lld: must be >= 0 (0 = decode tokens coded at once)",
                        (long long)o->decode_window);
    if (o->decode_coding == SP_DECODE_CODING_BATCH && o->decode_window < 1)
        return sp_error(EINVAL, "kv option decode_coding=batch: needs decode_window >= 1 (the "
                                "batches are the decode tokens leaving that window)");
    if (o->pool_kernel < 1 || o->pool_kernel % 2 == 0)
        return sp_error(EINVAL, "kv option pool_kernel=%lld: must be a positive odd number (a "
                                "centred window; 1 = no pooling)", (long long)o->pool_kernel);
    if (!(o->beta >= 0.0 && o->beta < 1.0))
        return sp_error(EINVAL, "kv option beta=%g: must be in [0, 1)", o->beta);
    if (o->sinks < 0)
        return sp_error(EINVAL, "kv option sinks=%lld: must be >= 0", (long long)o->sinks);
    if (o->pyramidkv_beta < 1)
        return sp_error(EINVAL, "kv option pyramidkv_beta=%lld: must be >= 1",
                        (long long)o->pyramidkv_beta);
    if (!(o->zigzag_tau > 0.0 && o->zigzag_tau <= 1.0))
        return sp_error(EINVAL, "kv option zigzag_tau=%g: must be in (0, 1]", o->zigzag_tau);
    if (o->budget_tokens < 0)
        return sp_error(EINVAL, "kv option budget_tokens=%lld: must be >= 0 (0 = from ratio)",
                        (long long)o->budget_tokens);
    if (o->budget_tokens > 0 && o->budget_tokens <= o->window)
        return sp_error(EINVAL, "kv option budget_tokens=%lld must exceed window=%lld",
                        (long long)o->budget_tokens, (long long)o->window);
    if (o->policy == SP_POLICY_STREAMING && o->budget_tokens > 0 && o->budget_tokens <= o->sinks)
        return sp_error(EINVAL, "kv option budget_tokens=%lld must exceed sinks=%lld for policy "
                                "streaming", (long long)o->budget_tokens, (long long)o->sinks);
    if (n_layers > 0) {
        bool *tmp = malloc((size_t)n_layers * 2 * sizeof *tmp);
        if (!tmp)
            return sp_error(ENOMEM, "kv options: out of memory");
        int rc = sp_kv_opts_layer_masks(o, n_layers, tmp, tmp + n_layers);
        free(tmp);
        if (rc < 0)
            return rc;
    }
    if (l > 0 && l <= o->window && o->policy != SP_POLICY_FULL)
        sp_notice("kv: prompt of %lld tokens is not longer than window=%lld: nothing is evicted "
                  "(all tokens stay in the raw window)", (long long)l, (long long)o->window);
    return 0;
}

int sp_kv_opts_validate(const sp_kv_opts *o, int n_layers, int64_t l)
{
    return validate(o, n_layers, l, 1.0);
}

int sp_kv_opts_validate_relaxed(const sp_kv_opts *o, int n_layers, int64_t l)
{
    return validate(o, n_layers, l, 2.0);
}

sp_allocator_kind sp_kv_opts_allocator(const sp_kv_opts *o)
{
    switch (o->policy) {
    case SP_POLICY_PYRAMIDKV: return SP_ALLOCATOR_PYRAMIDKV;
    case SP_POLICY_ZIGZAG: return SP_ALLOCATOR_ZIGZAG;
    case SP_POLICY_SPINDLE: return o->allocator;
    default: return SP_ALLOCATOR_UNIFORM;
    }
}

int64_t sp_kv_opts_budget(const sp_kv_opts *o, int64_t l)
{
    int64_t b = o->budget_tokens > 0 ? o->budget_tokens : (int64_t)llround(o->ratio * (double)l);
    return b > l ? l : b;
}

int sp_kv_opts_layer_masks(const sp_kv_opts *o, int n_layers, bool *evict, bool *codebook)
{
    char why[256];
    int rc = sp_config_mask_expand(o->evict_layers, n_layers, evict);
    if (rc < 0) {
        snprintf(why, sizeof why, "%s", sp_last_error()); /* sp_error overwrites the message */
        return sp_error(EINVAL, "kv option evict_layers=%s: %s", o->evict_layers, why);
    }
    rc = sp_config_mask_expand(o->codebook_layers, n_layers, codebook);
    if (rc < 0) {
        snprintf(why, sizeof why, "%s", sp_last_error());
        return sp_error(EINVAL, "kv option codebook_layers=%s: %s", o->codebook_layers, why);
    }
    for (int i = 0; i < n_layers; i++) {
        if (o->policy == SP_POLICY_FULL)
            evict[i] = false;
        if (o->policy != SP_POLICY_SPINDLE || !o->codebook)
            codebook[i] = false;
    }
    return 0;
}
