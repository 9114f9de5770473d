// Scalar element access by runtime dtype, for the reference kernels and slow paths.
#pragma once

#include <cstdint>

#include "mxfp4/dtype.hpp"

namespace mxfp4::detail {

// Element i of a floating array (f32, f16 or bf16), as f32 (exact).
inline float load_float(const void* base, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::f16:
      return f16_to_f32(static_cast<const std::uint16_t*>(base)[i]);
    case DType::bf16:
      return bf16_to_f32(static_cast<const std::uint16_t*>(base)[i]);
    default:
      return static_cast<const float*>(base)[i];
  }
}

// Stores v rounded to nearest even in a floating array (f32, f16 or bf16).
inline void store_float(void* base, DType dtype, std::int64_t i, float v) {
  switch (dtype) {
    case DType::f16:
      static_cast<std::uint16_t*>(base)[i] = f32_to_f16(v);
      break;
    case DType::bf16:
      static_cast<std::uint16_t*>(base)[i] = f32_to_bf16(v);
      break;
    default:
      static_cast<float*>(base)[i] = v;
      break;
  }
}

// Element i of an index array (u32, i32 or i64), widened to int64 (u32 never goes negative).
inline std::int64_t load_index(const void* base, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::u32:
      return static_cast<const std::uint32_t*>(base)[i];
    case DType::i32:
      return static_cast<const std::int32_t*>(base)[i];
    default:
      return static_cast<const std::int64_t*>(base)[i];
  }
}

}  // namespace mxfp4::detail
