// The safetensors reader and writer: round trips, the exact bytes written, every kind of corrupt
// file the reader must refuse (with a FormatError naming the file and the tensor), and the
// writer's all-or-nothing behaviour.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "mxfp4/io/safetensors.hpp"
#include "mxfp4/mxfp4.hpp"
#include "test_files.hpp"

namespace {

namespace fs = std::filesystem;
using mxfp4::DType;
using mxfp4::Shape;
using mxfp4::io::SafetensorsFile;
using mxfp4::io::SafetensorsItem;
using mxfp4::io::write_safetensors;
using namespace mxfp4::test;

// A file: u64 LE `length` (the header's size unless given), the header text, then `data`.
Bytes make_file(const std::string& header, const Bytes& data = {},
                std::optional<std::uint64_t> length = std::nullopt) {
  const std::uint64_t n = length.value_or(header.size());
  Bytes b;
  append_le(b, n, 8);
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// Parsing `bytes` must throw FormatError whose message names the source and holds each fragment.
void expect_format_error(const Bytes& bytes, const std::vector<std::string>& fragments) {
  try {
    SafetensorsFile::parse(bytes, "bad.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning " << fragments.front();
  } catch (const mxfp4::FormatError& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.code(), mxfp4::ErrorCode::format_error);
    EXPECT_NE(m.find("bad.safetensors"), std::string::npos) << m;
    for (const auto& f : fragments)
      EXPECT_NE(m.find(f), std::string::npos) << "'" << f << "' in: " << m;
  }
}

const std::vector<std::string> kAllDtypes = {"BOOL", "U8",      "I8",      "I16",     "U16", "F16",
                                             "BF16", "I32",     "U32",     "F32",     "F64", "I64",
                                             "U64",  "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"};

// ---- dtypes -------------------------------------------------------------------------------------

TEST(safetensors_dtype, NamesSizesAndMapping) {
  const std::vector<std::pair<std::string, int>> bits = {
      {"BOOL", 8},  {"U8", 8},      {"I8", 8},      {"I16", 16},    {"U16", 16}, {"F16", 16},
      {"BF16", 16}, {"I32", 32},    {"U32", 32},    {"F32", 32},    {"F64", 64}, {"I64", 64},
      {"U64", 64},  {"F8_E4M3", 8}, {"F8_E5M2", 8}, {"F8_E8M0", 8}, {"F4", 4}};
  ASSERT_EQ(bits.size(), kAllDtypes.size());
  for (const auto& [name, b] : bits) {
    EXPECT_EQ(mxfp4::io::safetensors_dtype_bits(name), b) << name;
    if (b >= 8) {
      EXPECT_EQ(mxfp4::io::safetensors_dtype_size(name), static_cast<std::size_t>(b / 8)) << name;
    }
  }
  EXPECT_THROW(mxfp4::io::safetensors_dtype_size("F4"), mxfp4::InvalidArgument);
  EXPECT_THROW(mxfp4::io::safetensors_dtype_size("F128"), mxfp4::FormatError);
  EXPECT_THROW(mxfp4::io::safetensors_dtype_bits("f32"), mxfp4::FormatError);  // case matters

  for (DType d :
       {DType::f32, DType::f16, DType::bf16, DType::u8, DType::u32, DType::i32, DType::i64}) {
    const auto name = mxfp4::io::safetensors_dtype_name(d);
    EXPECT_EQ(mxfp4::io::dtype_from_safetensors(name), d) << name;
    EXPECT_EQ(mxfp4::io::safetensors_dtype_size(name), mxfp4::dtype_size(d)) << name;
  }
  EXPECT_EQ(mxfp4::io::safetensors_dtype_name(DType::bf16), "BF16");
  EXPECT_FALSE(mxfp4::io::dtype_from_safetensors("F64").has_value());
  EXPECT_FALSE(mxfp4::io::dtype_from_safetensors("nope").has_value());
}

TEST(safetensors_dtype, NbytesIsOverflowChecked) {
  EXPECT_EQ(mxfp4::io::safetensors_nbytes("F32", {2, 3}), 24u);
  EXPECT_EQ(mxfp4::io::safetensors_nbytes("F32", {}), 4u);  // a scalar
  EXPECT_EQ(mxfp4::io::safetensors_nbytes("F64", {0, 7}), 0u);
  EXPECT_EQ(mxfp4::io::safetensors_nbytes("F4", {3, 4}), 6u);
  EXPECT_THROW(mxfp4::io::safetensors_nbytes("F4", {3}), mxfp4::FormatError);
  EXPECT_THROW(mxfp4::io::safetensors_nbytes("F32", {-1}), mxfp4::FormatError);
  EXPECT_THROW(mxfp4::io::safetensors_nbytes("F32", {std::int64_t{1} << 32, std::int64_t{1} << 32}),
               mxfp4::FormatError);
  EXPECT_THROW(mxfp4::io::safetensors_nbytes("F32", {std::int64_t{1} << 61}), mxfp4::FormatError);
  EXPECT_EQ(mxfp4::io::safetensors_nbytes("U8", {std::int64_t{1} << 61}), std::uint64_t{1} << 61);
  EXPECT_THROW(mxfp4::io::safetensors_nbytes("X", {1}), mxfp4::FormatError);
}

// ---- round trips --------------------------------------------------------------------------------

TEST(safetensors_round_trip, EveryDtype) {
  TempDir dir;
  const std::vector<Shape> shapes = {{3, 4}, {6}, {}, {2, 0, 5}, {1, 2, 2, 2}};
  std::vector<Bytes> storage;
  std::vector<SafetensorsItem> items;
  std::uint32_t seed = 1;
  for (const auto& dtype : kAllDtypes) {
    for (const Shape& shape : shapes) {
      if (dtype == "F4" && shape.empty()) continue;  // one F4 element is half a byte
      storage.push_back(pattern(mxfp4::io::safetensors_nbytes(dtype, shape), seed++));
    }
  }
  std::size_t k = 0;
  for (const auto& dtype : kAllDtypes) {
    for (const Shape& shape : shapes) {
      if (dtype == "F4" && shape.empty()) continue;
      items.push_back(
          {dtype + "." + std::to_string(shape.size()) + "d", dtype, shape, storage[k++]});
    }
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode ✓"}};
  const std::string path = dir.file("all.safetensors");
  const std::uint64_t size = write_safetensors(path, items, metadata);
  EXPECT_EQ(size, fs::file_size(path));

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata(), metadata);
  EXPECT_EQ(file.source(), path);
  EXPECT_EQ(file.file_size(), size);
  ASSERT_EQ(file.entries().size(), items.size());
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const auto& e = file.entries()[i];  // in file order, which is the order written
    EXPECT_EQ(e.name, items[i].name);
    EXPECT_EQ(e.dtype, items[i].dtype);
    EXPECT_EQ(e.shape, items[i].shape);
    EXPECT_EQ(e.begin, total);
    const auto got = file.bytes(e);
    ASSERT_EQ(got.size(), items[i].data.size()) << e.name;
    EXPECT_TRUE(std::equal(got.begin(), got.end(), items[i].data.begin())) << e.name;
    EXPECT_EQ(file.find(e.name), &e);
    total += got.size();
  }
  EXPECT_EQ(file.data_size(), total);
  EXPECT_EQ(file.find("missing"), nullptr);
  // The data buffer starts 8-byte aligned.
  const Bytes raw = read_all(path);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + header_len + total);
}

