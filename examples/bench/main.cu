// fathom-bench: training throughput on one GPU. For each workload and policy: the trainer's own
// optimizer step (train::TrainStep: forward, backward, global-norm clipping with the factor on the
// device, fused AdamW) on random tokens, timed with CUDA events after warm-up steps; tokens/s,
// ms/step, MFU and peak GPU memory. Also measures the card's bf16 GEMM rate, the MFU denominator.
// --gemm-autotune off,on times each row with the heuristic's GEMM algorithms, then autotuned ones.
// On several GPUs (--nproc N, or every rank of mpirun / torchrun): the data-parallel step (bucketed
// all-reduce during the backward, or ZeRO-1 with --zero 1) at the given batch per GPU, with
// tokens/s per GPU and in total, the scaling efficiency against rank 0 alone on one GPU measured
// first in the same run, and the peak memory of each GPU.
#include <CLI/CLI.hpp>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "fathom/dist/launch.hpp"
#include "fathom/train/data_parallel.hpp"
#include "fathom/train/step.hpp"
#include "fathom/kernels/cuda/fp8.cuh"
#include "launcher.hpp"
#include "programs.hpp"
#include "register_policy.hpp"
#if defined(FATHOM_HAS_NCCL)
#include "fathom/dist/nccl.hpp"
#endif

namespace fathom::programs {

struct BenchOptions {
  std::string workloads = "llama-130m,gpt2-124m";
  std::string policies = "pre-ln,lns";
  std::string precision = "bf16";
  std::string fp8_scaling = "current";
  int steps = 25, warmup = 8;
  std::int64_t batch = 0, seq_len = 0;  // 0: the workload's
  double peak_tflops = 0;               // 0: measure
  std::string json_out;
  bool cuda_graph = false;  // replay forward + backward + clipping as one CUDA graph
  // Zero the gradients in place after each step instead of releasing them
  // (TrainStep::keep_gradient_buffers; --cuda-graph implies it). Default from the environment:
  // FATHOM_BENCH_KEEP_GRADIENTS=1.
  bool keep_gradients = false;
  int nproc = 1;                       // ranks to start on this host (one a GPU)
  int zero = 0;                        // 1: ZeRO-1 (optimizer state sharded over the ranks)
  double bucket_mb = 50;               // gradient bucket size (MiB)
  int nccl_max_ctas = 0;               // 0: NCCL's choice
  std::string comm_priority = "high";  // the NCCL stream's priority: high or normal
  bool overlap = true;      // also time the step without collectives and the collectives alone
  bool trace_comm = false;  // print when each bucket's collective ran in one step (rank 0)
  // How linear layers get their bias gradients, each in turn (kernels::BiasGradRoute): fused,
  // dgelu (rows labelled +dgelu-bgrad) or separate (+colsum).
  std::string bias_grad = "fused";
  // Whether the GEMMs' cuBLASLt plans time the heuristic's first few algorithms and keep the
  // fastest (kernels::set_gemm_autotune, the library's default), each in turn: on, off (rows
  // labelled -autotune).
  std::string gemm_autotune = "on";
};

// A communicator that has the ranks of another and sends nothing: the data-parallel step timed
// with it is the step without its collectives (bucket copies and all), for the overlap figures.
#if defined(FATHOM_HAS_NCCL)
// Forwards to an NCCL communicator and, while on, records when each collective's input was ready
// (an event on fathom's stream before it is queued) and when it finished (an event on NCCL's
// stream after it): the timeline of one step's gradient reduction against its backward pass.
class TracingCommunicator final : public dist::Communicator {
 public:
  explicit TracingCommunicator(dist::NcclCommunicator& real) : real_(real) {}
  ~TracingCommunicator() override { clear(); }
  int rank() const override { return real_.rank(); }
  int world_size() const override { return real_.world_size(); }
  std::string_view backend() const override { return real_.backend(); }
  void all_reduce(const void* s, void* r, std::size_t n, dist::DataType t,
                  dist::ReduceOp op) override {
    traced("all_reduce", n * dist::size_of(t), [&] { real_.all_reduce(s, r, n, t, op); });
  }
  void reduce_scatter(const void* s, void* r, std::size_t n, dist::DataType t,
                      dist::ReduceOp op) override {
    traced("reduce_scatter", n * dist::size_of(t) * static_cast<std::size_t>(world_size()),
           [&] { real_.reduce_scatter(s, r, n, t, op); });
  }
  void all_gather(const void* s, void* r, std::size_t n, dist::DataType t) override {
    traced("all_gather", n * dist::size_of(t) * static_cast<std::size_t>(world_size()),
           [&] { real_.all_gather(s, r, n, t); });
  }
  void broadcast(void* b, std::size_t n, dist::DataType t, int root) override {
    real_.broadcast(b, n, t, root);
  }
  void barrier() override { real_.barrier(); }
  void wait() override { real_.wait(); }
  void synchronize() override { real_.synchronize(); }

