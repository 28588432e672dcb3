#include "sshtail/batch_queue.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>
#include <vector>

namespace sshtail {
namespace {

BatchPtr Make(uint32_t source, uint64_t seq) {
  auto b = std::make_unique<LineBatch>();
  b->source = source;
  b->seq = seq;
  return b;
}

// Polls a condition with a deadline instead of sleeping a fixed time.
template <class F>
bool Eventually(F f,
                std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return f();
}

TEST_CASE("a source is idle once every batch it pushed is finished") {
  for (bool ordered : {false, true}) {
    BatchQueue q(8, ordered);
    CHECK(q.Idle(3));  // never pushed
    auto a = Make(3, 1);
    auto b = Make(3, 2);
    auto other = Make(5, 1);
    REQUIRE(q.Push(a));
    REQUIRE(q.Push(b));
    REQUIRE(q.Push(other));
    CHECK_FALSE(q.Idle(3));
    BatchPtr first = q.Pop();
    REQUIRE(first->source == 3);
    q.Finished(3);
    CHECK_FALSE(q.Idle(3));  // b still queued
    BatchPtr second = q.Pop();
    REQUIRE(second->source == 3);
    CHECK_FALSE(q.Idle(3));  // popped, not finished: being counted
    q.Finished(3);
    CHECK(q.Idle(3));
    CHECK_FALSE(q.Idle(5));
  }
}

TEST_CASE("queue is FIFO and bounded") {
  BatchQueue q(2);
  auto a = Make(0, 1);
  auto b = Make(0, 2);
  REQUIRE(q.Push(a));
  REQUIRE(q.Push(b));
  CHECK(q.Size() == 2);
  CHECK(a == nullptr);  // ownership moved
  CHECK(q.Pop()->seq == 1);
  CHECK(q.Pop()->seq == 2);
  CHECK(q.Size() == 0);
}

TEST_CASE("a full queue blocks the producer until a consumer pops",
          "[threads]") {
  BatchQueue q(1);
  auto first = Make(0, 1);
  REQUIRE(q.Push(first));
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    auto second = Make(0, 2);
    q.Push(second);
    pushed = true;
  });
  // The producer must still be waiting: the queue holds one batch.
  CHECK_FALSE(Eventually([&] { return pushed.load(); },
                         std::chrono::milliseconds(100)));
  CHECK(q.Size() == 1);
  CHECK(q.Pop()->seq == 1);
  CHECK(Eventually([&] { return pushed.load(); }));
  CHECK(q.Pop()->seq == 2);
  producer.join();
}

TEST_CASE("close wakes a waiting consumer and drains what is left",
          "[threads]") {
  BatchQueue q(4);
  auto a = Make(0, 1);
  REQUIRE(q.Push(a));
  q.Close();
  auto b = Make(0, 2);
  CHECK_FALSE(q.Push(b));
  CHECK(b != nullptr);  // refused batch stays with the caller
  CHECK(q.Pop()->seq == 1);
  CHECK(q.Pop() == nullptr);

  BatchQueue empty(1);
  std::thread consumer([&] { CHECK(empty.Pop() == nullptr); });
  empty.Close();
  consumer.join();
}

TEST_CASE("close wakes a producer blocked on a full queue", "[threads]") {
  BatchQueue q(1);
  auto a = Make(0, 1);
  REQUIRE(q.Push(a));
  std::atomic<int> result{-1};
  std::thread producer([&] {
    auto b = Make(0, 2);
    result = q.Push(b) ? 1 : 0;
  });
  q.Close();
  producer.join();
  CHECK(result == 0);
}

TEST_CASE(
    "many producers and consumers: every batch once, never more than "
    "capacity queued",
    "[threads]") {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 5000;
  BatchQueue q(8);
  std::atomic<size_t> max_seen{0};
  std::vector<std::vector<int>> seen(kProducers,
                                     std::vector<int>(kPerProducer + 1, 0));
  std::mutex seen_mutex;
  std::vector<std::thread> consumers;
  for (int c = 0; c < 3; ++c) {
    consumers.emplace_back([&] {
      while (BatchPtr b = q.Pop()) {
        size_t s = q.Size();
        size_t m = max_seen.load();
        while (s > m && !max_seen.compare_exchange_weak(m, s)) {
        }
        std::lock_guard lock(seen_mutex);
        ++seen[b->source][b->seq];
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 1; i <= kPerProducer; ++i) {
        auto b = Make(static_cast<uint32_t>(p), static_cast<uint64_t>(i));
        REQUIRE(q.Push(b));
      }
    });
  }
  for (auto& t : producers) t.join();
  q.Close();
  for (auto& t : consumers) t.join();
  CHECK(max_seen.load() <= 8);
  for (int p = 0; p < kProducers; ++p) {
    for (int i = 1; i <= kPerProducer; ++i) {
      INFO("producer " << p << " batch " << i);
      REQUIRE(seen[p][i] == 1);
    }
  }
}

}  // namespace
}  // namespace sshtail
