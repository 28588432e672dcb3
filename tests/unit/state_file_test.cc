#include "sshtail/state_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace sshtail {
namespace {

const char* kRules = R"(
rules:
  - name: r
    regex: '^(?P<method>[A-Z]+) (?P<status>[0-9]+) (?P<t>[0-9.]+)$'
    metrics:
      - name: req_total
        type: counter
        labels: {method: method, status: status}
        max_series: 3
      - name: last_t
        type: gauge
        value: t
        labels: {method: method}
      - name: t_seconds
        type: histogram
        value: t
        buckets: [0.1, 1, 10]
        labels: {method: method}
)";

std::vector<std::string> Lines() {
  return {"GET 200 0.05", "GET 200 0.5",  "POST 201 2.5", "GET 404 0.01",
          "PUT 500 20",   "HEAD 200 0.2", "GET 200 0.3",  "weird"};
}

std::string Exposition(const MetricStore& store) {
  std::string out;
  store.AppendExposition(&out);
  return out;
}

std::string TempPath(const std::string& name) {
  return std::filesystem::temp_directory_path() /
         ("sshtail-state-test-" + std::to_string(getpid()) + "-" + name);
}

TEST_CASE("a snapshot renders exactly like the live store") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  std::string from_snapshot;
  AppendSnapshotExposition(h.store.Snapshot(), &from_snapshot);
  CHECK(from_snapshot == Exposition(h.store));
  CHECK(from_snapshot.find("req_total{method=\"__overflow__\"") !=
        std::string::npos);
}

TEST_CASE("snapshot, serialize, parse and restore give the same values") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  std::map<std::string, SourceState> sources;
  FilePosition p;
  p.file = FileId{7, 42};
  p.offset = 1234;
  p.tail = std::string("ab\n\x01", 4);
  sources["/var/log/a.log"] = SourceState{"src", {p}};
  std::vector<SavedCounter> counters = {
      {"sshtail_lines_total", {{"source", "src"}}, 8},
      {"sshtail_lines_total", {{"source", "gone"}}, 99}};
  std::string text =
      StateFile::Serialize(sources, h.store.Snapshot(), counters);

  SavedState st;
  std::string error;
  REQUIRE(StateFile::Parse(text, &st, &error));
  CHECK(st.version == StateFile::kVersion);
  REQUIRE(st.sources.size() == 1);
  CHECK(st.sources["/var/log/a.log"].name == "src");
  CHECK(st.sources["/var/log/a.log"].positions == PositionSet{p});
  REQUIRE(st.counters.size() == 1);  // only sources that are saved
  CHECK(st.counters[0].value == 8);

  RuleHarness fresh(kRules);
  auto restored = fresh.store.Restore(st.metrics);
  CHECK(restored.size() == 3);
  CHECK(Exposition(fresh.store) == Exposition(h.store));
  CHECK(fresh.Value("t_seconds_count",
                    {{"method", "GET"}, {"source", "src"}}) == 4);
  CHECK(fresh.Value("t_seconds_sum", {{"method", "GET"}, {"source", "src"}}) ==
        h.Value("t_seconds_sum", {{"method", "GET"}, {"source", "src"}}));

  // And it continues from there: both see the same lines again.
  h.Feed(Lines());
  fresh.Feed(Lines());
  CHECK(Exposition(fresh.store) == Exposition(h.store));
}

TEST_CASE("restore respects the caps and keeps totals in the overflow") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  auto snap = h.store.Snapshot();
  // A smaller global budget now: series past it go to the overflow series.
  RuleHarness small(kRules, {{"src", {}}}, {}, 2);
  small.store.Restore(snap);
  CHECK(small.store.budget().used() <= 2);
  double total = 0;
  for (const auto& f : small.store.registry()->Collect()) {
    if (f.name != "req_total") continue;
    for (const auto& m : f.metric) total += m.counter.value;
  }
  CHECK(total == 7);  // every matching line still counted
}

