#include <catch2/catch.hpp>
#include <stdexcept>
#include <string>

#include "sshtail/source.h"
#include "sshtail/syslog_producer.h"

using sshtail::ParseSourceUrl;
using sshtail::ParseSyslogDatagram;
using sshtail::SourceSpec;
using sshtail::SyslogMessage;

namespace {

// Captured from nginx 1.22.1 (`access_log syslog:server=unix:...,tag=nginx
// combined;`, then the same with `nohostname`) on host "vm".
constexpr const char kLine[] =
    R"(127.0.0.1 - - [02/Dec/2026:07:12:59 +0000] "GET /a%20b?x=1&y=\x22z\x22 HTTP/1.1" 200 2 "-" "Mozilla/5.0 \x22quoted\x22")";
const std::string kWithHost =
    std::string("<190>Dec  2 07:12:59 vm nginx: ") + kLine;
const std::string kNoHost = std::string("<190>Dec  2 07:12:59 nginx: ") + kLine;

}  // namespace

TEST_CASE("syslog: nginx datagram with hostname") {
  SyslogMessage m;
  REQUIRE(ParseSyslogDatagram(kWithHost, &m));
  CHECK(m.priority == 190);  // local7.info
  CHECK(m.hostname == "vm");
  CHECK(m.tag == "nginx");
  CHECK(m.message == kLine);
}

TEST_CASE("syslog: nginx datagram with nohostname") {
  SyslogMessage m;
  REQUIRE(ParseSyslogDatagram(kNoHost, &m));
  CHECK(m.hostname.empty());
  CHECK(m.tag == "nginx");
  CHECK(m.message == kLine);
}

TEST_CASE("syslog: two-digit day, other tags, trailing newline") {
  SyslogMessage m;
  REQUIRE(ParseSyslogDatagram(
      "<13>Nov 28 23:59:01 web-1.example.com app[123]: hello world\n", &m));
  CHECK(m.priority == 13);
  CHECK(m.hostname == "web-1.example.com");
  CHECK(m.tag == "app[123]");
  CHECK(m.message == "hello world");
  REQUIRE(ParseSyslogDatagram("<0>Jan  1 00:00:00 h t: x\r\n", &m));
  CHECK(m.message == "x");
  // An empty message is a line (an empty one).
  REQUIRE(ParseSyslogDatagram("<190>Jan  1 00:00:00 h nginx: ", &m));
  CHECK(m.message.empty());
  REQUIRE(ParseSyslogDatagram("<190>Jan  1 00:00:00 nginx:", &m));
  CHECK(m.message.empty());
  CHECK(m.hostname.empty());
}

TEST_CASE("syslog: malformed datagrams") {
  SyslogMessage m;
  for (std::string bad : {
           std::string(""), std::string("hello"),
           std::string(kLine),                               // no header
           std::string("<>Dec  2 07:12:59 vm nginx: x"),     // empty PRI
           std::string("<192>Dec  2 07:12:59 vm nginx: x"),  // PRI > 191
           std::string("<1900>Dec  2 07:12:59 vm nginx: x"),
           std::string("<190Dec  2 07:12:59 vm nginx: x"),
           std::string("<190>Foo  2 07:12:59 vm nginx: x"),  // month
           std::string("<190>Dec 2 07:12:59 vm nginx: x"),   // day not padded
           std::string("<190>Dec  2 07:1:59 vm nginx: x"),
           std::string("<190>Dec  2 07:12:59vm nginx: x"),
           std::string("<190>1 2026-12-02T07:12:59Z vm nginx - - - x"),  // 5424
           std::string("<190>Dec  2 07:12:59 vm nginx x"),  // no ':' after tag
           std::string("<190>Dec  2 07:12:59 vm"),
           std::string("<190>Dec  2 07:12:59 vm :"),            // empty tag
           std::string("<190>Dec  2 07:12:59 vm nginx: a\nb"),  // two lines
           std::string("<190>Dec  2 07:12:59 v\x01m nginx: x"),
           std::string("<190>Dec  2 07:12:59 ") + std::string(300, 'h') +
               " nginx: x",  // hostname too long
       }) {
    INFO(bad);
    CHECK_FALSE(ParseSyslogDatagram(bad, &m));
  }
}

TEST_CASE("syslog: every prefix of a real datagram parses or fails cleanly") {
  SyslogMessage m;
  const std::string header = "<190>Dec  2 07:12:59 vm nginx:";
  for (size_t n = 0; n <= kWithHost.size(); ++n) {
    bool ok = ParseSyslogDatagram(kWithHost.substr(0, n), &m);
    CHECK(ok == (n >= header.size()));
  }
}

TEST_CASE("syslog: source URLs") {
  SourceSpec u = ParseSourceUrl("syslog+unix:///run/sshtail/nginx.sock");
  CHECK(u.kind == SourceSpec::Kind::kSyslogUnix);
  CHECK(u.path == "/run/sshtail/nginx.sock");
  SourceSpec v4 = ParseSourceUrl("syslog+udp://127.0.0.1:5514");
  CHECK(v4.kind == SourceSpec::Kind::kSyslogUdp);
  CHECK(v4.host == "127.0.0.1");
  CHECK(v4.port == 5514);
  SourceSpec v6 = ParseSourceUrl("syslog+udp://[::1]:5514");
  CHECK(v6.host == "::1");
  CHECK(v6.port == 5514);
  std::vector<SourceSpec> specs = {u, v4, v6};
  sshtail::ResolveNames(specs);
  CHECK(specs[0].name == "/run/sshtail/nginx.sock");
  CHECK(specs[1].name == "127.0.0.1:5514");
  CHECK(specs[2].name == "[::1]:5514");
  for (const char* bad : {
           "syslog+unix://relative.sock",
           "syslog+unix://",
           "syslog+udp://127.0.0.1",
           "syslog+udp://127.0.0.1:0",
           "syslog+udp://127.0.0.1:65536",
           "syslog+udp://127.0.0.1:port",
           "syslog+udp://localhost:5514",  // literals only
           "syslog+udp://::1:5514",        // IPv6 needs brackets
           "syslog+udp://[::1]5514",
           "syslog+tcp://127.0.0.1:5514",
       }) {
    INFO(bad);
    CHECK_THROWS_AS(ParseSourceUrl(bad), std::invalid_argument);
  }
  std::string long_path = "syslog+unix:///" + std::string(120, 'a');
  CHECK_THROWS_AS(ParseSourceUrl(long_path), std::invalid_argument);
}
