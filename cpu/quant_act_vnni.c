/* quant_act_vnni.c - the 32-element block dot products (quant_act_kern.h) compiled for AVX-512 VNNI,
 * run only where sp_qa_isa_active() found the CPU features (the rest of the build keeps the
 * x86-64-v3 baseline). Results are identical to the baseline kernels. */
#include "quant_act_isa.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#define SP_HAVE_VNNI_KERNELS 1
#include <immintrin.h>
#include <string.h>

#include "gguf.h"
#include "quant_act.h"
#include "simd.h"

static inline float h2f(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

#define SP_QA_VNNI 1
#define SP_QA_FN(name) name##_vnni
#include "quant_act_kern.h"

bool sp_dot_rows_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                      size_t out_stride)
{
    switch (type) {
    case SP_TYPE_Q4_0: rows_q4_0_vnni(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q4_1: rows_q4_1_vnni(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q5_0: rows_q5_0_vnni(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q5_1: rows_q5_1_vnni(w, nb, tiles, nt, out, out_stride); return true;
    case SP_TYPE_Q8_0: rows_q8_0_vnni(w, nb, tiles, nt, out, out_stride); return true;
    default: return sp_dot_rows_k_vnni(type, w, nb, tiles, nt, out, out_stride);
    }
}
#else
bool sp_dot_rows_vnni(uint32_t type, const void *w, int64_t nb, const void *tiles, int nt, float *out,
                      size_t out_stride)
{
    (void)type; (void)w; (void)nb; (void)tiles; (void)nt; (void)out; (void)out_stride;
    return false;
}
#endif

bool sp_qa_isa_vnni_available(void)
{
#ifdef SP_HAVE_VNNI_KERNELS
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw");
#else
    return false;
#endif
}
