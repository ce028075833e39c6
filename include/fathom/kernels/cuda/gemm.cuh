// GEMM and column sum on CUDA. bf16 and fp32 GEMMs run through cuBLASLt (fp32 accumulation, the
// bias fused as its epilogue), with a descriptor and algorithm cached per problem so that steady
// state never re-runs the heuristic (the algorithm its first choice, or with set_gemm_autotune the
// fastest of its first few, timed); fp64, and what cuBLASLt declines, through cuBLAS.
#pragma once

#if !defined(__CUDACC__)
#error "fathom/kernels/cuda/gemm.cuh is CUDA code: include it from a .cu file compiled by nvcc"
#endif

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/core/env.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/kernels/cuda/blas_handle.cuh"
// CUDA primitives of Tensor<T, Cuda> (scratch tensors)
#include "fathom/kernels/cuda/primitives.cuh"
#include "fathom/kernels/cuda/activation.cuh"  // gelu, gelu_backward: the non-epilogue GELU path
#include "fathom/kernels/cuda/gemm_sm90.cuh"
#include "fathom/kernels/gemm.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::kernels {

namespace detail {
inline bool& gemm_tf32_flag() {
  static bool allow = false;
  return allow;
}
inline bool& gemm_autotune_flag() {
  static bool on = true;
  return on;
}
}  // namespace detail

// Whether fp32 GEMMs on CUDA may round their inputs to TF32 (10-bit mantissa) and run on tensor
// cores: several times faster, with relative errors near 1e-3 instead of 1e-6. Off by default, so
// that fp32 results match the CPU reference within Precision<float> tolerances. bf16 and fp64
// GEMMs are unaffected. Set it before the GEMMs it should govern (plans are cached per setting).
inline void set_gemm_allow_tf32(bool allow) { detail::gemm_tf32_flag() = allow; }
inline bool gemm_allow_tf32() { return detail::gemm_tf32_flag(); }

// Whether the cuBLASLt plans made from now on (bf16, fp32 and fp8 GEMMs; one plan per problem,
// made at its first use) time the heuristic's first few algorithms on the problem's own operands
// and keep the fastest, instead of taking the heuristic's first. Only candidates whose results
// are the heuristic's first's to the bit are timed (a fingerprint of each one's outputs decides),
// so that results are the same with and without it (the [gemm] tests check single GEMMs;
// bench/autotune_bits.sh whole training runs, which kept their losses to the bit on an H200).
// On by default: +0.7-1.0% tokens/s on the Llama workloads on an H200. A problem's first use
// then runs its candidates, which write where the problem's output will go when the GEMM
// overwrites it whole (else into scratch outputs as large as its own: a GEMM that adds into C, or
// a padded C). Plans made with and without it are cached apart, so switching back restores the
// earlier choices. docs/performance.md says more.
inline void set_gemm_autotune(bool on) { detail::gemm_autotune_flag() = on; }
inline bool gemm_autotune() { return detail::gemm_autotune_flag(); }

// What autotuning did in this process so far (gemm_autotune_stats()).
struct GemmAutotuneStats {
  std::uint64_t plans_timed = 0;         // plans whose candidate algorithms were timed
  std::uint64_t algorithms_changed = 0;  // of those, the ones that kept another than the first
  // Plans made with autotuning on but not timed: the heuristic offered one algorithm or none,
  // none ran, or fathom's stream was being captured into a CUDA graph (the heuristic's first is
  // kept).
  std::uint64_t plans_untimed = 0;
  // Candidates set aside untimed because their results were not the heuristic's first's to the
  // bit (another order of summation: split-K, for one), so that autotuning changes no result.
  std::uint64_t algorithms_rejected = 0;
  // What happened between two snapshots (later - earlier).
  friend GemmAutotuneStats operator-(const GemmAutotuneStats& a, const GemmAutotuneStats& b) {
    return {a.plans_timed - b.plans_timed, a.algorithms_changed - b.algorithms_changed,
            a.plans_untimed - b.plans_untimed, a.algorithms_rejected - b.algorithms_rejected};
  }
};

// How the bias gradients of linear layers are computed on CUDA: `fused`, in a pass that already
// reads dY (gemm_bias_grad: cuBLASLt's BGRADB epilogue on the weight-gradient GEMM; gemm_dgelu:
// the column sums inside fathom's dGELU kernel); `dgelu`, only the latter; `separate`, a column
// sum over dY of its own, one more read of it. (When gemm_dgelu runs cuBLASLt's DGELU epilogue,
// dgelu_epilogue(), there is no dGELU kernel: its sums are a column sum over the result whatever
// the route.) The routes agree within rounding (the sums run in
// another order; the epilogue's sum is rounded to T before it is added to an existing gradient).
enum class BiasGradRoute { fused, dgelu, separate };

namespace detail {
inline BiasGradRoute& bias_grad_route_setting() {
  static BiasGradRoute route = BiasGradRoute::fused;
  return route;
}
// Bias gradients computed in a pass that already reads dY (a GEMM's epilogue, the dGELU pass),
// and those that fell back to a separate column sum although fusion was on (cuBLASLt declined).
// Programs report them; the tests check which route ran.
inline std::uint64_t& fused_bias_grad_runs() {
  static std::uint64_t runs = 0;
  return runs;
}
inline std::uint64_t& unfused_bias_grad_runs() {
  static std::uint64_t runs = 0;
  return runs;
}
inline bool& dgelu_epilogue_setting() {
  static bool on = env_switch("FATHOM_DGELU_EPILOGUE", true);
  return on;
}
// gemm_dgelu calls that cuBLASLt's DGELU epilogue ran (the tests check which path ran).
inline std::uint64_t& dgelu_epilogue_runs() {
  static std::uint64_t runs = 0;
  return runs;
}
}  // namespace detail

// The route of every bias gradient computed after the call (fused by default; the others are
// there to compare against it).
inline void set_bias_grad_route(BiasGradRoute route) { detail::bias_grad_route_setting() = route; }
inline BiasGradRoute bias_grad_route() { return detail::bias_grad_route_setting(); }

// Whether gemm_dgelu multiplies by GELU's derivative in cuBLASLt's DGELU epilogue, as the GEMM
// stores its result (bf16 where the GELU epilogues fit), rather than in fathom's element-wise pass
// over the stored product. On by default; FATHOM_DGELU_EPILOGUE=0 in the environment, or
// set_dgelu_epilogue(false), turns it off (for comparisons).
inline void set_dgelu_epilogue(bool on) { detail::dgelu_epilogue_setting() = on; }
inline bool dgelu_epilogue() { return detail::dgelu_epilogue_setting(); }

namespace detail {
inline bool& swiglu_epilogue_setting() {
  static bool on = env_switch("FATHOM_SWIGLU_EPILOGUE", false);
  return on;
}
}  // namespace detail

