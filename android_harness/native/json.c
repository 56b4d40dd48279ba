/* Flat JSON object parser (strings, numbers, booleans, null; nested values skipped), a whole-document
 * tree parser on the same lexer (a network file's header), and string/number writers for result lines. */
#include "json.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct cursor {
  const char* p;
  const char* start;
  char* err;
  size_t errlen;
};

static int fail(struct cursor* c, const char* fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  snprintf(c->err, c->errlen, "malformed JSON at column %d: %s", (int) (c->p - c->start) + 1, what);
  return -1;
}

static void skip_ws(struct cursor* c) {
  while (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n') c->p++;
}

static int hex4(const char* p, unsigned* out) {
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char ch = p[i];
    v <<= 4;
    if (ch >= '0' && ch <= '9') v |= (unsigned) (ch - '0');
    else if (ch >= 'a' && ch <= 'f') v |= (unsigned) (ch - 'a' + 10);
    else if (ch >= 'A' && ch <= 'F') v |= (unsigned) (ch - 'A' + 10);
    else return -1;
  }
  *out = v;
  return 0;
}

static size_t put_utf8(char* dst, unsigned cp) {
  if (cp < 0x80) { dst[0] = (char) cp; return 1; }
  if (cp < 0x800) { dst[0] = (char) (0xC0 | (cp >> 6)); dst[1] = (char) (0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    dst[0] = (char) (0xE0 | (cp >> 12)); dst[1] = (char) (0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char) (0x80 | (cp & 0x3F)); return 3;
  }
  dst[0] = (char) (0xF0 | (cp >> 18)); dst[1] = (char) (0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char) (0x80 | ((cp >> 6) & 0x3F)); dst[3] = (char) (0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string literal at c->p into dst (may be NULL to skip); too long is an error. */
static int parse_string(struct cursor* c, char* dst, size_t cap) {
  size_t n = 0;
  if (*c->p != '"') return fail(c, "expected a string");
  c->p++;
  for (;;) {
    unsigned char ch = (unsigned char) *c->p;
    char buf[4];
    size_t len = 1;
    if (ch == '\0') return fail(c, "unterminated string");
    if (ch == '"') { c->p++; break; }
    if (ch < 0x20) return fail(c, "control character inside a string");
    if (ch == '\\') {
      char e = c->p[1];
      c->p += 2;
      switch (e) {
        case '"': buf[0] = '"'; break;
        case '\\': buf[0] = '\\'; break;
        case '/': buf[0] = '/'; break;
        case 'b': buf[0] = '\b'; break;
        case 'f': buf[0] = '\f'; break;
        case 'n': buf[0] = '\n'; break;
        case 'r': buf[0] = '\r'; break;
        case 't': buf[0] = '\t'; break;
        case 'u': {
          unsigned cp;
          if (hex4(c->p, &cp) != 0) return fail(c, "bad \\u escape");
          c->p += 4;
          if (cp >= 0xD800 && cp < 0xDC00 && c->p[0] == '\\' && c->p[1] == 'u') {
            unsigned lo;
            if (hex4(c->p + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              c->p += 6;
            }
          }
          if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate is no character */
          len = put_utf8(buf, cp);
          break;
        }
        default: c->p--; return fail(c, "bad escape sequence");
      }
    } else {
      buf[0] = (char) ch;
      c->p++;
    }
    if (dst != NULL) {
      if (n + len >= cap) return fail(c, "string longer than %zu bytes", cap - 1);
      memcpy(dst + n, buf, len);
    }
    n += len;
  }
  if (dst != NULL) dst[n] = '\0';
  return 0;
}

static int parse_number(struct cursor* c, double* out) {
  const char* s = c->p;
  if (*s == '-') s++;
  if (!isdigit((unsigned char) *s)) return fail(c, "expected a value");
  char* end;
  *out = strtod(c->p, &end);
  c->p = end;
  return 0;
}

static int skip_value(struct cursor* c, int depth);

static int skip_container(struct cursor* c, int depth) {
  char close = *c->p == '{' ? '}' : ']';
  int is_object = *c->p == '{';
  if (depth > 32) return fail(c, "nesting too deep");
  c->p++;
  skip_ws(c);
  if (*c->p == close) { c->p++; return 0; }
  for (;;) {
    skip_ws(c);
    if (is_object) {
      if (parse_string(c, NULL, 0) != 0) return -1;
      skip_ws(c);
      if (*c->p != ':') return fail(c, "expected ':'");
      c->p++;
      skip_ws(c);
    }
    if (skip_value(c, depth + 1) != 0) return -1;
    skip_ws(c);
    if (*c->p == ',') { c->p++; continue; }
    if (*c->p == close) { c->p++; return 0; }
    return fail(c, "expected ',' or '%c'", close);
  }
}

static int skip_value(struct cursor* c, int depth) {
  double ignored;
  if (*c->p == '"') return parse_string(c, NULL, 0);
  if (*c->p == '{' || *c->p == '[') return skip_container(c, depth);
  if (strncmp(c->p, "true", 4) == 0 || strncmp(c->p, "null", 4) == 0) { c->p += 4; return 0; }
  if (strncmp(c->p, "false", 5) == 0) { c->p += 5; return 0; }
  return parse_number(c, &ignored);
}

int json_parse_object(const char* text, struct json_object* out, char* err, size_t errlen) {
  struct cursor c = { text, text, err, errlen };
  out->count = 0;
  skip_ws(&c);
  if (*c.p != '{') return fail(&c, "a plan line must be a JSON object");
  c.p++;
  skip_ws(&c);
  if (*c.p == '}') { c.p++; goto trailing; }
  for (;;) {
    struct json_field* f;
    skip_ws(&c);
    if (out->count == JSON_MAX_FIELDS) return fail(&c, "more than %d fields", JSON_MAX_FIELDS);
    f = &out->fields[out->count];
    if (parse_string(&c, f->key, sizeof f->key) != 0) return -1;
    for (int i = 0; i < out->count; i++) {
      if (strcmp(out->fields[i].key, f->key) == 0) return fail(&c, "duplicate key \"%s\"", f->key);
    }
    skip_ws(&c);
    if (*c.p != ':') return fail(&c, "expected ':' after key \"%s\"", f->key);
    c.p++;
    skip_ws(&c);
    f->str[0] = '\0';
    f->num = 0.0;
    if (*c.p == '"') {
      f->kind = JSON_STRING;
      if (parse_string(&c, f->str, sizeof f->str) != 0) return -1;
    } else if (*c.p == '{' || *c.p == '[') {
      f->kind = JSON_NESTED;
      if (skip_container(&c, 0) != 0) return -1;
    } else if (strncmp(c.p, "true", 4) == 0) {
      f->kind = JSON_BOOL; f->num = 1.0; c.p += 4;
    } else if (strncmp(c.p, "false", 5) == 0) {
      f->kind = JSON_BOOL; c.p += 5;
    } else if (strncmp(c.p, "null", 4) == 0) {
      f->kind = JSON_NULL; c.p += 4;
    } else {
      f->kind = JSON_NUMBER;
      if (parse_number(&c, &f->num) != 0) return -1;
    }
    out->count++;
    skip_ws(&c);
    if (*c.p == ',') { c.p++; continue; }
    if (*c.p == '}') { c.p++; break; }
    return fail(&c, "expected ',' or '}'");
  }
trailing:
  skip_ws(&c);
  if (*c.p != '\0') return fail(&c, "unexpected text after the object");
  return 0;
}

const struct json_field* json_get(const struct json_object* obj, const char* key) {
  for (int i = 0; i < obj->count; i++) {
    if (strcmp(obj->fields[i].key, key) == 0) return &obj->fields[i];
  }
  return NULL;
}

/* ---- whole documents ---- */
#define JSON_MAX_DEPTH 64

/* A string literal's decoded length never exceeds its raw length (escapes only shrink). */
static size_t raw_string_length(const char* p) {
  size_t n = 0;
  for (p++; *p != '\0' && *p != '"'; p++, n++) {
    if (*p == '\\' && p[1] != '\0') { p++; n++; }
  }
  return n;
}

static char* parse_owned_string(struct cursor* c) {
  if (*c->p != '"') { fail(c, "expected a string"); return NULL; }
  const size_t cap = raw_string_length(c->p) + 1;
  char* s = malloc(cap);
  if (s == NULL) { fail(c, "out of memory"); return NULL; }
  if (parse_string(c, s, cap) != 0) { free(s); return NULL; }
  return s;
}

static int parse_tree(struct cursor* c, struct json_value* v, int depth);

/* Appends one zeroed item (and key slot for objects) to a container, growing it geometrically. */
static struct json_value* add_item(struct cursor* c, struct json_value* v, size_t* cap) {
  if (v->count == *cap) {
    const size_t grown = *cap ? *cap * 2 : 4;
    struct json_value* items = realloc(v->items, grown * sizeof *items);
    if (items == NULL) { fail(c, "out of memory"); return NULL; }
    v->items = items;
    if (v->kind == JSON_OBJECT) {
      char** keys = realloc(v->keys, grown * sizeof *keys);
      if (keys == NULL) { fail(c, "out of memory"); return NULL; }
      v->keys = keys;
    }
    *cap = grown;
  }
  memset(&v->items[v->count], 0, sizeof v->items[0]);
  v->items[v->count].kind = JSON_NULL;
  if (v->kind == JSON_OBJECT) v->keys[v->count] = NULL;
  return &v->items[v->count++];
}

static int parse_container(struct cursor* c, struct json_value* v, int depth) {
  const int is_object = *c->p == '{';
  const char close = is_object ? '}' : ']';
  size_t cap = 0;
  v->kind = is_object ? JSON_OBJECT : JSON_ARRAY;
  if (depth >= JSON_MAX_DEPTH) return fail(c, "nesting deeper than %d levels", JSON_MAX_DEPTH);
  c->p++;
  skip_ws(c);
  if (*c->p == close) { c->p++; return 0; }
  for (;;) {
    skip_ws(c);
    char* key = NULL;
    if (is_object) {
      if ((key = parse_owned_string(c)) == NULL) return -1;
      if (json_member(v, key) != NULL) { fail(c, "duplicate key \"%.60s\"", key); free(key); return -1; }
      skip_ws(c);
      if (*c->p != ':') { free(key); return fail(c, "expected ':'"); }
      c->p++;
      skip_ws(c);
    }
    struct json_value* item = add_item(c, v, &cap);
    if (item == NULL) { free(key); return -1; }
    if (is_object) v->keys[v->count - 1] = key;
    if (parse_tree(c, item, depth + 1) != 0) return -1;
    skip_ws(c);
    if (*c->p == ',') { c->p++; continue; }
    if (*c->p == close) { c->p++; return 0; }
    return fail(c, "expected ',' or '%c'", close);
  }
}

static int parse_tree(struct cursor* c, struct json_value* v, int depth) {
  if (*c->p == '"') {
    v->kind = JSON_STRING;
    return (v->str = parse_owned_string(c)) == NULL ? -1 : 0;
  }
  if (*c->p == '{' || *c->p == '[') return parse_container(c, v, depth);
  if (strncmp(c->p, "true", 4) == 0) { v->kind = JSON_BOOL; v->num = 1.0; c->p += 4; return 0; }
  if (strncmp(c->p, "false", 5) == 0) { v->kind = JSON_BOOL; c->p += 5; return 0; }
  if (strncmp(c->p, "null", 4) == 0) { v->kind = JSON_NULL; c->p += 4; return 0; }
  v->kind = JSON_NUMBER;
  return parse_number(c, &v->num);
}

int json_parse_document(const char* text, struct json_value* out, char* err, size_t errlen) {
  struct cursor c = { text, text, err, errlen };
  memset(out, 0, sizeof *out);
  out->kind = JSON_NULL;
  skip_ws(&c);
  if (parse_tree(&c, out, 0) != 0) return -1;
  skip_ws(&c);
  if (*c.p != '\0') return fail(&c, "unexpected text after the value");
  return 0;
}

void json_free_document(struct json_value* v) {
  for (size_t i = 0; i < v->count; i++) {
    json_free_document(&v->items[i]);
    if (v->keys != NULL) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->str);
  memset(v, 0, sizeof *v);
  v->kind = JSON_NULL;
}

const struct json_value* json_member(const struct json_value* object, const char* key) {
  if (object == NULL || object->kind != JSON_OBJECT) return NULL;
  for (size_t i = 0; i < object->count; i++) {
    if (object->keys[i] != NULL && strcmp(object->keys[i], key) == 0) return &object->items[i];
  }
  return NULL;
}

void json_write_string(FILE* f, const char* s) {
  fputc('"', f);
  for (const unsigned char* p = (const unsigned char*) s; *p; p++) {
    switch (*p) {
      case '"': fputs("\\\"", f); break;
      case '\\': fputs("\\\\", f); break;
      case '\n': fputs("\\n", f); break;
      case '\r': fputs("\\r", f); break;
      case '\t': fputs("\\t", f); break;
      case '\b': fputs("\\b", f); break;
      case '\f': fputs("\\f", f); break;
      default:
        if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
  }
  fputc('"', f);
}

void json_write_number(FILE* f, double v, int significant_digits) {
  if (!isfinite(v)) { fputs("null", f); return; }
  fprintf(f, "%.*g", significant_digits, v);
}
