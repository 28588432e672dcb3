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
#include <random>
#include <string>
#include <vector>

#include "sshtail/line_splitter.h"
#include "sshtail/log.h"
#include "sshtail/remote_script.h"
#include "unique_fd.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kReadChunk = 64 * 1024;
// Read at most this much from one channel before serving the others.
constexpr size_t kFairShare = 4 * 1024 * 1024;

struct SessionDeleter {
  void operator()(ssh_session s) const {
    if (ssh_is_connected(s)) ssh_disconnect(s);
    ssh_free(s);
  }
};
using SessionPtr = std::unique_ptr<ssh_session_struct, SessionDeleter>;

struct ChannelDeleter {
  void operator()(ssh_channel c) const {
    if (ssh_channel_is_open(c)) ssh_channel_close(c);
    ssh_channel_free(c);
  }
};
using ChannelPtr = std::unique_ptr<ssh_channel_struct, ChannelDeleter>;

struct EventDeleter {
  void operator()(ssh_event e) const { ssh_event_free(e); }
};
using EventPtr = std::unique_ptr<ssh_event_struct, EventDeleter>;

struct KeyDeleter {
  void operator()(ssh_key k) const { ssh_key_free(k); }
};
using KeyPtr = std::unique_ptr<ssh_key_struct, KeyDeleter>;

// known_hosts is one file shared by every connection thread.
std::mutex& KnownHostsMutex() {
  static std::mutex m;
  return m;
}

// A connection-level failure: the reason label and a one-line message.
struct Failure {
  std::string reason;
  std::string message;
};

std::string ClassifyConnectError(const std::string& e) {
  auto has = [&](const char* s) { return e.find(s) != std::string::npos; };
  if (has("resolve") || has("Name or service not known") ||
      has("getaddrinfo") || has("No address")) {
    return "dns";
  }
  if (has("refused")) return "refused";
  if (has("imeout") || has("timed out")) return "timeout";
  if (has("unreachable")) return "unreachable";
  return "connect";
}

// One SSH channel running the remote script for one file.
struct Channel {
  enum class Role { kCurrent, kDraining, kProbe };
  explicit Channel(size_t max_line) : splitter(max_line) {}

  ChannelPtr ch;
  Role role = Role::kCurrent;
  RemoteRequest request;
  std::string header_buf;  // stdout before the BEGIN line
  bool begun = false;
  bool missing = false;
  FileId id;
  int64_t base = 0;         // file offset = base + splitter.complete_bytes()
  uint64_t drop_until = 0;  // stream bytes: lines ending here or before skip
  std::string marker;       // "tail: <nonce>: file truncated"
  LineSplitter splitter;
  std::string err_buf;   // stderr, split into lines
  std::string err_text;  // stderr that is not a heartbeat, for messages
  Clock::time_point last_data = Clock::now();
  bool closed = false;

  uint64_t file_offset() const {
    return static_cast<uint64_t>(
        base + static_cast<int64_t>(splitter.complete_bytes()));
  }
};

// Splitter sink for one channel: drops the start-at-end window, recognises
// the in-band truncation line, forwards the rest to the batch.
struct ChannelSink {
  Channel& c;
  BatchBuilder& b;
  bool truncated = false;

  void Line(std::string_view l) {
    uint64_t end = c.splitter.complete_bytes();
    const std::string& m = c.marker;
    if (l.size() >= m.size() && l.back() == 'd' &&
        std::memcmp(l.data() + l.size() - m.size(), m.data(), m.size()) == 0) {
      // Bytes after this line are the file from offset 0 again; what came
      // before the marker on this line was an unfinished line: dropped.
      c.base = -static_cast<int64_t>(end);
      c.drop_until = 0;
      truncated = true;
      return;
    }
    if (end <= c.drop_until) return;
    b.Line(l);
  }
  void TooLong() {
    if (c.splitter.complete_bytes() <= c.drop_until) return;
    b.TooLong();
  }
};

// One ssh:// source on this connection.
struct Stream {
  Stream(const SshSourceRef& r, BatchQueue& q, const ProducerOptions& po)
      : ref(r), builder(q, r.index, *r.status, po.batch_bytes) {}

