// The CUDA backend against the CPU reference. Skips (with the reason) where no GPU is visible;
// scripts/gpu-check runs it on a machine with one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/gpu_block_layout.hpp"
#include "core/kernel_args.hpp"
#include "mxfp4/mxfp4.hpp"

#if defined(MXFP4_TEST_CUDA_RUNTIME)
#include <cuda_runtime.h>
#endif

namespace {

using mxfp4::DType;
using mxfp4::Tensor;

#define REQUIRE_GPU()                                                                 \
  do {                                                                                \
    if (!mxfp4::cuda_built()) GTEST_SKIP() << "built without the CUDA backend";       \
    if (mxfp4::cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device is visible"; \
  } while (0)

const mxfp4::Device kGpu = mxfp4::Device::cuda(0);
using mxfp4::BlockLayout;

// The block layout of the tests' GPU weights where a test does not name one:
// MXFP4_TEST_BLOCK_LAYOUT=gpu (scripts/gpu-check runs the tests once with it, forced kernels too)
// re-lays out every weight whose scales allow it (at most 128); standard otherwise.
BlockLayout default_layout() {
  static const BlockLayout layout = [] {
    const char* env = std::getenv("MXFP4_TEST_BLOCK_LAYOUT");
    return env != nullptr ? mxfp4::parse_block_layout(env) : BlockLayout::standard;
  }();
  return layout;
}

// A weight's copy on the GPU in `layout` (the default one if not named). A weight whose scales
// the GPU layout cannot hold stays standard where the layout was not named.
mxfp4::Mxfp4Weight on_gpu(const mxfp4::Mxfp4Weight& w, std::optional<BlockLayout> layout = {}) {
  const mxfp4::Mxfp4Weight g = w.to(kGpu);
  if (layout) return g.with_layout(*layout);
  try {
    return g.with_layout(default_layout());
  } catch (const mxfp4::InvalidArgument&) {
    return g;
  }
}

// The layouts of the tests that run every weight in each: both, or the one
// MXFP4_TEST_BLOCK_LAYOUT names (gpu-check's runs, one per layout).
std::vector<BlockLayout> test_layouts() {
  if (std::getenv("MXFP4_TEST_BLOCK_LAYOUT") != nullptr) return {default_layout()};
  return {BlockLayout::standard, BlockLayout::gpu};
}
std::string layout_tag(BlockLayout layout) {
  return std::string(" layout ") + mxfp4::block_layout_name(layout);
}

// An [n, k / 2] weight's packed E2M1 bytes, every byte value equally likely.
std::vector<std::uint8_t> random_codes(std::int64_t n, std::int64_t k, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(n * k / 2));
  for (auto& c : codes)
    c = static_cast<std::uint8_t>(rng());
  return codes;
}

// Gaussian-ish values with a per-row spread of magnitudes, never zeros.
Tensor random_tensor(mxfp4::Shape shape, DType dtype, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  Tensor f = Tensor::empty(shape, DType::f32);
  float* p = f.data_as<float>();
  for (std::int64_t i = 0; i < f.numel(); ++i) {
    // Sum of uniforms: bell-shaped, deterministic across standard libraries.
    double s = 0;
    for (int j = 0; j < 4; ++j)
      s += static_cast<double>(rng() >> 11) * 0x1.0p-53 - 0.5;
    p[i] = static_cast<float>(s) * scale;
  }
  return dtype == DType::f32 ? f : f.to(dtype);
}

bool same_value(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

void expect_bytes_equal(const Tensor& cpu, const Tensor& gpu, const std::string& what) {
  const Tensor back = gpu.to(mxfp4::Device::cpu());
  ASSERT_EQ(cpu.nbytes(), back.nbytes()) << what;
  const auto* a = static_cast<const std::uint8_t*>(cpu.data());
  const auto* b = static_cast<const std::uint8_t*>(back.data());
  for (std::size_t i = 0; i < cpu.nbytes(); ++i) {
    ASSERT_EQ(a[i], b[i]) << what << ": byte " << i << " differs";
  }
}

TEST(Cuda, ReportsDevicesConsistently) {
  if (!mxfp4::cuda_built()) {
    EXPECT_EQ(mxfp4::cuda_device_count(), 0);
    EXPECT_THROW(Tensor::empty({4}, DType::f32, kGpu), mxfp4::Unsupported);
    return;
  }
  EXPECT_GE(mxfp4::cuda_device_count(), 0);
  if (mxfp4::cuda_device_count() == 0) {
    EXPECT_THROW(Tensor::empty({4}, DType::f32, kGpu), mxfp4::Unsupported);
  }
}

TEST(Cuda, CopiesRoundTrip) {
  REQUIRE_GPU();
  const Tensor h = random_tensor({3, 70}, DType::bf16, 1);
  const Tensor d = h.to(kGpu);
  EXPECT_EQ(d.device(), kGpu);
  expect_bytes_equal(h, d, "host -> device -> host");
  const Tensor d2 = d.clone();
  expect_bytes_equal(h, d2, "device clone");
  EXPECT_DOUBLE_EQ(d.item_as_double(5), h.item_as_double(5));
}

TEST(Cuda, QuantizeIsBitIdenticalToTheReference) {
  REQUIRE_GPU();
  const mxfp4::ScaleRule rules[] = {mxfp4::ScaleRule::floor, mxfp4::ScaleRule::ceil,
                                    mxfp4::ScaleRule::even, mxfp4::ScaleRule::mse,
                                    mxfp4::ScaleRule::mistralrs};
  const mxfp4::Shape shapes[] = {{1, 32}, {7, 96}, {3, 5, 64}, {33, 2880}};
  std::uint64_t seed = 10;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    for (const auto& shape : shapes) {
      // Scales spread over many binades, including tiny and huge blocks.
      Tensor w = random_tensor(shape, DType::f32, ++seed);
      float* p = w.data_as<float>();
      // f16 holds only about 6e-8 to 65504.
      const float wide[] = {1.0f, 1e-30f, 3e30f, 6.0f, 0.0f, 1e-41f};
      const float narrow[] = {1.0f, 1e-5f, 3e3f, 6.0f, 0.0f, 1e-7f};
      const float* spread = dtype == DType::f16 ? narrow : wide;
      for (std::int64_t i = 0; i < w.numel(); ++i)
        p[i] *= spread[(i / 32) % 6];
      w = dtype == DType::f32 ? w : w.to(dtype);
      for (auto rule : rules) {
        const mxfp4::QuantizeOptions opts{rule, mxfp4::NonFinitePolicy::error};
        const auto cpu = mxfp4::quantize(w, opts);
        const auto gpu = mxfp4::quantize(w.to(kGpu), opts);
        const std::string what = std::string(mxfp4::scale_rule_name(rule)) + " " +
                                 std::string(mxfp4::dtype_name(dtype)) + " " +
                                 mxfp4::to_string(shape);
        expect_bytes_equal(cpu.blocks, gpu.blocks, what + " blocks");
        expect_bytes_equal(cpu.scales, gpu.scales, what + " scales");
      }
    }
  }
}

TEST(Cuda, QuantizeReadsUnalignedWeightViews) {
  REQUIRE_GPU();
  // A weight that starts 2 bytes into a device buffer cannot use 16-byte loads.
  const Tensor w = random_tensor({5, 96}, DType::f16, 77);
  Tensor buffer = Tensor::zeros({5 * 96 + 8}, DType::f16, kGpu);
  Tensor view = Tensor::view(static_cast<char*>(buffer.data()) + 2, {5, 96}, DType::f16, kGpu);
  view.copy_from(w);
  const auto cpu = mxfp4::quantize(w);
  const auto gpu = mxfp4::quantize(view);
  expect_bytes_equal(cpu.blocks, gpu.blocks, "unaligned view blocks");
  expect_bytes_equal(cpu.scales, gpu.scales, "unaligned view scales");
}

TEST(Cuda, QuantizeReportsNonFiniteLikeTheCpu) {
  REQUIRE_GPU();
  Tensor w = random_tensor({4, 64}, DType::f32, 3);
  w.data_as<float>()[2 * 64 + 40] = INFINITY;
  w.data_as<float>()[3 * 64 + 1] = NAN;
  try {
    mxfp4::quantize(w.to(kGpu));
    FAIL() << "expected NonFiniteValue";
  } catch (const mxfp4::NonFiniteValue& e) {
    EXPECT_NE(std::string(e.what()).find("row 2, column 40"), std::string::npos) << e.what();
  }
  // The report is reset for the next call (a finite weight passes), and a later one is found
  // again, on another thread too (each thread has its own).
  EXPECT_NO_THROW(mxfp4::quantize(random_tensor({4, 64}, DType::f32, 4).to(kGpu)));
  Tensor w2 = random_tensor({8, 96}, DType::bf16, 5);
  w2.data_as<mxfp4::bf16_t>()[5 * 96 + 70].bits = 0x7FC0;  // NaN
  for (int pass = 0; pass < 2; ++pass) {
    std::string message;
    std::thread other([&] {
      try {
        mxfp4::quantize(w2.to(kGpu));
      } catch (const mxfp4::NonFiniteValue& e) {
        message = e.what();
      }
    });
    other.join();
    EXPECT_NE(message.find("row 5, column 70"), std::string::npos)
        << "pass " << pass << ": " << message;
    EXPECT_THROW(mxfp4::quantize(w2.to(kGpu)), mxfp4::NonFiniteValue);
    EXPECT_NO_THROW(mxfp4::quantize(random_tensor({8, 96}, DType::bf16, 6).to(kGpu)));
  }
  const mxfp4::QuantizeOptions nan_blocks{mxfp4::kDefaultScaleRule,
                                          mxfp4::NonFinitePolicy::nan_block};
  const auto cpu = mxfp4::quantize(w, nan_blocks);
  const auto gpu = mxfp4::quantize(w.to(kGpu), nan_blocks);
  expect_bytes_equal(cpu.scales, gpu.scales, "nan_block scales");
  expect_bytes_equal(cpu.blocks, gpu.blocks, "nan_block blocks");
}

TEST(Cuda, DequantizeIsBitIdenticalToTheReference) {
  REQUIRE_GPU();
  // Every byte value in blocks and scales, including 0x00 (2^-127) and 0xFF (NaN).
  const std::int64_t n = 37, k = 256;
  std::vector<std::uint8_t> blocks(n * k / 2), scales(n * k / 32);
  std::mt19937_64 rng(7);
  for (auto& b : blocks)
    b = static_cast<std::uint8_t>(rng());
  for (std::size_t i = 0; i < scales.size(); ++i)
    scales[i] = static_cast<std::uint8_t>(i * 7);
  const auto w = mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {n, k / 2}),
                                                Tensor::from_vector(scales, {n, k / 32}));
  // The GPU layout holds scales up to 128 only: every byte value of the blocks with those.
  std::vector<std::uint8_t> low_scales(scales.size());
  for (std::size_t i = 0; i < scales.size(); ++i)
    low_scales[i] = static_cast<std::uint8_t>(i * 7 % 129);
  const auto w_low = mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(blocks, {n, k / 2}),
                                                    Tensor::from_vector(low_scales, {n, k / 32}));
  struct Run {
    const mxfp4::Mxfp4Weight& cpu;
    mxfp4::Mxfp4Weight gpu;
    std::string what;
  };
  const Run runs[] = {{w, w.to(kGpu), "standard"},
                      {w_low, on_gpu(w_low, BlockLayout::gpu), "gpu layout"}};
  for (const Run& run : runs) {
    for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
      const Tensor cpu = run.cpu.dequantize(dtype);
      const Tensor gpu = run.gpu.dequantize(dtype).to(mxfp4::Device::cpu());
      for (std::int64_t i = 0; i < cpu.numel(); ++i) {
        ASSERT_TRUE(same_value(cpu.item_as_double(i), gpu.item_as_double(i)))
            << run.what << " " << mxfp4::dtype_name(dtype) << " element " << i << ": cpu "
            << cpu.item_as_double(i) << " gpu " << gpu.item_as_double(i);
      }
    }
  }
}

