// The checks shared by the per-ISA kernel table tests (tests/test_cpu_avx2.cpp,
// tests/test_cpu_neon.cpp; tests/test_cpu_avx512.cpp uses the common helpers): a table called
// directly, against the reference (src/reference): quantize and dequantize bit for bit, matmul
// within a K-scaled tolerance, and the matmul's invariance to how a call's columns and rows are
// split (bit for bit). Each check_* function is the body of one TEST; each test file keeps its own
// skip condition.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/convert.hpp"
#include "core/kernel_args.hpp"
#include "cpu/cpu_kernels.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/weight.hpp"
#include "reference/reference.hpp"
#include "test_numbers.hpp"

namespace cpu_table_checks {

using mxfp4::DType;
using mxfp4::ScaleRule;
using mxfp4::cpu::Kernels;
using mxfp4::cpu::RowBatch;
namespace detail = mxfp4::detail;
namespace reference = mxfp4::reference;

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};
constexpr DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16};

inline std::string name_of(DType d) {
  return std::string(mxfp4::dtype_name(d));
}
inline std::string name_of(ScaleRule r) {
  return mxfp4::scale_rule_name(r);
}

using mxfp4::test::from_bits;

// An f32 array stored in a floating dtype (rounded by the library's conversions).
inline std::vector<std::uint8_t> encode_as(const std::vector<float>& v, DType d) {
  std::vector<std::uint8_t> out(v.size() * mxfp4::dtype_size(d));
  for (std::size_t i = 0; i < v.size(); ++i)
    detail::store_float(out.data(), d, static_cast<std::int64_t>(i), v[i]);
  return out;
}

// ---- weights for quantize: blocks of many kinds
// --------------------------------------------------

