// The Hugging Face config.json of a checkpoint: written for LlamaForCausalLM or GPT2LMHeadModel
// from a plain struct of sizes, with fathom's own fields under "fathom", and parsed back.
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fathom/core/error.hpp"
#include "fathom/train/safetensors.hpp"

namespace fathom::train {

// The sizes that decide a checkpoint's shapes. Self-contained so that this header does not depend
// on the model code, which converts its own configuration to it.
struct HfModelConfig {
  std::string
      arch;  // "llama" (RMSNorm, SwiGLU, RoPE) or "gpt2" (LayerNorm, GELU, learned positions)
  int layers = 0;
  int d_model = 0;
  int heads = 0;
  int d_ff = 0;
  int vocab = 0;
  int max_seq = 0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;  // llama only
  bool tied = false;            // output projection shares the input embedding
  // The element type of model.safetensors ("float32" or "bfloat16"). transformers 5 loads a
  // model in this type by default, so it must match the file.
  std::string dtype = "float32";

  friend bool operator==(const HfModelConfig&, const HfModelConfig&) = default;
};

inline constexpr std::string_view hf_arch_names = "llama, gpt2";

// Metadata for model.safetensors: transformers 4 refuses a safetensors archive whose "format" is
// not one it knows ("pt" for PyTorch layouts); transformers 5 accepts it with or without.
inline SafetensorsMetadata hf_safetensors_metadata() { return {{"format", "pt"}}; }

namespace detail {

inline void check_hf_sizes(const HfModelConfig& c) {
  FATHOM_CHECK(c.arch == "llama" || c.arch == "gpt2",
               "expected a model arch among " << hf_arch_names << ", got '" << c.arch << "'");
  FATHOM_CHECK(
      c.layers > 0 && c.d_model > 0 && c.heads > 0 && c.d_ff > 0 && c.vocab > 0 && c.max_seq > 0,
      "expected positive sizes, got layers " << c.layers << ", d_model " << c.d_model << ", heads "
                                             << c.heads << ", d_ff " << c.d_ff << ", vocab "
                                             << c.vocab << ", max_seq " << c.max_seq);
  FATHOM_CHECK(c.d_model % c.heads == 0, "expected d_model divisible by heads, got d_model "
                                             << c.d_model << " and " << c.heads << " heads");
  FATHOM_CHECK(c.norm_eps > 0, "expected a positive norm epsilon, got " << c.norm_eps);
  FATHOM_CHECK(
      c.dtype == "float32" || c.dtype == "bfloat16" || c.dtype == "float16",
      "expected a checkpoint dtype among float32, bfloat16, float16, got '" << c.dtype << "'");
}

inline std::string hf_where(std::string_view source) {
  return "config '" + std::string(source) + "'";
}

template <class = void>
int hf_int_field(const nlohmann::json& j, const char* key, std::string_view source) {
  auto it = j.find(key);
  FATHOM_CHECK(it != j.end(), hf_where(source)
                                  << ": expected an integer field '" << key << "', got none");
  FATHOM_CHECK(
      it->is_number_integer() && it->get<long long>() > 0 && it->get<long long>() <= 2147483647LL,
      hf_where(source) << ": expected '" << key << "' to be a positive integer, got "
                       << it->dump());
  return it->get<int>();
}

template <class = void>
double hf_number_field(const nlohmann::json& j, const char* key, std::string_view source) {
  auto it = j.find(key);
  FATHOM_CHECK(it != j.end() && it->is_number(),
               hf_where(source) << ": expected a number field '" << key << "', got "
                                << (it == j.end() ? std::string("none") : it->dump()));
  return it->get<double>();
}

// A number that must be finite and > 0 (norm epsilons, rope_theta).
template <class = void>
double hf_positive_field(const nlohmann::json& j, const char* key, std::string_view source) {
  const double v = hf_number_field(j, key, source);
  FATHOM_CHECK(v > 0 && std::isfinite(v),
               hf_where(source) << ": expected '" << key << "' to be a positive number, got " << v);
  return v;
}

template <class = void>
bool hf_bool_field(const nlohmann::json& j, const char* key, bool fallback,
                   std::string_view source) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  FATHOM_CHECK(it->is_boolean(), hf_where(source) << ": expected '" << key
                                                  << "' to be true or false, got " << it->dump());
  return it->get<bool>();
}

template <class = void>
void require_value(const nlohmann::json& j, const char* key, const nlohmann::json& wanted,
                   std::string_view source) {
  auto it = j.find(key);
  if (it == j.end()) return;
  FATHOM_CHECK(*it == wanted, hf_where(source) << ": fathom models need '" << key << "' = "
                                               << wanted.dump() << ", got " << it->dump());
}

}  // namespace detail

