/* The few C entry points convbench calls in the XNNPACK, pthreadpool and cpuinfo that the pinned
 * ExecuTorch wheel ships inside libexecutorch_backend_xnnpack.so / libexecutorch_threadpool.so
 * (the wheel ships no headers). Declared by hand from the revisions executorch 1.5.1 pins:
 *   XNNPACK     92a7ad501b9516f9fecae119e0146dd1f58e54c1  (include/xnnpack.h)
 *   pthreadpool a56dcd79c699366e7ac6466792c3025883ff7704  (include/pthreadpool.h; the calls below
 *               are unchanged from Debian's 2021 snapshot to google/pthreadpool of 2025-10)
 *   cpuinfo     f9a03241f8c3d4ed0c9728f5d70bff873d43d4e0  (include/cpuinfo.h)
 * (executorch's submodule pins from its 1.5.0 version bump on; the wheel exports every function of
 * that XNNPACK revision's xnnpack.h, including the qd8_bf16_qb4w ones that revision introduced).
 * A wrong declaration shows up as a crash, a wrong output size or a wrong output, which the runner's
 * checks (builds.c, bench.c) and tests/test_runner.py's comparison with torch all catch. */
#ifndef CONVBENCH_XNN_API_H
#define CONVBENCH_XNN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- pthreadpool ---- */
typedef struct pthreadpool* pthreadpool_t;
typedef void (*pthreadpool_task_1d_t)(void* context, size_t index);

pthreadpool_t pthreadpool_create(size_t threads_count);
void pthreadpool_destroy(pthreadpool_t threadpool);
void pthreadpool_parallelize_1d(pthreadpool_t threadpool, pthreadpool_task_1d_t function, void* context,
                                size_t range, uint32_t flags);

/* ---- cpuinfo ---- */
/* struct cpuinfo_package starts with `char name[CPUINFO_PACKAGE_NAME_MAX]` (64 in this revision);
 * convbench reads only that name, so the rest of the struct stays opaque. */
#define CONVBENCH_CPUINFO_PACKAGE_NAME_MAX 64
struct cpuinfo_package;
bool cpuinfo_initialize(void);
uint32_t cpuinfo_get_processors_count(void);
const struct cpuinfo_package* cpuinfo_get_package(uint32_t index);
/* Size in bytes of the largest cache (0 when unknown): XNNPACK's benchmarks size their rotation by it. */
uint32_t cpuinfo_get_max_cache_size(void);

/* ---- XNNPACK ---- */
enum xnn_status {
  xnn_status_success = 0,
  xnn_status_uninitialized = 1,
  xnn_status_invalid_parameter = 2,
  xnn_status_invalid_state = 3,
  xnn_status_unsupported_parameter = 4,
  xnn_status_unsupported_hardware = 5,
  xnn_status_out_of_memory = 6,
  xnn_status_reallocation_required = 7,
  xnn_status_deprecated = 8,
};

struct xnn_allocator;
typedef struct xnn_operator* xnn_operator_t;
typedef struct xnn_weights_cache_provider* xnn_weights_cache_t;

enum xnn_status xnn_initialize(const struct xnn_allocator* allocator); /* NULL: the default allocator */

enum xnn_status xnn_run_operator(xnn_operator_t op, pthreadpool_t threadpool);
enum xnn_status xnn_delete_operator(xnn_operator_t op);

/* NHWC input, OHWI kernel [output_channels][kernel_height][kernel_width][group_input_channels]. */
enum xnn_status xnn_create_convolution2d_nhwc_f32(
    uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t kernel_height, uint32_t kernel_width, uint32_t subsampling_height,
    uint32_t subsampling_width, uint32_t dilation_height, uint32_t dilation_width, uint32_t groups,
    size_t group_input_channels, size_t group_output_channels, size_t input_channel_stride,
    size_t output_channel_stride, const float* kernel, const float* bias, float output_min, float output_max,
    uint32_t flags, xnn_weights_cache_t weights_cache, xnn_operator_t* convolution_op_out);
/* Reports the scratch the operator needs; setup then takes a buffer of that many bytes. */
enum xnn_status xnn_reshape_convolution2d_nhwc_f32(
    xnn_operator_t convolution_op, size_t batch_size, size_t input_height, size_t input_width,
    size_t* workspace_size, size_t* output_height_out, size_t* output_width_out, pthreadpool_t threadpool);
