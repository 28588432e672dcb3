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

/// FNV-1a 64 of `s`: the checksum of the positions and state files.
uint64_t Fnv1a(std::string_view s);
/// "<prefix><16 hex digits of Fnv1a(body)>\n": a file's last line.
std::string ChecksumLine(std::string_view prefix, std::string_view body);

/// Replaces `path` with `text` atomically: PATH.tmp (a stale one is
/// removed first; opened O_CREAT|O_EXCL|O_NOFOLLOW, so a symlink there is
/// never followed), fsync, rename, fsync of the directory. With
/// `keep_previous`, the file being replaced stays as PATH.prev: it is
/// hard-linked to PATH.prev.tmp and renamed over PATH.prev before the new
/// file is renamed over PATH, so at every instant PATH and PATH.prev are
/// complete files. Keeping PATH.prev never fails the save: where it
/// cannot be done (no hard links), PATH.prev stays the older generation.
/// False with an errno-style message in `error`.
bool WriteFileAtomically(const std::string& path, std::string_view text,
                         std::string* error, bool keep_previous = false);

/// The positions file: source URL -> positions, YAML with a checksum
/// comment as its last line. Written atomically (temp file, fsync, rename),
/// keeping the previous generation as PATH.prev when asked.
class PositionsFile {
 public:
  explicit PositionsFile(std::string path, bool keep_previous = false)
      : path_(std::move(path)), keep_previous_(keep_previous) {}

  /// Reads the file; a missing file is empty. Throws std::runtime_error if
  /// it exists but cannot be parsed.
  std::map<std::string, PositionSet> Load() const;
  /// Returns false (with errno-style message in `error`) on failure.
  bool Save(const std::map<std::string, PositionSet>& positions,
            std::string* error) const;

  /// The text Save() writes, and back. A file that starts with the header
  /// Save() writes must end with a matching checksum line; one without it
  /// (written by releases before the checksum) is read as YAML, and a
  /// source without positions is a defect there too. False with `error`
  /// ("line N: ..." where known) on any defect: nothing of it is used.
  static std::string Serialize(
      const std::map<std::string, PositionSet>& positions);
  static bool Parse(std::string_view text,
                    std::map<std::string, PositionSet>* out,
                    std::string* error);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool keep_previous_;
};

}  // namespace sshtail
