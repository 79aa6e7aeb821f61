/* backend_impl.h - what a backend implements (the model is ggml's ggml-backend-impl.h): one table
 * of function pointers plus a context. backend.c wraps every slot (checks the arguments, counts
 * host synchronisations, answers -ENOTSUP for an empty op slot); implementations live in cpu/ and
 * gpu/ and are created only through registry.c.
 *
 * Required slots: free, buffer_alloc, buffer_free, buffer_set, buffer_get, buffer_memset,
 * event_new, event_free, event_record, stream_wait, event_sync, event_done, stream_sync, copy
 * (all three directions). Optional slots (NULL = not implemented; the wrapper returns -ENOTSUP and
 * sp_backend_supports() says false): supports (NULL = every non-NULL op slot supports every
 * descriptor) and every op slot.
 */
#ifndef SP_BACKEND_IMPL_H
#define SP_BACKEND_IMPL_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum sp_copy_dir { SP_COPY_H2D = 0, SP_COPY_D2H = 1, SP_COPY_D2D = 2 } sp_copy_dir;

typedef struct sp_backend_iface {
    uint32_t api_version;    /* SP_BACKEND_API_VERSION the implementation was written against */
    void (*free)(sp_backend_t *be);

    /* memory: fill b->base (and b->host) on success; 0 or -errno */
    int (*buffer_alloc)(sp_backend_t *be, sp_buffer_t *b, sp_mem_kind kind, size_t size);
    void (*buffer_free)(sp_backend_t *be, sp_buffer_t *b);
    int (*buffer_set)(sp_backend_t *be, sp_buffer_t *b, size_t off, const void *src, size_t n);
    int (*buffer_get)(sp_backend_t *be, const sp_buffer_t *b, size_t off, void *dst, size_t n);
    int (*buffer_memset)(sp_backend_t *be, sp_buffer_t *b, size_t off, int byte, size_t n);

    /* ordering: an event's implementation state hangs off ev->impl */
    int (*event_new)(sp_backend_t *be, sp_event_t *ev);
    void (*event_free)(sp_backend_t *be, sp_event_t *ev);
    int (*event_record)(sp_backend_t *be, sp_event_t *ev, sp_stream_id s);
    int (*stream_wait)(sp_backend_t *be, sp_stream_id s, sp_event_t *ev);
    int (*event_sync)(sp_backend_t *be, sp_event_t *ev);
    bool (*event_done)(sp_backend_t *be, sp_event_t *ev);
    int (*stream_sync)(sp_backend_t *be, sp_stream_id s);
    /* dst/src are backend pointers or host pointers as dir says (already range-checked) */
    int (*copy)(sp_backend_t *be, sp_stream_id s, sp_copy_dir dir, void *dst, const void *src, size_t n);

    /* ops (optional) */
    bool (*supports)(const sp_backend_t *be, sp_op op, const void *desc);
    /* NULL: the backend keeps no scratch that grows with the shape */
    int (*reserve)(sp_backend_t *be, sp_op op, const void *desc);
    int (*get_rows)(sp_backend_t *be, const sp_get_rows_desc *d);
    int (*matmul)(sp_backend_t *be, const sp_matmul_desc *d);
    int (*rmsnorm)(sp_backend_t *be, const sp_rmsnorm_desc *d);
    int (*rope)(sp_backend_t *be, const sp_rope_desc *d);
    int (*swiglu)(sp_backend_t *be, const sp_swiglu_desc *d);
    int (*attn_prefill)(sp_backend_t *be, const sp_attn_desc *d);
    int (*attn_decode)(sp_backend_t *be, const sp_attn_desc *d);
    int (*scores_prepare)(sp_backend_t *be, const sp_scores_prepare_desc *d);
    int (*topk)(sp_backend_t *be, const sp_topk_desc *d);
    int (*codebook_build)(sp_backend_t *be, const sp_codebook_build_desc *d);
    int (*codebook_code)(sp_backend_t *be, const sp_codebook_code_desc *d);
    int (*segattn)(sp_backend_t *be, const sp_segattn_desc *d);
    int (*argmax)(sp_backend_t *be, const sp_argmax_desc *d);
    int (*sample)(sp_backend_t *be, const sp_sample_desc *d);
    int (*kv_store)(sp_backend_t *be, const sp_kv_store_desc *d);
} sp_backend_iface;

struct sp_backend {
    const sp_backend_iface *iface;
    void *ctx;               /* the implementation's state */
    sp_backend_kind kind;
    sp_numerics numerics;
    char name[96];
    char pci_bus_id[16];     /* "0000:65:00.0" of a device backend's GPU, "" when none (the CPU) */
    int refs;                /* extra owners (sp_backend_retain); freed when the last one lets go */
    unsigned long long host_syncs; /* updated with __atomic builtins (C and C++ include this) */
};

struct sp_backend_buffer {
    sp_backend_t *be;
    void *base;              /* backend pointer */
    size_t size;
    sp_mem_kind kind;
    bool host;               /* base is host-addressable */
    void *impl;              /* the implementation's handle */
    bool view;               /* sp_backend_buffer_view: the memory is not ours to free */
    sp_budget budget;        /* charged at alloc, released at free */
};

struct sp_backend_event {
    sp_backend_t *be;
    void *impl;
};

/* Constructors, called by registry.c only (each in its backend's folder). NULL with a message. */
sp_backend_t *sp_backend_cpu_new(const sp_backend_params *p);
sp_backend_t *sp_backend_cuda_new(const sp_backend_params *p);
/* Whether the CUDA backend can run here (0 devices, driver missing: false + why). */
bool sp_backend_cuda_available(const char **why);

/* For implementations: allocate the sp_backend shell (name, kind, numerics set). */
sp_backend_t *sp_backend_shell_new(const sp_backend_iface *iface, void *ctx, sp_backend_kind kind,
                                   sp_numerics numerics, const char *name);

#ifdef __cplusplus
}
#endif

#endif
