/* See net_cluster.h. The conditions mirror xnn_check_nchw_compatibility and xnn_subgraph_rewrite_for_nchw
 * of the XNNPACK revision the wheel pins (src/subgraph.c): checked here first so the engine can say why a
 * network does not qualify, while whether the rewrite happened is read from the runtime XNNPACK made. */
#include "net_cluster.h"

#include <stdio.h>
#include <string.h>

#include <cmath>
#include <map>
#include <set>

extern "C" {
#include "tensors.h"
}

namespace {

const uint32_t kInputId = 0, kOutputId = 1;

bool is_stem(const net_node& n, const std::string& input) {
  return n.op == net_op::conv2d && n.k == 3 && n.stride == 2 && n.pad == 1 && n.groups == 1 && n.cin == 3 &&
         n.inputs[0] == input;
}

bool is_pointwise(const net_node& n) { return n.groups == 1 && n.k == 1 && n.stride == 1 && n.pad == 0; }

bool is_depthwise(const net_node& n) {
  return net_nchw_depthwise_shape(n) && n.groups == n.cin && n.cin == n.cout;
}

std::string xnn_failed(enum xnn_status st, const std::string& what) {
  return "XNNPACK could not " + what + " of the sparse-inference subgraph: " + build_status_name(st);
}

class subgraph_builder {
 public:
  subgraph_builder(net_context& ctx, const net_file& net) : ctx_(ctx), net_(net) {}
  ~subgraph_builder() {
    if (sg_ != nullptr) xnn_delete_subgraph(sg_);
  }

  bool build(const net_cluster& cluster, std::string* err) {
    enum xnn_status st = xnn_create_subgraph(2, 0, &sg_);
    if (st != xnn_status_success) return fail(xnn_failed(st, "create"), err);
    const std::vector<int64_t>& in = net_.shapes.at(net_.input_name);
    if (!value(net_.input_name, {1, (size_t) in[2], (size_t) in[3], (size_t) in[1]}, kInputId,
               XNN_VALUE_FLAG_EXTERNAL_INPUT, err))
      return false;
    for (size_t i = 0; i < cluster.end; i++)
      if (!node(net_.nodes[i], i + 1 == cluster.end, err)) return false;
    return true;
  }

  xnn_subgraph_t subgraph() const { return sg_; }

 private:
  bool fail(const std::string& what, std::string* err) {
    *err = what;
    return false;
  }

  bool value(const std::string& name, std::vector<size_t> dims, uint32_t external, uint32_t flags, std::string* err) {
    uint32_t id = XNN_INVALID_VALUE_ID;
    enum xnn_status st = xnn_define_tensor_value(sg_, xnn_datatype_fp32, dims.size(), dims.data(), nullptr, external, flags, &id);
    if (st != xnn_status_success) return fail(xnn_failed(st, "define value " + name), err);
    ids_[name] = id;
    return true;
  }

  /* Static data; XNNPACK reads it while it creates the runtime, and the engine keeps it as long. */
  bool constant(const float* data, std::vector<size_t> dims, uint32_t* id, std::string* err) {
    enum xnn_status st = xnn_define_tensor_value(sg_, xnn_datatype_fp32, dims.size(), dims.data(), data,
                                                 XNN_INVALID_VALUE_ID, 0, id);
    return st == xnn_status_success || fail(xnn_failed(st, "define a weight"), err);
  }

  bool node(const net_node& n, bool last, std::string* err) {
    const std::vector<int64_t>& s = net_.shapes.at(n.output);
    std::vector<size_t> out_dims = last ? std::vector<size_t>{1, 1, 1, (size_t) s[1]}
                                        : std::vector<size_t>{1, (size_t) s[2], (size_t) s[3], (size_t) s[1]};
    if (!value(n.output, out_dims, last ? kOutputId : XNN_INVALID_VALUE_ID, last ? XNN_VALUE_FLAG_EXTERNAL_OUTPUT : 0, err))
      return false;
    const uint32_t input = ids_.at(n.inputs[0]), output = ids_.at(n.output);
    float lo, hi;
    net_clamp(n.activation, &lo, &hi);
    enum xnn_status st = xnn_status_success;
    if (n.op == net_op::global_avg_pool) {
      st = xnn_define_global_average_pooling_2d(sg_, -INFINITY, INFINITY, input, output, XNN_FLAG_KEEP_DIMS);
    } else if (n.op == net_op::add) {
      const xnn_binary_params params = {lo, hi};
      st = xnn_define_binary(sg_, xnn_binary_add, &params, input, ids_.at(n.inputs[1]), output, 0);
    } else {
      const uint32_t p = (uint32_t) n.pad, k = (uint32_t) n.k, stride = (uint32_t) n.stride;
      const size_t cout = (size_t) n.cout, cin_g = (size_t) (n.cin / n.groups), taps = (size_t) (n.k * n.k);
      uint32_t filter = 0, bias = XNN_INVALID_VALUE_ID;
      float* packed = ctx_.floats(n.weight->count, err);
      if (packed == nullptr) return false;
      if (n.groups == 1) {
        oihw_to_ohwi(n.weight->data, packed, cout, cin_g, (size_t) n.k);
        if (!constant(packed, {cout, (size_t) k, (size_t) k, cin_g}, &filter, err)) return false;
      } else {
        nchw_to_nhwc(n.weight->data, packed, cout, taps); /* [C, 1, k, k] -> [1, k, k, C] */
        if (!constant(packed, {1, (size_t) k, (size_t) k, cout}, &filter, err)) return false;
      }
      if (n.bias != nullptr && !constant(n.bias->data, {cout}, &bias, err)) return false;
      if (n.groups == 1)
        st = xnn_define_convolution_2d(sg_, p, p, p, p, k, k, stride, stride, 1, 1, 1, cin_g, cout, lo, hi, input, filter,
                                       bias, output, 0);
      else
        st = xnn_define_depthwise_convolution_2d(sg_, p, p, p, p, k, k, stride, stride, 1, 1, 1, cout, lo, hi, input,
                                                 filter, bias, output, 0);
    }
    return st == xnn_status_success || fail(xnn_failed(st, "define layer " + n.name), err);
  }

