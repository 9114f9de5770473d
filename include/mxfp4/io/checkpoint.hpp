// Whole checkpoints: quantize every eligible weight to MXFP4, convert between layouts, turn
// MXFP4 weights back into dense ones, compare a quantized checkpoint with its source, and list
// what a checkpoint holds. The `mxfp4` command (quantize, convert, dequantize, verify, inspect)
// and the other front ends call these; the logic lives here. Inputs are a .safetensors file, a
// folder (sharded through model.safetensors.index.json or not) or any file a layout reads
// (layout.hpp); outputs are written atomically, file by file.
//
// Naming of the default `linear` layout (FORMATS.md section 2): a tensor `P.weight` (or a tensor
// named just `weight`, P empty) becomes `P.blocks` u8 [.., N, K/2] and `P.scales` u8
// [.., N, K/32]; `P.bias` and every other tensor are copied byte for byte.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mxfp4/io/layout.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::io {

// Metadata keys quantize_checkpoint adds (the input's own __metadata__ is kept).
inline constexpr std::string_view kScaleRuleMetadataKey = "mxfp4.scale_rule";
inline constexpr std::string_view kVersionMetadataKey = "mxfp4.version";

enum class TensorAction : std::uint8_t {
  quantized = 0,    // P.weight -> P.blocks + P.scales
  dequantized = 1,  // P.blocks + P.scales -> P.weight
  copied = 2,       // not named P.weight (a bias, ids, MXFP4 parts, ...): copied unchanged
  skipped = 3,      // a P.weight that cannot be quantized (see SkipReason): copied unchanged
};
// "quantized", "dequantized", "copied", "skipped".
const char* tensor_action_name(TensorAction action) noexcept;

// How a quantized weight was rounded.
enum class QuantizeMethod : std::uint8_t {
  rtn = 0,   // round to nearest under the scale rule (mxfp4::quantize)
  gptq = 1,  // GPTQ under the weight's Hessian (mxfp4::quantize_gptq, gptq.hpp)
};
// "rtn", "gptq".
const char* quantize_method_name(QuantizeMethod method) noexcept;

// Why a `P.weight` was not quantized.
enum class SkipReason : std::uint8_t {
  none = 0,
  rank = 1,               // not 2-D [N, K] or 3-D [E, N, K]
  not_floating = 2,       // an integer or boolean dtype
  unsupported_dtype = 3,  // floating but not F32, F16 or BF16 (F64, F8_*, F4)
  k_zero = 4,             // last dim 0
  k_not_multiple = 5,     // last dim not a multiple of 32
  empty = 6,              // no elements (a leading dim is 0)
  excluded = 7,           // matched --exclude
  not_included = 8,       // did not match --include
  not_converted = 9,      // config.json's quantization_config.modules_to_not_convert lists it
};
// "none", "rank", "not_floating", "unsupported_dtype", "k_zero", "k_not_multiple", "empty",
// "excluded", "not_included", "not_converted".
const char* skip_reason_name(SkipReason reason) noexcept;

// Whether `name` is `P.weight` or just `weight`: the names quantize_checkpoint considers.
bool is_weight_name(std::string_view name);

// What quantize_checkpoint did with one input tensor.
struct TensorReport {
  std::string name;   // in the input
  std::string dtype;  // its safetensors dtype
  Shape shape;        // its shape
  TensorAction action = TensorAction::copied;
  SkipReason skip = SkipReason::none;
  std::string reason;                // skipped: why, in words
  std::vector<std::string> outputs;  // names written for it ({P.blocks, P.scales} or {name})
  std::uint64_t bytes_in = 0;        // its bytes in the input
  std::uint64_t bytes_out = 0;       // bytes written for it
  // Quantized only, measured by dequantizing the result and comparing with the source in f64
  // over the elements whose source and result are both finite:
  double sqnr_db = 0.0;         // 10 log10(sum x^2 / sum (x - q)^2); +inf when exact
  double max_abs_error = 0.0;   // max |x - q|
  std::int64_t nan_blocks = 0;  // blocks with scale 0xFF (non-finite input, nan_block policy)
  // Quantized only: rounded to nearest, or GPTQ (CheckpointQuantizeOptions::hessians names it).
  QuantizeMethod method = QuantizeMethod::rtn;
};

struct QuantizeReport {
  std::string input;
  std::string output;
  std::string layout;              // of the output
  std::vector<std::string> files;  // written
  ScaleRule rule = kDefaultScaleRule;
  std::vector<TensorReport> tensors;  // in the input's order
  std::uint64_t file_bytes_in = 0;
  std::uint64_t file_bytes_out = 0;
  std::int64_t quantized_values = 0;      // elements of the quantized weights
  std::uint64_t quantized_bytes_in = 0;   // their bytes in the input
  std::uint64_t quantized_bytes_out = 0;  // bytes of their blocks and scales
  // 8 * quantized_bytes_out / quantized_values (4.25 for MXFP4); 0 when nothing was quantized.
  double bits_per_weight() const;
  // Elements of every tensor of the output (dense tensors and MXFP4 weights alike), and the
  // output's bits per element over all of them: 8 * file_bytes_out / output_values.
  std::int64_t output_values = 0;
  double output_bits_per_value() const;
  std::size_t count(TensorAction action) const;
};

