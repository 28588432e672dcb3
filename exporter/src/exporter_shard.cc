// Sharding: which hosts this replica follows, and the state a host carries
// from one replica to the next (sources/shard.h).
#include <sys/stat.h>
#include <unistd.h>

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
                                      const SavedState* own, int64_t own_at_ns,
                                      std::map<std::string, int64_t>* at_ns) {
  // Hosts this replica's own state has sources of.
  std::set<std::string> own_keys;
  if (own) {
    for (const auto& [url, st] : own->sources) {
      try {
        own_keys.insert(ShardKeeper::KeyOf(ParseSourceUrl(url)));
      } catch (const std::invalid_argument&) {
      }
    }
  }
  SavedState out;
  for (const auto& key : keys) {
    std::string path = shard->HandOverPath(key);
    int64_t at = MtimeNs(path);
    if (at < 0) continue;
    // Ours is newer: the host was followed here since it was handed over.
    if (own_keys.count(key) && at <= own_at_ns) continue;
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

void CheckShardIndex(const Options& o) {
  if (o.shard_count > 1 && o.shard_index >= o.shard_count) {
    throw ConfigError("--shard.index " + std::to_string(o.shard_index) +
                      " is not below --shard.count " +
                      std::to_string(o.shard_count));
  }
}

void Exporter::Impl::ClaimAtStart() {
  if (options.shard_count <= 1 || options.once) return;
  CheckShardIndex(options);
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

std::string Exporter::Impl::ShardKeyOf(uint32_t slot) const {
  uint32_t config = table.config_index[slot];
  return ShardKeeper::KeyOf(table.specs[config < table.size() ? config : slot]);
}

std::set<std::string> Exporter::Impl::HandOver(
    const std::map<std::string, std::vector<uint32_t>>& by_key) {
  std::set<std::string> written;
  if (by_key.empty()) return written;
  std::map<std::string, std::map<std::string, SourceState>> sources;
  std::map<std::string, std::string> key_of_name;
  std::vector<prometheus::MetricFamily> families;
  // One snapshot for every host (under the write lock: every batch of
  // these sources is in the values and the positions, or in neither;
  // their later batches are skipped, or every reader has stopped).
  std::vector<MetricSnapshot> metrics = store.Snapshot([&] {
    for (const auto& [key, slots] : by_key) {
      for (uint32_t i : slots) {
        const SourceSpec& s = table.specs[i];
        key_of_name[s.name] = key;
        if (!HasPosition(s)) continue;
        sources[key][s.url] =
            SourceState{s.name, table.status[i]->positions.Committed()};
      }
    }
    for (auto& f : self.registry()->Collect()) {
      if (IsDurableCounter(f.name)) families.push_back(std::move(f));
    }
  });
  // Split by host once: each series goes to its source's host.
  auto key_of = [&](const prometheus::Labels& labels) -> const std::string* {
    auto src = labels.find("source");
    if (src == labels.end()) return nullptr;
    auto it = key_of_name.find(src->second);
    return it == key_of_name.end() ? nullptr : &it->second;
  };
  std::map<std::string, std::vector<MetricSnapshot>> metrics_of;
  for (const auto& m : metrics) {
    for (const auto& v : m.series) {
      const std::string* key = key_of(v.labels);
      if (!key) continue;
      auto& mine = metrics_of[*key];
      if (mine.empty() || mine.back().name != m.name) {
        MetricSnapshot head = m;
        head.series.clear();
        mine.push_back(std::move(head));
      }
      mine.back().series.push_back(v);
    }
  }
  std::map<std::string, std::vector<SavedCounter>> counters_of;
  for (const auto& f : families) {
    for (const auto& m : f.metric) {
      SavedCounter c{f.name, {}, m.counter.value};
      for (const auto& l : m.label) c.labels[l.name] = l.value;
      if (const std::string* key = key_of(c.labels)) {
        counters_of[*key].push_back(std::move(c));
      }
    }
  }
  for (const auto& [key, slots] : by_key) {
    std::string error;
    if (StateFile(shard->HandOverPath(key))
            .Save(sources[key], metrics_of[key], counters_of[key], &error)) {
      written.insert(key);
      continue;
    }
    // The lock stays until the state is written (RetryHandOvers): the
    // next owner must not start the host without it.
    Log(LogLevel::kError, "shard: cannot leave the state of " + key + ": " +
                              error + "; the host stays locked, retried");
    ++handover_write_failures;
    unwritten[key] =
        Unwritten{slots, std::move(sources[key]), std::move(metrics_of[key]),
                  std::move(counters_of[key])};
  }
  return written;
}

void Exporter::Impl::RetryHandOvers() {
  for (auto it = unwritten.begin(); it != unwritten.end();) {
    std::string error;
    Unwritten& u = it->second;
    if (!StateFile(shard->HandOverPath(it->first))
             .Save(u.sources, u.metrics, u.counters, &error)) {
      ++handover_write_failures;
      ++it;
      continue;
    }
    Log(LogLevel::kInfo, "shard: state of " + it->first + " left at last");
    letting_go.push_back({it->first, std::move(u.slots)});
    it = unwritten.erase(it);
  }
}

void Exporter::Impl::LetGo(const ShardClaim& claim,
                           const std::vector<uint32_t>& gone) {
  // A host being let go already (its lock not given back yet) is held
  // still, so each reload's claim finds it lost again: its state was
  // taken when its readers stopped, and a second, empty one must not
  // replace it.
  auto leaving = [&](const std::string& key) {
    return unwritten.count(key) > 0 ||
           std::any_of(letting_go.begin(), letting_go.end(),
                       [&](const LettingGo& l) { return l.key == key; });
  };
  std::map<std::string, std::vector<uint32_t>> by_key;
  for (const auto* keys : {&claim.lost, &claim.dropped}) {
    for (const auto& key : *keys) {
      if (!leaving(key)) by_key[key];
    }
  }
  for (uint32_t i : gone) {
    auto it = by_key.find(ShardKeyOf(i));
    if (it != by_key.end()) it->second.push_back(i);
  }
  std::map<std::string, std::vector<uint32_t>> moving;
  for (const auto& key : claim.lost) {
    if (by_key.count(key)) moving[key] = by_key[key];
  }
  HandOver(moving);
  for (const auto& [key, u] : unwritten) by_key.erase(key);
  // A host gone from the inventory is forgotten, as an unsharded source
  // is: added again later, it starts at --start-at.
  for (const auto& key : claim.dropped) {
    if (by_key.count(key)) ::unlink(shard->HandOverPath(key).c_str());
  }
  for (auto& [key, slots] : by_key) {
    letting_go.push_back({key, std::move(slots)});
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
  self.SetShard(shard->index(), shard->count(), shard->held(), shard->waiting(),
                unwritten.size(), handover_write_failures);
}

void Exporter::Impl::HandOverAll() {
  if (!shard) return;
  std::map<std::string, std::vector<uint32_t>> by_key;
  for (uint32_t i = 0; i < table.size(); ++i) {
    if (!table.active(i)) continue;
    std::string key = ShardKeyOf(i);
    if (!key.empty() && shard->Holds(key)) by_key[key].push_back(i);
  }
  HandOver(by_key);
  RetryHandOvers();  // the last chance: the kernel drops the locks at exit
}

}  // namespace sshtail
