#include "sshtail/metric_store.h"

#include <chrono>

#include "sshtail/text_format.h"

namespace sshtail {

WriterFirstMutex::WriterFirstMutex() {
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&rw_, &attr);
  pthread_rwlockattr_destroy(&attr);
}
WriterFirstMutex::~WriterFirstMutex() { pthread_rwlock_destroy(&rw_); }
void WriterFirstMutex::lock() { pthread_rwlock_wrlock(&rw_); }
bool WriterFirstMutex::try_lock() {
  return pthread_rwlock_trywrlock(&rw_) == 0;
}
void WriterFirstMutex::unlock() { pthread_rwlock_unlock(&rw_); }
void WriterFirstMutex::lock_shared() { pthread_rwlock_rdlock(&rw_); }
bool WriterFirstMutex::try_lock_shared() {
  return pthread_rwlock_tryrdlock(&rw_) == 0;
}
void WriterFirstMutex::unlock_shared() { pthread_rwlock_unlock(&rw_); }

bool SeriesBudget::Take() {
  size_t used = used_.load();
  do {
    if (used >= limit_.load()) return false;
  } while (!used_.compare_exchange_weak(used, used + 1));
  return true;
}

int64_t MetricStore::NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

MetricState::MetricState(
    const MetricDef& def, prometheus::Registry& registry,
    prometheus::Family<prometheus::Counter>& overflow_family,
    SeriesBudget& budget, const std::vector<std::string>& sources)
    : def_(def),
      registry_(registry),
      overflow_family_(overflow_family),
      budget_(budget),
      max_series_(def.max_series),
      ttl_seconds_(def.ttl.count()) {
  switch (def.type) {
    case MetricType::kCounter:
      counters_ =
          &prometheus::BuildCounter().Name(def.name).Help(def.help).Register(
              registry);
      break;
    case MetricType::kGauge:
      gauges_ =
          &prometheus::BuildGauge().Name(def.name).Help(def.help).Register(
              registry);
      break;
    case MetricType::kHistogram:
      histograms_ =
          &prometheus::BuildHistogram().Name(def.name).Help(def.help).Register(
              registry);
      break;
  }
  for (const auto& source : sources) {
    sources_[source].overflow_counter =
        &overflow_family_.Add({{"metric", def_.name}, {"source", source}});
  }
}

MetricState::~MetricState() {
  budget_.Give(series_.size());
  if (counters_) registry_.Remove(*counters_);
  if (gauges_) registry_.Remove(*gauges_);
  if (histograms_) registry_.Remove(*histograms_);
}

void MetricState::Redefine(const MetricDef& def) {
  std::lock_guard lock(mutex_);
  def_ = def;
  max_series_.store(def.max_series);
  ttl_seconds_.store(def.ttl.count());
}

size_t MetricState::size() const {
  std::lock_guard lock(mutex_);
  return series_.size();
}

Series* MetricState::Create(const prometheus::Labels& labels) {
  auto s = std::make_unique<Series>();
  if (counters_) s->counter = &counters_->Add(labels);
  if (gauges_) s->gauge = &gauges_->Add(labels);
  if (histograms_) s->histogram = &histograms_->Add(labels, def_.buckets);
  s->last_used.store(MetricStore::NowSeconds());
  return s.release();
}

const std::string& MetricState::SourceOf(const prometheus::Labels& labels) {
  static const std::string kNone;
  auto it = labels.find("source");
  return it == labels.end() ? kNone : it->second;
}

Series* MetricState::Get(const prometheus::Labels& labels) {
  std::lock_guard lock(mutex_);
  auto it = series_.find(labels);
  if (it != series_.end()) return it->second.get();
  const std::string& source = SourceOf(labels);
  PerSource& ps = sources_[source];
  if (ps.series < max_series_.load() && budget_.Take()) {
    Series* s = Create(labels);
    series_.emplace(labels, std::unique_ptr<Series>(s));
    ++ps.series;
    return s;
  }
  return Overflow(source, ps, labels);
}