// Where quantize_checkpoint is; called before each tensor is produced and once at the end.
struct QuantizeProgress {
  std::size_t done = 0;           // tensors finished
  std::size_t total = 0;          // tensors in all
  std::uint64_t bytes_done = 0;   // input bytes of the finished tensors
  std::uint64_t bytes_total = 0;  // input bytes of all tensors
  std::string_view current;       // the tensor about to be produced ("" at the end)
};

struct CheckpointQuantizeOptions {
  QuantizeOptions quantize;
  std::string layout = "linear";  // of the output (layout.hpp)
  // ECMAScript regular expressions searched in each P.weight's name; empty: not used. A weight is
  // quantized only if it matches `include` (when given) and does not match `exclude`.
  std::string include;
  std::string exclude;
  // Skip the modules config.json's quantization_config.modules_to_not_convert lists.
  bool honour_modules_to_not_convert = true;
  std::uint64_t max_shard_bytes = 0;  // see write_checkpoint
  std::function<void(const QuantizeProgress&)> progress;
  // GPTQ: the path of a .safetensors file mapping weight names (`P.weight`, as in the input) to
  // the Hessian (F32 or F64, e.g. X^T X of the layer's calibration inputs) of each weight to
  // quantize with quantize_gptq (rule quantize.rule, dampening `damp`); "" for none. The key is
  // the weight's own name whatever its rank: a matrix [N, K] takes one Hessian [K, K], a stack of
  // experts [E, N, K] one per expert, [E, K, K] (element e from the inputs routed to expert e).
  // Weights it does not name are rounded to nearest as usual.
  std::string hessians;
  double damp = 0.01;  // GptqOptions::damp, for the weights `hessians` names
};

// Reads `in`, quantizes every `P.weight` that is F32/F16/BF16, 2-D or 3-D, with a last dim K that
// is a positive multiple of 32 (and at least one element), and writes `out` atomically (an
// existing `out` survives any failure; `in` and `out` may be the same path). The output keeps the
// input's order (P.blocks and P.scales where P.weight was) and metadata, plus
// "mxfp4.scale_rule" and "mxfp4.version". Throws IoError / FormatError for the files,
// FormatError when an output name already exists in the input (P.blocks or P.scales beside a
// P.weight to quantize), NonFiniteValue naming the tensor for NaN/Inf under
// NonFinitePolicy::error. Nothing is written unless everything succeeds.
QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out,
                                   const QuantizeOptions& options = {});
// The same with a layout, filters, shards and progress. `in` is any checkpoint a layout reads;
// MXFP4 weights it already holds are carried over (in the output's layout) without requantizing.
// When `in` is a folder with config.json and `out` a folder, config.json is copied with
// quantization_config {"quant_method": "mxfp4", "modules_to_not_convert": [...]}.
// Throws InvalidArgument for a bad regular expression or layout, Unsupported for a layout not
// built yet. With `hessians`, before any work: IoError / FormatError for the file,
// InvalidArgument when it names a tensor that is not quantized (absent, not a P.weight, skipped)
// or damp is negative or not finite, ShapeMismatch for a Hessian that is not [K, K] for a matrix
// [N, K] or [E, K, K] for a stack of experts [E, N, K] (the message names the tensor and both
// shapes), DTypeMismatch for a dtype other than F32 and F64; while quantizing (nothing is written
// then): NonFiniteValue for NaN/Inf in a Hessian or its weight (--allow-nonfinite does not apply
// to GPTQ), InvalidArgument for a Hessian that is not positive definite after dampening (for a
// stack, the message names the expert).
QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out,
                                   const CheckpointQuantizeOptions& options);

// A `P.blocks` + `P.scales` pair in a file.
struct Mxfp4Pair {
  std::string prefix;  // P including its trailing dot ("" for a bare "blocks")
  std::string blocks;  // P.blocks
  std::string scales;  // P.scales
  bool stacked = false;
  std::int64_t experts = 1;  // E (1 when not stacked)
  std::int64_t n = 0;        // out features
  std::int64_t k = 0;        // in features
};

struct CheckpointLayout {
  std::vector<Mxfp4Pair> pairs;       // in file order of their blocks
  std::vector<std::string> problems;  // P.blocks without P.scales, bad shapes, ...: in words
};

// Finds the MXFP4 pairs of a file: every tensor named `P.blocks` or `P.scales` must have its
// partner, both U8 of rank 2 or 3 and of matching shapes ([.., N, K/2] and [.., N, K/32]);
// each violation is one entry of `problems` naming the tensors, expected and actual.
CheckpointLayout find_mxfp4_pairs(const SafetensorsFile& file);

struct DequantizedTensorReport {
  std::string weight;  // P.weight, written
  std::string blocks;  // P.blocks, read
  std::string scales;  // P.scales, read
  Shape shape;         // of P.weight: [N, K] or [E, N, K]
};

