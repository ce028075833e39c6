// [cuda] tests for the CUDA GEMM and column sum (include/fathom/kernels/cuda/gemm.cuh) and for
// matmul/linear on CUDA: results in double, float and bf16 against a double reference computed on
// the host from the same inputs, at the model's shapes (the QKV projection of llama-130m's batch,
// (256*128, 768) x (768, 2304), d_ff 5461, the 50257-word LM head, batched attention products:
// sampled elements plus a whole edge row and column) and, in full, at awkward sizes over every
// transpose combination, batches, padded leading dimensions, unaligned pointers, alpha/beta
// (beta = 0 over a NaN-filled C) and bias; the beta term read from a separate c_in (C NaN-filled)
// on cuBLASLt, on the cuBLAS fallback (fp64, a batch reusing B) and with K = 0; plan caching with
// no allocation in steady state; the TF32 switch; run-to-run determinism; the weight-gradient GEMM
// with the bias gradient (gemm_bias_grad) and the GELU GEMMs with fused bias gradients on and off;
// all of these cuBLASLt paths again with algorithm autotuning on (whose timed candidates must
// leave C, added into with beta = 1, untouched), with its plans cached apart and counted; and
// fathom's own Hopper GEMM (gemm_sm90.cuh): gemm_swiglu's epilogue and its plain store.
#include <fathom/autograd/ops/gemm.hpp>
#include <fathom/cuda.hpp>
#include <fathom/kernels/cuda/gemm.cuh>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda/support.cuh"
#include "support/catch.hpp"

using fathom::bf16;
using fathom::Cpu;
using fathom::Cuda;
using fathom::Precision;
using fathom::scalar_cast;
using fathom::Shape;
using fathom::Tensor;
using fathom::kernels::ColumnSumParams;
using fathom::kernels::GemmParams;

using namespace fathom::test;

