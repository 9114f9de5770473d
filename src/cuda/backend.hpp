// The CUDA backend's kernel table (src/cuda/backend.cu). Included only in CUDA builds.
#pragma once

#include "core/kernel_args.hpp"

namespace mxfp4::cuda {

const detail::Backend& cuda_backend();

// Kernel entry points, each enqueued on args.stream.
std::int64_t quantize(const detail::QuantizeArgs& args);  // synchronizes: reports NaN/Inf
void dequantize(const detail::DequantizeArgs& args);
void linear(const detail::LinearArgs& args);  // no host synchronization, no allocation

}  // namespace mxfp4::cuda
