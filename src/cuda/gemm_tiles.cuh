// What the tiled GEMMs (sm80_gemm.cu, sm90_gemm.cu) share around their main loops: the walk of
// persistent CTAs over (token tile, weight tile) pairs, and the epilogue that stages each
// accumulator fragment with its bias in a shared-memory tile [token][weight row] and writes
// whole output rows from it.
#pragma once

#include <cstdint>
#include <string>

#include "cuda/mma.cuh"

namespace mxfp4::cuda {

// Token tiles per raster group: a group sweeps the weight tiles together, so a weight tile read
// from DRAM is reused from L2 by the group's other token tiles.
inline constexpr int kRasterGroup = 8;

// The (token tile, weight tile) pair number `pid` in raster order: the token tile, and the weight
// tile in tile_w.
__device__ __forceinline__ int gemm_tile_at(int tiles_t, int tiles_w, int pid, int& tile_w) {
  const int per_group = kRasterGroup * tiles_w;
  const int first_t = (pid / per_group) * kRasterGroup;
  const int group_size = min(tiles_t - first_t, kRasterGroup);
  tile_w = (pid % per_group) / group_size;
  return first_t + (pid % per_group) % group_size;
}

// Calls f(tile, tile_w) for this CTA's (token tile, weight tile) pairs, `first` (blockIdx.x),
// then every `step`-th (gridDim.x), in raster order, of pairs [pid_begin, pid_end) (pid_end 0:
// to the last). Grouped grids (mixture of experts): tiles_t is an upper bound; the planned count
// is read on the device and empty tiles are skipped.
template <typename F>
__device__ __forceinline__ void for_each_gemm_tile(const TokenRows& rows, int tiles_t, int tiles_w,
                                                   int tile_tokens, F&& f,
                                                   int first = static_cast<int>(blockIdx.x),
                                                   int step = static_cast<int>(gridDim.x),
                                                   int pid_begin = 0, int pid_end = 0) {
  if (rows.tile_list != nullptr) tiles_t = min(tiles_t, *rows.tile_total);
  const int end = pid_end > 0 ? min(pid_end, tiles_t * tiles_w) : tiles_t * tiles_w;
  for (int pid = pid_begin + first; pid < end; pid += step) {
    int tile_w = 0;
    const TokenRows::Tile tile =
        rows.tile(gemm_tile_at(tiles_t, tiles_w, pid, tile_w), tile_tokens);
    if (tile.count == 0) continue;
    f(tile, tile_w);
  }
}

// Bias of weight row `row` (of the tile's expert), 0 without a bias or past the last row.
__device__ __forceinline__ float row_bias(const void* bias, DType bias_dtype,
                                          const TokenRows::Tile& tile, int row, int n) {
  if (bias == nullptr || row >= n) return 0.0f;
  return load_bias(bias, bias_dtype, static_cast<std::int64_t>(tile.expert) * n + row);
}

// One m16n8 accumulator fragment (lane (g, t): rows r and r + 8, tokens tok and tok + 1, as
// v[0..3]) plus the rows' biases into the output tile, `stride` elements per token.
template <typename T>
__device__ __forceinline__ void stage_fragment(T* tile_out, int stride, int r, int tok,
                                               const float* v, float ba, float bb) {
  tile_out[tok * stride + r] = from_float<T>(v[0] + ba);
  tile_out[(tok + 1) * stride + r] = from_float<T>(v[1] + ba);
  tile_out[tok * stride + r + 8] = from_float<T>(v[2] + bb);
  tile_out[(tok + 1) * stride + r + 8] = from_float<T>(v[3] + bb);
}

// The output rows (pairs, or positions in expert order) of the staged rows that store_tile's vector
// path gives thread tid (rows tid / (kTileW / 8) + kStep i, i < kPer, of a tile of at most kRows),
// for grouped layouts, whose output rows come through a permutation (rows.out_perm): loaded all at
// once before the caller stages its fragments, their latency passes meanwhile, where one load per
// row in the stores paid it once per row (an H100, session 21: the mixture of experts' skewed T =
// 4096 1.07-1.08x).
template <int kTileW, int kThreads, int kRows>
struct TilePairs {
  static constexpr int kStep = kThreads / (kTileW / 8);
  static constexpr int kPer = (kRows + kStep - 1) / kStep;
  std::int32_t pair[kPer];
};

// TilePairs for the tile's rows from `first` on (at most kRows of them; pairs below 2^31).
template <int kTileW, int kThreads, int kRows>
__device__ __forceinline__ void load_pairs(const TokenRows& rows, const TokenRows::Tile& tile,
                                           int first, int tid,
                                           TilePairs<kTileW, kThreads, kRows>& pairs) {
  using P = TilePairs<kTileW, kThreads, kRows>;
#pragma unroll
  for (int i = 0; i < P::kPer; ++i) {
    const int r = first + tid / (kTileW / 8) + P::kStep * i;
    const std::int64_t position = tile.first + (r < tile.count ? r : 0);
    pairs.pair[i] = static_cast<std::int32_t>(
        rows.out_perm != nullptr ? __ldg(rows.out_perm + position) : position);
  }
}

// The staged tile's token rows out to their output rows (columns w0 .. w0 + kTileW, clipped to
// n), by the kThreads threads numbered tid, from the tile's token `from` on. vector_store
// (n % 8 == 0, 16-byte aligned output): 8-value chunks, each entirely in or out of range, the
// output rows from `pairs` where given (load_pairs), else each found as it is stored; otherwise
// a warp per row.
template <typename T, int kTileW, int kThreads, int kRows = 1>
__device__ __forceinline__ void store_tile(
    const T* tile_out, int stride, T* __restrict__ out, const TokenRows& rows,
    const TokenRows::Tile& tile, int w0, int n, bool vector_store, int tid, int from = 0,
    const TilePairs<kTileW, kThreads, kRows>* pairs = nullptr) {
  const int cols = min(kTileW, n - w0);
  if (vector_store) {
    constexpr int kChunks = kTileW / 8;
    using P = TilePairs<kTileW, kThreads, kRows>;
    const int c = tid % kChunks;
    if (8 * c >= cols) return;
    if (pairs == nullptr) {
      for (int r = from + tid / kChunks; r < tile.count; r += P::kStep) {
        const uint4 v = *reinterpret_cast<const uint4*>(&tile_out[r * stride + 8 * c]);
        *reinterpret_cast<uint4*>(out + rows.out_row(tile.first + r) * n + w0 + 8 * c) = v;
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < P::kPer; ++i) {
      const int r = tid / kChunks + P::kStep * i;
      if (r < from || r >= tile.count) continue;
      const uint4 v = *reinterpret_cast<const uint4*>(&tile_out[r * stride + 8 * c]);
      *reinterpret_cast<uint4*>(out + std::int64_t{pairs->pair[i]} * n + w0 + 8 * c) = v;
    }
  } else {
    for (int r = from + (tid >> 5); r < tile.count; r += kThreads / 32) {
      T* dst = out + rows.out_row(tile.first + r) * n + w0;
      for (int c = tid & 31; c < cols; c += 32)
        dst[c] = tile_out[r * stride + c];
    }
  }
}

// Host: the CTA count of `tiles` token tiles times `tiles_w` weight tiles; one grid must hold it.
inline std::int64_t gemm_tile_pairs(std::int64_t tiles, std::int64_t tiles_w) {
  const std::int64_t ctas = tiles * tiles_w;
  if (ctas >= (std::int64_t{1} << 31)) {
    throw Unsupported("linear: " + std::to_string(ctas) + " tiles exceed one CUDA grid");
  }
  return ctas;
}

// Whether the epilogue may store 16-byte chunks.
inline bool vector_store_ok(std::int64_t n, const void* out) {
  return n % 8 == 0 && (reinterpret_cast<std::uintptr_t>(out) & 15) == 0;
}

}  // namespace mxfp4::cuda
