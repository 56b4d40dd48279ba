/* XNNPACK builds: the wheel's (linked) and Debian's 2022 one (dlmopen, own namespace), one interface. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "builds.h"

#include <dlfcn.h>
#include <link.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* XNNPACK's own allocations are aligned to at most 64 bytes; a workspace gets more than that. */
#define WORKSPACE_ALIGNMENT 128

const char* build_status_name(enum xnn_status s) {
  switch (s) {
    case xnn_status_success: return "success";
    case xnn_status_uninitialized: return "XNNPACK is not initialized";
    case xnn_status_invalid_parameter: return "invalid parameter";
    case xnn_status_invalid_state: return "invalid state";
    case xnn_status_unsupported_parameter: return "unsupported parameter";
    case xnn_status_unsupported_hardware: return "unsupported hardware";
    case xnn_status_out_of_memory: return "out of memory";
    case xnn_status_reallocation_required: return "reallocation required";
    case xnn_status_deprecated: return "deprecated";
  }
  if (s == BUILD_WRONG_OUTPUT_SIZE) return "it computes another output size than the layer's";
  return "unknown status";
}

static enum xnn_status wheel_run(xnn_operator_t op, pthreadpool_t pool) { return xnn_run_operator(op, pool); }
static enum xnn_status wheel_delete(xnn_operator_t op) { return xnn_delete_operator(op); }

int build_open_wheel(struct xnn_build* b, const char* name) {
  memset(b, 0, sizeof *b);
  snprintf(b->name, sizeof b->name, "%s", name);
  b->pool_threads = 1;
  b->pool_create = pthreadpool_create;
  b->pool_destroy = pthreadpool_destroy;
  b->parallelize_1d = pthreadpool_parallelize_1d;
  b->run = wheel_run;
  b->delete_op = wheel_delete;
  b->initialized = xnn_initialize(NULL) == xnn_status_success;
  if (!b->initialized) return -1;
  /* The subgraph's test: the pf32 GEMM config exists, i.e. creating a pf32 operator is not refused. */
  float kernel[64] = { 0 };
  for (int o = 0; o < 8; o++) kernel[o * 8 + o] = 1.0f;
  xnn_operator_t op = NULL;
  b->pf32 = xnn_create_convolution2d_nhwc_pf32(0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 8, 8, 8, 8, kernel, NULL, -INFINITY,
                                               INFINITY, XNN_FLAG_INLINE_LHS_PACKING, NULL, &op) == xnn_status_success;
  if (op != NULL) xnn_delete_operator(op);
  return 0;
}

static int uses_pf32(const struct xnn_build* b, int nchw, const struct conv_shape* s) {
  return b->pf32 && !b->api_2022 && !nchw && s->groups == 1;
}

static void* symbol(void* handle, const char* name, const char* library, int* missing, char* err, size_t errlen) {
  void* p = dlsym(handle, name);
  if (p == NULL && !*missing) {
    snprintf(err, errlen, "%s has no %s", library, name);
    *missing = 1;
  }
  return p;
}

int build_open_debian(struct xnn_build* b, const char* name, char* err, size_t errlen) {
  memset(b, 0, sizeof *b);
  snprintf(b->name, sizeof b->name, "%s", name);
  b->pool_threads = 1;
  b->api_2022 = 1;
  /* A namespace of its own: its xnn_* and pthreadpool_* never meet the wheel's same-named symbols. */
  b->handle = dlmopen(LM_ID_NEWLM, "libXNNPACK.so.0", RTLD_NOW | RTLD_LOCAL);
  if (b->handle == NULL) {
    const char* why = dlerror();
    snprintf(err, errlen, "Debian's libXNNPACK.so.0 could not be loaded (%s)", why ? why : "unknown reason");
    return -1;
  }
  Lmid_t lmid;
  if (dlinfo(b->handle, RTLD_DI_LMID, &lmid) != 0 ||
      (b->pool_handle = dlmopen(lmid, "libpthreadpool.so.0", RTLD_NOW | RTLD_LOCAL)) == NULL) {
    snprintf(err, errlen, "the libpthreadpool.so.0 that Debian's libXNNPACK.so.0 uses could not be loaded");
    build_close(b);
    return -1;
  }
  int missing = 0;
  const char* lib = "Debian's libXNNPACK.so.0";
  enum xnn_status (*init)(const struct xnn_allocator*) = symbol(b->handle, "xnn_initialize", lib, &missing, err, errlen);
  b->run = symbol(b->handle, "xnn_run_operator", lib, &missing, err, errlen);
  b->delete_op = symbol(b->handle, "xnn_delete_operator", lib, &missing, err, errlen);
  b->create_nhwc_2022 = symbol(b->handle, "xnn_create_convolution2d_nhwc_f32", lib, &missing, err, errlen);
  b->setup_nhwc_2022 = symbol(b->handle, "xnn_setup_convolution2d_nhwc_f32", lib, &missing, err, errlen);
  b->create_nchw_2022 = symbol(b->handle, "xnn_create_convolution2d_nchw_f32", lib, &missing, err, errlen);
  b->setup_nchw_2022 = symbol(b->handle, "xnn_setup_convolution2d_nchw_f32", lib, &missing, err, errlen);
  b->pool_create = symbol(b->pool_handle, "pthreadpool_create", "libpthreadpool.so.0", &missing, err, errlen);
  b->pool_destroy = symbol(b->pool_handle, "pthreadpool_destroy", "libpthreadpool.so.0", &missing, err, errlen);
  b->parallelize_1d = symbol(b->pool_handle, "pthreadpool_parallelize_1d", "libpthreadpool.so.0", &missing, err, errlen);
  if (missing) {
    build_close(b);
    return -1;
  }
  const enum xnn_status st = init(NULL);
  if (st != xnn_status_success) {
    snprintf(err, errlen, "Debian's libXNNPACK.so.0 failed to initialize: %s", build_status_name(st));
    build_close(b);
    return -1;
  }
  b->initialized = 1;
  return 0;
}

