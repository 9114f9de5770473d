// What this CPU can run: CPUID's feature bits and the register state the operating system has
// enabled (XGETBV), read once. A feature counts only when both agree: an AVX-512 CPU under an OS
// that does not save ZMM registers cannot run AVX-512 code.
//
// The features each kernel table needs are the ones its translation unit is compiled with: both
// come from one list per ISA in CMakeLists.txt (MXFP4_AVX2_FEATURES, MXFP4_AVX512_FEATURES).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/cpu_kernels.hpp"

namespace mxfp4::cpu {

struct CpuFeatures {
  std::uint64_t cpuid = 0;  // bit i set: CPUID reports feature i of the table in cpu_features.cpp
  std::uint64_t xcr0 = 0;   // XGETBV(0): the register state the OS saves (0 without OSXSAVE)
};

// Whether this build has the avx2 and avx512 tables (x86-64 builds).
bool x86_kernels_built() noexcept;
// Whether this build has the neon table (AArch64 builds, where every CPU runs it).
bool neon_kernels_built() noexcept;

// This machine's features, detected on first call (thread-safe); all zero on non-x86 builds.
const CpuFeatures& host_cpu_features();

// A CpuFeatures with the named features (-m flag names: "avx2", "avx512vbmi", ...) and the given
// XCR0, for tests. Throws InvalidArgument for a name the table does not know.
CpuFeatures make_cpu_features(const std::vector<std::string>& names, std::uint64_t xcr0);

// The feature names detection knows, and whether `features` has one of them (CPUID only).
std::vector<std::string> known_cpu_features();
bool has_feature(const CpuFeatures& features, const std::string& name);

// What `isa` needs that `features` lacks: feature names ("avx512vbmi") and register states the
// OS has not enabled ("OS-enabled ZMM state (XCR0 bits 5-7)"). Empty when it can run `isa`.
std::vector<std::string> missing_features(const CpuFeatures& features, Isa isa);

// Whether `features` runs matmul_rows_int8_avx512vnni (the avx512 table's features plus
// AVX512_VNNI, OS-enabled); false on builds without the x86 tables.
bool avx512vnni_usable(const CpuFeatures& features);

// The highest level `features` can run (scalar at least).
Isa best_isa(const CpuFeatures& features);

// Throws Unsupported, prefixed by `what`, naming what is missing when `features` cannot run `isa`.
void require_isa(const CpuFeatures& features, Isa isa, const char* what);

// "scalar", "avx2", "avx512", "neon".
const char* isa_name(Isa isa) noexcept;

// MXFP4_CPU_ISA's value (null when unset) -> the level to use on a machine whose best is
// `supported`. Unknown names and levels this machine does not run (above `supported`, or of the
// other architecture: avx2 on AArch64, neon on x86-64) give `supported` / are lowered to it,
// with a warning (empty when there is nothing to say). Case-insensitive.
struct IsaChoice {
  Isa isa;
  std::string warning;
};
IsaChoice parse_isa_env(const char* value, Isa supported);

}  // namespace mxfp4::cpu
