/* See pte_plan.h. */
#include "pte_plan.h"

#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>
#include <cmath>

extern "C" {
#include "json.h"
}

double pte_now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

std::string pte_say(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

bool pte_number_flag(const char* v, double lo, double hi, bool integer, double* out) {
  char* end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !(x >= lo && x <= hi) || (integer && x != std::floor(x))) return false;
  *out = x;
  return true;
}

bool pte_set_affinity(const char* text) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const char* p = (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) ? text + 2 : text;
  size_t n = strlen(p);
  for (size_t i = 0; i < n; i++) {
    const char c = p[n - 1 - i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (v < 0) return false;
    for (int bit = 0; bit < 4; bit++)
      if ((v >> bit) & 1 && i * 4 + bit < CPU_SETSIZE) CPU_SET(i * 4 + bit, &set);
  }
  return n > 0 && CPU_COUNT(&set) > 0 && sched_setaffinity(0, sizeof set, &set) == 0;
}

std::string pte_cpu_name() {
  FILE* f = fopen("/proc/cpuinfo", "r");
  char line[512];
  std::string name = "unknown";
  while (f != nullptr && fgets(line, sizeof line, f) != nullptr) {
    if (strncmp(line, "model name", 10) && strncmp(line, "Hardware", 8)) continue;
    char* v = strchr(line, ':');
    if (v == nullptr) continue;
    for (v++; *v == ' ' || *v == '\t'; v++) {}
    v[strcspn(v, "\n")] = '\0';
    if (*v) { name = v; break; }
  }
  if (f != nullptr) fclose(f);
  return name;
}

std::string pte_json_str(const std::string& text) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* mem = open_memstream(&buf, &len);
  json_write_string(mem, text.c_str());
  fclose(mem);
  std::string out(buf, len);
  free(buf);
  return out;
}

