#include "sources/shard.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "sshtail/rules.h"

namespace sshtail {
namespace {

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// splitmix64's finalizer: every input bit moves every output bit.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

ShardKeeper::ShardKeeper(std::string dir, int index, int count)
    : dir_(std::move(dir)), index_(index), count_(count) {
  struct stat st {};
  if (::stat(dir_.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
      ::access(dir_.c_str(), R_OK | W_OK | X_OK) != 0) {
    throw ConfigError("--shard.dir " + dir_ +
                      ": not a directory this user can write (every "
                      "replica must share it)");
  }
}

std::string ShardKeeper::KeyOf(const SourceSpec& s) {
  switch (s.kind) {
    case SourceSpec::Kind::kSsh:
      return "ssh:" + s.host;
    case SourceSpec::Kind::kFile:
      return "file:" + s.path;
    default:
      return "";
  }
}

int ShardKeeper::OwnerOf(const std::string& key, int count) {
  uint64_t h = Fnv1a(key);
  int best = 0;
  uint64_t best_score = 0;
  for (int i = 0; i < count; ++i) {
    uint64_t score = Mix(h ^ Mix(static_cast<uint64_t>(i) + 1));
    if (i == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

int ShardKeeper::IndexFromHostname(const std::string& hostname) {
  size_t dash = hostname.rfind('-');
  if (dash == std::string::npos || dash + 1 >= hostname.size() ||
      hostname.size() - dash - 1 > 6) {
    return -1;
  }
  int n = 0;
  for (size_t i = dash + 1; i < hostname.size(); ++i) {
    if (hostname[i] < '0' || hostname[i] > '9') return -1;
    n = n * 10 + (hostname[i] - '0');
  }
  return n;
}

std::string ShardKeeper::LockPath(const std::string& key) const {
  return dir_ + "/" + Hex(Fnv1a(key)) + ".lock";
}

std::string ShardKeeper::HandOverPath(const std::string& key) const {
  return dir_ + "/" + Hex(Fnv1a(key)) + ".state";
}

UniqueFd ShardKeeper::TryLock(const std::string& key) const {
  UniqueFd fd(
      ::open(LockPath(key).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd) return UniqueFd();
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return UniqueFd();
  return fd;
}

ShardClaim ShardKeeper::Claim(const std::vector<SourceSpec>& desired,
                              int count) {
  ShardClaim claim;
  std::set<std::string> ours, waiting, present;
  for (const auto& s : desired) {
    std::string key = KeyOf(s);
    if (key.empty()) {
      claim.sources.push_back(s);
      continue;
    }
    present.insert(key);
    if (OwnerOf(key, count) != index_) continue;
    ours.insert(key);
    bool have = held_.count(key) || taking_.count(key);
    if (!have) {
      UniqueFd fd = TryLock(key);
      if (fd) {
        taking_.emplace(key, std::move(fd));
        claim.gained.push_back(key);
        have = true;
      }
    }
    if (have) {
      claim.sources.push_back(s);
    } else {
      waiting.insert(key);
    }
  }
  claim.waiting.assign(waiting.begin(), waiting.end());
  for (const auto& [key, fd] : held_) {
    if (ours.count(key)) continue;
    (present.count(key) ? claim.lost : claim.dropped).push_back(key);
  }
  return claim;
}

void ShardKeeper::Commit(const ShardClaim& claim) {
  for (const auto& key : claim.gained) {
    auto it = taking_.find(key);
    if (it == taking_.end()) continue;
    held_[key] = std::move(it->second);
    taking_.erase(it);
  }
  // Their sources were left out; TryWaiting looks again.
  waiting_ = std::set<std::string>(claim.waiting.begin(), claim.waiting.end());
}

void ShardKeeper::Abort(const ShardClaim& claim) {
  for (const auto& key : claim.gained) taking_.erase(key);
}

void ShardKeeper::Release(const std::string& key) { held_.erase(key); }

bool ShardKeeper::TryWaiting() {
  bool any = false;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    UniqueFd fd = TryLock(*it);
    if (!fd) {
      ++it;
      continue;
    }
    // Free now; the reload's Claim takes it again (flock on one file from
    // one process: this fd is closed first).
    fd.Reset();
    any = true;
    it = waiting_.erase(it);
  }
  return any;
}

}  // namespace sshtail
