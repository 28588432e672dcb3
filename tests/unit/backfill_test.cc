#include "sshtail/backfill.h"

#include <catch2/catch.hpp>
#include <sstream>
#include <string>

#include "sshtail/log_time.h"

using sshtail::BackfillStore;
using sshtail::MetricDef;
using sshtail::MetricType;
using sshtail::TimeLayout;

namespace {

TimeLayout Layout(const std::string& spec) {
  TimeLayout t;
  std::string error;
  REQUIRE(TimeLayout::FromSpec(spec, &t, &error));
  return t;
}

double Parse(const TimeLayout& t, const std::string& text) {
  double v = -1;
  REQUIRE(t.Parse(text, &v));
  return v;
}

bool Fails(const TimeLayout& t, const std::string& text) {
  double v;
  return !t.Parse(text, &v);
}

}  // namespace

TEST_CASE("days from civil", "[time]") {
  CHECK(sshtail::DaysFromCivil(1970, 1, 1) == 0);
  CHECK(sshtail::DaysFromCivil(2000, 3, 1) == 11017);
  CHECK(sshtail::DaysFromCivil(1969, 12, 31) == -1);
  CHECK(sshtail::DaysFromCivil(2024, 2, 29) == 19782);
}

TEST_CASE("nginx $time_local", "[time]") {
  TimeLayout t = Layout("nginx");
  CHECK(Parse(t, "14/Nov/2023:22:13:20 +0000") == 1700000000);
  // The offset is east of UTC: 23:13:20 at +0100 is 22:13:20 UTC.
  CHECK(Parse(t, "14/Nov/2023:23:13:20 +0100") == 1700000000);
  CHECK(Parse(t, "14/Nov/2023:17:43:20 -0430") == 1700000000);
  // Month names without locale, any case.
  CHECK(Parse(t, "29/feb/2024:00:00:00 +0000") == 1709164800);
  CHECK(Fails(t, "29/Feb/2023:00:00:00 +0000"));  // not a leap year
  CHECK(Fails(t, "14/Noe/2023:22:13:20 +0000"));
  CHECK(Fails(t, "14/Nov/2023:24:13:20 +0000"));
  CHECK(Fails(t, "14/Nov/2023:22:13:20"));
  CHECK(Fails(t, "14/Nov/2023:22:13:20 +0000 "));
  CHECK(Fails(t, ""));
  CHECK(Fails(t, "-"));
  CHECK(Parse(TimeLayout::ForNginxVariable("time_local"),
              "14/Nov/2023:22:13:20 +0000") == 1700000000);
}

TEST_CASE("iso8601 and unix", "[time]") {
  TimeLayout iso = Layout("iso8601");
  CHECK(Parse(iso, "2023-11-14T22:13:20+00:00") == 1700000000);
  CHECK(Parse(iso, "2023-11-14T23:13:20+01:00") == 1700000000);
  CHECK(Parse(iso, "2023-11-14T22:13:20Z") == 1700000000);
  CHECK(Parse(iso, "2023-11-14 22:13:20") == 1700000000);
  CHECK(Parse(iso, "2023-11-14T22:13:20.250Z") == Approx(1700000000.25));
  CHECK(Fails(iso, "2023-11-14T22:13"));
  CHECK(Fails(iso, "2023-13-14T22:13:20Z"));
  TimeLayout unix_time = Layout("msec");
  CHECK(Parse(unix_time, "1700000000.123") == Approx(1700000000.123));
  CHECK(Parse(Layout("unix"), "1700000000") == 1700000000);
  CHECK(Fails(unix_time, "-1"));
  CHECK(Fails(unix_time, "1e9"));
  CHECK(Fails(unix_time, "12a"));
}

TEST_CASE("time patterns", "[time]") {
  TimeLayout t = Layout("%Y-%m-%d %H:%M:%S");
  CHECK(Parse(t, "2023-11-14 22:13:20") == 1700000000);
  CHECK(Parse(t, "2023-11-14 22:13:20.5") == Approx(1700000000.5));
  CHECK(Parse(Layout("%d/%b/%Y:%H:%M:%S %z"), "14/Nov/2023:22:13:20 +00:00") ==
        1700000000);
  CHECK(Parse(Layout("%Y%m%dT%H%M%S%z"), "20231114T221320Z") == 1700000000);
  TimeLayout bad;
  std::string error;
  CHECK_FALSE(TimeLayout::FromSpec("%Q", &bad, &error));
  CHECK(error.find("%Q") != std::string::npos);
  CHECK_FALSE(TimeLayout::FromSpec("no directive", &bad, &error));
  CHECK(TimeLayout::ForNginxVariable("status").kind() ==
        TimeLayout::Kind::kNone);
}