static std::string shape_json(const std::vector<int>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string pte_error_json(const pte_line& line, const std::string& message) {
  return "{\"id\": " + (line.has_id ? pte_json_str(line.id) : std::string("null")) + ", \"error\": " + pte_json_str(message) + "}\n";
}

std::string pte_result_json(const pte_line& line, const pte_result& r) {
  std::string s = "{\"id\": " + pte_json_str(line.id);
  s += pte_say(", \"runtime\": \"%s\", \"threads\": %zu, \"us_min\": %.3f, \"us_median\": %.3f, \"us_mean\": %.3f, "
           "\"us_std\": %.3f, \"reps\": %d, \"timed_us\": %.3f, \"line_us\": %.3f, \"load_us\": %.3f",
           r.sparse_runtime ? "sparse" : "executorch", r.threads, r.us_min, r.us_median, r.us_mean, r.us_std, r.reps, r.timed_us, r.line_us, r.load_us);
  s += ", \"input_shape\": " + shape_json(r.input_shape) + ", \"output_shape\": " + shape_json(r.output_shape);
  if (r.sparse_runtime) {
    s += ", \"sparse_layers\": [";
    for (size_t i = 0; i < r.sparse_layers.size(); i++) s += (i ? ", " : "") + pte_json_str(r.sparse_layers[i]);
    s += pte_say("], \"layers\": %d, \"conversions\": %d, \"max_abs_error\": %.6g", r.layers, r.conversions, r.max_abs_error);
    s += ", \"xnnpack\": " + pte_json_str(r.xnnpack) + ", \"xnnpack_sparse\": " +
         (r.xnnpack_sparse.empty() ? std::string("null") : pte_json_str(r.xnnpack_sparse));
    s += ", \"sparse_path\": " + (r.sparse_path.empty() ? std::string("null") : pte_json_str(r.sparse_path));
    s += ", \"not_xnnpack\": " + (r.not_xnnpack.empty() ? std::string("null") : pte_json_str(r.not_xnnpack));
    return s + "}\n";
  }
  s += ", \"backends\": [";
  for (size_t i = 0; i < r.backends.size(); i++) s += (i ? ", " : "") + pte_json_str(r.backends[i]);
  s += "]";
  if (!r.ops_json.empty()) s += ", \"ops\": " + r.ops_json;
  return s + "}\n";
}

void pte_emit(const std::string& text) {
  fputs(text.c_str(), stdout);
  fflush(stdout);
}

bool pte_parse_line(const char* text, pte_line* line, std::string* err) {
  struct json_object obj;
  char buf[512];
  if (json_parse_object(text, &obj, buf, sizeof buf) != 0) { *err = buf; return false; }
  const struct json_field* f = json_get(&obj, "id");
  if (f == nullptr) { *err = "field \"id\" is missing"; return false; }
  if (f->kind == JSON_STRING) line->id = f->str;
  else if (f->kind == JSON_NUMBER) line->id = pte_say("%.17g", f->num);
  else { *err = "field \"id\" must be a string"; return false; }
  line->has_id = true;
  f = json_get(&obj, "pte");
  const struct json_field* net = json_get(&obj, "net");
  if (f != nullptr && net != nullptr) { *err = "a plan line names either a \"pte\" or a \"net\" file, not both"; return false; }
  if (net != nullptr) {
    if (net->kind != JSON_STRING || !net->str[0]) { *err = "field \"net\" must be the path of a jcw network file"; return false; }
    line->net = net->str;
  } else {
    if (f == nullptr || f->kind != JSON_STRING || !f->str[0]) { *err = "field \"pte\" must be the path of a .pte file"; return false; }
    line->pte = f->str;
  }
  f = json_get(&obj, "threads");
  if (f != nullptr && f->kind != JSON_NULL) {
    if (f->kind != JSON_NUMBER || f->num != std::floor(f->num) || f->num < 0 || f->num > 256) {
      *err = "field \"threads\" must be an integer from 0 (ExecuTorch's default) to 256";
      return false;
    }
    line->threads = (long) f->num;
  }
  f = json_get(&obj, "input_file");
  if (f != nullptr && f->kind != JSON_NULL) {
    if (f->kind != JSON_STRING || !f->str[0]) { *err = "field \"input_file\" must be a path"; return false; }
    line->input_file = f->str;
  }
  f = json_get(&obj, "profile_ops");
  if (f != nullptr && f->kind != JSON_NULL) {
    if (f->kind != JSON_BOOL) { *err = "field \"profile_ops\" must be true or false"; return false; }
    line->profile_ops = f->num != 0;
  }
  f = json_get(&obj, "sparse_path");
  if (f != nullptr && f->kind != JSON_NULL) {
    const std::string v = f->kind == JSON_STRING ? f->str : "";
    if (v != "auto" && v != "xnnpack" && v != "segments") {
      *err = "field \"sparse_path\" must be \"auto\", \"xnnpack\" or \"segments\"";
      return false;
    }
    if (line->net.empty()) { *err = "\"sparse_path\" applies to \"net\" lines"; return false; }
    line->sparse_path = v;
  }
  if (!line->net.empty() && (!line->input_file.empty() || line->profile_ops)) {
    *err = "\"input_file\" and \"profile_ops\" apply to \"pte\" lines; a \"net\" line runs on its file's check input";
    return false;
  }
  return true;
}

bool pte_timer::add(double dt) {
  if (warmup_left_ > 0) {
    warm_ += dt;
    warmup_left_ = warm_ >= o_.warmup_ms * 1e3 ? 0 : warmup_left_ - 1;
    return false;
  }
  samples_.push_back(dt);
  timed_ += dt;
  const int reps = (int) samples_.size();
  return reps >= o_.max_reps || (reps >= o_.min_reps && timed_ >= o_.min_time_ms * 1e3) || (reps >= 2 && timed_ >= o_.max_time_ms * 1e3);
}

void pte_timer::summarize(pte_result* r) const {
  std::vector<double> sorted = samples_;
  const int reps = (int) sorted.size();
  double sum = 0.0, sq = 0.0;
  for (double s : sorted) sum += s;
  r->us_mean = sum / reps;
  for (double s : sorted) sq += (s - r->us_mean) * (s - r->us_mean);
  r->us_std = reps > 1 ? std::sqrt(sq / (reps - 1)) : 0.0;
  std::sort(sorted.begin(), sorted.end());
  r->us_min = sorted[0];
  r->us_median = reps % 2 ? sorted[reps / 2] : 0.5 * (sorted[reps / 2 - 1] + sorted[reps / 2]);
  r->reps = reps;
  r->timed_us = timed_;
}

std::string pte_dump_path(const char* dir, const std::string& id, const char* suffix) {
  std::string safe = id;
  for (char& c : safe)
    if (!(isalnum((unsigned char) c) || c == '.' || c == '_' || c == '-')) c = '_';
  return std::string(dir) + "/" + safe + suffix;
}

bool pte_write_file(const std::string& path, const void* data, size_t bytes, std::string* err) {
  FILE* f = fopen(path.c_str(), "wb");
  bool ok = f != nullptr && fwrite(data, 1, bytes, f) == bytes;
  if (f != nullptr && fclose(f) != 0) ok = false;
  if (!ok) *err = pte_say("cannot write %s: %s", path.c_str(), strerror(errno));
  return ok;
}

