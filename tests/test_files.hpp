// What the file tests share: a fresh folder per test, whole files as bytes, little-endian fields
// for hand-built files, a file size limit that makes writes fail half way (as a full disk does),
// and comparisons of what a file gave back with what was written.
#pragma once

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "mxfp4/tensor.hpp"
#include "mxfp4/weight.hpp"

namespace mxfp4::test {

using Bytes = std::vector<std::uint8_t>;

// A fresh folder for the running test, removed with all it holds (read-only or not) at the end.
// Its name holds the test's name and the process id: CTest runs tests in parallel processes.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("mxfp4_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }

  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }
  // The names in the folder (or in its subfolder `sub`), sorted.
  std::vector<std::string> listing(const std::filesystem::path& sub = {}) const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_ / sub))
      names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::filesystem::path path_;
};

// The whole file; empty when it cannot be read.
inline Bytes read_all(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

inline std::string read_text(const std::filesystem::path& path) {
  const Bytes b = read_all(path);
  return std::string(b.begin(), b.end());
}

inline void write_all(const std::filesystem::path& path, const Bytes& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// The first `n` bytes of `bytes`: a file cut short.
inline Bytes prefix_of(const Bytes& bytes, std::size_t n) {
  return Bytes(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
}

// `n` deterministic filler bytes in [lo, hi].
inline Bytes pattern(std::size_t n, std::uint32_t seed, std::uint8_t lo = 0,
                     std::uint8_t hi = 255) {
  Bytes b(n);
  std::uint32_t x = seed * 2654435761u + 1u;
  for (auto& v : b) {
    x = x * 1664525u + 1013904223u;
    v = static_cast<std::uint8_t>(lo + (x >> 24) % (static_cast<unsigned>(hi - lo) + 1u));
  }
  return b;
}

// Appends the `width` low bytes of `v`, least significant first.
inline void append_le(Bytes& b, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i)
    b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// Little-endian bytes built field by field, as the formats' specs list them; a format's builder
// derives from it (Self) to add its own composite fields.
template <typename Self>
struct LittleEndianBuilder {
  Bytes b;
  Self& u8(std::uint8_t v) {
    b.push_back(v);
    return self();
  }
  Self& u32(std::uint32_t v) {
    append_le(b, v, 4);
    return self();
  }
  Self& u64(std::uint64_t v) {
    append_le(b, v, 8);
    return self();
  }
  Self& raw(const Bytes& x) {
    b.insert(b.end(), x.begin(), x.end());
    return self();
  }

 private:
  Self& self() { return static_cast<Self&>(*this); }
};

// While alive, a file may grow to `bytes` only: write() past it fails with EFBIG half way, as on
// a full disk (root too), and SIGXFSZ is ignored. Restores the old limit and handler.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    if (::getrlimit(RLIMIT_FSIZE, &old_) != 0) throw std::runtime_error("getrlimit failed");
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = old_;
    limit.rlim_cur = bytes;
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) {
      std::signal(SIGXFSZ, old_handler_);
      throw std::runtime_error("setrlimit failed");
    }
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_{};
  void (*old_handler_)(int) = nullptr;
};

// The bytes a CPU tensor holds.
inline Bytes bytes_of(const Tensor& t) {
  const auto* p = static_cast<const std::uint8_t*>(t.data());
  return Bytes(p, p + t.nbytes());
}

// A weight quantized from normal(0, stddev) values (std::mt19937 from `seed`), with a bias of
// `bias_dtype` (drawn after the weight) when one is given.
inline Mxfp4Weight random_weight(const Shape& shape, std::uint32_t seed,
                                 std::optional<DType> bias_dtype, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  for (float& x : v)
    x = dist(rng);
  std::optional<Tensor> bias;
  if (bias_dtype) {
    const Shape bshape(shape.begin(), shape.end() - 1);
    std::vector<float> b(static_cast<std::size_t>(shape_numel(bshape)));
    for (float& x : b)
      x = dist(rng);
    bias = Tensor::from_vector(b, bshape).to(*bias_dtype);
  }
  return Mxfp4Weight::quantize(Tensor::from_vector(v, shape), bias);
}

// Same parts, shapes, dtypes and bytes; `what` names the pair in failures.
inline void expect_same_weight(const Mxfp4Weight& a, const Mxfp4Weight& b,
                               const std::string& what = {}) {
  EXPECT_EQ(a.blocks().shape(), b.blocks().shape()) << what;
  EXPECT_EQ(a.scales().shape(), b.scales().shape()) << what;
  EXPECT_EQ(bytes_of(a.blocks()), bytes_of(b.blocks())) << what;
  EXPECT_EQ(bytes_of(a.scales()), bytes_of(b.scales())) << what;
  ASSERT_EQ(a.bias().has_value(), b.bias().has_value()) << what;
  if (a.bias()) {
    EXPECT_EQ(a.bias()->dtype(), b.bias()->dtype()) << what;
    EXPECT_EQ(a.bias()->shape(), b.bias()->shape()) << what;
    EXPECT_EQ(bytes_of(*a.bias()), bytes_of(*b.bias())) << what;
  }
}

}  // namespace mxfp4::test
