#include "sshtail/options.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace sshtail {
namespace {

ParseResult Parse(std::vector<std::string> args, Options* o) {
  args.insert(args.begin(), "sshtail_exporter");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data(), o);
}

TEST_CASE("flags and sources") {
  Options o;
  REQUIRE(
      Parse({"--format", "timed", "--start-at=beginning", "--max-line-bytes",
             "100", "/var/log/a.log", "file:///var/log/b%20c.log",
             "ssh://u@web1:2222/var/log/x", "ssh://web1/var/log/y", "-"},
            &o) == ParseResult::kRun);
  CHECK(o.format == "timed");
  CHECK(o.start_at == StartAt::kBeginning);
  CHECK(o.max_line_bytes == 100);
  REQUIRE(o.sources.size() == 5);
  CHECK(o.sources[0].name == "/var/log/a.log");
  CHECK(o.sources[1].path == "/var/log/b c.log");
  CHECK(o.sources[2].kind == SourceSpec::Kind::kSsh);
  CHECK(o.sources[2].user == "u");
  CHECK(o.sources[2].port == 2222);
  CHECK(o.sources[2].name == "web1:/var/log/x");  // two files on web1
  CHECK(o.sources[3].name == "web1:/var/log/y");
  CHECK(o.sources[4].kind == SourceSpec::Kind::kStdin);
}

TEST_CASE("one SSH file per host is named after the host") {
  Options o;
  REQUIRE(Parse({"ssh://[::1]:22/var/log/x", "ssh://web2/var/log/y"}, &o) ==
          ParseResult::kRun);
  CHECK(o.sources[0].host == "::1");
  CHECK(o.sources[0].name == "::1");
  CHECK(o.sources[1].name == "web2");
}

ParseResult Fresh(std::vector<std::string> args) {
  Options o;
  return Parse(std::move(args), &o);
}

TEST_CASE("handshakes in flight per host: a number, 0 for no bound") {
  Options o;
  CHECK(o.ssh_max_handshakes_per_host == 4);
  REQUIRE(Parse({"--ssh.max-handshakes-per-host", "8", "/x"}, &o) ==
          ParseResult::kRun);
  CHECK(o.ssh_max_handshakes_per_host == 8);
  Options unbounded;
  REQUIRE(Parse({"--ssh.max-handshakes-per-host", "0", "/x"}, &unbounded) ==
          ParseResult::kRun);
  CHECK(unbounded.ssh_max_handshakes_per_host == 0);
  CHECK(Fresh({"--ssh.max-handshakes-per-host", "-1", "/x"}) ==
        ParseResult::kExit2);
  CHECK(Fresh({"--ssh.max-handshakes-per-host", "some", "/x"}) ==
        ParseResult::kExit2);
}

