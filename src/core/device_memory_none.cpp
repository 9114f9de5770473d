// Device memory in a build without the CUDA backend: every request is refused.
#include "core/device_memory.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/ops.hpp"

namespace mxfp4 {

bool cuda_built() noexcept {
  return false;
}
int cuda_device_count() noexcept {
  return 0;
}
std::size_t linear_workspace_bytes() {
  return 0;
}
void synchronize(Stream) {}

namespace detail {

std::shared_ptr<void> cuda_allocate(std::size_t, Device device) {
  throw Unsupported("cannot allocate on " + to_string(device) +
                    ": this build of mxfp4 has no CUDA backend");
}

void cuda_copy(void*, Device dst_device, const void*, Device src_device, std::size_t, Stream,
               bool) {
  throw Unsupported("cannot copy from " + to_string(src_device) + " to " + to_string(dst_device) +
                    ": this build of mxfp4 has no CUDA backend");
}

}  // namespace detail
}  // namespace mxfp4
