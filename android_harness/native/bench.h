/* Measuring one plan line: build the XNNPACK operator, time it, check it, optionally dump it. */
#ifndef CONVBENCH_BENCH_H
#define CONVBENCH_BENCH_H

#include <stddef.h>

#include "builds.h"
#include "plan.h"

/* Bytes every input, weight and output buffer is aligned to: a cache line (the header reports it). */
#define BUFFER_ALIGNMENT 64

struct bench_options {
  int warmup;          /* untimed runs before timing ... */
  double warmup_ms;    /* ... cut short once they took this long (at least one runs) */
  int min_reps;        /* timed runs: at least this many ... */
  double min_time_ms;  /* ... and at least this much timed time ... */
  int max_reps;        /* ... but never more runs than this ... */
  double max_time_ms;  /* ... and stop once this much timed time is spent (after 2 runs) */
  double tolerance;    /* allowed |err| relative to sum |w*x| at a sampled output */
  int check_samples;   /* random output positions checked (besides the 4 corners) */
  double max_mb;       /* memory cap per line */
  const char* dump_dir;
  int cold_weights;    /* --weights cold: rotate over copies of the operator so each run's weights are cold */
};

struct bench_result {
  double us_min, us_median, us_mean, us_std, timed_us, max_abs_err;
  double line_us; /* whole line inside the runner: operands, operator, warm-up, timing, check */
  int reps;
  int copies;          /* operators timed in rotation: 1 (warm), or enough to exceed the cache (cold) */
  double rotated_bytes; /* what the rotation touches besides the input (packed weights and outputs) */
};

/* Times the line with `build` (its operators, its pool). Returns 0 and fills result, or -1 with a
 * one-sentence error in err. */
int bench_run(const struct plan_line* line, const struct bench_options* options, const struct xnn_build* build,
              pthreadpool_t pool, struct bench_result* result, char* err, size_t errlen);

#endif
