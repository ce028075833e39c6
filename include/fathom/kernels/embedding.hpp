// Embedding lookup: forward gathers rows of a (V, C) table by int32 ids; backward scatter-adds
// the output gradient into the table's gradient. CPU reference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"

namespace fathom::kernels {

// out[i, :] = table[ids[i], :]
template <class T>
struct EmbeddingParams {
  const std::int32_t* ids = nullptr;  // (n)
  const T* table = nullptr;           // (V, C)
  T* out = nullptr;                   // (n, C)
  std::int64_t n = 0, vocab = 0, channels = 0;
};

// dtable[ids[i], :] += dout[i, :] for every i. Rows of one id are summed in accum_t<T>, in a
// fixed order (position order here; the CUDA version groups positions in chunks), and added to
// dtable once, so the result is deterministic and a bf16 table gradient is rounded once per call,
// not once per occurrence.
template <class T>
struct EmbeddingBackwardParams {
  const std::int32_t* ids = nullptr;  // (n)
  const T* dout = nullptr;            // (n, C)
  T* dtable = nullptr;                // (V, C), accumulated into
  std::int64_t n = 0, vocab = 0, channels = 0;
};

namespace detail {

inline void check_embedding_id(std::int32_t id, std::int64_t position, std::int64_t vocab) {
  FATHOM_CHECK(id >= 0 && id < vocab, "embedding: id " << id << " at position " << position
                                                       << " is out of range for a table of "
                                                       << vocab << " rows (expected 0 <= id < "
                                                       << vocab << ")");
}

}  // namespace detail

template <class T>
void embedding(Cpu, const EmbeddingParams<T>& p) {
  for (std::int64_t i = 0; i < p.n; ++i) {
    const std::int32_t id = p.ids[i];
    detail::check_embedding_id(id, i, p.vocab);
    std::copy_n(p.table + id * p.channels, p.channels, p.out + i * p.channels);
  }
}

template <class T>
void embedding_backward(Cpu, const EmbeddingBackwardParams<T>& p) {
  using Acc = accum_t<T>;
  for (std::int64_t i = 0; i < p.n; ++i) detail::check_embedding_id(p.ids[i], i, p.vocab);
  // Positions grouped by id, each group in position order (the stable sort the CUDA version does).
  std::vector<std::int64_t> order(static_cast<std::size_t>(p.n));
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int64_t x, std::int64_t y) { return p.ids[x] < p.ids[y]; });
  std::vector<Acc> sum(static_cast<std::size_t>(p.channels));  // (C)
  for (std::size_t s = 0; s < order.size();) {
    const std::int32_t id = p.ids[order[s]];
    std::fill(sum.begin(), sum.end(), Acc(0));
    for (; s < order.size() && p.ids[order[s]] == id; ++s) {
      const T* row = p.dout + order[s] * p.channels;
      for (std::int64_t c = 0; c < p.channels; ++c)
        sum[static_cast<std::size_t>(c)] += static_cast<Acc>(row[c]);
    }
    T* dst = p.dtable + id * p.channels;
    for (std::int64_t c = 0; c < p.channels; ++c)
      dst[c] = scalar_cast<T>(static_cast<Acc>(dst[c]) + sum[static_cast<std::size_t>(c)]);
  }
}

}  // namespace fathom::kernels
