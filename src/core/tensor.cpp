#include "mxfp4/tensor.hpp"

#include <cstdlib>
#include <limits>
#include <new>

#include "core/convert.hpp"
#include "core/device_memory.hpp"

namespace mxfp4 {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_argument:
      return "invalid_argument";
    case ErrorCode::shape_mismatch:
      return "shape_mismatch";
    case ErrorCode::dtype_mismatch:
      return "dtype_mismatch";
    case ErrorCode::index_out_of_range:
      return "index_out_of_range";
    case ErrorCode::non_finite:
      return "non_finite";
    case ErrorCode::format_error:
      return "format_error";
    case ErrorCode::io_error:
      return "io_error";
    case ErrorCode::unsupported:
      return "unsupported";
    case ErrorCode::device_error:
      return "device_error";
  }
  return "unknown";
}

std::size_t dtype_size(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32:
    case DType::u32:
    case DType::i32:
      return 4;
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::u8:
      return 1;
    case DType::i64:
      return 8;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::u8:
      return "u8";
    case DType::u32:
      return "u32";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  for (DType d :
       {DType::f32, DType::f16, DType::bf16, DType::u8, DType::u32, DType::i32, DType::i64}) {
    if (dtype_name(d) == name) return d;
  }
  throw InvalidArgument("unknown dtype '" + std::string(name) +
                        "' (expected one of f32, f16, bf16, u8, u32, i32, i64)");
}

std::string to_string(Device device) {
  return device.type == DeviceType::cpu ? "cpu" : "cuda:" + std::to_string(device.index);
}

std::string to_string(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0) throw InvalidArgument("shape " + to_string(shape) + " has a negative dim");
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
      throw InvalidArgument("shape " + to_string(shape) + " has more elements than int64 holds");
    }
    n *= d;
  }
  return n;
}

namespace {

void require_cpu(Device device, const char* what) {
  if (device.type != DeviceType::cpu) {
    throw Unsupported(std::string(what) + ": tensors on " + to_string(device) +
                      " are not supported by this build (CPU only)");
  }
}

std::size_t checked_nbytes(const Shape& shape, DType dtype) {
  const std::int64_t n = shape_numel(shape);
  const auto size = static_cast<std::int64_t>(dtype_size(dtype));
  if (n > std::numeric_limits<std::int64_t>::max() / size) {
    throw InvalidArgument("shape " + to_string(shape) + " of " + std::string(dtype_name(dtype)) +
                          " is too large to address");
  }
  return static_cast<std::size_t>(n * size);
}

}  // namespace

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  const std::size_t bytes = checked_nbytes(shape, dtype);
  Tensor t;
  if (device.type == DeviceType::cuda) {
    t.owner_ = detail::cuda_allocate(bytes, device);
    t.data_ = t.owner_.get();
  } else {
    // 64-byte alignment so that vector kernels may use aligned loads on whole rows.
    const std::size_t alloc = ((bytes + 63) / 64) * 64;
    void* p = alloc == 0 ? nullptr : std::aligned_alloc(64, alloc);
    if (alloc != 0 && p == nullptr) {
      throw InvalidArgument("Tensor::empty: cannot allocate " + std::to_string(bytes) +
                            " bytes for shape " + to_string(shape));
    }
    t.owner_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
    t.data_ = p;
  }
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.defined_ = true;
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  if (t.nbytes() == 0) return t;
  if (device.type == DeviceType::cpu) {
    std::memset(t.data_, 0, t.nbytes());
  } else {
    const std::vector<std::uint8_t> zero(t.nbytes(), 0);
    detail::cuda_copy(t.data_, device, zero.data(), Device::cpu(), t.nbytes(), {}, true);
  }
  return t;
}

Tensor Tensor::view(void* data, Shape shape, DType dtype, Device device) {
  checked_nbytes(shape, dtype);
  Tensor t;
  t.numel_ = shape_numel(shape);
  if (data == nullptr && t.numel_ != 0) {
    throw InvalidArgument("Tensor::view: null data for shape " + to_string(shape));
  }
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.defined_ = true;
  return t;
}

Tensor Tensor::view(const void* data, Shape shape, DType dtype, Device device) {
  return view(const_cast<void*>(data), std::move(shape), dtype, device);
}

Tensor Tensor::view(const void* data, Shape shape, DType dtype,
                    std::shared_ptr<const void> keep_alive) {
  Tensor t = view(const_cast<void*>(data), std::move(shape), dtype, Device::cpu());
  t.owner_ = std::const_pointer_cast<void>(std::move(keep_alive));
  return t;
}

std::int64_t Tensor::dim(int i) const {
  const int r = rank();
  if (i < -r || i >= r) {
    throw InvalidArgument("dim(" + std::to_string(i) + ") of a rank-" + std::to_string(r) +
                          " tensor " + to_string(shape_));
  }
  return shape_[static_cast<std::size_t>(i < 0 ? i + r : i)];
}

