// Sharding for tensor and expert parallelism (include/mxfp4/parallel.hpp), on the CPU: shards
// cover their dimension exactly, sliced weights hold exactly their part (in memory and straight
// from a checkpoint), and a simulated expert-parallel layer built from the dispatch plan gives
// the single-device result.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/parallel.hpp"
#include "test_files.hpp"
#include "test_numbers.hpp"

namespace mp = mxfp4::parallel;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;
using mxfp4::test::expect_same_weight;
using mxfp4::test::random_uniform;

namespace {

Mxfp4Weight random_weight(const Shape& shape, bool with_bias, std::uint32_t seed) {
  std::optional<Tensor> bias;
  if (with_bias) {
    bias = random_uniform(Shape(shape.begin(), shape.end() - 1), seed + 1);
  }
  return Mxfp4Weight::quantize(random_uniform(shape, seed), bias);
}

// Elements [rows, cols] of a 2-D f32 tensor [R, C] as a vector.
std::vector<float> block_of(const Tensor& t, mp::Range rows, mp::Range cols) {
  const std::int64_t c = t.dim(1);
  std::vector<float> out;
  const float* p = t.data_as<float>();
  for (std::int64_t r = rows.begin; r < rows.end; ++r) {
    for (std::int64_t k = cols.begin; k < cols.end; ++k)
      out.push_back(p[r * c + k]);
  }
  return out;
}

std::vector<float> values(const Tensor& t) {
  const Tensor f = t.to(DType::f32);
  const float* p = f.data_as<float>();
  return {p, p + f.numel()};
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_ref = 0;
  for (float w : want)
    max_ref = std::max(max_ref, std::abs(static_cast<double>(w)));
  for (std::size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " element " << i;
    ASSERT_NEAR(got[i], want[i], rtol * max_ref + 1e-6) << what << " element " << i;
  }
}

}  // namespace

TEST(ParallelSplit, ColumnShardsCoverNInOrderAndDifferByAtMostOne) {
  for (int ranks = 1; ranks <= 8; ++ranks) {
    for (std::int64_t n : {std::int64_t{ranks}, std::int64_t{ranks} + 1, std::int64_t{7},
                           std::int64_t{1000}, std::int64_t{28672}, std::int64_t{5760}}) {
      if (n < ranks) continue;
      std::int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const mp::Range s = mp::column_shard(n, r, ranks);
        EXPECT_EQ(s.begin, next) << "N=" << n << " rank " << r << "/" << ranks;
        EXPECT_EQ(s.begin, n * r / ranks);
        EXPECT_GE(s.size(), n / ranks);
        EXPECT_LE(s.size(), n / ranks + 1);
        next = s.end;
      }
      EXPECT_EQ(next, n);
    }
  }
  EXPECT_EQ(mp::column_shard(10, 0, 1), (mp::Range{0, 10}));
  EXPECT_EQ(mp::column_shard(10, 2, 3), (mp::Range{6, 10}));
  EXPECT_THROW(mp::column_shard(3, 0, 4), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::column_shard(8, 4, 4), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::column_shard(8, -1, 4), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::column_shard(8, 0, 0), mxfp4::InvalidArgument);
}

TEST(ParallelSplit, RowShardsCutKAtWholeBlocks) {
  for (int ranks = 1; ranks <= 8; ++ranks) {
    for (std::int64_t blocks : {std::int64_t{ranks}, std::int64_t{ranks} + 1, std::int64_t{7},
                                std::int64_t{50}, std::int64_t{90}, std::int64_t{896}}) {
      if (blocks < ranks) continue;
      const std::int64_t k = blocks * 32;
      std::int64_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const mp::Range s = mp::row_shard(k, r, ranks);
        EXPECT_EQ(s.begin, next);
        EXPECT_EQ(s.begin % 32, 0);
        EXPECT_EQ(s.end % 32, 0);
        EXPECT_GE(s.size() / 32, blocks / ranks);
        EXPECT_LE(s.size() / 32, blocks / ranks + 1);
        next = s.end;
      }
      EXPECT_EQ(next, k);
    }
  }
  EXPECT_EQ(mp::row_shard(7 * 32, 1, 3), (mp::Range{64, 128}));   // blocks 2..4 of 7
  EXPECT_THROW(mp::row_shard(50, 0, 1), mxfp4::InvalidArgument);  // not a multiple of 32
  EXPECT_THROW(mp::row_shard(64, 0, 3), mxfp4::InvalidArgument);  // 2 blocks, 3 ranks
  EXPECT_THROW(mp::row_shard(0, 0, 1), mxfp4::InvalidArgument);
  EXPECT_NO_THROW(mp::row_shard(96, 2, 3));
}

