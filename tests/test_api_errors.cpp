// Every bad input gets its typed error, and the message names the argument and the shapes or
// dtypes involved (issue 2, item 4).
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mxfp4/device.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace {

using mxfp4::Device;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;

// Runs f, expects exactly error type E (and its code), and returns the message.
template <typename E>
std::string error_message(const std::function<void()>& f, mxfp4::ErrorCode code) {
  try {
    f();
  } catch (const E& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "no exception";
  return {};
}

void expect_mentions(const std::string& msg, std::initializer_list<const char*> parts) {
  for (const char* p : parts) {
    EXPECT_NE(msg.find(p), std::string::npos) << "message \"" << msg << "\" lacks \"" << p << "\"";
  }
}

#define EXPECT_ERROR(Type, code, stmt, ...)                                            \
  do {                                                                                 \
    SCOPED_TRACE(#stmt);                                                               \
    expect_mentions(error_message<mxfp4::Type>([&] { stmt; }, mxfp4::ErrorCode::code), \
                    {__VA_ARGS__});                                                    \
  } while (0)

Tensor f32(const Shape& shape) {
  return Tensor::zeros(shape, DType::f32);
}
Tensor u8(const Shape& shape) {
  return Tensor::zeros(shape, DType::u8);
}

Mxfp4Weight dense_weight(std::int64_t n = 4, std::int64_t k = 64) {
  return Mxfp4Weight::from_parts(u8({n, k / 2}), u8({n, k / 32}));
}
Mxfp4Weight stacked_weight(std::int64_t e = 4, std::int64_t n = 3, std::int64_t k = 64) {
  return Mxfp4Weight::from_parts(u8({e, n, k / 2}), u8({e, n, k / 32}));
}

// ---- quantize
// -------------------------------------------------------------------------------------

TEST(QuantizeErrors, KNotAMultipleOf32) {
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({4, 33})), "K=33", "weight",
               "[4, 33]", "32");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({2, 3, 48})), "K=48",
               "[2, 3, 48]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({4, 0})), "K=0");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::quantize(f32({1, 16})), "K=16");
}

TEST(QuantizeErrors, WrongRank) {
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({64})), "weight", "[64]",
               "[N, K]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({1, 2, 2, 32})), "weight",
               "[1, 2, 2, 32]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize(f32({})), "weight", "[]");
}

TEST(QuantizeErrors, NonFloatingWeight) {
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::quantize(u8({2, 32})), "weight", "u8");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::quantize(Tensor::zeros({2, 32}, DType::i32)),
               "weight", "i32");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::quantize(Tensor()), "weight", "undefined");
}

