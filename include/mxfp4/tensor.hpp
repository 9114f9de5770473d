// Tensors: a dtype, a shape, a device and a pointer to contiguous row-major elements.
// A Tensor either owns its storage (Tensor::empty, zeros, from_vector, clone) or views memory
// someone else owns (Tensor::view); copies of a Tensor share storage, like std::shared_ptr.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "mxfp4/device.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4 {

using Shape = std::vector<std::int64_t>;
// "[2, 3, 4]"
std::string to_string(const Shape& shape);
// Product of dims; throws InvalidArgument on a negative dim or on overflow of int64.
std::int64_t shape_numel(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;  // an undefined tensor: defined() is false

  // Owning, uninitialised / zero-filled storage.
  static Tensor empty(Shape shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::cpu());
  // A view of memory the caller owns and keeps alive (and, for const data, does not write
  // through the view). No copy is made.
  static Tensor view(void* data, Shape shape, DType dtype, Device device = Device::cpu());
  static Tensor view(const void* data, Shape shape, DType dtype, Device device = Device::cpu());
  // A CPU view that shares ownership of whatever holds `data` (a memory-mapped file, a buffer):
  // `keep_alive` lives as long as this tensor or any copy of it.
  static Tensor view(const void* data, Shape shape, DType dtype,
                     std::shared_ptr<const void> keep_alive);
  // Owning copy of host values; shape must hold values.size() elements.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, Shape shape) {
    Tensor t = empty(std::move(shape), dtype_of<T>::value);
    if (static_cast<std::size_t>(t.numel()) != values.size()) {
      throw ShapeMismatch("Tensor::from_vector: shape " + to_string(t.shape()) + " holds " +
                          std::to_string(t.numel()) + " elements but " +
                          std::to_string(values.size()) + " values were given");
    }
    if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(T));
    return t;
  }

  bool defined() const { return defined_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // dim(i) with i in [-rank, rank); throws InvalidArgument otherwise.
  std::int64_t dim(int i) const;
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  // True for owning tensors and for views that share ownership of their storage (keep_alive).
  bool owns_data() const { return owner_ != nullptr; }

  void* data() { return data_; }
  const void* data() const { return data_; }
  // Typed access; throws DTypeMismatch when T is not this tensor's element type.
  template <typename T>
  T* data_as() {
    check_element_type(dtype_of<T>::value);
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* data_as() const {
    check_element_type(dtype_of<T>::value);
    return static_cast<const T*>(data_);
  }

  // Same storage, new shape with the same number of elements (one dim may be -1).
  Tensor reshape(Shape shape) const;
  // Rows [begin, end) of dim 0, sharing storage.
  Tensor slice_rows(std::int64_t begin, std::int64_t end) const;
  // Deep copy into owning storage.
  Tensor clone() const;
  // Converted copy among f32 / f16 / bf16 (or a clone if the dtype is already `dtype`); CPU only.
  Tensor to(DType dtype) const;
  // Copy on `device` (same dtype and shape). Copies to or from a CUDA device are enqueued on
  // `stream`; the call waits for them unless `stream` is given (then the source must stay alive
  // and unchanged until the stream reaches the copy).
  Tensor to(Device device, Stream stream = {}) const;
  // Copies src's elements into this tensor (same dtype and element count, any devices).
  void copy_from(const Tensor& src, Stream stream = {});
  // Element i (row-major) converted to double; for tests and tools, not hot paths.
  double item_as_double(std::int64_t i) const;

 private:
  void check_element_type(DType requested) const;

  std::shared_ptr<void> owner_;  // null for views
  void* data_ = nullptr;
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  bool defined_ = false;
  Device device_;
};

}  // namespace mxfp4
