#include "sshtail/text_format.h"

#include <charconv>
#include <cmath>
#include <cstdint>

namespace sshtail {
namespace text {
namespace {

void AppendEscaped(std::string* out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      *out += "\\\\";
    } else if (c == '\n') {
      *out += "\\n";
    } else if (quote && c == '"') {
      *out += "\\\"";
    } else {
      *out += c;
    }
  }
}

template <class Labels>
void AppendLabels(std::string* out, const Labels& labels, const double* le) {
  if (labels.empty() && le == nullptr) return;
  *out += '{';
  bool first = true;
  for (const auto& l : labels) {
    if (!first) *out += ',';
    first = false;
    if constexpr (std::is_same_v<Labels, prometheus::Labels>) {
      *out += l.first;
      *out += "=\"";
      AppendEscaped(out, l.second, true);
    } else {
      *out += l.name;
      *out += "=\"";
      AppendEscaped(out, l.value, true);
    }
    *out += '"';
  }
  if (le != nullptr) {
    if (!first) *out += ',';
    *out += "le=\"";
    AppendNumber(out, *le);
    *out += '"';
  }
  *out += '}';
}

template <class Labels>
void Sample(std::string* out, std::string_view name, std::string_view suffix,
            const Labels& labels, double value, const double* le) {
  *out += name;
  *out += suffix;
  AppendLabels(out, labels, le);
  *out += ' ';
  AppendNumber(out, value);
  *out += '\n';
}

const char* TypeName(prometheus::MetricType t) {
  switch (t) {
    case prometheus::MetricType::Counter:
      return "counter";
    case prometheus::MetricType::Gauge:
      return "gauge";
    case prometheus::MetricType::Histogram:
      return "histogram";
    case prometheus::MetricType::Summary:
      return "summary";
    case prometheus::MetricType::Untyped:
      return "untyped";
  }
  return "untyped";
}

}  // namespace

void AppendNumber(std::string* out, double v) {
  if (std::isnan(v)) {
    *out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    *out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[64];
  std::to_chars_result r;
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
  } else {
    // 15 significant digits: what a double holds exactly, and no noise from
    // the order in which parser threads added up a sum.
    r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general, 15);
  }
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

void AppendHeader(std::string* out, std::string_view name,
                  std::string_view help, prometheus::MetricType type) {
  *out += "# HELP ";
  *out += name;
  *out += ' ';
  AppendEscaped(out, help, false);
  *out += "\n# TYPE ";
  *out += name;
  *out += ' ';
  *out += TypeName(type);
  *out += '\n';
}

void AppendSample(std::string* out, std::string_view name,
                  std::string_view suffix, const prometheus::Labels& labels,
                  double value, const double* le) {
  Sample(out, name, suffix, labels, value, le);
}

void AppendSample(std::string* out, std::string_view name,
                  std::string_view suffix,
                  const std::vector<prometheus::ClientMetric::Label>& labels,
                  double value, const double* le) {
  Sample(out, name, suffix, labels, value, le);
}

template <class Labels>
void AppendMetric(std::string* out, std::string_view name,
                  prometheus::MetricType type, const Labels& labels,
                  const prometheus::ClientMetric& m) {
  switch (type) {
    case prometheus::MetricType::Counter:
      Sample(out, name, "", labels, m.counter.value, nullptr);
      break;
    case prometheus::MetricType::Gauge:
      Sample(out, name, "", labels, m.gauge.value, nullptr);
      break;
    case prometheus::MetricType::Histogram:
      for (const auto& b : m.histogram.bucket) {
        Sample(out, name, "_bucket", labels,
               static_cast<double>(b.cumulative_count), &b.upper_bound);
      }
      Sample(out, name, "_sum", labels, m.histogram.sample_sum, nullptr);
      Sample(out, name, "_count", labels,
             static_cast<double>(m.histogram.sample_count), nullptr);
      break;
    default:
      Sample(out, name, "", labels, m.untyped.value, nullptr);
  }
}

template void AppendMetric(std::string*, std::string_view,
                           prometheus::MetricType, const prometheus::Labels&,
                           const prometheus::ClientMetric&);
template void AppendMetric(std::string*, std::string_view,
                           prometheus::MetricType,
                           const std::vector<prometheus::ClientMetric::Label>&,
                           const prometheus::ClientMetric&);

void AppendFamily(std::string* out, const prometheus::MetricFamily& f) {
  if (f.metric.empty()) return;
  AppendHeader(out, f.name, f.help, f.type);
  for (const auto& m : f.metric) AppendMetric(out, f.name, f.type, m.label, m);
}

std::string ValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size();
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    size_t len = c < 0x80           ? 1
                 : (c >> 5) == 0x6  ? 2
                 : (c >> 4) == 0xE  ? 3
                 : (c >> 3) == 0x1E ? 4
                                    : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok && len > 1) {
      // Reject overlong forms, surrogates and code points past U+10FFFF.
      uint32_t cp = c & (0xFF >> (len + 1));
      for (size_t k = 1; k < len; ++k) cp = cp << 6 | (p[i + k] & 0x3F);
      ok = !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) &&
           !(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) &&
           !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

}  // namespace text
}  // namespace sshtail
