// Dense MXFP4 linear layer on NVIDIA GPUs from sm_80 on: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// bf16/f16 activations run on the tensor cores with mma.sync m16n8k16. A warp owns 16 weight
// rows and 8 * NT tokens. The weight is the MMA's A operand, so a 16-row tile is filled even
// when there is one token (decode). The MMA's reduction order over k is free as long as A and
// B agree, so we permute k inside each 32-element block such that lane (g, t) holds elements
// 8t..8t+7 of the block: its A fragment is one 4-byte word of packed codes per row, and its B
// fragment one 16-byte load of x. With up to 16 tokens the weight is scaled before the MMA and
// each lane takes all its k slots from one block it loaded whole (no transpose; see
// accumulate_pre_scaled): in bf16, which holds every scaled value exactly, and for f16 x in f16
// wherever a step's scales keep every scaled value a normal f16 (real weights' do), else in bf16
// against x split exactly into two bf16 parts. On 32-token tiles (17-32 tokens before Hopper,
// f16 or bf16) each block is multiplied on its own (two MMAs) and its f32 partial sum scaled by
// the block's E8M0 scale in f32, so no scale can overflow or flush an f16 operand: about twice the
// instructions per weight element.
// The warps of a CTA split K; partial sums are reduced through shared memory in a fixed order
// (deterministic results). From 5 tokens on large weights, each warp computes two 16-row tiles
// with the same x (x loads, not the weight's, fill L1 there). No allocation, no host
// synchronization.
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

// The main loop for 32-token tiles, accumulating one 16-row tile's partial sums over
// this warp's share of K into acc: E2M1 fed to the MMAs unscaled, each block's two MMAs summed in
// f32 and scaled by the block's scale in f32 (a scale times an E2M1 value may not fit f16). Lane
// (g, t) loads whole blocks and a quad transpose hands it word t of four blocks (its A fragment of
// each).
template <typename T, bool kGpu, int NT>
__device__ __forceinline__ void accumulate_post_scaled(
    float (&acc)[NT][4], const T* const (&x_lane)[NT], int tokens_left,
    const std::uint8_t* __restrict__ wa_row, const std::uint8_t* __restrict__ wb_row,
    const std::uint8_t* __restrict__ sa_row, const std::uint8_t* __restrict__ sb_row, int nblk,
    int member, int members) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int t = lane & 3;
  constexpr int kStep = 8;  // blocks per warp step
  // The GPU layout: each block's elements 8t .. 8t+7 are slot t of its four words, which come
  // over from the quad lane that loaded the block (no transpose). (Measured on an H100, session
  // 16: these shuffles make f16 decode slower than the standard layout's transposes, up to 1.6x
  // at 16 tokens; taking each block in the MMA's own k order instead, with x in four 4-byte
  // pieces, was slower still from 8 tokens. bf16 with 32 tokens gains 1-3%.)
  const int stride = members * kStep;
  int b0 = member * kStep;
  Step next = load_step(wa_row, wb_row, sa_row, sb_row, b0, t, nblk);
  for (; b0 < nblk; b0 += stride) {
    Step cur = next;
    // Issue the next step's loads before computing on this one: bytes in flight hide latency.
    if (b0 + stride < nblk) next = load_step(wa_row, wb_row, sa_row, sb_row, b0 + stride, t, nblk);
    if constexpr (!kGpu) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        quad_transpose(cur.wa[h], t);
        quad_transpose(cur.wb[h], t);
      }
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
        std::uint32_t a0[4], a1[4];  // A fragments of the block's two k16 steps
        if constexpr (kGpu) {
          // Elements 8t .. 8t+7 of block i (pairs 4t .. 4t+3) are slot t of its four words, which
          // quad lane j loaded: all four come over, each slot decoded (times 2^-14 in f16, 2^-126
          // in bf16) and lifted back by a packed multiply, so the tensor cores see no subnormals.
          const int src = (lane & ~3) | j;
          std::uint32_t va[4], vb[4];
#pragma unroll
          for (int w = 0; w < 4; ++w) {
            va[w] = gpu_slot_lift<T>(__shfl_sync(0xFFFFFFFFu, word(cur.wa[h], w), src), t);
            vb[w] = gpu_slot_lift<T>(__shfl_sync(0xFFFFFFFFu, word(cur.wb[h], w), src), t);
          }
          a0[0] = va[0];
          a0[2] = va[1];
          a1[0] = va[2];
          a1[2] = va[3];
          a0[1] = vb[0];
          a0[3] = vb[1];
          a1[1] = vb[2];
          a1[3] = vb[3];
        } else {
          const std::uint32_t wa = word(cur.wa[h], j);
          const std::uint32_t wb = word(cur.wb[h], j);
          decode4<T>(wa, a0[0], a0[2]);
          decode4<T>(wb, a0[1], a0[3]);
          decode4<T>(wa >> 16, a1[0], a1[2]);
          decode4<T>(wb >> 16, a1[1], a1[3]);
        }
        const bool in_k = i < blocks_left;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (8 * nt < tokens_left && in_k) {
            xv = __ldg(reinterpret_cast<const uint4*>(x_lane[nt] + 8 * t +
                                                      std::int64_t{b0 + i} * kBlockSize));
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
}

// What a lane loads for one step of the bf16 loop, for each of its R row tiles: block `blk` of
// rows a (g) and b (g + 8) and their scales.
template <int R>
struct WeightStep {
  uint4 wa[R], wb[R];
  std::uint32_t sa[R], sb[R];
};

// Row pointers of a lane: weight and scales of rows a and b of each of its R row tiles.
template <int R>
struct LaneRows {
  const std::uint8_t* wa[R];
  const std::uint8_t* wb[R];
  const std::uint8_t* sa[R];
  const std::uint8_t* sb[R];
};

// Moves every row pointer `blocks` blocks on.
template <int R>
__device__ __forceinline__ void advance(LaneRows<R>& rows, int blocks) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    rows.wa[r] += blocks * kBlockBytes;
    rows.wb[r] += blocks * kBlockBytes;
    rows.sa[r] += blocks;
    rows.sb[r] += blocks;
  }
}

template <int R>
__device__ __forceinline__ WeightStep<R> load_weight_step(const LaneRows<R>& rows, int blk,
                                                          int nblk) {
  WeightStep<R> st;
#pragma unroll
  for (int r = 0; r < R; ++r) {  // past the end: zero codes times 1, against zero x
    st.wa[r] = st.wb[r] = make_uint4(0, 0, 0, 0);
    st.sa[r] = st.sb[r] = 127u;
  }
  if (blk < nblk) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      st.wa[r] = __ldg(reinterpret_cast<const uint4*>(rows.wa[r] + blk * kBlockBytes));
      st.wb[r] = __ldg(reinterpret_cast<const uint4*>(rows.wb[r] + blk * kBlockBytes));
      st.sa[r] = __ldg(rows.sa[r] + blk);
      st.sb[r] = __ldg(rows.sb[r] + blk);
    }
  }
  return st;
}

