// Quantize and dequantize on the GPU. Quantize codes each 32-element block with one thread,
// through quantize_block_fast (src/core/quantize_block_fast.hpp), which gives quantize_block's
// bytes (format.hpp, the CPU reference) in a third of its operations, so every backend writes the
// same bytes; bf16 blocks with the mse rule stay packed and go through
// quantize_block_bf16_mse_fast (bf16x2 arithmetic, the same bytes again).
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/gpu_block_layout.hpp"
#include "core/quantize_block_fast.hpp"
#include "cuda/backend.hpp"
#include "cuda/common.cuh"
#include "cuda/linear_kernels.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::cuda {

namespace {

constexpr unsigned kThreads = 256;
constexpr unsigned kWarpSize = 32;

// The input of one block as 16-byte chunks: 8 for f32, 4 for 16-bit types.
template <typename T>
constexpr int kChunksPerBlock = kBlockSize* static_cast<int>(sizeof(T)) / 16;

// Where chunk c of block (row) `row` of a warp's slice lives: chunks are XOR-swizzled across
// 128-byte lines so that both the coalesced copy (8 lanes: one line) and each lane's reads of its
// own block (8 lanes: 8 rows, same c) touch 8 distinct 16-byte bank groups.
template <typename T>
__device__ __forceinline__ unsigned chunk_slot(unsigned row, unsigned c) {
  constexpr unsigned kChunks = kChunksPerBlock<T>;
  constexpr unsigned kRowsPerLine = 8 / kChunks;
  return row * kChunks + (c ^ ((row / kRowsPerLine) % kChunks));
}

// 16 bytes of input -> f32 values (exact).
__device__ __forceinline__ void widen(const uint4& q, float* out, float) {
  out[0] = __uint_as_float(q.x);
  out[1] = __uint_as_float(q.y);
  out[2] = __uint_as_float(q.z);
  out[3] = __uint_as_float(q.w);
}
__device__ __forceinline__ void widen(const uint4& q, float* out, __nv_bfloat16) {
  const std::uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}
__device__ __forceinline__ void widen(const uint4& q, float* out, __half) {
  const std::uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    memcpy(&h, &words[i], sizeof h);
    const float2 f = __half22float2(h);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

// Each warp quantizes 32 consecutive blocks, one a lane. The warp first copies them to its own
// slice of shared memory with coalesced 16-byte streaming loads (in the input's own type: 16-bit
// inputs take half the space), then each lane reads its block back, widens it to f32 in
// registers and codes it. Warps never wait for each other.
template <typename T, ScaleRule Rule>
__device__ __forceinline__ void quantize_warp(const T* __restrict__ weight,
                                              std::int64_t total_blocks,
                                              std::uint8_t* __restrict__ blocks,
                                              std::uint8_t* __restrict__ scales, bool vector_loads,
                                              unsigned long long* first_non_finite) {
  constexpr unsigned kChunks = kChunksPerBlock<T>;
  constexpr unsigned kPerChunk = 16 / sizeof(T);
  __shared__ uint4 tile[kThreads / kWarpSize][kWarpSize * kChunks];
  const unsigned warp = threadIdx.x / kWarpSize;
  const unsigned lane = threadIdx.x % kWarpSize;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kThreads + warp * kWarpSize;
  if (first >= total_blocks) return;  // the whole warp
  const unsigned count =
      total_blocks - first < kWarpSize ? static_cast<unsigned>(total_blocks - first) : kWarpSize;
  uint4* slice = tile[warp];
  if (vector_loads) {
    // Load j of the warp reads its 512 contiguous bytes: lane l takes chunk l % kChunks of row
    // l / kChunks + j * (32 / kChunks).
    const auto* src = reinterpret_cast<const uint4*>(weight + first * kBlockSize);
    if (count == kWarpSize) {  // the common case, without a predicate per load
      uint4 q[kChunks];
#pragma unroll
      for (unsigned j = 0; j < kChunks; ++j)
        q[j] = __ldcs(src + lane + j * kWarpSize);  // read once: do not keep it in the caches
      // chunk_slot(row, c) for row = r0 + j * kRowStep, spelled so that j only adds a constant
      // or flips a constant bit: r0 / kRowsPerLine < kChunks / 2 and kRowStep / kRowsPerLine is
      // a multiple of kChunks / 2, so (row / kRowsPerLine) % kChunks is the XOR of the two.
      constexpr unsigned kRowStep = kWarpSize / kChunks, kRowsPerLine = 8 / kChunks;
      const unsigned r0 = lane / kChunks;
      const unsigned x = (lane % kChunks) ^ (r0 / kRowsPerLine);
#pragma unroll
      for (unsigned j = 0; j < kChunks; ++j) {
        slice[(r0 + j * kRowStep) * kChunks + (x ^ ((j * kRowStep / kRowsPerLine) % kChunks))] =
            q[j];
      }
    } else {
#pragma unroll
      for (unsigned j = 0; j < kChunks; ++j) {
        const unsigned row = lane / kChunks + j * (kWarpSize / kChunks);
        if (row < count) {
          slice[chunk_slot<T>(row, lane % kChunks)] = __ldcs(src + lane + j * kWarpSize);
        }
      }
    }
  } else {  // a weight view that is not 16-byte aligned: element by element, same layout
    const T* src = weight + first * kBlockSize;
    T* dst = reinterpret_cast<T*>(slice);
    for (unsigned i = lane; i < count * kBlockSize; i += kWarpSize) {
      const unsigned row = i / kBlockSize, col = i % kBlockSize;
      dst[chunk_slot<T>(row, col / kPerChunk) * kPerChunk + col % kPerChunk] = src[i];
    }
  }
  __syncwarp();
  if (lane >= count) return;
  const uint4* row = slice + lane * kChunks;
  const unsigned swizzle = (lane / (8 / kChunks)) % kChunks;  // chunk_slot's, for this row
  const std::int64_t b = first + lane;
  std::uint32_t words[4];
  // The mse rule's rare exact path (and the report of a non-finite value) reads the block again
  // from shared memory.
  const auto load = [slice, lane](int i) {
    const auto u = static_cast<unsigned>(i);
    const T* chunk = reinterpret_cast<const T*>(slice + chunk_slot<T>(lane, u / kPerChunk));
    return to_float(chunk[u % kPerChunk]);
  };
  // The first non-finite element of a block (only a block holding NaN or Inf gets kScaleNaN).
  const auto report_non_finite = [&](auto&& element) {
    for (int i = 0; i < kBlockSize; ++i) {
      if (!isfinite(element(i))) {
        atomicMin(first_non_finite, static_cast<unsigned long long>(b * kBlockSize + i));
        break;
      }
    }
  };
  std::uint8_t scale;
  if constexpr (std::is_same_v<T, __nv_bfloat16> && Rule == ScaleRule::mse) {
    // bf16 with the mse rule: coded in the packed pairs, two elements an instruction.
    static_assert(kChunks == 4);
    std::uint32_t w[16];
#pragma unroll
    for (unsigned c = 0; c < kChunks; ++c) {
      const uint4 q = row[c ^ swizzle];
      w[4 * c] = q.x;
      w[4 * c + 1] = q.y;
      w[4 * c + 2] = q.z;
      w[4 * c + 3] = q.w;
    }
    scale = detail::quantize_block_bf16_mse_fast(w, words, load);
    if (scale == kScaleNaN) report_non_finite(load);
  } else {
    float v[kBlockSize];
#pragma unroll
    for (unsigned c = 0; c < kChunks; ++c) {
      widen(row[c ^ swizzle], v + c * kPerChunk, T{});
    }
    scale = detail::quantize_block_fast<Rule>(v, words, load);
    if (scale == kScaleNaN) report_non_finite([&v](int i) { return v[i]; });
  }
  scales[b] = scale;
  // blocks + 16 * b is 16-byte aligned when the base is (checked by the caller).
  *reinterpret_cast<uint4*>(blocks + b * kBlockBytes) =
      make_uint4(words[0], words[1], words[2], words[3]);
}

// CTAs per SM the kernel is built for: bf16 with the mse rule took 73 registers, which fits
// three CTAs (24 warps) an SM; at 64, four (an H100: 1610-1690 -> 1676-1797 GB/s over two
// calls). 0: no minimum, ptxas's own choice (47-64 registers); an explicit 1 let it take 76-172
// and made the other kernels 20-40% slower.
template <typename T, ScaleRule Rule>
inline constexpr int kQuantizeMinCtas =
    std::is_same_v<T, __nv_bfloat16>&& Rule == ScaleRule::mse ? 4 : 0;

// The warps' blocks (quantize_warp); then, with `done` (Report), the CTA that finishes last
// hands the first non-finite index to the host and resets the report for the next call.
template <typename T, ScaleRule Rule>
__global__ void __launch_bounds__(kThreads, kQuantizeMinCtas<T, Rule>)
    quantize_kernel(const T* __restrict__ weight, std::int64_t total_blocks,
                    std::uint8_t* __restrict__ blocks, std::uint8_t* __restrict__ scales,
                    bool vector_loads, unsigned long long* first_non_finite, unsigned int* done,
                    volatile unsigned long long* host_out) {
  quantize_warp<T, Rule>(weight, total_blocks, blocks, scales, vector_loads, first_non_finite);
  if (done == nullptr) return;
  __syncthreads();  // this CTA's reports are in
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(done, 1u) == gridDim.x - 1) {  // every other CTA's reports are in too
      __threadfence();
      *host_out = atomicExch(first_non_finite, ~0ull);
      atomicExch(done, 0u);
    }
  }
}