TEST(QuantizeErrors, NonFiniteWeightNamesRowAndColumn) {
  std::vector<float> v(3 * 64, 0.5f);
  v[1 * 64 + 5] = std::numeric_limits<float>::quiet_NaN();
  v[2 * 64 + 40] = std::numeric_limits<float>::infinity();
  const Tensor w = Tensor::from_vector(v, {3, 64});
  EXPECT_ERROR(NonFiniteValue, non_finite, mxfp4::quantize(w), "NaN", "row 1", "column 5",
               "[3, 64]", "nan_block");
  for (DType dt : {DType::f16, DType::bf16}) {
    EXPECT_ERROR(NonFiniteValue, non_finite, Mxfp4Weight::quantize(w.to(dt)), "NaN", "row 1",
                 "column 5");
  }
  std::vector<float> inf(2 * 64, 1.0f);
  inf[1 * 64 + 63] = -std::numeric_limits<float>::infinity();
  EXPECT_ERROR(NonFiniteValue, non_finite, mxfp4::quantize(Tensor::from_vector(inf, {2, 64})),
               "-Inf", "row 1", "column 63");
  inf[1 * 64 + 63] = 1.0f;
  inf[0 * 64 + 32] = std::numeric_limits<float>::infinity();
  EXPECT_ERROR(NonFiniteValue, non_finite, mxfp4::quantize(Tensor::from_vector(inf, {2, 64})),
               "+Inf", "row 0", "column 32");
  // Stacked [2, 3, 64]: named by expert and row.
  std::vector<float> s(2 * 3 * 64, 1.0f);
  s[(1 * 3 + 2) * 64 + 7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR(NonFiniteValue, non_finite, mxfp4::quantize(Tensor::from_vector(s, {2, 3, 64})),
               "expert 1, row 2", "column 7", "[2, 3, 64]");
  // The nan_block policy encodes instead: scale 0xFF for that block only.
  mxfp4::QuantizeOptions opt;
  opt.non_finite = mxfp4::NonFinitePolicy::nan_block;
  const mxfp4::QuantizedTensor q = mxfp4::quantize(w, opt);
  const std::uint8_t* scales = q.scales.data_as<std::uint8_t>();
  EXPECT_EQ(scales[1 * 2 + 0], 0xFF);
  EXPECT_EQ(scales[2 * 2 + 1], 0xFF);
  EXPECT_NE(scales[0], 0xFF);
  EXPECT_NE(scales[1 * 2 + 1], 0xFF);
}

TEST(QuantizeErrors, QuantizeIntoOutputs) {
  const Tensor w = f32({4, 64});
  Tensor blocks = u8({4, 32});
  Tensor scales = u8({4, 2});
  Tensor bad_blocks = u8({4, 16});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize_into(w, bad_blocks, scales), "blocks",
               "[4, 32]", "[4, 16]");
  Tensor bad_scales = u8({4, 3});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::quantize_into(w, blocks, bad_scales), "scales",
               "[4, 2]", "[4, 3]");
  Tensor i32_blocks = Tensor::zeros({4, 32}, DType::i32);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::quantize_into(w, i32_blocks, scales), "blocks",
               "u8", "i32");
  // Scales overlapping blocks.
  Tensor alias = Tensor::view(blocks.data(), {4, 2}, DType::u8);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::quantize_into(w, blocks, alias),
               "scales overlaps blocks");
  // Blocks overlapping the weight.
  Tensor wa = u8({4 * 64 * 4});
  const Tensor w_in = Tensor::view(wa.data(), {4, 64}, DType::f32);
  Tensor blocks_in = Tensor::view(wa.data(), {4, 32}, DType::u8);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::quantize_into(w_in, blocks_in, scales),
               "blocks overlaps weight");
  mxfp4::QuantizeOptions opt;
  opt.rule = static_cast<mxfp4::ScaleRule>(9);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::quantize(w, opt), "scale rule", "9");
}

// ---- names
// ----------------------------------------------------------------------------------------

TEST(NameErrors, UnknownScaleRuleAndDType) {
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_scale_rule("nearest"), "nearest",
               "floor", "ceil", "even", "mse", "mistralrs");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_scale_rule("Floor"), "Floor");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_scale_rule(""), "floor");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_dtype("f64"), "f64", "bf16", "i64");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_dtype("F32"), "F32");
  for (const char* name : {"floor", "ceil", "even", "mse", "mistralrs"}) {
    EXPECT_STREQ(mxfp4::scale_rule_name(mxfp4::parse_scale_rule(name)), name);
  }
  EXPECT_EQ(mxfp4::parse_scale_rule("mse"), mxfp4::ScaleRule::mse);
  EXPECT_EQ(mxfp4::parse_scale_rule("mistralrs"), mxfp4::ScaleRule::mistralrs);
  EXPECT_EQ(static_cast<int>(mxfp4::ScaleRule::floor), 0);
  EXPECT_EQ(static_cast<int>(mxfp4::ScaleRule::mistralrs), 4);
}

// ---- from_parts
// -----------------------------------------------------------------------------------

TEST(FromPartsErrors, DTypes) {
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, Mxfp4Weight::from_parts(f32({4, 32}), u8({4, 2})),
               "blocks", "u8", "f32", "[4, 32]");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch,
               Mxfp4Weight::from_parts(u8({4, 32}), Tensor::zeros({4, 2}, DType::i32)), "scales",
               "i32");
  EXPECT_ERROR(InvalidArgument, invalid_argument, Mxfp4Weight::from_parts(Tensor(), u8({4, 2})),
               "blocks");
}

