/* convbench: reads plan JSON Lines (stdin or --plan FILE), measures each line with XNNPACK and
 * writes one result JSON line per plan line, in order, flushed at once (runner contract in
 * ARCHITECTURE.md). A bad line yields an error result; only an unreadable plan fails the run.
 * Dense lines run on the ExecuTorch wheel's XNNPACK; sparse lines on the first build whose NCHW
 * SpMM runs here (the wheel's, else Debian's 2022 one); every result names the build that timed it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "builds.h"
#include "cold.h"
#include "json.h"
#include "plan.h"

#ifndef CONVBENCH_VERSION
#define CONVBENCH_VERSION "0.2.4"
#endif
/* The wheel's build ("executorch-<version>") and, when Debian's libxnnpack0 was there at build
 * time, Debian's ("debian-<package version>"), loaded at run time only if the wheel has no SpMM. */
#ifndef XNNPACK_BUILD
#define XNNPACK_BUILD "executorch-unknown"
#endif
#if defined(__aarch64__)
#define ARCH "aarch64"
#elif defined(__x86_64__)
#define ARCH "x86_64"
#elif defined(__arm__)
#define ARCH "arm"
#else
#define ARCH "unknown"
#endif

#define MAX_LINE_BYTES 65536

static const char usage[] =
  "usage: convbench [--plan FILE] [--info] [options] < plan.jsonl\n"
  "Measures XNNPACK dense (NHWC) and sparse (NCHW SpMM) convolutions, one JSON result per plan line.\n"
  "  --plan FILE          read the plan from FILE instead of stdin\n"
  "  --xnnpack BUILD      executorch (default: dense on the ExecuTorch wheel's XNNPACK, sparse on the\n"
  "                       first build with SpMM here) or debian (every line on Debian's 2022 build,\n"
  "                       to compare builds; x86 hosts with libxnnpack0 only)\n"
  "  --info               print the header line {\"runner\": {...}} and exit\n"
  "  --weights MODE       warm (default: one operator, its weights cached after the first run) or cold\n"
  "                       (rotate over copies of the operator, each with its own weights and output,\n"
  "                       until together they exceed the last-level cache: each timed run reads\n"
  "                       weights from memory, as a layer inside a network does)\n"
  "  --cold-bytes SIZE    with cold weights, rotate over SIZE bytes (e.g. 4M) instead of the last-level\n"
  "                       cache: on a host whose cache holds whole networks, their layers read weights\n"
  "                       from it, not from memory\n"
  "  --warmup N           untimed runs before timing (default 2) ...\n"
  "  --warmup-ms X        ... but no more once they took X ms; at least one runs (default 5)\n"
  "  --min-reps N         timed runs at least (default 5)\n"
  "  --min-time-ms X      and timed time at least X ms (default 30)\n"
  "  --max-reps N         never more timed runs than N, even below --min-reps (default 1000)\n"
  "  --max-time-ms X      stop once X ms are timed, after at least 2 runs (default 5000)\n"
  "  --tolerance X        max |error| / sum|w*x| at a checked output (default 1e-4)\n"
  "  --check-samples N    random outputs checked against the reference, besides 4 corners (default 64)\n"
  "  --max-mb X           memory cap per line in MB (default 1024)\n"
  "  --affinity MASK      pin the runner and its threads to the CPUs in hex MASK (e.g. f0)\n"
  "  --dump DIR           write <id>.input.f32 [cin,h,w], <id>.weights.f32 [cout,cin/groups,k,k],\n"
  "                       <id>.output.f32 [cout,out_h,out_w] (little-endian float32, NCHW/OIHW)\n";

static int usage_error(const char* fmt, const char* value) {
  fprintf(stderr, "convbench: ");
  fprintf(stderr, fmt, value);
  fprintf(stderr, "; see convbench --help.\n");
  return 2;
}

static int parse_number_flag(const char* value, double min, double max, double* out) {
  char* end;
  errno = 0;
  double v = strtod(value, &end);
  if (errno != 0 || end == value || *end != '\0' || !(v >= min && v <= max)) return -1;
  *out = v;
  return 0;
}

static int set_affinity(const char* mask_text) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const char* p = mask_text;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) p += 2;
  size_t n = strlen(p);
  if (n == 0) return -1;
  for (size_t i = 0; i < n; i++) {
    const char c = p[n - 1 - i];
    int v;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v = c - 'A' + 10;
    else return -1;
    for (int bit = 0; bit < 4; bit++) {
      if ((v >> bit) & 1) {
        const size_t cpu = i * 4 + (size_t) bit;
        if (cpu >= CPU_SETSIZE) return -1;
        CPU_SET(cpu, &set);
      }
    }
  }
  if (CPU_COUNT(&set) == 0) return -1;
  return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : -2;
}

