// <immintrin.h> for the AVX-512 translation units (kernels_avx512.cpp,
// kernels_int8_avx512vnni.cpp). GCC 12 reports the `__m512i __Y = __Y;` of
// _mm512_undefined_epi32 and its kin (used by most AVX-512 intrinsics) as (maybe-)uninitialized
// once inlined (GCC bug 105593, fixed in GCC 13).
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
