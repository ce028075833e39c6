// fp8 kernels, CPU reference: the absolute maximum of a tensor, quantization to fp8 codes with a
// per-tensor scale computed from it (optionally also writing the transpose), the same two for
// SwiGLU's output or gradient computed as they go (amax_swiglu, quantize_fp8_swiglu),
// dequantization, and the scaled fp8 GEMM. CUDA (amax on the device, cuBLASLt's fp8 GEMM):
// cuda/fp8.cuh.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/fp8.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/kernels/activation.hpp"
#include "fathom/kernels/gemm.hpp"

namespace fathom::kernels {

// *out = max_i |x[i]| as float (NaN when any x[i] is NaN); 0 for n == 0. out is host memory for
// Cpu and device memory for Cuda (no host synchronization there).
template <class T>
struct AmaxParams {
  const T* x = nullptr;  // (n)
  std::int64_t n = 0;
  float* out = nullptr;  // (1)
};

template <class T>
void amax(Cpu, const AmaxParams<T>& p) {
  FATHOM_CHECK(p.n >= 0 && p.out != nullptr, "amax: expected n >= 0 and an output, got n " << p.n);
  // On float bits with the sign cleared, NaNs order above infinity, so NaN wins as it should.
  std::uint32_t best = 0;
  for (std::int64_t i = 0; i < p.n; ++i)
    best = std::max(best, fathom::detail::fp8_float_bits(scalar_cast<float>(p.x[i])) & 0x7fffffffu);
  *p.out = fathom::detail::fp8_bits_float(best);
}

// out[i, j] = fp8(x[i, j] * scale) and, when out_t is not null, out_t[j, i] the same code.
// *scale_inv (when not null) receives 1 / scale, the factor that dequantizes (and that the fp8 GEMM
// takes). The scale comes from one of two per-tensor recipes:
// - current scaling (amax != nullptr): scale = fp8_scale_from_amax<F::format>(*amax, margin),
//   amax that of the tensor being quantized (kernels::amax, one pass over x before this one);
// - delayed scaling (amax == nullptr, history != nullptr): from the amaxes of earlier
//   quantizations of the same tensor, kept in a ring of history_len floats, so that x is read
//   once. With next = (record + 1) % history_len:
//     scale = fp8_scale_from_amax<F::format>(max of history[i] over i not record or next, margin)
//   Reading every slot but the two a pass writes keeps the scale the same in every CUDA block.
//   Values beyond what the scale reaches saturate to the format's largest finite value (NaN
//   stays NaN).
// With a history and record_amax (either recipe: the first quantization of a tensor scales by its
// own amax and starts its history), the pass records history[record] = max(history[record],
// largest finite |x|) (0 before the pass: each pass clears the slot after its own) and
// history[next] = 0. Only finite values enter a history, so a NaN or an infinity in one step
// (which the loss reports) does not stay in the scales of the steps after it. Amaxes compare as
// float bits with the sign cleared. amax, history and scale_inv are host memory for Cpu, device
// memory for Cuda.
template <class T, Fp8Scalar F>
struct QuantizeFp8Params {
  const T* x = nullptr;  // (rows, cols)
  F* out = nullptr;      // (rows, cols) or nullptr
  F* out_t = nullptr;    // (cols, rows) or nullptr
  std::int64_t rows = 0, cols = 0;
  const float* amax = nullptr;  // (1): current scaling, or nullptr: delayed scaling
  float* scale_inv = nullptr;   // (1) or nullptr
  int margin = 0;               // in [0, 64]: headroom of 2^margin below the format's maximum
  float* history = nullptr;     // (history_len) or nullptr
  int history_len = 0;          // in [3, max_fp8_history]
  int record = 0;               // in [0, history_len): the slot this pass's amax goes to
  bool record_amax = true;      // false: the history is read (delayed scaling), never written
};

// The longest amax history a delayed-scaling quantization reads (one CUDA thread a slot).
inline constexpr int max_fp8_history = 256;

namespace detail {

// reads_x: false for the passes that compute their values (quantize_fp8_swiglu), x unused.
template <class T, class F>
void check_quantize_fp8(const QuantizeFp8Params<T, F>& p, const char* op, bool reads_x = true) {
  FATHOM_CHECK(p.rows >= 0 && p.cols >= 0,
               op << ": expected non-negative sizes, got (" << p.rows << ", " << p.cols << ")");
  if (p.history) {
    FATHOM_CHECK(p.history_len >= 3 && p.history_len <= max_fp8_history,
                 op << ": an amax history holds 3 to " << max_fp8_history << " entries, got "
                    << p.history_len);
    FATHOM_CHECK(p.record >= 0 && p.record < p.history_len,
                 op << ": history slot " << p.record << " is outside [0, " << p.history_len << ")");
  } else {
    FATHOM_CHECK(p.amax != nullptr, op << ": amax is null (and no amax history is given)");
  }
  FATHOM_CHECK(p.margin >= 0 && p.margin <= 64,
               op << ": margin must be in [0, 64], got " << p.margin);
  if (reads_x) FATHOM_CHECK(p.rows * p.cols == 0 || p.x != nullptr, op << ": x is null");
}

}  // namespace detail

namespace detail {

// The slot after `record` in a ring of `len`: cleared by a recording delayed-scaling pass.
inline int fp8_history_next(int record, int len) { return record + 1 == len ? 0 : record + 1; }

// The amax a delayed-scaling pass scales by: the largest entry of the history but the two slots
// it writes (as float bits with the sign cleared).
inline float fp8_history_amax(const float* history, int len, int record) {
  const int next = fp8_history_next(record, len);
  std::uint32_t best = 0;
  for (int i = 0; i < len; ++i)
    if (i != record && i != next)
      best = std::max(best, fathom::detail::fp8_float_bits(history[i]) & 0x7fffffffu);
  return fathom::detail::fp8_bits_float(best);
}

}  // namespace detail

template <class T, Fp8Scalar F>
void quantize_fp8(Cpu, const QuantizeFp8Params<T, F>& p) {
  detail::check_quantize_fp8(p, "quantize_fp8");
  const float amax =
      p.amax ? *p.amax : detail::fp8_history_amax(p.history, p.history_len, p.record);
  const float scale = fp8_scale_from_amax<F::format>(amax, p.margin);
  if (p.scale_inv) *p.scale_inv = 1.0f / scale;
  std::uint32_t seen = 0;  // the largest finite |x| as float bits
  for (std::int64_t i = 0; i < p.rows; ++i) {
    for (std::int64_t j = 0; j < p.cols; ++j) {
      const float v = scalar_cast<float>(p.x[i * p.cols + j]);
      const std::uint32_t bits = fathom::detail::fp8_float_bits(v) & 0x7fffffffu;
      if (bits < 0x7f800000u) seen = std::max(seen, bits);
      const F q(v * scale);
      if (p.out) p.out[i * p.cols + j] = q;
      if (p.out_t) p.out_t[j * p.rows + i] = q;
    }
  }
  if (p.history && p.record_amax) {
    float& slot = p.history[p.record];
    slot = fathom::detail::fp8_bits_float(
        std::max(seen, fathom::detail::fp8_float_bits(slot) & 0x7fffffffu));
    p.history[detail::fp8_history_next(p.record, p.history_len)] = 0.0f;
  }
}

// A quantize pass that computes its values instead of reading them: SwiGLU's output or its
// gradient, from gate and up stacked in gu (autograd::swiglu_mlp_fp8). The values are taken in
// float straight into the fp8 codes, never rounded to T in between (one pass instead of the
// activation's pass and the quantize pass):
// - forward: the output is (rows, f), value silu(gate) * up;
// - backward: the output is (rows, 2f), dgate | dup, value dh * up * silu'(gate) in columns
//   [0, f) and dh * silu(gate) in [f, 2f) (as kernels::swiglu_backward, without accumulation).
// Computed in accum_t<T> as kernels::swiglu and swiglu_backward do, then taken as float.
template <class T>
struct SwigluFp8Source {
  const T* gu = nullptr;  // (rows, 2f): gate in [0, f), up in [f, 2f) of each row
  const T* dh = nullptr;  // (rows, f): the backward's gradient of silu(gate) * up
  std::int64_t f = 0;
  bool backward = false;
  // Columns of the output: f, or 2f for the backward.
  FATHOM_HOST_DEVICE std::int64_t out_cols() const { return backward ? 2 * f : f; }
};

namespace detail {

// The value at (r, c) of a SwigluFp8Source's output.
template <class T>
FATHOM_HOST_DEVICE inline float swiglu_fp8_value(const SwigluFp8Source<T>& s, std::int64_t r,
                                                 std::int64_t c) {
  using A = accum_t<T>;
  const bool dup = s.backward && c >= s.f;
  const std::int64_t j = dup ? c - s.f : c;
  const T* row = s.gu + r * 2 * s.f;
  const A g = scalar_cast<A>(row[j]), u = scalar_cast<A>(row[s.f + j]);
  if (!s.backward) return scalar_cast<float>(silu(g) * u);
  const A d = scalar_cast<A>(s.dh[r * s.f + j]);
  return scalar_cast<float>(dup ? d * silu(g) : d * u * silu_grad(g));
}

template <class T>
void check_swiglu_fp8(const SwigluFp8Source<T>& s, std::int64_t rows, std::int64_t cols,
                      const char* op) {
  FATHOM_CHECK(s.f >= 0 && cols == s.out_cols(), op << ": SwiGLU of width " << s.f << " has "
                                                    << s.out_cols() << " output columns, got "
                                                    << cols);
  FATHOM_CHECK(rows * s.f == 0 || (s.gu != nullptr && (!s.backward || s.dh != nullptr)),
               op << ": gu" << (s.backward ? " or dh" : "") << " is null");
}

// A SwigluFp8Source's output in float, (rows, out_cols), for the CPU passes below.
template <class T>
std::vector<float> swiglu_fp8_values(const SwigluFp8Source<T>& s, std::int64_t rows) {
  const std::int64_t cols = s.out_cols();
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      v[static_cast<std::size_t>(r * cols + c)] = swiglu_fp8_value(s, r, c);
  return v;
}

}  // namespace detail

// *out = max |value| of a SwigluFp8Source's (rows, out_cols) output (NaN when any is NaN), as
// amax does for a tensor: current scaling's amax of values never stored.
template <class T>
void amax_swiglu(Cpu, const SwigluFp8Source<T>& s, std::int64_t rows, float* out) {
  detail::check_swiglu_fp8(s, rows, s.out_cols(), "amax_swiglu");
  const std::vector<float> v = detail::swiglu_fp8_values(s, rows);
  amax(Cpu{}, AmaxParams<float>{v.data(), static_cast<std::int64_t>(v.size()), out});
}

// quantize_fp8 of a SwigluFp8Source's values: p as for quantize_fp8 but p.x unused (null) and
// (p.rows, p.cols) the source's output, (rows, f) or (rows, 2f). Codes, scale and history are what
// quantize_fp8 gives for those values held in float.
template <class T, Fp8Scalar F>
void quantize_fp8_swiglu(Cpu, const QuantizeFp8Params<T, F>& p, const SwigluFp8Source<T>& s) {
  detail::check_swiglu_fp8(s, p.rows, p.cols, "quantize_fp8_swiglu");
  FATHOM_CHECK(p.x == nullptr, "quantize_fp8_swiglu: x must be null (the values come from gu)");
  const std::vector<float> v = detail::swiglu_fp8_values(s, p.rows);
  quantize_fp8(Cpu{}, QuantizeFp8Params<float, F>{.x = v.data(),
                                                  .out = p.out,
                                                  .out_t = p.out_t,
                                                  .rows = p.rows,
                                                  .cols = p.cols,
                                                  .amax = p.amax,
                                                  .scale_inv = p.scale_inv,
                                                  .margin = p.margin,
                                                  .history = p.history,
                                                  .history_len = p.history_len,
                                                  .record = p.record,
                                                  .record_amax = p.record_amax});
}

// out[i] = decode(x[i]) * *scale_inv, rounded to T.
template <Fp8Scalar F, class T>
struct DequantizeFp8Params {
  const F* x = nullptr;  // (n)
  T* out = nullptr;      // (n)
  std::int64_t n = 0;
  const float* scale_inv = nullptr;  // (1)
};

template <Fp8Scalar F, class T>
void dequantize_fp8(Cpu, const DequantizeFp8Params<F, T>& p) {
  FATHOM_CHECK(p.n >= 0 && p.scale_inv != nullptr,
               "dequantize_fp8: expected n >= 0 and a scale, got n " << p.n);
  const float s = *p.scale_inv;
  for (std::int64_t i = 0; i < p.n; ++i) p.out[i] = scalar_cast<T>(static_cast<float>(p.x[i]) * s);
}

// The scaled fp8 GEMM, one matrix, row-major, op(X) = X or X^T, op(A) (M, K), op(B) (K, N):
//   C = (*a_scale_inv * *b_scale_inv) * (op(A) op(B)) + beta * C + bias
// with the products accumulated in float and C (float or bf16) written once. beta == 0 never
// reads C; with c_in set, as in GemmParams, the beta term reads c_in instead of C. Allowed operand
// pairs are Hopper's: E4M3 x E4M3, E4M3 x E5M2, E5M2 x E4M3 (never E5M2 x E5M2). The scales are
// host memory for Cpu, device memory for Cuda. cuBLASLt's fp8 kernels take only the layout
// trans_a = false, trans_b = true (both operands contiguous along K), K and the leading dimensions
// of A and B multiples of 16 and 16-byte aligned operands (c_in too); the CUDA version runs every
// other problem through a plain tiled kernel (correct, slower).
template <Fp8Scalar FA, Fp8Scalar FB, class T>
struct Fp8GemmParams {
  static_assert(!(std::is_same_v<FA, fp8_e5m2> && std::is_same_v<FB, fp8_e5m2>),
                "Fp8GemmParams: E5M2 x E5M2 is not a supported fp8 GEMM (Hopper multiplies E4M3 "
                "x E4M3, E4M3 x E5M2 and E5M2 x E4M3); quantize one operand to E4M3");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>,
                "Fp8GemmParams: C must be float or bf16");
  const FA* a = nullptr;  // (M, K), stored as (K, M) when trans_a
  const FB* b = nullptr;  // (K, N), stored as (N, K) when trans_b
  T* c = nullptr;         // (M, N)
  // When set and beta != 0, beta scales c_in instead of C's previous contents:
  // C = scale * op(A) op(B) + beta * c_in + bias. c_in has C's shape and leading dimension ldc; it
  // is either c itself (the same as null) or must not overlap C. beta == 0 never reads it (nor C).
  const T* c_in = nullptr;             // (M, N) or nullptr
  const T* bias = nullptr;             // (N) or nullptr
  const float* a_scale_inv = nullptr;  // (1)
  const float* b_scale_inv = nullptr;  // (1)
  std::int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = true;
  std::int64_t lda = 0, ldb = 0, ldc = 0;  // 0: packed, as in GemmParams
  double beta = 0.0;
  // cuBLASLt's fast fp8 accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM): Hopper's fp8 tensor cores
  // then accumulate the whole K in their own reduced precision instead of promoting partial sums
  // to fp32 at intervals. Faster; the usual choice for the forward GEMM only, as the gradients'
  // long K (the tokens, for dW) is where the lost precision would add up. The CPU and the tiled
  // kernel accumulate in float either way.
  bool fast_accum = false;
};

