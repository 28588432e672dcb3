#include "web/conn_gate.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "sshtail/log.h"

namespace sshtail {
namespace {

using Clock = std::chrono::steady_clock;
// Client -> backend: requests (headers <= 16 KiB). Backend -> client: an
// exposition of 1 MB passes in 16 reads instead of 64: fewer wake-ups of
// this thread while the parsers keep both cores busy.
constexpr size_t kUpBuffer = 16 * 1024;
constexpr size_t kDownBuffer = 64 * 1024;

// Tags in epoll_event.data.u64 for the two fixed fds.
constexpr uint64_t kListenTag = 1;
constexpr uint64_t kStopTag = 2;

std::string PeerKey(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr,
                buf, sizeof buf);
  } else if (ss.ss_family == AF_INET6) {
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr,
                buf, sizeof buf);
  }
  return buf;
}

// Bytes in flight one way: [off, off + len) of data.
struct Buffer {
  std::vector<char> data;
  size_t off = 0, len = 0;
  // Reads from fd into the free tail (compacting first if the head has
  // room). >0 bytes read, 0 EOF, -1 error (errno).
  ssize_t Fill(int fd) {
    if (off > 0 && off + len == data.size()) {
      std::memmove(data.data(), data.data() + off, len);
      off = 0;
    }
    ssize_t n = ::recv(fd, data.data() + off + len, data.size() - off - len, 0);
    if (n > 0) len += static_cast<size_t>(n);
    return n;
  }
  ssize_t Drain(int fd) {
    ssize_t n = ::send(fd, data.data() + off, len, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      len -= static_cast<size_t>(n);
      if (len == 0) off = 0;
    }
    return n;
  }
};

}  // namespace

struct ConnGate::Loop {
  struct Peer;
  // One client connection: waiting (held, not relayed) or relaying.
  struct Conn {
    UniqueFd client;
    UniqueFd backend;
    Peer* peer = nullptr;
    Clock::time_point accepted;
    bool relaying = false;
    bool eligible = false;  // waiting, and the client has sent something
    std::list<Conn*>::iterator by_time;   // in waiting_
    std::list<Conn*>::iterator in_queue;  // in peer->eligible, if eligible
    // Relay state: client -> backend, backend -> client.
    Buffer up, down;
    bool client_eof = false, backend_eof = false, up_shut = false;
  };
  struct Peer {
    std::string key;
    size_t waiting = 0;
    size_t relaying = 0;
    std::list<Conn*> eligible;  // in the order they became eligible
    bool in_ring = false;
  };

  int backend_port = 0;
  Limits limits;
  int listen_fd = -1;
  UniqueFd epoll;
  UniqueFd stop;
  bool accepting = true;
  std::list<Conn*> waiting_;  // accept order (deadline sweep)
  std::unordered_map<std::string, std::unique_ptr<Peer>> peers_;
  std::list<Peer*> ring_;  // peers with an eligible connection
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
  size_t relaying_ = 0;
  Stats stats;

  static uint64_t Tag(Conn* c, bool backend) {
    return reinterpret_cast<uint64_t>(c) | (backend ? 1 : 0);
  }

