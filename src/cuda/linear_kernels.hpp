// The tensor-core kernels behind linear (dense) and gather_linear (grouped by expert), as the
// two entry points see them. CUDA translation units only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "core/kernel_args.hpp"
#include "cuda/mma.cuh"

namespace mxfp4::cuda {

// Which kernel runs a weight for about `tokens` tokens (per expert, for gather_linear), and with
// how many tokens per tile: the decode kernel (8, 16 or 32 tokens per tile; every dtype), the
// sm_80 tiled GEMM (64 or 128; bf16 only) or, on Hopper, the wgmma GEMM (bf16 and f16 alike: 64,
// 128 or 256 tokens, 128 weight rows per tile, or 64 or 256 rows with 64 or 128 tokens).
// MXFP4_CUDA_KERNEL=decode|gemm64|gemm128|wgmma128|wgmma256|wgmma64r|wgmma256r forces a choice
// where the dtype and the device allow it (for benchmarks and tuning); decode_lo and decode_hi
// force the decode kernel and its lower or higher occupancy variant, decode_rows2 its CTAs of
// two 16-row tiles, decode_r2 its warps of two 16-row tiles (from 5 tokens; sm80_linear.cu).
struct KernelChoice {
  bool gemm;
  int tile_tokens;
  bool sm90 = false;    // the wgmma GEMM (sm90_gemm.cu)
  int tile_rows = 128;  // sm90: weight rows per tile
  // sm90, 64-row tiles: two computing warpgroups per tile, taking alternate k-tiles.
  bool k_halves = false;
  // sm90, dense, 128-, 192- or 256-token tiles of 128 rows: stream-K (each SM an equal run of the
  // tiles' k-tiles).
  bool stream_k = false;
};
// k: the weight's K (0: unknown, as for gather_linear, which has no stream-K).
KernelChoice choose_kernel(DType x_dtype, std::int64_t tokens, std::int64_t n, std::int64_t k = 0);
// MXFP4_CUDA_KERNEL's value (empty when unset), read once. Besides the choices above,
// wgmma_cpasync makes the wgmma GEMM load x with cp.async where it would use TMA (and
// gather_linear not stage x rows), wgmma_cpasync_staged the same with the staging kept,
// wgmma_nosplit keeps it from splitting K across a cluster of CTAs, wgmma_split makes it
// split K wherever the tile shape allows (in four where the partial sums fit, else in two), and
// wgmma_tail splits K for the last half of the tiles (in a second launch, as for a last
// partial wave), wgmma_stream / wgmma_stream128 run bf16 on stream-K (256- / 128-token tiles) at
// any token count,
// moe_mid128 / moe_mid256 give gather_linear's 128-token class tiles of 128 / 256 weight rows
// (192 otherwise),
// moe_route3 makes it route every batch with three kernels (not one CTA), moe_stage_all makes it
// stage the x rows of experts that are runs of x too, and quantize_unmapped makes quantize report
// non-finite weights through a device flag copied back, the path it takes where mapped pinned
// memory cannot be had.
const std::string& forced_kernel();

// The decode kernel (bf16 or f16 x): `tiles` tiles of `tile_tokens` tokens mapped by `rows`
// (small batches routed in the CTA: their sort written out to `order` where given).
void launch_decode(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                   int tile_tokens, const detail::WeightArgs& w, void* out, cudaStream_t stream,
                   const SortExport& order = {});

// The tiled GEMM (bf16 x only): `tiles` tiles of `tile_tokens` (64 or 128) tokens mapped by
// `rows`.
void launch_gemm(const void* x, const TokenRows& rows, std::int64_t tiles, int tile_tokens,
                 const detail::WeightArgs& w, void* out, cudaStream_t stream);

// Stream-K's scratch per CTA (at most one per SM): the f32 sums of a 256-token tile of 128 rows
// (256 threads x 128) and a flag.
inline constexpr std::size_t kStreamKBytesPerSm = 256 * 128 * 4 + 4;

// Whether the wgmma GEMM can run on the current device: built for sm_90a (MXFP4_HAVE_SM90A)
// and a compute capability 9.0 device.
bool sm90_gemm_available();

// The wgmma GEMM (sm_90a), bf16 or f16 x (f16: f16 wgmma, flagged stages split into two bf16
// parts of x): `tiles` tiles of `tile_tokens` (64, 128, 192 or 256) tokens mapped by `rows`,
// times weight tiles of `tile_rows` rows (128; also 64 or 256 with 128 tokens, 64 with 64, 192
// or 256), 64-row tiles with two computing warpgroups taking alternate k-tiles if k_halves
// (256-token ones bf16 only: f16 x runs 128-row tiles there).
// stream_k (dense, 128 rows, 128-, 192- or 256-token tiles): stream-K, its partial sums in
// `workspace` where it has room for them (131076 bytes per SM), else in stream-ordered memory of
// the call.
void launch_sm90_gemm(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                      int tile_tokens, int tile_rows, const detail::WeightArgs& w, void* out,
                      cudaStream_t stream, bool k_halves = false, bool stream_k = false,
                      void* workspace = nullptr, std::size_t workspace_bytes = 0);

}  // namespace mxfp4::cuda
