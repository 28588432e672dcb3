#include "sshtail/positions.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>

namespace sshtail {
namespace {

PositionSet At(uint64_t offset) {
  return {FilePosition{FileId{1, 2}, offset, true, ""}};
}

TEST_CASE("committed position follows the longest prefix of done batches") {
  PositionTracker t;
  CHECK(t.Committed().empty());
  t.Pushed(1, At(10));
  t.Pushed(2, At(20));
  t.Pushed(3, At(30));
  t.Done(2);
  CHECK(t.Committed().empty());  // batch 1 still in flight
  t.Done(1);
  CHECK(t.Committed() == At(20));
  t.Moved(At(0));  // truncated while batch 3 is in flight
  CHECK(t.Committed() == At(20));
  t.Done(3);
  CHECK(t.Committed() == At(0));
  t.Moved(At(5));
  CHECK(t.Committed() == At(5));
}

TEST_CASE("positions file round-trips and is replaced atomically") {
  char dir[] = "/tmp/sshtail-pos-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/positions.yml";
  PositionsFile f(path);
  CHECK(f.Load().empty());
  std::map<std::string, PositionSet> in;
  in["ssh://h/var/log/a b.log"] = {
      FilePosition{FileId{2049, 77}, 123, true, ""},
      FilePosition{FileId{2049, 76}, 999, false, std::string("a\n\0\xff", 4)}};
  in["/var/log/x"] = At(5);
  std::string error;
  REQUIRE(f.Save(in, &error));
  CHECK(f.Load() == in);
  CHECK(access((path + ".tmp").c_str(), F_OK) != 0);
  {
    std::ofstream bad(path);
    bad << "sources: [\n";
  }
  CHECK_THROWS_AS(f.Load(), std::runtime_error);
  {
    std::ofstream bad(path);
    bad << "sources:\n  /x: [{dev: 1, ino: 2, offset: 3, tail: 'zz'}]\n";
  }
  CHECK_THROWS_AS(f.Load(), std::runtime_error);
  std::system(("rm -rf " + std::string(dir)).c_str());
}

}  // namespace
}  // namespace sshtail