// x's absolute values in f32, and w with its codes' sign bits cleared (the same scales, no
// bias): linear or gather_linear of the two gives each output's sum of |x w| terms, the scale of
// its accumulation error, on the library's CPU backend (40x faster here than a loop in double:
// the tests' tolerances took most of a GPU test run's time). Their f32 sums are within a few
// 1e-6 of the exact ones; tolerance() takes them 1e-4 larger.
Tensor abs_f32(const Tensor& x) {
  Tensor a = x.to(DType::f32).clone();
  float* p = a.data_as<float>();
  for (std::int64_t i = 0; i < a.numel(); ++i)
    p[i] = std::fabs(p[i]);
  return a;
}
mxfp4::Mxfp4Weight abs_weight(const mxfp4::Mxfp4Weight& w) {
  const mxfp4::Mxfp4Weight ws = w.with_layout(BlockLayout::standard);
  Tensor blocks = ws.blocks().clone();
  auto* b = static_cast<std::uint8_t*>(blocks.data());
  for (std::size_t i = 0; i < blocks.nbytes(); ++i)
    b[i] &= 0x77;  // the sign bits of both codes
  return mxfp4::Mxfp4Weight::from_parts(blocks, ws.scales().clone());
}
constexpr double kMagnitudeSlack = 1 + 1e-4;

// |gpu - ref| allowed for an output of type `dtype` whose reference is r and whose terms' absolute
// values sum to mag (over K terms): one rounding of the output type, f32 accumulation error
// growing with sqrt(K), and one step of the output type's subnormals (a sum added in another
// order may round to a neighbouring one: f16 outputs, seen on an H100, 7.33e-6 against the
// reference's 7.39e-6, one step of 2^-24 apart).
double tolerance(DType dtype, std::int64_t k, double r, double mag) {
  const double out_eps = dtype == DType::bf16 ? 0x1p-7 : dtype == DType::f16 ? 0x1p-10 : 0x1p-22;
  const double step = dtype == DType::bf16 ? 0x1p-133 : dtype == DType::f16 ? 0x1p-24 : 0x1p-149;
  const double acc_eps = 4e-7 * std::sqrt(static_cast<double>(k));
  return out_eps * std::fabs(r) + acc_eps * kMagnitudeSlack * mag + step;
}

// Every output of a GPU linear against the CPU reference, within tolerance().
void expect_linear_close(const Tensor& x, const mxfp4::Mxfp4Weight& w, const Tensor& ref,
                         const Tensor& got, const std::string& what) {
  const Tensor mags = mxfp4::linear(abs_f32(x), abs_weight(w));
  const std::int64_t k = w.in_features(), n = w.out_features(), m = x.numel() / k;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      const double r = ref.item_as_double(i * n + j);
      const double g = got.item_as_double(i * n + j);
      ASSERT_FALSE(std::isnan(g) && !std::isnan(r)) << what << " [" << i << ", " << j << "]";
      const double tol = tolerance(x.dtype(), k, r, mags.data_as<float>()[i * n + j]);
      ASSERT_LE(std::fabs(g - r), tol)
          << what << " [" << i << ", " << j << "]: gpu " << g << " reference " << r;
    }
  }
}

// linear of x on the GPU weight wg (w's copy) against the reference on w, for weights whose
// values must reach the MMAs exactly (extreme scales): the reference finite everywhere (the
// test's sizes), every output within expect_linear_close's tolerance (which an output flushed to
// zero fails wherever the reference exceeds the rounding error of its sum), and with
// `all_nonzero` no output zero at all. (An output zero where the reference is not is no error
// in itself: a sum that cancels to within its rounding error of zero may land on either side.
// Seen on an H100, f16 outputs, two warpgroups adding alternate k-tiles: an output -0 where the
// reference is -2^-24, its f32 sum -7.9e-8 from terms of about 0.02.)
void expect_exact_on_gpu(const Tensor& x, const mxfp4::Mxfp4Weight& w, const mxfp4::Mxfp4Weight& wg,
                         const std::string& what, bool all_nonzero = false) {
  const Tensor got = mxfp4::linear(x.to(kGpu), wg).to(mxfp4::Device::cpu());
  const Tensor ref = mxfp4::linear(x, w);
  for (std::int64_t i = 0; i < got.numel(); ++i) {
    ASSERT_TRUE(std::isfinite(ref.item_as_double(i))) << what << " (test sizes) at " << i;
    if (all_nonzero) {
      ASSERT_NE(got.item_as_double(i), 0.0) << what << ": flushed to zero at " << i;
    }
  }
  expect_linear_close(x, w, ref, got, what);
}

TEST(Cuda, LinearMatchesTheReference) {
  REQUIRE_GPU();
  struct Case {
    std::int64_t m, n, k;
  };
  // Decode kernel (M <= 16, or few weight rows) and tiled GEMMs (bf16, more tokens; on Hopper
  // the wgmma GEMM from M = 17 for bf16 and f16 alike, at width 32 up to 32 tokens): odd N (scalar
  // stores), N % 8 == 0 (vector stores), K with an odd number of blocks (a half-empty last stage),
  // several weight tiles and token tiles, and a K long enough for the stage ring to wrap many
  // times, and long rows at M = 3 (the decode kernel's CTAs of two row tiles). Partly filled last
  // token tiles of every wgmma width. By Hopper's rules (132 SMs), bf16: 300 x 264 takes two
  // 192-token tiles (the last moved back inside x), 400 x 203 (385-512 tokens) and 160 x 4300
  // (where 128-token tiles of 64 rows would overflow a wave) 256-token tiles of 64 rows with two
  // warpgroups. scripts/gpu-check runs these tests again with each kernel variant forced
  // (MXFP4_CUDA_KERNEL) so every kernel meets every shape.
  const Case cases[] = {{1, 1, 32},       {2, 7, 64},      {3, 33, 96},    {7, 17, 2880},
                        {16, 64, 128},    {33, 31, 8192},  {128, 9, 224},  {1000, 5, 160},
                        {40, 16390, 64},  {300, 264, 416}, {129, 128, 32}, {65, 200, 1024},
                        {520, 136, 2880}, {700, 40, 96},   {3, 40, 8192},  {200, 72, 320},
                        {17, 300, 2880},  {24, 640, 4096}, {32, 72, 1024}, {20, 25400, 96},
                        {400, 203, 1024}, {160, 4300, 64}};
  std::uint64_t seed = 100;
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    for (const auto& c : cases) {
      for (bool with_bias : {false, true}) {
        const Tensor wsrc = random_tensor({c.n, c.k}, DType::f32, ++seed);
        std::optional<Tensor> bias;
        if (with_bias) bias = random_tensor({c.n}, DType::bf16, ++seed);
        const auto w = mxfp4::Mxfp4Weight::quantize(wsrc, bias);
        const Tensor x = random_tensor({c.m, c.k}, dtype, ++seed, 4.0f);
        const Tensor ref = mxfp4::linear(x, w);
        for (BlockLayout layout : test_layouts()) {
          const auto wg = on_gpu(w, layout);
          // Poison the output so that an element the kernel skips cannot pass.
          Tensor out = Tensor::empty({c.m, c.n}, dtype);
          std::memset(out.data(), 0xFF, out.nbytes());
          Tensor out_gpu = out.to(kGpu);
          mxfp4::linear_into(x.to(kGpu), wg, out_gpu);
          const std::string what = std::string(mxfp4::dtype_name(dtype)) +
                                   " M=" + std::to_string(c.m) + " N=" + std::to_string(c.n) +
                                   " K=" + std::to_string(c.k) + (with_bias ? " bias" : "") +
                                   layout_tag(layout);
          expect_linear_close(x, w, ref, out_gpu.to(mxfp4::Device::cpu()), what);
        }
      }
    }
  }
}

// Stream-K (Hopper, bf16 and f16; by the default rule on 256-token tiles at 129-256 tokens with K
// >= 8192 and on 192-token tiles at 257-384 tokens where those take more than a wave, as 70 of
// 128 rows do on any Hopper card; any shape under MXFP4_CUDA_KERNEL=wgmma_stream,
// wgmma_stream128 or wgmma_stream192): each tile's K is shared by several CTAs whose
// partial sums meet in scratch, the caller's workspace where it has room, else stream-ordered
// memory. Few weight rows over a long K give every tile many CTAs (up to one k-tile each); several
// tiles give runs that end inside one tile and start inside the next. Elsewhere the other kernels
// run the same shapes, which must pass all the same. linear_workspace_bytes: 131076 bytes per SM
// where the Hopper GEMM runs, else 0 (no device, another architecture, a build without CUDA).
TEST(Cuda, LinearWorkspaceBytesFollowTheDevice) {
  const std::size_t bytes = mxfp4::linear_workspace_bytes();
  if (mxfp4::cuda_device_count() == 0) {
    EXPECT_EQ(bytes, 0u);
    return;
  }
#if defined(MXFP4_TEST_CUDA_RUNTIME)
  int device = 0, sms = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), cudaSuccess);
  EXPECT_EQ(bytes, major == 9 && minor == 0 ? static_cast<std::size_t>(sms) * 131076u : 0u);
#endif
}