namespace detail {

// Fills the packed leading dimensions and checks sizes and pointers.
template <class FA, class FB, class T>
Fp8GemmParams<FA, FB, T> resolve_gemm_fp8(Fp8GemmParams<FA, FB, T> p) {
  FATHOM_CHECK(p.m >= 0 && p.n >= 0 && p.k >= 0, "gemm_fp8: expected non-negative sizes, got M "
                                                     << p.m << ", N " << p.n << ", K " << p.k);
  const std::int64_t a_cols = p.trans_a ? p.m : p.k, b_cols = p.trans_b ? p.k : p.n;
  if (p.lda == 0) p.lda = std::max<std::int64_t>(a_cols, 1);
  if (p.ldb == 0) p.ldb = std::max<std::int64_t>(b_cols, 1);
  if (p.ldc == 0) p.ldc = std::max<std::int64_t>(p.n, 1);
  FATHOM_CHECK(p.lda >= a_cols && p.ldb >= b_cols && p.ldc >= p.n,
               "gemm_fp8: leading dimensions must be at least the stored row lengths: expected lda "
               ">= "
                   << a_cols << ", ldb >= " << b_cols << ", ldc >= " << p.n << ", got " << p.lda
                   << ", " << p.ldb << ", " << p.ldc);
  const bool empty = p.m == 0 || p.n == 0;
  FATHOM_CHECK(empty || p.c != nullptr,
               "gemm_fp8: C is null for a (" << p.m << ", " << p.n << ") result");
  FATHOM_CHECK(empty || p.k == 0 || (p.a != nullptr && p.b != nullptr),
               "gemm_fp8: A or B is null with K = " << p.k);
  FATHOM_CHECK(empty || (p.a_scale_inv != nullptr && p.b_scale_inv != nullptr),
               "gemm_fp8: a_scale_inv and b_scale_inv are required");
  if (!empty) check_c_in_disjoint(p.c, p.c_in, (p.m - 1) * p.ldc + p.n, "gemm_fp8");
  // From here on c_in is null unless it is a buffer of its own that the beta term reads.
  if (p.c_in == p.c || p.beta == 0.0 || empty) p.c_in = nullptr;
  return p;
}

}  // namespace detail

