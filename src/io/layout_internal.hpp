// Pieces the layouts share (layout.cpp, layout_codecs.cpp); not part of the public API.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/io/layout.hpp"
#include "mxfp4/io/safetensors.hpp"

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

// The leading dims of an MXFP4 tensor's parts: [E, N] for experts, else [N].
inline Shape lead_shape(const LogicalTensor& t) {
  return t.experts > 0 ? Shape{t.experts, t.n} : Shape{t.n};
}

// Tells options.on_tensor (if set) that logical tensor `i` is about to be produced.
inline std::function<void()> tensor_notifier(const LayoutWriteOptions& options, std::size_t i) {
  return [&options, i] {
    if (options.on_tensor) options.on_tensor(i);
  };
}

// A dense (not MXFP4) logical tensor, written under its own name as it is.
inline StreamedTensor dense_streamed(const LogicalTensor& t, std::function<void()> notify) {
  return {{t.name, t.dtype, t.shape}, [&t, notify = std::move(notify)] {
            notify();
            return t.bytes();
          }};
}

// The dense tensor `e` of the checkpoint `st`, read from it when produced.
inline LogicalTensor dense_from(const std::shared_ptr<SafetensorsCheckpoint>& st,
                                const SafetensorsEntry& e) {
  LogicalTensor t;
  t.name = e.name;
  t.dtype = e.dtype;
  t.shape = e.shape;
  t.bytes = [st, name = e.name] {
    const auto r = st->find(name);
    return TensorBytes{r.file->bytes(*r.entry), r.file->keep_alive()};
  };
  return t;
}

// The layouts of the codec files (layout_codecs.cpp), for the registry in layout.cpp.
const Layout& uqff1_layout();
const Layout& uqff_legacy_layout();
const Layout& gguf_layout();

}  // namespace mxfp4::io::detail
