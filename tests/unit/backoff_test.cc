// Reconnect waits: exponential to --ssh.max-backoff, jittered below it.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

#include "sources/ssh/ssh_session.h"

namespace sshtail {
namespace {

using std::chrono::milliseconds;

TEST_CASE("backoff doubles from 1 s up to the maximum", "[backoff]") {
  milliseconds max(30000), b(0);
  std::vector<long long> seen;
  for (int i = 0; i < 8; ++i) {
    b = NextBackoff(b, max);
    seen.push_back(b.count());
  }
  CHECK(seen == std::vector<long long>{1000, 2000, 4000, 8000, 16000, 30000,
                                       30000, 30000});
}

TEST_CASE("a jittered wait is never longer than the backoff", "[backoff]") {
  // --ssh.max-backoff is the longest wait (README); the spread keeps hosts
  // that failed together apart.
  milliseconds d(30000);
  long long lo = d.count(), hi = 0;
  for (int i = 0; i < 10000; ++i) {
    long long w = Jitter(d).count();
    lo = std::min(lo, w);
    hi = std::max(hi, w);
  }
  CHECK(hi <= d.count());
  CHECK(lo >= d.count() / 2);
  CHECK(hi - lo > d.count() / 3);  // spread, not a constant
}

}  // namespace
}  // namespace sshtail
