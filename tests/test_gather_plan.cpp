// gather_linear's CUDA tile plan, checked on the host: the classes the device plan assigns
// (cuda_gather_class, shared with moe.cu) never hold more tiles than CudaGatherPlan's bounds,
// which size the tile lists and the grids, and the workspace parts never overlap. Runs without a
// GPU: a bound too small would make the device plan write past its list.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <iterator>
#include <random>
#include <vector>

#include "core/kernel_args.hpp"

namespace {

using mxfp4::detail::cuda_gather_class;
using mxfp4::detail::cuda_gather_tile;
using mxfp4::detail::cuda_gather_tiles;
using mxfp4::detail::CudaGatherPlan;
using mxfp4::detail::kCudaGatherClasses;
using mxfp4::detail::kCudaGemmMinTokens;

// The class settings gather_linear uses (moe.cu): no GEMM (f16 on sm_80/89), the sm_80 GEMM
// (bf16 on sm_80/89), Hopper with f16, Hopper with bf16 at most 512 pairs, and above.
struct Setting {
  int mid_max, mid128_max, large_tile;
  bool mid_gemm;  // the third class's grid bounded by mid_gemm_tiles()
};
const Setting kSettings[] = {{INT_MAX, 0, 128, false},
                             {static_cast<int>(kCudaGemmMinTokens), 0, 128, true},
                             {static_cast<int>(kCudaGemmMinTokens), 0, 128, true},
                             {static_cast<int>(kCudaGemmMinTokens), 128, 256, true}};

// Tiles per class for experts' token counts, as the device plan assigns them.
std::array<std::int64_t, kCudaGatherClasses> class_tiles(const std::vector<int>& counts,
                                                         const Setting& s) {
  std::array<std::int64_t, kCudaGatherClasses> tiles{};
  for (int c : counts) {
    const int cls = cuda_gather_class(c, s.mid_max, s.mid128_max);
    tiles[static_cast<std::size_t>(cls)] += cuda_gather_tiles(c, cls, s.large_tile);
  }
  return tiles;
}

void expect_within_bounds(const std::vector<int>& counts, const char* what) {
  std::int64_t pairs = 0;
  for (int c : counts)
    pairs += c;
  const CudaGatherPlan plan{pairs, static_cast<std::int64_t>(counts.size())};
  for (const Setting& s : kSettings) {
    const auto tiles = class_tiles(counts, s);
    SCOPED_TRACE(::testing::Message() << what << ": " << counts.size() << " experts, " << pairs
                                      << " pairs, mid_max " << s.mid_max << ", mid128_max "
                                      << s.mid128_max << ", large_tile " << s.large_tile);
    EXPECT_LE(tiles[0], plan.small_tiles());
    EXPECT_LE(tiles[1], plan.sixteen_tiles());
    EXPECT_LE(tiles[2], s.mid_gemm ? plan.mid_gemm_tiles() : plan.mid_tiles());
    EXPECT_LE(tiles[2], plan.mid_tiles());  // the list's room for the class
    EXPECT_LE(tiles[3], plan.mid128_tiles());
    EXPECT_LE(tiles[4], plan.large_tiles());
    std::int64_t total = 0;
    for (std::int64_t t : tiles)
      total += t;
    EXPECT_LE(total, plan.list_entries());
  }
}

TEST(GatherPlan, ClassesFollowTheTokenCounts) {
  const Setting hopper = kSettings[3];
  EXPECT_EQ(cuda_gather_class(0, hopper.mid_max, hopper.mid128_max), 0);
  EXPECT_EQ(cuda_gather_tiles(0, 0, hopper.large_tile), 0);
  EXPECT_EQ(cuda_gather_class(8, hopper.mid_max, hopper.mid128_max), 0);
  EXPECT_EQ(cuda_gather_class(9, hopper.mid_max, hopper.mid128_max), 1);
  EXPECT_EQ(cuda_gather_class(16, hopper.mid_max, hopper.mid128_max), 1);
  EXPECT_EQ(cuda_gather_class(17, hopper.mid_max, hopper.mid128_max), 2);
  EXPECT_EQ(cuda_gather_class(32, hopper.mid_max, hopper.mid128_max), 2);
  EXPECT_EQ(cuda_gather_class(33, hopper.mid_max, hopper.mid128_max), 3);
  EXPECT_EQ(cuda_gather_class(128, hopper.mid_max, hopper.mid128_max), 3);
  EXPECT_EQ(cuda_gather_class(129, hopper.mid_max, hopper.mid128_max), 4);
  EXPECT_EQ(cuda_gather_tiles(129, 4, 256), 1);
  EXPECT_EQ(cuda_gather_tiles(257, 4, 256), 2);
  // Without a GEMM the third class takes every expert above 16 tokens, in tiles of 32.
  EXPECT_EQ(cuda_gather_class(1000, INT_MAX, 0), 2);
  EXPECT_EQ(cuda_gather_tiles(1000, 2, 128), 32);
  EXPECT_EQ(cuda_gather_tile(4, 256), 256);
}

TEST(GatherPlan, BoundsHoldForEveryExpertSize) {
  // Every expert with the same count c, for each c up to past two large tiles, and one expert
  // with c tokens beside many with one.
  for (int experts : {1, 4, 32, 128}) {
    for (int c = 1; c <= 600; ++c) {
      expect_within_bounds(std::vector<int>(static_cast<std::size_t>(experts), c), "equal");
      std::vector<int> one_big(static_cast<std::size_t>(experts), 1);
      one_big[0] = c;
      expect_within_bounds(one_big, "one large");
    }
  }
}

TEST(GatherPlan, BoundsHoldForRandomRoutings) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 300; ++round) {
    const int experts = 1 + static_cast<int>(rng() % 256);
    const std::int64_t pairs = 65 + static_cast<std::int64_t>(rng() % 20000);
    // Skew: a fraction of the pairs on a few hot experts, the rest uniform.
    const int hot = 1 + static_cast<int>(rng() % 4);
    const double hot_share = static_cast<double>(rng() % 101) / 100.0;
    std::vector<int> counts(static_cast<std::size_t>(experts), 0);
    for (std::int64_t p = 0; p < pairs; ++p) {
      const bool to_hot = static_cast<double>(rng() % 1000) / 1000.0 < hot_share;
      const auto e = static_cast<std::size_t>(to_hot ? rng() % static_cast<std::uint64_t>(hot)
                                                     : rng() % static_cast<std::uint64_t>(experts));
      ++counts[std::min(e, counts.size() - 1)];
    }
    expect_within_bounds(counts, "random");
  }
}