// x for n-tile nt, 16-byte pieces q0 .. q0 + kQ - 1 of block `blk`.
template <int NT, int kQ, typename T>
__device__ __forceinline__ void load_x_part(uint4 (&xs)[NT][4], int q0,
                                            const T* const (&x_lane)[NT], int tokens_left, int blk,
                                            int nblk) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int q = q0; q < q0 + kQ; ++q) {
      xs[nt][q] = make_uint4(0, 0, 0, 0);
      if (blk < nblk && 8 * nt < tokens_left) {
        xs[nt][q] = __ldg(
            reinterpret_cast<const uint4*>(x_lane[nt] + std::int64_t{blk} * kBlockSize + 8 * q));
      }
    }
  }
}

// How far ahead of its use the pre-scaled loop loads x (from L2, mostly): not at all (at the start
// of its step), half a step (each half into the registers the step has just finished with), or a
// whole step (a second set of registers). Further ahead costs 8 or 16 registers per n-tile.
enum class XAhead { kNone, kHalf, kFull };

// The main loop for up to 16 tokens. The MMA's order over k is free as long as A and B agree: in
// each group of four blocks, lane (g, t) takes every k slot it owns from block b0 + t, so its A
// fragments come straight from the 16 bytes it loaded (no transpose) and its B fragments from the
// 64 bytes of x it loaded. The four lanes of a quad then mix four blocks in one MMA, so each
// E2M1 pair is scaled before the MMA, exactly in bf16 (bf16 holds every E2M1 value times every
// E8M0 scale), and the MMAs accumulate straight into acc. About half the instructions per weight
// element of the post-scaled loop. The next step's weight is always loaded a step ahead.
// f16 x: each step runs on f16 MMAs where every block of the warp's step has a scale that keeps
// its scaled values normal f16 (detail::f16_prescale_ok; a warp vote per step), else on bf16 MMAs
// with x split into two exact bf16 parts per fragment (two MMAs): exact either way, and as fast as
// bf16 on real weights (measured on an H100, session 17: f16 decode 1.1-2.5x faster than on the
// post-scaled loop it used before, the GPU layout's f16 no longer slower than the standard one).
// A warp computes R row tiles of 16 rows with the same x fragments. x is what limits 8 and 16
// tokens: a lane's 64 bytes of x touch two 128-byte lines per token in each load, so with one
// row tile the x loads take four fifths of the L1 wavefronts (ncu, Llama-70B up, M = 16: L1/TEX
// throughput 94%, DRAM 34%); two row tiles halve them per weight byte.
template <typename T, int R, int NT, XAhead kAhead, bool kGpu>
__device__ __forceinline__ void accumulate_pre_scaled(float (&acc)[R][NT][4],
                                                      const T* const (&x_lane)[NT], int tokens_left,
                                                      const LaneRows<R>& rows, int nblk, int member,
                                                      int members) {
  const int t = static_cast<int>(threadIdx.x) & 3;
  constexpr int kStep = 4;  // blocks per warp step
  const int stride = members * kStep;
  int b0 = member * kStep;
  // The row pointers walk with the step (loop-carried, so ptxas keeps them in registers instead
  // of rebuilding the row addresses every step: ~35 instructions of a ~300-instruction step at
  // M = 1); `at` points at block b0 + t. x the same way, xp at block b0 + t of the current step.
  // Not where x is loaded half a step ahead (three CTAs per SM): there the walking pointers
  // spill (32 bytes with two n-tiles, 132 in the routed kernel) or cost more than they save.
  constexpr bool kWalk = kAhead != XAhead::kHalf;
  LaneRows<R> at = rows;
  if constexpr (kWalk) advance(at, b0 + t);
  WeightStep<R> next =
      kWalk ? load_weight_step<R>(at, 0, nblk - (b0 + t)) : load_weight_step<R>(rows, b0 + t, nblk);
  const T* xp[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
    xp[nt] = kWalk ? x_lane[nt] + std::int64_t{b0 + t} * kBlockSize : x_lane[nt];
  uint4 xs[NT][4];
  uint4 x_next[kAhead == XAhead::kFull ? NT : 1][4];
  if constexpr (kAhead == XAhead::kHalf)
    load_x_part<NT, 4>(xs, 0, x_lane, tokens_left, b0 + t, nblk);
  if constexpr (kAhead == XAhead::kFull) {
    load_x_part<NT, 4>(x_next, 0, xp, tokens_left, 0, nblk - (b0 + t));
  }
  for (; b0 < nblk; b0 += stride) {
    const WeightStep<R> cur = next;
    const int blk_next = b0 + stride + t;
    const T* xq[NT];  // the next step's
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      xq[nt] = kWalk ? xp[nt] + stride * kBlockSize : xp[nt];
    if constexpr (kAhead == XAhead::kNone)
      load_x_part<NT, 4>(xs, 0, xp, tokens_left, 0, nblk - (b0 + t));
    if constexpr (kAhead == XAhead::kFull) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int q = 0; q < 4; ++q)
          xs[nt][q] = x_next[nt][q];
      }
    }
    if (b0 + stride < nblk) {
      if constexpr (kWalk) {
        advance(at, stride);
        next = load_weight_step<R>(at, 0, nblk - blk_next);
      } else {
        next = load_weight_step<R>(rows, blk_next, nblk);
      }
      if constexpr (kAhead == XAhead::kFull) {
        load_x_part<NT, 4>(x_next, 0, xq, tokens_left, 0, nblk - blk_next);
      }
    }
    // One step (four blocks per quad) on the MMAs of type U: bf16, or for f16 x, f16 where every
    // block of the step allows it (detail::f16_prescale_ok: real weights' scales, 2^-13 .. 2^13),
    // else bf16 weights against x split exactly into two bf16 parts (two MMAs each).
    auto run_step = [&](auto f16_tag) {
      constexpr bool kF16 = decltype(f16_tag)::value;
      using U = std::conditional_t<kF16, __half, __nv_bfloat16>;
      constexpr bool kSplitX = std::is_same_v<T, __half> && !kF16;
      std::uint32_t fa[R], fb[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if constexpr (kF16) {
          fa[r] = detail::f16_scale_pair(cur.sa[r], kGpu);
          fb[r] = detail::f16_scale_pair(cur.sb[r], kGpu);
        } else {
          fa[r] = kGpu ? detail::gpu_scale_bf16(cur.sa[r]) : bf16_scale_pair(cur.sa[r]);
          fb[r] = kGpu ? detail::gpu_scale_bf16(cur.sb[r]) : bf16_scale_pair(cur.sb[r]);
        }
      }
#pragma unroll
      for (int s = 0; s < 8; ++s) {  // elements 4s .. 4s+3 of the lane's block
#pragma unroll
        for (int r = 0; r < R; ++r) {
          std::uint32_t a[4];
          if constexpr (kGpu) {
            // Pairs 2s and 2s + 1: slot s >> 1 of words 2 (s & 1) and 2 (s & 1) + 1 (times
            // 2^-126 in bf16, 2^-14 in f16; the scale factor takes them back).
            const int w0 = 2 * (s & 1);
            auto slot = [&](std::uint32_t w) {
              return kF16 ? detail::gpu_slot_f16(w, s >> 1) : detail::gpu_slot_bf16(w, s >> 1);
            };
            a[0] = slot(word(cur.wa[r], w0));
            a[2] = slot(word(cur.wa[r], w0 + 1));
            a[1] = slot(word(cur.wb[r], w0));
            a[3] = slot(word(cur.wb[r], w0 + 1));
          } else {
            const std::uint32_t va = word(cur.wa[r], s >> 1) >> (16 * (s & 1));
            const std::uint32_t vb = word(cur.wb[r], s >> 1) >> (16 * (s & 1));
            decode4<U>(va, a[0], a[2]);
            decode4<U>(vb, a[1], a[3]);
          }
          auto mul = [](std::uint32_t v, std::uint32_t f) {
            return kF16 ? f16x2_mul(v, f) : bf16x2_mul(v, f);
          };
          a[0] = mul(a[0], fa[r]);
          a[2] = mul(a[2], fa[r]);
          a[1] = mul(a[1], fb[r]);
          a[3] = mul(a[3], fb[r]);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint4& xv = xs[nt][s >> 1];
            const std::uint32_t b0 = (s & 1) ? xv.z : xv.x;
            const std::uint32_t b1 = (s & 1) ? xv.w : xv.y;
            if constexpr (kSplitX) {
              std::uint32_t h0, l0, h1, l1;
              split_f16x2(b0, h0, l0);
              split_f16x2(b1, h1, l1);
              mma_16816<__nv_bfloat16>(acc[r][nt], a, h0, h1);
              mma_16816<__nv_bfloat16>(acc[r][nt], a, l0, l1);
            } else {
              mma_16816<U>(acc[r][nt], a, b0, b1);
            }
          }
        }
        if constexpr (kAhead == XAhead::kHalf) {
          if (s == 3) load_x_part<NT, 2>(xs, 0, x_lane, tokens_left, blk_next, nblk);
          if (s == 7) load_x_part<NT, 2>(xs, 2, x_lane, tokens_left, blk_next, nblk);
        }
      }
    };
    if constexpr (std::is_same_v<T, __half>) {
      bool ok = true;
#pragma unroll
      for (int r = 0; r < R; ++r)
        ok = ok && detail::f16_prescale_ok(cur.sa[r], kGpu) &&
             detail::f16_prescale_ok(cur.sb[r], kGpu);
      if (__all_sync(0xFFFFFFFFu, ok)) {
        run_step(std::true_type{});
      } else {
        run_step(std::false_type{});
      }
    } else {
      run_step(std::false_type{});
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      xp[nt] = xq[nt];
  }
}