TEST_CASE("a redefined metric is not restored") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  auto snap = h.store.Snapshot();
  std::string changed = kRules;
  changed.replace(changed.find("buckets: [0.1, 1, 10]"), 21,
                  "buckets: [0.1, 1, 5]");
  RuleHarness next(changed);
  auto restored = next.store.Restore(snap);
  CHECK(std::find(restored.begin(), restored.end(), "t_seconds") ==
        restored.end());
  CHECK(std::find(restored.begin(), restored.end(), "req_total") !=
        restored.end());
  CHECK(next.SeriesCount("t_seconds") == 0);
  CHECK(next.Value("req_total",
                   {{"method", "GET"}, {"status", "200"}, {"source", "src"}}) ==
        3);
}

TEST_CASE("damaged state text is refused whole") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  std::string text = StateFile::Serialize({{"/a", SourceState{"src", {}}}},
                                          h.store.Snapshot(), {});
  SavedState st;
  std::string error;
  REQUIRE(StateFile::Parse(text, &st, &error));
  std::string flipped = text;
  flipped[flipped.find("series 0") + 7] = '1';
  CHECK_FALSE(StateFile::Parse(flipped, &st, &error));
  CHECK(error == "checksum mismatch");
  CHECK_FALSE(StateFile::Parse(text.substr(0, text.size() / 2), &st, &error));
  std::string newer = text;
  newer.replace(newer.find("version: 2"), 10, "version: 3");
  CHECK_FALSE(StateFile::Parse(newer, &st, &error));  // checksum, then version
}