static void cpu_name(char* out, size_t cap) {
  out[0] = '\0';
  if (cpuinfo_initialize()) {
    /* The package name is the first member of struct cpuinfo_package (see xnn_api.h). */
    const char* name = (const char*) cpuinfo_get_package(0);
    if (name != NULL && name[0] != '\0' && strncmp(name, "Unknown", 8) != 0)
      snprintf(out, cap, "%.*s", (int) strnlen(name, CONVBENCH_CPUINFO_PACKAGE_NAME_MAX), name);
  }
  if (out[0] != '\0') return;
  /* cpuinfo leaves the name empty on many ARM boards and under emulation. */
  FILE* f = fopen("/proc/cpuinfo", "r");
  char line[512];
  while (f != NULL && fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "model name", 10) == 0 || strncmp(line, "Hardware", 8) == 0) {
      char* v = strchr(line, ':');
      if (v == NULL) continue;
      for (v++; *v == ' ' || *v == '\t'; v++) {}
      v[strcspn(v, "\n")] = '\0';
      snprintf(out, cap, "%s", v);
      break;
    }
  }
  if (f != NULL) fclose(f);
  if (out[0] == '\0') snprintf(out, cap, "unknown");
}

/* Cores this process may run on (after --affinity): what a pool of "all cores" would get. */
static int default_threads(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  const int n = CPU_COUNT(&set);
  return n > 0 ? n : 1;
}

struct builds {
  struct xnn_build wheel, debian;
  struct xnn_build* dense;        /* times dense lines */
  struct xnn_build* sparse;       /* times sparse lines, NULL when no build runs SpMM here ... */
  char sparse_error[400];         /* ... and why */
};

static void write_header(const struct bench_options* o, const struct builds* b) {
  char cpu[256];
  cpu_name(cpu, sizeof cpu);
  printf("{\"runner\": {\"version\": ");
  json_write_string(stdout, CONVBENCH_VERSION);
  printf(", \"xnnpack\": ");
  json_write_string(stdout, b->dense->name);
  printf(", \"xnnpack_sparse\": ");
  if (b->sparse != NULL) json_write_string(stdout, b->sparse->name);
  else printf("null");
  if (b->sparse == NULL) {
    printf(", \"xnnpack_sparse_error\": ");
    json_write_string(stdout, b->sparse_error);
  }
  /* Dense conv lines on the pf32 (packed-LHS, Arm SME) operator, as ExecuTorch's delegate runs them. */
  printf(", \"xnnpack_pf32\": %s", b->dense->pf32 ? "true" : "false");
  printf(", \"xnnpack_initialized\": %s, \"cpu\": ", b->dense->initialized ? "true" : "false");
  json_write_string(stdout, cpu);
  const struct cache_size* cache = cold_cache_size();
  printf(", \"weights\": \"%s\", \"cache_bytes\": %zu, \"cache_source\": \"%s\"", o->cold_weights ? "cold" : "warm",
         cache->bytes, cache->source);
  printf(", \"buffer_alignment\": %d", BUFFER_ALIGNMENT);
  printf(", \"arch\": \"%s\", \"cores\": %u, \"default_threads\": %d, \"timing\": {\"warmup\": %d, \"warmup_ms\": %g, "
         "\"min_reps\": %d, \"min_time_ms\": %g, \"max_reps\": %d, \"max_time_ms\": %g, \"clock\": \"CLOCK_MONOTONIC\"}, "
         "\"tolerance\": %g}}\n",
         ARCH, cpuinfo_initialize() ? cpuinfo_get_processors_count() : 0u, default_threads(), o->warmup, o->warmup_ms,
         o->min_reps, o->min_time_ms, o->max_reps, o->max_time_ms, o->tolerance);
  fflush(stdout);
}

/* Opens the builds: dense on the wheel's (or Debian's with --xnnpack debian); sparse on the wheel's
 * when its NCHW SpMM runs here, else on Debian's when it loads and runs it. Returns 0, or -1 with
 * a sentence in err when the requested --xnnpack build is unavailable. */
