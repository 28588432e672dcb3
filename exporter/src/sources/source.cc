#include "sshtail/source.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>
#include <stdexcept>

#include "sources/path_glob.h"
#include "sshtail/remote_script.h"
#include "sshtail/text_format.h"

namespace sshtail {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX sequences are decoded; a '%' not followed by two hex digits stays.
std::string PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
        HexValue(s[i + 2]) >= 0) {
      out.push_back(
          static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

[[noreturn]] void BadUrl(const std::string& url, const std::string& why) {
  throw std::invalid_argument("source '" + url + "': " + why);
}

// A decimal port in 1-65535.
int ParsePort(const std::string& url, std::string_view port) {
  if (port.empty() || port.size() > 5) BadUrl(url, "invalid port");
  int p = 0;
  for (char c : port) {
    if (!std::isdigit(static_cast<unsigned char>(c))) {
      BadUrl(url, "invalid port");
    }
    p = p * 10 + (c - '0');
  }
  if (p < 1 || p > 65535) BadUrl(url, "port out of range (1-65535)");
  return p;
}

// syslog+unix:///abs/path or syslog+udp://IP:port ([IPv6]:port).
void ParseSyslogUrl(const std::string& url, SourceSpec* spec) {
  std::string_view rest(url);
  if (rest.rfind("syslog+unix://", 0) == 0) {
    spec->kind = SourceSpec::Kind::kSyslogUnix;
    spec->path = PercentDecode(rest.substr(14));
    if (spec->path.empty() || spec->path.front() != '/') {
      BadUrl(url, "expected syslog+unix:///absolute/path");
    }
    if (spec->path.size() >= 108) {  // sun_path, with its NUL
      BadUrl(url, "socket path longer than 107 bytes");
    }
    return;
  }
  if (rest.rfind("syslog+udp://", 0) != 0) {
    BadUrl(url, "unknown scheme; expected syslog+unix:// or syslog+udp://");
  }
  spec->kind = SourceSpec::Kind::kSyslogUdp;
  rest.remove_prefix(13);
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  std::string_view port;
  bool v6 = false;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() ||
        rest[close + 1] != ':') {
      BadUrl(url, "expected syslog+udp://[IPv6]:port");
    }
    spec->host = std::string(rest.substr(1, close - 1));
    port = rest.substr(close + 2);
    v6 = true;
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
      BadUrl(url, "expected syslog+udp://host:port");
    }
    spec->host = std::string(rest.substr(0, colon));
    port = rest.substr(colon + 1);
  }
  unsigned char addr[16];
  if (inet_pton(v6 ? AF_INET6 : AF_INET, spec->host.c_str(), addr) != 1) {
    BadUrl(url, v6 ? "not an IPv6 address"
                   : "not an IPv4 address "
                     "(IPv6: [addr]:port)");
  }
  // nginx needs a fixed port to send to.
  spec->port = ParsePort(url, port);
}

}  // namespace

std::string EncodeUrlPath(const std::string& path) {
  std::string out;
  for (unsigned char c : path) {
    if (c == '%' || c <= ' ' || c >= 0x7f) {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

SourceSpec ParseSourceUrl(const std::string& url) {
  SourceSpec spec;
  spec.url = url;
  if (url.empty()) BadUrl(url, "empty source");
  if (url == "-") {
    spec.kind = SourceSpec::Kind::kStdin;
    return spec;
  }
  if (url.rfind("syslog+", 0) == 0) {
    ParseSyslogUrl(url, &spec);
    return spec;
  }
  if (url.rfind("ssh://", 0) == 0) {
    spec.kind = SourceSpec::Kind::kSsh;
    std::string_view rest(url);
    rest.remove_prefix(6);
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash + 1 >= rest.size()) {
      BadUrl(url, "expected ssh://[user@]host[:port]/absolute/path");
    }
    std::string_view authority = rest.substr(0, slash);
    spec.path = PercentDecode(rest.substr(slash));
    size_t at = authority.rfind('@');
    if (at != std::string_view::npos) {
      spec.user = PercentDecode(authority.substr(0, at));
      authority.remove_prefix(at + 1);
      if (spec.user.empty()) BadUrl(url, "empty user name");
    }
    std::string_view hostport = authority;
    std::string_view port;
    if (!hostport.empty() && hostport.front() == '[') {
      size_t close = hostport.find(']');
      if (close == std::string_view::npos)
        BadUrl(url, "unterminated [ in host");
      spec.host = std::string(hostport.substr(1, close - 1));
      std::string_view after = hostport.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') BadUrl(url, "unexpected text after ]");
        port = after.substr(1);
      }
    } else {
      size_t colon = hostport.rfind(':');
      if (colon != std::string_view::npos) {
        port = hostport.substr(colon + 1);
        hostport = hostport.substr(0, colon);
      }
      spec.host = std::string(hostport);
    }
    if (spec.host.empty()) BadUrl(url, "empty host");
    for (char c : spec.host) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
            c == '-' || c == '_' || c == ':' || c == '%')) {
        BadUrl(url, "invalid character in host name");
      }
    }
    if (!port.empty() || authority.find(':') != std::string_view::npos) {
      spec.port = ParsePort(url, port);
    }
    if (HasGlob(spec.path)) {
      try {
        // The remote shell must be able to take it as it is.
        RemoteListScript(PathGlob(spec.path).glob(), 1, "t");
      } catch (const std::invalid_argument& e) {
        BadUrl(url, e.what());
      }
      spec.glob = true;
    }
    return spec;
  }
  std::string path;
  if (url.rfind("file://", 0) == 0) {
    path = PercentDecode(std::string_view(url).substr(7));
    if (path.empty() || path.front() != '/') {
      BadUrl(url, "expected file:///absolute/path");
    }
  } else if (url.find("://") != std::string::npos) {
    BadUrl(url,
           "unknown scheme; expected /path, file:///path, "
           "ssh://[user@]host[:port]/path, syslog+unix:///path, "
           "syslog+udp://host:port or -");
  } else {
    path = url;
    if (path.front() != '/') {
      path = (std::filesystem::current_path() / path).lexically_normal();
    }
  }
  spec.kind = SourceSpec::Kind::kFile;
  spec.path = path;
  if (HasGlob(path)) {
    try {
      PathGlob check(path);
    } catch (const std::invalid_argument& e) {
      BadUrl(url, e.what());
    }
    spec.glob = true;
  }
  return spec;
}