TEST(FromPartsErrors, Shapes) {
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({32}), u8({2})), "blocks",
               "[32]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({1, 1, 4, 32}), u8({1, 1, 4, 2})), "[1, 1, 4, 32]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({4, 32}), u8({1, 4, 2})),
               "rank", "scales", "[1, 4, 2]", "[4, 32]");
  // blocks' last dim must be 16 * scales' last dim.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 1})),
               "blocks", "[4, 32]", "[4, 1]", "16", "K=32");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({4, 30}), u8({4, 2})),
               "[4, 30]", "32");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({4, 32}), u8({5, 2})),
               "dim 0", "[4, 32]", "[5, 2]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({2, 4, 32}), u8({2, 3, 2})), "dim 1");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::from_parts(u8({4, 0}), u8({4, 0})),
               "scales", "[4, 0]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({0, 4, 16}), u8({0, 4, 1})), "expert", "[0, 4, 16]");
}

TEST(FromPartsErrors, Bias) {
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), f32({5})), "bias", "[4]", "[5]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), f32({1, 4})), "bias", "[4]",
               "[1, 4]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({2, 4, 32}), u8({2, 4, 2}), f32({4})), "bias", "[2, 4]",
               "[4]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               Mxfp4Weight::from_parts(u8({2, 4, 32}), u8({2, 4, 2}), f32({4, 2})), "[2, 4]",
               "[4, 2]");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), u8({4})), "bias", "u8");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), Tensor::zeros({4}, DType::i64)),
               "bias", "i64");
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), Tensor()), "bias");
  // Through quantize too.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, Mxfp4Weight::quantize(f32({4, 32}), f32({3})), "bias",
               "[4]", "[3]");
  // Accepted: every floating dtype, dense [N] and stacked [E, N].
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    EXPECT_NO_THROW(Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), Tensor::zeros({4}, dt)));
    EXPECT_NO_THROW(
        Mxfp4Weight::from_parts(u8({2, 4, 32}), u8({2, 4, 2}), Tensor::zeros({2, 4}, dt)));
  }
}

// ---- block layouts
// --------------------------------------------------------------------------------

// A weight whose scales are all 127 except `scale` at flat position `at`.
Mxfp4Weight weight_with_scale(const Shape& scales_shape, std::int64_t at, std::uint8_t scale) {
  Shape blocks_shape = scales_shape;
  blocks_shape.back() *= 16;
  Tensor scales = u8(scales_shape);
  auto* s = scales.data_as<std::uint8_t>();
  for (std::int64_t i = 0; i < scales.numel(); ++i)
    s[i] = 127;
  s[at] = scale;
  return Mxfp4Weight::from_parts(u8(blocks_shape), scales);
}

TEST(BlockLayoutErrors, NamesAndUnknownLayouts) {
  EXPECT_STREQ(mxfp4::block_layout_name(mxfp4::BlockLayout::standard), "standard");
  EXPECT_STREQ(mxfp4::block_layout_name(mxfp4::BlockLayout::gpu), "gpu");
  EXPECT_EQ(mxfp4::parse_block_layout("gpu"), mxfp4::BlockLayout::gpu);
  EXPECT_EQ(mxfp4::parse_block_layout("standard"), mxfp4::BlockLayout::standard);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::parse_block_layout("GPU"), "'GPU'",
               "standard", "gpu");
  const auto bad = static_cast<mxfp4::BlockLayout>(7);
  EXPECT_ERROR(InvalidArgument, invalid_argument, dense_weight().with_layout(bad), "with_layout",
               "unknown BlockLayout 7");
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               Mxfp4Weight::from_parts(u8({4, 32}), u8({4, 2}), {}, bad), "from_parts",
               "unknown BlockLayout 7");
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               Mxfp4Weight().with_layout(mxfp4::BlockLayout::gpu), "with_layout", "empty");
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               Mxfp4Weight().with_layout(mxfp4::BlockLayout::standard), "empty");
}