enum xnn_status xnn_setup_convolution2d_nhwc_f32(xnn_operator_t convolution_op, void* workspace,
                                                 const float* input, float* output);

/* The same convolution with a packed-LHS (KleidiAI, Arm SME/SME2) GEMM: xnn_status_unsupported_hardware
 * where that config does not exist. ExecuTorch's subgraph picks it for every fp32 convolution_2d node
 * (not depthwise nodes) when it exists, with the internal flag below (src/xnnpack/operator.h). */
#define XNN_FLAG_INLINE_LHS_PACKING 0x00000200
enum xnn_status xnn_create_convolution2d_nhwc_pf32(
    uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t kernel_height, uint32_t kernel_width, uint32_t subsampling_height,
    uint32_t subsampling_width, uint32_t dilation_height, uint32_t dilation_width, uint32_t groups,
    size_t group_input_channels, size_t group_output_channels, size_t input_channel_stride,
    size_t output_channel_stride, const float* kernel, const float* bias, float output_min, float output_max,
    uint32_t flags, xnn_weights_cache_t weights_cache, xnn_operator_t* convolution_op_out);
enum xnn_status xnn_reshape_convolution2d_nhwc_pf32(
    xnn_operator_t convolution_op, size_t batch_size, size_t input_height, size_t input_width,
    size_t* workspace_size, size_t* output_height_out, size_t* output_width_out, pthreadpool_t threadpool);
enum xnn_status xnn_setup_convolution2d_nhwc_pf32(xnn_operator_t convolution_op, void* workspace,
                                                  const float* input, float* output);

/* NCHW input, OIHW kernel; a 1x1, unpadded, stride-1, single-group one runs the SpMM microkernel. */
enum xnn_status xnn_create_convolution2d_nchw_f32(
    uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t kernel_height, uint32_t kernel_width, uint32_t subsampling_height,
    uint32_t subsampling_width, uint32_t dilation_height, uint32_t dilation_width, uint32_t groups,
    size_t group_input_channels, size_t group_output_channels, size_t input_channel_stride,
    size_t output_channel_stride, const float* kernel, const float* bias, float output_min, float output_max,
    uint32_t flags, xnn_weights_cache_t weights_cache, xnn_operator_t* convolution_op_out);
enum xnn_status xnn_reshape_convolution2d_nchw_f32(
    xnn_operator_t convolution_op, size_t batch_size, size_t input_height, size_t input_width,
    size_t* output_height_out, size_t* output_width_out, pthreadpool_t threadpool);
enum xnn_status xnn_setup_convolution2d_nchw_f32(xnn_operator_t convolution_op, const float* input,
                                                 float* output);

/* ---- the other operators ptebench's network engine runs (net_ops.cpp), same revision ---- */
/* Only the enumerators the engine passes; the values are the header's (enums are int-sized there too). */
enum xnn_datatype { xnn_datatype_invalid = 0, xnn_datatype_fp32 = 1 };
enum xnn_binary_operator { xnn_binary_invalid = -1, xnn_binary_add = 0 };
enum xnn_unary_operator { xnn_unary_invalid = -1, xnn_unary_clamp = 4 };
enum xnn_reduce_operator { xnn_reduce_invalid = -1, xnn_reduce_sum = 0, xnn_reduce_mean = 2 };
struct xnn_quantization_params; /* float operators take NULL */
union xnn_unary_params {
  struct { float min; float max; } clamp;
  struct { float alpha; } elu;
  struct { float negative_slope; } leaky_relu;
};

/* Elementwise a + b; a fused activation is a clamp operator after it, as the subgraph inserts one. */
enum xnn_status xnn_create_binary_elementwise_nd(
    enum xnn_binary_operator type, enum xnn_datatype datatype, const struct xnn_quantization_params* a_quantization,
    const struct xnn_quantization_params* b_quantization, const struct xnn_quantization_params* output_quantization,
    uint32_t flags, xnn_operator_t* binary_op_out);
enum xnn_status xnn_reshape_binary_elementwise_nd(xnn_operator_t binary_op, size_t num_input1_dims,
                                                  const size_t* input1_shape, size_t num_input2_dims,
                                                  const size_t* input2_shape, pthreadpool_t threadpool);
enum xnn_status xnn_setup_binary_elementwise_nd(xnn_operator_t binary_op, const void* input1, const void* input2,
                                                void* output);

