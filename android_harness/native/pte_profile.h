/* Per-operator breakdown for ptebench's "profile_ops": an ExecuTorch EventTracer that sums, per
 * profiled event (method, kernel call, delegate call, and the delegate's own events when its build
 * logs them), the wall time spent in it. Off until start(), so it never slows the timed runs. */
#ifndef PTEBENCH_PTE_PROFILE_H
#define PTEBENCH_PTE_PROFILE_H

#include <stdio.h>
#include <time.h>

#include <string>
#include <vector>

#include <executorch/runtime/core/event_tracer.h>
#include <executorch/runtime/platform/clock.h>

#include "pte_plan.h"

namespace pte {

namespace etr = executorch::runtime;

class OpTracer final : public etr::EventTracer {
 public:
  void start() { on_ = true; rows_.clear(); runs_ = 0; }
  void end_run() { runs_++; }

  /* [{"name", "chain", "instr", "calls", "us"}]: "us" and "calls" per traced run, in first-seen order.
   * "chain"/"instr" name the instruction (-1: none, e.g. Method::execute). Rows nest: Method::execute
   * holds every DELEGATE_CALL / OPERATOR_CALL; a DELEGATE_CALL holds its delegate's events (same instr),
   * an OPERATOR_CALL its native_call_<kernel>. */
  std::string json() const {
    std::string s = "[";
    char buf[160];
    for (size_t i = 0; i < rows_.size(); i++) {
      const Row& r = rows_[i];
      const double runs = runs_ > 0 ? runs_ : 1;
      snprintf(buf, sizeof buf, "%s{\"name\": ", i ? ", " : "");
      s += buf;
      s += pte_json_str(r.name);
      snprintf(buf, sizeof buf, ", \"chain\": %d, \"instr\": %lld, \"calls\": %g, \"us\": %.3f}", r.chain,
               r.handle, r.calls / runs, r.ns / runs * 1e-3);
      s += buf;
    }
    return s + "]";
  }

  void create_event_block(const char*) override {}

  etr::EventTracerEntry start_profiling(const char* name, etr::ChainID chain_id,
                                        etr::DebugHandle debug_handle) override {
    /* Kernel and delegate calls leave both unset and rely on the instruction scope's values. */
    if (chain_id == etr::kUnsetChainId) chain_id = chain_id_;
    if (debug_handle == etr::kUnsetDebugHandle) debug_handle = debug_handle_;
    return entry(row(name ? name : "?", chain_id, debug_handle));
  }
  etr::EventTracerEntry start_profiling_delegate(const char* name, etr::DelegateDebugIntId) override {
    return entry(row(name ? name : "delegate event", chain_id_, debug_handle_));
  }
  void end_profiling_delegate(etr::EventTracerEntry e, const void*, size_t) override { end_profiling(e); }
  void log_profiling_delegate(const char* name, etr::DelegateDebugIntId, et_timestamp_t start,
                              et_timestamp_t end, const void*, size_t) override {
    if (!on_) return;
    /* The delegate's own events belong to the DELEGATE_CALL instruction running them. */
    Row& r = rows_[(size_t) row(name ? name : "delegate event", chain_id_, debug_handle_)];
    r.ns += (double) etr::ticks_to_ns(end - start);
    r.calls++;
  }
  void end_profiling(etr::EventTracerEntry e) override {
    if (!on_ || e.event_id < 0 || (size_t) e.event_id >= rows_.size()) return;
    rows_[(size_t) e.event_id].ns += (double) (now_ns() - (long long) e.start_time);
    rows_[(size_t) e.event_id].calls++;
  }
  void track_allocation(etr::AllocatorID, size_t) override {}
  etr::AllocatorID track_allocator(const char*) override { return 0; }
  etr::Result<bool> log_evalue(const etr::EValue&, etr::LoggedEValueType) override { return true; }
  etr::Result<bool> log_intermediate_output_delegate(const char*, etr::DelegateDebugIntId,
                                                     const executorch::aten::Tensor&) override { return true; }
  etr::Result<bool> log_intermediate_output_delegate(const char*, etr::DelegateDebugIntId,
                                                     const etr::ArrayRef<executorch::aten::Tensor>) override { return true; }
  etr::Result<bool> log_intermediate_output_delegate(const char*, etr::DelegateDebugIntId, const int&) override { return true; }
  etr::Result<bool> log_intermediate_output_delegate(const char*, etr::DelegateDebugIntId, const bool&) override { return true; }
  etr::Result<bool> log_intermediate_output_delegate(const char*, etr::DelegateDebugIntId, const double&) override { return true; }
  void set_delegation_intermediate_output_filter(etr::EventTracerFilterBase*) override {}

 private:
  struct Row {
    std::string name;
    int chain;
    long long handle;
    double ns = 0, calls = 0;
  };

  static long long now_ns() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
  }

  long long row(const char* name, etr::ChainID chain, etr::DebugHandle debug_handle) {
    if (!on_) return -1;
    /* kUnsetDebugHandle is 0, the first instruction's index too: outside a chain there is no instruction. */
    const long long handle = chain == etr::kUnsetChainId ? -1 : (long long) debug_handle;
    for (size_t i = 0; i < rows_.size(); i++)
      if (rows_[i].chain == chain && rows_[i].handle == handle && rows_[i].name == name) return (long long) i;
    rows_.push_back(Row{name, chain, handle});
    return (long long) rows_.size() - 1;
  }

  etr::EventTracerEntry entry(long long id) const {
    etr::EventTracerEntry e{};
    e.event_id = id;
    e.chain_id = etr::kUnsetChainId;
    e.debug_handle = etr::kUnsetDebugHandle;
    e.start_time = (et_timestamp_t) (on_ ? now_ns() : 0);
    e.delegate_event_id_type = etr::DelegateDebugIdType::kInt;
    return e;
  }

  bool on_ = false;
  int runs_ = 0;
  std::vector<Row> rows_;
};

}  // namespace pte

#endif
