// Basic-auth bounds of the web config: outcome caches and the limit on
// concurrent bcrypt runs.
#include "web/web_config.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace sshtail {
namespace {

std::string Basic(const std::string& user, const std::string& password) {
  std::string in = user + ":" + password;
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  return "Basic " + out;
}

// A web config with user alice, password "right", at bcrypt cost 4 or 8.
WebConfig Load(int cost) {
  const char* hash =
      cost == 4
          ? "$2b$04$EMCERAtsk5kCObdjwsw51OteUxvK3URFBKEf.satq47xGUI5WBLrq"
          : "$2b$08$L16hx8Bxha4fQclCJuqb5uGo3vhBxM4HcH4NAyxRMUz0.bJ/ou1xK";
  char path[] = "/tmp/web_config_test_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  {
    std::ofstream f(path);
    f << "basic_auth_users:\n  alice: '" << hash << "'\n";
  }
  WebConfig c = WebConfig::Load(path);
  unlink(path);
  return c;
}

TEST_CASE("LruSet drops the least recently used entry") {
  LruSet s(3);
  s.Insert("a");
  s.Insert("b");
  s.Insert("c");
  CHECK(s.Touch("a"));  // now b is the oldest
  s.Insert("d");
  CHECK(s.size() == 3);
  CHECK_FALSE(s.Touch("b"));
  CHECK(s.Touch("a"));
  CHECK(s.Touch("c"));
  CHECK(s.Touch("d"));
  s.Insert("d");  // already there: no growth
  CHECK(s.size() == 3);
}

TEST_CASE("basic auth: outcomes, and failures cost one bcrypt run") {
  WebConfig c = Load(4);
  CHECK(c.CheckAuthorization(Basic("alice", "right")) == AuthResult::kOk);
  CHECK(c.CheckAuthorization(Basic("alice", "wrong")) == AuthResult::kDenied);
  CHECK(c.CheckAuthorization(Basic("mallory", "right")) == AuthResult::kDenied);
  CHECK(c.CheckAuthorization(Basic("Alice", "right")) == AuthResult::kDenied);
  CHECK(c.CheckAuthorization("Bearer x") == AuthResult::kDenied);
  CHECK(c.CheckAuthorization("Basic !!!") == AuthResult::kDenied);
  auto before = c.auth_stats();
  CHECK(before.bcrypt_runs == 4);  // unknown users run bcrypt too
  for (int i = 0; i < 50; ++i) {
    CHECK(c.CheckAuthorization(Basic("alice", "wrong")) == AuthResult::kDenied);
    CHECK(c.CheckAuthorization(Basic("mallory", "right")) ==
          AuthResult::kDenied);
    CHECK(c.CheckAuthorization(Basic("alice", "right")) == AuthResult::kOk);
  }
  auto after = c.auth_stats();
  CHECK(after.bcrypt_runs == before.bcrypt_runs);  // all cached
  CHECK(after.ok_cached == 1);
  CHECK(after.denied_cached == 3);
}

TEST_CASE("basic auth: at most two bcrypt runs at once, the rest wait or 429") {
  WebConfig c = Load(8);
  CHECK(c.CheckAuthorization(Basic("alice", "right")) == AuthResult::kOk);
  constexpr int kGuesses = 40;
  std::atomic<int> ok{0}, denied{0}, busy{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kGuesses; ++i) {
    threads.emplace_back([&, i] {
      std::string user = i % 2 ? "alice" : "nobody" + std::to_string(i);
      switch (c.CheckAuthorization(Basic(user, "guess" + std::to_string(i)))) {
        case AuthResult::kOk:
          ++ok;
          break;
        case AuthResult::kDenied:
          ++denied;
          break;
        case AuthResult::kBusy:
          ++busy;
          break;
      }
    });
  }
  // A password checked before is answered from the cache meanwhile.
  CHECK(c.CheckAuthorization(Basic("alice", "right")) == AuthResult::kOk);
  for (auto& t : threads) t.join();
  auto stats = c.auth_stats();
  CHECK(ok == 0);
  CHECK(denied + busy == kGuesses);
  CHECK(stats.max_parallel <= WebConfig::kMaxParallelBcrypt);
  CHECK(stats.max_parallel >= 1);
  CHECK(stats.bcrypt_runs == 1 + denied);
  CHECK(stats.busy == busy);
  CHECK(stats.ok_cached == 1);  // failures never evict the good credential
}

}  // namespace
}  // namespace sshtail
