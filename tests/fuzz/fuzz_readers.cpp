// libFuzzer target for fathom's readers of files a user hands it: token shards, safetensors files,
// config.json and trainer_state.json. Any input must either be read or be refused with
// fathom::Error; anything else (a crash, a sanitizer report, another exception such as a raw JSON
// library error, a runaway allocation) is a bug. One binary serves every reader, picked by the
// environment variable FATHOM_FUZZ_TARGET (shards, safetensors, config, trainer_state), so that
// CI compiles it once; scripts/fuzz.sh runs each over its seed corpus in tests/fuzz/corpus/.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "fathom/data/sampler.hpp"
#include "fathom/data/shards.hpp"
#include "fathom/train/checkpoint.hpp"
#include "fathom/train/hf_config.hpp"
#include "fathom/train/safetensors.hpp"

namespace {

enum class Target { shards, safetensors, config, trainer_state };
Target target = Target::shards;
bool verbose = false;
std::filesystem::path scratch;  // the input is written here: every reader takes a file

void write_scratch(const std::uint8_t* data, std::size_t size) {
  std::FILE* f = std::fopen(scratch.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

void read_shards() {
  fathom::data::Shard shard = fathom::data::read_shard(scratch);
  shard.validate(100000);
  fathom::data::ShardView view(scratch);
  view.validate(100000);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < view.size(); ++i) sum += view[i];
  if (sum == 1) std::fputs("", stderr);  // keeps the reads
}

void read_safetensors() {
  auto header = fathom::train::read_safetensors_header(scratch);
  auto file = fathom::train::read_safetensors(scratch);
  for (const auto& t : file.tensors) {
    if (t.dtype == "F32") (void)fathom::train::tensor_values<float>(t);
    if (!header.tensors.empty())
      (void)fathom::train::read_safetensors_tensor(scratch, header, t.name);
  }
  // A model config checked against the weights, as diagnose and resume do before allocating.
  fathom::nn::ModelConfig m;
  m.layers = 2;
  m.d_model = 16;
  m.heads = 2;
  m.d_ff = 32;
  m.vocab = 257;
  m.max_seq = 16;
  fathom::train::check_weights_fit_config(m, header, scratch.string());
}

void read_config() {
  const auto j = fathom::train::read_json(scratch);
  (void)fathom::train::parse_hf_config(j, scratch.string());
  const auto fields = fathom::train::hf_fathom_fields(j);
  if (fields.contains("model"))
    (void)fathom::train::model_config_from_json(fields["model"], scratch.string());
}

void read_trainer_state() {
  // What resuming reads of trainer_state.json, after check_trainer_state: the sampler's position
  // and the run's model.
  const auto j = fathom::train::read_json(scratch);
  fathom::train::check_trainer_state(j, scratch.string());
  if (auto s = j.find("sampler"); s != j.end()) (void)s->get<fathom::data::SamplerState>();
  if (auto run = j.find("run"); run != j.end() && run->is_object() && run->contains("model"))
    (void)fathom::train::model_config_from_json(run->at("model"), scratch.string());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  verbose = std::getenv("FATHOM_FUZZ_VERBOSE") != nullptr;
  const char* name = std::getenv("FATHOM_FUZZ_TARGET");
  const std::string_view t = name ? name : "";
  if (t == "shards")
    target = Target::shards;
  else if (t == "safetensors")
    target = Target::safetensors;
  else if (t == "config")
    target = Target::config;
  else if (t == "trainer_state")
    target = Target::trainer_state;
  else {
    std::fprintf(
        stderr,
        "fathom_fuzz: set FATHOM_FUZZ_TARGET to shards, safetensors, config or trainer_state\n");
    std::exit(2);
  }
  scratch = std::filesystem::temp_directory_path() /
            ("fathom-fuzz-" + std::string(t) + "-" + std::to_string(::getpid()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  write_scratch(data, size);
  try {
    switch (target) {
      case Target::shards:
        read_shards();
        break;
      case Target::safetensors:
        read_safetensors();
        break;
      case Target::config:
        read_config();
        break;
      case Target::trainer_state:
        read_trainer_state();
        break;
    }
  } catch (const fathom::Error& e) {
    // Refused with a message: what a bad file should get. FATHOM_FUZZ_VERBOSE=1 prints it.
    if (verbose) std::fprintf(stderr, "refused: %s\n", e.what());
    return 0;
  }
  if (verbose) std::fprintf(stderr, "accepted\n");
  return 0;
}