  // Traces the collectives queued by `step` and prints them (times in ms from the step's start).
  template <class Step>
  void trace(Step&& step) {
    clear();
    cudaEvent_t start = event(), end = event();
    cudaEventRecord(start, cuda::stream());
    on_ = true;
    const std::int64_t waited0 = real_.waited_to_queue();
    const auto host0 = std::chrono::steady_clock::now();
    step();
    const double host_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host0).count();
    on_ = false;
    cudaEventRecord(end, cuda::stream());
    cudaEventSynchronize(end);
    if (rank() != 0) {
      cudaEventDestroy(start);
      cudaEventDestroy(end);
      clear();
      return;
    }
    auto since = [&](cudaEvent_t e) {
      float ms = 0;
      cudaEventElapsedTime(&ms, start, e);
      return ms;
    };
    std::printf(
        "  collectives of one step on rank %d (ms from the step's start; a collective "
        "starts when its input is ready and the one before it is done):\n"
        "  %-3s %-14s %8s %8s %8s %8s %9s\n",
        rank(), "#", "collective", "MiB", "ready", "done", "took", "GB/s");
    double previous_done = 0;
    for (std::size_t i = 0; i < marks_.size(); ++i) {
      const auto& m = marks_[i];
      const double ready = since(m.ready), done = since(m.done);
      const double took = done - std::max(ready, previous_done);
      previous_done = done;
      std::printf("  %-3zu %-14s %8.1f %8.2f %8.2f %8.2f %9.0f\n", i, m.what,
                  static_cast<double>(m.bytes) / 1048576.0, ready, done, took,
                  took > 0 ? static_cast<double>(m.bytes) / (took * 1e6) : 0.0);
    }
    std::printf(
        "  step ends at %.2f ms; the host queued it in %.2f ms, waiting on NCCL for %lld of "
        "its %zu collectives\n",
        since(end), host_ms, static_cast<long long>(real_.waited_to_queue() - waited0),
        marks_.size());
    cudaEventDestroy(start);
    cudaEventDestroy(end);
    clear();
  }

 private:
  struct Mark {
    const char* what;
    std::size_t bytes;
    cudaEvent_t ready, done;
  };
  static cudaEvent_t event() {
    cudaEvent_t e = nullptr;
    FATHOM_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  template <class Call>
  void traced(const char* what, std::size_t bytes, Call&& call) {
    if (!on_) return call();
    Mark m{what, bytes, event(), event()};
    cudaEventRecord(m.ready, cuda::stream());
    call();
    cudaEventRecord(m.done, real_.stream());
    marks_.push_back(m);
  }
  void clear() {
    for (auto& m : marks_) {
      cudaEventDestroy(m.ready);
      cudaEventDestroy(m.done);
    }
    marks_.clear();
  }
  dist::NcclCommunicator& real_;
  bool on_ = false;
  std::vector<Mark> marks_;
};
#endif

class SilentCommunicator final : public dist::Communicator {
 public:
  explicit SilentCommunicator(const dist::Communicator& real) : real_(real) {}
  int rank() const override { return real_.rank(); }
  int world_size() const override { return real_.world_size(); }
  std::string_view backend() const override { return "silent"; }
  void all_reduce(const void*, void*, std::size_t, dist::DataType, dist::ReduceOp) override {}
  void reduce_scatter(const void*, void*, std::size_t, dist::DataType, dist::ReduceOp) override {}
  void all_gather(const void*, void*, std::size_t, dist::DataType) override {}
  void broadcast(void*, std::size_t, dist::DataType, int) override {}
  void barrier() override {}
  void wait() override {}
  void synchronize() override {}

