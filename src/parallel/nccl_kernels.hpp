// Row copies the expert-parallel layer needs around its all-to-all (src/parallel/nccl_kernels.cu).
// Included by CUDA code: C++17.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mxfp4::parallel::detail {

// dst row i = src row index[i], for i < rows; rows of row_bytes bytes. Enqueued on `stream`
// (a cudaStream_t). Returns the CUDA error string of a failed launch, nullptr on success.
const char* gather_rows(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
                        std::size_t row_bytes, void* stream);
// dst row index[i] = src row i.
const char* scatter_rows(void* dst, const void* src, const std::int32_t* index, std::int64_t rows,
                         std::size_t row_bytes, void* stream);

}  // namespace mxfp4::parallel::detail