// The decode kernel comes in variants of CTAs per SM (the register cap): with one
// n-tile 3 (x half a step ahead) or 4 (x not ahead, 61 registers); with two, 2 (x a step ahead)
// or 3 (half a step). With two row tiles per warp, x is half a step ahead. pick_ctas chooses per
// launch.
template <int NT, int kCtas, int R>
constexpr XAhead x_ahead() {
  if (R > 1) return XAhead::kHalf;
  if (NT == 1) return kCtas >= 4 ? XAhead::kNone : XAhead::kHalf;
  return kCtas <= 2 ? XAhead::kFull : XAhead::kHalf;
}

// Up to kWarps tiles at once: 16 R weight rows (blockIdx.x) times each tile's tokens. The warps
// form `groups` groups (warp w in group w % groups), group i computes tiles[i], its warps
// splitting K; partial sums are reduced through shared memory in a fixed order. Ends with a
// barrier, so a CTA can go on to its next tiles. Dense batches: one group of every warp.
// R > 1 (each warp R row tiles with the same x) only for bf16 with up to 16 tokens.
template <typename T, bool kGpu, int NT, int kCtas, int kRowTiles = 1, int R = 1>
__device__ __forceinline__ void linear_tiles(const T* __restrict__ x, const TokenRows& rows,
                                             const TokenRows::Tile* tiles, int groups,
                                             const std::uint8_t* __restrict__ blocks,
                                             const std::uint8_t* __restrict__ scales,
                                             const void* __restrict__ bias, DType bias_dtype,
                                             T* __restrict__ out, int n, int k) {
  constexpr bool kPreScaled = NT <= 2;
  static_assert(R == 1 || kPreScaled, "several row tiles per warp: the pre-scaled loop only");
  // kRowTiles groups of 16 R rows per CTA (dense only), each with kWarps / kRowTiles warps
  // splitting K.
  constexpr int kRowWarps = kWarps / kRowTiles;
  constexpr int kWarpRows = 16 * R;
  const int all_warp = static_cast<int>(threadIdx.x) >> 5;
  const int rt = kRowTiles == 1 ? 0 : all_warp / kRowWarps;
  const int warp = kRowTiles == 1 ? all_warp : all_warp % kRowWarps;  // within its row tile
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2;
  const int row0 = (static_cast<int>(blockIdx.x) * kRowTiles + rt) * kWarpRows;
  const int nblk = k / kBlockSize;
  const int group = warp % groups;
  const int members = (kRowWarps - group + groups - 1) / groups;
  const TokenRows::Tile tile = tiles[group];
  const std::uint8_t* wblocks = blocks + static_cast<std::int64_t>(tile.expert) * n * (k / 2);
  const std::uint8_t* wscales = scales + static_cast<std::int64_t>(tile.expert) * n * nblk;

  // Rows past n read row n-1 (in bounds) and are never stored.
  LaneRows<R> lrows;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int ra = min(row0 + 16 * r + g, n - 1);
    const int rb = min(row0 + 16 * r + g + 8, n - 1);
    lrows.wa[r] = wblocks + std::int64_t{ra} * (k / 2);
    lrows.wb[r] = wblocks + std::int64_t{rb} * (k / 2);
    lrows.sa[r] = wscales + std::int64_t{ra} * nblk;
    lrows.sb[r] = wscales + std::int64_t{rb} * nblk;
  }
  // Lane (g, t) of n-tile nt reads x row of token 8 nt + g of the tile.
  const T* x_lane[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int local = min(8 * nt + g, tile.count - 1);
    x_lane[nt] = x + rows.x_row_at(tile.first + local) * k;
  }
  const int tokens_left = tile.count - g;  // n-tile nt is valid for this lane when 8 nt < this

  float acc[R][NT][4];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      acc[r][nt][0] = acc[r][nt][1] = acc[r][nt][2] = acc[r][nt][3] = 0.0f;
  }
  // (32-token tiles keep the post-scaled loop, whose x loads need fewer registers.)
  if constexpr (kPreScaled) {
    accumulate_pre_scaled<T, R, NT, x_ahead<NT, kCtas, R>(), kGpu>(acc, x_lane, tokens_left, lrows,
                                                                   nblk, warp / groups, members);
  } else {
    accumulate_post_scaled<T, kGpu, NT>(acc[0], x_lane, tokens_left, lrows.wa[0], lrows.wb[0],
                                        lrows.sa[0], lrows.sb[0], nblk, warp / groups, members);
  }

  constexpr int kFrags = R * NT * 4;  // accumulator registers per lane
  __shared__ float partial[kWarps][kFrags][32];
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
        partial[all_warp][(r * NT + nt) * 4 + i][lane] = acc[r][nt][i];
    }
  }
  __syncthreads();
  for (int idx = static_cast<int>(threadIdx.x); idx < kRowTiles * groups * kFrags * 32;
       idx += kWarps * 32) {
    const int rgroup = kRowTiles == 1 ? 0 : idx / (kFrags * 32);  // kRowTiles > 1: groups == 1
    const int gi = kRowTiles == 1 ? idx / (kFrags * 32) : 0;
    const int frag = (idx >> 5) % kFrags;
    const int l = idx & 31;
    float s = 0.0f;
    for (int w = gi; w < kRowWarps; w += groups)
      s += partial[rgroup * kRowWarps + w][frag][l];
    const TokenRows::Tile ti = groups == 1 ? tile : tiles[gi];
    const int r = frag / (NT * 4);
    const int nt = (frag >> 2) % NT;
    const int i = frag & 3;
    const int row = (static_cast<int>(blockIdx.x) * kRowTiles + rgroup) * kWarpRows + 16 * r +
                    (l >> 2) + (i >= 2 ? 8 : 0);
    const int local = nt * 8 + 2 * (l & 3) + (i & 1);
    if (row < n && local < ti.count) {
      if (bias != nullptr) {
        s += load_bias(bias, bias_dtype, static_cast<std::int64_t>(ti.expert) * n + row);
      }
      out[rows.out_row(ti.first + local) * n + row] = from_float<T>(s);
    }
  }
  __syncthreads();  // `partial` is free again
}