namespace {

template <class T>
double as_double(T v) {
  return scalar_cast<double>(v);
}

struct Dims {
  std::int64_t m, n, k;
};

struct Layout {
  std::int64_t batch = 1;
  bool bias = false;
  bool padded = false;      // leading dimensions and batch strides beyond packed
  std::int64_t offset = 0;  // elements before each operand in its buffer (1: unaligned pointers)
  double alpha = 1.0, beta = 0.0;
  // The beta term from a separate c_in (C's layout, `c_in_offset` elements into its buffer), C
  // NaN-filled: reading C's old contents instead would poison the result.
  bool c_in = false;
  std::int64_t c_in_offset = 0;
  bool shared_b = false;  // B's batch stride 0: one B for the whole batch (the cuBLAS path)
};

// gemm_dgelu's DGELU epilogue on or off while alive, as it was before after.
struct DgeluEpilogueScope {
  explicit DgeluEpilogueScope(bool on) : previous(fathom::kernels::dgelu_epilogue()) {
    fathom::kernels::set_dgelu_epilogue(on);
  }
  ~DgeluEpilogueScope() { fathom::kernels::set_dgelu_epilogue(previous); }
  DgeluEpilogueScope(const DgeluEpilogueScope&) = delete;
  DgeluEpilogueScope& operator=(const DgeluEpilogueScope&) = delete;
  bool previous;
};

// gemm_swiglu's Hopper epilogue on or off while alive, as it was before after.
struct SwigluEpilogueScope {
  explicit SwigluEpilogueScope(bool on) : previous(fathom::kernels::swiglu_epilogue()) {
    fathom::kernels::set_swiglu_epilogue(on);
  }
  ~SwigluEpilogueScope() { fathom::kernels::set_swiglu_epilogue(previous); }
  SwigluEpilogueScope(const SwigluEpilogueScope&) = delete;
  SwigluEpilogueScope& operator=(const SwigluEpilogueScope&) = delete;
  bool previous;
};

// One GEMM on the device, checked against a double reference at every element (full) or at
// sampled elements plus the whole last row and last column of the last batch entry.
template <class T>
void check_cuda_gemm(Dims d, bool ta, bool tb, const Layout& l, bool full, std::uint64_t seed,
                     double rtol = Precision<T>::rtol) {
  GemmParams<T> p{.m = d.m,
                  .n = d.n,
                  .k = d.k,
                  .trans_a = ta,
                  .trans_b = tb,
                  .batch = l.batch,
                  .alpha = l.alpha,
                  .beta = l.beta};
  const std::int64_t a_rows = ta ? d.k : d.m, a_cols = ta ? d.m : d.k;
  const std::int64_t b_rows = tb ? d.n : d.k, b_cols = tb ? d.k : d.n;
  const std::int64_t pad = l.padded ? 3 : 0, gap = l.padded ? 5 : 0;
  p.lda = a_cols + pad, p.ldb = b_cols + pad, p.ldc = d.n + pad;
  p.stride_a = a_rows * p.lda + gap, p.stride_b = l.shared_b ? 0 : b_rows * p.ldb + gap,
  p.stride_c = d.m * p.ldc + gap;
  const auto size_of = [&](std::int64_t stride) {
    return static_cast<std::size_t>(l.offset + l.batch * stride);
  };

  const auto a = uniform_values<T>(size_of(p.stride_a), seed);
  const auto b = uniform_values<T>(
      l.shared_b ? static_cast<std::size_t>(l.offset + b_rows * p.ldb) : size_of(p.stride_b),
      seed + 1);
  auto c = uniform_values<T>(size_of(p.stride_c), seed + 2);
  // With c_in, the values C would start with are c_in's (at its own offset), and C is all NaN.
  std::vector<T> c_in;
  if (l.c_in) {
    c_in.assign(static_cast<std::size_t>(l.c_in_offset), scalar_cast<T>(0.0));
    c_in.insert(c_in.end(), c.begin() + l.offset, c.end());
    std::fill(c.begin(), c.end(), std::numeric_limits<T>::quiet_NaN());
  }
  // The value the beta term reads for element e of C's buffer.
  const auto c_old = [&](std::size_t e) {
    return l.c_in ? c_in[static_cast<std::size_t>(static_cast<std::int64_t>(e) - l.offset +
                                                  l.c_in_offset)]
                  : c[e];
  };
  if (l.beta == 0.0) {
    // beta == 0 must not read C: NaN there would poison the result if it did.
    for (std::size_t e = static_cast<std::size_t>(l.offset); e < c.size(); ++e)
      c[e] = std::numeric_limits<T>::quiet_NaN();
  }
  const auto bias = uniform_values<T>(static_cast<std::size_t>(l.offset + d.n), seed + 3);
  auto a_dev = to_device(a), b_dev = to_device(b), c_dev = to_device(c), bias_dev = to_device(bias);
  auto c_in_dev = l.c_in ? to_device(c_in) : Tensor<T, Cuda>();
  GemmParams<T> q = p;
  q.a = a_dev.data() + l.offset, q.b = b_dev.data() + l.offset, q.c = c_dev.data() + l.offset;
  q.bias = l.bias ? bias_dev.data() + l.offset : nullptr;
  q.c_in = l.c_in ? c_in_dev.data() + l.c_in_offset : nullptr;
  fathom::kernels::gemm(Cuda{}, q);
  const auto out = c_dev.to_vector();
  if (l.c_in) CHECK(same_bits(c_in_dev.to_vector(), c_in));  // only read

  std::vector<std::pair<std::int64_t, std::int64_t>> rows_cols;  // (flat row over the batch, col)
  const std::int64_t total_rows = l.batch * d.m;
  if (full) {
    for (std::int64_t r = 0; r < total_rows; ++r)
      for (std::int64_t j = 0; j < d.n; ++j) rows_cols.emplace_back(r, j);
  } else {
    for (std::uint64_t s = 0; s < 512; ++s) {
      const auto r =
          static_cast<std::int64_t>(hashed_uniform(seed + 7, s) * static_cast<double>(total_rows));
      const auto j =
          static_cast<std::int64_t>(hashed_uniform(seed + 8, s) * static_cast<double>(d.n));
      rows_cols.emplace_back(std::min(r, total_rows - 1), std::min(j, d.n - 1));
    }
    for (std::int64_t j = 0; j < d.n; ++j) rows_cols.emplace_back(total_rows - 1, j);
    for (std::int64_t i = 0; i < d.m; ++i) rows_cols.emplace_back((l.batch - 1) * d.m + i, d.n - 1);
  }

  const double atol = Precision<T>::atol;
  const double root_k = std::sqrt(static_cast<double>(std::max<std::int64_t>(d.k, 1)));
  std::int64_t bad = 0;
  std::string first;
  for (auto [r, j] : rows_cols) {
    const std::int64_t bi = r / d.m, i = r % d.m;
    const std::int64_t a0 = l.offset + bi * p.stride_a, b0 = l.offset + bi * p.stride_b;
    double sum = 0.0, abs_sum = 0.0;
    for (std::int64_t t = 0; t < d.k; ++t) {
      const double x =
          as_double(a[static_cast<std::size_t>(a0 + (ta ? t * p.lda + i : i * p.lda + t))]);
      const double y =
          as_double(b[static_cast<std::size_t>(b0 + (tb ? j * p.ldb + t : t * p.ldb + j))]);
      sum += x * y;
      abs_sum += std::abs(x * y);
    }
    const auto ce = static_cast<std::size_t>(l.offset + bi * p.stride_c + i * p.ldc + j);
    double ref = l.alpha * sum, scale = std::abs(l.alpha) * abs_sum;
    if (l.beta != 0.0)
      ref += l.beta * as_double(c_old(ce)), scale += std::abs(l.beta * as_double(c_old(ce)));
    if (l.bias) {
      const double bj = as_double(bias[static_cast<std::size_t>(l.offset + j)]);
      ref += bj, scale += std::abs(bj);
    }
    // Errors of a K-term sum grow like sqrt(K) times a term: the tolerance is relative to |ref|
    // plus the typical magnitude sum|terms| / sqrt(K).
    const double tol = atol + rtol * (std::abs(ref) + scale / root_k);
    const double got = as_double(out[ce]);
    if (!(std::abs(got - ref) <= tol) && bad++ == 0) {
      std::ostringstream s;
      s << "element (batch " << bi << ", row " << i << ", col " << j << "): got " << got
        << ", want " << ref << " (tolerance " << tol << ")";
      first = s.str();
    }
  }
  std::int64_t padding_changed = 0;
  if (full) {
    for (std::size_t e = 0; e < out.size(); ++e) {
      const std::int64_t rel = static_cast<std::int64_t>(e) - l.offset;
      const std::int64_t bi = rel < 0 ? -1 : rel / p.stride_c, w = rel < 0 ? 0 : rel % p.stride_c;
      const bool inside = bi >= 0 && bi < l.batch && w / p.ldc < d.m && w % p.ldc < d.n;
      if (!inside && !same_bits(out[e], c[e])) ++padding_changed;
    }
  }
  INFO(Precision<T>::name << " M " << d.m << ", N " << d.n << ", K " << d.k << ", trans_a " << ta
                          << ", trans_b " << tb << ", batch " << l.batch << ", bias " << l.bias
                          << ", padded " << l.padded << ", offset " << l.offset << ", alpha "
                          << l.alpha << ", beta " << l.beta << ", c_in " << l.c_in << " (offset "
                          << l.c_in_offset << "), shared B " << l.shared_b << ": " << bad << " of "
                          << rows_cols.size() << " checked elements off; first " << first);
  CHECK(bad == 0);
  CHECK(padding_changed == 0);
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA gemm matches the double reference at the model's shapes", "[cuda][gemm]",
                   double, float, bf16) {
  struct Case {
    const char* what;
    Dims d;
    bool ta, tb;
    Layout l;
  };
  const Case c = GENERATE(values<Case>({
      {"QKV projection y = x W^T + b",
       {256 * 128, 2304, 768},
       false,
       true,
       {1, true, false, 0, 1.0, 0.0}},
      {"QKV dX = dY W", {256 * 128, 768, 2304}, false, false, {1, false, false, 0, 1.0, 1.0}},
      {"QKV dW += dY^T X", {2304, 768, 256 * 128}, true, false, {1, false, false, 0, 1.0, 1.0}},
      {"MLP up, d_ff 5461", {4096, 5461, 768}, false, true, {1, true, false, 0, 1.0, 0.0}},
      {"MLP down, d_ff 5461", {4096, 768, 5461}, false, true, {1, false, false, 0, 1.0, 0.0}},
      {"LM head, vocab 50257", {1024, 50257, 768}, false, true, {1, false, false, 0, 1.0, 0.0}},
      {"LM head dW, vocab 50257", {50257, 768, 1024}, true, false, {1, false, false, 0, 1.0, 1.0}},
      {"attention scores q k^T", {256, 256, 64}, false, true, {48, false, false, 0, 0.125, 0.0}},
      {"attention p v", {256, 64, 256}, false, false, {48, false, false, 0, 1.0, 0.0}},
  }));
  INFO(c.what);
  check_cuda_gemm<TestType>(c.d, c.ta, c.tb, c.l, /*full=*/false,
                            100 + static_cast<std::uint64_t>(c.d.k));
}

TEMPLATE_TEST_CASE("CUDA gemm matches the double reference at awkward sizes, every layout",
                   "[cuda][gemm]", double, float, bf16) {
  const Dims d = GENERATE(values<Dims>({{1, 1, 1},
                                        {1, 7, 5},
                                        {37, 29, 41},
                                        {5461, 3, 37},
                                        {3, 5461, 37},
                                        {65, 130, 5461},
                                        {1, 50257, 7}}));
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const Layout l = GENERATE(values<Layout>({{1, false, false, 0, 1.0, 0.0},
                                            {3, true, true, 0, 0.75, -0.5},
                                            {2, true, false, 1, -1.25, 1.0},
                                            {1, true, false, 1, 1.0, 0.0}}));
  check_cuda_gemm<TestType>(d, ta, tb, l, /*full=*/true,
                            200 + static_cast<std::uint64_t>(d.m + d.k));
}

TEMPLATE_TEST_CASE("CUDA gemm with K = 0 gives beta * C + bias", "[cuda][gemm]", double, float,
                   bf16) {
  const Layout l =
      GENERATE(values<Layout>({{1, false, false, 0, 1.0, 0.0}, {2, true, true, 0, 2.0, 0.5}}));
  check_cuda_gemm<TestType>({4, 6, 0}, false, true, l, /*full=*/true, 300);
}

TEMPLATE_TEST_CASE("CUDA gemm's beta term reads c_in, never C's previous contents", "[cuda][gemm]",
                   double, float, bf16) {
  // Aligned sizes (cuBLASLt's path for float and bf16; fp64 always takes cuBLAS, which copies c_in
  // into C first) and odd ones; packed and padded batches; c_in on and off the 16-byte grid apart
  // from C.
  const Dims d = GENERATE(values<Dims>({{64, 96, 128}, {7, 13, 5}, {37, 29, 41}}));
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const double beta = GENERATE(1.0, 0.5, -2.0);
  Layout l = GENERATE(values<Layout>({{1, false, false, 0, 1.0, 0.0, true, 0},
                                      {1, true, false, 0, 0.75, 0.0, true, 0},
                                      {2, true, false, 0, 1.0, 0.0, true, 0},
                                      {2, true, true, 0, -1.5, 0.0, true, 0},
                                      {1, true, false, 0, 1.0, 0.0, true, 1},
                                      {2, false, false, 1, 1.0, 0.0, true, 0}}));
  l.beta = beta;
  check_cuda_gemm<TestType>(d, ta, tb, l, /*full=*/true,
                            600 + static_cast<std::uint64_t>(d.m + d.k));
}

TEMPLATE_TEST_CASE("CUDA gemm with c_in on the cuBLAS path (one B for the batch) and with K = 0",
                   "[cuda][gemm]", double, float, bf16) {
  // A batch stride of 0 sends float and bf16 to cuBLAS too: c_in is copied into C (one 2D copy
  // when the batch entries are packed, one per entry across the padded ones), then accumulated.
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const double beta = GENERATE(1.0, -2.0);
  Layout l = GENERATE(values<Layout>({{3, true, false, 0, 1.0, 0.0, true, 0, true},
                                      {2, false, true, 0, 0.5, 0.0, true, 0, true},
                                      {2, true, true, 1, 1.0, 0.0, true, 1, true}}));
  l.beta = beta;
  check_cuda_gemm<TestType>({33, 17, 65}, ta, tb, l, /*full=*/true, 650);
  // K = 0: C = beta * c_in + bias.
  l.shared_b = false;
  check_cuda_gemm<TestType>({7, 13, 0}, ta, tb, l, /*full=*/true, 660);
}

TEMPLATE_TEST_CASE("CUDA gemm with c_in == c is the in-place GEMM, bit for bit", "[cuda][gemm]",
                   double, float, bf16) {
  const std::int64_t m = 64, n = 96, k = 128;
  auto a = to_device(uniform_values<TestType>(m * k, 31));
  auto b = to_device(uniform_values<TestType>(n * k, 32));
  const auto c0 = uniform_values<TestType>(m * n, 33);
  auto in_place = to_device(c0), self = to_device(c0);
  GemmParams<TestType> p{.a = a.data(),
                         .b = b.data(),
                         .c = in_place.data(),
                         .m = m,
                         .n = n,
                         .k = k,
                         .trans_b = true,
                         .beta = 0.5};
  fathom::kernels::gemm(Cuda{}, p);
  p.c = self.data();
  p.c_in = self.data();
  fathom::kernels::gemm(Cuda{}, p);
  CHECK(same_bits(self.to_vector(), in_place.to_vector()));
}

TEMPLATE_TEST_CASE("CUDA gemm with a batch stride of 0 reuses one B for the whole batch",
                   "[cuda][gemm]", double, float, bf16) {
  const std::int64_t m = 33, n = 17, k = 65, batch = 4;
  const auto a = uniform_values<TestType>(batch * m * k, 1), b = uniform_values<TestType>(k * n, 2);
  auto a_dev = to_device(a), b_dev = to_device(b);
  Tensor<TestType, Cuda> c_dev(Shape{batch * m * n});
  fathom::kernels::gemm(Cuda{}, GemmParams<TestType>{.a = a_dev.data(),
                                                     .b = b_dev.data(),
                                                     .c = c_dev.data(),
                                                     .m = m,
                                                     .n = n,
                                                     .k = k,
                                                     .stride_b = 0,
                                                     .batch = batch});
  const auto c = c_dev.to_vector();
  for (std::int64_t bi = 0; bi < batch; ++bi)
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j) {
        double ref = 0.0, abs_sum = 0.0;
        for (std::int64_t t = 0; t < k; ++t) {
          const double x = as_double(a[(bi * m + i) * k + t]) * as_double(b[t * n + j]);
          ref += x, abs_sum += std::abs(x);
        }
        INFO(Precision<TestType>::name << " batch " << bi << ", element (" << i << ", " << j
                                       << ")");
        REQUIRE(std::abs(as_double(c[(bi * m + i) * n + j]) - ref) <=
                Precision<TestType>::atol +
                    Precision<TestType>::rtol * (std::abs(ref) + abs_sum / std::sqrt(double(k))));
      }
}