TEST(safetensors_round_trip, TensorsComeBackAsTensors) {
  TempDir dir;
  const auto f = mxfp4::Tensor::from_vector<float>({1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 7.0f}, {2, 3});
  const auto h = mxfp4::Tensor::from_vector<mxfp4::bf16_t>({{0x3F80}, {0xC000}}, {2});
  const auto i = mxfp4::Tensor::from_vector<std::int64_t>({-5, 1LL << 40}, {1, 2});
  const auto u = mxfp4::Tensor::from_vector<std::uint8_t>({0, 255, 7}, {3});
  const std::string path = dir.file("t.safetensors");
  write_safetensors(path,
                    {mxfp4::io::safetensors_item("f", f), mxfp4::io::safetensors_item("h", h),
                     mxfp4::io::safetensors_item("i", i), mxfp4::io::safetensors_item("u", u)});
  const auto file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.metadata().empty());
  for (const auto& [name, t] :
       std::vector<std::pair<std::string, mxfp4::Tensor>>{{"f", f}, {"h", h}, {"i", i}, {"u", u}}) {
    const mxfp4::Tensor back = file.tensor(name);
    EXPECT_EQ(back.dtype(), t.dtype()) << name;
    EXPECT_EQ(back.shape(), t.shape()) << name;
    ASSERT_EQ(back.nbytes(), t.nbytes()) << name;
    EXPECT_EQ(std::memcmp(back.data(), t.data(), t.nbytes()), 0) << name;
  }
  EXPECT_EQ(file.tensor("f").data_as<float>()[2], 3.25f);
  EXPECT_THROW(file.tensor("nope"), mxfp4::InvalidArgument);
}

