// Gathering and scattering whole rows by an index, in the widest unit the row size and the
// pointers' alignment allow (16, 4 or 1 bytes).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "parallel/nccl_kernels.hpp"

namespace mxfp4::parallel::detail {
namespace {

// One block per row (grid-strided); `scatter` picks which side the index applies to.
template <typename Unit, bool scatter>
__global__ void copy_rows_kernel(Unit* __restrict__ dst, const Unit* __restrict__ src,
                                 const std::int32_t* __restrict__ index, std::int64_t rows,
                                 std::int64_t units) {
  for (std::int64_t i = blockIdx.x; i < rows; i += gridDim.x) {
    const std::int64_t j = index[i];
    Unit* d = dst + (scatter ? j : i) * units;
    const Unit* s = src + (scatter ? i : j) * units;
    for (std::int64_t u = threadIdx.x; u < units; u += blockDim.x)
      d[u] = s[u];
  }
}

template <typename Unit, bool scatter>
void launch(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
            std::size_t row_bytes, cudaStream_t stream) {
  const auto units = static_cast<std::int64_t>(row_bytes / sizeof(Unit));
  const int threads =
      static_cast<int>(std::min<std::int64_t>(256, std::max<std::int64_t>(32, units)));
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(rows, 65535));
  copy_rows_kernel<Unit, scatter><<<blocks, threads, 0, stream>>>(
      static_cast<Unit*>(dst), static_cast<const Unit*>(src), index, rows, units);
}

template <bool scatter>
const char* copy_rows(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
                      std::size_t row_bytes, void* stream_handle) {
  if (rows <= 0 || row_bytes == 0) return nullptr;
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const auto aligned = [&](std::size_t a) {
    return row_bytes % a == 0 && reinterpret_cast<std::uintptr_t>(dst) % a == 0 &&
           reinterpret_cast<std::uintptr_t>(src) % a == 0;
  };
  if (aligned(16)) {
    launch<uint4, scatter>(dst, src, index, rows, row_bytes, stream);
  } else if (aligned(4)) {
    launch<std::uint32_t, scatter>(dst, src, index, rows, row_bytes, stream);
  } else {
    launch<std::uint8_t, scatter>(dst, src, index, rows, row_bytes, stream);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* gather_rows(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
                        std::size_t row_bytes, void* stream) {
  return copy_rows<false>(dst, src, index, rows, row_bytes, stream);
}

const char* scatter_rows(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
                         std::size_t row_bytes, void* stream) {
  return copy_rows<true>(dst, src, index, rows, row_bytes, stream);
}

}  // namespace mxfp4::parallel::detail
