#include "mxfp4/io/checkpoint.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <utility>

#include "core/convert.hpp"
#include "core/gptq_internal.hpp"
#include "io/atomic_file.hpp"
#include "mxfp4/error.hpp"
#include "mxfp4/gptq.hpp"
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

const char* quantize_method_name(QuantizeMethod method) noexcept {
  switch (method) {
    case QuantizeMethod::rtn:
      return "rtn";
    case QuantizeMethod::gptq:
      return "gptq";
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
    case SkipReason::excluded:
      return "excluded";
    case SkipReason::not_included:
      return "not_included";
    case SkipReason::not_converted:
      return "not_converted";
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

namespace {

// A dense logical tensor as a Tensor: a view of its bytes when aligned for its dtype, else a copy.
Tensor dense_tensor(const LogicalTensor& t, const std::string& prefix) {
  const std::optional<DType> dtype = dtype_from_safetensors(t.dtype);
  if (!dtype) {
    throw DTypeMismatch(prefix + "tensor '" + t.name + "' is " + t.dtype +
                        ", which has no mxfp4 DType");
  }
  const TensorBytes b = t.bytes();
  if (reinterpret_cast<std::uintptr_t>(b.data.data()) % dtype_size(*dtype) == 0) {
    return Tensor::view(b.data.data(), t.shape, *dtype, b.keep_alive);
  }
  Tensor copy = Tensor::empty(t.shape, *dtype);
  if (!b.data.empty()) std::memcpy(copy.data(), b.data.data(), b.data.size());
  return copy;
}

struct ErrorStats {
  double sqnr_db = 0.0;
  double max_abs_error = 0.0;
  double rms_error = 0.0;
};

// Source against its decoded form (f32), in f64 over the elements both hold finite.
ErrorStats compare(const Tensor& source, const Tensor& decoded) {
  const auto* d = decoded.data_as<float>();
  double signal = 0.0;
  double noise = 0.0;
  double max_err = 0.0;
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < source.numel(); ++i) {
    const double x = detail::load_float(source.data(), source.dtype(), i);
    const double y = d[i];
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    const double e = x - y;
    signal += x * x;
    noise += e * e;
    max_err = std::max(max_err, std::fabs(e));
    ++count;
  }
  ErrorStats s;
  s.sqnr_db =
      noise == 0.0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal / noise);
  s.max_abs_error = max_err;
  s.rms_error = count == 0 ? 0.0 : std::sqrt(noise / static_cast<double>(count));
  return s;
}

std::int64_t count_nan_blocks(const Tensor& scales) {
  const auto* s = static_cast<const std::uint8_t*>(scales.data());
  std::int64_t n = 0;
  for (std::int64_t i = 0; i < scales.numel(); ++i)
    n += s[i] == kScaleNaN ? 1 : 0;
  return n;
}

std::uint64_t logical_numel(const LogicalTensor& t) {
  if (!t.is_mxfp4()) return static_cast<std::uint64_t>(shape_numel(t.shape));
  const auto w = static_cast<std::uint64_t>(shape_numel(t.weight_shape()));
  const auto lead = static_cast<std::uint64_t>((t.experts > 0 ? t.experts : 1) * t.n);
  return w + (t.has_bias() ? lead : 0);
}

std::uint64_t logical_bytes(const LogicalTensor& t) {
  if (!t.is_mxfp4()) return safetensors_nbytes(t.dtype, t.shape);
  const auto lead = static_cast<std::uint64_t>((t.experts > 0 ? t.experts : 1) * t.n);
  return lead * static_cast<std::uint64_t>(t.k / 2 + t.k / kBlockSize) +
         (t.has_bias() ? lead * static_cast<std::uint64_t>(safetensors_dtype_bits(t.bias_dtype) / 8)
                       : 0);
}

// Matrix `index` of the Hessians file's entry `e`: the entry is F32 or F64 [K, K] (index 0) or
// [E, K, K] for a stack of experts (index e for expert e), as the caller checked. Read from the
// file's bytes one matrix at a time, so a stack never holds more than one Hessian in memory.
Hessian load_hessian(const SafetensorsFile& file, const SafetensorsEntry& e, std::int64_t index) {
  const std::int64_t k = e.shape.back();
  const std::size_t count = static_cast<std::size_t>(k) * static_cast<std::size_t>(k);
  const std::size_t size = e.dtype == "F32" ? sizeof(float) : sizeof(double);
  const std::size_t bytes = count * size;  // K >= 32 for a weight being quantized: never 0
  const std::span<const std::uint8_t> all = file.bytes(e);
  if (index < 0 || bytes == 0 || static_cast<std::size_t>(index) >= all.size() / bytes) {
    throw FormatError("Hessian '" + e.name + "': matrix " + std::to_string(index) +
                      " lies outside its " + std::to_string(all.size()) + " bytes");
  }
  const std::uint8_t* p = all.data() + static_cast<std::size_t>(index) * bytes;
  std::vector<double> v(count);
  if (size == sizeof(float)) {
    for (std::size_t i = 0; i < count; ++i) {
      float f = 0.0f;
      std::memcpy(&f, p + i * sizeof(float), sizeof(float));
      v[i] = static_cast<double>(f);
    }
  } else if (count > 0) {
    std::memcpy(v.data(), p, count * sizeof(double));
  }
  return Hessian::from_values(k, std::move(v));
}

// The name a logical tensor had in its input, for messages.
std::string input_name(const LogicalTensor& t) {
  if (!t.is_mxfp4() || t.source_names.empty()) return t.name;
  return t.source_names.front();
}

// Throws FormatError when two logical tensors would be written under one name.
void check_collisions(const Layout& layout, const LogicalCheckpoint& c,
                      const std::vector<std::string>& origin, const std::string& prefix) {
  const auto names = layout.output_names(c);
  std::map<std::string, std::size_t> seen;
  for (std::size_t i = 0; i < names.size(); ++i) {
    for (const std::string& n : names[i]) {
      const auto [it, fresh] = seen.emplace(n, i);
      if (fresh) continue;
      const std::size_t j = it->second;
      // Name the tensor that was renamed; the other kept its name or was renamed too.
      const std::size_t renamed = origin[i] != n ? i : j;
      const std::size_t other = renamed == i ? j : i;
      if (origin[other] == n) {
        throw FormatError(prefix + "tensor '" + origin[renamed] + "' would be written as '" + n +
                          "', but the input already has a tensor of that name");
      }
      throw FormatError(prefix + "tensors '" + origin[j] + "' and '" + origin[i] +
                        "' would both be written as '" + n + "' (layout " +
                        std::string(layout.name()) + ")");
    }
  }
}

std::regex compile_regex(const std::string& pattern, const char* what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw InvalidArgument(std::string(what) + " '" + pattern +
                          "' is not a valid regular expression: " + e.what());
  }
}

