#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "exporter_impl.h"
#include "sshtail/log.h"

namespace sshtail {

bool Exporter::Impl::Reload(std::string* error) {
  std::lock_guard lock(reload_mutex);
  retry_when_freed_past.reset();
  try {
    Options next = options;
    std::vector<SourceSpec> desired = static_sources;
    if (!options.config_file.empty() && !options.args.empty()) {
      // The same flags again, so the config file is read anew with the
      // same precedence. Rules, formats and sources apply now; other
      // settings need a restart.
      Options fresh;
      std::string problem;
      if (!ReparseCommandLine(options.args, &fresh, &problem)) {
        throw ConfigError(problem);
      }
      next.rule_files = fresh.rule_files;
      next.format = fresh.format;
      next.formats = fresh.formats;
      next.sources_files = fresh.sources_files;
      next.shard_count = fresh.shard_count;
      desired = fresh.sources;
    }
    desired = WithInventory(next, std::move(desired));
    // Sharded: only the hosts this replica holds (their locks are taken
    // now, and given back below if the reload fails).
    std::optional<ShardClaim> claim;
    if (shard) {
      if (shard->index() >= next.shard_count &&
          shard->count() != next.shard_count) {
        Log(LogLevel::kWarn, "shard " + std::to_string(shard->index()) +
                                 " is past --shard.count " +
                                 std::to_string(next.shard_count) +
                                 ": it hands every host over and follows none");
      }
      claim = shard->Claim(desired, next.shard_count);
      desired = claim->sources;
    }
    struct AbortClaim {
      ShardKeeper* keeper;
      std::optional<ShardClaim>* claim;
      ~AbortClaim() {
        if (keeper && *claim) keeper->Abort(**claim);
      }
    } abort_claim{shard.get(), &claim};
    SourcePlan plan;
    std::string waits;
    try {
      plan = supervisor->Plan(desired);
    } catch (const NoSlotError& e) {
      // The room may come from the sources this change removes: they go
      // now, the new ones come once their slots are free (tried again).
      // Sharded, a host is taken whole or not at all.
      // Only when the room is there: a change that cannot fit even then
      // is refused whole, and the running set stays.
      if (claim) throw;
      std::vector<SourceSpec> running = supervisor->Running(desired);
      plan = supervisor->Plan(running);
      if (plan.remove.empty() ||
          supervisor->RoomAfter(plan) < desired.size() - running.size()) {
        throw;
      }
      waits = e.what();
    }
    // A source may not take a name a syslog sender has (as a sender may
    // not take a source's).
    if (syslog_names) {
      for (const auto& [slot, spec] : plan.add) {
        if (!spec.glob && !syslog_names->Reserve(spec.name)) {
          throw ConfigError("source '" + spec.url + "': the name '" +
                            spec.name + "' is a syslog sender's already");
        }
      }
    }
    next.sources = supervisor->ConfiguredBySlot(plan);
    FormatDefs defs = LoadFormatDefs(next, ContextFor(next));
    // All or nothing: everything that can fail fails in this check, before
    // the store replaces a single metric (the old rules point into it).
    FormatRules::Build(defs, nullptr);
    store.Apply(defs.all, [&] {
      rules = FormatRules::Build(defs, &store);
      detector->Reset();  // formats may have changed: detect again
    });
    options.rule_files = next.rule_files;
    options.format = next.format;
    options.formats = next.formats;
    expire_every = ExpireInterval(defs.all);
    if (!plan.empty() ||
        (claim && (!claim->lost.empty() || !claim->dropped.empty()))) {
      ChangeSources(plan, desired, claim ? &*claim : nullptr);
    }
    if (claim) {
      shard->Commit(*claim);
      shard->SetCount(next.shard_count);
      options.shard_count = next.shard_count;
      abort_claim.keeper = nullptr;
      ShowShard();
    }
    if (next.sources_files != options.sources_files) {
      options.sources_files = next.sources_files;
      watch = Watch(options);
    }
    if (!waits.empty()) {
      retry_when_freed_past = supervisor->freed();
      self.reload_ok().Set(0);
      *error = waits +
               "; the removed sources went, the new ones wait for "
               "their slots";
      Log(LogLevel::kWarn, "reload partly applied: " + *error);
      return false;
    }
    self.reload_ok().Set(1);
    self.reload_time().SetToCurrentTime();
    Log(LogLevel::kInfo, "configuration reloaded");
    return true;
  } catch (const std::exception& e) {
    if (dynamic_cast<const NoSlotError*>(&e)) {
      retry_when_freed_past = supervisor->freed();
    }
    *error = e.what();
    self.reload_ok().Set(0);
    self.reloads_failed().Increment();
    Log(LogLevel::kError, std::string("reload rejected: ") + e.what());
    return false;
  }
}

void Exporter::Impl::ChangeSources(const SourcePlan& plan,
                                   const std::vector<SourceSpec>& desired,
                                   const ShardClaim* claim) {
  size_t total = desired.size();
  // No scrape or save sees the change half made: a removed source's
  // position between its slot and the ledger, or a host taken over with
  // its counters at 0 before their restored values (a reset).
  std::unique_lock gate(restore_gate);
  std::vector<uint32_t> gone = supervisor->Retire(plan.remove);
  // Hosts let go: their state is written before their series go.
  if (claim) LetGo(*claim, gone);
  std::set<std::string> coming;
  for (const auto& [slot, spec] : plan.add) coming.insert(spec.name);
  std::map<std::string, SourceState> carried = Forget(gone, coming);
  // Hosts taken: where the last replica left them, values and all.
  SavedState handed;
  if (claim) {
    handed = HandedOver(claim->gained, nullptr, -1, nullptr);
    for (const auto& [url, st] : handed.sources) carried[url] = st;
  }
  for (uint32_t slot : supervisor->Add(plan, std::move(carried), &desired)) {
    self.counters(slot);
  }
  if (!handed.sources.empty()) {
    RestoreValues(handed, "the shard directory " + options.shard_dir);
  }
  Log(LogLevel::kInfo,
      "sources: " + std::to_string(plan.add.size()) + " added, " +
          std::to_string(plan.remove.size()) + " removed, " +
          std::to_string(total - plan.add.size()) + " unchanged");
}

std::map<std::string, SourceState> Exporter::Impl::Forget(
    const std::vector<uint32_t>& gone, const std::set<std::string>& coming) {
  std::set<std::string> names = coming;  // in use: overflow series stay
  for (size_t i = 0; i < table.size(); ++i) {
    if (table.active(i)) names.insert(table.labels[i].name);
  }
  std::vector<SourceLabels> labels;
  std::vector<bool> last;
  for (uint32_t slot : gone) {
    labels.push_back(table.labels[slot]);
    last.push_back(!names.count(table.labels[slot].name));
  }
  // Under the write side: no batch of theirs is being counted, and
  // consumers skip their later batches.
  store.RemoveSources(labels, last);
  // Their committed positions are final now: a file that comes back under
  // another spec (relabelled) resumes there, neither lost nor recounted.
  std::map<std::string, SourceState> carried;
  for (uint32_t slot : gone) {
    self.Remove(slot);
    detector->Forget(slot);
    if (!HasPosition(table.specs[slot]) || table.specs[slot].glob) continue;
    PositionSet p = table.status[slot]->positions.Committed();
    if (!p.empty()) {
      carried[table.specs[slot].url] =
          SourceState{table.specs[slot].name, std::move(p)};
    }
  }
  return carried;
}

void Exporter::Impl::Tick() {
  bool changed = false;
  {
    std::lock_guard lock(reload_mutex);
    std::vector<uint32_t> retired;
    {
      std::unique_lock gate(restore_gate);  // see ChangeSources
      for (uint32_t slot : supervisor->Scan(&retired)) self.counters(slot);
      if (!retired.empty()) supervisor->KeepPositions(Forget(retired, {}));
    }
    changed = watch && watch->Changed();
    changed |=
        retry_when_freed_past && supervisor->freed() > *retry_when_freed_past;
    if (shard) {
      RetryHandOvers();
      ReleaseLetGo();
      changed |= shard->TryWaiting();
      ShowShard();
    }
  }
  if (changed) {
    std::string e;
    Reload(&e);
  }
}

}  // namespace sshtail
