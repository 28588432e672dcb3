#include "sshtail/positions.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace sshtail {

std::string HexEncode(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

bool HexDecode(std::string_view hex, std::string* out) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) return false;
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi << 4 | lo));
  }
  return true;
}

void PositionTracker::Pushed(uint64_t seq, PositionSet after) {
  std::lock_guard lock(mutex_);
  pending_.push_back(Entry{seq, false, std::move(after)});
}

void PositionTracker::Moved(PositionSet now) {
  std::lock_guard lock(mutex_);
  if (pending_.empty()) {
    committed_ = std::move(now);
  } else {
    pending_.push_back(Entry{0, true, std::move(now)});
  }
}

void PositionTracker::Done(uint64_t seq) {
  std::lock_guard lock(mutex_);
  for (auto& e : pending_) {
    if (e.seq == seq) {
      e.done = true;
      break;
    }
  }
  AdvanceLocked();
}

void PositionTracker::AdvanceLocked() {
  while (!pending_.empty() && pending_.front().done) {
    committed_ = std::move(pending_.front().after);
    pending_.pop_front();
  }
}

PositionSet PositionTracker::Committed() const {
  std::lock_guard lock(mutex_);
  return committed_;
}

void PositionTracker::Restore(PositionSet restored, int64_t saved_at_ns) {
  std::lock_guard lock(mutex_);
  pending_.clear();
  committed_ = std::move(restored);
  restored_at_ns_ = saved_at_ns;
}

int64_t PositionTracker::RestoredAt() const {
  std::lock_guard lock(mutex_);
  return restored_at_ns_;
}

namespace {

constexpr std::string_view kPositionsHeader =
    "# sshtail_exporter positions (written atomically; the last line is a "
    "checksum)\n";
constexpr std::string_view kPositionsChecksum = "# checksum ";

// PATH + suffix, removed first if it is there (a crashed save's leftover,
// or anything planted there: a symlink is removed, not followed).
bool Clear(const std::string& path, std::string* error) {
  if (::unlink(path.c_str()) == 0 || errno == ENOENT) return true;
  *error = "unlink " + path + ": " + std::strerror(errno);
  return false;
}

// Keeps the file at `path` as PATH.prev: a hard link under a temporary
// name, renamed over PATH.prev, so PATH.prev is always a whole file (the
// older or the newer generation). Best effort: where it fails (no hard
// links on this file system, PATH.prev.tmp in the way) PATH.prev stays the
// older whole generation, and the save goes on; a resume from it only
// reads more lines again.
void KeepPrevious(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;
  std::string prev = path + ".prev";
  std::string tmp = prev + ".tmp";
  std::string ignored;
  if (!Clear(tmp, &ignored) || ::link(path.c_str(), tmp.c_str()) != 0) return;
  if (::rename(tmp.c_str(), prev.c_str()) != 0) ::unlink(tmp.c_str());
}

}  // namespace

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string ChecksumLine(std::string_view prefix, std::string_view body) {
  char sum[24];
  std::snprintf(sum, sizeof sum, "%016llx\n",
                static_cast<unsigned long long>(Fnv1a(body)));
  return std::string(prefix) + sum;
}

