#include "sshtail/ssh_producer.h"

#include <libssh/libssh.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "sources/ssh/ssh_session.h"
#include "sshtail/line_splitter.h"
#include "sshtail/log.h"
#include "sshtail/remote_script.h"
#include "util/unique_fd.h"

namespace sshtail {
namespace {

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

void AddErrText(Channel& c, std::string_view line) {
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

class SshConnection : public SshProducer {
 public:
  SshConnection(std::vector<SshSourceRef> refs, BatchQueue& queue,
                const ProducerOptions& po, const SshOptions& so)
      : po_(po), so_(so), queue_(queue) {
    for (const auto& r : refs) AddStream(r);
    target_ = TargetOf(*refs.front().spec, so);
    sudo_ = refs.front().spec->sudo;
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    wake_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    hb_ = std::max<int>(1,
                        static_cast<int>(so.heartbeat_interval.count() / 1000));
    drain_quiet_ = std::max(milliseconds(5000), so.heartbeat_interval * 2);
  }

  void RequestStop() override {
    stop_.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void AddSource(const SshSourceRef& ref) override {
    {
      std::lock_guard lock(inbox_mutex_);
      inbox_.push_back(ref);
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void RemoveSource(uint32_t index) override {
    {
      std::lock_guard lock(inbox_mutex_);
      removed_.push_back(index);
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    while (!stop_.load() && !AllDone()) {
      TakeInbox();
      if (!session_) {
        if (!WaitUntil(next_connect_)) break;
        Failure f;
        if (!Connect(&f)) {
          if (stop_.load()) break;
          ConnectionFailed(f);
          continue;
        }
      }
      Serve();
    }
    for (auto& s : streams_) {
      Publish(*s);
      s->ref.status->up.store(false);
    }
    Disconnect();
  }

 private:
  void AddStream(const SshSourceRef& r) {
    streams_.push_back(std::make_unique<Stream>(r, queue_, po_));
    Stream& s = *streams_.back();
    s.resume = r.status->positions.Committed();
    s.fresh = s.resume.empty();
    s.saved_at = r.status->positions.RestoredAt();
    s.restored = !s.resume.empty() && s.saved_at > 0;
    for (const auto& p : s.resume) {
      if (p.current && p.offset == 0) s.unread_since = s.saved_at;
      if (!p.current && p.offset == 0) s.saved_unread.push_back(p.file);
    }
  }

  // Files added while running become streams here, on this thread.
  void TakeInbox() {
    std::vector<SshSourceRef> in;
    std::vector<uint32_t> gone;
    {
      std::lock_guard lock(inbox_mutex_);
      in.swap(inbox_);
      gone.swap(removed_);
    }
    for (uint32_t index : gone) {
      // Its channels close with it (ChannelPtr): the remote readers end.
      std::erase_if(streams_, [&](const std::unique_ptr<Stream>& s) {
        if (s->ref.index != index) return false;
        s->ref.status->up.store(false);
        return true;
      });
      std::erase_if(in,
                    [&](const SshSourceRef& r) { return r.index == index; });
    }
    for (const auto& r : in) {
      AddStream(r);
      streams_.back()->retry_at = Clock::now();
    }
  }

  bool AllDone() const {
    if (!po_.once) return false;
    for (const auto& s : streams_) {
      if (!s->done) return false;
    }
    return true;
  }

  // Sleeps until `t` or a stop request; false if stopped.
  bool WaitUntil(Clock::time_point t) {
    for (;;) {
      if (stop_.load()) return false;
      auto now = Clock::now();
      if (now >= t) return true;
      int ms = static_cast<int>(
          std::chrono::duration_cast<milliseconds>(t - now).count() + 1);
      struct pollfd p = {stop_fd_.get(), POLLIN, 0};
      ::poll(&p, 1, ms);
    }
  }

  void Count(Stream& s, const std::string& reason) {
    s.ref.status->CountFailure(reason);
  }

  void ConnectionFailed(const Failure& f) {
    // A connection that stayed up a while starts the backoff over.
    if (session_ && Clock::now() - connected_at_ > std::chrono::seconds(60)) {
      backoff_ = milliseconds(0);
    }
    // One log line per change of reason, not one per retry.
    if (f.reason != last_failure_) {
      Log(LogLevel::kWarn, "ssh " + target_.label + ": " + f.message +
                               " (reason=" + f.reason + ")");
      last_failure_ = f.reason;
    }
    for (auto& s : streams_) {
      Count(*s, f.reason);
      s->ref.status->up.store(false);
      if (po_.once) s->done = true;  // --once does not wait for a host
    }
    Disconnect();
    backoff_ = NextBackoff(backoff_, so_.max_backoff);
    next_connect_ = Clock::now() + Jitter(backoff_);
  }

  void Disconnect() {
    for (auto& s : streams_) {
      for (auto& c : s->channels) SaveChannelPosition(*s, c);
      s->channels.clear();
    }
    event_.reset();
    session_.reset();
    no_answer_ = false;
  }

  bool Connect(Failure* f) {
    SessionPtr s = OpenSession(so_, target_, stop_fd_.get(), &stop_, f);
    if (!s) return false;
    EventPtr ev(ssh_event_new());
    ssh_event_add_session(ev.get(), s.get());
    ssh_event_add_fd(ev.get(), stop_fd_.get(), POLLIN, &SshConnection::OnStop,
                     this);
    ssh_event_add_fd(ev.get(), wake_fd_.get(), POLLIN, &SshConnection::OnStop,
                     this);
    session_ = std::move(s);
    event_ = std::move(ev);
    connected_at_ = Clock::now();
    last_rx_ = Clock::now();
    if (!last_failure_.empty()) {
      Log(LogLevel::kInfo, "ssh " + target_.label + ": connected");
    }
    last_failure_.clear();
    return true;
  }

  static int OnStop(socket_t fd, int, void*) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
    return 0;
  }

  // Opens a channel running the script for `req`. False on failure.
  bool OpenChannel(Stream& s, RemoteRequest req, Channel::Role role) {
    req.path = s.ref.spec->path;
    req.heartbeat_seconds = hb_;
    req.tag = RandomTag();
    req.nonce_path = RandomNoncePath();
    ChannelPtr ch(ssh_channel_new(session_.get()));
    if (!ch || ssh_channel_open_session(ch.get()) != SSH_OK) {
      std::string e = ssh_get_error(session_.get());
      if (e.empty()) {
        // No answer at all (a refusal carries a reason): the peer is frozen
        // or black-holed. The stall check only runs while a channel is
        // open, so the session is dropped from Serve() instead.
        no_answer_ = true;
        e = "no answer from the server";
      }
      StreamFailed(s, "channel",
                   "cannot open a channel: " + e +
                       " (sshd's MaxSessions too low for "
                       "--ssh.files-per-connection?)");
      return false;
    }
    std::string script = RemoteScript(req);
    if (!StartRemoteScript(ch.get(), sudo_, script)) {
      std::string e = ssh_get_error(session_.get());
      if (e.empty()) {
        no_answer_ = !ssh_channel_is_closed(ch.get());
        e = no_answer_ ? "no answer from the server"
                       : "the server closed the channel";
      }
      StreamFailed(s, "channel", "cannot start the remote reader: " + e);
      return false;
    }
    Channel& c = s.channels.emplace_back(po_.max_line_bytes);
    c.ch = std::move(ch);
    c.role = role;
    c.request = std::move(req);
    c.marker = "tail: " + c.request.nonce_path + ": file truncated";
    c.recent_max = std::max(c.marker.size() + 1, FilePosition::kTailBytes);
    c.last_data = Clock::now();
    return true;
  }

  // Opens what a stream needs: the path, plus rotated files being drained.
  void OpenStream(Stream& s) {
    if (po_.once) {
      RemoteRequest r;
      r.mode = RemoteRequest::Mode::kOnce;
      OpenChannel(s, r, Channel::Role::kCurrent);
      return;
    }
    RemoteRequest cur;
    cur.mode = RemoteRequest::Mode::kPath;
    for (const auto& p : s.resume) {
      if (p.current) {
        cur.expect = p.file;
        cur.offset = p.offset;
        cur.expect_tail = p.tail;
      }
    }
    if (s.fresh && !s.saw_missing && !s.from_start &&
        po_.start_at == StartAt::kEnd) {
      cur.start_at_end = true;
      cur.end_window = po_.max_line_bytes + 2;
    }
    if (s.unread_since > 0) {
      // Nothing identifies an unread file (an inode number is reused, a .gz
      // has a new one): the file at the path is read from its start, and
      // the ones rotated after the save are listed by time.
      cur.expect = FileId{};
      RemoteRequest by_time;
      by_time.mode = RemoteRequest::Mode::kInode;
      by_time.newer_than_ns = s.unread_since;
      if (!OpenChannel(s, by_time, Channel::Role::kDraining)) return;
    }
    if (!OpenChannel(s, cur, Channel::Role::kCurrent)) return;
    OpenPendingDrains(s);
  }

  // A request for the rest, after `offset`, of the rotated file `expect`
  // whose bytes before it were `tail`: found by inode, else by those bytes.
  static RemoteRequest RestOf(const FileId& expect, uint64_t offset,
                              const std::string& tail) {
    RemoteRequest r;
    r.mode = RemoteRequest::Mode::kInode;
    r.expect = expect;
    r.offset = offset;
    r.expect_tail = tail;
    return r;
  }

  // The rest of the file `cur` expected, which is no longer at the path
  // (or no longer holds its bytes), and the files rotated after it up to
  // the remote time `now` the live reader began at.
  // The first catch-up after a restart also asks, should that file be
  // gone, for the files rotated after the save (`saved_at`), by time.
  static RemoteRequest CatchUp(const RemoteRequest& cur, unsigned long long now,
                               int64_t saved_at = 0) {
    RemoteRequest r = RestOf(cur.expect, cur.offset, cur.expect_tail);
    r.list_newer = true;
    r.newer_before_ns = static_cast<int64_t>(now);
    r.newer_if_gone_ns = saved_at;
    return r;
  }

  // `p` is the saved position `r` asked for. The offset and tail count
  // too: an inode number freed by compression can come back as a newer
  // rotated file, which has its own entry (offset 0).
  static bool IsRequested(const FilePosition& p, const RemoteRequest& r) {
    return p.file == r.expect && p.offset == r.offset &&
           p.tail == r.expect_tail;
  }

  // A channel other than `except` reads (or will read, once begun) the
  // file `id`.
  static bool HasChannelFor(const Stream& s, const FileId& id,
                            const Channel* except = nullptr) {
    for (const auto& c : s.channels) {
      if (c.closed || &c == except) continue;
      if (c.begun ? c.id == id : c.request.expect == id) return true;
    }
    return false;
  }

  // A saved rotated file's reader has not answered yet: a file listed NEWER
  // may be where the rest of that file went (its .gz), which only its BEGIN
  // tells.
  static bool AwaitingSavedReader(const Stream& s) {
    for (const auto& c : s.channels) {
      if (!c.closed && !c.begun && c.role == Channel::Role::kDraining &&
          c.request.mode == RemoteRequest::Mode::kInode &&
          c.request.offset > 0) {
        return true;
      }
    }
    return false;
  }

  // Opens draining channels for rotated files in `resume` that have none,
  // at most kMaxDrains at a time. Files to read whole wait for the saved
  // files' readers (see AwaitingSavedReader).
  void OpenPendingDrains(Stream& s) {
    size_t open = 0;
    for (const auto& c : s.channels) {
      if (!c.closed && c.role == Channel::Role::kDraining) ++open;
    }
    PositionSet todo = s.resume;  // OpenChannel may change s.resume
    for (const auto& p : todo) {
      if (open >= kMaxDrains) return;
      if (p.current || HasChannelFor(s, p.file)) continue;
      if (p.offset == 0 && AwaitingSavedReader(s)) return;
      RemoteRequest old = RestOf(p.file, p.offset, p.tail);
      if (p.offset == 0 &&
          std::find(s.saved_unread.begin(), s.saved_unread.end(), p.file) !=
              s.saved_unread.end()) {
        old.born_before_ns = s.saved_at;
      }
      if (!OpenChannel(s, old, Channel::Role::kDraining)) return;
      ++open;
    }
  }

  void StreamFailed(Stream& s, const std::string& reason,
                    const std::string& message) {
    Count(s, reason);
    if (s.last_failure != reason) {
      Log(LogLevel::kWarn, "source " + s.ref.spec->name + " (" + target_.label +
                               ":" + s.ref.spec->path + "): " + message +
                               " (reason=" + reason + ")");
      s.last_failure = reason;
    }
    // Channels are only marked: callers may still hold one; ReadAll() and
    // Serve() drop closed channels.
    for (auto& c : s.channels) {
      if (!c.closed) SaveChannelPosition(s, c);
      c.closed = true;
    }
    s.ref.status->up.store(false);
    if (po_.once) {
      s.done = true;
      return;
    }
    s.backoff = NextBackoff(s.backoff, so_.max_backoff);
    s.retry_at = Clock::now() + Jitter(s.backoff);
  }

  // Remembers where a channel got to, for the next reconnect.
  void SaveChannelPosition(Stream& s, Channel& c) {
    if (!c.begun || c.role == Channel::Role::kProbe) return;
    bool current = c.role == Channel::Role::kCurrent;
    auto& r = s.resume;
    r.erase(std::remove_if(r.begin(), r.end(),
                           [&](const FilePosition& p) {
                             return p.file == c.id || (current && p.current);
                           }),
            r.end());
    r.push_back(FilePosition{c.id, c.file_offset(), current, c.tail});
    s.fresh = false;
  }

  PositionSet Positions(const Stream& s) const {
    PositionSet set;
    for (const auto& c : s.channels) {
      if (!c.begun || c.role == Channel::Role::kProbe) continue;
      set.push_back(FilePosition{c.id, c.file_offset(),
                                 c.role == Channel::Role::kCurrent, c.tail});
    }
    // Files not reopened yet keep their saved place.
    for (const auto& p : s.resume) {
      bool have = false;
      for (const auto& q : set) have = have || q.file == p.file;
      if (!have && !(p.current && s.HasRole(Channel::Role::kCurrent))) {
        set.push_back(p);
      }
    }
    return set;
  }

  bool Publish(Stream& s) {
    PositionSet pos = Positions(s);
    for (const auto& p : pos) {
      if (p.current) s.ref.status->offset.store(p.offset);
    }
    uint64_t raw = s.pending_raw;
    s.pending_raw = 0;
    return s.builder.Flush(pos, raw);
  }

  // Handles one control line on a channel's stdout (before the data).
  void Control(Stream& s, Channel& c, const std::string& line) {
    std::string rest = line.substr(c.request.tag.size() + 1);
    if (rest == "MISSING") {
      c.missing = true;
      s.saw_missing = true;
      s.ref.status->up.store(false);
      if (!s.missing_logged) {
        Log(LogLevel::kWarn, "source " + s.ref.spec->name + ": waiting for " +
                                 target_.label + ":" + s.ref.spec->path +
                                 " (no such file) (reason=file_missing)");
        Count(s, "file_missing");
        s.missing_logged = true;
      }
      if (po_.once) s.done = true;
      return;
    }
    if (rest == "GONE" && c.request.newer_than_ns > 0) {
      s.unread_since = 0;  // every file rotated since is listed (NEWER)
      c.closed = true;
      OpenPendingDrains(s);
      return;
    }
    if (rest == "GONE" && c.gone_is_unknown) {
      c.closed = true;
      return;
    }
    if (rest == "GONE") {
      s.ref.status->files_lost.fetch_add(1);
      Log(LogLevel::kWarn, "source " + s.ref.spec->name +
                               ": a rotated file is gone before it was read "
                               "to its end; lines after offset " +
                               std::to_string(c.request.offset) +
                               " in it are lost");
      s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                    [&](const FilePosition& p) {
                                      return IsRequested(p, c.request);
                                    }),
                     s.resume.end());
      c.closed = true;
      OpenPendingDrains(s);
      return;
    }
    unsigned long long ndev, nino;
    if (std::sscanf(rest.c_str(), "NEWER %llu %llu", &ndev, &nino) == 2) {
      // Rotated after the file being caught up while we were away: read
      // whole. Kept in resume (offset 0) until its channel has begun.
      // A saved rotated file with this inode number, not reopened yet, may
      // be another file (the number is reused once a file is deleted): kept
      // too, and dropped if that file's reader finds it by inode (BEGIN).
      FileId id{ndev, nino};
      bool known = false;
      for (const auto& o : s.channels) {
        if (&o == &c || o.closed) continue;
        known = known ||
                (o.begun ? o.id == id
                         : o.request.expect == id && o.request.offset == 0);
      }
      for (const auto& p : s.resume) {
        known = known || (!p.current && p.file == id && p.offset == 0);
      }
      if (!known) {
        Log(LogLevel::kInfo, "source " + s.ref.spec->name +
                                 ": catching up: a file rotated while away "
                                 "is read whole");
        s.resume.push_back(FilePosition{id, 0, false, {}});
        OpenPendingDrains(s);
      }
      return;
    }
    if (rest == "NOACCESS") {
      StreamFailed(s, "permission",
                   "cannot read " + s.ref.spec->path +
                       " (permission denied? use sudo: true for root-only "
                       "logs)");
      return;
    }
    if (rest == "SAME") {  // a probe found no rotation
      c.closed = true;
      return;
    }
    unsigned long long dev, ino, start, size, now = 0;
    if (std::sscanf(rest.c_str(), "BEGIN %llu %llu %llu %llu %llu", &dev, &ino,
                    &start, &size, &now) < 4) {
      StreamFailed(s, "protocol", "unexpected reply from the remote reader");
      return;
    }
    c.begun = true;
    bool waited = c.missing;
    c.missing = false;
    c.id = FileId{dev, ino};
    c.base = static_cast<int64_t>(start);
    if (c.request.start_at_end && !waited && size >= start) {
      // Lines that end within the window were written before we started
      // (the window is the whole file when it is small).
      c.drop_until = size - start;
    }
    bool by_inode = c.request.mode == RemoteRequest::Mode::kInode;
    if (start > 0 && start == c.request.offset &&
        (c.id == c.request.expect || by_inode)) {
      // The script checked that these bytes are still before `start`.
      c.prefix = c.request.expect_tail;
      c.tail = c.prefix;
    }
    if (by_inode && !(c.id == c.request.expect)) {
      // Found by its fingerprint in a .gz: the channel's position (the .gz's
      // identity) replaces the saved one. A file listed NEWER with the saved
      // inode number is another one: it can be read now; the .gz listed
      // NEWER is this file.
      s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                    [&](const FilePosition& p) {
                                      return IsRequested(p, c.request) ||
                                             (!p.current && p.file == c.id &&
                                              p.offset == 0);
                                    }),
                     s.resume.end());
      OpenPendingDrains(s);
    } else if (by_inode && c.request.offset > 0) {
      // Found by inode (and content): a NEWER entry for it is this file.
      s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                    [&](const FilePosition& p) {
                                      return !p.current && p.file == c.id &&
                                             p.offset == 0;
                                    }),
                     s.resume.end());
    }
    bool rotated_while_away =
        c.request.expect.valid() && !(c.id == c.request.expect);
    if (c.role == Channel::Role::kProbe) {
      // The path now names another file: drain the old one, follow this.
      for (auto& o : s.channels) {
        if (&o != &c && o.role == Channel::Role::kCurrent) {
          o.role = Channel::Role::kDraining;
          o.last_data = Clock::now();
        }
      }
      c.role = Channel::Role::kCurrent;
      s.ref.status->rotations.fetch_add(1);
      Log(LogLevel::kInfo, "source " + s.ref.spec->name + ": " +
                               s.ref.spec->path +
                               " was rotated; draining the old file");
    } else if (c.role == Channel::Role::kCurrent && rotated_while_away) {
      // Rotated while we were disconnected: read the rest of the old one.
      s.ref.status->rotations.fetch_add(1);
      bool draining = false;
      for (const auto& o : s.channels) {
        draining = draining || (o.role == Channel::Role::kDraining &&
                                o.request.expect == c.request.expect);
      }
      if (!draining) {
        OpenChannel(s, CatchUp(c.request, now, s.restored ? s.saved_at : 0),
                    Channel::Role::kDraining);
      }
    } else if (c.role == Channel::Role::kCurrent && c.request.expect.valid() &&
               start == 0 && c.request.offset > 0) {
      // Truncated while away: the rest of what we were reading is in the
      // copy if it was copied first (copytruncate), maybe compressed since.
      s.ref.status->rotations.fetch_add(1);
      if (!c.request.expect_tail.empty()) {
        // Or a new file got our inode number: ours was deleted.
        if (OpenChannel(s, CatchUp(c.request, now, s.restored ? s.saved_at : 0),
                        Channel::Role::kDraining)) {
          s.channels.back().gone_is_unknown = true;
        }
      }
    }
    if (c.role == Channel::Role::kCurrent) {
      // Later catch-ups (after a reconnect) start from positions this run
      // committed: the save's time no longer dates anything.
      s.restored = false;
      s.ref.status->up.store(true);
      // --once: "read" means read to the end (see ChannelEnded).
      if (!po_.once) s.ref.status->connected_once.store(true);
      s.missing_logged = false;
      s.last_failure.clear();
      s.backoff = milliseconds(0);
    }
    s.fresh = false;
  }