TEST(Cuda, LinearStreamKMatchesTheReferenceWithAndWithoutAWorkspace) {
  REQUIRE_GPU();
  struct Case {
    std::int64_t m, n, k;
  };
  const Case cases[] = {
      {200, 24, 8192}, {129, 300, 8192}, {256, 136, 12288}, {300, 136, 2880}, {300, 8960, 2048}};
  std::uint64_t seed = 900;
  const std::size_t bytes = mxfp4::linear_workspace_bytes();
  ASSERT_EQ(bytes % 131076, 0u);  // per SM (ops.hpp)
  Tensor ws = Tensor::empty({static_cast<std::int64_t>(bytes) + 16}, DType::u8, kGpu);
  for (const auto& c : cases) {
    for (DType dtype : {DType::bf16, DType::f16}) {
      const Tensor bias = random_tensor({c.n}, DType::bf16, ++seed);
      const auto w =
          mxfp4::Mxfp4Weight::quantize(random_tensor({c.n, c.k}, DType::f32, ++seed), bias);
      const auto wg = on_gpu(w);
      const Tensor x = random_tensor({c.m, c.k}, dtype, ++seed, 4.0f);
      const Tensor ref = mxfp4::linear(x, w);
      const Tensor xg = x.to(kGpu);
      for (bool with_workspace : {false, true}) {
        Tensor out = Tensor::empty({c.m, c.n}, dtype);
        std::memset(out.data(), 0xFF, out.nbytes());
        Tensor out_gpu = out.to(kGpu);
        mxfp4::RunOptions run;
        if (with_workspace) run.workspace = {ws.data(), static_cast<std::size_t>(ws.nbytes())};
        // Twice: the flags the first call leaves behind must not satisfy the second's waits.
        mxfp4::linear_into(xg, wg, out_gpu, run);
        mxfp4::linear_into(xg, wg, out_gpu, run);
        const std::string what = std::string(mxfp4::dtype_name(dtype)) +
                                 " M=" + std::to_string(c.m) + " N=" + std::to_string(c.n) +
                                 " K=" + std::to_string(c.k) +
                                 (with_workspace ? " workspace" : " no workspace");
        expect_linear_close(x, w, ref, out_gpu.to(mxfp4::Device::cpu()), what);
      }
    }
  }
}

// Extreme block scales through both tensor-core paths: weight values that are bf16 subnormals
// (scale 2^-127, met by x ~ 2^100) and huge ones (scale 2^73, met by x ~ 2^-100) must reach the
// MMAs exactly, so results match the reference to the usual tolerance, not to an absolute slack.
TEST(Cuda, LinearKeepsExtremeScalesExact) {
  REQUIRE_GPU();
  const std::int64_t n = 24, k = 128;
  const std::vector<std::uint8_t> codes = random_codes(n, k, 9);
  for (const bool tiny : {true, false}) {
    // Every block of a row has the same scale: 0 (2^-127) or 200 (2^73); a few rows use 1 and 2.
    std::vector<std::uint8_t> scales(static_cast<std::size_t>(n * k / 32));
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t b = 0; b < k / 32; ++b) {
        scales[static_cast<std::size_t>(r * (k / 32) + b)] =
            tiny ? static_cast<std::uint8_t>(r % 3) : std::uint8_t{200};
      }
    }
    const auto w = mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(codes, {n, k / 2}),
                                                  Tensor::from_vector(scales, {n, k / 32}));
    // The GPU layout holds the tiny scales (its decode meets bf16 subnormals), not 2^73.
    for (BlockLayout layout : test_layouts()) {
      if (!tiny && layout == BlockLayout::gpu) continue;
      const auto wg = on_gpu(w, layout);
      for (std::int64_t m : {1, 130}) {  // decode kernel, tiled GEMM
        const Tensor x =
            random_tensor({m, k}, DType::f32, 10 + m, tiny ? 0x1p100f : 0x1p-100f).to(DType::bf16);
        expect_exact_on_gpu(x, w, wg,
                            std::string(tiny ? "scale 2^-127" : "scale 2^73") +
                                " M=" + std::to_string(m) + layout_tag(layout),
                            true);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// f16 x: scaled weight values outside f16's range (scale 2^-30: below its smallest subnormal;
// 2^20: above 65504) must still be exact, on the decode kernel (M = 1) and the GEMM (M = 100 to
// 600: on Hopper 64-, 128- and 256-token tiles, stream-K at M = 300, the last wave's split of K
// at M = 600; there f16 x is split into two bf16 parts); and an infinity in x must come out as
// the reference's infinity or NaN, not as the NaN a careless split (inf - inf) would give.
TEST(Cuda, LinearKeepsF16ExactOutsideItsRange) {
  REQUIRE_GPU();
  const std::int64_t n = 40, k = 256;
  const std::vector<std::uint8_t> codes = random_codes(n, k, 11);
  for (const bool tiny : {true, false}) {
    std::vector<std::uint8_t> scales(static_cast<std::size_t>(n * k / 32),
                                     tiny ? std::uint8_t{127 - 30} : std::uint8_t{127 + 20});
    const auto w = mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(codes, {n, k / 2}),
                                                  Tensor::from_vector(scales, {n, k / 32}));
    for (BlockLayout layout : test_layouts()) {
      if (!tiny && layout == BlockLayout::gpu) continue;  // 2^20: scale 147, standard only
      const auto wg = on_gpu(w, layout);
      for (std::int64_t m : {1, 100, 130, 300, 600}) {
        const Tensor x =
            random_tensor({m, k}, DType::f32, 20 + m, tiny ? 0x1p14f : 0x1p-14f).to(DType::f16);
        expect_exact_on_gpu(x, w, wg,
                            std::string(tiny ? "f16 scale 2^-30" : "f16 scale 2^20") +
                                " M=" + std::to_string(m) + layout_tag(layout));
        if (HasFatalFailure()) return;
      }
    }
  }
  // Infinities: token 0 has +inf at k = 3, token 1 -inf at k = 200; the rest finite.
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({n, k}, DType::f32, 30));
  const auto wg = on_gpu(w);
  for (std::int64_t m : {2, 100, 130, 300, 600}) {
    Tensor x = random_tensor({m, k}, DType::f32, 31);
    x.data_as<float>()[3] = INFINITY;
    x.data_as<float>()[k + 200] = -INFINITY;
    const Tensor xh = x.to(DType::f16);
    const Tensor got = mxfp4::linear(xh.to(kGpu), wg).to(mxfp4::Device::cpu());
    const Tensor ref = mxfp4::linear(xh, w);
    for (std::int64_t i = 0; i < got.numel(); ++i) {
      const double r = ref.item_as_double(i);
      if (!std::isfinite(r)) {
        ASSERT_TRUE(same_value(r, got.item_as_double(i)))
            << "M=" << m << " element " << i << ": gpu " << got.item_as_double(i) << " reference "
            << r;
      }
    }
    EXPECT_TRUE(std::isinf(ref.item_as_double(0)) || std::isnan(ref.item_as_double(0)));
    // The finite tokens (2 .. m-1) match as usual.
    if (m > 2) {
      const Tensor xs = xh.slice_rows(2, m);
      expect_linear_close(xs, w, mxfp4::linear(xs, w), got.slice_rows(2, m), "f16 finite rows");
    }
  }
}

// f16 x runs on f16 MMAs with the weight scaled before them where every scale of a unit of work
// is in 2^-13 .. 2^13 (2^-13 .. 2^1 in the GPU layout), otherwise on bf16 MMAs against x split
// into two bf16 parts: the decode kernel (M <= 16) decides per warp step of four blocks, the
// Hopper GEMM (larger M) per stage of 64 k. Scales on both sides of each bound, mixed within rows
// (so one call takes both kinds of steps), must all come out exact. scripts/gpu-check runs this
// under every forced kernel variant too.
TEST(Cuda, LinearF16IsExactOnBothSidesOfTheF16ScaleRange) {
  REQUIRE_GPU();
  const std::int64_t n = 40, k = 1024;
  const std::vector<std::uint8_t> codes = random_codes(n, k, 12);
  // The decode kernel decides per warp step, the Hopper GEMM per stage (64 k): one_stage puts
  // the outside scales in one stage only (blocks 10 and 11), so that the GEMM's tiles take both
  // paths in one tile.
  struct Case {
    int outside, inside;  // E8M0 scale bytes: every third block of a row, the others
    bool one_stage;
  };
  const Case cases[] = {{113, 114, false}, {110, 116, false}, {112, 113, false}, {127, 128, false},
                        {128, 126, false}, {141, 140, false}, {146, 139, false}, {142, 141, false},
                        {130, 129, false}, {100, 120, true},  {146, 125, true}};
  for (const Case& c : cases) {
    std::vector<std::uint8_t> scales(static_cast<std::size_t>(n * k / 32));
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t b = 0; b < k / 32; ++b) {
        const bool out = (r + b) % 3 == 0 && (!c.one_stage || b / 2 == 5);
        scales[static_cast<std::size_t>(r * (k / 32) + b)] =
            static_cast<std::uint8_t>(out ? c.outside : c.inside);
      }
    }
    const auto w = mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(codes, {n, k / 2}),
                                                  Tensor::from_vector(scales, {n, k / 32}));
    // x of a size that keeps the outputs normal f16 values (x itself within 2^-12 .. 2^11).
    const int top = std::max(c.outside, c.inside);
    const float x_scale = std::ldexp(1.0f, std::clamp(120 - top, -12, 11));
    for (BlockLayout layout : test_layouts()) {
      if (layout == BlockLayout::gpu && top > static_cast<int>(mxfp4::detail::kGpuLayoutMaxScale))
        continue;
      const auto wg = on_gpu(w, layout);
      for (std::int64_t m : {1, 3, 8, 16, 40, 100, 130, 300, 600}) {
        const Tensor x = random_tensor({m, k}, DType::f32, 40 + m, x_scale).to(DType::f16);
        expect_exact_on_gpu(x, w, wg,
                            "f16 scales " + std::to_string(c.outside) + " / " +
                                std::to_string(c.inside) + " M=" + std::to_string(m) +
                                layout_tag(layout));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(Cuda, LinearKeepsLeadingDims) {
  REQUIRE_GPU();
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({5, 64}, DType::f32, 1));
  const auto wg = on_gpu(w);
  const Tensor x = random_tensor({2, 3, 64}, DType::bf16, 2);
  const Tensor y = mxfp4::linear(x.to(kGpu), wg);
  EXPECT_EQ(y.shape(), (mxfp4::Shape{2, 3, 5}));
  EXPECT_EQ(y.device(), kGpu);
  expect_linear_close(x, w, mxfp4::linear(x, w), y.to(mxfp4::Device::cpu()), "rank 3");
}

TEST(Cuda, RefusesMixedDevicesAndUnimplementedOps) {
  REQUIRE_GPU();
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({4, 32}, DType::f32, 1));
  const auto wg = on_gpu(w);
  const Tensor x = random_tensor({1, 32}, DType::bf16, 2);
  EXPECT_THROW(mxfp4::linear(x, wg), mxfp4::InvalidArgument);  // x on the host
  const auto experts = mxfp4::Mxfp4Weight::quantize(random_tensor({2, 4, 32}, DType::f32, 3));
  const auto eg = experts.to(kGpu);
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{0, 1}, {1, 2});
  EXPECT_THROW(mxfp4::gather_linear(x.to(kGpu), ids, eg), mxfp4::InvalidArgument);  // ids on host
  EXPECT_THROW(mxfp4::gather_linear(x, ids.to(kGpu), eg), mxfp4::InvalidArgument);  // x on host
}

