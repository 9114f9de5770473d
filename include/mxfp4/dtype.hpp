// Element types of tensors, and the f16 / bf16 <-> f32 conversions every backend shares.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mxfp4/format.hpp"

namespace mxfp4 {

// The numeric values are part of the C API: append, never renumber.
enum class DType : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, u8 = 3, u32 = 4, i32 = 5, i64 = 6 };

std::size_t dtype_size(DType dtype) noexcept;
// "f32", "f16", "bf16", "u8", "u32", "i32", "i64".
std::string_view dtype_name(DType dtype) noexcept;
// Parses the names above; throws InvalidArgument naming the accepted ones.
DType parse_dtype(std::string_view name);
inline bool is_floating(DType d) {
  return d == DType::f32 || d == DType::f16 || d == DType::bf16;
}
inline bool is_index(DType d) {
  return d == DType::u32 || d == DType::i32 || d == DType::i64;
}

// 16-bit float storage types. Plain bit containers: arithmetic goes through f32.
struct bf16_t {
  std::uint16_t bits;
};
struct f16_t {
  std::uint16_t bits;
};
static_assert(sizeof(bf16_t) == 2 && sizeof(f16_t) == 2);

MXFP4_HD inline float bf16_to_f32(std::uint16_t h) {
  return bits_to_float(static_cast<std::uint32_t>(h) << 16);
}

// Round to nearest, ties to even; NaN stays NaN (quiet), overflow goes to +/-Inf.
MXFP4_HD inline std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  const std::uint32_t rounding = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

MXFP4_HD inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (man << 13));  // Inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in f32.
  const float v = static_cast<float>(man) * bits_to_float(0x33800000u);  // 2^-24
  return (sign != 0u) ? -v : v;
}

// Round to nearest, ties to even, with f16 subnormals; overflow goes to +/-Inf; NaN stays NaN.
MXFP4_HD inline std::uint16_t f32_to_f16(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: Inf
  if (a >= 0x38800000u) {                                                   // normal f16
    const std::uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): +/-0
  // Subnormal f16: value = m * 2^-24 with m = a's significand shifted; round to nearest even.
  const std::uint32_t exp = a >> 23;
  const std::uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126u - exp;  // in [14, 24]
  std::uint32_t m = sig >> shift;
  const std::uint32_t rem = sig & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (m & 1u))) ++m;
  return static_cast<std::uint16_t>(sign | m);
}

// Element type <-> DType, for typed access to tensor data.
template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct dtype_of<f16_t> {
  static constexpr DType value = DType::f16;
};
template <>
struct dtype_of<bf16_t> {
  static constexpr DType value = DType::bf16;
};
template <>
struct dtype_of<std::uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct dtype_of<std::uint32_t> {
  static constexpr DType value = DType::u32;
};
template <>
struct dtype_of<std::int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct dtype_of<std::int64_t> {
  static constexpr DType value = DType::i64;
};

}  // namespace mxfp4
