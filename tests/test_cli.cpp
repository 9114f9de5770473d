// The `mxfp4` command as a user runs it: exit status 0 on success, 1 with exactly one
// "mxfp4: error: ..." line on stderr on failure, 2 on usage errors; no partial output files.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"
#include "test_numbers.hpp"

#ifndef MXFP4_CLI
#error "MXFP4_CLI must name the mxfp4 executable"
#endif
#ifndef MXFP4_CLI_LAUNCHER
#define MXFP4_CLI_LAUNCHER ""  // cross builds: the emulator that runs MXFP4_CLI (qemu-aarch64)
#endif

namespace {

namespace fs = std::filesystem;
using namespace mxfp4::test;

class cli_command : public ::testing::Test {
 protected:
  std::string file(const std::string& name) const { return dir_.file(name); }

  // Runs `mxfp4 <args>`; returns the exit status and fills out_ and err_.
  int run(const std::string& args) {
    const std::string cmd = std::string(MXFP4_CLI_LAUNCHER) + " '" + MXFP4_CLI + "' " + args +
                            " >'" + file("stdout.txt") + "' 2>'" + file("stderr.txt") + "'";
    const int status = std::system(cmd.c_str());
    out_ = read_text(file("stdout.txt"));
    err_ = read_text(file("stderr.txt"));
    fs::remove(file("stdout.txt"));
    fs::remove(file("stderr.txt"));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  // stderr is exactly one line starting "mxfp4: error: ".
  void expect_one_error_line() const {
    EXPECT_EQ(err_.rfind("mxfp4: error: ", 0), 0u) << err_;
    ASSERT_FALSE(err_.empty());
    EXPECT_EQ(err_.back(), '\n') << err_;
    EXPECT_EQ(std::count(err_.begin(), err_.end(), '\n'), 1) << err_;
  }

  // The path of `name`, quoted for the shell.
  std::string q(const std::string& name) const {
    std::string s = "'";
    s += file(name);
    s += '\'';
    return s;
  }

  TempDir dir_;
  std::string out_, err_;
};

TEST_F(cli_command, Version) {
  EXPECT_EQ(run("--version"), 0);
  EXPECT_NE(out_.find(mxfp4::version_string()), std::string::npos) << out_;
}

TEST_F(cli_command, HelpListsEveryRuleAndTheDefault) {
  EXPECT_EQ(run("quantize --help"), 0);
  for (const char* r : {"floor", "ceil", "even", "mse", "mistralrs"}) {
    EXPECT_NE(out_.find(r), std::string::npos) << r << " in " << out_;
  }
  EXPECT_NE(out_.find(std::string("default: ") + mxfp4::scale_rule_name(mxfp4::kDefaultScaleRule)),
            std::string::npos)
      << out_;
}

TEST_F(cli_command, ExampleQuantizeInfoDequantize) {
  ASSERT_EQ(run("example " + q("ex.safetensors")), 0) << err_;
  EXPECT_TRUE(err_.empty()) << err_;
  ASSERT_EQ(
      run("quantize " + q("ex.safetensors") + " " + q("q.safetensors") + " --scale-rule ceil"), 0)
      << err_;
  EXPECT_NE(out_.find("layers.0.mlp.up.weight"), std::string::npos) << out_;
  EXPECT_NE(out_.find("quantized"), std::string::npos) << out_;
  EXPECT_NE(out_.find("K=40 (the last dim) is not a multiple of 32"), std::string::npos) << out_;
  EXPECT_NE(out_.find("rank 1"), std::string::npos) << out_;
  EXPECT_NE(out_.find("4.25 bits per weight"), std::string::npos) << out_;
  EXPECT_EQ(
      mxfp4::io::SafetensorsFile::open(file("q.safetensors")).metadata().at("mxfp4.scale_rule"),
      "ceil");

  ASSERT_EQ(run("info " + q("q.safetensors")), 0) << err_;
  EXPECT_NE(out_.find("MXFP4 blocks (E=4, N=64, K=128)"), std::string::npos) << out_;
  EXPECT_NE(out_.find("MXFP4 scales (N=256, K=128)"), std::string::npos) << out_;
  EXPECT_NE(out_.find("mxfp4.scale_rule = ceil"), std::string::npos) << out_;

  ASSERT_EQ(run("dequantize " + q("q.safetensors") + " " + q("d.safetensors") + " --dtype f16"), 0)
      << err_;
  const auto d = mxfp4::io::SafetensorsFile::open(file("d.safetensors"));
  ASSERT_NE(d.find("experts.weight"), nullptr);
  EXPECT_EQ(d.find("experts.weight")->dtype, "F16");
  EXPECT_EQ(d.find("experts.weight")->shape, (mxfp4::Shape{4, 64, 128}));
}

TEST_F(cli_command, FailuresPrintOneLineAndWriteNothing) {
  EXPECT_EQ(run("quantize " + q("absent.safetensors") + " " + q("out.safetensors")), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("absent.safetensors"), std::string::npos) << err_;
  EXPECT_TRUE(out_.empty()) << out_;
  EXPECT_FALSE(fs::exists(file("out.safetensors")));

  write_text(file("junk.safetensors"), "not a safetensors file at all");
  EXPECT_EQ(run("info " + q("junk.safetensors")), 1);
  expect_one_error_line();
  EXPECT_EQ(run("dequantize " + q("junk.safetensors") + " " + q("out.safetensors")), 1);
  expect_one_error_line();
  EXPECT_FALSE(fs::exists(file("out.safetensors")));
  EXPECT_EQ(run("example " + q("no/such/dir/ex.safetensors")), 1);
  expect_one_error_line();
}

TEST_F(cli_command, NonFiniteWeights) {
  auto w = mxfp4::Tensor::zeros({2, 32}, mxfp4::DType::f32);
  w.data_as<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  mxfp4::io::write_safetensors(file("nan.safetensors"),
                               {mxfp4::io::safetensors_item("l.weight", w)});
  EXPECT_EQ(run("quantize " + q("nan.safetensors") + " " + q("out.safetensors")), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("l.weight"), std::string::npos) << err_;
  EXPECT_FALSE(fs::exists(file("out.safetensors")));

  EXPECT_EQ(
      run("quantize " + q("nan.safetensors") + " " + q("out.safetensors") + " --allow-nonfinite"),
      0)
      << err_;
  EXPECT_NE(out_.find("1 blocks hold NaN or Inf"), std::string::npos) << out_;
}

// --hessians: the named weights get quantize_gptq's bytes, the report says which method each
// weight got, and a bad Hessian is one error line with no output.
TEST_F(cli_command, GptqWithAHessiansFile) {
  ASSERT_EQ(run("example " + q("ex.safetensors")), 0) << err_;
  const auto src = mxfp4::io::SafetensorsFile::open(file("ex.safetensors"));
  const mxfp4::Tensor x = mxfp4::test::random_normal({300, 128}, 5);
  mxfp4::Hessian h(128);
  h.add(x);
  const mxfp4::Tensor h32 = h.to_tensor();
  mxfp4::io::write_safetensors(file("h.safetensors"),
                               {mxfp4::io::safetensors_item("layers.0.mlp.up.weight", h32)});
  ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("q.safetensors") + " --hessians " +
                q("h.safetensors") + " --scale-rule ceil --damp 0.05"),
            0)
      << err_;
  const auto out = mxfp4::io::SafetensorsFile::open(file("q.safetensors"));
  const mxfp4::Mxfp4Weight ref =
      mxfp4::quantize_gptq(src.tensor("layers.0.mlp.up.weight"), mxfp4::Hessian::from_tensor(h32),
                           {}, mxfp4::GptqOptions{mxfp4::ScaleRule::ceil, 0.05});
  EXPECT_EQ(bytes_of(out.tensor("layers.0.mlp.up.blocks")), bytes_of(ref.blocks()));
  EXPECT_EQ(bytes_of(out.tensor("layers.0.mlp.up.scales")), bytes_of(ref.scales()));
  const mxfp4::QuantizedTensor rtn =
      mxfp4::quantize(src.tensor("layers.0.mlp.down.weight"), {mxfp4::ScaleRule::ceil});
  EXPECT_EQ(bytes_of(out.tensor("layers.0.mlp.down.blocks")), bytes_of(rtn.blocks));
  // The method column: the line of each weight.
  const auto line_of = [&](const std::string& name) {
    const std::size_t at = out_.find(name + " ");
    if (at == std::string::npos) return std::string();
    return out_.substr(at, out_.find('\n', at) - at);
  };
  EXPECT_NE(out_.find("method"), std::string::npos) << out_;
  EXPECT_NE(line_of("layers.0.mlp.up.weight").find(" gptq "), std::string::npos) << out_;
  EXPECT_NE(line_of("layers.0.mlp.down.weight").find(" rtn "), std::string::npos) << out_;
  EXPECT_NE(line_of("experts.weight").find(" rtn "), std::string::npos) << out_;
  EXPECT_NE(out_.find("3 weights quantized (1 with GPTQ (damp 0.05), 2 rounded to nearest;"),
            std::string::npos)
      << out_;
  // Without --hessians every quantized weight is rtn.
  ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("r.safetensors")), 0) << err_;
  EXPECT_NE(line_of("layers.0.mlp.up.weight").find(" rtn "), std::string::npos) << out_;
  EXPECT_EQ(out_.find(" gptq "), std::string::npos) << out_;

  // Errors: a shape that does not fit (a matrix for a stack of experts too), a tensor that is not
  // quantized, an absent file. One line, exit 1, no output.
  const mxfp4::Tensor small = mxfp4::Tensor::zeros({64, 64}, mxfp4::DType::f32);
  const std::pair<std::string, std::string> bad[] = {
      {"layers.0.mlp.down.weight", "is [128, 128] but weight BF16 [128, 256] needs [K, K]"},
      {"norm.weight", "'norm.weight' names a tensor that is not quantized (skipped"},
      {"experts.weight",
       "Hessian 'experts.weight' is [128, 128] but weight F32 [4, 64, 128] (a stack of 4 experts, "
       "one Hessian each) needs [E, K, K] = [4, 128, 128]"},
  };
  for (const auto& [name, message] : bad) {
    mxfp4::io::write_safetensors(file("bad.safetensors"), {mxfp4::io::safetensors_item(name, h32)});
    EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") +
                  " --hessians " + q("bad.safetensors")),
              1)
        << name;
    expect_one_error_line();
    EXPECT_NE(err_.find(message), std::string::npos) << err_;
    EXPECT_FALSE(fs::exists(file("never.safetensors")));
  }
  mxfp4::io::write_safetensors(file("bad.safetensors"),
                               {mxfp4::io::safetensors_item("layers.0.mlp.up.weight", small)});
  EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") + " --hessians " +
                q("bad.safetensors")),
            1);
  expect_one_error_line();
  EXPECT_NE(err_.find("is [64, 64]"), std::string::npos) << err_;
  EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") + " --hessians " +
                q("absent.safetensors")),
            1);
  expect_one_error_line();
  EXPECT_FALSE(fs::exists(file("never.safetensors")));
  // --damp needs --hessians; a negative one is a usage error.
  EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") + " --damp 0.1"),
            2);
  expect_one_error_line();
  EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") + " --hessians " +
                q("h.safetensors") + " --damp -1"),
            2);
  expect_one_error_line();
  EXPECT_FALSE(fs::exists(file("never.safetensors")));
}

