// Differentiable embedding lookup: rows of a (V, C) table picked by int32 ids; the backward
// scatter-adds the output gradient into the table's gradient.
#pragma once

#include <cstdint>

#include "fathom/autograd/var.hpp"
#include "fathom/kernels/embedding.hpp"
#if defined(__CUDACC__)
// Declared before the ops below so that kernels::embedding(Cuda{}, ...) resolves (a qualified
// call sees only the overloads declared before the template that makes it).
#include "fathom/kernels/cuda/embedding.cuh"
#endif

namespace fathom::autograd {

// embedding(ids, table): ids of any shape S, table (V, C) -> (S..., C).
// An id outside [0, V) throws fathom::Error naming the id, its position and V on the CPU; on CUDA
// see kernels/cuda/embedding.cuh (the row becomes NaN).
template <class T, DeviceTag D>
Var<T, D> embedding(const Tensor<std::int32_t, D>& ids, const Var<T, D>& table) {
  FATHOM_CHECK(table.dim() == 2, "embedding: table must be (vocab, channels), got "
                                     << table.shape() << " for ids " << ids.shape());
  FATHOM_CHECK(ids.dim() < Shape::max_rank,
               "embedding: ids " << ids.shape()
                                 << " leave no room for the channel dimension (at most "
                                 << Shape::max_rank - 1 << " dimensions)");
  const std::int64_t vocab = table.size(0), channels = table.size(1), n = ids.numel();
  Tensor<std::int32_t, D> idv = ids.contiguous();
  Tensor<T, D> tv = table.value().contiguous();
  Shape out_shape = ids.shape();
  out_shape.push_back(channels);
  Tensor<T, D> y(out_shape);  // (n, C)
  kernels::embedding(D{}, kernels::EmbeddingParams<T>{.ids = idv.data(),
                                                      .table = tv.data(),
                                                      .out = y.data(),
                                                      .n = n,
                                                      .vocab = vocab,
                                                      .channels = channels});

  auto gt = grad_target(table);
  return Var<T, D>::make_result(
      std::move(y), static_cast<bool>(gt),
      [gt, idv, n, vocab, channels](const Tensor<T, D>& gy_in) {
        Tensor<T, D> gy = gy_in.contiguous();  // (n, C)
        kernels::embedding_backward(
            D{}, kernels::EmbeddingBackwardParams<T>{.ids = idv.data(),
                                                     .dout = gy.data(),
                                                     .dtable = gt->accumulator().data(),
                                                     .n = n,
                                                     .vocab = vocab,
                                                     .channels = channels});
      });
}

}  // namespace fathom::autograd