 private:
  const dist::Communicator& real_;
};

// The precision as results name it: fp8 with delayed scaling is "fp8-delayed".
inline std::string precision_label(const BenchOptions& o) {
  return o.precision == "fp8" && o.fp8_scaling == "delayed" ? "fp8-delayed" : o.precision;
}

struct Workload {
  std::string preset;
  std::int64_t batch, seq_len;
  int vocab = 0;  // 0: the preset's
};

// The shapes of bench/torch_baseline.py: llama-130m and llama-350m as the paper trains them (peak
// memory ~33 GiB for llama-350m in bf16; --batch for smaller cards); gpt2-124m with the
// vocabulary padded to 50304 (a multiple of 64), as GPT-2 trainers do for speed: rows of 50257
// bf16 logits are not 16-byte aligned, which pushes cuBLASLt onto slow kernels.
inline Workload workload_of(const std::string& name) {
  if (name == "llama-130m" || name == "llama-350m") return {name, 128, 256, 0};
  if (name == "gpt2-124m") return {name, 32, 1024, 50304};
  nn::preset(name);  // fails listing the presets for an unknown name
  return {name, 8, 256, 0};
}

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Achieved TFLOP/s of an 8192^3 bf16 GEMM (fp32 accumulation) through fathom's cuBLASLt path.
inline double measure_gemm_tflops() {
  const std::int64_t n = 8192;
  auto a = Tensor<bf16, Cuda>::randn(Shape{n, n}, 1), b = Tensor<bf16, Cuda>::randn(Shape{n, n}, 2);
  Tensor<bf16, Cuda> c(Shape{n, n});
  kernels::GemmParams<bf16> p;
  p.a = a.data();
  p.b = b.data();
  p.c = c.data();
  p.m = p.n = p.k = n;
  const double ms = cuda::EventTimer().ms([&] { kernels::gemm(Cuda{}, p); }, 3, 10);
  return 2.0 * n * n * n / (ms * 1e-3) / 1e12;
}

struct BenchResult {
  std::string workload, policy;
  double tokens_per_s, ms_per_step, mfu, peak_gib, params_m, flops_per_token;
  double host_ms;      // host time to enqueue one step onto an idle GPU
  double comm_ms = 0;  // data parallel: the step's gradient collectives alone, back to back
  // The last timed step's loss (the same seed, data and steps every run: two builds that should
  // compute the same bits print the same value; bench/ab.sh compares them).
  double loss_last = 0;
  // With GEMM autotuning on: what it did for the plans this run made (plans are kept for the
  // process, so a later run with the same GEMM shapes makes none).
  bool gemm_autotune = false;
  kernels::GemmAutotuneStats autotuned;
};

template <class T>
BenchResult bench_one(const Workload& w, const std::string& policy, const BenchOptions& o,
                      double peak_tflops, const PolicyRegistry& policies,
                      dist::Communicator* comm = nullptr) {
  using D = Cuda;
  const kernels::GemmAutotuneStats autotune_before = kernels::gemm_autotune_stats();
  nn::ModelConfig cfg = nn::preset(w.preset);
  const std::int64_t B = o.batch ? o.batch : w.batch, Tn = o.seq_len ? o.seq_len : w.seq_len;
  if (Tn > cfg.max_seq) cfg.max_seq = static_cast<int>(Tn);
  if (w.vocab > 0) cfg.vocab = w.vocab;
  auto model = policies.make_model<T, D>(cfg, policy, nlohmann::json::object());
  if (o.precision == "fp8")
    model->set_linear_precision(nn::LinearPrecision::fp8, fp8_recipe_of(o.fp8_scaling));
  model->init(0);
  // The trainer's step: AdamW without weight decay, clipping at 1.0 with the factor computed and
  // read on the device, so the step never waits for the host (PyTorch's clip_grad_norm_ does not
  // either).
  // With `comm`: this rank's data-parallel step (its own batch of B rows).
  std::optional<train::DataParallel<T, D>> parallel;
  std::unique_ptr<train::ParameterUpdate<T, D>> update;
#if defined(FATHOM_HAS_NCCL)
  // Every rank traces (the traced step is one more step, and every rank must take it); rank 0
  // prints.
  std::optional<TracingCommunicator> tracer;
  if (comm && o.trace_comm)
    if (auto* nccl = dynamic_cast<dist::NcclCommunicator*>(comm)) comm = &tracer.emplace(*nccl);
#endif
  if (comm) {
    parallel.emplace(*comm, train::DataParallelOptions{
                                .zero = o.zero,
                                .bucket_bytes = static_cast<std::size_t>(o.bucket_mb * 1048576)});
    train::TrainOptions topts;
    topts.optimizer = train::default_rule();
    topts.clip = 1.0;
    update = parallel->hooks().make_update(model->parameters(), topts);
    // Delayed fp8 scaling: the ranks' amax histories reduced (max) after each step, as in training.
    if (const auto histories = model->fp8_histories(); !histories.empty())
      parallel->share_fp8_histories(histories);
  } else {
    update = train::make_local_update<T, D>(model->parameters(), train::default_rule(), 1.0);
  }
  train::TrainStep<T, D> train_step(*model, *update, 1, parallel ? &*parallel : nullptr,
                                    o.warmup + o.steps + 2);
  // The graph writes the gradients where the capture found them: they must keep their addresses.
  train_step.keep_gradient_buffers(o.keep_gradients || o.cuda_graph);

  std::vector<std::int32_t> host(static_cast<std::size_t>(B * Tn));
  for (std::size_t i = 0; i < host.size(); ++i)
    host[i] = static_cast<std::int32_t>(rng::uniform(7, i) * cfg.vocab) % cfg.vocab;
  auto x = Tensor<std::int32_t, D>::from_vector(Shape{B, Tn}, host);
  auto y = x.reshape({B, Tn}).clone();

  // --cuda-graph: forward and backward captured once (after the warm-up, so every buffer comes
  // from the caching allocator's cache and every GEMM plan exists) and replayed; the update
  // (clipping, optimizer step) and zero_grad are launched as usual, so the step count and learning
  // rate stay live. Inputs, parameters and gradients keep their addresses between steps; nothing
  // else allocates while the loop runs.
  cudaGraphExec_t graph_exec = nullptr;
  auto step = [&] {
    if (graph_exec)
      train_step.accumulate_replayed(
          [&] { FATHOM_CUDA_CHECK(cudaGraphLaunch(graph_exec, cuda::stream())); });
    else
      train_step.accumulate(x, y);
    train_step.update(1e-4);
  };
  for (int i = 0; i < o.warmup; ++i) step();
  train_step.take_losses();  // one host read, outside the timed steps
  cuda::synchronize();
  if (o.cuda_graph) {
    cudaGraph_t graph = nullptr;
    FATHOM_CUDA_CHECK(cudaStreamBeginCapture(cuda::stream(), cudaStreamCaptureModeThreadLocal));
    train_step.accumulate(x, y);
    FATHOM_CUDA_CHECK(cudaStreamEndCapture(cuda::stream(), &graph));
    FATHOM_CUDA_CHECK(cudaGraphInstantiate(&graph_exec, graph, 0));
    FATHOM_CUDA_CHECK(cudaGraphDestroy(graph));
    train_step.discard();  // capturing ran nothing; the gradients of the last warm-up step are gone
    train_step.take_losses();  // nor did it compute a loss
    step();
    cuda::synchronize();
  }
  // Host time to enqueue one whole step onto an idle GPU (no waiting for a full launch queue).
  const auto host0 = std::chrono::steady_clock::now();
  step();
  const double host_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host0).count();
  cuda::synchronize();
  cuda::CachingAllocator::instance().reset_peak();
  // One steady-state step: its memory peak, and (as NVTX range "profile_step") the step that
  // bench/kernel_profile.sh hands to the profiler.
  nvtxRangePushA("profile_step");
  step();
  nvtxRangePop();
#if defined(FATHOM_HAS_NCCL)
  if (tracer) {
    // In the steady state: the traced step is queued behind others, as in training.
    for (int i = 0; i < 3; ++i) step();
    tracer->trace(step);
    std::fflush(stdout);
  }
#endif
  cuda::synchronize();
  const double peak_bytes =
      static_cast<double>(cuda::CachingAllocator::instance().stats().peak_bytes_in_use);
  const auto mallocs_before = cuda::CachingAllocator::instance().stats().cuda_mallocs;