// config.json for transformers' LlamaForCausalLM. RoPE is written both the transformers 4 way
// (top-level rope_theta) and the transformers 5 way (rope_parameters), so either version loads it.
template <class = void>
nlohmann::ordered_json llama_config_json(const HfModelConfig& c) {
  detail::check_hf_sizes(c);
  FATHOM_CHECK(c.arch == "llama",
               "expected arch 'llama' for a Llama config, got '" << c.arch << "'");
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.d_model;
  j["intermediate_size"] = c.d_ff;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.heads;
  j["num_key_value_heads"] = c.heads;  // fathom's attention has one K/V head per query head
  j["head_dim"] = c.d_model / c.heads;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.max_seq;
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.rope_theta}};
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = c.tied;
  j["initializer_range"] = 0.02;
  j["pretraining_tp"] = 1;
  j["use_cache"] = true;
  j["torch_dtype"] = c.dtype;
  return j;
}

// config.json for transformers' GPT2LMHeadModel. n_inner is null when it is the default 4 * n_embd;
// dropout is 0 because fathom trains without it.
template <class = void>
nlohmann::ordered_json gpt2_config_json(const HfModelConfig& c) {
  detail::check_hf_sizes(c);
  FATHOM_CHECK(c.arch == "gpt2", "expected arch 'gpt2' for a GPT-2 config, got '" << c.arch << "'");
  nlohmann::ordered_json j;
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  j["n_embd"] = c.d_model;
  j["n_layer"] = c.layers;
  j["n_head"] = c.heads;
  j["n_inner"] =
      c.d_ff == 4 * c.d_model ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(c.d_ff);
  j["n_positions"] = c.max_seq;
  j["n_ctx"] = c.max_seq;  // the older name of n_positions, still read by some tools
  j["vocab_size"] = c.vocab;
  j["layer_norm_epsilon"] = c.norm_eps;
  j["activation_function"] = "gelu_new";  // GELU with the tanh approximation
  j["resid_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["attn_pdrop"] = 0.0;
  j["scale_attn_weights"] = true;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["reorder_and_upcast_attn"] = false;
  j["tie_word_embeddings"] = c.tied;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  // GPT2Config defaults both to 50256 (GPT-2's <|endoftext|>), which transformers flags as out of
  // range for a smaller vocabulary; only generation uses them.
  const auto end_of_text =
      c.vocab > 50256 ? nlohmann::ordered_json(50256) : nlohmann::ordered_json(nullptr);
  j["bos_token_id"] = end_of_text;
  j["eos_token_id"] = end_of_text;
  j["torch_dtype"] = c.dtype;
  return j;
}

// The config for c's arch, with `fathom` (the policy and anything else fathom needs to rebuild the
// model) stored under the key "fathom", which transformers keeps as an unused attribute.
template <class = void>
nlohmann::ordered_json hf_config_json(const HfModelConfig& c,
                                      const nlohmann::json& fathom = nlohmann::json::object()) {
  FATHOM_CHECK(c.arch == "llama" || c.arch == "gpt2",
               "expected a model arch among " << hf_arch_names << ", got '" << c.arch << "'");
  FATHOM_CHECK(fathom.is_object(),
               "expected the fathom fields as a JSON object, got " << fathom.type_name());
  nlohmann::ordered_json j = c.arch == "llama" ? llama_config_json(c) : gpt2_config_json(c);
  j["fathom"] = nlohmann::ordered_json::parse(fathom.dump());
  return j;
}

// Reads the sizes back from a config.json object; `source` names it in messages. Rejects what a
// fathom model cannot be: an unknown model_type, grouped-query attention, biases in Llama, an
// activation other than the one the arch uses.
template <class = void>
HfModelConfig parse_hf_config(const nlohmann::json& j, std::string_view source = "config.json") {
  using detail::hf_int_field, detail::hf_number_field, detail::hf_bool_field, detail::require_value,
      detail::hf_where;
  FATHOM_CHECK(j.is_object(), hf_where(source)
                                  << ": expected a JSON object, got " << j.type_name());
  auto type = j.find("model_type");
  FATHOM_CHECK(type != j.end() && type->is_string(),
               hf_where(source) << ": expected a string field 'model_type' (one of "
                                << hf_arch_names << "), got "
                                << (type == j.end() ? std::string("none") : type->dump()));
  HfModelConfig c;
  c.arch = type->get<std::string>();
  FATHOM_CHECK(c.arch == "llama" || c.arch == "gpt2",
               hf_where(source) << ": expected model_type among " << hf_arch_names << ", got '"
                                << c.arch << "'");
  if (c.arch == "llama") {
    c.d_model = hf_int_field(j, "hidden_size", source);
    c.d_ff = hf_int_field(j, "intermediate_size", source);
    c.layers = hf_int_field(j, "num_hidden_layers", source);
    c.heads = hf_int_field(j, "num_attention_heads", source);
    c.vocab = hf_int_field(j, "vocab_size", source);
    c.max_seq = hf_int_field(j, "max_position_embeddings", source);
    c.norm_eps = detail::hf_positive_field(j, "rms_norm_eps", source);
    if (j.contains("num_key_value_heads")) {
      int kv = hf_int_field(j, "num_key_value_heads", source);
      FATHOM_CHECK(kv == c.heads, hf_where(source)
                                      << ": expected num_key_value_heads equal to "
                                         "num_attention_heads ("
                                      << c.heads << "; fathom has no grouped-query attention), got "
                                      << kv);
    }
    if (j.contains("head_dim") && !j["head_dim"].is_null()) {
      int head_dim = hf_int_field(j, "head_dim", source);
      FATHOM_CHECK(head_dim * c.heads == c.d_model,
                   hf_where(source) << ": expected head_dim " << c.d_model / c.heads
                                    << " (hidden_size / num_attention_heads), got " << head_dim);
    }
    // transformers 5 keeps RoPE under rope_parameters; older configs have it at the top level.
    auto rope = j.find("rope_parameters");
    if (rope != j.end() && rope->is_object() && rope->contains("rope_theta")) {
      c.rope_theta = detail::hf_positive_field(*rope, "rope_theta", source);
      require_value(*rope, "rope_type", "default", source);
    } else if (j.contains("rope_theta")) {
      c.rope_theta = detail::hf_positive_field(j, "rope_theta", source);
    }
    require_value(j, "hidden_act", "silu", source);
    require_value(j, "attention_bias", false, source);
    require_value(j, "mlp_bias", false, source);
    c.tied = hf_bool_field(j, "tie_word_embeddings", false, source);
  } else {
    c.d_model = hf_int_field(j, "n_embd", source);
    c.layers = hf_int_field(j, "n_layer", source);
    c.heads = hf_int_field(j, "n_head", source);
    c.vocab = hf_int_field(j, "vocab_size", source);
    c.max_seq = hf_int_field(j, "n_positions", source);
    c.norm_eps = detail::hf_positive_field(j, "layer_norm_epsilon", source);
    auto inner = j.find("n_inner");
    if (inner == j.end() || inner->is_null()) {
      // GPT-2's default MLP width, 4 * n_embd, must itself be a valid size.
      FATHOM_CHECK(4LL * c.d_model <= 2147483647LL,
                   hf_where(source) << ": n_inner defaults to 4 * n_embd = " << 4LL * c.d_model
                                    << ", larger than a size can be (2147483647); n_embd "
                                    << c.d_model << " is too large");
      c.d_ff = 4 * c.d_model;
    } else {
      c.d_ff = hf_int_field(j, "n_inner", source);
    }
    require_value(j, "activation_function", "gelu_new", source);
    c.tied = hf_bool_field(j, "tie_word_embeddings", true, source);
  }
  // transformers 5 writes "dtype"; earlier versions "torch_dtype".
  for (const char* key : {"dtype", "torch_dtype"}) {
    auto it = j.find(key);
    if (it != j.end() && it->is_string()) {
      c.dtype = it->get<std::string>();
      break;
    }
  }
  FATHOM_CHECK(c.d_model % c.heads == 0, hf_where(source)
                                             << ": expected the width " << c.d_model
                                             << " divisible by " << c.heads << " heads");
  FATHOM_CHECK(
      c.dtype == "float32" || c.dtype == "bfloat16" || c.dtype == "float16",
      hf_where(source) << ": expected dtype float32, bfloat16 or float16, got '" << c.dtype << "'");
  return c;
}

// The same for a config built in memory by hf_config_json (which keeps key order).
template <class = void>
HfModelConfig parse_hf_config(const nlohmann::ordered_json& j,
                              std::string_view source = "config.json") {
  return parse_hf_config(nlohmann::json::parse(j.dump()), source);
}

// fathom's own fields of a config.json object ({} when it has none).
template <class = void>
nlohmann::json hf_fathom_fields(const nlohmann::json& j) {
  auto it = j.find("fathom");
  if (it == j.end() || it->is_null()) return nlohmann::json::object();
  FATHOM_CHECK(it->is_object(),
               "expected config field 'fathom' to be an object, got " << it->type_name());
  return *it;
}

// Reads a JSON file, naming the file in any error.
template <class = void>
nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  FATHOM_CHECK(in.is_open(),
               "expected a readable JSON file '"
                   << path.string() << "', got "
                   << (std::filesystem::exists(path) ? "an unreadable one" : "nothing there"));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    FATHOM_FAIL("expected valid JSON in '" << path.string() << "', got: " << e.what());
  }
}

// Writes JSON text (indented, newline-terminated) atomically: a temporary file, then a rename.
template <class = void>
void write_json_file(const std::filesystem::path& path, const nlohmann::ordered_json& j) {
  const std::string text = j.dump(2) + "\n";
  write_file_atomically(path, [&](std::FILE* f) {
    return std::fwrite(text.data(), 1, text.size(), f) == text.size();
  });
}

// Writes DIR/config.json for a checkpoint folder (path is the file itself).
template <class = void>
void write_hf_config(const std::filesystem::path& path, const HfModelConfig& c,
                     const nlohmann::json& fathom = nlohmann::json::object()) {
  write_json_file(path, hf_config_json(c, fathom));
}

template <class = void>
HfModelConfig read_hf_config(const std::filesystem::path& path) {
  return parse_hf_config(read_json_file(path), path.string());
}

}  // namespace fathom::train
