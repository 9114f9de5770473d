// Pieces the layouts share (layout.cpp, layout_codecs.cpp); not part of the public API.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/io/layout.hpp"

namespace mxfp4::io::detail {

// The weight of one logical tensor, produced once for all the parts a layout writes and
// released after the last one, so that one weight at a time is in memory.
class SharedWeight {
 public:
  explicit SharedWeight(const LogicalTensor& t) : t_(t) {}
  // Produces the weight on first use and checks it against what the logical tensor announced.
  const Mxfp4Weight& get();
  void release() { w_ = Mxfp4Weight(); }

 private:
  const LogicalTensor& t_;
  Mxfp4Weight w_;
};

// The layouts of the codec files (layout_codecs.cpp), for the registry in layout.cpp.
const Layout& uqff1_layout();
const Layout& uqff_legacy_layout();
const Layout& gguf_layout();

}  // namespace mxfp4::io::detail
