#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>

#include "util/unique_fd.h"

namespace sshtail {

/// The public listening socket in front of CivetWeb, which gives every
/// connection a thread for its whole life (so idle connections, or one
/// client's many, would hold every thread). One epoll thread accepts every
/// connection at once (the kernel's accept queue never fills), and holds
/// it, without a thread, until the client has sent something; only then is
/// it relayed to CivetWeb on a loopback port, and at most `per_ip` of one
/// client address at a time (`total` in all). A connection that has not
/// been relayed within `wait` is closed. So silent connections never reach
/// a thread, and one address's trickling ones hold at most per_ip threads.
/// Memory: at most `max_waiting` held connections (a small struct each) and
/// 16 + 64 KiB of buffers per relayed one (at most `total`). Start/Stop from
/// one thread.
class ConnGate {
 public:
  struct Limits {
    size_t per_ip = 32;
    size_t total = 256;
    size_t max_waiting = 16384;
    size_t max_waiting_per_ip = 4096;
    std::chrono::milliseconds wait{5000};
  };
  struct Stats {
    uint64_t accepted = 0;
    uint64_t relayed = 0;
    uint64_t closed_waiting = 0;  ///< no data, or no slot, within `wait`
    uint64_t refused = 0;         ///< over max_waiting(_per_ip)
    size_t waiting = 0;
    size_t relaying = 0;
  };

  ConnGate() = default;
  ~ConnGate();
  ConnGate(const ConnGate&) = delete;
  ConnGate& operator=(const ConnGate&) = delete;

  /// Binds `address` ("host:port", ":port" for all IPv4 addresses,
  /// "[v6]:port"; numeric hosts). On failure false with a reason.
  bool Listen(const std::string& address, std::string* error);
  /// host:port bound.
  std::string bound() const { return bound_; }
  /// Starts relaying to 127.0.0.1:backend_port.
  bool Start(int backend_port, const Limits& limits, std::string* error);
  void Stop();

 private:
  struct Loop;
  UniqueFd listen_fd_;
  std::string bound_;
  Loop* loop_ = nullptr;
  std::thread thread_;
};

}  // namespace sshtail
