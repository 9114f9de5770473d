// RunOptions::precision = int8_activations on the CPU:
// - quantize_int8_row against its definition (int8_rows.hpp): scales, rounding, the row layout,
//   zero / tiny / non-finite blocks;
// - every int8 kernel this machine runs (the scalar table's definition, the avx2 and avx512
//   tables' entries, and the AVX-512 VNNI kernel called directly) against the scalar one, bit for
//   bit, on awkward shapes (K = 32, odd N, M up to 17, several experts), with zero blocks,
//   outliers, extreme and NaN scales, and any split of columns and rows;
// - linear and gather_linear through the public API: every instruction set and thread count
//   gives the same bits, bias and dtypes included;
// - the error against the exact path stays within the bound derived from the rounding of x
//   (docs/cpu-int8.md), and is only f32 rounding when x is exactly representable.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/convert.hpp"
#include "core/kernel_args.hpp"
#include "cpu/cpu_features.hpp"
#include "cpu/cpu_kernels.hpp"
#include "cpu/int8_rows.hpp"
#include "mxfp4/cpu.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/format.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/weight.hpp"

namespace {

using mxfp4::CpuIsa;
using mxfp4::DType;
using mxfp4::Precision;
using mxfp4::RunOptions;
using mxfp4::Tensor;
using mxfp4::cpu::int8_row_bytes;
using mxfp4::cpu::Int8RowBatch;
using std::int64_t;
using std::uint8_t;

using Int8Kernel = void (*)(const Int8RowBatch&, const mxfp4::detail::WeightArgs&, int64_t, int64_t,
                            int64_t);

struct NamedKernel {
  std::string name;
  Int8Kernel fn;
};

// Every int8 kernel this machine runs, the scalar definition first.
std::vector<NamedKernel> kernels_to_test() {
  std::vector<NamedKernel> out{{"scalar", mxfp4::cpu::scalar_kernels().matmul_rows_int8}};
#if defined(__x86_64__)
  const CpuIsa best = mxfp4::cpu_isa_supported();
  if (best == CpuIsa::avx2 || best == CpuIsa::avx512)
    out.push_back({"avx2", mxfp4::cpu::avx2_kernels().matmul_rows_int8});
  if (best == CpuIsa::avx512)
    out.push_back({"avx512", mxfp4::cpu::avx512_kernels().matmul_rows_int8});
  if (mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::host_cpu_features()))
    out.push_back({"avx512vnni", &mxfp4::cpu::matmul_rows_int8_avx512vnni});
#endif
  return out;
}

std::vector<CpuIsa> isas_to_test() {
  std::vector<CpuIsa> out{CpuIsa::scalar};
  const CpuIsa best = mxfp4::cpu_isa_supported();
  if (best == CpuIsa::avx512) out.push_back(CpuIsa::avx2);
  if (best != CpuIsa::scalar) out.push_back(best);
  return out;
}

bool same_bits(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  std::uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  return ua == ub;
}

// Restores the instruction set and thread count a test changed.
struct CpuStateGuard {
  CpuIsa isa = mxfp4::cpu_isa();
  int threads = mxfp4::num_threads();
  ~CpuStateGuard() {
    mxfp4::set_cpu_isa(isa);
    mxfp4::set_num_threads(threads);
  }
};

// Activation rows with the awkward cases: Gaussian blocks, all-zero blocks, single outliers,
// blocks of subnormals, and a huge block.
std::vector<float> random_x(std::mt19937& g, int64_t rows, int64_t k) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 9);
  std::vector<float> x(static_cast<std::size_t>(rows * k));
  for (int64_t b = 0; b < rows * k / 32; ++b) {
    const int c = kind(g);
    for (int j = 0; j < 32; ++j) {
      float v = normal(g);
      if (c == 0) v = 0.0f;
      if (c == 1 && j == 7) v *= 1000.0f;
      if (c == 2) v *= 1e-41f;
      if (c == 3) v *= 1e30f;
      x[static_cast<std::size_t>(b * 32 + j)] = v;
    }
  }
  return x;
}

