// [cuda] The backward's weight gradients beside the main stream (fathom::cuda::SideStream,
// autograd::detail::run_beside): buffers the side stream reads are not handed out again before it
// is done, and models train to the same gradients, bit for bit, with the overlap on and off.
#include <fathom/cuda.hpp>
#include <fathom/nn/decoder_lm.hpp>
#include <fathom/nn/presets.hpp>
#include <fathom/policy/lns.hpp>
#include <fathom/policy/post_ln.hpp>
#include <fathom/policy/pre_ln.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "support/catch.hpp"

using namespace fathom;

namespace {

// Restores the overlap setting a test changed.
struct OverlapSetting {
  bool was = fathom::cuda::SideStream::instance().enabled();
  ~OverlapSetting() { fathom::cuda::SideStream::instance().set_enabled(was); }
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

TEST_CASE("SideStream: what work beside reads or frees is not handed out before it is done",
          "[cuda][overlap]") {
  OverlapSetting restore;
  auto& side = fathom::cuda::SideStream::instance();
  side.set_enabled(true);
  const std::int64_t n = 2048;  // an fp32 GEMM of ~0.3 ms beside, a fill of ~10 us on the main
  const auto a = Tensor<float, Cuda>::randn(Shape{n, n}, 3);
  const kernels::GemmParams<float> shape{.m = n, .n = n, .k = n, .trans_a = true};
  auto product_of = [&](const Tensor<float, Cuda>& x, Tensor<float, Cuda>& out) {
    kernels::GemmParams<float> p = shape;
    p.a = x.data();
    p.b = x.data();
    p.c = out.data();
    kernels::gemm(Cuda{}, p);
  };
  Tensor<float, Cuda> expected(Shape{n, n});
  product_of(a, expected);

  Tensor<float, Cuda> c(Shape{n, n});
  Tensor<float, Cuda> held = a.clone();
  void* temp_block = nullptr;
  const std::uint64_t entry = autograd::detail::run_beside<Cuda>(
      autograd::detail::Beside::start,
      [&] {
        Tensor<float, Cuda> temp = held.clone();  // freed inside, while its copy may be queued
        temp_block = temp.data();
        product_of(temp, c);
      },
      held);
  CHECK(entry == side.open_entry());
  CHECK(entry != 0);
  const void* held_block = held.data();
  held = Tensor<float, Cuda>();  // dropped on the host while the GEMM may still read it
  // The main stream does not wait for the work beside: had either block gone back to the free
  // lists, these would get it and overwrite it under the GEMM.
  Tensor<float, Cuda> first = Tensor<float, Cuda>::full(Shape{n, n}, std::nanf(""));
  Tensor<float, Cuda> second = Tensor<float, Cuda>::full(Shape{n, n}, std::nanf(""));
  CHECK(first.data() != held_block);
  CHECK(first.data() != temp_block);
  CHECK(second.data() != held_block);
  CHECK(second.data() != temp_block);
  side.join();
  CHECK(side.open_entry() == 0);
  CHECK(same_bits(c.to_vector(), expected.to_vector()));
}

namespace {

template <class D>
Tensor<std::int32_t, D> tokens_on(std::int64_t B, std::int64_t T, int vocab, std::uint64_t seed) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(B * T));
  for (std::size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<std::int32_t>(rng::uniform(seed, i) * vocab) % vocab;
  return Tensor<std::int32_t, D>::from_vector(Shape{B, T}, ids);
}

// Every parameter's gradient after two micro-batches (the second backward adds into the first's
// gradients), with the overlap on or off; `started` counts the entries queued beside.
template <class Arch, class Policy, class T>
std::vector<std::vector<T>> gradients(const nn::ModelConfig& c, bool overlap,
                                      std::uint64_t& started) {
  auto& side = fathom::cuda::SideStream::instance();
  side.set_enabled(overlap);
  nn::DecoderLM<Arch, Policy, T, Cuda> model(c);
  model.init(91);
  const std::uint64_t before = side.entries_started();
  for (std::uint64_t micro = 0; micro < 2; ++micro) {
    auto loss = model.loss(tokens_on<Cuda>(8, 128, c.vocab, 20 + micro),
                           tokens_on<Cuda>(8, 128, c.vocab, 30 + micro));
    autograd::backward(loss);
    CHECK(side.open_entry() == 0);  // backward() returns with every gradient final
  }
  started = side.entries_started() - before;
  std::vector<std::vector<T>> out;
  for (const auto& p : model.parameters()) {
    INFO(p.name);
    REQUIRE(p.var.has_grad());
    out.push_back(p.var.grad().to_vector());
  }
  return out;
}

template <class Arch, class Policy, class T>
void check_same_gradients(const nn::ModelConfig& c) {
  OverlapSetting restore;
  std::uint64_t started_off = 0, started_on = 0;
  const auto one_stream = gradients<Arch, Policy, T>(c, false, started_off);
  const auto beside = gradients<Arch, Policy, T>(c, true, started_on);
  CHECK(started_off == 0);
  // Each backward queues one entry a linear layer (the GELU MLP: one for both) and the LM head.
  CHECK(started_on >= static_cast<std::uint64_t>(2 * c.layers * 3));
  nn::DecoderLM<Arch, Policy, T, Cuda> names(c);
  REQUIRE(one_stream.size() == beside.size());
  for (std::size_t i = 0; i < one_stream.size(); ++i) {
    INFO(names.parameters()[i].name);
    bool finite = true;
    for (T g : beside[i]) finite = finite && std::isfinite(static_cast<double>(g));
    CHECK(finite);
    CHECK(same_bits(beside[i], one_stream[i]));
  }
}

}  // namespace

TEST_CASE("Backward overlap: the same gradients, bit for bit, as on one stream",
          "[cuda][overlap][nn]") {
  SECTION("Llama, LNS, bf16 (stacked q/k/v and gate/up, the residual add in the epilogue)") {
    auto c = nn::preset("tiny");
    c.d_model = 256;
    c.heads = 4;
    c.d_ff = 688;
    c.layers = 4;
    check_same_gradients<nn::Llama, policy::LNS, bf16>(c);
  }
  SECTION("Llama, Post-LN, fp32") {
    auto c = nn::preset("tiny");
    c.d_model = 128;
    c.heads = 2;
    c.d_ff = 352;
    check_same_gradients<nn::Llama, policy::PostLN, float>(c);
  }
  SECTION("GPT-2, Pre-LN, bf16 (GELU MLP in one node, biases, tied embeddings)") {
    auto c = nn::preset("gpt2-tiny");
    c.d_model = 256;
    c.heads = 4;
    c.d_ff = 1024;
    c.layers = 4;
    check_same_gradients<nn::Gpt2, policy::PreLN, bf16>(c);
  }
}
