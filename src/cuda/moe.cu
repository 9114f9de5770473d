// Mixture of experts on the GPU: y[t, s] = x_row W[ids[t, s]]^T + b[ids[t, s]].
//
// The (token, slot) pairs are grouped by expert on the device, so each selected expert's weight
// is read once per tile of its tokens, never once per token:
// - small batches (at most kCtaRoutePairs pairs): every CTA of the decode kernel sorts the ids
//   itself (route.cuh): one launch, no workspace;
// - larger ones: a counting sort into a workspace (count per expert; a plan: prefix sums and a
//   tile list in five classes by an expert's token count; scatter into a permutation), in one
//   CTA up to 4096 pairs, else in three kernels, then per class the decode kernel with tiles of 8,
//   16 or 32 tokens, or a tiled GEMM, each tile one expert's tokens: x rows are gathered through
//   the permutation (for Hopper's wgmma GEMM, copied once into expert order, one launch for its
//   classes) and each result written to its own output row [t, s]. Grids are sized by upper
//   bounds on the host; CTAs past the planned tiles exit at once.
// No host round trip and no synchronization. Out-of-range ids are recorded in a per-device
// error record (thrown by mxfp4::synchronize through check_index_errors) and their output rows
// are filled with NaN; they are never read past the weight.
#include <cooperative_groups.h>
#include <cooperative_groups/reduce.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "cuda/backend.hpp"
#include "cuda/linear_kernels.hpp"
#include "cuda/route.cuh"

