#include "mxfp4/version.hpp"

namespace mxfp4 {
const char* version_string() noexcept {
  return "0.1.0";
}
}  // namespace mxfp4