// The reference: A and B decoded to float, multiplied by the CPU GEMM (every product of two fp8
// values is exact in float), then scaled, with beta * C (or c_in) and the bias added in float.
template <Fp8Scalar FA, Fp8Scalar FB, class T>
void gemm_fp8(Cpu, const Fp8GemmParams<FA, FB, T>& params) {
  const auto p = detail::resolve_gemm_fp8(params);
  if (p.m == 0 || p.n == 0) return;
  const std::int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const std::int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  std::vector<float> a(static_cast<std::size_t>(a_rows * a_cols));
  std::vector<float> b(static_cast<std::size_t>(b_rows * b_cols));
  std::vector<float> acc(static_cast<std::size_t>(p.m * p.n), 0.0f);  // (M, N)
  for (std::int64_t r = 0; r < a_rows; ++r)
    for (std::int64_t j = 0; j < a_cols; ++j)
      a[static_cast<std::size_t>(r * a_cols + j)] = static_cast<float>(p.a[r * p.lda + j]);
  for (std::int64_t r = 0; r < b_rows; ++r)
    for (std::int64_t j = 0; j < b_cols; ++j)
      b[static_cast<std::size_t>(r * b_cols + j)] = static_cast<float>(p.b[r * p.ldb + j]);
  if (p.k > 0)
    gemm(Cpu{}, GemmParams<float>{.a = a.data(),
                                  .b = b.data(),
                                  .c = acc.data(),
                                  .m = p.m,
                                  .n = p.n,
                                  .k = p.k,
                                  .trans_a = p.trans_a,
                                  .trans_b = p.trans_b});
  const float scale = *p.a_scale_inv * *p.b_scale_inv;
  for (std::int64_t i = 0; i < p.m; ++i) {
    for (std::int64_t j = 0; j < p.n; ++j) {
      float v = scale * acc[static_cast<std::size_t>(i * p.n + j)];
      T& c = p.c[i * p.ldc + j];
      if (p.beta != 0.0)
        v += static_cast<float>(p.beta) * scalar_cast<float>(p.c_in ? p.c_in[i * p.ldc + j] : c);
      if (p.bias) v += scalar_cast<float>(p.bias[j]);
      c = scalar_cast<T>(v);
    }
  }
}

}  // namespace fathom::kernels
