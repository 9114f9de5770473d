// The `mxfp4` command: a thin front end over mxfp4/io/checkpoint.hpp (quantize, convert, inspect,
// verify, dequantize, example). It parses arguments,
// calls the library and prints what happened; every failure is one line on stderr
// ("mxfp4: error: ...") and exit status 1 (2 for usage errors), with no partial output file.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mxfp4/io/checkpoint.hpp"
#include "mxfp4/io/layout.hpp"
#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/mxfp4.hpp"

namespace {

constexpr mxfp4::ScaleRule kRules[] = {mxfp4::ScaleRule::floor, mxfp4::ScaleRule::ceil,
                                       mxfp4::ScaleRule::even, mxfp4::ScaleRule::mse,
                                       mxfp4::ScaleRule::mistralrs};

const char* rule_summary(mxfp4::ScaleRule rule) {
  switch (rule) {
    case mxfp4::ScaleRule::floor:
      return "OCP spec: floor(log2 amax) - 2; the largest values may saturate at 6";
    case mxfp4::ScaleRule::ceil:
      return "NVIDIA/triton: ceil(log2(amax / 6)); never saturates, coarser steps";
    case mxfp4::ScaleRule::even:
      return "torchao EVEN: amax rounded to one mantissa bit, then the floor rule";
    case mxfp4::ScaleRule::mse:
      return "tries the ceil exponent and the one below, keeps the smaller block error";
    case mxfp4::ScaleRule::mistralrs:
      return "mistral.rs: floor(log2(amax / 6)); clips, only to reproduce its bytes";
  }
  return "";
}

std::string rules_help() {
  std::string s = "Scale rule, how each 32-value block's exponent is chosen:";
  for (mxfp4::ScaleRule r : kRules) {
    std::string name = mxfp4::scale_rule_name(r);
    name.resize(10, ' ');
    s += "\n  " + name + rule_summary(r);
  }
  s += "\n(default: " + std::string(mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule)) + ")";
  return s;
}

std::string format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string sqnr_text(double db) {
  return std::isinf(db) && db > 0 ? "inf" : format("%.2f", db);
}

// A plain text table: columns padded to their widest cell; `right` marks right-aligned columns.
void print_table(const std::vector<std::vector<std::string>>& rows,
                 const std::vector<bool>& right) {
  std::vector<std::size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (std::size_t c = 0; c < row.size(); ++c)
      width[c] = std::max(width[c], row[c].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      const bool r = c < right.size() && right[c];
      const bool last = c + 1 == row.size();
      line += r ? pad + row[c] : row[c] + (last ? "" : pad);
      if (!last) line += "  ";
    }
    line.erase(line.find_last_not_of(' ') + 1);
    std::cout << line << '\n';
  }
}

std::string bytes_text(std::uint64_t n) {
  std::string s = std::to_string(n);
  if (n >= 10'000'000'000ull)
    return s + " (" + format("%.1f GB", static_cast<double>(n) / 1e9) + ")";
  if (n >= 10'000'000ull) return s + " (" + format("%.1f MB", static_cast<double>(n) / 1e6) + ")";
  return s;
}

std::string ratio_text(std::uint64_t out, std::uint64_t in) {
  if (in == 0) return "";
  return " (" + format("%.1f%%", 100.0 * static_cast<double>(out) / static_cast<double>(in)) + ")";
}

// Bytes as "123 B", "45.6 MB" for progress lines.
std::string short_bytes(double n) {
  if (n >= 1e9) return format("%.2f GB", n / 1e9);
  if (n >= 1e6) return format("%.1f MB", n / 1e6);
  if (n >= 1e3) return format("%.1f kB", n / 1e3);
  return format("%.0f B", n);
}

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[48];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  }
  return buf;
}

// Progress of quantize: a bar with rate and ETA on stderr when it is a terminal, plain lines on
// stdout otherwise (stderr then stays free for the one error line of a failure).
class Progress {
 public:
  Progress() : tty_(::isatty(2) == 1), start_(std::chrono::steady_clock::now()) {}

