// Shards of MXFP4 weights for tensor and expert parallelism, and the expert-parallel dispatch
// plan (include/mxfp4/parallel.hpp). CPU only; the NCCL layers build on it.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "mxfp4/format.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/parallel.hpp"

namespace mxfp4::parallel {
namespace {

constexpr std::int64_t kBlock = 32;

// floor(n * r / ranks) without overflow for any n >= 0 and 0 <= r <= ranks.
std::int64_t split_point(std::int64_t n, int r, int ranks) {
  const std::int64_t q = n / ranks;
  const std::int64_t m = n % ranks;
  return q * r + m * r / ranks;
}

Range even_split(std::int64_t n, int rank, int ranks, const char* what, const char* unit) {
  check_rank(rank, ranks);
  if (n < ranks) {
    throw InvalidArgument(std::string("parallel: cannot split ") + what + " = " +
                          std::to_string(n) + " " + unit + " across " + std::to_string(ranks) +
                          " ranks (each rank needs at least one)");
  }
  return {split_point(n, rank, ranks), split_point(n, rank + 1, ranks)};
}

// The bytes of one MXFP4 weight, wherever they live (a CPU weight or a memory-mapped file).
struct WeightBytes {
  const std::uint8_t* blocks = nullptr;
  const std::uint8_t* scales = nullptr;
  const std::uint8_t* bias = nullptr;  // null when there is none
  DType bias_dtype = DType::f32;
  // Whole rows and whole 16-byte blocks are copied, so a part keeps the source's layout.
  BlockLayout layout = BlockLayout::standard;
  bool stacked = false;
  std::int64_t experts = 1;
  std::int64_t rows = 0;  // N
  std::int64_t cols = 0;  // K
};

// Experts x rows x cols (cols in whole blocks) of `src`, copied into owning tensors.
Mxfp4Weight copy_part(const WeightBytes& src, Range experts, Range rows, Range cols,
                      bool with_bias) {
  const std::int64_t e_out = experts.size();
  const std::int64_t n_out = rows.size();
  const std::int64_t k_out = cols.size();
  const auto lead = [&](std::int64_t last) {
    return src.stacked ? Shape{e_out, n_out, last} : Shape{n_out, last};
  };
  Tensor blocks = Tensor::empty(lead(k_out / 2), DType::u8);
  Tensor scales = Tensor::empty(lead(k_out / kBlock), DType::u8);
  auto* b_out = static_cast<std::uint8_t*>(blocks.data());
  auto* s_out = static_cast<std::uint8_t*>(scales.data());
  const std::int64_t b_row = src.cols / 2;
  const std::int64_t s_row = src.cols / kBlock;
  const auto b_len = static_cast<std::size_t>(k_out / 2);
  const auto s_len = static_cast<std::size_t>(k_out / kBlock);
  for (std::int64_t e = 0; e < e_out; ++e) {
    for (std::int64_t n = 0; n < n_out; ++n) {
      const std::int64_t src_row = (experts.begin + e) * src.rows + rows.begin + n;
      const std::int64_t dst_row = e * n_out + n;
      std::memcpy(b_out + dst_row * static_cast<std::int64_t>(b_len),
                  src.blocks + src_row * b_row + cols.begin / 2, b_len);
      std::memcpy(s_out + dst_row * static_cast<std::int64_t>(s_len),
                  src.scales + src_row * s_row + cols.begin / kBlock, s_len);
    }
  }
  std::optional<Tensor> bias;
  if (with_bias && src.bias != nullptr) {
    const std::size_t es = dtype_size(src.bias_dtype);
    Tensor b = Tensor::empty(src.stacked ? Shape{e_out, n_out} : Shape{n_out}, src.bias_dtype);
    auto* out = static_cast<std::uint8_t*>(b.data());
    for (std::int64_t e = 0; e < e_out; ++e) {
      const std::int64_t first = (experts.begin + e) * src.rows + rows.begin;
      std::memcpy(out + static_cast<std::size_t>(e * n_out) * es,
                  src.bias + static_cast<std::size_t>(first) * es,
                  static_cast<std::size_t>(n_out) * es);
    }
    bias = std::move(b);
  }
  return Mxfp4Weight::from_parts(std::move(blocks), std::move(scales), std::move(bias), src.layout);
}

WeightBytes bytes_of(const Mxfp4Weight& weight, const char* what) {
  if (!weight.defined()) {
    throw InvalidArgument(std::string("parallel::") + what + ": the weight is empty");
  }
  if (weight.device() != Device::cpu()) {
    throw Unsupported(std::string("parallel::") + what + ": the weight is on " +
                      to_string(weight.device()) +
                      "; shard a CPU weight, then copy the shard to its device");
  }
  WeightBytes w;
  w.blocks = static_cast<const std::uint8_t*>(weight.blocks().data());
  w.scales = static_cast<const std::uint8_t*>(weight.scales().data());
  if (weight.bias()) {
    w.bias = static_cast<const std::uint8_t*>(weight.bias()->data());
    w.bias_dtype = weight.bias()->dtype();
  }
  w.layout = weight.layout();
  w.stacked = weight.stacked();
  w.experts = weight.num_experts();
  w.rows = weight.out_features();
  w.cols = weight.in_features();
  return w;
}

// ---- checkpoints -------------------------------------------------------------------------------

struct Located {
  const io::SafetensorsFile* file = nullptr;
  const io::SafetensorsEntry* entry = nullptr;
};

Located locate(const io::SafetensorsCheckpoint& checkpoint, const std::string& name) {
  const auto ref = checkpoint.find(name);
  if (ref.file == nullptr || ref.entry == nullptr) {
    throw InvalidArgument("parallel: checkpoint '" + checkpoint.source() + "' has no tensor '" +
                          name + "'");
  }
  return {ref.file, ref.entry};
}

std::string describe(const io::SafetensorsEntry& e) {
  return "'" + e.name + "' (" + e.dtype + " " + to_string(e.shape) + ")";
}

// Checks that the named entries form one MXFP4 weight and returns views of their bytes (the
// mapping stays alive through `checkpoint`, which the caller holds during the copy).
WeightBytes checkpoint_bytes(const io::SafetensorsCheckpoint& checkpoint,
                             const CheckpointWeightNames& names) {
  const Located b = locate(checkpoint, names.blocks);
  const Located s = locate(checkpoint, names.scales);
  const auto& bs = b.entry->shape;
  const auto& ss = s.entry->shape;
  if (b.entry->dtype != "U8" || s.entry->dtype != "U8") {
    throw DTypeMismatch("parallel: MXFP4 blocks " + describe(*b.entry) + " and scales " +
                        describe(*s.entry) + " must be U8");
  }
  if ((bs.size() != 2 && bs.size() != 3) || ss.size() != bs.size()) {
    throw ShapeMismatch("parallel: MXFP4 blocks " + describe(*b.entry) + " and scales " +
                        describe(*s.entry) + " must both be [N, K/2] / [N, K/32] or " +
                        "[E, N, K/2] / [E, N, K/32]");
  }
  WeightBytes w;
  w.stacked = bs.size() == 3;
  w.experts = w.stacked ? bs[0] : 1;
  w.rows = bs[bs.size() - 2];
  w.cols = bs.back() * 2;
  const bool lead_equal = std::equal(bs.begin(), bs.end() - 1, ss.begin());
  if (!lead_equal || w.cols % kBlock != 0 || ss.back() != w.cols / kBlock || w.rows <= 0 ||
      w.cols <= 0 || w.experts <= 0) {
    throw ShapeMismatch("parallel: MXFP4 blocks " + describe(*b.entry) + " and scales " +
                        describe(*s.entry) + " disagree (scales need [.., N, K/32] with " +
                        "K = 2 * the blocks' last dim, a positive multiple of 32)");
  }
  w.blocks = b.file->bytes(*b.entry).data();
  w.scales = s.file->bytes(*s.entry).data();
  if (names.bias) {
    const Located c = locate(checkpoint, *names.bias);
    const auto dtype = io::dtype_from_safetensors(c.entry->dtype);
    if (!dtype || !is_floating(*dtype)) {
      throw DTypeMismatch("parallel: bias " + describe(*c.entry) + " must be F32, F16 or BF16");
    }
    const Shape expected = w.stacked ? Shape{w.experts, w.rows} : Shape{w.rows};
    if (c.entry->shape != expected) {
      throw ShapeMismatch("parallel: bias " + describe(*c.entry) + " must have shape " +
                          to_string(expected));
    }
    w.bias = c.file->bytes(*c.entry).data();
    w.bias_dtype = *dtype;
  }
  return w;
}

std::int64_t index_at(const Tensor& indices, std::int64_t i) {
  switch (indices.dtype()) {
    case DType::u32:
      return static_cast<std::int64_t>(indices.data_as<std::uint32_t>()[i]);
    case DType::i32:
      return indices.data_as<std::int32_t>()[i];
    default:
      return indices.data_as<std::int64_t>()[i];
  }
}

}  // namespace

void check_rank(int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    throw InvalidArgument("parallel: rank " + std::to_string(rank) + " of " +
                          std::to_string(ranks) + " ranks is not in [0, ranks) with ranks >= 1");
  }
}

