#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "path_glob.h"
#include "source_table.h"
#include "sshtail/batch_queue.h"
#include "sshtail/options.h"
#include "sshtail/source.h"

namespace sshtail {

/// The one owner of the readers: it makes a producer for every source,
/// gives each file a glob matches a slot of the SourceTable and a reader
/// of its own, runs their threads and stops them.
///
/// Not thread-safe: the constructor, ExpandGlobs, Adopt, Start, Scan, Stop
/// and RunToEnd are called from one thread (the main one). Readers run on
/// threads of their own.
class SourceSupervisor {
 public:
  /// Reserves each glob source's `max_files` slots in `table`, which holds
  /// the configured sources.
  SourceSupervisor(const Options& options, SourceTable& table,
                   BatchQueue& queue);
  ~SourceSupervisor();
  SourceSupervisor(const SourceSupervisor&) = delete;
  SourceSupervisor& operator=(const SourceSupervisor&) = delete;

  /// The first expansion, before the saved positions are restored: every
  /// file that matches now, and every saved URL that matches (its file may
  /// have been rotated away while the exporter was stopped), gets a slot.
  /// They start at --start-at or their saved position; one created after
  /// `saved_at_ns` (a positions file's time, 0: none) and not saved starts
  /// at its beginning.
  void ExpandGlobs(const std::set<std::string>& saved_urls,
                   int64_t saved_at_ns);

  /// A reader made elsewhere (a syslog socket, bound early for exit 2).
  void Adopt(std::unique_ptr<Producer> producer);

  /// Makes the readers of every active source and starts their threads.
  void Start();
  /// Follows files that came to match since the last scan (read from their
  /// beginning) and retries threads that could not be created.
  /// Returns the new sources' runtime indices.
  std::vector<uint32_t> Scan();
  /// Asks every reader to stop and joins them.
  void Stop();
  /// --once: waits for every reader, running those without a thread here.
  void RunToEnd();

 private:
  struct Glob {
    uint32_t config = 0;  ///< its index among the configured sources
    std::unique_ptr<PathGlob> pattern;
    uint32_t first_slot = 0;
    size_t used = 0;
    bool warned_full = false;
  };
  // Gives `path` a slot of `g`; false when it is followed already or the
  // glob has no slot left.
  bool Assign(Glob& g, const std::string& path, StartAt start, uint32_t* slot);
  void StartThreads();

  const Options& options_;
  SourceTable& table_;
  BatchQueue& queue_;
  std::vector<Glob> globs_;
  std::set<std::string> followed_;     ///< paths of local files with a reader
  std::map<uint32_t, StartAt> start_;  ///< slots with their own start
  std::vector<std::unique_ptr<Producer>> producers_;
  std::vector<std::thread> threads_;
  size_t started_ = 0;
  bool thread_failed_ = false;
  bool stopping_ = false;
};

}  // namespace sshtail
