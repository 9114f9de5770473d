// Tiled MXFP4 GEMM for many tokens on Hopper (sm_90a), bf16 or f16 activations, with warpgroup
// MMA: y[m, n] = sum_k x[m, k] W[n, k] + b[n].
//
// Warp-specialized: a CTA has one loading warpgroup and one, two or three computing warpgroups
// (which setmaxnreg gives most of the registers). Computing warpgroup q owns weight rows [64 q, 64
// q + 64) of each m64 sub-tile and every token of the tile (64, 128 or 256), as one wgmma m64nTk16
// accumulator per sub-tile; or, for 64-row tiles, two computing warpgroups share the rows and take
// alternate k-tiles (kWGSplitK), adding their sums at the end of the tile. The weight is the MMA's
// A operand and comes from registers: each thread decodes its rows' E2M1 codes and multiplies them
// by the block's scale in bf16 (exact, as in sm80_gemm.cu), so the tensor cores see exactly the
// reference's weight values. x is the B operand, read by the tensor cores straight from shared
// memory in the 128-byte-swizzled K-major layout.
//
// Stages of 64 k (two MXFP4 blocks) of x, of the packed weight and of its scales go through a
// ring of kStages shared-memory slots, handed between the warpgroups with mbarriers (Ring).
// The loaders fetch x and the weight with TMA (x rows in tile order) or cp.async (gathered
// rows), and the scales through registers as the bf16 pairs the decode multiplies by. The
// computing warpgroups never wait at a CTA-wide barrier: each decodes its next block while the
// tensor cores work on the current one (two register sets of A fragments, alternating), and
// releases a slot once the wgmma groups reading it are done. The epilogue stages 64-token
// chunks in buffers of its own, so the loaders fill the ring with the next tile meanwhile.
// Measured against the previous design (all threads loading and computing, a __syncthreads
// per stage): M = 4096 from 0.61-0.65x to 0.90-0.97x cuBLAS bf16 on an H100.
//
// A lane (g, t) of a warp needs, for its rows g and g + 8 and each k16 step, the codes of
// elements 2t, 2t+1, 2t+8, 2t+9 of the step: bytes t, t+4, t+8 and t+12 of the row's 16-byte
// block, picked out of one 16-byte shared-memory load with three byte permutes.
//
// f16 x: f16 wgmma on x as it lands, the weight decoded to f16 and scaled in f16, which is exact
// where the scaled values are f16 numbers: scales in [114, 140] (detail::f16_prescale_ok), as
// real weights' are. The loaders flag each stage with a scale outside; the computing threads run
// such a stage in bf16 instead (every scale exact there), x split exactly into two bf16 parts,
// x = hi + lo (hi = x rounded to bf16; the rest has at most 3 significant bits), each wgmma run
// on both (sm90_compute's split_stage).
//
// Persistent CTAs walk (token tile, weight tile) pairs in raster groups of 8 token tiles
// (gemm_tiles.cuh), with TokenRows for the dense and the grouped (MoE) layouts. Where few tiles
// meet the SMs, each tile's K is split over a cluster of two (or four) CTAs instead; the others
// store their sums in the first's shared memory (distributed shared memory), which alone adds them
// and runs the epilogue.
#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/backend.hpp"
#include "cuda/gemm_tiles.cuh"
#include "cuda/linear_kernels.hpp"
#include "cuda/wgmma.cuh"

