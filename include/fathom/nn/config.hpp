// ModelConfig: the sizes and switches of a decoder-only LM (what its architecture fixes is the
// trait's, nn/arch.hpp), validation, its JSON form (checkpoints' config.json), and
// count_parameters(), the exact parameter count computed without allocating.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "fathom/core/error.hpp"
#include "fathom/nn/arch.hpp"

namespace fathom::nn {

namespace detail {

// a * b + c on int64 with overflow reported (count_parameters' arithmetic).
struct CheckedCount {
  std::int64_t value = 0;
  bool overflow = false;
  CheckedCount& add(std::int64_t a, std::int64_t b = 1) {
    std::int64_t product = 0;
    overflow = overflow || __builtin_mul_overflow(a, b, &product) ||
               __builtin_add_overflow(value, product, &value);
    return *this;
  }
};

}  // namespace detail

struct ModelConfig;
inline std::int64_t count_parameters(const ModelConfig& c, int norms_per_sublayer = 1,
                                     bool final_norm = true);

struct ModelConfig {
  ArchKind arch = ArchKind::llama;
  int layers = 0;   // L
  int d_model = 0;  // C
  int heads = 0;
  int d_ff = 0;     // MLP hidden size
  int vocab = 0;    // rows of the token embedding (and of the logits)
  int max_seq = 0;  // longest sequence forward accepts (GPT-2: rows of the position table)
  double norm_eps = 1e-6;
  double rope_theta = 10000.0;  // Llama only
  bool tied = false;            // LM head shares the token embedding (GPT-2)
  bool bias = false;            // biases on every linear (GPT-2); LayerNorm always has its bias
  std::string name = "custom";  // the preset it came from, for logs

  int head_dim() const { return heads > 0 ? d_model / heads : 0; }

  // Throws fathom::Error naming the first field that is out of range.
  void validate() const {
    FATHOM_CHECK(layers >= 1, "ModelConfig: expected layers >= 1, got " << layers);
    FATHOM_CHECK(d_model >= 1, "ModelConfig: expected d_model >= 1, got " << d_model);
    FATHOM_CHECK(heads >= 1 && d_model % heads == 0,
                 "ModelConfig: expected heads >= 1 dividing d_model = "
                     << d_model << ", got heads = " << heads);
    FATHOM_CHECK(!arch_spec(arch).rope || head_dim() % 2 == 0,
                 "ModelConfig: rotary positions need an even head dimension, got d_model / heads = "
                     << d_model << " / " << heads << " = " << head_dim());
    FATHOM_CHECK(d_ff >= 1, "ModelConfig: expected d_ff >= 1, got " << d_ff);
    FATHOM_CHECK(vocab >= 1, "ModelConfig: expected vocab >= 1, got " << vocab);
    FATHOM_CHECK(max_seq >= 1, "ModelConfig: expected max_seq >= 1, got " << max_seq);
    FATHOM_CHECK(norm_eps > 0.0 && std::isfinite(norm_eps),
                 "ModelConfig: expected a finite norm_eps > 0, got " << norm_eps);
    FATHOM_CHECK(rope_theta > 0.0 && std::isfinite(rope_theta),
                 "ModelConfig: expected a finite rope_theta > 0, got " << rope_theta);
    // Every size is an int, but products of them size the tensors: the largest count a policy
    // can lead to (two norms per sub-layer, a final norm) must fit in 64 bits.
    count_parameters(*this, 2, true);
  }
};

// ModelConfig as JSON: {"arch", "layers", "d_model", "heads", "d_ff", "vocab", "max_seq",
// "norm_eps", "rope_theta", "tied", "bias", "name"}. from_json requires every field but "name" and
// refuses an unknown arch. Templates over the JSON type (nlohmann::json or ordered_json) so that
// this header needs only <nlohmann/json_fwd.hpp>: a program that converts a config includes
// <nlohmann/json.hpp> (the train headers do), one that only builds models does not pay for it.
template <class BasicJson>
void to_json(BasicJson& j, const ModelConfig& c) {
  j = {{"arch", std::string(to_string(c.arch))},
       {"layers", c.layers},
       {"d_model", c.d_model},
       {"heads", c.heads},
       {"d_ff", c.d_ff},
       {"vocab", c.vocab},
       {"max_seq", c.max_seq},
       {"norm_eps", c.norm_eps},
       {"rope_theta", c.rope_theta},
       {"tied", c.tied},
       {"bias", c.bias},
       {"name", c.name}};
}

template <class BasicJson>
void from_json(const BasicJson& j, ModelConfig& c) {
  try {
    c.arch = arch_kind(j.at("arch").template get<std::string>());
    c.layers = j.at("layers").template get<int>();
    c.d_model = j.at("d_model").template get<int>();
    c.heads = j.at("heads").template get<int>();
    c.d_ff = j.at("d_ff").template get<int>();
    c.vocab = j.at("vocab").template get<int>();
    c.max_seq = j.at("max_seq").template get<int>();
    c.norm_eps = j.at("norm_eps").template get<double>();
    c.rope_theta = j.at("rope_theta").template get<double>();
    c.tied = j.at("tied").template get<bool>();
    c.bias = j.at("bias").template get<bool>();
    c.name = j.value("name", std::string("custom"));
  } catch (const typename BasicJson::exception& e) {
    FATHOM_FAIL("ModelConfig: not a model configuration: " << e.what());
  }
}

// The number of parameters of a model with this config, when each sub-layer owns
// `norms_per_sublayer` norms and a final norm exists or not (both decided by the norm policy:
// PolicyTraits). Equals DecoderLM::num_parameters() for the same choices; needs no memory. Throws
// fathom::Error when the count does not fit in 64 bits.
inline std::int64_t count_parameters(const ModelConfig& c, int norms_per_sublayer,
                                     bool final_norm) {
  const ArchSpec spec = arch_spec(c.arch);
  const std::int64_t C = c.d_model, F = c.d_ff, V = c.vocab;
  const std::int64_t norm = spec.norm == NormKind::layer ? 2 * C : C;  // weight (+ bias)
  const std::int64_t bias = c.bias ? 1 : 0;
  detail::CheckedCount block;
  block.add(4 * C, C).add(bias * 4, C);  // q, k, v, out
  if (spec.mlp == MlpKind::swiglu)
    block.add(3 * C, F).add(bias, 2 * F + C);
  else
    block.add(2 * C, F).add(bias, F + C);
  block.add(2 * static_cast<std::int64_t>(norms_per_sublayer), norm);
  detail::CheckedCount n;
  n.add(V, C).add(c.layers, block.value);
  n.overflow = n.overflow || block.overflow;
  if (!spec.rope) n.add(c.max_seq, C);
  if (final_norm) n.add(norm);
  if (!c.tied) n.add(V, C);
  FATHOM_CHECK(!n.overflow, "ModelConfig: the parameter count of "
                                << c.layers << " layers, d_model " << c.d_model << ", d_ff "
                                << c.d_ff << ", vocab " << c.vocab << " does not fit in 64 bits");
  return n.value;
}

}  // namespace fathom::nn