TEST(safetensors_round_trip, TensorWithoutDTypeIsRefused) {
  const Bytes b =
      make_file(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", Bytes(8, 0));
  const auto file = SafetensorsFile::parse(b, "mem");
  EXPECT_EQ(file.entries().at(0).dtype, "F64");
  EXPECT_THROW(file.tensor("x"), mxfp4::DTypeMismatch);
}

TEST(safetensors_round_trip, EmptyFileAndZeroSizeTensors) {
  TempDir dir;
  const std::string path = dir.file("empty.safetensors");
  EXPECT_EQ(write_safetensors(path, {}), 16u);  // "{}" padded to 8 bytes
  EXPECT_EQ(read_all(path), make_file("{}      "));
  EXPECT_TRUE(SafetensorsFile::open(path).entries().empty());

  // Zero-size tensors may share an offset with each other and with the next tensor.
  const Bytes b = make_file(R"({"z2":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                            R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                            R"("z1":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]}})",
                            {1, 2, 3, 4});
  const auto file = SafetensorsFile::parse(b, "mem");
  ASSERT_EQ(file.entries().size(), 3u);
  EXPECT_EQ(file.entries()[0].name, "z1");  // sorted by offset, not by header order
  EXPECT_EQ(file.entries()[1].name, "a");
  EXPECT_EQ(file.entries()[2].name, "z2");
  EXPECT_TRUE(file.bytes(file.entries()[2]).empty());
}

// ---- the exact bytes ----------------------------------------------------------------------------

TEST(safetensors_golden, HeaderBytesAreExact) {
  TempDir dir;
  const std::string path = dir.file("golden.safetensors");
  const Bytes a = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0};  // f32 1.0, -2.0
  const Bytes b = {1, 2, 3};
  write_safetensors(path, {{"a", "F32", {2}, a}, {"b", "U8", {3}, b}}, {{"k", "v"}});

  // 132 bytes of JSON + 4 spaces = 136 = 0x88: the data buffer starts at 144, a multiple of 8.
  const std::string header = R"({"__metadata__":{"k":"v"},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}})"
                             "    ";
  Bytes expected = {0x88, 0, 0, 0, 0, 0, 0, 0};
  expected.insert(expected.end(), header.begin(), header.end());
  expected.insert(expected.end(), a.begin(), a.end());
  expected.insert(expected.end(), b.begin(), b.end());
  ASSERT_EQ(expected.size(), 155u);
  EXPECT_EQ(read_all(path), expected);

  // And the reader takes the hand-made bytes.
  const auto file = SafetensorsFile::parse(expected, "golden");
  ASSERT_EQ(file.entries().size(), 2u);
  EXPECT_EQ(file.tensor("a").data_as<float>()[1], -2.0f);
  EXPECT_EQ(file.metadata().at("k"), "v");
}

// ---- corrupt files ------------------------------------------------------------------------------

const std::string kGoodEntry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

TEST(safetensors_corrupt, TooShortForTheLength) {
  expect_format_error({}, {"0 bytes", "shorter than the 8-byte"});
  expect_format_error({1, 2, 3}, {"3 bytes", "shorter than the 8-byte"});
  expect_format_error(Bytes(7, 0), {"7 bytes"});
}

TEST(safetensors_corrupt, HeaderLengthLies) {
  expect_format_error(make_file("{" + kGoodEntry + "}", Bytes(8), 1000),
                      {"header length 1000", "larger than"});
  // One byte too many: the data buffer is then one byte short.
  const std::string h = "{" + kGoodEntry + "}";
  expect_format_error(make_file(h, {}, h.size() + 1), {"larger than"});
  expect_format_error(make_file(h, {}, std::numeric_limits<std::uint64_t>::max()),
                      {"exceeds the limit"});
}

