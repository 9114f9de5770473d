// The CPU backend (src/cpu): instruction-set detection and selection, the thread pool, and every
// operation of every kernel table this machine runs, against the scalar reference
// (src/reference): quantize and dequantize bit for bit, linear and gather_linear within an f32
// tolerance growing with sqrt(K), and all of them identical whatever the thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/convert.hpp"
#include "cpu/backend.hpp"
#include "cpu/cpu_features.hpp"
#include "cpu/thread_pool.hpp"
#include "mxfp4/mxfp4.hpp"
#include "reference/reference.hpp"
#include "test_numbers.hpp"

namespace {

using mxfp4::CpuIsa;
using mxfp4::DType;
using mxfp4::ScaleRule;
using mxfp4::Tensor;
using mxfp4::test::ulp_of;
namespace cpu = mxfp4::cpu;
namespace detail = mxfp4::detail;

constexpr ScaleRule kRules[] = {ScaleRule::floor, ScaleRule::ceil, ScaleRule::even, ScaleRule::mse,
                                ScaleRule::mistralrs};
constexpr DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16};
constexpr int kThreadCounts[] = {1, 2, 3, 8};

// Restores the instruction set and thread count a test changes.
class CpuSettingsGuard {
 public:
  CpuSettingsGuard() : isa_(mxfp4::cpu_isa()), threads_(mxfp4::num_threads()) {}
  ~CpuSettingsGuard() {
    mxfp4::set_cpu_isa(isa_);
    mxfp4::set_num_threads(threads_);
  }
  CpuSettingsGuard(const CpuSettingsGuard&) = delete;
  CpuSettingsGuard& operator=(const CpuSettingsGuard&) = delete;

 private:
  CpuIsa isa_;
  int threads_;
};

// Every level this machine runs, lowest first: scalar, then the x86 levels up to the supported
// one, or neon on AArch64.
std::vector<CpuIsa> supported_isas() {
  const CpuIsa best = mxfp4::cpu_isa_supported();
  if (best == CpuIsa::neon) return {CpuIsa::scalar, CpuIsa::neon};
  std::vector<CpuIsa> isas;
  for (int i = 0; i <= static_cast<int>(best); ++i)
    isas.push_back(static_cast<CpuIsa>(i));
  return isas;
}

// Selects `isa` and checks that the CPU backend now runs its table.
void use_isa(CpuIsa isa) {
  mxfp4::set_cpu_isa(isa);
  ASSERT_EQ(mxfp4::cpu_isa(), isa);
  ASSERT_EQ(std::string(detail::backend_for(mxfp4::Device::cpu()).name),
            std::string("cpu-") + mxfp4::cpu_isa_name(isa));
}

std::string dtype_label(DType d) {
  return std::string(mxfp4::dtype_name(d));
}

std::size_t bytes_of(DType d) {
  return d == DType::f32 ? 4 : 2;
}

