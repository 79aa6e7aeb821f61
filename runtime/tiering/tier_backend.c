/* tier_backend.c - the device tier in a backend's memory. See tier_backend.h. */
#include "tier_backend.h"

#include "sp_alloc.h"
#include "sp_error.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct alloc_node {
    sp_buffer_t *buf;
    uint8_t *base;
    size_t size;
    struct alloc_node *next;
} alloc_node;

struct sp_tier_backend {
    sp_tier_device_ops ops;   /* ops.ctx = this */
    sp_backend_t *be;
    pthread_mutex_t lock;
    alloc_node *list;         /* few entries: the resident segments and the slots */
};

/* The buffer holding [p, p + n), or NULL. */
static sp_buffer_t *find(sp_tier_backend_t *tb, const void *p, size_t n, size_t *off)
{
    sp_buffer_t *b = NULL;
    pthread_mutex_lock(&tb->lock);
    for (alloc_node *a = tb->list; a; a = a->next)
        if ((const uint8_t *)p >= a->base && (const uint8_t *)p + n <= a->base + a->size) {
            *off = (size_t)((const uint8_t *)p - a->base);
            b = a->buf;
            break;
        }
    pthread_mutex_unlock(&tb->lock);
    return b;
}

static void *tb_alloc(void *ctx, size_t size)
{
    sp_tier_backend_t *tb = ctx;
    alloc_node *a = sp_calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (!(a->buf = sp_backend_buffer_alloc(tb->be, SP_MEM_DEVICE, size ? size : 1, NULL))) {
        free(a);
        return NULL;
    }
    a->base = sp_backend_buffer_base(a->buf);
    a->size = size;
    pthread_mutex_lock(&tb->lock);
    a->next = tb->list;
    tb->list = a;
    pthread_mutex_unlock(&tb->lock);
    return a->base;
}

static void tb_free(void *ctx, void *ptr, size_t size)
{
    (void)size;
    sp_tier_backend_t *tb = ctx;
    alloc_node *hit = NULL;
    pthread_mutex_lock(&tb->lock);
    for (alloc_node **pp = &tb->list; *pp; pp = &(*pp)->next)
        if ((*pp)->base == ptr) {
            hit = *pp;
            *pp = hit->next;
            break;
        }
    pthread_mutex_unlock(&tb->lock);
    if (hit) {
        sp_backend_buffer_free(hit->buf);
        free(hit);
    }
}

static int tb_to_device(void *ctx, void *dst, const void *src_host, size_t n)
{
    size_t off = 0;
    sp_buffer_t *b = find(ctx, dst, n, &off);
    if (!b)
        return sp_error(EINVAL, "device tier: %zu bytes at %p are not in a buffer of this tier", n, dst);
    return sp_backend_buffer_set(b, off, src_host, n);
}

static int tb_to_host(void *ctx, void *dst_host, const void *src, size_t n)
{
    size_t off = 0;
    sp_buffer_t *b = find(ctx, src, n, &off);
    if (!b)
        return sp_error(EINVAL, "device tier: %zu bytes at %p are not in a buffer of this tier", n, src);
    return sp_backend_buffer_get(b, off, dst_host, n);
}

sp_tier_backend_t *sp_tier_backend_new(sp_backend_t *be)
{
    if (!be) {
        sp_error(EINVAL, "device tier: no backend");
        return NULL;
    }
    sp_tier_backend_t *tb = sp_calloc(1, sizeof *tb);
    if (!tb)
        return NULL;
    pthread_mutex_init(&tb->lock, NULL);
    tb->be = sp_backend_retain(be);
    tb->ops = (sp_tier_device_ops){.name = sp_backend_name(be), .alloc = tb_alloc, .free = tb_free,
                                   .to_device = tb_to_device, .to_host = tb_to_host, .ctx = tb};
    return tb;
}

const sp_tier_device_ops *sp_tier_backend_ops(const sp_tier_backend_t *tb)
{
    return tb ? &tb->ops : NULL;
}

void sp_tier_backend_free(sp_tier_backend_t *tb)
{
    if (!tb)
        return;
    while (tb->list) {   /* the tiers free theirs first; anything left is released here */
        alloc_node *a = tb->list;
        tb->list = a->next;
        sp_backend_buffer_free(a->buf);
        free(a);
    }
    pthread_mutex_destroy(&tb->lock);
    sp_backend_free(tb->be);
    free(tb);
}
