// Tests for the CPU GEMM and column sum (include/fathom/kernels/gemm.hpp): kernels::gemm (CBLAS
// when the build defines FATHOM_HAS_CBLAS) and kernels::detail::gemm_portable (always compiled)
// against naive loops in double, over shapes from 1 to 5461, every transpose combination, batches,
// padded leading dimensions and batch strides, alpha/beta and bias; the beta term read from a
// separate c_in; the column sum and gemm_bias_grad (the weight-gradient GEMM with the bias
// gradient).
#include <fathom/kernels/gemm.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "fathom/core/rng.hpp"
#include "kernels/support.hpp"
#include "support/catch.hpp"

namespace {

using fathom::bf16;
using fathom::Cpu;
using fathom::kernels::ColumnSumParams;
using fathom::kernels::GemmParams;
using fathom::test::rng_uniform_values;
using fathom::test::same_bits;
using fathom::test::to_double;

struct Shape3 {
  std::int64_t m, n, k;
};

// How a case lays out and scales its operands.
struct Variant {
  std::int64_t batch;
  bool bias;
  bool padded;  // leading dimensions and batch strides larger than packed
  double alpha, beta;
};

// A GEMM problem with its buffers (padding included, all random) and the reference result. With
// `with_c_in` the random values C would start with go to a separate c_in instead, and C (padding
// included) holds NaN: reading C's old contents rather than c_in would poison the result.
template <class T>
struct GemmProblem {
  GemmParams<T> p;
  std::vector<T> a, b, c, bias, c_in;
  std::vector<double> ref, scale;  // (batch, M, N): expected value and sum of |terms|

  GemmProblem(Shape3 s, bool ta, bool tb, const Variant& v, std::uint64_t seed,
              bool with_c_in = false) {
    p.m = s.m, p.n = s.n, p.k = s.k, p.trans_a = ta, p.trans_b = tb, p.batch = v.batch;
    p.alpha = v.alpha, p.beta = v.beta;
    const std::int64_t a_rows = ta ? s.k : s.m, a_cols = ta ? s.m : s.k;
    const std::int64_t b_rows = tb ? s.n : s.k, b_cols = tb ? s.k : s.n;
    const std::int64_t pad = v.padded ? 3 : 0, gap = v.padded ? 5 : 0;
    p.lda = a_cols + pad, p.ldb = b_cols + pad, p.ldc = s.n + pad;
    p.stride_a = a_rows * p.lda + gap, p.stride_b = b_rows * p.ldb + gap,
    p.stride_c = s.m * p.ldc + gap;
    a = rng_uniform_values<T>(static_cast<std::size_t>(v.batch * p.stride_a), seed);
    b = rng_uniform_values<T>(static_cast<std::size_t>(v.batch * p.stride_b), seed + 1);
    c = rng_uniform_values<T>(static_cast<std::size_t>(v.batch * p.stride_c), seed + 2);
    if (v.beta == 0.0) {
      // beta == 0 must not read C: NaN there would poison the result if it did.
      for (std::int64_t bi = 0; bi < v.batch; ++bi)
        for (std::int64_t i = 0; i < s.m; ++i)
          for (std::int64_t j = 0; j < s.n; ++j)
            c[static_cast<std::size_t>(bi * p.stride_c + i * p.ldc + j)] =
                std::numeric_limits<T>::quiet_NaN();
    }
    if (with_c_in) {
      c_in = c;
      std::fill(c.begin(), c.end(), std::numeric_limits<T>::quiet_NaN());
    }
    if (v.bias) bias = rng_uniform_values<T>(static_cast<std::size_t>(s.n), seed + 3);
    p.a = a.data(), p.b = b.data(), p.bias = v.bias ? bias.data() : nullptr;

    ref.assign(static_cast<std::size_t>(v.batch * s.m * s.n), 0.0);
    scale = ref;
    for (std::int64_t bi = 0; bi < v.batch; ++bi) {
      for (std::int64_t i = 0; i < s.m; ++i) {
        for (std::int64_t j = 0; j < s.n; ++j) {
          double sum = 0.0, abs_sum = 0.0;
          for (std::int64_t q = 0; q < s.k; ++q) {
            double x = to_double(a[static_cast<std::size_t>(bi * p.stride_a +
                                                            (ta ? q * p.lda + i : i * p.lda + q))]);
            double y = to_double(b[static_cast<std::size_t>(bi * p.stride_b +
                                                            (tb ? j * p.ldb + q : q * p.ldb + j))]);
            sum += x * y;
            abs_sum += std::abs(x * y);
          }
          double r = v.alpha * sum, sc = std::abs(v.alpha) * abs_sum;
          if (v.beta != 0.0) {
            const std::vector<T>& c_old = with_c_in ? c_in : c;
            double c0 = to_double(c_old[static_cast<std::size_t>(bi * p.stride_c + i * p.ldc + j)]);
            r += v.beta * c0;
            sc += std::abs(v.beta * c0);
          }
          if (v.bias) {
            r += to_double(bias[static_cast<std::size_t>(j)]);
            sc += std::abs(to_double(bias[static_cast<std::size_t>(j)]));
          }
          const auto e = static_cast<std::size_t>((bi * s.m + i) * s.n + j);
          ref[e] = r;
          scale[e] = sc;
        }
      }
    }
  }