// Whether gemm_swiglu runs as fathom's own Hopper GEMM with SwiGLU in its epilogue (bf16, an
// sm_90a build on an H100/H200; gemm_sm90.cuh) rather than cuBLASLt's GEMM and the SwiGLU pass.
// Off by default: on an H200 it trained llama-130m and llama-350m no faster (0.998x and 1.002x,
// bench/NOTES.md, twenty-seventh session), and its sigmoid is not kernels::swiglu's to the bit.
// FATHOM_SWIGLU_EPILOGUE=1 in the environment, or set_swiglu_epilogue(true), turns it on.
inline void set_swiglu_epilogue(bool on) { detail::swiglu_epilogue_setting() = on; }
inline bool swiglu_epilogue() { return detail::swiglu_epilogue_setting(); }

namespace detail {

template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, double>)
    return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, float>)
    return CUDA_R_32F;
  else
    return CUDA_R_16BF;
}

inline int cublas_int(std::int64_t v, const char* what) {
  FATHOM_CHECK(v <= INT_MAX,
               "gemm (CUDA): " << what << " = " << v << " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// The largest power of two up to 256 that divides the address of every batch entry and row.
inline std::uint32_t operand_alignment(const void* p, std::int64_t ld, std::int64_t stride,
                                       std::int64_t batch, std::size_t element_bytes) {
  auto addr = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  auto fits = [&](std::uint64_t v) { return v % align == 0; };
  while (align > 1 && !(fits(addr) && fits(static_cast<std::uint64_t>(ld) * element_bytes) &&
                        (batch <= 1 || fits(static_cast<std::uint64_t>(stride) * element_bytes))))
    align /= 2;
  return align;
}

// C = beta * c_in + bias on every batch entry, c_in of C's layout (C itself to scale C in place);
// beta == 0 (read_c false) never reads c_in. Serves GEMMs with K == 0 and adds the bias after
// cuBLAS calls, which have no epilogue. Rows of C (over the whole batch) along y, columns along
// x, so that no thread divides per element.
template <class T>
__global__ void gemm_scale_add_bias_kernel(T* c, const T* c_in, const T* bias, accum_t<T> beta,
                                           bool read_c, std::int64_t rows, std::int64_t m,
                                           std::int64_t n, std::int64_t ldc,
                                           std::int64_t stride_c) {
  using Acc = accum_t<T>;
  for (std::int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const std::int64_t offset = (row / m) * stride_c + (row % m) * ldc;
    T* c_row = c + offset;              // (N)
    const T* c_in_row = c_in + offset;  // (N)
    for (std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
         j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
      Acc v = read_c ? beta * static_cast<Acc>(c_in_row[j]) : Acc(0);
      if (bias) v += static_cast<Acc>(bias[j]);
      c_row[j] = scalar_cast<T>(v);
    }
  }
}

// C = beta * c_in + bias over p's C (its sizes, ldc and stride_c; p.c_in is not looked at): c_in
// null scales C in place (beta 1 adds the bias to a GEMM's result).
template <class T>
void launch_gemm_scale_add_bias(const GemmParams<T>& p, double beta, const T* bias,
                                const T* c_in = nullptr) {
  const std::int64_t rows = p.batch * p.m;
  if (rows == 0 || p.n == 0) return;
  const int threads = 256;
  // At most 8192 blocks, each looping over rows: thin one-row blocks cost more to schedule than
  // the work they do.
  const std::int64_t col_blocks = std::min<std::int64_t>((p.n + threads - 1) / threads, 64);
  const dim3 grid(static_cast<unsigned>(col_blocks),
                  static_cast<unsigned>(std::min<std::int64_t>(rows, 8192 / col_blocks)));
  gemm_scale_add_bias_kernel<T><<<grid, threads, 0, cuda::stream()>>>(
      p.c, c_in ? c_in : p.c, bias, static_cast<accum_t<T>>(beta), beta != 0.0, rows, p.m, p.n,
      p.ldc, p.stride_c);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// Copies c_in into C (p's sizes, ldc and stride_c) on fathom's stream, touching nothing of C
// between its rows or batch entries: one 2D copy when the batch entries follow each other without
// a gap, else one per entry.
template <class T>
void stage_c_in(const GemmParams<T>& p) {
  const std::size_t pitch = static_cast<std::size_t>(p.ldc) * sizeof(T),
                    width = static_cast<std::size_t>(p.n) * sizeof(T);
  const bool contiguous = p.batch == 1 || p.stride_c == p.m * p.ldc;
  const std::int64_t copies = contiguous ? 1 : p.batch, rows = contiguous ? p.batch * p.m : p.m;
  for (std::int64_t bi = 0; bi < copies; ++bi)
    FATHOM_CUDA_CHECK(cudaMemcpy2DAsync(p.c + bi * p.stride_c, pitch, p.c_in + bi * p.stride_c,
                                        pitch, width, static_cast<std::size_t>(rows),
                                        cudaMemcpyDeviceToDevice, cuda::stream()));
}

// cuBLAS (no epilogue): row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so B
// goes first and M, N swap. Used for fp64, for batches that reuse one operand (batch stride 0),
// and when cuBLASLt has no algorithm for a problem. cuBLAS has no C apart from D: c_in is copied
// into C first and the GEMM then accumulates in place.
template <class T>
void blas_gemm(const GemmParams<T>& p) {
  if (p.c_in) stage_c_in(p);
  cublasHandle_t handle = BlasHandles::instance().blas();
  const cublasOperation_t op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = cublas_int(p.m, "M"), n = cublas_int(p.n, "N"), k = cublas_int(p.k, "K");
  const int lda = cublas_int(p.lda, "lda"), ldb = cublas_int(p.ldb, "ldb"),
            ldc = cublas_int(p.ldc, "ldc");
  const int batch = cublas_int(p.batch, "batch");
  if constexpr (std::is_same_v<T, double>) {
    const double alpha = p.alpha, beta = p.beta;
    FATHOM_CUBLAS_CHECK(cublasDgemmStridedBatched(handle, op_b, op_a, n, m, k, &alpha, p.b, ldb,
                                                  p.stride_b, p.a, lda, p.stride_a, &beta, p.c, ldc,
                                                  p.stride_c, batch));
  } else {
    const float alpha = static_cast<float>(p.alpha), beta = static_cast<float>(p.beta);
    const cublasComputeType_t compute = std::is_same_v<T, float> && gemm_allow_tf32()
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F;
    constexpr cudaDataType_t type = cuda_data_type<T>();
    FATHOM_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle, op_b, op_a, n, m, k, &alpha, p.b, type, ldb, p.stride_b, p.a, type, lda, p.stride_a,
        &beta, p.c, type, ldc, p.stride_c, batch, compute, CUBLAS_GEMM_DEFAULT));
  }
  if (p.bias) launch_gemm_scale_add_bias(p, 1.0, p.bias);
}

// What a cuBLASLt plan depends on: types, transposes, sizes, leading dimensions, batch strides,
// whether the bias is fused, the alignments the chosen algorithm may assume, and whether it was
// autotuned.
struct GemmPlanKey {
  std::array<std::int64_t, 20> v{};
  friend bool operator==(const GemmPlanKey&, const GemmPlanKey&) = default;
};

struct GemmPlanKeyHash {
  std::size_t operator()(const GemmPlanKey& key) const {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the fields
    for (std::int64_t x : key.v) {
      h ^= static_cast<std::uint64_t>(x);
      h *= 1099511628211ull;
    }
    return static_cast<std::size_t>(h);
  }
};

// A cuBLASLt matmul descriptor, the layouts of its operands and the algorithm the heuristic chose.
// `usable` is false when cuBLASLt offers no algorithm; such problems go to cuBLAS. Plans live as
// long as the process (a few hundred bytes each, one per distinct GEMM of the model).
struct GemmPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t first = nullptr;   // our B, cuBLASLt's A
  cublasLtMatrixLayout_t second = nullptr;  // our A, cuBLASLt's B
  cublasLtMatrixLayout_t out = nullptr;     // C and D (one layout, whether or not one buffer)
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;
};

