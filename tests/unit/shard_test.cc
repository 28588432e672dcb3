// Which replica follows which host, and the locks that keep a host with one.
#include "sources/shard.h"

#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "sshtail/rules.h"
#include "test_util.h"

namespace sshtail {
namespace {

SourceSpec Ssh(const std::string& host, const std::string& path) {
  return ParseSourceUrl("ssh://" + host + path);
}

TEST_CASE("rendezvous: hosts spread evenly, a new replica takes about 1/N",
          "[shard]") {
  const int hosts = 3000;
  std::vector<int> per(4, 0);
  int moved = 0;
  for (int h = 0; h < hosts; ++h) {
    std::string key = "ssh:web" + std::to_string(h);
    int three = ShardKeeper::OwnerOf(key, 3);
    int four = ShardKeeper::OwnerOf(key, 4);
    REQUIRE(three >= 0);
    REQUIRE(three < 3);
    ++per[four];
    if (three != four) {
      ++moved;
      CHECK(four == 3);  // a host moves only to the new replica
    }
    CHECK(ShardKeeper::OwnerOf(key, 1) == 0);
  }
  for (int n : per) {
    CHECK(n > hosts / 4 * 0.85);
    CHECK(n < hosts / 4 * 1.15);
  }
  CHECK(moved > hosts / 4 * 0.85);
  CHECK(moved < hosts / 4 * 1.15);
}

TEST_CASE("the files of a host share its key; stdin has none", "[shard]") {
  CHECK(ShardKeeper::KeyOf(Ssh("web1", "/a.log")) ==
        ShardKeeper::KeyOf(Ssh("deploy@web1:2222", "/b.log")));
  CHECK(ShardKeeper::KeyOf(Ssh("web1", "/a.log")) !=
        ShardKeeper::KeyOf(Ssh("web2", "/a.log")));
  CHECK(ShardKeeper::KeyOf(ParseSourceUrl("-")).empty());
  CHECK(ShardKeeper::KeyOf(ParseSourceUrl("/var/log/a.log")) ==
        "file:/var/log/a.log");
}

TEST_CASE("index from a StatefulSet pod's host name", "[shard]") {
  CHECK(ShardKeeper::IndexFromHostname("sshtail-2") == 2);
  CHECK(ShardKeeper::IndexFromHostname("sshtail-exporter-17") == 17);
  CHECK(ShardKeeper::IndexFromHostname("sshtail") == -1);
  CHECK(ShardKeeper::IndexFromHostname("sshtail-") == -1);
  CHECK(ShardKeeper::IndexFromHostname("sshtail-2a") == -1);
}

TEST_CASE("a host is held by one replica; the next takes it once let go",
          "[shard]") {
  TempDir d;
  std::vector<SourceSpec> desired;
  for (int h = 0; h < 40; ++h) {
    std::string host = "web" + std::to_string(h);
    desired.push_back(Ssh(host, "/a.log"));
    desired.push_back(Ssh(host, "/b.log"));
  }
  desired.push_back(ParseSourceUrl("-"));
  ShardKeeper a(d.path, 0, 2), b(d.path, 1, 2);
  ShardClaim ca = a.Claim(desired, 2);
  ShardClaim cb = b.Claim(desired, 2);
  a.Commit(ca);
  b.Commit(cb);
  // Every host once; both files of a host together; stdin in both.
  CHECK(ca.sources.size() + cb.sources.size() == desired.size() + 1);
  CHECK(ca.gained.size() + cb.gained.size() == 40);
  CHECK(ca.waiting.empty());
  CHECK(cb.waiting.empty());

  // Down to one replica: b's hosts hash to a, but b still holds them.
  ShardClaim ca1 = a.Claim(desired, 1);
  CHECK(ca1.waiting.size() == cb.gained.size());
  CHECK(ca1.sources.size() == ca.sources.size());
  a.Commit(ca1);
  CHECK_FALSE(a.TryWaiting());
  // b lets go (its count is 1 now: nothing hashes to index 1).
  ShardClaim cb1 = b.Claim(desired, 1);
  CHECK(cb1.lost.size() == cb.gained.size());
  for (const auto& key : cb1.lost) b.Release(key);
  b.Commit(cb1);
  CHECK(b.held() == 0);
  CHECK(a.TryWaiting());
  ShardClaim ca2 = a.Claim(desired, 1);
  CHECK(ca2.sources.size() == desired.size());
  CHECK(ca2.gained.size() == cb.gained.size());
  a.Commit(ca2);
  CHECK(a.held() == 40);
}

TEST_CASE("an aborted claim gives its locks back", "[shard]") {
  TempDir d;
  std::vector<SourceSpec> desired = {Ssh("web1", "/a.log")};
  ShardKeeper a(d.path, 0, 1), b(d.path, 0, 1);
  ShardClaim ca = a.Claim(desired, 1);
  REQUIRE(ca.gained.size() == 1);
  CHECK(b.Claim(desired, 1).waiting.size() == 1);
  a.Abort(ca);
  CHECK(b.Claim(desired, 1).gained.size() == 1);
}

TEST_CASE("a shard directory that cannot be used is a config error",
          "[shard]") {
  CHECK_THROWS_AS(ShardKeeper("/nonexistent/shard", 0, 2), ConfigError);
}

}  // namespace
}  // namespace sshtail
