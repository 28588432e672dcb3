#pragma once

// What one SSH connection keeps per file (Stream) and per channel
// (Channel), and how a channel's stdout becomes lines (ChannelSink): the
// remote reader's data, its truncation marker, the bytes kept to check a
// position. Used by SshConnection's thread only.

#include <chrono>
#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <vector>

#include "sources/ssh/ssh_session.h"
#include "sshtail/line_splitter.h"
#include "sshtail/positions.h"
#include "sshtail/remote_script.h"
#include "sshtail/source.h"
#include "sshtail/ssh_producer.h"

namespace sshtail {
namespace ssh {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kReadChunk = 64 * 1024;
// Read at most this much from one channel before serving the others.
constexpr size_t kFairShare = 4 * 1024 * 1024;
// Bounds on what a remote host can make us hold (a hostile or broken host
// must not grow our memory): stdout before the BEGIN line, one stderr
// line, and the error text kept for messages. Past the first two the
// stream fails with reason "protocol".
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxHeaderLine = 4096;
constexpr size_t kMaxStderrLine = 4096;
constexpr size_t kMaxErrText = 1024;
// Rotated files of one stream read at once while catching up (the others
// wait in Stream::resume): sshd's MaxSessions (10) bounds the channels of
// a connection.
constexpr size_t kMaxDrains = 2;
// While a backlog streams in (a round brings at least kHoldRead bytes of a
// file), its lines stay in the batch until the stream pauses for kHoldQuiet,
// at most kHoldFor: the remote tail writes a few KiB at a time, and each
// batch costs a queue hand-over and a consumer wake-up. Live lines at a
// lower rate are published at once.
constexpr size_t kHoldRead = 16 * 1024;
constexpr milliseconds kHoldQuiet{5};
constexpr milliseconds kHoldFor{20};

// One SSH channel running the remote script for one file.
struct Channel {
  enum class Role { kCurrent, kDraining, kProbe };
  explicit Channel(size_t max_line) : splitter(max_line) {}

  ChannelPtr ch;
  Role role = Role::kCurrent;
  RemoteRequest request;
  std::string header_buf;   // stdout before the BEGIN line
  size_t header_bytes = 0;  // all stdout before the BEGIN line
  bool begun = false;
  bool missing = false;
  FileId id;
  int64_t base = 0;         // file offset = base + splitter.complete_bytes()
  uint64_t drop_until = 0;  // stream bytes: lines ending here or before skip
  std::string marker;       // "tail: <nonce>: file truncated"
  LineSplitter splitter;
  // Raw stream bytes (before '\r' is stripped), for the positions' tail
  // check and the truncation marker at the end of an over-long line.
  uint64_t fed = 0;        // stream bytes given to the splitter
  std::string recent;      // the last kRecent of them
  size_t recent_max = 0;   // kRecent: marker size + 1, at least kTailBytes
  uint64_t file_from = 0;  // stream offset where the current file starts
  std::string prefix;      // file bytes before file_from known to be there
  std::string tail;        // file bytes just before file_offset()
  std::string err_buf;     // stderr, split into lines
  std::string err_text;    // stderr that is not a heartbeat, for messages
  Clock::time_point last_data = Clock::now();
  bool closed = false;
  bool ended = false;  // the remote reader exited by itself
  // Looks for the rest of a file truncated while away: not finding it
  // proves nothing was lost (it may have been emptied at our offset).
  bool gone_is_unknown = false;

  uint64_t file_offset() const {
    return static_cast<uint64_t>(
        base + static_cast<int64_t>(splitter.complete_bytes()));
  }
};

inline void AddErrText(Channel& c, std::string_view line) {
  if (c.err_text.size() >= kMaxErrText) return;
  c.err_text.append(line.substr(0, kMaxErrText - c.err_text.size()));
  c.err_text += ' ';
}

// Splitter sink for one channel: drops the start-at-end window, recognises
// the in-band truncation line, forwards the rest to the batch. Knows the
// chunk being fed, to look at raw bytes.
struct ChannelSink {
  Channel& c;
  BatchBuilder& b;
  const char* chunk;
  size_t chunk_len;
  bool truncated = false;