namespace mxfp4::cuda {

namespace {

constexpr int kTileK = 2 * kBlockSize;

// kWG computing warpgroups (1, 2 or 3) of kSub m64 sub-tiles each, plus one loading warpgroup: a
// CTA covers kTileW = 64 kWG kSub weight rows. Three (128-token tiles of 192 rows, gather_linear's
// experts of 33-128 tokens) put a third warp on each scheduler to hide the decode's latencies
// (ncu, session 25: the two computing warps of a 128-token tile of 256 rows issued once per 6.3
// cycles each, the tensor pipe 56% busy). kFlags: f16 x, whose stages carry the loaders' flags
// (and scale bytes, not bf16 pairs).
// kWG = kWGSplitK (a value no warpgroup count takes): two computing warpgroups on the same 64 kSub
// rows, taking alternate k-tiles (their sums added at the end of each tile), so that a 64-row tile
// keeps two warpgroups decoding.
inline constexpr int kWGSplitK = 5;

// The (token tile, weight tile) pairs a launch covers, [begin, end) in raster order (end 0: all).
struct PidRange {
  int begin = 0, end = 0;
};

// Stream-K (dense, 128-, 192- or 256-token tiles of 128 rows): the grid's CTAs split the (tile,
// k-tile) units of the whole GEMM into equal runs, so that tiles that would fill few waves still
// keep every SM busy. A run covers the tail of one tile, whole tiles and the head of another; a CTA
// whose run ends inside a tile stores its sums for it in `partials` (slice blockIdx.x) and sets its
// flag, and the CTA that computes the tile's last k-tile adds the sums of every earlier CTA on that
// tile to its own and runs the epilogue. Each CTA computes its pieces last to first: the head it
// stores first, the tail it finishes last, so no CTA waits for sums computed after its own.
// flags: one word per CTA, zero at launch (the host clears them).
// The runs: CTA c starts at unit c * per + min(c, extra) (`extra` CTAs take one more).
struct StreamK {
  float* partials = nullptr;
  unsigned* flags = nullptr;
  int per = 0, extra = 0;
};

template <int kTokens, int kSub, int kWG, bool kFlags = false>
struct Sm90Config {
  static constexpr bool kSplitK = kWG == kWGSplitK;
  static constexpr int kConsumerWGs = kSplitK ? 2 : kWG;
  static constexpr int kRowWGs = kSplitK ? 1 : kWG;  // warpgroups side by side on the rows
  static constexpr int kConsumers = 128 * kConsumerWGs;
  static constexpr int kThreads = kConsumers + 128;
  static constexpr int kTileW = 64 * kRowWGs * kSub;
  // Registers per thread: at launch, what ptxas gives each thread under the launch bounds (all
  // it may: the kernel holds setmaxnreg), then the loading warpgroup keeps kProducerRegs (it
  // holds a 256-token tile's x rows) and the computing ones share out the rest. Asking for more
  // than the CTA was launched with would make setmaxnreg.inc wait forever. (Three computing
  // warpgroups: 512 threads, 128 each at launch; 152 each after.)
  static constexpr int kLaunchRegs = kConsumerWGs == 2 ? 168 : 128;
  // (256-token tiles of 64 rows: 56, so that the computing warpgroups' 224 hold their 128
  // accumulators without spilling; with 88 ptxas spilled 12 bytes.)
  static constexpr int kProducerRegs = kTokens >= 192 && !(kSplitK && kTokens == 256) ? 88 : 56;
  static constexpr int kConsumerRegs =
      (kLaunchRegs * (kConsumerWGs + 1) - kProducerRegs) / kConsumerWGs / 8 * 8;
  static constexpr int kXBytes = kTokens * kTileK * 2;  // [token][64 k] bf16, swizzled
  static constexpr int kWOffset = kXBytes;
  static constexpr int kWBytes = kTileW * 2 * kBlockBytes;
  static constexpr int kSOffset = kWOffset + kWBytes;
  static constexpr int kSBytes = 2 * kTileW * 4;  // [block][row] scales as bf16 pairs
  // kFlags (f16 x): a byte per loading warp, nonzero where one of its scales is outside f16's
  // range (sm90_load).
  static constexpr int kFOffset = kSOffset + kSBytes;
  static constexpr int kStageBytes = (kFOffset + (kFlags ? 4 : 0) + 1023) / 1024 * 1024;
  // The epilogue stages 64 tokens x 64 rows at a time per computing warpgroup, apart from the
  // stages, which the loading warpgroup is already filling with the next tile.
  static constexpr int kChunk = 64;
  static constexpr int kOutStride = 64 + 8;  // elements per token row of a staged chunk
  // kFlags: the buffer also takes the hi part of a flagged stage's x during the k-loop
  // (sm90_compute's split_stage); where the warpgroups split K, one per warpgroup, the second
  // past the first's epilogue chunk (the first may still be storing a tile while the second
  // starts the next).
  static constexpr int kEpilogueBytes = kConsumerWGs * kChunk * kOutStride * 2;
  static constexpr int kHiStride =
      ((kXBytes > kChunk * kOutStride * 2 ? kXBytes : kChunk * kOutStride * 2) + 1023) / 1024 *
      1024;
  static constexpr int kHiBytes = kFlags ? (kSplitK ? kHiStride : 0) + kXBytes : 0;
  static constexpr int kOutBytes = kHiBytes > kEpilogueBytes ? kHiBytes : kEpilogueBytes;
  // kSplitK: the second warpgroup's sums, handed to the first at the end of a tile in
  // kRedParts parts (bf16: an eighth of the buffer, two stages more for 192-token tiles and room
  // for 256-token ones). f16 x hands them over whole: with parts, compute-sanitizer's racecheck
  // reported hazards between one part's reads and the next part's writes where warpgroup 0 alone
  // had split a flagged stage (barrier 5, 128 threads) in the tile; a minimal kernel with the
  // same barriers (bench/experiments/racecheck-parts.cu) draws the same reports without any race,
  // as does the whole-buffer handover there, but not here; not understood, so not taken. (Racecheck
  // goes by how many barriers each warpgroup has met, session 23: sm90_compute balances the
  // epilogue's; a flagged stage's split is met by one warpgroup, in numbers the other cannot know.)
  static constexpr int kRedParts = kFlags ? 1 : 8;
  static constexpr int kRedBytes = kSplitK ? 128 * kSub * (kTokens / 2) * 4 / kRedParts : 0;
  static constexpr int kXRowBytes = kTokens / 16 * 128 * 4;  // cp.async loaders' x rows
  static constexpr int kMaxStages = 16;
  static constexpr int kBarBytes = 2 * 8 * kMaxStages;  // full, empty
  static constexpr int kFixedBytes =
      kOutBytes + kRedBytes + kXRowBytes + kBarBytes + 1024;  // + alignment
  static constexpr int kSmemLimit = (kConsumerWGs == 1 ? 113 : 227) * 1024;
  static constexpr int kStages = (kSmemLimit - kFixedBytes) / kStageBytes < kMaxStages
                                     ? (kSmemLimit - kFixedBytes) / kStageBytes
                                     : kMaxStages;
  static constexpr int kOutOffset = kStages * kStageBytes;
  static constexpr int kRedOffset = kOutOffset + kOutBytes;
  static constexpr int kXRowOffset = kRedOffset + kRedBytes;
  static constexpr int kBarOffset = kXRowOffset + kXRowBytes;
  static constexpr int kSmemBytes = kStages * kStageBytes + kFixedBytes;
  // Split K over a cluster of `parts` CTAs: the others' partial sums fit this CTA's ring.
  static constexpr bool kFitsParts(int parts) {
    return (parts - 1) * kConsumers * kSub * (kTokens / 2) * 4 <= kStages * kStageBytes;
  }
  static_assert(kStages >= 4, "at least four stages");
  // (Also references the members only the sm_90a device code uses: nvcc's sm_80 and sm_89
  // passes, where the kernel is empty, reject unreferenced ones.)
  static_assert(kOutOffset < kXRowOffset && kRedOffset <= kXRowOffset && kRowWGs >= 1 &&
                    kBarOffset + kBarBytes <= kSmemBytes,
                "shared memory layout");
  static_assert(kProducerRegs + kConsumerWGs * kConsumerRegs <= kLaunchRegs * (kConsumerWGs + 1) &&
                    kProducerRegs % 8 == 0 && kConsumerRegs % 8 == 0,
                "setmaxnreg must not ask for more registers than the CTA was launched with");
  static_assert(kWOffset % 1024 == 0, "swizzle atoms: 1 KiB aligned");
};

// How the loading warpgroup fetches x (sm90_load).
enum LoadMode : int { kLoadCpAsync = 0, kLoadTmaBox = 1 };

#if defined(MXFP4_SM90A_DEVICE)

// wgmma with N tokens (32, 64, 128, 192 or 256), the accumulators of the first N / 2 registers.
// A partly filled tile (the last of a dense batch, a mixture-of-experts expert's tokens) runs
// at the width its tokens need.
template <int N, bool kF16 = false>
__device__ __forceinline__ void wgmma_n(float* d, const std::uint32_t (&a)[4], std::uint64_t desc) {
  if constexpr (N == 256) {
    sm90::wgmma_m64n256k16<kF16>(d, a, desc);
  } else if constexpr (N == 192) {
    sm90::wgmma_m64n192k16<kF16>(d, a, desc);
  } else if constexpr (N == 128) {
    sm90::wgmma_m64n128k16<kF16>(d, a, desc);
  } else if constexpr (N == 64) {
    sm90::wgmma_m64n64k16<kF16>(d, a, desc);
  } else {
    sm90::wgmma_m64n32k16<kF16>(d, a, desc);
  }
}

// Bytes t, t+4, t+8, t+12 of a 16-byte block (sel = t | (t + 4) << 4), lowest first.
__device__ __forceinline__ std::uint32_t lane_bytes(const uint4& v, std::uint32_t sel) {
  const std::uint32_t lo = __byte_perm(v.x, v.y, sel);
  const std::uint32_t hi = __byte_perm(v.z, v.w, sel);
  return __byte_perm(lo, hi, 0x5410);
}

// The pipeline: stage `it` (counted over all of a CTA's tiles) lives in slot it % kStages. The
// loaders wait until the computing threads have released the slot (empty barrier), fetch the
// stage and arrive on the slot's full barrier, which completes when the copies have landed:
// TMA counts its bytes there, cp.async of x arrives there by itself when done. The computing
// threads wait on the full barrier, and release a slot once the wgmma groups reading it are done,
// which they learn only after issuing the next stage's first group.
template <int kStages>
struct Ring {
  std::uint32_t bars;  // shared address: full[kStages], empty[kStages]
  __device__ __forceinline__ std::uint32_t full(std::uint32_t it) const {
    return bars + 8 * (it % kStages);
  }
  __device__ __forceinline__ std::uint32_t empty(std::uint32_t it) const {
    return bars + 8 * (kStages + it % kStages);
  }
};

// Stages ahead of their use that the loading warpgroup loads the scales (sm90_load).
constexpr int kScaleAhead = 4;

// Split K (kParts CTAs of a cluster per tile): this CTA's part and its range of k stages.
struct KRange {
  int part, begin, end;
};
template <int kParts>
__device__ __forceinline__ KRange k_range(int ktiles) {
  const int part = kParts == 1 ? 0 : static_cast<int>(sm90::cluster_rank());
  const int per_part = (ktiles + kParts - 1) / kParts;
  return {part, per_part * part, min(ktiles, per_part * (part + 1))};
}

// Stream-K: the first unit of CTA c's run.
__device__ __forceinline__ int run_start(const StreamK& sk, int c) {
  return c * sk.per + min(c, sk.extra);
}
// The CTA whose run holds unit u.
__device__ __forceinline__ int run_holding(const StreamK& sk, int u) {
  const int long_units = sk.extra * (sk.per + 1);
  return u < long_units ? u / (sk.per + 1) : sk.extra + (u - long_units) / sk.per;
}

// Calls f(tile, tile_w, k) for this CTA's share of each of its tiles, k-tiles [k.begin, k.end):
// with kStream, the pieces of its run of units (stream-K, above) from last to first: a piece
// that ends before its tile's last k-tile stores its sums, one that ends there and starts past
// its first adds the earlier CTAs' (each decided from k alone, after the k-loop: kept as state
// across it, the piece's role made ptxas spill in the loop); else every tile pair of
// for_each_gemm_tile with the CTA's part of K (k_range; read per tile where kRangePerTile, as
// the computing warpgroups do: hoisted, ptxas allocated the 256-token split-K kernel's registers
// differently and spilled).
template <int kTokens, int kParts, bool kStream, bool kRangePerTile, typename F>
__device__ __forceinline__ void for_each_piece(const TokenRows& rows, int tiles_t, int tiles_w,
                                               int ktiles, const PidRange& pids, const StreamK& sk,
                                               F&& f) {
  if constexpr (!kStream) {
    const int first = static_cast<int>(blockIdx.x) / kParts;
    const int step = static_cast<int>(gridDim.x) / kParts;
    if constexpr (kRangePerTile) {
      for_each_gemm_tile(
          rows, tiles_t, tiles_w, kTokens,
          [&](const TokenRows::Tile& tile, int tile_w) {
            f(tile, tile_w, k_range<kParts>(ktiles));
          },
          first, step, pids.begin, pids.end);
    } else {
      const KRange range = k_range<kParts>(ktiles);
      for_each_gemm_tile(
          rows, tiles_t, tiles_w, kTokens,
          [&](const TokenRows::Tile& tile, int tile_w) { f(tile, tile_w, range); }, first, step,
          pids.begin, pids.end);
    }
  } else {
    // (The host keeps the units below 2^31.)
    const int c = static_cast<int>(blockIdx.x);
    const int lo = run_start(sk, c);
    for (int end = run_start(sk, c + 1); end > lo;) {
      const int pid = (end - 1) / ktiles;
      const int tile_start = pid * ktiles;
      const int begin = max(lo, tile_start);
      int tile_w = 0;
      // (Dense: no tile list.)
      const int first = gemm_tile_at(tiles_t, tiles_w, pid, tile_w) * kTokens;
      const TokenRows::Tile tile{
          0, first, static_cast<int>(min(rows.rows - first, std::int64_t{kTokens})), 0};
      f(tile, tile_w, KRange{0, begin - tile_start, end - tile_start});
      end = begin;
    }
  }
}

// Dense batches of at least a tile: the last, partial tile is moved back to end at the last
// token, so that its TMA boxes lie inside x. (TMA's zero fill of the rows past x's end slowed
// whole launches, measured on an H200 in session 12: 4096x4096 at M = 160 took 31.6 us against
// 19.9 at M = 256, the same grid.) The moved tile covers the previous tile's last tokens too,
// those before a multiple of kTokens: it computes them again and does not store them.
template <int kTokens>
__device__ __forceinline__ void shift_tail(const TokenRows& rows, TokenRows::Tile& tile) {
  if (rows.tile_list == nullptr && rows.rows >= kTokens) {
    tile.first = min(tile.first, rows.rows - kTokens);
    tile.count = kTokens;
  }
}
// The first token of a tile's chunk [q0, q0 + 64) to store: past the tokens at the start of a
// moved tail tile (shift_tail) that the previous tile stores, those before the next multiple of
// kTokens; 0 for every other tile. (Recomputed from the moved tile where needed rather than kept
// from shift_tail: kept live across the k-loop, it made ptxas spill.)
template <int kTokens>
__device__ __forceinline__ int tail_store_from(const TokenRows& rows, const TokenRows::Tile& tile,
                                               int q0) {
  if (rows.tile_list != nullptr) return 0;
  if constexpr ((kTokens & (kTokens - 1)) == 0) {
    return max(static_cast<int>(-tile.first & (kTokens - 1)) - q0, 0);
  } else {  // 192-token tiles
    return max(static_cast<int>((kTokens - tile.first % kTokens) % kTokens) - q0, 0);
  }
}

// Adds partial sums laid out [float4 q][thread] (kStride threads, src at this thread's first) to
// the accumulators of the first `width` tokens (accumulators 4 q .. 4 q + 3 hold tokens 8 q ..
// 8 q + 7), each float4 read by load.
template <int kStride, int kSub, int kAcc, typename Load>
__device__ __forceinline__ void add_sums(float (&acc)[kSub][kAcc], const float4* src, int width,
                                         Load load) {
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
#pragma unroll
    for (int i = 0; i < kAcc; i += 4) {
      if (2 * i < width) {
        const float4 v = load(src + (j * kAcc + i) / 4 * kStride);
        acc[j][i] += v.x;
        acc[j][i + 1] += v.y;
        acc[j][i + 2] += v.z;
        acc[j][i + 3] += v.w;
      }
    }
  }
}

// Stores the accumulators of the first `width` tokens as add_sums reads them (to L2: another SM
// reads them).
template <int kStride, int kSub, int kAcc>
__device__ __forceinline__ void store_sums(const float (&acc)[kSub][kAcc], float4* dst, int width) {
#pragma unroll
  for (int j = 0; j < kSub; ++j) {
#pragma unroll
    for (int i = 0; i < kAcc; i += 4) {
      if (2 * i < width) {
        __stcg(dst + (j * kAcc + i) / 4 * kStride,
               make_float4(acc[j][i], acc[j][i + 1], acc[j][i + 2], acc[j][i + 3]));
      }
    }
  }
}

// Stream-K's flags: a release store after the sums, an acquire load before reading them.
__device__ __forceinline__ void store_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The loading warpgroup (128 threads). Thread tid copies 16-byte chunk tid % 8 of token rows
// tid / 8 + 16 i; and block tid % 2 of weight rows (tid + 128 j) / 2 (j < kTileW / 64) with its
// scale, which it converts to the bf16 pair the decode multiplies by (f16 x: it stores the byte
// and flags the stage where a scale is outside f16's exact range, store_scales).
//
// kLoadTmaBox (x rows in tile order: dense, or staged by gather_linear): thread 0 fetches each
// stage's x box (rows tile.first ...) and weight box with TMA instead, the tensor maps
// describing x [rows, k] (128-byte swizzle, the layout above) and the blocks [experts * n,
// k / 2]; TMA zero-fills what lies past either's end. An x box has rows.x_box_rows rows: fewer
// than a tile's where a dense batch has fewer tokens (the rows of the tile past them, never
// stored, are left as they were), so that no box reaches past x's end (with shift_tail).
// The full barrier then completes
// when the boxes' bytes have landed and every loader has stored its scales. (TMA boxes of single
// gathered rows measured 2-3x slower than cp.async, hence the staging.) The bf16 factor pair a
// stage holds for a block's E8M0 scale: 2^(s - 127) for standard blocks, 2^(s - 1) for the GPU
// layout's (whose decode gives the values times 2^-126).
template <bool kGpu>
__device__ __forceinline__ std::uint32_t scale_pair(std::uint32_t s) {
  return kGpu ? detail::gpu_scale_bf16(s) : bf16_scale_pair(s);
}

template <typename T, int kTokens, int kSub, int kWG, int kLoad, int kParts, bool kStream,
          bool kGpu>
__device__ __forceinline__ void sm90_load(std::uint8_t* smem, const T* __restrict__ x,
                                          const CUtensorMap& x_map, const CUtensorMap& xs_map,
                                          const CUtensorMap& w_map, const TokenRows& rows,
                                          int tiles_t, int tiles_w,
                                          const std::uint8_t* __restrict__ blocks,
                                          const std::uint8_t* __restrict__ scales, int n, int k,
                                          const PidRange& pids, const StreamK& sk) {
  constexpr bool kHalf = std::is_same_v<T, __half>;
  using C = Sm90Config<kTokens, kSub, kWG, kHalf>;
  constexpr int S = C::kStages;
  constexpr int kXPer = kTokens / 16;    // x chunks per thread and stage
  constexpr int kWPer = C::kTileW / 64;  // weight blocks per thread and stage
  const int tid = static_cast<int>(threadIdx.x);
  const int xc = tid & 7;
  const int lblk = tid & 1;
  const int nblk = k / kBlockSize;
  const int ktiles = (nblk + 1) / 2;
  const Ring<S> ring{static_cast<std::uint32_t>(__cvta_generic_to_shared(smem + C::kBarOffset))};

  // Per tile: this thread's x rows in shared memory, [i][tid] (~0: past the tile's tokens; no
  // other thread reads them). Per stage, an x chunk costs one multiply-add for its address.
  auto* xrow = reinterpret_cast<std::uint32_t*>(smem + C::kXRowOffset);
  const auto* x_bytes = reinterpret_cast<const std::uint8_t*>(x) + 16 * xc;
  const auto row_bytes = static_cast<std::uint32_t>(k) * 2u;
  const auto x_box_bytes = static_cast<std::uint32_t>(rows.x_box_rows * kTileK * 2);
  const auto source_box_bytes = static_cast<std::uint32_t>(rows.source_box_rows * kTileK * 2);
  const std::uint32_t smem_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  // The ring position of stage `it`, kept incrementally: slot it % S and the parity of its
  // round, (it / S) & 1.
  std::uint32_t slot = 0;
  std::uint32_t phase = 0;
  const std::uint32_t full_base = ring.full(0);
  const std::uint32_t empty_base = ring.empty(0);
  // This thread's scale pairs in a stage: [block lblk][row tid / 2 + 64 j], 256 bytes per j.
  const std::uint32_t sc_off = static_cast<std::uint32_t>(C::kSOffset) +
                               4u * static_cast<std::uint32_t>(lblk * C::kTileW + tid / 2);
  const std::int64_t srow = std::int64_t{64} * nblk;  // scale bytes between rows r and r + 64
  for_each_piece<kTokens, kParts, kStream, false>(
      rows, tiles_t, tiles_w, ktiles, pids, sk,
      [&](const TokenRows::Tile& listed, int tile_w, const KRange& range) {
        TokenRows::Tile tile = listed;
        shift_tail<kTokens>(rows, tile);
        const int kt_begin = range.begin;
        const int kt_end = range.end;
        const int w0 = tile_w * C::kTileW;
        // Staged x: an expert whose rows are a run of x_source reads them there.
        const bool in_place = rows.x_source != nullptr && tile.x_first1 != 0;
        const int x_first = tile.x_first1 - 1;
        const std::uint8_t* tile_x =
            in_place ? static_cast<const std::uint8_t*>(rows.x_source) + 16 * xc : x_bytes;
        if constexpr (kLoad == kLoadCpAsync) {
#pragma unroll
          for (int i = 0; i < kXPer; ++i) {
            const int local = tid / 8 + 16 * i;
            xrow[i * 128 + tid] =
                local >= tile.count ? ~0u
                : in_place          ? static_cast<std::uint32_t>(x_first + local)
                                    : static_cast<std::uint32_t>(rows.x_row_at(tile.first + local));
          }
        }
        // Weight rows w0 + tid / 2 + 64 j: one base address each for blocks and scales.
        const int wrow0 = w0 + tid / 2;
        const std::int64_t row0 = static_cast<std::int64_t>(tile.expert) * n + wrow0;
        const std::uint8_t* wsrc = blocks + row0 * (k / 2) + lblk * kBlockBytes;
        // Scales go through registers kScaleAhead stages ahead, so that their loads' latency is
        // hidden: each stage waits for the scales loaded that many stages before. (One stage
        // ahead, a stage took a whole load latency, ~580 cycles, whenever the computing threads
        // kept up: measured with the math switched off, bench/RESULTS.md session 6.)
        // Missing blocks get scale 1 (127): zero codes times a NaN scale would be NaN.
        // The per-stage path is kept short: this warpgroup has one warp per scheduler, so each
        // instruction costs its latency (ncu, session 7: ~90 instructions per stage took ~600
        // cycles and bounded the whole GEMM at 64-256 tokens).
        const std::uint8_t* sp = scales + row0 * nblk + lblk + 2 * kt_begin;
        const int kt_scaled = min(kt_end, (nblk - lblk + 1) / 2);  // block 2 kt + lblk exists
        bool row_ok[kWPer];
#pragma unroll
        for (int j = 0; j < kWPer; ++j)
          row_ok[j] = wrow0 + 64 * j < n;
        using ScaleBytes = std::uint8_t[kWPer];
        auto load_scales = [&](int kt, const std::uint8_t* p, ScaleBytes& v) {
#pragma unroll
          for (int j = 0; j < kWPer; ++j) {
            v[j] = kt < kt_scaled && row_ok[j] ? __ldg(p + j * srow) : std::uint8_t{127};
          }
        };
        // A stage's scales: bf16 pairs; f16 x: the bytes, and the warp's flag byte (a scale
        // outside f16's exact range: the computing threads run the stage in bf16, split_stage).
        auto store_scales = [&](std::uint8_t* st, const ScaleBytes& v) {
          if constexpr (kHalf) {
            bool outside = false;
#pragma unroll
            for (int j = 0; j < kWPer; ++j) {
              *reinterpret_cast<std::uint32_t*>(st + sc_off + 256 * j) = v[j];
              outside = outside || !detail::f16_prescale_ok(v[j], kGpu);
            }
            const bool any = __any_sync(~0u, outside);
            if ((tid & 31) == 0) st[C::kFOffset + (tid >> 5)] = any ? 1 : 0;
          } else {
#pragma unroll
            for (int j = 0; j < kWPer; ++j)
              *reinterpret_cast<std::uint32_t*>(st + sc_off + 256 * j) = scale_pair<kGpu>(v[j]);
          }
        };
        ScaleBytes ahead[kScaleAhead];
#pragma unroll
        for (int a = 0; a < kScaleAhead; ++a)
          load_scales(kt_begin + a, sp + 2 * a, ahead[a]);
        sp += 2 * kScaleAhead;
        for (int kt = kt_begin; kt < kt_end; ++kt) {
          ScaleBytes sv;
#pragma unroll
          for (int j = 0; j < kWPer; ++j)
            sv[j] = ahead[0][j];
#pragma unroll
          for (int a = 0; a + 1 < kScaleAhead; ++a) {
#pragma unroll
            for (int j = 0; j < kWPer; ++j)
              ahead[a][j] = ahead[a + 1][j];
          }
          load_scales(kt + kScaleAhead, sp, ahead[kScaleAhead - 1]);
          sp += 2;
          const std::uint32_t slot_off = slot * static_cast<std::uint32_t>(C::kStageBytes);
          if constexpr (kLoad != kLoadCpAsync) {
            // The slot's previous stage has been read (a fresh barrier passes parity 1 at once).
            sm90::mbarrier_wait(empty_base + 8 * slot, phase ^ 1u);
            store_scales(smem + slot_off, sv);
            if (tid == 0) {
              const std::uint32_t bar = full_base + 8 * slot;
              const std::uint32_t st_addr = smem_base + slot_off;
              sm90::mbarrier_arrive_expect_tx(
                  bar, (in_place ? source_box_bytes : x_box_bytes) + C::kWBytes);
              sm90::tma_load_2d(st_addr + C::kWOffset, &w_map, kt * 2 * kBlockBytes,
                                tile.expert * n + w0, bar);
              sm90::tma_load_2d(st_addr, in_place ? &xs_map : &x_map, kt * kTileK,
                                static_cast<int>(in_place ? x_first : tile.first), bar);
            } else {
              sm90::mbarrier_arrive(full_base + 8 * slot);
            }
          } else {
            sm90::mbarrier_wait(empty_base + 8 * slot, phase ^ 1u);
            std::uint8_t* st = smem + slot_off;
            // Rows past the tile's tokens are not loaded: they meet only output columns never
            // stored.
            const bool x_ok = 2 * kt + (xc >> 2) < nblk;
            const std::uint8_t* xk = tile_x + (x_ok ? std::int64_t{kt} * kTileK * 2 : 0);
#pragma unroll
            for (int i = 0; i < kXPer; ++i) {
              const int r = tid / 8 + 16 * i;
              const std::uint32_t row = xrow[i * 128 + tid];
              if (row != ~0u) {
                cp_async16(st + r * 128 + ((xc ^ (r & 7)) << 4),
                           xk + static_cast<std::uint64_t>(row) * row_bytes, x_ok ? 16 : 0);
              }
            }
            const bool w_ok = 2 * kt + lblk < nblk;
#pragma unroll
            for (int j = 0; j < kWPer; ++j) {
              const bool ok = w_ok && row_ok[j];
              cp_async16(
                  st + C::kWOffset + ((tid + 128 * j) >> 1) * 32 + lblk * 16,
                  ok ? wsrc + std::int64_t{64 * j} * (k / 2) + std::int64_t{kt} * 2 * kBlockBytes
                     : blocks,
                  ok ? 16 : 0);
            }
            cp_async_commit();
            // The full barrier counts this thread's copies as one arrival once they land (the
            // computing threads fence them for the tensor cores), and its scale stores as another.
            sm90::cp_async_arrive_noinc(full_base + 8 * slot);
            store_scales(st, sv);
            sm90::mbarrier_arrive(full_base + 8 * slot);
          }
          if (++slot == static_cast<std::uint32_t>(S)) {
            slot = 0;
            phase ^= 1u;
          }
        }
        // Split K: the two cluster barriers of the computing threads' reduction (sm90_compute).
        if constexpr (kParts > 1) {
          sm90::cluster_sync();
          sm90::cluster_sync();
        }
      });
}

// A computing warpgroup c: weight rows [64 c, 64 c + 64) of each m64 sub-tile j (64 kWG j
// apart) and every token, as one wgmma m64nNk16 accumulator per sub-tile. Each thread decodes
// its rows' E2M1 codes and multiplies them by the block's scale in bf16 (exact), so the tensor
// cores see exactly the reference's weight values.
template <typename T, int kTokens, int kSub, int kWG, int kLoad, int kParts, bool kStream,
          bool kGpu, bool kGrouped>
__device__ __forceinline__ void sm90_compute(std::uint8_t* smem, const TokenRows& rows, int tiles_t,
                                             int tiles_w, const void* __restrict__ bias,
                                             DType bias_dtype, T* __restrict__ out, int n, int k,
                                             bool vector_store, const PidRange& pids,
                                             const StreamK& sk) {
  constexpr bool kHalf = std::is_same_v<T, __half>;
  using C = Sm90Config<kTokens, kSub, kWG, kHalf>;
  constexpr int S = C::kStages;
  constexpr int kTileW = C::kTileW;
  constexpr int kAcc = kTokens / 2;  // f32 accumulators per thread and sub-tile
  const int ctid = static_cast<int>(threadIdx.x) - 128;
  const int c = ctid >> 7;
  const int warp = (ctid >> 5) & 3;
  const int lane = ctid & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int nblk = k / kBlockSize;
  const int ktiles = (nblk + 1) / 2;
  const Ring<S> ring{static_cast<std::uint32_t>(__cvta_generic_to_shared(smem + C::kBarOffset))};
  const std::uint32_t smem_base = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem));
  // This lane's A rows: ra and ra + 8 of each sub-tile.
  const int ra = (C::kSplitK ? 0 : c * 64) + warp * 16 + g;
  const std::uint32_t sel = static_cast<std::uint32_t>(t | ((t + 4) << 4));
  // E2M1 codes to bf16 (decode_block): with the byte tables held in registers where there is
  // room for them (one sub-tile; with two, the 256-row tile spilled 4 bytes).
  const Bf16Tables tables = bf16_tables();
  T* chunk_out = reinterpret_cast<T*>(smem + C::kOutOffset) + c * C::kChunk * C::kOutStride;
  // The ring position of the tile's first stage: its slot and the parity of its round, kept
  // incrementally (short per-stage paths: one warp per scheduler pays every latency).
  std::uint32_t slot0 = 0;
  std::uint32_t phase0 = 0;
  const std::uint32_t full_base = ring.full(0);
  const std::uint32_t empty_base = ring.empty(0);
  for_each_piece<kTokens, kParts, kStream, true>(
      rows, tiles_t, tiles_w, ktiles, pids, sk,
      [&](const TokenRows::Tile& listed, int tile_w, const KRange& range) {
        TokenRows::Tile tile = listed;
        shift_tail<kTokens>(rows, tile);
        const int k_part = range.part;
        const int kt_begin = range.begin;
        const int kt_end = range.end;
        const int w0 = tile_w * kTileW;
        const int width = tile.count <= 32    ? 32
                          : tile.count <= 64  ? 64
                          : tile.count <= 128 ? 128
                          : tile.count <= 192 ? 192
                                              : 256;
        float acc[kSub][kAcc];
#pragma unroll
        for (int j = 0; j < kSub; ++j) {
#pragma unroll
          for (int i = 0; i < kAcc; ++i)
            acc[j][i] = 0.0f;
        }
        // A fragments: [block][sub-tile][k16 step][register], four blocks (two k-tiles) deep for
        // 64-token tiles, two elsewhere. (Deep, the 128-token tiles measured no faster and their
        // split-K kernel spilled 28 bytes; 256-token ones make ptxas serialize the wgmma
        // pipeline for want of registers.)
        constexpr bool kDeep = kSub * kAcc <= 32;
        std::uint32_t f[kDeep ? 4 : 2][kSub][2][4] = {};
        std::uint32_t last_slot = 0;  // the slot of this warpgroup's latest stage
        // The k loop, for one wgmma width N (chosen once per tile: a branch around each wgmma would
        // make ptxas insert warpgroup synchronization). kDeep: software-pipelined one k-tile
        // ahead, both blocks of the next k-tile decoded at once (eight independent chains) while
        // this k-tile's two groups run on the tensor cores (an H100, session 9, M = 64: 4096x4096
        // 14.4 -> 13.5 us, GPT-OSS down 11.5 -> 10.8). Otherwise each block is decoded after the
        // wait for the group before it.
        auto k_loop = [&](auto n_tag) {
          constexpr int N = decltype(n_tag)::value;
          constexpr int kStep = C::kSplitK ? 2 : 1;  // stages between this warpgroup's ones
          // kSplitK: warpgroup c takes the tile's k-tiles c, c + 2, ... (stepping over the other
          // warpgroup's: a loop that skips iterations makes ptxas serialize the wgmma pipeline).
          const int first = kt_begin + (C::kSplitK ? c : 0);
          if (first >= kt_end) return;
          std::uint32_t slot = slot0 + static_cast<std::uint32_t>(first - kt_begin);
          std::uint32_t phase = phase0;
          if (slot >= static_cast<std::uint32_t>(S)) {
            slot -= S;
            phase ^= 1u;
          }
          // Waits for the stage in `s` to land.
          auto wait_full = [&](std::uint32_t s, std::uint32_t ph) {
            sm90::mbarrier_wait(full_base + 8 * s, ph);
            // cp.async wrote the stage through the generic proxy; the tensor cores read it
            // through the async proxy.
            if constexpr (kLoad == kLoadCpAsync) sm90::fence_proxy_async();
          };
          // Block b (32 k) of the stage in slot s: this thread's E2M1 codes times their scales,
          // in T (f16_tag false: in bf16, for f16 x's flagged stages, see split_stage).
          auto decode_block = [&](std::uint32_t s, int b, std::uint32_t(&fr)[kSub][2][4],
                                  auto f16_tag) {
            constexpr bool kAsF16 = kHalf && decltype(f16_tag)::value;
            const std::uint8_t* st = smem + s * C::kStageBytes;
            const auto* sc = reinterpret_cast<const std::uint32_t*>(st + C::kSOffset) + b * kTileW;
#pragma unroll
            for (int j = 0; j < kSub; ++j) {
              const int r = ra + 64 * C::kRowWGs * j;
              std::uint32_t sa, sb;
              if constexpr (kGpu) {
                // The lane's pairs t, t + 4 (first k16 step) and t + 8, t + 12 (second) are the
                // four slots of the block's word t.
                const std::uint8_t* wt = st + C::kWOffset + r * 32 + b * 16 + 4 * t;
                const std::uint32_t wa = *reinterpret_cast<const std::uint32_t*>(wt);
                const std::uint32_t wb = *reinterpret_cast<const std::uint32_t*>(wt + 8 * 32);
                sa = sc[r];
                sb = sc[r + 8];
                auto slot = [](std::uint32_t w, int i) {
                  return kAsF16 ? detail::gpu_slot_f16(w, i) : detail::gpu_slot_bf16(w, i);
                };
#pragma unroll
                for (int q = 0; q < 2; ++q) {
                  fr[j][q][0] = slot(wa, 2 * q);
                  fr[j][q][2] = slot(wa, 2 * q + 1);
                  fr[j][q][1] = slot(wb, 2 * q);
                  fr[j][q][3] = slot(wb, 2 * q + 1);
                }
              } else {
                const uint4 va =
                    *reinterpret_cast<const uint4*>(st + C::kWOffset + r * 32 + b * 16);
                const uint4 vb =
                    *reinterpret_cast<const uint4*>(st + C::kWOffset + (r + 8) * 32 + b * 16);
                sa = sc[r];
                sb = sc[r + 8];
                const std::uint32_t wa = lane_bytes(va, sel);
                const std::uint32_t wb = lane_bytes(vb, sel);
                auto dec = [&](std::uint32_t v, std::uint32_t& p0, std::uint32_t& p1) {
                  if constexpr (kAsF16) {
                    decode4<__half>(v, p0, p1);
                  } else if constexpr (kSub == 1) {
                    decode4_bf16(v, tables, p0, p1);
                  } else {
                    decode4<__nv_bfloat16>(v, p0, p1);
                  }
                };
                dec(wa & 0xFFFFu, fr[j][0][0], fr[j][0][2]);
                dec(wb & 0xFFFFu, fr[j][0][1], fr[j][0][3]);
                dec(wa >> 16, fr[j][1][0], fr[j][1][2]);
                dec(wb >> 16, fr[j][1][1], fr[j][1][3]);
              }
              // f16 x: the stage holds scale bytes (f16's range unless flagged).
              auto pair = [](std::uint32_t v) {
                if constexpr (kAsF16) {
                  return detail::f16_scale_pair(v, kGpu);
                } else if constexpr (kHalf) {
                  return scale_pair<kGpu>(v);
                } else {
                  return v;
                }
              };
              auto mul = [](std::uint32_t v, std::uint32_t f) {
                return kAsF16 ? f16x2_mul(v, f) : bf16x2_mul(v, f);
              };
              sa = pair(sa);
              sb = pair(sb);
#pragma unroll
              for (int q = 0; q < 2; ++q) {
                fr[j][q][0] = mul(fr[j][q][0], sa);
                fr[j][q][2] = mul(fr[j][q][2], sa);
                fr[j][q][1] = mul(fr[j][q][1], sb);
                fr[j][q][3] = mul(fr[j][q][3], sb);
              }
            }
          };
          using Scaled = std::true_type;
          // Block b's wgmma group on the stage in slot s. Its two k16 steps start 64 b and
          // 64 b + 32 bytes into each 128-byte token row.
          auto issue_block = [&](std::uint32_t s, int b, std::uint32_t(&fr)[kSub][2][4]) {
            const std::uint32_t x_desc =
                sm90::sw128_desc_lo(smem_base + static_cast<std::uint32_t>(s * C::kStageBytes));
            sm90::wgmma_fence();
#pragma unroll
            for (int j = 0; j < kSub; ++j)
              sm90::fence_accumulators<N / 2>(acc[j]);
#pragma unroll
            for (int q = 0; q < 2; ++q) {
#pragma unroll
              for (int j = 0; j < kSub; ++j) {
                wgmma_n<N, kHalf>(acc[j], fr[j][q], sm90::sw128_desc_at(x_desc, 64 * b + 32 * q));
              }
            }
            sm90::wgmma_commit();
#pragma unroll
            for (int j = 0; j < kSub; ++j)
              sm90::fence_accumulators<N / 2>(acc[j]);
          };
          // f16 x: the tensor cores take f16 x as it lands and the weight decoded to f16 and
          // scaled in f16, exact where every scale of the stage is in f16's range (the loaders
          // flag the stages where one is not; real weights' scales are inside). A flagged stage
          // takes the bf16 path instead: the computing threads split its x exactly into bf16 hi
          // and lo parts (hi into the epilogue's staging buffer, sized for it: kHiBytes; lo in
          // place) and run each k16 step on both, the weight decoded to bf16 (every scale exact).
          // Slow and rare.
          auto flagged = [&](std::uint32_t s) {
            if constexpr (kHalf) {
              return *reinterpret_cast<const std::uint32_t*>(smem + s * C::kStageBytes +
                                                             C::kFOffset) != 0u;
            } else {
              return false;
            }
          };
          // (fb: a buffer of A fragments free at this point: registers are short.)
          // The threads that share the stage split it together: every computing thread, or with
          // kSplitK the warpgroup alone (the other one is at another stage), into a hi buffer of
          // its own. (Split in parts of fewer tokens, each part's wgmma on its share of the
          // accumulators, ptxas serialized the wgmma pipeline of most f16 kernels.)
          auto split_stage = [&](std::uint32_t s, std::uint32_t(&fb)[kSub][2][4]) {
            if constexpr (kHalf) {
              constexpr int kSharers = C::kSplitK ? 128 : C::kConsumers;
              // 16-byte chunks, and each thread's (three warpgroups: some take one fewer)
              constexpr int kChunks = C::kXBytes / 16;
              constexpr int kPer = (kChunks + kSharers - 1) / kSharers;
              static_assert(kChunks * 16 == C::kXBytes, "whole chunks");
              const int bar = C::kSplitK ? 5 + c : 5;
              const int sharer = C::kSplitK ? (ctid & 127) : ctid;
              const std::uint32_t hi_at =
                  static_cast<std::uint32_t>(C::kOutOffset + (C::kSplitK ? c * C::kHiStride : 0));
              std::uint8_t* st = smem + s * C::kStageBytes;
              std::uint8_t* hi = smem + hi_at;
              sm90::wgmma_wait<0>();
              sm90::named_barrier(bar, kSharers);  // the buffer is free
          // (Loops not unrolled: unrolled, the 256-row kernel spilled.)
#pragma unroll 1
              for (int i = 0; i < kPer; ++i) {
                if (sharer + kSharers * i >= kChunks) break;
                const int at = 16 * (sharer + kSharers * i);
                uint4 v = *reinterpret_cast<const uint4*>(st + at);
                uint4 lo;
                split_f16x2(v.x, v.x, lo.x);
                split_f16x2(v.y, v.y, lo.y);
                split_f16x2(v.z, v.z, lo.z);
                split_f16x2(v.w, v.w, lo.w);
                *reinterpret_cast<uint4*>(hi + at) = v;
                *reinterpret_cast<uint4*>(st + at) = lo;
              }
              sm90::fence_proxy_async();
              sm90::named_barrier(bar, kSharers);  // both parts are in place
              const std::uint32_t lo_desc =
                  sm90::sw128_desc_lo(smem_base + static_cast<std::uint32_t>(s * C::kStageBytes));
              const std::uint32_t hi_desc = sm90::sw128_desc_lo(smem_base + hi_at);
#pragma unroll 1
              for (int b = 0; b < 2; ++b) {
                decode_block(s, b, fb, std::false_type{});
                sm90::wgmma_fence();
#pragma unroll
                for (int j = 0; j < kSub; ++j)
                  sm90::fence_accumulators<N / 2>(acc[j]);
#pragma unroll
                for (int q = 0; q < 2; ++q) {
#pragma unroll
                  for (int j = 0; j < kSub; ++j) {
                    wgmma_n<N>(acc[j], fb[j][q], sm90::sw128_desc_at(hi_desc, 64 * b + 32 * q));
                    wgmma_n<N>(acc[j], fb[j][q], sm90::sw128_desc_at(lo_desc, 64 * b + 32 * q));
                  }
                }
                sm90::wgmma_commit();
                sm90::wgmma_wait<0>();
#pragma unroll
                for (int j = 0; j < kSub; ++j)
                  sm90::fence_accumulators<N / 2>(acc[j]);
              }
              // Read by all: the epilogue (or the next flagged stage) may write the buffer.
              sm90::named_barrier(bar, kSharers);
            }
          };
          int kt = first;
          // One k-tile (kDeep), its two blocks decoded into f[2 p] and f[2 p + 1] on entry: their
          // groups are issued, then the next k-tile's blocks decoded into f[2 - 2 p] and
          // f[3 - 2 p] once the previous k-tile's groups are done. ptxas does not track wgmma's
          // asynchronous register reads: each buffer is kept live (fence_registers) until its
          // group is known done.
          auto k_tile = [&](auto p_tag) {
            constexpr int p = decltype(p_tag)::value;
            if (flagged(slot)) {
              split_stage(slot, f[2 * p]);
            } else {
              issue_block(slot, 0, f[2 * p]);
              issue_block(slot, 1, f[2 * p + 1]);
            }
            sm90::wgmma_wait<2>();  // the previous k-tile's groups are done: its stage is free
            sm90::fence_registers(f[2 - 2 * p]);
            sm90::fence_registers(f[3 - 2 * p]);
            if (kt != first) sm90::mbarrier_arrive(empty_base + 8 * last_slot);
            std::uint32_t next_slot = slot + kStep;
            std::uint32_t next_phase = phase;
            if (next_slot >= static_cast<std::uint32_t>(S)) {
              next_slot -= S;
              next_phase ^= 1u;
            }
            if (kt + kStep < kt_end) {
              // Both blocks of the next k-tile at once: eight independent decode chains.
              wait_full(next_slot, next_phase);
              decode_block(next_slot, 0, f[2 - 2 * p], Scaled{});
              decode_block(next_slot, 1, f[3 - 2 * p], Scaled{});
            }
            last_slot = slot;
            slot = next_slot;
            phase = next_phase;
            kt += kStep;
          };
          if constexpr (!kDeep) {
            // Decoding after the wait: two buffers.
            for (; kt < kt_end; kt += kStep) {
              wait_full(slot, phase);
              if (flagged(slot)) {
                split_stage(slot, f[0]);
                if (kt != first) sm90::mbarrier_arrive(empty_base + 8 * last_slot);
              } else {
#pragma unroll
                for (int b = 0; b < 2; ++b) {
                  decode_block(slot, b, f[b], Scaled{});
                  issue_block(slot, b, f[b]);
                  sm90::wgmma_wait<1>();
                  sm90::fence_registers(f[b ^ 1]);
                  if (b == 0 && kt != first) sm90::mbarrier_arrive(empty_base + 8 * last_slot);
                }
              }
              last_slot = slot;
              slot += kStep;
              if (slot >= static_cast<std::uint32_t>(S)) {
                slot -= S;
                phase ^= 1u;
              }
            }
          } else {
            wait_full(slot, phase);
            decode_block(slot, 0, f[0], Scaled{});
            decode_block(slot, 1, f[1], Scaled{});
            for (;;) {
              k_tile(std::integral_constant<int, 0>{});
              if (kt >= kt_end) break;
              k_tile(std::integral_constant<int, 1>{});
              if (kt >= kt_end) break;
            }
          }
        };
        if (kTokens >= 256 && width > 192) {
          k_loop(std::integral_constant<int, 256>{});
        } else if (kTokens >= 192 && width > 128) {
          k_loop(std::integral_constant<int, 192>{});
        } else if (kTokens >= 128 && width > 64) {
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
        // This warpgroup's last stage (kSplitK: the last of its parity, if it had one).
        const int span = kt_end - kt_begin;
        if (span > (C::kSplitK ? c : 0)) sm90::mbarrier_arrive(empty_base + 8 * last_slot);
        {
          const std::uint32_t next = slot0 + static_cast<std::uint32_t>(span);
          slot0 = next % S;
          phase0 ^= (next / S) & 1u;
        }
        // kSplitK: the second warpgroup hands its sums to the first, which runs the epilogue, a
        // part at a time.
        if constexpr (C::kSplitK) {
          constexpr int kPart = kAcc / C::kRedParts;
          static_assert(kPart % 4 == 0, "parts of whole float4s");
          auto* red = reinterpret_cast<float4*>(smem + C::kRedOffset) + (ctid & 127);
#pragma unroll
          for (int h = 0; h < C::kRedParts; ++h) {
            if (c == 1) {
#pragma unroll
              for (int j = 0; j < kSub; ++j) {
#pragma unroll
                for (int i = 0; i < kPart; i += 4) {
                  const int a = h * kPart + i;
                  red[((j * kPart + i) / 4) * 128] =
                      make_float4(acc[j][a], acc[j][a + 1], acc[j][a + 2], acc[j][a + 3]);
                }
              }
            }
            sm90::named_barrier(3, 256);  // the part is in
            if (c == 0) {
#pragma unroll
              for (int j = 0; j < kSub; ++j) {
#pragma unroll
                for (int i = 0; i < kPart; i += 4) {
                  const int a = h * kPart + i;
                  const float4 v = red[((j * kPart + i) / 4) * 128];
                  acc[j][a] += v.x;
                  acc[j][a + 1] += v.y;
                  acc[j][a + 2] += v.z;
                  acc[j][a + 3] += v.w;
                }
              }
            }
            sm90::named_barrier(3, 256);  // and read: the buffer is free again
          }
          // The second warpgroup meets a barrier of its own (2, 128 threads) as often as the
          // first meets its epilogue's (1, 128 threads). It orders nothing; it is there for
          // compute-sanitizer's racecheck, which otherwise reports each part's reads above
          // against the next part's writes once a CTA has run a tile (in the SASS, LDS, then
          // BAR.SYNC 0x3, 0x100, then STS: ordered), and reports none with it, though a barrier
          // within one warpgroup cannot order the two warpgroups' accesses (an H100, session 23:
          // 42 reports in the dense 64-token tiles, 25 in their grouped launch, then none; no
          // cost measured, within +-1% on every dense and MoE shape).
          // (Split K over a cluster too: only part 0's first warpgroup runs the epilogue, and the
          // second warpgroup meets the cluster's two barriers below.)
          if (c == 1) {
            if (k_part == 0) {
#pragma unroll
              for (int j = 0; j < kSub; ++j) {
#pragma unroll
                for (int q0 = 0; q0 < kTokens; q0 += C::kChunk) {
                  if (q0 >= tile.count) break;
                  sm90::named_barrier(2, 128);
                  sm90::named_barrier(2, 128);
                }
              }
            }
            if constexpr (kParts > 1) {
              sm90::cluster_sync();
              sm90::cluster_sync();
            }
            return;
          }
        }

        // Split K: the other CTAs of the cluster store their sums in CTA 0's stage ring (idle by
        // now: its loads have all landed and been read; a split grid gives each CTA one tile),
        // part p at slice p - 1; CTA 0 adds them and runs the epilogue alone.
        if constexpr (kParts > 1) {
          constexpr int kSlice = C::kConsumers * kSub * kAcc * 4;
          static_assert(C::kFitsParts(kParts) && (kParts - 1) * kSlice <= S * C::kStageBytes,
                        "partial sums fit the ring");
          // Thread-interleaved: float4 q of every thread side by side ([q][ctid]), so that a
          // warp's stores and loads cover consecutive 16-byte words. (With each thread's sums
          // contiguous, a warp's 32 accesses fell in one bank group: the reduction took ~12 us
          // of a split 256-token tile's ~36, measured with globaltimer stamps on an H100.)
          const std::uint32_t mine = smem_base + static_cast<std::uint32_t>(ctid * 16);
          sm90::cluster_sync();  // CTA 0's ring is free
          if (k_part != 0) {
            const std::uint32_t dst =
                sm90::cluster_map(mine + static_cast<std::uint32_t>((k_part - 1) * kSlice), 0);
#pragma unroll
            for (int j = 0; j < kSub; ++j) {
#pragma unroll
              for (int i = 0; i < kAcc; i += 4) {
                sm90::store_cluster(
                    dst + static_cast<std::uint32_t>((j * kAcc + i) / 4 * C::kConsumers * 16),
                    acc[j][i], acc[j][i + 1], acc[j][i + 2], acc[j][i + 3]);
              }
            }
          }
          sm90::cluster_sync();  // the partial sums have landed
          if (k_part != 0) return;
#pragma unroll
          for (int p = 1; p < kParts; ++p) {
            add_sums<C::kConsumers>(acc,
                                    reinterpret_cast<const float4*>(smem + (p - 1) * kSlice) + ctid,
                                    kTokens, [](const float4* q) { return *q; });
          }
      // The sums are complete before the epilogue's address arithmetic starts (interleaved,
      // the 256-token kernel spilled).
#pragma unroll
          for (int j = 0; j < kSub; ++j)
            sm90::fence_accumulators<kAcc>(acc[j]);
        }

        // Stream-K: a piece that ends inside its tile stores its sums for the CTA that finishes
        // the tile ([float4 q][thread], slice blockIdx.x); that CTA adds the sums of the tile's
        // earlier CTAs to its own, in CTA order.
        if constexpr (kStream) {
          constexpr int kVecs = kSub * kAcc / 4;
          constexpr std::int64_t kSlice = std::int64_t{kVecs} * C::kConsumers;
          auto* partials = reinterpret_cast<float4*>(sk.partials) + ctid;
          if (kt_end < ktiles) {
            store_sums<C::kConsumers>(acc, partials + blockIdx.x * kSlice, width);
            // (As CUTLASS's barriers: the CTA's threads meet, then one releases the flag at GPU
            // scope, which orders every write that the meeting ordered before it.)
            sm90::named_barrier(4, C::kConsumers);  // every thread's sums are out
            if (ctid == 0) store_release(sk.flags + blockIdx.x, 1u);
            return;
          }
          if (kt_begin > 0) {
            // A finishing piece is its CTA's first: the tile starts kt_begin units before it.
            const int last = static_cast<int>(blockIdx.x);
            const int first_writer = run_holding(sk, run_start(sk, last) - kt_begin);
            if (ctid == 0) {
              for (int w = first_writer; w < last; ++w) {
                while (load_acquire(sk.flags + w) == 0u) {
                }
              }
            }
            sm90::named_barrier(4, C::kConsumers);  // the earlier CTAs' sums are in
            for (int w = first_writer; w < last; ++w) {
              add_sums<C::kConsumers>(acc, partials + w * kSlice, width,
                                      [](const float4* q) { return __ldcg(q); });
            }
#pragma unroll
            for (int j = 0; j < kSub; ++j)
              sm90::fence_accumulators<kAcc>(acc[j]);
          }
        }

    // Epilogue, per sub-tile and 64 tokens at a time: bias in f32, the chunk [token][64 rows]
    // in this warpgroup's shared buffer, then whole rows out, but for a moved tail tile's first
    // tokens (tail_store_from), which the previous tile stores; kGrouped: the output rows loaded
    // before the chunk is staged.
#pragma unroll
        for (int j = 0; j < kSub; ++j) {
          const int rows0 = c * 64 + 64 * C::kRowWGs * j;  // the sub-tile's first row in the tile
          const int r = warp * 16 + g;
          const float ba = row_bias(bias, bias_dtype, tile, w0 + rows0 + r, n);
          const float bb = row_bias(bias, bias_dtype, tile, w0 + rows0 + r + 8, n);
#pragma unroll
          for (int q0 = 0; q0 < kTokens; q0 += C::kChunk) {
            if (q0 >= tile.count) break;
            TilePairs<64, 128, C::kChunk> pairs;
            if constexpr (kGrouped) load_pairs(rows, tile, q0, ctid & 127, pairs);
#pragma unroll
            for (int q = q0 / 8; q < (q0 + C::kChunk) / 8; ++q) {
              if (8 * q >= width) break;
              stage_fragment(chunk_out, C::kOutStride, r, 8 * q + 2 * t - q0, &acc[j][4 * q], ba,
                             bb);
            }
            sm90::named_barrier(1 + c, 128);
            const int from = tail_store_from<kTokens>(rows, tile, q0);
            TokenRows::Tile part = tile;
            part.first += q0;
            part.count = min(tile.count - q0, C::kChunk);
            store_tile(chunk_out, C::kOutStride, out, rows, part, w0 + rows0, n, vector_store,
                       ctid & 127, from, kGrouped ? &pairs : nullptr);
            sm90::named_barrier(1 + c, 128);
          }
        }
      });
}

