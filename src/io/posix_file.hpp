// The POSIX file pieces the readers and writers share: errno as text, a descriptor closed on scope
// exit, and a whole file memory-mapped.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "mxfp4/error.hpp"

namespace mxfp4::io {

inline std::string os_error(int err) {
  return std::system_category().message(err);
}

// Closes a file descriptor on scope exit.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// All of a regular file, mapped private; `mapping` unmaps it when the last owner lets go.
struct FileMap {
  std::shared_ptr<void> mapping;  // null for an empty file (mmap refuses those)
  std::size_t size = 0;
};

// Maps the regular file `path` read-only, or `writable`: then pages written through the mapping
// are copied, never reaching the file. Throws IoError starting with `prefix` (e.g. "GGUF file
// 'x': ") when it cannot be opened, is not a regular file, or cannot be mapped.
inline FileMap map_file(const std::string& path, const std::string& prefix, bool writable) {
  const FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(prefix + "cannot open: " + os_error(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw IoError(prefix + "cannot stat: " + os_error(errno));
  if (!S_ISREG(st.st_mode)) throw IoError(prefix + "is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size > std::numeric_limits<std::size_t>::max()) {
    throw IoError(prefix + "is too large (" + std::to_string(size) + " bytes) to map");
  }
  FileMap m;
  if (size == 0) return m;
  m.size = static_cast<std::size_t>(size);
  const int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
  void* p = ::mmap(nullptr, m.size, prot, MAP_PRIVATE, fd.get(), 0);
  if (p == MAP_FAILED) {
    throw IoError(prefix + "cannot map its " + std::to_string(size) + " bytes: " + os_error(errno));
  }
  m.mapping = std::shared_ptr<void>(p, [n = m.size](void* q) { ::munmap(q, n); });
  return m;
}

}  // namespace mxfp4::io