TEST_CASE("CUDA gemm caches one plan per problem and allocates nothing in steady state",
          "[cuda][gemm]") {
  const std::int64_t m = 96, n = 80, k = 72;
  auto a = to_device(uniform_values<bf16>(m * k, 1)), b = to_device(uniform_values<bf16>(n * k, 2));
  auto bias = to_device(uniform_values<bf16>(n, 3));
  Tensor<bf16, Cuda> c(Shape{m * n});
  GemmParams<bf16> p{.a = a.data(),
                     .b = b.data(),
                     .c = c.data(),
                     .bias = bias.data(),
                     .m = m,
                     .n = n,
                     .k = k,
                     .trans_b = true};
  fathom::kernels::gemm(Cuda{}, p);
  fathom::cuda::synchronize();
  const std::size_t plans = fathom::kernels::gemm_plan_count();
  const auto mallocs = fathom::cuda::CachingAllocator::instance().stats().cuda_mallocs;
  for (int i = 0; i < 5; ++i) fathom::kernels::gemm(Cuda{}, p);
  fathom::cuda::synchronize();
  CHECK(fathom::kernels::gemm_plan_count() == plans);
  CHECK(fathom::cuda::CachingAllocator::instance().stats().cuda_mallocs == mallocs);
  GemmParams<bf16> other = p;
  other.m = m - 1;  // a new problem: one more plan
  fathom::kernels::gemm(Cuda{}, other);
  CHECK(fathom::kernels::gemm_plan_count() == plans + 1);
}

TEST_CASE("CUDA gemm in fp32 with TF32 allowed stays within TF32 accuracy", "[cuda][gemm]") {
  REQUIRE_FALSE(fathom::kernels::gemm_allow_tf32());  // off by default
  const Dims d{512, 384, 768};
  const Layout l{1, true, false, 0, 1.0, 0.0};
  check_cuda_gemm<float>(d, false, true, l, /*full=*/false, 400);
  const std::size_t plans = fathom::kernels::gemm_plan_count();
  fathom::kernels::set_gemm_allow_tf32(true);
  // TF32 keeps 10 mantissa bits: each product is off by up to about 2^-10 relative.
  check_cuda_gemm<float>(d, false, true, l, /*full=*/false, 400, 5e-3);
  CHECK(fathom::kernels::gemm_plan_count() == plans + 1);  // a plan of its own
  fathom::kernels::set_gemm_allow_tf32(false);
  check_cuda_gemm<float>(d, false, true, l, /*full=*/false, 401);
  CHECK(fathom::kernels::gemm_plan_count() == plans + 1);
}

TEMPLATE_TEST_CASE("CUDA gemm with autotuning on matches the double reference", "[cuda][gemm]",
                   float, bf16) {
  // Odd and even sizes, every transpose, batches, padding, unaligned pointers, a bias, and
  // beta = 1 over a random C: the result must be alpha op(A) op(B) + C_before (+ bias). Had the
  // timed candidates written into the real C, it would hold several products instead. Where the
  // GEMM overwrites C (beta = 0, or c_in), they write into C only when it has no padding: the
  // check of the padding's bits fails if a candidate's sign flip reached it.
  const AutotuneScope scope(true);
  const Dims d = GENERATE(values<Dims>({{37, 29, 41}, {64, 96, 128}, {65, 130, 5461}}));
  const bool ta = GENERATE(false, true);
  const bool tb = GENERATE(false, true);
  const Layout l = GENERATE(values<Layout>({{1, true, false, 0, 1.0, 0.0},
                                            {1, false, false, 0, 1.0, 1.0},
                                            {1, true, false, 0, 0.5, 1.0},
                                            {3, true, true, 0, 0.75, 1.0},
                                            {2, true, false, 1, -1.25, 1.0},
                                            {2, true, false, 0, 1.0, 1.0, true, 0},
                                            {1, false, false, 0, 1.0, -2.0, true, 1},
                                            {2, false, true, 0, 1.0, 0.0},
                                            {2, true, true, 0, 1.0, 1.0, true, 0}}));
  check_cuda_gemm<TestType>(d, ta, tb, l, /*full=*/true,
                            500 + static_cast<std::uint64_t>(d.m + d.k));
}

TEST_CASE("CUDA gemm with autotuning on at the model's shapes: beta = 1 adds into C",
          "[cuda][gemm]") {
  const AutotuneScope scope(true);
  // The weight-gradient GEMM dW += dY^T X (large K: split-K candidates) and the projection with
  // its bias, in bf16.
  check_cuda_gemm<bf16>({2304, 768, 256 * 32}, true, false, {1, false, false, 0, 1.0, 1.0},
                        /*full=*/false, 510);
  check_cuda_gemm<bf16>({256 * 32, 2304, 768}, false, true, {1, true, false, 0, 1.0, 0.0},
                        /*full=*/false, 511);
  check_cuda_gemm<float>({768, 3072, 2048}, true, false, {1, false, false, 0, 1.0, 1.0},
                         /*full=*/false, 512);
}

TEST_CASE("CUDA gemm autotuning: plans of their own, each counted once, on by default",
          "[cuda][gemm]") {
  REQUIRE(fathom::kernels::gemm_autotune());  // on by default
  // A problem no other test makes.
  const Dims d{120, 72, 304};
  const Layout l{1, true, false, 0, 1.0, 1.0};
  const auto counted = [](const fathom::kernels::GemmAutotuneStats& s) {
    return s.plans_timed + s.plans_untimed;
  };
  const auto stats0 = fathom::kernels::gemm_autotune_stats();
  const std::size_t plans0 = fathom::kernels::gemm_plan_count();
  {
    const AutotuneScope scope(false);
    check_cuda_gemm<bf16>(d, false, true, l, /*full=*/true, 520);
    CHECK(fathom::kernels::gemm_plan_count() == plans0 + 1);
    CHECK(counted(fathom::kernels::gemm_autotune_stats()) == counted(stats0));  // off: not counted
  }
  CHECK(fathom::kernels::gemm_autotune());  // the scope turned it back on
  check_cuda_gemm<bf16>(d, false, true, l, /*full=*/true, 521);
  CHECK(fathom::kernels::gemm_plan_count() == plans0 + 2);  // a plan of its own
  const auto stats1 = fathom::kernels::gemm_autotune_stats();
  CHECK(counted(stats1) == counted(stats0) + 1);
  CHECK(stats1.algorithms_changed - stats0.algorithms_changed <=
        stats1.plans_timed - stats0.plans_timed);
  check_cuda_gemm<bf16>(d, false, true, l, /*full=*/true, 522);  // cached: not tuned again
  CHECK(fathom::kernels::gemm_plan_count() == plans0 + 2);
  CHECK(counted(fathom::kernels::gemm_autotune_stats()) == counted(stats1));
  {
    const AutotuneScope scope(false);
    check_cuda_gemm<bf16>(d, false, true, l, /*full=*/true, 523);  // the first plan again
    CHECK(fathom::kernels::gemm_plan_count() == plans0 + 2);
  }
}

