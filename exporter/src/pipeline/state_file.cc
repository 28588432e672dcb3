#include "sshtail/state_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <set>
#include <stdexcept>

#include "sshtail/rules.h"

namespace sshtail {
namespace {

// Version 2, one record a line (fast to write for 10^5 series, unlike YAML):
//   version: 2
//   source "<url>" "<name>"
//   position <dev> <ino> <offset> <current 0|1> <tail hex or ->
//   metric "<name>" <counter|gauge|histogram> "<signature>" "<help>"
//   bounds <b1> ... <bn>                      (histograms)
//   series <overflow 0|1> <n> "k" "v"... <value>
//   series <overflow 0|1> <n> "k" "v"... <sum> <count> <c1> ... <cn+1>
//   counter "<family>" <n> "k" "v"... <value>
//   checksum <FNV-1a 64 of every byte before this line, 16 hex digits>
// Strings are quoted; \\, \" and bytes outside 0x20..0x7e are escaped.
constexpr std::string_view kHeader =
    "# sshtail_exporter state: positions and series values. Written "
    "atomically;\n# a checksum guards it, so do not edit it by hand.\n";

void Quote(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  *out += '"';
  for (unsigned char c : s) {
    if (c == '\\' || c == '"') {
      *out += '\\';
      *out += static_cast<char>(c);
    } else if (c < 0x20 || c > 0x7e) {
      *out += "\\x";
      *out += kHex[c >> 4];
      *out += kHex[c & 15];
    } else {
      *out += static_cast<char>(c);
    }
  }
  *out += '"';
}

template <class T>
void Number(std::string* out, T v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);  // shortest round trip
  *out += ' ';
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

void Labels(std::string* out, const prometheus::Labels& labels) {
  Number(out, labels.size());
  for (const auto& [k, v] : labels) {
    *out += ' ';
    Quote(out, k);
    *out += ' ';
    Quote(out, v);
  }
}

const char* TypeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "counter";
}

const std::string& SourceOf(const prometheus::Labels& labels) {
  static const std::string kNone;
  auto it = labels.find("source");
  return it == labels.end() ? kNone : it->second;
}

// Reads the tokens of one line; every failure is a parse error.
class Tokens {
 public:
  explicit Tokens(std::string_view line) : s_(line) {}

  bool Word(std::string_view* w) {
    Skip();
    if (pos_ >= s_.size() || s_[pos_] == '"') return false;
    size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != ' ') ++pos_;
    *w = s_.substr(start, pos_ - start);
    return true;
  }

  bool String(std::string* out) {
    Skip();
    if (pos_ >= s_.size() || s_[pos_] != '"') return false;
    ++pos_;
    out->clear();
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c == '"') return true;
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (pos_ >= s_.size()) return false;
      char e = s_[pos_++];
      if (e == '\\' || e == '"') {
        *out += e;
      } else if (e == 'x' && pos_ + 2 <= s_.size()) {
        std::string byte;
        if (!HexDecode(s_.substr(pos_, 2), &byte)) return false;
        *out += byte;
        pos_ += 2;
      } else {
        return false;
      }
    }
    return false;  // unterminated
  }

  template <class T>
  bool Num(T* v) {
    std::string_view w;
    if (!Word(&w)) return false;
    auto r = std::from_chars(w.data(), w.data() + w.size(), *v);
    return r.ec == std::errc() && r.ptr == w.data() + w.size();
  }

  bool Labels(prometheus::Labels* labels) {
    size_t n;
    if (!Num(&n) || n > kMaxSeriesLabels) return false;
    labels->clear();
    for (size_t i = 0; i < n; ++i) {
      std::string k, v;
      if (!String(&k) || !String(&v)) return false;
      if (!labels->emplace(std::move(k), std::move(v)).second) return false;
    }
    return true;
  }

  bool End() {
    Skip();
    return pos_ == s_.size();
  }

 private:
  void Skip() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
  }
  std::string_view s_;
  size_t pos_ = 0;
};

// A counter only ever grows from 0 by positive amounts: never NaN, never
// below 0 (a restored NaN or negative value would read as garbage or as a
// reset). +Inf can be reached (a log field "inf" or a sum past the largest
// double) and restoring it gives back what was served, so it is kept.
bool CounterValue(double v) { return v >= 0; }

}  // namespace