  SshSourceRef ref;
  BatchBuilder builder;
  std::list<Channel> channels;
  // Where to resume after a reconnect: the current file and any rotated
  // files still being drained.
  PositionSet resume;
  bool fresh = true;  // never streamed: --start-at applies
  bool done = false;  // once mode: read to the end
  bool missing_logged = false;
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

class SshConnection : public Producer {
 public:
  SshConnection(std::vector<SshSourceRef> refs, BatchQueue& queue,
                const ProducerOptions& po, const SshOptions& so)
      : po_(po), so_(so), buf_(kReadChunk) {
    for (const auto& r : refs) {
      streams_.push_back(std::make_unique<Stream>(r, queue, po));
      Stream& s = *streams_.back();
      s.resume = r.status->positions.Committed();
      s.fresh = s.resume.empty();
    }
    const SourceSpec& first = *refs.front().spec;
    host_ = first.host;
    user_ = first.user.empty() ? so.default_user : first.user;
    port_ = first.port;
    sudo_ = first.sudo;
    label_ = (user_.empty() ? "" : user_ + "@") + host_ +
             (port_ ? ":" + std::to_string(port_) : "");
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    hb_ = std::max<int>(1,
                        static_cast<int>(so.heartbeat_interval.count() / 1000));
    drain_quiet_ = std::max(milliseconds(5000), so.heartbeat_interval * 2);
  }

