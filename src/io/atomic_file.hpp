// An output file that appears at its path complete or not at all: bytes go to a temporary file in
// the same folder, which commit() flushes, syncs and renames over the target. Destroying an
// AtomicFile that was not committed removes the temporary, so a failure (an exception anywhere
// between open and commit, a full disk) leaves an existing target untouched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mxfp4::io {

// The pieces every atomic writer here shares (AtomicFile, the safetensors writer and its index):
// Throws IoError (prefixed by `what`) when `path` exists and is neither a regular file nor a
// folder: a device, pipe or socket is never replaced by a file (e.g. /dev/null as root).
void refuse_special_target(const std::string& path, const std::string& what);
// Creates a new temporary file beside `path` (O_EXCL, a name no other writer picks) and returns
// its descriptor, its name in `tmp`; -1 with errno set when it cannot.
int create_temporary_beside(const std::string& path, std::string& tmp);

class AtomicFile {
 public:
  // Creates the temporary beside `path`; throws IoError naming `what` (e.g. "write_gguf 'x'")
  // when it cannot, or when `path` is a device, pipe or socket (refuse_special_target).
  AtomicFile(std::string path, std::string what);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // Buffered append; throws IoError.
  void write(const void* data, std::size_t n);
  // `n` zero bytes.
  void write_zeros(std::size_t n);
  // Bytes written so far.
  std::uint64_t size() const { return size_; }
  // Flushes, fsyncs, closes and renames the temporary over the target; throws IoError.
  void commit();

 private:
  void flush();
  void write_all(const std::uint8_t* p, std::size_t n);

  std::string path_;
  std::string what_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
  std::uint64_t size_ = 0;
  std::vector<std::uint8_t> buffer_;
};

}  // namespace mxfp4::io
