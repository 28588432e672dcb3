#include "sshtail/engine.h"

#include <catch2/catch.hpp>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "sshtail/text_format.h"
#include "test_util.h"

namespace sshtail {
namespace {

const char* kTimed =
    "1.2.3.4 - - [25/Nov/2026:08:15:21 +0000] \"GET /api/v1/users/42 "
    "HTTP/1.1\" 200 100 \"-\" \"curl/8\" 0.020 0.004, 0.012 : 0.003";

TEST_CASE("built-in nginx rules count a timed line") {
  RuleContext ctx;
  ctx.default_format = "timed";
  RuleHarness h(BuiltinNginxRules(), {{"web1", {}}}, ctx);
  CHECK(h.Feed({kTimed, kTimed, "garbage"}) == 1);
  CHECK(h.Value("nginx_http_requests_total",
                {{"source", "web1"}, {"method", "GET"}, {"status", "200"}}) ==
        2);
  CHECK(h.Value("nginx_http_response_bytes_total",
                {{"source", "web1"}, {"method", "GET"}, {"status", "200"}}) ==
        200);
  CHECK(h.Value("nginx_http_request_duration_seconds_count",
                {{"source", "web1"}, {"method", "GET"}}) == 2);
  CHECK(h.Value("nginx_http_request_duration_seconds_sum",
                {{"source", "web1"}, {"method", "GET"}}) == Approx(0.040));
  // Multi-value upstream time: the tries are summed.
  CHECK(h.Value("nginx_http_upstream_response_duration_seconds_sum",
                {{"source", "web1"}, {"method", "GET"}}) == Approx(0.038));
}

TEST_CASE("built-in rules with combined have no duration histograms") {
  RuleHarness h(BuiltinNginxRules());
  const char* line =
      "1.2.3.4 - - [25/Nov/2026:08:15:21 +0000] \"POST /x HTTP/1.1\" 503 7 "
      "\"-\" \"-\"";
  CHECK(h.Feed({line}) == 0);
  CHECK(h.Value("nginx_http_requests_total",
                {{"source", "src"}, {"method", "POST"}, {"status", "503"}}) ==
        1);
  CHECK(h.SeriesCount("nginx_http_request_duration_seconds") == 0);
  CHECK(h.rules->rules()[0].groups.size() == 1);  // both counters, one lookup
}

TEST_CASE("upstream - is not observed, odd request lines get method other") {
  RuleContext ctx;
  ctx.default_format = "timed";
  RuleHarness h(BuiltinNginxRules(), {{"s", {}}}, ctx);
  std::string pre = "1.2.3.4 - - [25/Nov/2026:08:15:21 +0000] ";
  CHECK(
      h.Feed({pre + "\"GET / HTTP/1.1\" 304 0 \"-\" \"-\" 0.001 -",
              pre + "\"\\x16\\x03\\x01\\x02\\x00\" 400 157 \"-\" \"-\" 0.000 -",
              pre + "\"RAW / HTTP/1.1\" 400 0 \"-\" \"-\" 0.000 -",
              pre + "\"-\" 400 0 \"-\" \"-\" 0.000 -",
              pre + "\"\" 400 0 \"-\" \"-\" 0.000 -"}) == 0);
  // No series at all: it is created at its first observation.
  CHECK(h.Value("nginx_http_upstream_response_duration_seconds_count",
                {{"source", "s"}, {"method", "GET"}}) == -1);
  CHECK(h.Value("nginx_http_request_duration_seconds_count",
                {{"source", "s"}, {"method", "GET"}}) == 1);
  CHECK(h.Value("nginx_http_requests_total",
                {{"source", "s"}, {"method", "other"}, {"status", "400"}}) ==
        4);
}

TEST_CASE("custom regex rule with counter value, gauge and histogram") {
  RuleHarness h(R"(
rules:
  - name: jobs
    regex: '^job=(?P<job>\w+) took=(?P<took>[0-9.]+) queue=(?P<queue>\d+) (?P<unused>.*)$'
    metrics:
      - name: jobs_total
        type: counter
        labels: {job: job}
      - name: job_seconds_total
        type: counter
        value: took
        labels: {job: job}
      - name: queue_length
        type: gauge
        value: queue
      - name: job_seconds
        type: histogram
        value: took
        buckets: [1, 5]
)");
  CHECK(h.Feed({"job=a took=0.5 queue=3 x", "job=a took=2 queue=7 y",
                "job=b took=9 queue=1 z", "nope"}) == 1);
  CHECK(h.Value("jobs_total", {{"source", "src"}, {"job", "a"}}) == 2);
  CHECK(h.Value("job_seconds_total", {{"source", "src"}, {"job", "a"}}) ==
        Approx(2.5));
  CHECK(h.Value("queue_length", {{"source", "src"}}) == 1);  // last line wins
  CHECK(h.Value("job_seconds_count", {{"source", "src"}}) == 3);
  CHECK(h.Value("job_seconds_sum", {{"source", "src"}}) == Approx(11.5));
  // The unused group was made non-capturing.
  RE2 re(h.rules->rules()[0].pattern, PatternOptions());
  CHECK(re.NumberOfCapturingGroups() == 3);
}

TEST_CASE("label mapping: status class, replace, lookup table, default") {
  RuleHarness h(R"(
rules:
  - name: web
    log_format: '$status "$request" $upstream_cache_status'
    metrics:
      - name: hits_total
        type: counter
        labels:
          class: {field: status, status_class: true}
          route:
            field: path
            replace:
              - {regex: '^/api/v1/users/\d+$', with: '/api/v1/users/:id'}
              - {regex: '^/static/.*', with: '/static/*'}
            default: other
          cache:
            field: upstream_cache_status
            map: {HIT: hit, MISS: miss, '-': none}
            default: other
          tier: {value: edge}
)");
  CHECK(h.Feed({"200 \"GET /api/v1/users/1 HTTP/1.1\" HIT",
                "201 \"GET /api/v1/users/22 HTTP/1.1\" HIT",
                "404 \"GET /static/app.js HTTP/1.1\" MISS",
                "500 \"GET /secret HTTP/1.1\" STALE",
                "503 \"GET /x HTTP/1.1\" -"}) == 0);
  CHECK(h.Value("hits_total", {{"source", "src"},
                               {"class", "2xx"},
                               {"route", "/api/v1/users/:id"},
                               {"cache", "hit"},
                               {"tier", "edge"}}) == 2);
  CHECK(h.Value("hits_total", {{"source", "src"},
                               {"class", "4xx"},
                               {"route", "/static/*"},
                               {"cache", "miss"},
                               {"tier", "edge"}}) == 1);
  CHECK(h.Value("hits_total", {{"source", "src"},
                               {"class", "5xx"},
                               {"route", "other"},
                               {"cache", "other"},
                               {"tier", "edge"}}) == 1);
  CHECK(h.Value("hits_total", {{"source", "src"},
                               {"class", "5xx"},
                               {"route", "other"},
                               {"cache", "none"},
                               {"tier", "edge"}}) == 1);
}

TEST_CASE("match and skip filters") {
  RuleHarness h(R"(
rules:
  - name: api
    log_format: '"$request" $status "$http_user_agent"'
    match: {field: path, regex: '^/api/'}
    skip: {field: http_user_agent, regex: 'kube-probe'}
    metrics:
      - name: api_requests_total
        type: counter
)");
  CHECK(h.Feed({"\"GET /api/a HTTP/1.1\" 200 \"curl\"",
                "\"GET /api/b HTTP/1.1\" 200 \"kube-probe/1.28\"",
                "\"GET /web HTTP/1.1\" 200 \"curl\""}) == 0);
  CHECK(h.Value("api_requests_total", {{"source", "src"}}) == 1);
}

TEST_CASE("static source labels and two sources") {
  RuleHarness h(R"(
rules:
  - name: r
    regex: '(?P<x>.)'
    metrics:
      - {name: x_total, type: counter, labels: {x: x}}
)",
                {{"a", {{"dc", "eu"}}}, {"b", {}}});
  h.Feed({"1", "1"}, 0);
  h.Feed({"1"}, 1);
  CHECK(h.Value("x_total", {{"source", "a"}, {"dc", "eu"}, {"x", "1"}}) == 2);
  CHECK(h.Value("x_total", {{"source", "b"}, {"x", "1"}}) == 1);
}

TEST_CASE("max_series sends new label sets to one overflow series") {
  RuleHarness h(R"(
rules:
  - name: r
    regex: 'path=(?P<path>\S+)'
    metrics:
      - {name: paths_total, type: counter, labels: {path: path}, max_series: 3}
)");
  std::vector<std::string> lines;
  for (int i = 0; i < 10; ++i) lines.push_back("path=/p" + std::to_string(i));
  lines.push_back("path=/p0");
  h.Feed(lines);
  CHECK(h.SeriesCount("paths_total") == 4);  // 3 + overflow
  CHECK(h.Value("paths_total", {{"source", "src"}, {"path", "/p0"}}) == 2);
  CHECK(h.Value("paths_total", {{"source", "src"}, {"path", "__overflow__"}}) ==
        7);
  CHECK(h.Overflow("paths_total") == 7);
}

TEST_CASE("max_series holds per source: a noisy source overflows alone") {
  // Issue 9, defect 7: one cap for all sources let one source's
  // cardinality take every other source's series.
  const char* rules = R"(
rules:
  - name: r
    regex: 'path=(?P<path>\S+)'
    metrics:
      - {name: paths_total, type: counter, labels: {path: path}, max_series: 3}
)";
  RuleHarness h(rules, {{"noisy", {{"dc", "eu"}}}, {"calm", {}}});
  std::vector<std::string> noisy;
  for (int i = 0; i < 50; ++i) noisy.push_back("path=/n" + std::to_string(i));
  h.Feed(noisy, 0);
  h.Feed({"path=/a", "path=/b", "path=/c", "path=/a"}, 1);
  CHECK(h.Value("paths_total", {{"source", "calm"}, {"path", "/a"}}) == 2);
  CHECK(h.Value("paths_total", {{"source", "calm"}, {"path", "/c"}}) == 1);
  CHECK(h.Value("paths_total", {{"source", "noisy"},
                                {"dc", "eu"},
                                {"path", "__overflow__"}}) == 47);
  CHECK(h.Overflow("paths_total", "noisy") == 47);
  CHECK(h.Overflow("paths_total", "calm") == -1);