TEST_CASE("bad flags are errors with exit code 2") {
  CHECK(Fresh({"/x"}) == ParseResult::kRun);
  CHECK(Fresh({"--no-such-flag", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({"--start-at", "middle", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({"--max-line-bytes", "-1", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({"--queue.batches", "many", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({"--positions.sync-interval", "5", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({}) == ParseResult::kExit2);  // no sources
  CHECK(Fresh({"ftp://x/y"}) == ParseResult::kExit2);
  CHECK(Fresh({"ssh://host"}) == ParseResult::kExit2);
  CHECK(Fresh({"ssh://h:99999/x"}) == ParseResult::kExit2);
  CHECK(Fresh({"/a", "/a"}) == ParseResult::kExit2);
  CHECK(Fresh({"-", "-"}) == ParseResult::kExit2);
  CHECK(Fresh({"--help"}) == ParseResult::kExit0);
  CHECK(Fresh({"--version"}) == ParseResult::kExit0);
}

TEST_CASE("config file: sources with names and labels, flags win") {
  char dir[] = "/tmp/sshtail-opt-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string cfg = std::string(dir) + "/c.yml";
  {
    std::ofstream f(cfg);
    f << "format: timed\n"
         "web:\n"
         "  listen-address: 127.0.0.1:9999\n"
         "rules: [my.yml]\n"
         "sources:\n"
         "  - /var/log/a.log\n"
         "  - url: ssh://web1/var/log/nginx/access.log\n"
         "    name: edge-1\n"
         "    labels: {dc: eu}\n"
         "    sudo: true\n";
  }
  Options o;
  REQUIRE(Parse({"--config", cfg, "--format", "combined"}, &o) ==
          ParseResult::kRun);
  CHECK(o.format == "combined");
  CHECK(o.listen_address == "127.0.0.1:9999");
  REQUIRE(o.rule_files.size() == 1);
  CHECK(o.rule_files[0] == std::string(dir) + "/my.yml");
  REQUIRE(o.sources.size() == 2);
  CHECK(o.sources[1].name == "edge-1");
  CHECK(o.sources[1].labels.at("dc") == "eu");
  CHECK(o.sources[1].sudo);

  {
    std::ofstream f(cfg);
    f << "format: timed\nnot-a-flag: 1\n";
  }
  Options bad;
  CHECK(Parse({"--config", cfg, "/x"}, &bad) == ParseResult::kExit2);
  std::system(("rm -rf " + std::string(dir)).c_str());
}

TEST_CASE("inventory files: --sources.file, or sources_files: in the config") {
  char dir[] = "/tmp/sshtail-opt-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string cfg = std::string(dir) + "/c.yml";
  {
    std::ofstream f(cfg);
    f << "sources_files: [targets/*.json]\n";
  }
  Options o;  // no SOURCE needed: the inventory may be empty at start
  REQUIRE(Parse({"--config", cfg}, &o) == ParseResult::kRun);
  REQUIRE(o.sources_files.size() == 1);
  CHECK(o.sources_files[0] == std::string(dir) + "/targets/*.json");
  Options flag;
  REQUIRE(Parse({"--config", cfg, "--sources.file", "/etc/t.yml",
                 "--sources.max-slots", "100"},
                &flag) == ParseResult::kRun);
  CHECK(flag.sources_files == std::vector<std::string>{"/etc/t.yml"});
  CHECK(flag.max_slots == 100);
  CHECK(Fresh({"--sources.max-slots", "0", "/x"}) == ParseResult::kExit2);
  CHECK(flag.retire_after == std::chrono::minutes(10));
  Options never;
  REQUIRE(Parse({"--sources.retire-after", "0", "/x"}, &never) ==
          ParseResult::kRun);
  CHECK(never.retire_after.count() == 0);
  CHECK(Fresh({"--sources.retire-after", "soon", "/x"}) == ParseResult::kExit2);
  CHECK(Fresh({}) == ParseResult::kExit2);  // no sources at all
  std::system(("rm -rf " + std::string(dir)).c_str());
}

TEST_CASE("durations") {
  std::chrono::milliseconds d;
  CHECK(ParseDuration("250ms", &d));
  CHECK(d.count() == 250);
  CHECK(ParseDuration("5s", &d));
  CHECK(d.count() == 5000);
  CHECK(ParseDuration("2m", &d));
  CHECK(d.count() == 120000);
  CHECK_FALSE(ParseDuration("5", &d));
  CHECK_FALSE(ParseDuration("s", &d));
  CHECK_FALSE(ParseDuration("1.5s", &d));
}

TEST_CASE("a source's static labels stay within the state file's limit") {
  char dir[] = "/tmp/sshtail-opt-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string cfg = std::string(dir) + "/c.yml";
  auto with = [&](int n) {
    std::ofstream f(cfg);
    f << "sources:\n  - url: /var/log/a.log\n    labels: {";
    for (int i = 0; i < n; ++i) f << (i ? ", " : "") << "l" << i << ": v";
    f << "}\n";
  };
  with(62);  // with `source` and `file`: 64
  Options ok;
  CHECK(Parse({"--config", cfg}, &ok) == ParseResult::kRun);
  CHECK(ok.sources.at(0).labels.size() == 62);
  with(63);
  Options bad;
  CHECK(Parse({"--config", cfg}, &bad) == ParseResult::kExit2);
  std::system(("rm -rf " + std::string(dir)).c_str());
}

}  // namespace
}  // namespace sshtail
