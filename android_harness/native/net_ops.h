/* The network engine's operators (internal to net_engine.cpp): each node becomes steps whose XNNPACK
 * operators are created, packed and set up once at load, on the build and pool that run them; a run
 * is then only xnn_run_operator per step (im2col in front of a sparse k > 1 convolution). */
#ifndef PTEBENCH_NET_OPS_H
#define PTEBENCH_NET_OPS_H

#include <string>
#include <vector>

extern "C" {
#include "builds.h"
#include "tensors.h"
}
#include "net_file.h"

enum class net_layout { nchw, nhwc };

struct net_step {
  const xnn_build* build = nullptr;  /* whose run/delete functions and pool this step uses */
  pthreadpool_t pool = nullptr;
  xnn_operator_t op = nullptr;
  xnn_runtime_t runtime = nullptr;   /* instead of op: a whole XNNPACK runtime (net_cluster.h), invoked */
  void* workspace = nullptr;
  bool im2col = false;               /* columns = im2col(source) first (sparse convolution, k > 1 or strided/padded) */
  plan_line geometry{};              /* im2col's input and kernel geometry */
  const float* source = nullptr;
  float* columns = nullptr;
};

/* The builds, their pools and every buffer of one loaded network. */
struct net_context {
  xnn_build wheel{}, debian{};
  const xnn_build* nchw = nullptr;   /* the build whose NCHW convolutions run here (nullptr: none) */
  std::string nchw_missing;          /* why there is none */
  pthreadpool_t wheel_pool = nullptr, nchw_pool = nullptr;
  bool nchw_used = false;
  std::vector<net_step> steps;
  std::vector<void*> buffers;
  double bytes = 0, max_bytes = 0;

  ~net_context();
  /* Zeroed, 64-byte aligned, with slack XNNPACK may read past the end; nullptr (and err) past max_bytes. */
  float* floats(size_t count, std::string* err);
};

/* The output clamp of an activation (-inf..inf when none). */
void net_clamp(net_activation a, float* lo, float* hi);

/* XNNPACK's NCHW depthwise kernels: 3x3 or 5x5, stride 1 or 2, "same" padding. */
bool net_nchw_depthwise_shape(const net_node& n);

/* Image geometry of a node: input channels/height/width and output height/width. */
struct net_dims {
  size_t c, h, w, out_c, out_h, out_w;
};

/* Each appends the node's steps; false with one sentence in err. */
bool net_conv_nhwc(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err);
bool net_conv_sparse(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err);
/* A depthwise 3x3/5x5 convolution on NCHW data: xnn_status_success, or the build's refusal (then
 * nothing was appended and the caller runs it NHWC). */
enum xnn_status net_dwconv_nchw(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out);
bool net_add(net_context& ctx, const net_node& n, size_t count, const float* a, const float* b, float* out, std::string* err);
bool net_max_pool(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err);
bool net_global_avg_pool(net_context& ctx, const net_node& n, const net_dims& d, net_layout layout, const float* in,
                         float* out, std::string* err);
bool net_linear(net_context& ctx, const net_node& n, const float* in, float* out, std::string* err);
/* One layout conversion of a c x hw image (NCHW -> NHWC when to == nhwc), on the wheel's pool. */
bool net_convert(net_context& ctx, net_layout to, size_t c, size_t hw, const float* in, float* out, std::string* err);

bool net_run_step(const net_step& step, std::string* err);

#endif
