// libFuzzer target: UQFF 1.x and legacy .uqff files (both safetensors) on arbitrary bytes. Every
// input must parse or be refused with an mxfp4::Error by the safetensors reader, then by the UQFF
// 1.x reader and by the legacy-file reader.
#include <cstdint>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/io/uqff.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mxfp4::io;
  try {
    const SafetensorsFile file = SafetensorsFile::parse({data, data + size}, "fuzz");
    try {
      (void)read_uqff1(file);
    } catch (const mxfp4::Error&) {
    }
    try {
      (void)read_uqff_legacy(file);
    } catch (const mxfp4::Error&) {
    }
  } catch (const mxfp4::Error&) {
  }
  return 0;
}
