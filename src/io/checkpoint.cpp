#include "mxfp4/io/checkpoint.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numbers>
#include <set>
#include <string>
#include <utility>

#include "core/convert.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/ops.hpp"
#include "mxfp4/version.hpp"

namespace mxfp4::io {

namespace {

// If `name` is `P.<suffix>` or exactly `<suffix>`, sets `prefix` to P plus its dot ("" for the
// bare suffix) and returns true.
bool split_suffix(std::string_view name, std::string_view suffix, std::string& prefix) {
  if (name == suffix) {
    prefix.clear();
    return true;
  }
  if (name.size() > suffix.size() && name.ends_with(suffix) &&
      name[name.size() - suffix.size() - 1] == '.') {
    prefix = std::string(name.substr(0, name.size() - suffix.size()));
    return true;
  }
  return false;
}

std::string describe(const SafetensorsEntry& e) {
  return "'" + e.name + "' " + e.dtype + " " + to_string(e.shape);
}

// Why `e` (named P.weight) cannot be quantized, or SkipReason::none.
SkipReason classify_weight(const SafetensorsEntry& e, std::string& reason) {
  const auto rank = e.shape.size();
  if (rank != 2 && rank != 3) {
    reason = "rank " + std::to_string(rank) + " " + to_string(e.shape) +
             " (only 2-D [N, K] and 3-D [E, N, K] weights are quantized)";
    return SkipReason::rank;
  }
  if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16") {
    const bool floating = e.dtype == "F64" || e.dtype.starts_with("F8_") || e.dtype == "F4";
    if (floating) {
      reason = "dtype " + e.dtype + " is not supported (only F32, F16 and BF16 are quantized)";
      return SkipReason::unsupported_dtype;
    }
    reason = "dtype " + e.dtype + " is not floating";
    return SkipReason::not_floating;
  }
  const std::int64_t k = e.shape.back();
  if (k == 0) {
    reason = "K (the last dim) is 0";
    return SkipReason::k_zero;
  }
  if (k % kBlockSize != 0) {
    reason = "K=" + std::to_string(k) + " (the last dim) is not a multiple of " +
             std::to_string(kBlockSize);
    return SkipReason::k_not_multiple;
  }
  if (shape_numel(e.shape) == 0) {
    reason = "no elements in " + to_string(e.shape);
    return SkipReason::empty;
  }
  return SkipReason::none;
}

// Compares the source weight with its quantized form decoded back to f32.
void measure(const Tensor& source, const QuantizedTensor& q, TensorReport& r) {
  const Tensor decoded = Mxfp4Weight::from_parts(q.blocks, q.scales).dequantize(DType::f32);
  const auto* d = decoded.data_as<float>();
  double signal = 0.0;
  double noise = 0.0;
  double max_err = 0.0;
  for (std::int64_t i = 0; i < source.numel(); ++i) {
    const double x = detail::load_float(source.data(), source.dtype(), i);
    const double y = d[i];
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    const double e = x - y;
    signal += x * x;
    noise += e * e;
    max_err = std::max(max_err, std::fabs(e));
  }
  r.sqnr_db =
      noise == 0.0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal / noise);
  r.max_abs_error = max_err;
  const auto* s = q.scales.data_as<std::uint8_t>();
  r.nan_blocks = 0;
  for (std::int64_t i = 0; i < q.scales.numel(); ++i)
    r.nan_blocks += s[i] == kScaleNaN ? 1 : 0;
}

// A u8 tensor viewing an entry's bytes (u8 needs no alignment).
Tensor u8_view(const SafetensorsFile& file, const SafetensorsEntry& e) {
  return Tensor::view(file.bytes(e).data(), e.shape, DType::u8);
}

}  // namespace

const char* tensor_action_name(TensorAction action) noexcept {
  switch (action) {
    case TensorAction::quantized:
      return "quantized";
    case TensorAction::dequantized:
      return "dequantized";
    case TensorAction::copied:
      return "copied";
    case TensorAction::skipped:
      return "skipped";
  }
  return "?";
}