class GemmPlanCache {
 public:
  static GemmPlanCache& instance() {
    static GemmPlanCache* cache = new GemmPlanCache();  // never destroyed, like the handles
    return *cache;
  }
  std::mutex& mutex() { return mutex_; }
  // The plan for `key`, or nullptr when there is none yet. Call with mutex() held.
  GemmPlan* find(const GemmPlanKey& key) {
    auto it = plans_.find(key);
    return it == plans_.end() ? nullptr : &it->second;
  }
  GemmPlan& insert(const GemmPlanKey& key, const GemmPlan& plan) { return plans_[key] = plan; }
  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return plans_.size();
  }
  // Call with mutex() held.
  GemmAutotuneStats& autotune_stats() { return autotune_stats_; }
  GemmAutotuneStats autotune_stats_snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    return autotune_stats_;
  }

 private:
  GemmPlanCache() = default;
  std::mutex mutex_;
  std::unordered_map<GemmPlanKey, GemmPlan, GemmPlanKeyHash> plans_;
  GemmAutotuneStats autotune_stats_;
};

template <class V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  FATHOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}
template <class V>
void set_layout(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                const V& value) {
  FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, attr, &value, sizeof(value)));
}
template <class V>
void set_preference(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                    const V& value) {
  FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// Column-major layout of `rows` x `cols` elements with leading dimension ld, batched if needed.
inline cublasLtMatrixLayout_t make_layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols,
                                          std::int64_t ld, std::int64_t batch,
                                          std::int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  FATHOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, static_cast<std::uint64_t>(rows),
                                                 static_cast<std::uint64_t>(cols), ld));
  if (batch > 1) {
    set_layout(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, static_cast<std::int32_t>(batch));
    set_layout(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride);
  }
  return layout;
}

// Builds the descriptor and layouts of p (row-major C = op(A) op(B) computed as column-major
// C^T = op(B)^T op(A)^T) and asks the heuristic for the best algorithm within the workspace.
// A cuBLASLt epilogue beyond the bias: GELU that also writes the pre-activation to `aux`
// (GELU_AUX[_BIAS]; aux has C's layout, leading dimension ldc), or the sums of our A (trans_a,
// stored (K, M)) over K into `bias_grad` (M), written (BGRADB: our A is cuBLASLt's B, and M the
// number of columns of its column-major D), or the product times GELU's derivative at `aux` (the
// pre-activation GELU_AUX saved; DGELU, aux read with C's layout).
enum class LtEpilogue : std::int64_t { none = 0, gelu_aux = 1, bias_grad_b = 2, dgelu_aux = 3 };
template <class T>
struct LtExtra {
  LtEpilogue kind = LtEpilogue::none;
  const T* aux = nullptr;
  T* bias_grad = nullptr;
};

template <class T>
void set_epilogue_pointers(cublasLtMatmulDesc_t desc, const GemmParams<T>& p, const LtExtra<T>& e) {
  if (e.kind == LtEpilogue::gelu_aux || e.kind == LtEpilogue::dgelu_aux) {
    const void* aux = e.aux;
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
    set_desc(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<std::int64_t>(p.ldc));
  } else if (e.kind == LtEpilogue::bias_grad_b) {
    void* bias_grad = e.bias_grad;  // of T, as D (the default bias data type)
    set_desc(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_grad);
  }
}

// One cublasLtMatmul of `plan` with `algo` on fathom's stream: D = alpha op(first) op(second) +
// beta C, C and D of one layout (plan.out), the same buffer or disjoint ones. Operands in
// cuBLASLt's order: our B first.
inline cublasStatus_t lt_matmul(const GemmPlan& plan, const cublasLtMatmulAlgo_t& algo, float alpha,
                                const void* first, const void* second, float beta, const void* c,
                                void* d) {
  auto& handles = BlasHandles::instance();
  return cublasLtMatmul(handles.lt(), plan.desc, &alpha, first, plan.first, second, plan.second,
                        &beta, c, plan.out, d, plan.out, &algo, handles.workspace(),
                        BlasHandles::workspace_bytes, cuda::stream());
}

// Autotuning asks the heuristic for this many algorithms and runs each once to warm up, then
// this many times between two events; the total decides.
constexpr int gemm_autotune_candidates = 8;
constexpr int gemm_autotune_timed_runs = 5;

