#include "sshtail/syslog_producer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "sshtail/log.h"
#include "sshtail/text_format.h"
#include "util/unique_fd.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;

// Lines are held this long before their batch is pushed: at 10,000 lines/s
// that is one batch per 25 ms instead of one per wake-up, which keeps the
// queue (16 batches by default) from filling with tiny batches.
constexpr auto kFlushDelay = std::chrono::milliseconds(25);
// Datagrams read per wake-up before pending batches are checked again.
constexpr int kMaxReadsPerWake = 4096;
// UDP: room for bursts while the reader is not scheduled. Capped by
// net.core.rmem_max unless we may force it (CAP_NET_ADMIN).
constexpr int kUdpReceiveBuffer = 8 * 1024 * 1024;
// Longest hostname and tag we accept (RFC 1035 names; nginx tags <= 32).
constexpr size_t kMaxHostname = 255;
constexpr size_t kMaxTag = 64;

bool Digit(char c) { return c >= '0' && c <= '9'; }
bool Printable(char c) { return c > ' ' && c <= '~'; }

// "Mmm dd hh:mm:ss" (the day space-padded, as nginx and RFC 3164 write it).
bool ValidTimestamp(std::string_view t) {
  static constexpr std::string_view kMonths[] = {"Jan", "Feb", "Mar", "Apr",
                                                 "May", "Jun", "Jul", "Aug",
                                                 "Sep", "Oct", "Nov", "Dec"};
  if (t.size() != 15) return false;
  if (std::find(std::begin(kMonths), std::end(kMonths), t.substr(0, 3)) ==
      std::end(kMonths)) {
    return false;
  }
  if (t[3] != ' ' || !(t[4] == ' ' || Digit(t[4])) || !Digit(t[5]) ||
      t[6] != ' ') {
    return false;
  }
  return Digit(t[7]) && Digit(t[8]) && t[9] == ':' && Digit(t[10]) &&
         Digit(t[11]) && t[12] == ':' && Digit(t[13]) && Digit(t[14]);
}

std::string Errno() { return std::strerror(errno); }

[[noreturn]] void Fail(const SourceSpec& spec, const std::string& why) {
  throw std::invalid_argument("source '" + spec.url + "': " + why);
}

sockaddr_un UnixAddress(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.data(), path.size());  // checked by the parser
  return a;
}

// Creates the unix datagram socket at spec.path. An old socket there is
// removed only if nobody is bound to it (a datagram connect() to a bound
// socket succeeds); anything else at the path is refused.
UniqueFd BindUnix(const SourceSpec& spec, struct stat* bound) {
  sockaddr_un addr = UnixAddress(spec.path);
  struct stat st {};
  if (::lstat(spec.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      Fail(spec, spec.path + " exists and is not a socket; not replacing it");
    }
    UniqueFd probe(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr),
                           sizeof addr) == 0) {
      Fail(spec, spec.path + " is in use by another process");
    }
    if (::unlink(spec.path.c_str()) != 0) {
      Fail(spec,
           "cannot remove the stale socket " + spec.path + ": " + Errno());
    }
  } else if (errno != ENOENT) {
    Fail(spec, "cannot check " + spec.path + ": " + Errno());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) Fail(spec, "socket: " + Errno());
  // Sending needs write permission on the socket file. bind() creates it
  // 0777 & ~umask; with umask 0177 it is 0600 from the start (no window in
  // which others could connect), then widened to the group. The exporter is
  // still single-threaded here, so changing the umask races with nothing.
  mode_t old_mask = ::umask(0177);
  int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int bind_errno = errno;
  ::umask(old_mask);
  if (rc != 0) {
    errno = bind_errno;
    Fail(spec, "cannot create the socket " + spec.path + ": " + Errno());
  }
  if (::chmod(spec.path.c_str(), 0660) != 0 ||
      ::lstat(spec.path.c_str(), bound) != 0) {
    Fail(spec, "cannot set the mode of " + spec.path + ": " + Errno());
  }
  return fd;
}

