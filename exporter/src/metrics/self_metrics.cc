#include "metrics/self_metrics.h"

#include <prometheus/metric_family.h>
#include <re2/re2.h>

#include "sshtail/options.h"
#include "sshtail/text_format.h"

namespace sshtail {
namespace {

prometheus::MetricFamily Family(const std::string& name,
                                const std::string& help,
                                prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

prometheus::ClientMetric Gauge(
    std::vector<prometheus::ClientMetric::Label> labels, double v) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = v;
  return m;
}

prometheus::ClientMetric Counter(
    std::vector<prometheus::ClientMetric::Label> labels, double v) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.counter.value = v;
  return m;
}

}  // namespace

SelfMetrics::SelfMetrics(const SourceTable& table, const BatchQueue& queue)
    : table_(table),
      queue_(queue),
      registry_(std::make_shared<prometheus::Registry>()) {
  auto& lines = prometheus::BuildCounter()
                    .Name("sshtail_lines_total")
                    .Help("Lines read, per source.")
                    .Register(*registry_);
  auto& unmatched = prometheus::BuildCounter()
                        .Name("sshtail_lines_unmatched_total")
                        .Help("Lines that no rule matched, per source.")
                        .Register(*registry_);
  auto& bytes = prometheus::BuildCounter()
                    .Name("sshtail_bytes_total")
                    .Help("Bytes of complete lines read, per source.")
                    .Register(*registry_);
  auto& too_long = prometheus::BuildCounter()
                       .Name("sshtail_lines_too_long_total")
                       .Help("Lines skipped for exceeding --max-line-bytes.")
                       .Register(*registry_);
  lines_ = &lines;
  unmatched_ = &unmatched;
  bytes_ = &bytes;
  too_long_ = &too_long;
  overflow_ = &prometheus::BuildCounter()
                   .Name("sshtail_series_overflow_total")
                   .Help(
                       "Lines whose new label set went to the source's "
                       "overflow series: the source reached max_series for "
                       "the metric, or all metrics --max-series-total.")
                   .Register(*registry_);
  auto& build = prometheus::BuildGauge()
                    .Name("sshtail_build_info")
                    .Help("Build information; always 1.")
                    .Register(*registry_);
  build.Add({{"version", Version()}}).Set(1);
  reload_ok_ = &prometheus::BuildGauge()
                    .Name("sshtail_config_last_reload_successful")
                    .Help("1 if the last configuration reload succeeded.")
                    .Register(*registry_)
                    .Add({});
  reload_ok_->Set(1);
  reload_time_ =
      &prometheus::BuildGauge()
           .Name("sshtail_config_last_reload_success_timestamp_seconds")
           .Help("When the configuration was last loaded successfully.")
           .Register(*registry_)
           .Add({});
  reload_time_->SetToCurrentTime();
  reloads_failed_ = &prometheus::BuildCounter()
                         .Name("sshtail_config_reloads_failed_total")
                         .Help("Configuration reloads that were rejected.")
                         .Register(*registry_)
                         .Add({});
}

const SourceCounters& SelfMetrics::counters(uint32_t source) {
  std::lock_guard lock(mutex_);
  auto it = counters_.find(source);
  if (it != counters_.end()) return it->second;
  const SourceLabels& sl = table_.labels[source];
  prometheus::Labels l{{"source", sl.name}};
  if (!sl.file.empty()) l["file"] = sl.file;
  return counters_
      .emplace(source, SourceCounters{&lines_->Add(l), &unmatched_->Add(l),
                                      &bytes_->Add(l), &too_long_->Add(l)})
      .first->second;
}

void SelfMetrics::StateFileLoaded(int set_aside, bool from_previous) {
  prometheus::BuildCounter()
      .Name("sshtail_state_file_corrupt_total")
      .Help(
          "Damaged or foreign positions/state files found at start and "
          "renamed to FILE.corrupt-<time> (FILE, and FILE.prev if it was "
          "damaged too).")
      .Register(*registry_)
      .Add({})
      .Increment(set_aside);
  prometheus::BuildGauge()
      .Name("sshtail_state_file_previous_generation")
      .Help(
          "1 if this run resumed from the previous generation FILE.prev "
          "because FILE was damaged or missing: the lines written between "
          "the two saves are read (and counted) again.")
      .Register(*registry_)
      .Add({})
      .Set(from_previous ? 1 : 0);
}