  // The global bound: 4 series for everything; the rest overflows per
  // source, keeping its source label.
  RuleHarness g(rules, {{"a", {}}, {"b", {}}}, {}, 4);
  g.Feed({"path=/1", "path=/2", "path=/3"}, 0);
  g.Feed({"path=/1", "path=/2", "path=/3"}, 1);
  CHECK(g.store.budget().used() == 4);
  CHECK(g.Value("paths_total", {{"source", "b"}, {"path", "/1"}}) == 1);
  CHECK(g.Value("paths_total", {{"source", "b"}, {"path", "__overflow__"}}) ==
        2);
}

TEST_CASE("numbers are parsed without locale, multi-values summed") {
  double v = 0;
  CHECK(ParseLogNumber("12", &v));
  CHECK(v == 12);
  CHECK(ParseLogNumber("0.004", &v));
  CHECK(v == Approx(0.004));
  CHECK_FALSE(ParseLogNumber("-", &v));
  CHECK_FALSE(ParseLogNumber("", &v));
  CHECK_FALSE(ParseLogNumber("abc", &v));
  CHECK(ParseLogNumber("0.004, 0.012 : 0.003", &v));
  CHECK(v == Approx(0.019));
  CHECK(ParseLogNumber("-, 0.5", &v));
  CHECK(v == Approx(0.5));
  CHECK_FALSE(ParseLogNumber("- : -", &v));
  CHECK(NormalizeMethod("GET") == "GET");
  CHECK(NormalizeMethod("get") == "other");
  CHECK(NormalizeMethod("\\x16\\x03") == "other");
}

}  // namespace
}  // namespace sshtail