// grid.x: tiles of 16 kRowTiles R rows of the weight; grid.y walks tiles 0 .. tiles-1 of 8 * NT
// tokens, mapped to rows of x and out by `rows` (dense, or one expert's tokens); a grouped grid
// stops at the first empty tile (past the planned ones). kRoute: a small batch of expert ids, which
// each CTA sorts itself (route.cuh) into tiles of 8 tokens; grid.y then walks rounds of up to
// rows.route_groups tiles, computed at once by kWarps / route_groups warps each (with one token per
// expert, as in decode, a CTA reads its rows of every touched expert at once instead of one after
// another). Register caps: the kCtas variants (x_ahead, pick_ctas); only the 32-token tiles spill
// (a few bytes, ptxas -v), the others do not.
constexpr int kMaxRouteGroups = kWarps / 2;
// Routed batches of at least this many pairs run each warp on two row tiles (launch_mma; the
// tiles then hold several tokens, as they must for two row tiles to pay). Measured on an H100
// (session 10), GPT-OSS top-4 of 128: T = 16 (64 pairs) skewed gate_up 45.4 -> 36.7 us, down
// 32.9 -> 29.0, uniform 3-6% faster; forced at T = 1 and 4 (mostly one token per tile) slower:
// down 13.0 -> 14.8 and, skewed T = 4, 16.1 -> 22.7.
constexpr int kRouteR2Pairs = 33;

template <typename T, bool kGpu, int NT, bool kRoute, int kCtas, int kRowTiles = 1, int R = 1,
          bool kRounds = false>
__global__ void __launch_bounds__(kWarps * 32, kCtas)
    linear_mma_kernel(const T* __restrict__ x, TokenRows rows, std::int64_t tiles,
                      const std::uint8_t* __restrict__ blocks,
                      const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                      DType bias_dtype, T* __restrict__ out, int n, int k, SortExport order) {
  if constexpr (kRoute) {
    __shared__ CtaRoute route;
    route_in_cta(rows, route, blockIdx.x == 0 && blockIdx.y == 0, out, n, order);
    rows.perm = route.perm;
    if (order.offsets == nullptr) rows.out_perm = route.perm;  // (else: expert order)
    // Tiles of 16 (experts with more than 8 pairs; bf16) with two n-tiles, then tiles of 8, in
    // rounds of per_round tiles: rows.route_groups (which sized the grid for the most tiles the
    // batch can have), or fewer where a batch of few tiles (all tokens on a few experts) would
    // leave fewer than rows.route_min_ctas CTAs with work: then each tile's K is split over more
    // warps. (Down to one tile per CTA regardless, skewed T = 4 and 16 on GPT-OSS gate_up measured
    // slower: an H100, session 10.)
    int per_round = rows.route_groups;
    // (Only with two row tiles per warp: the one-tile kernel's registers are tight, and computing
    // this there cost it 1-5% at T = 1 and 4, where it never applies.)
    if constexpr (R > 1) {
      const int c16 = route.tile_count16;
      const int c8 = route.tile_count - route.tile_count16;
      while (per_round > 1) {
        const int busy = min(static_cast<int>(gridDim.y), max((c16 + per_round - 1) / per_round,
                                                              (c8 + per_round - 1) / per_round));
        if (static_cast<int>(gridDim.x) * busy >= rows.route_min_ctas) break;
        per_round /= 2;
      }
    }
    // (f16: only with two row tiles per warp; the one-tile kernel with both loops spilled 92-136
    // bytes, ptxas -v.)
    if constexpr (NT == 1 && (std::is_same_v<T, __nv_bfloat16> || R > 1)) {
      for (int first = static_cast<int>(blockIdx.y) * per_round; first < route.tile_count16;
           first += static_cast<int>(gridDim.y) * per_round) {
        const int groups = min(route.tile_count16 - first, per_round);
        linear_tiles<T, kGpu, 2, kCtas, 1, R>(x, rows, route.tiles + first, groups, blocks, scales,
                                              bias, bias_dtype, out, n, k);
      }
    }
    for (int first = route.tile_count16 + static_cast<int>(blockIdx.y) * per_round;
         first < route.tile_count; first += static_cast<int>(gridDim.y) * per_round) {
      const int groups = min(route.tile_count - first, per_round);
      linear_tiles<T, kGpu, NT, kCtas, 1, R>(x, rows, route.tiles + first, groups, blocks, scales,
                                             bias, bias_dtype, out, n, k);
    }
  } else if constexpr (kRounds) {
    // Grouped tiles of 8 (gather_linear's smallest class; launch_mma): rounds of up to
    // rows.route_groups planned tiles, as in the routed branch above, each tile on kWarps / groups
    // warps (longer runs of K per warp and one reduction per round instead of one per tile),
    // fewer per round where the planned tiles would leave fewer than rows.route_min_ctas CTAs with
    // work; first, where rows.tile_list16 names it, the class of 16-token tiles the same way.
    static_assert(NT == 1 && R == 2 && kRowTiles == 1, "the one kRounds variant launch_mma runs");
    __shared__ TokenRows::Tile round[kMaxRouteGroups];
    // Planned tiles of 8 and of 16, tiles per round: read from shared memory in the loops (kept
    // in registers across both loops, they made the kernel of the GPU layout spill 128 bytes,
    // ptxas -v).
    __shared__ int plan[3];
    if (threadIdx.x == 0) {
      const int total = static_cast<int>(min(static_cast<std::int64_t>(*rows.tile_total), tiles));
      const int total16 =
          rows.tile_list16 != nullptr ? min(*rows.tile_total16, rows.tile_bound16) : 0;
      int per_round = rows.route_groups;
      while (per_round > 1) {
        const int busy =
            min(static_cast<int>(gridDim.y),
                max((total + per_round - 1) / per_round, (total16 + per_round - 1) / per_round));
        if (static_cast<int>(gridDim.x) * busy >= rows.route_min_ctas) break;
        per_round /= 2;
      }
      plan[0] = total;
      plan[1] = total16;
      plan[2] = per_round;
    }
    __syncthreads();
    for (int first = static_cast<int>(blockIdx.y) * plan[2]; first < plan[1];
         first += static_cast<int>(gridDim.y) * plan[2]) {
      const int groups = min(plan[1] - first, plan[2]);
      if (static_cast<int>(threadIdx.x) < groups) {
        const int4 v = rows.tile_list16[first + static_cast<int>(threadIdx.x)];
        round[threadIdx.x] = {v.x, v.y, v.z, v.w};
      }
      __syncthreads();
      linear_tiles<T, kGpu, 2, kCtas, 1, R>(x, rows, round, groups, blocks, scales, bias,
                                            bias_dtype, out, n, k);
    }
    for (int first = static_cast<int>(blockIdx.y) * plan[2]; first < plan[0];
         first += static_cast<int>(gridDim.y) * plan[2]) {
      const int groups = min(plan[0] - first, plan[2]);
      if (static_cast<int>(threadIdx.x) < groups) {
        round[threadIdx.x] = rows.tile(first + static_cast<int>(threadIdx.x), 8 * NT);
      }
      __syncthreads();
      linear_tiles<T, kGpu, NT, kCtas, 1, R>(x, rows, round, groups, blocks, scales, bias,
                                             bias_dtype, out, n, k);
    }
  } else {
    for (std::int64_t index = blockIdx.y; index < tiles; index += gridDim.y) {
      const TokenRows::Tile tile = rows.tile(index, 8 * NT);
      if (tile.count == 0) break;  // the whole CTA
      linear_tiles<T, kGpu, NT, kCtas, kRowTiles, R>(x, rows, &tile, 1, blocks, scales, bias,
                                                     bias_dtype, out, n, k);
    }
  }
}