inline void fill_block(std::mt19937_64& g, float* b) {
  std::uniform_int_distribution<int> kind_d(0, 9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto sign = [&] { return (g() & 1) ? -1.0f : 1.0f; };
  const int kind = kind_d(g);
  switch (kind) {
    case 0:
    case 1: {  // normal values at a random magnitude, the whole f32 range
      const int e = std::uniform_int_distribution<int>(-145, 124)(g);
      for (int i = 0; i < 32; ++i)
        b[i] = std::ldexp(nd(g), e);
      break;
    }
    case 2:  // zeros of both signs
      for (int i = 0; i < 32; ++i)
        b[i] = sign() * 0.0f;
      break;
    case 3:  // f32 subnormals
      for (int i = 0; i < 32; ++i)
        b[i] = sign() * from_bits(static_cast<std::uint32_t>(g() & 0x7FFFFFu));
      break;
    case 4: {  // multiples of 2^e / 4: element midpoints (ties) under most scales
      const int e = std::uniform_int_distribution<int>(-135, 120)(g);
      for (int i = 0; i < 32; ++i)
        b[i] = sign() * std::ldexp(static_cast<float>(g() % 29), e - 2);
      break;
    }
    case 5: {  // a NaN or an Inf among normal values
      for (int i = 0; i < 32; ++i)
        b[i] = nd(g);
      const float specials[] = {
          std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity(), from_bits(0x7F800001u), from_bits(0xFFC12345u)};
      b[g() % 32] = specials[g() % 5];
      break;
    }
    case 6:  // near the largest finite f32
      for (int i = 0; i < 32; ++i)
        b[i] = sign() * from_bits(0x7F7FFFFFu - static_cast<std::uint32_t>(g() % 0x800000u));
      break;
    case 7: {  // one large element, the others tiny (they round to signed zeros)
      const int e = std::uniform_int_distribution<int>(-100, 120)(g);
      for (int i = 0; i < 32; ++i)
        b[i] = std::ldexp(nd(g), e - 40);
      b[g() % 32] = sign() * std::ldexp(1.0f, e);
      break;
    }
    default: {  // amax at the boundaries of the rules: m * 2^e for m near 1, 1.5, 1.75, 2
      const int e = std::uniform_int_distribution<int>(-130, 125)(g);
      const float ms[] = {1.0f,
                          1.5f,
                          1.75f,
                          2.0f,
                          std::nextafter(1.5f, 2.0f),
                          std::nextafter(1.75f, 1.0f),
                          std::nextafter(2.0f, 1.0f),
                          1.25f};
      for (int i = 0; i < 32; ++i)
        b[i] = sign() * std::ldexp(ms[g() % 8] * static_cast<float>(g() % 7) / 6.0f, e);
      b[g() % 32] = sign() * std::ldexp(ms[g() % 8], e);
      break;
    }
  }
}

inline std::vector<float> random_weight(std::uint64_t seed, std::int64_t rows, std::int64_t k) {
  std::mt19937_64 g(seed);
  std::vector<float> w(static_cast<std::size_t>(rows * k));
  for (std::size_t b = 0; b < w.size(); b += 32)
    fill_block(g, w.data() + b);
  return w;
}

struct Quantized {
  std::vector<std::uint8_t> blocks, scales;
  std::int64_t first = -2;
};

inline Quantized run_quantize(const Kernels* kern, const void* data, DType dt, std::int64_t rows,
                              std::int64_t k, ScaleRule rule, std::int64_t r0, std::int64_t r1) {
  Quantized q;
  q.blocks.assign(static_cast<std::size_t>(rows * k / 2), 0xAB);
  q.scales.assign(static_cast<std::size_t>(rows * k / 32), 0xCD);
  detail::QuantizeArgs a{data, dt, rows, k, q.blocks.data(), q.scales.data(), rule, nullptr};
  if (kern != nullptr) {
    q.first = kern->quantize_rows(a, r0, r1);
  } else {  // the reference on rows [r0, r1)
    const std::size_t es = mxfp4::dtype_size(dt);
    detail::QuantizeArgs s = a;
    s.weight = static_cast<const std::uint8_t*>(data) + static_cast<std::size_t>(r0 * k) * es;
    s.rows = r1 - r0;
    s.blocks = q.blocks.data() + r0 * k / 2;
    s.scales = q.scales.data() + r0 * k / 32;
    const std::int64_t f = reference::quantize(s);
    q.first = f < 0 ? -1 : f + r0 * k;
  }
  return q;
}

inline void check_quantize_matches_reference_bit_for_bit(const Kernels& kern) {
  const std::int64_t rows = 29, k = 32 * 21;
  for (std::uint64_t seed = 1; seed <= 3; ++seed) {
    const std::vector<float> w = random_weight(seed, rows, k);
    for (DType dt : kFloatTypes) {
      const std::vector<std::uint8_t> data = encode_as(w, dt);
      for (ScaleRule rule : kRules) {
        SCOPED_TRACE(std::string(name_of(dt)) + " " + name_of(rule) + " seed " +
                     std::to_string(seed));
        const Quantized ref = run_quantize(nullptr, data.data(), dt, rows, k, rule, 0, rows);
        const Quantized got = run_quantize(&kern, data.data(), dt, rows, k, rule, 0, rows);
        EXPECT_EQ(got.first, ref.first);
        ASSERT_EQ(got.scales, ref.scales);
        ASSERT_EQ(got.blocks, ref.blocks);
        // A row range: only its rows written, the same bytes, its own first non-finite index.
        const std::int64_t r0 = 5, r1 = 17;
        const Quantized rref = run_quantize(nullptr, data.data(), dt, rows, k, rule, r0, r1);
        const Quantized rgot = run_quantize(&kern, data.data(), dt, rows, k, rule, r0, r1);
        EXPECT_EQ(rgot.first, rref.first);
        EXPECT_EQ(rgot.scales, rref.scales);
        EXPECT_EQ(rgot.blocks, rref.blocks);
      }
    }
  }
}

// Every block one kind at a time, every position of a NaN: the first non-finite index.
inline void check_quantize_first_non_finite(const Kernels& kern) {
  const std::int64_t rows = 3, k = 32 * 5;
  for (std::int64_t pos : {std::int64_t{0}, std::int64_t{31}, std::int64_t{33}, std::int64_t{k + 7},
                           std::int64_t{3 * k - 1}}) {
    std::vector<float> w(static_cast<std::size_t>(rows * k), 1.0f);
    w[static_cast<std::size_t>(pos)] = std::numeric_limits<float>::infinity();
    if (pos + 40 < rows * k) w[static_cast<std::size_t>(pos + 40)] = std::nanf("");
    for (DType dt : kFloatTypes) {
      const std::vector<std::uint8_t> data = encode_as(w, dt);
      for (ScaleRule rule : kRules) {
        const Quantized got = run_quantize(&kern, data.data(), dt, rows, k, rule, 0, rows);
        EXPECT_EQ(got.first, pos);
        const Quantized ref = run_quantize(nullptr, data.data(), dt, rows, k, rule, 0, rows);
        EXPECT_EQ(got.blocks, ref.blocks);
        EXPECT_EQ(got.scales, ref.scales);
      }
    }
  }
  std::vector<float> finite(static_cast<std::size_t>(rows * k), -2.5f);
  const Quantized got =
      run_quantize(&kern, finite.data(), DType::f32, rows, k, ScaleRule::mse, 0, rows);
  EXPECT_EQ(got.first, -1);
}

// ---- dequantize
// -----------------------------------------------------------------------------------

inline void expect_dequantize_equal(const Kernels& kern, const std::vector<std::uint8_t>& blocks,
                                    const std::vector<std::uint8_t>& scales, std::int64_t rows,
                                    std::int64_t k) {
  for (DType dt : kFloatTypes) {
    SCOPED_TRACE(name_of(dt));
    const std::size_t bytes = static_cast<std::size_t>(rows * k) * mxfp4::dtype_size(dt);
    std::vector<std::uint8_t> ref(bytes, 0x11), got(bytes, 0x22);
    detail::DequantizeArgs a{blocks.data(), scales.data(), rows, k, ref.data(), dt, nullptr};
    reference::dequantize(a);
    a.out = got.data();
    kern.dequantize_rows(a, 0, rows);
    ASSERT_EQ(got, ref);
    // Rows [2, rows - 1) only.
    std::vector<std::uint8_t> part(bytes, 0x33);
    a.out = part.data();
    kern.dequantize_rows(a, 2, rows - 1);
    const std::size_t row_bytes = bytes / static_cast<std::size_t>(rows);
    for (std::int64_t r = 0; r < rows; ++r) {
      const bool inside = r >= 2 && r < rows - 1;
      for (std::size_t i = 0; i < row_bytes; ++i) {
        const std::size_t at = static_cast<std::size_t>(r) * row_bytes + i;
        ASSERT_EQ(part[at], inside ? ref[at] : 0x33) << "row " << r;
      }
    }
  }
}

inline void check_dequantize_every_code_and_scale(const Kernels& kern) {
  // Row s: scale byte s for every block; the blocks hold every code at every position.
  const std::int64_t rows = 256, k = 64;
  std::vector<std::uint8_t> blocks(static_cast<std::size_t>(rows * k / 2));
  std::vector<std::uint8_t> scales(static_cast<std::size_t>(rows * k / 32));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < k / 2; ++j) {
      const int lo = static_cast<int>((j * 2 + r) % 16),
                hi = static_cast<int>((j * 2 + 1 + r) % 16);
      blocks[static_cast<std::size_t>(r * k / 2 + j)] = static_cast<std::uint8_t>(lo | (hi << 4));
    }
    for (std::int64_t b = 0; b < k / 32; ++b)
      scales[static_cast<std::size_t>(r * k / 32 + b)] = static_cast<std::uint8_t>(r);
  }
  expect_dequantize_equal(kern, blocks, scales, rows, k);
}

