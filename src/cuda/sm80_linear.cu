// Dense MXFP4 linear layer on NVIDIA GPUs from sm_80 on: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// bf16/f16 activations run on the tensor cores with mma.sync m16n8k16. A warp owns 16 weight
// rows and 8 * NT tokens. The weight is the MMA's A operand, so a 16-row tile is filled even
// when there is one token (decode). The MMA's reduction order over k is free as long as A and
// B agree, so we permute k inside each 32-element block such that lane (g, t) holds elements
// 8t..8t+7 of the block: its A fragment is one 4-byte word of packed codes per row, and its B
// fragment one 16-byte load of x. Each block is multiplied on its own (two MMAs) and its f32
// partial sum scaled by the block's E8M0 scale in f32, so E2M1 values are fed to the tensor
// cores exactly in either 16-bit type and no scale can overflow or flush a 16-bit operand.
// The warps of a CTA split K; partial sums are reduced through shared memory in a fixed order
// (deterministic results). No allocation, no host synchronization.
//
// f32 activations (and any misaligned input) take an exact CUDA-core path.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda/backend.hpp"
#include "cuda/linear_kernels.hpp"
#include "cuda/mma.cuh"
#include "cuda/route.cuh"

namespace mxfp4::cuda {

namespace {

constexpr int kWarps = 8;  // warps per CTA, splitting K

// What a lane loads for one step of 8 blocks: for rows a (g) and b (g + 8), blocks b0 + t and
// b0 + 4 + t (16 bytes each), and those blocks' scales packed as bytes [a0, a1, b0, b1].
struct Step {
  uint4 wa[2], wb[2];
  std::uint32_t scales;
};

__device__ __forceinline__ Step load_step(const std::uint8_t* __restrict__ wa_row,
                                          const std::uint8_t* __restrict__ wb_row,
                                          const std::uint8_t* __restrict__ sa_row,
                                          const std::uint8_t* __restrict__ sb_row, int b0, int t,
                                          int nblk) {
  Step st;
  std::uint32_t packed = 0;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int blk = b0 + 4 * h + t;
    if (blk < nblk) {
      st.wa[h] = __ldg(reinterpret_cast<const uint4*>(wa_row + blk * kBlockBytes));
      st.wb[h] = __ldg(reinterpret_cast<const uint4*>(wb_row + blk * kBlockBytes));
      packed |= (static_cast<std::uint32_t>(__ldg(sa_row + blk)) << (8 * h)) |
                (static_cast<std::uint32_t>(__ldg(sb_row + blk)) << (16 + 8 * h));
    } else {
      st.wa[h] = st.wb[h] = make_uint4(0, 0, 0, 0);
      packed |= 0x7F7F7F7Fu & (0xFFu << (8 * h) | 0xFFu << (16 + 8 * h));
    }
  }
  st.scales = packed;
  return st;
}

// One tile: 16 weight rows (blockIdx.x) x the tile's tokens. Ends with a barrier, so a CTA can
// go on to its next tile.
template <typename T, int NT>
__device__ __forceinline__ void linear_tile(const T* __restrict__ x, const TokenRows& rows,
                                            const TokenRows::Tile& tile,
                                            const std::uint8_t* __restrict__ blocks,
                                            const std::uint8_t* __restrict__ scales,
                                            const void* __restrict__ bias, DType bias_dtype,
                                            T* __restrict__ out, int n, int k) {
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int row0 = static_cast<int>(blockIdx.x) * 16;
  const int nblk = k / kBlockSize;
  blocks += static_cast<std::int64_t>(tile.expert) * n * (k / 2);
  scales += static_cast<std::int64_t>(tile.expert) * n * nblk;
  const std::int64_t bias0 = static_cast<std::int64_t>(tile.expert) * n;

  // Rows past n read row n-1 (in bounds) and are never stored.
  const int ra = min(row0 + g, n - 1);
  const int rb = min(row0 + g + 8, n - 1);
  const std::uint8_t* wa_row = blocks + std::int64_t{ra} * (k / 2);
  const std::uint8_t* wb_row = blocks + std::int64_t{rb} * (k / 2);
  const std::uint8_t* sa_row = scales + std::int64_t{ra} * nblk;
  const std::uint8_t* sb_row = scales + std::int64_t{rb} * nblk;
  // Lane (g, t) of n-tile nt reads x[token 8 nt + g of the tile][32 blk + 8t .. +8).
  const T* x_lane[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int local = min(8 * nt + g, tile.count - 1);
    x_lane[nt] = x + rows.x_row(rows.pair(tile.first + local)) * k + 8 * t;
  }
  const int tokens_left = tile.count - g;  // n-tile nt is valid for this lane when 8 nt < this

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  constexpr int kStep = 8;  // blocks per warp step
  int b0 = warp * kStep;
  Step next = load_step(wa_row, wb_row, sa_row, sb_row, b0, t, nblk);
  for (; b0 < nblk; b0 += kWarps * kStep) {
    Step cur = next;
    // Issue the next step's loads before computing on this one: bytes in flight hide latency.
    if (b0 + kWarps * kStep < nblk) {
      next = load_step(wa_row, wb_row, sa_row, sb_row, b0 + kWarps * kStep, t, nblk);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      quad_transpose(cur.wa[h], t);
      quad_transpose(cur.wb[h], t);
    }
    const int blocks_left = nblk - b0;
    // Scales of block j (of each half) for rows a and b, from the quad lane that loaded them.
    std::uint32_t sc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      sc[j] = __shfl_sync(0xFFFFFFFFu, cur.scales, (lane & ~3) | j);
      // Blocks past the end hold zero codes and scale 1 and meet zero x: no branch needed.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = 4 * h + j;  // block b0 + i
        const float fa = scale_value((sc[j] >> (8 * h)) & 0xFFu);
        const float fb = scale_value((sc[j] >> (16 + 8 * h)) & 0xFFu);
        const std::uint32_t wa = word(cur.wa[h], j);
        const std::uint32_t wb = word(cur.wb[h], j);
        std::uint32_t a0[4], a1[4];  // A fragments of the block's two k16 steps
        decode4<T>(wa & 0xFFFFu, a0[0], a0[2]);
        decode4<T>(wb & 0xFFFFu, a0[1], a0[3]);
        decode4<T>(wa >> 16, a1[0], a1[2]);
        decode4<T>(wb >> 16, a1[1], a1[3]);
        const bool in_k = i < blocks_left;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (8 * nt < tokens_left && in_k) {
            xv = __ldg(
                reinterpret_cast<const uint4*>(x_lane[nt] + std::int64_t{b0 + i} * kBlockSize));
          }
          float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          mma_16816<T>(part, a0, xv.x, xv.y);
          mma_16816<T>(part, a1, xv.z, xv.w);
          acc[nt][0] = fmaf(part[0], fa, acc[nt][0]);
          acc[nt][1] = fmaf(part[1], fa, acc[nt][1]);
          acc[nt][2] = fmaf(part[2], fb, acc[nt][2]);
          acc[nt][3] = fmaf(part[3], fb, acc[nt][3]);
        }
      }
    }
  }

  __shared__ float partial[kWarps][NT * 4][32];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      partial[warp][nt * 4 + i][lane] = acc[nt][i];
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < NT * 4 * 32; idx += kWarps * 32) {
    const int frag = idx >> 5;
    const int l = idx & 31;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w)
      s += partial[w][frag][l];
    const int nt = frag >> 2;
    const int i = frag & 3;
    const int row = row0 + (l >> 2) + (i >= 2 ? 8 : 0);
    const int local = nt * 8 + 2 * (l & 3) + (i & 1);
    if (row < n && local < tile.count) {
      if (bias != nullptr) s += load_bias(bias, bias_dtype, bias0 + row);
      out[rows.pair(tile.first + local) * n + row] = from_float<T>(s);
    }
  }
  __syncthreads();  // `partial` is free again
}