TEST(safetensors_corrupt, HeaderOverTheCap) {
  expect_format_error(make_file("{}", {}, mxfp4::io::kMaxSafetensorsHeader + 1),
                      {"exceeds the limit", "header too large"});
}

TEST(safetensors_corrupt, InvalidJson) {
  expect_format_error(make_file(R"({"t":)"), {"not valid JSON"});
  expect_format_error(make_file(""), {"not valid JSON"});
  expect_format_error(make_file("{} x"), {"not valid JSON"});  // trailing garbage
  expect_format_error(make_file(std::string("{\"a\xff\":1}")), {"not valid JSON"});  // bad UTF-8
  expect_format_error(make_file(std::string("{}\0\0", 4)), {"not valid JSON", "NUL byte"});
  // nlohmann stops at a NUL: what follows it must not be ignored.
  expect_format_error(make_file(std::string("{}\0 garbage", 11)), {"NUL byte at header offset 2"});
}

TEST(safetensors_corrupt, JsonNotAnObject) {
  expect_format_error(make_file("[1,2]"), {"must be an object", "array"});
  expect_format_error(make_file("42"), {"must be an object"});
  expect_format_error(make_file("null"), {"must be an object"});
}

TEST(safetensors_corrupt, EntryNotAnObject) {
  expect_format_error(make_file(R"({"t":3})"), {"tensor 't'", "must be an object"});
}

TEST(safetensors_corrupt, MissingFields) {
  expect_format_error(make_file(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
                      {"tensor 't'", "no 'dtype'"});
  expect_format_error(make_file(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", Bytes(8)),
                      {"tensor 't'", "no 'shape'"});
  expect_format_error(make_file(R"({"t":{"dtype":"F32","shape":[2]}})", Bytes(8)),
                      {"tensor 't'", "no 'data_offsets'"});
}

TEST(safetensors_corrupt, UnexpectedField) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", Bytes(8)),
      {"tensor 't'", "unexpected key 'extra'"});
}

TEST(safetensors_corrupt, BadDtype) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "unknown dtype 'F128'"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "unknown dtype 'f32'"});
  expect_format_error(make_file(R"({"t":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
                      {"tensor 't'", "dtype must be a string"});
}

TEST(safetensors_corrupt, BadShape) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "negative"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "not a non-negative integer"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "not a non-negative integer"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "shape must be an array"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'"});
}

TEST(safetensors_corrupt, BadOffsets) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", Bytes(8)),
      {"tensor 't'", "[begin, end]"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", Bytes(8)),
      {"tensor 't'", "[begin, end]"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":{"a":0}}})", Bytes(8)),
      {"tensor 't'", "[begin, end]"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", Bytes(8)),
      {"tensor 't'", "negative"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", Bytes(8)),
      {"tensor 't'", "not a non-negative integer"});
}

TEST(safetensors_corrupt, OffsetsOutOfOrder) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", Bytes(8)),
      {"tensor 't'", "out of order"});
}

TEST(safetensors_corrupt, OffsetsOverlap) {
  expect_format_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                Bytes(12)),
                      {"tensor 'b'", "overlap tensor 'a'"});
  // Two tensors on the same bytes.
  expect_format_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                R"("b":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})",
                                Bytes(8)),
                      {"overlap"});
}

TEST(safetensors_corrupt, OffsetsWithGap) {
  expect_format_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                Bytes(12)),
                      {"tensor 'b'", "gap", "'a' ends at 4"});
  expect_format_error(
      make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", Bytes(8)),
      {"tensor 'a'", "gap", "data starts at 0"});
}

TEST(safetensors_corrupt, OffsetsPastTheEnd) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", Bytes(8)),
      {"tensor 't'", "past the end of the 8-byte data buffer"});
  expect_format_error(
      make_file(
          R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})",
          Bytes(1)),
      {"tensor 't'"});
}

