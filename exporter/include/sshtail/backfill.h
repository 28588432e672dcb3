#pragma once

#include <prometheus/labels.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sshtail/rules.h"

namespace sshtail {

/// The history of every rule series for `--once --output openmetrics`:
/// per series, the deltas of each step (`--backfill.step`) of log time
/// that had lines, kept sparse (steps without lines cost nothing), then
/// written as OpenMetrics text with one sample per series and step.
///
/// A sample's timestamp is the end of its step and its value is cumulative
/// over every line read with a time before it: a counter's value at T is
/// the number of lines (or the sum of values) timed before T. A series is
/// written from its first step with lines to the last step of the whole
/// input. Lines out of time order go into the step of their own time.
///
/// Not thread-safe: one consumer thread fills it, Write() runs once it is
/// done.
class BackfillStore {
 public:
  struct Series;

  /// `step_ms` > 0. `extra` labels are set on every series (replacing a
  /// label of the same name), e.g. the job and instance Prometheus gives
  /// the live exporter's series, so that history and live data join.
  explicit BackfillStore(
      int64_t step_ms,
      std::vector<std::pair<std::string, std::string>> extra = {});
  ~BackfillStore();
  BackfillStore(const BackfillStore&) = delete;
  BackfillStore& operator=(const BackfillStore&) = delete;

  /// The series known by `key` (any stable pointer naming it), created
  /// with `def` and `labels` at first use. Never null.
  Series* Find(const void* key, const MetricDef& def,
               const prometheus::Labels& labels);

  /// One observation at `time` (Unix seconds): a counter or an adding
  /// gauge adds `value`, a set gauge takes it (the newest line by log time
  /// wins), a histogram observes it.
  void Observe(Series* series, double time, double value);

  /// Writes every family (by metric name, series in label order), then
  /// "# EOF". `out` is written in chunks of about 1 MiB.
  void Write(std::ostream& out) const;

  size_t series() const { return series_.size(); }
  /// Steps from the first to the last line's (0 when empty).
  int64_t steps() const { return any_ ? last_step_ - first_step_ + 1 : 0; }
  /// (series, step) pairs holding a delta.
  size_t deltas() const;
  /// Bytes held by the deltas and labels (not the allocator's overhead).
  size_t memory_bytes() const;
  /// Samples Write() produces (a histogram's point counts once per sample).
  uint64_t samples() const;

 private:
  int64_t StepOf(double time) const;

  const int64_t step_ms_;
  const std::vector<std::pair<std::string, std::string>> extra_;
  bool any_ = false;
  int64_t first_step_ = 0;
  int64_t last_step_ = 0;
  std::unordered_map<const void*, std::unique_ptr<Series>> series_;
};

}  // namespace sshtail
