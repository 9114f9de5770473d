// Quantize and dequantize on the GPU: one thread per 32-element block, through the same
// format.hpp functions as the CPU, so the bytes are identical on every backend.
#include <cstdint>
#include <limits>

#include "cuda/backend.hpp"
#include "cuda/common.cuh"
#include "mxfp4/format.hpp"

namespace mxfp4::cuda {

namespace {

constexpr unsigned kThreads = 256;

template <typename T>
__global__ void quantize_kernel(const T* __restrict__ weight, std::int64_t total_blocks,
                                std::uint8_t* __restrict__ blocks,
                                std::uint8_t* __restrict__ scales, ScaleRule rule,
                                unsigned long long* first_non_finite) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= total_blocks) return;
  float v[kBlockSize];
  const T* src = weight + b * kBlockSize;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < kBlockSize; ++i) {
    v[i] = to_float(src[i]);
    finite = finite && isfinite(v[i]);
  }
  if (!finite) {
    for (int i = 0; i < kBlockSize; ++i) {
      if (!isfinite(v[i])) {
        atomicMin(first_non_finite, static_cast<unsigned long long>(b * kBlockSize + i));
        break;
      }
    }
  }
  alignas(16) std::uint8_t packed[kBlockBytes];
  scales[b] = quantize_block(rule, v, packed);
  // blocks + 16 * b is 16-byte aligned when the base is (checked by the caller).
  *reinterpret_cast<uint4*>(blocks + b * kBlockBytes) = *reinterpret_cast<const uint4*>(packed);
}

template <typename T>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ blocks,
                                  const std::uint8_t* __restrict__ scales,
                                  std::int64_t total_blocks, T* __restrict__ out) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= total_blocks) return;
  const uint4 q = *reinterpret_cast<const uint4*>(blocks + b * kBlockBytes);
  const std::uint32_t words[4] = {q.x, q.y, q.z, q.w};
  const float s = e8m0_decode(scales[b]);
  T* dst = out + b * kBlockSize;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      dst[w * 8 + i] = from_float<T>(e2m1_decode((words[w] >> (4 * i)) & 0xF) * s);
    }
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

void require_aligned(const void* p, const char* what) {
  if (!aligned16(p)) {
    throw Unsupported(std::string("CUDA ") + what +
                      " needs a 16-byte aligned blocks tensor (as cudaMalloc returns)");
  }
}

}  // namespace

std::int64_t quantize(const detail::QuantizeArgs& a) {
  require_aligned(a.blocks, "quantize");
  const std::int64_t total = a.rows * (a.k / kBlockSize);
  cudaStream_t stream = as_stream(a.stream);
  unsigned long long* flag = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&flag), sizeof *flag, stream), "cudaMallocAsync");
  const unsigned long long none = std::numeric_limits<unsigned long long>::max();
  unsigned long long found = none;
  try {
    check(cudaMemcpyAsync(flag, &none, sizeof none, cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
    dispatch_floating(a.weight_dtype, [&](auto zero) {
      using T = decltype(zero);
      quantize_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(a.weight), total, a.blocks, a.scales, a.rule, flag);
    });
    check_launch("quantize_kernel");
    check(cudaMemcpyAsync(&found, flag, sizeof found, cudaMemcpyDeviceToHost, stream),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    cudaFreeAsync(flag, stream);
    throw;
  }
  check(cudaFreeAsync(flag, stream), "cudaFreeAsync");
  return found == none ? -1 : static_cast<std::int64_t>(found);
}

void dequantize(const detail::DequantizeArgs& a) {
  require_aligned(a.blocks, "dequantize");
  const std::int64_t total = a.rows * (a.k / kBlockSize);
  cudaStream_t stream = as_stream(a.stream);
  dispatch_floating(a.out_dtype, [&](auto zero) {
    using T = decltype(zero);
    dequantize_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        a.blocks, a.scales, total, static_cast<T*>(a.out));
  });
  check_launch("dequantize_kernel");
}

}  // namespace mxfp4::cuda
