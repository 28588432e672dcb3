#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace sshtail {

/// Identity of a file: device and inode. Plain value type.
struct FileId {
  uint64_t dev = 0;
  uint64_t ino = 0;

  bool valid() const { return dev != 0 || ino != 0; }
  friend bool operator==(const FileId&, const FileId&) = default;
};

/// A run of complete lines from one source, the unit that crosses the queue.
/// `data` holds the lines, each ended by '\n' (a trailing '\r' already
/// removed). Owned by one thread at a time: the producer fills it, the queue
/// hands it over, one consumer reads it.
struct LineBatch {
  uint32_t source = 0;      ///< index of the source in the pipeline
  uint64_t seq = 0;         ///< per-source sequence number, from 1
  std::string data;         ///< complete lines, '\n'-terminated
  uint32_t lines = 0;       ///< number of lines in `data`
  uint64_t raw_bytes = 0;   ///< bytes read from the source for these lines
  uint32_t too_long = 0;    ///< lines skipped because of --max-line-bytes
  FileId file;              ///< file the lines came from (if known)
  uint64_t end_offset = 0;  ///< offset just past the last complete line
  bool has_position = false;
};

using BatchPtr = std::unique_ptr<LineBatch>;

}  // namespace sshtail
