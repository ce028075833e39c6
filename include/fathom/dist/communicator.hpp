// The communicator of data-parallel training: a group of ranks, each with the same model, that
// reduce, scatter, gather and broadcast buffers together. Two models of it: InProcessCommunicator
// (ranks as threads over host memory; dist/in_process.hpp) and NcclCommunicator (one process per
// GPU; dist/nccl.hpp). Typed helpers over Tensor<T, D> sit below the interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "fathom/core/error.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/tensor/tensor.hpp"

namespace fathom::dist {

enum class DataType { float32, float64, bfloat16, int32, int64, uint8 };
// sum and avg of gradients and losses; max of fp8 amax histories (train::DataParallel).
enum class ReduceOp { sum, avg, max };

inline std::size_t size_of(DataType t) {
  switch (t) {
    case DataType::float32:
      return 4;
    case DataType::float64:
      return 8;
    case DataType::bfloat16:
      return 2;
    case DataType::int32:
      return 4;
    case DataType::int64:
      return 8;
    case DataType::uint8:
      return 1;
  }
  return 0;
}

inline std::string_view to_string(DataType t) {
  switch (t) {
    case DataType::float32:
      return "float32";
    case DataType::float64:
      return "float64";
    case DataType::bfloat16:
      return "bfloat16";
    case DataType::int32:
      return "int32";
    case DataType::int64:
      return "int64";
    case DataType::uint8:
      return "uint8";
  }
  return "?";
}

template <class T>
constexpr DataType data_type_of() {
  if constexpr (std::is_same_v<T, float>)
    return DataType::float32;
  else if constexpr (std::is_same_v<T, double>)
    return DataType::float64;
  else if constexpr (std::is_same_v<T, bf16>)
    return DataType::bfloat16;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return DataType::int32;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return DataType::int64;
  else if constexpr (std::is_same_v<T, std::uint8_t>)
    return DataType::uint8;
  else
    static_assert(sizeof(T) == 0,
                  "dist: no communicator data type for this element type "
                  "(float, double, bf16, int32, int64 and uint8 have one)");
}

// Communicator: one rank's end of a group of world_size() ranks.
//
// Every collective is called by every rank of the group, in the same order, with the same counts,
// data type, operation and root; buffers are in the memory of the backend's device (host memory
// for the in-process backend, this rank's GPU for NCCL). A collective may be queued rather than
// finished when it returns (NCCL queues it on the communicator's stream, after the work already
// queued on fathom's stream); wait() makes the work queued next on fathom's stream come after it,
// and synchronize() waits on the host.
//
//   rank()             in [0, world_size())
//   world_size()       >= 1
//   all_reduce(send, recv, count, type, op)
//       recv[i] = op over ranks r of send_r[i], i < count; recv may equal send (in place). Sums
//       run in rank order on the in-process backend, so they are reproducible bit for bit.
//   reduce_scatter(send, recv, count, type, op)
//       send holds count * world_size() elements; rank r gets in recv the reduction of block r.
//       recv may be send + rank() * count (in place).
//   all_gather(send, recv, count, type)
//       recv (count * world_size()) holds block r = send_r (count). send may be recv + rank() *
//       count (in place).
//   broadcast(buffer, count, type, root)
//       every rank's buffer becomes root's.
//   barrier()          returns once every rank has called it (and everything before it is done).
//   wait()             later work on fathom's stream runs after the collectives issued so far.
//   synchronize()      the collectives issued so far are complete (host blocks).
//
// A rank that fails makes the collectives of the others fail (an Error naming the rank) instead
// of hanging; see each backend for how and how fast.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string_view backend() const = 0;

  virtual void all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                          ReduceOp op) = 0;
  virtual void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                              ReduceOp op) = 0;
  virtual void all_gather(const void* send, void* recv, std::size_t count, DataType type) = 0;
  virtual void broadcast(void* buffer, std::size_t count, DataType type, int root) = 0;
  virtual void barrier() = 0;
  virtual void wait() = 0;
  virtual void synchronize() = 0;

  bool is_root() const { return rank() == 0; }
};

