// Checkpoints: DIR/ckpt-STEP/{model.safetensors, config.json, optimizer.safetensors,
// trainer_state.json}. write_checkpoint writes one into a hidden temporary folder and renames it
// into place, so a crash never leaves a torn one and the previous checkpoint stays intact;
// load_checkpoint reads the same four parts back. TrainerState is what trainer_state.json holds;
// model_records and load_weights move a model's parameters to and from its records.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/nn/arch.hpp"
#include "fathom/nn/config.hpp"
#include "fathom/nn/parameter.hpp"
#include "fathom/tensor/tensor.hpp"
#include "fathom/train/safetensors.hpp"

namespace fathom::nn {
template <class T, DeviceTag D>
class LanguageModel;  // nn/language_model.hpp; only the templates below use it
}  // namespace fathom::nn

namespace fathom::train {

namespace fs = std::filesystem;

inline std::string checkpoint_name(std::int64_t step) { return "ckpt-" + std::to_string(step); }

// The step of a folder named ckpt-STEP, or nullopt (also when STEP does not fit in 64 bits).
inline std::optional<std::int64_t> checkpoint_step(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("ckpt-", 0) != 0 || name.size() == 5) return std::nullopt;
  std::int64_t step = 0;
  for (char c : name.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    if (__builtin_mul_overflow(step, 10, &step) || __builtin_add_overflow(step, c - '0', &step))
      return std::nullopt;
  }
  return step;
}

inline bool is_complete_checkpoint(const fs::path& dir) {
  return fs::is_regular_file(dir / "model.safetensors") &&
         fs::is_regular_file(dir / "config.json") &&
         fs::is_regular_file(dir / "trainer_state.json");
}

// A ckpt-STEP folder as given, or the latest complete checkpoint of a run folder.
inline fs::path resolve_checkpoint(const fs::path& path) {
  if (!fs::exists(path))
    FATHOM_FAIL("expected a ckpt-STEP folder or a run folder, got '" << path.string()
                                                                     << "', which does not exist");
  if (checkpoint_step(path) && is_complete_checkpoint(path)) return path;
  if (!fs::is_directory(path))
    FATHOM_FAIL("expected a checkpoint folder, got file '" << path.string() << "'");
  std::optional<std::pair<std::int64_t, fs::path>> best;
  for (const auto& entry : fs::directory_iterator(path)) {
    auto step = checkpoint_step(entry.path());
    if (!step || !entry.is_directory() || !is_complete_checkpoint(entry.path())) continue;
    if (!best || *step > best->first) best = {*step, entry.path()};
  }
  if (!best)
    FATHOM_FAIL("'" << path.string()
                    << "' is neither a complete ckpt-STEP folder nor a run folder holding one");
  return best->second;
}

// The latest complete checkpoint in run_dir, if any (for error messages and resuming a run).
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
    FATHOM_CHECK(host.dim() == 2, "to_record: transposing '" << name
                                                             << "' needs a 2-D tensor, got shape "
                                                             << host.shape());
    host = host.transpose(0, 1).contiguous();
  }
  auto values = host.to_vector();
  return make_tensor_record<T>(name, host.shape().to_vector(), std::span<const T>(values));
}

// Copies a record into `dst` (same number of elements, shape checked), converting F32/F64/BF16 to
// T. `transpose` reads a 2-D record as its transpose.
template <class T, class D>
void from_record(const TensorRecord& r, Tensor<T, D>& dst, const std::string& source,
                 bool transpose = false) {
  Shape want = dst.shape();
  std::vector<std::int64_t> file_shape = r.shape;
  if (transpose) {
    FATHOM_CHECK(file_shape.size() == 2, source << ": tensor '" << r.name << "' should be 2-D, got "
                                                << detail::shape_string(file_shape));
    std::swap(file_shape[0], file_shape[1]);
  }
  FATHOM_CHECK(Shape(file_shape) == want, source << ": tensor '" << r.name << "' has shape "
                                                 << Shape(file_shape)
                                                 << " in the file, the model expects " << want);
  std::vector<T> values(static_cast<std::size_t>(want.numel()));
  // A NaN or Inf in saved weights or optimizer state is damage (training stops or skips the step
  // before one can be saved): refuse it here rather than train or diagnose on it.
  auto convert = [&](auto tag) {
    using S = decltype(tag);
    auto src = tensor_values<S>(r);
    for (std::size_t i = 0; i < values.size(); ++i) {
      FATHOM_CHECK(std::isfinite(static_cast<double>(scalar_cast<float>(src[i]))),
                   source << ": tensor '" << r.name << "' holds a non-finite value ("
                          << scalar_cast<float>(src[i]) << ") at element " << i);
      values[i] = scalar_cast<T>(src[i]);
    }
  };
  if (r.dtype == "F32")
    convert(float{});
  else if (r.dtype == "F64")
    convert(double{});
  else if (r.dtype == "BF16")
    convert(bf16{});
  else
    FATHOM_FAIL(source << ": tensor '" << r.name << "' has dtype " << r.dtype
                       << ", expected F32, F64 or BF16");
  Tensor<T, Cpu> host = Tensor<T, Cpu>::from_vector(Shape(r.shape), values);
  if (transpose) host = host.transpose(0, 1).contiguous();
  dst.copy_(host);
}

