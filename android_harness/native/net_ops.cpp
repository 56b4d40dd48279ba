/* See net_ops.h. Operators are created as ExecuTorch's XNNPACK subgraph creates them for the same node
 * (dense convolutions NHWC with the bias and clamp fused, pf32 where the wheel has it; an add followed by
 * a clamp node when it has an activation; mean as a reduce), sparse ones as convbench times them. */
#include "net_ops.h"

#include <stdlib.h>
#include <string.h>

#include <cmath>

namespace {

/* XNNPACK may read up to XNN_EXTRA_BYTES (16) past an input; a buffer gets more than that. */
const size_t kSlackBytes = 64;

bool status_ok(enum xnn_status st, const xnn_build* build, const net_node& n, const char* what, std::string* err) {
  if (st == xnn_status_success) return true;
  *err = "XNNPACK (" + std::string(build->name) + ") could not " + what + " of layer " + n.name + ": " + build_status_name(st);
  return false;
}

net_step& wheel_step(net_context& ctx, xnn_operator_t op) {
  net_step s;
  s.build = &ctx.wheel;
  s.pool = ctx.wheel_pool;
  s.op = op;
  ctx.steps.push_back(s);
  return ctx.steps.back();
}

}  // namespace

void net_clamp(net_activation a, float* lo, float* hi) {
  *lo = a == net_activation::none ? -INFINITY : 0.0f;
  *hi = a == net_activation::relu6 ? 6.0f : INFINITY;
}

bool net_nchw_depthwise_shape(const net_node& n) {
  return n.groups > 1 && (n.k == 3 || n.k == 5) && (n.stride == 1 || n.stride == 2) && n.pad == n.k / 2;
}

net_context::~net_context() {
  for (net_step& s : steps) {
    if (s.op != nullptr) s.build->delete_op(s.op);
    if (s.runtime != nullptr) xnn_delete_runtime(s.runtime);
    free(s.workspace);
  }
  for (void* b : buffers) free(b);
  if (wheel.initialized) build_close(&wheel);
  if (debian.initialized) build_close(&debian);
}

float* net_context::floats(size_t count, std::string* err) {
  const size_t size = count * sizeof(float) + kSlackBytes;
  bytes += (double) size;
  void* p = nullptr;
  if (bytes > max_bytes || posix_memalign(&p, 64, size) != 0) {
    *err = "the network's values need more than --max-mb of memory";
    return nullptr;
  }
  memset(p, 0, size);
  buffers.push_back(p);
  return static_cast<float*>(p);
}

