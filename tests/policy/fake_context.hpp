// A SublayerContext whose branch and norm slots are simple known maps, so a policy's formula can be
// checked exactly: f(v) = 3 v, norm slot i: v * 10^(i+1) * scale. Every norm call is recorded.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fathom/autograd/ops/elementwise.hpp"
#include "fathom/policy/sublayer.hpp"
#include "support/catch.hpp"

namespace fathom::testing {

struct FakeSublayer {
  struct NormCall {
    int slot;
    double scale;
  };
  std::vector<NormCall> norm_calls;
  int branch_calls = 0;
  Var<double> x;

  explicit FakeSublayer(std::uint64_t seed)
      : x(Tensor<double>::randn(Shape{2, 3, 4}, seed), true) {}

  policy::SublayerContext<double, Cpu> context(
      int layer, int depth, policy::Sublayer kind = policy::Sublayer::attention) {
    return policy::SublayerContext<double, Cpu>(
        x, layer, depth, kind,
        [this](const Var<double>& v) {
          ++branch_calls;
          return v * 3.0;
        },
        [this](int slot, const Var<double>& v, double scale) {
          norm_calls.push_back({slot, scale});
          return v * (std::pow(10.0, slot + 1) * scale);
        });
  }

  // x * k, elementwise, as a host vector.
  std::vector<double> x_times(double k) const {
    auto v = x.value().to_vector();
    for (auto& e : v) e *= k;
    return v;
  }
};

inline void require_close(const std::vector<double>& got, const std::vector<double>& want,
                          double rtol = 1e-14) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    REQUIRE_THAT(got[i], WithinRel(want[i], rtol) || WithinAbs(want[i], 1e-15));
  }
}

}  // namespace fathom::testing
