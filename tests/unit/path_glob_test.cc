#include "sources/path_glob.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace sshtail {
namespace {

namespace fs = std::filesystem;

TEST_CASE("path_glob: globs match within one path component") {
  PathGlob g("/var/log/*/access.log");
  CHECK(g.Matches("/var/log/shop/access.log", nullptr));
  CHECK_FALSE(g.Matches("/var/log/a/b/access.log", nullptr));
  CHECK_FALSE(g.Matches("/var/log/access.log", nullptr));
  PathGlob q("/l/?.log");
  CHECK(q.Matches("/l/a.log", nullptr));
  CHECK_FALSE(q.Matches("/l/ab.log", nullptr));
  PathGlob b("/l/[ab].log");
  CHECK(b.Matches("/l/b.log", nullptr));
  CHECK_FALSE(b.Matches("/l/c.log", nullptr));
  PathGlob n("/l/[!ab]*.log");
  CHECK(n.Matches("/l/c1.log", nullptr));
  CHECK_FALSE(n.Matches("/l/a1.log", nullptr));
  // Regex characters are literal.
  PathGlob lit("/l/a+b(1).log*");
  CHECK(lit.Matches("/l/a+b(1).log_x", nullptr));
  CHECK_FALSE(lit.Matches("/l/aab(1).log_x", nullptr));
}

TEST_CASE("path_glob: fields become labels and globs for glob(3)") {
  PathGlob g("/srv/{site}/logs/{vhost}.access.log");
  CHECK(g.glob() == "/srv/*/logs/*.access.log");
  REQUIRE(g.fields() == std::vector<std::string>{"site", "vhost"});
  std::map<std::string, std::string> labels;
  REQUIRE(g.Matches("/srv/eu/logs/shop.access.log", &labels));
  CHECK(labels ==
        std::map<std::string, std::string>{{"site", "eu"}, {"vhost", "shop"}});
}

TEST_CASE("path_glob: rotated names are always excluded, exclude adds more") {
  PathGlob g("/l/*", {"skip*", "/l/keep/*"});
  for (const char* p : {"/l/a.log.1", "/l/a.log.12", "/l/a.log.3.gz",
                        "/l/a.log-20261201", "/l/a.log-2026120113",
                        "/l/a.log-2026-12-01", "/l/a.xz", "/l/skip.log"}) {
    CHECK_FALSE(g.Matches(p, nullptr));
  }
  CHECK(g.Matches("/l/a.log", nullptr));
  CHECK(g.Matches("/l/access_log", nullptr));
  CHECK(g.Matches("/l/a.log-old", nullptr));
}

TEST_CASE("path_glob: bad patterns are one-line errors") {
  CHECK_THROWS_WITH(PathGlob("/l/[ab.log"),
                    Catch::Contains("unterminated '['"));
  CHECK_THROWS_WITH(PathGlob("/l/{vhost.log"),
                    Catch::Contains("unterminated '{'"));
  CHECK_THROWS_WITH(PathGlob("/l/{1x}.log"), Catch::Contains("label name"));
  CHECK_THROWS_WITH(PathGlob("/l/{source}.log"), Catch::Contains("label name"));
  CHECK_THROWS_WITH(PathGlob("/l/{a}-{a}.log"), Catch::Contains("twice"));
  CHECK_THROWS_WITH(PathGlob("/l/[a/b].log"), Catch::Contains("'/'"));
  CHECK_THROWS_WITH(PathGlob("l/*.log"), Catch::Contains("absolute"));
}

TEST_CASE("path_glob: Expand lists regular files only, less the skipped") {
  fs::path dir = fs::temp_directory_path() /
                 ("path_glob_test_" + std::to_string(::getpid()));
  fs::create_directories(dir / "sub.log");  // a directory: never a source
  for (const char* n : {"a.log", "b.log", "a.log.1"}) {
    std::ofstream(dir / n) << "x\n";
  }
  PathGlob g(dir.string() + "/*");
  std::vector<std::string> want = {(dir / "a.log").string(),
                                   (dir / "b.log").string()};
  CHECK(g.Expand() == want);
  std::set<std::string> skip = {want[0]};
  CHECK(g.Expand(&skip) == std::vector<std::string>{want[1]});
  fs::remove_all(dir);
}

}  // namespace
}  // namespace sshtail
