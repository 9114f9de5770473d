// The AVX-512 kernel table (src/cpu/kernels_avx512.cpp), called directly, against the reference
// (src/reference): quantize and dequantize bit for bit, matmul_rows within a K-scaled tolerance
// on both of its paths (count_hint <= 8: the streaming kernel; above: the blocked GEMM), and the
// kernel contract: an output element never depends on the column range or the subset of rows a
// call gets. The scale rules, the names and from_bits are tests/cpu_table_checks.hpp's. Skipped on
// a CPU without the instruction sets the table is compiled for.
#include <gtest/gtest.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.hpp"
#include "cpu_table_checks.hpp"
#include "mxfp4/dtype.hpp"
#include "mxfp4/format.hpp"
#include "reference/reference.hpp"

namespace {

using cpu_table_checks::from_bits;
using cpu_table_checks::kRules;
using cpu_table_checks::name_of;
using mxfp4::DType;
using mxfp4::ScaleRule;
using mxfp4::cpu::Kernels;
using mxfp4::cpu::RowBatch;
using mxfp4::test::to_bits;
using std::int64_t;
using std::uint16_t;
using std::uint32_t;
using std::uint8_t;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

#if defined(__x86_64__) || defined(_M_X64)
// F16C (CPUID 1, ECX bit 29) and BMI2 (CPUID 7, EBX bit 8), read directly: clang 14's
// __builtin_cpu_supports knows neither name.
bool cpu_has_f16c_bmi2() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0 || (c & (1u << 29)) == 0) return false;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) != 0 && (b & (1u << 8)) != 0;
}
#endif

[[maybe_unused]] bool cpu_has_avx512_set() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma") && cpu_has_f16c_bmi2();
#else
  return false;
#endif
}

#if defined(__x86_64__) || defined(_M_X64)
const Kernels* kernels() {
  return cpu_has_avx512_set() ? &mxfp4::cpu::avx512_kernels() : nullptr;
}
#else
const Kernels* kernels() {
  return nullptr;
}
#endif

#define REQUIRE_AVX512()                                             \
  const Kernels* kk = kernels();                                     \
  if (kk == nullptr) {                                               \
    GTEST_SKIP() << "CPU lacks the avx512 table's instruction sets"; \
  }                                                                  \
  static_assert(true)

constexpr DType kFloatTypes[] = {DType::f32, DType::bf16, DType::f16};

std::size_t elem_size(DType d) {
  return d == DType::f32 ? 4 : 2;
}