TEST(safetensors_corrupt, OffsetsNotCoveringTheBuffer) {
  expect_format_error(make_file("{" + kGoodEntry + "}", Bytes(12)),
                      {"cover 8 bytes", "holds 12", "4 bytes belong to no tensor"});
  expect_format_error(make_file("{}", Bytes(1)), {"cover 0 bytes"});
}

TEST(safetensors_corrupt, SpanDisagreesWithShape) {
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", Bytes(8)),
      {"tensor 't'", "span 8 bytes", "F32 [3] needs 12"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,4]}})", Bytes(4)),
      {"tensor 't'", "needs 8"});
  // F4: two elements per byte, so [4] is 2 bytes and an odd count has no size.
  EXPECT_NO_THROW(SafetensorsFile::parse(
      make_file(R"({"t":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", Bytes(2)), "f4"));
  expect_format_error(
      make_file(R"({"t":{"dtype":"F4","shape":[4],"data_offsets":[0,4]}})", Bytes(4)),
      {"tensor 't'", "needs 2"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", Bytes(2)),
      {"tensor 't'", "must be even"});
}

TEST(safetensors_corrupt, HugeDimsOverflow) {
  // 2^32 * 2^32 elements wraps to 0 in u64: must not be taken as an empty tensor.
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
      {"tensor 't'", "more elements than int64"});
  // 2^62 elements of 4 bytes wraps to 0 bytes.
  expect_format_error(
      make_file(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
      {"tensor 't'", "more bytes than int64"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})"),
      {"tensor 't'", "larger than int64"});
  expect_format_error(
      make_file(R"({"t":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}})"),
      {"tensor 't'"});
  // A zero dim anywhere makes an empty tensor, however large the others.
  EXPECT_NO_THROW(SafetensorsFile::parse(
      make_file(R"({"t":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[0,0]}})"),
      "zero"));
}

TEST(safetensors_corrupt, DuplicateNames) {
  expect_format_error(make_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                                R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                Bytes(2)),
                      {"tensor 'a'", "more than once"});
  expect_format_error(
      make_file(R"({"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})", Bytes(1)),
      {"key 'dtype'", "more than once", "'a'"});
  expect_format_error(make_file(R"({"__metadata__":{},"__metadata__":{}})"), {"more than once"});
}

TEST(safetensors_corrupt, MetadataNotStringToString) {
  expect_format_error(make_file(R"({"__metadata__":{"k":1}})"), {"__metadata__['k']", "string"});
  expect_format_error(make_file(R"({"__metadata__":{"k":null}})"), {"__metadata__['k']"});
  expect_format_error(make_file(R"({"__metadata__":{"k":{"x":"y"}}})"), {"__metadata__['k']"});
  expect_format_error(make_file(R"({"__metadata__":["k","v"]})"),
                      {"__metadata__ must be an object"});
  expect_format_error(make_file(R"({"__metadata__":"k"})"), {"__metadata__ must be an object"});
  EXPECT_EQ(
      SafetensorsFile::parse(make_file(R"({"__metadata__":{"k":"v"}})"), "m").metadata().at("k"),
      "v");
}

TEST(safetensors_corrupt, NestingTooDeep) {
  std::string deep(100000, '[');
  expect_format_error(make_file(R"({"t":)" + deep), {"nests deeper"});
}

TEST(safetensors_corrupt, EveryPrefixOfAValidFileIsRefusedCleanly) {
  const Bytes good = make_file(
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      pattern(8, 3));
  ASSERT_NO_THROW(SafetensorsFile::parse(good, "good"));
  for (std::size_t n = 0; n < good.size(); ++n) {
    EXPECT_THROW(SafetensorsFile::parse(prefix_of(good, n), "cut"), mxfp4::FormatError) << n;
  }
}

// ---- opening files ------------------------------------------------------------------------------

