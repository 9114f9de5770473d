// The GPU block layout (src/core/gpu_block_layout.hpp) against the standard one: every byte value
// in every position of a block converts there and back unchanged, lands in the word and slot the
// layout names, and decodes (bf16 and f16) to exactly its two codes' values times 2^-126 / 2^-14,
// whatever the block's other bytes hold; the bf16 scale factor takes those to the reference's
// dequantized values for every scale the layout admits. Then the weights re-laid out with it
// (Mxfp4Weight::with_layout, BlockLayout::gpu) on the CPU: their bytes, what they share, and
// dequantize's values (the refusals are in test_api_errors.cpp).
#include "core/gpu_block_layout.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/weight.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::detail::f16_prescale_ok;
using mxfp4::detail::f16_scale_pair;
using mxfp4::detail::gpu_block_from_standard;
using mxfp4::detail::gpu_scale_bf16;
using mxfp4::detail::gpu_slot_bf16;
using mxfp4::detail::gpu_slot_f16;
using mxfp4::detail::standard_block_from_gpu;

// A code's value (a signed zero for codes 0 and 8), times 2^e.
float code_value(unsigned code, int e) {
  return std::ldexp(mxfp4::e2m1_decode(static_cast<std::uint8_t>(code)), e);
}

// Bit-exact equality of floats (so -0 differs from +0).
void expect_same(float got, float want, const std::string& what) {
  std::uint32_t g = 0, w = 0;
  std::memcpy(&g, &got, 4);
  std::memcpy(&w, &want, 4);
  EXPECT_EQ(g, w) << what << ": got " << got << ", want " << want;
}

TEST(GpuBlockLayout, EveryByteInEveryPositionRoundTripsAndDecodes) {
  std::mt19937 rng(7);
  for (int p = 0; p < 16; ++p) {
    for (unsigned v = 0; v < 256; ++v) {
      std::uint8_t block[16];
      for (auto& b : block)
        b = static_cast<std::uint8_t>(rng());
      block[p] = static_cast<std::uint8_t>(v);
      std::uint32_t words[4];
      gpu_block_from_standard(block, words);
      // The same 16 bytes, read as little-endian words, convert back unchanged.
      std::uint8_t back[16];
      standard_block_from_gpu(words, back);
      ASSERT_EQ(std::memcmp(back, block, 16), 0) << "byte " << p << " = " << v;
      // Pair p is slot p / 4 of word p % 4.
      const std::uint32_t w = words[p % 4];
      const int s = p / 4;
      const std::string what = "byte " + std::to_string(p) + " = " + std::to_string(v);
      const std::uint32_t b = gpu_slot_bf16(w, s);
      expect_same(mxfp4::bf16_to_f32(static_cast<std::uint16_t>(b)), code_value(v & 15, -126),
                  what + " bf16 low");
      expect_same(mxfp4::bf16_to_f32(static_cast<std::uint16_t>(b >> 16)), code_value(v >> 4, -126),
                  what + " bf16 high");
      const std::uint32_t h = gpu_slot_f16(w, s);
      expect_same(mxfp4::f16_to_f32(static_cast<std::uint16_t>(h)), code_value(v & 15, -14),
                  what + " f16 low");
      expect_same(mxfp4::f16_to_f32(static_cast<std::uint16_t>(h >> 16)), code_value(v >> 4, -14),
                  what + " f16 high");
    }
  }
}

TEST(GpuBlockLayout, WordsAreTheBlocksOwnBytes) {
  // Only bits move: the words have as many set bits as the block.
  const std::uint8_t block[16] = {0x21, 0x43, 0x65, 0x87, 0xA9, 0xCB, 0xED, 0x0F,
                                  0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE};
  std::uint32_t words[4];
  gpu_block_from_standard(block, words);
  int ones_in = 0, ones_out = 0;
  for (std::uint8_t b : block)
    ones_in += __builtin_popcount(b);
  for (std::uint32_t w : words)
    ones_out += __builtin_popcount(w);
  EXPECT_EQ(ones_in, ones_out);
  // Word 0 slot 0 is standard byte 0 (codes 1 and 2): magnitudes 1 and 2 at bits 0-2 and 16-18.
  EXPECT_EQ(words[0] & 0x00070007u, 0x00020001u);
}

TEST(GpuBlockLayout, BlockBytesAreTheWordsLittleEndianAndConvertBackInPlace) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 1000; ++trial) {
    std::uint8_t block[16], gpu[16];
    for (std::uint8_t& b : block)
      b = static_cast<std::uint8_t>(rng());
    mxfp4::detail::gpu_bytes_from_standard(block, gpu);
    std::uint32_t words[4];
    gpu_block_from_standard(block, words);
    for (int i = 0; i < 16; ++i) {
      ASSERT_EQ(gpu[i], static_cast<std::uint8_t>(words[i / 4] >> (8 * (i % 4))))
          << "trial " << trial << " byte " << i;
    }
    std::uint8_t back[16];
    std::memcpy(back, gpu, 16);
    mxfp4::detail::standard_bytes_from_gpu(back, back);  // in place
    ASSERT_EQ(0, std::memcmp(back, block, 16)) << "trial " << trial;
    std::memcpy(back, block, 16);
    mxfp4::detail::gpu_bytes_from_standard(back, back);  // in place
    ASSERT_EQ(0, std::memcmp(back, gpu, 16)) << "trial " << trial;
  }
}