const char* skip_reason_name(SkipReason reason) noexcept {
  switch (reason) {
    case SkipReason::none:
      return "none";
    case SkipReason::rank:
      return "rank";
    case SkipReason::not_floating:
      return "not_floating";
    case SkipReason::unsupported_dtype:
      return "unsupported_dtype";
    case SkipReason::k_zero:
      return "k_zero";
    case SkipReason::k_not_multiple:
      return "k_not_multiple";
    case SkipReason::empty:
      return "empty";
  }
  return "?";
}

bool is_weight_name(std::string_view name) {
  std::string prefix;
  return split_suffix(name, "weight", prefix);
}

double QuantizeReport::bits_per_weight() const {
  if (quantized_values == 0) return 0.0;
  return 8.0 * static_cast<double>(quantized_bytes_out) / static_cast<double>(quantized_values);
}

std::size_t QuantizeReport::count(TensorAction action) const {
  std::size_t n = 0;
  for (const TensorReport& t : tensors)
    n += t.action == action ? 1 : 0;
  return n;
}

QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out,
                                   const QuantizeOptions& options) {
  const std::string prefix = "quantize_checkpoint '" + in + "': ";
  if (std::string_view(scale_rule_name(options.rule)) == "?") {
    throw InvalidArgument(prefix + "unknown scale rule " +
                          std::to_string(static_cast<int>(options.rule)));
  }
  const SafetensorsFile file = SafetensorsFile::open(in);

  QuantizeReport report;
  report.input = in;
  report.output = out;
  report.rule = options.rule;
  report.file_bytes_in = file.file_size();

  // Decide first, so that a name collision is reported before any work.
  for (const SafetensorsEntry& e : file.entries()) {
    TensorReport r;
    r.name = e.name;
    r.dtype = e.dtype;
    r.shape = e.shape;
    r.bytes_in = e.end - e.begin;
    std::string p;
    if (!split_suffix(e.name, "weight", p)) {
      r.action = TensorAction::copied;
    } else if ((r.skip = classify_weight(e, r.reason)) != SkipReason::none) {
      r.action = TensorAction::skipped;
    } else {
      r.action = TensorAction::quantized;
      for (const char* part : {"blocks", "scales"}) {
        const std::string name = p + part;
        if (file.find(name) != nullptr) {
          throw FormatError(prefix + "tensor '" + e.name + "' would be written as '" + name +
                            "', but the input already has a tensor of that name");
        }
        r.outputs.push_back(name);
      }
    }
    if (r.action != TensorAction::quantized) r.outputs.push_back(e.name);
    report.tensors.push_back(std::move(r));
  }

  std::vector<QuantizedTensor> quantized;  // keeps the bytes the items point to alive
  quantized.reserve(report.tensors.size());
  std::vector<SafetensorsItem> items;
  for (TensorReport& r : report.tensors) {
    const SafetensorsEntry& e = *file.find(r.name);
    if (r.action != TensorAction::quantized) {
      items.push_back({e.name, e.dtype, e.shape, file.bytes(e)});
      r.bytes_out = r.bytes_in;
      continue;
    }
    const Tensor source = file.tensor(e.name);
    try {
      quantized.push_back(quantize(source, options));
    } catch (const NonFiniteValue& err) {
      throw NonFiniteValue(prefix + "tensor '" + e.name + "': " + err.what());
    } catch (const Error& err) {
      // Anything else here is a bug in the checks above; still say which tensor.
      throw Error(err.code(), prefix + "tensor " + describe(e) + ": " + err.what());
    }
    const QuantizedTensor& q = quantized.back();
    measure(source, q, r);
    items.push_back(safetensors_item(r.outputs[0], q.blocks));
    items.push_back(safetensors_item(r.outputs[1], q.scales));
    r.bytes_out = q.blocks.nbytes() + q.scales.nbytes();
    report.quantized_values += source.numel();
    report.quantized_bytes_in += r.bytes_in;
    report.quantized_bytes_out += r.bytes_out;
  }

  std::map<std::string, std::string> metadata = file.metadata();
  metadata[std::string(kScaleRuleMetadataKey)] = scale_rule_name(options.rule);
  metadata[std::string(kVersionMetadataKey)] = version_string();
  report.file_bytes_out = write_safetensors(out, items, metadata);
  return report;
}