enum xnn_status xnn_create_unary_elementwise_nc(
    enum xnn_unary_operator op_type, enum xnn_datatype input_datatype, enum xnn_datatype output_datatype,
    const union xnn_unary_params* params, const void* lut, const struct xnn_quantization_params* input_quantization,
    const struct xnn_quantization_params* output_quantization, uint32_t flags, xnn_operator_t* op_out);
enum xnn_status xnn_reshape_unary_elementwise_nc(xnn_operator_t op, size_t batch_size, size_t channels,
                                                 size_t input_stride, size_t output_stride, pthreadpool_t threadpool);
enum xnn_status xnn_setup_unary_elementwise_nc(xnn_operator_t op, const void* input, void* output);

/* Kernel [output_channels][input_channels] (no XNN_FLAG_TRANSPOSE_WEIGHTS). */
enum xnn_status xnn_create_fully_connected_nc_f32(
    size_t input_channels, size_t output_channels, size_t input_stride, size_t output_stride, const float* kernel,
    const float* bias, float output_min, float output_max, uint32_t flags, xnn_weights_cache_t weights_cache,
    xnn_operator_t* fully_connected_op_out);
enum xnn_status xnn_reshape_fully_connected_nc_f32(xnn_operator_t fully_connected_op, size_t batch_size,
                                                   pthreadpool_t threadpool);
enum xnn_status xnn_setup_fully_connected_nc_f32(xnn_operator_t fully_connected_op, const float* input,
                                                 float* output);

enum xnn_status xnn_create_max_pooling2d_nhwc_f32(
    uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t pooling_height, uint32_t pooling_width, uint32_t stride_height,
    uint32_t stride_width, uint32_t dilation_height, uint32_t dilation_width, float output_min, float output_max,
    uint32_t flags, xnn_operator_t* max_pooling_op_out);
enum xnn_status xnn_reshape_max_pooling2d_nhwc_f32(
    xnn_operator_t max_pooling_op, size_t batch_size, size_t input_height, size_t input_width, size_t channels,
    size_t input_pixel_stride, size_t output_pixel_stride, size_t* output_height_out, size_t* output_width_out,
    pthreadpool_t threadpool);
enum xnn_status xnn_setup_max_pooling2d_nhwc_f32(xnn_operator_t max_pooling_op, const float* input, float* output);

/* Mean (or sum) over the given axes. For float32 the subgraph passes workspace_size NULL and workspace
 * NULL (the accumulator is the output); a workspace would make it call a conversion kernel it lacks. */
enum xnn_status xnn_create_reduce_nd(enum xnn_reduce_operator reduce_operator_type, enum xnn_datatype datatype,
                                     const struct xnn_quantization_params* input_quantization,
                                     const struct xnn_quantization_params* output_quantization, uint32_t flags,
                                     xnn_operator_t* reduce_op_out);
enum xnn_status xnn_reshape_reduce_nd(xnn_operator_t reduce_op, size_t num_reduction_axes,
                                      const int64_t* reduction_axes, size_t num_input_dims, const size_t* input_shape,
                                      size_t* workspace_size, pthreadpool_t threadpool);
enum xnn_status xnn_setup_reduce_nd(xnn_operator_t reduce_op, void* workspace, const void* input, void* output);

/* A layout conversion (NCHW <-> NHWC of one image is the 2-D transpose [C, HW] <-> [HW, C]). */
enum xnn_status xnn_create_transpose_nd_x32(uint32_t flags, xnn_operator_t* transpose_op_out);
enum xnn_status xnn_reshape_transpose_nd_x32(xnn_operator_t transpose_op, size_t num_dims, const size_t* input_shape,
                                             const size_t* output_perm, pthreadpool_t threadpool);
enum xnn_status xnn_setup_transpose_nd_x32(xnn_operator_t transpose_op, const void* input, void* output);

/* ---- the subgraph API, for XNNPACK's own sparse inference (net_cluster.cpp), same revision ---- */
/* A subgraph created with XNN_FLAG_HINT_SPARSE_INFERENCE is rewritten to NCHW where a cluster qualifies
 * (src/subgraph.c, xnn_subgraph_rewrite_for_nchw) and the hardware has the CHW kernels; with
 * XNN_FLAG_BASIC_PROFILING its runtime names the operators it created. */