struct RandomWeight {
  std::vector<uint8_t> blocks, scales;
  int64_t experts, n, k;
  mxfp4::detail::WeightArgs args() const {
    return {blocks.data(), scales.data(), nullptr, DType::f32, experts, n, k};
  }
};

// Random codes (a few all-zero blocks); scales mostly near 2^0, some at the E8M0 extremes (0, 1,
// 254) and, when `nan_scales`, some 0xFF.
RandomWeight random_weight(std::mt19937& g, int64_t experts, int64_t n, int64_t k,
                           bool nan_scales) {
  RandomWeight w{std::vector<uint8_t>(static_cast<std::size_t>(experts * n * k / 2)),
                 std::vector<uint8_t>(static_cast<std::size_t>(experts * n * k / 32)), experts, n,
                 k};
  std::uniform_int_distribution<int> byte(0, 255), scale(118, 134), pick(0, 49);
  for (auto& c : w.blocks)
    c = static_cast<uint8_t>(byte(g));
  for (std::size_t b = 0; b < w.scales.size(); ++b) {
    const int p = pick(g);
    w.scales[b] = static_cast<uint8_t>(p == 0                   ? 0
                                       : p == 1                 ? 1
                                       : p == 2                 ? 254
                                       : (p == 3 && nan_scales) ? 255
                                                                : scale(g));
    if (p == 4) std::fill_n(w.blocks.begin() + static_cast<std::ptrdiff_t>(b * 16), 16, 0);
  }
  return w;
}

struct QuantizedRows {
  std::vector<std::int32_t> storage;  // 4-byte aligned
  std::vector<const std::int8_t*> rows;
  QuantizedRows(const std::vector<float>& x, int64_t count, int64_t k)
      : storage(static_cast<std::size_t>(count * int8_row_bytes(k) / 4)) {
    auto* base = reinterpret_cast<std::int8_t*>(storage.data());
    for (int64_t i = 0; i < count; ++i) {
      mxfp4::cpu::quantize_int8_row(x.data() + i * k, DType::f32, k, base + i * int8_row_bytes(k));
      rows.push_back(base + i * int8_row_bytes(k));
    }
  }
};

// The kernel's output for rows [r0, r1) and columns [n0, n1) of one expert.
std::vector<float> run_kernel(Int8Kernel fn, const QuantizedRows& q, int64_t r0, int64_t r1,
                              const RandomWeight& w, int64_t expert, int64_t n0, int64_t n1) {
  std::vector<float> out(static_cast<std::size_t>((r1 - r0) * (n1 - n0)), -1.0f);
  std::vector<float*> out_rows;
  for (int64_t r = r0; r < r1; ++r)
    out_rows.push_back(out.data() + (r - r0) * (n1 - n0));
  const Int8RowBatch batch{q.rows.data() + r0, out_rows.data(), r1 - r0};
  fn(batch, w.args(), expert, n0, n1);
  return out;
}

TEST(Int8Rows, QuantizeRowFollowsItsDefinition) {
  const int64_t k = 96;
  std::vector<float> x(k, 0.0f);
  for (int j = 0; j < 32; ++j)
    x[j] = static_cast<float>(j - 16) * 0.25f;  // block 0: max |x| = 4
  // block 1 all zero; block 2: a NaN
  for (int j = 64; j < 96; ++j)
    x[j] = 1.0f;
  x[70] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::int32_t> storage(int8_row_bytes(k) / 4);
  auto* row = reinterpret_cast<std::int8_t*>(storage.data());
  mxfp4::cpu::quantize_int8_row(x.data(), DType::f32, k, row);
  const std::int8_t* even = row;
  const int64_t section = mxfp4::cpu::int8_section_bytes(k);
  ASSERT_EQ(section, 64);  // K/2 = 48 bytes, padded
  const std::int8_t* odd = row + section;
  const std::int32_t* offset_fix = storage.data() + 2 * section / 4;
  const auto* lane_scale = reinterpret_cast<const float*>(storage.data() + 3 * section / 4);
  const float d = static_cast<float>(4.0 / 127.0);
  for (int j = 0; j < 32; ++j) {
    const auto q = static_cast<int>(
        std::nearbyint(static_cast<double>(x[j]) * (1.0 / static_cast<double>(d))));
    EXPECT_EQ((j % 2 == 0 ? even[j / 2] : odd[j / 2]), q) << "element " << j;
  }
  EXPECT_EQ(even[0], -127);  // -16 * 0.25 = -4 -> -127
  for (int l = 0; l < 4; ++l) {
    EXPECT_EQ(lane_scale[l], d);
    int sum = 0;
    for (int j = 8 * l; j < 8 * l + 8; ++j)
      sum += j % 2 == 0 ? even[j / 2] : odd[j / 2];
    EXPECT_EQ(offset_fix[l], -12 * sum) << "lane " << l;
  }
  for (int l = 4; l < 8; ++l) {
    EXPECT_EQ(lane_scale[l], 0.0f);
    EXPECT_EQ(offset_fix[l], 0);
  }
  for (int l = 8; l < 12; ++l) {
    EXPECT_TRUE(std::isnan(lane_scale[l]));
    EXPECT_EQ(offset_fix[l], 0);
  }
  for (int j = 16; j < section; ++j) {  // zero and NaN blocks, then the padding
    EXPECT_EQ(even[j], 0);
    EXPECT_EQ(odd[j], 0);
  }
  for (int l = 12; l < section / 4; ++l) {
    EXPECT_EQ(offset_fix[l], 0);
    EXPECT_EQ(lane_scale[l], 0.0f);
  }
}