TEST(ParallelSplit, ExpertOwnerInvertsExpertShard) {
  for (int ranks = 1; ranks <= 8; ++ranks) {
    for (std::int64_t e : {std::int64_t{ranks}, std::int64_t{7}, std::int64_t{32},
                           std::int64_t{128}, std::int64_t{129}}) {
      if (e < ranks) continue;
      for (int r = 0; r < ranks; ++r) {
        const mp::Range s = mp::expert_shard(e, r, ranks);
        ASSERT_GE(s.size(), 1);
        for (std::int64_t x = s.begin; x < s.end; ++x) {
          ASSERT_EQ(mp::expert_owner(x, e, ranks), r) << "expert " << x << " of " << e;
        }
      }
    }
  }
  EXPECT_THROW(mp::expert_owner(8, 8, 2), mxfp4::IndexOutOfRange);
  EXPECT_THROW(mp::expert_owner(-1, 8, 2), mxfp4::IndexOutOfRange);
  EXPECT_THROW(mp::expert_shard(3, 0, 4), mxfp4::InvalidArgument);
}

TEST(ParallelShard, ColumnShardsHoldTheirRowsAndBias) {
  for (bool stacked : {false, true}) {
    const Shape shape = stacked ? Shape{3, 37, 96} : Shape{37, 96};
    const Mxfp4Weight w = random_weight(shape, true, 11);
    const Tensor full = w.dequantize();
    const Tensor full_bias = w.bias()->to(DType::f32);
    for (int ranks : {1, 2, 3, 5}) {
      for (int r = 0; r < ranks; ++r) {
        const mp::Range rows = mp::column_shard(37, r, ranks);
        const Mxfp4Weight s = mp::shard_column(w, r, ranks);
        ASSERT_EQ(s.stacked(), stacked);
        ASSERT_EQ(s.out_features(), rows.size());
        ASSERT_EQ(s.in_features(), 96);
        ASSERT_TRUE(s.bias().has_value());
        const Tensor d = s.dequantize();
        const std::int64_t experts = stacked ? 3 : 1;
        for (std::int64_t e = 0; e < experts; ++e) {
          const Tensor fe = full.reshape({experts * 37, 96});
          const Tensor de = d.reshape({experts * rows.size(), 96});
          EXPECT_EQ(block_of(de, {e * rows.size(), (e + 1) * rows.size()}, {0, 96}),
                    block_of(fe, {e * 37 + rows.begin, e * 37 + rows.end}, {0, 96}));
          EXPECT_EQ(block_of(s.bias()->to(DType::f32).reshape({experts, rows.size()}), {e, e + 1},
                             {0, rows.size()}),
                    block_of(full_bias.reshape({experts, 37}), {e, e + 1}, {rows.begin, rows.end}));
        }
      }
    }
  }
}

TEST(ParallelShard, ColumnParallelLinearConcatenatesToTheFullLinear) {
  const Mxfp4Weight w = random_weight({29, 128}, true, 3);
  const Tensor x = random_uniform({5, 128}, 4);
  const Tensor want = mxfp4::linear(x, w);
  for (int ranks : {1, 2, 4}) {
    std::vector<float> got(5 * 29);
    for (int r = 0; r < ranks; ++r) {
      const mp::Range rows = mp::column_shard(29, r, ranks);
      const Tensor y = mxfp4::linear(x, mp::shard_column(w, r, ranks));
      for (std::int64_t m = 0; m < 5; ++m) {
        for (std::int64_t n = 0; n < rows.size(); ++n) {
          got[static_cast<std::size_t>(m * 29 + rows.begin + n)] =
              y.data_as<float>()[m * rows.size() + n];
        }
      }
    }
    expect_close(got, values(want), 1e-6, "column-parallel, ranks " + std::to_string(ranks));
  }
}

