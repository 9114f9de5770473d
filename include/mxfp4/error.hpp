// Typed errors. Every public call validates its arguments and throws one of these; the library
// never aborts or exits on bad input. The C API (later) maps ErrorCode to its status codes, so
// the numeric values are stable: append, never renumber.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace mxfp4 {

enum class ErrorCode : std::uint8_t {
  invalid_argument = 1,    // a value outside its domain (unknown rule name, negative dim, ...)
  shape_mismatch = 2,      // a tensor's rank or dims disagree with what the call needs
  dtype_mismatch = 3,      // a tensor's element type is not one the call accepts
  index_out_of_range = 4,  // an expert id (or other index) outside [0, bound)
  non_finite = 5,          // NaN or Inf where a finite value is required
  format_error = 6,        // a file or byte string does not follow its format
  io_error = 7,            // the operating system refused a read, write or rename
  unsupported = 8,         // valid request this build or device cannot do (e.g. no CUDA)
  device_error = 9,        // the CUDA runtime reported a failure (out of memory, bad launch, ...)
};

const char* error_code_name(ErrorCode code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

#define MXFP4_DEFINE_ERROR(Name, code_value)                                  \
  class Name : public Error {                                                 \
   public:                                                                    \
    explicit Name(const std::string& message) : Error(code_value, message) {} \
  }

MXFP4_DEFINE_ERROR(InvalidArgument, ErrorCode::invalid_argument);
MXFP4_DEFINE_ERROR(ShapeMismatch, ErrorCode::shape_mismatch);
MXFP4_DEFINE_ERROR(DTypeMismatch, ErrorCode::dtype_mismatch);
MXFP4_DEFINE_ERROR(IndexOutOfRange, ErrorCode::index_out_of_range);
MXFP4_DEFINE_ERROR(NonFiniteValue, ErrorCode::non_finite);
MXFP4_DEFINE_ERROR(FormatError, ErrorCode::format_error);
MXFP4_DEFINE_ERROR(IoError, ErrorCode::io_error);
MXFP4_DEFINE_ERROR(Unsupported, ErrorCode::unsupported);
MXFP4_DEFINE_ERROR(DeviceError, ErrorCode::device_error);

#undef MXFP4_DEFINE_ERROR

}  // namespace mxfp4