// Every (token, slot) of a GPU gather against the CPU reference, with the tolerance of
// expect_linear_close on each pair's own x row and expert.
void expect_gather_close(const Tensor& x, const Tensor& ids, const mxfp4::Mxfp4Weight& w,
                         const Tensor& got, const std::string& what) {
  const Tensor ref = mxfp4::gather_linear(x, ids, w);
  ASSERT_EQ(got.shape(), ref.shape()) << what;
  const Tensor mags = mxfp4::gather_linear(abs_f32(x), ids, abs_weight(w));
  const std::int64_t tokens = ids.dim(0), topk = ids.dim(1);
  const std::int64_t n = w.out_features(), k = w.in_features();
  for (std::int64_t p = 0; p < tokens * topk; ++p) {
    const auto e = static_cast<std::int64_t>(ids.item_as_double(p));
    for (std::int64_t j = 0; j < n; ++j) {
      const double r = ref.item_as_double(p * n + j);
      const double g = got.item_as_double(p * n + j);
      const double tol = tolerance(x.dtype(), k, r, mags.data_as<float>()[p * n + j]);
      ASSERT_LE(std::fabs(g - r), tol)
          << what << " token " << p / topk << " slot " << p % topk << " expert " << e << " row "
          << j << ": gpu " << g << " reference " << r;
    }
  }
}

// Expert ids: uniform over [0, E) or all on one expert (skewed), in the given index dtype.
Tensor routing(std::int64_t tokens, std::int64_t topk, std::int64_t experts, bool skewed,
               DType dtype, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(tokens * topk));
  const std::int64_t hot = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(experts));
  for (auto& id : ids)
    id = skewed ? hot : static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(experts));
  if (dtype == DType::i64) return Tensor::from_vector(ids, {tokens, topk});
  if (dtype == DType::u32) {
    return Tensor::from_vector(std::vector<std::uint32_t>(ids.begin(), ids.end()), {tokens, topk});
  }
  return Tensor::from_vector(std::vector<std::int32_t>(ids.begin(), ids.end()), {tokens, topk});
}

TEST(Cuda, GatherLinearMatchesTheReference) {
  REQUIRE_GPU();
  const std::int64_t n = 24, k = 96;
  const DType dtypes[] = {DType::bf16, DType::f16, DType::f32};
  const DType id_dtypes[] = {DType::i32, DType::u32, DType::i64};
  std::uint64_t seed = 500;
  int combo = 0;
  for (std::int64_t experts : {1, 4, 32, 128}) {
    const Tensor bias = random_tensor({experts, n}, DType::f32, ++seed);
    const auto w =
        mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, ++seed), bias);
    std::vector<mxfp4::Mxfp4Weight> wgs;
    for (BlockLayout layout : test_layouts())
      wgs.push_back(on_gpu(w, layout));
    for (std::int64_t topk : {1, 2, 4, 8}) {
      for (std::int64_t tokens : {1, 2, 5, 64, 1000}) {
        for (bool skewed : {false, true}) {
          ++combo;
          // Each case in one layout, alternating: both meet every routing path.
          const mxfp4::Mxfp4Weight& wg = wgs[combo / 3 % wgs.size()];
          const DType dtype = dtypes[combo % 3];
          const DType id_dtype = id_dtypes[(combo / 3) % 3];
          const bool per_slot = combo % 2 == 0;
          const Tensor x = per_slot ? random_tensor({tokens, topk, k}, dtype, ++seed, 4.0f)
                                    : random_tensor({tokens, k}, dtype, ++seed, 4.0f);
          const Tensor ids = routing(tokens, topk, experts, skewed, id_dtype, ++seed);
          Tensor out = Tensor::empty({tokens, topk, n}, dtype);
          std::memset(out.data(), 0xFF, out.nbytes());  // poison: a skipped row cannot pass
          Tensor out_gpu = out.to(kGpu);
          mxfp4::gather_linear_into(x.to(kGpu), ids.to(kGpu), wg, out_gpu);
          ASSERT_NO_THROW(mxfp4::synchronize());
          const std::string what =
              std::string(mxfp4::dtype_name(dtype)) + " E=" + std::to_string(experts) +
              " topk=" + std::to_string(topk) + " T=" + std::to_string(tokens) +
              (skewed ? " skewed" : " uniform") + (per_slot ? " x[T,topk,K]" : " x[T,K]") +
              " ids " + std::string(mxfp4::dtype_name(id_dtype)) + layout_tag(wg.layout());
          expect_gather_close(x, ids, w, out_gpu.to(mxfp4::Device::cpu()), what);
        }
      }
    }
  }
}

TEST(Cuda, GatherLinearRunsTheGemmOnLargerShapes) {
  REQUIRE_GPU();
  // Enough tokens per expert for the tiled GEMM, several weight tiles, bias in bf16.
  const std::int64_t experts = 8, n = 264, k = 320, tokens = 700, topk = 4;
  const Tensor bias = random_tensor({experts, n}, DType::bf16, 1);
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 2), bias);
  const Tensor x = random_tensor({tokens, k}, DType::bf16, 3, 4.0f);
  for (bool skewed : {false, true}) {
    const Tensor ids = routing(tokens, topk, experts, skewed, DType::i32, 4);
    const Tensor got = mxfp4::gather_linear(x.to(kGpu), ids.to(kGpu), on_gpu(w));
    expect_gather_close(x, ids, w, got.to(mxfp4::Device::cpu()),
                        skewed ? "gemm skewed" : "gemm uniform");
  }
}

// f16 x through gather_linear's GEMM classes on Hopper (bf16's since session 19): experts of
// 17-32 tokens (T = 48 uniform: 64-token tiles), few pairs (T = 100: 128-token tiles, two
// warpgroups on alternate k-tiles), large experts (T = 700 uniform: 256-token tiles; T = 48 and
// 700 skewed: one expert, its rows read in place at 700), with block scales outside f16's exact
// range (below it: 113 against 114; above it: 146 against 139, whose weights overflow f16) in
// one stage of every even expert's rows: those stages run in bf16 on x split in two
// (sm90_gemm.cu's split_stage), the others in f16, and every output must match the reference.
TEST(Cuda, GatherLinearKeepsF16ExactOutsideItsRange) {
  REQUIRE_GPU();
  const std::int64_t experts = 8, n = 136, k = 320, topk = 4;
  const std::vector<std::uint8_t> codes = random_codes(experts * n, k, 13);
  for (const auto& [outside, inside] : {std::pair{113, 114}, std::pair{146, 139}}) {
    std::vector<std::uint8_t> scales(static_cast<std::size_t>(experts * n * k / 32));
    for (std::int64_t e = 0; e < experts; ++e) {
      for (std::int64_t r = 0; r < n; ++r) {
        for (std::int64_t b = 0; b < k / 32; ++b) {
          const bool out = e % 2 == 0 && (r + b) % 3 == 0 && b / 2 == 2;  // stage 2 (k 128-191)
          scales[static_cast<std::size_t>((e * n + r) * (k / 32) + b)] =
              static_cast<std::uint8_t>(out ? outside : inside);
        }
      }
    }
    const auto w =
        mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(codes, {experts, n, k / 2}),
                                       Tensor::from_vector(scales, {experts, n, k / 32}));
    // x of a size that keeps the outputs finite f16 values (as in the dense test above).
    const int top = std::max(outside, inside);
    const float x_scale = std::ldexp(1.0f, std::clamp(120 - top, -12, 11));
    for (BlockLayout layout : test_layouts()) {
      if (layout == BlockLayout::gpu && top > static_cast<int>(mxfp4::detail::kGpuLayoutMaxScale))
        continue;
      const auto wg = on_gpu(w, layout);
      for (std::int64_t tokens : {48, 100, 700}) {
        for (bool skewed : {false, true}) {
          const Tensor ids = routing(tokens, topk, experts, skewed, DType::i32, 14 + tokens);
          const Tensor x =
              random_tensor({tokens, k}, DType::f32, 15 + tokens, x_scale).to(DType::f16);
          const Tensor got = mxfp4::gather_linear(x.to(kGpu), ids.to(kGpu), wg);
          expect_gather_close(x, ids, w, got.to(mxfp4::Device::cpu()),
                              "f16 scales " + std::to_string(outside) + " / " +
                                  std::to_string(inside) + " T=" + std::to_string(tokens) +
                                  (skewed ? " skewed" : " uniform") + layout_tag(layout));
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// Experts of 33-128 tokens in a batch of more than 512 pairs (Hopper: the third GEMM class, on
// 128-token tiles of 192 rows with three computing warpgroups since session 25), on a weight whose
// rows are not a multiple of the tile's: bf16 x with bias, then f16 x with block scales outside
// f16's exact range in one stage of every even expert's rows (split_stage, its x shared out
// among three warpgroups, 1024 chunks over 384 threads).
TEST(Cuda, GatherLinearRunsMidSizeExpertsOfManyPairs) {
  REQUIRE_GPU();
  const std::int64_t experts = 32, n = 200, k = 320, topk = 4, tokens = 600;
  const Tensor ids = routing(tokens, topk, experts, false, DType::i32, 61);
  const Tensor bias = random_tensor({experts, n}, DType::bf16, 62);
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 63), bias);
  const std::vector<std::uint8_t> codes = random_codes(experts * n, k, 64);
  std::vector<std::uint8_t> scales(static_cast<std::size_t>(experts * n * k / 32));
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t r = 0; r < n; ++r) {
      for (std::int64_t b = 0; b < k / 32; ++b) {
        const bool out = e % 2 == 0 && (r + b) % 3 == 0 && b / 2 == 2;  // stage 2 (k 128-191)
        scales[static_cast<std::size_t>((e * n + r) * (k / 32) + b)] = out ? 113 : 114;
      }
    }
  }
  const auto w16 =
      mxfp4::Mxfp4Weight::from_parts(Tensor::from_vector(codes, {experts, n, k / 2}),
                                     Tensor::from_vector(scales, {experts, n, k / 32}));
  for (BlockLayout layout : test_layouts()) {
    const Tensor x = random_tensor({tokens, k}, DType::bf16, 65, 4.0f);
    const Tensor got = mxfp4::gather_linear(x.to(kGpu), ids.to(kGpu), on_gpu(w, layout));
    expect_gather_close(x, ids, w, got.to(mxfp4::Device::cpu()), "bf16" + layout_tag(layout));
    const Tensor x16 = random_tensor({tokens, k}, DType::f32, 66, 64.0f).to(DType::f16);
    const Tensor got16 = mxfp4::gather_linear(x16.to(kGpu), ids.to(kGpu), on_gpu(w16, layout));
    expect_gather_close(x16, ids, w16, got16.to(mxfp4::Device::cpu()),
                        "f16 scales 113 / 114" + layout_tag(layout));
    if (HasFatalFailure()) return;
  }
}

// gather_linear of random x ([T, K], or [T, topk, K] with per_slot) on the GPU against the
// reference.
void expect_gather_on_gpu(const Tensor& ids, const mxfp4::Mxfp4Weight& w,
                          const mxfp4::Mxfp4Weight& wg, std::int64_t k, DType dtype, bool per_slot,
                          std::uint64_t seed, const std::string& what) {
  const std::int64_t tokens = ids.dim(0), topk = ids.dim(1);
  const Tensor x = per_slot ? random_tensor({tokens, topk, k}, dtype, seed, 4.0f)
                            : random_tensor({tokens, k}, dtype, seed, 4.0f);
  const Tensor got = mxfp4::gather_linear(x.to(kGpu), ids.to(kGpu), wg);
  expect_gather_close(x, ids, w, got.to(mxfp4::Device::cpu()),
                      what + (per_slot ? " x[T,topk,K]" : " x[T,K]"));
}

