// Device memory, copies and streams through the CUDA runtime.
#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "core/device_memory.hpp"
#include "cuda/backend.hpp"
#include "cuda/common.cuh"
#include "cuda/linear_kernels.hpp"
#include "mxfp4/ops.hpp"

namespace mxfp4 {

bool cuda_built() noexcept {
  return true;
}

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls start clean
    return 0;
  }
  return n;
}

std::size_t linear_workspace_bytes() {
  if (cuda_device_count() == 0 || !cuda::sm90_gemm_available()) return 0;
  return static_cast<std::size_t>(cuda::current_device_facts().multiprocessors) *
         cuda::kStreamKBytesPerSm;
}

namespace cuda {

const DeviceFacts& current_device_facts() {
  static std::mutex mutex;
  static std::map<int, DeviceFacts> facts;  // node-based: references stay valid
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = facts.find(device);
  if (it == facts.end()) {
    DeviceFacts f;
    check(cudaDeviceGetAttribute(&f.multiprocessors, cudaDevAttrMultiProcessorCount, device),
          "cudaDeviceGetAttribute(multiprocessors)");
    check(cudaDeviceGetAttribute(&f.major, cudaDevAttrComputeCapabilityMajor, device),
          "cudaDeviceGetAttribute(compute capability)");
    check(cudaDeviceGetAttribute(&f.minor, cudaDevAttrComputeCapabilityMinor, device),
          "cudaDeviceGetAttribute(compute capability)");
    it = facts.emplace(device, f).first;
  }
  return it->second;
}

int prepare_kernel(const void* kernel, int threads, int smem_bytes, const char* name) {
  struct Key {
    int device;
    const void* kernel;
    int threads, smem;
    bool operator<(const Key& o) const {
      return std::tie(device, kernel, threads, smem) <
             std::tie(o.device, o.kernel, o.threads, o.smem);
    }
  };
  static std::mutex mutex;
  static std::map<Key, int> fits;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const Key key{device, kernel, threads, smem_bytes};
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = fits.find(key);
  if (it == fits.end()) {
    const std::string what(name);
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes),
          ("cudaFuncSetAttribute(" + what + ")").c_str());
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads,
                                                        static_cast<std::size_t>(smem_bytes)),
          ("cudaOccupancyMaxActiveBlocksPerMultiprocessor(" + what + ")").c_str());
    it = fits.emplace(key, std::max(per_sm, 1)).first;
  }
  return it->second;
}

}  // namespace cuda

void synchronize(Stream stream) {
  cuda::check(cudaStreamSynchronize(cuda::as_stream(stream.handle)), "cudaStreamSynchronize");
  cuda::check_index_errors();
}

namespace detail {

namespace {

// Makes `device` current for the scope, restoring the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(Device device) {
    cuda::check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device.index != previous_) cuda::check(cudaSetDevice(device.index), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

void check_index(Device device) {
  const int n = cuda_device_count();
  if (device.index < 0 || device.index >= n) {
    throw Unsupported(to_string(device) + " does not exist (" + std::to_string(n) +
                      " CUDA devices visible)");
  }
}

}  // namespace

std::shared_ptr<void> cuda_allocate(std::size_t bytes, Device device) {
  check_index(device);
  if (bytes == 0) return {};
  DeviceGuard guard(device);
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw DeviceError("cudaMalloc of " + std::to_string(bytes) + " bytes on " + to_string(device) +
                      " failed: " + cudaGetErrorString(status));
  }
  return std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
}

void cuda_copy(void* dst, Device dst_device, const void* src, Device src_device, std::size_t bytes,
               Stream stream, bool wait) {
  if (bytes == 0) return;
  const Device active = dst_device.type == DeviceType::cuda ? dst_device : src_device;
  check_index(active);
  DeviceGuard guard(active);
  cudaStream_t s = cuda::as_stream(stream.handle);
  cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), "cudaMemcpyAsync");
  if (wait) cuda::check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

}  // namespace detail
}  // namespace mxfp4