  void RequestStop() override {
    stop_.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    while (!stop_.load() && !AllDone()) {
      if (!session_) {
        if (!WaitUntil(next_connect_)) break;
        Failure f;
        if (!Connect(&f)) {
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

  milliseconds NextBackoff(milliseconds current) {
    milliseconds next = current.count() == 0
                            ? milliseconds(1000)
                            : std::min(current * 2, so_.max_backoff);
    return next;
  }

  milliseconds Jitter(milliseconds d) {
    static thread_local std::mt19937 rng{std::random_device{}()};
    std::uniform_real_distribution<double> u(0.8, 1.2);
    return milliseconds(static_cast<long long>(d.count() * u(rng)));
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
      Log(LogLevel::kWarn,
          "ssh " + label_ + ": " + f.message + " (reason=" + f.reason + ")");
      last_failure_ = f.reason;
    }
    for (auto& s : streams_) {
      Count(*s, f.reason);
      s->ref.status->up.store(false);
      if (po_.once) s->done = true;  // --once does not wait for a host
    }
    Disconnect();
    backoff_ = NextBackoff(backoff_);
    next_connect_ = Clock::now() + Jitter(backoff_);
  }

  void Disconnect() {
    for (auto& s : streams_) {
      for (auto& c : s->channels) SaveChannelPosition(*s, c);
      s->channels.clear();
    }
    event_.reset();
    session_.reset();
  }

  std::string Fingerprint(ssh_session s) {
    ssh_key raw = nullptr;
    if (ssh_get_server_publickey(s, &raw) != SSH_OK) return "unknown key";
    KeyPtr key(raw);
    unsigned char* hash = nullptr;
    size_t hlen = 0;
    if (ssh_get_publickey_hash(key.get(), SSH_PUBLICKEY_HASH_SHA256, &hash,
                               &hlen) != 0) {
      return "unknown key";
    }
    char* fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
    std::string out =
        std::string(ssh_key_type_to_char(ssh_key_type(key.get()))) + " " +
        (fp ? fp : "?");
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&hash);
    return out;
  }

  // libssh 0.10 runs ProxyJump as `ssh -W [%h]:%p jumphost`: the OpenSSH
  // client must read the same config file (for the jump host's name, key
  // and known_hosts), and must never prompt.
  void AdjustProxyCommand(ssh_session ss) const {
    char* pc = nullptr;
    if (ssh_options_get(ss, SSH_OPTIONS_PROXYCOMMAND, &pc) != SSH_OK || !pc) {
      return;
    }
    std::string cmd = pc;
    ssh_string_free_char(pc);
    if (cmd.rfind("ssh ", 0) != 0) return;  // a user's own ProxyCommand
    std::string extra = "-o BatchMode=yes ";
    if (!so_.config_file.empty() && so_.config_file != "none") {
      extra += "-F " + ShellQuote(so_.config_file) + " ";
    }
    cmd.insert(4, extra);
    ssh_options_set(ss, SSH_OPTIONS_PROXYCOMMAND, cmd.c_str());
  }

  bool Connect(Failure* f) {
    SessionPtr s(ssh_new());
    if (!s) {
      *f = {"internal", "cannot allocate an SSH session"};
      return false;
    }
    ssh_session ss = s.get();
    ssh_options_set(ss, SSH_OPTIONS_HOST, host_.c_str());
    if (port_) {
      unsigned int p = static_cast<unsigned int>(port_);
      ssh_options_set(ss, SSH_OPTIONS_PORT, &p);
    }
    if (!user_.empty()) ssh_options_set(ss, SSH_OPTIONS_USER, user_.c_str());
    long timeout = std::max<long>(1, so_.connect_timeout.count() / 1000);
    ssh_options_set(ss, SSH_OPTIONS_TIMEOUT, &timeout);
    if (!so_.known_hosts.empty()) {
      ssh_options_set(ss, SSH_OPTIONS_KNOWNHOSTS, so_.known_hosts.c_str());
    }
    for (const auto& id : so_.identity_files) {
      ssh_options_set(ss, SSH_OPTIONS_ADD_IDENTITY, id.c_str());
    }
    // AES-GCM first: hardware-accelerated on the hosts we care about.
    const char* ciphers =
        "aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
        "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr";
    ssh_options_set(ss, SSH_OPTIONS_CIPHERS_C_S, ciphers);
    ssh_options_set(ss, SSH_OPTIONS_CIPHERS_S_C, ciphers);
    // Explicit options above win over ~/.ssh/config, as with OpenSSH.
    if (so_.config_file == "none") {
      int no = 0;
      ssh_options_set(ss, SSH_OPTIONS_PROCESS_CONFIG, &no);
    } else if (ssh_options_parse_config(
                   ss, so_.config_file.empty() ? nullptr
                                               : so_.config_file.c_str()) < 0) {
      *f = {"config",
            "cannot parse ssh config: " + std::string(ssh_get_error(ss))};
      return false;
    }
    AdjustProxyCommand(ss);
    if (ssh_connect(ss) != SSH_OK) {
      std::string e = ssh_get_error(ss);
      *f = {ClassifyConnectError(e), "cannot connect: " + e};
      return false;
    }
    std::string fp = Fingerprint(ss);
    {
      std::lock_guard lock(KnownHostsMutex());
      switch (ssh_session_is_known_server(ss)) {
        case SSH_KNOWN_HOSTS_OK:
          break;
        case SSH_KNOWN_HOSTS_CHANGED:
        case SSH_KNOWN_HOSTS_OTHER:
          *f = {"hostkey_changed",
                "REFUSED: host key changed to " + fp +
                    "; if that is expected, remove the old entry from "
                    "known_hosts (ssh-keygen -R)"};
          return false;
        case SSH_KNOWN_HOSTS_UNKNOWN:
        case SSH_KNOWN_HOSTS_NOT_FOUND:
          if (!so_.accept_new_host_keys) {
            *f = {"hostkey_unknown",
                  "REFUSED: host key " + fp +
                      " is not in known_hosts; add it (ssh-keyscan) or run "
                      "with --ssh.accept-new-host-keys"};
            return false;
          }
          if (ssh_session_update_known_hosts(ss) != SSH_OK) {
            *f = {"hostkey_error",
                  "cannot record host key " + fp + ": " + ssh_get_error(ss)};
            return false;
          }
          Log(LogLevel::kInfo,
              "ssh " + label_ + ": recorded new host key " + fp);
          break;
        case SSH_KNOWN_HOSTS_ERROR:
        default:
          *f = {"hostkey_error",
                "cannot check host key: " + std::string(ssh_get_error(ss))};
          return false;
      }
    }
    int rc = ssh_userauth_none(ss, nullptr);
    if (rc != SSH_AUTH_SUCCESS) {
      rc = ssh_userauth_publickey_auto(ss, nullptr, nullptr);
    }
    if (rc != SSH_AUTH_SUCCESS) {
      char* user = nullptr;
      ssh_options_get(ss, SSH_OPTIONS_USER, &user);
      std::string who = user ? user : "?";
      ssh_string_free_char(user);
      *f = {"auth", "authentication failed for user " + who +
                        " (no key from the agent, --ssh.identity-file or "
                        "~/.ssh was accepted)"};
      return false;
    }
    EventPtr ev(ssh_event_new());
    ssh_event_add_session(ev.get(), ss);
    ssh_event_add_fd(ev.get(), stop_fd_.get(), POLLIN, &SshConnection::OnStop,
                     this);
    session_ = std::move(s);
    event_ = std::move(ev);
    connected_at_ = Clock::now();
    last_rx_ = Clock::now();
    if (!last_failure_.empty()) {
      Log(LogLevel::kInfo, "ssh " + label_ + ": connected");
    }
    last_failure_.clear();
    return true;
  }

  static int OnStop(socket_t fd, int, void*) {
    uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(fd, &v, sizeof v);
    return 0;
  }

  std::string Command() const { return sudo_ ? "sudo -n sh -s" : "sh -s"; }

  // Opens a channel running the script for `req`. False on failure.
  bool OpenChannel(Stream& s, RemoteRequest req, Channel::Role role) {
    req.path = s.ref.spec->path;
    req.heartbeat_seconds = hb_;
    req.tag = RandomTag();
    req.nonce_path = RandomNoncePath();
    ChannelPtr ch(ssh_channel_new(session_.get()));
    if (!ch || ssh_channel_open_session(ch.get()) != SSH_OK) {
      std::string e = ssh_get_error(session_.get());
      if (e.empty()) e = "refused by the server";
      StreamFailed(s, "channel",
                   "cannot open a channel: " + e +
                       " (sshd's MaxSessions too low for "
                       "--ssh.files-per-connection?)");
      return false;
    }
    std::string script = RemoteScript(req);
    if (ssh_channel_request_exec(ch.get(), Command().c_str()) != SSH_OK ||
        ssh_channel_write(ch.get(), script.data(),
                          static_cast<uint32_t>(script.size())) !=
            static_cast<int>(script.size()) ||
        ssh_channel_send_eof(ch.get()) != SSH_OK) {
      std::string e = ssh_get_error(session_.get());
      if (e.empty()) e = "the server closed the channel";
      StreamFailed(s, "channel", "cannot start the remote reader: " + e);
      return false;
    }
    Channel& c = s.channels.emplace_back(po_.max_line_bytes);
    c.ch = std::move(ch);
    c.role = role;
    c.request = std::move(req);
    c.marker = "tail: " + c.request.nonce_path + ": file truncated";
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
      }
    }
    if (s.fresh && po_.start_at == StartAt::kEnd) {
      cur.start_at_end = true;
      cur.end_window = po_.max_line_bytes + 2;
    }
    if (!OpenChannel(s, cur, Channel::Role::kCurrent)) return;
    for (const auto& p : s.resume) {
      if (p.current) continue;
      RemoteRequest old;
      old.mode = RemoteRequest::Mode::kInode;
      old.expect = p.file;
      old.offset = p.offset;
      if (!OpenChannel(s, old, Channel::Role::kDraining)) return;
    }
  }

