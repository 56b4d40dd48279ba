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

#ifdef __cplusplus
}
#endif

#endif
