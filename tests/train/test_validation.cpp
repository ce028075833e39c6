// Sizes, counts and files that must be refused with one clear message before anything is allocated
// or used: checked arithmetic, memory estimates, checkpoint names, config fields, and weights that
// do not belong to the config.
#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include "fathom/data/corpus.hpp"
#include "fathom/data/sampler.hpp"
#include "fathom/nn/decoder_lm.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/policy/pre_ln.hpp"
#include "fathom/policy/sandwich_ln.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "nn/small_model.hpp"
#include "support/catch.hpp"

using namespace fathom;
namespace fs = std::filesystem;

namespace {

nn::ModelConfig small_config() { return test::small_model(2, 16, 32, 16); }

using Small = nn::DecoderLM<nn::Llama, policy::PreLN, float, Cpu>;

// The weights of a small model as a safetensors file's records.
std::vector<train::TensorRecord> records_of(Small& model) {
  std::vector<train::TensorRecord> out;
  for (auto& p : model.parameters()) out.push_back(train::to_record(p.name, p.var.value()));
  return out;
}

train::SafetensorsHeader header_of(const std::vector<train::TensorRecord>& records) {
  const fs::path path = fs::temp_directory_path() / "fathom-test-validation.safetensors";
  train::write_safetensors(path, records);
  auto header = train::read_safetensors_header(path);
  fs::remove(path);
  return header;
}

}  // namespace

TEST_CASE("checkpoint_step: names whose step does not fit in 64 bits are not checkpoints",
          "[train][validation]") {
  CHECK(train::checkpoint_step("runs/a/ckpt-12") == std::optional<std::int64_t>(12));
  CHECK(train::checkpoint_step("ckpt-9223372036854775807") ==
        std::optional<std::int64_t>(INT64_MAX));
  CHECK_FALSE(train::checkpoint_step("ckpt-9223372036854775808").has_value());
  CHECK_FALSE(train::checkpoint_step("ckpt-99999999999999999999").has_value());
  CHECK_FALSE(train::checkpoint_step("ckpt-").has_value());
  CHECK_FALSE(train::checkpoint_step("ckpt-1x").has_value());
}

TEST_CASE("count_parameters: a count that overflows 64 bits is refused", "[nn][validation]") {
  nn::ModelConfig c = small_config();
  CHECK(nn::count_parameters(c, 1, true) > 0);
  c.d_model = 1'000'000'000;
  c.heads = 1;
  c.d_ff = 2'000'000'000;
  CHECK_THROWS_WITH(nn::count_parameters(c, 1, true), HasSubstring("does not fit in 64 bits"));
  CHECK_THROWS_WITH(c.validate(), HasSubstring("does not fit in 64 bits"));
}

TEST_CASE("ModelConfig::validate: norm_eps and rope_theta must be finite and positive",
          "[nn][validation]") {
  nn::ModelConfig c = small_config();
  c.norm_eps = -1e-5;
  CHECK_THROWS_WITH(c.validate(), HasSubstring("norm_eps"));
  c.norm_eps = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(c.validate(), HasSubstring("norm_eps"));
  c.norm_eps = 1e-5;
  c.rope_theta = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(c.validate(), HasSubstring("rope_theta"));
}

TEST_CASE("DecoderLM: a model larger than the memory is refused before allocating",
          "[nn][validation]") {
  nn::ModelConfig c = small_config();
  c.layers = 100'000'000;
  c.d_model = 1024;
  c.heads = 8;
  c.d_ff = 4096;  // ~1.3e15 weights: petabytes, more than any machine has
  CHECK_THROWS_WITH(Small(c), HasSubstring("of cpu memory"));
  CHECK(memory::saturating_bytes(UINT64_MAX / 2, 4) == UINT64_MAX);
  CHECK(memory::saturating_bytes(10, 4) == 40);
}

TEST_CASE("builtin_corpus: a size that cannot fit in memory is refused", "[data][validation]") {
  // -1 read as an unsigned size.
  CHECK_THROWS_WITH(data::builtin_corpus(data::Split::train, static_cast<std::size_t>(-1)),
                    HasSubstring("of cpu memory"));
}

TEST_CASE("TokenSource: a batch whose token count overflows is refused", "[data][validation]") {
  std::vector<std::int32_t> tokens(1000, 1);
  data::SamplerOptions so;
  so.batch = std::int64_t{1} << 62;
  so.seq_len = 32;
  CHECK_THROWS_WITH(data::TokenSource::from_tokens(tokens, so, "tokens"),
                    HasSubstring("larger than the data"));
}

TEST_CASE("parse_hf_config: bad epsilons and an n_embd whose default n_inner overflows",
          "[train][validation]") {
  nlohmann::json gpt2 = {{"model_type", "gpt2"},
                         {"n_embd", 64},
                         {"n_layer", 2},
                         {"n_head", 4},
                         {"vocab_size", 257},
                         {"n_positions", 64},
                         {"layer_norm_epsilon", 1e-5}};
  CHECK(train::parse_hf_config(gpt2, "g.json").d_ff == 256);
  auto big = gpt2;
  big["n_embd"] = 1 << 30;
  big["n_head"] = 1;
  CHECK_THROWS_WITH(train::parse_hf_config(big, "g.json"),
                    HasSubstring("n_embd 1073741824 is too large"));
  auto negative = gpt2;
  negative["layer_norm_epsilon"] = -1e-5;
  CHECK_THROWS_WITH(
      train::parse_hf_config(negative, "g.json"),
      HasSubstring("config 'g.json': expected 'layer_norm_epsilon' to be a positive number"));
  nlohmann::json llama = {{"model_type", "llama"},         {"hidden_size", 64},
                          {"intermediate_size", 128},      {"num_hidden_layers", 2},
                          {"num_attention_heads", 4},      {"vocab_size", 257},
                          {"max_position_embeddings", 64}, {"rms_norm_eps", -1e-6}};
  CHECK_THROWS_WITH(train::parse_hf_config(llama, "l.json"),
                    HasSubstring("expected 'rms_norm_eps' to be a positive number"));
}

