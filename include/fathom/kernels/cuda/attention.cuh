// CUDA attention, flash-style: forward and backward never store a (T, T) matrix in device memory.
// This file picks one of three kernel families for kernels::attention(Cuda, ...) and
// kernels::attention_backward(Cuda, ...):
//  - wgmma (attention/wgmma.cuh): where mma applies with head_dim 64, on a GPU running sm_90a
//    code (Hopper built for 90a), on the warpgroup MMA;
//  - mma (attention/mma.cuh): bf16 with head_dim 32 or 64 and 16-byte aligned rows, on tensor
//    cores (the forward also needs scale > 0);
//  - tiled (attention/tiled.cuh): everything else (any head_dim <= 128, float, double or bf16).
// Backward (both families): D = rowsum(dO * O); dK and dV by one block per key tile that loops
// over the query tiles; dQ by one block per query tile over the key tiles. The dQ pass recomputes
// Q K^T and dO V^T instead of adding dQ with atomics: the result is deterministic and needs no
// fp32 scratch for dQ. The tiled family computes D in a pass of its own first; the mma family in
// the dQ pass, which then runs before dK/dV (D by its own pass only when dQ is not wanted). All
// three gradients are ADDED to (unless accumulate is false).
#pragma once

#if !defined(__CUDACC__)
#error "kernels/cuda/attention.cuh must be compiled by nvcc"
#endif

#include <cstdint>
#include <type_traits>

#include "fathom/core/cuda_runtime.hpp"
#include "fathom/kernels/attention.hpp"
#include "fathom/kernels/cuda/attention/common.cuh"
#include "fathom/kernels/cuda/attention/mma.cuh"
#include "fathom/kernels/cuda/attention/tiled.cuh"
#include "fathom/kernels/cuda/attention/wgmma.cuh"

namespace fathom::kernels {

namespace detail::attn {

inline bool aligned_rows(const void* ptr, std::int64_t stride, std::int64_t bytes_multiple) {
  const auto multiple = static_cast<std::uintptr_t>(bytes_multiple);
  return reinterpret_cast<std::uintptr_t>(ptr) % multiple == 0 &&
         (stride * static_cast<std::int64_t>(sizeof(bf16))) % bytes_multiple == 0;
}

// The mma kernels read rows in 16-byte pieces and write output pairs as 4 bytes; the forward
// takes its running max over unscaled scores, which needs scale > 0.
inline bool use_mma(const AttentionParams<bf16>& p) {
  return (p.head_dim == 32 || p.head_dim == 64) && p.scale > 0 &&
         aligned_rows(p.q, p.q_stride, 16) && aligned_rows(p.k, p.k_stride, 16) &&
         aligned_rows(p.v, p.v_stride, 16) && aligned_rows(p.o, p.o_stride, 4);
}
inline bool use_mma(const AttentionBackwardParams<bf16>& p) {
  return (p.head_dim == 32 || p.head_dim == 64) && aligned_rows(p.q, p.q_stride, 16) &&
         aligned_rows(p.k, p.k_stride, 16) && aligned_rows(p.v, p.v_stride, 16) &&
         aligned_rows(p.d_o, p.do_stride, 16) && aligned_rows(p.o, p.o_stride, 16) &&
         (!p.dq || aligned_rows(p.dq, p.dq_stride, 4)) &&
         (!p.dk || aligned_rows(p.dk, p.dk_stride, 4)) &&
         (!p.dv || aligned_rows(p.dv, p.dv_stride, 4));
}

inline void check_head_dim(std::int64_t hd) {
  FATHOM_CHECK(hd >= 1 && hd <= 128, "attention (CUDA): expected head_dim in [1, 128], got " << hd);
}

}  // namespace detail::attn

template <class T>
void attention(Cuda, const AttentionParams<T>& p) {
  namespace a = detail::attn;
  a::check_head_dim(p.head_dim);
  if (p.batch == 0 || p.seq == 0 || p.heads == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (a::use_mma(p)) {
      if (p.head_dim == 64 && a::wgmma_available()) return a::launch_forward_wgmma(p);
      if (p.head_dim == 64) return a::launch_forward_mma<64>(p);
      return a::launch_forward_mma<32>(p);
    }
  }
  a::launch_forward_tiled<T>(p);
}

// The kernel family that kernels::attention and attention_backward run for bf16 at head_dim 64 on
// the current GPU: "wgmma" (a GPU running sm_90a code; FATHOM_ATTENTION_WGMMA=0 turns it off) or
// "mma". Other shapes and types take the mma (head_dim 32) or tiled families as described above.
inline const char* attention_family(Cuda) {
  return detail::attn::wgmma_available() ? "wgmma" : "mma";
}

// Whether attention_backward(Cuda, p) honors p.rope_theta: only the mma family turns dq and dk
// back by RoPE's inverse in its stores (bf16, head_dim 32 or 64, aligned rows). Elsewhere the
// caller runs the rope backward itself (autograd::rope_attention_qkv does).
template <class T>
bool attention_backward_turns_rope(Cuda, const AttentionBackwardParams<T>& p) {
  if constexpr (std::is_same_v<T, bf16>) {
    return detail::attn::use_mma(p);
  } else {
    (void)p;
    return false;
  }
}

template <class T>
void attention_backward(Cuda, const AttentionBackwardParams<T>& p) {
  namespace a = detail::attn;
  using A = accum_t<T>;
  a::check_head_dim(p.head_dim);
  FATHOM_CHECK(p.rope_theta <= 0 || attention_backward_turns_rope(Cuda{}, p),
               "attention_backward (CUDA): RoPE's inverse turn is fused only into the bf16 "
               "tensor-core kernels (head_dim 32 or 64, 16-byte aligned rows); got head_dim "
                   << p.head_dim << " (check attention_backward_turns_rope first)");
  if (p.batch == 0 || p.seq == 0 || p.heads == 0 || (!p.dq && !p.dk && !p.dv)) return;
  bool mma = false;
  if constexpr (std::is_same_v<T, bf16>) mma = a::use_mma(p);
  // delta (B, H, T) in the workspace: used by this call's kernels only.
  A* delta = cuda::CachingAllocator::instance().workspace_for<A>(
      static_cast<std::size_t>(p.batch * p.seq * p.heads));
  if constexpr (std::is_same_v<T, bf16>) {
    if (mma) {
      if (p.head_dim == 64 && a::wgmma_available()) return a::launch_backward_wgmma(p, delta);
      if (p.head_dim == 64) return a::launch_backward_mma<64>(p, delta);
      return a::launch_backward_mma<32>(p, delta);
    }
  }
  a::launch_rowsum(p, delta, false);
  a::launch_backward_tiled<T>(p, delta);
}

}  // namespace fathom::kernels
