/* The XNNPACK builds convbench times with, behind one interface: the ExecuTorch wheel's (linked in;
 * dense always, sparse where its NCHW SpMM runs) and Debian's 2022 libXNNPACK, loaded into a linker
 * namespace of its own (dlmopen) for the sparse path on hosts where the wheel has no SpMM kernel. */
#ifndef CONVBENCH_BUILDS_H
#define CONVBENCH_BUILDS_H

#include <stddef.h>
#include <stdint.h>

#include "xnn_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The 2022 operator API: no weights cache, no reshape; setup takes the sizes and the pool. */
typedef enum xnn_status (*xnn2022_create_fn)(
    uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t,
    size_t, size_t, size_t, size_t, const float*, const float*, float, float, uint32_t, xnn_operator_t*);
typedef enum xnn_status (*xnn2022_setup_fn)(xnn_operator_t, size_t, size_t, size_t, const float*, float*,
                                            pthreadpool_t);

struct xnn_build {
  char name[96];   /* what result lines report: "executorch-1.5.1", "debian-0.0~git20220216.ae108ef-2" */
  int api_2022;    /* 1: Debian's 2022 API through the function pointers below */
  int initialized; /* xnn_initialize succeeded */
  int pf32;        /* single-group NHWC convolutions use the packed-LHS pf32 operator (wheel, Arm SME) */
  pthreadpool_t pool; /* this build's own pool (pools of two builds do not mix), kept while lines agree */
  int64_t pool_threads;
  pthreadpool_t (*pool_create)(size_t);
  void (*pool_destroy)(pthreadpool_t);
  void (*parallelize_1d)(pthreadpool_t, pthreadpool_task_1d_t, void*, size_t, uint32_t);
  enum xnn_status (*run)(xnn_operator_t, pthreadpool_t);
  enum xnn_status (*delete_op)(xnn_operator_t);
  xnn2022_create_fn create_nhwc_2022, create_nchw_2022;
  xnn2022_setup_fn setup_nhwc_2022, setup_nchw_2022;
  void* handle;      /* dlmopen handles (Debian): libXNNPACK.so.0 ... */
  void* pool_handle; /* ... and libpthreadpool.so.0 from the same namespace */
};

/* The create arguments both layouts share (square kernel, symmetric padding, no dilation). */
struct conv_shape {
  uint32_t pad, k, stride, groups;
  size_t group_input_channels, group_output_channels, input_stride, output_stride;
};

/* The wheel's XNNPACK, linked into the binary. Fills build; returns 0 if it initialised. */
int build_open_wheel(struct xnn_build* build, const char* name);

/* Debian's libXNNPACK.so.0 and its libpthreadpool.so.0 in a new linker namespace. Returns 0, or -1
 * with a sentence in err (library missing, symbol missing, initialisation failed). */
int build_open_debian(struct xnn_build* build, const char* name, char* err, size_t errlen);

void build_close(struct xnn_build* build);

/* Whether this build runs a 1x1 NCHW convolution (its SpMM path): xnn_status_success or the reason. */
enum xnn_status build_probe_spmm(const struct xnn_build* build);

/* NHWC (OHWI kernel) or NCHW (OIHW kernel) convolution. Where build->pf32, a single-group NHWC one is
 * the pf32 operator, as ExecuTorch's XNNPACK subgraph creates it for a convolution_2d node. */
enum xnn_status build_create(const struct xnn_build* build, int nchw, const struct conv_shape* shape,
                             const float* kernel, xnn_operator_t* op);

/* Reshape + setup for one image of h x w. The wheel's NHWC operator may need a workspace: it is
 * allocated into *workspace (free() it after deleting the operator). The output size the build
 * computes is checked against out_h x out_w (BUILD_WRONG_OUTPUT_SIZE if they differ). */
#define BUILD_WRONG_OUTPUT_SIZE ((enum xnn_status) 100)
enum xnn_status build_setup(const struct xnn_build* build, int nchw, const struct conv_shape* shape,
                            xnn_operator_t op, size_t h, size_t w, size_t out_h, size_t out_w, const float* input,
                            float* output, pthreadpool_t pool, void** workspace);

/* This build's pool for `threads` (NULL for one thread). Returns 0, or -1 if it cannot be created. */
int build_pool(struct xnn_build* build, int64_t threads, pthreadpool_t* pool);

const char* build_status_name(enum xnn_status status);

/* build_create with a bias ([output channels] or NULL) and the output clamp fused into the operator,
 * as a convolution node with its activation (ptebench's network engine). */
enum xnn_status build_create_fused(const struct xnn_build* build, int nchw, const struct conv_shape* shape,
                                   const float* kernel, const float* bias, float output_min, float output_max,
                                   xnn_operator_t* op);

#ifdef __cplusplus
}
#endif

#endif
