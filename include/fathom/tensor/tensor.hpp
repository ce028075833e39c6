// Tensor<T, D>: an owning, reference-counted, row-major n-d array on device D with shape, strides
// and an offset, so that slices, transposes and reshapes are views that share storage.
#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <type_traits>
#include <utility>
#include <vector>

#include "fathom/core/device.hpp"
#include "fathom/core/error.hpp"
#include "fathom/core/memory.hpp"
#include "fathom/core/rng.hpp"
#include "fathom/core/scalar.hpp"
#include "fathom/tensor/shape.hpp"

namespace fathom {

// Element-wise primitives that a tensor needs from its device. The CPU versions are here; the
// CUDA overloads (same names, first argument Cuda) come with <fathom/cuda.hpp> and are found by
// argument-dependent lookup.
template <class T>
void device_fill(Cpu, T* dst, std::int64_t n, T value) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = value;
}

// dst (contiguous) <- src viewed with `shape` and `src_strides` (in elements).
template <class T>
void device_strided_copy(Cpu, T* dst, const T* src, const Shape& shape, const Shape& src_strides) {
  const int rank = shape.rank();
  const std::int64_t n = shape.numel();
  if (n == 0) return;
  std::array<std::int64_t, Shape::max_rank> index{};
  std::int64_t offset = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    dst[i] = src[offset];
    for (int d = rank - 1; d >= 0; --d) {  // odometer increment
      auto ud = static_cast<std::size_t>(d);
      ++index[ud];
      offset += src_strides[d];
      if (index[ud] < shape[d]) break;
      offset -= src_strides[d] * shape[d];
      index[ud] = 0;
    }
  }
}

template <class To, class From>
void device_cast(Cpu, To* dst, const From* src, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = scalar_cast<To>(src[i]);
}

template <class T, DeviceTag D = Cpu>
class Tensor {
 public:
  using value_type = T;
  using device_type = D;

  Tensor() = default;  // an undefined tensor: defined() is false

  // Uninitialized contents.
  explicit Tensor(const Shape& shape)
      : storage_(std::make_shared<Storage<D>>(static_cast<std::size_t>(shape.numel()) * sizeof(T))),
        shape_(shape),
        strides_(contiguous_strides(shape)) {}

  static Tensor zeros(const Shape& shape) {
    Tensor t(shape);
    t.zero_();
    return t;
  }
  static Tensor full(const Shape& shape, T value) {
    Tensor t(shape);
    t.fill_(value);
    return t;
  }
  // Copies host values in row-major order; values.size() must equal shape.numel().
  static Tensor from_vector(const Shape& shape, const std::vector<T>& values) {
    FATHOM_CHECK(static_cast<std::int64_t>(values.size()) == shape.numel(),
                 "from_vector: shape " << shape << " needs " << shape.numel() << " values, got "
                                       << values.size());
    Tensor t(shape);
    if (!values.empty())
      DeviceMemory<D>::from_host(t.data(), values.data(), values.size() * sizeof(T));
    return t;
  }
  // N(mean, std^2) from the counter-based stream (seed, offset + i): identical on every device.
  static Tensor randn(const Shape& shape, std::uint64_t seed, double std = 1.0, double mean = 0.0,
                      std::uint64_t offset = 0) {
    std::vector<T> v(static_cast<std::size_t>(shape.numel()));
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = scalar_cast<T>(mean + std * rng::normal(seed, offset + i));
    return from_vector(shape, v);
  }
  // U[low, high) from the counter-based stream (seed, offset + i).
  static Tensor uniform(const Shape& shape, std::uint64_t seed, double low = 0.0, double high = 1.0,
                        std::uint64_t offset = 0) {
    std::vector<T> v(static_cast<std::size_t>(shape.numel()));
    for (std::size_t i = 0; i < v.size(); ++i)
      v[i] = scalar_cast<T>(low + (high - low) * rng::uniform(seed, offset + i));
    return from_vector(shape, v);
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return shape_.rank(); }
  std::int64_t size(int d) const { return shape_.dim(d); }
  std::int64_t numel() const { return shape_.numel(); }
  std::int64_t offset() const { return offset_; }
  std::size_t bytes() const { return static_cast<std::size_t>(numel()) * sizeof(T); }