TEST(Int8Rows, BlockOfSubnormalsTooSmallForAScaleIsZero) {
  std::vector<float> x(32, std::numeric_limits<float>::denorm_min());
  std::vector<std::int32_t> storage(int8_row_bytes(32) / 4);
  auto* row = reinterpret_cast<std::int8_t*>(storage.data());
  mxfp4::cpu::quantize_int8_row(x.data(), DType::f32, 32, row);
  for (int j = 0; j < 32; ++j)
    EXPECT_EQ(row[j], 0);
  EXPECT_EQ(reinterpret_cast<const float*>(storage.data() + 3 * 64 / 4)[0], 0.0f);
}

// The optimized kernels against the scalar definition, bit for bit.
TEST(Int8Kernels, MatchTheScalarDefinitionBitForBit) {
  const std::vector<NamedKernel> kernels = kernels_to_test();
  std::mt19937 g(1234);
  struct Shape {
    int64_t experts, n, k, m;
  };
  const Shape shapes[] = {{1, 1, 32, 1},    {1, 7, 32, 3},    {1, 33, 64, 17},  {2, 5, 96, 2},
                          {1, 3, 160, 5},   {3, 9, 256, 8},   {1, 65, 544, 9},  {1, 2, 2080, 16},
                          {1, 17, 1024, 4}, {2, 31, 4128, 1}, {1, 11, 480, 12}, {1, 4, 2048, 13}};
  for (const Shape& s : shapes) {
    for (const bool nan_scales : {false, true}) {
      const RandomWeight w = random_weight(g, s.experts, s.n, s.k, nan_scales);
      const QuantizedRows q(random_x(g, s.m, s.k), s.m, s.k);
      for (int64_t e = 0; e < s.experts; ++e) {
        const std::vector<float> want = run_kernel(kernels[0].fn, q, 0, s.m, w, e, 0, s.n);
        for (std::size_t t = 1; t < kernels.size(); ++t) {
          const std::vector<float> got = run_kernel(kernels[t].fn, q, 0, s.m, w, e, 0, s.n);
          for (std::size_t i = 0; i < want.size(); ++i) {
            ASSERT_TRUE(same_bits(got[i], want[i]))
                << kernels[t].name << " K=" << s.k << " N=" << s.n << " M=" << s.m << " expert "
                << e << " row " << i / s.n << " col " << i % s.n << ": " << got[i] << " vs "
                << want[i];
          }
        }
      }
    }
  }
}