namespace mxfp4::cuda {

namespace {

__device__ IndexError g_index_error = {~0ull, 0, 0, 0};

IndexError* index_error_record() {
  void* p = nullptr;
  check(cudaGetSymbolAddress(&p, g_index_error), "cudaGetSymbolAddress(index error)");
  return static_cast<IndexError*>(p);
}

// atomicAdd(&counter[key], 1) for each calling thread, one atomic per distinct key among the
// warp's active threads (their sum): with skewed routing every pair of a warp names the same few
// experts, and one address taking 32 atomics in turn is what the count and scatter waited on.
// Returns the thread's old value, as atomicAdd would (threads of a key in lane order). For the
// global counters of count_kernel and scatter_kernel: skewed T = 4096 on GPT-OSS down 528 ->
// 520 us (an H100, session 10). The one-CTA routing keeps plain atomics on shared memory (with
// this, uniform T = 1024 measured 1.5-2.7% slower).
//
// With `noted`, the key's threads also fold their notes into noted[key], the largest x and y of
// them, one atomicMax each (count_kernel's runs of x, below).
__device__ __forceinline__ int aggregated_increment(int* counter, int key, int2* noted = nullptr,
                                                    int2 note = {}) {
  namespace cg = cooperative_groups;
  const cg::coalesced_group active = cg::coalesced_threads();
  const cg::coalesced_group peers = cg::labeled_partition(active, key);
  int x = 0, y = 0;
  if (noted != nullptr) {
    x = cg::reduce(peers, note.x, cg::greater<int>());
    y = cg::reduce(peers, note.y, cg::greater<int>());
  }
  int base = 0;
  if (peers.thread_rank() == 0) {
    base = atomicAdd(&counter[key], static_cast<int>(peers.size()));
    if (noted != nullptr) {
      atomicMax(&noted[key].x, x);
      atomicMax(&noted[key].y, y);
    }
  }
  return peers.shfl(base, 0) + static_cast<int>(peers.thread_rank());
}

// Runs of x. An expert whose pairs read distinct x rows filling [lo, lo + count) (skewed
// routing: every token on the same experts) need not have them staged for the wgmma GEMM, which
// then reads its tiles from x itself with TMA: the scatter places pair p at position first + row
// - lo (so tile rows follow x rows; runs[e] = {1, lo - first} tells it so, {0, 0} for every other
// expert), and each of the expert's tiles carries 1 + its first x row (TokenRows::Tile::x_first1)
// for the staging, which skips it, and the GEMM. Placing an expert's pairs in another order
// changes no result: each pair still writes its own output row.
//
// While counting, runs[e] holds {max of INT_MAX - row, max of row + 1} over the expert's pairs (0
// at the start: both are positive), or y = kRunBroken once a token names the expert twice (with
// x [T, K] its rows repeat). (row + 1 reaches INT_MAX only for row 2^31 - 2, the last of 2^31 - 1
// pairs: its expert then counts as no run, which is merely the slower path.)
constexpr int kRunBroken = INT_MAX;

// The x row of pair p (below 2^31: so are the pairs).
__device__ __forceinline__ int pair_row(std::int64_t p, int topk, bool x_per_slot) {
  return static_cast<int>(pair_x_row(p, topk, x_per_slot));
}
// What pair p notes in runs[id] while counting: {INT_MAX - row, row + 1}, or kRunBroken as y
// where its token names id in an earlier slot too (x [T, K]: its row repeats).
__device__ __forceinline__ int2 pair_note(const void* ids, DType id_dtype, std::int64_t p, int topk,
                                          bool x_per_slot, long long id) {
  const int row = pair_row(p, topk, x_per_slot);
  bool repeated = false;
  if (!x_per_slot) {
    for (std::int64_t q = p - p % topk; q < p; ++q)
      repeated |= load_id(ids, id_dtype, q) == id;
  }
  return make_int2(INT_MAX - row, repeated ? kRunBroken : row + 1);
}

// Pair p's position where its expert `id` is a run of x (runs[id] = {1, lo - first}: position
// first + row - lo, so that tile rows follow x rows), else -1: the scatter then gives it the
// expert's next free position. No runs (null): -1.
__device__ __forceinline__ int run_position(const int2* runs, long long id, std::int64_t p,
                                            int topk, bool x_per_slot) {
  const int2 r = runs != nullptr ? runs[id] : make_int2(0, 0);
  return r.x != 0 ? pair_row(p, topk, x_per_slot) - r.y : -1;
}

// Expert order: pair p with a bad id at `place` (after the valid pairs), its output row NaN.
template <typename T>
__device__ void place_bad_pair(std::int32_t* perm, int place, std::int64_t p, T* out,
                               std::int64_t n) {
  perm[place] = static_cast<std::int32_t>(p);
  fill_nan_row(out, place, n);
}

// Pairs per thread in count_kernel and scatter_kernel, whose ids are loaded together.
constexpr int kPairsPerThread = 4;
constexpr int kCountThreads = 256;

// The ids of this thread's pairs first + kCountThreads i (i < kPairsPerThread; -1 past the last
// pair), loaded at once; returns `first`.
__device__ __forceinline__ std::int64_t load_pair_ids(const void* ids, DType id_dtype,
                                                      std::int64_t pairs,
                                                      long long (&id)[kPairsPerThread]) {
  const std::int64_t first =
      static_cast<std::int64_t>(blockIdx.x) * kCountThreads * kPairsPerThread + threadIdx.x;
#pragma unroll
  for (int i = 0; i < kPairsPerThread; ++i) {
    const std::int64_t p = first + i * kCountThreads;
    id[i] = p < pairs ? load_id(ids, id_dtype, p) : -1;
  }
  return first;
}

// Validates every id; counts pairs per expert when `counts` is given, and notes their rows in
// runs (when given). With `local` (the experts' counts and notes fit a CTA's shared memory:
// count_shared_bytes), each CTA counts its pairs there and adds its nonzero totals to the global
// ones, one global atomic per expert and CTA: with global atomics per warp and key, uniform
// routing on 128 experts (nearly every pair of a warp a key of its own) took 13 us at T = 4096
// (ncu on an H100, session 21).
template <typename T>
__global__ void __launch_bounds__(kCountThreads)
    count_kernel(const void* ids, DType id_dtype, std::int64_t pairs, int experts, int topk,
                 bool x_per_slot, int* counts, int2* runs, IndexError* error, T* out,
                 std::int64_t n, bool local) {
  extern __shared__ int2 count_shared[];
  int2* shared_notes = count_shared;
  int* shared_counts = reinterpret_cast<int*>(count_shared + experts);
  const int tid = static_cast<int>(threadIdx.x);
  local = local && counts != nullptr;
  if (local) {
    for (int e = tid; e < experts; e += kCountThreads) {
      shared_counts[e] = 0;
      shared_notes[e] = make_int2(0, 0);
    }
    __syncthreads();
  }
  long long id[kPairsPerThread];
  const std::int64_t first = load_pair_ids(ids, id_dtype, pairs, id);
#pragma unroll
  for (int i = 0; i < kPairsPerThread; ++i) {
    const std::int64_t p = first + i * kCountThreads;
    if (p >= pairs) break;
    if (id[i] < 0 || id[i] >= experts) {
      report_bad_id(error, p, id[i], experts, topk, out, n);
      continue;
    }
    if (counts == nullptr) continue;
    const int e = static_cast<int>(id[i]);
    if (local) {
      atomicAdd(&shared_counts[e], 1);
      if (runs != nullptr) {
        const int2 note = pair_note(ids, id_dtype, p, topk, x_per_slot, id[i]);
        atomicMax(&shared_notes[e].x, note.x);
        atomicMax(&shared_notes[e].y, note.y);
      }
    } else if (runs != nullptr) {
      aggregated_increment(counts, e, runs, pair_note(ids, id_dtype, p, topk, x_per_slot, id[i]));
    } else {
      aggregated_increment(counts, e);
    }
  }
  if (local) {
    __syncthreads();
    for (int e = tid; e < experts; e += kCountThreads) {
      const int c = shared_counts[e];
      if (c == 0) continue;
      atomicAdd(&counts[e], c);
      if (runs != nullptr) {
        atomicMax(&runs[e].x, shared_notes[e].x);
        atomicMax(&runs[e].y, shared_notes[e].y);
      }
    }
  }
}

// count_kernel's and scatter_kernel's shared memory where a CTA keeps every expert's count and
// note (int2 + int each), else 0: they then use global atomics per warp and key.
std::size_t count_shared_bytes(int experts) {
  const std::size_t bytes = static_cast<std::size_t>(experts) * (sizeof(int2) + sizeof(int));
  return bytes <= 48 * 1024 ? bytes : 0;
}

// Tile classes of the sorted pairs by an expert's token count: detail::cuda_gather_class and
// its tiles (kernel_args.hpp, shared with tests/test_gather_plan.cpp).
constexpr int kClasses = detail::kCudaGatherClasses;
constexpr int kMid128Tile = detail::cuda_gather_tile(3, 0);
// Batches of few pairs on Hopper: the third GEMM class's experts (33 to this many tokens) on
// 64-token tiles (gather_linear).
constexpr int kFewMid64Tokens = 64;
// The 128-token class's weight rows per tile (wgmma GEMM): 192, three computing warpgroups of
// one m64 sub-tile each (sm90_gemm.cu), where two warpgroups of two sub-tiles (256 rows) left the
// tensor pipe half idle, each warp waiting on its own decode's latencies. An H100, session 25,
// GPT-OSS top-4 of 128, uniform routing (most experts in this class), us, 256 rows -> 192: T =
// 1024 gate_up 792.3 -> 771.1, down 448.8 -> 434.4; T = 4096 1271.3 -> 1219.7, 707.6 -> 666.9.
// (256 rows had been ~15% faster per token-row than 128, session 9.) MXFP4_CUDA_KERNEL=
// moe_mid256 / moe_mid128 give the class tiles of 256 / 128 rows (tests, comparison).
constexpr int kMid128Rows = 192;
constexpr int kLargeTile = 128;  // the fifth class's tiles off Hopper

// One warp: pair offsets per expert (cursor starts there), and the classes' tile lists, written
// at list + class_base[class]; totals[class] = their lengths.
struct ClassBases {
  int base[kClasses];
};

// `noted`: the rows noted while counting (see kRunBroken), from which runs (when given) is
// written; they may be the same array. bad_cursor (when given) gets the number of valid pairs:
// the first place of a bad id's pair in expert order.
__device__ void plan_warp(const int* counts, const int2* noted, int experts, int mid_max,
                          int mid128_max, int large_tile, int* offsets, int* cursor, int* totals,
                          int4* list, int2* runs, ClassBases class_base, int lane,
                          int* bad_cursor) {
  int pair_base = 0, base[kClasses] = {};
  // Each lane's count and note for the next 32 experts are loaded while it plans these (one
  // load latency per round of this single warp is what plan_kernel waits on).
  auto count_of = [&](int e) { return e < experts ? counts[e] : 0; };
  auto note_of = [&](int e) { return runs != nullptr && e < experts ? noted[e] : make_int2(0, 0); };
  int next_count = count_of(lane);
  int2 next_note = note_of(lane);
  for (int e0 = 0; e0 < experts; e0 += 32) {
    const int e = e0 + lane;
    const int c = next_count;
    const int2 note = next_note;
    next_count = count_of(e + 32);
    next_note = note_of(e + 32);
    const int cls = detail::cuda_gather_class(c, mid_max, mid128_max);
    const int tiles = detail::cuda_gather_tiles(c, cls, large_tile);
    int pc = c, tc[kClasses];
#pragma unroll
    for (int i = 0; i < kClasses; ++i)
      tc[i] = cls == i ? tiles : 0;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int up = __shfl_up_sync(0xFFFFFFFFu, pc, d);
      int ut[kClasses];
#pragma unroll
      for (int i = 0; i < kClasses; ++i)
        ut[i] = __shfl_up_sync(0xFFFFFFFFu, tc[i], d);
      if (lane >= d) {
        pc += up;
#pragma unroll
        for (int i = 0; i < kClasses; ++i)
          tc[i] += ut[i];
      }
    }
    if (e < experts) {
      const int first = pair_base + pc - c;
      offsets[e] = first;
      cursor[e] = first;
      int x_row1 = 0;  // 1 + the x row of the expert's first pair, where it is a run
      if (runs != nullptr) {
        const int2 r = note;
        const long long lo = INT_MAX - r.x, hi = r.y - 1LL;
        const bool run = c >= 2 && r.y != kRunBroken && hi - lo + 1 == c;
        runs[e] = run ? make_int2(1, static_cast<int>(lo) - first) : make_int2(0, 0);
        x_row1 = run ? static_cast<int>(lo) + 1 : 0;
      }
      const int t0 = base[cls] + tc[cls] - tiles;  // this expert's first tile in its class
      for (int j = 0; j < tiles; ++j) {
        const int tile = detail::cuda_gather_tile(cls, large_tile);
        const int begin = j * tile;
        list[class_base.base[cls] + t0 + j] =
            make_int4(e, first + begin, min(tile, c - begin), x_row1 != 0 ? x_row1 + begin : 0);
      }
    }
    pair_base += __shfl_sync(0xFFFFFFFFu, pc, 31);
#pragma unroll
    for (int i = 0; i < kClasses; ++i)
      base[i] += __shfl_sync(0xFFFFFFFFu, tc[i], 31);
  }
  if (lane == 0) {
    offsets[experts] = pair_base;
    if (bad_cursor != nullptr) *bad_cursor = pair_base;
#pragma unroll
    for (int i = 0; i < kClasses; ++i)
      totals[i] = base[i];
  }
}

__global__ void plan_kernel(const int* counts, int experts, int mid_max, int mid128_max,
                            int large_tile, int* offsets, int* cursor, int* totals, int4* list,
                            int2* runs, ClassBases class_base) {
  plan_warp(counts, runs, experts, mid_max, mid128_max, large_tile, offsets, cursor, totals, list,
            runs, class_base, static_cast<int>(threadIdx.x), cursor + experts);
}

// Batches of at most kFusedRoutePairs pairs over at most kFusedRouteExperts experts: the count,
// the plan and the scatter in one CTA, counts, cursors and noted rows in shared memory. One
// launch instead of a memset and three kernels (which cost ~12 us around a 48 us GEMM at T = 128
// on an H100, session 9). The same results as those, bar the order of an expert's pairs (where
// it is not a run). Measured there, top-4 of 128 experts: skewed T = 128 5 us faster, T = 1024
// 5 us; at T = 4096 (16384 pairs) one CTA took longer than the three kernels (uniform +1.6%),
// hence the bound. Expert order (`order`): bad ids' pairs are placed after the valid ones, their
// output rows (positions) filled with NaN.
constexpr int kFusedRouteThreads = 1024;
constexpr std::int64_t kFusedRoutePairs = 4096;
constexpr int kFusedRouteExperts = 3072;  // 16 bytes each: 48 KiB of shared memory

template <typename T>
__global__ void __launch_bounds__(kFusedRouteThreads)
    route_fused_kernel(const void* ids, DType id_dtype, int pairs, int experts, int topk,
                       bool x_per_slot, int mid_max, int mid128_max, int large_tile, int* offsets,
                       int* totals, int4* list, int2* runs, ClassBases class_base,
                       std::int32_t* perm, IndexError* error, T* out, std::int64_t n, bool order) {
  extern __shared__ int2 route_fused_shared[];
  __shared__ int bad_cursor;
  int2* noted = route_fused_shared;
  int* counts = reinterpret_cast<int*>(route_fused_shared + experts);
  int* cursor = counts + experts;
  const int tid = static_cast<int>(threadIdx.x);
  const int step = static_cast<int>(blockDim.x);
  for (int e = tid; e < experts; e += step) {
    counts[e] = 0;
    noted[e] = make_int2(0, 0);
  }
  __syncthreads();
  for (int p = tid; p < pairs; p += step) {
    const long long id = load_id(ids, id_dtype, p);
    if (id < 0 || id >= experts) {
      report_bad_id(error, p, id, experts, topk, order ? nullptr : out, n);
      continue;
    }
    atomicAdd(&counts[id], 1);
    if (runs != nullptr) {
      const int2 note = pair_note(ids, id_dtype, p, topk, x_per_slot, id);
      atomicMax(&noted[id].x, note.x);
      atomicMax(&noted[id].y, note.y);
    }
  }
  __syncthreads();
  if (tid < 32) {
    plan_warp(counts, noted, experts, mid_max, mid128_max, large_tile, offsets, cursor, totals,
              list, runs, class_base, tid, &bad_cursor);
  }
  __syncthreads();
  for (int p = tid; p < pairs; p += step) {
    const long long id = load_id(ids, id_dtype, p);
    if (id < 0 || id >= experts) {
      if (order) place_bad_pair(perm, atomicAdd(&bad_cursor, 1), p, out, n);
      continue;
    }
    const int at = run_position(runs, id, p, topk, x_per_slot);
    perm[at >= 0 ? at : atomicAdd(&cursor[id], 1)] = static_cast<std::int32_t>(p);
  }
}

// With `local` (count_shared_bytes), each CTA reserves its pairs' places per expert with one
// global atomic per expert and hands them out in shared memory (the order of an expert's pairs
// changes no result: each pair writes its own output row). Expert order (order_out given): bad
// ids' pairs are placed from cursor[experts] on, their rows of order_out filled with NaN.
template <typename T>
__global__ void __launch_bounds__(kCountThreads)
    scatter_kernel(const void* ids, DType id_dtype, std::int64_t pairs, int experts, int topk,
                   bool x_per_slot, int* cursor, const int2* runs, std::int32_t* perm, bool local,
                   T* order_out, std::int64_t n) {
  extern __shared__ int2 count_shared[];
  int* shared_counts = reinterpret_cast<int*>(count_shared + experts);
  const int tid = static_cast<int>(threadIdx.x);
  if (local) {
    for (int e = tid; e < experts; e += kCountThreads)
      shared_counts[e] = 0;
    __syncthreads();
  }
  long long id[kPairsPerThread];
  const std::int64_t first = load_pair_ids(ids, id_dtype, pairs, id);
  int at[kPairsPerThread];  // the pair's position, or (-2 - its place among the CTA's) for local
#pragma unroll
  for (int i = 0; i < kPairsPerThread; ++i) {
    const std::int64_t p = first + i * kCountThreads;
    at[i] = -1;
    if (p >= pairs) continue;
    if (id[i] < 0 || id[i] >= experts) {
      if (order_out != nullptr)
        place_bad_pair(perm, atomicAdd(&cursor[experts], 1), p, order_out, n);
      continue;
    }
    at[i] = run_position(runs, id[i], p, topk, x_per_slot);
    if (at[i] >= 0) continue;
    const int e = static_cast<int>(id[i]);
    at[i] = local ? -2 - atomicAdd(&shared_counts[e], 1) : aggregated_increment(cursor, e);
  }
  if (local) {
    __syncthreads();
    for (int e = tid; e < experts; e += kCountThreads) {
      const int c = shared_counts[e];
      if (c != 0) shared_counts[e] = atomicAdd(&cursor[e], c);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kPairsPerThread; ++i) {
    if (at[i] == -1) continue;
    const int place = at[i] >= 0 ? at[i] : shared_counts[id[i]] + (-2 - at[i]);
    perm[place] = static_cast<std::int32_t>(first + i * kCountThreads);
  }
}

// Exact CUDA-core path (f32 x, misaligned buffers): one warp per (pair, row). Expert order (perm
// given): one per (position, row), the pair perm[position], positions from *valid on bad ids'.
template <typename T>
__global__ void __launch_bounds__(256)
    gather_simple_kernel(const T* __restrict__ x, bool x_per_slot, int topk, std::int64_t pairs,
                         const void* ids, DType id_dtype, int experts,
                         const std::uint8_t* __restrict__ blocks,
                         const std::uint8_t* __restrict__ scales, const void* __restrict__ bias,
                         DType bias_dtype, T* __restrict__ out, std::int64_t n, std::int64_t k,
                         bool gpu, const std::int32_t* perm, const int* valid) {
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (item >= pairs * n) return;
  const std::int64_t position = item / n;
  if (perm != nullptr && position >= *valid) return;  // NaN rows of bad ids (scatter)
  const std::int64_t p = perm != nullptr ? std::int64_t{perm[position]} : position;
  const std::int64_t row = item % n;
  const long long e = load_id(ids, id_dtype, p);
  if (e < 0 || e >= experts) return;  // reported by count_kernel
  const std::int64_t nblk = k / kBlockSize;
  const std::int64_t wrow = e * n + row;
  const T* xr = x + pair_x_row(p, topk, x_per_slot) * k;
  float acc = warp_row_dot(xr, blocks + wrow * (k / 2), scales + wrow * nblk, nblk, lane, gpu);
  if (lane == 0) {
    if (bias != nullptr) acc += load_bias(bias, bias_dtype, wrow);
    out[position * n + row] = from_float<T>(acc);
  }
}

// The tile lists whose x rows are staged (up to three GEMM classes): each list, its valid
// entries' count (on the device) and its tiles' tokens over 8.
struct StageLists {
  const int4* list[3] = {};
  const int* total[3] = {};
  int groups[3] = {};
  int lists = 0;
};

// x rows (bf16 or f16: bytes are copied) of the tiles in `stage`'s lists copied to `staged` in
// tile (expert) order: position p's row to row p. A warp per row, 16 bytes per lane and load,
// four loads in flight before their stores (k is a multiple of 32, rows are 16-byte aligned);
// CTAs take groups of 8 rows of the tiles in turn, list after list. (The lists are picked with
// constant indices: indexed by a variable, the parameter arrays went to local memory and the
// kernel took 1.6x as long.)
__global__ void __launch_bounds__(256)
    stage_rows_kernel(const __nv_bfloat16* __restrict__ x, TokenRows rows, StageLists stage,
                      std::int64_t k, __nv_bfloat16* __restrict__ staged) {
  const std::int64_t items0 = stage.lists > 0 ? std::int64_t{*stage.total[0]} * stage.groups[0] : 0;
  const std::int64_t items1 = stage.lists > 1 ? std::int64_t{*stage.total[1]} * stage.groups[1] : 0;
  const std::int64_t items2 = stage.lists > 2 ? std::int64_t{*stage.total[2]} * stage.groups[2] : 0;
  const std::int64_t all = items0 + items1 + items2;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int chunks = static_cast<int>(k / 8);
  for (std::int64_t i = blockIdx.x; i < all; i += gridDim.x) {
    std::int64_t j = i;
    const int4* list = stage.list[0];
    int groups = stage.groups[0];
    if (j >= items0) {
      j -= items0;
      list = stage.list[1];
      groups = stage.groups[1];
      if (j >= items1) {
        j -= items1;
        list = stage.list[2];
        groups = stage.groups[2];
      }
    }
    const int4 v = list[j / groups];
    const int r = static_cast<int>(j % groups) * 8 + warp;
    if (r >= v.z || v.w != 0) continue;  // a run of x is read in place
    const std::int64_t position = v.y + r;
    const auto* src = reinterpret_cast<const uint4*>(x + rows.x_row(rows.pair(position)) * k);
    auto* dst = reinterpret_cast<uint4*>(staged + position * k);
    int c = lane;
    for (; c + 96 < chunks; c += 128) {
      const uint4 a0 = __ldg(src + c);
      const uint4 a1 = __ldg(src + c + 32);
      const uint4 a2 = __ldg(src + c + 64);
      const uint4 a3 = __ldg(src + c + 96);
      dst[c] = a0;
      dst[c + 32] = a1;
      dst[c + 64] = a2;
      dst[c + 96] = a3;
    }
    for (; c < chunks; c += 32)
      dst[c] = __ldg(src + c);
  }
}

bool aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15) == 0;
}

}  // namespace

