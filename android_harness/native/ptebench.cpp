/* ptebench: times whole forward() calls of ExecuTorch programs (.pte) with the pinned wheel's C++
 * runtime and its XNNPACK delegate. Plan JSON Lines in (stdin or --plan FILE), one result line per
 * plan line out, in order, flushed at once; a bad program is an error line, never a crash. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include "net_engine.h"
#include "net_file.h"
#include "pte_isolate.h"
#include "pte_plan.h"
#include "pte_profile.h"

#ifndef PTEBENCH_VERSION
#define PTEBENCH_VERSION "0.1.0"
#endif
#ifndef EXECUTORCH_VERSION
#define EXECUTORCH_VERSION "unknown"
#endif
#if defined(__aarch64__)
#define ARCH "aarch64"
#elif defined(__x86_64__)
#define ARCH "x86_64"
#else
#define ARCH "unknown"
#endif

/* The wheel ships no threadpool.h; these two non-virtual members and the accessor are what
 * libexecutorch_threadpool.so exports (extension/threadpool/threadpool.h of the same release). */
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Program;
namespace tp = executorch::extension::threadpool;

static const char usage[] =
  "usage: ptebench [--plan FILE] [--info] [options] < plan.jsonl\n"
  "Times whole forward() calls of ExecuTorch programs, one JSON result per plan line\n"
  "{\"id\", \"pte\": path, \"threads\": N (0 = ExecuTorch's default), [\"input_file\": raw f32], [\"profile_ops\": true]},\n"
  "and whole runs of jcw network files on the sparse network engine (runtime \"sparse\", NETFILE.md)\n"
  "{\"id\", \"net\": path, \"threads\": N, [\"sparse_path\": \"auto\" | \"xnnpack\" | \"segments\"]}: checked against the\n"
  "file's reference output, then timed on its input; sparse layers run with XNNPACK's own sparse inference where\n"
  "the network qualifies and XNNPACK rewrites it on this CPU (auto, the default), else as NCHW SpMM segments.\n"
  "  --plan FILE          read the plan from FILE instead of stdin\n"
  "  --info               print the header line {\"runner\": {...}} and exit\n"
  "  --warmup N           untimed runs before timing (default 2) ...\n"
  "  --warmup-ms X        ... but no more once they took X ms; at least one runs (default 5)\n"
  "  --min-reps N         timed runs at least (default 5)\n"
  "  --min-time-ms X      and timed time at least X ms (default 30)\n"
  "  --max-reps N         never more timed runs than N, even below --min-reps (default 1000)\n"
  "  --max-time-ms X      stop once X ms are timed, after at least 2 runs (default 5000)\n"
  "  --profile-reps N     runs traced per operator for lines with \"profile_ops\": true (default 5)\n"
  "  --max-mb X           cap on a program's input size in MB (default 1024)\n"
  "  --timeout-s X        a line still running after X s is an error result (default 600)\n"
  "  --affinity MASK      pin the runner and its threads to the CPUs in hex MASK (e.g. f0)\n"
  "  --dump DIR           write <id>.input.f32 and <id>.output.f32 (first output), little-endian float32\n"
  "  --max-mb also caps a network file and the engine's buffers.\n";

static int usage_error(const std::string& what) {
  fprintf(stderr, "ptebench: %s; see ptebench --help.\n", what.c_str());
  return 2;
}

static void write_header(const pte_options& o, size_t default_threads) {
  printf("{\"runner\": {\"name\": \"ptebench\", \"version\": \"%s\", \"executorch\": \"%s\", \"default_threads\": %zu, "
         "\"xnnpack_registered\": %s, \"cpu\": %s, \"arch\": \"%s\", \"cores\": %ld, \"timing\": {\"warmup\": %d, "
         "\"warmup_ms\": %g, \"min_reps\": %d, \"min_time_ms\": %g, \"max_reps\": %d, \"max_time_ms\": %g, "
         "\"clock\": \"CLOCK_MONOTONIC\", \"timed\": \"Module::execute(forward)\"}, \"timeout_s\": %g, \"net_format_version\": 1, "
         "\"xnnpack_sparse_inference\": %s}}\n",
         PTEBENCH_VERSION, EXECUTORCH_VERSION, default_threads,
         executorch::runtime::get_backend_class("XnnpackBackend") ? "true" : "false", pte_json_str(pte_cpu_name()).c_str(), ARCH,
         sysconf(_SC_NPROCESSORS_ONLN), o.warmup, o.warmup_ms, o.min_reps, o.min_time_ms, o.max_reps, o.max_time_ms,
         o.timeout_s, net_cluster_probe() ? "true" : "false");
  fflush(stdout);
}