UniqueFd BindUdp(const SourceSpec& spec) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  bool v6 = spec.host.find(':') != std::string::npos;
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(spec.port));
    if (::inet_pton(AF_INET6, spec.host.c_str(), &a->sin6_addr) != 1) {
      Fail(spec, "not an IPv6 address");
    }
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(spec.port));
    if (::inet_pton(AF_INET, spec.host.c_str(), &a->sin_addr) != 1) {
      Fail(spec, "not an IPv4 address");
    }
    len = sizeof *a;
  }
  UniqueFd fd(::socket(v6 ? AF_INET6 : AF_INET,
                       SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) Fail(spec, "socket: " + Errno());
  int size = kUdpReceiveBuffer;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) !=
      0) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  int on = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    Fail(spec, "cannot bind " + spec.name + ": " + Errno());
  }
  return fd;
}

class SyslogProducer : public Producer {
 public:
  SyslogProducer(const SourceSpec& spec, uint32_t index, SourceStatus& status,
                 std::vector<SyslogHostSlot> host_slots,
                 std::shared_ptr<SyslogNames> names, BatchQueue& queue,
                 const ProducerOptions& options)
      : spec_(spec),
        names_(std::move(names)),
        status_(status),
        max_line_(options.max_line_bytes),
        buf_(options.max_line_bytes + kSyslogHeaderRoom + 2) {
    if (spec.kind == SourceSpec::Kind::kSyslogUnix) {
      fd_ = BindUnix(spec, &bound_);
    } else {
      fd_ = BindUdp(spec);
    }
    stop_fd_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    slots_.reserve(host_slots.size() + 1);
    slots_.push_back(Slot{{queue, index, status, options.batch_bytes}, 0});
    for (const auto& h : host_slots) {
      // A host slot is not a source to wait for (/-/ready).
      h.status->connected_once.store(true);
      slots_.push_back(
          Slot{{queue, h.index, *h.status, options.batch_bytes}, 0});
      free_names_.push_back(h.name);
    }
    std::reverse(free_names_.begin(), free_names_.end());
  }

  ~SyslogProducer() override {
    // Remove our socket file, unless something else has replaced it.
    struct stat st {};
    if (spec_.kind == SourceSpec::Kind::kSyslogUnix &&
        ::lstat(spec_.path.c_str(), &st) == 0 && st.st_ino == bound_.st_ino &&
        st.st_dev == bound_.st_dev) {
      ::unlink(spec_.path.c_str());
    }
  }

