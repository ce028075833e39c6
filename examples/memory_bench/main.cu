// fathom-memory-bench: how fast this GPU streams memory, the yardstick for the GB/s that
// bench/kernel_profile.sh reports for each kernel of a step. Times with CUDA events, at sizes of a
// step's passes (each above the L2 cache): a read of 16-byte packs, a write, a copy (each with one
// pack a thread an iteration, as fathom's element-wise kernels load, and four), cudaMemcpyAsync,
// fathom's memory-bound kernels of a Llama layer at a step's shapes (the norm, SwiGLU and RoPE
// passes), and fathom's AdamW update (28 bytes an element: bf16 weight and gradient, fp32 master
// weight and moments) on tensors on the 16-byte grid (four elements a thread, and one with packs
// switched off) and off it (one at a time).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fathom/cuda.hpp>

namespace {

using fathom::bf16;
using fathom::Cuda;
using fathom::Shape;
using fathom::Tensor;
using fathom::cuda::EventTimer;

constexpr int kThreads = 256;

// Sum of every pack (xor of its words), Unroll packs a thread an iteration; a block writes its
// result only when it equals `never`, so the loads cannot be dropped.
template <int Unroll>
__global__ void read_kernel(const uint4* in, std::int64_t packs, unsigned never, unsigned* out) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  for (; k + (Unroll - 1) * stride < packs; k += Unroll * stride) {
    uint4 p[Unroll];
#pragma unroll
    for (int j = 0; j < Unroll; ++j) p[j] = in[k + j * stride];
#pragma unroll
    for (int j = 0; j < Unroll; ++j) acc ^= p[j].x ^ p[j].y ^ p[j].z ^ p[j].w;
  }
  for (; k < packs; k += stride) acc ^= in[k].x ^ in[k].y ^ in[k].z ^ in[k].w;
  if (acc == never) out[blockIdx.x] = acc;
}

__global__ void write_kernel(uint4* out, std::int64_t packs, unsigned value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; k < packs;
       k += stride)
    out[k] = make_uint4(value, value, value, value);
}

template <int Unroll>
__global__ void copy_kernel(const uint4* in, uint4* out, std::int64_t packs) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t k = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  for (; k + (Unroll - 1) * stride < packs; k += Unroll * stride) {
    uint4 p[Unroll];
#pragma unroll
    for (int j = 0; j < Unroll; ++j) p[j] = in[k + j * stride];
#pragma unroll
    for (int j = 0; j < Unroll; ++j) out[k + j * stride] = p[j];
  }
  for (; k < packs; k += stride) out[k] = in[k];
}

struct Row {
  std::string what;
  double bytes, ms;
};

void print_row(const Row& r) {
  std::printf("%-44s %10.1f MB %9.3f ms %8.0f GB/s\n", r.what.c_str(), r.bytes / 1e6, r.ms,
              r.bytes / (r.ms * 1e-3) / 1e9);
}

