/* XNNPACK's own sparse inference for the sparse network engine: a network that is, up to its global average
 * pool, one MobileNet-style cluster (Fast Sparse ConvNets' conditions) is built as one XNNPACK subgraph with
 * sparse inference hinted, and runs NCHW with the SpMM kernel wherever XNNPACK agrees to rewrite it. */
#ifndef PTEBENCH_NET_CLUSTER_H
#define PTEBENCH_NET_CLUSTER_H

#include <stddef.h>

#include <string>
#include <vector>

#include "net_ops.h"

/* How the engine runs a network's sparse layers: XNNPACK's rewrite where the network qualifies and the
 * hardware has it (auto), only that (xnnpack: refused where it does not happen), or the engine's own
 * NCHW SpMM segments (segments). */
enum class net_sparse_path { auto_, xnnpack, segments };

struct net_cluster {
  size_t end = 0;                         /* nodes [0, end) form the cluster; node end - 1 is the pool */
  std::vector<std::string> spmm_layers;   /* its 1x1 convolutions: NCHW SpMM once rewritten */
  size_t zeros = 0, weights = 0;          /* zeros among those convolutions' weights */
};

/* Whether the network qualifies: a 3x3 stride-2 stem on 3 channels, then only 1x1 stride-1 convolutions,
 * 3x3/5x5 depthwise ones and adds up to a global average pool that only linear layers follow, with more
 * than 2/3 of the 1x1 weights zero. False with the first reason it does not, in why. */
bool net_cluster_find(const net_file& net, net_cluster* cluster, std::string* why);

/* Creates the cluster's XNNPACK runtime on the wheel's build and pool, sparse inference hinted. *runtime is
 * the runtime when XNNPACK switched the cluster to NCHW (its operator names say so), else nullptr and
 * *why says so. False (one sentence in err) only on an XNNPACK failure. */
bool net_cluster_build(net_context& ctx, const net_file& net, const net_cluster& cluster, xnn_runtime_t* runtime,
                       std::string* why, std::string* err);

/* Whether XNNPACK's sparse inference happens on this CPU: it rewrites the smallest qualifying cluster to NCHW
 * (false on x86 with AVX, true on arm64 with NEON). */
bool net_cluster_probe();

/* Points the runtime at the NHWC input and the pool's [1, C] output and appends it as a step. */
bool net_cluster_setup(net_context& ctx, xnn_runtime_t runtime, const float* in, float* out, std::string* err);

#endif