  void RequestStop() override {
    stop_.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_.get(), &one, sizeof one);
  }

  void Run() override {
    status_.up.store(true);
    status_.connected_once.store(true);
    Log(LogLevel::kInfo,
        "source " + spec_.name + ": receiving syslog on " +
            (spec_.kind == SourceSpec::Kind::kSyslogUnix ? spec_.path
                                                         : spec_.name));
    bool open = true;
    while (open && !stop_.load()) {
      int timeout = -1;  // nothing pending: sleep until a datagram or stop
      if (pending_since_) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        *pending_since_ + kFlushDelay - Clock::now())
                        .count();
        timeout = static_cast<int>(std::max<long long>(left, 0));
      }
      struct pollfd fds[2] = {{stop_fd_.get(), POLLIN, 0},
                              {fd_.get(), POLLIN, 0}};
      int r = ::poll(fds, 2, timeout);
      if (r < 0 && errno != EINTR) {
        Log(LogLevel::kError, "source " + spec_.name + ": poll: " + Errno());
        break;
      }
      if (r > 0 && (fds[1].revents & POLLIN)) open = Drain();
      if (open && pending_since_ &&
          Clock::now() - *pending_since_ >= kFlushDelay) {
        open = FlushAll();
      }
    }
    // Whatever the kernel already holds was sent before we were asked to
    // stop: count it too.
    if (open && Drain()) FlushAll();
    status_.up.store(false);
  }

 private:
  struct Slot {
    BatchBuilder builder;
    uint64_t raw = 0;  // bytes of lines not yet pushed
  };

  // Reads what is queued on the socket. Returns false once the queue is
  // closed.
  bool Drain() {
    for (int i = 0; i < kMaxReadsPerWake; ++i) {
      iovec iov{buf_.data(), buf_.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(uint32_t))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      // MSG_TRUNC: the return value is the datagram's real length.
      ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          Log(LogLevel::kWarn, "source " + spec_.name + ": recv: " + Errno());
        }
        break;
      }
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
           c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL) {
          uint32_t drops = 0;
          std::memcpy(&drops, CMSG_DATA(c), sizeof drops);
          status_.syslog_dropped.store(drops, std::memory_order_relaxed);
        }
      }
      size_t got = std::min(static_cast<size_t>(n), buf_.size());
      bool truncated = static_cast<size_t>(n) > buf_.size() ||
                       (msg.msg_flags & MSG_TRUNC) != 0;
      if (!Datagram(std::string_view(buf_.data(), got), truncated)) {
        return false;
      }
    }
    return true;
  }

  bool Datagram(std::string_view d, bool truncated) {
    SyslogMessage m;
    bool parsed = ParseSyslogDatagram(d, &m);
    // A cut-off datagram is too long, not malformed; its header names the
    // sender when it made it into the buffer.
    if (truncated) return TooLong(parsed ? m.hostname : std::string_view());
    if (!parsed) {
      status_.syslog_malformed.fetch_add(1, std::memory_order_relaxed);
      if (!warned_malformed_) {
        warned_malformed_ = true;
        Log(LogLevel::kWarn,
            "source " + spec_.name +
                ": a datagram without an RFC 3164 header (counted in "
                "sshtail_syslog_datagrams_malformed_total; logged once)");
      }
      return true;
    }
    if (m.message.size() > max_line_) return TooLong(m.hostname);
    Slot& s = SlotFor(m.hostname);
    s.builder.Line(m.message);
    s.raw += m.message.size() + 1;
    return Pending(s);
  }

  bool TooLong(std::string_view hostname) {
    Slot& s = SlotFor(hostname);
    s.builder.TooLong();
    return Pending(s);
  }

  bool Pending(Slot& s) {
    if (!pending_since_) pending_since_ = Clock::now();
    if (!s.builder.full()) return true;
    bool ok = s.builder.Flush({}, s.raw);
    s.raw = 0;
    return ok;
  }

  // A hostname that names a configured source (or another socket's sender)
  // would write into that source's series: its lines count under the
  // socket's own name, and as a conflict.
  Slot& Conflict(std::string_view hostname) {
    status_.syslog_name_conflicts.fetch_add(1, std::memory_order_relaxed);
    if (!warned_conflict_) {
      warned_conflict_ = true;
      Log(LogLevel::kWarn,
          "source " + spec_.name + ": sender hostname '" +
              text::ValidUtf8(hostname) +
              "' is the name of another source; its lines are counted as " +
              spec_.name +
              " (sshtail_syslog_hostname_conflicts_total; logged once)");
    }
    return slots_[0];
  }

  Slot& SlotFor(std::string_view hostname) {
    if (hostname.empty()) return slots_[0];
    auto it = host_slot_.find(std::string(hostname));
    if (it != host_slot_.end()) return slots_[it->second];
    const std::string name = text::ValidUtf8(hostname);
    if (free_names_.empty()) {
      if (names_ && names_->TakenByOther(name, this)) {
        return Conflict(hostname);
      }
      if (!warned_hosts_) {
        warned_hosts_ = true;
        Log(LogLevel::kWarn,
            "source " + spec_.name + ": more than " +
                std::to_string(kSyslogMaxHosts) +
                " sender hostnames; lines of new ones are counted as " +
                spec_.name);
      }
      return slots_[0];  // not remembered: the map stays bounded too
    }
    if (names_ && !names_->Claim(name, this)) return Conflict(hostname);
    // Written before this slot's first batch is pushed (see SyslogHostSlot).
    *free_names_.back() = name;
    free_names_.pop_back();
    size_t slot = slots_.size() - free_names_.size() - 1;
    host_slot_.emplace(std::string(hostname), slot);
    return slots_[slot];
  }

  bool FlushAll() {
    bool ok = true;
    bool lines = false;
    for (auto& s : slots_) {
      if (s.builder.empty()) continue;
      lines = true;
      ok = s.builder.Flush({}, s.raw) && ok;
      s.raw = 0;
    }
    pending_since_.reset();
    if (lines) {
      // Host slots keep their own status; the socket's shows the last line.
      double now = std::chrono::duration<double>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
      status_.last_line_time.store(now, std::memory_order_relaxed);
    }
    return ok;
  }

  const SourceSpec spec_;
  const std::shared_ptr<SyslogNames> names_;
  SourceStatus& status_;
  const size_t max_line_;
  std::vector<char> buf_;
  UniqueFd fd_;
  UniqueFd stop_fd_;
  struct stat bound_ {};
  std::vector<Slot> slots_;               // [0]: the socket's own name
  std::vector<std::string*> free_names_;  // names of unused host slots
  std::unordered_map<std::string, size_t> host_slot_;  // hostname -> slot
  std::optional<Clock::time_point> pending_since_;
  std::atomic<bool> stop_{false};
  bool warned_malformed_ = false;
  bool warned_hosts_ = false;
  bool warned_conflict_ = false;
};

}  // namespace