// A floating array of any of the three types, stored as bytes.
struct Floats {
  DType dtype = DType::f32;
  std::vector<uint8_t> bytes;
  Floats(DType d, std::size_t n) : dtype(d), bytes(n * elem_size(d)) {}
  void set(std::size_t i, float v) {
    if (dtype == DType::f32) {
      std::memcpy(bytes.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = dtype == DType::bf16 ? mxfp4::f32_to_bf16(v) : mxfp4::f32_to_f16(v);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  void set_bits16(std::size_t i, uint16_t h) { std::memcpy(bytes.data() + 2 * i, &h, 2); }
  float get(std::size_t i) const {
    if (dtype == DType::f32) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      return v;
    }
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    return dtype == DType::bf16 ? mxfp4::bf16_to_f32(h) : mxfp4::f16_to_f32(h);
  }
  uint32_t raw(std::size_t i) const {
    uint32_t u = 0;
    std::memcpy(&u, bytes.data() + elem_size(dtype) * i, elem_size(dtype));
    return u;
  }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  const uint8_t* at(std::size_t i) const { return bytes.data() + elem_size(dtype) * i; }
  uint8_t* at(std::size_t i) { return bytes.data() + elem_size(dtype) * i; }
};

// ---- weights to quantize: blocks of many kinds ------------------------------------------------

constexpr float kGrid[] = {0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f,
                           2.0f, 2.5f,  3.0f, 3.5f,  4.0f, 5.0f,  6.0f, 7.0f};

void fill_block(std::mt19937_64& g, Floats& w, std::size_t base) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int kind = static_cast<int>(g() % 10);
  const int e = static_cast<int>(g() % 280) - 150;  // 2^-150 .. 2^129
  float v[mxfp4::kBlockSize];
  for (int i = 0; i < mxfp4::kBlockSize; ++i) {
    switch (kind) {
      case 0:  // uniform at one scale, any exponent (subnormal to overflowing)
      case 1:
        v[i] = std::ldexp(u(g), e);
        break;
      case 2:  // zeros of both signs
        v[i] = (g() & 1) ? -0.0f : 0.0f;
        break;
      case 3:  // grid points and midpoints at one scale: ties under every rule
        v[i] = std::ldexp((g() & 1 ? -1.0f : 1.0f) * kGrid[g() % 16], std::clamp(e, -140, 120));
        break;
      case 4:  // subnormals only
        v[i] = from_bits(static_cast<uint32_t>(g() % 0x00800000u) | (g() & 1 ? 0x80000000u : 0u));
        break;
      case 5:  // near the top of the range
        v[i] = std::ldexp(u(g), 128);
        break;
      case 6:  // a single non-zero element
        v[i] = i == static_cast<int>(g() % 32) ? std::ldexp(u(g), std::clamp(e, -149, 127)) : 0.0f;
        break;
      case 7:  // any bit pattern (NaN and Inf included)
        v[i] = from_bits(static_cast<uint32_t>(g()));
        break;
      case 8:  // wide dynamic range inside one block
        v[i] = std::ldexp(u(g), std::clamp(e + static_cast<int>(g() % 40) - 20, -149, 127));
        break;
      default:  // normal values with one NaN or Inf
        v[i] = std::ldexp(u(g), std::clamp(e, -100, 100));
        break;
    }
  }
  if (kind == 9) {
    const uint32_t specials[] = {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u};
    v[g() % 32] = from_bits(specials[g() % 5]);
  }
  for (int i = 0; i < mxfp4::kBlockSize; ++i)
    w.set(base + i, v[i]);
  if (w.dtype != DType::f32 && kind == 7) {  // all 16-bit patterns of the narrow types too
    for (int i = 0; i < mxfp4::kBlockSize; ++i)
      w.set_bits16(base + i, static_cast<uint16_t>(g()));
  }
}

Floats random_weights(DType dtype, int64_t rows, int64_t k, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  Floats w(dtype, static_cast<std::size_t>(rows * k));
  for (int64_t b = 0; b < rows * k / mxfp4::kBlockSize; ++b)
    fill_block(g, w, static_cast<std::size_t>(b * mxfp4::kBlockSize));
  return w;
}

// ---- quantize -------------------------------------------------------------------------------

void check_quantize(const Kernels& kk, DType dtype, ScaleRule rule, int64_t rows, int64_t k,
                    std::uint64_t seed) {
  SCOPED_TRACE(std::string(name_of(dtype)) + " " + name_of(rule) + " rows=" + std::to_string(rows) +
               " k=" + std::to_string(k) + " seed=" + std::to_string(seed));
  const Floats w = random_weights(dtype, rows, k, seed);
  const auto nbytes = static_cast<std::size_t>(rows * k / 2);
  const auto nscales = static_cast<std::size_t>(rows * k / 32);
  std::vector<uint8_t> ref_blocks(nbytes), ref_scales(nscales);
  // Row ranges as a thread pool would cut them, and the whole.
  const int64_t cuts[] = {0, rows / 3, rows / 3 + 1, rows};
  for (int c = 0; c + 1 < 4; ++c) {
    const int64_t r0 = cuts[c], r1 = std::max(cuts[c], cuts[c + 1]);
    if (r1 <= r0) continue;
    mxfp4::detail::QuantizeArgs ra{
        w.at(static_cast<std::size_t>(r0 * k)), dtype, r1 - r0, k, ref_blocks.data() + r0 * k / 2,
        ref_scales.data() + r0 * k / 32,        rule,  nullptr};
    int64_t want = mxfp4::reference::quantize(ra);
    if (want >= 0) want += r0 * k;
    std::vector<uint8_t> blocks(nbytes, 0xAB), scales(nscales, 0xCD);
    mxfp4::detail::QuantizeArgs a{w.data(),      dtype,         rows, k,
                                  blocks.data(), scales.data(), rule, nullptr};
    const int64_t got = kk.quantize_rows(a, r0, r1);
    EXPECT_EQ(got, want) << "first non-finite, rows " << r0 << ".." << r1;
    for (std::size_t i = 0; i < nscales; ++i) {
      const bool inside =
          static_cast<int64_t>(i) >= r0 * k / 32 && static_cast<int64_t>(i) < r1 * k / 32;
      if (!inside) {
        ASSERT_EQ(scales[i], 0xCD) << "scale written outside the rows, index " << i;
        continue;
      }
      if (scales[i] != ref_scales[i]) {
        std::string vals;
        for (int j = 0; j < 32; ++j)
          vals += std::to_string(w.get(i * 32 + j)) + " ";
        ADD_FAILURE() << "scale of block " << i << ": got " << int(scales[i]) << " want "
                      << int(ref_scales[i]) << " values " << vals;
        return;
      }
    }
    for (std::size_t i = 0; i < nbytes; ++i) {
      const bool inside =
          static_cast<int64_t>(i) >= r0 * k / 2 && static_cast<int64_t>(i) < r1 * k / 2;
      if (!inside) {
        ASSERT_EQ(blocks[i], 0xAB) << "block byte written outside the rows, index " << i;
        continue;
      }
      if (blocks[i] != ref_blocks[i]) {
        const std::size_t blk = i / 16;
        ADD_FAILURE() << "packed byte " << i << " (block " << blk << ", scale "
                      << int(ref_scales[blk]) << "): got " << int(blocks[i]) << " want "
                      << int(ref_blocks[i]) << "; elements " << w.get(2 * i) << ", "
                      << w.get(2 * i + 1);
        return;
      }
    }
  }
}

TEST(CpuAvx512, QuantizeMatchesReferenceBitForBit) {
  REQUIRE_AVX512();
  // Block counts that are and are not multiples of the 16 blocks processed together.
  const int64_t shapes[][2] = {{1, 32}, {3, 96}, {7, 160}, {16, 32}, {5, 512}, {33, 2880}};
  std::uint64_t seed = 1;
  for (const DType dtype : kFloatTypes) {
    for (const ScaleRule rule : kRules) {
      for (const auto& s : shapes)
        check_quantize(*kk, dtype, rule, s[0], s[1], seed++);
    }
  }
}

// Every mse decision near its tie: blocks whose largest element sits at the edges of the ceil
// rule's range, with the rest on both candidates' grids.
TEST(CpuAvx512, QuantizeMseNearTies) {
  REQUIRE_AVX512();
  std::mt19937_64 g(99);
  const int64_t rows = 64, k = 256;
  for (int round = 0; round < 4; ++round) {
    Floats w(DType::f32, rows * k);
    for (int64_t b = 0; b < rows * k / 32; ++b) {
      const int e = static_cast<int>(g() % 250) - 125;
      for (int i = 0; i < 32; ++i) {
        const float m = kGrid[g() % 16] * (g() & 1 ? -1.0f : 1.0f);
        float v = std::ldexp(m, e);
        if (g() % 4 == 0) v = std::nextafter(v, (g() & 1) ? 0.0f : 1e30f);
        w.set(static_cast<std::size_t>(b * 32 + i), v);
      }
    }
    std::vector<uint8_t> rb(rows * k / 2), rs(rows * k / 32), gb(rb.size()), gs(rs.size());
    mxfp4::detail::QuantizeArgs ra{w.data(),  DType::f32, rows,           k,
                                   rb.data(), rs.data(),  ScaleRule::mse, nullptr};
    mxfp4::detail::QuantizeArgs ga = ra;
    ga.blocks = gb.data();
    ga.scales = gs.data();
    EXPECT_EQ(kk->quantize_rows(ga, 0, rows), mxfp4::reference::quantize(ra));
    EXPECT_EQ(gs, rs);
    EXPECT_EQ(gb, rb);
  }
}

// ---- dequantize -----------------------------------------------------------------------------

TEST(CpuAvx512, DequantizeMatchesReferenceBitForBit) {
  REQUIRE_AVX512();
  std::mt19937_64 g(7);
  const int64_t shapes[][2] = {{1, 32}, {3, 96}, {9, 2880}, {4, 4096}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], k = s[1];
    std::vector<uint8_t> blocks(rows * k / 2), scales(rows * k / 32);
    for (auto& b : blocks)
      b = static_cast<uint8_t>(g());
    for (std::size_t i = 0; i < scales.size(); ++i) {
      // every byte, and the edges often: 0 (2^-127), 1, 253, 254 (overflow), 255 (NaN)
      const uint8_t edges[] = {0, 1, 127, 253, 254, 255};
      scales[i] = g() % 3 == 0 ? edges[g() % 6] : static_cast<uint8_t>(g());
    }
    for (const DType dtype : kFloatTypes) {
      SCOPED_TRACE(std::string(name_of(dtype)) + " rows=" + std::to_string(rows) +
                   " k=" + std::to_string(k));
      Floats want(dtype, rows * k), got(dtype, rows * k);
      mxfp4::detail::DequantizeArgs ra{blocks.data(), scales.data(), rows,   k,
                                       want.data(),   dtype,         nullptr};
      mxfp4::reference::dequantize(ra);
      std::fill(got.bytes.begin(), got.bytes.end(), uint8_t{0x5A});
      mxfp4::detail::DequantizeArgs a{blocks.data(), scales.data(), rows,   k,
                                      got.data(),    dtype,         nullptr};
      const int64_t mid = rows / 2;
      kk->dequantize_rows(a, mid, rows);
      for (int64_t i = 0; i < mid * k; ++i)
        ASSERT_EQ(got.raw(i), uint32_t{elem_size(dtype) == 4 ? 0x5A5A5A5Au : 0x5A5Au}) << i;
      kk->dequantize_rows(a, 0, mid);
      for (int64_t i = 0; i < rows * k; ++i)
        ASSERT_EQ(got.raw(i), want.raw(i)) << "element " << i << " scale " << int(scales[i / 32]);
    }
  }
}

