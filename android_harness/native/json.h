/* Minimal JSON for the runners: parse one flat object per plan line (nested values skipped: they
 * belong to no field a plan line carries), parse a whole document into a tree (a network file's
 * header), write escaped output. */
#ifndef CONVBENCH_JSON_H
#define CONVBENCH_JSON_H

#include <stdio.h>

#define JSON_MAX_FIELDS 32
#define JSON_MAX_KEY 64
#define JSON_MAX_STR 256

enum json_kind { JSON_STRING, JSON_NUMBER, JSON_BOOL, JSON_NULL, JSON_NESTED, JSON_ARRAY, JSON_OBJECT };

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

/* One value of a parsed document: kind JSON_STRING (str), JSON_NUMBER or JSON_BOOL (num), JSON_NULL,
 * JSON_ARRAY (count items) or JSON_OBJECT (count items named by keys, no duplicate key). */
struct json_value {
  enum json_kind kind;
  double num;
  char* str;
  size_t count;
  struct json_value* items;
  char** keys;
};

/* Parses `text` (any JSON value, nested at most 64 deep) into *out. Returns 0, or -1 with a sentence in
 * `err`; free the tree with json_free_document either way. */
int json_parse_document(const char* text, struct json_value* out, char* err, size_t errlen);
void json_free_document(struct json_value* value);

/* The member `key` of an object, or NULL (also when `object` is no object). */
const struct json_value* json_member(const struct json_value* object, const char* key);

/* Writes `s` as a JSON string literal (with quotes), escaping as RFC 8259 requires. */
void json_write_string(FILE* f, const char* s);

/* Writes a double as a JSON number (null for NaN/inf, which JSON cannot express). */
void json_write_number(FILE* f, double v, int significant_digits);

#endif
