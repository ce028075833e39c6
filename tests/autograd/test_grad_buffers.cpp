// Tests for how backward writes gradients (include/fathom/autograd/var.hpp): a gradient passed on
// without a copy (lend) is copied before anything adds to it, and buffers that kernels overwrite
// instead of zero-filling (write_target) are never read: with new buffers poisoned to NaN, every
// op and whole models give the same gradients as without.
#include <fathom/autograd/var.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <fathom/autograd/gradcheck.hpp>
#include <fathom/autograd/ops/activation.hpp>
#include <fathom/autograd/ops/attention.hpp>
#include <fathom/autograd/ops/elementwise.hpp>
#include <fathom/autograd/ops/gemm.hpp>
#include <fathom/autograd/ops/norm.hpp>
#include <fathom/autograd/ops/reduce.hpp>
#include <fathom/autograd/ops/rope.hpp>
#include <fathom/autograd/ops/softmax.hpp>
#include <fathom/nn/decoder_lm.hpp>
#include <fathom/policy/lns.hpp>
#include <fathom/policy/post_ln.hpp>
#include <fathom/policy/sandwich_ln.hpp>

#include "nn/model_testing.hpp"
#include "autograd/support.hpp"
#include "support/catch.hpp"

using fathom::Shape;
using fathom::Tensor;
using fathom::Var;
namespace ag = fathom::autograd;
namespace nn = fathom::nn;
using fathom::test::FreshTape;
using fathom::test::leaf;

namespace {

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Runs graph(inputs) -> scalar, backward, and returns every input's gradient, concatenated.
std::vector<double> gradients(
    const std::function<Var<double>(const std::vector<Var<double>>&)>& graph,
    const std::vector<Shape>& shapes) {
  FreshTape fresh;
  std::vector<Var<double>> in;
  for (std::size_t i = 0; i < shapes.size(); ++i) in.push_back(leaf(shapes[i], 100 + i));
  ag::backward(graph(in));
  std::vector<double> out;
  for (auto& v : in) {
    REQUIRE(v.has_grad());
    auto g = v.grad().to_vector();
    out.insert(out.end(), g.begin(), g.end());
  }
  return out;
}

}  // namespace

TEST_CASE("a gradient passed on by add is copied before another backward adds to it",
          "[autograd][grad]") {
  FreshTape fresh;
  Var<double> a = leaf(Shape{5}, 1), b = leaf(Shape{5}, 2), c = leaf(Shape{5}, 3);
  auto step = [&] { ag::backward(ag::sum((a + b) * c)); };
  step();
  const auto cv = c.value().to_vector();
  CHECK(a.grad().to_vector() == cv);
  CHECK(b.grad().to_vector() == cv);
  step();  // accumulates into a's gradient: b's must not see it
  auto ga = a.grad().to_vector(), gb = b.grad().to_vector();
  for (std::size_t i = 0; i < cv.size(); ++i) {
    CHECK(ga[i] == 2 * cv[i]);
    CHECK(gb[i] == 2 * cv[i]);
  }
  a.zero_grad();
  CHECK(a.grad().to_vector() == std::vector<double>(5, 0.0));
  CHECK(b.grad().to_vector() == gb);
}

TEST_CASE("zeroing a gradient that shares its buffer leaves the other one alone",
          "[autograd][grad]") {
  FreshTape fresh;
  Var<double> a = leaf(Shape{5}, 1), b = leaf(Shape{5}, 2), c = leaf(Shape{5}, 3);
  ag::backward(ag::sum((a + b) * c));  // a and b are lent one buffer
  b.zero_grad();
  CHECK(b.grad().to_vector() == std::vector<double>(5, 0.0));
  CHECK(a.grad().to_vector() == c.value().to_vector());
}