// Exact CUDA-core path: one warp per (token, row), lanes stride over the row's blocks, a fixed
// butterfly reduction.
template <typename T>
__global__ void __launch_bounds__(256)
    linear_simple_kernel(const T* __restrict__ x, std::int64_t m,
                         const std::uint8_t* __restrict__ blocks,
                         const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                         DType bias_dtype, T* __restrict__ out, std::int64_t n, std::int64_t k,
                         bool gpu) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (item >= m * n) return;
  const std::int64_t token = item / n;
  const std::int64_t row = item % n;
  const std::int64_t nblk = k / kBlockSize;
  float acc =
      warp_row_dot(x + token * k, blocks + row * (k / 2), scales + row * nblk, nblk, lane, gpu);
  if (lane == 0) {
    if (bias != nullptr) acc += load_bias(bias, bias_dtype, row);
    out[token * n + row] = from_float<T>(acc);
  }
}

bool aligned(const void* p, std::uintptr_t bytes) {
  return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0;
}

// Of two occupancies (CTAs per SM), the one with the lower cost for `ctas` CTAs: the number of
// waves times the CTAs sharing an SM's bandwidth in each, over their relative throughput. A
// higher occupancy hides more latency (measured on an H100: about 15% more throughput per SM at
// 3 or 4 CTAs than at 2), but a last, partial wave costs as much time as a full one: Llama-70B
// down (512 CTAs) runs fastest at 4 CTAs per SM (one wave) with one n-tile and at 2 (two waves)
// with two, where 3 would take two waves of which the second is a third full.
// MXFP4_CUDA_KERNEL=decode_lo|decode_hi force the lower or higher one (tests).
int pick_ctas(std::int64_t ctas, int a, int b) {
  if (forced_kernel() == "decode_lo") return a;
  if (forced_kernel() == "decode_hi") return b;
  const std::int64_t sms = current_device_facts().multiprocessors;
  auto cost = [&](int o) {
    const std::int64_t waves = (ctas + o * sms - 1) / (o * sms);
    return static_cast<double>(waves * o) / (o >= 3 ? 1.15 : 1.0);
  };
  return cost(b) < cost(a) ? b : a;
}

template <typename T, bool kGpu, int NT, bool kRoute, int kCtas, int kRowTiles = 1, int R = 1,
          bool kRounds = false>
void launch_variant(dim3 grid, const void* x, const TokenRows& rows, std::int64_t tiles,
                    const detail::WeightArgs& w, void* out, cudaStream_t stream,
                    const SortExport& order = {}) {
  grid.x = (grid.x + kRowTiles * R - 1) / (kRowTiles * R);
  linear_mma_kernel<T, kGpu, NT, kRoute, kCtas, kRowTiles, R, kRounds>
      <<<grid, kWarps * 32, 0, stream>>>(static_cast<const T*>(x), rows, tiles, w.blocks, w.scales,
                                         w.bias, w.bias_dtype, static_cast<T*>(out),
                                         static_cast<int>(w.n), static_cast<int>(w.k), order);
  check_launch("linear_mma_kernel");
}

