#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <set>
#include <string>

#include "exporter_impl.h"
#include "sources/file/rotated_files.h"
#include "sshtail/log.h"

namespace sshtail {

std::string Exporter::Impl::Identity(const std::string& name,
                                     const std::string& file) {
  return file.empty() ? name : name + '\n' + file;
}

void Exporter::Impl::RestoreValues(const SavedState& saved,
                                   const std::string& from) {
  std::map<std::string, uint32_t> index;  // Identity -> runtime index
  std::map<std::string, std::vector<uint32_t>> by_name;
  for (uint32_t i = 0; i < table.size(); ++i) {
    if (!table.active(i)) continue;
    const SourceSpec& s = table.specs[i];
    auto it = saved.sources.find(s.url);
    if (HasPosition(s) && it != saved.sources.end() &&
        it->second.name == s.name) {
      index[Identity(s.name, s.file)] = i;
      by_name[s.name].push_back(i);
    }
  }
  // A rule series carries the source's name and static labels (a glob's
  // match: its file or fields): all of them must be those of one of ours
  // now. A series of a file that went, or with a static label changed,
  // while the exporter was stopped is gone, as after a live reload.
  const std::vector<std::string> context = ContextFor(options).reserved_labels;
  auto ours = [&](const prometheus::Labels& labels) {
    auto it = labels.find("source");
    if (it == labels.end()) return false;
    auto sources = by_name.find(it->second);
    if (sources == by_name.end()) return false;
    auto value = [](const auto& pairs, const std::string& k) {
      for (const auto& [n, v] : pairs) {
        if (n == k) return v;
      }
      return std::string();
    };
    for (uint32_t i : sources->second) {
      const SourceLabels& sl = table.labels[i];
      bool same = true;
      for (const auto& k : context) {
        if (k == "source") continue;
        std::string want =
            k == "file" && !sl.file.empty()
                ? value(sl.labels, k).empty() ? sl.file : value(sl.labels, k)
                : value(sl.labels, k);
        if (value(labels, k) != want) {
          same = false;
          break;
        }
      }
      if (same) return true;
    }
    return false;
  };
  auto which = [&](const prometheus::Labels& labels) -> const uint32_t* {
    auto src = labels.find("source");
    auto file = labels.find("file");
    if (src == labels.end()) return nullptr;
    auto it = index.find(
        Identity(src->second, file == labels.end() ? "" : file->second));
    return it == index.end() ? nullptr : &it->second;
  };
  std::vector<MetricSnapshot> metrics;
  size_t series = 0, changed = 0;
  for (const MetricSnapshot& m : saved.metrics) {
    MetricState* now = store.Find(m.name);
    if (now && now->def().Signature() != m.signature) ++changed;
    MetricSnapshot keep = m;
    keep.series.clear();
    for (const SeriesSnapshot& v : m.series) {
      if (ours(v.labels)) keep.series.push_back(v);
    }
    series += keep.series.size();
    metrics.push_back(std::move(keep));
  }
  std::vector<std::string> restored = store.Restore(metrics);
  for (const SavedCounter& c : saved.counters) {
    // The exporter's own counters carry the name and file only (no static
    // labels): the source's name is enough, as `which` below needs both.
    auto src = c.labels.find("source");
    if (src == c.labels.end() || !by_name.count(src->second) || c.value <= 0) {
      continue;
    }
    if (c.family == "sshtail_series_overflow_total") {
      auto m = c.labels.find("metric");
      if (m != c.labels.end() && std::find(restored.begin(), restored.end(),
                                           m->second) != restored.end()) {
        self.overflow().Add(c.labels).Increment(c.value);
      }
      continue;
    }
    const uint32_t* i = which(c.labels);
    if (!i) continue;
    const SourceCounters& sc = self.counters(*i);
    prometheus::Counter* to =
        c.family == "sshtail_lines_total"             ? sc.lines
        : c.family == "sshtail_lines_unmatched_total" ? sc.unmatched
        : c.family == "sshtail_bytes_total"           ? sc.bytes
        : c.family == "sshtail_lines_too_long_total"  ? sc.too_long
                                                      : nullptr;
    if (to) to->Increment(c.value);
  }
  if (saved.version == StateFile::kVersion) {
    Log(LogLevel::kInfo,
        "state restored from " + from + ": " + std::to_string(restored.size()) +
            " metric(s), " + std::to_string(series) + " series" +
            (changed ? "; " + std::to_string(changed) +
                           " redefined metric(s) start from zero"
                     : std::string()));
  }
}

std::map<std::string, PositionSet> Exporter::Impl::HeldPositions() const {
  std::map<std::string, PositionSet> out;
  for (auto& [url, st] : supervisor->ledger().Held()) {
    out.try_emplace(url, std::move(st.positions));
  }
  return out;
}

void Exporter::Impl::HoldUnclaimed(const SavedState& saved,
                                   const SavedState& handed) {
  std::set<std::string> taken;
  for (size_t i = 0; i < table.size(); ++i) {
    if (table.active(i)) taken.insert(table.specs[i].url);
  }
  for (const SavedState* from : {&handed, &saved}) {
    for (const auto& [url, st] : from->sources) {
      if (taken.count(url) || !supervisor->Covers(url)) continue;
      supervisor->ledger().Hold(url, st.name, st.positions);
      taken.insert(url);
    }
  }
}

bool Exporter::Impl::Elsewhere(const std::string& url,
                               const PositionSet& saved) {
  SourceSpec s;
  try {
    s = ParseSourceUrl(url);
  } catch (const std::invalid_argument&) {
    return false;
  }
  if (s.kind != SourceSpec::Kind::kFile || s.glob) return false;
  struct stat st {};
  if (::stat(s.path.c_str(), &st) == 0 || errno != ENOENT) return false;
  std::vector<RotatedFile> rotated = ListRotated(s.path);
  for (const FilePosition& p : saved) {
    for (const RotatedFile& r : rotated) {
      if (r.id == p.file) return false;
    }
  }
  return true;
}

void Exporter::Impl::SavePositions() {
  std::shared_lock gate(restore_gate);
  if (keep_values) {
    MakeDurable();
    return;
  }
  if (!positions) return;
  std::map<std::string, PositionSet> all;
  {
    auto table_lock = table.ReadLock();
    for (size_t i = 0; i < table.size(); ++i) {
      if (!table.active(i) || !HasPosition(table.specs[i])) continue;
      PositionSet p = table.status[i]->positions.Committed();
      if (!p.empty()) all[table.specs[i].url] = std::move(p);
    }
    for (auto& [url, p] : HeldPositions()) all.try_emplace(url, std::move(p));
  }
  std::string error;
  if (!positions->Save(all, &error)) {
    // Once per failure streak, not every few seconds.
    if (positions_ok) Log(LogLevel::kWarn, "cannot save positions: " + error);
    positions_ok = false;
    return;
  }
  if (!positions_ok) {
    Log(LogLevel::kInfo, "positions saved again to " + positions->path());
  }
  positions_ok = true;
}

std::shared_ptr<const Exporter::Impl::Durable> Exporter::Impl::MakeDurable() {
  uint64_t ticket = durable_requests.fetch_add(1) + 1;
  std::lock_guard lock(durable_mutex);
  if (durable && durable_covers >= ticket) return durable;
  uint64_t covers = durable_requests.load();
  auto next = std::make_shared<Durable>();
  std::map<std::string, SourceState> sources;
  next->metrics = store.Snapshot([&] {
    auto table_lock = table.ReadLock();
    for (size_t i = 0; i < table.size(); ++i) {
      if (!table.active(i) || !HasPosition(table.specs[i])) continue;
      PositionSet p = table.status[i]->positions.Committed();
      if (!p.empty()) {
        sources[table.specs[i].url] =
            SourceState{table.specs[i].name, std::move(p)};
      }
    }
    // Positions only (their series went): named "", so that no series is
    // saved or restored with them.
    for (auto& [url, p] : HeldPositions()) {
      sources.try_emplace(url, SourceState{"", std::move(p)});
    }
    for (auto& f : self.registry()->Collect()) {
      if (IsDurableCounter(f.name)) next->counters.push_back(std::move(f));
    }
  });
  std::vector<SavedCounter> counters;
  for (const auto& f : next->counters) {
    for (const auto& m : f.metric) {
      SavedCounter c{f.name, {}, m.counter.value};
      for (const auto& l : m.label) c.labels[l.name] = l.value;
      counters.push_back(std::move(c));
    }
  }
  std::string error;
  if (!state_file->Save(sources, next->metrics, counters, &error)) {
    // Once per failure streak. Values freeze at the last durable ones.
    if (positions_ok) Log(LogLevel::kWarn, "cannot save state: " + error);
    positions_ok = false;
    if (!durable) durable = std::make_shared<Durable>();
    return durable;
  }
  if (!positions_ok) {
    Log(LogLevel::kInfo, "state saved again to " + state_file->path());
  }
  positions_ok = true;
  durable = std::move(next);
  durable_covers = covers;
  return durable;
}

std::string Exporter::Impl::Exposition() {
  std::shared_lock gate(restore_gate);
  std::string out;
  out.reserve(last_exposition_size.load() + 4096);
  std::shared_ptr<const Durable> d;
  if (keep_values) {
    d = MakeDurable();
    AppendSnapshotExposition(d->metrics, &out);
  } else {
    store.AppendExposition(&out);
  }
  // The exporter's own metrics: few series, sorted for stable output.
  std::vector<prometheus::MetricFamily> self_families =
      self.registry()->Collect();
  if (d) {
    std::erase_if(self_families,
                  [](const auto& f) { return IsDurableCounter(f.name); });
    for (const auto& f : d->counters) self_families.push_back(f);
  }
  for (auto& f : self.Collect()) self_families.push_back(std::move(f));
  std::shared_ptr<const FormatRules> r;
  {
    auto lock = store.ReadLock();
    r = rules;
  }
  prometheus::MetricFamily info = detector->Info(*r);
  if (!info.metric.empty()) self_families.push_back(std::move(info));
  std::sort(self_families.begin(), self_families.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (auto& f : self_families) {
    std::sort(f.metric.begin(), f.metric.end(),
              [](const auto& a, const auto& b) { return a.label < b.label; });
    text::AppendFamily(&out, f);
  }
  last_exposition_size.store(out.size());
  return out;
}

}  // namespace sshtail