bool net_conv_nhwc(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err) {
  /* XNNPACK's NHWC kernel is OHWI; the file's is OIHW. Repacked once here, as the delegate packs at load. */
  std::vector<float> ohwi(n.weight->count);
  const size_t cin_g = (size_t) (n.cin / n.groups);
  oihw_to_ohwi(n.weight->data, ohwi.data(), (size_t) n.cout, cin_g, (size_t) n.k);
  const conv_shape shape = {(uint32_t) n.pad, (uint32_t) n.k, (uint32_t) n.stride, (uint32_t) n.groups, cin_g,
                            (size_t) (n.cout / n.groups), d.c, d.out_c};
  float lo, hi;
  net_clamp(n.activation, &lo, &hi);
  xnn_operator_t op = nullptr;
  enum xnn_status st = build_create_fused(&ctx.wheel, 0, &shape, ohwi.data(), n.bias ? n.bias->data : nullptr, lo, hi, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the NHWC convolution", err)) return false;
  net_step& s = wheel_step(ctx, op);
  st = build_setup(&ctx.wheel, 0, &shape, op, d.h, d.w, d.out_h, d.out_w, in, out, ctx.wheel_pool, &s.workspace);
  return status_ok(st, &ctx.wheel, n, "set up the NHWC convolution", err);
}

bool net_conv_sparse(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err) {
  if (ctx.nchw == nullptr) {
    *err = "layer " + n.name + " is sparse, but " + ctx.nchw_missing;
    return false;
  }
  /* A 1x1, unpadded, stride-1 NCHW convolution is the case XNNPACK runs with its SpMM kernel; anything
   * else becomes one through im2col (rows (c, ky, kx), matching flattened OIHW weights), as convbench. */
  const bool direct = n.k == 1 && n.stride == 1 && n.pad == 0;
  const size_t rows = d.c * (size_t) (n.k * n.k);
  net_step s;
  s.build = ctx.nchw;
  s.pool = ctx.nchw_pool;
  s.source = in;
  if (!direct) {
    if ((double) rows * (double) d.out_h * (double) d.out_w > 2147483647.0) {
      *err = "layer " + n.name + " would need an im2col matrix of more than 2^31 elements";
      return false;
    }
    s.im2col = true;
    s.geometry.cin = (int64_t) d.c;
    s.geometry.k = n.k;
    s.geometry.stride = n.stride;
    s.geometry.pad = n.pad;
    s.geometry.h = (int64_t) d.h;
    s.geometry.w = (int64_t) d.w;
    s.geometry.out_h = (int64_t) d.out_h;
    s.geometry.out_w = (int64_t) d.out_w;
    if ((s.columns = ctx.floats(rows * d.out_h * d.out_w, err)) == nullptr) return false;
  }
  const conv_shape shape = {0, 1, 1, 1, rows, d.out_c, rows, d.out_c};
  float lo, hi;
  net_clamp(n.activation, &lo, &hi);
  enum xnn_status st = build_create_fused(ctx.nchw, 1, &shape, n.weight->data, n.bias ? n.bias->data : nullptr, lo, hi, &s.op);
  if (!status_ok(st, ctx.nchw, n, "create the sparse (SpMM) convolution", err)) return false;
  ctx.steps.push_back(s);
  ctx.nchw_used = true;
  st = build_setup(ctx.nchw, 1, &shape, s.op, d.out_h, d.out_w, d.out_h, d.out_w, direct ? in : s.columns, out, ctx.nchw_pool,
                   &ctx.steps.back().workspace);
  return status_ok(st, ctx.nchw, n, "set up the sparse (SpMM) convolution", err);
}

enum xnn_status net_dwconv_nchw(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out) {
  const conv_shape shape = {(uint32_t) n.pad, (uint32_t) n.k, (uint32_t) n.stride, (uint32_t) n.groups, 1, 1, d.c, d.out_c};
  float lo, hi;
  net_clamp(n.activation, &lo, &hi);
  net_step s;
  s.build = ctx.nchw;
  s.pool = ctx.nchw_pool;
  enum xnn_status st = build_create_fused(ctx.nchw, 1, &shape, n.weight->data, n.bias ? n.bias->data : nullptr, lo, hi, &s.op);
  if (st != xnn_status_success) return st;
  st = build_setup(ctx.nchw, 1, &shape, s.op, d.h, d.w, d.out_h, d.out_w, in, out, ctx.nchw_pool, &s.workspace);
  if (st != xnn_status_success) {
    ctx.nchw->delete_op(s.op);
    free(s.workspace);
    return st;
  }
  ctx.steps.push_back(s);
  ctx.nchw_used = true;
  return st;
}

bool net_add(net_context& ctx, const net_node& n, size_t count, const float* a, const float* b, float* out, std::string* err) {
  xnn_operator_t op = nullptr;
  enum xnn_status st = xnn_create_binary_elementwise_nd(xnn_binary_add, xnn_datatype_fp32, nullptr, nullptr, nullptr, 0, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the add", err)) return false;
  wheel_step(ctx, op);
  st = xnn_reshape_binary_elementwise_nd(op, 1, &count, 1, &count, ctx.wheel_pool);
  if (st == xnn_status_success) st = xnn_setup_binary_elementwise_nd(op, a, b, out);
  if (!status_ok(st, &ctx.wheel, n, "set up the add", err)) return false;
  if (n.activation == net_activation::none) return true;
  /* The subgraph has no fused activation for binary operators: it inserts a clamp node after them. */
  union xnn_unary_params params;
  net_clamp(n.activation, &params.clamp.min, &params.clamp.max);
  st = xnn_create_unary_elementwise_nc(xnn_unary_clamp, xnn_datatype_fp32, xnn_datatype_fp32, &params, nullptr, nullptr, nullptr, 0, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the clamp after the add", err)) return false;
  wheel_step(ctx, op);
  st = xnn_reshape_unary_elementwise_nc(op, 1, count, count, count, ctx.wheel_pool);
  if (st == xnn_status_success) st = xnn_setup_unary_elementwise_nc(op, out, out);
  return status_ok(st, &ctx.wheel, n, "set up the clamp after the add", err);
}

bool net_max_pool(net_context& ctx, const net_node& n, const net_dims& d, const float* in, float* out, std::string* err) {
  xnn_operator_t op = nullptr;
  const uint32_t p = (uint32_t) n.pad, k = (uint32_t) n.k, s = (uint32_t) n.stride;
  enum xnn_status st = xnn_create_max_pooling2d_nhwc_f32(p, p, p, p, k, k, s, s, 1, 1, -INFINITY, INFINITY, 0, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the max pooling", err)) return false;
  wheel_step(ctx, op);
  size_t oh = 0, ow = 0;
  st = xnn_reshape_max_pooling2d_nhwc_f32(op, 1, d.h, d.w, d.c, d.c, d.c, &oh, &ow, ctx.wheel_pool);
  if (st == xnn_status_success && (oh != d.out_h || ow != d.out_w)) st = BUILD_WRONG_OUTPUT_SIZE;
  if (st == xnn_status_success) st = xnn_setup_max_pooling2d_nhwc_f32(op, in, out);
  return status_ok(st, &ctx.wheel, n, "set up the max pooling", err);
}

bool net_global_avg_pool(net_context& ctx, const net_node& n, const net_dims& d, net_layout layout, const float* in,
                         float* out, std::string* err) {
  xnn_operator_t op = nullptr;
  enum xnn_status st = xnn_create_reduce_nd(xnn_reduce_mean, xnn_datatype_fp32, nullptr, nullptr, 0, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the mean", err)) return false;
  wheel_step(ctx, op);
  const size_t nchw[4] = {1, d.c, d.h, d.w}, nhwc[4] = {1, d.h, d.w, d.c};
  const int64_t nchw_axes[2] = {2, 3}, nhwc_axes[2] = {1, 2};
  const bool planar = layout == net_layout::nchw;
  /* float32 accumulates in place: the subgraph asks for no workspace and passes none (with one, the
   * operator would convert the accumulator through a float32 -> float32 kernel that does not exist). */
  st = xnn_reshape_reduce_nd(op, 2, planar ? nchw_axes : nhwc_axes, 4, planar ? nchw : nhwc, nullptr, ctx.wheel_pool);
  if (st == xnn_status_success) st = xnn_setup_reduce_nd(op, nullptr, in, out);
  return status_ok(st, &ctx.wheel, n, "set up the mean", err);
}

bool net_linear(net_context& ctx, const net_node& n, const float* in, float* out, std::string* err) {
  xnn_operator_t op = nullptr;
  const size_t cin = (size_t) n.cin, cout = (size_t) n.cout;
  enum xnn_status st = xnn_create_fully_connected_nc_f32(cin, cout, cin, cout, n.weight->data, n.bias ? n.bias->data : nullptr,
                                                         -INFINITY, INFINITY, 0, nullptr, &op);
  if (!status_ok(st, &ctx.wheel, n, "create the fully connected layer", err)) return false;
  wheel_step(ctx, op);
  st = xnn_reshape_fully_connected_nc_f32(op, 1, ctx.wheel_pool);
  if (st == xnn_status_success) st = xnn_setup_fully_connected_nc_f32(op, in, out);
  return status_ok(st, &ctx.wheel, n, "set up the fully connected layer", err);
}

bool net_convert(net_context& ctx, net_layout to, size_t c, size_t hw, const float* in, float* out, std::string* err) {
  xnn_operator_t op = nullptr;
  enum xnn_status st = xnn_create_transpose_nd_x32(0, &op);
  if (st == xnn_status_success) {
    wheel_step(ctx, op);
    const size_t shape[2] = {to == net_layout::nhwc ? c : hw, to == net_layout::nhwc ? hw : c}, perm[2] = {1, 0};
    st = xnn_reshape_transpose_nd_x32(op, 2, shape, perm, ctx.wheel_pool);
    if (st == xnn_status_success) st = xnn_setup_transpose_nd_x32(op, in, out);
  }
  if (st == xnn_status_success) return true;
  *err = "XNNPACK (" + std::string(ctx.wheel.name) + ") could not set up a layout conversion: " + build_status_name(st);
  return false;
}

bool net_run_step(const net_step& s, std::string* err) {
  if (s.im2col) im2col(&s.geometry, s.source, s.columns, s.build->parallelize_1d, s.pool);
  const enum xnn_status st = s.runtime != nullptr ? xnn_invoke_runtime(s.runtime) : s.build->run(s.op, s.pool);
  if (st == xnn_status_success) return true;
  *err = "XNNPACK (" + std::string(s.build->name) + ") failed to run an operator: " + build_status_name(st);
  return false;
}
