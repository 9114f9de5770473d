// Memory on devices other than the host. Implemented by src/cuda/runtime.cu in a CUDA build and
// by src/core/device_memory_none.cpp otherwise.
#pragma once

#include <cstddef>
#include <memory>

#include "mxfp4/device.hpp"

namespace mxfp4::detail {

// `bytes` of memory on a CUDA device, freed when the last owner lets go.
std::shared_ptr<void> cuda_allocate(std::size_t bytes, Device device);
// Copies `bytes` between any two of host and CUDA memory, enqueued on `stream`; waits for the
// copy when `wait` is true.
void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes,
               Stream stream, bool wait);

}  // namespace mxfp4::detail
