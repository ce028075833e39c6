// Tests for the differentiable embedding (include/fathom/autograd/ops/embedding.hpp): output
// shape and values, gradcheck in double with repeated ids, and errors naming the bad id or shape.
#include <fathom/autograd/ops/embedding.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "fathom/autograd/gradcheck.hpp"
#include "support/catch.hpp"
#include "support/errors.hpp"

namespace {

using fathom::Shape;
using fathom::Tensor;
using fathom::autograd::embedding;
using fathom::autograd::gradcheck;
using fathom::autograd::Var;
using fathom::test::contains;
using fathom::test::error_of;

}  // namespace

TEST_CASE("embedding picks table rows and keeps the ids' shape", "[autograd][ops][embedding]") {
  auto ids = Tensor<std::int32_t>::from_vector({2, 3}, {4, 0, 4, 1, 3, 4});
  Var<double> table(Tensor<double>::randn({5, 6}, 1), true);
  auto y = embedding(ids, table);
  REQUIRE(y.shape() == Shape{2, 3, 6});
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      for (std::int64_t c = 0; c < 6; ++c)
        CHECK(y.value().at({i, j, c}) == table.value().at({ids.at({i, j}), c}));
}

TEST_CASE("embedding gradients pass gradcheck with repeated ids", "[autograd][ops][embedding]") {
  using Case = std::pair<Shape, std::vector<std::int32_t>>;
  const Case c = GENERATE(values<Case>({{Shape{1}, {0}},
                                        {Shape{6}, {2, 2, 2, 0, 4, 2}},
                                        {Shape{2, 3}, {4, 0, 4, 1, 3, 4}},
                                        {Shape{2, 2, 2}, {1, 1, 1, 1, 3, 1, 0, 0}}}));
  auto ids = Tensor<std::int32_t>::from_vector(c.first, c.second);
  Var<double> table(Tensor<double>::randn({5, 3}, 2), true);
  auto result = gradcheck(
      [&ids](const std::vector<Var<double>>& in) { return embedding(ids, in[0]); }, {table});
  INFO("ids " << c.first << ": " << result.first_failure);
  CHECK(result.ok);
  CHECK(result.checked == table.numel());
}

TEST_CASE("embedding gradient counts every occurrence of an id", "[autograd][ops][embedding]") {
  auto ids = Tensor<std::int32_t>::from_vector({4}, {2, 2, 0, 2});
  Var<double> table(Tensor<double>::randn({3, 2}, 3), true);
  fathom::autograd::backward(embedding(ids, table), Tensor<double>::full({4, 2}, 1.0));
  const auto g = table.grad().to_vector();
  CHECK(g == std::vector<double>{1.0, 1.0, 0.0, 0.0, 3.0, 3.0});
}

TEST_CASE("embedding errors name the id, its position and the vocabulary, or the bad shape",
          "[autograd][ops][embedding]") {
  Var<double> table(Tensor<double>::randn({5, 3}, 4), true);
  auto ids = Tensor<std::int32_t>::from_vector({3}, {1, 7, 2});
  std::string msg = error_of([&] { embedding(ids, table); });
  INFO(msg);
  CHECK(contains(msg, "id 7 at position 1"));
  CHECK(contains(msg, "table of 5 rows"));

  Var<double> flat(Tensor<double>::randn({15}, 5), true);
  msg = error_of([&] { embedding(Tensor<std::int32_t>::from_vector({1}, {0}), flat); });
  CHECK(contains(msg, "(15,)"));
}
