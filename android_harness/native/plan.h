/* A validated plan line: the layer spec of ARCHITECTURE.md plus id, impl and threads. */
#ifndef CONVBENCH_PLAN_H
#define CONVBENCH_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"

enum layer_op { OP_CONV, OP_DWCONV };
enum layer_impl { IMPL_DENSE, IMPL_SPARSE };

struct plan_line {
  char id[JSON_MAX_STR];
  int has_id;
  enum layer_op op;
  enum layer_impl impl;
  int64_t cin, cout, k, stride, pad, h, w, threads;
  double density;
  /* derived */
  int64_t out_h, out_w, groups, cin_per_group;
};

/* Parses and validates one plan line. On failure returns -1 with a sentence naming the
 * field and value in err; line->id/has_id are still filled when the id could be read. */
int plan_parse(const char* text, struct plan_line* line, char* err, size_t errlen);

/* A seed derived from the canonical layer fields (not id, impl or threads), so the same
 * layer always gets the same weights and inputs, for either implementation. */
uint64_t plan_seed(const struct plan_line* line);

#endif