TEST_CASE("state file: missing, old positions format, corrupt") {
  std::string path = TempPath("load");
  std::filesystem::remove(path);
  StateFile file(path);
  std::string problem;
  SavedState st = file.Load(&problem);
  CHECK(problem.empty());
  CHECK(st.version == 0);

  {
    std::ofstream f(path);
    f << "# sshtail_exporter positions\nsources:\n  /x.log:\n"
         "    - {dev: 1, ino: 2, offset: 3, current: true}\n";
  }
  st = file.Load(&problem);
  CHECK(problem.empty());
  CHECK(st.version == 1);
  REQUIRE(st.sources.count("/x.log"));
  CHECK(st.sources["/x.log"].positions.at(0).offset == 3);
  CHECK(st.metrics.empty());

  RuleHarness h(kRules);
  h.Feed(Lines());
  std::string error;
  REQUIRE(file.Save({{"/x.log", SourceState{"src", {}}}}, h.store.Snapshot(),
                    {}, &error));
  st = file.Load(&problem);
  CHECK(problem.empty());
  CHECK(st.version == 2);
  CHECK(st.metrics.size() == 3);

  for (const char* bad : {"version: 2\nsource \"x\"\n", "just: [a, yaml]\n",
                          "\x01\x02 not yaml: ["}) {
    {
      std::ofstream f(path);
      f << bad;
    }
    st = file.Load(&problem);
    CHECK_FALSE(problem.empty());
    CHECK(st.version == 0);
    CHECK(st.sources.empty());
    CHECK_FALSE(std::filesystem::exists(path));  // set aside
    for (const auto& e : std::filesystem::directory_iterator(
             std::filesystem::path(path).parent_path())) {
      if (e.path().string().rfind(path + ".corrupt-", 0) == 0) {
        std::filesystem::remove(e.path());
      }
    }
  }
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Spit(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

std::vector<std::string> SetAside(const std::string& path) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(
           std::filesystem::path(path).parent_path())) {
    if (e.path().string().find(".corrupt-") != std::string::npos &&
        e.path().string().rfind(path, 0) == 0) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

// A fresh directory of its own per test.
std::string TempDir(const std::string& name) {
  std::string d = TempPath(name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

std::map<std::string, SourceState> At(uint64_t offset) {
  FilePosition p;
  p.file = FileId{7, 42};
  p.offset = offset;
  return {{"/a.log", SourceState{"src", {p}}}};
}

TEST_CASE("a damaged state file resumes from the previous generation") {
  std::string dir = TempDir("prev");
  std::string path = dir + "/state";
  StateFile file(path, true);
  std::string error, problem;
  std::vector<SavedCounter> c100 = {
      {"sshtail_lines_total", {{"source", "src"}}, 100}};
  std::vector<SavedCounter> c200 = {
      {"sshtail_lines_total", {{"source", "src"}}, 200}};
  REQUIRE(file.Save(At(1000), {}, c100, &error));
  REQUIRE(file.Save(At(2000), {}, c200, &error));
  SavedState st = file.Load(&problem);
  CHECK(problem.empty());
  CHECK(st.sources["/a.log"].positions.at(0).offset == 2000);
  CHECK_FALSE(st.from_previous);

  std::string good = Slurp(path);
  for (std::string bad : {good.substr(0, good.size() / 2), std::string(),
                          good.substr(0, good.size() - 2)}) {
    Spit(path, bad);
    st = file.Load(&problem);
    INFO(problem);
    CHECK(st.from_previous);
    CHECK(st.set_aside == 1);
    CHECK(st.sources["/a.log"].positions.at(0).offset == 1000);
    REQUIRE(st.counters.size() == 1);
    CHECK(st.counters[0].value == 100);  // values and positions of one save
    auto aside = SetAside(path);
    REQUIRE(aside.size() == 1);
    CHECK(Slurp(aside[0]) == bad);
    std::filesystem::remove(aside[0]);
    // Set aside: a run that ends before its first save resumes there again.
    CHECK_FALSE(std::filesystem::exists(path));
    st = file.Load(&problem);
    CHECK(st.from_previous);
    CHECK(st.set_aside == 0);
    CHECK(st.sources["/a.log"].positions.at(0).offset == 1000);
    Spit(path, good);
  }
  // Both damaged: both set aside, nothing used.
  std::string prev = Slurp(path + ".prev");
  Spit(path, good.substr(0, 10));
  Spit(path + ".prev", prev.substr(0, prev.size() - 1));
  st = file.Load(&problem);
  CHECK(st.set_aside == 2);
  CHECK_FALSE(st.from_previous);
  CHECK(st.sources.empty());
  CHECK(SetAside(path).size() == 2);
  // Without a previous generation kept (the shard's hand-over files), a
  // damaged file is set aside and the state is empty, as before.
  Spit(path, good.substr(0, good.size() / 2));
  st = StateFile(path).Load(&problem);
  CHECK(st.sources.empty());
  CHECK(st.set_aside == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a positions-only file keeps its previous generation too") {
  std::string dir = TempDir("posprev");
  std::string path = dir + "/positions";
  PositionsFile pos(path, true);
  std::string error, problem;
  REQUIRE(pos.Save({{"/a.log", At(1000)["/a.log"].positions}}, &error));
  REQUIRE(pos.Save({{"/a.log", At(2000)["/a.log"].positions},
                    {"/b.log", At(5)["/a.log"].positions}},
                   &error));
  std::string text = Slurp(path);
  std::string cut;
  for (size_t i = 0, nl = 0; i < 3; ++i, ++nl) {
    nl = text.find('\n', nl);
    cut = text.substr(0, nl + 1);
  }
  Spit(path, cut);  // issue #23: its first 3 lines
  SavedState st = StateFile(path, true).Load(&problem);
  CHECK(problem.find("no checksum line") != std::string::npos);
  CHECK(st.from_previous);
  CHECK(st.version == 1);
  CHECK(st.sources["/a.log"].positions.at(0).offset == 1000);
  std::filesystem::remove_all(dir);
}

TEST_CASE("checksummed counters that cannot be are damage") {
  RuleHarness h(kRules);
  h.Feed(Lines());
  auto sources = At(10);
  std::string text =
      StateFile::Serialize(sources, h.store.Snapshot(),
                           {{"sshtail_lines_total", {{"source", "src"}}, 8}});
  auto rechecksum = [](std::string t) {
    std::string body = t.substr(0, t.rfind("\nchecksum ") + 1);
    return body + ChecksumLine("checksum ", body);
  };
  SavedState st;
  std::string error;
  REQUIRE(StateFile::Parse(text, &st, &error));
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    size_t at = t.find(from);
    REQUIRE(at != std::string::npos);
    t.replace(at, from.size(), to);
    return rechecksum(t);
  };
  for (const char* bad : {"nan", "-1", "-inf", "-0.5"}) {
    INFO(bad);
    CHECK_FALSE(
        StateFile::Parse(with("\"source\" \"src\" 8\n",
                              std::string("\"source\" \"src\" ") + bad + "\n"),
                         &st, &error));
    // A rule counter: req_total{GET,200} counted 3 lines.
    CHECK_FALSE(
        StateFile::Parse(with("\"status\" \"200\" 3\n",
                              std::string("\"status\" \"200\" ") + bad + "\n"),
                         &st, &error));
  }
  // +Inf is what a counter can reach live (a field "inf"): kept.
  CHECK(StateFile::Parse(
      with("\"source\" \"src\" 8\n", "\"source\" \"src\" inf\n"), &st, &error));
  // A gauge may be anything, NaN too.
  CHECK(StateFile::Parse(with("\"method\" \"GET\" \"source\" \"src\" 0.3\n",
                              "\"method\" \"GET\" \"source\" \"src\" nan\n"),
                         &st, &error));
  // A histogram's count must be its +Inf bucket's.
  size_t hist = text.find("metric \"t_seconds\"");
  REQUIRE(hist != std::string::npos);
  size_t series = text.find("series 0", hist);
  size_t eol = text.find('\n', series);
  std::string line = text.substr(series, eol - series);
  std::string last = line.substr(line.rfind(' ') + 1);
  std::string t = text;
  t.replace(series, line.size(),
            line.substr(0, line.rfind(' ') + 1) +
                std::to_string(std::stoull(last) + 1));
  CHECK_FALSE(StateFile::Parse(rechecksum(t), &st, &error));
  CHECK(error.find("+Inf bucket") != std::string::npos);
}

TEST_CASE("the state file reads back every label set it writes") {
  prometheus::Labels most{{"source", "src"}};
  for (size_t i = 1; i < kMaxSeriesLabels; ++i) {
    most["l" + std::to_string(i)] = "v";
  }
  prometheus::Labels too_many = most;
  too_many["one_more"] = "v";
  std::string text = StateFile::Serialize(
      At(10), {},
      {{"sshtail_lines_total", most, 5}, {"sshtail_bytes_total", too_many, 7}});
  SavedState st;
  std::string error;
  REQUIRE(StateFile::Parse(text, &st, &error));
  REQUIRE(st.counters.size() == 1);  // what it cannot read is not written
  CHECK(st.counters[0].labels == most);
}

TEST_CASE("a state path that is not a regular file is never renamed") {
  std::string dir = TempDir("dir");
  std::string path = dir + "/state";
  std::filesystem::create_directory(path);
  std::string problem;
  SavedState st = StateFile(path, true).Load(&problem);
  CHECK(problem.find("is a directory") != std::string::npos);
  CHECK(problem.find("larger than") == std::string::npos);
  CHECK(std::filesystem::is_directory(path));
  CHECK(SetAside(path).empty());
  CHECK_THROWS_AS(StateFile::CheckPath("--state-file", path), ConfigError);
  try {
    StateFile::CheckPath("--state-file", path);
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()) ==
          "--state-file " + path +
              ": is a directory, not a file the exporter may write");
  }
  CHECK_NOTHROW(StateFile::CheckPath("--state-file", dir + "/missing"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a loaded state says when it was saved") {
  // The time dates the files created while the exporter was stopped (read
  // whole); Parse replaced the whole state and it was 0 for a v2 file.
  std::string dir = TempDir("saved-at");
  StateFile file(dir + "/state", true);
  std::string error, problem;
  REQUIRE(file.Save(At(10), {}, {}, &error));
  struct stat sb {};
  REQUIRE(::stat((dir + "/state").c_str(), &sb) == 0);
  SavedState st = file.Load(&problem);
  CHECK(problem.empty());
  CHECK(st.version == StateFile::kVersion);
  CHECK(st.saved_at_ns ==
        int64_t{sb.st_mtim.tv_sec} * 1000000000 + sb.st_mtim.tv_nsec);
}

}  // namespace

}  // namespace sshtail