#endif  // MXFP4_SM90A_DEVICE

// kGrouped: x rows staged in tile order for a grouped layout (mixture of experts; kLoadTmaBox),
// whose output rows come through its permutation: the epilogue loads them ahead (load_pairs).
// Dense kernels keep their epilogue as it is (loaded ahead there, the pairs cost 3% at some
// dense shapes, ptxas allocating the k-loop's registers differently).
template <typename T, int kTokens, int kSub, int kWG, int kLoad, int kParts, bool kStream,
          bool kGpu, bool kGrouped = false>
__global__ void __launch_bounds__(128 * (kWG == kWGSplitK ? 3 : kWG + 1), kWG == 1 ? 2 : 1)
    sm90_gemm_kernel(const T* __restrict__ x, const __grid_constant__ CUtensorMap x_map,
                     const __grid_constant__ CUtensorMap xs_map,
                     const __grid_constant__ CUtensorMap w_map, TokenRows rows, int tiles_t,
                     int tiles_w, const std::uint8_t* __restrict__ blocks,
                     const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                     DType bias_dtype, T* __restrict__ out, int n, int k, bool vector_store,
                     PidRange pids, StreamK sk) {
#if defined(MXFP4_SM90A_DEVICE)
  using C = Sm90Config<kTokens, kSub, kWG, std::is_same_v<T, __half>>;
  extern __shared__ uint4 smem_raw[];
  // The swizzle atoms need 1024-byte alignment; the launch asks for 1 KiB of slack.
  const auto raw = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_raw));
  std::uint8_t* smem =
      reinterpret_cast<std::uint8_t*>(smem_raw) + ((1024u - (raw & 1023u)) & 1023u);
  if (threadIdx.x == 0) {
    const Ring<C::kStages> ring{
        static_cast<std::uint32_t>(__cvta_generic_to_shared(smem + C::kBarOffset))};
    for (int s = 0; s < C::kStages; ++s) {
      // Each loader arrives once; with cp.async its landed copies arrive once more.
      sm90::mbarrier_init(ring.full(s), kLoad == kLoadCpAsync ? 256 : 128);
      sm90::mbarrier_init(ring.empty(s), C::kSplitK ? 128 : C::kConsumers);
    }
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    sm90::setmaxnreg_dec<C::kProducerRegs>();
    sm90_load<T, kTokens, kSub, kWG, kLoad, kParts, kStream, kGpu>(
        smem, x, x_map, xs_map, w_map, rows, tiles_t, tiles_w, blocks, scales, n, k, pids, sk);
  } else {
    sm90::setmaxnreg_inc<C::kConsumerRegs>();
    sm90_compute<T, kTokens, kSub, kWG, kLoad, kParts, kStream, kGpu, kGrouped>(
        smem, rows, tiles_t, tiles_w, bias, bias_dtype, out, n, k, vector_store, pids, sk);
  }