// grid.x: 16-row tiles of the weight; grid.y walks tiles 0 .. tiles-1 of 8 * NT tokens, mapped to
// rows of x and out by `rows` (dense, or one expert's tokens); a grouped grid stops at the first
// empty tile (past the planned ones). kRoute: small expert batches routed in the CTA.
// Register caps: 3 CTAs per SM for decode (NT = 1), 2 above; no variant spills.
template <typename T, int NT, bool kRoute>
__global__ void __launch_bounds__(kWarps * 32, NT == 1 ? 3 : 2)
    linear_mma_kernel(const T* __restrict__ x, TokenRows rows, std::int64_t tiles,
                      const std::uint8_t* __restrict__ blocks,
                      const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                      DType bias_dtype, T* __restrict__ out, int n, int k) {
  for (std::int64_t index = blockIdx.y; index < tiles; index += gridDim.y) {
    TokenRows::Tile tile;
    if constexpr (kRoute) {
      // A small batch of expert ids: this CTA sorts them itself (route.cuh).
      __shared__ CtaRoute route;
      tile = route_in_cta(rows, index, 8 * NT, route, blockIdx.x == 0 && index == 0, out, n);
      rows.perm = route.perm;
    } else {
      tile = rows.tile(index, 8 * NT);
    }
    if (tile.count == 0) break;  // the whole CTA
    linear_tile<T, NT>(x, rows, tile, blocks, scales, bias, bias_dtype, out, n, k);
  }
}