  // Runs `gemm` on a fresh copy of C (and of c_in, when there is one) and checks every element,
  // that the padding is untouched and that c_in is unchanged.
  template <class Gemm>
  void check(Gemm&& gemm, const std::string& impl) const {
    std::vector<T> out = c, in = c_in;
    GemmParams<T> q = p;
    q.c = out.data();
    q.c_in = in.empty() ? nullptr : in.data();
    gemm(q);
    CHECK(same_bits(in, c_in));
    // Errors of a K-term sum grow like sqrt(K) times the size of a term, so the tolerance is
    // relative to |ref| plus the typical term-sum magnitude (sum of |terms|) / sqrt(K).
    const double rtol = fathom::Precision<T>::rtol, atol = fathom::Precision<T>::atol;
    const double root_k = std::sqrt(static_cast<double>(std::max<std::int64_t>(p.k, 1)));
    std::int64_t bad = 0;
    std::string first;
    for (std::int64_t bi = 0; bi < p.batch; ++bi) {
      for (std::int64_t i = 0; i < p.m; ++i) {
        for (std::int64_t j = 0; j < p.n; ++j) {
          const auto e = static_cast<std::size_t>((bi * p.m + i) * p.n + j);
          const double got =
              to_double(out[static_cast<std::size_t>(bi * p.stride_c + i * p.ldc + j)]);
          const double tol = atol + rtol * (std::abs(ref[e]) + scale[e] / root_k);
          if (!(std::abs(got - ref[e]) <= tol) && bad++ == 0) {
            first = "element (" + std::to_string(bi) + ", " + std::to_string(i) + ", " +
                    std::to_string(j) + "): got " + std::to_string(got) + ", expected " +
                    std::to_string(ref[e]) + " (tolerance " + std::to_string(tol) + ")";
          }
        }
      }
    }
    std::int64_t padding_changed = 0;
    for (std::size_t e = 0; e < out.size(); ++e) {
      const std::int64_t bi = static_cast<std::int64_t>(e) / p.stride_c,
                         r = static_cast<std::int64_t>(e) % p.stride_c;
      const bool inside = bi < p.batch && r / p.ldc < p.m && r % p.ldc < p.n;
      if (!inside && !same_bits(out[e], c[e])) ++padding_changed;
    }
    INFO(impl << " " << fathom::Precision<T>::name << ": M " << p.m << ", N " << p.n << ", K "
              << p.k << ", trans_a " << p.trans_a << ", trans_b " << p.trans_b << ", batch "
              << p.batch << ", bias " << (p.bias != nullptr) << ", lda " << p.lda << ", alpha "
              << p.alpha << ", beta " << p.beta << ", c_in " << !c_in.empty()
              << "; first mismatch: " << first);
    CHECK(bad == 0);
    CHECK(padding_changed == 0);
  }
};

// The problem through gemm(Cpu) (CBLAS where fathom is built with it) and the portable loop.
template <class T>
void check_cpu_gemms(const GemmProblem<T>& problem) {
  problem.check([](const GemmParams<T>& q) { fathom::kernels::gemm(Cpu{}, q); },
#if defined(FATHOM_HAS_CBLAS)
                "gemm (CBLAS)"
#else
                "gemm (portable)"
#endif
  );
  problem.check([](const GemmParams<T>& q) { fathom::kernels::detail::gemm_portable(q); },
                "gemm_portable");
}

}  // namespace

