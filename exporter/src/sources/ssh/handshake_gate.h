#pragma once

// Private to sources/ssh/.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

namespace sshtail {

/// What the sessions to one server share. (1) A bound on the handshakes in
/// flight to it, from before the TCP connect until authentication ends:
/// sshd drops connections beyond MaxStartups (10:30:100 by default) that
/// are not yet authenticated; a fleet coming back after an outage, or a
/// host with many files, would trip it, and every dropped connection waits
/// another backoff. Waiting here costs the server nothing; a black-holed
/// server holds only its own slots. (2) Word that it is back: when one
/// session to it authenticates, the others waiting out a backoff for it
/// retry at once (they queue here, not at the server). Thread-safe; one
/// per process (Instance()).
class HandshakeGate {
 public:
  /// A held slot, released on destruction. Empty: none was taken.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : gate_(o.gate_), server_(std::move(o.server_)) {
      o.gate_ = nullptr;
    }
    Slot& operator=(Slot&&) = delete;
    ~Slot() {
      if (gate_) gate_->Leave(server_);
    }
    explicit operator bool() const { return gate_ != nullptr; }

   private:
    friend class HandshakeGate;
    Slot(HandshakeGate* g, std::string server)
        : gate_(g), server_(std::move(server)) {}
    HandshakeGate* gate_ = nullptr;
    std::string server_;
  };

  static HandshakeGate& Instance();

  /// Waits until fewer than `limit` handshakes to `server` are in flight
  /// (no bound if `limit` <= 0) and takes a slot; an empty Slot once `stop`
  /// is set (see Interrupt).
  Slot Enter(const std::string& server, int limit,
             const std::atomic<bool>& stop);
  /// Wakes the waiters to look at their stop flags: call after setting one.
  void Interrupt();
  /// A session to `server` authenticated: its backoff waiters retry now.
  void Up(const std::string& server);
  /// Sleeps until `deadline`; returns false at once when `stop_fd` (an
  /// eventfd) is readable or `stop` is set, true early when `server` is Up
  /// meanwhile (empty: not known yet, only the deadline counts).
  bool WaitToRetry(const std::string& server,
                   std::chrono::steady_clock::time_point deadline, int stop_fd,
                   const std::atomic<bool>& stop);
  /// Handshakes in flight to `server` (for tests).
  int InFlight(const std::string& server);

 private:
  void Leave(const std::string& server);

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> in_flight_;
  std::multimap<std::string, int> waiting_;  ///< server -> an eventfd
};

}  // namespace sshtail
