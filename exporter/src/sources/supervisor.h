#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "sources/path_glob.h"
#include "sources/position_ledger.h"
#include "sources/source_table.h"
#include "sshtail/batch_queue.h"
#include "sshtail/options.h"
#include "sshtail/source.h"
#include "sshtail/ssh_producer.h"

namespace sshtail {

/// A reload that needs more pool slots than are free: it may succeed once
/// removed sources have let theirs go (SourceSupervisor::freed()).
class NoSlotError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

/// A reload's change to the configured sources: the slots that go and the
/// specs that come, each with the pool slot it will take. Plain value type.
struct SourcePlan {
  std::vector<uint32_t> remove;
  std::vector<std::pair<uint32_t, SourceSpec>> add;
  bool empty() const { return remove.empty() && add.empty(); }
};

/// The one owner of the readers: it makes a producer for every source,
/// gives each file a glob matches a slot of the SourceTable and a reader
/// of its own, runs their threads and stops them. Local globs are expanded
/// by Scan; a remote glob's host lists its matches every heartbeat over a
/// session of its own (MakeSshLister), and Scan adds the new ones to that
/// host's connections. A reload changes the configured set through Plan,
/// Retire and Add: unchanged sources keep their reader and slot.
///
/// Not thread-safe: every member is called from one thread at a time (the
/// exporter serialises them). Readers and listers run on threads of their
/// own.
class SourceSupervisor {
 public:
  /// `table` holds the configured sources; the pool of `options.max_slots`
  /// slots that globs' files and added sources take is appended here.
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
  /// A glob's file whose path has been gone for --sources.retire-after (by
  /// its host's complete listings, for a remote one) stops being followed:
  /// its slot is retired and appended to `*retired` (if given).
  std::vector<uint32_t> Scan(std::vector<uint32_t>* retired = nullptr);
  /// Positions of retired glob files: one that comes back under the same
  /// URL resumes there (if it is the same file), neither lost nor
  /// recounted.
  void KeepPositions(std::map<std::string, SourceState> positions);
  /// The positions of files no reader follows now (see PositionLedger).
  PositionLedger& ledger() { return ledger_; }
  /// Whether a source of `desired` (or, when null, a configured one) could
  /// take up `url` again: the same URL, or a glob over it.
  bool Covers(const std::string& url,
              const std::vector<SourceSpec>* desired = nullptr) const;
  /// Asks every reader to stop and joins them.
  void Stop();
  /// Pool slots freed for reuse since start.
  size_t freed() const { return freed_; }
  /// A retired slot's reader will not touch its source again (it stopped,
  /// or dropped the file); true for a slot that is not retired.
  bool Released(uint32_t slot) const {
    if (table_.state(slot) != SourceTable::State::kRetired) return true;
    return !table_.status[slot] || table_.status[slot]->released.load();
  }
  /// --once: waits for every reader, running those without a thread here.
  void RunToEnd();

  /// What turns the configured sources into `desired` (named; see
  /// ResolveNames): a source is kept only if every setting is the same.
  /// Changes nothing. Throws NoSlotError when the pool has no room left.
  SourcePlan Plan(const std::vector<SourceSpec>& desired) const;
  /// The pool slots free once `removal`'s sources (and their glob files)
  /// and the sources already retired have let theirs go.
  size_t RoomAfter(const SourcePlan& removal) const;
  /// Those of `desired` that run now, unchanged.
  std::vector<SourceSpec> Running(const std::vector<SourceSpec>& desired) const;
  /// The configured sources by slot (after `plan`), for their formats: a
  /// slot that is not a configured source's (or was removed) gets an empty
  /// spec.
  std::vector<SourceSpec> ConfiguredBySlot(const SourcePlan& plan) const;
  /// Stops the readers of `slots` (configured sources; a glob's files go
  /// with it) and marks them retired. Returns every slot retired. A retired
  /// pool slot goes back to the pool once its reader has let it go and no
  /// batch of it is left (Scan looks).
  std::vector<uint32_t> Retire(const std::vector<uint32_t>& slots);
  /// Starts the sources `plan` adds (at --start-at; a glob's files when
  /// found). A file whose URL is in `carried` (a source the same reload
  /// removed: relabelled, say) resumes at that position instead: it goes
  /// to the ledger, which keeps it, across later reloads and restarts,
  /// until a source takes it or none of `desired` (the whole set the
  /// reload wants, some perhaps still waiting for slots) could. Plain
  /// sources that wait because a glob follows their file start once it
  /// lets the file go. Returns the slots that became active.
  std::vector<uint32_t> Add(const SourcePlan& plan,
                            std::map<std::string, SourceState> carried = {},
                            const std::vector<SourceSpec>* desired = nullptr);

