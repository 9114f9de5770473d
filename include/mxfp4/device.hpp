// Devices, streams and what this build and machine can run.
#pragma once

#include <cstdint>
#include <string>

namespace mxfp4 {

// Where a tensor's elements live.
enum class DeviceType : std::uint8_t { cpu = 0, cuda = 1 };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && a.index == b.index;
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};
// "cpu", "cuda:0"
std::string to_string(Device device);

// A CUDA stream (cudaStream_t) or null for the legacy default stream. Operations on CUDA tensors
// are enqueued on it and return without waiting; CPU operations ignore it.
struct Stream {
  void* handle = nullptr;
};

// True when the library was built with its CUDA backend.
bool cuda_built() noexcept;
// Number of usable CUDA devices: 0 without the CUDA backend, a driver or a GPU.
int cuda_device_count() noexcept;
// Waits until all work enqueued on `stream` has finished; throws DeviceError on a CUDA failure.
void synchronize(Stream stream = {});

}  // namespace mxfp4