Range column_shard(std::int64_t out_features, int rank, int ranks) {
  return even_split(out_features, rank, ranks, "N", "output features");
}

Range row_shard(std::int64_t in_features, int rank, int ranks) {
  check_rank(rank, ranks);
  if (in_features < 0 || in_features % kBlock != 0) {
    throw InvalidArgument("parallel: K = " + std::to_string(in_features) +
                          " is not a multiple of 32, so it cannot be split at block bounds");
  }
  const Range blocks = even_split(in_features / kBlock, rank, ranks, "K/32", "blocks");
  return {blocks.begin * kBlock, blocks.end * kBlock};
}

Range expert_shard(std::int64_t experts, int rank, int ranks) {
  return even_split(experts, rank, ranks, "E", "experts");
}

int expert_owner(std::int64_t expert, std::int64_t experts, int ranks) {
  check_rank(0, ranks);
  if (expert < 0 || expert >= experts) {
    throw IndexOutOfRange("parallel: expert " + std::to_string(expert) + " is outside [0, " +
                          std::to_string(experts) + ")");
  }
  expert_shard(experts, 0, ranks);  // refuses E < ranks
  // The last rank whose first expert is <= expert.
  int lo = 0;
  int hi = ranks - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (split_point(experts, mid, ranks) <= expert) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

Mxfp4Weight shard_column(const Mxfp4Weight& weight, int rank, int ranks) {
  const WeightBytes w = bytes_of(weight, "shard_column");
  return copy_part(w, {0, w.experts}, column_shard(w.rows, rank, ranks), {0, w.cols}, true);
}

Mxfp4Weight shard_row(const Mxfp4Weight& weight, int rank, int ranks) {
  const WeightBytes w = bytes_of(weight, "shard_row");
  return copy_part(w, {0, w.experts}, {0, w.rows}, row_shard(w.cols, rank, ranks), rank == 0);
}

Mxfp4Weight shard_experts(const Mxfp4Weight& weight, int rank, int ranks) {
  const WeightBytes w = bytes_of(weight, "shard_experts");
  if (!w.stacked) {
    throw InvalidArgument("parallel::shard_experts: the weight is dense [N, K], not a stack");
  }
  return copy_part(w, expert_shard(w.experts, rank, ranks), {0, w.rows}, {0, w.cols}, true);
}

Mxfp4Weight load_column_shard(const io::SafetensorsCheckpoint& checkpoint,
                              const CheckpointWeightNames& names, int rank, int ranks) {
  const WeightBytes w = checkpoint_bytes(checkpoint, names);
  return copy_part(w, {0, w.experts}, column_shard(w.rows, rank, ranks), {0, w.cols}, true);
}

Mxfp4Weight load_row_shard(const io::SafetensorsCheckpoint& checkpoint,
                           const CheckpointWeightNames& names, int rank, int ranks) {
  const WeightBytes w = checkpoint_bytes(checkpoint, names);
  return copy_part(w, {0, w.experts}, {0, w.rows}, row_shard(w.cols, rank, ranks), rank == 0);
}

Mxfp4Weight load_expert_shard(const io::SafetensorsCheckpoint& checkpoint,
                              const CheckpointWeightNames& names, int rank, int ranks) {
  const WeightBytes w = checkpoint_bytes(checkpoint, names);
  if (!w.stacked) {
    throw InvalidArgument("parallel::load_expert_shard: '" + names.blocks +
                          "' is dense [N, K/2], not a stack of experts");
  }
  return copy_part(w, expert_shard(w.experts, rank, ranks), {0, w.rows}, {0, w.cols}, true);
}

std::vector<std::int64_t> offsets_from_counts(const std::vector<std::int64_t>& counts) {
  std::vector<std::int64_t> offsets(counts.size(), 0);
  std::int64_t sum = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    offsets[i] = sum;
    sum += counts[i];
  }
  return offsets;
}