CheckpointLayout find_mxfp4_pairs(const SafetensorsFile& file) {
  CheckpointLayout layout;
  for (const SafetensorsEntry& e : file.entries()) {
    std::string p;
    if (split_suffix(e.name, "scales", p)) {
      if (file.find(p + "blocks") == nullptr) {
        layout.problems.push_back("tensor " + describe(e) + " has no partner '" + p +
                                  "blocks' (MXFP4 scales need their blocks)");
      }
      continue;
    }
    if (!split_suffix(e.name, "blocks", p)) continue;
    const SafetensorsEntry* s = file.find(p + "scales");
    if (s == nullptr) {
      layout.problems.push_back("tensor " + describe(e) + " has no partner '" + p +
                                "scales' (MXFP4 blocks need their scales)");
      continue;
    }
    if (e.dtype != "U8" || s->dtype != "U8") {
      layout.problems.push_back("MXFP4 pair " + describe(e) + " and " + describe(*s) +
                                ": both must be U8");
      continue;
    }
    Mxfp4Weight w;
    try {
      w = Mxfp4Weight::from_parts(u8_view(file, e), u8_view(file, *s));
    } catch (const Error& err) {
      layout.problems.push_back("MXFP4 pair " + describe(e) + " and " + describe(*s) + ": " +
                                err.what());
      continue;
    }
    Mxfp4Pair pair;
    pair.prefix = p;
    pair.blocks = e.name;
    pair.scales = s->name;
    pair.stacked = w.stacked();
    pair.experts = w.num_experts();
    pair.n = w.out_features();
    pair.k = w.in_features();
    layout.pairs.push_back(std::move(pair));
  }
  return layout;
}

DequantizeReport dequantize_checkpoint(const std::string& in, const std::string& out, DType dtype) {
  const std::string prefix = "dequantize_checkpoint '" + in + "': ";
  if (!is_floating(dtype)) {
    throw DTypeMismatch(prefix + "output dtype must be f32, f16 or bf16, got " +
                        std::string(dtype_name(dtype)));
  }
  const SafetensorsFile file = SafetensorsFile::open(in);
  const CheckpointLayout layout = find_mxfp4_pairs(file);
  if (!layout.problems.empty()) {
    std::string more;
    if (layout.problems.size() > 1) {
      more = " (and " + std::to_string(layout.problems.size() - 1) + " more problems)";
    }
    throw FormatError(prefix + layout.problems.front() + more);
  }

  DequantizeReport report;
  report.input = in;
  report.output = out;
  report.dtype = dtype;
  report.file_bytes_in = file.file_size();

  std::map<std::string, const Mxfp4Pair*> by_blocks;
  std::set<std::string> scales;
  for (const Mxfp4Pair& pair : layout.pairs) {
    const std::string weight = pair.prefix + "weight";
    if (file.find(weight) != nullptr) {
      throw FormatError(prefix + "MXFP4 pair '" + pair.blocks + "' / '" + pair.scales +
                        "' would be written as '" + weight +
                        "', but the input already has a tensor of that name");
    }
    by_blocks.emplace(pair.blocks, &pair);
    scales.insert(pair.scales);
  }

  std::vector<Tensor> weights;  // keeps the bytes the items point to alive
  weights.reserve(layout.pairs.size());
  std::vector<SafetensorsItem> items;
  for (const SafetensorsEntry& e : file.entries()) {
    if (scales.count(e.name) != 0) continue;
    const auto it = by_blocks.find(e.name);
    if (it == by_blocks.end()) {
      items.push_back({e.name, e.dtype, e.shape, file.bytes(e)});
      report.copied.push_back(e.name);
      continue;
    }
    const Mxfp4Pair& pair = *it->second;
    const SafetensorsEntry& s = *file.find(pair.scales);
    const Mxfp4Weight w = Mxfp4Weight::from_parts(u8_view(file, e), u8_view(file, s));
    weights.push_back(w.dequantize(dtype));
    DequantizedTensorReport r;
    r.weight = pair.prefix + "weight";
    r.blocks = pair.blocks;
    r.scales = pair.scales;
    r.shape = weights.back().shape();
    items.push_back(safetensors_item(r.weight, weights.back()));
    report.dequantized.push_back(std::move(r));
  }

  std::map<std::string, std::string> metadata = file.metadata();
  metadata.erase(std::string(kScaleRuleMetadataKey));
  metadata.erase(std::string(kVersionMetadataKey));
  report.file_bytes_out = write_safetensors(out, items, metadata);
  return report;
}

