#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <pthread.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "sshtail/rules.h"
#include "sshtail/source_labels.h"

namespace sshtail {

/// A reader-writer lock that lets a waiting writer in before new readers.
/// glibc's default (std::shared_mutex) prefers readers: consumers that
/// always hold a read lock would keep expiry and reloads (and the shutdown
/// behind them) waiting for ever. Meets SharedMutex.
class WriterFirstMutex {
 public:
  WriterFirstMutex();
  ~WriterFirstMutex();
  WriterFirstMutex(const WriterFirstMutex&) = delete;
  WriterFirstMutex& operator=(const WriterFirstMutex&) = delete;
  void lock();
  bool try_lock();
  void unlock();
  void lock_shared();
  bool try_lock_shared();
  void unlock_shared();

 private:
  pthread_rwlock_t rw_;
};

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

/// A bound on the series of every metric together: the safety net behind
/// the per-source `max_series` caps. Thread-safe.
class SeriesBudget {
 public:
  explicit SeriesBudget(size_t limit) : limit_(limit) {}
  /// Takes one series from the budget; false when it is spent.
  bool Take();
  void Give(size_t n) { used_.fetch_sub(n); }
  size_t used() const { return used_.load(); }
  size_t limit() const { return limit_.load(); }
  void set_limit(size_t limit) { limit_.store(limit); }

 private:
  std::atomic<size_t> used_{0};
  std::atomic<size_t> limit_;
};

/// The values of one series, copied under the store's write lock. Plain
/// value type.
struct SeriesSnapshot {
  prometheus::Labels labels;
  bool overflow = false;  ///< the source's overflow series
  double value = 0;       ///< counter or gauge value
  /// Histograms: cumulative bucket counts (the last is +Inf), sum, count.
  prometheus::ClientMetric::Histogram histogram;
};

/// The values of every series of one metric. Plain value type.
struct MetricSnapshot {
  std::string name;
  std::string help;
  std::string signature;  ///< MetricDef::Signature() of the definition
  MetricType type = MetricType::kCounter;
  std::vector<double> buckets;  ///< histogram upper bounds, without +Inf
  /// In exposition order: series by labels, then overflow series by source.
  std::vector<SeriesSnapshot> series;
};

/// Appends the exposition of saved metrics (in the given order, which
/// MetricStore::Snapshot makes by name): the same text as
/// MetricStore::AppendExposition gave for the values at snapshot time.
void AppendSnapshotExposition(const std::vector<MetricSnapshot>& metrics,
                              std::string* out);

/// All series of one metric, with its cardinality caps. Thread-safe.
///
/// `max_series` holds per source (the `source` label): one noisy source
/// overflows into its own overflow series (rule labels "__overflow__", its
/// source labels kept) and takes nothing from the others. Past the global
/// SeriesBudget, every source's new label sets overflow the same way.
class MetricState {
 public:
  /// The overflow counters of `sources` exist from the start, at 0.
  MetricState(const MetricDef& def, prometheus::Registry& registry,
              prometheus::Family<prometheus::Counter>& overflow_family,
              SeriesBudget& budget,
              const std::vector<std::string>& sources = {});
  ~MetricState();

  /// The series for `labels`, created if the caps allow; past them, the
  /// source's overflow series. Never null.
  Series* Get(const prometheus::Labels& labels);

  /// Drops series idle for longer than the ttl. Returns how many. Callers
  /// must make sure no consumer holds a Series* (MetricStore does).
  size_t Expire(int64_t now_seconds);

  /// Drops the series of a source that was removed: those whose `source`
  /// and static labels are `name` and `labels` and whose other labels are
  /// the rule's own; with `overflow` also the name's overflow series.
  /// Callers make sure no consumer holds a Series* (MetricStore does).
  size_t RemoveSource(const SourceLabels& source, bool overflow);

  const MetricDef& def() const { return def_; }

