// An output file that appears at its path complete or not at all: bytes go to a temporary file in
// the same folder, which commit() flushes, syncs and renames over the target (finish() and
// publish() are its two halves, for writers of several files). Destroying an AtomicFile that was
// not published removes the temporary, so a failure (an exception anywhere between open and
// commit, a full disk) leaves an existing target untouched. The one temporary-file mechanism of
// the library's writers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mxfp4::io {

class AtomicFile {
 public:
  // Creates the temporary beside `path` (O_EXCL, a name no other writer picks); throws IoError
  // naming `what` (e.g. "write_gguf 'x'") when it cannot, or when `path` exists and is neither a
  // regular file nor a folder: a device, pipe or socket is never replaced by a file.
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
  // The target.
  const std::string& path() const { return path_; }
  // Flushes, fsyncs and closes the temporary, which keeps its temporary name; throws IoError.
  // Writers of several files finish every one before publishing any.
  void finish();
  // Renames the finished temporary over the target and syncs the folder; throws IoError.
  void publish();
  // finish() then publish().
  void commit();
  // Removes the temporary now, as destruction would; nothing can be written after it.
  void discard() noexcept;

 private:
  void flush();
  void write_all(const std::uint8_t* p, std::size_t n);

  std::string path_;
  std::string what_;
  std::string tmp_;
  int fd_ = -1;
  bool finished_ = false;
  bool published_ = false;
  std::uint64_t size_ = 0;
  std::vector<std::uint8_t> buffer_;
};

}  // namespace mxfp4::io