TEST_CASE("a retained gradient that was passed on stays as it was", "[autograd][grad]") {
  FreshTape fresh;
  Var<double> a = leaf(Shape{4}, 4), b = leaf(Shape{4}, 5);
  Var<double> s = a + b;
  s.retain_grad();
  // s feeds two ops; its gradient (from both) is lent to a and b, then a's path adds more.
  ag::backward(ag::sum(s * s + 3.0 * a));
  const auto sv = s.value().to_vector();
  auto gs = s.grad().to_vector(), ga = a.grad().to_vector(), gb = b.grad().to_vector();
  for (std::size_t i = 0; i < sv.size(); ++i) {
    CHECK(gs[i] == 2 * sv[i]);
    CHECK(gb[i] == 2 * sv[i]);
    CHECK(ga[i] == 2 * sv[i] + 3.0);
  }
}

TEST_CASE("a lent gradient is written in place once its slot is the buffer's only holder",
          "[autograd][grad]") {
  using Slot = fathom::autograd::detail::GradSlot<double, fathom::Cpu>;
  const std::vector<double> g0{1.0, 2.0, 3.0};
  SECTION("the lender still holds the buffer: the slot copies it and the lender's stays") {
    auto lent = Tensor<double>::from_vector(Shape{3}, g0);
    Slot slot;
    slot.shape = Shape{3};
    REQUIRE(slot.lend(lent));
    const auto target = slot.write_target();
    CHECK(target.accumulate);
    CHECK(target.data != lent.data());
    target.data[0] += 10.0;
    CHECK(lent.to_vector() == g0);
    CHECK(slot.grad.to_vector() == std::vector<double>{11.0, 2.0, 3.0});
  }
  SECTION("the lender has let go (a residual add's output after its node ran): no copy") {
    Slot slot;
    slot.shape = Shape{3};
    const double* buffer = nullptr;
    {
      auto lent = Tensor<double>::from_vector(Shape{3}, g0);
      buffer = lent.data();
      REQUIRE(slot.lend(lent));
    }
    const auto target = slot.write_target();
    CHECK(target.accumulate);
    CHECK(target.data == buffer);
    CHECK_FALSE(slot.borrowed);
    CHECK(slot.grad.to_vector() == g0);
  }
}

TEST_CASE("a residual stream's gradient is the same whether or not the lent buffer is copied",
          "[autograd][grad]") {
  // x = a * c feeds both the residual add and a norm whose linear branch runs its backward first,
  // so the norm's backward adds into the buffer the add lent x without a copy. Retaining y's
  // gradient keeps a second holder, which forces the copy: both must give the same gradients.
  auto run = [](bool retain_output) {
    FreshTape fresh;
    Var<double> a = leaf(Shape{2, 3, 4}, 11), c = leaf(Shape{2, 3, 4}, 12);
    Var<double> w = leaf(Shape{4}, 13), m = leaf(Shape{4, 4}, 14), d = leaf(Shape{2, 3, 4}, 15);
    Var<double> x = a * c;
    Var<double> y = x + ag::linear(ag::rms_norm(x, w, 1e-6), m);
    if (retain_output) y.retain_grad();
    ag::backward(ag::sum(y * d));
    std::vector<double> out;
    for (const auto* v : {&a, &c, &w, &m}) {
      const auto g = v->grad().to_vector();
      out.insert(out.end(), g.begin(), g.end());
    }
    return out;
  };
  const auto in_place = run(false), copied = run(true);
  REQUIRE(in_place.size() == copied.size());
  for (std::size_t i = 0; i < in_place.size(); ++i) CHECK(in_place[i] == copied[i]);
}