namespace detail {

inline const nlohmann::json& model_field(const nlohmann::json& j, const char* key,
                                         const std::string& source) {
  auto it = j.find(key);
  FATHOM_CHECK(it != j.end(), source << ": expected a field 'model." << key << "', got none");
  return *it;
}

inline int model_int_field(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(v.is_number_integer() && v.get<long long>() >= 1 && v.get<long long>() <= INT_MAX,
               source << ": expected 'model." << key << "' to be an integer in [1, " << INT_MAX
                      << "], got " << v.dump());
  return v.get<int>();
}

inline double model_number_field(const nlohmann::json& j, const char* key,
                                 const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(
      v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()),
      source << ": expected 'model." << key << "' to be a positive number, got " << v.dump());
  return v.get<double>();
}

inline bool model_bool_field(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(v.is_boolean(),
               source << ": expected 'model." << key << "' to be true or false, got " << v.dump());
  return v.get<bool>();
}

}  // namespace detail

// The model a checkpoint was trained as: the "model" object of config.json's fathom fields (or of
// trainer_state.json's "run"), checked field by field; `source` (the file) starts every message.
inline nn::ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& source) {
  FATHOM_CHECK(j.is_object(), source << ": expected 'model' to be an object, got " << j.dump());
  nn::ModelConfig m;
  const auto& arch = detail::model_field(j, "arch", source);
  FATHOM_CHECK(
      arch.is_string() && (arch == "llama" || arch == "gpt2"),
      source << ": expected 'model.arch' to be \"llama\" or \"gpt2\", got " << arch.dump());
  m.arch = arch == "llama" ? nn::ArchKind::llama : nn::ArchKind::gpt2;
  m.layers = detail::model_int_field(j, "layers", source);
  m.d_model = detail::model_int_field(j, "d_model", source);
  m.heads = detail::model_int_field(j, "heads", source);
  m.d_ff = detail::model_int_field(j, "d_ff", source);
  m.vocab = detail::model_int_field(j, "vocab", source);
  m.max_seq = detail::model_int_field(j, "max_seq", source);
  m.norm_eps = detail::model_number_field(j, "norm_eps", source);
  m.rope_theta = detail::model_number_field(j, "rope_theta", source);
  m.tied = detail::model_bool_field(j, "tied", source);
  m.bias = detail::model_bool_field(j, "bias", source);
  auto name = j.find("name");
  if (name != j.end()) {
    FATHOM_CHECK(name->is_string(),
                 source << ": expected 'model.name' to be a string, got " << name->dump());
    m.name = name->get<std::string>();
  }
  try {
    m.validate();
  } catch (const Error& e) {
    FATHOM_FAIL(source << ": " << e.what());
  }
  return m;
}

