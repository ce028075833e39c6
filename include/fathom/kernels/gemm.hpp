// GEMM: batched, row-major C = alpha * op(A) op(B) + beta * C (+ bias), the beta term read from C
// or from another buffer, and its CPU backends: a CBLAS (OpenBLAS) when FATHOM_HAS_CBLAS is
// defined, else a portable cache-blocked loop; plus the column sum that gives a linear layer its
// bias gradient.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(FATHOM_HAS_CBLAS)
#include <cblas.h>
#endif

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/kernels/activation.hpp"

namespace fathom::kernels {

// For b < batch, all matrices row-major, op(X) = X or X^T, op(A) (M, K), op(B) (K, N), C (M, N):
//   C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b] + bias
// bias (N) is added to every row of C. beta == 0 means C is only written, never read (it may hold
// garbage, NaN included), as in BLAS.
template <class T>
struct GemmParams {
  const T* a = nullptr;  // (batch, M, K), stored as (batch, K, M) when trans_a
  const T* b = nullptr;  // (batch, K, N), stored as (batch, N, K) when trans_b
  T* c = nullptr;        // (batch, M, N)
  // When set and beta != 0, beta scales c_in instead of C's previous contents:
  //   C[b] = alpha * op(A[b]) op(B[b]) + beta * c_in[b] + bias
  // (a residual added in the GEMM's epilogue, written to a buffer of its own). c_in has C's shape,
  // leading dimension ldc and batch stride stride_c; it is either c itself (the same as null) or
  // must not overlap C. beta == 0 never reads it (nor C).
  const T* c_in = nullptr;  // (batch, M, N) or nullptr
  const T* bias = nullptr;  // (N) or nullptr
  std::int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  // Leading dimensions: elements from one stored row to the next; 0 means packed (the stored row
  // length: K or M for A, N or K for B, N for C).
  std::int64_t lda = 0, ldb = 0, ldc = 0;
  // Batch strides in elements; -1 means packed (stored rows * leading dimension). A stride of 0
  // for A or B reuses one matrix for the whole batch.
  std::int64_t stride_a = -1, stride_b = -1, stride_c = -1;
  std::int64_t batch = 1;
  double alpha = 1.0, beta = 0.0;
};

// out[j] = sum_i x[i, j] (+ out[j] when accumulating): the bias gradient of a linear layer, the
// sum of dY over its rows. Sums run in accum_t<T>.
template <class T>
struct ColumnSumParams {
  const T* x = nullptr;  // (rows, cols)
  T* out = nullptr;      // (cols)
  std::int64_t rows = 0, cols = 0;
  bool accumulate = true;  // out += sum (gradients accumulate) rather than out = sum
};

namespace detail {

// c_in (when set and not c itself) and C, both `extent` elements from their first, must not share
// an element: the GEMM writes C while it reads c_in.
template <class T>
void check_c_in_disjoint(const T* c, const T* c_in, std::int64_t extent, const char* op) {
  if (c_in == nullptr || c_in == c) return;
  const auto lo = reinterpret_cast<std::uintptr_t>(c), in = reinterpret_cast<std::uintptr_t>(c_in);
  const auto bytes = static_cast<std::uintptr_t>(extent) * sizeof(T);
  FATHOM_CHECK(in + bytes <= lo || lo + bytes <= in,
               op << ": c_in overlaps C without being C: it must be C itself or a separate buffer "
                     "(c_in starts "
                  << (static_cast<std::intptr_t>(in - lo) / static_cast<std::intptr_t>(sizeof(T)))
                  << " elements from C, which spans " << extent << ")");
}

// Fills the packed defaults of p and checks that the sizes describe matrices that do not overlap
// within a batch entry.
template <class T>
GemmParams<T> resolve_gemm(GemmParams<T> p) {
  FATHOM_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0 && p.batch >= 0,
               "gemm: expected non-negative sizes, got M " << p.m << ", N " << p.n << ", K " << p.k
                                                           << ", batch " << p.batch);
  const std::int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const std::int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  if (p.lda == 0) p.lda = std::max<std::int64_t>(a_cols, 1);
  if (p.ldb == 0) p.ldb = std::max<std::int64_t>(b_cols, 1);
  if (p.ldc == 0) p.ldc = std::max<std::int64_t>(p.n, 1);
  FATHOM_CHECK(p.lda >= a_cols && p.ldb >= b_cols && p.ldc >= p.n,
               "gemm: leading dimensions must be at least the stored row lengths: expected lda >= "
                   << a_cols << ", ldb >= " << b_cols << ", ldc >= " << p.n << ", got " << p.lda
                   << ", " << p.ldb << ", " << p.ldc);
  if (p.stride_a < 0) p.stride_a = a_rows * p.lda;
  if (p.stride_b < 0) p.stride_b = b_rows * p.ldb;
  if (p.stride_c < 0) p.stride_c = p.m * p.ldc;
  FATHOM_CHECK(p.batch <= 1 || p.stride_c >= (p.m - 1) * p.ldc + p.n,
               "gemm: batch entries of C overlap: stride_c " << p.stride_c << " for C of " << p.m
                                                             << " rows with ldc " << p.ldc);
  const bool empty = p.m == 0 || p.n == 0 || p.batch == 0;
  FATHOM_CHECK(empty || p.c != nullptr,
               "gemm: C is null for a (" << p.m << ", " << p.n << ") result");
  FATHOM_CHECK(empty || p.k == 0 || (p.a != nullptr && p.b != nullptr),
               "gemm: A or B is null with K = " << p.k);
  if (!empty)
    check_c_in_disjoint(p.c, p.c_in, (p.batch - 1) * p.stride_c + (p.m - 1) * p.ldc + p.n, "gemm");
  // From here on c_in is null unless it is a buffer of its own that the beta term reads.
  if (p.c_in == p.c || p.beta == 0.0 || empty) p.c_in = nullptr;
  return p;
}

// C = beta * C + bias (beta * c_in + bias with c_in) on every batch entry (what a GEMM with K == 0
// computes); beta == 0 never reads C.
template <class T>
void gemm_scale_add_bias(const GemmParams<T>& p) {
  using Acc = accum_t<T>;
  const Acc beta = static_cast<Acc>(p.beta);
  const T* src = p.c_in ? p.c_in : p.c;
  for (std::int64_t bi = 0; bi < p.batch; ++bi) {
    for (std::int64_t i = 0; i < p.m; ++i) {
      T* row = p.c + bi * p.stride_c + i * p.ldc;       // (N)
      const T* in = src + bi * p.stride_c + i * p.ldc;  // (N)
      for (std::int64_t j = 0; j < p.n; ++j) {
        Acc v = p.beta == 0.0 ? Acc(0) : beta * static_cast<Acc>(in[j]);
        if (p.bias) v += static_cast<Acc>(p.bias[j]);
        row[j] = scalar_cast<T>(v);
      }
    }
  }
}

// The portable GEMM: blocks of op(A) (mc x kc) and op(B) (kc x nc) are packed, converted to
// accum_t<T>, into contiguous buffers that stay in cache, and multiplied in i-k-j order so the
// innermost loop runs over contiguous memory and vectorizes. Every transpose combination and bf16
// go through the same packing. Always compiled, whether or not a CBLAS is used, so it is tested
// on every machine.
template <class T>
void gemm_portable(const GemmParams<T>& params) {
  using Acc = accum_t<T>;
  const GemmParams<T> p = resolve_gemm(params);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  if (p.k == 0) {
    gemm_scale_add_bias(p);
    return;
  }
  constexpr std::int64_t mc = 64, kc = 256, nc = 256;
  std::vector<Acc> a_pack(static_cast<std::size_t>(mc * kc));  // (mb, kb)
  std::vector<Acc> b_pack(static_cast<std::size_t>(kc * nc));  // (kb, nb)
  std::vector<Acc> acc(static_cast<std::size_t>(mc * nc));     // (mb, nb)
  const Acc alpha = static_cast<Acc>(p.alpha), beta = static_cast<Acc>(p.beta);

  for (std::int64_t bi = 0; bi < p.batch; ++bi) {
    const T* a = p.a + bi * p.stride_a;
    const T* b = p.b + bi * p.stride_b;
    T* c = p.c + bi * p.stride_c;
    const T* c_in = (p.c_in ? p.c_in : p.c) + bi * p.stride_c;
    for (std::int64_t j0 = 0; j0 < p.n; j0 += nc) {
      const std::int64_t nb = std::min(nc, p.n - j0);
      for (std::int64_t i0 = 0; i0 < p.m; i0 += mc) {
        const std::int64_t mb = std::min(mc, p.m - i0);
        std::fill(acc.begin(), acc.begin() + mb * nb, Acc(0));
        for (std::int64_t k0 = 0; k0 < p.k; k0 += kc) {
          const std::int64_t kb = std::min(kc, p.k - k0);
          for (std::int64_t i = 0; i < mb; ++i) {
            for (std::int64_t kk = 0; kk < kb; ++kk) {
              const std::int64_t r = i0 + i, q = k0 + kk;
              a_pack[static_cast<std::size_t>(i * kb + kk)] =
                  static_cast<Acc>(p.trans_a ? a[q * p.lda + r] : a[r * p.lda + q]);
            }
          }
          for (std::int64_t kk = 0; kk < kb; ++kk) {
            for (std::int64_t j = 0; j < nb; ++j) {
              const std::int64_t q = k0 + kk, s = j0 + j;
              b_pack[static_cast<std::size_t>(kk * nb + j)] =
                  static_cast<Acc>(p.trans_b ? b[s * p.ldb + q] : b[q * p.ldb + s]);
            }
          }
          for (std::int64_t i = 0; i < mb; ++i) {
            Acc* acc_row = acc.data() + i * nb;
            const Acc* a_row = a_pack.data() + i * kb;
            for (std::int64_t kk = 0; kk < kb; ++kk) {
              const Acc av = a_row[kk];
              const Acc* b_row = b_pack.data() + kk * nb;
              for (std::int64_t j = 0; j < nb; ++j) acc_row[j] += av * b_row[j];
            }
          }
        }
        for (std::int64_t i = 0; i < mb; ++i) {
          T* c_row = c + (i0 + i) * p.ldc + j0;
          const T* c_in_row = c_in + (i0 + i) * p.ldc + j0;
          const Acc* acc_row = acc.data() + i * nb;
          for (std::int64_t j = 0; j < nb; ++j) {
            Acc v = alpha * acc_row[j];
            if (p.beta != 0.0) v += beta * static_cast<Acc>(c_in_row[j]);
            if (p.bias) v += static_cast<Acc>(p.bias[j0 + j]);
            c_row[j] = scalar_cast<T>(v);
          }
        }
      }
    }
  }
}

#if defined(FATHOM_HAS_CBLAS)

inline int blas_int(std::int64_t v, const char* what) {
  FATHOM_CHECK(v <= INT_MAX, "gemm: " << what << " = " << v << " exceeds the CBLAS int range");
  return static_cast<int>(v);
}

inline void cblas_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
                       const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void cblas_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const double* a,
                       int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// rows x cols of src (leading dimension ld) into dst, packed, as float.
inline void bf16_to_float_packed(const bf16* src, std::int64_t rows, std::int64_t cols,
                                 std::int64_t ld, float* dst) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = 0; j < cols; ++j) dst[r * cols + j] = static_cast<float>(src[r * ld + j]);
}

