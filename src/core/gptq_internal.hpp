// The linear algebra under quantize_gptq, exposed for tests.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "mxfp4/gptq.hpp"

namespace mxfp4::detail {

// H' (row-major K x K): the symmetric part of h with dead columns (h_ii == 0) decoupled (row and
// column zeroed, the diagonal set to the mean of the live diagonal) and damp * mean(live
// diagonal) added to the diagonal. Throws InvalidArgument (prefixed with op) for a negative
// diagonal entry.
std::vector<double> gptq_dampened(const std::vector<double>& h, std::int64_t k, double damp,
                                  const char* op);

// The K x K upper triangular U (row-major, zeros below the diagonal) with U^T U = H'^-1, where H'
// is the symmetric part of h with dead columns (h_ii == 0) decoupled (row and column zeroed, the
// diagonal set to the mean of the live diagonal) and damp * mean(live diagonal) added to the
// diagonal. Row i of U holds how column i's rounding error moves onto the columns after it.
// Throws InvalidArgument (prefixed with op) for a negative diagonal entry or when H' is not
// positive definite.
std::vector<double> gptq_inverse_factor(const std::vector<double>& h, std::int64_t k, double damp,
                                        const char* op);

// The Hessian of expert e of a stack. The reference it returns need only stay valid until the
// next call, so a caller may build each Hessian when it is asked for (a Hessians file's
// [E, K, K] tensor) or lend ones it holds elsewhere (the C API's handles) without copying them.
using HessianOfExpert = std::function<const Hessian&(std::int64_t expert)>;

// quantize_gptq for a stack of experts weight [E, N, K] (the std::vector<Hessian> overload is
// this with hessian_of(e) = hessians[e]): `count` Hessians, which must be E, expert e quantized
// under hessian_of(e), asked for once per expert in order; errors from hessian_of are named by
// expert like the quantization's own.
Mxfp4Weight quantize_gptq_experts(const Tensor& weight, std::int64_t count,
                                  const HessianOfExpert& hessian_of, std::optional<Tensor> bias,
                                  const GptqOptions& options);

}  // namespace mxfp4::detail