// Whether fathom's stream is being captured into a CUDA graph: then nothing may be timed,
// synchronized or allocated.
inline bool stream_capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  FATHOM_CUDA_CHECK(cudaStreamIsCapturing(cuda::stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// A 64-bit fingerprint of device memory, for telling whether two GEMM algorithms gave the same
// bits: the sum, modulo 2^64, of a mixing of each 16-bit word with its index (splitmix64's
// finalizer). Equal memory gives equal fingerprints, in any launch order (integer sums); two
// different contents give the same one with odds of about 2^-64, whichever words differ.
__device__ __host__ inline std::uint64_t fingerprint_mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
template <int Threads>
__global__ void __launch_bounds__(Threads)
    fingerprint_kernel(const std::uint16_t* words, std::uint64_t count, std::uint64_t salt,
                       unsigned long long* sum) {
  std::uint64_t h = 0;
  const std::uint64_t stride = std::uint64_t{gridDim.x} * blockDim.x;
  for (std::uint64_t i = std::uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count;
       i += stride)
    h += fingerprint_mix((((i ^ salt) << 16) | words[i]));
  h = cub::BlockReduce<std::uint64_t, Threads>().Sum(h);
  if (threadIdx.x == 0) atomicAdd(sum, static_cast<unsigned long long>(h));
}

// Device memory an autotuning launcher writes: where, and how many bytes (even).
struct ScratchOutput {
  const void* data = nullptr;
  std::size_t bytes = 0;
};

// Where autotuning's candidates write one output that the plan's real run writes too: that output
// itself when the run overwrites all of it anyway (`overwritten`) and its `span` elements (first
// to last) are all its own, with no padding between rows or batch entries (span == `elements`: a
// candidate's sign flip covers the whole span, which must hold nothing else); else a scratch
// tensor of the span, owned here and freed with the candidates' launcher. In place, the first use
// of a problem needs no memory beyond its own (a language-model head's logits are the largest
// output of a step).
template <class T>
struct CandidateOutput {
  Tensor<T, Cuda> scratch;  // empty when in place
  T* data = nullptr;
  std::int64_t span = 0;
  ScratchOutput written() const { return {data, static_cast<std::size_t>(span) * sizeof(T)}; }
};
template <class T>
CandidateOutput<T> candidate_output(T* own, std::int64_t span, std::int64_t elements,
                                    bool overwritten) {
  CandidateOutput<T> out;
  out.span = span;
  if (own && overwritten && span == elements) {
    out.data = own;
  } else {
    out.scratch = Tensor<T, Cuda>(Shape{span});
    out.data = out.scratch.data();
  }
  return out;
}

// The fingerprint of `outputs` together (each salted by its place in the list); waits for it.
inline std::uint64_t device_fingerprint(const std::vector<ScratchOutput>& outputs) {
  auto& allocator = cuda::CachingAllocator::instance();
  auto* sum = static_cast<unsigned long long*>(allocator.allocate(sizeof(unsigned long long)));
  FATHOM_CUDA_CHECK(cudaMemsetAsync(sum, 0, sizeof *sum, cuda::stream()));
  std::uint64_t salt = 0;
  for (const ScratchOutput& out : outputs) {
    FATHOM_CHECK(out.bytes % 2 == 0, "device_fingerprint: " << out.bytes << " bytes, not even");
    const std::uint64_t count = out.bytes / 2;
    salt += std::uint64_t{1} << 47;
    if (count == 0) continue;
    const auto blocks = static_cast<unsigned>(
        std::min<std::uint64_t>((count + map_threads - 1) / map_threads, map_max_blocks));
    fingerprint_kernel<map_threads><<<blocks, map_threads, 0, cuda::stream()>>>(
        static_cast<const std::uint16_t*>(out.data), count, salt, sum);
    FATHOM_CUDA_CHECK(cudaGetLastError());
  }
  unsigned long long host = 0;
  FATHOM_CUDA_CHECK(
      cudaMemcpyAsync(&host, sum, sizeof host, cudaMemcpyDeviceToHost, cuda::stream()));
  FATHOM_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  allocator.deallocate(sum);
  return host;
}

// Negates element i of `elements` (the raw bits of 2-, 4- or 8-byte numbers) in place: its sign
// bit, NaNs included.
template <class U>
struct FlipSignMap {
  U* elements;
  template <int N>
  __device__ void apply(std::int64_t i) const {
#pragma unroll
    for (int j = 0; j < N; ++j)
      elements[i + j] = static_cast<U>(elements[i + j] ^ (U{1} << (8 * sizeof(U) - 1)));
  }
};
inline void flip_signs(const ScratchOutput& out, std::size_t element_bytes) {
  FATHOM_CHECK(element_bytes == 2 || element_bytes == 4 || element_bytes == 8,
               "flip_signs: elements of " << element_bytes << " bytes");
  FATHOM_CHECK(out.bytes % element_bytes == 0,
               "flip_signs: " << out.bytes << " bytes, not whole elements of " << element_bytes);
  auto flip = [&](auto bits) {
    using U = decltype(bits);
    launch_map<1>(FlipSignMap<U>{static_cast<U*>(const_cast<void*>(out.data))},
                  static_cast<std::int64_t>(out.bytes / sizeof(U)));
  };
  if (element_bytes == 2)
    flip(std::uint16_t{});
  else if (element_bytes == 4)
    flip(std::uint32_t{});
  else
    flip(std::uint64_t{});
}

// What autotuning runs a plan's candidates through: launch(algo, beta) runs the plan on the real
// operands into scratch outputs (outputs[0] is C, of elements of element_bytes, which beta = 1
// also reads); the launcher owns them, so they are freed with it.
template <class Launch>
struct AutotuneRun {
  Launch launch;
  std::vector<ScratchOutput> outputs;
  std::size_t element_bytes = 0;

  // A run for timing: D = alpha op(A) op(B) (+ the epilogue), C not read.
  cublasStatus_t operator()(const cublasLtMatmulAlgo_t& algo) const { return launch(algo, 0.0f); }
  // A run of `candidate` whose outputs are compared: C made the product `reference` gives,
  // negated, and added (beta = 1). What is left is the reference's rounding residue, whose
  // rounding to T shows a candidate whose sums differ from the reference's even in their last
  // bits far more often than the product itself would (an fp32 C shows every difference); an
  // algorithm that adds C in another order shows too.
  cublasStatus_t compared(const cublasLtMatmulAlgo_t& reference,
                          const cublasLtMatmulAlgo_t& candidate) const {
    const cublasStatus_t made = launch(reference, 0.0f);
    if (made != CUBLAS_STATUS_SUCCESS) return made;
    flip_signs(outputs.front(), element_bytes);
    return launch(candidate, 1.0f);
  }
  std::uint64_t fingerprint() const { return device_fingerprint(outputs); }
};
template <class Launch>
AutotuneRun<Launch> autotune_run(Launch launch, std::vector<ScratchOutput> outputs,
                                 std::size_t element_bytes) {
  return {std::move(launch), std::move(outputs), element_bytes};
}

// The index of the fastest of `candidates` as `run` (an AutotuneRun) runs them on fathom's stream,
// among those whose results are the first's to the bit: each candidate runs once with its outputs
// compared (AutotuneRun::compared; also its warm-up), and only those matching the first's
// fingerprint are timed (`rejected` counts the others). Candidates that cuBLASLt declines at
// launch (NOT_SUPPORTED, INVALID_VALUE) are skipped; std::nullopt when the first is declined
// (nothing to compare with: the heuristic's first stays, as without autotuning). On a tie the
// earlier (the heuristic's order) wins.
template <class Run>
std::optional<std::size_t> fastest_algorithm(const std::vector<cublasLtMatmulAlgo_t>& candidates,
                                             const Run& run, std::uint64_t& rejected) {
  cuda::EventTimer timer;
  std::optional<std::size_t> best;
  std::uint64_t reference = 0;
  double best_ms = 0;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const cublasStatus_t status = run.compared(candidates[0], candidates[i]);
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
      if (i == 0) return std::nullopt;
      continue;
    }
    FATHOM_CUBLAS_CHECK(status);
    const std::uint64_t print = run.fingerprint();
    if (i == 0) {
      reference = print;
    } else if (print != reference) {
      ++rejected;
      continue;
    }
    const double ms =
        timer.ms([&] { FATHOM_CUBLAS_CHECK(run(candidates[i])); }, 0, gemm_autotune_timed_runs);
    if (!best || ms < best_ms) best = i, best_ms = ms;
  }
  return best;
}