TEST(ParallelShard, RowShardsHoldTheirBlocksAndBiasOnRankZeroOnly) {
  for (bool stacked : {false, true}) {
    const std::int64_t k = 7 * 32;  // 7 blocks: uneven over 2, 3 and 4 ranks
    const Shape shape = stacked ? Shape{2, 9, k} : Shape{9, k};
    const Mxfp4Weight w = random_weight(shape, true, 21);
    const std::int64_t rows = stacked ? 18 : 9;
    const Tensor full = w.dequantize().reshape({rows, k});
    for (int ranks : {1, 2, 3, 4, 7}) {
      for (int r = 0; r < ranks; ++r) {
        const mp::Range cols = mp::row_shard(k, r, ranks);
        const Mxfp4Weight s = mp::shard_row(w, r, ranks);
        ASSERT_EQ(s.in_features(), cols.size());
        ASSERT_EQ(s.out_features(), 9);
        ASSERT_EQ(s.bias().has_value(), r == 0);
        EXPECT_EQ(
            block_of(s.dequantize().reshape({rows, cols.size()}), {0, rows}, {0, cols.size()}),
            block_of(full, {0, rows}, cols));
      }
    }
    EXPECT_THROW(mp::shard_row(w, 0, 8), mxfp4::InvalidArgument);
  }
}

TEST(ParallelShard, RowParallelPartialSumsAddUpToTheFullLinear) {
  const std::int64_t k = 9 * 32;
  const Mxfp4Weight w = random_weight({24, k}, true, 5);
  const Tensor x = random_uniform({6, k}, 6);
  const Tensor want = mxfp4::linear(x, w);
  for (int ranks : {1, 2, 4}) {
    std::vector<float> sum(6 * 24, 0.0F);
    for (int r = 0; r < ranks; ++r) {
      const mp::Range cols = mp::row_shard(k, r, ranks);
      const Tensor xs = Tensor::from_vector(block_of(x, {0, 6}, cols), {6, cols.size()});
      const std::vector<float> part = values(mxfp4::linear(xs, mp::shard_row(w, r, ranks)));
      for (std::size_t i = 0; i < sum.size(); ++i)
        sum[i] += part[i];
    }
    expect_close(sum, values(want), 1e-5, "row-parallel, ranks " + std::to_string(ranks));
  }
}

TEST(ParallelShard, ExpertShardsHoldTheirExperts) {
  const Mxfp4Weight w = random_weight({7, 16, 64}, true, 8);
  const Tensor full = w.dequantize().reshape({7 * 16, 64});
  for (int ranks : {1, 2, 3, 7}) {
    for (int r = 0; r < ranks; ++r) {
      const mp::Range ex = mp::expert_shard(7, r, ranks);
      const Mxfp4Weight s = mp::shard_experts(w, r, ranks);
      ASSERT_EQ(s.num_experts(), ex.size());
      EXPECT_EQ(
          block_of(s.dequantize().reshape({ex.size() * 16, 64}), {0, ex.size() * 16}, {0, 64}),
          block_of(full, {ex.begin * 16, ex.end * 16}, {0, 64}));
      EXPECT_EQ(values(*s.bias()), block_of(w.bias()->to(DType::f32), {ex.begin, ex.end}, {0, 16}));
    }
  }
  EXPECT_THROW(mp::shard_experts(w, 0, 8), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::shard_experts(random_weight({4, 64}, false, 1), 0, 2), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::shard_column(Mxfp4Weight(), 0, 1), mxfp4::InvalidArgument);
}

