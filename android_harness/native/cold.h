/* Cold-weight timing (--weights cold): the last-level cache size and how many copies of a layer's
 * operator (each with its own packed weights and output) a timed rotation needs so that every timed run
 * reads weights that are no longer cached, as XNNPACK's own operator benchmarks rotate theirs. */
#ifndef CONVBENCH_COLD_H
#define CONVBENCH_COLD_H

#include <stddef.h>

/* Never more copies than this, whatever the layer: a tiny layer (a few KB of weights) would otherwise
 * need tens of thousands of operators, whose creation would cost more than its timing. Result lines say
 * how many copies ran and how many bytes they rotate over, so a rotation smaller than the cache shows. */
#define COLD_MAX_COPIES 4096

struct cache_size {
  size_t bytes;       /* the largest (last-level) cache */
  const char* source; /* "cpuinfo", "sysfs" or "fallback" */
};

/* The last-level cache size: cpuinfo's largest cache (what XNNPACK's benchmarks use), else the
 * highest-level cache of cpu0 in sysfs, else XNNPACK's benchmark fallback (4 MB on Arm, the largest
 * DynamIQ L3; 128 MB elsewhere, the largest Intel eDRAM). Computed once. */
const struct cache_size* cold_cache_size(void);

/* Rotate over `bytes` instead (--cold-bytes; source "--cold-bytes"): a host whose last-level cache holds every
 * network it runs (a server's hundreds of MB) serves a layer's weights from that cache, not from memory, and
 * a rotation past it costs minutes per profile for a latency no network there pays. Call before any timing. */
void cold_set_cache_size(size_t bytes);

/* "4M", "512K", "2097152" -> bytes (K, M, G are powers of 1024); 0 when not a positive size. */
size_t cold_parse_size(const char* text);

/* Copies to rotate over: 1 + ceil(cache / bytes_per_copy) (XNNPACK's formula: the other copies alone
 * exceed the cache), at most COLD_MAX_COPIES. bytes_per_copy is what one run touches that no other copy
 * touches (packed weights and output), counted low so that the rotation never falls short of the cache. */
size_t cold_copies(double bytes_per_copy, size_t cache_bytes);

#endif
