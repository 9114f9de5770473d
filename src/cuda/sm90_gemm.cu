// Tiled MXFP4 GEMM for many tokens on Hopper (sm_90a), bf16 or f16 activations, with warpgroup
// MMA: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// A CTA of two warpgroups computes 128 weight rows x kTokens tokens (128 or 256); warpgroup q
// owns weight rows [64 q, 64 q + 64) and every token, as one wgmma m64nTk16 accumulator. The
// weight is the MMA's A operand and comes from registers: each thread decodes its rows' E2M1
// codes and multiplies them by the block's scale in bf16 (exact, as in sm80_gemm.cu), so the
// tensor cores see exactly the reference's weight values. x is the B operand, read by the
// tensor cores straight from shared memory in the 128-byte-swizzled K-major layout.
//
// Stages of 64 k (two MXFP4 blocks) of x, of the packed weight and of its scales go through
// shared memory with cp.async (which can gather the rows of a mixture-of-experts tile), kStages
// deep with a prefetch distance of kStages - 2: wgmma runs asynchronously, so one group may
// still read the stage before the one being computed. Decoding the next block overlaps the
// tensor cores' work on the current one (two register sets of A fragments, alternating).
//
// A lane (g, t) of a warp needs, for its rows g and g + 8 and each k16 step, the codes of
// elements 2t, 2t+1, 2t+8, 2t+9 of the step: bytes t, t+4, t+8 and t+12 of the row's 16-byte
// block, picked out of one 16-byte shared-memory load with three byte permutes.
//
// f16 x: a scaled E2M1 value need not fit f16 (2^-24 .. 65504), but it always fits bf16, so the
// weight stays bf16 and x is split exactly into two bf16 parts, x = hi + lo (hi = x rounded to
// bf16; the rest has at most 3 significant bits): each stage's f16 tile is rewritten in shared
// memory as hi, with lo beside it, and every wgmma runs twice, on hi and on lo. The products are
// exact and summed in f32, as for bf16; the tensor cores do twice the work (128-token tiles,
// whose stages have room for both parts).
//
// Persistent CTAs walk (token tile, weight tile) pairs in raster groups of 8 token tiles
// (gemm_tiles.cuh), with TokenRows for the dense and the grouped (MoE) layouts.
#include <cstdint>
#include <type_traits>

#include "cuda/backend.hpp"
#include "cuda/gemm_tiles.cuh"
#include "cuda/linear_kernels.hpp"
#include "cuda/wgmma.cuh"

