// Tiled MXFP4 GEMM for many tokens (prefill), bf16 activations, on the tensor cores with
// mma.sync m16n8k16 and a cp.async pipeline: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// A CTA of 4 warps computes 128 weight rows x 128 tokens; each warp owns 32 weight rows and all
// 128 tokens, so the E2M1 decode (per weight element, per warp) is spread over 128 tokens of MMA
// work. Stages of 64 k (two MXFP4 blocks) of x, of the packed weight and of its scales go through
// shared memory, four stages deep.
//
// The weight is the MMA's A operand, decoded in registers. As in the decode kernel
// (sm80_linear.cu), k is permuted inside each 32-element block so that lane (g, t) holds
// elements 8t..8t+7: its A fragment is one 4-byte word of codes per row, its B fragment one
// 16-byte shared-memory load of x. Each decoded E2M1 value is multiplied by its block's scale
// in bf16, which is exact (bf16 has f32's exponent range; the product is a 2-bit-mantissa value
// times a power of two), so the tensor cores see exactly the reference's weight values and the
// whole K reduction accumulates in f32 without per-block partial sums.
//
// The grid is one-dimensional; CTAs are rasterized in groups of 8 token tiles so that a weight
// tile read from DRAM is reused from L2 by those 8 tiles. For the mixture-of-experts path the
// token tiles come from `TokenRows` (one expert's sorted tokens each), rows are gathered from x
// and results scattered to their output rows. No allocation, no host synchronization.
#include <cstdint>
#include <type_traits>

#include "cuda/backend.hpp"
#include "cuda/gemm_tiles.cuh"
#include "cuda/linear_kernels.hpp"

namespace mxfp4::cuda {

namespace {

constexpr int kTileW = 128;             // weight rows per CTA
constexpr int kTileK = 2 * kBlockSize;  // k per stage
constexpr int kStages = 4;
constexpr int kThreads = 128;              // 4 warps
constexpr int kXChunks = kTileK * 2 / 16;  // 16-byte chunks per token row per stage (8)
constexpr int kOutStride = kTileW + 8;     // bf16 elements per token row of the output tile

template <int kTileT>
struct Stage {
  // x[token][chunk], chunk c of token row r stored at c ^ (4 (r & 1)): the two 32-element
  // blocks swap places on odd rows, so the 8 lanes of a shared-memory phase (two rows, 64
  // bytes each) hit distinct banks.
  uint4 x[kTileT][kXChunks];
  // Packed weight blocks, block b of row r stored at b ^ ((r >> 2) & 1) (conflict-free reads of
  // one 4-byte word per lane).
  uint4 w[kTileW][2];
  // The two blocks' E8M0 scales of each row: low byte first block.
  std::uint16_t s[kTileW];
};
template <int kTileT>
constexpr std::size_t kSmemBytes = kStages * sizeof(Stage<kTileT>);

__device__ __forceinline__ std::uint32_t lds32(const void* p) {
  return *static_cast<const std::uint32_t*>(p);
}

// One CTA tile: weight rows [128 tile_w, +128) x the tile's tokens. Ends with a barrier, so the
// CTA can go on to its next tile.
template <int kTileT, bool kGpu>
__device__ __forceinline__ void gemm_tile(uint4* smem_raw, const __nv_bfloat16* __restrict__ x,
                                          const TokenRows& rows, const TokenRows::Tile& tile,
                                          int tile_w, const std::uint8_t* __restrict__ blocks,
                                          const std::uint8_t* __restrict__ scales,
                                          const void* __restrict__ bias, DType bias_dtype,
                                          __nv_bfloat16* __restrict__ out, int n, int k,
                                          bool vector_store) {
  static_assert(kTileT * kOutStride * 2 <= kSmemBytes<kTileT>, "output tile must fit the stages");
  auto* stage = reinterpret_cast<Stage<kTileT>*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int nblk = k / kBlockSize;
  const int ktiles = (nblk + 1) / 2;
  const int w0 = tile_w * kTileW;
  blocks += static_cast<std::int64_t>(tile.expert) * n * (k / 2);
  scales += static_cast<std::int64_t>(tile.expert) * n * nblk;

  // Loads: thread tid copies 16-byte chunk (tid % 8) of token rows tid / 8 + 16 i, and both
  // blocks of weight row tid with that row's scales.
  const int xc = tid & 7;
  const __nv_bfloat16* xsrc[kTileT / 16];
#pragma unroll
  for (int i = 0; i < kTileT / 16; ++i) {
    const int local = min(tid / 8 + 16 * i, tile.count - 1);
    xsrc[i] = x + rows.x_row_at(tile.first + local) * k + 8 * xc;
  }
  const int wrow = w0 + tid;
  const bool wrow_ok = wrow < n;
  const std::uint8_t* wsrc = blocks + static_cast<std::int64_t>(min(wrow, n - 1)) * (k / 2);
  const std::uint8_t* ssrc = scales + static_cast<std::int64_t>(min(wrow, n - 1)) * nblk;

  auto issue = [&](int slot, int kt) {
    Stage<kTileT>& st = stage[slot];
    const int xblk = 2 * kt + (xc >> 2);  // the block this thread's x chunk falls in
#pragma unroll
    for (int i = 0; i < kTileT / 16; ++i) {
      const int r = tid / 8 + 16 * i;
      const bool ok = r < tile.count && xblk < nblk;
      cp_async16(&st.x[r][xc ^ ((r & 1) << 2)], xsrc[i] + (ok ? std::int64_t{kt} * kTileK : 0),
                 ok ? 16 : 0);
    }
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const bool ok = wrow_ok && 2 * kt + b < nblk;
      cp_async16(&st.w[tid][b ^ ((tid >> 2) & 1)],
                 wsrc + std::int64_t{2 * kt + b} * kBlockBytes * (ok ? 1 : 0), ok ? 16 : 0);
    }
  };
  // Missing blocks get scale 1 (127): zero codes times a NaN scale would be NaN.
  auto load_scales = [&](int kt) -> std::uint32_t {
    const int b = 2 * kt;
    const std::uint32_t s0 = wrow_ok ? __ldg(ssrc + b) : 127u;
    const std::uint32_t s1 = wrow_ok && b + 1 < nblk ? __ldg(ssrc + b + 1) : 127u;
    return s0 | (s1 << 8);
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) {
      issue(s, s);
      stage[s].s[tid] = static_cast<std::uint16_t>(load_scales(s));
    }
    cp_async_commit();
  }