// Checks, from the header of model.safetensors alone (before any model is allocated), that the
// weights are those of model `m`: the token embedding is (vocab, d_model), the blocks are numbered
// 0..layers-1, the first block's MLP has d_ff, and the weights hold as many values as a model of
// `m` with one to four norms per sub-layer (the policy decides how many).
inline void check_weights_fit_config(const nn::ModelConfig& m, const SafetensorsHeader& header,
                                     const std::string& source) {
  const bool llama = m.arch == nn::ArchKind::llama;
  const std::string embedding =
      (llama ? nn::Llama::embedding() : nn::Gpt2::embedding()) + ".weight";
  const TensorInfo* wte = header.find(embedding);
  FATHOM_CHECK(wte != nullptr, source << ": expected a tensor '" << embedding << "' (the "
                                      << nn::to_string(m.arch)
                                      << " token embedding), got none among "
                                      << header.tensors.size() << " tensors");
  const std::vector<std::int64_t> want{m.vocab, m.d_model};
  FATHOM_CHECK(wte->shape == want,
               source << ": tensor '" << embedding << "' has shape "
                      << detail::shape_string(wte->shape)
                      << ", the config says (vocab, d_model) = " << detail::shape_string(want));
  const std::string prefix = llama ? "model.layers." : "transformer.h.";
  std::set<long long> blocks;
  long long values = 0;
  for (const auto& t : header.tensors) {
    long long n = 1;
    for (auto d : t.shape)
      if (__builtin_mul_overflow(n, d, &n)) n = LLONG_MAX;
    if (__builtin_add_overflow(values, n, &values)) values = LLONG_MAX;
    if (t.name.rfind(prefix, 0) != 0) continue;
    const auto rest = t.name.substr(prefix.size());
    const auto dot = rest.find('.');
    if (dot == 0 || dot == std::string::npos || rest.find_first_not_of("0123456789") != dot ||
        dot > 9)
      continue;
    blocks.insert(std::stoll(rest.substr(0, dot)));
  }
  FATHOM_CHECK(static_cast<long long>(blocks.size()) == m.layers &&
                   (blocks.empty() || (*blocks.begin() == 0 && *blocks.rbegin() == m.layers - 1)),
               source << ": the weights hold " << blocks.size() << " blocks"
                      << (blocks.empty() ? std::string()
                                         : " (" + std::to_string(*blocks.begin()) + ".." +
                                               std::to_string(*blocks.rbegin()) + ")")
                      << ", the config says layers = " << m.layers);
  const nn::BlockNames first = llama ? nn::Llama::block(0, 1) : nn::Gpt2::block(0, 1);
  const TensorInfo* up = header.find(first.mlp_up + ".weight");
  FATHOM_CHECK(up != nullptr && up->shape.size() == 2 &&
                   (up->shape[0] == m.d_ff || up->shape[1] == m.d_ff) &&
                   (up->shape[0] == m.d_model || up->shape[1] == m.d_model),
               source << ": expected a tensor '" << first.mlp_up
                      << ".weight' of d_ff x d_model = " << m.d_ff << " x " << m.d_model << ", got "
                      << (up ? detail::shape_string(up->shape) : std::string("none")));
  bool matches = false;
  for (int norms = 1; norms <= 4 && !matches; ++norms)
    for (bool final_norm : {true, false})
      matches = matches || nn::count_parameters(m, norms, final_norm) == values;
  FATHOM_CHECK(matches,
               source << ": the weights hold " << values << " values, a model of this config holds "
                      << nn::count_parameters(m, 1, true) << " (one norm per sub-layer) to "
                      << nn::count_parameters(m, 4, true) << " (four)");
}