namespace mxfp4::cuda {

namespace {

constexpr int kTileK = 2 * kBlockSize;

// kWG warpgroups (1 or 2) of kSub m64 sub-tiles each: a CTA covers kTileW = 64 kWG kSub weight
// rows.
// kSplit: f16 x, split into bf16 hi and lo parts (a second x tile per stage).
template <int kTokens, int kSub, int kWG, bool kSplit = false>
struct Sm90Config {
  static constexpr int kThreads = 128 * kWG;
  static constexpr int kTileW = 64 * kWG * kSub;
  static constexpr int kXBytes = kTokens * kTileK * 2;  // [token][64 k] bf16, swizzled
  static constexpr int kLoOffset = kXBytes;             // f16: the lo parts, same layout
  static constexpr int kWOffset = kXBytes * (kSplit ? 2 : 1);
  static constexpr int kWBytes = kTileW * 2 * kBlockBytes;
  static constexpr int kSOffset = kWOffset + kWBytes;
  static constexpr int kSBytes = 2 * kTileW * 4;  // [block][row] scales as bf16 pairs
  static constexpr int kStageBytes = (kSOffset + kSBytes + 1023) / 1024 * 1024;
  // One warpgroup: 5 stages, so two CTAs fit an SM. Split: as many stages of 37 or 42 KiB
  // (128 tokens, 128 or 256 rows) as fit, up to 6.
  static constexpr int kStages = kSplit ? (kStageBytes * 6 + 1024 <= 227 * 1024 ? 6 : 5)
                                        : (kWG == 1 || kWOffset + kWBytes > 32768 ? 5 : 6);
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + alignment slack
  static constexpr int kOutStride = kTileW + 8;  // bf16 per token row of the output tile
  static_assert(kTokens * kOutStride * 2 <= kStages * kStageBytes, "output tile must fit");
  static_assert(kStages * kStageBytes + 1024 <= 227 * 1024, "stages must fit shared memory");
  static_assert(!kSplit || kTokens == 128, "split x: 128-token tiles only");
  static_assert(kLoOffset % 1024 == 0 && kWOffset % 1024 == 0, "swizzle atoms: 1 KiB aligned");
};

#if defined(MXFP4_SM90A_DEVICE)

// wgmma with N tokens (32, 64, 128, 192 or 256), the accumulators of the first N / 2 registers.
// A partly filled tile (the last of a dense batch, a mixture-of-experts expert's tokens) runs
// at the width its tokens need.
template <int N>
__device__ __forceinline__ void wgmma_n(float* d, const std::uint32_t (&a)[4], std::uint64_t desc) {
  if constexpr (N == 256) {
    sm90::wgmma_m64n256k16(d, a, desc);
  } else if constexpr (N == 192) {
    sm90::wgmma_m64n192k16(d, a, desc);
  } else if constexpr (N == 128) {
    sm90::wgmma_m64n128k16(d, a, desc);
  } else if constexpr (N == 64) {
    sm90::wgmma_m64n64k16(d, a, desc);
  } else {
    sm90::wgmma_m64n32k16(d, a, desc);
  }
}

// Bytes t, t+4, t+8, t+12 of a 16-byte block (sel = t | (t + 4) << 4), lowest first.
__device__ __forceinline__ std::uint32_t lane_bytes(const uint4& v, std::uint32_t sel) {
  const std::uint32_t lo = __byte_perm(v.x, v.y, sel);
  const std::uint32_t hi = __byte_perm(v.z, v.w, sel);
  return __byte_perm(lo, hi, 0x5410);
}

// Two f16 (a word) -> bf16 pairs hi and lo with hi + lo equal to them exactly: hi rounded to
// nearest, lo the (exact) rest; lo is 0 for an infinity (whose rest would be NaN).
__device__ __forceinline__ void split_f16x2(std::uint32_t v, std::uint32_t& hi, std::uint32_t& lo) {
  __half2 h;
  memcpy(&h, &v, 4);
  const float2 f = __half22float2(h);
  const __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y);
  const float2 bf = __bfloat1622float2(b);
  const float r0 = isinf(f.x) ? 0.0f : f.x - bf.x;
  const float r1 = isinf(f.y) ? 0.0f : f.y - bf.y;
  const __nv_bfloat162 l = __floats2bfloat162_rn(r0, r1);
  memcpy(&hi, &b, 4);
  memcpy(&lo, &l, 4);
}

template <typename T, int kTokens, int kSub, int kWG>
__device__ __forceinline__ void sm90_tile(std::uint8_t* smem, const T* __restrict__ x,
                                          const TokenRows& rows, const TokenRows::Tile& tile,
                                          int tile_w, const std::uint8_t* __restrict__ blocks,
                                          const std::uint8_t* __restrict__ scales,
                                          const void* __restrict__ bias, DType bias_dtype,
                                          T* __restrict__ out, int n, int k, bool vector_store) {
  constexpr bool kSplit = std::is_same_v<T, __half>;
  using C = Sm90Config<kTokens, kSub, kWG, kSplit>;
  constexpr int kTileW = C::kTileW;
  constexpr int kThreads = C::kThreads;
  constexpr int kXRows = kThreads / 8;  // token rows per pass of the x loads
  constexpr int kAcc = kTokens / 2;     // f32 accumulators per thread and sub-tile
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid >> 7;
  const int warp = (tid >> 5) & 3;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int nblk = k / kBlockSize;
  const int ktiles = (nblk + 1) / 2;
  const int w0 = tile_w * kTileW;
  const int width = tile.count <= 32    ? 32
                    : tile.count <= 64  ? 64
                    : tile.count <= 128 ? 128
                    : tile.count <= 192 ? 192
                                        : 256;
  blocks += static_cast<std::int64_t>(tile.expert) * n * (k / 2);
  scales += static_cast<std::int64_t>(tile.expert) * n * nblk;

  // Loads: thread tid copies 16-byte chunk (tid % 8) of token rows tid / 8 + kXRows i; and
  // block tid % 2 of weight rows lrow[j] = (tid + kThreads j) / 2 (j < kSub) with its scale.
  const int xc = tid & 7;
  const T* xsrc[kTokens / kXRows];
#pragma unroll
  for (int i = 0; i < kTokens / kXRows; ++i) {
    const int local = min(tid / 8 + kXRows * i, tile.count - 1);
    xsrc[i] = x + rows.x_row(rows.pair(tile.first + local)) * k + 8 * xc;
  }
  const int lblk = tid & 1;
  int lrow[kSub];
  const std::uint8_t* wsrc[kSub];
  const std::uint8_t* ssrc[kSub];
  bool wrow_ok[kSub];
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
    lrow[j] = (tid + kThreads * j) >> 1;
    const int wrow = w0 + lrow[j];
    wrow_ok[j] = wrow < n;
    wsrc[j] = blocks + static_cast<std::int64_t>(min(wrow, n - 1)) * (k / 2);
    ssrc[j] = scales + static_cast<std::int64_t>(min(wrow, n - 1)) * nblk;
  }
  const std::uint32_t smem_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));

  auto issue = [&](int slot, int kt) {
    std::uint8_t* st = smem + slot * C::kStageBytes;
    const int xblk = 2 * kt + (xc >> 2);
    // Rows past the tile's tokens are not loaded: they meet only output columns never stored.
#pragma unroll
    for (int i = 0; i < kTokens / kXRows; ++i) {
      const int r = tid / 8 + kXRows * i;
      if (r < tile.count) {
        const bool ok = xblk < nblk;
        cp_async16(st + r * 128 + ((xc ^ (r & 7)) << 4),
                   xsrc[i] + (ok ? std::int64_t{kt} * kTileK : 0), ok ? 16 : 0);
      }
    }
    const int blk = 2 * kt + lblk;
#pragma unroll
    for (int j = 0; j < kSub; ++j) {
      const bool ok = wrow_ok[j] && blk < nblk;
      cp_async16(st + C::kWOffset + lrow[j] * 32 + lblk * 16,
                 wsrc[j] + std::int64_t{blk} * kBlockBytes * (ok ? 1 : 0), ok ? 16 : 0);
    }
  };
  // Missing blocks get scale 1 (127): zero codes times a NaN scale would be NaN. Each scale
  // goes to shared memory as the bf16 pair the decode multiplies by (made once, not per lane).
  using ScaleBytes = std::uint8_t[kSub];
  auto load_scales = [&](int kt, ScaleBytes& v) {
    const int blk = 2 * kt + lblk;
#pragma unroll
    for (int j = 0; j < kSub; ++j)
      v[j] = wrow_ok[j] && blk < nblk ? __ldg(ssrc[j] + blk) : std::uint8_t{127};
  };
  auto store_scales = [&](int slot, const ScaleBytes& v) {
    auto* sc = reinterpret_cast<std::uint32_t*>(smem + slot * C::kStageBytes + C::kSOffset);
#pragma unroll
    for (int j = 0; j < kSub; ++j)
      sc[lblk * kTileW + lrow[j]] = bf16_scale_pair(v[j]);
  };

  // f16: a landed stage's x tile becomes bf16 hi (in place) and lo (beside it), 16 bytes at a
  // time (the split is per element, so the swizzle is kept). The writes reach the tensor cores
  // after fence_proxy_async and the barrier at the top of the next k step.
  auto split_stage = [&](int slot) {
    std::uint8_t* st = smem + slot * C::kStageBytes;
#pragma unroll
    for (int c = tid; c < kTokens * 8; c += kThreads) {
      uint4 v = *reinterpret_cast<const uint4*>(st + 16 * c);
      uint4 lo;
      split_f16x2(v.x, v.x, lo.x);
      split_f16x2(v.y, v.y, lo.y);
      split_f16x2(v.z, v.z, lo.z);
      split_f16x2(v.w, v.w, lo.w);
      *reinterpret_cast<uint4*>(st + 16 * c) = v;
      *reinterpret_cast<uint4*>(st + C::kLoOffset + 16 * c) = lo;
    }
  };

  constexpr int S = C::kStages;
  ScaleBytes pending;