// --hessians for a stack of experts [E, N, K]: the file maps the weight's own name to [E, K, K],
// expert e's Hessian at [e]; the output is quantize_gptq(weight, hessians)'s bytes in any layout,
// the method column says gptq, and a Hessian of the wrong shape names the tensor and both shapes.
TEST_F(cli_command, GptqForAStackOfExperts) {
  ASSERT_EQ(run("example " + q("ex.safetensors")), 0) << err_;
  const auto src = mxfp4::io::SafetensorsFile::open(file("ex.safetensors"));
  const mxfp4::Tensor experts = src.tensor("experts.weight");
  ASSERT_EQ(experts.shape(), (mxfp4::Shape{4, 64, 128}));
  std::vector<mxfp4::Hessian> hs;
  mxfp4::Tensor stack = mxfp4::Tensor::empty({4, 128, 128}, mxfp4::DType::f32);
  for (std::int64_t e = 0; e < 4; ++e) {
    mxfp4::Hessian h(128);
    h.add(mxfp4::test::random_normal({100 + 40 * e, 128}, 20 + static_cast<std::uint32_t>(e)));
    // What the file holds (f32) is what the reference gets.
    const mxfp4::Tensor h32 = h.to_tensor();
    std::memcpy(stack.data_as<float>() + e * 128 * 128, h32.data(), h32.nbytes());
    hs.push_back(mxfp4::Hessian::from_tensor(h32));
  }
  mxfp4::io::write_safetensors(file("h.safetensors"),
                               {mxfp4::io::safetensors_item("experts.weight", stack)});
  const mxfp4::Mxfp4Weight ref =
      mxfp4::quantize_gptq(experts, hs, {}, mxfp4::GptqOptions{mxfp4::ScaleRule::even, 0.02});
  for (const std::string layout : {"linear", "gptoss"}) {
    SCOPED_TRACE(layout);
    ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("q.safetensors") + " --hessians " +
                  q("h.safetensors") + " --scale-rule even --damp 0.02 --layout " + layout),
              0)
        << err_;
    const auto line_of = [&](const std::string& name) {
      const std::size_t at = out_.find(name + " ");
      if (at == std::string::npos) return std::string();
      return out_.substr(at, out_.find('\n', at) - at);
    };
    EXPECT_NE(line_of("experts.weight").find(" gptq "), std::string::npos) << out_;
    EXPECT_NE(line_of("layers.0.mlp.up.weight").find(" rtn "), std::string::npos) << out_;
    EXPECT_NE(out_.find("3 weights quantized (1 with GPTQ (damp 0.02), 2 rounded to nearest;"),
              std::string::npos)
        << out_;
    const auto out = mxfp4::io::SafetensorsFile::open(file("q.safetensors"));
    if (layout == "linear") {
      EXPECT_EQ(bytes_of(out.tensor("experts.blocks")), bytes_of(ref.blocks()));
      EXPECT_EQ(bytes_of(out.tensor("experts.scales")), bytes_of(ref.scales()));
      EXPECT_EQ(bytes_of(out.tensor("experts.bias")), bytes_of(src.tensor("experts.bias")));
    } else {
      // GPT-OSS: P_blocks [E, N, K/32, 16] holds the same bytes in the same order.
      ASSERT_NE(out.find("experts_blocks"), nullptr);
      EXPECT_EQ(out.find("experts_blocks")->shape, (mxfp4::Shape{4, 64, 4, 16}));
      EXPECT_EQ(bytes_of(out.tensor("experts_blocks")), bytes_of(ref.blocks()));
      EXPECT_EQ(bytes_of(out.tensor("experts_scales")), bytes_of(ref.scales()));
    }
  }
  const mxfp4::QuantizedTensor rtn = mxfp4::quantize(experts, {mxfp4::ScaleRule::even});
  EXPECT_NE(bytes_of(rtn.blocks), bytes_of(ref.blocks()));

  // Wrong shapes for the stack: too few experts, the wrong K, a 4-D tensor; a stack for a matrix.
  const std::pair<std::string, mxfp4::Shape> bad[] = {
      {"experts.weight", {3, 128, 128}},
      {"experts.weight", {4, 64, 64}},
      {"experts.weight", {4, 1, 128, 128}},
      {"layers.0.mlp.up.weight", {4, 128, 128}},
  };
  for (const auto& [name, shape] : bad) {
    SCOPED_TRACE(name + " " + mxfp4::to_string(shape));
    mxfp4::io::write_safetensors(
        file("bad.safetensors"),
        {mxfp4::io::safetensors_item(name, mxfp4::Tensor::zeros(shape, mxfp4::DType::f32))});
    EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") +
                  " --hessians " + q("bad.safetensors")),
              1);
    expect_one_error_line();
    const std::string want =
        "Hessian '" + name + "' is " + mxfp4::to_string(shape) + " but weight " +
        (name == "experts.weight" ? std::string("F32 [4, 64, 128] (a stack of 4 experts, one "
                                                "Hessian each) needs [E, K, K] = [4, 128, 128]")
                                  : std::string("F32 [256, 128] needs [K, K] = [128, 128]"));
    EXPECT_NE(err_.find(want), std::string::npos) << err_;
    EXPECT_FALSE(fs::exists(file("never.safetensors")));
  }
  // A bad expert's Hessian fails while quantizing, naming the tensor and the expert.
  stack.data_as<float>()[2 * 128 * 128 + 5] = std::numeric_limits<float>::quiet_NaN();
  mxfp4::io::write_safetensors(file("bad.safetensors"),
                               {mxfp4::io::safetensors_item("experts.weight", stack)});
  EXPECT_EQ(run("quantize " + q("ex.safetensors") + " " + q("never.safetensors") + " --hessians " +
                q("bad.safetensors")),
            1);
  expect_one_error_line();
  EXPECT_NE(err_.find("tensor 'experts.weight': quantize_gptq: expert 2: Hessian::from_values: "
                      "hessian holds NaN at row 0, column 5"),
            std::string::npos)
      << err_;
  EXPECT_FALSE(fs::exists(file("never.safetensors")));
}

