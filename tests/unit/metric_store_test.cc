#include "sshtail/metric_store.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

namespace sshtail {
namespace {

// Readers that always overlap (as busy consumers do) must not keep a writer
// (expiry, reload, and the shutdown behind them) out. glibc's default
// std::shared_mutex fails this: the writer waits as long as readers come.
TEST_CASE("a writer gets the store's lock while readers keep coming",
          "[threads]") {
  WriterFirstMutex m;
  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int i = 0; i < 3; ++i) {
    readers.emplace_back([&] {
      while (!stop.load()) {
        std::shared_lock lock(m);
        std::this_thread::sleep_for(std::chrono::microseconds(500));
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto start = std::chrono::steady_clock::now();
  std::atomic<bool> got{false};
  std::thread writer([&] {
    std::unique_lock lock(m);
    got.store(true);
  });
  while (!got.load() &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  bool in_time = got.load();
  stop.store(true);
  writer.join();
  for (auto& r : readers) r.join();
  CHECK(in_time);
}

}  // namespace
}  // namespace sshtail
