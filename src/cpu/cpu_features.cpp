#include "cpu/cpu_features.hpp"

#include <cctype>
#include <string_view>

#include "mxfp4/error.hpp"

#if defined(MXFP4_CPU_X86)
#include <cpuid.h>
#endif

namespace mxfp4::cpu {

namespace {

enum Reg : std::uint8_t { eax, ebx, ecx, edx };

// XCR0 bits: 1 SSE (XMM), 2 AVX (upper YMM), 5 opmask, 6 ZMM0-15 upper halves, 7 ZMM16-31.
constexpr std::uint64_t kYmmState = 0x6;
constexpr std::uint64_t kZmmState = 0xE6;

struct Feature {
  std::string_view name;  // GCC/Clang -m flag name
  std::uint32_t leaf;
  std::uint32_t subleaf;
  Reg reg;
  int bit;
  std::uint64_t state;  // XCR0 bits the OS must enable for its instructions
};

// Intel SDM vol. 2A, CPUID; every name a CMake feature list may use must be here.
constexpr Feature kFeatures[] = {
    {"avx", 1, 0, ecx, 28, kYmmState},
    {"fma", 1, 0, ecx, 12, kYmmState},
    {"f16c", 1, 0, ecx, 29, kYmmState},
    {"bmi", 7, 0, ebx, 3, 0},
    {"avx2", 7, 0, ebx, 5, kYmmState},
    {"bmi2", 7, 0, ebx, 8, 0},
    {"avx512f", 7, 0, ebx, 16, kZmmState},
    {"avx512dq", 7, 0, ebx, 17, kZmmState},
    {"avx512ifma", 7, 0, ebx, 21, kZmmState},
    {"avx512cd", 7, 0, ebx, 28, kZmmState},
    {"avx512bw", 7, 0, ebx, 30, kZmmState},
    {"avx512vl", 7, 0, ebx, 31, kZmmState},
    {"avx512vbmi", 7, 0, ecx, 1, kZmmState},
    {"avx512vbmi2", 7, 0, ecx, 6, kZmmState},
    {"avx512vnni", 7, 0, ecx, 11, kZmmState},
    {"avx512bitalg", 7, 0, ecx, 12, kZmmState},
    {"avx512vpopcntdq", 7, 0, ecx, 14, kZmmState},
    {"avx512fp16", 7, 0, edx, 23, kZmmState},
    {"avxvnni", 7, 1, eax, 4, kYmmState},
    {"avx512bf16", 7, 1, eax, 5, kZmmState},
};
constexpr int kNumFeatures = static_cast<int>(sizeof(kFeatures) / sizeof(kFeatures[0]));
static_assert(kNumFeatures <= 64);

constexpr int feature_index(std::string_view name) {
  for (int i = 0; i < kNumFeatures; ++i) {
    if (kFeatures[i].name == name) return i;
  }
  return -1;
}

// Reached only while evaluating a constant expression with a name kFeatures lacks, which makes
// that expression ill-formed: a CMake feature list with an unknown name does not compile.
void feature_name_missing_from_kFeatures() {}

// "avx2,fma,f16c" -> its bits in kFeatures.
constexpr std::uint64_t feature_mask(std::string_view list) {
  std::uint64_t mask = 0;
  while (!list.empty()) {
    const std::size_t comma = list.find(',');
    const std::string_view name = list.substr(0, comma);
    const int i = feature_index(name);
    if (i < 0) feature_name_missing_from_kFeatures();
    mask |= std::uint64_t{1} << i;
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return mask;
}

#if defined(MXFP4_CPU_X86)
// Every avx2/avx512 flag implies -mavx, so the compiler may emit AVX instructions in those files.
constexpr std::uint64_t kAvx2Needs = feature_mask(MXFP4_AVX2_FEATURES) | feature_mask("avx");
constexpr std::uint64_t kAvx512Needs = feature_mask(MXFP4_AVX512_FEATURES) | feature_mask("avx");
constexpr std::uint64_t kAvx512VnniNeeds =
    feature_mask(MXFP4_AVX512VNNI_FEATURES) | feature_mask("avx");
#else
constexpr std::uint64_t kAvx512VnniNeeds = 0;
constexpr std::uint64_t kAvx2Needs = 0;
constexpr std::uint64_t kAvx512Needs = 0;
#endif

std::uint64_t state_needed(std::uint64_t mask) {
  std::uint64_t state = 0;
  for (int i = 0; i < kNumFeatures; ++i) {
    if (mask & (std::uint64_t{1} << i)) state |= kFeatures[i].state;
  }
  return state;
}

#if defined(MXFP4_CPU_X86)
CpuFeatures detect() {
  CpuFeatures f;
  unsigned regs1[4] = {};
  unsigned regs70[4] = {};
  unsigned regs71[4] = {};
  const unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf >= 1) __cpuid(1, regs1[0], regs1[1], regs1[2], regs1[3]);
  if (max_leaf >= 7) {
    __cpuid_count(7, 0, regs70[0], regs70[1], regs70[2], regs70[3]);
    if (regs70[0] >= 1) __cpuid_count(7, 1, regs71[0], regs71[1], regs71[2], regs71[3]);
  }
  for (int i = 0; i < kNumFeatures; ++i) {
    const Feature& ft = kFeatures[i];
    const unsigned* regs = ft.leaf == 1 ? regs1 : (ft.subleaf == 0 ? regs70 : regs71);
    if ((regs[ft.reg] >> ft.bit) & 1u) f.cpuid |= std::uint64_t{1} << i;
  }
  // XGETBV exists only when the OS has set CR4.OSXSAVE (CPUID.1:ECX bit 27). The raw opcode
  // needs no -mxsave, so this file keeps the baseline flags.
  if ((regs1[ecx] >> 27) & 1u) {
    unsigned lo = 0;
    unsigned hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  return f;
}
#else
CpuFeatures detect() {
  return {};
}
#endif

std::string hex(std::uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), digits[v & 0xF]);
    v >>= 4;
  } while (v != 0);
  return "0x" + s;
}

}  // namespace