inline void check_dequantize_random(const Kernels& kern) {
  std::mt19937_64 g(42);
  const std::int64_t rows = 23, k = 32 * 13;
  std::vector<std::uint8_t> blocks(static_cast<std::size_t>(rows * k / 2));
  std::vector<std::uint8_t> scales(static_cast<std::size_t>(rows * k / 32));
  for (auto& b : blocks)
    b = static_cast<std::uint8_t>(g());
  for (auto& s : scales)
    s = static_cast<std::uint8_t>(g());
  expect_dequantize_equal(kern, blocks, scales, rows, k);
}

// ---- matmul
// ----------------------------------------------------------------------------------------

struct Weight {
  std::int64_t experts, n, k;
  std::vector<std::uint8_t> blocks, scales, bias;
  DType bias_dtype = DType::f32;
  bool has_bias = false;
  detail::WeightArgs args() const {
    return {blocks.data(),
            scales.data(),
            has_bias ? static_cast<const void*>(bias.data()) : nullptr,
            bias_dtype,
            experts,
            n,
            k};
  }
};

// Random codes; scales in [lo, hi] (E8M0 bytes).
inline Weight random_mx_weight(std::mt19937_64& g, std::int64_t experts, std::int64_t n,
                               std::int64_t k, int lo = 120, int hi = 131) {
  Weight w{experts, n, k, {}, {}, {}};
  w.blocks.resize(static_cast<std::size_t>(experts * n * k / 2));
  w.scales.resize(static_cast<std::size_t>(experts * n * k / 32));
  for (auto& b : w.blocks)
    b = static_cast<std::uint8_t>(g());
  std::uniform_int_distribution<int> sd(lo, hi);
  for (auto& s : w.scales)
    s = static_cast<std::uint8_t>(sd(g));
  return w;
}