// Chooses plan.algo (descriptor and layouts set) among the algorithms cuBLASLt's heuristic offers
// within the workspace and the operands' alignments (`align`: our A, B, C; cuBLASLt's A is our
// B): its first (asked for alone), or, with `autotune` and the stream not being captured, the
// fastest of that one and its first gemm_autotune_candidates that give that one's bits, as
// fastest_algorithm runs them through the AutotuneRun that make_run() returns (the plan run on the
// real operands into scratch outputs that it owns, so that they are freed with it; only called
// when there is something to time). plan.usable says whether there was an algorithm;
// NOT_SUPPORTED (and INVALID_VALUE where `invalid_is_unsupported`) leave the plan unusable, any
// other failure throws. Call with the plan cache's mutex held.
template <class MakeRun>
void choose_algorithm(GemmPlan& plan, const std::array<std::uint32_t, 3>& align,
                      bool invalid_is_unsupported, bool autotune, MakeRun&& make_run) {
  const bool timed = autotune && !stream_capturing();
  cublasLtMatmulPreference_t pref = nullptr;
  FATHOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                        decltype(&cublasLtMatmulPreferenceDestroy)>
      pref_owner(pref, &cublasLtMatmulPreferenceDestroy);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                 static_cast<std::uint64_t>(BlasHandles::workspace_bytes));
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align[1]);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align[0]);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align[2]);
  set_preference(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align[2]);
  // The heuristic's first `count` algorithms (best first by its estimate) whose state is success.
  auto heuristic = [&](int count) {
    std::array<cublasLtMatmulHeuristicResult_t, gemm_autotune_candidates> results{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        BlasHandles::instance().lt(), plan.desc, plan.first, plan.second, plan.out, plan.out, pref,
        count, results.data(), &found);
    if (status != CUBLAS_STATUS_NOT_SUPPORTED &&
        !(invalid_is_unsupported && status == CUBLAS_STATUS_INVALID_VALUE))
      FATHOM_CUBLAS_CHECK(status);
    std::vector<cublasLtMatmulAlgo_t> algos;
    if (status == CUBLAS_STATUS_SUCCESS)
      for (int i = 0; i < std::min({found, count, gemm_autotune_candidates}); ++i)
        if (results[static_cast<std::size_t>(i)].state == CUBLAS_STATUS_SUCCESS)
          algos.push_back(results[static_cast<std::size_t>(i)].algo);
    return algos;
  };
  // The plan's algorithm without autotuning, asked for alone; with it, the reference whose bits
  // the other candidates must give (a longer query need not rank the same algorithm first).
  std::vector<cublasLtMatmulAlgo_t> candidates = heuristic(1);
  if (timed && !candidates.empty())
    for (const cublasLtMatmulAlgo_t& algo : heuristic(gemm_autotune_candidates))
      if (std::memcmp(&algo, &candidates.front(), sizeof algo) != 0) candidates.push_back(algo);
  plan.usable = !candidates.empty();
  if (plan.usable) plan.algo = candidates.front();
  if (!autotune) return;
  GemmAutotuneStats& stats = GemmPlanCache::instance().autotune_stats();
  std::optional<std::size_t> best;
  if (timed && candidates.size() > 1)
    best = fastest_algorithm(candidates, make_run(), stats.algorithms_rejected);
  if (!best) {
    ++stats.plans_untimed;
    return;
  }
  plan.algo = candidates[*best];
  ++stats.plans_timed;
  if (*best != 0) ++stats.algorithms_changed;
}

template <class T>
GemmPlan make_gemm_plan(const GemmParams<T>& p, bool fuse_bias, bool tf32, bool autotune,
                        const std::array<std::uint32_t, 3>& align, const LtExtra<T>& extra = {}) {
  constexpr cudaDataType_t type = cuda_data_type<T>();
  GemmPlan plan;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  FATHOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA,
           static_cast<std::int32_t>(p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB,
           static_cast<std::int32_t>(p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N));
  if (fuse_bias) {
    // The bias (N) runs along the rows of column-major D = C^T; its type is D's (the default).
    const auto epilogue = extra.kind == LtEpilogue::gelu_aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                             : CUBLASLT_EPILOGUE_BIAS;
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<std::uint32_t>(epilogue));
    const void* bias = p.bias;  // the heuristic reads the pointer for its alignment
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  } else if (extra.kind == LtEpilogue::gelu_aux) {
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
             static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_GELU_AUX));
  } else if (extra.kind == LtEpilogue::bias_grad_b) {
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
             static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_BGRADB));
  } else if (extra.kind == LtEpilogue::dgelu_aux) {
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
             static_cast<std::uint32_t>(CUBLASLT_EPILOGUE_DGELU));
  }
  set_epilogue_pointers(plan.desc, p, extra);
  plan.first =
      make_layout(type, p.trans_b ? p.k : p.n, p.trans_b ? p.n : p.k, p.ldb, p.batch, p.stride_b);
  plan.second =
      make_layout(type, p.trans_a ? p.m : p.k, p.trans_a ? p.k : p.m, p.lda, p.batch, p.stride_a);
  plan.out = make_layout(type, p.n, p.m, p.ldc, p.batch, p.stride_c);

  // Autotuning's candidates write C and GELU's pre-activation where the real run will write them
  // (candidate_output: when that run overwrites them whole, C's beta term being 0 or read from a
  // separate c_in, and they have no padding), else to scratch outputs of the same layouts: C may be
  // accumulated into (beta = 1 there; 0 here, so a scratch C is never read), and padding may hold
  // someone else's data. The bias gradient always goes to scratch (M elements). The operands, a
  // fused bias and DGELU's aux are the real ones, only read. lt_gemm sets the real epilogue
  // pointers again before each run.
  auto make_run = [&] {
    const std::int64_t span =
        (p.batch > 1 ? (p.batch - 1) * p.stride_c : 0) + (p.m - 1) * p.ldc + p.n;
    const std::int64_t elements = p.batch * p.m * p.n;
    const bool c_overwritten = p.beta == 0.0 || (p.c_in && p.c_in != p.c);
    CandidateOutput<T> c = candidate_output(p.c, span, elements, c_overwritten);
    CandidateOutput<T> aux =
        extra.kind == LtEpilogue::gelu_aux
            ? candidate_output(const_cast<T*>(extra.aux), span, elements, /*overwritten=*/true)
            : CandidateOutput<T>();
    Tensor<T, Cuda> sums = extra.kind == LtEpilogue::bias_grad_b ? Tensor<T, Cuda>(Shape{p.m})
                                                                 : Tensor<T, Cuda>();  // (M)
    set_epilogue_pointers(plan.desc, p,
                          LtExtra<T>{extra.kind, aux.data ? aux.data : extra.aux,
                                     sums.defined() ? sums.data() : nullptr});
    std::vector<ScratchOutput> outputs{c.written()};
    if (aux.data) outputs.push_back(aux.written());
    if (sums.defined())
      outputs.push_back({sums.data(), static_cast<std::size_t>(sums.numel()) * sizeof(T)});
    return autotune_run(
        [&plan, &p, c = std::move(c), aux = std::move(aux), sums = std::move(sums)](
            const cublasLtMatmulAlgo_t& algo, float beta) {
          return lt_matmul(plan, algo, static_cast<float>(p.alpha), p.b, p.a, beta, c.data, c.data);
        },
        std::move(outputs), sizeof(T));
  };
  choose_algorithm(plan, align, /*invalid_is_unsupported=*/false, autotune, make_run);
  return plan;
}

