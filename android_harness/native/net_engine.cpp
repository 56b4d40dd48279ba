/* See net_engine.h. The layout plan (README.md, "The sparse network engine"): every value has the layout
 * its producer writes; a consumer that needs the other one gets a converted copy, made once per run by
 * a transpose step right before its first consumer and counted in `conversions`. */
#include "net_engine.h"

#include <string.h>

#include <algorithm>
#include <map>

#include "net_ops.h"

#ifndef XNNPACK_BUILD
#define XNNPACK_BUILD "executorch-unknown"
#endif

namespace {

struct value_state {
  std::vector<int64_t> shape;
  bool layout_free = true;  /* [1, C], C == 1 or H*W == 1: both layouts are the same bytes */
  net_layout home = net_layout::nchw;
  float* data[2] = {nullptr, nullptr};  /* by layout: [0] NCHW, [1] NHWC */
};

int slot(net_layout l) { return l == net_layout::nchw ? 0 : 1; }

size_t count_of(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= (size_t) d;
  return n;
}

/* The NCHW build: the wheel where its SpMM runs (arm64), else Debian's 2022 build in a linker namespace
 * of its own (x86 hosts, where the wheel says unsupported hardware), as convbench chooses. */
void open_nchw_build(net_context& ctx) {
  enum xnn_status st = build_probe_spmm(&ctx.wheel);
  if (st == xnn_status_success) {
    ctx.nchw = &ctx.wheel;
    return;
  }
  std::string why = std::string(ctx.wheel.name) + " says " + build_status_name(st) + " for NCHW convolutions";
#ifdef XNNPACK_DEBIAN_BUILD
  if (st == xnn_status_unsupported_hardware) {
    char reason[256];
    if (build_open_debian(&ctx.debian, XNNPACK_DEBIAN_BUILD, reason, sizeof reason) != 0) {
      why += std::string(" and ") + reason;
    } else if ((st = build_probe_spmm(&ctx.debian)) != xnn_status_success) {
      why += std::string(" and so does ") + ctx.debian.name + " (" + build_status_name(st) + ")";
    } else {
      ctx.nchw = &ctx.debian;
      return;
    }
  }
#endif
  ctx.nchw_missing = "no XNNPACK build here runs NCHW sparse convolutions (" + why + ")";
}

class planner {
 public:
  planner(net_context& ctx, int* conversions) : ctx_(ctx), conversions_(conversions) {}

  value_state& value(const std::string& name) { return values_[name]; }

  float* define(const std::string& name, const std::vector<int64_t>& shape, std::string* err) {
    value_state& v = values_[name];
    v.shape = shape;
    v.layout_free = shape.size() != 4 || shape[1] == 1 || shape[2] * shape[3] == 1;
    return v.data[0] = v.data[1] = ctx_.floats(count_of(shape), err);
  }

  void settle(const std::string& name, net_layout home) {
    value_state& v = values_[name];
    v.home = home;
    v.data[1 - slot(home)] = v.layout_free ? v.data[slot(home)] : nullptr;
  }

  /* The value in `want` layout, converting it (one more step per run) the first time it is asked. */
  const float* need(const std::string& name, net_layout want, std::string* err) {
    value_state& v = values_[name];
    if (v.data[slot(want)] != nullptr) return v.data[slot(want)];
    const size_t c = (size_t) v.shape[1], hw = (size_t) (v.shape[2] * v.shape[3]);
    float* copy = ctx_.floats(c * hw, err);
    if (copy == nullptr || !net_convert(ctx_, want, c, hw, v.data[slot(v.home)], copy, err)) return nullptr;
    ++*conversions_;
    return v.data[slot(want)] = copy;
  }

 private:
  net_context& ctx_;
  int* conversions_;
  std::map<std::string, value_state> values_;
};

net_dims dims_of(const std::vector<int64_t>& in, const std::vector<int64_t>& out) {
  auto dim = [](const std::vector<int64_t>& s, size_t i) { return i < s.size() ? (size_t) s[i] : (size_t) 1; };
  return {dim(in, 1), dim(in, 2), dim(in, 3), dim(out, 1), dim(out, 2), dim(out, 3)};
}

bool pool_failed(size_t threads, std::string* err) {
  *err = "could not create a thread pool of " + std::to_string(threads) + " threads";
  return false;
}

/* XNNPACK's own sparse inference for the nodes before *first, where the network qualifies and XNNPACK
 * rewrites it here; otherwise nothing is set up and e.not_xnnpack says why. False only on a failure. */
bool run_cluster(net_context& ctx, const net_file& net, planner& plan, net_engine& e, size_t* first, std::string* err) {
  net_cluster cluster;
  xnn_runtime_t runtime = nullptr;
  if (!net_cluster_find(net, &cluster, &e.not_xnnpack)) return true;
  if (!net_cluster_build(ctx, net, cluster, &runtime, &e.not_xnnpack, err)) return false;
  if (runtime == nullptr) return true;
  /* XNNPACK's stem reads NHWC: the input's one conversion, then the runtime writes the pooled [1, C]. */
  const float* in = plan.need(net.input_name, net_layout::nhwc, err);
  const net_node& pool = net.nodes[cluster.end - 1];
  float* out = in ? plan.define(pool.output, net.shapes.at(pool.output), err) : nullptr;
  if (out == nullptr || !net_cluster_setup(ctx, runtime, in, out, err)) return false;
  plan.settle(pool.output, net_layout::nchw);
  e.sparse_layers = cluster.spmm_layers;
  e.sparse_path = "xnnpack";
  e.xnnpack_sparse = ctx.wheel.name;
  *first = cluster.end;
  return true;
}

}  // namespace

