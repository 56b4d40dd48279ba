/* One plan line end to end: operands, XNNPACK dense (NHWC) or sparse (NCHW SpMM, im2col in
 * front when needed) operator — or, with cold weights, a rotation of copies of it — the timing loop,
 * the reference check and the optional dump. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cold.h"
#include "tensors.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec * 1e-3;
}

static int compare_doubles(const void* a, const void* b) {
  const double x = *(const double*) a, y = *(const double*) b;
  return (x > y) - (x < y);
}

/* Everything one line allocates, so one cleanup path frees it whatever failed. */
struct buffers {
  float *input, *weights, *input_op, *weights_op, *columns, *outputs, *output_nchw;
  double* samples;
  size_t copies;          /* operators (1 warm; cold: a rotation), copy i's output at outputs + i * out_stride */
  size_t out_stride;
  xnn_operator_t* ops;    /* [copies] */
  void** workspaces;      /* [copies] */
  const struct xnn_build* build;
};

static void free_buffers(struct buffers* b) {
  for (size_t i = 0; i < b->copies; i++) {
    if (b->ops[i] != NULL) b->build->delete_op(b->ops[i]);
    free(b->workspaces[i]);
  }
  free(b->ops); free(b->workspaces);
  free(b->input); free(b->weights); free(b->input_op); free(b->weights_op);
  free(b->columns); free(b->outputs); free(b->output_nchw); free(b->samples);
  memset(b, 0, sizeof *b);
}

/* Every operand starts on a cache line, as in the deployed runtime, whose planner aligns each tensor to
 * XNNPACK's allocation alignment: malloc's 16 bytes made the kernels' vector loads straddle cache lines in
 * about three rounds of four, and a layer's label depended on which round happened to be aligned (a 3x3
 * depthwise layer ran 1.4x slower misaligned; benchmarks/RESULTS.md, runner 0.2.2). */
static int alloc_floats(float** out, double count, const char* what, char* err, size_t errlen) {
  void* raw = NULL;
  /* XNNPACK may read a little past the end */
  *out = posix_memalign(&raw, BUFFER_ALIGNMENT, (size_t) count * sizeof(float) + 64) == 0 ? raw : NULL;
  if (*out == NULL) {
    snprintf(err, errlen, "could not allocate %.1f MB for the %s", count * 4.0 / 1048576.0, what);
    return -1;
  }
  return 0;
}

