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
#include "fathom/train/hf_config.hpp"
#include "fathom/train/run_folder.hpp"
#include "fathom/train/safetensors.hpp"

namespace fathom::nn {
template <class T, DeviceTag D>
class LanguageModel;  // nn/language_model.hpp; only the templates below use it
}  // namespace fathom::nn

namespace fathom::train {

namespace fs = std::filesystem;

inline bool is_complete_checkpoint(const fs::path& dir) {
  return fs::is_regular_file(dir / "model.safetensors") &&
         fs::is_regular_file(dir / "config.json") &&
         fs::is_regular_file(dir / "trainer_state.json");
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

template <class = void>
int model_int_field(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(v.is_number_integer() && v.get<long long>() >= 1 && v.get<long long>() <= INT_MAX,
               source << ": expected 'model." << key << "' to be an integer in [1, " << INT_MAX
                      << "], got " << v.dump());
  return v.get<int>();
}

template <class = void>
double model_number_field(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(
      v.is_number() && v.get<double>() > 0 && std::isfinite(v.get<double>()),
      source << ": expected 'model." << key << "' to be a positive number, got " << v.dump());
  return v.get<double>();
}

template <class = void>
bool model_bool_field(const nlohmann::json& j, const char* key, const std::string& source) {
  const auto& v = model_field(j, key, source);
  FATHOM_CHECK(v.is_boolean(),
               source << ": expected 'model." << key << "' to be true or false, got " << v.dump());
  return v.get<bool>();
}

}  // namespace detail

// The model a checkpoint was trained as: the "model" object of config.json's fathom fields (or of
// trainer_state.json's "run"), checked field by field; `source` (the file) starts every message.
template <class = void>
nn::ModelConfig model_config_from_json(const nlohmann::json& j, const std::string& source) {
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

// Checks trainer_state.json field by field before it is used (it is written by the trainer: where
// a run stands at a checkpoint): 'step', 'tokens' and 'optimizer_step' are 64-bit integers >= 0
// with optimizer_step <= step; 'steps' (the schedule's length; absent in older checkpoints) >=
// step; 'seed' a non-negative integer; 'sampler' an object; 'run' holds string 'policy' and
// 'precision' and a valid 'model'. Messages name the file (`source`) and the field.
template <class = void>
void check_trainer_state(const nlohmann::json& j, const std::string& source) {
  FATHOM_CHECK(j.is_object(), source << ": expected a JSON object, got " << j.type_name());
  auto count = [&](const char* key, std::int64_t lowest) {
    auto it = j.find(key);
    FATHOM_CHECK(it != j.end() && it->is_number_integer() &&
                     !(it->is_number_unsigned() && it->get<std::uint64_t>() > INT64_MAX) &&
                     it->get<std::int64_t>() >= lowest,
                 source << ": expected '" << key << "' to be an integer >= " << lowest << ", got "
                        << (it == j.end() ? std::string("none") : it->dump()));
    return it->get<std::int64_t>();
  };
  const std::int64_t step = count("step", 0);
  count("tokens", 0);
  const std::int64_t optimizer_step = count("optimizer_step", 0);
  FATHOM_CHECK(optimizer_step <= step, source << ": expected 'optimizer_step' <= 'step' = " << step
                                              << ", got " << optimizer_step);
  if (j.contains("steps")) {
    const std::int64_t steps = count("steps", 1);
    FATHOM_CHECK(step <= steps,
                 source << ": expected 'step' <= 'steps' = " << steps << ", got " << step);
  }
  auto seed = j.find("seed");
  FATHOM_CHECK(seed == j.end() || seed->is_number_unsigned() ||
                   (seed->is_number_integer() && seed->get<std::int64_t>() >= 0),
               source << ": expected 'seed' to be a non-negative integer, got " << seed->dump());
  auto sampler = j.find("sampler");
  FATHOM_CHECK(sampler != j.end() && sampler->is_object(),
               source << ": expected an object 'sampler', got "
                      << (sampler == j.end() ? std::string("none") : sampler->dump()));
  auto run = j.find("run");
  FATHOM_CHECK(run != j.end() && run->is_object(),
               source << ": expected an object 'run', got "
                      << (run == j.end() ? std::string("none") : run->dump()));
  for (const char* key : {"policy", "precision"}) {
    auto it = run->find(key);
    FATHOM_CHECK(it != run->end() && it->is_string(),
                 source << ": expected a string 'run." << key << "', got "
                        << (it == run->end() ? std::string("none") : it->dump()));
  }
  auto model = run->find("model");
  FATHOM_CHECK(model != run->end(), source << ": expected an object 'run.model', got none");
  model_config_from_json(*model, source);
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
  // Files copied in as they are, as (source, name in the checkpoint): the tokenizer model.
  std::vector<std::pair<fs::path, std::string>> files;
};

namespace detail {

inline void write_json_atomically(const fs::path& path, const std::string& text) {
  write_file_atomically(path, [&](std::FILE* f) {
    return std::fwrite(text.data(), 1, text.size(), f) == text.size();
  });
}

}  // namespace detail

// Writes run_dir/ckpt-STEP atomically and durably: every file into run_dir/.ckpt-STEP.tmp (each
// flushed, fsynced and closed with its errors checked), then the folder renamed into place and the
// run folder fsynced. An existing ckpt-STEP is moved aside to .ckpt-STEP.old first and removed
// only once the new one is in place; on a failure it is moved back. A crash in between leaves
// leftovers that recover_checkpoints() puts right on the next start. Throws fathom::Error on any
// failure, with the previous checkpoints intact.
template <class = void>
fs::path write_checkpoint(const fs::path& run_dir, std::int64_t step, const CheckpointContents& c) {
  const fs::path final_dir = run_dir / checkpoint_name(step);
  const fs::path tmp = run_dir / ("." + checkpoint_name(step) + ".tmp");
  const fs::path old = run_dir / ("." + checkpoint_name(step) + ".old");
  std::error_code ec;
  fs::remove_all(tmp, ec);
  ec.clear();
  if (IoFaults::pass())
    fs::create_directories(tmp, ec);
  else
    ec = std::make_error_code(std::errc::io_error);
  FATHOM_CHECK(!ec, "cannot create checkpoint folder '" << tmp.string() << "': " << ec.message());
  try {
    write_safetensors(tmp / "model.safetensors", c.model, {{"format", "pt"}});
    write_safetensors(tmp / "optimizer.safetensors", c.optimizer, {{"format", "fathom"}});
    detail::write_json_atomically(tmp / "config.json", c.config.dump(2) + "\n");
    detail::write_json_atomically(tmp / "trainer_state.json", c.trainer_state.dump(2) + "\n");
    for (const auto& [source, name] : c.files) {
      // A run folder is replaced file by file it knows (run_folder.hpp), so nothing else goes in.
      FATHOM_CHECK(is_checkpoint_file(name), "'" << name << "' is not a checkpoint file name");
      fs::copy_file(source, tmp / name, fs::copy_options::overwrite_existing, ec);
      FATHOM_CHECK(!ec, "copying '" << source.string() << "' into checkpoint '" << tmp.string()
                                    << "' failed: " << ec.message());
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  const bool replacing = fs::exists(final_dir);
  try {
    if (replacing) {
      fs::remove_all(old, ec);
      detail::rename_or_fail(final_dir, old);
    }
    try {
      detail::rename_or_fail(tmp, final_dir);
    } catch (...) {
      if (replacing) fs::rename(old, final_dir, ec);  // put the previous one back
      throw;
    }
    detail::sync_directory_or_fail(run_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (replacing) fs::remove_all(old, ec);
  return final_dir;
}

// Puts right what an interrupted write_checkpoint left in run_dir: a .ckpt-N.tmp (an unfinished
// save) is removed; a .ckpt-N.old is removed when ckpt-N is there, else renamed back to ckpt-N (the
// save stopped between its two renames). Returns one line per thing done, for the log.
inline std::vector<std::string> recover_checkpoints(const fs::path& run_dir) {
  std::vector<std::string> done;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return done;
  std::vector<fs::path> leftovers;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".ckpt-", 0) == 0 && (name.ends_with(".tmp") || name.ends_with(".old")))
      leftovers.push_back(e.path());
  }
  std::sort(leftovers.begin(), leftovers.end());
  for (const auto& p : leftovers) {
    const std::string name = p.filename().string();
    const fs::path target = run_dir / name.substr(1, name.size() - 5);
    if (name.ends_with(".old") && !fs::exists(target)) {
      fs::rename(p, target, ec);
      FATHOM_CHECK(!ec, "cannot restore '" << target.string() << "' from '" << p.string()
                                           << "': " << ec.message());
      done.push_back("restored " + target.filename().string() + " from " + name +
                     " (a save was interrupted)");
    } else {
      fs::remove_all(p, ec);
      FATHOM_CHECK(!ec, "cannot remove '" << p.string() << "': " << ec.message());
      done.push_back("removed " + name + " (left by an interrupted save)");
    }
  }
  if (!done.empty()) detail::sync_directory(run_dir);
  return done;
}

template <class = void>
nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  FATHOM_CHECK(in.good(), "cannot open '" << path.string() << "'");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FATHOM_FAIL("'" << path.string() << "' is not valid JSON: " << e.what());
  }
}

// Checks a checkpoint folder whole before it is used, without allocating a model: every file is
// there and parses; config.json's Hugging Face sizes, its fathom fields and trainer_state.json's
// run describe the same model, policy and precision; the step agrees with the folder's name; the
// weights are those of that model (check_weights_fit_config) and hold only finite values; the
// optimizer state's header parses. Throws fathom::Error saying what is wrong.
template <class = void>
void validate_checkpoint(const fs::path& dir) {
  for (const char* file :
       {"model.safetensors", "config.json", "trainer_state.json", "optimizer.safetensors"}) {
    std::error_code ec;
    FATHOM_CHECK(
        fs::is_regular_file(dir / file, ec) && fs::file_size(dir / file, ec) > 0 && !ec,
        "'" << (dir / file).string() << "' is " << (fs::exists(dir / file) ? "empty" : "missing"));
  }
  const std::string config_path = (dir / "config.json").string();
  const nlohmann::json config = read_json(dir / "config.json");
  const HfModelConfig hf = parse_hf_config(config, config_path);
  const nlohmann::json fields = hf_fathom_fields(config);
  for (const char* key : {"model", "policy", "precision"})
    FATHOM_CHECK(fields.contains(key), config_path << ": expected a field 'fathom." << key
                                                   << "', got none (not a fathom checkpoint)");
  FATHOM_CHECK(fields.at("policy").is_string() && fields.at("precision").is_string(),
               config_path << ": expected strings 'fathom.policy' and 'fathom.precision', got "
                           << fields.at("policy").dump() << " and "
                           << fields.at("precision").dump());
  const nn::ModelConfig m = model_config_from_json(fields.at("model"), config_path);
  const bool same_sizes = hf.arch == nn::to_string(m.arch) && hf.layers == m.layers &&
                          hf.d_model == m.d_model && hf.heads == m.heads && hf.d_ff == m.d_ff &&
                          hf.vocab == m.vocab && hf.max_seq == m.max_seq;
  FATHOM_CHECK(same_sizes, config_path
                               << ": the Hugging Face fields (" << hf.arch << ", " << hf.layers
                               << " layers, d_model " << hf.d_model << ", d_ff " << hf.d_ff
                               << ", vocab " << hf.vocab << ") disagree with the fathom fields ("
                               << nn::to_string(m.arch) << ", " << m.layers << " layers, d_model "
                               << m.d_model << ", d_ff " << m.d_ff << ", vocab " << m.vocab << ")");
  const std::string state_path = (dir / "trainer_state.json").string();
  const nlohmann::json state = read_json(dir / "trainer_state.json");
  check_trainer_state(state, state_path);
  const nlohmann::json& run = state.at("run");
  for (const char* key : {"policy", "precision"})
    FATHOM_CHECK(run.at(key) == fields.at(key),
                 state_path << ": the run's " << key << " " << run.at(key).dump()
                            << " disagrees with config.json's " << fields.at(key).dump());
  nlohmann::json a = fields.at("model"), b = run.at("model");
  a.erase("name");
  b.erase("name");
  FATHOM_CHECK(a == b, state_path << ": the run's model " << b.dump()
                                  << " disagrees with config.json's " << a.dump());
  if (auto named = checkpoint_step(dir))
    FATHOM_CHECK(*named == state.at("step").get<std::int64_t>(),
                 state_path << ": expected step " << *named << " (the folder's name), got "
                            << state.at("step"));
  const fs::path weights = dir / "model.safetensors";
  const SafetensorsHeader header = read_safetensors_header(weights);
  check_weights_fit_config(m, header, weights.string());
  for (const auto& info : header.tensors) {
    const TensorRecord r = read_safetensors_tensor(weights, header, info.name);
    auto check = [&](auto tag) {
      using S = decltype(tag);
      const auto values = tensor_values<S>(r);
      for (std::size_t i = 0; i < values.size(); ++i)
        FATHOM_CHECK(std::isfinite(static_cast<double>(scalar_cast<float>(values[i]))),
                     weights.string() << ": tensor '" << r.name
                                      << "' holds a non-finite value at element " << i);
    };
    if (r.dtype == "F32")
      check(float{});
    else if (r.dtype == "F64")
      check(double{});
    else if (r.dtype == "BF16")
      check(bf16{});
  }
  (void)read_safetensors_header(dir / "optimizer.safetensors");
}

// The checkpoint `path` names: a ckpt-STEP folder, checked by validate_checkpoint; or a run
// folder, meaning its newest checkpoint that passes validate_checkpoint, the newer ones it passes
// over being listed in *skipped (one line each, with the reason) when skipped is given.
template <class = void>
fs::path resolve_checkpoint(const fs::path& typed, std::vector<std::string>* skipped = nullptr) {
  // "runs/x/ckpt-4/" (as a shell completes it) names ckpt-4.
  const fs::path path =
      typed.filename().empty() && typed.has_relative_path() ? typed.parent_path() : typed;
  FATHOM_CHECK(fs::exists(path), "expected a ckpt-STEP folder or a run folder, got '"
                                     << path.string() << "', which does not exist");
  FATHOM_CHECK(fs::is_directory(path), "expected a folder, got file '" << path.string() << "'");
  auto reason = [](const Error& e) {
    std::string m = e.what();
    const auto at = m.find(" [check `");
    return at == std::string::npos ? m : m.substr(0, at);
  };
  if (checkpoint_step(path)) {
    try {
      validate_checkpoint(path);
    } catch (const Error& e) {
      FATHOM_FAIL("checkpoint '" << path.string() << "' cannot be used: " << reason(e));
    }
    return path;
  }
  std::vector<std::pair<std::int64_t, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(path))
    if (auto step = checkpoint_step(entry.path()); step && entry.is_directory())
      found.emplace_back(*step, entry.path());
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string reasons;
  for (const auto& [step, dir] : found) {
    try {
      validate_checkpoint(dir);
      return dir;
    } catch (const Error& e) {
      const std::string line = "skipped " + dir.filename().string() + ": " + reason(e);
      if (skipped) skipped->push_back(line);
      reasons += "; " + line;
    }
  }
  FATHOM_FAIL("'" << path.string()
                  << "' is neither a usable ckpt-STEP folder nor a run folder holding one"
                  << reasons);
}

