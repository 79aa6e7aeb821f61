/* topology.h - hwloc view of the machine: NUMA nodes and cores, the node chosen for spindle's host
 * memory and worker threads (the one nearest the GPU when there is one, else the node holding the
 * compute threads' cores), and helpers that bind memory ranges and threads to it.
 *
 * Thread-safety: create/free on one thread; the bind functions may be called from any thread once
 * the topology exists (hwloc topology queries are read-only).
 */
#ifndef SP_TOPOLOGY_H
#define SP_TOPOLOGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef struct sp_topology sp_topology_t;

/* Discover the machine. gpu_pci_bus_id: "0000:65:00.0" of the GPU in use, or NULL/"" when none
 * (then the first NVIDIA PCI device, if any, is used for locality). NULL on failure (message set). */
sp_topology_t *sp_topo_create(const char *gpu_pci_bus_id);
void sp_topo_free(sp_topology_t *t); /* accepts NULL */

int sp_topo_n_numa(const sp_topology_t *t);  /* >= 1 */
int sp_topo_n_cores(const sp_topology_t *t); /* physical cores, >= 1 */
int sp_topo_n_pus(const sp_topology_t *t);   /* hardware threads, >= 1 */
int sp_topo_chosen_node(const sp_topology_t *t); /* OS index of the chosen NUMA node */
/* Why that node ("nearest to the GPU", ...): a static string. */
const char *sp_topo_reason(const sp_topology_t *t);
/* Whether the topology found the GPU it was given (or, given none, an NVIDIA display device). */
bool sp_topo_has_gpu(const sp_topology_t *t);

/* Bind [addr, addr+len) to the chosen node. Returns 0, or a negative errno when the OS refuses
 * (single-node machines and containers often do; callers treat that as a notice, not a failure). */
int sp_topo_bind_memory(const sp_topology_t *t, void *addr, size_t len);

/* Bind the calling thread to the chosen node's cores (worker threads call this on start). */
int sp_topo_bind_thread(const sp_topology_t *t);

/* Print what was found and chosen (for `spindle inspect --topology`). */
void sp_topo_print(const sp_topology_t *t, FILE *out);

#endif