// Random experts [experts, n, k] with a bias each, quantized; seeds from `seed` on.
mxfp4::Mxfp4Weight biased_experts(std::int64_t experts, std::int64_t n, std::int64_t k,
                                  std::uint64_t& seed) {
  seed += 2;
  return mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, seed - 1),
                                      random_tensor({experts, n}, DType::f32, seed));
}

// Ids [pairs / topk, topk]: run pairs on each (expert, run), shuffled by `seed`.
Tensor shuffled_runs(const std::vector<std::pair<int, int>>& runs, std::int64_t topk,
                     std::uint64_t seed) {
  std::vector<std::int32_t> ids;
  for (const auto& [expert, run] : runs)
    ids.insert(ids.end(), static_cast<std::size_t>(run), expert);
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::shuffle(ids.begin(), ids.end(), rng);
  const std::int64_t tokens = static_cast<std::int64_t>(ids.size()) / topk;
  EXPECT_EQ(tokens * topk, static_cast<std::int64_t>(ids.size())) << "runs fill whole tokens";
  return Tensor::from_vector(ids, {tokens, topk});
}

// expect_gather_on_gpu for bf16 and f16 x, each of rank 2 and 3; seeds from `seed` on.
void expect_gather_all_ways(const Tensor& ids, const mxfp4::Mxfp4Weight& w,
                            const mxfp4::Mxfp4Weight& wg, std::int64_t k, std::uint64_t& seed,
                            const std::string& what) {
  for (const DType dtype : {DType::bf16, DType::f16}) {
    for (bool per_slot : {false, true})
      expect_gather_on_gpu(ids, w, wg, k, dtype, per_slot, ++seed,
                           what + " " + std::string(mxfp4::dtype_name(dtype)));
  }
}

// A small batch (routed in each CTA) whose experts have runs of 20, 12, 9, 8 and 1 pairs, in
// shuffled order: runs above 8 take tiles of 16 (two of them for the run of 20), the others
// tiles of 8, in one launch; bf16 and f16 (tiles of 8 only), both input ranks.
TEST(Cuda, GatherLinearMixesTileSizesInASmallBatch) {
  REQUIRE_GPU();
  const std::int64_t experts = 8, n = 40, k = 160, topk = 2;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 7),
                                              random_tensor({experts, n}, DType::f32, 8));
  const auto wg = on_gpu(w);
  std::vector<std::int32_t> ids;
  for (const auto& [expert, run] :
       std::vector<std::pair<int, int>>{{3, 20}, {5, 12}, {0, 9}, {6, 8}, {1, 1}, {7, 1}, {2, 1}})
    ids.insert(ids.end(), static_cast<std::size_t>(run), expert);
  std::mt19937 rng(9);
  std::shuffle(ids.begin(), ids.end(), rng);
  const std::int64_t tokens = static_cast<std::int64_t>(ids.size()) / topk;  // 26
  const Tensor idt = Tensor::from_vector(ids, {tokens, topk});
  for (const DType dtype : {DType::bf16, DType::f16}) {
    for (bool per_slot : {false, true}) {
      expect_gather_on_gpu(idt, w, wg, k, dtype, per_slot, per_slot ? 10 : 11,
                           "mixed runs " + std::string(mxfp4::dtype_name(dtype)));
    }
  }
}

// Small batches (routed in each CTA) on a weight of many row tiles: the grid is sized for the
// most tiles the batch could have, and a skewed batch's few tiles of 16 take fewer tiles per
// round so that they spread over its CTAs (each tile's K split over more warps); uniform, the
// tiles of 8. 64 pairs: each warp on two row tiles (bf16); 20: one.
TEST(Cuda, GatherLinearSpreadsASmallBatchOverTheGrid) {
  REQUIRE_GPU();
  const std::int64_t experts = 8, n = 1040, k = 256, topk = 4;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 21),
                                              random_tensor({experts, n}, DType::bf16, 22));
  const auto wg = on_gpu(w);
  std::uint64_t seed = 23;
  for (std::int64_t tokens : {16, 5}) {
    for (bool skewed : {true, false}) {
      for (const DType dtype : {DType::bf16, DType::f16}) {
        for (bool per_slot : {false, true}) {
          const Tensor ids = routing(tokens, topk, experts, skewed, DType::i32, ++seed);
          expect_gather_on_gpu(ids, w, wg, k, dtype, per_slot, ++seed,
                               "T=" + std::to_string(tokens) + (skewed ? " skewed " : " uniform ") +
                                   std::string(mxfp4::dtype_name(dtype)));
        }
      }
    }
  }
}

// Batches past the one-CTA routing whose experts fall in the decode kernel's classes of 8- and
// 16-token tiles, which run in one launch, in rounds of up to four tiles per CTA (sm80_linear.cu):
// both classes with GEMM-sized experts beside them, only tiles of 16, only tiles of 8; on 1040
// rows (rounds of four, the last one partial) and on 72 (few CTAs: rounds of one); K of three
// blocks (fewer than a round's warps per tile) and of 40.
TEST(Cuda, GatherLinearComputesItsSmallClassesInOneLaunch) {
  REQUIRE_GPU();
  const std::int64_t experts = 40, topk = 2;
  std::uint64_t seed = 40;
  for (const auto& [n, k] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{1040, 96}, {72, 1280}}) {
    const auto w = biased_experts(experts, n, k, seed);
    const auto wg = on_gpu(w);
    for (int mix = 0; mix < 3; ++mix) {
      std::vector<std::pair<int, int>> runs;
      int pairs = 0;
      for (int e = 0; e < 24; ++e) {
        int count = 0;
        if (mix == 0) count = e < 13 ? 1 + e % 8 : e < 22 ? 9 + e % 8 : e == 22 ? 25 : 40;
        if (mix == 1) count = 9 + (e * 5) % 8;
        if (mix == 2) count = 1 + (e * 3) % 8;
        runs.emplace_back(e, count);
        pairs += count;
      }
      if (pairs % 2 != 0) runs.emplace_back(39, 1);
      const Tensor idt = shuffled_runs(runs, topk, ++seed);
      ASSERT_GT(idt.numel(), 64);  // past the one-CTA routing
      expect_gather_all_ways(idt, w, wg, k, seed,
                             "N=" + std::to_string(n) + " mix " + std::to_string(mix));
    }
  }
}

// A batch of few pairs (at most 512) past the one-CTA routing with experts of 33-64 tokens,
// which Hopper runs on 64-token tiles (moe.cu), beside experts of the other classes: a weight of
// many row tiles and K of two blocks (on 132 SMs: 64 rows, two warpgroups on alternate k-tiles,
// for the expert of 20 tokens too), and one of few row tiles (128 rows).
TEST(Cuda, GatherLinearRunsMidSizeExpertsOfFewPairsOn64TokenTiles) {
  REQUIRE_GPU();
  const std::int64_t experts = 9, topk = 3;
  std::uint64_t seed = 60;
  for (const auto& [n, k] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{4352, 64}, {200, 320}}) {
    const auto w = biased_experts(experts, n, k, seed);
    const auto wg = on_gpu(w);
    const Tensor idt = shuffled_runs(
        {{0, 40}, {2, 64}, {3, 33}, {5, 50}, {6, 8}, {7, 20}, {8, 100}}, topk, seed);  // 105 x 3
    expect_gather_all_ways(idt, w, wg, k, seed, "N=" + std::to_string(n));
  }
}

// Experts whose pairs read a contiguous run of x's rows are read in place instead of staged
// (Hopper's GEMM; elsewhere the same answers): every token on experts 0-3 from token `from` on
// (runs starting past row 0; before it each token on four of experts 4-11 in turn, half the
// rows of each, which are not runs); the same with one token naming expert 0 twice and the next
// token not at all (the rows fill the range but are not distinct: staged); and x [T, 1, K] on one
// expert (runs of slot rows). Token counts put the runs in each GEMM class (30: tiles of 32; 100:
// of 128; 700: of 256; 1100: routed in three kernels), both x dtypes.
std::vector<std::int32_t> run_routing(std::int64_t tokens, std::int64_t topk, std::int64_t from,
                                      bool duplicate) {
  std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens * topk));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t j = 0; j < topk; ++j) {
      ids[static_cast<std::size_t>(t * topk + j)] =
          static_cast<std::int32_t>(t >= from ? j : 4 + (t + j) % 8);
    }
  }
  if (duplicate) {
    ids[static_cast<std::size_t>((from + 2) * topk + 1)] = 0;  // expert 0 twice
    ids[static_cast<std::size_t>((from + 3) * topk + 0)] = 5;  // and not at all
  }
  return ids;
}

TEST(Cuda, GatherLinearReadsRunsOfXInPlace) {
  REQUIRE_GPU();
  const std::int64_t experts = 12, n = 136, k = 192, topk = 4;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 31),
                                              random_tensor({experts, n}, DType::f32, 32));
  const auto wg = on_gpu(w);
  std::uint64_t seed = 33;
  for (std::int64_t tokens : {30, 100, 700, 1100}) {
    for (bool duplicate : {false, true}) {
      const Tensor idt =
          Tensor::from_vector(run_routing(tokens, topk, tokens / 5, duplicate), {tokens, topk});
      for (const DType dtype : {DType::bf16, DType::f16}) {
        expect_gather_on_gpu(idt, w, wg, k, dtype, false, ++seed,
                             "T=" + std::to_string(tokens) +
                                 (duplicate ? " duplicate " : " runs ") +
                                 std::string(mxfp4::dtype_name(dtype)));
      }
    }
    const Tensor one = Tensor::from_vector(
        std::vector<std::int32_t>(static_cast<std::size_t>(tokens), 3), {tokens, 1});
    expect_gather_on_gpu(one, w, wg, k, DType::bf16, true, ++seed,
                         "T=" + std::to_string(tokens) + " one expert");
  }
  // Few pairs on a wide weight (Hopper: 64-row tiles with two warpgroups on alternate k-tiles,
  // moe.cu) whose experts are runs of all of x, fewer rows than their 64-token tiles (x's boxes
  // then have x's rows): every token on experts 0-3, 17-32 and 33-64 tokens each.
  const auto wide = mxfp4::Mxfp4Weight::quantize(random_tensor({4, 4352, 64}, DType::f32, 34),
                                                 random_tensor({4, 4352}, DType::f32, 35));
  const auto wide_g = on_gpu(wide);
  for (std::int64_t tokens : {24, 48}) {
    const Tensor idt = Tensor::from_vector(run_routing(tokens, topk, 0, false), {tokens, topk});
    for (const DType dtype : {DType::bf16, DType::f16}) {
      expect_gather_on_gpu(
          idt, wide, wide_g, 64, dtype, false, ++seed,
          "wide T=" + std::to_string(tokens) + " " + std::string(mxfp4::dtype_name(dtype)));
    }
  }
}