// Writes `text` to `path` all or nothing: a temporary beside it, renamed over it.
void write_text_atomically(const std::string& path, const std::string& text) {
  AtomicFile out(path, "config '" + path + "'");
  out.write(text.data(), text.size());
  out.commit();
}

// config.json of `from_folder`, copied to `out` (a folder) with an MXFP4 quantization_config.
void write_quantized_config(const std::string& from_folder, const std::string& out,
                            const std::vector<std::string>& not_converted) {
  const std::filesystem::path src = std::filesystem::path(from_folder) / "config.json";
  std::error_code ec;
  if (from_folder.empty() || !std::filesystem::is_regular_file(src, ec)) return;
  std::string text;
  {
    std::FILE* f = std::fopen(src.c_str(), "rb");
    if (f == nullptr) throw IoError("config '" + src.string() + "': cannot open");
    char buf[65536];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
      text.append(buf, n);
    std::fclose(f);
  }
  nlohmann::ordered_json config;
  try {
    config = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError("config '" + src.string() + "': is not valid JSON: " + e.what());
  }
  if (!config.is_object()) throw FormatError("config '" + src.string() + "': must be an object");
  config["quantization_config"] = {{"quant_method", "mxfp4"},
                                   {"modules_to_not_convert", not_converted}};
  write_text_atomically((std::filesystem::path(out) / "config.json").string(),
                        config.dump(2) + "\n");
}

}  // namespace