  float acc[2][kTileT / 8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < kTileT / 8; ++j)
      acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
  }

  std::uint32_t pending = 0;
  int pending_slot = -1;
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    // Scales loaded last iteration go to their stage now (consumed after the next barrier).
    if (pending_slot >= 0) stage[pending_slot].s[tid] = static_cast<std::uint16_t>(pending);
    const int next = kt + kStages - 1;
    pending_slot = -1;
    if (next < ktiles) {
      issue(next % kStages, next);
      pending = load_scales(next);
      pending_slot = next % kStages;
    }
    cp_async_commit();

    const Stage<kTileT>& st = stage[kt % kStages];
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      std::uint32_t a[2][2][4];  // [m-tile][k16 step][fragment register]
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int ra = warp * 32 + 16 * i + g;  // and rb = ra + 8: same swizzle bit
        const int wb = b ^ ((g >> 2) & 1);
        std::uint32_t sa, sb;
        if constexpr (kGpu) {
          // Elements 8t .. 8t+7 (pairs 4t .. 4t+3) are slot t of the block's four words, read
          // whole (the quad's lanes share the address; the swizzle keeps the rows' 16 bytes on
          // distinct banks).
          const uint4 va = st.w[ra][wb];
          const uint4 vb = st.w[ra + 8][wb];
          sa = detail::gpu_scale_bf16((st.s[ra] >> (8 * b)) & 0xFFu);
          sb = detail::gpu_scale_bf16((st.s[ra + 8] >> (8 * b)) & 0xFFu);
          a[i][0][0] = detail::gpu_slot_bf16(va.x, t);
          a[i][0][2] = detail::gpu_slot_bf16(va.y, t);
          a[i][1][0] = detail::gpu_slot_bf16(va.z, t);
          a[i][1][2] = detail::gpu_slot_bf16(va.w, t);
          a[i][0][1] = detail::gpu_slot_bf16(vb.x, t);
          a[i][0][3] = detail::gpu_slot_bf16(vb.y, t);
          a[i][1][1] = detail::gpu_slot_bf16(vb.z, t);
          a[i][1][3] = detail::gpu_slot_bf16(vb.w, t);
        } else {
          const std::uint32_t wa_word =
              lds32(reinterpret_cast<const std::uint8_t*>(&st.w[ra][wb]) + 4 * t);
          const std::uint32_t wb_word =
              lds32(reinterpret_cast<const std::uint8_t*>(&st.w[ra + 8][wb]) + 4 * t);
          sa = bf16_scale_pair((st.s[ra] >> (8 * b)) & 0xFFu);
          sb = bf16_scale_pair((st.s[ra + 8] >> (8 * b)) & 0xFFu);
          decode4<__nv_bfloat16>(wa_word & 0xFFFFu, a[i][0][0], a[i][0][2]);
          decode4<__nv_bfloat16>(wb_word & 0xFFFFu, a[i][0][1], a[i][0][3]);
          decode4<__nv_bfloat16>(wa_word >> 16, a[i][1][0], a[i][1][2]);
          decode4<__nv_bfloat16>(wb_word >> 16, a[i][1][1], a[i][1][3]);
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          a[i][s][0] = bf16x2_mul(a[i][s][0], sa);
          a[i][s][2] = bf16x2_mul(a[i][s][2], sa);
          a[i][s][1] = bf16x2_mul(a[i][s][1], sb);
          a[i][s][3] = bf16x2_mul(a[i][s][3], sb);
        }
      }
