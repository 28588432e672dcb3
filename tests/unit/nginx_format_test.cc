#include "sshtail/nginx_format.h"

#include <re2/re2.h>

#include <catch2/catch.hpp>
#include <map>
#include <random>
#include <set>
#include <string>

#include "sshtail/engine.h"

namespace sshtail {
namespace {

// Matches `line` against a compiled format and returns variable -> text.
std::map<std::string, std::string> Fields(const NginxFormat& f,
                                          const std::string& line) {
  RE2 re(f.regex, PatternOptions());
  REQUIRE(re.ok());
  std::vector<re2::StringPiece> sub(f.groups.size() + 1);
  std::map<std::string, std::string> out;
  if (!re.Match(line, 0, line.size(), RE2::ANCHOR_BOTH, sub.data(),
                static_cast<int>(sub.size()))) {
    return out;
  }
  out["$0"] = std::string(sub[0]);
  for (size_t g = 0; g < f.groups.size(); ++g) {
    std::string_view text(sub[g + 1].data(), sub[g + 1].size());
    const auto& grp = f.groups[g];
    for (size_t i = 0; i < grp.vars.size(); ++i) {
      std::string_view part = text;
      if (i < grp.seps.size()) part = text.substr(0, text.find(grp.seps[i]));
      out[grp.vars[i]] = std::string(part);
      if (i < grp.seps.size()) {
        text.remove_prefix(part.size() + grp.seps[i].size());
      }
    }
  }
  return out;
}

const char* kCombinedLine =
    "203.0.113.9 - alice [25/Nov/2026:08:15:21 +0000] \"GET /a?b=c HTTP/1.1\" "
    "200 512 \"https://example.com/\" \"curl/7.88.1\"";

TEST_CASE("named formats expand") {
  NginxEscape e = NginxEscape::kDefault;
  CHECK(ExpandNginxFormat("combined", &e) ==
        "$remote_addr - $remote_user [$time_local] \"$request\" $status "
        "$body_bytes_sent \"$http_referer\" \"$http_user_agent\"");
  CHECK(ExpandNginxFormat("timed", &e) ==
        ExpandNginxFormat("combined", &e) +
            " $request_time $upstream_response_time");
  CHECK(ExpandNginxFormat("$status", &e) == "$status");
}

TEST_CASE("a pasted log_format directive is parsed like nginx does") {
  NginxEscape e = NginxEscape::kDefault;
  std::string f = ExpandNginxFormat(
      "log_format  main escape=json '$remote_addr - \"$request\" '\n"
      "    '$status';",
      &e);
  CHECK(f == "$remote_addr - \"$request\" $status");
  CHECK(e == NginxEscape::kJson);
  CHECK_THROWS_AS(ExpandNginxFormat("log_format x 'abc", &e),
                  std::invalid_argument);
  CHECK_THROWS_AS(ExpandNginxFormat("log_format x escape=xml '$a';", &e),
                  std::invalid_argument);
}

TEST_CASE("combined format captures what is wanted") {
  NginxEscape e = NginxEscape::kDefault;
  auto f = CompileNginxFormat(ExpandNginxFormat("combined", &e), e,
                              {"request", "status", "body_bytes_sent",
                               "http_user_agent", "remote_user"});
  auto m = Fields(f, kCombinedLine);
  REQUIRE(!m.empty());
  CHECK(m["request"] == "GET /a?b=c HTTP/1.1");
  CHECK(m["status"] == "200");
  CHECK(m["body_bytes_sent"] == "512");
  CHECK(m["http_user_agent"] == "curl/7.88.1");
  CHECK(m["remote_user"] == "alice");
  CHECK(f.variables.size() == 8);
}

TEST_CASE("neighbouring wanted variables share a group") {
  NginxEscape e = NginxEscape::kDefault;
  auto f = CompileNginxFormat(ExpandNginxFormat("timed", &e), e,
                              {"request", "status", "body_bytes_sent",
                               "request_time", "upstream_response_time"});
  // request+status+bytes, then request_time+upstream: two groups, so RE2's
  // one-pass matcher (at most 4 groups) applies.
  REQUIRE(f.groups.size() == 2);
  CHECK(f.groups[0].vars ==
        std::vector<std::string>{"request", "status", "body_bytes_sent"});
  CHECK(f.groups[1].vars ==
        std::vector<std::string>{"request_time", "upstream_response_time"});
  auto m =
      Fields(f, std::string(kCombinedLine) + " 0.016 0.004, 0.012 : 0.003");
  CHECK(m["request"] == "GET /a?b=c HTTP/1.1");
  CHECK(m["status"] == "200");
  CHECK(m["body_bytes_sent"] == "512");
  CHECK(m["request_time"] == "0.016");
  CHECK(m["upstream_response_time"] == "0.004, 0.012 : 0.003");
  auto dash = Fields(f, std::string(kCombinedLine) + " 0.000 -");
  CHECK(dash["upstream_response_time"] == "-");
}

TEST_CASE("unwanted variables are not captured") {
  NginxEscape e = NginxEscape::kDefault;
  auto f = CompileNginxFormat(ExpandNginxFormat("combined", &e), e, {"status"});
  REQUIRE(f.groups.size() == 1);
  RE2 re(f.regex, PatternOptions());
  CHECK(re.NumberOfCapturingGroups() == 1);
}

TEST_CASE("literal regex metacharacters in a format are matched literally") {
  std::string fmt =
      "($status) [$request_time] {$remote_addr} *+?|^\\$body_bytes_sent.";
  auto f = CompileNginxFormat(
      fmt, NginxEscape::kDefault,
      {"status", "request_time", "remote_addr", "body_bytes_sent"});
  auto m = Fields(f, "(404) [0.002] {10.0.0.1} *+?|^\\17.");
  REQUIRE(!m.empty());
  CHECK(m["status"] == "404");
  CHECK(m["request_time"] == "0.002");
  CHECK(m["remote_addr"] == "10.0.0.1");
  CHECK(m["body_bytes_sent"] == "17");
  CHECK(Fields(f, "(404) [0.002] {10.0.0.1} XX?|^\\17.").empty());
  CHECK(Fields(f, "(404) [0.002] {10.0.0.1} *+?|^\\17X").empty());
}

TEST_CASE("custom format from the issue") {
  std::string fmt =
      "$remote_addr [$time_local] \"$request\" $status $body_bytes_sent";
  auto f = CompileNginxFormat(fmt, NginxEscape::kDefault,
                              {"request", "status", "body_bytes_sent"});
  auto m =
      Fields(f, "::1 [25/Nov/2026:08:15:21 +0000] \"POST /x HTTP/2.0\" 201 0");
  CHECK(m["request"] == "POST /x HTTP/2.0");
  CHECK(m["status"] == "201");
  CHECK(m["body_bytes_sent"] == "0");
  CHECK(Fields(f, "::1 [x] \"POST /x HTTP/2.0\" 2011 0").empty());
}

TEST_CASE("${var} syntax and errors") {
  CHECK(NginxVariables("${status}x$request_time") ==
        std::vector<std::string>{"status", "request_time"});
  CHECK_THROWS_AS(NginxVariables("abc"), std::invalid_argument);
  CHECK_THROWS_AS(NginxVariables("$"), std::invalid_argument);
  CHECK_THROWS_AS(NginxVariables("${status"), std::invalid_argument);
}

TEST_CASE("default escaping: \\x22 inside a quoted field") {
  auto f =
      CompileNginxFormat("\"$http_user_agent\" $status", NginxEscape::kDefault,
                         {"http_user_agent", "status"});
  auto m = Fields(f, "\"say \\x22hi\\x22\" 200");
  REQUIRE(!m.empty());
  CHECK(m["http_user_agent"] == "say \\x22hi\\x22");
  std::string scratch;
  CHECK(UnescapeNginx(m["http_user_agent"], NginxEscape::kDefault, &scratch) ==
        "say \"hi\"");
  CHECK(UnescapeNginx("a\\x5Cb\\xZZ", NginxEscape::kDefault, &scratch) ==
        "a\\b\\xZZ");
  // A raw quote cannot be inside a default-escaped field.
  CHECK(Fields(f, "\"say \"hi\"\" 200").empty());
}

TEST_CASE("json escaping: \\\" and \\\\ inside a quoted field") {
  auto f =
      CompileNginxFormat("{\"ua\":\"$http_user_agent\",\"s\":$status}",
                         NginxEscape::kJson, {"http_user_agent", "status"});
  auto m = Fields(f, "{\"ua\":\"a \\\"q\\\" \\\\ b\\u0007\",\"s\":503}");
  REQUIRE(!m.empty());
  CHECK(m["status"] == "503");
  std::string scratch;
  CHECK(UnescapeNginx(m["http_user_agent"], NginxEscape::kJson, &scratch) ==
        "a \"q\" \\ b\a");
}

TEST_CASE("escape=none: raw values up to the next literal") {
  auto f = CompileNginxFormat("$request|$status", NginxEscape::kNone,
                              {"request", "status"});
  auto m = Fields(f, "GET /\\x|200");
  CHECK(m["request"] == "GET /\\x");
  std::string scratch;
  CHECK(UnescapeNginx("GET /\\x22", NginxEscape::kNone, &scratch) ==
        "GET /\\x22");
}

TEST_CASE("multi-value upstream fields match") {
  auto f = CompileNginxFormat("$upstream_status $upstream_response_time end",
                              NginxEscape::kDefault,
                              {"upstream_status", "upstream_response_time"});
  auto m = Fields(f, "502, 504 : 200 0.004, 0.012 : 0.003 end");
  REQUIRE(!m.empty());
  CHECK(m["upstream_status"] == "502, 504 : 200");
  CHECK(m["upstream_response_time"] == "0.004, 0.012 : 0.003");
}

}  // namespace
}  // namespace sshtail