  // Pointer to the first element of this view.
  T* data() const {
    FATHOM_CHECK(defined(), "data() of an undefined tensor");
    return static_cast<T*>(storage_->data()) + offset_;
  }

  bool is_contiguous() const { return strides_ == contiguous_strides(shape_); }
  bool shares_storage_with(const Tensor& other) const { return storage_ == other.storage_; }
  // How many tensors (views included) share this one's storage: 1 means nothing else can see a
  // write to it (used to reuse a buffer in place once its last reader is done).
  long storage_use_count() const { return storage_ ? storage_.use_count() : 0; }

  Tensor contiguous() const { return is_contiguous() ? *this : clone(); }

  // A contiguous copy with its own storage.
  Tensor clone() const {
    Tensor out(shape_);
    out.copy_(*this);
    return out;
  }

  // The same elements in a new shape; one extent may be -1 (inferred). A view when contiguous,
  // otherwise a copy.
  Tensor reshape(std::vector<std::int64_t> dims) const {
    std::int64_t known = 1;
    int infer = -1;
    for (std::size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == -1) {
        FATHOM_CHECK(infer < 0,
                     "reshape: at most one -1 extent, got " << Shape(fix_negatives(dims)));
        infer = static_cast<int>(i);
      } else {
        known *= dims[i];
      }
    }
    if (infer >= 0) {
      FATHOM_CHECK(known > 0 && numel() % known == 0, "reshape: cannot infer the -1 extent for "
                                                          << numel() << " elements of " << shape_);
      dims[static_cast<std::size_t>(infer)] = numel() / known;
    }
    Shape target(dims);
    FATHOM_CHECK(target.numel() == numel(), "reshape: shape " << shape_ << " has " << numel()
                                                              << " elements, target " << target
                                                              << " has " << target.numel());
    Tensor base = contiguous();
    base.shape_ = target;
    base.strides_ = contiguous_strides(target);
    return base;
  }

  // Elements [start, end) of dimension d, as a view.
  Tensor slice(int d, std::int64_t start, std::int64_t end) const {
    int a = shape_.axis(d);
    FATHOM_CHECK(0 <= start && start <= end && end <= shape_[a],
                 "slice [" << start << ", " << end << ") out of range for dimension " << d
                           << " of shape " << shape_);
    Tensor v = *this;
    v.offset_ += start * strides_[a];
    v.shape_[a] = end - start;
    return v;
  }

  // Index i of dimension d, dropping that dimension, as a view.
  Tensor select(int d, std::int64_t i) const {
    int a = shape_.axis(d);
    FATHOM_CHECK(0 <= i && i < shape_[a], "select: index " << i << " out of range for dimension "
                                                           << d << " of shape " << shape_);
    Tensor v;
    v.storage_ = storage_;
    v.offset_ = offset_ + i * strides_[a];
    for (int k = 0; k < dim(); ++k) {
      if (k == a) continue;
      v.shape_.push_back(shape_[k]);
      v.strides_.push_back(strides_[k]);
    }
    return v;
  }

  // Dimensions a and b swapped, as a view.
  Tensor transpose(int a, int b) const {
    int x = shape_.axis(a), y = shape_.axis(b);
    Tensor v = *this;
    std::swap(v.shape_[x], v.shape_[y]);
    std::swap(v.strides_[x], v.strides_[y]);
    return v;
  }

  Tensor& fill_(T value) {
    require_contiguous("fill_");
    device_fill(D{}, data(), numel(), value);
    return *this;
  }
  Tensor& zero_() {
    require_contiguous("zero_");
    if (numel()) DeviceMemory<D>::zero(data(), bytes());
    return *this;
  }

  // Copies src's elements into this tensor (same shape; src may be strided or on another device).
  // This tensor must be contiguous.
  template <DeviceTag D2>
  Tensor& copy_(const Tensor<T, D2>& src) {
    FATHOM_CHECK(src.shape() == shape_, "copy_: destination shape " << shape_
                                                                    << " differs from source shape "
                                                                    << src.shape());
    require_contiguous("copy_ (destination)");
    if (numel() == 0) return *this;
    if constexpr (std::is_same_v<D, D2>) {
      if (src.is_contiguous()) {
        DeviceMemory<D>::copy(data(), src.data(), bytes());
      } else {
        device_strided_copy(D{}, data(), src.data(), src.shape(), src.strides());
      }
    } else {
      Tensor<T, D2> packed = src.contiguous();
      if constexpr (std::is_same_v<D, Cpu>) {
        DeviceMemory<D2>::to_host(data(), packed.data(), bytes());
      } else {
        static_assert(std::is_same_v<D2, Cpu>,
                      "copies between two accelerators go through the host");
        DeviceMemory<D>::from_host(data(), packed.data(), bytes());
      }
    }
    return *this;
  }

  // A contiguous copy on device D2 (this tensor itself when D2 == D and contiguous).
  template <DeviceTag D2>
  Tensor<T, D2> to() const {
    if constexpr (std::is_same_v<D, D2>) {
      return contiguous();
    } else {
      Tensor<T, D2> out(shape_);
      out.copy_(*this);
      return out;
    }
  }

  // Element type conversion (bf16 rounds to nearest even).
  template <class U>
  Tensor<U, D> cast() const {
    if constexpr (std::is_same_v<T, U>) {
      return contiguous();
    } else {
      Tensor packed = contiguous();
      Tensor<U, D> out(shape_);
      device_cast(D{}, out.data(), packed.data(), numel());
      return out;
    }
  }

  // The elements in row-major order, on the host.
  std::vector<T> to_vector() const {
    std::vector<T> out(static_cast<std::size_t>(numel()));
    if (out.empty()) return out;
    Tensor packed = contiguous();
    DeviceMemory<D>::to_host(out.data(), packed.data(), bytes());
    return out;
  }

  // One element by index (copies it to the host).
  T at(std::initializer_list<std::int64_t> index) const {
    FATHOM_CHECK(static_cast<int>(index.size()) == dim(),
                 "at: " << index.size() << " indices for a tensor of shape " << shape_);
    std::int64_t off = 0;
    int k = 0;
    for (std::int64_t i : index) {
      FATHOM_CHECK(0 <= i && i < shape_[k], "at: index " << i << " out of range for dimension " << k
                                                         << " of shape " << shape_);
      off += i * strides_[k++];
    }
    T v;
    DeviceMemory<D>::to_host(&v, data() + off, sizeof(T));
    return v;
  }
  // The single element of a one-element tensor.
  T item() const {
    FATHOM_CHECK(numel() == 1, "item() needs exactly one element, shape is " << shape_);
    T v;
    DeviceMemory<D>::to_host(&v, contiguous().data(), sizeof(T));
    return v;
  }

  friend std::ostream& operator<<(std::ostream& os, const Tensor& t) {
    os << "Tensor<" << Precision_name() << ", " << D::name << "> shape " << t.shape_;
    if (!t.defined()) return os << " (undefined)";
    auto v = t.to_vector();
    os << " [";
    const std::size_t shown = std::min<std::size_t>(v.size(), 16);
    for (std::size_t i = 0; i < shown; ++i)
      os << (i ? ", " : "") << static_cast<double>(scalar_cast<double>(v[i]));
    if (v.size() > shown) os << ", ...";
    return os << "]";
  }

 private:
  template <class, DeviceTag>
  friend class Tensor;

  static const char* Precision_name() {
    if constexpr (FloatingScalar<T>)
      return Precision<T>::name;
    else if constexpr (std::is_same_v<T, std::int32_t>)
      return "int32";
    else if constexpr (std::is_same_v<T, std::int64_t>)
      return "int64";
    else
      return "scalar";
  }
  static std::vector<std::int64_t> fix_negatives(std::vector<std::int64_t> d) {
    for (auto& x : d) x = x < 0 ? 0 : x;
    return d;
  }
  void require_contiguous(const char* what) const {
    FATHOM_CHECK(is_contiguous(), what << " needs a contiguous tensor, got shape " << shape_
                                       << " with strides " << strides_);
  }

  std::shared_ptr<Storage<D>> storage_;
  std::int64_t offset_ = 0;
  Shape shape_;
  Shape strides_;
};

}  // namespace fathom
