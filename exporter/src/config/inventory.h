#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sshtail/source.h"

namespace sshtail {

/// Reads the targets of Prometheus file_sd files (JSON or YAML: a list of
/// `{targets: [...], labels: {...}}`) as sources. A target is
/// `[user@]host[:port]` with the log's path in the `__path__` label (a glob
/// allowed), or a source URL or absolute path of its own. `__format__` sets
/// the format; other `__*` labels are dropped, the rest become static
/// labels. A host's source is named by the host and told apart by a `file`
/// label. `patterns` are paths or globs; a glob that matches nothing gives
/// no targets. Throws ConfigError (file:line), also past `max_targets`
/// targets in all (they would not get slots) and for a file over
/// kMaxInventoryBytes, before it is parsed.
std::vector<SourceSpec> LoadInventory(const std::vector<std::string>& patterns,
                                      size_t max_targets = SIZE_MAX);
/// 64 MiB: about 2.5 million targets.
inline constexpr size_t kMaxInventoryBytes = size_t{64} << 20;

/// Notices a change of the files `patterns` name (a file added, removed,
/// replaced or rewritten). Not thread-safe.
class InventoryWatch {
 public:
  explicit InventoryWatch(std::vector<std::string> patterns);
  /// True if anything changed since the last call (the first call: false).
  bool Changed();

 private:
  std::string Signature() const;
  std::vector<std::string> patterns_;
  std::string last_;
  bool first_ = true;
};

}  // namespace sshtail
