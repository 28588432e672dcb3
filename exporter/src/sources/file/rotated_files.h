#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sshtail/batch.h"

namespace sshtail {

/// A rotated sibling of a log path: same directory, name = the path's name
/// plus a rotation suffix (see IsRotatedName).
struct RotatedFile {
  std::string path;
  std::string name;
  FileId id;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;  ///< renamed, created or linked last (unix ns)
  bool gz = false;       ///< name ends in ".gz"
};

/// True if `name` is `base` followed by a rotation suffix: '.' or '-', a
/// digit, then only digits and ". _ -" (`.1`, `.12`, `-20240131`,
/// `-2024-01-31-1706659200`), optionally followed by ".gz" (`*gz` set).
/// The remote script applies the same rule in sh (remote_script.cc).
bool IsRotatedName(std::string_view base, std::string_view name, bool* gz);

/// The rotated siblings of `path` that are regular files, newest first by
/// modification time (logrotate keeps a file's mtime when it compresses
/// it), ties by name. The file at `path` itself is never listed.
std::vector<RotatedFile> ListRotated(const std::string& path);

/// True if `list` also holds the uncompressed twin of `gz_name`
/// (`access.log.2` for `access.log.2.gz`): logrotate writes the .gz and
/// then deletes the plain file, so a restart in between sees both.
bool HasPlainTwin(const std::vector<RotatedFile>& list,
                  const std::string& gz_name);

/// When `path` was created (unix ns), or 0 if the file system does not
/// keep it (statx's btime). Tells a file that got a freed inode number
/// from the file that had it.
int64_t BirthNs(const std::string& path);

}  // namespace sshtail
