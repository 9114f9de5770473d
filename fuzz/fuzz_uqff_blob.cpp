// libFuzzer target: the legacy UQFF MXFP4 blob reader on arbitrary bytes. An input is either
// refused with an mxfp4::Error or decodes to a weight that serializes back to the same bytes
// (after the 4-byte version, which the writer always sets to 0.2.0).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "mxfp4/io/uqff.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mxfp4::io;
  const std::span<const std::uint8_t> blob(data, size);
  try {
    const mxfp4::Mxfp4Weight w = deserialize_uqff_blob(blob, "fuzz");
    const std::vector<std::uint8_t> again = serialize_uqff_blob(w);
    if (again.size() != size || std::memcmp(again.data() + 4, data + 4, size - 4) != 0) {
      std::abort();
    }
  } catch (const mxfp4::Error&) {
    // Refused with a typed error.
  }
  return 0;
}