TEMPLATE_TEST_CASE("gemm and the portable fallback match naive loops", "[kernels][gemm]", double,
                   float, bf16) {
  const Shape3 shape = GENERATE(values<Shape3>({{1, 1, 1},
                                                {1, 7, 5},
                                                {6, 1, 9},
                                                {5, 4, 1},
                                                {37, 29, 41},
                                                {64, 65, 257},
                                                {65, 257, 33},
                                                {3, 5, 5461},
                                                {2, 5461, 3},
                                                {5461, 2, 4}}));
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const Variant variant = GENERATE(values<Variant>(
      {{1, false, false, 1.0, 0.0}, {3, true, true, 0.75, -0.5}, {2, true, false, -1.25, 1.0}}));
  GemmProblem<TestType> problem(shape, ta, tb, variant,
                                1000 + static_cast<std::uint64_t>(shape.m * 7 + shape.k));
  check_cpu_gemms(problem);
}

TEMPLATE_TEST_CASE("gemm with K = 0 gives beta * C + bias", "[kernels][gemm]", double, float,
                   bf16) {
  const Variant variant =
      GENERATE(values<Variant>({{1, false, false, 1.0, 0.0}, {2, true, true, 2.0, 0.5}}));
  GemmProblem<TestType> problem({4, 6, 0}, false, true, variant, 77);
  check_cpu_gemms(problem);
}

TEMPLATE_TEST_CASE("gemm's beta term reads c_in, never C's previous contents", "[kernels][gemm]",
                   double, float, bf16) {
  const Shape3 shape = GENERATE(values<Shape3>({{7, 13, 5}, {1, 1, 1}, {37, 29, 300}, {7, 13, 0}}));
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const double beta = GENERATE(1.0, 0.5, -2.0);
  // Batch 1 packed; batch 2 with padded rows and a gap between the batch entries.
  Variant variant = GENERATE(values<Variant>(
      {{1, false, false, 0.75, 0.0}, {1, true, false, 1.0, 0.0}, {2, true, true, -1.5, 0.0}}));
  variant.beta = beta;
  GemmProblem<TestType> problem(shape, ta, tb, variant,
                                2000 + static_cast<std::uint64_t>(shape.m * 7 + shape.k),
                                /*with_c_in=*/true);
  check_cpu_gemms(problem);
}

TEMPLATE_TEST_CASE("gemm with c_in == c is the in-place GEMM; beta 0 reads neither",
                   "[kernels][gemm]", double, float, bf16) {
  using T = TestType;
  const Variant variant = GENERATE(values<Variant>(
      {{1, true, false, 0.75, 0.5}, {2, false, true, 1.0, -2.0}, {2, true, true, 1.0, 0.0}}));
  const std::int64_t k = GENERATE(5, 0);
  GemmProblem<T> problem({7, 13, k}, false, true, variant, 91);
  const auto run = [&](auto&& gemm, const char* impl) {
    INFO(impl << " " << fathom::Precision<T>::name << ", K " << k << ", batch " << variant.batch
              << ", beta " << variant.beta);
    std::vector<T> in_place = problem.c, self = problem.c;
    GemmParams<T> q = problem.p;
    q.c = in_place.data();
    gemm(q);
    q.c = self.data();
    q.c_in = self.data();
    gemm(q);
    CHECK(same_bits(self, in_place));
    if (variant.beta == 0.0) {  // c_in is never read: NaN there changes nothing
      const std::vector<T> nan_in(problem.c.size(), std::numeric_limits<T>::quiet_NaN());
      std::vector<T> out = problem.c;
      q.c = out.data();
      q.c_in = nan_in.data();
      gemm(q);
      CHECK(same_bits(out, in_place));
    }
  };
  run([](const GemmParams<T>& q) { fathom::kernels::gemm(Cpu{}, q); }, "gemm");
  run([](const GemmParams<T>& q) { fathom::kernels::detail::gemm_portable(q); }, "gemm_portable");
}