static int open_builds(struct builds* b, int want_debian, char* err, size_t errlen) {
  char why[300] = "";
  memset(b, 0, sizeof *b);
  build_open_wheel(&b->wheel, XNNPACK_BUILD);
  b->dense = &b->wheel;
  enum xnn_status st = build_probe_spmm(&b->wheel);
  if (st == xnn_status_success && !want_debian) {
    b->sparse = &b->wheel;
    return 0;
  }
#ifdef XNNPACK_DEBIAN_BUILD
  if (want_debian || st == xnn_status_unsupported_hardware) {
    if (build_open_debian(&b->debian, XNNPACK_DEBIAN_BUILD, why, sizeof why) == 0) {
      const enum xnn_status dst = build_probe_spmm(&b->debian);
      if (want_debian) b->dense = &b->debian;
      if (dst == xnn_status_success) {
        b->sparse = &b->debian;
        return 0;
      }
      snprintf(why, sizeof why, "%s says %s", b->debian.name, build_status_name(dst));
    } else if (want_debian) {
      snprintf(err, errlen, "--xnnpack debian: %s", why);
      return -1;
    }
  }
#else
  if (want_debian) {
    snprintf(err, errlen, "--xnnpack debian: this convbench was built without Debian's XNNPACK");
    return -1;
  }
#endif
  snprintf(b->sparse_error, sizeof b->sparse_error,
           "no XNNPACK build here runs the sparse (NCHW SpMM) convolution: %s says %s%s%s",
           b->wheel.name, build_status_name(st), why[0] ? "; " : "", why[0] ? why : "");
  return 0;
}

static void write_error(const struct plan_line* line, const char* message) {
  printf("{\"id\": ");
  if (line->has_id) json_write_string(stdout, line->id);
  else printf("null");
  printf(", \"error\": ");
  json_write_string(stdout, message);
  printf("}\n");
  fflush(stdout);
}

static void write_result(const struct plan_line* line, const struct xnn_build* build, const struct bench_options* o,
                         const struct bench_result* r) {
  printf("{\"id\": ");
  json_write_string(stdout, line->id);
  printf(", \"xnnpack\": ");
  json_write_string(stdout, build->name);
  printf(", \"impl\": \"%s\", \"threads\": %lld, \"us_min\": %.3f, \"us_median\": %.3f, \"us_mean\": %.3f, "
         "\"us_std\": %.3f, \"reps\": %d, \"max_abs_err\": ",
         line->impl == IMPL_DENSE ? "dense" : "sparse", (long long) line->threads, r->us_min, r->us_median,
         r->us_mean, r->us_std, r->reps);
  json_write_number(stdout, r->max_abs_err, 4);
  printf(", \"timed_us\": %.3f, \"line_us\": %.3f, \"weights\": \"%s\"", r->timed_us, r->line_us,
         o->cold_weights ? "cold" : "warm");
  /* How many copies rotated and over how many bytes: a rotation capped below the cache is visible. */
  if (o->cold_weights) printf(", \"cold_copies\": %d, \"cold_bytes\": %.0f", r->copies, r->rotated_bytes);
  printf("}\n");
  fflush(stdout);
}