#pragma unroll
  for (int s = 0; s < S - 2; ++s) {
    if (s < ktiles) {
      issue(s, s);
      load_scales(s, pending);
      store_scales(s, pending);
    }
    cp_async_commit();
  }
  if constexpr (kSplit) {
    cp_async_wait<S - 3>();  // stage 0 has landed
    __syncthreads();
    split_stage(0);
  }

  float acc[kSub][kAcc];
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
#pragma unroll
    for (int i = 0; i < kAcc; ++i)
      acc[j][i] = 0.0f;
  }

  // This lane's A rows: ra and ra + 8 of each sub-tile (64 kWG j apart).
  const int ra = wg * 64 + warp * 16 + g;
  const std::uint32_t sel = static_cast<std::uint32_t>(t | ((t + 4) << 4));
  std::uint32_t f[2][kSub][2][4] = {};  // A fragments: [block][sub-tile][k16 step][register]
  int pending_slot = -1;
  // The k loop, for one wgmma width N (chosen once per tile: a branch around each wgmma would
  // make ptxas insert warpgroup synchronization).
  auto k_loop = [&](auto n_tag) {
    constexpr int N = decltype(n_tag)::value;
    for (int kt = 0; kt < ktiles; ++kt) {
      // Stage kt has landed; f16: stage kt + 1 too, to be split during this step.
      cp_async_wait<kSplit ? S - 4 : S - 3>();
      sm90::fence_proxy_async();
      __syncthreads();
      if (pending_slot >= 0) store_scales(pending_slot, pending);
      const int next = kt + S - 2;
      pending_slot = -1;
      if (next < ktiles) {
        issue(next % S, next);
        load_scales(next, pending);
        pending_slot = next % S;
      }
      cp_async_commit();
      if constexpr (kSplit) {
        if (kt + 1 < ktiles) split_stage((kt + 1) % S);
      }

      const int slot = kt % S;
      const std::uint8_t* st = smem + slot * C::kStageBytes;
      const std::uint32_t x_addr = smem_base + static_cast<std::uint32_t>(slot * C::kStageBytes);
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        // The group before this one, which read `f` last, is done (wait below): decode block b.
        const auto* sc = reinterpret_cast<const std::uint32_t*>(st + C::kSOffset) + b * kTileW;
#pragma unroll
        for (int j = 0; j < kSub; ++j) {
          const int r = ra + 64 * kWG * j;
          const uint4 va = *reinterpret_cast<const uint4*>(st + C::kWOffset + r * 32 + b * 16);
          const uint4 vb =
              *reinterpret_cast<const uint4*>(st + C::kWOffset + (r + 8) * 32 + b * 16);
          const std::uint32_t sa = sc[r];
          const std::uint32_t sb = sc[r + 8];
          const std::uint32_t wa = lane_bytes(va, sel);
          const std::uint32_t wb = lane_bytes(vb, sel);
          decode4<__nv_bfloat16>(wa & 0xFFFFu, f[b][j][0][0], f[b][j][0][2]);
          decode4<__nv_bfloat16>(wb & 0xFFFFu, f[b][j][0][1], f[b][j][0][3]);
          decode4<__nv_bfloat16>(wa >> 16, f[b][j][1][0], f[b][j][1][2]);
          decode4<__nv_bfloat16>(wb >> 16, f[b][j][1][1], f[b][j][1][3]);
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            f[b][j][s][0] = bf16x2_mul(f[b][j][s][0], sa);
            f[b][j][s][2] = bf16x2_mul(f[b][j][s][2], sa);
            f[b][j][s][1] = bf16x2_mul(f[b][j][s][1], sb);
            f[b][j][s][3] = bf16x2_mul(f[b][j][s][3], sb);
          }
        }
        sm90::wgmma_fence();
#pragma unroll
        for (int j = 0; j < kSub; ++j)
          sm90::fence_accumulators<N / 2>(acc[j]);
          // Block b's two k16 steps start 64 b and 64 b + 32 bytes into each 128-byte token row.
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int j = 0; j < kSub; ++j) {
            wgmma_n<N>(acc[j], f[b][j][s], sm90::sw128_desc(x_addr + 64 * b + 32 * s));
            if constexpr (kSplit) {
              wgmma_n<N>(acc[j], f[b][j][s],
                         sm90::sw128_desc(x_addr + C::kLoOffset + 64 * b + 32 * s));
            }
          }
        }
        sm90::wgmma_commit();