namespace {

// The output path as write_checkpoint should see it: a folder input writes a folder unless the
// output names a .safetensors file.
std::string resolve_output(const std::string& in, const std::string& out,
                           std::uint64_t max_shard_bytes) {
  std::error_code ec;
  if (checkpoint_output_is_folder(out, max_shard_bytes)) return out;
  if (std::filesystem::is_directory(in, ec) && !out.ends_with(".safetensors")) return out + "/";
  return out;
}

}  // namespace

double QuantizeReport::output_bits_per_value() const {
  if (output_values == 0) return 0.0;
  return 8.0 * static_cast<double>(file_bytes_out) / static_cast<double>(output_values);
}

QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out,
                                   const QuantizeOptions& options) {
  CheckpointQuantizeOptions o;
  o.quantize = options;
  return quantize_checkpoint(in, out, o);
}

QuantizeReport quantize_checkpoint(const std::string& in, const std::string& out,
                                   const CheckpointQuantizeOptions& options) {
  const std::string prefix = "quantize_checkpoint '" + in + "': ";
  if (std::string_view(scale_rule_name(options.quantize.rule)) == "?") {
    throw InvalidArgument(prefix + "unknown scale rule " +
                          std::to_string(static_cast<int>(options.quantize.rule)));
  }
  const Layout& layout = find_layout(options.layout);
  std::optional<std::regex> include;
  std::optional<std::regex> exclude;
  if (!options.include.empty()) include = compile_regex(options.include, "--include");
  if (!options.exclude.empty()) exclude = compile_regex(options.exclude, "--exclude");

  const LogicalCheckpoint src = read_checkpoint(in, {}, /*strict=*/false);
  const std::vector<std::string>& not_converted = options.honour_modules_to_not_convert
                                                      ? src.config.modules_to_not_convert
                                                      : std::vector<std::string>{};

  QuantizeReport report;
  report.input = in;
  report.output = out;
  report.layout = std::string(layout.name());
  report.rule = options.quantize.rule;
  report.file_bytes_in = src.source_bytes;

  std::map<std::string, std::size_t> dense;  // name -> index in src.tensors
  for (std::size_t i = 0; i < src.tensors.size(); ++i) {
    if (!src.tensors[i].is_mxfp4()) dense.emplace(src.tensors[i].name, i);
  }

  // Decide for every tensor first, so that a bad name is reported before any work.
  struct Plan {
    bool quantize = false;
    std::string layer;                          // P without its dot
    std::size_t bias = SIZE_MAX;                // index of the attached P.bias in src.tensors
    std::size_t row = 0;                        // report row of the weight
    const SafetensorsEntry* hessian = nullptr;  // GPTQ: its entry in the Hessians file
  };
  std::vector<Plan> plans(src.tensors.size());
  std::set<std::size_t> attached;
  std::vector<std::size_t> first_row(src.tensors.size());
  for (std::size_t i = 0; i < src.tensors.size(); ++i) {
    const LogicalTensor& t = src.tensors[i];
    first_row[i] = report.tensors.size();
    if (t.is_mxfp4()) {
      // Already MXFP4: carried over as it is.
      for (const std::string& n : t.source_names) {
        TensorReport r;
        r.name = n;
        r.action = TensorAction::copied;
        report.tensors.push_back(std::move(r));
      }
      continue;
    }
    TensorReport r;
    r.name = t.name;
    r.dtype = t.dtype;
    r.shape = t.shape;
    r.bytes_in = safetensors_nbytes(t.dtype, t.shape);
    std::string p;
    if (!split_suffix(t.name, "weight", p)) {
      r.action = TensorAction::copied;
    } else {
      SafetensorsEntry e;
      e.name = t.name;
      e.dtype = t.dtype;
      e.shape = t.shape;
      r.skip = classify_weight(e, r.reason);
      const std::string module = module_not_converted(t.name, not_converted);
      if (r.skip != SkipReason::none) {
      } else if (!module.empty()) {
        r.skip = SkipReason::not_converted;
        r.reason =
            "config.json's quantization_config.modules_to_not_convert lists '" + module + "'";
      } else if (include && !std::regex_search(t.name, *include)) {
        r.skip = SkipReason::not_included;
        r.reason = "does not match --include '" + options.include + "'";
      } else if (exclude && std::regex_search(t.name, *exclude)) {
        r.skip = SkipReason::excluded;
        r.reason = "matches --exclude '" + options.exclude + "'";
      }
      r.action = r.skip == SkipReason::none ? TensorAction::quantized : TensorAction::skipped;
    }
    if (r.action == TensorAction::quantized) {
      Plan& plan = plans[i];
      plan.quantize = true;
      plan.layer = p.empty() ? "" : p.substr(0, p.size() - 1);
      plan.row = report.tensors.size();
      const auto b = dense.find(p + "bias");
      const Shape lead(t.shape.begin(), t.shape.end() - 1);
      if (b != dense.end()) {
        const LogicalTensor& bt = src.tensors[b->second];
        if ((bt.dtype == "F32" || bt.dtype == "F16" || bt.dtype == "BF16") && bt.shape == lead) {
          plan.bias = b->second;
          attached.insert(b->second);
        }
      }
    }
    report.tensors.push_back(std::move(r));
  }

  // GPTQ: every Hessian must belong to a weight being quantized, and fit it.
  std::shared_ptr<const SafetensorsFile> hessians;
  if (!options.hessians.empty()) {
    const std::string hp = prefix + "hessians '" + options.hessians + "': ";
    if (!std::isfinite(options.damp) || options.damp < 0.0) {
      throw InvalidArgument(prefix + "damp must be finite and >= 0, got " +
                            std::to_string(options.damp));
    }
    hessians = std::make_shared<const SafetensorsFile>(SafetensorsFile::open(options.hessians));
    for (const SafetensorsEntry& e : hessians->entries()) {
      const std::string what = hp + "Hessian '" + e.name + "' ";
      const auto found = dense.find(e.name);
      if (found == dense.end()) {
        throw InvalidArgument(what +
                              "names no weight of the input to quantize (the input has no dense "
                              "tensor of that name)");
      }
      const std::size_t i = found->second;
      const LogicalTensor& t = src.tensors[i];
      const TensorReport& r = report.tensors[first_row[i]];
      if (!plans[i].quantize) {
        throw InvalidArgument(
            what + "names a tensor that is not quantized (" +
            (r.action == TensorAction::skipped ? "skipped: " + r.reason : "not a P.weight") + ")");
      }
      if (e.dtype != "F32" && e.dtype != "F64") {
        throw DTypeMismatch(what + "is " + e.dtype + "; Hessians must be F32 or F64");
      }
      // A matrix [N, K] takes H [K, K]; a stack of experts [E, N, K] one H per expert, [E, K, K].
      const std::int64_t k = t.shape.back();
      const bool stack = t.shape.size() == 3;
      const Shape want = stack ? Shape{t.shape[0], k, k} : Shape{k, k};
      if (e.shape != want) {
        throw ShapeMismatch(what + "is " + to_string(e.shape) + " but weight " + t.dtype + " " +
                            to_string(t.shape) +
                            (stack ? " (a stack of " + std::to_string(t.shape[0]) +
                                         " experts, one Hessian each) needs [E, K, K] = "
                                   : std::string(" needs [K, K] = ")) +
                            to_string(want));
      }
      plans[i].hessian = &e;
      report.tensors[plans[i].row].method = QuantizeMethod::gptq;
    }
  }

  LogicalCheckpoint dst;
  dst.source = src.source;
  dst.layout = std::string(layout.name());
  dst.metadata = src.metadata;
  dst.metadata[std::string(kScaleRuleMetadataKey)] = scale_rule_name(options.quantize.rule);
  dst.metadata[std::string(kVersionMetadataKey)] = version_string();
  std::vector<std::string> origin;  // each dst tensor's name in the input
  std::vector<std::uint64_t> in_bytes;
  for (std::size_t i = 0; i < src.tensors.size(); ++i) {
    const LogicalTensor& t = src.tensors[i];
    if (attached.count(i) != 0) continue;
    const Plan& plan = plans[i];
    if (!plan.quantize) {
      dst.tensors.push_back(t);
      origin.push_back(input_name(t));
      in_bytes.push_back(logical_bytes(t));
      continue;
    }
    LogicalTensor q;
    q.kind = LogicalTensor::Kind::mxfp4;
    q.name = plan.layer;
    if (t.shape.size() == 3) q.experts = t.shape[0];
    q.n = t.shape[t.shape.size() - 2];
    q.k = t.shape.back();
    const LogicalTensor* bias = plan.bias == SIZE_MAX ? nullptr : &src.tensors[plan.bias];
    if (bias != nullptr) q.bias_dtype = bias->dtype;
    TensorReport* row = &report.tensors[plan.row];
    QuantizeReport* rep = &report;
    const QuantizeOptions qo = options.quantize;
    const SafetensorsEntry* he = plan.hessian;
    const double damp = options.damp;
    q.weight = [&t, bias, row, rep, qo, prefix, hessians, he, damp] {
      const Tensor source = dense_tensor(t, prefix);
      QuantizedTensor qt;
      try {
        if (he != nullptr && source.rank() == 3) {
          // Expert e's Hessian is read when its turn comes and dropped before the next one.
          std::optional<Hessian> current;
          const Mxfp4Weight w = detail::quantize_gptq_experts(
              source, source.dim(0),
              [&](std::int64_t e) -> const Hessian& {
                current.reset();
                current.emplace(load_hessian(*hessians, *he, e));
                return *current;
              },
              {}, GptqOptions{qo.rule, damp});
          qt = {w.blocks(), w.scales()};
        } else if (he != nullptr) {
          const Hessian h = load_hessian(*hessians, *he, 0);
          const Mxfp4Weight w = quantize_gptq(source, h, {}, GptqOptions{qo.rule, damp});
          qt = {w.blocks(), w.scales()};
        } else {
          qt = quantize(source, qo);
        }
      } catch (const NonFiniteValue& err) {
        throw NonFiniteValue(prefix + "tensor '" + t.name + "': " + err.what());
      } catch (const InvalidArgument& err) {  // GPTQ: H not positive definite
        throw InvalidArgument(prefix + "tensor '" + t.name + "': " + err.what());
      } catch (const Error& err) {
        throw Error(err.code(), prefix + "tensor '" + t.name + "': " + err.what());
      }
      const ErrorStats s =
          compare(source, Mxfp4Weight::from_parts(qt.blocks, qt.scales).dequantize(DType::f32));
      row->sqnr_db = s.sqnr_db;
      row->max_abs_error = s.max_abs_error;
      row->nan_blocks = count_nan_blocks(qt.scales);
      row->bytes_out = qt.blocks.nbytes() + qt.scales.nbytes();
      rep->quantized_values += source.numel();
      rep->quantized_bytes_in += row->bytes_in;
      rep->quantized_bytes_out += row->bytes_out;
      std::optional<Tensor> b;
      if (bias != nullptr) b = dense_tensor(*bias, prefix);
      return Mxfp4Weight::from_parts(qt.blocks, qt.scales, std::move(b));
    };
    dst.tensors.push_back(std::move(q));
    origin.push_back(t.name);
    in_bytes.push_back(logical_bytes(t) + (bias != nullptr ? logical_bytes(*bias) : 0));
  }
  check_collisions(layout, dst, origin, prefix);

  // Names each input tensor is written under, for the report.
  const auto names = layout.output_names(dst);
  {
    std::size_t j = 0;
    for (std::size_t i = 0; i < src.tensors.size(); ++i) {
      if (attached.count(i) != 0) continue;
      const std::vector<std::string>& n = names[j++];
      const LogicalTensor& t = src.tensors[i];
      if (t.is_mxfp4()) {
        for (std::size_t k = 0; k < t.source_names.size() && k < n.size(); ++k)
          report.tensors[first_row[i] + k].outputs = {n[k]};
        continue;
      }
      TensorReport& r = report.tensors[first_row[i]];
      if (plans[i].quantize) {
        // Every layout names a weight's bias last (uqff-legacy keeps it inside the one blob).
        const bool bias = plans[i].bias != SIZE_MAX;
        const bool separate = bias && n.size() >= 2;
        r.outputs.assign(n.begin(), separate ? n.end() - 1 : n.end());
        if (bias) {
          TensorReport& br = report.tensors[first_row[plans[i].bias]];
          br.outputs = {n.back()};
          br.bytes_out = br.bytes_in;
        }
      } else {
        r.outputs = n;
        r.bytes_out = r.bytes_in;
      }
    }
  }
  for (const LogicalTensor& t : dst.tensors)
    report.output_values += static_cast<std::int64_t>(logical_numel(t));

  std::uint64_t bytes_total = 0;
  for (std::uint64_t b : in_bytes)
    bytes_total += b;
  std::uint64_t bytes_done = 0;
  std::size_t last = SIZE_MAX;
  LayoutWriteOptions wo;
  wo.max_shard_bytes = options.max_shard_bytes;
  wo.on_tensor = [&](std::size_t i) {
    if (last != SIZE_MAX) bytes_done += in_bytes[last];
    last = i;
    if (options.progress) {
      options.progress({i, dst.tensors.size(), bytes_done, bytes_total, dst.tensors[i].name});
    }
  };
  const std::string target = resolve_output(in, out, options.max_shard_bytes);
  const LayoutWriteResult written = layout.write(dst, target, wo);
  if (options.progress) {
    options.progress({dst.tensors.size(), dst.tensors.size(), bytes_total, bytes_total, ""});
  }
  report.files = written.files;
  report.file_bytes_out = written.bytes;
  if (checkpoint_output_is_folder(target, options.max_shard_bytes)) {
    write_quantized_config(src.folder, target, not_converted);
  }
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
  const LogicalCheckpoint src = read_checkpoint(in);
  DequantizeReport report;
  report.input = in;
  report.output = out;
  report.dtype = dtype;
  report.file_bytes_in = src.source_bytes;

  LogicalCheckpoint dst;
  dst.source = src.source;
  dst.metadata = src.metadata;
  dst.metadata.erase(std::string(kScaleRuleMetadataKey));
  dst.metadata.erase(std::string(kVersionMetadataKey));
  std::vector<std::string> origin;
  const std::string dname(safetensors_dtype_name(dtype));
  for (const LogicalTensor& t : src.tensors) {
    if (!t.is_mxfp4()) {
      dst.tensors.push_back(t);
      origin.push_back(t.name);
      report.copied.push_back(t.name);
      continue;
    }
    const std::string base = t.name.empty() ? "" : t.name + ".";
    LogicalTensor w;
    w.name = base + "weight";
    w.dtype = dname;
    w.shape = t.weight_shape();
    w.bytes = [&t, dtype] { return tensor_bytes(t.weight().dequantize(dtype)); };
    dst.tensors.push_back(std::move(w));
    origin.push_back(input_name(t));
    if (t.has_bias()) {
      LogicalTensor b;
      b.name = base + "bias";
      b.dtype = t.bias_dtype;
      b.shape = t.experts > 0 ? Shape{t.experts, t.n} : Shape{t.n};
      b.bytes = [&t] { return tensor_bytes(*t.weight().bias()); };
      dst.tensors.push_back(std::move(b));
      origin.push_back(t.source_names.size() > 2 ? t.source_names[2] : t.name);
      report.copied.push_back(base + "bias");
    }
    DequantizedTensorReport r;
    r.weight = base + "weight";
    r.blocks = t.source_names.size() > 0 ? t.source_names[0] : t.name;
    r.scales = t.source_names.size() > 1 ? t.source_names[1] : t.name;
    r.shape = t.weight_shape();
    report.dequantized.push_back(std::move(r));
  }
  const Layout& linear = find_layout("linear");
  check_collisions(linear, dst, origin, prefix);
  const LayoutWriteResult written = linear.write(dst, resolve_output(in, out, 0));
  report.file_bytes_out = written.bytes;
  return report;
}