/* Fixed-seed splitmix64 -> uniform [-1, 1) with 24-bit resolution: the same input on every machine. */
static void fill_input(std::vector<float>& data) {
  uint64_t s = 0x6a63772d707465ULL;  /* "jcw-pte" */
  for (float& v : data) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    v = (float) ((double) (z >> 40) / 16777216.0 * 2.0 - 1.0);
  }
}

/* Checks the file before ExecuTorch sees it: present, readable, long enough, with an ET header. */
static bool check_program_file(const std::string& path, std::string* err) {
  FILE* f = fopen(path.c_str(), "rb");
  if (f == nullptr) { *err = pte_say("cannot open %s: %s", path.c_str(), strerror(errno)); return false; }
  unsigned char head[Program::kMinHeadBytes];
  size_t n = fread(head, 1, sizeof head, f);
  fclose(f);
  if (n < sizeof head) { *err = pte_say("%s is too short (%zu bytes) to be an ExecuTorch program", path.c_str(), n); return false; }
  switch (Program::check_header(head, n)) {
    case Program::HeaderStatus::CompatibleVersion: return true;
    case Program::HeaderStatus::IncompatibleVersion:
      *err = pte_say("%s is an ExecuTorch program of a format version this runtime (%s) cannot run", path.c_str(), EXECUTORCH_VERSION);
      return false;
    default:
      *err = pte_say("%s is not an ExecuTorch program (.pte): its header lacks the program identifier", path.c_str());
      return false;
  }
}