std::vector<std::int64_t> receive_counts(const std::vector<std::int64_t>& all_counts, int rank,
                                         int ranks) {
  check_rank(rank, ranks);
  const auto r = static_cast<std::size_t>(ranks);
  if (all_counts.size() != r * r) {
    throw ShapeMismatch("parallel::receive_counts: " + std::to_string(all_counts.size()) +
                        " counts for " + std::to_string(ranks) + " ranks (expected " +
                        std::to_string(r * r) + ")");
  }
  std::vector<std::int64_t> counts(r);
  for (std::size_t src = 0; src < r; ++src) {
    counts[src] = all_counts[src * r + static_cast<std::size_t>(rank)];
  }
  return counts;
}

DispatchPlan plan_dispatch(const Tensor& indices, std::int64_t experts, int ranks) {
  check_rank(0, ranks);
  if (!indices.defined() || indices.rank() != 2) {
    throw ShapeMismatch("parallel::plan_dispatch: indices must be [tokens, topk], got " +
                        (indices.defined() ? to_string(indices.shape()) : std::string("none")));
  }
  if (!is_index(indices.dtype())) {
    throw DTypeMismatch("parallel::plan_dispatch: indices must be u32, i32 or i64, got " +
                        std::string(dtype_name(indices.dtype())));
  }
  if (indices.device() != Device::cpu()) {
    throw Unsupported("parallel::plan_dispatch: indices must be on the CPU, got " +
                      to_string(indices.device()));
  }
  expert_shard(experts, 0, ranks);  // refuses E < ranks
  DispatchPlan plan;
  plan.ranks = ranks;
  plan.tokens = indices.dim(0);
  plan.topk = indices.dim(1);
  plan.experts = experts;
  const std::int64_t pairs = indices.numel();
  if (pairs > std::numeric_limits<std::int32_t>::max()) {
    throw InvalidArgument("parallel::plan_dispatch: " + std::to_string(pairs) +
                          " (token, slot) pairs exceed 2^31 - 1");
  }
  const auto n_pairs = static_cast<std::size_t>(pairs);
  std::vector<int> owner(n_pairs);
  std::vector<std::int64_t> local(n_pairs);
  std::vector<std::int64_t> first(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    first[static_cast<std::size_t>(r)] = expert_shard(experts, r, ranks).begin;
  plan.send_counts.assign(static_cast<std::size_t>(ranks), 0);
  for (std::int64_t p = 0; p < pairs; ++p) {
    const std::int64_t id = index_at(indices, p);
    if (id < 0 || id >= experts) {
      throw IndexOutOfRange("parallel::plan_dispatch: indices[" + std::to_string(p / plan.topk) +
                            ", " + std::to_string(p % plan.topk) + "] = " + std::to_string(id) +
                            " is outside [0, " + std::to_string(experts) + ")");
    }
    const int r = expert_owner(id, experts, ranks);
    owner[static_cast<std::size_t>(p)] = r;
    local[static_cast<std::size_t>(p)] = id - first[static_cast<std::size_t>(r)];
    ++plan.send_counts[static_cast<std::size_t>(r)];
  }
  plan.send_offsets = offsets_from_counts(plan.send_counts);
  std::vector<std::int64_t> next = plan.send_offsets;
  plan.send_token.resize(n_pairs);
  plan.send_local_expert.resize(n_pairs);
  plan.send_pair.resize(n_pairs);
  plan.pair_position.resize(n_pairs);
  for (std::int64_t p = 0; p < pairs; ++p) {
    const auto pu = static_cast<std::size_t>(p);
    const auto pos = static_cast<std::size_t>(next[static_cast<std::size_t>(owner[pu])]++);
    plan.send_token[pos] = static_cast<std::int32_t>(p / plan.topk);
    plan.send_local_expert[pos] = static_cast<std::int32_t>(local[pu]);
    plan.send_pair[pos] = p;
    plan.pair_position[pu] = static_cast<std::int64_t>(pos);
  }
  return plan;
}

}  // namespace mxfp4::parallel
