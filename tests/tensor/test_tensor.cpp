// Tests for Tensor (include/fathom/tensor/tensor.hpp): construction, views (slice, select,
// transpose, reshape) that share storage and index like a naive computation, contiguous(),
// copy_ from strided sources, cast, to_vector, printing, and the errors for bad shapes and ranges.
#include <fathom/tensor/tensor.hpp>

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "support/catch.hpp"
#include "support/errors.hpp"

using fathom::bf16;
using fathom::Shape;
using fathom::Tensor;
using fathom::test::contains;
using fathom::test::error_of;

namespace {

using Index = std::vector<std::int64_t>;

// Row-major offset of an index into a contiguous tensor of `shape`.
std::int64_t flat(const Shape& shape, const Index& idx) {
  std::int64_t off = 0;
  for (int d = 0; d < shape.rank(); ++d) off = off * shape[d] + idx[static_cast<std::size_t>(d)];
  return off;
}

// Every index of `shape` in row-major order.
std::vector<Index> all_indices(const Shape& shape) {
  std::vector<Index> out;
  Index idx(static_cast<std::size_t>(shape.rank()), 0);
  for (std::int64_t n = 0; n < shape.numel(); ++n) {
    out.push_back(idx);
    for (int d = shape.rank() - 1; d >= 0; --d) {
      auto ud = static_cast<std::size_t>(d);
      if (++idx[ud] < shape[d]) break;
      idx[ud] = 0;
    }
  }
  return out;
}

double at(const Tensor<double>& t, const Index& i) {
  switch (i.size()) {
    case 0:
      return t.item();
    case 1:
      return t.at({i[0]});
    case 2:
      return t.at({i[0], i[1]});
    case 3:
      return t.at({i[0], i[1], i[2]});
    default:
      return t.at({i[0], i[1], i[2], i[3]});
  }
}

// "" when view[i] == base[to_base(i)] for every index i of the view, both through at() and through
// to_vector() (row-major), else the first index that differs.
std::string view_mismatch(const Tensor<double>& view, const Tensor<double>& base,
                          const std::function<Index(const Index&)>& to_base) {
  const auto bv = base.to_vector();
  const auto vv = view.to_vector();
  std::int64_t k = 0;
  for (const Index& i : all_indices(view.shape())) {
    const double want = bv[static_cast<std::size_t>(flat(base.shape(), to_base(i)))];
    if (at(view, i) != want || vv[static_cast<std::size_t>(k)] != want) {
      std::ostringstream s;
      s << "index " << k << " of view " << view.shape() << ": at() " << at(view, i)
        << ", to_vector " << vv[static_cast<std::size_t>(k)] << ", want " << want;
      return s.str();
    }
    ++k;
  }
  return {};
}

}  // namespace

TEST_CASE("a new tensor is contiguous with row-major strides", "[tensor]") {
  Tensor<float> t(Shape{2, 3, 4});
  CHECK(t.dim() == 3);
  CHECK(t.numel() == 24);
  CHECK(t.strides() == (Shape{12, 4, 1}));
  CHECK(t.is_contiguous());
  CHECK(t.bytes() == 24 * sizeof(float));
  Tensor<double> scalar{Shape{}};
  CHECK(scalar.numel() == 1);
  CHECK(Tensor<double>::full(Shape{}, 2.5).item() == 2.5);
  CHECK_FALSE(Tensor<double>().defined());
}

TEST_CASE("zeros, full, from_vector and the random constructors", "[tensor]") {
  CHECK(Tensor<float>::zeros(Shape{3}).to_vector() == std::vector<float>{0, 0, 0});
  CHECK(Tensor<int>::full(Shape{2, 2}, 7).to_vector() == std::vector<int>{7, 7, 7, 7});
  std::vector<double> v{1, 2, 3, 4, 5, 6};
  CHECK(Tensor<double>::from_vector(Shape{2, 3}, v).to_vector() == v);
  CHECK(contains(error_of([&] { Tensor<double>::from_vector(Shape{4, 2}, v); }), "(4, 2)"));
  // The counter-based streams are reproducible and the offset continues a stream.
  auto a = Tensor<double>::randn(Shape{10}, 3).to_vector();
  CHECK(a == Tensor<double>::randn(Shape{10}, 3).to_vector());
  CHECK(a != Tensor<double>::randn(Shape{10}, 4).to_vector());
  auto tail = Tensor<double>::randn(Shape{4}, 3, 1.0, 0.0, 6).to_vector();
  CHECK(std::vector<double>(a.begin() + 6, a.end()) == tail);
  for (double u : Tensor<double>::uniform(Shape{1000}, 5, -2.0, 3.0).to_vector()) {
    CHECK(u >= -2.0);
    CHECK(u < 3.0);
  }
}