#pragma unroll
      for (int j = 0; j < kTileT / 8; ++j) {
        // Token row 8j + g has the parity of g.
        const uint4 xv = st.x[8 * j + g][(4 * b + t) ^ ((g & 1) << 2)];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          mma_16816<__nv_bfloat16>(acc[i][j], a[i][0], xv.x, xv.y);
          mma_16816<__nv_bfloat16>(acc[i][j], a[i][1], xv.z, xv.w);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue: bias in f32, bf16 tile [token][weight row] in shared memory, then whole rows out.
  auto* tile_out = reinterpret_cast<__nv_bfloat16*>(smem_raw);
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int ra = warp * 32 + 16 * i + g;
    const float ba = row_bias(bias, bias_dtype, tile, w0 + ra, n);
    const float bb = row_bias(bias, bias_dtype, tile, w0 + ra + 8, n);
#pragma unroll
    for (int j = 0; j < kTileT / 8; ++j)
      stage_fragment(tile_out, kOutStride, ra, 8 * j + 2 * t, acc[i][j], ba, bb);
  }
  __syncthreads();
  store_tile<__nv_bfloat16, kTileW, kThreads>(tile_out, kOutStride, out, rows, tile, w0, n,
                                              vector_store, static_cast<int>(threadIdx.x));
  __syncthreads();  // the stages are free again
}

// Persistent CTAs walk the (token tile, weight tile) pairs in raster order (gemm_tiles.cuh).
template <int kTileT, bool kGpu>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_bf16_kernel(const __nv_bfloat16* __restrict__ x, TokenRows rows, int tiles_t, int tiles_w,
                     const std::uint8_t* __restrict__ blocks,
                     const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                     DType bias_dtype, __nv_bfloat16* __restrict__ out, int n, int k,
                     bool vector_store) {
  extern __shared__ uint4 smem_raw[];
  for_each_gemm_tile(rows, tiles_t, tiles_w, kTileT, [&](const TokenRows::Tile& tile, int tile_w) {
    gemm_tile<kTileT, kGpu>(smem_raw, x, rows, tile, tile_w, blocks, scales, bias, bias_dtype, out,
                            n, k, vector_store);
  });
}

template <int kTileT, bool kGpu>
void launch_gemm_tiles(const void* x, const TokenRows& rows, std::int64_t tiles,
                       const detail::WeightArgs& w, void* out, cudaStream_t stream) {
  const int n = static_cast<int>(w.n);
  const int k = static_cast<int>(w.k);
  const std::int64_t tiles_w = (n + kTileW - 1) / kTileW;
  const std::int64_t ctas = gemm_tile_pairs(tiles, tiles_w);
  if (ctas == 0) return;
  constexpr std::size_t smem = kSmemBytes<kTileT>;
  const int sms = current_device_facts().multiprocessors;
  // Two CTAs fit an SM (registers and shared memory): a persistent grid of that many.
  const std::int64_t grid = std::min<std::int64_t>(ctas, 2 * static_cast<std::int64_t>(sms));
  prepare_kernel(reinterpret_cast<const void*>(gemm_bf16_kernel<kTileT, kGpu>), kThreads,
                 static_cast<int>(smem), "gemm_bf16_kernel");
  const bool vector_store = vector_store_ok(n, out);
  gemm_bf16_kernel<kTileT, kGpu><<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
      static_cast<const __nv_bfloat16*>(x), rows, static_cast<int>(tiles),
      static_cast<int>(tiles_w), w.blocks, w.scales, w.bias, w.bias_dtype,
      static_cast<__nv_bfloat16*>(out), n, k, vector_store);
  check_launch("gemm_bf16_kernel");
}

}  // namespace

void launch_gemm(const void* x, const TokenRows& rows, std::int64_t tiles, int tile_tokens,
                 const detail::WeightArgs& w, void* out, cudaStream_t stream) {
  auto run = [&](auto gpu) {
    constexpr bool kGpu = decltype(gpu)::value;
    if (tile_tokens == 32) {
      launch_gemm_tiles<32, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 64) {
      launch_gemm_tiles<64, kGpu>(x, rows, tiles, w, out, stream);
    } else {
      launch_gemm_tiles<128, kGpu>(x, rows, tiles, w, out, stream);
    }
  };
  if (w.gpu_layout) {
    run(std::true_type{});
  } else {
    run(std::false_type{});
  }
}

}  // namespace mxfp4::cuda