// Any column range and any subset of rows gives the same bits as the whole call.
TEST(Int8Kernels, OutputDoesNotDependOnTheSplit) {
  std::mt19937 g(99);
  const int64_t n = 37, k = 352, m = 11;
  const RandomWeight w = random_weight(g, 1, n, k, false);
  const QuantizedRows q(random_x(g, m, k), m, k);
  for (const NamedKernel& kn : kernels_to_test()) {
    const std::vector<float> whole = run_kernel(kn.fn, q, 0, m, w, 0, 0, n);
    for (const auto& [r0, r1, n0, n1] : std::vector<std::array<int64_t, 4>>{
             {0, 1, 0, n}, {3, 11, 5, 6}, {1, 10, 17, 37}, {5, 6, 0, 13}}) {
      const std::vector<float> part = run_kernel(kn.fn, q, r0, r1, w, 0, n0, n1);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = n0; c < n1; ++c) {
          ASSERT_TRUE(same_bits(part[static_cast<std::size_t>((r - r0) * (n1 - n0) + c - n0)],
                                whole[static_cast<std::size_t>(r * n + c)]))
              << kn.name << " rows [" << r0 << ", " << r1 << ") cols [" << n0 << ", " << n1
              << ") at " << r << ", " << c;
        }
      }
    }
  }
}

Tensor random_tensor(std::mt19937& g, mxfp4::Shape shape, DType dtype) {
  int64_t count = 1;
  for (const int64_t d : shape)
    count *= d;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (float& f : v)
    f = normal(g);
  return Tensor::from_vector(v, std::move(shape)).to(dtype);
}

mxfp4::Mxfp4Weight random_mxfp4(std::mt19937& g, mxfp4::Shape shape, bool bias) {
  const Tensor w = random_tensor(g, shape, DType::f32);
  if (!bias) return mxfp4::Mxfp4Weight::quantize(w);
  mxfp4::Shape bias_shape(shape.begin(), shape.end() - 1);
  return mxfp4::Mxfp4Weight::quantize(w, random_tensor(g, bias_shape, DType::bf16));
}

void expect_same_tensor(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  const Tensor a = got.to(DType::f32), b = want.to(DType::f32);
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_TRUE(same_bits(a.data_as<float>()[i], b.data_as<float>()[i]))
        << what << " element " << i << ": " << a.data_as<float>()[i] << " vs "
        << b.data_as<float>()[i];
  }
}

// linear and gather_linear through the API: every ISA and thread count gives the same bits.
TEST(Int8Api, SameBitsOnEveryIsaAndThreadCount) {
  const CpuStateGuard guard;
  std::mt19937 g(7);
  RunOptions int8;
  int8.precision = Precision::int8_activations;
  const mxfp4::Mxfp4Weight dense = random_mxfp4(g, {131, 320}, true);
  const mxfp4::Mxfp4Weight stacked = random_mxfp4(g, {5, 67, 128}, true);
  const Tensor ids =
      Tensor::from_vector(std::vector<std::int32_t>{0, 4, 4, 1, 2, 0, 3, 4, 1}, {3, 3});
  for (const DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const int64_t m : {int64_t{1}, int64_t{8}, int64_t{17}}) {
      const Tensor x = random_tensor(g, {m, 320}, dtype);
      const Tensor xt = random_tensor(g, {3, 128}, dtype);
      const Tensor xs = random_tensor(g, {3, 3, 128}, dtype);
      mxfp4::set_cpu_isa(CpuIsa::scalar);
      mxfp4::set_num_threads(1);
      const Tensor want = mxfp4::linear(x, dense, int8);
      const Tensor want_t = mxfp4::gather_linear(xt, ids, stacked, int8);
      const Tensor want_s = mxfp4::gather_linear(xs, ids, stacked, int8);
      for (const CpuIsa isa : isas_to_test()) {
        for (const int threads : {1, 2, 3}) {
          mxfp4::set_cpu_isa(isa);
          mxfp4::set_num_threads(threads);
          const std::string what =
              std::string(mxfp4::cpu_isa_name(isa)) + " threads " + std::to_string(threads) + " " +
              std::string(mxfp4::dtype_name(dtype)) + " M=" + std::to_string(m);
          expect_same_tensor(mxfp4::linear(x, dense, int8), want, "linear " + what);
          expect_same_tensor(mxfp4::gather_linear(xt, ids, stacked, int8), want_t,
                             "gather [T, K] " + what);
          expect_same_tensor(mxfp4::gather_linear(xs, ids, stacked, int8), want_s,
                             "gather [T, topk, K] " + what);
        }
      }
    }
  }
}