int main(int argc, char** argv) {
  struct bench_options o = { 2, 5.0, 5, 30.0, 1000, 5000.0, 1e-4, 64, 1024.0, NULL, 0 };
  const char* plan_path = NULL;
  int info_only = 0, want_debian = 0;
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    double x;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { fputs(usage, stdout); return 0; }
    if (strcmp(a, "--info") == 0) { info_only = 1; continue; }
    if (v == NULL) return usage_error("unknown option or missing value for %s", a);
    i++;
    if (strcmp(a, "--plan") == 0) plan_path = v;
    else if (strcmp(a, "--xnnpack") == 0) {
      if (strcmp(v, "debian") == 0) want_debian = 1;
      else if (strcmp(v, "executorch") != 0) return usage_error("--xnnpack needs executorch or debian, got \"%s\"", v);
    }
    else if (strcmp(a, "--dump") == 0) o.dump_dir = v;
    else if (strcmp(a, "--weights") == 0) {
      if (strcmp(v, "cold") == 0) o.cold_weights = 1;
      else if (strcmp(v, "warm") == 0) o.cold_weights = 0;
      else return usage_error("--weights needs warm or cold, got \"%s\"", v);
    }
    else if (strcmp(a, "--cold-bytes") == 0) {
      const size_t bytes = cold_parse_size(v);
      if (bytes < 1024) return usage_error("--cold-bytes needs a size of at least 1K (e.g. 4M), got \"%s\"", v);
      cold_set_cache_size(bytes);
    }
    else if (strcmp(a, "--affinity") == 0) {
      const int rc = set_affinity(v);
      if (rc == -1) return usage_error("--affinity needs a non-empty hex CPU mask, got \"%s\"", v);
      if (rc == -2) return usage_error("could not pin to CPU mask %s (no such online CPU?)", v);
    }
    else if (strcmp(a, "--warmup") == 0) { if (parse_number_flag(v, 0, 1e6, &x) || x != (int) x) return usage_error("--warmup needs an integer >= 0, got \"%s\"", v); o.warmup = (int) x; }
    else if (strcmp(a, "--warmup-ms") == 0) { if (parse_number_flag(v, 0, 1e9, &x)) return usage_error("--warmup-ms needs a number >= 0, got \"%s\"", v); o.warmup_ms = x; }
    else if (strcmp(a, "--min-reps") == 0) { if (parse_number_flag(v, 1, 1e6, &x) || x != (int) x) return usage_error("--min-reps needs an integer >= 1, got \"%s\"", v); o.min_reps = (int) x; }
    else if (strcmp(a, "--max-reps") == 0) { if (parse_number_flag(v, 1, 2e9, &x) || x != (int) x) return usage_error("--max-reps needs an integer >= 1, got \"%s\"", v); o.max_reps = (int) x; }
    else if (strcmp(a, "--min-time-ms") == 0) { if (parse_number_flag(v, 0, 1e9, &x)) return usage_error("--min-time-ms needs a number >= 0, got \"%s\"", v); o.min_time_ms = x; }
    else if (strcmp(a, "--max-time-ms") == 0) { if (parse_number_flag(v, 0, 1e9, &x)) return usage_error("--max-time-ms needs a number >= 0, got \"%s\"", v); o.max_time_ms = x; }
    else if (strcmp(a, "--tolerance") == 0) { if (parse_number_flag(v, 0, 1e9, &x)) return usage_error("--tolerance needs a number >= 0, got \"%s\"", v); o.tolerance = x; }
    else if (strcmp(a, "--check-samples") == 0) { if (parse_number_flag(v, 0, 1e6, &x) || x != (int) x) return usage_error("--check-samples needs an integer >= 0, got \"%s\"", v); o.check_samples = (int) x; }
    else if (strcmp(a, "--max-mb") == 0) { if (parse_number_flag(v, 1, 1e9, &x)) return usage_error("--max-mb needs a number >= 1, got \"%s\"", v); o.max_mb = x; }
    else return usage_error("unknown option %s", a);
  }
  if (o.min_reps > o.max_reps) o.min_reps = o.max_reps; /* --max-reps is a hard cap */

  static struct builds builds;
  char err[512];
  if (open_builds(&builds, want_debian, err, sizeof err) != 0) {
    fprintf(stderr, "convbench: %s.\n", err);
    return 2;
  }
  write_header(&o, &builds);
  if (info_only) return builds.dense->initialized ? 0 : 1;

  FILE* plan = stdin;
  if (plan_path != NULL && strcmp(plan_path, "-") != 0) {
    plan = fopen(plan_path, "r");
    if (plan == NULL) {
      fprintf(stderr, "convbench: cannot read the plan %s: %s.\n", plan_path, strerror(errno));
      return 1;
    }
  }

  char* text = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&text, &cap, plan)) != -1) {
    struct plan_line line;
    size_t n = (size_t) len;
    while (n > 0 && isspace((unsigned char) text[n - 1])) text[--n] = '\0';
    size_t lead = strspn(text, " \t");
    if (text[lead] == '\0') continue; /* blank lines are not plan lines */
    if (n > MAX_LINE_BYTES) {
      memset(&line, 0, sizeof line);
      write_error(&line, "plan line longer than 65536 bytes");
      continue;
    }
    if (plan_parse(text, &line, err, sizeof err) != 0) { write_error(&line, err); continue; }
    if (!builds.dense->initialized) {
      write_error(&line, "XNNPACK failed to initialize on this CPU");
      continue;
    }
    struct xnn_build* build = line.impl == IMPL_DENSE ? builds.dense : builds.sparse;
    if (build == NULL) { write_error(&line, builds.sparse_error); continue; }
    pthreadpool_t pool;
    if (build_pool(build, line.threads, &pool) != 0) {
      write_error(&line, "could not create the thread pool");
      continue;
    }
    struct bench_result result;
    if (bench_run(&line, &o, build, pool, &result, err, sizeof err) != 0) write_error(&line, err);
    else write_result(&line, build, &o, &result);
  }
  const int read_failed = ferror(plan);
  free(text);
  build_close(&builds.wheel);
  if (builds.debian.initialized) build_close(&builds.debian);
  if (plan != stdin) fclose(plan);
  if (read_failed) {
    fprintf(stderr, "convbench: reading the plan failed: %s.\n", strerror(errno));
    return 1;
  }
  return 0;
}