ConvertReport convert_checkpoint(const std::string& in, const std::string& out, std::string_view to,
                                 std::uint64_t max_shard_bytes) {
  const Layout& target = find_layout(to);
  const LogicalCheckpoint src = read_checkpoint(in);
  ConvertReport report;
  report.input = in;
  report.output = out;
  report.from = src.layout;
  report.to = std::string(target.name());
  report.bytes_in = src.source_bytes;
  std::vector<std::string> origin;
  for (const LogicalTensor& t : src.tensors) {
    (t.is_mxfp4() ? report.mxfp4_weights : report.dense_tensors) += 1;
    origin.push_back(input_name(t));
  }
  check_collisions(target, src, origin, "convert_checkpoint '" + in + "': ");
  LayoutWriteOptions wo;
  wo.max_shard_bytes = max_shard_bytes;
  const std::string where = resolve_output(in, out, max_shard_bytes);
  const LayoutWriteResult written = target.write(src, where, wo);
  report.files = written.files;
  report.bytes_out = written.bytes;
  if (checkpoint_output_is_folder(where, max_shard_bytes) && src.config.present) {
    write_quantized_config(src.folder, where, src.config.modules_to_not_convert);
  }
  return report;
}

std::size_t VerifyReport::compared() const {
  std::size_t n = 0;
  for (const auto& t : tensors)
    n += t.problem.empty() ? 1 : 0;
  return n;
}

