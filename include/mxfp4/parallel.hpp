// Splitting MXFP4 layers across ranks (one process per GPU): which part of a weight each rank
// holds, slicing a weight or a memory-mapped checkpoint down to that part, and the dispatch plan
// of expert parallelism. Everything here is plain CPU code, built into every library; the NCCL
// layers that use it are in mxfp4/parallel_nccl.hpp.
//
// Conventions (R ranks, rank r in [0, R)):
// - column-parallel (split N, the output features): rank r holds rows [N*r/R, N*(r+1)/R);
// - row-parallel (split K, the input features): K is cut in whole 32-element blocks, rank r
//   holding blocks [B*r/R, B*(r+1)/R) of the B = K/32, so no block and no scale straddles two
//   ranks; the bias goes to rank 0 only, so that the sum over ranks adds it once;
// - expert-parallel (split E): rank r holds experts [E*r/R, E*(r+1)/R).
// Uneven sizes give shards that differ by at most one row, block or expert. A split that would
// leave a rank with nothing (N, K/32 or E smaller than R) is refused with InvalidArgument.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4 {
namespace io {
class SafetensorsCheckpoint;
}

namespace parallel {

// A half-open range [begin, end).
struct Range {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
  friend bool operator==(const Range& a, const Range& b) {
    return a.begin == b.begin && a.end == b.end;
  }
};

// Throws InvalidArgument unless ranks >= 1 and 0 <= rank < ranks.
void check_rank(int rank, int ranks);

// The rows of N rank r holds (column-parallel). Throws InvalidArgument when N < ranks.
Range column_shard(std::int64_t out_features, int rank, int ranks);
// The input features of K rank r holds (row-parallel): multiples of 32. Throws InvalidArgument
// when K is not a multiple of 32 or K/32 < ranks.
Range row_shard(std::int64_t in_features, int rank, int ranks);
// The experts rank r holds. Throws InvalidArgument when E < ranks.
Range expert_shard(std::int64_t experts, int rank, int ranks);
// The rank holding `expert` (the inverse of expert_shard). Throws IndexOutOfRange outside [0, E).
int expert_owner(std::int64_t expert, std::int64_t experts, int ranks);

// Rank r's part of a CPU weight (dense [N, K] or a stack [E, N, K]); the result owns copies of
// exactly that part (blocks, scales, bias), in the weight's BlockLayout (whole rows and blocks
// are copied). Throws Unsupported for weights not on the CPU.
// column: rows [column_shard) of every expert, with their bias.
Mxfp4Weight shard_column(const Mxfp4Weight& weight, int rank, int ranks);
// row: columns [row_shard) of every row; bias on rank 0 only.
Mxfp4Weight shard_row(const Mxfp4Weight& weight, int rank, int ranks);
// experts [expert_shard) of a stack, with their bias (InvalidArgument for a dense weight).
Mxfp4Weight shard_experts(const Mxfp4Weight& weight, int rank, int ranks);

// Names of one MXFP4 weight in a safetensors checkpoint, in this library's layout: blocks U8
// [N, K/2] or [E, N, K/2], scales U8 [N, K/32] or [E, N, K/32], an optional bias F32/F16/BF16
// [N] or [E, N] (FORMATS.md section 1).
struct CheckpointWeightNames {
  std::string blocks;
  std::string scales;
  std::optional<std::string> bias;
};

// As shard_column / shard_row / shard_experts, straight from a memory-mapped checkpoint: only
// the bytes of rank r's part are read (copied into owning CPU tensors), never the whole tensor.
// Throws InvalidArgument (a name is absent), DTypeMismatch / ShapeMismatch (the entries do not
// form an MXFP4 weight) or the errors of the split.
Mxfp4Weight load_column_shard(const io::SafetensorsCheckpoint& checkpoint,
                              const CheckpointWeightNames& names, int rank, int ranks);
Mxfp4Weight load_row_shard(const io::SafetensorsCheckpoint& checkpoint,
                           const CheckpointWeightNames& names, int rank, int ranks);
Mxfp4Weight load_expert_shard(const io::SafetensorsCheckpoint& checkpoint,
                              const CheckpointWeightNames& names, int rank, int ranks);

// Where each (token, slot) pair of an expert-parallel MoE layer goes. Pairs are numbered
// p = t * topk + s. The send buffer holds the pairs grouped by destination rank, ranks in
// order, and within a rank in increasing p (deterministic).
struct DispatchPlan {
  int ranks = 0;
  std::int64_t tokens = 0;
  std::int64_t topk = 0;
  std::int64_t experts = 0;
  // [ranks]: pairs sent to each rank, and where its group starts in the send buffer.
  std::vector<std::int64_t> send_counts;
  std::vector<std::int64_t> send_offsets;
  // [tokens * topk], by send-buffer position i: the token whose row goes there, the expert id
  // on the receiving rank (global id - first expert of that rank), and the pair it carries.
  // Combining back: out[send_pair[i]] = result that returns to position i.
  std::vector<std::int32_t> send_token;
  std::vector<std::int32_t> send_local_expert;
  std::vector<std::int64_t> send_pair;
  // [tokens * topk], by pair: its position in the send buffer (the inverse of send_pair).
  std::vector<std::int64_t> pair_position;
};

// Builds the plan from indices [tokens, topk] (u32, i32 or i64, on the CPU) of experts in
// [0, experts). Throws IndexOutOfRange naming the first id outside, ShapeMismatch / DTypeMismatch
// for bad indices, InvalidArgument for a bad split or more than 2^31 - 1 pairs or tokens.
DispatchPlan plan_dispatch(const Tensor& indices, std::int64_t experts, int ranks);

// Exclusive prefix sums of counts: offsets[i] = counts[0] + ... + counts[i-1].
std::vector<std::int64_t> offsets_from_counts(const std::vector<std::int64_t>& counts);

// The receiving side, from the matrix of counts every rank sends (all_counts[src * ranks + dst],
// as an all-gather of DispatchPlan::send_counts gives it): pairs rank `rank` receives from each
// source, in source order.
std::vector<std::int64_t> receive_counts(const std::vector<std::int64_t>& all_counts, int rank,
                                         int ranks);

}  // namespace parallel
}  // namespace mxfp4
