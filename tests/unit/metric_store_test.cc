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

// A reload removed a source: its series go, a source with the same name
// and other static labels (another file of its host) keeps its own.
TEST_CASE("RemoveSources drops exactly the removed source's series") {
  auto reg = std::make_shared<prometheus::Registry>();
  auto& overflow =
      prometheus::BuildCounter().Name("o").Help("o").Register(*reg);
  MetricStore store(overflow);
  RuleSetDef rules;
  RuleDef r;
  r.name = "r";
  MetricDef m;
  m.name = "requests_total";
  m.help = "h";
  m.max_series = 3;
  LabelDef status;
  status.name = "status";
  status.field = "status";
  m.labels.push_back(status);
  r.metrics.push_back(m);
  rules.rules.push_back(r);
  store.Apply(rules);
  MetricState* s = store.Find("requests_total");
  REQUIRE(s != nullptr);
  s->Get({{"source", "web1"}, {"file", "/a.log"}, {"status", "200"}})
      ->counter->Increment();
  s->Get({{"source", "web1"}, {"file", "/b.log"}, {"status", "200"}});
  s->Get({{"source", "web1"}, {"status", "200"}});
  // Past max_series: web1's overflow series.
  s->Get({{"source", "web1"}, {"file", "/a.log"}, {"status", "500"}});
  REQUIRE(s->size() == 3);
  SourceLabels a{"web1", {{"file", "/a.log"}}, "/a.log"};
  CHECK(store.RemoveSources({a}, {false}) == 1);
  CHECK(s->size() == 2);
  CHECK(s->Snapshot().series.size() == 3);  // the overflow series stays
  SourceLabels plain{"web1", {}, ""};
  CHECK(store.RemoveSources({plain}, {true}) == 1);
  CHECK(s->size() == 1);
  CHECK(s->Snapshot().series.size() == 1);  // b.log's series only
  CHECK(store.budget().used() == 1);
}

}  // namespace
}  // namespace sshtail