std::string StateFile::Serialize(
    const std::map<std::string, SourceState>& sources,
    const std::vector<MetricSnapshot>& metrics,
    const std::vector<SavedCounter>& counters) {
  std::set<std::string_view> names;
  for (const auto& [url, s] : sources) names.insert(s.name);
  std::string out(kHeader);
  out.reserve(1 << 16);
  out += "version: 2\n";
  for (const auto& [url, s] : sources) {
    out += "source ";
    Quote(&out, url);
    out += ' ';
    Quote(&out, s.name);
    out += '\n';
    for (const FilePosition& p : s.positions) {
      out += "position";
      Number(&out, p.file.dev);
      Number(&out, p.file.ino);
      Number(&out, p.offset);
      out += p.current ? " 1 " : " 0 ";
      out += p.tail.empty() ? std::string("-") : HexEncode(p.tail);
      out += '\n';
    }
  }
  for (const MetricSnapshot& m : metrics) {
    out += "metric ";
    Quote(&out, m.name);
    out += ' ';
    out += TypeName(m.type);
    out += ' ';
    Quote(&out, m.signature);
    out += ' ';
    Quote(&out, m.help);
    out += '\n';
    if (m.type == MetricType::kHistogram) {
      out += "bounds";
      for (double b : m.buckets) Number(&out, b);
      out += '\n';
    }
    for (const SeriesSnapshot& s : m.series) {
      // What the reader refuses is never written (the configuration keeps
      // every series within the limit).
      if (!names.count(SourceOf(s.labels)) ||
          s.labels.size() > kMaxSeriesLabels) {
        continue;
      }
      out += s.overflow ? "series 1" : "series 0";
      Labels(&out, s.labels);
      if (m.type == MetricType::kHistogram) {
        Number(&out, s.histogram.sample_sum);
        Number(&out, s.histogram.sample_count);
        for (const auto& b : s.histogram.bucket) {
          Number(&out, b.cumulative_count);
        }
      } else {
        Number(&out, s.value);
      }
      out += '\n';
    }
  }
  for (const SavedCounter& c : counters) {
    if (!names.count(SourceOf(c.labels)) ||
        c.labels.size() > kMaxSeriesLabels) {
      continue;
    }
    out += "counter ";
    Quote(&out, c.family);
    Labels(&out, c.labels);
    Number(&out, c.value);
    out += '\n';
  }
  out += ChecksumLine("checksum ", out);
  return out;
}