#else
  (void)x, (void)x_map, (void)xs_map, (void)w_map, (void)rows, (void)tiles_t, (void)tiles_w,
      (void)blocks;
  (void)scales, (void)bias, (void)bias_dtype, (void)out, (void)n, (void)k, (void)vector_store;
  (void)pids, (void)sk;
#endif
}

// cuTensorMapEncodeTiled, from the driver the runtime loaded (no link against libcuda); null
// where the driver lacks it.
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();  // not sticky; clear it
      return EncodeTiled{nullptr};
    }
    return reinterpret_cast<EncodeTiled>(p);
  }();
  return fn;
}

// The tensor maps of the TMA loaders: x [rows, k] (bf16 or f16) in boxes of `tokens` x 64 with
// the 128-byte swizzle, and the blocks [rows, k / 2] bytes in boxes of tile_w x 32. False where
// the driver cannot make them (the cp.async loaders run instead).
bool make_x_map(const void* x, DType x_dtype, std::int64_t x_rows, std::int64_t k, int tokens,
                CUtensorMap& x_map) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t x_dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(x_rows)};
  const cuuint64_t x_strides[1] = {static_cast<cuuint64_t>(k) * 2};
  const cuuint32_t x_box[2] = {static_cast<cuuint32_t>(kTileK), static_cast<cuuint32_t>(tokens)};
  const cuuint32_t unit[2] = {1, 1};
  const CUtensorMapDataType x_type =
      x_dtype == DType::f16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return encode(&x_map, x_type, 2, const_cast<void*>(x), x_dims, x_strides, x_box, unit,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}
