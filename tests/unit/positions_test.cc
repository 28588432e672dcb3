#include "sshtail/positions.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>
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

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::map<std::string, PositionSet> Two() {
  std::map<std::string, PositionSet> in;
  in["/var/log/a.log"] = {FilePosition{FileId{1, 2}, 300, true, "x\n"}};
  in["/var/log/b.log"] = {FilePosition{FileId{1, 3}, 400, true, "y\n"}};
  return in;
}

TEST_CASE("a positions file that does not parse in full is refused") {
  std::string text = PositionsFile::Serialize(Two());
  std::map<std::string, PositionSet> out;
  std::string error;
  REQUIRE(PositionsFile::Parse(text, &out, &error));
  CHECK(out == Two());
  // Cut to its first 3 lines (issue #23): the first source without its
  // list, the second gone. Before the checksum this parsed "fine".
  std::string cut;
  std::istringstream lines(text);
  std::string line;
  for (int i = 0; i < 3 && std::getline(lines, line); ++i) cut += line + "\n";
  CHECK_FALSE(PositionsFile::Parse(cut, &out, &error));
  CHECK(error == "no checksum line (truncated?)");
  // Cut at any byte: never accepted.
  for (size_t n = 0; n < text.size(); ++n) {
    if (text.substr(0, n).find_first_not_of(" \n") == std::string::npos) {
      continue;  // nothing but blanks: an empty file
    }
    INFO(n);
    CHECK_FALSE(PositionsFile::Parse(text.substr(0, n), &out, &error));
  }
  std::string flipped = text;
  flipped[flipped.find("offset: 300") + 8] = '9';
  CHECK_FALSE(PositionsFile::Parse(flipped, &out, &error));
  CHECK(error == "checksum mismatch");
}

TEST_CASE("positions files of releases before the checksum still load") {
  const char* old =
      "# sshtail_exporter positions (written atomically)\n"
      "sources:\n"
      "  /var/log/a.log:\n"
      "    - {dev: 1, ino: 2, offset: 300, current: true, tail: 780a}\n"
      "  /var/log/b.log:\n"
      "    - {dev: 1, ino: 3, offset: 400, current: true, tail: 790a}\n";
  std::map<std::string, PositionSet> out;
  std::string error;
  REQUIRE(PositionsFile::Parse(old, &out, &error));
  CHECK(out == Two());
  // Cut after a source's key: a source without positions is a defect.
  std::string cut(old);
  cut.resize(cut.find("  /var/log/b.log:") + 18);
  CHECK_FALSE(PositionsFile::Parse(cut, &out, &error));
  CHECK(error.find("line 5") != std::string::npos);
}

TEST_CASE("saving keeps the previous generation and never follows a tmp") {
  char dir[] = "/tmp/sshtail-pos-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string path = std::string(dir) + "/positions";
  std::string error;
  REQUIRE(WriteFileAtomically(path, "one\n", &error, true));
  CHECK(Slurp(path) == "one\n");
  CHECK(access((path + ".prev").c_str(), F_OK) != 0);  // nothing to keep
  REQUIRE(WriteFileAtomically(path, "two\n", &error, true));
  CHECK(Slurp(path) == "two\n");
  CHECK(Slurp(path + ".prev") == "one\n");
  REQUIRE(WriteFileAtomically(path, "three\n", &error, true));
  CHECK(Slurp(path + ".prev") == "two\n");
  CHECK(access((path + ".prev.tmp").c_str(), F_OK) != 0);
  // A crash left PATH.prev.tmp and PATH.tmp behind: saving still works.
  { std::ofstream(path + ".prev.tmp") << "stale"; }
  { std::ofstream(path + ".tmp") << "stale"; }
  REQUIRE(WriteFileAtomically(path, "four\n", &error, true));
  CHECK(Slurp(path) == "four\n");
  CHECK(Slurp(path + ".prev") == "three\n");
  // PATH.prev cannot be kept (a directory in the way): the save goes on,
  // PATH.prev stays the older whole generation.
  REQUIRE(mkdir((path + ".prev.tmp").c_str(), 0755) == 0);
  REQUIRE(mkdir((path + ".prev.tmp/x").c_str(), 0755) == 0);
  REQUIRE(WriteFileAtomically(path, "4b\n", &error, true));
  CHECK(Slurp(path) == "4b\n");
  CHECK(Slurp(path + ".prev") == "three\n");
  std::system(("rm -rf " + path + ".prev.tmp").c_str());
  REQUIRE(WriteFileAtomically(path, "four\n", &error, true));
  CHECK(Slurp(path + ".prev") == "4b\n");
  // A symlink planted at PATH.tmp is replaced, not written through.
  std::string victim = std::string(dir) + "/victim";
  { std::ofstream(victim) << "precious"; }
  REQUIRE(symlink(victim.c_str(), (path + ".tmp").c_str()) == 0);
  REQUIRE(WriteFileAtomically(path, "five\n", &error));
  CHECK(Slurp(victim) == "precious");
  CHECK(Slurp(path) == "five\n");
  struct stat st {};
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(Slurp(path + ".prev") == "4b\n");  // not asked to keep one
  // A directory at PATH.tmp: refused, reported, left alone.
  REQUIRE(mkdir((path + ".tmp").c_str(), 0755) == 0);
  CHECK_FALSE(WriteFileAtomically(path, "six\n", &error));
  CHECK(error.find(".tmp") != std::string::npos);
  CHECK(Slurp(path) == "five\n");
  std::system(("rm -rf " + std::string(dir)).c_str());
}

}  // namespace
}  // namespace sshtail
