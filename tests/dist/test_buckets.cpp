// Gradient buckets (include/fathom/dist/buckets.hpp): the plan's layout, and GradReducer's sums:
// 2 or 3 ranks with batch B give the gradients of 1 rank with 2 or 3 micro-batches of B, bit for
// bit; buckets start from inside the backward pass; unused parameters count as zero.
#include "fathom/dist/buckets.hpp"

#include <cstring>
#include <vector>

#include "fathom/dist/in_process.hpp"
#include "support/catch.hpp"
#include "toy_model.hpp"

using namespace fathom;
using dist::BucketPlan;
using dist::Communicator;
using Reducer = dist::GradReducer<double, Cpu>;

TEST_CASE("BucketPlan fills buckets in reverse registration order and pads them to whole shards",
          "[dist][buckets]") {
  // 4-byte elements, buckets closed at 100 bytes (25 elements).
  const auto plan = BucketPlan::make({10, 20, 30, 5}, 4, 100, 3);
  REQUIRE(plan.buckets.size() == 2);
  const auto& b0 = plan.buckets[0];
  REQUIRE(b0.entries.size() == 2);
  CHECK(b0.entries[0].param == 3);
  CHECK(b0.entries[0].offset == 0);
  CHECK(b0.entries[1].param == 2);
  CHECK(b0.entries[1].offset == 5);
  CHECK(b0.numel == 35);
  CHECK(b0.shard == 12);  // ceil(35 / 3): the last rank's shard ends in one padding element
  CHECK(b0.padded() == 36);
  const auto& b1 = plan.buckets[1];
  CHECK(b1.entries[0].param == 1);
  CHECK(b1.entries[1].param == 0);
  CHECK(b1.entries[1].offset == 20);
  CHECK(b1.shard == 10);
  CHECK(plan.where[0].bucket == 1);
  CHECK(plan.where[0].entry == 1);
  CHECK(plan.where[3].bucket == 0);
  CHECK(plan.shard_numel() == 22);
  CHECK(plan.shard_offset(1) == 12);
  // A parameter larger than a bucket gets one of its own; one rank needs no padding.
  const auto big = BucketPlan::make({7, 1000, 3}, 4, 100, 1);
  REQUIRE(big.buckets.size() == 2);
  CHECK(big.buckets[0].numel == 1003);
  CHECK(big.buckets[1].numel == 7);
  CHECK(big.buckets[0].padded() == 1003);
}

