/* Running one plan line in a forked child, so that an ExecuTorch abort (ET_CHECK on a corrupt
 * program), a crash or a hang costs that line an error result instead of ending ptebench. */
#ifndef PTEBENCH_PTE_ISOLATE_H
#define PTEBENCH_PTE_ISOLATE_H

#include <functional>
#include <string>

struct pte_isolated {
  bool finished = false;  /* the child exited with status 0 after writing its text */
  std::string text;       /* what the child's body returned */
  std::string why;        /* otherwise: one clause saying how the child ended, e.g. "aborted (SIGABRT)" */
  std::string last_log;   /* the child's last fatal/error log line (ExecuTorch's "F ..."/"E ..."), if any */
};

/* Forks; the child runs body() and hands its string back through a pipe. The child's stderr is
 * forwarded to ours line by line. A child still running after timeout_s seconds is killed. */
pte_isolated pte_run_isolated(const std::function<std::string()>& body, double timeout_s);

#endif