inline void add_bias(std::mt19937_64& g, Weight& w, DType dt) {
  std::normal_distribution<float> nd(0.0f, 4.0f);
  std::vector<float> b(static_cast<std::size_t>(w.experts * w.n));
  for (auto& v : b)
    v = nd(g);
  w.bias = encode_as(b, dt);
  w.bias_dtype = dt;
  w.has_bias = true;
}

struct Activations {
  DType dtype;
  std::int64_t count, k;
  std::vector<std::uint8_t> data;
  const void* row(std::int64_t i) const {
    return data.data() + static_cast<std::size_t>(i * k) * mxfp4::dtype_size(dtype);
  }
};

inline Activations random_x(std::mt19937_64& g, DType dt, std::int64_t count, std::int64_t k) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(count * k));
  for (auto& v : x)
    v = nd(g);
  return {dt, count, k, encode_as(x, dt)};
}

// Output rows [count][n] in the activation dtype, filled with a sentinel byte.
struct Outputs {
  std::int64_t count, n;
  std::size_t es;
  std::vector<std::uint8_t> data;
  Outputs(std::int64_t c, std::int64_t nn, DType dt)
      : count(c),
        n(nn),
        es(mxfp4::dtype_size(dt)),
        data(static_cast<std::size_t>(c * nn) * es, 0x5A) {}
  void* row(std::int64_t i) { return data.data() + static_cast<std::size_t>(i * n) * es; }
};

// Runs the kernel on rows `row_ids` (a subset of the batch) and columns [n0, n1).
inline void run_matmul(const Kernels& kern, const Activations& x, const Weight& w,
                       std::int64_t expert, const std::vector<std::int64_t>& row_ids,
                       std::int64_t count_hint, std::int64_t n0, std::int64_t n1, Outputs& out) {
  std::vector<const void*> xr;
  std::vector<void*> orow;
  for (std::int64_t i : row_ids) {
    xr.push_back(x.row(i));
    orow.push_back(out.row(i));
  }
  const RowBatch rb{xr.data(), orow.data(), static_cast<std::int64_t>(row_ids.size()), count_hint,
                    x.dtype};
  kern.matmul_rows(rb, w.args(), expert, n0, n1);
}

inline std::vector<std::int64_t> iota_rows(std::int64_t from, std::int64_t to) {
  std::vector<std::int64_t> r;
  for (std::int64_t i = from; i < to; ++i)
    r.push_back(i);
  return r;
}