  net_context& ctx_;
  const net_file& net_;
  xnn_subgraph_t sg_ = nullptr;
  std::map<std::string, uint32_t> ids_;
};

/* How many of a profiling runtime's operators are SpMM convolutions (named e.g. "Convolution (NCHW, F32) SPMM"). */
size_t spmm_operators(xnn_runtime_t runtime) {
  size_t size = 0;
  xnn_get_runtime_profiling_info(runtime, xnn_profile_info_operator_name, 0, nullptr, &size);
  std::vector<char> text(size + 1, '\0');
  if (size == 0 || xnn_get_runtime_profiling_info(runtime, xnn_profile_info_operator_name, size, text.data(), &size) !=
                       xnn_status_success)
    return 0;
  size_t spmm = 0;
  for (size_t at = 0; at < size; at += strlen(&text[at]) + 1) spmm += strstr(&text[at], "SPMM") != nullptr;
  return spmm;
}

}  // namespace

bool net_cluster_find(const net_file& net, net_cluster* cluster, std::string* why) {
  const std::vector<net_node>& nodes = net.nodes;
  if (nodes.empty() || !is_stem(nodes[0], net.input_name)) {
    *why = "its first layer is not a 3x3 stride-2 convolution of the 3-channel input";
    return false;
  }
  std::set<std::string> inside = {nodes[0].output};
  size_t i = 1;
  for (; i < nodes.size() && cluster->end == 0; i++) {
    const net_node& n = nodes[i];
    for (const std::string& v : n.inputs)
      if (inside.count(v) == 0) {
        *why = "layer " + n.name + " reads a value from outside the cluster";
        return false;
      }
    inside.insert(n.output);
    if (n.op == net_op::global_avg_pool) {
      cluster->end = i + 1;
    } else if (n.op == net_op::conv2d && is_pointwise(n)) {
      cluster->spmm_layers.push_back(n.name);
      cluster->weights += n.weight->count;
      for (size_t j = 0; j < n.weight->count; j++) cluster->zeros += n.weight->data[j] == 0.0f;
    } else if (!(n.op == net_op::add || (n.op == net_op::conv2d && is_depthwise(n)))) {
      *why = "layer " + n.name + " is neither a 1x1 stride-1 convolution, a 3x3/5x5 depthwise one nor an add";
      return false;
    }
  }
  if (cluster->end == 0) {
    *why = "it has no global average pool";
    return false;
  }
  const std::string& pooled = nodes[cluster->end - 1].output;
  for (; i < nodes.size(); i++) {
    for (const std::string& v : nodes[i].inputs)
      if (v != pooled && inside.count(v) != 0) {
        *why = "layer " + nodes[i].name + " reads a value from inside the cluster";
        return false;
      }
    if (nodes[i].op != net_op::linear) {
      *why = "layer " + nodes[i].name + " after the global average pool is not a linear layer";
      return false;
    }
  }
  if (net.output != pooled && inside.count(net.output) != 0) {
    *why = "its output is a value inside the cluster";
    return false;
  }
  if (cluster->zeros * 3 <= cluster->weights * 2) {
    char text[160];
    snprintf(text, sizeof text, "%.1f%% of its 1x1 weights are zero, and XNNPACK's sparse inference needs more than 2/3",
             cluster->weights ? 100.0 * (double) cluster->zeros / (double) cluster->weights : 0.0);
    *why = text;
    return false;
  }
  return true;
}