// gather_linear's int8 result for a slot equals linear's on that slot's expert.
TEST(Int8Api, GatherEqualsLinearPerExpert) {
  std::mt19937 g(11);
  RunOptions int8;
  int8.precision = Precision::int8_activations;
  const mxfp4::Mxfp4Weight stacked = random_mxfp4(g, {3, 45, 96}, true);
  const Tensor x = random_tensor(g, {2, 96}, DType::f32);
  const Tensor ids = Tensor::from_vector(std::vector<std::int64_t>{2, 0, 1, 2}, {2, 2});
  const Tensor y = mxfp4::gather_linear(x, ids, stacked, int8);
  for (int64_t t = 0; t < 2; ++t) {
    for (int64_t s = 0; s < 2; ++s) {
      const int64_t e = ids.data_as<std::int64_t>()[t * 2 + s];
      const mxfp4::Mxfp4Weight one =
          mxfp4::Mxfp4Weight::from_parts(stacked.blocks().slice_rows(e, e + 1).reshape({45, 48}),
                                         stacked.scales().slice_rows(e, e + 1).reshape({45, 3}),
                                         stacked.bias()->slice_rows(e, e + 1).reshape({45}));
      const Tensor yl = mxfp4::linear(x.slice_rows(t, t + 1), one, int8);
      for (int64_t c = 0; c < 45; ++c) {
        ASSERT_TRUE(same_bits(y.data_as<float>()[(t * 2 + s) * 45 + c], yl.data_as<float>()[c]))
            << "token " << t << " slot " << s << " col " << c;
      }
    }
  }
}

// Error against the exact path, per output element:
//   |y8 - y| <= sum_b (d_b / 2) sum_{j in b} |w_j|  +  2 (K + 32) 2^-24 sum_j (|x_j| + d_j) |w_j|
// (the first term: |x - q d| <= d / 2 for every element; the second: f32 rounding of both paths).
// With x exactly representable (q d == x), only the second term remains.
void check_error_bound(const Tensor& x, const mxfp4::Mxfp4Weight& w, bool representable) {
  RunOptions int8;
  int8.precision = Precision::int8_activations;
  const Tensor exact = mxfp4::linear(x, w);
  const Tensor approx = mxfp4::linear(x, w, int8);
  const Tensor wf = mxfp4::dequantize(w);
  const int64_t m = x.dim(0), k = x.dim(1), n = wf.dim(0);
  const float* xv = x.data_as<float>();
  const float* wv = wf.data_as<float>();
  double worst = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    std::vector<double> d(static_cast<std::size_t>(k / 32));
    for (int64_t b = 0; b < k / 32; ++b) {
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j)
        amax = std::max(amax, std::fabs(xv[i * k + b * 32 + j]));
      d[static_cast<std::size_t>(b)] = static_cast<float>(static_cast<double>(amax) / 127.0);
    }
    for (int64_t c = 0; c < n; ++c) {
      double rounding_x = 0.0, magnitude = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const double aw = std::fabs(static_cast<double>(wv[c * k + j]));
        const double db = d[static_cast<std::size_t>(j / 32)];
        rounding_x += db / 2 * aw;
        magnitude += (std::fabs(static_cast<double>(xv[i * k + j])) + db) * aw;
      }
      const double bound = (representable ? 0.0 : rounding_x) +
                           2.0 * static_cast<double>(k + 32) * 0x1p-24 * magnitude;
      const double err = std::fabs(static_cast<double>(approx.data_as<float>()[i * n + c]) -
                                   static_cast<double>(exact.data_as<float>()[i * n + c]));
      ASSERT_LE(err, bound) << "row " << i << " col " << c;
      worst = std::max(worst, err / bound);
    }
  }
  // The bound is not vacuous: the error uses a visible part of it on random data.
  if (!representable) {
    EXPECT_GT(worst, 0.01);
  }
}

