// Sharding: which hosts this replica follows, and the state a host carries
// from one replica to the next (sources/shard.h).
#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "exporter_impl.h"
#include "sshtail/log.h"

namespace sshtail {
namespace {

int64_t MtimeNs(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return -1;
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

// Adds `from`'s sources, series and counters to `into` (other sources).
void Merge(SavedState* into, SavedState from) {
  for (auto& [url, s] : from.sources) into->sources[url] = std::move(s);
  for (auto& m : from.metrics) {
    auto it =
        std::find_if(into->metrics.begin(), into->metrics.end(),
                     [&](const MetricSnapshot& x) { return x.name == m.name; });
    if (it == into->metrics.end()) {
      into->metrics.push_back(std::move(m));
    } else if (it->signature == m.signature) {
      for (auto& s : m.series) it->series.push_back(std::move(s));
    }
  }
  for (auto& c : from.counters) into->counters.push_back(std::move(c));
  into->version = StateFile::kVersion;
}

}  // namespace

SavedState Exporter::Impl::HandedOver(const std::vector<std::string>& keys,
                                      int64_t newer_than_ns,
                                      std::map<std::string, int64_t>* at_ns) {
  SavedState out;
  for (const auto& key : keys) {
    std::string path = shard->HandOverPath(key);
    int64_t at = MtimeNs(path);
    if (at < 0 || at <= newer_than_ns) continue;
    std::string problem;
    SavedState st = StateFile(path).Load(&problem);
    if (!problem.empty()) {
      Log(LogLevel::kWarn, "shard: state of " + key + " not used: " + problem);
      continue;
    }
    if (at_ns) {
      for (const auto& [url, src] : st.sources) (*at_ns)[url] = at;
    }
    Merge(&out, std::move(st));
  }
  return out;
}

void Exporter::Impl::ClaimAtStart() {
  if (options.shard_count <= 1 || options.once) return;
  shard = std::make_unique<ShardKeeper>(options.shard_dir, options.shard_index,
                                        options.shard_count);
  ShardClaim claim = shard->Claim(options.sources, options.shard_count);
  shard->Commit(claim);
  options.sources = claim.sources;
  start_claim = claim.gained;
  ShowShard();
  Log(LogLevel::kInfo,
      "shard " + std::to_string(shard->index()) + " of " +
          std::to_string(shard->count()) + ": " +
          std::to_string(shard->held()) + " host(s) followed here, " +
          std::to_string(shard->waiting()) + " still held by another replica");
}

void Exporter::Impl::DropSources(SavedState* saved, const SavedState& by) {
  std::set<std::string> names;
  for (const auto& [url, st] : by.sources) {
    saved->sources.erase(url);
    names.insert(st.name);
  }
  auto named = [&](const prometheus::Labels& labels) {
    auto it = labels.find("source");
    return it != labels.end() && names.count(it->second) > 0;
  };
  for (auto& m : saved->metrics) {
    std::erase_if(m.series,
                  [&](const SeriesSnapshot& v) { return named(v.labels); });
  }
  std::erase_if(saved->counters,
                [&](const SavedCounter& c) { return named(c.labels); });
}

void Exporter::Impl::HandOver(const std::string& key,
                              const std::vector<uint32_t>& slots) {
  std::map<std::string, SourceState> sources;
  std::vector<prometheus::MetricFamily> families;
  // Under the write lock: every batch of these sources is either in the
  // values and the positions, or in neither (their later batches are
  // skipped: the slots are retired, or every reader has stopped).
  std::vector<MetricSnapshot> metrics = store.Snapshot([&] {
    for (uint32_t i : slots) {
      if (!HasPosition(table.specs[i])) continue;
      sources[table.specs[i].url] = SourceState{
          table.specs[i].name, table.status[i]->positions.Committed()};
    }
    for (auto& f : self.registry()->Collect()) {
      if (IsDurableCounter(f.name)) families.push_back(std::move(f));
    }
  });
  std::vector<SavedCounter> counters;
  for (const auto& f : families) {
    for (const auto& m : f.metric) {
      SavedCounter c{f.name, {}, m.counter.value};
      for (const auto& l : m.label) c.labels[l.name] = l.value;
      counters.push_back(std::move(c));
    }
  }
  std::string error;
  if (!StateFile(shard->HandOverPath(key))
           .Save(sources, metrics, counters, &error)) {
    // The next replica resumes from the host's previous state, which is
    // consistent too: it reads those lines again, and this replica's
    // counts of them go with its series.
    Log(LogLevel::kError,
        "shard: cannot leave the state of " + key + ": " + error);
  }
}

void Exporter::Impl::LetGo(const std::vector<std::string>& keys,
                           const std::vector<uint32_t>& gone) {
  for (const auto& key : keys) {
    std::vector<uint32_t> slots;
    for (uint32_t i : gone) {
      if (ShardKeeper::KeyOf(table.specs[i]) == key) slots.push_back(i);
    }
    HandOver(key, slots);
    letting_go.push_back({key, slots});
  }
  ReleaseLetGo();
}

void Exporter::Impl::ReleaseLetGo() {
  // A host's lock goes only once its readers stopped: it is never read by
  // two replicas at once.
  std::erase_if(letting_go, [&](const LettingGo& l) {
    for (uint32_t i : l.slots) {
      if (!supervisor->Released(i)) return false;
    }
    shard->Release(l.key);
    return true;
  });
}

void Exporter::Impl::ShowShard() {
  self.SetShard(shard->index(), shard->count(), shard->held(),
                shard->waiting());
}

void Exporter::Impl::HandOverAll() {
  if (!shard) return;
  std::map<std::string, std::vector<uint32_t>> by_key;
  for (uint32_t i = 0; i < table.size(); ++i) {
    if (!table.active(i)) continue;
    std::string key = ShardKeeper::KeyOf(table.specs[i]);
    if (!key.empty() && shard->Holds(key)) by_key[key].push_back(i);
  }
  for (const auto& [key, slots] : by_key) HandOver(key, slots);
}

}  // namespace sshtail