void gather_linear(const detail::GatherLinearArgs& a) {
  cudaStream_t stream = as_stream(a.stream);
  const std::int64_t pairs = a.tokens * a.topk;
  const std::int64_t n = a.w.n;
  if (pairs >= (std::int64_t{1} << 31) || a.w.experts >= (std::int64_t{1} << 31) ||
      a.topk >= (std::int64_t{1} << 31) || n >= (std::int64_t{1} << 31) ||
      a.w.k >= (std::int64_t{1} << 30)) {
    throw Unsupported(
        "gather_linear: sizes past 2^31 pairs, experts or rows are not supported on "
        "CUDA");
  }
  const int experts = static_cast<int>(a.w.experts);
  const int topk = static_cast<int>(a.topk);
  IndexError* error = index_error_record();
  // Expert order (gather_linear_expert_order): results at their positions in the sort, which is
  // returned in a.order_perm (used as the permutation itself) and a.order_offsets.
  const bool order = a.order_offsets != nullptr;
  if (order && pairs == 0) {
    check(cudaMemsetAsync(a.order_offsets, 0, static_cast<std::size_t>(experts + 1) * sizeof(int),
                          stream),
          "cudaMemsetAsync(gather_linear offsets)");
    return;
  }

  const bool tensor_cores = a.x_dtype != DType::f32 && aligned16(a.x) && aligned16(a.w.blocks);
  if (!tensor_cores && !order) {
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      T* out = static_cast<T*>(a.out);
      count_kernel<T>
          <<<blocks_for(pairs, kCountThreads * kPairsPerThread), kCountThreads, 0, stream>>>(
              a.indices, a.index_dtype, pairs, experts, topk, a.x_per_slot, nullptr, nullptr, error,
              out, n, false);
      check_launch("count_kernel");
      gather_simple_kernel<T><<<blocks_for(pairs * n, 8), 256, 0, stream>>>(
          static_cast<const T*>(a.x), a.x_per_slot, topk, pairs, a.indices, a.index_dtype, experts,
          a.w.blocks, a.w.scales, a.w.bias, a.w.bias_dtype, out, n, a.w.k, a.w.gpu_layout, nullptr,
          nullptr);
      check_launch("gather_simple_kernel");
    });
    return;
  }

  TokenRows rows;
  rows.experts = experts;
  rows.rows = a.x_per_slot ? pairs : a.tokens;  // x's rows (the wgmma GEMM's tensor map)
  rows.topk = topk;
  rows.x_per_slot = a.x_per_slot;
  rows.error = error;
  // (Expert order sorts in the workspace where the routed decode kernel does not run.)
  const bool sort_small = order && (!tensor_cores || n == 0);
  if (pairs <= kCtaRoutePairs && !sort_small) {
    // Small batch: each CTA of the decode kernel routes the ids itself; tiles of 8 tokens, or of
    // 16 for experts with more than 8 (measured on an H100, skewed T = 16: bench/RESULTS.md,
    // session 6).
    rows.route_ids = a.indices;
    rows.route_dtype = a.index_dtype;
    rows.route_pairs = static_cast<int>(pairs);
    // (f16: tiles of 16 only where each decode warp takes two row tiles, launch_mma.)
    rows.route_sixteens = forced_kernel() != "route8";
    const std::int64_t tiles = pairs / 8 + std::min<std::int64_t>(a.w.experts, pairs);
    launch_decode(a.x, a.x_dtype, rows, tiles, 8, a.w, a.out, stream,
                  {a.order_perm, a.order_offsets});
    return;
  }

  // Experts of 9 to 16 tokens get one decode tile of 16 (measured: faster than the sm_80 GEMM's
  // tile of 32 there). Without a GEMM, the third class takes every expert above 16 tokens. With
  // one, experts up to 32 tokens get one tile of 32 (sm_80 GEMM for bf16, the decode kernel for
  // f16) and larger ones tiles of 128, or on Hopper tiles of 256 (bf16 and f16) for the wgmma GEMM,
  // which runs each at the width its tokens need (sm90_gemm.cu; measured: for experts of 32 tokens
  // the sm_80 GEMM's tile of 32 is faster). choose_kernel for many tokens tells whether the device
  // has it (unless MXFP4_CUDA_KERNEL forces another).
  const bool gemm = a.x_dtype == DType::bf16;  // the sm_80 GEMM
  const bool sm90 = choose_kernel(a.x_dtype, std::int64_t{1} << 20, a.w.n).sm90;
  const bool large = gemm || sm90;  // a class of large experts, on a GEMM

  // Counting sort and tile plan in the workspace: the caller's, or stream-ordered memory of this
  // call (CallMemory: no device-wide synchronization, capturable in a graph).
  // For the wgmma GEMM (bf16 or f16 x), the large experts' x rows are staged in expert order behind
  // the plan, where there is room (always in memory of this call), so that TMA can load them in
  // whole tiles: gathering rows with cp.async measured 1.7x slower at 4096 tokens.
  const detail::CudaGatherPlan plan{pairs, a.w.experts, sort_small};
  const std::size_t need = plan.bytes();
  const std::size_t staged_need = plan.staged_bytes(a.w.k);
  const bool want_staging = sm90 && tensor_cores && forced_kernel() != "wgmma_cpasync";
  bool staging = want_staging;
  // (gather_linear_workspace_bytes promises no workspace to small batches, which sort_small
  // needs: those take memory of this call where the caller's is too small.)
  void* workspace = sort_small && a.workspace_bytes < need ? nullptr : a.workspace;
  if (workspace != nullptr) {
    if (a.workspace_bytes < need) {
      throw InvalidArgument("gather_linear: the workspace has " +
                            std::to_string(a.workspace_bytes) + " bytes, " + std::to_string(need) +
                            " are needed");
    }
    staging = want_staging && a.workspace_bytes >= staged_need &&
              aligned16(static_cast<std::uint8_t*>(workspace) + plan.staged_at());
  }
  CallMemory memory(workspace, staging ? staged_need : need, stream, "gather_linear workspace");
  auto* base = static_cast<std::uint8_t*>(memory.get());
  int* counts = reinterpret_cast<int*>(base + plan.counts_at());
  int* offsets = order ? a.order_offsets : reinterpret_cast<int*>(base + plan.offsets_at());
  int* cursor = reinterpret_cast<int*>(base + plan.cursor_at());
  // Runs of x (see kRunBroken), where x rows are staged. (MXFP4_CUDA_KERNEL=moe_stage_all
  // stages every expert's rows, runs too, for comparison.)
  int2* runs = staging && forced_kernel() != "moe_stage_all"
                   ? reinterpret_cast<int2*>(base + plan.runs_at())
                   : nullptr;
  int* totals = reinterpret_cast<int*>(base + plan.totals_at());
  auto* perm = order ? a.order_perm : reinterpret_cast<std::int32_t*>(base + plan.perm_at());
  auto* list = reinterpret_cast<int4*>(base + plan.list_at());
  const int mid_max = large ? static_cast<int>(detail::kCudaGemmMinTokens) : INT_MAX;
  // Few pairs (at most 512, top-4 of 128 tokens) on Hopper: 128-token tiles of 64 rows
  // with two computing warpgroups on alternate k-tiles, the dense rule's tile for 128 tokens on
  // these shapes. Tiles of 256 cost about as much at any width (the weight's decode dominates),
  // so four experts of 128 tokens took two waves of them: 85.8 us on GPT-OSS gate_up against
  // 62.8 expert by expert (an H100, session 8).
  // (On Hopper f16 x takes bf16's classes and tiles: f16 wgmma, as fast on the same tiles.)
  const bool few = sm90 && pairs <= 512;
  const int large_tile = sm90 ? (!few ? 256 : 128) : kLargeTile;
  const int large_rows = few ? 64 : 128;
  // Hopper (not few): experts of 33 to 128 tokens on 128-token tiles of 128 rows, the rest
  // on 256-token tiles. A 256-token tile costs about as much at any width (the weight's decode
  // dominates) and a 128-token one ~3/4 of it, so experts that fit 128 tokens take the cheaper
  // tile, and larger ones keep one tile of 256 rather than two of 128 (an H100, session 8,
  // every large expert forced onto 128-token tiles: uniform T = 1024 gate_up 1096.6 -> 973.8 us,
  // T = 4096 1376.6 -> 1644.2).
  // Few pairs: experts of 33-64 tokens take the third GEMM class instead, one 64-token tile each
  // (launched below), where the 128-token tiles of 64 rows made skewed batches of 48 and 64 tokens
  // per expert slower than the dense kernel expert by expert (an H100, session 22, GPT-OSS top-4,
  // four experts of T tokens, us: T = 48 / 64 down 50.7 / 48.3 -> 33.4 / 33.5 against 40.0 expert
  // by expert, gate_up 77.4 / 70.7 -> 53.1 / 53.6 against 51.9 / 53.5; experts of 65-128 tokens
  // ~1.5 us slower for the class's launch, empty there: T = 96 down 46.8 -> 48.4, 47.8 expert by
  // expert).
  const int mid128_max = sm90 ? (!few ? kMid128Tile : kFewMid64Tokens) : 0;
  // Few pairs on a weight whose 64-row tiles take more than half the SMs (GPT-OSS gate_up): the
  // 64-token tiles of the second and third GEMM classes (experts of 17-32 and 33-64 tokens) have
  // 64 rows and two computing warpgroups on alternate k-tiles, as the dense rule has there. An
  // H100, session 23, four experts of T tokens, gate_up, us: third class T = 40 / 48 / 56 / 64
  // bf16 54.1 / 54.5 / 54.5 / 54.4 -> 50.8 / 49.5 / 49.4 / 49.5 (1.07-1.10x expert by expert), f16
  // 57.4-57.8 -> 51.1-52.2; second class T = 17 / 24 / 32 bf16 50.4 / 50.4 / 50.5 -> 44.9 / 45.1 /
  // 44.9 (0.96-0.98x -> 1.06-1.09x), f16 51.7 -> 47.3-47.4, GPU layout 44.2 -> 43.4-43.8.
  // (Measured slower in session 22, 58-61 us at T = 24-32, while x's boxes still reached past a
  // skewed batch's rows: launch_sm90_tiles.)
  const bool few_split64 = few && 2 * ((n + 63) / 64) > current_device_facts().multiprocessors;
  // The third GEMM class's launch: 128-token tiles of kMid128Rows rows (MXFP4_CUDA_KERNEL=
  // moe_mid128 / moe_mid256: 128 / 256 rows, for comparison), or for few pairs 64-token tiles of
  // 128 rows, or of 64 rows with two warpgroups on alternate k-tiles (few_split64).
  const int mid128_tokens = few ? kFewMid64Tokens : kMid128Tile;
  const int mid128_rows = few_split64                              ? 64
                          : few || forced_kernel() == "moe_mid128" ? 128
                          : forced_kernel() == "moe_mid256"        ? 256
                                                                   : kMid128Rows;
  const std::int64_t small_tiles = plan.small_tiles();
  const std::int64_t sixteen_tiles = plan.sixteen_tiles();
  const std::int64_t mid_tiles = large ? plan.mid_gemm_tiles() : plan.mid_tiles();
  ClassBases bases;
  bases.base[0] = 0;
  bases.base[1] = static_cast<int>(small_tiles);
  bases.base[2] = static_cast<int>(small_tiles + sixteen_tiles);
  bases.base[3] = static_cast<int>(small_tiles + sixteen_tiles + plan.mid_tiles());
  bases.base[4] = static_cast<int>(bases.base[3] + plan.mid128_tiles());
  // (MXFP4_CUDA_KERNEL=moe_route3 keeps the three kernels, for their tests.)
  if (pairs <= kFusedRoutePairs && experts <= kFusedRouteExperts &&
      forced_kernel() != "moe_route3") {
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      route_fused_kernel<T>
          <<<1, kFusedRouteThreads,
             (sizeof(int2) + 2 * sizeof(int)) * static_cast<std::size_t>(experts), stream>>>(
              a.indices, a.index_dtype, static_cast<int>(pairs), experts, topk, a.x_per_slot,
              mid_max, mid128_max, large_tile, offsets, totals, list, runs, bases, perm, error,
              static_cast<T*>(a.out), n, order);
    });
    check_launch("route_fused_kernel");
  } else {
    const unsigned count_grid = blocks_for(pairs, kCountThreads * kPairsPerThread);
    const std::size_t shared = count_shared_bytes(experts);
    // counts and runs (which follows it) to zero
    check(cudaMemsetAsync(counts, 0, plan.offsets_at() - plan.counts_at(), stream),
          "cudaMemsetAsync(gather_linear counts)");
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      count_kernel<T><<<count_grid, kCountThreads, shared, stream>>>(
          a.indices, a.index_dtype, pairs, experts, topk, a.x_per_slot, counts, runs, error,
          order ? nullptr : static_cast<T*>(a.out), n, shared != 0);
    });
    check_launch("count_kernel");
    plan_kernel<<<1, 32, 0, stream>>>(counts, experts, mid_max, mid128_max, large_tile, offsets,
                                      cursor, totals, list, runs, bases);
    check_launch("plan_kernel");
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      scatter_kernel<T><<<count_grid, kCountThreads, shared, stream>>>(
          a.indices, a.index_dtype, pairs, experts, topk, a.x_per_slot, cursor, runs, perm,
          shared != 0, order ? static_cast<T*>(a.out) : nullptr, n);
    });
    check_launch("scatter_kernel");
  }
  if (n == 0) {  // expert order: the sort alone
    memory.release();
    return;
  }
  if (!tensor_cores) {  // expert order, f32 x or misaligned buffers
    dispatch_floating(a.x_dtype, [&](auto zero) {
      using T = decltype(zero);
      gather_simple_kernel<T><<<blocks_for(pairs * n, 8), 256, 0, stream>>>(
          static_cast<const T*>(a.x), a.x_per_slot, topk, pairs, a.indices, a.index_dtype, experts,
          a.w.blocks, a.w.scales, a.w.bias, a.w.bias_dtype, static_cast<T*>(a.out), n, a.w.k,
          a.w.gpu_layout, perm, offsets + experts);
      check_launch("gather_simple_kernel");
    });
    memory.release();
    return;
  }
  rows.perm = perm;
  rows.out_perm = order ? nullptr : perm;
  // Class cls's tiles: its list and count (in rows), the grid's bound and its tiles' tokens.
  auto select = [&](int cls) {
    rows.tile_list = list + bases.base[cls];
    rows.tile_total = totals + cls;
  };
  auto bound = [&](int cls) -> std::int64_t {
    return cls == 0   ? small_tiles
           : cls == 1 ? sixteen_tiles
           : cls == 2 ? mid_tiles
           : cls == 3 ? plan.mid128_tiles()
                      : plan.large_tiles();
  };
  auto tile_of = [&](int cls) { return detail::cuda_gather_tile(cls, large_tile); };
  // The classes of 8- and 16-token tiles in one launch of the decode kernel (launch_mma; an empty
  // class then costs no launch of its own). MXFP4_CUDA_KERNEL=moe_split16 launches each.
  select(0);
  if (forced_kernel() != "moe_split16") {
    TokenRows both = rows;
    both.tile_list16 = list + bases.base[1];
    both.tile_total16 = totals + 1;
    both.tile_bound16 = static_cast<int>(bound(1));
    launch_decode(a.x, a.x_dtype, both, bound(0) + bound(1), tile_of(0), a.w, a.out, stream);
  } else {
    launch_decode(a.x, a.x_dtype, rows, bound(0), tile_of(0), a.w, a.out, stream);
    select(1);
    launch_decode(a.x, a.x_dtype, rows, bound(1), tile_of(1), a.w, a.out, stream);
  }
  // The GEMM classes. Experts of 17-32 tokens: on Hopper, the wgmma GEMM's 64-token
  // tiles of 128 rows (at width 32; few pairs on wide weights, 64 rows: few_split64) where x rows
  // are staged; else the sm_80 GEMM's tiles of 32 (bf16) or the decode kernel's (f16).
  // Measured on an H100 (session 10), uniform T = 1024 (half the experts in this class):
  // gate_up 919 -> 812 us, down 510 -> 460; 64 rows with two warpgroups on alternate k-tiles
  // 865 / 477. MXFP4_CUDA_KERNEL=moe_mid32 keeps the sm_80 GEMM (tests).
  const bool mid_wgmma = sm90 && staging && forced_kernel() != "moe_mid32";
  const bool large_wgmma = large && sm90 && staging;
  // The staged classes' x rows, in one launch for all of them before their GEMMs (a launch per
  // class, each before its GEMM, measured the same or up to 1% slower: an H100, session 10).
  // The wgmma GEMM then reads row p of `staged` for position p.
  auto* staged = reinterpret_cast<__nv_bfloat16*>(base + plan.staged_at());
  auto staged_rows = [&] {
    TokenRows r = rows;
    r.x_by_position = true;
    r.x_source = runs != nullptr ? a.x : nullptr;
    r.source_rows = rows.rows;  // x's own rows
    r.rows = pairs;
    return r;
  };
  StageLists stage;
  std::int64_t stage_bound = 0;
  for (int cls = 2; cls <= 4; ++cls) {
    const bool staged_class = cls == 2 ? mid_wgmma : large_wgmma && (cls == 4 || mid128_max > 0);
    if (!staged_class || bound(cls) == 0) continue;
    stage.list[stage.lists] = list + bases.base[cls];
    stage.total[stage.lists] = totals + cls;
    stage.groups[stage.lists] = tile_of(cls) / 8;
    ++stage.lists;
    stage_bound += bound(cls) * (tile_of(cls) / 8);
  }
  if (stage.lists > 0) {
    stage_rows_kernel<<<static_cast<unsigned>(std::min<std::int64_t>(
                            stage_bound, 8 * current_device_facts().multiprocessors)),
                        256, 0, stream>>>(static_cast<const __nv_bfloat16*>(a.x), rows, stage,
                                          a.w.k, staged);
    check_launch("stage_rows_kernel");
  }
  select(2);
  if (mid_wgmma) {
    if (mid_tiles > 0) {
      launch_sm90_gemm(staged, a.x_dtype, staged_rows(), mid_tiles, 64, few_split64 ? 64 : 128, a.w,
                       a.out, stream, few_split64);
    }
  } else if (gemm) {
    launch_gemm(a.x, rows, mid_tiles, tile_of(2), a.w, a.out, stream);
  } else {
    launch_decode(a.x, a.x_dtype, rows, mid_tiles, tile_of(2), a.w, a.out, stream);
  }
  if (large) {
    // The third GEMM class (mid128_max > 0: 128-token tiles, or 64-token ones for few pairs),
    // then the large experts' tiles.
    for (int cls = mid128_max > 0 ? 3 : 4; cls <= 4; ++cls) {
      select(cls);
      const int tile_tokens = cls == 3 ? mid128_tokens : tile_of(cls);
      const int tile_rows = cls == 3 ? mid128_rows : large_rows;
      // two computing warpgroups on alternate k-tiles
      const bool halves = cls == 3 ? few_split64 : few;
      if (bound(cls) == 0) continue;
      if (large_wgmma) {
        launch_sm90_gemm(staged, a.x_dtype, staged_rows(), bound(cls), tile_tokens, tile_rows, a.w,
                         a.out, stream, halves);
      } else if (sm90) {
        launch_sm90_gemm(a.x, a.x_dtype, rows, bound(cls), tile_tokens, tile_rows, a.w, a.out,
                         stream, halves);
      } else {
        launch_gemm(a.x, rows, bound(cls), tile_of(cls), a.w, a.out, stream);
      }
    }
  }
  memory.release();
}

void check_index_errors() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return;
  IndexError e{};
  check(cudaMemcpyFromSymbol(&e, g_index_error, sizeof(e)), "cudaMemcpyFromSymbol(index error)");
  if (e.pair == ~0ull) return;
  const IndexError clear = {~0ull, 0, 0, 0};
  check(cudaMemcpyToSymbol(g_index_error, &clear, sizeof(clear)),
        "cudaMemcpyToSymbol(index error)");
  const auto pair = static_cast<long long>(e.pair);
  throw IndexOutOfRange("gather_linear: indices[" + std::to_string(pair / e.topk) + ", " +
                        std::to_string(pair % e.topk) + "] = " + std::to_string(e.value) +
                        " is outside [0, " + std::to_string(e.experts) + ") (the weight has " +
                        std::to_string(e.experts) +
                        " experts); its output row was filled with NaN");
}

}  // namespace mxfp4::cuda
