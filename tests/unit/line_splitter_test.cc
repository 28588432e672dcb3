#include "sshtail/line_splitter.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

namespace sshtail {
namespace {

struct Collect {
  std::vector<std::string> lines;
  int too_long = 0;
  void Line(std::string_view l) { lines.emplace_back(l); }
  void TooLong() { ++too_long; }
};

TEST_CASE("splitter carries a partial line until its newline") {
  LineSplitter s(100);
  Collect c;
  s.Feed("abc", c);
  CHECK(c.lines.empty());
  CHECK(s.pending_bytes() == 3);
  CHECK(s.complete_bytes() == 0);
  s.Feed("def\ngh", c);
  REQUIRE(c.lines == std::vector<std::string>{"abcdef"});
  CHECK(s.complete_bytes() == 7);
  s.Feed("\n", c);
  CHECK(c.lines == std::vector<std::string>{"abcdef", "gh"});
  CHECK(s.complete_bytes() == 10);
  CHECK(s.pending_bytes() == 0);
}

TEST_CASE("splitter strips CR of CRLF, also across chunks") {
  LineSplitter s(100);
  Collect c;
  s.Feed("one\r\ntwo\r", c);
  s.Feed("\nthree\n", c);
  CHECK(c.lines == std::vector<std::string>{"one", "two", "three"});
  CHECK(s.complete_bytes() == 16);
}

TEST_CASE("splitter keeps empty lines and a lone CR inside a line") {
  LineSplitter s(100);
  Collect c;
  s.Feed("\n\na\rb\n\r\n", c);
  CHECK(c.lines == std::vector<std::string>{"", "", "a\rb", ""});
}

TEST_CASE("splitter skips an over-long line whole, never splits it") {
  LineSplitter s(5);
  Collect c;
  SECTION("in one chunk") {
    s.Feed("12345\n123456\nok\n", c);
    CHECK(c.lines == std::vector<std::string>{"12345", "ok"});
    CHECK(c.too_long == 1);
    CHECK(s.complete_bytes() == 16);
  }
  SECTION("across many chunks") {
    s.Feed("12", c);
    s.Feed("3456789", c);
    s.Feed("abcdef", c);
    CHECK(c.lines.empty());
    s.Feed("x\nnext\n", c);
    CHECK(c.lines == std::vector<std::string>{"next"});
    CHECK(c.too_long == 1);
    CHECK(s.complete_bytes() == 22);
  }
  SECTION("a line of exactly the limit plus CR is fine") {
    s.Feed("12345\r\n", c);
    CHECK(c.lines == std::vector<std::string>{"12345"});
    CHECK(c.too_long == 0);
  }
}

TEST_CASE("splitter skip-to-next-line drops a partial first line") {
  LineSplitter s(100);
  Collect c;
  s.SkipToNextLine();
  s.Feed("tail of a line", c);
  s.Feed("\nfull\n", c);
  CHECK(c.lines == std::vector<std::string>{"full"});
  CHECK(c.too_long == 0);
  CHECK(s.complete_bytes() == 20);
}

TEST_CASE("splitter reset forgets the partial line and the count") {
  LineSplitter s(100);
  Collect c;
  s.Feed("a\npartial", c);
  s.Reset();
  CHECK(s.complete_bytes() == 0);
  s.Feed("new\n", c);
  CHECK(c.lines == std::vector<std::string>{"a", "new"});
}

TEST_CASE("splitter gives the same lines whatever the chunking") {
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += std::string(static_cast<size_t>(i % 13), 'x') + std::to_string(i);
    text += (i % 3 == 0) ? "\r\n" : "\n";
  }
  LineSplitter whole(64);
  Collect expected;
  whole.Feed(text, expected);
  for (size_t step : {1, 2, 7, 64, 1000}) {
    LineSplitter s(64);
    Collect c;
    for (size_t i = 0; i < text.size(); i += step) {
      s.Feed(std::string_view(text).substr(i, step), c);
    }
    CHECK(c.lines == expected.lines);
    CHECK(s.complete_bytes() == text.size());
  }
  CHECK(expected.lines.size() == 200);
}

}  // namespace
}  // namespace sshtail
