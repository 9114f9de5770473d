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

// What kernel launches need to know of the current device, read once per device and cached
// (the attribute queries stay off the per-call path; a process may drive devices of different
// architectures, so nothing is cached process-wide).
struct DeviceFacts {
  int multiprocessors = 0;
  int major = 0, minor = 0;  // compute capability
};
const DeviceFacts& current_device_facts();

// Readies `kernel` (a __global__ function) for launches of `threads` threads with `smem_bytes`
// of dynamic shared memory on the current device: raises its shared-memory limit there, once
// per device and kernel, and returns how many such CTAs fit an SM (at least 1), also cached.
int prepare_kernel(const void* kernel, int threads, int smem_bytes, const char* name);

}  // namespace mxfp4::cuda