// Batches past the one-CTA routing (4096 pairs) are counted and scattered per CTA in shared
// memory where the experts' counts fit it (48 KiB, 12 bytes each), else with global atomics:
// both, with uniform and skewed routing (1100 tokens x 4: five CTAs of 1024 pairs each).
TEST(Cuda, GatherLinearSortsLargeBatchesForFewAndManyExperts) {
  REQUIRE_GPU();
  const std::int64_t n = 24, k = 64, tokens = 1100, topk = 4;
  std::uint64_t seed = 50;
  for (const std::int64_t experts : {std::int64_t{40}, std::int64_t{4200}}) {
    const Tensor weight = random_tensor({experts, n, k}, DType::f32, ++seed);
    const auto w =
        mxfp4::Mxfp4Weight::quantize(weight, random_tensor({experts, n}, DType::f32, 99));
    const auto wg = on_gpu(w);
    for (const bool skewed : {false, true}) {
      const Tensor ids = routing(tokens, topk, experts, skewed, DType::i64, ++seed);
      expect_gather_on_gpu(ids, w, wg, k, DType::bf16, false, ++seed,
                           "E=" + std::to_string(experts) + (skewed ? " skewed" : " uniform"));
    }
  }
}

// An out-of-range id is not read; its row is NaN and synchronize() names it, once.
TEST(Cuda, GatherLinearReportsOutOfRangeIdsAtSynchronize) {
  REQUIRE_GPU();
  const std::int64_t experts = 4, n = 16, k = 64;
  const auto wg =
      on_gpu(mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 1)));
  struct Case {
    std::int64_t tokens, topk;
    DType dtype;
    std::int64_t bad;
  };
  // Small batch (routed in each CTA), large batches (sorted on the device in one CTA, and past
  // 4096 pairs in three kernels), the f32 path.
  for (const Case c : {Case{3, 2, DType::bf16, 4}, Case{100, 4, DType::bf16, -1},
                       Case{1100, 4, DType::bf16, 7}, Case{5, 2, DType::f32, 1000}}) {
    std::vector<std::int64_t> ids(static_cast<std::size_t>(c.tokens * c.topk), 1);
    const std::int64_t bad_pair = c.tokens * c.topk - 2;
    ids[static_cast<std::size_t>(bad_pair)] = c.bad;
    const Tensor idt = Tensor::from_vector(ids, {c.tokens, c.topk}).to(kGpu);
    const Tensor x = random_tensor({c.tokens, k}, c.dtype, 2).to(kGpu);
    const Tensor y = mxfp4::gather_linear(x, idt, wg);  // returns: ids are read on the GPU
    try {
      mxfp4::synchronize();
      ADD_FAILURE() << "synchronize did not report the id " << c.bad;
    } catch (const mxfp4::IndexOutOfRange& e) {
      const std::string msg = e.what();
      const std::string where = "indices[" + std::to_string(bad_pair / c.topk) + ", " +
                                std::to_string(bad_pair % c.topk) + "] = " + std::to_string(c.bad);
      EXPECT_NE(msg.find(where), std::string::npos) << msg;
      EXPECT_NE(msg.find("[0, 4)"), std::string::npos) << msg;
    }
    EXPECT_NO_THROW(mxfp4::synchronize());  // reported once
    const Tensor yh = y.to(mxfp4::Device::cpu());
    for (std::int64_t j = 0; j < n; ++j) {
      EXPECT_TRUE(std::isnan(yh.item_as_double(bad_pair * n + j))) << "row of the bad id";
      EXPECT_FALSE(std::isnan(yh.item_as_double(j))) << "row of a good id";
    }
  }
}

// gather_linear_expert_order's three outputs (read back to the host) checked against the ids:
// perm a permutation of the pairs grouped by expert in ascending id, offsets each expert's first
// position, the pairs with bad ids (`bad`, -1: none) after offsets[E]; then each valid row, put
// back at its pair's row, against the reference (expect_gather_close), and bad rows NaN.
void expect_expert_order(const Tensor& x, const Tensor& ids, const mxfp4::Mxfp4Weight& w,
                         const Tensor& out, const Tensor& perm, const Tensor& offsets,
                         std::int64_t bad, const std::string& what) {
  const std::int64_t tokens = ids.dim(0), topk = ids.dim(1), pairs = tokens * topk;
  const std::int64_t experts = w.num_experts(), n = w.out_features();
  ASSERT_EQ(out.shape(), (mxfp4::Shape{pairs, n})) << what;
  ASSERT_EQ(perm.shape(), (mxfp4::Shape{pairs})) << what;
  ASSERT_EQ(offsets.shape(), (mxfp4::Shape{experts + 1})) << what;
  const auto* pm = perm.data_as<std::int32_t>();
  const auto* off = offsets.data_as<std::int32_t>();
  std::vector<int> seen(static_cast<std::size_t>(pairs), 0);
  for (std::int64_t p = 0; p < pairs; ++p) {
    ASSERT_TRUE(pm[p] >= 0 && pm[p] < pairs) << what << " perm[" << p << "] = " << pm[p];
    ASSERT_EQ(seen[static_cast<std::size_t>(pm[p])]++, 0) << what << " pair " << pm[p] << " twice";
  }
  ASSERT_EQ(off[0], 0) << what;
  ASSERT_EQ(off[experts], pairs - (bad >= 0 ? 1 : 0)) << what;
  for (std::int64_t e = 0; e < experts; ++e) {
    ASSERT_LE(off[e], off[e + 1]) << what << " offsets at expert " << e;
    for (std::int64_t p = off[e]; p < off[e + 1]; ++p) {
      ASSERT_EQ(ids.item_as_double(pm[p]), static_cast<double>(e))
          << what << " position " << p << " (pair " << pm[p] << ") in expert " << e << "'s rows";
    }
  }
  Tensor scattered = Tensor::empty({tokens, topk, n}, out.dtype());
  std::memset(scattered.data(), 0, scattered.nbytes());
  const auto elem = static_cast<std::int64_t>(mxfp4::dtype_size(out.dtype()));
  for (std::int64_t p = 0; p < pairs; ++p) {
    const auto* src = static_cast<const char*>(out.data()) + p * n * elem;
    if (p >= off[experts]) {
      ASSERT_EQ(pm[p], bad) << what << " a bad id's position";
      for (std::int64_t j = 0; j < n; ++j)
        ASSERT_TRUE(std::isnan(out.item_as_double(p * n + j))) << what << " bad id's row";
      continue;
    }
    std::memcpy(static_cast<char*>(scattered.data()) + std::int64_t{pm[p]} * n * elem, src,
                static_cast<std::size_t>(n * elem));
  }
  // The reference refuses a bad id: it gets expert 0 there, and its row is taken as it is.
  std::vector<std::int64_t> fixed(static_cast<std::size_t>(pairs));
  for (std::int64_t p = 0; p < pairs; ++p)
    fixed[static_cast<std::size_t>(p)] =
        p == bad ? 0 : static_cast<std::int64_t>(ids.item_as_double(p));
  const Tensor ids_fixed = Tensor::from_vector(fixed, {tokens, topk});
  if (bad >= 0) {
    const Tensor ref = mxfp4::gather_linear(x, ids_fixed, w);
    std::memcpy(static_cast<char*>(scattered.data()) + bad * n * elem,
                static_cast<const char*>(ref.data()) + bad * n * elem,
                static_cast<std::size_t>(n * elem));
  }
  expect_gather_close(x, ids_fixed, w, scattered, what);
}

// Expert order on every routing path: small batches sorted in each CTA (bf16, f16), the f32 and
// misaligned paths (sorted in the workspace, small and large), batches sorted in one CTA with
// decode and GEMM classes, skewed ones whose experts' x rows are read in place, ones past 4096
// pairs (three kernels); both layouts; then empty batches.
TEST(Cuda, GatherLinearWritesExpertOrder) {
  REQUIRE_GPU();
  const std::int64_t experts = 12, n = 136, k = 192;
  std::uint64_t seed = 700;
  const auto w = biased_experts(experts, n, k, seed);
  struct Case {
    std::int64_t tokens, topk;
    DType dtype;
    bool skewed, per_slot;
  };
  for (const Case c :
       {Case{1, 4, DType::bf16, false, false}, Case{5, 2, DType::f16, false, true},
        Case{16, 4, DType::bf16, true, false}, Case{3, 4, DType::f32, false, false},
        Case{300, 4, DType::f32, false, true}, Case{100, 4, DType::bf16, false, false},
        Case{100, 4, DType::f16, false, true}, Case{700, 4, DType::bf16, true, false},
        Case{40, 4, DType::bf16, true, false}, Case{1100, 4, DType::bf16, false, false},
        Case{1100, 4, DType::f16, true, true}}) {
    for (BlockLayout layout : test_layouts()) {
      const auto wg = on_gpu(w, layout);
      const Tensor x = c.per_slot ? random_tensor({c.tokens, c.topk, k}, c.dtype, ++seed, 4.0f)
                                  : random_tensor({c.tokens, k}, c.dtype, ++seed, 4.0f);
      // Skewed: every token from the third on experts 0-3 in slot order (runs of x), else uniform.
      const Tensor ids = c.skewed ? Tensor::from_vector(run_routing(c.tokens, c.topk, 2, false),
                                                        {c.tokens, c.topk})
                                  : routing(c.tokens, c.topk, experts, false, DType::i32, ++seed);
      Tensor out = Tensor::empty({c.tokens * c.topk, n}, c.dtype);
      std::memset(out.data(), 0xFF, out.nbytes());  // poison
      Tensor out_gpu = out.to(kGpu);
      Tensor perm = Tensor::empty({c.tokens * c.topk}, DType::i32).to(kGpu);
      Tensor offsets = Tensor::empty({experts + 1}, DType::i32).to(kGpu);
      mxfp4::gather_linear_expert_order_into(x.to(kGpu), ids.to(kGpu), wg, out_gpu, perm, offsets);
      ASSERT_NO_THROW(mxfp4::synchronize());
      const std::string what =
          std::string(mxfp4::dtype_name(c.dtype)) + " T=" + std::to_string(c.tokens) +
          " topk=" + std::to_string(c.topk) + (c.skewed ? " runs" : " uniform") +
          (c.per_slot ? " x[T,topk,K]" : " x[T,K]") + layout_tag(layout);
      expect_expert_order(x, ids, w, out_gpu.to(mxfp4::Device::cpu()),
                          perm.to(mxfp4::Device::cpu()), offsets.to(mxfp4::Device::cpu()), -1,
                          what);
      if (HasFatalFailure()) return;
    }
  }
  // A misaligned x (an offset view) takes the CUDA-core path.
  {
    const std::int64_t tokens = 20, topk = 2;
    const Tensor big = random_tensor({tokens * k + 8}, DType::bf16, ++seed, 4.0f);
    const Tensor big_gpu = big.to(kGpu);
    const Tensor x_gpu =
        Tensor::view(static_cast<const char*>(big_gpu.data()) + 2, {tokens, k}, DType::bf16, kGpu);
    const Tensor x =
        Tensor::view(static_cast<const char*>(big.data()) + 2, {tokens, k}, DType::bf16);
    const Tensor ids = routing(tokens, topk, experts, false, DType::i64, ++seed);
    const auto r = mxfp4::gather_linear_expert_order(x_gpu, ids.to(kGpu), on_gpu(w));
    ASSERT_NO_THROW(mxfp4::synchronize());
    expect_expert_order(x, ids, w, r.out.to(mxfp4::Device::cpu()), r.perm.to(mxfp4::Device::cpu()),
                        r.offsets.to(mxfp4::Device::cpu()), -1, "misaligned x");
  }
  // No tokens: offsets all zero.
  const Tensor none = Tensor::empty({0, 4}, DType::i32).to(kGpu);
  const auto r = mxfp4::gather_linear_expert_order(Tensor::empty({0, k}, DType::bf16).to(kGpu),
                                                   none, on_gpu(w));
  ASSERT_NO_THROW(mxfp4::synchronize());
  EXPECT_EQ(r.out.shape(), (mxfp4::Shape{0, n}));
  const Tensor off = r.offsets.to(mxfp4::Device::cpu());
  for (std::int64_t e = 0; e <= experts; ++e)
    EXPECT_EQ(off.data_as<std::int32_t>()[e], 0) << "expert " << e;
}