  // Up to `len` raw stream bytes just before stream offset `end` (within
  // the current chunk), from c.recent and the chunk.
  std::string Before(uint64_t end, size_t len) const {
    size_t in_chunk = static_cast<size_t>(end - c.fed);
    std::string out;
    if (in_chunk < len) {
      size_t need = std::min(len - in_chunk, c.recent.size());
      out.assign(c.recent, c.recent.size() - need, need);
      out.append(chunk, in_chunk);
    } else {
      out.assign(chunk + in_chunk - len, len);
    }
    return out;
  }

  // Up to kTailBytes file bytes before stream offset `end`.
  std::string FileTail(uint64_t end) const {
    size_t want = FilePosition::kTailBytes;
    size_t avail =
        static_cast<size_t>(std::min<uint64_t>(end - c.file_from, want));
    std::string t = Before(end, avail);
    if (avail < want && !c.prefix.empty()) {
      size_t more = std::min(want - avail, c.prefix.size());
      t.insert(0, c.prefix, c.prefix.size() - more, more);
    }
    return t;
  }

  // Bytes after the line ending at `end` are the file from offset 0 again;
  // what came before the marker on this line was an unfinished line:
  // dropped.
  void Truncated(uint64_t end) {
    c.base = -static_cast<int64_t>(end);
    c.drop_until = 0;
    c.file_from = end;
    c.prefix.clear();
    c.tail.clear();
    truncated = true;
  }

  void Line(std::string_view l) {
    uint64_t end = c.splitter.complete_bytes();
    const std::string& m = c.marker;
    if (l.size() >= m.size() && l.back() == 'd' &&
        std::memcmp(l.data() + l.size() - m.size(), m.data(), m.size()) == 0) {
      Truncated(end);
      return;
    }
    if (end <= c.drop_until) return;
    b.Line(l);
  }
  void TooLong() {
    // tail's truncation notice can end a line that is over-long (it was
    // appended to an unfinished long line, or --max-line-bytes is tiny).
    uint64_t end = c.splitter.complete_bytes();
    const std::string& m = c.marker;
    if (end - c.file_from > m.size() && Before(end - 1, m.size()) == m) {
      Truncated(end);
      return;
    }
    if (end <= c.drop_until) return;
    b.TooLong();
  }
};

// One ssh:// source on this connection.
struct Stream {
  Stream(const SshSourceRef& r, BatchQueue& q, const ProducerOptions& po)
      : ref(r),
        builder(q, r.index, *r.status, po.batch_bytes),
        from_start(r.from_start) {}

  SshSourceRef ref;
  BatchBuilder builder;
  std::list<Channel> channels;
  // Where to resume after a reconnect: the current file and any rotated
  // files still being drained.
  PositionSet resume;
  bool fresh = true;  // never streamed: --start-at applies
  // The saved current file had nothing read (offset 0): the files rotated
  // after this save instant (ns) are found by time, once.
  int64_t unread_since = 0;
  // Rotated files saved at offset 0 (not reopened yet at the save), and
  // when the save was taken: nothing but their inode number names them.
  std::vector<FileId> saved_unread;
  int64_t saved_at = 0;
  bool restored = false;  // from a positions file, the current not begun yet
  bool done = false;      // once mode: read to the end
  bool missing_logged = false;
  bool saw_missing = false;  // waited for the file: read it from its start
  bool from_start;           // appeared while running (a glob's new match)
  Clock::time_point retry_at{};
  milliseconds backoff{0};
  uint64_t pending_raw = 0;
  std::string last_failure;
  // Set while the batch is held (see kHoldRead): when holding began, and
  // when data last came.
  Clock::time_point held_since{};
  Clock::time_point held_last{};

  bool HasRole(Channel::Role r) const {
    for (const auto& c : channels) {
      if (!c.closed && c.role == r) return true;
    }
    return false;
  }
  bool AnyOpen() const {
    for (const auto& c : channels) {
      if (!c.closed) return true;
    }
    return false;
  }
};

}  // namespace ssh
}  // namespace sshtail