// Raw storage for arrays handed to kernels.
struct Buffer {
  DType dtype = DType::f32;
  std::vector<std::uint8_t> bytes;
  Buffer() = default;
  Buffer(DType d, std::int64_t n) : dtype(d), bytes(static_cast<std::size_t>(n) * bytes_of(d)) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  std::int64_t size() const { return static_cast<std::int64_t>(bytes.size() / bytes_of(dtype)); }
  float get(std::int64_t i) const { return detail::load_float(data(), dtype, i); }
  void set(std::int64_t i, float v) { detail::store_float(data(), dtype, i, v); }
  void set_bits(std::int64_t i, std::uint32_t bits) {
    if (dtype == DType::f32) {
      std::memcpy(bytes.data() + 4 * i, &bits, 4);
    } else {
      const auto h = static_cast<std::uint16_t>(bits);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
};

// Equal bits, or NaN in both.
::testing::AssertionResult same_floats(const Buffer& got, const Buffer& want) {
  if (got.bytes.size() != want.bytes.size()) return ::testing::AssertionFailure() << "sizes differ";
  const std::size_t width = bytes_of(got.dtype);
  for (std::int64_t i = 0; i < got.size(); ++i) {
    const float g = got.get(i);
    const float w = want.get(i);
    if (std::isnan(g) && std::isnan(w)) continue;
    if (std::memcmp(got.bytes.data() + i * width, want.bytes.data() + i * width, width) != 0) {
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << w;
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same_bytes(const std::vector<std::uint8_t>& got,
                                      const std::vector<std::uint8_t>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "sizes differ";
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return ::testing::AssertionFailure()
             << "byte " << i << ": got " << int{got[i]} << ", want " << int{want[i]};
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- quantize -----------------------------------------------------------------------------------

// Blocks of different kinds: wide normal ranges, exact E2M1 midpoints times a power of two (ties),
// zeros, subnormals, values near the dtype's largest, one outlier among small values.
Buffer quantize_input(DType dtype, std::int64_t rows, std::int64_t k, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int emax = dtype == DType::f16 ? 14 : 125;
  const int emin = dtype == DType::f16 ? -24 : -140;
  const auto exponent = [&](int lo, int hi) {
    return lo + static_cast<int>(g() % static_cast<std::uint64_t>(hi - lo + 1));
  };
  static constexpr float kTies[] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, 7.0f};
  Buffer b(dtype, rows * k);
  for (std::int64_t base = 0; base < rows * k; base += 32) {
    const int kind = static_cast<int>(g() % 7);
    const int e = exponent(std::max(emin + 10, -40), std::min(emax - 4, 40));
    for (std::int64_t i = base; i < base + 32; ++i) {
      float v = 0.0f;
      switch (kind) {
        case 0:
        case 1:
          v = std::ldexp(normal(g), e);
          break;
        case 2:
          v = std::ldexp(kTies[g() % 9], e) * (g() & 1 ? -1.0f : 1.0f);
          break;
        case 3:
          v = 0.0f;
          break;
        case 4:
          v = std::ldexp(normal(g), emin + 2);
          break;
        case 5:
          v = std::ldexp(normal(g), emax - 2);
          break;
        default:
          v = std::ldexp(normal(g), i == base + 7 ? std::min(e + 12, emax - 2) : e);
          break;
      }
      b.set(i, v);
    }
  }
  return b;
}

// NaN (with payloads and signs) and infinities at the given flat positions.
void plant_non_finite(Buffer& b, const std::vector<std::int64_t>& at) {
  const bool wide = b.dtype == DType::f32;
  const bool half = b.dtype == DType::f16;
  const std::uint32_t patterns[] = {
      wide   ? 0x7FC12345u
      : half ? 0x7E01u
             : 0x7FC1u,  // quiet NaN with payload
      wide   ? 0x7F800000u
      : half ? 0x7C00u
             : 0x7F80u,  // +Inf
      wide   ? 0xFF800000u
      : half ? 0xFC00u
             : 0xFF80u,  // -Inf
      wide   ? 0xFFC00000u
      : half ? 0xFE00u
             : 0xFFC0u,  // negative NaN
      wide   ? 0x7F800001u
      : half ? 0x7C01u
             : 0x7F81u,  // signalling NaN
  };
  for (std::size_t i = 0; i < at.size(); ++i)
    b.set_bits(at[i], patterns[i % 5]);
}

struct QuantizeResult {
  std::vector<std::uint8_t> blocks;
  std::vector<std::uint8_t> scales;
  std::int64_t first_non_finite;
};

QuantizeResult run_quantize(const detail::Backend& backend, const Buffer& w, std::int64_t rows,
                            std::int64_t k, ScaleRule rule) {
  QuantizeResult r;
  r.blocks.assign(static_cast<std::size_t>(rows * k / 2), 0xAA);
  r.scales.assign(static_cast<std::size_t>(rows * k / 32), 0xAA);
  detail::QuantizeArgs a{};
  a.weight = w.data();
  a.weight_dtype = w.dtype;
  a.rows = rows;
  a.k = k;
  a.blocks = r.blocks.data();
  a.scales = r.scales.data();
  a.rule = rule;
  r.first_non_finite = backend.quantize(a);
  return r;
}

struct QuantizeCase {
  std::vector<std::int64_t> shape;            // [N, K] or [E, N, K]
  std::vector<std::int64_t> non_finite_rows;  // rows that get one non-finite element each
};

std::int64_t rows_of(const std::vector<std::int64_t>& shape) {
  std::int64_t rows = 1;
  for (std::size_t i = 0; i + 1 < shape.size(); ++i)
    rows *= shape[i];
  return rows;
}

void check_quantize(const std::vector<CpuIsa>& isas, const std::vector<int>& thread_counts,
                    const std::vector<QuantizeCase>& cases, const std::vector<ScaleRule>& rules) {
  std::uint64_t seed = 1;
  for (const QuantizeCase& c : cases) {
    const std::int64_t k = c.shape.back();
    const std::int64_t rows = rows_of(c.shape);
    for (DType dtype : kFloatTypes) {
      Buffer w = quantize_input(dtype, rows, k, seed++);
      std::vector<std::int64_t> at;
      for (std::size_t i = 0; i < c.non_finite_rows.size(); ++i)
        at.push_back(c.non_finite_rows[i] * k + static_cast<std::int64_t>(7 * i + 3) % k);
      plant_non_finite(w, at);
      for (ScaleRule rule : rules) {
        const QuantizeResult want = run_quantize(detail::reference_backend(), w, rows, k, rule);
        if (!at.empty()) {
          ASSERT_EQ(want.first_non_finite, *std::min_element(at.begin(), at.end()));
        }
        for (CpuIsa isa : isas) {
          use_isa(isa);
          for (int threads : thread_counts) {
            mxfp4::set_num_threads(threads);
            SCOPED_TRACE(std::string("isa ") + mxfp4::cpu_isa_name(isa) + ", threads " +
                         std::to_string(threads) + ", rule " + mxfp4::scale_rule_name(rule) + ", " +
                         dtype_label(dtype) + ", rows " + std::to_string(rows) + ", K " +
                         std::to_string(k));
            const QuantizeResult got =
                run_quantize(detail::backend_for(mxfp4::Device::cpu()), w, rows, k, rule);
            ASSERT_TRUE(same_bytes(got.scales, want.scales));
            ASSERT_TRUE(same_bytes(got.blocks, want.blocks));
            ASSERT_EQ(got.first_non_finite, want.first_non_finite);
          }
        }
      }
    }
  }
}

TEST(CpuQuantize, BitIdenticalToTheReferenceForEveryRuleDtypeAndIsa) {
  CpuSettingsGuard guard;
  // A task has 11 rows at K=2880: in {41, 2880} the non-finite rows 12 and 30 are in tasks 1
  // and 2, in {23, 2880} rows 2 and 15 in tasks 0 and 1.
  const std::vector<QuantizeCase> cases = {
      {{1, 32}, {}},          {{1, 32}, {0}},   {{7, 64}, {6, 2}},      {{3, 37, 96}, {}},
      {{3, 37, 96}, {90, 1}}, {{5, 2880}, {4}}, {{41, 2880}, {30, 12}}, {{23, 2880}, {15, 2}},
      {{41, 2880}, {}},       {{13, 512}, {12}}};
  check_quantize(supported_isas(), {mxfp4::num_threads()}, cases,
                 std::vector<ScaleRule>(std::begin(kRules), std::end(kRules)));
}

TEST(CpuQuantize, IdenticalForAnyThreadCount) {
  CpuSettingsGuard guard;
  check_quantize(supported_isas(), {1, 2, 3, 8}, {{{41, 2880}, {33, 20}}},
                 {ScaleRule::floor, ScaleRule::mse});
}

TEST(CpuQuantize, ThroughThePublicApiNamesTheFirstNonFiniteElement) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(3);
  const std::int64_t n = 40;
  const std::int64_t k = 2880;
  Buffer w = quantize_input(DType::bf16, n, k, 99);
  plant_non_finite(w, {35 * k + 100, 23 * k + 17, 39 * k});  // NaN, +Inf (the first), -Inf
  const Tensor weight = Tensor::view(w.data(), {n, k}, DType::bf16);
  const QuantizeResult want = run_quantize(detail::reference_backend(), w, n, k, ScaleRule::mse);
  for (CpuIsa isa : supported_isas()) {
    use_isa(isa);
    SCOPED_TRACE(mxfp4::cpu_isa_name(isa));
    try {
      (void)mxfp4::quantize(weight, {ScaleRule::mse, mxfp4::NonFinitePolicy::error});
      ADD_FAILURE() << "no NonFiniteValue";
    } catch (const mxfp4::NonFiniteValue& e) {
      EXPECT_NE(std::string(e.what()).find("+Inf at row 23, column 17"), std::string::npos)
          << e.what();
    }
    const mxfp4::QuantizedTensor q =
        mxfp4::quantize(weight, {ScaleRule::mse, mxfp4::NonFinitePolicy::nan_block});
    const auto* blocks = static_cast<const std::uint8_t*>(q.blocks.data());
    const auto* scales = static_cast<const std::uint8_t*>(q.scales.data());
    EXPECT_TRUE(same_bytes({blocks, blocks + q.blocks.numel()}, want.blocks));
    EXPECT_TRUE(same_bytes({scales, scales + q.scales.numel()}, want.scales));
    EXPECT_EQ(scales[23 * (k / 32)], 0xFF);  // the block with +Inf is coded as NaN
  }
}

// ---- dequantize ---------------------------------------------------------------------------------

TEST(CpuDequantize, BitIdenticalToTheReferenceForAllScalesAndDtypes) {
  CpuSettingsGuard guard;
  struct Case {
    std::int64_t rows, k;
  };
  // 2 x 67 rows x 8 blocks covers every scale byte four times; 37 x 2880 spans several tasks.
  const Case cases[] = {{1, 32}, {2 * 67, 256}, {37, 2880}, {5, 96}};
  std::mt19937_64 g(7);
  for (const Case& c : cases) {
    std::vector<std::uint8_t> blocks(static_cast<std::size_t>(c.rows * c.k / 2));
    std::vector<std::uint8_t> scales(static_cast<std::size_t>(c.rows * c.k / 32));
    for (auto& b : blocks)
      b = static_cast<std::uint8_t>(g());
    for (std::size_t i = 0; i < scales.size(); ++i)
      scales[i] = static_cast<std::uint8_t>((i * 167 + 13) % 256);  // a permutation per 256
    for (DType dtype : kFloatTypes) {
      detail::DequantizeArgs a{};
      a.blocks = blocks.data();
      a.scales = scales.data();
      a.rows = c.rows;
      a.k = c.k;
      a.out_dtype = dtype;
      Buffer want(dtype, c.rows * c.k);
      a.out = want.data();
      mxfp4::reference::dequantize(a);
      for (CpuIsa isa : supported_isas()) {
        use_isa(isa);
        for (int threads : kThreadCounts) {
          mxfp4::set_num_threads(threads);
          SCOPED_TRACE(std::string(mxfp4::cpu_isa_name(isa)) + ", threads " +
                       std::to_string(threads) + ", " + dtype_label(dtype) + ", rows " +
                       std::to_string(c.rows) + ", K " + std::to_string(c.k));
          Buffer got(dtype, c.rows * c.k);
          std::fill(got.bytes.begin(), got.bytes.end(), std::uint8_t{0x5A});
          a.out = got.data();
          detail::backend_for(mxfp4::Device::cpu()).dequantize(a);
          ASSERT_TRUE(same_floats(got, want));
        }
      }
    }
  }
}

// ---- linear and gather_linear -------------------------------------------------------------------

struct Weight {
  std::int64_t experts = 1, n = 0, k = 0;
  std::vector<std::uint8_t> blocks, scales;
  Buffer bias;
  bool has_bias = false;
  detail::WeightArgs args() const {
    detail::WeightArgs a{};
    a.blocks = blocks.data();
    a.scales = scales.data();
    a.bias = has_bias ? bias.data() : nullptr;
    a.bias_dtype = bias.dtype;
    a.experts = experts;
    a.n = n;
    a.k = k;
    return a;
  }
  std::vector<float> decoded;  // [experts, n, k], by the reference
};

// Random codes with scales 2^-10 .. 2^0 (values up to 6): sums stay far inside f16's range.
Weight make_weight(std::int64_t experts, std::int64_t n, std::int64_t k, bool bias,
                   DType bias_dtype, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  Weight w;
  w.experts = experts;
  w.n = n;
  w.k = k;
  w.blocks.resize(static_cast<std::size_t>(experts * n * k / 2));
  w.scales.resize(static_cast<std::size_t>(experts * n * k / 32));
  for (auto& b : w.blocks)
    b = static_cast<std::uint8_t>(g());
  for (auto& s : w.scales)
    s = static_cast<std::uint8_t>(117 + g() % 11);
  w.has_bias = bias;
  w.bias = Buffer(bias_dtype, experts * n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::int64_t i = 0; i < w.bias.size(); ++i)
    w.bias.set(i, normal(g));
  Buffer decoded(DType::f32, experts * n * k);
  detail::DequantizeArgs a{};
  a.blocks = w.blocks.data();
  a.scales = w.scales.data();
  a.rows = experts * n;
  a.k = k;
  a.out = decoded.data();
  a.out_dtype = DType::f32;
  mxfp4::reference::dequantize(a);
  w.decoded.resize(static_cast<std::size_t>(experts * n * k));
  std::memcpy(w.decoded.data(), decoded.data(), decoded.bytes.size());
  return w;
}

Buffer random_activations(DType dtype, std::int64_t count, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Buffer x(dtype, count);
  for (std::int64_t i = 0; i < count; ++i)
    x.set(i, normal(g));
  return x;
}

// The reference's output [rows, n], where row r is x[x_rows[r]] . W[experts[r]]^T + bias, and
// per element the f32 accumulation allowance: 1e-6 sqrt(K) (sum |x w| + |bias|).
struct Expected {
  Buffer out;
  std::vector<double> allowance;
};

Expected expected_output(Buffer reference_out, const Buffer& x, const Weight& w,
                         const std::vector<std::int64_t>& x_rows,
                         const std::vector<std::int64_t>& experts) {
  Expected e{std::move(reference_out), std::vector<double>(x_rows.size() * w.n)};
  std::vector<double> xr(static_cast<std::size_t>(w.k));
  for (std::size_t r = 0; r < x_rows.size(); ++r) {
    for (std::int64_t i = 0; i < w.k; ++i)
      xr[static_cast<std::size_t>(i)] = std::fabs(x.get(x_rows[r] * w.k + i));
    for (std::int64_t o = 0; o < w.n; ++o) {
      const std::int64_t flat = experts[r] * w.n + o;
      const float* wr = w.decoded.data() + flat * w.k;
      double mag = w.has_bias ? std::fabs(w.bias.get(flat)) : 0.0;
      for (std::int64_t i = 0; i < w.k; ++i)
        mag += xr[static_cast<std::size_t>(i)] * std::fabs(wr[i]);
      e.allowance[r * w.n + o] = 1e-6 * std::sqrt(static_cast<double>(w.k)) * mag;
    }
  }
  return e;
}

// Within the allowance plus one rounding of each side to the output dtype, and NaN exactly
// where the reference has NaN.
::testing::AssertionResult close_to_reference(const Buffer& got, const Expected& e,
                                              std::int64_t n) {
  for (std::int64_t i = 0; i < got.size(); ++i) {
    const double g = got.get(i);
    const double r = e.out.get(i);
    if (std::isnan(g) || std::isnan(r)) {
      if (std::isnan(g) && std::isnan(r)) continue;
      return ::testing::AssertionFailure() << "out[" << i / n << ", " << i % n << "] = " << g
                                           << ", reference " << r << " (NaN in one only)";
    }
    const double tol = e.allowance[static_cast<std::size_t>(i)] +
                       2 * ulp_of(got.dtype, std::max(std::fabs(g), std::fabs(r)));
    if (!(std::fabs(g - r) <= tol)) {
      return ::testing::AssertionFailure() << "out[" << i / n << ", " << i % n << "] = " << g
                                           << ", reference " << r << ", tolerance " << tol;
    }
  }
  return ::testing::AssertionSuccess();
}

std::vector<std::int64_t> iota(std::int64_t count) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i)
    v[static_cast<std::size_t>(i)] = i;
  return v;
}

// Whether an output changes with the thread count is only worth checking where the call has
// several tasks.
std::int64_t matmul_tasks(std::int64_t rows, std::int64_t n, std::int64_t k) {
  const cpu::MatmulSplit s = cpu::split_matmul(rows, n, k);
  return s.row_chunks * s.col_chunks;
}

Buffer run_linear(const detail::Backend& backend, const Buffer& x, std::int64_t m,
                  const Weight& w) {
  Buffer out(x.dtype, m * w.n);
  std::fill(out.bytes.begin(), out.bytes.end(), std::uint8_t{0x5A});
  detail::LinearArgs a{};
  a.x = x.data();
  a.x_dtype = x.dtype;
  a.m = m;
  a.w = w.args();
  a.out = out.data();
  backend.linear(a);
  return out;
}

TEST(CpuLinear, MatchesTheReferenceOnRandomShapesForEveryIsaAndThreadCount) {
  CpuSettingsGuard guard;
  const std::int64_t ms[] = {1, 2, 3, 7, 16, 33, 100, 513};
  const std::int64_t ns[] = {1, 7, 65, 131, 200};
  const std::int64_t ks[] = {32, 64, 96, 2880};
  constexpr std::int64_t kMaxMacs = 4'000'000;  // per case: keeps the file fast under ASan
  int case_index = 0;
  int multi_task_cases = 0;
  std::set<std::int64_t> ks_run;
  for (std::size_t im = 0; im < std::size(ms); ++im) {
    for (std::size_t in = 0; in < std::size(ns); ++in, ++case_index) {
      const std::int64_t m = ms[im];
      const std::int64_t n = ns[in];
      std::size_t ik = (im + in) % std::size(ks);
      while (ik > 0 && m * n * ks[ik] > kMaxMacs)
        --ik;
      const std::int64_t k = ks[ik];
      ks_run.insert(k);
      const DType dtype = kFloatTypes[case_index % 3];
      const bool bias = case_index % 2 == 0;
      const Weight w = make_weight(1, n, k, bias, kFloatTypes[(case_index + 1) % 3],
                                   static_cast<std::uint64_t>(100 + case_index));
      const Buffer x = random_activations(dtype, m * k, static_cast<std::uint64_t>(case_index));
      const Expected want = expected_output(run_linear(detail::reference_backend(), x, m, w), x, w,
                                            iota(m), std::vector<std::int64_t>(m, 0));
      const bool several_tasks = matmul_tasks(m, n, k) > 1;
      multi_task_cases += several_tasks;
      for (CpuIsa isa : supported_isas()) {
        use_isa(isa);
        SCOPED_TRACE(std::string(mxfp4::cpu_isa_name(isa)) + ": M " + std::to_string(m) + ", N " +
                     std::to_string(n) + ", K " + std::to_string(k) + ", x " + dtype_label(dtype) +
                     (bias ? ", bias" : ""));
        mxfp4::set_num_threads(1);
        const Buffer one = run_linear(detail::backend_for(mxfp4::Device::cpu()), x, m, w);
        ASSERT_TRUE(close_to_reference(one, want, n));
        if (!several_tasks) continue;
        for (int threads : {2, 3, 8}) {
          mxfp4::set_num_threads(threads);
          const Buffer got = run_linear(detail::backend_for(mxfp4::Device::cpu()), x, m, w);
          ASSERT_EQ(got.bytes, one.bytes) << threads << " threads";
        }
      }
    }
  }
  EXPECT_EQ(ks_run.size(), std::size(ks));
  EXPECT_GE(multi_task_cases, 8);
}

TEST(CpuLinear, ThroughThePublicApiWithNanWeightsAndLeadingDims) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(2);
  const std::int64_t n = 130;
  const std::int64_t k = 2880;
  Weight w = make_weight(1, n, k, true, DType::bf16, 5);
  w.scales[static_cast<std::size_t>(77 * (k / 32) + 4)] = 0xFF;  // row 77 decodes to NaN
  const Buffer x = random_activations(DType::f32, 2 * 3 * k, 6);
  const Expected want = expected_output(run_linear(detail::reference_backend(), x, 6, w), x, w,
                                        iota(6), std::vector<std::int64_t>(6, 0));
  Tensor blocks = Tensor::view(w.blocks.data(), {n, k / 2}, DType::u8);
  Tensor scales = Tensor::view(w.scales.data(), {n, k / 32}, DType::u8);
  const auto weight =
      mxfp4::Mxfp4Weight::from_parts(blocks, scales, Tensor::view(w.bias.data(), {n}, DType::bf16));
  const Tensor xt = Tensor::view(x.data(), {2, 3, k}, DType::f32);
  for (CpuIsa isa : supported_isas()) {
    use_isa(isa);
    SCOPED_TRACE(mxfp4::cpu_isa_name(isa));
    const Tensor y = mxfp4::linear(xt, weight);
    ASSERT_EQ(y.shape(), (mxfp4::Shape{2, 3, n}));
    Buffer got(DType::f32, 6 * n);
    std::memcpy(got.data(), y.data(), got.bytes.size());
    ASSERT_TRUE(close_to_reference(got, want, n));
    for (std::int64_t r = 0; r < 6; ++r)
      EXPECT_TRUE(std::isnan(got.get(r * n + 77)));
  }
}

struct GatherCase {
  std::int64_t experts, n, k, tokens, topk;
  bool skewed, per_slot, bias;
  DType x_dtype, index_dtype;
};

// The case's call into `out` (poisoned first); in expert order where perm and offsets are given.
void gather_into(const detail::Backend& backend, const GatherCase& c, const Buffer& x,
                 const std::vector<std::uint8_t>& ids, const Weight& w, Buffer& out,
                 std::int32_t* perm = nullptr, std::int32_t* offsets = nullptr) {
  std::fill(out.bytes.begin(), out.bytes.end(), std::uint8_t{0x5A});
  detail::GatherLinearArgs a{};
  a.x = x.data();
  a.x_dtype = c.x_dtype;
  a.x_per_slot = c.per_slot;
  a.tokens = c.tokens;
  a.topk = c.topk;
  a.indices = ids.data();
  a.index_dtype = c.index_dtype;
  a.w = w.args();
  a.out = out.data();
  a.order_perm = perm;
  a.order_offsets = offsets;
  backend.gather_linear(a);
}

Buffer run_gather(const detail::Backend& backend, const GatherCase& c, const Buffer& x,
                  const std::vector<std::uint8_t>& ids, const Weight& w) {
  Buffer out(c.x_dtype, c.tokens * c.topk * c.n);
  gather_into(backend, c, x, ids, w, out);
  return out;
}

// The same call in expert order: out rows by position, the sort in perm and offsets (filled with
// junk first, so unwritten entries show).
struct OrderedGather {
  Buffer out;
  std::vector<std::int32_t> perm, offsets;
};
OrderedGather run_gather_ordered(const detail::Backend& backend, const GatherCase& c,
                                 const Buffer& x, const std::vector<std::uint8_t>& ids,
                                 const Weight& w) {
  OrderedGather r{Buffer(c.x_dtype, c.tokens * c.topk * c.n),
                  std::vector<std::int32_t>(static_cast<std::size_t>(c.tokens * c.topk), -7),
                  std::vector<std::int32_t>(static_cast<std::size_t>(c.experts + 1), -7)};
  gather_into(backend, c, x, ids, w, r.out, r.perm.data(), r.offsets.data());
  return r;
}

// An expert-order result against the scatter `scattered` of the same backend: perm is the stable
// sort of the pairs by expert, offsets its experts' first positions, and row p is, byte for byte,
// the scatter's row perm[p].
void expect_expert_order_of(const OrderedGather& got, const Buffer& scattered,
                            const std::vector<std::int64_t>& experts_of, std::int64_t experts,
                            std::int64_t n) {
  std::vector<std::int32_t> perm, offsets;
  for (std::int64_t e = 0; e < experts; ++e) {
    offsets.push_back(static_cast<std::int32_t>(perm.size()));
    for (std::size_t p = 0; p < experts_of.size(); ++p) {
      if (experts_of[p] == e) perm.push_back(static_cast<std::int32_t>(p));
    }
  }
  offsets.push_back(static_cast<std::int32_t>(perm.size()));
  ASSERT_EQ(got.perm, perm);
  ASSERT_EQ(got.offsets, offsets);
  const std::size_t row = static_cast<std::size_t>(n) * bytes_of(scattered.dtype);
  for (std::size_t p = 0; p < perm.size(); ++p) {
    ASSERT_EQ(std::memcmp(got.out.bytes.data() + p * row,
                          scattered.bytes.data() + static_cast<std::size_t>(perm[p]) * row, row),
              0)
        << "position " << p << " (pair " << perm[p] << ")";
  }
}

// Expert ids in index_dtype: every slot to the last expert (skewed), or uniform at random.
std::vector<std::uint8_t> make_ids(const GatherCase& c, std::uint64_t seed,
                                   std::vector<std::int64_t>& experts_of) {
  std::mt19937_64 g(seed);
  const std::size_t width = c.index_dtype == DType::i64 ? 8 : 4;
  std::vector<std::uint8_t> ids(static_cast<std::size_t>(c.tokens * c.topk) * width);
  experts_of.resize(static_cast<std::size_t>(c.tokens * c.topk));
  for (std::size_t s = 0; s < experts_of.size(); ++s) {
    const std::int64_t e =
        c.skewed ? c.experts - 1
                 : static_cast<std::int64_t>(g() % static_cast<std::uint64_t>(c.experts));
    experts_of[s] = e;
    if (width == 8) {
      std::memcpy(ids.data() + 8 * s, &e, 8);
    } else {
      const auto e32 = static_cast<std::uint32_t>(e);
      std::memcpy(ids.data() + 4 * s, &e32, 4);
    }
  }
  return ids;
}

TEST(CpuGatherLinear, MatchesTheReferenceForEveryRoutingIsaAndThreadCount) {
  CpuSettingsGuard guard;
  const DType index_types[] = {DType::u32, DType::i32, DType::i64};
  const std::int64_t token_counts[] = {1, 5, 19};
  std::vector<GatherCase> cases;
  int i = 0;
  for (std::int64_t experts : {1, 4, 64}) {
    for (std::int64_t topk = 1; topk <= 4; ++topk) {
      for (bool skewed : {false, true}) {
        for (bool per_slot : {false, true}) {
          GatherCase c{};
          c.experts = experts;
          c.topk = topk;
          c.skewed = skewed;
          c.per_slot = per_slot;
          c.tokens = token_counts[i % 3];
          c.n = experts == 1 ? 7 : experts == 4 ? 200 : 65;
          // Decode (T=1) of a GPT-OSS-sized row; smaller K as the batch grows.
          if (experts == 64) {
            c.k = c.tokens == 19 ? 32 : 64;
          } else {
            c.k = c.tokens == 1 ? 2880 : c.tokens == 5 ? 96 : 64;
          }
          // Strides that do not line up with the loops, so each choice meets the others.
          c.bias = (i / 5) % 2 == 1;
          c.x_dtype = kFloatTypes[(i / 3) % 3];
          c.index_dtype = index_types[(i / 9) % 3];
          cases.push_back(c);
          ++i;
        }
      }
    }
  }
  int multi_task_cases = 0;
  for (std::size_t ci = 0; ci < cases.size(); ++ci) {
    const GatherCase& c = cases[ci];
    const Weight w = make_weight(c.experts, c.n, c.k, c.bias, kFloatTypes[(ci + 2) % 3], 300 + ci);
    const std::int64_t x_rows = c.per_slot ? c.tokens * c.topk : c.tokens;
    const Buffer x = random_activations(c.x_dtype, x_rows * c.k, 400 + ci);
    std::vector<std::int64_t> experts_of;
    const std::vector<std::uint8_t> ids = make_ids(c, 500 + ci, experts_of);
    std::vector<std::int64_t> x_row_of;
    for (std::int64_t slot = 0; slot < c.tokens * c.topk; ++slot)
      x_row_of.push_back(c.per_slot ? slot : slot / c.topk);
    const Expected want = expected_output(run_gather(detail::reference_backend(), c, x, ids, w), x,
                                          w, x_row_of, experts_of);
    // Tasks: one batch per expert used.
    std::vector<std::int64_t> rows_per_expert(static_cast<std::size_t>(c.experts), 0);
    for (std::int64_t e : experts_of)
      ++rows_per_expert[static_cast<std::size_t>(e)];
    std::int64_t tasks = 0;
    for (std::int64_t rows : rows_per_expert)
      tasks += rows > 0 ? matmul_tasks(rows, c.n, c.k) : 0;
    multi_task_cases += tasks > 1;
    for (CpuIsa isa : supported_isas()) {
      use_isa(isa);
      SCOPED_TRACE(std::string(mxfp4::cpu_isa_name(isa)) + ": E " + std::to_string(c.experts) +
                   ", N " + std::to_string(c.n) + ", K " + std::to_string(c.k) + ", T " +
                   std::to_string(c.tokens) + ", topk " + std::to_string(c.topk) +
                   (c.skewed ? ", skewed" : ", uniform") + (c.per_slot ? ", x [T, topk, K]" : "") +
                   ", x " + dtype_label(c.x_dtype) + (c.bias ? ", bias" : ""));
      mxfp4::set_num_threads(1);
      const Buffer one = run_gather(detail::backend_for(mxfp4::Device::cpu()), c, x, ids, w);
      ASSERT_TRUE(close_to_reference(one, want, c.n));
      // Expert order: the same rows at their places in the sort.
      expect_expert_order_of(
          run_gather_ordered(detail::backend_for(mxfp4::Device::cpu()), c, x, ids, w), one,
          experts_of, c.experts, c.n);
      if (isa == supported_isas().front()) {
        const Buffer ref = run_gather(detail::reference_backend(), c, x, ids, w);
        expect_expert_order_of(run_gather_ordered(detail::reference_backend(), c, x, ids, w), ref,
                               experts_of, c.experts, c.n);
      }
      if (tasks <= 1) continue;
      for (int threads : {2, 3, 8}) {
        mxfp4::set_num_threads(threads);
        const Buffer got = run_gather(detail::backend_for(mxfp4::Device::cpu()), c, x, ids, w);
        ASSERT_EQ(got.bytes, one.bytes) << threads << " threads";
      }
    }
  }
  EXPECT_GE(multi_task_cases, 20);
}

// Expert order with no pairs still writes offsets (all zero), on the reference and the CPU
// backend; its perm is empty (a null pointer).
TEST(CpuGather, ExpertOrderOfNoPairsWritesZeroOffsets) {
  const Weight w = make_weight(3, 5, 64, false, DType::f32, 77);
  for (const detail::Backend* backend :
       {&detail::reference_backend(), &detail::backend_for(mxfp4::Device::cpu())}) {
    std::vector<std::int32_t> offsets(4, -7);
    detail::GatherLinearArgs a{};
    a.x_dtype = DType::f32;
    a.tokens = 0;
    a.topk = 2;
    a.index_dtype = DType::i32;
    a.w = w.args();
    a.order_offsets = offsets.data();
    backend->gather_linear(a);
    EXPECT_EQ(offsets, (std::vector<std::int32_t>{0, 0, 0, 0})) << backend->name;
  }
}

// ---- how work is split --------------------------------------------------------------------------

TEST(CpuSplit, TilesCoverTheBatchInWholeColumnQuanta) {
  for (std::int64_t rows : {1, 2, 16, 255, 256, 257, 513, 4096}) {
    for (std::int64_t n : {1, 63, 64, 65, 200, 2880, 5760}) {
      for (std::int64_t k : {32, 2880}) {
        const cpu::MatmulSplit s = cpu::split_matmul(rows, n, k);
        SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(n) + " x " + std::to_string(k));
        ASSERT_GE(s.row_chunk, 1);
        ASSERT_LE(s.row_chunk, 256);
        ASSERT_EQ(s.row_chunks, (rows + s.row_chunk - 1) / s.row_chunk);
        ASSERT_TRUE(s.col_chunk == n || s.col_chunk % 64 == 0);
        ASSERT_EQ(s.col_chunks, (n + s.col_chunk - 1) / s.col_chunk);
        if (rows > 256) {
          EXPECT_EQ(s.row_chunk % 16, 0);
        }
      }
    }
  }
  // Decode of a GPT-OSS expert is spread over many tasks; a tiny matmul is one.
  EXPECT_GE(cpu::split_matmul(1, 2880, 2880).col_chunks, 16);
  EXPECT_EQ(cpu::split_matmul(3, 200, 32).col_chunks, 1);
  EXPECT_EQ(cpu::rows_per_task(2880), 11);
  EXPECT_EQ(cpu::rows_per_task(1 << 20), 1);
}

