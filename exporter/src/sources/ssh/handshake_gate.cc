#include "sources/ssh/handshake_gate.h"

namespace sshtail {

HandshakeGate& HandshakeGate::Instance() {
  static HandshakeGate gate;
  return gate;
}

HandshakeGate::Slot HandshakeGate::Enter(const std::string& server, int limit,
                                         const std::atomic<bool>& stop) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] {
    auto it = in_flight_.find(server);
    return stop.load() || limit <= 0 || it == in_flight_.end() ||
           it->second < limit;
  });
  if (stop.load()) return Slot();
  ++in_flight_[server];
  return Slot(this, server);
}

void HandshakeGate::Interrupt() {
  // Under the lock: a waiter between its check and its wait still wakes.
  std::lock_guard lock(mu_);
  cv_.notify_all();
}

int HandshakeGate::InFlight(const std::string& server) {
  std::lock_guard lock(mu_);
  auto it = in_flight_.find(server);
  return it == in_flight_.end() ? 0 : it->second;
}

void HandshakeGate::Leave(const std::string& server) {
  {
    std::lock_guard lock(mu_);
    auto it = in_flight_.find(server);
    if (--it->second == 0) in_flight_.erase(it);
  }
  cv_.notify_all();
}

}  // namespace sshtail
