#pragma once

#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "sshtail/engine.h"
#include "sshtail/metric_store.h"
#include "sshtail/rules.h"

namespace sshtail {

/// A rule set with its own store and one evaluator (as in a consumer).
struct FuzzRules {
  FuzzRules(const std::string& yaml, RuleContext ctx, bool allow_scan = true)
      : registry(std::make_shared<prometheus::Registry>()),
        overflow(
            prometheus::BuildCounter().Name("o").Help("o").Register(*registry)),
        store(overflow),
        sources{{"s", {}}} {
    RuleSetDef defs = ParseRules(yaml, "fuzz.yml", ctx);
    ValidateRules(defs, ctx);
    store.Apply(defs);
    rules = CompiledRules::Build(defs, &store, allow_scan);
    eval = std::make_unique<Evaluator>(store, sources);
  }

  bool Line(std::string_view line) {
    auto lock = store.ReadLock();
    return eval->ProcessLine(line, 0, rules);
  }

  /// Every sample as text, sorted: to compare two rule sets' effects.
  std::string Dump() {
    eval->Flush();
    std::vector<std::string> out;
    for (const auto& f : store.registry()->Collect()) {
      for (const auto& m : f.metric) {
        std::ostringstream s;
        s << f.name;
        for (const auto& l : m.label) s << ' ' << l.name << '=' << l.value;
        s << ' ' << m.counter.value << ' ' << m.gauge.value << ' '
          << m.histogram.sample_count << ' ' << m.histogram.sample_sum;
        for (const auto& b : m.histogram.bucket) s << ' ' << b.cumulative_count;
        out.push_back(s.str());
      }
    }
    std::sort(out.begin(), out.end());
    std::string all;
    for (const auto& s : out) all += s + "\n";
    return all;
  }

  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Counter>& overflow;
  MetricStore store;
  std::vector<SourceLabels> sources;
  std::shared_ptr<const CompiledRules> rules;
  std::unique_ptr<Evaluator> eval;
};

}  // namespace sshtail
