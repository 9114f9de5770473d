#include "core/backend.hpp"

#include <string>

#include "cpu/backend.hpp"
#include "reference/reference.hpp"

#if defined(MXFP4_WITH_CUDA)
#include "cuda/backend.hpp"
#endif

namespace mxfp4::detail {

const Backend& reference_backend() {
  static const Backend backend{"reference", &reference::quantize, &reference::dequantize,
                               &reference::linear, &reference::gather_linear};
  return backend;
}

const Backend& backend_for(Device device) {
  if (device.type == DeviceType::cpu) return cpu::cpu_backend();
#if defined(MXFP4_WITH_CUDA)
  if (device.type == DeviceType::cuda) return cuda::cuda_backend();
#endif
  throw Unsupported("no backend for tensors on " + to_string(device) + " in this build");
}

}  // namespace mxfp4::detail