TEST(GpuBlockLayout, TheScaleFactorGivesTheReferencesValues) {
  for (std::uint32_t s = 0; s <= mxfp4::detail::kGpuLayoutMaxScale; ++s) {
    const std::uint32_t f = gpu_scale_bf16(s);
    ASSERT_EQ(f >> 16, f & 0xFFFFu);
    const float factor = mxfp4::bf16_to_f32(static_cast<std::uint16_t>(f));
    EXPECT_EQ(factor, std::ldexp(1.0f, static_cast<int>(s) - 1)) << "scale " << s;
    for (unsigned code = 0; code < 16; ++code) {
      // The decoded pair times the factor, as the kernels' bf16 multiply makes it (exact: both
      // are powers of two times at most two significant bits, and f32 holds the product).
      const float got = code_value(code, -126) * factor;
      expect_same(got,
                  mxfp4::e2m1_decode(static_cast<std::uint8_t>(code)) *
                      mxfp4::e8m0_decode(static_cast<std::uint8_t>(s)),
                  "code " + std::to_string(code) + " scale " + std::to_string(s));
    }
  }
}

// f16 x's pre-scaled decode (sm80_linear.cu): f16_prescale_ok accepts exactly the scales for
// which the f16 factor is a normal f16 and every code times it is a normal f16 or zero equal to
// the reference's value (so the kernels' packed f16 multiply is exact and the tensor cores meet
// no subnormal weight), in both layouts: decode4's values (standard) and gpu_slot_f16's (values
// times 2^-14).
TEST(GpuBlockLayout, TheF16PreScaleRangeIsWhereEveryScaledCodeIsANormalF16) {
  auto normal_f16 = [](double v) {
    return v != 0.0 && std::fabs(v) >= 0x1p-14 && std::fabs(v) <= 65504.0 &&
           mxfp4::test::round_f16(v) == v;
  };
  for (const bool gpu : {false, true}) {
    int accepted = 0;
    for (std::uint32_t s = 0; s < 256; ++s) {
      const int slot_exp = gpu ? -14 : 0;  // what the decoded codes carry
      const double factor = std::ldexp(1.0, static_cast<int>(s) - 127 - slot_exp);
      bool exact = normal_f16(factor) && s != 255;
      for (unsigned code = 0; code < 16 && exact; ++code) {
        const double got = static_cast<double>(code_value(code, slot_exp)) * factor;
        const double want =
            static_cast<double>(mxfp4::e2m1_decode(static_cast<std::uint8_t>(code))) *
            static_cast<double>(mxfp4::e8m0_decode(static_cast<std::uint8_t>(s)));
        exact = got == want && (got == 0.0 || normal_f16(got));
      }
      const std::string what =
          std::string(gpu ? "gpu" : "standard") + " scale " + std::to_string(s);
      ASSERT_EQ(f16_prescale_ok(s, gpu), exact) << what;
      if (!exact) continue;
      ++accepted;
      const std::uint32_t f = f16_scale_pair(s, gpu);
      ASSERT_EQ(f >> 16, f & 0xFFFFu) << what;
      EXPECT_EQ(mxfp4::test::decode_f16(static_cast<std::uint16_t>(f)), factor) << what;
    }
    EXPECT_EQ(accepted, gpu ? 15 : 27);  // [114, 128] and [114, 140]
  }
}

// ---- weights in the GPU layout ------------------------------------------------------------------

using mxfp4::BlockLayout;
using mxfp4::DType;
using mxfp4::Mxfp4Weight;
using mxfp4::Shape;
using mxfp4::Tensor;