Series* MetricState::Overflow(const std::string& source, PerSource& ps,
                              const prometheus::Labels& labels) {
  if (!ps.overflow_counter) {
    ps.overflow_counter =
        &overflow_family_.Add({{"metric", def_.name}, {"source", source}});
  }
  ps.overflow_counter->Increment();
  return OverflowSeries(ps, labels);
}

Series* MetricState::OverflowSeries(PerSource& ps,
                                    const prometheus::Labels& labels) {
  if (!ps.overflow) {
    // The rule's labels say "__overflow__"; the source's own stay.
    ps.overflow_labels = labels;
    for (const auto& l : def_.labels) {
      ps.overflow_labels[l.name] = "__overflow__";
    }
    ps.overflow.reset(Create(ps.overflow_labels));
  }
  return ps.overflow.get();
}

MetricSnapshot MetricState::Snapshot() const {
  std::lock_guard lock(mutex_);
  MetricSnapshot out;
  out.name = def_.name;
  out.help = def_.help;
  out.signature = def_.Signature();
  out.type = def_.type;
  out.buckets = def_.buckets;
  out.series.reserve(series_.size());
  auto one = [&](const prometheus::Labels& labels, const Series& s,
                 bool overflow) {
    SeriesSnapshot v;
    v.labels = labels;
    v.overflow = overflow;
    if (s.counter) v.value = s.counter->Value();
    if (s.gauge) v.value = s.gauge->Value();
    if (s.histogram) v.histogram = s.histogram->Collect().histogram;
    out.series.push_back(std::move(v));
  };
  for (const auto& [labels, s] : series_) one(labels, *s, false);
  for (const auto& [source, ps] : sources_) {
    if (ps.overflow) one(ps.overflow_labels, *ps.overflow, true);
  }
  return out;
}

void MetricState::AddValues(Series& s, const SeriesSnapshot& v) {
  if (s.counter && v.value > 0) s.counter->Increment(v.value);
  if (s.gauge) s.gauge->Set(v.value);
  if (s.histogram) {
    // Cumulative counts back to per-bucket increments.
    std::vector<double> inc(v.histogram.bucket.size());
    uint64_t below = 0;
    for (size_t i = 0; i < inc.size(); ++i) {
      uint64_t c = v.histogram.bucket[i].cumulative_count;
      inc[i] = static_cast<double>(c - below);
      below = c;
    }
    s.histogram->ObserveMultiple(inc, v.histogram.sample_sum);
  }
}

size_t MetricState::Restore(const MetricSnapshot& saved) {
  std::lock_guard lock(mutex_);
  size_t restored = 0;
  for (const SeriesSnapshot& v : saved.series) {
    if (histograms_) {
      // Never trusted blindly: the buckets must be ours and cumulative.
      const auto& b = v.histogram.bucket;
      if (b.size() != def_.buckets.size() + 1) continue;
      bool ok = true;
      for (size_t i = 1; i < b.size(); ++i) {
        ok &= b[i].cumulative_count >= b[i - 1].cumulative_count;
      }
      if (!ok || b.back().cumulative_count != v.histogram.sample_count) {
        continue;
      }
    }
    const std::string& source = SourceOf(v.labels);
    PerSource& ps = sources_[source];
    Series* s = nullptr;
    if (!v.overflow) {
      auto it = series_.find(v.labels);
      if (it != series_.end()) {
        s = it->second.get();
      } else if (ps.series < max_series_.load() && budget_.Take()) {
        s = Create(v.labels);
        series_.emplace(v.labels, std::unique_ptr<Series>(s));
        ++ps.series;
      }
    }
    // Past the caps (or the overflow series itself): the source's overflow
    // series keeps the counts, so no total goes down.
    if (s == nullptr) s = OverflowSeries(ps, v.labels);
    AddValues(*s, v);
    ++restored;
  }
  return restored;
}

