#pragma once

// Private to sources/ssh/.

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>

namespace sshtail {

/// Bounds the SSH handshakes in flight to one server, from before the TCP
/// connect until authentication ends. sshd drops connections beyond
/// MaxStartups (10:30:100 by default) that are not yet authenticated; a
/// fleet coming back after an outage, or a host with many files, would
/// trip it, and every dropped connection waits another backoff. Waiting
/// here costs the server nothing. A black-holed server holds only its own
/// slots. Thread-safe; one per process (Instance()).
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
  /// Handshakes in flight to `server` (for tests).
  int InFlight(const std::string& server);

 private:
  void Leave(const std::string& server);

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> in_flight_;
};

}  // namespace sshtail
