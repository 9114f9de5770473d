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

// A CTA quantizes kThreads consecutive blocks. Reading each block with one thread would stride
// the warp's loads by 128 bytes; instead the CTA first copies its blocks to shared memory with
// coalesced 16-byte loads, then each thread codes one block from there (rows padded to 33 floats
// so the 32 threads of a warp read 32 different banks).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const T* __restrict__ weight, std::int64_t total_blocks,
                    std::uint8_t* __restrict__ blocks, std::uint8_t* __restrict__ scales,
                    ScaleRule rule, bool vector_loads, unsigned long long* first_non_finite) {
  __shared__ float tile[kThreads][kBlockSize + 1];
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kThreads;
  const int count = total_blocks - first < kThreads ? static_cast<int>(total_blocks - first)
                                                    : static_cast<int>(kThreads);
  // 16 bytes per load: 4 f32 or 8 16-bit values; a block is 8 or 4 such vectors.
  constexpr int kPerVector = 16 / static_cast<int>(sizeof(T));
  constexpr int kVectorsPerBlock = kBlockSize / kPerVector;
  if (vector_loads) {
    const auto* src = reinterpret_cast<const uint4*>(weight + first * kBlockSize);
    for (int i = static_cast<int>(threadIdx.x); i < count * kVectorsPerBlock; i += kThreads) {
      const uint4 q = __ldcs(src + i);  // read once: do not keep it in the caches
      T vals[kPerVector];
      memcpy(vals, &q, sizeof q);
      float* dst = &tile[i / kVectorsPerBlock][(i % kVectorsPerBlock) * kPerVector];
#pragma unroll
      for (int j = 0; j < kPerVector; ++j)
        dst[j] = to_float(vals[j]);
    }
  } else {  // a weight view that is not 16-byte aligned
    const T* src = weight + first * kBlockSize;
    for (int i = static_cast<int>(threadIdx.x); i < count * kBlockSize; i += kThreads) {
      tile[i / kBlockSize][i % kBlockSize] = to_float(src[i]);
    }
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) >= count) return;
  const std::int64_t b = first + threadIdx.x;
  const float* v = tile[threadIdx.x];
  for (int i = 0; i < kBlockSize; ++i) {
    if (!isfinite(v[i])) {
      atomicMin(first_non_finite, static_cast<unsigned long long>(b * kBlockSize + i));
      break;
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
    throw Unsupported(
        std::string("CUDA ") + what +
        " needs a 16-byte aligned blocks tensor (cudaMalloc's alignment); got a view at an offset");
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
          static_cast<const T*>(a.weight), total, a.blocks, a.scales, a.rule, aligned16(a.weight),
          flag);
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
