#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sshtail/batch.h"

namespace sshtail {

/// Where a source is in one file it reads.
struct FilePosition {
  FileId file;
  uint64_t offset = 0;
  bool current = true;  ///< false: a rotated file still being drained
  /// Up to kTailBytes raw bytes just before `offset` (empty: unknown). On a
  /// resume they must still be there, else the file was truncated or
  /// replaced in place (copytruncate) and is read again from 0.
  std::string tail;
  // Long enough that lines of one template (same agent, same timings) do
  // not match by chance when an inode number is reused.
  static constexpr size_t kTailBytes = 64;
  friend bool operator==(const FilePosition&, const FilePosition&) = default;
};

using PositionSet = std::vector<FilePosition>;

/// Lower-case hex of `bytes`, and back (false if `hex` is malformed).
std::string HexEncode(std::string_view bytes);
bool HexDecode(std::string_view hex, std::string* out);

/// Tracks which position of a source has been fully consumed.
///
/// The producer records the position after each batch it pushes; consumers
/// report finished batches, possibly out of order. Committed() is the
/// position after the longest prefix of finished batches. Thread-safe.
class PositionTracker {
 public:
  /// Producer: batch `seq` was pushed; `after` holds once it is consumed.
  void Pushed(uint64_t seq, PositionSet after);
  /// Producer: the position changed without a batch (e.g. truncation).
  void Moved(PositionSet now);
  /// Consumer: batch `seq` is fully counted.
  void Done(uint64_t seq);
  /// Consumed position; empty if nothing is known yet.
  PositionSet Committed() const;
  /// Producer at start: what a previous run committed, saved at
  /// `saved_at_ns` (the file's mtime, unix ns; 0: unknown).
  void Restore(PositionSet restored, int64_t saved_at_ns = 0);
  /// When the restored positions were saved (0: unknown or none).
  int64_t RestoredAt() const;

 private:
  struct Entry {
    uint64_t seq;  // 0 for position-only entries
    bool done;
    PositionSet after;
  };
  void AdvanceLocked();

  mutable std::mutex mutex_;
  std::deque<Entry> pending_;
  PositionSet committed_;
  int64_t restored_at_ns_ = 0;
};

/// Replaces `path` with `text` atomically: PATH.tmp, fsync, rename, fsync
/// of the directory. False with an errno-style message in `error`.
bool WriteFileAtomically(const std::string& path, std::string_view text,
                         std::string* error);

/// The positions file: source URL -> positions. Written atomically (temp
/// file, fsync, rename).
class PositionsFile {
 public:
  explicit PositionsFile(std::string path) : path_(std::move(path)) {}

  /// Reads the file; a missing file is empty. Throws std::runtime_error if
  /// it exists but cannot be parsed.
  std::map<std::string, PositionSet> Load() const;
  /// Returns false (with errno-style message in `error`) on failure.
  bool Save(const std::map<std::string, PositionSet>& positions,
            std::string* error) const;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace sshtail
