/* ptebench's plumbing that needs no ExecuTorch: options, plan lines and their parsing, result and
 * error lines as JSON text, and small helpers (clock, formatting, CPU pinning, files). */
#ifndef PTEBENCH_PTE_PLAN_H
#define PTEBENCH_PTE_PLAN_H

#include <stddef.h>

#include <string>
#include <vector>

struct pte_options {
  int warmup = 2, min_reps = 5, max_reps = 1000, profile_reps = 5;
  double warmup_ms = 5.0, min_time_ms = 30.0, max_time_ms = 5000.0, max_mb = 1024.0, timeout_s = 600.0;
  const char* dump_dir = nullptr;
};

struct pte_line {
  std::string id, pte, net, input_file;  /* exactly one of pte (ExecuTorch program) and net (jcw network file) */
  std::string sparse_path = "auto";      /* net lines: "auto", "xnnpack" or "segments" (net_cluster.h) */
  bool has_id = false, profile_ops = false;
  long threads = 0;
};

struct pte_result {
  size_t threads = 0;
  double us_min = 0, us_median = 0, us_mean = 0, us_std = 0, timed_us = 0, load_us = 0, line_us = 0;
  int reps = 0;
  std::vector<int> input_shape, output_shape;
  std::vector<std::string> backends;
  std::string ops_json;
  /* net lines (runtime "sparse", NETFILE.md): */
  bool sparse_runtime = false;
  std::vector<std::string> sparse_layers;
  int layers = 0, conversions = 0;
  double max_abs_error = 0;
  std::string xnnpack, xnnpack_sparse;  /* xnnpack_sparse "" when no NCHW operator ran (null) */
  std::string sparse_path, not_xnnpack;  /* "xnnpack" / "segments" / "" (null); why not XNNPACK's path ("": null) */
};

/* The timing loop's bookkeeping, shared by both runtimes: warm-up runs (cut short after --warmup-ms, at
 * least one), then timed runs until --min-reps and --min-time-ms are both met, or --max-reps, or
 * --max-time-ms (after 2). add() takes each run's duration and says when to stop. */
class pte_timer {
 public:
  explicit pte_timer(const pte_options& o) : o_(o), warmup_left_(o.warmup) {}
  bool add(double dt_us);
  void summarize(pte_result* r) const;  /* us_min, us_median, us_mean, us_std, reps, timed_us */

 private:
  const pte_options& o_;
  int warmup_left_;
  double warm_ = 0, timed_ = 0;
  std::vector<double> samples_;
};

double pte_now_us();
std::string pte_say(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
bool pte_number_flag(const char* v, double lo, double hi, bool integer, double* out);
bool pte_set_affinity(const char* hex_mask);
std::string pte_cpu_name();
std::string pte_json_str(const std::string& text);

/* One plan line: {"id": str, "pte" or "net": str, "threads": int 0..256, "input_file": str, "profile_ops": bool,
 * "sparse_path": "auto" | "xnnpack" | "segments"} (input_file and profile_ops: pte lines only; sparse_path:
 * net lines only). */
bool pte_parse_line(const char* text, pte_line* line, std::string* err);
std::string pte_error_json(const pte_line& line, const std::string& message);
std::string pte_result_json(const pte_line& line, const pte_result& r);
void pte_emit(const std::string& text);  /* to stdout, flushed */

/* <dir>/<id><suffix>, characters outside [A-Za-z0-9._-] of the id replaced by '_'. */
std::string pte_dump_path(const char* dir, const std::string& id, const char* suffix);
bool pte_write_file(const std::string& path, const void* data, size_t bytes, std::string* err);

#endif
