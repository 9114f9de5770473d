// The CUDA backend's kernel table (src/cuda/backend.cu). Included only in CUDA builds.
#pragma once

#include "core/kernel_args.hpp"

namespace mxfp4::cuda {

const detail::Backend& cuda_backend();

// Kernel entry points, each enqueued on args.stream.
std::int64_t quantize(const detail::QuantizeArgs& args);  // synchronizes: reports NaN/Inf
void dequantize(const detail::DequantizeArgs& args);
void linear(const detail::LinearArgs& args);  // no host synchronization, no allocation
// No host synchronization; allocates stream-ordered memory only without a caller workspace.
void gather_linear(const detail::GatherLinearArgs& args);
// Throws IndexOutOfRange (and clears the record) if a gather_linear on the current device met
// an expert id outside [0, E) since the last check.
void check_index_errors();

}  // namespace mxfp4::cuda
