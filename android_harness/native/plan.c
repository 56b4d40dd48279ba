/* Plan line parsing and validation: every rejection is one sentence naming the field and
 * the offending value, in the spirit of profiler/layerspec.py. */
#include "plan.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "spec_limits.h" /* generated from profiler/spec_limits.py, the limits Python uses */

static int get_int(const struct json_object* obj, const char* key, int required, int64_t fallback,
                   int64_t min, int64_t max, int64_t* out, char* err, size_t errlen) {
  const struct json_field* f = json_get(obj, key);
  if (f == NULL || (f->kind == JSON_NULL && !required)) {
    if (required) { snprintf(err, errlen, "field \"%s\" is missing", key); return -1; }
    *out = fallback;
    return 0;
  }
  if (f->kind == JSON_STRING) {
    snprintf(err, errlen, "field \"%s\" must be an integer, got the string \"%s\"", key, f->str);
    return -1;
  }
  if (f->kind != JSON_NUMBER) {
    snprintf(err, errlen, "field \"%s\" must be an integer", key);
    return -1;
  }
  if (f->num != floor(f->num)) {
    snprintf(err, errlen, "field \"%s\" must be an integer, got %.17g", key, f->num);
    return -1;
  }
  if (f->num < (double) min || f->num > (double) max) {
    snprintf(err, errlen, "field \"%s\" must be between %lld and %lld, got %.17g", key,
             (long long) min, (long long) max, f->num);
    return -1;
  }
  *out = (int64_t) f->num;
  return 0;
}

static int get_enum(const struct json_object* obj, const char* key, const char* a, const char* b,
                    int* out, char* err, size_t errlen) {
  const struct json_field* f = json_get(obj, key);
  if (f == NULL) { snprintf(err, errlen, "field \"%s\" is missing", key); return -1; }
  if (f->kind == JSON_STRING && strcmp(f->str, a) == 0) { *out = 0; return 0; }
  if (f->kind == JSON_STRING && strcmp(f->str, b) == 0) { *out = 1; return 0; }
  snprintf(err, errlen, "field \"%s\" must be \"%s\" or \"%s\", got %s%s%s", key, a, b,
           f->kind == JSON_STRING ? "\"" : "", f->kind == JSON_STRING ? f->str : "a non-string",
           f->kind == JSON_STRING ? "\"" : "");
  return -1;
}

int plan_parse(const char* text, struct plan_line* line, char* err, size_t errlen) {
  struct json_object obj;
  int op, impl;
  const struct json_field* f;

  memset(line, 0, sizeof *line);
  if (json_parse_object(text, &obj, err, errlen) != 0) return -1;

  f = json_get(&obj, "id");
  if (f == NULL) { snprintf(err, errlen, "field \"id\" is missing"); return -1; }
  if (f->kind == JSON_STRING) {
    snprintf(line->id, sizeof line->id, "%s", f->str);
  } else if (f->kind == JSON_NUMBER) {
    snprintf(line->id, sizeof line->id, "%.17g", f->num);
  } else {
    snprintf(err, errlen, "field \"id\" must be a string");
    return -1;
  }
  line->has_id = 1;

  if (get_enum(&obj, "op", "conv", "dwconv", &op, err, errlen) != 0) return -1;
  if (get_enum(&obj, "impl", "dense", "sparse", &impl, err, errlen) != 0) return -1;
  line->op = (enum layer_op) op;
  line->impl = (enum layer_impl) impl;
  if (get_int(&obj, "cin", 1, 0, SPEC_CIN_MIN, SPEC_CIN_MAX, &line->cin, err, errlen) != 0) return -1;
  if (get_int(&obj, "cout", 1, 0, SPEC_COUT_MIN, SPEC_COUT_MAX, &line->cout, err, errlen) != 0) return -1;
  if (get_int(&obj, "k", 1, 0, SPEC_K_MIN, SPEC_K_MAX, &line->k, err, errlen) != 0) return -1;
  if (get_int(&obj, "stride", 0, 1, SPEC_STRIDE_MIN, SPEC_STRIDE_MAX, &line->stride, err, errlen) != 0) return -1;
  if (get_int(&obj, "pad", 0, line->k / 2, SPEC_PAD_MIN, SPEC_PAD_MAX, &line->pad, err, errlen) != 0) return -1;
  if (get_int(&obj, "h", 1, 0, SPEC_H_MIN, SPEC_H_MAX, &line->h, err, errlen) != 0) return -1;
  if (get_int(&obj, "w", 1, 0, SPEC_W_MIN, SPEC_W_MAX, &line->w, err, errlen) != 0) return -1;
  if (get_int(&obj, "threads", 0, 1, SPEC_THREADS_MIN, SPEC_THREADS_MAX, &line->threads, err, errlen) != 0) return -1;

  f = json_get(&obj, "density");
  if (f == NULL || f->kind == JSON_NULL) {
    line->density = 1.0;
  } else if (f->kind != JSON_NUMBER || !(f->num > 0.0 && f->num <= 1.0)) {
    if (f->kind == JSON_NUMBER) snprintf(err, errlen, "field \"density\" must be in (0, 1], got %.17g", f->num);
    else snprintf(err, errlen, "field \"density\" must be a number in (0, 1]");
    return -1;
  } else {
    line->density = f->num;
  }

  if (line->op == OP_DWCONV) {
    if (line->cin != line->cout) {
      snprintf(err, errlen, "a dwconv needs cin == cout, got cin %lld and cout %lld",
               (long long) line->cin, (long long) line->cout);
      return -1;
    }
    if (line->impl == IMPL_SPARSE) {
      snprintf(err, errlen, "impl \"sparse\" is not available for op \"dwconv\" (XNNPACK's SpMM needs a dense-group convolution)");
      return -1;
    }
    line->groups = line->cin;
    line->cin_per_group = 1;
  } else {
    line->groups = 1;
    line->cin_per_group = line->cin;
  }
  if (line->k > line->h + 2 * line->pad || line->k > line->w + 2 * line->pad) {
    snprintf(err, errlen, "kernel %lld is larger than the padded input %lldx%lld (h %lld, w %lld, pad %lld)",
             (long long) line->k, (long long) (line->h + 2 * line->pad), (long long) (line->w + 2 * line->pad),
             (long long) line->h, (long long) line->w, (long long) line->pad);
    return -1;
  }
  line->out_h = (line->h + 2 * line->pad - line->k) / line->stride + 1;
  line->out_w = (line->w + 2 * line->pad - line->k) / line->stride + 1;
  return 0;
}

uint64_t plan_seed(const struct plan_line* line) {
  char canon[256];
  uint64_t hash = 1469598103934665603ull; /* FNV-1a */
  int n = snprintf(canon, sizeof canon, "op=%s,cin=%lld,cout=%lld,k=%lld,stride=%lld,pad=%lld,h=%lld,w=%lld,density=%.17g",
                   line->op == OP_CONV ? "conv" : "dwconv", (long long) line->cin, (long long) line->cout,
                   (long long) line->k, (long long) line->stride, (long long) line->pad, (long long) line->h,
                   (long long) line->w, line->density);
  for (int i = 0; i < n; i++) {
    hash ^= (unsigned char) canon[i];
    hash *= 1099511628211ull;
  }
  return hash;
}
