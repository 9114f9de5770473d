// Argument checks and descriptions shared by the core operations (ops.cpp, weight.cpp,
// gptq.cpp): one wording for every message that names a tensor or a scale rule.
#pragma once

#include <string>

#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/tensor.hpp"

namespace mxfp4::detail {

// "name dtype [d0, d1, ...]", as the operations' errors name their arguments.
inline std::string describe(const char* name, const Tensor& t) {
  return std::string(name) + " " + std::string(dtype_name(t.dtype())) + " " + to_string(t.shape());
}

// Throws InvalidArgument unless `rule` is one of the ScaleRule values.
inline void require_known_rule(const char* op, ScaleRule rule) {
  switch (rule) {
    case ScaleRule::floor:
    case ScaleRule::ceil:
    case ScaleRule::even:
    case ScaleRule::mse:
    case ScaleRule::mistralrs:
      return;
  }
  throw InvalidArgument(std::string(op) + ": unknown scale rule " +
                        std::to_string(static_cast<int>(rule)));
}

}  // namespace mxfp4::detail