TEST_CASE("gemm rejects a c_in that partly overlaps C", "[kernels][gemm]") {
  std::vector<float> a(64, 1.5f), b(64, 0.5f), c(64, 2.0f);
  GemmParams<float> p{.a = a.data(),
                      .b = b.data(),
                      .c = c.data() + 4,
                      .c_in = c.data(),
                      .m = 3,
                      .n = 4,
                      .k = 5,
                      .beta = 1.0};
  try {
    fathom::kernels::gemm(Cpu{}, p);
    FAIL("expected fathom::Error");
  } catch (const fathom::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("gemm: c_in overlaps C") != std::string::npos);
  }
  const std::vector<float> before = c;
  p.c_in = c.data() + 16;  // the last element of C is c[15]: c_in right after it is disjoint
  fathom::kernels::gemm(Cpu{}, p);
  CHECK(c[4] == 1.5f * 0.5f * 5 + before[16]);
  p.c_in = c.data() + 15;
  CHECK_THROWS_AS(fathom::kernels::detail::gemm_portable(p), fathom::Error);
}

TEMPLATE_TEST_CASE("gemm with a batch stride of 0 reuses one B for every batch entry",
                   "[kernels][gemm]", double, float) {
  const std::int64_t m = 9, n = 11, k = 13, batch = 3;
  auto a = rng_uniform_values<TestType>(batch * m * k, 5);
  auto b = rng_uniform_values<TestType>(k * n, 6);
  std::vector<TestType> c(batch * m * n), c_each(m * n);
  GemmParams<TestType> p{.a = a.data(),
                         .b = b.data(),
                         .c = c.data(),
                         .m = m,
                         .n = n,
                         .k = k,
                         .stride_b = 0,
                         .batch = batch};
  fathom::kernels::gemm(Cpu{}, p);
  for (std::int64_t bi = 0; bi < batch; ++bi) {
    GemmParams<TestType> one{
        .a = a.data() + bi * m * k, .b = b.data(), .c = c_each.data(), .m = m, .n = n, .k = k};
    fathom::kernels::detail::gemm_portable(one);
    for (std::int64_t e = 0; e < m * n; ++e) {
      INFO("batch entry " << bi << ", element " << e);
      const double got = c[bi * m * n + e], want = c_each[e];
      REQUIRE_THAT(got, WithinRel(want, 1e-5) || WithinAbs(want, 1e-5));
    }
  }
}

TEST_CASE("gemm rejects leading dimensions shorter than a row and overlapping outputs",
          "[kernels][gemm]") {
  std::vector<float> a(64, 1.5f), b(64, 0.5f), c(64, 2.0f);
  GemmParams<float> p{
      .a = a.data(), .b = b.data(), .c = c.data(), .m = 3, .n = 4, .k = 5, .lda = 4};
  try {
    fathom::kernels::gemm(Cpu{}, p);
    FAIL("expected fathom::Error");
  } catch (const fathom::Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("lda >= 5") != std::string::npos);
    CHECK(msg.find("got 4") != std::string::npos);
  }
  GemmParams<float> q{.a = a.data(),
                      .b = b.data(),
                      .c = c.data(),
                      .m = 3,
                      .n = 4,
                      .k = 2,
                      .stride_c = 4,
                      .batch = 2};
  CHECK_THROWS_AS(fathom::kernels::detail::gemm_portable(q), fathom::Error);
}

TEMPLATE_TEST_CASE("column_sum matches a naive sum over rows", "[kernels][gemm]", double, float,
                   bf16) {
  const auto [rows, cols] = GENERATE(
      values<std::pair<std::int64_t, std::int64_t>>({{1, 1}, {7, 37}, {300, 5461}, {1025, 3}}));
  const bool accumulate = GENERATE(false, true);
  auto x = rng_uniform_values<TestType>(static_cast<std::size_t>(rows * cols), 11);
  auto out = rng_uniform_values<TestType>(static_cast<std::size_t>(cols), 12);
  const auto out0 = out;
  fathom::kernels::column_sum(
      Cpu{},
      ColumnSumParams<TestType>{
          .x = x.data(), .out = out.data(), .rows = rows, .cols = cols, .accumulate = accumulate});
  const double rtol = fathom::Precision<TestType>::rtol, atol = fathom::Precision<TestType>::atol;
  for (std::int64_t j = 0; j < cols; ++j) {
    double ref = accumulate ? to_double(out0[static_cast<std::size_t>(j)]) : 0.0,
           abs_sum = std::abs(ref);
    for (std::int64_t i = 0; i < rows; ++i) {
      ref += to_double(x[static_cast<std::size_t>(i * cols + j)]);
      abs_sum += std::abs(to_double(x[static_cast<std::size_t>(i * cols + j)]));
    }
    const double got = to_double(out[static_cast<std::size_t>(j)]);
    INFO(fathom::Precision<TestType>::name << " (" << rows << ", " << cols << "), accumulate "
                                           << accumulate << ", column " << j);
    REQUIRE(std::abs(got - ref) <=
            atol + rtol * (std::abs(ref) + abs_sum / std::sqrt(double(rows))));
  }
}

