// Learning-rate schedules: a multiplier of the peak rate as a function of the (0-based) step.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "fathom/core/error.hpp"

namespace fathom::optim {

// The same rate at every step.
struct ConstantSchedule {
  double factor(std::int64_t) const { return 1.0; }
};

// Linear warmup from 0 to the peak over `warmup` steps, then cosine decay to min_ratio * peak at
// `total` steps, and min_ratio after. The paper's schedule (min_ratio 0.1).
struct WarmupCosine {
  std::int64_t warmup = 0;
  std::int64_t total = 1;
  double min_ratio = 0.1;

  double factor(std::int64_t step) const {
    FATHOM_CHECK(total > 0 && warmup >= 0 && warmup <= total,
                 "WarmupCosine: expected 0 <= warmup <= total and total > 0, got warmup "
                     << warmup << ", total " << total);
    if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (step >= total) return min_ratio;
    const double progress = static_cast<double>(step - warmup) /
                            static_cast<double>(std::max<std::int64_t>(1, total - warmup));
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }
};

// Warmup-stable-decay: linear warmup, constant peak until decay_start, then linear decay to
// min_ratio at `total`.
struct WarmupStableDecay {
  std::int64_t warmup = 0;
  std::int64_t decay_start = 0;
  std::int64_t total = 1;
  double min_ratio = 0.0;

  double factor(std::int64_t step) const {
    FATHOM_CHECK(0 <= warmup && warmup <= decay_start && decay_start <= total,
                 "WarmupStableDecay: expected 0 <= warmup <= decay_start <= total, got "
                     << warmup << ", " << decay_start << ", " << total);
    if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (step < decay_start) return 1.0;
    if (step >= total) return min_ratio;
    const double progress = static_cast<double>(step - decay_start) /
                            static_cast<double>(std::max<std::int64_t>(1, total - decay_start));
    return 1.0 - (1.0 - min_ratio) * progress;
  }
};

}  // namespace fathom::optim