const std::uint8_t* bytes(const Tensor& t) {
  return static_cast<const std::uint8_t*>(t.data());
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// A weight of random codes (every byte value likely) and random scales in [0, 128], with a bias.
Mxfp4Weight random_codes(const Shape& blocks_shape, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Tensor blocks = Tensor::empty(blocks_shape, DType::u8);
  for (std::int64_t i = 0; i < blocks.numel(); ++i)
    blocks.data_as<std::uint8_t>()[i] = static_cast<std::uint8_t>(rng());
  Shape scales_shape = blocks_shape;
  scales_shape.back() /= 16;
  Tensor scales = Tensor::empty(scales_shape, DType::u8);
  for (std::int64_t i = 0; i < scales.numel(); ++i)
    scales.data_as<std::uint8_t>()[i] = static_cast<std::uint8_t>(rng() % 129);
  const Shape bias_shape(blocks_shape.begin(), blocks_shape.end() - 1);
  return Mxfp4Weight::from_parts(blocks, scales, mxfp4::test::random_normal(bias_shape, seed));
}

TEST(GpuLayoutWeight, WithLayoutConvertsEveryBlockAndBackSharingScalesAndBias) {
  const Mxfp4Weight dense = Mxfp4Weight::quantize(mxfp4::test::random_normal({7, 96}, 1),
                                                  mxfp4::test::random_normal({7}, 2));
  const Mxfp4Weight stacked = random_codes({3, 5, 64}, 3);
  for (const Mxfp4Weight* w : {&dense, &stacked}) {
    SCOPED_TRACE(w->stacked() ? "stacked" : "dense");
    ASSERT_EQ(w->layout(), BlockLayout::standard);
    const Mxfp4Weight g = w->with_layout(BlockLayout::gpu);
    EXPECT_EQ(g.layout(), BlockLayout::gpu);
    EXPECT_EQ(w->layout(), BlockLayout::standard);  // the source is not changed
    EXPECT_EQ(g.stacked(), w->stacked());
    EXPECT_EQ(g.num_experts(), w->num_experts());
    EXPECT_EQ(g.out_features(), w->out_features());
    EXPECT_EQ(g.in_features(), w->in_features());
    EXPECT_EQ(g.blocks().shape(), w->blocks().shape());
    EXPECT_NE(g.blocks().data(), w->blocks().data());
    EXPECT_EQ(g.scales().data(), w->scales().data());
    ASSERT_TRUE(g.bias().has_value());
    EXPECT_EQ(g.bias()->data(), w->bias()->data());
    // Block by block: the four words of gpu_block_from_standard, little-endian.
    EXPECT_FALSE(same_bytes(g.blocks(), w->blocks()));
    const std::int64_t count = w->blocks().numel() / 16;
    for (std::int64_t b = 0; b < count; ++b) {
      std::uint32_t words[4];
      gpu_block_from_standard(bytes(w->blocks()) + 16 * b, words);
      for (int i = 0; i < 16; ++i) {
        ASSERT_EQ(bytes(g.blocks())[16 * b + i],
                  static_cast<std::uint8_t>(words[i / 4] >> (8 * (i % 4))))
            << "block " << b << " byte " << i;
      }
    }
    const Mxfp4Weight back = g.with_layout(BlockLayout::standard);
    EXPECT_EQ(back.layout(), BlockLayout::standard);
    EXPECT_TRUE(same_bytes(back.blocks(), w->blocks()));
    EXPECT_NE(back.blocks().data(), g.blocks().data());
    EXPECT_EQ(back.scales().data(), w->scales().data());
    // The same layout gives the weight itself.
    EXPECT_EQ(w->with_layout(BlockLayout::standard).blocks().data(), w->blocks().data());
    EXPECT_EQ(g.with_layout(BlockLayout::gpu).blocks().data(), g.blocks().data());
    // to() copies every part and keeps the layout.
    const Mxfp4Weight c = g.to(mxfp4::Device::cpu());
    EXPECT_EQ(c.layout(), BlockLayout::gpu);
    EXPECT_NE(c.blocks().data(), g.blocks().data());
    EXPECT_TRUE(same_bytes(c.blocks(), g.blocks()));
    EXPECT_TRUE(same_bytes(c.scales(), g.scales()));
    // from_parts takes the layout it is told, sharing the parts.
    const Mxfp4Weight p =
        Mxfp4Weight::from_parts(g.blocks(), g.scales(), g.bias(), BlockLayout::gpu);
    EXPECT_EQ(p.layout(), BlockLayout::gpu);
    EXPECT_EQ(p.blocks().data(), g.blocks().data());
    EXPECT_EQ(Mxfp4Weight::from_parts(g.blocks(), g.scales()).layout(), BlockLayout::standard);
    EXPECT_TRUE(same_bytes(p.with_layout(BlockLayout::standard).blocks(), w->blocks()));
  }
}

TEST(GpuLayoutWeight, DequantizeOnTheCpuGivesTheStandardValuesBitForBit) {
  for (const Shape& shape : {Shape{9, 48}, Shape{4, 6, 32}, Shape{1, 1, 16}}) {
    const Mxfp4Weight w = random_codes(shape, static_cast<std::uint32_t>(shape[0] + 10));
    const Mxfp4Weight g = w.with_layout(BlockLayout::gpu);
    for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
      SCOPED_TRACE(mxfp4::to_string(shape) + " " + std::string(mxfp4::dtype_name(dtype)));
      const Tensor want = w.dequantize(dtype);
      EXPECT_TRUE(same_bytes(g.dequantize(dtype), want));
      Tensor out = Tensor::zeros(want.shape(), dtype);
      mxfp4::dequantize_into(g, out);
      EXPECT_TRUE(same_bytes(out, want));
    }
  }
}

}  // namespace