// ---- matmul_rows ----------------------------------------------------------------------------

struct Problem {
  int64_t experts, n, k;
  std::vector<uint8_t> blocks, scales;
  Floats bias;
  bool has_bias;
  std::vector<float> wf;  // decoded weights [experts, n, k] (the reference's dequantize)

  Problem(int64_t e, int64_t n_, int64_t k_, DType bias_dtype, bool with_bias, std::uint64_t seed)
      : experts(e),
        n(n_),
        k(k_),
        bias(bias_dtype, static_cast<std::size_t>(e * n_)),
        has_bias(with_bias) {
    std::mt19937_64 g(seed);
    blocks.resize(static_cast<std::size_t>(e * n * k / 2));
    scales.resize(static_cast<std::size_t>(e * n * k / 32));
    for (auto& b : blocks)
      b = static_cast<uint8_t>(g());
    for (auto& s : scales)
      s = static_cast<uint8_t>(118 + g() % 14);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    for (int64_t i = 0; i < e * n; ++i)
      bias.set(static_cast<std::size_t>(i), u(g));
    wf.resize(static_cast<std::size_t>(e * n * k));
    mxfp4::detail::DequantizeArgs da{blocks.data(), scales.data(), e * n,  k,
                                     wf.data(),     DType::f32,    nullptr};
    mxfp4::reference::dequantize(da);
  }
  mxfp4::detail::WeightArgs args() const {
    return {
        blocks.data(), scales.data(), has_bias ? bias.data() : nullptr, bias.dtype, experts, n, k};
  }
  // The reference's view of one expert (a dense weight).
  mxfp4::detail::WeightArgs expert_args(int64_t e) const {
    return {blocks.data() + e * n * k / 2,
            scales.data() + e * n * k / 32,
            has_bias ? bias.at(static_cast<std::size_t>(e * n)) : nullptr,
            bias.dtype,
            1,
            n,
            k};
  }
};