// The reference for one expert: an f64 product, and sum |x * w| per output for the tolerance.
inline void reference_matmul(const Activations& x, const Weight& w, std::int64_t expert,
                             std::vector<float>& y, std::vector<double>& mag) {
  const std::int64_t n = w.n, k = w.k;
  detail::WeightArgs wa = w.args();
  wa.blocks += expert * n * k / 2;
  wa.scales += expert * n * k / 32;
  if (wa.bias != nullptr) {
    wa.bias = static_cast<const std::uint8_t*>(wa.bias) +
              static_cast<std::size_t>(expert * n) * mxfp4::dtype_size(w.bias_dtype);
  }
  wa.experts = 1;
  std::vector<float> out(static_cast<std::size_t>(x.count * n));
  const detail::LinearArgs la{x.data.data(), x.dtype, x.count, wa, out.data(), nullptr};
  std::vector<std::uint8_t> typed(static_cast<std::size_t>(x.count * n) *
                                  mxfp4::dtype_size(x.dtype));
  detail::LinearArgs lt = la;
  lt.out = typed.data();
  reference::linear(lt);
  y.resize(static_cast<std::size_t>(x.count * n));
  for (std::size_t i = 0; i < y.size(); ++i)
    y[i] = detail::load_float(typed.data(), x.dtype, static_cast<std::int64_t>(i));
  // sum |x * w|, with the weight decoded by the reference.
  std::vector<float> wd(static_cast<std::size_t>(n * k));
  const detail::DequantizeArgs da{wa.blocks, wa.scales, n, k, wd.data(), DType::f32, nullptr};
  reference::dequantize(da);
  mag.assign(static_cast<std::size_t>(x.count * n), 0.0);
  std::vector<double> xf(static_cast<std::size_t>(k));
  for (std::int64_t i = 0; i < x.count; ++i) {
    for (std::int64_t c = 0; c < k; ++c)
      xf[static_cast<std::size_t>(c)] = std::fabs(detail::load_float(x.row(i), x.dtype, c));
    for (std::int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      const float* wr = wd.data() + j * k;
      for (std::int64_t c = 0; c < k; ++c)
        s += xf[static_cast<std::size_t>(c)] * std::fabs(static_cast<double>(wr[c]));
      mag[static_cast<std::size_t>(i * n + j)] = s;
    }
  }
}

inline double output_ulp(DType dt, double v) {
  const double a = std::fabs(v);
  if (dt == DType::bf16) return std::ldexp(a, -7) + 1e-38;
  if (dt == DType::f16) return std::ldexp(a, -10) + std::ldexp(1.0, -24);
  return 0.0;
}

// Checks out (rows [0, count), columns [n0, n1)) against the reference; the sentinel elsewhere.
inline void expect_close(const Activations& x, const Weight& w, std::int64_t expert,
                         const Outputs& out, std::int64_t n0, std::int64_t n1,
                         const std::string& what) {
  std::vector<float> ref;
  std::vector<double> mag;
  reference_matmul(x, w, expert, ref, mag);
  const double kscale = 1e-6 * std::sqrt(static_cast<double>(w.k));
  int failures = 0;
  for (std::int64_t i = 0; i < x.count && failures < 5; ++i) {
    for (std::int64_t j = 0; j < w.n && failures < 5; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * w.n + j);
      if (j < n0 || j >= n1) {
        for (std::size_t b = 0; b < out.es; ++b) {
          if (out.data[at * out.es + b] != 0x5A) {
            ADD_FAILURE() << what << ": column " << j << " outside [n0, n1) was written";
            ++failures;
            break;
          }
        }
        continue;
      }
      const double y = detail::load_float(out.data.data(), x.dtype, static_cast<std::int64_t>(at));
      const double r = ref[at];
      const double bias =
          w.has_bias ? std::fabs(detail::load_float(w.bias.data(), w.bias_dtype, expert * w.n + j))
                     : 0.0;
      const double tol_acc = kscale * (mag[at] + bias) + 1e-30;
      const double tol = tol_acc + output_ulp(x.dtype, std::fabs(r) + tol_acc);
      if (!(std::fabs(y - r) <= tol)) {
        ADD_FAILURE() << what << ": row " << i << " col " << j << ": got " << y << " want " << r
                      << " tol " << tol;
        ++failures;
      }
    }
  }
}

