// What fathom's programs share that costs no compile time: the option structs, the valid names of
// precisions and devices with errors that list them, device detection, and the entry points that
// each (precision, device) backend compiles once (backend.hpp, backend_*.cpp/.cu). Policy names
// live in the policy registry (policy_registry.hpp).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/nn/presets.hpp"
#include "fathom/train/options.hpp"
#include "policy_registry.hpp"

#if defined(FATHOM_PROGRAM_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace fathom::dist {
class Communicator;
}

namespace fathom::programs {

template <class Names>
std::string joined(const Names& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

inline void check_choice(const char* flag, const std::string& value,
                         std::initializer_list<std::string_view> valid) {
  for (auto v : valid)
    if (v == value) return;
  FATHOM_FAIL(flag << ": unknown value '" << value << "'; valid values: " << joined(valid));
}

// The message without the check's source location: programs print one clear line.
inline std::string user_message(const std::exception& e) {
  std::string m = e.what();
  auto at = m.find(" [check `");
  return at == std::string::npos ? m : m.substr(0, at);
}

inline bool cuda_built() {
#if defined(FATHOM_PROGRAM_CUDA)
  return true;
#else
  return false;
#endif
}

inline bool cuda_available() {
#if defined(FATHOM_PROGRAM_CUDA)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

// "auto" becomes cuda when this program was built with CUDA and a GPU is present, else cpu.
inline std::string resolve_device(const std::string& device) {
  check_choice("--device", device, {"auto", "cpu", "cuda"});
  if (device == "auto") return cuda_available() ? "cuda" : "cpu";
  if (device == "cuda") {
    FATHOM_CHECK(cuda_built(),
                 "--device cuda: this program was built without CUDA (configure with nvcc "
                 "available and FATHOM_ENABLE_CUDA=ON)");
    FATHOM_CHECK(cuda_available(), "--device cuda: no CUDA GPU is visible");
  }
  return device;
}

// fathom-train's options beyond TrainOptions, and those given as names or numbers that
// resolve_train_options() turns into TrainOptions' typed values.
struct TrainCli {
  train::TrainOptions train;
  std::string preset = "tiny";
  std::string device = "auto";
  std::string precision = "fp32";
  std::string fp8_scaling = "current";  // current | delayed (--precision fp8)
  int fp8_margin = -1;  // --fp8-scaling delayed: 2^margin of headroom (-1: nn::Fp8Recipe's)
  std::string gemm_autotune = "auto";  // auto (on with CUDA) | on | off: kernels::set_gemm_autotune
  std::string optimizer = "adamw";     // adamw | adam | sgd
  std::string schedule = "cosine";     // cosine | constant | wsd
  double weight_decay = 0.0;
  double min_lr_ratio = 0.1;
  std::int64_t warmup = -1;  // -1: 10% of the steps
  int layers = 0, d_model = 0, heads = 0, d_ff = 0, vocab = 0;
  double deepnorm_alpha = 0, deepnorm_beta = 0;
  bool post_ln_no_final_norm = false;
  std::string generate;  // checkpoint to sample from
  std::string prompt = "(3+";
  int sample_tokens = 200;
  double temperature = 0.8;
  int sample_after = 0;  // tokens to sample from the final model after training
  int nproc = 1;         // --nproc: ranks to start on this host (CPU: threads; CUDA: processes)
  int zero = 0;          // --zero: 1 shards the optimizer state over the ranks (ZeRO-1)
  double dist_timeout = 600;  // --dist-timeout: seconds a collective may wait before a fault
};

// The optimizer rule and schedule named by the command line, into c.train. Unknown names fail
// listing the valid ones.
inline void resolve_train_options(TrainCli& c) {
  check_choice("--optimizer", c.optimizer, {"adamw", "adam", "sgd"});
  check_choice("--schedule", c.schedule, {"cosine", "constant", "wsd"});
  if (c.optimizer == "sgd") {
    optim::Sgd r;
    r.momentum = 0.9;
    r.weight_decay = c.weight_decay;
    c.train.optimizer = r;
  } else {
    optim::AdamW r;
    r.weight_decay = c.weight_decay;
    r.decoupled = c.optimizer == "adamw";
    c.train.optimizer = r;
  }
  if (c.schedule == "constant")
    c.train.schedule = train::ConstantSchedule{};
  else if (c.schedule == "wsd")
    c.train.schedule = train::WsdSchedule{c.warmup, c.min_lr_ratio};
  else
    c.train.schedule = train::CosineSchedule{c.warmup, c.min_lr_ratio};
}

// The flag of fathom-train that sets TrainOptions member `option` ("seq_len" -> "--seq-len";
// optimizer and schedule settings come from several flags).
inline std::string train_flag(const std::string& option) {
  if (option == "optimizer") return "--optimizer/--weight-decay";
  if (option == "schedule") return "--schedule/--warmup/--min-lr-ratio";
  std::string flag = "--" + option;
  for (char& ch : flag)
    if (ch == '_') ch = '-';
  return flag;
}

// One line for a library error, naming fathom-train's flags where the library names an option.
inline std::string train_error_message(const std::exception& e) {
  if (const auto* er = dynamic_cast<const train::ExistingRun*>(&e)) {
    const std::string dir = er->folder().string();
    return "--out '" + dir + "' already holds a run (" + er->files() +
           "): continue it with --resume " + dir +
           ", replace it with --overwrite, or choose another --out";
  }
  if (const auto* oe = dynamic_cast<const train::OptionError*>(&e))
    return train_flag(oe->option()) + ": " + user_message(std::runtime_error(oe->reason()));
  std::string m = user_message(e);
  if (dynamic_cast<const train::NonFiniteLoss*>(&e))
    m += " (--skip-nonfinite skips such steps instead of stopping)";
  return m;
}

struct DiagnoseCli {
  std::string checkpoint;
  std::string data;  // shards; empty: the built-in corpus's validation split
  std::int64_t batches = 4, batch = 8, seq_len = 0;  // seq_len 0: min(max_seq, 256)
  std::string device = "auto";
  std::string out;
  bool no_removal = false, no_gradients = false;
  std::string logits_out;  // folder: compare_input.json + compare_logits.safetensors
                           // (scripts/hf_compare.py)
};

// One backend: a precision and a device, compiled in its own translation unit (backend_*.cpp/.cu)
// so that programs build in parallel and each model type is compiled once per backend.
template <class T, DeviceTag D>
struct Backend {
  // With `comm`: this rank's part of a data-parallel run (train::train_data_parallel).
  static int train(const TrainCli& c, const PolicyRegistry& policies,
                   dist::Communicator* comm = nullptr);
  static int generate(const TrainCli& c, const std::filesystem::path& ckpt,
                      const nlohmann::json& fields, const PolicyRegistry& policies);
  static int diagnose(const DiagnoseCli& c, const std::filesystem::path& ckpt,
                      const nlohmann::json& fields, const PolicyRegistry& policies);
  // Registers the built-in policies' models for this backend (builtin_policies() calls it).
  static void add_builtin_policies(PolicyRegistry& policies);
};

// --fp8-scaling: current or delayed (register_policy.hpp's fp8_recipe_of turns it into the
// models' nn::Fp8Recipe).
inline void check_fp8_scaling(const std::string& scaling) {
  check_choice("--fp8-scaling", scaling, {"current", "delayed"});
}

// --precision fp8 needs fp8 tensor cores: a CUDA GPU of compute capability 8.9 or later (Ada,
// Hopper and after). Fails with one line naming what is there instead.
inline void check_fp8_device(const std::string& device) {
  FATHOM_CHECK(
      device == "cuda",
      "--precision fp8: fp8 GEMMs run on CUDA GPUs of compute capability 8.9 or later (Ada, "
      "Hopper); --device "
          << device << " has none: use --precision bf16 or fp32 there");
#if defined(FATHOM_PROGRAM_CUDA)
  int id = 0, major = 0, minor = 0;
  cudaDeviceProp prop{};
  FATHOM_CHECK(
      cudaGetDevice(&id) == cudaSuccess &&
          cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, id) == cudaSuccess &&
          cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, id) == cudaSuccess &&
          cudaGetDeviceProperties(&prop, id) == cudaSuccess,
      "--precision fp8: cannot query the GPU's compute capability");
  FATHOM_CHECK(major > 8 || (major == 8 && minor >= 9),
               "--precision fp8: GPU " << id << " (" << prop.name << ") has compute capability "
                                       << major << "." << minor
                                       << "; fp8 GEMMs need 8.9 or later (Ada, Hopper): use "
                                          "--precision bf16");
#endif
}

// Calls fn.template operator()<T, D>() for the precision and device named; only backends compiled
// into this program are reachable. fp8 is the bf16 backend (its blocks' linear layers switched to
// fp8 GEMMs by the caller: nn::LinearPrecision::fp8).
template <class Fn>
int dispatch_backend(const std::string& precision, const std::string& device, Fn&& fn) {
  check_choice("--precision", precision, {"fp32", "bf16", "fp8"});
  if (precision == "fp8") check_fp8_device(device);
#if defined(FATHOM_PROGRAM_CUDA)
  if (device == "cuda") {
    if (precision == "bf16" || precision == "fp8") return fn.template operator()<bf16, Cuda>();
    return fn.template operator()<float, Cuda>();
  }
#endif
  FATHOM_CHECK(device == "cpu", "--device: '" << device << "' is not available in this build");
  if (precision == "bf16") return fn.template operator()<bf16, Cpu>();
  return fn.template operator()<float, Cpu>();
}

}  // namespace fathom::programs