TEST_F(cli_command, LayoutsConvertInspectVerify) {
  ASSERT_EQ(run("example " + q("ex.safetensors")), 0) << err_;
  ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("g.safetensors") +
                " --layout gptoss --exclude 'down'"),
            0)
      << err_;
  // Plain progress lines (stderr is not a terminal here), the skip and why, the output's bits.
  EXPECT_NE(out_.find("[1/"), std::string::npos) << out_;
  EXPECT_NE(out_.find("layers.0.mlp.down.weight: matches --exclude 'down'"), std::string::npos)
      << out_;
  EXPECT_NE(out_.find("bits per value over all its tensors"), std::string::npos) << out_;
  EXPECT_TRUE(err_.empty()) << err_;

  ASSERT_EQ(run("inspect " + q("g.safetensors") + " --json"), 0) << err_;
  const auto j = nlohmann::json::parse(out_);
  EXPECT_EQ(j.at("layout"), "gptoss");
  ASSERT_EQ(j.at("mxfp4_weights").size(), 2u);
  EXPECT_EQ(j.at("mxfp4_weights")[1].at("name"), "experts");
  EXPECT_EQ(j.at("mxfp4_weights")[1].at("experts"), 4);
  EXPECT_EQ(j.at("mxfp4_bits_per_weight"), 4.25);

  ASSERT_EQ(run("convert " + q("g.safetensors") + " " + q("l.safetensors") + " --to linear"), 0)
      << err_;
  EXPECT_NE(out_.find("(gptoss)"), std::string::npos) << out_;
  ASSERT_EQ(run("verify " + q("ex.safetensors") + " " + q("l.safetensors") + " --json"), 0) << err_;
  const auto v = nlohmann::json::parse(out_);
  EXPECT_EQ(v.at("ok"), true);
  EXPECT_EQ(v.at("tensors").size(), 2u);
  EXPECT_GT(v.at("tensors")[0].at("sqnr_db").get<double>(), 15.0);

  // A checkpoint that is not this source's: verify fails with one line after its table.
  ASSERT_EQ(run("quantize " + q("l.safetensors") + " " + q("l2.safetensors")), 0) << err_;
  EXPECT_EQ(run("verify " + q("l.safetensors") + " " + q("g.safetensors")), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("could not be compared"), std::string::npos) << err_;

  // Folders: sharded output, read back by every command.
  ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("shards") + " --max-shard-size 30kB"),
            0)
      << err_;
  EXPECT_TRUE(fs::exists(file("shards/model.safetensors.index.json")));
  ASSERT_EQ(run("info " + q("shards")), 0) << err_;
  EXPECT_NE(out_.find("model-00001-of-"), std::string::npos) << out_;
  ASSERT_EQ(run("dequantize " + q("shards") + " " + q("d.safetensors")), 0) << err_;
  // The shards joined again are the very file an unsharded quantize writes.
  ASSERT_EQ(run("convert " + q("shards") + " " + q("one.safetensors") + " --to linear"), 0) << err_;
  ASSERT_EQ(run("quantize " + q("ex.safetensors") + " " + q("single.safetensors")), 0) << err_;
  EXPECT_EQ(read_text(file("one.safetensors")), read_text(file("single.safetensors")));
}