TEST_CASE("CUDA gemm autotuning writes its candidates into a C it overwrites, not into scratch",
          "[cuda][gemm]") {
  // A GEMM that overwrites its C (beta = 0, or the beta term from a separate c_in) with no
  // padding lets autotuning's candidates write there: a plan's first use then allocates nothing
  // near C's size. With beta = 1 (C is added into) they need a scratch C as large as C. Problems
  // no other test makes; C is 8 MiB.
  const AutotuneScope scope(true);
  const std::int64_t m = 2048, n = 2056, k = 136;
  auto a = to_device(uniform_values<bf16>(m * k, 530)),
       b = to_device(uniform_values<bf16>(n * k, 531));
  auto c_in = to_device(uniform_values<bf16>(m * n, 532));
  Tensor<bf16, Cuda> c(Shape{m * n});
  const std::size_t c_bytes = static_cast<std::size_t>(m * n) * sizeof(bf16);
  auto& allocator = fathom::cuda::CachingAllocator::instance();
  // Bytes in use at the highest point of the problem's first use, beyond those before it.
  const auto first_use_peak = [&](const GemmParams<bf16>& p) {
    fathom::cuda::synchronize();
    const std::size_t before = allocator.stats().bytes_in_use;
    allocator.reset_peak();
    const auto stats0 = fathom::kernels::gemm_autotune_stats();
    fathom::kernels::gemm(Cuda{}, p);
    fathom::cuda::synchronize();
    const auto stats = fathom::kernels::gemm_autotune_stats() - stats0;
    CHECK(stats.plans_timed + stats.plans_untimed == 1);
    return allocator.stats().peak_bytes_in_use - before;
  };
  GemmParams<bf16> p{
      .a = a.data(), .b = b.data(), .c = c.data(), .m = m, .n = n, .k = k, .trans_b = true};
  CHECK(first_use_peak(p) < c_bytes / 4);  // beta = 0
  p.k = k + 8, p.beta = 1.0, p.c_in = c_in.data();
  CHECK(first_use_peak(p) < c_bytes / 4);  // the beta term from c_in
  p.k = k + 16, p.c_in = nullptr;
  CHECK(first_use_peak(p) >= c_bytes);  // beta = 1 adds into C: a scratch C
}

TEST_CASE("CUDA device_fingerprint: the same bits give the same print, a changed word another",
          "[cuda][gemm]") {
  using fathom::kernels::detail::device_fingerprint;
  const std::size_t n = 100003;  // an odd number of bf16 words, more than one block's
  auto values = uniform_values<bf16>(n, 530);
  values[17] = std::numeric_limits<bf16>::quiet_NaN();  // raw bits: a NaN is a word like any other
  const auto print = [](const Tensor<bf16, Cuda>& t, std::size_t words) {
    return device_fingerprint({{t.data(), words * sizeof(bf16)}});
  };
  const auto a = to_device(values), b = to_device(values);
  const std::uint64_t pa = print(a, n);
  CHECK(pa == print(a, n));
  CHECK(pa == print(b, n));  // another allocation, the same bits
  CHECK(print(a, n - 1) != pa);
  for (const std::size_t at : {std::size_t{0}, std::size_t{1}, n / 2, n - 1}) {
    for (const int bit : {0, 7, 15}) {
      auto changed = values;
      changed[at].bits = static_cast<std::uint16_t>(changed[at].bits ^ (1u << bit));
      INFO("word " << at << ", bit " << bit);
      CHECK(print(to_device(changed), n) != pa);
    }
  }
  // Two different words swapped: the same multiset of words, in other places.
  std::size_t other = 1;
  while (values[other].bits == values[0].bits) ++other;
  auto swapped = values;
  std::swap(swapped[0], swapped[other]);
  CHECK(print(to_device(swapped), n) != pa);
  // A list of buffers: each one's place counts.
  const auto c = to_device(swapped);
  const std::uint64_t ac = device_fingerprint({{a.data(), n * sizeof(bf16)}, {c.data(), n * 2}});
  const std::uint64_t ca = device_fingerprint({{c.data(), n * sizeof(bf16)}, {a.data(), n * 2}});
  CHECK(ac != ca);
  CHECK(ac == device_fingerprint({{b.data(), n * sizeof(bf16)}, {c.data(), n * 2}}));
}

TEST_CASE("CUDA flip_signs negates every element in place, NaNs and zeros included",
          "[cuda][gemm]") {
  using fathom::kernels::detail::flip_signs;
  auto bf = uniform_values<bf16>(1001, 531);
  bf[3] = std::numeric_limits<bf16>::quiet_NaN();
  bf[4] = bf16(0.0f);
  auto bf_dev = to_device(bf);
  flip_signs({bf_dev.data(), bf.size() * sizeof(bf16)}, sizeof(bf16));
  const auto bf_out = bf_dev.to_vector();
  std::size_t bad = 0;
  for (std::size_t i = 0; i < bf.size(); ++i)
    bad += bf_out[i].bits != static_cast<std::uint16_t>(bf[i].bits ^ 0x8000u);
  CHECK(bad == 0);
  auto f = uniform_values<float>(777, 532);
  f[5] = std::numeric_limits<float>::quiet_NaN();
  auto f_dev = to_device(f);
  flip_signs({f_dev.data(), f.size() * sizeof(float)}, sizeof(float));
  const auto f_out = f_dev.to_vector();
  bad = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    std::uint32_t want = 0, got = 0;
    std::memcpy(&want, &f[i], sizeof want);
    std::memcpy(&got, &f_out[i], sizeof got);
    bad += got != (want ^ 0x80000000u);
  }
  CHECK(bad == 0);
}

