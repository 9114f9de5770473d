// Scalar reference implementations of every operation: simple, obviously correct, never
// deleted. Accumulation is in f64 and weights are decoded exactly, so these are the oracle for
// all optimized kernels (which must match quantize/dequantize bit for bit, and linear within a
// tolerance growing with sqrt(K)).
#pragma once

#include "core/kernel_args.hpp"

namespace mxfp4::reference {

std::int64_t quantize(const detail::QuantizeArgs& args);
void dequantize(const detail::DequantizeArgs& args);
void linear(const detail::LinearArgs& args);
void gather_linear(const detail::GatherLinearArgs& args);

}  // namespace mxfp4::reference