#pragma unroll
        for (int j = 0; j < kSub; ++j)
          sm90::fence_accumulators<N / 2>(acc[j]);
        // The other block's group is done; its A registers (kept live until here by the fence)
        // may be written again. ptxas does not track wgmma's asynchronous register reads.
        sm90::wgmma_wait<1>();
        sm90::fence_registers(f[b ^ 1]);
      }
    }
  };
  if (kTokens >= 256 && width > 192) {
    k_loop(std::integral_constant<int, 256>{});
  } else if (kTokens >= 256 && width > 128) {
    k_loop(std::integral_constant<int, 192>{});
  } else if (width > 64) {
    k_loop(std::integral_constant<int, 128>{});
  } else if (width > 32) {
    k_loop(std::integral_constant<int, 64>{});
  } else {
    k_loop(std::integral_constant<int, 32>{});
  }
  sm90::wgmma_wait<0>();
#pragma unroll
  for (int j = 0; j < kSub; ++j)
    sm90::fence_accumulators<kAcc>(acc[j]);
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue: bias in f32, the output tile [token][weight row] in shared memory, then whole
  // rows out.
  auto* tile_out = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
    const int r = ra + 64 * kWG * j;
    const float ba = row_bias(bias, bias_dtype, tile, w0 + r, n);
    const float bb = row_bias(bias, bias_dtype, tile, w0 + r + 8, n);
