// --nproc N for fathom's programs: starts N copies of this program as the ranks of one host, with
// the environment torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
// waits for them, and forwards a failure: when a rank exits with an error, the others get a grace
// period to stop on their own (their communicator names the failed rank), then are terminated.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "fathom/core/error.hpp"

namespace fathom::programs {

struct LaunchResult {
  int status = 0;  // 0 when every rank succeeded, else the first failed rank's exit code
  int failed_rank = -1;
};

// Runs this program again (/proc/self/exe; where that is missing, args[0] from PATH) with argv
// `args`, as ranks 0..nproc-1 of this host, with `extra_env` added. `port`: MASTER_PORT (0: 20000
// + this process id modulo 20000, so that concurrent runs rarely collide).
inline LaunchResult launch_local_ranks(const std::vector<std::string>& args, int nproc,
                                       int port = 0, const std::vector<std::string>& extra_env = {},
                                       double grace_s = 30) {
  FATHOM_CHECK(nproc >= 1, "--nproc: expected at least 1, got " << nproc);
  if (port == 0) port = 20000 + static_cast<int>(::getpid() % 20000);
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    FATHOM_CHECK(pid >= 0, "--nproc: cannot start rank " << r << ": " << std::strerror(errno));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      for (const auto& kv : extra_env) ::putenv(const_cast<char*>(kv.c_str()));
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      ::execvp(argv[0], argv.data());
      std::fprintf(stderr, "fathom: cannot start rank %d (%s): %s\n", r, argv[0],
                   std::strerror(errno));
      std::_Exit(127);
    }
    pids.push_back(pid);
  }
  LaunchResult result;
  std::vector<bool> done(pids.size(), false);
  std::size_t running = pids.size();
  auto failed_at = std::chrono::steady_clock::time_point{};
  bool terminated = false;
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (std::size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] != pid) continue;
        done[r] = true;
        --running;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (code != 0 && result.failed_rank < 0 && !terminated) {
          result.failed_rank = static_cast<int>(r);
          result.status = code;
          failed_at = std::chrono::steady_clock::now();
          std::fprintf(stderr, "fathom: rank %zu exited with status %d%s\n", r, code,
                       WIFSIGNALED(status) ? " (killed by a signal)" : "");
        }
      }
      continue;
    }
    if (result.failed_rank >= 0 && !terminated &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - failed_at).count() >
            grace_s) {
      for (std::size_t r = 0; r < pids.size(); ++r)
        if (!done[r]) {
          std::fprintf(stderr, "fathom: stopping rank %zu (rank %d failed %.0f s ago)\n", r,
                       result.failed_rank, grace_s);
          ::kill(pids[r], SIGKILL);
        }
      terminated = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

// argv without `--nproc N` / `--nproc=N`.
inline std::vector<std::string> without_nproc(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--nproc") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0) continue;
    out.push_back(a);
  }
  return out;
}

}  // namespace fathom::programs