namespace {

// C (and the bias gradient) of one problem, with GEMM autotuning on or off: a fresh plan each
// way (plans are cached apart by the setting).
template <class T>
std::pair<std::vector<T>, std::vector<T>> gemm_with_autotune(bool autotune, const Dims& d,
                                                             bool trans_a, bool trans_b,
                                                             double beta, bool bias, bool bias_grad,
                                                             std::uint64_t seed) {
  const AutotuneScope tuning(autotune);
  const auto a = to_device(uniform_values<T>(static_cast<std::size_t>(d.m * d.k), seed));
  const auto b = to_device(uniform_values<T>(static_cast<std::size_t>(d.k * d.n), seed + 1));
  auto c = to_device(uniform_values<T>(static_cast<std::size_t>(d.m * d.n), seed + 2));
  const auto bias_values = to_device(uniform_values<T>(static_cast<std::size_t>(d.n), seed + 3));
  auto sums = to_device(uniform_values<T>(static_cast<std::size_t>(d.m), seed + 4));
  const GemmParams<T> p{.a = a.data(),
                        .b = b.data(),
                        .c = c.data(),
                        .bias = bias ? bias_values.data() : nullptr,
                        .m = d.m,
                        .n = d.n,
                        .k = d.k,
                        .trans_a = trans_a,
                        .trans_b = trans_b,
                        .beta = beta};
  if (bias_grad)
    fathom::kernels::gemm_bias_grad(Cuda{}, p, sums.data(), beta != 0.0);
  else
    fathom::kernels::gemm(Cuda{}, p);
  return {c.to_vector(), bias_grad ? sums.to_vector() : std::vector<T>{}};
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA gemm autotuning keeps the heuristic's results to the bit", "[cuda][gemm]",
                   float, bf16) {
  // Problems no other test makes. The weight-gradient shapes have K in the thousands, where
  // cuBLASLt offers split-K algorithms, whose sums run in another order: autotuning must set
  // them (and any other algorithm with other bits) aside.
  struct Problem {
    Dims d;
    bool trans_a, trans_b;
    double beta;
    bool bias, bias_grad;
  };
  const Problem problem = GENERATE(values<Problem>({
      {{1040, 784, 8192}, true, false, 1.0, false, false},   // dW += dY^T X
      {{1040, 784, 8192}, true, false, 0.0, false, true},    // dW = dY^T X, db in the epilogue
      {{4096, 1040, 784}, false, true, 0.0, true, false},    // Y = X W^T + b
      {{4096, 784, 1040}, false, false, 1.0, false, false},  // dX += dY W
  }));
  const Dims& d = problem.d;
  INFO(Precision<TestType>::name << " M " << d.m << ", N " << d.n << ", K " << d.k << ", beta "
                                 << problem.beta << ", bias " << problem.bias << ", bias grad "
                                 << problem.bias_grad);
  const auto stats0 = fathom::kernels::gemm_autotune_stats();
  const auto plain =
      gemm_with_autotune<TestType>(false, d, problem.trans_a, problem.trans_b, problem.beta,
                                   problem.bias, problem.bias_grad, 540);
  const auto tuned =
      gemm_with_autotune<TestType>(true, d, problem.trans_a, problem.trans_b, problem.beta,
                                   problem.bias, problem.bias_grad, 540);
  const auto stats = fathom::kernels::gemm_autotune_stats() - stats0;
  INFO("plans timed " << stats.plans_timed << ", kept another algorithm "
                      << stats.algorithms_changed << ", candidates set aside "
                      << stats.algorithms_rejected);
  REQUIRE(plain.first.size() == tuned.first.size());
  CHECK(std::memcmp(plain.first.data(), tuned.first.data(),
                    plain.first.size() * sizeof(TestType)) == 0);
  REQUIRE(plain.second.size() == tuned.second.size());
  CHECK(std::memcmp(plain.second.data(), tuned.second.data(),
                    plain.second.size() * sizeof(TestType)) == 0);
}

TEST_CASE("CUDA gemm gives bitwise identical results run to run", "[cuda][gemm]") {
  const std::int64_t m = 2048, n = 768, k = 4096;  // K large enough for split-K algorithms
  auto a = to_device(uniform_values<bf16>(k * m, 5)), b = to_device(uniform_values<bf16>(k * n, 6));
  Tensor<bf16, Cuda> c1(Shape{m * n}), c2(Shape{m * n});
  GemmParams<bf16> p{
      .a = a.data(), .b = b.data(), .c = c1.data(), .m = m, .n = n, .k = k, .trans_a = true};
  fathom::kernels::gemm(Cuda{}, p);
  p.c = c2.data();
  fathom::kernels::gemm(Cuda{}, p);
  const auto v1 = c1.to_vector(), v2 = c2.to_vector();
  CHECK(std::memcmp(v1.data(), v2.data(), v1.size() * sizeof(bf16)) == 0);
}

TEMPLATE_TEST_CASE("CUDA column_sum matches a double sum over rows", "[cuda][gemm]", double, float,
                   bf16) {
  const auto [rows, cols] = GENERATE(values<std::pair<std::int64_t, std::int64_t>>(
      {{1, 1}, {37, 5461}, {256 * 128, 768}, {300, 50257}, {0, 5}}));
  const bool accumulate = GENERATE(false, true);
  const auto x = uniform_values<TestType>(static_cast<std::size_t>(rows * cols), 21);
  const auto out0 = uniform_values<TestType>(static_cast<std::size_t>(cols), 22);
  auto x_dev = to_device(x), out_dev = to_device(out0);
  fathom::kernels::column_sum(Cuda{}, ColumnSumParams<TestType>{.x = x_dev.data(),
                                                                .out = out_dev.data(),
                                                                .rows = rows,
                                                                .cols = cols,
                                                                .accumulate = accumulate});
  const auto out = out_dev.to_vector();
  std::vector<double> ref(static_cast<std::size_t>(cols)), abs_sum(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) {
    ref[j] = accumulate ? as_double(out0[j]) : 0.0;
    abs_sum[j] = std::abs(ref[j]);
  }
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) {
      const double v = as_double(x[i * cols + j]);
      ref[j] += v, abs_sum[j] += std::abs(v);
    }
  const double root = std::sqrt(static_cast<double>(std::max<std::int64_t>(rows, 1)));
  std::int64_t bad = 0, first = -1;
  for (std::int64_t j = 0; j < cols; ++j) {
    const double tol = Precision<TestType>::atol +
                       Precision<TestType>::rtol * (std::abs(ref[j]) + abs_sum[j] / root);
    if (!(std::abs(as_double(out[j]) - ref[j]) <= tol) && bad++ == 0) first = j;
  }
  INFO(Precision<TestType>::name << " (" << rows << ", " << cols << "), accumulate " << accumulate
                                 << ": first bad column " << first);
  CHECK(bad == 0);
}