#pragma unroll
    for (int q = 0; q < kTokens / 8; ++q) {
      if (8 * q >= width) break;
      stage_fragment(tile_out, C::kOutStride, r, 8 * q + 2 * t, &acc[j][4 * q], ba, bb);
    }
  }
  __syncthreads();
  store_tile<T, kTileW, kThreads>(tile_out, C::kOutStride, out, rows, tile, w0, n, vector_store);
  __syncthreads();  // the stages are free again
}

#endif  // MXFP4_SM90A_DEVICE

template <typename T, int kTokens, int kSub, int kWG>
__global__ void __launch_bounds__(128 * kWG, kWG == 1 ? 2 : 1)
    sm90_gemm_kernel(const T* __restrict__ x, TokenRows rows, int tiles_t, int tiles_w,
                     const std::uint8_t* __restrict__ blocks,
                     const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                     DType bias_dtype, T* __restrict__ out, int n, int k, bool vector_store) {
#if defined(MXFP4_SM90A_DEVICE)
  extern __shared__ uint4 smem_raw[];
  // The swizzle atoms need 1024-byte alignment; the launch asks for 1 KiB of slack.
  const auto raw = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw));
  std::uint8_t* smem =
      reinterpret_cast<std::uint8_t*>(smem_raw) + ((1024u - (raw & 1023u)) & 1023u);
  for_each_gemm_tile(rows, tiles_t, tiles_w, kTokens, [&](const TokenRows::Tile& tile, int tile_w) {
    sm90_tile<T, kTokens, kSub, kWG>(smem, x, rows, tile, tile_w, blocks, scales, bias, bias_dtype,
                                     out, n, k, vector_store);
  });
