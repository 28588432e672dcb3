#include "sshtail/format_detect.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sshtail/metric_store.h"
#include "test_util.h"

namespace sshtail {
namespace {

std::string Combined(int i) {
  return "10.0.0." + std::to_string(i % 250) +
         " - - [25/Nov/2026:08:15:21 +0000] \"GET /p" + std::to_string(i) +
         " HTTP/1.1\" 200 " + std::to_string(i) + " \"-\" \"curl/8\"";
}
std::string Main(int i) { return Combined(i) + " \"203.0.113.9\""; }
std::string Timed(int i) { return Combined(i) + " 0.010 0.004"; }

// The consumer side of the exporter for a few sources, without threads.
struct DetectHarness {
  explicit DetectHarness(std::vector<SourceSpec> specs,
                         std::string format = "auto",
                         std::vector<NamedFormat> named = {})
      : overflow_registry(std::make_shared<prometheus::Registry>()),
        overflow(prometheus::BuildCounter()
                     .Name("sshtail_series_overflow_total")
                     .Help("x")
                     .Register(*overflow_registry)),
        store(overflow) {
    Options o;
    o.format = std::move(format);
    o.formats = std::move(named);
    o.sources = std::move(specs);
    for (uint32_t i = 0; i < o.sources.size(); ++i) {
      sources.push_back({o.sources[i].name, {}, {}});
      index.push_back(i);
    }
    FormatDefs defs = LoadFormatDefs(o, RuleContext{});
    store.Apply(defs.all);
    rules = FormatRules::Build(defs, &store);
    detector = std::make_unique<FormatDetector>(index, sources);
    eval = std::make_unique<Evaluator>(store, sources);
  }

  /// One batch; returns the lines no rule matched.
  uint64_t Feed(const std::vector<std::string>& lines, uint32_t source = 0) {
    LineBatch b = MakeBatch(lines, source, ++seq);
    auto lock = store.ReadLock();
    return detector->Process(*eval, b, rules, sources[source]);
  }

  /// Each line its own batch, as a live tail sends them.
  uint64_t FeedOneByOne(const std::vector<std::string>& lines,
                        uint32_t source = 0) {
    uint64_t unmatched = 0;
    for (const auto& l : lines) unmatched += Feed({l}, source);
    return unmatched;
  }

  double Requests(const std::string& source) const {
    return SumForSource(*store.registry(), "nginx_http_requests_total", source,
                        [](const auto& m) { return m.counter.value; });
  }

  double DurationCount(const std::string& source) const {
    return SumForSource(*store.registry(),
                        "nginx_http_request_duration_seconds", source,
                        [](const auto& m) {
                          return static_cast<double>(m.histogram.sample_count);
                        });
  }

  std::string Shown(uint32_t source = 0) const {
    return detector->Shown(source, *rules);
  }

