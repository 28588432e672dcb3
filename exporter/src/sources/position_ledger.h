#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "sshtail/positions.h"
#include "sshtail/state_file.h"

namespace sshtail {

/// The committed positions of files that no reader follows at the moment
/// but that a source may take up again: a source a reload removed (a
/// relabel: the new source resumes there), a glob's file retired because
/// its path went (renamed back, it resumes), a file a glob has not listed
/// yet. One entry per URL; a reader that starts on that URL takes it.
///
/// Entries are saved with the running sources' positions (state and
/// positions file), so they outlive a restart as they outlive a reload,
/// and they are loaded back from those files: a saved URL no source
/// resumed at start is held here. `Prune` keeps only the entries some
/// configured source could still take (the caller decides which).
///
/// Thread-safe: the supervisor changes it from the main loop, the state
/// saver reads it from a scrape or the save timer.
class PositionLedger {
 public:
  /// At most this many entries are held (the oldest go first).
  explicit PositionLedger(size_t max_entries) : max_(max_entries) {}

  /// Holds `positions` (committed, final) for `url`, replacing any entry.
  void Hold(const std::string& url, const std::string& name,
            PositionSet positions);
  /// The entry of `url`, if one is held. A reader that resumes there
  /// calls Erase once its source is active, so that a save in between
  /// finds the position in one place or the other.
  std::optional<PositionSet> Find(const std::string& url) const;
  void Erase(const std::string& url);
  /// Keeps only the entries `wanted` says yes to.
  template <typename Pred>
  void Prune(Pred wanted) {
    std::lock_guard lock(mutex_);
    std::erase_if(entries_, [&](const auto& kv) { return !wanted(kv.first); });
  }
  /// Every entry, as the state file saves sources.
  std::map<std::string, SourceState> Held() const;
  size_t size() const;

 private:
  struct Entry {
    SourceState state;
    uint64_t order = 0;
  };
  mutable std::mutex mutex_;
  std::map<std::string, Entry> entries_;
  uint64_t next_ = 0;
  size_t max_;
};

}  // namespace sshtail
