// Tests for fathom/train/hf_config.hpp: config.json for transformers' LlamaForCausalLM and
// GPT2LMHeadModel, written and parsed back, and the messages for configs fathom cannot load.
#include "fathom/train/hf_config.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "support/catch.hpp"
#include "support/errors.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace fathom::train;
using fathom::test::require_error;
using fathom::test::TempDir;

TEST_CASE("config.json round trip for llama and gpt2", "[train][hf_config]") {
  TempDir dir;
  HfModelConfig llama{"llama", 12, 768, 12, 2048, 32000, 256, 1e-6, 10000.0, false, "float32"};
  HfModelConfig gpt2{"gpt2", 12, 768, 12, 3072, 50304, 1024, 1e-5, 10000.0, true, "bfloat16"};
  nlohmann::json extra = {{"policy", "lns"}, {"seed", 17}};

  SECTION("llama fields as transformers' LlamaConfig names them") {
    auto j = hf_config_json(llama, extra);
    CHECK(j["architectures"][0] == "LlamaForCausalLM");
    CHECK(j["model_type"] == "llama");
    CHECK(j["hidden_size"] == 768);
    CHECK(j["intermediate_size"] == 2048);
    CHECK(j["num_key_value_heads"] == 12);
    CHECK(j["rope_parameters"]["rope_theta"] == 10000.0);
    CHECK(j["tie_word_embeddings"] == false);
    CHECK(j["fathom"]["policy"] == "lns");
    write_hf_config(dir / "config.json", llama, extra);
    CHECK_FALSE(fs::exists(dir / "config.json.tmp"));
    CHECK(read_hf_config(dir / "config.json") == llama);
    CHECK(hf_fathom_fields(read_json_file(dir / "config.json")) == extra);
  }
  SECTION("gpt2 fields as transformers' GPT2Config names them") {
    auto j = hf_config_json(gpt2);
    CHECK(j["architectures"][0] == "GPT2LMHeadModel");
    CHECK(j["n_embd"] == 768);
    CHECK(j["n_inner"].is_null());  // 4 * n_embd is transformers' default
    CHECK(j["activation_function"] == "gelu_new");
    write_hf_config(dir / "config.json", gpt2);
    CHECK(read_hf_config(dir / "config.json") == gpt2);
    gpt2.d_ff = 2000;
    CHECK(hf_config_json(gpt2)["n_inner"] == 2000);
    CHECK(parse_hf_config(hf_config_json(gpt2)) == gpt2);
  }
  SECTION("random sizes survive the round trip") {
    std::mt19937 rng(5);
    for (int i = 0; i < 20; ++i) {
      HfModelConfig c;
      c.arch = i % 2 ? "llama" : "gpt2";
      c.heads = 1 + static_cast<int>(rng() % 16);
      c.d_model = c.heads * (1 + static_cast<int>(rng() % 64));
      c.layers = 1 + static_cast<int>(rng() % 48);
      c.d_ff = 1 + static_cast<int>(rng() % 6000);
      c.vocab = 1 + static_cast<int>(rng() % 60000);
      c.max_seq = 1 + static_cast<int>(rng() % 4096);
      c.norm_eps = std::ldexp(1.0 + (rng() % 1000) / 1000.0, -20);
      c.rope_theta = c.arch == "llama" ? 1000.0 + rng() % 100000 : 10000.0;
      c.tied = rng() % 2;
      CHECK(parse_hf_config(hf_config_json(c)) == c);
    }
  }
  SECTION("bad configs name the field") {
    require_error(
        [&] {
          hf_config_json(HfModelConfig{"bert", 1, 8, 2, 8, 8, 8});
        },
        {"'bert'", "llama, gpt2"});
    require_error(
        [&] {
          hf_config_json(HfModelConfig{"llama", 2, 10, 3, 8, 8, 8});
        },
        {"divisible"});
    auto j = nlohmann::json::parse(hf_config_json(llama).dump());
    j.erase("hidden_size");
    require_error([&] { parse_hf_config(j, "ckpt/config.json"); },
                  {"ckpt/config.json", "'hidden_size'"});
    j = nlohmann::json::parse(hf_config_json(llama).dump());
    j["num_key_value_heads"] = 4;
    require_error([&] { parse_hf_config(j); }, {"num_key_value_heads", "grouped-query"});
    j = nlohmann::json::parse(hf_config_json(llama).dump());
    j["model_type"] = "mistral";
    require_error([&] { parse_hf_config(j); }, {"'mistral'", "llama, gpt2"});
    j = nlohmann::json::parse(hf_config_json(gpt2).dump());
    j["n_layer"] = "twelve";
    require_error([&] { parse_hf_config(j); }, {"'n_layer'", "positive integer", "twelve"});
    std::ofstream(dir / "broken.json") << "{\"model_type\": ";
    require_error([&] { read_hf_config(dir / "broken.json"); }, {"broken.json", "valid JSON"});
  }
}
