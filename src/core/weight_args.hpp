// The kernels' view of an Mxfp4Weight (dense = one expert). One definition for the operations
// layer and for benchmarks that call kernels directly.
#pragma once

#include <cstdint>

#include "core/kernel_args.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::detail {

inline WeightArgs weight_args(const Mxfp4Weight& w) {
  WeightArgs a{};
  a.blocks = static_cast<const std::uint8_t*>(w.blocks().data());
  a.scales = static_cast<const std::uint8_t*>(w.scales().data());
  a.bias = w.bias() ? w.bias()->data() : nullptr;
  a.bias_dtype = w.bias() ? w.bias()->dtype() : DType::f32;
  a.experts = w.num_experts();
  a.n = w.out_features();
  a.k = w.in_features();
  a.gpu_layout = w.layout() == BlockLayout::gpu;
  return a;
}

}  // namespace mxfp4::detail
