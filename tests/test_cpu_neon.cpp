// The NEON kernel table (src/cpu/kernels_neon.cpp) called directly, against the reference
// (src/reference): quantize and dequantize bit for bit, matmul within a K-scaled tolerance, and
// the matmul's invariance to how a call's columns and rows are split (bit for bit). The same
// checks as tests/test_cpu_avx2.cpp (both in tests/cpu_table_checks.hpp); Advanced SIMD is
// baseline on AArch64, so nothing is detected.
#include <gtest/gtest.h>

#include "cpu/cpu_kernels.hpp"
#include "cpu_table_checks.hpp"

// The neon table exists only in AArch64 builds (CMakeLists.txt).
#if defined(__aarch64__)

namespace {

using mxfp4::cpu::Kernels;

TEST(CpuNeon, Table) {
  const Kernels& k = mxfp4::cpu::neon_kernels();
  EXPECT_EQ(k.isa, mxfp4::cpu::Isa::neon);
  EXPECT_STREQ(k.name, "neon");
  EXPECT_NE(k.quantize_rows, nullptr);
  EXPECT_NE(k.dequantize_rows, nullptr);
  EXPECT_NE(k.matmul_rows, nullptr);
}

TEST(CpuNeon, QuantizeMatchesReferenceBitForBit) {
  cpu_table_checks::check_quantize_matches_reference_bit_for_bit(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, QuantizeFirstNonFinite) {
  cpu_table_checks::check_quantize_first_non_finite(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, DequantizeEveryCodeAndScale) {
  cpu_table_checks::check_dequantize_every_code_and_scale(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, DequantizeRandom) {
  cpu_table_checks::check_dequantize_random(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, MatmulMatchesReference) {
  cpu_table_checks::check_matmul_matches_reference(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, MatmulLargeBlocking) {
  cpu_table_checks::check_matmul_large_blocking(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, MatmulSplitInvariance) {
  cpu_table_checks::check_matmul_split_invariance(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, MatmulSpecialScales) {
  cpu_table_checks::check_matmul_special_scales(mxfp4::cpu::neon_kernels());
}

TEST(CpuNeon, MatmulRowsOfALargerCall) {
  cpu_table_checks::check_matmul_rows_of_a_larger_call(mxfp4::cpu::neon_kernels());
}

}  // namespace

#else

TEST(CpuNeon, NotAArch64) {
  GTEST_SKIP() << "the neon kernels exist only in AArch64 builds";
}

#endif
