/* Minimal JSON for the runner: parse one flat object per plan line, write escaped output.
 * Nested values are skipped (they belong to no field the runner reads). */
#ifndef CONVBENCH_JSON_H
#define CONVBENCH_JSON_H

#include <stdio.h>

#define JSON_MAX_FIELDS 32
#define JSON_MAX_KEY 64
#define JSON_MAX_STR 256

enum json_kind { JSON_STRING, JSON_NUMBER, JSON_BOOL, JSON_NULL, JSON_NESTED };

struct json_field {
  char key[JSON_MAX_KEY];
  enum json_kind kind;
  char str[JSON_MAX_STR];
  double num;
};

struct json_object {
  int count;
  struct json_field fields[JSON_MAX_FIELDS];
};

/* Parses `text` as one JSON object. Returns 0 on success, otherwise -1 with a
 * sentence in `err` (size errlen) saying what is wrong and where. */
int json_parse_object(const char* text, struct json_object* out, char* err, size_t errlen);

const struct json_field* json_get(const struct json_object* obj, const char* key);

/* Writes `s` as a JSON string literal (with quotes), escaping as RFC 8259 requires. */
void json_write_string(FILE* f, const char* s);

/* Writes a double as a JSON number (null for NaN/inf, which JSON cannot express). */
void json_write_number(FILE* f, double v, int significant_digits);

#endif