namespace sshtail {
namespace {

// The scanner must agree with RE2 on every line: same verdict, same fields.
void CheckScanAgreesWithRe2(const std::string& format,
                            const std::vector<std::string>& seeds) {
  std::vector<std::string> vars = NginxVariables(format);
  std::set<std::string> wanted(vars.begin(), vars.end());
  NginxFormat f = CompileNginxFormat(format, NginxEscape::kDefault, wanted);
  REQUIRE_FALSE(f.scan.empty());
  RE2 re(f.regex, PatternOptions());
  REQUIRE(re.ok());
  std::mt19937 rng(7);
  const std::string alphabet = "0123456789.-, :\"[]ZTpx\\/";
  std::vector<std::string> lines = seeds;
  for (const auto& seed : seeds) {
    for (int k = 0; k < 3000; ++k) {
      std::string l = seed;
      int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits && !l.empty(); ++e) {
        size_t at = rng() % l.size();
        char c = alphabet[rng() % alphabet.size()];
        switch (rng() % 3) {
          case 0:
            l[at] = c;
            break;
          case 1:
            l.insert(at, 1, c);
            break;
          default:
            l.erase(at, 1);
        }
      }
      lines.push_back(l);
    }
  }
  size_t matched = 0;
  std::vector<std::string_view> values(f.scan.steps.size());
  for (const auto& l : lines) {
    bool by_re2 = RE2::FullMatch(l, re);
    bool by_scan = f.scan.Match(l, values.data());
    INFO("format: " << format << "\nline: " << l);
    REQUIRE(by_scan == by_re2);
    if (!by_scan) continue;
    ++matched;
    auto groups = Fields(f, l);
    std::set<std::string> seen;
    for (size_t v = 0; v < vars.size(); ++v) {
      if (!seen.insert(vars[v]).second) continue;
      REQUIRE(std::string(values[v]) == groups[vars[v]]);
    }
  }
  CHECK(matched > seeds.size());  // mutations that still match were tried
}

TEST_CASE("scanner and RE2 agree on mutated lines") {
  NginxEscape e = NginxEscape::kDefault;
  CheckScanAgreesWithRe2(
      ExpandNginxFormat("timed", &e),
      {std::string(kCombinedLine) + " 0.016 0.004, 0.012 : 0.003",
       std::string(kCombinedLine) + " 1 -"});
  CheckScanAgreesWithRe2(
      ExpandNginxFormat("main", &e),
      {std::string(kCombinedLine) + " \"10.0.0.1, 10.0.0.2\""});
  CheckScanAgreesWithRe2(
      "$time_iso8601 $pipe [$upstream_status] $msec:$status",
      {"2026-11-25T08:15:21+00:00 p [502, 200 : -] 1700000000.123:404",
       "2026-11-25T08:15:21Z . [-] 1:200"});
  CheckScanAgreesWithRe2("($status) [$request_time] *+?|^\\$body_bytes_sent.",
                         {"(404) [0.002] *+?|^\\17.", "(200) [1] *+?|^\\0."});
}

}  // namespace
}  // namespace sshtail

namespace sshtail {
namespace {

// Found by fuzz_nginx_format: a format ending in a free-form variable is
// `.*` for RE2, and RE2's '.' does not match a newline.
TEST_CASE("scanner: a last free-form variable does not take a newline") {
  NginxFormat f =
      CompileNginxFormat("$uas $u", NginxEscape::kDefault, {"uas", "u"});
  RE2 re(f.regex, PatternOptions());
  std::vector<std::string_view> values(f.scan.steps.size());
  for (std::string line : {"a b", "a b\nc", "a\nb c", "a "}) {
    INFO(line);
    CHECK(f.scan.Match(line, values.data()) == RE2::FullMatch(line, re));
  }
}

}  // namespace
}  // namespace sshtail