namespace {

using fathom::kernels::BiasGradRoute;

// Sets the bias-gradient route for one scope (a failed check leaves the default for the next).
struct RouteScope {
  explicit RouteScope(BiasGradRoute route) { fathom::kernels::set_bias_grad_route(route); }
  ~RouteScope() { fathom::kernels::set_bias_grad_route(BiasGradRoute::fused); }
};

const char* name_of(BiasGradRoute r) {
  return r == BiasGradRoute::fused ? "fused" : r == BiasGradRoute::dgelu ? "dgelu" : "separate";
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA gemm_bias_grad matches the double reference, fused and separate",
                   "[cuda][gemm]", double, float, bf16) {
  using T = TestType;
  const BiasGradRoute route =
      GENERATE(BiasGradRoute::fused, BiasGradRoute::dgelu, BiasGradRoute::separate);
  const RouteScope scope(route);
  const bool fuse = route == BiasGradRoute::fused;  // gemm_bias_grad's epilogue
  struct Case {
    std::int64_t m, n, k;  // dW (M, N) = dY^T X: M out_features, N in_features, K rows
    bool full;             // every element of dW checked, else 512 sampled
  };
  const Case c = GENERATE(values<Case>({{2304, 768, 4096, false},  // GPT-2's c_attn, 4 sequences
                                        {768, 3072, 2048, false},  // GPT-2's MLP c_proj
                                        {40, 96, 70, true},
                                        {37, 29, 41, true},
                                        {3, 517, 37, true},
                                        {1, 1, 1, true}}));
  const bool accumulate = GENERATE(false, true);
  const std::int64_t offset = GENERATE(0, 1);  // 1: the bias gradient off the 16-byte grid
  // Autotuned, the BGRADB epilogue's candidates write their sums to a scratch vector, and dW to
  // scratch when it is accumulated into, else into dW itself.
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO(Precision<T>::name << " route " << name_of(route) << ", M " << c.m << ", N " << c.n << ", K "
                          << c.k << ", accumulate " << accumulate << ", offset " << offset
                          << ", autotune " << autotune);
  const auto dy = uniform_values<T>(static_cast<std::size_t>(c.k * c.m), 51);
  const auto x = uniform_values<T>(static_cast<std::size_t>(c.k * c.n), 52);
  auto dw0 = uniform_values<T>(static_cast<std::size_t>(c.m * c.n), 53);
  auto db0 = uniform_values<T>(static_cast<std::size_t>(c.m), 54);
  if (!accumulate) {  // written fresh: neither may be read
    std::fill(dw0.begin(), dw0.end(), std::numeric_limits<T>::quiet_NaN());
    std::fill(db0.begin(), db0.end(), std::numeric_limits<T>::quiet_NaN());
  }
  auto dy_dev = to_device(dy), x_dev = to_device(x), dw_dev = to_device(dw0);
  DeviceArray<T> db_dev(db0, offset);
  const auto fused0 = fathom::kernels::detail::fused_bias_grad_runs(),
             unfused0 = fathom::kernels::detail::unfused_bias_grad_runs();
  fathom::kernels::gemm_bias_grad(Cuda{},
                                  GemmParams<T>{.a = dy_dev.data(),
                                                .b = x_dev.data(),
                                                .c = dw_dev.data(),
                                                .m = c.m,
                                                .n = c.n,
                                                .k = c.k,
                                                .trans_a = true,
                                                .beta = accumulate ? 1.0 : 0.0},
                                  db_dev.data(), accumulate);
  const auto fused = fathom::kernels::detail::fused_bias_grad_runs() - fused0,
             unfused = fathom::kernels::detail::unfused_bias_grad_runs() - unfused0;
  INFO("fused " << fused << ", fell back " << unfused);
  if (!fuse || std::is_same_v<T, double>)
    CHECK(fused + unfused == 0);  // the separate column sum, as asked
  else
    CHECK(fused + unfused == 1);
  const auto dw = dw_dev.to_vector(), db = db_dev.values();

  const double rtol = Precision<T>::rtol, atol = Precision<T>::atol;
  const double root_k = std::sqrt(static_cast<double>(c.k));
  std::int64_t bad_db = 0, bad_dw = 0;
  std::string first;
  for (std::int64_t j = 0; j < c.m; ++j) {
    double want = accumulate ? as_double(db0[static_cast<std::size_t>(j)]) : 0.0,
           abs_sum = std::abs(want);
    for (std::int64_t i = 0; i < c.k; ++i) {
      const double v = as_double(dy[static_cast<std::size_t>(i * c.m + j)]);
      want += v, abs_sum += std::abs(v);
    }
    const double got = as_double(db[static_cast<std::size_t>(j)]);
    if (!(std::abs(got - want) <= atol + rtol * (std::abs(want) + abs_sum / root_k)) &&
        bad_db++ == 0) {
      std::ostringstream o;
      o << "db[" << j << "]: got " << got << ", want " << want;
      first = o.str();
    }
  }
  const std::int64_t checks = c.full ? c.m * c.n : 512;
  for (std::int64_t s = 0; s < checks; ++s) {
    const std::int64_t e =
        c.full ? s
               : std::min<std::int64_t>(
                     static_cast<std::int64_t>(hashed_uniform(55, static_cast<std::uint64_t>(s)) *
                                               static_cast<double>(c.m * c.n)),
                     c.m * c.n - 1);
    const std::int64_t i = e / c.n, j = e % c.n;
    double want = accumulate ? as_double(dw0[static_cast<std::size_t>(e)]) : 0.0,
           abs_sum = std::abs(want);
    for (std::int64_t r = 0; r < c.k; ++r) {
      const double v = as_double(dy[static_cast<std::size_t>(r * c.m + i)]) *
                       as_double(x[static_cast<std::size_t>(r * c.n + j)]);
      want += v, abs_sum += std::abs(v);
    }
    const double got = as_double(dw[static_cast<std::size_t>(e)]);
    if (!(std::abs(got - want) <= atol + rtol * (std::abs(want) + abs_sum / root_k)) &&
        bad_dw++ == 0) {
      std::ostringstream o;
      o << "dW(" << i << ", " << j << "): got " << got << ", want " << want;
      first += " " + o.str();
    }
  }
  INFO(bad_db << " bad of db, " << bad_dw << " bad of dW; first: " << first);
  CHECK(bad_db == 0);
  CHECK(bad_dw == 0);
  // The element before an offset bias gradient is left alone.
  if (offset) CHECK(same_bits(db_dev.buffer.to_vector()[0], scalar_cast<T>(0.0)));
}

TEST_CASE("cuBLASLt takes the bias-gradient epilogue at GPT-2's shapes", "[cuda][gemm]") {
  // bf16 dW = dY^T X with db for c_attn, attn c_proj, c_fc and mlp c_proj at 2 x 1024 rows: with
  // fusion on, each must run fused (a fallback would silently keep the separate column sum).
  const RouteScope scope(BiasGradRoute::fused);
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO("autotune " << autotune);
  const std::int64_t rows = 2048;
  const std::int64_t shapes[][2] = {{2304, 768}, {768, 768}, {3072, 768}, {768, 3072}};
  for (const auto& s : shapes) {
    const std::int64_t out = s[0], in = s[1];
    auto dy = to_device(uniform_values<bf16>(static_cast<std::size_t>(rows * out), 61));
    auto x = to_device(uniform_values<bf16>(static_cast<std::size_t>(rows * in), 62));
    Tensor<bf16, Cuda> dw(Shape{out * in}), db(Shape{out});
    for (const bool accumulate : {false, true}) {
      const auto fused0 = fathom::kernels::detail::fused_bias_grad_runs();
      fathom::kernels::gemm_bias_grad(Cuda{},
                                      GemmParams<bf16>{.a = dy.data(),
                                                       .b = x.data(),
                                                       .c = dw.data(),
                                                       .m = out,
                                                       .n = in,
                                                       .k = rows,
                                                       .trans_a = true,
                                                       .beta = accumulate ? 1.0 : 0.0},
                                      db.data(), accumulate);
      INFO("out " << out << ", in " << in << ", accumulate " << accumulate);
      CHECK(fathom::kernels::detail::fused_bias_grad_runs() == fused0 + 1);
    }
  }
}

TEMPLATE_TEST_CASE("matmul, linear and gelu_mlp on CUDA match the CPU, forward and backward",
                   "[cuda][gemm]", float, bf16) {
  using T = TestType;
  using fathom::autograd::Var;
  const BiasGradRoute route =
      GENERATE(BiasGradRoute::fused, BiasGradRoute::dgelu, BiasGradRoute::separate);
  const RouteScope scope(route);
  // Two passes: the second adds into the gradients the first wrote.
  const int passes = GENERATE(1, 2);
  const bool autotune = GENERATE(false, true);
  const AutotuneScope tuning(autotune);
  INFO("route " << name_of(route) << ", passes " << passes << ", autotune " << autotune);
  const std::int64_t rows = 70, in = 96, out = 40;
  const auto x = uniform_values<T>(rows * in, 31), w = uniform_values<T>(out * in, 32);
  const auto b = uniform_values<T>(out, 33), gy = uniform_values<T>(rows * out, 34);
  const auto bx = uniform_values<T>(3 * 5 * in, 35), by = uniform_values<T>(3 * in * 7, 36);
  const auto gz = uniform_values<T>(3 * 5 * 7, 37);
  // gelu_mlp (the GPT-2 MLP node): x (rows, in) -> hidden 64 -> out, weights scaled by
  // 1 / sqrt(fan-in) so that the pre-activations stay near GELU's bend.
  const std::int64_t hidden = 64;
  auto scaled = [](std::vector<T> v, double s) {
    for (auto& e : v) e = scalar_cast<T>(as_double(e) * s);
    return v;
  };
  const auto w1 = scaled(uniform_values<T>(hidden * in, 38), 1.0 / std::sqrt(double(in)));
  const auto w2 = scaled(uniform_values<T>(out * hidden, 39), 1.0 / std::sqrt(double(hidden)));
  const auto b1 = uniform_values<T>(hidden, 40), b2 = uniform_values<T>(out, 41);

  struct Results {
    std::vector<std::vector<T>> v;
  };
  auto run = [&]<class D>(D) {
    auto make = [](const std::vector<T>& v, Shape s) {
      return Var<T, D>(Tensor<T, Cpu>::from_vector(s, v).template to<D>(), true);
    };
    auto vx = make(x, {rows, in}), vw = make(w, {out, in}), vb = make(b, {out});
    Var<T, D> y;
    for (int pass = 0; pass < passes; ++pass) {
      y = fathom::autograd::linear(vx, vw, vb);
      fathom::autograd::backward(y, Tensor<T, Cpu>::from_vector({rows, out}, gy).template to<D>());
    }
    auto va = make(bx, {3, 5, in}), vc = make(by, {3, in, 7});
    auto z = fathom::autograd::matmul(va, vc);
    fathom::autograd::backward(z, Tensor<T, Cpu>::from_vector({3, 5, 7}, gz).template to<D>());
    auto mx = make(x, {rows, in}), mw1 = make(w1, {hidden, in}), mb1 = make(b1, {hidden}),
         mw2 = make(w2, {out, hidden}), mb2 = make(b2, {out});
    Var<T, D> my;
    for (int pass = 0; pass < passes; ++pass) {
      my = fathom::autograd::gelu_mlp(mx, mw1, &mb1, mw2, &mb2);
      fathom::autograd::backward(my, Tensor<T, Cpu>::from_vector({rows, out}, gy).template to<D>());
    }
    Results r;
    for (const Tensor<T, D>* t :
         {&y.value(), &vx.grad(), &vw.grad(), &vb.grad(), &z.value(), &va.grad(), &vc.grad(),
          &my.value(), &mx.grad(), &mw1.grad(), &mb1.grad(), &mw2.grad(), &mb2.grad()})
      r.v.push_back(t->template to<Cpu>().to_vector());
    return r;
  };
  const Results cpu = run(Cpu{}), gpu = run(Cuda{});
  const char* names[] = {"linear y",    "linear dX",    "linear dW",    "linear db",
                         "matmul z",    "matmul dA",    "matmul dB",    "gelu_mlp y",
                         "gelu_mlp dX", "gelu_mlp dW1", "gelu_mlp db1", "gelu_mlp dW2",
                         "gelu_mlp db2"};
  // Each value sums at most `rows` = 70 products of values in [-1, 1) (twice, with two passes).
  const double tol = Precision<T>::atol + Precision<T>::rtol * passes * std::sqrt(70.0);
  for (std::size_t t = 0; t < cpu.v.size(); ++t) {
    REQUIRE(cpu.v[t].size() == gpu.v[t].size());
    std::int64_t bad = 0;
    std::size_t first = 0;
    for (std::size_t i = 0; i < cpu.v[t].size(); ++i)
      if (!(std::abs(as_double(gpu.v[t][i]) - as_double(cpu.v[t][i])) <=
            tol + Precision<T>::rtol * std::abs(as_double(cpu.v[t][i]))) &&
          bad++ == 0)
        first = i;
    INFO(Precision<T>::name << " " << names[t] << ": first mismatch at " << first << ": GPU "
                            << as_double(gpu.v[t][first]) << ", CPU "
                            << as_double(cpu.v[t][first]));
    CHECK(bad == 0);
  }
}

namespace {

// gemm_gelu and gemm_dgelu on CUDA against the CPU reference (which runs the plain GEMM, then the
// element-wise GELU in double for double inputs): x (M, K) times w^T (N, K), with a bias.
template <class T>
void check_gelu_gemms(std::int64_t M, std::int64_t N, std::int64_t K, bool bias,
                      std::uint64_t seed) {
  INFO(Precision<T>::name << " M " << M << " N " << N << " K " << K << " bias " << bias);
  const auto x = uniform_values<T>(static_cast<std::size_t>(M * K), seed);
  const auto w = uniform_values<T>(static_cast<std::size_t>(N * K), seed + 1);
  const auto b = uniform_values<T>(static_cast<std::size_t>(N), seed + 2);
  const auto dy =
      uniform_values<T>(static_cast<std::size_t>(M * K), seed + 3);  // (M, K): dgelu's A
  // Reference in double.
  auto to_d = [](const std::vector<T>& v) {
    std::vector<double> o(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) o[i] = as_double(v[i]);
    return o;
  };
  const auto xd = to_d(x), wd = to_d(w), bd = to_d(b), dyd = to_d(dy);
  std::vector<double> pre(static_cast<std::size_t>(M * N)), h(pre.size());
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      double s = bias ? bd[j] : 0.0;
      for (std::int64_t k = 0; k < K; ++k) s += xd[i * K + k] * wd[j * K + k];
      pre[i * N + j] = s;
      h[i * N + j] = fathom::kernels::detail::gelu(s);
    }

