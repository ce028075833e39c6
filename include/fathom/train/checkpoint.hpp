// Checkpoints: DIR/ckpt-STEP/{model.safetensors, config.json, optimizer.safetensors,
// trainer_state.json}. A checkpoint is written into a hidden temporary folder and renamed into
// place, so a crash never leaves a torn one and the previous checkpoint stays intact.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/tensor/tensor.hpp"
#include "fathom/train/safetensors.hpp"

namespace fathom::train {

namespace fs = std::filesystem;

inline std::string checkpoint_name(std::int64_t step) { return "ckpt-" + std::to_string(step); }

// The step of a folder named ckpt-STEP, or nullopt.
inline std::optional<std::int64_t> checkpoint_step(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("ckpt-", 0) != 0 || name.size() == 5) return std::nullopt;
  std::int64_t step = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  return step;
}

inline bool is_complete_checkpoint(const fs::path& dir) {
  return fs::is_regular_file(dir / "model.safetensors") && fs::is_regular_file(dir / "config.json") &&
         fs::is_regular_file(dir / "trainer_state.json");
}

// A ckpt-STEP folder as given, or the latest complete checkpoint of a run folder.
inline fs::path resolve_checkpoint(const fs::path& path) {
  FATHOM_CHECK(fs::exists(path), "--resume: expected a ckpt-STEP folder or a run folder, got '"
                                     << path.string() << "', which does not exist");
  if (checkpoint_step(path) && is_complete_checkpoint(path)) return path;
  FATHOM_CHECK(fs::is_directory(path), "--resume: expected a folder, got file '" << path.string() << "'");
  std::optional<std::pair<std::int64_t, fs::path>> best;
  for (const auto& entry : fs::directory_iterator(path)) {
    auto step = checkpoint_step(entry.path());
    if (!step || !entry.is_directory() || !is_complete_checkpoint(entry.path())) continue;
    if (!best || *step > best->first) best = {*step, entry.path()};
  }
  FATHOM_CHECK(best.has_value(), "--resume: '" << path.string()
                                               << "' is neither a complete ckpt-STEP folder nor a run "
                                                  "folder holding one");
  return best->second;
}

// The latest complete checkpoint in run_dir, if any (for error messages and --resume of a run).
inline std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  if (!fs::is_directory(run_dir)) return std::nullopt;
  try {
    return resolve_checkpoint(run_dir);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// A tensor's elements as a safetensors record (any device; copied to the host). `transpose`
// writes a 2-D tensor as its transpose (GPT-2's Conv1D layout).
template <class T, class D>
TensorRecord to_record(const std::string& name, const Tensor<T, D>& t, bool transpose = false) {
  Tensor<T, Cpu> host = t.template to<Cpu>();
  if (transpose) {
    FATHOM_CHECK(host.dim() == 2, "to_record: transposing '" << name << "' needs a 2-D tensor, got shape "
                                                             << host.shape());
    host = host.transpose(0, 1).contiguous();
  }
  auto values = host.to_vector();
  return make_tensor_record<T>(name, host.shape().to_vector(), std::span<const T>(values));
}

// Copies a record into `dst` (same number of elements, shape checked), converting F32/F64/BF16 to
// T. `transpose` reads a 2-D record as its transpose.
template <class T, class D>
void from_record(const TensorRecord& r, Tensor<T, D>& dst, const std::string& source, bool transpose = false) {
  Shape want = dst.shape();
  std::vector<std::int64_t> file_shape = r.shape;
  if (transpose) {
    FATHOM_CHECK(file_shape.size() == 2, source << ": tensor '" << r.name << "' should be 2-D, got "
                                                << detail::shape_string(file_shape));
    std::swap(file_shape[0], file_shape[1]);
  }
  FATHOM_CHECK(Shape(file_shape) == want, source << ": tensor '" << r.name << "' has shape "
                                                 << Shape(file_shape) << " in the file, the model expects "
                                                 << want);
  std::vector<T> values(static_cast<std::size_t>(want.numel()));
  auto convert = [&](auto tag) {
    using S = decltype(tag);
    auto src = tensor_values<S>(r);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = scalar_cast<T>(src[i]);
  };
  if (r.dtype == "F32") convert(float{});
  else if (r.dtype == "F64") convert(double{});
  else if (r.dtype == "BF16") convert(bf16{});
  else FATHOM_FAIL(source << ": tensor '" << r.name << "' has dtype " << r.dtype << ", expected F32, F64 or BF16");
  Tensor<T, Cpu> host = Tensor<T, Cpu>::from_vector(Shape(r.shape), values);
  if (transpose) host = host.transpose(0, 1).contiguous();
  dst.copy_(host);
}

// What one checkpoint holds, as the trainer hands it over.
struct CheckpointContents {
  std::vector<TensorRecord> model;      // Hugging Face names and layout
  nlohmann::ordered_json config;        // config.json
  std::vector<TensorRecord> optimizer;  // optimizer state, named "<param>.<state>"
  nlohmann::json trainer_state;         // step, data position, RNG, ...
};

// Writes run_dir/ckpt-STEP atomically: into run_dir/.ckpt-STEP.tmp, then renamed. An existing
// ckpt-STEP is replaced only after the new one is complete.
inline fs::path write_checkpoint(const fs::path& run_dir, std::int64_t step, const CheckpointContents& c) {
  const fs::path final_dir = run_dir / checkpoint_name(step);
  const fs::path tmp = run_dir / ("." + checkpoint_name(step) + ".tmp");
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  FATHOM_CHECK(!ec, "cannot create checkpoint folder '" << tmp.string() << "': " << ec.message());
  try {
    write_safetensors(tmp / "model.safetensors", c.model, {{"format", "pt"}});
    write_safetensors(tmp / "optimizer.safetensors", c.optimizer, {{"format", "fathom"}});
    {
      std::ofstream out(tmp / "config.json");
      out << c.config.dump(2) << '\n';
      FATHOM_CHECK(out.good(), "writing '" << (tmp / "config.json").string() << "' failed");
    }
    {
      std::ofstream out(tmp / "trainer_state.json");
      out << c.trainer_state.dump(2) << '\n';
      FATHOM_CHECK(out.good(), "writing '" << (tmp / "trainer_state.json").string() << "' failed");
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (fs::exists(final_dir)) {
    const fs::path old = run_dir / ("." + checkpoint_name(step) + ".old");
    fs::remove_all(old, ec);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp, final_dir);
  }
  return final_dir;
}

inline nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  FATHOM_CHECK(in.good(), "cannot open '" << path.string() << "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FATHOM_FAIL("'" << path.string() << "' is not valid JSON: " << e.what());
  }
}

}  // namespace fathom::train