// The CBLAS GEMM: one call per batch entry; bf16 goes through float scratch buffers (one
// rounding at the end, bias included).
template <class T>
void gemm_cblas(const GemmParams<T>& params) {
  const GemmParams<T> p = resolve_gemm(params);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  if (p.k == 0) {
    gemm_scale_add_bias(p);
    return;
  }
  const int m = blas_int(p.m, "M"), n = blas_int(p.n, "N"), k = blas_int(p.k, "K");
  if constexpr (std::is_same_v<T, bf16>) {
    const std::int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
    const std::int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
    std::vector<float> a(static_cast<std::size_t>(a_rows * a_cols));
    std::vector<float> b(static_cast<std::size_t>(b_rows * b_cols));
    std::vector<float> c(static_cast<std::size_t>(p.m * p.n));
    for (std::int64_t bi = 0; bi < p.batch; ++bi) {
      bf16* cb = p.c + bi * p.stride_c;
      bf16_to_float_packed(p.a + bi * p.stride_a, a_rows, a_cols, p.lda, a.data());
      bf16_to_float_packed(p.b + bi * p.stride_b, b_rows, b_cols, p.ldb, b.data());
      if (p.beta != 0.0)
        bf16_to_float_packed((p.c_in ? p.c_in : p.c) + bi * p.stride_c, p.m, p.n, p.ldc, c.data());
      cblas_gemm(p.trans_a, p.trans_b, m, n, k, static_cast<float>(p.alpha), a.data(),
                 blas_int(a_cols, "lda"), b.data(), blas_int(b_cols, "ldb"),
                 static_cast<float>(p.beta), c.data(), n);
      for (std::int64_t i = 0; i < p.m; ++i) {
        for (std::int64_t j = 0; j < p.n; ++j) {
          float v = c[static_cast<std::size_t>(i * p.n + j)];
          if (p.bias) v += static_cast<float>(p.bias[j]);
          cb[i * p.ldc + j] = bf16(v);
        }
      }
    }
  } else {
    const int lda = blas_int(p.lda, "lda"), ldb = blas_int(p.ldb, "ldb"),
              ldc = blas_int(p.ldc, "ldc");
    for (std::int64_t bi = 0; bi < p.batch; ++bi) {
      T* cb = p.c + bi * p.stride_c;
      if (p.c_in) {  // CBLAS accumulates in place: C takes c_in's values first
        const T* in = p.c_in + bi * p.stride_c;
        for (std::int64_t i = 0; i < p.m; ++i)
          std::copy(in + i * p.ldc, in + i * p.ldc + p.n, cb + i * p.ldc);
      }
      cblas_gemm(p.trans_a, p.trans_b, m, n, k, static_cast<T>(p.alpha), p.a + bi * p.stride_a, lda,
                 p.b + bi * p.stride_b, ldb, static_cast<T>(p.beta), cb, ldc);
      if (p.bias) {
        for (std::int64_t i = 0; i < p.m; ++i)
          for (std::int64_t j = 0; j < p.n; ++j) cb[i * p.ldc + j] += p.bias[j];
      }
    }
  }
}

