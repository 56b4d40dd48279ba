/* The sparse network engine: runs a jcw network file (net_file.h) end to end on the wheel's XNNPACK,
 * dense layers NHWC as ExecuTorch's delegate runs them, sparse ones NCHW with the SpMM kernel, and the
 * layout conversions between them; all planned and set up at load, so a run only runs operators. */
#ifndef PTEBENCH_NET_ENGINE_H
#define PTEBENCH_NET_ENGINE_H

#include <stddef.h>

#include <memory>
#include <string>
#include <vector>

#include "net_cluster.h"
#include "net_file.h"

struct net_context;

class net_engine {
 public:
  net_engine();
  ~net_engine();
  net_engine(const net_engine&) = delete;
  net_engine& operator=(const net_engine&) = delete;

  /* Opens the builds, plans layouts, allocates every value (at most max_bytes) and creates, packs and
   * sets up every operator for `threads` threads; sparse layers run as `path` says (net_cluster.h).
   * False with one sentence in err. */
  bool load(const net_file& net, size_t threads, double max_bytes, net_sparse_path path, std::string* err);
  /* One whole inference: copies `input` (NCHW, the network's input shape) in, runs every step. */
  bool run(const float* input, std::string* err);
  const float* output() const { return output_; }  /* NCHW, as torch lays it out */
  size_t output_count() const { return output_count_; }

  std::vector<std::string> sparse_layers;  /* convolutions run with the sparse kernel, in node order */
  int conversions = 0;                     /* NHWC <-> NCHW conversions per run */
  std::string xnnpack, xnnpack_sparse;     /* builds of the NHWC and of the NCHW operators ("" if none ran) */
  std::string sparse_path;                 /* "xnnpack" (its own sparse inference), "segments", "" (none sparse) */
  std::string not_xnnpack;                 /* why a network with sparse layers runs them as segments */

 private:
  std::unique_ptr<net_context> ctx_;
  float* input_ = nullptr;
  size_t input_count_ = 0;
  const float* output_ = nullptr;
  size_t output_count_ = 0;
};

#endif