TEMPLATE_TEST_CASE("gemm_bias_grad is the GEMM and the column sum of A", "[kernels][gemm]", double,
                   float, bf16) {
  using T = TestType;
  // dW (M, N) = beta dW + dY^T X and db (M) (+)= sums of dY (K, M) over its K rows.
  const auto [m, n, k] =
      GENERATE(values<Shape3>({{1, 1, 1}, {37, 29, 41}, {768, 64, 300}, {5, 3, 0}}));
  const bool accumulate = GENERATE(false, true);
  const auto dy = rng_uniform_values<T>(static_cast<std::size_t>(k * m), 21);
  const auto x = rng_uniform_values<T>(static_cast<std::size_t>(k * n), 22);
  auto dw = rng_uniform_values<T>(static_cast<std::size_t>(m * n), 23);
  auto db = rng_uniform_values<T>(static_cast<std::size_t>(m), 24);
  if (!accumulate) std::fill(db.begin(), db.end(), std::numeric_limits<T>::quiet_NaN());
  const auto dw0 = dw, db0 = db;
  GemmParams<T> p{.a = dy.data(),
                  .b = x.data(),
                  .c = dw.data(),
                  .m = m,
                  .n = n,
                  .k = k,
                  .trans_a = true,
                  .beta = accumulate ? 1.0 : 0.0};
  fathom::kernels::gemm_bias_grad(Cpu{}, p, db.data(), accumulate);
  auto want_dw = dw0;
  GemmParams<T> ref = p;
  ref.c = want_dw.data();
  fathom::kernels::gemm(Cpu{}, ref);
  CHECK(same_bits(dw, want_dw));  // the same GEMM
  const double rtol = fathom::Precision<T>::rtol, atol = fathom::Precision<T>::atol;
  for (std::int64_t j = 0; j < m; ++j) {
    double want = accumulate ? to_double(db0[static_cast<std::size_t>(j)]) : 0.0,
           abs_sum = std::abs(want);
    for (std::int64_t i = 0; i < k; ++i) {
      const double v = to_double(dy[static_cast<std::size_t>(i * m + j)]);
      want += v, abs_sum += std::abs(v);
    }
    const double got = to_double(db[static_cast<std::size_t>(j)]);
    INFO(fathom::Precision<T>::name << " M " << m << ", K " << k << ", accumulate " << accumulate
                                    << ", column " << j << ": got " << got << ", want " << want);
    REQUIRE(
        std::abs(got - want) <=
        atol + rtol * (std::abs(want) + abs_sum / std::sqrt(double(std::max<std::int64_t>(k, 1)))));
  }
}

TEST_CASE("gemm_bias_grad rejects what is not a weight-gradient GEMM", "[kernels][gemm]") {
  std::vector<float> a(12, 1.0f), b(12, 1.0f), c(16, 0.0f), db(4, 0.0f);
  const GemmParams<float> p{
      .a = a.data(), .b = b.data(), .c = c.data(), .m = 4, .n = 4, .k = 3, .trans_a = true};
  fathom::kernels::gemm_bias_grad(Cpu{}, p, db.data(), false);
  CHECK(db[0] == 3.0f);
  GemmParams<float> q = p;
  q.trans_a = false;  // A stored (M, K): its column sums are not the bias gradient
  CHECK_THROWS_AS(fathom::kernels::gemm_bias_grad(Cpu{}, q, db.data(), false), fathom::Error);
  q = p;
  q.lda = 5;  // padded rows
  CHECK_THROWS_AS(fathom::kernels::gemm_bias_grad(Cpu{}, q, db.data(), false), fathom::Error);
  CHECK_THROWS_AS(fathom::kernels::gemm_bias_grad(Cpu{}, p, static_cast<float*>(nullptr), false),
                  fathom::Error);
}