bool make_w_map(const std::uint8_t* blocks, std::int64_t w_rows, std::int64_t k, int tile_w,
                CUtensorMap& w_map) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t w_dims[2] = {static_cast<cuuint64_t>(k / 2), static_cast<cuuint64_t>(w_rows)};
  const cuuint64_t w_strides[1] = {static_cast<cuuint64_t>(k / 2)};
  const cuuint32_t w_box[2] = {2 * kBlockBytes, static_cast<cuuint32_t>(tile_w)};
  const cuuint32_t unit[2] = {1, 1};
  return encode(&w_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<std::uint8_t*>(blocks), w_dims,
                w_strides, w_box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename T, int kTokens, int kSub, int kWG, int kLoad, int kParts, bool kStream,
          bool kGpu, bool kGrouped = false>
void launch_kernel(std::int64_t grid, const void* x, const CUtensorMap& x_map,
                   const CUtensorMap& xs_map, const CUtensorMap& w_map, const TokenRows& rows,
                   std::int64_t tiles, std::int64_t tiles_w, const detail::WeightArgs& w, void* out,
                   bool vector_store, cudaStream_t stream, const PidRange& pids,
                   const StreamK& sk) {
  using C = Sm90Config<kTokens, kSub, kWG, std::is_same_v<T, __half>>;
  const auto kernel =
      sm90_gemm_kernel<T, kTokens, kSub, kWG, kLoad, kParts, kStream, kGpu, kGrouped>;
  // setmaxnreg.inc waits until the CTA's pool has the registers: were the kernel ever built with
  // fewer than Sm90Config assumes, it would hang, so refuse instead.
  static const int launch_regs = [&] {
    cudaFuncAttributes attributes{};
    check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes(sm90_gemm_kernel)");
    return attributes.numRegs;
  }();
  if (launch_regs * (C::kConsumerWGs + 1) < C::kProducerRegs + C::kConsumerWGs * C::kConsumerRegs) {
    throw Unsupported("sm90_gemm_kernel was built with " + std::to_string(launch_regs) +
                      " registers per thread; its warpgroups need " +
                      std::to_string(C::kLaunchRegs));
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(C::kThreads);
  config.dynamicSmemBytes = C::kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = kParts;
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = kParts > 1 ? 1 : 0;
  check(cudaLaunchKernelEx(&config, kernel, static_cast<const T*>(x), x_map, xs_map, w_map, rows,
                           static_cast<int>(tiles), static_cast<int>(tiles_w), w.blocks, w.scales,
                           w.bias, w.bias_dtype, static_cast<T*>(out), static_cast<int>(w.n),
                           static_cast<int>(w.k), vector_store, pids, sk),
        "cudaLaunchKernelEx(sm90_gemm_kernel)");
  check_launch("sm90_gemm_kernel");
}

// Dense x is fetched with TMA (where the driver makes the tensor maps and the weight rows fit
// TMA's 32-bit coordinates); gathered rows (mixture of experts) with cp.async.
template <typename T, int kTokens, int kSub, int kWG, bool kGpu>
void launch_sm90_tiles(const void* x, const TokenRows& tile_rows, std::int64_t tiles,
                       const detail::WeightArgs& w, void* out, cudaStream_t stream,
                       bool stream_k = false, void* workspace = nullptr,
                       std::size_t workspace_bytes = 0) {
  using C = Sm90Config<kTokens, kSub, kWG, std::is_same_v<T, __half>>;
  // x's boxes: a tile's rows, or all of x where it has fewer (TMA fills no row past its end:
  // that fill is slow, session 12). Staged x with runs read in place: the same for each map, the
  // staged rows and x_source. (Boxes of a tile's rows in x_source, wider than a skewed batch of
  // fewer tokens, made GPT-OSS gate_up top-4 at T = 96 70.4 us against 56.6 at T = 128, an H100,
  // session 23.) A tile's pairs lie in its map's rows, so the box covers them.
  TokenRows rows = tile_rows;
  rows.x_box_rows = static_cast<int>(std::clamp<std::int64_t>(rows.rows, 1, kTokens));
  rows.source_box_rows = static_cast<int>(std::clamp<std::int64_t>(rows.source_rows, 1, kTokens));
  constexpr int kTileW = C::kTileW;
  const std::int64_t tiles_w = (w.n + kTileW - 1) / kTileW;
  const std::int64_t ctas = gemm_tile_pairs(tiles, tiles_w);
  if (ctas == 0) return;
  const bool vector_store = vector_store_ok(w.n, out);
  const int sms = current_device_facts().multiprocessors;
  CUtensorMap x_map{};
  CUtensorMap xs_map{};  // x_source (staged x with runs read in place)
  CUtensorMap w_map{};
  // TMA boxes of x need its rows in tile order: dense x, or x staged in expert order.
  const bool dense = (rows.perm == nullptr && rows.tile_list == nullptr) || rows.x_by_position;
  const std::int64_t w_rows = w.experts * w.n;
  using Tma = std::integral_constant<int, kLoadTmaBox>;
  using CpAsync = std::integral_constant<int, kLoadCpAsync>;
  using One = std::integral_constant<int, 1>;  // CTAs per tile (split K: a cluster of 2 or 4)
  using Two = std::integral_constant<int, 2>;
  using Four = std::integral_constant<int, 4>;
  using Dense = std::false_type;  // not kGrouped
  // CTAs per SM of one of this tile shape's kernels (its shared memory set up once).
  // (grouped_tag: kGrouped, for gather_linear's classes.)
  auto per_sm_of = [&](auto load_tag, auto parts_tag, auto stream_tag, auto grouped_tag) {
    const auto kernel = sm90_gemm_kernel<T, kTokens, kSub, kWG, decltype(load_tag)::value,
                                         decltype(parts_tag)::value, decltype(stream_tag)::value,
                                         kGpu, decltype(grouped_tag)::value>;
    return prepare_kernel(reinterpret_cast<const void*>(kernel), C::kThreads, C::kSmemBytes,
                          "sm90_gemm_kernel");
  };
  // A launch over the tile pairs `pids` (PidRange{}: all) of the kernel the tags name.
  auto launch = [&](auto load_tag, auto parts_tag, PidRange pids, auto grouped_tag) {
    constexpr int kLoad = decltype(load_tag)::value;
    constexpr int kParts = decltype(parts_tag)::value;
    const int per_sm = per_sm_of(load_tag, parts_tag, std::false_type{}, grouped_tag);
    const std::int64_t count = (pids.end > 0 ? pids.end : ctas) - pids.begin;
    // Split K: a cluster of kParts CTAs per tile, every tile at once (no CTA takes two).
    const std::int64_t grid =
        kParts > 1 ? count * kParts : std::min<std::int64_t>(count, std::int64_t{sms} * per_sm);
    launch_kernel<T, kTokens, kSub, kWG, kLoad, kParts, false, kGpu, decltype(grouped_tag)::value>(
        grid, x, x_map, xs_map, w_map, rows, tiles, tiles_w, w, out, vector_store, stream, pids,
        {});
  };
  const DType x_dtype = std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
  const bool fits = dense && w_rows + kTileW < (std::int64_t{1} << 31) &&
                    rows.rows < (std::int64_t{1} << 31) &&
                    rows.source_rows < (std::int64_t{1} << 31) &&
                    forced_kernel() != "wgmma_cpasync" && forced_kernel() != "wgmma_cpasync_staged";
  // Runs of x read in place (staged x): a map of x_source as well, else cp.async reads them.
  if (fits && make_w_map(w.blocks, w_rows, w.k, kTileW, w_map) &&
      make_x_map(x, x_dtype, rows.rows, w.k, rows.x_box_rows, x_map) &&
      (rows.x_source == nullptr ||
       make_x_map(rows.x_source, x_dtype, rows.source_rows, w.k, rows.source_box_rows, xs_map))) {
    // Stream-K (dense, 128-, 192- or 256-token tiles of 128 rows): every SM gets an equal run of
    // units.
    if constexpr (kTokens >= 128 && kSub == 1 && kWG == 2) {
      const std::int64_t units = ctas * ((w.k / kBlockSize + 1) / 2);
      if (stream_k && rows.tile_list == nullptr && units < (std::int64_t{1} << 31)) {
        const int per_sm = per_sm_of(Tma{}, One{}, std::true_type{}, Dense{});
        const std::int64_t grid = std::min<std::int64_t>(units, std::int64_t{sms} * per_sm);
        constexpr std::size_t slice = std::size_t{C::kConsumers} * (kTokens / 2) * sizeof(float);
        static_assert(slice + sizeof(unsigned) <= kStreamKBytesPerSm,
                      "linear_workspace_bytes() promises this much per SM");
        const std::size_t flags_at = static_cast<std::size_t>(grid) * slice;
        const std::size_t bytes = flags_at + static_cast<std::size_t>(grid) * sizeof(unsigned);
        // The caller's workspace where it has room (16-byte aligned), else memory of this call.
        const bool fits = workspace != nullptr && workspace_bytes >= bytes &&
                          (reinterpret_cast<std::uintptr_t>(workspace) & 15) == 0;
        CallMemory scratch(fits ? workspace : nullptr, bytes, stream, "stream-K sums");
        auto* space = static_cast<std::uint8_t*>(scratch.get());
        StreamK sk{reinterpret_cast<float*>(space), reinterpret_cast<unsigned*>(space + flags_at),
                   static_cast<int>(units / grid), static_cast<int>(units % grid)};
        check(
            cudaMemsetAsync(sk.flags, 0, static_cast<std::size_t>(grid) * sizeof(unsigned), stream),
            "cudaMemsetAsync(stream-K flags)");
        launch_kernel<T, kTokens, kSub, kWG, kLoadTmaBox, 1, true, kGpu>(
            grid, x, x_map, xs_map, w_map, rows, tiles, tiles_w, w, out, vector_store, stream, {},
            sk);
        scratch.release();
        return;
      }
    }
    // 64- or 128-token tiles of 64 or 128 rows (bf16 and f16): split K over a cluster where the
    // tiles fill few CTA slots:
    // - in two where K is long and the pairs fit the slots (measured on an H100: Llama-70B down,
    //   K = 28672, M = 64: 120 us against 193; at K = 2880 and 4096 the split was 0-12% slower);
    // - in two where the pairs fit one per SM: 64-token tiles (an H200, session 7, M = 64:
    //   4096x4096 14.7 us against 19.9, GPT-OSS down 11.9 against 14.8), and (dense) 64- and
    //   128-token tiles of 64 rows with two computing warpgroups on alternate k-tiles, so that each
    //   SM has two computing warpgroups (choose_kernel has the measurements; ncu on an H100,
    //   session 24, GPT-OSS down M = 64 with one warpgroup per CTA: 0.34 eligible warps per
    //   scheduler, 70% of cycles with none).
    // MXFP4_CUDA_KERNEL=wgmma_split forces a split of one-warpgroup tiles (in four where the
    // partial sums fit). (Tiles of three computing warpgroups never split, here or for a last wave
    // below: gather_linear's class has no such rule, and dense batches reach them only forced,
    // wgmma192r.)
    if constexpr (kTokens <= 128 && kSub == 1 && kWG != 3 && C::kFitsParts(2)) {
      constexpr bool kHalves = kWG == kWGSplitK;
      const std::int64_t ktiles = (w.k / kBlockSize + 1) / 2;
      const std::string& forced = forced_kernel();
      const bool force = !kHalves && forced == "wgmma_split";
      // (choose_kernel gives 64-token tiles one computing warpgroup only for K of 16384 and more,
      // or where MXFP4_CUDA_KERNEL forces it, wgmma64t.)
      const bool short_tiles =
          (kHalves ? rows.tile_list == nullptr : kTokens == 64) && 2 * ctas <= sms && ktiles >= 16;
      const bool long_k = !kHalves && ktiles >= 128;
      if ((long_k || short_tiles || force) && forced != "wgmma_nosplit") {
        const int per_sm = per_sm_of(Tma{}, Two{}, std::false_type{}, Dense{});
        if constexpr (!kHalves && C::kFitsParts(4) && std::is_same_v<T, __nv_bfloat16>) {
          if (force && 4 * ctas <= std::int64_t{sms} * per_sm && ktiles >= 16) {  // (forced only)
            launch(Tma{}, Four{}, PidRange{}, Dense{});
            return;
          }
        }
        if (2 * ctas <= std::int64_t{sms} * per_sm) {
          launch(Tma{}, Two{}, PidRange{}, Dense{});
          return;
        }
      }
    }
    // The last partial wave, where it would fill at most half the SMs: its tiles split K over
    // clusters of two, in a second launch, so that it takes half a tile's time. Measured on an
    // H100 (bench/RESULTS.md, session 8): whole tiles take one tile's time per wave, however
    // few fill the last (GPT-OSS gate_up, 256-token tiles: 33.6 us at M = 512, 67-68 us from
    // M = 576 to 1280; 4096x4096: 47.5 us at M = 1024, 102 at 1032).
    if constexpr (kSub == 1 && kWG != kWGSplitK && kWG != 3 && C::kFitsParts(2)) {
      const std::int64_t ktiles = (w.k / kBlockSize + 1) / 2;
      const std::string& forced = forced_kernel();
      const bool force = forced == "wgmma_tail";  // half the tiles split (tests)
      if (rows.tile_list == nullptr && (ktiles >= 16 || (force && ktiles >= 2)) &&
          forced != "wgmma_nosplit") {
        const int per_sm = per_sm_of(Tma{}, One{}, std::false_type{}, Dense{});
        const int per_sm2 = per_sm_of(Tma{}, Two{}, std::false_type{}, Dense{});
        const std::int64_t tail = ctas % (std::int64_t{sms} * per_sm);
        if ((tail > 0 && 2 * tail <= std::int64_t{sms} * per_sm2) || force) {
          const std::int64_t split = force ? (ctas + 1) / 2 : tail;
          if (ctas > split) {
            launch(Tma{}, One{}, PidRange{0, static_cast<int>(ctas - split)}, Dense{});
          }
          launch(Tma{}, Two{}, PidRange{static_cast<int>(ctas - split), static_cast<int>(ctas)},
                 Dense{});
          return;
        }
      }
    }
    // The tile shapes of gather_linear's classes (moe.cu: 64-token tiles of 128 rows, 128-token
    // ones of 192 rows with three warpgroups, of 256 rows (moe_mid256) or of 64 rows with two
    // warpgroups on alternate k-tiles, 256-token ones of 128 rows) on x staged in tile order get
    // the grouped epilogue (kGrouped).
    constexpr bool kGroupedShape =
        (kTokens == 64 && kSub == 1 && kWG == 2) || (kTokens == 128 && kSub == 2 && kWG == 2) ||
        (kTokens == 128 && kSub == 1 && kWG == kWGSplitK) ||
        (kTokens == 128 && kSub == 1 && kWG == 3) || (kTokens == 256 && kSub == 1 && kWG == 2);
    if constexpr (kGroupedShape) {
      if (rows.perm != nullptr) {
        launch(Tma{}, One{}, PidRange{}, std::true_type{});
        return;
      }
    }
    launch(Tma{}, One{}, PidRange{}, Dense{});
    return;
  }
  launch(CpAsync{}, One{}, PidRange{}, Dense{});
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
                      cudaStream_t stream, bool k_halves, bool stream_k, void* workspace,
                      std::size_t workspace_bytes) {
  // bf16 and f16 x take the same tiles.
  auto run = [&](auto gpu, auto zero) {
    constexpr bool kGpu = decltype(gpu)::value;
    using T = decltype(zero);
    // 256-token tiles of 64 rows with two warpgroups on alternate k-tiles: bf16 only (f16's
    // buffer for a flagged stage's hi part, one per warpgroup, would leave three stages).
    if (tile_tokens == 256 && k_halves && std::is_same_v<T, __nv_bfloat16>) {
      if constexpr (std::is_same_v<T, __nv_bfloat16>)
        launch_sm90_tiles<T, 256, 1, kWGSplitK, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 256) {
      launch_sm90_tiles<T, 256, 1, 2, kGpu>(x, rows, tiles, w, out, stream, stream_k, workspace,
                                            workspace_bytes);
    } else if (tile_tokens == 192 && k_halves) {
      launch_sm90_tiles<T, 192, 1, kWGSplitK, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 192) {
      launch_sm90_tiles<T, 192, 1, 2, kGpu>(x, rows, tiles, w, out, stream, stream_k, workspace,
                                            workspace_bytes);
    } else if (tile_rows == 256) {
      launch_sm90_tiles<T, 128, 2, 2, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_rows == 192) {
      launch_sm90_tiles<T, 128, 1, 3, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 64 && tile_rows == 64 && k_halves) {
      launch_sm90_tiles<T, 64, 1, kWGSplitK, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 64 && tile_rows == 64) {
      launch_sm90_tiles<T, 64, 1, 1, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_tokens == 64) {
      launch_sm90_tiles<T, 64, 1, 2, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_rows == 64 && k_halves) {
      launch_sm90_tiles<T, 128, 1, kWGSplitK, kGpu>(x, rows, tiles, w, out, stream);
    } else if (tile_rows == 64) {
      launch_sm90_tiles<T, 128, 1, 1, kGpu>(x, rows, tiles, w, out, stream);
    } else {
      launch_sm90_tiles<T, 128, 1, 2, kGpu>(x, rows, tiles, w, out, stream, stream_k, workspace,
                                            workspace_bytes);
    }
  };
  auto by_dtype = [&](auto gpu) {
    if (x_dtype == DType::f16) {
      run(gpu, __half{});
    } else {
      run(gpu, __nv_bfloat16{});
    }
  };
  if (w.gpu_layout) {
    by_dtype(std::true_type{});
  } else {
    by_dtype(std::false_type{});
  }
}

}  // namespace mxfp4::cuda
