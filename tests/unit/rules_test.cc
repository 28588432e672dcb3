#include "sshtail/rules.h"

#include <catch2/catch.hpp>
#include <string>

#include "sshtail/state_file.h"

namespace sshtail {
namespace {

// The one-line error for `yaml`, or "" if it loads.
std::string ErrorOf(const std::string& yaml, RuleContext ctx = {}) {
  try {
    RuleSetDef d = ParseRules(yaml, "r.yml", ctx);
    ValidateRules(d, ctx);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("the built-in rules load for every named format") {
  for (const char* f : {"combined", "timed", "main"}) {
    RuleContext ctx;
    ctx.default_format = f;
    RuleSetDef d = ParseRules(BuiltinNginxRules(), "nginx.yml", ctx);
    REQUIRE_NOTHROW(ValidateRules(d, ctx));
    REQUIRE(d.rules.size() == 1);
    size_t expect = std::string(f) == "timed" ? 4 : 2;
    CHECK(d.rules[0].metrics.size() == expect);
  }
}

TEST_CASE("errors name file and line") {
  CHECK(ErrorOf("rules:\n  - name: x\n    regex: 'a'\n  metrics: [") ==
        ErrorOf("rules:\n  - name: x\n    regex: 'a'\n  metrics: ["));
  CHECK(ErrorOf("rules: [\n").rfind("r.yml:", 0) == 0);

  std::string bad_regex =
      "rules:\n  - name: x\n    regex: '(unclosed'\n    metrics: []\n";
  CHECK(ErrorOf(bad_regex).rfind("r.yml:3: bad regex", 0) == 0);

  std::string unknown_field =
      "rules:\n"
      "  - name: x\n"
      "    log_format: '$status $request_time'\n"
      "    metrics:\n"
      "      - name: a_total\n"
      "        type: counter\n"
      "        labels:\n"
      "          host: host\n";
  CHECK(ErrorOf(unknown_field)
            .rfind("r.yml:8: rule 'x': label 'host': "
                   "unknown field 'host'",
                   0) == 0);

  std::string bad_name =
      "rules:\n  - name: x\n    regex: 'a'\n    metrics:\n"
      "      - name: 1bad\n        type: counter\n";
  CHECK(ErrorOf(bad_name) == "r.yml:5: invalid metric name '1bad'");

  // Found by fuzz_rules: names prometheus-cpp reserves must fail at load,
  // not throw when the metric is registered.
  std::string reserved =
      "rules:\n  - name: x\n    regex: a\n    metrics:\n"
      "      - name: __x\n        type: counter\n";
  CHECK(ErrorOf(reserved) == "r.yml:5: invalid metric name '__x'");

  std::string unsorted =
      "rules:\n  - name: x\n    regex: '(?P<v>\\d+)'\n    metrics:\n"
      "      - name: h\n        type: histogram\n        value: v\n"
      "        buckets: [1, 5, 2]\n";
  CHECK(ErrorOf(unsorted) ==
        "r.yml:8: buckets must be sorted in increasing order");

  std::string dup =
      "rules:\n"
      "  - name: a\n    regex: '(?P<v>\\d+)'\n    metrics:\n"
      "      - {name: m_total, type: counter, labels: {v: v}}\n"
      "  - name: b\n    regex: '(?P<w>\\d+)'\n    metrics:\n"
      "      - {name: m_total, type: counter, labels: {w: w}}\n";
  CHECK(ErrorOf(dup).rfind("r.yml:9: metric 'm_total' is defined again", 0) ==
        0);

  std::string unknown_var =
      "rules:\n  - name: x\n    log_format: '$remote_adr $status'\n"
      "    metrics: [{name: a_total, type: counter}]\n";
  CHECK(ErrorOf(unknown_var) ==
        "r.yml:3: unknown nginx variable $remote_adr (did you mean "
        "$remote_addr?); list variables of third-party modules under "
        "nginx_variables");

  std::string unknown_key =
      "rules:\n  - name: x\n    regex: a\n    metircs: []\n";
  CHECK(
      ErrorOf(unknown_key).rfind("r.yml:4: unknown key 'metircs' in rule", 0) ==
      0);
}

TEST_CASE("regexes are checked as they are matched: bytes, not UTF-8") {
  // Valid UTF-8 RE2, invalid Latin-1 RE2: a check that accepted it let a
  // reload fail half-way (issue 9, defect 1).
  std::string rule =
      "rules:\n  - name: x\n    regex: '(?P<a>a)(?:\\x{100})?'\n"
      "    metrics:\n      - {name: x_total, type: counter}\n";
  CHECK(ErrorOf(rule).rfind("r.yml:3: bad regex", 0) == 0);
  std::string filter =
      "rules:\n  - name: x\n    regex: '(?P<a>a)'\n"
      "    match: {field: a, regex: '\\x{100}'}\n"
      "    metrics:\n      - {name: x_total, type: counter}\n";
  CHECK(ErrorOf(filter).find("bad regex") != std::string::npos);
}

TEST_CASE("shared metric with identical definition is allowed") {
  std::string same =
      "rules:\n"
      "  - name: a\n    regex: '(?P<v>\\d+)'\n    metrics:\n"
      "      - {name: m_total, type: counter, labels: {v: v}}\n"
      "  - name: b\n    regex: 'x(?P<v>\\d+)'\n    metrics:\n"
      "      - {name: m_total, type: counter, labels: {v: v}}\n";
  CHECK(ErrorOf(same).empty());
}

TEST_CASE("reserved labels and fields") {
  RuleContext ctx;
  ctx.reserved_labels = {"source", "dc"};
  CHECK(ErrorOf("rules:\n  - name: x\n    regex: '(?P<v>.)'\n    metrics:\n"
                "      - {name: a, type: counter, labels: {dc: v}}\n",
                ctx)
            .find("label 'dc' is set by the exporter") != std::string::npos);
  CHECK(ErrorOf("rules:\n  - name: x\n    regex: '(?P<v>.)'\n    metrics:\n"
                "      - {name: sshtail_x, type: counter}\n")
            .find("reserved") != std::string::npos);
}

TEST_CASE("optional metrics are dropped when their field is missing") {
  RuleContext ctx;
  ctx.default_format = "$status \"$request\"";
  RuleSetDef d = ParseRules(BuiltinNginxRules(), "nginx.yml", ctx);
  ValidateRules(d, ctx);
  REQUIRE(d.rules[0].metrics.size() == 1);
  CHECK(d.rules[0].metrics[0].name == "nginx_http_requests_total");
}

TEST_CASE("ttl and max_series parse") {
  RuleSetDef d = ParseRules(
      "rules:\n  - name: x\n    regex: '(?P<v>.)'\n    metrics:\n"
      "      - {name: a, type: counter, labels: {v: v}, max_series: 5, ttl: "
      "2h}\n",
      "r.yml", {});
  CHECK(d.rules[0].metrics[0].max_series == 5);
  CHECK(d.rules[0].metrics[0].ttl == std::chrono::hours(2));
  CHECK(ErrorOf("rules:\n  - name: x\n    regex: a\n    metrics:\n"
                "      - {name: a, type: counter, ttl: soon}\n") ==
        "r.yml:5: ttl must look like 30s, 15m, 2h or 7d");
}

TEST_CASE("a metric's labels with the sources' stay within the state file's") {
  auto with = [](size_t n) {
    std::string y =
        "rules:\n"
        "  - name: x\n"
        "    regex: '(?P<a>.*)'\n"
        "    metrics:\n"
        "      - name: a_total\n"
        "        type: counter\n";
    if (n > 0) y += "        labels:\n";
    for (size_t i = 0; i < n; ++i) {
      y += "          l" + std::to_string(i) + ": a\n";
    }
    return y;
  };
  // `source` and `file` come on top: 62 of the metric's own at most.
  CHECK(ErrorOf(with(kMaxSeriesLabels - 2)) == "");
  CHECK(ErrorOf(with(kMaxSeriesLabels - 1))
            .rfind("r.yml:8: metric 'a_total' has 63 labels", 0) == 0);
  RuleContext ctx;
  for (int i = 0; i < 10; ++i) {
    ctx.reserved_labels.push_back("s" + std::to_string(i));
  }
  CHECK(ErrorOf(with(kMaxSeriesLabels - 12), ctx) == "");
  CHECK(ErrorOf(with(kMaxSeriesLabels - 11), ctx).rfind("r.yml:8:", 0) == 0);
  // A metric without labels of its own: still the sources' (line 5).
  for (int i = 10; i < 63; ++i) {
    ctx.reserved_labels.push_back("s" + std::to_string(i));
  }
  CHECK(ErrorOf(with(0), ctx).rfind("r.yml:5: metric 'a_total' has 0", 0) == 0);
}

}  // namespace
}  // namespace sshtail
