#include "sources/ssh/handshake_gate.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "util/unique_fd.h"

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

void HandshakeGate::Up(const std::string& server) {
  std::lock_guard lock(mu_);
  auto [from, to] = waiting_.equal_range(server);
  for (auto it = from; it != to; ++it) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(it->second, &one, sizeof one);
  }
}

bool HandshakeGate::WaitToRetry(const std::string& server,
                                std::chrono::steady_clock::time_point deadline,
                                int stop_fd, const std::atomic<bool>& stop) {
  using std::chrono::milliseconds;
  UniqueFd up(server.empty() ? -1 : ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  std::multimap<std::string, int>::iterator entry;
  if (up.get() >= 0) {
    std::lock_guard lock(mu_);
    entry = waiting_.emplace(server, up.get());
  }
  bool retry = true;
  for (;;) {
    if (stop.load()) {
      retry = false;
      break;
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    auto ms = std::chrono::duration_cast<milliseconds>(deadline - now).count();
    struct pollfd p[2] = {{stop_fd, POLLIN, 0}, {up.get(), POLLIN, 0}};
    ::poll(p, up.get() >= 0 ? 2 : 1,
           static_cast<int>(std::min<long long>(ms + 1, 1 << 30)));
    if (p[0].revents & POLLIN) {
      retry = false;
      break;
    }
    if (up.get() >= 0 && (p[1].revents & POLLIN)) break;  // the server is back
  }
  if (up.get() >= 0) {
    std::lock_guard lock(mu_);
    waiting_.erase(entry);
  }
  return retry;
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