template <typename T, bool kGpu, int NT>
void launch_mma(const void* x, const TokenRows& rows, std::int64_t tiles,
                const detail::WeightArgs& w, void* out, cudaStream_t stream,
                const SortExport& order = {}) {
  const unsigned row_tiles = static_cast<unsigned>((w.n + 15) / 16);
  // Dense tiles are all full: one CTA each (up to grid.y's 65535). Grouped grids are upper
  // bounds: enough CTAs for a few waves walk the planned tiles, instead of a CTA per bound.
  std::int64_t y = std::min<std::int64_t>(tiles, 65535);
  TokenRows routed = rows;
  // A routed batch with each warp on two row tiles with the same x, as for dense 5 to 16 tokens
  // below (MXFP4_CUDA_KERNEL=route_r2 / route_r1 force it on or off). f16 takes tiles of 16 only
  // there (the one-row-tile kernel has no 16-token loop for f16).
  const bool route_r2 = NT == 1 && rows.route_ids != nullptr && rows.route_sixteens &&
                        forced_kernel() != "route_r1" &&
                        (forced_kernel() == "route_r2" || rows.route_pairs >= kRouteR2Pairs);
  if constexpr (!std::is_same_v<T, __nv_bfloat16>) routed.route_sixteens = route_r2;
  if (rows.route_ids != nullptr) {
    // Tiles per round: as many as keep about two CTAs per SM busy (rounds x row tiles). (More
    // CTAs with fewer tiles each, all 8 warps on one tile or rounds for four CTAs per SM, and
    // fewer, for one: each the same or slower at T = 1 to 16, an H100, session 10.)
    const std::int64_t enough = 2 * std::int64_t{current_device_facts().multiprocessors};
    const std::int64_t ctas_x = route_r2 ? (row_tiles + 1) / 2 : row_tiles;
    int groups = kMaxRouteGroups;
    while (groups > 1 && ctas_x * ((tiles + groups - 1) / groups) < enough)
      groups /= 2;
    routed.route_groups = groups;
    routed.route_min_ctas = current_device_facts().multiprocessors;
    y = (tiles + groups - 1) / groups;  // rounds
  }
  if (rows.tile_list != nullptr || rows.route_ids != nullptr) {
    y = std::min<std::int64_t>(y, std::max<std::int64_t>(1, 2112 / row_tiles));
  }
  if (y == 0) return;
  // Grouped tiles of 8 (gather_linear's smallest class, with its class of 16-token tiles in the
  // same launch where rows.tile_list16 names it): rounds of up to four tiles per CTA, each warp on
  // two row tiles (kRounds). Measured on an H100 (bench/RESULTS.md, session 22), GPT-OSS top-4 of
  // 128, uniform routing, against a launch per class with one tile per CTA and step: T = 32 /
  // 128 / 256 gate_up 435 / 705 / 794 -> 341 / 553 / 622 us, down 221 / 352 / 399 -> 183 / 284 /
  // 319; skewed routing (both classes empty) 1-2 us faster, one launch fewer. Rounds alone, or
  // with one row tile per warp, gained less, and a grid of one wave (fewer CTAs, more tiles
  // each) lost 15% where the classes are busy. MXFP4_CUDA_KERNEL=moe_split16 keeps the launch
  // per class (tests).
  if (NT == 1 && rows.tile_list != nullptr && forced_kernel() != "moe_split16") {
    routed.route_groups = kMaxRouteGroups;
    routed.route_min_ctas = current_device_facts().multiprocessors;
    return launch_variant<T, kGpu, 1, false, 2, 1, 2, true>(
        dim3(row_tiles, static_cast<unsigned>(y)), x, routed, tiles, w, out, stream);
  }
  const dim3 grid(row_tiles, static_cast<unsigned>(y));
  const bool dense = rows.tile_list == nullptr && rows.route_ids == nullptr;
  // A forced decode variant (tests, tuning) takes precedence over the rules below.
  const std::string& forced = forced_kernel();
  const bool decode_forced = forced.rfind("decode", 0) == 0;
  // Long rows: each warp streams 64 blocks or more (Llama-70B's K = 8192 and 28672; not
  // GPT-OSS's 2880 or 4096).
  const bool long_rows = w.k / kBlockSize >= 64 * (kWarps / 2);
  if constexpr (NT <= 2) {
    // Each warp two row tiles with the same x, two CTAs per SM, from 5 tokens and, on long rows,
    // from 1, where their CTAs still fill nine tenths of those slots. Measured on an H100
    // (bench/RESULTS.md): at M = 8 and 16 (session 6) Llama-70B up and down 59.0 / 57.6 and
    // 71.3 / 70.2 us against 66.6 / 66.9 and 90.5 / 88.3 on one row tile, the smaller shapes
    // (90-180 such CTAs) within a few percent either way; at M = 1-4 on long rows (session 11)
    // Llama-70B up 54.7-56.0 us and down 52.0-53.7 against 58.3-59.3 and 58.8-60.7 for the CTAs
    // of two row tiles below (14% fewer instructions per weight byte), where on GPT-OSS and
    // 4096 x 4096 it was 2-10% slower. MXFP4_CUDA_KERNEL=decode_r2 forces it (tests).
    const std::int64_t ctas_r2 = (std::int64_t{row_tiles} + 1) / 2 * y;
    const std::int64_t slots = 2 * std::int64_t{current_device_facts().multiprocessors};
    const bool fills = ctas_r2 * 10 >= 9 * slots;
    if (dense &&
        (forced == "decode_r2" || (!decode_forced && (rows.rows > 4 || long_rows) && fills))) {
      return launch_variant<T, kGpu, NT, false, 2, 1, 2>(grid, x, rows, tiles, w, out, stream);
    }
  }
  if constexpr (NT == 1) {
    // Long rows at decode, where the kernel above does not fill its slots: CTAs of two 16-row
    // tiles, four warps splitting K for each. Measured on an H100 (bench/RESULTS.md, session 4),
    // M <= 4: Llama-70B up and down 59 us (87% of copy) against 63-66 us; shorter rows lose
    // (fewer CTAs), and so does M = 8 on Llama-70B up (x loads of 8 tokens).
    if (dense && (forced == "decode_rows2" || (!decode_forced && rows.rows <= 4 && long_rows))) {
      return launch_variant<T, kGpu, 1, false, 3, 2>(grid, x, rows, tiles, w, out, stream);
    }
  }
  if constexpr (NT == 1) {
    if (rows.route_ids != nullptr) {
      if (route_r2)
        return launch_variant<T, kGpu, 1, true, 2, 1, 2>(grid, x, routed, tiles, w, out, stream,
                                                         order);
      return launch_variant<T, kGpu, 1, true, 3>(grid, x, routed, tiles, w, out, stream, order);
    }
    if (pick_ctas(std::int64_t{row_tiles} * y, 3, 4) == 4) {
      return launch_variant<T, kGpu, 1, false, 4>(grid, x, rows, tiles, w, out, stream);
    }
    return launch_variant<T, kGpu, 1, false, 3>(grid, x, rows, tiles, w, out, stream);
  } else if constexpr (NT == 2) {
    // (f16: two CTAs per SM; at three, its f16 and split-x steps spill 64 bytes, ptxas -v.)
    constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
    if (kBf16 && pick_ctas(std::int64_t{row_tiles} * y, 2, 3) == 3) {
      return launch_variant < T, kGpu, 2, false,
             kBf16 ? 3 : 2 > (grid, x, rows, tiles, w, out, stream);
    }
    return launch_variant<T, kGpu, 2, false, 2>(grid, x, rows, tiles, w, out, stream);
  } else {
    return launch_variant<T, kGpu, NT, false, 2>(grid, x, rows, tiles, w, out, stream);
  }
}

}  // namespace

// The kernel choice forced by MXFP4_CUDA_KERNEL (empty: none), read once.
const std::string& forced_kernel() {
  static const std::string forced = [] {
    const char* env = std::getenv("MXFP4_CUDA_KERNEL");
    return std::string(env != nullptr ? env : "");
  }();
  return forced;
}