TEST(BlockLayoutErrors, ScalesAbove128AreRefusedNamingTheBlock) {
  using mxfp4::BlockLayout;
  // Stacked [3, 4, K = 96]: scale 130 at expert 1, row 2, block 1 (flat 1 * 12 + 2 * 3 + 1).
  const Mxfp4Weight stacked = weight_with_scale({3, 4, 3}, 19, 130);
  EXPECT_ERROR(InvalidArgument, invalid_argument, stacked.with_layout(BlockLayout::gpu),
               "Mxfp4Weight::with_layout", "BlockLayout::gpu", "at most 128",
               "expert 1, row 2, block 1 has scale 130 (2^3)");
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               Mxfp4Weight::from_parts(stacked.blocks(), stacked.scales(), {}, BlockLayout::gpu),
               "Mxfp4Weight::from_parts", "expert 1, row 2, block 1 has scale 130");
  // Dense [5, K = 64]: the first offending block is named (no expert), a NaN block as such.
  const std::string dense = error_message<mxfp4::InvalidArgument>(
      [] {
        weight_with_scale({5, 2}, 7, 0xFF).with_layout(BlockLayout::gpu);
      },
      mxfp4::ErrorCode::invalid_argument);
  expect_mentions(dense, {"but row 3, block 1 has scale 255 (NaN)"});
  EXPECT_EQ(dense.find("expert"), std::string::npos) << dense;
  // 128 is the largest scale the layout holds; the refusal leaves the weight standard.
  const Mxfp4Weight edge = weight_with_scale({5, 2}, 9, 128);
  EXPECT_EQ(edge.with_layout(BlockLayout::gpu).layout(), BlockLayout::gpu);
  EXPECT_EQ(Mxfp4Weight::from_parts(edge.blocks(), edge.scales(), {}, BlockLayout::gpu).layout(),
            BlockLayout::gpu);
  EXPECT_EQ(stacked.layout(), BlockLayout::standard);
  // Back to standard never checks scales.
  const Mxfp4Weight tagged = weight_with_scale({5, 2}, 0, 0).with_layout(BlockLayout::gpu);
  EXPECT_EQ(tagged.with_layout(BlockLayout::standard).layout(), BlockLayout::standard);
}

TEST(BlockLayoutErrors, CpuLinearAndGatherRefuseTheGpuLayout) {
  const Mxfp4Weight d = dense_weight(4, 64).with_layout(mxfp4::BlockLayout::gpu);
  const Mxfp4Weight e = stacked_weight(4, 3, 64).with_layout(mxfp4::BlockLayout::gpu);
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::linear(f32({2, 64}), d),
               "linear: ", "BlockLayout::gpu", "only the CUDA backend", "cpu",
               "with_layout(BlockLayout::standard)");
  Tensor out = f32({2, 4});
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::linear_into(f32({2, 64}), d, out),
               "BlockLayout::gpu");
  // Even an empty batch: the refusal does not depend on the input.
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::linear(f32({0, 64}), d), "BlockLayout::gpu");
  const Tensor ids = Tensor::zeros({2, 2}, DType::i32);
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::gather_linear(f32({2, 64}), ids, e),
               "gather_linear: ", "BlockLayout::gpu", "with_layout(BlockLayout::standard)");
  Tensor gout = f32({2, 2, 3});
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::gather_linear_into(f32({2, 64}), ids, e, gout),
               "BlockLayout::gpu");
  // Converted back, both run.
  EXPECT_NO_THROW(mxfp4::linear(f32({2, 64}), d.with_layout(mxfp4::BlockLayout::standard)));
  EXPECT_NO_THROW(
      mxfp4::gather_linear(f32({2, 64}), ids, e.with_layout(mxfp4::BlockLayout::standard)));
}

// ---- dequantize
// -----------------------------------------------------------------------------------

TEST(DequantizeErrors, OutputDTypeAndShape) {
  const Mxfp4Weight w = dense_weight(4, 64);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::dequantize(w, DType::u8), "u8");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::dequantize(w, DType::i32), "i32");
  Tensor wrong = f32({4, 32});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::dequantize_into(w, wrong), "out", "[4, 64]",
               "[4, 32]");
  Tensor ints = Tensor::zeros({4, 64}, DType::i32);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::dequantize_into(w, ints), "out", "i32");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::dequantize(Mxfp4Weight()), "weight");
  Tensor stacked_out = f32({1, 4, 64});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::dequantize_into(w, stacked_out), "[4, 64]",
               "[1, 4, 64]");
  // Output overlapping the packed codes: blocks [4, 256] (K = 512) at the start of a buffer that
  // the bf16 output [4, 512] also covers.
  Tensor storage = u8({4 * 512 * 2});
  const Tensor blocks = Tensor::view(storage.data(), {4, 256}, DType::u8);
  const Mxfp4Weight big = Mxfp4Weight::from_parts(blocks, u8({4, 16}));
  Tensor alias = Tensor::view(storage.data(), {4, 512}, DType::bf16);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::dequantize_into(big, alias), "overlaps",
               "blocks");
}

