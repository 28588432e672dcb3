// The bound on SSH handshakes in flight to one server.
#include "sources/ssh/handshake_gate.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "util/unique_fd.h"

namespace sshtail {
namespace {

TEST_CASE("handshakes to one server wait below the limit, others do not",
          "[handshake][threads]") {
  HandshakeGate& g = HandshakeGate::Instance();
  std::atomic<bool> stop{false};
  std::atomic<int> inside{0}, most{0}, done{0};
  std::vector<std::thread> ts;
  for (int i = 0; i < 12; ++i) {
    ts.emplace_back([&] {
      HandshakeGate::Slot s = g.Enter("gate-test-a:22", 3, stop);
      REQUIRE(s);
      int now = ++inside;
      int m = most.load();
      while (now > m && !most.compare_exchange_weak(m, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      --inside;
      ++done;
    });
  }
  // Another server is not held up by the busy one.
  HandshakeGate::Slot other = g.Enter("gate-test-b:22", 1, stop);
  CHECK(other);
  for (auto& t : ts) t.join();
  CHECK(done.load() == 12);
  CHECK(most.load() <= 3);
  CHECK(g.InFlight("gate-test-a:22") == 0);
  CHECK(g.InFlight("gate-test-b:22") == 1);
}

TEST_CASE("a stop ends the wait for a handshake slot", "[handshake][threads]") {
  HandshakeGate& g = HandshakeGate::Instance();
  std::atomic<bool> never{false}, stop{false};
  HandshakeGate::Slot held = g.Enter("gate-test-c:22", 1, never);
  std::atomic<bool> got{true}, returned{false};
  std::thread waiter([&] {
    got = static_cast<bool>(g.Enter("gate-test-c:22", 1, stop));
    returned = true;
  });
  stop = true;
  g.Interrupt();
  waiter.join();
  CHECK(returned.load());
  CHECK_FALSE(got.load());
  CHECK(g.InFlight("gate-test-c:22") == 1);
}

TEST_CASE("no bound when the limit is 0", "[handshake]") {
  HandshakeGate& g = HandshakeGate::Instance();
  std::atomic<bool> stop{false};
  std::vector<HandshakeGate::Slot> held;
  for (int i = 0; i < 50; ++i)
    held.push_back(g.Enter("gate-test-d:22", 0, stop));
  CHECK(g.InFlight("gate-test-d:22") == 50);
  held.clear();
  CHECK(g.InFlight("gate-test-d:22") == 0);
}

TEST_CASE("a backoff wait ends when its server is up, not another's",
          "[handshake][threads]") {
  HandshakeGate& g = HandshakeGate::Instance();
  std::atomic<bool> stop{false};
  UniqueFd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  auto far = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::atomic<int> woke{0}, f_result{-1};
  std::thread e([&] {
    woke = g.WaitToRetry("gate-test-e:22", far, stop_fd.get(), stop) ? 1 : 2;
  });
  std::thread f([&] {
    // Not woken by e's server: only by the stop below.
    f_result = g.WaitToRetry("gate-test-f:22", far, stop_fd.get(), stop);
  });
  // Up() before the waiter registered would be lost: retry until it wakes.
  for (int i = 0; i < 5000 && woke.load() == 0; ++i) {
    g.Up("gate-test-e:22");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  e.join();
  CHECK(woke.load() == 1);
  stop = true;
  uint64_t one = 1;
  CHECK(::write(stop_fd.get(), &one, sizeof one) == sizeof one);
  f.join();
  CHECK(f_result.load() == 0);
  // The deadline alone ends a wait too.
  std::atomic<bool> never{false};
  UniqueFd quiet(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  CHECK(g.WaitToRetry(
      "gate-test-g:22",
      std::chrono::steady_clock::now() + std::chrono::milliseconds(20),
      quiet.get(), never));
}

}  // namespace
}  // namespace sshtail