  /// Appends this metric's exposition text (series in label order).
  void AppendExposition(std::string* out) const;
  /// Copies every series' values. Exact only while no consumer updates the
  /// metric (MetricStore::Snapshot holds the write side).
  MetricSnapshot Snapshot() const;
  /// Adds saved values (same Signature(), checked by the caller) before
  /// consumers start. The caps hold: a series past them goes into its
  /// source's overflow series. Returns how many series were restored.
  size_t Restore(const MetricSnapshot& saved);
  /// Takes a new definition with the same Signature() (help, caps, ttl,
  /// label mapping may differ).
  void Redefine(const MetricDef& def);
  size_t size() const;

 private:
  Series* Create(const prometheus::Labels& labels);
  struct PerSource {
    size_t series = 0;
    std::unique_ptr<Series> overflow;
    prometheus::Labels overflow_labels;
    prometheus::Counter* overflow_counter = nullptr;
  };
  Series* Overflow(const std::string& source, PerSource& ps,
                   const prometheus::Labels& labels);
  Series* OverflowSeries(PerSource& ps, const prometheus::Labels& labels);
  void AddValues(Series& s, const SeriesSnapshot& v);
  static const std::string& SourceOf(const prometheus::Labels& labels);

  MetricDef def_;
  prometheus::Registry& registry_;
  prometheus::Family<prometheus::Counter>& overflow_family_;
  SeriesBudget& budget_;
  prometheus::Family<prometheus::Counter>* counters_ = nullptr;
  prometheus::Family<prometheus::Gauge>* gauges_ = nullptr;
  prometheus::Family<prometheus::Histogram>* histograms_ = nullptr;

  mutable std::mutex mutex_;
  std::map<prometheus::Labels, std::unique_ptr<Series>> series_;
  std::map<std::string, PerSource> sources_;
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
  /// `max_series_total` bounds the series of all metrics together.
  explicit MetricStore(prometheus::Family<prometheus::Counter>& overflow,
                       size_t max_series_total = kDefaultMaxSeriesTotal);
  static constexpr size_t kDefaultMaxSeriesTotal = 250000;

  /// The configured sources: their overflow counters exist from the start
  /// (at 0), so that increase() sees a first overflow. Before Apply().
  void SetSources(std::vector<std::string> names) {
    source_names_ = std::move(names);
  }

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

  /// Removes the series of sources a reload removed (MetricState::
  /// RemoveSource), under the write side. `overflow[i]`: no source named
  /// like sources[i] is left. Returns how many.
  size_t RemoveSources(const std::vector<SourceLabels>& sources,
                       const std::vector<bool>& overflow);

  /// Copies every series' values under the write side, so that no batch is
  /// half counted; `under_lock` runs there too (to copy what must match the
  /// values exactly: committed positions, per-source counters). Metrics by
  /// name.
  std::vector<MetricSnapshot> Snapshot(
      const std::function<void()>& under_lock = nullptr) const;

  /// Before consumers start: adds saved values to the metrics whose
  /// Signature() is unchanged. Returns the names restored; a metric that
  /// is gone or was redefined starts from zero.
  std::vector<std::string> Restore(const std::vector<MetricSnapshot>& saved);

  /// Appends the exposition of every rule metric, by name. Reads the
  /// series directly (no registry copy, no sorting). Thread-safe.
  void AppendExposition(std::string* out) const;

  std::shared_lock<WriterFirstMutex> ReadLock() const {
    return std::shared_lock<WriterFirstMutex>(world_);
  }
  const SeriesBudget& budget() const { return budget_; }
  const std::vector<std::string>& sources() const { return source_names_; }
  uint64_t generation() const { return generation_.load(); }
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  static int64_t NowSeconds();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& overflow_;
  SeriesBudget budget_;
  std::vector<std::string> source_names_;
  mutable WriterFirstMutex world_;
  std::atomic<uint64_t> generation_{1};
  std::map<std::string, std::unique_ptr<MetricState>> metrics_;
};

}  // namespace sshtail