// Expert order with an out-of-range id on each routing path: its pair comes last, its row NaN,
// the valid rows right, and synchronize() names the id.
TEST(Cuda, GatherLinearExpertOrderPlacesBadIdsLast) {
  REQUIRE_GPU();
  const std::int64_t experts = 4, n = 16, k = 64;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 1));
  const auto wg = on_gpu(w);
  struct Case {
    std::int64_t tokens, topk;
    DType dtype;
    std::int64_t bad;
  };
  for (const Case c :
       {Case{3, 2, DType::bf16, 4}, Case{100, 4, DType::bf16, -1}, Case{1100, 4, DType::f16, 7},
        Case{5, 2, DType::f32, 1000}, Case{300, 2, DType::f32, 9}}) {
    const std::int64_t pairs = c.tokens * c.topk;
    std::vector<std::int64_t> ids(static_cast<std::size_t>(pairs));
    for (std::int64_t p = 0; p < pairs; ++p)
      ids[static_cast<std::size_t>(p)] = (p * 7 + 1) % experts;
    const std::int64_t bad_pair = pairs - 2;
    ids[static_cast<std::size_t>(bad_pair)] = c.bad;
    const Tensor idt = Tensor::from_vector(ids, {c.tokens, c.topk});
    const Tensor x = random_tensor({c.tokens, k}, c.dtype, 2);
    const auto r = mxfp4::gather_linear_expert_order(x.to(kGpu), idt.to(kGpu), wg);
    EXPECT_THROW(mxfp4::synchronize(), mxfp4::IndexOutOfRange) << "T=" << c.tokens;
    EXPECT_NO_THROW(mxfp4::synchronize());
    const std::string what = std::string(mxfp4::dtype_name(c.dtype)) +
                             " T=" + std::to_string(c.tokens) + " bad id " + std::to_string(c.bad);
    expect_expert_order(x, idt, w, r.out.to(mxfp4::Device::cpu()), r.perm.to(mxfp4::Device::cpu()),
                        r.offsets.to(mxfp4::Device::cpu()), bad_pair, what);
    if (HasFatalFailure()) return;
  }
}

TEST(Cuda, GatherLinearWorkspaceSize) {
  EXPECT_EQ(mxfp4::gather_linear_workspace_bytes(1, 4, 128), 0u);  // routed in the kernel
  EXPECT_GE(mxfp4::gather_linear_workspace_bytes(1024, 4, 128), 4096u * 4 + 4 * 128 * 4);
  EXPECT_THROW(mxfp4::gather_linear_workspace_bytes(-1, 4, 8), mxfp4::InvalidArgument);
  // With k: the plan plus 2 * k bytes per pair for staged x rows; k must be a block multiple.
  EXPECT_EQ(mxfp4::gather_linear_workspace_bytes(1, 4, 128, 2880), 0u);
  EXPECT_GE(mxfp4::gather_linear_workspace_bytes(1024, 4, 128, 2880),
            mxfp4::gather_linear_workspace_bytes(1024, 4, 128) + 4096u * 2880 * 2);
  EXPECT_THROW(mxfp4::gather_linear_workspace_bytes(1024, 4, 128, 33), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4::gather_linear_workspace_bytes(1024, 4, 128, -32), mxfp4::InvalidArgument);
}

#if defined(MXFP4_TEST_CUDA_RUNTIME)
// linear_into captured in a CUDA graph on a stream of its own, for x [m, k] (bf16) and a weight
// [n, k]: each of two replays must compute the whole output again (poisoned in between).
void expect_graph_replays_linear(std::int64_t m, std::int64_t n, std::int64_t k,
                                 std::uint64_t seed) {
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({n, k}, DType::f32, seed));
  const auto wg = on_gpu(w);
  const Tensor x = random_tensor({m, k}, DType::bf16, seed + 1);
  const Tensor xg = x.to(kGpu);
  const Tensor ref = mxfp4::linear(x, w);
  Tensor out = Tensor::zeros({m, n}, DType::bf16, kGpu);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  mxfp4::linear_into(xg, wg, out, {mxfp4::Stream{stream}});
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaMemsetAsync(out.data(), 0xFF, out.nbytes(), stream), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    expect_linear_close(x, w, ref, out.to(mxfp4::Device::cpu()),
                        "M=" + std::to_string(m) + " replay " + std::to_string(replay));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// linear_into never synchronizes (and allocates nothing for this shape): it can be captured in a
// CUDA graph.
TEST(Cuda, LinearCanBeCapturedInACudaGraph) {
  REQUIRE_GPU();
  expect_graph_replays_linear(4, 96, 256, 1);
}

// Stream-K (Hopper, bf16, M = 200 with K = 8192) without a workspace: its scratch comes from
// stream-ordered memory and its flags are cleared by a memset, both of which a graph captures.
TEST(Cuda, LinearStreamKCanBeCapturedInACudaGraph) {
  REQUIRE_GPU();
  expect_graph_replays_linear(200, 40, 8192, 3);
}

// gather_linear too, with and without a caller workspace (of the plan's size, and with room to
// stage x rows for the Hopper GEMM), for every routing path (in the kernel, one CTA, three
// kernels: 6, 600 and 4200 pairs).
TEST(Cuda, GatherLinearCanBeCapturedInACudaGraph) {
  REQUIRE_GPU();
  const std::int64_t experts = 8, n = 40, k = 128, topk = 2;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 1));
  const auto wg = on_gpu(w);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  for (std::int64_t tokens : {3, 300, 2100}) {
    for (int lend : {0, 1, 2}) {
      const Tensor x = random_tensor({tokens, k}, DType::bf16, 2);
      const Tensor ids = routing(tokens, topk, experts, false, DType::i32, 3);
      const Tensor xg = x.to(kGpu), idg = ids.to(kGpu);
      Tensor out = Tensor::zeros({tokens, topk, n}, DType::bf16, kGpu);
      const std::size_t bytes =
          mxfp4::gather_linear_workspace_bytes(tokens, topk, experts, lend == 2 ? k : 0);
      Tensor space = Tensor::empty({static_cast<std::int64_t>(bytes) + 1}, DType::u8, kGpu);
      mxfp4::RunOptions run{mxfp4::Stream{stream}};
      if (lend != 0) run.workspace = {space.data(), bytes};
      cudaGraph_t graph;
      ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
      mxfp4::gather_linear_into(xg, idg, wg, out, run);
      ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      cudaGraphExec_t exec;
      ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      ASSERT_NO_THROW(mxfp4::synchronize(mxfp4::Stream{stream}));
      expect_gather_close(x, ids, w, out.to(mxfp4::Device::cpu()),
                          "graph T=" + std::to_string(tokens) +
                              (lend == 0   ? ""
                               : lend == 1 ? " workspace"
                                           : " staging workspace"));
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  }
  cudaStreamDestroy(stream);
}

// Calls in a row on one stream, sharing one workspace, with no synchronization between them: no
// call may read a plan, cursor or staged row that the next one has begun to overwrite. Skewed and
// uniform batches, small (routed in the kernel or by one CTA) and large (three kernels), alternate.
TEST(Cuda, GatherLinearCallsInARowShareOneWorkspace) {
  REQUIRE_GPU();
  const std::int64_t experts = 16, n = 72, k = 192, topk = 4;
  const auto w = mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 70));
  const auto wg = on_gpu(w);
  const std::int64_t sizes[] = {1100, 40, 1500, 7, 300, 1100};
  const std::int64_t most = 1500;
  const std::size_t bytes = mxfp4::gather_linear_workspace_bytes(most, topk, experts, k);
  Tensor space = Tensor::empty({static_cast<std::int64_t>(bytes)}, DType::u8, kGpu);
  mxfp4::RunOptions run;
  run.workspace = {space.data(), bytes};
  std::vector<Tensor> xs, ids, xg, idg, outs;
  std::uint64_t seed = 71;
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    xs.push_back(random_tensor({sizes[i], k}, DType::bf16, ++seed));
    ids.push_back(routing(sizes[i], topk, experts, i % 2 == 0, DType::i32, ++seed));
    xg.push_back(xs.back().to(kGpu));
    idg.push_back(ids.back().to(kGpu));
    outs.push_back(Tensor::zeros({sizes[i], topk, n}, DType::bf16, kGpu));
  }
  ASSERT_NO_THROW(mxfp4::synchronize());
  for (std::size_t i = 0; i < std::size(sizes); ++i)
    mxfp4::gather_linear_into(xg[i], idg[i], wg, outs[i], run);
  ASSERT_NO_THROW(mxfp4::synchronize());
  for (std::size_t i = 0; i < std::size(sizes); ++i) {
    expect_gather_close(xs[i], ids[i], w, outs[i].to(mxfp4::Device::cpu()),
                        "call " + std::to_string(i) + " T=" + std::to_string(sizes[i]));
  }
}