void MetricState::AppendExposition(std::string* out) const {
  std::lock_guard lock(mutex_);
  bool any_overflow = false;
  for (const auto& [source, ps] : sources_) any_overflow |= bool(ps.overflow);
  if (series_.empty() && !any_overflow) return;
  prometheus::MetricType type =
      def_.type == MetricType::kCounter ? prometheus::MetricType::Counter
      : def_.type == MetricType::kGauge ? prometheus::MetricType::Gauge
                                        : prometheus::MetricType::Histogram;
  text::AppendHeader(out, def_.name, def_.help, type);
  auto one = [&](const prometheus::Labels& labels, const Series& s) {
    if (s.counter) {
      text::AppendSample(out, def_.name, "", labels, s.counter->Value());
    } else if (s.gauge) {
      text::AppendSample(out, def_.name, "", labels, s.gauge->Value());
    } else if (s.histogram) {
      text::AppendMetric(out, def_.name, type, labels, s.histogram->Collect());
    }
  };
  for (const auto& [labels, s] : series_) one(labels, *s);
  for (const auto& [source, ps] : sources_) {
    if (ps.overflow) one(ps.overflow_labels, *ps.overflow);
  }
}

size_t MetricState::Expire(int64_t now_seconds) {
  int64_t ttl = ttl_seconds_.load();
  if (ttl <= 0) return 0;
  std::lock_guard lock(mutex_);
  size_t removed = 0;
  for (auto it = series_.begin(); it != series_.end();) {
    Series* s = it->second.get();
    if (now_seconds - s->last_used.load() > ttl) {
      if (s->counter) counters_->Remove(s->counter);
      if (s->gauge) gauges_->Remove(s->gauge);
      if (s->histogram) histograms_->Remove(s->histogram);
      auto ps = sources_.find(SourceOf(it->first));
      if (ps != sources_.end() && ps->second.series > 0) --ps->second.series;
      it = series_.erase(it);
      ++removed;
    } else {
      ++it;
    }
  }
  budget_.Give(removed);
  return removed;
}

size_t MetricState::RemoveSource(const SourceLabels& source, bool overflow) {
  std::lock_guard lock(mutex_);
  auto own = [&](const prometheus::Labels& labels) {
    auto it = labels.find("source");
    if (it == labels.end() || it->second != source.name) return false;
    size_t matched = 1;
    for (const auto& [k, v] : source.labels) {
      auto l = labels.find(k);
      if (l == labels.end() || l->second != v) return false;
      ++matched;
    }
    // Any other label must be the rule's: a source with more static labels
    // (the same name) is another source.
    for (const auto& l : def_.labels) matched += labels.count(l.name);
    return matched == labels.size();
  };
  size_t removed = 0;
  auto drop = [&](Series* s) {
    if (s->counter) counters_->Remove(s->counter);
    if (s->gauge) gauges_->Remove(s->gauge);
    if (s->histogram) histograms_->Remove(s->histogram);
  };
  for (auto it = series_.begin(); it != series_.end();) {
    if (!own(it->first)) {
      ++it;
      continue;
    }
    drop(it->second.get());
    auto ps = sources_.find(source.name);
    if (ps != sources_.end() && ps->second.series > 0) --ps->second.series;
    it = series_.erase(it);
    ++removed;
  }
  budget_.Give(removed);
  if (overflow) {
    auto ps = sources_.find(source.name);
    if (ps != sources_.end()) {
      if (ps->second.overflow) drop(ps->second.overflow.get());
      if (ps->second.overflow_counter) {
        overflow_family_.Remove(ps->second.overflow_counter);
      }
      sources_.erase(ps);
    }
  }
  return removed;
}

MetricStore::MetricStore(prometheus::Family<prometheus::Counter>& overflow,
                         size_t max_series_total)
    : registry_(std::make_shared<prometheus::Registry>()),
      overflow_(overflow),
      budget_(max_series_total) {}

