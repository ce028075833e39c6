// The in-process communicator: the ranks of a group are threads of one process over host memory.
// It makes every distributed code path (bucketing, sharding, checkpoint gather and scatter,
// equivalence with gradient accumulation) run and testable without GPUs; fathom-train --nproc N
// on the CPU runs on it. run_ranks() starts the threads and reports the first failure.
#pragma once

#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fathom/dist/communicator.hpp"

namespace fathom::dist {

namespace detail {

// Sums, averages and maxima of `count` elements of `type` over `n` source buffers, in source
// order: out[i] = ((src0[i] + src1[i]) + src2[i]) + ..., each sum rounded to `type` as a
// sequential accumulation in that type would round it (bf16 adds in float, then rounds); a
// maximum is the largest value (the first of equal ones).
inline void reduce_in_order(const std::vector<const void*>& srcs, void* out, std::size_t offset,
                            std::size_t count, DataType type, ReduceOp op) {
  const std::size_t n = srcs.size();
  auto run = [&](auto tag) {
    using V = decltype(tag);
    V* o = static_cast<V*>(out);
    for (std::size_t i = 0; i < count; ++i) {
      V acc = static_cast<const V*>(srcs[0])[offset + i];
      for (std::size_t r = 1; r < n; ++r) {
        if (op == ReduceOp::max) {
          const V v = static_cast<const V*>(srcs[r])[offset + i];
          if constexpr (std::is_same_v<V, bf16>) {
            if (static_cast<float>(v) > static_cast<float>(acc)) acc = v;
          } else if (v > acc) {
            acc = v;
          }
          continue;
        }
        if constexpr (std::is_same_v<V, bf16>)
          acc = bf16(static_cast<float>(acc) +
                     static_cast<float>(static_cast<const V*>(srcs[r])[offset + i]));
        else
          acc = static_cast<V>(acc + static_cast<const V*>(srcs[r])[offset + i]);
      }
      if (op == ReduceOp::avg) {
        if constexpr (std::is_same_v<V, bf16>)
          acc = bf16(static_cast<float>(acc) / static_cast<float>(n));
        else
          acc = static_cast<V>(acc / static_cast<V>(n));
      }
      o[i] = acc;
    }
  };
  switch (type) {
    case DataType::float32:
      run(float{});
      break;
    case DataType::float64:
      run(double{});
      break;
    case DataType::bfloat16:
      run(bf16{});
      break;
    case DataType::int32:
      run(std::int32_t{});
      break;
    case DataType::int64:
      run(std::int64_t{});
      break;
    case DataType::uint8:
      run(std::uint8_t{});
      break;
  }
}

}  // namespace detail

// The shared state of one group of in-process ranks: where each rank's buffers are for the
// collective under way, and whether a rank failed or left.
class InProcessGroup {
 public:
  explicit InProcessGroup(int world_size)
      : n_(world_size), calls_(static_cast<std::size_t>(world_size)) {
    FATHOM_CHECK(world_size >= 1, "in-process group: expected at least 1 rank, got " << world_size);
  }
  int world_size() const { return n_; }

  // What a rank brings to a collective.
  struct Call {
    const char* kind = "";
    const void* send = nullptr;
    void* recv = nullptr;
    std::size_t count = 0;
    DataType type = DataType::float32;
    ReduceOp op = ReduceOp::sum;
    int root = 0;
  };

  // Marks `rank` failed: every collective under way or to come fails, naming it.
  void fail(int rank, const std::string& why) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (failed_rank_ < 0) {
      failed_rank_ = rank;
      failure_ = "rank " + std::to_string(rank) + " failed: " + why;
    }
    cv_.notify_all();
  }
  // The rank that failed first (the cause; the others failed because of it), or -1.
  int failed_rank() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return failed_rank_;
  }
  // Marks `rank` finished: a collective that waits for it can no longer complete.
  void leave(int rank) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++left_;
    if (left_rank_ < 0) left_rank_ = rank;
    cv_.notify_all();
  }

  // Runs one collective for `rank`: waits for every rank's call, checks that they agree, lets
  // `body` read every rank's call (it writes to this rank's scratch only), waits for every rank
  // to finish reading, then lets `commit` write this rank's output.
  template <class Body, class Commit>
  void collective(int rank, const Call& call, Body&& body, Commit&& commit) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      calls_[static_cast<std::size_t>(rank)] = call;
      arrive_and_wait(lock, rank, call.kind);
      const Call& first = calls_[0];
      for (int r = 1; r < n_; ++r) {
        const Call& c = calls_[static_cast<std::size_t>(r)];
        if (std::strcmp(c.kind, first.kind) != 0 || c.count != first.count ||
            c.type != first.type || c.op != first.op || c.root != first.root) {
          std::ostringstream s;
          s << "collectives do not match: rank 0 called " << first.kind << " (" << first.count
            << " x " << to_string(first.type) << ", root " << first.root << "), rank " << r
            << " called " << c.kind << " (" << c.count << " x " << to_string(c.type) << ", root "
            << c.root << ")";
          throw Error(s.str());
        }
      }
    }
    body(calls_);  // calls_ stays untouched until every rank has passed the next rendezvous
    {
      std::unique_lock<std::mutex> lock(mutex_);
      arrive_and_wait(lock, rank, call.kind);
    }
    commit();
  }

 private:
  // A generation barrier that gives up, naming the rank, when a rank fails or leaves.
  void arrive_and_wait(std::unique_lock<std::mutex>& lock, int rank, const char* kind) {
    check_alive_locked(rank, kind);
    const std::uint64_t gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || failed_rank_ >= 0 || left_ > 0; });
    if (generation_ == gen) check_alive_locked(rank, kind);
  }
  void check_alive_locked(int rank, const char* kind) const {
    if (failed_rank_ >= 0)
      throw Error(failure_ + " (rank " + std::to_string(rank) + " stopped in " + kind + ")");
    if (left_ > 0)
      throw Error("rank " + std::to_string(left_rank_) + " finished while rank " +
                  std::to_string(rank) + " waited in " + kind +
                  " (the ranks called different collectives)");
  }

  const int n_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Call> calls_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  int failed_rank_ = -1;
  std::string failure_;
  int left_ = 0;
  int left_rank_ = -1;
};

