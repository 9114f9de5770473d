#include "cuda/backend.hpp"

namespace mxfp4::cuda {

const detail::Backend& cuda_backend() {
  // gather_linear on CUDA arrives with the mixture-of-experts kernels (null: Unsupported).
  static const detail::Backend backend{"cuda", &quantize, &dequantize, &linear, nullptr};
  return backend;
}

}  // namespace mxfp4::cuda