static int write_floats(const char* dir, const char* id, const char* suffix, const float* data, size_t count,
                        char* err, size_t errlen) {
  char safe[JSON_MAX_STR], path[4096];
  size_t i;
  for (i = 0; id[i] != '\0' && i + 1 < sizeof safe; i++) {
    const char c = id[i];
    const int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    safe[i] = (ok && !(i == 0 && c == '.')) ? c : '_';
  }
  safe[i] = '\0';
  snprintf(path, sizeof path, "%s/%s.%s.f32", dir, safe, suffix);
  FILE* f = fopen(path, "wb");
  if (f == NULL || fwrite(data, sizeof(float), count, f) != count) {
    snprintf(err, errlen, "could not write the dump file %s: %s", path, strerror(errno));
    if (f != NULL) fclose(f);
    return -1;
  }
  if (fclose(f) != 0) {
    snprintf(err, errlen, "could not write the dump file %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* The layer's shape as XNNPACK's create call takes it: NHWC groups for dense lines; for sparse lines the
 * 1x1 NCHW SpMM convolution over cin*k*k channels that im2col (when needed) feeds. */
static struct conv_shape line_shape(const struct plan_line* L, int sparse) {
  if (sparse) {
    const size_t channels = (size_t) (L->cin * L->k * L->k);
    const struct conv_shape shape = { 0, 1, 1, 1, channels, (size_t) L->cout, channels, (size_t) L->cout };
    return shape;
  }
  const struct conv_shape shape = {
      (uint32_t) L->pad, (uint32_t) L->k, (uint32_t) L->stride, (uint32_t) L->groups, (size_t) L->cin_per_group,
      (size_t) (L->cout / L->groups), (size_t) L->cin, (size_t) L->cout };
  return shape;
}

/* Creates copy i of the line's operator (its own packed weights) and sets it up on the shared input and
 * its own output. Returns 0, or -1 with a sentence in err. */
static int make_operator(const struct plan_line* L, struct buffers* b, size_t i, int direct_spmm, pthreadpool_t pool,
                         char* err, size_t errlen) {
  const struct xnn_build* build = b->build;
  const int sparse = L->impl == IMPL_SPARSE;
  const struct conv_shape shape = line_shape(L, sparse);
  float* output = b->outputs + i * b->out_stride;
  /* A 1x1, unpadded, stride-1, single-group NCHW convolution is the only case XNNPACK routes to its SpMM
   * microkernel, so creation succeeding means SpMM runs. */
  enum xnn_status st = build_create(build, sparse, &shape, sparse ? b->weights : b->weights_op, &b->ops[i]);
  if (st != xnn_status_success) {
    snprintf(err, errlen, "XNNPACK (%s) could not create the %s convolution: %s", build->name,
             sparse ? "sparse (SpMM)" : "dense", build_status_name(st));
    return -1;
  }
  if (sparse)
    st = build_setup(build, 1, &shape, b->ops[i], (size_t) L->out_h, (size_t) L->out_w, (size_t) L->out_h,
                     (size_t) L->out_w, direct_spmm ? b->input : b->columns, output, pool, &b->workspaces[i]);
  else
    st = build_setup(build, 0, &shape, b->ops[i], (size_t) L->h, (size_t) L->w, (size_t) L->out_h, (size_t) L->out_w,
                     b->input_op, output, pool, &b->workspaces[i]);
  if (st != xnn_status_success) {
    snprintf(err, errlen, "XNNPACK (%s) could not set up the %s convolution: %s", build->name,
             sparse ? "sparse" : "dense", build_status_name(st));
    return -1;
  }
  return 0;
}

/* One run of copy i: im2col (when used) + the operator, exactly what a deployed layer pays. */
static enum xnn_status run_copy(const struct plan_line* L, const struct buffers* b, size_t i, int direct_spmm,
                                pthreadpool_t pool) {
  if (L->impl == IMPL_SPARSE && !direct_spmm) im2col(L, b->input, b->columns, b->build->parallelize_1d, pool);
  return b->build->run(b->ops[i], pool);
}

static int check_output(const struct plan_line* L, const struct buffers* b, const float* output,
                        const struct bench_options* opt, struct bench_result* res, char* err, size_t errlen) {
  struct reference_check chk;
  reference_check(L, b->input, b->weights, output, L->impl == IMPL_DENSE, opt->check_samples, plan_seed(L), &chk);
  if (chk.max_abs_err > res->max_abs_err) res->max_abs_err = chk.max_abs_err;
  if (chk.non_finite) {
    snprintf(err, errlen, "output is not finite at channel %lld, y %lld, x %lld", (long long) chk.worst_channel,
             (long long) chk.worst_y, (long long) chk.worst_x);
    return -1;
  }
  if (chk.worst_ratio > opt->tolerance) {
    snprintf(err, errlen, "output differs from the reference convolution at channel %lld, y %lld, x %lld "
             "(max abs error %.3g, %.3g of the sum of |w*x|, tolerance %.3g)", (long long) chk.worst_channel,
             (long long) chk.worst_y, (long long) chk.worst_x, chk.max_abs_err, chk.worst_ratio, opt->tolerance);
    return -1;
  }
  return 0;
}

int bench_run(const struct plan_line* L, const struct bench_options* opt, const struct xnn_build* build,
              pthreadpool_t pool, struct bench_result* res, char* err, size_t errlen) {
  struct buffers b;
  struct rng r;
  enum xnn_status st;
  const double line_start = now_us();
  memset(&b, 0, sizeof b);
  b.build = build;
  memset(res, 0, sizeof *res);

  const int sparse = L->impl == IMPL_SPARSE;
  const int direct_spmm = sparse && L->k == 1 && L->stride == 1 && L->pad == 0;
  const double in_count = (double) L->cin * L->h * L->w;
  const double out_count = (double) L->cout * L->out_h * L->out_w;
  const double w_count = (double) L->cout * L->cin_per_group * L->k * L->k;
  const double col_rows = (double) L->cin * L->k * L->k;
  const double col_count = sparse && !direct_spmm ? col_rows * L->out_h * L->out_w : 0.0;
  /* LayerSpec.nnz exactly: half-to-even like Python's round(), and at least one non-zero. */
  const double nonzeros = fmax(1.0, nearbyint(L->density * w_count));

  /* XNNPACK's packed weights / indirection buffer, per operator; plus its own bookkeeping (the operator
   * object and small tables), a guess that matters only for the many copies of tiny cold layers. */
  const double operator_bytes = 16384.0 + (sparse ? 12.0 * nonzeros + 16.0 * L->cout
                                                  : 4.0 * (w_count + 64.0 * L->cout) +
                                                    8.0 * L->out_h * L->out_w * L->k * L->k);
  /* What one run touches that no other copy touches: packed weights (values, and for SpMM the index
   * deltas) and the output; counted low (no padding, no indirection) so the rotation never falls short. */
  const double touched_bytes = (sparse ? 8.0 * nonzeros : 4.0 * w_count) + 4.0 * out_count;
  size_t copies = 1;
  if (opt->cold_weights) copies = cold_copies(touched_bytes, cold_cache_size()->bytes);
  /* Canonical operands + their operator layouts + one output per copy + the operators. */
  const double bytes = 4.0 * (2 * in_count + 2 * w_count + col_count + out_count) +
                       (double) copies * (4.0 * out_count + operator_bytes);
  if (bytes > opt->max_mb * 1048576.0) {
    if (copies > 1)
      snprintf(err, errlen, "layer needs about %.0f MB with cold weights (%zu copies, to exceed the %.0f MB "
               "of the rotation, from %s), more than the --max-mb limit of %.0f MB", bytes / 1048576.0, copies,
               (double) cold_cache_size()->bytes / 1048576.0, cold_cache_size()->source, opt->max_mb);
    else
      snprintf(err, errlen, "layer needs about %.0f MB, more than the --max-mb limit of %.0f MB", bytes / 1048576.0,
               opt->max_mb);
    return -1;
  }
  if (col_rows * L->out_h * L->out_w > 2147483647.0 || in_count > 2147483647.0 || out_count > 2147483647.0) {
    snprintf(err, errlen, "layer has more than 2^31 elements in one tensor");
    return -1;
  }

  /* Outputs 64-byte aligned apart, each with the 64 bytes of slack alloc_floats gives a single buffer. */
  b.out_stride = ((size_t) out_count + 15) / 16 * 16 + 16;
  b.ops = calloc(copies, sizeof *b.ops);
  b.workspaces = calloc(copies, sizeof *b.workspaces);
  if (b.ops == NULL || b.workspaces == NULL) {
    snprintf(err, errlen, "could not allocate %zu operator copies", copies);
    goto fail;
  }
  b.copies = copies;
  if (alloc_floats(&b.input, in_count, "input", err, errlen) ||
      alloc_floats(&b.weights, w_count, "weights", err, errlen) ||
      alloc_floats(&b.outputs, (double) copies * (double) b.out_stride, copies > 1 ? "outputs" : "output", err,
                   errlen)) goto fail;
  size_t samples_cap = 64;
  b.samples = malloc(sizeof(double) * samples_cap);
  if (b.samples == NULL) { snprintf(err, errlen, "could not allocate the timing buffer"); goto fail; }

  rng_seed(&r, plan_seed(L));
  fill_sparse_weights(&r, b.weights, (size_t) w_count, (size_t) nonzeros);
  fill_uniform(&r, b.input, (size_t) in_count);

  if (!sparse) {
    if (alloc_floats(&b.input_op, in_count, "NHWC input", err, errlen) ||
        alloc_floats(&b.weights_op, w_count, "OHWI weights", err, errlen)) goto fail;
    nchw_to_nhwc(b.input, b.input_op, (size_t) L->cin, (size_t) (L->h * L->w));
    oihw_to_ohwi(b.weights, b.weights_op, (size_t) L->cout, (size_t) L->cin_per_group, (size_t) L->k);
  } else if (!direct_spmm && alloc_floats(&b.columns, col_count, "im2col buffer", err, errlen)) {
    goto fail;
  }
  for (size_t i = 0; i < copies; i++)
    if (make_operator(L, &b, i, direct_spmm, pool, err, errlen) != 0) goto fail;

  int reps = 0;
  double timed = 0.0, warm = 0.0;
  int warmup_left = opt->warmup;
  /* Cold: every output is written once here, so no timed run pays for first-touch page faults; the
   * warm-up runs (if any) use the last copy, and timing then starts at copy 0, whose packed weights were
   * written when it was created and have since been pushed out of the cache by every later copy. The
   * input is shared and read by every run, so it stays cached, as a layer's input does in a network right
   * after the layer before it wrote it. */
  size_t next = 0, last = 0; /* the copy the next timed run uses; the copy the last run used */
  if (copies > 1) memset(b.outputs, 0, copies * b.out_stride * sizeof(float));
  for (;;) {
    const size_t copy = warmup_left > 0 ? copies - 1 : next;
    if (warmup_left <= 0) next = (next + 1) % copies;
    const double t0 = now_us();
    st = run_copy(L, &b, copy, direct_spmm, pool);
    const double dt = now_us() - t0;
    if (st != xnn_status_success) goto run_failed;
    last = copy;
    if (warmup_left > 0) {
      /* One warm run settles caches and page faults; more only while they stay cheap. */
      warm += dt;
      warmup_left = warm >= opt->warmup_ms * 1e3 ? 0 : warmup_left - 1;
      continue;
    }
    if ((size_t) reps == samples_cap) {
      double* grown = realloc(b.samples, sizeof(double) * samples_cap * 2);
      if (grown == NULL) { snprintf(err, errlen, "could not grow the timing buffer"); goto fail; }
      b.samples = grown;
      samples_cap *= 2;
    }
    b.samples[reps++] = dt;
    timed += dt;
    if (reps >= opt->max_reps) break;
    if (reps >= opt->min_reps && timed >= opt->min_time_ms * 1e3) break;
    if (reps >= 2 && timed >= opt->max_time_ms * 1e3) break;
  }

  double sum = 0.0, sq = 0.0;
  for (int i = 0; i < reps; i++) sum += b.samples[i];
  res->us_mean = sum / reps;
  for (int i = 0; i < reps; i++) sq += (b.samples[i] - res->us_mean) * (b.samples[i] - res->us_mean);
  res->us_std = reps > 1 ? sqrt(sq / (reps - 1)) : 0.0;
  qsort(b.samples, (size_t) reps, sizeof(double), compare_doubles);
  res->us_min = b.samples[0];
  res->us_median = reps % 2 ? b.samples[reps / 2] : 0.5 * (b.samples[reps / 2 - 1] + b.samples[reps / 2]);
  res->reps = reps;
  res->timed_us = timed;
  res->copies = (int) copies;
  res->rotated_bytes = (double) copies * touched_bytes;

  /* Copy 0, and the copy that ran last when it is another operator: every copy must compute the layer. */
  if (check_output(L, &b, b.outputs, opt, res, err, errlen) != 0) goto fail;
  if (last != 0 && check_output(L, &b, b.outputs + last * b.out_stride, opt, res, err, errlen) != 0) goto fail;

  if (opt->dump_dir != NULL) {
    const float* out_nchw = b.outputs;
    if (!sparse) {
      if (alloc_floats(&b.output_nchw, out_count, "NCHW output copy", err, errlen)) goto fail;
      nhwc_to_nchw(b.outputs, b.output_nchw, (size_t) L->cout, (size_t) (L->out_h * L->out_w));
      out_nchw = b.output_nchw;
    }
    if (write_floats(opt->dump_dir, L->id, "input", b.input, (size_t) in_count, err, errlen) ||
        write_floats(opt->dump_dir, L->id, "weights", b.weights, (size_t) w_count, err, errlen) ||
        write_floats(opt->dump_dir, L->id, "output", out_nchw, (size_t) out_count, err, errlen)) goto fail;
  }
  free_buffers(&b);
  res->line_us = now_us() - line_start;
  return 0;

run_failed:
  snprintf(err, errlen, "XNNPACK (%s) failed to run the %s convolution: %s", build->name, sparse ? "sparse" : "dense",
           build_status_name(st));
fail:
  free_buffers(&b);
  return -1;
}