bool neon_kernels_built() noexcept {
#if defined(MXFP4_CPU_AARCH64)
  return true;
#else
  return false;
#endif
}

bool x86_kernels_built() noexcept {
#if defined(MXFP4_CPU_X86)
  return true;
#else
  return false;
#endif
}

const CpuFeatures& host_cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

CpuFeatures make_cpu_features(const std::vector<std::string>& names, std::uint64_t xcr0) {
  CpuFeatures f;
  f.xcr0 = xcr0;
  for (const std::string& name : names) {
    const int i = feature_index(name);
    if (i < 0) throw InvalidArgument("make_cpu_features: unknown CPU feature '" + name + "'");
    f.cpuid |= std::uint64_t{1} << i;
  }
  return f;
}

std::vector<std::string> known_cpu_features() {
  std::vector<std::string> names;
  for (const Feature& f : kFeatures)
    names.emplace_back(f.name);
  return names;
}

bool has_feature(const CpuFeatures& features, const std::string& name) {
  const int i = feature_index(name);
  return i >= 0 && ((features.cpuid >> i) & 1u);
}

const char* isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::neon:
      return "neon";
  }
  return "unknown";
}

std::vector<std::string> missing_features(const CpuFeatures& features, Isa isa) {
  std::vector<std::string> missing;
  if (isa == Isa::scalar) return missing;
  if (isa == Isa::neon) {
    // Advanced SIMD is part of the AArch64 baseline: an AArch64 build runs it on any CPU.
    if (!neon_kernels_built())
      missing.emplace_back("an AArch64 build (this one has no neon kernels)");
    return missing;
  }
#if !defined(MXFP4_CPU_X86)
  missing.push_back(std::string("an x86-64 build (this one has no ") + isa_name(isa) + " kernels)");
  return missing;
#endif
  const std::uint64_t needs = isa == Isa::avx512 ? kAvx512Needs : kAvx2Needs;
  for (int i = 0; i < kNumFeatures; ++i) {
    const std::uint64_t bit = std::uint64_t{1} << i;
    if ((needs & bit) && !(features.cpuid & bit)) missing.emplace_back(kFeatures[i].name);
  }
  const std::uint64_t state = state_needed(needs);
  const auto lacks = [&](std::uint64_t bits) { return (features.xcr0 & bits) != bits; };
  if (lacks(state & kYmmState)) {
    missing.push_back("OS-enabled XMM/YMM state (XCR0 bits 1-2; XCR0 = " + hex(features.xcr0) +
                      ")");
  }
  if (lacks(state & kZmmState & ~kYmmState)) {
    missing.push_back("OS-enabled opmask/ZMM state (XCR0 bits 5-7; XCR0 = " + hex(features.xcr0) +
                      ")");
  }
  return missing;
}

bool avx512vnni_usable(const CpuFeatures& features) {
  if (!x86_kernels_built()) return false;
  const std::uint64_t state = state_needed(kAvx512VnniNeeds);
  return (features.cpuid & kAvx512VnniNeeds) == kAvx512VnniNeeds &&
         (features.xcr0 & state) == state;
}

Isa best_isa(const CpuFeatures& features) {
  if (neon_kernels_built()) return Isa::neon;
  if (missing_features(features, Isa::avx512).empty()) return Isa::avx512;
  if (missing_features(features, Isa::avx2).empty()) return Isa::avx2;
  return Isa::scalar;
}

void require_isa(const CpuFeatures& features, Isa isa, const char* what) {
  const std::vector<std::string> missing = missing_features(features, isa);
  if (missing.empty()) return;
  std::string list;
  for (const std::string& m : missing)
    list += (list.empty() ? "" : ", ") + m;
  throw Unsupported(std::string(what) + ": this machine cannot run the " + isa_name(isa) +
                    " kernels: it lacks " + list);
}

IsaChoice parse_isa_env(const char* value, Isa supported) {
  if (value == nullptr || *value == '\0') return {supported, {}};
  std::string name(value);
  for (char& c : name)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    if (name != isa_name(isa)) continue;
    // scalar runs everywhere; the x86 levels are ordered; neon runs only where it is the best.
    const bool x86_levels = isa != Isa::neon && supported != Isa::neon;
    if (isa == Isa::scalar || isa == supported || (x86_levels && isa <= supported))
      return {isa, {}};
    return {supported, std::string("MXFP4_CPU_ISA=") + value +
                           " is not a level this machine runs; using " + isa_name(supported)};
  }
  return {supported, std::string("MXFP4_CPU_ISA=") + value +
                         " is not one of scalar, avx2, avx512, neon; ignored, using " +
                         isa_name(supported)};
}

}  // namespace mxfp4::cpu
