/* cli_io.h - the I/O side of the `spindle` command line: `spindle io-bench` (spill-tier bandwidth
 * through the store's engine next to fio, JSON results) and the topology report used by
 * `spindle inspect --topology`. */
#ifndef SP_CLI_IO_H
#define SP_CLI_IO_H

#include <stdio.h>

/* `spindle io-bench [options]` (argv[0] is "io-bench"). Returns an SP_EXIT_* code: 0 ok, 1 the run
 * failed (I/O error, JSON not writable), 2 usage error (unknown option or engine, qd out of range,
 * block not a multiple of 4 KiB, missing directory). Progress goes to stderr, the table to stdout. */
int sp_cmd_iobench(int argc, char **argv);

/* Print what hwloc found (NUMA nodes, cores, GPU locality) and what was chosen: the NUMA node for
 * host memory and workers, whether memory and thread binding work, whether mlock works (and the
 * RLIMIT_MEMLOCK), and the kind of pinned host pool a run would get. Probes with a small host-pool
 * allocation and a short-lived thread, so it changes nothing about the caller. Returns 0, or
 * SP_EXIT_FAIL when hwloc could not load the topology (message printed). */
int sp_cli_print_topology(FILE *out);

#endif