void SelfMetrics::SetShard(int index, int count, size_t followed,
                           size_t waiting, size_t handing_over,
                           size_t failed_writes) {
  if (!shard_index_) {
    auto gauge = [&](const char* name, const char* help) {
      return &prometheus::BuildGauge().Name(name).Help(help).Register(
          *registry_);
    };
    shard_index_ =
        &gauge("sshtail_shard_index", "This replica's index.")->Add({});
    shard_count_ =
        &gauge("sshtail_shard_count", "Replicas sharing the sources.")->Add({});
    auto* hosts = gauge("sshtail_shard_hosts",
                        "Hosts this replica follows, and those hashed here "
                        "that another replica still holds.");
    shard_followed_ = &hosts->Add({{"state", "followed"}});
    shard_waiting_ = &hosts->Add({{"state", "waiting"}});
    shard_handing_over_ = &hosts->Add({{"state", "handing_over"}});
    shard_failed_writes_ =
        &prometheus::BuildCounter()
             .Name("sshtail_shard_handover_write_failures_total")
             .Help(
                 "Hand-over states that could not be written to the shard "
                 "directory (the host stays locked here; retried).")
             .Register(*registry_)
             .Add({});
  }
  shard_handing_over_->Set(static_cast<double>(handing_over));
  if (static_cast<double>(failed_writes) > shard_failed_shown_) {
    shard_failed_writes_->Increment(static_cast<double>(failed_writes) -
                                    shard_failed_shown_);
    shard_failed_shown_ = static_cast<double>(failed_writes);
  }
  shard_index_->Set(index);
  shard_count_->Set(count);
  shard_followed_->Set(static_cast<double>(followed));
  shard_waiting_->Set(static_cast<double>(waiting));
}

void SelfMetrics::Remove(uint32_t source) {
  std::lock_guard lock(mutex_);
  auto it = counters_.find(source);
  if (it == counters_.end()) return;
  lines_->Remove(it->second.lines);
  unmatched_->Remove(it->second.unmatched);
  bytes_->Remove(it->second.bytes);
  too_long_->Remove(it->second.too_long);
  counters_.erase(it);
}

