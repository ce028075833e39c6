// ModelConfig, presets and count_parameters: every preset's count equals the paper's, computed
// from the config without allocating; bad configs and unknown presets are rejected by name.
#include "fathom/nn/config.hpp"
#include "fathom/nn/presets.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "support/catch.hpp"
#include "support/errors.hpp"

using namespace fathom;
using fathom::test::error_of;

TEST_CASE("Preset parameter counts match the paper", "[nn]") {
  struct Row {
    const char* name;
    std::int64_t exact;
    double paper;  // as shared/paper.md prints it
    double unit;
  };
  // The exact counts, worked out by hand from the formulas (embedding + L * block + final norm +
  // untied head); the paper rounds them.
  for (auto r :
       {Row{"llama-71m", 70'578'688, 70.6, 1e6}, Row{"llama-130m", 134'105'856, 134.1, 1e6},
        Row{"llama-250m", 247'370'496, 247.4, 1e6}, Row{"llama-350m", 367'969'280, 368.0, 1e6},
        Row{"llama-1b", 1'339'082'752, 1.339, 1e9}, Row{"gpt2-124m", 124'439'808, 124.4, 1e6},
        Row{"gpt2-350m", 354'823'168, 354.8, 1e6}}) {
    INFO(r.name);
    auto c = nn::preset(r.name);
    CHECK(c.name == r.name);
    const std::int64_t n = nn::count_parameters(c);
    CHECK(n == r.exact);
    const double digits = r.unit == 1e9 ? 1000.0 : 10.0;
    CHECK(std::round(static_cast<double>(n) / r.unit * digits) / digits == r.paper);
  }
}

TEST_CASE("Presets: the paper's shapes", "[nn]") {
  auto c = nn::preset("llama-130m");
  CHECK(c.arch == nn::ArchKind::llama);
  CHECK(c.layers == 12);
  CHECK(c.d_model == 768);
  CHECK(c.d_ff == 2048);
  CHECK(c.heads == 12);
  CHECK(c.vocab == 32000);
  CHECK(c.norm_eps == 1e-6);
  CHECK_FALSE(c.tied);
  CHECK_FALSE(c.bias);
  auto g = nn::preset("gpt2-124m");
  CHECK(g.arch == nn::ArchKind::gpt2);
  CHECK(g.tied);
  CHECK(g.bias);
  CHECK(g.vocab == 50257);
  CHECK(g.max_seq == 1024);
  CHECK(g.norm_eps == 1e-5);
  for (auto name : nn::preset_names) CHECK_NOTHROW(nn::preset(name).validate());
}

TEST_CASE("count_parameters: policy-dependent norms, final norm and tying", "[nn]") {
  auto c = nn::preset("llama-130m");
  const std::int64_t base = nn::count_parameters(c);
  CHECK(nn::count_parameters(c, 2, true) - base == 12 * 2 * 768);  // SandwichLN's output norms
  CHECK(base - nn::count_parameters(c, 1, false) == 768);
  c.tied = true;
  CHECK(base - nn::count_parameters(c) == 32000 * 768);
  auto g = nn::preset("gpt2-124m");
  CHECK(nn::count_parameters(g, 2, true) - nn::count_parameters(g) ==
        12 * 2 * 2 * 768);  // weight + bias
}

TEST_CASE("Unknown presets and bad configs are rejected by name", "[nn]") {
  const std::string what = error_of([] { nn::preset("llama-7b"); });
  CHECK(what.find("llama-7b") != std::string::npos);
  CHECK(what.find("llama-130m") != std::string::npos);
  CHECK(what.find("gpt2-124m") != std::string::npos);
  auto c = nn::preset("tiny");
  c.heads = 5;
  CHECK(error_of([&] { c.validate(); }).find("heads = 5") != std::string::npos);
  c = nn::preset("tiny");
  c.heads = 32;  // head dim 2: fine
  CHECK_NOTHROW(c.validate());
  c.heads = 64;  // head dim 1: RoPE needs it even
  CHECK(error_of([&] { c.validate(); }).find("even head dimension") != std::string::npos);
  c = nn::preset("tiny");
  c.layers = 0;
  CHECK(error_of([&] { c.validate(); }).find("layers") != std::string::npos);
}

TEST_CASE("ModelConfig goes to JSON and back; an unknown arch is refused", "[nn]") {
  for (const char* name : {"llama-130m", "gpt2-124m"}) {
    INFO(name);
    const nn::ModelConfig c = nn::preset(name);
    const nlohmann::json j = c;
    const auto back = j.get<nn::ModelConfig>();
    CHECK(back.arch == c.arch);
    CHECK(back.layers == c.layers);
    CHECK(back.d_model == c.d_model);
    CHECK(back.heads == c.heads);
    CHECK(back.d_ff == c.d_ff);
    CHECK(back.vocab == c.vocab);
    CHECK(back.max_seq == c.max_seq);
    CHECK(back.norm_eps == c.norm_eps);
    CHECK(back.rope_theta == c.rope_theta);
    CHECK(back.tied == c.tied);
    CHECK(back.bias == c.bias);
    CHECK(back.name == c.name);
  }
  nlohmann::json j = nn::preset("llama-130m");
  j["arch"] = "mamba";
  const std::string e = error_of([&] { j.get<nn::ModelConfig>(); });
  CHECK(e.find("unknown architecture 'mamba'") != std::string::npos);
  CHECK(e.find("llama, gpt2") != std::string::npos);
  j = nn::preset("llama-130m");
  j.erase("d_ff");
  CHECK(error_of([&] { j.get<nn::ModelConfig>(); }).find("d_ff") != std::string::npos);
}