bool VerifyReport::ok() const {
  return compared() == tensors.size() && changed.empty();
}

VerifyReport verify_checkpoint(const std::string& source, const std::string& quantized) {
  const std::string prefix = "verify_checkpoint '" + quantized + "': ";
  const LogicalCheckpoint src = read_checkpoint(source, {}, /*strict=*/false);
  const LogicalCheckpoint q = read_checkpoint(quantized);
  VerifyReport report;
  report.source = source;
  report.quantized = quantized;
  report.layout = q.layout;
  std::map<std::string, const LogicalTensor*> dense;
  for (const LogicalTensor& t : src.tensors) {
    if (!t.is_mxfp4()) dense.emplace(t.name, &t);
  }
  for (const LogicalTensor& t : q.tensors) {
    if (!t.is_mxfp4()) {
      const auto it = dense.find(t.name);
      if (it == dense.end()) continue;
      const LogicalTensor& s = *it->second;
      bool same = s.dtype == t.dtype && s.shape == t.shape;
      if (same) {
        const TensorBytes a = s.bytes();
        const TensorBytes b = t.bytes();
        same = a.data.size() == b.data.size() &&
               (a.data.empty() || std::memcmp(a.data.data(), b.data.data(), a.data.size()) == 0);
      }
      if (!same) report.changed.push_back(t.name);
      continue;
    }
    VerifyTensorReport r;
    r.name = t.name;
    r.shape = t.weight_shape();
    const std::string base = t.name.empty() ? "" : t.name + ".";
    const LogicalTensor* s = nullptr;
    for (const std::string& candidate : {base + "weight", t.name}) {
      const auto it = dense.find(candidate);
      if (it != dense.end()) {
        s = it->second;
        break;
      }
    }
    if (s == nullptr) {
      r.problem = "no tensor '" + base + "weight' in the source";
    } else if (s->shape != r.shape) {
      r.source = s->name;
      r.problem = "source '" + s->name + "' is " + to_string(s->shape) + ", the weight " +
                  to_string(r.shape);
    } else if (s->dtype != "F32" && s->dtype != "F16" && s->dtype != "BF16") {
      r.source = s->name;
      r.problem = "source '" + s->name + "' is " + s->dtype + ", not F32, F16 or BF16";
    } else {
      r.source = s->name;
      const Mxfp4Weight w = t.weight();
      const ErrorStats e = compare(dense_tensor(*s, prefix), w.dequantize(DType::f32));
      r.sqnr_db = e.sqnr_db;
      r.max_abs_error = e.max_abs_error;
      r.rms_error = e.rms_error;
      r.nan_blocks = count_nan_blocks(w.scales());
    }
    report.tensors.push_back(std::move(r));
  }
  return report;
}