TEST_F(cli_command, FormatFailuresPrintOneLineAndWriteNothing) {
  ASSERT_EQ(run("example " + q("ex.safetensors")), 0) << err_;
  const std::string ex = q("ex.safetensors");
  EXPECT_EQ(run("convert " + ex + " " + q("x.uqff") + " --to uqff-legacy"), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("MXFP4 weights only"), std::string::npos) << err_;
  EXPECT_EQ(run("quantize " + ex + " " + q("x.gguf") + " --layout gguf --max-shard-size 1MB"), 1);
  expect_one_error_line();
  EXPECT_EQ(run("convert " + ex + " " + q("x.safetensors") + " --to nonsense"), 2);
  expect_one_error_line();
  EXPECT_NE(err_.find("--to: nonsense not in"), std::string::npos) << err_;
  EXPECT_EQ(run("quantize " + ex + " " + q("x.safetensors") + " --include '('"), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("--include"), std::string::npos) << err_;
  EXPECT_EQ(run("quantize " + ex + " " + q("x.safetensors") + " --max-shard-size lots"), 1);
  expect_one_error_line();
  EXPECT_EQ(run("quantize " + ex + " " + q("x") + " --layout ggml"), 2);
  expect_one_error_line();
  EXPECT_NE(err_.find("--layout: ggml not in"), std::string::npos) << err_;
  EXPECT_EQ(run("inspect " + q("absent")), 1);
  expect_one_error_line();
  EXPECT_NE(err_.find("absent"), std::string::npos) << err_;
  EXPECT_EQ(run("convert " + ex + " " + q("x.safetensors")), 2);  // --to is required
  expect_one_error_line();
  EXPECT_FALSE(fs::exists(file("x.safetensors")));
  EXPECT_FALSE(fs::exists(file("x.gguf")));
  EXPECT_FALSE(fs::exists(file("x.uqff")));
  EXPECT_FALSE(fs::exists(file("x")));
}

TEST_F(cli_command, UsageErrorsExitTwo) {
  EXPECT_EQ(run(""), 2);
  expect_one_error_line();
  EXPECT_EQ(run("quantize " + q("only-one.safetensors")), 2);
  expect_one_error_line();
  EXPECT_EQ(run("quantize a b --scale-rule nearest"), 2);
  expect_one_error_line();
  EXPECT_NE(err_.find("nearest"), std::string::npos) << err_;
  EXPECT_EQ(run("dequantize a b --dtype i64"), 2);
  expect_one_error_line();
  EXPECT_EQ(run("frobnicate"), 2);
  expect_one_error_line();
  EXPECT_NE(err_.find("unknown command 'frobnicate'"), std::string::npos) << err_;
  EXPECT_EQ(run("info a b"), 2);
  expect_one_error_line();
}

}  // namespace
