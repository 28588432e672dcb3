#pragma once

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sources/source_table.h"
#include "sshtail/batch_queue.h"
#include "sshtail/source.h"

namespace sshtail {

/// Per-source counters the consumers update (cached handles).
struct SourceCounters {
  prometheus::Counter* lines = nullptr;
  prometheus::Counter* unmatched = nullptr;
  prometheus::Counter* bytes = nullptr;
  prometheus::Counter* too_long = nullptr;
};

/// The exporter's own metrics (sshtail_*). Counters live in a registry the
/// consumers update; producer state is read from SourceStatus at scrape
/// time, so producers never touch the registry. Thread-safe.
class SelfMetrics : public prometheus::Collectable {
 public:
  /// Reports on the active sources of `table`, read at scrape time.
  SelfMetrics(const SourceTable& table, const BatchQueue& queue);

  std::vector<prometheus::MetricFamily> Collect() const override;

  /// The counters of runtime source `source`, created at first use with
  /// its labels (`source`, and `file` for a glob's match). A slot's labels
  /// are set before its first batch.
  const SourceCounters& counters(uint32_t source);
  /// Drops the counters of a source a reload removed.
  void Remove(uint32_t source);
  prometheus::Family<prometheus::Counter>& overflow() { return *overflow_; }
  prometheus::Gauge& reload_ok() { return *reload_ok_; }
  prometheus::Gauge& reload_time() { return *reload_time_; }
  prometheus::Counter& reloads_failed() { return *reloads_failed_; }
  /// Sharded replicas only (the families appear at the first call): this
  /// replica's index, the count, the hosts it follows and those it waits
  /// for (hashed here, still held by another replica). One caller at a
  /// time (the exporter's reload mutex).
  /// `handing_over`: hosts let go whose state could not be written yet
  /// (their lock is kept, the write retried); `failed_writes` such writes
  /// that failed since start.
  void SetShard(int index, int count, size_t followed, size_t waiting,
                size_t handing_over = 0, size_t failed_writes = 0);
  /// With a positions or state file (the families appear at this call,
  /// once, at start): how many damaged generations were set aside, and
  /// whether the run resumed from the previous generation (FILE.prev).
  void StateFileLoaded(int set_aside, bool from_previous);
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  const SourceTable& table_;
  const BatchQueue& queue_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* lines_;
  prometheus::Family<prometheus::Counter>* unmatched_;
  prometheus::Family<prometheus::Counter>* bytes_;
  prometheus::Family<prometheus::Counter>* too_long_;
  std::mutex mutex_;
  std::map<uint32_t, SourceCounters> counters_;  // guarded by mutex_
  prometheus::Family<prometheus::Counter>* overflow_;
  prometheus::Gauge* reload_ok_;
  prometheus::Gauge* reload_time_;
  prometheus::Counter* reloads_failed_;
  prometheus::Gauge* shard_index_ = nullptr;
  prometheus::Gauge* shard_count_ = nullptr;
  prometheus::Gauge* shard_followed_ = nullptr;
  prometheus::Gauge* shard_waiting_ = nullptr;
  prometheus::Gauge* shard_handing_over_ = nullptr;
  prometheus::Counter* shard_failed_writes_ = nullptr;
  double shard_failed_shown_ = 0;
};

}  // namespace sshtail
