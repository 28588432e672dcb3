#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "sshtail/source.h"
#include "util/unique_fd.h"

namespace sshtail {

/// What a reload asks of the shard: the sources to follow, and the hosts
/// this replica takes and lets go. Plain value type.
struct ShardClaim {
  std::vector<SourceSpec> sources;   ///< unsharded ones, and held hosts'
  std::vector<std::string> gained;   ///< hosts whose lock was just taken
  std::vector<std::string> lost;     ///< held hosts that hash elsewhere now
  std::vector<std::string> dropped;  ///< held hosts no longer configured
  std::vector<std::string> waiting;  ///< ours, still locked by another
};

/// Which replica follows which host (--shard.count replicas, this one
/// --shard.index): each host goes to the replica with the highest
/// rendezvous score, so all files of a host stay together and a change of
/// the count moves about 1/N of the hosts. A replica follows a host only
/// while it holds the host's lock file in --shard.dir (flock, released by
/// the kernel if the process dies); it lets go only after it wrote the
/// host's state there (positions and values, HandOverPath), so the next
/// owner resumes exactly where it stopped and no host is ever followed by
/// two replicas at once.
///
/// Not thread-safe: the exporter calls it under its reload mutex.
class ShardKeeper {
 public:
  /// Throws ConfigError when `dir` cannot be used.
  ShardKeeper(std::string dir, int index, int count);
  ShardKeeper(const ShardKeeper&) = delete;
  ShardKeeper& operator=(const ShardKeeper&) = delete;

  /// The shard key of a source: the SSH host as written (an alias of
  /// ~/.ssh/config is a host of its own), "file:" + path for a local file;
  /// empty for sources every replica reads (stdin, syslog sockets).
  static std::string KeyOf(const SourceSpec& s);
  /// The replica (0..count-1) a key goes to.
  static int OwnerOf(const std::string& key, int count);
  /// `--shard.index auto`: the number ending a StatefulSet pod's host name
  /// ("sshtail-2" -> 2); -1 if there is none.
  static int IndexFromHostname(const std::string& hostname);

  /// The sources of `desired` this replica follows with `count` replicas:
  /// the unsharded ones, and those of hosts that hash here whose lock it
  /// holds or takes now (non-blocking; a lock another replica still holds
  /// is tried again by TryWaiting). Changes nothing until Commit.
  ShardClaim Claim(const std::vector<SourceSpec>& desired, int count);
  /// The claim was applied: its gained hosts are held, its lost ones are
  /// let go (Release) once their state is written.
  void Commit(const ShardClaim& claim);
  /// The claim was not applied: the locks it took are given back.
  void Abort(const ShardClaim& claim);
  /// Closes the lock of `key`: another replica may take it.
  void Release(const std::string& key);

  /// Tries the locks of the hosts that hash here but were held elsewhere;
  /// true if one is free now (a reload will take it).
  bool TryWaiting();

  /// Where `key`'s state goes when it is let go.
  std::string HandOverPath(const std::string& key) const;

  void SetCount(int count) { count_ = count; }
  int index() const { return index_; }
  int count() const { return count_; }
  size_t held() const { return held_.size(); }
  size_t waiting() const { return waiting_.size(); }
  bool Holds(const std::string& key) const { return held_.count(key) > 0; }

 private:
  std::string LockPath(const std::string& key) const;
  // Opens and locks `key`'s lock file; an empty fd if another holds it.
  UniqueFd TryLock(const std::string& key) const;

  const std::string dir_;
  const int index_;
  int count_;
  std::map<std::string, UniqueFd> held_;    ///< key -> its locked file
  std::map<std::string, UniqueFd> taking_;  ///< locked by a pending Claim
  std::set<std::string> waiting_;           ///< ours, locked elsewhere
};

}  // namespace sshtail
