// The GPU block layout ("layout S" of bench/RESULTS.md, session 15; BlockLayout::gpu in
// mxfp4/weight.hpp): an optional offline re-layout of a weight's packed codes that the CUDA
// kernels decode in fewer instructions (Mxfp4Weight::with_layout converts; the kernels read
// both layouts; tests/test_gpu_block_layout.cpp checks these functions).
//
// A 32-code block keeps its 16 bytes and its place; they are read as four little-endian 32-bit
// words W[0..3] (bytes 4t..4t+3). Word W[t] holds the code pairs t, t+4, t+8 and t+12 (pair p:
// codes 2p and 2p + 1, which the standard layout keeps in byte p, FORMATS.md section 1) in its
// slots 0..3: slot s holds pair t + 4s, the magnitudes (a code's low three bits) of its first and
// second code at bits 3s..3s+2 and 16+3s..16+3s+2, their signs at bits 12+s and 28+s.
//
// Why. An MMA's A fragment gives lane t of each quad the pairs t and t+4 of a 16-element k-step
// (wgmma on Hopper, mma.sync m16n8k16 elsewhere): a block's two k-steps are exactly W[t]'s four
// slots, one 32-bit load. And each slot turns into a bf16 (or f16) pair by two rotations and two
// masks (gpu_slot_bf16): the magnitude lands where a subnormal's exponent and mantissa are, the
// sign on the sign bit, so the pair holds the codes' values times 2^-126 (f16: 2^-14), exactly.
// Multiplying by the scale folds the 2^126 back in: bf16 2^(s - 1) for an E8M0 scale s, which bf16
// holds for s <= 128 (gpu_scale_bf16). Every slot decodes the same way (with a variable s too), so
// a lane that needs slot t of each of a block's four words (elements 8t..8t+7, to match 16
// contiguous bytes of x) reads them without a transpose. Against the standard layout's byte
// gathering and table decode (~54 instructions per block and m64 sub-tile in the Hopper GEMM),
// the kernels run up to 1.2x faster with it (bench/RESULTS.md, session 16).
#pragma once

#include <cstdint>

#include "mxfp4/format.hpp"

namespace mxfp4::detail {

inline constexpr int kGpuBlockWords = 4;

// w rotated left by r bits (any r, taken mod 32): a single funnel shift on the GPU, where the
// kernels use the functions below as they are.
MXFP4_HD inline std::uint32_t rotate_left(std::uint32_t w, int r) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_l(w, w, static_cast<unsigned>(r));
#else
  r &= 31;
  return r == 0 ? w : (w << r) | (w >> (32 - r));
#endif
}

// Slot s's bits for a standard byte (first code in the low nibble).
MXFP4_HD inline std::uint32_t gpu_slot_bits(std::uint8_t pair, int s) {
  const std::uint32_t lo = pair & 0x0Fu;
  const std::uint32_t hi = pair >> 4;
  return (lo & 7u) << (3 * s) | (hi & 7u) << (16 + 3 * s) | (lo >> 3) << (12 + s) |
         (hi >> 3) << (28 + s);
}

// The standard byte of slot s of word w.
MXFP4_HD inline std::uint8_t gpu_slot_byte(std::uint32_t w, int s) {
  const std::uint32_t lo = (w >> (3 * s) & 7u) | (w >> (12 + s) & 1u) << 3;
  const std::uint32_t hi = (w >> (16 + 3 * s) & 7u) | (w >> (28 + s) & 1u) << 3;
  return static_cast<std::uint8_t>(lo | hi << 4);
}

// A block's 16 standard bytes -> its four words.
MXFP4_HD inline void gpu_block_from_standard(const std::uint8_t* in, std::uint32_t* words) {
  for (int t = 0; t < kGpuBlockWords; ++t) {
    std::uint32_t w = 0;
    for (int s = 0; s < 4; ++s)
      w |= gpu_slot_bits(in[t + 4 * s], s);
    words[t] = w;
  }
}