TEST(Int8Api, ErrorAgainstExactWithinTheRoundingBound) {
  const CpuStateGuard guard;
  std::mt19937 g(5);
  const mxfp4::Mxfp4Weight w = random_mxfp4(g, {64, 1024}, false);
  const std::vector<float> xs = random_x(g, 6, 1024);
  const Tensor x = Tensor::from_vector(xs, {6, 1024});
  for (const CpuIsa isa : isas_to_test()) {
    mxfp4::set_cpu_isa(isa);
    SCOPED_TRACE(mxfp4::cpu_isa_name(isa));
    check_error_bound(x, w, false);
  }
}

TEST(Int8Api, RepresentableActivationsGiveTheExactResultUpToF32Rounding) {
  std::mt19937 g(6);
  const mxfp4::Mxfp4Weight w = random_mxfp4(g, {40, 256}, false);
  std::uniform_int_distribution<int> q(-127, 127);
  std::vector<float> xs(3 * 256);
  for (std::size_t i = 0; i < xs.size(); ++i) {
    // Each block holds +-127 once (so its scale is exactly 2^e) and integers below it.
    const float scale = std::ldexp(1.0f, static_cast<int>(i / 32 % 7) - 3);
    xs[i] = (i % 32 == 5 ? 127.0f : static_cast<float>(q(g))) * scale;
  }
  check_error_bound(Tensor::from_vector(xs, {3, 256}), w, true);
}

TEST(Int8Api, NonFiniteActivationMakesItsRowNaN) {
  std::mt19937 g(8);
  RunOptions int8;
  int8.precision = Precision::int8_activations;
  const mxfp4::Mxfp4Weight w = random_mxfp4(g, {9, 64}, false);
  std::vector<float> xs = random_x(g, 2, 64);
  xs[64 + 40] = std::numeric_limits<float>::infinity();
  const Tensor y = mxfp4::linear(Tensor::from_vector(xs, {2, 64}), w, int8);
  for (int64_t c = 0; c < 9; ++c) {
    EXPECT_FALSE(std::isnan(y.data_as<float>()[c])) << c;
    EXPECT_TRUE(std::isnan(y.data_as<float>()[9 + c])) << c;
  }
}

TEST(Int8Api, UnknownPrecisionIsRefused) {
  std::mt19937 g(9);
  const mxfp4::Mxfp4Weight w = random_mxfp4(g, {4, 32}, false);
  RunOptions bad;
  bad.precision = static_cast<Precision>(7);
  const Tensor x = random_tensor(g, {1, 32}, DType::f32);
  EXPECT_THROW(mxfp4::linear(x, w, bad), mxfp4::InvalidArgument);
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{0}, {1, 1});
  const mxfp4::Mxfp4Weight s = random_mxfp4(g, {1, 4, 32}, false);
  EXPECT_THROW(mxfp4::gather_linear(x, ids, s, bad), mxfp4::InvalidArgument);
}

TEST(Int8Kernels, VnniKernelNeedsVnniAndTheAvx512TableFeaturesAndZmmState) {
  if (!mxfp4::cpu::x86_kernels_built()) {
    EXPECT_FALSE(mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::host_cpu_features()));
    return;
  }
  const std::vector<std::string> avx512 = {"avx",      "avx2",      "fma",      "f16c",
                                           "bmi2",     "avx512f",   "avx512bw", "avx512vl",
                                           "avx512dq", "avx512vbmi"};
  std::vector<std::string> with_vnni = avx512;
  with_vnni.emplace_back("avx512vnni");
  EXPECT_TRUE(mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::make_cpu_features(with_vnni, 0xE7)));
  EXPECT_FALSE(mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::make_cpu_features(avx512, 0xE7)));
  // The OS saves no ZMM state: no AVX-512 code at all.
  EXPECT_FALSE(mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::make_cpu_features(with_vnni, 0x07)));
  std::vector<std::string> no_vbmi = with_vnni;
  no_vbmi.erase(std::find(no_vbmi.begin(), no_vbmi.end(), "avx512vbmi"));
  EXPECT_FALSE(mxfp4::cpu::avx512vnni_usable(mxfp4::cpu::make_cpu_features(no_vbmi, 0xE7)));
}

TEST(Int8Api, DefaultIsExact) {
  const RunOptions run{};
  EXPECT_EQ(run.precision, Precision::exact);
}

}  // namespace