bool StateFile::Parse(std::string_view text, SavedState* out,
                      std::string* error) {
  SavedState st;
  st.version = kVersion;
  // The checksum trailer first: a damaged file is not read at all.
  size_t last = text.rfind("\nchecksum ");
  if (last == std::string_view::npos || text.empty() || text.back() != '\n') {
    *error = "no checksum line (truncated?)";
    return false;
  }
  std::string_view body = text.substr(0, last + 1);
  std::string_view trailer = text.substr(last + 1);
  if (trailer != ChecksumLine("checksum ", body)) {
    *error = "checksum mismatch";
    return false;
  }
  size_t line_no = 0;
  bool seen_version = false;
  SourceState* source = nullptr;
  MetricSnapshot* metric = nullptr;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t nl = body.find('\n', pos);
    std::string_view line = body.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    auto bad = [&](const std::string& why) {
      *error = "line " + std::to_string(line_no) + ": " + why;
      return false;
    };
    if (!seen_version) {
      int v = 0;
      Tokens t(line);
      std::string_view key;
      if (!t.Word(&key) || key != "version:" || !t.Num(&v) || !t.End()) {
        return bad("expected 'version: 2'");
      }
      if (v != kVersion) {
        return bad("version " + std::to_string(v) + ", this build reads " +
                   std::to_string(kVersion));
      }
      seen_version = true;
      continue;
    }
    Tokens t(line);
    std::string_view kind;
    if (!t.Word(&kind)) return bad("syntax");
    if (kind == "source") {
      std::string url, name;
      if (!t.String(&url) || !t.String(&name) || !t.End()) {
        return bad("syntax");
      }
      auto [it, fresh] = st.sources.emplace(url, SourceState{name, {}});
      if (!fresh) return bad("source listed twice");
      source = &it->second;
    } else if (kind == "position") {
      FilePosition p;
      int current = 0;
      std::string_view tail;
      if (source == nullptr || !t.Num(&p.file.dev) || !t.Num(&p.file.ino) ||
          !t.Num(&p.offset) || !t.Num(&current) || !t.Word(&tail) || !t.End() ||
          (current != 0 && current != 1)) {
        return bad("syntax");
      }
      p.current = current == 1;
      if (tail != "-" && (!HexDecode(tail, &p.tail) ||
                          p.tail.size() > FilePosition::kTailBytes ||
                          p.tail.size() > p.offset)) {
        return bad("bad tail");
      }
      source->positions.push_back(std::move(p));
    } else if (kind == "metric") {
      MetricSnapshot m;
      std::string_view type;
      if (!t.String(&m.name) || !t.Word(&type) || !t.String(&m.signature) ||
          !t.String(&m.help) || !t.End()) {
        return bad("syntax");
      }
      if (type == "counter") {
        m.type = MetricType::kCounter;
      } else if (type == "gauge") {
        m.type = MetricType::kGauge;
      } else if (type == "histogram") {
        m.type = MetricType::kHistogram;
      } else {
        return bad("unknown metric type");
      }
      st.metrics.push_back(std::move(m));
      metric = &st.metrics.back();
    } else if (kind == "bounds") {
      if (metric == nullptr || metric->type != MetricType::kHistogram ||
          !metric->series.empty()) {
        return bad("bounds out of place");
      }
      metric->buckets.clear();
      double b;
      while (!t.End()) {
        if (!t.Num(&b)) return bad("syntax");
        metric->buckets.push_back(b);
      }
    } else if (kind == "series") {
      if (metric == nullptr) return bad("series before its metric");
      SeriesSnapshot s;
      int overflow = 0;
      if (!t.Num(&overflow) || (overflow != 0 && overflow != 1) ||
          !t.Labels(&s.labels)) {
        return bad("syntax");
      }
      s.overflow = overflow == 1;
      if (metric->type == MetricType::kHistogram) {
        auto& h = s.histogram;
        if (!t.Num(&h.sample_sum) || !t.Num(&h.sample_count)) {
          return bad("syntax");
        }
        std::vector<double> bounds = metric->buckets;
        bounds.push_back(std::numeric_limits<double>::infinity());
        for (double b : bounds) {
          prometheus::ClientMetric::Bucket bucket;
          bucket.upper_bound = b;
          if (!t.Num(&bucket.cumulative_count)) return bad("syntax");
          h.bucket.push_back(bucket);
        }
        // The writer writes the +Inf bucket's count as the count.
        if (h.bucket.back().cumulative_count != h.sample_count) {
          return bad("histogram count is not its +Inf bucket's");
        }
      } else if (!t.Num(&s.value)) {
        return bad("syntax");
      } else if (metric->type == MetricType::kCounter &&
                 !CounterValue(s.value)) {
        return bad("counter value " + std::to_string(s.value));
      }
      if (!t.End()) return bad("syntax");
      metric->series.push_back(std::move(s));
    } else if (kind == "counter") {
      SavedCounter c;
      if (!t.String(&c.family) || !t.Labels(&c.labels) || !t.Num(&c.value) ||
          !t.End()) {
        return bad("syntax");
      }
      if (!CounterValue(c.value)) {
        return bad("counter value " + std::to_string(c.value));
      }
      st.counters.push_back(std::move(c));
    } else {
      return bad("unknown record '" + std::string(kind) + "'");
    }
  }
  if (!seen_version) {
    *error = "no version";
    return false;
  }
  *out = std::move(st);
  return true;
}

bool StateFile::Save(const std::map<std::string, SourceState>& sources,
                     const std::vector<MetricSnapshot>& metrics,
                     const std::vector<SavedCounter>& counters,
                     std::string* error) const {
  return WriteFileAtomically(path_, Serialize(sources, metrics, counters),
                             error, keep_previous_);
}