TEST(ParallelShard, ShardsOfAGpuLayoutWeightKeepTheLayout) {
  // Shards copy whole rows and whole 16-byte blocks, so the shard of the re-laid-out weight is
  // the re-laid-out shard.
  const Mxfp4Weight dense = random_weight({9, 7 * 32}, true, 41);
  const Mxfp4Weight stacked = random_weight({5, 6, 3 * 32}, true, 42);
  const Mxfp4Weight dense_gpu = dense.with_layout(mxfp4::BlockLayout::gpu);
  const Mxfp4Weight stacked_gpu = stacked.with_layout(mxfp4::BlockLayout::gpu);
  auto expect_gpu_of = [](const Mxfp4Weight& got, const Mxfp4Weight& standard,
                          const std::string& what) {
    EXPECT_EQ(got.layout(), mxfp4::BlockLayout::gpu) << what;
    expect_same_weight(got, standard.with_layout(mxfp4::BlockLayout::gpu), what);
    expect_same_weight(got.with_layout(mxfp4::BlockLayout::standard), standard, what);
  };
  for (int ranks : {1, 2, 3}) {
    for (int r = 0; r < ranks; ++r) {
      const std::string at = std::to_string(r) + " of " + std::to_string(ranks);
      expect_gpu_of(mp::shard_column(dense_gpu, r, ranks), mp::shard_column(dense, r, ranks),
                    "dense column " + at);
      expect_gpu_of(mp::shard_row(dense_gpu, r, ranks), mp::shard_row(dense, r, ranks),
                    "dense row " + at);
      expect_gpu_of(mp::shard_column(stacked_gpu, r, ranks), mp::shard_column(stacked, r, ranks),
                    "stacked column " + at);
      expect_gpu_of(mp::shard_row(stacked_gpu, r, ranks), mp::shard_row(stacked, r, ranks),
                    "stacked row " + at);
      expect_gpu_of(mp::shard_experts(stacked_gpu, r, ranks), mp::shard_experts(stacked, r, ranks),
                    "experts " + at);
    }
  }
}

class ParallelCheckpoint : public ::testing::Test {
 protected:
  std::string path(const char* name) const { return dir_.file(name); }
  mxfp4::test::TempDir dir_;
};

TEST_F(ParallelCheckpoint, ShardsFromTheMappedFileEqualShardsOfTheWeight) {
  const Mxfp4Weight dense = random_weight({13, 160}, true, 31);  // 5 blocks
  const Mxfp4Weight stack = random_weight({5, 12, 64}, true, 32);
  const Tensor dense_bias = dense.bias()->to(DType::bf16);
  const std::string file = path("w.safetensors");
  mxfp4::io::write_safetensors(file, {mxfp4::io::safetensors_item("d.blocks", dense.blocks()),
                                      mxfp4::io::safetensors_item("d.scales", dense.scales()),
                                      mxfp4::io::safetensors_item("d.bias", dense_bias),
                                      mxfp4::io::safetensors_item("e.blocks", stack.blocks()),
                                      mxfp4::io::safetensors_item("e.scales", stack.scales()),
                                      mxfp4::io::safetensors_item("e.bias", *stack.bias())});
  const auto ckpt = mxfp4::io::SafetensorsCheckpoint::open(file);
  const mp::CheckpointWeightNames d{"d.blocks", "d.scales", "d.bias"};
  const mp::CheckpointWeightNames e{"e.blocks", "e.scales", "e.bias"};
  const Mxfp4Weight dense_bf16 =
      Mxfp4Weight::from_parts(dense.blocks(), dense.scales(), dense_bias);
  for (int ranks : {1, 2, 3, 5}) {
    for (int r = 0; r < ranks; ++r) {
      const std::string at = " rank " + std::to_string(r) + "/" + std::to_string(ranks);
      expect_same_weight(mp::load_column_shard(ckpt, d, r, ranks),
                         mp::shard_column(dense_bf16, r, ranks), "column" + at);
      expect_same_weight(mp::load_row_shard(ckpt, d, r, ranks), mp::shard_row(dense_bf16, r, ranks),
                         "row" + at);
      expect_same_weight(mp::load_expert_shard(ckpt, e, r, ranks),
                         mp::shard_experts(stack, r, ranks), "experts" + at);
      expect_same_weight(mp::load_column_shard(ckpt, e, r, ranks),
                         mp::shard_column(stack, r, ranks), "stacked column" + at);
    }
  }
  const Mxfp4Weight no_bias = mp::load_row_shard(ckpt, {"d.blocks", "d.scales", {}}, 0, 2);
  EXPECT_FALSE(no_bias.bias().has_value());
}