// The simple kernels over `mib` MiB: a read, a write, copies, cudaMemcpyAsync.
void stream_rows(double mib, int blocks_per_sm, int warmup, int iters, EventTimer& timer) {
  const auto bytes = static_cast<std::int64_t>(mib * 1024 * 1024) / 16 * 16;
  const std::int64_t packs = bytes / 16;
  Tensor<std::uint8_t, Cuda> a(Shape{bytes}), b(Shape{bytes});
  a.fill_(std::uint8_t{1});
  b.fill_(std::uint8_t{2});
  Tensor<unsigned, Cuda> sink(Shape{65536});
  auto* in = reinterpret_cast<const uint4*>(a.data());
  auto* out = reinterpret_cast<uint4*>(b.data());
  int device = 0, sms = 0;
  FATHOM_CUDA_CHECK(cudaGetDevice(&device));
  FATHOM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int grid = static_cast<int>(std::min<std::int64_t>(
      static_cast<std::int64_t>(sms) * blocks_per_sm, (packs + kThreads - 1) / kThreads));
  cudaStream_t s = fathom::cuda::stream();
  char size[32];
  std::snprintf(size, sizeof size, "%.0f MiB", mib);
  const double db = static_cast<double>(bytes);
  print_row({std::string("read, 1 pack a thread, ") + size, db,
             timer.ms([&] { read_kernel<1><<<grid, kThreads, 0, s>>>(in, packs, 7, sink.data()); },
                      warmup, iters)});
  print_row({std::string("read, 4 packs a thread, ") + size, db,
             timer.ms([&] { read_kernel<4><<<grid, kThreads, 0, s>>>(in, packs, 7, sink.data()); },
                      warmup, iters)});
  print_row(
      {std::string("write, ") + size, db,
       timer.ms([&] { write_kernel<<<grid, kThreads, 0, s>>>(out, packs, 3); }, warmup, iters)});
  print_row(
      {std::string("copy, 1 pack a thread, ") + size, 2 * db,
       timer.ms([&] { copy_kernel<1><<<grid, kThreads, 0, s>>>(in, out, packs); }, warmup, iters)});
  print_row(
      {std::string("copy, 4 packs a thread, ") + size, 2 * db,
       timer.ms([&] { copy_kernel<4><<<grid, kThreads, 0, s>>>(in, out, packs); }, warmup, iters)});
  print_row({std::string("cudaMemcpyAsync, ") + size, 2 * db,
             timer.ms(
                 [&] {
                   FATHOM_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(),
                                                     static_cast<std::size_t>(bytes),
                                                     cudaMemcpyDeviceToDevice, s));
                 },
                 warmup, iters)});
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// fathom's AdamW over `params` bf16 weights with fp32 master weights in `tensors` tensors, with
// every array `offset` elements into its buffer (0: on the 16-byte grid; 1: off it), in packs of
// four elements where aligned unless `packs` is false.
void adam_row(std::int64_t params, int tensors, std::int64_t offset, bool packs, int warmup,
              int iters, EventTimer& timer) {
  const std::int64_t n = params / tensors, total = n + offset;
  std::vector<Tensor<bf16, Cuda>> w, g;
  std::vector<Tensor<float, Cuda>> master, m, v;
  std::vector<fathom::kernels::OptimizerSlot<bf16>> slots;
  for (int t = 0; t < tensors; ++t) {
    w.emplace_back(Shape{total});
    g.emplace_back(Shape{total});
    master.emplace_back(Shape{total});
    m.emplace_back(Shape{total});
    v.emplace_back(Shape{total});
    w.back().fill_(fathom::scalar_cast<bf16>(0.5));
    g.back().fill_(fathom::scalar_cast<bf16>(0.01));
    master.back().fill_(0.5f);
    m.back().fill_(0.0f);
    v.back().fill_(0.0f);
    slots.push_back({w.back().data() + offset, g.back().data() + offset,
                     master.back().data() + offset, m.back().data() + offset,
                     v.back().data() + offset, n, 0.1});
  }
  fathom::kernels::AdamHyper hyper;
  hyper.lr = 1e-4;
  const double bytes = 28.0 * static_cast<double>(n) * tensors;
  char what[96];
  std::snprintf(what, sizeof what, "AdamW, %.1fM params, %d tensors, %s",
                static_cast<double>(n) * tensors / 1e6, tensors,
                offset  ? "off the grid"
                : packs ? "4 elements a thread"
                        : "1 element a thread");
  fathom::kernels::detail::optimizer_packs_setting() = packs;
  print_row({what, bytes,
             timer.ms(
                 [&] {
                   fathom::kernels::adam_step(
                       Cuda{}, fathom::kernels::AdamParams<bf16>{slots.data(), tensors, hyper});
                 },
                 warmup, iters)});
  fathom::kernels::detail::optimizer_packs_setting() = true;
}

// A bf16 tensor of n values cycling through a few magnitudes of either sign (timing only).
Tensor<bf16, Cuda> filled(std::int64_t n) {
  std::vector<bf16> host(static_cast<std::size_t>(std::min<std::int64_t>(n, 4096)));
  for (std::size_t i = 0; i < host.size(); ++i)
    host[i] = fathom::scalar_cast<bf16>(0.25 * static_cast<double>(i % 17) - 2.0);
  Tensor<bf16, Cuda> t(Shape{n});
  for (std::int64_t at = 0; at < n; at += static_cast<std::int64_t>(host.size())) {
    const auto len = std::min<std::int64_t>(n - at, static_cast<std::int64_t>(host.size()));
    FATHOM_CUDA_CHECK(cudaMemcpy(t.data() + at, host.data(), static_cast<std::size_t>(len) * 2,
                                 cudaMemcpyHostToDevice));
  }
  return t;
}