// The inverse: four words -> the block's 16 standard bytes.
MXFP4_HD inline void standard_block_from_gpu(const std::uint32_t* words, std::uint8_t* out) {
  for (int t = 0; t < kGpuBlockWords; ++t) {
    for (int s = 0; s < 4; ++s)
      out[t + 4 * s] = gpu_slot_byte(words[t], s);
  }
}

// The same on a block's bytes in memory (a word's bytes little-endian, so the bytes are the same
// on every host): 16 standard bytes -> 16 GPU-layout bytes, and back. `in` and `out` may be the
// same.
MXFP4_HD inline void gpu_bytes_from_standard(const std::uint8_t* in, std::uint8_t* out) {
  std::uint32_t words[kGpuBlockWords];
  gpu_block_from_standard(in, words);
  for (int t = 0; t < kGpuBlockWords; ++t) {
    for (int j = 0; j < 4; ++j)
      out[4 * t + j] = static_cast<std::uint8_t>(words[t] >> (8 * j));
  }
}
MXFP4_HD inline void standard_bytes_from_gpu(const std::uint8_t* in, std::uint8_t* out) {
  std::uint32_t words[kGpuBlockWords];
  for (int t = 0; t < kGpuBlockWords; ++t) {
    words[t] = 0;
    for (int j = 0; j < 4; ++j)
      words[t] |= static_cast<std::uint32_t>(in[4 * t + j]) << (8 * j);
  }
  standard_block_from_gpu(words, out);
}

// Slot s of word w as a bf16 pair (first code in the low half): each code's value times 2^-126,
// exactly (codes 1 and 9, +-0.5, are bf16 subnormals; code 8 is -0).
MXFP4_HD inline std::uint32_t gpu_slot_bf16(std::uint32_t w, int s) {
  return (rotate_left(w, 6 - 3 * s) & 0x01C001C0u) | (rotate_left(w, 3 - s) & 0x80008000u);
}

// The same as an f16 pair: each value times 2^-14 (magnitudes at bits 9-11 of each half).
MXFP4_HD inline std::uint32_t gpu_slot_f16(std::uint32_t w, int s) {
  return (rotate_left(w, 9 - 3 * s) & 0x0E000E00u) | (rotate_left(w, 3 - s) & 0x80008000u);
}

// The bf16 factor, in both halves, that takes gpu_slot_bf16's values to value * 2^(s - 127) for
// an E8M0 scale byte s: 2^(s - 1), a normal bf16 for s <= 128 (the layout is for weights whose
// scales all are; a product below bf16's normal range is a subnormal, exact as in f32).
MXFP4_HD inline std::uint32_t gpu_scale_bf16(std::uint32_t s) {
  const std::uint32_t bits = (s + 126u) << 7;
  return bits | bits << 16;
}

inline constexpr std::uint32_t kGpuLayoutMaxScale = 128;

// f16 x on the decode kernel's pre-scaled loop (sm80_linear.cu): a block whose scaled values are
// all normal f16 (or zero) is decoded to f16 and multiplied by its scale before the MMA. That
// holds for E8M0 scales s in [114, 140] (2^-13 .. 2^13: the smallest nonzero value 0.5 * 2^-13
// is f16's smallest normal, the largest 6 * 2^13 < 65504), and in the GPU layout, whose f16 slots
// are the values times 2^-14 (gpu_slot_f16), for s <= 128, where the factor 2^(s - 113) is still
// an f16. (tests/test_gpu_block_layout.cpp derives the range from these conditions.)
MXFP4_HD inline bool f16_prescale_ok(std::uint32_t s, bool gpu) {
  return s - 114u <= (gpu ? 128u - 114u : 140u - 114u);
}

// The f16 factor, in both halves, for a scale f16_prescale_ok accepts: 2^(s - 127) (exponent
// field s - 112) for the codes' values, 2^(s - 113) (field s - 98) for gpu_slot_f16's.
MXFP4_HD inline std::uint32_t f16_scale_pair(std::uint32_t s, bool gpu) {
  const std::uint32_t bits = (s - (gpu ? 98u : 112u)) << 10;
  return bits | bits << 16;
}

}  // namespace mxfp4::detail