  auto xg = to_device(x), wg = to_device(w), bg = to_device(b), dyg = to_device(dy);
  Tensor<T, Cuda> hg(Shape{M * N}), aux(Shape{M * N});
  fathom::kernels::gemm_gelu(Cuda{},
                             GemmParams<T>{.a = xg.data(),
                                           .b = wg.data(),
                                           .c = hg.data(),
                                           .bias = bias ? bg.data() : nullptr,
                                           .m = M,
                                           .n = N,
                                           .k = K,
                                           .trans_b = true},
                             aux.data());
  const double tol = std::is_same_v<T, bf16> ? 2e-2 : 1e-4;
  const auto hv = hg.to_vector(), av = aux.to_vector();
  double worst_h = 0, worst_pre = 0;
  for (std::size_t i = 0; i < pre.size(); ++i) {
    worst_pre = std::max(worst_pre, std::abs(as_double(av[i]) - pre[i]) / (1 + std::abs(pre[i])));
    worst_h = std::max(worst_h, std::abs(as_double(hv[i]) - h[i]) / (1 + std::abs(h[i])));
  }
  CHECK(worst_pre <= tol);
  CHECK(worst_h <= tol);

  // dgelu: C = (dy (M, K) w (K, N)... here w^T as (N, K) stored, so op(B) = w^T) * gelu'(aux),
  // db its column sums, each run over NaN-filled outputs (both are written, never read).
  auto dgelu = [&] {
    Tensor<T, Cuda> dpre = Tensor<T, Cuda>::full(Shape{M * N}, std::numeric_limits<T>::quiet_NaN()),
                    db = Tensor<T, Cuda>::full(Shape{N}, std::numeric_limits<T>::quiet_NaN());
    fathom::kernels::gemm_dgelu(Cuda{},
                                GemmParams<T>{.a = dyg.data(),
                                              .b = wg.data(),
                                              .c = dpre.data(),
                                              .m = M,
                                              .n = N,
                                              .k = K,
                                              .trans_b = true},
                                aux.data(), db.data());
    return std::pair{dpre.to_vector(), db.to_vector()};
  };
  // First fathom's element-wise pass (the DGELU epilogue off), summing inside the pass (the dgelu
  // and fused routes) and by the separate column sum; then the epilogue where it fits (bf16,
  // N % 8 == 0), its column sums taken over its result.
  std::vector<T> dv, dbv, separate_dv, separate_dbv;
  for (const bool fuse : {false, true}) {
    const RouteScope scope(fuse ? BiasGradRoute::dgelu : BiasGradRoute::separate);
    const DgeluEpilogueScope pass(false);
    const auto fused0 = fathom::kernels::detail::fused_bias_grad_runs();
    std::tie(dv, dbv) = dgelu();
    CHECK(fathom::kernels::detail::fused_bias_grad_runs() == fused0 + (fuse ? 1 : 0));
    if (!fuse) separate_dv = dv, separate_dbv = dbv;
  }
  CHECK(same_bits(dv, separate_dv));  // the same element-wise formula on both routes
  std::vector<T> epilogue_dv, epilogue_dbv;
  {
    const DgeluEpilogueScope epilogue(true);
    const auto runs0 = fathom::kernels::detail::dgelu_epilogue_runs();
    std::tie(epilogue_dv, epilogue_dbv) = dgelu();
    const bool fits = std::is_same_v<T, bf16> && N % 8 == 0;
    CHECK(fathom::kernels::detail::dgelu_epilogue_runs() == runs0 + (fits ? 1 : 0));
    if (!fits) CHECK(same_bits(epilogue_dv, dv));  // the pass ran
  }
  const auto auxd = to_d(av);  // the saved pre-activation, as the kernel sees it
  std::vector<double> want(pre.size()), want_db(static_cast<std::size_t>(N), 0.0);
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < K; ++k) s += dyd[i * K + k] * wd[j * K + k];
      want[i * N + j] = s * fathom::kernels::detail::gelu_grad(auxd[i * N + j]);
      want_db[j] += want[i * N + j];
    }
  double worst_d = 0, worst_db = 0, scale_db = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    for (const auto* got : {&dv, &epilogue_dv})
      worst_d =
          std::max(worst_d, std::abs(as_double((*got)[i]) - want[i]) / (1 + std::abs(want[i])));
  for (double v : want_db) scale_db = std::max(scale_db, std::abs(v));
  for (std::size_t j = 0; j < want_db.size(); ++j)
    for (const auto* got : {&dbv, &separate_dbv, &epilogue_dbv})
      worst_db = std::max(worst_db, std::abs(as_double((*got)[j]) - want_db[j]) / (1 + scale_db));
  CHECK(worst_d <= tol);
  CHECK(worst_db <= tol);
  for (const auto& v : {hv, av, dv, dbv, separate_dbv, epilogue_dv, epilogue_dbv})
    for (auto e : v) REQUIRE(std::isfinite(as_double(e)));
}

}  // namespace

TEMPLATE_TEST_CASE(
    "CUDA gemm_gelu and gemm_dgelu match the double reference (epilogue and fallback)",
    "[cuda][gemm]", float, bf16) {
  // bf16 with N % 8 == 0 takes cuBLASLt's GELU epilogues; N = 5461 and fp32 take the fallback.
  check_gelu_gemms<TestType>(256, 3072, 768, true, 300);
  check_gelu_gemms<TestType>(100, 64, 40, false, 310);
  check_gelu_gemms<TestType>(33, 5461, 24, true, 320);
  // Several row chunks in the fused column sums (the last one shorter), a partial column block,
  // and GPT-2's c_fc width over 8 chunks.
  check_gelu_gemms<TestType>(1037, 136, 16, true, 330);
  check_gelu_gemms<TestType>(2048, 3072, 24, true, 340);
}

TEMPLATE_TEST_CASE("CUDA gemm_gelu and gemm_dgelu with autotuning on match the double reference",
                   "[cuda][gemm]", float, bf16) {
  // bf16 with N % 8 == 0 takes the GELU_AUX epilogues, whose timed candidates write their
  // pre-activations where the real run writes them (no padding here); the others the fallback's
  // plain GEMMs.
  const AutotuneScope scope(true);
  check_gelu_gemms<TestType>(256, 3072, 768, true, 350);
  check_gelu_gemms<TestType>(100, 64, 40, false, 360);
  check_gelu_gemms<TestType>(33, 5461, 24, true, 370);
  check_gelu_gemms<TestType>(1037, 136, 16, true, 380);
}