// Runs p through cuBLASLt; false when cuBLASLt has no algorithm for it (the caller falls back).
// The bias is fused as the BIAS epilogue when its address is 16-byte aligned (cuBLASLt's
// alignment preferences do not cover the bias, and its kernels may assume 16), else added after.
// A bias gradient (extra) must be 16-byte aligned for the same reason: callers see to it.
template <class T>
bool lt_gemm(const GemmParams<T>& p, const LtExtra<T>& extra = {}) {
  const bool tf32 = std::is_same_v<T, float> && gemm_allow_tf32();
  const bool autotune = gemm_autotune();
  const bool fuse_bias = p.bias && reinterpret_cast<std::uintptr_t>(p.bias) % 16 == 0;
  // A GELU epilogue must see the bias before the activation: callers pass it aligned or not at all.
  if (extra.kind == LtEpilogue::gelu_aux && p.bias && !fuse_bias) return false;
  // C (c_in, when the beta term reads it) and D share one alignment preference: the smaller.
  const T* c_in = p.c_in ? p.c_in : p.c;
  const std::array<std::uint32_t, 3> align = {
      operand_alignment(p.a, p.lda, p.stride_a, p.batch, sizeof(T)),
      operand_alignment(p.b, p.ldb, p.stride_b, p.batch, sizeof(T)),
      std::min(operand_alignment(p.c, p.ldc, p.stride_c, p.batch, sizeof(T)),
               operand_alignment(c_in, p.ldc, p.stride_c, p.batch, sizeof(T)))};
  const bool batched = p.batch > 1;
  GemmPlanKey key;
  key.v = {static_cast<std::int64_t>(cuda_data_type<T>()),
           tf32,
           p.trans_a,
           p.trans_b,
           p.m,
           p.n,
           p.k,
           p.lda,
           p.ldb,
           p.ldc,
           batched ? p.stride_a : 0,
           batched ? p.stride_b : 0,
           batched ? p.stride_c : 0,
           p.batch,
           fuse_bias,
           align[0],
           align[1],
           align[2],
           static_cast<std::int64_t>(extra.kind),
           autotune};

  auto& cache = GemmPlanCache::instance();
  std::lock_guard<std::mutex> lock(cache.mutex());
  GemmPlan* plan = cache.find(key);
  if (!plan) plan = &cache.insert(key, make_gemm_plan(p, fuse_bias, tf32, autotune, align, extra));
  if (!plan->usable) return false;

  if (fuse_bias) {
    const void* bias = p.bias;
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  }
  set_epilogue_pointers(plan->desc, p, extra);
  const cublasStatus_t status = lt_matmul(*plan, plan->algo, static_cast<float>(p.alpha), p.b, p.a,
                                          static_cast<float>(p.beta), c_in, p.c);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->usable = false;  // remembered: this problem goes to cuBLAS from now on
    return false;
  }
  FATHOM_CUBLAS_CHECK(status);
  if (p.bias && !fuse_bias) launch_gemm_scale_add_bias(p, 1.0, p.bias);
  return true;
}

// Column sums in two deterministic passes: blocks of 32 columns x 8 row lanes sum a chunk of rows
// each into an accum_t partial (lanes combined through shared memory in a fixed order), then blocks
// of 32 columns add each column's chunks in a fixed order (sum_partial_rows). Chunks give the GPU
// enough blocks when there are few columns and many rows (a bias gradient: 768 columns, 32768
// rows).
constexpr int column_sum_lanes = 8;

template <class T>
__global__ void column_sum_partial_kernel(const T* x, accum_t<T>* partial, std::int64_t rows,
                                          std::int64_t cols, std::int64_t rows_per_chunk) {
  using Acc = accum_t<T>;
  __shared__ Acc lanes[column_sum_lanes][33];
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t r1 = min(rows, r0 + rows_per_chunk);
  Acc s = 0;
  if (col < cols)
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += column_sum_lanes)
      s += static_cast<Acc>(x[r * cols + col]);
  lanes[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    Acc t = 0;
    for (int l = 0; l < column_sum_lanes; ++l) t += lanes[l][threadIdx.x];
    partial[static_cast<std::int64_t>(blockIdx.y) * cols + col] = t;
  }
}

// out[col] (+)= the sum of partial[0 .. chunks, col] in a fixed order (sum_partial_rows): blocks
// of 32 columns by kPartialSlices threads a column.
template <class T>
__global__ void __launch_bounds__(32 * kPartialSlices)
    column_sum_finish_kernel(const accum_t<T>* partial, T* out, std::int64_t chunks,
                             std::int64_t cols, bool accumulate) {
  using Acc = accum_t<T>;
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  Acc s = sum_partial_rows(partial, chunks, cols, col, col < cols);
  if (threadIdx.y != 0 || col >= cols) return;
  if (accumulate) s += static_cast<Acc>(out[col]);
  out[col] = scalar_cast<T>(s);
}

// Launches column_sum_finish_kernel over `cols` columns.
template <class T>
void launch_column_sum_finish(const accum_t<T>* partial, T* out, std::int64_t chunks,
                              std::int64_t cols, bool accumulate) {
  const PartialRowsLaunch launch = partial_rows_launch(cols);
  column_sum_finish_kernel<T>
      <<<launch.grid, launch.block, 0, cuda::stream()>>>(partial, out, chunks, cols, accumulate);
  FATHOM_CUDA_CHECK(cudaGetLastError());
}

