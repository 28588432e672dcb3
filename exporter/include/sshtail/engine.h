#pragma once

#include <re2/re2.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sshtail/batch.h"
#include "sshtail/metric_store.h"
#include "sshtail/rules.h"
#include "sshtail/source_labels.h"

namespace sshtail {

class BackfillStore;

/// How to read one field out of a match.
struct FieldRef {
  enum class Kind { kRaw, kMethod, kPath, kProtocol };
  int group = 0;  ///< capturing group, 1-based
  int part = 0;   ///< which variable of a shared nginx group
  int slot = -1;  ///< scan mode: the variable's step in CompiledRule::scan
  Kind kind = Kind::kRaw;
  bool multi = false;  ///< nginx multi-value: label = last, number = sum
};

/// A label with its mapping, ready to run.
struct CompiledLabel {
  LabelDef def;
  int field = -1;  ///< index into CompiledRule::fields, -1 for a constant
  std::vector<std::pair<std::unique_ptr<RE2>, std::string>> replace;
  std::unordered_map<std::string, std::string> map;
};

struct CompiledMetric {
  MetricState* state = nullptr;
  MetricType type = MetricType::kCounter;
  int value_field = -1;  ///< -1: a counter adds 1
  bool gauge_set = true;
  std::vector<double> buckets;
};

/// Metrics of a rule that share their label definitions: one lookup serves
/// them all.
struct CompiledGroup {
  std::vector<CompiledLabel> labels;
  std::vector<CompiledMetric> metrics;
};

struct CompiledFilter {
  int field = 0;
  std::string regex;
  bool skip = false;
};

struct CompiledRule {
  std::string name;
  std::string pattern;
  int submatches = 1;  ///< groups to ask RE2 for, including $0
  std::vector<FieldRef> fields;
  std::vector<std::vector<std::string>> group_seps;  ///< per group (nginx)
  /// nginx formats that allow it are matched by scanning (NginxScan);
  /// empty: RE2 matches and fields come from its groups.
  NginxScan scan;
  NginxEscape escape = NginxEscape::kNone;
  std::vector<CompiledFilter> filters;
  std::vector<CompiledGroup> groups;
  /// Backfill only (Build with `with_time`): the field holding the line's
  /// time, and how it is written.
  int time_field = -1;
  TimeLayout time_layout;
};

/// A rule set bound to the metric store. Immutable once built; shared by
/// consumer threads.
class CompiledRules {
 public:
  /// Resolves fields and binds metrics (which must be in `store`). Call with
  /// the store's write side held or before consumers start. Throws
  /// ConfigError. With `store` null, only checks: everything that can fail
  /// fails here, so a reload can check first and then swap.
  /// `allow_scan` false forces capture groups even where an nginx format
  /// could be scanned (for differential tests). `with_time` also captures
  /// each rule's time field (for --output openmetrics); a rule without one
  /// is a ConfigError then.
  static std::shared_ptr<const CompiledRules> Build(const RuleSetDef& def,
                                                    const MetricStore* store,
                                                    bool allow_scan = true,
                                                    bool with_time = false);

  const std::vector<CompiledRule>& rules() const { return rules_; }

 private:
  std::vector<CompiledRule> rules_;
};

/// A place in a batch: the byte offset of the next line and its number.
struct BatchCursor {
  size_t offset = 0;
  uint64_t line_no = 0;
};

/// Runs compiled rules over batches and updates the metrics. Counts are
/// accumulated per batch and added to prometheus-cpp metrics once per batch
/// and series. One per consumer thread; not thread-safe.
class Evaluator {
 public:
  Evaluator(MetricStore& store, const std::vector<SourceLabels>& sources);
  ~Evaluator();

  /// Evaluates every line of `batch`. The caller holds store.ReadLock().
  /// Returns the number of lines no rule matched.
  uint64_t Process(const LineBatch& batch,
                   const std::shared_ptr<const CompiledRules>& rules);

  /// Evaluates the lines of `batch` from `*at` on with `rules`, as Process()
  /// does but without the final Flush(): at most `max_lines` lines, and
  /// with `run` and `stop_run` > 0 it stops after the line that makes `*run`
  /// (unmatched lines in a row, carried over between calls) reach
  /// `stop_run`. Several rule sets may be used in turn within a batch.
  /// Returns the number of lines no rule matched.
  uint64_t ProcessLines(const LineBatch& batch,
                        const std::shared_ptr<const CompiledRules>& rules,
                        BatchCursor* at, uint32_t* run, uint32_t stop_run,
                        uint64_t max_lines = UINT64_MAX);

  /// Evaluates one line (for tests and fuzzing); returns whether a rule
  /// matched. Flush() makes the effect visible.
  bool ProcessLine(std::string_view line, uint32_t source,
                   const std::shared_ptr<const CompiledRules>& rules);
  void Flush();

  /// Backfill mode: from now on each matching line's deltas go to `sink`,
  /// into the step of the line's own time (rules must be built with
  /// `with_time`), and the live metrics are left alone. A line that a rule
  /// matches but whose time does not parse is not counted by that rule; if
  /// no rule counted it, it is unmatched. Series still go through the
  /// store's caps (overflow series included). `sink` must outlive this.
  void SetBackfill(BackfillStore* sink);
  /// Lines unmatched only because their time did not parse (backfill).
  uint64_t untimed_lines() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// "GET", "POST", ... for a known HTTP method, "other" for anything else.
std::string_view NormalizeMethod(std::string_view token);

/// Parses a number the way log values look: "12", "0.004", "-" (absent),
/// or an nginx multi-value "0.004, 0.012 : 0.003" (summed, "-" skipped).
/// Returns false when there is no number.
bool ParseLogNumber(std::string_view text, double* out);

}  // namespace sshtail
