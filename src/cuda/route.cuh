// Routing for the mixture-of-experts path: expert ids read on the device, out-of-range ids
// recorded in a device-side error record (reported by mxfp4::synchronize), and the small-batch
// routing each CTA of the decode kernel does for itself. CUDA translation units only.
#pragma once

#include <climits>
#include <cstdint>

#include "core/kernel_args.hpp"
#include "cuda/mma.cuh"

namespace mxfp4::cuda {

// The first out-of-range expert id a kernel met (pair == ~0: none). One per device, in moe.cu.
struct IndexError {
  unsigned long long pair;
  long long value;
  long long experts;
  long long topk;
};

__device__ __forceinline__ long long load_id(const void* ids, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::u32:
      return static_cast<const std::uint32_t*>(ids)[i];
    case DType::i32:
      return static_cast<const std::int32_t*>(ids)[i];
    default:
      return static_cast<const std::int64_t*>(ids)[i];
  }
}

// Output row `row` of n values filled with NaN.
template <typename T>
__device__ void fill_nan_row(T* out, std::int64_t row, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    out[row * n + i] = from_float<T>(__int_as_float(0x7FC00000));
}

// Records an out-of-range id (the first one to arrive wins) and fills its output row with NaN, so
// a caller who never synchronizes still cannot mistake it for a result. (out null: expert order,
// where the pair's row is a position, filled by whoever places it.)
template <typename T>
__device__ void report_bad_id(IndexError* error, std::int64_t pair, long long value, int experts,
                              int topk, T* out, std::int64_t n) {
  if (atomicCAS(&error->pair, ~0ull, static_cast<unsigned long long>(pair)) == ~0ull) {
    error->value = value;
    error->experts = experts;
    error->topk = topk;
  }
  if (out != nullptr) fill_nan_row(out, pair, n);
}

// Ids of a small batch (at most kCtaRoutePairs pairs), sorted by each CTA itself: no workspace,
// no extra launch.
inline constexpr int kCtaRoutePairs = static_cast<int>(detail::kCudaCtaRoutePairs);
// Whole warps covering kCtaRoutePairs threads (ballots need every lane of a warp).
inline constexpr int kRouteWarps = (kCtaRoutePairs + 31) / 32;

struct CtaRoute {
  std::int32_t perm[kCtaRoutePairs];    // position -> pair, sorted by expert (stable)
  std::int32_t expert[kCtaRoutePairs];  // expert of each position; experts (past the end) if bad
  std::int32_t warp_flags[kRouteWarps];
  std::int32_t warp_flags16[kRouteWarps];
  // Every tile: first those of 16 tokens (tile_count16), then those of 8, each in position order.
  TokenRows::Tile tiles[kCtaRoutePairs];
  int tile_count;
  int tile_count16;
};

// Called by all threads of a CTA of at least 32 * kRouteWarps threads. Sorts the pairs by expert
// into `route` and cuts each expert's run into tiles: of 16 tokens where the run is longer than
// 8 and rows.route_sixteens is set (route.tiles[0 .. tile_count16)), else of 8 (the rest, up to
// route.tile_count). Bad ids sort last and form no tile; they are reported by the CTA with
// `reporter` set, which in expert order (order.offsets given) also writes the sort out: the perm,
// each expert's first position (and the number of valid pairs) in order.offsets, and NaN in the
// rows of the bad ids' positions.
template <typename T>
__device__ void route_in_cta(const TokenRows& rows, CtaRoute& route, bool reporter, T* out, int n,
                             const SortExport& order) {
  const int tid = static_cast<int>(threadIdx.x);
  const int pairs = rows.route_pairs;
  const int experts = rows.experts;
  int e = INT_MAX;
  if (tid < pairs) {
    const long long id = load_id(rows.route_ids, rows.route_dtype, tid);
    if (id >= 0 && id < experts) {
      e = static_cast<int>(id);
    } else {
      e = experts;
      if (reporter) {
        report_bad_id(rows.error, tid, id, experts, rows.topk,
                      order.offsets != nullptr ? nullptr : out, n);
      }
    }
    route.expert[tid] = e;
  }
  __syncthreads();
  int rank = 0;
  if (tid < pairs) {
    for (int j = 0; j < pairs; ++j) {
      const int ej = route.expert[j];
      rank += (ej < e) || (ej == e && j < tid);
    }
  }
  __syncthreads();
  if (tid < pairs) {
    route.perm[rank] = tid;
    route.expert[rank] = e;
  }
  __syncthreads();
  if (reporter && order.offsets != nullptr) {
    if (tid < pairs) {
      order.perm[tid] = route.perm[tid];
      if (route.expert[tid] == experts) fill_nan_row(out, tid, n);
    }
    // order.offsets[e]: the positions of experts below e (binary search in the sorted experts).
    for (int x = tid; x <= experts; x += static_cast<int>(blockDim.x)) {
      int lo = 0, hi = pairs;
      while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (route.expert[mid] < x) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      order.offsets[x] = lo;
    }
  }
  // Position p starts a tile when its expert's run starts there or a tile's tokens later.
  bool start = false, start16 = false;
  int tile_tokens = 8;
  if (tid < pairs && route.expert[tid] < experts) {
    const int ep = route.expert[tid];
    int run_first = tid;
    while (run_first > 0 && route.expert[run_first - 1] == ep)
      --run_first;
    int run_end = tid + 1;
    while (run_end < pairs && route.expert[run_end] == ep)
      ++run_end;
    if (rows.route_sixteens && run_end - run_first > 8) tile_tokens = 16;
    start = (tid - run_first) % tile_tokens == 0;
    start16 = start && tile_tokens == 16;
  }
  // Whole warps (the CTA has at least that many threads): each counts its tile starts of either
  // size, then after the barrier every start finds its place from the counts of the warps before.
  const bool in_warps = tid < 32 * kRouteWarps;
  unsigned ballot = 0, ballot16 = 0;
  if (in_warps) {
    ballot = __ballot_sync(0xFFFFFFFFu, start && !start16);
    ballot16 = __ballot_sync(0xFFFFFFFFu, start16);
    if ((tid & 31) == 0) {
      route.warp_flags[tid >> 5] = __popc(ballot);
      route.warp_flags16[tid >> 5] = __popc(ballot16);
    }
  }
  __syncthreads();
  if (in_warps) {
    const unsigned below = (1u << (tid & 31)) - 1u;
    int before = __popc((start16 ? ballot16 : ballot) & below);
    int total16 = 0;
    for (int w = 0; w < kRouteWarps; ++w) {
      if (w < (tid >> 5)) before += start16 ? route.warp_flags16[w] : route.warp_flags[w];
      total16 += route.warp_flags16[w];
    }
    if (start) {
      const int ep = route.expert[tid];
      int end = tid + 1;
      while (end < pairs && end - tid < tile_tokens && route.expert[end] == ep)
        ++end;
      route.tiles[start16 ? before : total16 + before] = {ep, tid, end - tid};
    }
    if (tid == 0) {
      int total = 0;
      for (int w = 0; w < kRouteWarps; ++w)
        total += route.warp_flags[w];
      route.tile_count = total16 + total;
      route.tile_count16 = total16;
    }
  }
  __syncthreads();
}

}  // namespace mxfp4::cuda