  void StreamFailed(Stream& s, const std::string& reason,
                    const std::string& message) {
    Count(s, reason);
    if (s.last_failure != reason) {
      Log(LogLevel::kWarn, "source " + s.ref.spec->name + " (" + label_ + ":" +
                               s.ref.spec->path + "): " + message +
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
    s.backoff = NextBackoff(s.backoff);
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
    r.push_back(FilePosition{c.id, c.file_offset(), current});
    s.fresh = false;
  }

  PositionSet Positions(const Stream& s) const {
    PositionSet set;
    for (const auto& c : s.channels) {
      if (!c.begun || c.role == Channel::Role::kProbe) continue;
      set.push_back(FilePosition{c.id, c.file_offset(),
                                 c.role == Channel::Role::kCurrent});
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
      s.ref.status->up.store(false);
      if (!s.missing_logged) {
        Log(LogLevel::kWarn, "source " + s.ref.spec->name + ": waiting for " +
                                 label_ + ":" + s.ref.spec->path +
                                 " (no such file) (reason=file_missing)");
        Count(s, "file_missing");
        s.missing_logged = true;
      }
      if (po_.once) s.done = true;
      return;
    }
    if (rest == "GONE") {
      Log(LogLevel::kWarn, "source " + s.ref.spec->name +
                               ": a rotated file is gone before it was read "
                               "to its end; lines after offset " +
                               std::to_string(c.request.offset) +
                               " in it are lost");
      s.resume.erase(std::remove_if(s.resume.begin(), s.resume.end(),
                                    [&](const FilePosition& p) {
                                      return p.file == c.request.expect;
                                    }),
                     s.resume.end());
      c.closed = true;
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
    unsigned long long dev, ino, start, size;
    if (std::sscanf(rest.c_str(), "BEGIN %llu %llu %llu %llu", &dev, &ino,
                    &start, &size) != 4) {
      StreamFailed(s, "protocol", "unexpected reply from the remote reader");
      return;
    }
    c.begun = true;
    c.missing = false;
    c.id = FileId{dev, ino};
    c.base = static_cast<int64_t>(start);
    if (c.request.start_at_end && start > 0) {
      // Lines that end within the window were written before we started.
      c.drop_until = size - start;
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
        RemoteRequest old;
        old.mode = RemoteRequest::Mode::kInode;
        old.expect = c.request.expect;
        old.offset = c.request.offset;
        OpenChannel(s, old, Channel::Role::kDraining);
      }
    } else if (c.role == Channel::Role::kCurrent && c.request.expect.valid() &&
               start == 0 && c.request.offset > 0) {
      s.ref.status->rotations.fetch_add(1);  // truncated while away
    }
    if (c.role == Channel::Role::kCurrent) {
      s.ref.status->up.store(true);
      s.ref.status->connected_once.store(true);
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
      if (nl == nullptr) {
        c.header_buf.append(p, n);
        if (c.header_buf.size() > 4096) {
          StreamFailed(s, "protocol",
                       "unexpected reply from the remote reader");
        }
        return;
      }
      c.header_buf.append(p, static_cast<size_t>(nl - p));
      n -= static_cast<size_t>(nl - p) + 1;
      p = nl + 1;
      std::string line = std::move(c.header_buf);
      c.header_buf.clear();
      if (line.rfind(c.request.tag + " ", 0) != 0) {
        c.err_text += line + " ";
        continue;  // e.g. a login banner or motd printed by a shell rc
      }
      Control(s, c, line);
    }
    if (!c.begun || n == 0 || c.closed) return;
    ChannelSink sink{c, s.builder};
    uint64_t before = c.splitter.complete_bytes();
    c.splitter.Feed(std::string_view(p, n), sink);
    s.pending_raw += c.splitter.complete_bytes() - before;
    if (sink.truncated) {
      s.ref.status->rotations.fetch_add(1);
      Log(LogLevel::kInfo, "source " + s.ref.spec->name +
                               ": file truncated; reading it from the start");
    }
  }

  // Handles stderr: heartbeats ("H dev ino size") and error text.
  void Stderr(Stream& s, Channel& c, const char* p, size_t n) {
    c.err_buf.append(p, n);
    size_t nl;
    while ((nl = c.err_buf.find('\n')) != std::string::npos) {
      std::string line = c.err_buf.substr(0, nl);
      c.err_buf.erase(0, nl + 1);
      if (line.rfind("H ", 0) != 0) {
        if (c.err_text.size() < 1024) c.err_text += line + " ";
        continue;
      }
      if (c.role != Channel::Role::kCurrent || !c.begun) continue;
      unsigned long long dev, ino;
      if (std::sscanf(line.c_str(), "H %llu %llu", &dev, &ino) != 2) continue;
      FileId now{dev, ino};
      if (now == c.id || s.HasRole(Channel::Role::kProbe)) continue;
      RemoteRequest probe;
      probe.mode = RemoteRequest::Mode::kPath;
      probe.expect = c.id;
      probe.offset = c.file_offset();
      probe.same_is_noop = true;
      OpenChannel(s, probe, Channel::Role::kProbe);
    }
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
              c.ch.get(), buf_.data(), static_cast<uint32_t>(buf_.size()), 0);
          if (n == SSH_ERROR) {
            Lost("disconnect", "connection lost: " +
                                   std::string(ssh_get_error(session_.get())));
            return total;
          }
          if (n <= 0) break;
          got += static_cast<size_t>(n);
          Data(s, c, buf_.data(), static_cast<size_t>(n));
          if (s.builder.full() && !Publish(s)) return total;
        }
        int n;
        while (!c.closed && (n = ssh_channel_read_nonblocking(
                                 c.ch.get(), buf_.data(),
                                 static_cast<uint32_t>(buf_.size()), 1)) > 0) {
          got += static_cast<size_t>(n);
          Stderr(s, c, buf_.data(), static_cast<size_t>(n));
        }
        total += got;
        if (!c.closed && ssh_channel_is_eof(c.ch.get()) &&
            ssh_channel_poll(c.ch.get(), 0) <= 0 &&
            ssh_channel_poll(c.ch.get(), 1) <= 0) {
          ChannelEnded(s, c);
        }
        if (c.closed) {
          if (c.role == Channel::Role::kCurrent) SaveChannelPosition(s, c);
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
      auto now = Clock::now();
      for (auto& s : streams_) {
        if (!s->done && !s->HasRole(Channel::Role::kCurrent) &&
            !s->HasRole(Channel::Role::kProbe) && now >= s->retry_at) {
          OpenStream(*s);
          if (!session_) return;
        }
      }
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
      if (!session_) return;
      now = Clock::now();
      bool listening = false;
      for (const auto& st : streams_) listening = listening || st->AnyOpen();
      // Silence counts only while a remote reader should be talking.
      if (got > 0 || !listening) last_rx_ = now;
      if (!ssh_is_connected(session_.get())) {
        Lost("disconnect", "connection closed by the server");
        return;
      }
      if (!po_.once && now - last_rx_ > so_.heartbeat_interval * 3) {
        Lost("stalled", "nothing received for " + std::to_string(3 * hb_) +
                            "s (dead connection?); reconnecting");
        return;
      }
      CloseDrained(now);
    }
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

  int NextTimeout() const {
    auto now = Clock::now();
    auto next = last_rx_ + so_.heartbeat_interval * 3 + milliseconds(10);
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
  std::vector<std::unique_ptr<Stream>> streams_;
  std::string host_;
  std::string user_;
  int port_ = 0;
  bool sudo_ = false;
  std::string label_;
  int hb_ = 5;
  milliseconds drain_quiet_{5000};
  UniqueFd stop_fd_;
  std::atomic<bool> stop_{false};
  SessionPtr session_;
  EventPtr event_;
  Clock::time_point connected_at_{};
  Clock::time_point last_rx_{};
  Clock::time_point next_connect_{};
  milliseconds backoff_{0};
  std::string last_failure_;
  std::vector<char> buf_;
};

}  // namespace

std::vector<std::unique_ptr<Producer>> MakeSshProducers(
    const std::vector<SshSourceRef>& sources, BatchQueue& queue,
    const ProducerOptions& producer_options, const SshOptions& ssh_options) {
  static std::once_flag init;
  std::call_once(init, [] { ssh_init(); });
  // Sources sharing user, host, port and sudo share connections.
  std::map<std::string, std::vector<SshSourceRef>> groups;
  std::vector<std::string> order;
  for (const auto& r : sources) {
    const SourceSpec& s = *r.spec;
    std::string key = s.user + "@" + s.host + ":" + std::to_string(s.port) +
                      (s.sudo ? "/sudo" : "");
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(r);
  }
  std::vector<std::unique_ptr<Producer>> out;
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
