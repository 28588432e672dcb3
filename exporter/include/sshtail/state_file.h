#pragma once

#include <prometheus/labels.h>

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "sshtail/metric_store.h"
#include "sshtail/positions.h"

namespace sshtail {

/// What the state file remembers of one source. Plain value type.
struct SourceState {
  std::string name;  ///< its `source` label
  PositionSet positions;
};

/// One sample of the exporter's own per-source counters (sshtail_lines_total
/// and the like). Plain value type.
struct SavedCounter {
  std::string family;
  prometheus::Labels labels;
  double value = 0;
};

/// Everything a state file holds. Plain value type.
struct SavedState {
  std::map<std::string, SourceState> sources;  ///< by source URL
  std::vector<MetricSnapshot> metrics;         ///< rule metrics, by name
  std::vector<SavedCounter> counters;
  int version = 0;          ///< 0: no file; 1: positions only; 2: with values
  int64_t saved_at_ns = 0;  ///< mtime of the file read (unix ns; 0: none)
  /// Load(): damaged files set aside (PATH, and PATH.prev if it was
  /// damaged too), and whether this state is PATH.prev's.
  int set_aside = 0;
  bool from_previous = false;
};

/// The most labels a series (or an sshtail_* counter) may carry: what the
/// state file reads and writes, and what the configuration allows (a
/// source's static labels, and a rule's labels with those of the sources).
inline constexpr size_t kMaxSeriesLabels = 64;

/// The state file: per source its positions and the values of its series
/// (`--state-file`), or the positions only (`--positions-file`, the old
/// format, which still loads). Version 2 is a line format with a `version:`
/// key and a checksum trailer; it is written atomically (temp file, fsync,
/// rename, fsync of the directory). Its size is bounded by the series caps:
/// only series of saved sources are written. Stateless apart from the path;
/// Save() calls must not overlap (one writer).
class StateFile {
 public:
  static constexpr int kVersion = 2;
  /// A file larger than this is not ours (250 000 histogram series take
  /// about 100 MB).
  static constexpr size_t kMaxBytes = size_t{1} << 30;

  /// With `keep_previous`, Save() keeps the generation it replaces as
  /// PATH.prev and Load() falls back to it.
  explicit StateFile(std::string path, bool keep_previous = false)
      : path_(std::move(path)), keep_previous_(keep_previous) {}

  /// Throws ConfigError if `path` exists but is not a regular file (a
  /// directory, a socket): the flag names the wrong thing.
  static void CheckPath(const std::string& flag, const std::string& path);

  /// Reads the file; a missing or empty file is an empty state. A corrupt
  /// or foreign file (or one that does not parse in full) is renamed to
  /// PATH.corrupt-<unix time>; with `keep_previous` the state is then
  /// PATH.prev's (also when PATH is missing), else empty. `problem` then
  /// says what was wrong, where it went and what was used. Something that
  /// is not a regular file is never renamed.
  SavedState Load(std::string* problem) const;

  /// Writes the positions of `sources` and the series and counters whose
  /// `source` label names one of them. False with `error` on failure.
  bool Save(const std::map<std::string, SourceState>& sources,
            const std::vector<MetricSnapshot>& metrics,
            const std::vector<SavedCounter>& counters,
            std::string* error) const;

  /// The text Save() writes, and back (false with `error` on any defect:
  /// nothing of a damaged file is used).
  static std::string Serialize(
      const std::map<std::string, SourceState>& sources,
      const std::vector<MetricSnapshot>& metrics,
      const std::vector<SavedCounter>& counters);
  static bool Parse(std::string_view text, SavedState* out, std::string* error);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool keep_previous_;
};

}  // namespace sshtail
