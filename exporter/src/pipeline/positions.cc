#include "sshtail/positions.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <fstream>
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

std::map<std::string, PositionSet> PositionsFile::Load() const {
  std::map<std::string, PositionSet> out;
  std::ifstream in(path_);
  if (!in) {
    if (errno == ENOENT) return out;
    throw std::runtime_error(path_ + ": " + std::strerror(errno));
  }
  YAML::Node root;
  try {
    root = YAML::Load(in);
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(path_ + ":" + std::to_string(e.mark.line + 1) +
                             ": " + e.msg);
  }
  if (!root || root.IsNull()) return out;
  YAML::Node sources = root["sources"];
  if (!sources || !sources.IsMap()) return out;
  try {
    for (const auto& kv : sources) {
      PositionSet set;
      for (const auto& item : kv.second) {
        FilePosition p;
        p.file.dev = item["dev"].as<uint64_t>();
        p.file.ino = item["ino"].as<uint64_t>();
        p.offset = item["offset"].as<uint64_t>();
        p.current = item["current"] ? item["current"].as<bool>() : false;
        if (item["tail"] &&
            (!HexDecode(item["tail"].as<std::string>(), &p.tail) ||
             p.tail.size() > FilePosition::kTailBytes ||
             p.tail.size() > p.offset)) {
          throw std::runtime_error(path_ + ":" +
                                   std::to_string(item.Mark().line + 1) +
                                   ": bad tail");
        }
        set.push_back(p);
      }
      out[kv.first.as<std::string>()] = std::move(set);
    }
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(path_ + ":" + std::to_string(e.mark.line + 1) +
                             ": " + e.msg);
  }
  return out;
}

bool WriteFileAtomically(const std::string& path, std::string_view text,
                         std::string* error) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  auto fail = [&](const char* what) {
    *error = std::string(what) + " " + tmp + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    return false;
  };
  if (fd < 0) return fail("open");
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

bool PositionsFile::Save(const std::map<std::string, PositionSet>& positions,
                         std::string* error) const {
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
  std::string text = "# sshtail_exporter positions (written atomically)\n";
  text += em.c_str();
  text += "\n";

  return WriteFileAtomically(path_, text, error);
}

}  // namespace sshtail