 private:
  /// A reader's or lister's thread. Reaped (joined, destroyed) by Scan once
  /// it was asked to stop and has returned.
  struct Worker {
    std::unique_ptr<Producer> producer;
    /// A file reader's status: released when Run returns (a connection
    /// releases its own).
    SourceStatus* releases = nullptr;
    std::thread thread;
    std::atomic<bool> finished{false};
    bool started = false;
    bool stopped = false;
  };
  struct Glob {
    uint32_t config = 0;  ///< its slot among the configured sources
    std::unique_ptr<PathGlob> pattern;
    std::vector<uint32_t> slots;  ///< its files'
    size_t used = 0;
    bool warned_full = false;
    bool retired = false;
    Producer* lister = nullptr;
    bool remote = false;
    bool saved = false;  ///< files of it are in the positions file
    size_t rounds = 0;   ///< remote listings taken
  };
  // Retires g's files that `present` (a complete listing; null: local, by
  // stat) has lacked for --sources.retire-after.
  void RetireGone(Glob& g, const std::set<std::string>* present,
                  std::vector<uint32_t>* retired);
  // Gives `path` a slot of `g` from the pool; false when it is followed
  // already, the glob is at max_files or the pool is spent.
  bool Assign(Glob& g, const std::string& path, StartAt start, uint32_t* slot);
  // From a lister's thread: glob `k`'s latest listing.
  void Listed(size_t k, std::vector<std::string> paths);
  // A remote glob's new match joins a connection of its host that has
  // room, or a new one.
  void StartSsh(uint32_t slot, bool from_start);
  void StartThreads();
  // Owns `p` and runs it on a thread of its own (StartThreads).
  Producer* Launch(std::unique_ptr<Producer> p, SourceStatus* releases);
  // Asks `p` to stop; its worker is reaped once it returned.
  void Halt(Producer* p);
  // Joins the workers that stopped, and frees the retired pool slots that
  // are released and idle.
  void Reap();
  // The next slot of the pool (a freed one first); false when spent.
  bool TakeSlot(uint32_t* slot);
  // The pool slots the next `n` TakeSlot calls give.
  std::vector<uint32_t> NextSlots(size_t n) const;
  // A glob entry for configured slot `config`.
  void AddGlob(uint32_t config);
  // Glob k's lister, if it is remote and has none.
  void StartLister(size_t k);
  // The reader of an active plain slot, started with `start`.
  void StartReader(uint32_t slot, StartAt start);
  // A carried position for the slot's URL, restored before its reader runs.
  void Carry(uint32_t slot);
  // Stops slot's reader and forgets its file.
  void StopReader(uint32_t slot);
  // Whether `url` names a file glob `g` matches (same kind and
  // connection); `path` gets it.
  bool Matched(const Glob& g, const std::string& url, std::string* path) const;
  // The paths of the ledger's entries that remote glob `g` matches.
  std::vector<std::string> HeldPaths(const Glob& g) const;
  // A configured plain source's file: marked followed, resumed from the
  // ledger, activated, its reader started.
  void Follow(uint32_t slot);
  // Starts the configured plain sources in waiting_ whose file is free.
  std::vector<uint32_t> StartWaiting();
  // What names a file whatever the URL's spelling.
  static std::string Key(const SourceSpec& s);
  // Every setting of a configured source.
  static std::string SpecKey(const SourceSpec& s);

  const Options& options_;
  SourceTable& table_;
  BatchQueue& queue_;
  std::vector<Glob> globs_;
  std::set<std::string> followed_;     ///< Key()s of files with a reader
  std::set<std::string> local_paths_;  ///< followed local paths
  std::map<uint32_t, StartAt> start_;  ///< slots with their own start
  std::vector<uint32_t> configured_;   ///< live configured sources' slots
  PositionLedger ledger_;
  /// Configured plain sources whose file a glob follows: each starts once
  /// no reader has its file (Scan looks).
  std::set<uint32_t> waiting_;
  /// Glob files' slots whose path was missing, since when.
  std::map<uint32_t, std::chrono::steady_clock::time_point> gone_since_;
  std::chrono::steady_clock::time_point last_local_check_{};
  uint32_t pool_begin_ = 0;
  uint32_t pool_next_ = 0;  ///< the pool's first never used slot
  uint32_t pool_end_ = 0;
  std::set<uint32_t> free_;         ///< pool slots free again
  std::vector<uint32_t> draining_;  ///< retired pool slots, not yet free
  size_t freed_ = 0;
  bool warned_pool_ = false;
  /// SSH connections by SshConnectionKey, with their file counts.
  std::map<std::string, std::vector<std::pair<SshProducer*, size_t>>> ssh_;
  std::map<uint32_t, SshProducer*> ssh_of_;  ///< SSH slot -> its connection
  std::map<uint32_t, Producer*> readers_;    ///< file slot -> its reader
  std::mutex listed_mutex_;
  std::map<size_t, std::vector<std::string>> listed_;  // by listed_mutex_
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<Producer*, Worker*> worker_of_;
  bool thread_failed_ = false;
  bool stopping_ = false;
};

}  // namespace sshtail
