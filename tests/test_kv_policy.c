/* test_kv_policy.c - option knobs: names, key=value parsing, validation messages, fallbacks. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "kv_policy.h"
#include "sp_error.h"
#include "support/notice_capture.h"

Test(kv_policy, defaults_match_the_config_defaults)
{
    sp_kv_opts a, b;
    sp_config cfg;
    sp_kv_opts_defaults(&a);
    sp_config_defaults(&cfg);
    sp_kv_opts_from_config(&b, &cfg);
    cr_assert_eq(a.policy, b.policy);
    cr_assert_eq(a.allocator, b.allocator);
    cr_assert_eq(a.window, 32);
    cr_assert_eq(b.window, 32);
    cr_assert_eq(a.pool_kernel, b.pool_kernel);
    cr_assert_float_eq(a.theta_k, b.theta_k, 1e-12);
    cr_assert_float_eq(a.theta_v, b.theta_v, 1e-12);
    cr_assert_float_eq(a.beta, b.beta, 1e-12);
    cr_assert_eq(a.sinks, b.sinks);
    cr_assert_eq(a.pyramidkv_beta, b.pyramidkv_beta);
    cr_assert_str_eq(a.evict_layers, b.evict_layers);
    cr_assert_eq(sp_kv_opts_validate(&a, 30, 1000), 0, "%s", sp_last_error());
}

Test(kv_policy, knobs_parse)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    cr_assert_eq(sp_kv_opts_parse(&o, "policy=pyramidkv ratio=0.25; window=16 pool_type=avg "
                                      "gqa_mode=kv_head codebook=off evict_layers=0-15,20 "
                                      "theta_k=0.9 budget_tokens=100 divide_by_l_minus_a=true"),
                 0, "%s", sp_last_error());
    cr_assert_eq(o.policy, SP_POLICY_PYRAMIDKV);
    cr_assert_float_eq(o.ratio, 0.25, 1e-12);
    cr_assert_eq(o.window, 16);
    cr_assert_eq(o.pool_type, SP_POOL_AVG);
    cr_assert_eq(o.gqa_mode, SP_GQA_KV_HEAD);
    cr_assert(!o.codebook);
    cr_assert(o.divide_by_l_minus_a);
    cr_assert_str_eq(o.evict_layers, "0-15,20");
    cr_assert_eq(o.budget_tokens, 100);
    cr_assert_eq(sp_kv_opts_allocator(&o), SP_ALLOCATOR_PYRAMIDKV);
    bool ev[30], cb[30];
    cr_assert_eq(sp_kv_opts_layer_masks(&o, 30, ev, cb), 0);
    cr_assert(ev[0] && ev[15] && !ev[16] && ev[20] && !ev[29]);
    cr_assert(!cb[0], "codebook=off disables every layer");
}

Test(kv_policy, bad_names_and_values_rejected_with_messages)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    cr_assert_eq(sp_kv_opts_set(&o, "policy=lru"), -EINVAL);
    cr_assert(strstr(sp_last_error(), "unknown KV policy 'lru'") &&
              strstr(sp_last_error(), "snapkv"), "%s", sp_last_error());
    cr_assert_eq(sp_kv_opts_set(&o, "allocator=cubic"), -EINVAL);
    cr_assert(strstr(sp_last_error(), "spindle-linear"), "%s", sp_last_error());
    cr_assert_eq(sp_kv_opts_set(&o, "colour=blue"), -EINVAL);
    cr_assert(strstr(sp_last_error(), "unknown kv option 'colour'"), "%s", sp_last_error());
    cr_assert_eq(sp_kv_opts_set(&o, "ratio=abc"), -EINVAL);
    cr_assert_eq(sp_kv_opts_set(&o, "noequals"), -EINVAL);
    cr_assert_eq(sp_kv_opts_set(&o, "evict_layers=top"), -EINVAL);
    cr_assert_eq(sp_kv_opts_set(&o, "codebook=maybe"), -EINVAL);
    cr_assert_eq(sp_kv_opts_set(&o, "decode_coding=later"), -EINVAL);
    cr_assert(strstr(sp_last_error(), "append, batch"), "%s", sp_last_error());
    cr_assert_eq(sp_kv_opts_set(&o, "entry=middle"), -EINVAL);
    cr_assert(strstr(sp_last_error(), "first, centroid"), "%s", sp_last_error());
    cr_assert_eq(o.policy, SP_POLICY_SPINDLE, "failed sets leave the options unchanged");

    const char *bad[] = {"ratio=0", "ratio=1.5", "ratio=-0.2", "theta_k=1.5", "theta_v=-0.1",
                         "pool_kernel=4", "pool_kernel=0", "window=0", "beta=1",
                         "zigzag_tau=0", "budget_tokens=32", "evict_layers=0-99",
                         "decode_coding=batch"};
    const char *word[] = {"ratio", "ratio", "ratio", "theta_k", "theta_v", "pool_kernel",
                          "pool_kernel", "window", "beta", "zigzag_tau", "budget_tokens",
                          "evict_layers", "decode_window >= 1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sp_kv_opts_defaults(&o);
        cr_assert_eq(sp_kv_opts_set(&o, bad[i]), 0, "%s: %s", bad[i], sp_last_error());
        cr_assert_eq(sp_kv_opts_validate(&o, 30, 1000), -EINVAL, "%s accepted", bad[i]);
        cr_assert(strstr(sp_last_error(), word[i]), "%s: message '%s'", bad[i], sp_last_error());
    }
    sp_kv_opts_defaults(&o);
    o.theta_k = 1.5;
    cr_assert_eq(sp_kv_opts_validate_relaxed(&o, 30, 1000), 0, "relaxed accepts theta > 1");
}

Test(kv_policy, window_longer_than_prompt_falls_back_with_notice)
{
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    notice_capture nc;
    notice_capture_start(&nc);
    cr_assert_eq(sp_kv_opts_validate(&o, 30, 20), 0);
    cr_assert_eq(nc.count, 1);
    cr_assert(strstr(nc.last, "nothing is evicted"), "%s", nc.last);
    nc.count = 0;
    cr_assert_eq(sp_kv_opts_validate(&o, 30, 2000), 0);
    cr_assert_eq(nc.count, 0);
    notice_capture_stop();
}

Test(kv_policy, names_round_trip_and_allocator_mapping)
{
    for (int p = SP_POLICY_FULL; p <= SP_POLICY_ZIGZAG; p++) {
        sp_policy_kind k;
        cr_assert_eq(sp_kv_policy_from_name(sp_kv_policy_name((sp_policy_kind)p), &k), 0);
        cr_assert_eq((int)k, p);
    }
    for (int a = SP_ALLOCATOR_UNIFORM; a <= SP_ALLOCATOR_ZIGZAG; a++) {
        sp_allocator_kind k;
        cr_assert_eq(sp_kv_allocator_from_name(sp_kv_allocator_name((sp_allocator_kind)a), &k), 0);
        cr_assert_eq((int)k, a);
    }
    cr_assert_str_eq(sp_kv_policy_name((sp_policy_kind)99), "?");
    sp_kv_opts o;
    sp_kv_opts_defaults(&o);
    o.policy = SP_POLICY_SNAPKV;
    cr_assert_eq(sp_kv_opts_allocator(&o), SP_ALLOCATOR_UNIFORM);
    o.policy = SP_POLICY_SPINDLE;
    o.allocator = SP_ALLOCATOR_PYRAMIDKV;
    cr_assert_eq(sp_kv_opts_allocator(&o), SP_ALLOCATOR_PYRAMIDKV, "spindle combines");
    o.budget_tokens = 0;
    o.ratio = 0.25;
    cr_assert_eq(sp_kv_opts_budget(&o, 1000), 250);
    o.budget_tokens = 300;
    cr_assert_eq(sp_kv_opts_budget(&o, 1000), 300);
    cr_assert_eq(sp_kv_opts_budget(&o, 200), 200);
    o.policy = SP_POLICY_FULL;
    bool ev[4], cb[4];
    cr_assert_eq(sp_kv_opts_layer_masks(&o, 4, ev, cb), 0);
    cr_assert(!ev[0] && !cb[0], "full: no eviction, no codebook");
}