template <typename T>
__global__ void dequantize_kernel(const std::uint8_t* __restrict__ blocks,
                                  const std::uint8_t* __restrict__ scales,
                                  std::int64_t total_blocks, T* __restrict__ out, bool gpu) {
  const std::int64_t b = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= total_blocks) return;
  const uint4 q = *reinterpret_cast<const uint4*>(blocks + b * kBlockBytes);
  std::uint32_t words[4] = {q.x, q.y, q.z, q.w};
  if (gpu) {  // the GPU layout's words -> the standard ones
    std::uint8_t bytes[kBlockBytes];
    detail::standard_block_from_gpu(words, bytes);
    std::memcpy(words, bytes, kBlockBytes);
  }
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

// This thread's report on the current device, allocated on first use (null where that fails:
// quantize then sets and reads a flag of its own with two more stream operations). The flag
// holds the first non-finite element's index (all bytes 0xFF: none) and `done` counts finished
// CTAs; the kernel's last CTA writes the flag to `host` (mapped pinned memory) and resets both,
// so a call is one launch and one synchronization. A thread's calls never overlap (each
// synchronizes before returning) and other threads have reports of their own.
struct Report {
  unsigned long long* flag = nullptr;      // device: [0] the flag, [1] done (as unsigned int)
  unsigned long long* host = nullptr;      // mapped pinned memory, as the host sees it
  unsigned long long* host_dev = nullptr;  // the same, as the device sees it
  unsigned int* done() const { return reinterpret_cast<unsigned int*>(flag + 1); }
};
const Report* thread_report() {
  struct Reports {
    std::vector<std::pair<int, Report>> by_device;
    std::vector<int> failed;
    ~Reports() {  // at thread exit; the runtime may already be gone
      for (auto& [device, r] : by_device) {
        cudaFree(r.flag);
        cudaFreeHost(r.host);
      }
    }
  };
  thread_local Reports reports;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  for (const auto& [d, r] : reports.by_device) {
    if (d == device) return &r;
  }
  for (int d : reports.failed) {
    if (d == device) return nullptr;
  }
  Report r;
  void* host = nullptr;
  void* host_dev = nullptr;
  void* flag = nullptr;
  const unsigned long long init[2] = {~0ull, 0ull};
  const bool ok = cudaHostAlloc(&host, sizeof(unsigned long long),
                                cudaHostAllocMapped | cudaHostAllocPortable) == cudaSuccess &&
                  cudaHostGetDevicePointer(&host_dev, host, 0) == cudaSuccess &&
                  cudaMalloc(&flag, sizeof init) == cudaSuccess &&
                  cudaMemcpy(flag, init, sizeof init, cudaMemcpyHostToDevice) == cudaSuccess;
  if (!ok) {
    cudaGetLastError();  // not sticky; clear it and take the other path
    if (flag != nullptr) cudaFree(flag);
    if (host != nullptr) cudaFreeHost(host);
    reports.failed.push_back(device);
    return nullptr;
  }
  r.flag = static_cast<unsigned long long*>(flag);
  r.host = static_cast<unsigned long long*>(host);
  r.host_dev = static_cast<unsigned long long*>(host_dev);
  reports.by_device.emplace_back(device, r);
  return &reports.by_device.back().second;
}

}  // namespace