Floats random_x(DType dtype, int64_t m, int64_t k, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Floats x(dtype, static_cast<std::size_t>(m * k));
  for (int64_t i = 0; i < m * k; ++i) {
    // mostly O(1), some much larger or smaller
    const int r = static_cast<int>(g() % 16);
    const float scale = r == 0 ? 64.0f : r == 1 ? 1.0f / 64 : 1.0f;
    x.set(static_cast<std::size_t>(i), u(g) * scale);
  }
  return x;
}

// out[i] = kernel(rows [i0, i1) of x) over columns [n0, n1), count_hint given.
void run_kernel(const Kernels& kk, const Problem& p, int64_t expert, const Floats& x, Floats& out,
                int64_t i0, int64_t i1, int64_t count_hint, int64_t n0, int64_t n1) {
  std::vector<const void*> xr;
  std::vector<void*> orow;
  for (int64_t i = i0; i < i1; ++i) {
    xr.push_back(x.at(static_cast<std::size_t>(i * p.k)));
    orow.push_back(out.at(static_cast<std::size_t>(i * p.n)));
  }
  const RowBatch batch{xr.data(), orow.data(), i1 - i0, count_hint, x.dtype};
  kk.matmul_rows(batch, p.args(), expert, n0, n1);
}

double unit_roundoff(DType d) {
  return d == DType::f32 ? 0x1p-24 : d == DType::bf16 ? 0x1p-8 : 0x1p-11;
}