inline void check_matmul_matches_reference(const Kernels& kern) {
  std::mt19937_64 g(7);
  const std::int64_t counts[] = {1, 2, 3, 5, 8, 9, 16, 33, 100, 300};
  const std::int64_t ns[] = {1, 7, 8, 9, 63, 64, 65, 200};
  const std::int64_t ks[] = {32, 64, 96, 160, 2880};
  int variant = 0;
  for (std::int64_t k : ks) {
    for (std::int64_t count : counts) {
      for (std::int64_t n : ns) {
        // K = 2880: a subset of the shapes (the f64 reference is slow).
        if (k == 2880 && (count > 33 || n > 65 || (n % 2 == 0 && count != 1))) continue;
        ++variant;
        const DType dt = kFloatTypes[variant % 3];
        const std::int64_t experts = 1 + variant % 3;
        const std::int64_t expert = experts - 1;
        Weight w = random_mx_weight(g, experts, n, k);
        if (variant % 3 == 1) add_bias(g, w, DType::f32);
        if (variant % 3 == 2) add_bias(g, w, DType::bf16);
        const Activations x = random_x(g, dt, count, k);
        Outputs out(count, n, dt);
        run_matmul(kern, x, w, expert, iota_rows(0, count), count, 0, n, out);
        expect_close(x, w, expert, out, 0, n,
                     "count " + std::to_string(count) + " n " + std::to_string(n) + " k " +
                         std::to_string(k) + " " + name_of(dt) + " expert " +
                         std::to_string(expert) + (w.has_bias ? " bias" : ""));
      }
    }
  }
}

// Large blocks of the GEMM path: K over several cache blocks, N over several column blocks, rows
// over several row blocks; and a sub-range of columns.
inline void check_matmul_large_blocking(const Kernels& kern) {
  std::mt19937_64 g(11);
  struct Case {
    std::int64_t count, n, k, n0, n1;
  };
  const Case cases[] = {{200, 401, 544, 0, 401}, {17, 130, 800, 3, 127}, {9, 50, 288, 11, 12}};
  for (const Case& c : cases) {
    for (DType dt : kFloatTypes) {
      if (c.count > 100 && dt != DType::bf16) continue;  // the f64 reference is slow
      Weight w = random_mx_weight(g, 2, c.n, c.k);
      add_bias(g, w, DType::f16);
      const Activations x = random_x(g, dt, c.count, c.k);
      Outputs out(c.count, c.n, dt);
      run_matmul(kern, x, w, 1, iota_rows(0, c.count), c.count, c.n0, c.n1, out);
      expect_close(x, w, 1, out, c.n0, c.n1,
                   "count " + std::to_string(c.count) + " n " + std::to_string(c.n) + " k " +
                       std::to_string(c.k) + " " + name_of(dt));
    }
  }
}

// Each output element depends only on the inputs, K and count_hint: splitting the columns or the
// rows of a call changes nothing, bit for bit, on both paths.
inline void check_matmul_split_invariance(const Kernels& kern) {
  std::mt19937_64 g(23);
  struct Case {
    std::int64_t count, n, k;
  };
  const Case cases[] = {{1, 67, 96}, {3, 50, 64}, {8, 29, 320}, {9, 61, 288}, {40, 100, 544}};
  for (const Case& c : cases) {
    for (DType dt : kFloatTypes) {
      SCOPED_TRACE("count " + std::to_string(c.count) + " n " + std::to_string(c.n) + " k " +
                   std::to_string(c.k) + " " + name_of(dt));
      Weight w = random_mx_weight(g, 1, c.n, c.k, 100, 150);
      add_bias(g, w, DType::bf16);
      const Activations x = random_x(g, dt, c.count, c.k);
      const std::vector<std::int64_t> all = iota_rows(0, c.count);
      Outputs whole(c.count, c.n, dt);
      run_matmul(kern, x, w, 0, all, c.count, 0, c.n, whole);
      for (std::int64_t a : {std::int64_t{1}, std::int64_t{5}, std::int64_t{6}, std::int64_t{13},
                             c.n / 2, c.n - 1}) {
        Outputs split(c.count, c.n, dt);
        run_matmul(kern, x, w, 0, all, c.count, 0, a, split);
        run_matmul(kern, x, w, 0, all, c.count, a, c.n, split);
        EXPECT_EQ(split.data, whole.data) << "columns split at " << a;
      }
      // Rows in pieces (odd rows, then even rows; then one at a time) with the same count_hint.
      Outputs pieces(c.count, c.n, dt);
      std::vector<std::int64_t> odd, even;
      for (std::int64_t i = 0; i < c.count; ++i)
        (i % 2 ? odd : even).push_back(i);
      if (!odd.empty()) run_matmul(kern, x, w, 0, odd, c.count, 0, c.n, pieces);
      run_matmul(kern, x, w, 0, even, c.count, 0, c.n, pieces);
      EXPECT_EQ(pieces.data, whole.data) << "rows split odd/even";
      Outputs single(c.count, c.n, dt);
      for (std::int64_t i = c.count - 1; i >= 0; --i)
        run_matmul(kern, x, w, 0, {i}, c.count, 7 % c.n, c.n, single);
      run_matmul(kern, x, w, 0, all, c.count, 0, 7 % c.n, single);
      EXPECT_EQ(single.data, whole.data) << "rows one at a time";
    }
  }
}