bool net_cluster_build(net_context& ctx, const net_file& net, const net_cluster& cluster, xnn_runtime_t* runtime,
                       std::string* why, std::string* err) {
  *runtime = nullptr;
  subgraph_builder builder(ctx, net);
  if (!builder.build(cluster, err)) return false;
  /* A first runtime with profiling on, only to read which operators XNNPACK made of the cluster. */
  xnn_runtime_t probe = nullptr;
  enum xnn_status st = xnn_create_runtime_v3(builder.subgraph(), nullptr, ctx.wheel_pool,
                                             XNN_FLAG_HINT_SPARSE_INFERENCE | XNN_FLAG_BASIC_PROFILING, &probe);
  if (st != xnn_status_success) {
    *err = xnn_failed(st, "create the runtime");
    return false;
  }
  const size_t spmm = spmm_operators(probe);
  xnn_delete_runtime(probe);
  if (spmm != cluster.spmm_layers.size()) {
    *why = std::string("XNNPACK (") + ctx.wheel.name + ") " +
           (spmm == 0 ? std::string("did not rewrite it to NCHW on this CPU")
                      : "ran " + std::to_string(spmm) + " of its " + std::to_string(cluster.spmm_layers.size()) +
                            " 1x1 convolutions with SpMM");
    return true;
  }
  st = xnn_create_runtime_v3(builder.subgraph(), nullptr, ctx.wheel_pool, XNN_FLAG_HINT_SPARSE_INFERENCE, runtime);
  if (st != xnn_status_success) {
    *err = xnn_failed(st, "create the runtime");
    return false;
  }
  return true;
}

bool net_cluster_setup(net_context& ctx, xnn_runtime_t runtime, const float* in, float* out, std::string* err) {
  net_step s;
  s.build = &ctx.wheel;
  s.pool = ctx.wheel_pool;
  s.runtime = runtime;
  ctx.steps.push_back(s); /* owned by the context from here on, whatever follows */
  const xnn_external_value externals[2] = {{kInputId, const_cast<float*>(in)}, {kOutputId, out}};
  enum xnn_status st = xnn_reshape_runtime(runtime);
  if (st == xnn_status_success) st = xnn_setup_runtime_v2(runtime, 2, externals);
  if (st == xnn_status_success) return true;
  *err = xnn_failed(st, "set up the runtime");
  return false;
}

bool net_cluster_probe() {
  if (xnn_initialize(nullptr) != xnn_status_success) return false;
  /* The smallest qualifying cluster: 3x3 stride-2 stem 3 -> 8 on 8x8, a 1x1 8 -> 8 with 7/8 zeros, the pool. */
  static float stem[8 * 3 * 3 * 3], pointwise[8 * 8], bias[8];
  for (float& w : stem) w = 0.125f;
  for (size_t o = 0; o < 8; o++) pointwise[o * 8 + o] = 1.0f;
  xnn_subgraph_t sg = nullptr;
  xnn_runtime_t runtime = nullptr;
  uint32_t in = 0, mid = 0, pw = 0, out = 0, w0 = 0, w1 = 0, b = 0;
  const size_t in_dims[4] = {1, 8, 8, 3}, mid_dims[4] = {1, 4, 4, 8}, out_dims[4] = {1, 1, 1, 8};
  const size_t stem_dims[4] = {8, 3, 3, 3}, pw_dims[4] = {8, 1, 1, 8}, b_dims[1] = {8};
  const uint32_t none = XNN_INVALID_VALUE_ID;
  bool ok = xnn_create_subgraph(2, 0, &sg) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, in_dims, nullptr, kInputId, XNN_VALUE_FLAG_EXTERNAL_INPUT, &in) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, mid_dims, nullptr, none, 0, &mid) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, mid_dims, nullptr, none, 0, &pw) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, out_dims, nullptr, kOutputId, XNN_VALUE_FLAG_EXTERNAL_OUTPUT, &out) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, stem_dims, stem, none, 0, &w0) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 4, pw_dims, pointwise, none, 0, &w1) == xnn_status_success &&
            xnn_define_tensor_value(sg, xnn_datatype_fp32, 1, b_dims, bias, none, 0, &b) == xnn_status_success &&
            xnn_define_convolution_2d(sg, 1, 1, 1, 1, 3, 3, 2, 2, 1, 1, 1, 3, 8, 0.0f, 6.0f, in, w0, b, mid, 0) == xnn_status_success &&
            xnn_define_convolution_2d(sg, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 8, 8, 0.0f, 6.0f, mid, w1, b, pw, 0) == xnn_status_success &&
            xnn_define_global_average_pooling_2d(sg, -INFINITY, INFINITY, pw, out, XNN_FLAG_KEEP_DIMS) == xnn_status_success &&
            xnn_create_runtime_v3(sg, nullptr, nullptr, XNN_FLAG_HINT_SPARSE_INFERENCE | XNN_FLAG_BASIC_PROFILING, &runtime) ==
                xnn_status_success;
  const size_t spmm = ok ? spmm_operators(runtime) : 0;
  if (runtime != nullptr) xnn_delete_runtime(runtime);
  if (sg != nullptr) xnn_delete_subgraph(sg);
  return spmm == 1;
}