// One rank of an InProcessGroup. Collectives complete before they return; wait() and
// synchronize() have nothing to do.
class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessGroup> group, int rank)
      : group_(std::move(group)), rank_(rank) {
    FATHOM_CHECK(group_ && rank >= 0 && rank < group_->world_size(),
                 "in-process communicator: rank " << rank << " outside [0, "
                                                  << (group_ ? group_->world_size() : 0) << ")");
  }
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size(); }
  std::string_view backend() const override { return "in-process"; }

  void all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                  ReduceOp op) override {
    std::vector<unsigned char> result(count * size_of(type));
    group_->collective(
        rank_, {"all_reduce", send, recv, count, type, op, 0},
        [&](const auto& calls) {
          detail::reduce_in_order(sends(calls), result.data(), 0, count, type, op);
        },
        [&] { std::memcpy(recv, result.data(), result.size()); });
  }

  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override {
    std::vector<unsigned char> result(count * size_of(type));
    group_->collective(
        rank_, {"reduce_scatter", send, recv, count, type, op, 0},
        [&](const auto& calls) {
          detail::reduce_in_order(sends(calls), result.data(),
                                  static_cast<std::size_t>(rank_) * count, count, type, op);
        },
        [&] { std::memcpy(recv, result.data(), result.size()); });
  }

  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override {
    const std::size_t block = count * size_of(type);
    std::vector<unsigned char> result(block * static_cast<std::size_t>(world_size()));
    group_->collective(
        rank_, {"all_gather", send, recv, count, type, ReduceOp::sum, 0},
        [&](const auto& calls) {
          for (std::size_t r = 0; r < calls.size(); ++r)
            std::memcpy(result.data() + r * block, calls[r].send, block);
        },
        [&] { std::memcpy(recv, result.data(), result.size()); });
  }

  void broadcast(void* buffer, std::size_t count, DataType type, int root) override {
    FATHOM_CHECK(root >= 0 && root < world_size(),
                 "broadcast: root " << root << " outside [0, " << world_size() << ")");
    std::vector<unsigned char> result(count * size_of(type));
    group_->collective(
        rank_, {"broadcast", buffer, buffer, count, type, ReduceOp::sum, root},
        [&](const auto& calls) {
          std::memcpy(result.data(), calls[static_cast<std::size_t>(root)].send, result.size());
        },
        [&] { std::memcpy(buffer, result.data(), result.size()); });
  }

  void barrier() override {
    group_->collective(
        rank_, {"barrier"}, [](const auto&) {}, [] {});
  }
  void wait() override {}
  void synchronize() override {}

 private:
  static std::vector<const void*> sends(const std::vector<InProcessGroup::Call>& calls) {
    std::vector<const void*> out;
    out.reserve(calls.size());
    for (const auto& c : calls) out.push_back(c.send);
    return out;
  }

  std::shared_ptr<InProcessGroup> group_;
  int rank_;
};

// Runs fn(comm) for every rank of a new in-process group of `world_size` ranks, each on its own
// thread, and returns when all are done. When a rank throws, the others' collectives fail with an
// Error naming it, and run_ranks rethrows the first rank's failure (an Error "rank R: ...").
inline void run_ranks(int world_size, const std::function<void(Communicator&)>& fn) {
  auto group = std::make_shared<InProcessGroup>(world_size);
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world_size));
  auto body = [&](int rank) {
    InProcessCommunicator comm(group, rank);
    try {
      fn(comm);
      group->leave(rank);
    } catch (const std::exception& e) {
      group->fail(rank, e.what());
      errors[static_cast<std::size_t>(rank)] = std::current_exception();
    } catch (...) {
      group->fail(rank, "unknown exception");
      errors[static_cast<std::size_t>(rank)] = std::current_exception();
    }
  };
  if (world_size == 1) {
    body(0);
  } else {
    std::vector<std::thread> threads;
    threads.reserve(static_cast<std::size_t>(world_size));
    for (int r = 0; r < world_size; ++r) threads.emplace_back(body, r);
    for (auto& t : threads) t.join();
  }
  const int first = group->failed_rank();
  if (first < 0) return;
  try {
    std::rethrow_exception(errors[static_cast<std::size_t>(first)]);
  } catch (const std::exception& e) {
    if (world_size == 1) throw;
    throw Error("rank " + std::to_string(first) + ": " + e.what());
  }
}

}  // namespace fathom::dist
