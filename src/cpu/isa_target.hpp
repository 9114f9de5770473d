// Included by an ISA translation unit (kernels_avx2.cpp, kernels_avx512.cpp) after all of its
// includes: everything defined after MXFP4_ISA_TARGET_BEGIN until MXFP4_ISA_TARGET_END is
// compiled for the features in MXFP4_ISA_TARGET (a string like "avx2,fma,f16c,bmi2", set by
// CMake from the same list that cpu_features.cpp checks).
//
// Why not -mavx2 on the whole file: inline functions from shared headers (format.hpp, dtype.hpp,
// the standard library) would then also be compiled with AVX2 in this file, and where the
// compiler emits them out of line (Debug builds, large functions) the linker keeps one copy for
// the whole program, possibly this one -- so baseline code on a CPU without AVX2 would run AVX2
// instructions. With the target limited to this file's own functions, every shared function is
// baseline code; ours may still inline it.
#pragma once

#if !defined(MXFP4_ISA_TARGET)
#error "MXFP4_ISA_TARGET must name this file's target features (set by CMakeLists.txt)"
#endif

#define MXFP4_PRAGMA_STRING(...) _Pragma(#__VA_ARGS__)
#define MXFP4_PRAGMA(...) MXFP4_PRAGMA_STRING(__VA_ARGS__)

#if defined(__clang__)
#define MXFP4_ISA_TARGET_BEGIN \
  MXFP4_PRAGMA(clang attribute push(__attribute__((target(MXFP4_ISA_TARGET))), apply_to = function))
#define MXFP4_ISA_TARGET_END MXFP4_PRAGMA(clang attribute pop)
#else
#define MXFP4_ISA_TARGET_BEGIN \
  MXFP4_PRAGMA(GCC push_options) MXFP4_PRAGMA(GCC target(MXFP4_ISA_TARGET))
#define MXFP4_ISA_TARGET_END MXFP4_PRAGMA(GCC pop_options)
#endif