// Compares kernel output with the reference's linear on one expert.
void check_matmul(const Kernels& kk, int64_t m, int64_t n, int64_t k, DType xdt, DType bias_dtype,
                  bool with_bias, int64_t experts, std::uint64_t seed) {
  SCOPED_TRACE("m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
               " x=" + name_of(xdt) + " bias=" + (with_bias ? name_of(bias_dtype) : "none") +
               " experts=" + std::to_string(experts));
  const Problem p(experts, n, k, bias_dtype, with_bias, seed);
  const int64_t expert = experts - 1;
  const Floats x = random_x(xdt, m, k, seed + 1);
  Floats want(xdt, static_cast<std::size_t>(m * n)), got(xdt, static_cast<std::size_t>(m * n));
  mxfp4::detail::LinearArgs la{x.data(), xdt, m, p.expert_args(expert), want.data(), nullptr};
  mxfp4::reference::linear(la);
  run_kernel(kk, p, expert, x, got, 0, m, m, 0, n);
  const double u = unit_roundoff(xdt);
  int failures = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < n; ++c) {
      double mag = 0.0;
      const float* wrow = p.wf.data() + (expert * n + c) * k;
      for (int64_t j = 0; j < k; ++j)
        mag += std::fabs(static_cast<double>(x.get(i * k + j)) * wrow[j]);
      const double b = with_bias ? std::fabs(static_cast<double>(p.bias.get(expert * n + c))) : 0.0;
      const double r = want.get(i * n + c), y = got.get(i * n + c);
      const double tol = 1e-6 * std::sqrt(static_cast<double>(k)) * (mag + b) +
                         2.0 * u * std::fabs(r) + (xdt == DType::f16 ? 0x1p-24 : 0.0) + 1e-30;
      if (!(std::fabs(y - r) <= tol) && ++failures <= 5) {
        ADD_FAILURE() << "row " << i << " col " << c << ": got " << y << " want " << r << " tol "
                      << tol;
      }
    }
  }
}