static bool run_line(const pte_line& line, const pte_options& o, size_t default_threads, pte_result* r, std::string* err) {
  const double line_t0 = pte_now_us();
  if (!check_program_file(line.pte, err)) return false;
  /* The XNNPACK delegate takes the pool when a method loads: resize it first, never under a loaded method. */
  tp::ThreadPool* pool = tp::get_threadpool();
  pool->_unsafe_reset_threadpool((uint32_t) (line.threads > 0 ? (size_t) line.threads : default_threads));
  r->threads = pool->get_thread_count();

  const double load_t0 = pte_now_us();
  auto module = std::make_unique<Module>(line.pte, Module::LoadMode::File);
  Error e = module->load(Program::Verification::InternalConsistency);
  if (e != Error::Ok) {
    *err = pte_say("ExecuTorch rejected %s (%s): the program is truncated or corrupt", line.pte.c_str(), executorch::runtime::to_string(e));
    return false;
  }
  auto names = module->method_names();
  if (!names.ok() || !names->count("forward")) { *err = pte_say("%s has no forward method", line.pte.c_str()); return false; }
  auto meta = module->method_meta("forward");
  if (!meta.ok()) { *err = pte_say("cannot read the forward method of %s (%s)", line.pte.c_str(), executorch::runtime::to_string(meta.error())); return false; }
  if (meta->num_inputs() != 1) {
    *err = pte_say("the forward method takes %zu inputs; ptebench runs programs with exactly one float32 tensor input", meta->num_inputs());
    return false;
  }
  auto tag = meta->input_tag(0);
  auto info = meta->input_tensor_meta(0);
  if (!tag.ok() || *tag != executorch::runtime::Tag::Tensor || !info.ok()) {
    *err = "the forward method's input is not a tensor; ptebench runs programs with one float32 tensor input";
    return false;
  }
  if (info->scalar_type() != executorch::aten::ScalarType::Float) {
    *err = pte_say("the forward method's input is %s, not float32", executorch::runtime::toString(info->scalar_type()));
    return false;
  }
  for (size_t i = 0; i < meta->num_backends(); i++) {
    auto name = meta->get_backend_name(i);
    if (name.ok() && std::find(r->backends.begin(), r->backends.end(), *name) == r->backends.end())
      r->backends.emplace_back(*name);
  }
  size_t numel = 1;
  for (int32_t s : info->sizes()) { r->input_shape.push_back(s); numel *= (size_t) std::max<int32_t>(s, 0); }
  if ((double) numel * 4 > o.max_mb * 1048576.0) {
    *err = pte_say("the program's input needs %.0f MB, more than --max-mb %g", numel * 4 / 1048576.0, o.max_mb);
    return false;
  }
  e = module->load_method("forward");
  if (e != Error::Ok) {
    *err = pte_say("ExecuTorch could not load the forward method of %s (%s)", line.pte.c_str(), executorch::runtime::to_string(e));
    return false;
  }
  r->load_us = pte_now_us() - load_t0;

  std::vector<float> input(numel);
  if (line.input_file.empty()) {
    fill_input(input);
  } else {
    FILE* f = fopen(line.input_file.c_str(), "rb");
    if (f == nullptr) { *err = pte_say("cannot open the input_file %s: %s", line.input_file.c_str(), strerror(errno)); return false; }
    size_t got = fread(input.data(), sizeof(float), numel, f);
    bool extra = fgetc(f) != EOF;
    fclose(f);
    if (got != numel || extra) {
      *err = pte_say("the input_file %s does not hold exactly %zu float32 values (the input's size)", line.input_file.c_str(), numel);
      return false;
    }
  }
  std::vector<executorch::aten::SizesType> sizes(r->input_shape.begin(), r->input_shape.end());
  auto tensor = executorch::extension::make_tensor_ptr(sizes, input.data(), executorch::aten::ScalarType::Float);
  const std::vector<EValue> inputs{EValue(*tensor)};

  /* Timing, as convbench (pte_timer). One run is one whole Module::execute("forward"). */
  pte_timer timer(o);
  std::vector<EValue> outputs;
  for (;;) {
    const double t0 = pte_now_us();
    auto out = module->execute("forward", inputs);
    const double dt = pte_now_us() - t0;
    if (!out.ok()) { *err = pte_say("forward failed (%s)", executorch::runtime::to_string(out.error())); return false; }
    if (timer.add(dt)) {
      outputs = std::move(*out);
      break;
    }
  }
  timer.summarize(r);

  if (outputs.empty() || !outputs[0].isTensor()) { *err = "the forward method's first output is not a tensor"; return false; }
  const auto& out = outputs[0].toTensor();
  for (auto s : out.sizes()) r->output_shape.push_back((int) s);
  if (o.dump_dir != nullptr) {
    if (out.scalar_type() != executorch::aten::ScalarType::Float) { *err = "the first output is not float32, so it cannot be dumped"; return false; }
    if (!pte_write_file(pte_dump_path(o.dump_dir, line.id, ".input.f32"), input.data(), numel * sizeof(float), err)) return false;
    if (!pte_write_file(pte_dump_path(o.dump_dir, line.id, ".output.f32"), out.const_data_ptr(), out.nbytes(), err)) return false;
  }
  if (line.profile_ops) {
    /* A second, traced copy of the program: the delegate profiles its operators only when it loads
     * under a tracer, so the timed copy above stays untraced and pays no profiling cost. */
    outputs.clear();
    module.reset();
    auto tracer = std::make_unique<pte::OpTracer>();
    pte::OpTracer* ops = tracer.get();
    module = std::make_unique<Module>(line.pte, Module::LoadMode::File, std::move(tracer));
    e = module->load(Program::Verification::InternalConsistency);
    if (e == Error::Ok) e = module->load_method("forward");
    if (e != Error::Ok) { *err = pte_say("ExecuTorch could not load %s again to profile it (%s)", line.pte.c_str(), executorch::runtime::to_string(e)); return false; }
    for (int i = 0; i <= o.profile_reps; i++) {
      if (i == 1) ops->start();  /* the first traced run only warms the new copy up */
      auto traced = module->execute("forward", inputs);
      if (!traced.ok()) { *err = pte_say("forward failed while profiling (%s)", executorch::runtime::to_string(traced.error())); return false; }
      if (i > 0) ops->end_run();
    }
    r->ops_json = ops->json();
  }
  r->line_us = pte_now_us() - line_t0;
  return true;
}

/* A "net" line: the jcw network file on the sparse network engine (NETFILE.md). Its output on the file's
 * check input must match the torch reference before it is timed on that same input. */