void Tensor::check_element_type(DType requested) const {
  if (!defined_) throw InvalidArgument("typed access to an undefined tensor");
  if (requested != dtype_) {
    throw DTypeMismatch("tensor holds " + std::string(dtype_name(dtype_)) + ", accessed as " +
                        std::string(dtype_name(requested)));
  }
}

Tensor Tensor::reshape(Shape shape) const {
  if (!defined_) throw InvalidArgument("reshape of an undefined tensor");
  int inferred = -1;
  std::int64_t known = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (inferred >= 0) throw InvalidArgument("reshape: more than one -1 in " + to_string(shape));
      inferred = static_cast<int>(i);
    } else {
      if (shape[i] < 0) throw InvalidArgument("reshape: negative dim in " + to_string(shape));
      known = shape_numel({known, shape[i]});
    }
  }
  if (inferred >= 0) {
    if (known == 0 || numel_ % known != 0) {
      throw ShapeMismatch("reshape: cannot infer -1 in " + to_string(shape) + " for " +
                          std::to_string(numel_) + " elements " + to_string(shape_));
    }
    shape[static_cast<std::size_t>(inferred)] = numel_ / known;
  } else if (known != numel_) {
    throw ShapeMismatch("reshape: " + to_string(shape) + " does not hold the " +
                        std::to_string(numel_) + " elements of " + to_string(shape_));
  }
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(std::int64_t begin, std::int64_t end) const {
  if (!defined_ || rank() == 0) throw InvalidArgument("slice_rows needs a tensor of rank >= 1");
  if (begin < 0 || end < begin || end > shape_[0]) {
    throw IndexOutOfRange("slice_rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                          ") outside dim 0 of " + to_string(shape_));
  }
  Tensor t = *this;
  const std::int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.data_ = static_cast<char*>(data_) + static_cast<std::size_t>(begin * row) * dtype_size(dtype_);
  if (t.numel_ == 0 && data_ == nullptr) t.data_ = nullptr;
  return t;
}

Tensor Tensor::clone() const {
  if (!defined_) return {};
  return to(device_);
}

Tensor Tensor::to(Device device, Stream stream) const {
  if (!defined_) throw InvalidArgument("to() of an undefined tensor");
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this, stream);
  return t;
}

void Tensor::copy_from(const Tensor& src, Stream stream) {
  if (!defined_ || !src.defined_) throw InvalidArgument("copy_from: undefined tensor");
  if (src.dtype_ != dtype_ || src.numel_ != numel_) {
    throw ShapeMismatch("copy_from: destination " + std::string(dtype_name(dtype_)) + " " +
                        to_string(shape_) + " cannot take source " +
                        std::string(dtype_name(src.dtype_)) + " " + to_string(src.shape_));
  }
  if (nbytes() == 0) return;
  if (device_.type == DeviceType::cpu && src.device_.type == DeviceType::cpu) {
    std::memmove(data_, src.data_, nbytes());
    return;
  }
  detail::cuda_copy(data_, device_, src.data_, src.device_, nbytes(), stream,
                    stream.handle == nullptr);
}

Tensor Tensor::to(DType dtype) const {
  if (!defined_) throw InvalidArgument("to() of an undefined tensor");
  require_cpu(device_, "Tensor::to");
  if (dtype == dtype_) return clone();
  if (!is_floating(dtype) || !is_floating(dtype_)) {
    throw DTypeMismatch("Tensor::to converts among f32, f16 and bf16, not " +
                        std::string(dtype_name(dtype_)) + " to " + std::string(dtype_name(dtype)));
  }
  Tensor t = empty(shape_, dtype, device_);
  for (std::int64_t i = 0; i < numel_; ++i) {
    detail::store_float(t.data_, dtype, i, detail::load_float(data_, dtype_, i));
  }
  return t;
}

double Tensor::item_as_double(std::int64_t i) const {
  if (!defined_ || i < 0 || i >= numel_) {
    throw IndexOutOfRange("item_as_double(" + std::to_string(i) + ") outside " + to_string(shape_));
  }
  const std::size_t size = dtype_size(dtype_);
  const void* p = static_cast<const char*>(data_) + static_cast<std::size_t>(i) * size;
  std::uint64_t host = 0;
  if (device_.type != DeviceType::cpu) {
    detail::cuda_copy(&host, Device::cpu(), p, device_, size, {}, true);
    p = &host;
  }
  if (is_floating(dtype_)) return detail::load_float(p, dtype_, 0);
  if (dtype_ == DType::u8) return *static_cast<const std::uint8_t*>(p);
  return static_cast<double>(detail::load_index(p, dtype_, 0));
}

}  // namespace mxfp4