  void operator()(const mxfp4::io::QuantizeProgress& p) {
    if (!tty_) {
      if (p.done < p.total) {
        std::cout << "[" << p.done + 1 << "/" << p.total << "] " << p.current << '\n';
      }
      return;
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(p.bytes_done) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / rate
                                : std::numeric_limits<double>::infinity();
    constexpr int kWidth = 30;
    const double frac =
        p.bytes_total == 0 ? 1.0
                           : static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(kWidth, '.');
    const std::string name(p.current.substr(0, 40));
    const std::string when =
        p.done == p.total ? "took " + clock_text(elapsed) : "ETA " + clock_text(eta);
    std::fprintf(stderr, "\r[%s] %3.0f%% %zu/%zu  %s/s  %s  %-40s", bar.c_str(), frac * 100.0,
                 p.done, p.total, short_bytes(rate).c_str(), when.c_str(), name.c_str());
    if (p.done == p.total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

// "5GB", "500MB", "2GiB", "1048576": bytes.
std::uint64_t parse_size(const std::string& text) {
  const auto bad = [&] {
    return mxfp4::InvalidArgument("--max-shard-size '" + text +
                                  "' is not a size (e.g. 5GB, 500MB, 2GiB or bytes)");
  };
  std::size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw bad();
  }
  std::string unit = text.substr(pos);
  for (char& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::map<std::string, double> units = {{"", 1.0},
                                               {"B", 1.0},
                                               {"KB", 1e3},
                                               {"MB", 1e6},
                                               {"GB", 1e9},
                                               {"TB", 1e12},
                                               {"KIB", 1024.0},
                                               {"MIB", 1048576.0},
                                               {"GIB", 1073741824.0},
                                               {"TIB", 1099511627776.0}};
  const auto it = units.find(unit);
  if (it == units.end() || !(v >= 1.0) || v * it->second > 1.8e19) throw bad();
  return static_cast<std::uint64_t>(v * it->second);
}

std::string files_text(const std::vector<std::string>& files) {
  if (files.size() == 1) return files.front();
  return std::to_string(files.size()) + " files";
}

struct QuantizeArgs {
  std::string rule;
  bool allow_nonfinite = false;
  std::string layout;
  std::string include;
  std::string exclude;
  std::string shard;
  std::string hessians;
  double damp = 0.01;
};

int run_quantize(const std::string& in, const std::string& out, const QuantizeArgs& a) {
  mxfp4::io::CheckpointQuantizeOptions options;
  options.quantize.rule = mxfp4::parse_scale_rule(a.rule);
  options.quantize.non_finite =
      a.allow_nonfinite ? mxfp4::NonFinitePolicy::nan_block : mxfp4::NonFinitePolicy::error;
  options.layout = a.layout;
  options.include = a.include;
  options.exclude = a.exclude;
  if (!a.shard.empty()) options.max_shard_bytes = parse_size(a.shard);
  options.hessians = a.hessians;
  options.damp = a.damp;
  Progress progress;
  options.progress = [&](const mxfp4::io::QuantizeProgress& p) { progress(p); };
  const mxfp4::io::QuantizeReport report = mxfp4::io::quantize_checkpoint(in, out, options);

  std::cout << "quantized " << report.input << " -> " << report.output
            << " (layout: " << report.layout
            << ", scale rule: " << mxfp4::scale_rule_name(report.rule) << ")\n\n";
  std::vector<std::vector<std::string>> rows = {
      {"tensor", "dtype", "shape", "action", "method", "SQNR dB", "max err"}};
  std::size_t gptq = 0;
  for (const auto& t : report.tensors) {
    const bool q = t.action == mxfp4::io::TensorAction::quantized;
    gptq += q && t.method == mxfp4::io::QuantizeMethod::gptq ? 1 : 0;
    rows.push_back({t.name, t.dtype, t.dtype.empty() ? "" : mxfp4::to_string(t.shape),
                    mxfp4::io::tensor_action_name(t.action),
                    q ? mxfp4::io::quantize_method_name(t.method) : "-",
                    q ? sqnr_text(t.sqnr_db) : "-", q ? format("%.3g", t.max_abs_error) : "-"});
  }
  print_table(rows, {false, false, false, false, false, true, true});

  const std::size_t skipped = report.count(mxfp4::io::TensorAction::skipped);
  if (skipped > 0) {
    std::cout << "\nskipped (copied unchanged):\n";
    for (const auto& t : report.tensors) {
      if (t.action == mxfp4::io::TensorAction::skipped) {
        std::cout << "  " << t.name << ": " << t.reason << '\n';
      }
    }
  }
  for (const auto& t : report.tensors) {
    if (t.nan_blocks > 0) {
      std::cout << "note: " << t.name << ": " << t.nan_blocks
                << " blocks hold NaN or Inf and were written with scale 0xFF (they decode as "
                   "NaN)\n";
    }
  }
  const std::size_t quantized = report.count(mxfp4::io::TensorAction::quantized);
  std::cout << '\n'
            << quantized << " weights quantized ("
            << (a.hessians.empty()
                    ? ""
                    : std::to_string(gptq) + " with GPTQ (damp " + format("%g", a.damp) + "), " +
                          std::to_string(quantized - gptq) + " rounded to nearest; ")
            << report.quantized_values << " values), " << skipped << " skipped, "
            << report.count(mxfp4::io::TensorAction::copied) << " other tensors copied\n";
  if (report.quantized_values > 0) {
    std::cout << "quantized weights: " << bytes_text(report.quantized_bytes_in) << " -> "
              << bytes_text(report.quantized_bytes_out) << " bytes"
              << ratio_text(report.quantized_bytes_out, report.quantized_bytes_in) << ", "
              << format("%.2f", report.bits_per_weight()) << " bits per weight\n";
  }
  std::cout << "output (" << files_text(report.files) << "): " << bytes_text(report.file_bytes_in)
            << " -> " << bytes_text(report.file_bytes_out) << " bytes"
            << ratio_text(report.file_bytes_out, report.file_bytes_in) << ", "
            << format("%.2f", report.output_bits_per_value())
            << " bits per value over all its tensors\n";
  return 0;
}

int run_convert(const std::string& in, const std::string& out, const std::string& to,
                const std::string& shard) {
  const auto r = mxfp4::io::convert_checkpoint(in, out, to, shard.empty() ? 0 : parse_size(shard));
  std::cout << "converted " << r.input << " (" << r.from << ") -> " << r.output << " (" << r.to
            << "): " << r.mxfp4_weights << " MXFP4 weights and " << r.dense_tensors
            << " other tensors, bit for bit\n"
            << "output (" << files_text(r.files) << "): " << bytes_text(r.bytes_in) << " -> "
            << bytes_text(r.bytes_out) << " bytes\n";
  return 0;
}

int run_dequantize(const std::string& in, const std::string& out, const std::string& dtype) {
  const mxfp4::io::DequantizeReport report =
      mxfp4::io::dequantize_checkpoint(in, out, mxfp4::parse_dtype(dtype));
  std::cout << "dequantized " << report.input << " -> " << report.output << " ("
            << mxfp4::dtype_name(report.dtype) << ")\n\n";
  std::vector<std::vector<std::string>> rows = {{"blocks + scales", "", "weight", "shape"}};
  for (const auto& d : report.dequantized) {
    rows.push_back({d.blocks + " + " + d.scales, "->", d.weight, mxfp4::to_string(d.shape)});
  }
  if (!report.dequantized.empty()) print_table(rows, {});
  std::cout << (report.dequantized.empty() ? "" : "\n") << report.dequantized.size()
            << " weights dequantized, " << report.copied.size() << " other tensors copied\n"
            << "file: " << bytes_text(report.file_bytes_in) << " -> "
            << bytes_text(report.file_bytes_out) << " bytes\n";
  return 0;
}

using Json = nlohmann::ordered_json;

Json shape_json(const mxfp4::Shape& s) {
  Json a = Json::array();
  for (auto d : s)
    a.push_back(d);
  return a;
}

// JSON has no infinity: an exact weight's SQNR is written as null.
Json number_json(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

int run_inspect(const std::string& path, bool as_json) {
  const mxfp4::io::InspectReport r = mxfp4::io::inspect_checkpoint(path);
  auto weight_dims = [&](std::ptrdiff_t i) {
    const auto& w = r.weights[static_cast<std::size_t>(i)];
    std::string dims = "N=" + std::to_string(w.n) + ", K=" + std::to_string(w.k);
    if (w.experts > 0) dims = "E=" + std::to_string(w.experts) + ", " + dims;
    return dims;
  };
  if (as_json) {
    Json j;
    j["path"] = r.path;
    j["layout"] = r.layout;
    j["files"] = r.files;
    j["bytes"] = r.total_bytes;
    j["metadata"] = r.metadata;
    if (r.config.present) {
      j["quantization_config"] = {{"quant_method", r.config.quant_method},
                                  {"modules_to_not_convert", r.config.modules_to_not_convert}};
    }
    Json tensors = Json::array();
    for (const auto& t : r.tensors) {
      Json e = {{"name", t.name},
                {"file", t.file},
                {"dtype", t.dtype},
                {"shape", shape_json(t.shape)},
                {"bytes", t.bytes}};
      if (t.weight >= 0) {
        e["mxfp4"] = {{"weight", r.weights[static_cast<std::size_t>(t.weight)].name},
                      {"part", t.part}};
      }
      tensors.push_back(std::move(e));
    }
    j["tensors"] = std::move(tensors);
    Json weights = Json::array();
    for (const auto& w : r.weights) {
      weights.push_back({{"name", w.name},
                         {"experts", w.experts},
                         {"n", w.n},
                         {"k", w.k},
                         {"bias_dtype", w.bias_dtype.empty() ? Json(nullptr) : Json(w.bias_dtype)},
                         {"bytes", w.bytes}});
    }
    j["mxfp4_weights"] = std::move(weights);
    j["mxfp4_values"] = r.mxfp4_values;
    j["mxfp4_bits_per_weight"] = r.mxfp4_bits_per_weight();
    j["problems"] = r.problems;
    std::cout << j.dump(2) << '\n';
    return 0;
  }
  std::cout << path << ": " << r.tensors.size() << " tensors"
            << (r.files.size() > 1 ? " in " + files_text(r.files) : std::string()) << ", "
            << bytes_text(r.total_bytes) << " bytes, layout " << r.layout << '\n';
  for (const auto& [k, v] : r.metadata)
    std::cout << "metadata: " << k << " = " << v << '\n';
  if (r.config.present) {
    std::cout << "config.json: quant_method = " << r.config.quant_method
              << ", modules_to_not_convert = " << r.config.modules_to_not_convert.size()
              << " entries\n";
  }
  std::cout << '\n';
  const bool many = r.files.size() > 1;
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "bytes", ""}};
  if (many) rows[0].push_back("file");
  for (const auto& t : r.tensors) {
    rows.push_back({t.name, t.dtype, mxfp4::to_string(t.shape), std::to_string(t.bytes),
                    t.weight < 0 ? "" : "MXFP4 " + t.part + " (" + weight_dims(t.weight) + ")"});
    if (many) rows.back().push_back(std::filesystem::path(t.file).filename().string());
  }
  print_table(rows, {false, false, false, true, false, false});
  if (!r.weights.empty()) {
    std::cout << '\n'
              << r.weights.size() << " MXFP4 weights, " << r.mxfp4_values << " values, "
              << format("%.2f", r.mxfp4_bits_per_weight()) << " bits per weight\n";
  }
  for (const auto& p : r.problems)
    std::cout << "note: " << p << '\n';
  return 0;
}

int run_verify(const std::string& source, const std::string& quantized, bool as_json) {
  const mxfp4::io::VerifyReport r = mxfp4::io::verify_checkpoint(source, quantized);
  if (as_json) {
    Json j;
    j["source"] = r.source;
    j["quantized"] = r.quantized;
    j["layout"] = r.layout;
    Json tensors = Json::array();
    for (const auto& t : r.tensors) {
      Json e = {{"name", t.name}, {"source", t.source}, {"shape", shape_json(t.shape)}};
      if (t.problem.empty()) {
        e["sqnr_db"] = number_json(t.sqnr_db);
        e["max_abs_error"] = t.max_abs_error;
        e["rms_error"] = t.rms_error;
        e["nan_blocks"] = t.nan_blocks;
      } else {
        e["problem"] = t.problem;
      }
      tensors.push_back(std::move(e));
    }
    j["tensors"] = std::move(tensors);
    j["changed"] = r.changed;
    j["ok"] = r.ok();
    std::cout << j.dump(2) << '\n';
  } else {
    std::cout << "verified " << r.quantized << " (" << r.layout << ") against " << r.source
              << "\n\n";
    std::vector<std::vector<std::string>> rows = {
        {"weight", "shape", "SQNR dB", "max err", "rms err", "source"}};
    for (const auto& t : r.tensors) {
      if (t.problem.empty()) {
        rows.push_back({t.name, mxfp4::to_string(t.shape), sqnr_text(t.sqnr_db),
                        format("%.3g", t.max_abs_error), format("%.3g", t.rms_error), t.source});
      } else {
        rows.push_back({t.name, mxfp4::to_string(t.shape), "-", "-", "-", t.problem});
      }
    }
    print_table(rows, {false, false, true, true, true, false});
    for (const auto& c : r.changed)
      std::cout << "changed: " << c << " differs from the source's tensor of that name\n";
    std::cout << '\n' << r.compared() << " of " << r.tensors.size() << " MXFP4 weights compared\n";
  }
  if (!r.ok()) {
    std::cout.flush();
    std::cerr << "mxfp4: error: verify '" << quantized << "': " << (r.tensors.size() - r.compared())
              << " MXFP4 weights could not be compared and " << r.changed.size()
              << " copied tensors differ from '" << source << "'\n";
    return 1;
  }
  return 0;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Quantize, convert, inspect, verify and dequantize MXFP4 checkpoints (safetensors files or "
      "folders, sharded or not).",
      "mxfp4"};
  app.set_version_flag("--version", std::string("mxfp4 ") + mxfp4::version_string());
  app.require_subcommand(1);

  std::string in, out, dtype = "f32", to;
  QuantizeArgs qa;
  qa.rule = mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule);
  qa.layout = "linear";
  bool as_json = false;
  std::vector<std::string> rule_names;
  for (mxfp4::ScaleRule r : kRules)
    rule_names.emplace_back(mxfp4::scale_rule_name(r));
  const std::string layouts = "layout: " + mxfp4::io::layout_names();

  auto* quantize = app.add_subcommand(
      "quantize",
      "Quantize every 2-D or 3-D F32/F16/BF16 tensor P.weight whose last dim is a multiple of 32 "
      "into MXFP4 (layout linear: P.blocks U8 [.., N, K/2] and P.scales U8 [.., N, K/32]); copy "
      "everything else. Reports each skip and why, and per-tensor SQNR and max error.");
  quantize->add_option("IN", in, "input checkpoint: a .safetensors file or a folder")->required();
  quantize->add_option("OUT", out, "output .safetensors file, or folder (written atomically)")
      ->required();
  quantize->add_option("--scale-rule", qa.rule, rules_help())
      ->check(CLI::IsMember(rule_names))
      ->capture_default_str();
  std::vector<std::string> layout_choices;
  for (const mxfp4::io::Layout* l : mxfp4::io::layouts())
    layout_choices.emplace_back(l->name());
  quantize->add_option("--layout", qa.layout, "output " + layouts)
      ->check(CLI::IsMember(layout_choices))
      ->capture_default_str();
  quantize->add_option("--include", qa.include,
                       "quantize only weights whose name matches this regular expression");
  quantize->add_option("--exclude", qa.exclude,
                       "do not quantize weights whose name matches this regular expression");
  quantize->add_option("--max-shard-size", qa.shard,
                       "split the output into shards of at most this size (e.g. 5GB); OUT is "
                       "then a folder with model.safetensors.index.json");
  auto* hessians = quantize->add_option(
      "--hessians", qa.hessians,
      "GPTQ: a .safetensors file mapping weight names (P.weight, as in IN) to "
      "the Hessian (F32 or F64, X^T X of the layer's calibration inputs) of "
      "each weight to quantize with GPTQ: [K, K] for a matrix [N, K], [E, K, K] "
      "(one per expert) for a stack of experts [E, N, K]; the weights it does "
      "not name are rounded to nearest");
  quantize
      ->add_option("--damp", qa.damp,
                   "GPTQ dampening: damp * mean(diag H) is added to H's diagonal (>= 0; more "
                   "damping corrects less)")
      ->check(CLI::NonNegativeNumber)
      ->needs(hessians)
      ->capture_default_str();
  quantize->add_flag("--allow-nonfinite", qa.allow_nonfinite,
                     "encode blocks holding NaN or Inf with scale 0xFF (they decode as NaN) "
                     "instead of failing");

  auto* convert = app.add_subcommand(
      "convert", "Rewrite a checkpoint in another layout, bit for bit (never requantizes).");
  convert->add_option("IN", in, "input checkpoint (any layout; detected)")->required();
  convert->add_option("OUT", out, "output file or folder (written atomically)")->required();
  convert->add_option("--to", to, "target " + layouts)
      ->check(CLI::IsMember(layout_choices))
      ->required();
  convert->add_option("--max-shard-size", qa.shard, "split the output into shards (e.g. 5GB)");

  auto* inspect = app.add_subcommand(
      "inspect",
      "List a checkpoint's tensors, dtypes, shapes and sizes; which are MXFP4 (with "
      "E, N, K) and their bits per weight.");
  inspect->add_option("FILE", in, "a .safetensors file, index or folder")->required();
  inspect->add_flag("--json", as_json, "print JSON instead of a table");
  auto* info = app.add_subcommand("info", "The same as inspect.");
  info->add_option("FILE", in, "a .safetensors file, index or folder")->required();
  info->add_flag("--json", as_json, "print JSON instead of a table");

  auto* verify = app.add_subcommand(
      "verify",
      "Compare every MXFP4 weight P of QUANTIZED with P.weight of SOURCE (SQNR, max "
      "and rms error) and check that copied tensors are unchanged. Exit status 1 when "
      "a weight cannot be compared or a copied tensor differs.");
  verify->add_option("SOURCE", in, "the dense checkpoint")->required();
  verify->add_option("QUANTIZED", out, "the quantized checkpoint (any layout)")->required();
  verify->add_flag("--json", as_json, "print JSON instead of a table");

  auto* dequantize = app.add_subcommand(
      "dequantize", "Turn every MXFP4 weight P back into P.weight (and P.bias); copy the rest.");
  dequantize->add_option("IN", in, "input checkpoint (any layout)")->required();
  dequantize->add_option("OUT", out, "output .safetensors file or folder (written atomically)")
      ->required();
  dequantize->add_option("--dtype", dtype, "dtype of the dequantized weights")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();

  auto* example = app.add_subcommand(
      "example", "Write the built-in example checkpoint (a tiny MLP with stacked experts).");
  example->add_option("OUT", out, "output .safetensors file")->required();

  // CLI11 would call an unknown word a missing subcommand; name it instead.
  const std::string first = argc > 1 ? argv[1] : "";
  bool known = false;
  for (const CLI::App* s : {quantize, convert, inspect, info, verify, dequantize, example})
    known |= s->get_name() == first;
  if (!first.empty() && first[0] != '-' && !known) {
    std::cerr << "mxfp4: error: unknown command '" << one_line(argv[1])
              << "' (expected quantize, convert, inspect, verify, dequantize or example; see "
                 "mxfp4 --help)\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::cerr << "mxfp4: error: " << one_line(e.what()) << " (see mxfp4 --help)\n";
    return 2;
  }

  try {
    if (quantize->parsed()) return run_quantize(in, out, qa);
    if (convert->parsed()) return run_convert(in, out, to, qa.shard);
    if (inspect->parsed() || info->parsed()) return run_inspect(in, as_json);
    if (verify->parsed()) return run_verify(in, out, as_json);
    if (dequantize->parsed()) return run_dequantize(in, out, dtype);
    if (example->parsed()) {
      const std::uint64_t size = mxfp4::io::write_example_checkpoint(out);
      std::cout << "wrote the built-in example checkpoint to " << out << " (" << size
                << " bytes)\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "mxfp4: error: " << one_line(e.what()) << '\n';
    return 1;
  } catch (...) {
    std::cerr << "mxfp4: error: unknown failure\n";
    return 1;
  }
  return 2;
}