// Loads a model's parameters (model.parameters()) from a safetensors file, checked whole: every
// parameter is there with its shape and finite values, and the file holds no tensor that is not a
// parameter. hf_transposed(name): whether the file stores that parameter transposed (GPT-2).
template <class T, class D, class Transposed>
void load_weights(std::vector<nn::NamedParameter<T, D>>& params, const SafetensorsFile& file,
                  const std::string& source, Transposed&& hf_transposed) {
  std::set<std::string> names;
  for (auto& p : params) {
    const TensorRecord* r = file.find(p.name);
    FATHOM_CHECK(r != nullptr, source << ": expected a tensor '" << p.name
                                      << "', got none (the file has " << file.tensors.size()
                                      << " tensors, the model " << params.size() << " parameters)");
    from_record(*r, p.var.mutable_value(), source, hf_transposed(p.name));
    names.insert(p.name);
  }
  for (const auto& t : file.tensors)
    FATHOM_CHECK(names.count(t.name),
                 source << ": tensor '" << t.name << "' is not a parameter of the model ("
                        << names.size() << " parameters; another policy or config?)");
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
inline fs::path write_checkpoint(const fs::path& run_dir, std::int64_t step,
                                 const CheckpointContents& c) {
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

// What trainer_state.json holds: where the run stood when the checkpoint was written.
struct TrainerState {
  std::int64_t step = 0;            // optimizer steps finished
  std::int64_t tokens = 0;          // tokens trained on
  std::int64_t optimizer_step = 0;  // the optimizer's own count (Adam's bias correction)
  data::SamplerState sampler;       // the training data's position
  std::uint64_t seed = 0;
  nlohmann::json run;  // what the run was (policy, precision, model), for resuming
};

inline void to_json(nlohmann::json& j, const TrainerState& s) {
  j = {{"step", s.step},       {"tokens", s.tokens}, {"optimizer_step", s.optimizer_step},
       {"sampler", s.sampler}, {"seed", s.seed},     {"run", s.run}};
}

inline void from_json(const nlohmann::json& j, TrainerState& s) {
  s.step = j.at("step").get<std::int64_t>();
  s.tokens = j.at("tokens").get<std::int64_t>();
  s.optimizer_step = j.at("optimizer_step").get<std::int64_t>();
  s.sampler = j.at("sampler").get<data::SamplerState>();
  s.seed = j.value("seed", std::uint64_t{0});
  s.run = j.at("run");
}

// Which parts load_checkpoint reads (the optimizer state is the largest and only resuming needs
// it).
struct CheckpointParts {
  bool model = true;
  bool optimizer = true;
};

// A checkpoint as read back: the parts write_checkpoint wrote, and where they came from.
struct LoadedCheckpoint {
  fs::path dir;                  // the ckpt-STEP folder
  SafetensorsFile model;         // empty unless CheckpointParts::model
  nlohmann::json config;         // config.json
  SafetensorsFile optimizer;     // empty unless CheckpointParts::optimizer
  nlohmann::json trainer_state;  // trainer_state.json

  TrainerState state() const {
    try {
      return trainer_state.get<TrainerState>();
    } catch (const nlohmann::json::exception& e) {
      FATHOM_FAIL("'" << (dir / "trainer_state.json").string()
                      << "' is not a fathom trainer state: " << e.what());
    }
  }
};

// Reads a checkpoint: `path` is a ckpt-STEP folder, or a run folder meaning its latest checkpoint.
inline LoadedCheckpoint load_checkpoint(const fs::path& path, CheckpointParts parts = {}) {
  LoadedCheckpoint c;
  c.dir = resolve_checkpoint(path);
  c.config = read_json(c.dir / "config.json");
  c.trainer_state = read_json(c.dir / "trainer_state.json");
  if (parts.model) c.model = read_safetensors(c.dir / "model.safetensors");
  if (parts.optimizer) c.optimizer = read_safetensors(c.dir / "optimizer.safetensors");
  return c;
}

// A model's parameters as records in the Hugging Face names and layout (model.safetensors).
template <class T, DeviceTag D>
std::vector<TensorRecord> model_records(nn::LanguageModel<T, D>& model) {
  std::vector<TensorRecord> out;
  for (const auto& p : model.parameters())
    out.push_back(to_record(p.name, p.var.value(), model.hf_transposed(p.name)));
  return out;
}

// Copies every parameter of `model` from `file` (model.safetensors of `source`), checked whole as
// the overload above does: shapes, finite values, no tensor missing and none extra.
template <class T, DeviceTag D>
void load_weights(nn::LanguageModel<T, D>& model, const SafetensorsFile& file, const std::string& source) {
  load_weights(model.parameters(), file, source, [&](const std::string& name) { return model.hf_transposed(name); });
}

template <class T, DeviceTag D>
void load_weights(nn::LanguageModel<T, D>& model, const LoadedCheckpoint& c) {
  load_weights(model, c.model, (c.dir / "model.safetensors").string());
}

// Named state tensors as records (optimizer.safetensors), and back.
template <class A, DeviceTag D>
std::vector<TensorRecord> state_records(
    const std::vector<std::pair<std::string, Tensor<A, D>*>>& state) {
  std::vector<TensorRecord> out;
  for (const auto& [name, t] : state) out.push_back(to_record(name, *t));
  return out;
}

template <class A, DeviceTag D>
void load_state(const std::vector<std::pair<std::string, Tensor<A, D>*>>& state,
                const LoadedCheckpoint& c) {
  const std::string source = (c.dir / "optimizer.safetensors").string();
  for (const auto& [name, t] : state) {
    const TensorRecord* r = c.optimizer.find(name);
    FATHOM_CHECK(r != nullptr, source << ": no optimizer state named '" << name
                                      << "' (was the checkpoint written with another optimizer?)");
    from_record(*r, *t, source);
  }
}

}  // namespace fathom::train