TEST(GatherPlan, WorkspacePartsAreAlignedAndDisjoint) {
  for (std::int64_t experts : {1, 4, 128, 1000}) {
    for (std::int64_t pairs : {65, 512, 4096, 16384, 100000}) {
      const CudaGatherPlan plan{pairs, experts};
      const std::size_t parts[] = {plan.counts_at(), plan.runs_at(),   plan.offsets_at(),
                                   plan.cursor_at(), plan.totals_at(), plan.perm_at(),
                                   plan.list_at()};
      const std::size_t sizes[] = {static_cast<std::size_t>(experts) * 4,
                                   static_cast<std::size_t>(experts) * 8,
                                   static_cast<std::size_t>(experts + 1) * 4,
                                   static_cast<std::size_t>(experts) * 4,
                                   kCudaGatherClasses * sizeof(int),
                                   static_cast<std::size_t>(pairs) * 4,
                                   static_cast<std::size_t>(plan.list_entries()) * 16};
      constexpr std::size_t kParts = std::size(parts);
      for (std::size_t i = 0; i < kParts; ++i) {
        EXPECT_EQ(parts[i] % 256, 0u) << i;
        const std::size_t end = parts[i] + sizes[i];
        EXPECT_LE(end, i + 1 < kParts ? parts[i + 1] : plan.bytes()) << i;
      }
      EXPECT_EQ(plan.staged_at() % 256, 0u);
      EXPECT_GE(plan.staged_at(), plan.bytes());
      EXPECT_EQ(plan.staged_bytes(2880) - plan.staged_at(),
                static_cast<std::size_t>(pairs) * 2880 * 2);
    }
  }
  // Small batches route inside each CTA: no workspace.
  EXPECT_EQ((CudaGatherPlan{64, 128}.bytes()), 0u);
}

}  // namespace