// --- typed helpers over tensors ----------------------------------------------------------------
// Each orders fathom's stream after its collective (Communicator::wait), so what is queued next
// there (a copy to the host, a kernel) sees the result.

namespace detail {
template <class T, class D>
void require_contiguous(const Tensor<T, D>& t, const char* what) {
  FATHOM_CHECK(t.defined() && t.is_contiguous(),
               what << ": expected a defined, contiguous tensor, got shape " << t.shape());
}
}  // namespace detail

// In place: every rank's `t` becomes op over ranks of `t`.
template <class T, DeviceTag D>
void all_reduce(Communicator& comm, Tensor<T, D>& t, ReduceOp op = ReduceOp::sum) {
  detail::require_contiguous(t, "all_reduce");
  if (t.numel() == 0) return;
  comm.all_reduce(t.data(), t.data(), static_cast<std::size_t>(t.numel()), data_type_of<T>(), op);
  comm.wait();
}

// `in` (world_size * n elements) reduced over ranks; this rank gets block rank() in `out` (n).
template <class T, DeviceTag D>
void reduce_scatter(Communicator& comm, const Tensor<T, D>& in, Tensor<T, D>& out,
                    ReduceOp op = ReduceOp::sum) {
  detail::require_contiguous(in, "reduce_scatter (input)");
  detail::require_contiguous(out, "reduce_scatter (output)");
  FATHOM_CHECK(in.numel() == out.numel() * comm.world_size(),
               "reduce_scatter: input has " << in.numel() << " elements, expected output's "
                                            << out.numel() << " x " << comm.world_size()
                                            << " ranks");
  if (out.numel() == 0) return;
  comm.reduce_scatter(in.data(), out.data(), static_cast<std::size_t>(out.numel()),
                      data_type_of<T>(), op);
  comm.wait();
}

// Every rank's `in` (n elements), concatenated in rank order into `out` (world_size * n).
template <class T, DeviceTag D>
void all_gather(Communicator& comm, const Tensor<T, D>& in, Tensor<T, D>& out) {
  detail::require_contiguous(in, "all_gather (input)");
  detail::require_contiguous(out, "all_gather (output)");
  FATHOM_CHECK(out.numel() == in.numel() * comm.world_size(),
               "all_gather: output has " << out.numel() << " elements, expected input's "
                                         << in.numel() << " x " << comm.world_size() << " ranks");
  if (in.numel() == 0) return;
  comm.all_gather(in.data(), out.data(), static_cast<std::size_t>(in.numel()), data_type_of<T>());
  comm.wait();
}

template <class T, DeviceTag D>
void broadcast(Communicator& comm, Tensor<T, D>& t, int root = 0) {
  detail::require_contiguous(t, "broadcast");
  if (t.numel() == 0) return;
  comm.broadcast(t.data(), static_cast<std::size_t>(t.numel()), data_type_of<T>(), root);
  comm.wait();
}

// A host value broadcast from root, for communicators over host memory or through a device
// buffer for those over device memory (`D` names the communicator's device).
template <DeviceTag D, class T>
T broadcast_value(Communicator& comm, T value, int root = 0) {
  auto t = Tensor<T, D>::from_vector(Shape{1}, {value});
  broadcast(comm, t, root);
  return t.item();
}

// Fails on every rank, with one line naming a rank whose `fingerprint` differs from rank 0's,
// unless all ranks pass the same value (a hash of the run's options, checked before training).
template <DeviceTag D>
void require_same_on_all_ranks(Communicator& comm, std::uint64_t fingerprint,
                               std::string_view what) {
  const int n = comm.world_size();
  auto mine =
      Tensor<std::int64_t, D>::from_vector(Shape{1}, {static_cast<std::int64_t>(fingerprint)});
  Tensor<std::int64_t, D> all(Shape{n});
  all_gather(comm, mine, all);
  const auto values = all.to_vector();
  for (int r = 1; r < n; ++r)
    FATHOM_CHECK(values[static_cast<std::size_t>(r)] == values[0],
                 "rank " << r << " has a different " << what
                         << " than rank 0 (every rank must be "
                            "started with the same options)");
}

}  // namespace fathom::dist