void MetricStore::Apply(const RuleSetDef& rules,
                        const std::function<void()>& publish) {
  std::unique_lock lock(world_);
  std::map<std::string, std::unique_ptr<MetricState>> next;
  for (const auto& rule : rules.rules) {
    for (const auto& def : rule.metrics) {
      if (next.count(def.name)) continue;  // shared by several rules
      auto it = metrics_.find(def.name);
      if (it != metrics_.end() &&
          it->second->def().Signature() == def.Signature() &&
          it->second->def().help == def.help) {
        it->second->Redefine(def);
        next.emplace(def.name, std::move(it->second));
        metrics_.erase(it);
        continue;
      }
      if (it != metrics_.end()) metrics_.erase(it);  // changed: start over
      next.emplace(def.name,
                   std::make_unique<MetricState>(def, *registry_, overflow_,
                                                 budget_, source_names_));
    }
  }
  metrics_.clear();  // removed from the rules: drop their families
  metrics_ = std::move(next);
  if (publish) publish();
  generation_.fetch_add(1);
}

MetricState* MetricStore::Find(const std::string& name) const {
  auto it = metrics_.find(name);
  return it == metrics_.end() ? nullptr : it->second.get();
}

void MetricStore::AppendExposition(std::string* out) const {
  auto lock = ReadLock();
  for (const auto& [name, m] : metrics_) m->AppendExposition(out);
}

std::vector<MetricSnapshot> MetricStore::Snapshot(
    const std::function<void()>& under_lock) const {
  std::unique_lock lock(world_);
  std::vector<MetricSnapshot> out;
  out.reserve(metrics_.size());
  for (const auto& [name, m] : metrics_) out.push_back(m->Snapshot());
  if (under_lock) under_lock();
  return out;
}

std::vector<std::string> MetricStore::Restore(
    const std::vector<MetricSnapshot>& saved) {
  std::unique_lock lock(world_);
  std::vector<std::string> restored;
  for (const MetricSnapshot& m : saved) {
    auto it = metrics_.find(m.name);
    if (it == metrics_.end()) continue;
    if (it->second->def().Signature() != m.signature) continue;
    it->second->Restore(m);
    restored.push_back(m.name);
  }
  generation_.fetch_add(1);
  return restored;
}

void AppendSnapshotExposition(const std::vector<MetricSnapshot>& metrics,
                              std::string* out) {
  for (const MetricSnapshot& m : metrics) {
    if (m.series.empty()) continue;
    prometheus::MetricType type =
        m.type == MetricType::kCounter ? prometheus::MetricType::Counter
        : m.type == MetricType::kGauge ? prometheus::MetricType::Gauge
                                       : prometheus::MetricType::Histogram;
    text::AppendHeader(out, m.name, m.help, type);
    prometheus::ClientMetric cm;
    for (const SeriesSnapshot& s : m.series) {
      if (m.type == MetricType::kHistogram) {
        cm.histogram = s.histogram;
        text::AppendMetric(out, m.name, type, s.labels, cm);
      } else {
        text::AppendSample(out, m.name, "", s.labels, s.value);
      }
    }
  }
}

size_t MetricStore::Expire() {
  bool any_ttl = false;
  {
    auto lock = ReadLock();
    for (const auto& [name, m] : metrics_) {
      if (m->def().ttl.count() > 0) any_ttl = true;
    }
  }
  if (!any_ttl) return 0;
  std::unique_lock lock(world_);
  size_t removed = 0;
  int64_t now = NowSeconds();
  for (auto& [name, m] : metrics_) removed += m->Expire(now);
  if (removed) generation_.fetch_add(1);
  return removed;
}

size_t MetricStore::RemoveSources(const std::vector<SourceLabels>& sources,
                                  const std::vector<bool>& overflow) {
  std::unique_lock lock(world_);
  size_t removed = 0;
  for (auto& [name, m] : metrics_) {
    for (size_t i = 0; i < sources.size(); ++i) {
      removed += m->RemoveSource(sources[i], overflow[i]);
    }
  }
  generation_.fetch_add(1);
  return removed;
}

}  // namespace sshtail
