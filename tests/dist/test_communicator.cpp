// The in-process communicator (include/fathom/dist/in_process.hpp): each collective against a
// serial reference on 1, 2 and 3 ranks, for float, double and bf16; mismatched collectives and a
// rank that throws or leaves make the group fail with an error naming the rank, never hang.
#include "fathom/dist/in_process.hpp"

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "support/catch.hpp"

using namespace fathom;
using dist::Communicator;

namespace {

// Rank r's input: distinct, non-trivially rounding values (so a different summation order shows).
template <class T>
std::vector<T> input_of(int rank, std::size_t n) {
  auto t = Tensor<T>::randn(Shape{static_cast<std::int64_t>(n)},
                            100 + static_cast<std::uint64_t>(rank), 1.0 + rank);
  return t.to_vector();
}

// Sequential sum over ranks in rank order, each partial sum rounded to T.
template <class T>
std::vector<T> serial_sum(int world, std::size_t n, std::size_t from = 0,
                          std::size_t count = ~std::size_t{0}) {
  if (count == ~std::size_t{0}) count = n - from;
  std::vector<T> out(count);
  for (std::size_t i = 0; i < count; ++i) {
    T acc = input_of<T>(0, n)[from + i];
    for (int r = 1; r < world; ++r)
      acc = static_cast<T>(static_cast<accum_t<T>>(acc) +
                           static_cast<accum_t<T>>(input_of<T>(r, n)[from + i]));
    out[i] = acc;
  }
  return out;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace

using CollectiveTypes = std::tuple<float, double, bf16>;

TEMPLATE_LIST_TEST_CASE("in-process all_reduce sums in rank order, bit for bit",
                        "[dist][communicator]", CollectiveTypes) {
  using T = TestType;
  const int world = GENERATE(1, 2, 3);
  const std::size_t n = 37;
  const auto want = serial_sum<T>(world, n);
  std::vector<std::vector<T>> got(static_cast<std::size_t>(world));
  dist::run_ranks(world, [&](Communicator& comm) {
    auto t =
        Tensor<T>::from_vector(Shape{static_cast<std::int64_t>(n)}, input_of<T>(comm.rank(), n));
    dist::all_reduce(comm, t);
    got[static_cast<std::size_t>(comm.rank())] = t.to_vector();
  });
  for (int r = 0; r < world; ++r) CHECK(same_bits(got[static_cast<std::size_t>(r)], want));
}

TEMPLATE_TEST_CASE("in-process all_reduce max takes the largest value of each element",
                   "[dist][communicator]", float, double, bf16) {
  using T = TestType;
  const int world = GENERATE(2, 3);
  const std::size_t n = 37;
  std::vector<std::vector<T>> inputs;
  for (int r = 0; r < world; ++r) inputs.push_back(input_of<T>(r, n));
  std::vector<T> want = inputs[0];
  for (int r = 1; r < world; ++r)
    for (std::size_t i = 0; i < n; ++i)
      if (static_cast<double>(inputs[static_cast<std::size_t>(r)][i]) >
          static_cast<double>(want[i]))
        want[i] = inputs[static_cast<std::size_t>(r)][i];
  std::vector<std::vector<T>> got(static_cast<std::size_t>(world));
  dist::run_ranks(world, [&](Communicator& comm) {
    auto t = Tensor<T>::from_vector(Shape{static_cast<std::int64_t>(n)},
                                    inputs[static_cast<std::size_t>(comm.rank())]);
    dist::all_reduce(comm, t, dist::ReduceOp::max);
    got[static_cast<std::size_t>(comm.rank())] = t.to_vector();
  });
  for (int r = 0; r < world; ++r) CHECK(same_bits(got[static_cast<std::size_t>(r)], want));
}

TEST_CASE("in-process all_reduce avg divides the rank-order sum by the world size",
          "[dist][communicator]") {
  const int world = GENERATE(2, 3);
  const std::size_t n = 10;
  const auto sum = serial_sum<double>(world, n);
  dist::run_ranks(world, [&](Communicator& comm) {
    auto t = Tensor<double>::from_vector(Shape{10}, input_of<double>(comm.rank(), n));
    dist::all_reduce(comm, t, dist::ReduceOp::avg);
    auto v = t.to_vector();
    for (std::size_t i = 0; i < n; ++i) CHECK(v[i] == sum[i] / world);
  });
}

TEMPLATE_LIST_TEST_CASE("in-process reduce_scatter gives rank r block r of the sum",
                        "[dist][communicator]", CollectiveTypes) {
  using T = TestType;
  const int world = GENERATE(1, 2, 3);
  const std::size_t block = 5, n = block * static_cast<std::size_t>(world);
  std::vector<int> ok(static_cast<std::size_t>(world), 0);
  dist::run_ranks(world, [&](Communicator& comm) {
    auto in =
        Tensor<T>::from_vector(Shape{static_cast<std::int64_t>(n)}, input_of<T>(comm.rank(), n));
    Tensor<T> out(Shape{static_cast<std::int64_t>(block)});
    dist::reduce_scatter(comm, in, out);
    ok[static_cast<std::size_t>(comm.rank())] =
        same_bits(out.to_vector(),
                  serial_sum<T>(world, n, static_cast<std::size_t>(comm.rank()) * block, block));
  });
  for (int r = 0; r < world; ++r) CHECK(ok[static_cast<std::size_t>(r)] == 1);
}

TEMPLATE_LIST_TEST_CASE("in-process all_gather concatenates in rank order, also in place",
                        "[dist][communicator]", CollectiveTypes) {
  using T = TestType;
  const int world = GENERATE(1, 2, 3);
  const std::size_t block = 4;
  std::vector<T> want;
  for (int r = 0; r < world; ++r) {
    auto v = input_of<T>(r, block);
    want.insert(want.end(), v.begin(), v.end());
  }
  std::vector<int> ok(static_cast<std::size_t>(world), 0);
  dist::run_ranks(world, [&](Communicator& comm) {
    auto in = Tensor<T>::from_vector(Shape{4}, input_of<T>(comm.rank(), block));
    Tensor<T> out(Shape{static_cast<std::int64_t>(block) * world});
    dist::all_gather(comm, in, out);
    // In place: this rank's block already sits in the output.
    auto inplace = Tensor<T>::zeros(Shape{static_cast<std::int64_t>(block) * world});
    inplace.slice(0, comm.rank() * 4, comm.rank() * 4 + 4).copy_(in);
    comm.all_gather(inplace.data() + comm.rank() * 4, inplace.data(), block,
                    dist::data_type_of<T>());
    ok[static_cast<std::size_t>(comm.rank())] =
        same_bits(out.to_vector(), want) && same_bits(inplace.to_vector(), want);
  });
  for (int r = 0; r < world; ++r) CHECK(ok[static_cast<std::size_t>(r)] == 1);
}

TEST_CASE("in-process broadcast copies the root's buffer to every rank", "[dist][communicator]") {
  const int world = 3;
  const int root = GENERATE(0, 2);
  std::vector<int> ok(3, 0);
  dist::run_ranks(world, [&](Communicator& comm) {
    auto t = Tensor<float>::from_vector(Shape{6}, input_of<float>(comm.rank(), 6));
    dist::broadcast(comm, t, root);
    ok[static_cast<std::size_t>(comm.rank())] = same_bits(t.to_vector(), input_of<float>(root, 6));
    CHECK(dist::broadcast_value<Cpu>(
              comm, comm.rank() == root ? std::int64_t{42} : std::int64_t{-1}, root) == 42);
    comm.barrier();
  });
  CHECK(ok == std::vector<int>{1, 1, 1});
}

TEST_CASE("require_same_on_all_ranks names the rank whose options differ", "[dist][communicator]") {
  dist::run_ranks(3, [](Communicator& comm) {
    dist::require_same_on_all_ranks<Cpu>(comm, 77, "configuration");
  });
  CHECK_THROWS_WITH(dist::run_ranks(3,
                                    [](Communicator& comm) {
                                      dist::require_same_on_all_ranks<Cpu>(
                                          comm, comm.rank() == 2 ? 5 : 77, "configuration");
                                    }),
                    HasSubstring("rank 2 has a different configuration than rank 0"));
}

TEST_CASE("a rank that throws makes the others' collectives fail, naming it",
          "[dist][communicator]") {
  const int world = GENERATE(2, 3);
  std::atomic<int> others_failed{0};
  std::string other_message;
  std::mutex m;
  CHECK_THROWS_WITH(dist::run_ranks(world,
                                    [&](Communicator& comm) {
                                      auto t = Tensor<float>::full(Shape{3}, 1.0f);
                                      dist::all_reduce(comm, t);  // everyone gets here
                                      if (comm.rank() == 1) throw Error("data shard missing");
                                      try {
                                        for (int i = 0; i < 1000; ++i) dist::all_reduce(comm, t);
                                      } catch (const Error& e) {
                                        ++others_failed;
                                        std::lock_guard<std::mutex> lock(m);
                                        other_message = e.what();
                                        throw;
                                      }
                                    }),
                    HasSubstring("rank 1: data shard missing"));
  CHECK(others_failed == world - 1);
  CHECK_THAT(other_message, HasSubstring("rank 1 failed: data shard missing"));
}

TEST_CASE("a rank that leaves while others wait, or calls another collective, fails the group",
          "[dist][communicator]") {
  CHECK_THROWS_WITH(dist::run_ranks(2,
                                    [](Communicator& comm) {
                                      if (comm.rank() == 0) return;
                                      comm.barrier();
                                    }),
                    HasSubstring("rank 0 finished while rank 1 waited in barrier"));
  CHECK_THROWS_WITH(dist::run_ranks(2,
                                    [](Communicator& comm) {
                                      auto t = Tensor<float>::full(Shape{4}, 1.0f);
                                      if (comm.rank() == 0)
                                        dist::all_reduce(comm, t);
                                      else
                                        dist::broadcast(comm, t);
                                    }),
                    HasSubstring("collectives do not match: rank 0 called all_reduce"));
}
