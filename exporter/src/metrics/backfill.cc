#include "sshtail/backfill.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "sshtail/text_format.h"

namespace sshtail {

struct BackfillStore::Series {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  bool gauge_set = true;
  std::vector<double> buckets;
  prometheus::Labels labels;
  // Doubles per step: counter and adding gauge 1 (the sum); set gauge 2
  // (value, its line's time); histogram buckets+1 counts, then the sum.
  size_t width = 1;
  std::vector<int64_t> steps;  // sorted, unique
  std::vector<double> values;  // width per step, in steps' order

  double* Slot(int64_t step) {
    // Lines come mostly in time order: the last step, or a new one after it.
    if (!steps.empty() && steps.back() == step) {
      return values.data() + (steps.size() - 1) * width;
    }
    size_t at = steps.size();
    if (!steps.empty() && step < steps.back()) {
      at = static_cast<size_t>(
          std::lower_bound(steps.begin(), steps.end(), step) - steps.begin());
      if (at < steps.size() && steps[at] == step) {
        return values.data() + at * width;
      }
    }
    steps.insert(steps.begin() + static_cast<std::ptrdiff_t>(at), step);
    std::vector<double> fresh(width, 0.0);
    if (type == MetricType::kGauge && gauge_set) {
      fresh[1] = -std::numeric_limits<double>::infinity();
    }
    values.insert(values.begin() + static_cast<std::ptrdiff_t>(at * width),
                  fresh.begin(), fresh.end());
    return values.data() + at * width;
  }
};

namespace {

void Escaped(std::string* out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      *out += "\\\\";
    } else if (c == '\n') {
      *out += "\\n";
    } else if (c == '"' && quote) {
      *out += "\\\"";
    } else {
      *out += c;
    }
  }
}

// name{labels[,le="x"]} value timestamp
void Sample(std::string* out, const std::string& name, std::string_view suffix,
            const prometheus::Labels& labels, const double* le, double value,
            double ts) {
  *out += name;
  *out += suffix;
  if (!labels.empty() || le != nullptr) {
    *out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) *out += ',';
      first = false;
      *out += k;
      *out += "=\"";
      Escaped(out, v, true);
      *out += '"';
    }
    if (le != nullptr) {
      if (!first) *out += ',';
      *out += "le=\"";
      text::AppendNumber(out, *le);
      *out += '"';
    }
    *out += '}';
  }
  *out += ' ';
  text::AppendNumber(out, value);
  *out += ' ';
  text::AppendNumber(out, ts);
  *out += '\n';
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

BackfillStore::BackfillStore(
    int64_t step_ms, std::vector<std::pair<std::string, std::string>> extra)
    : step_ms_(step_ms), extra_(std::move(extra)) {}
BackfillStore::~BackfillStore() = default;

int64_t BackfillStore::StepOf(double time) const {
  return static_cast<int64_t>(
      std::floor(time * 1000.0 / static_cast<double>(step_ms_)));
}

BackfillStore::Series* BackfillStore::Find(const void* key,
                                           const MetricDef& def,
                                           const prometheus::Labels& labels) {
  auto it = series_.find(key);
  if (it != series_.end()) return it->second.get();
  auto s = std::make_unique<Series>();
  s->name = def.name;
  s->help = def.help;
  s->type = def.type;
  s->gauge_set = def.gauge_set;
  s->buckets = def.buckets;
  s->labels = labels;
  for (const auto& [k, v] : extra_) s->labels[k] = v;
  s->width = def.type == MetricType::kHistogram ? def.buckets.size() + 2
             : def.type == MetricType::kGauge && def.gauge_set ? 2
                                                               : 1;
  Series* raw = s.get();
  series_.emplace(key, std::move(s));
  return raw;
}

void BackfillStore::Observe(Series* s, double time, double value) {
  int64_t step = StepOf(time);
  if (!any_) {
    first_step_ = last_step_ = step;
    any_ = true;
  }
  first_step_ = std::min(first_step_, step);
  last_step_ = std::max(last_step_, step);
  double* slot = s->Slot(step);
  switch (s->type) {
    case MetricType::kCounter:
      slot[0] += value;
      break;
    case MetricType::kGauge:
      if (!s->gauge_set) {
        slot[0] += value;
      } else if (time >= slot[1]) {
        slot[0] = value;
        slot[1] = time;
      }
      break;
    case MetricType::kHistogram: {
      size_t b = 0;
      size_t nb = s->buckets.size();
      while (b < nb && s->buckets[b] < value) ++b;
      slot[b] += 1;
      slot[nb + 1] += value;
      break;
    }
  }
}