TEST(CpuAvx512, MatmulMatchesReference) {
  REQUIRE_AVX512();
  const int64_t counts[] = {1, 2, 3, 5, 8, 9, 16, 33, 100, 300};
  const int64_t ns[] = {1, 7, 16, 17, 63, 64, 65, 200};
  const int64_t ks[] = {32, 64, 96, 160, 2880};
  std::uint64_t seed = 1000;
  int combo = 0;
  for (const int64_t k : ks) {
    for (const int64_t m : counts) {
      for (const int64_t n : ns) {
        const double macs =
            static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
        // The biggest products only for some shapes (and fewer under the sanitizers).
        if (macs > (kSanitized ? 2e6 : 2e7) && (n != 65 || m > 100 || kSanitized)) continue;
        const DType xdt = kFloatTypes[combo % 3];
        const int bias_kind = (combo / 3) % 3;  // none, f32, bf16
        const int64_t experts = 1 + (combo / 9) % 3;
        ++combo;
        check_matmul(*kk, m, n, k, xdt, bias_kind == 2 ? DType::bf16 : DType::f32, bias_kind != 0,
                     experts, seed++);
        if (HasFailure()) return;
      }
    }
  }
}

// The contract: any column split and any subset of the rows gives the same bits, on both paths.
TEST(CpuAvx512, MatmulIndependentOfSplit) {
  REQUIRE_AVX512();
  struct Case {
    int64_t m, n, k;
    DType dt;
  };
  // f32 outputs show every difference of accumulation order; bf16 / f16 hide most.
  const Case cases[] = {{1, 200, 2880, DType::f32}, {2, 77, 160, DType::f32},
                        {3, 131, 160, DType::f32},  {8, 97, 96, DType::f32},
                        {5, 40, 64, DType::f16},    {9, 200, 2880, DType::f32},
                        {40, 301, 288, DType::f32}, {100, 130, 64, DType::bf16}};
  for (const Case& c : cases) {
    SCOPED_TRACE("m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) +
                 " k=" + std::to_string(c.k) + " " + name_of(c.dt));
    const Problem p(2, c.n, c.k, DType::f32, true, 77 + c.m);
    const Floats x = random_x(c.dt, c.m, c.k, 5 + c.n);
    Floats whole(c.dt, c.m * c.n);
    run_kernel(*kk, p, 1, x, whole, 0, c.m, c.m, 0, c.n);
    const int64_t splits[] = {1, 7, 16, 31, 63, 64, 65, 100, c.n - 1};
    for (const int64_t a : splits) {
      if (a <= 0 || a >= c.n) continue;
      Floats parts(c.dt, c.m * c.n);
      run_kernel(*kk, p, 1, x, parts, 0, c.m, c.m, a, c.n);
      run_kernel(*kk, p, 1, x, parts, 0, c.m, c.m, 0, a);
      ASSERT_EQ(parts.bytes, whole.bytes) << "columns split at " << a;
    }
    // Rows in pieces (each call knows the whole count), columns in uneven chunks.
    Floats pieces(c.dt, c.m * c.n);
    for (int64_t i0 = 0; i0 < c.m;) {
      const int64_t i1 = std::min(c.m, i0 + 1 + (i0 * 7) % 13);
      for (int64_t n0 = 0; n0 < c.n;) {
        const int64_t n1 = std::min(c.n, n0 + 1 + (n0 * 5) % 70);
        run_kernel(*kk, p, 1, x, pieces, i0, i1, c.m, n0, n1);
        n0 = n1;
      }
      i0 = i1;
    }
    ASSERT_EQ(pieces.bytes, whole.bytes) << "rows and columns in pieces";
  }
}