  const auto lt_before = kernels::detail::lt_gemm_fp8_runs(),
             tiled_before = kernels::detail::tiled_gemm_fp8_runs();
  const auto fused_before = kernels::detail::fused_bias_grad_runs(),
             unfused_before = kernels::detail::unfused_bias_grad_runs();
  cuda::EventTimer timer;
  const double ms_per_step = timer.ms(step, 0, o.steps);
  // The gradient collectives of one step with nothing else running (the silent communicator's
  // are free): what the backward pass would have to hide.
  double comm_ms = 0;
  if (parallel && comm->backend() != "silent")
    comm_ms = timer.ms([&] { parallel->reducer().launch_all(); }, 1, 10);
  const auto mallocs_after = cuda::CachingAllocator::instance().stats().cuda_mallocs;
  const auto tiled = kernels::detail::tiled_gemm_fp8_runs() - tiled_before,
             lt = kernels::detail::lt_gemm_fp8_runs() - lt_before;
  if (tiled > 0)
    std::fprintf(stderr,
                 "note: %llu of the %llu fp8 GEMMs of the timed steps ran on the tiled kernel "
                 "(cuBLASLt declined them): these are not tensor-core fp8 speeds\n",
                 static_cast<unsigned long long>(tiled),
                 static_cast<unsigned long long>(tiled + lt));
  if (const auto unfused = kernels::detail::unfused_bias_grad_runs() - unfused_before; unfused > 0)
    std::fprintf(stderr,
                 "note: %llu of the %llu bias gradients of the timed steps fell back to the "
                 "separate column sum (cuBLASLt declined the fused epilogue)\n",
                 static_cast<unsigned long long>(unfused),
                 static_cast<unsigned long long>(unfused + kernels::detail::fused_bias_grad_runs() -
                                                 fused_before));
  if (mallocs_after != mallocs_before)
    std::fprintf(stderr, "note: %zu cudaMalloc calls during timed steps\n",
                 mallocs_after - mallocs_before);