SyslogNames::SyslogNames(const std::vector<std::string>& configured) {
  for (const auto& n : configured) owner_.emplace(n, nullptr);
}

bool SyslogNames::Claim(const std::string& name, const void* owner) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = owner_.emplace(name, owner);
  return inserted || it->second == owner;
}

bool SyslogNames::Reserve(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = owner_.emplace(name, nullptr);
  return inserted || it->second == nullptr;
}

bool SyslogNames::TakenByOther(const std::string& name,
                               const void* owner) const {
  std::lock_guard lock(mutex_);
  auto it = owner_.find(name);
  return it != owner_.end() && it->second != owner;
}

bool ParseSyslogDatagram(std::string_view d, SyslogMessage* out) {
  // <PRI>: 1 to 3 digits, at most 191 (facility 23, severity 7).
  if (d.size() < 3 || d[0] != '<') return false;
  size_t i = 1;
  int pri = 0;
  while (i < d.size() && i <= 3 && Digit(d[i])) pri = pri * 10 + (d[i++] - '0');
  if (i == 1 || i >= d.size() || d[i] != '>' || pri > 191) return false;
  d.remove_prefix(i + 1);
  if (d.size() < 16 || !ValidTimestamp(d.substr(0, 15)) || d[15] != ' ') {
    return false;
  }
  d.remove_prefix(16);
  // The next word is the hostname, or (nginx's `nohostname`) the tag, which
  // ends with ':' where a hostname cannot.
  size_t sp = d.find(' ');
  std::string_view first = d.substr(0, sp);
  std::string_view host;
  std::string_view tag;
  if (!first.empty() && first.back() == ':') {
    tag = first;
  } else {
    if (sp == std::string_view::npos) return false;
    host = first;
    d.remove_prefix(sp + 1);
    sp = d.find(' ');
    tag = d.substr(0, sp);
    if (tag.empty() || tag.back() != ':') return false;
  }
  tag.remove_suffix(1);
  if (host.size() > kMaxHostname || tag.empty() || tag.size() > kMaxTag) {
    return false;
  }
  for (char c : host) {
    if (!Printable(c)) return false;
  }
  for (char c : tag) {
    if (!Printable(c)) return false;
  }
  std::string_view msg =
      sp == std::string_view::npos ? std::string_view() : d.substr(sp + 1);
  if (!msg.empty() && msg.back() == '\n') msg.remove_suffix(1);
  if (!msg.empty() && msg.back() == '\r') msg.remove_suffix(1);
  if (msg.find('\n') != std::string_view::npos) return false;
  out->priority = pri;
  out->hostname = host;
  out->tag = tag;
  out->message = msg;
  return true;
}

std::unique_ptr<Producer> MakeSyslogProducer(
    const SourceSpec& spec, uint32_t index, SourceStatus& status,
    std::vector<SyslogHostSlot> host_slots, std::shared_ptr<SyslogNames> names,
    BatchQueue& queue, const ProducerOptions& options) {
  return std::make_unique<SyslogProducer>(spec, index, status,
                                          std::move(host_slots),
                                          std::move(names), queue, options);
}

}  // namespace sshtail