// Outputs rounded exactly as dtype.hpp rounds (f32_to_bf16, f32_to_f16), NaN and Inf included:
// with the weight e_0 (so y = x_0 + bias exactly in f32), every f32 bit pattern of the bias
// family below lands in the output conversion.
TEST(CpuAvx512, MatmulOutputRoundingMatchesDtype) {
  REQUIRE_AVX512();
  const int64_t k = 64, n = 160;
  for (const int64_t m : {int64_t{1}, int64_t{20}}) {  // both paths
    Problem p(1, n, k, DType::f32, true, 3);
    std::fill(p.blocks.begin(), p.blocks.end(), uint8_t{0});
    std::fill(p.scales.begin(), p.scales.end(), uint8_t{127});
    for (int64_t c = 0; c < n; ++c)
      p.blocks[static_cast<std::size_t>(c * k / 2)] = 0x02;  // element 0 of each row = 1.0
    std::mt19937_64 g(11 + m);
    for (const DType dt : kFloatTypes) {
      SCOPED_TRACE(std::string(name_of(dt)) + " m=" + std::to_string(m));
      for (int round = 0; round < 20; ++round) {
        Floats x(dt, m * k);
        for (int64_t i = 0; i < m * k; ++i)
          x.set(i, 0.0f);
        for (int64_t i = 0; i < m; ++i)
          x.set(i * k, (g() & 1) ? 1.0f : 0.0f);
        for (int64_t c = 0; c < n; ++c) {
          uint32_t b = static_cast<uint32_t>(g());
          if (c % 4 == 1) b = (b & 0x80000000u) | 0x7F800000u | (b & 0x7FFFFFu);  // NaN / Inf
          if (c % 4 == 2) b = (b & 0x8000FFFFu) | 0x47000000u | ((b >> 16) & 0x00FF0000u);
          if (c % 4 == 3)
            b = (b & 0x807FFFFFu) | ((0x60 + (b >> 25) % 0x18) << 23);  // f16 subnormals
          p.bias.set(c, from_bits(b));
        }
        Floats got(dt, m * n);
        run_kernel(*kk, p, 0, x, got, 0, m, m, 0, n);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t c = 0; c < n; ++c) {
            const float y = x.get(i * k) + p.bias.get(c);
            uint32_t want;
            if (dt == DType::f32) {
              want = to_bits(y);
            } else {
              want = dt == DType::bf16 ? mxfp4::f32_to_bf16(y) : mxfp4::f32_to_f16(y);
            }
            ASSERT_EQ(got.raw(i * n + c), want)
                << "row " << i << " col " << c << " y bits " << std::hex << to_bits(y);
          }
        }
      }
    }
  }
}

// Scales 0xFF (NaN), 0 (2^-127) and 254 (products that overflow) reach the outputs on both paths
// as they reach the reference's.
TEST(CpuAvx512, MatmulSpecialScales) {
  REQUIRE_AVX512();
  const int64_t k = 96, n = 24;
  for (const int64_t m : {int64_t{2}, int64_t{12}}) {
    Problem p(1, n, k, DType::f32, false, 5);
    for (int64_t c = 0; c < n; ++c) {
      const uint8_t special = c % 3 == 0 ? 0xFF : c % 3 == 1 ? 0 : 254;
      p.scales[static_cast<std::size_t>(c * 3 + c % 3)] = special;
    }
    const Floats x = random_x(DType::f32, m, k, 9);
    Floats want(DType::f32, m * n), got(DType::f32, m * n);
    mxfp4::detail::LinearArgs la{x.data(), DType::f32, m, p.expert_args(0), want.data(), nullptr};
    mxfp4::reference::linear(la);
    run_kernel(*kk, p, 0, x, got, 0, m, m, 0, n);
    for (int64_t i = 0; i < m * n; ++i) {
      const float r = want.get(i), y = got.get(i);
      if (std::isnan(r) || std::isinf(r)) {
        EXPECT_EQ(std::isnan(y), std::isnan(r)) << i << " got " << y << " want " << r;
        if (std::isinf(r)) {
          EXPECT_EQ(y, r) << i;
        }
      } else {
        EXPECT_NEAR(y, r, 1e-4 * (1.0 + std::fabs(r))) << i;
      }
    }
  }
}

}  // namespace
