// The tensor-core kernels behind linear (dense) and gather_linear (grouped by expert), as the
// two entry points see them. CUDA translation units only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/kernel_args.hpp"
#include "cuda/mma.cuh"

namespace mxfp4::cuda {

// Which kernel runs a weight for about `tokens` tokens (per expert, for gather_linear), and with
// how many tokens per tile: the decode kernel (8, 16 or 32 tokens per tile; every dtype) or the
// tiled GEMM (64 or 128; bf16 only). MXFP4_CUDA_KERNEL=decode|gemm64|gemm128 forces a choice
// where the dtype allows it (for benchmarks and tuning).
struct KernelChoice {
  bool gemm;
  int tile_tokens;
};
KernelChoice choose_kernel(DType x_dtype, std::int64_t tokens, std::int64_t n);

// The decode kernel (bf16 or f16 x): `tiles` tiles of `tile_tokens` tokens mapped by `rows`.
void launch_decode(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                   int tile_tokens, const detail::WeightArgs& w, void* out, cudaStream_t stream);

// The tiled GEMM (bf16 x only): `tiles` tiles of `tile_tokens` (64 or 128) tokens mapped by
// `rows`.
void launch_gemm(const void* x, const TokenRows& rows, std::int64_t tiles, int tile_tokens,
                 const detail::WeightArgs& w, void* out, cudaStream_t stream);

}  // namespace mxfp4::cuda