namespace {

struct Grads {
  std::vector<std::vector<double>> per_param;
  std::size_t launched_during_backward = 0;
  std::size_t buckets = 0;
};

// The reduced gradients of one step on rank `report`: `world` ranks, `accum` micro-batches of
// `batch` rows each; global micro-batch r * accum + m goes to rank r's micro-batch m.
Grads reduced_grads(int world, int accum, std::int64_t batch, int report = 0,
                    std::size_t bucket_bytes = 200) {
  Grads out;
  dist::run_ranks(world, [&](Communicator& comm) {
    test::ToyModel<double> model(7);
    Reducer reducer(comm, model.vars(), Reducer::Mode::all_reduce, bucket_bytes);
    const double seed = reducer.gradient_seed(accum);
    for (int m = 0; m < accum; ++m) {
      reducer.begin_micro_batch(m + 1 == accum);
      const std::int64_t index = comm.rank() * accum + m;
      auto loss =
          model.loss(test::toy_tokens(index, batch, 5, 0), test::toy_tokens(index, batch, 5, 1));
      autograd::backward(loss, Tensor<double>::full(loss.shape(), seed));
      if (m + 1 < accum) reducer.end_micro_batch();
    }
    reducer.finish();
    if (comm.rank() != report) return;
    for (const auto& p : model.params) out.per_param.push_back(p.var.grad().to_vector());
    out.launched_during_backward = reducer.launched_during_backward();
    out.buckets = reducer.plan().buckets.size();
  });
  return out;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

}  // namespace

TEST_CASE("N ranks x batch B reduce to the gradients of 1 rank x B x grad-accum N, bit for bit",
          "[dist][buckets]") {
  const int n = GENERATE(2, 3);
  const auto one = reduced_grads(1, n, 2);
  for (int report = 0; report < n; ++report) {
    const auto many = reduced_grads(n, 1, 2, report);
    REQUIRE(many.per_param.size() == one.per_param.size());
    for (std::size_t k = 0; k < one.per_param.size(); ++k) {
      INFO("world " << n << ", rank " << report << ", parameter " << k);
      CHECK(same_bits(many.per_param[k], one.per_param[k]));
    }
  }
  // And 2 ranks x 2 micro-batches each: the same mean (summed in another order).
  if (n == 2) {
    const auto mixed = reduced_grads(2, 2, 1);
    const auto plain = reduced_grads(1, 4, 1);
    for (std::size_t k = 0; k < plain.per_param.size(); ++k)
      for (std::size_t i = 0; i < plain.per_param[k].size(); ++i)
        CHECK_THAT(mixed.per_param[k][i], WithinAbs(plain.per_param[k][i], 1e-14));
  }
}

TEST_CASE("the reduced gradient is the mean over ranks of each rank's gradient",
          "[dist][buckets]") {
  // Reference: the gradient of the mean loss over both ranks' batches, accumulated by autograd.
  test::ToyModel<double> model(7);
  for (int r = 0; r < 2; ++r) {
    auto loss = model.loss(test::toy_tokens(r, 2, 5, 0), test::toy_tokens(r, 2, 5, 1));
    autograd::backward(loss, Tensor<double>::full(loss.shape(), 0.5));
  }
  const auto got = reduced_grads(2, 1, 2);
  CHECK(got.per_param[0] == std::vector<double>(5, 0.0));  // unused: zero, not missing
  for (std::size_t k = 1; k < model.params.size(); ++k) {
    const auto want = model.params[k].var.grad().to_vector();
    for (std::size_t i = 0; i < want.size(); ++i)
      CHECK_THAT(got.per_param[k][i], WithinAbs(want[i], 1e-14));
  }
}

TEST_CASE("buckets start their all-reduce from inside the backward pass", "[dist][buckets]") {
  const auto g = reduced_grads(2, 1, 2, 0, 200);
  // Buckets: [mlp.down], [mlp.up.bias, mlp.up.weight], [embed], [unused]. All but the last start
  // during the backward (the embedding's when its first use, the lookup, has run); the unused
  // parameter's bucket waits for finish().
  REQUIRE(g.buckets == 4);
  CHECK(g.launched_during_backward == 3);
  // One bucket for everything holds the unused parameter too: it starts in finish().
  CHECK(reduced_grads(2, 1, 2, 0, std::size_t{1} << 20).launched_during_backward == 0);
}

TEST_CASE("launch_all() runs every bucket's collective again, over what the buckets hold",
          "[dist][buckets]") {
  // After a step each bucket holds the sum over 2 ranks, the same on both; summing the buckets
  // over the ranks once more doubles them (what benchmarks time as the collectives alone).
  const auto once = reduced_grads(2, 1, 2);
  std::vector<std::vector<double>> twice;
  std::vector<int> refused(2, 0);
  dist::run_ranks(2, [&](Communicator& comm) {
    test::ToyModel<double> model(7);
    Reducer reducer(comm, model.vars(), Reducer::Mode::all_reduce, 200);
    reducer.begin_micro_batch(true);
    auto loss =
        model.loss(test::toy_tokens(comm.rank(), 2, 5, 0), test::toy_tokens(comm.rank(), 2, 5, 1));
    autograd::backward(loss, Tensor<double>::full(loss.shape(), reducer.gradient_seed(1)));
    try {
      reducer.launch_all();  // not inside a micro-batch
    } catch (const Error&) {
      refused[static_cast<std::size_t>(comm.rank())] = 1;
    }
    reducer.finish();
    reducer.launch_all();
    if (comm.rank() != 0) return;
    for (const auto& p : model.params) twice.push_back(p.var.grad().to_vector());
  });
  CHECK(refused == std::vector<int>{1, 1});
  REQUIRE(twice.size() == once.per_param.size());
  for (std::size_t k = 0; k < twice.size(); ++k)
    for (std::size_t i = 0; i < twice[k].size(); ++i)
      CHECK(twice[k][i] == 2 * once.per_param[k][i]);
}

TEST_CASE("GradReducer refuses finish() without a last micro-batch", "[dist][buckets]") {
  dist::run_ranks(1, [](Communicator& comm) {
    test::ToyModel<double> model(1);
    Reducer reducer(comm, model.vars());
    reducer.begin_micro_batch(false);
    CHECK_THROWS_WITH(reducer.finish(), HasSubstring("finish() after a begin_micro_batch(true)"));
  });
}
