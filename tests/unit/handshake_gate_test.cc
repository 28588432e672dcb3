// The bound on SSH handshakes in flight to one server.
#include "sources/ssh/handshake_gate.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

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

}  // namespace
}  // namespace sshtail
