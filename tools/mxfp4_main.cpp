// The `mxfp4` command: a thin front end over mxfp4/io/checkpoint.hpp. It parses arguments,
// calls the library and prints what happened; every failure is one line on stderr
// ("mxfp4: error: ...") and exit status 1 (2 for usage errors), with no partial output file.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "mxfp4/io/checkpoint.hpp"
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

int run_quantize(const std::string& in, const std::string& out, const std::string& rule,
                 bool allow_nonfinite) {
  mxfp4::QuantizeOptions options;
  options.rule = mxfp4::parse_scale_rule(rule);
  options.non_finite =
      allow_nonfinite ? mxfp4::NonFinitePolicy::nan_block : mxfp4::NonFinitePolicy::error;
  const mxfp4::io::QuantizeReport report = mxfp4::io::quantize_checkpoint(in, out, options);

  std::cout << "quantized " << report.input << " -> " << report.output
            << " (scale rule: " << mxfp4::scale_rule_name(report.rule) << ")\n\n";
  std::vector<std::vector<std::string>> rows = {
      {"tensor", "dtype", "shape", "action", "SQNR dB", "max err"}};
  for (const auto& t : report.tensors) {
    const bool q = t.action == mxfp4::io::TensorAction::quantized;
    rows.push_back({t.name, t.dtype, mxfp4::to_string(t.shape),
                    mxfp4::io::tensor_action_name(t.action), q ? sqnr_text(t.sqnr_db) : "-",
                    q ? format("%.3g", t.max_abs_error) : "-"});
  }
  print_table(rows, {false, false, false, false, true, true});

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
  std::cout << '\n'
            << report.count(mxfp4::io::TensorAction::quantized) << " weights quantized ("
            << report.quantized_values << " values), " << skipped << " skipped, "
            << report.count(mxfp4::io::TensorAction::copied) << " other tensors copied\n";
  if (report.quantized_values > 0) {
    std::cout << "quantized weights: " << bytes_text(report.quantized_bytes_in) << " -> "
              << bytes_text(report.quantized_bytes_out) << " bytes"
              << ratio_text(report.quantized_bytes_out, report.quantized_bytes_in) << ", "
              << format("%.2f", report.bits_per_weight()) << " bits per weight\n";
  }
  std::cout << "file: " << bytes_text(report.file_bytes_in) << " -> "
            << bytes_text(report.file_bytes_out) << " bytes"
            << ratio_text(report.file_bytes_out, report.file_bytes_in) << '\n';
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

int run_info(const std::string& path) {
  const auto file = mxfp4::io::SafetensorsFile::open(path);
  const mxfp4::io::CheckpointLayout layout = mxfp4::io::find_mxfp4_pairs(file);
  std::map<std::string, std::string> note;
  for (const auto& p : layout.pairs) {
    std::string dims = "N=" + std::to_string(p.n) + ", K=" + std::to_string(p.k);
    if (p.stacked) dims = "E=" + std::to_string(p.experts) + ", " + dims;
    note[p.blocks] = "MXFP4 blocks (" + dims + ")";
    note[p.scales] = "MXFP4 scales (" + dims + ")";
  }
  std::cout << path << ": " << file.entries().size() << " tensors, " << bytes_text(file.file_size())
            << " bytes\n";
  for (const auto& [k, v] : file.metadata())
    std::cout << "metadata: " << k << " = " << v << '\n';
  std::cout << '\n';
  std::vector<std::vector<std::string>> rows = {{"name", "dtype", "shape", "bytes", ""}};
  for (const auto& e : file.entries()) {
    const auto it = note.find(e.name);
    rows.push_back({e.name, e.dtype, mxfp4::to_string(e.shape), std::to_string(e.end - e.begin),
                    it == note.end() ? "" : it->second});
  }
  print_table(rows, {false, false, false, true, false});
  if (!layout.pairs.empty()) std::cout << '\n' << layout.pairs.size() << " MXFP4 weights\n";
  for (const auto& p : layout.problems)
    std::cout << "note: " << p << '\n';
  return 0;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Quantize, dequantize and inspect MXFP4 weights in safetensors checkpoints.",
               "mxfp4"};
  app.set_version_flag("--version", std::string("mxfp4 ") + mxfp4::version_string());
  app.require_subcommand(1);

  std::string in, out, rule = mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule), dtype = "f32";
  bool allow_nonfinite = false;
  std::vector<std::string> rule_names;
  for (mxfp4::ScaleRule r : kRules)
    rule_names.emplace_back(mxfp4::scale_rule_name(r));

  auto* quantize = app.add_subcommand(
      "quantize",
      "Quantize every 2-D or 3-D F32/F16/BF16 tensor P.weight whose last dim is a multiple of 32 "
      "into P.blocks (U8 [.., N, K/2]) and P.scales (U8 [.., N, K/32]); copy everything else.");
  quantize->add_option("IN", in, "input .safetensors file")->required();
  quantize->add_option("OUT", out, "output .safetensors file (written atomically)")->required();
  quantize->add_option("--scale-rule", rule, rules_help())
      ->check(CLI::IsMember(rule_names))
      ->capture_default_str();
  quantize->add_flag("--allow-nonfinite", allow_nonfinite,
                     "encode blocks holding NaN or Inf with scale 0xFF (they decode as NaN) "
                     "instead of failing");

  auto* dequantize = app.add_subcommand(
      "dequantize",
      "Turn every P.blocks + P.scales pair back into P.weight; copy everything else.");
  dequantize->add_option("IN", in, "input .safetensors file")->required();
  dequantize->add_option("OUT", out, "output .safetensors file (written atomically)")->required();
  dequantize->add_option("--dtype", dtype, "dtype of the dequantized weights")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();

  auto* info = app.add_subcommand(
      "info", "List the tensors of a safetensors file; mark MXFP4 pairs with their N and K.");
  info->add_option("FILE", in, "a .safetensors file")->required();

  auto* example = app.add_subcommand(
      "example", "Write the built-in example checkpoint (a tiny MLP with stacked experts).");
  example->add_option("OUT", out, "output .safetensors file")->required();

  // CLI11 would call an unknown word a missing subcommand; name it instead.
  const std::string first = argc > 1 ? argv[1] : "";
  bool known = false;
  for (const CLI::App* s : {quantize, dequantize, info, example})
    known |= s->get_name() == first;
  if (!first.empty() && first[0] != '-' && !known) {
    std::cerr << "mxfp4: error: unknown command '" << one_line(argv[1])
              << "' (expected quantize, dequantize, info or example; see mxfp4 --help)\n";
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
    if (quantize->parsed()) return run_quantize(in, out, rule, allow_nonfinite);
    if (dequantize->parsed()) return run_dequantize(in, out, dtype);
    if (info->parsed()) return run_info(in);
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