static bool run_net_line(const pte_line& line, const pte_options& o, size_t default_threads, pte_result* r, std::string* err) {
  const double line_t0 = pte_now_us();
  r->sparse_runtime = true;
  r->threads = line.threads > 0 ? (size_t) line.threads : std::max<size_t>(default_threads, 1);
  net_file net;
  net_engine engine;
  if (!net_read(line.net, o.max_mb * 1048576.0, &net, err)) return false;
  const net_sparse_path path = line.sparse_path == "xnnpack"    ? net_sparse_path::xnnpack
                               : line.sparse_path == "segments" ? net_sparse_path::segments
                                                                : net_sparse_path::auto_;
  if (!engine.load(net, r->threads, o.max_mb * 1048576.0, path, err)) return false;
  r->load_us = pte_now_us() - line_t0;
  r->layers = (int) net.nodes.size();
  r->sparse_layers = engine.sparse_layers;
  r->conversions = engine.conversions;
  r->xnnpack = engine.xnnpack;
  r->xnnpack_sparse = engine.xnnpack_sparse;
  r->sparse_path = engine.sparse_path;
  r->not_xnnpack = engine.not_xnnpack;
  for (int64_t d : net.shapes.at(net.input_name)) r->input_shape.push_back((int) d);
  for (int64_t d : net.shapes.at(net.output)) r->output_shape.push_back((int) d);

  const float* input = net.check_input->data;
  const net_tensor& want = *net.check_output;
  if (!engine.run(input, err)) return false;
  double worst = 0, largest = 0;
  for (size_t i = 0; i < want.count; i++) {
    const double diff = std::fabs((double) engine.output()[i] - want.data[i]);
    worst = std::isfinite(diff) ? std::max(worst, diff) : INFINITY;
    largest = std::max(largest, std::fabs((double) want.data[i]));
  }
  r->max_abs_error = worst;
  if (!(worst <= net.tolerance * std::max(1.0, largest))) {
    *err = pte_say("the engine's output on %s differs from the file's check output by up to %.3g, more than its tolerance "
                   "%g x max(1, max |reference|) = %.3g", line.net.c_str(), worst, net.tolerance, net.tolerance * std::max(1.0, largest));
    return false;
  }
  pte_timer timer(o);
  for (bool done = false; !done;) {
    const double t0 = pte_now_us();
    if (!engine.run(input, err)) return false;
    done = timer.add(pte_now_us() - t0);
  }
  timer.summarize(r);
  if (o.dump_dir != nullptr) {
    if (!pte_write_file(pte_dump_path(o.dump_dir, line.id, ".input.f32"), input, net.check_input->count * sizeof(float), err) ||
        !pte_write_file(pte_dump_path(o.dump_dir, line.id, ".output.f32"), engine.output(), engine.output_count() * sizeof(float), err))
      return false;
  }
  r->line_us = pte_now_us() - line_t0;
  return true;
}