std::vector<prometheus::MetricFamily> SelfMetrics::Collect() const {
  using prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  auto queue = Family("sshtail_queue_batches",
                      "Batches waiting in the queue between readers and "
                      "parsers.",
                      MetricType::Gauge);
  queue.metric.push_back(Gauge({}, static_cast<double>(queue_.Size())));
  out.push_back(std::move(queue));
  auto capacity =
      Family("sshtail_queue_capacity_batches",
             "Capacity of the queue, in batches.", MetricType::Gauge);
  capacity.metric.push_back(Gauge({}, static_cast<double>(queue_.capacity())));
  out.push_back(std::move(capacity));

  auto up = Family("sshtail_source_up",
                   "1 while the source is being read (file open, or SSH "
                   "stream running).",
                   MetricType::Gauge);
  auto offset = Family("sshtail_source_offset_bytes",
                       "Offset in the current file just past the last "
                       "complete line read.",
                       MetricType::Gauge);
  auto rotations =
      Family("sshtail_rotations_total",
             "Rotations (rename or truncation) seen.", MetricType::Counter);
  auto files_lost =
      Family("sshtail_files_lost_total",
             "Files that went away before they were read to their end (e.g. "
             "rotated and deleted while the exporter was stopped).",
             MetricType::Counter);
  auto last = Family("sshtail_source_last_line_timestamp_seconds",
                     "When the last line of the source was read (unix time; "
                     "0 = never).",
                     MetricType::Gauge);
  auto reconnects = Family("sshtail_ssh_reconnects_total",
                           "SSH connection or stream failures, by reason (a "
                           "remote glob's listing: file is the glob).",
                           MetricType::Counter);
  // A slot is not freed for reuse while this is held (see SourceTable).
  auto table_lock = table_.ReadLock();
  for (size_t i = 0; i < table_.size(); ++i) {
    if (!table_.active(i)) continue;
    const SourceStatus& s = *table_.status[i];
    const SourceSpec& spec = table_.specs[i];
    std::vector<prometheus::ClientMetric::Label> l;
    if (!spec.file.empty()) l.push_back({"file", table_.labels[i].file});
    l.push_back({"source", spec.name});
    up.metric.push_back(Gauge(l, s.up.load() ? 1 : 0));
    offset.metric.push_back(Gauge(l, static_cast<double>(s.offset.load())));
    rotations.metric.push_back(
        Counter(l, static_cast<double>(s.rotations.load())));
    last.metric.push_back(Gauge(l, s.last_line_time.load()));
    files_lost.metric.push_back(
        Counter(l, static_cast<double>(s.files_lost.load())));
    if (spec.kind == SourceSpec::Kind::kSsh) {
      for (const auto& [reason, n] : s.Failures()) {
        auto rl = l;
        rl.insert(rl.begin() + (spec.file.empty() ? 0 : 1), {"reason", reason});
        reconnects.metric.push_back(Counter(rl, static_cast<double>(n)));
      }
    }
  }
  // syslog sources only (a datagram has no position; a socket has no
  // reconnects).
  auto malformed = Family("sshtail_syslog_datagrams_malformed_total",
                          "syslog datagrams without an RFC 3164 header, or "
                          "with a newline inside the message.",
                          MetricType::Counter);
  auto dropped = Family("sshtail_syslog_datagrams_dropped_total",
                        "syslog+udp datagrams the kernel dropped because the "
                        "socket's receive buffer was full.",
                        MetricType::Counter);
  auto conflicts =
      Family("sshtail_syslog_hostname_conflicts_total",
             "syslog datagrams whose sender hostname is another source's name; "
             "counted under the socket's own source label instead.",
             MetricType::Counter);
  for (size_t i = 0; i < table_.size(); ++i) {
    if (!table_.active(i)) continue;  // before its spec: see SourceTable
    auto kind = table_.specs[i].kind;
    if (kind != SourceSpec::Kind::kSyslogUnix &&
        kind != SourceSpec::Kind::kSyslogUdp) {
      continue;
    }
    const SourceStatus& s = *table_.status[i];
    std::vector<prometheus::ClientMetric::Label> l{
        {"source", table_.specs[i].name}};
    malformed.metric.push_back(
        Counter(l, static_cast<double>(s.syslog_malformed.load())));
    conflicts.metric.push_back(
        Counter(l, static_cast<double>(s.syslog_name_conflicts.load())));
    if (kind == SourceSpec::Kind::kSyslogUdp) {
      dropped.metric.push_back(
          Counter(l, static_cast<double>(s.syslog_dropped.load())));
    }
  }
  if (!malformed.metric.empty()) out.push_back(std::move(malformed));
  if (!conflicts.metric.empty()) out.push_back(std::move(conflicts));
  if (!dropped.metric.empty()) out.push_back(std::move(dropped));
  out.push_back(std::move(up));
  out.push_back(std::move(offset));
  out.push_back(std::move(rotations));
  out.push_back(std::move(last));
  out.push_back(std::move(files_lost));
  // Each glob with the files it follows. A slot is read only once its
  // state says it was written (see SourceTable).
  std::map<uint32_t, size_t> matched;
  auto glob_up = Family("sshtail_glob_up",
                        "1 while a glob is being listed (a remote glob: its "
                        "host's listing session runs; a local one: always).",
                        MetricType::Gauge);
  for (size_t i = 0; i < table_.size(); ++i) {
    auto state = table_.state(i);
    if (state == SourceTable::State::kGlob) {
      matched[static_cast<uint32_t>(i)];  // 0 until something matches
      const SourceSpec& spec = table_.specs[i];
      bool remote = spec.kind == SourceSpec::Kind::kSsh;
      const SourceStatus& s = *table_.status[i];
      glob_up.metric.push_back(
          Gauge({{"glob", spec.url}}, !remote || s.up.load() ? 1 : 0));
      if (!remote) continue;
      // The listing's failures, named as the glob's files are.
      for (const auto& [reason, n] : s.Failures()) {
        reconnects.metric.push_back(Counter(
            {{"file", text::ValidUtf8(spec.path)},
             {"reason", reason},
             {"source",
              text::ValidUtf8(spec.name.empty() ? spec.host : spec.name)}},
            static_cast<double>(n)));
      }
    } else if (state == SourceTable::State::kActive) {
      uint32_t config = table_.config_index[i];
      if (config != i && table_.state(config) == SourceTable::State::kGlob) {
        ++matched[config];
      }
    }
  }
  out.push_back(std::move(reconnects));
  if (!glob_up.metric.empty()) out.push_back(std::move(glob_up));
  if (!matched.empty()) {
    auto files = Family("sshtail_glob_files",
                        "Files a glob source follows (at most its max_files).",
                        MetricType::Gauge);
    for (const auto& [config, n] : matched) {
      files.metric.push_back(
          Gauge({{"glob", table_.specs[config].url}}, static_cast<double>(n)));
    }
    out.push_back(std::move(files));
  }
  return out;
}

}  // namespace sshtail