std::int64_t quantize(const detail::QuantizeArgs& a) {
  require_aligned(a.blocks, "quantize");
  const std::int64_t total = a.rows * (a.k / kBlockSize);
  if (total == 0) return -1;
  cudaStream_t stream = as_stream(a.stream);
  const unsigned long long none = std::numeric_limits<unsigned long long>::max();
  auto launch_all = [&](unsigned long long* flag, unsigned int* done,
                        unsigned long long* host_out) {
    dispatch_floating(a.weight_dtype, [&](auto zero) {
      using T = decltype(zero);
      const auto launch = [&](auto rule) {
        quantize_kernel<T, decltype(rule)::value>
            <<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
                static_cast<const T*>(a.weight), total, a.blocks, a.scales, aligned16(a.weight),
                flag, done, host_out);
      };
      detail::with_rule(a.rule, launch);
    });
    check_launch("quantize_kernel");
  };
  // (MXFP4_CUDA_KERNEL=quantize_unmapped takes the fallback below, for its tests.)
  const bool mapped = forced_kernel() != "quantize_unmapped";
  if (const Report* report = mapped ? thread_report() : nullptr) {
    *report->host = none;
    launch_all(report->flag, report->done(), report->host_dev);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    const unsigned long long found = *static_cast<volatile unsigned long long*>(report->host);
    return found == none ? -1 : static_cast<std::int64_t>(found);
  }
  CallMemory memory(nullptr, sizeof(unsigned long long), stream, "quantize's report flag");
  auto* flag = static_cast<unsigned long long*>(memory.get());
  unsigned long long found = none;
  // All bytes 0xFF: `none`, the flag's "no non-finite block" value.
  check(cudaMemsetAsync(flag, 0xFF, sizeof *flag, stream), "cudaMemsetAsync");
  launch_all(flag, nullptr, nullptr);
  // (Into pageable memory: a staged copy, but this path runs only where pinned memory could not
  // be had.)
  check(cudaMemcpyAsync(&found, flag, sizeof found, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  memory.release();
  return found == none ? -1 : static_cast<std::int64_t>(found);
}

void dequantize(const detail::DequantizeArgs& a) {
  require_aligned(a.blocks, "dequantize");
  const std::int64_t total = a.rows * (a.k / kBlockSize);
  cudaStream_t stream = as_stream(a.stream);
  dispatch_floating(a.out_dtype, [&](auto zero) {
    using T = decltype(zero);
    dequantize_kernel<T><<<blocks_for(total, kThreads), kThreads, 0, stream>>>(
        a.blocks, a.scales, total, static_cast<T*>(a.out), a.gpu_layout);
  });
  check_launch("dequantize_kernel");
}

}  // namespace mxfp4::cuda