  // Feeds stdout bytes of a channel.
  void Data(Stream& s, Channel& c, const char* p, size_t n) {
    c.last_data = Clock::now();
    while (!c.begun && n > 0 && !c.closed) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
      size_t used = nl ? static_cast<size_t>(nl - p) + 1 : n;
      c.header_bytes += used;
      if (nl == nullptr) {
        c.header_buf.append(p, n);
        if (c.header_buf.size() > kMaxHeaderLine ||
            c.header_bytes > kMaxHeaderBytes) {
          StreamFailed(s, "protocol",
                       "unexpected reply from the remote reader");
        }
        return;
      }
      c.header_buf.append(p, static_cast<size_t>(nl - p));
      n -= used;
      p = nl + 1;
      std::string line = std::move(c.header_buf);
      c.header_buf.clear();
      if (line.rfind(c.request.tag + " ", 0) != 0) {
        // e.g. a login banner or motd printed by a shell rc
        if (line.size() > kMaxHeaderLine || c.header_bytes > kMaxHeaderBytes) {
          StreamFailed(s, "protocol",
                       "unexpected reply from the remote reader");
          return;
        }
        AddErrText(c, line);
        continue;
      }
      Control(s, c, line);
    }
    if (!c.begun || n == 0 || c.closed) return;
    ChannelSink sink{c, s.builder, p, n};
    uint64_t before = c.splitter.complete_bytes();
    c.splitter.Feed(std::string_view(p, n), sink);
    uint64_t after = c.splitter.complete_bytes();
    s.pending_raw += after - before;
    if (after != before) c.tail = sink.FileTail(after);
    // Keep the last recent_max raw bytes.
    if (n >= c.recent_max) {
      c.recent.assign(p + n - c.recent_max, c.recent_max);
    } else {
      c.recent.append(p, n);
      if (c.recent.size() > c.recent_max) {
        c.recent.erase(0, c.recent.size() - c.recent_max);
      }
    }
    c.fed += n;
    if (sink.truncated) {
      s.ref.status->rotations.fetch_add(1);
      Log(LogLevel::kInfo, "source " + s.ref.spec->name +
                               ": file truncated; reading it from the start");
    }
  }

  // Handles stderr: heartbeats ("H dev ino size") and error text.
  void Stderr(Stream& s, Channel& c, const char* p, size_t n) {
    c.err_buf.append(p, n);
    size_t from = 0;
    size_t nl;
    while (!c.closed &&
           (nl = c.err_buf.find('\n', from)) != std::string::npos) {
      std::string_view line(c.err_buf.data() + from, nl - from);
      from = nl + 1;
      if (line.size() > kMaxStderrLine) {
        StreamFailed(s, "protocol", "over-long line from the remote reader");
        break;
      }
      if (line.rfind("H ", 0) != 0) {
        AddErrText(c, line);
        continue;
      }
      if (c.role != Channel::Role::kCurrent || !c.begun) continue;
      unsigned long long dev, ino;
      std::string l(line);
      if (std::sscanf(l.c_str(), "H %llu %llu", &dev, &ino) != 2) continue;
      FileId now{dev, ino};
      if (now == c.id || s.HasRole(Channel::Role::kProbe)) continue;
      RemoteRequest probe;
      probe.mode = RemoteRequest::Mode::kPath;
      probe.expect = c.id;
      probe.offset = c.file_offset();
      probe.same_is_noop = true;
      OpenChannel(s, probe, Channel::Role::kProbe);
    }
    c.err_buf.erase(0, from);
    if (!c.closed && c.err_buf.size() > kMaxStderrLine) {
      StreamFailed(s, "protocol", "over-long line from the remote reader");
    }
    if (c.closed) c.err_buf.clear();
  }

  // Reads everything available on every channel. Returns bytes read.
  size_t ReadAll() {
    size_t total = 0;
    for (auto& sp : streams_) {
      Stream& s = *sp;
      for (auto it = s.channels.begin(); it != s.channels.end();) {
        Channel& c = *it;
        size_t got = 0;
        while (!c.closed && got < kFairShare) {
          int n = ssh_channel_read_nonblocking(
              c.ch.get(), buf_.get(), static_cast<uint32_t>(kReadChunk), 0);
          if (n == SSH_ERROR) {
            Lost("disconnect", "connection lost: " +
                                   std::string(ssh_get_error(session_.get())));
            return total;
          }
          if (n <= 0) break;
          got += static_cast<size_t>(n);
          Data(s, c, buf_.get(), static_cast<size_t>(n));
          if (s.builder.full() && !Publish(s)) return total;
        }
        int n;
        while (!c.closed && got < 2 * kFairShare &&
               (n = ssh_channel_read_nonblocking(
                    c.ch.get(), buf_.get(), static_cast<uint32_t>(kReadChunk),
                    1)) > 0) {
          got += static_cast<size_t>(n);
          Stderr(s, c, buf_.get(), static_cast<size_t>(n));
        }
        total += got;
        if (!c.closed && ssh_channel_is_eof(c.ch.get()) &&
            ssh_channel_poll(c.ch.get(), 0) <= 0 &&
            ssh_channel_poll(c.ch.get(), 1) <= 0) {
          ChannelEnded(s, c);
        }
        if (c.closed) {
          if (c.role == Channel::Role::kCurrent) SaveChannelPosition(s, c);
          if (c.role == Channel::Role::kDraining && !c.begun && c.ended) {
            // Its reader failed before it started (GONE was handled in
            // Control): not retried for ever, counted.
            size_t before = s.resume.size();
            s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                          [&](const FilePosition& p) {
                                            return IsRequested(p, c.request);
                                          }),
                           s.resume.end());
            if (s.resume.size() != before) {
              s.ref.status->files_lost.fetch_add(1);
              Log(LogLevel::kWarn, "source " + s.ref.spec->name +
                                       ": cannot read a rotated file (" +
                                       RemoteMessage(c) +
                                       "); its lines are lost");
            }
          }
          if (c.role == Channel::Role::kDraining && c.begun) {
            s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                          [&](const FilePosition& p) {
                                            return p.file == c.id;
                                          }),
                           s.resume.end());
          }
          it = s.channels.erase(it);
        } else {
          ++it;
        }
      }
      if (!Publish(s)) return total;
    }
    return total;
  }

  void ChannelEnded(Stream& s, Channel& c) {
    if (po_.once && c.role == Channel::Role::kCurrent) {
      if (!c.begun && !c.missing) {
        StreamFailed(s, RemoteReason(c), RemoteMessage(c));
        return;
      }
      if (c.begun) s.ref.status->connected_once.store(true);
      c.closed = true;
      s.done = true;
      return;
    }
    if (c.closed) return;
    if (!c.begun && c.role == Channel::Role::kCurrent) {
      StreamFailed(s, RemoteReason(c), RemoteMessage(c));
      return;
    }
    if (c.role == Channel::Role::kCurrent) {
      // The remote tail ended (killed, or the file system went away).
      StreamFailed(s, "stream_ended",
                   "the remote reader stopped: " + RemoteMessage(c));
      return;
    }
    c.ended = true;
    c.closed = true;
  }

  static std::string RemoteReason(const Channel& c) {
    if (c.err_text.find("sudo") != std::string::npos) return "sudo";
    return "remote_error";
  }

  static std::string RemoteMessage(const Channel& c) {
    std::string t = c.err_text.empty() ? "no output" : c.err_text;
    while (!t.empty() && t.back() == ' ') t.pop_back();
    return "remote side said: " + t;
  }

  void Lost(const std::string& reason, const std::string& message) {
    Failure f{reason, message};
    ConnectionFailed(f);
  }

  // One connected session: open channels, read, watch liveness.
  void Serve() {
    for (auto& s : streams_) s->retry_at = Clock::now();
    while (session_ && !stop_.load() && !AllDone()) {
      TakeInbox();
      auto now = Clock::now();
      for (auto& s : streams_) {
        if (!s->done && !s->HasRole(Channel::Role::kCurrent) &&
            !s->HasRole(Channel::Role::kProbe) && now >= s->retry_at) {
          OpenStream(*s);
          if (!session_) return;
        } else if (!po_.once && s->HasRole(Channel::Role::kCurrent)) {
          OpenPendingDrains(*s);
          if (!session_) return;
        }
      }
      if (DropIfUnanswered()) return;
      // Reading one channel (or its stderr) can pull packets of another
      // into libssh's buffers; then the socket is quiet although data is
      // waiting, and polling it would sleep until the next deadline.
      int timeout = Buffered() ? 0 : NextTimeout();
      if (ssh_event_dopoll(event_.get(), timeout) == SSH_ERROR &&
          !ssh_is_connected(session_.get())) {
        Lost("disconnect",
             "connection lost: " + std::string(ssh_get_error(session_.get())));
        return;
      }
      if (stop_.load()) return;
      size_t got = ReadAll();
      if (!session_ || DropIfUnanswered()) return;
      now = Clock::now();
      bool listening = false;
      for (const auto& st : streams_) listening = listening || st->AnyOpen();
      // Silence counts only while a remote reader should be talking.
      if (got > 0 || !listening) last_rx_ = now;
      if (!ssh_is_connected(session_.get())) {
        Lost("disconnect", "connection closed by the server");
        return;
      }
      if (now - last_rx_ > StallLimit()) {
        Lost("stalled", "nothing received for " +
                            std::to_string(StallLimit().count() / 1000) +
                            "s (dead connection?)" +
                            (po_.once ? "" : "; reconnecting"));
        return;
      }
      CloseDrained(now);
    }
  }

  // A channel request went unanswered: the connection is dead, although no
  // channel was open to notice the silence. Reconnects like a stall.
  bool DropIfUnanswered() {
    if (!no_answer_) return false;
    no_answer_ = false;
    Lost("stalled", "a channel request got no answer (dead connection?)" +
                        std::string(po_.once ? "" : "; reconnecting"));
    return true;
  }

  // True if a channel has bytes or an end of file waiting in libssh.
  // Polling a buffer that is empty makes libssh read up to 4 KiB from the
  // socket, which can complete a packet for a buffer already looked at: a
  // second round sees it.
  bool Buffered() const {
    for (int round = 0; round < 2; ++round) {
      for (const auto& s : streams_) {
        for (const auto& c : s->channels) {
          if (c.closed) continue;
          if (ssh_channel_poll(c.ch.get(), 0) > 0 ||
              ssh_channel_poll(c.ch.get(), 1) > 0 ||
              ssh_channel_is_eof(c.ch.get())) {
            return true;
          }
        }
      }
    }
    return false;
  }

  void CloseDrained(Clock::time_point now) {
    for (auto& s : streams_) {
      for (auto& c : s->channels) {
        if (c.role == Channel::Role::kDraining && c.begun &&
            now - c.last_data >= drain_quiet_) {
          c.closed = true;
          s->resume.erase(std::remove_if(s->resume.begin(), s->resume.end(),
                                         [&](const FilePosition& p) {
                                           return p.file == c.id;
                                         }),
                          s->resume.end());
        }
      }
      s->channels.remove_if([](const Channel& c) { return c.closed; });
    }
  }

  // Silence after which a connection is dead: 3 heartbeats. --once has no
  // heartbeat (dd sends the file in one go), but a black-holed connection
  // must still end: the connect timeout, at least as long.
  milliseconds StallLimit() const {
    milliseconds hb3 = so_.heartbeat_interval * 3;
    return po_.once ? std::max(hb3, so_.connect_timeout) : hb3;
  }

  int NextTimeout() const {
    auto now = Clock::now();
    auto next = last_rx_ + StallLimit() + milliseconds(10);
    // While lines flow, wake at least every 50 ms: a packet completed behind
    // our back (see Buffered) then waits that long at most. Quiet
    // connections sleep until the next heartbeat.
    for (const auto& s : streams_) {
      for (const auto& c : s->channels) {
        if (!c.closed && now - c.last_data < std::chrono::seconds(1)) {
          next = std::min(next, now + milliseconds(50));
        }
      }
    }
    for (const auto& s : streams_) {
      if (!s->done && !s->HasRole(Channel::Role::kCurrent)) {
        next = std::min(next, s->retry_at);
      }
      for (const auto& c : s->channels) {
        if (c.role == Channel::Role::kDraining) {
          next = std::min(next, c.last_data + drain_quiet_);
        }
      }
    }
    if (next <= now) return 0;
    return static_cast<int>(
        std::chrono::duration_cast<milliseconds>(next - now).count() + 1);
  }

  const ProducerOptions po_;
  const SshOptions so_;
  BatchQueue& queue_;
  std::vector<std::unique_ptr<Stream>> streams_;
  SessionTarget target_;
  bool sudo_ = false;
  int hb_ = 5;
  milliseconds drain_quiet_{5000};
  UniqueFd stop_fd_;
  UniqueFd wake_fd_;  // AddSource
  std::mutex inbox_mutex_;
  std::vector<SshSourceRef> inbox_;  // guarded by inbox_mutex_
  std::vector<uint32_t> removed_;    // guarded by inbox_mutex_
  std::atomic<bool> stop_{false};
  SessionPtr session_;
  EventPtr event_;
  Clock::time_point connected_at_{};
  Clock::time_point last_rx_{};
  Clock::time_point next_connect_{};
  milliseconds backoff_{0};
  std::string last_failure_;
  bool no_answer_ = false;  // a channel request timed out; see Serve()
  // Not zeroed: only the bytes a read fills are touched (250 connections
  // would otherwise hold 16 MiB of zeros).
  std::unique_ptr<char[]> buf_{new char[kReadChunk]};
};

}  // namespace

std::string SshConnectionKey(const SourceSpec& s) {
  return s.user + "@" + s.host + ":" + std::to_string(s.port) +
         (s.sudo ? "/sudo" : "");
}

std::vector<std::unique_ptr<SshProducer>> MakeSshProducers(
    const std::vector<SshSourceRef>& sources, BatchQueue& queue,
    const ProducerOptions& producer_options, const SshOptions& ssh_options) {
  InitLibssh();
  std::map<std::string, std::vector<SshSourceRef>> groups;
  std::vector<std::string> order;
  for (const auto& r : sources) {
    std::string key = SshConnectionKey(*r.spec);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(r);
  }
  std::vector<std::unique_ptr<SshProducer>> out;
  size_t per =
      static_cast<size_t>(std::max(1, ssh_options.files_per_connection));
  for (const auto& key : order) {
    const auto& all = groups[key];
    for (size_t i = 0; i < all.size(); i += per) {
      std::vector<SshSourceRef> part(
          all.begin() + static_cast<long>(i),
          all.begin() + static_cast<long>(std::min(all.size(), i + per)));
      out.push_back(std::make_unique<SshConnection>(
          std::move(part), queue, producer_options, ssh_options));
    }
  }
  return out;
}

}  // namespace sshtail
