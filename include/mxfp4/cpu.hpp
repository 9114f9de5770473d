// The CPU backend's settings: which instruction set its kernels use and how many threads run
// them. Both are chosen once, at the first call that needs them, and can be changed at any time
// (a call already running finishes with the settings it started with).
//
// Instruction set: the best one this CPU and its operating system can run (CPUID and XGETBV),
// or the one named by the environment variable MXFP4_CPU_ISA=scalar|avx2|avx512|neon, read once.
// The variable is an upper bound: a level this machine does not run is lowered to the best one it
// runs, and an unknown name is ignored, each with a one-line warning on stderr. Every level
// computes the same quantize/dequantize bytes; linear and gather_linear differ between levels
// only by f32 rounding.
//
// Threads: a pool of persistent workers that the calling thread joins; MXFP4_NUM_THREADS=n, read
// once, sets the initial count (default and 0: the CPUs this process may run on; an invalid value
// is ignored with a warning on stderr). Results are identical whatever the thread count. Callers
// that run the library from several threads of their own should call set_num_threads(1), so
// that the library does not add its workers to theirs.
#pragma once

#include <cstdint>

namespace mxfp4 {

// The x86-64 levels are ordered: each runs everything the levels below it run. neon is the
// AArch64 level: above scalar there, unavailable on x86-64 (as avx2 and avx512 are on AArch64).
// The values are part of the API: new levels are appended.
enum class CpuIsa : std::uint8_t {
  scalar = 0,  // portable C++ (any CPU)
  avx2 = 1,    // AVX2, FMA, F16C, BMI2 (x86-64 from Haswell / Zen 1)
  avx512 = 2,  // AVX-512 F, BW, VL, DQ, VBMI plus the avx2 set (Ice Lake / Zen 4 and later)
  neon = 3,    // AArch64 Advanced SIMD (every AArch64 CPU; AArch64 builds only)
};

// "scalar", "avx2", "avx512", "neon" ("unknown" for a value outside the enum).
const char* cpu_isa_name(CpuIsa isa) noexcept;

// The best level this CPU and operating system run (neon on AArch64 builds, scalar on builds
// for other non-x86 targets).
CpuIsa cpu_isa_supported();

// The level the CPU kernels use now.
CpuIsa cpu_isa();

// Uses `isa` from the next call on. Throws Unsupported naming the missing CPU features (or the
// register state the OS has not enabled) when this machine cannot run it, and InvalidArgument
// for a value outside the enum. Overrides MXFP4_CPU_ISA.
void set_cpu_isa(CpuIsa isa);

// Threads that run one CPU call, the caller included: n >= 1, or 0 for the number of CPUs this
// process may run on. Throws InvalidArgument for n < 0 or n > 1024. Overrides MXFP4_NUM_THREADS.
void set_num_threads(int n);

// The thread count CPU calls use now (>= 1).
int num_threads();

}  // namespace mxfp4
