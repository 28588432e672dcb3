#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "sshtail/batch.h"
#include "sshtail/batch_queue.h"
#include "sshtail/positions.h"

namespace sshtail {

/// Where to start reading a file the first time it is seen.
enum class StartAt { kBeginning, kEnd };

/// What the user asked for: one log to follow. Plain value type.
struct SourceSpec {
  std::string url;   ///< as given: /abs/path, file:///abs/path, -, ssh://,
                     ///< syslog+unix:///abs/path, syslog+udp://host:port
  std::string name;  ///< the `source` label; filled in by ResolveNames
  std::map<std::string, std::string> labels;  ///< static labels
  bool sudo = false;  ///< ssh: run the remote reader under `sudo -n`
  /// `format:` in the config: this source's nginx format (wins over
  /// --format); empty: --format.
  std::string format;
  int format_line = 0;  ///< where `format:` is, in config_file
  /// The path holds a glob or a `{field}` (see PathGlob): the spec stands
  /// for every file that matches, each followed as a source of its own.
  bool glob = false;
  std::vector<std::string> exclude;  ///< glob: more names to skip (fnmatch)
  /// glob: files followed at most; each takes a slot of the pool
  /// (--sources.max-slots) when it is found.
  size_t max_files = 256;
  /// A glob's match: the file's path (the `file` label of its series).
  std::string file;

  // Parsed form of `url`.
  enum class Kind {
    kFile,
    kStdin,
    kSsh,
    kSyslogUnix,  ///< a unix datagram socket the exporter creates at `path`
    kSyslogUdp,   ///< a UDP socket bound to `host` (an IP literal):`port`
  } kind = Kind::kFile;
  std::string user;         ///< ssh: empty = from ~/.ssh/config or $USER
  std::string host;         ///< ssh; syslog+udp: IPv4 or IPv6 literal
  int port = 0;             ///< ssh: 0 = from ~/.ssh/config or 22
  std::string path;         ///< absolute path of the file (or socket)
  std::string config_file;  ///< where it was defined, for messages
  int config_line = 0;
};

/// Parses a source URL. Throws std::invalid_argument with a one-line message.
SourceSpec ParseSourceUrl(const std::string& url);

/// `path` %-encoded where ParseSourceUrl would not read it back as it is.
std::string EncodeUrlPath(const std::string& path);

/// Gives every spec without a name its default: the path for local files,
/// "stdin" for -, the host for SSH (host:path when a host has several
/// files). A glob keeps its name empty: each match is named when found. Throws
/// std::invalid_argument if two sources end up with one name.
void ResolveNames(std::vector<SourceSpec>& specs);

/// Live state of a source that producers write and the self-metrics
/// collector reads at scrape time. Every member is atomic or guarded.
struct SourceStatus {
  std::atomic<bool> up{false};
  std::atomic<uint64_t> offset{0};
  std::atomic<uint64_t> rotations{0};
  /// Files that went away before they were read to their end (their size
  /// is often unknown, so lines are not counted).
  std::atomic<uint64_t> files_lost{0};
  std::atomic<double> last_line_time{0};  ///< unix seconds; 0 = never
  std::atomic<bool> connected_once{false};
  /// Set (release) by the reader when it will never again push a batch of
  /// this source or touch this status: a removed source's slot may then be
  /// reused once its queued batches are done (SourceSupervisor).
  std::atomic<bool> released{false};
  /// syslog: datagrams without a valid RFC 3164 header (or with a newline
  /// inside the message).
  std::atomic<uint64_t> syslog_malformed{0};
  /// syslog+udp: datagrams the kernel dropped because the receive buffer was
  /// full (SO_RXQ_OVFL).
  std::atomic<uint64_t> syslog_dropped{0};
  /// syslog: datagrams whose sender hostname is a configured source's name
  /// (or another socket's sender): counted under the socket's name instead.
  std::atomic<uint64_t> syslog_name_conflicts{0};

  /// Counts a failure of `reason` (e.g. "refused", "auth").
  void CountFailure(const std::string& reason);
  std::map<std::string, uint64_t> Failures() const;

  PositionTracker positions;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, uint64_t> failures_;
};

/// Options every producer shares.
struct ProducerOptions {
  StartAt start_at = StartAt::kEnd;
  bool once = false;  ///< read to the current end, then return
  size_t max_line_bytes = 64 * 1024;
  size_t batch_bytes = 256 * 1024;  ///< flush a batch at this size
};

/// Builds batches for one source and pushes them to the queue. Used by the
/// producer thread of that source only.
class BatchBuilder {
 public:
  BatchBuilder(BatchQueue& queue, uint32_t source, SourceStatus& status,
               size_t batch_bytes);

  // LineSplitter sink interface.
  void Line(std::string_view line);
  void TooLong();

  bool full() const { return batch_ && batch_->data.size() >= batch_bytes_; }
  bool empty() const {
    return !batch_ || (batch_->lines == 0 && batch_->too_long == 0);
  }

  /// Pushes the current batch (if it holds anything) with the source's
  /// position after it. Blocks while the queue is full. Returns false if the
  /// queue is closed.
  bool Flush(const PositionSet& after, uint64_t raw_bytes);

 private:
  void Ensure();

  BatchQueue& queue_;
  const uint32_t source_;
  SourceStatus& status_;
  const size_t batch_bytes_;
  uint64_t next_seq_ = 1;
  BatchPtr batch_;
  PositionSet last_after_;
};

/// A producer: follows one or more sources (a local file, stdin, or the
/// files sharing one SSH connection) and pushes their lines to the queue.
/// Run() is called on a thread of its own; RequestStop() may be called from
/// any thread.
class Producer {
 public:
  virtual ~Producer() = default;
  /// Returns once stopped, or at the current end of the log in once mode.
  virtual void Run() = 0;
  /// Asks Run() to return soon. Thread-safe.
  virtual void RequestStop() = 0;
};

}  // namespace sshtail