// ---- instruction sets ---------------------------------------------------------------------------

const std::vector<std::string> kAvx2Set = {"avx", "avx2", "fma", "f16c", "bmi2"};
std::vector<std::string> avx512_set() {
  std::vector<std::string> s = kAvx2Set;
  for (const char* f : {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi"})
    s.emplace_back(f);
  return s;
}
constexpr std::uint64_t kXcr0All = 0xE7;  // x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM

TEST(CpuFeatures, LevelsFollowCpuidAndTheOsEnabledState) {
  using cpu::Isa;
  if (!cpu::x86_kernels_built()) {
    // Without x86 kernels no x86 level runs, whatever the features say: neon on AArch64 builds
    // (every AArch64 CPU has it), else scalar.
    const Isa best = cpu::neon_kernels_built() ? Isa::neon : Isa::scalar;
    EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features(avx512_set(), kXcr0All)), best);
    EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features({}, 0)), best);
    EXPECT_EQ(mxfp4::cpu_isa_supported(), static_cast<CpuIsa>(best));
    EXPECT_FALSE(
        cpu::missing_features(cpu::make_cpu_features(avx512_set(), kXcr0All), Isa::avx2).empty());
    GTEST_SKIP() << "not an x86-64 build";
  }
  // neon needs an AArch64 build, whatever the features say.
  EXPECT_EQ(cpu::missing_features(cpu::make_cpu_features(avx512_set(), kXcr0All), Isa::neon).size(),
            1u);
  EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features(avx512_set(), kXcr0All)), Isa::avx512);
  EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features(kAvx2Set, kXcr0All)), Isa::avx2);
  EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features({}, kXcr0All)), Isa::scalar);
  // The OS saves YMM but not ZMM state: AVX-512 code would fault.
  EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features(avx512_set(), 0x7)), Isa::avx2);
  // No XSAVE support from the OS at all: nothing beyond scalar.
  EXPECT_EQ(cpu::best_isa(cpu::make_cpu_features(avx512_set(), 0)), Isa::scalar);
  // Each required feature matters.
  for (const std::string& drop : avx512_set()) {
    std::vector<std::string> names;
    for (const std::string& f : avx512_set())
      if (f != drop) names.push_back(f);
    const cpu::CpuFeatures f = cpu::make_cpu_features(names, kXcr0All);
    EXPECT_EQ(cpu::missing_features(f, Isa::avx512), std::vector<std::string>{drop});
    EXPECT_NE(cpu::best_isa(f), Isa::avx512) << drop;
  }
  const auto missing = cpu::missing_features(cpu::make_cpu_features(kAvx2Set, 0x7), Isa::avx512);
  ASSERT_EQ(missing.size(), 6u);
  EXPECT_NE(missing.back().find("ZMM"), std::string::npos) << missing.back();
  EXPECT_TRUE(cpu::missing_features(cpu::make_cpu_features({}, 0), Isa::scalar).empty());
  EXPECT_THROW(cpu::make_cpu_features({"avx9"}, 0), mxfp4::InvalidArgument);
}

