// Progress: a live status line (step, loss, lr, tokens/s, ETA) redrawn in place on a terminal, and
// plain log lines every `log_every` steps otherwise (files, CI logs).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

namespace fathom::train {

inline bool stdout_is_terminal() {
#if __has_include(<unistd.h>)
  return ::isatty(::fileno(stdout)) != 0;
#else
  return false;
#endif
}

inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "--:--";
  auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", s / 60, s % 60);
  return buf;
}

class Progress {
 public:
  Progress(std::int64_t first_step, std::int64_t total_steps, bool live,
           std::int64_t log_every = 10)
      : first_(first_step),
        total_(total_steps),
        live_(live),
        log_every_(log_every),
        start_(std::chrono::steady_clock::now()) {}

  // step is 1-based (the step just finished).
  void update(std::int64_t step, double loss, double lr, double tokens_per_s) {
    const double elapsed = seconds_since_start();
    const double per_step = step > first_ ? elapsed / static_cast<double>(step - first_) : 0.0;
    const double eta = per_step * static_cast<double>(total_ - step);
    const double pct = 100.0 * static_cast<double>(step) / static_cast<double>(total_);
    char line[256];
    std::snprintf(line, sizeof line,
                  "step %6lld/%lld %5.1f%% | loss %.4f | lr %.3e | %9.0f tok/s | ETA %s",
                  static_cast<long long>(step), static_cast<long long>(total_), pct, loss, lr,
                  tokens_per_s, format_duration(eta).c_str());
    if (live_) {
      std::printf("\r%s\033[K", line);
      std::fflush(stdout);
      dirty_ = true;
    } else if (step == first_ + 1 || step % log_every_ == 0 || step == total_) {
      std::printf("%s\n", line);
      std::fflush(stdout);
    }
  }

  // Prints a line that must not be overwritten (evaluation, checkpoint), keeping the live line.
  void note(const std::string& text) {
    if (dirty_) std::printf("\r\033[K");
    std::printf("%s\n", text.c_str());
    std::fflush(stdout);
    dirty_ = false;
  }

  void finish() {
    if (dirty_) std::printf("\n");
    dirty_ = false;
    std::fflush(stdout);
  }

  double seconds_since_start() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::int64_t first_, total_;
  bool live_;
  std::int64_t log_every_;
  std::chrono::steady_clock::time_point start_;
  bool dirty_ = false;
};

}  // namespace fathom::train
