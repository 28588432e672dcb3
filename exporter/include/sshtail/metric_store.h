#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "sshtail/rules.h"

namespace sshtail {

/// One label set of one rule metric. The prometheus-cpp metric it points to
/// is thread-safe; `last_used` is written by consumers, read by Expire().
struct Series {
  prometheus::Counter* counter = nullptr;
  prometheus::Gauge* gauge = nullptr;
  prometheus::Histogram* histogram = nullptr;
  std::atomic<int64_t> last_used{0};  ///< steady-clock seconds

  /// Gauge `set` across consumer threads: the newest line wins.
  std::mutex set_mutex;
  uint64_t set_version = 0;
};

/// All series of one metric, with its cardinality cap. Thread-safe.
class MetricState {
 public:
  MetricState(const MetricDef& def, prometheus::Registry& registry,
              prometheus::Counter* overflow_counter);
  ~MetricState();

  /// The series for `labels`, created if the cap allows; past the cap, the
  /// single overflow series (every label value "__overflow__"). Never null.
  Series* Get(const prometheus::Labels& labels);

  /// Drops series idle for longer than the ttl. Returns how many. Callers
  /// must make sure no consumer holds a Series* (MetricStore does).
  size_t Expire(int64_t now_seconds);

  const MetricDef& def() const { return def_; }

  /// Appends this metric's exposition text (series in label order).
  void AppendExposition(std::string* out) const;
  /// Takes a new definition with the same Signature() (help, caps, ttl,
  /// label mapping may differ).
  void Redefine(const MetricDef& def);
  size_t size() const;

 private:
  Series* Create(const prometheus::Labels& labels);

  MetricDef def_;
  prometheus::Registry& registry_;
  prometheus::Counter* overflow_counter_;
  prometheus::Family<prometheus::Counter>* counters_ = nullptr;
  prometheus::Family<prometheus::Gauge>* gauges_ = nullptr;
  prometheus::Family<prometheus::Histogram>* histograms_ = nullptr;

  mutable std::mutex mutex_;
  std::map<prometheus::Labels, std::unique_ptr<Series>> series_;
  std::unique_ptr<Series> overflow_;
  prometheus::Labels overflow_labels_;
  std::atomic<size_t> max_series_;
  std::atomic<int64_t> ttl_seconds_;
};

/// The rule metrics: a prometheus-cpp registry plus the per-metric state,
/// kept across reloads for metrics whose definition did not change.
///
/// Thread-safe. Consumers hold a ReadLock() while they use Series pointers;
/// Expire() and Apply() take the write side, then bump generation() so that
/// consumers drop their cached pointers.
class MetricStore {
 public:
  explicit MetricStore(prometheus::Family<prometheus::Counter>& overflow);

  /// Makes the store match `rules`: metrics with an unchanged definition keep
  /// their series and values; others are created or removed.
  /// `publish` runs with the write side held, after the states are
  /// updated: the place to swap in rules compiled against them.
  void Apply(const RuleSetDef& rules,
             const std::function<void()>& publish = nullptr);

  /// The state of a metric by name, or nullptr.
  MetricState* Find(const std::string& name) const;

  /// Removes idle series of metrics that have a ttl.
  size_t Expire();

  /// Appends the exposition of every rule metric, by name. Reads the
  /// series directly (no registry copy, no sorting). Thread-safe.
  void AppendExposition(std::string* out) const;

  std::shared_lock<std::shared_mutex> ReadLock() const {
    return std::shared_lock<std::shared_mutex>(world_);
  }
  uint64_t generation() const { return generation_.load(); }
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  static int64_t NowSeconds();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& overflow_;
  mutable std::shared_mutex world_;
  std::atomic<uint64_t> generation_{1};
  std::map<std::string, std::unique_ptr<MetricState>> metrics_;
};

}  // namespace sshtail