// ---- linear
// ---------------------------------------------------------------------------------------

TEST(LinearErrors, XShapeAndDType) {
  const Mxfp4Weight w = dense_weight(4, 64);
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear(f32({3, 48}), w), "x", "K=64",
               "[3, 48]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear(f32({2, 3, 65}), w), "[2, 3, 65]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear(f32({}), w), "x", "[]");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::linear(Tensor::zeros({3, 64}, DType::i32), w),
               "x", "i32", "f32");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::linear(u8({3, 64}), w), "x", "u8");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::linear(Tensor(), w), "x");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::linear(f32({3, 64}), Mxfp4Weight()),
               "weight");
}

TEST(LinearErrors, StackedWeightIsRefused) {
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear(f32({3, 64}), stacked_weight(4, 3)),
               "dense", "4 experts", "gather_linear");
}

TEST(LinearErrors, OutputOfLinearInto) {
  const Mxfp4Weight w = dense_weight(4, 64);
  const Tensor x = f32({3, 64});
  Tensor wrong_shape = f32({3, 5});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear_into(x, w, wrong_shape), "out",
               "[3, 4]", "[3, 5]");
  Tensor flat = f32({12});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::linear_into(x, w, flat), "[3, 4]", "[12]");
  Tensor wrong_dtype = Tensor::zeros({3, 4}, DType::bf16);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::linear_into(x, w, wrong_dtype), "out", "f32",
               "bf16");
  Tensor undefined;
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::linear_into(x, w, undefined), "out");
  // out overlapping x.
  Tensor xs = f32({3, 64});
  Tensor alias = Tensor::view(static_cast<char*>(xs.data()) + 100, {3, 4}, DType::f32);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::linear_into(xs, w, alias), "overlaps",
               "x");
  // Adjacent but not overlapping is fine.
  Tensor both = f32({3 * 64 + 3 * 4});
  const Tensor x_part = Tensor::view(both.data(), {3, 64}, DType::f32);
  Tensor out_part = Tensor::view(static_cast<float*>(both.data()) + 3 * 64, {3, 4}, DType::f32);
  EXPECT_NO_THROW(mxfp4::linear_into(x_part, w, out_part));
}

// ---- gather_linear
// --------------------------------------------------------------------------------

Tensor ids_u32(const std::vector<std::uint32_t>& v, std::int64_t t, std::int64_t k) {
  return Tensor::from_vector(v, {t, k});
}

TEST(GatherErrors, WeightAndIndices) {
  const Mxfp4Weight w = stacked_weight(4, 3, 64);
  const Tensor x = f32({2, 64});
  const Tensor ids = ids_u32({0, 1, 2, 3}, 2, 2);
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(x, ids, dense_weight(3, 64)),
               "stacked", "[3, 64]", "linear");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear(x, Tensor::from_vector<std::uint32_t>({0, 1}, {2}), w),
               "indices", "[T, topk]", "[2]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear(x, Tensor::zeros({2, 2, 1}, DType::u32), w), "indices",
               "[2, 2, 1]");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::gather_linear(x, f32({2, 2}), w), "indices",
               "f32", "u32", "i32", "i64");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::gather_linear(x, u8({2, 2}), w), "indices",
               "u8");
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch,
               mxfp4::gather_linear(Tensor::zeros({2, 64}, DType::i64), ids, w), "x", "i64");
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::gather_linear(x, Tensor(), w), "indices");
}

