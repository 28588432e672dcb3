#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "sshtail/batch_queue.h"

namespace sshtail {
namespace {

BatchPtr Make(uint32_t source, uint64_t seq) {
  auto b = std::make_unique<LineBatch>();
  b->source = source;
  b->seq = seq;
  return b;
}

TEST_CASE("ordered queue: a source's next batch waits for Finished") {
  BatchQueue q(8, true);
  for (auto [src, seq] : {std::pair{0u, 1u}, {0u, 2u}, {1u, 1u}, {0u, 3u}}) {
    auto b = Make(src, seq);
    REQUIRE(q.Push(b));
  }
  BatchPtr a = q.Pop();
  CHECK((a->source == 0 && a->seq == 1));
  BatchPtr b = q.Pop();  // source 0 is out: source 1's batch overtakes
  CHECK((b->source == 1 && b->seq == 1));
  std::atomic<bool> got{false};
  BatchPtr c;
  std::thread t([&] {
    c = q.Pop();  // only source 0's batches are left: waits
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(got.load());
  q.Finished(0);
  t.join();
  CHECK((c->source == 0 && c->seq == 2));
  q.Finished(1);
  q.Finished(0);
  CHECK(q.Pop()->seq == 3);
  q.Finished(0);
  q.Close();
  CHECK(q.Pop() == nullptr);
}

TEST_CASE("ordered queue: many consumers, each source in order, one at a time",
          "[threads]") {
  BatchQueue q(4, true);
  constexpr uint32_t kSources = 3;
  constexpr uint64_t kPerSource = 2000;
  std::mutex m;
  std::map<uint32_t, uint64_t> last;
  std::map<uint32_t, int> busy;
  bool ok = true;
  std::vector<std::thread> consumers;
  for (int i = 0; i < 4; ++i) {
    consumers.emplace_back([&] {
      while (BatchPtr b = q.Pop()) {
        {
          std::lock_guard lock(m);
          ok &= ++busy[b->source] == 1;
          ok &= b->seq == last[b->source] + 1;
          last[b->source] = b->seq;
        }
        std::this_thread::yield();
        {
          std::lock_guard lock(m);
          --busy[b->source];
        }
        q.Finished(b->source);
      }
    });
  }
  std::vector<std::thread> producers;
  for (uint32_t s = 0; s < kSources; ++s) {
    producers.emplace_back([&, s] {
      for (uint64_t seq = 1; seq <= kPerSource; ++seq) {
        auto b = Make(s, seq);
        q.Push(b);
      }
    });
  }
  for (auto& p : producers) p.join();
  q.Close();
  for (auto& c : consumers) c.join();
  CHECK(ok);
  for (uint32_t s = 0; s < kSources; ++s) CHECK(last[s] == kPerSource);
}

TEST_CASE(
    "unordered queue: Finished is a no-op, batches of one source "
    "go out together") {
  BatchQueue q(4);
  auto a = Make(0, 1), b = Make(0, 2);
  q.Push(a);
  q.Push(b);
  CHECK(q.Pop()->seq == 1);
  CHECK(q.Pop()->seq == 2);  // without Finished
  q.Finished(0);
  CHECK_FALSE(q.ordered());
}

}  // namespace
}  // namespace sshtail