  void Watch(int fd, uint32_t events, uint64_t tag, bool add) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    ::epoll_ctl(epoll.get(), add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &ev);
  }

  void SetAccepting(bool on) {
    if (accepting == on) return;
    accepting = on;
    Watch(listen_fd, on ? static_cast<uint32_t>(EPOLLIN) : 0u, kListenTag,
          false);
  }

  void Close(Conn* c) {
    Peer* p = c->peer;
    if (c->relaying) {
      --p->relaying;
      --relaying_;
    } else {
      waiting_.erase(c->by_time);
      --p->waiting;
      if (c->eligible) p->eligible.erase(c->in_queue);
    }
    conns_.erase(c);  // closes both fds (epoll forgets them)
    if (p->waiting == 0 && p->relaying == 0 && !p->in_ring) {
      std::string key = p->key;
      peers_.erase(key);
    }
    SetAccepting(true);  // an fd is free again
  }

  void Accept() {
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
            errno == ENOMEM) {
          // Out of descriptors: leave the rest in the kernel's queue until
          // a connection closes.
          SetAccepting(false);
        }
        return;
      }
      ++stats.accepted;
      std::string key = PeerKey(ss);
      auto& slot = peers_[key];
      if (!slot) {
        slot = std::make_unique<Peer>();
        slot->key = key;
      }
      Peer* p = slot.get();
      if (waiting_.size() >= limits.max_waiting ||
          p->waiting >= limits.max_waiting_per_ip) {
        ++stats.refused;
        ::close(fd);
        if (p->waiting == 0 && p->relaying == 0 && !p->in_ring) {
          peers_.erase(key);
        }
        continue;
      }
      auto owned = std::make_unique<Conn>();
      Conn* c = owned.get();
      c->client.Reset(fd);
      c->peer = p;
      c->accepted = Clock::now();
      c->by_time = waiting_.insert(waiting_.end(), c);
      ++p->waiting;
      conns_.emplace(c, std::move(owned));
      // Level-triggered; once readable it waits for a slot, not for data.
      Watch(fd, EPOLLIN | EPOLLRDHUP, Tag(c, false), true);
    }
  }

  // The client sent its first bytes, or closed (or, once eligible, reset).
  void BecameReadable(Conn* c, uint32_t events) {
    if (c->eligible || (events & (EPOLLHUP | EPOLLERR))) {
      Close(c);
      return;
    }
    if (events & EPOLLRDHUP) {
      // A request and then a half-close (printf ... | nc -N) is still a
      // request; a close without a byte is not.
      char b;
      if (::recv(c->client.get(), &b, 1, MSG_PEEK) <= 0) {
        Close(c);
        return;
      }
    }
    c->eligible = true;
    Peer* p = c->peer;
    c->in_queue = p->eligible.insert(p->eligible.end(), c);
    // Nothing more to learn until it is relayed (errors still arrive).
    Watch(c->client.get(), 0, Tag(c, false), false);
    if (!p->in_ring) {
      p->in_ring = true;
      ring_.push_back(p);
    }
  }

  // Relays eligible connections while slots are free, round robin over
  // client addresses.
  void Dispatch() {
    size_t skipped = 0;
    while (relaying_ < limits.total && !ring_.empty() &&
           skipped < ring_.size()) {
      Peer* p = ring_.front();
      ring_.pop_front();
      if (p->eligible.empty()) {
        p->in_ring = false;
        if (p->waiting == 0 && p->relaying == 0) {
          std::string key = p->key;
          peers_.erase(key);
        }
        continue;
      }
      if (p->relaying >= limits.per_ip) {
        ring_.push_back(p);  // waits for one of its own to end
        ++skipped;
        continue;
      }
      skipped = 0;
      Conn* c = p->eligible.front();
      p->eligible.pop_front();
      c->eligible = false;
      ring_.push_back(p);
      StartRelay(c);
    }
  }

  void StartRelay(Conn* c) {
    Peer* p = c->peer;
    waiting_.erase(c->by_time);
    --p->waiting;
    c->relaying = true;
    ++p->relaying;
    ++relaying_;
    ++stats.relayed;
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      Close(c);
      return;
    }
    c->backend.Reset(fd);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ::setsockopt(c->client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(backend_port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 &&
        errno != EINPROGRESS) {
      Close(c);
      return;
    }
    c->up.data.resize(kUpBuffer);
    c->down.data.resize(kDownBuffer);
    Watch(fd, 0, Tag(c, true), true);
    Rearm(c);
  }

  void Rearm(Conn* c) {
    uint32_t ce = 0, be = 0;
    if (!c->client_eof && c->up.len < c->up.data.size()) ce |= EPOLLIN;
    if (c->down.len > 0) ce |= EPOLLOUT;
    if (!c->backend_eof && c->down.len < c->down.data.size()) be |= EPOLLIN;
    if (c->up.len > 0) be |= EPOLLOUT;
    Watch(c->client.get(), ce, Tag(c, false), false);
    Watch(c->backend.get(), be, Tag(c, true), false);
  }

  // Moves bytes; false if the connection is over.
  bool Pump(Conn* c) {
    auto again = [] { return errno == EAGAIN || errno == EINTR; };
    for (bool moved = true; moved;) {
      moved = false;
      if (!c->client_eof && c->up.len < c->up.data.size()) {
        ssize_t n = c->up.Fill(c->client.get());
        if (n > 0) {
          moved = true;
        } else if (n == 0) {
          c->client_eof = true;
        } else if (!again()) {
          return false;
        }
      }
      if (c->up.len > 0) {
        ssize_t n = c->up.Drain(c->backend.get());
        if (n > 0) {
          moved = true;
        } else if (n < 0 && !again() && errno != ENOTCONN) {
          return false;
        }
      }
      if (!c->backend_eof && c->down.len < c->down.data.size()) {
        ssize_t n = c->down.Fill(c->backend.get());
        if (n > 0) {
          moved = true;
        } else if (n == 0) {
          c->backend_eof = true;
        } else if (!again() && errno != ENOTCONN) {
          return false;
        }
      }
      if (c->down.len > 0) {
        ssize_t n = c->down.Drain(c->client.get());
        if (n > 0) {
          moved = true;
        } else if (n < 0 && !again()) {
          return false;
        }
      }
    }
    // CivetWeb ended the connection and all of it reached the client.
    if (c->backend_eof && c->down.len == 0) return false;
    if (c->client_eof && c->up.len == 0 && !c->up_shut) {
      ::shutdown(c->backend.get(), SHUT_WR);  // CivetWeb still answers
      c->up_shut = true;
    }
    return true;
  }

  void Sweep() {
    auto now = Clock::now();
    while (!waiting_.empty() &&
           now - waiting_.front()->accepted >= limits.wait) {
      ++stats.closed_waiting;
      Close(waiting_.front());
    }
  }

  void Run() {
    std::vector<epoll_event> events(256);
    for (;;) {
      int timeout = 100;  // the deadline sweep's period
      int n = ::epoll_wait(epoll.get(), events.data(),
                           static_cast<int>(events.size()), timeout);
      if (n < 0 && errno != EINTR) {
        Log(LogLevel::kError,
            std::string("web: epoll_wait: ") + std::strerror(errno));
        return;
      }
      for (int i = 0; i < n; ++i) {
        uint64_t tag = events[i].data.u64;
        if (tag == kStopTag) return;
        if (tag == kListenTag) {
          Accept();
          continue;
        }
        auto* c = reinterpret_cast<Conn*>(tag & ~uint64_t{1});
        if (conns_.find(c) == conns_.end()) continue;  // closed this round
        const bool on_client = (tag & 1) == 0;
        if (!c->relaying) {
          BecameReadable(c, events[i].events);
        } else if ((on_client && (events[i].events & (EPOLLHUP | EPOLLERR))) ||
                   !Pump(c)) {
          // (a client gone both ways can receive nothing more)
          Close(c);
        } else {
          Rearm(c);
        }
      }
      Sweep();
      Dispatch();
    }
  }

  ~Loop() { conns_.clear(); }
};