#endif  // FATHOM_HAS_CBLAS

}  // namespace detail

// The CPU GEMM: CBLAS when FATHOM_HAS_CBLAS is defined (CMake's fathom::cblas sets it when it
// finds OpenBLAS), else the portable loop.
template <class T>
void gemm(Cpu, const GemmParams<T>& p) {
  static_assert(FloatingScalar<T>, "gemm: T must be double, float or bf16");
#if defined(FATHOM_HAS_CBLAS)
  detail::gemm_cblas(p);
#else
  detail::gemm_portable(p);
#endif
}

template <class T>
void column_sum(Cpu, const ColumnSumParams<T>& p);

namespace detail {

// The GELU GEMMs serve one case, the first projection of a GELU MLP: one matrix (batch 1), packed
// rows (ldc == N), C written (beta 0).
template <class T>
GemmParams<T> check_gemm_gelu(const GemmParams<T>& params, const T* aux, const char* op) {
  const GemmParams<T> p = resolve_gemm(params);
  FATHOM_CHECK(p.batch == 1 && p.ldc == p.n && p.beta == 0.0,
               op << ": expected batch 1, packed C (ldc == N) and beta 0, got batch " << p.batch
                  << ", ldc " << p.ldc << " for N " << p.n << ", beta " << p.beta);
  FATHOM_CHECK(p.m == 0 || p.n == 0 || aux != nullptr,
               op << ": aux is null for a (" << p.m << ", " << p.n << ") result");
  return p;
}

// gemm_bias_grad's one case: A is dY stored (K, M) and packed, one matrix, no bias; bias_grad (M)
// is there whenever M > 0.
template <class T>
GemmParams<T> check_gemm_bias_grad(const GemmParams<T>& params, const T* bias_grad,
                                   const char* op) {
  const GemmParams<T> p = resolve_gemm(params);
  FATHOM_CHECK(p.trans_a && p.batch == 1 && p.lda == std::max<std::int64_t>(p.m, 1) && !p.bias,
               op << ": expected A stored (K, M) and packed (trans_a, lda == M), batch 1 and no "
                     "bias, got trans_a "
                  << p.trans_a << ", lda " << p.lda << " for M " << p.m << ", batch " << p.batch
                  << ", bias " << (p.bias ? "set" : "null"));
  FATHOM_CHECK(p.m == 0 || bias_grad != nullptr,
               op << ": bias_grad is null for " << p.m << " columns of dY");
  return p;
}

}  // namespace detail