// Exact CUDA-core path: one warp per (token, row), lanes stride over the row's blocks, a fixed
// butterfly reduction.
template <typename T>
__global__ void __launch_bounds__(256)
    linear_simple_kernel(const T* __restrict__ x, std::int64_t m,
                         const std::uint8_t* __restrict__ blocks,
                         const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                         DType bias_dtype, T* __restrict__ out, std::int64_t n, std::int64_t k) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (item >= m * n) return;
  const std::int64_t token = item / n;
  const std::int64_t row = item % n;
  const std::int64_t nblk = k / kBlockSize;
  const std::uint8_t* w = blocks + row * (k / 2);
  const T* xr = x + token * k;
  float acc = 0.0f;
  for (std::int64_t b = lane; b < nblk; b += 32) {
    const float s = e8m0_decode(scales[row * nblk + b]);
    float part = 0.0f;
    for (int j = 0; j < kBlockBytes; ++j) {
      const std::uint8_t byte = w[b * kBlockBytes + j];
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j]), e2m1_decode(byte & 0xF), part);
      part = fmaf(to_float(xr[b * kBlockSize + 2 * j + 1]), e2m1_decode(byte >> 4), part);
    }
    acc = fmaf(part, s, acc);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    acc += __shfl_xor_sync(0xFFFFFFFFu, acc, off);
  if (lane == 0) {
    if (bias != nullptr) acc += load_bias(bias, bias_dtype, row);
    out[token * n + row] = from_float<T>(acc);
  }
}

bool aligned(const void* p, std::uintptr_t bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0;
}

template <typename T, int NT>
void launch_mma(const void* x, const TokenRows& rows, std::int64_t tiles,
                const detail::WeightArgs& w, void* out, cudaStream_t stream) {
  const int n = static_cast<int>(w.n);
  const int k = static_cast<int>(w.k);
  const unsigned row_tiles = static_cast<unsigned>((n + 15) / 16);
  // Dense tiles are all full: one CTA each (up to grid.y's 65535). Grouped grids are upper
  // bounds: enough CTAs for a few waves walk the planned tiles, instead of a CTA per bound.
  std::int64_t y = std::min<std::int64_t>(tiles, 65535);
  if (rows.tile_list != nullptr || rows.route_ids != nullptr) {
    y = std::min<std::int64_t>(y, std::max<std::int64_t>(1, 2112 / row_tiles));
  }
  if (y == 0) return;
  const dim3 grid(row_tiles, static_cast<unsigned>(y));
  if constexpr (NT == 1) {
    if (rows.route_ids != nullptr) {
      linear_mma_kernel<T, NT, true><<<grid, kWarps * 32, 0, stream>>>(
          static_cast<const T*>(x), rows, tiles, w.blocks, w.scales, w.bias, w.bias_dtype,
          static_cast<T*>(out), n, k);
      check_launch("linear_mma_kernel");
      return;
    }
  }
  linear_mma_kernel<T, NT, false>
      <<<grid, kWarps * 32, 0, stream>>>(static_cast<const T*>(x), rows, tiles, w.blocks, w.scales,
                                         w.bias, w.bias_dtype, static_cast<T*>(out), n, k);
  check_launch("linear_mma_kernel");
}

}  // namespace