// Which experts the routing found to be runs of x (GatherLinearReadsRunsOfXInPlace), read back
// from the workspace where the plan records them (core/kernel_args.hpp), on Hopper with bf16 x
// (where x rows are staged): exactly experts 0-3, and none once expert 0's rows repeat and
// expert 1 misses one. Both routing paths (one CTA up to 4096 pairs, three kernels past it).
TEST(Cuda, GatherLinearFindsTheRunsOfX) {
  REQUIRE_GPU();
  int device = 0, major = 0, minor = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), cudaSuccess);
  if (major != 9 || minor != 0) GTEST_SKIP() << "x rows are staged on sm_90 only";
  // A forced kernel may take the staging away (decode_*, gemm*, wgmma_cpasync, moe_stage_all):
  // the flags are checked under the default choice (scripts/gpu-check's first pass).
  const char* forced = std::getenv("MXFP4_CUDA_KERNEL");
  if (forced != nullptr && *forced != '\0') {
    GTEST_SKIP() << "MXFP4_CUDA_KERNEL=" << forced << " is set";
  }
  const std::int64_t experts = 12, n = 64, k = 128, topk = 4;
  const auto wg =
      on_gpu(mxfp4::Mxfp4Weight::quantize(random_tensor({experts, n, k}, DType::f32, 41)));
  for (std::int64_t tokens : {700, 1100}) {
    for (bool duplicate : {false, true}) {
      const std::int64_t from = tokens / 5;
      const Tensor ids =
          Tensor::from_vector(run_routing(tokens, topk, from, duplicate), {tokens, topk});
      const Tensor x = random_tensor({tokens, k}, DType::bf16, 42).to(kGpu);
      Tensor out = Tensor::empty({tokens, topk, n}, DType::bf16, kGpu);
      const std::size_t bytes = mxfp4::gather_linear_workspace_bytes(tokens, topk, experts, k);
      Tensor space = Tensor::zeros({static_cast<std::int64_t>(bytes)}, DType::u8, kGpu);
      mxfp4::RunOptions run;
      run.workspace = {space.data(), bytes};
      mxfp4::gather_linear_into(x, ids.to(kGpu), wg, out, run);
      ASSERT_NO_THROW(mxfp4::synchronize());
      const mxfp4::detail::CudaGatherPlan plan{tokens * topk, experts};
      std::vector<int> runs(static_cast<std::size_t>(2 * experts));
      std::vector<int> offsets(static_cast<std::size_t>(experts + 1));
      const auto* base = static_cast<const std::uint8_t*>(space.data());
      ASSERT_EQ(cudaMemcpy(runs.data(), base + plan.runs_at(), runs.size() * sizeof(int),
                           cudaMemcpyDeviceToHost),
                cudaSuccess);
      ASSERT_EQ(cudaMemcpy(offsets.data(), base + plan.offsets_at(), offsets.size() * sizeof(int),
                           cudaMemcpyDeviceToHost),
                cudaSuccess);
      for (std::int64_t e = 0; e < experts; ++e) {
        const auto i = static_cast<std::size_t>(e);
        const bool run_expected = e < 4 && !(duplicate && e < 2);
        EXPECT_EQ(runs[2 * i], run_expected ? 1 : 0)
            << "T=" << tokens << (duplicate ? " duplicate" : "") << " expert " << e;
        // A run's first position reads x row `from`.
        if (run_expected) {
          EXPECT_EQ(offsets[i] + runs[2 * i + 1], from) << "expert " << e;
        }
      }
    }
  }
}
#endif

// ---- The quantize kernel (quantize_block_fast, branch quant-fast) on blocks built to be hard:
// every element on E2M1's grid or its midpoints after scaling, saturation, f32's largest values,
// subnormals, signed zeros, mse's exact ties and sums closer than its f32 estimate can tell
// (tests/test_quantize_block_fast.cpp checks the same kinds on the CPU), every rule and input
// type, one block a row so that the last warp is partial.
TEST(Cuda, QuantizeIsBitIdenticalOnHardBlocks) {
  REQUIRE_GPU();
  std::vector<float> values;
  const auto bits = [](std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
  };
  for (int k = -150; k <= 126; k += 2) {
    for (float top : {6.0f, 7.0f, 12.0f, 3.5f, 5.0f}) {
      for (int i = 0; i < 31; ++i)
        values.push_back(
            std::ldexp((i % 2 ? -1.0f : 1.0f) * static_cast<float>(i % 25) * 0.25f, k));
      values.push_back(std::ldexp(top, k));
    }
  }
  std::mt19937 rng(5);
  for (int n = 0; n < 2000; ++n) {
    const int k = static_cast<int>(rng() % 240) - 120;
    if (n % 2) {  // amax and tiny neighbours: the mse candidates' errors tie exactly
      for (int i = 0; i < 32; ++i)
        values.push_back(i == n % 32
                             ? std::ldexp(6.0f + static_cast<float>(rng() % 4096) / 512.0f, k)
                             : std::ldexp(static_cast<float>(rng() % 100) - 50.0f, k - 20));
    } else {  // two elements whose error differences cancel to a few ulps
      const std::uint32_t six = 0x40C00000u, seven = 0x40E00000u, j = 1 + rng() % 60;
      const float common = bits(six + 1 + rng() % (seven - six - 1));
      for (int i = 0; i < 32; ++i) {
        float x = rng() % 2 ? common : bits(six + 1 + rng() % (seven - six - 1));
        if (i == 3) x = bits(seven + j);
        if (i == 20) x = bits(0x3FA00000u + 16 * j + rng() % 5 - 2);  // 1.25 + m ulps
        values.push_back(std::ldexp(rng() % 2 ? x : -x, k));
      }
    }
  }
  for (std::uint32_t top : {0x7F7FFFFFu, 0x7F600000u, 0x7F5FFFFFu, 0x7EC00001u, 0x00000003u,
                            0x007FFFFFu, 0x00800000u}) {
    for (int i = 0; i < 32; ++i)
      values.push_back(i % 7 == 0 ? bits(top) : (i % 2 ? -0.0f : bits(top / 3 + i)));
  }
  // mistralrs: negative elements whose quotient underflows to -0 (code 0, not 8) at scale 2^4.
  for (int i = 0; i < 32; ++i)
    values.push_back(i == 0 ? 100.0f : -bits(static_cast<std::uint32_t>(i % 12)));
  const std::int64_t rows = static_cast<std::int64_t>(values.size()) / 32;
  Tensor w = Tensor::empty({rows, 32}, DType::f32);
  std::memcpy(w.data(), values.data(), values.size() * sizeof(float));
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor wt = dtype == DType::f32 ? w : w.to(dtype);  // f16 overflows to Inf: NaN blocks
    for (auto rule : {mxfp4::ScaleRule::floor, mxfp4::ScaleRule::ceil, mxfp4::ScaleRule::even,
                      mxfp4::ScaleRule::mse, mxfp4::ScaleRule::mistralrs}) {
      const mxfp4::QuantizeOptions opts{rule, mxfp4::NonFinitePolicy::nan_block};
      const auto cpu = mxfp4::quantize(wt, opts);
      const auto gpu = mxfp4::quantize(wt.to(kGpu), opts);
      const std::string what = std::string(mxfp4::scale_rule_name(rule)) + " " +
                               std::string(mxfp4::dtype_name(dtype)) + " hard blocks";
      expect_bytes_equal(cpu.blocks, gpu.blocks, what + " blocks");
      expect_bytes_equal(cpu.scales, gpu.scales, what + " scales");
    }
  }
}

// ---- bf16 with the mse rule: the kernel's packed path (quantize_block_bf16_mse_fast, branch
// quant-bf16; tests/test_quantize_block_fast.cpp checks its arithmetic through a host emulation
// of the bf16x2 instructions, which this test checks against the hardware). Random blocks of
// several distributions at every scale, E2M1's grid and midpoints, exact ties with and without
// tiny elements (the f64 path on the device), errors that cancel, zero blocks, subnormals
// around the smallest scale the packed path takes, NaN and Inf; then the report of a NaN.
TEST(Cuda, QuantizeBf16MseIsBitIdenticalOnManyBlocks) {
  REQUIRE_GPU();
  std::mt19937_64 rng(26);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values;
  for (int n = 0; n < 24000; ++n) {
    const int k = static_cast<int>(rng() % 270) - 140;
    float b[32];
    switch (n % 8) {
      case 0:
        for (float& x : b)
          x = std::ldexp(normal(rng), k);
        break;
      case 1:
        for (float& x : b) {
          const float n1 = normal(rng);
          x = std::ldexp(n1 * n1 * n1, k);
        }
        break;
      case 2:
        for (float& x : b)
          x = std::ldexp(static_cast<float>(static_cast<int>(rng() % 97) - 48) * 0.125f, k);
        break;
      case 3:  // exact ties: amax and neighbours that code to 0 in both candidates
        for (float& x : b)
          x = std::ldexp(normal(rng), k - 12 - static_cast<int>(rng() % 20));
        b[rng() % 32] = std::ldexp(6.0f + static_cast<float>(rng() % 64) / 64.0f, k);
        break;
      case 4: {  // 7 + j/32 against elements 1.25 + m/128 whose m add up to about 16 j
        for (float& x : b)
          x = std::ldexp(6.0f + static_cast<float>(rng() % 32) / 32.0f, k);
        const int j = 1 + static_cast<int>(rng() % 6);
        int left = 16 * j + static_cast<int>(rng() % 5) - 2;
        b[31] = std::ldexp(7.0f + static_cast<float>(j) / 32.0f, k);
        for (int i = 0; left > 0; ++i) {
          const int m = left < 31 ? left : 16 + static_cast<int>(rng() % 16);
          b[i] = std::ldexp(1.25f + static_cast<float>(m) / 128.0f, k);
          left -= m;
        }
        if (n % 16 == 4) {
          for (int i = 20; i < 24; ++i)
            b[i] = std::ldexp(1.5f, k - 20 - static_cast<int>(rng() % 30));
        }
        break;
      }
      case 5:  // zeros, signed zeros, a few bf16 subnormals
        for (int i = 0; i < 32; ++i)
          b[i] = i % 3 ? 0.0f : -0.0f;
        if (n % 16 == 5) {
          for (int i = 1; i < 32; i += 5)
            b[i] = std::ldexp(static_cast<float>(1 + rng() % 127), -133);
        }
        break;
      case 6:  // amax near 2^-120 with subnormal neighbours: both sides of the packed path
        for (int i = 0; i < 32; ++i)
          b[i] = std::ldexp(static_cast<float>(1 + rng() % 127), -133) * (i % 2 ? -1.0f : 1.0f);
        b[rng() % 32] = std::ldexp(1.0f + static_cast<float>(rng() % 128) / 128.0f,
                                   -126 + static_cast<int>(rng() % 8));
        break;
      default:  // NaN or Inf among finite values
        for (float& x : b)
          x = std::ldexp(normal(rng), k);
        b[rng() % 32] = rng() % 2 ? NAN : -INFINITY;
        break;
    }
    for (float& x : b) {
      if (std::isfinite(x) && std::fabs(x) > 3e38f) x = std::copysign(3e38f, x);
      values.push_back(x);
    }
  }
  const std::int64_t rows = static_cast<std::int64_t>(values.size()) / 32;
  Tensor f = Tensor::empty({rows, 32}, DType::f32);
  std::memcpy(f.data(), values.data(), values.size() * sizeof(float));
  const Tensor w = f.to(DType::bf16);
  const mxfp4::QuantizeOptions opts{mxfp4::ScaleRule::mse, mxfp4::NonFinitePolicy::nan_block};
  const auto cpu = mxfp4::quantize(w, opts);
  const auto gpu = mxfp4::quantize(w.to(kGpu), opts);
  expect_bytes_equal(cpu.blocks, gpu.blocks, "bf16 mse blocks");
  expect_bytes_equal(cpu.scales, gpu.scales, "bf16 mse scales");

  Tensor one = random_tensor({3, 64}, DType::f32, 9);
  one.data_as<float>()[64 + 45] = NAN;
  const mxfp4::QuantizeOptions strict{mxfp4::ScaleRule::mse, mxfp4::NonFinitePolicy::error};
  try {
    mxfp4::quantize(one.to(DType::bf16).to(kGpu), strict);
    FAIL() << "expected NonFiniteValue";
  } catch (const mxfp4::NonFiniteValue& e) {
    EXPECT_NE(std::string(e.what()).find("row 1, column 45"), std::string::npos) << e.what();
  }
}

}  // namespace
