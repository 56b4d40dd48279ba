/* One plan line end to end: operands, XNNPACK dense (NHWC) or sparse (NCHW SpMM, im2col in
 * front when needed) operator, the timing loop, the reference check and the optional dump. */
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
  float *input, *weights, *input_op, *weights_op, *columns, *output, *output_nchw;
  double* samples;
  void* workspace;
  xnn_operator_t op;
  const struct xnn_build* build;
};

static void free_buffers(struct buffers* b) {
  if (b->op != NULL) b->build->delete_op(b->op);
  free(b->workspace);
  free(b->input); free(b->weights); free(b->input_op); free(b->weights_op);
  free(b->columns); free(b->output); free(b->output_nchw); free(b->samples);
  memset(b, 0, sizeof *b);
}

static int alloc_floats(float** out, double count, const char* what, char* err, size_t errlen) {
  *out = malloc((size_t) count * sizeof(float) + 64); /* XNNPACK may read a little past the end */
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

  /* Canonical operands + their operator layouts + XNNPACK's packed copy / indirection buffer. */
  double bytes = 4.0 * (2 * in_count + 2 * w_count + col_count + 2 * out_count);
  bytes += sparse ? 12.0 * nonzeros + 16.0 * L->cout
                  : 4.0 * (w_count + 64.0 * L->cout) + 8.0 * L->out_h * L->out_w * L->k * L->k;
  if (bytes > opt->max_mb * 1048576.0) {
    snprintf(err, errlen, "layer needs about %.0f MB, more than the --max-mb limit of %.0f MB", bytes / 1048576.0, opt->max_mb);
    return -1;
  }
  if (col_rows * L->out_h * L->out_w > 2147483647.0 || in_count > 2147483647.0 || out_count > 2147483647.0) {
    snprintf(err, errlen, "layer has more than 2^31 elements in one tensor");
    return -1;
  }

  if (alloc_floats(&b.input, in_count, "input", err, errlen) ||
      alloc_floats(&b.weights, w_count, "weights", err, errlen) ||
      alloc_floats(&b.output, out_count, "output", err, errlen)) goto fail;
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
    const struct conv_shape shape = {
        (uint32_t) L->pad, (uint32_t) L->k, (uint32_t) L->stride, (uint32_t) L->groups, (size_t) L->cin_per_group,
        (size_t) (L->cout / L->groups), (size_t) L->cin, (size_t) L->cout };
    st = build_create(build, 0, &shape, b.weights_op, &b.op);
    if (st != xnn_status_success) {
      snprintf(err, errlen, "XNNPACK (%s) could not create the dense convolution: %s", build->name, build_status_name(st));
      goto fail;
    }
    st = build_setup(build, 0, &shape, b.op, (size_t) L->h, (size_t) L->w, (size_t) L->out_h, (size_t) L->out_w,
                     b.input_op, b.output, pool, &b.workspace);
  } else {
    /* A 1x1, unpadded, stride-1, single-group NCHW convolution is the only case XNNPACK
     * routes to its SpMM microkernel, so creation succeeding means SpMM runs. */
    if (!direct_spmm && alloc_floats(&b.columns, col_count, "im2col buffer", err, errlen)) goto fail;
    const size_t channels = (size_t) col_rows;
    const struct conv_shape shape = { 0, 1, 1, 1, channels, (size_t) L->cout, channels, (size_t) L->cout };
    st = build_create(build, 1, &shape, b.weights, &b.op);
    if (st != xnn_status_success) {
      snprintf(err, errlen, "XNNPACK (%s) could not create the sparse (SpMM) convolution: %s", build->name,
               build_status_name(st));
      goto fail;
    }
    st = build_setup(build, 1, &shape, b.op, (size_t) L->out_h, (size_t) L->out_w, (size_t) L->out_h, (size_t) L->out_w,
                     direct_spmm ? b.input : b.columns, b.output, pool, &b.workspace);
  }
  if (st != xnn_status_success) {
    snprintf(err, errlen, "XNNPACK (%s) could not set up the %s convolution: %s", build->name,
             sparse ? "sparse" : "dense", build_status_name(st));
    goto fail;
  }

  /* Timing: one run is im2col (when used) + the operator, exactly what a deployed layer pays. */
  int reps = 0;
  double timed = 0.0, warm = 0.0;
  int warmup_left = opt->warmup;
  for (;;) {
    const double t0 = now_us();
    if (sparse && !direct_spmm) im2col(L, b.input, b.columns, build->parallelize_1d, pool);
    st = build->run(b.op, pool);
    const double dt = now_us() - t0;
    if (st != xnn_status_success) {
      snprintf(err, errlen, "XNNPACK (%s) failed to run the %s convolution: %s", build->name, sparse ? "sparse" : "dense",
               build_status_name(st));
      goto fail;
    }
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

  struct reference_check chk;
  reference_check(L, b.input, b.weights, b.output, !sparse, opt->check_samples, plan_seed(L), &chk);
  res->max_abs_err = chk.max_abs_err;
  if (chk.non_finite) {
    snprintf(err, errlen, "output is not finite at channel %lld, y %lld, x %lld", (long long) chk.worst_channel,
             (long long) chk.worst_y, (long long) chk.worst_x);
    goto fail;
  }
  if (chk.worst_ratio > opt->tolerance) {
    snprintf(err, errlen, "output differs from the reference convolution at channel %lld, y %lld, x %lld "
             "(max abs error %.3g, %.3g of the sum of |w*x|, tolerance %.3g)", (long long) chk.worst_channel,
             (long long) chk.worst_y, (long long) chk.worst_x, chk.max_abs_err, chk.worst_ratio, opt->tolerance);
    goto fail;
  }

  if (opt->dump_dir != NULL) {
    const float* out_nchw = b.output;
    if (!sparse) {
      if (alloc_floats(&b.output_nchw, out_count, "NCHW output copy", err, errlen)) goto fail;
      nhwc_to_nchw(b.output, b.output_nchw, (size_t) L->cout, (size_t) (L->out_h * L->out_w));
      out_nchw = b.output_nchw;
    }
    if (write_floats(opt->dump_dir, L->id, "input", b.input, (size_t) in_count, err, errlen) ||
        write_floats(opt->dump_dir, L->id, "weights", b.weights, (size_t) w_count, err, errlen) ||
        write_floats(opt->dump_dir, L->id, "output", out_nchw, (size_t) out_count, err, errlen)) goto fail;
  }
  free_buffers(&b);
  res->line_us = now_us() - line_start;
  return 0;

fail:
  free_buffers(&b);
  return -1;
}
