// Arguments of the kernels a backend provides. ops.cpp validates everything first: shapes agree,
// dtypes are allowed, pointers are on the backend's device, expert ids are in range. Kernels
// trust these structs and never allocate on behalf of the caller.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::detail {

struct QuantizeArgs {
  const void* weight;  // [rows, k] in weight_dtype (f32, f16, bf16)
  DType weight_dtype;
  std::int64_t rows;
  std::int64_t k;        // multiple of 32
  std::uint8_t* blocks;  // [rows, k / 2]
  std::uint8_t* scales;  // [rows, k / 32]
  ScaleRule rule;
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
};

struct DequantizeArgs {
  const std::uint8_t* blocks;  // [rows, k / 2]
  const std::uint8_t* scales;  // [rows, k / 32]
  std::int64_t rows;
  std::int64_t k;
  void* out;  // [rows, k] in out_dtype (f32, f16, bf16)
  DType out_dtype;
  void* stream;  // cudaStream_t for CUDA kernels; ignored on the CPU
  // blocks in BlockLayout::gpu (core/gpu_block_layout.hpp); CUDA backend only.
  bool gpu_layout = false;
};

// A weight as kernels see it: `experts` stacked [n, k] matrices (1 for a dense one).
struct WeightArgs {
  const std::uint8_t* blocks;  // [experts, n, k / 2]
  const std::uint8_t* scales;  // [experts, n, k / 32]
  const void* bias;            // [experts, n] in bias_dtype, or null
  DType bias_dtype;
  std::int64_t experts;
  std::int64_t n;
  std::int64_t k;
  // blocks in BlockLayout::gpu (core/gpu_block_layout.hpp; every scale at most
  // kGpuLayoutMaxScale); CUDA backend only: ops.cpp refuses it elsewhere.
  bool gpu_layout = false;
};

struct LinearArgs {
  const void* x;  // [m, k] in x_dtype
  DType x_dtype;
  std::int64_t m;
  WeightArgs w;                   // experts == 1
  void* out;                      // [m, n] in x_dtype
  void* stream;                   // cudaStream_t for CUDA kernels; ignored on the CPU
  bool int8_activations = false;  // RunOptions::precision; honoured by the CPU backend only
  void* workspace = nullptr;  // CUDA: caller's scratch (null: the backend allocates on the stream)
  std::size_t workspace_bytes = 0;
};

struct GatherLinearArgs {
  const void* x;  // [tokens, k] or, when x_per_slot, [tokens, topk, k]; in x_dtype
  DType x_dtype;
  bool x_per_slot;
  std::int64_t tokens;
  std::int64_t topk;
  const void* indices;  // [tokens, topk] in index_dtype (u32, i32, i64), each in [0, experts)
  DType index_dtype;
  WeightArgs w;
  void* out;                  // [tokens, topk, n] in x_dtype
  void* stream;               // cudaStream_t for CUDA kernels; ignored on the CPU
  void* workspace = nullptr;  // CUDA: caller's scratch (null: the backend allocates on the stream)
  std::size_t workspace_bytes = 0;
  bool int8_activations = false;  // RunOptions::precision; honoured by the CPU backend only
  // Expert order (gather_linear_expert_order): out is [tokens * topk, n], row p the result of
  // pair order_perm[p]; the pairs grouped by expert, expert e's at [order_offsets[e],
  // order_offsets[e + 1]). Both written by the backend, also when tokens * topk or n is 0.
  // order_offsets null: out [tokens, topk, n] (the scatter). (order_perm is null where it is
  // empty, so it cannot tell the modes apart.)
  std::int32_t* order_perm = nullptr;     // [tokens * topk]
  std::int32_t* order_offsets = nullptr;  // [experts + 1]
};

// CUDA gather_linear: batches of at most kCudaCtaRoutePairs (token, slot) pairs are routed
// inside each CTA and need no workspace. Larger ones sort the pairs by expert and plan tiles in
// five classes by an expert's token count (cuda_gather_class): at most 8 (decode kernel, one tile
// of 8), at most 16 (decode kernel, one tile of 16), at most mid_max = kCudaGemmMinTokens (one
// tile of 32: tiled GEMM for bf16, decode kernel for f16), at most mid128_max (Hopper with bf16:
// 128; one 128-token tile of the wgmma GEMM), more (a GEMM's tiles of large_tile tokens; without
// a GEMM, mid_max is unbounded and f16 stays in the third class with as many tiles of 32 as it
// needs). The plan runs on the device (moe.cu); CudaGatherPlan's bounds size its lists and grids
// (tests/test_gather_plan.cpp checks them on the host).
inline constexpr std::int64_t kCudaCtaRoutePairs = 64;
inline constexpr std::int64_t kCudaGemmMinTokens = 32;
inline constexpr int kCudaGatherClasses = 5;
// Tokens per tile of class cls (class 4: large_tile).
constexpr int cuda_gather_tile(int cls, int large_tile) {
  return cls == 0 ? 8 : cls == 1 ? 16 : cls == 2 ? 32 : cls == 3 ? 128 : large_tile;
}
// The class of an expert with c tokens (0: class 0, no tiles), and its tiles there.
constexpr int cuda_gather_class(int c, int mid_max, int mid128_max) {
  return c <= cuda_gather_tile(0, 0)   ? 0
         : c <= cuda_gather_tile(1, 0) ? 1
         : c <= mid_max                ? 2
         : c <= mid128_max             ? 3
                                       : 4;
}
constexpr int cuda_gather_tiles(int c, int cls, int large_tile) {
  return c == 0 ? 0
                : (c + cuda_gather_tile(cls, large_tile) - 1) / cuda_gather_tile(cls, large_tile);
}