TEST(CpuFeatures, UnsupportedLevelsThrowNamingWhatIsMissing) {
  CpuSettingsGuard guard;
  const CpuIsa before = mxfp4::cpu_isa();
  // On this machine: every level it does not run (above the supported one, or of the other
  // architecture).
  const std::vector<CpuIsa> runs = supported_isas();
  for (CpuIsa isa : {CpuIsa::avx2, CpuIsa::avx512, CpuIsa::neon}) {
    if (std::find(runs.begin(), runs.end(), isa) != runs.end()) continue;
    EXPECT_THROW(mxfp4::set_cpu_isa(isa), mxfp4::Unsupported) << mxfp4::cpu_isa_name(isa);
  }
  // And on a machine without AVX-512 VBMI (set_cpu_isa's check, with other features).
  std::vector<std::string> names = avx512_set();
  names.erase(std::find(names.begin(), names.end(), "avx512vbmi"));
  try {
    cpu::require_isa(cpu::make_cpu_features(names, kXcr0All), cpu::Isa::avx512,
                     "set_cpu_isa(avx512)");
    ADD_FAILURE() << "no Unsupported";
  } catch (const mxfp4::Unsupported& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("set_cpu_isa(avx512): ", 0), 0u) << what;
    EXPECT_NE(what.find(cpu::x86_kernels_built() ? "avx512vbmi" : "x86-64"), std::string::npos)
        << what;
    EXPECT_EQ(what.find("avx512bw"), std::string::npos) << what;
  }
  EXPECT_NO_THROW(cpu::require_isa(cpu::make_cpu_features({}, 0), cpu::Isa::scalar, "x"));
  EXPECT_THROW(mxfp4::set_cpu_isa(static_cast<CpuIsa>(4)), mxfp4::InvalidArgument);
  EXPECT_EQ(mxfp4::cpu_isa(), before);  // a refused request changes nothing
}

