#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sources/path_glob.h"
#include "sources/source_table.h"
#include "sshtail/batch_queue.h"
#include "sshtail/options.h"
#include "sshtail/source.h"
#include "sshtail/ssh_producer.h"

namespace sshtail {

/// The one owner of the readers: it makes a producer for every source,
/// gives each file a glob matches a slot of the SourceTable and a reader
/// of its own, runs their threads and stops them. Local globs are expanded
/// by Scan; a remote glob's host lists its matches every heartbeat over a
/// session of its own (MakeSshLister), and Scan adds the new ones to that
/// host's connections.
///
/// Not thread-safe: the constructor, ExpandGlobs, Adopt, Start, Scan, Stop
/// and RunToEnd are called from one thread (the main one). Readers and
/// listers run on threads of their own.
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
  /// local file that matches now, and every saved URL that matches (its
  /// file may have been rotated away while the exporter was stopped), gets
  /// a slot. They start at --start-at or their saved position; a local one
  /// created after `saved_at_ns` (a positions file's time, 0: none) and
  /// not saved starts at its beginning.
  void ExpandGlobs(const std::set<std::string>& saved_urls,
                   int64_t saved_at_ns);

  /// A reader made elsewhere (a syslog socket, bound early for exit 2).
  void Adopt(std::unique_ptr<Producer> producer);

  /// Makes the readers of every active source, and the remote globs'
  /// listers, and starts their threads.
  void Start();
  /// Follows files that came to match since the last scan, read from their
  /// beginning (a remote glob's first listing: from --start-at, unless
  /// files of it were saved: then every unsaved one is new), and retries
  /// threads that could not be created. Returns the new sources' indices.
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
    bool remote = false;
    bool saved = false;  ///< files of it are in the positions file
    size_t rounds = 0;   ///< remote listings taken
  };
  // Gives `path` a slot of `g`; false when it is followed already or the
  // glob has no slot left.
  bool Assign(Glob& g, const std::string& path, StartAt start, uint32_t* slot);
  // From a lister's thread: glob `k`'s latest listing.
  void Listed(size_t k, std::vector<std::string> paths);
  // A remote glob's new match joins a connection of its host that has
  // room, or a new one.
  void StartSsh(uint32_t slot, bool from_start);
  void StartThreads();
  // What names a file whatever the URL's spelling.
  static std::string Key(const SourceSpec& s);

  const Options& options_;
  SourceTable& table_;
  BatchQueue& queue_;
  std::vector<Glob> globs_;
  std::set<std::string> followed_;     ///< Key()s of files with a reader
  std::set<std::string> local_paths_;  ///< followed local paths
  std::map<uint32_t, StartAt> start_;  ///< slots with their own start
  /// SSH connections by SshConnectionKey, with their file counts.
  std::map<std::string, std::vector<std::pair<SshProducer*, size_t>>> ssh_;
  std::mutex listed_mutex_;
  std::map<size_t, std::vector<std::string>> listed_;  // by listed_mutex_
  std::vector<std::unique_ptr<Producer>> producers_;
  std::vector<std::thread> threads_;
  size_t started_ = 0;
  bool thread_failed_ = false;
  bool stopping_ = false;
};

}  // namespace sshtail
