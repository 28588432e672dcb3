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

// A web config file holding `text`, loaded (throws what Load throws).
WebConfig LoadText(const std::string& text) {
  char path[] = "/tmp/web_config_test_XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  {
    std::ofstream f(path);
    f << text;
  }
  try {
    WebConfig c = WebConfig::Load(path);
    unlink(path);
    return c;
  } catch (...) {
    unlink(path);
    throw;
  }
}

TEST_CASE("basic auth: an unknown user's decoy check has a bounded cost") {
  // Cost 12 is 4x a cost-10 check; unknown names ran the decoy at the
  // highest configured cost (here 12), so a name-guessing flood cost as
  // much as the most expensive user. Now: that cost, at most 10.
  const std::string cost12 =
      "$2b$12$HV7GAVxRTPZgmpAcoc/GBOQAqJlDYpORWMuCCNBN1ZdLHk6t9wllO";
  const std::string cost6 =
      "$2b$06$O5VH3Fq.mo1JqyElO6JoSuZ052s3X/F.4fD1eMRgzvsLh/vsEiDKG";
  CHECK(LoadText("basic_auth_users:\n  a: '" + cost12 + "'\n  b: '" + cost6 +
                 "'\n")
            .auth_stats()
            .decoy_cost == WebConfig::kMaxDecoyCost);
  // Below the bound, unknown and known users cost the same.
  WebConfig c = LoadText("basic_auth_users:\n  b: '" + cost6 + "'\n");
  CHECK(c.auth_stats().decoy_cost == 6);
  CHECK(c.CheckAuthorization(Basic("nobody", "right")) == AuthResult::kDenied);
  CHECK(c.CheckAuthorization(Basic("b", "right")) == AuthResult::kOk);
  CHECK(c.auth_stats().bcrypt_runs == 2);
  // A cost crypt(3) refuses is a config error, not a user who can never
  // log in.
  CHECK_THROWS_WITH(
      LoadText("basic_auth_users:\n  a: '$2b$99" + cost6.substr(6) + "'\n"),
      Catch::Contains(":2: password of 'a': bcrypt cost must be 04 to 31"));
}

TEST_CASE("web config: client_ca_file needs a client_auth_type") {
  // Accepted and ignored before: mTLS was off, a client without a
  // certificate got 200 (exporter-toolkit refuses this).
  const std::string tls =
      "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n";
  CHECK_THROWS_WITH(LoadText(tls + "  client_ca_file: ca.pem\n"),
                    Catch::Contains(":4: client_ca_file without "
                                    "client_auth_type"));
  CHECK_THROWS_WITH(
      LoadText(tls + "  client_auth_type: NoClientCert\n"
                     "  client_ca_file: ca.pem\n"),
      Catch::Contains(":5: client_ca_file without client_auth_type"));
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
