#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>

#include "io/posix_file.hpp"
#include "mxfp4/error.hpp"

namespace mxfp4::io {

namespace {

constexpr std::size_t kBuffer = std::size_t{1} << 20;

// A name beside `path` that no other writer (thread or process) picks.
std::string temporary_name(const std::string& path, int attempt) {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t x = static_cast<std::uint64_t>(::getpid()) * 0x9E3779B97F4A7C15ull;
  x ^= static_cast<std::uint64_t>(
      std::chrono::high_resolution_clock::now().time_since_epoch().count());
  x ^= (counter.fetch_add(1) + static_cast<std::uint64_t>(attempt)) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  static constexpr char kAlnum[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string suffix;
  for (int i = 0; i < 8; ++i) {
    suffix += kAlnum[x % 36];
    x /= 36;
  }
  return path + ".tmp." + suffix;
}

void refuse_special_target(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
    throw IoError(what + ": exists and is not a regular file; refusing to replace it");
  }
}

int create_temporary_beside(const std::string& path, std::string& tmp) {
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    tmp = temporary_name(path, attempt);
    // 0666 lets the umask decide the final permissions, as for any newly created file.
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  return fd;
}

}  // namespace

AtomicFile::AtomicFile(std::string path, std::string what)
    : path_(std::move(path)), what_(std::move(what)) {
  refuse_special_target(path_, what_);
  fd_ = create_temporary_beside(path_, tmp_);
  if (fd_ < 0) {
    throw IoError(what_ + ": cannot create a temporary file beside it ('" + tmp_ +
                  "'): " + os_error(errno));
  }
  buffer_.reserve(kBuffer);
}

AtomicFile::~AtomicFile() {
  discard();
}

void AtomicFile::discard() noexcept {
  if (published_ || tmp_.empty()) return;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  tmp_.clear();
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (fd_ < 0) throw IoError(what_ + ": write after the file was finished or discarded");
  const auto* p = static_cast<const std::uint8_t*>(data);
  size_ += n;
  if (buffer_.size() + n <= kBuffer) {
    buffer_.insert(buffer_.end(), p, p + n);
    return;
  }
  flush();
  if (n >= kBuffer) {
    write_all(p, n);
  } else {
    buffer_.insert(buffer_.end(), p, p + n);
  }
}

void AtomicFile::write_zeros(std::size_t n) {
  static constexpr std::uint8_t kZeros[256] = {};
  while (n > 0) {
    const std::size_t k = n < sizeof kZeros ? n : sizeof kZeros;
    write(kZeros, k);
    n -= k;
  }
}

void AtomicFile::flush() {
  write_all(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFile::write_all(const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(what_ + ": cannot write '" + tmp_ + "': " + os_error(errno));
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void AtomicFile::finish() {
  if (finished_) throw IoError(what_ + ": finished twice");
  if (fd_ < 0) throw IoError(what_ + ": the temporary was discarded");
  flush();
  if (::fsync(fd_) != 0) throw IoError(what_ + ": fsync failed: " + os_error(errno));
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw IoError(what_ + ": close failed: " + os_error(errno));
  finished_ = true;
}

void AtomicFile::publish() {
  if (!finished_ || tmp_.empty()) throw IoError(what_ + ": published before it was finished");
  if (published_) throw IoError(what_ + ": published twice");
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    throw IoError(what_ + ": cannot rename the temporary '" + tmp_ + "' to it: " + os_error(errno));
  }
  published_ = true;
  // Make the rename itself durable; the data is already safe, so a failure here is not an error.
  std::filesystem::path dir = std::filesystem::path(path_).parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void AtomicFile::commit() {
  finish();
  publish();
}

}  // namespace mxfp4::io
