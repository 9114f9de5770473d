// The backend table: which kernels run the operations for a device. Chosen once per process.
#pragma once

#include "core/kernel_args.hpp"
#include "mxfp4/tensor.hpp"

namespace mxfp4::detail {

// The backend for tensors on `device` (on the CPU: the kernels of the instruction set in use,
// include/mxfp4/cpu.hpp); throws Unsupported for a device this build cannot use.
const Backend& backend_for(Device device);

// The scalar reference kernels (src/reference): the oracle every other backend is tested against.
const Backend& reference_backend();

}  // namespace mxfp4::detail