TEST_CASE("kernels that overwrite fresh gradient buffers never read them (NaN-poisoned)",
          "[autograd][grad]") {
  using G = std::function<Var<double>(const std::vector<Var<double>>&)>;
  const Shape x{2, 3, 8};
  struct Case {
    std::string name;
    G graph;
    std::vector<Shape> shapes;
  };
  const std::vector<Case> cases = {
      {"linear with bias",
       [](auto& v) { return ag::sum(ag::linear(v[0], v[1], v[2]) * v[3]); },
       {x, Shape{5, 8}, Shape{5}, Shape{2, 3, 5}}},
      {"matmul",
       [](auto& v) { return ag::sum(ag::matmul(v[0], v[1]) * v[2]); },
       {Shape{2, 4, 3}, Shape{2, 3, 5}, Shape{2, 4, 5}}},
      {"rms_norm",
       [](auto& v) { return ag::sum(ag::rms_norm(v[0], v[1], 1e-6, 0.5) * v[2]); },
       {x, Shape{8}, x}},
      {"layer_norm",
       [](auto& v) { return ag::sum(ag::layer_norm(v[0], v[1], v[2], 1e-5, 0.7) * v[3]); },
       {x, Shape{8}, Shape{8}, x}},
      {"rope", [](auto& v) { return ag::sum(ag::rope(v[0], 2) * v[1]); }, {x, x}},
      {"rope_qkv in place",
       [](auto& v) { return ag::sum(ag::rope_qkv(v[0] * 1.0, 2) * v[1]); },
       {Shape{2, 3, 24}, Shape{2, 3, 24}}},
      {"rope_qkv on a copy",
       [](auto& v) { return ag::sum(ag::rope_qkv(v[0], 2) * v[1]); },
       {Shape{2, 3, 24}, Shape{2, 3, 24}}},
      {"concat_rows",
       [](auto& v) {
         return ag::sum(ag::concat_rows<double, fathom::Cpu>({v[0], v[1]}) * v[2]);
       },
       {Shape{2, 4}, Shape{3, 4}, Shape{5, 4}}},
      {"gelu", [](auto& v) { return ag::sum(ag::gelu(v[0]) * v[1]); }, {x, x}},
      {"silu", [](auto& v) { return ag::sum(ag::silu(v[0]) * v[1]); }, {x, x}},
      {"swiglu", [](auto& v) { return ag::sum(ag::swiglu(v[0], v[1]) * v[2]); }, {x, x, x}},
      {"swiglu_stacked",
       [](auto& v) { return ag::sum(ag::swiglu_stacked(v[0]) * v[1]); },
       {Shape{2, 3, 10}, Shape{2, 3, 5}}},
      {"softmax", [](auto& v) { return ag::sum(ag::softmax(v[0]) * v[1]); }, {x, x}},
      {"attention",
       [](auto& v) { return ag::sum(ag::attention(v[0], v[1], v[2], 2) * v[3]); },
       {x, x, x, x}},
      {"attention_qkv",
       [](auto& v) { return ag::sum(ag::attention_qkv(v[0], 2) * v[1]); },
       {Shape{2, 3, 24}, x}},
      {"rope_attention_qkv in place",
       [](auto& v) { return ag::sum(ag::rope_attention_qkv(v[0] * 1.0, 2) * v[1]); },
       {Shape{2, 3, 24}, x}},
      {"rope_attention_qkv on a copy",
       [](auto& v) { return ag::sum(ag::rope_attention_qkv(v[0], 2) * v[1]); },
       {Shape{2, 3, 24}, x}},
      {"gelu_mlp",
       [](auto& v) { return ag::sum(ag::gelu_mlp(v[0], v[1], &v[2], v[3], &v[4]) * v[5]); },
       {x, Shape{6, 8}, Shape{6}, Shape{8, 6}, Shape{8}, x}},
      {"add and reshape",
       [](auto& v) {
         return ag::sum(ag::reshape(v[0] + v[1], {6, 8}) * ag::reshape(v[2], {6, 8}));
       },
       {x, x, x}},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    const auto plain = gradients(c.graph, c.shapes);
    REQUIRE(all_finite(plain));
    std::vector<double> poisoned;
    {
      fathom::memory::PoisonNewBuffers poison;
      poisoned = gradients(c.graph, c.shapes);
    }
    CHECK(all_finite(poisoned));
    CHECK(poisoned == plain);
  }
}

TEST_CASE("a poisoned allocation reads as NaN (the check above can fail)", "[autograd][grad]") {
  fathom::memory::PoisonNewBuffers poison;
  Tensor<double> t(Shape{3});
  for (double v : t.to_vector()) CHECK(std::isnan(v));
  Tensor<fathom::bf16> h(Shape{3});
  for (auto v : h.to_vector()) CHECK(std::isnan(static_cast<float>(v)));
}