// The number of row chunks of a column sum over `rows` rows (each chunk one block row).
inline std::int64_t column_sum_chunks(std::int64_t rows) {
  return std::clamp<std::int64_t>((rows + 255) / 256, 1, 1024);
}

// The dGELU pass with the bias gradient's column sums fused in: g = g * gelu'(x) in place over
// (rows, cols), and, per chunk of rows, the sums of the values written (as rounded to T, so that
// they are the sums of what the weight-gradient GEMM reads) for each column into partial
// (chunks, cols), for column_sum_finish_kernel. Blocks are 32 threads of V consecutive columns
// (a 16-byte pack where aligned) by column_sum_lanes row lanes; the lanes' sums are combined in
// shared memory in a fixed order, one column a thread.
template <class T, int V>
__global__ void gelu_backward_column_sum_kernel(const T* x, T* g, accum_t<T>* partial,
                                                std::int64_t rows, std::int64_t cols,
                                                std::int64_t rows_per_chunk) {
  using Acc = accum_t<T>;
  __shared__ Acc lanes[column_sum_lanes][V][33];
  const std::int64_t block_col = static_cast<std::int64_t>(blockIdx.x) * 32 * V;
  const std::int64_t col = block_col + static_cast<std::int64_t>(threadIdx.x) * V;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t r1 = min(rows, r0 + rows_per_chunk);
  Acc s[V];
#pragma unroll
  for (int v = 0; v < V; ++v) s[v] = Acc(0);
  if (col < cols) {  // with V > 1, cols % V == 0: the whole pack is inside
#pragma unroll 4
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += column_sum_lanes) {
      const std::int64_t i = r * cols + col;
      const auto xv = map_load<V>(x + i);
      auto gv = map_load<V>(g + i);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        // 0 + as gelu_backward writes a fresh result (a -0 product becomes +0): the same bits.
        gv.v[v] = scalar_cast<T>(Acc(0) +
                                 scalar_cast<Acc>(gv.v[v]) * gelu_grad(scalar_cast<Acc>(xv.v[v])));
        s[v] += scalar_cast<Acc>(gv.v[v]);
      }
      map_store<V>(g + i, gv);
    }
  }
#pragma unroll
  for (int v = 0; v < V; ++v) lanes[threadIdx.y][v][threadIdx.x] = s[v];
  __syncthreads();
  const int t = static_cast<int>(threadIdx.y * 32 + threadIdx.x);  // the block's t-th column
  if (t < 32 * V && block_col + t < cols) {
    Acc sum = 0;
    for (int l = 0; l < column_sum_lanes; ++l) sum += lanes[l][t % V][t / V];
    partial[static_cast<std::int64_t>(blockIdx.y) * cols + block_col + t] = sum;
  }
}

template <class T>
void launch_gelu_backward_column_sum(const T* x, T* g, T* sums, std::int64_t rows,
                                     std::int64_t cols) {
  using Acc = accum_t<T>;
  static_assert(map_width<T>() * 32 <= 32 * column_sum_lanes,
                "gelu_backward_column_sum_kernel: one thread a column of the block when combining");
  const std::int64_t chunks = column_sum_chunks(rows);
  const std::int64_t rows_per_chunk = std::max<std::int64_t>((rows + chunks - 1) / chunks, 1);
  Tensor<Acc, Cuda> partial(Shape{chunks * cols});  // (chunks, cols)
  constexpr int V = map_width<T>();
  const bool packed = V > 1 && cols % V == 0 && map_aligned(x) && map_aligned(g);
  const dim3 block(32, column_sum_lanes);
  const auto grid_of = [&](int v) {
    return dim3(static_cast<unsigned>((cols + 32 * v - 1) / (32 * v)),
                static_cast<unsigned>(chunks));
  };
  if (packed)
    gelu_backward_column_sum_kernel<T, V><<<grid_of(V), block, 0, cuda::stream()>>>(
        x, g, partial.data(), rows, cols, rows_per_chunk);
  else
    gelu_backward_column_sum_kernel<T, 1><<<grid_of(1), block, 0, cuda::stream()>>>(
        x, g, partial.data(), rows, cols, rows_per_chunk);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  launch_column_sum_finish<T>(partial.data(), sums, chunks, cols, /*accumulate=*/false);
}

// out = sums (+ out when accumulating), in accum_t<T>: a bias gradient the GEMM epilogue wrote to
// a scratch buffer, moved to (or added into) its place.
template <class T>
__global__ void bias_grad_store_kernel(const T* sums, T* out, std::int64_t n, bool accumulate) {
  using Acc = accum_t<T>;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  Acc v = static_cast<Acc>(sums[j]);
  if (accumulate) v += static_cast<Acc>(out[j]);
  out[j] = scalar_cast<T>(v);
}

}  // namespace detail

// Number of cuBLASLt plans cached so far (each distinct GEMM problem makes one, once).
inline std::size_t gemm_plan_count() { return detail::GemmPlanCache::instance().size(); }

// What autotuning (set_gemm_autotune) did in this process so far: every plan made with it on
// counts once, as timed or untimed.
inline GemmAutotuneStats gemm_autotune_stats() {
  return detail::GemmPlanCache::instance().autotune_stats_snapshot();
}

template <class T>
void gemm(Cuda, const GemmParams<T>& params) {
  static_assert(FloatingScalar<T>, "gemm: T must be double, float or bf16");
  const GemmParams<T> p = detail::resolve_gemm(params);
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  if (p.k == 0) {
    detail::launch_gemm_scale_add_bias(p, p.beta, p.bias, p.c_in);
    return;
  }
  if constexpr (!std::is_same_v<T, double>) {
    const bool reuses_operand = p.batch > 1 && (p.stride_a == 0 || p.stride_b == 0);
    if (!reuses_operand && detail::lt_gemm(p)) return;
  }
  detail::blas_gemm(p);
}

template <class T>
void column_sum(Cuda, const ColumnSumParams<T>& p);

namespace detail {

// cuBLASLt's GELU epilogue: bf16 only (the training path), a 16-byte aligned aux and a leading
// dimension of C that keeps every aux row aligned. Its GELU is the tanh form, evaluated with a
// fast tanh: within 2 bf16 steps of fathom's (1.98 at most on an H200), and nearer the tanh form
// than the erf form wherever those differ (tests/kernels/cuda/test_gemm.cu).
template <class T>
bool gelu_epilogue_fits(const GemmParams<T>& p, const void* aux) {
  return std::is_same_v<T, bf16> && reinterpret_cast<std::uintptr_t>(aux) % 16 == 0 &&
         p.ldc % 8 == 0;
}

}  // namespace detail