KernelChoice choose_kernel(DType x_dtype, std::int64_t tokens, std::int64_t n, std::int64_t k) {
  const std::string& forced = forced_kernel();
  const bool gemm_ok = x_dtype == DType::bf16;  // the sm_80 GEMM; the wgmma GEMM takes f16 too
  const bool sm90_ok = (gemm_ok || x_dtype == DType::f16) && sm90_gemm_available();
  if (gemm_ok && forced == "gemm64") return {true, 64};
  if (gemm_ok && forced == "gemm128") return {true, 128};
  if (sm90_ok && forced == "wgmma128") return {true, 128, true};
  if (sm90_ok && forced == "wgmma256") return {true, 256, true};
  if (sm90_ok && forced == "wgmma_stream") return {true, 256, true, 128, false, true};
  if (sm90_ok && forced == "wgmma_stream128") return {true, 128, true, 128, false, true};
  if (sm90_ok && forced == "wgmma256r") return {true, 128, true, 256};
  if (sm90_ok && forced == "wgmma64r") return {true, 128, true, 64};
  // (128-token tiles of 192 rows, three computing warpgroups: gather_linear's class of 33-128
  // tokens; dense, for measurement.)
  if (sm90_ok && forced == "wgmma192r") return {true, 128, true, 192};
  if (sm90_ok && forced == "wgmma64k") return {true, 128, true, 64, true};
  if (sm90_ok && forced == "wgmma64t") return {true, 64, true, 64};
  if (sm90_ok && forced == "wgmma64tk") return {true, 64, true, 64, true};
  if (sm90_ok && forced == "wgmma192") return {true, 192, true};
  if (sm90_ok && forced == "wgmma192k") return {true, 192, true, 64, true};
  // (bf16; f16 x runs 256-token tiles of 128 rows instead, launch_sm90_gemm.)
  if (sm90_ok && forced == "wgmma256k") return {true, 256, true, 64, true};
  if (sm90_ok && forced == "wgmma_stream192") return {true, 192, true, 128, false, true};
  const KernelChoice decode{false, tokens <= 8 ? 8 : tokens <= 16 ? 16 : 32};
  if (forced.rfind("decode", 0) == 0 || tokens <= 16) return decode;
  const std::int64_t sms = current_device_facts().multiprocessors;
  // The weight's 256-row tiles fill three quarters of the SMs (one 128-token tile each).
  const bool rows256_fill = (n + 255) / 256 * 4 >= 3 * sms;
  // f16 x without the Hopper GEMM: the decode kernel (its 32-token tiles). On Hopper f16 takes
  // bf16's tiles and rules below: f16 wgmma on f16 x runs as fast as bf16 on the same tiles
  // (session 18; bench/RESULTS.md, session 19, for f16 on bf16's rules against cuBLAS f16).
  if (!sm90_ok && !gemm_ok) return decode;
  // The GEMM needs enough 128-row weight tiles to fill the card; otherwise the decode kernel's
  // 16-row tiles and in-CTA split of K keep more SMs busy. Measured on an H100 at M = 64
  // (bench/RESULTS.md): the sm_80 GEMM wins from N = 8192 (64 tiles) and loses at N <= 5760.
  const std::int64_t weight_tiles = (n + 127) / 128;
  // wgmma GEMM (bench/RESULTS.md, session 5, an H100 sweep of every tile shape at M = 64, 256
  // and 1024 on the five dense shapes; each rule below picked the fastest there):
  // - 33 to 64 tokens: 256-row tiles where they fill three quarters of the SMs (one 128-token
  //   tile at width 64; since session 12 up to 128 tokens, see below);
  // - 65 to 256 tokens: 256-token tiles where the 128-row weight tiles alone fill the SMs, else
  //   128-token tiles of 128 rows where they fill 90% of the SMs, else of 64 rows;
  // - more: 256-token tiles (fastest from M = 1024).
  // Session 7 (an H200, M = 64 and 256), where few 64-row tiles meet the SMs (one computing
  // warpgroup of a CTA decodes its tile's weight one latency at a time, so a tile's k-tiles
  // take turns on one warp per scheduler):
  // - 33 to 64 tokens, unless 256-row tiles fill three quarters of the SMs: 64-token tiles of 64
  //   rows (stages half the size, so twice as many), split K in two over a cluster where the
  //   pairs fit one per SM (4096x4096: 14.7 us against 20.7; GPT-OSS down 11.9 against 15.1),
  //   else two computing warpgroups per tile taking alternate k-tiles (GPT-OSS gate_up 13.3
  //   against 22.3, Llama-70B down 98.8 against 126);
  // - 65 to 256 tokens on 64-row tiles: two computing warpgroups per tile where the tiles fit one
  //   per SM (4096x4096 M = 256: 20.4 against 22.7, GPT-OSS down 15.4 against 16.8).
  // Session 17 (an H100, M = 17, 24, 32): 17 to 32 tokens take the same tiles as 33 to 64 (at
  // width 32), not the decode kernel's 32-token tiles or the sm_80 GEMM's 64-token ones, which
  // were up to 4x slower and below cuBLAS: Llama-70B up 87.5-88.0 us against 155.7-158.8, down
  // 83.0-84.6 against 335.2-345.4 (cuBLAS 162-168), GPT-OSS gate_up 12.0-12.2 against
  // 22.1-26.0, down 9.8-10.0 against 12.0-13.8, 4096x4096 12.3 against 14.1-16.0; each rule's
  // pick the fastest of the four kernels measured at each M.
  if (sm90_ok && tokens > 16) {
    // The rules for 192- and 256-token tiles of 64 rows apply under
    // MXFP4_CUDA_KERNEL=wgmma_cpasync(_staged) too, so that its tests meet them loaded by cp.async.
    const bool tile_rules = forced.empty() || forced.rfind("wgmma_cpasync", 0) == 0;
    const std::int64_t tiles_w64 = (n + 63) / 64;  // 64-row weight tiles
    // 257 to 384 tokens: two 192-token tiles, where 256-token ones would take a second tile
    // mostly empty and 128-token ones three (an H100, session 20, M = 257 / 300 / 320 / 384
    // against the rules before, stream-K on 128-token tiles where K <= 4096, else 256-token
    // tiles; bench/RESULTS.md):
    // - 64-row tiles with two computing warpgroups on alternate k-tiles where they fit one wave:
    //   4096x4096 23.5-24.4 us against 32.1-32.5 (cuBLAS 18.8-21.2), GPT-OSS down 17.4-18.0
    //   against 21.7 (10.8-14.4); on GPT-OSS gate_up (two waves) 34.7-36.2 against 31.2-31.6;
    // - else 128-row tiles where they fit one wave: GPT-OSS gate_up 29.2-29.8 (cuBLAS 18.0-29.5),
    //   Llama-70B down 256.7-259.4 against 306.3-307.5 (180.5-222.3);
    // - else stream-K (K of at least 2048, as for 256-token tiles): Llama-70B up 271.1-272.9
    //   against 321.7-325.7 (190.0-246.3; whole 192-token tiles 272.1-275.8).
    if (tile_rules && tokens > 256 && tokens <= 384) {
      if (2 * tiles_w64 <= sms) return {true, 192, true, 64, true};
      if (weight_tiles * 2 <= sms || k < 32 * 64) return {true, 192, true};
      return {true, 192, true, 128, false, true};
    }
    // 385 to 512 tokens (bf16): 256-token tiles of 64 rows with two computing warpgroups on
    // alternate k-tiles where they fit one wave (an H100, session 20, M = 385 / 400 / 448 / 512:
    // 4096x4096 27.6 / 27.7 / 27.8 / 28.0 us against 33.2 / 32.8 / 33.0 / 32.8, GPT-OSS down
    // 20.4 / 20.4 / 20.7 / 20.9 against 24.1 / 23.9 / 23.9 / 23.8; on two waves, GPT-OSS gate_up,
    // 40.3-41.7 against 33.4-33.6). (f16 x has no such kernel, launch_sm90_gemm.)
    if (tile_rules && x_dtype == DType::bf16 && tokens > 384 && tokens <= 512 &&
        2 * tiles_w64 <= sms) {
      return {true, 256, true, 64, true};
    }
    // Stream-K over 256-token tiles of 128 rows (sm90_gemm.cu), where whole tiles would leave
    // SMs idle and each CTA's run is long enough to pay for its stored sums (128 KiB each), both
    // measured on an H100 (bench/RESULTS.md, session 14):
    // - 129 to 256 tokens with K of at least 8192 (128 k-tiles): Llama-70B down M = 192 / 256
    //   150 / 175 us against 208 / 208 (cuBLAS 185 / 181), up 150 / 175 against 152 / 178;
    //   with K = 2880-4096 its stored sums cost more than the idle SMs (4096x4096 M = 256 34 us
    //   against 19);
    // - more tokens, where the 256-token tiles fill one wave and at most a tenth of another:
    //   GPT-OSS gate_up M = 768 (135 tiles) 45-48 us against 60; with K of at least 2048 (32
    //   k-tiles; not measured shorter, where the stored sums weigh more).
    const std::int64_t tiles256 = (tokens + 255) / 256 * ((n + 127) / 128);
    if (forced.empty() && tokens > 128 &&
        ((tokens <= 256 && k >= 128 * 64) ||
         (tiles256 > sms && 10 * tiles256 <= 11 * sms && k >= 32 * 64))) {
      return {true, 256, true, 128, false, true};
    }
    // 33 to 128 tokens, one 128-token tile of 256 rows per weight tile, where those fill three
    // quarters of the SMs: measured on an H200 (session 12), Llama-70B up at M = 65 / 96 / 128
    // 114.4 / 114.8 / 114.7 us against 234.3 / 228.5 / 212.4 on 256-token tiles of 128 rows (two
    // waves of tiles whose decode costs as much at any width), cuBLAS 115.8-123.3; from 160
    // tokens (two token tiles) 226 against 170-205 (and since the tail tile stays inside x,
    // session 13, 150 at M = 160).
    if (tokens <= 128 && rows256_fill) return {true, 128, true, 256};
    // (K of 16384 and more keeps one computing warpgroup per tile, with the last wave's split
    // of K over a cluster: an H100, session 20, Llama-70B down M = 17-64, f16 84.5-93.5 us
    // against 90.4-95.0, bf16 82.9-90.1 against 82.9-89.8.) Two computing warpgroups also where
    // the tiles fit half the SMs, with K split over a cluster of two as well (sm90_gemm.cu; an
    // H100, session 24, M = 17-64, one warpgroup per tile against two: 4096x4096 bf16 12.2-12.6 us
    // against 11.6-12.1, f16 13.2-13.7 against 12.1-12.7, GPU layout 11.4-11.6 against 10.9-11.3;
    // GPT-OSS down bf16 9.8-10.2 against 9.8-10.1, f16 10.5-10.9 against 10.1-10.5, GPU layout
    // 9.3-9.5 against 9.3-9.7).
    if (tokens <= 64) return {true, 64, true, 64, k < 256 * 64};
    if (tokens > 256) {
      // Whole tiles take about one tile's time per wave, however few fill the last one (an H100,
      // session 8: GPT-OSS gate_up on 256-token tiles 33.6 us at M = 512, 67-68 us from M = 576
      // to 1280), and a 128-token tile about 3/4 of a 256-token one (M = 1024: 360 of them in
      // 70.2 us, three waves, against 180 of 256 in 67.3, two). So 128-token tiles where their
      // waves cost a tenth less (M = 576: two waves of either).
      const std::int64_t waves256 = ((tokens + 255) / 256 * weight_tiles + sms - 1) / sms;
      const std::int64_t waves128 = ((tokens + 127) / 128 * weight_tiles + sms - 1) / sms;
      if (5 * waves128 < 6 * waves256) return {true, 128, true, 128};
      return {true, 256, true};
    }
    if (weight_tiles >= sms) return {true, 256, true};
    const std::int64_t tiles128 = weight_tiles * ((tokens + 127) / 128);
    if (tiles128 * 10 >= 9 * sms) return {true, 128, true, 128};
    // Two computing warpgroups per 64-row tile (alternate k-tiles) where the tiles fit one per
    // SM (an H100, session 9, M = 96 and 128: 4096x4096 15.2 us against 19.3, GPT-OSS down 12.4
    // against 14.7); where they fit half the SMs, with K split over a cluster of two as well
    // (sm90_gemm.cu; an H100, session 24, M = 96 / 128 against one warpgroup per tile with that
    // split: 4096x4096 bf16 14.3 / 14.2 us against 14.8 / 14.9, f16 14.8 / 14.9 against 16.6 /
    // 16.5, GPU layout 13.7 / 13.4 against 14.0 / 14.1; GPT-OSS down bf16 11.8 / 11.9 against
    // 11.9 / 12.0, f16 12.4 / 12.3 against 13.0 / 13.1, GPU layout 11.3 / 11.5 against 11.2 /
    // 11.2).
    const std::int64_t tiles64 = tiles_w64 * ((tokens + 127) / 128);
    // 129 to 256 tokens (bf16) where those 64-row tiles take more than a wave but one 256-token
    // tile per 64 rows fits one, with two warpgroups on alternate k-tiles (an H100, session 20,
    // GPT-OSS gate_up M = 200 / 256: 20.2 / 20.3 us against 24.7 / 24.9).
    if (tile_rules && x_dtype == DType::bf16 && tokens > 128 && tiles64 > sms && tiles_w64 <= sms) {
      return {true, 256, true, 64, true};
    }
    return {true, 128, true, 64, tiles64 <= sms};
  }
  if (tokens <= 64) return weight_tiles >= 64 ? KernelChoice{true, 64} : decode;
  return {true, 128};
}