TEST_CASE("openmetrics writer: cumulative, every step, out of order",
          "[backfill]") {
  BackfillStore store(60000);
  MetricDef req;
  req.name = "req_total";
  req.help = "Requests \"now\".";
  req.type = MetricType::kCounter;
  int k1 = 0, k2 = 0;
  auto* a = store.Find(&k1, req, {{"status", "200"}, {"source", "x"}});
  auto* b = store.Find(&k2, req, {{"status", "500"}, {"source", "x"}});
  CHECK(store.Find(&k1, req, {}) == a);  // by key
  store.Observe(a, 1700000000, 1);       // step ends 1700000040
  store.Observe(a, 1700000130, 1);       // ends 1700000160
  store.Observe(a, 1700000030, 1);       // out of order: first step again
  store.Observe(b, 1700000100, 2);       // ends 1700000160
  std::ostringstream out;
  store.Write(out);
  CHECK(out.str() ==
        "# TYPE req counter\n"
        "# HELP req Requests \\\"now\\\".\n"
        "req_total{source=\"x\",status=\"200\"} 2 1700000040\n"
        "req_total{source=\"x\",status=\"200\"} 2 1700000100\n"
        "req_total{source=\"x\",status=\"200\"} 3 1700000160\n"
        "req_total{source=\"x\",status=\"500\"} 2 1700000160\n"
        "# EOF\n");
  CHECK(store.series() == 2);
  CHECK(store.steps() == 3);
  CHECK(store.deltas() == 3);
  CHECK(store.samples() == 4);
}

TEST_CASE("openmetrics writer: histogram, gauge, counter without _total",
          "[backfill]") {
  BackfillStore store(1000);
  MetricDef h;
  h.name = "lat_seconds";
  h.type = MetricType::kHistogram;
  h.buckets = {0.1, 1};
  MetricDef g;
  g.name = "last_seconds";
  g.type = MetricType::kGauge;
  MetricDef c;
  c.name = "bytes";
  c.type = MetricType::kCounter;
  int kh = 0, kg = 0, kc = 0;
  auto* hs = store.Find(&kh, h, {{"m", "GET"}});
  auto* gs = store.Find(&kg, g, {});
  auto* cs = store.Find(&kc, c, {});
  store.Observe(hs, 10.5, 0.05);
  store.Observe(hs, 10.7, 5);
  store.Observe(hs, 11.2, 0.5);
  store.Observe(gs, 10.9, 7);
  store.Observe(gs, 10.1, 3);  // older line: does not win
  store.Observe(cs, 11.5, 100);
  std::ostringstream out;
  store.Write(out);
  CHECK(out.str() ==
        "# TYPE bytes unknown\n"
        "bytes 100 12\n"
        "# TYPE last_seconds gauge\n"
        "last_seconds 7 11\n"
        "last_seconds 7 12\n"
        "# TYPE lat_seconds histogram\n"
        "lat_seconds_bucket{m=\"GET\",le=\"0.1\"} 1 11\n"
        "lat_seconds_bucket{m=\"GET\",le=\"1\"} 1 11\n"
        "lat_seconds_bucket{m=\"GET\",le=\"+Inf\"} 2 11\n"
        "lat_seconds_count{m=\"GET\"} 2 11\n"
        "lat_seconds_sum{m=\"GET\"} 5.05 11\n"
        "lat_seconds_bucket{m=\"GET\",le=\"0.1\"} 1 12\n"
        "lat_seconds_bucket{m=\"GET\",le=\"1\"} 2 12\n"
        "lat_seconds_bucket{m=\"GET\",le=\"+Inf\"} 3 12\n"
        "lat_seconds_count{m=\"GET\"} 3 12\n"
        "lat_seconds_sum{m=\"GET\"} 5.55 12\n"
        "# EOF\n");
}

TEST_CASE("openmetrics writer: empty input is just EOF", "[backfill]") {
  BackfillStore store(60000);
  std::ostringstream out;
  store.Write(out);
  CHECK(out.str() == "# EOF\n");
  CHECK(store.steps() == 0);
}