TEST(GatherErrors, XShapes) {
  const Mxfp4Weight w = stacked_weight(4, 3, 64);
  const Tensor ids = ids_u32({0, 1, 2, 3, 0, 1}, 3, 2);  // T = 3, topk = 2
  // [T, 1, K] with topk > 1 is refused with the hint.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({3, 1, 64}), ids, w),
               "[3, 1, 64]", "[3, 2, K]", "pass x as [T, K]");
  // T mismatch, both ranks.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({4, 64}), ids, w), "T=3",
               "[4, 64]", "[3, 2]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({2, 2, 64}), ids, w),
               "[2, 2, 64]", "[3, 2, K]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({3, 3, 64}), ids, w),
               "[3, 3, 64]");
  // Wrong K, wrong rank.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({3, 32}), ids, w), "K=64",
               "[3, 32]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({3, 2, 96}), ids, w), "K=64",
               "[3, 2, 96]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({64}), ids, w), "x", "[64]");
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear(f32({1, 3, 2, 64}), ids, w),
               "[1, 3, 2, 64]");
}

TEST(GatherErrors, ExpertIdsOutOfRange) {
  const Mxfp4Weight w = stacked_weight(4, 3, 64);
  const Tensor x = f32({3, 64});
  // id == E.
  EXPECT_ERROR(IndexOutOfRange, index_out_of_range,
               mxfp4::gather_linear(x, ids_u32({0, 1, 4, 3, 0, 1}, 3, 2), w), "indices[1, 0]",
               "= 4", "[0, 4)");
  EXPECT_ERROR(IndexOutOfRange, index_out_of_range,
               mxfp4::gather_linear(x, ids_u32({0, 1, 2, 3, 0, 0xFFFFFFFFu}, 3, 2), w),
               "indices[2, 1]", "4294967295");
  // Negative i32 and i64.
  EXPECT_ERROR(
      IndexOutOfRange, index_out_of_range,
      mxfp4::gather_linear(x, Tensor::from_vector<std::int32_t>({0, 1, 2, 3, 0, -1}, {3, 2}), w),
      "indices[2, 1]", "-1");
  EXPECT_ERROR(
      IndexOutOfRange, index_out_of_range,
      mxfp4::gather_linear(
          x, Tensor::from_vector<std::int64_t>({-(std::int64_t{1} << 40), 0, 1}, {3, 1}), w),
      "indices[0, 0]", "-1099511627776");
  EXPECT_ERROR(IndexOutOfRange, index_out_of_range,
               mxfp4::gather_linear(x, Tensor::from_vector<std::int64_t>({0, 1, 5}, {3, 1}), w),
               "indices[2, 0]", "= 5");
  // A single expert: only id 0 is valid.
  const Mxfp4Weight one = stacked_weight(1, 3, 64);
  EXPECT_ERROR(IndexOutOfRange, index_out_of_range,
               mxfp4::gather_linear(f32({1, 64}), ids_u32({1}, 1, 1), one), "indices[0, 0]",
               "[0, 1)");
  EXPECT_NO_THROW(mxfp4::gather_linear(f32({1, 64}), ids_u32({0}, 1, 1), one));
}

TEST(GatherErrors, OutputOfGatherInto) {
  const Mxfp4Weight w = stacked_weight(4, 3, 64);
  const Tensor x = f32({2, 64});
  const Tensor ids = ids_u32({0, 1, 2, 3}, 2, 2);
  Tensor wrong = f32({2, 3});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch, mxfp4::gather_linear_into(x, ids, w, wrong), "out",
               "[2, 2, 3]", "[2, 3]");
  Tensor wrong_dtype = Tensor::zeros({2, 2, 3}, DType::f16);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch, mxfp4::gather_linear_into(x, ids, w, wrong_dtype),
               "out", "f16");
  Tensor xs = f32({2, 64});
  Tensor alias = Tensor::view(xs.data(), {2, 2, 3}, DType::f32);
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::gather_linear_into(xs, ids, w, alias),
               "overlaps", "x");
  Tensor id_storage = Tensor::zeros({2, 2, 3}, DType::f32);
  const Tensor ids_alias = Tensor::view(id_storage.data(), {2, 2}, DType::u32);
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               mxfp4::gather_linear_into(x, ids_alias, w, id_storage), "overlaps", "indices");
}