struct CudaGatherPlan {
  std::int64_t pairs, experts;
  // Sort batches of at most kCudaCtaRoutePairs pairs in the workspace too (expert order where
  // the CTA routing does not run: f32 x, misaligned buffers, no output columns).
  bool sort_small = false;
  // Upper bounds of the tiles of each class (the grids launched).
  std::int64_t small_tiles() const { return std::min(experts, pairs); }
  std::int64_t sixteen_tiles() const { return std::min(experts, pairs / 9); }
  std::int64_t mid_tiles() const { return mid_gemm_tiles() + pairs / 32; }
  // The third class where mid_max = kCudaGemmMinTokens: one tile per expert of 17-32 tokens.
  std::int64_t mid_gemm_tiles() const { return std::min(experts, pairs / 17); }
  // Experts with more than kCudaGemmMinTokens tokens, at most.
  std::int64_t gemm_experts() const { return std::min(experts, pairs / (kCudaGemmMinTokens + 1)); }
  std::int64_t large_tiles() const { return gemm_experts() + pairs / 128; }
  // Hopper, bf16: experts of 33 to 128 tokens, one 128-token tile each (their own class).
  std::int64_t mid128_tiles() const { return gemm_experts(); }
  std::int64_t list_entries() const {
    return small_tiles() + sixteen_tiles() + mid_tiles() + mid128_tiles() + large_tiles();
  }
  // Workspace layout: counts[E], runs[E] (8 bytes each), offsets[E + 1], cursor[E + 1] (the
  // last: the next place of a bad id's pair in expert order), totals[5],
  // perm[pairs], then the tile list (16 bytes an entry); each part 256-byte aligned. Optionally
  // after that, 16-bit x rows of K elements staged in expert order, one per pair (the Hopper GEMM
  // loads them with TMA; without the room it gathers rows with cp.async).
  static std::size_t up(std::size_t v) { return (v + 255) & ~std::size_t{255}; }
  std::size_t counts_at() const { return 0; }
  std::size_t runs_at() const { return counts_at() + up(static_cast<std::size_t>(experts) * 4); }
  std::size_t offsets_at() const { return runs_at() + up(static_cast<std::size_t>(experts) * 8); }
  std::size_t cursor_at() const {
    return offsets_at() + up(static_cast<std::size_t>(experts + 1) * 4);
  }
  std::size_t totals_at() const {
    return cursor_at() + up(static_cast<std::size_t>(experts + 1) * 4);
  }
  std::size_t perm_at() const { return totals_at() + up(20); }
  std::size_t list_at() const { return perm_at() + up(static_cast<std::size_t>(pairs) * 4); }
  std::size_t bytes() const {
    if (pairs <= kCudaCtaRoutePairs && !sort_small) return 0;
    return list_at() + static_cast<std::size_t>(list_entries()) * 16;
  }
  std::size_t staged_at() const { return up(bytes()); }
  std::size_t staged_bytes(std::int64_t k) const {
    if (pairs <= kCudaCtaRoutePairs && !sort_small) return 0;
    return staged_at() + static_cast<std::size_t>(pairs) * static_cast<std::size_t>(k) * 2;
  }
};

// k = 0: the plan only; k > 0: with room to stage x rows (see CudaGatherPlan).
inline std::size_t cuda_gather_workspace_bytes(std::int64_t tokens, std::int64_t topk,
                                               std::int64_t experts, std::int64_t k = 0) {
  const CudaGatherPlan plan{tokens * topk, experts};
  return k > 0 ? plan.staged_bytes(k) : plan.bytes();
}

// The kernels of one backend, chosen once; a weight layout and its kernels never disagree.
// A null entry means the backend cannot run that operation (the call throws Unsupported).
struct Backend {
  const char* name;
  // Returns the flat index of the first NaN/Inf element of the weight (whose block was coded
  // with scale 0xFF), or -1 when every element is finite.
  std::int64_t (*quantize)(const QuantizeArgs&);
  void (*dequantize)(const DequantizeArgs&);
  void (*linear)(const LinearArgs&);
  void (*gather_linear)(const GatherLinearArgs&);
};

}  // namespace mxfp4::detail