TEST_F(ParallelCheckpoint, RefusesEntriesThatAreNotAnMxfp4Weight) {
  const Mxfp4Weight w = random_weight({8, 64}, true, 41);
  const Tensor f = random_uniform({8, 32}, 42);
  const Tensor bad_scales = Tensor::zeros({8, 3}, DType::u8);
  const std::string file = path("bad.safetensors");
  mxfp4::io::write_safetensors(file, {mxfp4::io::safetensors_item("blocks", w.blocks()),
                                      mxfp4::io::safetensors_item("scales", w.scales()),
                                      mxfp4::io::safetensors_item("bias", *w.bias()),
                                      mxfp4::io::safetensors_item("float", f),
                                      mxfp4::io::safetensors_item("bad_scales", bad_scales),
                                      mxfp4::io::safetensors_item("blocks_as_bias", w.blocks())});
  const auto ckpt = mxfp4::io::SafetensorsCheckpoint::open(file);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"absent", "scales", {}}, 0, 1), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"blocks", "scales", "absent"}, 0, 1),
               mxfp4::InvalidArgument);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"float", "scales", {}}, 0, 1), mxfp4::DTypeMismatch);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"blocks", "bad_scales", {}}, 0, 1),
               mxfp4::ShapeMismatch);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"blocks", "scales", "blocks_as_bias"}, 0, 1),
               mxfp4::DTypeMismatch);
  EXPECT_THROW(mp::load_column_shard(ckpt, {"blocks", "scales", "float"}, 0, 1),
               mxfp4::ShapeMismatch);
  EXPECT_THROW(mp::load_expert_shard(ckpt, {"blocks", "scales", {}}, 0, 1),
               mxfp4::InvalidArgument);  // dense
  EXPECT_THROW(mp::load_row_shard(ckpt, {"blocks", "scales", {}}, 0, 3),
               mxfp4::InvalidArgument);  // 2 blocks, 3 ranks
}