TEST(safetensors_open, MissingFileAndDirectoryAreIoErrors) {
  TempDir dir;
  try {
    SafetensorsFile::open(dir.file("absent.safetensors"));
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("absent.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SafetensorsFile::open(dir.path().string()), mxfp4::IoError);
}

TEST(safetensors_open, CorruptFileOnDiskNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("corrupt.safetensors");
  write_all(path, make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", Bytes(8)));
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::FormatError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find("tensor 'w'"), std::string::npos) << m;
  }
}

// ---- writing ------------------------------------------------------------------------------------

TEST(safetensors_write, InvalidItemsAreRefusedBeforeTouchingTheDisk) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  const Bytes four(4, 1);
  const std::vector<std::vector<SafetensorsItem>> bad = {
      {{"a", "F32", {1}, four}, {"a", "F32", {1}, four}},  // duplicate
      {{"__metadata__", "F32", {1}, four}},                // reserved name
      {{"a", "F32", {2}, four}},                           // 4 bytes for 8
      {{"a", "F99", {1}, four}},                           // unknown dtype
      {{"a", "F32", {-1}, four}},                          // negative dim
      {{"a", "F4", {3}, Bytes(2)}},                        // odd F4 count
      {{std::string("bad\xff"), "F32", {1}, four}},        // not UTF-8
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    EXPECT_THROW(write_safetensors(path, bad[i]), mxfp4::InvalidArgument) << i;
    EXPECT_TRUE(dir.listing().empty()) << i;
  }
  EXPECT_THROW(write_safetensors(path, {}, {{"k", std::string("\xc3")}}), mxfp4::InvalidArgument);
  EXPECT_TRUE(dir.listing().empty());
}

TEST(safetensors_write, MissingDirectoryIsAnIoError) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/out.safetensors");
  try {
    write_safetensors(path, {{"a", "U8", {1}, Bytes{7}}});
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::IoError& e) {
    EXPECT_EQ(e.code(), mxfp4::ErrorCode::io_error);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_TRUE(dir.listing().empty());
}

TEST(safetensors_write, ReplacesAnExistingFile) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"old", "U8", {2}, Bytes{1, 2}}});
  write_safetensors(path, {{"new", "U8", {3}, Bytes{3, 4, 5}}});
  const auto file = SafetensorsFile::open(path);
  ASSERT_EQ(file.entries().size(), 1u);
  EXPECT_EQ(file.entries()[0].name, "new");
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.safetensors"});
}

TEST(safetensors_write, FailedWriteLeavesTheTargetUntouched) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"keep", "U8", {2}, Bytes{1, 2}}});
  const Bytes before = read_all(path);
  // Inconsistent byte size: refused before anything happens.
  EXPECT_THROW(write_safetensors(path, {{"x", "F32", {2}, Bytes(5)}}), mxfp4::InvalidArgument);
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.safetensors"});
}

TEST(safetensors_write, FailedRenameRemovesTheTemporary) {
  TempDir dir;
  // The target is a non-empty directory: the temporary is written, then rename fails.
  const fs::path target = dir.path() / "target";
  fs::create_directories(target / "inside");
  try {
    write_safetensors(target.string(), {{"a", "U8", {3}, Bytes{1, 2, 3}}});
    ADD_FAILURE() << "no error";
  } catch (const mxfp4::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("rename"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"target"});
  EXPECT_TRUE(fs::is_directory(target / "inside"));
}

TEST(safetensors_write, ShortWriteRemovesTheTemporaryAndKeepsTheTarget) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"keep", "U8", {2}, Bytes{1, 2}}});
  const Bytes before = read_all(path);
  const Bytes big(3u << 20, 0xAB);
  bool threw = false;
  try {
    const FileSizeLimit limit(4096);
    write_safetensors(path, {{"big", "U8", {static_cast<std::int64_t>(big.size())}, big}});
  } catch (const mxfp4::IoError& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("cannot write"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(threw);
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.safetensors"});
}

TEST(safetensors_write, ReadOnlyDirectoryKeepsTheTarget) {
  if (::geteuid() == 0) {
    GTEST_SKIP() << "running as root, which may write into a read-only directory; the short-write "
                    "and failed-rename tests cover the same cleanup";
  }
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  write_safetensors(path, {{"keep", "U8", {2}, Bytes{1, 2}}});
  const Bytes before = read_all(path);
  fs::permissions(dir.path(), fs::perms::owner_read | fs::perms::owner_exec);
  EXPECT_THROW(write_safetensors(path, {{"new", "U8", {1}, Bytes{9}}}), mxfp4::IoError);
  fs::permissions(dir.path(), fs::perms::owner_all);
  EXPECT_EQ(read_all(path), before);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"out.safetensors"});
}

}  // namespace
