// The remote reader's catch-up listings, run with the local sh: which
// rotated siblings it names (NEWER) and where it resumes (BEGIN).
#include "sshtail/remote_script.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "sshtail/positions.h"

namespace sshtail {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct Dir {
  Dir() {
    char tmpl[] = "/tmp/sshtail-rs-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~Dir() { std::system(("rm -rf '" + path + "'").c_str()); }
  std::string Write(const std::string& name, const std::string& text) {
    std::string p = path + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  FileId Id(const std::string& name) const {
    struct stat st {};
    REQUIRE(::stat((path + "/" + name).c_str(), &st) == 0);
    return FileId{static_cast<uint64_t>(st.st_dev),
                  static_cast<uint64_t>(st.st_ino)};
  }
  std::string path;
};

// The stdout of `command`, run by sh.
std::string Output(const std::string& command) {
  FILE* p = popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

// The control lines the script prints (tail's and the heartbeat's output
// cut off by `timeout`, which ends the whole process group).
std::vector<std::string> Run(const Dir& d, RemoteRequest r) {
  r.path = d.path + "/access.log";
  r.tag = "T";
  r.nonce_path = "/dev/fd/3";
  std::string script = d.path + "/script.sh";
  std::ofstream(script) << RemoteScript(r);
  std::string out = Output("timeout 1 sh " + script + " 2>/dev/null");
  std::vector<std::string> lines;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    if (l.rfind("T ", 0) == 0) lines.push_back(l.substr(2));
  }
  return lines;
}

std::string Newer(const FileId& id) {
  return "NEWER " + std::to_string(id.dev) + " " + std::to_string(id.ino);
}

void Pause() { ::usleep(20000); }  // ctime has ns resolution; be safe

}  // namespace

TEST_CASE("an unread saved file: siblings renamed or created after the save",
          "[remote_script]") {
  Dir d;
  d.Write("access.log.3", "old\n");  // there before the save: not ours
  Pause();
  int64_t saved = NowNs();
  Pause();
  d.Write("access.log.2.gz", "not really gz\n");
  d.Write("access.log.1", "rotated after the save\n");
  d.Write("access.log", "at the path\n");
  RemoteRequest r;
  r.mode = RemoteRequest::Mode::kInode;
  r.newer_than_ns = saved;
  std::vector<std::string> got = Run(d, r);
  REQUIRE(got.size() == 3);
  CHECK(got.back() == "GONE");
  std::vector<std::string> listed(got.begin(), got.end() - 1);
  std::sort(listed.begin(), listed.end());
  std::vector<std::string> want{Newer(d.Id("access.log.1")),
                                Newer(d.Id("access.log.2.gz"))};
  std::sort(want.begin(), want.end());
  CHECK(listed == want);
}

TEST_CASE("the rest of a copied file is found by its bytes, then newer ones",
          "[remote_script]") {
  Dir d;
  std::string before_copy = "line one\nline two\n";
  d.Write("access.log.2", before_copy + "line three, after the offset\n");
  Pause();
  d.Write("access.log.1", "rotated after the copy\n");
  Pause();
  int64_t begun = NowNs();  // the live reader began here
  Pause();
  d.Write("access.log.0", "copied after the live reader began\n");
  d.Write("access.log", "new\n");
  RemoteRequest r;
  r.mode = RemoteRequest::Mode::kInode;
  r.expect = FileId{d.Id("access.log").dev, 1};  // gone
  r.offset = before_copy.size();
  r.expect_tail = before_copy;
  r.list_newer = true;
  r.newer_before_ns = begun;
  std::vector<std::string> got = Run(d, r);
  REQUIRE(got.size() == 2);
  CHECK(got[0] == Newer(d.Id("access.log.1")));
  FileId copy = d.Id("access.log.2");
  CHECK(got[1].rfind("BEGIN " + std::to_string(copy.dev) + " " +
                         std::to_string(copy.ino) + " " +
                         std::to_string(before_copy.size()) + " ",
                     0) == 0);
}

TEST_CASE("a saved current file deleted while away: newer ones by time",
          "[remote_script]") {
  Dir d;
  d.Write("access.log.3", "rotated before the save\n");
  Pause();
  int64_t saved = NowNs();
  Pause();
  d.Write("access.log.1.gz", "the recreated file, compressed since\n");
  Pause();
  int64_t begun = NowNs();
  Pause();
  d.Write("access.log.0", "the live reader's\n");
  d.Write("access.log", "new\n");
  RemoteRequest r;
  r.mode = RemoteRequest::Mode::kInode;
  r.expect = FileId{d.Id("access.log").dev, 1};  // deleted
  r.offset = 9;
  r.expect_tail = "old line\n";
  r.list_newer = true;
  r.newer_before_ns = begun;
  r.newer_if_gone_ns = saved;
  std::vector<std::string> got = Run(d, r);
  CHECK(got ==
        std::vector<std::string>{Newer(d.Id("access.log.1.gz")), "GONE"});
  r.newer_if_gone_ns = 0;  // a catch-up after a reconnect: no time to go by
  CHECK(Run(d, r) == std::vector<std::string>{"GONE"});
}

TEST_CASE("our inode number at the path: by time only if born after the save",
          "[remote_script]") {
  Dir d;
  d.Write("access.log", "truncated, regrown\n");  // ours, copytruncated
  Pause();
  int64_t saved = NowNs();
  Pause();
  d.Write("access.log.1", "rotated after the save\n");
  Pause();
  int64_t begun = NowNs();
  RemoteRequest r;
  r.mode = RemoteRequest::Mode::kInode;
  r.expect = d.Id("access.log");
  r.offset = 9;
  r.expect_tail = "old line\n";
  r.list_newer = true;
  r.newer_before_ns = begun;
  r.newer_if_gone_ns = saved;
  // Ours, truncated: a file listed by time could be its copy, read already.
  CHECK(Run(d, r) == std::vector<std::string>{"GONE"});
  // A new file that got our inode number once ours was deleted.
  REQUIRE(::unlink((d.path + "/access.log").c_str()) == 0);
  d.Write("access.log", "new\n");
  r.expect = d.Id("access.log");
  r.newer_before_ns = NowNs();
  CHECK(Run(d, r) ==
        std::vector<std::string>{Newer(d.Id("access.log.1")), "GONE"});
}

TEST_CASE("a missing path: looked at every check, a beat every heartbeat",
          "[remote_script]") {
  Dir d;
  RemoteRequest r;
  r.path = d.path + "/access.log";
  r.tag = "T";
  r.nonce_path = "/dev/fd/3";
  r.heartbeat_seconds = 5;  // a slow beat (not the connection's pacemaker)
  r.check_seconds = 1;
  std::string script = d.path + "/script.sh";
  std::ofstream(script) << RemoteScript(r);
  // The file appears after 1.5 s: found at the next check, well before
  // the first beat; stderr holds the beats until then.
  std::string out =
      Output("(sleep 1.5; echo x > " + r.path + ") & timeout 4.5 sh " + script +
             " 2>" + d.path + "/err; wait");
  CHECK(out.find("T MISSING\n") != std::string::npos);
  CHECK(out.find("T BEGIN ") != std::string::npos);
  std::ifstream err(d.path + "/err");
  std::string e((std::istreambuf_iterator<char>(err)), {});
  CHECK(e.find("H - -") == std::string::npos);  // found before 5 s
}

TEST_CASE("a remote glob's listing: names are data, never code") {
  Dir d;
  std::string sub = d.path + "/it's a $(touch pwned) dir";
  REQUIRE(::mkdir(sub.c_str(), 0755) == 0);
  for (const char* n : {"a.log", "b c.log", "$(id).log", "x.txt"}) {
    std::ofstream(sub + "/" + n) << "x\n";
  }
  REQUIRE(::mkdir((sub + "/dir.log").c_str(), 0755) == 0);  // not a file
  std::string script = d.path + "/list.sh";
  // The glob as PathGlob gives it: literal parts as they are.
  std::ofstream(script) << RemoteListScript(sub + "/[!x]*.log", 1, "T");
  std::string out =
      Output("cd " + d.path + " && timeout 1.5 sh " + script + " 2>/dev/null");
  std::vector<std::string> round;
  std::istringstream in(out);
  for (std::string l; std::getline(in, l);) {
    if (l == "T E") break;
    REQUIRE(l.rfind("T F ", 0) == 0);
    round.push_back(l.substr(4));
  }
  std::sort(round.begin(), round.end());
  CHECK(round == std::vector<std::string>{sub + "/$(id).log", sub + "/a.log",
                                          sub + "/b c.log"});
  CHECK(access((d.path + "/pwned").c_str(), F_OK) != 0);
  CHECK_THROWS(RemoteListScript("/l/[a$b].log", 1, "T"));
  CHECK_THROWS(RemoteListScript("/l/[ab.log", 1, "T"));
}

}  // namespace sshtail