TEST(ParallelDispatch, PlanOfASmallExample) {
  // Experts 0-1 on rank 0, 2-3 on rank 1.
  const Tensor idx = Tensor::from_vector(std::vector<std::int32_t>{0, 3, 2, 1, 3, 3}, {3, 2});
  const mp::DispatchPlan plan = mp::plan_dispatch(idx, 4, 2);
  EXPECT_EQ(plan.tokens, 3);
  EXPECT_EQ(plan.topk, 2);
  EXPECT_EQ(plan.send_counts, (std::vector<std::int64_t>{2, 4}));
  EXPECT_EQ(plan.send_offsets, (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(plan.send_pair, (std::vector<std::int64_t>{0, 3, 1, 2, 4, 5}));
  EXPECT_EQ(plan.send_token, (std::vector<std::int32_t>{0, 1, 0, 1, 2, 2}));
  EXPECT_EQ(plan.send_local_expert, (std::vector<std::int32_t>{0, 1, 1, 0, 1, 1}));
  EXPECT_EQ(plan.pair_position, (std::vector<std::int64_t>{0, 2, 3, 1, 4, 5}));
}

TEST(ParallelDispatch, PlanIsAPermutationForEveryIndexType) {
  std::mt19937 rng(7);
  for (DType dtype : {DType::u32, DType::i32, DType::i64}) {
    for (int ranks : {1, 2, 3, 4}) {
      const std::int64_t experts = 11;
      std::vector<std::int64_t> ids(40 * 3);
      for (auto& v : ids)
        v = static_cast<std::int64_t>(rng() % experts);
      Tensor idx = Tensor::from_vector(ids, {40, 3});
      if (dtype == DType::u32) {
        idx = Tensor::from_vector(std::vector<std::uint32_t>(ids.begin(), ids.end()), {40, 3});
      } else if (dtype == DType::i32) {
        idx = Tensor::from_vector(std::vector<std::int32_t>(ids.begin(), ids.end()), {40, 3});
      }
      const mp::DispatchPlan plan = mp::plan_dispatch(idx, experts, ranks);
      std::vector<bool> seen(ids.size(), false);
      for (int r = 0; r < ranks; ++r) {
        const auto ru = static_cast<std::size_t>(r);
        const std::int64_t first = mp::expert_shard(experts, r, ranks).begin;
        for (std::int64_t i = plan.send_offsets[ru];
             i < plan.send_offsets[ru] + plan.send_counts[ru]; ++i) {
          const auto iu = static_cast<std::size_t>(i);
          const std::int64_t p = plan.send_pair[iu];
          ASSERT_FALSE(seen[static_cast<std::size_t>(p)]);
          seen[static_cast<std::size_t>(p)] = true;
          if (i > plan.send_offsets[ru]) {
            ASSERT_LT(plan.send_pair[iu - 1], p);  // deterministic
          }
          EXPECT_EQ(plan.pair_position[static_cast<std::size_t>(p)], i);
          EXPECT_EQ(plan.send_token[iu], p / 3);
          EXPECT_EQ(mp::expert_owner(ids[static_cast<std::size_t>(p)], experts, ranks), r);
          EXPECT_EQ(plan.send_local_expert[iu] + first, ids[static_cast<std::size_t>(p)]);
        }
      }
      for (bool s : seen)
        ASSERT_TRUE(s);
    }
  }
}

TEST(ParallelDispatch, RefusesBadIndices) {
  const Tensor bad = Tensor::from_vector(std::vector<std::int64_t>{0, 1, 8, 2}, {2, 2});
  EXPECT_THROW(mp::plan_dispatch(bad, 8, 2), mxfp4::IndexOutOfRange);
  const Tensor neg = Tensor::from_vector(std::vector<std::int32_t>{0, -1}, {1, 2});
  EXPECT_THROW(mp::plan_dispatch(neg, 8, 2), mxfp4::IndexOutOfRange);
  const Tensor flat = Tensor::from_vector(std::vector<std::int32_t>{0, 1}, {2});
  EXPECT_THROW(mp::plan_dispatch(flat, 8, 2), mxfp4::ShapeMismatch);
  const Tensor floats = Tensor::from_vector(std::vector<float>{0, 1}, {1, 2});
  EXPECT_THROW(mp::plan_dispatch(floats, 8, 2), mxfp4::DTypeMismatch);
  const Tensor ok = Tensor::from_vector(std::vector<std::int32_t>{0, 1}, {1, 2});
  EXPECT_THROW(mp::plan_dispatch(ok, 2, 3), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::plan_dispatch(ok, 2, 0), mxfp4::InvalidArgument);
  EXPECT_THROW(mp::plan_dispatch(Tensor(), 2, 1), mxfp4::ShapeMismatch);
}

TEST(ParallelDispatch, CountsExchange) {
  // Rank s sends all[s * 3 + d] pairs to rank d.
  const std::vector<std::int64_t> all{1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(mp::receive_counts(all, 0, 3), (std::vector<std::int64_t>{1, 4, 7}));
  EXPECT_EQ(mp::receive_counts(all, 2, 3), (std::vector<std::int64_t>{3, 6, 9}));
  EXPECT_THROW(mp::receive_counts(all, 0, 2), mxfp4::ShapeMismatch);
  EXPECT_EQ(mp::offsets_from_counts({3, 0, 2}), (std::vector<std::int64_t>{0, 3, 3}));
}

// Expert parallelism simulated on the CPU: every rank's tokens go to the experts' ranks through
// the plans, each rank runs gather_linear on its experts, and results come back.
TEST(ParallelDispatch, SimulatedExpertParallelLayerEqualsTheSingleDeviceLayer) {
  const std::int64_t experts = 6;
  const std::int64_t n = 24;
  const std::int64_t k = 64;
  const std::int64_t topk = 2;
  const Mxfp4Weight w = random_weight({experts, n, k}, true, 51);
  std::mt19937 rng(52);
  for (int ranks : {1, 2, 3, 4}) {
    std::vector<Tensor> x(static_cast<std::size_t>(ranks));
    std::vector<Tensor> idx(static_cast<std::size_t>(ranks));
    std::vector<mp::DispatchPlan> plans;
    for (int s = 0; s < ranks; ++s) {
      const std::int64_t tokens = s == 1 ? 0 : 5 + s;  // rank 1 has no tokens
      x[static_cast<std::size_t>(s)] = random_uniform({tokens, k}, 60 + static_cast<unsigned>(s));
      std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens * topk));
      for (auto& v : ids)
        v = static_cast<std::int32_t>(rng() % (s == 2 ? 1 : experts));
      idx[static_cast<std::size_t>(s)] = Tensor::from_vector(ids, {tokens, topk});
      plans.push_back(mp::plan_dispatch(idx[static_cast<std::size_t>(s)], experts, ranks));
    }
    // results[s][i]: the output row for position i of rank s's send buffer.
    std::vector<std::vector<std::vector<float>>> results(static_cast<std::size_t>(ranks));
    for (int s = 0; s < ranks; ++s) {
      results[static_cast<std::size_t>(s)].resize(
          static_cast<std::size_t>(plans[static_cast<std::size_t>(s)].send_pair.size()));
    }
    for (int d = 0; d < ranks; ++d) {
      const auto du = static_cast<std::size_t>(d);
      std::vector<float> rows;
      std::vector<std::int32_t> local;
      for (int s = 0; s < ranks; ++s) {
        const auto& plan = plans[static_cast<std::size_t>(s)];
        const float* xs = x[static_cast<std::size_t>(s)].data_as<float>();
        for (std::int64_t i = plan.send_offsets[du];
             i < plan.send_offsets[du] + plan.send_counts[du]; ++i) {
          const auto iu = static_cast<std::size_t>(i);
          rows.insert(rows.end(), xs + plan.send_token[iu] * k, xs + (plan.send_token[iu] + 1) * k);
          local.push_back(plan.send_local_expert[iu]);
        }
      }
      if (local.empty()) continue;
      const auto p = static_cast<std::int64_t>(local.size());
      const Tensor y =
          mxfp4::gather_linear(Tensor::from_vector(rows, {p, k}),
                               Tensor::from_vector(local, {p, 1}), mp::shard_experts(w, d, ranks));
      const float* yp = y.data_as<float>();
      std::int64_t at = 0;
      for (int s = 0; s < ranks; ++s) {
        const auto& plan = plans[static_cast<std::size_t>(s)];
        for (std::int64_t i = plan.send_offsets[du];
             i < plan.send_offsets[du] + plan.send_counts[du]; ++i, ++at) {
          results[static_cast<std::size_t>(s)][static_cast<std::size_t>(i)].assign(
              yp + at * n, yp + (at + 1) * n);
        }
      }
    }
    for (int s = 0; s < ranks; ++s) {
      const auto su = static_cast<std::size_t>(s);
      const std::int64_t tokens = x[su].dim(0);
      std::vector<float> got(static_cast<std::size_t>(tokens * topk * n));
      for (std::size_t i = 0; i < plans[su].send_pair.size(); ++i) {
        std::copy(results[su][i].begin(), results[su][i].end(),
                  got.begin() + plans[su].send_pair[i] * n);
      }
      if (tokens == 0) continue;
      const Tensor want = mxfp4::gather_linear(x[su], idx[su], w);
      expect_close(got, values(want), 1e-6,
                   "rank " + std::to_string(s) + " of " + std::to_string(ranks));
    }
  }
}