TEST_CASE("model_config_from_json: type errors name the file and the field",
          "[train][validation]") {
  nlohmann::json m = {{"arch", "llama"},   {"layers", 2},   {"d_model", 16}, {"heads", 2},
                      {"d_ff", 32},        {"vocab", 257},  {"max_seq", 16}, {"norm_eps", 1e-6},
                      {"rope_theta", 1e4}, {"tied", false}, {"bias", false}, {"name", "tiny"}};
  const nn::ModelConfig c = train::model_config_from_json(m, "run/ckpt-2/config.json");
  CHECK(c.layers == 2);
  CHECK(c.d_ff == 32);
  auto text = m;
  text["layers"] = "2";
  CHECK_THROWS_WITH(
      train::model_config_from_json(text, "run/ckpt-2/config.json"),
      HasSubstring("run/ckpt-2/config.json: expected 'model.layers' to be an integer"));
  auto missing = m;
  missing.erase("d_ff");
  CHECK_THROWS_WITH(train::model_config_from_json(missing, "c.json"),
                    HasSubstring("c.json: expected a field 'model.d_ff', got none"));
  auto eps = m;
  eps["norm_eps"] = -1;
  CHECK_THROWS_WITH(train::model_config_from_json(eps, "c.json"), HasSubstring("'model.norm_eps'"));
  auto arch = m;
  arch["arch"] = 3;
  CHECK_THROWS_WITH(train::model_config_from_json(arch, "c.json"), HasSubstring("'model.arch'"));
  auto huge = m;
  huge["d_model"] = 4'000'000'000LL;
  CHECK_THROWS_WITH(train::model_config_from_json(huge, "c.json"), HasSubstring("'model.d_model'"));
}

TEST_CASE("check_weights_fit_config: a config that does not describe the weights is refused",
          "[train][validation]") {
  Small model(small_config());
  model.init(1);
  const auto header = header_of(records_of(model));
  train::check_weights_fit_config(small_config(), header, "w");  // the truth passes

  nn::ModelConfig fewer = small_config();
  fewer.layers = 1;
  CHECK_THROWS_WITH(train::check_weights_fit_config(fewer, header, "w"),
                    HasSubstring("the weights hold 2 blocks (0..1), the config says layers = 1"));
  nn::ModelConfig wide = small_config();
  wide.d_model = 1'000'000'000;
  wide.heads = 1;
  CHECK_THROWS_WITH(train::check_weights_fit_config(wide, header, "w"),
                    HasSubstring("(vocab, d_model)"));
  nn::ModelConfig ff = small_config();
  ff.d_ff = 48;
  CHECK_THROWS_WITH(train::check_weights_fit_config(ff, header, "w"),
                    HasSubstring("d_ff x d_model = 48 x 16"));
  nn::ModelConfig gpt2 = small_config();
  gpt2.arch = nn::ArchKind::gpt2;
  CHECK_THROWS_WITH(train::check_weights_fit_config(gpt2, header, "w"),
                    HasSubstring("transformer.wte.weight"));

  // Two norms per sub-layer (SandwichLN) is a count the check accepts for the same config.
  nn::DecoderLM<nn::Llama, policy::SandwichLN, float, Cpu> sandwich(small_config());
  std::vector<train::TensorRecord> records;
  for (auto& p : sandwich.parameters()) records.push_back(train::to_record(p.name, p.var.value()));
  train::check_weights_fit_config(small_config(), header_of(records), "w");
}

TEST_CASE("load_weights: missing, extra and non-finite tensors are refused",
          "[train][validation]") {
  Small source(small_config());
  source.init(3);
  auto records = records_of(source);
  auto transposed = [](const std::string& name) { return nn::Llama::hf_transposed(name); };

  Small target(small_config());
  train::SafetensorsFile file;
  file.tensors = records;
  train::load_weights(target.parameters(), file, "w", transposed);
  CHECK(target.parameters()[0].var.value().to_vector() ==
        source.parameters()[0].var.value().to_vector());

  train::SafetensorsFile missing;
  missing.tensors.assign(records.begin() + 1, records.end());
  CHECK_THROWS_WITH(train::load_weights(target.parameters(), missing, "w", transposed),
                    HasSubstring("expected a tensor '" + records[0].name + "', got none"));

  train::SafetensorsFile extra = file;
  extra.tensors.push_back(
      train::to_record("model.layers.9.extra.weight", source.parameters()[0].var.value()));
  CHECK_THROWS_WITH(train::load_weights(target.parameters(), extra, "w", transposed),
                    HasSubstring("'model.layers.9.extra.weight' is not a parameter of the model"));

  train::SafetensorsFile nan = file;
  auto values = train::tensor_values<float>(nan.tensors[1]);
  values[3] = std::numeric_limits<float>::quiet_NaN();
  nan.tensors[1] = train::make_tensor_record<float>(nan.tensors[1].name, nan.tensors[1].shape,
                                                    std::span<const float>(values));
  CHECK_THROWS_WITH(train::load_weights(target.parameters(), nan, "w", transposed),
                    HasSubstring("holds a non-finite value (nan) at element 3"));
}