template <class T>
void gemm_gelu(Cuda, const GemmParams<T>& params, T* aux) {
  const GemmParams<T> p = detail::check_gemm_gelu(params, aux, "gemm_gelu");
  if (p.m == 0 || p.n == 0) return;
  if (p.k > 0 && detail::gelu_epilogue_fits(p, aux) &&
      detail::lt_gemm(p, detail::LtExtra<T>{detail::LtEpilogue::gelu_aux, aux}))
    return;
  GemmParams<T> pre = p;
  pre.c = aux;
  gemm(Cuda{}, pre);
  gelu(Cuda{}, ActivationParams<T>{aux, p.c, p.m * p.n});
}

template <class T>
void gemm_swiglu(Cuda, const GemmParams<T>& params, T* h) {
  const GemmParams<T> p = detail::check_gemm_swiglu(params, h, "gemm_swiglu");
  if (p.m == 0 || p.n == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (swiglu_epilogue() && detail::sm90::swiglu_fits(p, h)) {
      detail::sm90::gemm_sm90_swiglu(p.a, p.lda, p.b, p.ldb, p.c, p.ldc, h, p.n / 2, p.m, p.n / 2,
                                     p.k);
      return;
    }
  }
  gemm(Cuda{}, p);
  const std::int64_t f = p.n / 2;
  swiglu(Cuda{}, SwigluParams<T>{p.c, p.c + f, h, p.m * f, f, p.n});
}

// With dgelu_epilogue() (bf16 where the GELU epilogues fit): cuBLASLt's DGELU epilogue, which
// reads aux as the GEMM stores each tile, then the bias gradient as a column sum over the result.
// That reads and writes the (M, N) product once fewer than the element-wise pass below.
// Not cuBLASLt's DGELU_BGRAD epilogue: on an H200 at GPT-2's (32768 x 3072) it ran the GEMM plus
// a separate 0.61 ms kernel, against 0.3 ms for the element-wise pass and column sum below
// (bench/NOTES.md, v3). Otherwise, unless the bias-gradient route is `separate`, the column sums
// come out of the element-wise pass itself (block partials and a small second pass) instead of
// another read of the result.
template <class T>
void gemm_dgelu(Cuda, const GemmParams<T>& params, const T* aux, T* bias_grad) {
  const GemmParams<T> p = detail::check_gemm_gelu(params, aux, "gemm_dgelu");
  if (p.n == 0) return;
  if (p.m == 0) {  // no rows: the sums are zero
    if (bias_grad) device_fill(Cuda{}, bias_grad, p.n, scalar_cast<T>(0.0));
    return;
  }
  if (p.k > 0 && dgelu_epilogue() && detail::gelu_epilogue_fits(p, aux) &&
      detail::lt_gemm(p, detail::LtExtra<T>{detail::LtEpilogue::dgelu_aux, aux})) {
    ++detail::dgelu_epilogue_runs();
    if (bias_grad)
      column_sum(Cuda{},
                 ColumnSumParams<T>{
                     .x = p.c, .out = bias_grad, .rows = p.m, .cols = p.n, .accumulate = false});
    return;
  }
  gemm(Cuda{}, p);
  if (bias_grad && bias_grad_route() != BiasGradRoute::separate) {
    detail::launch_gelu_backward_column_sum(aux, p.c, bias_grad, p.m, p.n);
    ++detail::fused_bias_grad_runs();
    return;
  }
  gelu_backward(Cuda{}, ActivationBackwardParams<T>{aux, p.c, p.c, p.m * p.n,
                                                    /*accumulate=*/false});  // in place
  if (bias_grad)
    column_sum(Cuda{},
               ColumnSumParams<T>{
                   .x = p.c, .out = bias_grad, .rows = p.m, .cols = p.n, .accumulate = false});
}

// On the `fused` route, float and bf16 problems go to cuBLASLt with the BGRADB epilogue: the
// sums are written by the GEMM that reads dY anyway, straight into bias_grad when it is written
// fresh (and 16-byte aligned), else into a scratch vector that a small kernel then adds into
// bias_grad (the epilogue only writes). What cuBLASLt declines, double, and fusion off: the GEMM,
// then column_sum over dY.
template <class T>
void gemm_bias_grad(Cuda, const GemmParams<T>& params, T* bias_grad, bool accumulate) {
  const GemmParams<T> p = detail::check_gemm_bias_grad(params, bias_grad, "gemm_bias_grad");
  if constexpr (!std::is_same_v<T, double>) {
    if (bias_grad_route() == BiasGradRoute::fused && p.m > 0 && p.n > 0 && p.k > 0) {
      const bool direct = !accumulate && reinterpret_cast<std::uintptr_t>(bias_grad) % 16 == 0;
      Tensor<T, Cuda> scratch = direct ? Tensor<T, Cuda>() : Tensor<T, Cuda>(Shape{p.m});  // (M)
      T* sums = direct ? bias_grad : scratch.data();
      if (detail::lt_gemm(
              p, detail::LtExtra<T>{.kind = detail::LtEpilogue::bias_grad_b, .bias_grad = sums})) {
        if (!direct) {
          const int threads = 256;
          detail::bias_grad_store_kernel<T>
              <<<static_cast<unsigned>((p.m + threads - 1) / threads), threads, 0,
                 cuda::stream()>>>(sums, bias_grad, p.m, accumulate);
          FATHOM_CUDA_CHECK(cudaGetLastError());
        }
        ++detail::fused_bias_grad_runs();
        return;
      }
      ++detail::unfused_bias_grad_runs();
    }
  }
  gemm(Cuda{}, p);
  column_sum(Cuda{},
             ColumnSumParams<T>{
                 .x = p.a, .out = bias_grad, .rows = p.k, .cols = p.m, .accumulate = accumulate});
}

template <class T>
void column_sum(Cuda, const ColumnSumParams<T>& p) {
  using Acc = accum_t<T>;
  FATHOM_CHECK(p.rows >= 0 && p.cols >= 0,
               "column_sum: expected non-negative sizes, got (" << p.rows << ", " << p.cols << ")");
  if (p.cols == 0) return;
  const std::int64_t chunks = detail::column_sum_chunks(p.rows);
  const std::int64_t rows_per_chunk = std::max<std::int64_t>((p.rows + chunks - 1) / chunks, 1);
  Tensor<Acc, Cuda> partial(Shape{chunks * p.cols});  // (chunks, cols)
  const dim3 block(32, detail::column_sum_lanes);
  const dim3 grid(static_cast<unsigned>((p.cols + 31) / 32), static_cast<unsigned>(chunks));
  detail::column_sum_partial_kernel<T>
      <<<grid, block, 0, cuda::stream()>>>(p.x, partial.data(), p.rows, p.cols, rows_per_chunk);
  FATHOM_CUDA_CHECK(cudaGetLastError());
  detail::launch_column_sum_finish<T>(partial.data(), p.out, chunks, p.cols, p.accumulate);
}

}  // namespace fathom::kernels