KernelChoice choose_kernel(DType x_dtype, std::int64_t tokens, std::int64_t n) {
  static const std::string forced = [] {
    const char* env = std::getenv("MXFP4_CUDA_KERNEL");
    return std::string(env != nullptr ? env : "");
  }();
  const bool gemm_ok = x_dtype == DType::bf16;
  const bool sm90_ok = gemm_ok && sm90_gemm_available();
  if (gemm_ok && forced == "gemm64") return {true, 64};
  if (gemm_ok && forced == "gemm128") return {true, 128};
  if (sm90_ok && forced == "wgmma128") return {true, 128, true};
  if (sm90_ok && forced == "wgmma256") return {true, 256, true};
  if (sm90_ok && forced == "wgmma256r") return {true, 128, true, 256};
  if (sm90_ok && forced == "wgmma64r") return {true, 128, true, 64};
  const KernelChoice decode{false, tokens <= 8 ? 8 : tokens <= 16 ? 16 : 32};
  if (!gemm_ok || forced == "decode" || tokens <= 16) return decode;
  // The GEMM needs enough 128-row weight tiles to fill the card; otherwise the decode kernel's
  // 16-row tiles and in-CTA split of K keep more SMs busy. Measured on an H100 at M = 64
  // (bench/RESULTS.md): the GEMM wins from N = 8192 (64 tiles) and loses at N <= 5760.
  const std::int64_t weight_tiles = (n + 127) / 128;
  if (tokens <= 64) return weight_tiles >= 64 ? KernelChoice{true, 64} : decode;
  // wgmma GEMM: 256-token tiles (measured fastest from M = 1024), 128 up to M = 256, where
  // twice the tiles keep more SMs busy; and where 128-row tiles would leave SMs idle, tiles of
  // 64 rows (one warpgroup per CTA, two CTAs per SM).
  if (sm90_ok) {
    if (tokens > 256) return {true, 256, true};
    const std::int64_t tiles128 = weight_tiles * ((tokens + 127) / 128);
    return {true, 128, true, tiles128 < current_device_facts().multiprocessors ? 64 : 128};
  }
  return {true, 128};
}

void launch_decode(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                   int tile_tokens, const detail::WeightArgs& w, void* out, cudaStream_t stream) {
  auto run = [&](auto zero) {
    using T = decltype(zero);
    if (tile_tokens == 8) {
      launch_mma<T, 1>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 16) {
      launch_mma<T, 2>(x, rows, tiles, w, out, stream);
    } else {
      launch_mma<T, 4>(x, rows, tiles, w, out, stream);
    }
  };
  if (x_dtype == DType::f16) {
    run(__half{});
  } else {
    run(__nv_bfloat16{});
  }
}

void linear(const detail::LinearArgs& a) {
  cudaStream_t stream = as_stream(a.stream);
  const bool int_sizes = a.w.n < (std::int64_t{1} << 31) && a.w.k < (std::int64_t{1} << 30);
  const bool tensor_cores =
      a.x_dtype != DType::f32 && int_sizes && aligned(a.x, 16) && aligned(a.w.blocks, 16);
  if (!tensor_cores) {
    const std::int64_t items = a.m * a.w.n;
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      linear_simple_kernel<T><<<blocks_for(items, 8), 256, 0, stream>>>(
          static_cast<const T*>(a.x), a.m, a.w.blocks, a.w.scales, a.w.bias, a.w.bias_dtype,
          static_cast<T*>(a.out), a.w.n, a.w.k);
    });
    check_launch("linear_simple_kernel");
    return;
  }
  TokenRows rows;
  rows.rows = a.m;
  const KernelChoice choice = choose_kernel(a.x_dtype, a.m, a.w.n);
  const std::int64_t tiles = (a.m + choice.tile_tokens - 1) / choice.tile_tokens;
  if (choice.sm90) {
    launch_sm90_gemm(a.x, rows, tiles, choice.tile_tokens, choice.tile_rows, a.w, a.out, stream);
  } else if (choice.gemm) {
    launch_gemm(a.x, rows, tiles, choice.tile_tokens, a.w, a.out, stream);
  } else {
    launch_decode(a.x, a.x_dtype, rows, tiles, choice.tile_tokens, a.w, a.out, stream);
  }
}

}  // namespace mxfp4::cuda