TEST_CASE("CUDA gemm_gelu is the tanh form of GELU", "[cuda][gemm]") {
  // K = 1 and B = 1: the pre-activations are the bf16 inputs exactly, so the outputs are GELU of
  // known values, rounded once. The tanh and erf forms differ by up to 4e-4 for x in [-3, -1],
  // up to several bf16 steps there. Every output must be within 2.5 steps of the tanh form (the
  // epilogue evaluates tanh fast: 1.98 steps at most, seen on an H200), and where the two forms
  // are more than 4 steps apart, nearer the tanh form.
  const std::int64_t M = 512, N = 8;
  std::vector<bf16> x(static_cast<std::size_t>(M)),
      one(static_cast<std::size_t>(N), scalar_cast<bf16>(1.0));
  for (std::int64_t i = 0; i < M; ++i)
    x[static_cast<std::size_t>(i)] = scalar_cast<bf16>(-4.0 + 8.0 * i / M);
  auto xg = to_device(x), og = to_device(one);
  Tensor<bf16, Cuda> h(Shape{M * N}), aux(Shape{M * N});
  fathom::kernels::gemm_gelu(
      Cuda{},
      GemmParams<bf16>{
          .a = xg.data(), .b = og.data(), .c = h.data(), .m = M, .n = N, .k = 1, .trans_b = true},
      aux.data());
  const auto hv = h.to_vector();
  int far = 0, nearer_erf = 0, distinct = 0;
  double worst = 0;
  for (std::int64_t i = 0; i < M; ++i) {
    const double xi = as_double(x[static_cast<std::size_t>(i)]);
    const double tanh_form = fathom::kernels::detail::gelu(xi);
    const double erf_form = 0.5 * xi * (1.0 + std::erf(xi / std::sqrt(2.0)));
    int e = 0;
    std::frexp(tanh_form, &e);  // |value| in [2^(e-1), 2^e): a bf16 step there is 2^(e-8)
    const double step = std::ldexp(1.0, e - 8);
    for (std::int64_t j = 0; j < N; ++j) {
      const double got = as_double(hv[static_cast<std::size_t>(i * N + j)]);
      worst = std::max(worst, std::abs(got - tanh_form) / step);
      if (std::abs(got - tanh_form) > 2.5 * step) ++far;
      if (std::abs(erf_form - tanh_form) > 4 * step) {
        ++distinct;
        if (std::abs(got - erf_form) < std::abs(got - tanh_form)) ++nearer_erf;
      }
    }
  }
  INFO("largest distance from the tanh form: " << worst << " bf16 steps; " << distinct
                                               << " outputs where the forms are > 4 steps apart");
  CHECK(far == 0);
  CHECK(distinct > 0);
  CHECK(nearer_erf == 0);
}

namespace {

// gemm_swiglu on CUDA over NaN-filled outputs against a double reference: gu = x w^T (w scaled by
// 1 / sqrt(K), so that the gates sit around SiLU's bend) and h = silu(gate) * up, h also against
// SwiGLU of the device's own rounded gu (the epilogue's formula, isolated from the GEMM's sums).
// `hopper` says whether fathom's sm_90 GEMM must have run it (the epilogue switched on, bf16 with F
// a multiple of 8 on an sm_90a build and GPU) or the fallback (cuBLASLt and kernels::swiglu).
template <class T>
void check_swiglu_gemm(std::int64_t M, std::int64_t F, std::int64_t K, std::uint64_t seed) {
  namespace sm90 = fathom::kernels::detail::sm90;
  const bool hopper = fathom::kernels::swiglu_epilogue() && std::is_same_v<T, bf16> && F % 8 == 0 &&
                      sm90::gemm_sm90_available();
  INFO(Precision<T>::name << " M " << M << " F " << F << " K " << K << " sm90 GEMM " << hopper);
  const std::int64_t N = 2 * F;
  const auto x = uniform_values<T>(static_cast<std::size_t>(M * K), seed);
  auto w = uniform_values<T>(static_cast<std::size_t>(N * K), seed + 1);
  for (auto& e : w) e = scalar_cast<T>(as_double(e) * 3.0 / std::sqrt(double(K)));
  auto gu = Tensor<T, Cuda>::full(Shape{M * N}, std::numeric_limits<T>::quiet_NaN());
  auto h = Tensor<T, Cuda>::full(Shape{M * F}, std::numeric_limits<T>::quiet_NaN());
  auto xg = to_device(x), wg = to_device(w);
  const auto runs0 = sm90::gemm_sm90_runs();
  fathom::kernels::gemm_swiglu(
      Cuda{},
      GemmParams<T>{
          .a = xg.data(), .b = wg.data(), .c = gu.data(), .m = M, .n = N, .k = K, .trans_b = true},
      h.data());
  CHECK(sm90::gemm_sm90_runs() == runs0 + (hopper ? 1 : 0));
  const auto guv = gu.to_vector(), hv = h.to_vector();
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  // bf16: the products' rounding (2^-8 relative) and, for h, the inputs' as well; float: its sums.
  const double tol = std::is_same_v<T, bf16> ? 1.6e-2 : 1e-4;
  const double own = std::is_same_v<T, bf16> ? 8e-3 : 1e-5;  // h from the device's own gu
  double worst_gu = 0, worst_h = 0, worst_own = 0;
  for (std::int64_t i = 0; i < M; ++i) {
    std::vector<double> row(static_cast<std::size_t>(N));
    for (std::int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (std::int64_t k = 0; k < K; ++k) s += as_double(x[i * K + k]) * as_double(w[j * K + k]);
      row[j] = s;
      const double got = as_double(guv[i * N + j]);
      worst_gu = std::max(worst_gu, std::abs(got - s) / (1 + std::abs(s)));
    }
    for (std::int64_t j = 0; j < F; ++j) {
      const double got = as_double(hv[i * F + j]);
      const double want = silu(row[j]) * row[F + j];
      const double from_own = silu(as_double(guv[i * N + j])) * as_double(guv[i * N + F + j]);
      worst_h = std::max(worst_h, std::abs(got - want) / (1 + std::abs(want)));
      worst_own = std::max(worst_own, std::abs(got - from_own) / (1e-3 + std::abs(from_own)));
    }
  }
  CHECK(worst_gu <= tol);
  CHECK(worst_h <= tol);
  CHECK(worst_own <= own);
  for (const auto& v : {guv, hv})
    for (auto e : v) REQUIRE(std::isfinite(as_double(e)));
}

}  // namespace

TEMPLATE_TEST_CASE("CUDA gemm_swiglu matches the double reference (Hopper epilogue and fallback)",
                   "[cuda][gemm]", float, bf16) {
  const bool epilogue = GENERATE(true, false);
  INFO("swiglu epilogue " << epilogue);
  const SwigluEpilogueScope scope(epilogue);
  // One row; partial tiles in every direction; K past the three-stage ring (16 K slices); more
  // tiles than SMs, so that each block walks several and its staging areas are reused; F not a
  // multiple of 8 (the fallback); Llama-350m's F with a short K.
  check_swiglu_gemm<TestType>(1, 8, 8, 400);
  check_swiglu_gemm<TestType>(129, 136, 72, 410);
  check_swiglu_gemm<TestType>(300, 200, 1000, 420);
  check_swiglu_gemm<TestType>(128 * 140, 136, 40, 430);
  check_swiglu_gemm<TestType>(64, 12, 40, 440);
  check_swiglu_gemm<TestType>(33, 2736, 24, 450);
}

TEST_CASE("CUDA sm90 GEMM with a plain store matches cuBLASLt, every element", "[cuda][gemm]") {
  namespace sm90 = fathom::kernels::detail::sm90;
  if (!sm90::gemm_sm90_available()) {
    WARN("this GPU or build runs no sm_90a code: fathom's sm_90 GEMM is not tested here");
    return;
  }
  // Partial tiles, a K that is not a multiple of 64, more tiles than SMs, a padded C.
  for (const auto& [M, N, K, ldc] :
       std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t, std::int64_t>>{
           {1, 8, 8, 8}, {129, 264, 72, 264}, {300, 520, 1000, 528}, {128 * 140, 264, 40, 264}}) {
    INFO("M " << M << " N " << N << " K " << K << " ldc " << ldc);
    const auto x = uniform_values<bf16>(static_cast<std::size_t>(M * K), 460);
    const auto w = uniform_values<bf16>(static_cast<std::size_t>(N * K), 461);
    auto xg = to_device(x), wg = to_device(w);
    auto c = Tensor<bf16, Cuda>::full(Shape{M * ldc}, std::numeric_limits<bf16>::quiet_NaN());
    auto ref = Tensor<bf16, Cuda>(Shape{M * N});
    sm90::gemm_sm90_bf16(xg.data(), K, wg.data(), K, c.data(), ldc, M, N, K);
    fathom::kernels::gemm(Cuda{}, GemmParams<bf16>{.a = xg.data(),
                                                   .b = wg.data(),
                                                   .c = ref.data(),
                                                   .m = M,
                                                   .n = N,
                                                   .k = K,
                                                   .trans_b = true});
    const auto got = c.to_vector(), want = ref.to_vector();
    std::int64_t bad = 0, padding_kept = 0;
    for (std::int64_t i = 0; i < M; ++i) {
      for (std::int64_t j = 0; j < N; ++j) {
        const double a = as_double(got[i * ldc + j]), b = as_double(want[i * N + j]);
        bad += !(std::abs(a - b) <= 1e-2 * (1 + std::abs(b)));
      }
      for (std::int64_t j = N; j < ldc; ++j)
        padding_kept += std::isnan(as_double(got[i * ldc + j]));
    }
    CHECK(bad == 0);
    CHECK(padding_kept == M * (ldc - N));  // the copies out leave C's padding alone
  }
}