  // FLOPs a token: 6N + 6 L d T, N the parameters without the input embedding (the LM head counts,
  // a tied head once as the embedding matrix it is).
  const auto& c = model->config();
  double n_params = static_cast<double>(nn::count_elements(model->parameters()));
  double n_no_embed = n_params - static_cast<double>(c.vocab) * c.d_model;
  if (c.tied) n_no_embed += static_cast<double>(c.vocab) * c.d_model;
  if (c.arch == nn::ArchKind::gpt2) n_no_embed -= static_cast<double>(c.max_seq) * c.d_model;
  const double flops_per_token =
      6.0 * n_no_embed + 6.0 * c.layers * c.d_model * static_cast<double>(Tn);
  BenchResult r;
  r.workload = w.preset;
  const auto route = kernels::bias_grad_route();
  r.policy = policy +
             (route == kernels::BiasGradRoute::dgelu      ? "+dgelu-bgrad"
              : route == kernels::BiasGradRoute::separate ? "+colsum"
                                                          : "") +
             (kernels::gemm_autotune() ? "" : "-autotune");
  r.gemm_autotune = kernels::gemm_autotune();
  r.autotuned = kernels::gemm_autotune_stats() - autotune_before;
  r.ms_per_step = ms_per_step;
  r.tokens_per_s = static_cast<double>(B * Tn) / (r.ms_per_step * 1e-3);
  r.mfu = r.tokens_per_s * flops_per_token / (peak_tflops * 1e12);
  r.peak_gib = peak_bytes / (1024.0 * 1024.0 * 1024.0);
  r.params_m = n_params / 1e6;
  r.flops_per_token = flops_per_token;
  r.host_ms = host_ms;
  r.comm_ms = comm_ms;
  if (const auto losses = train_step.take_losses(); !losses.empty()) r.loss_last = losses.back();
  if (graph_exec) FATHOM_CUDA_CHECK(cudaGraphExecDestroy(graph_exec));
  return r;
}

// After a row run with GEMM autotuning on: what it did for the plans that row made.
inline void print_autotuned(const BenchResult& r) {
  if (!r.gemm_autotune) return;
  std::printf(
      "  gemm autotune: %llu new plans timed, %llu of them kept another algorithm than the "
      "heuristic's first; %llu new plans not timed; %llu candidates set aside (other bits)\n",
      static_cast<unsigned long long>(r.autotuned.plans_timed),
      static_cast<unsigned long long>(r.autotuned.algorithms_changed),
      static_cast<unsigned long long>(r.autotuned.plans_untimed),
      static_cast<unsigned long long>(r.autotuned.algorithms_rejected));
}

// One row of a data-parallel run, printed by rank 0: rank 0 alone on one GPU, then all ranks.
struct ScalingRow {
  BenchResult single;
  std::vector<double> tokens_per_s, peak_gib;  // per rank
};