bool PositionsFile::Parse(std::string_view text,
                          std::map<std::string, PositionSet>* out,
                          std::string* error) {
  std::string_view yaml = text;
  if (text.substr(0, kPositionsHeader.size()) == kPositionsHeader) {
    // Ours: the checksum first, a damaged file is not read at all.
    size_t last = text.rfind("\n" + std::string(kPositionsChecksum));
    if (last == std::string_view::npos || text.back() != '\n') {
      *error = "no checksum line (truncated?)";
      return false;
    }
    yaml = text.substr(0, last + 1);
    if (text.substr(last + 1) != ChecksumLine(kPositionsChecksum, yaml)) {
      *error = "checksum mismatch";
      return false;
    }
  }
  std::map<std::string, PositionSet> got;
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) {
      *error = "not a state or positions file";
      return false;
    }
    YAML::Node sources = root["sources"];
    if (!sources || !(sources.IsMap() || sources.IsNull())) {
      *error = "not a state or positions file";
      return false;
    }
    for (const auto& kv : sources) {
      auto line = [&](const YAML::Node& n) {
        return "line " + std::to_string(n.Mark().line + 1) + ": ";
      };
      // The writer never leaves a source without its list: cut off here.
      if (!kv.second.IsSequence()) {
        *error = line(kv.first) + "source without positions (truncated?)";
        return false;
      }
      PositionSet set;
      for (const auto& item : kv.second) {
        if (!item.IsMap()) {
          *error = line(item) + "a position is a mapping";
          return false;
        }
        FilePosition p;
        p.file.dev = item["dev"].as<uint64_t>();
        p.file.ino = item["ino"].as<uint64_t>();
        p.offset = item["offset"].as<uint64_t>();
        p.current = item["current"] ? item["current"].as<bool>() : false;
        if (item["tail"] &&
            (!HexDecode(item["tail"].as<std::string>(), &p.tail) ||
             p.tail.size() > FilePosition::kTailBytes ||
             p.tail.size() > p.offset)) {
          *error = line(item) + "bad tail";
          return false;
        }
        set.push_back(p);
      }
      got[kv.first.as<std::string>()] = std::move(set);
    }
  } catch (const YAML::Exception& e) {
    *error = "line " + std::to_string(e.mark.line + 1) + ": " + e.msg;
    return false;
  }
  *out = std::move(got);
  return true;
}

std::map<std::string, PositionSet> PositionsFile::Load() const {
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return {};
    throw std::runtime_error(path_ + ": " + std::strerror(errno));
  }
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return {};
  std::map<std::string, PositionSet> out;
  std::string error;
  if (!Parse(text, &out, &error)) {
    throw std::runtime_error(path_ + ": " + error);
  }
  return out;
}

bool WriteFileAtomically(const std::string& path, std::string_view text,
                         std::string* error, bool keep_previous) {
  std::string tmp = path + ".tmp";
  // A crashed save's temp file must not block saving, and whatever is
  // there is never followed: removed, then created anew (O_EXCL also
  // fails on a symlink someone puts there meanwhile).
  if (!Clear(tmp, error)) return false;
  int fd = ::open(tmp.c_str(),
                  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  auto fail = [&](const char* what) {
    *error = std::string(what) + " " + tmp + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return false;
  };
  if (fd < 0) {
    *error = "open " + tmp + ": " + std::strerror(errno);
    return false;  // not ours to remove (EEXIST: created meanwhile)
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync");
  if (::close(fd) != 0) {
    fd = -1;
    return fail("close");
  }
  fd = -1;
  if (keep_previous) KeepPrevious(path);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename");
  // The rename itself must reach the disk too (a power cut, not a kill).
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  if (dir.empty()) dir = "/";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return true;
}

std::string PositionsFile::Serialize(
    const std::map<std::string, PositionSet>& positions) {
  YAML::Emitter em;
  em << YAML::BeginMap << YAML::Key << "sources" << YAML::Value
     << YAML::BeginMap;
  for (const auto& [url, set] : positions) {
    em << YAML::Key << url << YAML::Value << YAML::BeginSeq;
    for (const auto& p : set) {
      em << YAML::Flow << YAML::BeginMap << YAML::Key << "dev" << YAML::Value
         << p.file.dev << YAML::Key << "ino" << YAML::Value << p.file.ino
         << YAML::Key << "offset" << YAML::Value << p.offset << YAML::Key
         << "current" << YAML::Value << p.current;
      if (!p.tail.empty()) {
        em << YAML::Key << "tail" << YAML::Value << HexEncode(p.tail);
      }
      em << YAML::EndMap;
    }
    em << YAML::EndSeq;
  }
  em << YAML::EndMap << YAML::EndMap;
  // A YAML comment: releases before the checksum still read the file.
  std::string text(kPositionsHeader);
  text += em.c_str();
  text += "\n";
  text += ChecksumLine(kPositionsChecksum, text);
  return text;
}

bool PositionsFile::Save(const std::map<std::string, PositionSet>& positions,
                         std::string* error) const {
  return WriteFileAtomically(path_, Serialize(positions), error,
                             keep_previous_);
}

}  // namespace sshtail
