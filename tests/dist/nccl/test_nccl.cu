// The NCCL communicator (include/fathom/dist/nccl.hpp) against the in-process reference: every
// collective, for float, double and bf16, on the ranks of a launch (scripts/dist_gpu.sh starts
// them under the torchrun environment and under mpirun). Hidden cases [.nccl-dead] and
// [.nccl-hang] make rank 1 exit or hang, for the script to check that the other ranks stop within
// the timeout with a line naming rank 1.
#include <chrono>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "fathom/dist/in_process.hpp"
#include "fathom/kernels/cuda/primitives.cuh"  // Tensor<T, Cuda> fill and copies
#include "fathom/dist/nccl.hpp"
#include "support/catch.hpp"

using namespace fathom;

namespace {

dist::NcclCommunicator* communicator() {
  static std::unique_ptr<dist::NcclCommunicator> comm = [] {
    const auto env = dist::LaunchEnv::from_environment();
    dist::NcclOptions o;
    if (const char* t = std::getenv("FATHOM_TEST_NCCL_TIMEOUT")) o.timeout_s = std::atof(t);
    o.exit_after_fault_s = 5;
    return env.distributed() ? std::make_unique<dist::NcclCommunicator>(env, o) : nullptr;
  }();
  return comm.get();
}

template <class T>
std::vector<T> input_of(int rank, std::size_t n) {
  return Tensor<T>::randn(Shape{static_cast<std::int64_t>(n)},
                          500 + static_cast<std::uint64_t>(rank), 1.0 + rank)
      .to_vector();
}

// What the in-process backend computes for this collective (host buffers of every rank).
template <class T>
std::vector<T> reference_sum(int world, std::size_t n, std::size_t offset, std::size_t count,
                             dist::ReduceOp op = dist::ReduceOp::sum) {
  std::vector<std::vector<T>> inputs;
  std::vector<const void*> srcs;
  for (int r = 0; r < world; ++r) inputs.push_back(input_of<T>(r, n));
  for (const auto& v : inputs) srcs.push_back(v.data());
  std::vector<T> out(count);
  dist::detail::reduce_in_order(srcs, out.data(), offset, count, dist::data_type_of<T>(), op);
  return out;
}

// Two ranks add one pair: bit for bit. More ranks may sum in another order: a rounding apart.
template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, int world) {
  REQUIRE(got.size() == want.size());
  const double tol = world <= 2 ? 0.0 : Precision<T>::rtol * 4;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(scalar_cast<double>(got[i])),
                 w = static_cast<double>(scalar_cast<double>(want[i]));
    if (tol == 0.0)
      CHECK(g == w);
    else
      CHECK_THAT(g, WithinRel(w, tol) || WithinAbs(w, tol));
  }
}

}  // namespace

using NcclTypes = std::tuple<float, double, bf16>;

TEMPLATE_LIST_TEST_CASE("NCCL collectives equal the in-process backend's", "[cuda][nccl]",
                        NcclTypes) {
  using T = TestType;
  auto* comm = communicator();
  if (!comm) {
    WARN("not launched on several ranks (RANK/WORLD_SIZE or mpirun): skipped");
    return;
  }
  const int world = comm->world_size(), rank = comm->rank();
  const std::size_t block = 1000003, n = block * static_cast<std::size_t>(world);

  auto x = Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(n)}, input_of<T>(rank, n));
  dist::all_reduce(*comm, x);
  comm->synchronize();
  check_close(x.to_vector(), reference_sum<T>(world, n, 0, n), world);

  // The maximum (fp8 amax histories): exact on any number of ranks.
  auto m = Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(n)}, input_of<T>(rank, n));
  dist::all_reduce(*comm, m, dist::ReduceOp::max);
  comm->synchronize();
  check_close(m.to_vector(), reference_sum<T>(world, n, 0, n, dist::ReduceOp::max), 1);

  auto in = Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(n)}, input_of<T>(rank, n));
  Tensor<T, Cuda> part(Shape{static_cast<std::int64_t>(block)});
  dist::reduce_scatter(*comm, in, part);
  comm->synchronize();
  check_close(part.to_vector(),
              reference_sum<T>(world, n, static_cast<std::size_t>(rank) * block, block), world);

  auto mine = Tensor<T, Cuda>::from_vector(Shape{static_cast<std::int64_t>(block)},
                                           input_of<T>(rank, block));
  Tensor<T, Cuda> all(Shape{static_cast<std::int64_t>(n)});
  dist::all_gather(*comm, mine, all);
  comm->synchronize();
  std::vector<T> want;
  for (int r = 0; r < world; ++r) {
    auto v = input_of<T>(r, block);
    want.insert(want.end(), v.begin(), v.end());
  }
  check_close(all.to_vector(), want, 1);

  auto b = Tensor<T, Cuda>::from_vector(Shape{7}, input_of<T>(rank, 7));
  dist::broadcast(*comm, b, world - 1);
  comm->synchronize();
  check_close(b.to_vector(), input_of<T>(world - 1, 7), 1);

  // Ordered after fathom's stream: a fill queued there is what gets reduced.
  auto y = Tensor<T, Cuda>::zeros(Shape{1 << 20});
  y.fill_(scalar_cast<T>(1.0));
  dist::all_reduce(*comm, y);
  comm->wait();
  const auto yv = y.to_vector();
  CHECK(static_cast<double>(scalar_cast<double>(yv.front())) == world);
  CHECK(static_cast<double>(scalar_cast<double>(yv.back())) == world);
  comm->barrier();
}

TEST_CASE("rank 1 exits: the others stop with a line naming it", "[.nccl-dead]") {
  auto* comm = communicator();
  REQUIRE(comm);
  comm->barrier();
  if (comm->rank() == 1) std::_Exit(3);
  auto t = Tensor<float, Cuda>::zeros(Shape{1024});
  for (int i = 0; i < 1000000; ++i) {
    dist::all_reduce(*comm, t);
    comm->synchronize();
  }
}

TEST_CASE("rank 1 hangs: the others stop with a line naming it", "[.nccl-hang]") {
  auto* comm = communicator();
  REQUIRE(comm);
  comm->barrier();
  if (comm->rank() == 1) std::this_thread::sleep_for(std::chrono::hours(1));
  auto t = Tensor<float, Cuda>::zeros(Shape{1024});
  for (int i = 0; i < 1000000; ++i) {
    dist::all_reduce(*comm, t);
    comm->synchronize();
  }
}
