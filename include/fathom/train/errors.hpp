// The errors of a training run that callers handle apart: OptionError names the TrainOptions member
// that was wrong (programs map it to their flag), ExistingRun a run folder that holds another run,
// NonFiniteLoss the step whose loss was NaN or infinite.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "fathom/core/error.hpp"

namespace fathom::train {

// A bad value of one TrainOptions member. option() is the member's name ("seq_len"); the message
// is "TrainOptions::seq_len: <reason>". Programs print their own flag with reason().
class OptionError : public Error {
 public:
  OptionError(std::string option, const std::string& reason)
      : Error("TrainOptions::" + option + ": " + reason),
        option_(std::move(option)),
        reason_(reason) {}
  const std::string& option() const { return option_; }
  const std::string& reason() const { return reason_; }

 private:
  std::string option_, reason_;
};

#define FATHOM_CHECK_OPTION(cond, option, msg)                                 \
  do {                                                                         \
    if (!(cond)) {                                                             \
      std::ostringstream fathom_option_stream_;                                \
      fathom_option_stream_ << msg;                                            \
      throw ::fathom::train::OptionError(option, fathom_option_stream_.str()); \
    }                                                                          \
  } while (0)

// TrainOptions::out holds another run (its metrics.jsonl, ckpt-STEP folders) that the options
// neither continue (resume) nor replace (overwrite): training into it would mix two runs' metrics
// and checkpoints. folder() is the run folder, files() the run's files there, for a message.
class ExistingRun : public OptionError {
 public:
  ExistingRun(std::filesystem::path folder, std::string files)
      : OptionError("out", "'" + folder.string() + "' already holds a run (" + files +
                               "); set resume to continue it or overwrite to replace it"),
        folder_(std::move(folder)),
        files_(std::move(files)) {}
  const std::filesystem::path& folder() const { return folder_; }
  const std::string& files() const { return files_; }

 private:
  std::filesystem::path folder_;
  std::string files_;
};

// A step's loss was NaN or infinite (and TrainOptions::skip_nonfinite was off). Nothing was saved
// after the last good checkpoint.
class NonFiniteLoss : public Error {
 public:
  NonFiniteLoss(std::int64_t step, double loss, std::optional<std::filesystem::path> last_good)
      : Error(message(step, loss, last_good)),
        step_(step),
        loss_(loss),
        last_good_(std::move(last_good)) {}
  std::int64_t step() const { return step_; }  // 1-based
  double loss() const { return loss_; }
  const std::optional<std::filesystem::path>& last_good_checkpoint() const { return last_good_; }

 private:
  static std::string message(std::int64_t step, double loss,
                             const std::optional<std::filesystem::path>& last) {
    std::ostringstream s;
    s << "loss is " << loss << " at step " << step
      << "; last good checkpoint: " << (last ? last->string() : "none");
    return s.str();
  }
  std::int64_t step_;
  double loss_;
  std::optional<std::filesystem::path> last_good_;
};

}  // namespace fathom::train
