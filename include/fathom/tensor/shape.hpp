// Shape: a small fixed-capacity list of extents (up to 8 dimensions), used for tensor shapes and
// strides. Printing gives "(2, 3, 4)", the form error messages use.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "fathom/core/error.hpp"

namespace fathom {

class Shape {
 public:
  static constexpr int max_rank = 8;

  Shape() = default;
  Shape(std::initializer_list<std::int64_t> dims) { assign(dims.begin(), dims.end()); }
  explicit Shape(const std::vector<std::int64_t>& dims) { assign(dims.begin(), dims.end()); }

  int rank() const { return rank_; }
  std::int64_t operator[](int i) const { return dims_[static_cast<std::size_t>(i)]; }
  std::int64_t& operator[](int i) { return dims_[static_cast<std::size_t>(i)]; }
  const std::int64_t* begin() const { return dims_.data(); }
  const std::int64_t* end() const { return dims_.data() + rank_; }

  // Index counted from the end when negative (-1 is the last dimension).
  int axis(int i) const {
    int a = i < 0 ? i + rank_ : i;
    FATHOM_CHECK(a >= 0 && a < rank_, "dimension " << i << " out of range for shape " << *this);
    return a;
  }
  std::int64_t dim(int i) const { return dims_[static_cast<std::size_t>(axis(i))]; }

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
  }

  void push_back(std::int64_t d) {
    FATHOM_CHECK(rank_ < max_rank, "shapes hold at most " << max_rank << " dimensions");
    dims_[static_cast<std::size_t>(rank_++)] = d;
  }

  std::vector<std::int64_t> to_vector() const { return {begin(), end()}; }

  friend bool operator==(const Shape& a, const Shape& b) {
    return a.rank_ == b.rank_ && std::equal(a.begin(), a.end(), b.begin());
  }

  friend std::ostream& operator<<(std::ostream& os, const Shape& s) {
    os << "(";
    for (int i = 0; i < s.rank_; ++i) os << (i ? ", " : "") << s[i];
    return os << (s.rank_ == 1 ? ",)" : ")");
  }
  std::string str() const {
    std::ostringstream o;
    o << *this;
    return o.str();
  }

 private:
  template <class It>
  void assign(It first, It last) {
    FATHOM_CHECK(last - first <= max_rank,
                 "shapes hold at most " << max_rank << " dimensions, got " << (last - first));
    rank_ = 0;
    for (; first != last; ++first) {
      FATHOM_CHECK(*first >= 0, "shape extents must be non-negative, got " << *first);
      dims_[static_cast<std::size_t>(rank_++)] = *first;
    }
  }

  std::array<std::int64_t, max_rank> dims_{};
  int rank_ = 0;
};

// Row-major (C order) strides of a shape.
inline Shape contiguous_strides(const Shape& shape) {
  Shape strides = shape;
  std::int64_t s = 1;
  for (int i = shape.rank() - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

}  // namespace fathom
