// Rounding activation rows to int8 for RunOptions::precision = int8_activations: the layout of a
// quantized row is cpu_kernels.hpp's. Baseline code shared by every kernel table, so every
// instruction set multiplies the same int8 values.
#pragma once

#include <cstdint>

#include "mxfp4/dtype.hpp"

namespace mxfp4::cpu {

// The factor that makes the doubled E2M1 codes (-12 .. 12) unsigned: vpdpbusd and vpmaddubsw
// multiply an unsigned byte by a signed one.
inline constexpr std::int32_t kInt8WeightOffset = 12;

// x: k elements of dtype (f32, f16, bf16), k a multiple of 32 -> out: int8_row_bytes(k) bytes
// (cpu_kernels.hpp's layout, padding zeroed), 4-byte aligned. Per 32-element block: d = f32(max |x|
// / 127) (computed in f64), q = x * (1 / d) (in f64) rounded to nearest even, clamped to [-127,
// 127]. A block whose d is 0 (all zero, or so tiny that d underflows) gets q = 0 and scale 0; a
// block with a NaN or Inf gets q = 0 and a NaN scale, so every output of the row is NaN.
void quantize_int8_row(const void* x, DType dtype, std::int64_t k, std::int8_t* out);

}  // namespace mxfp4::cpu