// C = gelu(op(A) op(B) + bias) (tanh form), and aux = op(A) op(B) + bias, the pre-activation the
// backward needs (M x N, packed). Batch 1, beta 0. On CUDA (bf16) one cuBLASLt call with the
// GELU_AUX_BIAS epilogue.
template <class T>
void gemm_gelu(Cpu, const GemmParams<T>& params, T* aux) {
  const GemmParams<T> p = detail::check_gemm_gelu(params, aux, "gemm_gelu");
  GemmParams<T> pre = p;
  pre.c = aux;
  gemm(Cpu{}, pre);
  gelu(Cpu{}, ActivationParams<T>{aux, p.c, p.m * p.n});
}

namespace detail {

// gemm_swiglu's case: C = gate | up (M, 2F), packed; batch 1, beta 0, no bias; h (M, F) packed.
template <class T>
GemmParams<T> check_gemm_swiglu(const GemmParams<T>& params, const T* h, const char* op) {
  const GemmParams<T> p = resolve_gemm(params);
  FATHOM_CHECK(p.batch == 1 && p.ldc == p.n && p.beta == 0.0 && !p.bias && p.n % 2 == 0,
               op << ": expected batch 1, packed C (ldc == N) with N = 2F even, beta 0 and no "
                     "bias, got batch "
                  << p.batch << ", ldc " << p.ldc << " for N " << p.n << ", beta " << p.beta
                  << ", bias " << (p.bias ? "set" : "null"));
  FATHOM_CHECK(p.m == 0 || p.n == 0 || h != nullptr,
               op << ": h is null for a (" << p.m << ", " << p.n / 2 << ") result");
  return p;
}

}  // namespace detail

