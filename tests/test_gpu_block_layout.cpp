// The GPU block layout (src/core/gpu_block_layout.hpp) against the standard one: every byte value
// in every position of a block converts there and back unchanged, lands in the word and slot the
// layout names, and decodes (bf16 and f16) to exactly its two codes' values times 2^-126 / 2^-14,
// whatever the block's other bytes hold; the bf16 scale factor takes those to the reference's
// dequantized values for every scale the layout admits.
#include "core/gpu_block_layout.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"

namespace {

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

}  // namespace