void launch_decode(const void* x, DType x_dtype, const TokenRows& rows, std::int64_t tiles,
                   int tile_tokens, const detail::WeightArgs& w, void* out, cudaStream_t stream,
                   const SortExport& order) {
  auto run = [&](auto zero, auto gpu) {
    using T = decltype(zero);
    constexpr bool kGpu = decltype(gpu)::value;
    if (tile_tokens == 8) {
      launch_mma<T, kGpu, 1>(x, rows, tiles, w, out, stream, order);
    } else if (tile_tokens == 16) {
      launch_mma<T, kGpu, 2>(x, rows, tiles, w, out, stream);
    } else {
      launch_mma<T, kGpu, 4>(x, rows, tiles, w, out, stream);
    }
  };
  auto by_layout = [&](auto zero) {
    if (w.gpu_layout) {
      run(zero, std::true_type{});
    } else {
      run(zero, std::false_type{});
    }
  };
  if (x_dtype == DType::f16) {
    by_layout(__half{});
  } else {
    by_layout(__nv_bfloat16{});
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
          static_cast<T*>(a.out), a.w.n, a.w.k, a.w.gpu_layout);
    });
    check_launch("linear_simple_kernel");
    return;
  }
  TokenRows rows;
  rows.rows = a.m;
  const KernelChoice choice = choose_kernel(a.x_dtype, a.m, a.w.n, a.w.k);
  const std::int64_t tiles = (a.m + choice.tile_tokens - 1) / choice.tile_tokens;
  if (choice.sm90) {
    launch_sm90_gemm(a.x, a.x_dtype, rows, tiles, choice.tile_tokens, choice.tile_rows, a.w, a.out,
                     stream, choice.k_halves, choice.stream_k, a.workspace, a.workspace_bytes);
  } else if (choice.gemm) {
    launch_gemm(a.x, rows, tiles, choice.tile_tokens, a.w, a.out, stream);
  } else {
    launch_decode(a.x, a.x_dtype, rows, tiles, choice.tile_tokens, a.w, a.out, stream);
  }
}

}  // namespace mxfp4::cuda
