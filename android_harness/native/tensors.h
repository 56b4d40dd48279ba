/* Seeded operands (exact-count sparse weights, inputs), layout transforms, im2col and the
 * reference convolution used to check every measured output. */
#ifndef CONVBENCH_TENSORS_H
#define CONVBENCH_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"
#include "xnn_api.h"

struct rng { uint64_t state; };

void rng_seed(struct rng* r, uint64_t seed);
uint64_t rng_next(struct rng* r);
double rng_uniform(struct rng* r); /* [0, 1) */

/* Fills count weights with exactly nonzeros non-zero values at uniformly random positions. */
void fill_sparse_weights(struct rng* r, float* weights, size_t count, size_t nonzeros);
void fill_uniform(struct rng* r, float* data, size_t count);

/* [cout][cin_g][k][k] -> [cout][k][k][cin_g], XNNPACK's NHWC kernel layout. */
void oihw_to_ohwi(const float* src, float* dst, size_t cout, size_t cin_g, size_t k);
void nchw_to_nhwc(const float* src, float* dst, size_t c, size_t hw);
void nhwc_to_nchw(const float* src, float* dst, size_t c, size_t hw);

/* The pthreadpool_parallelize_1d of the build whose pool is passed (pools of two builds do not mix). */
typedef void (*parallelize_1d_fn)(pthreadpool_t, pthreadpool_task_1d_t, void*, size_t, uint32_t);

/* im2col: NCHW input [cin][h][w] -> [cin*k*k][out_h*out_w], rows ordered (c, ky, kx) to
 * match flattened OIHW weights; parallel over rows through the pool (NULL = caller thread). */
void im2col(const struct plan_line* line, const float* input, float* columns, parallelize_1d_fn parallelize,
            pthreadpool_t pool);

struct reference_check {
  double max_abs_err;
  double worst_ratio; /* max over samples of err / (sum |w*x|), the tolerance's yardstick */
  int64_t worst_channel, worst_y, worst_x;
  int non_finite;
};

/* Compares `samples` random output positions (plus corners) of `output` with a direct
 * double-precision convolution of the canonical NCHW input and OIHW weights.
 * output_nhwc selects how `output` is laid out. */
void reference_check(const struct plan_line* line, const float* input, const float* weights,
                     const float* output, int output_nhwc, int samples, uint64_t seed,
                     struct reference_check* result);

#endif