TEMPLATE_TEST_CASE("whole-model gradients do not depend on what fresh buffers held",
                   "[autograd][grad]", fathom::policy::LNS, fathom::policy::PostLN,
                   fathom::policy::SandwichLN) {
  for (auto arch : {nn::ArchKind::llama, nn::ArchKind::gpt2}) {
    INFO((arch == nn::ArchKind::llama ? "llama" : "gpt2"));
    auto cfg = fathom::testing::tiny_config(arch, 3);
    auto run = [&] {
      FreshTape fresh;
      std::vector<double> out;
      auto body = [&](auto model) {
        model.init(3);
        fathom::testing::randomize(model, 4);
        auto x = fathom::testing::random_tokens(2, 4, cfg.vocab, 5);
        auto y = fathom::testing::random_tokens(2, 4, cfg.vocab, 6);
        ag::backward(model.loss(x, y));
        for (const auto& p : model.parameters()) {
          REQUIRE(p.var.has_grad());
          auto g = p.var.grad().to_vector();
          out.insert(out.end(), g.begin(), g.end());
        }
      };
      if (arch == nn::ArchKind::llama)
        body(nn::DecoderLM<nn::Llama, TestType, double>(cfg));
      else
        body(nn::DecoderLM<nn::Gpt2, TestType, double>(cfg));
      return out;
    };
    const auto plain = run();
    REQUIRE(all_finite(plain));
    std::vector<double> poisoned;
    {
      fathom::memory::PoisonNewBuffers poison;
      poisoned = run();
    }
    CHECK(all_finite(poisoned));
    CHECK(poisoned == plain);
  }
}

TEST_CASE("attention_qkv equals attention on the three slices, values and gradients",
          "[autograd][attention]") {
  const std::int64_t B = 2, T = 5, C = 6;
  const bool causal = GENERATE(true, false);
  auto packed = Tensor<double>::randn(Shape{B, T, 3 * C}, 21);
  auto seed = Tensor<double>::randn(Shape{B, T, C}, 22);
  FreshTape fresh;
  Var<double> qkv(packed.clone(), true);
  auto y1 = ag::attention_qkv(qkv, 3, causal);
  ag::backward(y1, seed);
  Var<double> qkv2(packed.clone(), true);
  auto parts = ag::split_last(qkv2, 3);
  auto y2 = ag::attention(parts[0], parts[1], parts[2], 3, causal);
  ag::backward(y2, seed);
  CHECK(y1.value().to_vector() == y2.value().to_vector());
  auto g1 = qkv.grad().to_vector(), g2 = qkv2.grad().to_vector();
  REQUIRE(g1.size() == g2.size());
  for (std::size_t i = 0; i < g1.size(); ++i) CHECK_THAT(g1[i], WithinAbs(g2[i], 1e-13));
}

TEST_CASE("attention_qkv gradients match finite differences", "[autograd][attention]") {
  auto [B, T, H, hd] = GENERATE(table<std::int64_t, std::int64_t, std::int64_t, std::int64_t>(
      {{1, 1, 1, 3}, {2, 5, 2, 3}, {1, 7, 3, 2}}));
  INFO("B " << B << " T " << T << " H " << H << " hd " << hd);
  auto result = ag::gradcheck(
      [&](const std::vector<Var<double>>& in) {
        return ag::attention_qkv(in[0], static_cast<int>(H));
      },
      {leaf(Shape{B, T, 3 * H * hd}, 23)});
  INFO(result.first_failure);
  CHECK(result.ok);
}

TEST_CASE("attention_qkv names a bad shape", "[autograd][attention]") {
  Var<double> bad = leaf(Shape{2, 3, 10}, 24);
  try {
    ag::attention_qkv(bad, 2);
    FAIL("no error");
  } catch (const fathom::Error& e) {
    CHECK(std::string(e.what()).find("(B, T, 3C)") != std::string::npos);
    CHECK(std::string(e.what()).find("(2, 3, 10)") != std::string::npos);
  }
}
