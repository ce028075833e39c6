// ZeRO-1 (include/fathom/dist/zero.hpp): on 2 and 3 ranks, with bucket sizes that do not divide by
// the number of ranks, the sharded optimizer's updates equal the unsharded optimizer's bit for bit
// (fp32, and bf16 with fp32 master weights); its state gathers into the unsharded optimizer's
// named state and loads onto another number of ranks.
#include "fathom/dist/zero.hpp"

#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "fathom/dist/in_process.hpp"
#include "fathom/optim/clip.hpp"
#include "fathom/optim/optimizer.hpp"
#include "support/catch.hpp"
#include "toy_model.hpp"

using namespace fathom;
using dist::Communicator;

namespace {

template <class T>
using Reducer = dist::GradReducer<T, Cpu>;

template <class T>
struct Run {
  std::vector<std::vector<T>> params;                    // rank 0's, after the last step
  std::map<std::string, std::vector<accum_t<T>>> state;  // the gathered (or unsharded) state
  double grad_norm = 0;                                  // of the last step
};

std::vector<std::int64_t> dims(const Shape& s) {
  std::vector<std::int64_t> d;
  for (int i = 0; i < s.rank(); ++i) d.push_back(s[i]);
  return d;
}

optim::AdamW adamw() {
  optim::AdamW r;
  r.weight_decay = 0.1;
  return r;
}

// `steps` steps of AdamW on `world` ranks (one micro-batch of 2 rows each), sharded or not, from
// `start` (gathered state and step count) when given. Step s uses global micro-batches
// s * world + r. Bucket size 160 bytes: buckets of 54, 63, 78, 5 elements (fp32: 40, ...).
template <class T>
Run<T> train(int world, bool zero, int steps, int first_step = 0, const Run<T>* start = nullptr) {
  Run<T> out;
  dist::run_ranks(world, [&](Communicator& comm) {
    test::ToyModel<T> model(11);
    if (start)
      for (std::size_t k = 0; k < model.params.size(); ++k)
        model.params[k].var.mutable_value().copy_(
            Tensor<T>::from_vector(model.params[k].var.shape(), start->params[k]));
    using Mode = typename Reducer<T>::Mode;
    Reducer<T> reducer(comm, model.vars(), zero ? Mode::reduce_scatter : Mode::all_reduce, 160);
    std::optional<dist::ShardedOptimizer<optim::AdamW, T, Cpu>> sharded;
    std::optional<optim::Optimizer<optim::AdamW, T, Cpu>> plain;
    using A = accum_t<T>;
    auto lookup = [&](const std::string& name) {
      const auto& v = start->state.at(name);
      return Tensor<A>::from_vector(Shape{static_cast<std::int64_t>(v.size())}, v);
    };
    if (zero) {
      sharded.emplace(adamw(), model.params, reducer);
      if (start) {
        sharded->load_state(lookup);
        sharded->set_step_count(first_step);
      }
    } else {
      plain.emplace(adamw(), model.params);
      if (start) {
        for (auto& [name, t] : plain->named_state())
          t->copy_(lookup(name).reshape(dims(t->shape())));
        plain->set_step_count(first_step);
      }
    }
    for (int s = first_step; s < first_step + steps; ++s) {
      reducer.begin_micro_batch(true);
      const std::int64_t index = static_cast<std::int64_t>(s) * world + comm.rank();
      auto loss = model.loss(test::toy_tokens(index, 2, 5, 0), test::toy_tokens(index, 2, 5, 1));
      autograd::backward(loss,
                         Tensor<A>::full(loss.shape(), static_cast<A>(reducer.gradient_seed(1))));
      reducer.finish();
      const double lr = 0.05 / (1 + s);
      if (zero) {
        out.grad_norm = sharded->global_grad_norm();
        sharded->step(lr);
      } else {
        out.grad_norm = optim::global_grad_norm<T, Cpu>(model.params);
        plain->step(lr);
      }
    }
    std::map<std::string, std::vector<A>> state;
    if (zero) {
      for (auto& [name, t] : sharded->gather_state()) state[name] = t.to_vector();
    } else {
      for (auto& [name, t] : plain->named_state()) state[name] = t->to_vector();
    }
    if (comm.rank() != 0) return;
    for (const auto& p : model.params) out.params.push_back(p.var.value().to_vector());
    out.state = std::move(state);
  });
  return out;
}

template <class V>
bool same_bits(const std::vector<V>& a, const std::vector<V>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0);
}

template <class T>
void check_same(const Run<T>& a, const Run<T>& b) {
  REQUIRE(a.params.size() == b.params.size());
  for (std::size_t k = 0; k < a.params.size(); ++k) {
    INFO("parameter " << k);
    CHECK(same_bits(a.params[k], b.params[k]));
  }
  REQUIRE(a.state.size() == b.state.size());
  for (const auto& [name, v] : a.state) {
    INFO("state " << name);
    REQUIRE(b.state.count(name) == 1);
    CHECK(same_bits(v, b.state.at(name)));
  }
}

}  // namespace

TEST_CASE("the toy model's buckets do not divide by 2 or 3 ranks (uneven shards)", "[dist][zero]") {
  const auto plan = dist::BucketPlan::make({5, 78, 54, 9, 54}, 4, 160, 3);
  bool uneven = false;
  for (const auto& b : plan.buckets) uneven = uneven || b.numel % 3 != 0;
  CHECK(uneven);
  bool uneven2 = false;
  for (const auto& b : dist::BucketPlan::make({5, 78, 54, 9, 54}, 4, 160, 2).buckets)
    uneven2 = uneven2 || b.numel % 2 != 0;
  CHECK(uneven2);
}

using ZeroTypes = std::tuple<float, bf16>;

TEMPLATE_LIST_TEST_CASE("ZeRO-1 updates equal the unsharded optimizer's, bit for bit",
                        "[dist][zero]", ZeroTypes) {
  using T = TestType;
  const int world = GENERATE(2, 3);
  const auto plain = train<T>(world, false, 4);
  const auto zero = train<T>(world, true, 4);
  check_same(zero, plain);
  // The sharded norm sums the same squares in another order.
  CHECK_THAT(zero.grad_norm, WithinRel(plain.grad_norm, 1e-5));
  CHECK(zero.state.size() == (std::is_same_v<T, bf16> ? 15u : 10u));  // m, v (, master) x 5
}

TEST_CASE("ZeRO-1 state resumes on another number of ranks (1 -> 3, 3 -> 2, 2 -> 1)",
          "[dist][zero]") {
  // Each leg starts from the previous leg's weights and state, and is compared with the same leg
  // run unsharded from the same start.
  const auto a = train<float>(1, false, 2);
  const auto b_zero = train<float>(3, true, 2, 2, &a);
  const auto b_plain = train<float>(3, false, 2, 2, &a);
  check_same(b_zero, b_plain);
  const auto c_zero = train<float>(2, true, 2, 4, &b_zero);
  const auto c_plain = train<float>(2, false, 2, 4, &b_plain);
  check_same(c_zero, c_plain);
  const auto d_plain =
      train<float>(1, false, 1, 6, &c_zero);  // ZeRO-1 state read by the plain optimizer
  const auto d_ref = train<float>(1, false, 1, 6, &c_plain);
  check_same(d_plain, d_ref);
}
