/* Operand generation, layout transforms, im2col and the reference convolution. */
#include "tensors.h"

#include <math.h>
#include <string.h>

void rng_seed(struct rng* r, uint64_t seed) { r->state = seed; }

uint64_t rng_next(struct rng* r) { /* splitmix64 */
  uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double rng_uniform(struct rng* r) { return (double) (rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

static float nonzero_value(struct rng* r) {
  /* Magnitudes in [0.05, 1): never zero, so the operator sees exactly the drawn count.
   * One draw: the top 53 bits give the magnitude, the lowest bit the sign. */
  const uint64_t bits = rng_next(r);
  const double magnitude = 0.05 + 0.95 * ((double) (bits >> 11) * (1.0 / 9007199254740992.0));
  return (float) ((bits & 1) ? magnitude : -magnitude);
}

static size_t random_index(struct rng* r, size_t count) {
  return (size_t) (((unsigned __int128) rng_next(r) * count) >> 64);
}

void fill_sparse_weights(struct rng* r, float* weights, size_t count, size_t nonzeros) {
  /* Distinct positions drawn by rejection form a uniformly random subset. Draw whichever of
   * the non-zeros or the zeros is the smaller set (a uniform subset's complement is uniform),
   * so it costs at most ~1.4 draws per drawn position; the array itself marks what is taken. */
  if (nonzeros > count) nonzeros = count;
  if (nonzeros <= count / 2) {
    memset(weights, 0, count * sizeof(float));
    for (size_t placed = 0; placed < nonzeros;) {
      const size_t i = random_index(r, count);
      if (weights[i] == 0.0f) { weights[i] = nonzero_value(r); placed++; }
    }
  } else {
    for (size_t i = 0; i < count; i++) weights[i] = nonzero_value(r);
    for (size_t cleared = 0; cleared < count - nonzeros;) {
      const size_t i = random_index(r, count);
      if (weights[i] != 0.0f) { weights[i] = 0.0f; cleared++; }
    }
  }
}

void fill_uniform(struct rng* r, float* data, size_t count) {
  for (size_t i = 0; i < count; i++) data[i] = (float) (2.0 * rng_uniform(r) - 1.0);
}

void oihw_to_ohwi(const float* src, float* dst, size_t cout, size_t cin_g, size_t k) {
  for (size_t o = 0; o < cout; o++)
    for (size_t i = 0; i < cin_g; i++)
      for (size_t t = 0; t < k * k; t++)
        dst[(o * k * k + t) * cin_g + i] = src[(o * cin_g + i) * k * k + t];
}

void nchw_to_nhwc(const float* src, float* dst, size_t c, size_t hw) {
  for (size_t ch = 0; ch < c; ch++)
    for (size_t p = 0; p < hw; p++) dst[p * c + ch] = src[ch * hw + p];
}

void nhwc_to_nchw(const float* src, float* dst, size_t c, size_t hw) {
  for (size_t p = 0; p < hw; p++)
    for (size_t ch = 0; ch < c; ch++) dst[ch * hw + p] = src[p * c + ch];
}

struct im2col_context {
  const struct plan_line* line;
  const float* input;
  float* columns;
};

/* One row (c, ky, kx) of a stride-1 layer whose output is as wide as its input (padding (k-1)/2): output pixel j
 * reads input pixel j + dy*w + dx of the same plane, so the row is one copy of the plane shifted by that offset,
 * then zeros where the window leaves the plane: whole rows above and below, |dx| columns at one edge of each row.
 * Per output line that is one store instead of three libc calls (memset, memcpy, memset), which cost about 6 ns
 * whatever the line's length and made most of a pruned 3x3's time on maps up to 16 px (benchmarks/RESULTS.md). */
static inline __attribute__((always_inline)) void same_padding_row(const float* plane, float* dst, int64_t h, int64_t w,
                                                                   int64_t dy, int64_t dx) {
  const int64_t first = dy < 0 ? -dy : 0, last = dy > 0 ? h - dy : h; /* output rows [first, last) read the plane */
  if (last <= first || (dx < 0 ? -dx : dx) >= w) { /* the window never meets the plane */
    memset(dst, 0, (size_t) (h * w) * sizeof(float));
    return;
  }
  memset(dst, 0, (size_t) (first * w) * sizeof(float));
  memset(dst + last * w, 0, (size_t) ((h - last) * w) * sizeof(float));
  /* The copy skips the |dx| pixels at its start (dx < 0) or end (dx > 0) that would read outside the plane; they
   * are edge columns, zeroed below with the others. */
  const int64_t begin = first * w + (dx < 0 ? -dx : 0), end = last * w - (dx > 0 ? dx : 0);
  memcpy(dst + begin, plane + begin + dy * w + dx, (size_t) (end - begin) * sizeof(float));
  if (dx == 0) return;
  const int64_t edge = dx < 0 ? 0 : w - dx, width = dx < 0 ? -dx : dx;
  for (int64_t y = first; y < last; y++)
    for (int64_t x = 0; x < width; x++) dst[y * w + edge + x] = 0.0f;
}

/* Aligned so that every runner build (convbench and ptebench, host and arm64) lays the gather's loops out alike:
 * the same code at 32 bytes past a 64-byte boundary ran gather-bound sparse layers up to 1.66x slower on an Intel
 * Xeon, and the engine had it there while the layer runner did not, so the engine ran such layers 1.3-1.6x
 * slower than the profile measured them (benchmarks/RESULTS.md, issue 11). */
__attribute__((aligned(64))) static void im2col_row(void* opaque, size_t row) {
  const struct im2col_context* ctx = opaque;
  const struct plan_line* L = ctx->line;
  const int64_t k = L->k, s = L->stride, pad = L->pad, h = L->h, w = L->w;
  const int64_t oh = L->out_h, ow = L->out_w;
  const int64_t c = (int64_t) row / (k * k), ky = ((int64_t) row / k) % k, kx = (int64_t) row % k;
  const float* plane = ctx->input + c * h * w;
  float* dst = ctx->columns + (int64_t) row * oh * ow;
  if (s == 1 && ow == w) {
    same_padding_row(plane, dst, h, w, ky - pad, kx - pad);
    return;
  }
  /* Output columns whose input column ix = ox*s - pad + kx lies inside [0, w). */
  int64_t lo = pad - kx > 0 ? (pad - kx + s - 1) / s : 0;
  int64_t hi = w + pad - kx > 0 ? (w + pad - kx + s - 1) / s : 0;
  if (lo > ow) lo = ow;
  if (hi > ow) hi = ow;
  if (hi < lo) hi = lo;
  for (int64_t oy = 0; oy < oh; oy++, dst += ow) {
    const int64_t iy = oy * s - pad + ky;
    if (iy < 0 || iy >= h) {
      memset(dst, 0, (size_t) ow * sizeof(float));
      continue;
    }
    const float* src = plane + iy * w + (lo * s - pad + kx);
    memset(dst, 0, (size_t) lo * sizeof(float));
    if (s == 1) {
      memcpy(dst + lo, src, (size_t) (hi - lo) * sizeof(float));
    } else {
      for (int64_t ox = lo; ox < hi; ox++, src += s) dst[ox] = *src;
    }
    memset(dst + hi, 0, (size_t) (ow - hi) * sizeof(float));
  }
}

void im2col(const struct plan_line* line, const float* input, float* columns, parallelize_1d_fn parallelize,
            pthreadpool_t pool) {
  struct im2col_context ctx = { line, input, columns };
  parallelize(pool, im2col_row, &ctx, (size_t) (line->cin * line->k * line->k), 0);
}

static void check_one(const struct plan_line* L, const float* input, const float* weights,
                      const float* output, int output_nhwc, int64_t co, int64_t oy, int64_t ox,
                      struct reference_check* res) {
  const int64_t k = L->k, cin_g = L->cin_per_group;
  const int64_t cout_g = L->cout / L->groups, g = co / cout_g;
  double sum = 0.0, magnitude = 0.0;
  for (int64_t ci = 0; ci < cin_g; ci++) {
    const float* plane = input + (g * cin_g + ci) * L->h * L->w;
    const float* wk = weights + (co * cin_g + ci) * k * k;
    for (int64_t ky = 0; ky < k; ky++) {
      const int64_t iy = oy * L->stride - L->pad + ky;
      if (iy < 0 || iy >= L->h) continue;
      for (int64_t kx = 0; kx < k; kx++) {
        const int64_t ix = ox * L->stride - L->pad + kx;
        if (ix < 0 || ix >= L->w) continue;
        const double term = (double) wk[ky * k + kx] * (double) plane[iy * L->w + ix];
        sum += term;
        magnitude += fabs(term);
      }
    }
  }
  const int64_t pixel = oy * L->out_w + ox;
  const float got = output_nhwc ? output[pixel * L->cout + co] : output[co * L->out_h * L->out_w + pixel];
  if (!isfinite(got)) {
    res->non_finite = 1;
    res->worst_channel = co; res->worst_y = oy; res->worst_x = ox;
    return;
  }
  const double err = fabs((double) got - sum);
  const double ratio = err == 0.0 ? 0.0 : (magnitude > 0.0 ? err / magnitude : INFINITY);
  if (err > res->max_abs_err) res->max_abs_err = err;
  if (ratio > res->worst_ratio) {
    res->worst_ratio = ratio;
    res->worst_channel = co; res->worst_y = oy; res->worst_x = ox;
  }
}

void reference_check(const struct plan_line* line, const float* input, const float* weights,
                     const float* output, int output_nhwc, int samples, uint64_t seed,
                     struct reference_check* res) {
  struct rng r;
  const int64_t oh = line->out_h, ow = line->out_w;
  memset(res, 0, sizeof *res);
  rng_seed(&r, seed ^ 0x5DEECE66Dull);
  /* Corners first: they are where padding and im2col edge handling go wrong. */
  const int64_t corners[4][2] = { { 0, 0 }, { 0, ow - 1 }, { oh - 1, 0 }, { oh - 1, ow - 1 } };
  for (int i = 0; i < 4; i++) {
    const int64_t co = (int64_t) (rng_next(&r) % (uint64_t) line->cout);
    check_one(line, input, weights, output, output_nhwc, co, corners[i][0], corners[i][1], res);
  }
  for (int i = 0; i < samples; i++) {
    const int64_t co = (int64_t) (rng_next(&r) % (uint64_t) line->cout);
    const int64_t oy = (int64_t) (rng_next(&r) % (uint64_t) oh);
    const int64_t ox = (int64_t) (rng_next(&r) % (uint64_t) ow);
    check_one(line, input, weights, output, output_nhwc, co, oy, ox, res);
  }
}