TEST(GatherErrors, ExpertOrderOutputs) {
  const Mxfp4Weight w = stacked_weight(4, 3, 64);
  const Tensor x = f32({2, 64});
  const Tensor ids = ids_u32({0, 1, 2, 3}, 2, 2);
  Tensor out = f32({4, 3});
  Tensor perm = Tensor::zeros({4}, DType::i32);
  Tensor offsets = Tensor::zeros({5}, DType::i32);
  EXPECT_NO_THROW(mxfp4::gather_linear_expert_order_into(x, ids, w, out, perm, offsets));
  Tensor out_scattered = f32({2, 2, 3});
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out_scattered, perm, offsets),
               "out", "[4, 3]", "[2, 2, 3]");
  Tensor perm_i64 = Tensor::zeros({4}, DType::i64);
  EXPECT_ERROR(DTypeMismatch, dtype_mismatch,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out, perm_i64, offsets), "perm",
               "i32", "i64");
  Tensor perm_short = Tensor::zeros({3}, DType::i32);
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out, perm_short, offsets), "perm",
               "[4]");
  Tensor offsets_e = Tensor::zeros({4}, DType::i32);
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out, perm, offsets_e), "offsets",
               "[5]");
  // perm inside out's memory, offsets inside perm's.
  Tensor big = Tensor::zeros({64}, DType::i32);
  Tensor out_view = Tensor::view(big.data(), {4, 3}, DType::f32);
  Tensor perm_view = Tensor::view(big.data_as<std::int32_t>() + 8, {4}, DType::i32);
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out_view, perm_view, offsets),
               "perm", "overlaps", "out");
  Tensor perm_own = Tensor::zeros({8}, DType::i32);
  Tensor perm4 = Tensor::view(perm_own.data(), {4}, DType::i32);
  Tensor offsets_in_perm = Tensor::view(perm_own.data_as<std::int32_t>() + 3, {5}, DType::i32);
  EXPECT_ERROR(InvalidArgument, invalid_argument,
               mxfp4::gather_linear_expert_order_into(x, ids, w, out, perm4, offsets_in_perm),
               "offsets", "overlaps", "perm");
  // An out-of-range id throws before anything is written.
  std::fill(perm.data_as<std::int32_t>(), perm.data_as<std::int32_t>() + 4, -3);
  EXPECT_ERROR(
      IndexOutOfRange, index_out_of_range,
      mxfp4::gather_linear_expert_order_into(x, ids_u32({0, 1, 9, 3}, 2, 2), w, out, perm, offsets),
      "indices[1, 0]", "= 9");
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(perm.data_as<std::int32_t>()[i], -3);
  // A dense weight is refused as in gather_linear.
  EXPECT_ERROR(ShapeMismatch, shape_mismatch,
               mxfp4::gather_linear_expert_order(x, ids, Mxfp4Weight::quantize(f32({3, 64}))),
               "stacked");
}

// ---- devices
// --------------------------------------------------------------------------------------

TEST(DeviceErrors, CudaTensorsAreUnsupportedInACpuBuild) {
  if (mxfp4::cuda_built()) GTEST_SKIP() << "this build has the CUDA backend";
  static float host[4 * 64];
  static std::uint8_t bytes[4 * 32 + 4 * 2];
  const Tensor wx = Tensor::view(host, {4, 64}, DType::f32, Device::cuda());
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::quantize(wx), "cuda:0");
  EXPECT_ERROR(Unsupported, unsupported, Tensor::empty({4}, DType::f32, Device::cuda(1)), "cuda:1");
  // A weight on the device (parts are only recorded) cannot run anything.
  const Mxfp4Weight w =
      Mxfp4Weight::from_parts(Tensor::view(bytes, {4, 32}, DType::u8, Device::cuda()),
                              Tensor::view(bytes + 4 * 32, {4, 2}, DType::u8, Device::cuda()));
  EXPECT_EQ(w.device(), Device::cuda());
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::dequantize(w), "cuda:0");
  EXPECT_ERROR(Unsupported, unsupported, mxfp4::linear(wx, w), "cuda:0");
  // Mixed devices are an argument error naming both.
  EXPECT_ERROR(InvalidArgument, invalid_argument, mxfp4::linear(f32({2, 64}), w), "x", "cpu",
               "cuda:0");
  EXPECT_ERROR(
      InvalidArgument, invalid_argument,
      Mxfp4Weight::from_parts(Tensor::view(bytes, {4, 32}, DType::u8, Device::cuda()), u8({4, 2})),
      "cuda:0", "cpu");
}

}  // namespace