size_t BackfillStore::deltas() const {
  size_t n = 0;
  for (const auto& [k, s] : series_) n += s->steps.size();
  return n;
}

size_t BackfillStore::memory_bytes() const {
  size_t n = 0;
  for (const auto& [k, s] : series_) {
    n += sizeof(Series) + s->steps.capacity() * sizeof(int64_t) +
         s->values.capacity() * sizeof(double);
    for (const auto& [lk, lv] : s->labels) n += lk.size() + lv.size() + 64;
  }
  return n;
}

uint64_t BackfillStore::samples() const {
  uint64_t n = 0;
  for (const auto& [k, s] : series_) {
    if (s->steps.empty()) continue;
    uint64_t points = static_cast<uint64_t>(last_step_ - s->steps.front() + 1);
    uint64_t per =
        s->type == MetricType::kHistogram ? s->buckets.size() + 3 : 1;
    n += points * per;
  }
  return n;
}

void BackfillStore::Write(std::ostream& out) const {
  std::map<std::string, std::vector<const Series*>> families;
  for (const auto& [k, s] : series_) {
    if (!s->steps.empty()) families[s->name].push_back(s.get());
  }
  std::string buf;
  buf.reserve(1 << 21);
  auto drain = [&](bool force) {
    if (force || buf.size() >= (1u << 20)) {
      out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
      buf.clear();
    }
  };
  const double step_s = static_cast<double>(step_ms_) / 1000.0;
  for (auto& [name, list] : families) {
    std::sort(list.begin(), list.end(), [](const Series* a, const Series* b) {
      return a->labels < b->labels;
    });
    const Series& first = *list.front();
    // OpenMetrics names a counter family without its _total, which its
    // samples carry. A counter whose name lacks _total is written as
    // `unknown`, so that it keeps the name the live exporter gives it.
    std::string family = name;
    std::string type;
    switch (first.type) {
      case MetricType::kCounter:
        if (EndsWith(name, "_total")) {
          family = name.substr(0, name.size() - 6);
          type = "counter";
        } else {
          type = "unknown";
        }
        break;
      case MetricType::kGauge:
        type = "gauge";
        break;
      case MetricType::kHistogram:
        type = "histogram";
        break;
    }
    buf += "# TYPE ";
    buf += family;
    buf += ' ';
    buf += type;
    buf += '\n';
    if (!first.help.empty()) {
      buf += "# HELP ";
      buf += family;
      buf += ' ';
      Escaped(&buf, first.help, true);
      buf += '\n';
    }
    for (const Series* s : list) {
      std::vector<double> total(s->width, 0.0);
      if (s->type == MetricType::kGauge && s->gauge_set) {
        total[1] = -std::numeric_limits<double>::infinity();
      }
      size_t next = 0;
      const size_t nb = s->buckets.size();
      for (int64_t step = s->steps.front(); step <= last_step_; ++step) {
        if (next < s->steps.size() && s->steps[next] == step) {
          const double* d = s->values.data() + next * s->width;
          if (s->type == MetricType::kGauge && s->gauge_set) {
            if (d[1] >= total[1]) {
              total[0] = d[0];
              total[1] = d[1];
            }
          } else {
            for (size_t i = 0; i < s->width; ++i) total[i] += d[i];
          }
          ++next;
        }
        double ts = static_cast<double>(step + 1) * step_s;
        switch (s->type) {
          case MetricType::kCounter:
            Sample(&buf, name, "", s->labels, nullptr, total[0], ts);
            break;
          case MetricType::kGauge:
            Sample(&buf, name, "", s->labels, nullptr, total[0], ts);
            break;
          case MetricType::kHistogram: {
            double cumulative = 0;
            for (size_t b = 0; b <= nb; ++b) {
              cumulative += total[b];
              double le = b < nb ? s->buckets[b]
                                 : std::numeric_limits<double>::infinity();
              Sample(&buf, name, "_bucket", s->labels, &le, cumulative, ts);
            }
            Sample(&buf, name, "_count", s->labels, nullptr, cumulative, ts);
            Sample(&buf, name, "_sum", s->labels, nullptr, total[nb + 1], ts);
            break;
          }
        }
        drain(false);
      }
    }
  }
  buf += "# EOF\n";
  drain(true);
  out.flush();
}

}  // namespace sshtail