namespace {

enum class Read { kMissing, kGood, kDamaged, kUnusable };

// Reads and parses one file. kDamaged: it is a regular file that is not a
// whole state or positions file (`why` says what); kUnusable: it cannot be
// read or is not a regular file, and is left where it is.
Read ReadState(const std::string& path, bool empty_is_damage, SavedState* st,
               std::string* why) {
  *st = SavedState();
  // O_NONBLOCK: a FIFO there must not hang the start.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return Read::kMissing;
    *why = std::strerror(errno);
    return Read::kUnusable;
  }
  struct stat sb {};
  std::string text;
  Read r = Read::kGood;
  if (::fstat(fd, &sb) != 0) {
    *why = std::strerror(errno);
    r = Read::kUnusable;
  } else if (!S_ISREG(sb.st_mode)) {
    *why = S_ISDIR(sb.st_mode) ? "is a directory" : "not a regular file";
    r = Read::kUnusable;
  } else if (static_cast<uint64_t>(sb.st_size) > StateFile::kMaxBytes) {
    *why = "larger than " + std::to_string(StateFile::kMaxBytes) + " bytes";
    r = Read::kDamaged;
  } else {
    text.resize(static_cast<size_t>(sb.st_size));
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::read(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    if (done != text.size()) {
      *why = "cannot read";
      r = Read::kUnusable;
    }
  }
  ::close(fd);
  if (r != Read::kGood) return r;
  const int64_t saved_at =
      int64_t{sb.st_mtim.tv_sec} * 1000000000 + sb.st_mtim.tv_nsec;
  st->saved_at_ns = saved_at;
  // The first record tells the format: `version:` for ours, else the
  // positions-only YAML (or a foreign file).
  std::string_view rest = text;
  bool blank = true, versioned = false;
  while (!rest.empty()) {
    size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? "" : rest.substr(nl + 1);
    if (line.find_first_not_of(" \t\r") == std::string_view::npos ||
        line[0] == '#') {
      continue;
    }
    blank = false;
    versioned = line.rfind("version:", 0) == 0;
    break;
  }
  if (blank) {
    // The writer never writes an empty file: beside a previous
    // generation, it was emptied.
    if (!empty_is_damage) return Read::kGood;
    *why = "empty";
    return Read::kDamaged;
  }
  if (versioned) {
    if (!StateFile::Parse(text, st, why)) return Read::kDamaged;
    st->saved_at_ns = saved_at;  // Parse replaces the whole state
    return Read::kGood;
  }
  std::map<std::string, PositionSet> positions;
  if (!PositionsFile::Parse(text, &positions, why)) return Read::kDamaged;
  st->version = 1;
  for (auto& [url, set] : positions) {
    st->sources[url].positions = std::move(set);
  }
  return Read::kGood;
}

// Renames a damaged file aside; says where to in `problem`.
void SetAside(const std::string& path, std::string* problem) {
  std::string aside = path + ".corrupt-" + std::to_string(std::time(nullptr));
  if (std::rename(path.c_str(), aside.c_str()) == 0) {
    *problem += "; set aside as " + aside;
  } else {
    *problem += "; cannot set it aside: " + std::string(std::strerror(errno));
  }
}

}  // namespace

void StateFile::CheckPath(const std::string& flag, const std::string& path) {
  struct stat sb {};
  if (::stat(path.c_str(), &sb) != 0 || S_ISREG(sb.st_mode)) return;
  throw ConfigError(
      flag + " " + path + ": " +
      (S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file") +
      ", not a file the exporter may write");
}

SavedState StateFile::Load(std::string* problem) const {
  problem->clear();
  std::string prev = path_ + ".prev";
  bool have_prev = false;
  if (keep_previous_) {
    struct stat sb {};
    have_prev = ::lstat(prev.c_str(), &sb) == 0;
  }
  SavedState st;
  std::string why;
  int set_aside = 0;
  switch (ReadState(path_, have_prev, &st, &why)) {
    case Read::kGood:
      return st;
    case Read::kUnusable:
      *problem = path_ + ": " + why;
      return SavedState();  // not ours to move away
    case Read::kMissing:
      // A damaged file set aside by a run that then ended before its
      // first save: the previous generation is still the one to resume.
      if (!have_prev) return SavedState();
      *problem = "missing";
      break;
    case Read::kDamaged:
      *problem = why;
      SetAside(path_, problem);
      ++set_aside;
      break;
  }
  if (have_prev) {
    switch (ReadState(prev, false, &st, &why)) {
      case Read::kGood:
        *problem += "; resumed from the previous generation " + prev +
                    " (lines after it are read again)";
        st.from_previous = true;
        st.set_aside = set_aside;
        return st;
      case Read::kDamaged:
        *problem += "; " + prev + " is damaged too: " + why;
        SetAside(prev, problem);
        ++set_aside;
        break;
      case Read::kMissing:
      case Read::kUnusable:
        *problem += "; " + prev + " not usable: " + why;
        break;
    }
  }
  st = SavedState();
  st.set_aside = set_aside;
  return st;
}

}  // namespace sshtail