#include "sshtail/engine.h"
#include "test_util.h"

namespace sshtail {
namespace {

TEST_CASE("evaluator routes timed lines to their steps, caps kept",
          "[backfill]") {
  RuleContext ctx;
  ctx.default_format = "$remote_addr [$time_local] \"$request\" $status";
  const char* yaml = R"(
rules:
  - name: n
    log_format: default
    metrics:
      - name: req_total
        type: counter
        labels: {path: path}
        max_series: 2
)";
  RuleHarness h(yaml, {{"web1", {}}}, ctx);
  RuleSetDef defs = ParseRules(yaml, "test.yml", ctx);
  ValidateRules(defs, ctx);
  auto timed = CompiledRules::Build(defs, &h.store, true, true);
  CHECK(timed->rules()[0].time_field >= 0);
  BackfillStore history(60000);
  h.eval->SetBackfill(&history);
  auto line = [](const std::string& t, const std::string& path) {
    return "1.2.3.4 [" + t + "] \"GET " + path + " HTTP/1.1\" 200";
  };
  LineBatch b;
  b.seq = 1;
  for (const auto& l :
       {line("14/Nov/2023:22:13:20 +0000", "/a"),
        line("14/Nov/2023:22:14:05 +0000", "/a"),
        line("14/Nov/2023:22:13:59 +0000", "/b"),  // late: its own step
        line("14/Nov/2023:22:14:10 +0000", "/c"),  // past max_series
        line("14/Nov/2023:22:14:11 +0000", "/d"),  // the same overflow
        line("32/Nov/2023:22:14:11 +0000", "/a"),  // no valid time
        std::string("garbage")}) {
    b.data += l + "\n";
    ++b.lines;
  }
  {
    auto lock = h.store.ReadLock();
    CHECK(h.eval->Process(b, timed) == 2);
  }
  CHECK(h.eval->untimed_lines() == 1);
  // The live metric is untouched.
  CHECK(h.Value("req_total", {{"source", "web1"}, {"path", "/a"}}) == 0);
  std::ostringstream out;
  history.Write(out);
  CHECK(out.str() ==
        "# TYPE req counter\n"
        "# HELP req req_total\n"
        "req_total{path=\"/a\",source=\"web1\"} 1 1700000040\n"
        "req_total{path=\"/a\",source=\"web1\"} 2 1700000100\n"
        "req_total{path=\"/b\",source=\"web1\"} 1 1700000040\n"
        "req_total{path=\"/b\",source=\"web1\"} 1 1700000100\n"
        "req_total{path=\"__overflow__\",source=\"web1\"} 2 1700000100\n"
        "# EOF\n");
}

TEST_CASE("with_time needs a time in every rule", "[backfill]") {
  RuleContext ctx;
  ctx.default_format = "$remote_addr \"$request\" $status";
  RuleSetDef defs = ParseRules(BuiltinNginxRules(), "nginx.yml", ctx);
  ValidateRules(defs, ctx);
  CHECK_NOTHROW(CompiledRules::Build(defs, nullptr));
  CHECK_THROWS_WITH(CompiledRules::Build(defs, nullptr, true, true),
                    Catch::Contains("has no time"));
  const char* regex_rule = R"(
rules:
  - name: r
    regex: '(?P<ts>[0-9.]+) (?P<x>.*)'
    time: {field: ts, format: unix}
    metrics: [{name: x_total, type: counter}]
)";
  RuleSetDef r = ParseRules(regex_rule, "r.yml", RuleContext{});
  ValidateRules(r, RuleContext{});
  CHECK(CompiledRules::Build(r, nullptr, true, true)->rules()[0].time_field >=
        0);
  CHECK_THROWS_WITH(
      ParseRules("rules: [{name: r, regex: '(?P<ts>.*)', time: {field: ts}, "
                 "metrics: [{name: x_total, type: counter}]}]",
                 "r.yml", RuleContext{}),
      Catch::Contains("time needs a format"));
  RuleSetDef unknown = ParseRules(
      "rules: [{name: r, regex: '(?P<ts>.*)', time: {field: t, "
      "format: unix}, metrics: [{name: x_total, type: counter}]}]",
      "r.yml", RuleContext{});
  CHECK_THROWS_WITH(ValidateRules(unknown, RuleContext{}),
                    Catch::Contains("unknown field 't'"));
}

}  // namespace
}  // namespace sshtail
