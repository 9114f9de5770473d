// Helpers shared by the CUDA kernels: error checks that throw the library's typed errors, and
// typed element loads and stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "mxfp4/dtype.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4::cuda {

// Throws DeviceError naming the call and the CUDA error.
inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw DeviceError(std::string(what) + ": " + cudaGetErrorName(status) + " (" +
                      cudaGetErrorString(status) + ")");
  }
}
// After a kernel launch: a bad configuration shows up here, without synchronizing.
inline void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

inline cudaStream_t as_stream(void* handle) {
  return static_cast<cudaStream_t>(handle);
}

// Device memory for one call: the caller's (`given`, used as it is) or, where that is null,
// `bytes` of stream-ordered memory (cudaMallocAsync: no device-wide synchronization, and a graph
// captures it), freed in stream order by release() once the call's last use of it is queued, or
// by the destructor (unchecked) when the call throws before that.
class CallMemory {
 public:
  CallMemory(void* given, std::size_t bytes, cudaStream_t stream, const char* what)
      : p_(given), stream_(stream), what_(what), owned_(given == nullptr) {
    if (owned_) checked(cudaMallocAsync(&p_, bytes, stream), "cudaMallocAsync");
  }
  CallMemory(const CallMemory&) = delete;
  CallMemory& operator=(const CallMemory&) = delete;
  ~CallMemory() {
    if (owned_) cudaFreeAsync(p_, stream_);
  }
  void* get() const { return p_; }
  void release() {
    if (!owned_) return;
    owned_ = false;
    checked(cudaFreeAsync(p_, stream_), "cudaFreeAsync");
  }

 private:
  void checked(cudaError_t status, const char* call) const {
    if (status != cudaSuccess) check(status, (std::string(call) + "(" + what_ + ")").c_str());
  }
  void* p_;
  cudaStream_t stream_;
  const char* what_;
  bool owned_;
};

// Typed access used by templated kernels; T is float, __half or __nv_bfloat16.
template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Runs f with the element type of a floating DType (f32, f16, bf16).
template <typename F>
void dispatch_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::f16:
      f(__half{});
      break;
    case DType::bf16:
      f(__nv_bfloat16{});
      break;
    default:
      f(float{});
      break;
  }
}

inline unsigned blocks_for(long long work, unsigned per_block) {
  return static_cast<unsigned>((work + per_block - 1) / per_block);
}

}  // namespace mxfp4::cuda
