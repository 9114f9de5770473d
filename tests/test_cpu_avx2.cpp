// The AVX2 kernel table (src/cpu/kernels_avx2.cpp) called directly, against the reference
// (src/reference): quantize and dequantize bit for bit, matmul within a K-scaled tolerance, and
// the matmul's invariance to how a call's columns and rows are split (bit for bit). The checks are
// in tests/cpu_table_checks.hpp, shared with tests/test_cpu_neon.cpp.
#include <gtest/gtest.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "cpu/cpu_kernels.hpp"
#include "cpu_table_checks.hpp"

// The avx2 table exists only in x86-64 builds (CMakeLists.txt).
#if defined(__x86_64__)

namespace {

using mxfp4::cpu::Kernels;

// AVX2, FMA, F16C and BMI2 in CPUID, and the YMM state enabled by the OS (XGETBV).
bool cpu_has_avx2() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = (c >> 12) & 1u, osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u,
             f16c = (c >> 29) & 1u;
  if (!(fma && osxsave && avx && f16c)) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & 6u) != 6u) return false;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return ((b >> 5) & 1u) && ((b >> 8) & 1u);  // AVX2, BMI2
}

#define REQUIRE_AVX2()                                                   \
  do {                                                                   \
    if (!cpu_has_avx2()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C/BMI2"; \
  } while (0)

TEST(CpuAvx2, Table) {
  REQUIRE_AVX2();
  const Kernels& k = mxfp4::cpu::avx2_kernels();
  EXPECT_EQ(k.isa, mxfp4::cpu::Isa::avx2);
  EXPECT_STREQ(k.name, "avx2");
  EXPECT_NE(k.quantize_rows, nullptr);
  EXPECT_NE(k.dequantize_rows, nullptr);
  EXPECT_NE(k.matmul_rows, nullptr);
}

TEST(CpuAvx2, QuantizeMatchesReferenceBitForBit) {
  REQUIRE_AVX2();
  cpu_table_checks::check_quantize_matches_reference_bit_for_bit(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, QuantizeFirstNonFinite) {
  REQUIRE_AVX2();
  cpu_table_checks::check_quantize_first_non_finite(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, DequantizeEveryCodeAndScale) {
  REQUIRE_AVX2();
  cpu_table_checks::check_dequantize_every_code_and_scale(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, DequantizeRandom) {
  REQUIRE_AVX2();
  cpu_table_checks::check_dequantize_random(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, MatmulMatchesReference) {
  REQUIRE_AVX2();
  cpu_table_checks::check_matmul_matches_reference(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, MatmulLargeBlocking) {
  REQUIRE_AVX2();
  cpu_table_checks::check_matmul_large_blocking(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, MatmulSplitInvariance) {
  REQUIRE_AVX2();
  cpu_table_checks::check_matmul_split_invariance(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, MatmulSpecialScales) {
  REQUIRE_AVX2();
  cpu_table_checks::check_matmul_special_scales(mxfp4::cpu::avx2_kernels());
}

TEST(CpuAvx2, MatmulRowsOfALargerCall) {
  REQUIRE_AVX2();
  cpu_table_checks::check_matmul_rows_of_a_larger_call(mxfp4::cpu::avx2_kernels());
}

}  // namespace

#else

TEST(CpuAvx2, NotX86) {
  GTEST_SKIP() << "the avx2 kernels exist only in x86-64 builds";
}

#endif