net_engine::net_engine() = default;
net_engine::~net_engine() = default;

bool net_engine::load(const net_file& net, size_t threads, double max_bytes, net_sparse_path path, std::string* err) {
  ctx_.reset(new net_context);
  net_context& ctx = *ctx_;
  ctx.max_bytes = max_bytes - (double) net.file_bytes;
  if (build_open_wheel(&ctx.wheel, XNNPACK_BUILD) != 0) {
    *err = std::string("the XNNPACK of ") + XNNPACK_BUILD + " cannot initialise on this CPU";
    return false;
  }
  xnnpack = ctx.wheel.name;
  const bool any_sparse = std::any_of(net.nodes.begin(), net.nodes.end(), [](const net_node& n) { return n.sparse; });
  if (build_pool(&ctx.wheel, (int64_t) threads, &ctx.wheel_pool) != 0) return pool_failed(threads, err);

  planner plan(ctx, &conversions);
  /* The input arrives NCHW, as torch and the check tensor lay it out. */
  input_count_ = count_of(net.shapes.at(net.input_name));
  if ((input_ = plan.define(net.input_name, net.shapes.at(net.input_name), err)) == nullptr) return false;
  plan.settle(net.input_name, net_layout::nchw);
  size_t first = 0;  /* nodes before it run inside XNNPACK's sparse-inference runtime */
  if (any_sparse && path != net_sparse_path::segments && !run_cluster(ctx, net, plan, *this, &first, err)) return false;
  if (any_sparse && path == net_sparse_path::xnnpack && first == 0) {
    *err = "the network cannot run with XNNPACK's sparse inference here: " + not_xnnpack;
    return false;
  }
  if (any_sparse && first == 0) {
    sparse_path = "segments";
    open_nchw_build(ctx);
    if (ctx.nchw == &ctx.debian && build_pool(&ctx.debian, (int64_t) threads, &ctx.nchw_pool) != 0)
      return pool_failed(threads, err);
    if (ctx.nchw == &ctx.wheel) ctx.nchw_pool = ctx.wheel_pool;
  }
  for (size_t index = first; index < net.nodes.size(); index++) {
    const net_node& n = net.nodes[index];
    value_state& in = plan.value(n.inputs[0]);
    const std::vector<int64_t>& out_shape = net.shapes.at(n.output);
    const net_dims d = dims_of(in.shape, out_shape);
    float* out = plan.define(n.output, out_shape, err);
    if (out == nullptr) return false;
    const float* src = nullptr;
    net_layout layout = net_layout::nhwc;
    bool ok = true;
    switch (n.op) {
      case net_op::conv2d:
        if (n.sparse) {
          layout = net_layout::nchw;
          ok = (src = plan.need(n.inputs[0], layout, err)) && net_conv_sparse(ctx, n, d, src, out, err);
          sparse_layers.push_back(n.name);
          break;
        }
        /* A depthwise convolution whose input is already NCHW stays NCHW where the NCHW build runs it. */
        if (ctx.nchw != nullptr && !in.layout_free && in.home == net_layout::nchw && net_nchw_depthwise_shape(n) &&
            net_dwconv_nchw(ctx, n, d, in.data[slot(net_layout::nchw)], out) == xnn_status_success) {
          layout = net_layout::nchw;
          break;
        }
        ok = (src = plan.need(n.inputs[0], layout, err)) && net_conv_nhwc(ctx, n, d, src, out, err);
        break;
      case net_op::add: {
        const value_state& b = plan.value(n.inputs[1]);
        layout = !in.layout_free ? in.home : !b.layout_free ? b.home : net_layout::nhwc;
        const float* a_src = plan.need(n.inputs[0], layout, err);
        const float* b_src = a_src ? plan.need(n.inputs[1], layout, err) : nullptr;
        ok = b_src && net_add(ctx, n, count_of(out_shape), a_src, b_src, out, err);
        break;
      }
      case net_op::max_pool2d:
        ok = (src = plan.need(n.inputs[0], layout, err)) && net_max_pool(ctx, n, d, src, out, err);
        break;
      case net_op::global_avg_pool:
        /* A mean over H and W in whichever layout the value has: no conversion. */
        if (!in.layout_free) layout = in.home;
        ok = net_global_avg_pool(ctx, n, d, layout, in.data[slot(layout)], out, err);
        break;
      case net_op::linear:
        ok = net_linear(ctx, n, in.data[slot(in.home)], out, err);
        break;
    }
    if (!ok) return false;
    plan.settle(n.output, layout);
  }
  output_count_ = count_of(net.shapes.at(net.output));
  output_ = plan.need(net.output, net_layout::nchw, err);
  if (output_ == nullptr) return false;
  if (ctx.nchw_used) xnnpack_sparse = ctx.nchw->name;
  return true;
}

bool net_engine::run(const float* input, std::string* err) {
  /* As Module::execute copies the input into the program's planned buffer. */
  memcpy(input_, input, input_count_ * sizeof(float));
  for (const net_step& step : ctx_->steps)
    if (!net_run_step(step, err)) return false;
  return true;
}