// The newest usable checkpoint in run_dir, if any (for error messages).
template <class = void>
std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  if (!fs::is_directory(run_dir)) return std::nullopt;
  try {
    return resolve_checkpoint(run_dir);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// What trainer_state.json holds: where the run stood when the checkpoint was written.
struct TrainerState {
  std::int64_t step = 0;            // optimizer steps finished
  std::int64_t tokens = 0;          // tokens trained on
  std::int64_t optimizer_step = 0;  // the optimizer's own count (Adam's bias correction)
  data::SamplerState sampler;       // the training data's position
  std::uint64_t seed = 0;
  nlohmann::json run;          // what the run was (policy, precision, model), for resuming
  std::int64_t steps = -1;     // the run's schedule length; -1: not recorded (older checkpoints)
  std::int64_t seq_len = 0;    // the run's sequence length (0: not recorded), for diagnostics
  std::string data, val_data;  // the run's shard globs (empty: the built-in corpus)
};

template <class = void>
void to_json(nlohmann::json& j, const TrainerState& s) {
  j = {{"step", s.step},       {"tokens", s.tokens}, {"optimizer_step", s.optimizer_step},
       {"sampler", s.sampler}, {"seed", s.seed},     {"run", s.run}};
  if (s.steps >= 0) j["steps"] = s.steps;
  if (s.seq_len > 0) j["seq_len"] = s.seq_len;
  j["data"] = s.data;
  j["val_data"] = s.val_data;
}

template <class = void>
void from_json(const nlohmann::json& j, TrainerState& s) {
  s.step = j.at("step").get<std::int64_t>();
  s.tokens = j.at("tokens").get<std::int64_t>();
  s.optimizer_step = j.at("optimizer_step").get<std::int64_t>();
  s.sampler = j.at("sampler").get<data::SamplerState>();
  s.seed = j.value("seed", std::uint64_t{0});
  s.run = j.at("run");
  s.steps = j.value("steps", std::int64_t{-1});
  s.seq_len = j.value("seq_len", std::int64_t{0});
  s.data = j.value("data", std::string());
  s.val_data = j.value("val_data", std::string());
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

  template <class = void>  // instantiated where called (docs/performance.md, Compile time)
  TrainerState state() const {
    check_trainer_state(trainer_state, (dir / "trainer_state.json").string());
    try {
      return trainer_state.get<TrainerState>();
    } catch (const nlohmann::json::exception& e) {
      FATHOM_FAIL("'" << (dir / "trainer_state.json").string()
                      << "' is not a fathom trainer state: " << e.what());
    }
  }
};

// Reads a checkpoint: `path` is a ckpt-STEP folder, or a run folder meaning its latest checkpoint.
template <class = void>
LoadedCheckpoint load_checkpoint(const fs::path& path, CheckpointParts parts = {}) {
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
void load_weights(nn::LanguageModel<T, D>& model, const SafetensorsFile& file,
                  const std::string& source) {
  load_weights(model.parameters(), file, source,
               [&](const std::string& name) { return model.hf_transposed(name); });
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

// The records of a model's delayed fp8 scaling (nn::LanguageModel::fp8_histories), named
// "fp8/" + the history's name, saved beside the optimizer's state.
inline constexpr const char* fp8_history_prefix = "fp8/";

template <class T, DeviceTag D>
std::vector<TensorRecord> fp8_history_records(const nn::LanguageModel<T, D>& model) {
  std::vector<TensorRecord> out;
  for (const auto& [name, h] : model.fp8_histories())
    out.push_back(to_record(fp8_history_prefix + name, h->state()));
  return out;
}

enum class Fp8HistoryLoad { none, loaded, missing };

// Restores the model's fp8 amax histories from a checkpoint: `none` when the model keeps none,
// `missing` (the histories stay empty) when the checkpoint holds none of them (it was saved
// without delayed scaling); a checkpoint holding some but not all is refused.
template <class T, DeviceTag D>
Fp8HistoryLoad load_fp8_histories(nn::LanguageModel<T, D>& model, const LoadedCheckpoint& c) {
  const auto histories = model.fp8_histories();
  if (histories.empty()) return Fp8HistoryLoad::none;
  const std::string source = (c.dir / "optimizer.safetensors").string();
  std::size_t found = 0;
  for (const auto& [name, h] : histories)
    found += c.optimizer.find(fp8_history_prefix + name) ? 1 : 0;
  if (found == 0) return Fp8HistoryLoad::missing;
  for (const auto& [name, h] : histories) {
    const TensorRecord* r = c.optimizer.find(fp8_history_prefix + name);
    FATHOM_CHECK(r != nullptr, source << ": no fp8 amax history named '" << fp8_history_prefix
                                      << name << "' (the checkpoint holds " << found << " of the "
                                      << histories.size() << " this model keeps)");
    Tensor<float, Cpu> state(Shape(r->shape));
    from_record(*r, state, source);
    h->load_state(state, source + ": '" + fp8_history_prefix + name + "'");
  }
  return Fp8HistoryLoad::loaded;
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