// Linux's view of CPUID (/proc/cpuinfo flags, under its own names) agrees with ours: every flag
// it lists is detected, and every feature the kernel tables need is detected only if listed.
// (A wrong bit that this CPU happens to have set too goes unnoticed here.)
TEST(CpuFeatures, DetectionAgreesWithProcCpuinfo) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;)
      flags.insert(w);
    break;
  }
  if (flags.empty() || !cpu::x86_kernels_built()) GTEST_SKIP() << "no x86 /proc/cpuinfo flags";
  const auto linux_name = [](const std::string& f) -> std::string {
    if (f == "bmi") return "bmi1";
    if (f == "avxvnni") return "avx_vnni";
    for (const char* suffix : {"vnni", "vbmi2", "bitalg", "vpopcntdq", "fp16", "bf16"}) {
      if (f == std::string("avx512") + suffix) return std::string("avx512_") + suffix;
    }
    return f;
  };
  const cpu::CpuFeatures& host = cpu::host_cpu_features();
  const std::vector<std::string> needed = avx512_set();
  std::vector<std::string> listed;
  for (const std::string& f : cpu::known_cpu_features()) {
    const bool in_cpuinfo = flags.count(linux_name(f)) == 1;
    if (in_cpuinfo) {
      EXPECT_TRUE(cpu::has_feature(host, f)) << f;
      listed.push_back(f);
    } else if (std::find(needed.begin(), needed.end(), f) != needed.end() &&
               (host.xcr0 & kXcr0All) == kXcr0All) {  // else Linux hides what the OS disabled
      EXPECT_FALSE(cpu::has_feature(host, f)) << f;
    }
  }
  const cpu::CpuFeatures cpuinfo = cpu::make_cpu_features(listed, host.xcr0);
  EXPECT_EQ(cpu::best_isa(host), cpu::best_isa(cpuinfo));
  EXPECT_EQ(mxfp4::cpu_isa_supported(), static_cast<CpuIsa>(cpu::best_isa(host)));
}