// The gate/up projection of a SwiGLU MLP and SwiGLU itself: C = op(A) op(B) (M, 2F), gate in
// columns [0, F) and up in [F, 2F), and h (M, F, packed) = silu(gate) * up from C's rounded
// values, as kernels::swiglu on C's halves gives them. Batch 1, beta 0, no bias. On CUDA with bf16
// on Hopper and swiglu_epilogue() on, one GEMM whose epilogue writes both (gemm_sm90.cuh); its
// sigmoid is the special-function unit's, a few float ulp from swiglu's.
template <class T>
void gemm_swiglu(Cpu, const GemmParams<T>& params, T* h) {
  const GemmParams<T> p = detail::check_gemm_swiglu(params, h, "gemm_swiglu");
  if (p.m == 0 || p.n == 0) return;
  gemm(Cpu{}, p);
  const std::int64_t f = p.n / 2;
  swiglu(Cpu{}, SwigluParams<T>{p.c, p.c + f, h, p.m * f, f, p.n});
}

// C = (op(A) op(B)) * gelu'(aux) element-wise, the gradient of a GELU's input given A B, the
// gradient of its output; and, when bias_grad is not null, bias_grad[j] = sum over rows of C
// (written, not added). Batch 1, beta 0.
template <class T>
void gemm_dgelu(Cpu, const GemmParams<T>& params, const T* aux, T* bias_grad) {
  const GemmParams<T> p = detail::check_gemm_gelu(params, aux, "gemm_dgelu");
  gemm(Cpu{}, p);
  gelu_backward(Cpu{}, ActivationBackwardParams<T>{aux, p.c, p.c, p.m * p.n,
                                                   /*accumulate=*/false});  // in place
  if (bias_grad)
    column_sum(Cpu{},
               ColumnSumParams<T>{
                   .x = p.c, .out = bias_grad, .rows = p.m, .cols = p.n, .accumulate = false});
}

// The weight and bias gradients of a linear layer in one call: the GEMM of p, whose A is dY stored
// (K, M) (trans_a: K = rows, M = out_features; so C = dW = dY^T X), and bias_grad (M), the sums of
// dY's columns over its K rows: written, or added to bias_grad when `accumulate`. Batch 1, A
// packed (lda == M), no bias. On CUDA the GEMM that reads dY also writes the sums (cuBLASLt's
// BGRADB epilogue) where fused bias gradients are on and cuBLASLt takes the problem.
template <class T>
void gemm_bias_grad(Cpu, const GemmParams<T>& params, T* bias_grad, bool accumulate) {
  const GemmParams<T> p = detail::check_gemm_bias_grad(params, bias_grad, "gemm_bias_grad");
  gemm(Cpu{}, p);
  column_sum(Cpu{},
             ColumnSumParams<T>{
                 .x = p.a, .out = bias_grad, .rows = p.k, .cols = p.m, .accumulate = accumulate});
}

template <class T>
void column_sum(Cpu, const ColumnSumParams<T>& p) {
  using Acc = accum_t<T>;
  FATHOM_CHECK(p.rows >= 0 && p.cols >= 0,
               "column_sum: expected non-negative sizes, got (" << p.rows << ", " << p.cols << ")");
  std::vector<Acc> sum(static_cast<std::size_t>(p.cols), Acc(0));  // (cols)
  for (std::int64_t i = 0; i < p.rows; ++i) {
    const T* row = p.x + i * p.cols;
    for (std::int64_t j = 0; j < p.cols; ++j)
      sum[static_cast<std::size_t>(j)] += static_cast<Acc>(row[j]);
  }
  for (std::int64_t j = 0; j < p.cols; ++j) {
    Acc v = sum[static_cast<std::size_t>(j)];
    if (p.accumulate) v += static_cast<Acc>(p.out[j]);
    p.out[j] = scalar_cast<T>(v);
  }
}

}  // namespace fathom::kernels
