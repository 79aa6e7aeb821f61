/* gpu_stub.c - the one place that knows whether the CUDA backend was built: without it, the gpu.h
 * functions exist and report -ENODEV (constructors NULL, predicates false), so no other file needs
 * an #ifdef. Keep in step with gpu/gpu.h: every declaration there has a stub here. */
#ifndef SPINDLE_WITH_CUDA
#include <errno.h>

#include "gpu.h"
#include "sp_error.h"

static int no_cuda(const char *what)
{
    return sp_error(ENODEV, "%s: spindle was built without CUDA (configure with -DSPINDLE_CUDA=ON)", what);
}

int sp_gpu_device_count(void) { return -ENODEV; }

int sp_gpu_describe(int dev, char *buf, size_t size)
{
    (void)dev;
    if (size)
        buf[0] = '\0';
    return no_cuda("gpu describe");
}

int sp_gpu_selftest(int dev)
{
    (void)dev;
    return no_cuda("gpu selftest");
}

int sp_gpu_set_device(int dev)
{
    (void)dev;
    return no_cuda("gpu set device");
}

void *sp_gpu_alloc(size_t size)
{
    (void)size;
    no_cuda("gpu alloc");
    return NULL;
}

void sp_gpu_free(void *p) { (void)p; }

void *sp_gpu_host_alloc(size_t size)
{
    (void)size;
    no_cuda("gpu host alloc");
    return NULL;
}

void sp_gpu_host_free(void *p) { (void)p; }

bool sp_gpu_is_device_ptr(const void *p)
{
    (void)p;
    return false;
}

int sp_gpu_stream_create(void **out)
{
    *out = NULL;
    return no_cuda("gpu stream");
}

void sp_gpu_stream_destroy(void *stream) { (void)stream; }

int sp_gpu_stream_sync(void *stream)
{
    (void)stream;
    return no_cuda("gpu stream sync");
}

int sp_gpu_memcpy_h2d(void *stream, void *dst, const void *src, size_t n)
{
    (void)stream, (void)dst, (void)src, (void)n;
    return no_cuda("gpu copy");
}

int sp_gpu_memcpy_d2h(void *stream, void *dst, const void *src, size_t n)
{
    (void)stream, (void)dst, (void)src, (void)n;
    return no_cuda("gpu copy");
}

int sp_gpu_memset(void *stream, void *dst, int byte, size_t n)
{
    (void)stream, (void)dst, (void)byte, (void)n;
    return no_cuda("gpu memset");
}

bool sp_gpu_dequant_supported(uint32_t type)
{
    (void)type;
    return false;
}

int sp_gpu_dequant(void *stream, sp_gpu_dequant_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu dequant");
}

int sp_gpu_rmsnorm(void *stream, sp_gpu_rmsnorm_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu rmsnorm");
}

int sp_gpu_rope(void *stream, sp_gpu_rope_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu rope");
}

int sp_gpu_swiglu(void *stream, sp_gpu_swiglu_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu swiglu");
}

sp_gpu_blas *sp_gpu_blas_create(void)
{
    no_cuda("gpu blas");
    return NULL;
}

void sp_gpu_blas_free(sp_gpu_blas *b) { (void)b; }

int sp_gpu_gemm(sp_gpu_blas *b, void *stream, sp_gpu_gemm_desc d)
{
    (void)b, (void)stream, (void)d;
    return no_cuda("gpu gemm");
}

bool sp_gpu_gemv_supported(uint32_t w_type)
{
    (void)w_type;
    return false;
}

int sp_gpu_gemv(void *stream, sp_gpu_gemv_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu gemv");
}

size_t sp_gpu_attention_scratch_floats(int n_q, int q_pos0, int n_head, int head_dim, int n_window)
{
    (void)n_q, (void)q_pos0, (void)n_head, (void)head_dim, (void)n_window;
    return 0;
}

int sp_gpu_attention(void *stream, sp_gpu_attn_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu attention");
}

int sp_gpu_argmax(void *stream, sp_gpu_argmax_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu argmax");
}

int sp_gpu_kv_scores_prepare(void *stream, sp_gpu_kv_prepare_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu kv scores prepare");
}

int sp_gpu_kv_topk(void *stream, sp_gpu_kv_topk_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu kv topk");
}

size_t sp_gpu_codebook_scratch_bytes(int64_t n)
{
    (void)n;
    return 0;
}

int sp_gpu_codebook_build(sp_gpu_blas *b, void *stream, sp_gpu_codebook_desc d)
{
    (void)b, (void)stream, (void)d;
    return no_cuda("gpu codebook build");
}

int sp_gpu_codebook_match(void *stream, sp_gpu_codebook_match_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu codebook match");
}

int sp_gpu_codebook_code(void *stream, sp_gpu_codebook_code_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu codebook code");
}

size_t sp_gpu_segattn_scratch_floats(const struct sp_kv_segment *seg, const struct sp_kv_tail *tail)
{
    (void)seg, (void)tail;
    return 0;
}

int sp_gpu_segattn_decode(void *stream, sp_gpu_segattn_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu segment attention");
}

int sp_gpu_sample(void *stream, sp_gpu_sample_desc d)
{
    (void)stream, (void)d;
    return no_cuda("gpu sample");
}

const sp_tier_device_ops *sp_gpu_tier_ops_create(int dev)
{
    (void)dev;
    no_cuda("gpu tier");
    return NULL;
}

void sp_gpu_tier_ops_free(const sp_tier_device_ops *ops) { (void)ops; }
#else
typedef int sp_gpu_stub_unused; /* ISO C forbids an empty translation unit */
#endif
