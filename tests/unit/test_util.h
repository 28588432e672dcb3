#pragma once

#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sshtail/engine.h"
#include "sshtail/metric_store.h"
#include "sshtail/rules.h"

namespace sshtail {

/// A fresh directory under /tmp, removed with everything in it.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/sshtail-unit-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// Writes `text` to `name` in it; returns the path.
  std::string Write(const std::string& name, const std::string& text) const {
    std::string p = path + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  std::string path;
};

/// `lines` (each without '\n') as one batch of `source`.
inline LineBatch MakeBatch(const std::vector<std::string>& lines,
                           uint32_t source, uint64_t seq) {
  LineBatch b;
  b.source = source;
  b.seq = seq;
  for (const auto& l : lines) {
    b.data += l;
    b.data += '\n';
    ++b.lines;
  }
  return b;
}

/// Sum over the samples of family `name` whose `source` label is `source`
/// of `value(metric)`.
template <typename ValueFn>
double SumForSource(const prometheus::Registry& registry,
                    const std::string& name, const std::string& source,
                    ValueFn value) {
  double sum = 0;
  for (const auto& fam : registry.Collect()) {
    if (fam.name != name) continue;
    for (const auto& m : fam.metric) {
      for (const auto& l : m.label) {
        if (l.name == "source" && l.value == source) sum += value(m);
      }
    }
  }
  return sum;
}

/// A rule set loaded from YAML text, bound to its own store: what the
/// consumers run, without the threads.
struct RuleHarness {
  explicit RuleHarness(
      const std::string& yaml, std::vector<SourceLabels> srcs = {{"src", {}}},
      RuleContext ctx = {},
      size_t max_series_total = MetricStore::kDefaultMaxSeriesTotal)
      : sources(std::move(srcs)),
        overflow_registry(std::make_shared<prometheus::Registry>()),
        overflow(prometheus::BuildCounter()
                     .Name("sshtail_series_overflow_total")
                     .Help("x")
                     .Register(*overflow_registry)),
        store(overflow, max_series_total) {
    RuleSetDef defs = ParseRules(yaml, "test.yml", ctx);
    ValidateRules(defs, ctx);
    store.Apply(defs);
    rules = CompiledRules::Build(defs, &store);
    eval = std::make_unique<Evaluator>(store, sources);
  }

  /// Feeds lines (each without '\n') as one batch; returns unmatched count.
  uint64_t Feed(const std::vector<std::string>& lines, uint32_t source = 0) {
    LineBatch b = MakeBatch(lines, source, ++seq);
    auto lock = store.ReadLock();
    return eval->Process(b, rules);
  }

  /// Value of a counter/gauge sample, or of a histogram's _count/_sum
  /// (name with that suffix); -1 if absent.
  double Value(const std::string& name,
               const std::map<std::string, std::string>& labels) const {
    for (const auto& fam : store.registry()->Collect()) {
      std::string base = fam.name;
      for (const auto& m : fam.metric) {
        std::map<std::string, std::string> got;
        for (const auto& l : m.label) got[l.name] = l.value;
        if (got != labels) continue;
        if (name == base) {
          return fam.type == prometheus::MetricType::Counter ? m.counter.value
                                                             : m.gauge.value;
        }
        if (name == base + "_count") {
          return static_cast<double>(m.histogram.sample_count);
        }
        if (name == base + "_sum") return m.histogram.sample_sum;
      }
    }
    return -1;
  }

  size_t SeriesCount(const std::string& name) const {
    for (const auto& fam : store.registry()->Collect()) {
      if (fam.name == name) return fam.metric.size();
    }
    return 0;
  }

  /// Overflowed lines of `metric` (of one source, if given); -1 if none.
  double Overflow(const std::string& metric,
                  const std::string& source = "") const {
    double sum = -1;
    for (const auto& fam : overflow_registry->Collect()) {
      for (const auto& m : fam.metric) {
        std::map<std::string, std::string> got;
        for (const auto& l : m.label) got[l.name] = l.value;
        if (got["metric"] != metric) continue;
        if (!source.empty() && got["source"] != source) continue;
        sum = std::max(sum, 0.0) + m.counter.value;
      }
    }
    return sum;
  }

  std::vector<SourceLabels> sources;
  std::shared_ptr<prometheus::Registry> overflow_registry;
  prometheus::Family<prometheus::Counter>& overflow;
  MetricStore store;
  std::shared_ptr<const CompiledRules> rules;
  std::unique_ptr<Evaluator> eval;
  uint64_t seq = 0;
};

}  // namespace sshtail