TEST(CpuIsaSelection, SetCpuIsaSwitchesTheBackendAndNamesAreStable) {
  CpuSettingsGuard guard;
  EXPECT_STREQ(mxfp4::cpu_isa_name(CpuIsa::scalar), "scalar");
  EXPECT_STREQ(mxfp4::cpu_isa_name(CpuIsa::avx2), "avx2");
  EXPECT_STREQ(mxfp4::cpu_isa_name(CpuIsa::avx512), "avx512");
  EXPECT_STREQ(mxfp4::cpu_isa_name(CpuIsa::neon), "neon");
  EXPECT_EQ(static_cast<int>(CpuIsa::neon), 3);  // part of the API: appended
  EXPECT_STREQ(mxfp4::cpu_isa_name(static_cast<CpuIsa>(9)), "unknown");
  if (mxfp4::cpu_isa_supported() != CpuIsa::neon) {
    EXPECT_LE(mxfp4::cpu_isa(), mxfp4::cpu_isa_supported());
  }
  for (CpuIsa isa : supported_isas()) {
    use_isa(isa);
    // Chosen once: the same table object on every call until the next set_cpu_isa.
    EXPECT_EQ(&detail::backend_for(mxfp4::Device::cpu()),
              &detail::backend_for(mxfp4::Device::cpu()));
  }
  // The reference stays available beside it (the oracle).
  EXPECT_STREQ(detail::reference_backend().name, "reference");
}