int main(int argc, char** argv) {
  pte_options o;
  const char* plan_path = nullptr;
  bool info_only = false;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    double x;
    if (a == "--help" || a == "-h") { fputs(usage, stdout); return 0; }
    if (a == "--info") { info_only = true; continue; }
    if (v == nullptr) return usage_error("unknown option or missing value for " + a);
    i++;
    if (a == "--plan") plan_path = v;
    else if (a == "--dump") o.dump_dir = v;
    else if (a == "--affinity") { if (!pte_set_affinity(v)) return usage_error(pte_say("could not pin to the hex CPU mask \"%s\"", v)); }
    else if (a == "--warmup") { if (!pte_number_flag(v, 0, 1e6, true, &x)) return usage_error(a + " needs an integer >= 0"); o.warmup = (int) x; }
    else if (a == "--warmup-ms") { if (!pte_number_flag(v, 0, 1e9, false, &x)) return usage_error(a + " needs a number >= 0"); o.warmup_ms = x; }
    else if (a == "--min-reps") { if (!pte_number_flag(v, 1, 1e6, true, &x)) return usage_error(a + " needs an integer >= 1"); o.min_reps = (int) x; }
    else if (a == "--max-reps") { if (!pte_number_flag(v, 1, 2e9, true, &x)) return usage_error(a + " needs an integer >= 1"); o.max_reps = (int) x; }
    else if (a == "--min-time-ms") { if (!pte_number_flag(v, 0, 1e9, false, &x)) return usage_error(a + " needs a number >= 0"); o.min_time_ms = x; }
    else if (a == "--max-time-ms") { if (!pte_number_flag(v, 0, 1e9, false, &x)) return usage_error(a + " needs a number >= 0"); o.max_time_ms = x; }
    else if (a == "--profile-reps") { if (!pte_number_flag(v, 1, 1e6, true, &x)) return usage_error(a + " needs an integer >= 1"); o.profile_reps = (int) x; }
    else if (a == "--timeout-s") { if (!pte_number_flag(v, 0.001, 1e7, false, &x)) return usage_error(a + " needs a number > 0"); o.timeout_s = x; }
    else if (a == "--max-mb") { if (!pte_number_flag(v, 1, 1e9, false, &x)) return usage_error(a + " needs a number >= 1"); o.max_mb = x; }
    else return usage_error("unknown option " + a);
  }
  if (o.min_reps > o.max_reps) o.min_reps = o.max_reps; /* --max-reps is a hard cap */
  if (o.dump_dir != nullptr && access(o.dump_dir, W_OK) != 0)
    return usage_error(pte_say("--dump needs a writable directory, and %s is not one (%s)", o.dump_dir, strerror(errno)));

  executorch::runtime::runtime_init();
  /* Asked in a child, so this process never starts pool threads before it forks the plan lines. */
  const pte_isolated probe = pte_run_isolated([]() { return std::to_string(tp::get_threadpool()->get_thread_count()); }, 60);
  const size_t default_threads = probe.finished ? strtoul(probe.text.c_str(), nullptr, 10) : 0;
  write_header(o, default_threads);
  if (info_only) return 0;

  FILE* plan = stdin;
  if (plan_path != nullptr && strcmp(plan_path, "-") != 0 && (plan = fopen(plan_path, "r")) == nullptr) {
    fprintf(stderr, "ptebench: cannot read the plan %s: %s.\n", plan_path, strerror(errno));
    return 1;
  }
  char* text = nullptr;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&text, &cap, plan)) != -1) {
    size_t n = (size_t) len;
    while (n > 0 && isspace((unsigned char) text[n - 1])) text[--n] = '\0';
    if (text[strspn(text, " \t")] == '\0') continue; /* blank lines are not plan lines */
    pte_line line;
    std::string err;
    if (n > 65536) { pte_emit(pte_error_json(line, "plan line longer than 65536 bytes")); continue; }
    if (!pte_parse_line(text, &line, &err)) { pte_emit(pte_error_json(line, err)); continue; }
    /* Each line runs in a forked child: an ExecuTorch abort or crash on a bad program ends only that line. */
    const pte_isolated run = pte_run_isolated([&]() {
      pte_result result;
      bool ok;
      try {
        ok = line.net.empty() ? run_line(line, o, default_threads, &result, &err)
                              : run_net_line(line, o, default_threads, &result, &err);
      } catch (const std::bad_alloc&) {
        ok = false;
        err = "ptebench ran out of memory running this program";
      } catch (const std::exception& ex) {
        ok = false;
        err = pte_say("ptebench failed on this program: %s", ex.what());
      }
      return ok ? pte_result_json(line, result) : pte_error_json(line, err);
    }, o.timeout_s);
    if (run.finished && !run.text.empty() && run.text.back() == '\n') pte_emit(run.text);
    else if (run.why.rfind("could not", 0) == 0) pte_emit(pte_error_json(line, "ptebench " + run.why));
    else if (!line.net.empty()) pte_emit(pte_error_json(line, "the sparse engine " + run.why + " running " + line.net +
                                                       (run.last_log.empty() ? std::string() : " (" + run.last_log + ")")));
    else pte_emit(pte_error_json(line, "ExecuTorch " + run.why + " running " + line.pte +
                               (run.last_log.empty() ? std::string() : " (" + run.last_log + ")") +
                               ", so the program is corrupt or needs something this runtime lacks"));
  }
  const bool read_failed = ferror(plan);
  free(text);
  if (plan != stdin) fclose(plan);
  if (read_failed) {
    fprintf(stderr, "ptebench: reading the plan failed: %s.\n", strerror(errno));
    return 1;
  }
  return 0;
}
