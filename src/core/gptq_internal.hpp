// The linear algebra under quantize_gptq, exposed for tests.
#pragma once

#include <cstdint>
#include <vector>

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

}  // namespace mxfp4::detail