  std::vector<SourceLabels> sources;
  std::vector<uint32_t> index;  // the detector keeps a reference
  std::shared_ptr<prometheus::Registry> overflow_registry;
  prometheus::Family<prometheus::Counter>& overflow;
  MetricStore store;
  std::shared_ptr<const FormatRules> rules;
  std::unique_ptr<FormatDetector> detector;
  std::unique_ptr<Evaluator> eval;
  uint64_t seq = 0;
};

SourceSpec Spec(const std::string& name, const std::string& format = "") {
  SourceSpec s;
  s.url = "/" + name;
  s.path = s.url;
  s.name = name;
  s.format = format;
  s.config_file = "test.yml";
  s.format_line = 3;
  return s;
}

template <typename F>
std::vector<std::string> Lines(int from, int to, F make) {
  std::vector<std::string> out;
  for (int i = from; i < to; ++i) out.push_back(make(i));
  return out;
}

// Runs `fn` with stderr going to a file; returns what was written.
template <typename Fn>
std::string CaptureStderr(Fn fn) {
  char path[] = "/tmp/format_detect_test.XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  fn();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  close(fd);
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  unlink(path);
  return ss.str();
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos;
       at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

TEST_CASE("auto detects combined, main and timed per source") {
  DetectHarness h({Spec("c"), Spec("m"), Spec("t")});
  CHECK(h.Shown(0).empty());
  std::string log = CaptureStderr([&] {
    CHECK(h.Feed(Lines(0, 500, Combined), 0) == 0);
    CHECK(h.FeedOneByOne(Lines(0, 300, Main), 1) == 0);
    CHECK(h.Feed(Lines(0, 200, Timed), 2) == 0);
    CHECK(h.Feed(Lines(500, 700, Combined), 0) == 0);
  });
  CHECK(h.Requests("c") == 700);
  CHECK(h.Requests("m") == 300);
  CHECK(h.Requests("t") == 200);
  CHECK(h.DurationCount("t") == 200);
  CHECK(h.DurationCount("c") == 0);
  CHECK(h.Shown(0) == "combined");
  CHECK(h.Shown(1) == "main");
  CHECK(h.Shown(2) == "timed");
  // One info line per source.
  CHECK(Count(log, "nginx format ") == 3);
  CHECK(Count(log, "source m: nginx format main") == 1);
  auto info = h.detector->Info(*h.rules);
  CHECK(info.metric.size() == 3);
}

TEST_CASE("garbage before the first matching line counts as unmatched") {
  DetectHarness h({Spec("c")});
  std::vector<std::string> lines = {"garbage", "\x16\x03\x01 tls", ""};
  for (const auto& l : Lines(0, 10, Timed)) lines.push_back(l);
  CaptureStderr([&] { CHECK(h.Feed(lines) == 3); });
  CHECK(h.Requests("c") == 10);
  CHECK(h.Shown() == "timed");
}

TEST_CASE("a format change mid-stream is detected again") {
  const uint64_t k = FormatDetector::kRedetectAfter;
  for (bool one_by_one : {false, true}) {
    DYNAMIC_SECTION("one line per batch: " << one_by_one) {
      DetectHarness h({Spec("web")});
      std::vector<std::string> lines = Lines(0, 100, Combined);
      for (const auto& l : Lines(100, 400, Main)) lines.push_back(l);
      for (const auto& l : Lines(400, 450, Combined)) lines.push_back(l);
      uint64_t unmatched = 0;
      std::string log = CaptureStderr([&] {
        unmatched = one_by_one ? h.FeedOneByOne(lines) : h.Feed(lines);
      });
      // The k lines that show the change count unmatched; the rest with
      // the format they match. Nothing is lost or counted twice.
      CHECK(unmatched == 2 * k);
      CHECK(h.Requests("web") == 450 - 2 * k);
      CHECK(h.Shown() == "combined");
      CHECK(Count(log, "nginx format combined") == 2);
      CHECK(Count(log, "nginx format main") == 1);
    }
  }
}

TEST_CASE("fewer unmatched lines in a row than the limit keep the format") {
  const int k = static_cast<int>(FormatDetector::kRedetectAfter);
  DetectHarness h({Spec("web")});
  std::vector<std::string> lines = Lines(0, 10, Combined);
  for (const auto& l : Lines(10, 10 + k - 1, Timed)) lines.push_back(l);
  for (const auto& l : Lines(100, 110, Combined)) lines.push_back(l);
  CaptureStderr([&] { CHECK(h.FeedOneByOne(lines) == uint64_t(k - 1)); });
  CHECK(h.Requests("web") == 20);
  CHECK(h.Shown() == "combined");
}

TEST_CASE("no matching format warns once and counts lines unmatched") {
  DetectHarness h({Spec("junk")});
  const uint32_t n = FormatDetector::kNoMatchAfter;
  std::vector<std::string> junk;
  // Closest to main: its last quote is followed by more.
  for (uint32_t i = 0; i < 3 * n; ++i) junk.push_back(Main(i) + " y");
  std::string log = CaptureStderr([&] {
    CHECK(h.FeedOneByOne({junk.begin(), junk.begin() + n - 1}) == n - 1);
    CHECK(h.Shown().empty());
    CHECK(h.FeedOneByOne({junk.begin() + n - 1, junk.end()}) == 2 * n + 1);
  });
  CHECK(h.Shown() == "none");
  CHECK(Count(log, "no known nginx format matches") == 1);
  CHECK(Count(log, "nearest: main") == 1);
  CHECK(h.Requests("junk") == 0);
  // A matching line ends it.
  CaptureStderr([&] { CHECK(h.Feed(Lines(0, 5, Timed)) == 0); });
  CHECK(h.Shown() == "timed");
  CHECK(h.Requests("junk") == 5);
}

TEST_CASE("detection holds no lines: every batch is counted when processed") {
  DetectHarness h({Spec("junk")});
  // A million undecided lines, in batches of 1 to 1000: each Process()
  // accounts for all its lines at once, so nothing is buffered.
  uint64_t lines = 0;
  CaptureStderr([&] {
    for (int b = 0; lines < 1000000; ++b) {
      int n = 1 + (b * 37) % 1000;
      std::vector<std::string> batch(static_cast<size_t>(n),
                                     "not an nginx line at all");
      CHECK(h.Feed(batch) == static_cast<uint64_t>(n));
      lines += static_cast<uint64_t>(n);
    }
    CHECK(h.Feed({Combined(1), "x", Combined(2)}) == 1);
  });
  CHECK(h.Shown() == "combined");
  CHECK(h.Requests("junk") == 2);
}

TEST_CASE("a source's format: wins over --format; explicit formats are kept") {
  DetectHarness h({Spec("a"), Spec("b", "timed"), Spec("c", "auto")},
                  "combined");
  std::vector<std::string> mixed = Lines(0, 50, Main);
  CaptureStderr([&] {
    CHECK(h.Feed(mixed, 0) == 50);  // combined forced: never re-detected
    CHECK(h.Feed(Lines(0, 40, Timed), 1) == 0);
    CHECK(h.Feed(Lines(0, 40, Combined), 1) == 40);
    CHECK(h.Feed(mixed, 2) == 0);
  });
  CHECK(h.Shown(0) == "combined");
  CHECK(h.Shown(1) == "timed");
  CHECK(h.Shown(2) == "main");
  CHECK(h.Requests("a") == 0);
  CHECK(h.Requests("b") == 40);
  CHECK(h.Requests("c") == 50);
}

TEST_CASE("named formats from the config are candidates, after the stock") {
  std::vector<NamedFormat> named = {
      {"short", "$remote_addr [$time_local] \"$request\" $status", "x.yml:2"}};
  DetectHarness h({Spec("s"), Spec("c")}, "auto", named);
  CaptureStderr([&] {
    CHECK(h.Feed({"10.0.0.1 [25/Nov/2026:08:15:21 +0000] \"GET / HTTP/1.1\" "
                  "404"},
                 0) == 0);
    CHECK(h.Feed(Lines(0, 3, Combined), 1) == 0);
  });
  CHECK(h.Shown(0) == "short");
  CHECK(h.Shown(1) == "combined");
  CHECK(h.Requests("s") == 1);
}

TEST_CASE("a bad per-source format is a config error at its line") {
  try {
    DetectHarness h({Spec("a", "$remote_addr $")});
    FAIL("no error");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).rfind("test.yml:3: ", 0) == 0);
  }
}

}  // namespace
}  // namespace sshtail