namespace sshtail {
namespace {

TEST_CASE("two evaluators on one store count every line once", "[threads]") {
  RuleContext ctx;
  ctx.default_format = "timed";
  RuleHarness h(BuiltinNginxRules(), {{"a", {}}, {"b", {}}}, ctx);
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      Evaluator eval(h.store, h.sources);
      for (int b = 0; b < 50; ++b) {
        LineBatch batch;
        batch.source = t;
        batch.seq = static_cast<uint64_t>(b + 1);
        for (int i = 0; i < 100; ++i) {
          batch.data += kTimed;
          batch.data += '\n';
        }
        auto lock = h.store.ReadLock();
        CHECK(eval.Process(batch, h.rules) == 0);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const char* src : {"a", "b"}) {
    CHECK(h.Value("nginx_http_requests_total",
                  {{"source", src}, {"method", "GET"}, {"status", "200"}}) ==
          5000);
    CHECK(h.Value("nginx_http_request_duration_seconds_count",
                  {{"source", src}, {"method", "GET"}}) == 5000);
  }
}

}  // namespace
}  // namespace sshtail

namespace sshtail {
namespace {

TEST_CASE("number parsing agrees with from_chars") {
  const char* cases[] = {"0",
                         "7",
                         "0.004",
                         "0.1",
                         "123.456",
                         "1e3",
                         "12345678901234567890",
                         "0.000000000000001",
                         "99999.9999999999",
                         ".5",
                         "5.",
                         "1.2.3",
                         "+3",
                         "-2"};
  for (const char* c : cases) {
    std::string_view s(c);
    double want = 0;
    const char* b = s.data();
    if (*b == '+') ++b;
    auto [p, ec] = std::from_chars(b, s.data() + s.size(), want);
    bool want_ok = ec == std::errc() && p == s.data() + s.size();
    double got = 0;
    bool got_ok = ParseLogNumber(s, &got);
    INFO(c);
    CHECK(got_ok == want_ok);
    if (want_ok) CHECK(got == want);
  }
  // Every 3-decimal value nginx prints for times up to 100 s.
  for (int ms = 0; ms < 100000; ms += 7) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%d.%03d", ms / 1000, ms % 1000);
    double want = 0;
    std::from_chars(buf, buf + std::strlen(buf), want);
    double got = -1;
    REQUIRE(ParseLogNumber(buf, &got));
    REQUIRE(got == want);
  }
}

}  // namespace
}  // namespace sshtail

