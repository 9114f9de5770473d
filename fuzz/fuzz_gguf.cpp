// libFuzzer target: the GGUF reader on arbitrary bytes. Every input must either parse or be
// refused with an mxfp4::Error; a parsed file's tensors must then be readable through every
// accessor that applies to their type, and the MXFP4 layout conversion must round-trip.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "mxfp4/io/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mxfp4::io;
  try {
    const GgufFile file = GgufFile::parse_view({data, size}, "fuzz");
    for (const GgufTensorInfo& t : file.tensors()) {
      const auto span = file.bytes(t);
      if (span.size() != t.nbytes) std::abort();
      try {
        if (t.type == GgmlType::mxfp4) {
          const mxfp4::Mxfp4Weight w = file.mxfp4_weight(t.name);
          // Back to GGUF's layout: the same bytes.
          const GgufTensorItem item = gguf_mxfp4_item(t.name, w);
          std::vector<std::uint8_t> again(span.size());
          item.fill(again);
          if (!span.empty() && std::memcmp(again.data(), span.data(), span.size()) != 0) {
            std::abort();
          }
        } else {
          (void)file.tensor(t.name);
        }
      } catch (const mxfp4::Error&) {
        // Wrong rank for a weight, or a type without a DType: refused, as documented.
      }
    }
  } catch (const mxfp4::Error&) {
    // Refused with a typed error: the expected outcome for most inputs.
  }
  return 0;
}