// Scale bytes at the ends of the range: 0 (2^-127), 254 (large, codes >= 4 overflow to Inf) and
// 0xFF (NaN) propagate as in the reference.
inline void check_matmul_special_scales(const Kernels& kern) {
  std::mt19937_64 g(5);
  for (std::int64_t count : {std::int64_t{1}, std::int64_t{4}, std::int64_t{20}}) {
    const std::int64_t n = 6, k = 64;
    Weight w = random_mx_weight(g, 1, n, k);
    // Row 0: a NaN block. Row 1: scale 254 with a code 7 (Inf). Row 2: scale 0 everywhere.
    w.scales[1] = 0xFF;
    w.scales[2] = 254;
    std::fill_n(w.blocks.begin() + k / 2, 16, std::uint8_t{0});
    w.blocks[static_cast<std::size_t>(k / 2)] = 0x07;
    w.scales[4] = 0;
    w.scales[5] = 0;
    const Activations x = random_x(g, DType::f32, count, k);
    Outputs out(count, n, DType::f32);
    run_matmul(kern, x, w, 0, iota_rows(0, count), count, 0, n, out);
    std::vector<float> ref;
    std::vector<double> mag;
    reference_matmul(x, w, 0, ref, mag);
    for (std::int64_t i = 0; i < count; ++i) {
      const float* y = static_cast<const float*>(static_cast<void*>(out.row(i)));
      EXPECT_TRUE(std::isnan(y[0]));
      EXPECT_TRUE(std::isinf(y[1]));
      EXPECT_EQ(y[1], ref[static_cast<std::size_t>(i * n + 1)]);
      const double r = ref[static_cast<std::size_t>(i * n + 2)];
      EXPECT_NEAR(y[2], r, 1e-6 * mag[static_cast<std::size_t>(i * n + 2)] + 1e-44);
    }
  }
}

// A batch given to the kernel in pieces smaller than count_hint (as a thread pool splits rows):
// the large path with a few rows, and the small path with hint 8.
inline void check_matmul_rows_of_a_larger_call(const Kernels& kern) {
  std::mt19937_64 g(99);
  const std::int64_t n = 37, k = 320;
  for (std::int64_t hint : {std::int64_t{8}, std::int64_t{64}}) {
    for (DType dt : kFloatTypes) {
      Weight w = random_mx_weight(g, 1, n, k);
      const Activations x = random_x(g, dt, 8, k);
      Outputs whole(8, n, dt), pieces(8, n, dt);
      run_matmul(kern, x, w, 0, iota_rows(0, 8), hint, 0, n, whole);
      run_matmul(kern, x, w, 0, iota_rows(0, 3), hint, 0, n, pieces);
      run_matmul(kern, x, w, 0, iota_rows(3, 8), hint, 0, 20, pieces);
      run_matmul(kern, x, w, 0, iota_rows(3, 8), hint, 20, n, pieces);
      EXPECT_EQ(pieces.data, whole.data) << "hint " << hint << " " << name_of(dt);
      expect_close(x, w, 0, whole, 0, n, "hint " + std::to_string(hint));
    }
  }
}

}  // namespace cpu_table_checks
