/* topology.c - hwloc discovery and NUMA placement. GPU locality comes from hwloc's PCI objects
 * (vendor 0x10de), so this file needs no CUDA headers and compiles in every build. */
#include "topology.h"

#include "sp_error.h"

#include <errno.h>
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>

struct sp_topology {
    hwloc_topology_t topo;
    hwloc_obj_t node;      /* chosen NUMA node (never NULL) */
    hwloc_obj_t gpu;       /* PCI device used for locality, or NULL */
    const char *reason;    /* why this node */
};

sp_topology_t *sp_topo_create(const char *gpu_pci_bus_id)
{
    sp_topology_t *t = calloc(1, sizeof *t);
    if (!t) {
        sp_error(ENOMEM, "topology: out of memory");
        return NULL;
    }
    if (hwloc_topology_init(&t->topo) != 0) {
        sp_error(errno ? errno : EIO, "hwloc_topology_init failed");
        free(t);
        return NULL;
    }
    /* PCI devices are needed to find the GPU; they are filtered out by default. */
    hwloc_topology_set_io_types_filter(t->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(t->topo) != 0) {
        sp_error(errno ? errno : EIO, "hwloc_topology_load failed");
        hwloc_topology_destroy(t->topo);
        free(t);
        return NULL;
    }
    hwloc_obj_t pci = NULL;
    while ((pci = hwloc_get_next_pcidev(t->topo, pci)) != NULL) {
        if (gpu_pci_bus_id && gpu_pci_bus_id[0]) {
            char id[32];
            snprintf(id, sizeof id, "%04x:%02x:%02x.%01x", pci->attr->pcidev.domain,
                     pci->attr->pcidev.bus, pci->attr->pcidev.dev, pci->attr->pcidev.func);
            if (strcasecmp(id, gpu_pci_bus_id) == 0) {
                t->gpu = pci;
                break;
            }
        } else if (pci->attr->pcidev.vendor_id == 0x10de && pci->attr->pcidev.class_id >> 8 == 0x03) {
            t->gpu = pci;
            break;
        }
    }
    if (t->gpu) {
        hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t->topo, t->gpu);
        hwloc_obj_t n = NULL;
        while ((n = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, n)) != NULL)
            if (anc && hwloc_bitmap_isincluded(n->cpuset, anc->cpuset)) {
                t->node = n;
                t->reason = "nearest to the GPU";
                break;
            }
    }
    if (!t->node) {
        /* The compute threads run where the process may run: the node holding most allowed cores. */
        hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(t->topo);
        int best = -1;
        hwloc_obj_t n = NULL;
        while ((n = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, n)) != NULL) {
            hwloc_bitmap_t b = hwloc_bitmap_alloc();
            hwloc_bitmap_and(b, n->cpuset, allowed);
            int w = hwloc_bitmap_weight(b);
            hwloc_bitmap_free(b);
            if (w > best) {
                best = w;
                t->node = n;
            }
        }
        t->reason = t->gpu ? "GPU locality unknown; node with most allowed cores"
                           : "no GPU; node with most allowed cores (compute threads)";
    }
    if (!t->node)
        t->node = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, 0);
    return t;
}

void sp_topo_free(sp_topology_t *t)
{
    if (!t)
        return;
    hwloc_topology_destroy(t->topo);
    free(t);
}

static int count(const sp_topology_t *t, hwloc_obj_type_t ty)
{
    int n = hwloc_get_nbobjs_by_type(t->topo, ty);
    return n > 0 ? n : 1;
}

int sp_topo_n_numa(const sp_topology_t *t) { return count(t, HWLOC_OBJ_NUMANODE); }
int sp_topo_n_cores(const sp_topology_t *t) { return count(t, HWLOC_OBJ_CORE); }
int sp_topo_n_pus(const sp_topology_t *t) { return count(t, HWLOC_OBJ_PU); }
int sp_topo_chosen_node(const sp_topology_t *t) { return t->node ? (int)t->node->os_index : 0; }
const char *sp_topo_reason(const sp_topology_t *t) { return t->reason ? t->reason : "the only node"; }
bool sp_topo_has_gpu(const sp_topology_t *t) { return t->gpu != NULL; }

int sp_topo_bind_memory(const sp_topology_t *t, void *addr, size_t len)
{
    if (!t || !t->node || !addr || !len)
        return sp_error(EINVAL, "topology: nothing to bind");
    if (hwloc_set_area_membind(t->topo, addr, len, t->node->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET) != 0)
        return sp_error(errno ? errno : ENOSYS, "hwloc_set_area_membind to NUMA node %u: %s",
                        t->node->os_index, strerror(errno));
    return 0;
}

int sp_topo_bind_thread(const sp_topology_t *t)
{
    if (!t || !t->node)
        return sp_error(EINVAL, "topology: no node chosen");
    if (hwloc_set_cpubind(t->topo, t->node->cpuset, HWLOC_CPUBIND_THREAD) != 0)
        return sp_error(errno ? errno : ENOSYS, "hwloc_set_cpubind to NUMA node %u: %s",
                        t->node->os_index, strerror(errno));
    return 0;
}

void sp_topo_print(const sp_topology_t *t, FILE *out)
{
    fprintf(out, "topology: %d NUMA node(s), %d core(s), %d hardware thread(s)\n", sp_topo_n_numa(t),
            sp_topo_n_cores(t), sp_topo_n_pus(t));
    hwloc_obj_t n = NULL;
    while ((n = hwloc_get_next_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, n)) != NULL) {
        char cpus[256];
        hwloc_bitmap_list_snprintf(cpus, sizeof cpus, n->cpuset);
        fprintf(out, "  node %u: cpus %s, %.1f GiB%s\n", n->os_index, cpus,
                (double)n->attr->numanode.local_memory / (1024.0 * 1024 * 1024),
                n == t->node ? "  <- chosen" : "");
    }
    if (t->gpu)
        fprintf(out, "  gpu: pci %04x:%02x:%02x.%01x (vendor %04x device %04x)\n",
                t->gpu->attr->pcidev.domain, t->gpu->attr->pcidev.bus, t->gpu->attr->pcidev.dev,
                t->gpu->attr->pcidev.func, t->gpu->attr->pcidev.vendor_id,
                t->gpu->attr->pcidev.device_id);
    else
        fprintf(out, "  gpu: none found\n");
    fprintf(out, "  host memory and workers: node %d (%s)\n", sp_topo_chosen_node(t), t->reason);
}