void build_close(struct xnn_build* b) {
  if (b->pool != NULL && b->pool_destroy != NULL) b->pool_destroy(b->pool);
  b->pool = NULL;
  b->pool_threads = 1;
  /* The namespaces stay mapped until exit: dlclose of a dlmopen'd libc copy buys nothing. */
  b->initialized = 0;
}

enum xnn_status build_create(const struct xnn_build* b, int nchw, const struct conv_shape* s, const float* kernel,
                             xnn_operator_t* op) {
  return build_create_fused(b, nchw, s, kernel, NULL, -INFINITY, INFINITY, op);
}

enum xnn_status build_create_fused(const struct xnn_build* b, int nchw, const struct conv_shape* s,
                                   const float* kernel, const float* bias, float output_min, float output_max,
                                   xnn_operator_t* op) {
  *op = NULL;
  if (b->api_2022) {
    return (nchw ? b->create_nchw_2022 : b->create_nhwc_2022)(
        s->pad, s->pad, s->pad, s->pad, s->k, s->k, s->stride, s->stride, 1, 1, s->groups,
        s->group_input_channels, s->group_output_channels, s->input_stride, s->output_stride, kernel, bias,
        output_min, output_max, 0, op);
  }
  const int pf32 = uses_pf32(b, nchw, s);
  return (nchw ? xnn_create_convolution2d_nchw_f32 : pf32 ? xnn_create_convolution2d_nhwc_pf32
                                                          : xnn_create_convolution2d_nhwc_f32)(
      s->pad, s->pad, s->pad, s->pad, s->k, s->k, s->stride, s->stride, 1, 1, s->groups,
      s->group_input_channels, s->group_output_channels, s->input_stride, s->output_stride, kernel, bias,
      output_min, output_max, pf32 ? XNN_FLAG_INLINE_LHS_PACKING : 0, NULL, op);
}

enum xnn_status build_setup(const struct xnn_build* b, int nchw, const struct conv_shape* s, xnn_operator_t op,
                            size_t h, size_t w, size_t out_h, size_t out_w, const float* input, float* output,
                            pthreadpool_t pool, void** workspace) {
  *workspace = NULL;
  if (b->api_2022) return (nchw ? b->setup_nchw_2022 : b->setup_nhwc_2022)(op, 1, h, w, input, output, pool);
  const int pf32 = uses_pf32(b, nchw, s);
  size_t got_h = 0, got_w = 0, workspace_size = 0;
  enum xnn_status st = nchw ? xnn_reshape_convolution2d_nchw_f32(op, 1, h, w, &got_h, &got_w, pool)
                            : (pf32 ? xnn_reshape_convolution2d_nhwc_pf32 : xnn_reshape_convolution2d_nhwc_f32)(
                                  op, 1, h, w, &workspace_size, &got_h, &got_w, pool);
  if (st != xnn_status_success) return st;
  if (got_h != out_h || got_w != out_w) return BUILD_WRONG_OUTPUT_SIZE;
  if (nchw) return xnn_setup_convolution2d_nchw_f32(op, input, output);
  if (workspace_size > 0) {
    const size_t rounded = (workspace_size + WORKSPACE_ALIGNMENT - 1) / WORKSPACE_ALIGNMENT * WORKSPACE_ALIGNMENT;
    if (posix_memalign(workspace, WORKSPACE_ALIGNMENT, rounded) != 0) {
      *workspace = NULL;
      return xnn_status_out_of_memory;
    }
  }
  return (pf32 ? xnn_setup_convolution2d_nhwc_pf32 : xnn_setup_convolution2d_nhwc_f32)(op, *workspace, input, output);
}

enum xnn_status build_probe_spmm(const struct xnn_build* b) {
  if (!b->initialized) return xnn_status_uninitialized;
  /* 8 -> 8 channels, a quarter of the weights non-zero: the SpMM case, as a sparse line creates it. */
  float kernel[64] = { 0 };
  for (int o = 0; o < 8; o++) { kernel[o * 8 + o] = 1.0f; kernel[o * 8 + (o + 3) % 8] = 0.5f; }
  const struct conv_shape shape = { 0, 1, 1, 1, 8, 8, 8, 8 };
  xnn_operator_t op = NULL;
  const enum xnn_status st = build_create(b, 1, &shape, kernel, &op);
  if (op != NULL) b->delete_op(op);
  return st;
}

int build_pool(struct xnn_build* b, int64_t threads, pthreadpool_t* pool) {
  if (threads != b->pool_threads) {
    if (b->pool != NULL) b->pool_destroy(b->pool);
    b->pool = threads > 1 ? b->pool_create((size_t) threads) : NULL;
    b->pool_threads = threads;
    if (threads > 1 && b->pool == NULL) {
      b->pool_threads = 1;
      return -1;
    }
  }
  *pool = b->pool;
  return 0;
}
