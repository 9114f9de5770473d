// Checkpoint layouts: how a file names and shapes the tensors of an MXFP4 model. Conversion goes
// through a logical checkpoint -- a list of dense tensors and MXFP4 weights (blocks + scales +
// optional bias under one layer name) whose bytes are produced on demand -- so a layout only
// says how to read such a list from files and how to write it back:
//   linear       P.blocks u8 [.., N, K/2], P.scales u8 [.., N, K/32], P.bias (this library, the
//                reference's linear_b / packed_linear_b)
//   gptoss       P_blocks u8 [.., N, K/32, 16], P_scales u8 [.., N, K/32], P_bias (OpenAI's
//                GPT-OSS checkpoints, the reference's packed_gptoss_linear)
//   uqff1        mistral.rs UQFF 1.x (P.weight.format, P.weight, P.weight.scales, P.bias)
//   uqff-legacy  mistral.rs UQFF 0.2.0 blobs named "0", "1", ... (MXFP4 weights only)
//   gguf         llama.cpp GGUF v3 (P.weight as GGML_TYPE_MXFP4)
// (the last three in src/io/layout_codecs.cpp, on the codecs of uqff.hpp and gguf.hpp).
// Layouts never requantize: converting between any two is bit-exact.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::io {

// One tensor of a checkpoint as the library sees it, whatever a file calls it.
struct LogicalTensor {
  enum class Kind : std::uint8_t { dense = 0, mxfp4 = 1 };
  Kind kind = Kind::dense;
  // dense: the tensor's name. mxfp4: the layer's name P without a separator
  // ("model.layers.0.mlp.experts.gate_up_proj"); each layout adds its own suffixes.
  std::string name;

  // dense: the safetensors dtype name, the shape, and the bytes on demand.
  std::string dtype;
  Shape shape;
  std::function<TensorBytes()> bytes;

  // mxfp4: E (0 for a dense [N, K] matrix), N, K, the bias's safetensors dtype ("" when none),
  // and the weight on demand (blocks [.., N, K/2], scales [.., N, K/32], bias [.., N]; in either
  // BlockLayout: every layout writes the standard bytes).
  std::int64_t experts = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::string bias_dtype;
  std::function<Mxfp4Weight()> weight;
  // mxfp4: the names its parts had in the file it was read from (empty when made in memory).
  std::vector<std::string> source_names;

  bool is_mxfp4() const { return kind == Kind::mxfp4; }
  bool has_bias() const { return !bias_dtype.empty(); }
  // mxfp4: the dense weight's shape, [N, K] or [E, N, K].
  Shape weight_shape() const;
};

struct LogicalCheckpoint {
  std::string source;  // the path it was read from
  std::string layout;  // the layout it was read with
  std::vector<LogicalTensor> tensors;
  std::map<std::string, std::string> metadata;
  HfQuantizationConfig config;  // of the source's folder (config.json), if any
  std::string folder;           // the source's folder
  std::uint64_t source_bytes = 0;
  std::shared_ptr<const void> keep_alive;  // the open files the producers read from

  const LogicalTensor* find(std::string_view name) const;
};

struct LayoutWriteOptions {
  std::uint64_t max_shard_bytes = 0;  // 0: one file (see write_checkpoint)
  // Called just before each logical tensor's bytes are produced (its index in tensors).
  std::function<void(std::size_t)> on_tensor;
};

struct LayoutWriteResult {
  std::vector<std::string> files;  // the files written
  std::uint64_t bytes = 0;         // their total size
  // For each logical tensor, the names it was written under (in tensors' order).
  std::vector<std::vector<std::string>> names;
};

class Layout {
 public:
  virtual ~Layout() = default;
  // "linear", "gptoss", ...: the name the command's --layout / --to take.
  virtual std::string_view name() const = 0;
  virtual std::string_view description() const = 0;
  // False for a registered name whose codec this build does not have (none at present).
  virtual bool available() const { return true; }
  // Whether the file or folder at `path` is in this layout. `st` is the checkpoint opened as
  // safetensors, or nullptr when `path` is not a safetensors file (GGUF).
  virtual bool detect(const std::string& path, const SafetensorsCheckpoint* st) const = 0;
  // Reads `path`; throws FormatError naming the file and tensor for anything that does not fit.
  // With `strict` false, tensors that look like MXFP4 parts but do not form a valid weight are
  // read as dense tensors instead (quantize reads its input that way).
  virtual LogicalCheckpoint read(const std::string& path, bool strict) const = 0;
  // Names every logical tensor would be written under, in order (for collision checks).
  virtual std::vector<std::vector<std::string>> output_names(
      const LogicalCheckpoint& checkpoint) const = 0;
  // Writes `checkpoint` to `out` (a file, or a folder when sharded), atomically per file.
  virtual LayoutWriteResult write(const LogicalCheckpoint& checkpoint, const std::string& out,
                                  const LayoutWriteOptions& options = {}) const = 0;
};

// Every registered layout, in detection order (the most specific first).
const std::vector<const Layout*>& layouts();
// The layout called `name`: InvalidArgument naming the known ones for an unknown name,
// Unsupported for a registered one that is not built yet.
const Layout& find_layout(std::string_view name);
// The names, for help texts and errors: "linear, gptoss, uqff1, uqff-legacy, gguf".
std::string layout_names();
// The layout of the checkpoint at `path` (file, folder or index); throws IoError / FormatError
// when it is not a checkpoint any built layout reads.
const Layout& detect_layout(const std::string& path);
// Reads `path` with `layout`, or with the detected one when `layout` is empty.
LogicalCheckpoint read_checkpoint(const std::string& path, std::string_view layout = {},
                                  bool strict = true);

}  // namespace mxfp4::io
