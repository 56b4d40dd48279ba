/* See pte_isolate.h: fork, run, collect the child's text and stderr, tell how it ended. */
#include "pte_isolate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds_now() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool write_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= (size_t) w;
  }
  return true;
}

/* Keeps the last ExecuTorch fatal ("F ") or error ("E ") log line of a chunk of stderr. */
static void remember_log(std::string* partial, const char* data, size_t n, std::string* last) {
  partial->append(data, n);
  size_t start = 0, nl;
  while ((nl = partial->find('\n', start)) != std::string::npos) {
    const std::string line = partial->substr(start, nl - start);
    if (line.size() > 2 && (line[0] == 'F' || line[0] == 'E') && line[1] == ' ') {
      const size_t cut = line.find("] ");  /* drop "F 00:00:00.001 executorch:file.cpp:12" */
      *last = cut == std::string::npos ? line.substr(2) : line.substr(cut + 2);
    }
    start = nl + 1;
  }
  partial->erase(0, start);
  if (partial->size() > 4096) partial->erase(0, partial->size() - 4096);
}

pte_isolated pte_run_isolated(const std::function<std::string()>& body, double timeout_s) {
  pte_isolated res;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) { res.why = std::string("could not create a pipe: ") + strerror(errno); return res; }
  if (pipe2(err, O_CLOEXEC) != 0) {
    res.why = std::string("could not create a pipe: ") + strerror(errno);
    close(out[0]); close(out[1]);
    return res;
  }
  fflush(stdout);
  fflush(stderr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    /* A killed ptebench (Ctrl-C, a dropped phone session) must not leave a line running behind it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(4);
    signal(SIGPIPE, SIG_DFL);
    dup2(err[1], 2);
    close(out[0]);
    close(err[0]);
    const std::string text = body();
    fflush(stderr);
    _exit(write_all(out[1], text.data(), text.size()) ? 0 : 3);
  }
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    res.why = std::string("could not fork: ") + strerror(errno);
    close(out[0]); close(err[0]);
    return res;
  }
  const double deadline = seconds_now() + timeout_s;
  std::string partial;
  bool timed_out = false;
  struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    const double left = deadline - seconds_now();
    if (left <= 0) { timed_out = true; break; }
    const int ready = poll(fds, 2, (int) (left * 1000) + 1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) break;
    for (int i = 0; i < 2; i++) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) { close(fds[i].fd); fds[i].fd = -1; open_fds--; continue; }
      if (i == 0) res.text.append(buf, (size_t) n);
      else { write_all(2, buf, (size_t) n); remember_log(&partial, buf, (size_t) n, &res.last_log); }
    }
  }
  if (timed_out) kill(pid, SIGKILL);
  for (int i = 0; i < 2; i++) if (fds[i].fd >= 0) close(fds[i].fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  if (timed_out) {
    char why[96];
    snprintf(why, sizeof why, "did not finish within %g s", timeout_s);
    res.why = why;
  } else if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    res.why = sig == SIGABRT ? "aborted (SIGABRT)" : std::string("was killed by signal ") + std::to_string(sig) +
                                                         " (" + strsignal(sig) + ")";
  } else if (WEXITSTATUS(status) != 0) {
    res.why = "exited with status " + std::to_string(WEXITSTATUS(status));
  } else {
    res.finished = true;
  }
  return res;
}