TEST_CASE("slice is a view of the right elements", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{4, 5, 6}, 1);
  auto [d, start, end] = GENERATE(table<int, std::int64_t, std::int64_t>(
      {{0, 1, 3}, {1, 0, 5}, {1, 2, 4}, {2, 3, 6}, {-1, 0, 1}, {2, 2, 2}}));
  INFO("slice(" << d << ", " << start << ", " << end << ")");
  auto v = base.slice(d, start, end);
  const int axis = d < 0 ? d + 3 : d;
  CHECK(v.shape()[axis] == end - start);
  CHECK(v.shares_storage_with(base));
  CHECK(view_mismatch(v, base, [&](const Index& i) {
          Index b = i;
          b[static_cast<std::size_t>(axis)] += start;
          return b;
        }) == "");
}

TEST_CASE("select drops a dimension and views the right elements", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{3, 4, 5}, 2);
  const int d = GENERATE(0, 1, 2, -1);
  const std::int64_t i = GENERATE(0, 2);
  INFO("select(" << d << ", " << i << ")");
  auto v = base.select(d, i);
  const int axis = d < 0 ? d + 3 : d;
  CHECK(v.dim() == 2);
  CHECK(v.shares_storage_with(base));
  CHECK(view_mismatch(v, base, [&](const Index& idx) {
          Index b = idx;
          b.insert(b.begin() + axis, i);
          return b;
        }) == "");
}

TEST_CASE("transpose swaps dimensions without copying", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{2, 3, 4}, 3);
  auto [a, b] = GENERATE(table<int, int>({{0, 1}, {0, 2}, {1, 2}, {-1, 0}}));
  INFO("transpose(" << a << ", " << b << ")");
  auto v = base.transpose(a, b);
  CHECK(v.shares_storage_with(base));
  CHECK_FALSE(v.is_contiguous());
  const auto x = static_cast<std::size_t>(a < 0 ? a + 3 : a),
             y = static_cast<std::size_t>(b < 0 ? b + 3 : b);
  CHECK(view_mismatch(v, base, [&](const Index& i) {
          Index j = i;
          std::swap(j[x], j[y]);
          return j;
        }) == "");
}

TEST_CASE("views of views compose", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{5, 6, 7}, 4);
  // (5, 6, 7) -> transpose(0, 2) (7, 6, 5) -> slice(1, 2, 5) (7, 3, 5) -> select(2, 1) (7, 3)
  auto v = base.transpose(0, 2).slice(1, 2, 5).select(2, 1);
  REQUIRE(v.shape() == (Shape{7, 3}));
  CHECK(view_mismatch(v, base, [](const Index& i) { return Index{1, i[1] + 2, i[0]}; }) == "");
}

TEST_CASE("writes through a contiguous view reach the base", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{4, 3}, 5);
  auto rows = base.slice(0, 1, 3);  // rows 1 and 2: contiguous
  REQUIRE(rows.is_contiguous());
  rows.fill_(9.0);
  for (std::int64_t r = 0; r < 4; ++r)
    for (std::int64_t c = 0; c < 3; ++c) CHECK((base.at({r, c}) == 9.0) == (r == 1 || r == 2));
}

TEST_CASE("reshape is a view when contiguous and a copy otherwise", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{2, 3, 4}, 6);
  auto r = base.reshape({6, 4});
  CHECK(r.shares_storage_with(base));
  CHECK(r.to_vector() == base.to_vector());
  CHECK(base.reshape({-1}).shape() == (Shape{24}));
  CHECK(base.reshape({4, -1, 2}).shape() == (Shape{4, 3, 2}));

  auto t = base.transpose(0, 2);  // (4, 3, 2), strided
  auto rt = t.reshape({12, 2});
  CHECK_FALSE(rt.shares_storage_with(base));
  CHECK(rt.is_contiguous());
  CHECK(rt.to_vector() == t.to_vector());  // the same row-major order as the view
}

TEST_CASE("contiguous() returns the tensor itself or a packed copy", "[tensor][views]") {
  auto base = Tensor<double>::randn(Shape{3, 5}, 7);
  auto same = base.contiguous();
  CHECK(same.data() == base.data());
  auto t = base.transpose(0, 1);
  auto packed = t.contiguous();
  CHECK(packed.is_contiguous());
  CHECK_FALSE(packed.shares_storage_with(base));
  CHECK(view_mismatch(packed, base, [](const Index& i) { return Index{i[1], i[0]}; }) == "");
  // A slice of an inner dimension is strided too.
  auto cols = base.slice(1, 1, 4);
  CHECK_FALSE(cols.is_contiguous());
  CHECK(view_mismatch(cols.contiguous(), base, [](const Index& i) {
          return Index{i[0], i[1] + 1};
        }) == "");
}

