// The CPU backend: the kernel table of the instruction set in use (cpu_kernels.hpp), with the
// work of each call split over the thread pool (thread_pool.hpp). The split depends only on the
// shapes, never on the thread count, and the kernel contract makes every split give the same
// results, so the output is identical for any number of threads.
#pragma once

#include <cstdint>

#include "core/kernel_args.hpp"
#include "cpu/cpu_kernels.hpp"

namespace mxfp4::cpu {

// The backend of the instruction set in use, named "cpu-<isa>": one atomic load once chosen.
const detail::Backend& cpu_backend();

// How one matmul batch (`rows` activation rows times an [n, k] weight) is cut into tasks:
// row_chunks x col_chunks tiles of at most row_chunk rows and col_chunk columns. Columns go in
// multiples of 64 sized for about 2^18 multiply-adds per task; batches above 256 rows are cut
// into near-equal chunks of a multiple of 16 rows. Requires rows, n, k >= 1.
struct MatmulSplit {
  std::int64_t row_chunk;
  std::int64_t row_chunks;
  std::int64_t col_chunk;
  std::int64_t col_chunks;
};
MatmulSplit split_matmul(std::int64_t rows, std::int64_t n, std::int64_t k);

// Rows of a [rows, k] quantize or dequantize task: about 2^15 elements.
std::int64_t rows_per_task(std::int64_t k);

}  // namespace mxfp4::cpu