// fathom's memory-bound kernels of a Llama layer at (tokens, dim, ffn, heads), bf16, each with the
// bytes it must move: RMSNorm forward and backward (dx accumulated, as into the residual stream's
// gradient), SwiGLU forward and backward on the gate/up GEMM's (tokens, 2 ffn) output, RoPE in
// place on the q/k/v GEMM's (tokens, 3 dim) output.
void kernel_rows(std::int64_t tokens, std::int64_t dim, std::int64_t ffn, int heads, int warmup,
                 int iters, EventTimer& timer) {
  namespace k = fathom::kernels;
  const std::int64_t nc = tokens * dim, nf = tokens * ffn;
  auto x = filled(nc), dy = filled(nc), dx = filled(nc), y = filled(nc), w = filled(dim),
       dw = filled(dim);
  Tensor<float, Cuda> rstd(Shape{tokens});
  char what[96];
  std::snprintf(what, sizeof what, "RMSNorm forward, %lld x %lld", static_cast<long long>(tokens),
                static_cast<long long>(dim));
  k::RmsNormParams<bf16> nf_p{x.data(), w.data(), y.data(), rstd.data(), tokens, dim};
  print_row({what, 4.0 * static_cast<double>(nc) + 4.0 * static_cast<double>(tokens),
             timer.ms([&] { k::rms_norm(Cuda{}, nf_p); }, warmup, iters)});
  std::snprintf(what, sizeof what, "RMSNorm backward, dx accumulated");
  k::RmsNormBackwardParams<bf16> nb_p{dy.data(), x.data(),  w.data(), rstd.data(),
                                      dx.data(), dw.data(), tokens,   dim};
  print_row({what, 8.0 * static_cast<double>(nc) + 4.0 * static_cast<double>(tokens),
             timer.ms([&] { k::rms_norm_backward(Cuda{}, nb_p); }, warmup, iters)});
  auto gu = filled(2 * nf), h = filled(nf), dh = filled(nf), dgu = filled(2 * nf);
  std::snprintf(what, sizeof what, "SwiGLU forward, %lld x 2 x %lld",
                static_cast<long long>(tokens), static_cast<long long>(ffn));
  k::SwigluParams<bf16> sf{gu.data(), gu.data() + ffn, h.data(), nf, ffn, 2 * ffn};
  print_row({what, 6.0 * static_cast<double>(nf),
             timer.ms([&] { k::swiglu(Cuda{}, sf); }, warmup, iters)});
  k::SwigluBackwardParams<bf16> sb{
      gu.data(), gu.data() + ffn, dh.data(), dgu.data(), dgu.data() + ffn, nf,
      false,     false,           ffn,       2 * ffn,    2 * ffn};
  print_row({"SwiGLU backward, fresh gradients", 10.0 * static_cast<double>(nf),
             timer.ms([&] { k::swiglu_backward(Cuda{}, sb); }, warmup, iters)});
  auto qkv = filled(3 * nc);
  const std::int64_t seq = 256;
  k::RopeQkvParams<bf16> rp{qkv.data(), tokens / seq, seq, dim, heads};
  print_row({"RoPE on q and k in place, T = 256", 8.0 * static_cast<double>(nc),
             timer.ms([&] { k::rope_qkv(Cuda{}, rp); }, warmup, iters)});
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "fathom-memory-bench: the GPU's streaming rate (read, write, copy, cudaMemcpyAsync) and "
      "fathom's AdamW update, in GB/s (10^9 bytes a second, bytes read plus bytes written)"};
  std::vector<double> sizes{48, 192, 768};
  std::int64_t adam_params = 134'000'000;
  int adam_tensors = 110, blocks_per_sm = 8, warmup = 3, iters = 20;
  std::int64_t tokens = 32768, dim = 768, ffn = 2048;
  int heads = 12;
  bool no_kernels = false;
  app.add_option("--sizes", sizes, "MiB of each pass's source, comma-separated")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--adam-params", adam_params, "weights AdamW updates (0: no AdamW rows)")
      ->capture_default_str();
  app.add_option("--adam-tensors", adam_tensors, "tensors the weights are split into")
      ->capture_default_str();
  app.add_option("--blocks-per-sm", blocks_per_sm, "blocks of 256 threads a multiprocessor")
      ->capture_default_str();
  app.add_option("--tokens", tokens, "rows of the kernels' tensors (batch x 256)")
      ->capture_default_str();
  app.add_option("--dim", dim, "model width")->capture_default_str();
  app.add_option("--ffn", ffn, "SwiGLU hidden width")->capture_default_str();
  app.add_option("--heads", heads, "attention heads (RoPE)")->capture_default_str();
  app.add_flag("--no-kernels", no_kernels, "no rows for fathom's memory-bound kernels");
  app.add_option("--warmup", warmup, "untimed calls before each timing")->capture_default_str();
  app.add_option("--iters", iters, "timed calls, averaged")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (warmup < 0 || iters < 1 || blocks_per_sm < 1 || adam_params < 0 || adam_tensors < 1 ||
      tokens < 256 || tokens % 256 != 0 || dim < 1 || ffn < 1 || heads < 1 || dim % heads != 0 ||
      (dim / heads) % 2 != 0 ||
      std::any_of(sizes.begin(), sizes.end(), [](double s) { return !(s > 0); })) {
    std::fprintf(stderr,
                 "fathom-memory-bench: --sizes must be positive, --warmup >= 0, --iters, "
                 "--blocks-per-sm and --adam-tensors >= 1, --adam-params >= 0, --tokens a "
                 "multiple of 256, --dim and --ffn positive, --dim a multiple of --heads with an "
                 "even head size\n");
    return 2;
  }
  try {
    cudaDeviceProp prop{};
    int device = 0;
    FATHOM_CUDA_CHECK(cudaGetDevice(&device));
    FATHOM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    std::printf("%s, %d SMs, L2 %d MiB; %d timed calls after %d, %d blocks of %d an SM\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, iters, warmup,
                blocks_per_sm, kThreads);
    EventTimer timer;
    for (const double mib : sizes) stream_rows(mib, blocks_per_sm, warmup, iters, timer);
    if (!no_kernels) kernel_rows(tokens, dim, ffn, heads, warmup, iters, timer);
    if (adam_params > 0) {
      adam_row(adam_params, adam_tensors, 0, true, warmup, iters, timer);
      adam_row(adam_params, adam_tensors, 0, false, warmup, iters, timer);
      adam_row(adam_params, adam_tensors, 1, true, warmup, iters, timer);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fathom-memory-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