namespace sshtail {
namespace {

TEST_CASE("label values are valid UTF-8 and the exposition is escaped") {
  RuleHarness h(R"(
rules:
  - name: r
    log_format: '"$request" $status'
    metrics:
      - {name: paths_total, type: counter, labels: {path: path}}
)");
  // nginx wrote \xFF and \x22 for raw bytes; un-escaping gives bytes that
  // are not UTF-8, which Prometheus would reject in a scrape.
  CHECK(h.Feed({"\"GET /a\\xFF\\xC3\\xA9\\x22b\\x0A HTTP/1.1\" 200"}) == 0);
  std::string out;
  h.store.AppendExposition(&out);
  CHECK(out.find("path=\"/a\xEF\xBF\xBD\xC3\xA9\\\"b\\n\"") !=
        std::string::npos);
}

TEST_CASE("text format numbers") {
  std::string out;
  for (double v :
       {0.0, 1.0, 26784184988.0, 0.071, 1.1429999999999998, 1e300, -2.5}) {
    text::AppendNumber(&out, v);
    out += ' ';
  }
  CHECK(out == "0 1 26784184988 0.071 1.143 1e+300 -2.5 ");
  CHECK(text::ValidUtf8("ok \xC3\xA9") == "ok \xC3\xA9");
  CHECK(text::ValidUtf8("\xC0\xAF") == "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  CHECK(text::ValidUtf8("\xED\xA0\x80") ==
        "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

}  // namespace
}  // namespace sshtail