double InspectReport::mxfp4_bits_per_weight() const {
  if (mxfp4_values == 0) return 0.0;
  return 8.0 * static_cast<double>(mxfp4_bytes) / static_cast<double>(mxfp4_values);
}

InspectReport inspect_checkpoint(const std::string& path) {
  InspectReport report;
  report.path = path;
  const Layout& layout = detect_layout(path);
  report.layout = std::string(layout.name());
  LogicalCheckpoint c;
  try {
    c = layout.read(path, /*strict=*/true);
  } catch (const FormatError& e) {
    report.problems.push_back(e.what());
    c = layout.read(path, /*strict=*/false);
  }
  report.metadata = c.metadata;
  report.config = c.config;
  report.total_bytes = c.source_bytes;
  std::map<std::string, std::pair<std::string, std::ptrdiff_t>> roles;
  for (const LogicalTensor& t : c.tensors) {
    if (!t.is_mxfp4()) continue;
    InspectWeight w;
    w.name = t.name;
    w.experts = t.experts;
    w.n = t.n;
    w.k = t.k;
    w.bias_dtype = t.bias_dtype;
    const auto lead = static_cast<std::uint64_t>((t.experts > 0 ? t.experts : 1) * t.n);
    w.bytes = lead * static_cast<std::uint64_t>(t.k / 2 + t.k / kBlockSize);
    report.mxfp4_values += shape_numel(t.weight_shape());
    report.mxfp4_bytes += w.bytes;
    report.weights.push_back(w);
    const char* kinds[] = {"blocks", "scales", "bias"};
    for (std::size_t k = 0; k < t.source_names.size() && k < 3; ++k) {
      roles[t.source_names[k]] = {kinds[k], static_cast<std::ptrdiff_t>(report.weights.size() - 1)};
    }
  }
  // The physical tensors, where the checkpoint is safetensors.
  try {
    const SafetensorsCheckpoint st = SafetensorsCheckpoint::open(path);
    for (const SafetensorsFile& f : st.shards())
      report.files.push_back(f.source());
    for (const auto& r : st.entries()) {
      InspectTensor t;
      t.name = r.entry->name;
      t.file = r.file->source();
      t.dtype = r.entry->dtype;
      t.shape = r.entry->shape;
      t.bytes = r.entry->end - r.entry->begin;
      if (auto it = roles.find(t.name); it != roles.end()) {
        t.part = it->second.first;
        t.weight = it->second.second;
      }
      report.tensors.push_back(std::move(t));
    }
  } catch (const Error&) {
    // Not safetensors (GGUF): the tensors as the layout read them, an MXFP4 weight as one
    // tensor of dtype "MXFP4" (and its bias).
    report.files.push_back(path);
    std::ptrdiff_t weight = 0;
    for (const LogicalTensor& t : c.tensors) {
      InspectTensor it;
      it.file = path;
      if (!t.is_mxfp4()) {
        it.name = t.name;
        it.dtype = t.dtype;
        it.shape = t.shape;
        it.bytes = safetensors_nbytes(t.dtype, t.shape);
        report.tensors.push_back(std::move(it));
        continue;
      }
      const InspectWeight& w = report.weights[static_cast<std::size_t>(weight)];
      it.name = t.source_names.empty() ? t.name : t.source_names[0];
      it.dtype = "MXFP4";
      it.shape = t.weight_shape();
      it.bytes = w.bytes;
      it.part = "weight";
      it.weight = weight;
      report.tensors.push_back(it);
      if (t.has_bias() && t.source_names.size() > 1) {
        it.name = t.source_names.back();
        it.dtype = t.bias_dtype;
        it.shape = t.experts > 0 ? Shape{t.experts, t.n} : Shape{t.n};
        it.bytes = safetensors_nbytes(t.bias_dtype, it.shape);
        it.part = "bias";
        report.tensors.push_back(it);
      }
      ++weight;
    }
  }
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