TEST(CpuIsaSelection, EnvironmentValuesAreParsed) {
  using cpu::Isa;
  const auto choice = [](const char* v, Isa supported) { return cpu::parse_isa_env(v, supported); };
  EXPECT_EQ(choice(nullptr, Isa::avx512).isa, Isa::avx512);
  EXPECT_TRUE(choice(nullptr, Isa::avx512).warning.empty());
  EXPECT_EQ(choice("", Isa::avx2).isa, Isa::avx2);
  EXPECT_EQ(choice("scalar", Isa::avx512).isa, Isa::scalar);
  EXPECT_EQ(choice("AVX2", Isa::avx512).isa, Isa::avx2);
  EXPECT_TRUE(choice("avx2", Isa::avx512).warning.empty());
  EXPECT_EQ(choice("avx512", Isa::avx512).isa, Isa::avx512);
  // Above the machine: lowered, with a warning.
  const cpu::IsaChoice above = choice("avx512", Isa::avx2);
  EXPECT_EQ(above.isa, Isa::avx2);
  EXPECT_NE(above.warning.find("MXFP4_CPU_ISA=avx512"), std::string::npos) << above.warning;
  EXPECT_EQ(choice("avx2", Isa::scalar).isa, Isa::scalar);
  // neon: on AArch64 (where it is the best), and lowered elsewhere; x86 levels lowered there.
  EXPECT_EQ(choice("neon", Isa::neon).isa, Isa::neon);
  EXPECT_TRUE(choice("NEON", Isa::neon).warning.empty());
  EXPECT_EQ(choice("scalar", Isa::neon).isa, Isa::scalar);
  EXPECT_TRUE(choice("scalar", Isa::neon).warning.empty());
  for (const char* x86 : {"avx2", "avx512"}) {
    const cpu::IsaChoice c = choice(x86, Isa::neon);
    EXPECT_EQ(c.isa, Isa::neon) << x86;
    EXPECT_NE(c.warning.find(std::string("MXFP4_CPU_ISA=") + x86), std::string::npos) << c.warning;
  }
  EXPECT_EQ(choice("neon", Isa::avx512).isa, Isa::avx512);
  EXPECT_FALSE(choice("neon", Isa::avx512).warning.empty());
  EXPECT_EQ(choice("neon", Isa::scalar).isa, Isa::scalar);
  // Unknown: ignored, with a warning naming the accepted values.
  for (const char* bad : {"sse4", "avx-512", " avx2", "1"}) {
    const cpu::IsaChoice c = choice(bad, Isa::avx2);
    EXPECT_EQ(c.isa, Isa::avx2) << bad;
    EXPECT_NE(c.warning.find("scalar, avx2, avx512"), std::string::npos) << c.warning;
  }

  EXPECT_EQ(cpu::parse_threads_env(nullptr, 6).threads, 6);
  EXPECT_EQ(cpu::parse_threads_env("", 6).threads, 6);
  EXPECT_EQ(cpu::parse_threads_env("4", 6).threads, 4);
  EXPECT_TRUE(cpu::parse_threads_env("4", 6).warning.empty());
  EXPECT_EQ(cpu::parse_threads_env("1", 6).threads, 1);
  EXPECT_EQ(cpu::parse_threads_env("0", 6).threads, 6);
  EXPECT_EQ(cpu::parse_threads_env("1024", 6).threads, 1024);
  for (const char* bad : {"-1", "abc", "4x", " 4", "1025", "99999999999", "2.5"}) {
    const cpu::ThreadsChoice c = cpu::parse_threads_env(bad, 6);
    EXPECT_EQ(c.threads, 6) << bad;
    EXPECT_NE(c.warning.find("MXFP4_NUM_THREADS="), std::string::npos) << bad;
  }
}