inline int main(int argc, char** argv) {
  BenchOptions o;
  PolicyRegistry policies;
  add_builtin_policies<bf16, Cuda>(policies);
  add_builtin_policies<float, Cuda>(policies);
  CLI::App app{"fathom-bench: training throughput (tokens/s, MFU, peak memory) on one GPU"};
  app.option_defaults()->always_capture_default();
  app.add_option("--workloads", o.workloads,
                 "comma-separated: llama-130m and llama-350m (seq 256, batch 128), gpt2-124m "
                 "(seq 1024, batch 32), or any preset (seq 256, batch 8)");
  app.add_option("--policies", o.policies, "comma-separated policies: " + policies.joined_names());
  app.add_option("--precision", o.precision,
                 "bf16, fp32, or fp8 (bf16 with the blocks' linear-layer GEMMs in fp8: E4M3 "
                 "forward, E5M2 gradients, per-tensor scaling as --fp8-scaling says; compute "
                 "capability 8.9+; MFU still against the bf16 GEMM rate)");
  app.add_option("--fp8-scaling", o.fp8_scaling,
                 "with --precision fp8: current (each tensor by its own amax) or delayed (by the "
                 "amax history of its last 16 steps)");
  app.add_option("--steps", o.steps, "timed steps");
  app.add_option("--warmup", o.warmup, "untimed steps first");
  app.add_option("--batch", o.batch, "override the workload's batch");
  app.add_option("--seq-len", o.seq_len, "override the workload's sequence length");
  app.add_option("--peak-tflops", o.peak_tflops,
                 "MFU denominator (0: measure an 8192^3 bf16 GEMM)");
  app.add_option("--json-out", o.json_out, "append one JSON line per result to this file");
  app.add_option(
      "--nproc", o.nproc,
      "GPUs of this host to run on (one process each); also runs under mpirun or torchrun");
  app.add_option("--zero", o.zero, "with several GPUs: 1 shards the optimizer state (ZeRO-1)");
  app.add_option("--bucket-mb", o.bucket_mb,
                 "with several GPUs: gradient bucket size in MiB (each bucket's all-reduce starts "
                 "as soon as its gradients are final)");
  app.add_option("--nccl-max-ctas", o.nccl_max_ctas,
                 "with several GPUs: most SMs (CTAs) an NCCL collective takes (0: NCCL's choice)");
  app.add_option("--comm-priority", o.comm_priority,
                 "with several GPUs: the NCCL stream's priority, high or normal");
  app.add_flag("--trace-comm", o.trace_comm,
               "with several GPUs: print when each gradient collective of one step ran");
  app.add_flag("!--no-overlap", o.overlap,
               "with several GPUs: skip timing the step without collectives and the collectives "
               "alone (the overlap columns)");
  app.add_flag(
      "--cuda-graph", o.cuda_graph,
      "replay forward, backward and clipping as one captured CUDA graph (the optimizer step "
      "runs as usual)");
  if (const char* v = std::getenv("FATHOM_BENCH_KEEP_GRADIENTS"); v && std::strcmp(v, "1") == 0)
    o.keep_gradients = true;
  app.add_flag("--keep-gradients", o.keep_gradients,
               "zero the gradients in place after each step instead of releasing them (the "
               "behaviour before released gradients, for comparisons; --cuda-graph implies it; "
               "default from FATHOM_BENCH_KEEP_GRADIENTS=1)");
  app.add_option("--bias-grad", o.bias_grad,
                 "comma-separated, each run in turn: fused (linear layers' bias gradients in the "
                 "weight-gradient GEMM's epilogue and in the dGELU pass), dgelu (only GPT-2's "
                 "c_fc's, in the dGELU pass; rows labelled +dgelu-bgrad) or separate (a column sum "
                 "over dY of its own; +colsum). With the DGELU epilogue (the default, "
                 "FATHOM_DGELU_EPILOGUE=0 turns it off) c_fc's is a column sum over its result on "
                 "every route");
  app.add_option("--gemm-autotune", o.gemm_autotune,
                 "comma-separated, each run in turn: on (the default: each GEMM's cuBLASLt "
                 "algorithm the fastest of the heuristic's first 8 that give the first's bits, "
                 "timed when a GEMM shape is first used) or off (the heuristic's first; rows "
                 "labelled -autotune). "
                 "GEMM plans last for the process: a later row with the same shapes reuses them");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "fathom-bench: error: %s\n", e.what());
    return e.get_exit_code();
  }
  int rank = -1;
  try {
    check_choice("--precision", o.precision, {"bf16", "fp32", "fp8"});
    check_fp8_scaling(o.fp8_scaling);
    if (o.precision == "fp8") check_fp8_device("cuda");
    for (const auto& p : split_list(o.policies)) policies.check(p);
    FATHOM_CHECK(!split_list(o.bias_grad).empty(),
                 "--bias-grad: expected fused, dgelu or separate (or several, comma-separated), "
                 "got nothing");
    for (const auto& b : split_list(o.bias_grad))
      check_choice("--bias-grad", b, {"fused", "dgelu", "separate"});
    FATHOM_CHECK(!split_list(o.gemm_autotune).empty(),
                 "--gemm-autotune: expected off or on (or both, comma-separated), got nothing");
    for (const auto& a : split_list(o.gemm_autotune))
      check_choice("--gemm-autotune", a, {"off", "on"});
    FATHOM_CHECK(o.steps >= 1, "--steps: expected 1 or more timed steps, got " << o.steps);
    FATHOM_CHECK(o.warmup >= 0, "--warmup: expected 0 or more, got " << o.warmup);
    FATHOM_CHECK(o.batch >= 0,
                 "--batch: expected a positive batch (0: the workload's), got " << o.batch);
    FATHOM_CHECK(o.seq_len >= 0,
                 "--seq-len: expected a positive length (0: the workload's), got " << o.seq_len);
    FATHOM_CHECK(o.nproc >= 1, "--nproc: expected 1 or more ranks, got " << o.nproc);
    FATHOM_CHECK(o.peak_tflops >= 0,
                 "--peak-tflops: expected a positive rate (0: measure), got " << o.peak_tflops);
    FATHOM_CHECK(!o.cuda_graph || o.warmup >= 1,
                 "--cuda-graph: needs --warmup 1 or more (the capture runs on the buffers and "
                 "GEMM plans the warm-up steps made)");
    FATHOM_CHECK(o.zero == 0 || o.zero == 1, "--zero: expected 0 or 1, got " << o.zero);
    FATHOM_CHECK(o.bucket_mb > 0, "--bucket-mb: expected a positive size, got " << o.bucket_mb);
    FATHOM_CHECK(o.nccl_max_ctas >= 0,
                 "--nccl-max-ctas: expected 0 (NCCL's choice) or more, got " << o.nccl_max_ctas);
    check_choice("--comm-priority", o.comm_priority, {"high", "normal"});
    const auto env = dist::LaunchEnv::from_environment();
    if (o.nproc > 1 && !env.distributed()) {
      FATHOM_CHECK(!o.cuda_graph,
                   "--cuda-graph: one GPU only (the data-parallel step is not captured)");
      return launch_local_ranks(without_nproc(argc, argv), o.nproc).status;
    }
    std::unique_ptr<dist::Communicator> comm;
    if (env.distributed()) {
      FATHOM_CHECK(!o.cuda_graph,
                   "--cuda-graph: one GPU only (the data-parallel step is not captured)");
      rank = env.rank;
#if defined(FATHOM_HAS_NCCL)
      dist::NcclOptions nccl;
      nccl.max_ctas = o.nccl_max_ctas;
      nccl.high_priority = o.comm_priority == "high";
      comm = std::make_unique<dist::NcclCommunicator>(env, nccl);  // selects GPU LOCAL_RANK first
#else
      FATHOM_FAIL("this fathom-bench was built without NCCL (several GPUs need it: set NCCL_HOME)");
#endif
    }
    resolve_device("cuda");
    const bool root = !comm || comm->rank() == 0;
    cudaDeviceProp prop{};
    int device = 0;
    cudaGetDevice(&device);
    cudaGetDeviceProperties(&prop, device);
    const double peak = o.peak_tflops > 0 ? o.peak_tflops : root ? measure_gemm_tflops() : 1.0;
    if (root) {
      // Where the loss's gradient is computed (FATHOM_FUSED_CROSS_ENTROPY, FATHOM_CE_SHARED_ROW),
      // so that an A/B log says which form each side ran.
      const char* cross_entropy = !fathom::autograd::fused_cross_entropy()
                                      ? "gradient in the backward"
                                  : fathom::kernels::cross_entropy_shared_row()
                                      ? "gradient in the forward, row kept in shared memory"
                                      : "gradient in the forward, row reread";
      std::printf(
          "fathom-bench on %s: bf16 GEMM peak %.0f TFLOP/s (%s); attention kernels: %s; "
          "cross-entropy: %s\n",
          prop.name, peak, o.peak_tflops > 0 ? "given" : "measured, 8192^3",
          fathom::kernels::attention_family(fathom::Cuda{}), cross_entropy);
      if (comm)
        std::printf(
            "%d GPUs (%s, NCCL%s, buckets %g MiB, max CTAs %s, %s-priority stream), batch per "
            "GPU as given\n"
            "efficiency: total tokens/s over %d x rank 0 alone; comm: the step's gradient "
            "collectives alone;\nexposed: step time minus the same step without collectives; "
            "overlap: 1 - exposed / comm\n"
            "%-12s %-12s %9s %11s %11s %11s %7s %8s %8s %8s %7s %9s %9s\n",
            comm->world_size(), env.launcher.c_str(), o.zero ? ", ZeRO-1" : "", o.bucket_mb,
            o.nccl_max_ctas ? std::to_string(o.nccl_max_ctas).c_str() : "NCCL's",
            o.comm_priority.c_str(), comm->world_size(), "workload", "policy", "params",
            "1 GPU tok/s", "tok/s/GPU", "total", "effic.", "step ms", "comm ms", "exposed",
            "overlap", "1 GPU GiB", "GiB/GPU");
      else
        std::printf("%-12s %-12s %9s %11s %9s %7s %9s %8s\n", "workload", "policy", "params",
                    "tokens/s", "ms/step", "MFU", "peak GiB", "host ms");
    }
    std::fflush(stdout);
    std::ofstream json;
    if (!o.json_out.empty()) json.open(o.json_out, std::ios::app);
    // Each workload's rows: every policy with each bias-gradient route in turn, for each GEMM
    // autotuning setting in turn.
    struct RowSetting {
      bool autotune;
      std::string route, policy;
    };
    std::vector<RowSetting> row_settings;
    for (const auto& a : split_list(o.gemm_autotune))
      for (const auto& b : split_list(o.bias_grad))
        for (const auto& p : split_list(o.policies)) row_settings.push_back({a == "on", b, p});
    for (const auto& wname : split_list(o.workloads)) {
      Workload w = workload_of(wname);
      for (const auto& setting : row_settings) {
        const std::string& policy = setting.policy;
        const std::string& route = setting.route;
        kernels::set_gemm_autotune(setting.autotune);
        kernels::set_bias_grad_route(route == "fused"   ? kernels::BiasGradRoute::fused
                                     : route == "dgelu" ? kernels::BiasGradRoute::dgelu
                                                        : kernels::BiasGradRoute::separate);
        auto run = [&](dist::Communicator* c) {
          return o.precision == "fp32" ? bench_one<float>(w, policy, o, peak, policies, c)
                                       : bench_one<bf16>(w, policy, o, peak, policies, c);
        };
        if (comm) {
          // Rank 0 alone first (the others wait), then every rank together.
          ScalingRow row;
          if (root) row.single = run(nullptr);
          cuda::CachingAllocator::instance().release_cached();
          comm->barrier();
          const BenchResult mine = run(comm.get());
          // The same step with its collectives left out, on every rank at once.
          double silent_ms = 0;
          if (o.overlap) {
            cuda::CachingAllocator::instance().release_cached();
            comm->barrier();
            SilentCommunicator silent(*comm);
            silent_ms = run(&silent).ms_per_step;
            comm->barrier();
          }
          auto mine_t = Tensor<double, Cuda>::from_vector(
              Shape{4}, {mine.tokens_per_s, mine.peak_gib, mine.ms_per_step, silent_ms});
          Tensor<double, Cuda> all(Shape{4 * comm->world_size()});
          dist::all_gather(*comm, mine_t, all);
          comm->synchronize();
          const auto v = all.to_vector();
          double step_ms = 0, no_comm_ms = 0;  // the slowest rank's
          for (int r = 0; r < comm->world_size(); ++r) {
            row.tokens_per_s.push_back(v[static_cast<std::size_t>(4 * r)]);
            row.peak_gib.push_back(v[static_cast<std::size_t>(4 * r + 1)]);
            step_ms = std::max(step_ms, v[static_cast<std::size_t>(4 * r + 2)]);
            no_comm_ms = std::max(no_comm_ms, v[static_cast<std::size_t>(4 * r + 3)]);
          }
          cuda::CachingAllocator::instance().release_cached();
          if (!root) continue;
          double total = 0, peak_gib = 0;
          for (double t : row.tokens_per_s) total += t;
          for (double g : row.peak_gib) peak_gib = std::max(peak_gib, g);
          const int n = comm->world_size();
          const double efficiency = total / (n * row.single.tokens_per_s);
          const double exposed_ms = step_ms - no_comm_ms;
          const double overlap = mine.comm_ms > 0 ? 1.0 - exposed_ms / mine.comm_ms : 0.0;
          char comm_col[16] = "-", exposed_col[16] = "-", overlap_col[16] = "-";
          if (o.overlap) {
            std::snprintf(comm_col, sizeof comm_col, "%.2f", mine.comm_ms);
            std::snprintf(exposed_col, sizeof exposed_col, "%.2f", exposed_ms);
            std::snprintf(overlap_col, sizeof overlap_col, "%.0f%%", 100 * overlap);
          }
          std::printf(
              "%-12s %-12s %8.1fM %11.0f %11.0f %11.0f %6.1f%% %8.2f %8s %8s %7s %9.2f %9.2f\n",
              mine.workload.c_str(), mine.policy.c_str(), mine.params_m, row.single.tokens_per_s,
              total / n, total, 100 * efficiency, step_ms, comm_col, exposed_col, overlap_col,
              row.single.peak_gib, peak_gib);
          print_autotuned(row.single);  // rank 0 alone made the plans that the others reuse
          std::fflush(stdout);
          if (json.is_open())
            json << nlohmann::json{{"impl", "fathom"},
                                   {"workload", mine.workload},
                                   {"policy", mine.policy},
                                   {"precision", precision_label(o)},
                                   {"gpus", n},
                                   {"zero", o.zero},
                                   {"batch_per_gpu", o.batch ? o.batch : w.batch},
                                   {"tokens_per_s_one_gpu", row.single.tokens_per_s},
                                   {"tokens_per_s_per_gpu", row.tokens_per_s},
                                   {"tokens_per_s_total", total},
                                   {"scaling_efficiency", efficiency},
                                   {"bucket_mb", o.bucket_mb},
                                   {"nccl_max_ctas", o.nccl_max_ctas},
                                   {"comm_priority", o.comm_priority},
                                   {"step_ms", step_ms},
                                   {"one_gpu_step_ms", row.single.ms_per_step},
                                   {"comm_ms", o.overlap ? nlohmann::json(mine.comm_ms) : nullptr},
                                   {"no_comm_step_ms",
                                    o.overlap ? nlohmann::json(no_comm_ms) : nullptr},
                                   {"peak_gib_one_gpu", row.single.peak_gib},
                                   {"peak_gib_per_gpu", row.peak_gib},
                                   {"gemm_autotune", mine.gemm_autotune},
                                   {"device", prop.name}}
                        .dump()
                 << "\n";
          continue;
        }
        BenchResult r = run(nullptr);
        const std::string label = r.policy + (o.cuda_graph ? "+graph" : "");
        std::printf("%-12s %-12s %8.1fM %11.0f %9.2f %6.1f%% %9.2f %8.2f\n", r.workload.c_str(),
                    label.c_str(), r.params_m, r.tokens_per_s, r.ms_per_step, 100 * r.mfu,
                    r.peak_gib, r.host_ms);
        print_autotuned(r);
        std::fflush(stdout);
        if (json.is_open())
          json << nlohmann::json{{"impl", "fathom"},
                                 {"workload", r.workload},
                                 {"policy", label},
                                 {"precision", precision_label(o)},
                                 {"tokens_per_s", r.tokens_per_s},
                                 {"ms_per_step", r.ms_per_step},
                                 {"mfu", r.mfu},
                                 {"peak_gib", r.peak_gib},
                                 {"loss_last", r.loss_last},
                                 {"gemm_peak_tflops", peak},
                                 {"gemm_autotune", r.gemm_autotune},
                                 {"device", prop.name}}
                      .dump()
               << "\n";
        cuda::CachingAllocator::instance().release_cached();
      }
    }
    return 0;
  } catch (const Error& e) {
    const std::string who = rank >= 0 ? "rank " + std::to_string(rank) + ": " : "";
    std::fprintf(stderr, "fathom-bench: %serror: %s\n", who.c_str(), user_message(e).c_str());
    return 1;
  }
}

}  // namespace fathom::programs

int main(int argc, char** argv) { return fathom::programs::main(argc, argv); }