typedef struct xnn_subgraph* xnn_subgraph_t;
typedef struct xnn_runtime* xnn_runtime_t;
#define XNN_FLAG_HINT_SPARSE_INFERENCE 0x00000001
#define XNN_FLAG_BASIC_PROFILING 0x00000008
#define XNN_FLAG_KEEP_DIMS 0x00000040
#define XNN_VALUE_FLAG_EXTERNAL_INPUT 0x00000001
#define XNN_VALUE_FLAG_EXTERNAL_OUTPUT 0x00000002
#define XNN_INVALID_VALUE_ID UINT32_MAX
struct xnn_binary_params {
  double output_min;
  double output_max;
};
struct xnn_external_value {
  uint32_t id;
  void* data;
};
enum xnn_profile_info {
  xnn_profile_info_num_operators = 0,
  xnn_profile_info_operator_name = 1,
  xnn_profile_info_operator_timing = 2,
};

enum xnn_status xnn_create_subgraph(uint32_t external_value_ids, uint32_t flags, xnn_subgraph_t* subgraph_out);
enum xnn_status xnn_delete_subgraph(xnn_subgraph_t subgraph);
enum xnn_status xnn_define_tensor_value(xnn_subgraph_t subgraph, enum xnn_datatype datatype, size_t num_dims,
                                        const size_t* dims, const void* data, uint32_t external_id, uint32_t flags,
                                        uint32_t* id_out);
/* Input NHWC, filter OHWI [groups * group_output_channels, kh, kw, group_input_channels]. */
enum xnn_status xnn_define_convolution_2d(
    xnn_subgraph_t subgraph, uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t kernel_height, uint32_t kernel_width, uint32_t subsampling_height,
    uint32_t subsampling_width, uint32_t dilation_height, uint32_t dilation_width, uint32_t groups,
    size_t group_input_channels, size_t group_output_channels, float output_min, float output_max, uint32_t input_id,
    uint32_t filter_id, uint32_t bias_id, uint32_t output_id, uint32_t flags);
/* Filter [1, kh, kw, input_channels * depth_multiplier]. */
enum xnn_status xnn_define_depthwise_convolution_2d(
    xnn_subgraph_t subgraph, uint32_t input_padding_top, uint32_t input_padding_right, uint32_t input_padding_bottom,
    uint32_t input_padding_left, uint32_t kernel_height, uint32_t kernel_width, uint32_t subsampling_height,
    uint32_t subsampling_width, uint32_t dilation_height, uint32_t dilation_width, uint32_t depth_multiplier,
    size_t input_channels, float output_min, float output_max, uint32_t input_id, uint32_t filter_id, uint32_t bias_id,
    uint32_t output_id, uint32_t flags);
enum xnn_status xnn_define_binary(xnn_subgraph_t subgraph, enum xnn_binary_operator type,
                                  const struct xnn_binary_params* params, uint32_t input1_id, uint32_t input2_id,
                                  uint32_t output_id, uint32_t flags);
/* Mean over the second- and third-innermost dimensions (H and W of NHWC); deprecated in favour of
 * static_mean, which it now defines, and as ExecuTorch's delegate still calls it. */
enum xnn_status xnn_define_global_average_pooling_2d(xnn_subgraph_t subgraph, float output_min, float output_max,
                                                     uint32_t input_id, uint32_t output_id, uint32_t flags);
enum xnn_status xnn_create_runtime_v3(xnn_subgraph_t subgraph, xnn_weights_cache_t weights_cache,
                                      pthreadpool_t threadpool, uint32_t flags, xnn_runtime_t* runtime_out);
enum xnn_status xnn_reshape_runtime(xnn_runtime_t runtime);
enum xnn_status xnn_setup_runtime_v2(xnn_runtime_t runtime, size_t num_external_values,
                                     const struct xnn_external_value* external_values);
enum xnn_status xnn_invoke_runtime(xnn_runtime_t runtime);
enum xnn_status xnn_delete_runtime(xnn_runtime_t runtime);
/* Names: NUL-separated, one per operator, in execution order. */
enum xnn_status xnn_get_runtime_profiling_info(xnn_runtime_t runtime, enum xnn_profile_info param_name,
                                               size_t param_value_size, void* param_value,
                                               size_t* param_value_size_ret);

#ifdef __cplusplus
}
#endif

#endif
