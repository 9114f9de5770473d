#include "cpu/int8_rows.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/convert.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/format.hpp"

namespace mxfp4::cpu {

void quantize_int8_row(const void* x, DType dtype, std::int64_t k, std::int8_t* out) {
  const std::int64_t section = int8_section_bytes(k);
  std::memset(out, 0, static_cast<std::size_t>(int8_row_bytes(k)));  // the padding
  std::int8_t* even = out;
  std::int8_t* odd = out + section;
  auto* offset_fix = reinterpret_cast<std::int32_t*>(out + 2 * section);
  auto* lane_scale = reinterpret_cast<float*>(out + 3 * section);
  for (std::int64_t b = 0; b < k / kBlockSize; ++b) {
    float v[kBlockSize];
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < kBlockSize; ++j) {
      v[j] = detail::load_float(x, dtype, b * kBlockSize + j);
      if (!std::isfinite(v[j])) finite = false;
      amax = std::max(amax, std::fabs(v[j]));
    }
    float d = 0.0f;
    std::int8_t q[kBlockSize] = {};
    if (!finite) {
      d = std::numeric_limits<float>::quiet_NaN();
    } else {
      d = static_cast<float>(static_cast<double>(amax) / 127.0);
      if (d > 0.0f) {
        // Adding and subtracting 1.5 * 2^52 rounds |r| < 2^51 to an integer, ties to even, in
        // the default rounding mode: no libm call on the hot path (baseline x86-64 has no
        // roundsd), and the same result as nearbyint.
        const double inv = 1.0 / static_cast<double>(d);
        constexpr double kRound = 0x1.8p52;
        for (int j = 0; j < kBlockSize; ++j) {
          const double r = (static_cast<double>(v[j]) * inv + kRound) - kRound;
          q[j] = static_cast<std::int8_t>(std::min(127.0, std::max(-127.0, r)));
        }
      }
    }
    for (int j = 0; j < kBlockSize / 2; ++j) {
      even[b * 16 + j] = q[2 * j];
      odd[b * 16 + j] = q[2 * j + 1];
    }
    for (int l = 0; l < 4; ++l) {
      std::int32_t sum = 0;
      for (int j = 0; j < 8; ++j)
        sum += q[8 * l + j];
      offset_fix[b * 4 + l] = -kInt8WeightOffset * sum;
      lane_scale[b * 4 + l] = d;
    }
  }
}

}  // namespace mxfp4::cpu