TEST_CASE("copy_ packs a strided source into a contiguous destination", "[tensor]") {
  auto base = Tensor<double>::randn(Shape{3, 4, 5}, 8);
  auto src = base.transpose(0, 2).slice(1, 1, 3);  // (5, 2, 3)
  Tensor<double> dst(src.shape());
  dst.copy_(src);
  CHECK(view_mismatch(dst, base, [](const Index& i) { return Index{i[2], i[1] + 1, i[0]}; }) == "");

  CHECK(contains(error_of([&] { Tensor<double>(Shape{5, 3, 2}).copy_(src); }), "(5, 3, 2)"));
  CHECK(contains(error_of([&] { Tensor<double>(Shape{5, 3, 2}).copy_(src); }), "(5, 2, 3)"));
  auto strided_dst = Tensor<double>(Shape{3, 5}).transpose(0, 1);
  CHECK(contains(error_of([&] {
                   strided_dst.copy_(Tensor<double>::zeros(Shape{5, 3}));
                 }),
                 "contiguous"));
}

TEST_CASE("clone owns a separate copy", "[tensor]") {
  auto a = Tensor<double>::randn(Shape{4}, 9);
  auto b = a.clone();
  CHECK_FALSE(b.shares_storage_with(a));
  b.fill_(1.0);
  CHECK(a.to_vector() != b.to_vector());
}

TEST_CASE("cast converts elements, rounding to bf16 to nearest even", "[tensor]") {
  auto d = Tensor<double>::randn(Shape{3, 7}, 10);
  auto f = d.cast<float>();
  auto dv = d.to_vector();
  auto fv = f.to_vector();
  for (std::size_t i = 0; i < dv.size(); ++i) CHECK(fv[i] == static_cast<float>(dv[i]));
  auto h = f.cast<bf16>();
  auto hv = h.to_vector();
  for (std::size_t i = 0; i < fv.size(); ++i) CHECK(hv[i].bits == bf16(fv[i]).bits);
  // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even one (1).
  auto tie = Tensor<float>::full(Shape{1}, 1.0f + 1.0f / 256.0f).cast<bf16>();
  CHECK(static_cast<float>(tie.item()) == 1.0f);
  // A strided source is cast in its logical (row-major) order.
  auto ct = d.transpose(0, 1).cast<float>();
  CHECK(ct.shape() == (Shape{7, 3}));
  for (std::int64_t i = 0; i < 7; ++i)
    for (std::int64_t j = 0; j < 3; ++j) CHECK(ct.at({i, j}) == static_cast<float>(d.at({j, i})));
  // Casting to the same type returns the same storage when contiguous.
  CHECK(d.cast<double>().shares_storage_with(d));
}

TEST_CASE("to_vector, at and item", "[tensor]") {
  std::vector<double> v{1, 2, 3, 4, 5, 6};
  auto t = Tensor<double>::from_vector(Shape{2, 3}, v);
  CHECK(t.at({1, 2}) == 6.0);
  CHECK(t.at({0, 1}) == 2.0);
  CHECK(Tensor<double>(Shape{0, 3}).to_vector().empty());
  CHECK(contains(error_of([&] { t.at({2, 0}); }), "(2, 3)"));
  CHECK(contains(error_of([&] { t.at({0}); }), "(2, 3)"));
  CHECK(contains(error_of([&] { t.item(); }), "(2, 3)"));
  CHECK(t.slice(1, 2, 3).select(0, 1).item() == 6.0);
}

TEST_CASE("reshape and slice errors name the shapes and the range", "[tensor]") {
  auto t = Tensor<double>::zeros(Shape{2, 3});
  const std::string reshape_msg = error_of([&] { t.reshape({4, 2}); });
  INFO(reshape_msg);
  CHECK(contains(reshape_msg, "(2, 3)"));
  CHECK(contains(reshape_msg, "(4, 2)"));
  CHECK(contains(error_of([&] { t.reshape({-1, -1}); }), "-1"));
  CHECK(contains(error_of([&] { t.reshape({4, -1}); }), "(2, 3)"));

  const std::string slice_msg = error_of([&] { t.slice(1, 1, 4); });
  INFO(slice_msg);
  CHECK(contains(slice_msg, "[1, 4)"));
  CHECK(contains(slice_msg, "(2, 3)"));
  CHECK(contains(error_of([&] { t.slice(0, 2, 1); }), "out of range"));
  CHECK(contains(error_of([&] { t.slice(2, 0, 1); }), "dimension 2"));
  CHECK(contains(error_of([&] { t.select(0, 2); }), "(2, 3)"));
  CHECK(contains(error_of([&] { t.transpose(0, 3); }), "(2, 3)"));
}

TEST_CASE("printing shows the type, device, shape and leading values", "[tensor]") {
  std::ostringstream s;
  s << Tensor<float>::from_vector(Shape{2, 2}, {1.5f, 2, 3, 4});
  const std::string text = s.str();
  INFO(text);
  CHECK(contains(text, "fp32"));
  CHECK(contains(text, "cpu"));
  CHECK(contains(text, "(2, 2)"));
  CHECK(contains(text, "1.5"));
  std::ostringstream l;
  l << Tensor<double>::zeros(Shape{100});
  CHECK(contains(l.str(), "..."));
}
