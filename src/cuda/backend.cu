#include "cuda/backend.hpp"

namespace mxfp4::cuda {

const detail::Backend& cuda_backend() {
  static const detail::Backend backend{"cuda", &quantize, &dequantize, &linear, &gather_linear};
  return backend;
}

}  // namespace mxfp4::cuda
