#pragma once

#include <prometheus/labels.h>
#include <prometheus/metric_family.h>

#include <string>
#include <string_view>
#include <vector>

namespace sshtail {

/// Prometheus text exposition (format 0.0.4), written straight into a
/// string: numbers with std::to_chars, no streams, no locale. Stateless;
/// thread-safe.
namespace text {

/// "# HELP name help\n# TYPE name type\n".
void AppendHeader(std::string* out, std::string_view name,
                  std::string_view help, prometheus::MetricType type);

/// One sample: name+suffix{labels[,le="bound"]} value; `le` is given for
/// histogram buckets only.
void AppendSample(std::string* out, std::string_view name,
                  std::string_view suffix, const prometheus::Labels& labels,
                  double value, const double* le = nullptr);
void AppendSample(std::string* out, std::string_view name,
                  std::string_view suffix,
                  const std::vector<prometheus::ClientMetric::Label>& labels,
                  double value, const double* le = nullptr);

/// Every sample of one collected metric (counter, gauge or histogram).
template <class Labels>
void AppendMetric(std::string* out, std::string_view name,
                  prometheus::MetricType type, const Labels& labels,
                  const prometheus::ClientMetric& m);

/// A whole family as collected by prometheus-cpp.
void AppendFamily(std::string* out, const prometheus::MetricFamily& f);

/// Integers as integers, everything else with 15 significant digits.
void AppendNumber(std::string* out, double v);

/// `s` as a valid UTF-8 string: each byte that is not part of a valid
/// sequence becomes U+FFFD. Prometheus rejects a scrape with an invalid
/// label value, and log lines carry any bytes.
std::string ValidUtf8(std::string_view s);

}  // namespace text
}  // namespace sshtail
