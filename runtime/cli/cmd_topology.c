/* cmd_topology.c - the topology report of `spindle inspect --topology`: what hwloc found and what
 * a run would choose for host memory (NUMA node, binding, mlock, pinned pool kind). Everything is
 * probed, not assumed: a small host-pool buffer shows whether binding and mlock work, a short-lived
 * thread whether thread binding works, so the report matches what the tiers will get. */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "cli_io.h"
#include "host_pool.h"
#include "sp_error.h"
#include "topology.h"

typedef struct {
    const sp_topology_t *topo;
    int rc;
    char msg[256];
} bind_probe;

/* Bind only this throwaway thread, so the caller's affinity is untouched. */
static void *probe_thread(void *arg)
{
    bind_probe *p = arg;
    p->rc = sp_topo_bind_thread(p->topo);
    if (p->rc < 0)
        snprintf(p->msg, sizeof p->msg, "%s", sp_last_error());
    return NULL;
}

static void print_limit(FILE *out, rlim_t v)
{
    if (v == RLIM_INFINITY)
        fputs("unlimited", out);
    else
        fprintf(out, "%llu KiB", (unsigned long long)v / 1024);
}

int sp_cli_print_topology(FILE *out)
{
    sp_topology_t *t = sp_topo_create(NULL);
    if (!t) {
        sp_cli_error("topology: %s", sp_last_error());
        return SP_EXIT_FAIL;
    }
    sp_topo_print(t, out);

    /* 2 MiB: enough to see mlock and binding succeed or fail, small enough for any ulimit -l
     * default that allows locking at all (8 MiB on current distributions). */
    sp_host_buf b;
    int rc = sp_host_pool_alloc(&b, 2u << 20, t);
    unsigned flags = rc == 0 ? b.flags : 0; /* sp_host_pool_free clears b */
    if (rc < 0) {
        fprintf(out, "  pinned pool: allocation failed (%s)\n", sp_last_error());
    } else {
        const char *kind = (b.flags & SP_HOST_CUDA)     ? "cudaHostAlloc (page-locked, DMA-ready)"
                           : (b.flags & SP_HOST_LOCKED) ? "mmap + mlock (page-locked host memory)"
                                                        : "mmap, pageable (mlock refused)";
        fprintf(out, "  pinned pool: %s\n", kind);
        fprintf(out, "  memory binding to node %d: %s\n", sp_topo_chosen_node(t),
                (b.flags & (SP_HOST_BOUND | SP_HOST_CUDA)) == SP_HOST_BOUND ? "works"
                : (b.flags & SP_HOST_CUDA) ? "n/a (CUDA allocates)" : "refused (memory is placed by the kernel)");
        sp_host_pool_free(&b);
    }
    struct rlimit rl;
    fprintf(out, "  mlock: %s", (flags & SP_HOST_LOCKED) ? "works" : rc == 0 ? "refused" : "not probed");
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
        fputs(" (RLIMIT_MEMLOCK ", out);
        print_limit(out, rl.rlim_cur);
        fputs(")", out);
    }
    fputc('\n', out);

    bind_probe p = {.topo = t};
    pthread_t th;
    if (pthread_create(&th, NULL, probe_thread, &p) == 0) {
        pthread_join(th, NULL);
        fprintf(out, "  thread binding to node %d: %s%s%s\n", sp_topo_chosen_node(t),
                p.rc == 0 ? "works" : "refused", p.rc == 0 ? "" : " - ", p.rc == 0 ? "" : p.msg);
    } else {
        fprintf(out, "  thread binding: not probed (pthread_create: %s)\n", strerror(errno));
    }
    sp_topo_free(t);
    return SP_EXIT_OK;
}