// ---- threads ------------------------------------------------------------------------------------

TEST(CpuThreads, SetNumThreadsValidatesAndZeroMeansTheMachine) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(3);
  EXPECT_EQ(mxfp4::num_threads(), 3);
  mxfp4::set_num_threads(0);
  EXPECT_EQ(mxfp4::num_threads(), cpu::hardware_threads());
  EXPECT_GE(cpu::hardware_threads(), 1);
  EXPECT_THROW(mxfp4::set_num_threads(-1), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4::set_num_threads(1025), mxfp4::InvalidArgument);
  EXPECT_EQ(mxfp4::num_threads(), cpu::hardware_threads());
}

TEST(CpuThreads, ParallelForRunsEveryTaskOnce) {
  CpuSettingsGuard guard;
  for (int threads : {1, 2, 3, 8, 2, 1}) {
    mxfp4::set_num_threads(threads);
    for (std::int64_t tasks : {0, 1, 2, 7, 1000}) {
      std::vector<std::atomic<int>> runs(static_cast<std::size_t>(tasks));
      cpu::parallel_for(tasks, [&](std::int64_t i) {
        runs[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
      });
      for (std::int64_t i = 0; i < tasks; ++i)
        ASSERT_EQ(runs[static_cast<std::size_t>(i)].load(), 1) << threads << " threads, task " << i;
    }
  }
}

TEST(CpuThreads, WorkersRunTasksBesideTheCaller) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(3);
  // Each task waits for the other: only two threads running at once finish both.
  std::atomic<int> arrived{0};
  std::atomic<bool> timed_out{false};
  std::vector<std::thread::id> ids(2);
  cpu::parallel_for(2, [&](std::int64_t i) {
    ids[static_cast<std::size_t>(i)] = std::this_thread::get_id();
    arrived.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (arrived.load() < 2) {
      if (std::chrono::steady_clock::now() > deadline) {
        timed_out = true;
        return;
      }
      std::this_thread::yield();
    }
  });
  EXPECT_FALSE(timed_out.load());
  EXPECT_NE(ids[0], ids[1]);
}

TEST(CpuThreads, NestedCallsRunInlineOnTheTaskThread) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(4);
  std::atomic<int> wrong_thread{0};
  std::atomic<int> inner_runs{0};
  cpu::parallel_for(16, [&](std::int64_t) {
    const std::thread::id outer = std::this_thread::get_id();
    cpu::parallel_for(50, [&](std::int64_t) {
      if (std::this_thread::get_id() != outer) wrong_thread.fetch_add(1);
      inner_runs.fetch_add(1);
    });
  });
  EXPECT_EQ(wrong_thread.load(), 0);
  EXPECT_EQ(inner_runs.load(), 16 * 50);
}

TEST(CpuThreads, ExceptionsReachTheCallerAndThePoolKeepsWorking) {
  CpuSettingsGuard guard;
  for (int threads : {1, 3}) {
    mxfp4::set_num_threads(threads);
    std::atomic<int> ran{0};
    try {
      cpu::parallel_for(200, [&](std::int64_t i) {
        ran.fetch_add(1);
        if (i == 37) throw mxfp4::InvalidArgument("task 37 failed");
      });
      ADD_FAILURE() << "no exception";
    } catch (const mxfp4::InvalidArgument& e) {
      EXPECT_STREQ(e.what(), "task 37 failed");
    }
    EXPECT_GE(ran.load(), 38);
    EXPECT_THROW(cpu::parallel_for(5, [](std::int64_t) { throw std::runtime_error("all"); }),
                 std::runtime_error);
    std::atomic<std::int64_t> sum{0};
    cpu::parallel_for(100, [&](std::int64_t i) { sum.fetch_add(i); });
    EXPECT_EQ(sum.load(), 4950) << threads << " threads";
  }
}

// Callers on threads of their own: each call still gets every task done (through the pool or
// inline when another caller holds it), with the same results as alone.
TEST(CpuThreads, ConcurrentCallersGetTheSameResults) {
  CpuSettingsGuard guard;
  mxfp4::set_num_threads(3);
  const std::int64_t m = 3;
  const Weight w = make_weight(1, 200, 2880, true, DType::f32, 11);
  const Buffer x = random_activations(DType::f32, m * w.k, 12);
  const Buffer want = run_linear(detail::backend_for(mxfp4::Device::cpu()), x, m, w);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 3; ++t) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 4; ++rep) {
        const Buffer got = run_linear(detail::backend_for(mxfp4::Device::cpu()), x, m, w);
        if (got.bytes != want.bytes) mismatches.fetch_add(1);
      }
    });
  }
  for (std::thread& t : callers)
    t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
