// libFuzzer target for the safetensors header parser: any byte string must either parse into a
// file whose every tensor can be read within its bounds, or be refused with an mxfp4::Error.
// Anything else (a crash, a sanitizer report, another exception type) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "mxfp4/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto file = mxfp4::io::SafetensorsFile::parse_view({data, size}, "fuzz");
    std::uint64_t covered = 0;
    for (const auto& e : file.entries()) {
      const auto bytes = file.bytes(e);
      covered += bytes.size();
      // Touch the first and last byte: both must lie inside the input.
      if (!bytes.empty()) {
        volatile std::uint8_t sink = bytes.front();
        sink = bytes.back();
        (void)sink;
      }
      if (mxfp4::io::dtype_from_safetensors(e.dtype)) (void)file.tensor(e.name);
    }
    if (covered != file.data_size()) __builtin_trap();  // the parser promised exact coverage
  } catch (const mxfp4::Error&) {
    // Refused with a typed error: what bad input must get.
  }
  return 0;
}