ConnGate::~ConnGate() { Stop(); }

bool ConnGate::Listen(const std::string& address, std::string* error) {
  std::string host = address, port;
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    *error = "--web.listen-address " + address + ": expected [host]:port";
    return false;
  }
  host = address.substr(0, colon);
  port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_family = host.empty() ? AF_INET : AF_UNSPEC;
  addrinfo* res = nullptr;
  if (port.empty() ||
      ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints,
                    &res) != 0 ||
      res == nullptr) {
    *error = "cannot listen on " + address + " (not a valid [host]:port)";
    return false;
  }
  UniqueFd fd(
      ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  int one = 1;
  bool ok = fd && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one,
                               sizeof one) == 0;
  if (ok && res->ai_family == AF_INET6) {
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  }
  ok = ok && ::bind(fd.get(), res->ai_addr, res->ai_addrlen) == 0 &&
       ::listen(fd.get(), SOMAXCONN) == 0;
  ::freeaddrinfo(res);
  if (!ok) {
    *error = "cannot listen on " + address + ": " + std::strerror(errno);
    return false;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  int bound_port = ntohs(ss.ss_family == AF_INET6
                             ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                             : reinterpret_cast<sockaddr_in&>(ss).sin_port);
  std::string shown = host.empty() ? "0.0.0.0" : host;
  if (ss.ss_family == AF_INET6) shown = "[" + shown + "]";
  bound_ = shown + ":" + std::to_string(bound_port);
  listen_fd_ = std::move(fd);
  return true;
}

bool ConnGate::Start(int backend_port, const Limits& limits,
                     std::string* error) {
  auto loop = std::make_unique<Loop>();
  loop->backend_port = backend_port;
  loop->limits = limits;
  loop->listen_fd = listen_fd_.get();
  loop->epoll.Reset(::epoll_create1(EPOLL_CLOEXEC));
  loop->stop.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!loop->epoll || !loop->stop) {
    *error = std::string("web: ") + std::strerror(errno);
    return false;
  }
  loop->Watch(loop->listen_fd, EPOLLIN, kListenTag, true);
  loop->Watch(loop->stop.get(), EPOLLIN, kStopTag, true);
  loop_ = loop.release();
  try {
    thread_ = std::thread([this] { loop_->Run(); });
  } catch (const std::system_error& e) {
    delete loop_;
    loop_ = nullptr;
    *error =
        std::string("web: cannot start the connection thread: ") + e.what();
    return false;
  }
  return true;
}

void ConnGate::Stop() {
  if (loop_ != nullptr) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(loop_->stop.get(), &one, sizeof one);
    if (thread_.joinable()) thread_.join();
    delete loop_;
    loop_ = nullptr;
  }
  listen_fd_.Reset();
}

}  // namespace sshtail