struct DequantizeReport {
  std::string input;
  std::string output;
  DType dtype = DType::f32;
  std::vector<DequantizedTensorReport> dequantized;  // in file order
  std::vector<std::string> copied;                   // in file order
  std::uint64_t file_bytes_in = 0;
  std::uint64_t file_bytes_out = 0;
};

// Reads `in` (any layout), turns each MXFP4 weight P into P.weight of `dtype` (f32, f16 or bf16)
// and its bias into P.bias, copies every other tensor, and writes `out` atomically (a
// .safetensors file, or a folder). The input metadata is kept except the mxfp4.*
// keys quantize_checkpoint adds. Throws FormatError for any problem find_mxfp4_pairs reports or
// when P.weight already exists beside a pair, DTypeMismatch for a non-floating dtype.
DequantizeReport dequantize_checkpoint(const std::string& in, const std::string& out,
                                       DType dtype = DType::f32);

// ---- convert ------------------------------------------------------------------------------------

struct ConvertReport {
  std::string input;
  std::string output;
  std::string from;  // layout read
  std::string to;    // layout written
  std::size_t mxfp4_weights = 0;
  std::size_t dense_tensors = 0;
  std::vector<std::string> files;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
};

// Reads `in` in its own layout and writes it in `to`, never requantizing: every MXFP4 weight
// keeps its codes and scales bit for bit, every dense tensor its bytes.
ConvertReport convert_checkpoint(const std::string& in, const std::string& out, std::string_view to,
                                 std::uint64_t max_shard_bytes = 0);

// ---- verify -------------------------------------------------------------------------------------

struct VerifyTensorReport {
  std::string name;      // the MXFP4 weight's layer name P
  std::string source;    // the dense tensor compared with ("" when none was found)
  Shape shape;           // [N, K] or [E, N, K]
  std::string problem;   // "" or why it could not be compared
  double sqnr_db = 0.0;  // as TensorReport
  double max_abs_error = 0.0;
  double rms_error = 0.0;
  std::int64_t nan_blocks = 0;
};

struct VerifyReport {
  std::string source;
  std::string quantized;
  std::string layout;  // of the quantized checkpoint
  std::vector<VerifyTensorReport> tensors;
  // Dense tensors of the quantized checkpoint whose bytes differ from the source's tensor of the
  // same name (copied tensors must be identical).
  std::vector<std::string> changed;
  std::size_t compared() const;
  bool ok() const;  // every weight compared and nothing changed
};

// Dequantizes each MXFP4 weight P of `quantized` and compares it with `P.weight` (or `P`) of
// `source`, in f64 over the elements both hold finite.
VerifyReport verify_checkpoint(const std::string& source, const std::string& quantized);

// ---- inspect ------------------------------------------------------------------------------------

struct InspectTensor {
  std::string name;
  std::string file;  // the shard holding it
  std::string dtype;
  Shape shape;
  std::uint64_t bytes = 0;
  // "" (dense) or the MXFP4 part it is: "blocks", "scales", "bias", or "weight" for a format
  // that stores blocks and scales together (GGUF's MXFP4 type; dtype "MXFP4").
  std::string part;
  std::ptrdiff_t weight = -1;  // its weight's index in InspectReport::weights, or -1
};

struct InspectWeight {
  std::string name;  // P
  std::int64_t experts = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  std::string bias_dtype;
  std::uint64_t bytes = 0;  // blocks + scales
};

struct InspectReport {
  std::string path;
  std::string layout;
  std::vector<std::string> files;
  std::map<std::string, std::string> metadata;
  HfQuantizationConfig config;
  std::vector<InspectTensor> tensors;  // file by file, each in file order
  std::vector<InspectWeight> weights;
  std::vector<std::string> problems;  // why the layout could not read it as MXFP4, if so
  std::uint64_t total_bytes = 0;
  std::int64_t mxfp4_values = 0;
  std::uint64_t mxfp4_bytes = 0;
  double mxfp4_bits_per_weight() const;
};

// Lists what `path` holds. Problems with MXFP4 pairs are reported, not thrown; a file that is not
// a checkpoint at all throws IoError / FormatError.
InspectReport inspect_checkpoint(const std::string& path);

// Writes the built-in example checkpoint: a tiny two-layer MLP plus stacked experts, with
// deterministic pseudo-random weights (a fixed-seed LCG and Box-Muller: the same bytes on every
// run; C libraries whose log or cos differ in the last bit could change a rare f32 rounding):
//   layers.0.mlp.up.weight    F32  [256, 128]     layers.0.mlp.up.bias    F32  [256]
//   layers.0.mlp.down.weight  BF16 [128, 256]     layers.0.mlp.down.bias  BF16 [128]
//   experts.weight            F32  [4, 64, 128]   experts.bias            F32  [4, 64]
//   norm.weight               F32  [128]          (1-D: skipped by quantize)
//   embed.weight              F32  [100, 40]      (K=40 is not a multiple of 32: skipped)
//   position_ids              I64  [1, 16]
// with __metadata__ {"format": "pt"}. Returns the file size in bytes.
std::uint64_t write_example_checkpoint(const std::string& path);

}  // namespace mxfp4::io