void ResolveNames(std::vector<SourceSpec>& specs) {
  std::map<std::string, int> files_per_host;
  std::set<std::string> urls;
  for (const auto& s : specs) {
    // A named inventory source (told apart by `file`) renames no other.
    if (s.kind == SourceSpec::Kind::kSsh && s.file.empty()) {
      ++files_per_host[s.host];
    }
  }
  std::set<std::string> names;
  for (auto& s : specs) {
    std::string key =
        s.kind == SourceSpec::Kind::kSsh
            ? s.user + "@" + s.host + ":" + std::to_string(s.port) + s.path
            : (s.kind == SourceSpec::Kind::kStdin ? "-" : s.path);
    if (s.kind == SourceSpec::Kind::kSyslogUnix) key = "syslog+unix:" + s.path;
    if (s.kind == SourceSpec::Kind::kSyslogUdp) {
      key = "syslog+udp:" + s.host + ":" + std::to_string(s.port);
    }
    // file:line when the source comes from the config file.
    std::string where =
        s.config_file.empty()
            ? ""
            : s.config_file + ":" + std::to_string(s.config_line) + ": ";
    if (!urls.insert(key).second) {
      throw std::invalid_argument(where + "source '" + s.url +
                                  "' is given twice");
    }
    if (s.glob) continue;  // its matches are named when found
    if (s.name.empty()) {
      switch (s.kind) {
        case SourceSpec::Kind::kStdin:
          s.name = "stdin";
          break;
        case SourceSpec::Kind::kFile:
          s.name = s.path;
          break;
        case SourceSpec::Kind::kSsh:
          s.name = files_per_host[s.host] > 1 ? s.host + ":" + s.path : s.host;
          break;
        case SourceSpec::Kind::kSyslogUnix:
          s.name = s.path;
          break;
        case SourceSpec::Kind::kSyslogUdp:
          s.name = s.host.find(':') != std::string::npos
                       ? "[" + s.host + "]:" + std::to_string(s.port)
                       : s.host + ":" + std::to_string(s.port);
          break;
      }
    }
    s.name = text::ValidUtf8(s.name);  // it is a label value
    if (!names.insert(s.name + '\n' + s.file).second) {
      throw std::invalid_argument(where + "two sources are named '" + s.name +
                                  "'; give one of them another name");
    }
  }
}

void SourceStatus::CountFailure(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++failures_[reason];
}

std::map<std::string, uint64_t> SourceStatus::Failures() const {
  std::lock_guard lock(mutex_);
  return failures_;
}

BatchBuilder::BatchBuilder(BatchQueue& queue, uint32_t source,
                           SourceStatus& status, size_t batch_bytes)
    : queue_(queue),
      source_(source),
      status_(status),
      batch_bytes_(batch_bytes) {}

void BatchBuilder::Ensure() {
  if (!batch_) {
    batch_ = std::make_unique<LineBatch>();
    batch_->source = source_;
    batch_->data.reserve(batch_bytes_ + 4096);
  }
}

void BatchBuilder::Line(std::string_view line) {
  Ensure();
  batch_->data.append(line);
  batch_->data.push_back('\n');
  ++batch_->lines;
}

void BatchBuilder::TooLong() {
  Ensure();
  ++batch_->too_long;
}

bool BatchBuilder::Flush(const PositionSet& after, uint64_t raw_bytes) {
  if (empty()) {
    if (batch_) batch_->raw_bytes += raw_bytes;
    if (after != last_after_) {
      last_after_ = after;
      status_.positions.Moved(after);
    }
    return true;
  }
  last_after_ = after;
  batch_->seq = next_seq_++;
  batch_->raw_bytes += raw_bytes;
  for (const auto& p : after) {
    if (p.current) {
      batch_->file = p.file;
      batch_->end_offset = p.offset;
      batch_->has_position = true;
    }
  }
  if (batch_->lines > 0) {
    double now = std::chrono::duration<double>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count();
    status_.last_line_time.store(now, std::memory_order_relaxed);
  }
  status_.positions.Pushed(batch_->seq, after);
  return queue_.Push(batch_);
}

}  // namespace sshtail