#else
  (void)x, (void)rows, (void)tiles_t, (void)tiles_w, (void)blocks, (void)scales, (void)bias;
  (void)bias_dtype, (void)out, (void)n, (void)k, (void)vector_store;
#endif
}

template <typename T, int kTokens, int kSub, int kWG>
void launch_sm90_tiles(const void* x, const TokenRows& rows, std::int64_t tiles,
                       const detail::WeightArgs& w, void* out, cudaStream_t stream) {
  using C = Sm90Config<kTokens, kSub, kWG, std::is_same_v<T, __half>>;
  constexpr int kTileW = C::kTileW;
  const int n = static_cast<int>(w.n);
  const int k = static_cast<int>(w.k);
  const std::int64_t tiles_w = (n + kTileW - 1) / kTileW;
  const std::int64_t ctas = gemm_tile_pairs(tiles, tiles_w);
  if (ctas == 0) return;
  const int sms = current_device_facts().multiprocessors;
  const int per_sm =
      prepare_kernel(reinterpret_cast<const void*>(sm90_gemm_kernel<T, kTokens, kSub, kWG>),
                     C::kThreads, C::kSmemBytes, "sm90_gemm_kernel");
  const std::int64_t grid = std::min<std::int64_t>(ctas, static_cast<std::int64_t>(sms) * per_sm);
  const bool vector_store = vector_store_ok(n, out);
  sm90_gemm_kernel<T, kTokens, kSub, kWG>
      <<<static_cast<unsigned>(grid), C::kThreads, C::kSmemBytes, stream>>>(
          static_cast<const T*>(x), rows, static_cast<int>(tiles), static_cast<int>(tiles_w),
          w.blocks, w.scales, w.bias, w.bias_dtype, static_cast<T*>(out), n, k, vector_store);
  check_launch("sm90_gemm_kernel");
}

}  // namespace

bool sm90_gemm_available() {
#if defined(MXFP4_HAVE_SM90A)
  // Per device: on any other architecture the kernel's body is empty (sm_80/sm_89 passes).
  const DeviceFacts& d = current_device_facts();
  return d.major == 9 && d.minor == 0;
#else
  return false;
#endif
}

void launch_sm90_gemm(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                      int tile_tokens, int tile_rows, const detail::WeightArgs& w, void* out,
                      cudaStream_t stream) {
  if (x_dtype == DType::f16) {  // 128 tokens: stages with both parts fill shared memory
    if (tile_rows == 256) {
      launch_sm90_tiles<__half, 128, 2, 2>(x, rows, tiles, w, out, stream);
    } else {
      launch_sm90_tiles<__half, 128, 1, 2>(x, rows, tiles, w, out, stream);
    }
  } else if (tile_tokens == 256) {
    launch_sm90_tiles<__nv_bfloat16, 256, 1, 2>(x, rows, tiles, w, out, stream);
  } else if (tile_rows == 256) {
    launch_sm90_tiles<__nv_bfloat16, 128, 2, 2>(x, rows, tiles, w, out, stream);
  } else if (tile_rows == 64) {
    launch_sm90_tiles<__nv_bfloat16, 128, 1, 1>(x, rows, tiles, w, out, stream);
  } else {
    launch_sm90_tiles<__nv_bfloat16, 128, 1, 2>(x, rows, tiles, w, out, stream);
  }
}

}  // namespace mxfp4::cuda