// ---- the built-in example -----------------------------------------------------------------------

namespace {

// 64-bit LCG (Knuth's MMIX constants) with Box-Muller normals: fixed, portable, seedable.
class ExampleRandom {
 public:
  explicit ExampleRandom(std::uint64_t seed) : state_(seed) {}

  // Uniform in (0, 1): the top 53 bits, offset by half a step so that 0 never comes out.
  double uniform() {
    state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
    return (static_cast<double>(state_ >> 11) + 0.5) * 0x1.0p-53;
  }
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double t = 2.0 * std::numbers::pi * uniform();
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }

 private:
  std::uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

Tensor example_tensor(ExampleRandom& rng, Shape shape, DType dtype, double stddev, double mean) {
  Tensor t = Tensor::empty(std::move(shape), dtype);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    detail::store_float(t.data(), dtype, i, static_cast<float>(mean + stddev * rng.normal()));
  }
  return t;
}

}  // namespace

std::uint64_t write_example_checkpoint(const std::string& path) {
  ExampleRandom rng(0x6D786670345F6578ull);  // "mxfp4_ex"
  Tensor position_ids = Tensor::empty({1, 16}, DType::i64);
  for (std::int64_t i = 0; i < 16; ++i)
    position_ids.data_as<std::int64_t>()[i] = i;
  // Weights drawn like a trained layer's: normal with std 1/sqrt(K).
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"layers.0.mlp.up.weight",
       example_tensor(rng, {256, 128}, DType::f32, 1.0 / std::sqrt(128.0), 0.0)},
      {"layers.0.mlp.up.bias", example_tensor(rng, {256}, DType::f32, 0.02, 0.0)},
      {"layers.0.mlp.down.weight", example_tensor(rng, {128, 256}, DType::bf16, 1.0 / 16.0, 0.0)},
      {"layers.0.mlp.down.bias", example_tensor(rng, {128}, DType::bf16, 0.02, 0.0)},
      {"experts.weight",
       example_tensor(rng, {4, 64, 128}, DType::f32, 1.0 / std::sqrt(128.0), 0.0)},
      {"experts.bias", example_tensor(rng, {4, 64}, DType::f32, 0.02, 0.0)},
      {"norm.weight", example_tensor(rng, {128}, DType::f32, 0.05, 1.0)},
      {"embed.weight", example_tensor(rng, {100, 40}, DType::f32, 1.0, 0.0)},
      {"position_ids", position_ids},
  };
  std::vector<SafetensorsItem> items;
  for (const auto& [name, t] : tensors)
    items.push_back(safetensors_item(name, t));
  return write_safetensors(path, items, {{"format", "pt"}});
}

}  // namespace mxfp4::io
